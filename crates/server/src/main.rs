//! netsyncd: parses configuration, sets up logging and tracing, binds, and
//! serves until SIGTERM or ctrl-c.

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
    if let Some(Command::Health(args)) = &cli.command {
        let service = if args.service.is_empty() {
            "netsyncd"
        } else {
            &args.service
        };
        match netsync_server::health_probe::check(args).await {
            Ok(()) => {
                println!("{service}: SERVING");
                return Ok(());
            }
            Err(why) => {
                println!("{service}: {why}");
                std::process::exit(1);
            }
        }
    }
    let serve = cli.serve_args().expect("every other subcommand serves");
    let config = Config::resolve(serve)?;
    let telemetry = netsync_server::telemetry::init(config.log_format)
        .map_err(|e| anyhow::anyhow!("cannot set up logging and tracing: {e}"))?;
    // Before the address is logged: from then on a SIGTERM stops netsyncd
    // cleanly, even while it is still opening the database.
    let shutdown = netsync_core::shutdown::signal();
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "listening");
    let served = netsync_server::serve(&config, listener, shutdown).await;
    // Even after an error: the spans that explain it are among the last.
    telemetry.shutdown().await;
    served?;
    Ok(())
}
