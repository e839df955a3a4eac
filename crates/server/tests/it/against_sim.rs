//! The engine end to end against netsync-sim, a real gNMI device over
//! loopback: the seed failure, the sync-response barrier with delayed
//! delivery, reconnect with pruning, every sync mode, JSON flattening with
//! list keys, churn with injected faults, and large revisions in parts.

use std::collections::{BTreeMap, BTreeSet};

use netsync_proto::gnmi;
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::v1 as pb;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::{self, converge, running, status, until_running};
use netsync_testkit::client::{next_event, watch};
use netsync_testkit::datastore::{DatastoreBuilder, create, millis};
use netsync_testkit::gnmi::string;
use netsync_testkit::sim::{Sim, generated};
use tokio_stream::StreamExt;

/// A PROTO datastore `name` of `sim` in `mode`, sampling or polling every
/// 300 ms, committing every `commit_ms`.
fn datastore(name: &str, sim: &Sim, mode: pb::SyncMode, commit_ms: u64) -> pb::Datastore {
    DatastoreBuilder::new(name, sim.addr)
        .encoding(pb::Encoding::Proto)
        .mode(mode)
        .interval_ms(300)
        .commit_interval_ms(commit_ms)
        .build()
}

/// The seed failure: a user entry whose mandatory password arrives in a burst
/// right after `sync_response`, while a watcher holds up everything it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_failure_loses_nothing() {
    let sim = Sim::start(generated(300)).await;
    let user = "/system/aaa/authentication/users/user[username=ops]";
    sim.set_leaves(
        vec![
            (format!("{user}/username"), string("ops")),
            (format!("{user}/config/username"), string("ops")),
        ],
        vec![],
    )
    .await;
    let (_dir, server, mut client) = crate::support::start().await;
    client
        .create_datastore(create(datastore("r1", &sim, pb::SyncMode::OnChange, 500)))
        .await
        .unwrap();
    let mut events = watch(&mut client, "r1", 1).await;
    // A watcher that never reads: whatever would wait on it is held forever.
    let _stalled = server
        .client()
        .await
        .watch_sync(pb::WatchSyncRequest {
            datastore: "r1".into(),
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    // The first commit: the user without its password.
    let first = loop {
        let event = next_event(&mut events).await;
        if let Some(pb::sync_event::Event::Commit(c)) = event.event {
            break c;
        }
    };
    assert!(first.replace);
    assert!(
        first
            .updates
            .iter()
            .any(|l| l.path == format!("{user}/username"))
    );
    assert!(!first.updates.iter().any(|l| l.path.ends_with("/password")));

    // At once, a burst of 500 changes, the password among them.
    let mut burst: Vec<(String, gnmi::TypedValue)> = (0..499)
        .map(|i| {
            (
                format!("/system/burst/leaf-{i:03}"),
                string(format!("v{i}")),
            )
        })
        .collect();
    burst.insert(
        250,
        (format!("{user}/config/password"), string("$6$mandatory")),
    );
    // Whole in running although the stalled watcher never reads: nothing
    // waits on it (a wait would show as the deadline, not as a timing).
    sim.set_leaves(burst.clone(), vec![]).await;
    until_running(&mut client, "r1", "the whole burst", |r| {
        burst.iter().all(|(path, value)| r.get(path) == Some(value))
    })
    .await;
    converge(&mut client, "r1", &sim).await;
    let st = status(&mut client, "r1").await;
    assert_eq!(st.stats.unwrap().dropped, 0);
    client::assert_no_recovery(&mut client, "r1").await;
    drop(events);
    server.stop().await;
    sim.stop().await;
}

/// The first commit of a connection holds exactly what preceded
/// `sync_response`, however slowly the dump was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_barrier_holds_with_delayed_delivery() {
    let mut config = generated(2000);
    config.notification_batch = 7;
    let sim = Sim::start(config).await;
    let device = sim.leaves().await;
    // Every Subscribe stream sends nothing for a while: the dump is delayed.
    sim.control()
        .await
        .set_faults(simpb::SetFaultsRequest {
            faults: Some(simpb::Faults {
                subscribe_stall: Some(millis(1500)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let (_dir, server, mut client) = crate::support::start().await;
    client
        .create_datastore(create(datastore("r1", &sim, pb::SyncMode::OnChange, 20)))
        .await
        .unwrap();
    let mut events = watch(&mut client, "r1", 1).await;
    let (revision, first) = loop {
        let event = next_event(&mut events).await;
        if let Some(pb::sync_event::Event::Commit(c)) = event.event {
            break (event.revision, c);
        }
    };
    assert_eq!(revision, 1);
    assert!(first.replace);
    let committed: BTreeMap<String, gnmi::TypedValue> = first
        .updates
        .into_iter()
        .map(|l| (l.path, l.value.unwrap()))
        .collect();
    assert_eq!(
        committed.len(),
        device.len(),
        "no more and no less than the dump"
    );
    assert_eq!(committed, device);
    let at_one = running(&mut client, "r1", 1).await.leaves;
    assert_eq!(at_one.len(), device.len());
    client::assert_no_recovery(&mut client, "r1").await;
    drop(events);
    server.stop().await;
    sim.stop().await;
}

/// Leaves removed, changed and added while the device was "offline" are
/// pruned, changed and added by the replace commit of the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_prunes_and_converges() {
    let sim = Sim::start(generated(1000)).await;
    let (_dir, server, mut client) = crate::support::start().await;
    client
        .create_datastore(create(datastore("r1", &sim, pb::SyncMode::OnChange, 20)))
        .await
        .unwrap();
    let before = converge(&mut client, "r1", &sim).await;
    let mut events = watch(&mut client, "r1", before + 1).await;
    sim.control()
        .await
        .restart(simpb::RestartRequest {
            remove: 40,
            change: 30,
            add: 20,
            seed: 3,
            stay_offline: false,
        })
        .await
        .unwrap();
    let replace = loop {
        let event = next_event(&mut events).await;
        if let Some(pb::sync_event::Event::Commit(c)) = event.event {
            break c;
        }
    };
    assert!(replace.replace);
    assert!(
        replace.deletes.len() >= 40,
        "pruned {}",
        replace.deletes.len()
    );
    converge(&mut client, "r1", &sim).await;
    let st = status(&mut client, "r1").await;
    assert_eq!(st.state, pb::SyncState::InSync as i32);
    assert!(st.stats.unwrap().reconnects >= 1);
    drop(events);
    server.stop().await;
    sim.stop().await;
}

/// Every sync mode converges to the device, initially and after a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_converges() {
    let sim = Sim::start(generated(500)).await;
    let (_dir, server, mut client) = crate::support::start().await;
    let modes = [
        ("on-change", pb::SyncMode::OnChange),
        ("sample", pb::SyncMode::Sample),
        ("once", pb::SyncMode::Once),
        ("poll", pb::SyncMode::Poll),
        ("get", pb::SyncMode::Get),
    ];
    for (name, mode) in modes {
        client
            .create_datastore(create(datastore(name, &sim, mode, 50)))
            .await
            .unwrap();
    }
    for (name, _) in modes {
        converge(&mut client, name, &sim).await;
    }
    let some_leaf = sim.leaves().await.into_keys().nth(10).unwrap();
    sim.set_leaves(
        vec![("/system/mode-test".into(), string("x"))],
        vec![some_leaf.clone()],
    )
    .await;
    // SAMPLE only updates: a leaf that stops being sampled stays until the
    // next resync, which prunes it.
    until_running(&mut client, "sample", "the new sampled leaf", |r| {
        r.contains_key("/system/mode-test")
    })
    .await;
    assert!(
        running(&mut client, "sample", 0)
            .await
            .leaves
            .contains_key(&some_leaf)
    );
    client
        .resync(pb::ResyncRequest {
            name: "sample".into(),
        })
        .await
        .unwrap();
    for (name, _) in modes {
        converge(&mut client, name, &sim).await;
        let st = status(&mut client, name).await;
        assert_eq!(st.state, pb::SyncState::InSync as i32, "{name}");
        // The Resync asked of "sample" is no recovery; the others had none.
        if name != "sample" {
            client::assert_no_recovery(&mut client, name).await;
        }
    }
    server.stop().await;
    sim.stop().await;
}

/// JSON_IETF documents are flattened into the same leaves a PROTO sync has,
/// with list entries keyed by `list_keys` and key leaves of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_ietf_documents_flatten_into_leaves() {
    let sim = Sim::start(generated(800)).await;
    let device = sim.leaves().await;
    // The device's lists and their keys, as an operator would configure them.
    let mut list_keys = BTreeSet::new();
    for path in device.keys() {
        let parsed = netsync_core::Path::parse(path).unwrap();
        let mut names = String::new();
        for elem in parsed.elems() {
            names.push('/');
            names.push_str(elem.name());
            if !elem.keys().is_empty() {
                let keys: String = elem.keys().keys().map(|k| format!("[{k}]")).collect();
                list_keys.insert(format!("{names}{keys}"));
            }
        }
    }
    let (_dir, server, mut client) = crate::support::start().await;
    let mut ds = datastore("json", &sim, pb::SyncMode::Get, 20);
    ds.target.as_mut().unwrap().encoding = pb::Encoding::JsonIetf as i32;
    ds.sync.as_mut().unwrap().list_keys = list_keys.into_iter().collect();
    client.create_datastore(create(ds)).await.unwrap();
    let expected: BTreeSet<String> = device.keys().cloned().collect();
    until_running(&mut client, "json", "flattened leaves", |r| {
        r.keys().cloned().collect::<BTreeSet<_>>() == expected
    })
    .await;
    let leaves = running(&mut client, "json", 0).await.leaves;
    // Values keep their JSON_IETF type; a string leaf holds its JSON text.
    let (path, value) = device
        .iter()
        .find(|(_, v)| matches!(v.value, Some(gnmi::typed_value::Value::StringVal(_))))
        .unwrap();
    let Some(gnmi::typed_value::Value::StringVal(text)) = &value.value else {
        unreachable!()
    };
    assert_eq!(
        leaves[path].value,
        Some(gnmi::typed_value::Value::JsonIetfVal(
            serde_json::to_vec(text).unwrap()
        ))
    );
    client::assert_no_recovery(&mut client, "json").await;
    server.stop().await;
    sim.stop().await;
}

/// Churn with faults injected along the way: streams dropped mid-dump and
/// after N messages, a stalled stream, a restart with changed state. Running
/// converges to the device every time, and nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_under_churn_and_faults() {
    let sim = Sim::start(generated(2000)).await;
    let (_dir, server, mut client) = crate::support::start().await;
    client
        .create_datastore(create(datastore("r1", &sim, pb::SyncMode::OnChange, 50)))
        .await
        .unwrap();
    converge(&mut client, "r1", &sim).await;
    let mut control = sim.control().await;
    let faults = [
        simpb::Faults {
            disconnect_after_messages: 5,
            ..Default::default()
        },
        simpb::Faults {
            drop_dump_after_updates: 500,
            ..Default::default()
        },
        simpb::Faults {
            subscribe_stall: Some(millis(500)),
            ..Default::default()
        },
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        control
            .start_churn(simpb::StartChurnRequest {
                rate: 2000.0,
                delete_share: 0.2,
                seed: i as u64,
            })
            .await
            .unwrap();
        control
            .set_faults(simpb::SetFaultsRequest {
                faults: Some(fault),
            })
            .await
            .unwrap();
        // Let the fault bite: the engine sees the stream end and reconnects.
        let mut events = watch(&mut client, "r1", 0).await;
        control
            .disconnect(simpb::DisconnectRequest { after_messages: 0 })
            .await
            .unwrap();
        loop {
            let event = next_event(&mut events).await;
            if let Some(pb::sync_event::Event::StateChanged(change)) = event.event
                && change.state == pb::SyncState::Disconnected as i32
            {
                break;
            }
        }
        drop(events);
        control
            .clear_faults(simpb::ClearFaultsRequest {})
            .await
            .unwrap();
        control
            .stop_churn(simpb::StopChurnRequest {})
            .await
            .unwrap();
        converge(&mut client, "r1", &sim).await;
    }
    control
        .restart(simpb::RestartRequest {
            remove: 100,
            change: 100,
            add: 100,
            seed: 9,
            stay_offline: false,
        })
        .await
        .unwrap();
    converge(&mut client, "r1", &sim).await;
    let st = status(&mut client, "r1").await;
    assert_eq!(st.stats.unwrap().dropped, 0);
    server.stop().await;
    sim.stop().await;
}

/// The parts of the next revision that `events` carries as a commit.
async fn next_commit(events: &mut tonic::Streaming<pb::SyncEvent>) -> (u64, Vec<pb::Commit>) {
    use prost::Message;
    let mut parts: Vec<pb::Commit> = Vec::new();
    let mut revision = None;
    loop {
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("a commit within the deadline")
            .expect("the watch goes on")
            .expect("no error: every message within the client's 4 MiB limit");
        let Some(pb::sync_event::Event::Commit(commit)) = event.event.clone() else {
            assert!(
                parts.is_empty(),
                "another event between the parts of a revision"
            );
            continue;
        };
        assert!(
            event.encoded_len() <= (1 << 20) + (64 << 10),
            "a part of {} bytes",
            event.encoded_len()
        );
        assert_eq!(*revision.get_or_insert(event.revision), event.revision);
        let more = commit.more;
        parts.push(commit);
        if !more {
            return (event.revision, parts);
        }
    }
}

/// Every leaf of `parts` once, as path -> value.
fn leaves_of(parts: &[pb::Commit]) -> BTreeMap<String, gnmi::TypedValue> {
    let mut leaves = BTreeMap::new();
    for part in parts {
        for leaf in &part.updates {
            let fresh = leaves.insert(leaf.path.clone(), leaf.value.clone().unwrap_or_default());
            assert!(fresh.is_none(), "{} in two parts", leaf.path);
        }
    }
    leaves
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_revision_comes_in_parts_within_the_default_message_limit() {
    // 60,000 leaves: a replace commit of about 5 MiB, over the 4 MiB that a
    // gRPC client accepts by default (the test's client keeps that limit).
    let sim = Sim::start(generated(60_000)).await;
    let (_dir, _server, mut client) = crate::support::start().await;
    client
        .create_datastore(create(datastore("big", &sim, pb::SyncMode::OnChange, 500)))
        .await
        .unwrap();
    let device = sim.leaves().await;
    until_running(&mut client, "big", "the initial dump", |r| *r == device).await;
    let watch = |from_revision| {
        let mut client = client.clone();
        async move { watch(&mut client, "big", from_revision).await }
    };

    // Replayed from the log: revision 1, the initial dump, in parts.
    let mut replayed = watch(1).await;
    let (revision, parts) = next_commit(&mut replayed).await;
    assert_eq!(revision, 1);
    assert!(parts.len() >= 5, "{} parts", parts.len());
    assert!(parts.iter().all(|p| p.replace));
    assert_eq!(leaves_of(&parts), device);

    // Live: two bursts of 20,000 new leaves (about 2 MiB each) reach the
    // watcher in parts too. A commit may cut a burst in two, but hardly
    // both bursts into pieces under 1 MiB.
    let mut live = watch(0).await;
    let added: Vec<(String, gnmi::TypedValue)> = (0..40_000)
        .map(|i| {
            (
                format!("/system/bulk/entries/entry-{i:05}/config/description"),
                string(format!("bulk entry number {i} with a longer text")),
            )
        })
        .collect();
    for burst in added.chunks(20_000) {
        sim.set_leaves(burst.to_vec(), vec![]).await;
    }
    let mut seen = BTreeMap::new();
    let mut in_parts = false;
    while seen.len() < added.len() {
        let (_, parts) = next_commit(&mut live).await;
        in_parts |= parts.len() > 1;
        seen.extend(leaves_of(&parts));
    }
    assert_eq!(seen, added.into_iter().collect::<BTreeMap<_, _>>());
    assert!(in_parts, "no live revision came in parts");
    client::assert_no_recovery(&mut client, "big").await;
}
