//! netsyncd as an operator runs it: a real process, driven over loopback by
//! the generated client and by grpcurl (also over mutual TLS), stopped with
//! SIGTERM, restarted on the same database.

use std::path::PathBuf;
use std::process::{Command, Output};

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::{next_event, watch};
use netsync_testkit::datastore::{DatastoreBuilder, create};
use netsync_testkit::deadline::within;
use netsync_testkit::device::Device;
use netsync_testkit::pki::Ca;
use pb::net_sync_client::NetSyncClient;

use crate::support::{Netsyncd, Options};

// Multi-threaded so the client's connection task keeps answering the server's
// graceful-shutdown handshake while this test blocks on the process exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_restart_keeps_datastores() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let daemon = Netsyncd::start(&db);
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    drop(client);
    let status = daemon.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let daemon = Netsyncd::start(&db);
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    let listed = client
        .list_datastores(pb::ListDatastoresRequest::default())
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
    let Some(grpcurl) = netsync_testkit::tools::grpcurl() else {
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
        "credentials":{"username":"admin","password":"TOP-SECRET"},"allowInsecureCredentials":true},
        "sync":{"mode":"SYNC_MODE_ON_CHANGE","paths":["/interfaces","/system"],"commitInterval":"0.5s"}}}"#;
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
    // The details decode through reflection: JSON, not base64.
    assert!(
        err.contains("type.googleapis.com/google.rpc.BadRequest")
            && err.contains(r#""field":"datastore.name""#),
        "{err}"
    );
    let dup = g(&["-d", body, &addr, "netsync.v1.NetSync/CreateDatastore"]);
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(
        err.contains("AlreadyExists") && err.contains(r#""resourceType":"netsync.v1.Datastore""#),
        "{err}"
    );
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
    use netsync_testkit::DEADLINE;
    use tokio_stream::StreamExt;

    let device = Device::start(&[("/system/hostname", "r1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let daemon = Netsyncd::start(&db);
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    let ds = DatastoreBuilder::new("r1", device.addr)
        .encoding(pb::Encoding::Proto)
        .commit_interval_ms(5);
    client.create_datastore(ds.create()).await.unwrap();
    let mut events = watch(&mut client, "r1", 1).await;

    // A burst the device keeps sending until netsyncd has been killed, so
    // the kill lands in its middle however loaded the machine is.
    let burst_device = device.clone();
    let (stop_burst, stopped) = tokio::sync::watch::channel(false);
    let burst = tokio::spawn(async move {
        // Paced (10 changes a millisecond): commits keep landing meanwhile.
        let mut pace = tokio::time::interval(std::time::Duration::from_millis(1));
        let mut i = 0u64;
        while !*stopped.borrow() {
            burst_device.set(
                &format!("/interfaces/interface[name=eth{}]/counter", i % 300),
                &i.to_string(),
            );
            if i.is_multiple_of(10) {
                pace.tick().await;
            }
            i += 1;
        }
        i
    });
    let mut before: Vec<SeenCommit> = Vec::new();
    while before.len() < 5 {
        let event = next_event(&mut events).await;
        before.extend(seen(event));
    }
    daemon.kill_hard();
    // Stopped only now: the device changed while netsyncd was being killed.
    let sent = within(async {
        let _ = stop_burst.send(true);
        burst.await.unwrap()
    })
    .await;
    assert!(sent > 0);
    drop(events);
    drop(client);

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
                with_owner: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut leaves = std::collections::BTreeMap::new();
        revision = 0;
        while let Some(batch) = netsync_testkit::within(stream.next()).await {
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
            with_owner: false,
            ..Default::default()
        });
        wait.set_timeout(std::time::Duration::from_secs(2));
        let _ = client.get_running(wait).await;
    }
    // Every revision a watcher saw before the kill means the same after it.
    let mut replay = watch(&mut client, "r1", 1).await;
    let mut after: Vec<SeenCommit> = Vec::new();
    while after.last().is_none_or(|c| c.0 < revision) {
        let event = next_event(&mut replay).await;
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

/// The README's TLS examples: grpcurl talks to netsyncd serving mutual TLS
/// with certificates from files; without a client certificate, or in
/// plaintext, it is refused.
#[test]
fn grpcurl_over_mutual_tls() {
    let Some(grpcurl) = netsync_testkit::tools::grpcurl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("netsync CA");
    let client_ca = Ca::new("operators CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    let operator = client_ca.client("operator");
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca_pem = file("ca.pem", &ca.cert_pem);
    let server_cert = file("server.pem", &server.cert_pem);
    let server_key = file("server-key.pem", &server.key_pem);
    let client_ca_pem = file("client-ca.pem", &client_ca.cert_pem);
    let client_cert = file("client.pem", &operator.cert_pem);
    let client_key = file("client-key.pem", &operator.key_pem);

    let daemon = Netsyncd::start_with(
        &dir.path().join("netsync.db"),
        Options {
            args: vec![
                "--tls-cert".into(),
                server_cert.clone(),
                "--tls-key".into(),
                server_key.clone(),
                "--tls-client-ca".into(),
                client_ca_pem.clone(),
            ],
            ..Options::default()
        },
    );
    let addr = daemon.addr.to_string();
    let g = |args: &[&str]| {
        let mut all = vec![
            "-cacert",
            &ca_pem,
            "-cert",
            &client_cert,
            "-key",
            &client_key,
        ];
        all.extend_from_slice(args);
        run(&grpcurl, &all)
    };
    let services = stdout(&g(&[&addr, "list"]));
    assert!(services.contains("netsync.v1.NetSync"), "{services}");
    let health = stdout(&g(&[
        "-d",
        r#"{"service":"netsync.v1.NetSync"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]));
    assert!(health.contains("SERVING"), "{health}");
    let body = r#"{"datastore":{"name":"r1","target":{"address":"127.0.0.1:57400",
        "credentials":{"username":"admin","password":"TOP-SECRET"},"allowInsecureCredentials":true}}}"#;
    let created = stdout(&g(&[
        "-d",
        body,
        &addr,
        "netsync.v1.NetSync/CreateDatastore",
    ]));
    assert!(created.contains("\"name\": \"r1\""), "{created}");
    assert!(!created.contains("TOP-SECRET"), "{created}");
    // The name in the certificate, when dialled by another.
    let by_name = stdout(&g(&[
        &format!("localhost:{}", daemon.addr.port()),
        "netsync.v1.NetSync/ListDatastores",
    ]));
    assert!(by_name.contains("\"name\": \"r1\""), "{by_name}");

    let anonymous = run(&grpcurl, &["-cacert", &ca_pem, &addr, "list"]);
    assert!(
        !anonymous.status.success(),
        "served without a client certificate"
    );
    let plaintext = run(&grpcurl, &["-plaintext", &addr, "list"]);
    assert!(!plaintext.status.success(), "served in plaintext");
    assert!(daemon.terminate().success());
}

/// `netsyncd health --addr ADDR [--service S]` run to its exit.
fn health_check(addr: &str, service: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_netsyncd"));
    command.args(["health", "--addr", addr, "--service", service]);
    netsync_testkit::process::Process::run_to_exit(
        "netsyncd health",
        command,
        netsync_testkit::deadline::LONG_DEADLINE,
    )
}

/// With the API behind mutual TLS, the plaintext health listener answers
/// probes (and `netsyncd health`) and serves nothing but grpc.health.v1:
/// no NetSync call, no reflection, reaches the API through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_listener_answers_probes_while_the_api_requires_mutual_tls() {
    use tonic_health::pb::health_client::HealthClient;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("netsync CA");
    let client_ca = Ca::new("operators CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let daemon = Netsyncd::start_with(
        &dir.path().join("netsync.db"),
        Options {
            args: vec![
                "--tls-cert".into(),
                file("server.pem", &server.cert_pem),
                "--tls-key".into(),
                file("server-key.pem", &server.key_pem),
                "--tls-client-ca".into(),
                file("client-ca.pem", &client_ca.cert_pem),
                "--health-listen".into(),
                "127.0.0.1:0".into(),
            ],
            ..Options::default()
        },
    );
    let health: std::net::SocketAddr = daemon.wait_for_log("the health address", |line| {
        line.get("health_listen")?.as_str()?.parse().ok()
    });
    let health_addr = health.to_string();

    for service in ["", "netsync.v1.NetSync"] {
        let output = health_check(&health_addr, service);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{service:?}: {stdout}");
        assert!(stdout.contains("SERVING"), "{stdout}");
    }
    // The API port itself cannot be asked in plaintext, and a port nobody
    // serves fails with the reason.
    let output = health_check(&daemon.addr.to_string(), "");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let unknown = health_check(&health_addr, "no.such.Service");
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        String::from_utf8_lossy(&unknown.stdout).contains("NotFound"),
        "{unknown:?}"
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "netsync.v1.NetSync".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let refused = NetSyncClient::new(channel)
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    if let Some(grpcurl) = netsync_testkit::tools::grpcurl() {
        let listed = run(&grpcurl, &["-plaintext", &health_addr, "list"]);
        assert!(!listed.status.success(), "reflection on the health port");
    }

    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    let gone = health_check(&health_addr, "");
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
}

/// Served beyond loopback without client certificates, netsyncd says at
/// start that anyone who reaches it can change every device; on loopback it
/// does not.
#[test]
fn an_open_api_beyond_loopback_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let open = Netsyncd::start_with(
        &dir.path().join("open.db"),
        Options {
            args: vec!["--listen".into(), "0.0.0.0:0".into()],
            ..Options::default()
        },
    );
    let warning: String = open.wait_for_log("the open-API warning", |line| {
        let message = line.get("message")?.as_str()?;
        message
            .contains("without client certificates")
            .then(|| message.to_owned())
    });
    assert!(warning.contains("any client"), "{warning}");
    assert!(open.terminate().success());

    // Stopped at once: a SIGTERM while netsyncd is still starting stops it
    // cleanly too.
    let local = Netsyncd::start(&dir.path().join("local.db"));
    let (status, logs) = local.terminate_with_logs();
    assert!(status.success());
    assert!(logs.iter().all(|line| line["level"] != "WARN"), "{logs:?}");
}

/// A TLS setting netsyncd cannot use stops it at start-up, naming the flag.
#[test]
fn bad_tls_settings_stop_netsyncd_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let db = db.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    for (args, words) in [
        (vec!["--tls-cert", missing], vec!["--tls-key"]),
        (
            vec!["--tls-cert", missing, "--tls-key", missing],
            vec!["--tls-cert", "missing.pem", "cannot read"],
        ),
    ] {
        let mut all = vec!["--db", db];
        all.extend(args);
        let output = Netsyncd::run_to_exit(&all);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in words {
            assert!(stderr.contains(word), "{word:?} not in {stderr}");
        }
    }
}

/// Device credentials go to the device as gNMI metadata (the simulator
/// refuses calls without them) and nowhere else: not into any log line, even
/// at trace level, nor into any response. Likewise the client key for TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_secrets_reach_the_device_and_nothing_else() {
    use tokio_stream::StreamExt;
    const PASSWORD: &str = "TOP-SECRET-PASSWORD";

    let ca = Ca::new("device CA");
    let client_ca = Ca::new("client CA");
    let device_identity = ca.server(&["127.0.0.1"]);
    let client_identity = client_ca.client("netsync");
    let mut config = netsync_testkit::sim::generated(50);
    config.tls = Some(netsync_sim::TlsIdentity {
        cert_pem: device_identity.cert_pem.into_bytes(),
        key_pem: device_identity.key_pem.into_bytes(),
    });
    config.tls_client_ca = Some(client_ca.cert_pem.clone().into_bytes());
    config.credentials = Some(netsync_sim::Credentials {
        username: "admin".into(),
        password: PASSWORD.into(),
    });
    let sim = netsync_testkit::sim::Sim::start(config).await;

    let dir = tempfile::tempdir().unwrap();
    let daemon = Netsyncd::start_with(
        &dir.path().join("netsync.db"),
        Options {
            env: vec![("RUST_LOG".into(), "trace".into())],
            ..Options::default()
        },
    );
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    let spec = |name: &str, password: &str| {
        DatastoreBuilder::new(name, sim.addr)
            .encoding(pb::Encoding::Proto)
            .tls(pb::TlsConfig {
                ca_pem: ca.cert_pem.clone(),
                cert_pem: client_identity.cert_pem.clone(),
                key_pem: client_identity.key_pem.clone(),
                ..Default::default()
            })
            .credentials("admin", password)
            .build()
    };
    let mut responses = Vec::new();
    for (name, password) in [("good", PASSWORD), ("wrong", "TOP-SECRET-WRONG")] {
        let created = client.create_datastore(create(spec(name, password))).await;
        responses.push(format!("{:?}", created.unwrap().into_inner()));
    }
    // Each sync settles: the right password syncs, the wrong one is refused.
    for (name, settled) in [
        ("good", pb::SyncState::InSync),
        ("wrong", pb::SyncState::Disconnected),
    ] {
        let mut events = watch(&mut client, name, 0).await;
        let reached = tokio::time::timeout(netsync_testkit::DEADLINE, async {
            while let Some(event) = events.next().await {
                if let Some(pb::sync_event::Event::StateChanged(change)) = event.unwrap().event
                    && change.state == settled as i32
                {
                    return;
                }
            }
        })
        .await;
        assert!(reached.is_ok(), "{name} did not reach {settled:?}");
    }
    let wrong = client
        .get_datastore(pb::GetDatastoreRequest {
            name: "wrong".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let last_error = &wrong.status.as_ref().unwrap().last_error;
    assert!(last_error.contains("Unauthenticated"), "{last_error}");
    responses.push(format!("{wrong:?}"));
    let listed = client
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap()
        .into_inner();
    responses.push(format!("{listed:?}"));
    drop(client);
    let (status, log) = daemon.terminate_with_logs();
    let log: Vec<String> = log.iter().map(|line| line.to_string()).collect();
    assert!(status.success());
    sim.stop().await;

    // The key's base64 lines, any of which would betray it.
    let key_lines: Vec<&str> = client_identity
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(log.len() > 50, "trace logging is on: {} lines", log.len());
    for (what, text) in log
        .iter()
        .map(|l| ("log line", l))
        .chain(responses.iter().map(|r| ("response", r)))
    {
        assert!(
            !text.contains("TOP-SECRET"),
            "a password in a {what}: {text}"
        );
        for key_line in &key_lines {
            assert!(!text.contains(key_line), "the TLS key in a {what}: {text}");
        }
    }
}
