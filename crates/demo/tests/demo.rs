//! netsync-demo as a newcomer runs it: the real binary, its narration read
//! line by line as it is printed, the grpcurl commands it suggests run exactly
//! as printed, and Ctrl-C / SIGTERM stopping it cleanly.

use std::process::{Command, ExitStatus, Output};

use netsync_testkit::LONG_DEADLINE;
use netsync_testkit::process::{Echo, Process, Signal, Stream};

/// A running netsync-demo; killed and reaped on drop if still running.
struct Demo {
    process: Process,
    /// Every stdout line read so far.
    seen: Vec<String>,
}

impl Demo {
    /// Starts netsync-demo on a free port with a device of `leaves` leaves,
    /// plus `args`.
    fn start(leaves: u64, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_netsync-demo"));
        command
            .args(["--listen", "127.0.0.1:0", "--leaves"])
            .arg(leaves.to_string())
            .args(args);
        let process = Process::start("demo", command, Echo::stderr()).expect("netsync-demo starts");
        Self {
            process,
            seen: Vec::new(),
        }
    }

    /// Waits until a line of stdout contains `text` (the demo narrates
    /// there; its logs go to stderr).
    fn wait_for(&mut self, text: &str) {
        let found = self.process.output().wait_for(LONG_DEADLINE, |line| {
            (line.stream == Stream::Stdout && line.text.contains(text)).then_some(())
        });
        self.read();
        assert!(
            found.is_some(),
            "no line with {text:?}; output:\n{}",
            self.output()
        );
    }

    /// Waits for the exit status, with every line printed to the last.
    fn wait(&mut self) -> ExitStatus {
        let status = self.process.wait_timeout(LONG_DEADLINE).unwrap();
        self.read();
        status.unwrap_or_else(|| panic!("the demo did not end; output:\n{}", self.output()))
    }

    /// Takes the stdout lines printed so far into `seen`.
    fn read(&mut self) {
        self.seen = self
            .process
            .output()
            .lines()
            .into_iter()
            .filter(|line| line.stream == Stream::Stdout)
            .map(|line| line.text)
            .collect();
    }

    /// Sends `signal` to the process.
    fn signal(&self, signal: Signal) {
        self.process.signal(signal).unwrap();
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
            .any(|l| (l.contains("replace") || l.contains("read whole"))
                && l.contains("2000 leaves")),
        "the initial dump is one replace commit of the whole device (or, if it came before \
         the reflector's first list, that list):\n{}",
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
    let Some(grpcurl) = netsync_testkit::tools::grpcurl() else {
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
    let datastore = answer("/GetDatastore");
    assert!(datastore.contains("SYNC_STATE_IN_SYNC"));
    // No fault was injected: the sync never had to recover (proto3 JSON
    // leaves zero counters out).
    assert!(
        datastore.contains("\"stats\"")
            && !datastore.contains("\"reconnects\"")
            && !datastore.contains("\"resyncs\""),
        "{datastore}"
    );
    let running = answer("/GetRunning");
    assert!(
        running.contains("/system/config/hostname") && running.contains("demo-router"),
        "{running}"
    );
    assert!(answer("/SetIntent").contains("\"name\": \"dns\""));
    assert!(answer("/SetLeaves").contains("changed"));

    demo.signal(Signal::TERM);
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
    demo.signal(Signal::INT);
    let status = demo.wait();
    assert!(status.success(), "exit status after ctrl-c: {status}");
    let interrupted = demo.find(0, "Interrupted: stopping.");
    demo.find(interrupted, "Stopped; the temporary database is removed.");
    assert!(!demo.output().contains("What you just saw"));
}
