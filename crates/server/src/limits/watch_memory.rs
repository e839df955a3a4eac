//! The memory WatchSync holds, bounded in bytes: each watcher's queue of
//! encoded messages towards its client, and all the queues together.
//!
//! A watcher's task writes encoded `SyncEvent`s into its [`QueueWriter`]; the
//! response stream ([`QueueReader`]) hands them to HTTP/2 as the client's
//! flow-control window allows. Two bounds:
//! - per watcher, `max_watcher_bytes` (B): the queue holds at most B/2 (one
//!   message larger than that is let into an empty queue), so a client that
//!   reads keeps a little ahead of it and nothing more; the other half is
//!   room for newer revisions arriving while a large one is sent (the
//!   watcher task counts those, see `api::watch`).
//! - together, `max_watch_bytes_total` (G): a message that would take the
//!   sum of all queues past G first ends the watcher whose client has waited
//!   longest for its oldest queued message (possibly the writer itself).
//!   Memory is held by watchers already open, so refusing new ones would free
//!   nothing, and a client that stopped reading keeps its queue until its
//!   connection dies; its oldest message is the oldest of all, while a client
//!   that reads along has its messages taken within moments, so it is not the
//!   one ended unless G is too small for the watchers that keep up.
//!
//! A watcher ended here loses what was queued for it (that is the memory
//! freed) and is told the revision to resume from: the first revision of
//! which a part was dropped, else the first it had not queued. Messages
//! shared by several watchers (one encoding of a live commit) count once per
//! watcher that has them queued, so the totals are an upper bound of what
//! the queues really hold.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::Notify;
use tonic::Status;

use super::ApiLimits;

/// The watchers' queues and their byte budgets. One per process.
#[derive(Debug)]
pub struct WatchMemory {
    per_watcher: usize,
    total_max: usize,
    /// Bytes queued across all watchers.
    total: AtomicUsize,
    /// The highest `total` reached since start.
    peak: AtomicUsize,
    /// Every open watcher's queue, to find the one to end when `total` is full.
    queues: Mutex<HashMap<u64, Weak<Queue>>>,
    next_id: AtomicU64,
    /// Response streams open (a watcher task may outlive its stream until
    /// it next has something to send).
    readers: AtomicUsize,
}

impl WatchMemory {
    /// The budgets of `limits`.
    pub fn new(limits: &ApiLimits) -> Arc<Self> {
        Arc::new(Self {
            per_watcher: limits.max_watcher_bytes,
            total_max: limits.max_watch_bytes_total,
            total: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            queues: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            readers: AtomicUsize::new(0),
        })
    }

    /// Bytes one watcher may be owed (`max_watcher_bytes`).
    pub fn per_watcher(&self) -> usize {
        self.per_watcher
    }

    /// Bytes queued across all watchers now.
    pub fn queued(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The most bytes queued across all watchers at once since start.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Watchers whose response stream is open.
    pub fn watchers(&self) -> usize {
        self.readers.load(Ordering::Relaxed)
    }

    /// A queue for a new watcher of `datastore`: its writing and reading ends.
    pub fn queue(self: &Arc<Self>, datastore: &str) -> (QueueWriter, QueueReader) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue {
            id,
            memory: self.clone(),
            datastore: datastore.to_string(),
            state: Mutex::new(State::default()),
            readable: Notify::new(),
            writable: Notify::new(),
        });
        self.lock_queues().insert(id, Arc::downgrade(&queue));
        self.readers.fetch_add(1, Ordering::Relaxed);
        (
            QueueWriter(queue.clone()),
            QueueReader { queue, done: false },
        )
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<Queue>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `len` bytes from the total, unless that would pass its maximum
    /// (the first message into an empty total always fits, so one message
    /// larger than the maximum cannot block every watcher for good).
    fn reserve(&self, len: usize) -> bool {
        let mut current = self.total.load(Ordering::Relaxed);
        loop {
            if current > 0 && current + len > self.total_max {
                return false;
            }
            match self.total.compare_exchange_weak(
                current,
                current + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(current + len, Ordering::Relaxed);
                    return true;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Takes `len` bytes from the total whatever it holds.
    fn force(&self, len: usize) {
        let now = self.total.fetch_add(len, Ordering::Relaxed) + len;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn release(&self, len: usize) {
        self.total.fetch_sub(len, Ordering::Relaxed);
    }

    /// Ends the watcher whose oldest queued message has waited longest;
    /// false if no queue holds anything.
    fn end_slowest(&self) -> bool {
        let queues: Vec<Arc<Queue>> = self
            .lock_queues()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let slowest = queues
            .iter()
            .filter_map(|queue| Some((queue.lock().items.front()?.queued, queue)))
            .min_by_key(|(queued, _)| *queued);
        let Some((_, queue)) = slowest else {
            return false;
        };
        let total_max = self.total_max;
        let datastore = queue.datastore.clone();
        queue.cut(|from| {
            crate::error::watch_cut(
                crate::error::CutReason::WatchMemoryFull,
                &datastore,
                from,
                format!(
                    "the watchers of this netsyncd hold max_watch_bytes_total ({total_max} bytes) \
                     between them, and this watcher of {datastore:?} has had a message waiting \
                     for its client longest; resume with from_revision={from}"
                ),
            )
        });
        true
    }
}

/// One watcher's queue of encoded messages.
#[derive(Debug)]
struct Queue {
    id: u64,
    memory: Arc<WatchMemory>,
    datastore: String,
    state: Mutex<State>,
    /// Wakes the reader: a message, or the end.
    readable: Notify,
    /// Wakes the writer: room, or the watch was ended.
    writable: Notify,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// Bytes of `items`.
    bytes: usize,
    /// The first revision the writer has not queued whole.
    next: u64,
    /// The status the stream ends with, once `items` are taken.
    end: Option<Status>,
    /// Nothing more is queued: ended, or the reader left.
    stopped: bool,
}

#[derive(Debug)]
struct Item {
    bytes: Bytes,
    /// The revision of a commit part; `None` for other events.
    revision: Option<u64>,
    queued: Instant,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops what is queued and ends the stream with `status(from)`, `from`
    /// being the revision to resume from. A stream ending already keeps its
    /// status, unless messages were still queued before it: they are
    /// dropped too, and the new status names where to resume.
    fn cut(&self, status: impl FnOnce(u64) -> Status) {
        let mut state = self.lock();
        if state.stopped && state.items.is_empty() {
            return;
        }
        let dropped = state.items.iter().find_map(|item| item.revision);
        let from = dropped.map_or(state.next, |r| r.min(state.next));
        state.items.clear();
        self.memory.release(std::mem::take(&mut state.bytes));
        state.end = Some(status(from));
        state.stopped = true;
        drop(state);
        self.readable.notify_one();
        self.writable.notify_one();
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.memory.release(std::mem::take(&mut state.bytes));
        self.memory.lock_queues().remove(&self.id);
    }
}

/// What [`QueueWriter::try_push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// The message is queued.
    Queued,
    /// The queue is full: wait for [`QueueWriter::writable`] and try again.
    Full,
    /// The watch has ended (the watcher was cut, or its client left): stop.
    Stopped,
}

/// The watcher task's end of its queue. Dropping it ends the stream after
/// what is queued (with no status if none was set).
#[derive(Debug)]
pub struct QueueWriter(Arc<Queue>);

impl QueueWriter {
    /// Queues `bytes` (a commit part of `revision`, or another event) if the
    /// queue has room; a full total first ends the slowest watcher.
    pub fn try_push(&self, bytes: &Bytes, revision: Option<u64>) -> Push {
        let queue = &self.0;
        let capacity = queue.memory.per_watcher / 2;
        let len = bytes.len();
        loop {
            let mut state = queue.lock();
            if state.stopped {
                return Push::Stopped;
            }
            if !state.items.is_empty() && state.bytes + len > capacity {
                return Push::Full;
            }
            if !queue.memory.reserve(len) {
                drop(state);
                // Perhaps this watcher: the next round says so.
                if queue.memory.end_slowest() {
                    continue;
                }
                // Nothing queued anywhere: the total was being given back
                // meanwhile (it is changed under each queue's lock, so this
                // is a moment's race). Go over by this message rather than
                // spin.
                state = queue.lock();
                if state.stopped {
                    return Push::Stopped;
                }
                queue.memory.force(len);
            }
            state.items.push_back(Item {
                bytes: bytes.clone(),
                revision,
                queued: Instant::now(),
            });
            state.bytes += len;
            drop(state);
            queue.readable.notify_one();
            return Push::Queued;
        }
    }

    /// Waits until a message was taken from the queue or the watch ended
    /// (may also return at once, for an earlier one).
    pub async fn writable(&self) {
        self.0.writable.notified().await;
    }

    /// Whether the watch has ended (cut, or its client left): nothing more
    /// is queued. [`writable`](Self::writable) returns when that happens.
    pub fn stopped(&self) -> bool {
        self.0.lock().stopped
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.0.lock().bytes
    }

    /// Notes that every revision before `next` is queued whole.
    pub fn set_next(&self, next: u64) {
        self.0.lock().next = next;
    }

    /// Ends the stream with `status(from)` after what is queued.
    pub fn finish(&self, status: impl FnOnce(u64) -> Status) {
        let mut state = self.0.lock();
        if state.end.is_none() {
            let from = state.next;
            state.end = Some(status(from));
        }
        state.stopped = true;
        drop(state);
        self.0.readable.notify_one();
    }

    /// Ends the stream with `status(from)` at once, dropping what is queued.
    pub fn cut(&self, status: impl FnOnce(u64) -> Status) {
        self.0.cut(status);
    }
}

impl Drop for QueueWriter {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.readable.notify_one();
    }
}

/// The response stream's end of a watcher's queue. Dropping it (the client
/// left) drops what is queued and stops the writer.
#[derive(Debug)]
pub struct QueueReader {
    queue: Arc<Queue>,
    done: bool,
}

impl QueueReader {
    /// The next message, the ending status, or `None` after it.
    pub async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            if self.done {
                return None;
            }
            {
                let mut state = self.queue.lock();
                if let Some(item) = state.items.pop_front() {
                    state.bytes -= item.bytes.len();
                    self.queue.memory.release(item.bytes.len());
                    drop(state);
                    self.queue.writable.notify_one();
                    return Some(Ok(item.bytes));
                }
                if let Some(status) = state.end.take() {
                    self.done = true;
                    return Some(Err(status));
                }
                if state.stopped {
                    self.done = true;
                    return None;
                }
            }
            self.queue.readable.notified().await;
        }
    }

    /// The messages as a stream.
    pub fn into_stream(self) -> Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>> {
        Box::pin(futures::stream::unfold(self, |mut reader| async move {
            let next = reader.next().await?;
            Some((next, reader))
        }))
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        self.queue.memory.readers.fetch_sub(1, Ordering::Relaxed);
        let mut state = self.queue.lock();
        state.stopped = true;
        state.items.clear();
        self.queue.memory.release(std::mem::take(&mut state.bytes));
        drop(state);
        self.queue.writable.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(per_watcher: usize, total: usize) -> Arc<WatchMemory> {
        WatchMemory::new(&ApiLimits {
            max_watcher_bytes: per_watcher,
            max_watch_bytes_total: total,
            ..ApiLimits::default()
        })
    }

    fn message(len: usize) -> Bytes {
        Bytes::from(vec![7; len])
    }

    #[tokio::test]
    async fn a_queue_holds_half_its_budget_and_an_oversize_message_only_alone() {
        let memory = memory(100, 1000);
        let (writer, mut reader) = memory.queue("a");
        assert_eq!(writer.try_push(&message(30), Some(1)), Push::Queued);
        assert_eq!(writer.try_push(&message(20), Some(1)), Push::Queued);
        assert_eq!(writer.try_push(&message(1), Some(2)), Push::Full);
        assert_eq!(memory.queued(), 50);
        assert_eq!(reader.next().await.unwrap().unwrap().len(), 30);
        assert_eq!(reader.next().await.unwrap().unwrap().len(), 20);
        assert_eq!(writer.try_push(&message(500), Some(2)), Push::Queued);
        assert_eq!(writer.try_push(&message(1), Some(3)), Push::Full);
        assert_eq!(memory.peak(), 500);
    }

    #[tokio::test]
    async fn a_cut_drops_the_queue_and_names_the_first_revision_dropped() {
        let memory = memory(100, 1000);
        let (writer, mut reader) = memory.queue("a");
        writer.set_next(5);
        writer.try_push(&message(10), None);
        writer.try_push(&message(10), Some(5));
        writer.try_push(&message(10), Some(5));
        writer.set_next(6);
        writer.try_push(&message(10), Some(6));
        assert_eq!(reader.next().await.unwrap().unwrap().len(), 10);
        writer.cut(|from| Status::resource_exhausted(format!("from_revision={from}")));
        assert_eq!(memory.queued(), 0);
        let end = reader.next().await.unwrap().unwrap_err();
        assert_eq!(end.message(), "from_revision=5");
        assert!(reader.next().await.is_none());
        assert_eq!(writer.try_push(&message(1), None), Push::Stopped);
    }

    #[tokio::test]
    async fn a_full_total_ends_the_watcher_waiting_longest() {
        let memory = memory(200, 100);
        let (slow, mut slow_reader) = memory.queue("a");
        let (fast, mut fast_reader) = memory.queue("a");
        slow.set_next(3);
        assert_eq!(slow.try_push(&message(40), Some(3)), Push::Queued);
        assert_eq!(fast.try_push(&message(40), Some(3)), Push::Queued);
        // 80 + 40 > 100: the slow one, queued first, is ended.
        assert_eq!(fast.try_push(&message(40), Some(4)), Push::Queued);
        assert!(memory.queued() <= 100 && memory.peak() <= 100);
        let end = slow_reader.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(
            end.message().contains("max_watch_bytes_total")
                && end.message().contains("from_revision=3"),
            "{end:?}"
        );
        assert_eq!(slow.try_push(&message(1), None), Push::Stopped);
        assert!(fast_reader.next().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_finished_watch_still_queued_gives_way_to_the_total() {
        let memory = memory(200, 100);
        let (ended, mut ended_reader) = memory.queue("a");
        let (other, _other_reader) = memory.queue("a");
        ended.set_next(4);
        ended.try_push(&message(60), Some(4));
        ended.set_next(5);
        ended.finish(|from| Status::unavailable(format!("from_revision={from}")));
        // Its client reads nothing: its bytes are the ones to go.
        assert_eq!(other.try_push(&message(60), Some(5)), Push::Queued);
        let end = ended_reader.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(end.message().contains("from_revision=4"), "{end:?}");
        assert!(ended_reader.next().await.is_none());
    }

    #[tokio::test]
    async fn a_reader_that_leaves_frees_its_bytes_and_its_place() {
        let memory = memory(100, 1000);
        let (writer, reader) = memory.queue("a");
        writer.try_push(&message(40), None);
        assert_eq!(memory.watchers(), 1);
        drop(reader);
        assert_eq!((memory.queued(), memory.watchers()), (0, 0));
        assert_eq!(writer.try_push(&message(1), None), Push::Stopped);
        drop(writer);
        assert!(memory.lock_queues().is_empty());
    }
}
