//! WatchSync events read by walking their protobuf framing: the revision, the
//! kind, the number of leaves and the benchmark's marker leaves, without
//! building the messages.
//!
//! A churn commit holds up to every leaf of the device. Decoding it fully
//! costs about a microsecond per leaf; walking it costs a small fraction of
//! that and allocates nothing, so the harness's watchers (one, or a hundred in
//! `watchers`) take little CPU from netsyncd on a two-core machine. The walk
//! still checks the framing of every field it passes.

use bytes::Buf;
use netsync_proto::netsync::v1 as pb;
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// What one `SyncEvent` said, as far as the benchmarks care.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventSummary {
    /// `SyncEvent.revision`.
    pub revision: u64,
    /// Which of the `event` oneof it carried.
    pub kind: EventKind,
    /// Leaves in `Commit.updates`.
    pub updates: u64,
    /// Paths in `Commit.deletes`.
    pub deletes: u64,
    /// Ids of the marker leaves among the updates (see `markers.rs`).
    pub markers: Vec<u64>,
    /// `Commit.more`: further parts of this revision follow.
    pub more: bool,
    /// A `revert` event, decoded: it is small (the leaves of one job), and
    /// `intent-apply` needs its leaves to tell which write it finished.
    pub revert: Option<pb::Revert>,
}

/// The `event` oneof of a `SyncEvent`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// None of the known fields (a newer server).
    #[default]
    Unknown,
    /// `state_changed`, with its `SyncState`.
    State(i32),
    /// `commit`.
    Commit,
    /// `revert`, with its `RevertPhase`.
    Revert(i32),
}

/// One field of a protobuf message.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads a varint.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Reads the next field: its number and its content. `None` on bad framing.
fn next_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Field<'a>)> {
    let key = varint(buf)?;
    let field = match key & 7 {
        0 => Field::Varint(varint(buf)?),
        1 => {
            *buf = buf.get(8..)?;
            Field::Fixed
        }
        2 => {
            let len = usize::try_from(varint(buf)?).ok()?;
            let data = buf.get(..len)?;
            *buf = &buf[len..];
            Field::Bytes(data)
        }
        5 => {
            *buf = buf.get(4..)?;
            Field::Fixed
        }
        _ => return None,
    };
    Some((key >> 3, field))
}

/// The first varint field numbered `number` of a message, or 0 (proto3's
/// default when absent).
fn varint_field(mut message: &[u8], number: u64) -> Option<u64> {
    let mut found = 0;
    while !message.is_empty() {
        if let (n, Field::Varint(v)) = next_field(&mut message)?
            && n == number
        {
            found = v;
        }
    }
    Some(found)
}

/// Summarises an encoded `SyncEvent`. Updates whose path starts with
/// `marker_prefix` followed by a decimal number are reported as markers.
pub fn summarise(mut event: &[u8], marker_prefix: &[u8]) -> Option<EventSummary> {
    let mut summary = EventSummary::default();
    while !event.is_empty() {
        match next_field(&mut event)? {
            (2, Field::Varint(revision)) => summary.revision = revision,
            (10, Field::Bytes(state)) => {
                summary.kind = EventKind::State(i32::try_from(varint_field(state, 1)?).ok()?);
            }
            (12, Field::Bytes(revert)) => {
                let revert = pb::Revert::decode(revert).ok()?;
                summary.kind = EventKind::Revert(revert.phase);
                summary.revert = Some(revert);
            }
            (11, Field::Bytes(mut commit)) => {
                summary.kind = EventKind::Commit;
                while !commit.is_empty() {
                    match next_field(&mut commit)? {
                        (2, Field::Bytes(mut leaf)) => {
                            summary.updates += 1;
                            while !leaf.is_empty() {
                                if let (1, Field::Bytes(path)) = next_field(&mut leaf)?
                                    && let Some(id) = marker_id(path, marker_prefix)
                                {
                                    summary.markers.push(id);
                                }
                            }
                        }
                        (3, Field::Bytes(_)) => summary.deletes += 1,
                        (4, Field::Varint(more)) => summary.more = more != 0,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(summary)
}

/// The number after `prefix` in `path`, if `path` is `prefix` and digits.
fn marker_id(path: &[u8], prefix: &[u8]) -> Option<u64> {
    let digits = path.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Client codec for WatchSync: requests encoded with prost, events summarised.
#[derive(Debug, Clone, Copy)]
pub struct WatchCodec {
    /// Path prefix of the marker leaves.
    pub marker_prefix: &'static str,
}

/// Encodes WatchSync requests.
#[derive(Debug)]
pub struct RequestEncoder;

/// Decodes events into [`EventSummary`].
#[derive(Debug)]
pub struct SummaryDecoder {
    marker_prefix: &'static str,
}

impl Codec for WatchCodec {
    type Encode = pb::WatchSyncRequest;
    type Decode = EventSummary;
    type Encoder = RequestEncoder;
    type Decoder = SummaryDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> SummaryDecoder {
        SummaryDecoder {
            marker_prefix: self.marker_prefix,
        }
    }
}

impl Encoder for RequestEncoder {
    type Item = pb::WatchSyncRequest;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for SummaryDecoder {
    type Item = EventSummary;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<EventSummary>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        summarise(&bytes, self.marker_prefix.as_bytes())
            .map(Some)
            .ok_or_else(|| Status::internal("a SyncEvent with bad protobuf framing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(path: &str) -> pb::Leaf {
        pb::Leaf {
            path: path.into(),
            value: Some(netsync_proto::gnmi::TypedValue {
                value: Some(netsync_proto::gnmi::typed_value::Value::UintVal(7)),
            }),
            owner: String::new(),
        }
    }

    #[test]
    fn a_commit_is_summarised_with_its_markers() {
        let event = pb::SyncEvent {
            datastore: "d".into(),
            // Walked past like any field the summary does not need.
            uid: "0b5e8f5e-2f0c-4c1e-9d43-6f1f1c2b7a10".into(),
            revision: 42,
            time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 2,
            }),
            event: Some(pb::sync_event::Event::Commit(pb::Commit {
                replace: false,
                updates: vec![
                    leaf("/a/b"),
                    leaf("/netsync-bench/m17"),
                    leaf("/netsync-bench/m"),
                    leaf("/netsync-bench/mx1"),
                    leaf("/netsync-bench/m123456789"),
                ],
                deletes: vec!["/c".into(), "/netsync-bench/m5".into()],
                more: true,
            })),
            ..Default::default()
        };
        let summary = summarise(&event.encode_to_vec(), b"/netsync-bench/m").unwrap();
        assert_eq!(
            summary,
            EventSummary {
                revision: 42,
                kind: EventKind::Commit,
                updates: 5,
                deletes: 2,
                markers: vec![17, 123_456_789],
                more: true,
                revert: None,
            }
        );
    }

    #[test]
    fn state_and_revert_events_carry_their_enum() {
        let state = pb::SyncEvent {
            revision: 3,
            event: Some(pb::sync_event::Event::StateChanged(pb::StateChanged {
                state: pb::SyncState::InSync as i32,
                reason: "dump committed".into(),
            })),
            ..Default::default()
        };
        let summary = summarise(&state.encode_to_vec(), b"/m").unwrap();
        assert_eq!(summary.kind, EventKind::State(pb::SyncState::InSync as i32));
        assert_eq!(summary.revision, 3);

        let revert = pb::SyncEvent {
            event: Some(pb::sync_event::Event::Revert(pb::Revert {
                phase: pb::RevertPhase::Applying as i32,
                attempt: 2,
                updates: vec![leaf("/m1")],
                ..Default::default()
            })),
            ..Default::default()
        };
        let summary = summarise(&revert.encode_to_vec(), b"/m").unwrap();
        // A revert's leaves are not a commit's: no markers, no counts; the
        // revert itself is kept whole.
        assert_eq!(
            summary.kind,
            EventKind::Revert(pb::RevertPhase::Applying as i32)
        );
        assert!(summary.markers.is_empty() && summary.updates == 0);
        let kept = summary.revert.unwrap();
        assert_eq!((kept.attempt, kept.updates), (2, vec![leaf("/m1")]));
    }

    #[test]
    fn bad_framing_is_refused() {
        let event = pb::SyncEvent {
            revision: 1,
            event: Some(pb::sync_event::Event::Commit(pb::Commit {
                updates: vec![leaf("/a")],
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(summarise(&event[..event.len() - 1], b"/m").is_none());
    }
}
