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
//! by the number of distinct paths (a [`Delta`](crate::running::Delta)
//! coalesces), and a hard cap on the open delta makes the ingest stop reading,
//! so that HTTP/2 flow control pushes back on the device instead of anything
//! being dropped.
//!
//! A notification's way, file by file:
//! - `read_ahead`: reads the device's responses on a task of its own, in
//!   place or decoded, at most a few ahead of the ingest;
//! - `ingest`: the ingest task: subscribes, applies each notification to its
//!   segment of `Pending`, reconnects;
//! - `pending`: `Pending`, the three segments (dump, sealed, open) between
//!   the two tasks;
//! - `committer`: the committer task: takes a segment, applies, persists,
//!   publishes.
//!
//! This file holds the public types, the state the tasks and the handle
//! share, and [`SyncHandle`]. The handle's methods never await the tasks,
//! except [`SyncHandle::stop`], which waits for them to end; they take the
//! shared locks for short sections only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::datastore::DatastoreSpec;
use crate::device::Target;
use crate::histogram::Histogram;
use crate::intent::{Deviation, Intended, Intent};
use crate::notification::Decoder;
use crate::running::{Change, Key, Running, Value};

mod caps;
mod committer;
mod ingest;
mod pending;
mod read_ahead;
#[cfg(test)]
mod tests;

pub use crate::human::{human_bytes, human_count, human_duration};
pub use caps::Caps;
use committer::Committer;
use ingest::Ingest;
use pending::Pending;

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

    /// The value if someone made one and it was not dropped since (an event
    /// evicted from the recent ones drops it), without making one.
    pub fn get<T: std::any::Any + Clone + Send + Sync>(&self) -> Option<T> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
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
#[derive(Debug, Clone, Copy)]
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
    /// Attempts to persist a commit that failed (each is retried).
    pub persist_errors: AtomicU64,
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
    /// Longest wait for the end of a dump, for datastores that set none.
    pub initial_sync_timeout: Duration,
    /// Largest device message in bytes, for datastores that set none.
    pub max_message_bytes: u64,
    /// Most leaves of running, for datastores that set none.
    pub max_leaves: u64,
    /// Largest encoded leaf value in bytes, for datastores that set none.
    pub max_leaf_bytes: u64,
}

impl SyncLimits {
    /// Default `initial_sync_timeout`: a 10M-leaf device dumps in under a
    /// minute at the rates measured here; five leave room for a slow device.
    pub const DEFAULT_INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(300);
    /// Default `max_message_bytes`: 64 MiB, far above a notification of a
    /// thousand updates (about 150 KB), and a bound on what one message costs.
    pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 64 << 20;
    /// Default `max_leaves`: ten times the 1M-leaf device the engine is
    /// sized for (about 3 GB of running at the 300 bytes per leaf budget).
    pub const DEFAULT_MAX_LEAVES: u64 = 10_000_000;
    /// Default `max_leaf_bytes`: 1 MiB, the size of a WatchSync or GetRunning
    /// message part; a larger leaf could not reach a client with gRPC's
    /// default 4 MiB limit in one part anyway.
    pub const DEFAULT_MAX_LEAF_BYTES: u64 = 1 << 20;
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
            initial_sync_timeout: Self::DEFAULT_INITIAL_SYNC_TIMEOUT,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_leaves: Self::DEFAULT_MAX_LEAVES,
            max_leaf_bytes: Self::DEFAULT_MAX_LEAF_BYTES,
        }
    }
}

/// What the ingest is told from outside.
#[derive(Debug)]
enum Control {
    Resync(String),
    /// The committer refused a commit over a cap (see `caps`): disconnect,
    /// and reconnect after a backoff, not at once.
    Breach(String),
}

/// State shared by the tasks of one sync and its handle.
struct Shared {
    name: String,
    /// Run on each event before it is published, while `watching` is not 0.
    preparer: std::sync::OnceLock<EventPreparer>,
    /// Clients sent every event (see [`SyncHandle::subscribe_watching`]).
    watching: Arc<AtomicUsize>,
    pending: Mutex<Pending>,
    /// A state change and its event are made under it (see
    /// [`Shared::transition`]); taken before `last_event`.
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
    /// Changed only under `status` (see [`Shared::connecting`]).
    generation: AtomicU64,
    /// The device.
    target: Arc<dyn Target>,
    /// What was declared.
    spec: DatastoreSpec,
    /// The revision of the last commit event sent. Held while an event is
    /// sent, so events leave in revision order and state changes carry the
    /// revision of the last commit event before them. Taken after `status`
    /// when both are held (a state change and its event).
    last_event: Mutex<u64>,
    /// Commit events still holding their change, oldest first, with the
    /// leaves each holds; trimmed to `event_leaves` as events are sent.
    recent: Mutex<Recent>,
    event_leaves: usize,
    event_buffer: usize,
    /// Where a unit test pauses the tasks (see [`Point`]).
    #[cfg(test)]
    hook: std::sync::OnceLock<Hook>,
    /// Run by a unit test after the state changed and before its event is sent.
    #[cfg(test)]
    on_state: std::sync::OnceLock<Arc<dyn Fn(SyncState) + Send + Sync>>,
}

/// Places in the tasks where a unit test may pause one of them, to force an
/// interleaving that is otherwise a matter of timing.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// The ingest is about to apply a notification.
    IngestApply {
        /// Whether it deletes something.
        deletes: bool,
    },
    /// The ingest is about to wait: for the device's next response, or for a
    /// batch of the dump to come back.
    IngestWaits,
    /// The committer took a batch of the dump and is about to sort it.
    SortTaken,
    /// The committer is about to apply a delta it took.
    CommitApply {
        /// Whether it is a replace (a dump).
        replace: bool,
    },
    /// The committer failed (it has forced a resync) and is about to restart.
    CommitterFailed,
}

/// What a unit test runs at each [`Point`]; the task waits for its future.
#[cfg(test)]
type Hook = Arc<dyn Fn(Point) -> BoxFuture<'static, ()> + Send + Sync>;

#[cfg(test)]
impl Shared {
    /// Runs the test's hook at `point`, if one is set.
    async fn at(&self, point: Point) {
        let hook = self.hook.get().cloned();
        if let Some(hook) = hook {
            hook(point).await;
        }
    }
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
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        self.transition(&mut status, state, reason.into());
    }

    /// Moves to `state` and sends its event, both under the `status` lock
    /// the caller holds: state changes and their events are then observed
    /// in one order, so the last event always says the current state.
    /// STOPPED is final: a task still ending cannot move the sync out of it.
    fn transition(&self, status: &mut Status, state: SyncState, reason: String) {
        if status.state == state || status.state == SyncState::Stopped {
            return;
        }
        status.state = state;
        #[cfg(test)]
        if let Some(on_state) = self.on_state.get() {
            on_state(state);
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

    /// Starts the next connection attempt: a new generation, CONNECTING.
    fn connecting(&self) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        // Changed under `status` only, so that `in_sync_if_current` sees the
        // generation and the state of one moment.
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.transition(&mut status, SyncState::Connecting, "connecting".into());
    }

    /// The connection failed: DISCONNECTED with `reason` as the last error,
    /// at once, so that nothing can clear the error in between. Returns the
    /// state it left.
    fn disconnected(&self, reason: String) -> SyncState {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        let before = status.state;
        status.last_error.clone_from(&reason);
        self.transition(&mut status, SyncState::Disconnected, reason);
        before
    }

    /// IN_SYNC, now that connection `generation`'s initial dump is durable,
    /// if that connection is still the current one and still receiving
    /// (INITIAL_SYNC): an older connection's dump, or one that became durable
    /// after its link dropped, says nothing about the device now. Clears the
    /// last error with it.
    fn in_sync_if_current(&self, generation: u64) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status.state != SyncState::InitialSync
            || self.generation.load(Ordering::SeqCst) != generation
        {
            return;
        }
        status.last_error.clear();
        self.transition(
            &mut status,
            SyncState::InSync,
            "initial dump committed".into(),
        );
    }

    fn set_error(&self, error: impl Into<String>) {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error = error.into();
    }

    /// Clears the last error if it is still `error` (nothing else reported
    /// one since).
    fn clear_error_if(&self, error: &str) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status.last_error == error {
            status.last_error.clear();
        }
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
        let caps = limits.caps(&spec.sync);
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
            #[cfg(test)]
            hook: std::sync::OnceLock::new(),
            #[cfg(test)]
            on_state: std::sync::OnceLock::new(),
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
            caps,
            at_cap: AtomicBool::new(false),
            control: control_rx,
        };
        let committer = Committer {
            shared: shared.clone(),
            persist,
            commit_interval: spec.sync.commit_interval,
            threshold: limits.commit_threshold,
            sort_batch: limits.sort_batch.max(1),
            max_leaves: caps.max_leaves,
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

    /// Events the ring keeps for subscribers (`SyncLimits::event_buffer`): a
    /// subscriber further behind than this has lost events.
    pub fn event_buffer(&self) -> usize {
        self.shared.event_buffer
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
