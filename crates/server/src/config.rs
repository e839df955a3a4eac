//! netsyncd's configuration: command-line flags, then `NETSYNC_*` environment
//! variables, then an optional TOML file, then defaults (first one set wins).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use netsync_core::datastore::{DeviceCaps, SyncSpec};
use netsync_core::sync::SyncLimits;
use serde::Deserialize;

use crate::authz::Authorization;
use crate::limits::{ApiLimits, InvalidLimit, LimitArgs, LimitsFile};
use crate::log::Retention;
use crate::reconcile::ReconcileConfig;
use crate::telemetry::LogFormat;
use crate::tls::{ApiTls, TlsArgs, TlsError, TlsFile};

/// Default API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default database.
pub const DEFAULT_DB: &str = "sqlite://netsync.db";
/// How often the API's TLS files are read again: a rotated certificate
/// serves new connections within this long.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// How long in-flight calls may run on after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// netsyncd: keeps a lossless, persisted copy of network devices' configuration
/// and state, synced over gNMI, and serves it over gRPC.
#[derive(Debug, Parser)]
#[command(name = "netsyncd", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without one, netsyncd serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The serve flags, wherever they were given; `None` for another subcommand.
    pub fn serve_args(self) -> Option<ServeArgs> {
        match self.command {
            Some(Command::Serve(args)) => Some(*args),
            None => Some(self.serve),
            Some(Command::Health(_)) => None,
        }
    }
}

/// netsyncd's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the netsync API (the default).
    Serve(Box<ServeArgs>),
    /// Ask a running netsyncd whether it serves (grpc.health.v1 Check, in
    /// plaintext): exit 0 when SERVING, 1 otherwise. For a Docker HEALTHCHECK.
    Health(HealthArgs),
}

/// Flags of `netsyncd health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Address to ask: the health listener (--health-listen) or a plaintext API.
    #[arg(
        long,
        env = "NETSYNC_HEALTH_ADDR",
        value_name = "HOST:PORT",
        default_value = DEFAULT_LISTEN
    )]
    pub addr: String,
    /// Service to ask about; empty: the process as a whole (liveness).
    /// `netsync.v1.NetSync` is readiness.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds to wait for the answer, connecting included.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub timeout_seconds: u64,
}

/// Flags of `netsyncd serve`.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address the gRPC API listens on [default: 127.0.0.1:50051].
    #[arg(long, env = "NETSYNC_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// SQLite database, as sqlite://PATH or a file path; created if missing
    /// [default: sqlite://netsync.db].
    #[arg(long, env = "NETSYNC_DB", value_name = "URL")]
    pub db: Option<String>,
    /// TOML configuration file (keys as the long flags, with `_`: listen, db,
    /// log_format, retain_commits, retain_seconds, pending_cap, watch_buffer,
    /// initial_sync_timeout_seconds, device_max_message_bytes,
    /// device_max_leaves, device_max_leaf_bytes,
    /// set_timeout_seconds, revert_max_failures, metrics_listen,
    /// health_listen, replicas, replica_id, lease_seconds; tables [authorization] with readers, writers;
    /// [tls] with cert, key,
    /// client_ca and [limits] with the limit flags).
    #[arg(long, env = "NETSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log line format [default: text]; the filter comes from RUST_LOG.
    #[arg(long, env = "NETSYNC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Commits the change log keeps at least, per datastore [default: 10000].
    #[arg(long, env = "NETSYNC_RETAIN_COMMITS", value_name = "N")]
    pub retain_commits: Option<u64>,
    /// Seconds of commits the change log keeps at least [default: 3600].
    #[arg(long, env = "NETSYNC_RETAIN_SECONDS", value_name = "SECONDS")]
    pub retain_seconds: Option<u64>,
    /// Uncommitted changes per datastore past which ingest pauses [default: 1000000].
    #[arg(long, env = "NETSYNC_PENDING_CAP", value_name = "N")]
    pub pending_cap: Option<usize>,
    /// Events buffered per datastore for watchers; a watcher further behind is
    /// cut off [default: 4096].
    #[arg(long, env = "NETSYNC_WATCH_BUFFER", value_name = "N")]
    pub watch_buffer: Option<usize>,
    /// Longest wait for the end of a device's dump (sync_response, Get
    /// answer), for datastores that set no sync.initial_sync_timeout
    /// [default: 300].
    #[arg(
        long,
        env = "NETSYNC_INITIAL_SYNC_TIMEOUT_SECONDS",
        value_name = "SECONDS"
    )]
    pub initial_sync_timeout_seconds: Option<u64>,
    /// Largest message a device may send, for datastores that set no
    /// sync.max_message_bytes [default: 67108864].
    #[arg(long, env = "NETSYNC_DEVICE_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub device_max_message_bytes: Option<u64>,
    /// Most leaves of a datastore's running, for datastores that set no
    /// sync.max_leaves [default: 10000000].
    #[arg(long, env = "NETSYNC_DEVICE_MAX_LEAVES", value_name = "N")]
    pub device_max_leaves: Option<u64>,
    /// Largest value of one leaf, for datastores that set no
    /// sync.max_leaf_bytes [default: 1048576].
    #[arg(long, env = "NETSYNC_DEVICE_MAX_LEAF_BYTES", value_name = "BYTES")]
    pub device_max_leaf_bytes: Option<u64>,
    /// Longest wait for one gNMI Set of a reconcile job, in seconds [default: 60].
    #[arg(long, env = "NETSYNC_SET_TIMEOUT_SECONDS", value_name = "SECONDS")]
    pub set_timeout_seconds: Option<u64>,
    /// Sets in a row of one intent that do not stick (the device changes the
    /// leaves back, never shows them, or refuses them) after which the intent
    /// is FAILING and its auto-revert paused; 0: never [default: 5].
    #[arg(long, env = "NETSYNC_REVERT_MAX_FAILURES", value_name = "N")]
    pub revert_max_failures: Option<u32>,
    /// TLS on the API.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Limits against bad clients.
    #[command(flatten)]
    pub api_limits: LimitArgs,
    /// Address to serve Prometheus metrics on, at /metrics over plain HTTP
    /// [default: off]; a `:0` port is chosen by the system and logged.
    #[arg(long, env = "NETSYNC_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Address of a plaintext listener serving only grpc.health.v1, for
    /// probes that cannot speak the API's TLS [default: off]; a `:0` port is
    /// chosen by the system and logged.
    #[arg(long, env = "NETSYNC_HEALTH_LISTEN", value_name = "HOST:PORT")]
    pub health_listen: Option<String>,
    /// Run as one of several replicas sharing one PostgreSQL database: each
    /// datastore is synced by one replica at a time, under a lease
    /// (PostgreSQL only; without it a second netsyncd on the database is
    /// refused).
    #[arg(long, env = "NETSYNC_REPLICAS")]
    pub replicas: bool,
    /// This replica's id, unique among the replicas [default: random at
    /// start].
    #[arg(long, env = "NETSYNC_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,
    /// Seconds a replica's leases last without renewal: how long its
    /// datastores wait for another replica after it dies [default: 10].
    #[arg(long, env = "NETSYNC_LEASE_SECONDS", value_name = "SECONDS")]
    pub lease_seconds: Option<u64>,
}

/// Keys accepted in the TOML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    db: Option<String>,
    log_format: Option<LogFormat>,
    retain_commits: Option<u64>,
    retain_seconds: Option<u64>,
    pending_cap: Option<usize>,
    watch_buffer: Option<usize>,
    initial_sync_timeout_seconds: Option<u64>,
    device_max_message_bytes: Option<u64>,
    device_max_leaves: Option<u64>,
    device_max_leaf_bytes: Option<u64>,
    set_timeout_seconds: Option<u64>,
    revert_max_failures: Option<u32>,
    tls: Option<TlsFile>,
    limits: Option<LimitsFile>,
    metrics_listen: Option<String>,
    health_listen: Option<String>,
    authorization: Option<Authorization>,
    replicas: Option<bool>,
    replica_id: Option<String>,
    lease_seconds: Option<u64>,
}

/// The resolved configuration of a netsyncd process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address the API listens on.
    pub listen: String,
    /// Database URL or path.
    pub db: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// How long in-flight calls may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// What the change log keeps.
    pub retention: Retention,
    /// Limits of each datastore's sync.
    pub limits: SyncLimits,
    /// Timing of reconcile jobs.
    pub reconcile: ReconcileConfig,
    /// TLS on the API; `None`: plaintext.
    pub tls: Option<ApiTls>,
    /// Limits against bad clients.
    pub api_limits: ApiLimits,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<String>,
    /// Where the plaintext health-only listener is, if anywhere.
    pub health_listen: Option<String>,
    /// How often the API's TLS files are read again for a rotation.
    pub tls_reload_interval: Duration,
    /// Who may call what, by client-certificate identity; `None`: every
    /// client that the transport admits may call everything.
    pub authorization: Option<Authorization>,
    /// Test-only: a page limit on the database (a deterministic disk full);
    /// no flag sets it.
    pub max_page_count: crate::writer::PageLimit,
    /// Replica mode (`--replicas`, PostgreSQL only); `None`: this netsyncd
    /// alone syncs every datastore of its database.
    pub replica: Option<ReplicaConfig>,
}

/// Default lease length of a replica.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// One replica of several on one PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Its id, unique among the replicas.
    pub id: String,
    /// How long its leases (and its heartbeat) last without renewal.
    pub lease: Duration,
}

/// `replica-` and 16 hex digits, random for each process (std's hasher
/// keys are drawn from the OS's random source).
fn random_id() -> String {
    use std::hash::BuildHasher;
    let random = std::hash::RandomState::new().hash_one(std::process::id());
    format!("replica-{random:016x}")
}

impl Config {
    /// A configuration with every default, using database `db`.
    pub fn with_db(db: impl Into<String>) -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            db: db.into(),
            log_format: LogFormat::Text,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            retention: Retention::default(),
            limits: SyncLimits::default(),
            reconcile: ReconcileConfig::default(),
            tls: None,
            api_limits: ApiLimits::default(),
            metrics_listen: None,
            health_listen: None,
            tls_reload_interval: DEFAULT_TLS_RELOAD_INTERVAL,
            authorization: None,
            max_page_count: crate::writer::PageLimit::default(),
            replica: None,
        }
    }

    /// Merges flags and environment (already in `args`) over the file, over defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = SyncLimits::default();
        let positive = |name: &str, value: Option<usize>| match value {
            Some(0) => Err(ConfigError::Invalid(format!("{name} must be above zero"))),
            other => Ok(other),
        };
        // Above zero and within what a datastore may declare itself.
        let bounded = |name: &str, value: Option<u64>, max: u64| match value {
            Some(0) => Err(ConfigError::Invalid(format!("{name} must be above zero"))),
            Some(v) if v > max => Err(ConfigError::Invalid(format!(
                "{name} must be at most {max}"
            ))),
            other => Ok(other),
        };
        let limits = SyncLimits {
            pending_cap: positive("pending_cap", args.pending_cap.or(file.pending_cap))?
                .unwrap_or(defaults.pending_cap),
            event_buffer: positive("watch_buffer", args.watch_buffer.or(file.watch_buffer))?
                .unwrap_or(defaults.event_buffer),
            initial_sync_timeout: bounded(
                "initial_sync_timeout_seconds",
                args.initial_sync_timeout_seconds
                    .or(file.initial_sync_timeout_seconds),
                SyncSpec::MAX_INITIAL_SYNC_TIMEOUT.as_secs(),
            )?
            .map_or(defaults.initial_sync_timeout, Duration::from_secs),
            max_message_bytes: bounded(
                "device_max_message_bytes",
                args.device_max_message_bytes
                    .or(file.device_max_message_bytes),
                DeviceCaps::MAX_MESSAGE_BYTES,
            )?
            .unwrap_or(defaults.max_message_bytes),
            max_leaves: bounded(
                "device_max_leaves",
                args.device_max_leaves.or(file.device_max_leaves),
                DeviceCaps::MAX_LEAVES,
            )?
            .unwrap_or(defaults.max_leaves),
            max_leaf_bytes: bounded(
                "device_max_leaf_bytes",
                args.device_max_leaf_bytes.or(file.device_max_leaf_bytes),
                DeviceCaps::MAX_LEAF_BYTES,
            )?
            .unwrap_or(defaults.max_leaf_bytes),
            ..defaults
        };
        let retention_default = Retention::default();
        let retention = Retention {
            commits: args
                .retain_commits
                .or(file.retain_commits)
                .unwrap_or(retention_default.commits),
            age: args
                .retain_seconds
                .or(file.retain_seconds)
                .map_or(retention_default.age, Duration::from_secs),
        };
        let tls = ApiTls::resolve(&args.tls, file.tls.as_ref())?;
        if file.authorization.is_some()
            && tls.as_ref().is_none_or(|tls| tls.client_ca_pem.is_none())
        {
            return Err(ConfigError::Invalid(
                "[authorization] needs client certificates: set --tls-cert, --tls-key and \
                 --tls-client-ca (or [tls] cert, key and client_ca)"
                    .into(),
            ));
        }
        let db = args.db.or(file.db).unwrap_or_else(|| DEFAULT_DB.into());
        let replica = if args.replicas || file.replicas == Some(true) {
            if crate::db::Backend::of(&db) != crate::db::Backend::Postgres {
                return Err(ConfigError::Invalid(
                    "--replicas needs a PostgreSQL database (--db postgres://...): a SQLite file \
                     is served by one netsyncd"
                        .into(),
                ));
            }
            let id = args
                .replica_id
                .or(file.replica_id)
                .unwrap_or_else(random_id);
            if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
                return Err(ConfigError::Invalid(
                    "replica_id must be 1 to 200 printable characters".into(),
                ));
            }
            let lease = match args.lease_seconds.or(file.lease_seconds) {
                Some(s) if !(1..=3600).contains(&s) => {
                    return Err(ConfigError::Invalid(
                        "lease_seconds must be between 1 and 3600".into(),
                    ));
                }
                Some(s) => Duration::from_secs(s),
                None => DEFAULT_LEASE,
            };
            Some(ReplicaConfig { id, lease })
        } else {
            None
        };
        Ok(Self {
            replica,
            tls,
            authorization: file.authorization,
            api_limits: ApiLimits::resolve(&args.api_limits, file.limits.as_ref())?,
            retention,
            limits,
            reconcile: ReconcileConfig {
                attempt_timeout: match args.set_timeout_seconds.or(file.set_timeout_seconds) {
                    Some(0) => {
                        return Err(ConfigError::Invalid(
                            "set_timeout_seconds must be above zero".into(),
                        ));
                    }
                    Some(s) => Duration::from_secs(s),
                    None => ReconcileConfig::default().attempt_timeout,
                },
                max_failures: args
                    .revert_max_failures
                    .or(file.revert_max_failures)
                    .unwrap_or(ReconcileConfig::default().max_failures),
                ..ReconcileConfig::default()
            },
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            db,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            health_listen: args.health_listen.or(file.health_listen),
            tls_reload_interval: DEFAULT_TLS_RELOAD_INTERVAL,
            max_page_count: crate::writer::PageLimit::default(),
        })
    }
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    // The next two are not `#[source]`: their message is the whole of it,
    // and `main` prints an error's sources after it, which would repeat it.
    /// An API limit is out of range.
    #[error("invalid configuration: {0}")]
    Limit(InvalidLimit),
    /// The API's TLS settings cannot be used.
    #[error("invalid configuration: {0}")]
    Tls(TlsError),
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
}

impl From<InvalidLimit> for ConfigError {
    fn from(e: InvalidLimit) -> Self {
        Self::Limit(e)
    }
}

impl From<TlsError> for ConfigError {
    fn from(e: TlsError) -> Self {
        Self::Tls(e)
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("netsyncd").chain(args.iter().copied()))
            .unwrap()
            .serve_args()
            .unwrap()
    }

    #[test]
    fn replicas_need_postgres_and_take_an_id_and_a_lease() {
        let error = Config::resolve(parse(&["--replicas", "--db", "sqlite://x.db"])).unwrap_err();
        assert!(
            error.to_string().contains("--replicas needs a PostgreSQL"),
            "{error}"
        );
        let config = Config::resolve(parse(&[
            "--replicas",
            "--db",
            "postgres://h/db",
            "--replica-id",
            "a",
            "--lease-seconds",
            "3",
        ]))
        .unwrap();
        assert_eq!(
            config.replica,
            Some(ReplicaConfig {
                id: "a".into(),
                lease: Duration::from_secs(3)
            })
        );
        let random = Config::resolve(parse(&["--replicas", "--db", "postgres://h/db"]))
            .unwrap()
            .replica
            .unwrap();
        assert!(random.id.starts_with("replica-"), "{}", random.id);
        assert_eq!(random.lease, DEFAULT_LEASE);
        let error = Config::resolve(parse(&[
            "--replicas",
            "--db",
            "postgres://h/db",
            "--lease-seconds",
            "0",
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("lease_seconds"), "{error}");
        // Without --replicas, PostgreSQL is one netsyncd, as before.
        assert_eq!(
            Config::resolve(parse(&["--db", "postgres://h/db"]))
                .unwrap()
                .replica,
            None
        );
    }

    #[test]
    fn serve_is_the_default_subcommand() {
        assert_eq!(
            parse(&["--listen", "0.0.0.0:1"]).listen.as_deref(),
            Some("0.0.0.0:1")
        );
        assert_eq!(
            parse(&["serve", "--listen", "0.0.0.0:2"]).listen.as_deref(),
            Some("0.0.0.0:2")
        );
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netsync.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9\"\ndb = \"file.db\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let config = Config::resolve(ServeArgs {
            db: Some("flag.db".into()),
            config: Some(file),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9");
        assert_eq!(config.db, "flag.db");
        assert_eq!(config.log_format, LogFormat::Json);
        let defaults = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.listen, DEFAULT_LISTEN);
        assert_eq!(defaults.db, DEFAULT_DB);
    }

    #[test]
    fn engine_limits_come_from_flags_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netsync.toml");
        std::fs::write(
            &file,
            "pending_cap = 10\nretain_seconds = 60\nrevert_max_failures = 0\n\
             device_max_leaves = 1000\ninitial_sync_timeout_seconds = 9\n",
        )
        .unwrap();
        let config = Config::resolve(ServeArgs {
            config: Some(file.clone()),
            watch_buffer: Some(7),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.reconcile.max_failures, 0);
        assert_eq!(
            Config::resolve(parse(&["--revert-max-failures", "2"]))
                .unwrap()
                .reconcile
                .max_failures,
            2
        );
        assert_eq!(config.limits.pending_cap, 10);
        assert_eq!(config.limits.event_buffer, 7);
        assert_eq!(config.limits.max_leaves, 1000);
        assert_eq!(config.limits.initial_sync_timeout, Duration::from_secs(9));
        assert_eq!(
            config.limits.max_message_bytes,
            SyncLimits::DEFAULT_MAX_MESSAGE_BYTES
        );
        let flags = Config::resolve(parse(&[
            "--device-max-message-bytes",
            "1024",
            "--device-max-leaf-bytes",
            "10",
        ]))
        .unwrap();
        assert_eq!(flags.limits.max_message_bytes, 1024);
        assert_eq!(flags.limits.max_leaf_bytes, 10);
        for bad in [
            &["--device-max-leaves", "0"][..],
            &["--device-max-message-bytes", "3000000000"],
            &["--initial-sync-timeout-seconds", "100000"],
        ] {
            let err = Config::resolve(parse(bad)).unwrap_err().to_string();
            assert!(err.contains(&bad[0][2..].replace('-', "_")), "{err}");
        }
        assert_eq!(config.retention.age, Duration::from_secs(60));
        assert_eq!(config.retention.commits, 10_000);
        assert_eq!(config.metrics_listen, None);
        let err = Config::resolve(ServeArgs {
            pending_cap: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("pending_cap"), "{err}");
    }

    #[test]
    fn api_limits_and_tls_come_from_flags_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netsync.toml");
        std::fs::write(
            &file,
            "[limits]\nmax_datastores = 5\nrequest_timeout_seconds = 9\n\
             [tls]\ncert = \"/nonexistent/cert.pem\"\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut all = vec!["--config", file.to_str().unwrap()];
            all.extend_from_slice(extra);
            parse(&all)
        };
        // The file's cert alone is refused, naming the missing key.
        let err = Config::resolve(args(&[])).unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");

        std::fs::write(
            &file,
            "[limits]\nmax_datastores = 5\nrequest_timeout_seconds = 9\n",
        )
        .unwrap();
        let config = Config::resolve(args(&["--max-datastores", "7"])).unwrap();
        assert_eq!(config.api_limits.max_datastores, 7);
        assert_eq!(config.api_limits.request_timeout, Duration::from_secs(9));
        assert_eq!(
            config.api_limits.max_watchers_per_datastore,
            ApiLimits::default().max_watchers_per_datastore
        );
        assert_eq!(config.tls, None);
        let err = Config::resolve(args(&["--max-concurrent-streams", "0"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_concurrent_streams"), "{err}");

        std::fs::write(&file, "[limits]\nmax_datastore = 5\n").unwrap();
        let err = Config::resolve(args(&[])).unwrap_err().to_string();
        assert!(err.contains("max_datastore"), "{err}");
    }

    #[test]
    fn metrics_listen_comes_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netsync.toml");
        std::fs::write(&file, "metrics_listen = \"127.0.0.1:9100\"\n").unwrap();
        let from_file = Config::resolve(ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_file.metrics_listen.as_deref(), Some("127.0.0.1:9100"));
        let mut args = parse(&["--metrics-listen", "0.0.0.0:9200"]);
        args.config = Some(file);
        let from_flag = Config::resolve(args).unwrap();
        assert_eq!(from_flag.metrics_listen.as_deref(), Some("0.0.0.0:9200"));
    }

    #[test]
    fn health_listen_comes_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netsync.toml");
        std::fs::write(&file, "health_listen = \"0.0.0.0:8081\"\n").unwrap();
        let mut args = parse(&[]);
        args.config = Some(file.clone());
        assert_eq!(
            Config::resolve(args).unwrap().health_listen.as_deref(),
            Some("0.0.0.0:8081")
        );
        let mut args = parse(&["--health-listen", "127.0.0.1:8082"]);
        args.config = Some(file);
        assert_eq!(
            Config::resolve(args).unwrap().health_listen.as_deref(),
            Some("127.0.0.1:8082")
        );
        assert_eq!(Config::resolve(parse(&[])).unwrap().health_listen, None);
    }

    /// The shipped configuration file `path` (under the repository's
    /// `deploy/kubernetes/`) with its TLS files, taken from a Secret in the
    /// cluster, written to a temporary folder; returns the folder and the
    /// file that points at them.
    fn shipped_with_secrets(path: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ca = netsync_testkit::pki::Ca::new("cluster CA");
        let server = ca.server(&["netsyncd"]);
        for (name, pem) in [
            ("tls.crt", &server.cert_pem),
            ("tls.key", &server.key_pem),
            ("ca.crt", &ca.cert_pem),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy/kubernetes")
                .join(path),
        )
        .unwrap();
        assert!(shipped.contains("/etc/netsync-tls/"), "{shipped}");
        let file = dir.path().join("netsync.toml");
        let secrets = format!("{}/", dir.path().display());
        std::fs::write(&file, shipped.replace("/etc/netsync-tls/", &secrets)).unwrap();
        (dir, file)
    }

    /// The Kubernetes manifests' configuration is one netsyncd accepts: mutual
    /// TLS on the API and the plaintext health listener for the probes.
    #[test]
    fn the_kubernetes_configuration_is_accepted() {
        let (_dir, file) = shipped_with_secrets("netsync.toml");
        let mut args = parse(&[]);
        args.config = Some(file);
        let config = Config::resolve(args).unwrap();
        assert_eq!(config.listen, "0.0.0.0:50051");
        assert_eq!(config.health_listen.as_deref(), Some("0.0.0.0:8081"));
        assert!(config.authorization.is_some(), "authorization by identity");
        let tls = config.tls.expect("TLS on the API");
        assert!(
            tls.client_ca_pem.is_some(),
            "clients must present a certificate"
        );
    }

    /// The replicas' configuration (deploy/kubernetes/replicas) makes a
    /// replica once the pod gives the database and the id (as NETSYNC_DB and
    /// NETSYNC_REPLICA_ID; flags here, which win over the file alike), and
    /// nothing without a database: it names none itself.
    #[test]
    fn the_kubernetes_replicas_configuration_is_accepted() {
        let (_dir, file) = shipped_with_secrets("replicas/netsync.toml");
        let mut args = parse(&[
            "--db",
            "postgres://netsync@db/netsync",
            "--replica-id",
            "netsyncd-1",
        ]);
        args.config = Some(file.clone());
        let config = Config::resolve(args).unwrap();
        assert_eq!(
            config.replica,
            Some(ReplicaConfig {
                id: "netsyncd-1".into(),
                lease: Duration::from_secs(10)
            })
        );
        assert_eq!(config.health_listen.as_deref(), Some("0.0.0.0:8081"));
        assert!(config.authorization.is_some(), "authorization by identity");
        assert!(config.tls.is_some(), "TLS on the API");

        let mut args = parse(&[]);
        args.config = Some(file);
        let error = Config::resolve(args).unwrap_err();
        assert!(
            error.to_string().contains("--replicas needs a PostgreSQL"),
            "{error}"
        );
    }

    #[test]
    fn authorization_needs_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netsync.toml");
        std::fs::write(
            &file,
            "[authorization]\nreaders = [\"ro\"]\nwriters = [\"rw\", \"admin\"]\n",
        )
        .unwrap();
        let mut args = parse(&[]);
        args.config = Some(file.clone());
        let err = Config::resolve(args).unwrap_err().to_string();
        assert!(err.contains("--tls-client-ca"), "{err}");

        let ca = netsync_testkit::pki::Ca::new("CA");
        let server = ca.server(&["localhost"]);
        let pem = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let (cert, key, client_ca) = (
            pem("cert.pem", &server.cert_pem),
            pem("key.pem", &server.key_pem),
            pem("ca.pem", &ca.cert_pem),
        );
        let mut args = parse(&["--tls-cert", &cert, "--tls-key", &key]);
        args.config = Some(file.clone());
        assert!(Config::resolve(args).is_err(), "TLS without client CA");
        let mut args = parse(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &client_ca,
        ]);
        args.config = Some(file.clone());
        let authorization = Config::resolve(args).unwrap().authorization.unwrap();
        assert_eq!(authorization.readers.len(), 1);
        assert!(authorization.writers.contains("admin"));

        std::fs::write(&file, "[authorization]\nreader = [\"ro\"]\n").unwrap();
        let mut args = parse(&[]);
        args.config = Some(file);
        let err = Config::resolve(args).unwrap_err().to_string();
        assert!(err.contains("reader"), "{err}");
    }

    #[test]
    fn health_is_a_subcommand_without_serve_flags() {
        let cli = Cli::try_parse_from(["netsyncd", "health", "--addr", "127.0.0.1:8081"]).unwrap();
        match cli.command {
            Some(Command::Health(args)) => {
                assert_eq!(args.addr, "127.0.0.1:8081");
                assert_eq!(args.service, "");
            }
            other => panic!("expected health, got {other:?}"),
        }
        assert!(Cli::try_parse_from(["netsyncd", "health", "--db", "x"]).is_err());
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }
}
