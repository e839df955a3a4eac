//! Capabilities, Get and Set against an in-process netsync-sim.

use netsync_testkit::gnmi::*;
use netsync_testkit::sim::{Sim, generated};

use netsync_proto::gnmi;
use netsync_proto::gnmi::typed_value::Value;
use netsync_proto::gnmi::update_result::Operation;
use netsync_sim::SimConfig;
use serde_json::json;
use tonic::Code;

const ETH0: &str = "/interfaces/interface[name=ethernet-1/1]";

#[tokio::test]
async fn capabilities_report_encodings_and_version() {
    let sim = Sim::start(generated(100)).await;
    let caps = sim
        .gnmi()
        .await
        .capabilities(gnmi::CapabilityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.g_nmi_version, "0.10.0");
    for encoding in [
        gnmi::Encoding::JsonIetf,
        gnmi::Encoding::Json,
        gnmi::Encoding::Proto,
        gnmi::Encoding::Ascii,
    ] {
        assert!(
            caps.supported_encodings.contains(&(encoding as i32)),
            "{encoding:?}"
        );
    }
    assert!(!caps.supported_models.is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn get_proto_returns_one_update_per_leaf() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let all = get_all(&mut client).await;
    assert_eq!(all.len(), 500);
    assert_eq!(sim.counters().await.leaves, 500);

    // With a prefix (and a target, echoed) and a path relative to it.
    let response = client
        .get(gnmi::GetRequest {
            prefix: Some(gnmi::Path {
                target: "dev1".into(),
                ..path(ETH0)
            }),
            path: vec![path("config")],
            encoding: gnmi::Encoding::Proto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let n = &response.notification[0];
    assert_eq!(n.prefix.as_ref().unwrap().target, "dev1");
    let paths: Vec<String> = n
        .update
        .iter()
        .map(|u| text(u.path.as_ref().unwrap()))
        .collect();
    assert!(paths.contains(&format!("{ETH0}/config/mtu")), "{paths:?}");
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with(&format!("{ETH0}/config/")))
    );
    assert!(n.timestamp > 0);

    // Wildcards.
    let response = client
        .get(gnmi::GetRequest {
            path: vec![path("/interfaces/interface[name=*]/config/mtu")],
            encoding: gnmi::Encoding::Proto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mtus = &response.notification[0].update;
    assert!(mtus.len() > 5);
    assert!(
        mtus.iter()
            .all(|u| matches!(u.val.as_ref().unwrap().value, Some(Value::UintVal(_))))
    );

    // DataType: CONFIG has no state leaves, STATE only state leaves.
    for (data_type, want_state) in [
        (gnmi::get_request::DataType::Config, false),
        (gnmi::get_request::DataType::State, true),
    ] {
        let response = client
            .get(gnmi::GetRequest {
                path: vec![path(ETH0)],
                r#type: data_type as i32,
                encoding: gnmi::Encoding::Proto as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let updates = &response.notification[0].update;
        assert!(!updates.is_empty());
        for u in updates {
            let p = text(u.path.as_ref().unwrap());
            assert_eq!(p.contains("/state/"), want_state, "{data_type:?}: {p}");
        }
    }
    sim.stop().await;
}

#[tokio::test]
async fn get_json_ietf_renders_the_subtree_with_lists_as_arrays() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let get = |p: &str, encoding: gnmi::Encoding| gnmi::GetRequest {
        path: vec![path(p)],
        encoding: encoding as i32,
        ..Default::default()
    };
    let response = client
        .get(get(ETH0, gnmi::Encoding::JsonIetf))
        .await
        .unwrap()
        .into_inner();
    let update = &response.notification[0].update;
    assert_eq!(update.len(), 1, "one document per requested path");
    assert_eq!(text(update[0].path.as_ref().unwrap()), ETH0);
    let Some(Value::JsonIetfVal(doc)) = &update[0].val.as_ref().unwrap().value else {
        panic!("not JSON_IETF: {update:?}");
    };
    let doc: serde_json::Value = serde_json::from_slice(doc).unwrap();
    assert_eq!(doc["name"], json!("ethernet-1/1"));
    assert_eq!(doc["config"]["name"], json!("ethernet-1/1"));
    // uint64 per RFC 7951: a string.
    assert!(doc["config"]["mtu"].is_string(), "{doc}");
    let subs = doc["subinterfaces"]["subinterface"]
        .as_array()
        .expect("a list is an array");
    assert!(!subs.is_empty());
    assert_eq!(subs[0]["index"], json!("0"));

    // The whole list, and plain JSON writes numbers.
    let response = client
        .get(get("/interfaces/interface", gnmi::Encoding::Json))
        .await
        .unwrap()
        .into_inner();
    let Some(Value::JsonVal(doc)) = &response.notification[0].update[0]
        .val
        .as_ref()
        .unwrap()
        .value
    else {
        panic!("not JSON");
    };
    let doc: serde_json::Value = serde_json::from_slice(doc).unwrap();
    let interfaces = doc.as_array().expect("a list node is an array");
    assert!(interfaces.len() > 3);
    assert!(interfaces[0]["config"]["mtu"].is_number());

    // A leaf is its scalar.
    let response = client
        .get(get(
            &format!("{ETH0}/config/name"),
            gnmi::Encoding::JsonIetf,
        ))
        .await
        .unwrap()
        .into_inner();
    let val = response.notification[0].update[0].val.clone().unwrap();
    assert_eq!(
        val.value,
        Some(Value::JsonIetfVal(b"\"ethernet-1/1\"".to_vec()))
    );
    sim.stop().await;
}

#[tokio::test]
async fn get_errors() {
    let sim = Sim::start(generated(100)).await;
    let mut client = sim.gnmi().await;
    let status = client
        .get(gnmi::GetRequest {
            path: vec![path("/no/such/thing")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("/no/such/thing"), "{status}");
    let status = client
        .get(gnmi::GetRequest {
            path: vec![path("/")],
            encoding: gnmi::Encoding::Bytes as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = client
        .get(gnmi::GetRequest {
            path: vec![gnmi::Path {
                elem: vec![gnmi::PathElem {
                    name: String::new(),
                    key: Default::default(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("path[0]"), "{status}");
    // A wildcard that matches nothing is empty, not an error.
    let response = client
        .get(gnmi::GetRequest {
            path: vec![path("/interfaces/interface[name=*]/no-such-leaf")],
            encoding: gnmi::Encoding::Proto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.notification[0].update.is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn set_applies_delete_replace_update_in_order() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let before = get_all(&mut client).await;
    let response = client
        .set(gnmi::SetRequest {
            prefix: Some(path(ETH0)),
            // Delete the whole config, then replace it with two leaves, then
            // update one of them: the update wins.
            delete: vec![path("config")],
            replace: vec![gnmi::Update {
                path: Some(path("config")),
                val: Some(gnmi::TypedValue {
                    value: Some(Value::JsonIetfVal(
                        br#"{"name": "ethernet-1/1", "mtu": "9100"}"#.to_vec(),
                    )),
                }),
                ..Default::default()
            }],
            update: vec![
                update("config/mtu", uint(9200)),
                update("config/description", string("set by test")),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ops: Vec<i32> = response.response.iter().map(|r| r.op).collect();
    assert_eq!(
        ops,
        [
            Operation::Delete as i32,
            Operation::Replace as i32,
            Operation::Update as i32,
            Operation::Update as i32
        ]
    );
    assert_eq!(text(response.response[0].path.as_ref().unwrap()), "/config");
    assert!(response.timestamp > 0);

    let after = get_all(&mut client).await;
    let config = |state: &std::collections::BTreeMap<String, gnmi::TypedValue>| {
        state
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("{ETH0}/config/")))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        config(&after),
        [
            (format!("{ETH0}/config/description"), string("set by test")),
            // The existing leaf's type (uint) was kept for the JSON value.
            (format!("{ETH0}/config/mtu"), uint(9200)),
            (format!("{ETH0}/config/name"), string("ethernet-1/1")),
        ]
    );
    // Nothing else changed.
    let others = |state: &std::collections::BTreeMap<String, gnmi::TypedValue>| {
        state
            .iter()
            .filter(|(p, _)| !p.starts_with(&format!("{ETH0}/config/")))
            .count()
    };
    assert_eq!(others(&before), others(&after));
    sim.stop().await;
}

#[tokio::test]
async fn set_is_all_or_nothing_and_reports_the_right_codes() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let before = get_all(&mut client).await;
    let mtu = format!("{ETH0}/config/mtu");
    let cases: Vec<(gnmi::SetRequest, Code, &str)> = vec![
        (
            // A valid delete and update, then a type mismatch.
            gnmi::SetRequest {
                delete: vec![path(&format!("{ETH0}/state"))],
                update: vec![
                    update(&format!("{ETH0}/config/description"), string("changed")),
                    update(&mtu, string("big")),
                ],
                ..Default::default()
            },
            Code::InvalidArgument,
            "update[1]",
        ),
        (
            gnmi::SetRequest {
                update: vec![update("/interfaces/interface[name=*]/config/mtu", uint(1))],
                ..Default::default()
            },
            Code::InvalidArgument,
            "wildcards",
        ),
        (
            gnmi::SetRequest {
                update: vec![update(&format!("{ETH0}/name"), string("other"))],
                ..Default::default()
            },
            Code::InvalidArgument,
            "key",
        ),
        (
            gnmi::SetRequest {
                update: vec![update(&format!("{mtu}/below"), uint(1))],
                ..Default::default()
            },
            Code::InvalidArgument,
            "is a leaf",
        ),
        (
            gnmi::SetRequest {
                replace: vec![update(&format!("{ETH0}/config"), uint(1))],
                update: vec![update(ETH0, uint(1))],
                ..Default::default()
            },
            Code::InvalidArgument,
            "container",
        ),
        (
            gnmi::SetRequest {
                update: vec![gnmi::Update {
                    path: Some(path(&mtu)),
                    val: None,
                    ..Default::default()
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "update[0].val",
        ),
        (
            gnmi::SetRequest {
                update: vec![update(
                    &mtu,
                    gnmi::TypedValue {
                        value: Some(Value::JsonIetfVal(b"{not json".to_vec())),
                    },
                )],
                ..Default::default()
            },
            Code::InvalidArgument,
            "invalid JSON",
        ),
        (
            gnmi::SetRequest {
                update: vec![update(
                    &mtu,
                    gnmi::TypedValue {
                        value: Some(Value::ProtoBytes(vec![1])),
                    },
                )],
                ..Default::default()
            },
            Code::Unimplemented,
            "proto_bytes",
        ),
        (
            gnmi::SetRequest {
                union_replace: vec![update(&mtu, uint(1))],
                ..Default::default()
            },
            Code::Unimplemented,
            "union_replace",
        ),
    ];
    for (request, code, needle) in cases {
        let status = client.set(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status}");
        assert!(status.message().contains(needle), "{needle}: {status}");
    }
    // Nothing was applied.
    assert_eq!(get_all(&mut client).await, before);
    let counters = sim.counters().await;
    assert_eq!(counters.sets_received, 9);
    assert_eq!(counters.sets_failed, 9);
    assert_eq!(counters.changes_committed, 0);
    sim.stop().await;
}

#[tokio::test]
async fn set_creates_new_leaves_and_deletes_subtrees() {
    let sim = Sim::start(generated(300)).await;
    let mut client = sim.gnmi().await;
    client
        .set(gnmi::SetRequest {
            update: vec![
                update("/new/leaf", string("x")),
                update("oc:/system/x", uint(1)),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let all = get_all(&mut client).await;
    assert_eq!(all["/new/leaf"], string("x"));
    let oc = client
        .get(gnmi::GetRequest {
            path: vec![path("oc:/")],
            encoding: gnmi::Encoding::Proto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        oc.notification[0].update.len(),
        1,
        "origins are separate trees"
    );
    // Deleting a missing path is fine; deleting a subtree removes its leaves.
    client
        .set(gnmi::SetRequest {
            delete: vec![path("/nothing/here"), path(ETH0)],
            ..Default::default()
        })
        .await
        .unwrap();
    let all = get_all(&mut client).await;
    assert!(!all.keys().any(|p| p.starts_with(ETH0)));
    assert!(all.contains_key("/new/leaf"));
    sim.stop().await;
}

#[tokio::test]
async fn a_device_of_one_encoding_refuses_set_values_in_another() {
    let sim = Sim::start(SimConfig {
        set_encoding: Some(gnmi::Encoding::JsonIetf),
        ..generated(300)
    })
    .await;
    let mut client = sim.gnmi().await;
    let mtu = format!("{ETH0}/config/mtu");
    let status = client
        .set(gnmi::SetRequest {
            update: vec![update(&mtu, uint(9216))],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("update[0].val") && status.message().contains("JSON_IETF"),
        "{status}"
    );
    client
        .set(gnmi::SetRequest {
            update: vec![update(
                &mtu,
                gnmi::TypedValue {
                    value: Some(Value::JsonIetfVal(b"\"9216\"".to_vec())),
                },
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sim.leaves().await[&mtu].value, Some(Value::UintVal(9216)));
    sim.stop().await;
}

#[tokio::test]
async fn origin_openconfig_and_module_prefixes_read_as_the_plain_tree() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let get = |p: &str| gnmi::GetRequest {
        path: vec![path(p)],
        encoding: gnmi::Encoding::Proto as i32,
        ..Default::default()
    };
    let plain = client
        .get(get("/interfaces/interface[name=*]/config"))
        .await
        .unwrap()
        .into_inner();
    let plain: Vec<String> = plain.notification[0]
        .update
        .iter()
        .map(|u| text(u.path.as_ref().unwrap()))
        .collect();
    assert!(plain.len() > 5);
    for qualified in [
        "openconfig:/interfaces/interface[name=*]/config",
        "/openconfig-interfaces:interfaces/interface[name=*]/config",
    ] {
        let response = client.get(get(qualified)).await.unwrap().into_inner();
        let paths: Vec<String> = response.notification[0]
            .update
            .iter()
            .map(|u| text(u.path.as_ref().unwrap()))
            .collect();
        // Answered with the tree's own paths: no origin, no module prefix.
        assert_eq!(paths, plain, "{qualified}");
    }
    // Another origin is another (here empty) tree.
    let other = client.get(get("cli:/interfaces")).await.unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    sim.stop().await;
}

#[tokio::test]
async fn a_response_origin_qualifies_every_answer() {
    let sim = Sim::start(SimConfig {
        response_origin: Some("openconfig".into()),
        ..generated(200)
    })
    .await;
    let mut client = sim.gnmi().await;
    let response = client
        .get(gnmi::GetRequest {
            path: vec![path("/system")],
            encoding: gnmi::Encoding::Proto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let n = &response.notification[0];
    assert_eq!(n.prefix.as_ref().unwrap().origin, "openconfig");
    assert!(!n.update.is_empty());
    let mut sub = Sub::open(
        &mut client,
        list(
            gnmi::subscription_list::Mode::Once,
            vec![subscription("/system", gnmi::SubscriptionMode::OnChange)],
        ),
    )
    .await;
    let dump = sub.until_sync().await;
    let mut state = std::collections::BTreeMap::new();
    apply(&mut state, &dump);
    assert!(!state.is_empty());
    assert!(
        state.keys().all(|k| k.starts_with("openconfig:/system/")),
        "{:?}",
        state.keys().next()
    );
    sim.stop().await;
}
