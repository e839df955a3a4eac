//! netsyncd and netsync-sim as child processes of the harness, on the
//! testkit's process guard: each in its own directory, on an ephemeral
//! loopback port, its output in a log file of its own per start.
//!
//! The guard is synchronous: what waits on it (for the address at start, for
//! the exit at SIGTERM) runs on tokio's blocking threads, so that no runtime
//! worker (one per core) is held while the clients need it.
//!
//! netsyncd can also run under `strace`, filtered to its fsync calls, for a
//! count of them (`fleet-churn --trace-fsyncs`); the guard then holds strace,
//! and what is read of "the process" (memory, CPU) is read of netsyncd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use netsync_testkit::process::{self as guard, Echo, Memory, Signal, memory_of, next_log};
use netsync_testkit::sim::sim_command;
use rustix::process::{Pid, kill_process};

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
    /// The program itself when the guard's child is a tracer running it.
    traced: Option<Traced>,
}

/// A program run by `strace`, which writes one line per traced call.
struct Traced {
    /// The program's own process id (the tracer's child).
    pid: u32,
    /// strace's output.
    trace: PathBuf,
}

impl Process {
    /// Starts `command` (which must listen on `127.0.0.1:0` and log its address
    /// as JSON) with its output in `log`, and waits until it says where it
    /// listens.
    async fn start(
        name: &'static str,
        mut command: Command,
        log: PathBuf,
        directive: Option<&str>,
    ) -> anyhow::Result<Self> {
        // Both programs log their address at info level; a finer filter for
        // their logs (kept with --keep) comes from NETSYNC_BENCH_RUST_LOG. A
        // scenario may add a directive for what it reads from the log.
        let mut filter = std::env::var("NETSYNC_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
        if let Some(directive) = directive {
            filter = format!("{filter},{directive}");
        }
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
        Ok(Self {
            guard,
            addr,
            traced: None,
        })
    }

    /// `http://addr`, for tonic clients.
    pub fn url(&self) -> String {
        self.guard.url()
    }

    /// The program's process id (not its tracer's).
    pub fn pid(&self) -> u32 {
        self.traced.as_ref().map_or(self.guard.pid(), |t| t.pid)
    }

    /// Its memory now, read from the OS.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid()).with_context(|| format!("memory of {}", self.guard.name()))
    }

    /// The CPU time it has used so far, all threads, user and system.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(self.pid()).with_context(|| format!("CPU time of {}", self.guard.name()))
    }

    /// The CPU time its tracer has used so far, if it runs under one.
    pub fn tracer_cpu_time(&self) -> anyhow::Result<Option<Duration>> {
        match &self.traced {
            Some(_) => Ok(Some(
                cpu_time_of(self.guard.pid()).context("CPU time of strace")?,
            )),
            None => Ok(None),
        }
    }

    /// fsync(2) and fdatasync(2) calls it has made so far, if it runs under
    /// strace (see [`NetsyncdOptions::trace_fsyncs`]).
    pub fn fsyncs(&self) -> anyhow::Result<Option<u64>> {
        let Some(traced) = &self.traced else {
            return Ok(None);
        };
        let trace = std::fs::read_to_string(&traced.trace)
            .with_context(|| format!("reading {}", traced.trace.display()))?;
        Ok(Some(count_sync_calls(&trace)))
    }

    /// The address in JSON log field `field` (at the top level or under
    /// `fields`), waiting for it as long as for the listening address.
    pub async fn logged_addr(&self, field: &'static str) -> anyhow::Result<SocketAddr> {
        let output = self.guard.output();
        let found = tokio::task::spawn_blocking(move || {
            output.wait_for_json(START_DEADLINE, |line| {
                let value = line.get(field).or_else(|| line.get("fields")?.get(field))?;
                value.as_str()?.parse().ok()
            })
        })
        .await
        .context("the thread reading the log panicked")?;
        found.with_context(|| format!("{} did not log {field}", self.guard.name()))
    }

    /// Every JSON line it has logged so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.guard.logs()
    }

    /// Fails, with its exit status and last lines, if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        Ok(self.guard.check_running()?)
    }

    /// Kills it with SIGKILL, as a crash or a lost node would end it (no
    /// shutdown: nothing released, nothing flushed), and reaps it.
    pub async fn kill_hard(mut self) -> anyhow::Result<ExitStatus> {
        let name = self.guard.name().to_string();
        let exit = tokio::task::spawn_blocking(move || self.guard.kill())
            .await
            .with_context(|| format!("the thread killing {name} panicked"))?;
        Ok(exit?)
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status (killing
    /// it if it does not exit in time). A tracer passes the signal on to the
    /// program it started and exits with it.
    pub async fn terminate(mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        // The tracer ends its program: the drop has nothing left to kill.
        self.traced = None;
        let name = self.guard.name().to_string();
        let exit = tokio::task::spawn_blocking(move || {
            let mut this = self;
            this.guard.terminate(deadline)
        })
        .await
        .with_context(|| format!("the thread stopping {name} panicked"))?;
        Ok(exit?)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The guard kills the tracer; a tracer killed outright leaves its
        // program running, so the program goes first.
        if let Some(pid) = self
            .traced
            .as_ref()
            .and_then(|t| i32::try_from(t.pid).ok())
            .and_then(Pid::from_raw)
        {
            let _ = kill_process(pid, Signal::KILL);
        }
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
    Process::start("netsync-sim", command, next_log(dir, "netsync-sim"), None).await
}

/// The allocator setting both processes run with, as the deployment files
/// set it for netsyncd: mimalloc keeps freed memory instead of handing it back
/// to the kernel after a second, so that the next commit's buffers do not
/// fault in and zero fresh pages (about a tenth of netsyncd's CPU under churn;
/// see `docs/BENCHMARKS.md`).
pub const PURGE_DELAY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "-1");

/// How a netsyncd is started besides the harness's usual flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetsyncdOptions {
    /// Serve Prometheus metrics on an ephemeral loopback port
    /// (`--metrics-listen`); its address is logged as `metrics_listen`.
    pub metrics: bool,
    /// Run it under `strace`, filtered to fsync(2) and fdatasync(2) (a
    /// seccomp filter), which writes one line per call: a count of fsyncs
    /// for a netsyncd that does not count its store transactions. Not free:
    /// after each such call strace 6.1 follows the thread's next system calls
    /// too (about 35 stops per fsync measured), which slowed netsyncd a lot
    /// at full size; take the count from a traced run, the other figures
    /// from an untraced one.
    pub trace_fsyncs: bool,
    /// Log each commit with its apply and persist times (the committer's
    /// debug line, one a commit; see [`commit_persist_times`]).
    pub commit_log: bool,
}

/// The log directive of the committer's line per commit.
const COMMIT_LOG: &str = "netsync_core::sync::committer=debug";

/// The persist times (from taking a delta to its revision durable: encoding,
/// waiting for the writer, the transaction and its fsync) of the commits of
/// datastore `name` among `lines`, a netsyncd's JSON log lines, when it ran
/// with [`NetsyncdOptions::commit_log`].
pub fn commit_persist_times(lines: &[serde_json::Value], name: &str) -> Vec<Duration> {
    lines
        .iter()
        .filter_map(|line| {
            let fields = line.get("fields").unwrap_or(line);
            let committed = fields.get("message")?.as_str()? == "committed"
                && fields.get("datastore")?.as_str()? == name;
            committed.then(|| debug_duration(fields.get("persisted")?.as_str()?))?
        })
        .collect()
}

/// A `Duration` as its `Debug` form prints it: `1.5s`, `52.1ms`, `800µs`,
/// `12ns`.
fn debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" | "us" => number / 1e6,
        "ns" => number / 1e9,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Starts netsyncd with its database in `dir` (created or reused), with
/// `bins.netsyncd_args` after the harness's own flags.
pub async fn start_netsyncd(bins: &Binaries, dir: &Path) -> anyhow::Result<Process> {
    start_netsyncd_with(bins, dir, NetsyncdOptions::default()).await
}

/// [`start_netsyncd`] with `options`.
pub async fn start_netsyncd_with(
    bins: &Binaries,
    dir: &Path,
    options: NetsyncdOptions,
) -> anyhow::Result<Process> {
    start_netsyncd_on(bins, dir, database(bins, dir), &[], options).await
}

/// A netsyncd in `dir` storing in `db` (a SQLite path or a PostgreSQL URL:
/// replicas share one), with `args` after the harness's flags and before
/// `bins.netsyncd_args`.
pub async fn start_netsyncd_on(
    bins: &Binaries,
    dir: &Path,
    db: std::ffi::OsString,
    args: &[String],
    options: NetsyncdOptions,
) -> anyhow::Result<Process> {
    std::fs::create_dir_all(dir)?;
    let trace = dir.join("fsyncs.strace");
    let mut command = if options.trace_fsyncs {
        let mut strace = Command::new("strace");
        strace
            .args(["-f", "--seccomp-bpf", "-qq", "-e", "trace=fsync,fdatasync"])
            .args(["-e", "signal=none", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(&bins.netsyncd);
        strace
    } else {
        Command::new(&bins.netsyncd)
    };
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--db")
        .arg(db)
        // The scenarios open more than the defaults let a client have: 1,000
        // datastores (the default cap exactly) and 101 watchers of one.
        .args([
            "--max-datastores",
            "2000",
            "--max-watchers-per-datastore",
            "1000",
        ]);
    if options.metrics {
        command.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    command
        .args(args)
        .args(&bins.netsyncd_args)
        .env(PURGE_DELAY.0, PURGE_DELAY.1)
        .current_dir(dir);
    // A restarted process gets a log of its own, next to the first one.
    let directive = options.commit_log.then_some(COMMIT_LOG);
    let mut process = Process::start("netsyncd", command, next_log(dir, "netsyncd"), directive)
        .await
        .with_context(|| {
            if options.trace_fsyncs {
                "netsyncd under strace (--trace-fsyncs needs strace 5.3 or later on PATH, and \
                 ptrace allowed)"
            } else {
                "netsyncd"
            }
        })?;
    if options.trace_fsyncs {
        // It has logged its address, so strace's child exists.
        let pid = only_child(process.guard.pid())?;
        process.traced = Some(Traced { pid, trace });
    }
    Ok(process)
}

/// The one child of process `pid` (of its main thread, as a tracer's is).
fn only_child(pid: u32) -> anyhow::Result<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let children = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    match children.split_whitespace().collect::<Vec<_>>()[..] {
        [child] => Ok(child.parse()?),
        ref other => bail!("process {pid} has {} children, not one", other.len()),
    }
}

/// Calls of fsync(2) and fdatasync(2) in strace's output. A call another
/// thread interrupted is split over two lines (`fsync(3 <unfinished ...>`,
/// then `<... fsync resumed>) = 0`): the first is the one counted.
fn count_sync_calls(trace: &str) -> u64 {
    trace
        .lines()
        .filter(|line| line.contains("fsync(") || line.contains("fdatasync("))
        .count() as u64
}

/// The CPU time process `pid` has used, all threads, user and system
/// (`utime` and `stime` of `/proc/PID/stat`).
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    cpu_time_in(&stat, rustix::param::clock_ticks_per_second())
}

/// The CPU time in a `/proc/PID/stat` line, whose times count `ticks` a second.
fn cpu_time_in(stat: &str, ticks: u64) -> anyhow::Result<Duration> {
    // The name, in parentheses, may hold spaces and parentheses: the fields
    // are counted from after its last one. utime and stime are fields 14 and
    // 15 of the line, 12 and 13 after the name.
    let after_name = stat
        .rsplit_once(')')
        .context("a /proc stat line without a name")?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("a /proc stat line too short")?
            .parse()?)
    };
    let ticks_used = field(11)? + field(12)?;
    Ok(Duration::from_secs_f64(ticks_used as f64 / ticks as f64))
}

/// Where the netsyncd of the scenario in `dir` stores: `netsync.db` there,
/// or with `--postgres` a database of the cluster named after `dir` (the
/// same one again for a netsyncd restarted on it).
fn database(bins: &Binaries, dir: &Path) -> std::ffi::OsString {
    match bins.postgres {
        None => dir.join("netsync.db").into_os_string(),
        Some(cluster) => {
            // FNV-1a of the path: a plain identifier, stable for `dir`.
            let hash = dir
                .as_os_str()
                .as_encoded_bytes()
                .iter()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
                });
            cluster.database(&format!("bench_{hash:016x}")).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_persist_times_are_read_from_the_log() {
        let lines: Vec<serde_json::Value> = [
            r#"{"level":"DEBUG","fields":{"message":"committed","datastore":"s","persisted":"52.5ms"}}"#,
            r#"{"level":"DEBUG","fields":{"message":"committed","datastore":"t","persisted":"9ms"}}"#,
            r#"{"level":"INFO","fields":{"message":"reconcile","datastore":"s"}}"#,
            r#"{"message":"committed","datastore":"s","persisted":"1.25s"}"#,
            r#"{"message":"committed","datastore":"s","persisted":"800µs"}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let ms = Duration::from_millis;
        assert_eq!(
            commit_persist_times(&lines, "s"),
            [
                ms(52) + Duration::from_micros(500),
                ms(1250),
                Duration::from_micros(800)
            ]
        );
        assert_eq!(debug_duration("12ns"), Some(Duration::from_nanos(12)));
        assert_eq!(debug_duration("12"), None);
        assert_eq!(debug_duration("3h"), None);
    }

    #[test]
    fn cpu_time_is_read_past_an_awkward_name() {
        let stat = "4242 (net (sync) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(
            cpu_time_in(stat, 100).unwrap(),
            Duration::from_millis(3_000)
        );
        assert!(cpu_time_in("4242 (x) S 1", 100).is_err());
        assert!(cpu_time_of(std::process::id()).is_ok());
    }

    #[test]
    fn sync_calls_are_counted_once_each() {
        let trace = "\
7 fdatasync(12)                    = 0
8 fsync(13 <unfinished ...>
7 fdatasync(12)                    = 0
8 <... fsync resumed>)             = 0
9 fsync(5)                         = 0
";
        assert_eq!(count_sync_calls(trace), 4);
        assert_eq!(count_sync_calls(""), 0);
    }
}
