//! A byte-level differential test of the ingest's fast path
//! ([`notification::prepare`], which reads `SubscribeResponse` wire bytes in
//! place) against prost followed by [`Decoder::apply`] (the general path it
//! falls back to).
//!
//! Messages start as prost's encoding of random responses (paths whose names
//! and keys hold `/`, `]`, `=`, `\` and the like, every `TypedValue` kind,
//! deletes, prefixes with origin and target, extensions), are parsed into a
//! tree of wire fields, mutated there (unknown fields of every wire type,
//! singular fields repeated, fields reordered or removed, non-minimal varints,
//! wrong wire types, keys beyond `u32`, lengths too long or huge, hand-built
//! values prost never writes), written back, flipped byte by byte, and cut at
//! every length. The property, for every byte string:
//! - when the fast path accepts, prost accepts too and means the same thing: a
//!   notification whose delta (deletes, leaves and their encoded values,
//!   counts) equals what the general path derives, or a `sync_response`;
//! - so when prost rejects, the fast path rejects (the caller then decodes and
//!   reports the error).
//!
//! A fast path that rejects what prost accepts is fine (that is its fallback).

use std::sync::atomic::{AtomicUsize, Ordering};

use netsync_core::Path;
use netsync_core::notification::{Decoder, Prepared, prepare};
use netsync_core::running::Delta;
use netsync_proto::gnmi::{self, subscribe_response::Response, typed_value::Value as V};
use netsync_proto::gnmi_ext;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use prost::Message;

// ---- wire trees ----

/// The message type a length-delimited field holds, as far as mutations care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Response,
    Notification,
    Update,
    Path,
    Elem,
    MapEntry,
    Typed,
    Decimal,
    Array,
    Extension,
}

impl Ty {
    /// The type of field `number` of a message of this type, when it is a
    /// message the fast path looks into (others stay opaque bytes).
    fn child(self, number: u64) -> Option<Ty> {
        Some(match (self, number) {
            (Ty::Response, 1) => Ty::Notification,
            (Ty::Response, 5) => Ty::Extension,
            (Ty::Notification, 2 | 5) | (Ty::Update, 1) => Ty::Path,
            (Ty::Notification, 4) => Ty::Update,
            (Ty::Update, 3) | (Ty::Array, 1) => Ty::Typed,
            (Ty::Path, 3) => Ty::Elem,
            (Ty::Elem, 2) => Ty::MapEntry,
            (Ty::Typed, 7) => Ty::Decimal,
            (Ty::Typed, 8) => Ty::Array,
            _ => return None,
        })
    }
}

/// One field as written: its key (number and wire type, possibly beyond
/// `u32` or of a wire type that does not match the payload) and payload, with
/// how its varints are padded and its length possibly lying.
#[derive(Clone, Debug)]
struct Field {
    key: u64,
    /// Extra bytes after the key's varint (non-minimal encoding).
    key_pad: u8,
    payload: Payload,
    /// Extra bytes after the value's or the length's varint.
    value_pad: u8,
    /// The length written instead of the payload's.
    length: Option<u64>,
}

#[derive(Clone, Debug)]
enum Payload {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
    Message(Ty, Vec<Field>),
    /// A group (wire type 3), closed by its end key.
    Group(Vec<Field>),
    /// Nothing after the key (a lone end-group, an invalid wire type).
    Nothing,
}

impl Field {
    fn new(number: u64, wire_type: u64, payload: Payload) -> Self {
        Self {
            key: number << 3 | wire_type,
            key_pad: 0,
            payload,
            value_pad: 0,
            length: None,
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64, pad: u8) {
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 && pad == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
        if v == 0 {
            // Continuation bytes of zeros, the last one ending the varint.
            for i in 1..=pad {
                out.push(if i == pad { 0 } else { 0x80 });
            }
            return;
        }
    }
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let b = bytes[*pos];
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
    }
    value
}

/// Reads well-formed wire bytes (prost's output) into fields.
fn parse(ty: Ty, bytes: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let key = get_varint(bytes, &mut pos);
        let payload = match key & 7 {
            0 => Payload::Varint(get_varint(bytes, &mut pos)),
            1 => {
                pos += 8;
                Payload::Fixed64(u64::from_le_bytes(bytes[pos - 8..pos].try_into().unwrap()))
            }
            2 => {
                let len = get_varint(bytes, &mut pos) as usize;
                pos += len;
                let inner = &bytes[pos - len..pos];
                match ty.child(key >> 3) {
                    Some(child) => Payload::Message(child, parse(child, inner)),
                    None => Payload::Bytes(inner.to_vec()),
                }
            }
            5 => {
                pos += 4;
                Payload::Fixed32(u32::from_le_bytes(bytes[pos - 4..pos].try_into().unwrap()))
            }
            other => panic!("prost wrote wire type {other}"),
        };
        fields.push(Field {
            key,
            key_pad: 0,
            payload,
            value_pad: 0,
            length: None,
        });
    }
    fields
}

fn write(fields: &[Field], out: &mut Vec<u8>) {
    for field in fields {
        put_varint(out, field.key, field.key_pad);
        let delimited = |out: &mut Vec<u8>, inner: &[u8]| {
            let len = field.length.unwrap_or(inner.len() as u64);
            put_varint(out, len, field.value_pad);
            out.extend_from_slice(inner);
        };
        match &field.payload {
            Payload::Varint(v) => put_varint(out, *v, field.value_pad),
            Payload::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Payload::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Payload::Bytes(b) => delimited(out, b),
            Payload::Message(_, inner) => {
                let mut bytes = Vec::new();
                write(inner, &mut bytes);
                delimited(out, &bytes);
            }
            Payload::Group(inner) => {
                write(inner, out);
                put_varint(out, field.key & !7 | 4, 0);
            }
            Payload::Nothing => {}
        }
    }
}

/// Number of messages (and groups) in the tree, the top one included.
fn count_messages(fields: &[Field]) -> u64 {
    1 + fields
        .iter()
        .map(|f| match &f.payload {
            Payload::Message(_, inner) | Payload::Group(inner) => count_messages(inner),
            _ => 0,
        })
        .sum::<u64>()
}

/// Calls `op` on the `target`-th message in pre-order (with its type; `None`
/// for a group).
fn visit(
    ty: Option<Ty>,
    fields: &mut Vec<Field>,
    target: &mut u64,
    op: &mut dyn FnMut(Option<Ty>, &mut Vec<Field>),
) -> bool {
    if *target == 0 {
        op(ty, fields);
        return true;
    }
    *target -= 1;
    for field in fields.iter_mut() {
        let done = match &mut field.payload {
            Payload::Message(t, inner) => visit(Some(*t), inner, target, op),
            Payload::Group(inner) => visit(None, inner, target, op),
            _ => false,
        };
        if done {
            return true;
        }
    }
    false
}

// ---- mutations ----

/// One change to the tree. `at` picks a message (modulo their number),
/// `field` a field of it (modulo theirs); the other numbers pick among
/// variants, so that shrinking leads to the simplest.
#[derive(Clone, Debug)]
enum Mutation {
    /// An extra field: `number` picks from numbers the schema uses (so a
    /// singular field repeated or mistyped) and unused ones, `kind` the wire
    /// type and content.
    Insert {
        at: u64,
        pos: u64,
        number: u8,
        kind: u8,
        seed: u64,
    },
    /// A field given twice (the copy last).
    Duplicate {
        at: u64,
        field: u64,
    },
    Swap {
        at: u64,
        i: u64,
        j: u64,
    },
    Reverse {
        at: u64,
    },
    Remove {
        at: u64,
        field: u64,
    },
    /// A non-minimal key or value/length varint (`pad` extra bytes, some
    /// beyond ten bytes in all).
    Pad {
        at: u64,
        field: u64,
        pad: u8,
        value: bool,
    },
    /// A length that lies: one too many or too few, huge.
    Length {
        at: u64,
        field: u64,
        how: u8,
    },
    /// The key's number pushed beyond what fits a `u32` key.
    BigKey {
        at: u64,
        field: u64,
    },
    /// The key's wire type changed, the payload kept.
    WireType {
        at: u64,
        field: u64,
        wire_type: u8,
    },
    /// A bytes payload replaced with a tricky text.
    Text {
        at: u64,
        field: u64,
        which: u8,
    },
    /// A varint payload replaced with a tricky number.
    Number {
        at: u64,
        field: u64,
        which: u8,
    },
    /// The message's contents replaced with a hand-built form for its type.
    Hand {
        at: u64,
        which: u8,
    },
}

const TEXTS: &[&[u8]] = &[
    b"",
    b"\xff",
    b"\xc3",
    "é".as_bytes(),
    b"a/b",
    b"]",
    b"=",
    b"\\",
    b"[k=v]",
    b"oc:",
    b"*",
    b"...",
];

const NUMBERS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    u32::MAX as u64,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

fn field_of(fields: &mut [Field], field: u64) -> Option<&mut Field> {
    let n = fields.len() as u64;
    (n > 0).then(|| &mut fields[(field % n.max(1)) as usize])
}

fn inserted(number: u8, kind: u8, seed: u64) -> Field {
    // Numbers the schemas use (1 to 14), and others up to the largest.
    let number = match number % 20 {
        n @ 0..=14 => u64::from(n) + 1,
        15 => 16,
        16 => 100,
        17 => 19_000,
        18 => (1 << 29) - 1,
        _ => 1000,
    };
    match kind % 10 {
        0 => Field::new(number, 0, Payload::Varint(NUMBERS[(seed % 9) as usize])),
        1 => Field::new(number, 1, Payload::Fixed64(seed)),
        2 => Field::new(
            number,
            2,
            Payload::Bytes(TEXTS[(seed % TEXTS.len() as u64) as usize].to_vec()),
        ),
        3 => Field::new(
            number,
            2,
            Payload::Message(Ty::Extension, vec![Field::new(1, 0, Payload::Varint(seed))]),
        ),
        4 => Field::new(
            number,
            3,
            Payload::Group(vec![Field::new(1, 0, Payload::Varint(seed))]),
        ),
        5 => Field::new(number, 4, Payload::Nothing),
        6 => Field::new(number, 5, Payload::Fixed32(seed as u32)),
        7 => Field::new(number, 6 + seed % 2, Payload::Nothing),
        // Bytes of arbitrary content.
        _ => Field::new(number, 2, Payload::Bytes(seed.to_le_bytes().to_vec())),
    }
}

/// Hand-built contents for a message of type `ty`: forms prost reads but
/// never writes, and forms it rejects.
fn hand_built(ty: Option<Ty>, which: u8) -> Option<Vec<Field>> {
    let varint = |n: u64, v: u64| Field::new(n, 0, Payload::Varint(v));
    let bytes = |n: u64, b: &[u8]| Field::new(n, 2, Payload::Bytes(b.to_vec()));
    let message = |n: u64, ty: Ty, inner: Vec<Field>| Field::new(n, 2, Payload::Message(ty, inner));
    let entry = |k: &[u8], v: &[u8]| message(2, Ty::MapEntry, vec![bytes(1, k), bytes(2, v)]);
    let forms: Vec<Vec<Field>> = match ty? {
        Ty::Typed => vec![
            // any_val
            vec![message(
                9,
                Ty::Extension,
                vec![bytes(1, b"type.googleapis.com/x"), bytes(2, b"\x08\x01")],
            )],
            // decimal with its zero precision written out, fields reversed
            vec![message(7, Ty::Decimal, vec![varint(1, 5), varint(2, 0)])],
            vec![message(7, Ty::Decimal, vec![varint(2, 1), varint(1, 5)])],
            // precision beyond u32
            vec![message(
                7,
                Ty::Decimal,
                vec![varint(1, 5), varint(2, 1 << 33)],
            )],
            // a leaf-list holding a leaf-list, and JSON
            vec![message(
                8,
                Ty::Array,
                vec![message(1, Ty::Typed, vec![message(8, Ty::Array, vec![])])],
            )],
            vec![message(
                8,
                Ty::Array,
                vec![message(1, Ty::Typed, vec![bytes(11, b"1")])],
            )],
            // the oneof given twice: the last wins
            vec![bytes(1, b"x"), varint(2, 3)],
            vec![varint(2, 3), varint(2, 4)],
            // float NaN, bool 2, an empty double
            vec![Field::new(6, 5, Payload::Fixed32(0x7fc0_0001))],
            vec![varint(4, 2)],
            vec![Field::new(14, 1, Payload::Fixed64(f64::NAN.to_bits()))],
            vec![],
        ],
        Ty::Path => vec![
            // the deprecated element
            vec![bytes(1, b"a")],
            vec![bytes(2, b"o:c"), message(3, Ty::Elem, vec![bytes(1, b"a")])],
            vec![message(3, Ty::Elem, vec![bytes(1, b"")])],
            vec![message(3, Ty::Elem, vec![])],
            // an origin after the elements, a target not UTF-8
            vec![message(3, Ty::Elem, vec![bytes(1, b"a")]), bytes(2, b"oc")],
            vec![
                message(3, Ty::Elem, vec![bytes(1, b"a")]),
                bytes(4, b"\xff"),
            ],
            // one key given twice (prost keeps the last), nine keys
            vec![message(
                3,
                Ty::Elem,
                vec![bytes(1, b"l"), entry(b"k", b"1"), entry(b"k", b"2")],
            )],
            vec![message(
                3,
                Ty::Elem,
                std::iter::once(bytes(1, b"l"))
                    .chain((0..9u8).map(|i| entry(&[b'a' + i], b"v")))
                    .collect(),
            )],
            // the name after the keys, a key with no name
            vec![message(
                3,
                Ty::Elem,
                vec![entry(b"k", b"]=\\/"), bytes(1, b"l")],
            )],
            vec![message(3, Ty::Elem, vec![bytes(1, b"l"), entry(b"", b"v")])],
        ],
        Ty::MapEntry => vec![
            vec![bytes(2, b"v")],
            vec![bytes(1, b"k")],
            vec![bytes(2, b"v"), bytes(1, b"k")],
            vec![bytes(1, b"k"), bytes(2, b"\xff")],
        ],
        Ty::Update => vec![
            // no path: the root
            vec![message(3, Ty::Typed, vec![varint(2, 1)])],
            // the deprecated value
            vec![message(2, Ty::Extension, vec![bytes(1, b"1")])],
            vec![varint(4, 7), message(3, Ty::Typed, vec![varint(2, 1)])],
            vec![],
        ],
        _ => return None,
    };
    Some(forms[usize::from(which) % forms.len()].clone())
}

/// A change to one message (given with its type; `None` for a group).
type Edit = Box<dyn FnMut(Option<Ty>, &mut Vec<Field>)>;

fn mutate(tree: &mut Vec<Field>, mutation: &Mutation) {
    let total = count_messages(tree);
    let at = |a: &u64| a % total;
    let mut op: Edit = match mutation.clone() {
        Mutation::Insert {
            pos,
            number,
            kind,
            seed,
            ..
        } => Box::new(move |_, fields| {
            let pos = (pos % (fields.len() as u64 + 1)) as usize;
            fields.insert(pos, inserted(number, kind, seed));
        }),
        Mutation::Duplicate { field, .. } => Box::new(move |_, fields| {
            if let Some(f) = field_of(fields, field).cloned() {
                fields.push(f);
            }
        }),
        Mutation::Swap { i, j, .. } => Box::new(move |_, fields| {
            let n = fields.len() as u64;
            if n > 1 {
                fields.swap((i % n) as usize, (j % n) as usize);
            }
        }),
        Mutation::Reverse { .. } => Box::new(|_, fields| fields.reverse()),
        Mutation::Remove { field, .. } => Box::new(move |_, fields| {
            let n = fields.len() as u64;
            if n > 0 {
                fields.remove((field % n) as usize);
            }
        }),
        Mutation::Pad {
            field, pad, value, ..
        } => Box::new(move |_, fields| {
            if let Some(f) = field_of(fields, field) {
                let pad = pad % 10 + 1;
                if value {
                    f.value_pad = pad;
                } else {
                    f.key_pad = pad;
                }
            }
        }),
        Mutation::Length { field, how, .. } => Box::new(move |_, fields| {
            if let Some(f) = field_of(fields, field) {
                let actual = match &f.payload {
                    Payload::Bytes(b) => b.len() as u64,
                    Payload::Message(_, inner) => {
                        let mut bytes = Vec::new();
                        write(inner, &mut bytes);
                        bytes.len() as u64
                    }
                    _ => return,
                };
                f.length = Some(match how % 6 {
                    0 => actual + 1,
                    1 => actual.saturating_sub(1),
                    2 => u64::from(u32::MAX),
                    3 => 1 << 63,
                    4 => u64::MAX,
                    _ => usize::MAX as u64 - 1,
                });
            }
        }),
        Mutation::BigKey { field, .. } => Box::new(move |_, fields| {
            if let Some(f) = field_of(fields, field) {
                f.key |= 1 << 32;
            }
        }),
        Mutation::WireType {
            field, wire_type, ..
        } => Box::new(move |_, fields| {
            if let Some(f) = field_of(fields, field) {
                f.key = f.key & !7 | u64::from(wire_type % 8);
            }
        }),
        Mutation::Text { field, which, .. } => Box::new(move |_, fields| {
            if let Some(f) = field_of(fields, field)
                && let Payload::Bytes(b) = &mut f.payload
            {
                *b = TEXTS[usize::from(which) % TEXTS.len()].to_vec();
            }
        }),
        Mutation::Number { field, which, .. } => Box::new(move |_, fields| {
            if let Some(f) = field_of(fields, field)
                && let Payload::Varint(v) = &mut f.payload
            {
                *v = NUMBERS[usize::from(which) % NUMBERS.len()];
            }
        }),
        Mutation::Hand { which, .. } => Box::new(move |ty, fields| {
            if let Some(form) = hand_built(ty, which) {
                *fields = form;
            }
        }),
    };
    let (Mutation::Insert { at: a, .. }
    | Mutation::Duplicate { at: a, .. }
    | Mutation::Swap { at: a, .. }
    | Mutation::Reverse { at: a }
    | Mutation::Remove { at: a, .. }
    | Mutation::Pad { at: a, .. }
    | Mutation::Length { at: a, .. }
    | Mutation::BigKey { at: a, .. }
    | Mutation::WireType { at: a, .. }
    | Mutation::Text { at: a, .. }
    | Mutation::Number { at: a, .. }
    | Mutation::Hand { at: a, .. }) = mutation;
    let mut target = at(a);
    visit(Some(Ty::Response), tree, &mut target, &mut *op);
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<u64>(), any::<u64>(), any::<u8>(), any::<u8>(), any::<u64>()).prop_map(
            |(at, pos, number, kind, seed)| Mutation::Insert { at, pos, number, kind, seed }
        ),
        2 => (any::<u64>(), any::<u64>()).prop_map(|(at, field)| Mutation::Duplicate { at, field }),
        1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(at, i, j)| Mutation::Swap { at, i, j }),
        1 => any::<u64>().prop_map(|at| Mutation::Reverse { at }),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(at, field)| Mutation::Remove { at, field }),
        2 => (any::<u64>(), any::<u64>(), any::<u8>(), any::<bool>())
            .prop_map(|(at, field, pad, value)| Mutation::Pad { at, field, pad, value }),
        1 => (any::<u64>(), any::<u64>(), any::<u8>())
            .prop_map(|(at, field, how)| Mutation::Length { at, field, how }),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(at, field)| Mutation::BigKey { at, field }),
        1 => (any::<u64>(), any::<u64>(), any::<u8>())
            .prop_map(|(at, field, wire_type)| Mutation::WireType { at, field, wire_type }),
        2 => (any::<u64>(), any::<u64>(), any::<u8>())
            .prop_map(|(at, field, which)| Mutation::Text { at, field, which }),
        1 => (any::<u64>(), any::<u64>(), any::<u8>())
            .prop_map(|(at, field, which)| Mutation::Number { at, field, which }),
        2 => (any::<u64>(), any::<u8>()).prop_map(|(at, which)| Mutation::Hand { at, which }),
    ]
}

// ---- random responses ----

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,4}",
        2 => "[a-z/\\]\\[=\\\\ é*.:-]{0,5}",
        1 => Just(String::new()),
    ]
}

fn arb_elem() -> impl Strategy<Value = gnmi::PathElem> {
    (
        prop_oneof![4 => "[a-z][a-z-]{0,4}", 1 => "[a-z/\\]\\[\\\\]{1,3}"],
        prop::collection::hash_map("[a-z]{1,2}", arb_text(), 0..3),
    )
        .prop_map(|(name, key)| gnmi::PathElem { name, key })
}

fn arb_path() -> impl Strategy<Value = gnmi::Path> {
    (
        prop::sample::select(vec!["", "", "oc", "openconfig-interfaces"]),
        prop::collection::vec(arb_elem(), 0..4),
        prop::sample::select(vec!["", "", "dev1"]),
    )
        .prop_map(|(origin, elem, target)| gnmi::Path {
            origin: origin.into(),
            elem,
            target: target.into(),
            ..Default::default()
        })
}

fn typed(v: V) -> gnmi::TypedValue {
    gnmi::TypedValue { value: Some(v) }
}

#[allow(deprecated, reason = "devices still send float_val and decimal_val")]
fn arb_scalar() -> impl Strategy<Value = gnmi::TypedValue> {
    prop_oneof![
        any::<String>().prop_map(|t| typed(V::StringVal(t))),
        any::<i64>().prop_map(|i| typed(V::IntVal(i))),
        any::<u64>().prop_map(|i| typed(V::UintVal(i))),
        any::<bool>().prop_map(|b| typed(V::BoolVal(b))),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(|b| typed(V::BytesVal(b))),
        any::<f32>().prop_map(|f| typed(V::FloatVal(f))),
        any::<f64>().prop_map(|f| typed(V::DoubleVal(f))),
        (
            any::<i64>(),
            prop_oneof![Just(0u32), 0u32..20, Just(u32::MAX)]
        )
            .prop_map(|(digits, precision)| typed(V::DecimalVal(gnmi::Decimal64 {
                digits,
                precision
            }))),
        "[ -~]{0,4}".prop_map(|t| typed(V::AsciiVal(t))),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(|b| typed(V::ProtoBytes(b))),
    ]
}

fn arb_value() -> impl Strategy<Value = gnmi::TypedValue> {
    prop_oneof![
        8 => arb_scalar(),
        1 => prop::collection::vec(arb_scalar(), 0..3)
            .prop_map(|element| typed(V::LeaflistVal(gnmi::ScalarArray { element }))),
        1 => prop::sample::select(vec![&b"{\"a\": 1}"[..], b"1", b"[1, 2]", b"{"]).prop_map(
            |json| typed(V::JsonIetfVal(json.to_vec()))
        ),
        1 => Just(typed(V::JsonVal(b"\"x\"".to_vec()))),
        1 => Just(typed(V::AnyVal(prost_types::Any {
            type_url: "type.googleapis.com/x".into(),
            value: vec![8, 1],
        }))),
        1 => Just(gnmi::TypedValue::default()),
    ]
}

fn arb_update() -> impl Strategy<Value = gnmi::Update> {
    (
        prop::option::weighted(0.9, arb_path()),
        prop::option::weighted(0.95, arb_value()),
        prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
    )
        .prop_map(|(path, val, duplicates)| gnmi::Update {
            path,
            val,
            duplicates,
            ..Default::default()
        })
}

fn arb_extension() -> impl Strategy<Value = gnmi_ext::Extension> {
    use gnmi_ext::extension::Ext;
    prop_oneof![
        any::<i64>().prop_map(|t| Ext::History(gnmi_ext::History {
            request: Some(gnmi_ext::history::Request::SnapshotTime(t)),
        })),
        prop::collection::vec(any::<u8>(), 0..4)
            .prop_map(|msg| Ext::RegisteredExt(gnmi_ext::RegisteredExtension { id: 999, msg })),
    ]
    .prop_map(|ext| gnmi_ext::Extension { ext: Some(ext) })
}

fn arb_response() -> impl Strategy<Value = gnmi::SubscribeResponse> {
    let notification = (
        any::<i64>(),
        prop::option::of(arb_path()),
        prop::collection::vec(arb_update(), 0..5),
        prop::collection::vec(arb_path(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(timestamp, prefix, update, delete, atomic)| {
            Response::Update(gnmi::Notification {
                timestamp,
                prefix,
                update,
                delete,
                atomic,
            })
        });
    (
        prop_oneof![
            8 => notification.prop_map(Some),
            2 => any::<bool>().prop_map(|b| Some(Response::SyncResponse(b))),
            1 => Just(None),
        ],
        prop::collection::vec(arb_extension(), 0..2),
    )
        .prop_map(|(response, extension)| gnmi::SubscribeResponse {
            response,
            extension,
        })
}

// ---- the property ----

/// What the fast path made of one byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Left to the general path.
    Fallback,
    Accepted,
}

/// Checks the property for `bytes`.
fn check(bytes: &[u8]) -> Result<Outcome, TestCaseError> {
    let Some(fast) = prepare(bytes) else {
        return Ok(Outcome::Fallback);
    };
    let decoded = match gnmi::SubscribeResponse::decode(bytes) {
        Ok(decoded) => decoded,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "the fast path accepted what prost rejects ({e}): {fast:?}"
            )));
        }
    };
    match (fast, decoded.response) {
        (Prepared::SyncResponse, Some(Response::SyncResponse(_))) => {}
        (Prepared::Notification(fast), Some(Response::Update(n))) => {
            prop_assert_eq!(fast.has_deletes(), !n.delete.is_empty());
            // Both the map of churn and the log of a dump.
            for start in [Delta::new(), Delta::replacing(&[Path::root()])] {
                let (mut by_fast, mut by_decoder) = (start.clone(), start);
                let counts = fast.apply(&mut by_fast);
                let expected = Decoder::default().apply(&n, &mut by_decoder);
                prop_assert_eq!(Ok(counts), expected, "counts of {:?}", n);
                prop_assert_eq!(by_fast, by_decoder, "deltas of {:?}", n);
            }
        }
        (fast, response) => {
            return Err(TestCaseError::fail(format!(
                "the fast path read {fast:?}, prost {response:?}"
            )));
        }
    }
    Ok(Outcome::Accepted)
}

/// The property for the response, mutated, its bytes flipped, and cut at
/// every length.
fn check_case(
    response: &gnmi::SubscribeResponse,
    mutations: &[Mutation],
    flips: &[(u64, u8)],
    stats: &Stats,
) -> Result<(), TestCaseError> {
    let bytes = response.encode_to_vec();
    check(&bytes)?;
    let mut tree = parse(Ty::Response, &bytes);
    for mutation in mutations {
        mutate(&mut tree, mutation);
    }
    let mut mutated = Vec::new();
    write(&tree, &mut mutated);
    if !mutated.is_empty() {
        for &(at, xor) in flips {
            let len = mutated.len() as u64;
            mutated[(at % len) as usize] ^= xor;
        }
    }
    let outcome = check(&mutated)?;
    if mutated != bytes {
        stats.count(outcome);
    }
    for len in 0..mutated.len() {
        check(&mutated[..len])?;
    }
    Ok(())
}

#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    fallback: AtomicUsize,
}

impl Stats {
    fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => &self.accepted,
            Outcome::Fallback => &self.fallback,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn the_fast_path_accepts_only_what_prost_accepts_and_means_the_same() {
    // PROPTEST_CASES raises the number of cases for a longer hunt.
    let config = Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..Config::default()
    };
    let strategy = (
        arb_response(),
        prop::collection::vec(arb_mutation(), 0..4),
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec((any::<u64>(), 1u8..), 1..3)],
    );
    let stats = Stats::default();
    let result = TestRunner::new(config).run(&strategy, |(response, mutations, flips)| {
        check_case(&response, &mutations, &flips, &stats)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (response, mutations, flips))) => panic!(
            "{reason}\nminimal case: {response:?}\nmutations: {mutations:?}\nflips: {flips:?}"
        ),
        Err(e) => panic!("{e}"),
    }
    // Neither side of the property may be vacuous: mutated messages must
    // still reach the fast path's comparisons often, and the mutations must
    // bite.
    let accepted = stats.accepted.load(Ordering::Relaxed);
    let fallback = stats.fallback.load(Ordering::Relaxed);
    let total = accepted + fallback;
    assert!(
        accepted * 10 >= total && fallback * 10 >= total,
        "of {total} mutated messages, the fast path accepted {accepted}"
    );
}

/// The divergences this test found, reduced.
#[test]
fn reduced_cases() {
    // An unknown field whose key does not fit a u32 (number 2^29 + 100,
    // varint): prost rejects the key.
    let mut big_key = vec![0x18, 0x01];
    put_varint(&mut big_key, (1 << 32) | (100 << 3), 0);
    big_key.push(0);
    assert!(gnmi::SubscribeResponse::decode(&big_key[..]).is_err());
    assert!(check(&big_key).is_ok());
}
