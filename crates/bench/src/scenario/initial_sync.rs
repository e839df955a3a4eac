//! `initial-sync`: a large device's first sync, PROTO encoding. netsyncd's
//! time from CreateDatastore to its first durable revision, against a bare
//! gNMI client reading the same Subscribe stream to `sync_response` (the
//! faster of one read before netsyncd's sync and one after); and netsyncd's
//! peak resident set per leaf.

use std::path::Path;
use std::time::Instant;

use anyhow::ensure;

use super::{Ctx, settle_and_compare};
use crate::api::{Netsync, datastore};
use crate::device::Device;
use crate::process::{start_netsyncd, start_sim};
use crate::report::Report;

/// The datastore's name.
const NAME: &str = "initial";

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let mut sim = start_sim(&ctx.bins, &dir.join("sim"), sizes.initial_leaves).await?;
    let mut netsyncd = start_netsyncd(&ctx.bins, &dir.join("netsyncd")).await?;
    let mut device = Device::connect(sim.addr).await?;
    let mut api = Netsync::connect(&netsyncd.url(), sizes.deadline).await?;
    let leaves = device.counters().await?.leaves;
    let idle = netsyncd.memory()?;

    let (dumped, bare_before) = device.read_dump().await?;
    ensure!(
        dumped == leaves,
        "the bare client read {dumped} updates of {leaves} leaves"
    );

    let start = Instant::now();
    api.create(datastore(NAME, sim.addr, sizes.commit_interval))
        .await?;
    api.wait_revision(NAME, 1, sizes.deadline).await?;
    let engine = start.elapsed();
    let status = api.wait_in_sync(NAME, sizes.deadline).await?;
    ensure!(
        status.leaves == leaves,
        "running has {} leaves after the initial sync, the device {leaves}",
        status.leaves
    );
    // Read before anything else asks netsyncd for memory (GetRunning below).
    let peak = netsyncd.memory()?.peak;

    let (_, bare_after) = device.read_dump().await?;
    let bare = bare_before.min(bare_after);
    settle_and_compare(&mut device, &mut api, &[NAME], sizes.deadline).await?;
    sim.check_running()?;
    netsyncd.check_running()?;

    let mut report = Report::new("initial-sync", ctx.quick);
    report.count("leaves", leaves);
    report.seconds("engine_seconds", engine);
    report.seconds("bare_seconds", bare);
    report.seconds("bare_before_seconds", bare_before);
    report.seconds("bare_after_seconds", bare_after);
    report.number("ratio", engine.as_secs_f64() / bare.as_secs_f64());
    report.rate(
        "engine_leaves_per_second",
        leaves as f64 / engine.as_secs_f64(),
    );
    report.rate(
        "bare_updates_per_second",
        leaves as f64 / bare.as_secs_f64(),
    );
    report.bytes("peak_rss_bytes", peak);
    report.number("bytes_per_leaf", peak as f64 / leaves.max(1) as f64);
    report.bytes("idle_rss_bytes", idle.rss);
    report.flag("running_equals_device", true);
    report.at_most("ratio", 1.5);
    report.at_most("bytes_per_leaf", 300.0);
    report.note(
        "engine: CreateDatastore sent to GetRunning(min_revision=1) answered; bare: Subscribe sent \
         to sync_response, prost-decoded and discarded; peak: netsyncd's VmHWM",
    );
    Ok(report)
}
