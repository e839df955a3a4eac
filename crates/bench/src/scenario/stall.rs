//! `stall`: `churn` on a datastore with a revertive intent, so that churn
//! drifts the intent's leaves and netsyncd sends revert Sets. First a window
//! with Sets answered at once, then one with every Set held by the device
//! (the simulator's `set_delay` fault). netsyncd's ingest must not slow down,
//! its memory must not grow, nothing may be dropped, and running must equal
//! the device at the end. While a Set is held, intent writes on the datastore
//! must still answer within 100 ms.
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

use super::{Ctx, Rig, check_nothing_dropped, warm_up};
use crate::api::{datastore, duration};
use crate::device::{Device, is_key_leaf};
use crate::markers::analyse;
use crate::report::Report;

/// The datastore's name.
const NAME: &str = "stall";

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let mut rig = Rig::start(ctx, dir, sizes.churn_leaves).await?;

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
    // deleted a few times across the window.
    let mut probe_client = rig.api.client.clone();
    let (stalled, writes) = tokio::join!(
        rig.measure(sizes.stall_window, NAME),
        probe_writes(&mut probe_client, sizes.stall_window)
    );
    let (stalled, writes) = (stalled?, writes?);
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
    let dropped = check_nothing_dropped(NAME, &status)?;

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
    report.count("intent_writes_held", writes.len() as u64);
    report.millis_if("intent_write_max_ms", writes.iter().max().copied());
    report.millis_if("intent_write_p50_ms", median(&writes));
    report.count("reverts_applying", phase(pb::RevertPhase::Applying));
    report.count("reverts_applied", phase(pb::RevertPhase::Applied));
    report.count("reverts_failed", phase(pb::RevertPhase::Failed));
    report.count("reconnects", free.reconnects + stalled.reconnects);
    report.count("dropped", dropped);
    report.flag("running_equals_device", true);
    report.at_least("ratio", 0.95);
    report.at_most("rss_growth", 0.10);
    report.at_least("sets_held", 1.0);
    report.at_most("intent_write_max_ms", 100.0);
    report.at_most("dropped", 0.0);
    report.at_most("reconnects", 0.0);
    report.note(format!(
        "warm-up until netsyncd's RSS levels off (2 %), then windows {:.1} s (Sets answered) and \
         {:.1} s (every Set held {:.1} s); ingest = updates and deletes netsyncd read (its \
         status), per second; device = changes the simulator made, per second; rss = largest \
         VmRSS sampled every 100 ms; rss_growth = stalled rss / rss - 1; unstalled_rss_growth = \
         growth within the first window; sets_held = gNMI Sets that reached the device in the \
         held window; intent_write = one SetIntent or DeleteIntent of a probe intent on the \
         datastore while a Set is held (the intent is written again before each window: churn \
         undoes every revert, so it would otherwise end FAILING)",
        sizes.stall_window.as_secs_f64(),
        sizes.stall_window.as_secs_f64(),
        sizes.stall_hold.as_secs_f64()
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
        })
        .await
        .context("SetIntent")?;
    Ok(started.elapsed())
}

/// Sets and deletes a one-leaf probe intent every tenth of `window` until it
/// has passed; the time each call took.
async fn probe_writes(
    client: &mut NetSyncClient<Channel>,
    window: Duration,
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
    while Instant::now() + window / 10 < end {
        tokio::time::sleep(window / 20).await;
        took.push(write_intent(client, probe.clone()).await?);
        tokio::time::sleep(window / 20).await;
        let started = Instant::now();
        client
            .delete_intent(pb::DeleteIntentRequest {
                datastore: NAME.into(),
                name: probe.name.clone(),
            })
            .await
            .context("DeleteIntent")?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// The median of `values`.
fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
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
