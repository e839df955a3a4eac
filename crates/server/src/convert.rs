//! The one place where wire types (`netsync.v1`) become domain types and back.
//! Input conversions validate and name the offending field; output conversions
//! never carry secrets.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netsync_core::Path;
use netsync_core::datastore::{
    self, Credentials, DatastoreSpec, DeviceCaps, Encoding, FieldError, ListKey, RevertSpec,
    Secret, SyncMode, SyncSpec, TargetSpec, TlsSpec,
};
use netsync_core::intent::{Deviation, Intent};
use netsync_core::notification::Decoder;
use netsync_core::running::{Key, Subtree, Value};
use netsync_core::sync::{SyncHandle, SyncState};
use netsync_proto::gnmi::{self, typed_value};
use netsync_proto::netsync::v1 as pb;

use crate::dry_run::DryRun;
use crate::intent_status::{IntentState, IntentStatus};

/// Whether secrets go into the output: only the store may keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Keep passwords and keys (for the store).
    Keep,
    /// Blank them (for every API response).
    Redact,
}

/// Validates a datastore as a client sent it. `field` is the prefix for error
/// messages, e.g. `datastore`.
pub fn datastore_from_proto(ds: pb::Datastore, field: &str) -> Result<DatastoreSpec, FieldError> {
    datastore_from(ds, field, Reading::Strict)
}

/// Reads a datastore as the store kept it, so that a declaration an earlier
/// release accepted stays loadable when validation becomes stricter (or a
/// later release wrote values this one does not know). Where today's
/// validation would refuse a value that has a safe reading, it is read that
/// way:
/// - an unknown encoding or sync mode is the default one;
/// - an `interval` or `commit_interval` that is negative or zero is the
///   default (not the smallest positive value, which would poll or commit
///   without pause), a negative `debounce` is zero ("at once"), nanos of
///   a second or more are clamped to just under a second, and a duration
///   above its bound (24 h for the intervals and `initial_sync_timeout`, 1 h
///   for `debounce`) is the bound; a zero `initial_sync_timeout` is the
///   server's default;
/// - a device cap (`max_message_bytes`, `max_leaves`, `max_leaf_bytes`)
///   above its bound is the bound;
/// - the name, address, TLS settings and credentials are taken as they are: a
///   target that cannot be built from them reports why in the datastore's
///   status, as any unusable target does;
/// - fields this release does not know were already ignored by the decoder.
///
/// Refused, as unusable: no target or an empty address, and `paths` or
/// `list_keys` that do not parse. Reading those any other way would change
/// which leaves running holds, and the next replace commit would rewrite the
/// datastore's history with them.
pub fn datastore_from_stored(ds: pb::Datastore) -> Result<DatastoreSpec, FieldError> {
    datastore_from(ds, "datastore", Reading::Lenient)
}

/// How strictly a datastore is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// As a client sent it: every check of this release.
    Strict,
    /// As the store kept it: see [`datastore_from_stored`].
    Lenient,
}

fn datastore_from(
    ds: pb::Datastore,
    field: &str,
    reading: Reading,
) -> Result<DatastoreSpec, FieldError> {
    if reading == Reading::Strict {
        datastore::validate_name(&ds.name)
            .map_err(|m| FieldError::new(format!("{field}.name"), m))?;
    }
    let target = ds
        .target
        .ok_or_else(|| FieldError::new(format!("{field}.target"), "is required"))?;
    let target = target_from_proto(target, &format!("{field}.target"), reading)?;
    let sync = sync_from_proto(
        ds.sync.unwrap_or_default(),
        &format!("{field}.sync"),
        reading,
    )?;
    let revert = revert_from_proto(
        ds.revert.unwrap_or_default(),
        &format!("{field}.revert"),
        reading,
    )?;
    Ok(DatastoreSpec {
        name: ds.name,
        target,
        sync,
        revert,
    })
}

fn target_from_proto(
    t: pb::Target,
    field: &str,
    reading: Reading,
) -> Result<TargetSpec, FieldError> {
    if t.address.is_empty() {
        return Err(FieldError::new(
            format!("{field}.address"),
            "is required (host:port)",
        ));
    }
    if reading == Reading::Strict {
        datastore::validate_address(&t.address)
            .map_err(|m| FieldError::new(format!("{field}.address"), m))?;
    }
    let encoding = match pb::Encoding::try_from(t.encoding) {
        Ok(pb::Encoding::Unspecified | pb::Encoding::JsonIetf) => Encoding::JsonIetf,
        Ok(pb::Encoding::Json) => Encoding::Json,
        Ok(pb::Encoding::Proto) => Encoding::Proto,
        Ok(pb::Encoding::Ascii) => Encoding::Ascii,
        Err(_) if reading == Reading::Lenient => Encoding::default(),
        Err(_) => return Err(unknown_enum(format!("{field}.encoding"), t.encoding)),
    };
    let tls = t
        .tls
        .map(|tls| {
            if reading == Reading::Strict && tls.cert_pem.is_empty() != tls.key_pem.is_empty() {
                return Err(FieldError::new(
                    format!("{field}.tls"),
                    "cert_pem and key_pem go together: give both for mutual TLS, or neither",
                ));
            }
            Ok(TlsSpec {
                ca_pem: tls.ca_pem,
                cert_pem: tls.cert_pem,
                key_pem: Secret::new(tls.key_pem),
                insecure_skip_verify: tls.insecure_skip_verify,
                server_name: tls.server_name,
            })
        })
        .transpose()?;
    let credentials = t.credentials.map(|c| Credentials {
        username: c.username,
        password: Secret::new(c.password),
    });
    if reading == Reading::Strict
        && credentials
            .as_ref()
            .is_some_and(|c| c.username.is_empty() && !c.password.is_empty())
    {
        return Err(FieldError::new(
            format!("{field}.credentials.username"),
            "is required when a password is given",
        ));
    }
    // Only when written: a datastore stored before this rule keeps syncing
    // as it was created.
    if reading == Reading::Strict
        && tls.is_none()
        && !t.allow_insecure_credentials
        && credentials
            .as_ref()
            .is_some_and(|c| !c.password.expose().is_empty())
    {
        return Err(FieldError::new(
            format!("{field}.credentials"),
            "would be sent in plaintext: set tls, or allow_insecure_credentials for a lab device",
        ));
    }
    Ok(TargetSpec {
        address: t.address,
        tls,
        credentials,
        encoding,
        target_name: t.target_name,
        allow_insecure_credentials: t.allow_insecure_credentials,
    })
}

fn sync_from_proto(
    s: pb::SyncConfig,
    field: &str,
    reading: Reading,
) -> Result<SyncSpec, FieldError> {
    let mode = match pb::SyncMode::try_from(s.mode) {
        Ok(pb::SyncMode::Unspecified | pb::SyncMode::OnChange) => SyncMode::OnChange,
        Ok(pb::SyncMode::Sample) => SyncMode::Sample,
        Ok(pb::SyncMode::Once) => SyncMode::Once,
        Ok(pb::SyncMode::Poll) => SyncMode::Poll,
        Ok(pb::SyncMode::Get) => SyncMode::Get,
        Err(_) if reading == Reading::Lenient => SyncMode::default(),
        Err(_) => return Err(unknown_enum(format!("{field}.mode"), s.mode)),
    };
    let mut paths = Vec::with_capacity(s.paths.len().max(1));
    for (i, text) in s.paths.iter().enumerate() {
        let path = Path::parse(text)
            .map_err(|e| FieldError::new(format!("{field}.paths[{i}]"), e.to_string()))?;
        if reading == Reading::Strict {
            netsync_core::path::check_sync_path(&path)
                .map_err(|e| FieldError::new(format!("{field}.paths[{i}]"), e.to_string()))?;
        }
        paths.push(path);
    }
    if paths.is_empty() {
        paths.push(Path::root());
    }
    let interval = duration_from_proto(
        s.interval,
        &format!("{field}.interval"),
        Positive::Yes,
        SyncSpec::MAX_INTERVAL,
        reading,
    )?
    .unwrap_or(SyncSpec::DEFAULT_INTERVAL);
    let commit_interval = duration_from_proto(
        s.commit_interval,
        &format!("{field}.commit_interval"),
        Positive::Yes,
        SyncSpec::MAX_COMMIT_INTERVAL,
        reading,
    )?
    .unwrap_or(SyncSpec::DEFAULT_COMMIT_INTERVAL);
    let mut list_keys = Vec::with_capacity(s.list_keys.len());
    for (i, text) in s.list_keys.iter().enumerate() {
        let key = ListKey::parse(text)
            .map_err(|m| FieldError::new(format!("{field}.list_keys[{i}]"), m))?;
        list_keys.push(key);
    }
    let initial_sync_timeout = duration_from_proto(
        s.initial_sync_timeout,
        &format!("{field}.initial_sync_timeout"),
        Positive::Yes,
        SyncSpec::MAX_INITIAL_SYNC_TIMEOUT,
        reading,
    )?;
    let cap = |value: u64, name: &str, max: u64| match reading {
        Reading::Lenient => Ok(value.min(max)),
        Reading::Strict if value > max => Err(FieldError::new(
            format!("{field}.{name}"),
            format!(
                "at most {max} ({}); 0 means the server's default",
                bytes_or_count(name, max)
            ),
        )),
        Reading::Strict => Ok(value),
    };
    let caps = DeviceCaps {
        max_message_bytes: cap(
            s.max_message_bytes,
            "max_message_bytes",
            DeviceCaps::MAX_MESSAGE_BYTES,
        )?,
        max_leaves: cap(s.max_leaves, "max_leaves", DeviceCaps::MAX_LEAVES)?,
        max_leaf_bytes: cap(
            s.max_leaf_bytes,
            "max_leaf_bytes",
            DeviceCaps::MAX_LEAF_BYTES,
        )?,
    };
    Ok(SyncSpec {
        mode,
        paths,
        interval,
        commit_interval,
        list_keys,
        initial_sync_timeout,
        caps,
    })
}

/// A cap's bound in words: bytes in binary units, counts with separators.
fn bytes_or_count(name: &str, value: u64) -> String {
    if name.ends_with("_bytes") {
        netsync_core::sync::human_bytes(value)
    } else {
        netsync_core::sync::human_count(value)
    }
}

fn revert_from_proto(
    r: pb::RevertConfig,
    field: &str,
    reading: Reading,
) -> Result<RevertSpec, FieldError> {
    let debounce = duration_from_proto(
        r.debounce,
        &format!("{field}.debounce"),
        Positive::No,
        RevertSpec::MAX_DEBOUNCE,
        reading,
    )?
    .unwrap_or(RevertSpec::DEFAULT_DEBOUNCE);
    Ok(RevertSpec {
        enabled: r.enabled,
        debounce,
    })
}

/// Whether a duration must be above zero.
#[derive(PartialEq)]
enum Positive {
    Yes,
    No,
}

/// Converts an optional protobuf duration of at most `max`; `None` when
/// absent (use the default). Read leniently, a value out of range is clamped
/// into it, or is the default where zero is not allowed (see
/// [`datastore_from_stored`]).
fn duration_from_proto(
    d: Option<prost_types::Duration>,
    field: &str,
    positive: Positive,
    max: Duration,
    reading: Reading,
) -> Result<Option<Duration>, FieldError> {
    let Some(d) = d else { return Ok(None) };
    if reading == Reading::Lenient {
        let value = if d.seconds < 0 || d.nanos < 0 {
            Duration::ZERO
        } else {
            Duration::new(d.seconds as u64, d.nanos.min(999_999_999) as u32)
        };
        let value = value.min(max);
        return Ok((positive == Positive::No || !value.is_zero()).then_some(value));
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(field, "nanos must be below 1,000,000,000"));
    }
    let value = Duration::new(d.seconds as u64, d.nanos as u32);
    if positive == Positive::Yes && value.is_zero() {
        return Err(FieldError::new(field, "must be above zero"));
    }
    if value > max {
        return Err(FieldError::new(field, format!("at most {}", human(max))));
    }
    Ok(Some(value))
}

/// A bound as people write it: `24h`, `1h`, `90s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        _ if d.subsec_nanos() != 0 => format!("{d:?}"),
        _ if secs.is_multiple_of(3600) => format!("{}h", secs / 3600),
        _ if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}

fn unknown_enum(field: String, value: i32) -> FieldError {
    FieldError::new(field, format!("unknown value {value}"))
}

/// The wire form of a datastore's declared parts (no status, no create time,
/// no uid: the store keeps the uid in a column of its own).
pub fn datastore_to_proto(spec: &DatastoreSpec, secrets: Secrets) -> pb::Datastore {
    let secret = |s: &Secret| match secrets {
        Secrets::Keep => s.expose().to_string(),
        Secrets::Redact => String::new(),
    };
    let t = &spec.target;
    pb::Datastore {
        name: spec.name.clone(),
        target: Some(pb::Target {
            address: t.address.clone(),
            tls: t.tls.as_ref().map(|tls| pb::TlsConfig {
                ca_pem: tls.ca_pem.clone(),
                cert_pem: tls.cert_pem.clone(),
                key_pem: secret(&tls.key_pem),
                insecure_skip_verify: tls.insecure_skip_verify,
                server_name: tls.server_name.clone(),
            }),
            credentials: t.credentials.as_ref().map(|c| pb::Credentials {
                username: c.username.clone(),
                password: secret(&c.password),
            }),
            allow_insecure_credentials: t.allow_insecure_credentials,
            encoding: match t.encoding {
                Encoding::JsonIetf => pb::Encoding::JsonIetf,
                Encoding::Json => pb::Encoding::Json,
                Encoding::Proto => pb::Encoding::Proto,
                Encoding::Ascii => pb::Encoding::Ascii,
            } as i32,
            target_name: t.target_name.clone(),
        }),
        sync: Some(pb::SyncConfig {
            mode: match spec.sync.mode {
                SyncMode::OnChange => pb::SyncMode::OnChange,
                SyncMode::Sample => pb::SyncMode::Sample,
                SyncMode::Once => pb::SyncMode::Once,
                SyncMode::Poll => pb::SyncMode::Poll,
                SyncMode::Get => pb::SyncMode::Get,
            } as i32,
            paths: spec.sync.paths.iter().map(ToString::to_string).collect(),
            interval: Some(duration_to_proto(spec.sync.interval)),
            commit_interval: Some(duration_to_proto(spec.sync.commit_interval)),
            list_keys: spec
                .sync
                .list_keys
                .iter()
                .map(ToString::to_string)
                .collect(),
            initial_sync_timeout: spec.sync.initial_sync_timeout.map(duration_to_proto),
            max_message_bytes: spec.sync.caps.max_message_bytes,
            max_leaves: spec.sync.caps.max_leaves,
            max_leaf_bytes: spec.sync.caps.max_leaf_bytes,
        }),
        revert: Some(pb::RevertConfig {
            enabled: spec.revert.enabled,
            debounce: Some(duration_to_proto(spec.revert.debounce)),
        }),
        status: None,
        create_time: None,
        uid: String::new(),
        labels: Default::default(),
    }
}

/// Reads an intent as the store kept it (or as a client sent it, before the
/// datastore is known); `field` prefixes error messages. Checks what an intent
/// needs on its own: names, paths, values given, no path twice, no delete
/// over the intent's own leaves. [`intent_for_datastore`] checks more.
pub fn intent_from_proto(intent: pb::Intent, field: &str) -> Result<Intent, FieldError> {
    intent_from(intent, field, None)
}

/// Validates an intent as a client sent it for the datastore `spec`; `field`
/// prefixes error messages. Beyond [`intent_from_proto`]:
/// - a JSON object in a leaf value (`json_val`, `json_ietf_val`), or an
///   array of list entries, stands for the leaves below it: it is flattened
///   with the datastore's `list_keys` exactly as the device's JSON is, so
///   that the intent claims the leaves running will hold. What cannot be
///   flattened (a list whose keys are unknown, an entry without its key, an
///   object with no leaves, `null`) or does not parse is refused;
/// - every leaf and every delete lies within the datastore's `sync.paths`:
///   running could never confirm one outside them, and its job would fail.
pub fn intent_for_datastore(
    intent: pb::Intent,
    field: &str,
    spec: &DatastoreSpec,
) -> Result<Intent, FieldError> {
    intent_from(intent, field, Some(spec))
}

fn intent_from(
    intent: pb::Intent,
    field: &str,
    spec: Option<&DatastoreSpec>,
) -> Result<Intent, FieldError> {
    datastore::validate_name(&intent.name)
        .map_err(|m| FieldError::new(format!("{field}.name"), m))?;
    let decoder = spec.map(|spec| Decoder::new(&spec.sync.list_keys));
    let outside = |spec: &DatastoreSpec, what: &str| {
        let synced: Vec<String> = spec.sync.paths.iter().map(ToString::to_string).collect();
        format!(
            "{what} is outside the datastore's sync.paths [{}]; running could never confirm it",
            synced.join(", ")
        )
    };
    let mut updates = BTreeMap::new();
    for (i, leaf) in intent.updates.into_iter().enumerate() {
        let path_field = format!("{field}.updates[{i}].path");
        let value_field = format!("{field}.updates[{i}].value");
        let path = Path::parse(&leaf.path)
            .map_err(|e| FieldError::new(path_field.clone(), e.to_string()))?;
        if path.is_root() {
            return Err(FieldError::new(
                path_field,
                "must name a leaf, not the root",
            ));
        }
        let value = leaf
            .value
            .filter(|v| v.value.is_some())
            .ok_or_else(|| FieldError::new(value_field.clone(), "is required"))?;
        let leaves = match (spec, &decoder) {
            (Some(spec), Some(decoder)) => {
                let IntentLeaves { leaves, flattened } = intent_leaves(decoder, &path, value)
                    .map_err(|m| FieldError::new(value_field.clone(), m))?;
                for (key, _) in &leaves {
                    let covered = Path::parse(key).is_ok_and(|p| spec.sync.covers(&p));
                    if !covered {
                        return Err(if flattened {
                            FieldError::new(
                                value_field.clone(),
                                outside(spec, &format!("leaf {key} of this JSON value")),
                            )
                        } else {
                            FieldError::new(path_field.clone(), outside(spec, key))
                        });
                    }
                }
                leaves
            }
            _ => vec![(path.to_string().into(), value)],
        };
        for (key, value) in leaves {
            if updates.insert(key.clone(), value).is_some() {
                return Err(FieldError::new(
                    path_field.clone(),
                    format!("{key} is given more than once"),
                ));
            }
        }
    }
    let mut deletes = Vec::with_capacity(intent.deletes.len());
    for (i, text) in intent.deletes.iter().enumerate() {
        let path = Path::parse(text)
            .map_err(|e| FieldError::new(format!("{field}.deletes[{i}]"), e.to_string()))?;
        if path.is_root() {
            return Err(FieldError::new(
                format!("{field}.deletes[{i}]"),
                "the root cannot be required absent",
            ));
        }
        if let Some(spec) = spec
            && !spec.sync.covers(&path)
        {
            return Err(FieldError::new(
                format!("{field}.deletes[{i}]"),
                outside(spec, &path.to_string()),
            ));
        }
        let subtree = Subtree::new(&path);
        if let Some(clash) = updates.keys().find(|k| subtree.contains(k)) {
            return Err(FieldError::new(
                format!("{field}.deletes[{i}]"),
                format!(
                    "{} must be absent, but the same intent sets {clash}",
                    subtree.path()
                ),
            ));
        }
        deletes.push(subtree);
    }
    Ok(Intent {
        name: intent.name,
        priority: intent.priority,
        updates,
        deletes,
        non_revertive: intent.non_revertive,
        revision: intent.revision,
    })
}

/// The leaves one intent update stands for.
struct IntentLeaves {
    leaves: Vec<(Key, Value)>,
    /// Whether they came from flattening a JSON value.
    flattened: bool,
}

/// The leaves one intent update stands for, or why it cannot be set.
///
/// A JSON scalar or leaf-list stays one leaf with the value as given (so
/// GetIntent returns what was written); a JSON object or array of list
/// entries is flattened as a device's JSON is.
fn intent_leaves(decoder: &Decoder, path: &Path, value: Value) -> Result<IntentLeaves, String> {
    let as_given = |value| IntentLeaves {
        leaves: vec![(path.to_string().into(), value)],
        flattened: false,
    };
    let bytes = match &value.value {
        Some(typed_value::Value::JsonVal(b) | typed_value::Value::JsonIetfVal(b)) => b,
        _ => return Ok(as_given(value)),
    };
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let null = "null is not a value; to require a leaf absent, list it in deletes";
    let entries = |items: &[serde_json::Value]| {
        !items.is_empty() && items.iter().all(serde_json::Value::is_object)
    };
    match &json {
        serde_json::Value::Null => return Err(null.into()),
        serde_json::Value::Object(_) => {}
        serde_json::Value::Array(items) if entries(items) => {}
        _ => return Ok(as_given(value)),
    }
    let leaves = decoder.leaves(path, &value).map_err(|e| e.to_string())?;
    if leaves.is_empty() {
        return Err("holds an object without leaves; there is nothing to set".into());
    }
    for (key, leaf) in &leaves {
        let leaf_json = match &leaf.value {
            Some(typed_value::Value::JsonVal(b) | typed_value::Value::JsonIetfVal(b)) => {
                serde_json::from_slice::<serde_json::Value>(b).ok()
            }
            _ => None,
        };
        match leaf_json {
            Some(serde_json::Value::Null) => return Err(format!("{key}: {null}")),
            Some(serde_json::Value::Array(items)) if entries(&items) => {
                return Err(format!(
                    "{key} holds list entries that cannot be told apart: name the list's keys \
                     in the datastore's sync.list_keys (as {key}[key]) and give every entry \
                     its keys, or set the entries' leaves one by one"
                ));
            }
            _ => {}
        }
    }
    Ok(IntentLeaves {
        leaves,
        flattened: true,
    })
}

/// The wire form of one leaf.
pub fn leaf_to_proto(key: &Key, value: &Value) -> pb::Leaf {
    pb::Leaf {
        path: key.to_string(),
        value: Some(value.clone()),
        owner: String::new(),
    }
}

/// The wire form of an intent with its status, as the API answers it.
pub fn intent_with_status(intent: &Intent, status: &IntentStatus) -> pb::Intent {
    pb::Intent {
        status: Some(intent_status_to_proto(status)),
        ..intent_to_proto(intent)
    }
}

/// A stored intent through the validation and flattening SetIntent applies
/// today: the intent to sync, or why it cannot be used, in the words its
/// FAILING status shows (see `Engine::start`). The one check, whoever shows
/// the intent: the owner at load, another replica reading it from the
/// database (`status_record::stored_intents`).
pub fn check_stored_intent(spec: &DatastoreSpec, proto: pb::Intent) -> Result<Intent, String> {
    intent_for_datastore(proto, "intent", spec).map_err(|e| {
        format!(
            "the stored intent cannot be used: {} {}; it is not sent to the device until \
             SetIntent replaces it (DeleteIntent removes it)",
            e.field, e.message
        )
    })
}

/// A stored intent that today's validation refuses, as GetIntent shows it:
/// as stored, with `status`.
pub fn unusable_intent_view(proto: pb::Intent, status: &IntentStatus) -> pb::Intent {
    pb::Intent {
        status: Some(intent_status_to_proto(status)),
        ..proto
    }
}

/// A stored intent as GetIntent shows it, whoever answers: through today's
/// validation ([`check_stored_intent`]) with `status` (PENDING if none), or,
/// if validation refuses it, as stored and FAILING with why, as the owner
/// holds it aside.
pub fn stored_intent_view(
    spec: &DatastoreSpec,
    proto: pb::Intent,
    status: Option<IntentStatus>,
) -> pb::Intent {
    match check_stored_intent(spec, proto.clone()) {
        Ok(intent) => intent_with_status(&intent, &status.unwrap_or_else(IntentStatus::pending)),
        Err(error) => unusable_intent_view(proto, &IntentStatus::unusable(error)),
    }
}

/// The wire form of an intent's status.
pub fn intent_status_to_proto(status: &IntentStatus) -> pb::IntentStatus {
    pb::IntentStatus {
        state: match status.state {
            IntentState::Pending => pb::IntentState::Pending,
            IntentState::Applied => pb::IntentState::Applied,
            IntentState::Failing => pb::IntentState::Failing,
        } as i32,
        applied_revision: status.applied_revision,
        attempts: status.attempts,
        last_error: status.last_error.clone(),
    }
}

/// The wire form of an intent as written (no status: the form it is stored
/// in).
pub fn intent_to_proto(intent: &Intent) -> pb::Intent {
    pb::Intent {
        name: intent.name.clone(),
        priority: intent.priority,
        updates: intent
            .updates
            .iter()
            .map(|(k, v)| leaf_to_proto(k, v))
            .collect(),
        deletes: intent
            .deletes
            .iter()
            .map(|d| d.path().to_string())
            .collect(),
        non_revertive: intent.non_revertive,
        revision: intent.revision,
        status: None,
        plan: None,
    }
}

/// The wire form of the dry run of an intent write.
pub fn plan_to_proto(plan: &DryRun) -> pb::IntentPlan {
    pb::IntentPlan {
        revision: plan.revision,
        set: plan.set.clone(),
        clears: plan.clears.iter().map(deviation_to_proto).collect(),
        remaining: plan.remaining.iter().map(deviation_to_proto).collect(),
    }
}

/// The wire form of a deviation.
pub fn deviation_to_proto(d: &Deviation) -> pb::Deviation {
    pb::Deviation {
        path: d.path.to_string(),
        intent: d.intent.clone(),
        expected: d.expected.clone(),
        actual: d.actual.clone(),
    }
}

/// A datastore's status as its sync has it now (`Datastore.status`).
pub fn status_to_proto(sync: &SyncHandle) -> pb::DatastoreStatus {
    let status = sync.status();
    let snapshot = sync.snapshot();
    let stats = sync.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut last_error = status.last_error;
    if status.backpressure {
        last_error = format!("ingest paused: too many uncommitted changes; {last_error}");
    }
    pb::DatastoreStatus {
        state: state_to_proto(status.state) as i32,
        revision: snapshot.revision,
        last_commit_time: snapshot.time.map(timestamp_to_proto),
        last_error,
        leaves: snapshot.running.len() as u64,
        stats: Some(pb::SyncStats {
            notifications_received: get(&stats.notifications),
            updates_received: get(&stats.updates),
            deletes_received: get(&stats.deletes),
            commits: get(&stats.commits),
            resyncs: get(&stats.resyncs),
            reconnects: get(&stats.reconnects),
            pending: status.pending,
            // `dropped` (deprecated) stays 0: nothing counts lost changes,
            // the engine resyncs instead (counted in `resyncs`).
            ..Default::default()
        }),
    }
}

/// A sync state on the wire.
pub fn state_to_proto(state: SyncState) -> pb::SyncState {
    match state {
        SyncState::Connecting => pb::SyncState::Connecting,
        SyncState::InitialSync => pb::SyncState::InitialSync,
        SyncState::InSync => pb::SyncState::InSync,
        SyncState::Disconnected => pb::SyncState::Disconnected,
        SyncState::Stopped => pb::SyncState::Stopped,
    }
}

/// A std duration as a protobuf duration.
pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A wall-clock time as a protobuf timestamp.
pub fn timestamp_to_proto(t: SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos() as i32,
    }
}

/// How the values of a response are written (`value_format` of a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueFormat {
    /// As the device sent them.
    #[default]
    Device,
    /// JSON scalars as typed scalars ([`netsync_core::value::to_scalar`]).
    Scalar,
}

impl ValueFormat {
    /// The format asked in request field `field` (`value_format`).
    pub fn from_proto(field: &str, value: i32) -> Result<Self, crate::error::Error> {
        match pb::ValueFormat::try_from(value) {
            Ok(pb::ValueFormat::Unspecified | pb::ValueFormat::Device) => Ok(Self::Device),
            Ok(pb::ValueFormat::Scalar) => Ok(Self::Scalar),
            Err(_) => Err(crate::error::Error::invalid(
                field,
                format!("unknown value {value}"),
            )),
        }
    }

    /// `value` written in this format.
    pub fn value(self, value: gnmi::TypedValue) -> gnmi::TypedValue {
        match self {
            Self::Device => value,
            Self::Scalar => netsync_core::value::to_scalar(value),
        }
    }

    /// `leaf` with its value written in this format.
    pub fn leaf(self, mut leaf: pb::Leaf) -> pb::Leaf {
        if self == Self::Scalar {
            leaf.value = leaf.value.map(|v| self.value(v));
        }
        leaf
    }

    /// `deviation` with its values written in this format.
    pub fn deviation(self, mut deviation: pb::Deviation) -> pb::Deviation {
        if self == Self::Scalar {
            deviation.expected = deviation.expected.map(|v| self.value(v));
            deviation.actual = deviation.actual.map(|v| self.value(v));
        }
        deviation
    }

    /// An encoded `SyncEvent` with the values of its leaves (a commit's
    /// updates, a revert's) written in this format: the same bytes for
    /// DEVICE; for SCALAR decoded, converted and encoded again.
    pub fn sync_event(self, encoded: &bytes::Bytes) -> bytes::Bytes {
        use prost::Message as _;
        if self == Self::Device {
            return encoded.clone();
        }
        let Ok(mut event) = pb::SyncEvent::decode(encoded.clone()) else {
            return encoded.clone();
        };
        let leaves = match &mut event.event {
            Some(pb::sync_event::Event::Commit(commit)) => &mut commit.updates,
            Some(pb::sync_event::Event::Revert(revert)) => &mut revert.updates,
            _ => return encoded.clone(),
        };
        if leaves.is_empty() {
            return encoded.clone();
        }
        for leaf in leaves.iter_mut() {
            leaf.value = leaf.value.take().map(|v| self.value(v));
        }
        event.encode_to_vec().into()
    }
}

/// Validates a datastore's labels (see [`crate::selector`]); errors name
/// `{field}.labels[key]`.
pub fn labels_from_proto(
    labels: &std::collections::HashMap<String, String>,
    field: &str,
) -> Result<BTreeMap<String, String>, FieldError> {
    let labels: BTreeMap<String, String> = labels.clone().into_iter().collect();
    for (key, value) in &labels {
        crate::selector::validate_key(key)
            .and_then(|()| crate::selector::validate_value(value))
            .map_err(|m| FieldError::new(format!("{field}.labels[{key}]"), m))?;
    }
    Ok(labels)
}

/// The BASIC view of a datastore (AIP-157): no credentials and no PEMs,
/// which lists leave out unless asked for the FULL view.
pub fn basic_view(ds: &mut pb::Datastore) {
    if let Some(target) = ds.target.as_mut() {
        target.credentials = None;
        if let Some(tls) = target.tls.as_mut() {
            tls.ca_pem.clear();
            tls.cert_pem.clear();
            tls.key_pem.clear();
        }
    }
}

/// The top-level fields UpdateDatastore may change, which `*` replaces.
const UPDATABLE: [&str; 4] = ["target", "sync", "revert", "labels"];

/// Applies an UpdateDatastore (AIP-134) to `current` (the stored form:
/// secrets kept, labels set): copies from `update` each field `paths`
/// names. No paths: every top-level field `update` gives; `*`: every
/// updatable field. An empty password or key_pem keeps the current one (reads
/// return them blank, so a read-modify-write must not erase them). Unknown
/// and output-only paths are errors naming `update_mask`.
pub fn apply_update_mask(
    mut current: pb::Datastore,
    update: pb::Datastore,
    paths: &[String],
) -> Result<pb::Datastore, FieldError> {
    let paths: Vec<&str> = if paths.is_empty() {
        let given = [
            update.target.is_some(),
            update.sync.is_some(),
            update.revert.is_some(),
            !update.labels.is_empty(),
        ];
        UPDATABLE
            .iter()
            .zip(given)
            .filter(|(_, given)| *given)
            .map(|(path, _)| *path)
            .collect()
    } else if paths.iter().any(|p| p == "*") {
        if paths.len() > 1 {
            return Err(FieldError::new(
                "update_mask",
                "\"*\" replaces every field and cannot be combined with other paths",
            ));
        }
        UPDATABLE.to_vec()
    } else {
        paths.iter().map(String::as_str).collect()
    };
    let old_password = current
        .target
        .as_ref()
        .and_then(|t| t.credentials.as_ref())
        .map(|c| c.password.clone());
    let old_key = current
        .target
        .as_ref()
        .and_then(|t| t.tls.as_ref())
        .map(|t| t.key_pem.clone());
    for path in paths {
        if !set_path(&mut current, &update, path) {
            let why = match path {
                "name" => "cannot be changed: it names the datastore".to_string(),
                p if ["status", "create_time"]
                    .iter()
                    .any(|o| p == *o || p.starts_with(&format!("{o}."))) =>
                {
                    format!("{p:?} is output only")
                }
                p => format!("unknown path {p:?}"),
            };
            return Err(FieldError::new("update_mask", why));
        }
    }
    if let Some(target) = current.target.as_mut() {
        if let (Some(c), Some(old)) = (target.credentials.as_mut(), old_password)
            && c.password.is_empty()
        {
            c.password = old;
        }
        if let (Some(t), Some(old)) = (target.tls.as_mut(), old_key)
            && t.key_pem.is_empty()
        {
            t.key_pem = old;
        }
    }
    Ok(current)
}

/// Copies the fields named in `names` from `$src` to `$dst` if `$name` is
/// one of them; evaluates to whether it was.
macro_rules! copy_named {
    ($dst:expr, $src:expr, $name:expr, [$($f:ident),* $(,)?]) => {
        match $name {
            $(stringify!($f) => { $dst.$f = $src.$f.clone(); true })*
            _ => false,
        }
    };
}

/// Copies one mask path from `src` to `dst`; false if the path is not an
/// updatable field.
fn set_path(dst: &mut pb::Datastore, src: &pb::Datastore, path: &str) -> bool {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    match (head, rest) {
        ("target" | "sync" | "revert" | "labels", None) => {
            copy_named!(dst, src, head, [target, sync, revert, labels])
        }
        ("labels", Some(key)) => {
            match src.labels.get(key) {
                Some(value) => dst.labels.insert(key.to_string(), value.clone()),
                None => dst.labels.remove(key),
            };
            true
        }
        ("target", Some(field)) => {
            let from = src.target.clone().unwrap_or_default();
            let to = dst.target.get_or_insert_default();
            match field.split_once('.') {
                Some(("tls", f)) => {
                    let from = from.tls.unwrap_or_default();
                    let to = to.tls.get_or_insert_default();
                    copy_named!(
                        to,
                        from,
                        f,
                        [ca_pem, cert_pem, key_pem, insecure_skip_verify, server_name]
                    )
                }
                Some(("credentials", f)) => {
                    let from = from.credentials.unwrap_or_default();
                    let to = to.credentials.get_or_insert_default();
                    copy_named!(to, from, f, [username, password])
                }
                Some(_) => false,
                None => copy_named!(
                    to,
                    from,
                    field,
                    [
                        address,
                        tls,
                        credentials,
                        encoding,
                        target_name,
                        allow_insecure_credentials,
                    ]
                ),
            }
        }
        ("sync", Some(field)) => {
            let from = src.sync.clone().unwrap_or_default();
            let to = dst.sync.get_or_insert_default();
            copy_named!(
                to,
                from,
                field,
                [
                    mode,
                    paths,
                    interval,
                    commit_interval,
                    list_keys,
                    initial_sync_timeout,
                    max_message_bytes,
                    max_leaves,
                    max_leaf_bytes,
                ]
            )
        }
        ("revert", Some(field)) => {
            let from = src.revert.unwrap_or_default();
            let to = dst.revert.get_or_insert_default();
            copy_named!(to, from, field, [enabled, debounce])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_format_converts_event_leaves_and_leaves_device_bytes_alone() {
        use prost::Message as _;
        let ietf = |json: &str| gnmi::TypedValue {
            value: Some(typed_value::Value::JsonIetfVal(json.as_bytes().to_vec())),
        };
        let leaf = |value| pb::Leaf {
            path: "/a".into(),
            value: Some(value),
            owner: String::new(),
        };
        let commit = pb::SyncEvent {
            datastore: "r1".into(),
            uid: String::new(),
            revision: 3,
            time: None,
            event: Some(pb::sync_event::Event::Commit(pb::Commit {
                updates: vec![leaf(ietf("\"up\"")), leaf(ietf("[1]"))],
                deletes: vec!["/b".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        let bytes = bytes::Bytes::from(commit.encode_to_vec());
        let device = ValueFormat::Device.sync_event(&bytes);
        assert_eq!(device.as_ptr(), bytes.as_ptr(), "DEVICE shares the bytes");
        let scalar = pb::SyncEvent::decode(ValueFormat::Scalar.sync_event(&bytes)).unwrap();
        let Some(pb::sync_event::Event::Commit(c)) = scalar.event else {
            panic!("{scalar:?}")
        };
        assert_eq!(
            c.updates[0].value,
            Some(gnmi::TypedValue {
                value: Some(typed_value::Value::StringVal("up".into()))
            })
        );
        assert_eq!(c.updates[1].value, Some(ietf("[1]")), "a list stays JSON");
        assert_eq!((c.deletes, scalar.revision), (vec!["/b".to_string()], 3));

        let revert = pb::SyncEvent {
            event: Some(pb::sync_event::Event::Revert(pb::Revert {
                updates: vec![leaf(ietf("true"))],
                ..Default::default()
            })),
            ..commit
        };
        let scalar = ValueFormat::Scalar.sync_event(&revert.encode_to_vec().into());
        let Some(pb::sync_event::Event::Revert(r)) = pb::SyncEvent::decode(scalar).unwrap().event
        else {
            panic!("a revert")
        };
        assert_eq!(
            r.updates[0].value,
            Some(gnmi::TypedValue {
                value: Some(typed_value::Value::BoolVal(true))
            })
        );
        assert!(ValueFormat::from_proto("value_format", 9).is_err());
        assert_eq!(
            ValueFormat::from_proto("value_format", 0).unwrap(),
            ValueFormat::Device
        );
    }

    #[test]
    fn update_masks_copy_what_they_name_and_keep_blank_secrets() {
        let current = valid();
        let mut update = pb::Datastore {
            name: "r1".into(),
            target: Some(pb::Target {
                address: "10.0.0.2:57400".into(),
                credentials: Some(pb::Credentials {
                    username: "ops".into(),
                    password: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        update.labels.insert("env".into(), "lab".into());
        let paths = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        let out = apply_update_mask(current.clone(), update.clone(), &paths(&["target.address"]))
            .unwrap();
        let t = out.target.as_ref().unwrap();
        assert_eq!(t.address, "10.0.0.2:57400");
        assert_eq!(t.credentials.as_ref().unwrap().username, "admin");
        assert!(out.labels.is_empty());

        let out = apply_update_mask(
            current.clone(),
            update.clone(),
            &paths(&["target.credentials.username"]),
        )
        .unwrap();
        let c = out.target.unwrap().credentials.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ops", "s3cret")
        );

        // No mask: every top-level field given, whole; the sync settings not
        // given stay.
        let out = apply_update_mask(current.clone(), update.clone(), &[]).unwrap();
        let t = out.target.as_ref().unwrap();
        assert_eq!(t.credentials.as_ref().unwrap().password, "s3cret");
        assert!(!t.allow_insecure_credentials, "target replaced whole");
        assert_eq!(out.sync, current.sync);
        assert_eq!(out.labels.get("env").map(String::as_str), Some("lab"));

        // `*`: every updatable field, so absent sync is the default.
        let out = apply_update_mask(current.clone(), update.clone(), &paths(&["*"])).unwrap();
        assert_eq!(out.sync, None);

        for bad in [
            &["nope"][..],
            &["status"],
            &["name"],
            &["*", "labels"],
            &["target.tls.x"],
        ] {
            let e = apply_update_mask(current.clone(), update.clone(), &paths(bad)).unwrap_err();
            assert_eq!(e.field, "update_mask", "{bad:?}");
        }
    }

    fn valid() -> pb::Datastore {
        pb::Datastore {
            name: "r1".into(),
            target: Some(pb::Target {
                address: "127.0.0.1:57400".into(),
                credentials: Some(pb::Credentials {
                    username: "admin".into(),
                    password: "s3cret".into(),
                }),
                allow_insecure_credentials: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let spec = datastore_from_proto(valid(), "datastore").unwrap();
        assert_eq!(spec.sync.mode, SyncMode::OnChange);
        assert_eq!(spec.sync.paths, vec![Path::root()]);
        assert_eq!(spec.sync.interval, Duration::from_secs(30));
        assert_eq!(spec.sync.commit_interval, Duration::from_secs(1));
        assert_eq!(spec.revert.debounce, Duration::from_secs(1));
        assert_eq!(spec.target.encoding, Encoding::JsonIetf);
    }

    #[test]
    fn round_trip_keeps_or_redacts_secrets() {
        let spec = datastore_from_proto(valid(), "datastore").unwrap();
        let kept = datastore_to_proto(&spec, Secrets::Keep);
        assert_eq!(
            kept.target
                .as_ref()
                .unwrap()
                .credentials
                .as_ref()
                .unwrap()
                .password,
            "s3cret"
        );
        assert_eq!(datastore_from_proto(kept, "x").unwrap(), spec);
        let redacted = datastore_to_proto(&spec, Secrets::Redact);
        assert_eq!(redacted.target.unwrap().credentials.unwrap().password, "");
    }

    #[test]
    fn errors_name_the_field() {
        type Mutation = fn(&mut pb::Datastore);
        let cases: Vec<(Mutation, &str)> = vec![
            (|d| d.name = "Bad Name".into(), "datastore.name"),
            (|d| d.target = None, "datastore.target"),
            (
                |d| d.target.as_mut().unwrap().address = "nohost".into(),
                "datastore.target.address",
            ),
            (
                |d| d.target.as_mut().unwrap().encoding = 42,
                "datastore.target.encoding",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        mode: 9,
                        ..Default::default()
                    })
                },
                "datastore.sync.mode",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        paths: vec!["/ok".into(), "/a[b".into()],
                        ..Default::default()
                    })
                },
                "datastore.sync.paths[1]",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        commit_interval: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                },
                "datastore.sync.commit_interval",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        interval: Some(prost_types::Duration {
                            seconds: -1,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                },
                "datastore.sync.interval",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        list_keys: vec!["/interfaces/interface".into()],
                        ..Default::default()
                    })
                },
                "datastore.sync.list_keys[0]",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        initial_sync_timeout: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                },
                "datastore.sync.initial_sync_timeout",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        max_message_bytes: DeviceCaps::MAX_MESSAGE_BYTES + 1,
                        ..Default::default()
                    })
                },
                "datastore.sync.max_message_bytes",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        max_leaves: u64::MAX,
                        ..Default::default()
                    })
                },
                "datastore.sync.max_leaves",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        max_leaf_bytes: DeviceCaps::MAX_LEAF_BYTES + 1,
                        ..Default::default()
                    })
                },
                "datastore.sync.max_leaf_bytes",
            ),
        ];
        for (mutate, field) in cases {
            let mut ds = valid();
            mutate(&mut ds);
            let err = datastore_from_proto(ds, "datastore").unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn durations_have_upper_bounds() {
        let seconds = |seconds, nanos| prost_types::Duration { seconds, nanos };
        type Set = fn(&mut pb::Datastore, prost_types::Duration);
        type Get = fn(&DatastoreSpec) -> Duration;
        let cases: [(Set, Get, &str, i64, &str); 4] = [
            (
                |d, v| {
                    d.sync
                        .get_or_insert_with(Default::default)
                        .initial_sync_timeout = Some(v)
                },
                |s| s.sync.initial_sync_timeout.unwrap(),
                "datastore.sync.initial_sync_timeout",
                24 * 3600,
                "at most 24h",
            ),
            (
                |d, v| d.sync.get_or_insert_with(Default::default).interval = Some(v),
                |s| s.sync.interval,
                "datastore.sync.interval",
                24 * 3600,
                "at most 24h",
            ),
            (
                |d, v| d.sync.get_or_insert_with(Default::default).commit_interval = Some(v),
                |s| s.sync.commit_interval,
                "datastore.sync.commit_interval",
                24 * 3600,
                "at most 24h",
            ),
            (
                |d, v| d.revert.get_or_insert_with(Default::default).debounce = Some(v),
                |s| s.revert.debounce,
                "datastore.revert.debounce",
                3600,
                "at most 1h",
            ),
        ];
        let ten_thousand_years = 10_000 * 365 * 24 * 3600;
        for (set, get, field, bound, message) in cases {
            for too_long in [seconds(ten_thousand_years, 0), seconds(bound, 1)] {
                let mut ds = valid();
                set(&mut ds, too_long);
                let err = datastore_from_proto(ds.clone(), "datastore").unwrap_err();
                assert_eq!((err.field.as_str(), err.message.as_str()), (field, message));
                // Stored by an earlier release: read as the bound.
                let stored = datastore_from_stored(ds).unwrap();
                assert_eq!(get(&stored), Duration::from_secs(bound as u64), "{field}");
            }
            let mut ds = valid();
            set(&mut ds, seconds(bound, 0));
            let spec = datastore_from_proto(ds, "datastore").unwrap();
            assert_eq!(get(&spec), Duration::from_secs(bound as u64), "{field}");
        }
    }

    #[test]
    fn caps_round_trip_and_their_bounds_are_told() {
        let mut ds = valid();
        ds.sync = Some(pb::SyncConfig {
            initial_sync_timeout: Some(prost_types::Duration {
                seconds: 90,
                nanos: 0,
            }),
            max_message_bytes: 1 << 20,
            max_leaves: 1000,
            max_leaf_bytes: 0,
            ..Default::default()
        });
        let spec = datastore_from_proto(ds, "datastore").unwrap();
        assert_eq!(
            spec.sync.initial_sync_timeout,
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            spec.sync.caps,
            DeviceCaps {
                max_message_bytes: 1 << 20,
                max_leaves: 1000,
                max_leaf_bytes: 0,
            }
        );
        let back = datastore_to_proto(&spec, Secrets::Keep);
        assert_eq!(datastore_from_proto(back, "datastore").unwrap(), spec);
        // Unset: the server's defaults, and written back unset.
        let spec = datastore_from_proto(valid(), "datastore").unwrap();
        assert_eq!(spec.sync.initial_sync_timeout, None);
        assert_eq!(spec.sync.caps, DeviceCaps::default());
        let back = datastore_to_proto(&spec, Secrets::Keep).sync.unwrap();
        assert_eq!(back.initial_sync_timeout, None);
        assert_eq!(back.max_leaves, 0);

        let mut ds = valid();
        ds.sync
            .get_or_insert_with(Default::default)
            .max_message_bytes = 3 << 30;
        let err = datastore_from_proto(ds.clone(), "datastore").unwrap_err();
        assert_eq!(
            err.to_string(),
            "datastore.sync.max_message_bytes: at most 2147483648 (2 GiB); \
             0 means the server's default"
        );
        // Stored by a release that allowed more: read as the bound.
        let stored = datastore_from_stored(ds).unwrap();
        assert_eq!(
            stored.sync.caps.max_message_bytes,
            DeviceCaps::MAX_MESSAGE_BYTES
        );
    }

    fn intent_spec() -> DatastoreSpec {
        let mut ds = valid();
        ds.sync = Some(pb::SyncConfig {
            paths: vec!["/interfaces".into(), "/system".into()],
            list_keys: vec!["/interfaces/interface[name]".into()],
            ..Default::default()
        });
        datastore_from_proto(ds, "datastore").unwrap()
    }

    fn intent_of(updates: &[(&str, typed_value::Value)], deletes: &[&str]) -> pb::Intent {
        pb::Intent {
            name: "i".into(),
            updates: updates
                .iter()
                .map(|(path, value)| pb::Leaf {
                    path: path.to_string(),
                    value: Some(Value {
                        value: Some(value.clone()),
                    }),
                    owner: String::new(),
                })
                .collect(),
            deletes: deletes.iter().map(ToString::to_string).collect(),
            ..Default::default()
        }
    }

    fn ietf(text: &str) -> typed_value::Value {
        typed_value::Value::JsonIetfVal(text.into())
    }

    #[test]
    fn json_objects_in_intents_become_leaves() {
        let intent = intent_of(
            &[
                (
                    "/interfaces/interface[name=eth0]",
                    ietf(r#"{"config": {"mtu": 9000, "description": "up"}}"#),
                ),
                (
                    "/interfaces",
                    ietf(
                        r#"{"openconfig-interfaces:interface": [{"name": "eth1", "config": {"enabled": true}}]}"#,
                    ),
                ),
                ("/system/config/hostname", ietf(r#""r1""#)),
                (
                    "/system/dns/servers",
                    typed_value::Value::JsonVal(br#"["1.1.1.1"]"#.to_vec()),
                ),
            ],
            &[],
        );
        let intent = intent_for_datastore(intent, "intent", &intent_spec()).unwrap();
        // What is stored passes the same validation again unchanged: a
        // restart loads every intent SetIntent accepted (see
        // `Engine::start`).
        let again = intent_for_datastore(intent_to_proto(&intent), "intent", &intent_spec());
        assert_eq!(again.as_ref(), Ok(&intent));
        let leaves: Vec<(String, Value)> = intent
            .updates
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let v = |value: typed_value::Value| Value { value: Some(value) };
        assert_eq!(
            leaves,
            vec![
                (
                    "/interfaces/interface[name=eth0]/config/description".into(),
                    v(ietf(r#""up""#))
                ),
                (
                    "/interfaces/interface[name=eth0]/config/mtu".into(),
                    v(ietf("9000"))
                ),
                (
                    "/interfaces/interface[name=eth1]/config/enabled".into(),
                    v(ietf("true"))
                ),
                (
                    "/interfaces/interface[name=eth1]/name".into(),
                    v(ietf(r#""eth1""#))
                ),
                // Scalars and leaf-lists stay as they were written.
                ("/system/config/hostname".into(), v(ietf(r#""r1""#))),
                (
                    "/system/dns/servers".into(),
                    v(typed_value::Value::JsonVal(br#"["1.1.1.1"]"#.to_vec()))
                ),
            ]
        );
    }

    #[test]
    fn intents_the_datastore_cannot_confirm_are_refused() {
        let string = || typed_value::Value::StringVal("x".into());
        let cases: Vec<(pb::Intent, &str, &str)> = vec![
            (
                intent_of(&[("/x/y", string())], &[]),
                "intent.updates[0].path",
                "/x/y is outside the datastore's sync.paths [/interfaces, /system]; running could never confirm it",
            ),
            (
                intent_of(&[("/system/a", string())], &["/x"]),
                "intent.deletes[0]",
                "/x is outside the datastore's sync.paths",
            ),
            (
                intent_of(
                    &[
                        ("/system", ietf(r#"{"a": 1}"#)),
                        ("/x", ietf(r#"{"b": 1}"#)),
                    ],
                    &[],
                ),
                "intent.updates[1].value",
                "leaf /x/b of this JSON value is outside",
            ),
            (
                intent_of(&[("/system/users", ietf(r#"[{"id": 1}]"#))], &[]),
                "intent.updates[0].value",
                "sync.list_keys",
            ),
            (
                intent_of(
                    &[("/interfaces", ietf(r#"{"interface": [{"mtu": 1}]}"#))],
                    &[],
                ),
                "intent.updates[0].value",
                "/interfaces/interface holds list entries",
            ),
            (
                intent_of(&[("/system/a", ietf("{"))], &[]),
                "intent.updates[0].value",
                "invalid JSON",
            ),
            (
                intent_of(&[("/system/a", ietf("{}"))], &[]),
                "intent.updates[0].value",
                "without leaves",
            ),
            (
                intent_of(&[("/system/a", ietf("null"))], &[]),
                "intent.updates[0].value",
                "null",
            ),
            (
                intent_of(&[("/system/a", ietf(r#"{"b": null}"#))], &[]),
                "intent.updates[0].value",
                "/system/a/b: null",
            ),
            (
                intent_of(
                    &[
                        ("/system/a/b", string()),
                        ("/system", ietf(r#"{"a": {"b": "y"}}"#)),
                    ],
                    &[],
                ),
                "intent.updates[1].path",
                "/system/a/b is given more than once",
            ),
        ];
        for (intent, field, words) in cases {
            let err = intent_for_datastore(intent.clone(), "intent", &intent_spec()).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(words), "{words:?} not in {err}");
            // The store reads what an earlier release accepted as it is.
            intent_from_proto(intent, "stored").unwrap();
        }
    }

    #[test]
    fn stored_declarations_are_read_leniently() {
        let mut ds = valid();
        ds.name = "Named-By-An-Old-Release".into();
        let target = ds.target.as_mut().unwrap();
        target.address = "router one:57400".into();
        target.encoding = 42;
        target.credentials = Some(pb::Credentials {
            username: String::new(),
            password: "s3cret".into(),
        });
        target.tls = Some(pb::TlsConfig {
            cert_pem: "CERT".into(),
            ..Default::default()
        });
        let duration = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        ds.sync = Some(pb::SyncConfig {
            mode: 9,
            interval: duration(-5, 0),
            commit_interval: duration(0, 0),
            paths: vec!["/interfaces".into()],
            ..Default::default()
        });
        ds.revert = Some(pb::RevertConfig {
            enabled: true,
            debounce: duration(-1, -1),
        });
        // Today's validation refuses it...
        assert!(datastore_from_proto(ds.clone(), "datastore").is_err());
        // ...and the stored reading takes what has a safe reading.
        let spec = datastore_from_stored(ds).unwrap();
        assert_eq!(spec.name, "Named-By-An-Old-Release");
        assert_eq!(spec.target.address, "router one:57400");
        assert_eq!(spec.target.encoding, Encoding::JsonIetf);
        assert_eq!(spec.sync.mode, SyncMode::OnChange);
        assert_eq!(spec.sync.interval, SyncSpec::DEFAULT_INTERVAL);
        assert_eq!(spec.sync.commit_interval, SyncSpec::DEFAULT_COMMIT_INTERVAL);
        assert_eq!(spec.sync.paths, vec![Path::parse("/interfaces").unwrap()]);
        assert_eq!(spec.revert.debounce, Duration::ZERO);

        let mut ds = valid();
        ds.sync = Some(pb::SyncConfig {
            interval: duration(2, 1_500_000_000),
            ..Default::default()
        });
        assert_eq!(
            datastore_from_stored(ds).unwrap().sync.interval,
            Duration::new(2, 999_999_999)
        );

        // Credentials in plaintext, stored before they were refused, still load.
        let mut ds = valid();
        let target = ds.target.as_mut().unwrap();
        target.tls = None;
        target.allow_insecure_credentials = false;
        target.credentials = Some(pb::Credentials {
            username: "admin".into(),
            password: "s3cret".into(),
        });
        assert!(datastore_from_proto(ds.clone(), "datastore").is_err());
        assert!(
            datastore_from_stored(ds)
                .unwrap()
                .target
                .credentials
                .is_some()
        );
    }

    #[test]
    fn stored_declarations_that_cannot_be_used_are_refused() {
        type Mutation = fn(&mut pb::Datastore);
        let cases: Vec<(Mutation, &str)> = vec![
            (|d| d.target = None, "datastore.target"),
            (
                |d| d.target.as_mut().unwrap().address = String::new(),
                "datastore.target.address",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        paths: vec!["/a[b".into()],
                        ..Default::default()
                    })
                },
                "datastore.sync.paths[0]",
            ),
            (
                |d| {
                    d.sync = Some(pb::SyncConfig {
                        list_keys: vec!["/interfaces/interface".into()],
                        ..Default::default()
                    })
                },
                "datastore.sync.list_keys[0]",
            ),
        ];
        for (mutate, field) in cases {
            let mut ds = valid();
            mutate(&mut ds);
            let err = datastore_from_stored(ds).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn zero_debounce_means_at_once() {
        let mut ds = valid();
        ds.revert = Some(pb::RevertConfig {
            enabled: true,
            debounce: Some(prost_types::Duration::default()),
        });
        assert_eq!(
            datastore_from_proto(ds, "d").unwrap().revert.debounce,
            Duration::ZERO
        );
    }
}
