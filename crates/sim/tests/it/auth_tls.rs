//! Credentials on every gNMI call, an unauthenticated control service, and TLS
//! with a certificate generated for the test.

use netsync_testkit::gnmi::*;
use netsync_testkit::sim::{Sim, generated};

use netsync_proto::gnmi;
use netsync_proto::gnmi::SubscriptionMode as SubMode;
use netsync_proto::gnmi::g_nmi_client::GNmiClient;
use netsync_proto::gnmi::subscription_list::Mode;
use netsync_proto::netsync::sim::v1 as pb;
use netsync_sim::{Credentials, SimConfig, TlsIdentity};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn with_metadata<T>(message: T, pairs: &[(&'static str, &'static str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (k, v) in pairs {
        request.metadata_mut().insert(*k, v.parse().unwrap());
    }
    request
}

const GOOD: &[(&str, &str)] = &[("username", "admin"), ("password", "s3cret")];

#[tokio::test]
async fn credentials_are_checked_on_every_gnmi_call() {
    let sim = Sim::start(SimConfig {
        credentials: Some(Credentials {
            username: "admin".into(),
            password: "s3cret".into(),
        }),
        ..generated(100)
    })
    .await;
    let mut client = sim.gnmi().await;
    let bad_sets: [&[(&'static str, &'static str)]; 3] = [
        &[],
        &[("username", "admin"), ("password", "wrong")],
        &[("username", "root"), ("password", "s3cret")],
    ];
    for metadata in bad_sets {
        let status = client
            .capabilities(with_metadata(gnmi::CapabilityRequest::default(), metadata))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(!status.message().contains("s3cret"));
        let status = client
            .get(with_metadata(gnmi::GetRequest::default(), metadata))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = client
            .set(with_metadata(gnmi::SetRequest::default(), metadata))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = Sub::try_open_with(
            &mut client,
            list(Mode::Once, vec![subscription("/", SubMode::TargetDefined)]),
            metadata,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    client
        .capabilities(with_metadata(gnmi::CapabilityRequest::default(), GOOD))
        .await
        .unwrap();
    client
        .get(with_metadata(
            gnmi::GetRequest {
                path: vec![path("/system")],
                ..Default::default()
            },
            GOOD,
        ))
        .await
        .unwrap();
    let mut sub = Sub::try_open_with(
        &mut client,
        list(Mode::Once, vec![subscription("/", SubMode::TargetDefined)]),
        GOOD,
    )
    .await
    .unwrap();
    assert_eq!(count_updates(&sub.until_sync().await), 100);
    // The control service needs no credentials; rejected calls are not counted.
    let counters = sim.counters().await;
    assert_eq!(counters.sets_received, 0);
    assert_eq!(counters.subscribes_received, 1);
    sim.stop().await;
}

#[tokio::test]
async fn tls_serves_gnmi_and_control() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let sim = Sim::start(SimConfig {
        tls: Some(TlsIdentity {
            cert_pem: cert_pem.clone().into_bytes(),
            key_pem: certified.signing_key.serialize_pem().into_bytes(),
        }),
        ..generated(100)
    })
    .await;
    let channel = Channel::from_shared(format!("https://{}", sim.addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cert_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = GNmiClient::new(channel.clone());
    let caps = client
        .capabilities(gnmi::CapabilityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.g_nmi_version, "0.10.0");
    let mut sub = Sub::open(
        &mut client,
        list(Mode::Once, vec![subscription("/", SubMode::TargetDefined)]),
    )
    .await;
    assert_eq!(count_updates(&sub.until_sync().await), 100);
    let mut control =
        netsync_proto::netsync::sim::v1::sim_control_client::SimControlClient::new(channel);
    let counters = control
        .get_counters(pb::GetCountersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counters.leaves, 100);
    // A plaintext client gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", sim.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let result = GNmiClient::new(plain)
            .capabilities(gnmi::CapabilityRequest::default())
            .await;
        assert!(result.is_err());
    }
    sim.stop().await;
}
