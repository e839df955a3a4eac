//! gNMI Subscribe: one task per stream, owned by the simulator's task tracker.
//!
//! - STREAM: initial dump (unless `updates_only`), `sync_response`, then the
//!   committed changes of ON_CHANGE and TARGET_DEFINED subscriptions, samples of
//!   SAMPLE subscriptions (`suppress_redundant` honoured) and heartbeats. The
//!   stream outlives a client half-close.
//! - ONCE: dump, `sync_response`, end of stream.
//! - POLL: dump and `sync_response` at the start and for each Poll; a client
//!   half-close ends the stream.
//!
//! Dumps take a snapshot and the change feed atomically, so nothing is lost or
//! sent twice between the dump and the changes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netsync_proto::gnmi;
use netsync_proto::gnmi::subscribe_request::Request as Req;
use netsync_proto::gnmi::subscription_list::Mode;
use prost::Message as _;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxFuture;
use tonic::{Request, Response, Status, Streaming};

use crate::Shared;
use crate::counters::{SyncedGuard, add};
use crate::device::{Batch, Device, now_ns};
use crate::error::SimError;
use crate::faults::{DisconnectOrder, Faults};
use crate::gnmi::{encode_value, encoding, join};
use crate::tree::{ChangeKind, Key, Leaf, Pattern, Tree};
use crate::wire::{self, NotificationBuilder};

/// A notification is flushed once its entries reach this size, whatever the
/// configured batch: clients refuse messages over 4 MiB by default.
const MAX_NOTIFICATION_BYTES: usize = 1 << 20;

/// Messages queued between a stream's task and the transport.
const OUT_QUEUE: usize = 8;

/// Sampling period used when a SAMPLE subscription asks for 0 ("the lowest
/// the target supports").
const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest sample or heartbeat interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Serves the Subscribe RPC.
#[derive(Clone)]
pub struct Subscriber {
    shared: Arc<Shared>,
    device: Device,
}

impl Subscriber {
    /// The handler over `device`.
    pub fn new(shared: Arc<Shared>, device: Device) -> Self {
        Self { shared, device }
    }

    /// Validates the SubscriptionList, takes the first snapshot and starts the
    /// stream's task. Errors here end the call before any message.
    async fn open(
        self,
        request: Request<Streaming<gnmi::SubscribeRequest>>,
    ) -> Result<Response<ReceiverStream<Result<Bytes, Status>>>, Status> {
        crate::auth::authenticate(self.shared.credentials.as_ref(), request.metadata())?;
        if !self
            .shared
            .online
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(crate::error::offline().into());
        }
        add(&self.shared.counters.subscribes_received, 1);
        let mut requests = request.into_inner();
        let list = match requests.message().await? {
            Some(gnmi::SubscribeRequest {
                request: Some(Req::Subscribe(list)),
                ..
            }) => list,
            Some(_) => {
                return Err(SimError::InvalidArgument(
                    "the first SubscribeRequest must carry a SubscriptionList".into(),
                )
                .into());
            }
            None => {
                return Err(SimError::InvalidArgument(
                    "the request stream ended before a SubscriptionList".into(),
                )
                .into());
            }
        };
        let spec = Spec::parse(list, self.shared.response_origin.as_deref())?;
        let start = if spec.mode == Mode::Stream {
            let (tree, changes) = self.device.subscribe().await?;
            Start {
                tree,
                changes: Some(changes),
            }
        } else {
            Start {
                tree: self.device.snapshot().await?,
                changes: None,
            }
        };
        tracing::debug!(mode = ?spec.mode, subscriptions = spec.patterns.len(), "Subscribe opened");
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        let orders = self.shared.orders.subscribe();
        let epoch = orders.borrow().epoch;
        let session = Session {
            faults: self.shared.faults.subscribe(),
            orders,
            epoch,
            budget: None,
            sent: 0,
            batch: self.shared.notification_batch.max(1),
            buf: bytes::BytesMut::new(),
            out,
            device: self.device,
            spec,
            _open: self.shared.counters.stream_opened(),
            synced: None,
            shared: Arc::clone(&self.shared),
        };
        self.shared.tasks.spawn(session.run(start, requests));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl tonic::server::StreamingService<gnmi::SubscribeRequest> for Subscriber {
    type Response = Bytes;
    type ResponseStream = ReceiverStream<Result<Bytes, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<gnmi::SubscribeRequest>>) -> Self::Future {
        Box::pin(self.clone().open(request))
    }
}

/// A SAMPLE subscription or a heartbeat, due at `due`.
#[derive(Debug)]
struct Timer {
    /// Index into `Spec::patterns`.
    sub: usize,
    every: Duration,
    due: Instant,
    /// SAMPLE (with suppress_redundant and heartbeat) or ON_CHANGE heartbeat.
    kind: TimerKind,
}

#[derive(Debug)]
enum TimerKind {
    Sample {
        suppress_redundant: bool,
        heartbeat: Option<Duration>,
        last_full: Instant,
        /// What was last sent, for suppress_redundant.
        last: BTreeMap<Key, Leaf>,
    },
    Heartbeat,
}

/// A validated SubscriptionList.
#[derive(Debug)]
struct Spec {
    mode: Mode,
    encoding: gnmi::Encoding,
    updates_only: bool,
    /// Encoded notification prefix (the target, echoed, and the configured
    /// response origin).
    prefix: Option<Vec<u8>>,
    /// Every subscription's path, for dumps.
    patterns: Arc<[Pattern]>,
    /// Subscriptions that stream changes (ON_CHANGE, TARGET_DEFINED).
    on_change: Arc<[Pattern]>,
    timers: Vec<Timer>,
}

impl Spec {
    /// `origin`: the origin responses carry in their prefix, if any.
    fn parse(list: gnmi::SubscriptionList, origin: Option<&str>) -> Result<Self, SimError> {
        let mode = Mode::try_from(list.mode).map_err(|_| {
            SimError::InvalidArgument(format!("subscribe.mode: unknown mode {}", list.mode))
        })?;
        let encoding = encoding(list.encoding, "subscribe.encoding")?;
        let prefix = list.prefix.as_ref();
        let mut subscriptions = list.subscription;
        if subscriptions.is_empty() {
            // No entries: the prefix itself is the subscription.
            subscriptions.push(gnmi::Subscription::default());
        }
        let now = Instant::now();
        let mut patterns = Vec::new();
        let mut on_change = Vec::new();
        let mut timers = Vec::new();
        for (i, sub) in subscriptions.into_iter().enumerate() {
            let field = format!("subscribe.subscription[{i}]");
            let path = join(
                prefix,
                &sub.path.unwrap_or_default(),
                &format!("{field}.path"),
            )?;
            let pattern = Pattern::new(path);
            let interval = |ns: u64, name: &str| -> Result<Option<Duration>, SimError> {
                let d = Duration::from_nanos(ns);
                if ns != 0 && d < MIN_INTERVAL {
                    return Err(SimError::InvalidArgument(format!(
                        "{field}.{name}: {ns} ns is below the shortest supported interval ({MIN_INTERVAL:?})"
                    )));
                }
                Ok((ns != 0).then_some(d))
            };
            let heartbeat = interval(sub.heartbeat_interval, "heartbeat_interval")?;
            let sub_mode = gnmi::SubscriptionMode::try_from(sub.mode).map_err(|_| {
                SimError::InvalidArgument(format!("{field}.mode: unknown mode {}", sub.mode))
            })?;
            if mode == Mode::Stream {
                match sub_mode {
                    gnmi::SubscriptionMode::OnChange | gnmi::SubscriptionMode::TargetDefined => {
                        on_change.push(pattern.clone());
                        if let Some(every) = heartbeat {
                            timers.push(Timer {
                                sub: i,
                                every,
                                due: now + every,
                                kind: TimerKind::Heartbeat,
                            });
                        }
                    }
                    gnmi::SubscriptionMode::Sample => {
                        let every = interval(sub.sample_interval, "sample_interval")?
                            .unwrap_or(DEFAULT_SAMPLE_INTERVAL);
                        timers.push(Timer {
                            sub: i,
                            every,
                            due: now + every,
                            kind: TimerKind::Sample {
                                suppress_redundant: sub.suppress_redundant,
                                heartbeat,
                                last_full: now,
                                last: BTreeMap::new(),
                            },
                        });
                    }
                }
            }
            patterns.push(pattern);
        }
        Ok(Self {
            mode,
            encoding,
            updates_only: list.updates_only,
            prefix: crate::gnmi::echo_prefix(prefix, origin).map(|p| p.encode_to_vec()),
            patterns: patterns.into(),
            on_change: on_change.into(),
            timers,
        })
    }
}

/// The first snapshot, and for STREAM the change feed that continues it.
struct Start {
    tree: Tree,
    changes: Option<broadcast::Receiver<Arc<Batch>>>,
}

/// Why a stream's task ended.
enum End {
    /// The client went away; nothing to send.
    ClientGone,
    /// A ONCE or POLL stream is complete: end with OK.
    Done,
    /// The simulator ended the stream on purpose (faults, orders, restart,
    /// slow reader).
    Cut(Status),
    /// Something else ends the stream with this status.
    Error(Status),
}

fn cut(reason: &str) -> End {
    End::Cut(Status::unavailable(format!("netsync-sim: {reason}")))
}

struct Session {
    shared: Arc<Shared>,
    device: Device,
    spec: Spec,
    out: mpsc::Sender<Result<Bytes, Status>>,
    faults: watch::Receiver<Faults>,
    orders: watch::Receiver<DisconnectOrder>,
    /// Epoch of the last disconnect order this stream has seen.
    epoch: u64,
    /// Messages left under a disconnect order.
    budget: Option<u64>,
    /// Messages sent so far.
    sent: u64,
    batch: usize,
    /// Spare buffer that notifications are written into (see
    /// [`NotificationBuilder`]).
    buf: bytes::BytesMut,
    _open: crate::counters::OpenGuard,
    synced: Option<SyncedGuard>,
}

impl Session {
    async fn run(mut self, start: Start, requests: Streaming<gnmi::SubscribeRequest>) {
        let end = match self.serve(start, requests).await {
            Ok(()) => End::Done,
            Err(end) => end,
        };
        self.synced = None;
        match end {
            End::Done | End::ClientGone => {}
            End::Cut(status) => {
                add(&self.shared.counters.streams_disconnected, 1);
                tracing::debug!(%status, "stream cut");
                self.send_status(status).await;
            }
            End::Error(status) => self.send_status(status).await,
        }
    }

    /// Ends the stream with `status`, after the messages already queued. At
    /// shutdown it does not wait for room: a client that stopped reading must
    /// not hold the simulator open.
    async fn send_status(&self, status: Status) {
        if self.shared.cancel.is_cancelled() {
            let _ = self.out.try_send(Err(status));
            return;
        }
        tokio::select! {
            _ = self.out.send(Err(status)) => {}
            () = self.shared.cancel.cancelled() => {}
        }
    }

    async fn serve(
        &mut self,
        start: Start,
        mut requests: Streaming<gnmi::SubscribeRequest>,
    ) -> Result<(), End> {
        let Start { tree, changes } = start;
        if !self.spec.updates_only {
            let drop_after = self.faults.borrow().drop_dump_after_updates;
            let patterns = Arc::clone(&self.spec.patterns);
            self.dump(&tree, &patterns, drop_after).await?;
        }
        // suppress_redundant compares samples with what the client last got.
        if !self.spec.updates_only {
            for timer in &mut self.spec.timers {
                if let TimerKind::Sample {
                    suppress_redundant: true,
                    last,
                    ..
                } = &mut timer.kind
                {
                    *last = tree
                        .scan(&self.spec.patterns[timer.sub])
                        .map(|(p, l)| (p.clone(), l.clone()))
                        .collect();
                }
            }
        }
        drop(tree);
        self.send(wire::sync_response(), 0, 0, true).await?;
        match self.spec.mode {
            Mode::Once => Ok(()),
            Mode::Poll => self.poll_loop(requests).await,
            Mode::Stream => {
                self.synced = Some(self.shared.counters.synced());
                let changes = changes.expect("STREAM subscriptions have a change feed");
                self.stream_loop(changes, &mut requests).await
            }
        }
    }

    async fn poll_loop(
        &mut self,
        mut requests: Streaming<gnmi::SubscribeRequest>,
    ) -> Result<(), End> {
        loop {
            let request = tokio::select! {
                () = self.shared.cancel.cancelled() => return Err(shutting_down()),
                () = self.out.closed() => return Err(End::ClientGone),
                changed = self.orders.changed() => {
                    if changed.is_err() {
                        return Err(shutting_down());
                    }
                    self.check_orders()?;
                    continue;
                }
                request = requests.next() => request,
            };
            match request {
                None => return Ok(()),
                Some(Err(_)) => return Err(End::ClientGone),
                Some(Ok(gnmi::SubscribeRequest {
                    request: Some(Req::Poll(_)),
                    ..
                })) => {
                    let tree = self
                        .device
                        .snapshot()
                        .await
                        .map_err(|e| End::Cut(e.into()))?;
                    let patterns = Arc::clone(&self.spec.patterns);
                    self.dump(&tree, &patterns, None).await?;
                    self.send(wire::sync_response(), 0, 0, true).await?;
                }
                Some(Ok(_)) => {
                    return Err(End::Error(Status::invalid_argument(
                        "only Poll requests may follow the SubscriptionList of a POLL subscription",
                    )));
                }
            }
        }
    }

    async fn stream_loop(
        &mut self,
        mut changes: broadcast::Receiver<Arc<Batch>>,
        requests: &mut Streaming<gnmi::SubscribeRequest>,
    ) -> Result<(), End> {
        let mut requests_open = true;
        loop {
            let next_due = self.spec.timers.iter().map(|t| t.due).min();
            tokio::select! {
                biased;
                () = self.shared.cancel.cancelled() => return Err(shutting_down()),
                () = self.out.closed() => return Err(End::ClientGone),
                changed = self.orders.changed() => {
                    if changed.is_err() {
                        return Err(shutting_down());
                    }
                    self.check_orders()?;
                }
                changed = self.faults.changed() => {
                    if changed.is_err() {
                        return Err(shutting_down());
                    }
                    self.check_fault_limit()?;
                }
                batch = changes.recv() => match batch {
                    Ok(batch) => self.send_batch(&batch).await?,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Err(End::Cut(Status::resource_exhausted(format!(
                            "netsync-sim: subscriber too slow, {missed} change batches behind; subscribe again"
                        ))));
                    }
                    // The device restarted: the feed was replaced.
                    Err(broadcast::error::RecvError::Closed) => return Err(cut("device restarted")),
                },
                () = sleep_until_opt(next_due) => self.fire_timers().await?,
                request = requests.next(), if requests_open => match request {
                    // A half-close does not end a STREAM subscription.
                    None => requests_open = false,
                    Some(Err(_)) => return Err(End::ClientGone),
                    Some(Ok(_)) => {
                        return Err(End::Error(Status::invalid_argument(
                            "a STREAM subscription takes no further requests (Poll is for POLL mode)",
                        )));
                    }
                },
            }
        }
    }

    /// Applies a new disconnect order, if there is one.
    fn check_orders(&mut self) -> Result<(), End> {
        let order = *self.orders.borrow_and_update();
        if order.epoch > self.epoch {
            self.epoch = order.epoch;
            if order.after_messages == 0 {
                return Err(cut("stream disconnected on request"));
            }
            self.budget = Some(order.after_messages);
        }
        Ok(())
    }

    /// Ends the stream if the disconnect_after_messages fault says so.
    fn check_fault_limit(&mut self) -> Result<(), End> {
        match self.faults.borrow_and_update().disconnect_after_messages {
            Some(limit) if self.sent >= limit => Err(cut(&format!(
                "stream disconnected after {limit} messages (disconnect_after_messages fault)"
            ))),
            _ => Ok(()),
        }
    }

    /// Waits while the subscribe_stall fault is on.
    async fn wait_stall(&mut self) -> Result<(), End> {
        loop {
            let until = self.faults.borrow().stall_until;
            let Some(until) = until.filter(|u| *u > Instant::now()) else {
                return Ok(());
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                changed = self.faults.changed() => {
                    if changed.is_err() {
                        return Err(shutting_down());
                    }
                }
                () = self.shared.cancel.cancelled() => return Err(shutting_down()),
                () = self.out.closed() => return Err(End::ClientGone),
            }
        }
    }

    /// Sends one message, honouring stalls, orders and message limits.
    async fn send(
        &mut self,
        message: Bytes,
        updates: usize,
        deletes: usize,
        sync: bool,
    ) -> Result<(), End> {
        if self.orders.has_changed().unwrap_or(false) {
            self.check_orders()?;
        }
        self.wait_stall().await?;
        // Waiting for room is the backpressure of a slow client; shutdown
        // interrupts it.
        tokio::select! {
            sent = self.out.send(Ok(message)) => sent.map_err(|_| End::ClientGone)?,
            () = self.shared.cancel.cancelled() => return Err(shutting_down()),
        }
        self.sent += 1;
        let counters = &self.shared.counters;
        if sync {
            add(&counters.sync_responses_sent, 1);
        } else {
            add(&counters.notifications_sent, 1);
            add(&counters.updates_sent, updates as u64);
            add(&counters.deletes_sent, deletes as u64);
        }
        if let Some(budget) = self.budget.as_mut() {
            *budget = budget.saturating_sub(1);
            if *budget == 0 {
                return Err(cut("stream disconnected on request"));
            }
        }
        self.check_fault_limit()
    }

    fn builder(&mut self, timestamp: i64) -> NotificationBuilder {
        let buf = std::mem::take(&mut self.buf);
        NotificationBuilder::new(
            timestamp,
            self.spec.prefix.as_deref(),
            (self.batch * 160).min(MAX_NOTIFICATION_BYTES),
            buf,
        )
    }

    fn full(&self, builder: &NotificationBuilder) -> bool {
        builder.updates() + builder.deletes() >= self.batch
            || builder.body_len() >= MAX_NOTIFICATION_BYTES
    }

    async fn flush(&mut self, builder: NotificationBuilder) -> Result<(), End> {
        if builder.is_empty() {
            self.buf = builder.abandon();
            return Ok(());
        }
        let (updates, deletes) = (builder.updates(), builder.deletes());
        let (message, buf) = builder.finish();
        self.buf = buf;
        self.send(message, updates, deletes, false).await
    }

    /// The leaf's update entry in the stream's encoding.
    fn entry<'a>(&self, leaf: &'a Leaf) -> Cow<'a, [u8]> {
        match self.spec.encoding {
            gnmi::Encoding::Proto => Cow::Borrowed(leaf.update_entry()),
            other => Cow::Owned(leaf.update_entry_with(&encode_value(&leaf.value(), other))),
        }
    }

    /// Sends every leaf `patterns` select in `tree`; with `drop_after`, cuts
    /// the stream after that many updates.
    async fn dump(
        &mut self,
        tree: &Tree,
        patterns: &[Pattern],
        drop_after: Option<u64>,
    ) -> Result<(), End> {
        let mut builder = self.builder(now_ns());
        for (dumped, (_, leaf)) in (0u64..).zip(tree.scan_union(patterns)) {
            if drop_after == Some(dumped) {
                self.flush(builder).await?;
                return Err(cut(&format!(
                    "connection dropped after {dumped} updates of the initial dump (drop_dump_after_updates fault)"
                )));
            }
            let entry = self.entry(leaf);
            builder.push_update(&entry);
            if self.full(&builder) {
                self.flush(builder).await?;
                builder = self.builder(now_ns());
            }
        }
        self.flush(builder).await
    }

    /// Sends the changes of one batch that ON_CHANGE subscriptions select.
    async fn send_batch(&mut self, batch: &Batch) -> Result<(), End> {
        let on_change = Arc::clone(&self.spec.on_change);
        if on_change.is_empty() {
            return Ok(());
        }
        let mut builder = self.builder(batch.timestamp);
        for change in &batch.changes {
            if !on_change.iter().any(|p| p.matches(&change.path)) {
                continue;
            }
            match &change.kind {
                ChangeKind::Update(leaf) => {
                    let entry = self.entry(leaf);
                    builder.push_update(&entry);
                }
                ChangeKind::Delete(entry) => builder.push_delete(entry),
            }
            if self.full(&builder) {
                self.flush(builder).await?;
                builder = self.builder(batch.timestamp);
            }
        }
        self.flush(builder).await
    }

    /// Runs every timer that is due.
    async fn fire_timers(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.spec.timers.len())
            .filter(|i| self.spec.timers[*i].due <= now)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let tree = self
            .device
            .snapshot()
            .await
            .map_err(|e| End::Cut(e.into()))?;
        for i in due {
            // Taken out (not cloned: a suppress_redundant timer holds a map of
            // everything it last sent) and put back after firing.
            let placeholder = Timer {
                sub: 0,
                every: Duration::MAX,
                due: now,
                kind: TimerKind::Heartbeat,
            };
            let mut timer = std::mem::replace(&mut self.spec.timers[i], placeholder);
            // Skip missed periods rather than sending a burst of samples.
            while timer.due <= now {
                timer.due += timer.every;
            }
            self.fire(&tree, &mut timer, now).await?;
            self.spec.timers[i] = timer;
        }
        Ok(())
    }

    /// One sample or heartbeat of one subscription.
    async fn fire(&mut self, tree: &Tree, timer: &mut Timer, now: Instant) -> Result<(), End> {
        let patterns = Arc::clone(&self.spec.patterns);
        let pattern = &patterns[timer.sub];
        let mut builder = self.builder(now_ns());
        match &mut timer.kind {
            TimerKind::Heartbeat => {
                for (_, leaf) in tree.scan(pattern) {
                    builder.push_update(&self.entry(leaf));
                    if self.full(&builder) {
                        self.flush(builder).await?;
                        builder = self.builder(now_ns());
                    }
                }
            }
            TimerKind::Sample {
                suppress_redundant,
                heartbeat,
                last_full,
                last,
            } => {
                let full = !*suppress_redundant
                    || heartbeat.is_some_and(|every| now.duration_since(*last_full) >= every);
                if full {
                    *last_full = now;
                }
                let mut current = BTreeMap::new();
                for (path, leaf) in tree.scan(pattern) {
                    let changed = last
                        .get(path)
                        .is_none_or(|old| !old.same(leaf) && old.value_wire() != leaf.value_wire());
                    if *suppress_redundant {
                        current.insert(path.clone(), leaf.clone());
                    }
                    if full || changed {
                        builder.push_update(&self.entry(leaf));
                    }
                    if self.full(&builder) {
                        self.flush(builder).await?;
                        builder = self.builder(now_ns());
                    }
                }
                if *suppress_redundant {
                    for (path, leaf) in last.iter() {
                        if !current.contains_key(path) {
                            builder.push_delete(&leaf.delete_entry());
                        }
                    }
                    *last = current;
                }
            }
        }
        self.flush(builder).await
    }
}

fn shutting_down() -> End {
    End::Error(SimError::ShuttingDown.into())
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
