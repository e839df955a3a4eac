//! Starting netsyncd for a test: in this process on an ephemeral loopback
//! port ([`TestServer`]), or as a real process from the built binary
//! ([`Netsyncd`], its address read from its JSON log, stopped with SIGTERM).
//!
//! The database is SQLite, or PostgreSQL when `NETSYNC_TEST_DB=postgres`
//! ([`db_url`]): the same tests then run on a database of a throwaway cluster
//! (`netsync_testkit::postgres`). Tests about SQLite itself (its file, a full
//! disk under it, its lock) use [`sqlite_config`] and say so in their module
//! doc.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Output};

use netsync_proto::netsync::v1 as pb;
use netsync_server::{Config, ServeError};
use netsync_testkit::LONG_DEADLINE;
use netsync_testkit::process::{Echo, Process};
use pb::net_sync_client::NetSyncClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// netsyncd running in this process, stopped by [`TestServer::stop`].
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Starts netsyncd on 127.0.0.1:0 with the test database `db` (see
    /// [`db_url`]).
    pub async fn start(db: &Path) -> Self {
        Self::start_with(config(db)).await
    }

    /// Starts netsyncd on 127.0.0.1:0 with `config` (its `listen` is ignored).
    pub async fn start_with(config: Config) -> Self {
        Self::start_at(config, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts netsyncd on `addr` with `config` (its `listen` is ignored): on
    /// the port of a server stopped before, for a restart its clients
    /// reconnect to by themselves.
    pub async fn start_at(config: Config, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            netsync_server::serve(&config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self { addr, stop, task }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        netsync_testkit::channel(self.addr).await
    }

    /// A netsync API client.
    pub async fn client(&self) -> NetSyncClient<Channel> {
        NetSyncClient::new(self.channel().await)
    }

    /// Signals shutdown and waits for a clean exit.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }

    /// Signals shutdown without waiting; returns the server task.
    pub fn begin_stop(self) -> JoinHandle<Result<(), ServeError>> {
        self.stop.send(()).unwrap();
        self.task
    }
}

/// The default configuration, with the test database `db` (see [`db_url`]).
pub fn config(db: &Path) -> Config {
    Config::with_db(db_url(db))
}

/// The default configuration with the SQLite file `db`, whatever
/// `NETSYNC_TEST_DB` says: for tests about SQLite itself.
pub fn sqlite_config(db: &Path) -> Config {
    Config::with_db(format!("sqlite://{}", db.display()))
}

/// `config` with the SQLite file `db` as its database, whatever
/// `NETSYNC_TEST_DB` says: for tests that read or damage the file.
pub fn on_sqlite(mut config: Config, db: &Path) -> Config {
    config.db = format!("sqlite://{}", db.display());
    config
}

/// Whether the tests run on PostgreSQL (`NETSYNC_TEST_DB=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("NETSYNC_TEST_DB").is_ok_and(|v| v == "postgres")
}

/// The database URL for the test database named by the path `db`: the
/// SQLite file `db`, or on PostgreSQL a database of the shared cluster named
/// after `db`, created at first use: the same path gives the same database,
/// so a restarted netsyncd finds what the one before wrote, as it would in
/// the file.
pub fn db_url(db: &Path) -> String {
    if !on_postgres() {
        return format!("sqlite://{}", db.display());
    }
    let cluster = netsync_testkit::postgres::PgCluster::shared()
        .expect("NETSYNC_TEST_DB=postgres, but PostgreSQL (initdb, pg_ctl) is missing");
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(db, &mut hasher);
    cluster.database(&format!("t_{:016x}", std::hash::Hasher::finish(&hasher)))
}

/// A temporary directory, netsyncd in this process with its database there,
/// and a client of it.
pub async fn start() -> (tempfile::TempDir, TestServer, NetSyncClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let client = server.client().await;
    (dir, server, client)
}

/// A running netsyncd process; killed and reaped on drop if still running.
pub struct Netsyncd {
    process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Extra flags and environment for [`Netsyncd::start_with`].
#[derive(Debug, Default)]
pub struct Options {
    /// Flags after the defaults; a `--listen` here replaces the default
    /// 127.0.0.1:0 (netsyncd refuses a flag given twice).
    pub args: Vec<String>,
    /// Environment variables, over the default `RUST_LOG=info`.
    pub env: Vec<(String, String)>,
    /// The SQLite file `db` whatever `NETSYNC_TEST_DB` says: for tests
    /// about SQLite itself.
    pub sqlite: bool,
    /// This database URL whatever `NETSYNC_TEST_DB` says: for replicas
    /// sharing a database of a [`netsync_testkit::postgres::PgCluster`].
    pub db_url: Option<String>,
}

impl Netsyncd {
    /// Starts `netsyncd serve` on 127.0.0.1:0 with the test database `db`
    /// (see [`db_url`]).
    pub fn start(db: &Path) -> Self {
        Self::start_with(db, Options::default())
    }

    /// Starts `netsyncd serve` on 127.0.0.1:0 with the test database `db`
    /// (see [`db_url`]), JSON logs, and `options`.
    pub fn start_with(db: &Path, options: Options) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_netsyncd"));
        command.arg("serve");
        if !options.args.iter().any(|arg| arg == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--log-format", "json", "--db"])
            .arg(match (&options.db_url, options.sqlite) {
                (Some(url), _) => url.clone(),
                (None, true) => format!("sqlite://{}", db.display()),
                (None, false) => db_url(db),
            })
            .args(&options.args)
            .env("RUST_LOG", "info")
            .envs(options.env);
        let process = Process::start_listening("netsyncd", command, Echo::stderr(), LONG_DEADLINE)
            .unwrap_or_else(|e| panic!("netsyncd does not start: {e}"));
        let addr = process.addr();
        Self { process, addr }
    }

    /// The first log line for which `find` gives a value, waiting for it up
    /// to a generous deadline; `what` names it in the failure.
    pub fn wait_for_log<T>(
        &self,
        what: &str,
        find: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        self.process.wait_for_log(what, LONG_DEADLINE, find)
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.process.logs()
    }

    /// `http://addr`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT...) to the process.
    pub fn signal(&self, signal: netsync_testkit::process::Signal) {
        self.process.signal(signal).unwrap();
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_hard(mut self) {
        self.process.kill().unwrap();
    }

    /// Runs `netsyncd serve` with `args` (on 127.0.0.1:0) expecting it to
    /// exit by itself, as with a bad configuration; killed if it does not.
    pub fn run_to_exit(args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_netsyncd"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args);
        Process::run_to_exit("netsyncd", command, LONG_DEADLINE)
    }

    /// Sends SIGTERM, waits for the exit; returns the exit status and every
    /// JSON line the process logged, to its last.
    pub fn terminate_with_logs(mut self) -> (ExitStatus, Vec<serde_json::Value>) {
        let status = self.process.terminate(LONG_DEADLINE).unwrap();
        (status, self.process.logs())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        self.process.terminate(LONG_DEADLINE).unwrap()
    }
}

/// Asserts `status` has `code` and a message mentioning every one of `words`.
pub fn assert_status(status: &tonic::Status, code: tonic::Code, words: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for word in words {
        assert!(
            status.message().contains(word),
            "{word:?} not in {:?}",
            status.message()
        );
    }
}

/// `GET path` over a fresh plain TCP connection: (status line, headers, body).
/// Enough HTTP for a Prometheus scrape.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly as exposed) in
/// a Prometheus exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}
