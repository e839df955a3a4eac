//! netsync-demo: parses its flags and runs the demo until it ends or until
//! SIGTERM or ctrl-c (see the library).

use clap::Parser;
use netsync_demo::DemoArgs;

/// mimalloc, as netsyncd and netsync-sim use: the demo runs both, and their
/// ingest and churn spend much of their time allocating (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    netsync_demo::run(DemoArgs::parse(), netsync_core::shutdown::signal()).await
}
