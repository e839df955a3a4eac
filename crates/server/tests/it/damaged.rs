//! Restarting on damaged or old stored rows: a datastore whose rows cannot be
//! loaded starts STOPPED with a last error naming what failed, and refuses
//! what would need its running or would write to it, while every other
//! datastore serves and syncs; a declaration that today's validation refuses
//! is read leniently and syncs. The rows are changed with a SQLite connection
//! of the test's own while netsyncd is stopped, so these tests run on SQLite
//! whatever `NETSYNC_TEST_DB` says (the loading code they test is shared).

use std::path::Path;

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::{self, Client, converge, status};
use netsync_testkit::datastore::{DatastoreBuilder, create, intent};
use netsync_testkit::device::Device;
use prost::Message;
use sqlx::{Row, SqlitePool};
use tonic::Code;

use crate::support::{TestServer, assert_status};

/// A PROTO datastore `name` of `device`, committing every 20 ms.
fn datastore(name: &str, device: &Device) -> pb::Datastore {
    DatastoreBuilder::new(name, device.addr)
        .encoding(pb::Encoding::Proto)
        .commit_interval_ms(20)
        .build()
}

/// Starts a device per name, each holding a leaf of its own.
async fn devices(names: &[&str]) -> Vec<Device> {
    let mut devices = Vec::new();
    for name in names {
        devices.push(Device::start(&[("/system/name", name)]).await);
    }
    devices
}

/// Runs netsyncd on `db` with a datastore per name of `devices`, waits until
/// each holds its device's leaves, and stops netsyncd; returns each one's
/// revision.
async fn commit_and_stop(db: &Path, names: &[&str], devices: &[Device]) -> Vec<u64> {
    let server = TestServer::start_with(crate::support::sqlite_config(db)).await;
    let mut client = server.client().await;
    let mut revisions = Vec::new();
    for (name, device) in names.iter().zip(devices) {
        client
            .create_datastore(create(datastore(name, device)))
            .await
            .unwrap();
        revisions.push(converge(&mut client, name, device).await);
    }
    drop(client);
    server.stop().await;
    revisions
}

/// A connection of the test's own to the SQLite file `db` (netsyncd stopped).
async fn open(db: &Path) -> SqlitePool {
    SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

/// Bytes that decode as none of netsync's stored bodies: an LZ4 frame with
/// a wrong magic number for log bodies, a truncated field for protobuf.
const GARBAGE: &[u8] = b"\x0a\x05not";

/// Checks that `healthy` serves running at `revision` or later with its
/// device's leaves, and keeps syncing: a change on the device makes a later
/// revision.
async fn assert_serves_and_syncs(
    client: &mut Client,
    healthy: &str,
    device: &Device,
    revision: u64,
) {
    let running = client::running(client, healthy, 0).await;
    assert!(
        running.revision >= revision,
        "{healthy} at revision {} after the restart, {revision} before",
        running.revision
    );
    assert_eq!(running.strings(), device.leaves());
    device.set("/system/contact", "noc");
    let after = converge(client, healthy, device).await;
    assert!(after > revision, "{healthy} did not commit the change");
    let st = status(client, healthy).await;
    assert_eq!(st.state, pb::SyncState::InSync as i32, "{st:?}");
}

/// Checks that `name` is listed and shown STOPPED with a last error holding
/// every one of `words`, and that calls needing its running or writing to it
/// are FAILED_PRECONDITION naming it and that it is stopped.
async fn assert_stopped(client: &mut Client, name: &str, words: &[&str]) {
    let shown = client
        .get_datastore(pb::GetDatastoreRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    let listed = client
        .list_datastores(pb::ListDatastoresRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datastores
        .into_iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("{name} is not listed"));
    for ds in [shown, listed] {
        let st = ds.status.expect("a datastore has a status");
        assert_eq!(st.state, pb::SyncState::Stopped as i32, "{name}: {st:?}");
        for word in words {
            assert!(
                st.last_error.contains(word),
                "{word:?} not in the last error of {name}: {:?}",
                st.last_error
            );
        }
    }

    let refused = [
        client::try_running(client, name, 0, netsync_testkit::DEADLINE)
            .await
            .unwrap_err(),
        client
            .watch_sync(pb::WatchSyncRequest {
                datastore: name.into(),
                from_revision: 1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .set_intent(pb::SetIntentRequest {
                datastore: name.into(),
                intent: Some(intent("mtu", 10, &[("/system/mtu", "9000")], &[])),
                validate_only: false,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .resync(pb::ResyncRequest { name: name.into() })
            .await
            .unwrap_err(),
    ];
    let quoted = format!("{name:?}");
    for status in &refused {
        assert_status(status, Code::FailedPrecondition, &[&quoted, "stopped"]);
    }
}

/// Deletes `name`, checks it is gone, creates it again on `device` and
/// checks that it syncs with a history of its own, from revision 1.
async fn delete_and_create_again(client: &mut Client, name: &str, device: &Device) {
    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: name.into() })
        .await
        .unwrap();
    let gone = client
        .get_datastore(pb::GetDatastoreRequest { name: name.into() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    client
        .create_datastore(create(datastore(name, device)))
        .await
        .unwrap();
    let running = client::running(client, name, 1).await;
    assert_eq!(running.revision, 1, "a new history starts at 1");
    assert_eq!(running.strings(), device.leaves());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_change_log_stops_only_its_datastore() {
    let names = ["r1", "r2"];
    let devices = devices(&names).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let revisions = commit_and_stop(&db, &names, &devices).await;

    let pool = open(&db).await;
    let damaged =
        sqlx::query("UPDATE commits SET body = ? WHERE datastore = 'r2' AND revision = 1")
            .bind(GARBAGE)
            .execute(&pool)
            .await
            .unwrap();
    assert_eq!(damaged.rows_affected(), 1);
    pool.close().await;

    let server = TestServer::start_with(crate::support::sqlite_config(&db)).await;
    let mut client = server.client().await;
    assert_stopped(
        &mut client,
        "r2",
        &[
            "cannot load running",
            "revision 1 of the change log is damaged",
        ],
    )
    .await;
    assert_serves_and_syncs(&mut client, "r1", &devices[0], revisions[0]).await;
    // A reflector (netsync-client) of it: refused with FAILED_PRECONDITION
    // for its own uid, which no new list can fix, it ends with that error
    // instead of listing again and again.
    let mut reflector =
        netsync_client::Client::from_channel(server.channel().await).reflector("r2");
    match netsync_testkit::within(reflector.next()).await {
        Err(netsync_client::Error::Status(refused)) => {
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert!(refused.message().contains("stopped"), "{refused:?}");
        }
        other => panic!("a reflector of a stopped datastore: {other:?}"),
    }

    // The operator removes it and creates it again.
    delete_and_create_again(&mut client, "r2", &devices[1]).await;
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_intent_or_declaration_stops_only_its_datastore() {
    let names = ["r1", "snapshot", "intent", "declaration"];
    let devices = devices(&names).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let revisions = commit_and_stop(&db, &names, &devices).await;

    let pool = open(&db).await;
    // These datastores are too small to have a snapshot yet: this one gets a
    // damaged one, which restart reads before the log.
    sqlx::query(
        "INSERT INTO snapshots (datastore, revision, time_us, body) VALUES ('snapshot', 1, 0, ?)",
    )
    .bind(GARBAGE)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO intents (datastore, name, body) VALUES ('intent', 'mtu', ?)")
        .bind(GARBAGE)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE datastores SET spec = ? WHERE name = 'declaration'")
        .bind(GARBAGE)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let server = TestServer::start_with(crate::support::sqlite_config(&db)).await;
    let mut client = server.client().await;
    assert_stopped(
        &mut client,
        "snapshot",
        &[
            "cannot load running",
            "the snapshot at revision 1 is damaged",
        ],
    )
    .await;
    assert_stopped(
        &mut client,
        "intent",
        &["cannot load intents", "intent \"mtu\" is damaged"],
    )
    .await;
    assert_stopped(
        &mut client,
        "declaration",
        &[
            "cannot load the stored datastore",
            "its declaration is damaged",
        ],
    )
    .await;
    assert_serves_and_syncs(&mut client, "r1", &devices[0], revisions[0]).await;

    // A datastore known by its name only is deleted as any other.
    delete_and_create_again(&mut client, "declaration", &devices[3]).await;
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_todays_validation_refuses_is_read_leniently() {
    let names = ["r1", "old"];
    let devices = devices(&names).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let revisions = commit_and_stop(&db, &names, &devices).await;

    // As an older or a later release might have stored it: a sync mode this
    // release does not know, durations out of today's range, and a field it
    // does not know.
    let pool = open(&db).await;
    let row = sqlx::query("SELECT spec FROM datastores WHERE name = 'old'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut spec = pb::Datastore::decode(row.get::<&[u8], _>("spec")).unwrap();
    let sync = spec.sync.as_mut().unwrap();
    sync.mode = 99;
    sync.interval = Some(prost_types::Duration {
        seconds: -30,
        nanos: 0,
    });
    spec.revert = Some(pb::RevertConfig {
        enabled: false,
        debounce: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
    });
    let mut bytes = spec.encode_to_vec();
    // Field 99, varint 1.
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    sqlx::query("UPDATE datastores SET spec = ? WHERE name = 'old'")
        .bind(bytes)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let server = TestServer::start_with(crate::support::sqlite_config(&db)).await;
    let mut client = server.client().await;
    // API input stays as strict as before.
    let refused = client
        .create_datastore(create(pb::Datastore {
            name: "new".into(),
            ..spec.clone()
        }))
        .await
        .unwrap_err();
    assert_status(&refused, Code::InvalidArgument, &["datastore.sync.mode"]);

    // The stored one is shown as it is read, and syncs.
    let shown = client
        .get_datastore(pb::GetDatastoreRequest { name: "old".into() })
        .await
        .unwrap()
        .into_inner();
    let sync = shown.sync.unwrap();
    assert_eq!(sync.mode, pb::SyncMode::OnChange as i32);
    assert_eq!(sync.interval.unwrap().seconds, 30, "the default interval");
    assert_eq!(shown.revert.unwrap().debounce.unwrap().seconds, 0);
    assert_serves_and_syncs(&mut client, "old", &devices[1], revisions[1]).await;
    assert_serves_and_syncs(&mut client, "r1", &devices[0], revisions[0]).await;
    assert_eq!(status(&mut client, "old").await.last_error, "");
    drop(client);
    server.stop().await;
}
