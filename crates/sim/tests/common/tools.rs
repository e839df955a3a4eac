//! Running tools from outside this project (pygnmi, grpcurl) from tests.
//!
//! Both come from the Python virtual environment that `.ci/run` creates at
//! `<repo>/.venv`. A missing tool skips its test with a message, unless its
//! `NETSYNC_REQUIRE_*` variable is `1` (set in CI), which turns a missing tool
//! into a failure.

use std::path::PathBuf;
use std::process::Output;

use tokio::process::Command;

use super::within;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Whether a missing tool must fail the test (`VAR=1`).
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Skips (returns true) or fails when a tool is missing.
pub fn missing(var: &str, what: &str) -> bool {
    assert!(!required(var), "{what} is required ({var}=1) but missing");
    eprintln!("SKIPPED: {what} not found (set {var}=1 to require it)");
    true
}

pub async fn run(command: &mut Command) -> Output {
    let output = within(command.kill_on_drop(true).output()).await.unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Normalises a path as pygnmi prints it.
pub fn slash(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}
