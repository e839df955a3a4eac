//! `restart`: netsyncd stopped with SIGTERM while holding a large running in
//! SQLite, then started again on the same database. Time from the start of
//! the new process to the first GetRunning answer, to all of running read,
//! and back to IN_SYNC with the device.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, ensure};

use super::{Ctx, settle_and_compare};
use crate::api::{Netsync, datastore, in_sync};
use crate::device::Device;
use crate::process::{start_netsyncd, start_sim};
use crate::report::Report;

/// The datastore's name.
const NAME: &str = "restart";

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let db_dir = dir.join("netsyncd");
    let mut sim = start_sim(&ctx.bins, &dir.join("sim"), sizes.restart_leaves).await?;
    let netsyncd = start_netsyncd(&ctx.bins, &db_dir).await?;
    let mut device = Device::connect(sim.addr).await?;
    let mut api = Netsync::connect(&netsyncd.url(), sizes.deadline).await?;
    api.create(datastore(NAME, sim.addr, sizes.commit_interval))
        .await?;
    api.wait_revision(NAME, 1, sizes.deadline).await?;
    let before = api.wait_in_sync(NAME, sizes.deadline).await?;
    drop(api);

    let stopping = Instant::now();
    let exit = netsyncd.terminate(sizes.deadline).await?;
    let shutdown = stopping.elapsed();
    ensure!(exit.success(), "netsyncd exited with {exit} after SIGTERM");
    let db_bytes = db_size(&db_dir)?;

    let start = Instant::now();
    let mut netsyncd = start_netsyncd(&ctx.bins, &db_dir).await?;
    let listening = start.elapsed();
    let mut api = Netsync::connect(&netsyncd.url(), sizes.deadline).await?;
    let mut running = api.running(NAME, "/").await?;
    let first = running
        .message()
        .await
        .context("GetRunning after the restart")?
        .context("GetRunning after the restart answered nothing")?;
    let first_answer = start.elapsed();
    let mut read = first.leaves.len() as u64;
    while let Some(message) = running.message().await? {
        read += message.leaves.len() as u64;
    }
    let full_read = start.elapsed();
    ensure!(
        read == before.leaves,
        "running had {} leaves before the restart and {read} after",
        before.leaves
    );
    // IN_SYNC again means a resync committed in this process.
    api.wait_status(NAME, sizes.deadline, "IN_SYNC after the restart", |s| {
        in_sync(s) && s.stats.as_ref().is_some_and(|s| s.commits >= 1)
    })
    .await?;
    let back_in_sync = start.elapsed();
    let peak = netsyncd.memory()?.peak;
    settle_and_compare(&mut device, &mut api, &[NAME], sizes.deadline).await?;
    sim.check_running()?;
    netsyncd.check_running()?;

    let mut report = Report::new("restart", ctx.quick);
    report.count("leaves", before.leaves);
    if ctx.bins.postgres.is_none() {
        report.bytes("db_bytes", db_bytes);
    }
    report.seconds("shutdown_seconds", shutdown);
    report.seconds("listening_seconds", listening);
    report.seconds("first_answer_seconds", first_answer);
    report.seconds("full_read_seconds", full_read);
    report.seconds("in_sync_seconds", back_in_sync);
    report.bytes("peak_rss_bytes", peak);
    report.flag("running_equals_device", true);
    report.at_most("first_answer_seconds", 2.0);
    report.note(
        "times from spawning the new netsyncd: to its address logged, to the first GetRunning \
         message, to all of running read, to IN_SYNC after its resync",
    );
    Ok(report)
}

/// Bytes of the SQLite files (database, WAL, shared memory) in `dir`.
fn db_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("netsync.db")
        {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}
