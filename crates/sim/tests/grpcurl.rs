//! grpcurl (from `<repo>/.venv` or PATH) lists, describes and calls
//! netsync-sim's services through gRPC reflection; without grpcurl the test
//! skips, unless `NETSYNC_REQUIRE_GRPCURL=1`.

mod common;

use std::path::PathBuf;

use common::tools::*;
use common::*;
use serde_json::json;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let venv = repo_root().join(".venv/bin/grpcurl");
    let grpcurl = if venv.exists() {
        venv
    } else {
        PathBuf::from("grpcurl")
    };
    let has_grpcurl = Command::new(&grpcurl)
        .arg("-version")
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !has_grpcurl && missing("NETSYNC_REQUIRE_GRPCURL", "grpcurl") {
        return;
    }
    let sim = TestSim::start(config(200)).await;
    let addr = sim.addr.to_string();
    let list = run(Command::new(&grpcurl).args(["-plaintext", &addr, "list"])).await;
    let list = String::from_utf8(list.stdout).unwrap();
    for service in [
        "gnmi.gNMI",
        "netsync.sim.v1.SimControl",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l == service),
            "{service} missing from:\n{list}"
        );
    }
    let describe =
        run(Command::new(&grpcurl).args(["-plaintext", &addr, "describe", "gnmi.gNMI"])).await;
    assert!(String::from_utf8_lossy(&describe.stdout).contains("rpc Subscribe"));
    let counters = run(Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "netsync.sim.v1.SimControl/GetCounters",
    ]))
    .await;
    let counters: serde_json::Value = serde_json::from_slice(&counters.stdout).unwrap();
    assert_eq!(counters["leaves"], json!("200"), "{counters}");
    let get = run(Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        r#"{"path": [{"elem": [{"name": "system"}, {"name": "config"}, {"name": "hostname"}]}], "encoding": "JSON_IETF"}"#,
        &addr,
        "gnmi.gNMI/Get",
    ]))
    .await;
    assert!(String::from_utf8_lossy(&get.stdout).contains("jsonIetfVal"));
    sim.stop().await;
}
