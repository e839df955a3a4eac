//! netsync-sim: parses flags, sets up logging, binds, and serves until SIGTERM
//! or ctrl-c.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use netsync_proto::gnmi;
use netsync_sim::{ChurnSpec, Credentials, Faults, InitialState, ListKeys, SimConfig, TlsIdentity};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

/// mimalloc: churn allocates and frees a few small objects per change, and
/// glibc's allocator spent about a third of the simulator's time on them (see
/// docs/SIMULATOR.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A gNMI 0.10 device simulator with run-time control (netsync.sim.v1.SimControl),
/// churn and faults.
#[derive(Debug, Parser)]
#[command(name = "netsync-sim", version)]
struct Cli {
    /// Address to listen on (gNMI, SimControl, health and reflection).
    #[arg(long, default_value = "127.0.0.1:57400", env = "NETSYNC_SIM_LISTEN")]
    listen: String,
    /// Number of leaves of the generated device.
    #[arg(long, default_value_t = 1000)]
    leaves: usize,
    /// Seed of the generated device.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Load the initial state from this JSON_IETF document instead.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["leaves", "seed"])]
    state: Option<PathBuf>,
    /// Keys of a list in the state file: LIST=KEY[,KEY...], LIST as element
    /// names without keys (`network-instances/network-instance/protocols/protocol=identifier,name`).
    #[arg(long = "list-key", value_name = "LIST=KEYS", value_parser = ListKeys::parse_entry)]
    list_keys: Vec<(String, Vec<String>)>,
    /// Username required in gNMI call metadata (with --password).
    #[arg(long, requires = "password", env = "NETSYNC_SIM_USERNAME")]
    username: Option<String>,
    /// Password required in gNMI call metadata (with --username).
    #[arg(
        long,
        requires = "username",
        env = "NETSYNC_SIM_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// TLS certificate chain (PEM); with --tls-key, serve TLS.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for mutual TLS: clients must present a certificate it signed.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Most updates per notification (initial dumps and change batches).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Change batches a subscriber may fall behind before it is cut with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4096)]
    queue_batches: usize,
    /// Leaf changes per second made in the background from the start.
    #[arg(long, value_name = "RATE")]
    churn: Option<f64>,
    /// Share of churn changes that delete or re-create a leaf, in [0, 1].
    #[arg(long, default_value_t = 0.1)]
    churn_delete_share: f64,
    /// Seed of churn.
    #[arg(long, default_value_t = 1)]
    churn_seed: u64,
    /// Fault: delay every Set this long (`250ms`, `2s`).
    #[arg(long, value_parser = parse_duration)]
    set_delay: Option<Duration>,
    /// Fault: delay only Sets by this username.
    #[arg(long, requires = "set_delay")]
    set_delay_user: Option<String>,
    /// Fault: fail every Set with this gRPC code (1..=16).
    #[arg(long, value_name = "CODE")]
    fail_set: Option<i32>,
    /// Fault: fail only this many Sets (0: until cleared).
    #[arg(long, default_value_t = 0, requires = "fail_set")]
    fail_set_count: u64,
    /// Fault: Subscribe streams send nothing for this long after start.
    #[arg(long, value_parser = parse_duration)]
    stall_subscribe: Option<Duration>,
    /// Fault: every Subscribe stream ends with UNAVAILABLE after N messages.
    #[arg(long, value_name = "N")]
    disconnect_after: Option<u64>,
    /// Fault: initial dumps end with UNAVAILABLE after N updates.
    #[arg(long, value_name = "N")]
    drop_dump_after: Option<u64>,
    /// Take Set values only in this encoding, as a device that speaks only
    /// that one (default: any).
    #[arg(long, value_parser = ["json_ietf", "json", "proto", "ascii"])]
    set_encoding: Option<String>,
    /// Origin every response carries in its notification prefix, as a device
    /// that qualifies its answers (e.g. `openconfig`; default: none).
    #[arg(long, value_name = "ORIGIN")]
    response_origin: Option<String>,
    /// Worker threads of the runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Parses `250ms`, `2s`, `1.5s`, `100us`, `3m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}`: add a unit (ms, s, m, us)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: not a number"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, us)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

impl Cli {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let initial = match &self.state {
            Some(path) => InitialState::File(path.clone()),
            None => InitialState::Generated {
                leaves: self.leaves,
                seed: self.seed,
            },
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity {
                cert_pem: std::fs::read(cert)
                    .with_context(|| format!("cannot read {}", cert.display()))?,
                key_pem: std::fs::read(key)
                    .with_context(|| format!("cannot read {}", key.display()))?,
            }),
            _ => None,
        };
        let tls_client_ca = match &self.tls_client_ca {
            Some(ca) => {
                Some(std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?)
            }
            None => None,
        };
        let churn = match self.churn {
            Some(rate) if rate.is_finite() && rate > 0.0 => Some(ChurnSpec {
                rate,
                delete_share: self.churn_delete_share,
                seed: self.churn_seed,
            }),
            Some(rate) => anyhow::bail!("--churn must be above 0, got {rate}"),
            None => None,
        };
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.churn_delete_share),
            "--churn-delete-share must be within [0, 1]"
        );
        let faults = netsync_proto::netsync::sim::v1::Faults {
            set_delay: self.set_delay.map(|d| d.try_into().unwrap_or_default()),
            set_delay_username: self.set_delay_user.clone().unwrap_or_default(),
            set_failure: self
                .fail_set
                .map(|code| netsync_proto::netsync::sim::v1::SetFailure {
                    code,
                    message: String::new(),
                    count: self.fail_set_count,
                }),
            subscribe_stall: self
                .stall_subscribe
                .map(|d| d.try_into().unwrap_or_default()),
            disconnect_after_messages: self.disconnect_after.unwrap_or(0),
            drop_dump_after_updates: self.drop_dump_after.unwrap_or(0),
        };
        let faults =
            Faults::from_proto(faults, Instant::now()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(SimConfig {
            initial,
            list_keys: ListKeys(self.list_keys.iter().cloned().collect()),
            credentials: self
                .username
                .clone()
                .zip(self.password.clone())
                .map(|(username, password)| Credentials { username, password }),
            tls,
            tls_client_ca,
            notification_batch: self.batch.max(1),
            queue_batches: self.queue_batches.max(1),
            churn,
            faults,
            set_encoding: self.set_encoding.as_deref().map(|e| match e {
                "json" => gnmi::Encoding::Json,
                "proto" => gnmi::Encoding::Proto,
                "ascii" => gnmi::Encoding::Ascii,
                _ => gnmi::Encoding::JsonIetf,
            }),
            response_origin: self.response_origin.clone(),
            ..SimConfig::default()
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logging = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if cli.log_format == "json" {
        logging.json().init();
    } else {
        logging.init();
    }
    let config = cli.config()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.enable_all().build()?.block_on(async {
        // Before the address is logged: from then on a SIGTERM stops it cleanly.
        let shutdown = netsync_core::shutdown::signal();
        let listener = TcpListener::bind(&cli.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.listen))?;
        tracing::info!(listen = %listener.local_addr()?, "listening");
        netsync_sim::serve(config, listener, shutdown).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn flags_build_a_config() {
        let cli = Cli::parse_from([
            "netsync-sim",
            "--leaves",
            "50",
            "--username",
            "admin",
            "--password",
            "pw",
            "--fail-set",
            "10",
            "--fail-set-count",
            "2",
            "--list-key",
            "a/b=k1,k2",
        ]);
        let config = cli.config().unwrap();
        assert_eq!(
            config.initial,
            InitialState::Generated {
                leaves: 50,
                seed: 1
            }
        );
        assert_eq!(config.credentials.unwrap().username, "admin");
        let failure = config.faults.set_failure.unwrap();
        assert_eq!(failure.code, tonic::Code::Aborted);
        assert_eq!(failure.remaining, Some(2));
        assert_eq!(config.list_keys.0["a/b"], ["k1", "k2"]);
    }
}
