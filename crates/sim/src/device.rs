//! The device: one task (an actor) owns the state and applies every change in
//! order — gNMI Sets, control-plane leaf changes, churn and bursts, restarts —
//! and fans each committed change out to the subscribers. It is reached
//! through the cloneable [`Device`] handle.
//!
//! # Fan-out and slow subscribers
//!
//! Each commit becomes one or more [`Batch`]es sent on a `broadcast` channel
//! with a fixed number of slots ([`DeviceConfig::queue_batches`]). Sending never
//! waits, so a slow subscriber cannot hold up the state owner. A subscriber
//! that falls so far behind that its oldest unread batch is overwritten does
//! not silently skip it: its stream ends with RESOURCE_EXHAUSTED, as real
//! devices drop a subscriber they cannot serve, and the client resynchronises
//! by subscribing again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netsync_core::Path;
use netsync_proto::gnmi;
use serde_json::Value as Json;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::counters::add;
use crate::error::{SimError, offline};
use crate::generate::{self, Rng};
use crate::json::{self, Hints};
use crate::tree::{Change, Key, Kind, Leaf, Pattern, Tree};

/// Changes committed together, as subscribers receive them.
#[derive(Debug)]
pub struct Batch {
    /// When they were committed, ns since the epoch.
    pub timestamp: i64,
    /// The changes, each leaf at most once.
    pub changes: Vec<Change>,
}

/// A value in a Set: a scalar, or a JSON document to expand into leaves.
#[derive(Clone, Debug)]
pub enum SetValue {
    /// A scalar `TypedValue`.
    Scalar(gnmi::TypedValue),
    /// A parsed `json_val` or `json_ietf_val`.
    Json(Json),
}

/// The operations of one Set, applied in this order: deletes, replaces,
/// updates (gNMI 0.10, 3.4.3).
#[derive(Clone, Debug, Default)]
pub struct SetOps {
    /// Paths (wildcards allowed) whose subtrees are removed.
    pub deletes: Vec<Path>,
    /// Subtrees replaced wholesale.
    pub replaces: Vec<(Path, SetValue)>,
    /// Values merged in.
    pub updates: Vec<(Path, SetValue)>,
}

/// What churn and bursts do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChurnSpec {
    /// Changes per second (churn only).
    pub rate: f64,
    /// Share of changes that delete a leaf or re-create a deleted one.
    pub delete_share: f64,
    /// Seed of the choices.
    pub seed: u64,
}

/// What a simulated restart changes while the device is offline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestartSpec {
    /// Leaves removed.
    pub remove: u64,
    /// Leaves changed.
    pub change: u64,
    /// Leaves added.
    pub add: u64,
    /// Seed of the choices.
    pub seed: u64,
    /// Stay offline until [`Device::resume`].
    pub stay_offline: bool,
}

/// What a restart did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestartOutcome {
    /// Leaves after it.
    pub leaves: u64,
    /// Leaves removed.
    pub removed: u64,
    /// Leaves changed.
    pub changed: u64,
    /// Leaves added.
    pub added: u64,
}

/// Start-up settings of the device.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Most changes per [`Batch`] (and so per ON_CHANGE notification).
    pub batch_changes: usize,
    /// Slots of the fan-out channel, in batches: how far a subscriber may fall
    /// behind before it is disconnected.
    pub queue_batches: usize,
    /// Churn running from the start.
    pub churn: Option<ChurnSpec>,
}

/// A snapshot and the change feed that continues it.
pub type Feed = (Tree, broadcast::Receiver<Arc<Batch>>);

/// Commands the actor serves.
enum Command {
    Snapshot(oneshot::Sender<Result<Tree, SimError>>),
    Subscribe(oneshot::Sender<Result<Feed, SimError>>),
    Set {
        ops: SetOps,
        gnmi: bool,
        reply: oneshot::Sender<Result<u64, SimError>>,
    },
    Churn {
        spec: Option<ChurnSpec>,
        reply: oneshot::Sender<u64>,
    },
    Burst {
        count: u64,
        spec: ChurnSpec,
        reply: oneshot::Sender<u64>,
    },
    Restart {
        spec: RestartSpec,
        reply: oneshot::Sender<RestartOutcome>,
    },
    Resume(oneshot::Sender<()>),
}

/// Handle to the device actor.
#[derive(Clone)]
pub struct Device {
    tx: mpsc::Sender<Command>,
}

impl Device {
    /// Starts the actor with `tree` as the initial state; it ends when `cancel`
    /// fires or the last handle is dropped.
    pub fn spawn(
        tree: Tree,
        config: DeviceConfig,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(256);
        let (fanout, _) = broadcast::channel(config.queue_batches.max(1));
        shared
            .counters
            .leaves
            .store(tree.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let actor = Actor {
            tree,
            fanout,
            shared,
            online: true,
            batch_changes: config.batch_changes.max(1),
            queue_batches: config.queue_batches.max(1),
            churn: config.churn.map(Churn::new),
            population: None,
            slice: 1,
        };
        let task = tokio::spawn(actor.run(rx, cancel));
        (Self { tx }, task)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SimError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| SimError::ShuttingDown)?;
        rx.await.map_err(|_| SimError::ShuttingDown)
    }

    /// A snapshot of the state (fails while offline).
    pub async fn snapshot(&self) -> Result<Tree, SimError> {
        self.call(Command::Snapshot).await?
    }

    /// A snapshot and, atomically with it, a receiver of every later change.
    pub async fn subscribe(&self) -> Result<Feed, SimError> {
        self.call(Command::Subscribe).await?
    }

    /// Applies a Set atomically; returns the number of leaves changed. `gnmi`
    /// Sets are refused while offline.
    pub async fn set(&self, ops: SetOps, gnmi: bool) -> Result<u64, SimError> {
        self.call(|reply| Command::Set { ops, gnmi, reply }).await?
    }

    /// Starts, retunes (`Some`) or stops (`None`) churn; returns the changes
    /// made by the churn that was running.
    pub async fn churn(&self, spec: Option<ChurnSpec>) -> Result<u64, SimError> {
        self.call(|reply| Command::Churn { spec, reply }).await
    }

    /// Applies `count` churn changes at once.
    pub async fn burst(&self, count: u64, spec: ChurnSpec) -> Result<u64, SimError> {
        self.call(|reply| Command::Burst { count, spec, reply })
            .await
    }

    /// Simulates a restart (the caller disconnects the streams).
    pub async fn restart(&self, spec: RestartSpec) -> Result<RestartOutcome, SimError> {
        self.call(|reply| Command::Restart { spec, reply }).await
    }

    /// Comes back online after a restart with `stay_offline`.
    pub async fn resume(&self) -> Result<(), SimError> {
        self.call(Command::Resume).await
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Churn running in the background.
struct Churn {
    spec: ChurnSpec,
    rng: Rng,
    /// Changes owed but not yet made (fractions carry over between ticks).
    owed: f64,
    last_tick: Instant,
    made: u64,
}

impl Churn {
    fn new(spec: ChurnSpec) -> Self {
        Self {
            spec,
            rng: Rng::new(spec.seed),
            owed: 0.0,
            last_tick: Instant::now(),
            made: 0,
        }
    }
}

/// The leaves churn picks from, and the ones it deleted (to re-create them).
/// Built lazily and kept across churn runs and bursts; entries deleted by other
/// means are dropped when picked. Key leaves are never churned: a device does
/// not change a list entry's key leaf on its own.
///
/// Each entry carries the number of the slice (the changes committed together)
/// that last touched it, so that a slice never holds two changes of one leaf:
/// a notification's updates and deletes are separate lists, so the order of
/// two changes of one path inside it would be lost.
struct Population {
    paths: Vec<(Key, u64)>,
    deleted: Vec<(Key, Leaf, u64)>,
    /// Buffers a change is written in before it becomes a leaf.
    value_scratch: Vec<u8>,
    entry_scratch: Vec<u8>,
}

impl Population {
    fn of(tree: &Tree) -> Self {
        Self {
            paths: tree
                .iter()
                .filter(|(p, _)| !is_key_leaf(p))
                .map(|(p, _)| (p.clone(), 0))
                .collect(),
            deleted: Vec::new(),
            value_scratch: Vec::new(),
            entry_scratch: Vec::new(),
        }
    }
}

/// Whether `path` is a list entry's key leaf (`/l[k=v]/k`).
pub fn is_key_leaf(path: &Path) -> bool {
    match path.elems() {
        [.., entry, leaf] => entry.key(leaf.name()).is_some(),
        _ => false,
    }
}

/// What [`churn_one`] did.
enum Churned {
    /// One change.
    Change(Change),
    /// The leaf picked was already changed in this slice: commit it first.
    SliceFull,
    /// Nothing left to change.
    Exhausted,
}

/// How often churn runs.
const CHURN_TICK: Duration = Duration::from_millis(10);

struct Actor {
    tree: Tree,
    fanout: broadcast::Sender<Arc<Batch>>,
    shared: Arc<Shared>,
    online: bool,
    batch_changes: usize,
    queue_batches: usize,
    churn: Option<Churn>,
    population: Option<Population>,
    /// Number of the churn slice being made (see [`Population`]).
    slice: u64,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(CHURN_TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = ticker.tick(), if self.churn.is_some() => self.churn_tick(),
            }
        }
        tracing::debug!("device actor stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Snapshot(reply) => {
                let _ = reply.send(if self.online {
                    Ok(self.tree.clone())
                } else {
                    Err(offline())
                });
            }
            Command::Subscribe(reply) => {
                let _ = reply.send(if self.online {
                    Ok((self.tree.clone(), self.fanout.subscribe()))
                } else {
                    Err(offline())
                });
            }
            Command::Set { ops, gnmi, reply } => {
                let result = if gnmi && !self.online {
                    Err(offline())
                } else {
                    self.apply_set(ops)
                };
                let _ = reply.send(result);
            }
            Command::Churn { spec, reply } => {
                let made = self.churn.as_ref().map_or(0, |c| c.made);
                self.churn = spec.map(Churn::new);
                let _ = reply.send(made);
            }
            Command::Burst { count, spec, reply } => {
                let mut rng = Rng::new(spec.seed);
                let made = self.churn_changes(count, spec.delete_share, &mut rng);
                let _ = reply.send(made);
            }
            Command::Restart { spec, reply } => {
                let _ = reply.send(self.restart(spec));
            }
            Command::Resume(reply) => {
                self.set_online(true);
                let _ = reply.send(());
            }
        }
    }

    fn set_online(&mut self, online: bool) {
        self.online = online;
        self.shared
            .online
            .store(online, std::sync::atomic::Ordering::Relaxed);
    }

    /// Publishes committed changes, in batches of at most `batch_changes`.
    fn commit(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let counters = &self.shared.counters;
        add(&counters.changes_committed, changes.len() as u64);
        counters
            .leaves
            .store(self.tree.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let timestamp = now_ns();
        let mut changes = changes.into_iter().peekable();
        while changes.peek().is_some() {
            let chunk: Vec<Change> = changes.by_ref().take(self.batch_changes).collect();
            // No receiver is not an error: nobody is subscribed.
            let _ = self.fanout.send(Arc::new(Batch {
                timestamp,
                changes: chunk,
            }));
        }
    }

    fn apply_set(&mut self, ops: SetOps) -> Result<u64, SimError> {
        let old = self.tree.clone();
        let mut new = self.tree.clone();
        for path in &ops.deletes {
            let pattern = Pattern::new(path.clone());
            let doomed: Vec<Key> = new.scan(&pattern).map(|(p, _)| p.clone()).collect();
            for key in doomed {
                new.remove_key(&key);
            }
        }
        for (i, (path, value)) in ops.replaces.iter().enumerate() {
            let field = format!("replace[{i}]");
            check_concrete(&field, path)?;
            let doomed: Vec<Key> = new.subtree(path).map(|(p, _)| p.clone()).collect();
            for key in doomed {
                new.remove_key(&key);
            }
            write(&mut new, &old, &field, path, value)?;
        }
        for (i, (path, value)) in ops.updates.iter().enumerate() {
            let field = format!("update[{i}]");
            check_concrete(&field, path)?;
            write(&mut new, &old, &field, path, value)?;
        }
        let changes: Vec<Change> = old.diff(&new).collect();
        let changed = changes.len() as u64;
        self.tree = new;
        self.commit(changes);
        Ok(changed)
    }

    fn churn_tick(&mut self) {
        let Some(churn) = self.churn.as_mut() else {
            return;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(churn.last_tick).as_secs_f64();
        churn.last_tick = now;
        // A busy machine must not turn into bursts: owe at most ten ticks'
        // worth. A burst of a second's worth kept the actor busy for most of
        // a second, and Sets and control calls waited behind it; now a
        // machine that cannot keep up churns slower instead.
        let most = churn.spec.rate * (CHURN_TICK * 10).as_secs_f64();
        churn.owed = (churn.owed + elapsed * churn.spec.rate).min(most.max(1.0));
        let count = churn.owed.floor();
        churn.owed -= count;
        if count < 1.0 {
            return;
        }
        let delete_share = churn.spec.delete_share;
        let mut rng = std::mem::replace(&mut churn.rng, Rng::new(0));
        let made = self.churn_changes(count as u64, delete_share, &mut rng);
        if let Some(churn) = self.churn.as_mut() {
            churn.rng = rng;
            churn.made += made;
        }
    }

    /// Makes `count` random changes and commits them; returns how many were
    /// made (fewer only when the state runs out of leaves).
    fn churn_changes(&mut self, count: u64, delete_share: f64, rng: &mut Rng) -> u64 {
        let mut population = self
            .population
            .take()
            .unwrap_or_else(|| Population::of(&self.tree));
        // Commit in slices so that subscribers start sending while a large
        // burst is still being made.
        let slice_len = (self.batch_changes * 4).max(1);
        let mut changes = Vec::with_capacity(slice_len.min(count as usize));
        let mut made = 0;
        while made < count {
            match churn_one(
                &mut self.tree,
                &mut population,
                delete_share,
                rng,
                self.slice,
            ) {
                Churned::Change(change) => {
                    changes.push(change);
                    made += 1;
                    if changes.len() >= slice_len {
                        let slice = std::mem::replace(&mut changes, Vec::with_capacity(slice_len));
                        self.commit_churn(slice);
                    }
                }
                Churned::SliceFull => {
                    let slice = std::mem::replace(&mut changes, Vec::with_capacity(slice_len));
                    self.commit_churn(slice);
                }
                Churned::Exhausted => break,
            }
        }
        self.commit_churn(changes);
        self.population = Some(population);
        made
    }

    /// Commits one slice of churn changes and starts the next slice.
    fn commit_churn(&mut self, changes: Vec<Change>) {
        self.slice += 1;
        add(&self.shared.counters.churn_changes, changes.len() as u64);
        self.commit(changes);
    }

    fn restart(&mut self, spec: RestartSpec) -> RestartOutcome {
        self.set_online(false);
        add(&self.shared.counters.restarts, 1);
        // Every receiver of the old channel sees it closed and ends its stream;
        // the changes below happen "offline" and are not streamed.
        let (fanout, _) = broadcast::channel(self.queue_batches);
        self.fanout = fanout;
        self.population = None;
        let mut rng = Rng::new(spec.seed);
        let mut paths: Vec<Key> = self
            .tree
            .iter()
            .filter(|(p, _)| !is_key_leaf(p))
            .map(|(p, _)| p.clone())
            .collect();
        let mut outcome = RestartOutcome::default();
        let mut changes = 0u64;
        for _ in 0..spec.remove {
            if paths.is_empty() {
                break;
            }
            let path = paths.swap_remove(rng.below(paths.len() as u64) as usize);
            self.tree.remove_key(&path);
            outcome.removed += 1;
        }
        for _ in 0..spec.change.min(paths.len() as u64) {
            let path = &paths[rng.below(paths.len() as u64) as usize];
            if let Some(slot) = self.tree.get_mut_by_key(path) {
                let value = generate::changed_value(&slot.value(), &mut rng);
                *slot = slot.with_value(&value);
                outcome.changed += 1;
            }
        }
        let mut k = 0u64;
        while outcome.added < spec.add {
            let name = format!("added-{}-{k}", spec.seed);
            k += 1;
            let base = Path::parse(&format!("/interfaces/interface[name={name}]"))
                .expect("restart paths are valid");
            let leaves = [
                ("name", generate::string(&name)),
                ("config/name", generate::string(&name)),
                (
                    "config/description",
                    generate::string(format!("added while offline {k}")),
                ),
                ("config/mtu", generate::uint(1500)),
                ("config/enabled", generate::boolean(true)),
                (
                    "state/counters/in-octets",
                    generate::uint(rng.below(1 << 32)),
                ),
            ];
            for (rel, value) in leaves {
                if outcome.added == spec.add {
                    break;
                }
                let mut path = base.clone();
                path.extend(Path::parse(rel).expect("valid").elems().iter().cloned());
                if self.tree.get(&path).is_none() {
                    let leaf = Leaf::new(&path, &value);
                    self.tree.insert_path(path, leaf);
                    outcome.added += 1;
                }
            }
        }
        changes += outcome.removed + outcome.changed + outcome.added;
        add(&self.shared.counters.changes_committed, changes);
        outcome.leaves = self.tree.len() as u64;
        self.shared
            .counters
            .leaves
            .store(outcome.leaves, std::sync::atomic::Ordering::Relaxed);
        if !spec.stay_offline {
            self.set_online(true);
        }
        tracing::info!(
            ?outcome,
            stay_offline = spec.stay_offline,
            "simulated restart"
        );
        outcome
    }
}

/// One churn change: a value change, a delete, or a re-create of a deleted
/// leaf, stamped with `slice`.
fn churn_one(
    tree: &mut Tree,
    population: &mut Population,
    delete_share: f64,
    rng: &mut Rng,
    slice: u64,
) -> Churned {
    loop {
        let structural = delete_share > 0.0 && rng.chance(delete_share);
        if structural
            && !population.deleted.is_empty()
            && (population.paths.is_empty() || rng.chance(0.5))
        {
            let i = rng.below(population.deleted.len() as u64) as usize;
            if population.deleted[i].2 == slice {
                return Churned::SliceFull;
            }
            let (path, leaf, _) = population.deleted.swap_remove(i);
            tree.insert(path.clone(), leaf.clone());
            let change = Change::update(&path, &leaf);
            population.paths.push((path, slice));
            return Churned::Change(change);
        }
        if population.paths.is_empty() {
            return Churned::Exhausted;
        }
        let i = rng.below(population.paths.len() as u64) as usize;
        if population.paths[i].1 == slice {
            return Churned::SliceFull;
        }
        if structural {
            let (path, _) = population.paths.swap_remove(i);
            match tree.remove_key(&path) {
                Some(old) => {
                    let change = Change::delete(&path, &old);
                    population.deleted.push((path, old, slice));
                    return Churned::Change(change);
                }
                // Deleted by a Set meanwhile: forget it and pick again.
                None => continue,
            }
        }
        let Some(slot) = tree.get_mut_by_key(&population.paths[i].0) else {
            population.paths.swap_remove(i);
            continue;
        };
        generate::changed_value_wire(slot.value_wire(), rng, &mut population.value_scratch);
        let leaf = Leaf::from_parts_in(
            &mut population.entry_scratch,
            slot.path_wire(),
            &population.value_scratch,
        );
        *slot = leaf.clone();
        population.paths[i].1 = slice;
        return Churned::Change(Change::update(&population.paths[i].0, &leaf));
    }
}

/// Refuses wildcards where a Set writes.
fn check_concrete(field: &str, path: &Path) -> Result<(), SimError> {
    if Pattern::new(path.clone()).has_wildcards() {
        return Err(SimError::InvalidArgument(format!(
            "{field}.path: wildcards are only allowed in deletes, got `{path}`"
        )));
    }
    Ok(())
}

/// Type and list-key hints from the state before the Set.
struct TreeHints<'a>(&'a Tree);

impl Hints for TreeHints<'_> {
    fn value_at(&self, path: &Path) -> Option<gnmi::TypedValue> {
        self.0.get(path).map(Leaf::value)
    }

    fn list_keys(&self, parent: &Path, name: &str) -> Option<Vec<String>> {
        let start = parent.clone().child(name).ok()?;
        let (first, _) = self.0.subtree(parent).find(|(p, _)| p.path() >= &start)?;
        let elem = first.elems().get(parent.len())?;
        (elem.name() == name && !elem.keys().is_empty())
            .then(|| elem.keys().keys().cloned().collect())
    }
}

/// Writes `value` at `path` into `new` (merging), checking it against the
/// state's shape: types of existing leaves, list keys, leaves versus
/// containers.
fn write(
    new: &mut Tree,
    old: &Tree,
    field: &str,
    path: &Path,
    value: &SetValue,
) -> Result<(), SimError> {
    let leaves = match value {
        SetValue::Scalar(v) => vec![(path.clone(), v.clone())],
        SetValue::Json(doc) => json::load(path, doc, &TreeHints(old))
            .map_err(|e| SimError::InvalidArgument(format!("{field}.val: {e}")))?,
    };
    for (leaf_path, value) in leaves {
        write_leaf(new, field, &leaf_path, value)?;
    }
    Ok(())
}

fn write_leaf(
    new: &mut Tree,
    field: &str,
    path: &Path,
    value: gnmi::TypedValue,
) -> Result<(), SimError> {
    let invalid = |problem: String| SimError::InvalidArgument(format!("{field}: {problem}"));
    let kind = Kind::of(&value).ok_or_else(|| invalid(format!("no value given for `{path}`")))?;
    if kind == Kind::Other {
        return Err(SimError::Unimplemented(format!(
            "{field}.val: any_val and proto_bytes values are not supported (at `{path}`)"
        )));
    }
    if path.is_root() {
        return Err(invalid("a scalar value cannot replace the root".into()));
    }
    if let Some(existing) = new.get(path) {
        let existing = existing.value();
        let existing_kind = Kind::of(&existing);
        if existing_kind != Some(kind) {
            return Err(invalid(format!(
                "`{path}` holds a {} value, got a {} value",
                existing_kind.map_or("?", Kind::name),
                kind.name()
            )));
        }
        if existing == value {
            return Ok(());
        }
    } else {
        if let Some(ancestor) = new.leaf_ancestor(path) {
            return Err(invalid(format!(
                "`{ancestor}` is a leaf, so `{path}` cannot exist"
            )));
        }
        if new.has_descendants(path) {
            return Err(invalid(format!(
                "`{path}` is a container; set it with a JSON value or set its leaves"
            )));
        }
    }
    check_key_leaf(path, &value).map_err(invalid)?;
    new.insert_path(path.clone(), Leaf::new(path, &value));
    Ok(())
}

/// A list's key leaf (`/l[k=v]/k`) must hold the key's value.
fn check_key_leaf(path: &Path, value: &gnmi::TypedValue) -> Result<(), String> {
    let elems = path.elems();
    let [.., entry, leaf] = elems else {
        return Ok(());
    };
    let Some(key) = entry.key(leaf.name()) else {
        return Ok(());
    };
    let text = match json::render_value(value, false) {
        Json::String(s) => s,
        other => other.to_string(),
    };
    if text != key {
        return Err(format!(
            "`{path}` is the key of its list entry and must be `{key}`, got `{text}`"
        ));
    }
    Ok(())
}
