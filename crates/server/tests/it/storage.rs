//! The store under failure, as a user would check it: a database that cannot
//! grow (SQLite's page limit, then a real full filesystem, with a kill -9
//! during the outage), a fleet's write load with concurrent intent writes, a
//! second netsyncd on the same file, the file's permissions. Nothing
//! published is lost or taken back, a revision number is never reused, and
//! writes recover by themselves when space comes back.
//!
//! The full disk and the file's permissions are SQLite's own: those tests
//! run on SQLite whatever `NETSYNC_TEST_DB` says. The fleet's write load and
//! the second netsyncd run on the test database (PostgreSQL too). The
//! writer's PostgreSQL session ended during a burst is PostgreSQL's own and
//! runs on it always (skipped where PostgreSQL is missing, unless
//! `NETSYNC_REQUIRE_POSTGRES=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netsync_proto::gnmi::TypedValue;
use netsync_proto::netsync::v1 as pb;
use netsync_server::log::{CommitLog, Retention};
use netsync_server::store::Store;
use netsync_server::writer::PageLimit;
use netsync_sim::{ChurnSpec, SimConfig};
use netsync_testkit::client::{self, Client, converge, status, wait_revision};
use netsync_testkit::datastore::{DatastoreBuilder, intent};
use netsync_testkit::device::Device;
use netsync_testkit::gnmi::string;
use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::{DEADLINE, within};
use pb::net_sync_client::NetSyncClient;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{self, Netsyncd, Options, TestServer, http_get, sample};

/// The API service, whose health is readiness; `""` is liveness.
const READINESS: &str = "netsync.v1.NetSync";

/// A page limit that never bites: SQLite's historical default (its page
/// numbers are 32-bit, so no larger value is safe across versions).
const NO_PAGE_LIMIT: u64 = 1_073_741_823;

// ------------------------------------------------------------------ helpers

/// One commit as a watcher saw it (its parts merged) or as the log stores it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    revision: u64,
    replace: bool,
    updates: BTreeMap<String, TypedValue>,
    deletes: BTreeSet<String>,
}

/// Records every commit of a WatchSync in a task of its own, so that a test
/// can wait for a revision while it does other things.
struct Recorder {
    seen: tokio::sync::watch::Receiver<Vec<Seen>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Watches `name` from revision 1.
    async fn start(client: &mut Client, name: &str) -> Self {
        let mut events = client::watch(client, name, 1).await;
        let (record, seen) = tokio::sync::watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            let mut parts: Option<Seen> = None;
            // Ends with the stream: the server stopped or was killed.
            while let Some(Ok(event)) = events.next().await {
                let Some(pb::sync_event::Event::Commit(commit)) = event.event else {
                    continue;
                };
                let seen = parts.get_or_insert_with(|| Seen {
                    revision: event.revision,
                    replace: commit.replace,
                    updates: BTreeMap::new(),
                    deletes: BTreeSet::new(),
                });
                for leaf in commit.updates {
                    seen.updates
                        .insert(leaf.path, leaf.value.unwrap_or_default());
                }
                seen.deletes.extend(commit.deletes);
                if !commit.more
                    && let Some(whole) = parts.take()
                {
                    record.send_modify(|all| all.push(whole));
                }
            }
        });
        Self { seen, task }
    }

    /// Waits until the commit of `revision` (or a later one) is recorded;
    /// returns every commit recorded so far.
    async fn until(&mut self, revision: u64) -> Vec<Seen> {
        within(
            self.seen
                .wait_for(|all| all.last().is_some_and(|c| c.revision >= revision)),
        )
        .await
        .unwrap_or_else(|_| panic!("the watch ended before revision {revision}"))
        .clone()
    }

    /// Every commit recorded so far.
    fn now(&self) -> Vec<Seen> {
        self.seen.borrow().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that `commits` are revisions 1, 2, 3, ... with no gap.
fn assert_consecutive(commits: &[Seen]) {
    let revisions: Vec<u64> = commits.iter().map(|c| c.revision).collect();
    let expected: Vec<u64> = (1..=commits.len() as u64).collect();
    assert_eq!(revisions, expected, "revisions are consecutive from 1");
}

/// Asserts that `got` are the commits `expected`, revision by revision,
/// naming the first that differs (in short: values are long).
fn assert_same_commits(got: &[Seen], expected: &[Seen], what: &str) {
    for (got, expected) in got.iter().zip(expected) {
        let short = |c: &Seen| {
            format!(
                "revision {} (replace {}, {} updates, {} deletes)",
                c.revision,
                c.replace,
                c.updates.len(),
                c.deletes.len()
            )
        };
        assert!(
            got == expected,
            "{what}: {} differs from {}",
            short(got),
            short(expected)
        );
    }
    assert_eq!(got.len(), expected.len(), "{what}: commits");
}

/// `len` letters that do not compress, different for every `seed`: log
/// bodies are compressed, and the disk is to fill up.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// Changes one of 50 leaves of `device` to a new value of `len` letters,
/// one change every `every`, `count` changes or until `stop`; returns how
/// many it made. A paced load, not a wait.
fn change_device(
    device: &Device,
    every: Duration,
    len: usize,
    count: u64,
    stop: CancellationToken,
) -> JoinHandle<u64> {
    let device = device.clone();
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(every);
        for made in 0..count {
            tokio::select! {
                () = stop.cancelled() => return made,
                _ = pace.tick() => {}
            }
            device.set(
                &format!("/interfaces/interface[name=eth{}]/description", made % 50),
                &noise(made + 1000, len),
            );
        }
        count
    })
}

/// Re-reads the status of `name` until `check` holds. A status change has no
/// event of its own, so this reads again every 20 ms, up to the deadline.
async fn until_status(
    client: &mut Client,
    name: &str,
    what: &str,
    check: impl Fn(&pb::DatastoreStatus) -> bool,
) -> pb::DatastoreStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = status(client, name).await;
        if check(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never {what}: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The revision `N` of a `cannot persist revision N: ...` status error.
fn failing_revision(last_error: &str) -> u64 {
    last_error
        .strip_prefix("cannot persist revision ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a persist error: {last_error:?}"))
}

/// The health of `service` now.
async fn health(channel: Channel, service: &str) -> ServingStatus {
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

/// The next health status a Health/Watch stream announces.
async fn next_health(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    let next = within(watch.next())
        .await
        .expect("the health watch goes on")
        .unwrap();
    ServingStatus::try_from(next.status).unwrap()
}

/// A read-only connection of our own to the database file, as a second
/// reader (a backup tool, an operator's sqlite3) would open it.
async fn reader(db: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(db).read_only(true))
        .await
        .unwrap()
}

/// The stored revisions of `datastore`, in order, read by a second reader.
async fn stored_revisions(db: &Path, datastore: &str) -> Vec<u64> {
    let mut conn = reader(db).await;
    let revisions: Vec<i64> =
        sqlx::query_scalar("SELECT revision FROM commits WHERE datastore = ? ORDER BY revision")
            .bind(datastore)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    revisions.into_iter().map(|r| r as u64).collect()
}

/// Every stored commit of `datastore`, decoded by the server's own log
/// reader (netsyncd must not be running on `db`).
async fn stored_commits(db: &Path, datastore: &str) -> Vec<Seen> {
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    let log = CommitLog::new(store.clone(), Retention::default());
    let commits = log.read(datastore, 1, u32::MAX).await.unwrap();
    store.close().await;
    commits
        .into_iter()
        .map(|c| Seen {
            revision: c.revision,
            replace: c.replace,
            updates: c.change.updates().collect(),
            deletes: c.change.deletes().collect(),
        })
        .collect()
}

// ------------------------------------------------------- disk full, in process

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_deterministic_loses_nothing_and_recovers_by_itself() {
    // Values of this many letters fill a database page every few commits.
    const VALUE: usize = 300;
    let device = Device::start(&[("/system/hostname", "r1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    let pages = PageLimit::new(NO_PAGE_LIMIT);
    let mut config = support::sqlite_config(&db);
    config.max_page_count = pages.clone();
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client
        .create_datastore(
            DatastoreBuilder::new("r1", device.addr)
                .commit_interval_ms(20)
                .create(),
        )
        .await
        .unwrap();
    let mut commits = Recorder::start(&mut client, "r1").await;
    for i in 0..3 {
        device.set(
            &format!("/interfaces/interface[name=eth{i}]/description"),
            &noise(i, VALUE),
        );
        wait_revision(&mut client, "r1", i + 2).await;
    }
    let mut readiness = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest {
            service: READINESS.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_health(&mut readiness).await, ServingStatus::Serving);

    // The disk is full: the database may not grow past the pages it has.
    let mut conn = reader(&db).await;
    let in_use: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    pages.set(in_use as u64);
    // The device keeps changing, through the failure and past it (200
    // changes in a second; the database is full after a few dozen).
    let changes = change_device(
        &device,
        Duration::from_millis(5),
        VALUE,
        200,
        CancellationToken::new(),
    );
    assert_eq!(next_health(&mut readiness).await, ServingStatus::NotServing);
    let made = changes.await.unwrap();
    // Every change reached netsyncd (the initial dump, the first three, the
    // rest) and waits there.
    let failing = until_status(&mut client, "r1", "every change received", |s| {
        s.stats.as_ref().unwrap().updates_received >= 1 + 3 + made
    })
    .await;
    // The commit waits for the store, whole: no resync (which would heal a
    // lost change), no reconnect.
    let stats = failing.stats.unwrap();
    assert_eq!(
        (stats.resyncs, stats.reconnects),
        (0, 0),
        "resyncs, reconnects: {failing:?}"
    );
    assert!(stats.pending > 0, "the changes wait in pending: {stats:?}");
    let error = &failing.last_error;
    assert!(
        error.contains("disk full") && error.contains("retrying"),
        "{error}"
    );
    let stuck = failing_revision(error);
    // Nothing past the last durable revision is published.
    assert_eq!(failing.revision, stuck - 1);
    let published = client::running(&mut client, "r1", 0).await;
    assert_eq!(published.revision, stuck - 1);
    commits.until(stuck - 1).await;
    assert_eq!(commits.now().last().unwrap().revision, stuck - 1);
    // Not ready, but alive: a restart would not bring space back.
    assert_eq!(
        health(server.channel().await, READINESS).await,
        ServingStatus::NotServing
    );
    assert_eq!(
        health(server.channel().await, "").await,
        ServingStatus::Serving
    );
    // An API write is refused as unavailable and changes nothing. The page
    // limit refuses only what needs new pages (a small row may still fit in
    // a page that has room), so this intent is larger than a page: it needs
    // space, as every write does on a full disk.
    let big = intent("motd", 1, &[("/system/motd", &noise(7, 20_000))], &[]);
    let refused = client
        .set_intent(pb::SetIntentRequest {
            datastore: "r1".into(),
            intent: Some(big),
            validate_only: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let get_motd = pb::GetIntentRequest {
        datastore: "r1".into(),
        name: "motd".into(),
    };
    let missing = client.get_intent(get_motd.clone()).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Space comes back: no restart, no resync.
    pages.set(NO_PAGE_LIMIT);
    assert_eq!(next_health(&mut readiness).await, ServingStatus::Serving);
    let last = converge(&mut client, "r1", &device).await;
    client::assert_quiet(&mut client, "r1").await;
    assert_eq!(
        health(server.channel().await, READINESS).await,
        ServingStatus::Serving
    );
    let missing = client.get_intent(get_motd).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let seen = commits.until(last).await;
    assert_consecutive(&seen);
    let running = client::running(&mut client, "r1", last).await;
    assert_eq!(running.revision, last, "the device stands still");
    drop((commits, readiness, client));
    server.stop().await;

    // A second reader of the file finds every revision the watcher saw, with
    // the same content, and replaying them rebuilds running.
    assert_eq!(
        stored_revisions(&db, "r1").await,
        seen.iter().map(|c| c.revision).collect::<Vec<_>>()
    );
    let stored = stored_commits(&db, "r1").await;
    assert_same_commits(&stored, &seen, "stored and seen");
    let mut replayed = BTreeMap::new();
    for commit in &stored {
        for path in &commit.deletes {
            replayed.remove(path);
        }
        replayed.extend(commit.updates.clone());
    }
    assert_eq!(replayed, running.leaves);
}

// ------------------------------------------------- disk full, a real filesystem

/// A tmpfs mounted on a directory for the life of the guard; unmounted
/// (lazily: a killed process may still hold a file) when it goes, also when
/// the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`;
    /// `None`, having said why, where that is not possible.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            println!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Self(dir.to_path_buf())),
            Ok(output) => {
                println!(
                    "SKIPPED: mount -t tmpfs failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until its filesystem is full (ENOSPC); returns the bytes
/// written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return written,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_on_a_real_filesystem_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(dir.path(), "8m") else {
        return;
    };
    let db = dir.path().join("netsync.db");
    let device = Device::start(&[("/system/hostname", "r1")]).await;
    let daemon = Netsyncd::start_with(
        &db,
        Options {
            args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            sqlite: true,
            ..Options::default()
        },
    );
    let metrics: SocketAddr = daemon.wait_for_log("the metrics address", |line| {
        line.get("metrics_listen")?.as_str()?.parse().ok()
    });
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    client
        .create_datastore(
            DatastoreBuilder::new("r1", device.addr)
                .commit_interval_ms(20)
                .create(),
        )
        .await
        .unwrap();
    let mut commits = Recorder::start(&mut client, "r1").await;
    // A device that churns until the end of the test.
    let stop = CancellationToken::new();
    let churn = change_device(
        &device,
        Duration::from_millis(2),
        1000,
        u64::MAX,
        stop.clone(),
    );
    commits.until(5).await;

    let filler = dir.path().join("filler");
    let filled = {
        let filler = filler.clone();
        tokio::task::spawn_blocking(move || fill(&filler))
            .await
            .unwrap()
    };
    let failing = until_status(&mut client, "r1", "a persist error", |s| {
        s.last_error.starts_with("cannot persist")
    })
    .await;
    let error = &failing.last_error;
    assert!(
        error.contains("disk full") && error.contains("retrying"),
        "{error} (the filler took {filled} bytes)"
    );
    let stuck = failing_revision(error);
    let (_, _, scrape) = http_get(metrics, "/metrics").await;
    let value = |series: &str| {
        sample(&scrape, series).unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
    };
    assert_eq!(value("netsync_store_failing"), 1.0);
    assert!(value("netsync_store_write_failures_total") >= 1.0);
    assert!(value(r#"netsync_persist_errors_total{datastore="r1"}"#) >= 1.0);
    assert_eq!(value(r#"netsync_sync_resyncs_total{datastore="r1"}"#), 0.0);
    assert!(value("netsync_store_transactions_total") >= 5.0);
    let published = commits.until(stuck - 1).await;
    assert_eq!(published.last().unwrap().revision, stuck - 1);

    // Killed during the outage; then the space comes back.
    daemon.kill_hard();
    drop((commits, client));
    std::fs::remove_file(&filler).unwrap();
    // A second reader finds every published revision in the file (the
    // commit that was failing may or may not have made it).
    let stored = stored_revisions(&db, "r1").await;
    let highest = *stored.last().unwrap();
    assert!(highest >= stuck - 1, "stored up to {highest}");
    assert_eq!(stored, (1..=highest).collect::<Vec<_>>());

    let daemon = Netsyncd::start_with(
        &db,
        Options {
            sqlite: true,
            ..Options::default()
        },
    );
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    stop.cancel();
    churn.await.unwrap();
    let last = converge(&mut client, "r1", &device).await;
    client::assert_quiet(&mut client, "r1").await;
    // Every revision seen before the kill means the same after it; the
    // restart's first commit (the resync's replace) follows the highest
    // stored revision; none is skipped or used twice.
    let mut replay = Recorder::start(&mut client, "r1").await;
    let after = replay.until(last).await;
    assert_consecutive(&after);
    assert_same_commits(
        &after[..published.len()],
        &published,
        "after the restart and before the kill",
    );
    let first_after_restart = &after[highest as usize];
    assert!(
        first_after_restart.replace,
        "revision {} after the highest stored, {highest}, is not the restart's replace",
        first_after_restart.revision
    );
    drop((replay, client));
    let status = tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

// ------------------------------------------------------------ fleet write load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_write_load_with_concurrent_intent_writes_has_no_errors() {
    const FLEET: usize = 40;
    // Value changes only: the churn never touches a leaf an intent sets.
    let sim = Sim::start(SimConfig {
        churn: Some(ChurnSpec {
            rate: 150.0,
            delete_share: 0.0,
            seed: 5,
        }),
        ..generated(100)
    })
    .await;
    let (_dir, server, mut client) = support::start().await;
    let name = |d: usize| format!("r{d:02}");
    let path = |d: usize, intent: &str| format!("/netsync-test/r{d:02}/{intent}");
    let value = |d: usize, intent: &str| format!("{intent} of r{d:02}");
    for d in 0..FLEET {
        client
            .create_datastore(
                DatastoreBuilder::new(&name(d), sim.addr)
                    .encoding(pb::Encoding::Proto)
                    .commit_interval_ms(5)
                    .create(),
            )
            .await
            .unwrap();
    }
    for d in 0..FLEET {
        wait_revision(&mut client, &name(d), 1).await;
    }
    let before = status(&mut client, &name(0)).await.revision;

    // Four writes per datastore, all datastores at once: 160 writes among
    // the commits of 40 datastores.
    let writers: Vec<JoinHandle<Vec<tonic::Status>>> = (0..FLEET)
        .map(|d| {
            let mut client = client.clone();
            let (ds, path, value) = (name(d), path, value);
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for step in ["a", "b", "c"] {
                    let written = client
                        .set_intent(pb::SetIntentRequest {
                            datastore: ds.clone(),
                            intent: Some(intent(
                                step,
                                1,
                                &[(&path(d, step), &value(d, step))],
                                &[],
                            )),
                            validate_only: false,
                            ..Default::default()
                        })
                        .await;
                    errors.extend(written.err());
                }
                let deleted = client
                    .delete_intent(pb::DeleteIntentRequest {
                        datastore: ds.clone(),
                        name: "b".into(),
                        ..Default::default()
                    })
                    .await;
                errors.extend(deleted.err());
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for writer in writers {
        errors.extend(within(writer).await.unwrap());
    }
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for error in &errors {
        *kinds
            .entry(format!("{:?}: {}", error.code(), error.message()))
            .or_default() += 1;
    }
    assert!(errors.is_empty(), "{} errors: {kinds:?}", errors.len());
    let after = status(&mut client, &name(0)).await.revision;
    assert!(after > before, "the datastores committed meanwhile");

    // The intents that remain are applied, the deleted one withdrawn.
    for d in 0..FLEET {
        let ds = name(d);
        let (a, b, c) = (path(d, "a"), path(d, "b"), path(d, "c"));
        client::until_running(&mut client, &ds, "a and c applied, b withdrawn", |leaves| {
            leaves.get(&a) == Some(&string(value(d, "a")))
                && leaves.get(&c) == Some(&string(value(d, "c")))
                && !leaves.contains_key(&b)
        })
        .await;
        let deviations = client::deviations(&mut client, &ds).await;
        assert!(deviations.is_empty(), "{ds}: {deviations:?}");
        let intents = client
            .list_intents(pb::ListIntentsRequest {
                datastore: ds.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .intents;
        let names: Vec<_> = intents.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "c"], "{ds}");
        client::assert_quiet(&mut client, &ds).await;
    }
    drop(client);
    server.stop().await;
    sim.stop().await;
}

// ---------------------------------------------------------- one process per file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_netsyncd_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let first = Netsyncd::start(&db);
    let url = support::db_url(&db);
    let second = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || Netsyncd::run_to_exit(&["--db", &url]))
            .await
            .unwrap()
    };
    assert!(!second.status.success(), "{:?}", second.status);
    let stderr = String::from_utf8_lossy(&second.stderr);
    // SQLite names the file; PostgreSQL the writer lock.
    let named = if support::on_postgres() {
        "writer lock".to_string()
    } else {
        db.display().to_string()
    };
    assert!(
        stderr.contains(&named) && stderr.contains("in use"),
        "{stderr}"
    );

    // The first goes on serving, reads and writes.
    let channel = netsync_testkit::channel(first.addr).await;
    assert_eq!(
        health(channel.clone(), READINESS).await,
        ServingStatus::Serving
    );
    let mut client = NetSyncClient::new(channel);
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    let listed = client
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datastores;
    assert_eq!(listed.len(), 1);
    drop(client);
    let status = tokio::task::spawn_blocking(move || first.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

// ------------------------------------------------------------------ permissions

/// The permission bits of `path`, in octal as `ls` and `chmod` write them.
fn mode(path: &Path) -> String {
    format!(
        "{:o}",
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    )
}

/// The database and the files SQLite and netsyncd keep beside it, those
/// that exist now.
fn database_files(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", ".lock"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
        .filter(|path| path.exists())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    // It holds device credentials.
    let create = |name: &str| DatastoreBuilder::every_field(name).create();

    let server = TestServer::start_with(support::sqlite_config(&db)).await;
    let mut client = server.client().await;
    client.create_datastore(create("r1")).await.unwrap();
    let files = database_files(&db);
    assert!(
        files.len() >= 3,
        "the database, its WAL, its lock: {files:?}"
    );
    for file in &files {
        assert_eq!(mode(file), "600", "{}", file.display());
    }
    drop(client);
    server.stop().await;

    // A file someone made readable to all is narrowed at start.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = TestServer::start_with(support::sqlite_config(&db)).await;
    let mut client = server.client().await;
    client.create_datastore(create("r2")).await.unwrap();
    for file in database_files(&db) {
        assert_eq!(mode(&file), "600", "{}", file.display());
    }
    drop(client);
    server.stop().await;
}

// ------------------------------------------------------ PostgreSQL: a lost session

/// The process id of the PostgreSQL sessions holding an advisory lock on the
/// database at `url`: netsyncd's writer.
async fn writer_sessions(url: &str) -> Vec<i32> {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    pids
}

/// Ends the PostgreSQL session `pid`, as a database restart or a network
/// cut would.
async fn end_session(url: &str, pid: i32) {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(ended, "session {pid} ended");
    admin.close().await.unwrap();
}

/// On PostgreSQL (whatever `NETSYNC_TEST_DB` says; skipped without it unless
/// required): the writer's session is ended twice during a burst of
/// commits. The writer reopens, takes its lock again and reads back what is
/// durable; the watcher sees consecutive revisions, nothing published is
/// lost, and a restart replays the same history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_session_lost_during_a_burst_loses_nothing() {
    let Some(cluster) = netsync_testkit::postgres::PgCluster::shared() else {
        return;
    };
    let url = cluster.fresh_database();
    let device = Device::start(&[("/system/hostname", "r1")]).await;
    let server = TestServer::start_with(netsync_server::Config::with_db(url.clone())).await;
    let mut client = server.client().await;
    client
        .create_datastore(
            DatastoreBuilder::new("r1", device.addr)
                .commit_interval_ms(10)
                .create(),
        )
        .await
        .unwrap();
    let mut commits = Recorder::start(&mut client, "r1").await;
    wait_revision(&mut client, "r1", 1).await;
    let churn = change_device(
        &device,
        Duration::from_millis(3),
        40,
        300,
        CancellationToken::new(),
    );
    let mut ended = Vec::new();
    for at in [5, 15] {
        wait_revision(&mut client, "r1", at).await;
        let writer = writer_sessions(&url).await;
        assert_eq!(writer.len(), 1, "one writer session: {writer:?}");
        end_session(&url, writer[0]).await;
        ended.push(writer[0]);
    }
    assert_eq!(churn.await.unwrap(), 300);
    let last = converge(&mut client, "r1", &device).await;
    // The writer reopened: a new session holds its lock.
    let writer = writer_sessions(&url).await;
    assert_eq!(writer.len(), 1, "{writer:?}");
    assert!(!ended.contains(&writer[0]), "{writer:?} {ended:?}");
    let seen = commits.until(last).await;
    assert_consecutive(&seen);
    drop(commits);
    drop(client);
    server.stop().await;

    let server = TestServer::start_with(netsync_server::Config::with_db(url)).await;
    let mut client = server.client().await;
    let mut replay = Recorder::start(&mut client, "r1").await;
    let replayed = replay.until(last).await;
    assert_same_commits(&replayed[..seen.len()], &seen, "after a restart");
    drop(replay);
    drop(client);
    server.stop().await;
}
