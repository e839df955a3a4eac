//! netsyncd as a real process: started from the built binary on an ephemeral
//! port, its address read from its JSON log, stopped with SIGTERM; or run
//! with a bad configuration, to exit by itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for the process to start listening or to exit.
const DEADLINE: Duration = Duration::from_secs(60);

/// A running netsyncd process; killed on drop if still running.
pub struct Netsyncd {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its JSON log lines so far; notified at each new one.
    logs: Arc<(Mutex<Vec<serde_json::Value>>, Condvar)>,
    /// Reads stderr until the process ends.
    reader: Option<JoinHandle<()>>,
}

/// Extra flags and environment for [`Netsyncd::start_with`].
#[derive(Debug, Default)]
pub struct Options {
    /// Flags after the defaults (a flag given twice: the last one wins).
    pub args: Vec<String>,
    /// Environment variables, over the default `RUST_LOG=info`.
    pub env: Vec<(String, String)>,
}

impl Netsyncd {
    /// Starts `netsyncd serve` on 127.0.0.1:0 with the SQLite file `db`.
    pub fn start(db: &Path) -> Self {
        Self::start_with(db, Options::default())
    }

    /// Starts `netsyncd serve` on 127.0.0.1:0 with the SQLite file `db`,
    /// JSON logs, and `options`.
    pub fn start_with(db: &Path, options: Options) -> Self {
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
            .args(&options.args)
            .env("RUST_LOG", "info")
            .envs(options.env)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("netsyncd starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = logs.clone();
        // Keeps draining stderr so the process never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("netsyncd: {line}");
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    sink.0.lock().unwrap().push(json);
                    sink.1.notify_all();
                }
            }
        });
        let mut daemon = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            logs,
            reader: Some(reader),
        };
        daemon.addr = daemon.wait_for_log("its address", |line| {
            line.get("listen")?.as_str()?.parse().ok()
        });
        daemon
    }

    /// The first log line for which `find` gives a value, waiting for it up
    /// to a generous deadline; `what` names it in the failure.
    pub fn wait_for_log<T>(
        &self,
        what: &str,
        mut find: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + DEADLINE;
        let (lines, more) = &*self.logs;
        let mut lines = lines.lock().unwrap();
        let mut seen = 0;
        loop {
            if let Some(found) = lines[seen..].iter().find_map(&mut find) {
                return found;
            }
            seen = lines.len();
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("netsyncd did not log {what}"));
            lines = more.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.0.lock().unwrap().clone()
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

    /// Runs `netsyncd serve` with `args` (on 127.0.0.1:0) expecting it to
    /// exit by itself, as with a bad configuration; killed if it does not.
    pub fn run_to_exit(args: &[&str]) -> Output {
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

    /// Sends SIGTERM, waits for the exit; returns the exit status and every
    /// JSON line the process logged, to its last.
    pub fn terminate_with_logs(mut self) -> (ExitStatus, Vec<serde_json::Value>) {
        let status = self.wait_terminated();
        self.reader.take().unwrap().join().unwrap();
        (status, self.logs())
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
