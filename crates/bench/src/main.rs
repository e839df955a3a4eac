//! netsync-bench: end-to-end benchmarks of netsyncd (issue 6). netsyncd and
//! netsync-sim run as separate processes on loopback and are driven through
//! their gRPC APIs only.
//!
//! ```text
//! cargo run --release -p netsync-bench -- <initial-sync|churn|stall|restart|fleet|watchers|fleet-churn|intent-apply|failover|all> [--quick]
//! ```
//!
//! Each scenario prints a table (metric, value, target, met or not) and one
//! JSON line `{"scenario", "metrics", "targets", "quick"}` on stdout; progress
//! goes to stderr. Targets are reported, not enforced: the exit status is 0
//! when every scenario ran to the end, and 1 when one could not (a process
//! died, running differed from the device, a wait timed out).
//!
//! Errors are `anyhow` throughout: this program reports to a person and has
//! no caller that would act on a kind of error.

mod api;
mod binaries;
mod device;
mod follower;
mod intents;
mod markers;
mod process;
mod prometheus;
mod report;
mod scenario;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use scenario::{Ctx, Scenario, Sizes};

/// The same allocator as netsync-sim: the bare gNMI client is the physical
/// limit netsyncd is compared with, so it should not be slowed by glibc's
/// allocator (`MEASURED-LIMITS.md`: about 15 % faster decoding with mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// End-to-end benchmarks of netsyncd against netsync-sim.
#[derive(Debug, Parser)]
#[command(name = "netsync-bench")]
struct Cli {
    /// The scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Small sizes, every scenario in seconds: a smoke test for CI.
    #[arg(long)]
    quick: bool,
    /// netsyncd to run (default: built by cargo next to this program).
    #[arg(long, value_name = "PATH")]
    netsyncd: Option<PathBuf>,
    /// netsync-sim to run (default: built by cargo next to this program).
    #[arg(long, value_name = "PATH")]
    sim: Option<PathBuf>,
    /// Extra argument for netsyncd, e.g. `--netsyncd-arg=--watch-buffer=64`
    /// (repeat for several).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    netsyncd_arg: Vec<String>,
    /// Leaves of the large device (initial-sync, restart).
    #[arg(long, value_name = "N")]
    leaves: Option<usize>,
    /// Changes per second asked of the simulator (churn, stall).
    #[arg(long, value_name = "RATE")]
    churn_rate: Option<f64>,
    /// Changes per second asked of the simulator in watchers.
    #[arg(long, value_name = "RATE")]
    watchers_churn_rate: Option<f64>,
    /// Length of each measuring window, seconds (not stall's, which depends
    /// on its hold).
    #[arg(long, value_name = "SECONDS")]
    window: Option<f64>,
    /// commit_interval of the datastores, milliseconds.
    #[arg(long, value_name = "MS")]
    commit_interval_ms: Option<u64>,
    /// Datastores (fleet, fleet-churn, failover).
    #[arg(long, value_name = "N")]
    datastores: Option<usize>,
    /// Leaves of the device every datastore syncs (fleet, fleet-churn,
    /// failover).
    #[arg(long, value_name = "N")]
    datastore_leaves: Option<usize>,
    /// The replicas' --lease-seconds in failover.
    #[arg(long, value_name = "SECONDS")]
    lease_seconds: Option<u64>,
    /// fleet-churn: run netsyncd under strace, filtered to fsync and
    /// fdatasync, and report the calls it makes (for a netsyncd that does not
    /// count its store transactions). strace slows netsyncd: use such a run
    /// for the count only.
    #[arg(long)]
    trace_fsyncs: bool,
    /// Store in PostgreSQL instead of SQLite: a throwaway cluster (initdb and
    /// pg_ctl from PATH or /usr/lib/postgresql/*/bin), one database per
    /// scenario. failover runs on PostgreSQL always (skipped, saying so, where
    /// there is none and NETSYNC_REQUIRE_POSTGRES is not 1).
    #[arg(long)]
    postgres: bool,
    /// Keep every scenario's directory (databases, logs); a failed scenario's
    /// is always kept.
    #[arg(long)]
    keep: bool,
}

impl Cli {
    /// The sizes of the mode, with the overrides given.
    fn sizes(&self) -> anyhow::Result<Sizes> {
        let mut sizes = if self.quick {
            Sizes::quick()
        } else {
            Sizes::full()
        };
        if let Some(leaves) = self.leaves {
            sizes.initial_leaves = leaves;
            sizes.restart_leaves = leaves;
        }
        if let Some(rate) = self.churn_rate {
            anyhow::ensure!(rate > 0.0, "--churn-rate must be above 0");
            sizes.churn_rate = rate;
        }
        if let Some(rate) = self.watchers_churn_rate {
            anyhow::ensure!(rate > 0.0, "--watchers-churn-rate must be above 0");
            sizes.watchers_churn_rate = rate;
        }
        if let Some(window) = self.window {
            sizes.window = Duration::try_from_secs_f64(window)?;
            sizes.apply_window = sizes.window;
        }
        if let Some(datastores) = self.datastores {
            anyhow::ensure!(datastores > 0, "--datastores must be above 0");
            sizes.fleet_datastores = datastores;
            sizes.fleet_churn_datastores = datastores;
            sizes.failover_datastores = datastores;
        }
        if let Some(leaves) = self.datastore_leaves {
            anyhow::ensure!(leaves > 0, "--datastore-leaves must be above 0");
            sizes.fleet_leaves = leaves;
            sizes.fleet_churn_leaves = leaves;
            sizes.failover_leaves = leaves;
        }
        if let Some(seconds) = self.lease_seconds {
            anyhow::ensure!(
                (1..=3600).contains(&seconds),
                "--lease-seconds must be between 1 and 3600"
            );
            sizes.failover_lease = Duration::from_secs(seconds);
        }
        if let Some(ms) = self.commit_interval_ms {
            anyhow::ensure!(ms > 0, "--commit-interval-ms must be above 0");
            sizes.commit_interval = Duration::from_millis(ms);
        }
        Ok(sizes)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("netsync-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenarios asked for; `Ok(false)` if one of them broke.
async fn run(cli: &Cli) -> anyhow::Result<bool> {
    let mut bins = binaries::locate(cli.netsyncd.clone(), cli.sim.clone())?;
    bins.netsyncd_args.clone_from(&cli.netsyncd_arg);
    if cli.postgres {
        bins.postgres = Some(
            netsync_testkit::postgres::PgCluster::shared().ok_or_else(|| {
                anyhow::anyhow!("--postgres: no PostgreSQL (initdb, pg_ctl) on this machine")
            })?,
        );
    }
    let ctx = Ctx {
        bins,
        sizes: cli.sizes()?,
        quick: cli.quick,
        trace_fsyncs: cli.trace_fsyncs,
    };
    let scenarios = match cli.scenario {
        Scenario::All => Scenario::EACH.to_vec(),
        one => vec![one],
    };
    eprintln!(
        "netsync-bench: {} core(s); netsyncd {} {}; netsync-sim {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ctx.bins.netsyncd.display(),
        ctx.bins.netsyncd_args.join(" "),
        ctx.bins.sim.display()
    );
    let started = Instant::now();
    let mut all_ran = true;
    for scenario in scenarios {
        let name = scenario.name();
        let dir = tempfile::Builder::new()
            .prefix(&format!("netsync-bench-{name}-"))
            .tempdir()?;
        eprintln!("netsync-bench: {name} in {}", dir.path().display());
        let began = Instant::now();
        let result = scenario::run(scenario, &ctx, dir.path()).await;
        eprintln!(
            "netsync-bench: {name} took {:.1} s",
            began.elapsed().as_secs_f64()
        );
        match result {
            Ok(report) => {
                report.print();
                if cli.keep {
                    eprintln!("netsync-bench: kept {}", dir.keep().display());
                }
            }
            Err(e) => {
                all_ran = false;
                let kept = dir.keep();
                let error = format!("{e:#}");
                println!(
                    "\n{name}: FAILED: {error}\n  (logs and database kept in {})",
                    kept.display()
                );
                println!("{}", report::error_json_line(name, cli.quick, &error));
            }
        }
    }
    eprintln!(
        "netsync-bench: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(all_ran)
}
