//! Interleavings of the ingest and the committer that timing alone makes
//! rare, forced through the test hooks ([`Point`]) while the real tasks run
//! against a scripted device, and the one order of state changes and their
//! events.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use netsync_proto::gnmi::{self, typed_value};
use netsync_testkit::DEADLINE;
use tokio::sync::{Semaphore, watch};

use super::{
    Committed, EventKind, Hook, Persist, Point, Snapshot, SyncHandle, SyncLimits, SyncState,
};
use crate::Path;
use crate::datastore::{DatastoreSpec, Encoding, RevertSpec, SyncMode, SyncSpec, TargetSpec};
use crate::device::TargetError;
use crate::device::fake::{Connection, FakeDevice, FakeTarget};
use crate::running::Running;

/// A store in memory that lets commits through one permit at a time (or all
/// once the gate is closed) and keeps running as of every revision.
struct GatedPersist {
    gate: Semaphore,
    revisions: Mutex<Vec<(u64, Running)>>,
}

impl GatedPersist {
    fn held() -> Arc<Self> {
        Arc::new(Self {
            gate: Semaphore::new(0),
            revisions: Mutex::default(),
        })
    }

    fn open() -> Arc<Self> {
        let persist = Self::held();
        persist.gate.close();
        persist
    }

    fn revisions(&self) -> Vec<(u64, Running)> {
        self.revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Persist for GatedPersist {
    fn persist<'a>(
        &'a self,
        _datastore: &'a str,
        commit: Committed<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            self.revisions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((commit.revision, commit.running.clone()));
            Ok(())
        })
    }
}

fn spec() -> DatastoreSpec {
    DatastoreSpec {
        name: "dev".into(),
        target: TargetSpec {
            address: "127.0.0.1:1".into(),
            tls: None,
            credentials: None,
            encoding: Encoding::Proto,
            target_name: String::new(),
            allow_insecure_credentials: false,
        },
        sync: SyncSpec {
            mode: SyncMode::OnChange,
            paths: vec![Path::root()],
            interval: Duration::from_millis(50),
            commit_interval: Duration::from_millis(5),
            list_keys: vec![],
            initial_sync_timeout: None,
            caps: Default::default(),
        },
        revert: RevertSpec {
            enabled: false,
            debounce: Duration::ZERO,
        },
    }
}

fn limits() -> SyncLimits {
    SyncLimits {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..SyncLimits::default()
    }
}

fn start(limits: SyncLimits, persist: Arc<GatedPersist>) -> (SyncHandle, FakeDevice) {
    let (target, device) = FakeTarget::new();
    let handle = SyncHandle::start(
        spec(),
        Arc::new(target),
        persist,
        Snapshot::default(),
        limits,
    );
    (handle, device)
}

/// Sets the hook; the tasks have read nothing yet (the test has sent nothing).
fn hook(
    handle: &SyncHandle,
    hook: impl Fn(Point) -> BoxFuture<'static, ()> + Send + Sync + 'static,
) {
    let hook: Hook = Arc::new(hook);
    assert!(handle.shared.hook.set(hook).is_ok());
}

fn gpath(p: &str) -> gnmi::Path {
    Path::parse(p).unwrap().to_gnmi()
}

fn notification(updates: &[(&str, &str)], deletes: &[&str]) -> gnmi::SubscribeResponse {
    gnmi::SubscribeResponse {
        response: Some(gnmi::subscribe_response::Response::Update(
            gnmi::Notification {
                update: updates
                    .iter()
                    .map(|(p, v)| gnmi::Update {
                        path: Some(gpath(p)),
                        val: Some(gnmi::TypedValue {
                            value: Some(typed_value::Value::StringVal((*v).into())),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                delete: deletes.iter().map(|p| gpath(p)).collect(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn sync_response() -> gnmi::SubscribeResponse {
    gnmi::SubscribeResponse {
        response: Some(gnmi::subscribe_response::Response::SyncResponse(true)),
        ..Default::default()
    }
}

fn send(conn: &Connection, response: gnmi::SubscribeResponse) {
    conn.responses.send(Ok(response)).unwrap();
}

async fn accept(device: &mut FakeDevice) -> Connection {
    tokio::time::timeout(DEADLINE, device.accept())
        .await
        .expect("a connection in time")
}

/// Waits until running is at `revision` or later.
async fn wait_revision(handle: &SyncHandle, revision: u64) {
    let mut snapshots = handle.watch_snapshot();
    tokio::time::timeout(DEADLINE, snapshots.wait_for(|s| s.revision >= revision))
        .await
        .unwrap_or_else(|_| panic!("revision {revision} in time"))
        .unwrap();
}

/// Waits until the sync is in `state`.
async fn wait_state(handle: &SyncHandle, state: SyncState) {
    let mut events = handle.subscribe();
    tokio::time::timeout(DEADLINE, async {
        while handle.status().state != state {
            let _ = events.recv().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{state:?} in time"));
}

/// Waits until the test's own stage reaches `stage`.
async fn reach<T: PartialOrd>(stage: &mut watch::Receiver<T>, to: T) {
    tokio::time::timeout(DEADLINE, stage.wait_for(|s| *s >= to))
        .await
        .unwrap_or_else(|_| panic!("a stage in time"))
        .unwrap();
}

fn leaves(running: &Running) -> Vec<String> {
    running.iter().map(|(k, _)| k.to_string()).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BatchStage {
    Start,
    /// The committer is persisting a commit of `open` (so it cannot take a
    /// batch yet).
    Busy,
    /// The committer took a batch of the dump.
    Taken,
    /// The ingest went past the delete, or waits for the batch.
    IngestMovedOn,
}

/// The committer takes a batch of the dump at the last moment before the
/// ingest applies a delete of the same dump (it was busy persisting until
/// then). The delete must wait for the batch: applied before it, the batch's
/// updates are lost from the dump (its commit a replace that prunes them) and
/// giving the batch back panics the committer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_waits_for_a_batch_taken_just_before_it() {
    let persist = GatedPersist::held();
    // The first connection's initial commit goes through.
    persist.gate.add_permits(1);
    let (handle, mut device) = start(
        SyncLimits {
            sort_batch: 2,
            ..limits()
        },
        persist.clone(),
    );
    let (stage_tx, stage) = watch::channel(BatchStage::Start);
    let stage_tx = Arc::new(stage_tx);
    let mut seen = stage.clone();
    let gate = persist.clone();
    hook(&handle, move |point| {
        let (stage_tx, mut stage, gate) = (stage_tx.clone(), stage.clone(), gate.clone());
        async move {
            match point {
                Point::CommitApply { replace: false } => {
                    stage_tx.send_if_modified(|s| {
                        let first = *s == BatchStage::Start;
                        if first {
                            *s = BatchStage::Busy;
                        }
                        first
                    });
                }
                Point::IngestApply { deletes: true } => {
                    // The committer's commit is durable now: it goes on to
                    // take the batch at once.
                    gate.gate.close();
                    reach(&mut stage, BatchStage::Taken).await;
                }
                Point::SortTaken => {
                    stage_tx.send_replace(BatchStage::Taken);
                    reach(&mut stage, BatchStage::IngestMovedOn).await;
                }
                Point::IngestWaits => {
                    stage_tx.send_if_modified(|s| {
                        let taken = *s == BatchStage::Taken;
                        if taken {
                            *s = BatchStage::IngestMovedOn;
                        }
                        taken
                    });
                }
                _ => {}
            }
        }
        .boxed()
    });

    let conn = accept(&mut device).await;
    send(&conn, notification(&[("/keep", "1")], &[]));
    send(&conn, sync_response());
    wait_revision(&handle, 1).await;
    // A change after the barrier: its commit is held in the store.
    send(&conn, notification(&[("/open", "1")], &[]));
    reach(&mut seen, BatchStage::Busy).await;
    conn.responses
        .send(Err(TargetError::new(tonic::Code::Unavailable, "link down")))
        .unwrap();
    let conn2 = accept(&mut device).await;
    // Two updates make a batch due; the committer is still busy.
    send(&conn2, notification(&[("/a/x", "1"), ("/a/y", "1")], &[]));
    send(&conn2, notification(&[], &["/keep"]));
    send(&conn2, sync_response());

    wait_state(&handle, SyncState::InSync).await;
    let revisions = persist.revisions();
    assert_eq!(
        revisions.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        leaves(&revisions[2].1),
        ["/a/x", "/a/y"],
        "the dump's replace holds the sorted batch"
    );
    let status = handle.status();
    assert_eq!(status.state, SyncState::InSync);
    assert_eq!(status.last_error, "");
    assert_eq!(
        handle
            .stats()
            .resyncs
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing was lost, so nothing was resynced"
    );
    drop(conn2);
    handle.stop().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LossStage {
    Start,
    /// The committer took the delta holding `/a`.
    CommitterHasA,
    /// The ingest is about to apply `/c`, read after `/a`.
    IngestAtC,
    /// The committer lost `/a` and forced a resync.
    Failed,
}

/// A commit of `open` is lost (the committer fails while holding it), and the
/// ingest applies one more change before it handles the resync that failure
/// forced. That change must not be committed: on a base without the lost
/// change it makes a running the device never had (`/c` without `/a`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_read_after_a_lost_commit_are_not_committed_on_its_base() {
    let persist = GatedPersist::open();
    let (handle, mut device) = start(limits(), persist.clone());
    let (stage_tx, stage) = watch::channel(LossStage::Start);
    let stage_tx = Arc::new(stage_tx);
    let mut seen = stage.clone();
    hook(&handle, move |point| {
        let (stage_tx, mut stage) = (stage_tx.clone(), stage.clone());
        async move {
            match point {
                Point::CommitApply { replace: false } if *stage.borrow() == LossStage::Start => {
                    stage_tx.send_replace(LossStage::CommitterHasA);
                    reach(&mut stage, LossStage::IngestAtC).await;
                    panic!("injected: the committer loses the delta it holds");
                }
                Point::IngestApply { deletes: false }
                    if *stage.borrow() == LossStage::CommitterHasA =>
                {
                    stage_tx.send_replace(LossStage::IngestAtC);
                    reach(&mut stage, LossStage::Failed).await;
                }
                Point::CommitterFailed => {
                    stage_tx.send_replace(LossStage::Failed);
                }
                _ => {}
            }
        }
        .boxed()
    });

    let conn = accept(&mut device).await;
    send(&conn, notification(&[("/x", "0")], &[]));
    send(&conn, sync_response());
    wait_revision(&handle, 1).await;
    send(&conn, notification(&[("/a", "1")], &[]));
    reach(&mut seen, LossStage::CommitterHasA).await;
    send(&conn, notification(&[("/c", "1")], &[]));
    // The resync the failure forced.
    let conn2 = accept(&mut device).await;
    assert!(
        handle
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .is_empty(),
        "/c, read after the lost /a, waits to be committed"
    );
    send(
        &conn2,
        notification(&[("/x", "0"), ("/a", "1"), ("/c", "1")], &[]),
    );
    send(&conn2, sync_response());
    wait_state(&handle, SyncState::InSync).await;
    for (revision, running) in persist.revisions() {
        let leaves = leaves(&running);
        assert!(
            !leaves.contains(&"/c".to_string()) || leaves.contains(&"/a".to_string()),
            "revision {revision} holds /c without /a: {leaves:?}"
        );
    }
    assert_eq!(leaves(&handle.snapshot().running), ["/a", "/c", "/x"]);
    drop((conn, conn2));
    handle.stop().await;
}

type Receiver = tokio::sync::broadcast::Receiver<Arc<super::Event>>;

/// The states of the events waiting in `events`, in order.
fn drain(events: &mut Receiver) -> Vec<SyncState> {
    let mut states = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => {
                if let EventKind::StateChanged { state, .. } = event.kind {
                    states.push(state);
                }
            }
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                panic!("{n} events lost")
            }
            Err(_) => return states,
        }
    }
}

/// State changes race (in the engine: the committer's IN_SYNC against the
/// ingest's DISCONNECTED): whatever the interleaving, the events say the
/// states in the order they were taken, so the last event says the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_and_their_events_leave_in_one_order() {
    let (handle, mut device) = start(limits(), GatedPersist::open());
    // The ingest waits for the device from now on: it changes no state.
    let conn = accept(&mut device).await;
    wait_state(&handle, SyncState::InitialSync).await;
    let shared = handle.shared.clone();
    // Widens the moment between a state change and its event, which is all
    // a race needs (and must not matter).
    let widen = |state| {
        if state == SyncState::Disconnected {
            for _ in 0..100 {
                std::thread::yield_now();
            }
        }
    };
    assert!(shared.on_state.set(Arc::new(widen)).is_ok());
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let racer = |first: SyncState, second: SyncState, mut events: Option<Receiver>| {
        let (shared, barrier) = (shared.clone(), barrier.clone());
        std::thread::spawn(move || {
            let (mut states, mut mismatches) = (Vec::new(), Vec::new());
            for _ in 0..2_000 {
                barrier.wait();
                shared.set_state(first, "test");
                shared.set_state(second, "test");
                barrier.wait();
                if let Some(events) = events.as_mut() {
                    let sent = drain(events);
                    let now = shared
                        .status
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .state;
                    // Asserted after the rounds: a panic here would leave
                    // the other racer at the barrier for good.
                    if sent.last() != Some(&now) {
                        mismatches.push((sent.clone(), now));
                    }
                    states.extend(sent);
                }
                barrier.wait();
            }
            (states, mismatches)
        })
    };
    let checker = racer(
        SyncState::Connecting,
        SyncState::Disconnected,
        Some(handle.subscribe()),
    );
    let other = racer(SyncState::InSync, SyncState::InitialSync, None);
    other.join().unwrap();
    let (states, mismatches) = checker.join().unwrap();
    assert!(
        mismatches.is_empty(),
        "{} rounds ended with an event that is not the state, such as {:?}",
        mismatches.len(),
        mismatches.first()
    );
    for pair in states.windows(2) {
        assert_ne!(pair[0], pair[1], "an event for the state it was in already");
    }
    drop(conn);
    handle.stop().await;
}

/// The ingest panics (a bug) after the dump's `sync_response`, while the
/// dump's commit waits for the store: its connection is gone, so the commit
/// becoming durable afterwards must not announce IN_SYNC or clear the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_commit_durable_after_the_ingest_panicked_does_not_claim_in_sync() {
    let persist = GatedPersist::held();
    let (handle, mut device) = start(
        SyncLimits {
            // The ingest pauses a second after the panic; long enough.
            backoff_max: Duration::from_secs(3600),
            ..limits()
        },
        persist.clone(),
    );
    hook(&handle, |point| {
        async move {
            if point == (Point::IngestApply { deletes: false }) {
                panic!("injected: a bug in the ingest");
            }
        }
        .boxed()
    });
    let mut events = handle.subscribe();
    let conn = accept(&mut device).await;
    send(&conn, sync_response());
    send(&conn, notification(&[("/a", "1")], &[]));
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let EventKind::StateChanged {
                state: SyncState::Disconnected,
                ..
            } = events.recv().await.unwrap().kind
            {
                return;
            }
        }
    })
    .await
    .expect("DISCONNECTED after the ingest panicked");
    persist.gate.close();
    wait_revision(&handle, 1).await;
    // Ends the committer after it finished that commit (it does not await
    // after publishing).
    handle.stop().await;
    let states = drain(&mut events);
    assert!(
        !states.contains(&SyncState::InSync),
        "IN_SYNC announced without a connection: {states:?}"
    );
    assert_eq!(
        handle.status().last_error,
        "internal error in the ingest; resynced"
    );
}
