//! Devices that do not behave, through the API and real gRPC: a dump that
//! never ends (`sync.initial_sync_timeout`), a message over
//! `sync.max_message_bytes` (refused by the connection's decoding limit), a
//! dump over `sync.max_leaves`; each datastore says why in `last_error` and
//! commits nothing, while a datastore beside them on the same netsyncd keeps
//! syncing. Out-of-range caps are INVALID_ARGUMENT naming the field.

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::{self, assert_quiet, converge, next_event, status, watch};
use netsync_testkit::datastore::DatastoreBuilder;
use netsync_testkit::device::Device;
use pb::net_sync_client::NetSyncClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{self, assert_status};

/// The reason of the next DISCONNECTED of `name` (it retries with backoff,
/// so one comes after the watch starts whenever the first came before).
async fn next_disconnect(client: &mut NetSyncClient<Channel>, name: &str) -> String {
    let mut events = watch(client, name, 0).await;
    loop {
        let event = next_event(&mut events).await;
        if let Some(pb::sync_event::Event::StateChanged(change)) = event.event {
            assert_ne!(change.state(), pb::SyncState::InSync, "{name}: {change:?}");
            // (The watch opens with the current state, whatever its cause.)
            if change.state() == pb::SyncState::Disconnected && change.reason != "current state" {
                return change.reason;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_devices_are_cut_off_and_another_datastore_keeps_syncing() {
    let (_dir, server, mut client) = support::start().await;
    let good = Device::start(&[("/system/name", "r1")]).await;
    client
        .create_datastore(
            DatastoreBuilder::new("good", good.addr)
                .encoding(pb::Encoding::Proto)
                .commit_interval_ms(20)
                .create(),
        )
        .await
        .unwrap();
    converge(&mut client, "good", &good).await;

    // A device whose dump never ends.
    let silent = Device::start(&[("/a", "1")]).await;
    silent.hold_sync_response(true);
    // A device whose dump is one message of about 10 KB.
    let long = "x".repeat(100);
    let leaves: Vec<(String, &str)> = (0..100)
        .map(|i| (format!("/big/leaf[name={i}]/value"), long.as_str()))
        .collect();
    let pairs: Vec<(&str, &str)> = leaves.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let big = Device::start(&pairs).await;
    // A device with three leaves, for a datastore allowed two.
    let many = Device::start(&[("/m/1", "1"), ("/m/2", "2"), ("/m/3", "3")]).await;
    for (name, device, builder) in [
        (
            "silent",
            &silent,
            DatastoreBuilder::new("silent", silent.addr).initial_sync_timeout_ms(500),
        ),
        (
            "big",
            &big,
            DatastoreBuilder::new("big", big.addr).caps(4096, 0, 0),
        ),
        (
            "many",
            &many,
            DatastoreBuilder::new("many", many.addr).caps(0, 2, 0),
        ),
    ] {
        let _ = device;
        client
            .create_datastore(builder.encoding(pb::Encoding::Proto).create())
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"));
    }

    let reason = next_disconnect(&mut client, "silent").await;
    assert_eq!(reason, "no sync_response within 500ms; reconnecting");
    let reason = next_disconnect(&mut client, "big").await;
    assert!(
        reason.starts_with("device sent a ")
            && reason.ends_with(" message; max_message_bytes is 4 KiB"),
        "{reason}"
    );
    let reason = next_disconnect(&mut client, "many").await;
    assert_eq!(
        reason,
        "running would hold 3 leaves; max_leaves is 2; not committed"
    );
    for name in ["silent", "big", "many"] {
        let status = status(&mut client, name).await;
        assert_eq!(status.revision, 0, "{name} committed nothing: {status:?}");
        assert_ne!(status.state(), pb::SyncState::InSync, "{name}");
        assert!(!status.last_error.is_empty(), "{name}: {status:?}");
        assert!(status.stats.unwrap_or_default().reconnects >= 1, "{name}");
    }
    assert!(silent.subscribes() >= 2, "the silent device is tried again");

    // Meanwhile the good datastore follows its device without a hitch.
    good.set("/system/name", "r2");
    converge(&mut client, "good", &good).await;
    assert_quiet(&mut client, "good").await;
    let running = client::running(&mut client, "good", 1).await;
    assert_eq!(running.strings(), good.leaves());
    server.stop().await;
}

#[tokio::test]
async fn out_of_range_sync_caps_are_invalid_argument_naming_the_field() {
    let (_dir, server, mut client) = support::start().await;
    type Mutation = fn(&mut pb::SyncConfig);
    let cases: [(Mutation, &[&str]); 6] = [
        (
            |s| {
                s.initial_sync_timeout = Some(prost_types::Duration {
                    seconds: 24 * 3600 + 1,
                    nanos: 0,
                })
            },
            &["datastore.sync.initial_sync_timeout", "at most 24h"],
        ),
        (
            |s| {
                s.initial_sync_timeout = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                })
            },
            &["datastore.sync.initial_sync_timeout", "above zero"],
        ),
        (
            |s| {
                s.initial_sync_timeout = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            },
            &["datastore.sync.initial_sync_timeout", "negative"],
        ),
        (
            |s| s.max_message_bytes = 3 << 30,
            &["datastore.sync.max_message_bytes", "at most 2147483648"],
        ),
        (
            |s| s.max_leaves = 1_000_000_001,
            &["datastore.sync.max_leaves", "at most 1000000000"],
        ),
        (
            |s| s.max_leaf_bytes = (1 << 30) + 1,
            &["datastore.sync.max_leaf_bytes", "at most 1073741824"],
        ),
    ];
    for (mutate, words) in cases {
        let mut datastore = DatastoreBuilder::new("r1", "127.0.0.1:57400").build();
        mutate(datastore.sync.get_or_insert_with(Default::default));
        let err = client
            .create_datastore(pb::CreateDatastoreRequest {
                datastore: Some(datastore),
            })
            .await
            .unwrap_err();
        assert_status(&err, Code::InvalidArgument, words);
    }
    // The bounds themselves are accepted, and come back as given.
    let datastore = DatastoreBuilder::new("r1", "127.0.0.1:57400")
        .initial_sync_timeout_ms(24 * 3600 * 1000)
        .caps(2 << 30, 1_000_000_000, 1 << 30)
        .build();
    let created = client
        .create_datastore(pb::CreateDatastoreRequest {
            datastore: Some(datastore.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let (sent, got) = (datastore.sync.unwrap(), created.sync.unwrap());
    assert_eq!(got.initial_sync_timeout, sent.initial_sync_timeout);
    assert_eq!(
        (got.max_message_bytes, got.max_leaves, got.max_leaf_bytes),
        (2 << 30, 1_000_000_000, 1 << 30)
    );
    server.stop().await;
}
