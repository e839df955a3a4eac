//! Protobuf JSON (the canonical mapping, as grpcurl reads and writes it) and
//! the same document in YAML, for any `netsync.v1` message, both ways,
//! through prost-reflect and the descriptor set the proto crate embeds for
//! server reflection: one source of truth for field names, enums, Durations
//! and Timestamps, so the CLI accepts exactly what grpcurl accepts.

use std::path::Path;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};

use crate::error::CliError;

/// The pool of every message netsync knows, decoded once.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(netsync_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set is valid")
    })
}

/// The descriptor of the message `full_name` (such as `netsync.v1.Datastore`).
pub fn descriptor(full_name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in the embedded descriptor set"))
}

/// A message named by its protobuf full name, for the conversions below.
pub trait Named: prost::Message + Default {
    /// Its protobuf full name.
    const NAME: &'static str;
}

macro_rules! named {
    ($($ty:ident),*) => {
        $(impl Named for netsync_client::pb::$ty {
            const NAME: &'static str = concat!("netsync.v1.", stringify!($ty));
        })*
    };
}
named!(
    Datastore,
    ListDatastoresResponse,
    Intent,
    ListIntentsResponse,
    GetDeviationsResponse,
    SyncEvent
);

/// A file's document format, by its extension: `.json`, or YAML for
/// everything else (YAML is a superset of JSON, so a JSON file named
/// `.yaml` reads too).
fn is_json(file: &Path) -> bool {
    file.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

/// A message of type `T` read from `file` (JSON or YAML), with the top-level
/// keys the file sets (as proto field names), for a default update mask.
/// An unknown field or a value of the wrong type is an error naming the file,
/// the line and the field.
pub fn read_file<T: Named>(file: &Path) -> Result<(T, Vec<String>), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))?;
    parse::<T>(&text, is_json(file))
        .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))
}

/// A message of type `T` from `text`, JSON or YAML; see [`read_file`].
pub fn parse<T: Named>(text: &str, json: bool) -> Result<(T, Vec<String>), String> {
    if text.trim().is_empty() {
        return Err(format!("empty, expected a {}", T::NAME));
    }
    let desc = descriptor(T::NAME);
    // Unknown fields are mistakes in a hand-written spec (a misspelt
    // `adress` would otherwise be dropped without a word).
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let (message, document) = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        let message = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &options)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| format!("not a {}: {e}", T::NAME))?;
        let document: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        (message, document)
    } else {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let message = DynamicMessage::deserialize_with_options(desc.clone(), de, &options)
            .map_err(|e| format!("not a {}: {e}", T::NAME))?;
        let document: serde_json::Value =
            serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
        (message, document)
    };
    let fields = match &document {
        serde_json::Value::Object(map) => map
            .keys()
            .filter_map(|key| {
                desc.get_field_by_json_name(key)
                    .or_else(|| desc.get_field_by_name(key))
                    .map(|f| f.name().to_string())
            })
            .collect(),
        _ => return Err(format!("not a {}: the document is not a mapping", T::NAME)),
    };
    let message = message
        .transcode_to::<T>()
        .map_err(|e| format!("not a {}: {e}", T::NAME))?;
    Ok((message, fields))
}

/// `message` as a protobuf JSON value (lowerCamelCase names, enums by name,
/// 64-bit integers as strings, default values left out: what grpcurl prints).
pub fn to_json<T: Named>(message: &T) -> serde_json::Value {
    let mut dynamic = DynamicMessage::new(descriptor(T::NAME));
    dynamic
        .transcode_from(message)
        .expect("a generated message transcodes to its own descriptor");
    serde_json::to_value(&dynamic).expect("a message serializes to JSON")
}

/// Prints `value` as pretty JSON (or compact, for one line per value) or
/// YAML on stdout.
pub fn print(value: &serde_json::Value, format: crate::Output) -> Result<(), CliError> {
    let text = match format {
        crate::Output::Yaml => serde_yaml_ng::to_string(value).expect("JSON values are YAML"),
        _ => {
            let mut text = serde_json::to_string_pretty(value).expect("JSON values print");
            text.push('\n');
            text
        }
    };
    crate::show::out(&text)
}

#[cfg(test)]
mod tests {
    use netsync_client::pb;

    use super::*;

    #[test]
    fn a_datastore_reads_from_json_and_yaml_alike() {
        let json = r#"{"name": "r1", "target": {"address": "10.0.0.1:57400", "encoding": "ENCODING_PROTO"},
                       "sync": {"commitInterval": "0.5s"}, "labels": {"env": "lab"}}"#;
        let yaml = "name: r1\ntarget:\n  address: 10.0.0.1:57400\n  encoding: ENCODING_PROTO\nsync:\n  commit_interval: 0.5s\nlabels:\n  env: lab\n";
        let (from_json, json_fields) = parse::<pb::Datastore>(json, true).unwrap();
        let (from_yaml, yaml_fields) = parse::<pb::Datastore>(yaml, false).unwrap();
        assert_eq!(from_json, from_yaml);
        assert_eq!(
            from_json.target.as_ref().unwrap().encoding,
            pb::Encoding::Proto as i32
        );
        assert_eq!(
            from_json
                .sync
                .as_ref()
                .unwrap()
                .commit_interval
                .unwrap()
                .nanos,
            500_000_000
        );
        assert_eq!(json_fields, ["labels", "name", "sync", "target"]);
        assert_eq!(yaml_fields, json_fields);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let error = parse::<pb::Datastore>("name: r1\ntarget:\n  adress: x\n", false).unwrap_err();
        assert!(error.contains("adress"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        let error =
            parse::<pb::Datastore>("{\"name\": \"r1\",\n \"sync\": {\"mode\": \"FAST\"}}", true)
                .unwrap_err();
        assert!(
            error.contains("FAST") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn printing_is_the_canonical_mapping() {
        let datastore = pb::Datastore {
            name: "r1".into(),
            status: Some(pb::DatastoreStatus {
                revision: 7,
                state: pb::SyncState::InSync as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            to_json(&datastore),
            serde_json::json!({"name": "r1", "status": {"revision": "7", "state": "SYNC_STATE_IN_SYNC"}})
        );
    }
}
