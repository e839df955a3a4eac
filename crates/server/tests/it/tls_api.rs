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
        .list_datastores(pb::ListDatastoresRequest {})
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
    watch.message().await.unwrap().unwrap();
    let err = client
        .list_datastores(pb::ListDatastoresRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_concurrent_streams"), "{err:?}");
    drop(watch);
    server.stop().await;
}
