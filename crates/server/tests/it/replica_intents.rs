//! Intent writes on every replica (`--replicas`): SetIntent, DeleteIntent and
//! Resync through a replica that does not sync the datastore are validated as
//! the owner validates them, written to the database with the job that
//! applies them, and picked up by the owner, which alone runs the job: the
//! device ends up holding the intent. A write survives the owner's kill -9
//! (the next owner applies it) and a lost notification (the owner's backstop
//! finds it).
//!
//! Real processes on a database of the shared throwaway PostgreSQL cluster,
//! datastores on the simulator; these pass without running when PostgreSQL
//! is missing, unless `NETSYNC_REQUIRE_POSTGRES=1`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::{self, Client, set_intent};
use netsync_testkit::datastore::intent;
use netsync_testkit::gnmi::string_of;
use netsync_testkit::sim::{Sim, failing_sets};
use prost::Message;
use sqlx::PgPool;
use tonic::Code;

use crate::reconcile::strict_sim;
use crate::replicas::{Replica, create, database, settled};
use crate::support::{assert_status, http_get, sample};

const MOTD: &str = "/system/intent/motd";
const BANNER: &str = "/system/intent/banner";
const EXTRA: &str = "/system/intent/extra";
const LOCAL: &str = "/system/intent/local";

/// Three replicas `a`, `b`, `c` syncing `count` datastores of one simulator,
/// settled: the database, the simulator, the replicas, the datastores'
/// owners.
async fn three(count: usize) -> Option<(PgPool, Sim, Vec<Replica>, BTreeMap<String, String>)> {
    let (url, db) = database().await?;
    // Values are kept as strings whatever the Set's encoding: the device's
    // leaves compare with what the intents say.
    let sim = strict_sim(pb::Encoding::JsonIetf, 20).await;
    let mut replicas = vec![
        Replica::start(&url, "a").await,
        Replica::start(&url, "b").await,
        Replica::start(&url, "c").await,
    ];
    let names = create(&mut replicas[0], &sim, count).await;
    let (owners, _) = {
        let mut live: Vec<&mut Replica> = replicas.iter_mut().collect();
        settled(&db, &mut live, &names).await
    };
    Some((db, sim, replicas, owners))
}

/// The client of replica `id`.
fn client_of(replicas: &[Replica], id: &str) -> Client {
    replicas
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no replica {id}"))
        .client
        .clone()
}

/// A datastore and the ids of its owner and of the two other replicas.
fn roles(owners: &BTreeMap<String, String>) -> (String, String, String, String) {
    let (name, owner) = owners.iter().next().unwrap();
    let mut others = ["a", "b", "c"].into_iter().filter(|id| id != owner);
    let (writer, third) = (others.next().unwrap(), others.next().unwrap());
    (name.clone(), owner.clone(), writer.into(), third.into())
}

/// Waits until the device's leaf `path` is `want` (`None`: absent).
async fn until_device(sim: &Sim, path: &str, want: Option<&str>) {
    let started = Instant::now();
    loop {
        let leaves = sim.leaves().await;
        let got = leaves.get(path).map(string_of);
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the device has {path} = {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until intent `intent` of `name` is APPLIED on `client` (its owner).
async fn until_applied(client: &mut Client, name: &str, intent: &str) -> pb::Intent {
    let started = Instant::now();
    loop {
        let got = client::get_intent(client, name, intent).await;
        let state = got.status.as_ref().map(|s| s.state);
        if state == Some(pb::IntentState::Applied as i32) {
            return got;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "intent {intent} of {name} is not APPLIED: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The resyncs the owner counted for `name`.
async fn resyncs(client: &mut Client, name: &str) -> u64 {
    client::status(client, name)
        .await
        .stats
        .unwrap_or_default()
        .resyncs
}

/// Waits until the owner counted more than `before` resyncs of `name`.
async fn until_resynced(client: &mut Client, name: &str, before: u64) {
    let started = Instant::now();
    while resyncs(client, name).await <= before {
        assert!(started.elapsed() < DEADLINE, "{name} was not resynced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reconcile jobs of `name` that replica `replica` ran to APPLIED; `None`
/// if it has none of that datastore to count.
async fn jobs_applied(replica: &Replica, name: &str) -> Option<f64> {
    let (_, _, body) = http_get(replica.metrics, "/metrics").await;
    sample(
        &body,
        &format!(r#"netsync_reconcile_jobs_total{{datastore="{name}",outcome="applied"}}"#),
    )
}

/// Waits for the owner's job to send a Set (a Revert event APPLYING).
async fn applying(events: &mut tonic::Streaming<pb::SyncEvent>) {
    loop {
        let event = client::next_event(events).await;
        if let Some(pb::sync_event::Event::Revert(r)) = event.event
            && r.phase == pb::RevertPhase::Applying as i32
        {
            return;
        }
    }
}

fn set_request(name: &str, intent: Option<pb::Intent>) -> pb::SetIntentRequest {
    pb::SetIntentRequest {
        datastore: name.into(),
        intent,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_set_on_a_replica_that_does_not_sync_it_is_applied_by_the_owner_alone() {
    let Some((_db, sim, replicas, owners)) = three(6).await else {
        return;
    };
    let (name, owner_id, writer_id, third_id) = roles(&owners);
    let mut owner = client_of(&replicas, &owner_id);
    let mut writer = client_of(&replicas, &writer_id);
    let mut third = client_of(&replicas, &third_id);
    let uid = client::uid(&mut owner, &name).await;

    // Unkind first: every refusal on a replica that does not sync it is the
    // owner's, word for word.
    let bad_path = intent("x", 0, &[("/system/a[b", "v")], &[]);
    let refused: Vec<(pb::SetIntentRequest, Code, &str)> = vec![
        (set_request(&name, None), Code::InvalidArgument, "intent"),
        (
            set_request(&name, Some(bad_path.clone())),
            Code::InvalidArgument,
            "intent.updates[0].path",
        ),
        (
            pb::SetIntentRequest {
                validate_only: true,
                ..set_request(&name, Some(bad_path))
            },
            Code::InvalidArgument,
            "intent.updates[0].path",
        ),
        (
            pb::SetIntentRequest {
                expected_uid: "0000-not-its-uid".into(),
                ..set_request(&name, Some(intent("x", 0, &[(MOTD, "v")], &[])))
            },
            Code::FailedPrecondition,
            &uid,
        ),
        (
            set_request(
                "no-such-datastore",
                Some(intent("x", 0, &[(MOTD, "v")], &[])),
            ),
            Code::NotFound,
            "no-such-datastore",
        ),
    ];
    for (request, code, word) in refused {
        let here = owner.set_intent(request.clone()).await.unwrap_err();
        let there = writer.set_intent(request.clone()).await.unwrap_err();
        assert_status(&there, code, &[word]);
        assert_eq!(
            (there.code(), there.message()),
            (here.code(), here.message()),
            "{request:?}"
        );
    }
    for (intent_name, code) in [("", Code::InvalidArgument), ("none", Code::NotFound)] {
        let here = client::delete_intent(&mut owner, &name, intent_name)
            .await
            .unwrap_err();
        let there = client::delete_intent(&mut writer, &name, intent_name)
            .await
            .unwrap_err();
        assert_eq!(there.code(), code, "{there:?}");
        assert_eq!(there.message(), here.message());
    }
    assert!(
        !sim.leaves().await.contains_key(MOTD),
        "nothing was written"
    );

    // validate_only plans on the writer as on the owner, from the database.
    let remote = intent(
        "remote",
        10,
        &[(MOTD, "hello"), (BANNER, "hi"), (EXTRA, "e")],
        &[],
    );
    let plan_here = client::plan_intent(&mut owner, &name, remote.clone())
        .await
        .unwrap();
    let plan_there = client::plan_intent(&mut writer, &name, remote.clone())
        .await
        .unwrap();
    assert!(plan_there.plan.as_ref().unwrap().set.is_some());
    assert_eq!(plan_there, plan_here);

    // An intent written on the owner itself is not picked up again.
    set_intent(&mut owner, &name, intent("local", 20, &[(LOCAL, "x")], &[])).await;
    until_applied(&mut owner, &name, "local").await;

    // Written through a replica that does not sync it: the owner's answer,
    // the device holds it, the owner shows it APPLIED, and only the owner
    // ran a job for it.
    let revision = client::status(&mut owner, &name).await.revision;
    let mut events = client::watch(&mut owner, &name, 0).await;
    let started = Instant::now();
    let written = set_intent(&mut writer, &name, remote.clone()).await;
    let replied = started.elapsed();
    applying(&mut events).await;
    eprintln!(
        "SetIntent on a replica that does not sync it: answered in {replied:?}, the owner's \
         job sending its Set {:?} after the call",
        started.elapsed()
    );
    assert_eq!(
        written.status.as_ref().unwrap().state,
        pb::IntentState::Pending as i32
    );
    assert_eq!(written.revision, revision, "the newest revision committed");
    until_device(&sim, MOTD, Some("hello")).await;
    until_device(&sim, BANNER, Some("hi")).await;
    until_device(&sim, EXTRA, Some("e")).await;
    let applied = until_applied(&mut owner, &name, "remote").await;
    assert_eq!(applied.updates, written.updates);
    for replica in &replicas {
        let jobs = jobs_applied(replica, &name).await;
        if replica.id == owner_id {
            assert!(jobs >= Some(1.0), "the owner ran no job: {jobs:?}");
        } else {
            assert_eq!(jobs, None, "{} ran a job of {name}", replica.id);
        }
    }
    let owner_replica = replicas.iter().find(|r| r.id == owner_id).unwrap();
    let picked: Vec<String> = owner_replica
        .server
        .logs()
        .iter()
        .filter(|line| {
            line.to_string()
                .contains("intent written on another replica picked up")
        })
        .filter_map(|line| Some(line.get("intent")?.as_str()?.to_string()))
        .collect();
    assert!(picked.contains(&"remote".to_string()), "{picked:?}");
    assert!(!picked.contains(&"local".to_string()), "{picked:?}");

    // Written again through the third with only the motd: the leaves it no
    // longer sets leave the device (the writer read the version it replaces
    // in its transaction); the owner's own intent stays.
    set_intent(
        &mut third,
        &name,
        intent("remote", 10, &[(MOTD, "again")], &[]),
    )
    .await;
    until_device(&sim, MOTD, Some("again")).await;
    until_device(&sim, EXTRA, None).await;
    until_device(&sim, BANNER, None).await;
    until_device(&sim, LOCAL, Some("x")).await;

    // Deleted through the third: its leaves leave the device.
    client::delete_intent(&mut third, &name, "remote")
        .await
        .unwrap();
    until_device(&sim, MOTD, None).await;
    let started = Instant::now();
    loop {
        let gone = owner
            .get_intent(pb::GetIntentRequest {
                datastore: name.clone(),
                name: "remote".into(),
            })
            .await;
        if gone.as_ref().is_err_and(|s| s.code() == Code::NotFound) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "{gone:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A Resync through a replica that does not sync it: the owner resyncs.
    let before = resyncs(&mut owner, &name).await;
    writer
        .resync(pb::ResyncRequest { name: name.clone() })
        .await
        .unwrap();
    until_resynced(&mut owner, &name, before).await;

    for replica in replicas {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_whose_owner_is_killed_before_it_could_apply_it_is_applied_by_the_next() {
    let Some((db, sim, mut replicas, owners)) = three(6).await else {
        return;
    };
    let (name, owner_id, writer_id, _) = roles(&owners);
    let mut writer = client_of(&replicas, &writer_id);

    // The owner tries (the device refuses its Sets) and is killed.
    sim.set_faults(failing_sets(Code::Unavailable)).await;
    let sets = sim.sets_received().await;
    set_intent(
        &mut writer,
        &name,
        intent("remote", 10, &[(MOTD, "hello")], &[]),
    )
    .await;
    let started = Instant::now();
    while sim.sets_received().await == sets {
        assert!(started.elapsed() < DEADLINE, "the owner never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = replicas.iter().position(|r| r.id == owner_id).unwrap();
    replicas.remove(at).server.kill_hard();
    sim.clear_faults().await;

    let names: Vec<String> = owners.keys().cloned().collect();
    let (after, _) = {
        let mut live: Vec<&mut Replica> = replicas.iter_mut().collect();
        settled(&db, &mut live, &names).await
    };
    let mut next = client_of(&replicas, &after[&name]);
    until_device(&sim, MOTD, Some("hello")).await;
    until_applied(&mut next, &name, "remote").await;
    for replica in replicas {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_notification_is_lost_are_picked_up_by_the_owner_all_the_same() {
    let Some((db, sim, replicas, owners)) = three(6).await else {
        return;
    };
    let (name, owner_id, writer_id, _) = roles(&owners);
    let mut owner = client_of(&replicas, &owner_id);
    let mut writer = client_of(&replicas, &writer_id);

    // The listening sessions die (each replica listens again and looks at
    // everything it syncs); a write meanwhile is applied.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%' AND datname = current_database()",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(!terminated.is_empty(), "no listening session");
    set_intent(
        &mut writer,
        &name,
        intent("during", 10, &[(MOTD, "during")], &[]),
    )
    .await;
    until_device(&sim, MOTD, Some("during")).await;

    // A write that was never notified (what a write on another replica
    // leaves in the database, without NOTIFY): the backstop finds it.
    let body = intent("quiet", 5, &[(BANNER, "quiet")], &[]).encode_to_vec();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO handoffs (datastore, intents) VALUES ($1, 1) \
         ON CONFLICT (datastore) DO UPDATE SET intents = handoffs.intents + 1",
    )
    .bind(&name)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO intents (datastore, name, body) VALUES ($1, 'quiet', $2)")
        .bind(&name)
        .bind(body)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO reconcile_jobs (datastore, running, not_before_us, apply, withdrawn) \
         VALUES ($1, false, 0, '[\"quiet\"]', '[]') \
         ON CONFLICT (datastore, running) DO UPDATE SET apply = excluded.apply",
    )
    .bind(&name)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    until_device(&sim, BANNER, Some("quiet")).await;
    until_applied(&mut owner, &name, "quiet").await;
    let owner_replica = replicas.iter().find(|r| r.id == owner_id).unwrap();
    let by: Vec<String> = owner_replica
        .server
        .logs()
        .iter()
        .filter(|line| {
            line.to_string()
                .contains("made on other replicas picked up")
        })
        .filter_map(|line| Some(line.get("by")?.as_str()?.to_string()))
        .collect();
    assert!(by.contains(&"backstop".to_string()), "{by:?}");

    // A Resync asked with no notification: done by the owner all the same,
    // once.
    let before = resyncs(&mut owner, &name).await;
    sqlx::query(
        "INSERT INTO handoffs (datastore, resyncs) VALUES ($1, 1) \
         ON CONFLICT (datastore) DO UPDATE SET resyncs = handoffs.resyncs + 1",
    )
    .bind(&name)
    .execute(&db)
    .await
    .unwrap();
    until_resynced(&mut owner, &name, before).await;
    let (asked, done): (i64, i64) =
        sqlx::query_as("SELECT resyncs, resyncs_done FROM handoffs WHERE datastore = $1")
            .bind(&name)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(asked, done, "the owner records what it did");

    for replica in replicas {
        assert!(replica.server.terminate().success());
    }
}
