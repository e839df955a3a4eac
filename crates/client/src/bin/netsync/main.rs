//! `netsync`, the command line of the netsync API, in the style of kubectl and
//! gnmic: datastores (create from a YAML or JSON spec, get, list by label,
//! update, delete), running (now or at a past revision), a watch of one or
//! many datastores, intents and deviations. Output is a table for people,
//! or `-o json` / `-o yaml` (protobuf JSON, as grpcurl prints it) for
//! scripts; errors print the gRPC code and message on stderr and exit
//! non-zero, with one exit code per class (see [`error::exit`]).

mod codec;
mod datastore;
mod error;
mod intent;
mod running;
mod show;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use netsync_client::{Client, Tls};

use crate::error::CliError;

/// The command line of the netsync API: datastores, running, watches, intents and deviations.
#[derive(Debug, Parser)]
#[command(
    name = "netsync",
    version,
    max_term_width = 100,
    after_help = "Exit codes: 0 done; 1 bad input (a file, a flag value); 2 usage; 3 netsyncd \
                  unreachable or UNAVAILABLE; 4 NOT_FOUND; 5 refused (INVALID_ARGUMENT, \
                  ALREADY_EXISTS, FAILED_PRECONDITION, OUT_OF_RANGE, PERMISSION_DENIED, \
                  UNAUTHENTICATED); 6 any other error from netsyncd."
)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where netsyncd is and how to reach it.
#[derive(Debug, Args)]
struct ServerArgs {
    /// netsyncd's address: host:port, http://host:port, or https://host:port
    /// for TLS (a bare host:port with TLS flags uses TLS).
    #[arg(
        long,
        short = 's',
        env = "NETSYNC_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Use TLS, verifying netsyncd against the Mozilla roots (implied by the
    /// other --tls-* flags and by an https:// address).
    #[arg(long, global = true)]
    tls: bool,
    /// PEM file of the CA that signs netsyncd's certificate.
    #[arg(long, value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM file of a client certificate (mutual TLS); needs --tls-key.
    #[arg(long, value_name = "FILE", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long, value_name = "FILE", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name to verify netsyncd's certificate against (default: the host of --server).
    #[arg(long, value_name = "NAME", global = true)]
    tls_server_name: Option<String>,
}

/// How a result is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// Protobuf JSON (the mapping grpcurl prints).
    Json,
    /// The same document in YAML.
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, read, list, update and delete datastores.
    #[command(subcommand, visible_alias = "ds")]
    Datastore(datastore::Command),
    /// Read running, the synced copy of a device's state.
    #[command(subcommand)]
    Running(running::RunningCommand),
    /// Stream the sync events of one datastore, or of every datastore a label selector matches.
    Watch(running::WatchArgs),
    /// Set, read, list and delete intents (desired values netsyncd keeps on the device).
    #[command(subcommand)]
    Intent(intent::Command),
    /// Where running differs from the intents.
    Deviations(running::DeviationsArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap prints help and version to stdout with exit 0, usage errors
        // to stderr with exit 2.
        Err(e) => e.exit(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    if let Err(error) = runtime.block_on(run(cli)) {
        eprintln!("{} {error}", show_error_prefix());
        std::process::exit(error.exit_code());
    }
}

/// `error:`, red on a terminal's stderr.
fn show_error_prefix() -> String {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        "\x1b[31merror:\x1b[0m".into()
    } else {
        "error:".into()
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let client = connect(&cli.server).await?;
    match cli.command {
        Command::Datastore(command) => datastore::run(client, command).await,
        Command::Running(command) => running::run(client, command).await,
        Command::Watch(args) => running::watch(client, args).await,
        Command::Intent(command) => intent::run(client, command).await,
        Command::Deviations(args) => running::deviations(client, args).await,
    }
}

/// Connects as the flags say. TLS is on with any --tls* flag or an https://
/// address; an http:// address with TLS flags is a contradiction, refused
/// rather than guessed.
async fn connect(args: &ServerArgs) -> Result<Client, CliError> {
    let wants_tls = args.tls
        || args.tls_ca.is_some()
        || args.tls_cert.is_some()
        || args.tls_server_name.is_some()
        || args.server.starts_with("https://");
    let tls = if wants_tls {
        if args.server.starts_with("http://") {
            return Err(CliError::Input(format!(
                "TLS flags with a plaintext address {:?}: use https:// or host:port",
                args.server
            )));
        }
        Some(Tls {
            ca_pem: args.tls_ca.as_deref().map(read_pem).transpose()?,
            cert_pem: args.tls_cert.as_deref().map(read_pem).transpose()?,
            key_pem: args.tls_key.as_deref().map(read_pem).transpose()?,
            server_name: args.tls_server_name.clone(),
        })
    } else {
        None
    };
    netsync_client::connect(&args.server, tls.as_ref())
        .await
        .map_err(|e| match CliError::from(e) {
            CliError::Unreachable(reason) => {
                CliError::Unreachable(format!("netsyncd at {}: {reason}", args.server))
            }
            other => other,
        })
}

fn read_pem(file: &std::path::Path) -> Result<String, CliError> {
    std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))
}
