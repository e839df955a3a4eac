//! The scenarios of issue 6 (and `failover`, of replica mode) and what they share: their sizes, the churn
//! measurement windows, and the end-of-run check that running equals the
//! device.

mod churn;
mod failover;
mod fleet;
mod fleet_churn;
mod initial_sync;
mod intent_apply;
mod restart;
mod stall;
mod watchers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netsync_core::value;
use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;

use crate::api::{self, Netsync};
use crate::binaries::Binaries;
use crate::device::{Device, uint};
use crate::markers::{Markers, Sent, WatchLog, Watcher};
use crate::process::{NetsyncdOptions, Process, start_netsyncd_with, start_sim};
use crate::report::Report;

/// A scenario, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A 1,000,000-leaf device's initial sync against a bare gNMI client.
    InitialSync,
    /// 100,000 leaves churning as fast as the simulator goes.
    Churn,
    /// Churn while every revert Set is held for 30 s.
    Stall,
    /// netsyncd restarted with 1,000,000 leaves in SQLite.
    Restart,
    /// 1,000 datastores of 2,000 leaves on one netsyncd.
    Fleet,
    /// 100 WatchSync clients on one churning datastore.
    Watchers,
    /// 1,000 churning datastores committing every second while intents are
    /// written: netsyncd's storage under a fleet's write load.
    FleetChurn,
    /// SetIntent to APPLIED on datastores of a churning device.
    IntentApply,
    /// Three replicas on PostgreSQL, one killed: time until its datastores
    /// are IN_SYNC on the others.
    Failover,
    /// Every scenario, in this order.
    All,
}

impl Scenario {
    /// Every scenario `all` runs, in order.
    pub const EACH: [Scenario; 9] = [
        Scenario::InitialSync,
        Scenario::Churn,
        Scenario::Stall,
        Scenario::Restart,
        Scenario::Fleet,
        Scenario::Watchers,
        Scenario::FleetChurn,
        Scenario::IntentApply,
        Scenario::Failover,
    ];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::InitialSync => "initial-sync",
            Scenario::Churn => "churn",
            Scenario::Stall => "stall",
            Scenario::Restart => "restart",
            Scenario::Fleet => "fleet",
            Scenario::Watchers => "watchers",
            Scenario::FleetChurn => "fleet-churn",
            Scenario::IntentApply => "intent-apply",
            Scenario::Failover => "failover",
            Scenario::All => "all",
        }
    }
}

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Leaves of the `initial-sync` device.
    pub initial_leaves: usize,
    /// Leaves of the `churn` and `stall` device.
    pub churn_leaves: usize,
    /// Changes per second asked of the simulator in `churn` and `stall`: at
    /// full size its highest rate on the 2-core machine with netsyncd beside
    /// it (asked for more, it falls behind and answers SimControl too late to
    /// place markers).
    pub churn_rate: f64,
    /// Churn before a measuring window starts.
    pub warmup: Duration,
    /// Length of a measuring window.
    pub window: Duration,
    /// The datastores' `commit_interval`.
    pub commit_interval: Duration,
    /// How long each Set is held in `stall`.
    pub stall_hold: Duration,
    /// The stalled window of `stall` (longer than the hold, so that a held
    /// Set lies inside it).
    pub stall_window: Duration,
    /// Longest warm-up of `stall`: it ends earlier once netsyncd's resident
    /// set has levelled off.
    pub stall_warmup_max: Duration,
    /// Leaves the `stall` intent claims.
    pub intent_leaves: usize,
    /// Time between two intent writes of the `stall` probe.
    pub stall_probe_period: Duration,
    /// Leaves of the `restart` device.
    pub restart_leaves: usize,
    /// Datastores in `fleet`.
    pub fleet_datastores: usize,
    /// Leaves of each `fleet` device.
    pub fleet_leaves: usize,
    /// Extra watchers in `watchers`.
    pub watchers: usize,
    /// Leaves of the `watchers` device.
    pub watchers_leaves: usize,
    /// Churn rate in `watchers`.
    pub watchers_churn_rate: f64,
    /// Time between markers.
    pub marker_period: Duration,
    /// Datastores in `fleet-churn`.
    pub fleet_churn_datastores: usize,
    /// Leaves of the `fleet-churn` device.
    pub fleet_churn_leaves: usize,
    /// Leaf changes per second of the `fleet-churn` device, which each of its
    /// datastores sees: churn plus markers.
    pub fleet_churn_rate: f64,
    /// Time between markers in `fleet-churn` (each one a change of the
    /// device, so few).
    pub fleet_churn_marker_period: Duration,
    /// Datastores of `fleet-churn` whose commit latency is measured.
    pub fleet_churn_samples: usize,
    /// Churn and intent writes before the `fleet-churn` window.
    pub fleet_churn_warmup: Duration,
    /// SetIntent and DeleteIntent calls per second in `fleet-churn`, together.
    pub intent_writes_per_second: f64,
    /// From an intent's SetIntent to its DeleteIntent in `fleet-churn`.
    pub intent_lifetime: Duration,
    /// Leaves of the `intent-apply` device.
    pub apply_leaves: usize,
    /// Changes per second of the `intent-apply` device: a busy real device,
    /// not the simulator's limit (`BENCHMARKS.md` says why).
    pub apply_churn_rate: f64,
    /// Datastores of the `intent-apply` device, each with a client writing
    /// an intent (PROTO and JSON_IETF in turn).
    pub apply_datastores: usize,
    /// The measuring window of `intent-apply`: long enough for a few hundred
    /// writes, so that the p99 is not the maximum.
    pub apply_window: Duration,
    /// Datastores in `failover`, shared out among the three replicas.
    pub failover_datastores: usize,
    /// Leaves of the `failover` device.
    pub failover_leaves: usize,
    /// The replicas' lease in `failover`: a killed replica's datastores wait
    /// for its expiry and the next round (a third of it) before their resync.
    pub failover_lease: Duration,
    /// Leaf changes per second of the `failover` device, which every
    /// datastore sees: revisions go on across the kill, so that one lost or
    /// written twice would show.
    pub failover_churn_rate: f64,
    /// Generous deadline of every wait (a sync, a state, a marker).
    pub deadline: Duration,
}

impl Sizes {
    /// The sizes of issue 6.
    pub fn full() -> Self {
        Self {
            initial_leaves: 1_000_000,
            churn_leaves: 100_000,
            churn_rate: 550_000.0,
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(20),
            commit_interval: Duration::from_secs(1),
            stall_hold: Duration::from_secs(30),
            stall_window: Duration::from_secs(45),
            stall_warmup_max: Duration::from_secs(60),
            intent_leaves: 100,
            stall_probe_period: Duration::from_millis(250),
            restart_leaves: 1_000_000,
            fleet_datastores: 1_000,
            fleet_leaves: 2_000,
            watchers: 100,
            watchers_leaves: 100_000,
            watchers_churn_rate: 10_000.0,
            marker_period: Duration::from_millis(10),
            fleet_churn_datastores: 1_000,
            fleet_churn_leaves: 2_000,
            fleet_churn_rate: 20.0,
            fleet_churn_marker_period: Duration::from_millis(200),
            fleet_churn_samples: 10,
            fleet_churn_warmup: Duration::from_secs(8),
            intent_writes_per_second: 10.0,
            intent_lifetime: Duration::from_secs(5),
            apply_leaves: 100_000,
            apply_churn_rate: 10_000.0,
            apply_datastores: 8,
            apply_window: Duration::from_secs(60),
            failover_datastores: 1_000,
            failover_leaves: 2_000,
            // Failover = what is left of the lease (up to 5 s) + a round (up
            // to 1.7 s) + the resync of a third of the fleet: the 15 s
            // target leaves the resync about 8 s.
            failover_lease: Duration::from_secs(5),
            failover_churn_rate: 1.0,
            deadline: Duration::from_secs(300),
        }
    }

    /// Small sizes: every scenario in a few seconds, for CI.
    pub fn quick() -> Self {
        Self {
            initial_leaves: 20_000,
            churn_leaves: 20_000,
            churn_rate: 10_000.0,
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(2),
            commit_interval: Duration::from_millis(250),
            stall_hold: Duration::from_secs(2),
            stall_window: Duration::from_secs(3),
            stall_warmup_max: Duration::from_secs(1),
            intent_leaves: 20,
            stall_probe_period: Duration::from_millis(100),
            restart_leaves: 20_000,
            fleet_datastores: 20,
            fleet_leaves: 500,
            watchers: 10,
            watchers_leaves: 20_000,
            watchers_churn_rate: 2_000.0,
            marker_period: Duration::from_millis(10),
            fleet_churn_datastores: 20,
            fleet_churn_leaves: 200,
            fleet_churn_rate: 20.0,
            fleet_churn_marker_period: Duration::from_millis(200),
            fleet_churn_samples: 4,
            fleet_churn_warmup: Duration::from_millis(1500),
            intent_writes_per_second: 10.0,
            intent_lifetime: Duration::from_secs(1),
            apply_leaves: 20_000,
            apply_churn_rate: 2_000.0,
            apply_datastores: 2,
            apply_window: Duration::from_secs(4),
            failover_datastores: 30,
            failover_leaves: 200,
            failover_lease: Duration::from_secs(3),
            failover_churn_rate: 1.0,
            deadline: Duration::from_secs(60),
        }
    }
}

/// What every scenario gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The executables.
    pub bins: Binaries,
    /// The sizes.
    pub sizes: Sizes,
    /// Whether these are the quick sizes.
    pub quick: bool,
    /// Whether `fleet-churn` runs netsyncd under strace to count its fsyncs.
    pub trace_fsyncs: bool,
}

/// Runs one scenario (not `all`) with its files under `dir`.
pub async fn run(scenario: Scenario, ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    match scenario {
        Scenario::InitialSync => initial_sync::run(ctx, dir).await,
        Scenario::Churn => churn::run(ctx, dir).await,
        Scenario::Stall => stall::run(ctx, dir).await,
        Scenario::Restart => restart::run(ctx, dir).await,
        Scenario::Fleet => fleet::run(ctx, dir).await,
        Scenario::Watchers => watchers::run(ctx, dir).await,
        Scenario::FleetChurn => fleet_churn::run(ctx, dir).await,
        Scenario::IntentApply => intent_apply::run(ctx, dir).await,
        Scenario::Failover => failover::run(ctx, dir).await,
        Scenario::All => bail!("`all` is a list of scenarios, not one"),
    }
}

/// A simulator and a netsyncd started for one scenario under its folder,
/// with a client of each: what the churning scenarios share.
pub struct Rig {
    /// The simulator process.
    pub sim: Process,
    /// The netsyncd process.
    pub netsyncd: Process,
    /// The simulator's control client.
    pub device: Device,
    /// netsyncd's API client.
    pub api: Netsync,
    /// Leaves the device started with.
    pub leaves: u64,
}

impl Rig {
    /// Starts a simulator of `leaves` generated leaves and a netsyncd, each
    /// in a folder of its own under `dir`.
    pub async fn start(ctx: &Ctx, dir: &Path, leaves: usize) -> anyhow::Result<Self> {
        Self::start_with(ctx, dir, leaves, NetsyncdOptions::default()).await
    }

    /// [`Rig::start`] with netsyncd started with `options`.
    pub async fn start_with(
        ctx: &Ctx,
        dir: &Path,
        leaves: usize,
        options: NetsyncdOptions,
    ) -> anyhow::Result<Self> {
        let sim = start_sim(&ctx.bins, &dir.join("sim"), leaves).await?;
        let netsyncd = start_netsyncd_with(&ctx.bins, &dir.join("netsyncd"), options).await?;
        let mut device = Device::connect(sim.addr).await?;
        let api = Netsync::connect(&netsyncd.url(), ctx.sizes.deadline).await?;
        let leaves = device.counters().await?.leaves;
        Ok(Self {
            sim,
            netsyncd,
            device,
            api,
            leaves,
        })
    }

    /// Lets `window` pass (see [`hold`]).
    pub async fn hold(&mut self, window: Duration) -> anyhow::Result<u64> {
        hold(window, &mut self.sim, &mut self.netsyncd).await
    }

    /// Measures a window of `window` on datastore `name` (see [`Phase`]).
    pub async fn measure(&mut self, window: Duration, name: &str) -> anyhow::Result<Phase> {
        Phase::measure(
            window,
            name,
            &mut self.device,
            &mut self.api,
            &mut self.sim,
            &mut self.netsyncd,
        )
        .await
    }

    /// Starts churn at `rate` with markers on datastore `name` (see
    /// [`Churning`]).
    pub async fn churn(
        &mut self,
        name: &str,
        rate: f64,
        period: Duration,
    ) -> anyhow::Result<Churning> {
        Churning::start(&mut self.device, &self.netsyncd, name, rate, period).await
    }

    /// After churn: running of `name` equals the device (see
    /// [`settle_and_compare`]) and both processes still run.
    pub async fn settle_and_compare(
        &mut self,
        name: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        settle_and_compare(&mut self.device, &mut self.api, &[name], deadline).await?;
        self.sim.check_running()?;
        self.netsyncd.check_running()
    }
}

/// Lets `window` pass, checking every 100 ms that both processes still run
/// and sampling netsyncd's resident set; returns the largest sample.
pub async fn hold(
    window: Duration,
    sim: &mut Process,
    netsyncd: &mut Process,
) -> anyhow::Result<u64> {
    let end = Instant::now() + window;
    let mut largest = 0;
    loop {
        sim.check_running()?;
        netsyncd.check_running()?;
        largest = largest.max(netsyncd.memory()?.rss);
        let now = Instant::now();
        if now >= end {
            return Ok(largest);
        }
        tokio::time::sleep((end - now).min(Duration::from_millis(100))).await;
    }
}

/// Lets at least `least` pass, then goes on in slices of `slice` until the
/// largest resident set of netsyncd in a slice is at most 2 % above the
/// largest before it, or `most` has passed. Returns the time taken.
///
/// Under churn netsyncd's memory grows for a while after the start (buffers
/// and caches filling) before it levels off; a window measured from the start
/// would count that growth as the window's.
pub async fn warm_up(
    least: Duration,
    most: Duration,
    slice: Duration,
    rig: &mut Rig,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut largest = rig.hold(least).await?;
    while start.elapsed() + slice <= most {
        let in_slice = rig.hold(slice).await?;
        let levelled = in_slice as f64 <= largest as f64 * 1.02;
        largest = largest.max(in_slice);
        if levelled {
            break;
        }
    }
    Ok(start.elapsed())
}

/// Counters of one measuring window, read from both sides at its ends.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// When it started.
    pub from: Instant,
    /// When it ended.
    pub to: Instant,
    /// Updates and deletes netsyncd read from the device (its status).
    pub received: u64,
    /// Leaf changes made on the device (its counters).
    pub changes: u64,
    /// Commits netsyncd made.
    pub commits: u64,
    /// Times netsyncd connected to the device again (the simulator cuts a
    /// subscriber that falls too far behind).
    pub reconnects: u64,
    /// gNMI Sets the simulator received.
    pub sets: u64,
    /// Resident set of netsyncd when the window started.
    pub first_rss: u64,
    /// Largest resident set of netsyncd sampled.
    pub largest_rss: u64,
}

impl Phase {
    /// Measures a window of `window` on datastore `name`.
    pub async fn measure(
        window: Duration,
        name: &str,
        device: &mut Device,
        api: &mut Netsync,
        sim: &mut Process,
        netsyncd: &mut Process,
    ) -> anyhow::Result<Self> {
        let status = api.status(name).await?;
        let counters = device.counters().await?;
        let first_rss = netsyncd.memory()?.rss;
        let from = Instant::now();
        let largest_rss = hold(window, sim, netsyncd).await?;
        let to = Instant::now();
        let status_after = api.status(name).await?;
        let counters_after = device.counters().await?;
        let commits = |s: &netsync_proto::netsync::v1::DatastoreStatus| {
            s.stats.as_ref().map_or(0, |s| s.commits)
        };
        let reconnects = |s: &netsync_proto::netsync::v1::DatastoreStatus| {
            s.stats.as_ref().map_or(0, |s| s.reconnects)
        };
        Ok(Self {
            from,
            to,
            received: api::received(&status_after).saturating_sub(api::received(&status)),
            changes: counters_after
                .changes_committed
                .saturating_sub(counters.changes_committed),
            reconnects: reconnects(&status_after).saturating_sub(reconnects(&status)),
            commits: commits(&status_after).saturating_sub(commits(&status)),
            sets: counters_after
                .sets_received
                .saturating_sub(counters.sets_received),
            first_rss,
            largest_rss,
        })
    }

    /// Its length in seconds.
    pub fn seconds(&self) -> f64 {
        self.to.duration_since(self.from).as_secs_f64()
    }

    /// Updates and deletes netsyncd read, per second.
    pub fn ingest_rate(&self) -> f64 {
        self.received as f64 / self.seconds()
    }

    /// How much netsyncd's resident set grew during the window, as a share
    /// of what it was at the start.
    pub fn rss_growth(&self) -> f64 {
        self.largest_rss as f64 / self.first_rss.max(1) as f64 - 1.0
    }

    /// Leaf changes made on the device, per second.
    pub fn device_rate(&self) -> f64 {
        self.changes as f64 / self.seconds()
    }
}

/// The leaf that [`settle_and_compare`] sets to know running has caught up.
const FENCE_PATH: &str = "/netsync-bench/fence";

/// Values of the fence leaf: unique within this process, so each one is a change.
static FENCE: AtomicU64 = AtomicU64::new(1);

/// Once the device has stopped changing, checks that running of each of
/// `datastores` equals the device exactly. Returns the leaves compared.
///
/// How: note the device's change count, set a fence leaf to a new value, wait
/// until running shows it (the stream is ordered, so running then holds every
/// change made before), read the device and running, and compare them if the
/// device made no other change meanwhile (else try again: a revert may still
/// be on its way).
///
/// The device is read in PROTO encoding: a PROTO datastore must hold exactly
/// those values; one that syncs in another encoding (JSON_IETF) holds them as
/// the device wrote them there, and is compared by meaning
/// (`netsync_core::value::same_meaning`, as netsyncd compares intents).
pub async fn settle_and_compare(
    device: &mut Device,
    api: &mut Netsync,
    datastores: &[&str],
    deadline: Duration,
) -> anyhow::Result<usize> {
    let give_up = Instant::now() + deadline;
    let mut sameness = Vec::new();
    for name in datastores {
        sameness.push(Sameness::of(api, name).await?);
    }
    loop {
        let before = device.counters().await?.changes_committed;
        let fence = FENCE.fetch_add(1, Ordering::Relaxed);
        device.set_leaf(FENCE_PATH, uint(fence)).await?;
        for (name, same) in datastores.iter().zip(&sameness) {
            wait_for_leaf(api, name, FENCE_PATH, &uint(fence), *same, give_up).await?;
        }
        let expected = device.leaves().await?;
        let mut differences = Vec::new();
        for (name, same) in datastores.iter().zip(&sameness) {
            if let Err(e) = compare(api, name, &expected, *same).await {
                differences.push(format!("{e:#}"));
            }
        }
        let after = device.counters().await?.changes_committed;
        if after == before + 1 {
            if differences.is_empty() {
                return Ok(expected.len());
            }
            bail!("{}", differences.join("; "));
        }
        // The device changed meanwhile: not settled yet.
        if Instant::now() >= give_up {
            bail!("the device kept changing for {deadline:?} after the scenario stopped it");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a datastore's running is compared with the device's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sameness {
    /// Byte for byte: the datastore syncs in PROTO, as the device is read.
    Exact,
    /// By meaning: the device sends this datastore another encoding.
    Meaning,
}

impl Sameness {
    /// How running of `name` is compared, by its encoding.
    async fn of(api: &mut Netsync, name: &str) -> anyhow::Result<Self> {
        let spec = api
            .client
            .get_datastore(pb::GetDatastoreRequest { name: name.into() })
            .await
            .with_context(|| format!("GetDatastore {name}"))?
            .into_inner();
        let encoding = spec.target.map_or(0, |t| t.encoding);
        Ok(if encoding == pb::Encoding::Proto as i32 {
            Self::Exact
        } else {
            Self::Meaning
        })
    }

    /// Whether running's `actual` stands for the device's `expected`.
    fn same(self, actual: &gnmi::TypedValue, expected: &gnmi::TypedValue) -> bool {
        match self {
            Self::Exact => actual == expected,
            Self::Meaning => actual == expected || value::same_meaning(actual, expected),
        }
    }
}

/// Polls running of `name` until `path` holds `value`.
async fn wait_for_leaf(
    api: &mut Netsync,
    name: &str,
    path: &str,
    value: &gnmi::TypedValue,
    sameness: Sameness,
    give_up: Instant,
) -> anyhow::Result<()> {
    loop {
        if api
            .leaves(name, path)
            .await?
            .get(path)
            .is_some_and(|v| sameness.same(v, value))
        {
            return Ok(());
        }
        if Instant::now() >= give_up {
            bail!("{name}: the device's change of {path} never reached running");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Compares running of `name` with `expected`, leaf by leaf.
async fn compare(
    api: &mut Netsync,
    name: &str,
    expected: &HashMap<String, gnmi::TypedValue>,
    sameness: Sameness,
) -> anyhow::Result<()> {
    let mut stream = api.running(name, "/").await?;
    let mut matched = 0usize;
    let mut extra = Vec::new();
    let mut changed = Vec::new();
    while let Some(message) = stream.message().await.context("GetRunning")? {
        for leaf in message.leaves {
            match expected.get(&leaf.path) {
                None => extra.push(leaf.path),
                Some(value)
                    if !leaf
                        .value
                        .as_ref()
                        .is_some_and(|actual| sameness.same(actual, value)) =>
                {
                    changed.push(leaf.path);
                }
                Some(_) => matched += 1,
            }
        }
    }
    let missing = expected.len() - matched - changed.len();
    if extra.is_empty() && changed.is_empty() && missing == 0 {
        return Ok(());
    }
    let examples = |paths: &[String]| paths.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    let mut missing_examples = Vec::new();
    if missing > 0 {
        let running = api.leaves(name, "/").await?;
        missing_examples.extend(
            expected
                .keys()
                .filter(|p| !running.contains_key(*p))
                .take(3)
                .cloned(),
        );
    }
    bail!(
        "running of {name} differs from the device: {missing} leaves missing ({}), {} extra ({}), \
         {} with another value ({})",
        missing_examples.join(", "),
        extra.len(),
        examples(&extra),
        changed.len(),
        examples(&changed),
    )
}

/// The resyncs netsyncd counted for a datastore: how a lost change would
/// show (the engine heals a loss by a resync, which a final comparison with
/// the device cannot see), so a run with no fault injected expects none.
pub fn resyncs(status: &netsync_proto::netsync::v1::DatastoreStatus) -> u64 {
    status.stats.as_ref().map_or(0, |s| s.resyncs)
}

/// Churn on the device with markers set and watched: the set-up of every
/// latency and throughput measurement.
pub struct Churning {
    watcher: Watcher,
    markers: Markers,
}

impl Churning {
    /// Starts churn at `rate` on the device of datastore `name`, a watcher of
    /// `name` and markers every `period`.
    pub async fn start(
        device: &mut Device,
        netsyncd: &Process,
        name: &str,
        rate: f64,
        period: Duration,
    ) -> anyhow::Result<Self> {
        device.fix_churn_population().await?;
        let watcher = Watcher::open(&netsyncd.url(), name).await?;
        device.start_churn(rate, 2).await?;
        let markers = Markers::start(device.control.clone(), period, 0);
        Ok(Self { watcher, markers })
    }

    /// Stops churn and markers, waits (up to `deadline`) for the last marker's
    /// commit, and returns the markers and what the watcher saw.
    pub async fn stop(
        self,
        device: &mut Device,
        deadline: Duration,
    ) -> anyhow::Result<(Vec<Sent>, WatchLog)> {
        device.stop_churn().await?;
        let sent = self.markers.stop().await?;
        if let Some(last) = sent.last() {
            self.watcher.wait_marker(last.id, deadline).await?;
        }
        Ok((sent, self.watcher.stop()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_is_compared_exactly_or_by_meaning() {
        let text = |s: &str| gnmi::TypedValue {
            value: Some(gnmi::typed_value::Value::JsonIetfVal(s.as_bytes().to_vec())),
        };
        // RFC 7951 writes a uint64 as a JSON string.
        assert!(Sameness::Meaning.same(&text("\"7\""), &uint(7)));
        assert!(!Sameness::Exact.same(&text("\"7\""), &uint(7)));
        assert!(Sameness::Exact.same(&uint(7), &uint(7)));
        assert!(!Sameness::Meaning.same(&text("\"8\""), &uint(7)));
    }
}
