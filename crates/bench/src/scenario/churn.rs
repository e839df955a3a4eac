//! `churn`: a device changing as fast as the simulator is asked to. The bare
//! client's read rate first, then, with netsyncd syncing the device:
//! committed updates per second (see `markers.rs` for the definition), commit
//! latency from device send to WatchSync event, and running equal to the
//! device once churn stops.

use std::path::Path;

use anyhow::Context;

use super::{Ctx, Rig};
use crate::api::datastore;
use crate::markers::analyse;
use crate::report::Report;

/// The datastore's name.
const NAME: &str = "churn";

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let mut rig = Rig::start(ctx, dir, sizes.churn_leaves).await?;
    let device = &mut rig.device;

    // The bare client alone on the device, at the same churn rate.
    device.start_churn(sizes.churn_rate, 1).await?;
    let bare_rate = device.read_rate(sizes.warmup, sizes.window).await?;
    device.stop_churn().await?;
    device.wait_no_streams(sizes.deadline).await?;

    rig.api
        .create(datastore(NAME, rig.sim.addr, sizes.commit_interval))
        .await?;
    rig.api.wait_in_sync(NAME, sizes.deadline).await?;
    let churning = rig
        .churn(NAME, sizes.churn_rate, sizes.marker_period)
        .await?;
    rig.hold(sizes.warmup).await?;
    let phase = rig.measure(sizes.window, NAME).await?;
    let (sent, log) = churning
        .stop(&mut rig.device, sizes.commit_interval + sizes.deadline)
        .await?;
    let window = analyse(&sent, &log.arrivals, phase.from, phase.to)
        .context("commit latency of the churn window")?;
    rig.settle_and_compare(NAME, sizes.deadline).await?;
    let status = rig.api.status(NAME).await?;

    let stats = status.stats.unwrap_or_default();
    let interval_ms = sizes.commit_interval.as_secs_f64() * 1e3;
    let mut report = Report::new("churn", ctx.quick);
    report.count("leaves", rig.leaves);
    report.rate("churn_rate_asked", sizes.churn_rate);
    report.rate("bare_updates_per_second", bare_rate);
    report.rate("device_changes_per_second", phase.device_rate());
    // A stream cut during the window means running caught up through a
    // resync's dump: the markers are then covered, but nothing was sustained.
    let committed = window.committed_rate.filter(|_| phase.reconnects == 0);
    report.rate_if("committed_updates_per_second", committed);
    report.number_if("ratio", committed.map(|r| r / bare_rate));
    report.rate("ingest_updates_per_second", phase.ingest_rate());
    report.number("commits_per_second", phase.commits as f64 / phase.seconds());
    report.number("commit_interval_ms", interval_ms);
    // Latencies of markers that reached running through a resync's dump say
    // nothing about commits either (they showed as 0 ms and "met").
    let latency = window.latency.filter(|_| phase.reconnects == 0);
    report.millis_if("latency_p50_ms", latency.map(|l| l.p50));
    report.millis_if("latency_p99_ms", latency.map(|l| l.p99));
    report.millis_if("latency_max_ms", latency.map(|l| l.max));
    report.count("markers", window.markers as u64);
    report.bytes("rss_bytes", phase.largest_rss);
    report.number("rss_growth", phase.rss_growth());
    report.count("reconnects", stats.reconnects);
    report.count("reconnects_in_window", phase.reconnects);
    report.count("resyncs", stats.resyncs);
    report.flag("running_equals_device", true);
    report.at_least("committed_updates_per_second", 500_000.0);
    report.at_least("ratio", 0.8);
    report.at_most("latency_p99_ms", interval_ms + 100.0);
    report.at_most("reconnects", 0.0);
    report.at_most("resyncs", 0.0);
    if phase.reconnects > 0 {
        report.note(format!(
            "netsyncd fell behind: the simulator cut its stream {} times during the window, so \
             running kept up only through resyncs and there is no sustained committed rate",
            phase.reconnects
        ));
    }
    report.note(format!(
        "window {:.1} s after {:.1} s of warm-up; committed = device updates covered by a durable \
         revision per second (markers); ratio = committed / bare; device = changes the simulator \
         made; reconnects = netsyncd's stream cut by the simulator for falling behind",
        sizes.window.as_secs_f64(),
        sizes.warmup.as_secs_f64()
    ));
    Ok(report)
}
