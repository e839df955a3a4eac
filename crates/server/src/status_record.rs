//! Intent statuses in the database, in replica mode: the owner of a
//! datastore records its intents' statuses ([`Recorder`]), the other
//! replicas answer GetIntent and ListIntents from them with the stored
//! intents ([`stored_intents`]), and the next owner starts from them
//! ([`intents_with_statuses`], [`crate::intent_status::Tracker::restore`]).
//!
//! Recording is off the reconcile path: a status change only notifies the
//! recorder (one atomic operation, see
//! [`crate::intent_status::Tracker::changes`]); the recorder waits
//! [`INTERVAL`] so that a burst of changes becomes one write, then writes the
//! statuses that differ from what it wrote last, in one piece of the writer
//! fenced by the lease epoch its sync was started under
//! ([`crate::writer::Writer::write_owned_at`]). So a datastore costs the
//! writer at most one piece per interval, whatever the reconcile worker
//! does, and a replica whose lease moved on records nothing. A single
//! netsyncd records nothing: it keeps statuses in memory, as before.
//!
//! Table `intent_statuses` (`migrations/0007_intent_statuses.sql`): a row
//! goes with its intent, and a rewrite of the intent deletes it in the
//! rewrite's transaction, so a status row is about the intent as stored now
//! (see [`INTERVAL`] for the one exception and its bound).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use netsync_core::datastore::DatastoreSpec;
use netsync_proto::netsync::v1 as pb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::convert;
use crate::db::{on_conn, on_readers};
use crate::error::Error;
use crate::intent_status::{IntentState, IntentStatus, Tracker};
use crate::store::{self, Store};
use crate::writer::Writer;

/// How long the recorder gathers changes before it writes them: the most a
/// recorded status lags behind the owner's (plus the write itself). Also
/// bounds the one case where a row may be about an earlier write of its
/// intent: a recording committed just after a rewrite on another replica
/// (the rewrite's transaction deleted the row before it), until the owner
/// takes in the rewrite and records it PENDING.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// Longest wait, when a sync stops, for the recorder's last write.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A status as stored: its state in words, for whoever reads the table.
fn state_text(state: IntentState) -> &'static str {
    match state {
        IntentState::Pending => "PENDING",
        IntentState::Applied => "APPLIED",
        IntentState::Failing => "FAILING",
    }
}

/// A stored row's status; `None` for a state this build does not know.
fn from_row(
    state: &str,
    applied_revision: i64,
    attempts: i64,
    last_error: String,
) -> Option<IntentStatus> {
    let state = match state {
        "PENDING" => IntentState::Pending,
        "APPLIED" => IntentState::Applied,
        "FAILING" => IntentState::Failing,
        _ => return None,
    };
    Some(IntentStatus {
        state,
        applied_revision: u64::try_from(applied_revision).unwrap_or(0),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error,
    })
}

/// One stored intent row, with the status recorded for it (read in one
/// statement, so the two belong to the same moment).
type Row = (
    String,
    Vec<u8>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// The intents of `datastore` as stored (only `only`, if given), sorted by
/// name, each with its recorded status if there is one.
pub async fn intents_with_statuses(
    store: &Store,
    datastore: &str,
    only: Option<&str>,
) -> Result<Vec<(pb::Intent, Option<IntentStatus>)>, Error> {
    let mut rows: Vec<Row> = match only {
        None => on_readers!(store.readers(), pool => {
            sqlx::query_as(
                "SELECT i.name, i.body, s.state, s.applied_revision, s.attempts, s.last_error \
                 FROM intents i LEFT JOIN intent_statuses s \
                   ON s.datastore = i.datastore AND s.name = i.name \
                 WHERE i.datastore = $1",
            )
            .bind(datastore)
            .fetch_all(pool)
            .await?
        }),
        Some(intent) => on_readers!(store.readers(), pool => {
            sqlx::query_as(
                "SELECT i.name, i.body, s.state, s.applied_revision, s.attempts, s.last_error \
                 FROM intents i LEFT JOIN intent_statuses s \
                   ON s.datastore = i.datastore AND s.name = i.name \
                 WHERE i.datastore = $1 AND i.name = $2",
            )
            .bind(datastore)
            .bind(intent)
            .fetch_all(pool)
            .await?
        }),
    };
    // By bytes, as the owner lists them (see `Store::list_intents`).
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter()
        .map(|(intent, body, state, applied, attempts, error)| {
            let proto = store::decode_intent(datastore, intent, &body)?;
            let status = match (state, applied, attempts, error) {
                (Some(state), Some(applied), Some(attempts), Some(error)) => {
                    from_row(&state, applied, attempts, error)
                }
                _ => None,
            };
            Ok((proto, status))
        })
        .collect()
}

/// The intents of `ds` as stored (only `only`, if given), sorted by name, as
/// its owner shows them: each through today's validation
/// ([`convert::check_stored_intent`]), with its recorded status (PENDING
/// when none is recorded yet); one that validation refuses as stored,
/// FAILING with why, as the owner holds it aside.
pub async fn stored_intents(
    store: &Store,
    ds: &DatastoreSpec,
    only: Option<&str>,
) -> Result<Vec<pb::Intent>, Error> {
    Ok(intents_with_statuses(store, &ds.name, only)
        .await?
        .into_iter()
        .map(|(proto, status)| convert::stored_intent_view(ds, proto, status))
        .collect())
}

/// Where the recorder writes: the statuses that changed, each with its
/// intent's name.
pub type Sink =
    Arc<dyn Fn(Vec<(String, IntentStatus)>) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// The sink of the owner of `datastore`: one fenced piece of `writer` per
/// call, under lease epoch `epoch`. A status of an intent deleted meanwhile
/// is not written (its row went with it).
pub fn database_sink(writer: Writer, datastore: String, epoch: Option<i64>) -> Sink {
    Arc::new(move |changed: Vec<(String, IntentStatus)>| {
        let (writer, datastore) = (writer.clone(), datastore.clone());
        Box::pin(async move {
            let of = datastore.clone();
            writer
                .write_owned_at(&of, epoch, move |conn| {
                    Box::pin(async move {
                        for (name, status) in &changed {
                            on_conn!(&mut *conn, conn => {
                                sqlx::query(
                                    "INSERT INTO intent_statuses \
                                       (datastore, name, state, applied_revision, attempts, last_error) \
                                     SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS \
                                       (SELECT 1 FROM intents WHERE datastore = $1 AND name = $2) \
                                     ON CONFLICT (datastore, name) DO UPDATE SET \
                                       state = excluded.state, \
                                       applied_revision = excluded.applied_revision, \
                                       attempts = excluded.attempts, \
                                       last_error = excluded.last_error",
                                )
                                .bind(&datastore)
                                .bind(name)
                                .bind(state_text(status.state))
                                .bind(i64::try_from(status.applied_revision).unwrap_or(i64::MAX))
                                .bind(i64::from(status.attempts))
                                .bind(&status.last_error)
                                .execute(&mut *conn)
                                .await?;
                            });
                        }
                        Ok(())
                    })
                })
                .await
        })
    })
}

/// Records the statuses of one datastore's tracker while its sync runs
/// here (see the module doc). Stopped by [`Recorder::stop`], which writes
/// what changed last.
#[derive(Debug)]
pub struct Recorder {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Starts recording the statuses of `tracker` (of datastore
    /// `datastore`) through `sink`; `stored`: what the table holds now,
    /// which is not written again. Writes once at start what differs from
    /// it (a sync restarted here starts PENDING), then after each change.
    pub fn start(
        datastore: String,
        tracker: Arc<Tracker>,
        stored: HashMap<String, IntentStatus>,
        sink: Sink,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(record(datastore, tracker, stored, sink, stop.clone()));
        Self { stop, task }
    }

    /// Stops recording, after one last write of what changed (bounded by
    /// [`STOP_GRACE`]: a database that hangs must not hold up a sync's stop).
    pub async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// What the recorder wrote last, by intent name: the version of the intent
/// it was about (`None`: found in the table) and the status.
type Written = HashMap<String, (Option<u64>, IntentStatus)>;

async fn record(
    datastore: String,
    tracker: Arc<Tracker>,
    stored: HashMap<String, IntentStatus>,
    sink: Sink,
    stop: CancellationToken,
) {
    let changes = tracker.changes();
    let mut written: Written = stored.into_iter().map(|(n, s)| (n, (None, s))).collect();
    let mut due = true;
    loop {
        if !due {
            tokio::select! {
                () = changes.notified() => {}
                () = stop.cancelled() => break,
            }
        }
        // Everything that changes meanwhile goes in the same write.
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = stop.cancelled() => break,
        }
        match flush(&datastore, &tracker, &mut written, &sink).await {
            Flushed::Done => due = false,
            // Tried again after the interval.
            Flushed::Failed => due = true,
            Flushed::Refused => return,
        }
    }
    flush(&datastore, &tracker, &mut written, &sink).await;
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
enum Flushed {
    /// Nothing to write, or written.
    Done,
    /// Not written; worth trying again.
    Failed,
    /// Refused by the fence: the lease moved on, and every later write
    /// would be refused too.
    Refused,
}

/// Writes the statuses that differ from `written`.
async fn flush(datastore: &str, tracker: &Tracker, written: &mut Written, sink: &Sink) -> Flushed {
    let now = tracker.statuses();
    // Deleted intents' rows went with them.
    written.retain(|name, _| now.contains_key(name));
    let changed: Vec<(String, u64, IntentStatus)> = now
        .into_iter()
        .filter(|(name, (version, status))| match written.get(name) {
            // Read from the table at start: the same status is about the
            // intent as loaded.
            Some((None, was)) => was != status,
            Some((Some(v), was)) => v != version || was != status,
            None => true,
        })
        .map(|(name, (version, status))| (name, version, status))
        .collect();
    if changed.is_empty() {
        return Flushed::Done;
    }
    let statuses = changed
        .iter()
        .map(|(name, _, status)| (name.clone(), status.clone()))
        .collect();
    match sink(statuses).await {
        Ok(()) => {
            for (name, version, status) in changed {
                written.insert(name, (Some(version), status));
            }
            Flushed::Done
        }
        Err(Error::NotOwner(why)) => {
            // The sync stops shortly; the next owner records from here.
            tracing::info!(%datastore, %why, "intent statuses no longer recorded: the lease moved on");
            Flushed::Refused
        }
        Err(error) => {
            tracing::warn!(%datastore, %error, "cannot record intent statuses; trying again shortly");
            Flushed::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Each write a test sink was given.
    type Writes = Arc<Mutex<Vec<Vec<(String, IntentStatus)>>>>;

    /// A sink that remembers each write.
    fn sink() -> (Sink, Writes) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let seen = writes.clone();
        let sink: Sink = Arc::new(move |changed| {
            seen.lock().unwrap().push(changed);
            Box::pin(async { Ok(()) })
        });
        (sink, writes)
    }

    fn sorted(mut write: Vec<(String, IntentStatus)>) -> Vec<(String, IntentStatus)> {
        write.sort_by(|a, b| a.0.cmp(&b.0));
        write
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_write_of_the_last_statuses() {
        let tracker = Arc::new(Tracker::new(["a".to_string(), "b".to_string()]));
        let (sink, writes) = sink();
        // "a" is stored PENDING already: nothing to write at start for it.
        let stored = HashMap::from([("a".to_string(), IntentStatus::pending())]);
        let recorder = Recorder::start("ds".into(), tracker.clone(), stored, sink);
        tokio::time::sleep(INTERVAL * 2).await;
        assert_eq!(
            writes.lock().unwrap().clone(),
            vec![vec![("b".to_string(), IntentStatus::pending())]],
            "at start, what the table lacks"
        );

        // A thousand changes within one interval: one write, of the last.
        let owners = [String::from("a")];
        for _ in 0..1000 {
            tracker.sending(owners.iter());
        }
        tracker.confirm(7, &Default::default(), &Default::default());
        tokio::time::sleep(INTERVAL * 3).await;
        let all = writes.lock().unwrap().clone();
        assert_eq!(all.len(), 2, "{all:?}");
        let last = sorted(all[1].clone());
        assert_eq!(last.len(), 2);
        assert_eq!(last[0].1.attempts, 1000);
        assert_eq!(last[0].1.state, IntentState::Applied);
        assert_eq!(last[0].1.applied_revision, 7);

        // Nothing changed: nothing written, even when woken.
        tracker.confirm(7, &Default::default(), &Default::default());
        tokio::time::sleep(INTERVAL * 3).await;
        assert_eq!(writes.lock().unwrap().len(), 2);

        // Written again with the same status as recorded: still written,
        // since the rewrite deleted the row.
        tracker.written("b");
        tracker.confirm(7, &Default::default(), &Default::default());
        tokio::time::sleep(INTERVAL * 3).await;
        let all = writes.lock().unwrap().clone();
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[2][0].0, "b");

        // The last change before a stop is written by the stop.
        tracker.note_error(owners.iter(), "refused");
        recorder.stop().await;
        let all = writes.lock().unwrap().clone();
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[3][0].1.last_error, "refused");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_tried_again_and_a_refused_one_is_not() {
        let tracker = Arc::new(Tracker::new(["a".to_string()]));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let sink: Sink = Arc::new(move |_| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match n {
                    0 => Err(Error::StorageUnavailable("disk full".into())),
                    1 => Ok(()),
                    _ => Err(Error::NotOwner("taken over".into())),
                }
            })
        });
        let recorder = Recorder::start("ds".into(), tracker.clone(), HashMap::new(), sink);
        tokio::time::sleep(INTERVAL * 5).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "failed, then written");
        tracker.note_error([String::from("a")].iter(), "x");
        tokio::time::sleep(INTERVAL * 5).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "refused: not again");
        recorder.stop().await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
