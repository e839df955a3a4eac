//! UpdateDatastore (AIP-134) against netsync-sim: a new address restarts the
//! sync with revisions, history and intents kept; bad masks and values change
//! nothing; credentials rotate. Labels, the label-selector filter, pages
//! (AIP-158) and the BASIC/FULL view (AIP-157) of ListDatastores, pages of
//! ListIntents and GetDeviations, and the JSON names through grpcurl.

use std::process::Command;

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::{self, converge, next_event, watch};
use netsync_testkit::datastore::{DatastoreBuilder, create, intent};
use netsync_testkit::gnmi::string;
use netsync_testkit::sim::{Sim, generated};
use pb::net_sync_client::NetSyncClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{self, Netsyncd, assert_status};

type Client = NetSyncClient<Channel>;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

async fn update(
    client: &mut Client,
    datastore: pb::Datastore,
    paths: &[&str],
) -> Result<pb::Datastore, tonic::Status> {
    client
        .update_datastore(pb::UpdateDatastoreRequest {
            datastore: Some(datastore),
            update_mask: mask(paths),
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(client: &mut Client, name: &str) -> pb::Datastore {
    let mut ds = client
        .get_datastore(pb::GetDatastoreRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    ds.status = None;
    ds
}

/// The names ListDatastores answers for `filter`, every page.
async fn names(client: &mut Client, filter: &str) -> Vec<String> {
    client::list_datastores(client, filter, pb::DatastoreView::Basic)
        .await
        .unwrap_or_else(|s| panic!("filter {filter:?}: {s:?}"))
        .into_iter()
        .map(|d| d.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_address_restarts_the_sync_and_keeps_revisions_history_and_intents() {
    let a = Sim::start(generated(40)).await;
    let b = Sim::start(generated(40)).await;
    a.set_leaves(vec![("/system/only-a".into(), string("a"))], vec![])
        .await;
    b.set_leaves(vec![("/system/only-b".into(), string("b"))], vec![])
        .await;
    let (_dir, server, mut client) = support::start().await;
    client
        .create_datastore(create(
            DatastoreBuilder::new("r1", a.addr)
                .encoding(pb::Encoding::Proto)
                .commit_interval_ms(100)
                .label("env", "lab")
                .build(),
        ))
        .await
        .unwrap();
    let on_a = converge(&mut client, "r1", &a).await;
    client::set_intent(
        &mut client,
        "r1",
        intent("banner", 10, &[("/system/banner", "kept")], &[]),
    )
    .await;

    let updated = update(
        &mut client,
        pb::Datastore {
            name: "r1".into(),
            target: Some(pb::Target {
                address: b.addr.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["target.address"],
    )
    .await
    .unwrap();
    assert_eq!(updated.target.unwrap().address, b.addr.to_string());
    assert_eq!(updated.labels.get("env").map(String::as_str), Some("lab"));
    assert!(updated.status.unwrap().revision >= on_a, "no reset");

    let on_b = converge(&mut client, "r1", &b).await;
    assert!(on_b > on_a);
    // History from 1: consecutive revisions, the first commit on b a replace
    // that prunes a's own leaf, and replaying it all gives running.
    let running = client::running(&mut client, "r1", on_b).await;
    let commits = client::history(&mut client, "r1", running.revision).await;
    let revisions: Vec<u64> = commits.iter().map(|(r, _)| *r).collect();
    assert_eq!(revisions, (1..=revisions.len() as u64).collect::<Vec<_>>());
    let first_on_b = commits
        .iter()
        .find(|(_, c)| c.updates.iter().any(|l| l.path == "/system/only-b"))
        .expect("b's leaf was committed");
    assert!(first_on_b.0 > on_a);
    assert!(first_on_b.1.replace, "{:?}", first_on_b.0);
    assert!(first_on_b.1.deletes.iter().any(|p| p == "/system/only-a"));
    assert_eq!(client::replay(&commits), running.leaves);
    assert_eq!(
        client::get_intent(&mut client, "r1", "banner").await.name,
        "banner"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_masks_and_values_are_refused_naming_them_and_change_nothing() {
    let (_dir, server, mut client) = support::start().await;
    client
        .create_datastore(
            DatastoreBuilder::every_field("r1")
                .label("env", "lab")
                .create(),
        )
        .await
        .unwrap();
    let before = get(&mut client, "r1").await;
    let change = pb::Datastore {
        name: "r1".into(),
        target: Some(pb::Target {
            address: "not an address".into(),
            ..Default::default()
        }),
        labels: [("Bad Key".to_string(), "x".to_string())].into(),
        ..Default::default()
    };
    for (paths, words) in [
        (
            &["target.adress"][..],
            &["update_mask", "target.adress"][..],
        ),
        (&["status"], &["update_mask", "status", "output only"]),
        (&["create_time"], &["update_mask", "create_time"]),
        (&["status.revision"], &["update_mask", "status.revision"]),
        (&["name"], &["update_mask", "name"]),
        (&["*", "labels"], &["update_mask", "*"]),
        (&["target.address"], &["datastore.target.address"]),
        (&["labels"], &["datastore.labels[Bad Key]"]),
        (&["labels.Bad Key"], &["datastore.labels[Bad Key]"]),
        (&["sync.paths", "target.tls.nope"], &["target.tls.nope"]),
    ] {
        let err = update(&mut client, change.clone(), paths)
            .await
            .unwrap_err();
        assert_status(&err, Code::InvalidArgument, words);
    }
    let err = update(
        &mut client,
        pb::Datastore {
            name: "zz".into(),
            ..Default::default()
        },
        &["labels"],
    )
    .await
    .unwrap_err();
    assert_status(&err, Code::NotFound, &["zz"]);
    let err = update(&mut client, pb::Datastore::default(), &["labels"])
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["datastore.name"]);
    assert_eq!(get(&mut client, "r1").await, before);

    // A deleted datastore cannot be updated.
    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
        .await
        .unwrap();
    let err = update(&mut client, before.clone(), &["labels"])
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &["r1"]);
    server.stop().await;
}

/// Waits for the sync to be DISCONNECTED with a reason.
async fn disconnected(events: &mut tonic::Streaming<pb::SyncEvent>) -> String {
    loop {
        if let Some(pb::sync_event::Event::StateChanged(s)) = next_event(events).await.event
            && s.state == pb::SyncState::Disconnected as i32
            && !s.reason.is_empty()
        {
            return s.reason;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_and_a_blank_password_keeps_the_stored_one() {
    let mut config = generated(20);
    config.credentials = Some(netsync_sim::Credentials {
        username: "ops".into(),
        password: "new-secret".into(),
    });
    let sim = Sim::start(config).await;
    let (_dir, server, mut client) = support::start().await;
    client
        .create_datastore(
            DatastoreBuilder::new("r1", sim.addr)
                .credentials("ops", "old-secret")
                .allow_insecure_credentials()
                .commit_interval_ms(100)
                .create(),
        )
        .await
        .unwrap();
    let mut events = watch(&mut client, "r1", 0).await;
    let reason = disconnected(&mut events).await;
    assert!(!reason.contains("secret"), "{reason}");
    assert_eq!(client::status(&mut client, "r1").await.revision, 0);
    // The simulator answers only with the new credentials, so reading it
    // here cannot use converge: the datastore's own commits show it got in.

    let rotated = update(
        &mut client,
        pb::Datastore {
            name: "r1".into(),
            target: Some(pb::Target {
                credentials: Some(pb::Credentials {
                    username: String::new(),
                    password: "new-secret".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["target.credentials.password"],
    )
    .await
    .unwrap();
    let creds = rotated.target.unwrap().credentials.unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("ops", "")
    );
    let first = client::wait_revision(&mut client, "r1", 1).await;

    // Read, change, write everything back (`*`): the password came back
    // blank, and blank keeps the stored one, so the restarted sync still
    // gets in.
    let mut read = get(&mut client, "r1").await;
    read.sync.as_mut().unwrap().commit_interval = Some(netsync_testkit::datastore::millis(200));
    update(&mut client, read, &["*"]).await.unwrap();
    sim.set_leaves(vec![("/system/after".into(), string("x"))], vec![])
        .await;
    let after = client::until_running(&mut client, "r1", "the leaf set after", |leaves| {
        leaves.contains_key("/system/after")
    })
    .await;
    assert!(after > first);
    assert!(
        client::status(&mut client, "r1")
            .await
            .last_error
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn labels_select_across_create_and_update() {
    let (_dir, server, mut client) = support::start().await;
    for (name, labels) in [
        ("a", &[("env", "lab"), ("role", "leaf")][..]),
        ("b", &[("env", "lab"), ("role", "spine")]),
        ("c", &[("env", "prod"), ("example.com/tier", "1")]),
        ("d", &[]),
    ] {
        let mut ds = DatastoreBuilder::new(name, "127.0.0.1:9");
        for (k, v) in labels {
            ds = ds.label(k, v);
        }
        client.create_datastore(ds.create()).await.unwrap();
    }
    let err = client
        .create_datastore(
            DatastoreBuilder::new("e", "127.0.0.1:9")
                .label("-x", "y")
                .create(),
        )
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["datastore.labels[-x]"]);
    for (filter, want) in [
        ("", &["a", "b", "c", "d"][..]),
        ("env=lab,role!=spine", &["a"]),
        ("env in (prod, qa)", &["c"]),
        ("env notin (lab)", &["c", "d"]),
        ("role", &["a", "b"]),
        ("!env", &["d"]),
        ("example.com/tier==1", &["c"]),
    ] {
        assert_eq!(names(&mut client, filter).await, want, "{filter:?}");
    }
    let updated = update(
        &mut client,
        pb::Datastore {
            name: "d".into(),
            labels: [("env".to_string(), "lab".to_string())].into(),
            ..Default::default()
        },
        &["labels.env"],
    )
    .await
    .unwrap();
    assert_eq!(updated.labels.len(), 1);
    assert_eq!(names(&mut client, "env=lab").await, ["a", "b", "d"]);
    // An empty mask: every field given, here the labels, replaced whole.
    update(
        &mut client,
        pb::Datastore {
            name: "a".into(),
            labels: [("env".to_string(), "qa".to_string())].into(),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    assert_eq!(names(&mut client, "env=lab").await, ["b", "d"]);
    assert_eq!(names(&mut client, "role").await, ["b"]);
    for bad in ["env in (a", "env=lab,", "=x", "env ~ x"] {
        let err = client
            .list_datastores(pb::ListDatastoresRequest {
                filter: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&err, Code::InvalidArgument, &["filter"]);
    }
    server.stop().await;
}

async fn list_page(
    client: &mut Client,
    page_size: i32,
    page_token: &str,
    filter: &str,
) -> Result<pb::ListDatastoresResponse, tonic::Status> {
    client
        .list_datastores(pb::ListDatastoresRequest {
            page_size,
            page_token: page_token.into(),
            filter: filter.into(),
            view: 0,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_give_every_datastore_once_and_tokens_keep_to_their_filter() {
    let (_dir, server, mut client) = support::start().await;
    let mut want = Vec::new();
    for i in 0..250 {
        let name = format!("d{i:03}");
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        client
            .create_datastore(
                DatastoreBuilder::new(&name, "127.0.0.1:9")
                    .label("parity", parity)
                    .create(),
            )
            .await
            .unwrap();
        want.push(name);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list_page(&mut client, 100, &token, "").await.unwrap();
        assert!(page.datastores.len() <= 100);
        seen.extend(page.datastores.into_iter().map(|d| d.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, want);

    let default = list_page(&mut client, 0, "", "").await.unwrap();
    assert_eq!(default.datastores.len(), 100);
    let capped = list_page(&mut client, 5000, "", "").await.unwrap();
    assert_eq!(capped.datastores.len(), 250);
    assert!(capped.next_page_token.is_empty());
    let err = list_page(&mut client, -1, "", "").await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["page_size"]);

    let even = list_page(&mut client, 10, "", "parity=even").await.unwrap();
    assert!(even.datastores.iter().all(|d| d.labels["parity"] == "even"));
    let err = list_page(&mut client, 10, &even.next_page_token, "parity=odd")
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["page_token"]);
    let err = list_page(&mut client, 10, "garbage", "").await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["page_token"]);
    let next = list_page(&mut client, 10, &even.next_page_token, "parity=even")
        .await
        .unwrap();
    assert_eq!(next.datastores[0].name, "d020");
    server.stop().await;
}

#[tokio::test]
async fn lists_leave_out_credentials_and_pems_unless_asked_for_the_full_view() {
    let (_dir, server, mut client) = support::start().await;
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    let basic = client::list_datastores(&mut client, "", pb::DatastoreView::Unspecified)
        .await
        .unwrap();
    let target = basic[0].target.clone().unwrap();
    assert!(target.credentials.is_none());
    let tls = target.tls.unwrap();
    assert!(tls.ca_pem.is_empty() && tls.cert_pem.is_empty() && tls.key_pem.is_empty());
    assert_eq!(tls.server_name, "r1.lab");
    let full = client::list_datastores(&mut client, "", pb::DatastoreView::Full)
        .await
        .unwrap();
    let target = full[0].target.clone().unwrap();
    let creds = target.credentials.unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("admin", "")
    );
    let tls = target.tls.unwrap();
    assert_eq!((tls.ca_pem.as_str(), tls.key_pem.as_str()), ("CA", ""));
    let err = client
        .list_datastores(pb::ListDatastoresRequest {
            view: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["view"]);
    server.stop().await;
}

#[tokio::test]
async fn intents_and_deviations_come_in_pages() {
    let (_dir, server, mut client) = support::start().await;
    client
        .create_datastore(DatastoreBuilder::new("r1", "127.0.0.1:9").create())
        .await
        .unwrap();
    for i in 0..5 {
        client::set_intent(
            &mut client,
            "r1",
            intent(
                &format!("i{i}"),
                i,
                &[(&format!("/system/leaf-{i}"), "v")],
                &[],
            ),
        )
        .await;
    }
    let mut intents = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_intents(pb::ListIntentsRequest {
                datastore: "r1".into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.intents.len() <= 2);
        intents.extend(page.intents.into_iter().map(|i| i.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(intents, ["i0", "i1", "i2", "i3", "i4"]);

    // Nothing is synced: every intent leaf is missing on the device.
    let mut paths = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_deviations(pb::GetDeviationsRequest {
                datastore: "r1".into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deviations.len() <= 2);
        paths.extend(page.deviations.into_iter().map(|d| d.path));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want: Vec<String> = (0..5).map(|i| format!("/system/leaf-{i}")).collect();
    assert_eq!(paths, want);
    // A token of one list is refused by another.
    let first = client
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let err = client
        .get_deviations(pb::GetDeviationsRequest {
            datastore: "r1".into(),
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, &["page_token"]);
    server.stop().await;
}

#[test]
fn grpcurl_updates_and_filters_with_json_names() {
    let Some(grpcurl) = netsync_testkit::tools::grpcurl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Netsyncd::start(&dir.path().join("netsync.db"));
    let addr = daemon.addr.to_string();
    let g = |body: &str, method: &str| {
        let out = Command::new(&grpcurl)
            .args(["-plaintext", "-d", body, &addr])
            .arg(format!("netsync.v1.NetSync/{method}"))
            .output()
            .expect("grpcurl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for name in ["r1", "r2"] {
        let body = format!(
            r#"{{"datastore":{{"name":"{name}","target":{{"address":"127.0.0.1:9"}},"labels":{{"env":"lab"}}}}}}"#
        );
        let (ok, _, err) = g(&body, "CreateDatastore");
        assert!(ok, "{err}");
    }
    let (ok, out, err) = g(
        r#"{"datastore":{"name":"r2","labels":{"env":"prod"},"sync":{"paths":["/system"]}},
            "updateMask":{"paths":["labels","sync.paths"]}}"#,
        "UpdateDatastore",
    );
    assert!(ok, "{err}");
    assert!(out.contains(r#""env": "prod""#), "{out}");
    assert!(out.contains(r#""/system""#), "{out}");
    let (ok, _, err) = g(
        r#"{"datastore":{"name":"r2"},"updateMask":{"paths":["sync.pathz"]}}"#,
        "UpdateDatastore",
    );
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("sync.pathz"),
        "{err}"
    );
    let (ok, out, err) = g(
        r#"{"filter":"env=lab","pageSize":1,"view":"DATASTORE_VIEW_FULL"}"#,
        "ListDatastores",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(r#""name": "r1""#) && !out.contains("r2"),
        "{out}"
    );
    assert!(!out.contains("nextPageToken"), "{out}");
    let (ok, out, err) = g(r#"{"pageSize":1}"#, "ListDatastores");
    assert!(ok, "{err}");
    assert!(out.contains("nextPageToken"), "{out}");
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_racing_a_delete_leaves_nothing_behind() {
    let (_dir, server, mut client) = support::start().await;
    for round in 0..20 {
        client
            .create_datastore(DatastoreBuilder::new("r1", "127.0.0.1:9").create())
            .await
            .unwrap();
        let mut other = server.client().await;
        let change = pb::Datastore {
            name: "r1".into(),
            target: Some(pb::Target {
                address: format!("127.0.0.1:{}", 10 + round),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (updated, deleted) = tokio::join!(
            update(&mut other, change, &["target.address"]),
            client.delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
        );
        deleted.unwrap();
        if let Err(e) = updated {
            assert_status(&e, Code::NotFound, &["r1"]);
        }
        // Gone from the store and from the engine: no sync left running.
        let err = client
            .get_datastore(pb::GetDatastoreRequest { name: "r1".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = client::try_running(&mut client, "r1", 0, std::time::Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "round {round}: {err:?}");
    }
    server.stop().await;
}
