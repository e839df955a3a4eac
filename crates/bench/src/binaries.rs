//! Where netsyncd and netsync-sim are: given on the command line, or built by
//! cargo in this program's own profile and target directory, so that
//! `cargo run [--release] -p netsync-bench -- ...` is the one command needed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

/// The two executables under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// netsyncd.
    pub netsyncd: PathBuf,
    /// netsync-sim.
    pub sim: PathBuf,
    /// Extra arguments for every netsyncd started (`--netsyncd-arg`).
    pub netsyncd_args: Vec<String>,
    /// The PostgreSQL cluster netsyncd stores in (`--postgres`); `None`:
    /// a SQLite file in the scenario's directory.
    pub postgres: Option<&'static netsync_testkit::postgres::PgCluster>,
}

/// Finds (and, under cargo, builds) the executables. Paths given win.
pub fn locate(netsyncd: Option<PathBuf>, sim: Option<PathBuf>) -> anyhow::Result<Binaries> {
    let exe = std::env::current_exe().context("cannot tell where this program is")?;
    let dir = exe
        .parent()
        .context("this program's path has no directory")?
        .to_path_buf();
    if (netsyncd.is_none() || sim.is_none())
        && let Some(cargo) = std::env::var_os("CARGO")
    {
        build(&cargo, &dir)?;
    }
    let found = Binaries {
        netsyncd: netsyncd.unwrap_or_else(|| dir.join(executable("netsyncd"))),
        sim: sim.unwrap_or_else(|| dir.join(executable("netsync-sim"))),
        netsyncd_args: Vec::new(),
        postgres: None,
    };
    for path in [&found.netsyncd, &found.sim] {
        ensure!(
            path.is_file(),
            "{} not found: run through `cargo run -p netsync-bench`, which builds it, or pass \
             --netsyncd and --sim",
            path.display()
        );
    }
    Ok(found)
}

/// `name` with the platform's executable suffix.
fn executable(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// Builds both binaries with `cargo` into the target directory holding `dir`,
/// in the profile `dir` belongs to (`target/release` is `--release`,
/// `target/debug` the dev profile, `target/NAME` `--profile NAME`).
fn build(cargo: &OsString, dir: &Path) -> anyhow::Result<()> {
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("this program is not in a cargo profile directory")?;
    let target_dir = dir
        .parent()
        .context("this program is not in a cargo target directory")?;
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "-p",
            "netsync-server",
            "-p",
            "netsync-sim",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // The workspace this harness belongs to, whatever the caller's directory.
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "release" => {
            command.arg("--release");
        }
        "debug" => {}
        other => {
            command.args(["--profile", other]);
        }
    }
    eprintln!("netsync-bench: building netsyncd and netsync-sim ({profile})");
    let status = command
        .status()
        .context("cannot run cargo to build netsyncd and netsync-sim")?;
    if !status.success() {
        bail!("building netsyncd and netsync-sim failed ({status})");
    }
    Ok(())
}
