//! The ingest task: connects to the device, subscribes (or polls, or Gets),
//! applies each notification to its segment of `Pending`, and reconnects with
//! a jittered backoff when the stream ends or fails, when a dump does not end
//! within `initial_sync_timeout`, or when the device goes over a cap. Owns
//! the subscription sent to the device and the reconnect loop.
//!
//! It never awaits a commit, the store or watchers: it takes the `Pending`
//! lock for one notification at a time and wakes the committer without
//! waiting for it. It awaits only the device (through read-ahead), its
//! control channel, the backoff and poll timers, and `ingest_wake` in two
//! cases: while the open delta is at its cap (backpressure, until the
//! committer takes it) and, before a delete in the dump, while a batch of the
//! dump is out being sorted (checked under the lock the delete is applied
//! under).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use netsync_proto::gnmi;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::caps::{self, Caps};
use super::pending::Sealed;
use super::read_ahead::{Incomings, Reader, Step, read_ahead};
use super::{Control, Shared, SyncLimits, SyncState};
use crate::datastore::{DatastoreSpec, Encoding, SyncMode};
use crate::device::{Target, TargetError};
use crate::notification::{Decoder, PreparedNotification};
use crate::running::Delta;

/// The ingest task: connects, subscribes, reads, reconnects.
pub(super) struct Ingest {
    pub(super) shared: Arc<Shared>,
    pub(super) spec: DatastoreSpec,
    pub(super) target: Arc<dyn Target>,
    pub(super) decoder: Decoder,
    pub(super) limits: SyncLimits,
    /// The datastore's caps (its spec's, else the server's).
    pub(super) caps: Caps,
    /// Set when the open delta reached `pending_cap`; cleared once it is
    /// taken. Lets the per-notification cap check skip the locks.
    pub(super) at_cap: AtomicBool,
    pub(super) control: mpsc::Receiver<Control>,
}

/// Why a connection ended.
enum Ended {
    /// Told to resync: reconnect at once.
    Resync(String),
    /// The stream failed or ended: reconnect after a backoff.
    Failed(String),
    /// The committer refused a commit over a cap: what `open` holds is on a
    /// base without it, as after a lost commit; reconnect after a backoff.
    Breach(String),
}

/// How a connection ends on a message from outside (`None`: stopping).
fn ended_by(control: Option<Control>) -> Ended {
    match control {
        Some(Control::Resync(reason)) => Ended::Resync(reason),
        Some(Control::Breach(reason)) => Ended::Breach(reason),
        None => Ended::Failed("stopped".into()),
    }
}

/// Why a subscription's stream failed: a message over the cap in the
/// device's words, anything else as the transport said it.
fn stream_failed(e: &TargetError) -> String {
    if e.over_cap {
        e.message.clone()
    } else {
        format!("subscription failed: {e}")
    }
}

impl Ingest {
    /// Runs the ingest; if it panics (a bug), starts it again: the new
    /// connection's dump replaces running, so nothing it held is lost.
    pub(super) async fn supervised(mut self) {
        loop {
            match AssertUnwindSafe(self.run()).catch_unwind().await {
                Ok(()) => return,
                Err(_) => {
                    tracing::error!(datastore = %self.shared.name, "ingest task panicked; restarting it with a resync");
                    // Its connection went with it: a commit of that
                    // connection's dump must not announce IN_SYNC now.
                    self.shared
                        .disconnected("internal error in the ingest; resynced".into());
                    self.shared
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .dump = None;
                    self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    // A bug that panics every time must not spin against the device.
                    tokio::time::sleep(self.limits.backoff_max.min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    async fn run(&mut self) {
        let mut backoff = self.limits.backoff_min;
        let mut first = true;
        loop {
            if !first {
                self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            self.shared.connecting();
            let ended = match self.spec.sync.mode {
                SyncMode::OnChange | SyncMode::Sample => self.stream().await,
                SyncMode::Once | SyncMode::Poll | SyncMode::Get => self.cycles().await,
            };
            // A dump cut short is incomplete: it is never committed.
            self.shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .dump = None;
            let reason = match ended {
                Ended::Resync(reason) => {
                    self.resync_handled();
                    self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    self.shared.set_state(SyncState::Disconnected, reason);
                    continue;
                }
                Ended::Breach(reason) => {
                    self.resync_handled();
                    reason
                }
                Ended::Failed(reason) => reason,
            };
            tracing::warn!(datastore = %self.shared.name, %reason, "sync connection ended");
            // The backoff starts again only after a connection that reached
            // IN_SYNC: a device that fails every dump (a deadline, a cap)
            // is tried less and less often.
            if self.shared.disconnected(reason) == SyncState::InSync {
                backoff = self.limits.backoff_min;
            }
            let delay = jitter(backoff);
            backoff = (backoff * 2).min(self.limits.backoff_max);
            let until = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    control = self.control.recv() => match control {
                        Some(Control::Resync(_)) => {
                            self.resync_handled();
                            self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // A commit of the connection that ended was refused:
                        // the next one starts from a dump anyway.
                        Some(Control::Breach(_)) => self.resync_handled(),
                        None => return,
                    },
                }
            }
        }
    }

    /// How responses of this datastore are read.
    fn reader(&self) -> Reader {
        Reader {
            decoder: self.decoder.clone(),
            caps: self.caps,
        }
    }

    /// A resync is handled: the connection it starts dumps the device's whole
    /// state, which supersedes `open`. Emptied now, `open` cannot be
    /// committed on a base that lacks a lost commit (see `Pending::lost`);
    /// after this, changes go to the new dump.
    fn resync_handled(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.open = Delta::new();
        pending.open_since = None;
        pending.lost = false;
    }

    /// Starts a new generation: its dump will replace running within the
    /// subscribed paths.
    fn begin_dump(&self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.dump = Some(Delta::replacing(&self.spec.sync.paths));
        pending.dump_seq += 1;
    }

    /// Closes the dump at its `sync_response`: it becomes the next commit.
    fn seal_dump(&self, initial: bool) {
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(dump) = pending.dump.take() else {
                return;
            };
            pending.sealed = Some(Sealed {
                delta: dump,
                // An unconsumed initial seal stays initial when superseded.
                initial: initial || pending.sealed.as_ref().is_some_and(|s| s.initial),
                generation: self.shared.generation.load(Ordering::SeqCst),
                seq: pending.dump_seq,
            });
            pending.open = Delta::new();
            pending.open_since = None;
        }
        self.shared.committer_wake.notify_one();
    }

    /// Applies one notification to the segment it belongs to. A delete in
    /// the dump waits until no batch of the dump is out being sorted: the
    /// batch's updates came before it. Whether one is out is checked under
    /// the same lock as the delete is applied, so the committer cannot take a
    /// batch in between.
    ///
    /// An error is a cap breach: the connection must end.
    async fn apply(&self, note: &PreparedNotification) -> Result<(), String> {
        #[cfg(test)]
        self.shared
            .at(super::Point::IngestApply {
                deletes: note.has_deletes(),
            })
            .await;
        loop {
            let wake = self.shared.ingest_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if self.ingest(note)? {
                return Ok(());
            }
            #[cfg(test)]
            self.shared.at(super::Point::IngestWaits).await;
            wake.await;
        }
    }

    /// Applies one notification to the segment it belongs to, unless it
    /// deletes something in the dump while a batch of the dump is out: then
    /// it applies nothing and answers `false` (wait for `ingest_wake`). An
    /// error says the dump now holds more than `max_leaves` leaves: it must
    /// not be committed (the connection ends, and with it the dump).
    fn ingest(&self, note: &PreparedNotification) -> Result<bool, String> {
        let stats = &self.shared.stats;
        let counts = {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let pending = &mut *pending;
            let (delta, is_open) = match pending.dump.as_mut() {
                Some(dump) => (dump, false),
                None => (&mut pending.open, true),
            };
            if !is_open && pending.batch_out && note.has_deletes() {
                return Ok(false);
            }
            stats.notifications.fetch_add(1, Ordering::Relaxed);
            if is_open && pending.lost {
                // After a lost commit, until the resync: see `Pending::lost`.
                return Ok(true);
            }
            let counts = note.apply(delta);
            if !is_open {
                let leaves = delta.leaves_at_least();
                if leaves > self.caps.max_leaves {
                    return Err(caps::dump_over(leaves, self.caps.max_leaves));
                }
            }
            let batch_due =
                !is_open && !pending.batch_out && delta.unsorted() >= self.limits.sort_batch.max(1);
            let first_open_change =
                is_open && pending.open_since.is_none() && !pending.open.is_empty();
            if first_open_change {
                pending.open_since = Some(Instant::now());
            }
            let open = if is_open { pending.open.len() } else { 0 };
            if open >= self.limits.pending_cap {
                self.at_cap.store(true, Ordering::Relaxed);
            }
            let threshold_due = open >= self.limits.commit_threshold;
            (counts, first_open_change || batch_due || threshold_due)
        };
        let (counts, wake_committer) = counts;
        if wake_committer {
            // The committer has no deadline yet, or a batch to sort.
            self.shared.committer_wake.notify_one();
        }
        stats.updates.fetch_add(counts.updates, Ordering::Relaxed);
        stats.deletes.fetch_add(counts.deletes, Ordering::Relaxed);
        Ok(true)
    }

    /// Waits while the open delta is at its cap, so the device is pushed back
    /// by flow control instead of anything being dropped.
    async fn respect_cap(&self) {
        // Checked without locks: this runs once per notification.
        if !self.at_cap.load(Ordering::Relaxed) {
            return;
        }
        loop {
            let wake = self.shared.ingest_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let full = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open
                .len()
                >= self.limits.pending_cap;
            self.shared
                .status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .backpressure = full;
            if !full {
                self.at_cap.store(false, Ordering::Relaxed);
                return;
            }
            self.shared.committer_wake.notify_one();
            wake.await;
        }
    }

    fn subscription(&self, mode: gnmi::subscription_list::Mode) -> gnmi::SubscribeRequest {
        let sub_mode = match self.spec.sync.mode {
            SyncMode::Sample => gnmi::SubscriptionMode::Sample,
            _ => gnmi::SubscriptionMode::OnChange,
        };
        let interval = u64::try_from(self.spec.sync.interval.as_nanos()).unwrap_or(u64::MAX);
        let subscription = self
            .spec
            .sync
            .paths
            .iter()
            .map(|p| gnmi::Subscription {
                path: Some(p.to_gnmi()),
                mode: sub_mode as i32,
                sample_interval: if sub_mode == gnmi::SubscriptionMode::Sample {
                    interval
                } else {
                    0
                },
                ..Default::default()
            })
            .collect();
        gnmi::SubscribeRequest {
            request: Some(gnmi::subscribe_request::Request::Subscribe(
                gnmi::SubscriptionList {
                    prefix: self.prefix(),
                    subscription,
                    mode: mode as i32,
                    encoding: gnmi_encoding(self.spec.target.encoding) as i32,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    fn prefix(&self) -> Option<gnmi::Path> {
        (!self.spec.target.target_name.is_empty()).then(|| gnmi::Path {
            target: self.spec.target.target_name.clone(),
            ..Default::default()
        })
    }

    /// ON_CHANGE and SAMPLE: one long-lived STREAM subscription. Its dump
    /// must end (`sync_response`) within `initial_sync_timeout` of the
    /// request.
    async fn stream(&mut self) -> Ended {
        let timeout = self.caps.initial_sync_timeout;
        let deadline = Instant::now() + timeout;
        let too_late = || Ended::Failed(caps::no_end_within("sync_response", timeout));
        let (requests, requests_rx) = mpsc::channel(4);
        let _ = requests.try_send(self.subscription(gnmi::subscription_list::Mode::Stream));
        // `requests` stays alive (the request side open) for the whole stream.
        let subscribed = tokio::select! {
            r = self.target.subscribe(requests_rx) => r,
            () = tokio::time::sleep_until(deadline) => return too_late(),
        };
        let mut responses = match subscribed {
            Ok(r) => read_ahead(r, self.reader()),
            Err(e) => return Ended::Failed(format!("subscribe: {e}")),
        };
        self.begin_dump();
        self.shared
            .set_state(SyncState::InitialSync, "receiving the initial dump");
        let mut in_dump = true;
        loop {
            self.respect_cap().await;
            #[cfg(test)]
            self.shared.at(super::Point::IngestWaits).await;
            let next = tokio::select! {
                next = responses.next() => next,
                control = self.control.recv() => return ended_by(control),
                () = tokio::time::sleep_until(deadline), if in_dump => return too_late(),
            };
            match next {
                None => return Ended::Failed("the device ended the subscription".into()),
                Some(Err(e)) => return Ended::Failed(stream_failed(&e)),
                Some(Ok(step)) => match step {
                    Step::Apply(note) => {
                        if let Err(e) = self.apply(&note).await {
                            return Ended::Failed(e);
                        }
                    }
                    Step::Sync if in_dump => {
                        in_dump = false;
                        self.seal_dump(true);
                    }
                    Step::Sync | Step::Skip => {}
                    Step::Fail(error) => return Ended::Failed(error),
                    Step::Unusable(error) => return self.bad_input(error),
                },
            }
        }
    }

    /// ONCE, POLL and GET: a full dump every `interval`, each a replace.
    async fn cycles(&mut self) -> Ended {
        let mut initial = true;
        let mut poll: Option<(mpsc::Sender<gnmi::SubscribeRequest>, Incomings)> = None;
        loop {
            self.begin_dump();
            if initial {
                self.shared
                    .set_state(SyncState::InitialSync, "receiving the initial dump");
            }
            let result = match self.spec.sync.mode {
                SyncMode::Get => self.get_cycle().await,
                SyncMode::Once => self.once_cycle().await,
                _ => self.poll_cycle(&mut poll).await,
            };
            match result {
                Ok(()) => {
                    self.seal_dump(initial);
                    initial = false;
                }
                Err(ended) => {
                    // An incomplete dump is never committed.
                    self.shared
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .dump = None;
                    return ended;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.spec.sync.interval) => {}
                control = self.control.recv() => return ended_by(control),
            }
        }
    }

    async fn get_cycle(&mut self) -> Result<(), Ended> {
        let request = gnmi::GetRequest {
            prefix: self.prefix(),
            path: self.spec.sync.paths.iter().map(|p| p.to_gnmi()).collect(),
            r#type: gnmi::get_request::DataType::All as i32,
            encoding: gnmi_encoding(self.spec.target.encoding) as i32,
            ..Default::default()
        };
        let timeout = self.caps.initial_sync_timeout;
        let response = tokio::select! {
            r = self.target.get(request) => r.map_err(|e| Ended::Failed(if e.over_cap {
                e.message
            } else {
                format!("get: {e}")
            }))?,
            control = self.control.recv() => return Err(ended_by(control)),
            () = tokio::time::sleep(timeout) => {
                return Err(Ended::Failed(caps::no_end_within("Get answer", timeout)));
            }
        };
        // A transport with a decoding limit refused a larger answer already.
        let len = prost::Message::encoded_len(&response);
        if len > self.caps.max_message_bytes {
            return Err(Ended::Failed(caps::message_over(
                len,
                self.caps.max_message_bytes,
            )));
        }
        let reader = self.reader();
        for n in &response.notification {
            match reader.prepare(n) {
                Step::Apply(note) => self.apply(&note).await.map_err(Ended::Failed)?,
                Step::Unusable(error) => return Err(self.bad_input(error)),
                Step::Fail(error) => return Err(Ended::Failed(error)),
                Step::Sync | Step::Skip => {}
            }
        }
        Ok(())
    }

    async fn once_cycle(&mut self) -> Result<(), Ended> {
        let deadline = Instant::now() + self.caps.initial_sync_timeout;
        let (requests, requests_rx) = mpsc::channel(1);
        let _ = requests.try_send(self.subscription(gnmi::subscription_list::Mode::Once));
        let subscribed = tokio::select! {
            r = self.target.subscribe(requests_rx) => r,
            () = tokio::time::sleep_until(deadline) => return Err(self.too_late()),
        };
        let mut responses = subscribed
            .map(|r| read_ahead(r, self.reader()))
            .map_err(|e| Ended::Failed(format!("subscribe: {e}")))?;
        self.read_dump(&mut responses, deadline).await
    }

    /// A dump that did not end within `initial_sync_timeout`.
    fn too_late(&self) -> Ended {
        Ended::Failed(caps::no_end_within(
            "sync_response",
            self.caps.initial_sync_timeout,
        ))
    }

    async fn poll_cycle(
        &mut self,
        poll: &mut Option<(mpsc::Sender<gnmi::SubscribeRequest>, Incomings)>,
    ) -> Result<(), Ended> {
        let deadline = Instant::now() + self.caps.initial_sync_timeout;
        if poll.is_none() {
            let (requests, requests_rx) = mpsc::channel(4);
            let _ = requests.try_send(self.subscription(gnmi::subscription_list::Mode::Poll));
            let subscribed = tokio::select! {
                r = self.target.subscribe(requests_rx) => r,
                () = tokio::time::sleep_until(deadline) => return Err(self.too_late()),
            };
            let responses = subscribed
                .map(|r| read_ahead(r, self.reader()))
                .map_err(|e| Ended::Failed(format!("subscribe: {e}")))?;
            *poll = Some((requests, responses));
            // The first dump comes without a Poll.
        } else if let Some((requests, _)) = poll.as_ref() {
            let message = gnmi::SubscribeRequest {
                request: Some(gnmi::subscribe_request::Request::Poll(gnmi::Poll {})),
                ..Default::default()
            };
            if requests.send(message).await.is_err() {
                *poll = None;
                return Err(Ended::Failed("poll stream closed".into()));
            }
        }
        let Some((_, responses)) = poll.as_mut() else {
            unreachable!()
        };
        let mut responses = std::mem::replace(responses, Box::pin(futures::stream::empty()));
        let result = self.read_dump(&mut responses, deadline).await;
        match (&result, poll.as_mut()) {
            (Ok(()), Some((_, slot))) => *slot = responses,
            _ => *poll = None,
        }
        result
    }

    /// Reads notifications into the dump until `sync_response`, which must
    /// come before `deadline`.
    async fn read_dump(
        &mut self,
        responses: &mut Incomings,
        deadline: Instant,
    ) -> Result<(), Ended> {
        loop {
            let next = tokio::select! {
                next = responses.next() => next,
                control = self.control.recv() => return Err(ended_by(control)),
                () = tokio::time::sleep_until(deadline) => return Err(self.too_late()),
            };
            match next {
                None => {
                    return Err(Ended::Failed(
                        "the device ended the stream before sync_response".into(),
                    ));
                }
                Some(Err(e)) => return Err(Ended::Failed(stream_failed(&e))),
                Some(Ok(step)) => match step {
                    Step::Apply(note) => self.apply(&note).await.map_err(Ended::Failed)?,
                    Step::Sync => return Ok(()),
                    Step::Skip => {}
                    Step::Fail(error) => return Err(Ended::Failed(error)),
                    Step::Unusable(error) => return Err(self.bad_input(error)),
                },
            }
        }
    }

    /// A notification that cannot be applied: nothing of it was applied, and
    /// skipping it would lose data, so the connection is restarted (its dump
    /// replaces running) and the error reported.
    fn bad_input(&self, error: String) -> Ended {
        tracing::error!(datastore = %self.shared.name, %error, "unusable notification; resyncing");
        Ended::Failed(format!("unusable notification: {error}"))
    }
}

/// gNMI's encoding for ours.
fn gnmi_encoding(encoding: Encoding) -> gnmi::Encoding {
    match encoding {
        Encoding::JsonIetf => gnmi::Encoding::JsonIetf,
        Encoding::Json => gnmi::Encoding::Json,
        Encoding::Proto => gnmi::Encoding::Proto,
        Encoding::Ascii => gnmi::Encoding::Ascii,
    }
}

/// `base` plus or minus up to half of it, so reconnecting fleets spread out.
fn jitter(base: Duration) -> Duration {
    let factor = rand::rng().random_range(0.5..1.5);
    base.mul_f64(factor)
}
