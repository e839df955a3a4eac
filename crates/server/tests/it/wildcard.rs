//! Wildcard subscription paths against netsync-sim: a replace (the dump after
//! a reconnect, or each ONCE/POLL/GET period) prunes exactly what the
//! subscription matches, whatever wildcards it uses and whether or not the
//! device echoes its origin or module prefixes; forms netsync cannot prune
//! are refused at CreateDatastore.

use std::collections::BTreeMap;

use netsync_core::Path;
use netsync_proto::gnmi;
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::v1 as pb;
use netsync_sim::SimConfig;
use netsync_testkit::client::{Client, running, status, until_running};
use netsync_testkit::datastore::DatastoreBuilder;
use netsync_testkit::sim::{Sim, generated};
use tonic::Code;

use crate::support::start;

/// Leaves of the generated device: enough for a few interfaces.
const LEAVES: usize = 600;

/// Whether `key` is a leaf of an interface's `config` container (not of a
/// subinterface's).
fn interface_config(key: &str) -> bool {
    let path = Path::parse(key).unwrap();
    let names: Vec<&str> = path.elems().iter().map(|e| e.name()).collect();
    names.len() > 3 && names[..3] == ["interfaces", "interface", "config"]
}

/// The `name` key of an interface leaf.
fn interface_of(key: &str) -> String {
    let path = Path::parse(key).unwrap();
    path.elems()[1].key("name").unwrap().to_owned()
}

/// The device's leaves that `keep` selects, as the device answers them (so
/// with the origin a qualifying device puts in front).
async fn expected(sim: &Sim, keep: impl Fn(&str) -> bool) -> BTreeMap<String, gnmi::TypedValue> {
    sim.leaves()
        .await
        .into_iter()
        .filter(|(k, _)| keep(k))
        .collect()
}

/// Waits until running of `name` is `want`; `what` names the wait.
async fn until_equal(
    client: &mut Client,
    name: &str,
    want: &BTreeMap<String, gnmi::TypedValue>,
    what: &str,
) -> u64 {
    until_running(client, name, what, |r| r == want).await
}

/// How an interface disappears from the device.
#[derive(Clone, Copy, Debug)]
enum Removal {
    /// While netsync is disconnected (the device restarts and stays offline),
    /// so no delete is ever streamed: only the replace can prune it.
    Offline,
    /// Between two periods of ONCE, POLL or GET, which never stream deletes.
    Online,
}

/// Removes interface `victim` from `sim`.
async fn remove_interface(sim: &Sim, victim: &str, how: Removal) {
    let interface = format!("/interfaces/interface[name={victim}]");
    match how {
        Removal::Offline => {
            let mut control = sim.control().await;
            control
                .restart(simpb::RestartRequest {
                    stay_offline: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            sim.set_leaves(Vec::new(), vec![interface]).await;
            control.resume(simpb::ResumeRequest {}).await.unwrap();
        }
        Removal::Online => sim.set_leaves(Vec::new(), vec![interface]).await,
    }
}

/// One case: datastore `paths` in `mode` on a sim built from `config`;
/// running must hold the device's leaves that `keep` selects; then an interface goes away as `how` says, and running must
/// lose its leaves and keep the others.
async fn prunes(
    config: SimConfig,
    mode: pb::SyncMode,
    paths: &[&str],
    keep: fn(&str) -> bool,
    how: Removal,
) {
    let sim = Sim::start(config).await;
    let (_dir, server, mut client) = start().await;
    let datastore = DatastoreBuilder::new("r1", sim.addr)
        .encoding(pb::Encoding::Proto)
        .mode(mode)
        .paths(paths)
        .interval_ms(100)
        .commit_interval_ms(20)
        .build();
    client
        .create_datastore(pb::CreateDatastoreRequest {
            datastore: Some(datastore),
        })
        .await
        .unwrap();
    let case = format!("{mode:?} {paths:?}");

    let before = expected(&sim, keep).await;
    let interfaces: Vec<String> = before
        .keys()
        .filter(|k| interface_config(k))
        .map(|k| interface_of(k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(interfaces.len() >= 3, "{case}: {interfaces:?}");
    until_equal(&mut client, "r1", &before, &format!("{case}: first sync")).await;

    // A name holding `/`: the key must be matched as a whole.
    let victim = &interfaces[1];
    assert!(victim.contains('/'), "{victim}");
    remove_interface(&sim, victim, how).await;
    let after = expected(&sim, keep).await;
    assert!(after.len() < before.len(), "{case}: nothing was removed");
    let revision = until_equal(&mut client, "r1", &after, &format!("{case}: pruned")).await;
    let leaves = running(&mut client, "r1", revision).await.leaves;
    assert!(
        !leaves
            .keys()
            .any(|k| k.contains(&format!("[name={victim}]"))),
        "{case}: leaves of {victim} left"
    );
    for other in [&interfaces[0], &interfaces[2]] {
        assert!(
            leaves
                .keys()
                .any(|k| k.contains(&format!("[name={other}]"))),
            "{case}: {other} lost"
        );
    }
    if let Removal::Offline = how {
        let st = status(&mut client, "r1").await;
        assert!(st.stats.unwrap().reconnects >= 1, "{case}: no reconnect");
    }
    drop(client);
    server.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_prunes_what_wildcards_match_after_a_reconnect() {
    for paths in [
        &["/interfaces/interface[name=*]/config"][..],
        &["/interfaces/interface/config"],
        &["/interfaces/*/config"],
    ] {
        prunes(
            generated(LEAVES),
            pb::SyncMode::OnChange,
            paths,
            interface_config,
            Removal::Offline,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ellipsis_prunes_at_any_depth() {
    // `/.../config` also names /system/config and subinterfaces' config.
    fn any_config(key: &str) -> bool {
        Path::parse(key)
            .unwrap()
            .elems()
            .iter()
            .any(|e| e.name() == "config")
    }
    prunes(
        generated(LEAVES),
        pb::SyncMode::OnChange,
        &["/.../config"],
        any_config,
        Removal::Offline,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_keep_their_leaves() {
    // State of one interface and the system container come from other paths;
    // the config pattern never prunes them, and they stay in sync.
    fn wanted(key: &str) -> bool {
        interface_config(key)
            || key.starts_with("/interfaces/interface[name=ethernet-1/1]/state/")
            || key.starts_with("/system/")
    }
    prunes(
        generated(LEAVES),
        pb::SyncMode::OnChange,
        &[
            "/interfaces/interface[name=*]/config",
            "/interfaces/interface[name=ethernet-1/1]/state",
            "/system",
        ],
        wanted,
        Removal::Offline,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_period_of_once_poll_and_get_prunes() {
    for mode in [pb::SyncMode::Once, pb::SyncMode::Poll, pb::SyncMode::Get] {
        for paths in [
            &["/interfaces/interface[name=*]/config"][..],
            &["/interfaces/interface/config"],
        ] {
            prunes(
                generated(LEAVES),
                mode,
                paths,
                interface_config,
                Removal::Online,
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_module_prefix_mismatches_still_prune() {
    // Asked with an origin or module prefix, answered without.
    for paths in [
        &["openconfig:/interfaces/interface[name=*]/config"][..],
        &["/openconfig-interfaces:interfaces/interface/config"],
    ] {
        prunes(
            generated(LEAVES),
            pb::SyncMode::OnChange,
            paths,
            interface_config,
            Removal::Offline,
        )
        .await;
    }
    // Asked without an origin, answered with one.
    let qualifying = SimConfig {
        response_origin: Some("openconfig".into()),
        ..generated(LEAVES)
    };
    for mode in [pb::SyncMode::OnChange, pb::SyncMode::Get] {
        prunes(
            qualifying.clone(),
            mode,
            &["/interfaces/interface[name=*]/config"],
            interface_config,
            if mode == pb::SyncMode::Get {
                Removal::Online
            } else {
                Removal::Offline
            },
        )
        .await;
    }
}

#[tokio::test]
async fn unsupported_forms_are_refused_naming_the_path() {
    let (_dir, server, mut client) = start().await;
    for (bad, problem) in [
        ("/interfaces/interface[name=eth*]", "partial wildcards"),
        ("/interfaces/int*/config", "partial wildcards"),
        ("/a/...[k=v]", "takes no keys"),
    ] {
        let datastore = DatastoreBuilder::new("r1", "127.0.0.1:9")
            .paths(&["/system", bad])
            .build();
        let status = client
            .create_datastore(pb::CreateDatastoreRequest {
                datastore: Some(datastore),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains("sync.paths[1]") && status.message().contains(problem),
            "{bad}: {}",
            status.message()
        );
    }
    drop(client);
    server.stop().await;
}
