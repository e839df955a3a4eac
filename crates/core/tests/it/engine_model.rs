//! Property test of the whole engine against a model device, revision by
//! revision.
//!
//! A generated script drives a device through the fake target: initial dumps
//! sent in several notifications with changes and deletes inside them,
//! streamed changes, links that fail in the middle of a dump or between
//! notifications (with changes made while offline), API resyncs, and commits
//! that stall. Each case subscribes with one set of subscription paths:
//! literal, keyed lists with `[name=*]` or without keys, `*` elements, `...`,
//! an origin or module prefix on one side only. The device holds leaves under
//! and outside those paths (list keys holding `/`, `]`, `=`, `\` and `*`) and
//! reports what its subscription covers; running starts from a stored
//! snapshot holding leaves of both kinds, and those outside the paths must
//! survive every replace.
//!
//! The model is what the engine has been told, in stream order: a streamed
//! notification applies at once; a dump applies at its `sync_response` as a
//! replace (everything the subscription paths match is pruned, then the
//! dump's notifications apply in order, deletes included); a dump cut short
//! applies nothing. Checked:
//! - every revision the engine persisted is the model's state after some
//!   prefix of the stream, each no earlier than the previous revision's
//!   (linearizability), and revisions are consecutive from the stored one;
//! - the commit events, replayed over the stored snapshot, give exactly the
//!   persisted revisions, with no no-op updates and no deletes of absent leaves;
//! - at quiescence running is the model, and within the subscription paths
//!   the model is the device (leaves outside them are never pruned).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use netsync_core::datastore::SyncMode;
use netsync_core::device::TargetError;
use netsync_core::device::fake::{Connection, FakeDevice, FakeTarget};
use netsync_core::running::Running;
use netsync_core::sync::{
    Committed, EventKind, Persist, Snapshot, SyncHandle, SyncLimits, SyncState,
};
use netsync_core::{Path, PathElem};
use netsync_proto::gnmi::{self, typed_value};
use proptest::prelude::*;
use tokio::sync::watch;

use crate::support::{self, sync_response, update_response};

mod reference;

/// Leaves by value, as the model and the checks compare them.
type State = BTreeMap<String, u8>;

/// Key values of the list entries: grammar characters of the path syntax
/// (`/` is verbatim inside a key, `]`, `=` and `\` are escaped) and a literal
/// `*`, which a `[name=*]` pattern matches like any other value.
const NAMES: &[&str] = &["e0", "a/b", "x]y", "k=v", r"b\s", "*"];

/// Subscription sets, one per case.
const SUBSCRIPTIONS: &[&[&str]] = &[
    &["/"],
    &["/if/i[name=*]/config"],
    &["/if/i/config"],
    &["/if/*/config", "/sys"],
    &["/.../config"],
    &[r"/if/i[name=a/b]", "/sys/config"],
    &["oc:/if/i[name=*]/config", "/sys/host"],
    &["/oc-if:if/i", "/*/host"],
    &["/if/i[name=*]/sub/config"],
];

/// One leaf of the universe: its path and canonical key.
struct LeafDef {
    path: Path,
    key: String,
}

fn elem(name: &str) -> PathElem {
    PathElem::new(name).unwrap()
}

fn entry(name: &str) -> Path {
    [elem("if"), elem("i").with_key("name", name).unwrap()]
        .into_iter()
        .collect()
}

fn child(path: &Path, names: &[&str]) -> Path {
    names.iter().fold(path.clone(), |p, n| p.child(*n).unwrap())
}

/// Every leaf a device may hold: per entry its config, state, the key leaf
/// `name` and a leaf in a nested keyed list; and two leaves outside the list.
static LEAVES: LazyLock<Vec<LeafDef>> = LazyLock::new(|| {
    let mut paths = Vec::new();
    for name in NAMES {
        let e = entry(name);
        paths.push(child(&e, &["config", "mtu"]));
        paths.push(child(&e, &["config", "desc"]));
        paths.push(child(&e, &["state", "oper"]));
        paths.push(child(&e, &["name"]));
        let sub = e.child_elem(elem("sub").with_key("idx", "1").unwrap());
        paths.push(child(&sub, &["config", "v"]));
    }
    paths.push(Path::parse("/sys/host").unwrap());
    paths.push(Path::parse("/sys/config/ntp").unwrap());
    paths
        .into_iter()
        .map(|path| LeafDef {
            key: path.to_string(),
            path,
        })
        .collect()
});

/// Paths a device may delete: list entries, containers, single leaves, a
/// nested list without keys (all its entries), the whole list.
static DELETES: LazyLock<Vec<Path>> = LazyLock::new(|| {
    let mut paths = Vec::new();
    for name in NAMES {
        let e = entry(name);
        paths.push(e.clone());
        paths.push(child(&e, &["config"]));
        paths.push(child(&e, &["config", "mtu"]));
        paths.push(child(&e, &["sub"]));
    }
    for p in ["/if/i", "/if", "/sys", "/sys/config"] {
        paths.push(Path::parse(p).unwrap());
    }
    paths
});

/// A leaf of [`LEAVES`], shown as its path in a failing script.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Leaf(usize);

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", LEAVES[self.0].key)
    }
}

/// A path of [`DELETES`], shown as its path.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Del(usize);

impl fmt::Debug for Del {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", DELETES[self.0])
    }
}

/// A set of [`SUBSCRIPTIONS`], shown as its paths.
#[derive(Clone, Copy)]
struct Subscription(usize);

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", SUBSCRIPTIONS[self.0])
    }
}

/// One step of the device's script. Every step is valid in every phase, so
/// that shrinking keeps scripts meaningful: a step that does not apply to
/// the phase does nothing.
#[derive(Debug, Clone)]
enum Op {
    /// The device changes: deletes first, then updates (the order gNMI gives
    /// them within one notification). Sent as one notification: inside the
    /// dump while one is under way, streamed after it.
    Change(Vec<Del>, Vec<(Leaf, u8)>),
    /// During a dump: the device sends the next `n` leaves of its dump.
    DumpPart(usize),
    /// During a dump: the rest of it, then `sync_response`.
    Sync,
    /// The link fails; the engine reconnects and a new dump starts.
    LinkDown,
    /// The link fails, the device changes while the engine is away.
    Offline(Vec<Del>, Vec<(Leaf, u8)>),
    /// A resync asked through the API, once the engine has read all that was
    /// sent (so that what it read, a prefix of the stream, is known).
    Resync,
    /// Commits stall in the store (or go on).
    StallCommits(bool),
}

/// A generated case.
#[derive(Debug, Clone)]
struct Script {
    subscription: Subscription,
    /// Running as the store had it at start (revision [`STORED_REVISION`]).
    stored: Vec<(Leaf, u8)>,
    /// The device's leaves at start.
    device: Vec<(Leaf, u8)>,
    /// The dump order is the leaves' order rotated by this much, so that a
    /// dump's sorted batches overlap.
    rotate: usize,
    ops: Vec<Op>,
}

/// Longest wait for one event in a case. Shorter than the test kit's
/// deadline: a case is a few hundred tiny notifications, and shrinking a
/// failure that hangs runs many hanging cases.
const WAIT: Duration = Duration::from_secs(20);

/// How long a settled engine may take to publish its last commit.
const SETTLE: Duration = Duration::from_secs(5);

/// The revision running was stored at before the sync starts.
const STORED_REVISION: u64 = 3;

fn arb_leaf() -> impl Strategy<Value = Leaf> {
    (0..LEAVES.len()).prop_map(Leaf)
}

fn arb_change() -> impl Strategy<Value = (Vec<Del>, Vec<(Leaf, u8)>)> {
    (
        prop::collection::vec((0..DELETES.len()).prop_map(Del), 0..2),
        prop::collection::vec((arb_leaf(), 0u8..4), 0..4),
    )
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => arb_change().prop_map(|(d, u)| Op::Change(d, u)),
        4 => (1usize..6).prop_map(Op::DumpPart),
        3 => Just(Op::Sync),
        2 => Just(Op::LinkDown),
        1 => arb_change().prop_map(|(d, u)| Op::Offline(d, u)),
        1 => Just(Op::Resync),
        1 => any::<bool>().prop_map(Op::StallCommits),
    ]
}

fn arb_script() -> impl Strategy<Value = Script> {
    (
        (0..SUBSCRIPTIONS.len()).prop_map(Subscription),
        prop::collection::vec((arb_leaf(), 0u8..4), 0..8),
        prop::collection::vec((arb_leaf(), 0u8..4), 0..12),
        0usize..40,
        prop::collection::vec(arb_op(), 1..60),
    )
        .prop_map(|(subscription, stored, device, rotate, ops)| Script {
            subscription,
            stored,
            device,
            rotate,
            ops,
        })
}

/// A store that records every revision made durable and whose commits wait
/// while `stalled` is true.
struct Recorder {
    stalled: watch::Receiver<bool>,
    revisions: Mutex<Vec<(u64, Running)>>,
}

impl Persist for Recorder {
    fn persist<'a>(
        &'a self,
        _datastore: &'a str,
        commit: Committed<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        let mut stalled = self.stalled.clone();
        Box::pin(async move {
            let _ = stalled.wait_for(|s| !*s).await;
            self.revisions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((commit.revision, commit.running.clone()));
            Ok(())
        })
    }
}

fn value(v: u8) -> gnmi::TypedValue {
    gnmi::TypedValue {
        value: Some(typed_value::Value::UintVal(u64::from(v))),
    }
}

fn as_state(running: &Running) -> State {
    running
        .iter()
        .map(|(k, v)| {
            let Some(typed_value::Value::UintVal(u)) = v.value else {
                panic!("{k} is not a uint")
            };
            (k.to_string(), u8::try_from(u).unwrap())
        })
        .collect()
}

fn leaf_path(key: &str) -> &'static Path {
    &LEAVES
        .iter()
        .find(|l| l.key == key)
        .expect("a known leaf")
        .path
}

/// Applies one notification's deletes then updates to `state`.
fn apply(state: &mut State, deletes: &[Path], updates: &[(String, u8)]) {
    for d in deletes {
        state.retain(|k, _| !reference::deleted_by(d, leaf_path(k)));
    }
    for (k, v) in updates {
        state.insert(k.clone(), *v);
    }
}

/// Where the device's current connection stands.
enum Phase {
    /// The dump is under way: what it has not sent yet (in order), and the
    /// model's state as it will be at `sync_response` so far (running with
    /// the subscribed leaves pruned, then the dump's notifications).
    Dumping { unsent: Vec<String>, staged: State },
    /// The dump is closed; changes stream.
    Streaming,
}

/// The device, its connection to the engine, and the model.
struct Harness {
    device: FakeDevice,
    conn: Connection,
    patterns: Vec<Path>,
    rotate: usize,
    /// The device's leaves.
    leaves: State,
    phase: Phase,
    /// What the engine has been told: running should be this, eventually.
    model: State,
    /// Every state the model went through, in order, from the stored one.
    history: Vec<State>,
    /// Notifications sent; the engine reads every one (a resync waits until
    /// it has), since a failure only follows what was sent before it.
    sent: u64,
}

impl Harness {
    fn subscribed(&self, leaf: &Path) -> bool {
        self.patterns.iter().any(|p| reference::subscribed(p, leaf))
    }

    /// Accepts the engine's next connection; its dump starts.
    async fn accept(&mut self) {
        self.conn = tokio::time::timeout(WAIT, self.device.accept())
            .await
            .expect("the engine connects");
        let mut unsent: Vec<String> = self
            .leaves
            .keys()
            .filter(|k| self.subscribed(leaf_path(k)))
            .cloned()
            .collect();
        if !unsent.is_empty() {
            let r = self.rotate % unsent.len();
            unsent.rotate_left(r);
        }
        let mut staged = self.model.clone();
        staged.retain(|k, _| !self.subscribed(leaf_path(k)));
        self.phase = Phase::Dumping { unsent, staged };
    }

    fn send(&mut self, deletes: &[Path], updates: &[(String, u8)]) {
        if deletes.is_empty() && updates.is_empty() {
            return;
        }
        let n = gnmi::Notification {
            delete: deletes.iter().map(Path::to_gnmi).collect(),
            update: updates
                .iter()
                .map(|(k, v)| gnmi::Update {
                    path: Some(leaf_path(k).to_gnmi()),
                    val: Some(value(*v)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // The engine may have dropped a connection it resynced: then nothing
        // reads this, and nothing needs to.
        let _ = self.conn.responses.send(Ok(update_response(n)));
        self.sent += 1;
        match &mut self.phase {
            Phase::Dumping { staged, .. } => apply(staged, deletes, updates),
            Phase::Streaming => {
                apply(&mut self.model, deletes, updates);
                self.record();
            }
        }
    }

    fn record(&mut self) {
        if self.history.last() != Some(&self.model) {
            self.history.push(self.model.clone());
        }
    }

    /// The device changes; what it sends of that, if connected.
    fn change(&mut self, dels: &[Del], updates: &[(Leaf, u8)], connected: bool) {
        let deletes: Vec<Path> = dels.iter().map(|d| DELETES[d.0].clone()).collect();
        let updates: Vec<(String, u8)> = updates
            .iter()
            .map(|(l, v)| (LEAVES[l.0].key.clone(), *v))
            .collect();
        let before = self.leaves.clone();
        apply(&mut self.leaves, &deletes, &updates);
        if !connected {
            return;
        }
        // The device reports what its subscription covers: a delete within
        // the subscription paths as it is, a wider one as the subscribed
        // leaves it removed; and updates of subscribed leaves. (What it would
        // report outside them is its own choice, and a replace never prunes
        // there: only the stored leaves are outside, and they must stay.)
        let mut reported = Vec::new();
        for d in deletes {
            let under: Vec<&LeafDef> = LEAVES
                .iter()
                .filter(|l| reference::deleted_by(&d, &l.path))
                .collect();
            if under.iter().all(|l| self.subscribed(&l.path)) {
                if !under.is_empty() {
                    reported.push(d);
                }
            } else {
                reported.extend(
                    under
                        .into_iter()
                        .filter(|l| self.subscribed(&l.path) && before.contains_key(&l.key))
                        .map(|l| l.path.clone()),
                );
            }
        }
        let deletes = reported;
        let updates: Vec<(String, u8)> = updates
            .into_iter()
            .filter(|(k, _)| self.subscribed(leaf_path(k)))
            .collect();
        self.send(&deletes, &updates);
    }

    /// During a dump: sends the next `n` of its leaves that still exist.
    fn dump_part(&mut self, n: usize) {
        let Phase::Dumping { unsent, .. } = &mut self.phase else {
            return;
        };
        let next: Vec<String> = unsent.drain(..n.min(unsent.len())).collect();
        let updates: Vec<(String, u8)> = next
            .into_iter()
            .filter_map(|k| self.leaves.get(&k).map(|v| (k, *v)))
            .collect();
        self.send(&[], &updates);
    }

    /// During a dump: the rest of it and `sync_response`, which applies it.
    fn sync(&mut self) {
        if !matches!(self.phase, Phase::Dumping { .. }) {
            return;
        }
        self.dump_part(usize::MAX);
        let _ = self.conn.responses.send(Ok(sync_response()));
        let Phase::Dumping { staged, .. } = std::mem::replace(&mut self.phase, Phase::Streaming)
        else {
            unreachable!()
        };
        self.model = staged;
        self.record();
    }

    fn link_down(&mut self) {
        let _ = self
            .conn
            .responses
            .send(Err(TargetError::new(tonic::Code::Unavailable, "link down")));
    }
}

/// Waits until the engine has read `sent` notifications.
async fn read_all(handle: &SyncHandle, sent: u64) {
    tokio::time::timeout(WAIT, async {
        while handle.stats().notifications.load(Ordering::Relaxed) < sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the engine reads what was sent");
}

/// Every persisted revision is the model after some prefix of the stream,
/// each prefix no shorter than the previous revision's, and revisions are
/// consecutive from the stored one.
fn check_linearizable(revisions: &[(u64, Running)], history: &[State]) {
    let mut at = 0;
    for (i, (revision, running)) in revisions.iter().enumerate() {
        assert_eq!(
            *revision,
            STORED_REVISION + 1 + i as u64,
            "revisions are consecutive from the stored one"
        );
        let state = as_state(running);
        match history[at..].iter().position(|s| *s == state) {
            Some(found) => at += found,
            None => panic!(
                "revision {revision} is {state:?}, which is no state of the device from the \
                 one of the previous revision on: {:?}",
                &history[at..]
            ),
        }
    }
}

async fn scenario(script: Script) {
    let patterns: Vec<Path> = SUBSCRIPTIONS[script.subscription.0]
        .iter()
        .map(|p| Path::parse(p).unwrap())
        .collect();
    let stored: State = script
        .stored
        .iter()
        .map(|(l, v)| (LEAVES[l.0].key.clone(), *v))
        .collect();
    let mut spec = support::spec(
        "model",
        SyncMode::OnChange,
        Duration::from_secs(1),
        Duration::from_millis(2),
    );
    spec.sync.paths = patterns.clone();
    let (target, device) = FakeTarget::new();
    let (stall, stalled) = watch::channel(false);
    let recorder = Arc::new(Recorder {
        stalled,
        revisions: Mutex::default(),
    });
    let stored_running = Running::from_leaves(
        stored
            .iter()
            .map(|(k, v)| (Arc::<str>::from(k.as_str()), value(*v))),
    );
    let handle = SyncHandle::start(
        spec,
        Arc::new(target),
        recorder.clone(),
        Snapshot {
            revision: STORED_REVISION,
            time: None,
            running: stored_running.clone(),
        },
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

    let mut h = Harness {
        device,
        // Replaced by the first accept.
        conn: Connection {
            requests: tokio::sync::mpsc::unbounded_channel().1,
            responses: tokio::sync::mpsc::unbounded_channel().0,
        },
        patterns,
        rotate: script.rotate,
        leaves: State::new(),
        phase: Phase::Streaming,
        model: stored.clone(),
        history: vec![stored],
        sent: 0,
    };
    let device_start: Vec<(String, u8)> = script
        .device
        .iter()
        .map(|(l, v)| (LEAVES[l.0].key.clone(), *v))
        .collect();
    apply(&mut h.leaves, &[], &device_start);
    h.accept().await;
    for op in script.ops {
        match op {
            Op::Change(dels, updates) => h.change(&dels, &updates, true),
            Op::DumpPart(n) => h.dump_part(n),
            Op::Sync => h.sync(),
            // While commits stall and the open delta is at its cap, the ingest
            // does not read, so it cannot notice a failure either: the stall
            // ends before the link fails.
            Op::LinkDown => {
                let _ = stall.send(false);
                h.link_down();
                h.accept().await;
            }
            Op::Offline(dels, updates) => {
                let _ = stall.send(false);
                h.link_down();
                h.change(&dels, &updates, false);
                h.accept().await;
            }
            Op::Resync => {
                let _ = stall.send(false);
                read_all(&handle, h.sent).await;
                handle.resync();
                h.accept().await;
            }
            Op::StallCommits(on) => {
                let _ = stall.send(on);
            }
        }
    }
    let _ = stall.send(false);
    h.sync();

    // Within the subscription paths the model is the device; outside them
    // it keeps what it was told (nothing prunes it).
    let expected = h.model.clone();
    let part = |s: &State, inside: bool| -> State {
        s.iter()
            .filter(|(k, _)| h.subscribed(leaf_path(k)) == inside)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(
        part(&expected, true),
        part(&h.leaves, true),
        "the model is the device"
    );
    assert_eq!(
        part(&expected, false),
        part(&h.history[0], false),
        "the model keeps the stored leaves outside the subscription paths"
    );

    let mut snapshots = handle.watch_snapshot();
    let mut events = handle.subscribe();
    // Quiescence: the engine has read every notification sent, nothing is
    // pending, and the last connection is in sync. Only then is running
    // compared with the model (an earlier state may equal it by chance).
    let quiet = |handle: &SyncHandle| {
        let status = handle.status();
        handle.stats().notifications.load(Ordering::Relaxed) == h.sent
            && status.pending == 0
            && status.state == SyncState::InSync
    };
    tokio::time::timeout(WAIT, async {
        while !quiet(&handle) {
            tokio::select! {
                _ = snapshots.changed() => {}
                _ = events.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the engine never settled: {:?}", handle.status()));
    // What is persisted so far must be right already (and a wrong revision
    // fails the case here, without waiting for running to converge).
    check_linearizable(&recorder.revisions.lock().unwrap(), &h.history);
    // A commit taken just before may still be on its way to being published.
    let converged = tokio::time::timeout(SETTLE, async {
        while as_state(&handle.snapshot().running) != expected {
            let _ = snapshots.changed().await;
        }
    })
    .await
    .is_ok();
    let last = as_state(&handle.snapshot().running);
    tokio::time::timeout(WAIT, handle.stop())
        .await
        .expect("the sync stops");
    // Stopped: no commit comes after this one.
    let final_revision = snapshots.borrow().revision;
    // The last handle gone, the event stream ends.
    drop(handle);
    drop(h.conn);

    let revisions = std::mem::take(&mut *recorder.revisions.lock().unwrap());
    check_linearizable(&revisions, &h.history);
    assert_eq!(
        revisions.last().map_or(STORED_REVISION, |r| r.0),
        final_revision,
        "the last revision persisted is the one published"
    );

    assert!(
        converged,
        "running {last:?} never reached the model {expected:?}"
    );

    // The commit events rebuild each persisted revision.
    let commits = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the event stream ends")
        .unwrap();
    assert_eq!(commits.len(), revisions.len(), "one event per revision");
    let mut rebuilt = as_state(&stored_running);
    for ((revision, change), (persisted, running)) in commits.iter().zip(&revisions) {
        assert_eq!(revision, persisted, "events in revision order");
        for k in change.deletes() {
            assert!(
                rebuilt.remove(&k).is_some(),
                "revision {revision} deletes absent {k}"
            );
        }
        for (k, v) in change.updates() {
            let Some(typed_value::Value::UintVal(u)) = v.value else {
                panic!("{k} is not a uint")
            };
            let u = u8::try_from(u).unwrap();
            assert_ne!(
                rebuilt.insert(k.to_string(), u),
                Some(u),
                "no-op update of {k}"
            );
        }
        assert_eq!(
            rebuilt,
            as_state(running),
            "replaying the events to revision {revision} gives it"
        );
    }
}

proptest! {
    // A failing case costs up to `SETTLE` per shrinking step: shrinking stops
    // after three minutes with the smallest case found so far.
    #![proptest_config(ProptestConfig {
        cases: 384,
        max_shrink_time: 180_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_revision_is_a_state_of_the_device(script in arb_script()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(scenario(script));
    }
}

/// The model's first finding, forced: a dump's sorted batch must go back to
/// its dump even when, while it was being sorted, the dump was sealed and the
/// link dropped and a new dump began. Otherwise the sealed dump is committed
/// without the batch's leaves: a replace that prunes everything and re-creates
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_dump_keeps_the_batch_sorted_while_the_next_connection_starts() {
    const LEAVES_IN_DUMP: usize = 50_000;
    let (target, mut device) = FakeTarget::new();
    let (_stall, stalled) = watch::channel(false);
    let recorder = Arc::new(Recorder {
        stalled,
        revisions: Mutex::default(),
    });
    let handle = SyncHandle::start(
        support::spec(
            "batch",
            SyncMode::OnChange,
            Duration::from_secs(1),
            Duration::from_millis(2),
        ),
        Arc::new(target),
        recorder.clone(),
        Snapshot::default(),
        SyncLimits {
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            sort_batch: 2,
            ..SyncLimits::default()
        },
    );
    let mut snapshots = handle.watch_snapshot();
    let conn = tokio::time::timeout(WAIT, device.accept()).await.unwrap();
    // One notification: the committer takes all of it as one batch to sort
    // (tens of milliseconds in a debug build); meanwhile the ingest reads the
    // barrier and the link failure behind it and starts the next dump.
    let dump = gnmi::Notification {
        update: (0..LEAVES_IN_DUMP)
            .map(|i| gnmi::Update {
                path: Some(Path::parse(&format!("/l[i={i}]/v")).unwrap().to_gnmi()),
                val: Some(value(1)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    conn.responses.send(Ok(update_response(dump))).unwrap();
    // The batch is out once the dump is read and pending holds only the
    // replace's delete of `/`.
    tokio::time::timeout(WAIT, async {
        while handle.stats().notifications.load(Ordering::Relaxed) < 1
            || handle.status().pending != 1
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the committer takes the dump's batch");
    conn.responses.send(Ok(sync_response())).unwrap();
    conn.responses
        .send(Err(TargetError::new(tonic::Code::Unavailable, "link down")))
        .unwrap();
    let _next = tokio::time::timeout(WAIT, device.accept()).await.unwrap();
    let first = tokio::time::timeout(WAIT, snapshots.wait_for(|s| s.revision >= 1))
        .await
        .expect("the sealed dump is committed")
        .unwrap()
        .clone();
    assert_eq!(
        first.running.len(),
        LEAVES_IN_DUMP,
        "revision 1 holds the whole dump"
    );
    handle.stop().await;
}
