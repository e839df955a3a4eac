//! The durable reconcile queue: rows of `reconcile_jobs`, at most one queued
//! (`running = 0`) and one running (`running = 1`) per datastore. A new
//! trigger coalesces into the queued row. Claiming a job, absorbing the queued
//! row into the running one, and finishing are each one transaction; a
//! running row left behind (a crash, a failed finish) is claimed again by the
//! next [`take_due`]. Writes run inside the writer's transactions (see
//! [`crate::writer`]), so an intent row and the job that applies it commit
//! together. With one netsyncd a read-then-write here is never interleaved
//! with another writer. Replicas on PostgreSQL each have a writer: only the
//! datastore's owner claims (fenced), but any replica may queue (an intent
//! write), so the rows read are locked (see [`Lock`]).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use netsync_core::running::Key;

use crate::db::{Conn, Readers, on_conn, on_readers};
use crate::error::Error;
use crate::stored_time::{from_micros, to_micros};
use crate::writer::Writer;

/// PostgreSQL: the first key of the advisory lock that makes the enqueues
/// of one datastore one after the other ("nq"); the second is a hash of the
/// datastore's name.
const QUEUE_LOCK_CLASS: i32 = 0x6e71;

/// Why a job is queued.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// An intent was set: apply it (even if it is non-revertive), at once.
    Apply(String),
    /// An intent was deleted: remove these leaves from the device unless
    /// another intent provides them, at once.
    Withdraw(Vec<Key>),
    /// A commit showed drift in revertive intents: revert after `debounce`.
    Revert(Duration),
}

/// A queued or running job.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// Not to run before this.
    pub not_before: Option<SystemTime>,
    /// Intents to apply even if they are non-revertive.
    pub apply: BTreeSet<String>,
    /// Paths a deleted intent withdrew.
    pub withdrawn: BTreeSet<Key>,
}

impl Job {
    /// Adds what `other` was queued for; the earlier start wins.
    pub fn merge(&mut self, other: Job) {
        self.not_before = match (self.not_before, other.not_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.apply.extend(other.apply);
        self.withdrawn.extend(other.withdrawn);
    }

    /// What the job was queued for, as traces show it: `apply`, `withdraw`,
    /// both (`apply+withdraw`, coalesced), or `revert` (neither: drift only).
    pub fn kind(&self) -> &'static str {
        match (self.apply.is_empty(), self.withdrawn.is_empty()) {
            (false, true) => "apply",
            (true, false) => "withdraw",
            (false, false) => "apply+withdraw",
            (true, true) => "revert",
        }
    }
}

/// Queues a job for `datastore` (coalescing into a queued one), inside the
/// writer's transaction. Returns whether a new job was created (rather than
/// merged).
pub async fn enqueue(conn: &mut Conn, datastore: &str, trigger: &Trigger) -> Result<bool, Error> {
    let now = SystemTime::now();
    let (not_before, apply, withdrawn) = match trigger {
        Trigger::Apply(name) => (now, vec![name.clone()], vec![]),
        Trigger::Withdraw(paths) => (now, vec![], paths.iter().map(|k| k.to_string()).collect()),
        Trigger::Revert(debounce) => (now + *debounce, vec![], vec![]),
    };
    // Locked (PostgreSQL) until the commit: a write on another replica
    // than the owner waits for a claim of the owner in progress, and then
    // sees that the row it read is running now (and queues a new one).
    // FOR UPDATE locks nothing while there is no queued row: two replicas
    // queueing at once (the owner's revert, another's intent write) would
    // each write a job of its own trigger alone, the second overwriting the
    // first. A transaction-scoped lock of the datastore's queue makes them
    // one after the other (two-key advisory locks: another key space than
    // the writer's one-key session lock).
    if let Conn::Postgres(pg) = &mut *conn {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(QUEUE_LOCK_CLASS)
            .bind(datastore)
            .execute(&mut *pg)
            .await?;
    }
    let existing = get(conn, datastore, false, Lock::Wait).await?;
    let created = existing.is_none();
    let mut job = existing.unwrap_or_default();
    // The earliest start wins: under steady drift a revert still runs once
    // the first debounce has passed.
    job.not_before = Some(job.not_before.map_or(not_before, |t| t.min(not_before)));
    job.apply.extend(apply);
    job.withdrawn.extend(withdrawn.into_iter().map(Key::from));
    put(conn, datastore, false, &job).await?;
    Ok(created)
}

/// Queues a job for `datastore` on its own (a revert after drift).
pub async fn enqueue_alone(
    writer: &Writer,
    datastore: &str,
    trigger: Trigger,
) -> Result<bool, Error> {
    enqueue_all(writer, datastore, vec![trigger]).await
}

/// Queues every one of `triggers` for `datastore` in one transaction (they
/// coalesce into the queued job); returns whether a new job was created.
pub async fn enqueue_all(
    writer: &Writer,
    datastore: &str,
    triggers: Vec<Trigger>,
) -> Result<bool, Error> {
    let datastore = datastore.to_string();
    writer
        .write_owned(&datastore.clone(), move |conn| {
            Box::pin(async move {
                let mut created = false;
                for trigger in &triggers {
                    created |= enqueue(conn, &datastore, trigger).await?;
                }
                Ok(created)
            })
        })
        .await
}

/// Writes the job row of `datastore` in state `running` (false: queued,
/// true: running; SQLite stores 0 and 1).
async fn put(conn: &mut Conn, datastore: &str, running: bool, job: &Job) -> Result<(), Error> {
    let not_before = to_micros(job.not_before.unwrap_or_else(SystemTime::now));
    let apply = serde_json::to_string(&job.apply).unwrap_or_default();
    let withdrawn = serde_json::to_string(
        &job.withdrawn
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    on_conn!(conn, conn => {
        sqlx::query(
            "INSERT INTO reconcile_jobs (datastore, running, not_before_us, apply, withdrawn) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (datastore, running) DO UPDATE SET not_before_us = excluded.not_before_us, \
             apply = excluded.apply, withdrawn = excluded.withdrawn",
        )
        .bind(datastore)
        .bind(running)
        .bind(not_before)
        .bind(&apply)
        .bind(&withdrawn)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// How [`get`] locks the row it reads on PostgreSQL, until the commit.
/// SQLite has one writer: every transaction there is alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// `FOR UPDATE`: waits for a transaction that holds it (an intent write
    /// queueing a job must see a claim that went first).
    Wait,
    /// `FOR UPDATE SKIP LOCKED`: the owner's claims pass over a row an
    /// intent write of another replica is changing; that write's
    /// notification wakes the owner's worker when it commits.
    Skip,
}

/// The job row of `datastore` in state `running` (false: queued, true:
/// running), locked (see [`Lock`]).
async fn get(
    conn: &mut Conn,
    datastore: &str,
    running: bool,
    lock: Lock,
) -> Result<Option<Job>, Error> {
    let row: Option<Columns> = match conn {
        Conn::Sqlite(conn) => {
            sqlx::query_as(
                "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs WHERE datastore = $1 AND running = $2",
            )
            .bind(datastore)
            .bind(running)
            .fetch_optional(&mut *conn)
            .await?
        }
        Conn::Postgres(conn) => {
            let query = match lock {
                Lock::Wait => {
                    "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs \
                     WHERE datastore = $1 AND running = $2 FOR UPDATE"
                }
                Lock::Skip => {
                    "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs \
                     WHERE datastore = $1 AND running = $2 FOR UPDATE SKIP LOCKED"
                }
            };
            sqlx::query_as(query)
                .bind(datastore)
                .bind(running)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    row.map(decode).transpose()
}

/// Deletes the job row of `datastore` in state `running`.
async fn remove(conn: &mut Conn, datastore: &str, running: bool) -> Result<(), Error> {
    on_conn!(conn, conn => {
        sqlx::query("DELETE FROM reconcile_jobs WHERE datastore = $1 AND running = $2")
            .bind(datastore)
            .bind(running)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Claims the job of `datastore` to run, in one transaction; else says how
/// long until the queued one is due (`None`: nothing queued). Only the
/// owner claims (fenced in replica mode), and on PostgreSQL it passes over
/// rows locked by an intent write in progress (`FOR UPDATE SKIP LOCKED`):
/// it never waits for another replica's transaction, and is woken when that
/// write commits.
///
/// The claimed job is the queued one if it is due, merged into a running row
/// that is still there: a job whose end could not be recorded ([`finish`]
/// failed) is run again with it rather than blocking the queue (running it
/// again is harmless: a job plans from the deviations when it runs). Such a
/// row alone is claimed too. So one failed clean-up never wedges a datastore.
pub async fn take_due(
    writer: &Writer,
    datastore: &str,
) -> Result<Result<Job, Option<Duration>>, Error> {
    let datastore = datastore.to_string();
    writer
        .write_owned(&datastore.clone(), move |conn| {
            Box::pin(async move {
                let leftover = get(conn, &datastore, true, Lock::Skip).await?;
                let queued = get(conn, &datastore, false, Lock::Skip).await?;
                let now = SystemTime::now();
                let wait = queued.as_ref().and_then(|job| {
                    job.not_before
                        .and_then(|t| t.duration_since(now).ok())
                        .filter(|wait| !wait.is_zero())
                });
                match (leftover, queued, wait) {
                    (None, None, _) => Ok(Err(None)),
                    (None, Some(_), Some(wait)) => Ok(Err(Some(wait))),
                    (None, Some(queued), None) => {
                        on_conn!(conn, conn => {
                            sqlx::query(
                                "UPDATE reconcile_jobs SET running = $1 WHERE datastore = $2 AND running = $3",
                            )
                            .bind(true)
                            .bind(&datastore)
                            .bind(false)
                            .execute(&mut *conn)
                            .await?;
                        });
                        Ok(Ok(queued))
                    }
                    (Some(mut leftover), queued, wait) => {
                        if let (Some(queued), None) = (queued, wait) {
                            leftover.merge(queued);
                            remove(conn, &datastore, false).await?;
                            put(conn, &datastore, true, &leftover).await?;
                        }
                        Ok(Ok(leftover))
                    }
                }
            })
        })
        .await
}

/// Takes the queued job of `datastore` into the running one, due or not, in
/// one transaction, and returns the running job as it now is (`None`: nothing
/// was queued). A running job does this when an intent write makes it plan
/// again, so that what the write queued is done by it at once.
pub async fn absorb(writer: &Writer, datastore: &str) -> Result<Option<Job>, Error> {
    let datastore = datastore.to_string();
    writer
        .write_owned(&datastore.clone(), move |conn| {
            Box::pin(async move {
                let Some(queued) = get(conn, &datastore, false, Lock::Skip).await? else {
                    return Ok(None);
                };
                let mut job = get(conn, &datastore, true, Lock::Skip)
                    .await?
                    .unwrap_or_default();
                job.merge(queued);
                remove(conn, &datastore, false).await?;
                put(conn, &datastore, true, &job).await?;
                Ok(Some(job))
            })
        })
        .await
}

/// Removes the running job of `datastore`: it ended. If this fails, the next
/// [`take_due`] takes the row over.
pub async fn finish(writer: &Writer, datastore: &str) -> Result<(), Error> {
    let datastore = datastore.to_string();
    writer
        .write_owned(&datastore.clone(), move |conn| {
            Box::pin(async move { remove(conn, &datastore, true).await })
        })
        .await
}

/// Jobs in the queue of each datastore that has any: `(datastore, running, count)`.
/// `running` is false for the queued job, true for the one being run.
pub async fn queue_depth(readers: &Readers) -> Result<Vec<(String, bool, u64)>, Error> {
    let rows: Vec<(String, bool, i64)> = on_readers!(readers, pool => {
        sqlx::query_as(
            "SELECT datastore, running, COUNT(*) AS jobs FROM reconcile_jobs GROUP BY datastore, running",
        )
        .fetch_all(pool)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(datastore, running, jobs)| (datastore, running, u64::try_from(jobs).unwrap_or(0)))
        .collect())
}

/// A job row's columns: `not_before_us`, `apply`, `withdrawn`.
type Columns = (i64, String, String);

fn decode((not_before_us, apply, withdrawn): Columns) -> Result<Job, Error> {
    let corrupt = |e: serde_json::Error| Error::Corrupt(format!("reconcile job: {e}"));
    Ok(Job {
        not_before: Some(from_micros(not_before_us)),
        apply: serde_json::from_str(&apply).map_err(corrupt)?,
        withdrawn: serde_json::from_str::<Vec<String>>(&withdrawn)
            .map_err(corrupt)?
            .into_iter()
            .map(Key::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    async fn store_with_datastore(dir: &std::path::Path) -> Store {
        let store = Store::open(&format!("sqlite://{}", dir.join("j.db").display()))
            .await
            .unwrap();
        store
            .writer()
            .write(|conn| {
                Box::pin(async move {
                    on_conn!(conn, conn => {
                        sqlx::query(
                            "INSERT INTO datastores (name, spec, create_time_us) VALUES ('d', x'', 0)",
                        )
                        .execute(&mut *conn)
                        .await?;
                    });
                    Ok(())
                })
            })
            .await
            .unwrap();
        store
    }

    fn names(job: &Job) -> Vec<&str> {
        job.apply.iter().map(String::as_str).collect()
    }

    #[tokio::test]
    async fn a_job_left_running_is_claimed_again_and_never_wedges_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_datastore(dir.path()).await;
        assert!(matches!(
            take_due(store.writer(), "d").await.unwrap(),
            Err(None)
        ));
        enqueue_alone(store.writer(), "d", Trigger::Apply("a".into()))
            .await
            .unwrap();
        let job = take_due(store.writer(), "d").await.unwrap().unwrap();
        assert_eq!(names(&job), ["a"]);
        // The job ends but `finish` is never recorded (it failed); a new job
        // is queued. The next claim runs both, and nothing is stuck.
        enqueue_alone(store.writer(), "d", Trigger::Apply("b".into()))
            .await
            .unwrap();
        let job = take_due(store.writer(), "d").await.unwrap().unwrap();
        assert_eq!(names(&job), ["a", "b"]);
        finish(store.writer(), "d").await.unwrap();
        assert!(matches!(
            take_due(store.writer(), "d").await.unwrap(),
            Err(None)
        ));
        // A leftover alone is claimed too (as after a crash), even while a
        // revert waits for its debounce; the revert stays queued.
        enqueue_alone(store.writer(), "d", Trigger::Apply("c".into()))
            .await
            .unwrap();
        take_due(store.writer(), "d").await.unwrap().unwrap();
        enqueue_alone(
            store.writer(),
            "d",
            Trigger::Revert(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        let job = take_due(store.writer(), "d").await.unwrap().unwrap();
        assert_eq!(names(&job), ["c"]);
        finish(store.writer(), "d").await.unwrap();
        assert!(matches!(
            take_due(store.writer(), "d").await.unwrap(),
            Err(Some(_))
        ));
        assert_eq!(
            queue_depth(store.readers()).await.unwrap(),
            [("d".into(), false, 1)]
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_running_job_absorbs_what_is_queued_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_datastore(dir.path()).await;
        enqueue_alone(store.writer(), "d", Trigger::Apply("a".into()))
            .await
            .unwrap();
        take_due(store.writer(), "d").await.unwrap().unwrap();
        assert!(absorb(store.writer(), "d").await.unwrap().is_none());
        enqueue_all(
            store.writer(),
            "d",
            vec![
                Trigger::Withdraw(vec![Key::from("/x")]),
                Trigger::Revert(Duration::from_secs(3600)),
            ],
        )
        .await
        .unwrap();
        let job = absorb(store.writer(), "d").await.unwrap().unwrap();
        assert_eq!(names(&job), ["a"]);
        assert_eq!(job.withdrawn, BTreeSet::from([Key::from("/x")]));
        // Nothing is left queued: the running job does it all.
        assert_eq!(
            queue_depth(store.readers()).await.unwrap(),
            [("d".into(), true, 1)]
        );
        finish(store.writer(), "d").await.unwrap();
        assert!(queue_depth(store.readers()).await.unwrap().is_empty());
        store.close().await;
    }
}
