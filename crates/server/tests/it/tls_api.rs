//! TLS on the API, in process with generated certificates: a TLS client that
//! trusts the server's CA is served, a plaintext client is not; with a client
//! CA (mutual TLS), only clients presenting a certificate it signed are.

use netsync_proto::netsync::v1 as pb;
use netsync_server::Config;
use netsync_server::tls::ApiTls;
use netsync_testkit::client::watch;
use netsync_testkit::datastore::DatastoreBuilder;
use netsync_testkit::pki::{Ca, Leaf};
use pb::net_sync_client::NetSyncClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;

use crate::support::TestServer;

/// netsyncd serving TLS as a certificate for `localhost` from `ca`, asking
/// for client certificates signed by `client_ca` if given.
async fn start(dir: &std::path::Path, ca: &Ca, client_ca: Option<&Ca>) -> TestServer {
    TestServer::start_with(tls_config(dir, ca, client_ca)).await
}

fn tls_config(dir: &std::path::Path, ca: &Ca, client_ca: Option<&Ca>) -> Config {
    let identity = ca.server(&["localhost"]);
    let mut config = crate::support::config(&dir.join("netsync.db"));
    config.tls = Some(ApiTls {
        cert_pem: identity.cert_pem,
        key_pem: netsync_core::datastore::Secret::new(identity.key_pem),
        client_ca_pem: client_ca.map(|ca| ca.cert_pem.clone()),
        reload_from: None,
    });
    config
}

/// A TLS channel to `server` that trusts `ca` and presents `identity`.
fn tls_channel(server: &TestServer, ca: &Ca, identity: Option<&Leaf>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

/// A plaintext channel to `server`.
fn plaintext_channel(server: &TestServer) -> Channel {
    Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_lazy()
}

async fn list(channel: Channel) -> Result<Vec<pb::Datastore>, tonic::Status> {
    Ok(NetSyncClient::new(channel)
        .list_datastores(pb::ListDatastoresRequest::default())
        .await?
        .into_inner()
        .datastores)
}

#[tokio::test]
async fn tls_clients_are_served_and_plaintext_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("API CA");
    let server = start(dir.path(), &ca, None).await;

    let channel = tls_channel(&server, &ca, None);
    let created = NetSyncClient::new(channel.clone())
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "r1");
    assert_eq!(list(channel.clone()).await.unwrap().len(), 1);
    let health = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "netsync.v1.NetSync".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let plaintext = list(plaintext_channel(&server)).await;
    assert!(plaintext.is_err(), "a plaintext client was served");

    // A client that does not trust the server's CA refuses the server.
    let stranger = Ca::new("another CA");
    let untrusting = list(tls_channel(&server, &stranger, None)).await;
    assert!(untrusting.is_err(), "the server was trusted without its CA");

    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_the_client_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("API CA");
    let client_ca = Ca::new("client CA");
    let server = start(dir.path(), &ca, Some(&client_ca)).await;

    let operator = client_ca.client("operator");
    assert_eq!(
        list(tls_channel(&server, &ca, Some(&operator)))
            .await
            .unwrap()
            .len(),
        0
    );

    let anonymous = list(tls_channel(&server, &ca, None)).await;
    assert!(anonymous.is_err(), "served without a client certificate");
    let impostor = Ca::new("another CA").client("operator");
    let refused = list(tls_channel(&server, &ca, Some(&impostor))).await;
    assert!(
        refused.is_err(),
        "served a client certificate of another CA"
    );
    let plaintext = list(plaintext_channel(&server)).await;
    assert!(plaintext.is_err(), "a plaintext client was served");

    server.stop().await;
}

/// Calls are counted per connection over TLS as well.
#[tokio::test]
async fn call_limits_apply_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("API CA");
    let mut config = tls_config(dir.path(), &ca, None);
    config.api_limits.max_concurrent_streams = 1;
    let server = TestServer::start_with(config).await;
    let mut client = NetSyncClient::new(tls_channel(&server, &ca, None));
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    let mut watch = watch(&mut client, "r1", 0).await;
    netsync_testkit::within(watch.message())
        .await
        .unwrap()
        .unwrap();
    let err = client
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_concurrent_streams"), "{err:?}");
    drop(watch);
    server.stop().await;
}

/// With an `[authorization]` table, a reader may call the reading RPCs,
/// health and reflection only, a writer everything, and any other client,
/// though its certificate is signed by the client CA, nothing: each refusal
/// is PERMISSION_DENIED naming the role it lacks. Identities are DNS names
/// or, without any, the common name.
#[tokio::test]
async fn authorization_by_certificate_identity() {
    use netsync_server::authz::Authorization;
    use netsync_testkit::client::{delete_intent, set_intent};
    use netsync_testkit::datastore::intent;
    let leaf = [("/system/aaa/config/name", "a")];

    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("API CA");
    let client_ca = Ca::new("client CA");
    let mut config = tls_config(dir.path(), &ca, Some(&client_ca));
    config.authorization = Some(Authorization {
        readers: ["controller-ro".to_owned()].into(),
        writers: ["config-controller".to_owned()].into(),
    });
    let server = TestServer::start_with(config).await;
    let writer = tls_channel(
        &server,
        &ca,
        Some(&client_ca.client_named("config-controller", &[])),
    );
    let reader = tls_channel(&server, &ca, Some(&client_ca.client("controller-ro")));
    let stranger = tls_channel(&server, &ca, Some(&client_ca.client("intruder")));

    // A writer: everything.
    let mut as_writer = NetSyncClient::new(writer.clone());
    as_writer
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    set_intent(&mut as_writer, "r1", intent("i1", 10, &leaf, &[])).await;
    assert_eq!(list(writer.clone()).await.unwrap().len(), 1);

    // A reader: reading RPCs and health; every write refused, naming the writer role.
    let mut as_reader = NetSyncClient::new(reader.clone());
    assert_eq!(list(reader.clone()).await.unwrap().len(), 1);
    as_reader
        .get_datastore(pb::GetDatastoreRequest { name: "r1".into() })
        .await
        .unwrap();
    as_reader
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    watch(&mut as_reader, "r1", 0).await;
    HealthClient::new(reader.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    denied(
        as_reader
            .create_datastore(DatastoreBuilder::every_field("r2").create())
            .await,
        "writer",
    );
    denied(
        as_reader
            .resync(pb::ResyncRequest { name: "r1".into() })
            .await,
        "writer",
    );
    denied(
        as_reader
            .delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
            .await,
        "writer",
    );
    let refused = as_reader
        .set_intent(pb::SetIntentRequest {
            datastore: "r1".into(),
            intent: Some(intent("i2", 10, &leaf, &[])),
            validate_only: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    crate::support::assert_status(
        &refused,
        tonic::Code::PermissionDenied,
        &["writer", "SetIntent"],
    );
    let refused = delete_intent(&mut as_reader, "r1", "i1").await.unwrap_err();
    crate::support::assert_status(&refused, tonic::Code::PermissionDenied, &["writer"]);

    // Anyone else: nothing, not even health on the API port.
    let refused = list(stranger.clone()).await.unwrap_err();
    crate::support::assert_status(
        &refused,
        tonic::Code::PermissionDenied,
        &["reader", "intruder", "ListDatastores"],
    );
    denied(
        HealthClient::new(stranger)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await,
        "reader",
    );

    // Nothing a refused call asked for happened.
    let datastores = list(writer).await.unwrap();
    assert_eq!(datastores.len(), 1);
    let intents = as_writer
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .intents;
    assert_eq!(
        intents.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["i1"]
    );
    server.stop().await;
}

/// Asserts a call was refused for lacking `role`.
fn denied<T>(result: Result<tonic::Response<T>, tonic::Status>, role: &str) {
    let status = result.map(|_| ()).unwrap_err();
    crate::support::assert_status(&status, tonic::Code::PermissionDenied, &[role]);
}

/// Certificates rotated on disk (a Kubernetes Secret updated in place) serve
/// new connections without a restart, the client CA too; a connection opened
/// before goes on. A rotation caught half-written (the new certificate with
/// the old key) is not taken: the files in use stay until the set is valid.
#[tokio::test]
async fn rotated_certificates_are_picked_up_by_new_connections() {
    use netsync_server::tls::TlsArgs;

    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (old_clients, new_clients) = (Ca::new("old client CA"), Ca::new("new client CA"));
    let old_server = old_ca.server(&["localhost"]);
    let new_server = new_ca.server(&["localhost"]);
    let path = |name: &str| dir.path().join(name);
    let write = |name: &str, pem: &str| std::fs::write(path(name), pem).unwrap();
    write("cert.pem", &old_server.cert_pem);
    write("key.pem", &old_server.key_pem);
    write("client-ca.pem", &old_clients.cert_pem);
    let mut config = crate::support::config(&path("netsync.db"));
    config.tls = ApiTls::resolve(
        &TlsArgs {
            tls_cert: Some(path("cert.pem")),
            tls_key: Some(path("key.pem")),
            tls_client_ca: Some(path("client-ca.pem")),
        },
        None,
    )
    .unwrap();
    config.tls_reload_interval = std::time::Duration::from_millis(20);
    let server = TestServer::start_with(config).await;
    let old_client = old_clients.client("operator");
    let new_client = new_clients.client("operator");
    let opened_before = tls_channel(&server, &old_ca, Some(&old_client));
    list(opened_before.clone()).await.unwrap();

    // Half-written: the new certificate, the old key. Fresh connections keep
    // getting the old certificate over many reload intervals.
    write("cert.pem", &new_server.cert_pem);
    for _ in 0..20 {
        list(tls_channel(&server, &old_ca, Some(&old_client)))
            .await
            .expect("the files in use were dropped for an unusable set");
    }

    // The rest of the rotation: new connections get the new certificate and
    // need a client certificate of the new client CA.
    write("key.pem", &new_server.key_pem);
    write("client-ca.pem", &new_clients.cert_pem);
    // Each try is a new connection, so a handshake: no busy loop.
    netsync_testkit::deadline::within(async {
        while list(tls_channel(&server, &new_ca, Some(&new_client)))
            .await
            .is_err()
        {}
    })
    .await;
    assert!(
        list(tls_channel(&server, &old_ca, Some(&old_client)))
            .await
            .is_err(),
        "a new connection was served the old certificate"
    );
    assert!(
        list(tls_channel(&server, &new_ca, Some(&old_client)))
            .await
            .is_err(),
        "a client certificate of the old client CA was accepted"
    );
    list(opened_before)
        .await
        .expect("the connection opened before the rotation");
    server.stop().await;
}
