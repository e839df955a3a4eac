//! TLS towards devices, against netsync-sim serving TLS with generated
//! certificates: every combination of CA, server name, client certificate and
//! `insecure_skip_verify` either syncs or fails with a last_error that says
//! why, and never reaches IN_SYNC.

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::status;
use netsync_testkit::client::watch;
use netsync_testkit::datastore::{DatastoreBuilder, create};
use netsync_testkit::pki::{Ca, Leaf};
use netsync_testkit::sim::{Sim, generated};
use pb::net_sync_client::NetSyncClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::support::TestServer;

/// Generous bound on reaching a settled state; nothing waits for it to pass.
/// Leaves of the simulated devices.
const LEAVES: u64 = 200;

/// A datastore syncing `sim` over TLS with `tls`.
fn datastore(name: &str, sim: &Sim, tls: pb::TlsConfig) -> pb::Datastore {
    DatastoreBuilder::new(name, sim.addr)
        .encoding(pb::Encoding::Proto)
        .tls(tls)
        .credentials("admin", "TOP-SECRET-PASSWORD")
        .mode(pb::SyncMode::OnChange)
        .commit_interval_ms(20)
        .build()
}

/// A simulator serving TLS as `identity`, requiring username/password and,
/// with `client_ca`, a client certificate that CA signed.
async fn tls_sim(identity: &Leaf, client_ca: Option<&Ca>) -> Sim {
    let mut config = generated(LEAVES as usize);
    config.tls = Some(netsync_sim::TlsIdentity {
        cert_pem: identity.cert_pem.clone().into_bytes(),
        key_pem: identity.key_pem.clone().into_bytes(),
    });
    config.tls_client_ca = client_ca.map(|ca| ca.cert_pem.clone().into_bytes());
    config.credentials = Some(netsync_sim::Credentials {
        username: "admin".into(),
        password: "TOP-SECRET-PASSWORD".into(),
    });
    Sim::start(config).await
}

/// The sync state events of `name`, from its current state on.
async fn states(
    client: &mut NetSyncClient<Channel>,
    name: &str,
) -> impl futures::Stream<Item = pb::SyncState> + use<> {
    let events = watch(client, name, 0).await;
    events.filter_map(|event| match event.unwrap().event {
        Some(pb::sync_event::Event::StateChanged(change)) => change.state.try_into().ok(),
        _ => None,
    })
}

/// Asserts `name` reaches IN_SYNC with the whole device.
async fn assert_synced(client: &mut NetSyncClient<Channel>, name: &str) {
    let mut states = std::pin::pin!(states(client, name).await);
    let reached = tokio::time::timeout(DEADLINE, async {
        while let Some(state) = states.next().await {
            if state == pb::SyncState::InSync {
                return;
            }
        }
    })
    .await;
    let status = status(client, name).await;
    assert!(reached.is_ok(), "{name} did not sync: {status:?}");
    assert_eq!(status.leaves, LEAVES, "{name}: {status:?}");
}

/// Asserts `name` fails to connect, attempt after attempt, without syncing
/// anything, until one attempt's last_error holds every one of `words` (an
/// attempt may also fail less clearly: a device that refuses our client
/// certificate closes the connection, and our write can meet the closed
/// socket before we read its alert).
async fn assert_fails(client: &mut NetSyncClient<Channel>, name: &str, words: &[&str]) {
    let mut states = std::pin::pin!(states(client, name).await);
    let mut last = None;
    let explained = tokio::time::timeout(DEADLINE, async {
        while let Some(state) = states.next().await {
            assert_ne!(state, pb::SyncState::InSync, "{name} synced");
            // The engine enters DISCONNECTED with last_error already set.
            if state != pb::SyncState::Disconnected {
                continue;
            }
            let status = status(client, name).await;
            assert_eq!(status.revision, 0, "{name}: {status:?}");
            assert!(!status.last_error.contains("TOP-SECRET"), "{status:?}");
            if words.iter().all(|w| status.last_error.contains(w)) {
                eprintln!("{name}: {}", status.last_error);
                return;
            }
            last = Some(status.last_error);
        }
    })
    .await;
    assert!(
        explained.is_ok(),
        "{name}: no last_error with {words:?}; the last was {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_verification_ca_name_and_skip_verify() {
    let ca = Ca::new("device CA");
    let other_ca = Ca::new("some other CA");
    // Valid for the address the datastores dial and for one DNS name.
    let sim = tls_sim(&ca.server(&["127.0.0.1", "r1.lab"]), None).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;

    let cases = [
        // The CA, the certificate verified against the address dialled.
        (
            "ca",
            pb::TlsConfig {
                ca_pem: ca.cert_pem.clone(),
                ..Default::default()
            },
        ),
        // The CA, the certificate verified against server_name instead.
        (
            "name",
            pb::TlsConfig {
                ca_pem: ca.cert_pem.clone(),
                server_name: "r1.lab".into(),
                ..Default::default()
            },
        ),
        (
            "wrong-name",
            pb::TlsConfig {
                ca_pem: ca.cert_pem.clone(),
                server_name: "r2.lab".into(),
                ..Default::default()
            },
        ),
        (
            "wrong-ca",
            pb::TlsConfig {
                ca_pem: other_ca.cert_pem.clone(),
                ..Default::default()
            },
        ),
        // No CA: the public webpki roots, which never signed a lab device.
        ("public-roots", pb::TlsConfig::default()),
        // Whatever the device presents is accepted, even with a wrong name.
        (
            "skip-verify",
            pb::TlsConfig {
                insecure_skip_verify: true,
                server_name: "r2.lab".into(),
                ..Default::default()
            },
        ),
        // The verifier replaces the roots: a wrong CA does not matter.
        (
            "skip-verify-ca",
            pb::TlsConfig {
                ca_pem: other_ca.cert_pem.clone(),
                insecure_skip_verify: true,
                ..Default::default()
            },
        ),
    ];
    for (name, tls) in cases {
        client
            .create_datastore(create(datastore(name, &sim, tls)))
            .await
            .unwrap();
    }
    assert_synced(&mut client, "ca").await;
    assert_synced(&mut client, "name").await;
    assert_synced(&mut client, "skip-verify").await;
    assert_synced(&mut client, "skip-verify-ca").await;
    assert_fails(&mut client, "wrong-name", &["certificate", "r2.lab"]).await;
    assert_fails(&mut client, "wrong-ca", &["certificate", "tls.ca_pem"]).await;
    assert_fails(&mut client, "public-roots", &["certificate", "tls.ca_pem"]).await;

    server.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates() {
    let ca = Ca::new("device CA");
    let client_ca = Ca::new("client CA");
    let other_ca = Ca::new("some other CA");
    let sim = tls_sim(&ca.server(&["127.0.0.1"]), Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;

    let with_identity = |identity: Option<Leaf>| pb::TlsConfig {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: identity
            .as_ref()
            .map_or(String::new(), |i| i.cert_pem.clone()),
        key_pem: identity.map_or(String::new(), |i| i.key_pem),
        ..Default::default()
    };
    let cases = [
        (
            "client-cert",
            with_identity(Some(client_ca.client("netsync"))),
        ),
        ("no-client-cert", with_identity(None)),
        (
            "untrusted-client-cert",
            with_identity(Some(other_ca.client("netsync"))),
        ),
        (
            "skip-verify-client-cert",
            pb::TlsConfig {
                insecure_skip_verify: true,
                ..with_identity(Some(client_ca.client("netsync")))
            },
        ),
    ];
    for (name, tls) in cases {
        client
            .create_datastore(create(datastore(name, &sim, tls)))
            .await
            .unwrap();
    }
    assert_synced(&mut client, "client-cert").await;
    assert_synced(&mut client, "skip-verify-client-cert").await;
    assert_fails(&mut client, "no-client-cert", &["client certificate"]).await;
    assert_fails(
        &mut client,
        "untrusted-client-cert",
        &["client certificate"],
    )
    .await;

    // The client key is stored but never returned.
    let ds = client
        .get_datastore(pb::GetDatastoreRequest {
            name: "client-cert".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let tls = ds.target.unwrap().tls.unwrap();
    assert_eq!(tls.key_pem, "");
    assert!(!tls.cert_pem.is_empty());

    server.stop().await;
    sim.stop().await;
}
