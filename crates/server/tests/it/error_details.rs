//! The `google.rpc.Status` details of the API's errors, decoded as a client
//! does (tonic-types' `StatusExt`): a `BadRequest` naming the field the text
//! names, a `ResourceInfo` naming what is missing or already there, an
//! `ErrorInfo` for a revision out of range. (A cut watch's `ErrorInfo` is
//! proven where watches are cut: `watch_memory`.)

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::{converge, delete_intent, read_running};
use netsync_testkit::datastore::DatastoreBuilder;
use netsync_testkit::device::Device;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{self, assert_status};

#[tokio::test]
async fn a_bad_address_is_named_in_a_bad_request() {
    let (_dir, server, mut client) = support::start().await;
    let refused = client
        .create_datastore(DatastoreBuilder::new("r1", "r1").create())
        .await
        .expect_err("an address without a port");
    assert_status(
        &refused,
        Code::InvalidArgument,
        &["datastore.target.address"],
    );
    let bad = refused
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {refused:?}"));
    assert_eq!(bad.field_violations.len(), 1, "{bad:?}");
    let violation = &bad.field_violations[0];
    // The text is "FIELD: DESCRIPTION"; the details say the same, apart.
    let (field, description) = refused.message().split_once(": ").unwrap();
    assert_eq!(violation.field, field);
    assert_eq!(violation.field, "datastore.target.address");
    assert_eq!(violation.description, description);
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_doubled_thing_is_named_in_a_resource_info() {
    let device = Device::start(&[("/a", "1")]).await;
    let (_dir, server, mut client) = support::start().await;

    let missing = client
        .get_datastore(pb::GetDatastoreRequest {
            name: "nowhere".into(),
        })
        .await
        .expect_err("no such datastore");
    assert_status(&missing, Code::NotFound, &["\"nowhere\""]);
    let info = missing
        .get_details_resource_info()
        .unwrap_or_else(|| panic!("no ResourceInfo in {missing:?}"));
    assert_eq!(info.resource_type, "netsync.v1.Datastore");
    assert_eq!(info.resource_name, "nowhere");
    assert_eq!(info.description, missing.message());

    let datastore = DatastoreBuilder::new("r1", device.addr).create();
    client.create_datastore(datastore.clone()).await.unwrap();
    let twice = client
        .create_datastore(datastore)
        .await
        .expect_err("a second datastore r1");
    assert_status(&twice, Code::AlreadyExists, &["\"r1\""]);
    let info = twice
        .get_details_resource_info()
        .unwrap_or_else(|| panic!("no ResourceInfo in {twice:?}"));
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("netsync.v1.Datastore", "r1")
    );

    let no_intent = delete_intent(&mut client, "r1", "ntp")
        .await
        .expect_err("no such intent");
    assert_status(&no_intent, Code::NotFound, &["\"ntp\""]);
    let info = no_intent
        .get_details_resource_info()
        .unwrap_or_else(|| panic!("no ResourceInfo in {no_intent:?}"));
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("netsync.v1.Intent", "ntp")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_revision_not_committed_yet_names_the_latest_in_an_error_info() {
    let device = Device::start(&[("/a", "1")]).await;
    let (_dir, server, mut client) = support::start().await;
    client
        .create_datastore(DatastoreBuilder::new("r1", device.addr).create())
        .await
        .unwrap();
    let latest = converge(&mut client, "r1", &device).await;
    let ahead = read_running(
        &mut client,
        pb::GetRunningRequest {
            datastore: "r1".into(),
            revision: latest + 100,
            ..Default::default()
        },
    )
    .await
    .expect_err("a revision not committed yet");
    assert_status(&ahead, Code::OutOfRange, &["does not exist yet"]);
    let info = ahead
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {ahead:?}"));
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("REVISION_NOT_YET", "netsync.dev")
    );
    assert_eq!(info.metadata["datastore"], "r1");
    assert_eq!(info.metadata["revision"], (latest + 100).to_string());
    // No commit can come in between: the device does not change.
    assert_eq!(info.metadata["latest"], latest.to_string());
    assert!(
        ahead
            .message()
            .contains(&format!("(latest: {})", info.metadata["latest"])),
        "{ahead:?}"
    );
    server.stop().await;
}
