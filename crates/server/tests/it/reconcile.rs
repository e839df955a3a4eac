//! Reconcile jobs against netsync-sim: apply on SetIntent, drift reverted,
//! non-revertive drift reported, DeleteIntent, priority conflicts, failing
//! Sets retried then FAILED, a job resumed after a restart, and the seed
//! failure in full: a stalled revert never holds up the sync. Each runs for a
//! PROTO and a JSON_IETF datastore ([`both_encodings`]), the simulator taking
//! Set values only in the datastore's encoding.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;
use netsync_server::Config;
use netsync_sim::SimConfig;
use netsync_testkit::LONG_DEADLINE as DEADLINE;
use netsync_testkit::client::{self, set_intent, wait_revision};
use netsync_testkit::datastore::{self, DatastoreBuilder, create};
use netsync_testkit::gnmi::string;
use netsync_testkit::sim::{Sim, failing_sets, generated, held_sets};
use pb::net_sync_client::NetSyncClient;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::support::TestServer;

/// Runs the async fn `$case(encoding: pb::Encoding)` as two tests,
/// `$case::proto` and `$case::json_ietf`: the datastore's encoding decides
/// how running holds values and how Sets are sent.
macro_rules! both_encodings {
    ($case:ident) => {
        mod $case {
            use netsync_proto::netsync::v1::Encoding;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn proto() {
                super::$case(Encoding::Proto).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn json_ietf() {
                super::$case(Encoding::JsonIetf).await;
            }
        }
    };
}
pub(crate) use both_encodings;

/// A generated device of `leaves` leaves that takes Set values only in the
/// encoding of a datastore of `encoding`, as a device that speaks one does.
pub(crate) async fn strict_sim(encoding: pb::Encoding, leaves: usize) -> Sim {
    let device = match encoding {
        pb::Encoding::Json => gnmi::Encoding::Json,
        pb::Encoding::Proto => gnmi::Encoding::Proto,
        pb::Encoding::Ascii => gnmi::Encoding::Ascii,
        // Unspecified is the API default, JSON_IETF.
        pb::Encoding::JsonIetf | pb::Encoding::Unspecified => gnmi::Encoding::JsonIetf,
    };
    Sim::start(SimConfig {
        set_encoding: Some(device),
        ..generated(leaves)
    })
    .await
}

fn config(db: &std::path::Path) -> Config {
    let mut config = crate::support::config(db);
    config.reconcile.backoff_min = Duration::from_millis(50);
    config.reconcile.backoff_max = Duration::from_millis(200);
    config.reconcile.max_attempts = 3;
    config.reconcile.attempt_timeout = Duration::from_secs(90);
    config
}

/// The datastore `r1` of `sim` in `encoding`, committing every 200 ms,
/// reverting drift at once if `revert`.
fn datastore(sim: &Sim, encoding: pb::Encoding, revert: bool) -> pb::Datastore {
    DatastoreBuilder::new("r1", sim.addr)
        .encoding(encoding)
        .commit_interval_ms(200)
        .revert(revert, 0)
        .build()
}

/// An intent, revertive unless `non_revertive`.
fn intent(
    name: &str,
    priority: i32,
    updates: &[(&str, &str)],
    deletes: &[&str],
    non_revertive: bool,
) -> pb::Intent {
    pb::Intent {
        non_revertive,
        ..datastore::intent(name, priority, updates, deletes)
    }
}

/// The next reconcile event in `phase`, skipping everything else.
async fn next_revert(events: &mut Streaming<pb::SyncEvent>, phase: pb::RevertPhase) -> pb::Revert {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.next().await.unwrap().unwrap();
            if let Some(pb::sync_event::Event::Revert(r)) = event.event
                && r.phase == phase as i32
            {
                return r;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {phase:?} event"))
}

async fn device_leaf(sim: &Sim, path: &str) -> Option<gnmi::TypedValue> {
    sim.leaves().await.remove(path)
}

/// The deviations as path -> intent.
async fn deviations(client: &mut NetSyncClient<Channel>) -> BTreeMap<String, String> {
    client::deviations(client, "r1")
        .await
        .into_iter()
        .map(|d| (d.path, d.intent))
        .collect()
}

async fn start(
    sim: &Sim,
    encoding: pb::Encoding,
    revert: bool,
) -> (tempfile::TempDir, TestServer, NetSyncClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(&dir.path().join("n.db"))).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore(sim, encoding, revert)))
        .await
        .unwrap();
    wait_revision(&mut client, "r1", 1).await;
    (dir, server, client)
}

both_encodings!(apply_revert_priority_and_delete);
async fn apply_revert_priority_and_delete(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 200).await;
    let (_dir, server, mut client) = start(&sim, encoding, true).await;
    let mut events = client::watch(&mut client, "r1", 0).await;

    // Apply: SetIntent brings the device to the intent.
    set_intent(
        &mut client,
        "r1",
        intent(
            "base",
            10,
            &[
                ("/system/intent/motd", "hello"),
                ("/system/intent/shared", "base"),
            ],
            &[],
            false,
        ),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Queued).await;
    let applying = next_revert(&mut events, pb::RevertPhase::Applying).await;
    assert_eq!(applying.attempt, 1);
    assert_eq!(applying.updates.len(), 2);
    next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(
        device_leaf(&sim, "/system/intent/motd").await,
        Some(string("hello"))
    );
    assert!(deviations(&mut client).await.is_empty());

    // Drift on the device is reverted.
    sim.set_leaves(
        vec![("/system/intent/motd".into(), string("hacked"))],
        vec![],
    )
    .await;
    let revert = next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(revert.updates[0].path, "/system/intent/motd");
    assert_eq!(
        device_leaf(&sim, "/system/intent/motd").await,
        Some(string("hello"))
    );

    // Priority: the lower number wins where intents overlap.
    set_intent(
        &mut client,
        "r1",
        intent(
            "override",
            1,
            &[("/system/intent/shared", "override")],
            &[],
            false,
        ),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(
        device_leaf(&sim, "/system/intent/shared").await,
        Some(string("override"))
    );

    // Deleting the winner applies the next intent's value; deleting the last
    // removes the leaf from the device.
    client
        .delete_intent(pb::DeleteIntentRequest {
            datastore: "r1".into(),
            name: "override".into(),
        })
        .await
        .unwrap();
    next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(
        device_leaf(&sim, "/system/intent/shared").await,
        Some(string("base"))
    );
    client
        .delete_intent(pb::DeleteIntentRequest {
            datastore: "r1".into(),
            name: "base".into(),
        })
        .await
        .unwrap();
    let removed = next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(removed.deletes.len(), 2, "{removed:?}");
    assert_eq!(device_leaf(&sim, "/system/intent/motd").await, None);
    assert_eq!(device_leaf(&sim, "/system/intent/shared").await, None);
    drop(events);
    server.stop().await;
    sim.stop().await;
}

both_encodings!(a_rewrite_withdraws_the_leaves_it_drops);
/// Writing an intent again without some of its leaves takes them off the
/// device, as deleting it would, except where another intent provides them.
async fn a_rewrite_withdraws_the_leaves_it_drops(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 100).await;
    let (_dir, server, mut client) = start(&sim, encoding, true).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    let (only, shared, new) = (
        "/system/intent/only",
        "/system/intent/shared",
        "/system/intent/new",
    );
    set_intent(
        &mut client,
        "r1",
        intent("base", 10, &[(only, "base"), (shared, "base")], &[], false),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applied).await;
    // A lower-ranked intent also sets `shared`: base wins it for now.
    set_intent(
        &mut client,
        "r1",
        intent("fallback", 20, &[(shared, "fallback")], &[], false),
    )
    .await;
    assert_eq!(device_leaf(&sim, shared).await, Some(string("base")));

    set_intent(
        &mut client,
        "r1",
        intent("base", 10, &[(new, "base")], &[], false),
    )
    .await;
    let applied = next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(applied.deletes, [only], "{applied:?}");
    let device = sim.leaves().await;
    assert_eq!(device.get(only), None, "dropped, and nobody provides it");
    assert_eq!(device.get(shared), Some(&string("fallback")));
    assert_eq!(device.get(new), Some(&string("base")));
    assert!(deviations(&mut client).await.is_empty());
    drop(events);
    server.stop().await;
    sim.stop().await;
}

both_encodings!(non_revertive_drift_is_reported_not_reverted);
async fn non_revertive_drift_is_reported_not_reverted(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 200).await;
    let (_dir, server, mut client) = start(&sim, encoding, true).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    set_intent(
        &mut client,
        "r1",
        intent("soft", 5, &[("/system/intent/soft", "v1")], &[], true),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(
        device_leaf(&sim, "/system/intent/soft").await,
        Some(string("v1")),
        "applied on SetIntent"
    );
    set_intent(
        &mut client,
        "r1",
        intent("hard", 5, &[("/system/intent/hard", "h")], &[], false),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applied).await;

    // Both drift; only the revertive one is put back.
    sim.set_leaves(
        vec![
            ("/system/intent/soft".into(), string("x")),
            ("/system/intent/hard".into(), string("x")),
        ],
        vec![],
    )
    .await;
    let revert = next_revert(&mut events, pb::RevertPhase::Applied).await;
    let paths: Vec<_> = revert.updates.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(paths, ["/system/intent/hard"]);
    assert_eq!(
        device_leaf(&sim, "/system/intent/soft").await,
        Some(string("x"))
    );
    let deviations = deviations(&mut client).await;
    assert_eq!(
        deviations.get("/system/intent/soft").map(String::as_str),
        Some("soft")
    );
    drop(events);
    server.stop().await;
    sim.stop().await;
}

both_encodings!(failing_sets_are_retried_then_failed);
async fn failing_sets_are_retried_then_failed(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 100).await;
    let (_dir, server, mut client) = start(&sim, encoding, false).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    // Transient: retried with backoff, then FAILED after the last attempt.
    sim.set_faults(failing_sets(tonic::Code::Unavailable)).await;
    set_intent(
        &mut client,
        "r1",
        intent("a", 0, &[("/system/intent/a", "1")], &[], false),
    )
    .await;
    let failed = next_revert(&mut events, pb::RevertPhase::Failed).await;
    assert_eq!(failed.attempt, 3);
    assert!(failed.error.contains("3 attempts"), "{}", failed.error);
    // Permanent: FAILED at once.
    sim.set_faults(failing_sets(tonic::Code::InvalidArgument))
        .await;
    set_intent(
        &mut client,
        "r1",
        intent("b", 0, &[("/system/intent/b", "1")], &[], false),
    )
    .await;
    let failed = next_revert(&mut events, pb::RevertPhase::Failed).await;
    assert_eq!(failed.attempt, 1);
    assert!(failed.error.contains("InvalidArgument"), "{}", failed.error);
    // Once the device takes Sets again, a job applies its intent; with revert
    // off, the failed intents stay reported as deviations until set again.
    sim.clear_faults().await;
    set_intent(
        &mut client,
        "r1",
        intent("c", 0, &[("/system/intent/c", "1")], &[], false),
    )
    .await;
    let applied = next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(applied.updates.len(), 1);
    let left: Vec<_> = deviations(&mut client).await.into_values().collect();
    assert_eq!(left, ["a", "b"]);
    set_intent(
        &mut client,
        "r1",
        intent("a", 0, &[("/system/intent/a", "1")], &[], false),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(
        device_leaf(&sim, "/system/intent/a").await,
        Some(string("1"))
    );
    drop(events);
    server.stop().await;
    sim.stop().await;
}

both_encodings!(a_job_interrupted_by_a_restart_runs_after_it);
async fn a_job_interrupted_by_a_restart_runs_after_it(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    let server = TestServer::start_with(config(&db)).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore(&sim, encoding, false)))
        .await
        .unwrap();
    sim.set_faults(failing_sets(tonic::Code::Unavailable)).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    set_intent(
        &mut client,
        "r1",
        intent("a", 0, &[("/system/intent/a", "1")], &[], false),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applying).await;
    drop((events, client));
    server.stop().await;

    sim.clear_faults().await;
    let server = TestServer::start_with(config(&db)).await;
    let deadline = Instant::now() + DEADLINE;
    while device_leaf(&sim, "/system/intent/a").await != Some(string("1")) {
        assert!(Instant::now() < deadline, "the interrupted job never ran");
        let mut client = server.client().await;
        let mut events = client::watch(&mut client, "r1", 0).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            next_revert(&mut events, pb::RevertPhase::Applied),
        )
        .await;
    }
    server.stop().await;
    sim.stop().await;
}

both_encodings!(a_stalled_revert_never_holds_up_the_sync);
/// The seed failure in full: the device answers Set only after 60 s. A drift
/// starts a revert that stalls; meanwhile 2,000 more changes arrive, and
/// running shows every one on time; then the revert completes.
async fn a_stalled_revert_never_holds_up_the_sync(encoding: pb::Encoding) {
    let sim = strict_sim(encoding, 500).await;
    let (_dir, server, mut client) = start(&sim, encoding, true).await;
    let mut events = client::watch(&mut client, "r1", 0).await;
    set_intent(
        &mut client,
        "r1",
        intent("base", 0, &[("/system/intent/pw", "secret")], &[], false),
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applied).await;

    sim.set_faults(held_sets(60_000)).await;
    sim.set_leaves(
        vec![("/system/intent/pw".into(), string("drifted"))],
        vec![],
    )
    .await;
    next_revert(&mut events, pb::RevertPhase::Applying).await;

    // While the revert's Set hangs, the device changes 2,000 times.
    let burst: Vec<(String, gnmi::TypedValue)> = (0..2000)
        .map(|i| {
            (
                format!("/system/churn/leaf-{i:04}"),
                string(format!("v{i}")),
            )
        })
        .collect();
    let sent = Instant::now();
    sim.set_leaves(burst.clone(), vec![]).await;
    let mut revision = 0;
    loop {
        let mut request = tonic::Request::new(pb::GetRunningRequest {
            datastore: "r1".into(),
            path: "/system/churn".into(),
            min_revision: revision + 1,
            with_owner: false,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(5));
        let mut stream = client.get_running(request).await.unwrap().into_inner();
        let mut count = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.unwrap();
            revision = batch.revision;
            count += batch.leaves.len();
        }
        if count == burst.len() {
            break;
        }
    }
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(200) + Duration::from_secs(2),
        "the burst took {took:?}"
    );
    let st = client
        .get_datastore(pb::GetDatastoreRequest { name: "r1".into() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.stats.unwrap().dropped, 0);
    assert_eq!(
        device_leaf(&sim, "/system/intent/pw").await,
        Some(string("drifted")),
        "the revert is still stalled"
    );

    // Then the revert completes.
    let applied = next_revert(&mut events, pb::RevertPhase::Applied).await;
    assert_eq!(applied.updates[0].path, "/system/intent/pw");
    assert_eq!(
        device_leaf(&sim, "/system/intent/pw").await,
        Some(string("secret"))
    );
    drop(events);
    server.stop().await;
    sim.stop().await;
}
