//! `fleet-churn`: netsyncd's storage under a fleet's write load. Many
//! datastores, each changing and so committing every `commit_interval`, while
//! intents are written to them at a steady rate. Measured: commit latency
//! (markers, as in `churn`, on a sample of the datastores), the latency and
//! code of every intent call, commits and fsyncs per second, netsyncd's CPU
//! and memory.
//!
//! The datastores share one simulator, each with its own gNMI target name (as
//! in `fleet`). The simulator has one state for all targets, so every
//! datastore sees all of the device's changes: a device changing 20 leaves a
//! second gives each datastore 20 changes a second, and the simulator encodes
//! each change once per subscriber.
//!
//! Intents: every datastore has a base intent claiming one key leaf of the
//! device at its value, and the writer sets and deletes a second intent on the
//! same leaf (`intents.rs`). Revert is enabled, as it is where netsync keeps
//! devices at their intents, so every commit is also checked for drift. The
//! claimed leaves are key leaves, which churn never changes, so the fleet
//! conforms: no revert and no apply needs a Set. That matters because the
//! device is shared: a Set by one datastore would be a change for all of
//! them. The base intent is there for the same reason: deleting the only
//! intent on a leaf withdraws the leaf from the device.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::{StreamExt, TryStreamExt};
use netsync_proto::netsync::v1 as pb;

use super::fleet::create_in_sync;
use super::{Ctx, hold, settle_and_compare};
use crate::api::{Netsync, datastore};
use crate::device::{Device, is_key_leaf};
use crate::intents::{self, Call, Plan, Writer};
use crate::markers::{Latency, Markers, Watcher, latencies};
use crate::process::{NetsyncdOptions, Process, cpu_time_of, start_netsyncd_with, start_sim};
use crate::prometheus;
use crate::report::Report;

/// netsyncd's count of store transactions (a transaction is one fsync of the
/// WAL), if it has one.
const TRANSACTIONS: &str = "netsync_store_transactions_total";

/// The base intent of every datastore (see the module docs).
const BASE: &str = "bench-base";

/// SetIntent calls in flight while the base intents are set.
const CONCURRENT_BASE_INTENTS: usize = 4;

/// Tries of a base intent answered INTERNAL (the store busy: it happens with
/// a few concurrent intent writes and no other load) before the scenario
/// gives up: they are the set-up, not the measurement.
const BASE_INTENT_TRIES: u32 = 20;

/// Wait before a base intent is tried again.
const BASE_INTENT_BACKOFF: Duration = Duration::from_millis(50);

/// Longest wait for one intent call of the writer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let marker_rate = 1.0 / sizes.fleet_churn_marker_period.as_secs_f64();
    // Markers are changes of the device too.
    let churn_rate = sizes.fleet_churn_rate - marker_rate;
    ensure!(
        churn_rate > 0.0,
        "a device changing {}/s leaves no room for churn beside {marker_rate}/s of markers",
        sizes.fleet_churn_rate
    );
    let mut sim = start_sim(&ctx.bins, &dir.join("sim"), sizes.fleet_churn_leaves).await?;
    let options = NetsyncdOptions {
        metrics: true,
        trace_fsyncs: ctx.trace_fsyncs,
        commit_log: false,
    };
    let mut netsyncd = start_netsyncd_with(&ctx.bins, &dir.join("netsyncd"), options).await?;
    let metrics = netsyncd.logged_addr("metrics_listen").await?;
    let mut device = Device::connect(sim.addr).await?;
    let mut api = Netsync::connect(&netsyncd.url(), sizes.deadline).await?;
    let leaves = device.counters().await?.leaves;

    let names: Vec<String> = (0..sizes.fleet_churn_datastores)
        .map(|i| format!("fleet-{i:04}"))
        .collect();
    let device_addr = sim.addr;
    let specs = names.iter().map(|name| {
        let mut spec = datastore(name, device_addr, sizes.commit_interval);
        if let Some(target) = spec.target.as_mut() {
            target.target_name = name.clone();
        }
        // The default debounce (1 s).
        spec.revert = Some(pb::RevertConfig {
            enabled: true,
            debounce: None,
        });
        spec
    });
    let synced = create_in_sync(&api, specs, sizes.deadline, &mut sim, &mut netsyncd).await?;

    let targets = claims(&device, &names).await?;
    let base_started = Instant::now();
    let base_retries = set_base_intents(&api, &targets).await?;
    let base_took = base_started.elapsed();

    // Churn picks its leaves now: the markers, created later, are never
    // changed again before they are committed.
    device.fix_churn_population().await?;
    let sampled = sample(&names, sizes.fleet_churn_samples);
    let url = netsyncd.url();
    let watchers = futures::future::try_join_all(sampled.iter().map(|n| Watcher::open(&url, n)))
        .await
        .context("opening the watchers of the sampled datastores")?;
    device.start_churn(churn_rate, 3).await?;
    let markers = Markers::start(device.control.clone(), sizes.fleet_churn_marker_period, 0);
    let writer = Writer::start(
        Netsync::connect(&netsyncd.url(), sizes.deadline).await?,
        Plan {
            targets,
            writes_per_second: sizes.intent_writes_per_second,
            lifetime: sizes.intent_lifetime,
            timeout: CALL_TIMEOUT,
        },
    );

    hold(sizes.fleet_churn_warmup, &mut sim, &mut netsyncd).await?;
    // The window lies between the two instant counts; netsyncd's own
    // figures, which may keep the harness waiting, are read outside it.
    let told_first = Told::take(&mut api, metrics).await?;
    let first = Counts::take(&mut device, &sim, &netsyncd).await?;
    let largest_rss = hold(sizes.window, &mut sim, &mut netsyncd).await?;
    let last = Counts::take(&mut device, &sim, &netsyncd).await?;
    let told_last = Told::take(&mut api, metrics).await?;
    let peak_rss = netsyncd.memory()?.peak;

    let calls = writer.stop().await?;
    device.stop_churn().await?;
    let sent = markers.stop().await?;
    let mut commit_latencies = Vec::new();
    for watcher in &watchers {
        if let Some(marker) = sent.last() {
            watcher
                .wait_marker(marker.id, sizes.commit_interval + sizes.deadline)
                .await?;
        }
        commit_latencies.extend(
            latencies(&sent, &watcher.log().arrivals, first.at, last.at)
                .context("commit latency of a sampled datastore")?,
        );
    }
    drop(watchers);
    let compared: Vec<&str> = sampled.iter().map(String::as_str).collect();
    settle_and_compare(&mut device, &mut api, &compared, sizes.deadline).await?;
    sim.check_running()?;
    netsyncd.check_running()?;
    let end = Fleet::list(&mut api).await?;
    let logs = netsyncd.logs();
    let logged = Logged::of(
        logs.get(first.log_lines..last.log_lines)
            .unwrap_or_default(),
    );

    let seconds = last.at.duration_since(first.at).as_secs_f64();
    let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    let listed_seconds = told_last
        .listed_at
        .duration_since(told_first.listed_at)
        .as_secs_f64();
    let listed_per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / listed_seconds;
    let cores = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() / seconds;
    let count = names.len();
    let interval_ms = sizes.commit_interval.as_secs_f64() * 1e3;
    let mut report = Report::new("fleet-churn", ctx.quick);
    report.count("datastores", count as u64);
    report.count("leaves_each", leaves);
    report.count("sampled_datastores", sampled.len() as u64);
    report.seconds("all_in_sync_seconds", synced.in_sync);
    report.number("commit_interval_ms", interval_ms);
    report.number("device_changes_asked_per_second", sizes.fleet_churn_rate);
    report.number(
        "device_changes_per_second",
        per_second(first.device_changes, last.device_changes),
    );
    report.number(
        "ingest_per_datastore_per_second",
        listed_per_second(told_first.fleet.received, told_last.fleet.received)
            / count.max(1) as f64,
    );
    let commits_per_second = listed_per_second(told_first.fleet.commits, told_last.fleet.commits);
    report.rate("commits_per_second", commits_per_second);
    let commit = Latency::of(&commit_latencies);
    report.millis_if("commit_latency_p50_ms", commit.map(|l| l.p50));
    report.millis_if("commit_latency_p99_ms", commit.map(|l| l.p99));
    report.millis_if("commit_latency_max_ms", commit.map(|l| l.max));
    report.count("commit_latency_samples", commit_latencies.len() as u64);

    let sets = intents::summarise(&calls, Call::Set, first.at, last.at);
    let deletes = intents::summarise(&calls, Call::Delete, first.at, last.at);
    report.number(
        "intent_writes_per_second",
        (sets.calls + deletes.calls) as f64 / seconds,
    );
    report.count("set_intent_calls", sets.calls as u64);
    report.millis_if("set_intent_p50_ms", sets.latency.map(|l| l.p50));
    report.millis_if("set_intent_p99_ms", sets.latency.map(|l| l.p99));
    report.millis_if("set_intent_max_ms", sets.latency.map(|l| l.max));
    report.count("delete_intent_calls", deletes.calls as u64);
    report.millis_if("delete_intent_p50_ms", deletes.latency.map(|l| l.p50));
    report.millis_if("delete_intent_p99_ms", deletes.latency.map(|l| l.p99));
    report.millis_if("delete_intent_max_ms", deletes.latency.map(|l| l.max));
    let (in_window, outside): (Vec<_>, Vec<_>) = calls
        .iter()
        .cloned()
        .partition(|c| c.started >= first.at && c.started <= last.at);
    let errors = intents::errors(&in_window);
    report.count("intent_errors", errors.iter().map(|(_, n, _)| n).sum());
    for (code, n, _) in &errors {
        report.count(intents::errors_key(*code), *n);
    }
    let errors_outside = intents::errors(&outside);
    report.count(
        "intent_errors_outside_window",
        errors_outside.iter().map(|(_, n, _)| n).sum(),
    );
    report.seconds("base_intents_seconds", base_took);
    report.count("base_intent_retries", base_retries);

    let scraped_seconds = told_last
        .scraped_at
        .duration_since(told_first.scraped_at)
        .as_secs_f64();
    let transactions = told_first
        .transactions
        .zip(told_last.transactions)
        .map(|(a, b)| (b - a) / scraped_seconds);
    let traced = first.fsyncs.zip(last.fsyncs).map(|(a, b)| per_second(a, b));
    report.number_if("fsyncs_per_second", transactions.or(traced));
    if ctx.trace_fsyncs {
        report.number_if("traced_fsyncs_per_second", traced);
    }
    report.number_if(
        "fsyncs_per_commit",
        transactions
            .or(traced)
            .filter(|_| commits_per_second > 0.0)
            .map(|f| f / commits_per_second),
    );
    report.number(
        "netsyncd_cpu_cores",
        cores(first.netsyncd_cpu, last.netsyncd_cpu),
    );
    report.number("sim_cpu_cores", cores(first.sim_cpu, last.sim_cpu));
    report.number(
        "harness_cpu_cores",
        cores(first.harness_cpu, last.harness_cpu),
    );
    if let (Some(a), Some(b)) = (first.tracer_cpu, last.tracer_cpu) {
        report.number("strace_cpu_cores", cores(a, b));
    }
    report.bytes("rss_bytes", largest_rss);
    report.bytes("peak_rss_bytes", peak_rss);
    report.count(
        "reconnects",
        told_last
            .fleet
            .reconnects
            .saturating_sub(told_first.fleet.reconnects),
    );
    report.count(
        "resyncs",
        told_last
            .fleet
            .resyncs
            .saturating_sub(told_first.fleet.resyncs),
    );
    report.millis("list_datastores_ms", told_last.list_took);
    report.count("datastores_not_in_sync", end.not_in_sync);
    report.count("datastores_with_last_error", end.with_error.len() as u64);
    report.count("netsyncd_errors_logged", logged.errors.values().sum());
    report.count("netsyncd_warnings_logged", logged.warnings.values().sum());
    report.flag("running_equals_device", true);
    report.at_most("commit_latency_p99_ms", interval_ms + 100.0);
    report.at_most("set_intent_p99_ms", 100.0);
    report.at_most("intent_errors", 0.0);

    for (code, n, message) in &errors {
        report.note(format!(
            "intent calls in the window answered {code:?}: {n}, e.g. {message:?}"
        ));
    }
    for (what, problems) in [("error", &logged.errors), ("warning", &logged.warnings)] {
        let mut top: Vec<(&String, &u64)> = problems.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (text, n) in top.into_iter().take(5) {
            report.note(format!(
                "netsyncd logged in the window {n} x {what}: {text}"
            ));
        }
    }
    if let Some((name, error)) = end.with_error.first() {
        report.note(format!("last error of {name}: {error:?}"));
    }
    report.note(format!(
        "window {:.1} s after {:.1} s of churn and intent writes; one simulator for all datastores, \
         its device changing {}/s ({churn_rate}/s churn, {marker_rate}/s markers) and each \
         datastore seeing all of it; commit latency = marker set on the device to its WatchSync \
         commit event, on {} sampled datastores; intents: {}/s, SetIntent then DeleteIntent {:.1} \
         s later, each datastore in turn, on a key leaf a base intent also claims (no Set needed), \
         revert enabled; intent_errors = calls started in the window not answered OK; cpu = \
         utime+stime of /proc/PID/stat over the window; commits and ingest between the answers \
         of the ListDatastores calls around the window (they wait for netsyncd's store: \
         list_datastores_ms); base intents set before the load, {CONCURRENT_BASE_INTENTS} calls \
         in flight",
        seconds,
        sizes.fleet_churn_warmup.as_secs_f64(),
        sizes.fleet_churn_rate,
        sampled.len(),
        sizes.intent_writes_per_second,
        intents::delete_after(sizes.intent_writes_per_second, sizes.intent_lifetime).as_secs_f64(),
    ));
    report.note(match (transactions.is_some(), ctx.trace_fsyncs) {
        (true, _) => format!("fsyncs = store transactions ({TRANSACTIONS}), one WAL fsync each"),
        (false, true) => format!(
            "fsyncs = fsync and fdatasync calls of netsyncd counted by strace (netsyncd has no \
             {TRANSACTIONS}); strace slows netsyncd, so this run's other figures are not \
             netsyncd's own"
        ),
        (false, false) => format!(
            "fsyncs n/a: netsyncd has no {TRANSACTIONS}; --trace-fsyncs counts its fsync calls \
             with strace"
        ),
    });
    Ok(report)
}

/// For each datastore, the leaf its intents claim: a key leaf of the device
/// (churn never changes one), at its value; the datastores take them in turn.
async fn claims(device: &Device, names: &[String]) -> anyhow::Result<Vec<(String, pb::Leaf)>> {
    let leaves = device.leaves().await?;
    let mut keys: Vec<(&String, _)> = leaves.iter().filter(|(p, _)| is_key_leaf(p)).collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    ensure!(!keys.is_empty(), "the device has no key leaf to claim");
    Ok(names
        .iter()
        .zip(keys.iter().cycle())
        .map(|(name, (path, value))| {
            let leaf = pb::Leaf {
                path: (*path).clone(),
                value: Some((*value).clone()),
                owner: String::new(),
            };
            (name.clone(), leaf)
        })
        .collect())
}

/// Sets the base intent of every datastore, before any load. A call answered
/// INTERNAL is tried again (up to [`BASE_INTENT_TRIES`] times); returns how
/// many were.
async fn set_base_intents(api: &Netsync, targets: &[(String, pb::Leaf)]) -> anyhow::Result<u64> {
    let retries = futures::stream::iter(targets.iter().map(|(name, leaf)| {
        let mut api = api.clone();
        let request = pb::SetIntentRequest {
            datastore: name.clone(),
            intent: Some(pb::Intent {
                name: BASE.into(),
                priority: 100,
                updates: vec![leaf.clone()],
                ..Default::default()
            }),
            validate_only: false,
            ..Default::default()
        };
        async move {
            let mut tries = 1;
            loop {
                match api.client.set_intent(request.clone()).await {
                    Ok(_) => return anyhow::Ok(u64::from(tries - 1)),
                    Err(status)
                        if status.code() == tonic::Code::Internal && tries < BASE_INTENT_TRIES =>
                    {
                        tries += 1;
                        tokio::time::sleep(BASE_INTENT_BACKOFF).await;
                    }
                    Err(status) => {
                        return Err(status).with_context(|| format!("SetIntent {BASE} on {name}"));
                    }
                }
            }
        }
    }))
    .buffer_unordered(CONCURRENT_BASE_INTENTS)
    .try_collect::<Vec<u64>>()
    .await?;
    Ok(retries.iter().sum())
}

/// `count` of `names`, evenly spread (the first among them).
fn sample(names: &[String], count: usize) -> Vec<String> {
    let count = count.clamp(1, names.len().max(1));
    (0..count)
        .filter_map(|i| names.get(i * names.len() / count).cloned())
        .collect()
}

/// Sums over every datastore of netsyncd.
#[derive(Debug, Clone, Default)]
struct Fleet {
    commits: u64,
    received: u64,
    reconnects: u64,
    resyncs: u64,
    not_in_sync: u64,
    /// Datastores whose status holds an error, with it.
    with_error: Vec<(String, String)>,
}

impl Fleet {
    /// ListDatastores, summed.
    async fn list(api: &mut Netsync) -> anyhow::Result<Self> {
        let datastores =
            netsync_testkit::client::list_datastores(&mut api.client, "", pb::DatastoreView::Basic)
                .await
                .context("ListDatastores")?;
        let mut fleet = Self::default();
        for ds in datastores {
            let status = ds.status.unwrap_or_default();
            let stats = status.stats.unwrap_or_default();
            fleet.received += stats.updates_received + stats.deletes_received;
            fleet.commits += stats.commits;
            fleet.reconnects += stats.reconnects;
            fleet.resyncs += stats.resyncs;
            if status.state != pb::SyncState::InSync as i32 {
                fleet.not_in_sync += 1;
            }
            if !status.last_error.is_empty() {
                fleet.with_error.push((ds.name, status.last_error));
            }
        }
        Ok(fleet)
    }
}

/// What is counted at one end of the window, read from the processes and
/// the simulator, which answer at once.
struct Counts {
    at: Instant,
    /// The simulator's leaf changes made.
    device_changes: u64,
    netsyncd_cpu: Duration,
    sim_cpu: Duration,
    harness_cpu: Duration,
    tracer_cpu: Option<Duration>,
    /// netsyncd's fsync calls, if traced.
    fsyncs: Option<u64>,
    /// JSON lines netsyncd has logged.
    log_lines: usize,
}

impl Counts {
    async fn take(device: &mut Device, sim: &Process, netsyncd: &Process) -> anyhow::Result<Self> {
        let device_changes = device.counters().await?.changes_committed;
        Ok(Self {
            at: Instant::now(),
            device_changes,
            netsyncd_cpu: netsyncd.cpu_time()?,
            sim_cpu: sim.cpu_time()?,
            harness_cpu: cpu_time_of(std::process::id())?,
            tracer_cpu: netsyncd.tracer_cpu_time()?,
            fsyncs: netsyncd.fsyncs()?,
            log_lines: netsyncd.logs().len(),
        })
    }
}

/// What netsyncd tells at one end of the window. Both calls wait for its
/// store (ListDatastores reads the registry, the metrics read the reconcile
/// queue), which under this load can take seconds; each figure is read once
/// the store has answered, so it is timed by when its answer arrived.
struct Told {
    fleet: Fleet,
    listed_at: Instant,
    /// How long ListDatastores took.
    list_took: Duration,
    /// netsyncd's store transactions, if it counts them.
    transactions: Option<f64>,
    scraped_at: Instant,
}

impl Told {
    async fn take(api: &mut Netsync, metrics: std::net::SocketAddr) -> anyhow::Result<Self> {
        let asked = Instant::now();
        let fleet = Fleet::list(api).await?;
        let listed_at = Instant::now();
        let exposition = prometheus::scrape(metrics).await?;
        Ok(Self {
            fleet,
            listed_at,
            list_took: listed_at.duration_since(asked),
            transactions: prometheus::sum(&exposition, TRANSACTIONS),
            scraped_at: Instant::now(),
        })
    }
}

/// netsyncd's ERROR and WARN log lines, counted by what they say.
#[derive(Debug, Default)]
struct Logged {
    errors: HashMap<String, u64>,
    warnings: HashMap<String, u64>,
}

impl Logged {
    fn of(lines: &[serde_json::Value]) -> Self {
        let mut logged = Self::default();
        for line in lines {
            let field = |name: &str| {
                line.get(name)
                    .or_else(|| line.get("fields")?.get(name))
                    .and_then(|v| v.as_str())
            };
            let counts = match field("level") {
                Some("ERROR") => &mut logged.errors,
                Some("WARN") => &mut logged.warnings,
                _ => continue,
            };
            let mut text = field("message").unwrap_or("").to_string();
            if let Some(error) = field("error") {
                text = format!("{text}: {error}");
            }
            *counts.entry(text).or_insert(0) += 1;
        }
        logged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_spread() {
        let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(sample(&names, 3), ["0", "3", "6"]);
        assert_eq!(sample(&names, 20).len(), 10);
        assert_eq!(sample(&names[..1], 4), ["0"]);
        assert!(sample(&[], 4).is_empty());
    }

    #[test]
    fn problems_are_counted_by_message_and_error() {
        let lines: Vec<serde_json::Value> = [
            r#"{"level":"ERROR","message":"internal error","error":"store: database is locked"}"#,
            r#"{"level":"ERROR","message":"internal error","error":"store: database is locked"}"#,
            r#"{"level":"WARN","fields":{"message":"reconcile attempt failed"}}"#,
            r#"{"level":"INFO","message":"intent set"}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let logged = Logged::of(&lines);
        assert_eq!(
            logged.errors["internal error: store: database is locked"],
            2
        );
        assert_eq!(logged.warnings["reconcile attempt failed"], 1);
        assert_eq!(logged.errors.len() + logged.warnings.len(), 2);
    }
}
