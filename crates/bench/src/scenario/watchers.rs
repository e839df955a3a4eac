//! `watchers`: one churning datastore, commit latency measured by one
//! watcher alone, then with many more WatchSync clients connected and reading
//! every event (each on its own connection, as separate controllers would
//! be). The latency with the crowd should stay close to the latency alone.
//! One of the crowd is a reflector of the client library (netsync-client):
//! it lists running, then watches on, and its latency (marker set on the
//! device to the marker in its map) is measured over the same window; once
//! churn stops, its map must equal running at the same revision.

use std::path::Path;

use anyhow::{Context, bail, ensure};

use super::{Ctx, Rig};
use crate::api::{Netsync, datastore};
use crate::follower::Follower;
use crate::markers::{Watcher, analyse};
use crate::report::Report;

/// The datastore's name.
const NAME: &str = "watched";

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let mut rig = Rig::start(ctx, dir, sizes.watchers_leaves).await?;
    rig.api
        .create(datastore(NAME, rig.sim.addr, sizes.commit_interval))
        .await?;
    rig.api.wait_in_sync(NAME, sizes.deadline).await?;

    let churning = rig
        .churn(NAME, sizes.watchers_churn_rate, sizes.marker_period)
        .await?;
    rig.hold(sizes.warmup).await?;
    let alone = rig.measure(sizes.window, NAME).await?;
    let url = rig.netsyncd.url();
    let crowd: Vec<Watcher> =
        futures::future::try_join_all((0..sizes.watchers).map(|_| Watcher::open(&url, NAME)))
            .await
            .context("opening the extra watchers")?;
    // On a connection of its own, as another controller's would be.
    let follower = Follower::start(
        Netsync::connect(&url, sizes.deadline)
            .await?
            .library
            .reflector(NAME),
    );
    follower.wait_listed(sizes.deadline).await?;
    let crowded = rig.measure(sizes.window, NAME).await?;
    let (sent, log) = churning
        .stop(&mut rig.device, sizes.commit_interval + sizes.deadline)
        .await?;
    let alone_window = analyse(&sent, &log.arrivals, alone.from, alone.to)
        .context("commit latency with one watcher")?;
    let crowded_window = analyse(&sent, &log.arrivals, crowded.from, crowded.to)
        .context("commit latency with the extra watchers")?;
    let crowd: Vec<_> = crowd.into_iter().map(Watcher::stop).collect();
    let ended: Vec<&String> = crowd.iter().filter_map(|l| l.ended.as_ref()).collect();
    let fewest_commits = crowd.iter().map(|l| l.commits).min().unwrap_or(0);
    ensure!(
        crowd.is_empty() || fewest_commits > 0,
        "an extra watcher received no commit"
    );
    rig.settle_and_compare(NAME, sizes.deadline).await?;
    let running = rig
        .api
        .library
        .running(NAME, "", 0)
        .await
        .context("GetRunning")?;
    let (reflected, leaves, reflector) = follower.stop_at(running.revision, sizes.deadline).await?;
    if (reflected, &leaves) != (running.revision, &running.leaves) {
        bail!(
            "the reflector's map ({} leaves at revision {reflected}) differs from running ({} \
             leaves at revision {})",
            leaves.len(),
            running.leaves.len(),
            running.revision
        );
    }
    let reflector_window = analyse(&sent, &reflector.arrivals, crowded.from, crowded.to)
        .context("commit latency at the reflector")?;

    let mut report = Report::new("watchers", ctx.quick);
    report.count("leaves", rig.leaves);
    report.count("watchers", sizes.watchers as u64);
    report.rate("churn_rate_asked", sizes.watchers_churn_rate);
    report.rate("device_changes_per_second", crowded.device_rate());
    let (quiet, busy) = (alone_window.latency, crowded_window.latency);
    report.millis_if("latency_p50_ms", quiet.map(|l| l.p50));
    report.millis_if("latency_p99_ms", quiet.map(|l| l.p99));
    report.millis_if("crowded_latency_p50_ms", busy.map(|l| l.p50));
    report.millis_if("crowded_latency_p99_ms", busy.map(|l| l.p99));
    report.number_if(
        "p99_ratio",
        quiet
            .zip(busy)
            .map(|(q, b)| b.p99.as_secs_f64() / q.p99.as_secs_f64()),
    );
    report.count("markers", alone_window.markers as u64);
    report.count("crowded_markers", crowded_window.markers as u64);
    report.count("fewest_commits_per_watcher", fewest_commits);
    report.count("watchers_ended", ended.len() as u64);
    let reflected = reflector_window.latency;
    report.millis_if("reflector_latency_p50_ms", reflected.map(|l| l.p50));
    report.millis_if("reflector_latency_p99_ms", reflected.map(|l| l.p99));
    report.count("reflector_markers", reflector_window.markers as u64);
    report.count("reflector_cuts", reflector.cuts);
    report.count("reflector_relists", reflector.lists.saturating_sub(1));
    report.flag("reflector_equals_running", true);
    report.count("reconnects", alone.reconnects + crowded.reconnects);
    report.bytes("rss_bytes", crowded.largest_rss);
    report.flag("running_equals_device", true);
    report.at_most("p99_ratio", 1.2);
    report.at_most("watchers_ended", 0.0);
    report.at_most("reflector_relists", 0.0);
    report.at_most("reconnects", 0.0);
    if let Some(why) = ended.first() {
        report.note(format!("a watcher's stream ended: {why}"));
    }
    report.note(format!(
        "windows of {:.1} s: one watcher, then {} more; latency = marker set on the device to \
         its WatchSync commit event at the measuring watcher; reflector = a netsync-client \
         reflector among the crowd, latency to the marker in its map, its map equal to running \
         at the end",
        sizes.window.as_secs_f64(),
        sizes.watchers
    ));
    Ok(report)
}
