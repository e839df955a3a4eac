//! Commit latency and committed throughput, measured with marker leaves.
//!
//! While the device churns, the harness sets a new leaf `/netsync-bench/m<N>`
//! on it every few milliseconds (SimControl SetLeaves) and notes when the
//! simulator answered (it has then applied the change and queued it to its
//! subscribers); a watcher notes when the WatchSync commit event holding that
//! leaf arrives. The difference is the commit latency: device send to
//! WatchSync event.
//!
//! Each marker is a new leaf, created after churn has chosen the leaves it
//! changes (`Device::fix_churn_population`), so neither churn nor a later
//! marker can overwrite it in the pending delta before it is committed.
//!
//! Committed throughput comes from the same markers. Right before setting
//! marker N the harness reads the simulator's count of leaf changes made on
//! the device (`c_N`: churn, markers, Sets). Each change reaches netsyncd in
//! stream order, or in the dump of a resync, so once the commit event holding
//! marker N arrives, the `c_N` changes made before it are in a durable
//! revision. Taking the last marker of each commit, `covered(commit)` is the
//! number of device changes that commit made durable, to within one marker
//! period of changes. Over a window, each commit holding one of its markers is
//! a point `(arrival(commit), covered(commit))`, and committed updates per
//! second is the least-squares slope through those points: with two it is
//! `(covered(last) - covered(first)) / (arrival(last) - arrival(first))`; with
//! the ten of a 10 s window and 1 s commits, a commit that arrives a little
//! early or late at an end of the window moves the result half as much. Every point is a commit arrival, so the commit interval
//! does not quantise the result. If every marker of the window arrived in one
//! commit (netsyncd fell far behind), the commit before it is the other point.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::sim::v1::sim_control_client::SimControlClient;
use netsync_proto::netsync::v1 as pb;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::device::uint;
use crate::wire::{EventKind, EventSummary, WatchCodec};

/// Path prefix of the marker leaves; the marker's number follows.
pub const MARKER_PREFIX: &str = "/netsync-bench/m";

/// One marker set on the device.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Its number.
    pub id: u64,
    /// When the device sent it (SetLeaves answered).
    pub at: Instant,
    /// Leaf changes made on the device, read just before.
    pub device_changes_before: u64,
}

/// Sets a marker every period until stopped (or dropped).
pub struct Markers {
    stop: watch::Sender<bool>,
    /// `None` once stopped.
    task: Option<JoinHandle<anyhow::Result<Vec<Sent>>>>,
}

impl Markers {
    /// Starts setting markers `first_id`, `first_id + 1`, ... every `period`.
    pub fn start(mut control: SimControlClient<Channel>, period: Duration, first_id: u64) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = Vec::new();
            for id in first_id.. {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    _ = ticker.tick() => {}
                }
                let counters = control
                    .get_counters(simpb::GetCountersRequest {})
                    .await
                    .context("SimControl/GetCounters")?
                    .into_inner();
                control
                    .set_leaves(simpb::SetLeavesRequest {
                        updates: vec![simpb::Leaf {
                            path: format!("{MARKER_PREFIX}{id}"),
                            value: Some(uint(id)),
                        }],
                        deletes: Vec::new(),
                    })
                    .await
                    .context("SimControl/SetLeaves of a marker")?;
                // SetLeaves answers once the simulator has applied the change
                // and queued it to its subscribers: the device has sent it. A
                // simulator busy churning may take a while to get to it, which
                // is not netsyncd's latency.
                let at = Instant::now();
                sent.push(Sent {
                    id,
                    at,
                    device_changes_before: counters.changes_committed,
                });
            }
            Ok(sent)
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops and returns the markers set.
    pub async fn stop(mut self) -> anyhow::Result<Vec<Sent>> {
        let _ = self.stop.send(true);
        let task = self.task.take().context("markers stopped twice")?;
        task.await.context("the marker task panicked")?
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What a watcher has seen so far.
#[derive(Debug, Default, Clone)]
pub struct WatchLog {
    /// When the commit holding each marker arrived.
    pub arrivals: HashMap<u64, Instant>,
    /// Events received.
    pub events: u64,
    /// Commits received whole (a large one comes in parts).
    pub commits: u64,
    /// Leaves (updates and deletes) in those commits.
    pub leaves: u64,
    /// Revert events by phase (index: `RevertPhase` value).
    pub revert_phases: [u64; 5],
    /// The APPLIED revert events, in order of arrival.
    pub applied: Vec<Applied>,
    /// Why the stream ended, if it did.
    pub ended: Option<String>,
    /// Markers of a revision whose last part has not arrived yet.
    partial: Vec<u64>,
}

/// A job's APPLIED event (a revert's or an apply's: the API does not tell
/// them apart) as a watcher received it.
#[derive(Debug, Clone)]
pub struct Applied {
    /// When it arrived.
    pub at: Instant,
    /// Every leaf the job set, with the intents' values.
    pub updates: Vec<pb::Leaf>,
}

struct Shared {
    log: Mutex<WatchLog>,
    changed: Notify,
}

/// A WatchSync client that notes what it receives (walking, not decoding,
/// the events: see `wire.rs`). Dropping it ends the watch.
pub struct Watcher {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Watches `datastore` from now on, on a connection of its own to `url`.
    /// Returns once the server has accepted the watch.
    pub async fn open(url: &str, datastore: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to netsyncd at {url}"))?;
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
        grpc.ready().await.context("netsyncd not ready")?;
        let mut stream = grpc
            .server_streaming(
                tonic::Request::new(pb::WatchSyncRequest {
                    datastore: datastore.into(),
                    from_revision: 0,
                    ..Default::default()
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/netsync.v1.NetSync/WatchSync",
                ),
                WatchCodec {
                    marker_prefix: MARKER_PREFIX,
                },
            )
            .await
            .with_context(|| format!("WatchSync {datastore}"))?
            .into_inner();
        let shared = Arc::new(Shared {
            log: Mutex::new(WatchLog::default()),
            changed: Notify::new(),
        });
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                loop {
                    let next = stream.message().await;
                    let at = Instant::now();
                    let mut log = shared.log.lock().unwrap_or_else(PoisonError::into_inner);
                    match next {
                        Ok(Some(event)) => note(&mut log, &event, at),
                        Ok(None) => log.ended = Some("the server ended the stream".into()),
                        Err(status) => log.ended = Some(status.to_string()),
                    }
                    let ended = log.ended.is_some();
                    drop(log);
                    shared.changed.notify_waiters();
                    if ended {
                        return;
                    }
                }
            }
        });
        Ok(Self { shared, task })
    }

    /// A copy of what it has seen.
    pub fn log(&self) -> WatchLog {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the commit holding marker `id` has arrived.
    pub async fn wait_marker(&self, id: u64, deadline: Duration) -> anyhow::Result<()> {
        self.wait_until(deadline, &format!("commit holding marker {id}"), |log| {
            log.arrivals.get(&id).map(|_| ())
        })
        .await
    }

    /// Waits until `found` finds something in what the watcher has seen (it
    /// is asked again after each event), for at most `deadline`; `what`
    /// names it in the error.
    pub async fn wait_until<T>(
        &self,
        deadline: Duration,
        what: &str,
        mut found: impl FnMut(&WatchLog) -> Option<T>,
    ) -> anyhow::Result<T> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so no notification falls in between.
            changed.as_mut().enable();
            {
                let log = self
                    .shared
                    .log
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(it) = found(&log) {
                    return Ok(it);
                }
                if let Some(why) = &log.ended {
                    bail!("the watcher's stream ended before {what}: {why}");
                }
            }
            if tokio::time::timeout_at(give_up, changed).await.is_err() {
                bail!("no {what} on WatchSync within {deadline:?}");
            }
        }
    }

    /// Stops watching; returns what it saw.
    pub fn stop(self) -> WatchLog {
        // Drop aborts the task.
        self.log()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Records one event in `log`.
fn note(log: &mut WatchLog, event: &EventSummary, at: Instant) {
    log.events += 1;
    match event.kind {
        EventKind::Commit => {
            log.leaves += event.updates + event.deletes;
            log.partial.extend(&event.markers);
            // A large revision comes in parts: it has arrived with its last.
            if !event.more {
                log.commits += 1;
                for id in log.partial.drain(..) {
                    log.arrivals.entry(id).or_insert(at);
                }
            }
        }
        EventKind::Revert(phase) => {
            if let Some(slot) = usize::try_from(phase)
                .ok()
                .and_then(|p| log.revert_phases.get_mut(p))
            {
                *slot += 1;
            }
            if phase == pb::RevertPhase::Applied as i32
                && let Some(revert) = &event.revert
            {
                log.applied.push(Applied {
                    at,
                    updates: revert.updates.clone(),
                });
            }
        }
        EventKind::State(_) | EventKind::Unknown => {}
    }
}

/// Latency and throughput over one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// Markers sent in the window.
    pub markers: usize,
    /// Commit latency of those markers; `None` without markers (a simulator
    /// too busy churning answers SetLeaves slowly).
    pub latency: Option<Latency>,
    /// Device changes durably committed per second (see the module docs);
    /// `None` without two commits to measure between.
    pub committed_rate: Option<f64>,
}

/// Latency percentiles (of commits, of API calls).
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Worst.
    pub max: Duration,
}

impl Latency {
    /// The percentiles of `values` (any order); `None` if there are none.
    pub fn of(values: &[Duration]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let max = *sorted.last()?;
        Some(Self {
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            max,
        })
    }
}

/// The commit latency of each marker sent from `from` to `to`, in the order
/// sent. Every one of them must have arrived: a marker that never did is a
/// change lost, an error.
pub fn latencies(
    sent: &[Sent],
    arrivals: &HashMap<u64, Instant>,
    from: Instant,
    to: Instant,
) -> anyhow::Result<Vec<Duration>> {
    sent.iter()
        .filter(|m| m.at >= from && m.at <= to)
        .map(|marker| {
            let arrived = arrivals.get(&marker.id).with_context(|| {
                format!("marker {} never reached a WatchSync commit", marker.id)
            })?;
            Ok(arrived.duration_since(marker.at))
        })
        .collect()
}

/// Analyses the markers sent from `from` to `to`. Every one of them must have
/// arrived: a marker that never did is a change lost, an error.
pub fn analyse(
    sent: &[Sent],
    arrivals: &HashMap<u64, Instant>,
    from: Instant,
    to: Instant,
) -> anyhow::Result<Window> {
    let latencies = latencies(sent, arrivals, from, to)?;
    // Every marker of the window arrived (checked above).
    let mut commits: Vec<Instant> = sent
        .iter()
        .filter(|m| m.at >= from && m.at <= to)
        .filter_map(|m| arrivals.get(&m.id).copied())
        .collect();
    commits.sort_unstable();
    commits.dedup();
    let (Some(&first), Some(latency)) = (commits.first(), Latency::of(&latencies)) else {
        return Ok(Window::default());
    };
    // One commit for the whole window: measure from the commit before it.
    if commits.len() == 1 {
        match arrivals.values().filter(|&&a| a < first).max() {
            Some(&before) => commits.insert(0, before),
            None => commits.clear(),
        }
    }
    // Markers of one commit share its arrival instant; the last one sent,
    // in the window or not, tells how much of the stream the commit covers.
    let covered = |commit: Instant| {
        sent.iter()
            .filter(|m| arrivals.get(&m.id) == Some(&commit))
            .map(|m| m.device_changes_before)
            .max()
            .unwrap_or(0)
    };
    let points: Vec<(f64, f64)> = commits
        .iter()
        .map(|&commit| {
            let at = commit.duration_since(commits[0]).as_secs_f64();
            (at, covered(commit) as f64)
        })
        .collect();
    let committed_rate = slope(&points);
    Ok(Window {
        markers: latencies.len(),
        latency: Some(latency),
        committed_rate,
    })
}

/// The least-squares slope of `points` (`None` for fewer than two distinct
/// `x`). For two points it is the slope between them; for more, each point's
/// timing jitter counts for less than it would at an end of the window.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Nearest-rank percentile of sorted, non-empty `values`.
pub fn percentile(values: &[Duration], q: f64) -> Duration {
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values[..1], 0.99), Duration::from_millis(1));
    }

    #[test]
    fn a_revision_in_parts_arrives_with_its_last_part() {
        let mut log = WatchLog::default();
        let t0 = Instant::now();
        let part = |markers: Vec<u64>, more| EventSummary {
            revision: 7,
            kind: EventKind::Commit,
            updates: markers.len() as u64,
            markers,
            more,
            ..Default::default()
        };
        note(&mut log, &part(vec![1, 2], true), t0);
        assert!(log.arrivals.is_empty() && log.commits == 0);
        let last = t0 + Duration::from_millis(5);
        note(&mut log, &part(vec![3], false), last);
        assert_eq!(log.commits, 1);
        assert_eq!(log.leaves, 3);
        for id in [1, 2, 3] {
            assert_eq!(log.arrivals[&id], last, "marker {id}");
        }
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 0.0), (2.0, 10.0)]), Some(5.0));
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 7.0 * f64::from(i)))
            .collect();
        assert!((slope(&line).unwrap() - 7.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 3.0)]), None);
        assert_eq!(slope(&[(1.0, 3.0), (1.0, 4.0)]), None);
        // The last of ten commits arrives 300 ms late: the end points alone
        // say 3.2 % less than the true rate, the fit half as much.
        let mut late = line.clone();
        late[9].0 += 0.3;
        let ends = late[9].1 / late[9].0;
        let fit = slope(&late).unwrap();
        assert!(
            ends < 7.0 * 0.97 && fit > 7.0 * 0.98,
            "ends {ends}, fit {fit}"
        );
    }

    #[test]
    fn a_window_gives_latency_and_committed_rate() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A marker every 100 ms, 1,000 device updates apart; commits arrive
        // every 500 ms, 50 ms after the last marker they hold.
        let sent: Vec<Sent> = (0..20)
            .map(|i| Sent {
                id: i,
                at: t0 + ms(100 * i),
                device_changes_before: 1_000 * i,
            })
            .collect();
        let arrivals: HashMap<u64, Instant> = sent
            .iter()
            .map(|m| (m.id, t0 + ms(500 * (m.id / 5) + 450)))
            .collect();
        // Markers 3..=12: commits 0 (markers 0-4) to 2 (markers 10-14).
        let window = analyse(&sent, &arrivals, t0 + ms(300), t0 + ms(1200)).unwrap();
        assert_eq!(window.markers, 10);
        // Latencies 50 to 450 ms, two of each.
        let latency = window.latency.unwrap();
        assert_eq!(latency.max, ms(450));
        assert_eq!(latency.p50, ms(250));
        // covered: marker 4 (4,000) to marker 14 (14,000), 1,000 ms apart.
        let rate = window.committed_rate.unwrap();
        assert!((rate - 10_000.0).abs() < 1e-6);

        let mut lost = arrivals.clone();
        lost.remove(&5);
        assert!(analyse(&sent, &lost, t0, t0 + ms(900)).is_err());
        // A window inside one commit is measured from the commit before:
        // markers 5-9 (commit 1), so from marker 4 to marker 9.
        let window = analyse(&sent, &arrivals, t0 + ms(500), t0 + ms(900)).unwrap();
        assert!((window.committed_rate.unwrap() - 10_000.0).abs() < 1e-6);
        // With no commit before, there is no rate to measure; no marker, no
        // latency either.
        let window = analyse(&sent, &arrivals, t0, t0 + ms(400)).unwrap();
        assert!(window.latency.is_some() && window.committed_rate.is_none());
        let window = analyse(&sent, &arrivals, t0 + ms(5000), t0 + ms(6000)).unwrap();
        assert!(window.latency.is_none() && window.markers == 0);
    }
}
