//! WatchSync with etcd-like guarantees: events in revision order, no gap, no
//! duplicate; replay from the persisted change log, then live. A watcher that
//! falls behind is ended with RESOURCE_EXHAUSTED naming the revision to resume
//! from; the sync itself never waits for watchers (events are broadcast into a
//! bounded ring that never blocks the committer).

use std::sync::Arc;
use std::time::SystemTime;

use netsync_core::sync::{Event, EventKind, SyncHandle};
use netsync_proto::netsync::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::ResponseStream;
use crate::convert;
use crate::error::Error;
use crate::log::CommitLog;
use crate::watch::{CommitParts, converted};

/// Events buffered per watcher beyond the shared ring.
const WATCHER_BUFFER: usize = 64;

/// Commits read from the log per query while replaying.
const REPLAY_BATCH: u32 = 64;

/// Starts a watch of `sync` from revision `from` (0: from now on), ended
/// with UNAVAILABLE when `stopping` is cancelled.
pub async fn watch(
    sync: Arc<SyncHandle>,
    log: Arc<CommitLog>,
    from: u64,
    stopping: CancellationToken,
) -> Result<ResponseStream<pb::SyncEvent>, Error> {
    // Subscribe before looking at the log, so nothing falls between the two.
    let (live, watching) = sync.subscribe_watching();
    let current = sync.snapshot().revision;
    let name = sync.name().to_string();
    // A revision durable but not yet published (its committer retrying
    // after a failed answer) may have reached a client through a replay:
    // resuming after it is no gap.
    let durable = if from > current + 1 {
        log.newest(&name).await?.unwrap_or(0).max(current)
    } else {
        current
    };
    if from > durable + 1 {
        // Revisions are consecutive from 1: a later one does not exist yet.
        // Waiting for it would hide that the client holds revisions of another
        // history (a re-created datastore, a restored database).
        return Err(Error::OutOfRange(format!(
            "revision {from} of {name:?} does not exist yet (latest: {current}); read running with \
             GetRunning and watch from its revision + 1"
        )));
    }
    if from > 0 && from <= current {
        let oldest = log.oldest(&name).await?;
        if oldest.is_none_or(|oldest| from < oldest) {
            return Err(Error::OutOfRange(format!(
                "revision {from} of {name:?} is no longer kept (oldest kept: {}); read running with \
                 GetRunning and watch from its revision + 1",
                oldest.map_or("none".to_string(), |o| o.to_string())
            )));
        }
    }
    let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
    let next = if from == 0 { current + 1 } else { from };
    let status = sync.status();
    let first = pb::SyncEvent {
        datastore: name.clone(),
        revision: current,
        time: Some(convert::timestamp_to_proto(SystemTime::now())),
        event: Some(pb::sync_event::Event::StateChanged(pb::StateChanged {
            state: convert::state_to_proto(status.state) as i32,
            reason: "current state".into(),
        })),
    };
    // Drop our handle clone: the task must not keep a deleted datastore alive.
    drop(sync);
    tokio::spawn(async move {
        // Counted as watching (the committer converts events ahead) until
        // the watch ends.
        let _watching = watching;
        let live = Live {
            events: live,
            stopping,
        };
        run(name, log, live, tx, next, from > 0, first).await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// A watch's live events, until shutdown starts.
struct Live {
    events: broadcast::Receiver<Arc<Event>>,
    stopping: CancellationToken,
}

/// Why a watch's live events ended.
enum Ended {
    /// The watcher fell further behind than the buffered events reach.
    Lagged,
    /// The sync stopped: its datastore was deleted, or netsyncd is stopping.
    Closed,
    /// netsyncd's shutdown started.
    ShuttingDown,
}

impl Live {
    /// The next event; shutdown ends the watch at once, even while events
    /// keep coming.
    async fn recv(&mut self) -> Result<Arc<Event>, Ended> {
        tokio::select! {
            biased;
            () = self.stopping.cancelled() => Err(Ended::ShuttingDown),
            received = self.events.recv() => received.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(_) => Ended::Lagged,
                broadcast::error::RecvError::Closed => Ended::Closed,
            }),
        }
    }
}

impl Ended {
    /// What the watcher of `name` is told, with the revision to resume from.
    fn status(&self, name: &str, next: u64) -> Status {
        match self {
            Self::Lagged => Status::resource_exhausted(format!(
                "watcher fell behind the commits of {name:?}; resume with from_revision={next}"
            )),
            Self::Closed => Status::unavailable(format!(
                "the sync of {name:?} stopped (deleted or shutting down); resume with from_revision={next}"
            )),
            Self::ShuttingDown => Status::unavailable(format!(
                "netsyncd is shutting down; resume with from_revision={next}"
            )),
        }
    }
}

async fn run(
    name: String,
    log: Arc<CommitLog>,
    mut live: Live,
    tx: mpsc::Sender<Result<pb::SyncEvent, Status>>,
    mut next: u64,
    replay: bool,
    first: pb::SyncEvent,
) {
    if replay && replay_log(&name, &log, &tx, &mut next).await.is_err() {
        return;
    }
    // The state as of the last revision sent, so revisions never go back.
    let first = pb::SyncEvent {
        revision: next - 1,
        ..first
    };
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    loop {
        let event = match live.recv().await {
            Ok(event) => event,
            Err(ended) => {
                let _ = tx.send(Err(ended.status(&name, next))).await;
                return;
            }
        };
        // A commit's change, held here: the event's own may be evicted.
        let mut held = None;
        if let EventKind::Commit { change, .. } = &event.kind {
            if event.revision < next {
                continue;
            }
            if event.revision > next {
                // Persisted before published, so the gap is in the log.
                if replay_log(&name, &log, &tx, &mut next).await.is_err() {
                    return;
                }
                if event.revision < next {
                    continue;
                }
                if event.revision > next {
                    let _ = tx.send(Err(gap(&name, next))).await;
                    return;
                }
            }
            let Some(change) = change.get() else {
                // Evicted from memory before this watcher got to it: the
                // log has it.
                if replay_log(&name, &log, &tx, &mut next).await.is_err() {
                    return;
                }
                continue;
            };
            held = Some(change);
            next = event.revision + 1;
        }
        // Converted once, by the committer or the first watcher; the others
        // copy it.
        let messages = converted(&name, &event, held.as_deref());
        for message in messages.iter() {
            if tx.send(Ok(message.clone())).await.is_err() {
                return;
            }
        }
    }
}

/// Sends every logged commit from `next` on; advances `next`.
async fn replay_log(
    name: &str,
    log: &CommitLog,
    tx: &mpsc::Sender<Result<pb::SyncEvent, Status>>,
    next: &mut u64,
) -> Result<(), ()> {
    loop {
        let batch = match log.read(name, *next, REPLAY_BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(Status::from(e))).await;
                return Err(());
            }
        };
        if batch.is_empty() {
            return Ok(());
        }
        for commit in batch {
            if commit.revision != *next {
                // Compacted between our check and this read.
                let _ = tx.send(Err(gap(name, *next))).await;
                return Err(());
            }
            *next = commit.revision + 1;
            let parts = CommitParts::new(name, commit.revision, commit.time, commit.replace);
            for event in parts.of(&commit.change) {
                tx.send(Ok(event)).await.map_err(|_| ())?;
            }
        }
    }
}

/// The error for a revision the log no longer has.
fn gap(name: &str, missing: u64) -> Status {
    Status::out_of_range(format!(
        "revision {missing} of {name:?} is no longer kept; read running with GetRunning and watch \
         from its revision + 1"
    ))
}
