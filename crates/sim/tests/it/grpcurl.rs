//! grpcurl (from `<repo>/.venv` or PATH) lists, describes and calls
//! netsync-sim's services through gRPC reflection; without grpcurl the test
//! skips, unless `NETSYNC_REQUIRE_GRPCURL=1`.

use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::tools;
use serde_json::json;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let Some(grpcurl) = tools::grpcurl() else {
        return;
    };
    let sim = Sim::start(generated(200)).await;
    let addr = sim.addr.to_string();
    let list = tools::run(Command::new(&grpcurl).args(["-plaintext", &addr, "list"])).await;
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
        tools::run(Command::new(&grpcurl).args(["-plaintext", &addr, "describe", "gnmi.gNMI"]))
            .await;
    assert!(String::from_utf8_lossy(&describe.stdout).contains("rpc Subscribe"));
    let counters = tools::run(Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "netsync.sim.v1.SimControl/GetCounters",
    ]))
    .await;
    let counters: serde_json::Value = serde_json::from_slice(&counters.stdout).unwrap();
    assert_eq!(counters["leaves"], json!("200"), "{counters}");
    let get = tools::run(Command::new(&grpcurl).args([
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
