//! Turning gNMI notifications into delta operations: joining prefix and path,
//! deletes before updates (as gNMI orders them within one notification), and
//! flattening JSON values into leaves.
//!
//! JSON (`json_val`, `json_ietf_val`) is flattened so that running holds leaves
//! whatever encoding the device used:
//! - an object becomes its members, one path element each (an RFC 7951 module
//!   prefix such as `openconfig-interfaces:` is dropped from member names, so the
//!   paths match those of a PROTO-encoded sync);
//! - an array of objects is a list: with its keys known from `list_keys`, each
//!   entry becomes `list[key=value]` with its members below it (the key members
//!   included, as YANG data has them); without known keys, or when an entry lacks
//!   a key, the whole array stays one leaf holding the JSON;
//! - an array of scalars is a leaf-list: one leaf holding the JSON array;
//! - a scalar is a leaf holding that JSON scalar.
//!
//! Flattened leaves keep the encoding they arrived in (`json_ietf_val` stays
//! `json_ietf_val`), holding compact JSON text.

use std::collections::HashMap;

use netsync_proto::gnmi::{self, typed_value};
use prost::Message;
use serde_json::Value as Json;

use crate::datastore::ListKey;
use crate::path::{
    Path, PathElem, PathError, WirePrefix, write_canonical_gnmi, write_canonical_wire,
};
use crate::running::{Delta, Key, Subtree, Value};
use crate::wire::{Fields, Payload};

/// Why a notification could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    /// A path in it is malformed.
    #[error("bad path in notification: {0}")]
    Path(#[from] PathError),
    /// An update carries no value.
    #[error("update of {path} carries no value")]
    NoValue {
        /// The leaf.
        path: String,
    },
    /// A JSON value does not parse.
    #[error("update of {path} holds invalid JSON: {message}")]
    Json {
        /// The leaf.
        path: String,
        /// The parser's complaint.
        message: String,
    },
}

/// What one notification contributed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Leaf updates (after flattening).
    pub updates: u64,
    /// Deletes.
    pub deletes: u64,
}

/// Applies notifications to deltas, with the list keys of one datastore.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// Key names by list schema path (element names only, e.g. `/a/list`).
    list_keys: HashMap<String, Vec<String>>,
}

impl Decoder {
    /// A decoder that knows these lists' keys.
    pub fn new(list_keys: &[ListKey]) -> Self {
        let list_keys = list_keys
            .iter()
            .map(|lk| (schema_path(lk.list.elems()), lk.keys.clone()))
            .collect();
        Self { list_keys }
    }

    /// Applies `n` to `delta`: its deletes, then its updates.
    ///
    /// On error nothing of `n` is applied, so a bad notification never leaves
    /// half of itself behind.
    pub fn apply(
        &self,
        n: &gnmi::Notification,
        delta: &mut Delta,
    ) -> Result<Counts, NotificationError> {
        Ok(self.prepare(n)?.apply(delta))
    }

    /// Reads `n` into the form [`PreparedNotification::apply`] applies: its
    /// paths canonical, its JSON values flattened, every value encoded. All
    /// the work of a notification but the copy into a delta, so that it can
    /// be done before the lock the copy needs (the sync's read-ahead does it
    /// on a task of its own).
    pub fn prepare(
        &self,
        n: &gnmi::Notification,
    ) -> Result<PreparedNotification, NotificationError> {
        let prefix = n.prefix.as_ref();
        let mut out = PreparedNotification::default();
        for path in &n.delete {
            out.deletes
                .push(Subtree::new(&Path::from_gnmi(prefix, path)?));
        }
        let mut scratch = String::new();
        let mut flattened = Vec::new();
        let empty = gnmi::Path::default();
        for update in &n.update {
            let path = update.path.as_ref().unwrap_or(&empty);
            write_canonical_gnmi(prefix, path, &mut scratch)?;
            let Some(value) = update.val.as_ref().filter(|v| v.value.is_some()) else {
                return Err(NotificationError::NoValue { path: scratch });
            };
            let json = match &value.value {
                Some(typed_value::Value::JsonIetfVal(bytes)) => Some((bytes, Encoding::JsonIetf)),
                Some(typed_value::Value::JsonVal(bytes)) => Some((bytes, Encoding::Json)),
                _ => None,
            };
            match json {
                Some((bytes, encoding)) => {
                    let path = Path::from_gnmi(prefix, path)?;
                    self.flatten_bytes(path, bytes, encoding, &mut flattened)?;
                    for (key, value) in flattened.drain(..) {
                        out.push(&key, &value);
                    }
                }
                None => out.push(&scratch, value),
            }
        }
        Ok(out)
    }

    /// The leaves `value` at `path` stands for, exactly as [`Decoder::apply`]
    /// records them from a device: a JSON value flattened (see the module
    /// documentation), any other value the one leaf as it is.
    pub fn leaves(
        &self,
        path: &Path,
        value: &Value,
    ) -> Result<Vec<(Key, Value)>, NotificationError> {
        let mut out = Vec::new();
        match &value.value {
            Some(typed_value::Value::JsonIetfVal(bytes)) => {
                self.flatten_bytes(path.clone(), bytes, Encoding::JsonIetf, &mut out)?;
            }
            Some(typed_value::Value::JsonVal(bytes)) => {
                self.flatten_bytes(path.clone(), bytes, Encoding::Json, &mut out)?;
            }
            _ => out.push((key_of(path), value.clone())),
        }
        Ok(out)
    }

    fn flatten_bytes(
        &self,
        path: Path,
        bytes: &[u8],
        encoding: Encoding,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), NotificationError> {
        let json: Json = serde_json::from_slice(bytes).map_err(|e| NotificationError::Json {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        self.flatten(path, &json, encoding, out)
    }

    fn flatten(
        &self,
        path: Path,
        json: &Json,
        encoding: Encoding,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), NotificationError> {
        match json {
            Json::Object(members) => {
                for (name, member) in members {
                    let child = path.clone().child(unqualified(name))?;
                    self.flatten(child, member, encoding, out)?;
                }
            }
            Json::Array(items) if !items.is_empty() && items.iter().all(Json::is_object) => {
                match self.list_entries(&path, items)? {
                    Some(entries) => {
                        for (entry_path, entry) in entries {
                            self.flatten(entry_path, entry, encoding, out)?;
                        }
                    }
                    None => out.push((key_of(&path), encoding.value(json))),
                }
            }
            _ => out.push((key_of(&path), encoding.value(json))),
        }
        Ok(())
    }

    /// The entries of a JSON list at `path` with their keyed paths, or `None`
    /// when the keys are unknown or some entry lacks one.
    fn list_entries<'j>(
        &self,
        path: &Path,
        items: &'j [Json],
    ) -> Result<Option<Vec<(Path, &'j Json)>>, NotificationError> {
        let Some(keys) = self.list_keys.get(&schema_path(path.elems())) else {
            return Ok(None);
        };
        let Some(last) = path.elems().last() else {
            return Ok(None);
        };
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            let Json::Object(members) = item else {
                return Ok(None);
            };
            let mut elem = PathElem::new(last.name())?;
            for key in keys {
                let value = members
                    .iter()
                    .find(|(name, _)| unqualified(name) == key)
                    .and_then(|(_, v)| key_text(v));
                let Some(value) = value else { return Ok(None) };
                elem = elem.with_key(key.as_str(), value)?;
            }
            let mut entry_path = path.clone();
            entry_path.pop();
            entries.push((entry_path.child_elem(elem), item));
        }
        Ok(Some(entries))
    }
}

/// A Subscribe response read on the fast path (see [`prepare`]).
#[derive(Debug)]
pub enum Prepared {
    /// A notification, ready to apply.
    Notification(PreparedNotification),
    /// `sync_response`.
    SyncResponse,
}

/// A notification read straight from its wire bytes: the canonical keys of
/// its updates back to back, their values exactly as the device encoded them
/// (the form running stores), and its deletes. Applying it allocates nothing
/// per update, and nothing is decoded into owned messages on the way.
#[derive(Debug, Default)]
pub struct PreparedNotification {
    keys: String,
    values: Vec<u8>,
    /// Where each update's key ends in `keys` and its value in `values`.
    ends: Vec<(usize, usize)>,
    deletes: Vec<Subtree>,
}

impl PreparedNotification {
    /// Whether it deletes anything.
    pub fn has_deletes(&self) -> bool {
        !self.deletes.is_empty()
    }

    /// Adds an update (for [`Decoder::prepare`]).
    fn push(&mut self, key: &str, value: &Value) {
        self.keys.push_str(key);
        // Into the buffer as `encode_to_vec` would write it: running
        // compares values by their bytes.
        value
            .encode(&mut self.values)
            .expect("a Vec has room for any message");
        self.ends.push((self.keys.len(), self.values.len()));
    }

    /// The first update whose encoded value is longer than `max` bytes: its
    /// key and the value's length.
    pub fn value_over(&self, max: usize) -> Option<(&str, usize)> {
        let (mut key_start, mut value_start) = (0, 0);
        for &(key_end, value_end) in &self.ends {
            if value_end - value_start > max {
                return Some((&self.keys[key_start..key_end], value_end - value_start));
            }
            (key_start, value_start) = (key_end, value_end);
        }
        None
    }

    /// Applies it to `delta`: its deletes, then its updates.
    pub fn apply(&self, delta: &mut Delta) -> Counts {
        for subtree in &self.deletes {
            delta.delete(subtree.clone());
        }
        let (mut key_start, mut value_start) = (0, 0);
        for &(key_end, value_end) in &self.ends {
            delta.update_encoded(
                &self.keys[key_start..key_end],
                &self.values[value_start..value_end],
            );
            (key_start, value_start) = (key_end, value_end);
        }
        Counts {
            updates: self.ends.len() as u64,
            deletes: self.deletes.len() as u64,
        }
    }
}

/// Reads the wire bytes of a `gnmi.SubscribeResponse` without decoding it,
/// for the common case only: a notification whose values are all scalars
/// (no JSON to flatten, no decimal, leaf-list or `Any`), each encoded as prost
/// encodes it, and whose paths are well formed; or a `sync_response`.
/// Anything else, the device's mistakes included, gives `None`: the caller
/// then decodes the message fully and takes the general path, which says
/// what is wrong. For what it accepts, applying the result does exactly what
/// decoding and [`Decoder::apply`] would.
pub fn prepare(response: &[u8]) -> Option<Prepared> {
    let mut fields = Fields::new(response);
    let mut found = None;
    while let Some((number, payload)) = fields.next().ok()? {
        found = match (number, payload, &found) {
            (1, Payload::Len(n), None) => Some(Prepared::Notification(prepare_notification(n)?)),
            (3, Payload::Varint(_), None) => Some(Prepared::SyncResponse),
            // Extensions mean nothing to the sync, but prost rejects a
            // malformed one, and so must the fast path.
            (5, Payload::Len(extension), _) => {
                netsync_proto::gnmi_ext::Extension::decode(extension).ok()?;
                continue;
            }
            // The oneof given twice, the deprecated error, a mistyped field.
            (1 | 3 | 4 | 5, _, _) => return None,
            _ => continue,
        };
    }
    found
}

fn prepare_notification(notification: &[u8]) -> Option<PreparedNotification> {
    // The prefix first: the wire may give it after the updates.
    let mut prefix = None;
    let mut fields = Fields::new(notification);
    while let Some((number, payload)) = fields.next().ok()? {
        match (number, payload) {
            (2, Payload::Len(p)) if prefix.is_none() => prefix = Some(p),
            (1 | 6, Payload::Varint(_)) | (4 | 5, Payload::Len(_)) => {}
            (1 | 2 | 4 | 5 | 6, _) => return None,
            _ => {}
        }
    }
    let wire_prefix = match prefix {
        Some(p) => Some(WirePrefix::read(p)?),
        None => None,
    };
    let mut out = PreparedNotification::default();
    // Canonical keys take about as many bytes as the message (values are
    // short): one allocation instead of a chain of growths per message.
    let mut keys = Vec::with_capacity(notification.len());
    out.values.reserve(notification.len() / 4);
    // Decoded only for deletes, once.
    let mut decoded_prefix = None;
    let mut fields = Fields::new(notification);
    while let Some((number, payload)) = fields.next().ok()? {
        match (number, payload) {
            (4, Payload::Len(update)) => {
                let value = prepare_update(wire_prefix.as_ref(), update, &mut keys)?;
                out.values.extend_from_slice(value);
                out.ends.push((keys.len(), out.values.len()));
            }
            (5, Payload::Len(delete)) => {
                if decoded_prefix.is_none() {
                    decoded_prefix = Some(match prefix {
                        Some(p) => Some(gnmi::Path::decode(p).ok()?),
                        None => None,
                    });
                }
                let path = gnmi::Path::decode(delete).ok()?;
                let path = Path::from_gnmi(decoded_prefix.as_ref().and_then(Option::as_ref), &path)
                    .ok()?;
                out.deletes.push(Subtree::new(&path));
            }
            _ => {}
        }
    }
    // Each key was checked; this only changes the type.
    out.keys = String::from_utf8(keys).ok()?;
    Some(out)
}

/// Appends an update's canonical key to `keys` and returns its value's bytes.
fn prepare_update<'u>(
    prefix: Option<&WirePrefix<'_>>,
    update: &'u [u8],
    keys: &mut Vec<u8>,
) -> Option<&'u [u8]> {
    let (mut path, mut value) = (None, None);
    let mut fields = Fields::new(update);
    while let Some((number, payload)) = fields.next().ok()? {
        match (number, payload) {
            (1, Payload::Len(p)) if path.is_none() => path = Some(p),
            (3, Payload::Len(v)) if value.is_none() => value = Some(v),
            (4, Payload::Varint(_)) => {}
            // The deprecated `value`, a repeated or mistyped field.
            (1..=4, _) => return None,
            _ => {}
        }
    }
    let value = value.filter(|v| is_plain_scalar(v))?;
    write_canonical_wire(prefix, path.unwrap_or_default(), keys)?;
    Some(value)
}

/// Whether a `TypedValue`'s bytes hold one value that needs no flattening
/// (a scalar, a decimal or a leaf-list of scalars), encoded exactly as prost
/// encodes it, so that the bytes can be stored as they are.
fn is_plain_scalar(value: &[u8]) -> bool {
    is_plain_value(value, true)
}

fn is_plain_value(value: &[u8], list_allowed: bool) -> bool {
    let mut fields = Fields::new(value);
    let Ok(Some((number, payload))) = fields.next() else {
        return false;
    };
    if fields.next() != Ok(None) || !fields.minimal {
        return false;
    }
    match (number, payload) {
        // string_val, ascii_val
        (1 | 12, Payload::Len(text)) => std::str::from_utf8(text).is_ok(),
        // int_val, uint_val
        (2 | 3, Payload::Varint(_)) => true,
        // bool_val: prost reads any non-zero as true and writes 1.
        (4, Payload::Varint(b)) => b <= 1,
        // bytes_val, proto_bytes, float_val, double_val
        (5 | 13, Payload::Len(_)) | (6, Payload::Fixed32(_)) | (14, Payload::Fixed64(_)) => true,
        (7, Payload::Len(decimal)) => is_plain_decimal(decimal),
        (8, Payload::Len(list)) if list_allowed => is_plain_list(list),
        _ => false,
    }
}

/// A `Decimal64` as prost writes it: `digits` (1) then `precision` (2), each
/// only when not zero, `precision` within `u32`.
fn is_plain_decimal(decimal: &[u8]) -> bool {
    let mut fields = Fields::new(decimal);
    let mut last = 0;
    loop {
        match fields.next() {
            Ok(None) => return fields.minimal,
            Ok(Some((number, Payload::Varint(v)))) if number > last && v != 0 => {
                let fits = match number {
                    1 => true,
                    2 => u32::try_from(v).is_ok(),
                    _ => false,
                };
                if !fits {
                    return false;
                }
                last = number;
            }
            _ => return false,
        }
    }
}

/// A `ScalarArray` as prost writes it: its elements (1), each a plain scalar.
fn is_plain_list(list: &[u8]) -> bool {
    let mut fields = Fields::new(list);
    loop {
        match fields.next() {
            Ok(None) => return fields.minimal,
            Ok(Some((1, Payload::Len(element)))) if is_plain_value(element, false) => {}
            _ => return false,
        }
    }
}

/// Which JSON flavour a value arrived in; flattened leaves keep it.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    JsonIetf,
    Json,
}

impl Encoding {
    fn value(self, json: &Json) -> Value {
        let text = json.to_string().into_bytes();
        Value {
            value: Some(match self {
                Encoding::JsonIetf => typed_value::Value::JsonIetfVal(text),
                Encoding::Json => typed_value::Value::JsonVal(text),
            }),
        }
    }
}

/// The canonical key of a path.
pub fn key_of(path: &Path) -> Key {
    path.to_string().into()
}

/// A member name without its RFC 7951 module prefix.
fn unqualified(name: &str) -> &str {
    name.split_once(':').map_or(name, |(_, local)| local)
}

/// A list key's value as path text: strings as they are, numbers and booleans
/// in their JSON spelling; anything else cannot be a key.
fn key_text(json: &Json) -> Option<String> {
    match json {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Element names only, e.g. `/interfaces/interface`: how `list_keys` are matched.
fn schema_path(elems: &[PathElem]) -> String {
    let mut out = String::new();
    for elem in elems {
        out.push('/');
        out.push_str(elem.name());
    }
    out
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::running::Running;

    fn gpath(s: &str) -> gnmi::Path {
        Path::parse(s).unwrap().to_gnmi()
    }

    fn json_update(path: &str, json: &str) -> gnmi::Update {
        gnmi::Update {
            path: Some(gpath(path)),
            val: Some(gnmi::TypedValue {
                value: Some(typed_value::Value::JsonIetfVal(json.as_bytes().to_vec())),
            }),
            ..Default::default()
        }
    }

    fn leaves(delta: Delta) -> Vec<(String, String)> {
        let (running, _) = Running::new().apply(delta);
        running
            .iter()
            .map(|(k, v)| {
                let text = match &v.value {
                    Some(typed_value::Value::JsonIetfVal(b)) => {
                        String::from_utf8(b.clone()).unwrap()
                    }
                    other => format!("{other:?}"),
                };
                (k.to_string(), text)
            })
            .collect()
    }

    #[test]
    fn flattens_objects_lists_and_leaf_lists() {
        let decoder = Decoder::new(&[ListKey::parse("/interfaces/interface[name]").unwrap()]);
        let n = gnmi::Notification {
            update: vec![json_update(
                "/",
                r#"{"openconfig-interfaces:interfaces": {"interface": [
                    {"name": "eth0", "config": {"mtu": 1500, "enabled": true}},
                    {"name": "eth1", "config": {"mtu": "9000"}}
                ]}, "system": {"dns": {"servers": ["1.1.1.1", "8.8.8.8"]}, "users": [{"u": 1}]}}"#,
            )],
            ..Default::default()
        };
        let mut delta = Delta::new();
        let counts = decoder.apply(&n, &mut delta).unwrap();
        assert_eq!(counts.updates, 7);
        assert_eq!(
            leaves(delta),
            vec![
                (
                    "/interfaces/interface[name=eth0]/config/enabled".into(),
                    "true".into()
                ),
                (
                    "/interfaces/interface[name=eth0]/config/mtu".into(),
                    "1500".into()
                ),
                (
                    "/interfaces/interface[name=eth0]/name".into(),
                    "\"eth0\"".into()
                ),
                (
                    "/interfaces/interface[name=eth1]/config/mtu".into(),
                    "\"9000\"".into()
                ),
                (
                    "/interfaces/interface[name=eth1]/name".into(),
                    "\"eth1\"".into()
                ),
                (
                    "/system/dns/servers".into(),
                    r#"["1.1.1.1","8.8.8.8"]"#.into()
                ),
                ("/system/users".into(), r#"[{"u":1}]"#.into()),
            ]
        );
    }

    #[test]
    fn an_entry_without_its_key_keeps_the_list_whole() {
        let decoder = Decoder::new(&[ListKey::parse("/l[k]").unwrap()]);
        let n = gnmi::Notification {
            update: vec![json_update("/l", r#"[{"k": 1}, {"x": 2}]"#)],
            ..Default::default()
        };
        let mut delta = Delta::new();
        decoder.apply(&n, &mut delta).unwrap();
        assert_eq!(
            leaves(delta),
            vec![("/l".into(), r#"[{"k":1},{"x":2}]"#.into())]
        );
    }

    #[test]
    fn prefix_is_joined_and_deletes_come_first() {
        let n = gnmi::Notification {
            prefix: Some(gpath("/a")),
            delete: vec![gpath("/b")],
            update: vec![gnmi::Update {
                path: Some(gpath("/b/c")),
                val: Some(gnmi::TypedValue {
                    value: Some(typed_value::Value::UintVal(7)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut delta = Delta::new();
        let counts = Decoder::default().apply(&n, &mut delta).unwrap();
        assert_eq!(
            counts,
            Counts {
                updates: 1,
                deletes: 1
            }
        );
        let before = Running::from_leaves([("/a/b/old".into(), gnmi::TypedValue::default())]);
        let (after, change) = before.apply(delta);
        assert_eq!(after.len(), 1);
        assert!(after.get("/a/b/c").is_some());
        assert_eq!(change.deletes().collect::<Vec<_>>(), vec!["/a/b/old"]);
    }

    #[test]
    fn bad_input_applies_nothing() {
        let n = gnmi::Notification {
            update: vec![json_update("/ok", "1"), json_update("/bad", "{not json")],
            ..Default::default()
        };
        let mut delta = Delta::new();
        let err = Decoder::default().apply(&n, &mut delta).unwrap_err();
        assert!(matches!(err, NotificationError::Json { .. }), "{err}");
        assert!(delta.is_empty());
        let no_value = gnmi::Notification {
            update: vec![gnmi::Update {
                path: Some(gpath("/x")),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            Decoder::default().apply(&no_value, &mut delta),
            Err(NotificationError::NoValue { .. })
        ));
    }

    // ---- the fast path ----

    use proptest::prelude::*;

    fn typed(v: typed_value::Value) -> gnmi::TypedValue {
        gnmi::TypedValue { value: Some(v) }
    }

    fn update(path: &str, value: gnmi::TypedValue) -> gnmi::Update {
        gnmi::Update {
            path: Some(gpath(path)),
            val: Some(value),
            ..Default::default()
        }
    }

    fn response(n: gnmi::Notification) -> Vec<u8> {
        gnmi::SubscribeResponse {
            response: Some(gnmi::subscribe_response::Response::Update(n)),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn prepared(bytes: &[u8]) -> Option<PreparedNotification> {
        match prepare(bytes)? {
            Prepared::Notification(n) => Some(n),
            Prepared::SyncResponse => panic!("a notification was sent"),
        }
    }

    #[test]
    fn common_notifications_take_the_fast_path() {
        let n = gnmi::Notification {
            prefix: Some(gpath("oc:/a[k=1]")),
            update: vec![
                update("/b", typed(typed_value::Value::IntVal(-5))),
                update(
                    "/c[y=2][x=1]/d",
                    typed(typed_value::Value::StringVal("s".into())),
                ),
                update("/e", typed(typed_value::Value::BoolVal(false))),
                update("/f", typed(typed_value::Value::DoubleVal(1.5))),
            ],
            delete: vec![gpath("/g")],
            ..Default::default()
        };
        let fast = prepared(&response(n.clone())).expect("the fast path");
        assert!(fast.has_deletes());
        let (mut a, mut b) = (Delta::new(), Delta::new());
        assert_eq!(
            fast.apply(&mut a),
            Decoder::default().apply(&n, &mut b).unwrap()
        );
        assert_eq!(Running::new().apply(a).0, Running::new().apply(b).0);
        let sync = gnmi::SubscribeResponse {
            response: Some(gnmi::subscribe_response::Response::SyncResponse(true)),
            ..Default::default()
        };
        assert!(matches!(
            prepare(&sync.encode_to_vec()),
            Some(Prepared::SyncResponse)
        ));
    }

    #[test]
    fn everything_else_is_left_to_the_decoder() {
        let with = |value: gnmi::TypedValue| {
            response(gnmi::Notification {
                update: vec![update("/a", value)],
                ..Default::default()
            })
        };
        let json = with(typed(typed_value::Value::JsonIetfVal(b"{}".to_vec())));
        // precision 0 written out (prost leaves a zero out).
        let decimal = with_raw(&[0x3a, 0x04, 0x08, 0x01, 0x10, 0x00]);
        let empty = with(gnmi::TypedValue::default());
        // int_val 1 padded to two bytes, bool_val 2, a string that is not UTF-8.
        let padded = with_raw(&[0x10, 0x81, 0x00]);
        let bool_two = with_raw(&[0x20, 0x02]);
        let latin1 = with_raw(&[0x0a, 0x01, 0xe9]);
        #[allow(deprecated, reason = "the deprecated field is what is tested")]
        let element = response(gnmi::Notification {
            prefix: Some(gnmi::Path {
                element: vec!["a".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        #[allow(deprecated, reason = "the deprecated message is what is tested")]
        let error = gnmi::SubscribeResponse {
            response: Some(gnmi::subscribe_response::Response::Error(gnmi::Error {
                code: 1,
                message: "no".into(),
                data: None,
            })),
            ..Default::default()
        }
        .encode_to_vec();
        let many_keys = response(gnmi::Notification {
            update: vec![gnmi::Update {
                path: Some(gnmi::Path {
                    elem: vec![gnmi::PathElem {
                        name: "l".into(),
                        key: (0..9).map(|i| (format!("k{i}"), "v".into())).collect(),
                    }],
                    ..Default::default()
                }),
                val: Some(typed(typed_value::Value::IntVal(1))),
                ..Default::default()
            }],
            ..Default::default()
        });
        for (what, bytes) in [
            ("json", json),
            ("decimal with a zero written out", decimal),
            ("no value", empty),
            ("padded varint", padded),
            ("bool 2", bool_two),
            ("not UTF-8", latin1),
            ("element", element),
            ("error", error),
            ("nine keys", many_keys),
        ] {
            assert!(prepare(&bytes).is_none(), "{what}");
        }
        // Garbage is not read either; the decoder says what is wrong.
        assert!(prepare(&[0x0a, 0x05, 0x01]).is_none());
        // Nor is a malformed extension (here a group where a message
        // belongs), which prost rejects even though the sync ignores it.
        let bad_extension = [0x18, 0x01, 0x2a, 0x02, 0x1b, 0x1c];
        assert!(gnmi::SubscribeResponse::decode(&bad_extension[..]).is_err());
        assert!(prepare(&bad_extension).is_none());
    }

    /// A notification with one update of path `/a` whose `TypedValue` has
    /// exactly these bytes.
    fn with_raw(value: &[u8]) -> Vec<u8> {
        let mut update = Vec::new();
        let path = gpath("/a").encode_to_vec();
        update.push(0x0a);
        update.push(path.len() as u8);
        update.extend_from_slice(&path);
        update.push(0x1a);
        update.push(value.len() as u8);
        update.extend_from_slice(value);
        let mut n = vec![0x22, update.len() as u8];
        n.extend_from_slice(&update);
        let mut r = vec![0x0a, n.len() as u8];
        r.extend_from_slice(&n);
        r
    }

    #[allow(deprecated, reason = "devices still send float_val")]
    fn arb_value() -> impl Strategy<Value = gnmi::TypedValue> {
        use typed_value::Value as V;
        prop_oneof![
            any::<i64>().prop_map(|i| typed(V::IntVal(i))),
            any::<u64>().prop_map(|i| typed(V::UintVal(i))),
            any::<bool>().prop_map(|b| typed(V::BoolVal(b))),
            "[a-zé]{0,4}".prop_map(|t| typed(V::StringVal(t))),
            "[a-z]{0,4}".prop_map(|t| typed(V::AsciiVal(t))),
            any::<f64>().prop_map(|f| typed(V::DoubleVal(f))),
            any::<f32>().prop_map(|f| typed(V::FloatVal(f))),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(|b| typed(V::BytesVal(b))),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(|b| typed(V::ProtoBytes(b))),
            Just(typed(V::JsonIetfVal(br#"{"x": 1}"#.to_vec()))),
            (any::<i64>(), 0u32..20).prop_map(|(digits, precision)| {
                typed(V::DecimalVal(gnmi::Decimal64 { digits, precision }))
            }),
            prop::collection::vec(any::<i64>(), 0..3).prop_map(|items| {
                typed(V::LeaflistVal(gnmi::ScalarArray {
                    element: items.into_iter().map(|i| typed(V::IntVal(i))).collect(),
                }))
            }),
        ]
    }

    fn arb_path() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "/",
            "/a",
            "/a/b",
            "/a-b",
            "/l[k=1]",
            "/l[k=1]/v",
            "/l[k=2]",
            "/l",
            "oc:/a",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        /// Whatever the fast path reads, applying it does what decoding the
        /// message and applying that does; and a notification of scalars
        /// only is always read on the fast path.
        #[test]
        fn fast_path_equals_decoding(
            prefix in prop::option::of(prop::sample::select(vec!["/a", "oc:/l[k=1]", "/"])),
            updates in prop::collection::vec((arb_path(), arb_value()), 0..6),
            deletes in prop::collection::vec(arb_path(), 0..3),
            start in prop::collection::vec((arb_path(), arb_value()), 0..6),
        ) {
            let n = gnmi::Notification {
                prefix: prefix.map(gpath),
                update: updates.iter().map(|(p, v)| update(p, v.clone())).collect(),
                delete: deletes.iter().map(|p| gpath(p)).collect(),
                ..Default::default()
            };
            let mut before = Delta::new();
            for (p, v) in &start {
                before.update(key_of(&Path::parse(p).unwrap()), v.clone());
            }
            let (before, _) = Running::new().apply(before);
            let mut decoded = Delta::new();
            let expected = Decoder::default().apply(&n, &mut decoded);
            let scalars_only = updates.iter().all(|(_, v)| {
                !matches!(v.value, Some(typed_value::Value::JsonIetfVal(_)))
            });
            match prepared(&response(n)) {
                Some(fast) => {
                    let mut delta = Delta::new();
                    prop_assert_eq!(Ok(fast.apply(&mut delta)), expected);
                    prop_assert_eq!(before.apply(delta).0, before.apply(decoded).0);
                }
                None => prop_assert!(!scalars_only, "a notification of scalars was not read"),
            }
        }
    }
}
