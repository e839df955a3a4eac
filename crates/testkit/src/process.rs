//! A child process under test: started from a [`Command`], its output read
//! line by line (kept, optionally echoed and copied to a file), signalled by
//! PID with no shelling out, and always killed and reaped when the guard
//! goes, so that no test leaves a process or a zombie behind.
//!
//! Both netsyncd and netsync-sim log their address (`listen`) in their first
//! JSON log line when started on port 0: [`Process::start_listening`] waits
//! for it.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process};

/// How a process's output is kept besides in memory.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// Each line also goes to the test's stderr, behind `name: `.
    pub stderr: bool,
    /// Each line is also appended to this file.
    pub file: Option<PathBuf>,
}

impl Echo {
    /// Lines echoed to the test's stderr (shown when a test fails).
    pub fn stderr() -> Self {
        Self {
            stderr: true,
            file: None,
        }
    }

    /// Lines copied into `file` only.
    pub fn file(file: PathBuf) -> Self {
        Self {
            stderr: false,
            file: Some(file),
        }
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of output.
#[derive(Debug, Clone)]
pub struct Line {
    /// Where it came from.
    pub stream: Stream,
    /// The text, without its line end.
    pub text: String,
}

impl Line {
    /// The line as JSON, if it is a JSON value.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.text).ok()
    }
}

/// The output read so far, shared with the reader threads.
#[derive(Default)]
struct Shared {
    lines: Vec<Line>,
    /// Pipes still open; 0 once the process has closed both.
    open: usize,
}

/// The captured output of a process: every line so far, and a way to wait
/// for one.
#[derive(Default)]
pub struct Captured {
    shared: Mutex<Shared>,
    more: Condvar,
}

impl Captured {
    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lock().lines.clone()
    }

    /// Every JSON line so far (of either pipe).
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.lock().lines.iter().filter_map(Line::json).collect()
    }

    /// The first line for which `find` gives a value, waiting up to
    /// `deadline`; `None` when the deadline passes or the process closes its
    /// output first.
    pub fn wait_for<T>(
        &self,
        deadline: Duration,
        mut find: impl FnMut(&Line) -> Option<T>,
    ) -> Option<T> {
        let until = Instant::now() + deadline;
        let mut shared = self.lock();
        let mut seen = 0;
        loop {
            if let Some(found) = shared.lines[seen..].iter().find_map(&mut find) {
                return Some(found);
            }
            seen = shared.lines.len();
            if shared.open == 0 {
                return None;
            }
            let left = until.checked_duration_since(Instant::now())?;
            shared = self
                .more
                .wait_timeout(shared, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The first JSON line for which `find` gives a value (see [`Self::wait_for`]).
    pub fn wait_for_json<T>(
        &self,
        deadline: Duration,
        mut find: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> Option<T> {
        self.wait_for(deadline, |line| find(&line.json()?))
    }

    /// The last `n` lines, one per line, to explain a failure.
    pub fn tail(&self, n: usize) -> String {
        let shared = self.lock();
        let mut out = String::new();
        for line in &shared.lines[shared.lines.len().saturating_sub(n)..] {
            let _ = write!(out, "\n    {}", line.text);
        }
        out
    }

    /// Waits up to `deadline` for both pipes to close; whether they have.
    fn wait_closed(&self, deadline: Duration) -> bool {
        let (shared, _) = self
            .more
            .wait_timeout_while(self.lock(), deadline, |shared| shared.open > 0)
            .unwrap_or_else(PoisonError::into_inner);
        shared.open == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: Line) {
        self.lock().lines.push(line);
        self.more.notify_all();
    }

    fn closed(&self) {
        self.lock().open -= 1;
        self.more.notify_all();
    }
}

/// Memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident set size now (`VmRSS`), bytes.
    pub rss: u64,
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak: u64,
}

/// A running child process; killed (SIGKILL) and reaped on drop if it is
/// still running.
pub struct Process {
    name: String,
    child: Child,
    output: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
    /// Where it listens, when started with [`Process::start_listening`].
    pub addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// Starts `command` with stdin closed and both output pipes read into
    /// memory (and `echo`).
    pub fn start(name: &str, mut command: Command, echo: Echo) -> std::io::Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let output = Arc::new(Captured::default());
        output.lock().open = 2;
        let file = match &echo.file {
            Some(path) => Some(Arc::new(Mutex::new(File::create(path)?))),
            None => None,
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let prefix = echo.stderr.then(|| name.to_string());
        // The readers also keep draining the pipes, so the process never
        // blocks on a full one.
        let readers = vec![
            reader(
                stdout,
                Stream::Stdout,
                &output,
                prefix.clone(),
                file.clone(),
            ),
            reader(stderr, Stream::Stderr, &output, prefix, file),
        ];
        Ok(Self {
            name: name.to_string(),
            child,
            output,
            readers,
            addr: None,
        })
    }

    /// Starts `command` (which must listen on `127.0.0.1:0` and log its
    /// address as a JSON `listen` field) and waits up to `deadline` until it
    /// says where it listens.
    pub fn start_listening(
        name: &str,
        command: Command,
        echo: Echo,
        deadline: Duration,
    ) -> std::io::Result<Self> {
        let mut process = Self::start(name, command, echo)?;
        match process
            .output
            .wait_for(deadline, |line| listen_addr(&line.text))
        {
            Some(addr) => {
                process.addr = Some(addr);
                Ok(process)
            }
            None => {
                // Closed output means that it exited (or is exiting), most
                // often at once: say how, rather than blame the deadline.
                let exit = if process.output.wait_closed(Duration::ZERO) {
                    process.wait_timeout(Duration::from_secs(5))?
                } else {
                    None
                };
                let what = match exit {
                    Some(status) => {
                        format!("{name} exited with {status} before logging its address")
                    }
                    None => format!("{name} did not log its address within {deadline:?}"),
                };
                Err(std::io::Error::other(format!(
                    "{what}; its last lines:{}",
                    process.output.tail(20)
                )))
            }
        }
    }

    /// Its name, as given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where it listens; panics if it was not started with
    /// [`Process::start_listening`].
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("started with start_listening")
    }

    /// `http://addr`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Its output so far and to come; can outlive the guard.
    pub fn output(&self) -> Arc<Captured> {
        Arc::clone(&self.output)
    }

    /// Every JSON line it printed so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.output.json()
    }

    /// The first JSON log line for which `find` gives a value, waiting for it
    /// up to `deadline`; panics naming `what` if there is none.
    pub fn wait_for_log<T>(
        &self,
        what: &str,
        deadline: Duration,
        find: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        self.output
            .wait_for_json(deadline, find)
            .unwrap_or_else(|| panic!("{} did not log {what}{}", self.name, self.output.tail(20)))
    }

    /// Sends `signal` to the process (by PID, as `kill(2)`).
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("a child without a valid pid"))?;
        kill_process(pid, signal).map_err(std::io::Error::from)
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// An error naming the exit status and the last lines if it has exited.
    pub fn check_running(&mut self) -> std::io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(std::io::Error::other(format!(
                "{} exited with {status}; its last lines:{}",
                self.name,
                self.output.tail(15)
            ))),
        }
    }

    /// Waits up to `deadline` for the exit status; `None` if it is still
    /// running then.
    pub fn wait_timeout(&mut self, deadline: Duration) -> std::io::Result<Option<ExitStatus>> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.join_readers();
                return Ok(Some(status));
            }
            let Some(left) = until
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
            else {
                return Ok(None);
            };
            // The pipes close as the process exits, which wakes this at once:
            // a measured shutdown is not rounded up to the poll. The polls
            // cover the moment between that and the exit status (1 ms), and
            // pipes that a grandchild holds open (10 ms).
            if self.output.wait_closed(left.min(Duration::from_millis(10))) {
                std::thread::sleep(left.min(Duration::from_millis(1)));
            }
        }
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status; an error
    /// (after a SIGKILL) if it does not exit in time.
    pub fn terminate(&mut self, deadline: Duration) -> std::io::Result<ExitStatus> {
        self.signal(Signal::TERM)?;
        match self.wait_timeout(deadline)? {
            Some(status) => Ok(status),
            None => {
                self.kill()?;
                Err(std::io::Error::other(format!(
                    "{} did not exit within {deadline:?} of SIGTERM; its last lines:{}",
                    self.name,
                    self.output.tail(15)
                )))
            }
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::KILL)?;
        let status = self.child.wait()?;
        self.join_readers();
        Ok(status)
    }

    /// Its memory now, read from the OS.
    pub fn memory(&self) -> std::io::Result<Memory> {
        memory_of(self.child.id())
    }

    /// Runs `command` to its end, up to `deadline`, and returns its output;
    /// panics (after killing it) if it does not exit by itself in time.
    pub fn run_to_exit(name: &str, command: Command, deadline: Duration) -> Output {
        let mut process = Self::start(name, command, Echo::default())
            .unwrap_or_else(|e| panic!("{name} cannot start: {e}"));
        let Some(status) = process.wait_timeout(deadline).unwrap() else {
            panic!(
                "{name} did not exit by itself within {deadline:?}{}",
                process.output.tail(20)
            );
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for line in process.output.lines() {
            let out = match line.stream {
                Stream::Stdout => &mut stdout,
                Stream::Stderr => &mut stderr,
            };
            out.extend_from_slice(line.text.as_bytes());
            out.push(b'\n');
        }
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Waits for the readers to see both pipes close (after an exit).
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Always reaped: a SIGKILL when it still runs, then wait(2).
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.signal(Signal::KILL);
            let _ = self.child.wait();
        }
        // A grandchild may hold the pipes open; do not wait for it.
        self.readers.clear();
    }
}

/// A thread copying lines of `pipe` into `output` (and the echoes) until it
/// closes.
fn reader(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    output: &Arc<Captured>,
    prefix: Option<String>,
    file: Option<Arc<Mutex<File>>>,
) -> JoinHandle<()> {
    let output = Arc::clone(output);
    std::thread::spawn(move || {
        for text in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(prefix) = &prefix {
                eprintln!("{prefix}: {text}");
            }
            if let Some(file) = &file {
                let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = writeln!(file, "{text}");
            }
            output.push(Line { stream, text });
        }
        output.closed();
    })
}

/// The `listen` field of a JSON log line: at the top level (netsyncd
/// flattens fields) or under `fields` (netsync-sim does not).
pub fn listen_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("\"listen\"") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    let listen = json
        .get("listen")
        .or_else(|| json.get("fields")?.get("listen"))?;
    listen.as_str()?.parse().ok()
}

/// Reads `VmRSS` and `VmHWM` of process `pid`.
pub fn memory_of(pid: u32) -> std::io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> std::io::Result<u64> {
        // "VmHWM:	  123456 kB"
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|line| {
                line.trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .ok_or_else(|| std::io::Error::other(format!("no {name} in /proc/{pid}/status")))
    };
    Ok(Memory {
        rss: field("VmRSS")?,
        peak: field("VmHWM")?,
    })
}

/// `dir/NAME.log`, or `NAME.2.log`, ... if it exists already: a restarted
/// process gets a log of its own next to the first one.
pub fn next_log(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(format!("{name}.log"));
    if !first.exists() {
        return first;
    }
    (2u32..)
        .map(|n| dir.join(format!("{name}.{n}.log")))
        .find(|candidate| !candidate.exists())
        .unwrap_or(first)
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
    fn a_stopped_process_is_terminated_killed_and_reaped() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo ready; exec sleep 600"]);
        let mut process = Process::start("sleeper", command, Echo::default()).unwrap();
        let ready = process.output().wait_for(Duration::from_secs(30), |l| {
            (l.text == "ready").then_some(())
        });
        assert!(ready.is_some());
        process.signal(Signal::STOP).unwrap();
        process.signal(Signal::CONT).unwrap();
        let status = process.terminate(Duration::from_secs(30)).unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        let pid = process.pid();
        drop(process);
        // Reaped: the PID is no longer a child of ours (nor a zombie).
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || !is_zombie(pid));
    }

    #[test]
    fn a_process_that_exits_by_itself_gives_its_output() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = Process::run_to_exit("sh", command, Duration::from_secs(30));
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }

    #[test]
    fn an_exit_before_listening_is_reported_with_its_status() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo no address here; exit 2"]);
        let deadline = Duration::from_secs(30);
        let error = Process::start_listening("sh", command, Echo::default(), deadline).unwrap_err();
        let error = error.to_string();
        assert!(error.contains("exited with exit status: 2"), "{error}");
        assert!(error.contains("no address here"), "{error}");
    }

    #[test]
    fn a_process_that_closed_its_output_is_still_waited_for() {
        let mut command = Command::new("sh");
        command.args(["-c", "exec >&- 2>&-; sleep 0.2; exit 4"]);
        let mut process = Process::start("sh", command, Echo::default()).unwrap();
        let status = process.wait_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(4));
    }

    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
    }

    #[test]
    fn logs_of_a_restarted_process_get_new_names() {
        let dir = std::env::temp_dir().join(format!("testkit-next-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(next_log(&dir, "n"), dir.join("n.log"));
        std::fs::write(dir.join("n.log"), "").unwrap();
        assert_eq!(next_log(&dir, "n"), dir.join("n.2.log"));
        std::fs::write(dir.join("n.2.log"), "").unwrap();
        assert_eq!(next_log(&dir, "n"), dir.join("n.3.log"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
