//! GetIntent, ListIntents and GetDeviations on every replica (`--replicas`):
//! a replica that does not sync a datastore answers them from the database
//! (the stored intents with the statuses its owner recorded, running at its
//! newest revision), as the owner does. A new owner after a kill -9 starts
//! from the recorded statuses (a FAILING intent stays FAILING until a
//! Resync), and every replica shows that.
//!
//! Real processes on a database of the shared throwaway PostgreSQL cluster,
//! datastores on the simulator; they pass without running when PostgreSQL is
//! missing, unless `NETSYNC_REQUIRE_POSTGRES=1`.

use std::time::{Duration, Instant};

use netsync_proto::gnmi::{self, typed_value::Value as V};
use netsync_proto::netsync::v1 as pb;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::{self, get_intent, set_intent};
use netsync_testkit::datastore::intent;
use netsync_testkit::gnmi::string;
use netsync_testkit::sim::{Sim, failing_sets, generated};
use pb::net_sync_client::NetSyncClient;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

use crate::replicas::{Replica, create, database, settled};
use crate::support::assert_status;

/// Every replica here: an intent is FAILING after one Set that did not
/// stick, so that a refusing device makes one at once.
const FLAGS: &[&str] = &["--revert-max-failures", "1"];

/// Every intent of datastore `name`, reading pages of `page_size`.
async fn list_intents(
    client: &mut NetSyncClient<Channel>,
    name: &str,
    page_size: i32,
) -> Vec<pb::Intent> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_intents(pb::ListIntentsRequest {
                datastore: name.into(),
                page_size,
                page_token,
            })
            .await
            .unwrap_or_else(|s| panic!("ListIntents {name}: {s:?}"))
            .into_inner();
        assert!(page.intents.len() <= page_size as usize);
        all.extend(page.intents);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// The deviations of datastore `name` in `format`, reading pages of
/// `page_size`, with the revision of each page (the revisions of all pages
/// if they differ).
async fn deviations(
    client: &mut NetSyncClient<Channel>,
    name: &str,
    page_size: i32,
    format: pb::ValueFormat,
) -> (Vec<u64>, Vec<pb::Deviation>) {
    let mut all = Vec::new();
    let mut revisions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .get_deviations(pb::GetDeviationsRequest {
                datastore: name.into(),
                page_size,
                page_token,
                value_format: format as i32,
            })
            .await
            .unwrap_or_else(|s| panic!("GetDeviations {name}: {s:?}"))
            .into_inner();
        assert!(page.deviations.len() <= page_size as usize);
        if !revisions.contains(&page.revision) {
            revisions.push(page.revision);
        }
        all.extend(page.deviations);
        if page.next_page_token.is_empty() {
            return (revisions, all);
        }
        page_token = page.next_page_token;
    }
}

/// Waits until intent `intent` of `name` on `client` passes `done`; returns
/// it.
async fn until_intent(
    client: &mut NetSyncClient<Channel>,
    name: &str,
    intent: &str,
    what: &str,
    done: impl Fn(&pb::Intent) -> bool,
) -> pb::Intent {
    let started = Instant::now();
    loop {
        let found = get_intent(client, name, intent).await;
        if done(&found) {
            return found;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{intent} of {name} never {what}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state(intent: &pb::Intent) -> pb::IntentState {
    intent
        .status
        .as_ref()
        .map_or(pb::IntentState::Unspecified, |s| s.state())
}

/// Waits until `client` shows intent `intent` of `name` exactly as `owner`
/// does (status included); returns it.
async fn until_same(
    client: &mut NetSyncClient<Channel>,
    owner: &pb::Intent,
    name: &str,
) -> pb::Intent {
    until_intent(client, name, &owner.name, "shown as on its owner", |i| {
        i == owner
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_of_the_owner_are_shown_on_every_replica_with_their_statuses() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start_with(&url, "a", FLAGS).await;
    let mut b = Replica::start_with(&url, "b", FLAGS).await;
    let mut c = Replica::start_with(&url, "c", FLAGS).await;
    let names = create(&mut a, &sim, 1).await;
    let ds = names[0].as_str();
    let (owners, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    let mut replicas = [a, b, c];
    let at = replicas.iter().position(|r| r.id == owners[ds]).unwrap();
    replicas.swap(0, at);
    let [owner, others @ ..] = &mut replicas;

    // Unkind first, on a replica that does not sync the datastore.
    for other in others.iter_mut() {
        let status = other
            .client
            .get_intent(pb::GetIntentRequest {
                datastore: ds.into(),
                name: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, &["intent", "nope"]);
        for status in [
            other
                .client
                .get_intent(pb::GetIntentRequest {
                    datastore: "ghost".into(),
                    name: "x".into(),
                })
                .await
                .unwrap_err(),
            other
                .client
                .list_intents(pb::ListIntentsRequest {
                    datastore: "ghost".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ] {
            assert_status(&status, Code::NotFound, &["datastore", "ghost"]);
        }
        let status = other
            .client
            .list_intents(pb::ListIntentsRequest {
                datastore: ds.into(),
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&status, Code::InvalidArgument, &["page_token"]);
        let status = other
            .client
            .list_intents(pb::ListIntentsRequest {
                datastore: ds.into(),
                page_size: -1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&status, Code::InvalidArgument, &["page_size"]);
        assert!(list_intents(&mut other.client, ds, 10).await.is_empty());
    }

    // Set on the owner: PENDING on every replica at once (nothing recorded
    // yet), then APPLIED at the owner's revision everywhere.
    set_intent(
        &mut owner.client,
        ds,
        intent("motd", 0, &[("/system/intent/motd", "hello")], &[]),
    )
    .await;
    let applied = until_intent(&mut owner.client, ds, "motd", "APPLIED", |i| {
        state(i) == pb::IntentState::Applied
    })
    .await;
    assert!(applied.status.as_ref().unwrap().applied_revision > 0);
    for other in others.iter_mut() {
        until_same(&mut other.client, &applied, ds).await;
    }

    // A device that refuses Sets: FAILING with why, everywhere.
    sim.set_faults(failing_sets(Code::InvalidArgument)).await;
    set_intent(
        &mut owner.client,
        ds,
        intent("refused", 0, &[("/system/intent/refused", "no")], &[]),
    )
    .await;
    let failing = until_intent(&mut owner.client, ds, "refused", "FAILING", |i| {
        state(i) == pb::IntentState::Failing
    })
    .await;
    let status = failing.status.clone().unwrap();
    assert!(status.last_error.contains("Set refused"), "{status:?}");
    assert_eq!(status.attempts, 1, "{status:?}");
    for other in others.iter_mut() {
        let shown = until_same(&mut other.client, &failing, ds).await;
        assert!(shown.status.unwrap().last_error.contains("Set refused"));
    }

    // Lists, whole and a page at a time, are the owner's.
    let listed = list_intents(&mut owner.client, ds, 100).await;
    assert_eq!(
        listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["motd", "refused"]
    );
    for other in others.iter_mut() {
        assert_eq!(list_intents(&mut other.client, ds, 100).await, listed);
        assert_eq!(list_intents(&mut other.client, ds, 1).await, listed);
    }
    // A page token of the owner's list continues on another replica.
    let first = owner
        .client
        .list_intents(pb::ListIntentsRequest {
            datastore: ds.into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let second = others[0]
        .client
        .list_intents(pb::ListIntentsRequest {
            datastore: ds.into(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.intents, listed[1..]);

    // Deleted on the owner: gone everywhere, its status row with it.
    client::delete_intent(&mut owner.client, ds, "motd")
        .await
        .unwrap();
    for other in others.iter_mut() {
        let status = other
            .client
            .get_intent(pb::GetIntentRequest {
                datastore: ds.into(),
                name: "motd".into(),
            })
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, &["motd"]);
    }
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT name FROM intent_statuses WHERE datastore = $1")
            .bind(ds)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows, ["refused"]);

    // The same body written again (a retried SetIntent) keeps the status;
    // a changed body (as SetIntent of another version on any replica
    // writes) drops it in the same statement: PENDING everywhere until its
    // owner records again. The change here is an unknown field appended
    // (field 1000, varint 1), which decoding skips.
    let before: Vec<String> =
        sqlx::query_scalar("SELECT state FROM intent_statuses WHERE datastore = $1")
            .bind(ds)
            .fetch_all(&db)
            .await
            .unwrap();
    sqlx::query("UPDATE intents SET body = body WHERE datastore = $1 AND name = 'refused'")
        .bind(ds)
        .execute(&db)
        .await
        .unwrap();
    let after: Vec<String> =
        sqlx::query_scalar("SELECT state FROM intent_statuses WHERE datastore = $1")
            .bind(ds)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        after, before,
        "the same body written again keeps the status"
    );
    sqlx::query(
        "UPDATE intents SET body = body || '\\xc03e01'::bytea WHERE datastore = $1 AND name = 'refused'",
    )
    .bind(ds)
    .execute(&db)
    .await
    .unwrap();
    for other in others.iter_mut() {
        let shown = get_intent(&mut other.client, ds, "refused").await;
        assert_eq!(state(&shown), pb::IntentState::Pending, "{shown:?}");
    }

    // The datastore deleted through a replica that does not sync it: its
    // statuses go with it.
    others[0]
        .client
        .delete_datastore(pb::DeleteDatastoreRequest { name: ds.into() })
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM intent_statuses")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
    sim.clear_faults().await;
    for replica in replicas {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deviations_on_a_replica_that_does_not_sync_equal_the_owners_at_the_same_revision() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let names = create(&mut a, &sim, 1).await;
    let ds = names[0].as_str();
    let (owners, _) = settled(&db, &mut [&mut a, &mut b], &names).await;
    let (mut owner, mut other) = if owners[ds] == a.id { (a, b) } else { (b, a) };

    let status = other
        .client
        .get_deviations(pb::GetDeviationsRequest {
            datastore: ds.into(),
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, &["page_token"]);
    let status = other
        .client
        .get_deviations(pb::GetDeviationsRequest {
            datastore: "ghost".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, &["datastore", "ghost"]);

    // Non-revertive intents (the datastore does not revert anyway), applied,
    // then drift on the device: three leaves changed, one that an intent
    // wants absent created.
    sim.set_leaves(
        vec![("/system/intent/gone/x".into(), string("here"))],
        vec![],
    )
    .await;
    // Each applied by its job, which has ended before the next write (a job
    // still running would set the drift below back).
    let mut events = client::watch(&mut owner.client, ds, 0).await;
    let mut written = Vec::new();
    for (name, path) in [
        ("one", "/system/intent/one"),
        ("two", "/system/intent/two"),
        ("three", "/system/intent/three"),
    ] {
        let mut soft = intent(name, 0, &[(path, "wanted")], &[]);
        soft.non_revertive = true;
        written.push(soft);
    }
    written.push(intent("absent", 0, &[], &["/system/intent/gone"]));
    for intent in written {
        set_intent(&mut owner.client, ds, intent).await;
        loop {
            let event = client::next_event(&mut events).await;
            if let Some(pb::sync_event::Event::Revert(r)) = event.event {
                assert_ne!(r.phase(), pb::RevertPhase::Failed, "{r:?}");
                if r.phase() == pb::RevertPhase::Applied {
                    break;
                }
            }
        }
    }
    drop(events);
    sim.set_leaves(
        vec![
            ("/system/intent/one".into(), string("drift")),
            ("/system/intent/two".into(), string("drift")),
            ("/system/intent/gone/y".into(), string("back")),
        ],
        vec!["/system/intent/three".into()],
    )
    .await;

    let started = Instant::now();
    let (revision, wanted) = loop {
        let (revisions, found) =
            deviations(&mut owner.client, ds, 1000, pb::ValueFormat::Device).await;
        if found.len() == 4 && revisions.len() == 1 {
            break (revisions[0], found);
        }
        assert!(started.elapsed() < DEADLINE, "drift never shown: {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let paths: Vec<&str> = wanted.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/system/intent/gone/y",
            "/system/intent/one",
            "/system/intent/three",
            "/system/intent/two",
        ]
    );
    // The other replica's answer at the revision the owner answered at (a
    // later commit, e.g. the last of the drift's, starts over), in either
    // value format and a page at a time.
    for format in [pb::ValueFormat::Device, pb::ValueFormat::Scalar] {
        for page_size in [1000, 1, 3] {
            let started = Instant::now();
            loop {
                let (before, on_owner) = deviations(&mut owner.client, ds, 1000, format).await;
                let (revisions, found) = deviations(&mut other.client, ds, page_size, format).await;
                let (after, _) = deviations(&mut owner.client, ds, 1000, format).await;
                if before == after && revisions == before {
                    assert_eq!(found, on_owner, "{format:?} in pages of {page_size}");
                    assert!(revisions[0] >= revision);
                    break;
                }
                assert!(
                    started.elapsed() < DEADLINE,
                    "never at one revision: owner {before:?} then {after:?}, other {revisions:?}"
                );
            }
        }
    }
    assert_eq!(wanted[0].intent, "absent");
    assert!(wanted[0].expected.is_none());
    assert_eq!(wanted[2].actual, None, "deleted on the device");
    for replica in [owner, other] {
        assert!(replica.server.terminate().success());
    }
}

/// A stored intent today's validation refuses (a JSON `null`), as an older
/// netsync could have written it.
fn nulled() -> pb::Intent {
    pb::Intent {
        name: "nulled".into(),
        updates: vec![pb::Leaf {
            path: "/system/intent/nulled".into(),
            value: Some(gnmi::TypedValue {
                value: Some(V::JsonIetfVal(b"null".to_vec())),
            }),
            owner: String::new(),
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_after_a_kill_keeps_the_recorded_statuses_and_every_replica_shows_them() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start_with(&url, "a", FLAGS).await;
    let mut b = Replica::start_with(&url, "b", FLAGS).await;
    let mut c = Replica::start_with(&url, "c", FLAGS).await;
    let names = create(&mut a, &sim, 1).await;
    let ds = names[0].as_str();
    let (owners, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    let mut replicas = vec![a, b, c];
    let at = replicas.iter().position(|r| r.id == owners[ds]).unwrap();
    let owner = replicas.remove(at);
    let [mut x, mut y]: [Replica; 2] = replicas.try_into().ok().unwrap();
    let mut owner_client = owner.client.clone();

    set_intent(
        &mut owner_client,
        ds,
        intent("ok", 0, &[("/system/intent/ok", "fine")], &[]),
    )
    .await;
    let ok = until_intent(&mut owner_client, ds, "ok", "APPLIED", |i| {
        state(i) == pb::IntentState::Applied
    })
    .await;
    sim.set_faults(failing_sets(Code::InvalidArgument)).await;
    set_intent(
        &mut owner_client,
        ds,
        intent("refused", 0, &[("/system/intent/refused", "no")], &[]),
    )
    .await;
    let failing = until_intent(&mut owner_client, ds, "refused", "FAILING", |i| {
        state(i) == pb::IntentState::Failing
    })
    .await;
    // Recorded: shown by another replica.
    until_same(&mut x.client, &ok, ds).await;
    until_same(&mut x.client, &failing, ds).await;
    // Written by an older netsync, behind the owner's back: only a sync
    // that loads it (the next owner) holds it aside.
    sqlx::query("INSERT INTO intents (datastore, name, body) VALUES ($1, 'nulled', $2)")
        .bind(ds)
        .bind(nulled().encode_to_vec())
        .execute(&db)
        .await
        .unwrap();
    let unusable = get_intent(&mut x.client, ds, "nulled").await;
    let status = unusable.status.clone().unwrap();
    assert_eq!(status.state(), pb::IntentState::Failing);
    assert!(status.last_error.contains("cannot be used"), "{status:?}");

    // The device would take the refused intent now: only a retry would
    // make it APPLIED.
    sim.clear_faults().await;
    owner.server.kill_hard();
    let (after, _) = settled(&db, &mut [&mut x, &mut y], &names).await;
    let (new_owner, other) = if after[ds] == x.id {
        (&mut x, &mut y)
    } else {
        (&mut y, &mut x)
    };
    eprintln!("{ds}: {} after the kill", new_owner.id);
    for replica in [&mut *new_owner, &mut *other] {
        assert_eq!(
            get_intent(&mut replica.client, ds, "ok").await,
            ok,
            "{}",
            replica.id
        );
        assert_eq!(
            get_intent(&mut replica.client, ds, "refused").await,
            failing,
            "{}: a failover is not a retry",
            replica.id
        );
        assert_eq!(
            get_intent(&mut replica.client, ds, "nulled").await,
            unusable,
            "{}",
            replica.id
        );
    }
    assert_eq!(
        list_intents(&mut other.client, ds, 1).await,
        list_intents(&mut new_owner.client, ds, 100).await
    );

    // A Resync on the new owner retries it: APPLIED everywhere.
    new_owner
        .client
        .resync(pb::ResyncRequest { name: ds.into() })
        .await
        .unwrap();
    let applied = until_intent(&mut new_owner.client, ds, "refused", "APPLIED", |i| {
        state(i) == pb::IntentState::Applied
    })
    .await;
    until_same(&mut other.client, &applied, ds).await;
    for replica in [x, y] {
        assert!(replica.server.terminate().success());
    }
}
