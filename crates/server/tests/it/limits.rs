//! Limits against bad clients, each reached through the API: datastores,
//! watchers per datastore, calls open on one connection, request message
//! size (RESOURCE_EXHAUSTED naming the setting) and the server's deadline
//! (DEADLINE_EXCEEDED). Slots are freed when a call ends.

use std::time::{Duration, Instant};

use netsync_proto::netsync::v1 as pb;
use netsync_server::limits::ApiLimits;
use netsync_testkit::DEADLINE;
use netsync_testkit::datastore::{DatastoreBuilder, create};
use pb::net_sync_client::NetSyncClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{self, TestServer, assert_status};

async fn start(dir: &tempfile::TempDir, limits: ApiLimits) -> TestServer {
    let mut config = support::config(&dir.path().join("netsync.db"));
    config.api_limits = limits;
    TestServer::start_with(config).await
}

/// A WatchSync of `name` whose first event (the current state) has arrived,
/// so the server holds it open.
async fn open_watch(
    client: &mut NetSyncClient<Channel>,
    name: &str,
) -> Result<tonic::Streaming<pb::SyncEvent>, tonic::Status> {
    let mut events = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: name.into(),
            from_revision: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    netsync_testkit::within(events.next())
        .await
        .expect("a first event")?;
    Ok(events)
}

/// Retries `call` until it succeeds: a slot is freed when the server has
/// dropped the ended call, a moment after the client did.
async fn until_ok<T, F: Future<Output = Result<T, tonic::Status>>>(
    mut call: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(Instant::now() < deadline, "the slot was never freed");
            }
        }
    }
}

#[tokio::test]
async fn datastore_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir,
        ApiLimits {
            max_datastores: 2,
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    for name in ["r1", "r2"] {
        client
            .create_datastore(DatastoreBuilder::every_field(name).create())
            .await
            .unwrap();
    }
    let err = client
        .create_datastore(DatastoreBuilder::every_field("r3").create())
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::ResourceExhausted,
        &["datastore limit of 2 reached", "max_datastores"],
    );
    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
        .await
        .unwrap();
    client
        .create_datastore(DatastoreBuilder::every_field("r3").create())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn watcher_limit_per_datastore() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir,
        ApiLimits {
            max_watchers_per_datastore: 2,
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    for name in ["r1", "r2"] {
        client
            .create_datastore(DatastoreBuilder::every_field(name).create())
            .await
            .unwrap();
    }
    let first = open_watch(&mut client, "r1").await.unwrap();
    let second = open_watch(&mut client, "r1").await.unwrap();
    let err = open_watch(&mut client, "r1").await.unwrap_err();
    assert_status(
        &err,
        Code::ResourceExhausted,
        &["\"r1\"", "2 watchers", "max_watchers_per_datastore"],
    );
    // Another datastore has watchers of its own.
    let other = open_watch(&mut client, "r2").await.unwrap();
    // A watcher that leaves frees its slot.
    drop(first);
    let third = until_ok(|| {
        let mut client = client.clone();
        async move { open_watch(&mut client, "r1").await }
    })
    .await;
    assert_eq!(
        open_watch(&mut client, "r1").await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    drop((second, third, other));
    server.stop().await;
}

#[tokio::test]
async fn open_call_limit_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir,
        ApiLimits {
            max_concurrent_streams: 2,
            ..Default::default()
        },
    )
    .await;
    // One channel is one HTTP/2 connection.
    let mut client = server.client().await;
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    let first = open_watch(&mut client, "r1").await.unwrap();
    let second = open_watch(&mut client, "r1").await.unwrap();
    // Any third call on this connection, unary too, is refused at once.
    let err = client
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::ResourceExhausted,
        &["2 calls open", "max_concurrent_streams"],
    );
    // Another connection has its own limit.
    let mut other = server.client().await;
    other
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap();
    // A call that ends frees its place.
    drop(first);
    until_ok(|| {
        let mut client = client.clone();
        async move {
            client
                .list_datastores(pb::ListDatastoresRequest::default())
                .await
        }
    })
    .await;
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir,
        ApiLimits {
            max_message_bytes: 4096,
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    let mut big = DatastoreBuilder::every_field("r1").build();
    big.target.as_mut().unwrap().tls.as_mut().unwrap().ca_pem = "x".repeat(5000);
    let err = client.create_datastore(create(big)).await.unwrap_err();
    assert_status(
        &err,
        Code::ResourceExhausted,
        &["4096 bytes", "max_message_bytes"],
    );
    // Far over the limit: refused from the frame header, before the bytes.
    let mut huge = DatastoreBuilder::every_field("r1").build();
    huge.target.as_mut().unwrap().tls.as_mut().unwrap().ca_pem = "x".repeat(8 << 20);
    let err = client.create_datastore(create(huge)).await.unwrap_err();
    assert_status(&err, Code::ResourceExhausted, &["max_message_bytes"]);
    // Within the limit, and on the same connection, all is well.
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn default_limit_is_tonics_four_mebibytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, ApiLimits::default()).await;
    let mut client = server.client().await;
    let mut big = DatastoreBuilder::every_field("r1").build();
    big.target.as_mut().unwrap().tls.as_mut().unwrap().ca_pem = "x".repeat(5 << 20);
    let err = client.create_datastore(create(big)).await.unwrap_err();
    assert_status(
        &err,
        Code::ResourceExhausted,
        &["4194304 bytes", "max_message_bytes"],
    );
    server.stop().await;
}

/// A call without a deadline gets the server's: GetRunning waiting for a
/// revision that never comes ends with DEADLINE_EXCEEDED instead of holding
/// the call forever.
#[tokio::test]
async fn calls_without_a_deadline_get_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir,
        ApiLimits {
            request_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let mut client = server.client().await;
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    let request = pb::GetRunningRequest {
        datastore: "r1".into(),
        path: String::new(),
        min_revision: 1_000_000,
        with_owner: false,
        ..Default::default()
    };
    let err = match client.get_running(request).await {
        Ok(_) => panic!("min_revision 1000000 was reached"),
        Err(status) => status,
    };
    assert_status(&err, Code::DeadlineExceeded, &["min_revision"]);
    server.stop().await;
}
