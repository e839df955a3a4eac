//! Every Subscribe mode against an in-process netsync-sim: ONCE, POLL, STREAM
//! with ON_CHANGE, TARGET_DEFINED and SAMPLE, updates_only, prefixes, targets,
//! heartbeats, several subscriptions per request, many subscribers, encodings.

use std::collections::BTreeMap;

use netsync_testkit::gnmi::*;
use netsync_testkit::sim::{Sim, generated};

use netsync_proto::gnmi;
use netsync_proto::gnmi::SubscriptionMode as SubMode;
use netsync_proto::gnmi::subscription_list::Mode;
use netsync_proto::gnmi::typed_value::Value;
use netsync_proto::netsync::sim::v1 as pb;
use netsync_sim::SimConfig;
use tonic::Code;

const ETH0: &str = "/interfaces/interface[name=ethernet-1/1]";

fn batched(leaves: usize, batch: usize) -> SimConfig {
    SimConfig {
        notification_batch: batch,
        ..generated(leaves)
    }
}

#[tokio::test]
async fn once_dumps_syncs_and_ends() {
    let sim = Sim::start(batched(1000, 100)).await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(
        &mut client,
        list(Mode::Once, vec![subscription("/", SubMode::TargetDefined)]),
    )
    .await;
    let dump = sub.until_sync().await;
    // Batched: many updates per notification, never more than configured.
    assert_eq!(dump.len(), 10);
    assert!(dump.iter().all(|n| n.update.len() == 100));
    let mut state = BTreeMap::new();
    apply(&mut state, &dump);
    assert_eq!(state, get_all(&mut client).await);
    assert!(matches!(sub.next().await, Msg::End));
    sim.stop().await;
}

#[tokio::test]
async fn poll_dumps_for_each_poll() {
    let sim = Sim::start(generated(300)).await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(
        &mut client,
        list(Mode::Poll, vec![subscription(ETH0, SubMode::TargetDefined)]),
    )
    .await;
    let first = sub.until_sync().await;
    let n = count_updates(&first);
    assert!(n > 10);
    // A change between polls shows in the next one.
    client
        .set(gnmi::SetRequest {
            update: vec![update(
                &format!("{ETH0}/config/description"),
                string("polled"),
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    sub.poll().await;
    let second = sub.until_sync().await;
    assert_eq!(count_updates(&second), n);
    let mut state = BTreeMap::new();
    apply(&mut state, &second);
    assert_eq!(
        state[&format!("{ETH0}/config/description")],
        string("polled")
    );
    sub.poll().await;
    assert_eq!(count_updates(&sub.until_sync().await), n);
    // A half-close ends a POLL subscription.
    sub.half_close();
    assert!(matches!(sub.next().await, Msg::End));
    sim.stop().await;
}

#[tokio::test]
async fn stream_on_change_sends_dump_sync_then_changes_and_deletes() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(
        &mut client,
        list(Mode::Stream, vec![subscription(ETH0, SubMode::OnChange)]),
    )
    .await;
    let mut state = BTreeMap::new();
    apply(&mut state, &sub.until_sync().await);
    assert!(state.keys().all(|p| p.starts_with(ETH0)));
    let leaves = state.len();

    // A Set outside the subscription is not streamed; one inside is, and a
    // delete lists every removed leaf.
    let desc = format!("{ETH0}/config/description");
    client
        .set(gnmi::SetRequest {
            delete: vec![path(&format!("{ETH0}/state/counters"))],
            update: vec![
                update(&desc, string("changed")),
                update(
                    "/interfaces/interface[name=ethernet-1/2]/config/description",
                    string("x"),
                ),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let n = sub.notification().await;
    assert!(n.timestamp > 0);
    assert_eq!(n.update.len(), 1);
    assert_eq!(text(n.update[0].path.as_ref().unwrap()), desc);
    assert_eq!(n.update[0].val, Some(string("changed")));
    let deleted: Vec<String> = n.delete.iter().map(text).collect();
    assert_eq!(deleted.len(), 6, "{deleted:?}");
    assert!(
        deleted
            .iter()
            .all(|p| p.starts_with(&format!("{ETH0}/state/counters/")))
    );
    apply(&mut state, &[n]);
    assert_eq!(state.len(), leaves - 6);

    // A control-plane change is streamed too; an unchanged value is not.
    let mut control = sim.control().await;
    let changed = control
        .set_leaves(pb::SetLeavesRequest {
            updates: vec![
                pb::Leaf {
                    path: desc.clone(),
                    value: Some(string("changed")),
                },
                pb::Leaf {
                    path: format!("{ETH0}/config/mtu"),
                    value: Some(uint(1234)),
                },
            ],
            deletes: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .changed;
    assert_eq!(changed, 1);
    let n = sub.notification().await;
    assert_eq!(n.update.len(), 1);
    assert_eq!(n.update[0].val, Some(uint(1234)));
    sim.stop().await;
}

#[tokio::test]
async fn stream_survives_half_close_and_supports_updates_only_prefix_and_target() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let mut spec = list(
        Mode::Stream,
        vec![subscription("config", SubMode::OnChange)],
    );
    spec.prefix = Some(gnmi::Path {
        target: "r1".into(),
        ..path(ETH0)
    });
    spec.updates_only = true;
    let mut sub = Sub::open(&mut client, spec).await;
    // updates_only: sync_response first, no dump.
    assert!(sub.until_sync().await.is_empty());
    sub.half_close();
    let mut control = sim.control().await;
    control
        .await_subscribers(pb::AwaitSubscribersRequest {
            min_streams: 1,
            timeout: None,
        })
        .await
        .unwrap();
    client
        .set(gnmi::SetRequest {
            update: vec![update(&format!("{ETH0}/config/mtu"), uint(4000))],
            ..Default::default()
        })
        .await
        .unwrap();
    let n = sub.notification().await;
    assert_eq!(
        n.prefix.as_ref().unwrap().target,
        "r1",
        "the target is echoed"
    );
    assert_eq!(
        text(n.update[0].path.as_ref().unwrap()),
        format!("{ETH0}/config/mtu")
    );
    sim.stop().await;
}

#[tokio::test]
async fn several_subscriptions_in_one_request_dump_each_leaf_once() {
    let sim = Sim::start(generated(500)).await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(
        &mut client,
        list(
            Mode::Stream,
            vec![
                subscription(&format!("{ETH0}/config"), SubMode::OnChange),
                subscription(ETH0, SubMode::OnChange),
                subscription("/system/config", SubMode::TargetDefined),
            ],
        ),
    )
    .await;
    let dump = sub.until_sync().await;
    let mut state = BTreeMap::new();
    apply(&mut state, &dump);
    assert_eq!(count_updates(&dump), state.len(), "no leaf twice");
    assert!(state.contains_key("/system/config/hostname"));
    client
        .set(gnmi::SetRequest {
            update: vec![
                update("/system/config/hostname", string("renamed")),
                update(&format!("{ETH0}/config/mtu"), uint(1600)),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let n = sub.notification().await;
    assert_eq!(n.update.len(), 2, "each change once: {n:?}");
    sim.stop().await;
}

#[tokio::test]
async fn sample_with_suppress_redundant_and_heartbeat() {
    let sim = Sim::start(generated(300)).await;
    let mut client = sim.gnmi().await;
    let mtu = format!("{ETH0}/config/mtu");
    let sample = |suppress: bool, heartbeat_ms: u64| gnmi::Subscription {
        path: Some(path(&mtu)),
        mode: SubMode::Sample as i32,
        sample_interval: 10_000_000,
        suppress_redundant: suppress,
        heartbeat_interval: heartbeat_ms * 1_000_000,
    };
    // Without suppression every sample carries the value.
    let mut plain = Sub::open(&mut client, list(Mode::Stream, vec![sample(false, 0)])).await;
    assert_eq!(count_updates(&plain.until_sync().await), 1);
    for _ in 0..3 {
        let n = plain.notification().await;
        assert_eq!(n.update.len(), 1);
    }
    drop(plain);

    // With suppression, only changes (and deletes) are sampled.
    let mut suppressed = Sub::open(&mut client, list(Mode::Stream, vec![sample(true, 0)])).await;
    assert_eq!(count_updates(&suppressed.until_sync().await), 1);
    client
        .set(gnmi::SetRequest {
            update: vec![update(&mtu, uint(7777))],
            ..Default::default()
        })
        .await
        .unwrap();
    let n = suppressed.notification().await;
    assert_eq!(n.update[0].val, Some(uint(7777)));
    client
        .set(gnmi::SetRequest {
            delete: vec![path(&mtu)],
            ..Default::default()
        })
        .await
        .unwrap();
    let n = suppressed.notification().await;
    assert!(n.update.is_empty());
    assert_eq!(text(&n.delete[0]), mtu);
    drop(suppressed);

    // With suppression and a heartbeat, unchanged values come back anyway.
    client
        .set(gnmi::SetRequest {
            update: vec![update(&mtu, uint(1500))],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut heartbeat = Sub::open(&mut client, list(Mode::Stream, vec![sample(true, 30)])).await;
    assert_eq!(count_updates(&heartbeat.until_sync().await), 1);
    let n = heartbeat.notification().await;
    assert_eq!(n.update[0].val, Some(uint(1500)));
    sim.stop().await;
}

#[tokio::test]
async fn on_change_heartbeat_resends_values() {
    let sim = Sim::start(generated(300)).await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(
        &mut client,
        list(
            Mode::Stream,
            vec![gnmi::Subscription {
                heartbeat_interval: 20_000_000,
                ..subscription(&format!("{ETH0}/config"), SubMode::OnChange)
            }],
        ),
    )
    .await;
    let dump = count_updates(&sub.until_sync().await);
    for _ in 0..2 {
        assert_eq!(sub.notification().await.update.len(), dump);
    }
    sim.stop().await;
}

#[tokio::test]
async fn json_ietf_and_ascii_encodings_in_subscribe() {
    let sim = Sim::start(generated(300)).await;
    let mut client = sim.gnmi().await;
    for (encoding, check) in [
        (gnmi::Encoding::JsonIetf, "json_ietf"),
        (gnmi::Encoding::Json, "json"),
        (gnmi::Encoding::Ascii, "ascii"),
    ] {
        let mut spec = list(
            Mode::Once,
            vec![subscription(
                &format!("{ETH0}/config/mtu"),
                SubMode::TargetDefined,
            )],
        );
        spec.encoding = encoding as i32;
        let mut sub = Sub::open(&mut client, spec).await;
        let dump = sub.until_sync().await;
        let value = dump[0].update[0].val.clone().unwrap().value.unwrap();
        match (check, value) {
            ("json_ietf", Value::JsonIetfVal(v)) => assert!(v.starts_with(b"\"")),
            ("json", Value::JsonVal(v)) => assert!(v[0].is_ascii_digit()),
            ("ascii", Value::AsciiVal(v)) => assert!(v.parse::<u64>().is_ok()),
            (check, value) => panic!("{check}: {value:?}"),
        }
    }
    let mut spec = list(Mode::Once, vec![subscription("/", SubMode::TargetDefined)]);
    spec.encoding = gnmi::Encoding::Bytes as i32;
    let status = Sub::try_open(&mut client, spec).await.err().unwrap();
    assert_eq!(status.code(), Code::Unimplemented);
    sim.stop().await;
}

/// What netsync's JSON_IETF sync and its Sets rely on, as real devices do
/// it: one update per leaf, each `json_ietf_val` one RFC 7951 scalar (64-bit
/// integers and decimals as JSON strings, booleans and strings as JSON
/// values, leaf-lists as arrays), on the same paths as PROTO; and a Set of
/// RFC 7951 JSON keeps each leaf's type.
#[tokio::test]
async fn json_ietf_streams_one_rfc7951_scalar_per_leaf() {
    let sim = Sim::start(generated(300)).await;
    let mut client = sim.gnmi().await;
    let dump = |encoding: gnmi::Encoding| {
        let mut spec = list(Mode::Once, vec![subscription(ETH0, SubMode::TargetDefined)]);
        spec.encoding = encoding as i32;
        spec
    };
    let mut sub = Sub::open(&mut client, dump(gnmi::Encoding::Proto)).await;
    let mut proto = BTreeMap::new();
    apply(&mut proto, &sub.until_sync().await);
    let mut sub = Sub::open(&mut client, dump(gnmi::Encoding::JsonIetf)).await;
    let mut ietf = BTreeMap::new();
    apply(&mut ietf, &sub.until_sync().await);
    assert_eq!(
        ietf.keys().collect::<Vec<_>>(),
        proto.keys().collect::<Vec<_>>()
    );
    for (path, value) in &ietf {
        let Some(Value::JsonIetfVal(text)) = &value.value else {
            panic!("{path}: {value:?}");
        };
        let json: serde_json::Value = serde_json::from_slice(text).unwrap();
        let expected = match &proto[path].value {
            Some(Value::UintVal(u)) => serde_json::json!(u.to_string()),
            Some(Value::IntVal(i)) => serde_json::json!(i.to_string()),
            Some(Value::StringVal(s)) => serde_json::json!(s),
            Some(Value::BoolVal(b)) => serde_json::json!(b),
            other => panic!("{path}: an unexpected kind {other:?}"),
        };
        assert_eq!(json, expected, "{path}");
    }
    // A Set in RFC 7951 JSON keeps each leaf's type.
    let mtu = format!("{ETH0}/config/mtu");
    let enabled = format!("{ETH0}/config/enabled");
    let ietf_val = |text: &str| gnmi::TypedValue {
        value: Some(Value::JsonIetfVal(text.into())),
    };
    client
        .set(gnmi::SetRequest {
            update: vec![
                update(&mtu, ietf_val("\"9216\"")),
                update(&enabled, ietf_val("false")),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let leaves = sim.leaves().await;
    assert_eq!(leaves[&mtu].value, Some(Value::UintVal(9216)));
    assert_eq!(leaves[&enabled].value, Some(Value::BoolVal(false)));
    sim.stop().await;
}

#[tokio::test]
async fn invalid_subscriptions_are_refused() {
    let sim = Sim::start(generated(100)).await;
    let mut client = sim.gnmi().await;
    let mut bad = list(Mode::Stream, vec![subscription("/", SubMode::Sample)]);
    bad.subscription[0].sample_interval = 10;
    let status = Sub::try_open(&mut client, bad).await.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("subscription[0].sample_interval"),
        "{status}"
    );
    let mut bad = list(Mode::Stream, vec![subscription("/", SubMode::OnChange)]);
    bad.mode = 9;
    let status = Sub::try_open(&mut client, bad).await.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A Poll on a STREAM subscription ends it with INVALID_ARGUMENT.
    let mut sub = Sub::open(
        &mut client,
        list(
            Mode::Stream,
            vec![subscription("/system", SubMode::OnChange)],
        ),
    )
    .await;
    sub.until_sync().await;
    sub.poll().await;
    assert_eq!(sub.error().await.code(), Code::InvalidArgument);
    sim.stop().await;
}

#[tokio::test]
async fn many_concurrent_subscribers_all_see_every_change() {
    let sim = Sim::start(generated(2000)).await;
    let mut subs = Vec::new();
    for _ in 0..20 {
        let mut client = sim.gnmi().await;
        let mut sub = Sub::open(
            &mut client,
            list(Mode::Stream, vec![subscription("/", SubMode::OnChange)]),
        )
        .await;
        let mut state = BTreeMap::new();
        apply(&mut state, &sub.until_sync().await);
        assert_eq!(state.len(), 2000);
        subs.push((sub, state));
    }
    let mut control = sim.control().await;
    let burst = control
        .burst(pb::BurstRequest {
            count: 3000,
            delete_share: 0.2,
            seed: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(burst.changes, 3000);
    let expected = get_all(&mut sim.gnmi().await).await;
    for (sub, state) in &mut subs {
        let mut seen = 0;
        let mut deletes = 0;
        while seen < 3000 {
            let n = sub.notification().await;
            seen += n.update.len() + n.delete.len();
            deletes += n.delete.len();
            apply(state, &[n]);
        }
        assert_eq!(seen, 3000);
        assert!(deletes > 0);
        // Dump plus changes rebuild the device exactly.
        assert_eq!(*state, expected);
    }
    sim.stop().await;
}
