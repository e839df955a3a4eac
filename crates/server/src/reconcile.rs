//! Reconcile jobs: bring a device to its intents with one atomic gNMI Set,
//! decoupled from the sync, durable in SQLite, retried, and serialised with
//! intent writes. Apply (after SetIntent/DeleteIntent) and revert (after a
//! commit shows drift) are the same mechanism.
//!
//! Each datastore has one worker task. Jobs are rows of `reconcile_jobs`: at
//! most one queued and one running per datastore; a new trigger coalesces into
//! the queued row. What a job sets is computed when it runs, from the
//! deviations at that moment, so a coalesced job still does exactly what is
//! needed. A job that was running when the process stopped runs again after
//! a restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use netsync_core::Path;
use netsync_core::running::{Key, Value};
use netsync_core::sync::{EventKind, RevertEvent, RevertPhase, SyncHandle};
use netsync_proto::gnmi;
use sqlx::Row;
use tokio::sync::{Mutex, Notify, broadcast, watch};
use tracing::Instrument;

use crate::error::Error;
use crate::store::{Store, from_micros, to_micros};

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

/// Why a job is queued.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// An intent was set: apply it (even if it is non-revertive), at once.
    Apply(String),
    /// An intent was deleted: remove these leaves from the device unless
    /// another intent provides them, at once.
    Withdraw(Vec<Key>),
    /// A commit showed drift in revertive intents: revert after `debounce`.
    Revert(Duration),
}

/// A queued or running job.
#[derive(Debug, Clone, Default)]
struct Job {
    not_before: Option<SystemTime>,
    apply: BTreeSet<String>,
    withdrawn: BTreeSet<Key>,
}

impl Job {
    /// What the job was queued for, as traces show it: `apply`, `withdraw`,
    /// both (`apply+withdraw`, coalesced), or `revert` (neither: drift only).
    fn kind(&self) -> &'static str {
        match (self.apply.is_empty(), self.withdrawn.is_empty()) {
            (false, true) => "apply",
            (true, false) => "withdraw",
            (false, false) => "apply+withdraw",
            (true, true) => "revert",
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

/// Jobs in the queue of each datastore that has any: `(datastore, running, count)`.
/// `running` is false for the queued job, true for the one being run.
pub async fn queue_depth(store: &Store) -> Result<Vec<(String, bool, u64)>, Error> {
    let rows = sqlx::query(
        "SELECT datastore, running, COUNT(*) AS jobs FROM reconcile_jobs GROUP BY datastore, running",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let jobs: i64 = row.try_get("jobs")?;
            Ok((
                row.try_get("datastore")?,
                row.try_get("running")?,
                u64::try_from(jobs).unwrap_or(0),
            ))
        })
        .collect()
}

/// Queues a job for `datastore` (coalescing into a queued one). Returns
/// whether a new job was created (rather than merged).
pub async fn enqueue(store: &Store, datastore: &str, trigger: &Trigger) -> Result<bool, Error> {
    let now = SystemTime::now();
    let (not_before, apply, withdrawn) = match trigger {
        Trigger::Apply(name) => (now, vec![name.clone()], vec![]),
        Trigger::Withdraw(paths) => (now, vec![], paths.iter().map(|k| k.to_string()).collect()),
        Trigger::Revert(debounce) => (now + *debounce, vec![], vec![]),
    };
    let mut tx = store.pool().begin().await?;
    let existing = sqlx::query(
        "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs WHERE datastore = ? AND running = 0",
    )
    .bind(datastore)
    .fetch_optional(&mut *tx)
    .await?;
    let mut job = match &existing {
        Some(row) => decode(row)?,
        None => Job::default(),
    };
    // The earliest start wins: under steady drift a revert still runs once
    // the first debounce has passed.
    job.not_before = Some(job.not_before.map_or(not_before, |t| t.min(not_before)));
    job.apply.extend(apply);
    job.withdrawn.extend(withdrawn.into_iter().map(Key::from));
    sqlx::query(
        "INSERT INTO reconcile_jobs (datastore, running, not_before_us, apply, withdrawn) VALUES (?, 0, ?, ?, ?) \
         ON CONFLICT (datastore, running) DO UPDATE SET not_before_us = excluded.not_before_us, \
         apply = excluded.apply, withdrawn = excluded.withdrawn",
    )
    .bind(datastore)
    .bind(to_micros(job.not_before.unwrap_or(now)))
    .bind(serde_json::to_string(&job.apply).unwrap_or_default())
    .bind(serde_json::to_string(&job.withdrawn.iter().map(|k| k.to_string()).collect::<Vec<_>>()).unwrap_or_default())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(existing.is_none())
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<Job, Error> {
    let apply: String = row.try_get("apply")?;
    let withdrawn: String = row.try_get("withdrawn")?;
    let corrupt = |e: serde_json::Error| Error::Corrupt(format!("reconcile job: {e}"));
    Ok(Job {
        not_before: Some(from_micros(row.try_get("not_before_us")?)),
        apply: serde_json::from_str(&apply).map_err(corrupt)?,
        withdrawn: serde_json::from_str::<Vec<String>>(&withdrawn)
            .map_err(corrupt)?
            .into_iter()
            .map(Key::from)
            .collect(),
    })
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
        if let Err(e) = self.recover().await {
            tracing::error!(datastore = %name, error = %e, "cannot recover reconcile jobs");
        }
        let mut events = self.sync.subscribe();
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
                        tracing::error!(datastore = %name, error = %e, "cannot clear a finished job");
                    }
                }
                Err(wait) => {
                    let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
                    tokio::select! {
                        () = sleep => {}
                        () = self.wake.notified() => {}
                        event = events.recv() => self.on_event(event).await,
                        () = stopped(&mut stop) => return,
                    }
                }
            }
        }
    }

    /// A job that was running when the process stopped is queued again.
    async fn recover(&self) -> Result<(), Error> {
        let name = self.sync.name();
        let running = sqlx::query(
            "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs WHERE datastore = ? AND running = 1",
        )
        .bind(name)
        .fetch_optional(self.store.pool())
        .await?;
        if let Some(row) = running {
            let job = decode(&row)?;
            for intent in job.apply {
                enqueue(&self.store, name, &Trigger::Apply(intent)).await?;
            }
            enqueue(
                &self.store,
                name,
                &Trigger::Withdraw(job.withdrawn.into_iter().collect()),
            )
            .await?;
            sqlx::query("DELETE FROM reconcile_jobs WHERE datastore = ? AND running = 1")
                .bind(name)
                .execute(self.store.pool())
                .await?;
        }
        Ok(())
    }

    /// Takes the queued job if it is due; else how long until it is.
    async fn take_due(&self) -> Result<Result<Job, Option<Duration>>, Error> {
        let name = self.sync.name();
        let mut tx = self.store.pool().begin().await?;
        let Some(row) = sqlx::query(
            "SELECT not_before_us, apply, withdrawn FROM reconcile_jobs WHERE datastore = ? AND running = 0",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(None));
        };
        let job = decode(&row)?;
        let now = SystemTime::now();
        if let Some(wait) = job.not_before.and_then(|t| t.duration_since(now).ok())
            && !wait.is_zero()
        {
            return Ok(Err(Some(wait)));
        }
        sqlx::query("UPDATE reconcile_jobs SET running = 1 WHERE datastore = ? AND running = 0")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(job))
    }

    async fn finish(&self) -> Result<(), Error> {
        sqlx::query("DELETE FROM reconcile_jobs WHERE datastore = ? AND running = 1")
            .bind(self.sync.name())
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// After a commit: drift in revertive intents queues a revert.
    async fn on_event(
        &self,
        event: Result<Arc<netsync_core::sync::Event>, broadcast::error::RecvError>,
    ) {
        let relevant = match &event {
            Ok(e) => matches!(e.kind, EventKind::Commit { .. }),
            // Missed events: look at the deviations as they are now.
            Err(broadcast::error::RecvError::Lagged(_)) => true,
            Err(broadcast::error::RecvError::Closed) => false,
        };
        let revert = &self.sync.spec().revert;
        if !relevant || !revert.enabled {
            return;
        }
        let (updates, deletes) = self.plan(&Job::default());
        if updates.is_empty() && deletes.is_empty() {
            return;
        }
        match enqueue(
            &self.store,
            self.sync.name(),
            &Trigger::Revert(revert.debounce),
        )
        .await
        {
            Ok(created) => {
                if created {
                    self.publish(RevertPhase::Queued, 0, &updates, &deletes, String::new());
                }
            }
            Err(e) => {
                tracing::error!(datastore = %self.sync.name(), error = %e, "cannot queue a revert")
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
                        val: Some(v.clone()),
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
            updates
                .iter()
                .all(|(k, v)| s.running.get(k).as_ref() == Some(v))
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
