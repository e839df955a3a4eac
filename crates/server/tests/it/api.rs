//! The datastore registry over gRPC: CRUD, every error code, secrets, the
//! RPCs whose engine is not built yet, persistence across a restart, and open
//! watches at shutdown.

use std::time::Duration;

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::watch;
use netsync_testkit::datastore::{DatastoreBuilder, create};
use tonic::Code;

use crate::support::{self, TestServer, assert_status};

/// The declared part of a datastore (status is live and changes between reads).
fn without_status(mut ds: pb::Datastore) -> pb::Datastore {
    assert!(ds.status.take().is_some(), "status is always filled in");
    ds
}

/// Asserts no secret appears anywhere in a returned datastore.
fn assert_no_secrets(ds: &pb::Datastore) {
    let debug = format!("{ds:?}");
    assert!(!debug.contains("TOP-SECRET"), "secret returned: {debug}");
    let target = ds.target.as_ref().unwrap();
    assert_eq!(target.credentials.as_ref().unwrap().password, "");
    assert_eq!(target.tls.as_ref().unwrap().key_pem, "");
}

#[tokio::test]
async fn crud_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;

    let created = client
        .create_datastore(DatastoreBuilder::every_field("r2").create())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "r2");
    assert_no_secrets(&created);
    assert!(created.create_time.is_some());
    let target = created.target.as_ref().unwrap();
    assert_eq!(target.address, "127.0.0.1:57400");
    assert_eq!(target.credentials.as_ref().unwrap().username, "admin");
    assert_eq!(target.encoding, pb::Encoding::Proto as i32);
    let sync = created.sync.as_ref().unwrap();
    assert_eq!(sync.paths, ["/interfaces", "/system/aaa"]);
    assert_eq!(sync.list_keys, ["/interfaces/interface[name]"]);
    let status = created.status.as_ref().unwrap();
    assert_eq!(status.revision, 0);
    assert_ne!(status.state, pb::SyncState::Unspecified as i32);
    assert!(status.stats.is_some(), "{status:?}");

    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();

    let got = client
        .get_datastore(pb::GetDatastoreRequest { name: "r2".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(without_status(got), without_status(created.clone()));

    // The FULL view has the credentials and PEMs, the secrets blank (the
    // BASIC default leaves them out: update_list tests that).
    let listed = client
        .list_datastores(pb::ListDatastoresRequest {
            view: pb::DatastoreView::Full as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .datastores;
    let names: Vec<_> = listed.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["r1", "r2"]);
    listed.iter().for_each(assert_no_secrets);

    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r2".into() })
        .await
        .unwrap();
    let gone = client
        .get_datastore(pb::GetDatastoreRequest { name: "r2".into() })
        .await
        .unwrap_err();
    assert_status(&gone, Code::NotFound, &["datastore", "r2"]);
    server.stop().await;
}

/// Credentials are refused in plaintext toward a device unless the datastore
/// says it is a lab; with TLS, or with the flag, they are taken (and the flag
/// comes back). A refused create stores nothing.
#[tokio::test]
async fn credentials_in_plaintext_need_the_lab_flag() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;
    let plaintext = || DatastoreBuilder::new("lab", "127.0.0.1:57400").credentials("admin", "pw");

    let refused = client
        .create_datastore(plaintext().create())
        .await
        .unwrap_err();
    assert_status(
        &refused,
        Code::InvalidArgument,
        &[
            "datastore.target.credentials",
            "plaintext",
            "allow_insecure_credentials",
        ],
    );
    assert!(!refused.message().contains("pw"), "{refused:?}");
    let missing = client
        .get_datastore(pb::GetDatastoreRequest { name: "lab".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let created = client
        .create_datastore(plaintext().allow_insecure_credentials().create())
        .await
        .unwrap()
        .into_inner();
    assert!(created.target.unwrap().allow_insecure_credentials);
    // TLS, or a username alone, needs no flag.
    client
        .create_datastore(DatastoreBuilder::every_field("tls").create())
        .await
        .unwrap();
    client
        .create_datastore(
            DatastoreBuilder::new("user-only", "127.0.0.1:57400")
                .credentials("admin", "")
                .create(),
        )
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn defaults_are_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;
    let minimal = pb::Datastore {
        name: "min".into(),
        target: Some(pb::Target {
            address: "[::1]:57400".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ds = client
        .create_datastore(create(minimal))
        .await
        .unwrap()
        .into_inner();
    let sync = ds.sync.unwrap();
    assert_eq!(sync.mode, pb::SyncMode::OnChange as i32);
    assert_eq!(sync.paths, ["/"]);
    assert_eq!(sync.interval.unwrap().seconds, 30);
    assert_eq!(sync.commit_interval.unwrap().seconds, 1);
    assert_eq!(ds.target.unwrap().encoding, pb::Encoding::JsonIetf as i32);
    assert_eq!(ds.revert.unwrap().debounce.unwrap().seconds, 1);
    server.stop().await;
}

/// Far beyond any bound (and near the limit of what timers can add).
fn ten_thousand_years() -> prost_types::Duration {
    prost_types::Duration {
        seconds: 10_000 * 365 * 24 * 3600,
        nanos: 0,
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;

    type Mutation = fn(&mut pb::Datastore);
    let invalid: Vec<(Mutation, &[&str])> = vec![
        (
            |d| d.name = "Router_1".into(),
            &["datastore.name", "Router_1"],
        ),
        (|d| d.name = String::new(), &["datastore.name", "empty"]),
        (|d| d.name = "a".repeat(64), &["datastore.name", "63"]),
        (|d| d.target = None, &["datastore.target", "required"]),
        (
            |d| d.target.as_mut().unwrap().address = "r1".into(),
            &["datastore.target.address", "host:port"],
        ),
        (
            |d| d.target.as_mut().unwrap().address = "r1:99999".into(),
            &["datastore.target.address", "port"],
        ),
        (
            |d| d.target.as_mut().unwrap().encoding = 17,
            &["datastore.target.encoding", "17"],
        ),
        (
            |d| d.sync.as_mut().unwrap().mode = 8,
            &["datastore.sync.mode", "8"],
        ),
        (
            |d| d.sync.as_mut().unwrap().paths.push("/a//b".into()),
            &["datastore.sync.paths[2]"],
        ),
        (
            |d| d.sync.as_mut().unwrap().paths.push("/a[k=v".into()),
            &["datastore.sync.paths[2]"],
        ),
        (
            |d| d.sync.as_mut().unwrap().commit_interval = Some(prost_types::Duration::default()),
            &["datastore.sync.commit_interval", "above zero"],
        ),
        (
            |d| {
                d.sync.as_mut().unwrap().interval = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: -5,
                })
            },
            &["datastore.sync.interval", "negative"],
        ),
        (
            |d| {
                d.revert.as_mut().unwrap().debounce = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            },
            &["datastore.revert.debounce", "negative"],
        ),
        (
            |d| d.sync.as_mut().unwrap().interval = Some(ten_thousand_years()),
            &["datastore.sync.interval", "at most 24h"],
        ),
        (
            |d| d.sync.as_mut().unwrap().commit_interval = Some(ten_thousand_years()),
            &["datastore.sync.commit_interval", "at most 24h"],
        ),
        (
            |d| {
                d.sync.as_mut().unwrap().commit_interval = Some(prost_types::Duration {
                    seconds: 24 * 3600,
                    nanos: 1,
                })
            },
            &["datastore.sync.commit_interval", "at most 24h"],
        ),
        (
            |d| d.revert.as_mut().unwrap().debounce = Some(ten_thousand_years()),
            &["datastore.revert.debounce", "at most 1h"],
        ),
        (
            |d| {
                d.revert.as_mut().unwrap().debounce = Some(prost_types::Duration {
                    seconds: 3601,
                    nanos: 0,
                })
            },
            &["datastore.revert.debounce", "at most 1h"],
        ),
        (
            |d| {
                d.sync
                    .as_mut()
                    .unwrap()
                    .list_keys
                    .push("/interfaces/interface".into())
            },
            &["datastore.sync.list_keys[1]"],
        ),
        (
            |d| d.target.as_mut().unwrap().tls.as_mut().unwrap().key_pem = String::new(),
            &["datastore.target.tls", "cert_pem"],
        ),
    ];
    for (mutate, words) in invalid {
        let mut ds = DatastoreBuilder::every_field("r1").build();
        mutate(&mut ds);
        let err = client.create_datastore(create(ds)).await.unwrap_err();
        assert_status(&err, Code::InvalidArgument, words);
        assert!(!err.message().contains("TOP-SECRET"), "{err:?}");
    }
    let err = client
        .create_datastore(pb::CreateDatastoreRequest { datastore: None })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["datastore", "required"]);

    // Nothing invalid was stored.
    let listed = client
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().datastores.is_empty());

    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    let err = client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, &["datastore", "r1"]);

    let err = client
        .get_datastore(pb::GetDatastoreRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &["datastore", "nope"]);
    let err = client
        .delete_datastore(pb::DeleteDatastoreRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &["datastore", "nope"]);
    let err = client
        .get_datastore(pb::GetDatastoreRequest {
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["name", "required"]);
    let err = client
        .delete_datastore(pb::DeleteDatastoreRequest {
            name: "UPPER".into(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["name"]);
    server.stop().await;
}

#[tokio::test]
async fn unknown_datastores_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let mut client = server.client().await;
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();

    let err = client
        .resync(pb::ResyncRequest { name: "zz".into() })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &["zz"]);
    let running = |ds: &str, path: &str| pb::GetRunningRequest {
        datastore: ds.into(),
        path: path.into(),
        min_revision: 0,
        with_owner: false,
        ..Default::default()
    };
    let err = client.get_running(running("r1", "/a[")).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["path"]);
    let err = client.get_running(running("", "/")).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["datastore"]);
    let err = client.get_running(running("nope", "/")).await.unwrap_err();
    assert_status(&err, Code::NotFound, &["nope"]);
    let err = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: "nope".into(),
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &["nope"]);

    let err = client
        .set_intent(pb::SetIntentRequest {
            datastore: "r1".into(),
            intent: None,
            validate_only: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["intent", "required"]);
    let err = client
        .list_intents(pb::ListIntentsRequest {
            datastore: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &["zz"]);
    let err = client
        .get_deviations(pb::GetDeviationsRequest {
            datastore: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &["zz"]);
    server.stop().await;
}

#[tokio::test]
async fn datastores_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let server = TestServer::start(&db).await;
    let mut client = server.client().await;
    let created = client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap()
        .into_inner();
    client
        .create_datastore(DatastoreBuilder::every_field("r2").create())
        .await
        .unwrap();
    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r2".into() })
        .await
        .unwrap();
    drop(client);
    server.stop().await;

    let server = TestServer::start(&db).await;
    let mut client = server.client().await;
    let listed = client
        .list_datastores(pb::ListDatastoresRequest {
            view: pb::DatastoreView::Full as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .datastores;
    let listed: Vec<_> = listed.into_iter().map(without_status).collect();
    assert_eq!(listed, vec![without_status(created)]);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_watches_at_once_with_the_revision_to_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let mut config = support::config(&db);
    // Far longer than the deadlines below: shutdown can only finish in time
    // if it ends the watch instead of waiting for it.
    config.shutdown_grace = Duration::from_secs(600);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client
        .create_datastore(DatastoreBuilder::every_field("w").create())
        .await
        .unwrap();
    let mut watch = watch(&mut client, "w", 0).await;
    // The current state comes first, at the latest revision.
    let first = netsync_testkit::within(watch.message())
        .await
        .unwrap()
        .unwrap();

    let stopped = server.begin_stop();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the watch was not ended when shutdown started");
    assert_status(
        &ended,
        Code::Unavailable,
        &[
            "shutting down",
            &format!("from_revision={}", first.revision + 1),
        ],
    );
    assert_eq!(
        netsync_testkit::client::cut_from(&ended, "w", "SHUTTING_DOWN"),
        first.revision + 1
    );
    drop((watch, client));
    tokio::time::timeout(Duration::from_secs(60), stopped)
        .await
        .expect("shutdown still waited after the watch ended")
        .unwrap()
        .unwrap();
}
