//! What the CLI tests share: netsyncd in the test process on an ephemeral
//! port (the same `serve` seam main uses; the testkit cannot hold this, as
//! it must not depend on netsync-server) and the `netsync` binary run
//! against it.

use std::net::SocketAddr;
use std::process::Output;

use netsync_server::{Config, ServeError};
use netsync_testkit::client::Client;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// netsyncd serving in this process with its database in a temporary
/// directory; stopped when dropped (its task ends with the runtime).
pub struct Netsyncd {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<Result<(), ServeError>>,
    _dir: tempfile::TempDir,
}

impl Netsyncd {
    /// Starts netsyncd on 127.0.0.1:0.
    pub async fn start() -> Self {
        Self::start_with(|config| config).await
    }

    /// Starts netsyncd on 127.0.0.1:0 with the default configuration
    /// changed by `change` (TLS, for one).
    pub async fn start_with(change: impl FnOnce(Config) -> Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = change(Config::with_db(format!(
            "sqlite://{}",
            dir.path().join("netsync.db").display()
        )));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            netsync_server::serve(&config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            _stop: stop,
            _task: task,
            _dir: dir,
        }
    }

    /// `http://addr`, as `--server` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A netsync API client, for what the tests check behind the CLI's back.
    pub async fn client(&self) -> Client {
        Client::new(netsync_testkit::channel(self.addr).await)
    }

    /// `netsync --server URL args...`, with NETSYNC_SERVER unset so that the
    /// flag is what counts.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = netsync(args);
        command.args(["--server", &self.url()]);
        command
    }

    /// Runs `netsync args...` against this netsyncd, asserting it succeeds;
    /// returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = netsync_testkit::tools::run(&mut self.command(args)).await;
        let stdout = String::from_utf8(output.stdout).unwrap();
        // A pipe gets no colours and no progress, ever.
        assert!(
            !stdout.contains('\x1b'),
            "escape codes in a pipe: {stdout:?}"
        );
        assert!(
            output.stderr.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Runs `netsync args...` against this netsyncd, asserting it fails.
    pub async fn fails(&self, args: &[&str]) -> Output {
        let output = netsync_testkit::tools::output(&mut self.command(args)).await;
        assert!(
            !output.status.success(),
            "netsync {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        output
    }
}

/// The `netsync` binary with `args`, NETSYNC_SERVER unset.
pub fn netsync(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_netsync"));
    command.args(args).env_remove("NETSYNC_SERVER");
    command
}

/// Asserts `output` exited with `code` and its stderr holds every one of `words`.
pub fn assert_failed(output: &Output, code: i32, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "{word:?} not in stderr: {stderr}");
    }
}

/// A file `name` with `text` in `dir`, for `-f`.
pub fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}
