//! The device state: leaves keyed by path in a persistent ordered map (cheap
//! snapshots for dumps, Gets and samples while the state keeps changing), each
//! leaf with its value and its pre-encoded gNMI `Update`; plus path patterns
//! (gNMI wildcards) and the range scans that find the leaves under a pattern.
//!
//! The map is keyed by [`Key`]: the path plus an order-preserving byte
//! encoding of it. Comparing two `Path`s walks element names and key maps;
//! comparing their encodings is one `memcmp`. A lookup in a million leaves
//! does about twenty comparisons, so this is what lets churn reach hundreds
//! of thousands of changes per second (see `docs/SIMULATOR.md`).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::{Bound, Deref};
use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use netsync_core::{Path, PathElem};
use netsync_proto::gnmi;
use netsync_proto::gnmi::typed_value::Value;
use prost::Message;

use crate::wire;

/// One leaf: its `Notification.update` entry on the wire, which holds both its
/// encoded path and its encoded value. Cloning is one reference count.
///
/// Only the encoded form is kept: churn makes each new value as bytes and
/// publishes those bytes, so a change costs one allocation; the decoded
/// value is made on demand for the rarer readers (Sets, Gets, other encodings).
#[derive(Clone, Debug)]
pub struct Leaf {
    /// `Notification.update` entry: tag, length, `Update{path, val}`.
    wire: Arc<[u8]>,
    /// Where the encoded `Path` sits inside `wire`.
    path_start: u32,
    path_end: u32,
    /// Where the encoded `TypedValue` starts; it runs to the end of `wire`.
    value_start: u32,
}

impl Leaf {
    /// A leaf at `path` holding `value`.
    pub fn new(path: &Path, value: &gnmi::TypedValue) -> Self {
        Self::from_parts(&wire::encode_path(path), &value.encode_to_vec())
    }

    /// A leaf from its encoded path and encoded `TypedValue`.
    pub fn from_parts(path_wire: &[u8], value_wire: &[u8]) -> Self {
        let mut scratch = Vec::new();
        Self::from_parts_in(&mut scratch, path_wire, value_wire)
    }

    /// [`from_parts`](Self::from_parts), writing the entry in `scratch` first
    /// (a buffer reused across calls) so that the leaf is one exact allocation.
    pub fn from_parts_in(scratch: &mut Vec<u8>, path_wire: &[u8], value_wire: &[u8]) -> Self {
        let (path_start, value_start) = wire::write_update_entry(scratch, path_wire, value_wire);
        Self {
            wire: Arc::from(scratch.as_slice()),
            path_start: path_start as u32,
            path_end: (path_start + path_wire.len()) as u32,
            value_start: value_start as u32,
        }
    }

    /// The same leaf with another value (the path is not encoded again).
    pub fn with_value(&self, value: &gnmi::TypedValue) -> Self {
        Self::from_parts(self.path_wire(), &value.encode_to_vec())
    }

    /// The leaf's value, decoded.
    pub fn value(&self) -> gnmi::TypedValue {
        gnmi::TypedValue::decode(self.value_wire())
            .expect("a leaf's value was encoded by prost, so it decodes")
    }

    /// The leaf's encoded `TypedValue`. Equal values have equal encodings, as
    /// they all come from one encoder.
    pub fn value_wire(&self) -> &[u8] {
        &self.wire[self.value_start as usize..]
    }

    /// Whether both are the same leaf object (a clone of one another).
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.wire, &other.wire)
    }

    /// The leaf's `Notification.update` entry, ready to be concatenated.
    pub fn update_entry(&self) -> &[u8] {
        &self.wire
    }

    /// The leaf's encoded gNMI `Path`.
    pub fn path_wire(&self) -> &[u8] {
        &self.wire[self.path_start as usize..self.path_end as usize]
    }

    /// A `Notification.update` entry for this leaf carrying `value` instead of
    /// the stored one (used for JSON and ASCII encodings).
    pub fn update_entry_with(&self, value: &gnmi::TypedValue) -> Vec<u8> {
        let mut out = Vec::new();
        wire::write_update_entry(&mut out, self.path_wire(), &value.encode_to_vec());
        out
    }

    /// A `Notification.delete` entry for this leaf's path.
    pub fn delete_entry(&self) -> Bytes {
        wire::encode_delete_entry(self.path_wire())
    }
}

impl PartialEq for Leaf {
    fn eq(&self, other: &Self) -> bool {
        self.wire == other.wire
    }
}

/// The kind of a scalar value, to keep a leaf's type when its value changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `string_val`.
    String,
    /// `int_val`.
    Int,
    /// `uint_val`.
    Uint,
    /// `bool_val`.
    Bool,
    /// `bytes_val`.
    Bytes,
    /// `float_val`.
    Float,
    /// `double_val`.
    Double,
    /// `decimal_val`.
    Decimal,
    /// `leaflist_val`.
    LeafList,
    /// `ascii_val`.
    Ascii,
    /// Anything else (`json_val`, `any_val`, ...), never stored.
    Other,
}

impl Kind {
    /// The kind of `value`; `None` when no value is set.
    pub fn of(value: &gnmi::TypedValue) -> Option<Self> {
        #[allow(
            deprecated,
            reason = "float_val and decimal_val are still sent by devices"
        )]
        let kind = match value.value.as_ref()? {
            Value::StringVal(_) => Self::String,
            Value::IntVal(_) => Self::Int,
            Value::UintVal(_) => Self::Uint,
            Value::BoolVal(_) => Self::Bool,
            Value::BytesVal(_) => Self::Bytes,
            Value::FloatVal(_) => Self::Float,
            Value::DoubleVal(_) => Self::Double,
            Value::DecimalVal(_) => Self::Decimal,
            Value::LeaflistVal(_) => Self::LeafList,
            Value::AsciiVal(_) => Self::Ascii,
            Value::AnyVal(_) | Value::JsonVal(_) | Value::JsonIetfVal(_) | Value::ProtoBytes(_) => {
                Self::Other
            }
        };
        Some(kind)
    }

    /// How the kind is named in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Uint => "uint",
            Self::Bool => "bool",
            Self::Bytes => "bytes",
            Self::Float => "float",
            Self::Double => "double",
            Self::Decimal => "decimal",
            Self::LeafList => "leaf-list",
            Self::Ascii => "ascii",
            Self::Other => "non-scalar",
        }
    }
}

/// A gNMI path used to select leaves: element name `*` matches any one element,
/// `...` any number of elements (zero included), key value `*` any value, and a
/// key left out matches every value (as gNMI specifies). A pattern selects the
/// leaves at or below the nodes it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    path: Path,
    /// Leading elements without any wildcard.
    concrete: usize,
}

impl Pattern {
    /// The pattern written as `path`.
    pub fn new(path: Path) -> Self {
        let concrete = path
            .elems()
            .iter()
            .take_while(|e| !is_wildcard_elem(e))
            .count();
        Self { path, concrete }
    }

    /// The path as written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the pattern uses `*` or `...` anywhere.
    pub fn has_wildcards(&self) -> bool {
        self.concrete < self.path.len()
    }

    /// Whether `leaf` is at or below a node this pattern names.
    pub fn matches(&self, leaf: &Path) -> bool {
        self.matched_len(leaf).is_some()
    }

    /// How many of `leaf`'s elements the pattern covered when it matches: the
    /// depth of the node it named.
    pub fn matched_len(&self, leaf: &Path) -> Option<usize> {
        if leaf.origin() != self.path.origin() {
            return None;
        }
        match_from(self.path.elems(), leaf.elems())
    }
}

/// Whether a pattern element contains a wildcard.
fn is_wildcard_elem(elem: &PathElem) -> bool {
    elem.name() == "*" || elem.name() == "..." || elem.keys().values().any(|v| v == "*")
}

/// Matches pattern elements against the start of a leaf's; returns the number
/// of leaf elements covered.
fn match_from(pattern: &[PathElem], leaf: &[PathElem]) -> Option<usize> {
    let Some((first, rest)) = pattern.split_first() else {
        return Some(0);
    };
    if first.name() == "..." {
        return (0..=leaf.len()).find_map(|skip| match_from(rest, &leaf[skip..]).map(|n| n + skip));
    }
    let (leaf_first, leaf_rest) = leaf.split_first()?;
    if !elem_matches(first, leaf_first) {
        return None;
    }
    match_from(rest, leaf_rest).map(|n| n + 1)
}

/// Whether one pattern element matches one leaf element.
fn elem_matches(pattern: &PathElem, leaf: &PathElem) -> bool {
    (pattern.name() == "*" || pattern.name() == leaf.name())
        && pattern
            .keys()
            .iter()
            .all(|(k, v)| v == "*" || leaf.key(k) == Some(v.as_str()))
}

/// A leaf's path with its sort key: an encoding whose byte order is the
/// order of [`Path`] (origin, then element by element). Cloning is cheap.
///
/// Keys of the initial state also carry an ordinal: their rank in that order
/// (spaced out), stored inline. Two keys that both have one compare by it
/// without touching their bytes; any other pair compares bytes. As ordinals
/// are given once, in byte order, both ways agree and the order stays total.
/// This matters: with a million leaves, each of a lookup's twenty comparisons
/// would otherwise be a cache miss on the key bytes, and churn spends most of
/// its time in lookups.
#[derive(Clone)]
pub struct Key {
    /// Rank in the initial state's order; 0 for keys created later.
    ord: u64,
    /// The sort key bytes and the path, behind one reference count: a
    /// change clones its leaf's key, and each count touched is a cache miss.
    inner: Arc<(Box<[u8]>, Path)>,
}

impl Key {
    /// The key of `path`.
    pub fn new(path: Path) -> Self {
        Self {
            ord: 0,
            inner: Arc::new((sort_key(&path, true).into(), path)),
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.inner.1
    }

    /// The sort key bytes.
    pub fn sort(&self) -> &[u8] {
        &self.inner.0
    }
}

impl Deref for Key {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.inner.1
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.inner.0
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.ord != 0 && other.ord != 0 {
            self.ord.cmp(&other.ord)
        } else {
            self.inner.0.cmp(&other.inner.0)
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner.1, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner.1, f)
    }
}

/// Appends `text` so that byte order is string order and the end is marked:
/// `0x00` is written `0x00 0xff`, and `0x00 0x01` ends the string (it sorts
/// before any continuation).
fn push_sort_str(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        if b == 0 {
            out.extend_from_slice(&[0, 0xff]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// The order-preserving encoding of `path`. Sequences (elements, keys) write
/// `0x02` before each item and `0x01` at their end, so a shorter sequence
/// sorts first. Without `closed`, the final end-of-elements marker is left
/// out: the result is then a byte prefix of the encoding of every path that
/// [`Path::starts_with`] `path`, and of no other.
pub fn sort_key(path: &Path, closed: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 * path.len() + 4);
    match path.origin() {
        None => out.push(1),
        Some(origin) => {
            out.push(2);
            push_sort_str(&mut out, origin);
        }
    }
    for elem in path.elems() {
        out.push(2);
        push_sort_str(&mut out, elem.name());
        for (k, v) in elem.keys() {
            out.push(2);
            push_sort_str(&mut out, k);
            push_sort_str(&mut out, v);
        }
        out.push(1);
    }
    if closed {
        out.push(1);
    }
    out
}

/// The leaves, keyed by path. Cloning is O(1) and gives an independent
/// snapshot: the map shares structure until one side changes.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    leaves: OrdMap<Key, Leaf>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of `leaves` whose keys carry ordinals (see [`Key`]). When a path
    /// comes twice, the last value wins.
    pub fn build(leaves: impl IntoIterator<Item = (Path, gnmi::TypedValue)>) -> Self {
        let mut items: Vec<(Key, Leaf)> = leaves
            .into_iter()
            .map(|(path, value)| {
                let leaf = Leaf::new(&path, &value);
                (Key::new(path), leaf)
            })
            .collect();
        // Stable, so that among equal paths the last one given stays last.
        items.sort_by(|a, b| a.0.sort().cmp(b.0.sort()));
        let mut deduped: Vec<(Key, Leaf)> = Vec::with_capacity(items.len());
        for item in items {
            match deduped.last_mut() {
                Some(last) if last.0.sort() == item.0.sort() => *last = item,
                _ => deduped.push(item),
            }
        }
        for (rank, (key, _)) in deduped.iter_mut().enumerate() {
            // Spaced out, so that ranks for keys added later could be found
            // in between.
            key.ord = (rank as u64 + 1) << 16;
        }
        Self {
            leaves: deduped.into_iter().collect(),
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether there is no leaf at all.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The leaf at `path`.
    pub fn get(&self, path: &Path) -> Option<&Leaf> {
        self.leaves.get(sort_key(path, true).as_slice())
    }

    /// The leaf at `key`.
    pub fn get_by_key(&self, key: &Key) -> Option<&Leaf> {
        self.leaves.get(key)
    }

    /// The leaf at `key`, to replace it in place (one lookup).
    pub fn get_mut_by_key(&mut self, key: &Key) -> Option<&mut Leaf> {
        self.leaves.get_mut(key)
    }

    /// Sets the leaf at `key`; returns the previous one.
    pub fn insert(&mut self, key: Key, leaf: Leaf) -> Option<Leaf> {
        self.leaves.insert(key, leaf)
    }

    /// Sets the leaf at `path`; returns the previous one.
    pub fn insert_path(&mut self, path: Path, leaf: Leaf) -> Option<Leaf> {
        self.insert(Key::new(path), leaf)
    }

    /// Removes the leaf at `path`.
    pub fn remove(&mut self, path: &Path) -> Option<Leaf> {
        self.leaves.remove(sort_key(path, true).as_slice())
    }

    /// Removes the leaf at `key`.
    pub fn remove_key(&mut self, key: &Key) -> Option<Leaf> {
        self.leaves.remove(key)
    }

    /// Every leaf in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Leaf)> {
        self.leaves.iter()
    }

    /// The leaves whose sort key starts with `prefix`, in order.
    fn range_prefix(&self, prefix: Vec<u8>) -> impl Iterator<Item = (&Key, &Leaf)> + Send + '_ {
        // The bounds are only read when the iterator is created.
        self.leaves
            .range::<_, [u8]>((Bound::Included(prefix.as_slice()), Bound::Unbounded))
            .take_while(move |(key, _)| key.sort().starts_with(&prefix))
    }

    /// The leaves at or below `prefix`, in path order (a contiguous range).
    pub fn subtree(&self, prefix: &Path) -> impl Iterator<Item = (&Key, &Leaf)> + Send + '_ {
        self.range_prefix(sort_key(prefix, false))
    }

    /// Whether any leaf is at or below `prefix`.
    pub fn has_subtree(&self, prefix: &Path) -> bool {
        self.subtree(prefix).next().is_some()
    }

    /// Whether any leaf is strictly below `path`.
    pub fn has_descendants(&self, path: &Path) -> bool {
        self.subtree(path).any(|(p, _)| p.len() > path.len())
    }

    /// The nearest ancestor of `path` (not `path` itself) that is a leaf.
    pub fn leaf_ancestor(&self, path: &Path) -> Option<Path> {
        let mut ancestor = path.parent();
        while let Some(candidate) = ancestor {
            if self.get(&candidate).is_some() {
                return Some(candidate);
            }
            ancestor = candidate.parent();
        }
        None
    }

    /// The leaves `pattern` selects, in path order.
    ///
    /// Without a schema the tree cannot tell whether a key-less element such as
    /// `interface` names a list; so the scan starts at the longest concrete
    /// prefix of the pattern that has data (with YANG-shaped data, an element
    /// that exists exactly has no siblings with more keys), continues over the
    /// elements of the next name, and filters with the pattern.
    pub fn scan<'a>(
        &'a self,
        pattern: &'a Pattern,
    ) -> Box<dyn Iterator<Item = (&'a Key, &'a Leaf)> + Send + 'a> {
        let elems = pattern.path.elems();
        let origin = pattern.path.origin().unwrap_or_default();
        let prefix_of = |n: usize| -> Path {
            let path: Path = elems[..n].iter().cloned().collect();
            path.with_origin(origin)
                .expect("origin comes from a valid path")
        };
        let mut depth = pattern.concrete;
        let mut prefix = prefix_of(depth);
        while depth > 0 && !self.has_subtree(&prefix) {
            depth -= 1;
            prefix = prefix_of(depth);
        }
        if depth == elems.len() {
            // The whole pattern is concrete and has data: the plain subtree.
            return Box::new(self.range_prefix(sort_key(&prefix, false)));
        }
        let next = &elems[depth];
        let mut bytes = sort_key(&prefix, false);
        if next.name() != "*" && next.name() != "..." {
            // Elements named `next.name()`, with any keys, are contiguous.
            bytes.push(2);
            push_sort_str(&mut bytes, next.name());
        }
        Box::new(
            self.range_prefix(bytes)
                .filter(move |(path, _)| pattern.matches(path)),
        )
    }

    /// The leaves any of `patterns` selects, each once: in path order within
    /// each pattern, patterns in the order given.
    pub fn scan_union<'a>(
        &'a self,
        patterns: &'a [Pattern],
    ) -> impl Iterator<Item = (&'a Key, &'a Leaf)> + Send + 'a {
        patterns.iter().enumerate().flat_map(move |(i, pattern)| {
            self.scan(pattern)
                .filter(move |(path, _)| !patterns[..i].iter().any(|p| p.matches(path)))
        })
    }

    /// Every difference between `self` (old) and `new`: paths whose leaf was
    /// added, changed (a different leaf object) or removed.
    pub fn diff<'a>(&'a self, new: &'a Tree) -> impl Iterator<Item = Change> + 'a {
        self.leaves.diff(&new.leaves).filter_map(|item| match item {
            imbl::ordmap::DiffItem::Add(path, leaf) => Some(Change::update(path, leaf)),
            imbl::ordmap::DiffItem::Update {
                old: (_, old),
                new: (path, leaf),
            } => (!old.same(leaf) && old.value_wire() != leaf.value_wire())
                .then(|| Change::update(path, leaf)),
            imbl::ordmap::DiffItem::Remove(path, leaf) => Some(Change::delete(path, leaf)),
        })
    }
}

/// One committed change of one leaf, as subscribers receive it.
#[derive(Clone, Debug)]
pub struct Change {
    /// The leaf's path.
    pub path: Key,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// What a [`Change`] did.
#[derive(Clone, Debug)]
pub enum ChangeKind {
    /// Created or changed: the new leaf.
    Update(Leaf),
    /// Deleted: the `Notification.delete` entry of its path.
    Delete(Bytes),
}

impl Change {
    /// The leaf at `path` is now `leaf`.
    pub fn update(path: &Key, leaf: &Leaf) -> Self {
        Self {
            path: path.clone(),
            kind: ChangeKind::Update(leaf.clone()),
        }
    }

    /// The leaf `old` at `path` was deleted.
    pub fn delete(path: &Key, old: &Leaf) -> Self {
        Self {
            path: path.clone(),
            kind: ChangeKind::Delete(old.delete_entry()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Paths over a small alphabet (with NUL and bytes around the markers), so
    /// that equal prefixes and tricky bytes are common.
    fn small_path() -> impl Strategy<Value = Path> {
        let text = "[ab\\x00\\x01\\x02\\u{ff}]{1,3}";
        let elem = (
            text,
            proptest::collection::btree_map(text, "[ab\\x00]{0,2}", 0..3),
        );
        (
            proptest::option::of("[xy]"),
            proptest::collection::vec(elem, 0..4),
        )
            .prop_map(|(origin, elems)| {
                let path: Path = elems
                    .into_iter()
                    .map(|(name, keys)| {
                        keys.into_iter()
                            .fold(PathElem::new(name).unwrap(), |e, (k, v)| {
                                e.with_key(k, v).unwrap()
                            })
                    })
                    .collect();
                path.with_origin(origin.unwrap_or_default()).unwrap()
            })
    }

    #[test]
    fn keys_with_and_without_ordinals_agree() {
        let paths = ["/a", "/a/b", "/a[k=1]", "/a[k=1]/b", "/a-b", "/b", "oc:/a"];
        let tree = Tree::build(paths.iter().rev().map(|p| (p_(p), s("v"))));
        let keys: Vec<&Key> = tree.iter().map(|(k, _)| k).collect();
        assert!(keys.iter().all(|k| k.ord != 0));
        let printed: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(printed, paths);
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                let fresh = Key::new(b.path().clone());
                assert_eq!(a.cmp(b), i.cmp(&j));
                assert_eq!((*a).cmp(&fresh), i.cmp(&j));
                assert_eq!(fresh.cmp(a), j.cmp(&i));
            }
            assert!(tree.get(a.path()).is_some());
            assert!(tree.get_by_key(a).is_some());
        }
    }

    fn p_(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    proptest! {
        #[test]
        fn sort_key_order_is_path_order(a in small_path(), b in small_path()) {
            prop_assert_eq!(sort_key(&a, true).cmp(&sort_key(&b, true)), a.cmp(&b));
            // The open form is a byte prefix exactly of descendants' keys.
            prop_assert_eq!(
                sort_key(&b, true).starts_with(&sort_key(&a, false)),
                b.starts_with(&a)
            );
        }
    }

    fn p(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    fn s(text: &str) -> gnmi::TypedValue {
        gnmi::TypedValue {
            value: Some(Value::StringVal(text.into())),
        }
    }

    fn tree(paths: &[&str]) -> Tree {
        let mut tree = Tree::new();
        for path in paths {
            let path = p(path);
            let leaf = Leaf::new(&path, &s("x"));
            tree.insert_path(path, leaf);
        }
        tree
    }

    fn scanned(tree: &Tree, pattern: &str) -> Vec<String> {
        let pattern = Pattern::new(p(pattern));
        tree.scan(&pattern).map(|(k, _)| k.to_string()).collect()
    }

    const DEVICE: &[&str] = &[
        "/interfaces/interface[name=eth0]/config/mtu",
        "/interfaces/interface[name=eth0]/name",
        "/interfaces/interface[name=eth0]/state/counters/in-octets",
        "/interfaces/interface[name=eth1]/config/mtu",
        "/interfaces/interface[name=eth1]/name",
        "/interfaces-x/a",
        "/system/config/hostname",
        "/ni/ni[name=default]/protocols/protocol[identifier=BGP][name=bgp]/x",
        "oc:/system/config/hostname",
    ];

    #[test]
    fn scans_concrete_and_wildcard_patterns() {
        let tree = tree(DEVICE);
        assert_eq!(
            scanned(&tree, "/interfaces/interface[name=eth1]"),
            [
                "/interfaces/interface[name=eth1]/config/mtu",
                "/interfaces/interface[name=eth1]/name"
            ]
        );
        // A key left out is a wildcard.
        assert_eq!(scanned(&tree, "/interfaces/interface/config/mtu").len(), 2);
        assert_eq!(
            scanned(&tree, "/interfaces/interface[name=*]/name").len(),
            2
        );
        assert_eq!(scanned(&tree, "/interfaces/*/config").len(), 2);
        assert_eq!(scanned(&tree, "/.../hostname"), ["/system/config/hostname"]);
        assert_eq!(scanned(&tree, "/interfaces/.../in-octets").len(), 1);
        // Partial keys of a two-key list.
        assert_eq!(
            scanned(&tree, "/ni/ni[name=default]/protocols/protocol[name=bgp]"),
            ["/ni/ni[name=default]/protocols/protocol[identifier=BGP][name=bgp]/x"]
        );
        assert_eq!(scanned(&tree, "/").len(), 8);
        assert_eq!(scanned(&tree, "oc:/"), ["oc:/system/config/hostname"]);
        assert!(scanned(&tree, "/interfaces/interface[name=eth9]").is_empty());
        assert!(scanned(&tree, "/nothing").is_empty());
    }

    #[test]
    fn union_reports_each_leaf_once() {
        let tree = tree(DEVICE);
        let patterns = [
            Pattern::new(p("/interfaces/interface[name=eth0]/config")),
            Pattern::new(p("/interfaces")),
        ];
        let leaves: Vec<_> = tree.scan_union(&patterns).collect();
        assert_eq!(leaves.len(), 5);
    }

    #[test]
    fn leaf_with_value_keeps_path() {
        let path = p("/a[k=1]/b");
        let leaf = Leaf::new(&path, &s("x"));
        let changed = leaf.with_value(&s("y"));
        assert_eq!(changed.path_wire(), leaf.path_wire());
        assert_eq!(changed.value(), s("y"));
    }

    #[test]
    fn diff_lists_net_changes() {
        let old = tree(&["/a", "/b", "/c"]);
        let mut new = old.clone();
        new.remove(&p("/a"));
        let b = p("/b");
        let leaf = Leaf::new(&b, &s("changed"));
        new.insert_path(b, leaf);
        // Same value, new object: not a change.
        let c = p("/c");
        let same = Leaf::new(&c, &s("x"));
        new.insert_path(c, same);
        let changes: Vec<_> = old.diff(&new).map(|c| c.path.to_string()).collect();
        assert_eq!(changes, ["/a", "/b"]);
    }
}
