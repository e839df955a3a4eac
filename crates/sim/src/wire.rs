//! Protobuf wire format written by hand for the hot paths: each leaf keeps its
//! gNMI `Update` pre-encoded, and Subscribe responses are assembled by
//! concatenating those bytes instead of building and encoding prost messages.
//!
//! This works because a repeated message field on the wire is just its entries
//! one after the other, each `tag, length, bytes`. A leaf's cached entry is the
//! complete `Notification.update` field (tag 4), so a notification is a small
//! header followed by the cached entries of the leaves it carries. Encoding
//! prost messages instead costs about 1.3 CPU-s per million updates on the
//! project's machines (see `docs/SIMULATOR.md`), which would make the simulator
//! the bottleneck of every benchmark.

use bytes::{BufMut, Bytes, BytesMut};
use netsync_core::Path;
use netsync_proto::gnmi;
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Wire type of length-delimited fields.
const LEN: u8 = 2;
/// Wire type of varint fields.
const VARINT: u8 = 0;

/// The tag byte of field `number` (1..=15) with wire type `wire_type`.
const fn tag(number: u8, wire_type: u8) -> u8 {
    (number << 3) | wire_type
}

/// `Notification.update` (field 4).
const NOTIFICATION_UPDATE: u8 = tag(4, LEN);
/// `Notification.delete` (field 5).
const NOTIFICATION_DELETE: u8 = tag(5, LEN);
/// `Notification.timestamp` (field 1).
const NOTIFICATION_TIMESTAMP: u8 = tag(1, VARINT);
/// `Notification.prefix` (field 2).
const NOTIFICATION_PREFIX: u8 = tag(2, LEN);
/// `SubscribeResponse.update` (field 1).
const RESPONSE_UPDATE: u8 = tag(1, LEN);
/// `SubscribeResponse.sync_response` (field 3).
const RESPONSE_SYNC: u8 = tag(3, VARINT);
/// `Update.path` (field 1).
const UPDATE_PATH: u8 = tag(1, LEN);
/// `Update.val` (field 3).
const UPDATE_VAL: u8 = tag(3, LEN);
/// `Path.origin` (field 2).
const PATH_ORIGIN: u8 = tag(2, LEN);
/// `Path.elem` (field 3).
const PATH_ELEM: u8 = tag(3, LEN);
/// `Path.target` (field 4).
const PATH_TARGET: u8 = tag(4, LEN);
/// `PathElem.name` (field 1) and map entry `key` (field 1).
const FIELD1: u8 = tag(1, LEN);
/// `PathElem.key` (field 2) and map entry `value` (field 2).
const FIELD2: u8 = tag(2, LEN);

/// Room kept in front of a notification body for the `SubscribeResponse.update`
/// tag and its length (1 + at most 5 bytes, as bodies stay far below 4 GiB).
const HEAD_ROOM: usize = 6;

/// Number of bytes `value` takes as a varint.
pub fn varint_len(value: u64) -> usize {
    // Each byte carries 7 bits; zero still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `value` as a varint.
pub fn put_varint(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Size of a length-delimited field holding `len` bytes, tag included.
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Appends a length-delimited field; empty strings are omitted as proto3 does.
fn put_str(buf: &mut impl BufMut, tag: u8, text: &str) {
    if !text.is_empty() {
        buf.put_u8(tag);
        put_varint(buf, text.len() as u64);
        buf.put_slice(text.as_bytes());
    }
}

/// Size of [`put_str`]'s output.
fn str_field(text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        len_field(text.len())
    }
}

/// Encodes `path` as a gNMI `Path` message (origin and elems; keys in key-name
/// order, so equal paths always encode to equal bytes).
pub fn encode_path(path: &Path) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * path.len() + 8);
    if let Some(origin) = path.origin() {
        put_str(&mut out, PATH_ORIGIN, origin);
    }
    for elem in path.elems() {
        let mut elem_len = str_field(elem.name());
        for (k, v) in elem.keys() {
            elem_len += len_field(str_field(k) + str_field(v));
        }
        out.put_u8(PATH_ELEM);
        put_varint(&mut out, elem_len as u64);
        put_str(&mut out, FIELD1, elem.name());
        for (k, v) in elem.keys() {
            out.put_u8(FIELD2);
            put_varint(&mut out, (str_field(k) + str_field(v)) as u64);
            put_str(&mut out, FIELD1, k);
            put_str(&mut out, FIELD2, v);
        }
    }
    out
}

/// Encodes a `Path` message holding only `target`, as a notification prefix
/// that echoes the target a client named.
pub fn encode_target_prefix(target: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_str(&mut out, PATH_TARGET, target);
    out
}

/// Writes a `Notification.update` entry (tag, length and `Update{path, val}`)
/// for a pre-encoded path and a pre-encoded `TypedValue` into `out`, which is
/// cleared first; returns where the path bytes and the value bytes start in it.
pub fn write_update_entry(
    out: &mut Vec<u8>,
    path_wire: &[u8],
    value_wire: &[u8],
) -> (usize, usize) {
    let update_len = len_field(path_wire.len()) + len_field(value_wire.len());
    out.clear();
    out.reserve(len_field(update_len));
    out.put_u8(NOTIFICATION_UPDATE);
    put_varint(out, update_len as u64);
    out.put_u8(UPDATE_PATH);
    put_varint(out, path_wire.len() as u64);
    let path_start = out.len();
    out.put_slice(path_wire);
    out.put_u8(UPDATE_VAL);
    put_varint(out, value_wire.len() as u64);
    let value_start = out.len();
    out.put_slice(value_wire);
    (path_start, value_start)
}

/// A `Notification.delete` entry for a pre-encoded path.
pub fn encode_delete_entry(path_wire: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(len_field(path_wire.len()));
    out.put_u8(NOTIFICATION_DELETE);
    put_varint(&mut out, path_wire.len() as u64);
    out.put_slice(path_wire);
    out.freeze()
}

/// The encoded `SubscribeResponse{sync_response: true}`.
pub fn sync_response() -> Bytes {
    Bytes::from_static(&[RESPONSE_SYNC, 1])
}

/// Builds one `SubscribeResponse{update: Notification}` from pre-encoded
/// update and delete entries, without intermediate copies: the body is written
/// after some head room, and the response header is filled in backwards.
///
/// The bytes are written into a buffer the caller lends and gets back from
/// [`finish`](Self::finish) for the next notification: notifications are then
/// slices of a few large allocations that are reused once sent, rather than
/// one fresh allocation each (which made the allocator clear new pages from
/// the kernel for every notification).
pub struct NotificationBuilder {
    buf: BytesMut,
    /// Length of the header part of the body (timestamp and prefix).
    header_len: usize,
    updates: usize,
    deletes: usize,
}

impl NotificationBuilder {
    /// Starts a notification with `timestamp` (ns since the epoch) and an
    /// optional encoded prefix `Path`, with room for about `capacity` bytes,
    /// in `buf` (which must be empty).
    pub fn new(timestamp: i64, prefix: Option<&[u8]>, capacity: usize, mut buf: BytesMut) -> Self {
        debug_assert!(buf.is_empty());
        buf.reserve(HEAD_ROOM + 16 + capacity);
        buf.put_bytes(0, HEAD_ROOM);
        if timestamp != 0 {
            buf.put_u8(NOTIFICATION_TIMESTAMP);
            // int64 varints are the two's complement bits as u64.
            put_varint(&mut buf, timestamp as u64);
        }
        if let Some(prefix) = prefix {
            buf.put_u8(NOTIFICATION_PREFIX);
            put_varint(&mut buf, prefix.len() as u64);
            buf.put_slice(prefix);
        }
        let header_len = buf.len() - HEAD_ROOM;
        Self {
            buf,
            header_len,
            updates: 0,
            deletes: 0,
        }
    }

    /// Appends an entry made by [`encode_update_entry`].
    pub fn push_update(&mut self, entry: &[u8]) {
        self.buf.put_slice(entry);
        self.updates += 1;
    }

    /// Appends an entry made by [`encode_delete_entry`].
    pub fn push_delete(&mut self, entry: &[u8]) {
        self.buf.put_slice(entry);
        self.deletes += 1;
    }

    /// Updates appended so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// Deletes appended so far.
    pub fn deletes(&self) -> usize {
        self.deletes
    }

    /// Whether no update or delete was appended.
    pub fn is_empty(&self) -> bool {
        self.updates == 0 && self.deletes == 0
    }

    /// Bytes of entries appended so far.
    pub fn body_len(&self) -> usize {
        self.buf.len() - HEAD_ROOM - self.header_len
    }

    /// The encoded `SubscribeResponse`, and the (now empty) buffer back.
    pub fn finish(mut self) -> (Bytes, BytesMut) {
        let notification_len = self.buf.len() - HEAD_ROOM;
        let mut head = [0u8; HEAD_ROOM];
        let mut cursor = &mut head[..];
        cursor.put_u8(RESPONSE_UPDATE);
        put_varint(&mut cursor, notification_len as u64);
        let head_len = HEAD_ROOM - cursor.len();
        let start = HEAD_ROOM - head_len;
        self.buf[start..HEAD_ROOM].copy_from_slice(&head[..head_len]);
        let mut out = self.buf.split().freeze();
        let _ = out.split_to(start);
        (out, self.buf)
    }

    /// Gives the buffer back without producing a message.
    pub fn abandon(mut self) -> BytesMut {
        self.buf.clear();
        self.buf
    }
}

/// Codec of the Subscribe RPC on the server side: requests are decoded with
/// prost; responses are already-encoded `SubscribeResponse` bytes, written out
/// as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubscribeCodec;

impl Codec for SubscribeCodec {
    type Encode = Bytes;
    type Decode = gnmi::SubscribeRequest;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder
    }
}

/// Writes pre-encoded message bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// Decodes `SubscribeRequest`s with prost.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProstDecoder;

impl Decoder for ProstDecoder {
    type Item = gnmi::SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        gnmi::SubscribeRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("cannot decode SubscribeRequest: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netsync_proto::gnmi::subscribe_response::Response;
    use netsync_proto::gnmi::typed_value::Value;

    fn p(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    #[test]
    fn varint_lengths() {
        for (value, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(value), len, "{value}");
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), len);
        }
    }

    #[test]
    fn path_encoding_matches_prost() {
        for text in [
            "/",
            "oc:/a",
            "/a[k=v][j=]/b",
            "/interfaces/interface[name=eth0]/config/mtu",
        ] {
            let path = p(text);
            let decoded = gnmi::Path::decode(&encode_path(&path)[..]).unwrap();
            assert_eq!(Path::try_from(&decoded).unwrap(), path, "{text}");
        }
    }

    #[test]
    fn notification_decodes_as_prost_message() {
        let a = p("/a[k=1]/b");
        let value = gnmi::TypedValue {
            value: Some(Value::UintVal(300)),
        };
        let mut entry = Vec::new();
        let (path_start, value_start) =
            write_update_entry(&mut entry, &encode_path(&a), &value.encode_to_vec());
        assert_eq!(entry[path_start], encode_path(&a)[0]);
        assert_eq!(entry[value_start..], value.encode_to_vec());
        let delete = encode_delete_entry(&encode_path(&p("/c")));
        let prefix = encode_target_prefix("dev1");
        let mut builder =
            NotificationBuilder::new(1_700_000_000_000_000_000, Some(&prefix), 0, BytesMut::new());
        builder.push_update(&entry);
        builder.push_delete(&delete);
        // Large enough to need a multi-byte length.
        for _ in 0..100 {
            builder.push_update(&entry);
        }
        assert_eq!((builder.updates(), builder.deletes()), (101, 1));
        let response = gnmi::SubscribeResponse::decode(builder.finish().0).unwrap();
        let Some(Response::Update(n)) = response.response else {
            panic!("not an update: {response:?}");
        };
        assert_eq!(n.timestamp, 1_700_000_000_000_000_000);
        assert_eq!(n.prefix.unwrap().target, "dev1");
        assert_eq!(n.update.len(), 101);
        assert_eq!(
            Path::try_from(n.update[0].path.as_ref().unwrap()).unwrap(),
            a
        );
        assert_eq!(n.update[0].val.as_ref(), Some(&value));
        assert_eq!(n.delete.len(), 1);
        assert_eq!(Path::try_from(&n.delete[0]).unwrap(), p("/c"));

        let sync = gnmi::SubscribeResponse::decode(sync_response()).unwrap();
        assert_eq!(sync.response, Some(Response::SyncResponse(true)));
    }
}
