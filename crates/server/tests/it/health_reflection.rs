//! grpc.health.v1 and server reflection (v1 and v1alpha), as Kubernetes probes
//! and grpcurl use them.

use crate::support::TestServer;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn health_is_serving_then_not_serving_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "netsync.v1.NetSync"] {
        let status = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut watch = health
        .watch(check("netsync.v1.NetSync"))
        .await
        .unwrap()
        .into_inner();
    let first = netsync_testkit::within(watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Shutdown turns health NOT_SERVING while in-flight calls (this watch) run on.
    let stopped = server.begin_stop();
    let next = netsync_testkit::within(watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    drop(health);
    netsync_testkit::within(stopped).await.unwrap().unwrap();
}

mod v1 {
    pub use tonic_reflection::pb::v1::ServerReflectionRequest;
    pub use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
}

mod v1alpha {
    pub use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    pub use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
}

/// Asks one reflection question over v1 and returns the answer.
async fn ask_v1(server: &TestServer, request: v1::MessageRequest) -> v1::MessageResponse {
    let mut client = v1::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

/// Asks one reflection question over v1alpha and returns the answer.
async fn ask_v1alpha(
    server: &TestServer,
    request: v1alpha::MessageRequest,
) -> v1alpha::MessageResponse {
    let mut client = v1alpha::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

const EXPECTED_SERVICES: [&str; 4] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "netsync.v1.NetSync",
];

#[tokio::test]
async fn reflection_v1_lists_and_describes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let v1::MessageResponse::ListServicesResponse(list) =
        ask_v1(&server, v1::MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, EXPECTED_SERVICES);

    // The gNMI types used in the API, and the health service, are describable.
    for symbol in [
        "netsync.v1.NetSync",
        "gnmi.TypedValue",
        "grpc.health.v1.Health",
    ] {
        let answer = ask_v1(
            &server,
            v1::MessageRequest::FileContainingSymbol(symbol.into()),
        )
        .await;
        let v1::MessageResponse::FileDescriptorResponse(files) = answer else {
            panic!("{symbol}: no descriptor: {answer:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
    }
    server.stop().await;
}

#[tokio::test]
async fn reflection_v1alpha_lists_and_describes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let v1alpha::MessageResponse::ListServicesResponse(list) = ask_v1alpha(
        &server,
        v1alpha::MessageRequest::ListServices(String::new()),
    )
    .await
    else {
        panic!("not a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, EXPECTED_SERVICES);
    let answer = ask_v1alpha(
        &server,
        v1alpha::MessageRequest::FileContainingSymbol("netsync.v1.Datastore".into()),
    )
    .await;
    assert!(
        matches!(answer, v1alpha::MessageResponse::FileDescriptorResponse(ref f) if !f.file_descriptor_proto.is_empty()),
        "{answer:?}"
    );
    server.stop().await;
}
