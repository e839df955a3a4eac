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
use serde_json::Value as Json;

use crate::datastore::ListKey;
use crate::path::{Path, PathElem, PathError, write_canonical_gnmi};
use crate::running::{Delta, Key, Subtree, Value};

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

/// An update checked and waiting to be applied.
enum Pending<'n> {
    /// A scalar: its key's place in the key buffer, and its value.
    Scalar(std::ops::Range<usize>, &'n gnmi::TypedValue),
    /// A JSON value: its leaves' places in the flattened list.
    Flattened(std::ops::Range<usize>),
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
        let prefix = n.prefix.as_ref();
        let mut deletes = Vec::with_capacity(n.delete.len());
        for path in &n.delete {
            deletes.push(Subtree::new(&Path::from_gnmi(prefix, path)?));
        }
        // Everything is checked before anything is applied. Scalar updates
        // (the common case) keep their canonical paths back to back in one
        // buffer and borrow their values, so a notification of a thousand
        // updates allocates a handful of times, not thousands.
        let mut keys = String::new();
        let mut scratch = String::new();
        let mut updates = Vec::with_capacity(n.update.len());
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
                    let start = flattened.len();
                    let path = Path::from_gnmi(prefix, path)?;
                    self.flatten_bytes(path, bytes, encoding, &mut flattened)?;
                    updates.push(Pending::Flattened(start..flattened.len()));
                }
                None => {
                    let start = keys.len();
                    keys.push_str(&scratch);
                    updates.push(Pending::Scalar(start..keys.len(), value));
                }
            }
        }
        let mut counts = Counts {
            updates: 0,
            deletes: deletes.len() as u64,
        };
        for subtree in deletes {
            delta.delete(subtree);
        }
        let mut flattened = flattened.into_iter();
        for update in updates {
            match update {
                Pending::Scalar(range, value) => {
                    counts.updates += 1;
                    delta.update_ref(&keys[range], value);
                }
                Pending::Flattened(range) => {
                    for (key, value) in flattened.by_ref().take(range.len()) {
                        counts.updates += 1;
                        delta.update(key, value);
                    }
                }
            }
        }
        Ok(counts)
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
}
