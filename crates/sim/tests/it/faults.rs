//! Every fault knob, switched on and off at run time through SimControl, plus
//! churn, bursts, restarts, slow subscribers and control-plane validation.

use std::collections::BTreeMap;
use std::time::Duration;

use netsync_proto::gnmi;
use netsync_proto::gnmi::SubscriptionMode as SubMode;
use netsync_proto::gnmi::subscription_list::Mode;
use netsync_proto::netsync::sim::v1 as pb;
use netsync_sim::SimConfig;
use netsync_testkit::gnmi::*;
use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::within;
use tonic::Code;

const ETH0: &str = "/interfaces/interface[name=ethernet-1/1]";

fn faults(f: pb::Faults) -> pb::SetFaultsRequest {
    pb::SetFaultsRequest { faults: Some(f) }
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn set_desc(value: &str) -> gnmi::SetRequest {
    gnmi::SetRequest {
        update: vec![update(&format!("{ETH0}/config/description"), string(value))],
        ..Default::default()
    }
}

fn as_user(user: &'static str, request: gnmi::SetRequest) -> tonic::Request<gnmi::SetRequest> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("username", user.parse().unwrap());
    request
}

fn stream_all() -> gnmi::SubscriptionList {
    list(Mode::Stream, vec![subscription("/", SubMode::OnChange)])
}

#[tokio::test]
async fn set_delay_for_one_user_on_and_off() {
    let sim = Sim::start(generated(100)).await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    let on = control
        .set_faults(faults(pb::Faults {
            set_delay: secs(3600),
            set_delay_username: "slow".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on.faults.unwrap().set_delay, secs(3600));
    // The delayed user's Set does not complete; another user's does.
    let mut held = as_user("slow", set_desc("held"));
    held.set_timeout(Duration::from_millis(300));
    let status = client.set(held).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status}"
    );
    within(client.set(as_user("fast", set_desc("fast"))))
        .await
        .unwrap();
    // Off again: the same user goes through.
    control
        .clear_faults(pb::ClearFaultsRequest {})
        .await
        .unwrap();
    within(client.set(as_user("slow", set_desc("now"))))
        .await
        .unwrap();
    sim.stop().await;
}

#[tokio::test]
async fn set_failure_with_code_and_count() {
    let sim = Sim::start(generated(100)).await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    let before = get_all(&mut client).await;
    control
        .set_faults(faults(pb::Faults {
            set_failure: Some(pb::SetFailure {
                code: Code::ResourceExhausted as i32,
                message: "device busy".into(),
                count: 2,
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    for left in [1, 0] {
        let status = client.set(set_desc("x")).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "device busy");
        let faults = control
            .get_faults(pb::GetFaultsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            faults.faults.unwrap().set_failure.map(|f| f.count),
            (left > 0).then_some(left)
        );
    }
    assert_eq!(
        get_all(&mut client).await,
        before,
        "failed Sets change nothing"
    );
    client.set(set_desc("x")).await.unwrap();
    // Until cleared.
    control
        .set_faults(faults(pb::Faults {
            set_failure: Some(pb::SetFailure {
                code: Code::Aborted as i32,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            client.set(set_desc("y")).await.unwrap_err().code(),
            Code::Aborted
        );
    }
    control
        .clear_faults(pb::ClearFaultsRequest {})
        .await
        .unwrap();
    client.set(set_desc("y")).await.unwrap();
    let counters = sim.counters().await;
    assert_eq!((counters.sets_received, counters.sets_failed), (7, 5));
    // Validation names the field.
    let status = control
        .set_faults(faults(pb::Faults {
            set_failure: Some(pb::SetFailure {
                code: 42,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("faults.set_failure.code"),
        "{status}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn subscribe_stall_holds_messages_until_cleared() {
    let sim = Sim::start(generated(100)).await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    control
        .set_faults(faults(pb::Faults {
            subscribe_stall: secs(3600),
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut sub = Sub::open(&mut client, stream_all()).await;
    client.set(set_desc("during stall")).await.unwrap();
    // Nothing arrives while stalled (the stall is an hour: no race here).
    let nothing = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(nothing.is_err(), "a message arrived during the stall");
    assert_eq!(sim.counters().await.notifications_sent, 0);
    control
        .clear_faults(pb::ClearFaultsRequest {})
        .await
        .unwrap();
    // Then everything, in order, nothing lost.
    assert_eq!(count_updates(&sub.until_sync().await), 100);
    let n = sub.notification().await;
    assert_eq!(n.update[0].val, Some(string("during stall")));
    sim.stop().await;
}

#[tokio::test]
async fn disconnect_now_and_after_n_messages() {
    let sim = Sim::start(generated(100)).await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    let mut a = Sub::open(&mut client, stream_all()).await;
    let mut b = Sub::open(&mut client, stream_all()).await;
    a.until_sync().await;
    b.until_sync().await;
    let response = control
        .disconnect(pb::DisconnectRequest { after_messages: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.streams, 2);
    for sub in [&mut a, &mut b] {
        assert_eq!(sub.error().await.code(), Code::Unavailable);
    }
    // After N: the order applies to open streams only, after N more messages.
    let mut c = Sub::open(&mut client, stream_all()).await;
    c.until_sync().await;
    control
        .disconnect(pb::DisconnectRequest { after_messages: 2 })
        .await
        .unwrap();
    let mut late = Sub::open(&mut client, stream_all()).await;
    late.until_sync().await;
    for i in 0..3 {
        client.set(set_desc(&format!("change {i}"))).await.unwrap();
    }
    assert_eq!(
        c.notification().await.update[0].val,
        Some(string("change 0"))
    );
    assert_eq!(
        c.notification().await.update[0].val,
        Some(string("change 1"))
    );
    assert_eq!(c.error().await.code(), Code::Unavailable);
    for i in 0..3 {
        let n = late.notification().await;
        assert_eq!(n.update[0].val, Some(string(format!("change {i}"))));
    }
    assert_eq!(sim.counters().await.streams_disconnected, 3);
    sim.stop().await;
}

#[tokio::test]
async fn disconnect_after_messages_fault() {
    let sim = Sim::start(SimConfig {
        notification_batch: 10,
        ..generated(100)
    })
    .await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    control
        .set_faults(faults(pb::Faults {
            disconnect_after_messages: 3,
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut sub = Sub::open(&mut client, stream_all()).await;
    for _ in 0..3 {
        assert_eq!(sub.notification().await.update.len(), 10);
    }
    assert_eq!(sub.error().await.code(), Code::Unavailable);
    control
        .clear_faults(pb::ClearFaultsRequest {})
        .await
        .unwrap();
    let mut sub = Sub::open(&mut client, stream_all()).await;
    assert_eq!(count_updates(&sub.until_sync().await), 100);
    sim.stop().await;
}

#[tokio::test]
async fn drop_in_the_middle_of_the_initial_dump() {
    let sim = Sim::start(SimConfig {
        notification_batch: 10,
        ..generated(100)
    })
    .await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    control
        .set_faults(faults(pb::Faults {
            drop_dump_after_updates: 25,
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut sub = Sub::open(&mut client, stream_all()).await;
    let mut updates = 0;
    let status = loop {
        match sub.next().await {
            Msg::Notification(n) => updates += n.update.len(),
            Msg::Error(status) => break status,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(updates, 25);
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("initial dump"), "{status}");
    control
        .clear_faults(pb::ClearFaultsRequest {})
        .await
        .unwrap();
    let mut sub = Sub::open(&mut client, stream_all()).await;
    assert_eq!(count_updates(&sub.until_sync().await), 100);
    sim.stop().await;
}

#[tokio::test]
async fn restart_with_changed_state() {
    let sim = Sim::start(generated(500)).await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    let before = get_all(&mut client).await;
    let mut sub = Sub::open(&mut client, stream_all()).await;
    sub.until_sync().await;
    let outcome = control
        .restart(pb::RestartRequest {
            remove: 10,
            change: 20,
            add: 7,
            seed: 3,
            stay_offline: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (outcome.removed, outcome.changed, outcome.added),
        (10, 20, 7)
    );
    assert_eq!(outcome.leaves, 497);
    // Streams were cut; while offline every gNMI call is refused.
    assert_eq!(sub.error().await.code(), Code::Unavailable);
    let status = Sub::try_open(&mut client, stream_all())
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    let status = client.get(gnmi::GetRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        client.set(set_desc("x")).await.unwrap_err().code(),
        Code::Unavailable
    );
    control.resume(pb::ResumeRequest {}).await.unwrap();

    let mut sub = Sub::open(&mut client, stream_all()).await;
    let mut after = BTreeMap::new();
    apply(&mut after, &sub.until_sync().await);
    assert_eq!(after, get_all(&mut client).await);
    let removed = before.keys().filter(|p| !after.contains_key(*p)).count();
    let added = after.keys().filter(|p| !before.contains_key(*p)).count();
    let changed = before
        .iter()
        .filter(|(p, v)| after.get(*p).is_some_and(|a| a != *v))
        .count();
    assert_eq!((removed, added), (10, 7));
    assert!((1..=20).contains(&changed), "{changed}");
    assert_eq!(sim.counters().await.restarts, 1);

    // Without stay_offline the device is back when Restart returns.
    control
        .restart(pb::RestartRequest {
            remove: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(get_all(&mut client).await.len(), 496);
    sim.stop().await;
}

#[tokio::test]
async fn churn_streams_changes_until_stopped() {
    let sim = Sim::start(generated(1000)).await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(&mut client, stream_all()).await;
    let mut state = BTreeMap::new();
    apply(&mut state, &sub.until_sync().await);
    control
        .start_churn(pb::StartChurnRequest {
            rate: 2000.0,
            delete_share: 0.3,
            seed: 9,
        })
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 200 {
        let n = sub.notification().await;
        seen += n.update.len() + n.delete.len();
        apply(&mut state, &[n]);
    }
    let made = control
        .stop_churn(pb::StopChurnRequest {})
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert!(made >= 200);
    // Drain what churn made before it stopped; then the copy equals the device.
    while (seen as u64) < made {
        let n = sub.notification().await;
        seen += n.update.len() + n.delete.len();
        apply(&mut state, &[n]);
    }
    assert_eq!(seen as u64, made);
    assert_eq!(state, get_all(&mut client).await);
    assert_eq!(sim.counters().await.churn_changes, made);
    // Validation.
    let status = control
        .start_churn(pb::StartChurnRequest {
            rate: 10.0,
            delete_share: 1.5,
            seed: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("delete_share"), "{status}");
    let status = control
        .burst(pb::BurstRequest::default())
        .await
        .unwrap_err();
    assert!(status.message().contains("count"), "{status}");
    sim.stop().await;
}

#[tokio::test]
async fn churn_from_config_runs_from_the_start() {
    let sim = Sim::start(SimConfig {
        churn: Some(netsync_sim::ChurnSpec {
            rate: 500.0,
            delete_share: 0.0,
            seed: 1,
        }),
        ..generated(200)
    })
    .await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(&mut client, stream_all()).await;
    sub.until_sync().await;
    let n = sub.notification().await;
    assert!(!n.update.is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn a_subscriber_too_slow_is_cut_with_resource_exhausted() {
    let sim = Sim::start(SimConfig {
        notification_batch: 1,
        queue_batches: 4,
        ..generated(2000)
    })
    .await;
    let mut control = sim.control().await;
    let mut client = sim.gnmi().await;
    let mut sub = Sub::open(&mut client, stream_all()).await;
    sub.until_sync().await;
    // The client reads nothing while the device makes far more changes than
    // the transport and the queue can hold.
    control
        .burst(pb::BurstRequest {
            count: 200_000,
            delete_share: 0.0,
            seed: 1,
        })
        .await
        .unwrap();
    let status = sub.error().await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("too slow"), "{status}");
    sim.stop().await;
}

#[tokio::test]
async fn set_leaves_validates_its_fields() {
    let sim = Sim::start(generated(100)).await;
    let mut control = sim.control().await;
    let cases = [
        (
            pb::SetLeavesRequest {
                updates: vec![pb::Leaf {
                    path: "/a[".into(),
                    value: Some(uint(1)),
                }],
                deletes: vec![],
            },
            "updates[0].path",
        ),
        (
            pb::SetLeavesRequest {
                updates: vec![pb::Leaf {
                    path: "/a".into(),
                    value: None,
                }],
                deletes: vec![],
            },
            "updates[0].value",
        ),
        (
            pb::SetLeavesRequest {
                updates: vec![],
                deletes: vec!["/ok".into(), "bad]".into()],
            },
            "deletes[1]",
        ),
    ];
    for (request, field) in cases {
        let status = control.set_leaves(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{field}: {status}");
    }
    sim.stop().await;
}
