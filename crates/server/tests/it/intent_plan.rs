//! The dry run of an intent write (SetIntent with `validate_only`), the
//! blame of a read (GetRunning with `with_owner`), and stored intents that
//! today's validation refuses, against netsync-sim on PROTO and JSON_IETF
//! datastores. The stored-intents test writes its rows with a SQLite
//! connection of its own, so it runs on SQLite whatever `NETSYNC_TEST_DB`
//! says.
//!
//! The simulator takes Set values only in the datastore's encoding
//! (`SimConfig::set_encoding`), as a device speaking one encoding does: a
//! planned Set in another encoding would not match the real one, and the
//! real one would fail.

use std::collections::BTreeMap;
use std::time::Duration;

use netsync_core::Path;
use netsync_core::value::same_meaning;
use netsync_proto::gnmi::{self, TypedValue, typed_value::Value as V};
use netsync_proto::netsync::v1 as pb;
use netsync_server::Config;
use netsync_sim::SimConfig;
use netsync_testkit::client::{
    self, Client, get_intent, owners, plan_intent, set_intent, until_running, wait_revision,
};
use netsync_testkit::datastore::{DatastoreBuilder, create};
use netsync_testkit::sim::{Sim, generated};
use prost::Message;
use tonic::{Code, Streaming};

use crate::support::{TestServer, assert_status};

const ETH0: &str = "/interfaces/interface[name=ethernet-1/1]";

fn leaf(rel: &str) -> String {
    format!("{ETH0}/{rel}")
}

fn typed(value: V) -> TypedValue {
    TypedValue { value: Some(value) }
}

fn string(s: &str) -> TypedValue {
    typed(V::StringVal(s.into()))
}

fn ietf(text: &str) -> TypedValue {
    typed(V::JsonIetfVal(text.into()))
}

fn update(path: &str, value: TypedValue) -> pb::Leaf {
    pb::Leaf {
        path: path.into(),
        value: Some(value),
        owner: String::new(),
    }
}

fn intent(name: &str, priority: i32, updates: Vec<pb::Leaf>, deletes: &[&str]) -> pb::Intent {
    pb::Intent {
        name: name.into(),
        priority,
        updates,
        deletes: deletes.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }
}

/// Quick retries, so that a failing Set shows as FAILED soon.
fn config(db: &std::path::Path) -> Config {
    let mut config = crate::support::config(db);
    config.reconcile.backoff_min = Duration::from_millis(50);
    config.reconcile.backoff_max = Duration::from_millis(200);
    config.reconcile.max_attempts = 3;
    config
}

/// The gNMI encoding a device speaking the datastore's `encoding` uses.
fn device_encoding(encoding: pb::Encoding) -> gnmi::Encoding {
    match encoding {
        pb::Encoding::Proto => gnmi::Encoding::Proto,
        pb::Encoding::Json => gnmi::Encoding::Json,
        _ => gnmi::Encoding::JsonIetf,
    }
}

/// A generated device of 300 leaves taking Set values only in the encoding
/// of `encoding`.
async fn strict_sim(encoding: pb::Encoding) -> Sim {
    Sim::start(SimConfig {
        set_encoding: Some(device_encoding(encoding)),
        ..generated(300)
    })
    .await
}

/// Datastore `r1` of `sim` in `encoding`, committing every 100 ms, revert
/// on or off (debounce zero).
fn datastore(sim: &Sim, encoding: pb::Encoding, revert: bool) -> DatastoreBuilder {
    DatastoreBuilder::new("r1", sim.addr)
        .encoding(encoding)
        .commit_interval_ms(100)
        .revert(revert, 0)
}

/// netsyncd with `datastore` created and synced (revision 1).
async fn start(datastore: pb::Datastore) -> (tempfile::TempDir, TestServer, Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(&dir.path().join("n.db"))).await;
    let mut client = server.client().await;
    let name = datastore.name.clone();
    client.create_datastore(create(datastore)).await.unwrap();
    wait_revision(&mut client, &name, 1).await;
    (dir, server, client)
}

async fn sets_received(sim: &Sim) -> u64 {
    sim.counters().await.sets_received
}

async fn list_intents(client: &mut Client) -> Vec<pb::Intent> {
    client
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .intents
}

/// Deviations as (path, intent).
fn named(deviations: &[pb::Deviation]) -> Vec<(String, String)> {
    deviations
        .iter()
        .map(|d| (d.path.clone(), d.intent.clone()))
        .collect()
}

async fn deviations(client: &mut Client) -> Vec<(String, String)> {
    named(&client::deviations(client, "r1").await)
}

/// A Set's updates as canonical path -> value.
fn set_updates(set: &gnmi::SetRequest) -> BTreeMap<String, TypedValue> {
    set.update
        .iter()
        .map(|u| {
            let path = Path::from_gnmi(set.prefix.as_ref(), u.path.as_ref().unwrap()).unwrap();
            (path.to_string(), u.val.clone().unwrap())
        })
        .collect()
}

/// The Revert events of the next job to end, up to its APPLIED; panics on a
/// FAILED one.
async fn until_applied(events: &mut Streaming<pb::SyncEvent>) -> Vec<pb::Revert> {
    let mut seen = Vec::new();
    loop {
        let event = client::next_event(events).await;
        let Some(pb::sync_event::Event::Revert(r)) = event.event else {
            continue;
        };
        assert_ne!(
            r.phase,
            pb::RevertPhase::Failed as i32,
            "the job failed: {r:?}"
        );
        let applied = r.phase == pb::RevertPhase::Applied as i32;
        seen.push(r);
        if applied {
            return seen;
        }
    }
}

/// The APPLYING events among `events`.
fn applying(events: &[pb::Revert]) -> Vec<&pb::Revert> {
    events
        .iter()
        .filter(|r| r.phase == pb::RevertPhase::Applying as i32)
        .collect()
}

/// Waits for events until GetDeviations of `r1` is empty.
async fn until_no_deviations(client: &mut Client, events: &mut Streaming<pb::SyncEvent>) {
    while !deviations(client).await.is_empty() {
        client::next_event(events).await;
    }
}

/// A value of ETH0's mtu the device does not have.
async fn other_mtu(sim: &Sim) -> u64 {
    match sim.leaves().await[&leaf("config/mtu")].value {
        Some(V::UintVal(9216)) => 1500,
        _ => 9216,
    }
}

async fn validate_only_plans_the_set_and_changes_nothing(encoding: pb::Encoding) {
    let sim = strict_sim(encoding).await;
    let (_dir, server, mut client) = start(datastore(&sim, encoding, true).build()).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let mtu = other_mtu(&sim).await;
    let wanted = intent(
        "eth0",
        10,
        vec![
            update(&leaf("config/description"), string("planned")),
            update(&leaf("config/mtu"), typed(V::UintVal(mtu))),
        ],
        &[],
    );
    let sets = sets_received(&sim).await;
    let revision = client::status(&mut client, "r1").await.revision;

    let answer = plan_intent(&mut client, "r1", wanted.clone())
        .await
        .unwrap();
    assert_eq!(answer.name, "eth0");
    let plan = answer
        .plan
        .clone()
        .expect("a validate_only answer has a plan");
    assert!(plan.revision >= revision, "{plan:?}");
    assert_eq!(answer.revision, plan.revision);
    let set = plan.set.clone().expect("the device lacks both leaves");
    let planned = set_updates(&set);
    assert_eq!(
        planned.keys().collect::<Vec<_>>(),
        [&leaf("config/description"), &leaf("config/mtu")]
    );
    assert!(set.delete.is_empty(), "{set:?}");
    for value in planned.values() {
        let in_encoding = match encoding {
            pb::Encoding::Proto => {
                matches!(value.value, Some(V::StringVal(_) | V::UintVal(_)))
            }
            _ => matches!(value.value, Some(V::JsonIetfVal(_))),
        };
        assert!(in_encoding, "{value:?} is not in {encoding:?}");
    }
    assert!(same_meaning(
        &planned[&leaf("config/description")],
        &string("planned")
    ));
    assert!(same_meaning(
        &planned[&leaf("config/mtu")],
        &typed(V::UintVal(mtu))
    ));
    assert!(
        plan.clears.is_empty() && plan.remaining.is_empty(),
        "{plan:?}"
    );

    // Nothing changed: no intent, no deviation, no job (a job's QUEUED event
    // would come before the commit below), no Set.
    let missing = client
        .get_intent(pb::GetIntentRequest {
            datastore: "r1".into(),
            name: "eth0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(list_intents(&mut client).await.is_empty());
    assert!(deviations(&mut client).await.is_empty());
    let marker = leaf("state/counters/in-errors");
    sim.set_leaves(vec![(marker.clone(), typed(V::UintVal(4242)))], vec![])
        .await;
    loop {
        let event = client::next_event(&mut events).await;
        match event.event {
            Some(pb::sync_event::Event::Revert(r)) => {
                panic!("a dry run made a reconcile event: {r:?}")
            }
            Some(pb::sync_event::Event::Commit(c))
                if c.updates.iter().any(|l| l.path == marker) =>
            {
                break;
            }
            _ => {}
        }
    }
    assert_eq!(sets_received(&sim).await, sets, "a dry run sent a Set");

    // The real write sends exactly the planned Set, once.
    set_intent(&mut client, "r1", wanted).await;
    let job = until_applied(&mut events).await;
    let sent = applying(&job);
    assert_eq!(sent.len(), 1, "{job:?}");
    let sent: BTreeMap<String, TypedValue> = sent[0]
        .updates
        .iter()
        .map(|l| (l.path.clone(), l.value.clone().unwrap()))
        .collect();
    assert_eq!(
        sent.keys().collect::<Vec<_>>(),
        planned.keys().collect::<Vec<_>>()
    );
    for (path, value) in &sent {
        assert!(same_meaning(value, &planned[path]), "{path}: {value:?}");
    }
    assert_eq!(sets_received(&sim).await, sets + 1);
    let device = sim.leaves().await;
    for (path, value) in &planned {
        assert!(same_meaning(&device[path], value), "{path} on the device");
    }
    // Planned again now, the device holds it: an empty plan.
    let stored = get_intent(&mut client, "r1", "eth0").await;
    let again = plan_intent(&mut client, "r1", stored).await.unwrap();
    let plan = again.plan.unwrap();
    assert!(plan.set.is_none(), "{plan:?}");

    drop(events);
    server.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_plans_the_set_and_changes_nothing_on_proto() {
    validate_only_plans_the_set_and_changes_nothing(pb::Encoding::Proto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_plans_the_set_and_changes_nothing_on_json_ietf() {
    validate_only_plans_the_set_and_changes_nothing(pb::Encoding::JsonIetf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_refuses_what_a_write_refuses_with_the_same_error() {
    let sim = strict_sim(pb::Encoding::JsonIetf).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(&dir.path().join("n.db"))).await;
    let mut client = server.client().await;
    for (name, encoding) in [
        ("proto", pb::Encoding::Proto),
        ("ietf", pb::Encoding::JsonIetf),
    ] {
        let ds = DatastoreBuilder::new(name, sim.addr)
            .encoding(encoding)
            .paths(&["/interfaces"])
            .list_keys(&["/interfaces/interface[name]"])
            .build();
        client.create_datastore(create(ds)).await.unwrap();
    }
    let sets = sets_received(&sim).await;
    let cases: Vec<(&str, Option<pb::Intent>, &str)> = vec![
        (
            "outside sync.paths",
            Some(intent(
                "i",
                1,
                vec![update("/system/config/hostname", string("x"))],
                &[],
            )),
            "intent.updates[0].path",
        ),
        (
            "null",
            Some(intent(
                "i",
                1,
                vec![update(&leaf("config/enabled"), ietf("null"))],
                &[],
            )),
            "intent.updates[0].value",
        ),
        (
            "bad name",
            Some(intent("Not A Name", 1, vec![], &[])),
            "intent.name",
        ),
        (
            "root absent",
            Some(intent("i", 1, vec![], &["/"])),
            "intent.deletes[0]",
        ),
        ("no intent", None, "intent"),
    ];
    for datastore in ["proto", "ietf"] {
        for (case, intent, field) in &cases {
            let mut answers = Vec::new();
            for validate_only in [false, true] {
                let status = client
                    .set_intent(pb::SetIntentRequest {
                        datastore: datastore.into(),
                        intent: intent.clone(),
                        validate_only,
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_status(&status, Code::InvalidArgument, &[field]);
                answers.push(status.message().to_string());
            }
            assert_eq!(answers[0], answers[1], "{datastore}: {case}");
        }
    }
    // An unknown datastore: NOT_FOUND alike.
    let ok = intent("i", 1, vec![update(&leaf("config/mtu"), ietf("1500"))], &[]);
    for validate_only in [false, true] {
        let status = client
            .set_intent(pb::SetIntentRequest {
                datastore: "nope".into(),
                intent: Some(ok.clone()),
                validate_only,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, &["nope"]);
    }
    assert_eq!(sets_received(&sim).await, sets);
    server.stop().await;
    sim.stop().await;
}

/// Two intents applied with revert off, then drift on three leaves: `base`
/// (priority 20) deviates on the description and the mtu, `other`
/// (priority 30) on `enabled`. A dry run of `high` (priority 10, the
/// description) plans the description only, clears base's deviation there,
/// and leaves the other two; one of `low` (priority 50, the mtu, which base
/// decides) plans nothing. The real write of `high` then leaves exactly the
/// deviations its plan said would remain.
async fn clears_and_remaining_with_overlapping_intents(encoding: pb::Encoding) {
    let sim = strict_sim(encoding).await;
    let (_dir, server, mut client) = start(datastore(&sim, encoding, false).build()).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let device = sim.leaves().await;
    let mtu = other_mtu(&sim).await;
    let enabled = !matches!(
        device[&leaf("config/enabled")].value,
        Some(V::BoolVal(true))
    );
    let (description, mtu_path, enabled_path) = (
        leaf("config/description"),
        leaf("config/mtu"),
        leaf("config/enabled"),
    );
    let base = intent(
        "base",
        20,
        vec![
            update(&description, string("base")),
            update(&mtu_path, typed(V::UintVal(mtu))),
        ],
        &[],
    );
    set_intent(&mut client, "r1", base).await;
    until_applied(&mut events).await;
    let other = intent(
        "other",
        30,
        vec![update(&enabled_path, typed(V::BoolVal(enabled)))],
        &[],
    );
    set_intent(&mut client, "r1", other).await;
    until_applied(&mut events).await;
    assert!(deviations(&mut client).await.is_empty());

    let drifted = [
        (description.clone(), string("by hand")),
        (mtu_path.clone(), typed(V::UintVal(mtu + 1))),
        (enabled_path.clone(), typed(V::BoolVal(!enabled))),
    ];
    sim.set_leaves(drifted.to_vec(), vec![]).await;
    until_running(&mut client, "r1", "the drift", |r| {
        drifted
            .iter()
            .all(|(p, v)| r.get(p).is_some_and(|have| same_meaning(have, v)))
    })
    .await;
    let drift = vec![
        (description.clone(), "base".to_string()),
        (enabled_path.clone(), "other".to_string()),
        (mtu_path.clone(), "base".to_string()),
    ];
    assert_eq!(deviations(&mut client).await, drift);

    let high = intent("high", 10, vec![update(&description, string("high"))], &[]);
    let plan = plan_intent(&mut client, "r1", high.clone())
        .await
        .unwrap()
        .plan
        .unwrap();
    let planned = set_updates(plan.set.as_ref().expect("the description"));
    assert_eq!(planned.keys().collect::<Vec<_>>(), [&description]);
    assert!(same_meaning(&planned[&description], &string("high")));
    assert_eq!(named(&plan.clears), [drift[0].clone()]);
    assert_eq!(named(&plan.remaining), drift[1..].to_vec());
    let cleared = &plan.clears[0];
    assert!(same_meaning(
        cleared.expected.as_ref().unwrap(),
        &string("base")
    ));
    assert!(same_meaning(
        cleared.actual.as_ref().unwrap(),
        &string("by hand")
    ));

    // The mtu is base's (priority 20 beats 50): nothing to send.
    let low = intent(
        "low",
        50,
        vec![update(&mtu_path, typed(V::UintVal(1)))],
        &[],
    );
    let plan_low = plan_intent(&mut client, "r1", low)
        .await
        .unwrap()
        .plan
        .unwrap();
    assert!(plan_low.set.is_none(), "{plan_low:?}");
    assert!(plan_low.clears.is_empty(), "{plan_low:?}");
    assert_eq!(named(&plan_low.remaining), drift);

    set_intent(&mut client, "r1", high).await;
    let job = until_applied(&mut events).await;
    let sent = applying(&job);
    assert_eq!(sent.len(), 1, "{job:?}");
    let paths: Vec<&str> = sent[0].updates.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(paths, [description.as_str()]);
    assert_eq!(deviations(&mut client).await, named(&plan.remaining));

    drop(events);
    server.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clears_and_remaining_with_overlapping_intents_on_proto() {
    clears_and_remaining_with_overlapping_intents(pb::Encoding::Proto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clears_and_remaining_with_overlapping_intents_on_json_ietf() {
    clears_and_remaining_with_overlapping_intents(pb::Encoding::JsonIetf).await;
}

/// Owners per leaf of ETH0's subtree: leaves set by overlapping intents
/// (priority, then name on a tie), a leaf under a subtree an intent requires
/// absent (re-created on the device, revert off), and leaves no intent
/// covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_owner_names_the_intent_deciding_each_leaf() {
    let sim = strict_sim(pb::Encoding::Proto).await;
    let (_dir, server, mut client) =
        start(datastore(&sim, pb::Encoding::Proto, false).build()).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let mtu = typed(V::UintVal(other_mtu(&sim).await));
    let (description, mtu_path) = (leaf("config/description"), leaf("config/mtu"));
    let counters = leaf("state/counters");
    let intents = [
        intent(
            "base",
            20,
            vec![
                update(&description, string("base")),
                update(&mtu_path, mtu.clone()),
            ],
            &[],
        ),
        // Ties with base on the mtu, and loses by name.
        intent("zeta", 20, vec![update(&mtu_path, mtu.clone())], &[]),
        intent("high", 10, vec![update(&description, string("high"))], &[]),
        intent("strip", 5, vec![], &[&counters]),
    ];
    for i in intents {
        set_intent(&mut client, "r1", i).await;
    }
    until_no_deviations(&mut client, &mut events).await;
    // Someone re-creates a counter; with revert off it stays.
    let in_errors = format!("{counters}/in-errors");
    sim.set_leaves(vec![(in_errors.clone(), typed(V::UintVal(7)))], vec![])
        .await;
    until_running(&mut client, "r1", "the re-created counter", |r| {
        r.contains_key(&in_errors)
    })
    .await;

    let owned = owners(&mut client, "r1", ETH0).await;
    assert!(owned.len() > 4, "{owned:?}");
    assert!(owned.keys().all(|p| p.starts_with(ETH0)), "{owned:?}");
    assert_eq!(owned[&description], "high");
    assert_eq!(owned[&mtu_path], "base");
    assert_eq!(owned[&in_errors], "strip");
    assert_eq!(owned[&leaf("config/enabled")], "");
    assert_eq!(owned[&leaf("name")], "");
    let decided: Vec<&String> = owned
        .iter()
        .filter(|(_, o)| !o.is_empty())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(decided, [&description, &mtu_path, &in_errors]);

    // The whole of running: other leaves have no owner.
    let all = owners(&mut client, "r1", "/").await;
    assert!(all.len() > owned.len());
    assert!(
        all.iter()
            .filter(|(p, _)| !p.starts_with(ETH0))
            .all(|(_, o)| o.is_empty())
    );

    // Without with_owner, no owner is filled in.
    let plain = client::running(&mut client, "r1", 0).await;
    assert_eq!(plain.leaves.len(), all.len());
    let mut stream = client
        .get_running(pb::GetRunningRequest {
            datastore: "r1".into(),
            path: ETH0.into(),
            min_revision: 0,
            with_owner: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(batch) = tokio_stream::StreamExt::next(&mut stream).await {
        assert!(batch.unwrap().leaves.iter().all(|l| l.owner.is_empty()));
    }

    drop(events);
    server.stop().await;
    sim.stop().await;
}

/// Intents written by an older netsync, before today's validation: a leaf
/// outside `sync.paths`, a `null`, and a JSON object. After a restart the
/// datastore syncs, the object is flattened and applied, the two others are
/// visible as FAILING with why (also after a Resync), their leaves never
/// reach the device, and a write or a delete settles them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_intents_todays_validation_refuses_are_failing_not_fatal() {
    let sim = strict_sim(pb::Encoding::Proto).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    let ds = datastore(&sim, pb::Encoding::Proto, true)
        .paths(&["/interfaces"])
        .list_keys(&["/interfaces/interface[name]"])
        .build();
    let server = TestServer::start_with(crate::support::on_sqlite(config(&db), &db)).await;
    let mut client = server.client().await;
    client.create_datastore(create(ds)).await.unwrap();
    wait_revision(&mut client, "r1", 1).await;
    drop(client);
    server.stop().await;

    let rows = [
        intent(
            "outside",
            10,
            vec![update("/system/config/hostname", string("hacked"))],
            &[],
        ),
        intent(
            "nulled",
            10,
            vec![update(&leaf("config/enabled"), ietf("null"))],
            &[],
        ),
        intent(
            "object",
            10,
            vec![update(
                ETH0,
                ietf(r#"{"config": {"description": "from-json"}}"#),
            )],
            &[],
        ),
    ];
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for row in &rows {
        sqlx::query("INSERT INTO intents (datastore, name, body) VALUES ('r1', ?, ?)")
            .bind(&row.name)
            .bind(row.encode_to_vec())
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    let device_before = sim.leaves().await;

    let server = TestServer::start_with(crate::support::on_sqlite(config(&db), &db)).await;
    let mut client = server.client().await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let description = leaf("config/description");
    until_running(&mut client, "r1", "the flattened object applied", |r| {
        r.get(&description)
            .is_some_and(|v| same_meaning(v, &string("from-json")))
    })
    .await;
    let st = client::status(&mut client, "r1").await;
    assert_eq!(st.state, pb::SyncState::InSync as i32, "{st:?}");

    let object = get_intent(&mut client, "r1", "object").await;
    let paths: Vec<&str> = object.updates.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(paths, [description.as_str()], "flattened at load");
    let failing = |i: &pb::Intent, words: &[&str]| {
        let status = i.status.clone().unwrap();
        assert_eq!(status.state, pb::IntentState::Failing as i32, "{i:?}");
        for word in words {
            assert!(
                status.last_error.contains(word),
                "{word:?} not in {status:?}"
            );
        }
    };
    let outside = get_intent(&mut client, "r1", "outside").await;
    failing(
        &outside,
        &[
            "intent.updates[0].path",
            "outside the datastore's sync.paths",
        ],
    );
    assert_eq!(outside.updates, rows[0].updates, "shown as stored");
    failing(
        &get_intent(&mut client, "r1", "nulled").await,
        &["null is not a value"],
    );
    let listed: Vec<String> = list_intents(&mut client)
        .await
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, ["nulled", "object", "outside"]);
    assert!(deviations(&mut client).await.is_empty());

    // A Resync cannot make them usable.
    client
        .resync(pb::ResyncRequest { name: "r1".into() })
        .await
        .unwrap();
    failing(
        &get_intent(&mut client, "r1", "outside").await,
        &["sync.paths"],
    );

    // Their leaves never reached the device: only the object's did.
    let device = sim.leaves().await;
    assert_eq!(
        device.get("/system/config/hostname"),
        device_before.get("/system/config/hostname")
    );
    assert_eq!(
        device[&leaf("config/enabled")],
        device_before[&leaf("config/enabled")]
    );

    // Deleted (which withdraws nothing: the leaf was never netsync's), and
    // written again validly: settled. The write's job comes after the
    // delete's, or absorbs it, so once it is APPLIED a withdrawal would show.
    client::delete_intent(&mut client, "r1", "nulled")
        .await
        .unwrap();
    let fixed = intent(
        "outside",
        10,
        vec![update(
            &leaf("config/mtu"),
            typed(V::UintVal(other_mtu(&sim).await)),
        )],
        &[],
    );
    let written = set_intent(&mut client, "r1", fixed).await;
    assert_eq!(
        written.status.unwrap().state,
        pb::IntentState::Pending as i32
    );
    until_applied(&mut events).await;
    assert_eq!(
        sim.leaves().await.get(&leaf("config/enabled")),
        device_before.get(&leaf("config/enabled")),
        "deleting an unusable intent withdrew its leaf"
    );
    let listed = list_intents(&mut client).await;
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["object", "outside"]);
    until_no_deviations(&mut client, &mut events).await;
    assert!(
        list_intents(&mut client)
            .await
            .iter()
            .all(|i| i.status.as_ref().unwrap().state != pb::IntentState::Failing as i32)
    );

    drop(events);
    server.stop().await;
    sim.stop().await;
}

/// grpcurl (JSON names as a user types them): a validate_only SetIntent on
/// a JSON_IETF datastore answers the plan with `jsonIetfVal` values and
/// writes nothing; GetRunning with `withOwner` names the intent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_validate_only_and_with_owner() {
    let Some(grpcurl) = netsync_testkit::tools::grpcurl() else {
        return;
    };
    let sim = strict_sim(pb::Encoding::JsonIetf).await;
    let (_dir, server, mut client) =
        start(datastore(&sim, pb::Encoding::JsonIetf, true).build()).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let addr = server.addr.to_string();
    let call = |method: &str, body: String| {
        let mut command = tokio::process::Command::new(&grpcurl);
        command.args([
            "-plaintext",
            "-d",
            &body,
            &addr,
            &format!("netsync.v1.NetSync/{method}"),
        ]);
        command
    };
    let description = leaf("config/description");
    let body = |validate_only: bool| {
        format!(
            r#"{{"datastore": "r1", "validateOnly": {validate_only}, "intent": {{"name": "eth0",
            "priority": 10, "updates": [{{"path": "{description}", "value": {{"stringVal": "via grpcurl"}}}}]}}}}"#
        )
    };
    let out = netsync_testkit::tools::run(&mut call("SetIntent", body(true))).await;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let update = &answer["plan"]["set"]["update"][0];
    assert!(update["val"]["jsonIetfVal"].is_string(), "{answer:#}");
    assert!(answer["plan"]["revision"].is_string(), "{answer:#}");
    assert!(list_intents(&mut client).await.is_empty());

    let bad = call(
        "SetIntent",
        r#"{"datastore": "r1", "validateOnly": true, "intent": {"name": "x",
            "updates": [{"path": "/a", "value": {"jsonIetfVal": "bnVsbA=="}}]}}"#
            .into(),
    )
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("intent.updates[0].value"),
        "{err}"
    );

    netsync_testkit::tools::run(&mut call("SetIntent", body(false))).await;
    until_applied(&mut events).await;
    let out = netsync_testkit::tools::run(&mut call(
        "GetRunning",
        format!(r#"{{"datastore": "r1", "path": "{ETH0}", "withOwner": true}}"#),
    ))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#""owner": "eth0""#), "{text}");

    drop(events);
    server.stop().await;
    sim.stop().await;
}
