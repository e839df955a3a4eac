//! What a datastore is: the device it syncs, how it syncs, and whether drift is
//! reverted. Validated domain types; the wire form lives in `netsync-proto`.

use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use crate::path::{Path, PathElem};

/// Why a datastore field is invalid. `field` names it as the API spells it
/// (e.g. `datastore.target.address`), so callers can answer INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the offending field, as in the API.
    pub field: String,
    /// What is wrong with it, in words a client can act on.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest datastore name.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a datastore name against `[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err("must not be empty".into());
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            bytes.len()
        ));
    }
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let inner = |b: u8| edge(b) || matches!(b, b'.' | b'_' | b'-');
    if !edge(bytes[0]) || !edge(bytes[bytes.len() - 1]) {
        return Err(format!(
            "{name:?} must start and end with a lowercase letter or digit"
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !c.is_ascii() || !inner(c as u8)) {
        return Err(format!(
            "{name:?} contains {bad:?}; only lowercase letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks a `host:port` address: a host name, an IPv4 address or a bracketed
/// IPv6 address, then a port from 1 to 65535.
pub fn validate_address(address: &str) -> Result<(), String> {
    let shape = || format!("{address:?} is not host:port (IPv6 as [addr]:port)");
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:").ok_or_else(shape)?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
        (v6, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or_else(shape)?;
        if host.is_empty() {
            return Err(shape());
        }
        if host.contains(':') {
            return Err(format!(
                "{address:?}: write IPv6 addresses in brackets, as [addr]:port"
            ));
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if let Some(bad) = host.chars().find(|&c| !valid(c)) {
            return Err(format!("host {host:?} contains {bad:?}"));
        }
        (host, port)
    };
    let _ = host;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

/// A secret string (password, private key): kept in memory and in the store,
/// but never printed by `Debug` and never returned through the API.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it (gNMI metadata, TLS).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

/// Encoding asked of the device for values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// RFC 7951 JSON (the default).
    #[default]
    JsonIetf,
    /// Plain JSON.
    Json,
    /// Scalar protobuf TypedValues.
    Proto,
    /// Device-specific text.
    Ascii,
}

/// How the device is kept in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SyncMode {
    /// Subscribe STREAM with ON_CHANGE (the default).
    #[default]
    OnChange,
    /// Subscribe STREAM with SAMPLE every interval.
    Sample,
    /// Subscribe ONCE every interval.
    Once,
    /// Subscribe POLL, polled every interval.
    Poll,
    /// gNMI Get every interval.
    Get,
}

/// TLS towards the device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSpec {
    /// PEM CA bundle; empty: system roots.
    pub ca_pem: String,
    /// PEM client certificate.
    pub cert_pem: String,
    /// PEM client key.
    pub key_pem: Secret,
    /// Accept any device certificate.
    pub insecure_skip_verify: bool,
    /// Name to verify the certificate against.
    pub server_name: String,
}

/// gNMI username and password.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// Sent as `username` metadata.
    pub username: String,
    /// Sent as `password` metadata.
    pub password: Secret,
}

/// Where and how to reach the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// `host:port`.
    pub address: String,
    /// TLS settings; `None` is plaintext.
    pub tls: Option<TlsSpec>,
    /// gNMI credentials, if any.
    pub credentials: Option<Credentials>,
    /// Encoding asked of the device.
    pub encoding: Encoding,
    /// gNMI prefix target; empty when unused.
    pub target_name: String,
    /// The credentials may travel without TLS (a lab); refused otherwise.
    pub allow_insecure_credentials: bool,
}

/// A list whose entries arrive as JSON arrays, with the names of its keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey {
    /// Path of the list itself (its last element is the list name).
    pub list: Path,
    /// Key leaf names, in the order given.
    pub keys: Vec<String>,
}

impl ListKey {
    /// Parses `/interfaces/interface[name]` or `/a/b[k1][k2]`: a path whose last
    /// element carries key *names* in brackets.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim_end_matches('/');
        let split = last_elem_start(text);
        let (parent, last) = text.split_at(split);
        let open = last.find('[').ok_or_else(|| {
            format!("{text:?} names no keys; write it as /list[key] or /list[key1][key2]")
        })?;
        let (name, mut rest) = last.split_at(open);
        if name.is_empty() {
            return Err(format!("{text:?} has an empty list name"));
        }
        let mut keys = Vec::new();
        while !rest.is_empty() {
            let inner = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .ok_or_else(|| format!("{text:?}: expected [key] after the list name"))?;
            let (key, tail) = inner;
            let valid = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
            if !valid {
                return Err(format!("{text:?}: {key:?} is not a key name"));
            }
            if keys.iter().any(|k| k == key) {
                return Err(format!("{text:?}: key {key:?} is named twice"));
            }
            keys.push(key.to_string());
            rest = tail;
        }
        let parent = Path::parse(parent).map_err(|e| e.to_string())?;
        let mut list = parent;
        list.push(PathElem::new(name).map_err(|e| e.to_string())?);
        Ok(Self { list, keys })
    }
}

impl fmt::Display for ListKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.list)?;
        for key in &self.keys {
            write!(f, "[{key}]")?;
        }
        Ok(())
    }
}

/// Byte offset where the last path element of `text` starts: just after the
/// last `/` that is outside brackets and not escaped.
fn last_elem_start(text: &str) -> usize {
    let mut start = 0;
    let mut in_brackets = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            '/' if !in_brackets => start = i + 1,
            _ => {}
        }
    }
    start
}

/// What to subscribe to and how often to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSpec {
    /// Subscription mode.
    pub mode: SyncMode,
    /// Subscribed paths; never empty (`/` by default).
    pub paths: Vec<Path>,
    /// SAMPLE interval or ONCE/POLL/GET period; above zero, at most
    /// [`SyncSpec::MAX_INTERVAL`].
    pub interval: Duration,
    /// Longest wait from receipt to commit after the initial sync; above
    /// zero, at most [`SyncSpec::MAX_COMMIT_INTERVAL`].
    pub commit_interval: Duration,
    /// Lists that arrive as JSON arrays.
    pub list_keys: Vec<ListKey>,
    /// Longest wait for a dump's end (`sync_response`, or a Get's answer)
    /// before the connection is dropped and tried again; `None`: the
    /// server's default. At most [`SyncSpec::MAX_INITIAL_SYNC_TIMEOUT`].
    pub initial_sync_timeout: Option<Duration>,
    /// Device-side caps; 0 in each: the server's default.
    pub caps: DeviceCaps,
}

/// What a device may send, per datastore (see [`SyncSpec::caps`]). A device
/// over a cap is disconnected with backoff and what it sent is not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceCaps {
    /// Largest message (Subscribe response, Get answer), in bytes.
    pub max_message_bytes: u64,
    /// Most leaves running may hold.
    pub max_leaves: u64,
    /// Largest value of one leaf (its encoded `TypedValue`), in bytes.
    pub max_leaf_bytes: u64,
}

impl DeviceCaps {
    /// Largest `max_message_bytes`: 2 GiB, protobuf's own limit.
    pub const MAX_MESSAGE_BYTES: u64 = 2 << 30;
    /// Largest `max_leaves`.
    pub const MAX_LEAVES: u64 = 1_000_000_000;
    /// Largest `max_leaf_bytes`: 1 GiB.
    pub const MAX_LEAF_BYTES: u64 = 1 << 30;
}

impl SyncSpec {
    /// Default SAMPLE interval and cycle period.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// Default commit interval.
    pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
    /// Longest `interval`: a day. Far longer periods are mistakes, and
    /// durations near the type's limit overflow the timers that use them.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
    /// Longest `commit_interval`: a day.
    pub const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
    /// Longest `initial_sync_timeout`: a day.
    pub const MAX_INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

    /// Whether `path` lies at or below one of the subscribed paths, so that
    /// running can hold it. A subscribed path may use gNMI wildcards: element
    /// name `*` for any one element, `...` for any number of them, key value
    /// `*` for any value; a key left out matches every value, and a path
    /// without an origin at the root (`/`) covers every origin.
    pub fn covers(&self, path: &Path) -> bool {
        self.paths.iter().any(|synced| {
            let origin_ok =
                synced.origin() == path.origin() || (synced.is_root() && synced.origin().is_none());
            origin_ok && elems_cover(synced.elems(), path.elems())
        })
    }
}

/// Whether the pattern `synced` names `path` or one of its ancestors.
fn elems_cover(synced: &[PathElem], path: &[PathElem]) -> bool {
    let Some((first, rest)) = synced.split_first() else {
        return true;
    };
    if first.name() == "..." {
        return (0..=path.len()).any(|skip| elems_cover(rest, &path[skip..]));
    }
    let Some((elem, path_rest)) = path.split_first() else {
        // `path` lies above the synced path: only part of it is synced.
        return false;
    };
    let name_ok = first.name() == "*" || first.name() == elem.name();
    let keys_ok = first
        .keys()
        .iter()
        .all(|(key, value)| value == "*" || elem.key(key) == Some(value.as_str()));
    name_ok && keys_ok && elems_cover(rest, path_rest)
}

/// Revert of drift from intents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertSpec {
    /// Whether drift in revertive intents is reverted.
    pub enabled: bool,
    /// How long drift settles before a revert is queued; zero: at once; at
    /// most [`RevertSpec::MAX_DEBOUNCE`].
    pub debounce: Duration,
}

impl RevertSpec {
    /// Default debounce.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);
    /// Longest debounce: an hour.
    pub const MAX_DEBOUNCE: Duration = Duration::from_secs(3600);
}

/// Everything a client declares about a datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreSpec {
    /// Unique, validated name.
    pub name: String,
    /// The device.
    pub target: TargetSpec,
    /// How it syncs.
    pub sync: SyncSpec,
    /// Whether drift is reverted.
    pub revert: RevertSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "0", "leaf-1", "dc1.spine_2", &"a".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "r1:57400",
            "10.0.0.1:6030",
            "[::1]:57400",
            "my-host.example.com:1",
        ] {
            assert_eq!(validate_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "r1",
            ":80",
            "r1:",
            "r1:0",
            "r1:65536",
            "r1:x",
            "::1:80",
            "[::1]",
            "[zz]:80",
            "a b:80",
            "http://r1:80",
        ] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_keys() {
        let k = ListKey::parse("/interfaces/interface[name]").unwrap();
        assert_eq!(k.list.to_string(), "/interfaces/interface");
        assert_eq!(k.keys, ["name"]);
        assert_eq!(k.to_string(), "/interfaces/interface[name]");
        let k = ListKey::parse("/ni[name=a/b]/protocols/protocol[identifier][name]").unwrap();
        assert_eq!(k.list.to_string(), "/ni[name=a/b]/protocols/protocol");
        assert_eq!(k.keys, ["identifier", "name"]);
        for bad in [
            "/interfaces/interface",
            "/a/[k]",
            "/a/b[k",
            "/a/b[]",
            "/a/b[k][k]",
            "/a/b[k=v]",
        ] {
            assert!(ListKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sync_paths_cover_what_lies_below_them() {
        let spec = |paths: &[&str]| SyncSpec {
            mode: SyncMode::OnChange,
            paths: paths.iter().map(|p| Path::parse(p).unwrap()).collect(),
            interval: SyncSpec::DEFAULT_INTERVAL,
            commit_interval: SyncSpec::DEFAULT_COMMIT_INTERVAL,
            list_keys: Vec::new(),
            initial_sync_timeout: None,
            caps: DeviceCaps::default(),
        };
        let covers = |paths: &[&str], path: &str| spec(paths).covers(&Path::parse(path).unwrap());
        let cases = [
            (&["/"][..], "/a/b", true),
            (&["/"], "oc:/a/b", true),
            (&["/interfaces", "/system"], "/system/config/hostname", true),
            (&["/interfaces", "/system"], "/system", true),
            (&["/interfaces", "/system"], "/x/y", false),
            (&["/interfaces", "/system"], "/systemx/y", false),
            (
                &["/interfaces"],
                "/interfaces/interface[name=eth0]/config/mtu",
                true,
            ),
            (
                &["/interfaces/interface[name=eth0]"],
                "/interfaces/interface[name=eth0]/mtu",
                true,
            ),
            (
                &["/interfaces/interface[name=eth0]"],
                "/interfaces/interface[name=eth1]/mtu",
                false,
            ),
            (
                &["/interfaces/interface[name=eth0]"],
                "/interfaces/interface",
                false,
            ),
            (
                &["/interfaces/interface[name=*]/config"],
                "/interfaces/interface[name=e]/config/mtu",
                true,
            ),
            (
                &["/interfaces/interface[name=*]/config"],
                "/interfaces/interface[name=e]/state/mtu",
                false,
            ),
            (
                &["/interfaces/*/config"],
                "/interfaces/interface[name=e]/config/mtu",
                true,
            ),
            (&["/.../config"], "/a/b/config/c", true),
            (&["/.../config"], "/a/b/state/c", false),
            (&["oc:/a"], "oc:/a/b", true),
            (&["oc:/a"], "/a/b", false),
            (&["/a"], "oc:/a/b", false),
        ];
        for (paths, path, expected) in cases {
            assert_eq!(covers(paths, path), expected, "{paths:?} covers {path}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials {
            username: "admin".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
