//! GetRunning at a past revision (equal to the history WatchSync replays,
//! with a subtree too; OUT_OF_RANGE once compacted or not yet committed) and
//! `value_format` SCALAR on GetRunning, WatchSync, GetDeviations and through
//! grpcurl.

use std::collections::BTreeMap;
use std::time::Duration;

use netsync_proto::gnmi::{self, typed_value::Value as V};
use netsync_proto::netsync::v1 as pb;
use netsync_server::log::Retention;
use netsync_sim::{InitialState, SimConfig};
use netsync_testkit::client::{self, Client, read_running, wait_revision};
use netsync_testkit::datastore::{DatastoreBuilder, intent};
use netsync_testkit::sim::{Sim, generated};
use tokio::sync::watch;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{self, TestServer};

/// Leaves by path.
type Leaves = BTreeMap<String, gnmi::TypedValue>;

/// Every commit of `name` from revision 1 on, as a watcher replays them,
/// published into `history` (index i: revision i + 1) until the stream ends.
fn record_history(mut client: Client, name: &str) -> (watch::Receiver<Vec<Leaves>>, Closer) {
    let (record, history) = watch::channel(Vec::<Leaves>::new());
    let name = name.to_string();
    let task = tokio::spawn(async move {
        let mut events = client::watch(&mut client, &name, 1).await;
        let mut leaves = Leaves::new();
        loop {
            let event = client::next_event(&mut events).await;
            let Some(pb::sync_event::Event::Commit(commit)) = event.event else {
                continue;
            };
            for path in commit.deletes {
                leaves.remove(&path);
            }
            for leaf in commit.updates {
                leaves.insert(leaf.path, leaf.value.unwrap_or_default());
            }
            if !commit.more {
                record.send_modify(|all| {
                    assert_eq!(all.len() as u64 + 1, event.revision, "a gap in the replay");
                    all.push(leaves.clone());
                });
            }
        }
    });
    (history, Closer(task))
}

/// Ends the recording task when dropped.
struct Closer(tokio::task::JoinHandle<()>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The state after `revision` as replayed, waiting for the replay to get there.
async fn replayed(history: &mut watch::Receiver<Vec<Leaves>>, revision: u64) -> Leaves {
    let all = netsync_testkit::within(history.wait_for(|all| all.len() as u64 >= revision))
        .await
        .expect("the replay goes on");
    all[revision as usize - 1].clone()
}

fn at(name: &str, revision: u64, path: &str) -> pb::GetRunningRequest {
    pb::GetRunningRequest {
        datastore: name.into(),
        path: path.into(),
        revision,
        ..Default::default()
    }
}

/// While the simulator churns (several snapshots written along the way),
/// running read at revisions from 1 to the current one, whole and a subtree,
/// equals the state a WatchSync replay from 1 has after that revision; a
/// revision not committed yet is OUT_OF_RANGE, or waited for with
/// min_revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_a_past_revision_equals_the_replayed_history() {
    let sim = Sim::start(generated(50)).await;
    let (_dir, server, mut client) = support::start().await;
    client::create_synced(&mut client, "r1", sim.addr).await;
    let (mut history, _closer) = record_history(client.clone(), "r1");
    sim.start_churn(400.0).await;

    // Not committed yet: refused, not waited for.
    let now = wait_revision(&mut client, "r1", 2).await;
    let ahead = read_running(&mut client, at("r1", now + 100_000, ""))
        .await
        .expect_err("a revision not committed yet");
    support::assert_status(
        &ahead,
        Code::OutOfRange,
        &[
            &format!("revision {} ", now + 100_000),
            "does not exist yet",
        ],
    );
    // With min_revision as well, it is waited for.
    let soon = now + 20;
    let waited = read_running(
        &mut client,
        pb::GetRunningRequest {
            min_revision: soon,
            ..at("r1", soon, "")
        },
    )
    .await
    .unwrap();
    assert_eq!(waited.revision, soon);

    // About 1,100 leaf changes between snapshots: several of them by now.
    let now = wait_revision(&mut client, "r1", 700).await;
    let first = replayed(&mut history, 1).await;
    let (sample, _) = first.iter().nth(first.len() / 2).unwrap();
    // A subtree: the sampled leaf's grandparent.
    let subtree = sample.rsplitn(3, '/').nth(2).unwrap().to_string();
    for revision in [
        1,
        2,
        3,
        now / 5,
        now / 3,
        now / 2,
        2 * now / 3,
        now - 1,
        now,
    ] {
        let expected = replayed(&mut history, revision).await;
        let read = read_running(&mut client, at("r1", revision, ""))
            .await
            .unwrap_or_else(|s| panic!("read at {revision}: {s:?}"));
        assert_eq!(read.revision, revision);
        assert!(
            read.leaves == expected,
            "revision {revision}: {} leaves read, {} replayed",
            read.leaves.len(),
            expected.len()
        );
        let read = read_running(&mut client, at("r1", revision, &subtree))
            .await
            .unwrap();
        let expected: Leaves = expected
            .into_iter()
            .filter(|(path, _)| path.starts_with(&format!("{subtree}/")))
            .collect();
        assert!(!expected.is_empty() || revision > 1, "{subtree} has leaves");
        assert_eq!(read.leaves, expected, "{subtree} at revision {revision}");
    }
    // Revisions do differ: the test could tell a wrong revision apart.
    assert_ne!(
        replayed(&mut history, 1).await,
        replayed(&mut history, now).await
    );
    sim.stop_churn().await;
    drop(client);
    server.stop().await;
    sim.stop().await;
}

/// A change log that keeps only 50 commits: once it has compacted, a read
/// at revision 1 is OUT_OF_RANGE naming it and the oldest readable revision,
/// which reads (from a snapshot that is not the newest) equal to the replay,
/// and the revision before it is OUT_OF_RANGE too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_is_out_of_range_naming_the_oldest_readable() {
    let sim = Sim::start(generated(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(&dir.path().join("netsync.db"));
    config.retention = Retention {
        commits: 50,
        age: Duration::ZERO,
    };
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client::create_synced(&mut client, "r1", sim.addr).await;
    let (mut history, _closer) = record_history(client.clone(), "r1");
    sim.start_churn(400.0).await;
    let mut now = 1;
    loop {
        now = wait_revision(&mut client, "r1", now + 10).await;
        if read_running(&mut client, at("r1", 1, "")).await.is_err() {
            break;
        }
    }
    sim.stop_churn().await;
    let gone = read_running(&mut client, at("r1", 1, ""))
        .await
        .expect_err("compacted");
    support::assert_status(
        &gone,
        Code::OutOfRange,
        &["revision 1 ", "oldest readable revision: "],
    );
    let oldest: u64 = gone
        .message()
        .rsplit("oldest readable revision: ")
        .next()
        .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no revision in {:?}", gone.message()));
    assert!(oldest > 1, "{oldest}");
    let info = gone
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {gone:?}"));
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("REVISION_NOT_KEPT", "netsync.dev")
    );
    assert_eq!(info.metadata["revision"], "1");
    assert_eq!(info.metadata["oldest_kept"], oldest.to_string());

    let read = read_running(&mut client, at("r1", oldest, ""))
        .await
        .unwrap();
    assert_eq!(read.revision, oldest);
    assert_eq!(read.leaves, replayed(&mut history, oldest).await);
    let later = oldest + 7;
    let read = read_running(&mut client, at("r1", later, ""))
        .await
        .unwrap();
    assert_eq!(read.leaves, replayed(&mut history, later).await);
    let before = read_running(&mut client, at("r1", oldest - 1, ""))
        .await
        .expect_err("before the oldest readable");
    support::assert_status(
        &before,
        Code::OutOfRange,
        &[
            &format!("revision {} ", oldest - 1),
            &format!("oldest readable revision: {oldest}"),
        ],
    );
    drop(client);
    server.stop().await;
    sim.stop().await;
}

/// A device state with scalars of every JSON kind, a 64-bit unsigned
/// integer, and a leaf-list.
const DOCUMENT: &str = r#"{"system": {"config": {
    "hostname": "leaf1", "mtu": 1500, "enabled": true, "load": 2.5,
    "counter": 18446744073709551615, "servers": ["a", "b"]}}}"#;

fn typed(value: V) -> gnmi::TypedValue {
    gnmi::TypedValue { value: Some(value) }
}

fn ietf(json: &str) -> gnmi::TypedValue {
    typed(V::JsonIetfVal(json.as_bytes().to_vec()))
}

async fn read_format(
    client: &mut Client,
    name: &str,
    format: i32,
) -> Result<Leaves, tonic::Status> {
    let running = read_running(
        client,
        pb::GetRunningRequest {
            value_format: format,
            ..at(name, 0, "/system")
        },
    )
    .await?;
    Ok(running.leaves)
}

/// SCALAR turns a JSON_IETF datastore's leaves into typed scalars (the
/// RFC 7951 uint64, a JSON string, stays a string: no schema says it is a
/// number), a JSON datastore's numbers into int/uint; lists stay JSON;
/// DEVICE and unspecified are as the device sent. WatchSync and
/// GetDeviations write values the same way, and grpcurl shows them readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_values_are_typed_and_device_values_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let document = dir.path().join("device.json");
    std::fs::write(&document, DOCUMENT).unwrap();
    let sim = Sim::start(SimConfig {
        initial: InitialState::File(document),
        ..generated(1)
    })
    .await;
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;
    for (name, encoding) in [
        ("ietf", pb::Encoding::JsonIetf),
        ("json", pb::Encoding::Json),
    ] {
        client
            .create_datastore(
                DatastoreBuilder::new(name, sim.addr)
                    .encoding(encoding)
                    .create(),
            )
            .await
            .unwrap();
        wait_revision(&mut client, name, 1).await;
    }

    // An unknown format: INVALID_ARGUMENT naming the field.
    let unknown = read_format(&mut client, "ietf", 7).await.unwrap_err();
    support::assert_status(&unknown, Code::InvalidArgument, &["value_format"]);

    let leaf = |leaves: &Leaves, name: &str| {
        leaves
            .get(&format!("/system/config/{name}"))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {leaves:?}"))
    };
    let device = read_format(&mut client, "ietf", pb::ValueFormat::Device as i32)
        .await
        .unwrap();
    assert_eq!(
        read_format(&mut client, "ietf", 0).await.unwrap(),
        device,
        "unspecified is DEVICE"
    );
    assert_eq!(leaf(&device, "hostname"), ietf("\"leaf1\""));
    assert_eq!(leaf(&device, "counter"), ietf("\"18446744073709551615\""));
    let scalar = read_format(&mut client, "ietf", pb::ValueFormat::Scalar as i32)
        .await
        .unwrap();
    assert_eq!(
        leaf(&scalar, "hostname"),
        typed(V::StringVal("leaf1".into()))
    );
    // RFC 7951 writes 64-bit integers as strings; without a schema they stay text.
    assert_eq!(
        leaf(&scalar, "counter"),
        typed(V::StringVal("18446744073709551615".into()))
    );
    assert_eq!(leaf(&scalar, "enabled"), typed(V::BoolVal(true)));
    assert_eq!(leaf(&scalar, "load"), typed(V::DoubleVal(2.5)));
    assert_eq!(
        leaf(&scalar, "servers"),
        leaf(&device, "servers"),
        "a list stays JSON"
    );
    assert_eq!(scalar.len(), device.len());

    // A JSON datastore's numbers are JSON numbers: integers typed by range.
    let json = read_format(&mut client, "json", pb::ValueFormat::Scalar as i32)
        .await
        .unwrap();
    assert_eq!(leaf(&json, "mtu"), typed(V::IntVal(1500)));
    assert_eq!(leaf(&json, "counter"), typed(V::UintVal(u64::MAX)));

    // WatchSync: the replayed first commit in each format.
    for (format, expected) in [
        (pb::ValueFormat::Scalar, &scalar),
        (pb::ValueFormat::Device, &device),
    ] {
        let mut events = client
            .watch_sync(pb::WatchSyncRequest {
                datastore: "ietf".into(),
                from_revision: 1,
                value_format: format as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let event = client::next_event(&mut events).await;
        let Some(pb::sync_event::Event::Commit(commit)) = event.event else {
            panic!("revision 1 first: {event:?}");
        };
        let leaves: Leaves = commit
            .updates
            .into_iter()
            .filter(|l| l.path.starts_with("/system/"))
            .map(|l| (l.path, l.value.unwrap_or_default()))
            .collect();
        assert_eq!(&leaves, expected, "{format:?}");
    }

    // GetDeviations: the device's value, written the same way.
    client::set_intent(
        &mut client,
        "ietf",
        intent("name", 10, &[("/system/config/hostname", "leaf9")], &[]),
    )
    .await;
    for (format, actual) in [
        (pb::ValueFormat::Scalar, typed(V::StringVal("leaf1".into()))),
        (pb::ValueFormat::Device, ietf("\"leaf1\"")),
    ] {
        let deviations = client
            .get_deviations(pb::GetDeviationsRequest {
                datastore: "ietf".into(),
                value_format: format as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deviations;
        assert_eq!(deviations.len(), 1, "{deviations:?}");
        assert_eq!(deviations[0].actual, Some(actual), "{format:?}");
    }

    // grpcurl users read the value, not base64.
    if let Some(grpcurl) = netsync_testkit::tools::grpcurl() {
        let addr = server.addr.to_string();
        let get = |format: &str| {
            let body = format!(
                r#"{{"datastore":"ietf","path":"/system/config/hostname","valueFormat":"{format}"}}"#
            );
            let output = std::process::Command::new(&grpcurl)
                .args([
                    "-plaintext",
                    "-d",
                    &body,
                    &addr,
                    "netsync.v1.NetSync/GetRunning",
                ])
                .output()
                .unwrap();
            netsync_testkit::tools::assert_success("grpcurl GetRunning", &output);
            String::from_utf8(output.stdout).unwrap()
        };
        let readable = get("VALUE_FORMAT_SCALAR");
        assert!(readable.contains(r#""stringVal": "leaf1""#), "{readable}");
        let raw = get("VALUE_FORMAT_DEVICE");
        assert!(raw.contains("jsonIetfVal"), "{raw}");
        assert!(!raw.contains("stringVal"), "{raw}");
    }
    drop(client);
    server.stop().await;
    sim.stop().await;
}
