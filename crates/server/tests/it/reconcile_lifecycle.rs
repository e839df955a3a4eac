//! The life cycle of a reconcile job against netsync-sim: drift that arrives
//! with the echo of netsync's own Set is reverted by the same job at once;
//! intent writes answer while the device holds a Set; a device that changes
//! its leaf back after every Set ends with a FAILING intent after a bounded
//! number of Sets, auto-revert paused until the intent is written again or
//! the datastore resynced; DeleteIntent converges the store and the engine.
//! All but the last (the store alone) run for a PROTO and a JSON_IETF
//! datastore, the simulator taking Set values only in its encoding. The last
//! deletes a row with a SQLite connection of its own, so it runs on SQLite
//! whatever `NETSYNC_TEST_DB` says.

use std::time::{Duration, Instant};

use netsync_proto::gnmi;
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::v1 as pb;
use netsync_server::Config;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::{self, delete_intent, get_intent, set_intent, wait_revision};
use netsync_testkit::datastore::{self, DatastoreBuilder, create};
use netsync_testkit::gnmi::{Msg, Sub, list, string, string_of, subscription};
use netsync_testkit::sim::{Sim, failing_sets, generated, held_sets};
use pb::net_sync_client::NetSyncClient;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::reconcile::{both_encodings, strict_sim};
use crate::support::TestServer;

const MOTD: &str = "/system/intent/motd";

/// Jobs that retry fast, with a confirm timeout far longer than any wait of
/// these tests: a job that waited for it would miss their deadlines.
fn config(db: &std::path::Path) -> Config {
    let mut config = crate::support::config(db);
    config.reconcile.backoff_min = Duration::from_millis(50);
    config.reconcile.backoff_max = Duration::from_millis(200);
    config.reconcile.attempt_timeout = Duration::from_secs(90);
    config.reconcile.confirm_timeout = Duration::from_secs(60);
    config
}

/// Starts netsyncd with `config` and the datastore `r1` of `sim` in
/// `encoding` (revert at once), committing every `commit_ms`; waits for its
/// first revision.
async fn start(
    sim: &Sim,
    encoding: pb::Encoding,
    config: Config,
    commit_ms: u64,
) -> (TestServer, NetSyncClient<Channel>) {
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let ds = DatastoreBuilder::new("r1", sim.addr)
        .encoding(encoding)
        .commit_interval_ms(commit_ms)
        .revert(true, 0)
        .build();
    client.create_datastore(create(ds)).await.unwrap();
    wait_revision(&mut client, "r1", 1).await;
    (server, client)
}

/// The reconcile events of `events` up to and including the first in
/// `phase`, within `deadline`.
async fn reverts_until(
    events: &mut Streaming<pb::SyncEvent>,
    phase: pb::RevertPhase,
    deadline: Duration,
) -> Vec<pb::Revert> {
    tokio::time::timeout(deadline, async {
        let mut seen = Vec::new();
        loop {
            let event = events.next().await.unwrap().unwrap();
            if let Some(pb::sync_event::Event::Revert(r)) = event.event {
                let done = r.phase == phase as i32;
                seen.push(r);
                if done {
                    return seen;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {phase:?} event within {deadline:?}"))
}

/// A STREAM ON_CHANGE subscription of `path` on the device itself, past its
/// initial dump: the test sees each change the device makes, netsync's Sets
/// included, as soon as the device makes it.
async fn watch_device(sim: &Sim, path: &str) -> Sub {
    let mut gnmi = sim.gnmi().await;
    let mut sub = Sub::open(
        &mut gnmi,
        list(
            gnmi::subscription_list::Mode::Stream,
            vec![subscription(path, gnmi::SubscriptionMode::OnChange)],
        ),
    )
    .await;
    sub.until_sync().await;
    sub
}

/// The next value the device gives `MOTD`.
async fn next_motd(sub: &mut Sub) -> String {
    loop {
        if let Msg::Notification(n) = sub.next().await
            && let Some(update) = n.update.first()
        {
            return string_of(update.val.as_ref().unwrap()).to_string();
        }
    }
}

both_encodings!(drift_within_the_echo_of_a_set_is_reverted_at_once);
/// The drift of the issue: the device changes the leaf right after it took
/// netsync's revert, inside the same commit window as the Set's echo, so
/// running never shows the Set. The job must see the device's answer in the
/// next revision and set the leaf again at once, not wait out its 60 s
/// confirm timeout.
async fn drift_within_the_echo_of_a_set_is_reverted_at_once(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 100).await;
    let dir = tempfile::tempdir().unwrap();
    // A 2 s commit window: the Set's echo and the drift that follows it
    // within milliseconds are one revision.
    let (server, mut client) = start(&sim, encoding, config(&dir.path().join("n.db")), 2000).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    set_intent(
        &mut client,
        "r1",
        datastore::intent("m", 0, &[(MOTD, "hello")], &[]),
    )
    .await;
    reverts_until(&mut events, pb::RevertPhase::Applied, DEADLINE).await;
    let mut device = watch_device(&sim, MOTD).await;

    sim.set_leaves(vec![(MOTD.into(), string("hacked"))], vec![])
        .await;
    assert_eq!(next_motd(&mut device).await, "hacked");
    // netsync's revert reaches the device; at once, the device changes it.
    let drifted = Instant::now();
    assert_eq!(next_motd(&mut device).await, "hello");
    sim.set_leaves(vec![(MOTD.into(), string("hacked again"))], vec![])
        .await;

    // Far below the 60 s confirm timeout: the same job sets it again.
    let reverts = reverts_until(
        &mut events,
        pb::RevertPhase::Applied,
        Duration::from_secs(30),
    )
    .await;
    let phases: Vec<_> = reverts.iter().map(|r| (r.phase, r.attempt)).collect();
    let applying = pb::RevertPhase::Applying as i32;
    assert!(phases.contains(&(applying, 1)), "{phases:?}");
    assert!(phases.contains(&(applying, 2)), "{phases:?}");
    assert!(
        !phases.contains(&(pb::RevertPhase::Failed as i32, 1)),
        "{phases:?}"
    );
    assert_eq!(reverts.last().unwrap().attempt, 2, "{reverts:?}");
    assert!(drifted.elapsed() < Duration::from_secs(30));
    assert_eq!(sim.leaves().await.get(MOTD).map(string_of), Some("hello"));
    drop((events, device));
    server.stop().await;
    sim.stop().await;
}

both_encodings!(intent_writes_answer_while_the_device_holds_a_set);
/// The device holds every Set for 60 s. SetIntent and DeleteIntent on the
/// datastore answer meanwhile, each far within that time: no intent write
/// waits for the device.
async fn intent_writes_answer_while_the_device_holds_a_set(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, mut client) = start(&sim, encoding, config(&dir.path().join("n.db")), 200).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    sim.set_faults(held_sets(60_000)).await;
    set_intent(
        &mut client,
        "r1",
        datastore::intent("a", 0, &[(MOTD, "a")], &[]),
    )
    .await;
    reverts_until(&mut events, pb::RevertPhase::Applying, DEADLINE).await;

    // The Set is held now. A bound far below the 60 s hold, not a speed
    // figure (the `stall` benchmark measures that, in milliseconds).
    let bound = Duration::from_secs(20);
    let started = Instant::now();
    set_intent(
        &mut client,
        "r1",
        datastore::intent("b", 0, &[("/system/intent/other", "b")], &[]),
    )
    .await;
    let took = started.elapsed();
    assert!(took < bound, "SetIntent took {took:?}");
    let started = Instant::now();
    delete_intent(&mut client, "r1", "a").await.unwrap();
    let took = started.elapsed();
    assert!(took < bound, "DeleteIntent took {took:?}");
    let listed = client
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .intents;
    let names: Vec<_> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    drop(events);
    server.stop().await;
    sim.stop().await;
}

/// Changes `MOTD` on the device to a new value each time the device takes
/// `hello` (netsync's Set), until `stop` fires.
fn fight_back(
    mut device: Sub,
    mut control: simpb::sim_control_client::SimControlClient<Channel>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut fights = 0;
        loop {
            let value = tokio::select! {
                value = next_motd(&mut device) => value,
                _ = &mut stop => return fights,
            };
            if value == "hello" {
                fights += 1;
                control
                    .set_leaves(simpb::SetLeavesRequest {
                        updates: vec![simpb::Leaf {
                            path: MOTD.into(),
                            value: Some(string(format!("hacked {fights}"))),
                        }],
                        deletes: vec![],
                    })
                    .await
                    .unwrap();
            }
        }
    })
}

both_encodings!(a_device_that_fights_back_ends_failing_until_the_intent_is_written_again);
async fn a_device_that_fights_back_ends_failing_until_the_intent_is_written_again(
    encoding: pb::Encoding,
) {
    let sim = strict_sim(encoding, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir.path().join("n.db"));
    config.reconcile.max_failures = 3;
    let (server, mut client) = start(&sim, encoding, config, 200).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let written = set_intent(
        &mut client,
        "r1",
        datastore::intent("m", 0, &[(MOTD, "hello")], &[]),
    )
    .await;
    let status = written.status.unwrap();
    assert_eq!(status.state, pb::IntentState::Pending as i32, "{status:?}");
    reverts_until(&mut events, pb::RevertPhase::Applied, DEADLINE).await;
    let status = get_intent(&mut client, "r1", "m").await.status.unwrap();
    assert_eq!(status.state, pb::IntentState::Applied as i32, "{status:?}");
    assert!(status.applied_revision > 1, "{status:?}");

    // From now on, the device puts its own value back after every Set.
    let sets_before = sim.counters().await.sets_received;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let fighter = fight_back(watch_device(&sim, MOTD).await, sim.control().await, stopped);
    sim.set_leaves(vec![(MOTD.into(), string("hacked 0"))], vec![])
        .await;
    let reverts = reverts_until(&mut events, pb::RevertPhase::Failed, DEADLINE).await;
    let failed = reverts.last().unwrap();
    assert!(failed.error.contains("\"m\" is failing"), "{failed:?}");
    assert_eq!(failed.updates.len(), 1, "{failed:?}");
    assert_eq!(failed.updates[0].path, MOTD);
    let status = get_intent(&mut client, "r1", "m").await.status.unwrap();
    assert_eq!(status.state, pb::IntentState::Failing as i32, "{status:?}");
    assert!(status.last_error.contains("did not stick"), "{status:?}");
    stop.send(()).unwrap();
    let fights = fighter.await.unwrap();
    // Every Set that did not stick counts, the first apply's included: with
    // max_failures 3, the drift is reverted twice, then the third failure
    // finds the intent FAILING.
    let sets = sim.counters().await.sets_received - sets_before;
    assert_eq!(sets, 2, "{sets} Sets, {fights} fought back");
    assert_eq!(status.attempts, 1 + sets as u32, "{status:?}");

    // Auto-revert is paused for its leaf: a job for another intent leaves
    // it alone, and the drift stays reported.
    set_intent(
        &mut client,
        "r1",
        datastore::intent("other", 0, &[("/system/intent/other", "x")], &[]),
    )
    .await;
    let reverts = reverts_until(&mut events, pb::RevertPhase::Applied, DEADLINE).await;
    for revert in &reverts {
        let paths: Vec<_> = revert.updates.iter().map(|l| l.path.as_str()).collect();
        assert!(!paths.contains(&MOTD), "{revert:?}");
    }
    assert!(
        sim.leaves()
            .await
            .get(MOTD)
            .map(string_of)
            .is_some_and(|v| v.starts_with("hacked")),
    );
    let deviating: Vec<_> = client::deviations(&mut client, "r1")
        .await
        .into_iter()
        .map(|d| d.path)
        .collect();
    assert_eq!(deviating, [MOTD]);
    let status = get_intent(&mut client, "r1", "m").await.status.unwrap();
    assert_eq!(status.state, pb::IntentState::Failing as i32, "{status:?}");

    // Writing the intent again resumes it.
    let written = set_intent(
        &mut client,
        "r1",
        datastore::intent("m", 0, &[(MOTD, "hello")], &[]),
    )
    .await;
    assert_eq!(
        written.status.unwrap().state,
        pb::IntentState::Pending as i32
    );
    let reverts = reverts_until(&mut events, pb::RevertPhase::Applied, DEADLINE).await;
    assert!(
        reverts
            .iter()
            .any(|r| r.updates.iter().any(|l| l.path == MOTD)),
        "{reverts:?}"
    );
    assert_eq!(sim.leaves().await.get(MOTD).map(string_of), Some("hello"));
    let status = get_intent(&mut client, "r1", "m").await.status.unwrap();
    assert_eq!(status.state, pb::IntentState::Applied as i32, "{status:?}");
    assert_eq!(status.attempts, 1, "{status:?}");
    assert!(status.last_error.is_empty(), "{status:?}");
    drop(events);
    server.stop().await;
    sim.stop().await;
}

both_encodings!(a_resync_resumes_a_failing_intent);
/// A refused Set counts as one that did not stick: with `max_failures` 1,
/// the intent is FAILING after one refusal. A Resync resumes it.
async fn a_resync_resumes_a_failing_intent(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir.path().join("n.db"));
    config.reconcile.max_failures = 1;
    let (server, mut client) = start(&sim, encoding, config, 200).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    sim.set_faults(failing_sets(tonic::Code::InvalidArgument))
        .await;
    set_intent(
        &mut client,
        "r1",
        datastore::intent("m", 0, &[(MOTD, "hello")], &[]),
    )
    .await;
    let failed = reverts_until(&mut events, pb::RevertPhase::Failed, DEADLINE).await;
    assert!(
        failed.last().unwrap().error.contains("InvalidArgument"),
        "{failed:?}"
    );
    let status = get_intent(&mut client, "r1", "m").await.status.unwrap();
    assert_eq!(status.state, pb::IntentState::Failing as i32, "{status:?}");
    assert_eq!(status.attempts, 1, "{status:?}");
    assert!(status.last_error.contains("Set refused"), "{status:?}");

    sim.clear_faults().await;
    client
        .resync(pb::ResyncRequest { name: "r1".into() })
        .await
        .unwrap();
    let reverts = reverts_until(&mut events, pb::RevertPhase::Applied, DEADLINE).await;
    assert!(
        reverts
            .iter()
            .any(|r| r.updates.iter().any(|l| l.path == MOTD)),
        "{reverts:?}"
    );
    assert_eq!(sim.leaves().await.get(MOTD).map(string_of), Some("hello"));
    let status = get_intent(&mut client, "r1", "m").await.status.unwrap();
    assert_eq!(status.state, pb::IntentState::Applied as i32, "{status:?}");
    drop(events);
    server.stop().await;
    sim.stop().await;
}

/// An intent that is in the engine but no longer in the store (or the other
/// way round) is deleted from both; a second delete is NOT_FOUND (AIP-135).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_intent_converges_the_store_and_the_engine() {
    let sim = Sim::start(generated(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    let (server, mut client) = start(
        &sim,
        pb::Encoding::Proto,
        crate::support::on_sqlite(config(&db), &db),
        200,
    )
    .await;
    set_intent(
        &mut client,
        "r1",
        datastore::intent("a", 0, &[(MOTD, "a")], &[]),
    )
    .await;
    set_intent(
        &mut client,
        "r1",
        datastore::intent("b", 0, &[("/system/intent/b", "b")], &[]),
    )
    .await;
    // Behind netsyncd's back: `a` leaves the store only, `b` stays in both.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM intents WHERE name = 'a'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    delete_intent(&mut client, "r1", "a").await.unwrap();
    let err = get_intent_err(&mut client, "a").await;
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = delete_intent(&mut client, "r1", "a").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("\"a\""), "{err:?}");
    delete_intent(&mut client, "r1", "b").await.unwrap();
    let err = delete_intent(&mut client, "r1", "b").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // After a restart, neither comes back.
    drop(client);
    server.stop().await;
    let server = TestServer::start_with(crate::support::on_sqlite(config(&db), &db)).await;
    let mut client = server.client().await;
    let listed = client
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .intents;
    assert!(listed.is_empty(), "{listed:?}");
    drop(client);
    server.stop().await;
    sim.stop().await;
}

async fn get_intent_err(client: &mut NetSyncClient<Channel>, name: &str) -> tonic::Status {
    client
        .get_intent(pb::GetIntentRequest {
            datastore: "r1".into(),
            name: name.into(),
        })
        .await
        .unwrap_err()
}
