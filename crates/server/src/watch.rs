//! Engine events in their WatchSync form: encoded `netsync.v1.SyncEvent`
//! messages, a commit split into parts of bounded size, a state change, a
//! revert. Both the engine (which encodes commits ahead of the watchers) and
//! the WatchSync handler (`api::watch`, which streams them and replays the
//! change log) use it; it depends on neither.
//!
//! A live event is encoded once and its bytes are shared by every watcher
//! (`Bytes` clones), which WatchSync's own codec sends as they are: no watcher
//! copies or encodes a message again. A replayed commit is encoded part by
//! part as its watcher's queue takes them ([`Parts`]), so a large revision
//! is never held whole in its WatchSync form.

use std::iter::Peekable;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use netsync_core::running::Change;
use netsync_core::sync::{Event, EventKind, EventPreparer, RevertPhase};
use netsync_proto::netsync::v1 as pb;
use prost::Message as _;

use crate::convert;
use crate::stored_time::{from_micros, to_micros};

/// An event's messages, encoded: a commit's parts in order, or one message.
pub(crate) type Encoded = Arc<Vec<Bytes>>;

/// Encodes each commit in the committer, ahead of the watchers, which then
/// find it in the event's cache: the encoding of a large commit then counts
/// in the commit's duration, which later commits start early by, rather than
/// delaying every watcher after the commit. `uid` is the datastore's
/// (`SyncEvent.uid`).
pub(crate) fn event_preparer(name: String, uid: String) -> EventPreparer {
    Arc::new(move |event: &Event| {
        if let EventKind::Commit { change, .. } = &event.kind
            && let Some(change) = change.get()
        {
            encoded(&name, &uid, event, Some(&change));
        }
    })
}

/// `event`'s messages, encoded once per event and cached in it. `change` is a
/// commit's change, held by the caller (an event's own may be evicted at any
/// time); a caller without it must not ask for a commit (it would cache an
/// empty one). The datastore is `name`, incarnation `uid`: an event belongs to
/// one sync, hence one incarnation, so the cached bytes are the same for
/// every caller.
pub(crate) fn encoded(name: &str, uid: &str, event: &Event, change: Option<&Change>) -> Encoded {
    event.encoded.get_or_make(|| {
        Arc::new(match &event.kind {
            EventKind::Commit { replace, .. } => Parts::new(
                name,
                uid,
                event.revision,
                event.time,
                *replace,
                change.unwrap_or(&Change::default()),
            )
            .collect(),
            _ => vec![encode(&other_event(name, uid, event, event.revision))],
        })
    })
}

/// `event`'s messages if they are encoded and still cached, without encoding.
pub(crate) fn cached(event: &Event) -> Option<Encoded> {
    event.encoded.get::<Encoded>()
}

/// Encoded size a part of a commit grows to before the next leaf starts
/// another part: far below the 4 MiB that gRPC clients accept by default.
const PART_BYTES: usize = 1 << 20;

/// A leaf of a commit on its way into a part.
enum Piece {
    Update(pb::Leaf),
    Delete(String),
}

impl Piece {
    /// Its size in the part: a length-delimited field with a one-byte tag.
    fn len(&self) -> usize {
        framed(match self {
            Self::Update(leaf) => leaf.encoded_len(),
            Self::Delete(path) => path.len(),
        })
    }
}

/// A revision's WatchSync messages, encoded one at a time as they are asked
/// for: its leaves in parts of at most about [`PART_BYTES`] (a larger single
/// leaf gets a part of its own), every part but the last with `Commit.more`
/// set. A change with no leaves is one empty part.
pub(crate) struct Parts<'a> {
    name: &'a str,
    uid: &'a str,
    revision: u64,
    time: prost_types::Timestamp,
    replace: bool,
    pieces: Peekable<Box<dyn Iterator<Item = Piece> + Send + 'a>>,
    done: bool,
}

impl<'a> Parts<'a> {
    /// The parts of revision `revision` of `name` (incarnation `uid`),
    /// committed at `time`.
    pub(crate) fn new(
        name: &'a str,
        uid: &'a str,
        revision: u64,
        time: SystemTime,
        replace: bool,
        change: &'a Change,
    ) -> Self {
        let updates = change.updates().map(|(path, value)| {
            Piece::Update(pb::Leaf {
                path,
                value: Some(value),
                owner: String::new(),
            })
        });
        let deletes = change.deletes().map(Piece::Delete);
        let pieces: Box<dyn Iterator<Item = Piece> + Send + 'a> = Box::new(updates.chain(deletes));
        Self {
            name,
            uid,
            revision,
            // The log keeps microseconds: a revision has the same time live
            // and replayed, in each of its parts.
            time: convert::timestamp_to_proto(from_micros(to_micros(time))),
            replace,
            pieces: pieces.peekable(),
            done: false,
        }
    }
}

impl Iterator for Parts<'_> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut commit = pb::Commit {
            replace: self.replace,
            ..Default::default()
        };
        let mut size = 0;
        while let Some(piece) = self.pieces.peek() {
            let len = piece.len();
            if size > 0 && size + len > PART_BYTES {
                break;
            }
            size += len;
            match self.pieces.next() {
                Some(Piece::Update(leaf)) => commit.updates.push(leaf),
                Some(Piece::Delete(path)) => commit.deletes.push(path),
                None => break,
            }
        }
        commit.more = self.pieces.peek().is_some();
        self.done = !commit.more;
        Some(encode(&pb::SyncEvent {
            datastore: self.name.to_string(),
            revision: self.revision,
            time: Some(self.time),
            uid: self.uid.to_string(),
            event: Some(pb::sync_event::Event::Commit(commit)),
            ..Default::default()
        }))
    }
}

/// Size of a length-delimited field of `len` bytes with a one-byte tag.
fn framed(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// One message's bytes, as the WatchSync codec sends them.
pub(crate) fn encode(event: &pb::SyncEvent) -> Bytes {
    Bytes::from(event.encode_to_vec())
}

/// A state change or revert of `name` (incarnation `uid`) in its WatchSync
/// form, at `revision` (its own, or a later one already sent on the stream it
/// goes to).
pub(crate) fn other_event(name: &str, uid: &str, event: &Event, revision: u64) -> pb::SyncEvent {
    let kind = match &event.kind {
        EventKind::Commit { .. } => unreachable!("commits are sent in parts"),
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
    pb::SyncEvent {
        datastore: name.to_string(),
        revision,
        time: Some(convert::timestamp_to_proto(event.time)),
        uid: uid.to_string(),
        event: Some(kind),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use netsync_core::running::Key;
    use netsync_proto::gnmi::{TypedValue, typed_value};

    use super::*;

    fn change(updates: usize, value_len: usize, deletes: usize) -> Change {
        Change::new(
            (0..updates).map(|i| {
                let key: Key = format!("/a/b[k={i}]/c").into();
                let value = TypedValue {
                    value: Some(typed_value::Value::StringVal("x".repeat(value_len))),
                };
                (key, value)
            }),
            (0..deletes).map(|i| Key::from(format!("/gone/{i}").as_str())),
        )
    }

    fn decoded(parts: &[Bytes]) -> Vec<pb::Commit> {
        parts
            .iter()
            .map(
                |bytes| match pb::SyncEvent::decode(bytes.clone()).unwrap().event {
                    Some(pb::sync_event::Event::Commit(commit)) => commit,
                    other => panic!("{other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn parts_are_bounded_disjoint_complete_and_only_the_last_has_no_more() {
        let change = change(3000, 1000, 500);
        let parts: Vec<Bytes> =
            Parts::new("ds", "u", 7, SystemTime::now(), true, &change).collect();
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let commits = decoded(&parts);
        let mut updates = 0;
        let mut deletes = 0;
        for (i, (bytes, commit)) in parts.iter().zip(&commits).enumerate() {
            assert!(bytes.len() <= PART_BYTES + 200, "part {i}: {}", bytes.len());
            assert_eq!(commit.more, i + 1 < commits.len());
            assert!(commit.replace);
            updates += commit.updates.len();
            deletes += commit.deletes.len();
        }
        assert_eq!((updates, deletes), (3000, 500));
        for bytes in &parts {
            let event = pb::SyncEvent::decode(bytes.clone()).unwrap();
            assert_eq!((event.datastore.as_str(), event.uid.as_str()), ("ds", "u"));
        }
    }

    #[test]
    fn an_empty_change_is_one_empty_part_and_a_huge_leaf_a_part_of_its_own() {
        let empty = Change::default();
        let parts: Vec<Bytes> =
            Parts::new("ds", "u", 1, SystemTime::now(), false, &empty).collect();
        assert_eq!(decoded(&parts), vec![pb::Commit::default()]);

        let huge = change(2, 3 << 20, 0);
        let commits =
            decoded(&Parts::new("ds", "u", 2, SystemTime::now(), false, &huge).collect::<Vec<_>>());
        assert_eq!(commits.len(), 2);
        assert!(commits[0].more && !commits[1].more);
    }
}
