//! Engine events in their WatchSync form (`netsync.v1.SyncEvent`): a commit
//! split into parts of bounded size, a state change, a revert. Both the
//! engine (which converts commits ahead of the watchers) and the WatchSync
//! handler (`api::watch`, which streams them and replays the change log) use
//! it; it depends on neither.

use std::sync::Arc;
use std::time::SystemTime;

use netsync_core::running::Change;
use netsync_core::sync::{Event, EventKind, EventPreparer, RevertPhase};
use netsync_proto::netsync::v1 as pb;
use prost::Message as _;

use crate::convert;

/// Converts each commit to its WatchSync form in the committer, ahead of the
/// watchers, which then find it in the event's cache: the conversion of a
/// large commit then counts in the commit's duration, which later commits
/// start early by, rather than delaying every watcher after the commit.
pub(crate) fn event_preparer(name: String) -> EventPreparer {
    Arc::new(move |event: &Event| {
        if let EventKind::Commit { change, .. } = &event.kind {
            converted(&name, event, change.get().as_deref());
        }
    })
}

/// `event` in its WatchSync form (a commit possibly in parts), converted once
/// per event and cached in it. `change` is a commit's change, held by the
/// caller (an event's own may be evicted at any time).
pub(crate) fn converted(
    name: &str,
    event: &Event,
    change: Option<&Change>,
) -> Arc<Vec<pb::SyncEvent>> {
    event
        .encoded
        .get_or_make(|| Arc::new(event_to_proto(name, event, change)))
}

/// Encoded size a part of a commit grows to before the next leaf starts
/// another part: far below the 4 MiB that gRPC clients accept by default.
const PART_BYTES: usize = 1 << 20;

/// A revision's WatchSync events: its leaves in parts of at most about
/// [`PART_BYTES`] (a larger single leaf gets a part of its own), every part
/// but the last with `Commit.more` set.
pub(crate) struct CommitParts<'a> {
    name: &'a str,
    revision: u64,
    time: SystemTime,
    replace: bool,
    done: Vec<pb::SyncEvent>,
    open: pb::Commit,
    /// Encoded size of `open`'s leaves.
    size: usize,
}

impl<'a> CommitParts<'a> {
    /// The parts of revision `revision` of `name`, committed at `time`.
    pub(crate) fn new(name: &'a str, revision: u64, time: SystemTime, replace: bool) -> Self {
        Self {
            name,
            revision,
            time,
            replace,
            done: Vec::new(),
            open: pb::Commit {
                replace,
                ..Default::default()
            },
            size: 0,
        }
    }

    /// The events of `change`.
    pub(crate) fn of(mut self, change: &Change) -> Vec<pb::SyncEvent> {
        for (path, value) in change.updates() {
            let leaf = pb::Leaf {
                path,
                value: Some(value),
                owner: String::new(),
            };
            self.make_room(framed(leaf.encoded_len()));
            self.open.updates.push(leaf);
        }
        for path in change.deletes() {
            self.make_room(framed(path.len()));
            self.open.deletes.push(path);
        }
        let last = std::mem::take(&mut self.open);
        self.done.push(self.event(last));
        self.done
    }

    /// Starts a new part if `len` more bytes would make the open one too large.
    fn make_room(&mut self, len: usize) {
        if self.size > 0 && self.size + len > PART_BYTES {
            let next = pb::Commit {
                replace: self.replace,
                ..Default::default()
            };
            let full = std::mem::replace(&mut self.open, next);
            self.done
                .push(self.event(pb::Commit { more: true, ..full }));
            self.size = 0;
        }
        self.size += len;
    }

    fn event(&self, commit: pb::Commit) -> pb::SyncEvent {
        pb::SyncEvent {
            datastore: self.name.to_string(),
            revision: self.revision,
            time: Some(convert::timestamp_to_proto(self.time)),
            event: Some(pb::sync_event::Event::Commit(commit)),
        }
    }
}

/// Size of a length-delimited field of `len` bytes with a one-byte tag.
fn framed(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

fn event_to_proto(name: &str, event: &Event, change: Option<&Change>) -> Vec<pb::SyncEvent> {
    let kind = match &event.kind {
        EventKind::Commit { replace, .. } => {
            let parts = CommitParts::new(name, event.revision, event.time, *replace);
            return parts.of(change.unwrap_or(&Change::default()));
        }
        EventKind::StateChanged { state, reason } => {
            pb::sync_event::Event::StateChanged(pb::StateChanged {
                state: convert::state_to_proto(*state) as i32,
                reason: reason.clone(),
            })
        }
        EventKind::Revert(revert) => pb::sync_event::Event::Revert(pb::Revert {
            phase: match revert.phase {
                RevertPhase::Queued => pb::RevertPhase::Queued,
                RevertPhase::Applying => pb::RevertPhase::Applying,
                RevertPhase::Applied => pb::RevertPhase::Applied,
                RevertPhase::Failed => pb::RevertPhase::Failed,
            } as i32,
            attempt: revert.attempt,
            updates: revert
                .updates
                .iter()
                .map(|(k, v)| convert::leaf_to_proto(k, v))
                .collect(),
            deletes: revert.deletes.iter().map(|k| k.to_string()).collect(),
            error: revert.error.clone(),
        }),
    };
    vec![pb::SyncEvent {
        datastore: name.to_string(),
        revision: event.revision,
        time: Some(convert::timestamp_to_proto(event.time)),
        event: Some(kind),
    }]
}
