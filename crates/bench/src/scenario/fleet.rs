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
use crate::process::{Process, start_netsyncd, start_sim};
use crate::report::Report;

/// CreateDatastore calls in flight at once.
const CONCURRENT_CREATES: usize = 16;

/// What [`create_in_sync`] took.
pub struct Synced {
    /// From the first CreateDatastore sent to the last one answered.
    pub created: Duration,
    /// From the first CreateDatastore sent to every datastore IN_SYNC.
    pub in_sync: Duration,
    /// Every datastore then (ListDatastores).
    pub datastores: Vec<pb::Datastore>,
}

/// Datastore `name` of a fleet on the simulator at `device`: its own gNMI
/// target name, as a device multiplexing targets would be addressed.
pub fn fleet_datastore(
    name: &str,
    device: std::net::SocketAddr,
    commit_interval: Duration,
) -> pb::Datastore {
    let mut spec = datastore(name, device, commit_interval);
    if let Some(target) = spec.target.as_mut() {
        target.target_name = name.to_string();
    }
    spec
}

/// Creates the datastores `specs`, [`CONCURRENT_CREATES`] calls in flight;
/// returns how many.
pub async fn create_all(
    api: &Netsync,
    specs: impl Iterator<Item = pb::Datastore>,
) -> anyhow::Result<usize> {
    Ok(futures::stream::iter(specs.map(|spec| {
        let mut api = api.clone();
        async move { api.create(spec).await }
    }))
    .buffer_unordered(CONCURRENT_CREATES)
    .try_collect::<Vec<()>>()
    .await?
    .len())
}

/// Creates the datastores `specs` ([`create_all`]) and waits, up to
/// `deadline`, until every datastore of netsyncd is IN_SYNC.
pub async fn create_in_sync(
    api: &Netsync,
    specs: impl Iterator<Item = pb::Datastore>,
    deadline: Duration,
    sim: &mut Process,
    netsyncd: &mut Process,
) -> anyhow::Result<Synced> {
    let start = Instant::now();
    let created = create_all(api, specs).await?;
    let created_time = start.elapsed();
    let mut api = api.clone();
    loop {
        let all =
            netsync_testkit::client::list_datastores(&mut api.client, "", pb::DatastoreView::Basic)
                .await
                .context("ListDatastores")?;
        let synced = all
            .iter()
            .filter(|d| d.status.as_ref().is_some_and(in_sync))
            .count();
        if synced >= created {
            return Ok(Synced {
                created: created_time,
                in_sync: start.elapsed(),
                datastores: all,
            });
        }
        if start.elapsed() >= deadline {
            bail!("{synced} of {created} datastores IN_SYNC after {deadline:?}");
        }
        sim.check_running()?;
        netsyncd.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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

    let device_addr = sim.addr;
    let specs = names
        .iter()
        .map(|name| fleet_datastore(name, device_addr, sizes.commit_interval));
    let synced = create_in_sync(&api, specs, sizes.deadline, &mut sim, &mut netsyncd).await?;
    let (created, in_sync_time, all) = (synced.created, synced.in_sync, synced.datastores);
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
