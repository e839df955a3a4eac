//! netsyncd: parses configuration, sets up logging and tracing, binds, and
//! serves until SIGTERM or ctrl-c; or runs the demo (`netsyncd demo`, see
//! `netsync_server::demo`).

use anyhow::Context;
use clap::Parser;
use netsync_server::config::{Cli, Command, Config};
use tokio::net::TcpListener;

/// mimalloc: decoding a gNMI stream allocates and frees a few small strings
/// per leaf update; glibc's allocator took a quarter of the ingest's time
/// (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Demo(args)) => {
            return netsync_server::demo::run(args, netsync_core::shutdown::signal()).await;
        }
        Some(Command::Serve(args)) => *args,
        None => cli.serve,
    };
    let config = Config::resolve(args)?;
    let telemetry = netsync_server::telemetry::init(config.log_format)
        .map_err(|e| anyhow::anyhow!("cannot set up logging and tracing: {e}"))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "listening");
    let served = netsync_server::serve(&config, listener, netsync_core::shutdown::signal()).await;
    // Even after an error: the spans that explain it are among the last.
    telemetry.shutdown().await;
    served?;
    Ok(())
}
