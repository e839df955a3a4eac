//! Intents over gRPC: validation, CRUD, persistence, and deviations that
//! follow both intent changes and the device.

use std::time::Duration;

use netsync_proto::gnmi::{TypedValue, typed_value};
use netsync_proto::netsync::v1 as pb;
use netsync_testkit::datastore::{DatastoreBuilder, create, intent};
use netsync_testkit::device::Device;
use netsync_testkit::{DEADLINE, client};
use pb::net_sync_client::NetSyncClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::TestServer;

fn set(ds: &str, intent: pb::Intent) -> pb::SetIntentRequest {
    pb::SetIntentRequest {
        datastore: ds.into(),
        intent: Some(intent),
        validate_only: false,
        ..Default::default()
    }
}

/// The datastore `r1` of `device`, committing every 10 ms.
fn datastore(device: &Device) -> pb::Datastore {
    DatastoreBuilder::new("r1", device.addr)
        .commit_interval_ms(10)
        .build()
}

/// Deviations as (path, intent, expected, actual) with string values.
async fn deviations(
    client: &mut NetSyncClient<Channel>,
) -> Vec<(String, String, Option<String>, Option<String>)> {
    let text = |v: Option<TypedValue>| {
        v.map(|v| match v.value {
            Some(typed_value::Value::StringVal(s)) => s,
            other => format!("{other:?}"),
        })
    };
    client::deviations(client, "r1")
        .await
        .into_iter()
        .map(|d| (d.path, d.intent, text(d.expected), text(d.actual)))
        .collect()
}

/// Waits until the deviations are `expected`, re-reading at each revision.
async fn until_deviations(
    client: &mut NetSyncClient<Channel>,
    expected: &[(&str, &str, Option<&str>, Option<&str>)],
) {
    let expected: Vec<_> = expected
        .iter()
        .map(|(p, i, e, a)| {
            (
                p.to_string(),
                i.to_string(),
                e.map(String::from),
                a.map(String::from),
            )
        })
        .collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = deviations(client).await;
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deviations {got:?}, expected {expected:?}"
        );
        let revision = client
            .get_deviations(pb::GetDeviationsRequest {
                datastore: "r1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .revision;
        let mut wait = tonic::Request::new(pb::GetRunningRequest {
            datastore: "r1".into(),
            path: "/none".into(),
            min_revision: revision + 1,
            with_owner: false,
            ..Default::default()
        });
        wait.set_timeout(Duration::from_secs(1));
        let _ = client.get_running(wait).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_intents_get_clear_errors() {
    let device = Device::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("n.db")).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore(&device)))
        .await
        .unwrap();
    let cases: Vec<(pb::Intent, &[&str])> = vec![
        (intent("Bad Name", 0, &[], &[]), &["intent.name"]),
        (
            intent("i", 0, &[("/a[", "x")], &[]),
            &["intent.updates[0].path"],
        ),
        (
            intent("i", 0, &[("/", "x")], &[]),
            &["intent.updates[0].path", "root"],
        ),
        (
            intent("i", 0, &[("/a", "x"), ("a", "y")], &[]),
            &["intent.updates[1].path", "more than once"],
        ),
        (intent("i", 0, &[], &["/"]), &["intent.deletes[0]", "root"]),
        (intent("i", 0, &[], &["/a]"]), &["intent.deletes[0]"]),
        (
            intent("i", 0, &[("/a/b", "x")], &["/a"]),
            &["intent.deletes[0]", "/a/b"],
        ),
        (
            pb::Intent {
                updates: vec![pb::Leaf {
                    path: "/a".into(),
                    value: None,
                    owner: String::new(),
                }],
                ..intent("i", 0, &[], &[])
            },
            &["intent.updates[0].value", "required"],
        ),
    ];
    for (bad, words) in cases {
        let err = client.set_intent(set("r1", bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        for word in words {
            assert!(
                err.message().contains(word),
                "{word:?} not in {:?}",
                err.message()
            );
        }
    }
    let err = client
        .set_intent(set("zz", intent("i", 0, &[], &[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_intent(pb::GetIntentRequest {
            datastore: "r1".into(),
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"));
    let err = client
        .delete_intent(pb::DeleteIntentRequest {
            datastore: "r1".into(),
            name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        client
            .list_intents(pb::ListIntentsRequest {
                datastore: "r1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .intents
            .is_empty()
    );
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deviations_follow_intents_and_the_device_and_survive_a_restart() {
    let device = Device::start(&[
        ("/system/hostname", "old"),
        ("/users/user[name=eve]/name", "eve"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    let server = TestServer::start(&db).await;
    let mut client = server.client().await;
    client
        .create_datastore(create(datastore(&device)))
        .await
        .unwrap();
    let mut first = tonic::Request::new(pb::GetRunningRequest {
        datastore: "r1".into(),
        path: String::new(),
        min_revision: 1,
        with_owner: false,
        ..Default::default()
    });
    first.set_timeout(DEADLINE);
    client.get_running(first).await.unwrap();

    let written = client
        .set_intent(set(
            "r1",
            intent(
                "base",
                10,
                &[("/system/hostname", "r1"), ("/system/domain", "lab")],
                &["/users/user"],
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(written.revision >= 1);
    until_deviations(
        &mut client,
        &[
            ("/system/domain", "base", Some("lab"), None),
            ("/system/hostname", "base", Some("r1"), Some("old")),
            ("/users/user[name=eve]/name", "base", None, Some("eve")),
        ],
    )
    .await;

    // A stronger intent wins where they overlap.
    client
        .set_intent(set(
            "r1",
            intent("override", 1, &[("/system/hostname", "core1")], &[]),
        ))
        .await
        .unwrap();
    until_deviations(
        &mut client,
        &[
            ("/system/domain", "base", Some("lab"), None),
            ("/system/hostname", "override", Some("core1"), Some("old")),
            ("/users/user[name=eve]/name", "base", None, Some("eve")),
        ],
    )
    .await;

    // The device comes round: fixed deviations disappear.
    device.set("/system/hostname", "core1");
    device.set("/system/domain", "lab");
    device.delete("/users/user[name=eve]/name");
    until_deviations(&mut client, &[]).await;

    // Drift shows up again.
    device.set("/system/domain", "other");
    until_deviations(
        &mut client,
        &[("/system/domain", "base", Some("lab"), Some("other"))],
    )
    .await;

    let listed = client
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .intents;
    let names: Vec<_> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["base", "override"]);
    let got = client
        .get_intent(pb::GetIntentRequest {
            datastore: "r1".into(),
            name: "base".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // The intent reads back as written; its status moved on from the PENDING
    // SetIntent answered with (this device refuses every Set).
    let pending = pb::IntentState::Pending as i32;
    assert_eq!(written.status.as_ref().map(|s| s.state), Some(pending));
    let status = got.status.clone().unwrap();
    assert_eq!(status.state, pending, "{status:?}");
    assert!(status.attempts >= 1, "{status:?}");
    assert!(status.last_error.contains("Set refused"), "{status:?}");
    let as_written = |i: &pb::Intent| pb::Intent {
        status: None,
        ..i.clone()
    };
    assert_eq!(as_written(&got), as_written(&written));

    drop(client);
    server.stop().await;
    let server = TestServer::start(&db).await;
    let mut client = server.client().await;
    let listed = client
        .list_intents(pb::ListIntentsRequest {
            datastore: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .intents;
    assert_eq!(listed.len(), 2);
    until_deviations(
        &mut client,
        &[("/system/domain", "base", Some("lab"), Some("other"))],
    )
    .await;

    client
        .delete_intent(pb::DeleteIntentRequest {
            datastore: "r1".into(),
            name: "base".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    until_deviations(&mut client, &[]).await;
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_are_checked_against_their_datastore() {
    let device = Device::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("n.db")).await;
    let mut client = server.client().await;
    let datastore = DatastoreBuilder::new("r1", device.addr)
        .paths(&["/interfaces", "/system"])
        .list_keys(&["/interfaces/interface[name]"])
        .build();
    client.create_datastore(create(datastore)).await.unwrap();
    let ietf = |text: &str| TypedValue {
        value: Some(typed_value::Value::JsonIetfVal(text.into())),
    };
    let with_value = |path: &str, value: TypedValue| pb::Intent {
        updates: vec![pb::Leaf {
            path: path.into(),
            value: Some(value),
            owner: String::new(),
        }],
        ..intent("i", 0, &[], &[])
    };
    let cases: Vec<(pb::Intent, &[&str])> = vec![
        (
            intent("i", 0, &[("/x/y", "v")], &[]),
            &[
                "intent.updates[0].path",
                "/x/y is outside the datastore's sync.paths [/interfaces, /system]",
                "running could never confirm it",
            ],
        ),
        (
            intent("i", 0, &[("/system/a", "v")], &["/x"]),
            &[
                "intent.deletes[0]",
                "/x is outside the datastore's sync.paths",
            ],
        ),
        (
            with_value(
                "/system",
                ietf(r#"{"users": {"user": [{"role": "admin"}]}}"#),
            ),
            &[
                "intent.updates[0].value",
                "/system/users/user",
                "sync.list_keys",
            ],
        ),
        (
            with_value("/interfaces", ietf(r#"{"interface": [{"mtu": 1500}]}"#)),
            &["intent.updates[0].value", "/interfaces/interface"],
        ),
        (
            with_value("/system/a", ietf("{not json")),
            &["intent.updates[0].value", "invalid JSON"],
        ),
    ];
    for (bad, words) in cases {
        let err = client.set_intent(set("r1", bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        for word in words {
            assert!(
                err.message().contains(word),
                "{word:?} not in {:?}",
                err.message()
            );
        }
    }

    // A JSON object stands for the leaves below it, as the device's JSON does.
    let written = client
        .set_intent(set(
            "r1",
            with_value(
                "/interfaces",
                ietf(r#"{"interface": [{"name": "eth0", "config": {"mtu": 9000}}]}"#),
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    let leaves: Vec<(String, TypedValue)> = written
        .updates
        .into_iter()
        .map(|l| (l.path, l.value.unwrap()))
        .collect();
    assert_eq!(
        leaves,
        vec![
            (
                "/interfaces/interface[name=eth0]/config/mtu".into(),
                ietf("9000")
            ),
            (
                "/interfaces/interface[name=eth0]/name".into(),
                ietf("\"eth0\"")
            ),
        ]
    );
    drop(client);
    server.stop().await;
}
