//! What a device may send one datastore, resolved from its `SyncSpec` and the
//! server's defaults (`SyncLimits`), and the words a breach is reported in.
//!
//! A cap is checked where the data is before it reaches `Pending` (message
//! size in the transport and the read-ahead, leaf size in the read-ahead) or
//! before a commit is made durable (running's size): a breach never leaves
//! part of a dump or notification committed, running stays at its last good
//! revision, and the ingest disconnects with backoff naming the cap.

use std::time::Duration;

use super::SyncLimits;
use crate::datastore::SyncSpec;
pub use crate::device::message_over;
use crate::human::{human_bytes, human_count, human_duration};

/// One datastore's caps, its spec's values where set, else the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Longest wait for the end of a dump (`sync_response`, a Get answer).
    pub initial_sync_timeout: Duration,
    /// Largest message from the device, in bytes.
    pub max_message_bytes: usize,
    /// Most leaves running may hold.
    pub max_leaves: usize,
    /// Largest encoded value of one leaf, in bytes.
    pub max_leaf_bytes: usize,
}

impl SyncLimits {
    /// The caps of a datastore declared with `spec`.
    pub fn caps(&self, spec: &SyncSpec) -> Caps {
        let pick = |declared: u64, default: u64| {
            let value = if declared == 0 { default } else { declared };
            usize::try_from(value).unwrap_or(usize::MAX).max(1)
        };
        Caps {
            initial_sync_timeout: spec
                .initial_sync_timeout
                .unwrap_or(self.initial_sync_timeout),
            max_message_bytes: pick(spec.caps.max_message_bytes, self.max_message_bytes),
            max_leaves: pick(spec.caps.max_leaves, self.max_leaves),
            max_leaf_bytes: pick(spec.caps.max_leaf_bytes, self.max_leaf_bytes),
        }
    }
}

/// A leaf value over `max_leaf_bytes`.
pub(super) fn leaf_over(key: &str, found: usize, max: usize) -> String {
    format!(
        "device sent a {} value for {key}; max_leaf_bytes is {}",
        human_bytes(found as u64),
        human_bytes(max as u64)
    )
}

/// A dump of more than `max_leaves` distinct leaves.
pub(super) fn dump_over(found: usize, max: usize) -> String {
    format!(
        "device sent a dump of at least {} leaves; max_leaves is {}",
        human_count(found as u64),
        human_count(max as u64)
    )
}

/// A commit that would make running larger than `max_leaves`.
pub(super) fn running_over(found: usize, max: usize) -> String {
    format!(
        "running would hold {} leaves; max_leaves is {}; not committed",
        human_count(found as u64),
        human_count(max as u64)
    )
}

/// No end of a dump before the deadline; `what` is the end awaited.
pub(super) fn no_end_within(what: &str, timeout: Duration) -> String {
    format!("no {what} within {}; reconnecting", human_duration(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_in_the_spec_is_the_servers_default() {
        let limits = SyncLimits::default();
        let mut spec = crate::datastore::SyncSpec {
            mode: crate::datastore::SyncMode::OnChange,
            paths: vec![crate::Path::root()],
            interval: Duration::from_secs(1),
            commit_interval: Duration::from_secs(1),
            list_keys: Vec::new(),
            initial_sync_timeout: None,
            caps: crate::datastore::DeviceCaps::default(),
        };
        let caps = limits.caps(&spec);
        assert_eq!(caps.initial_sync_timeout, limits.initial_sync_timeout);
        assert_eq!(caps.max_message_bytes as u64, limits.max_message_bytes);
        assert_eq!(caps.max_leaves as u64, limits.max_leaves);
        assert_eq!(caps.max_leaf_bytes as u64, limits.max_leaf_bytes);
        spec.initial_sync_timeout = Some(Duration::from_secs(7));
        spec.caps.max_leaves = 5;
        let caps = limits.caps(&spec);
        assert_eq!(caps.initial_sync_timeout, Duration::from_secs(7));
        assert_eq!(caps.max_leaves, 5);
    }
}
