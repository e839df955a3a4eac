//! The durable reconcile queue: rows of `reconcile_jobs`, at most one queued
//! (`running = 0`) and one running (`running = 1`) per datastore. A new
//! trigger coalesces into the queued row. Writes run inside the one writer's
//! transactions (see [`crate::writer`]), so a read-then-write here is never
//! interleaved with another writer, and an intent row and the job that
//! applies it commit together.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use netsync_core::running::Key;
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use crate::error::Error;
use crate::store::{Store, from_micros, to_micros};

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
pub async fn enqueue(
    conn: &mut SqliteConnection,
    datastore: &str,
    trigger: &Trigger,
) -> Result<bool, Error> {
    let now = SystemTime::now();
    let (not_before, apply, withdrawn) = match trigger {
        Trigger::Apply(name) => (now, vec![name.clone()], vec![]),
        Trigger::Withdraw(paths) => (now, vec![], paths.iter().map(|k| k.to_string()).collect()),
        Trigger::Revert(debounce) => (now + *debounce, vec![], vec![]),
    };
    let existing = sqlx::query(
        "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs WHERE datastore = ? AND running = 0",
    )
    .bind(datastore)
    .fetch_optional(&mut *conn)
    .await?;
    let mut job = match &existing {
        Some(row) => decode(row)?,
        None => Job::default(),
    };
    // The earliest start wins: under steady drift a revert still runs once
    // the first debounce has passed.
    job.not_before = Some(job.not_before.map_or(not_before, |t| t.min(not_before)));
    job.apply.extend(apply);
    job.withdrawn.extend(withdrawn.into_iter().map(Key::from));
    put(conn, datastore, 0, &job).await?;
    Ok(existing.is_none())
}

/// Queues a job for `datastore` on its own (a revert after drift).
pub async fn enqueue_alone(
    store: &Store,
    datastore: &str,
    trigger: Trigger,
) -> Result<bool, Error> {
    let datastore = datastore.to_string();
    store
        .writer()
        .write(move |conn| Box::pin(async move { enqueue(conn, &datastore, &trigger).await }))
        .await
}

/// Writes the job row of `datastore` in state `running`.
async fn put(
    conn: &mut SqliteConnection,
    datastore: &str,
    running: i64,
    job: &Job,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO reconcile_jobs (datastore, running, not_before_us, apply, withdrawn) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (datastore, running) DO UPDATE SET not_before_us = excluded.not_before_us, \
         apply = excluded.apply, withdrawn = excluded.withdrawn",
    )
    .bind(datastore)
    .bind(running)
    .bind(to_micros(job.not_before.unwrap_or_else(SystemTime::now)))
    .bind(serde_json::to_string(&job.apply).unwrap_or_default())
    .bind(
        serde_json::to_string(&job.withdrawn.iter().map(|k| k.to_string()).collect::<Vec<_>>())
            .unwrap_or_default(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A job that was running when the process stopped is queued again
/// (coalesced with a queued one), in one transaction.
pub async fn recover(store: &Store, datastore: &str) -> Result<(), Error> {
    let datastore = datastore.to_string();
    store
        .writer()
        .write(move |conn| {
            Box::pin(async move {
                let running = sqlx::query(
                    "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs WHERE datastore = ? AND running = 1",
                )
                .bind(&datastore)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = running else { return Ok(()) };
                let job = decode(&row)?;
                for intent in job.apply {
                    enqueue(conn, &datastore, &Trigger::Apply(intent)).await?;
                }
                let withdrawn = job.withdrawn.into_iter().collect();
                enqueue(conn, &datastore, &Trigger::Withdraw(withdrawn)).await?;
                sqlx::query("DELETE FROM reconcile_jobs WHERE datastore = ? AND running = 1")
                    .bind(&datastore)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
}

/// Takes the queued job of `datastore` if it is due (it becomes the running
/// one); else how long until it is (`None`: no job queued).
pub async fn take_due(
    store: &Store,
    datastore: &str,
) -> Result<Result<Job, Option<Duration>>, Error> {
    let datastore = datastore.to_string();
    store
        .writer()
        .write(move |conn| {
            Box::pin(async move {
                let Some(row) = sqlx::query(
                    "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs WHERE datastore = ? AND running = 0",
                )
                .bind(&datastore)
                .fetch_optional(&mut *conn)
                .await?
                else {
                    return Ok(Err(None));
                };
                let job = decode(&row)?;
                let now = SystemTime::now();
                if let Some(wait) = job.not_before.and_then(|t| t.duration_since(now).ok())
                    && !wait.is_zero()
                {
                    return Ok(Err(Some(wait)));
                }
                sqlx::query("UPDATE reconcile_jobs SET running = 1 WHERE datastore = ? AND running = 0")
                    .bind(&datastore)
                    .execute(&mut *conn)
                    .await?;
                Ok(Ok(job))
            })
        })
        .await
}

/// Removes the running job of `datastore`: it ended.
pub async fn finish(store: &Store, datastore: &str) -> Result<(), Error> {
    let datastore = datastore.to_string();
    store
        .writer()
        .write(move |conn| {
            Box::pin(async move {
                sqlx::query("DELETE FROM reconcile_jobs WHERE datastore = ? AND running = 1")
                    .bind(&datastore)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
}

/// Jobs in the queue of each datastore that has any: `(datastore, running, count)`.
/// `running` is false for the queued job, true for the one being run.
pub async fn queue_depth(store: &Store) -> Result<Vec<(String, bool, u64)>, Error> {
    let rows = sqlx::query(
        "SELECT datastore, running, COUNT(*) AS jobs FROM reconcile_jobs GROUP BY datastore, running",
    )
    .fetch_all(store.readers())
    .await?;
    rows.iter()
        .map(|row| {
            let jobs: i64 = row.try_get("jobs")?;
            Ok((
                row.try_get("datastore")?,
                row.try_get("running")?,
                u64::try_from(jobs).unwrap_or(0),
            ))
        })
        .collect()
}

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<Job, Error> {
    let apply: String = row.try_get("apply")?;
    let withdrawn: String = row.try_get("withdrawn")?;
    let corrupt = |e: serde_json::Error| Error::Corrupt(format!("reconcile job: {e}"));
    Ok(Job {
        not_before: Some(from_micros(row.try_get("not_before_us")?)),
        apply: serde_json::from_str(&apply).map_err(corrupt)?,
        withdrawn: serde_json::from_str::<Vec<String>>(&withdrawn)
            .map_err(corrupt)?
            .into_iter()
            .map(Key::from)
            .collect(),
    })
}
