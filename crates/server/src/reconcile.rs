//! Reconcile jobs: bring a device to its intents with gNMI Sets, decoupled
//! from the sync, durable in SQLite, re-planned after each Set, and never in
//! the way of intent writes. Apply (after SetIntent/DeleteIntent) and revert
//! (after a commit shows drift) are the same mechanism.
//!
//! Each datastore has one worker task, supervised (a panic restarts it).
//! Jobs are rows of `reconcile_jobs`: at most one queued and one running per
//! datastore; a new trigger coalesces into the queued row. A job plans its
//! Set from the deviations at that moment (under the datastore's intent lock,
//! held for planning only), sends it, waits until running holds the device's
//! answer, and plans again: it ends when there is nothing left to set. An
//! intent write bumps a generation that makes a running job plan again before
//! its next step. A Set that does not stick backs off and, repeated, marks its
//! intent FAILING (see [`crate::intent_status`]). `docs/RECONCILE.md` has the
//! life cycle.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use netsync_core::Path;
use netsync_core::datastore::DatastoreSpec;
use netsync_core::intent::{Deviation, Intended, Intent};
use netsync_core::running::{Key, Running, Value};
use netsync_core::sync::{EventKind, RevertEvent, RevertPhase, Snapshot, SyncHandle, SyncState};
use netsync_core::value;
use netsync_proto::gnmi;
use tokio::sync::{Mutex, Notify, broadcast, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::dry_run::DryRun;
use crate::intent_status::{Owner, Policy, Tracker, WITHDRAWAL};
use crate::jobs::{self, Job, Trigger};
use crate::store::Store;

/// Timing of reconcile jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Longest wait for one Set.
    pub attempt_timeout: Duration,
    /// Attempts in a row that fail with a transient error (the device
    /// unavailable, ...) before a job is FAILED.
    pub max_attempts: u32,
    /// First retry delay; doubles up to `backoff_max`. Also the first
    /// backoff after Sets that did not stick.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long running may take to hold the device's answer to a Set.
    pub confirm_timeout: Duration,
    /// How long a Set's leaves must keep their values for it to count as
    /// stuck: a leaf that has to be set again sooner did not stick.
    pub settle_time: Duration,
    /// Sets in a row of one intent that did not stick (changed back, never
    /// shown, refused) after which it is FAILING; 0: never.
    pub max_failures: u32,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(60),
            max_attempts: 5,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(30),
            settle_time: Duration::from_secs(60),
            max_failures: 5,
        }
    }
}

impl ReconcileConfig {
    /// What decides whether Sets stuck, and what follows when they did not.
    pub fn policy(&self) -> Policy {
        Policy {
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            settle_time: self.settle_time,
            max_failures: self.max_failures,
        }
    }
}

/// Pause before the worker starts again after a panic.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Whether an event made the worker queue a revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// Nothing to revert (or revert is off).
    No,
    /// A revert job is queued (new or merged).
    Yes,
    /// A revert is due but the store refused it for now.
    Failed,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device took the Sets and running holds the intents.
    Applied,
    /// A permanent error, the last attempt failed, or an intent became
    /// FAILING.
    Failed,
    /// The device already matched: no Set was sent.
    NothingToDo,
}

impl Outcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [Outcome; 3] = [Outcome::Applied, Outcome::Failed, Outcome::NothingToDo];

    /// The outcome's name in metrics and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Failed => "failed",
            Outcome::NothingToDo => "nothing_to_do",
        }
    }
}

/// Counters of one datastore's reconcile worker since it started.
#[derive(Debug, Default)]
pub struct JobStats {
    ended: [AtomicU64; Outcome::ALL.len()],
    /// Times the worker panicked and was restarted.
    restarts: AtomicU64,
}

impl JobStats {
    /// Jobs that ended with `outcome`.
    pub fn ended(&self, outcome: Outcome) -> u64 {
        self.ended[outcome as usize].load(Ordering::Relaxed)
    }

    /// Times the worker panicked and was restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn record(&self, outcome: Outcome) {
        self.ended[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One Set to send: what to update and delete, and who wants each leaf.
#[derive(Debug, Default)]
struct Plan {
    updates: Vec<(Key, Value)>,
    deletes: Vec<Key>,
    /// The intent deciding each leaf, or [`WITHDRAWAL`].
    owners: BTreeMap<Key, Owner>,
    /// The revision the plan was made at, and the intents deviating then
    /// (planned or not).
    revision: u64,
    deviating: BTreeSet<String>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.deletes.is_empty()
    }

    /// The updates and deletes of `owner`.
    fn of(&self, owner: &str) -> (Vec<(Key, Value)>, Vec<Key>) {
        let mine = |k: &Key| self.owners.get(k).is_some_and(|o| o == owner);
        (
            self.updates
                .iter()
                .filter(|(k, _)| mine(k))
                .cloned()
                .collect(),
            self.deletes.iter().filter(|k| mine(k)).cloned().collect(),
        )
    }
}

/// What became of one Set.
#[derive(Debug)]
enum Answer {
    /// Running holds the device's answer for every leaf: these did not get
    /// the Set's value (the device changed them within the Set's echo).
    Answered { changed: Vec<Key> },
    /// The device took the Set, but running did not show an answer for
    /// every leaf within the confirm timeout.
    NotShown(String),
    /// An intent write came first: plan again at once.
    Interrupted,
    /// The device did not take it.
    Refused { error: String, retryable: bool },
}

/// Whether `running` holds `value` at `key`, by meaning.
fn shows(running: &Running, key: &Key, value: &Value) -> bool {
    running.holds(key, value)
}

/// One datastore's reconcile worker.
pub struct Worker {
    /// The datastore's sync.
    pub sync: Arc<SyncHandle>,
    /// The store.
    pub store: Store,
    /// Timing.
    pub config: ReconcileConfig,
    /// Woken when a job is queued.
    pub wake: Arc<Notify>,
    /// Held while a job plans and while an intent of this datastore is
    /// written, never across a Set or a wait.
    pub lock: Arc<Mutex<()>>,
    /// Intent statuses, what was set recently, the generation.
    pub tracker: Arc<Tracker>,
    /// Where ended jobs and restarts are counted.
    pub stats: Arc<JobStats>,
}

impl Worker {
    /// Runs until `stop` turns true; a panic restarts it (logged, counted).
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let name = self.sync.name().to_string();
        let this = &self;
        crate::supervise::supervised(
            "reconcile worker",
            &name,
            RESTART_PAUSE,
            &self.stats.restarts,
            stop,
            || this.work(),
        )
        .await;
    }

    /// The worker's loop: claim a due job and run it, else wait for a job,
    /// its due time, or a commit that may show drift.
    async fn work(&self) {
        let name = self.sync.name();
        let mut events = self.sync.subscribe();
        let mut generation = self.tracker.generation();
        // After a restart every intent is PENDING: those running holds once
        // the sync is IN_SYNC are APPLIED (see `on_event`).
        if self.sync.status().state == SyncState::InSync {
            self.confirm_pending();
        }
        // A revert that could not be queued, to queue once the store takes it.
        let mut recheck = false;
        // Whether a job may be in the queue: asking the store costs a write
        // transaction, so it is asked only at start, when woken (every
        // enqueue wakes this worker), after queueing a revert, and while a
        // queued job waits for its time. Not after every commit: a thousand
        // datastores would add a thousand writer round trips a second.
        let mut maybe_queued = true;
        loop {
            // Intent writes from here on are taken into the job it claims.
            let claimed_at = *generation.borrow_and_update();
            let next = if !maybe_queued {
                Err(None)
            } else {
                match jobs::take_due(self.store.writer(), name).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!(datastore = %name, error = %e, "reconcile queue unreadable");
                        Err(Some(Duration::from_secs(1)))
                    }
                }
            };
            // Nothing queued: not asked again until something is.
            maybe_queued = !matches!(next, Err(None));
            match next {
                Ok(job) => {
                    // A trace of its own per job (not a child of the worker's span).
                    let span = tracing::info_span!(parent: None, "reconcile", datastore = %name,
                        kind = job.kind(), attempts = tracing::field::Empty,
                        outcome = tracing::field::Empty);
                    let outcome = self
                        .execute(job, claimed_at, &mut generation)
                        .instrument(span.clone())
                        .await;
                    span.record("outcome", outcome.as_str());
                    // The job's trace ends with its outcome, which its
                    // watchers have already seen: closed now, not after the
                    // row is cleared (a netsyncd stopped meanwhile would cut
                    // that write, and the span with it, before the export).
                    drop(span);
                    self.stats.record(outcome);
                    if let Err(e) = jobs::finish(self.store.writer(), name).await {
                        // Not retried here: the next claim takes the row over.
                        tracing::warn!(datastore = %name, error = %e, "cannot clear a finished job; the next claim takes it over");
                    }
                }
                Err(wait) => {
                    let mut wait = wait.unwrap_or(Duration::from_secs(3600));
                    if recheck {
                        wait = wait.min(Duration::from_secs(1));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {
                            if recheck {
                                // As after missed events: the deviations now.
                                let missed = Err(broadcast::error::RecvError::Lagged(0));
                                let queued = self.on_event(missed).await;
                                recheck = queued == Queued::Failed;
                                maybe_queued |= queued == Queued::Yes;
                            }
                        }
                        () = self.wake.notified() => maybe_queued = true,
                        event = events.recv() => {
                            let queued = self.on_event(event).await;
                            recheck = queued == Queued::Failed;
                            maybe_queued |= queued == Queued::Yes;
                        }
                    }
                }
            }
        }
    }

    /// After a commit: drift in revertive intents queues a revert. After the
    /// sync reaches IN_SYNC: PENDING intents that running holds are APPLIED.
    /// Says whether a revert was queued; if it could not be (the store
    /// failed), the caller looks again shortly, since no later commit may
    /// come to do it.
    async fn on_event(
        &self,
        event: Result<Arc<netsync_core::sync::Event>, broadcast::error::RecvError>,
    ) -> Queued {
        let relevant = match &event {
            Ok(e) => match &e.kind {
                EventKind::Commit { .. } => true,
                EventKind::StateChanged {
                    state: SyncState::InSync,
                    ..
                } => {
                    self.confirm_pending();
                    false
                }
                _ => false,
            },
            // Missed events: look at the deviations as they are now.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if self.sync.status().state == SyncState::InSync {
                    self.confirm_pending();
                }
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        };
        let revert = &self.sync.spec().revert;
        if !relevant || !revert.enabled {
            return Queued::No;
        }
        let plan = self.plan(&Job::default(), &BTreeSet::new(), None);
        if plan.is_empty() {
            return Queued::No;
        }
        match jobs::enqueue_alone(
            self.store.writer(),
            self.sync.name(),
            Trigger::Revert(revert.debounce),
        )
        .await
        {
            Ok(created) => {
                if created {
                    self.publish(
                        RevertPhase::Queued,
                        0,
                        &plan.updates,
                        &plan.deletes,
                        String::new(),
                    );
                }
                Queued::Yes
            }
            Err(e) => {
                tracing::warn!(datastore = %self.sync.name(), error = %e, "cannot queue a revert yet; trying again shortly");
                Queued::Failed
            }
        }
    }

    /// PENDING intents that running holds now are APPLIED.
    fn confirm_pending(&self) {
        let (revision, deviations) = self.sync.deviations();
        let deviating = deviations.into_iter().map(|d| d.intent).collect();
        self.tracker.confirm(revision, &deviating, &BTreeSet::new());
    }

    /// The Set that brings the device to its intents now (see
    /// [`plan_set`]), from the datastore's current intents, deviations and
    /// FAILING intents.
    fn plan(&self, job: &Job, written: &BTreeSet<Key>, only: Option<&BTreeSet<Key>>) -> Plan {
        let intents = self.sync.intents();
        let failing = self.tracker.failing();
        let (revision, deviations) = self.sync.deviations();
        let running = self.sync.snapshot().running;
        let state = PlanState {
            revert_enabled: self.sync.spec().revert.enabled,
            intents: &intents,
            failing: &failing,
            revision,
            deviations,
            running: &running,
        };
        plan_set(state, job, written, only)
    }

    /// Runs a job to its end: plan, Set, wait for the answer, plan again.
    async fn execute(
        &self,
        mut job: Job,
        mut seen: u64,
        generation: &mut watch::Receiver<u64>,
    ) -> Outcome {
        let name = self.sync.name();
        // Sets sent by this job; the attempt number of its events.
        let mut sets = 0u32;
        // Transient failures in a row, and the delay before the next retry.
        let mut transient = 0u32;
        let mut retry = self.config.backoff_min;
        // Leaves this job updated and has not deleted since.
        let mut written: BTreeSet<Key> = BTreeSet::new();
        // Intents whose leaves this job set.
        let mut involved: BTreeSet<Owner> = BTreeSet::new();
        // What the job's Sets did, for the APPLIED event (a delete: None).
        let mut applied: BTreeMap<Key, Option<Value>> = BTreeMap::new();
        // Whether the last thing that happened is an intent becoming FAILING.
        let mut ended_failing = false;
        loop {
            let plan = {
                let _planning = self.lock.lock().await;
                let current = *generation.borrow_and_update();
                if current != seen {
                    seen = current;
                    // What the intent write queued is done by this job now.
                    match jobs::absorb(self.store.writer(), name).await {
                        Ok(Some(absorbed)) => job = absorbed,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(datastore = %name, error = %e, "cannot take the queued job into the running one; it runs after it")
                        }
                    }
                }
                // After the first Set: what this job is about (see `plan`).
                let set_already: BTreeSet<Key> = applied.keys().cloned().collect();
                self.plan(&job, &written, (sets > 0).then_some(&set_already))
            };
            // Intents running holds now are APPLIED (also while the job goes
            // on for others).
            self.tracker
                .confirm(plan.revision, &plan.deviating, &involved);
            let judged = self
                .tracker
                .judge(&plan.owners, Instant::now(), &self.config.policy());
            for (owner, why) in &judged.failed {
                tracing::warn!(datastore = %name, intent = %owner, %why, "a Set did not stick");
            }
            if !judged.newly_failing.is_empty() {
                for (owner, error) in judged.newly_failing {
                    self.fail_owner(&mut job, &plan, &owner, sets, error);
                }
                ended_failing = true;
                // Plan again without them.
                continue;
            }
            if plan.is_empty() {
                if sets == 0 {
                    return Outcome::NothingToDo;
                }
                if ended_failing {
                    return Outcome::Failed;
                }
                let (updates, deletes) = split(applied);
                self.publish(
                    RevertPhase::Applied,
                    sets,
                    &updates,
                    &deletes,
                    String::new(),
                );
                return Outcome::Applied;
            }
            if let Some(wait) = judged.wait {
                tracing::info!(datastore = %name, ?wait, "backing off before setting leaves that did not stick");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = generation.changed() => {}
                }
                continue;
            }

            sets += 1;
            ended_failing = false;
            let owners: BTreeSet<&Owner> = plan.owners.values().collect();
            involved.extend(owners.iter().map(|o| (*o).clone()));
            self.tracker.sending(owners.iter().copied());
            // As i64: OpenTelemetry attributes have no unsigned integers.
            tracing::Span::current().record("attempts", i64::from(sets));
            self.publish(
                RevertPhase::Applying,
                sets,
                &plan.updates,
                &plan.deletes,
                String::new(),
            );
            let span = tracing::info_span!(
                "reconcile_attempt",
                attempt = i64::from(sets),
                error = tracing::field::Empty
            );
            let answer = self
                .attempt(&plan, generation)
                .instrument(span.clone())
                .await;
            if let Answer::Refused { error, .. } | Answer::NotShown(error) = &answer {
                span.record("error", error.as_str());
            }
            drop(span);
            if !matches!(
                answer,
                Answer::Refused {
                    retryable: false,
                    ..
                }
            ) {
                for (k, v) in &plan.updates {
                    written.insert(k.clone());
                    applied.insert(k.clone(), Some(v.clone()));
                }
                for k in &plan.deletes {
                    written.remove(k);
                    applied.insert(k.clone(), None);
                }
            }
            match answer {
                Answer::Answered { changed } => {
                    transient = 0;
                    retry = self.config.backoff_min;
                    let changed: HashSet<Key> = changed.into_iter().collect();
                    let notes = plan.owners.iter().map(|(k, owner)| {
                        let note = if changed.contains(k) {
                            format!("the device changed {k} within the echo of netsync's Set")
                        } else {
                            format!("the device changed {k} back after netsync set it")
                        };
                        (k.clone(), owner.clone(), note)
                    });
                    self.tracker.answered(notes, Instant::now());
                }
                Answer::NotShown(error) => {
                    transient = 0;
                    tracing::warn!(datastore = %name, attempt = sets, %error, "reconcile Set not shown");
                    let notes = plan
                        .owners
                        .iter()
                        .map(|(k, owner)| (k.clone(), owner.clone(), error.clone()));
                    self.tracker.answered(notes, Instant::now());
                }
                Answer::Interrupted => {}
                Answer::Refused {
                    error,
                    retryable: false,
                } => {
                    self.give_up(&plan, sets, error);
                    return Outcome::Failed;
                }
                Answer::Refused { error, .. } => {
                    transient += 1;
                    tracing::warn!(datastore = %name, attempt = sets, %error, "reconcile attempt failed");
                    if transient >= self.config.max_attempts {
                        self.give_up(
                            &plan,
                            sets,
                            format!("gave up after {transient} attempts: {error}"),
                        );
                        return Outcome::Failed;
                    }
                    self.tracker.note_error(plan.owners.values(), &error);
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        _ = generation.changed() => {}
                    }
                    retry = (retry * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// A job ends FAILED with `error`: each intent of `plan` counts a
    /// failure.
    fn give_up(&self, plan: &Plan, sets: u32, error: String) {
        let failing = self.tracker.failed(
            plan.owners.values(),
            &error,
            Instant::now(),
            &self.config.policy(),
        );
        self.publish(
            RevertPhase::Failed,
            sets,
            &plan.updates,
            &plan.deletes,
            error,
        );
        for (owner, error) in failing {
            tracing::warn!(datastore = %self.sync.name(), intent = %owner, %error, "intent failing: auto-revert of its leaves paused");
        }
    }

    /// `owner` reached the failures allowed: it is FAILING (or, for
    /// withdrawals, the job gives them up). Announced as a FAILED event with
    /// its leaves.
    fn fail_owner(&self, job: &mut Job, plan: &Plan, owner: &str, sets: u32, error: String) {
        let (updates, deletes) = plan.of(owner);
        if owner == WITHDRAWAL {
            tracing::warn!(datastore = %self.sync.name(), %error, "withdrawn leaves given up: the device keeps them");
            job.withdrawn.clear();
            self.publish(RevertPhase::Failed, sets, &updates, &deletes, error);
        } else {
            tracing::warn!(datastore = %self.sync.name(), intent = %owner, %error, "intent failing: auto-revert of its leaves paused");
            let error = format!("intent {owner:?} is failing: {error}");
            self.publish(RevertPhase::Failed, sets, &updates, &deletes, error);
        }
    }

    /// One Set, then the wait until running holds the device's answer.
    async fn attempt(&self, plan: &Plan, generation: &mut watch::Receiver<u64>) -> Answer {
        let running = self.sync.snapshot().running;
        let request = match set_request(self.sync.spec(), &running, &plan.updates, &plan.deletes) {
            Ok(request) => request,
            Err(error) => {
                return Answer::Refused {
                    error,
                    retryable: false,
                };
            }
        };
        let target = self.sync.target();
        match tokio::time::timeout(self.config.attempt_timeout, target.set(request)).await {
            Err(_) => {
                return Answer::Refused {
                    error: format!(
                        "the device did not answer the Set within {:?}",
                        self.config.attempt_timeout
                    ),
                    retryable: true,
                };
            }
            Ok(Err(e)) => {
                return Answer::Refused {
                    error: format!("Set refused: {e}"),
                    retryable: e.is_retryable(),
                };
            }
            Ok(Ok(_)) => {}
        }
        self.confirm(plan, generation).await
    }

    /// Waits until running holds the device's answer to the Set just
    /// acknowledged: for every leaf, either the Set's value (or absence), or
    /// a value other than the one running had when the answer came (the
    /// device changed the leaf again within the echo). Leaves that running
    /// already showed as set count at once; leaves whose echo is late are
    /// waited for, so a late echo never looks like drift.
    async fn confirm(&self, plan: &Plan, generation: &mut watch::Receiver<u64>) -> Answer {
        let mut snapshots = self.sync.watch_snapshot();
        let at_answer = snapshots.borrow_and_update().running.clone();
        let answered = |s: &Snapshot| {
            plan.updates
                .iter()
                .all(|(k, v)| shows(&s.running, k, v) || s.running.get(k) != at_answer.get(k))
                && plan
                    .deletes
                    .iter()
                    .all(|k| !s.running.contains(k) || s.running.get(k) != at_answer.get(k))
        };
        let wait = tokio::time::timeout(self.config.confirm_timeout, async {
            snapshots
                .wait_for(|s| answered(s))
                .await
                .map(|s| s.running.clone())
        });
        tokio::select! {
            running = wait => match running {
                Ok(Ok(running)) => Answer::Answered {
                    changed: plan
                        .updates
                        .iter()
                        .filter(|(k, v)| !shows(&running, k, v))
                        .map(|(k, _)| k.clone())
                        .chain(plan.deletes.iter().filter(|k| running.contains(k)).cloned())
                        .collect(),
                },
                _ => Answer::NotShown(format!(
                    "the device accepted the Set but running did not show it within {:?}",
                    self.config.confirm_timeout
                )),
            },
            _ = generation.changed() => Answer::Interrupted,
        }
    }

    fn publish(
        &self,
        phase: RevertPhase,
        attempt: u32,
        updates: &[(Key, Value)],
        deletes: &[Key],
        error: String,
    ) {
        tracing::info!(datastore = %self.sync.name(), ?phase, attempt, updates = updates.len(), deletes = deletes.len(), %error, "reconcile");
        self.sync.publish_revert(RevertEvent {
            phase,
            attempt,
            updates: updates.to_vec(),
            deletes: deletes.to_vec(),
            error,
        });
    }
}

/// `applied` as updates and deletes.
fn split(applied: BTreeMap<Key, Option<Value>>) -> (Vec<(Key, Value)>, Vec<Key>) {
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    for (k, v) in applied {
        match v {
            Some(v) => updates.push((k, v)),
            None => deletes.push(k),
        }
    }
    (updates, deletes)
}

/// What a plan is made from: a datastore's intents, their deviations at one
/// revision, and what its worker knows.
struct PlanState<'a> {
    revert_enabled: bool,
    intents: &'a [Intent],
    /// FAILING intents: left out.
    failing: &'a BTreeSet<String>,
    /// The revision of `deviations`.
    revision: u64,
    deviations: Vec<Deviation>,
    running: &'a Running,
}

/// The Set that brings the device to its intents: deviations of revertive
/// intents (when revert is enabled) and of the intents `job` applies, plus
/// withdrawn leaves nobody provides any more; FAILING intents are left out.
/// `written` holds leaves the job's own Sets wrote: a withdrawn one is
/// deleted even if running does not show it yet (its echo may still be on
/// its way).
///
/// With `only`, revertive deviations are kept only on those leaves (the
/// ones the job has set already): after its first Set a job finishes what
/// it is about, and drift elsewhere is left to a revert job, which waits for
/// `revert.debounce` as always (otherwise a device that keeps drifting would
/// keep one job running for ever).
///
/// The one planner: the worker's jobs and the dry run of an intent write
/// ([`dry_run`]) both plan with it.
fn plan_set(
    state: PlanState<'_>,
    job: &Job,
    written: &BTreeSet<Key>,
    only: Option<&BTreeSet<Key>>,
) -> Plan {
    let non_revertive: HashSet<&str> = state
        .intents
        .iter()
        .filter(|i| i.non_revertive)
        .map(|i| i.name.as_str())
        .collect();
    let mut plan = Plan {
        revision: state.revision,
        ..Plan::default()
    };
    for d in state.deviations {
        plan.deviating.insert(d.intent.clone());
        let wanted = job.apply.contains(&d.intent)
            || (state.revert_enabled
                && !non_revertive.contains(d.intent.as_str())
                && only.is_none_or(|only| only.contains(&d.path)));
        if !wanted || state.failing.contains(&d.intent) {
            continue;
        }
        plan.owners.insert(d.path.clone(), d.intent);
        match d.expected {
            Some(value) => plan.updates.push((d.path, value)),
            None => plan.deletes.push(d.path),
        }
    }
    for path in &job.withdrawn {
        let claimed = state.intents.iter().any(|i| i.updates.contains_key(path));
        let present = state.running.contains(path) || written.contains(path);
        if !claimed && present && !plan.owners.contains_key(path) {
            plan.deletes.push(path.clone());
            plan.owners.insert(path.clone(), WITHDRAWAL.to_string());
        }
    }
    plan
}

/// The gNMI Set of `updates` and `deletes` for the datastore `spec`: values
/// in the device's encoding; what `running` holds for a leaf shows how the
/// device writes it (see `value::for_device`).
fn set_request(
    spec: &DatastoreSpec,
    running: &Running,
    updates: &[(Key, Value)],
    deletes: &[Key],
) -> Result<gnmi::SetRequest, String> {
    let to_gnmi = |k: &Key| {
        Path::parse(k)
            .map(|p| p.to_gnmi())
            .map_err(|e| e.to_string())
    };
    let target_name = &spec.target.target_name;
    let encoding = spec.target.encoding;
    Ok(gnmi::SetRequest {
        prefix: (!target_name.is_empty()).then(|| gnmi::Path {
            target: target_name.clone(),
            ..Default::default()
        }),
        delete: deletes.iter().map(to_gnmi).collect::<Result<_, _>>()?,
        update: updates
            .iter()
            .map(|(k, v)| {
                Ok(gnmi::Update {
                    path: Some(to_gnmi(k)?),
                    val: Some(value::for_device(v, encoding, running.get(k).as_ref())),
                    ..Default::default()
                })
            })
            .collect::<Result<_, String>>()?,
        ..Default::default()
    })
}

/// Plans the write of `intent` on `sync` without making it (see
/// [`plan_write`]), from its running and intents now; `failing` are its
/// FAILING intents now.
pub fn dry_run(
    sync: &SyncHandle,
    failing: BTreeSet<String>,
    intent: Intent,
) -> Result<DryRun, String> {
    // One snapshot of running and one list of intents: the plan, its clears
    // and what remains all describe the same revision.
    let snapshot = sync.snapshot();
    plan_write(sync.spec(), &snapshot, sync.intents(), failing, intent)
}

/// [`dry_run`] on a replica that does not sync the datastore: planned the
/// same way from what the database holds, `snapshot` (running at its newest
/// committed revision) and `intents` (the stored ones today's validation
/// takes). Intent statuses live with the owner, so no intent counts as
/// FAILING here: the leaves of one the owner holds back as FAILING may be
/// in this plan.
pub fn dry_run_stored(
    spec: &DatastoreSpec,
    snapshot: &Snapshot,
    intents: Vec<Intent>,
    intent: Intent,
) -> Result<DryRun, String> {
    plan_write(spec, snapshot, intents, BTreeSet::new(), intent)
}

/// What writing `intent` would do: the first Set of the job the write
/// would queue (an apply of `intent`, which also reverts the drift of
/// revertive intents when revert is enabled, as every job does), planned by
/// [`plan_set`] from `snapshot` and `intents` as they would be after the
/// write. `failing` are the FAILING intents; a write makes `intent` PENDING
/// again, so its own leaves are planned even if it is one of them. The
/// leaves a previous version of `intent` set and this one drops are
/// withdrawn in the same job, as the write queues them. Withdrawals queued by
/// a DeleteIntent and not yet done are not part of it.
fn plan_write(
    spec: &DatastoreSpec,
    snapshot: &Snapshot,
    intents: Vec<Intent>,
    mut failing: BTreeSet<String>,
    intent: Intent,
) -> Result<DryRun, String> {
    let running = &snapshot.running;
    let withdrawn: BTreeSet<Key> = intents
        .iter()
        .find(|old| old.name == intent.name)
        .map(|old| {
            old.updates
                .keys()
                .filter(|k| !intent.updates.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let before = Intended::from_intents(intents, running);
    let mut after = before.clone();
    failing.remove(&intent.name);
    let job = Job {
        apply: BTreeSet::from([intent.name.clone()]),
        withdrawn,
        ..Job::default()
    };
    after.set(intent, running);
    let intents: Vec<Intent> = after.intents().cloned().collect();
    let state = PlanState {
        revert_enabled: spec.revert.enabled,
        intents: &intents,
        failing: &failing,
        revision: snapshot.revision,
        deviations: after.deviations().cloned().collect(),
        running,
    };
    let plan = plan_set(state, &job, &BTreeSet::new(), None);
    let remaining: Vec<Deviation> = after
        .deviations()
        .filter(|d| !plan.owners.contains_key(&d.path))
        .cloned()
        .collect();
    let still: HashSet<&Key> = remaining.iter().map(|d| &d.path).collect();
    let clears = before
        .deviations()
        .filter(|d| !still.contains(&d.path))
        .cloned()
        .collect();
    let set = if plan.is_empty() {
        None
    } else {
        Some(set_request(spec, running, &plan.updates, &plan.deletes)?)
    };
    Ok(DryRun {
        revision: snapshot.revision,
        set,
        clears,
        remaining,
    })
}

#[cfg(test)]
mod tests {
    use netsync_core::running::Subtree;
    use netsync_proto::gnmi::TypedValue;
    use netsync_proto::gnmi::typed_value::Value as V;
    use netsync_proto::netsync::v1 as pb;

    use super::*;

    fn spec(encoding: pb::Encoding, revert: bool) -> DatastoreSpec {
        crate::convert::datastore_from_proto(
            pb::Datastore {
                name: "r1".into(),
                target: Some(pb::Target {
                    address: "127.0.0.1:57400".into(),
                    encoding: encoding as i32,
                    ..Default::default()
                }),
                revert: Some(pb::RevertConfig {
                    enabled: revert,
                    debounce: None,
                }),
                ..Default::default()
            },
            "datastore",
        )
        .unwrap()
    }

    fn typed(v: V) -> Value {
        TypedValue { value: Some(v) }
    }

    fn string(s: &str) -> Value {
        typed(V::StringVal(s.into()))
    }

    fn ietf(s: &str) -> Value {
        typed(V::JsonIetfVal(s.into()))
    }

    fn intent(name: &str, priority: i32, updates: &[(&str, Value)], deletes: &[&str]) -> Intent {
        Intent {
            name: name.into(),
            priority,
            updates: updates
                .iter()
                .map(|(k, v)| (Key::from(*k), v.clone()))
                .collect(),
            deletes: deletes
                .iter()
                .map(|p| Subtree::new(&Path::parse(p).unwrap()))
                .collect(),
            non_revertive: false,
            revision: 0,
        }
    }

    /// Running of a JSON_IETF device at revision 7, and three intents
    /// deviating from it: `other` (revertive) on /c, `quiet`
    /// (non-revertive) on /b, `stuck` (FAILING) on /d, which is missing.
    fn world() -> (Snapshot, Vec<Intent>, BTreeSet<String>) {
        let running = Running::from_leaves([
            (Key::from("/a"), ietf("\"x\"")),
            (Key::from("/b"), ietf("1")),
            (Key::from("/c"), ietf("\"drift\"")),
        ]);
        let mut quiet = intent("quiet", 5, &[("/b", typed(V::IntVal(2)))], &[]);
        quiet.non_revertive = true;
        let intents = vec![
            intent("other", 5, &[("/c", string("ok"))], &[]),
            quiet,
            intent("stuck", 5, &[("/d", string("s"))], &[]),
        ];
        let snapshot = Snapshot {
            revision: 7,
            time: None,
            running,
        };
        (snapshot, intents, BTreeSet::from(["stuck".to_string()]))
    }

    fn paths(deviations: &[Deviation]) -> Vec<(String, String)> {
        deviations
            .iter()
            .map(|d| (d.path.to_string(), d.intent.clone()))
            .collect()
    }

    fn updates(set: &gnmi::SetRequest) -> Vec<(String, Value)> {
        set.update
            .iter()
            .map(|u| {
                (
                    Path::from_gnmi(None, u.path.as_ref().unwrap())
                        .unwrap()
                        .to_string(),
                    u.val.clone().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_dry_run_plans_the_jobs_first_set_in_the_devices_encoding() {
        let (snapshot, intents, failing) = world();
        // Sets /a, and wants /b absent, which `quiet` (priority 5) decides.
        let new = intent("new", 10, &[("/a", string("y"))], &["/b"]);
        let spec = spec(pb::Encoding::JsonIetf, true);
        let plan = plan_write(&spec, &snapshot, intents, failing, new).unwrap();
        assert_eq!(plan.revision, 7);
        let set = plan.set.expect("something to send");
        // Its own leaf, and the revertive drift every job reverts while
        // revert is enabled; values as the JSON_IETF device writes them.
        assert_eq!(
            updates(&set),
            vec![("/a".into(), ietf("\"y\"")), ("/c".into(), ietf("\"ok\""))]
        );
        assert!(set.delete.is_empty(), "{set:?}");
        assert_eq!(paths(&plan.clears), [("/c".into(), "other".into())]);
        assert_eq!(
            paths(&plan.remaining),
            [("/b".into(), "quiet".into()), ("/d".into(), "stuck".into())]
        );
    }

    #[test]
    fn with_revert_disabled_a_write_still_applies_its_own_leaves_once() {
        let (snapshot, intents, failing) = world();
        let new = intent("new", 10, &[("/a", string("y"))], &[]);
        let spec = spec(pb::Encoding::JsonIetf, false);
        let plan = plan_write(&spec, &snapshot, intents, failing, new).unwrap();
        let set = plan.set.expect("something to send");
        assert_eq!(updates(&set), vec![("/a".into(), ietf("\"y\""))]);
        assert!(plan.clears.is_empty(), "{:?}", plan.clears);
        assert_eq!(plan.remaining.len(), 3, "{:?}", plan.remaining);
    }

    #[test]
    fn writing_a_failing_intent_again_plans_its_leaves() {
        let (snapshot, intents, failing) = world();
        let again = intent("stuck", 5, &[("/d", string("s"))], &[]);
        let spec = spec(pb::Encoding::Proto, false);
        let plan = plan_write(&spec, &snapshot, intents, failing, again).unwrap();
        // PROTO: the typed value as given (running has no /d to copy).
        assert_eq!(
            updates(&plan.set.unwrap()),
            vec![("/d".into(), string("s"))]
        );
        assert_eq!(paths(&plan.clears), [("/d".into(), "stuck".into())]);
    }

    #[test]
    fn an_intent_that_only_loses_plans_nothing() {
        let (snapshot, intents, failing) = world();
        // Priority 99 loses /c to `other`, and deletes /x, which is absent.
        let loser = intent("loser", 99, &[("/c", string("zzz"))], &["/x"]);
        let spec = spec(pb::Encoding::JsonIetf, false);
        let plan = plan_write(&spec, &snapshot, intents, failing, loser).unwrap();
        assert!(plan.set.is_none(), "{:?}", plan.set);
        assert!(plan.clears.is_empty());
        assert_eq!(plan.remaining.len(), 3);
    }

    #[test]
    fn a_dry_run_on_a_proto_device_writes_json_values_as_the_device_types_them() {
        let running = Running::from_leaves([(Key::from("/mtu"), typed(V::UintVal(1500)))]);
        let snapshot = Snapshot {
            revision: 3,
            time: None,
            running,
        };
        let new = intent("mtu", 1, &[("/mtu", ietf("\"9000\""))], &[]);
        let spec = spec(pb::Encoding::Proto, true);
        let plan = plan_write(&spec, &snapshot, Vec::new(), BTreeSet::new(), new).unwrap();
        assert_eq!(
            updates(&plan.set.unwrap()),
            vec![("/mtu".into(), typed(V::UintVal(9000)))]
        );
    }

    #[test]
    fn rewriting_an_intent_without_a_leaf_plans_its_withdrawal() {
        let running = Running::from_leaves([
            (Key::from("/a"), string("mine")),
            (Key::from("/b"), string("mine too")),
        ]);
        let snapshot = Snapshot {
            revision: 4,
            time: None,
            running,
        };
        let old = intent(
            "i",
            1,
            &[("/a", string("mine")), ("/b", string("mine too"))],
            &[],
        );
        let new = intent("i", 1, &[("/a", string("mine"))], &[]);
        let spec = spec(pb::Encoding::Proto, false);
        let plan = plan_write(&spec, &snapshot, vec![old], BTreeSet::new(), new).unwrap();
        let set = plan.set.expect("the dropped leaf is withdrawn");
        assert!(set.update.is_empty(), "{set:?}");
        let deletes: Vec<String> = set
            .delete
            .iter()
            .map(|p| Path::from_gnmi(None, p).unwrap().to_string())
            .collect();
        assert_eq!(deletes, ["/b"]);
    }
}
