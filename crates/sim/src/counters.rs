//! Counters of what the simulator did, read through `SimControl.GetCounters`,
//! plus the gauge of synced STREAM subscriptions that `AwaitSubscribers` waits
//! on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use netsync_proto::netsync::sim::v1 as pb;
use tokio::sync::watch;

/// Monotonic counters (and two gauges), updated with relaxed atomics: each is
/// exact on its own, they are not a consistent snapshot of each other.
#[derive(Debug)]
pub struct Counters {
    /// Notifications sent on Subscribe streams.
    pub notifications_sent: AtomicU64,
    /// Updates inside them.
    pub updates_sent: AtomicU64,
    /// Deletes inside them.
    pub deletes_sent: AtomicU64,
    /// sync_response messages sent.
    pub sync_responses_sent: AtomicU64,
    /// Authenticated Set calls.
    pub sets_received: AtomicU64,
    /// Set calls answered with an error.
    pub sets_failed: AtomicU64,
    /// Authenticated Get calls.
    pub gets_received: AtomicU64,
    /// Authenticated Subscribe calls.
    pub subscribes_received: AtomicU64,
    /// Gauge: open Subscribe streams.
    pub streams_open: AtomicU64,
    /// Streams ended on purpose by the simulator.
    pub streams_disconnected: AtomicU64,
    /// Gauge: leaves in the state.
    pub leaves: AtomicU64,
    /// Leaf changes committed.
    pub changes_committed: AtomicU64,
    /// Of those, by churn and bursts.
    pub churn_changes: AtomicU64,
    /// Simulated restarts.
    pub restarts: AtomicU64,
    /// Gauge: synced, open STREAM subscriptions (a watch so that callers can
    /// wait for a value).
    streams_synced: watch::Sender<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            notifications_sent: AtomicU64::new(0),
            updates_sent: AtomicU64::new(0),
            deletes_sent: AtomicU64::new(0),
            sync_responses_sent: AtomicU64::new(0),
            sets_received: AtomicU64::new(0),
            sets_failed: AtomicU64::new(0),
            gets_received: AtomicU64::new(0),
            subscribes_received: AtomicU64::new(0),
            streams_open: AtomicU64::new(0),
            streams_disconnected: AtomicU64::new(0),
            leaves: AtomicU64::new(0),
            changes_committed: AtomicU64::new(0),
            churn_changes: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            streams_synced: watch::Sender::new(0),
        }
    }
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl Counters {
    /// A STREAM subscription sent its sync_response; the returned guard counts
    /// it as synced until dropped.
    pub fn synced(self: &Arc<Self>) -> SyncedGuard {
        self.streams_synced.send_modify(|n| *n += 1);
        SyncedGuard(Arc::clone(self))
    }

    /// A stream opened; the returned guard counts it as open until dropped.
    pub fn stream_opened(self: &Arc<Self>) -> OpenGuard {
        add(&self.streams_open, 1);
        OpenGuard(Arc::clone(self))
    }

    /// Waits until at least `n` STREAM subscriptions are synced.
    pub async fn wait_synced(&self, n: u64) {
        let mut rx = self.streams_synced.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|synced| *synced >= n).await;
    }

    /// The counters as the control API reports them.
    pub fn to_proto(&self) -> pb::Counters {
        pb::Counters {
            notifications_sent: self.notifications_sent.load(Relaxed),
            updates_sent: self.updates_sent.load(Relaxed),
            deletes_sent: self.deletes_sent.load(Relaxed),
            sync_responses_sent: self.sync_responses_sent.load(Relaxed),
            sets_received: self.sets_received.load(Relaxed),
            sets_failed: self.sets_failed.load(Relaxed),
            gets_received: self.gets_received.load(Relaxed),
            subscribes_received: self.subscribes_received.load(Relaxed),
            streams_open: self.streams_open.load(Relaxed),
            streams_synced: *self.streams_synced.borrow(),
            streams_disconnected: self.streams_disconnected.load(Relaxed),
            leaves: self.leaves.load(Relaxed),
            changes_committed: self.changes_committed.load(Relaxed),
            churn_changes: self.churn_changes.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
        }
    }
}

/// Counts a synced STREAM subscription while alive.
#[must_use = "the subscription counts as synced only while the guard lives"]
pub struct SyncedGuard(Arc<Counters>);

impl Drop for SyncedGuard {
    fn drop(&mut self) {
        self.0.streams_synced.send_modify(|n| *n -= 1);
    }
}

/// Counts an open stream while alive.
#[must_use = "the stream counts as open only while the guard lives"]
pub struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Relaxed);
    }
}
