//! Intent values against netsync-sim in each encoding a device speaks: an
//! intent converges (its apply job is APPLIED, GetDeviations is empty and
//! stays empty over later commits, one Set per intent write) whatever
//! encoding the intent and the device write the values in, drift is reverted,
//! and the README's SetIntent example converges on a JSON_IETF device.
//!
//! The simulator is strict about Sets here (`SimConfig::set_encoding`): it
//! takes values only in the datastore's encoding, as a device that speaks one
//! encoding does, so a Set in another encoding fails the test.

use std::time::Duration;

use netsync_core::value::same_meaning;
use netsync_proto::gnmi::{self, TypedValue, typed_value::Value as V};
use netsync_proto::netsync::v1 as pb;
use netsync_server::Config;
use netsync_sim::SimConfig;
use netsync_testkit::client::set_intent;
use netsync_testkit::client::{self, until_running, wait_revision};
use netsync_testkit::datastore::{DatastoreBuilder, create, millis};
use netsync_testkit::sim::{Sim, generated};
use pb::net_sync_client::NetSyncClient;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::support::TestServer;

const ETH0: &str = "/interfaces/interface[name=ethernet-1/1]";

fn leaf(rel: &str) -> String {
    format!("{ETH0}/{rel}")
}

fn typed(value: V) -> TypedValue {
    TypedValue { value: Some(value) }
}

fn ietf(text: &str) -> TypedValue {
    typed(V::JsonIetfVal(text.into()))
}

/// Quick retries, so that a failing Set shows as FAILED soon.
fn config(db: &std::path::Path) -> Config {
    let mut config = crate::support::config(db);
    config.reconcile.backoff_min = Duration::from_millis(50);
    config.reconcile.backoff_max = Duration::from_millis(200);
    config.reconcile.max_attempts = 3;
    config
}

/// A generated device of 300 leaves that takes Set values only in
/// `encoding`.
async fn strict_sim(encoding: gnmi::Encoding) -> Sim {
    Sim::start(SimConfig {
        set_encoding: Some(encoding),
        ..generated(300)
    })
    .await
}

/// netsyncd with `datastore` created and synced (revision 1).
async fn start(
    datastore: pb::Datastore,
) -> (tempfile::TempDir, TestServer, NetSyncClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(&dir.path().join("n.db"))).await;
    let mut client = server.client().await;
    let name = datastore.name.clone();
    client.create_datastore(create(datastore)).await.unwrap();
    wait_revision(&mut client, &name, 1).await;
    (dir, server, client)
}

/// The next job that ended: its APPLIED event, or a panic naming the error
/// of a FAILED one.
async fn next_applied(events: &mut Streaming<pb::SyncEvent>) -> pb::Revert {
    loop {
        let event = client::next_event(events).await;
        let Some(pb::sync_event::Event::Revert(r)) = event.event else {
            continue;
        };
        if r.phase == pb::RevertPhase::Applied as i32 {
            return r;
        }
        assert_ne!(
            r.phase,
            pb::RevertPhase::Failed as i32,
            "the job failed: {r:?}"
        );
    }
}

async fn sets_received(sim: &Sim) -> u64 {
    sim.counters().await.sets_received
}

/// Waits until running of `datastore` holds `value` (by meaning) at `path`.
async fn until_holds(
    client: &mut NetSyncClient<Channel>,
    datastore: &str,
    path: &str,
    value: &TypedValue,
) {
    until_running(client, datastore, &format!("{path} = {value:?}"), |r| {
        r.get(path).is_some_and(|v| same_meaning(v, value))
    })
    .await;
}

/// Deviations of `datastore` as (path, expected, actual).
async fn deviations(
    client: &mut NetSyncClient<Channel>,
    datastore: &str,
) -> Vec<(String, Option<TypedValue>, Option<TypedValue>)> {
    client::deviations(client, datastore)
        .await
        .into_iter()
        .map(|d| (d.path, d.expected, d.actual))
        .collect()
}

/// Changes leaves no intent claims, one commit at a time, and checks after
/// each that nothing deviates.
async fn commits_elsewhere_change_nothing(
    sim: &Sim,
    client: &mut NetSyncClient<Channel>,
    datastore: &str,
) {
    for n in 1..=3 {
        let path = leaf("state/counters/in-errors");
        let value = typed(V::UintVal(1000 + n));
        sim.set_leaves(vec![(path.clone(), value.clone())], vec![])
            .await;
        until_holds(client, datastore, &path, &value).await;
        assert_eq!(
            deviations(client, datastore).await,
            vec![],
            "after commit {n}"
        );
    }
}

/// How an intent writes its values.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `string_val`, `uint_val`, `bool_val`.
    Typed,
    /// `json_ietf_val`.
    JsonIetf,
}

/// An intent setting a string, a uint64 and a bool leaf of ETH0 to values
/// the device does not have yet; returns it with the values the device must
/// then hold (typed, as a PROTO Get reads them).
async fn intent_for(sim: &Sim, form: Form) -> (pb::Intent, Vec<(String, TypedValue)>) {
    let device = sim.leaves().await;
    let mtu = match device[&leaf("config/mtu")].value {
        Some(V::UintVal(9216)) => 1500,
        _ => 9216,
    };
    let enabled = !matches!(
        device[&leaf("config/enabled")].value,
        Some(V::BoolVal(true))
    );
    let description = "managed by netsync";
    let on_device = vec![
        (
            leaf("config/description"),
            typed(V::StringVal(description.into())),
        ),
        (leaf("config/enabled"), typed(V::BoolVal(enabled))),
        (leaf("config/mtu"), typed(V::UintVal(mtu))),
    ];
    let written = match form {
        Form::Typed => on_device.clone(),
        Form::JsonIetf => vec![
            (
                leaf("config/description"),
                ietf(&format!("\"{description}\"")),
            ),
            (leaf("config/enabled"), ietf(&enabled.to_string())),
            // A JSON number, which devices take too, where RFC 7951 writes
            // a uint64 as a string: the device reports it as `"9216"`.
            (leaf("config/mtu"), ietf(&mtu.to_string())),
        ],
    };
    let intent = pb::Intent {
        name: "eth0".into(),
        priority: 10,
        updates: written
            .into_iter()
            .map(|(path, value)| pb::Leaf {
                path,
                value: Some(value),
                owner: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    (intent, on_device)
}

/// The whole story on a device speaking `encoding`, with the intent's values
/// written in `form`: apply, no deviation, none over later commits, exactly
/// one Set; drift reverted with exactly one more.
async fn converges_and_reverts(encoding: pb::Encoding, device: gnmi::Encoding, form: Form) {
    let sim = strict_sim(device).await;
    let datastore = DatastoreBuilder::new("r1", sim.addr)
        .encoding(encoding)
        .commit_interval_ms(100)
        .revert(true, 0)
        .build();
    let (_dir, server, mut client) = start(datastore).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let (intent, on_device) = intent_for(&sim, form).await;
    let sets = sets_received(&sim).await;

    set_intent(&mut client, "r1", intent).await;
    let applied = next_applied(&mut events).await;
    assert_eq!(applied.updates.len(), 3, "{applied:?}");
    assert_eq!(deviations(&mut client, "r1").await, vec![]);
    let device_now = sim.leaves().await;
    for (path, value) in &on_device {
        assert_eq!(device_now.get(path), Some(value), "{path} on the device");
    }
    assert_eq!(
        sets_received(&sim).await,
        sets + 1,
        "one Set for one intent write"
    );

    commits_elsewhere_change_nothing(&sim, &mut client, "r1").await;
    assert_eq!(
        sets_received(&sim).await,
        sets + 1,
        "no Set for commits that change nothing of the intent"
    );

    // Drift on the device is reverted with one Set, and nothing deviates then.
    let mtu = leaf("config/mtu");
    sim.set_leaves(vec![(mtu.clone(), typed(V::UintVal(1234)))], vec![])
        .await;
    let reverted = next_applied(&mut events).await;
    let paths: Vec<_> = reverted.updates.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(paths, [mtu.as_str()]);
    let wanted = &on_device.iter().find(|(p, _)| *p == mtu).unwrap().1;
    assert_eq!(sim.leaves().await.get(&mtu), Some(wanted));
    assert_eq!(deviations(&mut client, "r1").await, vec![]);
    assert_eq!(sets_received(&sim).await, sets + 2, "one Set for one drift");

    drop(events);
    server.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_converge_on_a_json_ietf_device() {
    converges_and_reverts(
        pb::Encoding::JsonIetf,
        gnmi::Encoding::JsonIetf,
        Form::Typed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_converge_on_a_json_device() {
    converges_and_reverts(pb::Encoding::Json, gnmi::Encoding::Json, Form::Typed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_ietf_values_converge_on_a_proto_device() {
    converges_and_reverts(pb::Encoding::Proto, gnmi::Encoding::Proto, Form::JsonIetf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_ietf_values_converge_on_a_json_ietf_device() {
    converges_and_reverts(
        pb::Encoding::JsonIetf,
        gnmi::Encoding::JsonIetf,
        Form::JsonIetf,
    )
    .await;
}

/// The README's datastore (JSON_IETF, the API default, syncing `/interfaces`
/// and `/system`) with revert on, and exactly the README's SetIntent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_set_intent_example_converges() {
    let sim = strict_sim(gnmi::Encoding::JsonIetf).await;
    let guest = "/system/aaa/authentication/users/user[username=guest]";
    let guest_name = format!("{guest}/username");
    let string = |s: &str| typed(V::StringVal(s.into()));
    sim.set_leaves(
        vec![
            (guest_name.clone(), string("guest")),
            (format!("{guest}/config/username"), string("guest")),
            (format!("{guest}/config/role"), string("read-only")),
        ],
        vec![],
    )
    .await;
    let mut datastore = DatastoreBuilder::new("leaf1", sim.addr)
        .encoding(pb::Encoding::JsonIetf)
        .mode(pb::SyncMode::OnChange)
        .paths(&["/interfaces", "/system"])
        .list_keys(&["/interfaces/interface[name]"])
        .revert(true, 0)
        .build();
    datastore.sync.as_mut().unwrap().commit_interval = Some(millis(1000));
    let (_dir, server, mut client) = start(datastore).await;
    let mut events = client::watch(&mut client, "leaf1", 0).await;
    let sets = sets_received(&sim).await;

    // grpcurl -d '{"datastore": "leaf1", "intent": {"name": "base", "priority": 10,
    //   "updates": [{"path": "/system/config/hostname", "value": {"stringVal": "leaf1"}}],
    //   "deletes": ["/system/aaa/authentication/users/user[username=guest]"]}}'
    let intent = pb::Intent {
        name: "base".into(),
        priority: 10,
        updates: vec![pb::Leaf {
            path: "/system/config/hostname".into(),
            value: Some(string("leaf1")),
            owner: String::new(),
        }],
        deletes: vec![guest.into()],
        ..Default::default()
    };
    set_intent(&mut client, "leaf1", intent).await;
    next_applied(&mut events).await;
    assert_eq!(deviations(&mut client, "leaf1").await, vec![]);
    let device = sim.leaves().await;
    assert_eq!(
        device.get("/system/config/hostname"),
        Some(&string("leaf1"))
    );
    assert!(
        !device.keys().any(|k| k.starts_with(guest)),
        "the guest user is gone"
    );
    assert_eq!(sets_received(&sim).await, sets + 1);

    commits_elsewhere_change_nothing(&sim, &mut client, "leaf1").await;
    assert_eq!(sets_received(&sim).await, sets + 1);

    // Someone renames the device by hand: put back.
    sim.set_leaves(
        vec![("/system/config/hostname".into(), string("edited-by-hand"))],
        vec![],
    )
    .await;
    next_applied(&mut events).await;
    assert_eq!(
        sim.leaves().await.get("/system/config/hostname"),
        Some(&string("leaf1"))
    );
    assert_eq!(deviations(&mut client, "leaf1").await, vec![]);
    assert_eq!(sets_received(&sim).await, sets + 2);

    drop(events);
    server.stop().await;
    sim.stop().await;
}
