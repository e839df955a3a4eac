//! Several netsyncd replicas on one PostgreSQL database (`--replicas`): real
//! processes on a database of the shared throwaway cluster, datastores on the
//! simulator. Each datastore is synced by exactly one replica, the one
//! rendezvous hashing picks among the live ones; a replica killed or paused
//! loses its datastores to the others within its lease; a paused one writes
//! nothing once its leases were taken (every commit row carries the epoch it
//! was written under); a replica joining takes its share. After each, every
//! datastore's history replayed from revision 1 has consecutive revisions and
//! equals running.
//!
//! Other modules about replicas build on the helpers here (`Replica`,
//! `settled`, `create`, `histories_are_whole`, `database`).
//!
//! These run whatever `NETSYNC_TEST_DB` says (replicas exist only on
//! PostgreSQL); they pass without running when PostgreSQL is missing, unless
//! `NETSYNC_REQUIRE_POSTGRES=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use netsync_proto::netsync::v1 as pb;
use netsync_server::replicas::share;
use netsync_testkit::client::{self, converge_by_meaning};
use netsync_testkit::datastore::DatastoreBuilder;
use netsync_testkit::postgres::PgCluster;
use netsync_testkit::process::Signal;
use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::{DEADLINE, LONG_DEADLINE};
use pb::net_sync_client::NetSyncClient;
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Netsyncd, Options, assert_status, http_get, sample};

/// The lease of every replica here: short, so that failovers are quick.
pub(crate) const LEASE: u64 = 3;

/// One replica: its process, id, client and metrics address.
pub(crate) struct Replica {
    pub(crate) id: String,
    pub(crate) server: Netsyncd,
    pub(crate) client: NetSyncClient<Channel>,
    pub(crate) metrics: SocketAddr,
}

impl Replica {
    pub(crate) async fn start(url: &str, id: &str) -> Self {
        Self::start_with(url, id, &[]).await
    }

    /// [`Replica::start`] with more flags (`extra`).
    pub(crate) async fn start_with(url: &str, id: &str, extra: &[&str]) -> Self {
        let server = Netsyncd::start_with(
            Path::new("unused"),
            Options {
                args: [
                    "--replicas",
                    "--replica-id",
                    id,
                    "--lease-seconds",
                    &LEASE.to_string(),
                    "--metrics-listen",
                    "127.0.0.1:0",
                ]
                .iter()
                .chain(extra)
                .map(|arg| arg.to_string())
                .collect(),
                db_url: Some(url.to_string()),
                ..Default::default()
            },
        );
        let metrics = server.wait_for_log("its metrics address", |line| {
            line.get("metrics_listen")?.as_str()?.parse().ok()
        });
        let client = NetSyncClient::new(netsync_testkit::channel(server.addr).await);
        Self {
            id: id.to_string(),
            server,
            client,
            metrics,
        }
    }

    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let (_, _, body) = http_get(self.metrics, "/metrics").await;
        sample(&body, series).unwrap_or_else(|| panic!("{series} not in {body}"))
    }
}

/// Each datastore's lease: (owner while valid, epoch).
pub(crate) async fn leases(db: &PgPool) -> BTreeMap<String, (Option<String>, i64)> {
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT datastore, CASE WHEN expires > now() THEN owner END, epoch FROM leases",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter().map(|(d, o, e)| (d, (o, e))).collect()
}

/// Waits until every one of `names` is owned by the replica of `live` that
/// rendezvous hashing picks and is IN_SYNC there; returns the owners and
/// the time it took.
pub(crate) async fn settled(
    db: &PgPool,
    live: &mut [&mut Replica],
    names: &[String],
) -> (BTreeMap<String, String>, Duration) {
    let started = Instant::now();
    let ids: Vec<String> = live.iter().map(|r| r.id.clone()).collect();
    let mut last = String::new();
    while started.elapsed() < LONG_DEADLINE {
        let leases = leases(db).await;
        let mut owners = BTreeMap::new();
        let mut wrong = Vec::new();
        for replica in live.iter_mut() {
            let mine = share(&ids, &replica.id, names);
            // One call for every status: each replica knows the state of
            // what it syncs.
            let states: BTreeMap<String, pb::DatastoreStatus> =
                client::list_datastores(&mut replica.client, "", pb::DatastoreView::Basic)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| (d.name, d.status.unwrap_or_default()))
                    .collect();
            for name in &mine {
                match leases.get(*name) {
                    Some((Some(owner), _)) if *owner == replica.id => {}
                    other => {
                        wrong.push(format!("{name}: lease {other:?}, wanted {}", replica.id));
                        continue;
                    }
                }
                let status = states.get(*name).cloned().unwrap_or_default();
                if status.state != pb::SyncState::InSync as i32 {
                    wrong.push(format!("{name} on {}: {status:?}", replica.id));
                    continue;
                }
                owners.insert(name.to_string(), replica.id.clone());
            }
        }
        if wrong.is_empty() && owners.len() == names.len() {
            return (owners, started.elapsed());
        }
        last = wrong.join("\n");
        // Leases move at each lease round (a third of the lease): look again
        // a few times a round.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the datastores never settled on {ids:?}:\n{last}");
}

/// Datastores `ds-00`.. on `sim`, created through `replica`.
pub(crate) async fn create(replica: &mut Replica, sim: &Sim, count: usize) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|i| format!("ds-{i:03}")).collect();
    for name in &names {
        replica
            .client
            .create_datastore(
                DatastoreBuilder::new(name, sim.addr)
                    .commit_interval_ms(100)
                    .create(),
            )
            .await
            .unwrap();
    }
    names
}

/// Checks every datastore on its owner once the device is quiet: running
/// equals the device, the history from revision 1 has consecutive revisions
/// and replays to running, and the epochs of its commit rows never go down
/// (no commit of an older lease after one of a newer).
pub(crate) async fn histories_are_whole(
    db: &PgPool,
    replicas: &mut [&mut Replica],
    owners: &BTreeMap<String, String>,
    sim: &Sim,
) {
    for (name, owner) in owners {
        let replica = replicas.iter_mut().find(|r| r.id == *owner).unwrap();
        let revision = converge_by_meaning(&mut replica.client, name, sim).await;
        let running = client::running(&mut replica.client, name, revision).await;
        let commits = client::history(&mut replica.client, name, running.revision).await;
        let revisions: Vec<u64> = commits.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            revisions,
            (1..=running.revision).collect::<Vec<_>>(),
            "{name}: revisions replayed from 1"
        );
        assert_eq!(client::replay(&commits), running.leaves, "{name}");
        let epochs: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT revision, epoch FROM commits WHERE datastore = $1 ORDER BY revision",
        )
        .bind(name)
        .fetch_all(db)
        .await
        .unwrap();
        assert!(
            epochs.iter().all(|(_, e)| e.is_some()),
            "{name}: a commit without epoch"
        );
        assert!(
            epochs.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: a commit of an older lease after a newer one: {epochs:?}"
        );
    }
}

pub(crate) async fn database() -> Option<(String, PgPool)> {
    let cluster = PgCluster::shared()?;
    let url = cluster.fresh_database();
    let db = PgPool::connect(&url).await.unwrap();
    Some((url, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sync_each_datastore_exactly_once_and_refuse_the_others_naming_the_owner() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let mut c = Replica::start(&url, "c").await;
    let names = create(&mut a, &sim, 300).await;
    let (owners, took) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    eprintln!("300 datastores IN_SYNC on 3 replicas {took:?} after their creation");

    // The leases and each replica's metric agree, and every replica owns
    // some.
    for replica in [&a, &b, &c] {
        let owned = owners.values().filter(|o| **o == replica.id).count();
        assert!(owned > 0, "{} owns nothing", replica.id);
        assert_eq!(
            replica.metric("netsync_replica_datastores").await,
            owned as f64,
            "{}",
            replica.id
        );
        assert!(replica.metric("netsync_lease_takeovers_total").await >= owned as f64);
        assert_eq!(replica.metric("netsync_lease_losses_total").await, 0.0);
    }

    // A call about a datastore synced elsewhere: UNAVAILABLE naming the
    // owner. The registry answers on every replica.
    let (name, owner) = owners.iter().find(|(_, o)| **o != "a").unwrap();
    let status = a
        .client
        .get_running(pb::GetRunningRequest {
            datastore: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, &[name, &format!("{owner:?}")]);
    let listed = client::list_datastores(&mut b.client, "", pb::DatastoreView::Basic)
        .await
        .unwrap();
    assert_eq!(listed.len(), 300);
    let status = client::status(&mut a.client, name).await;
    assert!(status.last_error.contains(owner.as_str()), "{status:?}");

    // A delete through a replica that does not own it: the owner stops it.
    let owner_replica = [&b, &c].into_iter().find(|r| r.id == *owner).unwrap();
    let before = owner_replica.metric("netsync_replica_datastores").await;
    a.client
        .delete_datastore(pb::DeleteDatastoreRequest { name: name.clone() })
        .await
        .unwrap();
    let started = Instant::now();
    while owner_replica.metric("netsync_replica_datastores").await != before - 1.0 {
        assert!(started.elapsed() < DEADLINE, "the owner still syncs {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!leases(&db).await.contains_key(name.as_str()));
    for replica in [a, b, c] {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_churn_loses_its_datastores_to_the_others_with_whole_histories() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let mut c = Replica::start(&url, "c").await;
    let names = create(&mut a, &sim, 300).await;
    let (owners, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    let lost: BTreeSet<&String> = owners
        .iter()
        .filter(|(_, o)| *o == "b")
        .map(|(n, _)| n)
        .collect();
    assert!(!lost.is_empty());
    sim.start_churn(20.0).await;
    // Churn reaches the device's every datastore before the kill.
    for name in &names {
        let replica = [&mut a, &mut c].into_iter().find(|r| owners[name] == r.id);
        if let Some(replica) = replica {
            client::wait_revision(&mut replica.client, name, 2).await;
        }
    }

    b.server.kill_hard();
    let (after, took) = settled(&db, &mut [&mut a, &mut c], &names).await;
    eprintln!(
        "kill -9 of a replica: its {} datastores IN_SYNC on the others {took:?} later (lease {LEASE} s)",
        lost.len()
    );
    assert!(
        took < Duration::from_secs(LEASE + 30),
        "failover took {took:?}"
    );
    for name in &lost {
        assert_ne!(after[*name], "b");
    }
    for replica in [&a, &c] {
        let owned = after.values().filter(|o| **o == replica.id).count();
        assert_eq!(
            replica.metric("netsync_replica_datastores").await,
            owned as f64
        );
    }

    sim.stop_churn().await;
    histories_are_whole(&db, &mut [&mut a, &mut c], &after, &sim).await;
    for replica in [a, c] {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_writes_nothing_after_the_takeover_and_stops_its_syncs() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let mut c = Replica::start(&url, "c").await;
    let names = create(&mut a, &sim, 12).await;
    let (owners, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    let paused: Vec<String> = owners
        .iter()
        .filter(|(_, o)| *o == "b")
        .map(|(n, _)| n.clone())
        .collect();
    assert!(!paused.is_empty());
    let held = leases(&db).await;
    sim.start_churn(20.0).await;

    b.server.signal(Signal::STOP);
    // The others take b's datastores once its lease expired, while b is
    // still paused, with the changes b received and did not commit.
    let (taken, took) = settled(&db, &mut [&mut a, &mut c], &names).await;
    eprintln!("SIGSTOP of a replica: its datastores IN_SYNC on the others {took:?} later");
    let takeover = leases(&db).await;
    let mut first_new: BTreeMap<String, i64> = BTreeMap::new();
    for name in &paused {
        assert!(takeover[name].1 > held[name].1, "{name}: a new epoch");
        assert_ne!(taken[name], "b");
        first_new.insert(name.clone(), takeover[name].1);
    }

    b.server.signal(Signal::CONT);
    // b stops the syncs of the leases it could not renew...
    b.server.wait_for_log("its syncs stopped", |line| {
        let message = line.get("message")?.as_str()?;
        (message.contains("lease not renewed in time") || message.contains("lease lost"))
            .then_some(())
    });
    // ...and, being live again, gets its share back under newer epochs.
    let (back, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    assert!(b.metric("netsync_lease_losses_total").await >= paused.len() as f64);
    sim.stop_churn().await;
    histories_are_whole(&db, &mut [&mut a, &mut b, &mut c], &back, &sim).await;

    // Nothing of b's old epochs after the takeover: every commit from the
    // first of the new epoch on is of that epoch or a later one.
    for name in &paused {
        let stale: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM commits WHERE datastore = $1 AND epoch < $2 AND revision > \
             (SELECT min(revision) FROM commits WHERE datastore = $1 AND epoch >= $2)",
        )
        .bind(name)
        .bind(first_new[name])
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(stale, 0, "{name}: b wrote after its lease was taken");
    }
    for replica in [a, b, c] {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_replica_takes_its_share_and_the_others_release_it_without_a_gap() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let mut c = Replica::start(&url, "c").await;
    let names = create(&mut a, &sim, 30).await;
    settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    sim.start_churn(20.0).await;

    let mut d = Replica::start(&url, "d").await;
    let (owners, took) = settled(&db, &mut [&mut a, &mut b, &mut c, &mut d], &names).await;
    eprintln!("a fourth replica: its share IN_SYNC on it {took:?} after it started");
    let share = owners.values().filter(|o| *o == "d").count();
    assert!(share > 0, "d took nothing");
    assert_eq!(d.metric("netsync_replica_datastores").await, share as f64);
    // Released, not lost.
    for replica in [&a, &b, &c] {
        assert_eq!(replica.metric("netsync_lease_losses_total").await, 0.0);
    }
    sim.stop_churn().await;
    histories_are_whole(&db, &mut [&mut a, &mut b, &mut c, &mut d], &owners, &sim).await;
    for replica in [a, b, c, d] {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_a_stale_owners_commit_and_the_rest_of_its_batch_commits() {
    use netsync_core::running::{Change, Running};
    use netsync_core::sync::{Committed, Persist};
    use netsync_server::log::{CommitLog, Retention};
    use netsync_server::writer::{Fence, PageLimit};

    let Some((url, db)) = database().await else {
        return;
    };
    let fence = Fence::new("me");
    let store = netsync_server::Store::open_as(&url, PageLimit::default(), Some(fence.clone()))
        .await
        .unwrap();
    for name in ["d", "e"] {
        sqlx::query(
            "INSERT INTO datastores (name, spec, create_time_us, uid) VALUES ($1, '', 0, $1)",
        )
        .bind(name)
        .execute(&db)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO leases (datastore, owner, epoch, expires) \
         VALUES ('d', 'me', 1, now() + interval '1 hour')",
    )
    .execute(&db)
    .await
    .unwrap();
    fence.own("d", 1);
    let log = CommitLog::new(store.clone(), Retention::default());
    let (change, running) = (Change::default(), Running::new());
    let commit = |revision| Committed {
        revision,
        time: std::time::SystemTime::now(),
        replace: false,
        change: &change,
        running: &running,
    };
    log.persist("d", commit(1)).await.unwrap();

    // Another replica takes the lease (epoch 2); this one has not noticed.
    sqlx::query("UPDATE leases SET owner = 'other', epoch = 2 WHERE datastore = 'd'")
        .execute(&db)
        .await
        .unwrap();
    let other = store.writer().write(|conn| {
        Box::pin(async move {
            let netsync_server::db::Conn::Postgres(pg) = conn else {
                unreachable!("PostgreSQL")
            };
            sqlx::query("INSERT INTO replicas (id, seen) VALUES ('x', now())")
                .execute(&mut *pg)
                .await?;
            Ok(())
        })
    });
    // Handed to the writer together: most often one batch.
    let (stale, other) = tokio::join!(log.persist("d", commit(2)), other);
    let refused = stale.unwrap_err();
    assert!(refused.contains("no longer owns"), "{refused}");
    other.unwrap();
    let rows: Vec<(i64, Option<i64>)> =
        sqlx::query_as("SELECT revision, epoch FROM commits WHERE datastore = 'd'")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows, vec![(1, Some(1))], "revision 2 was not written");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM replicas WHERE id = 'x'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seen, 1, "the other write of the batch committed");

    // Not owned at all: refused before reaching the database.
    fence.disown("d");
    let refused = log.persist("d", commit(2)).await.unwrap_err();
    assert!(refused.contains("no longer owns"), "{refused}");
    store.close().await;
}

#[test]
fn replicas_on_sqlite_are_refused_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("netsync.db").display());
    let output = Netsyncd::run_to_exit(&["--db", &db, "--replicas"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--replicas needs a PostgreSQL database"),
        "{stderr}"
    );
}

/// Readiness of a replica follows its database: NOT_SERVING once the
/// database is gone (its own cluster here, stopped), and its datastores'
/// syncs stop when their leases can no longer be renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_its_database_turns_not_ready_and_stops_its_syncs() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let url = cluster.fresh_database();
    let db = PgPool::connect(&url).await.unwrap();
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let names = create(&mut a, &sim, 3).await;
    settled(&db, &mut [&mut a], &names).await;
    let mut watch = HealthClient::new(netsync_testkit::channel(a.server.addr).await)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "netsync.v1.NetSync".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = netsync_testkit::within(watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    db.close().await;
    drop(cluster);
    let next = netsync_testkit::within(watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    a.server
        .wait_for_log("a sync stopped for its lease", |line| {
            let message = line.get("message")?.as_str()?;
            message.contains("lease not renewed in time").then_some(())
        });
    let started = Instant::now();
    while a.metric("netsync_replica_datastores").await != 0.0 {
        assert!(started.elapsed() < DEADLINE, "a still owns datastores");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.server.kill_hard();
}
