//! netsyncd and netsync-sim as child processes: each in its own directory, on
//! an ephemeral loopback port read back from its first JSON log line, its
//! output kept in a log file, its memory read from `/proc`, killed on drop.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::binaries::Binaries;

/// Longest wait for a process to log its address.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident set size now (`VmRSS`), bytes.
    pub rss: u64,
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak: u64,
}

/// A child process under test.
pub struct Process {
    name: &'static str,
    child: Child,
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Starts `command` (which must listen on `127.0.0.1:0` and log its address
    /// as JSON) and waits until it says where it listens.
    async fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        // Both programs log their address at info level; a finer filter for
        // their logs (kept with --keep) comes from NETSYNC_BENCH_RUST_LOG.
        let filter = std::env::var("NETSYNC_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
        command
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().context("a child without a pid")?;
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let (found, mut addresses) = mpsc::channel(2);
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        // The readers also keep draining the pipes, so the process never blocks
        // on a full one.
        let readers = vec![
            tokio::spawn(copy_log(stdout, Arc::clone(&file), found.clone())),
            tokio::spawn(copy_log(stderr, file, found)),
        ];
        let addr = tokio::select! {
            addr = addresses.recv() => addr,
            status = child.wait() => {
                bail!("{name} exited with {} before listening{}", status?, tail(&log))
            }
            () = tokio::time::sleep(START_DEADLINE) => None,
        };
        let Some(addr) = addr else {
            bail!(
                "{name} did not log its address within {START_DEADLINE:?}{}",
                tail(&log)
            );
        };
        Ok(Self {
            name,
            child,
            pid,
            addr,
            log,
            readers,
        })
    }

    /// `http://addr`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its memory now, read from the OS.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid).with_context(|| format!("memory of {}", self.name))
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}{}", self.name, tail(&self.log));
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status.
    pub async fn terminate(mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.pid.to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("cannot run kill")?;
        ensure!(sent.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "{} did not exit within {deadline:?} of SIGTERM{}",
                    self.name,
                    tail(&self.log)
                )
            })?
            .context("waiting for the exit")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // kill_on_drop would do it too, but only once the Child is dropped,
        // after the readers: kill first so that they see the pipes close.
        let _ = self.child.start_kill();
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// Starts netsync-sim with a generated device of `leaves` leaves, in `dir`.
pub async fn start_sim(bins: &Binaries, dir: &Path, leaves: usize) -> anyhow::Result<Process> {
    std::fs::create_dir_all(dir)?;
    let mut command = Command::new(&bins.sim);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            // More workers than cores: the device actor and a subscriber
            // session each keep a worker busy under heavy churn, and the
            // harness's SimControl calls (markers, counters) must not wait
            // for one of them to yield.
            "--threads",
            "4",
            "--leaves",
        ])
        .arg(leaves.to_string())
        .env(PURGE_DELAY.0, PURGE_DELAY.1)
        .current_dir(dir);
    Process::spawn("netsync-sim", command, dir.join("netsync-sim.log")).await
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
    Process::spawn("netsyncd", command, next_log(dir, "netsyncd")).await
}

/// `dir/NAME.log`, or `NAME.2.log`, ... if it exists already.
fn next_log(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(format!("{name}.log"));
    if !first.exists() {
        return first;
    }
    (2u32..)
        .map(|n| dir.join(format!("{name}.{n}.log")))
        .find(|candidate| !candidate.exists())
        .unwrap_or(first)
}

/// Copies lines of `pipe` into `file`, and sends the first address logged
/// with a `listen` field.
async fn copy_log<R: AsyncRead + Unpin>(
    pipe: R,
    file: Arc<Mutex<std::fs::File>>,
    found: mpsc::Sender<SocketAddr>,
) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addr) = listen_addr(&line) {
            let _ = found.try_send(addr);
        }
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(file, "{line}");
    }
}

/// The `listen` field of a JSON log line: at the top level (netsyncd
/// flattens fields) or under `fields` (netsync-sim does not).
fn listen_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("\"listen\"") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    let listen = json
        .get("listen")
        .or_else(|| json.get("fields")?.get("listen"))?;
    listen.as_str()?.parse().ok()
}

/// The last lines of a log, to explain a failure.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = format!("; last lines of {}:", log.display());
    for line in &lines[lines.len().saturating_sub(15)..] {
        let _ = write!(out, "\n    {line}");
    }
    out
}

/// Reads `VmRSS` and `VmHWM` of process `pid`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        // "VmHWM:	  123456 kB"
        let kib: u64 = line
            .trim_start_matches(':')
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("bad {name} line: {line}"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS")?,
        peak: field("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_in_both_log_shapes() {
        let flat =
            r#"{"timestamp":"t","level":"INFO","message":"listening","listen":"127.0.0.1:4000"}"#;
        let nested = r#"{"timestamp":"t","level":"INFO","fields":{"message":"listening","listen":"127.0.0.1:4001"}}"#;
        assert_eq!(listen_addr(flat), Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(listen_addr(nested), Some("127.0.0.1:4001".parse().unwrap()));
        assert_eq!(listen_addr("listening on 127.0.0.1:4000"), None);
    }

    #[test]
    fn our_own_memory_is_readable() {
        let memory = memory_of(std::process::id()).unwrap();
        assert!(memory.rss > 0 && memory.peak >= memory.rss);
    }

    #[test]
    fn logs_of_a_restarted_process_get_new_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_log(dir.path(), "n"), dir.path().join("n.log"));
        std::fs::write(dir.path().join("n.log"), "").unwrap();
        assert_eq!(next_log(dir.path(), "n"), dir.path().join("n.2.log"));
        std::fs::write(dir.path().join("n.2.log"), "").unwrap();
        assert_eq!(next_log(dir.path(), "n"), dir.path().join("n.3.log"));
    }
}
