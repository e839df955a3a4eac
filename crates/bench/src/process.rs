//! netsyncd and netsync-sim as child processes of the harness, on the
//! testkit's process guard: each in its own directory, on an ephemeral
//! loopback port, its output in a log file of its own per start.
//!
//! The guard is synchronous: what waits on it (for the address at start, for
//! the exit at SIGTERM) runs on tokio's blocking threads, so that no runtime
//! worker (one per core) is held while the clients need it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::Context;
use netsync_testkit::process::{self as guard, Echo, Memory, next_log};
use netsync_testkit::sim::sim_command;

use crate::binaries::Binaries;

/// Longest wait for a process to log its address.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A child process under test; killed and reaped when dropped.
///
/// The drop waits for the reaping in place: milliseconds after a SIGKILL,
/// when a scenario ends, so not worth a blocking thread.
pub struct Process {
    guard: guard::Process,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Process {
    /// Starts `command` (which must listen on `127.0.0.1:0` and log its address
    /// as JSON) with its output in `log`, and waits until it says where it
    /// listens.
    async fn start(name: &'static str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        // Both programs log their address at info level; a finer filter for
        // their logs (kept with --keep) comes from NETSYNC_BENCH_RUST_LOG.
        let filter = std::env::var("NETSYNC_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
        command.env("RUST_LOG", filter);
        let echo = Echo::file(log.clone());
        let started = tokio::task::spawn_blocking(move || {
            guard::Process::start_listening(name, command, echo, START_DEADLINE)
        })
        .await
        .with_context(|| format!("the thread starting {name} panicked"))?;
        let guard =
            started.with_context(|| format!("cannot start {name} (log: {})", log.display()))?;
        let addr = guard.addr();
        Ok(Self { guard, addr })
    }

    /// `http://addr`, for tonic clients.
    pub fn url(&self) -> String {
        self.guard.url()
    }

    /// Its memory now, read from the OS.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        self.guard
            .memory()
            .with_context(|| format!("memory of {}", self.guard.name()))
    }

    /// Fails, with its exit status and last lines, if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        Ok(self.guard.check_running()?)
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status (killing
    /// it if it does not exit in time).
    pub async fn terminate(self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let mut guard = self.guard;
        let name = guard.name().to_string();
        let exit = tokio::task::spawn_blocking(move || guard.terminate(deadline))
            .await
            .with_context(|| format!("the thread stopping {name} panicked"))?;
        Ok(exit?)
    }
}

/// Starts netsync-sim with a generated device of `leaves` leaves, in `dir`.
pub async fn start_sim(bins: &Binaries, dir: &Path, leaves: usize) -> anyhow::Result<Process> {
    std::fs::create_dir_all(dir)?;
    let mut command = sim_command(&bins.sim, dir, leaves);
    // More workers than cores: the device actor and a subscriber session
    // each keep a worker busy under heavy churn, and the harness's SimControl
    // calls (markers, counters) must not wait for one of them to yield.
    command
        .args(["--threads", "4"])
        .env(PURGE_DELAY.0, PURGE_DELAY.1);
    Process::start("netsync-sim", command, next_log(dir, "netsync-sim")).await
}

/// The allocator setting both processes run with, as the deployment files
/// set it for netsyncd: mimalloc keeps freed memory instead of handing it back
/// to the kernel after a second, so that the next commit's buffers do not
/// fault in and zero fresh pages (about a tenth of netsyncd's CPU under churn;
/// see `docs/BENCHMARKS.md`).
pub const PURGE_DELAY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "-1");

/// Starts netsyncd with its database in `dir` (created or reused), with
/// `bins.netsyncd_args` after the harness's own flags.
pub async fn start_netsyncd(bins: &Binaries, dir: &Path) -> anyhow::Result<Process> {
    std::fs::create_dir_all(dir)?;
    let mut command = Command::new(&bins.netsyncd);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--db")
        .arg(dir.join("netsync.db"))
        // The scenarios open more than the defaults let a client have: 1,000
        // datastores (the default cap exactly) and 101 watchers of one.
        .args([
            "--max-datastores",
            "2000",
            "--max-watchers-per-datastore",
            "1000",
        ])
        .args(&bins.netsyncd_args)
        .env(PURGE_DELAY.0, PURGE_DELAY.1)
        .current_dir(dir);
    // A restarted process gets a log of its own, next to the first one.
    Process::start("netsyncd", command, next_log(dir, "netsyncd")).await
}
