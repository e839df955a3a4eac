//! `fleet`: many small datastores on one netsyncd, all on one simulator (each
//! with its own gNMI target name, as a device multiplexing targets would be
//! addressed). Time until every one is IN_SYNC, and netsyncd's resident set.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use netsync_proto::netsync::v1 as pb;

use super::{Ctx, settle_and_compare};
use crate::api::{Netsync, datastore, in_sync};
use crate::device::Device;
use crate::process::{start_netsyncd, start_sim};
use crate::report::Report;

/// CreateDatastore calls in flight at once.
const CONCURRENT_CREATES: usize = 16;

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let mut sim = start_sim(&ctx.bins, &dir.join("sim"), sizes.fleet_leaves).await?;
    let mut netsyncd = start_netsyncd(&ctx.bins, &dir.join("netsyncd")).await?;
    let mut device = Device::connect(sim.addr).await?;
    let mut api = Netsync::connect(&netsyncd.url(), sizes.deadline).await?;
    let leaves = device.counters().await?.leaves;
    let names: Vec<String> = (0..sizes.fleet_datastores)
        .map(|i| format!("fleet-{i:04}"))
        .collect();

    let start = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let mut api = api.clone();
        let mut spec = datastore(name, sim.addr, sizes.commit_interval);
        if let Some(target) = spec.target.as_mut() {
            target.target_name = name.clone();
        }
        async move { api.create(spec).await }
    }))
    .buffer_unordered(CONCURRENT_CREATES)
    .try_collect::<Vec<()>>()
    .await?;
    let created = start.elapsed();
    let all = loop {
        let all = api
            .client
            .list_datastores(pb::ListDatastoresRequest {})
            .await
            .context("ListDatastores")?
            .into_inner()
            .datastores;
        let synced = all
            .iter()
            .filter(|d| d.status.as_ref().is_some_and(in_sync))
            .count();
        if synced == names.len() {
            break all;
        }
        if start.elapsed() >= sizes.deadline {
            bail!(
                "{synced} of {} datastores IN_SYNC after {:?}",
                names.len(),
                sizes.deadline
            );
        }
        sim.check_running()?;
        netsyncd.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let in_sync_time = start.elapsed();
    let memory = netsyncd.memory()?;
    for ds in &all {
        let have = ds.status.as_ref().map_or(0, |s| s.leaves);
        ensure!(
            have == leaves,
            "{} has {have} leaves, the device {leaves}",
            ds.name
        );
    }
    let (first, last) = (&names[0], &names[names.len() - 1]);
    settle_and_compare(
        &mut device,
        &mut api,
        &[first.as_str(), last.as_str()],
        sizes.deadline,
    )
    .await?;
    let streams = device.counters().await?.streams_synced;
    ensure!(
        streams as usize >= names.len(),
        "the simulator serves {streams} synced streams for {} datastores",
        names.len()
    );
    sim.check_running()?;
    netsyncd.check_running()?;

    let mut report = Report::new("fleet", ctx.quick);
    report.count("datastores", names.len() as u64);
    report.count("leaves_each", leaves);
    report.seconds("create_seconds", created);
    report.seconds("all_in_sync_seconds", in_sync_time);
    report.bytes("rss_bytes", memory.rss);
    report.bytes("peak_rss_bytes", memory.peak);
    report.count(
        "rss_bytes_per_datastore",
        memory.rss / names.len().max(1) as u64,
    );
    report.flag("running_equals_device", true);
    report.at_most("rss_bytes", 1e9);
    report.note(format!(
        "{CONCURRENT_CREATES} CreateDatastore calls in flight; times from the first call; rss = \
         netsyncd's VmRSS once all are IN_SYNC; running compared with the device on the first \
         and last datastore"
    ));
    Ok(report)
}
