//! Syncing a real gNMI device over loopback through the API: GetRunning at a
//! consistent revision, WatchSync live and replayed, DatastoreStatus, Resync,
//! restart recovery and delete.

use std::collections::BTreeMap;
use std::time::Duration;

use netsync_proto::gnmi::typed_value;
use netsync_proto::netsync::v1 as pb;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::{self, converge, status};
use netsync_testkit::client::{next_event, watch};
use netsync_testkit::datastore::{DatastoreBuilder, create};
use netsync_testkit::device::Device;
use pb::net_sync_client::NetSyncClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::support::TestServer;

/// A PROTO datastore `name` of `device`, committing every 20 ms.
fn datastore(name: &str, device: &Device) -> pb::Datastore {
    DatastoreBuilder::new(name, device.addr)
        .encoding(pb::Encoding::Proto)
        .commit_interval_ms(20)
        .build()
}

/// Running of `name` at `min_revision` or later, as path -> string.
async fn running(
    client: &mut NetSyncClient<Channel>,
    name: &str,
    min_revision: u64,
) -> (u64, BTreeMap<String, String>) {
    let running = client::running(client, name, min_revision).await;
    (running.revision, running.strings())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_follows_the_device_and_survives_a_restart() {
    let device = Device::start(&[
        ("/system/aaa/users/user[name=admin]/name", "admin"),
        ("/interfaces/interface[name=eth0]/mtu", "1500"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let server = TestServer::start(&db).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap();

    let (revision, leaves) = running(&mut client, "r1", 1).await;
    assert_eq!(revision, 1);
    assert_eq!(leaves, device.leaves());

    let mut events = watch(&mut client, "r1", 0).await;
    device.set("/system/aaa/users/user[name=admin]/password", "$6$x");
    device.delete("/interfaces/interface[name=eth0]/mtu");
    let revision = converge(&mut client, "r1", &device).await;
    assert!(revision >= 2);
    // The watcher saw the changes as commits, in order.
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let event = next_event(&mut events).await;
        if let Some(pb::sync_event::Event::Commit(commit)) = event.event {
            for leaf in commit.updates {
                seen.insert(leaf.path, "update");
            }
            for path in commit.deletes {
                seen.insert(path, "delete");
            }
        }
    }
    assert_eq!(
        seen["/system/aaa/users/user[name=admin]/password"],
        "update"
    );
    assert_eq!(seen["/interfaces/interface[name=eth0]/mtu"], "delete");

    let st = status(&mut client, "r1").await;
    assert_eq!(st.state, pb::SyncState::InSync as i32);
    assert_eq!(st.leaves, 2);
    assert!(st.last_commit_time.is_some());
    client::assert_no_recovery(&mut client, "r1").await;

    // Subtree reads.
    let mut request = tonic::Request::new(pb::GetRunningRequest {
        datastore: "r1".into(),
        path: "/system".into(),
        min_revision: 0,
        with_owner: false,
        ..Default::default()
    });
    request.set_timeout(DEADLINE);
    let batch = client
        .get_running(request)
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.leaves.len(), 2);

    drop(events);
    drop(client);
    server.stop().await;

    // After a restart, running is served at once at its last revision.
    let server = TestServer::start(&db).await;
    let mut client = server.client().await;
    let (after, leaves) = running(&mut client, "r1", 0).await;
    assert!(
        after >= revision,
        "revision {after} after restart, {revision} before"
    );
    assert_eq!(leaves, device.leaves());

    // Replaying the change log from revision 1 rebuilds running exactly.
    let mut events = watch(&mut client, "r1", 1).await;
    let mut rebuilt = BTreeMap::new();
    let mut expected_revision = 1;
    while expected_revision <= after {
        let event = next_event(&mut events).await;
        if let Some(pb::sync_event::Event::Commit(commit)) = event.event {
            assert_eq!(event.revision, expected_revision, "no gap, no duplicate");
            expected_revision += 1;
            for path in commit.deletes {
                rebuilt.remove(&path);
            }
            for leaf in commit.updates {
                let Some(typed_value::Value::StringVal(v)) = leaf.value.and_then(|v| v.value)
                else {
                    panic!()
                };
                rebuilt.insert(leaf.path, v);
            }
        }
    }
    assert_eq!(rebuilt, leaves);

    // Changes made while netsyncd was down arrive with the resync.
    device.set("/interfaces/interface[name=eth1]/mtu", "9000");
    converge(&mut client, "r1", &device).await;

    client
        .resync(pb::ResyncRequest { name: "r1".into() })
        .await
        .unwrap();
    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
        .await
        .unwrap();
    let err = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: "r1".into(),
            from_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    drop(events);
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_or_unreachable_revisions_are_refused_clearly() {
    let device = Device::start(&[("/a", "1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap();
    running(&mut client, "r1", 1).await;

    let mut request = tonic::Request::new(pb::GetRunningRequest {
        datastore: "r1".into(),
        path: String::new(),
        min_revision: 1000,
        with_owner: false,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(200));
    let err = client.get_running(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    let err = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: "r1".into(),
            from_revision: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("does not exist yet"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("1000"));

    let err = client
        .get_running(pb::GetRunningRequest {
            datastore: "r1".into(),
            path: "/a[".into(),
            min_revision: 0,
            with_owner: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("path"));
    client::assert_no_recovery(&mut client, "r1").await;
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cut_off_and_resumes_without_gap() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(&dir.path().join("n.db"));
    config.limits.event_buffer = 8;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap();
    running(&mut client, "r1", 1).await;

    // A watcher that does not read while hundreds of commits go by.
    let mut slow = watch(&mut client, "r1", 0).await;
    // Large values fill the HTTP/2 windows (2 MiB per stream on the client)
    // quickly, so the backlog reaches the server's buffers after ~100 commits.
    let filler = "x".repeat(64 * 1024);
    let mut last_revision = 1;
    for i in 0..150 {
        device.set("/a", &format!("{i}{filler}"));
        last_revision = converge(&mut client, "r1", &device).await;
    }
    assert!(last_revision > 8 + 64, "only {last_revision} revisions");
    // The sync went on regardless: running is current.
    assert_eq!(running(&mut client, "r1", 0).await.1, device.leaves());

    let mut received = Vec::new();
    let status = loop {
        match tokio::time::timeout(DEADLINE, slow.next()).await.unwrap() {
            Some(Ok(event)) => {
                if let Some(pb::sync_event::Event::Commit(_)) = event.event {
                    received.push(event.revision);
                }
            }
            Some(Err(status)) => break status,
            None => panic!("the stream ended without an error"),
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let resume: u64 = status
        .message()
        .split("from_revision=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the message names from_revision=N");
    assert_eq!(
        resume,
        received.last().map_or(2, |r| r + 1),
        "N is the first revision not received"
    );
    // The watcher was cut; the sync never had to recover.
    client::assert_no_recovery(&mut client, "r1").await;

    let mut resumed = watch(&mut client, "r1", resume).await;
    let mut next = resume;
    while next <= last_revision {
        let event = next_event(&mut resumed).await;
        if let Some(pb::sync_event::Event::Commit(_)) = event.event {
            assert_eq!(event.revision, next, "no gap, no duplicate");
            next += 1;
        }
    }
    drop((slow, resumed, client));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_revisions_are_out_of_range() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(&dir.path().join("n.db"));
    config.retention = netsync_server::log::Retention {
        commits: 2,
        age: Duration::ZERO,
    };
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap();
    running(&mut client, "r1", 1).await;
    // Enough changed leaves over a few commits that two snapshots are due:
    // the log is compacted when a snapshot is written, up to an older
    // snapshot outside retention (so that every kept revision stays readable
    // at a past revision), here the first.
    for round in 0..12 {
        for i in 0..400 {
            device.set(&format!("/bulk/l{i}"), &round.to_string());
        }
        converge(&mut client, "r1", &device).await;
    }
    let err = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: "r1".into(),
            from_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("GetRunning"), "{}", err.message());
    client::assert_no_recovery(&mut client, "r1").await;

    // What is kept still replays, and a restart still loads running exactly.
    let (revision, leaves) = running(&mut client, "r1", 0).await;
    let mut events = watch(&mut client, "r1", revision).await;
    loop {
        let event = next_event(&mut events).await;
        if let Some(pb::sync_event::Event::Commit(_)) = event.event {
            assert_eq!(event.revision, revision);
            break;
        }
    }
    drop((watch, client));
    server.stop().await;
    let server = TestServer::start(&dir.path().join("n.db")).await;
    let mut client = server.client().await;
    let (after, reloaded) = running(&mut client, "r1", 0).await;
    assert!(after >= revision);
    assert_eq!(reloaded, leaves);
    drop(client);
    server.stop().await;
}

/// Buffered commit events give up their changes past `event_leaves`; a
/// watcher that gets to them late reads those revisions from the log, with
/// the same content, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_events_are_read_from_the_log() {
    let device = Device::start(&[("/a", "start")]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(&dir.path().join("n.db"));
    // Only the newest event keeps its change.
    config.limits.event_leaves = 1;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap();
    running(&mut client, "r1", 1).await;
    let mut watcher = watch(&mut client, "r1", 2).await;
    // Large values fill the HTTP/2 windows, so the watcher's task stops
    // taking events from the buffer and meets them evicted later.
    let filler = "x".repeat(64 * 1024);
    let mut expected = Vec::new();
    for i in 0..120 {
        device.set("/a", &format!("v{i}{filler}"));
        let revision = converge(&mut client, "r1", &device).await;
        expected.push((revision, format!("v{i}{filler}")));
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let event = next_event(&mut watcher).await;
        if let Some(pb::sync_event::Event::Commit(commit)) = event.event {
            let value = commit.updates[0].value.clone().unwrap().value;
            let Some(netsync_proto::gnmi::typed_value::Value::StringVal(text)) = value else {
                panic!("unexpected value {value:?}")
            };
            got.push((event.revision, text));
        }
    }
    assert!(
        got == expected,
        "commits differ from what the device went through"
    );
    client::assert_no_recovery(&mut client, "r1").await;
    drop((watcher, client));
    server.stop().await;
}
