//! Reconcile jobs: bring a device to its intents with one atomic gNMI Set,
//! decoupled from the sync, durable in SQLite, retried, and serialised with
//! intent writes. Apply (after SetIntent/DeleteIntent) and revert (after a
//! commit shows drift) are the same mechanism.
//!
//! Each datastore has one worker task. Jobs are rows of `reconcile_jobs`: at
//! most one queued and one running per datastore; a new trigger coalesces into
//! the queued row. What a job sets is computed when it runs, from the
//! deviations at that moment, so a coalesced job still does exactly what is
//! needed. A job that was running when the process stopped (or whose end
//! could not be recorded) is claimed again and runs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use netsync_core::Path;
use netsync_core::running::{Key, Value};
use netsync_core::sync::{EventKind, RevertEvent, RevertPhase, SyncHandle};
use netsync_core::value;
use netsync_proto::gnmi;
use tokio::sync::{Mutex, Notify, broadcast, watch};
use tracing::Instrument;

use crate::error::Error;
use crate::jobs::{self, Job, Trigger};
use crate::store::Store;

/// Timing of reconcile jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Longest wait for one Set.
    pub attempt_timeout: Duration,
    /// Attempts before a job is FAILED.
    pub max_attempts: u32,
    /// First retry delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long running may take to show a Set's result.
    pub confirm_timeout: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(60),
            max_attempts: 5,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(30),
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device took the Set and running shows it.
    Applied,
    /// A permanent error, or the last attempt failed.
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

/// Jobs of one datastore that ended, by outcome, since its worker started.
#[derive(Debug, Default)]
pub struct JobStats {
    ended: [AtomicU64; Outcome::ALL.len()],
}

impl JobStats {
    /// Jobs that ended with `outcome`.
    pub fn ended(&self, outcome: Outcome) -> u64 {
        self.ended[outcome as usize].load(Ordering::Relaxed)
    }

    fn record(&self, outcome: Outcome) {
        self.ended[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
    /// Held by a running job and by intent writes of this datastore.
    pub lock: Arc<Mutex<()>>,
    /// Where ended jobs are counted.
    pub stats: Arc<JobStats>,
}

impl Worker {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.sync.name().to_string();
        let mut events = self.sync.subscribe();
        // A revert that could not be queued, to queue once the store takes it.
        let mut recheck = false;
        loop {
            let next = match self.take_due().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(datastore = %name, error = %e, "reconcile queue unreadable");
                    Err(Some(Duration::from_secs(1)))
                }
            };
            match next {
                Ok(job) => {
                    // A trace of its own per job (not a child of the worker's span).
                    let span = tracing::info_span!(parent: None, "reconcile", datastore = %name,
                        kind = job.kind(), attempts = tracing::field::Empty,
                        outcome = tracing::field::Empty);
                    tokio::select! {
                        outcome = self.execute(job).instrument(span.clone()) => {
                            span.record("outcome", outcome.as_str());
                            self.stats.record(outcome);
                        }
                        () = stopped(&mut stop) => return,
                    }
                    if let Err(e) = self.finish().await {
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
                                recheck = !self.on_event(missed).await;
                            }
                        }
                        () = self.wake.notified() => {}
                        event = events.recv() => recheck = !self.on_event(event).await,
                        () = stopped(&mut stop) => return,
                    }
                }
            }
        }
    }

    /// Claims the due job (or one left running: a job interrupted by a
    /// restart runs again); else how long until the queued one is due.
    async fn take_due(&self) -> Result<Result<Job, Option<Duration>>, Error> {
        jobs::take_due(&self.store, self.sync.name()).await
    }

    async fn finish(&self) -> Result<(), Error> {
        jobs::finish(&self.store, self.sync.name()).await
    }

    /// After a commit: drift in revertive intents queues a revert. Returns
    /// false if the revert could not be queued (the store failed): the
    /// caller looks again shortly, since no later commit may come to do it.
    async fn on_event(
        &self,
        event: Result<Arc<netsync_core::sync::Event>, broadcast::error::RecvError>,
    ) -> bool {
        let relevant = match &event {
            Ok(e) => matches!(e.kind, EventKind::Commit { .. }),
            // Missed events: look at the deviations as they are now.
            Err(broadcast::error::RecvError::Lagged(_)) => true,
            Err(broadcast::error::RecvError::Closed) => false,
        };
        let revert = &self.sync.spec().revert;
        if !relevant || !revert.enabled {
            return true;
        }
        let (updates, deletes) = self.plan(&Job::default());
        if updates.is_empty() && deletes.is_empty() {
            return true;
        }
        match jobs::enqueue_alone(
            &self.store,
            self.sync.name(),
            Trigger::Revert(revert.debounce),
        )
        .await
        {
            Ok(created) => {
                if created {
                    self.publish(RevertPhase::Queued, 0, &updates, &deletes, String::new());
                }
                true
            }
            Err(e) => {
                tracing::warn!(datastore = %self.sync.name(), error = %e, "cannot queue a revert yet; trying again shortly");
                false
            }
        }
    }

    /// The Set that brings the device to its intents now: deviations of
    /// revertive intents (when revert is enabled) and of the intents the job
    /// applies, plus withdrawn leaves nobody provides any more.
    fn plan(&self, job: &Job) -> (Vec<(Key, Value)>, Vec<Key>) {
        let revert_enabled = self.sync.spec().revert.enabled;
        let intents = self.sync.intents();
        let non_revertive: BTreeSet<&str> = intents
            .iter()
            .filter(|i| i.non_revertive)
            .map(|i| i.name.as_str())
            .collect();
        let (_, deviations) = self.sync.deviations();
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for d in deviations {
            let wanted = job.apply.contains(&d.intent)
                || (revert_enabled && !non_revertive.contains(d.intent.as_str()));
            if !wanted {
                continue;
            }
            match d.expected {
                Some(value) => updates.push((d.path, value)),
                None => deletes.push(d.path),
            }
        }
        let running = self.sync.snapshot().running;
        for path in &job.withdrawn {
            let claimed = intents.iter().any(|i| i.updates.contains_key(path));
            if !claimed && running.get(path).is_some() && !deletes.contains(path) {
                deletes.push(path.clone());
            }
        }
        (updates, deletes)
    }

    async fn execute(&self, job: Job) -> Outcome {
        let _serialised = self.lock.lock().await;
        let (updates, deletes) = self.plan(&job);
        if updates.is_empty() && deletes.is_empty() {
            return Outcome::NothingToDo;
        }
        let mut delay = self.config.backoff_min;
        for attempt in 1..=self.config.max_attempts {
            // As i64: OpenTelemetry attributes have no unsigned integers.
            tracing::Span::current().record("attempts", i64::from(attempt));
            self.publish(
                RevertPhase::Applying,
                attempt,
                &updates,
                &deletes,
                String::new(),
            );
            let span = tracing::info_span!(
                "reconcile_attempt",
                attempt = i64::from(attempt),
                error = tracing::field::Empty
            );
            let result = self
                .attempt(&updates, &deletes)
                .instrument(span.clone())
                .await;
            if let Err((error, _)) = &result {
                span.record("error", error.as_str());
            }
            drop(span);
            let error = match result {
                Ok(()) => {
                    self.publish(
                        RevertPhase::Applied,
                        attempt,
                        &updates,
                        &deletes,
                        String::new(),
                    );
                    return Outcome::Applied;
                }
                Err((error, retryable)) if !retryable => {
                    self.publish(RevertPhase::Failed, attempt, &updates, &deletes, error);
                    return Outcome::Failed;
                }
                Err((error, _)) => error,
            };
            tracing::warn!(datastore = %self.sync.name(), attempt, %error, "reconcile attempt failed");
            if attempt == self.config.max_attempts {
                let error = format!("gave up after {attempt} attempts: {error}");
                self.publish(RevertPhase::Failed, attempt, &updates, &deletes, error);
                return Outcome::Failed;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.config.backoff_max);
        }
        // Only with max_attempts 0: no attempt was allowed.
        Outcome::Failed
    }

    /// One Set, then the wait until running shows its result. The error says
    /// whether another attempt may succeed.
    async fn attempt(
        &self,
        updates: &[(Key, Value)],
        deletes: &[Key],
    ) -> Result<(), (String, bool)> {
        let to_gnmi = |k: &Key| {
            Path::parse(k)
                .map(|p| p.to_gnmi())
                .map_err(|e| (e.to_string(), false))
        };
        let target_name = &self.sync.spec().target.target_name;
        // Values go in the device's encoding; what running holds for a leaf
        // shows how the device writes it (see `value::for_device`).
        let encoding = self.sync.spec().target.encoding;
        let running = self.sync.snapshot().running;
        let request = gnmi::SetRequest {
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
                .collect::<Result<_, (String, bool)>>()?,
            ..Default::default()
        };
        let target = self.sync.target();
        match tokio::time::timeout(self.config.attempt_timeout, target.set(request)).await {
            Err(_) => {
                return Err((
                    format!(
                        "the device did not answer the Set within {:?}",
                        self.config.attempt_timeout
                    ),
                    true,
                ));
            }
            Ok(Err(e)) => return Err((format!("Set refused: {e}"), e.is_retryable())),
            Ok(Ok(_)) => {}
        }
        let mut snapshots = self.sync.watch_snapshot();
        let shows_result = |s: &netsync_core::sync::Snapshot| {
            updates.iter().all(|(k, v)| s.running.holds(k, v))
                && deletes.iter().all(|k| !s.running.contains(k))
        };
        let confirmed = tokio::time::timeout(self.config.confirm_timeout, async {
            snapshots.wait_for(|s| shows_result(s)).await.map(|_| ())
        })
        .await;
        match confirmed {
            Ok(Ok(())) => Ok(()),
            _ => Err((
                format!(
                    "the device accepted the Set but running did not show it within {:?}",
                    self.config.confirm_timeout
                ),
                true,
            )),
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
