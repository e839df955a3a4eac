//! The sync engine against a scripted device: the sync-response barrier,
//! stream order, pruning on reconnect, no loss while commits stall,
//! backpressure at the cap, and resync when a commit cannot be persisted.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use netsync_core::datastore::{DatastoreSpec, SyncMode};
use netsync_core::device::fake::{Connection, FakeDevice, FakeTarget};
use netsync_core::sync::{
    Committed, Event, EventKind, Persist, Snapshot, SyncHandle, SyncLimits, SyncState,
};
use netsync_proto::gnmi::{self, typed_value};
use netsync_testkit::DEADLINE;
use tokio::sync::{Semaphore, broadcast};

use crate::support::{self, gpath, sync_response, update_response};

/// A store in memory whose commits can be held back.
struct TestPersist {
    /// One permit per commit allowed through; closed = unlimited.
    gate: Semaphore,
    /// Fail the next this-many commits.
    fail_next: Mutex<u32>,
    /// Panic in the next this-many commits (a bug somewhere below the committer).
    panic_next: Mutex<u32>,
    revisions: Mutex<Vec<u64>>,
}

impl TestPersist {
    fn open() -> Arc<Self> {
        let p = Self::held();
        p.release_all();
        p
    }

    fn held() -> Arc<Self> {
        Arc::new(Self {
            gate: Semaphore::new(0),
            fail_next: Mutex::new(0),
            panic_next: Mutex::new(0),
            revisions: Mutex::new(Vec::new()),
        })
    }

    fn release_all(&self) {
        self.gate.close();
    }
}

impl Persist for TestPersist {
    fn persist<'a>(
        &'a self,
        _datastore: &'a str,
        commit: Committed<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match self.gate.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_closed) => {}
            }
            let panic_now = {
                let mut panics = self.panic_next.lock().unwrap();
                let now = *panics > 0;
                *panics = panics.saturating_sub(1);
                now
            };
            assert!(!panic_now, "injected panic");
            {
                let mut fail = self.fail_next.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err("disk on fire".into());
                }
            }
            self.revisions.lock().unwrap().push(commit.revision);
            Ok(())
        })
    }
}

fn spec(mode: SyncMode, commit_interval: Duration) -> DatastoreSpec {
    support::spec("dev", mode, Duration::from_millis(50), commit_interval)
}

fn limits() -> SyncLimits {
    SyncLimits {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..SyncLimits::default()
    }
}

fn val(s: &str) -> gnmi::TypedValue {
    gnmi::TypedValue {
        value: Some(typed_value::Value::StringVal(s.into())),
    }
}

fn update(path: &str, value: &str) -> gnmi::SubscribeResponse {
    notification(&[(path, value)], &[])
}

fn notification(updates: &[(&str, &str)], deletes: &[&str]) -> gnmi::SubscribeResponse {
    update_response(gnmi::Notification {
        update: updates
            .iter()
            .map(|(p, v)| gnmi::Update {
                path: Some(gpath(p)),
                val: Some(val(v)),
                ..Default::default()
            })
            .collect(),
        delete: deletes.iter().map(|p| gpath(p)).collect(),
        ..Default::default()
    })
}

fn send(conn: &Connection, response: gnmi::SubscribeResponse) {
    conn.responses.send(Ok(response)).unwrap();
}

/// An ON_CHANGE sync of `/` committing every `commit_ms` through `persist`,
/// and the scripted device it talks to.
fn start(commit_ms: u64, persist: Arc<TestPersist>) -> (SyncHandle, FakeDevice) {
    let (target, device) = FakeTarget::new();
    let handle = SyncHandle::start(
        spec(SyncMode::OnChange, Duration::from_millis(commit_ms)),
        Arc::new(target),
        persist,
        Snapshot::default(),
        limits(),
    );
    (handle, device)
}

/// The next commit event.
async fn next_commit(
    events: &mut broadcast::Receiver<Arc<Event>>,
) -> (u64, bool, Arc<netsync_core::running::Change>) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.recv().await.unwrap();
            if let EventKind::Commit { replace, change } = &event.kind {
                let change = change.get().expect("a recent commit keeps its change");
                return (event.revision, *replace, change);
            }
        }
    })
    .await
    .expect("a commit in time")
}

/// Waits until `check` holds for the handle.
async fn until(handle: &SyncHandle, what: &str, check: impl Fn(&SyncHandle) -> bool) {
    tokio::time::timeout(DEADLINE, async {
        let mut snapshots = handle.watch_snapshot();
        let mut events = handle.subscribe();
        while !check(handle) {
            tokio::select! {
                _ = snapshots.changed() => {}
                _ = events.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn keys(change: &netsync_core::running::Change) -> Vec<String> {
    change.updates().map(|(k, _)| k).collect()
}

fn leaf(handle: &SyncHandle, path: &str) -> Option<String> {
    handle.snapshot().running.get(path).map(|v| match &v.value {
        Some(typed_value::Value::StringVal(s)) => s.clone(),
        other => format!("{other:?}"),
    })
}

/// Asserts that `handle` never reconnected nor resynced: the engine heals a
/// lost change by a resync (or a reconnect, which resyncs), so on a path with
/// no fault injected either would reveal a loss.
fn assert_no_recovery(handle: &SyncHandle) {
    let stats = handle.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (load(&stats.reconnects), load(&stats.resyncs)),
        (0, 0),
        "reconnects, resyncs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_commit_holds_exactly_the_pre_sync_response_notifications() {
    let persist = TestPersist::held();
    let (handle, mut device) = start(20, persist.clone());
    let mut events = handle.subscribe();
    let mut conn = device.accept().await;
    let subscription = tokio::time::timeout(DEADLINE, conn.requests.recv())
        .await
        .unwrap();
    assert!(
        matches!(
            subscription.and_then(|r| r.request),
            Some(gnmi::subscribe_request::Request::Subscribe(_))
        ),
        "the engine subscribed"
    );
    // The dump trickles in, each notification delayed behind the previous one.
    for i in 0..3 {
        send(&conn, update(&format!("/dump/l{i}"), "d"));
        until(&handle, "dump notification", |h| {
            h.stats()
                .notifications
                .load(std::sync::atomic::Ordering::Relaxed)
                == i + 1
        })
        .await;
    }
    send(&conn, sync_response());
    send(&conn, update("/after/a", "x"));
    send(&conn, update("/after/b", "y"));
    // Both post-barrier changes are read while the first commit is still held.
    until(&handle, "post-barrier ingest", |h| {
        h.stats().updates.load(std::sync::atomic::Ordering::Relaxed) == 5
    })
    .await;
    persist.release_all();

    let (revision, replace, change) = next_commit(&mut events).await;
    assert_eq!(revision, 1);
    assert!(replace);
    assert_eq!(keys(&change), ["/dump/l0", "/dump/l1", "/dump/l2"]);
    let (revision, replace, change) = next_commit(&mut events).await;
    assert_eq!(revision, 2);
    assert!(!replace);
    assert_eq!(keys(&change), ["/after/a", "/after/b"]);
    until(&handle, "in sync", |h| {
        h.status().state == SyncState::InSync
    })
    .await;
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_commits_stall() {
    let persist = TestPersist::held();
    let (handle, mut device) = start(50, persist.clone());
    let conn = device.accept().await;
    // The seed failure: a user without its password, then a burst that adds it.
    send(
        &conn,
        update("/system/aaa/users/user[name=admin]/name", "admin"),
    );
    send(&conn, sync_response());
    for i in 0..499 {
        send(
            &conn,
            update(&format!("/interfaces/interface[name=eth{i}]/mtu"), "9000"),
        );
    }
    send(
        &conn,
        update("/system/aaa/users/user[name=admin]/password", "$6$secret"),
    );
    until(&handle, "the whole burst read", |h| {
        h.stats().updates.load(std::sync::atomic::Ordering::Relaxed) == 501
    })
    .await;
    // Still nothing durable: the ingest went on regardless.
    assert_eq!(handle.snapshot().revision, 0);
    persist.release_all();
    until(&handle, "password in running", |h| {
        leaf(h, "/system/aaa/users/user[name=admin]/password").is_some()
    })
    .await;
    assert_eq!(handle.snapshot().running.len(), 501);
    assert_no_recovery(&handle);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_order_is_kept() {
    let (handle, mut device) = start(20, TestPersist::open());
    let conn = device.accept().await;
    send(&conn, update("/a/x", "1"));
    send(&conn, update("/b/l[k=1]/v", "1"));
    send(&conn, sync_response());
    until(&handle, "initial commit", |h| h.snapshot().revision == 1).await;
    // Update then delete: deleted. Subtree delete then update inside: present.
    send(&conn, update("/a/x", "2"));
    send(&conn, notification(&[], &["/a/x"]));
    send(&conn, notification(&[], &["/b"]));
    send(&conn, update("/b/l[k=2]/v", "2"));
    send(&conn, update("/c", "end"));
    until(&handle, "the marker leaf", |h| leaf(h, "/c").is_some()).await;
    let snapshot = handle.snapshot().running;
    let got: Vec<String> = snapshot.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(got, ["/b/l[k=2]/v", "/c"]);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_prunes_what_vanished_while_disconnected() {
    let (handle, mut device) = start(20, TestPersist::open());
    let mut events = handle.subscribe();
    let conn = device.accept().await;
    send(
        &conn,
        notification(&[("/a", "1"), ("/b", "1"), ("/c", "1")], &[]),
    );
    send(&conn, sync_response());
    next_commit(&mut events).await;
    conn.responses
        .send(Err(netsync_core::device::TargetError::new(
            tonic::Code::Unavailable,
            "link down",
        )))
        .unwrap();
    drop(conn);
    let conn = device.accept().await;
    send(
        &conn,
        notification(&[("/a", "1"), ("/c", "2"), ("/d", "1")], &[]),
    );
    send(&conn, sync_response());
    let (revision, replace, change) = next_commit(&mut events).await;
    assert_eq!(revision, 2);
    assert!(replace);
    assert_eq!(keys(&change), ["/c", "/d"]);
    assert_eq!(change.deletes().collect::<Vec<_>>(), vec!["/b"]);
    until(&handle, "in sync", |h| {
        h.status().state == SyncState::InSync
    })
    .await;
    assert_eq!(
        handle
            .stats()
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        handle.status().last_error.is_empty(),
        "cleared once in sync again"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_pauses_at_the_cap_and_loses_nothing() {
    let (target, mut device) = FakeTarget::new();
    let persist = TestPersist::held();
    let handle = SyncHandle::start(
        spec(SyncMode::OnChange, Duration::from_millis(1)),
        Arc::new(target),
        persist.clone(),
        Snapshot::default(),
        SyncLimits {
            pending_cap: 10,
            commit_threshold: 5,
            ..limits()
        },
    );
    let conn = device.accept().await;
    send(&conn, sync_response());
    for i in 0..100 {
        send(&conn, update(&format!("/l{i:03}"), "v"));
    }
    // The first (initial) commit is held; the ingest stops at the cap.
    until(&handle, "backpressure", |h| h.status().backpressure).await;
    let read = handle
        .stats()
        .updates
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(read < 100, "read {read} despite the cap");
    persist.release_all();
    until(&handle, "every leaf", |h| h.snapshot().running.len() == 100).await;
    until(&handle, "ingest reading again", |h| {
        !h.status().backpressure
    })
    .await;
    assert_no_recovery(&handle);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_be_persisted_is_retried_never_resynced() {
    let persist = TestPersist::held();
    *persist.fail_next.lock().unwrap() = 2;
    let (handle, mut device) = start(5, persist.clone());
    let conn = device.accept().await;
    send(&conn, update("/a", "1"));
    send(&conn, sync_response());
    // The first attempt fails: the status says so, nothing is published.
    persist.gate.add_permits(1);
    until(&handle, "the failure shown", |h| {
        h.status().last_error.contains("disk on fire")
    })
    .await;
    assert!(handle.status().last_error.contains("retrying"));
    assert_eq!(
        handle.snapshot().revision,
        0,
        "nothing published before durable"
    );
    // The device goes on changing meanwhile; it waits in pending.
    send(&conn, update("/b", "2"));
    persist.release_all();
    until(&handle, "both changes committed", |h| {
        leaf(h, "/a").is_some() && leaf(h, "/b").is_some()
    })
    .await;
    assert_eq!(
        *persist.revisions.lock().unwrap(),
        [1, 2],
        "the same revision 1, retried"
    );
    let stats = handle.stats();
    assert_eq!(stats.persist_errors.load(Ordering::Relaxed), 2);
    assert_eq!(stats.resyncs.load(Ordering::Relaxed), 0, "no resync");
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 0, "no reconnect");
    assert_eq!(handle.status().last_error, "", "cleared once durable");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), device.accept())
            .await
            .is_err(),
        "the device was not subscribed again"
    );
    drop(conn);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_replaces_running() {
    let (handle, mut device) = start(5, TestPersist::open());
    let conn = device.accept().await;
    send(&conn, notification(&[("/a", "1"), ("/b", "1")], &[]));
    send(&conn, sync_response());
    until(&handle, "first commit", |h| h.snapshot().revision == 1).await;
    handle.resync();
    let conn2 = tokio::time::timeout(DEADLINE, device.accept())
        .await
        .unwrap();
    send(&conn2, update("/a", "1"));
    send(&conn2, sync_response());
    until(&handle, "replace", |h| h.snapshot().revision == 2).await;
    assert_eq!(handle.snapshot().running.len(), 1);
    assert_eq!(
        handle
            .stats()
            .resyncs
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(conn);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_committer_is_restarted_with_a_resync() {
    let persist = TestPersist::open();
    *persist.panic_next.lock().unwrap() = 1;
    let (handle, mut device) = start(5, persist.clone());
    let conn = device.accept().await;
    send(&conn, update("/a", "1"));
    send(&conn, sync_response());
    let conn2 = tokio::time::timeout(DEADLINE, device.accept())
        .await
        .expect("a resync");
    send(&conn2, update("/a", "1"));
    send(&conn2, sync_response());
    until(&handle, "recovered", |h| {
        h.status().state == SyncState::InSync
    })
    .await;
    assert!(leaf(&handle, "/a").is_some());
    assert!(handle.status().last_error.is_empty());
    assert_eq!(handle.snapshot().revision, 1);
    drop(conn);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_of_an_old_connection_does_not_claim_in_sync() {
    let persist = TestPersist::held();
    let (handle, mut device) = start(5, persist.clone());
    let conn = device.accept().await;
    send(&conn, update("/a", "1"));
    send(&conn, sync_response());
    // Its commit is held; the link drops and a new connection starts its dump.
    conn.responses
        .send(Err(netsync_core::device::TargetError::new(
            tonic::Code::Unavailable,
            "link down",
        )))
        .unwrap();
    let conn2 = tokio::time::timeout(DEADLINE, device.accept())
        .await
        .unwrap();
    until(&handle, "the second dump", |h| {
        h.status().state == SyncState::InitialSync
    })
    .await;
    persist.gate.add_permits(1);
    until(&handle, "the old dump committed", |h| {
        h.snapshot().revision == 1
    })
    .await;
    assert_eq!(
        handle.status().state,
        SyncState::InitialSync,
        "the new connection is not in sync yet"
    );
    send(&conn2, update("/a", "2"));
    send(&conn2, sync_response());
    persist.release_all();
    until(&handle, "in sync", |h| {
        h.status().state == SyncState::InSync
    })
    .await;
    assert_eq!(leaf(&handle, "/a").as_deref(), Some("2"));
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_commit_durable_after_the_link_dropped_does_not_claim_in_sync() {
    let persist = TestPersist::held();
    let (target, mut device) = FakeTarget::new();
    let handle = SyncHandle::start(
        spec(SyncMode::OnChange, Duration::from_millis(5)),
        Arc::new(target),
        persist.clone(),
        Snapshot::default(),
        // The ingest stays in its backoff for the rest of the test.
        SyncLimits {
            backoff_min: Duration::from_secs(3600),
            backoff_max: Duration::from_secs(3600),
            ..SyncLimits::default()
        },
    );
    let mut events = handle.subscribe();
    let conn = device.accept().await;
    send(&conn, update("/a", "1"));
    send(&conn, sync_response());
    // The dump's commit is held in the store while the link drops.
    conn.responses
        .send(Err(netsync_core::device::TargetError::new(
            tonic::Code::Unavailable,
            "link down",
        )))
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.recv().await.unwrap();
            if matches!(
                event.kind,
                EventKind::StateChanged {
                    state: SyncState::Disconnected,
                    ..
                }
            ) {
                return;
            }
        }
    })
    .await
    .expect("disconnected in time");
    persist.release_all();
    let (revision, replace, _) = next_commit(&mut events).await;
    assert_eq!((revision, replace), (1, true));
    // The committer sends nothing more of that commit after the task ended.
    handle.stop().await;
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(
                event.kind,
                EventKind::StateChanged {
                    state: SyncState::InSync,
                    ..
                }
            ),
            "IN_SYNC announced while the device is disconnected"
        );
    }
    let status = handle.status();
    assert!(
        status.last_error.contains("link down"),
        "the disconnect's error is kept: {:?}",
        status.last_error
    );
}
