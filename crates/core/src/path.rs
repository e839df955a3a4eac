//! gNMI paths: the string grammar, the canonical form, the order paths sort in,
//! and the conversion to and from the gNMI `Path` message.
//!
//! # String grammar
//!
//! ```text
//! path  = [origin ":"] "/" [elems]   ; absolute, with or without origin
//!       / origin ":"                  ; the root of an origin
//!       / [elems]                     ; relative (read as absolute); empty = root
//! elems = elem *("/" elem) ["/"]
//! elem  = name *("[" key "=" value "]")
//! ```
//!
//! - The empty string, `/`, `origin:` and `origin:/` are the root.
//! - The leading `/` is optional when there is no origin; one trailing `/` is
//!   tolerated (`/a/b/` is `/a/b`).
//! - An origin is recognised only when the text does not start with `/` and its
//!   first `:` comes before any `/`, `[`, `]` or `\` and is followed by `/` or ends
//!   the text. So `openconfig:/interfaces` has origin `openconfig`, while
//!   `openconfig-interfaces:interfaces/interface` is a relative path whose first
//!   element is named `openconfig-interfaces:interfaces` (YANG module-qualified
//!   names are common, and this is how gnmic reads them too). An empty origin
//!   (`:/a`) is no origin.
//! - `\` followed by any character stands for that character, in element names,
//!   key names and key values alike. A `\` at the very end of the text is an error.
//! - Element names are not empty and hold no unescaped `/`, `[` or `]`.
//! - Key names are not empty and hold no unescaped `=`, `[` or `]`; an element may
//!   not name the same key twice.
//! - A key value ends at the first unescaped `]`; it may be empty and may hold `/`
//!   and `=` verbatim, but not an unescaped `[` (that nearly always means a missing
//!   `]`, so it is reported rather than swallowed into the value).
//!
//! # Canonical form
//!
//! [`Path`]'s `Display` prints the canonical form: `origin:` only when an origin is
//! set, then `/` before each element (the root alone is `/`), keys in key-name
//! order, and `\` before `/`, `[`, `]` and `\` in names and before `[`, `]`, `=`
//! and `\` in key names and values. Nothing else is escaped and no trailing `/` is
//! written. Parsing the canonical form gives back the same path, and printing a
//! parsed path again gives the same text.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use netsync_proto::gnmi;

use crate::wire::{Fields, Payload};

mod pattern;

pub(crate) use pattern::Outcome as PatternOutcome;
pub use pattern::{PathPattern, PatternError, check_sync_path};

/// One element of a [`Path`]: a name and its list keys.
///
/// Invariant: the name and every key name are non-empty. Elements order by name,
/// then by their keys compared as a sequence of `(name, value)` pairs in key-name
/// order; strings compare byte-wise (Unicode code point order).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathElem {
    // Field order is the sort order: name first, then keys.
    name: String,
    keys: BTreeMap<String, String>,
}

/// A gNMI path: an optional origin and a sequence of [`PathElem`]s.
///
/// Invariants: the origin is `None` rather than empty and never contains `:`,
/// `/`, `[`, `]` or `\`; every element is valid (see [`PathElem`]). Every `Path`
/// therefore prints to a string that parses back to it.
///
/// # Order
///
/// Paths order by origin first (paths without an origin come first), then element
/// by element (see [`PathElem`] for how two elements compare); when one path's
/// elements are a prefix of the other's, the shorter sorts first. Consequences:
/// a path sorts before its descendants, and a path together with its descendants
/// (the paths that [`starts_with`](Path::starts_with) it) forms one contiguous
/// range of the order, with nothing else in between. For
/// example `/a` < `/a/b` < `/a[k=1]` < `/a[k=1]/b` < `/a[k=2]` < `/a-b` < `/b` <
/// `oc:/a`. This is not the byte order of the printed strings (`/a-b` sorts after
/// `/a/b` here, before it as text).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path {
    // Field order is the sort order: origin first, then elements.
    origin: Option<String>,
    elems: Vec<PathElem>,
}

/// Why a path could not be parsed, built or converted.
///
/// The messages are meant for clients (the server returns them in
/// INVALID_ARGUMENT): they quote the offending text and, for strings, say where
/// it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A string path does not follow the grammar.
    #[error("invalid path {} at byte {offset}: {problem}", Quoted(.input))]
    Syntax {
        /// The whole text that was parsed.
        input: String,
        /// Byte offset in `input` of the offending text.
        offset: usize,
        /// What is wrong there.
        problem: SyntaxProblem,
    },
    /// An element was built with an empty name.
    #[error("element name is empty")]
    EmptyName,
    /// A key with an empty name was added to an element.
    #[error("empty key name in element {}", Quoted(.elem))]
    EmptyKeyName {
        /// Name of the element the key was added to.
        elem: String,
    },
    /// An origin contains a character that would make the printed path ambiguous.
    #[error("invalid origin {}: an origin must not contain `:`, `/`, `[`, `]` or `\\`", Quoted(.origin))]
    InvalidOrigin {
        /// The rejected origin.
        origin: String,
    },
    /// A gNMI `Path` message that cannot be represented.
    #[error("invalid gNMI {part}: {problem}")]
    Gnmi {
        /// Whether the problem is in the prefix or in the path itself.
        part: GnmiPart,
        /// What is wrong.
        problem: GnmiProblem,
    },
}

/// What is wrong in a string path; part of [`PathError::Syntax`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyntaxProblem {
    /// An element has no name: `//`, or `[` where a name should start.
    EmptyName,
    /// A `[` has no matching `]`; the offset is that of the `[`.
    UnterminatedKey,
    /// A bracketed key has no `=`; the offset is that of its `[`.
    MissingEquals {
        /// The bracketed text as written, brackets included.
        text: String,
    },
    /// A key has an empty name (`[=v]`); the offset is that of the `=`.
    EmptyKeyName,
    /// An element names the same key twice; the offset is that of the second `[`.
    DuplicateKey {
        /// The key name (escapes resolved).
        key: String,
    },
    /// The text ends in a `\` that escapes nothing; the offset is that of the `\`.
    DanglingEscape,
    /// A character that is not allowed where it stands.
    Unexpected {
        /// The character found.
        found: char,
        /// Where it stands and what would be allowed instead.
        hint: &'static str,
    },
}

/// Which message of a gNMI request a [`PathError::Gnmi`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GnmiPart {
    /// The `prefix` that paths are joined to.
    Prefix,
    /// The path itself.
    Path,
}

/// What is wrong in a gNMI `Path` message; part of [`PathError::Gnmi`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GnmiProblem {
    /// The deprecated `element` field (gNMI < 0.4) is set.
    DeprecatedElement,
    /// `elem[index]` has an empty name.
    EmptyName {
        /// Index in the message's `elem` list.
        index: usize,
    },
    /// `elem[index]` has a key with an empty name.
    EmptyKeyName {
        /// Index in the message's `elem` list.
        index: usize,
        /// Name of that element.
        elem: String,
    },
    /// The origin contains `:`, `/`, `[`, `]` or `\`.
    InvalidOrigin {
        /// The rejected origin.
        origin: String,
    },
}

impl fmt::Display for SyntaxProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyName => f.write_str("empty element name"),
            Self::UnterminatedKey => f.write_str("`[` is never closed by `]`"),
            Self::MissingEquals { text } => write!(
                f,
                "key {} has no `=` (expected `[name=value]`)",
                Quoted(text)
            ),
            Self::EmptyKeyName => f.write_str("empty key name"),
            Self::DuplicateKey { key } => write!(f, "duplicate key {}", Quoted(key)),
            Self::DanglingEscape => f.write_str("`\\` at the end escapes nothing"),
            Self::Unexpected { found, hint } => write!(f, "unexpected {found:?} {hint}"),
        }
    }
}

impl fmt::Display for GnmiPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Prefix => "prefix",
            Self::Path => "path",
        })
    }
}

impl fmt::Display for GnmiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeprecatedElement => {
                f.write_str("deprecated field `element` is not supported, use `elem`")
            }
            Self::EmptyName { index } => write!(f, "elem[{index}] has an empty name"),
            Self::EmptyKeyName { index, elem } => write!(
                f,
                "elem[{index}] ({}) has a key with an empty name",
                Quoted(elem)
            ),
            Self::InvalidOrigin { origin } => write!(
                f,
                "origin {} must not contain `:`, `/`, `[`, `]` or `\\`",
                Quoted(origin)
            ),
        }
    }
}

/// Client-supplied text in backticks, control characters escaped so that an
/// error message stays on one line.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('`')?;
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        f.write_char('`')
    }
}

impl PathElem {
    /// An element without keys; fails if `name` is empty.
    pub fn new(name: impl Into<String>) -> Result<Self, PathError> {
        let name = name.into();
        if name.is_empty() {
            return Err(PathError::EmptyName);
        }
        Ok(Self {
            name,
            keys: BTreeMap::new(),
        })
    }

    /// This element with key `key` set to `value` (replacing an earlier value of
    /// that key); fails if `key` is empty. Values may be empty.
    pub fn with_key(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, PathError> {
        let key = key.into();
        if key.is_empty() {
            return Err(PathError::EmptyKeyName { elem: self.name });
        }
        self.keys.insert(key, value.into());
        Ok(self)
    }

    /// The element's name (never empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element's keys, ordered by key name.
    pub fn keys(&self) -> &BTreeMap<String, String> {
        &self.keys
    }

    /// The value of key `key`, if the element has it.
    pub fn key(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }
}

impl Path {
    /// The root path `/`, without origin.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses a gNMI string path (see the [module docs](self) for the grammar).
    pub fn parse(input: &str) -> Result<Self, PathError> {
        Parser { input }.path()
    }

    /// This path with its origin replaced; an empty `origin` removes it. Fails if
    /// the origin contains `:`, `/`, `[`, `]` or `\`, which the string form could
    /// not carry.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Result<Self, PathError> {
        let origin = origin.into();
        if !is_valid_origin(&origin) {
            return Err(PathError::InvalidOrigin { origin });
        }
        self.origin = (!origin.is_empty()).then_some(origin);
        Ok(self)
    }

    /// This path extended by a keyless element named `name`; fails if `name` is
    /// empty.
    pub fn child(self, name: impl Into<String>) -> Result<Self, PathError> {
        Ok(self.child_elem(PathElem::new(name)?))
    }

    /// This path extended by `elem`.
    pub fn child_elem(mut self, elem: PathElem) -> Self {
        self.elems.push(elem);
        self
    }

    /// Appends `elem` to this path.
    pub fn push(&mut self, elem: PathElem) {
        self.elems.push(elem);
    }

    /// Removes and returns the last element; `None` for the root.
    pub fn pop(&mut self) -> Option<PathElem> {
        self.elems.pop()
    }

    /// The origin, if one is set (never `Some("")`).
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The elements, outermost first.
    pub fn elems(&self) -> &[PathElem] {
        &self.elems
    }

    /// Number of elements; 0 for the root.
    #[allow(
        clippy::len_without_is_empty,
        reason = "`is_root` is the emptiness test; an empty path is called the root"
    )]
    pub fn len(&self) -> usize {
        self.elems.len()
    }

    /// Whether this is the root (no elements), whatever the origin.
    pub fn is_root(&self) -> bool {
        self.elems.is_empty()
    }

    /// The path without its last element, same origin; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        let (_, parent) = self.elems.split_last()?;
        Some(Self {
            origin: self.origin.clone(),
            elems: parent.to_vec(),
        })
    }

    /// Whether `prefix` is this path or one of its ancestors: same origin, and
    /// `prefix`'s elements equal (names and all keys) to this path's first ones.
    /// Every path starts with the root of its origin.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.origin == prefix.origin && self.elems.starts_with(&prefix.elems)
    }

    /// Joins a gNMI `prefix` and `path` into one path: the prefix's elements,
    /// then the path's; the path's origin, or else the prefix's. The prefix's
    /// `target` is ignored. Fails on the deprecated `element` field, an empty
    /// element or key name, or an origin that [`with_origin`](Path::with_origin)
    /// would refuse.
    pub fn from_gnmi(prefix: Option<&gnmi::Path>, path: &gnmi::Path) -> Result<Self, PathError> {
        let prefix_len = prefix.map_or(0, |p| p.elem.len());
        let mut elems = Vec::with_capacity(prefix_len + path.elem.len());
        let mut origin = None;
        if let Some(prefix) = prefix {
            origin = gnmi_origin(GnmiPart::Prefix, prefix)?;
            push_gnmi_elems(GnmiPart::Prefix, &prefix.elem, &mut elems)?;
        }
        if let Some(path_origin) = gnmi_origin(GnmiPart::Path, path)? {
            origin = Some(path_origin);
        }
        push_gnmi_elems(GnmiPart::Path, &path.elem, &mut elems)?;
        Ok(Self { origin, elems })
    }

    /// The gNMI `Path` message for this path: `origin` (empty when unset) and
    /// `elem`; `target` and the deprecated `element` are left empty.
    pub fn to_gnmi(&self) -> gnmi::Path {
        gnmi::Path {
            origin: self.origin.clone().unwrap_or_default(),
            elem: self
                .elems
                .iter()
                .map(|e| gnmi::PathElem {
                    name: e.name.clone(),
                    key: e.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// Writes the canonical form of `prefix` joined with `path` into `out`
/// (replacing what it held): the same text as [`Path::from_gnmi`] followed by
/// `Display`, with the same errors, but without building a [`Path`]. This is
/// the ingest's hot path, run once per leaf update.
pub fn write_canonical_gnmi(
    prefix: Option<&gnmi::Path>,
    path: &gnmi::Path,
    out: &mut String,
) -> Result<(), PathError> {
    let usable = |p: &gnmi::Path| {
        #[allow(deprecated, reason = "the deprecated field is read only to reject it")]
        let uses_element = !p.element.is_empty();
        !uses_element
            && is_valid_origin(&p.origin)
            && p.elem
                .iter()
                .all(|e| !e.name.is_empty() && !e.key.contains_key(""))
    };
    if !prefix.is_none_or(usable) || !usable(path) {
        // Something is wrong: the full conversion says what.
        let full = Path::from_gnmi(prefix, path)?;
        out.clear();
        let _ = write!(out, "{full}");
        return Ok(());
    }
    let mut bytes = std::mem::take(out).into_bytes();
    bytes.clear();
    write_canonical_checked(prefix, path, &mut bytes);
    // Built from `str` pieces and ASCII, so always UTF-8.
    *out = String::from_utf8(bytes).unwrap_or_default();
    Ok(())
}

/// [`write_canonical_gnmi`] once the paths are known to be valid.
fn write_canonical_checked(prefix: Option<&gnmi::Path>, path: &gnmi::Path, out: &mut Vec<u8>) {
    let origin = if path.origin.is_empty() {
        prefix.map_or("", |p| p.origin.as_str())
    } else {
        path.origin.as_str()
    };
    if !origin.is_empty() {
        out.extend_from_slice(origin.as_bytes());
        out.push(b':');
    }
    let prefix_elems = prefix.map_or(&[][..], |p| p.elem.as_slice());
    if prefix_elems.is_empty() && path.elem.is_empty() {
        out.push(b'/');
        return;
    }
    for elem in prefix_elems.iter().chain(&path.elem) {
        if elem.key.len() <= 1 {
            let mut one: [(&[u8], &[u8]); 1] = [(b"", b"")];
            let keys = match elem.key.iter().next() {
                Some((k, v)) => {
                    one[0] = (k.as_bytes(), v.as_bytes());
                    &mut one[..]
                }
                None => &mut [],
            };
            push_canonical_elem(out, elem.name.as_bytes(), keys);
        } else {
            let mut keys: Vec<_> = elem
                .key
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect();
            push_canonical_elem(out, elem.name.as_bytes(), &mut keys);
        }
    }
}

/// Appends one element in canonical form: `/name`, then its keys sorted by
/// name (names are unique and not empty: the caller checked).
fn push_canonical_elem(out: &mut Vec<u8>, name: &[u8], keys: &mut [(&[u8], &[u8])]) {
    out.push(b'/');
    push_escaped(out, name, is_name_special);
    keys.sort_unstable();
    for (key, value) in keys {
        push_key(out, key, value);
    }
}

/// A notification's prefix read from its wire bytes, for
/// [`write_canonical_wire`]: its origin and its elements already in canonical
/// form.
#[derive(Debug, Default)]
pub(crate) struct WirePrefix<'a> {
    origin: &'a [u8],
    elems: Vec<u8>,
}

impl<'a> WirePrefix<'a> {
    /// Reads a `gnmi.Path`'s wire bytes; `None` when [`write_canonical_wire`]
    /// cannot tell (see there).
    pub(crate) fn read(bytes: &'a [u8]) -> Option<Self> {
        let mut elems = Vec::new();
        let origin = wire_path(bytes, &mut elems)?;
        // Checked here: a path's own origin may hide it from every key.
        std::str::from_utf8(origin).ok()?;
        std::str::from_utf8(&elems).ok()?;
        Some(Self { origin, elems })
    }
}

/// Appends to `out` what [`write_canonical_gnmi`] writes for `prefix` joined
/// with the `gnmi.Path` whose wire bytes are `path`, reading the bytes in
/// place. `None` (with part of the text written) for everything outside the
/// common case, which the caller then decodes fully to learn the error or the
/// meaning: malformed bytes, invalid UTF-8, the deprecated `element`, an
/// invalid origin, an empty name or key name, a key name given twice, a field
/// given twice, more than eight keys on one element.
///
/// The text is checked to be UTF-8 once, whole, rather than piece by piece:
/// every piece sits between ASCII delimiters (or the text's ends), so a piece
/// that is not UTF-8 leaves the whole text not UTF-8.
pub(crate) fn write_canonical_wire(
    prefix: Option<&WirePrefix<'_>>,
    path: &[u8],
    out: &mut Vec<u8>,
) -> Option<()> {
    let start = out.len();
    let prefix_elems = prefix.map_or(&[][..], |p| p.elems.as_slice());
    out.extend_from_slice(prefix_elems);
    // One pass: the origin, wherever it comes, is put in front at the end.
    let own_origin = wire_path(path, out)?;
    if prefix_elems.is_empty() && out.len() == start {
        out.push(b'/');
    }
    let origin = if own_origin.is_empty() {
        prefix.map_or(&[][..], |p| p.origin)
    } else {
        own_origin
    };
    if !origin.is_empty() {
        out.splice(start..start, origin.iter().copied().chain([b':']));
    }
    std::str::from_utf8(&out[start..]).ok()?;
    Some(())
}

/// Appends the canonical text of a `gnmi.Path`'s elements and returns its
/// origin, checking its other fields on the way.
fn wire_path<'p>(path: &'p [u8], out: &mut Vec<u8>) -> Option<&'p [u8]> {
    let mut fields = Fields::new(path);
    let mut origin = None;
    let mut target = false;
    while let Some((number, payload)) = fields.next().ok()? {
        match (number, payload) {
            (3, Payload::Len(elem)) => push_wire_elem(elem, out)?,
            (2, Payload::Len(text)) if origin.is_none() => origin = Some(text),
            (4, Payload::Len(text)) if !target => {
                std::str::from_utf8(text).ok()?;
                target = true;
            }
            // `element` (1), a repeated or mistyped field.
            (1..=4, _) => return None,
            _ => {}
        }
    }
    let origin = origin.unwrap_or_default();
    (!origin.iter().any(|&b| is_origin_delimiter(b))).then_some(origin)
}

/// Appends one `gnmi.PathElem` read from its wire bytes.
fn push_wire_elem(elem: &[u8], out: &mut Vec<u8>) -> Option<()> {
    const MAX_KEYS: usize = 8;
    let mut name: Option<&[u8]> = None;
    let mut keys: [(&[u8], &[u8]); MAX_KEYS] = [(b"", b""); MAX_KEYS];
    let mut count = 0;
    let mut fields = Fields::new(elem);
    while let Some((number, payload)) = fields.next().ok()? {
        match (number, payload) {
            (1, Payload::Len(text)) if name.is_none() => name = Some(text),
            (2, Payload::Len(entry)) if count < MAX_KEYS => {
                let (key, value) = wire_map_entry(entry)?;
                if key.is_empty() || keys[..count].iter().any(|(k, _)| *k == key) {
                    return None;
                }
                keys[count] = (key, value);
                count += 1;
            }
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    let name = name.filter(|n| !n.is_empty())?;
    push_canonical_elem(out, name, &mut keys[..count]);
    Some(())
}

/// One entry of a `map<string, string>`: absent members are empty.
fn wire_map_entry(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut key, mut value) = (None, None);
    let mut fields = Fields::new(entry);
    while let Some((number, payload)) = fields.next().ok()? {
        match (number, payload) {
            (1, Payload::Len(text)) if key.is_none() => key = Some(text),
            (2, Payload::Len(text)) if value.is_none() => value = Some(text),
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    Some((key.unwrap_or_default(), value.unwrap_or_default()))
}

fn push_key(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.push(b'[');
    push_escaped(out, key, is_key_special);
    out.push(b'=');
    push_escaped(out, value, is_key_special);
    out.push(b']');
}

/// Appends `text` with a `\` before every byte for which `is_special` holds
/// (only ASCII bytes are, so UTF-8 stays UTF-8).
fn push_escaped(out: &mut Vec<u8>, text: &[u8], is_special: impl Fn(u8) -> bool) {
    let mut run_start = 0;
    for (i, &b) in text.iter().enumerate() {
        if is_special(b) {
            out.extend_from_slice(&text[run_start..i]);
            out.push(b'\\');
            run_start = i;
        }
    }
    out.extend_from_slice(&text[run_start..]);
}

/// Whether `origin` can be printed as `origin:/...` and parsed back.
fn is_valid_origin(origin: &str) -> bool {
    !origin.bytes().any(is_origin_delimiter)
}

/// Bytes that end an origin candidate when parsing, and so may not be in one.
fn is_origin_delimiter(b: u8) -> bool {
    matches!(b, b':' | b'/' | b'[' | b']' | b'\\')
}

/// Reads a gNMI message's origin, rejecting the deprecated `element` field on
/// the way (every conversion passes here first).
fn gnmi_origin(part: GnmiPart, path: &gnmi::Path) -> Result<Option<String>, PathError> {
    #[allow(deprecated, reason = "the deprecated field is read only to reject it")]
    let uses_element = !path.element.is_empty();
    if uses_element {
        return Err(PathError::Gnmi {
            part,
            problem: GnmiProblem::DeprecatedElement,
        });
    }
    if !is_valid_origin(&path.origin) {
        return Err(PathError::Gnmi {
            part,
            problem: GnmiProblem::InvalidOrigin {
                origin: path.origin.clone(),
            },
        });
    }
    Ok((!path.origin.is_empty()).then(|| path.origin.clone()))
}

/// Validates and appends gNMI elements to `out`.
fn push_gnmi_elems(
    part: GnmiPart,
    elems: &[gnmi::PathElem],
    out: &mut Vec<PathElem>,
) -> Result<(), PathError> {
    for (index, elem) in elems.iter().enumerate() {
        if elem.name.is_empty() {
            return Err(PathError::Gnmi {
                part,
                problem: GnmiProblem::EmptyName { index },
            });
        }
        if elem.key.contains_key("") {
            return Err(PathError::Gnmi {
                part,
                problem: GnmiProblem::EmptyKeyName {
                    index,
                    elem: elem.name.clone(),
                },
            });
        }
        out.push(PathElem {
            name: elem.name.clone(),
            keys: elem
                .key
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    Ok(())
}

impl TryFrom<&gnmi::Path> for Path {
    type Error = PathError;

    /// Same as [`Path::from_gnmi`] without a prefix.
    fn try_from(path: &gnmi::Path) -> Result<Self, PathError> {
        Self::from_gnmi(None, path)
    }
}

impl From<&Path> for gnmi::Path {
    /// Same as [`Path::to_gnmi`].
    fn from(path: &Path) -> Self {
        path.to_gnmi()
    }
}

impl FromStr for Path {
    type Err = PathError;

    /// Same as [`Path::parse`].
    fn from_str(input: &str) -> Result<Self, PathError> {
        Self::parse(input)
    }
}

impl FromIterator<PathElem> for Path {
    /// A path without origin made of these elements.
    fn from_iter<I: IntoIterator<Item = PathElem>>(elems: I) -> Self {
        Self {
            origin: None,
            elems: elems.into_iter().collect(),
        }
    }
}

impl Extend<PathElem> for Path {
    /// Appends the elements in order.
    fn extend<I: IntoIterator<Item = PathElem>>(&mut self, elems: I) {
        self.elems.extend(elems);
    }
}

/// Bytes escaped in element names when printing.
fn is_name_special(b: u8) -> bool {
    matches!(b, b'/' | b'[' | b']' | b'\\')
}

/// Bytes escaped in key names and values when printing.
fn is_key_special(b: u8) -> bool {
    matches!(b, b'[' | b']' | b'=' | b'\\')
}

/// Writes `text` with a `\` before every byte for which `is_special` holds.
/// Only ASCII bytes are ever special, so the runs in between stay valid UTF-8.
fn write_escaped(
    f: &mut fmt::Formatter<'_>,
    text: &str,
    is_special: impl Fn(u8) -> bool,
) -> fmt::Result {
    let mut run_start = 0;
    for (i, b) in text.bytes().enumerate() {
        if is_special(b) {
            f.write_str(&text[run_start..i])?;
            f.write_char('\\')?;
            // The special byte itself starts the next run.
            run_start = i;
        }
    }
    f.write_str(&text[run_start..])
}

impl fmt::Display for PathElem {
    /// The element in canonical form, e.g. `interface[name=eth0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.name, is_name_special)?;
        for (key, value) in &self.keys {
            f.write_char('[')?;
            write_escaped(f, key, is_key_special)?;
            f.write_char('=')?;
            write_escaped(f, value, is_key_special)?;
            f.write_char(']')?;
        }
        Ok(())
    }
}

impl fmt::Display for Path {
    /// The path in canonical form (see the module docs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            f.write_str(origin)?;
            f.write_char(':')?;
        }
        if self.elems.is_empty() {
            return f.write_char('/');
        }
        for elem in &self.elems {
            f.write_char('/')?;
            fmt::Display::fmt(elem, f)?;
        }
        Ok(())
    }
}

/// A single pass over the input text. Offsets are byte offsets; every byte the
/// grammar treats specially is ASCII, so stopping at one never splits a
/// multi-byte character.
struct Parser<'a> {
    input: &'a str,
}

impl Parser<'_> {
    fn error(&self, offset: usize, problem: SyntaxProblem) -> PathError {
        PathError::Syntax {
            input: self.input.to_owned(),
            offset,
            problem,
        }
    }

    fn path(&self) -> Result<Path, PathError> {
        let bytes = self.input.as_bytes();
        let (origin, mut pos) = self.origin();
        if bytes.get(pos) == Some(&b'/') {
            pos += 1;
        }
        // Every element but the first follows a '/', so this is a close upper
        // bound that saves the vector from growing.
        let slashes = bytes[pos..].iter().filter(|&&b| b == b'/').count();
        let mut elems = Vec::with_capacity(slashes + 1);
        // `pos == len` after a '/' is the tolerated trailing slash (or the root).
        while pos < bytes.len() {
            let (elem, end) = self.elem(pos)?;
            elems.push(elem);
            match bytes.get(end) {
                None => break,
                Some(b'/') => pos = end + 1,
                Some(_) => {
                    return Err(self.error(
                        end,
                        SyntaxProblem::Unexpected {
                            found: self.char_at(end),
                            hint: "after `]` (expected `[`, `/` or the end of the path)",
                        },
                    ));
                }
            }
        }
        Ok(Path { origin, elems })
    }

    /// The origin, if the text has one, and the offset where the rest starts.
    fn origin(&self) -> (Option<String>, usize) {
        let bytes = self.input.as_bytes();
        if bytes.first() == Some(&b'/') {
            return (None, 0);
        }
        match bytes.iter().position(|&b| is_origin_delimiter(b)) {
            Some(colon)
                if bytes[colon] == b':' && matches!(bytes.get(colon + 1), None | Some(b'/')) =>
            {
                let origin = &self.input[..colon];
                ((!origin.is_empty()).then(|| origin.to_owned()), colon + 1)
            }
            _ => (None, 0),
        }
    }

    /// Parses the element starting at `start`; returns it and the offset of the
    /// byte after it (a `/`, the end, or something unexpected after a `]`).
    fn elem(&self, start: usize) -> Result<(PathElem, usize), PathError> {
        let bytes = self.input.as_bytes();
        let (name, mut end) = self.text(start, |b| matches!(b, b'/' | b'[' | b']'))?;
        if bytes.get(end) == Some(&b']') {
            return Err(self.error(
                end,
                SyntaxProblem::Unexpected {
                    found: ']',
                    hint: "in an element name (escape it as `\\]`)",
                },
            ));
        }
        if name.is_empty() {
            return Err(self.error(start, SyntaxProblem::EmptyName));
        }
        let mut keys = BTreeMap::new();
        while bytes.get(end) == Some(&b'[') {
            end = self.key(end, &mut keys)?;
        }
        Ok((PathElem { name, keys }, end))
    }

    /// Parses the `[key=value]` whose `[` is at `open` into `keys`; returns the
    /// offset after its `]`.
    fn key(&self, open: usize, keys: &mut BTreeMap<String, String>) -> Result<usize, PathError> {
        let bytes = self.input.as_bytes();
        let (key, eq) = self.text(open + 1, |b| matches!(b, b'=' | b']' | b'['))?;
        match bytes.get(eq) {
            None => return Err(self.error(open, SyntaxProblem::UnterminatedKey)),
            Some(b'[') => {
                return Err(self.error(
                    eq,
                    SyntaxProblem::Unexpected {
                        found: '[',
                        hint: "in a key name (escape it as `\\[`)",
                    },
                ));
            }
            Some(b']') => {
                let text = self.input[open..=eq].to_owned();
                return Err(self.error(open, SyntaxProblem::MissingEquals { text }));
            }
            Some(_) => {}
        }
        if key.is_empty() {
            return Err(self.error(eq, SyntaxProblem::EmptyKeyName));
        }
        let (value, close) = self.text(eq + 1, |b| matches!(b, b']' | b'['))?;
        match bytes.get(close) {
            None => return Err(self.error(open, SyntaxProblem::UnterminatedKey)),
            Some(b'[') => {
                return Err(self.error(
                    close,
                    SyntaxProblem::Unexpected {
                        found: '[',
                        hint: "in a key value (a `]` is missing, or escape it as `\\[`)",
                    },
                ));
            }
            Some(_) => {}
        }
        match keys.entry(key) {
            Entry::Occupied(entry) => Err(self.error(
                open,
                SyntaxProblem::DuplicateKey {
                    key: entry.key().clone(),
                },
            )),
            Entry::Vacant(entry) => {
                entry.insert(value);
                Ok(close + 1)
            }
        }
    }

    /// Reads from `start` up to the first unescaped byte for which `is_stop`
    /// holds, or the end; resolves `\` escapes. Returns the text and the offset
    /// of the stop byte (the length of the input at the end).
    fn text(
        &self,
        start: usize,
        is_stop: impl Fn(u8) -> bool,
    ) -> Result<(String, usize), PathError> {
        let bytes = self.input.as_bytes();
        // Allocated only once an escape is seen; until then the text is a slice.
        let mut unescaped: Option<String> = None;
        let mut run_start = start;
        let mut i = start;
        while let Some(&b) = bytes.get(i) {
            if b == b'\\' {
                if i + 1 == bytes.len() {
                    return Err(self.error(i, SyntaxProblem::DanglingEscape));
                }
                unescaped
                    .get_or_insert_with(String::new)
                    .push_str(&self.input[run_start..i]);
                // The escaped character starts the next run, whatever it is; if it
                // is multi-byte, its other bytes are never special and follow.
                run_start = i + 1;
                i += 2;
            } else if is_stop(b) {
                break;
            } else {
                i += 1;
            }
        }
        // `i` never passes the end: an escape is skipped only when a byte follows.
        let end = i;
        let run = &self.input[run_start..end];
        let text = match unescaped {
            Some(mut text) => {
                text.push_str(run);
                text
            }
            None => run.to_owned(),
        };
        Ok((text, end))
    }

    /// The character starting at byte `offset` (a char boundary).
    fn char_at(&self, offset: usize) -> char {
        self.input[offset..].chars().next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn p(text: &str) -> Path {
        Path::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn elem(name: &str, keys: &[(&str, &str)]) -> PathElem {
        keys.iter().fold(PathElem::new(name).unwrap(), |e, (k, v)| {
            e.with_key(*k, *v).unwrap()
        })
    }

    fn path(origin: Option<&str>, elems: Vec<PathElem>) -> Path {
        Path {
            origin: origin.map(str::to_owned),
            elems,
        }
    }

    /// The error message a client would see for `text`.
    fn err(text: &str) -> String {
        match Path::parse(text) {
            Ok(path) => panic!("{text:?} should not parse, got {path:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn syntax(text: &str) -> (usize, SyntaxProblem) {
        match Path::parse(text) {
            Err(PathError::Syntax {
                input,
                offset,
                problem,
            }) => {
                assert_eq!(input, text);
                (offset, problem)
            }
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }

    // ---- grammar ----

    #[test]
    fn parses_elements_and_keys() {
        assert_eq!(
            p("/interfaces/interface[name=eth0]/config/mtu"),
            path(
                None,
                vec![
                    elem("interfaces", &[]),
                    elem("interface", &[("name", "eth0")]),
                    elem("config", &[]),
                    elem("mtu", &[]),
                ]
            )
        );
    }

    #[test]
    fn root_forms() {
        for text in ["", "/"] {
            assert_eq!(p(text), Path::root(), "{text:?}");
            assert!(p(text).is_root());
        }
        for text in ["oc:", "oc:/"] {
            assert_eq!(p(text), Path::root().with_origin("oc").unwrap(), "{text:?}");
        }
    }

    #[test]
    fn leading_slash_is_optional() {
        assert_eq!(p("a/b[k=v]"), p("/a/b[k=v]"));
        assert_eq!(p("a"), path(None, vec![elem("a", &[])]));
    }

    #[test]
    fn one_trailing_slash_is_tolerated() {
        assert_eq!(p("/a/b/"), p("/a/b"));
        assert_eq!(p("/a[k=v]/"), p("/a[k=v]"));
        assert_eq!(p("oc:/a/"), p("oc:/a"));
        assert_eq!(p("/a/").to_string(), "/a");
    }

    #[test]
    fn origin() {
        let path = p("openconfig:/interfaces/interface[name=eth0]");
        assert_eq!(path.origin(), Some("openconfig"));
        assert_eq!(path.len(), 2);
        // Text after the origin may be relative.
        assert_eq!(
            p("openconfig:"),
            Path::root().with_origin("openconfig").unwrap()
        );
        // An empty origin is no origin.
        assert_eq!(p(":/a"), p("/a"));
        assert_eq!(p(":/a").origin(), None);
    }

    #[test]
    fn colon_is_an_origin_only_before_any_slash_and_followed_by_slash() {
        // A leading '/' means no origin.
        assert_eq!(
            p("/oc:/a"),
            path(None, vec![elem("oc:", &[]), elem("a", &[])])
        );
        // YANG module-qualified names.
        assert_eq!(
            p("openconfig-interfaces:interfaces/interface"),
            path(
                None,
                vec![
                    elem("openconfig-interfaces:interfaces", &[]),
                    elem("interface", &[])
                ]
            )
        );
        assert_eq!(
            p("/oc-if:interfaces/oc-if:interface").elems()[1].name(),
            "oc-if:interface"
        );
        // A ':' after the first '/' is part of a name.
        assert_eq!(p("a/b:/c").origin(), None);
        assert_eq!(p("a/b:/c").elems()[1].name(), "b:");
        // A ':' inside a key is not an origin.
        assert_eq!(
            p("a[k=x:/y]"),
            path(None, vec![elem("a", &[("k", "x:/y")])])
        );
        // An escaped ':' is not an origin.
        assert_eq!(
            p("a\\:/b"),
            path(None, vec![elem("a:", &[]), elem("b", &[])])
        );
    }

    #[test]
    fn several_keys_are_ordered_by_name() {
        let path = p("/a[z=1][b=2][m=3]");
        let keys: Vec<_> = path.elems()[0]
            .keys()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(keys, [("b", "2"), ("m", "3"), ("z", "1")]);
        assert_eq!(path.to_string(), "/a[b=2][m=3][z=1]");
        assert_eq!(path, p("/a[m=3][z=1][b=2]"));
        assert_eq!(path.elems()[0].key("m"), Some("3"));
        assert_eq!(path.elems()[0].key("x"), None);
    }

    #[test]
    fn key_values_may_hold_slash_and_equals_verbatim_and_be_empty() {
        assert_eq!(
            p("/routes/route[prefix=10.0.0.0/8]/next-hop"),
            path(
                None,
                vec![
                    elem("routes", &[]),
                    elem("route", &[("prefix", "10.0.0.0/8")]),
                    elem("next-hop", &[]),
                ]
            )
        );
        assert_eq!(p("/a[k=x=y]"), path(None, vec![elem("a", &[("k", "x=y")])]));
        assert_eq!(p("/a[k=]"), path(None, vec![elem("a", &[("k", "")])]));
        assert_eq!(p("/a[k=]").to_string(), "/a[k=]");
    }

    #[test]
    fn escapes_in_key_values_and_names() {
        assert_eq!(
            p(r"/a[k=x\]y\[z\=w\\v]"),
            path(None, vec![elem("a", &[("k", r"x]y[z=w\v")])])
        );
        assert_eq!(
            p(r"/a[k\=1\]=v]"),
            path(None, vec![elem("a", &[("k=1]", "v")])])
        );
        assert_eq!(
            p(r"/a\/b\[c\]d\\e/f"),
            path(None, vec![elem(r"a/b[c]d\e", &[]), elem("f", &[])])
        );
        // IPv6 in a key value: ']' must be escaped, ':' need not.
        assert_eq!(
            p(r"/neighbors/neighbor[address=\[::1\]]"),
            path(
                None,
                vec![
                    elem("neighbors", &[]),
                    elem("neighbor", &[("address", "[::1]")])
                ]
            )
        );
    }

    #[test]
    fn backslash_escapes_any_character() {
        assert_eq!(p(r"/\a\b[\k=\v]"), p("/ab[k=v]"));
        // A multi-byte character after '\'.
        assert_eq!(p(r"/\é[k=\ü]"), path(None, vec![elem("é", &[("k", "ü")])]));
        assert_eq!(
            p("/ünï/çödé[ключ=значение]").to_string(),
            "/ünï/çödé[ключ=значение]"
        );
    }

    // ---- errors ----

    #[test]
    fn rejects_empty_element() {
        assert_eq!(syntax("/a//b"), (3, SyntaxProblem::EmptyName));
        assert_eq!(syntax("//"), (1, SyntaxProblem::EmptyName));
        assert_eq!(syntax("/a//"), (3, SyntaxProblem::EmptyName));
        assert_eq!(syntax("/[k=v]"), (1, SyntaxProblem::EmptyName));
        assert_eq!(syntax("oc://a"), (4, SyntaxProblem::EmptyName));
        assert_eq!(
            err("/a//b"),
            "invalid path `/a//b` at byte 3: empty element name"
        );
    }

    #[test]
    fn rejects_unterminated_key() {
        assert_eq!(syntax("/a[k=v"), (2, SyntaxProblem::UnterminatedKey));
        assert_eq!(syntax("/a[k"), (2, SyntaxProblem::UnterminatedKey));
        assert_eq!(syntax("/a["), (2, SyntaxProblem::UnterminatedKey));
        assert_eq!(
            syntax("/a[k=v]/b[x=1/c"),
            (9, SyntaxProblem::UnterminatedKey)
        );
        assert_eq!(syntax(r"/a[k=v\]"), (2, SyntaxProblem::UnterminatedKey));
        assert_eq!(
            err("/a[k=v"),
            "invalid path `/a[k=v` at byte 2: `[` is never closed by `]`"
        );
    }

    #[test]
    fn rejects_key_without_equals() {
        assert_eq!(
            syntax("/a[k]/b"),
            (2, SyntaxProblem::MissingEquals { text: "[k]".into() })
        );
        assert_eq!(
            syntax("/a[]"),
            (2, SyntaxProblem::MissingEquals { text: "[]".into() })
        );
        assert_eq!(
            err("/a[name]"),
            "invalid path `/a[name]` at byte 2: key `[name]` has no `=` (expected `[name=value]`)"
        );
    }

    #[test]
    fn rejects_empty_key_name() {
        assert_eq!(syntax("/a[=v]"), (3, SyntaxProblem::EmptyKeyName));
        assert_eq!(
            err("/a[x=1][=v]"),
            "invalid path `/a[x=1][=v]` at byte 8: empty key name"
        );
    }

    #[test]
    fn rejects_duplicate_key() {
        assert_eq!(
            syntax("/a[k=1][k=2]"),
            (7, SyntaxProblem::DuplicateKey { key: "k".into() })
        );
        // Same key after escapes are resolved.
        assert_eq!(
            syntax(r"/a[k=1][\k=1]"),
            (7, SyntaxProblem::DuplicateKey { key: "k".into() })
        );
        assert_eq!(
            err("/a[k=1][k=2]"),
            "invalid path `/a[k=1][k=2]` at byte 7: duplicate key `k`"
        );
    }

    #[test]
    fn rejects_dangling_escape() {
        assert_eq!(syntax("/a\\"), (2, SyntaxProblem::DanglingEscape));
        assert_eq!(syntax("/a[k=v\\"), (6, SyntaxProblem::DanglingEscape));
        assert_eq!(syntax("\\"), (0, SyntaxProblem::DanglingEscape));
        assert_eq!(
            err("/a\\"),
            "invalid path `/a\\` at byte 2: `\\` at the end escapes nothing"
        );
    }

    #[test]
    fn rejects_unexpected_characters() {
        assert_eq!(
            err("/a]b"),
            "invalid path `/a]b` at byte 2: unexpected ']' in an element name (escape it as `\\]`)"
        );
        assert_eq!(
            err("/]"),
            "invalid path `/]` at byte 1: unexpected ']' in an element name (escape it as `\\]`)"
        );
        assert_eq!(
            err("/a[k=v]x"),
            "invalid path `/a[k=v]x` at byte 7: unexpected 'x' after `]` (expected `[`, `/` or the end of the path)"
        );
        assert_eq!(
            err("/a[k=v]]"),
            "invalid path `/a[k=v]]` at byte 7: unexpected ']' after `]` (expected `[`, `/` or the end of the path)"
        );
        assert_eq!(
            err("/a[k[=v]"),
            "invalid path `/a[k[=v]` at byte 4: unexpected '[' in a key name (escape it as `\\[`)"
        );
        assert_eq!(
            err("/a[k=v/b[x=y]"),
            "invalid path `/a[k=v/b[x=y]` at byte 8: unexpected '[' in a key value (a `]` is missing, or escape it as `\\[`)"
        );
        // A multi-byte character is reported whole.
        assert_eq!(
            syntax("/a[k=v]é"),
            (
                7,
                SyntaxProblem::Unexpected {
                    found: 'é',
                    hint: "after `]` (expected `[`, `/` or the end of the path)"
                }
            )
        );
    }

    #[test]
    fn error_messages_keep_control_characters_on_one_line() {
        assert_eq!(
            err("/a\n//b"),
            "invalid path `/a\\n//b` at byte 4: empty element name"
        );
    }

    // ---- printing ----

    #[test]
    fn prints_canonical_form() {
        assert_eq!(Path::root().to_string(), "/");
        assert_eq!(Path::root().with_origin("oc").unwrap().to_string(), "oc:/");
        assert_eq!(p("a/b[y=2][x=1]/").to_string(), "/a/b[x=1][y=2]");
        assert_eq!(p("openconfig:/a/").to_string(), "openconfig:/a");
        assert_eq!(p("openconfig:a").to_string(), "/openconfig:a");
        assert_eq!(p(":/a").to_string(), "/a");
        // Only the characters that need it are escaped, and they always are.
        assert_eq!(p(r"/\a[k=x=y/z]").to_string(), r"/a[k=x\=y/z]");
        assert_eq!(
            path(None, vec![elem(r"n/[]\=:", &[(r"k[]=\/:", r"v[]=\/:")])]).to_string(),
            r"/n\/\[\]\\=:[k\[\]\=\\/:=v\[\]\=\\/:]"
        );
        assert_eq!(
            elem("interface", &[("name", "eth0")]).to_string(),
            "interface[name=eth0]"
        );
    }

    // ---- builders and accessors ----

    #[test]
    fn builders() {
        let built = Path::root()
            .with_origin("openconfig")
            .unwrap()
            .child("interfaces")
            .unwrap()
            .child_elem(
                PathElem::new("interface")
                    .unwrap()
                    .with_key("name", "eth0")
                    .unwrap(),
            )
            .child("mtu")
            .unwrap();
        assert_eq!(built, p("openconfig:/interfaces/interface[name=eth0]/mtu"));

        let mut pushed: Path = [elem("a", &[])].into_iter().collect();
        pushed.push(elem("b", &[]));
        pushed.extend([elem("c", &[])]);
        assert_eq!(pushed, p("/a/b/c"));
        assert_eq!(pushed.pop(), Some(elem("c", &[])));
        assert_eq!(pushed, p("/a/b"));

        // A later value of the same key replaces the earlier one.
        assert_eq!(
            elem("a", &[("k", "1"), ("k", "2")]),
            elem("a", &[("k", "2")])
        );
        // An empty origin removes it.
        assert_eq!(p("oc:/a").with_origin("").unwrap(), p("/a"));
    }

    #[test]
    fn builder_errors() {
        assert_eq!(PathElem::new(""), Err(PathError::EmptyName));
        assert_eq!(Path::root().child(""), Err(PathError::EmptyName));
        assert_eq!(
            PathElem::new("a")
                .unwrap()
                .with_key("", "v")
                .unwrap_err()
                .to_string(),
            "empty key name in element `a`"
        );
        for origin in ["a:b", "a/b", "a[", "a]", "a\\"] {
            assert_eq!(
                Path::root().with_origin(origin),
                Err(PathError::InvalidOrigin {
                    origin: origin.into()
                })
            );
        }
        assert_eq!(
            Path::root().with_origin("a/b").unwrap_err().to_string(),
            "invalid origin `a/b`: an origin must not contain `:`, `/`, `[`, `]` or `\\`"
        );
    }

    #[test]
    fn accessors() {
        let path = p("oc:/a[k=v]/b");
        assert_eq!(path.len(), 2);
        assert!(!path.is_root());
        assert_eq!(path.origin(), Some("oc"));
        assert_eq!(path.elems()[0].name(), "a");
        assert_eq!(path.parent(), Some(p("oc:/a[k=v]")));
        assert_eq!(path.parent().and_then(|p| p.parent()), Some(p("oc:/")));
        assert_eq!(p("oc:/").parent(), None);
        assert_eq!(Path::root().len(), 0);
        // The root of an origin is a root too.
        assert!(p("oc:/").is_root());
    }

    #[test]
    fn starts_with() {
        let leaf = p("/a[k=1]/b/c");
        assert!(leaf.starts_with(&leaf));
        assert!(leaf.starts_with(&p("/a[k=1]/b")));
        assert!(leaf.starts_with(&p("/a[k=1]")));
        assert!(leaf.starts_with(&Path::root()));
        // Keys must be equal, not merely compatible.
        assert!(!leaf.starts_with(&p("/a")));
        assert!(!leaf.starts_with(&p("/a[k=2]")));
        assert!(!leaf.starts_with(&p("/a[k=1][j=2]")));
        // Element-wise, not textual.
        assert!(!p("/ab").starts_with(&p("/a")));
        assert!(!p("/a").starts_with(&leaf));
        // The origin must match.
        assert!(!leaf.starts_with(&p("oc:/a[k=1]")));
        assert!(!p("oc:/a").starts_with(&Path::root()));
        assert!(p("oc:/a").starts_with(&p("oc:/")));
    }

    #[test]
    fn documented_order() {
        let sorted = [
            "/",
            "/a",
            "/a/b",
            "/a[k=1]",
            "/a[k=1]/b",
            "/a[k=1][l=0]",
            "/a[k=2]",
            "/a-b",
            "/b",
            "oc:/",
            "oc:/a",
        ];
        let mut paths: Vec<Path> = sorted.iter().rev().map(|s| p(s)).collect();
        paths.sort();
        let printed: Vec<String> = paths.iter().map(ToString::to_string).collect();
        assert_eq!(printed, sorted);
    }

    // ---- gNMI ----

    fn gnmi_elem(name: &str, keys: &[(&str, &str)]) -> gnmi::PathElem {
        gnmi::PathElem {
            name: name.into(),
            key: keys
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
        }
    }

    fn gnmi_path(origin: &str, elems: Vec<gnmi::PathElem>) -> gnmi::Path {
        gnmi::Path {
            origin: origin.into(),
            elem: elems,
            ..Default::default()
        }
    }

    #[test]
    fn to_gnmi() {
        let msg = p("oc:/interfaces/interface[name=eth0][unit=0]").to_gnmi();
        assert_eq!(
            msg,
            gnmi_path(
                "oc",
                vec![
                    gnmi_elem("interfaces", &[]),
                    gnmi_elem("interface", &[("name", "eth0"), ("unit", "0")])
                ]
            )
        );
        assert_eq!(Path::root().to_gnmi(), gnmi::Path::default());
        assert_eq!(gnmi::Path::from(&p("/a")), p("/a").to_gnmi());
    }

    #[test]
    fn from_gnmi_joins_prefix_and_path() {
        let prefix = gnmi::Path {
            target: "dev1".into(),
            ..gnmi_path("oc", vec![gnmi_elem("interfaces", &[])])
        };
        let path = gnmi_path("", vec![gnmi_elem("interface", &[("name", "eth0")])]);
        assert_eq!(
            Path::from_gnmi(Some(&prefix), &path).unwrap(),
            p("oc:/interfaces/interface[name=eth0]")
        );
        // The path's origin wins over the prefix's.
        let with_origin = gnmi_path("cli", vec![]);
        assert_eq!(
            Path::from_gnmi(Some(&prefix), &with_origin).unwrap(),
            p("cli:/interfaces")
        );
        assert_eq!(
            Path::from_gnmi(None, &path).unwrap(),
            p("/interface[name=eth0]")
        );
        assert_eq!(
            Path::try_from(&gnmi::Path::default()).unwrap(),
            Path::root()
        );
        // Names holding grammar characters are fine in messages.
        assert_eq!(
            Path::try_from(&gnmi_path("", vec![gnmi_elem("a/b", &[("k", "]")])]))
                .unwrap()
                .to_string(),
            r"/a\/b[k=\]]"
        );
    }

    #[test]
    fn from_gnmi_errors() {
        #[allow(deprecated, reason = "testing that the deprecated field is rejected")]
        let old = gnmi::Path {
            element: vec!["interfaces".into()],
            ..Default::default()
        };
        assert_eq!(
            Path::try_from(&old).unwrap_err().to_string(),
            "invalid gNMI path: deprecated field `element` is not supported, use `elem`"
        );
        assert_eq!(
            Path::from_gnmi(Some(&old), &gnmi::Path::default())
                .unwrap_err()
                .to_string(),
            "invalid gNMI prefix: deprecated field `element` is not supported, use `elem`"
        );
        let empty_name = gnmi_path("", vec![gnmi_elem("a", &[]), gnmi_elem("", &[])]);
        assert_eq!(
            Path::from_gnmi(Some(&gnmi_path("", vec![gnmi_elem("p", &[])])), &empty_name)
                .unwrap_err()
                .to_string(),
            "invalid gNMI path: elem[1] has an empty name"
        );
        let empty_key = gnmi_path("", vec![gnmi_elem("a", &[("", "v")])]);
        assert_eq!(
            Path::try_from(&empty_key).unwrap_err().to_string(),
            "invalid gNMI path: elem[0] (`a`) has a key with an empty name"
        );
        assert_eq!(
            Path::from_gnmi(Some(&gnmi_path("a:b", vec![])), &gnmi::Path::default()).unwrap_err(),
            PathError::Gnmi {
                part: GnmiPart::Prefix,
                problem: GnmiProblem::InvalidOrigin {
                    origin: "a:b".into()
                }
            }
        );
        assert_eq!(
            Path::try_from(&gnmi_path("a/b", vec![]))
                .unwrap_err()
                .to_string(),
            "invalid gNMI path: origin `a/b` must not contain `:`, `/`, `[`, `]` or `\\`"
        );
    }

    // ---- properties ----

    /// Names and keys drawn mostly from the characters the grammar cares about,
    /// plus multi-byte ones.
    fn text(min: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                4 => proptest::char::range('a', 'c'),
                1 => proptest::sample::select(vec!['/', '[', ']', '=', '\\', ':', ' ', 'é', '日']),
            ],
            min..6,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn arb_elem() -> impl Strategy<Value = PathElem> {
        (
            text(1),
            proptest::collection::btree_map(text(1), text(0), 0..3),
        )
            .prop_map(|(name, keys)| PathElem { name, keys })
    }

    fn arb_origin() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-z][a-z0-9_.-]{0,8}")
    }

    fn arb_path() -> impl Strategy<Value = Path> {
        (arb_origin(), proptest::collection::vec(arb_elem(), 0..5))
            .prop_map(|(origin, elems)| Path { origin, elems })
    }

    /// Paths over a tiny alphabet, so that equal names, keys and prefixes are common.
    fn small_path() -> impl Strategy<Value = Path> {
        let elem = (
            "[ab]{1,2}",
            proptest::collection::btree_map("[kl]", "[01]", 0..2),
        )
            .prop_map(|(name, keys)| PathElem { name, keys });
        (
            proptest::option::of(proptest::sample::select(vec!["x", "y"])),
            proptest::collection::vec(elem, 0..4),
        )
            .prop_map(|(origin, elems)| Path {
                origin: origin.map(str::to_owned),
                elems,
            })
    }

    /// Writes `path` in a valid but non-canonical way: needless escapes, keys in
    /// another order, no leading slash, a trailing slash.
    fn noisy(
        path: &Path,
        escape_all: bool,
        leading_slash: bool,
        trailing_slash: bool,
        reverse_keys: bool,
    ) -> String {
        fn push(
            out: &mut String,
            text: &str,
            escape_all: bool,
            special: fn(u8) -> bool,
            extra: &[char],
        ) {
            for c in text.chars() {
                if escape_all || (c.is_ascii() && special(c as u8)) || extra.contains(&c) {
                    out.push('\\');
                }
                out.push(c);
            }
        }
        let mut out = String::new();
        if let Some(origin) = &path.origin {
            out.push_str(origin);
            out.push(':');
        }
        // Without a leading '/', a ':' in the first name could read as an origin;
        // escaping it keeps the text unambiguous.
        // After an origin the '/' is required (`oc:a` is the element `oc:a`).
        let relative = !leading_slash && path.origin.is_none() && !path.elems.is_empty();
        for (i, e) in path.elems.iter().enumerate() {
            if i > 0 || !relative {
                out.push('/');
            }
            let extra: &[char] = if i == 0 && relative { &[':'] } else { &[] };
            push(&mut out, &e.name, escape_all, is_name_special, extra);
            let mut keys: Vec<_> = e.keys.iter().collect();
            if reverse_keys {
                keys.reverse();
            }
            for (k, v) in keys {
                out.push('[');
                push(&mut out, k, escape_all, is_key_special, &[]);
                out.push('=');
                // '=' and '/' may stand verbatim in values; '[' may not.
                push(
                    &mut out,
                    v,
                    escape_all,
                    |b| matches!(b, b'[' | b']' | b'\\'),
                    &[],
                );
                out.push(']');
            }
        }
        if trailing_slash && !path.elems.is_empty() {
            out.push('/');
        }
        out
    }

    /// Element-wise order, written out without relying on derived impls.
    fn reference_cmp(a: &Path, b: &Path) -> std::cmp::Ordering {
        a.origin.cmp(&b.origin).then_with(|| {
            for (x, y) in a.elems.iter().zip(&b.elems) {
                let by_elem = x.name.as_bytes().cmp(y.name.as_bytes()).then_with(|| {
                    let xs: Vec<_> = x.keys.iter().collect();
                    let ys: Vec<_> = y.keys.iter().collect();
                    xs.cmp(&ys)
                });
                if by_elem.is_ne() {
                    return by_elem;
                }
            }
            a.elems.len().cmp(&b.elems.len())
        })
    }

    #[test]
    fn wire_paths_that_are_not_utf8_are_left_to_the_decoder() {
        let elem_name = [0x1a, 0x03, 0x0a, 0x01, 0xc3];
        // Name "l", key "k" = "\xc3".
        let key_value = [
            0x1a, 0x0a, 0x0a, 0x01, b'l', 0x12, 0x05, 0x0a, 0x01, b'k', 0x12, 0x01,
        ];
        let key_value = [&key_value[..], &[0xc3]].concat();
        let origin = [0x12, 0x01, 0xc3, 0x1a, 0x03, 0x0a, 0x01, b'a'];
        for path in [&elem_name[..], &key_value, &origin] {
            let mut out = Vec::new();
            assert!(
                write_canonical_wire(None, path, &mut out).is_none(),
                "{path:?}"
            );
            assert!(<gnmi::Path as prost::Message>::decode(path).is_err());
        }
        // A prefix whose origin every path overrides is still checked.
        assert!(WirePrefix::read(&origin).is_none());
    }

    proptest! {
        /// The ingest's direct canonicalisation writes what building a `Path`
        /// and printing it writes, errors included.
        #[test]
        fn canonical_gnmi_matches_path(
            prefix in arb_path(),
            path in arb_path(),
            use_prefix: bool,
            empty_name in proptest::option::of(0usize..5),
            empty_key: bool,
        ) {
            let prefix = use_prefix.then(|| prefix.to_gnmi());
            let mut path = path.to_gnmi();
            if let Some(i) = empty_name
                && let Some(e) = path.elem.get_mut(i)
            {
                e.name.clear();
            }
            if empty_key && let Some(e) = path.elem.first_mut() {
                e.key.insert(String::new(), "v".into());
            }
            let mut out = String::from("stale");
            let direct = write_canonical_gnmi(prefix.as_ref(), &path, &mut out).map(|()| out);
            let full = Path::from_gnmi(prefix.as_ref(), &path).map(|p| p.to_string());
            prop_assert_eq!(direct, full);
        }

        /// Reading a path's wire bytes in place writes what the decoded
        /// message gives, and gives up exactly where decoding reports an error.
        #[test]
        fn canonical_wire_matches_gnmi(
            prefix in arb_path(),
            path in arb_path(),
            use_prefix: bool,
            empty_name in proptest::option::of(0usize..5),
            target in proptest::option::of("[a-z]{1,3}"),
        ) {
            use prost::Message as _;
            let prefix = use_prefix.then(|| prefix.to_gnmi());
            let mut path = path.to_gnmi();
            if let Some(i) = empty_name
                && let Some(e) = path.elem.get_mut(i)
            {
                e.name.clear();
            }
            path.target = target.unwrap_or_default();
            let mut expected = String::new();
            let expected = write_canonical_gnmi(prefix.as_ref(), &path, &mut expected)
                .ok()
                .map(|()| expected);
            let prefix_bytes = prefix.as_ref().map(|p| p.encode_to_vec());
            let wire_prefix = prefix_bytes.as_deref().map(|p| WirePrefix::read(p).unwrap());
            let mut out = b"kept:".to_vec();
            let got = write_canonical_wire(wire_prefix.as_ref(), &path.encode_to_vec(), &mut out)
                .map(|()| String::from_utf8(out["kept:".len()..].to_vec()).unwrap());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn parse_print_round_trip(path in arb_path()) {
            let printed = path.to_string();
            prop_assert_eq!(Path::parse(&printed), Ok(path), "printed as {}", printed);
        }

        #[test]
        fn non_canonical_forms_parse_to_the_same_path(
            path in arb_path(),
            escape_all: bool,
            leading_slash: bool,
            trailing_slash: bool,
            reverse_keys: bool,
        ) {
            let text = noisy(&path, escape_all, leading_slash, trailing_slash, reverse_keys);
            let parsed = Path::parse(&text);
            prop_assert_eq!(parsed, Ok(path), "written as {}", text);
        }

        #[test]
        fn printing_a_parsed_path_is_idempotent(s in "[ab/\\[\\]=\\\\:é]{0,16}") {
            // Arbitrary text: most of it is rejected (without panicking); what is
            // accepted prints to a canonical form that is a fixed point.
            if let Ok(path) = Path::parse(&s) {
                let canonical = path.to_string();
                let reparsed = Path::parse(&canonical);
                prop_assert_eq!(reparsed.as_ref(), Ok(&path), "{} printed as {}", s, canonical);
                prop_assert_eq!(reparsed.unwrap().to_string(), canonical);
            }
        }

        #[test]
        fn errors_point_inside_the_input(s in "[ab/\\[\\]=\\\\:é]{0,16}") {
            if let Err(PathError::Syntax { input, offset, .. }) = Path::parse(&s) {
                prop_assert_eq!(&input, &s);
                prop_assert!(offset < s.len());
                prop_assert!(s.is_char_boundary(offset));
            }
        }

        #[test]
        fn order_is_element_wise(a in small_path(), b in small_path()) {
            prop_assert_eq!(a.cmp(&b), reference_cmp(&a, &b));
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a.cmp(&b).is_eq(), a == b);
        }

        #[test]
        fn subtrees_are_contiguous_in_order(mut paths in proptest::collection::vec(small_path(), 0..24), prefix in small_path()) {
            paths.sort();
            let first = paths.iter().position(|p| p.starts_with(&prefix));
            let count = paths.iter().filter(|p| p.starts_with(&prefix)).count();
            if let Some(first) = first {
                prop_assert!(paths[first..first + count].iter().all(|p| p.starts_with(&prefix)));
                // Every descendant sorts after its prefix.
                prop_assert!(paths[first] >= prefix);
            }
        }

        #[test]
        fn starts_with_matches_parent_chain(path in small_path()) {
            let mut ancestor = Some(path.clone());
            while let Some(a) = ancestor {
                prop_assert!(path.starts_with(&a));
                prop_assert!(a <= path);
                ancestor = a.parent();
            }
        }

        #[test]
        fn gnmi_round_trip(path in arb_path(), split in 0usize..6) {
            let msg = path.to_gnmi();
            prop_assert_eq!(Path::try_from(&msg), Ok(path.clone()));
            // Splitting into prefix and path joins back to the same path.
            let split = split.min(path.len());
            let prefix = Path { origin: path.origin.clone(), elems: path.elems[..split].to_vec() };
            let rest = Path { origin: None, elems: path.elems[split..].to_vec() };
            prop_assert_eq!(Path::from_gnmi(Some(&prefix.to_gnmi()), &rest.to_gnmi()), Ok(path));
        }
    }
}
