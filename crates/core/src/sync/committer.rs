//! The committer task: takes a due segment out of `Pending` (an O(1) swap),
//! applies it to running, persists it, then publishes the snapshot and the
//! event; between commits it sorts batches of a dump still arriving. Owns
//! `durable` (the base of the next commit) and when the next commit is due.
//!
//! It never holds the `Pending` lock, or any other, across an await: each
//! lock is taken in a block that ends before the next `.await`. It awaits
//! only the store (`Persist`), work sent to the blocking pool (sorting, large
//! applies, preparing large events), and `committer_wake` or its deadline;
//! never the ingest, and never watchers (events go out on a broadcast
//! channel, which does not wait).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Committed, Control, Encoded, Event, EventKind, Payload, Persist, Shared, Snapshot};
use crate::running::{Batch, Delta};

/// Durations of the last few commits of changes (dumps excluded: they are
/// not on a deadline).
#[derive(Debug, Default)]
pub(super) struct CommitCosts {
    recent: [Duration; 8],
    next: usize,
}

impl CommitCosts {
    fn record(&mut self, took: Duration) {
        self.recent[self.next] = took;
        self.next = (self.next + 1) % self.recent.len();
    }

    /// How much earlier than `interval` after the first change a commit
    /// starts: twice the longest recent commit, at most half the interval.
    /// Twice, because on a loaded machine one commit can take twice as long
    /// as the one before (100 to 300 ms for the same work under churn), and
    /// a commit that outlasts the lead breaks the interval's promise.
    fn lead(&self, interval: Duration) -> Duration {
        let longest = self.recent.iter().max().copied().unwrap_or_default();
        (longest * 2).min(interval / 2)
    }
}

/// What the committer does next.
enum Work {
    /// Commit a delta.
    Commit {
        delta: Delta,
        /// Whether it is a replace (a dump).
        replace: bool,
        /// Whether it is a connection's initial dump.
        initial: bool,
        /// The connection it came from.
        generation: u64,
    },
    /// Sort a batch of dump `seq`.
    Sort { seq: u64, batch: Batch },
}

/// First pause before a failed persist is tried again; doubles up to
/// [`PERSIST_RETRY_MAX`].
const PERSIST_RETRY_MIN: Duration = Duration::from_millis(100);

/// Longest pause between attempts to persist a commit.
const PERSIST_RETRY_MAX: Duration = Duration::from_secs(5);

/// The committer task: takes deltas, applies them, persists, publishes.
pub(super) struct Committer {
    pub(super) shared: Arc<Shared>,
    pub(super) persist: Arc<dyn Persist>,
    pub(super) commit_interval: Duration,
    pub(super) threshold: usize,
    pub(super) sort_batch: usize,
    /// Most leaves running may hold: a commit past it is refused.
    pub(super) max_leaves: usize,
    /// How long recent commits of changes took.
    pub(super) costs: Mutex<CommitCosts>,
    /// Running at the last durable revision: the base of the next commit.
    /// Updated as soon as a commit is durable, before it is published, so a
    /// failure in between can never make a revision number be used twice.
    pub(super) durable: Mutex<Snapshot>,
}

impl Committer {
    /// Runs the committer; if it panics (a bug), the delta it held is gone, so
    /// it forces a resync and starts again.
    pub(super) async fn supervised(self) {
        loop {
            if AssertUnwindSafe(self.run()).catch_unwind().await.is_err() {
                self.drop_batch();
                self.fail("internal error in the committer".into());
                #[cfg(test)]
                self.shared.at(super::Point::CommitterFailed).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn run(&self) {
        loop {
            match self.next_work().await {
                Work::Commit {
                    delta,
                    replace,
                    initial,
                    generation,
                } => {
                    self.shared.ingest_wake.notify_one();
                    // A trace of its own per commit (not a child of the long-lived sync span).
                    let span = tracing::info_span!(parent: None, "commit", datastore = %self.shared.name,
                        replace, revision = tracing::field::Empty, updates = tracing::field::Empty,
                        deletes = tracing::field::Empty);
                    self.commit(delta, replace, initial, generation)
                        .instrument(span)
                        .await;
                }
                Work::Sort { seq, batch } => self.sort(seq, batch).await,
            }
        }
    }

    /// Sorts a batch of dump `seq` off the async workers and gives it back.
    async fn sort(&self, seq: u64, batch: Batch) {
        #[cfg(test)]
        self.shared.at(super::Point::SortTaken).await;
        let run = match tokio::task::spawn_blocking(move || batch.sort()).await {
            Ok(run) => run,
            Err(e) => {
                self.drop_batch();
                self.fail(format!("sorting a dump failed: {e}"));
                return;
            }
        };
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let pending = &mut *pending;
            pending.batch_out = false;
            // The dump may have been sealed meanwhile, or dropped (then so is
            // the run).
            // A sealed dump keeps its number when the next connection opens
            // a new dump (`dump_seq` moves on): its run goes back to it
            // whatever dump is open now.
            if pending.dump_seq == seq && pending.dump.is_some() {
                if let Some(dump) = pending.dump.as_mut() {
                    dump.add_run(run);
                }
            } else if let Some(sealed) = pending.sealed.as_mut().filter(|s| s.seq == seq) {
                sealed.delta.add_run(run);
            }
        }
        // A delete may be waiting for the batch.
        self.shared.ingest_wake.notify_one();
    }

    /// A batch out for sorting is lost: so is its dump.
    fn drop_batch(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.batch_out {
            pending.batch_out = false;
            pending.dump = None;
            let seq = pending.dump_seq;
            if pending.sealed.as_ref().is_some_and(|s| s.seq == seq) {
                pending.sealed = None;
            }
        }
        drop(pending);
        self.shared.ingest_wake.notify_one();
    }

    /// Waits until a commit is due and takes its delta (an O(1) swap), or
    /// until a batch of the dump is due for sorting.
    async fn next_work(&self) -> Work {
        loop {
            let wake = self.shared.committer_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let deadline = {
                let mut pending = self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(sealed) = pending.sealed.take() {
                    return Work::Commit {
                        delta: sealed.delta,
                        replace: true,
                        initial: sealed.initial,
                        generation: sealed.generation,
                    };
                }
                if !pending.batch_out
                    && let Some(batch) = pending
                        .dump
                        .as_mut()
                        .and_then(|d| d.take_batch(self.sort_batch))
                {
                    pending.batch_out = true;
                    return Work::Sort {
                        seq: pending.dump_seq,
                        batch,
                    };
                }
                // `commit_interval` bounds how long a change waits until it
                // is committed, so the commit starts early by what recent
                // ones took.
                let wait = self.commit_interval.saturating_sub(
                    self.costs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .lead(self.commit_interval),
                );
                match pending.open_since {
                    Some(since)
                        if pending.open.len() >= self.threshold || since.elapsed() >= wait =>
                    {
                        pending.open_since = None;
                        return Work::Commit {
                            delta: std::mem::take(&mut pending.open),
                            replace: false,
                            initial: false,
                            generation: 0,
                        };
                    }
                    Some(since) => Some(since + wait),
                    None => None,
                }
            };
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = &mut wake => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    async fn commit(&self, delta: Delta, replace: bool, initial: bool, generation: u64) {
        #[cfg(test)]
        self.shared.at(super::Point::CommitApply { replace }).await;
        let base = self
            .durable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let started = Instant::now();
        let (running, change) = if delta.len() > 10_000 {
            // Large deltas are applied off the async workers so the ingest keeps reading.
            let base = base.running.clone();
            match tokio::task::spawn_blocking(move || base.apply(delta)).await {
                Ok(result) => result,
                Err(e) => {
                    self.fail(format!("applying a commit failed: {e}"));
                    return;
                }
            }
        } else {
            base.running.apply(delta)
        };
        if change.is_empty() && !initial {
            return;
        }
        if running.len() > self.max_leaves && running.len() > base.running.len() {
            // Never durable, never published: running stays at `base`.
            self.refuse(super::caps::running_over(running.len(), self.max_leaves));
            return;
        }
        let revision = base.revision + 1;
        // As i64: OpenTelemetry attributes have no unsigned integers.
        tracing::Span::current()
            .record("revision", revision as i64)
            .record("updates", change.update_count() as i64)
            .record("deletes", change.delete_count() as i64);
        let time = SystemTime::now();
        let committed = Committed {
            revision,
            time,
            replace,
            change: &change,
            running: &running,
        };
        let applied = started.elapsed();
        self.persist_until_durable(committed).await;
        let persisted = started.elapsed() - applied;
        *self.durable.lock().unwrap_or_else(PoisonError::into_inner) = Snapshot {
            revision,
            time: Some(time),
            running: running.clone(),
        };
        let leaves = running.len();
        {
            // Publishing and updating the deviations under the intents lock
            // keeps them consistent with each other for intent writers.
            let mut intended = self
                .shared
                .intended
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            intended.on_commit(&change, &running);
            self.shared.snapshot.send_replace(Snapshot {
                revision,
                time: Some(time),
                running,
            });
        }
        let (updates, deletes) = (change.update_count(), change.delete_count());
        let weight = updates + deletes;
        let event = Arc::new(Event {
            revision,
            time,
            kind: EventKind::Commit {
                replace,
                change: Payload::new(Arc::new(change)),
            },
            encoded: Encoded::default(),
        });
        let preparer = self.shared.preparer.get().cloned();
        let watched = self.shared.watching.load(Ordering::Relaxed) > 0;
        if let Some(prepare) = preparer.filter(|_| watched) {
            if weight > 10_000 {
                let event = event.clone();
                let _ = tokio::task::spawn_blocking(move || prepare(&event)).await;
            } else {
                prepare(&event);
            }
        }
        self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.commit_duration.record(started.elapsed());
        if !replace {
            self.costs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(started.elapsed());
        }
        tracing::debug!(
            datastore = %self.shared.name, revision, replace, updates, deletes, leaves, ?applied,
            ?persisted, "committed"
        );
        {
            let mut last_event = self
                .shared
                .last_event
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = self.shared.events.send(event.clone());
            self.shared.keep_recent(event, weight);
            *last_event = revision;
        }
        // Only while its connection is the current one and up (checked and
        // changed under one lock with the ingest's transitions).
        if initial {
            self.shared.in_sync_if_current(generation);
        }
    }

    /// Persists `commit`, retrying the same commit with capped backoff until
    /// the store takes it. A storage failure never forces a resync: the
    /// commit is whole in memory, nothing of it is published before it is
    /// durable, and the changes the device sends meanwhile wait in pending
    /// (up to its cap, then the device is held back by flow control). The
    /// status says why it waits; the error is cleared when it succeeds,
    /// unless something else has reported an error since.
    async fn persist_until_durable(&self, commit: Committed<'_>) {
        let mut pause = PERSIST_RETRY_MIN;
        let mut shown: Option<String> = None;
        loop {
            match self.persist.persist(&self.shared.name, commit).await {
                Ok(()) => {
                    if let Some(shown) = shown {
                        self.shared.clear_error_if(&shown);
                        tracing::info!(datastore = %self.shared.name, revision = commit.revision,
                            "the commit is durable after retries");
                    }
                    return;
                }
                Err(e) => {
                    self.shared
                        .stats
                        .persist_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let error =
                        format!("cannot persist revision {}: {e}; retrying", commit.revision);
                    if shown.as_deref() != Some(error.as_str()) {
                        tracing::warn!(datastore = %self.shared.name, %error, "commit waits for the store");
                        self.shared.set_error(error.clone());
                        shown = Some(error);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(PERSIST_RETRY_MAX);
                }
            }
        }
    }

    /// A commit over a cap was refused: as when one fails, what `open` holds
    /// now lies on a base without it, so it goes too; but the ingest
    /// reconnects after a backoff, not at once, since the device's next dump
    /// is likely over the cap as well.
    fn refuse(&self, error: String) {
        tracing::warn!(datastore = %self.shared.name, %error, "commit refused");
        self.drop_open(&error);
        if self
            .shared
            .control
            .try_send(Control::Breach(error))
            .is_err()
        {
            tracing::warn!(datastore = %self.shared.name, "control queue full");
        }
    }

    /// A commit could not be made: its delta is gone from pending, so the only
    /// way not to lose it is a resync, whose dump brings it back.
    fn fail(&self, error: String) {
        tracing::error!(datastore = %self.shared.name, %error, "commit failed; forcing a resync");
        self.drop_open(&error);
        if self
            .shared
            .control
            .try_send(Control::Resync(error))
            .is_err()
        {
            tracing::warn!(datastore = %self.shared.name, "resync already queued");
        }
    }

    /// A delta taken was not committed: reports `error`, and drops `open`
    /// and what the ingest reads until it reconnects (see `Pending::lost`).
    fn drop_open(&self, error: &str) {
        self.shared.set_error(error);
        // Changes after the lost delta would be committed on the wrong base,
        // giving a running the device never had; the resync brings them back.
        // So do those the ingest reads until it handles the resync (`lost`).
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.open = Delta::new();
            pending.open_since = None;
            pending.lost = true;
        }
        self.shared.ingest_wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_start_early_by_twice_the_longest_recent_one() {
        let interval = Duration::from_secs(1);
        let mut costs = CommitCosts::default();
        assert_eq!(costs.lead(interval), Duration::ZERO);
        costs.record(Duration::from_millis(100));
        costs.record(Duration::from_millis(40));
        assert_eq!(costs.lead(interval), Duration::from_millis(200));
        // At most half the interval.
        costs.record(Duration::from_millis(300));
        assert_eq!(costs.lead(interval), Duration::from_millis(500));
        // Only the last eight count.
        for _ in 0..8 {
            costs.record(Duration::from_millis(10));
        }
        assert_eq!(costs.lead(interval), Duration::from_millis(20));
    }
}
