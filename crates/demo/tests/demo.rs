//! netsync-demo as a newcomer runs it: the real binary, its narration read
//! line by line as it is printed, the grpcurl commands it suggests run exactly
//! as printed, and Ctrl-C / SIGTERM stopping it cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest wait for the demo to reach a milestone or to exit (a debug build
/// on a busy 2-core machine; the whole demo takes a few seconds).
const DEADLINE: Duration = Duration::from_secs(180);

/// A running netsync-demo; killed on drop if still running.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    seen: Vec<String>,
}

impl Demo {
    /// Starts netsync-demo on a free port with a device of `leaves` leaves,
    /// plus `args`.
    fn start(leaves: u64, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_netsync-demo"))
            .args(["--listen", "127.0.0.1:0", "--leaves"])
            .arg(leaves.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("netsync-demo starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Drains stdout to its end, so the demo never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("demo: {line}");
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `text`.
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.seen.last().is_some_and(|l| l.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("no line with {text:?} ({e}); output:\n{}", self.output()),
            }
        }
    }

    /// Reads stdout to its end, then waits for the exit status.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("the demo did not end ({e}); output:\n{}", self.output()),
            }
        }
        // Stdout is closed: the process is exiting or gone.
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`TERM`, `INT`) to the process.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// Index of the first line at or after `from` that contains `text`.
    fn find(&self, from: usize, text: &str) -> usize {
        self.seen[from..]
            .iter()
            .position(|l| l.contains(text))
            .map(|i| from + i)
            .unwrap_or_else(|| {
                panic!(
                    "no line with {text:?} after line {from}; output:\n{}",
                    self.output()
                )
            })
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn demo_narrates_sync_intent_drift_and_revert_then_exits() {
    let mut demo = Demo::start(2000, &["--exit"]);
    let status = demo.wait();
    assert!(status.success(), "exit status {status}:\n{}", demo.output());

    // The milestones, in the order a newcomer sees them.
    let synced = demo.find(0, "IN_SYNC");
    assert!(
        demo.seen[..synced]
            .iter()
            .any(|l| l.contains("replace") && l.contains("2000 leaves")),
        "the initial dump is one replace commit of the whole device:\n{}",
        demo.output()
    );
    let intent = demo.find(synced, "SetIntent");
    let queued = demo.find(intent, "QUEUED");
    let applying = demo.find(queued, "APPLYING");
    let applied = demo.find(applying, "APPLIED");
    let drift = demo.find(applied, r#"/system/config/hostname = "edited-by-hand""#);
    let revert_queued = demo.find(drift, "QUEUED");
    let back = demo.find(revert_queued, r#"/system/config/hostname = "demo-router""#);
    let reverted = demo.find(back, "APPLIED");
    let untracked = demo.find(
        reverted,
        r#"config/description = "borrowed for a lab test""#,
    );
    demo.find(untracked, "lists 0 deviations");
    let summary = demo.find(untracked, "What you just saw");
    demo.find(summary, "all 2000 leaves");
    let commands = demo.find(summary, "grpcurl -plaintext");
    demo.find(commands, "netsync.v1.NetSync/GetRunning");
    demo.find(commands, "netsync.v1.NetSync/WatchSync");
    demo.find(commands, "Stopped; the temporary database is removed.");
    assert!(
        !demo.output().contains("keeps serving"),
        "--exit does not serve on"
    );
    let db = demo.seen[demo.find(0, "  database  ")]
        .trim_start()
        .strip_prefix("database")
        .and_then(|rest| rest.trim_start().split(' ').next())
        .map(std::path::PathBuf::from)
        .unwrap();
    assert!(db.ends_with("netsync.db"), "{db:?}");
    assert!(
        !db.exists() && !db.parent().unwrap().exists(),
        "{db:?} left behind"
    );
}

/// `grpcurl` as the demo prints it, run through a shell with the grpcurl found.
fn run_printed(grpcurl: &std::path::Path, command: &str) -> Output {
    let command = command.replacen("grpcurl", &grpcurl.display().to_string(), 1);
    Command::new("bash")
        .args(["-c", &command])
        .output()
        .expect("bash runs")
}

#[test]
fn printed_grpcurl_commands_work_against_the_running_demo() {
    let Some(grpcurl) = common::grpcurl::find() else {
        return;
    };
    let mut demo = Demo::start(2000, &[]);
    demo.wait_for("until Ctrl-C");
    let commands: Vec<String> = demo
        .seen
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("grpcurl "))
        .map(String::from)
        .collect();
    assert!(commands.len() >= 6, "{commands:?}");
    let mut outputs = Vec::new();
    for command in commands.iter().filter(|c| !c.contains("WatchSync")) {
        let output = run_printed(&grpcurl, command);
        assert!(
            output.status.success(),
            "{command}\nfailed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        outputs.push((command, String::from_utf8(output.stdout).unwrap()));
    }
    let answer = |method: &str| {
        outputs
            .iter()
            .find(|(c, _)| c.contains(method))
            .map(|(_, out)| out.as_str())
            .unwrap_or_else(|| panic!("no {method} command printed"))
    };
    assert!(answer(" list").contains("netsync.v1.NetSync"));
    assert!(answer("/GetDatastore").contains("SYNC_STATE_IN_SYNC"));
    let running = answer("/GetRunning");
    assert!(
        running.contains("/system/config/hostname") && running.contains("demo-router"),
        "{running}"
    );
    assert!(answer("/SetIntent").contains("\"name\": \"dns\""));
    assert!(answer("/SetLeaves").contains("changed"));

    demo.signal("TERM");
    let status = demo.wait();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    demo.find(0, "Stopped; the temporary database is removed.");
}

#[test]
fn ctrl_c_during_the_initial_sync_stops_cleanly() {
    // A device large enough that the dump is still arriving when the signal
    // does (it takes seconds in a debug build, the signal milliseconds).
    let mut demo = Demo::start(100_000, &[]);
    demo.wait_for("INITIAL_SYNC");
    demo.signal("INT");
    let status = demo.wait();
    assert!(status.success(), "exit status after ctrl-c: {status}");
    let interrupted = demo.find(0, "Interrupted: stopping.");
    demo.find(interrupted, "Stopped; the temporary database is removed.");
    assert!(!demo.output().contains("What you just saw"));
}
