//! Property test of the whole engine against a model device: random sequences
//! of updates, leaf and subtree deletes, disconnects, reconnects with state
//! changed while offline, stalled commits and a stalled watcher. After
//! quiescence running equals the device, revisions are consecutive, and
//! replaying the commit events from revision 1 rebuilds running exactly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use netsync_core::Path;
use netsync_core::datastore::SyncMode;
use netsync_core::device::TargetError;
use netsync_core::device::fake::{Connection, FakeDevice, FakeTarget};
use netsync_core::running::Subtree;
use netsync_core::sync::{Committed, EventKind, Persist, Snapshot, SyncHandle, SyncLimits};
use netsync_proto::gnmi::{self, typed_value};
use netsync_testkit::DEADLINE;
use proptest::prelude::*;
use tokio::sync::watch;

use crate::support::{self, gpath, sync_response, update_response};

/// A store whose commits wait while `stalled` is true.
struct GatedPersist {
    stalled: watch::Receiver<bool>,
}

impl Persist for GatedPersist {
    fn persist<'a>(
        &'a self,
        _datastore: &'a str,
        _commit: Committed<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        let mut stalled = self.stalled.clone();
        Box::pin(async move {
            let _ = stalled.wait_for(|s| !*s).await;
            Ok(())
        })
    }
}

#[derive(Debug, Clone)]
enum Op {
    Update(&'static str, u8),
    Delete(&'static str),
    Disconnect,
    ChangeWhileOffline(Vec<(&'static str, Option<u8>)>),
    StallCommits(bool),
}

const LEAVES: &[&str] = &["/a/x", "/a/y", "/a/l[k=1]/v", "/a/l[k=2]/v", "/b", "/c/d/e"];
const SUBTREES: &[&str] = &["/a", "/a/l", "/a/l[k=1]", "/c", "/b", "/a/x"];

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::sample::select(LEAVES), 0u8..4).prop_map(|(p, v)| Op::Update(p, v)),
        2 => prop::sample::select(SUBTREES).prop_map(Op::Delete),
        1 => Just(Op::Disconnect),
        1 => prop::collection::vec(
            (prop::sample::select(LEAVES), prop::option::of(0u8..4)), 1..4
        ).prop_map(Op::ChangeWhileOffline),
        1 => any::<bool>().prop_map(Op::StallCommits),
    ]
}

fn value(v: u8) -> gnmi::TypedValue {
    gnmi::TypedValue {
        value: Some(typed_value::Value::UintVal(u64::from(v))),
    }
}

fn response(n: gnmi::Notification) -> Result<gnmi::SubscribeResponse, TargetError> {
    Ok(update_response(n))
}

/// The device: its leaves, and the connection the engine holds now.
struct Model {
    leaves: BTreeMap<String, u8>,
    device: FakeDevice,
    conn: Connection,
    /// Notifications sent to the engine; it reads every one, in order, since
    /// a link drop only follows what was sent before it.
    sent: u64,
}

impl Model {
    /// Accepts the engine's next connection and sends the dump and `sync_response`.
    async fn connect(device: &mut FakeDevice, leaves: &BTreeMap<String, u8>) -> Connection {
        let conn = tokio::time::timeout(DEADLINE, device.accept())
            .await
            .expect("engine reconnects");
        let dump = gnmi::Notification {
            update: leaves
                .iter()
                .map(|(p, v)| gnmi::Update {
                    path: Some(gpath(p)),
                    val: Some(value(*v)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let _ = conn.responses.send(response(dump));
        let _ = conn.responses.send(Ok(sync_response()));
        conn
    }

    fn apply(&mut self, path: &str, v: Option<u8>) -> gnmi::Notification {
        match v {
            Some(v) => {
                self.leaves.insert(path.to_string(), v);
                gnmi::Notification {
                    update: vec![gnmi::Update {
                        path: Some(gpath(path)),
                        val: Some(value(v)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            }
            None => {
                let subtree = Subtree::new(&Path::parse(path).unwrap());
                self.leaves.retain(|k, _| !subtree.contains(k));
                gnmi::Notification {
                    delete: vec![gpath(path)],
                    ..Default::default()
                }
            }
        }
    }

    async fn reconnect(&mut self) {
        let _ = self
            .conn
            .responses
            .send(Err(TargetError::new(tonic::Code::Unavailable, "link down")));
        self.conn = Self::connect(&mut self.device, &self.leaves).await;
    }
}

fn as_map(snapshot: &Snapshot) -> BTreeMap<String, u8> {
    snapshot
        .running
        .iter()
        .map(|(k, v)| {
            let Some(typed_value::Value::UintVal(u)) = v.value else {
                panic!("not a uint")
            };
            (k.to_string(), u as u8)
        })
        .collect()
}

async fn scenario(ops: Vec<Op>) {
    let (target, mut device) = FakeTarget::new();
    let (stall, stalled) = watch::channel(false);
    let handle = SyncHandle::start(
        support::spec(
            "model",
            SyncMode::OnChange,
            Duration::from_secs(1),
            Duration::from_millis(2),
        ),
        Arc::new(target),
        Arc::new(GatedPersist { stalled }),
        Snapshot::default(),
        SyncLimits {
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            pending_cap: 8,
            commit_threshold: 4,
            // Dumps are sorted in many small batches, deletes in between.
            sort_batch: 2,
            ..SyncLimits::default()
        },
    );
    // One watcher reads everything; another never reads at all.
    let mut watcher = handle.subscribe();
    let _stalled_watcher = handle.subscribe();
    let reader = tokio::spawn(async move {
        let mut commits = Vec::new();
        while let Ok(event) = watcher.recv().await {
            if let EventKind::Commit { change, .. } = &event.kind {
                commits.push((event.revision, change.get().expect("kept: small commits")));
            }
        }
        commits
    });

    let leaves = BTreeMap::new();
    let conn = Model::connect(&mut device, &leaves).await;
    let mut model = Model {
        leaves,
        device,
        conn,
        sent: 1,
    };
    for op in ops {
        match op {
            Op::Update(p, v) => {
                let n = model.apply(p, Some(v));
                model.conn.responses.send(response(n)).unwrap();
                model.sent += 1;
            }
            Op::Delete(p) => {
                let n = model.apply(p, None);
                model.conn.responses.send(response(n)).unwrap();
                model.sent += 1;
            }
            // While commits stall and the open delta is at its cap, the ingest
            // does not read, so it cannot notice a disconnect either: the stall
            // ends before the device drops the link.
            Op::Disconnect => {
                let _ = stall.send(false);
                model.reconnect().await;
                model.sent += 1;
            }
            Op::ChangeWhileOffline(changes) => {
                let _ = stall.send(false);
                let _ = model
                    .conn
                    .responses
                    .send(Err(TargetError::new(tonic::Code::Unavailable, "link down")));
                for (p, v) in changes {
                    model.apply(p, v);
                }
                model.conn = Model::connect(&mut model.device, &model.leaves).await;
                model.sent += 1;
            }
            Op::StallCommits(on) => {
                let _ = stall.send(on);
            }
        }
    }
    let _ = stall.send(false);

    let expected = model.leaves.clone();
    let mut snapshots = handle.watch_snapshot();
    // Quiescence: the engine has read every notification sent, nothing is
    // pending, and the last connection is in sync. Only then is running
    // compared with the device (an earlier state may equal it by chance).
    let quiet = |h: &SyncHandle| {
        let status = h.status();
        h.stats()
            .notifications
            .load(std::sync::atomic::Ordering::Relaxed)
            == model.sent
            && status.pending == 0
            && status.state == netsync_core::sync::SyncState::InSync
    };
    let converged = tokio::time::timeout(DEADLINE, async {
        let mut events = handle.subscribe();
        while !(quiet(&handle) && as_map(&handle.snapshot()) == expected) {
            tokio::select! {
                _ = snapshots.changed() => {}
                _ = events.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    })
    .await;
    let last = as_map(&handle.snapshot());
    assert!(
        converged.is_ok(),
        "running {last:?} never reached the device {expected:?}"
    );
    assert_eq!(
        handle
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    tokio::time::timeout(DEADLINE, handle.stop())
        .await
        .expect("the sync stops");
    // The last handle gone, the event stream ends.
    drop(handle);
    // Stopped: no commit comes after this one.
    let final_revision = snapshots.borrow().revision;
    drop(model);

    let commits = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the event stream ends")
        .unwrap();
    let mut rebuilt: BTreeMap<String, u8> = BTreeMap::new();
    for (i, (revision, change)) in commits.iter().enumerate() {
        assert_eq!(*revision, i as u64 + 1, "revisions are consecutive from 1");
        for k in change.deletes() {
            assert!(
                rebuilt.remove(&k).is_some(),
                "revision {revision} deletes absent {k}"
            );
        }
        for (k, v) in change.updates() {
            let Some(typed_value::Value::UintVal(u)) = v.value else {
                panic!()
            };
            assert_ne!(
                rebuilt.insert(k.clone(), u as u8),
                Some(u as u8),
                "no-op update of {k}"
            );
        }
    }
    assert_eq!(commits.len() as u64, final_revision);
    assert_eq!(rebuilt, expected, "replaying the commits rebuilds running");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn running_converges_to_the_device(ops in prop::collection::vec(arb_op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(scenario(ops));
    }
}
