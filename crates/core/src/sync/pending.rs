//! `Pending`: what the ingest has read and the committer has not taken yet,
//! the only state the two tasks hand over through.
//!
//! It waits on nothing: plain data behind a `std::sync::Mutex` in the shared
//! state, locked for a short synchronous section (one notification, one O(1)
//! swap, one sorted run given back) and never across an await.
//!
//! `Pending` holds at most three deltas, each a segment of the stream:
//! - `dump`: the current generation's initial dump, until its `sync_response`;
//!   never committed before that (it would prune what has not arrived yet);
//! - `sealed`: a complete dump closed by `sync_response`, exactly the
//!   notifications received before it: the next commit, a replace, on its own;
//! - `open`: changes received after the last barrier.
//!
//! Sealing a dump supersedes `open` and any older `sealed`: the dump is the
//! device's whole state within the subscribed paths, so the older changes are
//! already reflected in it (or were undone on the device). For the same
//! reason a resync, when the ingest handles it, empties `open`: the next dump
//! supersedes it, and after a lost commit (`lost`) it would not be committed
//! on the right base.

use tokio::time::Instant;

use crate::running::Delta;

/// The segments between the ingest and the committer (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// The current generation's dump, until its `sync_response`.
    pub(super) dump: Option<Delta>,
    /// Numbers dumps, so that a sorted batch goes back to the dump it came
    /// from, or nowhere if that dump was dropped meanwhile.
    pub(super) dump_seq: u64,
    /// Whether the committer is sorting a batch of the dump. A delete must
    /// wait until it is back (the batch's updates came before it).
    pub(super) batch_out: bool,
    /// A complete dump: the next commit, a replace.
    pub(super) sealed: Option<Sealed>,
    /// Changes after the last barrier.
    pub(super) open: Delta,
    /// When the oldest change in `open` arrived.
    pub(super) open_since: Option<Instant>,
    /// A delta taken by the committer was lost (it failed and forced a
    /// resync): until the ingest handles that resync, changes after the
    /// barrier are not kept, since committed on a base without the lost ones
    /// they would make a running the device never had. The resync's dump
    /// brings them back.
    pub(super) lost: bool,
}

/// A dump closed by its `sync_response`.
#[derive(Debug)]
pub(super) struct Sealed {
    /// The dump's notifications.
    pub(super) delta: Delta,
    /// The first dump of a connection: committed even when it changes nothing,
    /// and marks the sync IN_SYNC once durable (if its connection is still the
    /// current one).
    pub(super) initial: bool,
    /// The connection it came from.
    pub(super) generation: u64,
    /// The dump it was.
    pub(super) seq: u64,
}

impl Pending {
    /// Changes received and not yet taken, in all three segments.
    pub(super) fn len(&self) -> usize {
        self.open.len()
            + self.dump.as_ref().map_or(0, Delta::len)
            + self.sealed.as_ref().map_or(0, |s| s.delta.len())
    }
}
