//! `failover`: three netsyncd replicas (`--replicas`) on one database of a
//! throwaway PostgreSQL cluster sync a fleet of datastores on one simulator,
//! whose device changes slowly; once every datastore is IN_SYNC on the
//! replica its lease names, one replica is killed with SIGKILL. Measured, per
//! datastore it owned: from the kill to its lease taken by a survivor (what
//! was left of the lease, then the survivor's next round) and on to IN_SYNC
//! there (starting the sync, the resync with the device). Checked: each moved
//! datastore's commit rows go on without a gap and without rewriting what the
//! killed replica had published, and no other datastore moved.
//!
//! The harness reads the leases and commit rows from the database itself:
//! which replica syncs what is the lease table's to say, and a revision lost
//! or written twice shows only there.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use netsync_proto::netsync::v1 as pb;
use netsync_testkit::postgres::PgCluster;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::fleet::{create_all, fleet_datastore};
use super::{Ctx, settle_and_compare};
use crate::api::{Netsync, in_sync};
use crate::device::Device;
use crate::markers::percentile;
use crate::process::{NetsyncdOptions, Process, start_netsyncd_on, start_sim};
use crate::report::Report;

/// The replicas' ids; the second one is killed.
const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];

/// The replica killed.
const VICTIM: usize = 1;

/// How often leases and states are read while waiting: the resolution of
/// every time measured here.
const POLL: Duration = Duration::from_millis(100);

/// The target: the fleet of a killed replica IN_SYNC elsewhere within this.
const TARGET_SECONDS: f64 = 15.0;

/// One replica: its process and a client of it.
struct Replica {
    id: &'static str,
    process: Process,
    api: Netsync,
}

/// A datastore's lease as the database has it now.
#[derive(Debug, Clone)]
struct Lease {
    /// The owner while the lease is valid; `None`: free or expired.
    owner: Option<String>,
    epoch: i64,
    /// When it expires, seconds since the Unix epoch.
    expires: f64,
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    // Replicas exist only on PostgreSQL: the cluster of --postgres, else
    // one of this run's own.
    let Some(cluster) = ctx.bins.postgres.or_else(PgCluster::shared) else {
        let mut report = Report::new("failover", ctx.quick);
        report.note(
            "skipped: no PostgreSQL (initdb, pg_ctl) on this machine; NETSYNC_REQUIRE_POSTGRES=1 \
             makes that an error",
        );
        return Ok(report);
    };
    let url = cluster.fresh_database();
    let lease = sizes.failover_lease;
    let lease_seconds = lease.as_secs_f64();
    let mut sim = start_sim(&ctx.bins, &dir.join("sim"), sizes.failover_leaves).await?;
    let mut device = Device::connect(sim.addr).await?;
    let leaves = device.counters().await?.leaves;
    let mut replicas = Vec::new();
    for id in REPLICAS {
        let args = [
            "--replicas",
            "--replica-id",
            id,
            "--lease-seconds",
            &lease.as_secs().to_string(),
        ]
        .map(String::from);
        let process = start_netsyncd_on(
            &ctx.bins,
            &dir.join(id),
            url.clone().into(),
            &args,
            NetsyncdOptions::default(),
        )
        .await?;
        let api = Netsync::connect(&process.url(), sizes.deadline).await?;
        replicas.push(Replica { id, process, api });
    }
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    // Every replica live before the first datastore, so that each lease
    // goes straight to the replica it belongs to and stays there.
    wait_live(&db, REPLICAS.len(), lease, sizes.deadline).await?;

    let names: Vec<String> = (0..sizes.failover_datastores)
        .map(|i| format!("failover-{i:04}"))
        .collect();
    let device_addr = sim.addr;
    let start = Instant::now();
    create_all(
        &replicas[0].api,
        names
            .iter()
            .map(|name| fleet_datastore(name, device_addr, sizes.commit_interval)),
    )
    .await?;
    let settled = settle(&db, &mut replicas, &names, lease, sizes.deadline, &mut sim).await?;
    let settle_time = start.elapsed();

    // Churn, and every datastore past one more revision, so that the kill
    // lands among commits.
    device.start_churn(sizes.failover_churn_rate, 2).await?;
    let give_up = Instant::now() + sizes.deadline;
    loop {
        let (_, now) = owned_states(&db, &mut replicas).await?;
        let behind = names
            .iter()
            .filter(|n| now.get(*n).map_or(0, |(_, s)| s.revision) <= settled[*n].1.revision)
            .count();
        if behind == 0 {
            break;
        }
        if Instant::now() >= give_up {
            bail!("{behind} datastores made no commit under churn");
        }
        check_running(&mut replicas, &mut sim)?;
        tokio::time::sleep(POLL).await;
    }

    // Just before the kill: every lease, and the revisions the victim had
    // published of the datastores it owns.
    let victim = REPLICAS[VICTIM];
    let leases_before = leases(&db).await?;
    let published: HashMap<String, u64> = netsync_testkit::client::list_datastores(
        &mut replicas[VICTIM].api.client,
        "",
        pb::DatastoreView::Basic,
    )
    .await
    .context("ListDatastores on the replica to be killed")?
    .into_iter()
    .filter(|d| leases_before[&d.name].owner.as_deref() == Some(victim))
    .map(|d| (d.name, d.status.map_or(0, |s| s.revision)))
    .collect();
    ensure!(
        !published.is_empty(),
        "{victim} owns no datastore of {}: nothing to fail over",
        names.len()
    );
    let killed = replicas.remove(VICTIM);
    let killed_at = Instant::now();
    let killed_wall = unix_seconds(SystemTime::now());
    killed.process.kill_hard().await?;
    // What was left of its leases at the kill, read once it can renew no
    // more (a round between a read and the kill would lengthen them): the
    // time left now, plus the time since the kill.
    let since_kill = killed_at.elapsed();
    let left: HashMap<String, f64> = sqlx::query_as::<_, (String, f64)>(
        "SELECT datastore, extract(epoch FROM expires - now())::float8 FROM leases \
         WHERE owner = $1",
    )
    .bind(victim)
    .fetch_all(&db)
    .await?
    .into_iter()
    .filter(|(name, _)| published.contains_key(name))
    .map(|(name, left)| (name, left + since_kill.as_secs_f64()))
    .collect();
    ensure!(
        left.len() == published.len(),
        "{victim} held {} leases at the kill, {} a moment later",
        published.len(),
        left.len()
    );

    // Until every datastore it owned is IN_SYNC on a survivor, at a revision
    // after the ones it had published. When a lease was taken is read from
    // the row as first seen taken: its expiry less the lease, as the taking
    // round set it (the next renewal is a round away, several polls later).
    // The database runs on this machine, so its clock is this one's.
    let mut taken: HashMap<String, f64> = HashMap::new();
    let mut synced: HashMap<String, Duration> = HashMap::new();
    let give_up = killed_at + sizes.deadline;
    // The longest read of leases and states: what a polled time may lag by,
    // beside the sleep between reads.
    let mut longest_read = Duration::ZERO;
    while synced.len() < left.len() {
        let read = Instant::now();
        let (leases_now, states) = owned_states(&db, &mut replicas).await?;
        longest_read = longest_read.max(read.elapsed());
        let at = killed_at.elapsed();
        for name in left.keys() {
            let lease = &leases_now[name];
            let moved = lease.epoch > leases_before[name].epoch
                && lease.owner.as_deref().is_some_and(|o| o != victim);
            if !moved {
                continue;
            }
            taken
                .entry(name.clone())
                .or_insert(lease.expires - lease_seconds);
            let done = states.get(name).is_some_and(|(_, s)| {
                in_sync(s) && s.revision > published.get(name).copied().unwrap_or(0)
            });
            if done {
                synced.entry(name.clone()).or_insert(at);
            }
        }
        if Instant::now() >= give_up {
            bail!(
                "{} of {} datastores of {victim} IN_SYNC on the others {:?} after the kill",
                synced.len(),
                left.len(),
                sizes.deadline
            );
        }
        check_running(&mut replicas, &mut sim)?;
        tokio::time::sleep(POLL).await;
    }
    device.stop_churn().await?;

    // No revision lost or written twice across the move, and nothing else
    // moved. The new owner's first commit (its resync's) and when it was
    // made.
    let mut faults = Vec::new();
    let mut first_commit: HashMap<String, f64> = HashMap::new();
    for name in left.keys() {
        let first: Option<i64> = sqlx::query_scalar(
            "SELECT min(time_us) FROM commits WHERE datastore = $1 AND epoch > $2",
        )
        .bind(name)
        .bind(leases_before[name].epoch)
        .fetch_one(&db)
        .await?;
        if let Some(us) = first {
            first_commit.insert(name.clone(), us as f64 / 1e6);
        }
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT revision, epoch FROM commits WHERE datastore = $1 ORDER BY revision",
        )
        .bind(name)
        .fetch_all(&db)
        .await?;
        if let Some(fault) = history_fault(&rows, leases_before[name].epoch, published[name]) {
            faults.push(format!("{name}: {fault}"));
        }
    }
    ensure!(faults.is_empty(), "{}", faults.join("; "));
    let leases_after = leases(&db).await?;
    let others_moved = names
        .iter()
        .filter(|n| !left.contains_key(*n) && leases_after[*n].epoch != leases_before[*n].epoch)
        .count();

    // Running of a moved datastore equals the device on its new owner.
    let (_, states) = owned_states(&db, &mut replicas).await?;
    let first = left.keys().min().context("no moved datastore")?;
    let owner = &states[first].0;
    let replica = replicas
        .iter_mut()
        .find(|r| r.id == owner.as_str())
        .with_context(|| format!("{first} is owned by {owner}, not a survivor"))?;
    settle_and_compare(&mut device, &mut replica.api, &[first], sizes.deadline).await?;
    check_running(&mut replicas, &mut sim)?;

    let sorted = |values: &mut dyn Iterator<Item = f64>| {
        let mut values: Vec<Duration> = values
            .map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
            .collect();
        values.sort();
        values
    };
    let lease_left = sorted(&mut left.values().copied());
    let takeover = sorted(&mut taken.values().map(|at| at - killed_wall));
    let resync = sorted(&mut first_commit.iter().map(|(name, at)| at - taken[name]));
    let committed = sorted(&mut first_commit.values().map(|at| at - killed_wall));
    let failover = sorted(&mut synced.values().map(Duration::as_secs_f64));

    let mut report = Report::new("failover", ctx.quick);
    report.count("datastores", names.len() as u64);
    report.count("leaves_each", leaves);
    report.count("lease_seconds", lease.as_secs());
    report.count("moved_datastores", left.len() as u64);
    report.seconds("settled_seconds", settle_time);
    report.seconds("lease_left_p50_seconds", percentile(&lease_left, 0.5));
    report.seconds("lease_left_max_seconds", percentile(&lease_left, 1.0));
    report.seconds("takeover_p50_seconds", percentile(&takeover, 0.5));
    report.seconds("takeover_max_seconds", percentile(&takeover, 1.0));
    report.seconds("resync_p50_seconds", percentile(&resync, 0.5));
    report.seconds("resync_max_seconds", percentile(&resync, 1.0));
    report.seconds("committed_p50_seconds", percentile(&committed, 0.5));
    report.seconds("committed_max_seconds", percentile(&committed, 1.0));
    report.seconds("failover_p50_seconds", percentile(&failover, 0.5));
    report.seconds("failover_total_seconds", percentile(&failover, 1.0));
    report.seconds("longest_poll_seconds", longest_read);
    report.flag("revisions_whole", true);
    report.count("other_datastores_moved", others_moved as u64);
    report.flag("running_equals_device", true);
    report.at_most("failover_total_seconds", TARGET_SECONDS);
    report.at_most("other_datastores_moved", 0.0);
    report.note(format!(
        "3 replicas; settled = first CreateDatastore to all IN_SYNC on their lease's owner with \
         no lease moved for a lease; {victim} killed with SIGKILL while the device changed {}/s; \
         per datastore it owned: lease_left = its lease's time left at the kill, takeover = kill \
         to a survivor's lease, resync = that to the survivor's first commit, committed = kill \
         to that commit (times of the database's rows); failover = kill to IN_SYNC on the \
         survivor at a new revision, polled every {} ms plus the poll's own time (longest_poll) \
         (total: the last one); target for \
         1,000 datastores",
        sizes.failover_churn_rate,
        POLL.as_millis()
    ));
    Ok(report)
}

/// `time` as seconds since the Unix epoch, as the database writes times.
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Fails if a replica or the simulator has exited.
fn check_running(replicas: &mut [Replica], sim: &mut Process) -> anyhow::Result<()> {
    sim.check_running()?;
    for replica in replicas {
        replica
            .process
            .check_running()
            .with_context(|| replica.id)?;
    }
    Ok(())
}

/// Waits until `count` replicas have a heartbeat within the lease.
async fn wait_live(
    db: &PgPool,
    count: usize,
    lease: Duration,
    deadline: Duration,
) -> anyhow::Result<()> {
    let give_up = Instant::now() + deadline;
    loop {
        let live: i64 = match sqlx::query_scalar(
            "SELECT count(*) FROM replicas WHERE seen > now() - make_interval(secs => $1)",
        )
        .bind(lease.as_secs_f64())
        .fetch_one(db)
        .await
        {
            Ok(live) => live,
            // undefined_table: a replica listens before it has migrated
            // the database.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => 0,
            Err(e) => return Err(e).context("reading the replicas' heartbeats"),
        };
        if live as usize >= count {
            return Ok(());
        }
        if Instant::now() >= give_up {
            bail!("{live} of {count} replicas live after {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every datastore's lease.
async fn leases(db: &PgPool) -> anyhow::Result<HashMap<String, Lease>> {
    let rows: Vec<(String, Option<String>, i64, f64)> = sqlx::query_as(
        "SELECT datastore, CASE WHEN expires > now() THEN owner END, epoch, \
         extract(epoch FROM expires)::float8 FROM leases",
    )
    .fetch_all(db)
    .await
    .context("reading the leases")?;
    Ok(rows
        .into_iter()
        .map(|(name, owner, epoch, expires)| {
            (
                name,
                Lease {
                    owner,
                    epoch,
                    expires,
                },
            )
        })
        .collect())
}

/// Every lease, and the status of each datastore as its lease's owner
/// reports it (with that owner's id): a replica knows the state of what it
/// syncs, and only that.
async fn owned_states(
    db: &PgPool,
    replicas: &mut [Replica],
) -> anyhow::Result<(
    HashMap<String, Lease>,
    HashMap<String, (String, pb::DatastoreStatus)>,
)> {
    let leases = leases(db).await?;
    let mut states = HashMap::new();
    for replica in replicas {
        let listed = netsync_testkit::client::list_datastores(
            &mut replica.api.client,
            "",
            pb::DatastoreView::Basic,
        )
        .await
        .with_context(|| format!("ListDatastores on {}", replica.id))?;
        for datastore in listed {
            let mine = leases
                .get(&datastore.name)
                .is_some_and(|l| l.owner.as_deref() == Some(replica.id));
            if mine {
                states.insert(
                    datastore.name,
                    (replica.id.to_string(), datastore.status.unwrap_or_default()),
                );
            }
        }
    }
    Ok((leases, states))
}

/// Waits until every one of `names` is IN_SYNC on the owner of its lease and
/// no lease has changed hands for a whole lease (three rounds of every
/// replica); returns each datastore's owner and status then.
async fn settle(
    db: &PgPool,
    replicas: &mut [Replica],
    names: &[String],
    lease: Duration,
    deadline: Duration,
    sim: &mut Process,
) -> anyhow::Result<BTreeMap<String, (String, pb::DatastoreStatus)>> {
    let give_up = Instant::now() + deadline;
    let mut owners: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stable_since = Instant::now();
    loop {
        let (leases, states) = owned_states(db, replicas).await?;
        let now: BTreeMap<String, Option<String>> = names
            .iter()
            .map(|n| (n.clone(), leases.get(n).and_then(|l| l.owner.clone())))
            .collect();
        if now != owners {
            owners = now;
            stable_since = Instant::now();
        }
        let synced = names
            .iter()
            .filter(|n| states.get(*n).is_some_and(|(_, s)| in_sync(s)))
            .count();
        if synced == names.len() && stable_since.elapsed() >= lease {
            return Ok(names
                .iter()
                .map(|n| (n.clone(), states[n].clone()))
                .collect());
        }
        if Instant::now() >= give_up {
            bail!(
                "{synced} of {} datastores IN_SYNC on their lease's owner after {deadline:?}",
                names.len()
            );
        }
        check_running(replicas, sim)?;
        tokio::time::sleep(POLL).await;
    }
}

/// What is wrong with a moved datastore's commit rows, if anything. `rows`:
/// (revision, epoch) in revision order; `old_epoch`: the killed owner's
/// lease epoch; `published`: the last revision it had published.
///
/// Whole means: consecutive revisions from the oldest kept (none lost),
/// every row under an epoch and epochs never going down (no write of an old
/// lease after a newer one), every revision up to `published` still the
/// killed owner's or older (none rewritten), and the last one under a newer
/// epoch (the new owner committed).
fn history_fault(rows: &[(i64, Option<i64>)], old_epoch: i64, published: u64) -> Option<String> {
    let Some(last) = rows.last() else {
        return Some("no commit rows".into());
    };
    if let Some(w) = rows.windows(2).find(|w| w[1].0 != w[0].0 + 1) {
        return Some(format!("revisions jump from {} to {}", w[0].0, w[1].0));
    }
    if let Some((revision, _)) = rows.iter().find(|(_, e)| e.is_none()) {
        return Some(format!("revision {revision} has no epoch"));
    }
    if let Some(w) = rows.windows(2).find(|w| w[1].1 < w[0].1) {
        return Some(format!(
            "revision {} (epoch {:?}) after revision {} (epoch {:?})",
            w[1].0, w[1].1, w[0].0, w[0].1
        ));
    }
    let published = i64::try_from(published).unwrap_or(i64::MAX);
    if last.0 < published {
        return Some(format!(
            "revision {published} was published before the kill, the last row is {}",
            last.0
        ));
    }
    if let Some((revision, epoch)) = rows
        .iter()
        .find(|(r, e)| *r <= published && e.is_some_and(|e| e > old_epoch))
    {
        return Some(format!(
            "revision {revision}, published before the kill under epoch {old_epoch}, is now of \
             epoch {epoch:?}"
        ));
    }
    if last.1.is_none_or(|e| e <= old_epoch) {
        return Some(format!(
            "no commit of a newer lease than epoch {old_epoch} (last: revision {} of {:?})",
            last.0, last.1
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_is_whole_only_without_gap_rewrite_or_stale_write() {
        let rows = |r: &[(i64, i64)]| r.iter().map(|&(r, e)| (r, Some(e))).collect::<Vec<_>>();
        // Epoch 1 published up to 3, the new owner (epoch 2) went on at 4.
        assert_eq!(
            history_fault(&rows(&[(1, 1), (2, 1), (3, 1), (4, 2)]), 1, 3),
            None
        );
        // Pruned from the start: whole from the oldest kept.
        assert_eq!(history_fault(&rows(&[(3, 1), (4, 2), (5, 2)]), 1, 3), None);
        // A committed-but-unseen revision of the old owner counts too.
        assert_eq!(history_fault(&rows(&[(3, 1), (4, 1), (5, 2)]), 1, 3), None);

        let fault = |r: &[(i64, i64)], published| history_fault(&rows(r), 1, published).unwrap();
        assert!(fault(&[(1, 1), (2, 1), (4, 2)], 2).contains("jump from 2 to 4"));
        assert!(fault(&[(1, 1), (2, 2), (3, 1)], 1).contains("after revision 2"));
        assert!(fault(&[(1, 1), (2, 2)], 2).contains("revision 2, published"));
        assert!(fault(&[(1, 1), (2, 1)], 3).contains("revision 3 was published"));
        assert!(fault(&[(1, 1), (2, 1)], 2).contains("no commit of a newer lease"));
        assert!(history_fault(&[], 1, 0).unwrap().contains("no commit rows"));
        assert!(
            history_fault(&[(1, Some(1)), (2, None)], 1, 1)
                .unwrap()
                .contains("no epoch")
        );
    }
}
