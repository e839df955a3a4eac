//! WatchSync with etcd-like guarantees: events in revision order, no gap, no
//! duplicate; replay from the persisted change log, then live. The sync itself
//! never waits for watchers (events are broadcast into a bounded ring that
//! never blocks the committer).
//!
//! Memory is bounded in bytes (`limits::watch_memory`): each watcher's task
//! writes encoded messages into a queue of at most half its budget, waiting
//! while it is full. A replay reads the log a page at a time and encodes a
//! part only when the queue takes it, so it goes at its client's pace and
//! is never cut for being slow. A live watcher owes its client what is
//! queued plus the revisions that arrived while it waited (counted by their
//! encoded size); once that passes `max_watcher_bytes`, or the ring laps it,
//! it is ended with RESOURCE_EXHAUSTED naming the revision to resume from.
//! The revision it is sending does not count: a client that reads along is
//! never cut for one large commit.
//!
//! In replica mode a datastore synced by another replica is watched from
//! the log alone ([`watch_log`]): the same replay, then, after each wake-up
//! of [`crate::notify`] (a commit of the datastore notified, a reconnect of
//! the listener, or the 5 s backstop), what the log has after the last
//! revision queued. Such a watch goes at its client's pace, as a replay
//! does. The owner's own watches do the same once its sync stops while the
//! datastore is still there (its lease moved to another replica, or an
//! UpdateDatastore restarted it): they continue from the log, and the client
//! sees no break. Either ends as the owner's does when the datastore is
//! deleted (UNAVAILABLE, `SYNC_STOPPED`, naming the revision to resume from)
//! or when netsyncd shuts down.
//!
//! Messages are sent as the bytes they were encoded to, through a codec of
//! ours for this one method ([`NetSyncRoutes`]): one encoding of a live event
//! serves every watcher. A watcher that asked for `VALUE_FORMAT_SCALAR`
//! converts each message it queues (decoded, values converted, encoded
//! again: its own CPU work and copy per message, in proportion to the
//! commit); DEVICE watchers share the bytes as before.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{BufMut as _, Bytes};
use futures::Stream;
use netsync_core::sync::{Event, EventKind, SyncHandle};
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_server::NetSyncServer;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::server::NamedService;

use super::NetSyncService;
use crate::convert::{self, ValueFormat};
use crate::error::{Error, RevisionReason};
use crate::limits::WatchMemory;
use crate::limits::watch_memory::{Push, QueueWriter};
use crate::log::CommitLog;
use crate::notify::{Channel, Notices};
use crate::store::Store;
use crate::watch::{self, Parts};

/// A WatchSync response stream: encoded `SyncEvent`s.
pub type EncodedStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Commits read from the log per query while replaying, at most.
const REPLAY_PAGE_COMMITS: u32 = 64;

/// Stored (compressed) bytes read from the log per query while replaying,
/// at most (a single larger commit is read alone).
const REPLAY_PAGE_BYTES: usize = 1 << 20;

/// Replica mode: what a watch needs to follow a datastore from the log
/// (see [`watch_log`]).
#[derive(Debug, Clone)]
pub struct Follow {
    /// Wakes the watch when the datastore is committed to or changed.
    pub notices: Arc<Notices>,
    /// Says whether the datastore is still the incarnation watched.
    pub store: Store,
    /// The state the datastore's owner last published, which a watch from
    /// the log opens with.
    pub replicas: Arc<crate::replicas::Replicas>,
}

/// Starts a watch of `sync` (incarnation `uid` of its datastore, which every
/// event carries) from revision `from` (0: from now on; else without the
/// first `skip` parts of that revision, which its client has), its messages
/// queued within `memory`'s budgets, ended with UNAVAILABLE when `stopping`
/// is cancelled. With `follow` (replica mode), it continues from the log
/// when the sync stops while the datastore is still there.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one thing the watch needs; a struct would only name them twice"
)]
pub async fn watch(
    sync: Arc<SyncHandle>,
    uid: String,
    log: Arc<CommitLog>,
    from: u64,
    skip: usize,
    format: ValueFormat,
    memory: &Arc<WatchMemory>,
    stopping: CancellationToken,
    follow: Option<Follow>,
) -> Result<EncodedStream, Error> {
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
    check_from(&log, &name, from, current, durable).await?;
    let next = if from == 0 { current + 1 } else { from };
    let status = sync.status();
    let state = pb::StateChanged {
        state: convert::state_to_proto(status.state) as i32,
        reason: "current state".into(),
    };
    let (queue, reader) = memory.queue(&name);
    queue.set_next(next);
    let watcher = Watcher {
        name,
        uid,
        log,
        queue,
        format,
        events: live,
        stopping,
        next,
        budget: memory.per_watcher(),
        max_waiting: sync.event_buffer(),
        waiting: VecDeque::new(),
        waiting_bytes: 0,
        closed: false,
        follow,
    };
    // Drop our handle clone: the task must not keep a deleted datastore alive.
    drop(sync);
    tokio::spawn(async move {
        // Counted as watching (the committer encodes events ahead) until
        // the watch ends.
        let _watching = watching;
        // However it ends, the queue's status (if any) has been set; the
        // stream ends once the client has read what is queued.
        let replay = (from > 0).then_some(skip);
        let _ = watcher.run(replay, state).await;
    });
    Ok(reader.into_stream())
}

/// Replica mode: starts a watch of datastore `name` (incarnation `uid`),
/// which another replica syncs, from the log alone: as [`watch`] does, with
/// the newest logged revision as the current one. Its first event, a
/// `StateChanged` like the owner's, says the state is not known here (the
/// owner's state changes and reverts are not logged).
#[allow(
    clippy::too_many_arguments,
    reason = "each is one thing the watch needs; a struct would only name them twice"
)]
pub async fn watch_log(
    name: String,
    uid: String,
    log: Arc<CommitLog>,
    from: u64,
    skip: usize,
    format: ValueFormat,
    memory: &Arc<WatchMemory>,
    stopping: CancellationToken,
    follow: Follow,
) -> Result<EncodedStream, Error> {
    let current = log.newest(&name).await?.unwrap_or(0);
    check_from(&log, &name, from, current, current).await?;
    let next = if from == 0 { current + 1 } else { from };
    // The owner's state as it last published it (at most a lease round
    // old); its later changes are not in the log, and not followed here.
    follow.replicas.refresh(Some(&name)).await;
    let state = match follow.replicas.status(&name) {
        Some(status) => pb::StateChanged {
            state: status.state,
            reason: "current state, as the replica that syncs it last published it; its later \
                     changes are not followed here"
                .into(),
        },
        None => pb::StateChanged {
            state: pb::SyncState::Unspecified as i32,
            reason: "current state: synced by another replica, whose state is not followed here"
                .into(),
        },
    };
    // No ring of live events: closed from the start, so the watcher goes
    // on to the log once its replay is done.
    let (_, events) = broadcast::channel(1);
    let (queue, reader) = memory.queue(&name);
    queue.set_next(next);
    let watcher = Watcher {
        name,
        uid,
        log,
        queue,
        format,
        events,
        stopping,
        next,
        budget: memory.per_watcher(),
        max_waiting: 0,
        waiting: VecDeque::new(),
        waiting_bytes: 0,
        closed: true,
        follow: Some(follow),
    };
    tokio::spawn(async move {
        let replay = (from > 0).then_some(skip);
        let _ = watcher.run(replay, state).await;
    });
    Ok(reader.into_stream())
}

/// Refuses a watch from revision `from` of `name`, whose current revision is
/// `current` (`durable` in the log), when `from` is not committed yet or no
/// longer kept.
async fn check_from(
    log: &CommitLog,
    name: &str,
    from: u64,
    current: u64,
    durable: u64,
) -> Result<(), Error> {
    let name = name.to_string();
    if from > durable + 1 {
        // Revisions are consecutive from 1: a later one does not exist yet.
        // Waiting for it would hide that the client holds revisions of another
        // history (a re-created datastore, a restored database).
        return Err(Error::Revision {
            reason: RevisionReason::NotYet,
            message: format!(
                "revision {from} of {name:?} does not exist yet (latest: {current}); read running \
                 with GetRunning and watch from its revision + 1"
            ),
            datastore: name,
            revision: from,
            bound: Some(current),
        });
    }
    if from > 0 && from <= current {
        let oldest = log.oldest(&name).await?;
        if oldest.is_none_or(|oldest| from < oldest) {
            return Err(Error::Revision {
                reason: RevisionReason::NotKept,
                message: format!(
                    "revision {from} of {name:?} is no longer kept (oldest kept: {}); read running \
                     with GetRunning and watch from its revision + 1",
                    oldest.map_or("none".to_string(), |o| o.to_string())
                ),
                datastore: name,
                revision: from,
                bound: oldest,
            });
        }
    }
    Ok(())
}

/// Why a watch ended.
enum Ended {
    /// The ring of live events lapped the watcher.
    Lagged,
    /// The watcher owed its client more than its byte budget.
    OverBudget(usize),
    /// The sync stopped: its datastore was deleted, or netsyncd is stopping.
    Closed,
    /// netsyncd's shutdown started.
    ShuttingDown,
}

impl Ended {
    /// What the watcher of `name` is told, with the revision to resume from
    /// (in the text and in an `ErrorInfo`).
    fn status(&self, name: &str, next: u64) -> Status {
        use crate::error::{CutReason, watch_cut};
        match self {
            Self::Lagged => watch_cut(
                CutReason::WatcherLagged,
                name,
                next,
                format!(
                    "watcher fell behind the commits of {name:?}; resume with from_revision={next}"
                ),
            ),
            Self::OverBudget(budget) => watch_cut(
                CutReason::WatcherOverBudget,
                name,
                next,
                format!(
                    "watcher fell more than max_watcher_bytes ({budget} bytes) behind the commits \
                     of {name:?}; resume with from_revision={next}"
                ),
            ),
            Self::Closed => watch_cut(
                CutReason::SyncStopped,
                name,
                next,
                format!(
                    "the sync of {name:?} stopped (deleted or shutting down); resume with \
                     from_revision={next}"
                ),
            ),
            Self::ShuttingDown => watch_cut(
                CutReason::ShuttingDown,
                name,
                next,
                format!("netsyncd is shutting down; resume with from_revision={next}"),
            ),
        }
    }
}

/// The watch is over: its end is queued, or its client left.
struct Over;

/// One watcher's task: replay, then live events, into its queue.
struct Watcher {
    name: String,
    uid: String,
    log: Arc<CommitLog>,
    queue: QueueWriter,
    /// How values are written: DEVICE queues the shared bytes as they are.
    format: ValueFormat,
    events: broadcast::Receiver<Arc<Event>>,
    stopping: CancellationToken,
    /// The first revision not queued whole.
    next: u64,
    budget: usize,
    /// Live events that may wait, however small: as many as the engine's
    /// ring keeps, the bound a watcher had before it waited here.
    max_waiting: usize,
    /// Live events received while the queue was full, with their encoded
    /// sizes, oldest first.
    waiting: VecDeque<(Arc<Event>, usize)>,
    waiting_bytes: usize,
    /// The ring is closed: after `waiting`, the watch ends, or goes on
    /// from the log with `follow`.
    closed: bool,
    /// Replica mode: how to follow the datastore from the log.
    follow: Option<Follow>,
}

impl Watcher {
    /// Replays first when `replay` says how many parts of the first
    /// revision to skip.
    async fn run(mut self, replay: Option<usize>, state: pb::StateChanged) -> Result<(), Over> {
        if let Some(skip) = replay {
            self.replay(skip).await?;
        }
        // The state as of the last revision sent, so revisions never go back.
        let first = pb::SyncEvent {
            datastore: self.name.clone(),
            revision: self.next - 1,
            time: Some(convert::timestamp_to_proto(SystemTime::now())),
            uid: self.uid.clone(),
            event: Some(pb::sync_event::Event::StateChanged(state)),
            ..Default::default()
        };
        self.push_paced(&watch::encode(&first), None).await?;
        loop {
            let event = self.next_event().await?;
            self.send(&event).await?;
        }
    }

    /// Ends the watch at once, dropping what is queued.
    fn cut(&self, ended: Ended) -> Over {
        let name = &self.name;
        self.queue.cut(|from| ended.status(name, from));
        Over
    }

    /// Ends the watch after what is queued.
    fn finish(&self, status: impl FnOnce(u64) -> Status) -> Over {
        self.queue.finish(status);
        Over
    }

    /// The next live event: one that waited, else the ring's next.
    async fn next_event(&mut self) -> Result<Arc<Event>, Over> {
        if let Some((event, size)) = self.waiting.pop_front() {
            self.waiting_bytes -= size;
            return Ok(event);
        }
        if self.closed {
            return Err(self.sync_stopped().await);
        }
        tokio::select! {
            biased;
            () = self.stopping.cancelled() => Err(self.cut(Ended::ShuttingDown)),
            received = self.events.recv() => match received {
                Ok(event) => Ok(event),
                Err(broadcast::error::RecvError::Lagged(_)) => Err(self.cut(Ended::Lagged)),
                Err(broadcast::error::RecvError::Closed) => {
                    self.closed = true;
                    Err(self.sync_stopped().await)
                }
            },
        }
    }

    /// The ring closed (its sync stopped) and every live event was queued:
    /// the watch ends, or in replica mode goes on from the log while the
    /// datastore is there.
    async fn sync_stopped(&mut self) -> Over {
        if self.follow.is_none() {
            let name = &self.name;
            return self.finish(|next| Ended::Closed.status(name, next));
        }
        // The stopped sync's ring (events and their encodings) is let go of,
        // not kept for as long as this watch follows the log.
        self.events = broadcast::channel(1).1;
        self.follow_log().await
    }

    /// Follows the log from `next`: reads what is new after each wake-up
    /// (a commit notified, the listener reconnected, the backstop), until
    /// the datastore is deleted (or replaced by another incarnation), the
    /// client leaves or netsyncd shuts down.
    async fn follow_log(&mut self) -> Over {
        let Some(follow) = self.follow.clone() else {
            unreachable!("only a watch that follows the log gets here")
        };
        loop {
            // Made before reading: a commit notified while we read wakes the
            // next wait at once.
            let mut committed = follow.notices.waiter(Channel::Commits, &self.name);
            let mut changed = follow.notices.waiter(Channel::Datastores, &self.name);
            // Reads only the rows of the incarnation watched (see
            // `replay`); when there is nothing new, the datastore may be
            // gone.
            let before = self.next;
            if let Err(over) = self.replay(0).await {
                return over;
            }
            if self.next == before {
                match follow.store.datastore_uid(&self.name).await {
                    Ok(Some(uid)) if uid == self.uid => {}
                    Ok(_) => {
                        let name = &self.name;
                        return self.finish(|next| Ended::Closed.status(name, next));
                    }
                    // The database is unreachable for a moment: looked at
                    // again at the next wake-up (the backstop at the latest).
                    Err(e) => {
                        tracing::warn!(datastore = %self.name, error = %e, "a watch cannot read the datastore; it tries again");
                    }
                }
            }
            loop {
                tokio::select! {
                    biased;
                    () = self.stopping.cancelled() => return self.cut(Ended::ShuttingDown),
                    // Also when the client left or the watch was cut.
                    () = self.queue.writable() => {
                        if self.queue.stopped() {
                            return Over;
                        }
                    }
                    () = committed.wait() => break,
                    () = changed.wait() => break,
                }
            }
        }
    }

    /// Queues one live event.
    async fn send(&mut self, event: &Arc<Event>) -> Result<(), Over> {
        let EventKind::Commit { change, .. } = &event.kind else {
            // A state change or revert observed before a revision this
            // stream has already carried (a replay went past it): sent at
            // that revision, so revisions never go back on a stream.
            let floor = self.next - 1;
            let bytes = if event.revision >= floor {
                watch::encoded(&self.name, &self.uid, event, None)[0].clone()
            } else {
                watch::encode(&watch::other_event(&self.name, &self.uid, event, floor))
            };
            self.push_live(&bytes, None).await?;
            return Ok(());
        };
        if event.revision < self.next {
            return Ok(());
        }
        if event.revision > self.next {
            // Persisted before published, so the gap is in the log.
            self.replay(0).await?;
            return self.after_replay(event.revision);
        }
        let parts = match watch::cached(event) {
            Some(parts) => parts,
            None => match change.get() {
                Some(change) => watch::encoded(&self.name, &self.uid, event, Some(&change)),
                None => {
                    // Evicted from memory before this watcher got to it:
                    // the log has it.
                    self.replay(0).await?;
                    return self.after_replay(event.revision);
                }
            },
        };
        let revision = event.revision;
        let mut index = 0;
        while index < parts.len() {
            let part = parts[index].clone();
            let waited = self.push_live(&part, Some(revision)).await?;
            index += 1;
            if waited && index < parts.len() && watch::cached(event).is_none() {
                // The engine let go of this revision while the client was
                // slow: holding its parts would make them this watcher's
                // alone. The rest comes from the log, a part at a time.
                drop(parts);
                self.replay(index).await?;
                return self.after_replay(revision);
            }
        }
        self.next = revision + 1;
        self.queue.set_next(self.next);
        Ok(())
    }

    /// After a replay meant to reach `revision`: an error if it did not.
    fn after_replay(&self, revision: u64) -> Result<(), Over> {
        if revision < self.next {
            return Ok(());
        }
        let name = &self.name;
        Err(self.finish(|next| gap(name, next)))
    }

    /// Queues `bytes`, waiting while the queue is full; meanwhile, the live
    /// events that arrive wait too, and once what the watcher owes passes
    /// its budget it is cut. Whether it had to wait.
    async fn push_live(&mut self, bytes: &Bytes, revision: Option<u64>) -> Result<bool, Over> {
        let formatted = self.format.sync_event(bytes);
        let bytes = &formatted;
        let mut waited = false;
        loop {
            match self.queue.try_push(bytes, revision) {
                Push::Queued => return Ok(waited),
                Push::Stopped => return Err(Over),
                Push::Full => waited = true,
            }
            tokio::select! {
                biased;
                () = self.stopping.cancelled() => return Err(self.cut(Ended::ShuttingDown)),
                () = self.queue.writable() => {}
                received = self.events.recv(), if !self.closed => match received {
                    Ok(event) => {
                        let size = encoded_size(&self.name, &self.uid, &event);
                        self.waiting.push_back((event, size));
                        self.waiting_bytes += size;
                        if self.queue.bytes() + self.waiting_bytes > self.budget {
                            return Err(self.cut(Ended::OverBudget(self.budget)));
                        }
                        if self.waiting.len() > self.max_waiting {
                            return Err(self.cut(Ended::Lagged));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return Err(self.cut(Ended::Lagged)),
                    Err(broadcast::error::RecvError::Closed) => self.closed = true,
                },
            }
        }
    }

    /// Queues `bytes`, waiting while the queue is full (a replay: the log
    /// keeps what the client has not read yet).
    async fn push_paced(&mut self, bytes: &Bytes, revision: Option<u64>) -> Result<(), Over> {
        let formatted = self.format.sync_event(bytes);
        let bytes = &formatted;
        loop {
            match self.queue.try_push(bytes, revision) {
                Push::Queued => return Ok(()),
                Push::Stopped => return Err(Over),
                Push::Full => {}
            }
            tokio::select! {
                biased;
                () = self.stopping.cancelled() => return Err(self.cut(Ended::ShuttingDown)),
                () = self.queue.writable() => {}
            }
        }
    }

    /// Queues every logged commit from `next` on, the first without its
    /// first `skip` parts (already queued); advances `next`.
    async fn replay(&mut self, mut skip: usize) -> Result<(), Over> {
        loop {
            // Following the log (replica mode), only the rows of the
            // incarnation watched.
            let uid = self.follow.as_ref().map(|_| self.uid.as_str());
            let page = match self
                .log
                .read_page_of(
                    &self.name,
                    uid,
                    self.next,
                    REPLAY_PAGE_COMMITS,
                    REPLAY_PAGE_BYTES,
                )
                .await
            {
                Ok(page) => page,
                Err(e) => return Err(self.finish(|_| Status::from(e))),
            };
            if page.is_empty() {
                return Ok(());
            }
            for stored in page {
                if stored.revision != self.next {
                    // Compacted between our check and this read.
                    let name = &self.name;
                    return Err(self.finish(|next| gap(name, next)));
                }
                let (revision, time, replace) = (stored.revision, stored.time, stored.replace);
                let change = match stored.decode().await {
                    Ok(change) => change,
                    Err(e) => return Err(self.finish(|_| Status::from(e))),
                };
                let (name, uid) = (self.name.clone(), self.uid.clone());
                for part in Parts::new(&name, &uid, revision, time, replace, &change).skip(skip) {
                    self.push_paced(&part, Some(revision)).await?;
                }
                skip = 0;
                self.next = revision + 1;
                self.queue.set_next(self.next);
            }
        }
    }
}

/// A live event's encoded size, to count what a waiting watcher owes. An
/// event whose change the engine has let go of counts nothing: it comes
/// from the log when its turn comes.
fn encoded_size(name: &str, uid: &str, event: &Event) -> usize {
    let encoded = match (&event.kind, watch::cached(event)) {
        (_, Some(encoded)) => encoded,
        (EventKind::Commit { change, .. }, None) => match change.get() {
            Some(change) => watch::encoded(name, uid, event, Some(&change)),
            None => return 0,
        },
        (_, None) => watch::encoded(name, uid, event, None),
    };
    encoded.iter().map(Bytes::len).sum()
}

/// The error for a revision the log no longer has.
fn gap(name: &str, missing: u64) -> Status {
    Status::from(crate::error::Error::Revision {
        reason: crate::error::RevisionReason::NotKept,
        datastore: name.to_string(),
        revision: missing,
        bound: None,
        message: format!(
            "revision {missing} of {name:?} is no longer kept; read running with GetRunning and \
             watch from its revision + 1"
        ),
    })
}

/// The path of WatchSync.
const WATCH_SYNC: &str = "/netsync.v1.NetSync/WatchSync";

/// The `netsync.v1.NetSync` service as served: the generated server for
/// every method but WatchSync, which goes through [`WatchCodec`] so that its
/// messages leave as the bytes they were encoded to once.
#[derive(Debug, Clone)]
pub struct NetSyncRoutes {
    service: Arc<NetSyncService>,
    generated: NetSyncServer<NetSyncService>,
    max_decoding_message_size: usize,
}

impl NetSyncRoutes {
    /// Serves `service`, refusing request messages over
    /// `max_decoding_message_size` bytes.
    pub fn new(service: NetSyncService, max_decoding_message_size: usize) -> Self {
        let service = Arc::new(service);
        Self {
            generated: NetSyncServer::from_arc(service.clone())
                .max_decoding_message_size(max_decoding_message_size),
            service,
            max_decoding_message_size,
        }
    }
}

impl NamedService for NetSyncRoutes {
    const NAME: &'static str = <NetSyncServer<NetSyncService> as NamedService>::NAME;
}

type RouteFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for NetSyncRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != WATCH_SYNC {
            return Box::pin(self.generated.call(request));
        }
        let service = self.service.clone();
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(WatchCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.server_streaming(EncodedWatch(service), request).await)
        })
    }
}

/// WatchSync, answering with encoded messages.
struct EncodedWatch(Arc<NetSyncService>);

impl tonic::server::ServerStreamingService<pb::WatchSyncRequest> for EncodedWatch {
    type Response = Bytes;
    type ResponseStream = EncodedStream;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<EncodedStream>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<pb::WatchSyncRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch_sync_encoded(request).await })
    }
}

/// WatchSync's codec: requests decoded by prost, responses sent as the bytes
/// of an already encoded `SyncEvent`.
#[derive(Debug, Clone, Copy, Default)]
struct WatchCodec;

impl tonic::codec::Codec for WatchCodec {
    type Encode = Bytes;
    type Decode = pb::WatchSyncRequest;
    type Encoder = EncodedMessages;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedMessages
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct EncodedMessages;

impl tonic::codec::Encoder for EncodedMessages {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RequestDecoder;

impl tonic::codec::Decoder for RequestDecoder {
    type Item = pb::WatchSyncRequest;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<pb::WatchSyncRequest>, Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a WatchSyncRequest: {e}")))
    }
}
