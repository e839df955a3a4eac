//! One datastore's sync: an ingest task that reads the device and a committer
//! task that turns what was read into revisions of running.
//!
//! ```text
//! device --Subscribe--> [ingest] --coalesce by path--> Pending --swap, O(1)--> [committer]
//!                                                                 |-- apply to running
//!                                                                 |-- persist (durable first)
//!                                                                 '-- publish snapshot + event
//! ```
//!
//! The ingest never waits on the committer, the store or watchers: it only
//! takes the `Pending` lock for the time of one notification. Memory is bounded
//! by the number of distinct paths (a [`Delta`] coalesces), and a hard cap on
//! the open delta makes the ingest stop reading, so that HTTP/2 flow control
//! pushes back on the device instead of anything being dropped.
//!
//! `Pending` holds at most three deltas, each a segment of the stream:
//! - `dump`: the current generation's initial dump, until its `sync_response`;
//!   never committed before that (it would prune what has not arrived yet);
//! - `sealed`: a complete dump closed by `sync_response`, exactly the
//!   notifications received before it: the next commit, a replace, on its own;
//! - `open`: changes received after the last barrier.
//!
//! Sealing a dump supersedes `open` and any older `sealed`: the dump is the
//! device's whole state within the subscribed paths, so the older changes are
//! already reflected in it (or were undone on the device).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use netsync_proto::gnmi;
use prost::Message;
use rand::Rng;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::datastore::{DatastoreSpec, Encoding, SyncMode};
use crate::device::{Received, Target};
use crate::histogram::Histogram;
use crate::intent::{Deviation, Intended, Intent};
use crate::notification::{self, Decoder, Prepared, PreparedNotification};
use crate::running::{Batch, Change, Delta, Key, Running, Value};

/// Where a datastore's sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// Opening the connection or subscription.
    Connecting,
    /// Receiving the initial dump.
    InitialSync,
    /// The dump is committed; changes stream in.
    InSync,
    /// The connection ended; a reconnect is scheduled.
    Disconnected,
    /// The sync was stopped.
    Stopped,
}

/// Running at one revision, as readers see it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The revision; 0 before the first commit.
    pub revision: u64,
    /// When that revision was committed.
    pub time: Option<SystemTime>,
    /// The leaves.
    pub running: Running,
}

/// Something that happened to a datastore, in revision order.
#[derive(Debug, Clone)]
pub struct Event {
    /// The revision it made (commits) or was observed at (everything else).
    pub revision: u64,
    /// When.
    pub time: SystemTime,
    /// What.
    pub kind: EventKind,
    /// The event in a consumer's own form, made by the first consumer that
    /// asks and shared by the rest (every watcher sends the same message).
    pub encoded: Encoded,
}

/// A commit event's change. Buffered events are kept for watchers that are a
/// little behind, but a few large commits would hold gigabytes that way: the
/// committer evicts the changes of older events once the buffered ones
/// outgrow [`SyncLimits::event_leaves`]. A watcher that meets an evicted
/// change reads that revision from the change log, where it is durable.
#[derive(Debug, Default)]
pub struct Payload(Mutex<Option<Arc<Change>>>);

impl Payload {
    /// A payload holding `change`.
    pub fn new(change: Arc<Change>) -> Self {
        Self(Mutex::new(Some(change)))
    }

    /// The change, unless it was evicted.
    pub fn get(&self) -> Option<Arc<Change>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn evict(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl Clone for Payload {
    fn clone(&self) -> Self {
        Self(Mutex::new(self.get()))
    }
}

/// A value computed once per [`Event`] by whoever needs it first; dropped
/// with the event's payload.
#[derive(Default)]
pub struct Encoded(Mutex<Option<Arc<dyn std::any::Any + Send + Sync>>>);

impl Encoded {
    /// The value, made by `make` if nobody made one yet. `T` must be the same
    /// type for every caller of one event; a different type gets `make`'s
    /// value without caching it.
    pub fn get_or_make<T: std::any::Any + Clone + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> T {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = slot.as_ref().and_then(|v| v.downcast_ref::<T>()) {
            return value.clone();
        }
        let value = make();
        if slot.is_none() {
            *slot = Some(Arc::new(value.clone()));
        }
        value
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let made = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        f.write_str(if made { "Encoded(..)" } else { "Encoded(-)" })
    }
}

impl Clone for Encoded {
    /// A clone starts without an encoded form.
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The kinds of [`Event`].
#[derive(Debug, Clone)]
pub enum EventKind {
    /// The sync moved to another state.
    StateChanged {
        /// The new state.
        state: SyncState,
        /// Why, in words.
        reason: String,
    },
    /// A revision was committed.
    Commit {
        /// A replace (the first commit of a connection or cycle).
        replace: bool,
        /// Its net change, while the event is among the recent ones.
        change: Payload,
    },
    /// A reconcile job (apply or revert) moved to another phase.
    Revert(RevertEvent),
}

/// Phases of a reconcile job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertPhase {
    /// Waiting to run.
    Queued,
    /// Its Set is on its way to the device.
    Applying,
    /// The device took it and running shows the result.
    Applied,
    /// Given up: a permanent error or too many attempts.
    Failed,
}

/// One phase of a reconcile job, as watchers see it.
#[derive(Debug, Clone)]
pub struct RevertEvent {
    /// The phase.
    pub phase: RevertPhase,
    /// Attempt number (0 while queued).
    pub attempt: u32,
    /// Leaves the job sets.
    pub updates: Vec<(Key, Value)>,
    /// Paths the job deletes.
    pub deletes: Vec<Key>,
    /// Why it failed, if it did.
    pub error: String,
}

/// A commit to make durable.
#[derive(Debug)]
pub struct Committed<'a> {
    /// Its revision (previous + 1).
    pub revision: u64,
    /// When it was made.
    pub time: SystemTime,
    /// Whether it is a replace.
    pub replace: bool,
    /// Its net change.
    pub change: &'a Change,
    /// Running after it.
    pub running: &'a Running,
}

/// Where commits go to be durable. Implemented by the server's SQLite store.
pub trait Persist: Send + Sync + 'static {
    /// Makes `commit` durable. Nobody sees a revision before this returns `Ok`.
    fn persist<'a>(
        &'a self,
        datastore: &'a str,
        commit: Committed<'a>,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Counters of one sync, since it started in this process.
#[derive(Debug, Default)]
pub struct Stats {
    /// Notifications read.
    pub notifications: AtomicU64,
    /// Leaf updates read (after JSON flattening).
    pub updates: AtomicU64,
    /// Deletes read.
    pub deletes: AtomicU64,
    /// Revisions committed.
    pub commits: AtomicU64,
    /// Forced resyncs (API or engine).
    pub resyncs: AtomicU64,
    /// Reconnects after a stream ended or failed.
    pub reconnects: AtomicU64,
    /// Changes lost. Never incremented: the engine resyncs instead of dropping.
    pub dropped: AtomicU64,
    /// Time from taking a delta to publishing its revision, per revision made.
    pub commit_duration: Histogram,
}

/// A point-in-time status.
#[derive(Debug, Clone)]
pub struct Status {
    /// The state.
    pub state: SyncState,
    /// Most recent error, empty if none.
    pub last_error: String,
    /// Whether ingest is paused because the open delta reached its cap.
    pub backpressure: bool,
    /// Changes received and not yet committed.
    pub pending: u64,
}

/// Limits of one sync; the defaults suit production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncLimits {
    /// An open delta this large is committed without waiting for `commit_interval`.
    pub commit_threshold: usize,
    /// An open delta this large stops the ingest until the committer takes it.
    pub pending_cap: usize,
    /// Buffered events per datastore; a watcher further behind is cut off.
    pub event_buffer: usize,
    /// Leaves (updated plus deleted) the buffered commit events may hold in
    /// all; older events' changes are evicted past it (see [`Payload`]).
    pub event_leaves: usize,
    /// A dump's updates are sorted in batches of this many by the committer
    /// while the dump is still arriving (on the other core), so that its
    /// commit has little left to do, and received updates wait in compact
    /// sorted runs.
    pub sort_batch: usize,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            commit_threshold: 250_000,
            pending_cap: 1_000_000,
            event_buffer: 4096,
            event_leaves: 200_000,
            sort_batch: 1 << 16,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    dump: Option<Delta>,
    /// Numbers dumps, so that a sorted batch goes back to the dump it came
    /// from, or nowhere if that dump was dropped meanwhile.
    dump_seq: u64,
    /// Whether the committer is sorting a batch of the dump. A delete must
    /// wait until it is back (the batch's updates came before it).
    batch_out: bool,
    sealed: Option<Sealed>,
    open: Delta,
    /// When the oldest change in `open` arrived.
    open_since: Option<Instant>,
}

#[derive(Debug)]
struct Sealed {
    delta: Delta,
    /// The first dump of a connection: committed even when it changes nothing,
    /// and marks the sync IN_SYNC once durable (if its connection is still the
    /// current one).
    initial: bool,
    /// The connection it came from.
    generation: u64,
    /// The dump it was.
    seq: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.open.len()
            + self.dump.as_ref().map_or(0, Delta::len)
            + self.sealed.as_ref().map_or(0, |s| s.delta.len())
    }
}

/// What the ingest is told from outside.
#[derive(Debug)]
enum Control {
    Resync(String),
}

/// State shared by the tasks of one sync and its handle.
struct Shared {
    name: String,
    /// Run on each event before it is published, while `watching` is not 0.
    preparer: std::sync::OnceLock<EventPreparer>,
    /// Clients sent every event (see [`SyncHandle::subscribe_watching`]).
    watching: Arc<AtomicUsize>,
    pending: Mutex<Pending>,
    status: Mutex<Status>,
    stats: Stats,
    snapshot: watch::Sender<Snapshot>,
    events: broadcast::Sender<Arc<Event>>,
    /// Wakes the committer: something was added to `pending`.
    committer_wake: Notify,
    /// Wakes the ingest: the committer took the open delta (backpressure).
    ingest_wake: Notify,
    control: mpsc::Sender<Control>,
    /// The datastore's intents and deviations; also locked while a commit is
    /// published, so that both change together.
    intended: Mutex<Intended>,
    /// The current connection; each (re)connection takes the next number.
    generation: AtomicU64,
    /// The device.
    target: Arc<dyn Target>,
    /// What was declared.
    spec: DatastoreSpec,
    /// The revision of the last commit event sent. Held while an event is
    /// sent, so events leave in revision order and state changes carry the
    /// revision of the last commit event before them.
    last_event: Mutex<u64>,
    /// Commit events still holding their change, oldest first, with the
    /// leaves each holds; trimmed to `event_leaves` as events are sent.
    recent: Mutex<Recent>,
    event_leaves: usize,
    event_buffer: usize,
}

/// Commit events still holding their change, oldest first, each with the
/// leaves it holds, and the sum of those.
#[derive(Default)]
struct Recent {
    events: VecDeque<(Arc<Event>, usize)>,
    leaves: usize,
}

impl Shared {
    /// Notes a commit event just sent, and evicts the changes of the oldest
    /// ones while the buffered events hold more than `event_leaves` leaves
    /// (the newest is always kept whole).
    fn keep_recent(&self, event: Arc<Event>, weight: usize) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let Recent { events, leaves } = &mut *recent;
        events.push_back((event, weight));
        *leaves += weight;
        // The channel buffers `event_buffer` events; older ones are gone from it anyway.
        while events.len() > 1 && (*leaves > self.event_leaves || events.len() > self.event_buffer)
        {
            let Some((old, w)) = events.pop_front() else {
                break;
            };
            *leaves -= w;
            if let EventKind::Commit { change, .. } = &old.kind {
                change.evict();
            }
            old.encoded.clear();
        }
    }

    fn set_state(&self, state: SyncState, reason: impl Into<String>) {
        let reason = reason.into();
        {
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if status.state == state {
                return;
            }
            status.state = state;
        }
        tracing::info!(datastore = %self.name, ?state, %reason, "sync state");
        let last_event = self
            .last_event
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = self.events.send(Arc::new(Event {
            revision: *last_event,
            time: SystemTime::now(),
            kind: EventKind::StateChanged { state, reason },
            encoded: Encoded::default(),
        }));
    }

    fn set_error(&self, error: impl Into<String>) {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error = error.into();
    }
}

/// A running sync. Dropping it stops the sync (see [`SyncHandle::stop`] to
/// wait for the tasks to end).
pub struct SyncHandle {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: Mutex<Option<watch::Sender<bool>>>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("datastore", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// Work done on each event before it is published, such as converting it to
/// the form watchers send (cached in [`Event::encoded`]): done by the
/// committer, it counts in the commit's duration, which the next commits
/// start early by (see [`DatastoreSpec`]'s `commit_interval`).
pub type EventPreparer = Arc<dyn Fn(&Event) + Send + Sync>;

/// A client counted as watching a datastore, for as long as this lives. It
/// does not keep the datastore alive.
#[derive(Debug)]
pub struct Watching(Arc<AtomicUsize>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SyncHandle {
    /// Sets the work done on each event before it is published while anyone
    /// watches; the first call wins.
    pub fn prepare_events_with(&self, preparer: EventPreparer) {
        let _ = self.shared.preparer.set(preparer);
    }

    /// Starts syncing `spec` from `target`, with running starting at `initial`
    /// (what the store had), committing through `persist`.
    pub fn start(
        spec: DatastoreSpec,
        target: Arc<dyn Target>,
        persist: Arc<dyn Persist>,
        initial: Snapshot,
        limits: SyncLimits,
    ) -> Self {
        let (control_tx, control_rx) = mpsc::channel(16);
        let initial_revision = initial.revision;
        let durable = Mutex::new(initial.clone());
        let (events, _) = broadcast::channel(limits.event_buffer.max(1));
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            preparer: std::sync::OnceLock::new(),
            watching: Arc::default(),
            pending: Mutex::new(Pending::default()),
            status: Mutex::new(Status {
                state: SyncState::Connecting,
                last_error: String::new(),
                backpressure: false,
                pending: 0,
            }),
            stats: Stats::default(),
            snapshot: watch::Sender::new(initial),
            intended: Mutex::new(Intended::new()),
            generation: AtomicU64::new(0),
            target: target.clone(),
            spec: spec.clone(),
            last_event: Mutex::new(initial_revision),
            recent: Mutex::new(Recent::default()),
            event_leaves: limits.event_leaves.max(1),
            event_buffer: limits.event_buffer.max(1),
            events,
            committer_wake: Notify::new(),
            ingest_wake: Notify::new(),
            control: control_tx,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let stop_ingest = stopped(stop_rx.clone());
        let stop_committer = stopped(stop_rx);
        let ingest = Ingest {
            shared: shared.clone(),
            spec: spec.clone(),
            target,
            decoder: Decoder::new(&spec.sync.list_keys),
            limits: limits.clone(),
            at_cap: AtomicBool::new(false),
            control: control_rx,
        };
        let committer = Committer {
            shared: shared.clone(),
            persist,
            commit_interval: spec.sync.commit_interval,
            threshold: limits.commit_threshold,
            sort_batch: limits.sort_batch.max(1),
            costs: Mutex::default(),
            durable,
        };
        // Every log line of this sync, a dependency's too, names the datastore.
        let span = tracing::info_span!(parent: None, "sync", datastore = %spec.name);
        let committer_span = span.clone();
        let tasks = vec![
            tokio::spawn(async move {
                tokio::select! {
                    () = ingest.supervised().instrument(span) => {}
                    () = stop_ingest => {}
                }
            }),
            tokio::spawn(async move {
                tokio::select! {
                    () = committer.supervised().instrument(committer_span) => {}
                    () = stop_committer => {}
                }
            }),
        ];
        Self {
            shared,
            tasks: Mutex::new(tasks),
            stop: Mutex::new(Some(stop_tx)),
        }
    }

    /// The datastore's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Running at the latest committed revision.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot (for `min_revision` waits).
    /// Clone what it yields and drop the guard at once: a guard held across an
    /// await blocks the committer.
    pub fn watch_snapshot(&self) -> watch::Receiver<Snapshot> {
        self.shared.snapshot.subscribe()
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.events.subscribe()
    }

    /// Subscribes as [`subscribe`](Self::subscribe) does, for a client that
    /// is sent every event: while the guard lives, the committer prepares
    /// each event for it (see [`EventPreparer`]). Internal listeners, which
    /// look at a few events only, use `subscribe`.
    pub fn subscribe_watching(&self) -> (broadcast::Receiver<Arc<Event>>, Watching) {
        self.shared.watching.fetch_add(1, Ordering::Relaxed);
        (
            self.shared.events.subscribe(),
            Watching(self.shared.watching.clone()),
        )
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let mut status = self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status.pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        status
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Adds or replaces an intent; returns the revision its deviations were
    /// computed at.
    pub fn set_intent(&self, intent: Intent) -> u64 {
        let mut intended = self
            .shared
            .intended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = self.snapshot();
        intended.set(intent, &snapshot.running);
        snapshot.revision
    }

    /// Removes an intent; returns it if it existed.
    pub fn remove_intent(&self, name: &str) -> Option<Intent> {
        let mut intended = self
            .shared
            .intended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = self.snapshot();
        intended.remove(name, &snapshot.running)
    }

    /// One intent.
    pub fn intent(&self, name: &str) -> Option<Intent> {
        self.shared
            .intended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every intent, sorted by name.
    pub fn intents(&self) -> Vec<Intent> {
        let intended = self
            .shared
            .intended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        intended.intents().cloned().collect()
    }

    /// The deviations, with the revision of running they describe.
    pub fn deviations(&self) -> (u64, Vec<Deviation>) {
        let intended = self
            .shared
            .intended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let revision = self.shared.snapshot.borrow().revision;
        (revision, intended.deviations().cloned().collect())
    }

    /// Publishes a reconcile job's phase to watchers, at the current revision.
    pub fn publish_revert(&self, event: RevertEvent) {
        let last_event = self
            .shared
            .last_event
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = self.shared.events.send(Arc::new(Event {
            revision: *last_event,
            time: SystemTime::now(),
            kind: EventKind::Revert(event),
            encoded: Encoded::default(),
        }));
    }

    /// The target this sync talks to (reconcile jobs send their Set through it).
    pub fn target(&self) -> Arc<dyn Target> {
        self.shared.target.clone()
    }

    /// The datastore's declared spec.
    pub fn spec(&self) -> &DatastoreSpec {
        &self.shared.spec
    }

    /// Forces a full resync: the stream is reopened and its dump replaces running.
    pub fn resync(&self) {
        // A full queue means a resync is already on its way.
        let _ = self
            .shared
            .control
            .try_send(Control::Resync("resync requested".into()));
    }

    /// Stops the sync and waits for its tasks to end.
    /// Works through a shared reference, so that whoever else holds the handle
    /// (a reader waiting for a revision) cannot keep a deleted datastore syncing.
    pub async fn stop(&self) {
        self.signal_stop();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        // A task that was mid-way may have set another state meanwhile.
        self.shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state = SyncState::Stopped;
    }

    fn signal_stop(&self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(true);
            self.shared.set_state(SyncState::Stopped, "stopped");
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The ingest task: connects, subscribes, reads, reconnects.
struct Ingest {
    shared: Arc<Shared>,
    spec: DatastoreSpec,
    target: Arc<dyn Target>,
    decoder: Decoder,
    limits: SyncLimits,
    /// Set when the open delta reached `pending_cap`; cleared once it is
    /// taken. Lets the per-notification cap check skip the locks.
    at_cap: AtomicBool,
    control: mpsc::Receiver<Control>,
}

/// Why a connection ended.
enum Ended {
    /// Told to resync: reconnect at once.
    Resync(String),
    /// The stream failed or ended: reconnect after a backoff.
    Failed(String),
}

impl Ingest {
    /// Runs the ingest; if it panics (a bug), starts it again: the new
    /// connection's dump replaces running, so nothing it held is lost.
    async fn supervised(mut self) {
        loop {
            match AssertUnwindSafe(self.run()).catch_unwind().await {
                Ok(()) => return,
                Err(_) => {
                    tracing::error!(datastore = %self.shared.name, "ingest task panicked; restarting it with a resync");
                    self.shared
                        .set_error("internal error in the ingest; resynced");
                    self.shared
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .dump = None;
                    self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    // A bug that panics every time must not spin against the device.
                    tokio::time::sleep(self.limits.backoff_max.min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    async fn run(&mut self) {
        let mut backoff = self.limits.backoff_min;
        let mut first = true;
        loop {
            if !first {
                self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
            self.shared.set_state(SyncState::Connecting, "connecting");
            let reached_sync = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ended = match self.spec.sync.mode {
                SyncMode::OnChange | SyncMode::Sample => self.stream(&reached_sync).await,
                SyncMode::Once | SyncMode::Poll | SyncMode::Get => self.cycles(&reached_sync).await,
            };
            // A dump cut short is incomplete: it is never committed.
            self.shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .dump = None;
            let delay = match ended {
                Ended::Resync(reason) => {
                    self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    self.shared.set_state(SyncState::Disconnected, reason);
                    continue;
                }
                Ended::Failed(reason) => {
                    tracing::warn!(datastore = %self.shared.name, %reason, "sync connection ended");
                    self.shared.set_error(reason.clone());
                    self.shared.set_state(SyncState::Disconnected, reason);
                    if reached_sync.load(Ordering::Relaxed) {
                        backoff = self.limits.backoff_min;
                    }
                    let delay = jitter(backoff);
                    backoff = (backoff * 2).min(self.limits.backoff_max);
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                control = self.control.recv() => match control {
                    Some(Control::Resync(_)) => {
                        self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return,
                },
            }
        }
    }

    /// Starts a new generation: its dump will replace running within the
    /// subscribed paths.
    fn begin_dump(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.dump = Some(Delta::replacing(&self.spec.sync.paths));
        pending.dump_seq += 1;
    }

    /// Closes the dump at its `sync_response`: it becomes the next commit.
    fn seal_dump(&self, initial: bool) {
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(dump) = pending.dump.take() else {
                return;
            };
            pending.sealed = Some(Sealed {
                delta: dump,
                // An unconsumed initial seal stays initial when superseded.
                initial: initial || pending.sealed.as_ref().is_some_and(|s| s.initial),
                generation: self.shared.generation.load(Ordering::SeqCst),
                seq: pending.dump_seq,
            });
            pending.open = Delta::new();
            pending.open_since = None;
        }
        self.shared.committer_wake.notify_one();
    }

    /// Waits, if `n` deletes something, until no batch of the dump is out
    /// being sorted: the delete must apply after the updates in it.
    async fn ready_for(&self, note: Note<'_>) {
        if !note.has_deletes() {
            return;
        }
        loop {
            let wake = self.shared.ingest_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let out = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .batch_out;
            if !out {
                return;
            }
            wake.await;
        }
    }

    /// Applies one notification to the segment it belongs to.
    fn ingest(&self, note: Note<'_>) -> Result<(), String> {
        let stats = &self.shared.stats;
        stats.notifications.fetch_add(1, Ordering::Relaxed);
        let counts = {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let pending = &mut *pending;
            let (delta, is_open) = match pending.dump.as_mut() {
                Some(dump) => (dump, false),
                None => (&mut pending.open, true),
            };
            let counts = match note {
                Note::Fast(n) => n.apply(delta),
                Note::Decoded(n) => self.decoder.apply(n, delta).map_err(|e| e.to_string())?,
            };
            let batch_due =
                !is_open && !pending.batch_out && delta.unsorted() >= self.limits.sort_batch.max(1);
            let first_open_change =
                is_open && pending.open_since.is_none() && !pending.open.is_empty();
            if first_open_change {
                pending.open_since = Some(Instant::now());
            }
            let open = if is_open { pending.open.len() } else { 0 };
            if open >= self.limits.pending_cap {
                self.at_cap.store(true, Ordering::Relaxed);
            }
            let threshold_due = open >= self.limits.commit_threshold;
            (counts, first_open_change || batch_due || threshold_due)
        };
        let (counts, wake_committer) = counts;
        if wake_committer {
            // The committer has no deadline yet, or a batch to sort.
            self.shared.committer_wake.notify_one();
        }
        stats.updates.fetch_add(counts.updates, Ordering::Relaxed);
        stats.deletes.fetch_add(counts.deletes, Ordering::Relaxed);
        Ok(())
    }

    /// Waits while the open delta is at its cap, so the device is pushed back
    /// by flow control instead of anything being dropped.
    async fn respect_cap(&self) {
        // Checked without locks: this runs once per notification.
        if !self.at_cap.load(Ordering::Relaxed) {
            return;
        }
        loop {
            let wake = self.shared.ingest_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let full = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open
                .len()
                >= self.limits.pending_cap;
            self.shared
                .status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .backpressure = full;
            if !full {
                self.at_cap.store(false, Ordering::Relaxed);
                return;
            }
            self.shared.committer_wake.notify_one();
            wake.await;
        }
    }

    fn subscription(&self, mode: gnmi::subscription_list::Mode) -> gnmi::SubscribeRequest {
        let sub_mode = match self.spec.sync.mode {
            SyncMode::Sample => gnmi::SubscriptionMode::Sample,
            _ => gnmi::SubscriptionMode::OnChange,
        };
        let interval = u64::try_from(self.spec.sync.interval.as_nanos()).unwrap_or(u64::MAX);
        let subscription = self
            .spec
            .sync
            .paths
            .iter()
            .map(|p| gnmi::Subscription {
                path: Some(p.to_gnmi()),
                mode: sub_mode as i32,
                sample_interval: if sub_mode == gnmi::SubscriptionMode::Sample {
                    interval
                } else {
                    0
                },
                ..Default::default()
            })
            .collect();
        gnmi::SubscribeRequest {
            request: Some(gnmi::subscribe_request::Request::Subscribe(
                gnmi::SubscriptionList {
                    prefix: self.prefix(),
                    subscription,
                    mode: mode as i32,
                    encoding: gnmi_encoding(self.spec.target.encoding) as i32,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    fn prefix(&self) -> Option<gnmi::Path> {
        (!self.spec.target.target_name.is_empty()).then(|| gnmi::Path {
            target: self.spec.target.target_name.clone(),
            ..Default::default()
        })
    }

    /// ON_CHANGE and SAMPLE: one long-lived STREAM subscription.
    async fn stream(&mut self, reached_sync: &std::sync::atomic::AtomicBool) -> Ended {
        let (requests, requests_rx) = mpsc::channel(4);
        let _ = requests.try_send(self.subscription(gnmi::subscription_list::Mode::Stream));
        // `requests` stays alive (the request side open) for the whole stream.
        let mut responses = match self.target.subscribe(requests_rx).await {
            Ok(r) => read_ahead(r),
            Err(e) => return Ended::Failed(format!("subscribe: {e}")),
        };
        self.begin_dump();
        self.shared
            .set_state(SyncState::InitialSync, "receiving the initial dump");
        let mut in_dump = true;
        loop {
            self.respect_cap().await;
            let next = tokio::select! {
                next = responses.next() => next,
                control = self.control.recv() => return match control {
                    Some(Control::Resync(reason)) => Ended::Resync(reason),
                    None => Ended::Failed("stopped".into()),
                },
            };
            match next {
                None => return Ended::Failed("the device ended the subscription".into()),
                Some(Err(e)) => return Ended::Failed(format!("subscription failed: {e}")),
                Some(Ok(step)) => match step {
                    Step::Apply(note) => {
                        self.ready_for(note.as_note()).await;
                        if let Err(e) = self.ingest(note.as_note()) {
                            return self.bad_input(e);
                        }
                    }
                    Step::Sync if in_dump => {
                        in_dump = false;
                        reached_sync.store(true, Ordering::Relaxed);
                        self.seal_dump(true);
                    }
                    Step::Sync | Step::Skip => {}
                    Step::Fail(error) => return Ended::Failed(error),
                },
            }
        }
    }

    /// ONCE, POLL and GET: a full dump every `interval`, each a replace.
    async fn cycles(&mut self, reached_sync: &std::sync::atomic::AtomicBool) -> Ended {
        let mut initial = true;
        let mut poll: Option<(mpsc::Sender<gnmi::SubscribeRequest>, Incomings)> = None;
        loop {
            self.begin_dump();
            if initial {
                self.shared
                    .set_state(SyncState::InitialSync, "receiving the initial dump");
            }
            let result = match self.spec.sync.mode {
                SyncMode::Get => self.get_cycle().await,
                SyncMode::Once => self.once_cycle().await,
                _ => self.poll_cycle(&mut poll).await,
            };
            match result {
                Ok(()) => {
                    reached_sync.store(true, Ordering::Relaxed);
                    self.seal_dump(initial);
                    initial = false;
                }
                Err(ended) => {
                    // An incomplete dump is never committed.
                    self.shared
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .dump = None;
                    return ended;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.spec.sync.interval) => {}
                control = self.control.recv() => return match control {
                    Some(Control::Resync(reason)) => Ended::Resync(reason),
                    None => Ended::Failed("stopped".into()),
                },
            }
        }
    }

    async fn get_cycle(&mut self) -> Result<(), Ended> {
        let request = gnmi::GetRequest {
            prefix: self.prefix(),
            path: self.spec.sync.paths.iter().map(|p| p.to_gnmi()).collect(),
            r#type: gnmi::get_request::DataType::All as i32,
            encoding: gnmi_encoding(self.spec.target.encoding) as i32,
            ..Default::default()
        };
        let response = tokio::select! {
            r = self.target.get(request) => r.map_err(|e| Ended::Failed(format!("get: {e}")))?,
            control = self.control.recv() => return Err(match control {
                Some(Control::Resync(reason)) => Ended::Resync(reason),
                None => Ended::Failed("stopped".into()),
            }),
        };
        for n in &response.notification {
            self.ready_for(Note::Decoded(n)).await;
            self.ingest(Note::Decoded(n))
                .map_err(|e| self.bad_input(e))?;
        }
        Ok(())
    }

    async fn once_cycle(&mut self) -> Result<(), Ended> {
        let (requests, requests_rx) = mpsc::channel(1);
        let _ = requests.try_send(self.subscription(gnmi::subscription_list::Mode::Once));
        let mut responses = self
            .target
            .subscribe(requests_rx)
            .await
            .map(read_ahead)
            .map_err(|e| Ended::Failed(format!("subscribe: {e}")))?;
        self.read_dump(&mut responses).await
    }

    async fn poll_cycle(
        &mut self,
        poll: &mut Option<(mpsc::Sender<gnmi::SubscribeRequest>, Incomings)>,
    ) -> Result<(), Ended> {
        if poll.is_none() {
            let (requests, requests_rx) = mpsc::channel(4);
            let _ = requests.try_send(self.subscription(gnmi::subscription_list::Mode::Poll));
            let responses = self
                .target
                .subscribe(requests_rx)
                .await
                .map(read_ahead)
                .map_err(|e| Ended::Failed(format!("subscribe: {e}")))?;
            *poll = Some((requests, responses));
            // The first dump comes without a Poll.
        } else if let Some((requests, _)) = poll.as_ref() {
            let message = gnmi::SubscribeRequest {
                request: Some(gnmi::subscribe_request::Request::Poll(gnmi::Poll {})),
                ..Default::default()
            };
            if requests.send(message).await.is_err() {
                *poll = None;
                return Err(Ended::Failed("poll stream closed".into()));
            }
        }
        let Some((_, responses)) = poll.as_mut() else {
            unreachable!()
        };
        let mut responses = std::mem::replace(responses, Box::pin(futures::stream::empty()));
        let result = self.read_dump(&mut responses).await;
        match (&result, poll.as_mut()) {
            (Ok(()), Some((_, slot))) => *slot = responses,
            _ => *poll = None,
        }
        result
    }

    /// Reads notifications into the dump until `sync_response`.
    async fn read_dump(&mut self, responses: &mut Incomings) -> Result<(), Ended> {
        loop {
            let next = tokio::select! {
                next = responses.next() => next,
                control = self.control.recv() => return Err(match control {
                    Some(Control::Resync(reason)) => Ended::Resync(reason),
                    None => Ended::Failed("stopped".into()),
                }),
            };
            match next {
                None => {
                    return Err(Ended::Failed(
                        "the device ended the stream before sync_response".into(),
                    ));
                }
                Some(Err(e)) => return Err(Ended::Failed(format!("subscription failed: {e}"))),
                Some(Ok(step)) => match step {
                    Step::Apply(note) => {
                        self.ready_for(note.as_note()).await;
                        self.ingest(note.as_note()).map_err(|e| self.bad_input(e))?;
                    }
                    Step::Sync => return Ok(()),
                    Step::Skip => {}
                    Step::Fail(error) => return Err(Ended::Failed(error)),
                },
            }
        }
    }

    /// A notification that cannot be applied: nothing of it was applied, and
    /// skipping it would lose data, so the connection is restarted (its dump
    /// replaces running) and the error reported.
    fn bad_input(&self, error: String) -> Ended {
        tracing::error!(datastore = %self.shared.name, %error, "unusable notification; resyncing");
        Ended::Failed(format!("unusable notification: {error}"))
    }
}

/// Durations of the last few commits of changes (dumps excluded: they are
/// not on a deadline).
#[derive(Debug, Default)]
struct CommitCosts {
    recent: [Duration; 8],
    next: usize,
}

impl CommitCosts {
    fn record(&mut self, took: Duration) {
        self.recent[self.next] = took;
        self.next = (self.next + 1) % self.recent.len();
    }

    /// How much earlier than `interval` after the first change a commit
    /// starts: twice the longest recent commit, at most half the interval.
    /// Twice, because on a loaded machine one commit can take twice as long
    /// as the one before (100 to 300 ms for the same work under churn), and
    /// a commit that outlasts the lead breaks the interval's promise.
    fn lead(&self, interval: Duration) -> Duration {
        let longest = self.recent.iter().max().copied().unwrap_or_default();
        (longest * 2).min(interval / 2)
    }
}

/// What the committer does next.
enum Work {
    /// Commit a delta.
    Commit {
        delta: Delta,
        /// Whether it is a replace (a dump).
        replace: bool,
        /// Whether it is a connection's initial dump.
        initial: bool,
        /// The connection it came from.
        generation: u64,
    },
    /// Sort a batch of dump `seq`.
    Sort { seq: u64, batch: Batch },
}

/// The committer task: takes deltas, applies them, persists, publishes.
struct Committer {
    shared: Arc<Shared>,
    persist: Arc<dyn Persist>,
    commit_interval: Duration,
    threshold: usize,
    sort_batch: usize,
    /// How long recent commits of changes took.
    costs: Mutex<CommitCosts>,
    /// Running at the last durable revision: the base of the next commit.
    /// Updated as soon as a commit is durable, before it is published, so a
    /// failure in between can never make a revision number be used twice.
    durable: Mutex<Snapshot>,
}

impl Committer {
    /// Runs the committer; if it panics (a bug), the delta it held is gone, so
    /// it forces a resync and starts again.
    async fn supervised(self) {
        loop {
            if AssertUnwindSafe(self.run()).catch_unwind().await.is_err() {
                self.drop_batch();
                self.fail("internal error in the committer".into());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn run(&self) {
        loop {
            match self.next_work().await {
                Work::Commit {
                    delta,
                    replace,
                    initial,
                    generation,
                } => {
                    self.shared.ingest_wake.notify_one();
                    // A trace of its own per commit (not a child of the long-lived sync span).
                    let span = tracing::info_span!(parent: None, "commit", datastore = %self.shared.name,
                        replace, revision = tracing::field::Empty, updates = tracing::field::Empty,
                        deletes = tracing::field::Empty);
                    self.commit(delta, replace, initial, generation)
                        .instrument(span)
                        .await;
                }
                Work::Sort { seq, batch } => self.sort(seq, batch).await,
            }
        }
    }

    /// Sorts a batch of dump `seq` off the async workers and gives it back.
    async fn sort(&self, seq: u64, batch: Batch) {
        let run = match tokio::task::spawn_blocking(move || batch.sort()).await {
            Ok(run) => run,
            Err(e) => {
                self.drop_batch();
                self.fail(format!("sorting a dump failed: {e}"));
                return;
            }
        };
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let pending = &mut *pending;
            pending.batch_out = false;
            // The dump may have been sealed meanwhile, or dropped (then so is
            // the run).
            if pending.dump_seq == seq {
                if let Some(dump) = pending.dump.as_mut() {
                    dump.add_run(run);
                } else if let Some(sealed) = pending.sealed.as_mut().filter(|s| s.seq == seq) {
                    sealed.delta.add_run(run);
                }
            }
        }
        // A delete may be waiting for the batch.
        self.shared.ingest_wake.notify_one();
    }

    /// A batch out for sorting is lost: so is its dump.
    fn drop_batch(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.batch_out {
            pending.batch_out = false;
            pending.dump = None;
            let seq = pending.dump_seq;
            if pending.sealed.as_ref().is_some_and(|s| s.seq == seq) {
                pending.sealed = None;
            }
        }
        drop(pending);
        self.shared.ingest_wake.notify_one();
    }

    /// Waits until a commit is due and takes its delta (an O(1) swap), or
    /// until a batch of the dump is due for sorting.
    async fn next_work(&self) -> Work {
        loop {
            let wake = self.shared.committer_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let deadline = {
                let mut pending = self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(sealed) = pending.sealed.take() {
                    return Work::Commit {
                        delta: sealed.delta,
                        replace: true,
                        initial: sealed.initial,
                        generation: sealed.generation,
                    };
                }
                if !pending.batch_out
                    && let Some(batch) = pending
                        .dump
                        .as_mut()
                        .and_then(|d| d.take_batch(self.sort_batch))
                {
                    pending.batch_out = true;
                    return Work::Sort {
                        seq: pending.dump_seq,
                        batch,
                    };
                }
                // `commit_interval` bounds how long a change waits until it
                // is committed, so the commit starts early by what recent
                // ones took.
                let wait = self.commit_interval.saturating_sub(
                    self.costs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .lead(self.commit_interval),
                );
                match pending.open_since {
                    Some(since)
                        if pending.open.len() >= self.threshold || since.elapsed() >= wait =>
                    {
                        pending.open_since = None;
                        return Work::Commit {
                            delta: std::mem::take(&mut pending.open),
                            replace: false,
                            initial: false,
                            generation: 0,
                        };
                    }
                    Some(since) => Some(since + wait),
                    None => None,
                }
            };
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = &mut wake => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    async fn commit(&self, delta: Delta, replace: bool, initial: bool, generation: u64) {
        let base = self
            .durable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let started = Instant::now();
        let (running, change) = if delta.len() > 10_000 {
            // Large deltas are applied off the async workers so the ingest keeps reading.
            let base = base.running.clone();
            match tokio::task::spawn_blocking(move || base.apply(delta)).await {
                Ok(result) => result,
                Err(e) => {
                    self.fail(format!("applying a commit failed: {e}"));
                    return;
                }
            }
        } else {
            base.running.apply(delta)
        };
        if change.is_empty() && !initial {
            return;
        }
        let revision = base.revision + 1;
        // As i64: OpenTelemetry attributes have no unsigned integers.
        tracing::Span::current()
            .record("revision", revision as i64)
            .record("updates", change.update_count() as i64)
            .record("deletes", change.delete_count() as i64);
        let time = SystemTime::now();
        let committed = Committed {
            revision,
            time,
            replace,
            change: &change,
            running: &running,
        };
        let applied = started.elapsed();
        if let Err(e) = self.persist.persist(&self.shared.name, committed).await {
            self.fail(format!("cannot persist revision {revision}: {e}"));
            return;
        }
        let persisted = started.elapsed() - applied;
        *self.durable.lock().unwrap_or_else(PoisonError::into_inner) = Snapshot {
            revision,
            time: Some(time),
            running: running.clone(),
        };
        let leaves = running.len();
        {
            // Publishing and updating the deviations under the intents lock
            // keeps them consistent with each other for intent writers.
            let mut intended = self
                .shared
                .intended
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            intended.on_commit(&change, &running);
            self.shared.snapshot.send_replace(Snapshot {
                revision,
                time: Some(time),
                running,
            });
        }
        let (updates, deletes) = (change.update_count(), change.delete_count());
        let weight = updates + deletes;
        let event = Arc::new(Event {
            revision,
            time,
            kind: EventKind::Commit {
                replace,
                change: Payload::new(Arc::new(change)),
            },
            encoded: Encoded::default(),
        });
        let preparer = self.shared.preparer.get().cloned();
        let watched = self.shared.watching.load(Ordering::Relaxed) > 0;
        if let Some(prepare) = preparer.filter(|_| watched) {
            if weight > 10_000 {
                let event = event.clone();
                let _ = tokio::task::spawn_blocking(move || prepare(&event)).await;
            } else {
                prepare(&event);
            }
        }
        self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.commit_duration.record(started.elapsed());
        if !replace {
            self.costs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(started.elapsed());
        }
        tracing::debug!(
            datastore = %self.shared.name, revision, replace, updates, deletes, leaves, ?applied,
            ?persisted, "committed"
        );
        {
            let mut last_event = self
                .shared
                .last_event
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = self.shared.events.send(event.clone());
            self.shared.keep_recent(event, weight);
            *last_event = revision;
        }
        // Only the current connection's dump makes the sync IN_SYNC: an older
        // one committed late says nothing about the connection now.
        if initial && generation == self.shared.generation.load(Ordering::SeqCst) {
            self.shared.set_error(String::new());
            self.shared
                .set_state(SyncState::InSync, "initial dump committed");
        }
    }

    /// A commit could not be made: its delta is gone from pending, so the only
    /// way not to lose it is a resync, whose dump brings it back.
    fn fail(&self, error: String) {
        tracing::error!(datastore = %self.shared.name, %error, "commit failed; forcing a resync");
        self.shared.set_error(error.clone());
        // Changes after the lost delta would be committed on the wrong base,
        // giving a running the device never had; the resync brings them back.
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.open = Delta::new();
            pending.open_since = None;
        }
        self.shared.ingest_wake.notify_one();
        if self
            .shared
            .control
            .try_send(Control::Resync(error))
            .is_err()
        {
            tracing::warn!(datastore = %self.shared.name, "resync already queued");
        }
    }
}

/// Messages decoded ahead of the ingest, at most.
const READ_AHEAD: usize = 16;

/// Responses after [`read_ahead`], each as what it asks of the ingest.
type Incomings =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Step, crate::device::TargetError>> + Send>>;

/// Reads a response on the fast path, or decodes it.
fn incoming(received: Received) -> Result<Step, crate::device::TargetError> {
    match received {
        Received::Encoded(bytes) => match notification::prepare(&bytes) {
            Some(Prepared::Notification(n)) => Ok(Step::Apply(Owned::Fast(n))),
            Some(Prepared::SyncResponse) => Ok(Step::Sync),
            None => gnmi::SubscribeResponse::decode(bytes)
                .map(Step::of)
                .map_err(|e| {
                    crate::device::TargetError::new(
                        tonic::Code::Internal,
                        format!("undecodable SubscribeResponse: {e}"),
                    )
                }),
        },
        Received::Decoded(response) => Ok(Step::of(response)),
    }
}

/// Reads `responses` on a task of its own, so that reading the device's
/// messages (the largest single cost of a sync) runs on one core while the
/// ingest applies earlier ones on another. At most [`READ_AHEAD`] messages
/// wait in between, so flow control still pushes back on the device when the
/// ingest stops reading. The task ends with the returned stream, or at the
/// end of the device's stream.
fn read_ahead(mut responses: crate::device::ResponseStream) -> Incomings {
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(
        async move {
            while let Some(item) = responses.next().await {
                let item = item.and_then(incoming);
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
        .in_current_span(),
    );
    let reader = AbortOnDrop(reader);
    Box::pin(futures::stream::poll_fn(move |cx| {
        // Owning the reader here ties its life to the stream's.
        let _owned = &reader;
        rx.poll_recv(cx)
    }))
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A notification to apply, borrowed.
#[derive(Clone, Copy)]
enum Note<'a> {
    Fast(&'a PreparedNotification),
    Decoded(&'a gnmi::Notification),
}

/// A notification to apply, owned.
enum Owned {
    Fast(PreparedNotification),
    Decoded(gnmi::Notification),
}

impl Note<'_> {
    fn has_deletes(self) -> bool {
        match self {
            Note::Fast(n) => n.has_deletes(),
            Note::Decoded(n) => !n.delete.is_empty(),
        }
    }
}

impl Owned {
    fn as_note(&self) -> Note<'_> {
        match self {
            Owned::Fast(n) => Note::Fast(n),
            Owned::Decoded(n) => Note::Decoded(n),
        }
    }
}

/// What a response asks of the ingest.
enum Step {
    Apply(Owned),
    Sync,
    /// Nothing (an empty response, or one holding only extensions).
    Skip,
    /// The device reported an error in the stream.
    Fail(String),
}

impl Step {
    /// What a decoded response asks.
    fn of(response: gnmi::SubscribeResponse) -> Self {
        match response.response {
            Some(gnmi::subscribe_response::Response::Update(n)) => Step::Apply(Owned::Decoded(n)),
            Some(gnmi::subscribe_response::Response::SyncResponse(_)) => Step::Sync,
            other => device_error(other).map_or(Step::Skip, Step::Fail),
        }
    }
}

/// The text of a (deprecated, but still sent by some devices) in-stream error.
#[allow(
    deprecated,
    reason = "devices may still send the deprecated error message"
)]
fn device_error(response: Option<gnmi::subscribe_response::Response>) -> Option<String> {
    match response {
        Some(gnmi::subscribe_response::Response::Error(e)) => {
            Some(format!("device error {}: {}", e.code, e.message))
        }
        _ => None,
    }
}

/// gNMI's encoding for ours.
fn gnmi_encoding(encoding: Encoding) -> gnmi::Encoding {
    match encoding {
        Encoding::JsonIetf => gnmi::Encoding::JsonIetf,
        Encoding::Json => gnmi::Encoding::Json,
        Encoding::Proto => gnmi::Encoding::Proto,
        Encoding::Ascii => gnmi::Encoding::Ascii,
    }
}

/// `base` plus or minus up to half of it, so reconnecting fleets spread out.
fn jitter(base: Duration) -> Duration {
    let factor = rand::rng().random_range(0.5..1.5);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_start_early_by_twice_the_longest_recent_one() {
        let interval = Duration::from_secs(1);
        let mut costs = CommitCosts::default();
        assert_eq!(costs.lead(interval), Duration::ZERO);
        costs.record(Duration::from_millis(100));
        costs.record(Duration::from_millis(40));
        assert_eq!(costs.lead(interval), Duration::from_millis(200));
        // At most half the interval.
        costs.record(Duration::from_millis(300));
        assert_eq!(costs.lead(interval), Duration::from_millis(500));
        // Only the last eight count.
        for _ in 0..8 {
            costs.record(Duration::from_millis(10));
        }
        assert_eq!(costs.lead(interval), Duration::from_millis(20));
    }
}
