//! The engine against a device that does not behave: a dump that never ends
//! (the initial-sync deadline), a dump that repeats its leaves (the dump's
//! memory bound), and messages, dumps and leaves over the datastore's caps.
//! Each ends with a clear `last_error`, running at its last good revision,
//! and reconnects with backoff; other datastores go on syncing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use netsync_core::datastore::{DatastoreSpec, SyncMode};
use netsync_core::device::fake::{Connection, FakeDevice, FakeTarget};
use netsync_core::sync::{
    Committed, Event, EventKind, Persist, Snapshot, SyncHandle, SyncLimits, SyncState, human_bytes,
};
use netsync_proto::gnmi::{self, typed_value};
use netsync_testkit::DEADLINE;
use tokio::sync::broadcast;

use crate::support::{self, gpath, sync_response, update_response};

/// A store that takes every commit.
struct Accept;

impl Persist for Accept {
    fn persist<'a>(
        &'a self,
        _datastore: &'a str,
        _commit: Committed<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

fn limits() -> SyncLimits {
    SyncLimits {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..SyncLimits::default()
    }
}

fn spec(name: &str) -> DatastoreSpec {
    support::spec(
        name,
        SyncMode::OnChange,
        Duration::from_millis(50),
        Duration::from_millis(5),
    )
}

fn start(spec: DatastoreSpec, limits: SyncLimits) -> (SyncHandle, FakeDevice) {
    let (target, device) = FakeTarget::new();
    let handle = SyncHandle::start(
        spec,
        Arc::new(target),
        Arc::new(Accept),
        Snapshot::default(),
        limits,
    );
    (handle, device)
}

fn notification(updates: &[(&str, &str)]) -> gnmi::SubscribeResponse {
    update_response(gnmi::Notification {
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
        ..Default::default()
    })
}

fn send(conn: &Connection, response: gnmi::SubscribeResponse) {
    conn.responses.send(Ok(response)).unwrap();
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
    .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", handle.status()));
}

async fn accept(device: &mut FakeDevice) -> Connection {
    tokio::time::timeout(DEADLINE, device.accept())
        .await
        .expect("the engine connects in time")
}

/// Syncs `leaves` leaves (`/l/<i>` = `v`) and waits for IN_SYNC: the last
/// good revision the tests below must keep.
async fn in_sync(handle: &SyncHandle, device: &mut FakeDevice, leaves: usize) -> Connection {
    let conn = accept(device).await;
    let names: Vec<String> = (0..leaves).map(|i| format!("/l/{i}")).collect();
    let updates: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    send(&conn, notification(&updates));
    send(&conn, sync_response());
    until(handle, "in sync", |h| h.status().state == SyncState::InSync).await;
    conn
}

/// Waits for the next DISCONNECTED in `events`, checks that its reason
/// holds `words` and that running is still `revision` with `leaves` leaves,
/// and returns the reason (which is the `last_error` it set).
async fn refused(
    handle: &SyncHandle,
    events: &mut broadcast::Receiver<Arc<Event>>,
    words: &str,
    revision: u64,
    leaves: usize,
) -> String {
    let reason = tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.recv().await.unwrap();
            if let EventKind::StateChanged {
                state: SyncState::Disconnected,
                reason,
            } = &event.kind
            {
                return reason.clone();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {words}: {:?}", handle.status()));
    assert!(reason.contains(words), "{reason}");
    let snapshot = handle.snapshot();
    assert_eq!(
        snapshot.revision, revision,
        "running stays at its last good revision"
    );
    assert_eq!(snapshot.running.len(), leaves);
    reason
}

/// A second datastore beside the misbehaving one still syncs: its device's
/// change lands.
async fn unaffected(other: &SyncHandle, conn: &Connection) {
    send(conn, notification(&[("/other/after", "x")]));
    until(other, "the other datastore's change", |h| {
        h.snapshot().running.get("/other/after").is_some()
    })
    .await;
    assert_eq!(other.status().state, SyncState::InSync);
    assert_eq!(other.status().last_error, "");
}

#[tokio::test(start_paused = true)]
async fn a_dump_without_sync_response_ends_at_the_deadline_and_is_retried_with_backoff() {
    let mut spec = spec("silent");
    spec.sync.initial_sync_timeout = Some(Duration::from_secs(2));
    let limits = SyncLimits {
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        ..SyncLimits::default()
    };
    let (handle, mut device) = start(spec, limits.clone());
    let mut events = handle.subscribe();
    let (other, mut other_device) = start(self::spec("other"), limits);
    let other_conn = in_sync(&other, &mut other_device, 3).await;

    let mut attempts = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..4 {
        let conn = accept(&mut device).await;
        attempts.push(tokio::time::Instant::now());
        // Leaves, but never the sync_response.
        send(&conn, notification(&[("/a", "1"), ("/b", "2")]));
        connections.push(conn);
    }
    let status = handle.status();
    assert_ne!(status.state, SyncState::InSync);
    assert_eq!(
        handle.snapshot().revision,
        0,
        "a partial dump is never committed"
    );
    assert!(handle.stats().reconnects.load(Ordering::Relaxed) >= 3);
    // Each attempt waited out the deadline, then a backoff that grows
    // (1 s, 2 s, 4 s, each jittered by half): no tight loop.
    for (i, pair) in attempts.windows(2).enumerate() {
        let backoff = Duration::from_secs(1 << i);
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(2) + backoff / 2 - Duration::from_millis(10),
            "attempt {i}: {gap:?}"
        );
    }
    // Every attempt ended DISCONNECTED with the deadline as its error, and
    // none was ever IN_SYNC.
    let mut disconnects = 0;
    while let Ok(event) = events.try_recv() {
        if let EventKind::StateChanged { state, reason } = &event.kind {
            assert_ne!(*state, SyncState::InSync);
            if *state == SyncState::Disconnected {
                assert_eq!(reason, "no sync_response within 2s; reconnecting");
                disconnects += 1;
            }
        }
    }
    assert_eq!(disconnects, 3);
    unaffected(&other, &other_conn).await;
    // A connection that is waiting for its dump says so meanwhile.
    assert_eq!(
        handle.status().last_error,
        "no sync_response within 2s; reconnecting"
    );
    handle.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_that_repeats_its_leaves_holds_each_leaf_about_once() {
    let batch = 1000;
    let limits = SyncLimits {
        sort_batch: batch,
        ..limits()
    };
    let (handle, mut device) = start(spec("repeats"), limits);
    let conn = accept(&mut device).await;
    let names: Vec<String> = (0..100).map(|i| format!("/l/{i}")).collect();
    let rounds = 1000;
    for round in 0..rounds {
        let value = round.to_string();
        let updates: Vec<(&str, &str)> =
            names.iter().map(|n| (n.as_str(), value.as_str())).collect();
        send(&conn, notification(&updates));
    }
    let sent = (rounds * names.len()) as u64;
    until(&handle, "every update read", |h| {
        h.stats().updates.load(Ordering::Relaxed) == sent
    })
    .await;
    // 100,000 updates of 100 leaves: what the dump holds stays within a few
    // batches. Before, it held every update (or, once sorted in batches,
    // the 100 leaves once per batch: at least 10,000).
    // (Once the batches in flight are sorted: on a loaded machine the
    // committer may be a little behind the ingest.)
    until(&handle, "the dump coalesced", |h| {
        h.status().pending <= 3 * batch as u64
    })
    .await;
    send(&conn, sync_response());
    until(&handle, "in sync", |h| {
        h.status().state == SyncState::InSync
    })
    .await;
    let running = handle.snapshot().running;
    assert_eq!(running.len(), 100);
    let last = running.get("/l/7").unwrap();
    assert_eq!(
        last.value,
        Some(typed_value::Value::StringVal((rounds - 1).to_string()))
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_bytes_is_refused_and_running_stays() {
    let mut spec = spec("big-message");
    spec.sync.caps.max_message_bytes = 10_000;
    let (handle, mut device) = start(spec, limits());
    let (other, mut other_device) = start(self::spec("other"), limits());
    let other_conn = in_sync(&other, &mut other_device, 3).await;
    let conn = in_sync(&handle, &mut device, 10).await;
    let mut events = handle.subscribe();
    // 200 leaves of about 60 bytes each: about 14 KB in one message.
    let names: Vec<String> = (0..200)
        .map(|i| format!("/big/leaf-with-a-long-name/{i}"))
        .collect();
    let value = "x".repeat(20);
    let updates: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let message = notification(&updates);
    let size = prost::Message::encoded_len(&message) as u64;
    assert!(size > 10_000);
    send(&conn, message);
    let error = refused(&handle, &mut events, "max_message_bytes", 1, 10).await;
    assert_eq!(
        error,
        format!(
            "device sent a {} message; max_message_bytes is 9.8 KiB",
            human_bytes(size)
        )
    );
    // It reconnects (after a backoff), and its dump replaces running.
    let conn = accept(&mut device).await;
    send(&conn, notification(&[("/l/0", "w")]));
    send(&conn, sync_response());
    until(&handle, "in sync again", |h| {
        h.status().state == SyncState::InSync && h.snapshot().running.len() == 1
    })
    .await;
    unaffected(&other, &other_conn).await;
    handle.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_or_dump_over_max_leaves_is_not_committed() {
    let mut spec = spec("many-leaves");
    spec.sync.caps.max_leaves = 50;
    let (handle, mut device) = start(spec, limits());
    let (other, mut other_device) = start(self::spec("other"), limits());
    let other_conn = in_sync(&other, &mut other_device, 3).await;
    let conn = in_sync(&handle, &mut device, 40).await;
    let mut events = handle.subscribe();

    // After IN_SYNC: a change that would make running 60 leaves.
    let names: Vec<String> = (100..120).map(|i| format!("/l/{i}")).collect();
    let updates: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    send(&conn, notification(&updates));
    let error = refused(&handle, &mut events, "max_leaves is 50", 1, 40).await;
    assert_eq!(
        error,
        "running would hold 60 leaves; max_leaves is 50; not committed"
    );

    // The next connection dumps 60 leaves: not committed either.
    let conn = accept(&mut device).await;
    let names: Vec<String> = (0..60).map(|i| format!("/l/{i}")).collect();
    let updates: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "w")).collect();
    send(&conn, notification(&updates));
    send(&conn, sync_response());
    let error = refused(&handle, &mut events, "max_leaves is 50", 1, 40).await;
    assert_eq!(
        error,
        "running would hold 60 leaves; max_leaves is 50; not committed"
    );
    assert!(
        handle
            .snapshot()
            .running
            .get("/l/0")
            .is_some_and(|v| { v.value == Some(typed_value::Value::StringVal("v".into())) })
    );
    assert_eq!(handle.status().pending, 0, "nothing of it is held either");
    unaffected(&other, &other_conn).await;
    handle.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_that_never_ends_with_ever_new_leaves_stops_at_max_leaves() {
    let mut spec = spec("flood");
    spec.sync.caps.max_leaves = 500;
    let limits = SyncLimits {
        sort_batch: 50,
        ..limits()
    };
    let (handle, mut device) = start(spec, limits);
    let mut events = handle.subscribe();
    let conn = accept(&mut device).await;
    // New leaves and never a sync_response, until the engine gives up on the
    // dump (a device that floods its dump; nothing else would stop it
    // before the deadline).
    let mut sent = 0;
    let ended = tokio::time::timeout(DEADLINE, async {
        while handle.stats().reconnects.load(Ordering::Relaxed) == 0 {
            let names: Vec<String> = (sent..sent + 10).map(|i| format!("/n/{i}")).collect();
            let updates: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
            if conn.responses.send(Ok(notification(&updates))).is_err() {
                break;
            }
            sent += 10;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the dump was never cut: {:?}",
        handle.status()
    );
    let error = refused(&handle, &mut events, "max_leaves is 500", 0, 0).await;
    assert!(
        error.starts_with("device sent a dump of at least "),
        "{error}"
    );
    assert!(sent < 10_000, "cut after {sent} leaves");
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_over_max_leaf_bytes_is_refused_in_changes_and_in_dumps() {
    let mut spec = spec("big-leaf");
    spec.sync.caps.max_leaf_bytes = 100;
    let (handle, mut device) = start(spec, limits());
    let conn = in_sync(&handle, &mut device, 5).await;
    let mut events = handle.subscribe();
    let big = "x".repeat(200);
    // A change, in a notification with a good leaf before it: none of it
    // is applied.
    send(
        &conn,
        notification(&[("/l/0", "changed"), ("/big", big.as_str())]),
    );
    let error = refused(&handle, &mut events, "max_leaf_bytes", 1, 5).await;
    assert_eq!(
        error,
        "device sent a 203 bytes value for /big; max_leaf_bytes is 100 bytes"
    );
    assert!(
        handle
            .snapshot()
            .running
            .get("/l/0")
            .is_some_and(|v| { v.value == Some(typed_value::Value::StringVal("v".into())) })
    );
    // The next dump holds it inside a JSON value (flattened, read by the
    // general decoder): not committed either.
    let conn = accept(&mut device).await;
    let json = format!(r#"{{"small": "s", "large": "{big}"}}"#);
    send(
        &conn,
        update_response(gnmi::Notification {
            update: vec![gnmi::Update {
                path: Some(gpath("/j")),
                val: Some(gnmi::TypedValue {
                    value: Some(typed_value::Value::JsonIetfVal(json.into_bytes())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    );
    send(&conn, sync_response());
    let error = refused(&handle, &mut events, "max_leaf_bytes", 1, 5).await;
    assert!(
        error.starts_with("device sent a ")
            && error.ends_with(" value for /j/large; max_leaf_bytes is 100 bytes"),
        "{error}"
    );
    handle.stop().await;
}
