//! Proof that pygnmi, a gNMI client written outside this project, accepts
//! netsync-sim: capabilities, get, set then get, subscribe ONCE, and STREAM
//! ON_CHANGE seeing a Set it made. The client is `tests/it/pygnmi_client.py`, run
//! with the Python of `<repo>/.venv` (or `NETSYNC_PYTHON`); without pygnmi the
//! test skips, unless `NETSYNC_REQUIRE_PYGNMI=1`.

use std::path::PathBuf;

use netsync_sim::{Credentials, SimConfig};
use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::tools;
use serde_json::json;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pygnmi_reads_subscribes_and_changes_the_device() {
    let Some(python) = tools::pygnmi_python() else {
        return;
    };
    let sim = Sim::start(SimConfig {
        credentials: Some(Credentials {
            username: "admin".into(),
            password: "admin-pw".into(),
        }),
        ..generated(500)
    })
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/pygnmi_client.py");
    let output = tools::run(Command::new(&python).arg(script).args([
        "127.0.0.1",
        &sim.addr.port().to_string(),
        "admin",
        "admin-pw",
    ]))
    .await;
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });

    assert_eq!(seen["gnmi_version"], json!("0.10.0"));
    for encoding in ["json", "json_ietf", "proto", "ascii"] {
        assert!(
            seen["encodings"]
                .as_array()
                .unwrap()
                .contains(&json!(encoding)),
            "{seen}"
        );
    }
    let config = &seen["get_config"];
    assert_eq!(config["name"], json!("ethernet-1/1"), "{seen}");
    assert!(
        config["mtu"].is_string(),
        "JSON_IETF uint64 is a string: {seen}"
    );
    assert_eq!(seen["set_ops"], json!(["UPDATE"]));
    assert_eq!(seen["after_set"], json!(["set by pygnmi", "9000"]));
    let once: Vec<String> = seen["once_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| slash(p.as_str().unwrap()))
        .collect();
    assert!(
        once.contains(&"/interfaces/interface[name=ethernet-1/1]/config/mtu".to_owned()),
        "{once:?}"
    );
    assert_eq!(seen["stream_initial"], json!(["set by pygnmi"]));
    let change = &seen["stream_change"][0];
    assert_eq!(
        slash(change[0].as_str().unwrap()),
        "/interfaces/interface[name=ethernet-1/1]/config/description"
    );
    assert_eq!(change[1], json!("changed while streaming"));

    let counters = sim.counters().await;
    assert_eq!(counters.sets_received, 2);
    assert!(counters.subscribes_received >= 2);
    sim.stop().await;
}

/// A path as pygnmi prints it, with one leading slash.
fn slash(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}
