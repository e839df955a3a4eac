//! netsyncd as an operator runs it: a real process, driven over loopback by
//! the generated client and by grpcurl, stopped with SIGTERM, restarted on the
//! same database.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::device::Device;
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
    let Some(grpcurl) = common::grpcurl::find() else {
        return;
    };
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

    // The README's intent example.
    let intent = r#"{"datastore": "r1", "intent": {"name": "base", "priority": 10,
        "updates": [{"path": "/system/config/hostname", "value": {"stringVal": "leaf1"}}],
        "deletes": ["/system/aaa/authentication/users/user[username=guest]"]}}"#;
    let written = stdout(&g(&["-d", intent, &addr, "netsync.v1.NetSync/SetIntent"]));
    assert!(written.contains("\"name\": \"base\""), "{written}");
    let deviations = stdout(&g(&[
        "-d",
        r#"{"datastore": "r1"}"#,
        &addr,
        "netsync.v1.NetSync/GetDeviations",
    ]));
    assert!(
        deviations.contains("/system/config/hostname"),
        "{deviations}"
    );

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

/// One commit as a watcher saw it: (revision, replace, updates, deletes).
type SeenCommit = (u64, bool, Vec<(String, String)>, Vec<String>);

fn seen(event: pb::SyncEvent) -> Option<SeenCommit> {
    let Some(pb::sync_event::Event::Commit(commit)) = event.event else {
        return None;
    };
    let updates = commit
        .updates
        .into_iter()
        .map(|l| (l.path, format!("{:?}", l.value)))
        .collect();
    Some((event.revision, commit.replace, updates, commit.deletes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_nothing_committed_and_reuses_no_revision() {
    use tokio_stream::StreamExt;
    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

    let device = Device::start(&[("/system/hostname", "r1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let daemon = Netsyncd::start(&db);
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    let ds = pb::Datastore {
        name: "r1".into(),
        target: Some(pb::Target {
            address: device.addr.to_string(),
            encoding: pb::Encoding::Proto as i32,
            ..Default::default()
        }),
        sync: Some(pb::SyncConfig {
            commit_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 5_000_000,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    client.create_datastore(create(ds)).await.unwrap();
    let mut watch = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: "r1".into(),
            from_revision: 1,
        })
        .await
        .unwrap()
        .into_inner();

    // A burst the device keeps sending while netsyncd is killed.
    let burst_device = device.clone();
    let burst = tokio::spawn(async move {
        // Paced (10 changes a millisecond) so that the kill lands in the middle.
        let mut pace = tokio::time::interval(std::time::Duration::from_millis(1));
        for i in 0..3000 {
            burst_device.set(
                &format!("/interfaces/interface[name=eth{}]/counter", i % 300),
                &i.to_string(),
            );
            if i % 10 == 0 {
                pace.tick().await;
            }
        }
    });
    let mut before: Vec<SeenCommit> = Vec::new();
    while before.len() < 5 {
        let event = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        before.extend(seen(event));
    }
    daemon.kill_hard();
    assert!(!burst.is_finished(), "the kill landed after the burst");
    drop(watch);
    drop(client);
    burst.await.unwrap();

    let daemon = Netsyncd::start(&db);
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    // Converges to the device.
    let expected = device.leaves();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut revision;
    loop {
        let mut stream = client
            .get_running(pb::GetRunningRequest {
                datastore: "r1".into(),
                path: String::new(),
                min_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut leaves = std::collections::BTreeMap::new();
        revision = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.unwrap();
            revision = batch.revision;
            for leaf in batch.leaves {
                let Some(netsync_proto::gnmi::typed_value::Value::StringVal(v)) =
                    leaf.value.and_then(|v| v.value)
                else {
                    panic!("not a string")
                };
                leaves.insert(leaf.path, v);
            }
        }
        if leaves == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "running did not converge after kill -9"
        );
        let mut wait = tonic::Request::new(pb::GetRunningRequest {
            datastore: "r1".into(),
            path: String::new(),
            min_revision: revision + 1,
        });
        wait.set_timeout(std::time::Duration::from_secs(2));
        let _ = client.get_running(wait).await;
    }
    // Every revision a watcher saw before the kill means the same after it.
    let mut replay = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: "r1".into(),
            from_revision: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut after: Vec<SeenCommit> = Vec::new();
    while after.last().is_none_or(|c| c.0 < revision) {
        let event = tokio::time::timeout(DEADLINE, replay.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        after.extend(seen(event));
    }
    for (i, commit) in after.iter().enumerate() {
        assert_eq!(commit.0, i as u64 + 1, "consecutive revisions");
    }
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "a revision was reused with other content"
    );
    drop((replay, client));
    assert!(daemon.terminate().success());
}
