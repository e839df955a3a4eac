//! Datastore incarnations: a datastore deleted and created again under the
//! same name gets another uid, and its revisions start over at 1. A watcher
//! or an intent write naming the old uid (`expected_uid`) is refused with
//! FAILED_PRECONDITION naming both uids, instead of being spliced onto the
//! new history; the uid is in every event, stays the same across restarts,
//! and a row stored without one gets one, once.
//!
//! The two tests that read or write the uid column with a SQLite connection
//! of their own run on SQLite whatever `NETSYNC_TEST_DB` says.

use std::path::Path;

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::{self, Client, converge, next_event};
use netsync_testkit::datastore::{DatastoreBuilder, create, intent};
use netsync_testkit::device::Device;
use sqlx::SqlitePool;
use tonic::Code;

use crate::support::{TestServer, assert_status};

/// A PROTO datastore `name` of `device`, committing every 20 ms.
fn datastore(name: &str, device: &Device) -> pb::Datastore {
    DatastoreBuilder::new(name, device.addr)
        .encoding(pb::Encoding::Proto)
        .commit_interval_ms(20)
        .build()
}

/// Asserts that `uid` has the form of a random (version 4) UUID.
fn assert_uuid_form(uid: &str) {
    let groups: Vec<&str> = uid.split('-').collect();
    assert_eq!(
        groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "{uid:?}"
    );
    assert!(
        uid.chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{uid:?}"
    );
    assert!(groups[2].starts_with('4'), "{uid:?}");
    assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{uid:?}");
}

/// A SetIntent of an intent `name` on `/system/name` of r1, naming
/// `expected_uid`.
fn set_request(name: &str, expected_uid: &str, validate_only: bool) -> pb::SetIntentRequest {
    pb::SetIntentRequest {
        datastore: "r1".into(),
        intent: Some(intent(name, 10, &[("/system/name", "intended")], &[])),
        validate_only,
        expected_uid: expected_uid.into(),
    }
}

/// The names of r1's intents.
async fn intent_names(client: &mut Client) -> Vec<String> {
    client
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .intents
        .into_iter()
        .map(|i| i.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datastore_created_again_refuses_the_old_uid_and_serves_the_new() {
    let device = Device::start(&[("/system/name", "a")]).await;
    let (_dir, server, mut client) = crate::support::start().await;
    let old = client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap()
        .into_inner()
        .uid;
    assert_uuid_form(&old);
    assert_eq!(client::uid(&mut client, "r1").await, old);
    converge(&mut client, "r1", &device).await;
    // A watcher of the first incarnation receives revision 1, marked with
    // its uid, and would resume from revision 2.
    let mut events = client::watch_uid(&mut client, "r1", 1, &old).await.unwrap();
    let first = next_event(&mut events).await;
    assert_eq!((first.revision, first.uid.as_str()), (1, old.as_str()));
    drop(events);

    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
        .await
        .unwrap();
    let created = client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap()
        .into_inner();
    let new = created.uid.clone();
    assert_uuid_form(&new);
    assert_ne!(new, old, "a new incarnation has a new uid");
    let listed = client
        .list_datastores(pb::ListDatastoresRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .datastores;
    assert_eq!(listed[0].uid, new);
    // Revision 1 of the new history: revision 2, where the old watcher
    // resumes, is the next one, so without the uid it would be accepted.
    converge(&mut client, "r1", &device).await;

    // Unkind first: the old uid, resuming or from now on.
    for from in [2, 0] {
        let refused = client::watch_uid(&mut client, "r1", from, &old)
            .await
            .unwrap_err();
        assert_status(
            &refused,
            Code::FailedPrecondition,
            &["r1", &old, &new, "created again"],
        );
    }
    let mut read = tonic::Request::new(pb::GetRunningRequest {
        datastore: "r1".into(),
        expected_uid: old.clone(),
        ..Default::default()
    });
    read.set_timeout(netsync_testkit::DEADLINE);
    let refused = client.get_running(read).await.unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, &[&old, &new]);

    // The new uid: the new history from revision 1, every event carrying
    // the uid, replayed and live.
    let mut events = client::watch_uid(&mut client, "r1", 1, &new).await.unwrap();
    device.set("/system/name", "b");
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut events).await;
        assert_eq!(event.uid, new, "{event:?}");
        assert_eq!(event.datastore, "r1");
        let commit = matches!(event.event, Some(pb::sync_event::Event::Commit(_)));
        seen.push((event.revision, commit));
        if commit && event.revision == 2 {
            break;
        }
    }
    assert_eq!(seen[0], (1, true), "replay from revision 1: {seen:?}");
    assert!(seen.contains(&(1, false)), "the current state: {seen:?}");
    // No uid asked: no check (older clients), and the events still say it.
    let mut events = client::watch(&mut client, "r1", 1).await;
    assert_eq!(next_event(&mut events).await.uid, new);
    drop(events);
    let mut read = tonic::Request::new(pb::GetRunningRequest {
        datastore: "r1".into(),
        expected_uid: new.clone(),
        ..Default::default()
    });
    read.set_timeout(netsync_testkit::DEADLINE);
    client.get_running(read).await.unwrap();

    // Intent writes for the old incarnation write nothing, a dry run
    // included.
    for validate_only in [false, true] {
        let refused = client
            .set_intent(set_request("mine", &old, validate_only))
            .await
            .unwrap_err();
        assert_status(&refused, Code::FailedPrecondition, &[&old, &new]);
    }
    assert_eq!(intent_names(&mut client).await, Vec::<String>::new());
    client
        .set_intent(set_request("mine", &new, false))
        .await
        .unwrap();
    let refused = client
        .delete_intent(pb::DeleteIntentRequest {
            datastore: "r1".into(),
            name: "mine".into(),
            expected_uid: old.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, &[&old, &new]);
    assert_eq!(intent_names(&mut client).await, ["mine"]);
    client
        .delete_intent(pb::DeleteIntentRequest {
            datastore: "r1".into(),
            name: "mine".into(),
            expected_uid: new.clone(),
        })
        .await
        .unwrap();
    assert_eq!(intent_names(&mut client).await, Vec::<String>::new());
    drop(client);
    server.stop().await;
}

/// The uid of every datastore row, by name, read from the SQLite file `db`
/// (netsyncd stopped); `None` for a row without one.
async fn stored_uids(db: &Path) -> Vec<(String, Option<String>)> {
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = sqlx::query_as("SELECT name, uid FROM datastores ORDER BY name")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

/// Starts netsyncd on `db` and returns the uid each of `names` shows, after
/// checking that r1's events carry it from revision 1.
async fn uids_served(db: &Path, names: &[&str]) -> Vec<String> {
    let server = TestServer::start_with(crate::support::sqlite_config(db)).await;
    let mut client = server.client().await;
    let mut uids = Vec::new();
    for name in names {
        uids.push(client::uid(&mut client, name).await);
    }
    let mut events = client::watch_uid(&mut client, "r1", 1, &uids[0])
        .await
        .unwrap();
    let event = next_event(&mut events).await;
    assert_eq!((event.revision, &event.uid), (1, &uids[0]));
    drop(events);
    drop(client);
    server.stop().await;
    uids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uid_is_stored_and_the_same_after_a_restart() {
    let device = Device::start(&[("/system/name", "a")]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let server = TestServer::start_with(crate::support::sqlite_config(&db)).await;
    let mut client = server.client().await;
    let uid = client
        .create_datastore(create(datastore("r1", &device)))
        .await
        .unwrap()
        .into_inner()
        .uid;
    converge(&mut client, "r1", &device).await;
    drop(client);
    server.stop().await;

    assert_eq!(stored_uids(&db).await, [("r1".into(), Some(uid.clone()))]);
    for _restart in 0..2 {
        assert_eq!(uids_served(&db, &["r1"]).await, std::slice::from_ref(&uid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stored_without_a_uid_get_one_each_once() {
    let devices = [
        Device::start(&[("/system/name", "a")]).await,
        Device::start(&[("/system/name", "b")]).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let server = TestServer::start_with(crate::support::sqlite_config(&db)).await;
    let mut client = server.client().await;
    for (name, device) in ["r1", "r2"].iter().zip(&devices) {
        client
            .create_datastore(create(datastore(name, device)))
            .await
            .unwrap();
        converge(&mut client, name, device).await;
    }
    drop(client);
    server.stop().await;
    // As rows stored before uids existed: no uid (NULL), or an empty one.
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for (name, uid) in [("r1", None), ("r2", Some(""))] {
        sqlx::query("UPDATE datastores SET uid = ? WHERE name = ?")
            .bind(uid)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    assert_eq!(
        stored_uids(&db).await,
        [("r1".into(), None), ("r2".into(), Some(String::new()))]
    );

    let given = uids_served(&db, &["r1", "r2"]).await;
    for uid in &given {
        assert_uuid_form(uid);
    }
    assert_ne!(given[0], given[1], "one uid per row");
    // Given once and stored: the same after the next restart.
    assert_eq!(
        stored_uids(&db).await,
        [
            ("r1".into(), Some(given[0].clone())),
            ("r2".into(), Some(given[1].clone()))
        ]
    );
    assert_eq!(uids_served(&db, &["r1", "r2"]).await, given);
}
