//! Each intent's status on the device (`Intent.status`), and what the
//! reconcile worker of a datastore remembers to tell a Set that stuck from
//! one that did not: the leaves it set recently, and how many Sets of each
//! intent in a row did not stick. Also the generation that intent writes
//! bump, which makes a running job plan again.
//!
//! Kept in memory. A restart starts every intent PENDING, and the worker
//! marks APPLIED those that running shows once the sync is IN_SYNC (or once
//! a job brings them there); a FAILING intent is therefore tried again after
//! a restart, as after a Resync. In replica mode the statuses are also
//! recorded in the database for the other replicas and for the next owner
//! (see [`crate::status_record`]), which starts from them
//! ([`Tracker::restore`]): a failover is not a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use netsync_core::running::Key;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Where an intent stands on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentState {
    /// Written, and no job has seen running hold it since.
    Pending,
    /// A job saw running hold it.
    Applied,
    /// Its Sets did not stick `max_failures` times in a row: its leaves are
    /// not set again until it is written again or the datastore resynced.
    Failing,
}

/// An intent's status, as `Intent.status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentStatus {
    /// The state.
    pub state: IntentState,
    /// The revision at which running was seen to hold it (while APPLIED).
    pub applied_revision: u64,
    /// Sets sent carrying its leaves since it was written (or a Resync).
    pub attempts: u32,
    /// Why the last of those failed; empty once it is APPLIED.
    pub last_error: String,
}

impl IntentStatus {
    /// The status of an intent just written.
    pub fn pending() -> Self {
        Self {
            state: IntentState::Pending,
            applied_revision: 0,
            attempts: 0,
            last_error: String::new(),
        }
    }

    /// The status of a stored intent that today's validation refuses
    /// (`error` says why): FAILING until written again or deleted.
    pub fn unusable(error: String) -> Self {
        Self {
            state: IntentState::Failing,
            applied_revision: 0,
            attempts: 0,
            last_error: error,
        }
    }
}

/// Who a planned leaf is for: the intent that decides it, or
/// [`WITHDRAWAL`] for a leaf of a deleted intent that nobody claims.
pub type Owner = String;

/// The owner of withdrawn leaves (an intent name is never empty). Its
/// failures are counted like an intent's, and never shown.
pub const WITHDRAWAL: &str = "";

/// One intent's (or the withdrawals') status and failures in a row.
#[derive(Debug, Clone)]
struct Track {
    status: IntentStatus,
    /// Sets in a row that did not stick.
    failures: u32,
    /// When the last of them was found out.
    failed_at: Option<Instant>,
    /// Stored in a form today's validation refuses (see
    /// [`Tracker::unusable`]): FAILING until written again or deleted, and
    /// not tried again by a Resync, which cannot make it usable.
    unusable: bool,
    /// Which write of the intent this is about (see [`Tracker::statuses`]).
    version: u64,
}

impl Track {
    fn new() -> Self {
        Self {
            status: IntentStatus::pending(),
            failures: 0,
            failed_at: None,
            unusable: false,
            version: 0,
        }
    }
}

/// A leaf a Set carried, until it has held for `settle_time`.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    owner: Owner,
    /// What a failure of this leaf is reported as.
    note: String,
}

#[derive(Debug)]
struct State {
    intents: HashMap<String, Track>,
    withdrawals: Track,
    sent: HashMap<Key, Sent>,
    /// Intent writes seen (the versions of [`Track`]).
    writes: u64,
}

impl State {
    fn track(&mut self, owner: &str) -> Option<&mut Track> {
        if owner == WITHDRAWAL {
            Some(&mut self.withdrawals)
        } else {
            self.intents.get_mut(owner)
        }
    }
}

/// What [`Tracker::judge`] found before a Set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Owners whose previous Set did not stick, with why.
    pub failed: Vec<(Owner, String)>,
    /// Of those, the ones that reached `max_failures` now: FAILING (or, for
    /// [`WITHDRAWAL`], given up), with the error their status shows.
    pub newly_failing: Vec<(Owner, String)>,
    /// How long to wait before the Set (the backoff of its most-failed owner).
    pub wait: Option<Duration>,
}

/// When a Set counts as stuck, how long to back off after one that did not,
/// and when an intent is FAILING (from `ReconcileConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First backoff; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// A leaf set again sooner than this after a Set did not stick.
    pub settle_time: Duration,
    /// Failures in a row that make an intent FAILING; 0: never.
    pub max_failures: u32,
}

/// Delay before the Set that follows `failures` Sets in a row that did not
/// stick: none after the first (drift that arrived with the Set's echo is put
/// back at once), then `backoff_min` doubling up to `backoff_max`, as a
/// Kubernetes workqueue's rate limiter does.
pub fn backoff(config: &Policy, failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => config
            .backoff_min
            .saturating_mul(1 << (n - 2).min(30))
            .min(config.backoff_max),
    }
}

/// What the reconcile worker of one datastore remembers, shared with the
/// intent writes of that datastore and with metrics.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<State>,
    generation: watch::Sender<u64>,
    /// Sets found not to have stuck.
    not_stuck: AtomicU64,
    /// Intents FAILING now.
    failing: AtomicU64,
    /// Notified when a status changes (see [`Tracker::changes`]).
    changed: Arc<Notify>,
}

impl Tracker {
    /// A tracker for a datastore whose intents are `names`, all PENDING.
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            state: Mutex::new(State {
                intents: names.into_iter().map(|n| (n, Track::new())).collect(),
                withdrawals: Track::new(),
                sent: HashMap::new(),
                writes: 0,
            }),
            generation: watch::Sender::new(0),
            not_stuck: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Notified (one stored permit, so none is lost between two waits) when
    /// a status may have changed: what the recorder of the statuses waits
    /// for. A notification costs the changer one atomic operation, whoever
    /// listens.
    pub fn changes(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    fn announce(&self) {
        self.changed.notify_one();
    }

    /// Every intent's status now, by name, with the version of the intent
    /// it is about: a number that changes whenever the intent is written
    /// again (or deleted and written), so that a status equal to an earlier
    /// one is still told apart when it is about a later write.
    pub fn statuses(&self) -> HashMap<String, (u64, IntentStatus)> {
        self.lock()
            .intents
            .iter()
            .map(|(name, track)| (name.clone(), (track.version, track.status.clone())))
            .collect()
    }

    /// Starts the intents of `stored` from these statuses (recorded by an
    /// earlier owner, see [`crate::status_record`]) instead of PENDING: a
    /// FAILING intent stays FAILING, an APPLIED one keeps its revision.
    /// Failures in a row start at zero. Names this tracker does not know are
    /// ignored. Called at load, before the worker starts.
    pub fn restore(&self, stored: &HashMap<String, IntentStatus>) {
        let mut state = self.lock();
        for (name, status) in stored {
            if let Some(track) = state.intents.get_mut(name) {
                track.status = status.clone();
            }
        }
        self.count_failing(&state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn count_failing(&self, state: &State) {
        let failing = state
            .intents
            .values()
            .filter(|t| t.status.state == IntentState::Failing)
            .count();
        self.failing.store(failing as u64, Ordering::Relaxed);
    }

    /// Sets found not to have stuck (a leaf set again within the settle
    /// time), since the worker started.
    pub fn not_stuck(&self) -> u64 {
        self.not_stuck.load(Ordering::Relaxed)
    }

    /// Intents FAILING now.
    pub fn failing_count(&self) -> u64 {
        self.failing.load(Ordering::Relaxed)
    }

    /// A receiver of the generation, which every intent write (and Resync)
    /// bumps.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The status of intent `name` (PENDING if it is not known).
    pub fn status(&self, name: &str) -> IntentStatus {
        self.lock()
            .intents
            .get(name)
            .map_or_else(IntentStatus::pending, |t| t.status.clone())
    }

    /// Names of the FAILING intents.
    pub fn failing(&self) -> BTreeSet<String> {
        self.lock()
            .intents
            .iter()
            .filter(|(_, t)| t.status.state == IntentState::Failing)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Intent `name` was written: PENDING, its failures forgotten; running
    /// jobs plan again. Returns its status.
    pub fn written(&self, name: &str) -> IntentStatus {
        let mut state = self.lock();
        state.writes += 1;
        let version = state.writes;
        state.intents.insert(
            name.to_string(),
            Track {
                version,
                ..Track::new()
            },
        );
        state.sent.retain(|_, s| s.owner != name);
        self.count_failing(&state);
        drop(state);
        self.bump();
        self.announce();
        IntentStatus::pending()
    }

    /// Intent `name` is stored, but in a form today's validation refuses
    /// (`error` says why): it was never given to the engine's intents, so no
    /// job sets its leaves, and it is FAILING with `error` until it is
    /// written again (SetIntent) or deleted. Called at load, before the
    /// worker starts.
    pub fn unusable(&self, name: &str, error: String) {
        let mut state = self.lock();
        state.writes += 1;
        let version = state.writes;
        state.intents.insert(
            name.to_string(),
            Track {
                status: IntentStatus::unusable(error),
                unusable: true,
                version,
                ..Track::new()
            },
        );
        self.count_failing(&state);
        drop(state);
        self.announce();
    }

    /// Intent `name` was deleted; running jobs plan again.
    pub fn removed(&self, name: &str) {
        let mut state = self.lock();
        state.intents.remove(name);
        state.sent.retain(|_, s| s.owner != name);
        self.count_failing(&state);
        drop(state);
        self.bump();
        self.announce();
    }

    /// The datastore is resynced: every FAILING intent is PENDING again and
    /// every failure forgotten; running jobs plan again. Returns the intents
    /// that were FAILING.
    pub fn resynced(&self) -> Vec<String> {
        let mut state = self.lock();
        let mut were_failing = Vec::new();
        for (name, track) in &mut state.intents {
            if track.unusable {
                continue;
            }
            if track.status.state == IntentState::Failing {
                were_failing.push(name.clone());
                *track = Track {
                    version: track.version,
                    ..Track::new()
                };
            } else {
                track.failures = 0;
                track.failed_at = None;
            }
        }
        state.withdrawals = Track::new();
        state.sent.clear();
        self.count_failing(&state);
        drop(state);
        self.bump();
        if !were_failing.is_empty() {
            self.announce();
        }
        were_failing.sort();
        were_failing
    }

    /// Before a Set of the leaves `owners` maps to their owners: a leaf that
    /// a Set carried less than `settle_time` ago is carried again, so that
    /// Set did not stick. Counts one failure per owner, marks owners that
    /// reach `max_failures` FAILING, and says how long to back off.
    pub fn judge(&self, owners: &BTreeMap<Key, Owner>, now: Instant, config: &Policy) -> Judgement {
        let mut state = self.lock();
        state
            .sent
            .retain(|_, s| now.saturating_duration_since(s.at) < config.settle_time);
        let mut failed: BTreeMap<Owner, String> = BTreeMap::new();
        for (leaf, owner) in owners {
            if let Some(sent) = state.sent.remove(leaf) {
                failed.entry(owner.clone()).or_insert(sent.note);
            }
        }
        let mut judgement = Judgement::default();
        for (owner, note) in failed {
            let Some(track) = state.track(&owner) else {
                continue;
            };
            track.failures += 1;
            track.failed_at = Some(now);
            track.status.last_error = note.clone();
            if config.max_failures > 0 && track.failures >= config.max_failures {
                let error = format!(
                    "{} Sets in a row did not stick (the last: {note}); netsync sets these \
                     leaves again once the intent is written again or the datastore is resynced",
                    track.failures
                );
                if owner == WITHDRAWAL {
                    *track = Track::new();
                } else {
                    track.status.state = IntentState::Failing;
                    track.status.applied_revision = 0;
                    track.status.last_error = error.clone();
                }
                judgement.newly_failing.push((owner.clone(), error));
            }
            judgement.failed.push((owner, note));
        }
        let planned: BTreeSet<&Owner> = owners.values().collect();
        let mut wait = Duration::ZERO;
        for owner in planned {
            let Some(track) = state.track(owner) else {
                continue;
            };
            let Some(failed_at) = track.failed_at else {
                continue;
            };
            if now.saturating_duration_since(failed_at) >= config.settle_time {
                // Its last failure is long past: this is a new start.
                track.failures = 0;
                track.failed_at = None;
                continue;
            }
            let until = failed_at + backoff(config, track.failures);
            wait = wait.max(until.saturating_duration_since(now));
        }
        judgement.wait = (!wait.is_zero()).then_some(wait);
        self.count_failing(&state);
        if !judgement.failed.is_empty() {
            self.announce();
        }
        self.not_stuck
            .fetch_add(judgement.failed.len() as u64, Ordering::Relaxed);
        judgement
    }

    /// A Set carrying the leaves of `owners` is sent: one more attempt each.
    pub fn sending<'a>(&self, owners: impl IntoIterator<Item = &'a Owner>) {
        let mut state = self.lock();
        for owner in owners.into_iter().collect::<BTreeSet<_>>() {
            if let Some(track) = state.track(owner) {
                track.status.attempts = track.status.attempts.saturating_add(1);
            }
        }
        drop(state);
        self.announce();
    }

    /// The device answered (or did not, within the confirm timeout) a Set
    /// of these leaves: each is remembered for `settle_time`, with what a
    /// failure of it would be reported as.
    pub fn answered(&self, leaves: impl IntoIterator<Item = (Key, Owner, String)>, now: Instant) {
        let mut state = self.lock();
        for (leaf, owner, note) in leaves {
            state.sent.insert(
                leaf,
                Sent {
                    at: now,
                    owner,
                    note,
                },
            );
        }
    }

    /// A Set of the leaves of `owners` failed for good (refused, or retried
    /// until the job gave up): one failure each, with `error`. Returns the
    /// owners that became FAILING, with their error.
    pub fn failed<'a>(
        &self,
        owners: impl IntoIterator<Item = &'a Owner>,
        error: &str,
        now: Instant,
        config: &Policy,
    ) -> Vec<(Owner, String)> {
        let mut state = self.lock();
        let mut newly_failing = Vec::new();
        for owner in owners.into_iter().collect::<BTreeSet<_>>() {
            let Some(track) = state.track(owner) else {
                continue;
            };
            track.failures += 1;
            track.failed_at = Some(now);
            track.status.last_error = error.to_string();
            if owner != WITHDRAWAL
                && config.max_failures > 0
                && track.failures >= config.max_failures
            {
                let error = format!(
                    "{} Sets in a row failed (the last: {error}); netsync sets these leaves \
                     again once the intent is written again or the datastore is resynced",
                    track.failures
                );
                track.status.state = IntentState::Failing;
                track.status.applied_revision = 0;
                track.status.last_error = error.clone();
                newly_failing.push((owner.clone(), error));
            }
        }
        self.count_failing(&state);
        drop(state);
        self.announce();
        newly_failing
    }

    /// An attempt for `owners` failed and is retried: their last error.
    pub fn note_error<'a>(&self, owners: impl IntoIterator<Item = &'a Owner>, error: &str) {
        let mut state = self.lock();
        for owner in owners {
            if let Some(track) = state.track(owner) {
                track.status.last_error = error.to_string();
            }
        }
        drop(state);
        self.announce();
    }

    /// Running at `revision` holds every intent not in `deviating`: those
    /// PENDING, and those in `involved` (whose leaves a job just set), are
    /// APPLIED at `revision`. FAILING ones stay so.
    pub fn confirm(&self, revision: u64, deviating: &BTreeSet<String>, involved: &BTreeSet<Owner>) {
        let mut state = self.lock();
        let mut changed = false;
        for (name, track) in &mut state.intents {
            let status = &mut track.status;
            if status.state == IntentState::Failing || deviating.contains(name) {
                continue;
            }
            if status.state == IntentState::Pending || involved.contains(name) {
                changed |= status.state != IntentState::Applied
                    || status.applied_revision != revision
                    || !status.last_error.is_empty();
                status.state = IntentState::Applied;
                status.applied_revision = revision;
                status.last_error.clear();
            }
        }
        drop(state);
        if changed {
            self.announce();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Policy {
        Policy {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5),
            settle_time: Duration::from_secs(60),
            max_failures: 4,
        }
    }

    fn owners(leaves: &[(&str, &str)]) -> BTreeMap<Key, Owner> {
        leaves
            .iter()
            .map(|(k, o)| (Key::from(*k), o.to_string()))
            .collect()
    }

    fn answered(tracker: &Tracker, leaves: &[(&str, &str)], now: Instant) {
        tracker.answered(
            leaves
                .iter()
                .map(|(k, o)| (Key::from(*k), o.to_string(), format!("{k} changed back"))),
            now,
        );
    }

    #[test]
    fn backoff_is_immediate_once_then_doubles_to_the_cap() {
        let c = config();
        let secs: Vec<u64> = (0..7).map(|n| backoff(&c, n).as_secs()).collect();
        assert_eq!(secs, [0, 0, 1, 2, 4, 5, 5]);
        assert_eq!(backoff(&c, u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn a_fight_backs_off_then_fails_and_a_write_resumes() {
        let c = config();
        let t = Tracker::new(["a".to_string(), "b".to_string()]);
        let plan = owners(&[("/x", "a")]);
        let start = Instant::now();
        // The first Set: nothing to judge yet.
        assert_eq!(t.judge(&plan, start, &c), Judgement::default());
        t.sending(plan.values());
        answered(&t, &[("/x", "a")], start);
        // Each time /x has to be set again within the settle time, the
        // previous Set did not stick.
        let mut waits = Vec::new();
        let mut now = start;
        for n in 1..=3 {
            now += Duration::from_millis(100);
            let j = t.judge(&plan, now, &c);
            assert_eq!(
                j.failed,
                vec![("a".to_string(), "/x changed back".to_string())]
            );
            assert!(j.newly_failing.is_empty(), "after {n}");
            waits.push(j.wait.unwrap_or_default().as_secs());
            now += j.wait.unwrap_or_default();
            // Judging again after the wait counts nothing twice.
            assert_eq!(t.judge(&plan, now, &c).failed, vec![]);
            t.sending(plan.values());
            answered(&t, &[("/x", "a")], now);
        }
        assert_eq!(waits, [0, 1, 2]);
        let j = t.judge(&plan, now + Duration::from_millis(1), &c);
        assert_eq!(j.newly_failing.len(), 1);
        let status = t.status("a");
        assert_eq!(status.state, IntentState::Failing);
        assert_eq!(status.attempts, 4);
        assert!(status.last_error.contains("4 Sets in a row"), "{status:?}");
        assert_eq!(t.failing(), BTreeSet::from(["a".to_string()]));
        assert_eq!(t.failing_count(), 1);
        assert_eq!(t.status("b").state, IntentState::Pending);

        // Writing it again starts over.
        let generation = t.generation();
        assert_eq!(t.written("a"), IntentStatus::pending());
        assert!(generation.has_changed().unwrap());
        assert_eq!(t.failing_count(), 0);
        assert_eq!(t.judge(&plan, now, &c), Judgement::default());
    }

    #[test]
    fn a_set_that_held_for_the_settle_time_stuck() {
        let c = config();
        let t = Tracker::new(["a".to_string()]);
        let plan = owners(&[("/x", "a")]);
        let now = Instant::now();
        answered(&t, &[("/x", "a")], now);
        let j = t.judge(&plan, now + Duration::from_secs(1), &c);
        assert_eq!(j.failed.len(), 1);
        answered(&t, &[("/x", "a")], now + Duration::from_secs(1));
        // Drift long after: a new start, no backoff, no failure.
        let later = now + Duration::from_secs(120);
        assert_eq!(t.judge(&plan, later, &c), Judgement::default());
        answered(&t, &[("/x", "a")], later);
        let j = t.judge(&plan, later + Duration::from_secs(1), &c);
        assert_eq!(j.failed.len(), 1);
        assert_eq!(
            j.wait, None,
            "the first failure of a new start waits nothing"
        );
    }

    #[test]
    fn refusals_count_and_resync_forgets_everything() {
        let c = config();
        let t = Tracker::new(["a".to_string()]);
        let now = Instant::now();
        let a = "a".to_string();
        for _ in 0..3 {
            assert!(t.failed([&a], "Set refused: no", now, &c).is_empty());
        }
        let failing = t.failed([&a], "Set refused: no", now, &c);
        assert_eq!(failing.len(), 1);
        assert!(failing[0].1.contains("Set refused: no"), "{failing:?}");
        assert_eq!(t.resynced(), vec!["a".to_string()]);
        assert_eq!(t.status("a"), IntentStatus::pending());
        assert!(t.failed([&a], "x", now, &c).is_empty());
    }

    #[test]
    fn confirm_applies_pending_and_involved_intents_only() {
        let t = Tracker::new(["a".to_string(), "b".to_string(), "c".to_string()]);
        t.confirm(7, &BTreeSet::from(["b".to_string()]), &BTreeSet::new());
        assert_eq!(t.status("a").state, IntentState::Applied);
        assert_eq!(t.status("a").applied_revision, 7);
        assert_eq!(t.status("b").state, IntentState::Pending);
        // An APPLIED intent moves to a later revision only when a job set it.
        t.confirm(9, &BTreeSet::new(), &BTreeSet::from(["c".to_string()]));
        assert_eq!(t.status("a").applied_revision, 7);
        assert_eq!(t.status("b").applied_revision, 9);
        assert_eq!(t.status("c").applied_revision, 9);
        // Withdrawals have no status; a failure of theirs gives up quietly.
        let c = Policy {
            max_failures: 1,
            ..config()
        };
        let now = Instant::now();
        answered(&t, &[("/gone", WITHDRAWAL)], now);
        let j = t.judge(&owners(&[("/gone", WITHDRAWAL)]), now, &c);
        assert_eq!(j.newly_failing.len(), 1);
        assert_eq!(t.failing_count(), 0);
    }

    #[test]
    fn an_unusable_stored_intent_stays_failing_until_written_again() {
        let t = Tracker::new(["ok".to_string()]);
        t.unusable("old", "outside sync.paths".into());
        assert_eq!(t.status("old").state, IntentState::Failing);
        assert_eq!(t.status("old").last_error, "outside sync.paths");
        assert_eq!(t.failing_count(), 1);
        // Neither a job's confirmation nor a Resync makes it usable.
        t.confirm(3, &BTreeSet::new(), &BTreeSet::new());
        assert!(t.resynced().is_empty());
        assert_eq!(t.status("old").state, IntentState::Failing);
        assert_eq!(t.status("ok").state, IntentState::Applied);
        // Written again: an ordinary PENDING intent.
        assert_eq!(t.written("old").state, IntentState::Pending);
        assert_eq!(t.failing_count(), 0);
    }
}
