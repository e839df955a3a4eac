//! netsyncd as a real process: started from the built binary on an ephemeral
//! port, its address read from its first JSON log line, stopped with SIGTERM;
//! its log is kept for the test to read.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest wait for the process to start listening or to exit.
const DEADLINE: Duration = Duration::from_secs(60);

/// A running netsyncd process; killed on drop if still running.
pub struct Netsyncd {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Reads stderr until the process ends; returns every line.
    reader: Option<JoinHandle<Vec<String>>>,
}

impl Netsyncd {
    /// Starts `netsyncd serve` on 127.0.0.1:0 with the SQLite file `db`.
    pub fn start(db: &Path) -> Self {
        Self::start_with(db, &[] as &[&str])
    }

    /// Starts `netsyncd serve` on 127.0.0.1:0 with the SQLite file `db` and
    /// the flags `args`.
    pub fn start_with(db: &Path, args: &[impl AsRef<OsStr>]) -> Self {
        Self::start_logging(db, args, "info")
    }

    /// As [`Netsyncd::start_with`], logging what the `RUST_LOG` filter
    /// `rust_log` lets through.
    pub fn start_logging(db: &Path, args: &[impl AsRef<OsStr>], rust_log: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_netsyncd"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--db",
            ])
            .arg(db)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("netsyncd starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps draining stderr so the process never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("netsyncd: {line}");
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(listen) = json.get("listen").and_then(|v| v.as_str())
                {
                    let _ = tx.send(listen.parse::<SocketAddr>().unwrap());
                }
                lines.push(line);
            }
            lines
        });
        let addr = rx
            .recv_timeout(DEADLINE)
            .expect("netsyncd logs its address");
        Self {
            child,
            addr,
            reader: Some(reader),
        }
    }

    /// Runs `netsyncd serve` with `args` (on 127.0.0.1:0) expecting it to
    /// exit by itself, as with a bad configuration; killed if it does not.
    pub fn run_to_exit(args: &[impl AsRef<OsStr>]) -> Output {
        let child = Command::new(env!("CARGO_BIN_EXE_netsyncd"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netsyncd starts");
        let pid = child.id().to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(output) => output.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("netsyncd did not exit by itself");
            }
        }
    }

    /// `http://addr`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM, waits for the exit; returns the exit status and every
    /// line the process logged.
    pub fn terminate_with_log(mut self) -> (ExitStatus, Vec<String>) {
        let status = self.wait_terminated();
        let log = self.reader.take().unwrap().join().unwrap();
        (status, log)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        self.wait_terminated()
    }

    fn wait_terminated(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "netsyncd did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netsyncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
