//! `stall`: `churn` on a datastore with a revertive intent, so that churn
//! drifts the intent's leaves and netsyncd sends revert Sets. First a window
//! with Sets answered at once, then one with every Set held by the device
//! (the simulator's `set_delay` fault). netsyncd's ingest must not slow down,
//! its memory must not grow, nothing may be dropped, and running must equal
//! the device at the end. While a Set is held, intent writes on the datastore
//! must not wait for the device: each answers once its SQLite transaction has
//! committed, through the one writer that also persists the churn's commits,
//! so it may wait for one such commit in front of it. Its target is therefore
//! relative to them: the longest intent write at most the longest commit
//! persist in the window plus 100 ms. netsyncd logs each commit's persist
//! time (the committer's debug line), and its RPC histogram tells whether a
//! slow write was slow in the server or on the way to it.
//!
//! Churn changes the intent's leaves back after every revert, which is the
//! fight netsyncd ends by marking the intent FAILING (`RECONCILE.md`): the
//! intent is written again before each window, so that each starts with
//! reverts going out.

use std::path::Path;
use std::time::Duration;

use std::time::Instant;

use anyhow::Context;
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_client::NetSyncClient;
use tonic::transport::Channel;

use super::{Ctx, Rig, resyncs, warm_up};
use crate::api::{datastore, duration};
use crate::device::{Device, is_key_leaf};
use crate::markers::{Latency, analyse};
use crate::process::{NetsyncdOptions, commit_persist_times};
use crate::prometheus;
use crate::report::Report;

/// The datastore's name.
const NAME: &str = "stall";

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let options = NetsyncdOptions {
        metrics: true,
        commit_log: true,
        ..NetsyncdOptions::default()
    };
    let mut rig = Rig::start_with(ctx, dir, sizes.churn_leaves, options).await?;
    let metrics = rig.netsyncd.logged_addr("metrics_listen").await?;

    let mut spec = datastore(NAME, rig.sim.addr, sizes.commit_interval);
    // No debounce: under churn a leaf never stays put for the default second,
    // and a revert would never be queued.
    spec.revert = Some(pb::RevertConfig {
        enabled: true,
        debounce: Some(duration(Duration::ZERO)),
    });
    rig.api.create(spec).await?;
    rig.api.wait_in_sync(NAME, sizes.deadline).await?;
    let intent = intent(&rig.device, sizes.intent_leaves).await?;
    let claimed = intent.updates.len();
    write_intent(&mut rig.api.client, intent.clone()).await?;

    let churning = rig
        .churn(NAME, sizes.churn_rate, sizes.marker_period)
        .await?;
    let warmed = warm_up(
        sizes.warmup,
        sizes.stall_warmup_max.max(sizes.warmup),
        sizes.stall_warmup_max / 12,
        &mut rig,
    )
    .await?;
    // As long as the stalled window: the largest RSS of a longer window is
    // larger by itself, and the growth is to measure the stall alone.
    write_intent(&mut rig.api.client, intent.clone()).await?;
    let free = rig.measure(sizes.stall_window, NAME).await?;
    rig.device.hold_sets(sizes.stall_hold).await?;
    write_intent(&mut rig.api.client, intent).await?;
    // Intent writes while the revert's Set is held: a probe intent set and
    // deleted in turn across the window. The server's view of the same calls
    // (its RPC histogram) and the commits persisted meanwhile (its log) are
    // read around them.
    let mut probe_client = rig.api.client.clone();
    let server_before = ServerWrites::scrape(metrics).await?;
    let logged_before = rig.netsyncd.logs().len();
    let (stalled, writes) = tokio::join!(
        rig.measure(sizes.stall_window, NAME),
        probe_writes(
            &mut probe_client,
            sizes.stall_window,
            sizes.stall_probe_period
        )
    );
    let (stalled, writes) = (stalled?, writes?);
    let server = ServerWrites::scrape(metrics).await?.since(&server_before);
    let persists = commit_persist_times(&rig.netsyncd.logs()[logged_before..], NAME);
    rig.device.hold_sets(Duration::ZERO).await?;
    let (sent, log) = churning
        .stop(&mut rig.device, sizes.commit_interval + sizes.deadline)
        .await?;
    let free_window = analyse(&sent, &log.arrivals, free.from, free.to)
        .context("commit latency without stall")?;
    let stalled_window = analyse(&sent, &log.arrivals, stalled.from, stalled.to)
        .context("commit latency with Sets held")?;
    // A Set held when the fault was cleared still waits its time out.
    rig.settle_and_compare(NAME, sizes.stall_hold + sizes.deadline)
        .await?;
    let status = rig.api.status(NAME).await?;
    let resyncs = resyncs(&status);

    let phase = |p: pb::RevertPhase| log.revert_phases[p as usize];
    let mut report = Report::new("stall", ctx.quick);
    report.count("leaves", rig.leaves);
    report.count("intent_leaves", claimed as u64);
    report.rate("churn_rate_asked", sizes.churn_rate);
    report.seconds("set_hold_seconds", sizes.stall_hold);
    report.seconds("warmup_seconds", warmed);
    report.rate("ingest_updates_per_second", free.ingest_rate());
    report.rate("stalled_ingest_updates_per_second", stalled.ingest_rate());
    report.number("ratio", stalled.ingest_rate() / free.ingest_rate());
    // The ingest can only follow the device: its own rate in each window
    // tells whether netsyncd or the simulator slowed down.
    report.rate("device_changes_per_second", free.device_rate());
    report.rate("stalled_device_changes_per_second", stalled.device_rate());
    report.number(
        "device_ratio",
        stalled.device_rate() / free.device_rate().max(1.0),
    );
    // As in `churn`: a window with a cut stream sustained nothing.
    report.rate_if(
        "committed_updates_per_second",
        free_window.committed_rate.filter(|_| free.reconnects == 0),
    );
    report.rate_if(
        "stalled_committed_updates_per_second",
        stalled_window
            .committed_rate
            .filter(|_| stalled.reconnects == 0),
    );
    report.millis_if("latency_p99_ms", free_window.latency.map(|l| l.p99));
    report.millis_if(
        "stalled_latency_p99_ms",
        stalled_window.latency.map(|l| l.p99),
    );
    report.count("markers", free_window.markers as u64);
    report.count("stalled_markers", stalled_window.markers as u64);
    report.bytes("rss_bytes", free.largest_rss);
    report.bytes("stalled_rss_bytes", stalled.largest_rss);
    report.number(
        "rss_growth",
        stalled.largest_rss as f64 / free.largest_rss.max(1) as f64 - 1.0,
    );
    // For comparison: what the same churn grows it by with Sets answered.
    report.number("unstalled_rss_growth", free.rss_growth());
    report.count("sets", free.sets);
    report.count("sets_held", stalled.sets);
    let write_latency = Latency::of(&writes);
    let persist = Latency::of(&persists);
    report.count("intent_writes_held", writes.len() as u64);
    report.millis_if("intent_write_p50_ms", write_latency.map(|l| l.p50));
    report.millis_if("intent_write_p99_ms", write_latency.map(|l| l.p99));
    report.millis_if("intent_write_max_ms", write_latency.map(|l| l.max));
    report.count("intent_writes_seen_by_server", server.calls);
    report.count("intent_writes_over_100ms_in_server", server.over_100ms);
    report.count("commits_held", persists.len() as u64);
    report.millis_if("commit_persist_p50_ms", persist.map(|l| l.p50));
    report.millis_if("commit_persist_max_ms", persist.map(|l| l.max));
    report.count("reverts_applying", phase(pb::RevertPhase::Applying));
    report.count("reverts_applied", phase(pb::RevertPhase::Applied));
    report.count("reverts_failed", phase(pb::RevertPhase::Failed));
    report.count("reconnects", free.reconnects + stalled.reconnects);
    report.count("resyncs", resyncs);
    report.flag("running_equals_device", true);
    report.at_least("ratio", 0.95);
    report.at_most("rss_growth", 0.10);
    report.at_least("sets_held", 1.0);
    // One writer batch in front (at most the longest commit persist) plus
    // the write's own transaction, which the intents issue bounds at 100 ms.
    match persist {
        Some(persist) => report.at_most(
            "intent_write_max_ms",
            (persist.max.as_secs_f64() * 1e3 + 100.0).round(),
        ),
        None => report.at_most("commit_persist_max_ms", 0.0),
    }
    report.at_most("resyncs", 0.0);
    report.at_most("reconnects", 0.0);
    report.note(format!(
        "warm-up until netsyncd's RSS levels off (2 %), then windows {:.1} s (Sets answered) and \
         {:.1} s (every Set held {:.1} s); ingest = updates and deletes netsyncd read (its \
         status), per second; device = changes the simulator made, per second; rss = largest \
         VmRSS sampled every 100 ms; rss_growth = stalled rss / rss - 1; unstalled_rss_growth = \
         growth within the first window; sets_held = gNMI Sets that reached the device in the \
         held window; intent_write = one SetIntent or DeleteIntent of a probe intent on the \
         datastore while a Set is held, one every {:.0} ms, timed by the harness (the intent is \
         written again before each window: churn undoes every revert, so it would otherwise end \
         FAILING); _in_server = the same calls by netsyncd's RPC histogram (bucket 100 ms); \
         commit_persist = netsyncd's persist time of each commit in the held window (encoding, \
         the writer's queue, its transaction and fsync): the batch an intent write may find in \
         front of it; target intent_write_max <= commit_persist_max + 100 ms",
        sizes.stall_window.as_secs_f64(),
        sizes.stall_window.as_secs_f64(),
        sizes.stall_hold.as_secs_f64(),
        sizes.stall_probe_period.as_secs_f64() * 1e3,
    ));
    Ok(report)
}

/// Writes `intent` on the datastore (again: PENDING, its failures forgotten).
async fn write_intent(
    client: &mut NetSyncClient<Channel>,
    intent: pb::Intent,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    client
        .set_intent(pb::SetIntentRequest {
            datastore: NAME.into(),
            intent: Some(intent),
            validate_only: false,
            ..Default::default()
        })
        .await
        .context("SetIntent")?;
    Ok(started.elapsed())
}

/// Sets and deletes a one-leaf probe intent in turn, a call every `period`,
/// until `window` has passed; the time each call took.
async fn probe_writes(
    client: &mut NetSyncClient<Channel>,
    window: Duration,
    period: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let end = Instant::now() + window;
    let mut took = Vec::new();
    let probe = pb::Intent {
        name: "bench-stall-probe".into(),
        priority: 100,
        updates: vec![pb::Leaf {
            path: "/netsync-bench/probe".into(),
            value: Some(netsync_proto::gnmi::TypedValue {
                value: Some(netsync_proto::gnmi::typed_value::Value::StringVal(
                    "probe".into(),
                )),
            }),
            owner: String::new(),
        }],
        ..Default::default()
    };
    while Instant::now() + period * 2 < end {
        tokio::time::sleep(period).await;
        took.push(write_intent(client, probe.clone()).await?);
        tokio::time::sleep(period).await;
        let started = Instant::now();
        client
            .delete_intent(pb::DeleteIntentRequest {
                datastore: NAME.into(),
                name: probe.name.clone(),
                ..Default::default()
            })
            .await
            .context("DeleteIntent")?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// SetIntent and DeleteIntent calls as netsyncd's RPC histogram
/// (`grpc_server_handling_seconds`) counts them: all, and those it took more
/// than 100 ms over (a bucket bound).
#[derive(Debug, Clone, Copy, Default)]
struct ServerWrites {
    calls: u64,
    over_100ms: u64,
}

impl ServerWrites {
    /// The counts so far.
    async fn scrape(metrics: std::net::SocketAddr) -> anyhow::Result<Self> {
        let text = prometheus::scrape(metrics).await?;
        let bucket = "grpc_server_handling_seconds_bucket";
        let mut counts = Self::default();
        for method in ["SetIntent", "DeleteIntent"] {
            let method = ("grpc_method", method);
            let count = |le| prometheus::sum_where(&text, bucket, &[method, ("le", le)]);
            let all = count("+Inf").unwrap_or(0.0) as u64;
            counts.calls += all;
            counts.over_100ms += all - (count("0.1").unwrap_or(0.0) as u64).min(all);
        }
        Ok(counts)
    }

    /// The calls counted since `before`.
    fn since(&self, before: &Self) -> Self {
        Self {
            calls: self.calls.saturating_sub(before.calls),
            over_100ms: self.over_100ms.saturating_sub(before.over_100ms),
        }
    }
}

/// An intent claiming `count` leaves of the device, spread evenly over it, at
/// their current values. List keys are left out: churn never changes them.
async fn intent(device: &Device, count: usize) -> anyhow::Result<pb::Intent> {
    let leaves = device.leaves().await?;
    let mut paths: Vec<&String> = leaves
        .keys()
        .filter(|p| !is_key_leaf(p) && !p.starts_with("/netsync-bench/"))
        .collect();
    paths.sort();
    let step = (paths.len() / count.max(1)).max(1);
    let updates = paths
        .iter()
        .step_by(step)
        .take(count)
        .map(|p| pb::Leaf {
            path: (*p).clone(),
            value: leaves.get(*p).cloned(),
            owner: String::new(),
        })
        .collect();
    Ok(pb::Intent {
        name: "bench-stall".into(),
        priority: 10,
        updates,
        ..Default::default()
    })
}
