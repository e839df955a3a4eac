//! The client library's fleet reflector (netsync-client) against netsyncd and
//! churning simulators: through a netsyncd restart (resumed with its token,
//! no datastore read again), datastores created and deleted, and a change
//! log compacted past a stalled reader (rebased: read again at a revision
//! netsyncd names), every copy ends equal to running at its revision.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use netsync_client::{FleetEvent, FleetReflector};
use netsync_proto::netsync::v1 as pb;
use netsync_server::log::Retention;
use netsync_testkit::client::{Client, converge, running_at, wait_revision};
use netsync_testkit::datastore::DatastoreBuilder;
use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::within;

use crate::support::{self, TestServer};

/// Everything a fleet reflector reported, in order.
#[derive(Debug, Default)]
struct Seen {
    /// (datastore, reason) of each Listed.
    listed: Vec<(String, String)>,
    /// (datastore, reason) of each Left.
    left: Vec<(String, String)>,
    /// Whether each cut resumed with a token.
    cuts: Vec<bool>,
}

impl Seen {
    async fn next(&mut self, reflector: &mut FleetReflector) {
        let event = within(reflector.next())
            .await
            .unwrap_or_else(|e| panic!("the fleet reflector gave up: {e}"));
        match event {
            FleetEvent::Listed {
                datastore, reason, ..
            } => self.listed.push((datastore, reason)),
            FleetEvent::Left { datastore, reason } => self.left.push((datastore, reason)),
            FleetEvent::Cut { resumes, .. } => self.cuts.push(resumes),
            FleetEvent::Applied { .. } | FleetEvent::StateChanged { .. } => {}
        }
    }

    /// Reads events until `done` holds.
    async fn until(
        &mut self,
        reflector: &mut FleetReflector,
        done: impl Fn(&FleetReflector, &Seen) -> bool,
    ) {
        within(async {
            while !done(reflector, self) {
                self.next(reflector).await;
            }
        })
        .await;
    }
}

async fn add(addr: SocketAddr, name: &str, sim: &Sim, env: &str) {
    let mut client = Client::new(netsync_testkit::channel(addr).await);
    client
        .create_datastore(
            DatastoreBuilder::new(name, sim.addr)
                .encoding(pb::Encoding::Proto)
                .commit_interval_ms(20)
                .label("env", env)
                .create(),
        )
        .await
        .unwrap();
}

/// The revision of `name`'s copy (0 if not followed).
fn at(reflector: &FleetReflector, name: &str) -> u64 {
    reflector.running(name).map_or(0, |(revision, _)| revision)
}

/// Stops the churn, brings every copy to the revision running settles at,
/// and compares each with running read at that revision.
async fn assert_copies_equal_running(
    addr: SocketAddr,
    sims: &[(&str, &Sim)],
    reflector: &mut FleetReflector,
    seen: &mut Seen,
) {
    let mut client = Client::new(netsync_testkit::channel(addr).await);
    let mut settled = BTreeMap::new();
    for (name, sim) in sims {
        sim.stop_churn().await;
        settled.insert(name.to_string(), converge(&mut client, name, *sim).await);
    }
    seen.until(reflector, |r, _| {
        settled
            .iter()
            .all(|(name, revision)| at(r, name) >= *revision)
    })
    .await;
    assert_eq!(
        reflector.datastores().keys().collect::<Vec<_>>(),
        settled.keys().collect::<Vec<_>>()
    );
    for (name, revision) in reflector.datastores() {
        let running = running_at(&mut client, &name, revision).await;
        let (_, leaves) = reflector.running(&name).unwrap();
        assert_eq!(leaves, &running.leaves, "{name} at {revision}; {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reflector_follows_its_selector_through_a_restart_and_ends_equal_to_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let server = TestServer::start(&db).await;
    let addr = server.addr;
    let (a, b) = (
        Sim::start(generated(50)).await,
        Sim::start(generated(50)).await,
    );
    add(addr, "r1", &a, "lab").await;
    add(addr, "r2", &b, "lab").await;
    add(addr, "r3", &a, "prod").await;
    a.start_churn(100.0).await;
    b.start_churn(100.0).await;
    let mut reflector = netsync_client::connect(&addr.to_string(), None)
        .await
        .unwrap()
        .fleet_reflector("env=lab");
    let mut seen = Seen::default();
    seen.until(&mut reflector, |r, _| at(r, "r1") >= 5 && at(r, "r2") >= 5)
        .await;
    assert_eq!(reflector.datastores().len(), 2, "{seen:?}");

    // Stopped and started again on its database and port: resumed with the
    // token, nothing read again.
    let stopping = server.begin_stop();
    seen.until(&mut reflector, |_, s| !s.cuts.is_empty()).await;
    within(stopping).await.unwrap().unwrap();
    let before = (at(&reflector, "r1"), at(&reflector, "r2"));
    let server = TestServer::start_at(support::config(&db), addr).await;
    seen.until(&mut reflector, |r, _| {
        at(r, "r1") >= before.0 + 5 && at(r, "r2") >= before.1 + 5
    })
    .await;
    assert!(seen.cuts[0], "resumed with a token: {seen:?}");
    assert_eq!(seen.listed.len(), 2, "nothing read again: {seen:?}");

    add(addr, "r4", &b, "lab").await;
    let mut client = Client::new(netsync_testkit::channel(addr).await);
    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r2".into() })
        .await
        .unwrap();
    seen.until(&mut reflector, |r, s| {
        at(r, "r4") >= 1 && s.left.iter().any(|(n, _)| n == "r2")
    })
    .await;
    assert!(
        seen.listed.contains(&("r4".into(), "created".into())),
        "{seen:?}"
    );
    assert_eq!(seen.left, [("r2".into(), "deleted".into())]);
    assert_copies_equal_running(addr, &[("r1", &a), ("r4", &b)], &mut reflector, &mut seen).await;
    server.stop().await;
}

/// A fleet reflector that stops reading while the change log (300 commits
/// kept) compacts far past it: netsyncd cannot continue its datastore from
/// the log, sends a Baseline at the current revision instead, and the
/// reflector reads running there and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_compacted_past_a_stalled_fleet_reflector_rebases_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(&dir.path().join("netsync.db"));
    config.limits.event_buffer = 16;
    config.api_limits.max_watcher_bytes = 16 << 10;
    config.retention = Retention {
        commits: 300,
        age: Duration::ZERO,
    };
    let server = TestServer::start_with(config).await;
    let sim = Sim::start(generated(100)).await;
    add(server.addr, "r1", &sim, "lab").await;
    sim.start_churn(400.0).await;
    let stalled = netsync_testkit::channel_with_window(server.addr, 1024).await;
    let mut reflector = netsync_client::Client::from_channel(stalled).fleet_reflector("");
    let mut seen = Seen::default();
    seen.until(&mut reflector, |r, _| at(r, "r1") >= 3).await;
    let stalled_at = at(&reflector, "r1");
    // Not reading until revision stalled_at + 1 is compacted away.
    let mut observer = Client::new(netsync_testkit::channel(server.addr).await);
    let mut now = stalled_at;
    loop {
        now = wait_revision(&mut observer, "r1", now + 50).await;
        let oldest = observer
            .get_running(pb::GetRunningRequest {
                datastore: "r1".into(),
                revision: stalled_at + 1,
                ..Default::default()
            })
            .await;
        if matches!(oldest, Err(ref s) if s.code() == tonic::Code::OutOfRange) {
            break;
        }
    }
    seen.until(&mut reflector, |_, s| s.listed.len() >= 2).await;
    assert!(
        seen.listed[1].1.contains("no longer kept"),
        "rebased because the log moved on: {seen:?}"
    );
    assert!(at(&reflector, "r1") > stalled_at + 1);
    assert_copies_equal_running(server.addr, &[("r1", &sim)], &mut reflector, &mut seen).await;
    server.stop().await;
}
