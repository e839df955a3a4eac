//! Running and the deltas that change it: a persistent sorted map from canonical
//! path to value (cheap consistent snapshots), the per-path coalesced delta the
//! ingest fills, and the commit step that applies one to the other and reports
//! the net change.
//!
//! Leaves are keyed by their canonical path string. Running sorts them byte-wise
//! by that string; a subtree (a path and everything below it) is then a set of
//! contiguous ranges, found by prefix.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;

use netsync_proto::gnmi::TypedValue;
use prost::Message;

use crate::leaves::{self, Builder, ChangeSink, Cursor, IterSource, Leaves, Ranges, Union};
use crate::path::{Path, PathPattern, PatternOutcome};

/// A leaf's canonical path, shared between running, deltas and events.
pub type Key = Arc<str>;

/// A leaf value as the device sent it.
pub type Value = TypedValue;

/// The leaves of a datastore at one revision. Cloning is O(1) and the clone is
/// an independent snapshot: later commits never change it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Running {
    leaves: Leaves,
}

/// A subtree to delete: every leaf whose canonical path is `path` or lies below it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subtree {
    /// Canonical path of the subtree root.
    path: Key,
    /// Whether the root's last element has no keys, so that list entries below
    /// it (`root[k=v]...`) belong to the subtree too.
    lists_below: bool,
    /// Whether this is the root (`/`: every leaf of every origin; `oc:/`:
    /// every leaf of that origin).
    root: bool,
}

impl Subtree {
    /// The subtree rooted at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_string().into(),
            lists_below: path.elems().last().is_some_and(|e| e.keys().is_empty()),
            root: path.is_root(),
        }
    }

    /// The root path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the leaf `key` lies in this subtree.
    pub fn contains(&self, key: &str) -> bool {
        let root = &*self.path;
        if self.root {
            // `/` covers every origin; `origin:/` its own.
            return root == "/" || key.starts_with(root);
        }
        match key.strip_prefix(root) {
            Some("") => true,
            Some(rest) => rest.starts_with('/') || (self.lists_below && rest.starts_with('[')),
            None => false,
        }
    }

    /// The key ranges the subtree covers, as byte ranges (see
    /// [`leaves::key_range`]).
    fn key_ranges(&self) -> impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)> + '_ {
        self.prefixes()
            .map(|(text, exact)| leaves::key_range(&text, exact))
    }

    /// The key ranges the subtree covers, as `(text, exact)`: `exact` is the
    /// root itself, the others are prefixes.
    fn prefixes(&self) -> impl Iterator<Item = (String, bool)> + '_ {
        let root = &*self.path;
        let (exact, below): (Option<String>, String) = match (self.root, root) {
            // The root without an origin covers every origin: a device may
            // answer a subscription to `/` with origin-qualified paths.
            (true, "/") => (None, String::new()),
            (true, _) => (None, root.to_string()),
            (false, _) => (Some(root.to_string()), format!("{root}/")),
        };
        let lists = (self.lists_below && !self.root).then(|| format!("{root}["));
        exact
            .map(|e| (e, true))
            .into_iter()
            .chain(std::iter::once((below, false)))
            .chain(lists.map(|l| (l, false)))
    }
}

/// Changes received and not yet committed, coalesced by path: for each leaf
/// only its latest update is kept, and for each subtree root its latest
/// delete, so memory is bounded by the number of distinct paths however fast
/// they change.
///
/// Every operation carries its arrival number. Applying the delta deletes
/// every held subtree, then writes each held update that arrived after every
/// held delete covering its leaf: the same result as replaying the stream,
/// since a leaf ends as its last operation left it. Holding on to updates a
/// later delete covers (instead of finding and dropping them when the delete
/// arrives) keeps the updates in a hash map: churn updates the same leaves
/// again and again, and a hash lookup is far cheaper than an ordered one over
/// long keys that share most of their bytes. They are sorted once, at commit.
///
/// A dump (see [`Delta::replacing`]) sends each leaf once, so its updates are
/// appended to a compact log instead of a map (about a third of the memory and
/// no allocation per leaf), and sorted once when committed; a delete arriving
/// in the middle of a dump turns the log into the map first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// Subtree deletes by root path, with their arrival numbers; a delete
    /// inside another always arrived after it (an earlier one is dropped).
    deletes: BTreeMap<Key, (Subtree, u64)>,
    /// The subscription paths a replace prunes (see [`Delta::replacing`]).
    /// They are recorded before any update, so they never hide one: they
    /// delete only leaves running held before, and are resolved against
    /// running when the delta is applied.
    patterns: Vec<PathPattern>,
    updates: Updates,
    /// Arrival number of the last operation.
    last: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Updates {
    /// Each leaf's latest update: its arrival number and encoded value.
    Latest(HashMap<Key, (u64, Vec<u8>)>),
    Log(Log),
}

impl Default for Updates {
    fn default() -> Self {
        Self::Latest(HashMap::new())
    }
}

/// A dump's updates: sorted runs (oldest first) built from earlier batches,
/// then the latest updates in arrival order, keys and encoded values back to
/// back in one buffer.
///
/// A device that sends the same leaves again and again during its dump would
/// make the log grow per update; so the runs are coalesced (merged, the
/// newest update of a key winning) whenever they and the next batch hold more
/// than twice the distinct leaves the last coalescing found. That keeps the
/// log within about twice the dump's distinct leaves plus a batch, at an
/// amortised cost of a few copies per update, and none for a dump that
/// arrives in key order (its runs are disjoint and are chained, not copied).
#[derive(Clone, Debug, Default, PartialEq)]
struct Log {
    runs: Vec<Leaves>,
    bytes: Vec<u8>,
    entries: Vec<LogEntry>,
    /// Distinct leaves found by the last coalescing.
    coalesced: usize,
}

/// Updates of a dump taken out to be sorted off the ingest (see
/// [`Delta::take_batch`]), with the runs to coalesce them with, if due.
#[derive(Debug)]
pub struct Batch {
    log: Log,
    /// Every run of the dump, oldest first, or none.
    runs: Vec<Leaves>,
}

/// A sorted [`Batch`], to be given back with [`Delta::add_run`].
#[derive(Debug)]
pub struct Run {
    leaves: Leaves,
    /// Whether it holds every run of the dump too (it replaces them).
    coalesced: bool,
}

impl Batch {
    /// Sorts the batch (last update of a key wins), and coalesces it with
    /// the runs it carries.
    pub fn sort(mut self) -> Run {
        let mut out = Builder::new();
        for (k, v) in self.log.sorted() {
            out.push(k, v);
        }
        let newest = out.finish();
        if self.runs.is_empty() {
            return Run {
                leaves: newest,
                coalesced: false,
            };
        }
        self.runs.push(newest);
        let leaves = Leaves::concat_disjoint(&self.runs).unwrap_or_else(|| {
            let sources = self.runs.iter().map(Leaves::source).collect();
            Leaves::default().merge(Union::new(sources), &Ranges::default(), None)
        });
        Run {
            leaves,
            coalesced: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct LogEntry {
    start: usize,
    key_len: u32,
    value_len: u32,
}

impl Log {
    fn push(&mut self, key: &str, value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.extend_from_slice(value);
        self.entries.push(LogEntry {
            start,
            key_len: key.len() as u32,
            value_len: (self.bytes.len() - start - key.len()) as u32,
        });
    }

    fn key(&self, e: &LogEntry) -> &str {
        let bytes = &self.bytes[e.start..e.start + e.key_len as usize];
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    fn value(&self, e: &LogEntry) -> &[u8] {
        let start = e.start + e.key_len as usize;
        &self.bytes[start..start + e.value_len as usize]
    }

    /// The arrival-order entries sorted by key, the last of equal keys only.
    fn sorted(&mut self) -> impl Iterator<Item = (&str, &[u8])> {
        // Stable: of equal keys the one received last stays last.
        let bytes = &self.bytes;
        let key = |e: &LogEntry| &bytes[e.start..e.start + e.key_len as usize];
        self.entries.sort_by(|a, b| key(a).cmp(key(b)));
        let log = &*self;
        let mut iter = log.entries.iter().peekable();
        std::iter::from_fn(move || {
            loop {
                let e = iter.next()?;
                if iter.peek().is_some_and(|n| key(n) == key(e)) {
                    continue;
                }
                return Some((log.key(e), log.value(e)));
            }
        })
    }
}

impl Delta {
    /// An empty delta.
    pub fn new() -> Self {
        Self::default()
    }

    /// A delta that replaces everything under `roots`: it starts by deleting
    /// what they match, and what the dump sends then re-creates what still
    /// exists. The roots are subscription paths, read as patterns (gNMI
    /// wildcards, origins and module prefixes as [`PathPattern`] reads them):
    /// the replace prunes exactly the leaves of running they match.
    pub fn replacing(roots: &[Path]) -> Self {
        let mut delta = Self::new();
        for root in roots {
            if root.is_root() && root.origin().is_none() {
                // Everything: one range, no scan.
                delta.delete(Subtree::new(root));
            } else {
                delta.patterns.push(PathPattern::new(root));
            }
        }
        delta.updates = Updates::Log(Log::default());
        delta
    }

    /// Records an update of leaf `key` to `value`.
    pub fn update(&mut self, key: Key, value: Value) {
        self.update_ref(&key, &value);
    }

    /// Records an update of leaf `key` to `value`, copying only what it keeps.
    pub fn update_ref(&mut self, key: &str, value: &Value) {
        self.update_encoded(key, &value.encode_to_vec());
    }

    /// Records an update of leaf `key` to the protobuf-encoded `TypedValue`
    /// `value` (as prost encodes it: running compares values by their bytes).
    pub fn update_encoded(&mut self, key: &str, value: &[u8]) {
        self.last += 1;
        let seq = self.last;
        match &mut self.updates {
            Updates::Latest(map) => match map.entry_ref(key) {
                // Churn changes the same leaves again and again: keep the
                // key and, mostly, the value's buffer.
                EntryRef::Occupied(mut held) => {
                    let held = held.get_mut();
                    held.0 = seq;
                    held.1.clear();
                    held.1.extend_from_slice(value);
                }
                EntryRef::Vacant(slot) => {
                    slot.insert((seq, value.to_vec()));
                }
            },
            Updates::Log(log) => log.push(key, value),
        }
    }

    /// For a dump: takes the updates that arrived since the last batch, if
    /// there are at least `min`, so that they can be sorted elsewhere. The
    /// caller gives the sorted [`Run`] back with [`add_run`](Self::add_run)
    /// before taking another batch and before any delete is recorded: runs
    /// must come back in the order their batches were taken.
    pub fn take_batch(&mut self, min: usize) -> Option<Batch> {
        match &mut self.updates {
            Updates::Log(log) if log.entries.len() >= min.max(1) => {
                let held = log.entries.len() + log.runs.iter().map(Leaves::len).sum::<usize>();
                let coalesce = held > 2 * log.coalesced.max(min.max(1));
                Some(Batch {
                    log: Log {
                        bytes: std::mem::take(&mut log.bytes),
                        entries: std::mem::take(&mut log.entries),
                        ..Log::default()
                    },
                    runs: if coalesce {
                        std::mem::take(&mut log.runs)
                    } else {
                        Vec::new()
                    },
                })
            }
            _ => None,
        }
    }

    /// A lower bound of the distinct leaves the delta updates: exact for
    /// the map form, the largest sorted run for a dump's log (after a
    /// coalescing, every leaf received before it).
    pub fn leaves_at_least(&self) -> usize {
        match &self.updates {
            Updates::Latest(map) => map.len(),
            Updates::Log(log) => log.runs.iter().map(Leaves::len).max().unwrap_or(0),
        }
    }

    /// Number of updates a [`take_batch`](Self::take_batch) would take now.
    pub fn unsorted(&self) -> usize {
        match &self.updates {
            Updates::Log(log) => log.entries.len(),
            Updates::Latest(_) => 0,
        }
    }

    /// Gives back a sorted batch: it holds updates older than any update
    /// received since it was taken.
    pub fn add_run(&mut self, run: Run) {
        match &mut self.updates {
            Updates::Log(log) if run.coalesced => {
                log.coalesced = run.leaves.len();
                log.runs = vec![run.leaves];
            }
            Updates::Log(log) => log.runs.push(run.leaves),
            Updates::Latest(_) => unreachable!("a delete was recorded while a batch was out"),
        }
    }

    /// Records the delete of a subtree (a single leaf is a subtree too).
    pub fn delete(&mut self, subtree: Subtree) {
        // Updates held so far get arrival numbers below this delete's.
        self.make_latest();
        self.last += 1;
        // Earlier deletes inside the subtree (its own root included) are
        // superseded. A delete inside an earlier one is kept: its later
        // number matters for the updates between the two.
        // Every key of the subtree starts with its root's text: most deletes
        // (churn deletes single leaves) find nothing there and skip the
        // exact search.
        let root: &str = subtree.path.as_ref();
        let maybe_inside = subtree.root
            || self
                .deletes
                .range::<str, _>((Bound::Included(root), Bound::Unbounded))
                .next()
                .is_some_and(|(k, _)| k.starts_with(root));
        if maybe_inside {
            let inside: Vec<Key> = range_in(&self.deletes, &subtree).cloned().collect();
            for key in inside {
                self.deletes.remove(&key);
            }
        }
        self.deletes
            .insert(subtree.path.clone(), (subtree, self.last));
    }

    /// Turns a dump's arrival-order log into the map, numbering its updates
    /// in the order they arrived.
    fn make_latest(&mut self) {
        let Updates::Log(log) = &mut self.updates else {
            return;
        };
        let mut map = HashMap::new();
        let mut last = self.last;
        let mut keep = |k: &str, v: &[u8]| {
            last += 1;
            map.insert(Key::from(k), (last, v.to_vec()));
        };
        for run in &log.runs {
            run.for_each(&mut keep);
        }
        for e in &log.entries {
            keep(log.key(e), log.value(e));
        }
        self.last = last;
        self.updates = Updates::Latest(map);
    }

    /// Number of operations held (updates plus subtree deletes). Counts every
    /// update of a dump's log, repeated keys included.
    pub fn len(&self) -> usize {
        let updates = match &self.updates {
            Updates::Latest(map) => map.len(),
            Updates::Log(log) => {
                log.entries.len() + log.runs.iter().map(Leaves::len).sum::<usize>()
            }
        };
        updates + self.deletes.len() + self.patterns.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The deletes as key ranges, the patterns' resolved against `leaves`.
    fn ranges(&self, leaves: &Leaves) -> Ranges {
        let mut ranges = Ranges::default();
        for (subtree, _) in self.deletes.values() {
            subtree.key_ranges().for_each(|range| ranges.add(range));
        }
        for pattern in &self.patterns {
            pattern_ranges(leaves, pattern, &mut ranges);
        }
        ranges.normalise();
        ranges
    }
}

/// Adds to `ranges` the subtrees of `leaves` that `pattern` matches: one
/// exact key and one prefix range per node it names (an interface's `config`
/// container, say), not one per leaf.
///
/// The scan walks the sorted keys but jumps over every subtree it has decided:
/// past a matched node, and past a node that rules out everything below it
/// (an element that does not match before any `...`, another origin). So it
/// reads about one key per node visited at the depth of the pattern, not every
/// leaf: `/interfaces/interface[name=*]/config` on a device with a million
/// leaves reads a few keys per interface. Only below a `...` does it read
/// every leaf that the elements before it leave in play.
fn pattern_ranges(leaves: &Leaves, pattern: &PathPattern, ranges: &mut Ranges) {
    let mut spans = Vec::new();
    let mut key = String::new();
    let mut cursor = leaves.cursor();
    while cursor.next(&mut key).is_some() {
        let past = match pattern.match_key(&key, &mut spans) {
            PatternOutcome::Match(end) => {
                let node = &key[..end];
                ranges.add(leaves::key_range(node, true));
                let below = format!("{node}/");
                ranges.add(leaves::key_range(&below, false));
                (key.len() > end).then_some(below)
            }
            PatternOutcome::Skip(end) => Some(key[..end].to_owned()),
            PatternOutcome::Miss => None,
        };
        // Jump to the first key that does not start with `past`.
        // `past` ends in `/` or `:`: raising that byte gives the first text
        // after every key that starts with it.
        if let Some(mut past) = past
            && let Some(last) = past.pop()
        {
            past.push(char::from(last as u8 + 1));
            cursor = leaves.cursor_from(&past);
        }
    }
}

/// Keys of `map` inside `subtree`, in order.
fn range_in<'a, V>(
    map: &'a BTreeMap<Key, V>,
    subtree: &'a Subtree,
) -> impl Iterator<Item = &'a Key> + 'a {
    subtree.prefixes().flat_map(move |(prefix, exact)| {
        let start: Key = prefix.clone().into();
        map.range::<Key, _>((Bound::Included(start), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(move |k| {
                if exact {
                    ***k == *prefix
                } else {
                    k.starts_with(prefix.as_str())
                }
            })
            .collect::<Vec<_>>()
    })
}

/// A map's updates sorted by key. When they touch a good part of `leaves`
/// (churn: a commit of a few hundred thousand updates holds most leaves of
/// the device), walking `leaves` in order and picking the held keys by hash
/// costs a fraction of sorting them by comparison, since canonical keys share
/// long prefixes; only keys new to `leaves` are then sorted.
fn sorted_updates(
    mut map: HashMap<Key, (u64, Vec<u8>)>,
    leaves: &Leaves,
) -> Vec<(Key, (u64, Vec<u8>))> {
    let by_key = |a: &(Key, (u64, Vec<u8>)), b: &(Key, (u64, Vec<u8>))| a.0.cmp(&b.0);
    if map.len() < leaves.len() / 8 {
        let mut held: Vec<_> = map.into_iter().collect();
        held.sort_unstable_by(by_key);
        return held;
    }
    let mut known = Vec::with_capacity(map.len());
    leaves.for_each(|k, _| {
        if let Some(entry) = map.remove_entry(k) {
            known.push(entry);
        }
    });
    if map.is_empty() {
        return known;
    }
    let mut new: Vec<_> = map.into_iter().collect();
    new.sort_unstable_by(by_key);
    // Two sorted runs of distinct keys: merge them.
    let mut out = Vec::with_capacity(known.len() + new.len());
    let mut new = new.into_iter().peekable();
    for entry in known {
        while let Some(n) = new.next_if(|n| n.0 < entry.0) {
            out.push(n);
        }
        out.push(entry);
    }
    out.extend(new);
    out
}

/// The arrival number of the newest held delete covering each key, for keys
/// visited in increasing order. Subtrees cover prefix ranges of keys (and
/// their roots), and prefix ranges nest or are disjoint, so the ranges that
/// hold the current key form a stack, innermost on top.
struct Covering {
    /// `[lo, hi)` ranges (`hi` `None`: unbounded) with their delete's number,
    /// by `lo`, outer before inner.
    ranges: Vec<(Vec<u8>, Option<Vec<u8>>, u64)>,
    next: usize,
    /// Ranges holding the last key: `hi` and the newest number of it and
    /// every range under it.
    open: Vec<(Option<Vec<u8>>, u64)>,
}

impl Covering {
    fn new(deletes: &BTreeMap<Key, (Subtree, u64)>) -> Self {
        let mut ranges = Vec::new();
        for (subtree, seq) in deletes.values() {
            for (lo, hi) in subtree.key_ranges() {
                ranges.push((lo, hi, *seq));
            }
        }
        // Equal starts: the wider range (the larger end, unbounded last) first.
        ranges.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| match (&a.1, &b.1) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => y.cmp(x),
            })
        });
        Self {
            ranges,
            next: 0,
            open: Vec::new(),
        }
    }

    /// The newest number of a delete covering `key` (0: none); keys must come
    /// in increasing order.
    fn newest(&mut self, key: &str) -> u64 {
        let key = key.as_bytes();
        let ended = |hi: &Option<Vec<u8>>| hi.as_deref().is_some_and(|h| h <= key);
        while self.open.last().is_some_and(|(hi, _)| ended(hi)) {
            self.open.pop();
        }
        while let Some((lo, hi, seq)) = self.ranges.get(self.next) {
            if lo.as_slice() > key {
                break;
            }
            self.next += 1;
            if !ended(hi) {
                // It starts inside every open range, so it nests in them.
                let below = self.open.last().map_or(0, |(_, newest)| *newest);
                self.open.push((hi.clone(), below.max(*seq)));
            }
        }
        self.open.last().map_or(0, |(_, newest)| *newest)
    }
}

/// The net change one commit made: each leaf at most once, either updated (new
/// or changed value) or deleted. Both sides are sorted by key and stored as
/// compactly as running, so the first commit of a large device does not hold a
/// second full copy of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    updates: Leaves,
    deletes: Leaves,
}

impl Change {
    /// A change of these updates and deletes, given in any order (a key
    /// repeated keeps its last value). A key must not be both updated and
    /// deleted.
    pub fn new(
        updates: impl IntoIterator<Item = (Key, Value)>,
        deletes: impl IntoIterator<Item = Key>,
    ) -> Self {
        Self {
            updates: leaves::from_unsorted(
                updates
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.encode_to_vec()))
                    .collect(),
            ),
            deletes: leaves::from_unsorted(
                deletes
                    .into_iter()
                    .map(|k| (k.to_string(), Vec::new()))
                    .collect(),
            ),
        }
    }

    /// Whether the commit changed nothing.
    pub fn is_empty(&self) -> bool {
        self.updates.len() == 0 && self.deletes.len() == 0
    }

    /// Number of leaves updated.
    pub fn update_count(&self) -> usize {
        self.updates.len()
    }

    /// Number of leaves deleted.
    pub fn delete_count(&self) -> usize {
        self.deletes.len()
    }

    /// Leaves created or changed, with their new values, sorted by key.
    pub fn updates(&self) -> Iter<'_> {
        Iter::new(self.updates.cursor())
    }

    /// Leaves removed (never a subtree root that was not itself a leaf),
    /// sorted.
    pub fn deletes(&self) -> impl Iterator<Item = String> + '_ {
        Iter::new(self.deletes.cursor()).map(|(k, _)| k)
    }

    /// Calls `f` with every update, its value protobuf-encoded, in key order.
    pub fn for_each_update_encoded(&self, f: impl FnMut(&str, &[u8])) {
        self.updates.for_each(f);
    }

    /// Calls `f` with every deleted key, in order.
    pub fn for_each_delete(&self, mut f: impl FnMut(&str)) {
        self.deletes.for_each(|k, _| f(k));
    }

    /// Writes the change in netsync's own compact form (what
    /// [`Change::read`] reads back); about a copy of its memory.
    pub fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.updates.write(out)?;
        self.deletes.write(out)
    }

    /// Reads what [`Change::write`] wrote, checking it throughout.
    pub fn read(mut bytes: &[u8]) -> Result<Change, String> {
        let updates = Leaves::read(&mut bytes)?;
        let deletes = Leaves::read(&mut bytes)?;
        if !bytes.is_empty() {
            return Err("trailing bytes after a change".into());
        }
        Ok(Change { updates, deletes })
    }
}

/// Leaves with their values decoded, in key order.
pub struct Iter<'a> {
    cursor: Cursor<'a>,
    key: String,
    /// Stop at the first key not starting with this (a subtree range).
    within: Option<(String, bool)>,
}

impl<'a> Iter<'a> {
    fn new(cursor: Cursor<'a>) -> Self {
        Self {
            cursor,
            key: String::new(),
            within: None,
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = (String, Value);

    fn next(&mut self) -> Option<Self::Item> {
        let value = self.cursor.next(&mut self.key)?;
        if let Some((prefix, exact)) = &self.within {
            let inside = if *exact {
                self.key == *prefix
            } else {
                self.key.starts_with(prefix.as_str())
            };
            if !inside {
                // Park the cursor: nothing further can be inside.
                self.within = Some((String::new(), true));
                self.cursor = Cursor::empty();
                return None;
            }
        }
        Some((self.key.clone(), decode(value)))
    }
}

/// A stored value. Values are encoded by this module, so decoding cannot fail;
/// a default value stands in if it ever did.
fn decode(bytes: &[u8]) -> Value {
    Value::decode(bytes).unwrap_or_default()
}

impl Running {
    /// Empty running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Running holding exactly `leaves` (in any order; a key repeated keeps
    /// its last value).
    pub fn from_leaves(leaves: impl IntoIterator<Item = (Key, Value)>) -> Self {
        Self {
            leaves: leaves::from_unsorted(
                leaves
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.encode_to_vec()))
                    .collect(),
            ),
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.len() == 0
    }

    /// The value of one leaf.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.leaves.get(key).map(|v| decode(&v))
    }

    /// The value of one leaf, protobuf-encoded as running stores it.
    pub fn get_encoded(&self, key: &str) -> Option<Vec<u8>> {
        self.leaves.get(key)
    }

    /// Whether leaf `key` exists with a value that means `value`, in whatever
    /// encoding (see [`crate::value::same_meaning`]).
    pub fn holds(&self, key: &str, value: &Value) -> bool {
        self.leaves
            .get(key)
            .is_some_and(|stored| crate::value::encoded_same_meaning(&stored, value))
    }

    /// Whether leaf `key` exists.
    pub fn contains(&self, key: &str) -> bool {
        self.leaves.get(key).is_some()
    }

    /// Every leaf, sorted by key.
    pub fn iter(&self) -> Iter<'_> {
        Iter::new(self.leaves.cursor())
    }

    /// Calls `f` with every leaf, its value protobuf-encoded, in key order.
    pub fn for_each_encoded(&self, f: impl FnMut(&str, &[u8])) {
        self.leaves.for_each(f);
    }

    /// Writes running in netsync's own compact form (what [`Running::read`]
    /// reads back); about a copy of its memory.
    pub fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.leaves.write(out)
    }

    /// Reads what [`Running::write`] wrote, checking it throughout.
    pub fn read(mut bytes: &[u8]) -> Result<Running, String> {
        let leaves = Leaves::read(&mut bytes)?;
        if !bytes.is_empty() {
            return Err("trailing bytes after running".into());
        }
        Ok(Running { leaves })
    }

    /// The leaves of a subtree, sorted by key.
    pub fn subtree<'a>(
        &'a self,
        subtree: &'a Subtree,
    ) -> impl Iterator<Item = (String, Value)> + 'a {
        subtree.prefixes().flat_map(move |(prefix, exact)| {
            let mut iter = Iter::new(self.leaves.cursor_from(&prefix));
            iter.within = Some((prefix, exact));
            iter
        })
    }

    /// Applies a net change as a commit event or the change log carries it:
    /// leaf deletes, then leaf updates.
    pub fn apply_change(&mut self, change: &Change) {
        if self.is_empty() && change.deletes.len() == 0 {
            // Loading the first commit of a log: it is running.
            self.leaves = change.updates.clone();
            return;
        }
        let mut deletes = Ranges::default();
        change.deletes.for_each(|k, _| deletes.add_exact(k));
        deletes.normalise();
        self.leaves = self.leaves.merge(change.updates.source(), &deletes, None);
    }

    /// Applies `delta` (deletes first, then updates; see [`Delta`]) and returns
    /// the new running with the net change. `self` is left as it was.
    pub fn apply(&self, mut delta: Delta) -> (Running, Change) {
        let deletes = delta.ranges(&self.leaves);
        let mut sink = ChangeSink::default();
        // With nothing before, the change is everything after: share it.
        let first = self.is_empty();
        let leaves = match &mut delta.updates {
            Updates::Log(log) => {
                let newest = Batch {
                    log: Log {
                        bytes: std::mem::take(&mut log.bytes),
                        entries: std::mem::take(&mut log.entries),
                        ..Log::default()
                    },
                    runs: Vec::new(),
                }
                .sort();
                let mut runs = std::mem::take(&mut log.runs);
                runs.push(newest.leaves);
                let disjoint = Leaves::concat_disjoint(&runs);
                tracing::debug!(
                    runs = runs.len(),
                    disjoint = disjoint.is_some(),
                    "merging a dump"
                );
                match disjoint {
                    // The first dump of a device: nothing to merge with.
                    Some(all) if first => all,
                    Some(all) => self.leaves.merge(all.source(), &deletes, Some(&mut sink)),
                    None => {
                        let sources = runs.iter().map(Leaves::source).collect();
                        self.leaves.merge(
                            Union::new(sources),
                            &deletes,
                            (!first).then_some(&mut sink),
                        )
                    }
                }
            }
            Updates::Latest(map) => {
                let held = sorted_updates(std::mem::take(map), &self.leaves);
                let mut covering = Covering::new(&delta.deletes);
                let updates = held
                    .iter()
                    .filter(|(k, (seq, _))| covering.newest(k) < *seq)
                    .map(|(k, (_, v))| (&**k, v.as_slice()));
                self.leaves.merge(
                    IterSource::new(updates),
                    &deletes,
                    (!first).then_some(&mut sink),
                )
            }
        };
        let change = if first {
            Change {
                updates: leaves.clone(),
                deletes: Leaves::default(),
            }
        } else {
            Change {
                updates: sink.updates.finish(),
                deletes: sink.deletes.finish(),
            }
        };
        (Running { leaves }, change)
    }
}

#[cfg(test)]
mod tests {
    use netsync_proto::gnmi::typed_value;
    use proptest::prelude::*;

    use super::*;

    fn key(s: &str) -> Key {
        Path::parse(s).unwrap().to_string().into()
    }

    fn int(v: i64) -> Value {
        TypedValue {
            value: Some(typed_value::Value::IntVal(v)),
        }
    }

    fn subtree(s: &str) -> Subtree {
        Subtree::new(&Path::parse(s).unwrap())
    }

    fn running(leaves: &[(&str, i64)]) -> Running {
        Running::from_leaves(leaves.iter().map(|(k, v)| (key(k), int(*v))))
    }

    #[test]
    fn subtree_membership() {
        let s = subtree("/interfaces/interface");
        assert!(s.contains("/interfaces/interface"));
        assert!(s.contains("/interfaces/interface/x"));
        assert!(s.contains("/interfaces/interface[name=eth0]/mtu"));
        assert!(!s.contains("/interfaces/interfaces"));
        assert!(!s.contains("/interfaces/interface-x"));
        let keyed = subtree("/interfaces/interface[name=eth0]");
        assert!(keyed.contains("/interfaces/interface[name=eth0]/mtu"));
        assert!(!keyed.contains("/interfaces/interface[name=eth01]/mtu"));
        assert!(!keyed.contains("/interfaces/interface[name=eth0][x=1]/mtu"));
        let root = subtree("/");
        assert!(root.contains("/anything/at/all"));
        assert!(
            root.contains("openconfig:/interfaces/x"),
            "the root covers every origin"
        );
        let oc = subtree("oc:/");
        assert!(oc.contains("oc:/a"));
        assert!(!oc.contains("/a"));
        // A name ending in an escaped '/' is not a root.
        let odd = subtree("/a\\/");
        assert!(odd.contains("/a\\/"));
        assert!(
            !odd.contains("/a\\/x"),
            "a sibling named a/x is not below a/"
        );
    }

    #[test]
    fn update_then_delete_ends_deleted() {
        let mut d = Delta::new();
        d.update(key("/a/b"), int(1));
        d.delete(subtree("/a/b"));
        let (r, change) = running(&[("/a/b", 0)]).apply(d);
        assert!(r.is_empty());
        assert_eq!(change.deletes().collect::<Vec<_>>(), vec!["/a/b"]);
        assert_eq!(change.update_count(), 0);
    }

    #[test]
    fn subtree_delete_then_update_inside_ends_present() {
        let mut d = Delta::new();
        d.delete(subtree("/a"));
        d.update(key("/a/x[k=1]/v"), int(2));
        let before = running(&[("/a/x[k=1]/v", 1), ("/a/y", 1), ("/b", 1)]);
        let (r, change) = before.apply(d);
        assert_eq!(r, running(&[("/a/x[k=1]/v", 2), ("/b", 1)]));
        assert_eq!(change.deletes().collect::<Vec<_>>(), vec!["/a/y"]);
        assert_eq!(
            change.updates().collect::<Vec<_>>(),
            vec![("/a/x[k=1]/v".to_string(), int(2))]
        );
    }

    #[test]
    fn replace_with_same_values_changes_nothing() {
        let before = running(&[("/a", 1), ("/b", 2)]);
        let mut d = Delta::replacing(&[Path::root()]);
        d.update(key("/a"), int(1));
        d.update(key("/b"), int(2));
        let (r, change) = before.apply(d);
        assert_eq!(r, before);
        assert!(change.is_empty());
    }

    #[test]
    fn replace_prunes_only_within_its_roots() {
        let before = running(&[("/a/x", 1), ("/a/y", 1), ("/b/z", 1)]);
        let mut d = Delta::replacing(&[Path::parse("/a").unwrap()]);
        d.update(key("/a/x"), int(1));
        let (r, change) = before.apply(d);
        assert_eq!(r, running(&[("/a/x", 1), ("/b/z", 1)]));
        assert_eq!(change.deletes().collect::<Vec<_>>(), vec!["/a/y"]);
    }

    #[test]
    fn replace_prunes_what_wildcard_roots_match() {
        let before = running(&[
            ("/interfaces/interface[name=eth0]/config/mtu", 1),
            ("/interfaces/interface[name=eth0]/state/mtu", 1),
            ("/interfaces/interface[name=eth1/1]/config/mtu", 1),
            ("/interfaces/interface[name=eth1/1]/config/description", 1),
            ("/interfaces/interface[name=eth1/1]/state/mtu", 1),
            ("/interfaces/interface[name=eth2]/config/mtu", 1),
            ("/interfaces-x/a", 1),
            ("/system/config/hostname", 1),
        ]);
        for root in [
            "/interfaces/interface[name=*]/config",
            "/interfaces/interface/config",
            "/interfaces/*/config",
            "openconfig:/interfaces/interface/config",
            "/openconfig-interfaces:interfaces/interface[name=*]/config",
            "/.../config",
        ] {
            // eth1/1 is gone; eth0 changed; eth2 stays as it was.
            let mut d = Delta::replacing(&[Path::parse(root).unwrap()]);
            d.update(key("/interfaces/interface[name=eth0]/config/mtu"), int(2));
            d.update(key("/interfaces/interface[name=eth2]/config/mtu"), int(1));
            let (r, change) = before.apply(d);
            let mut expected = running(&[
                ("/interfaces/interface[name=eth0]/config/mtu", 2),
                ("/interfaces/interface[name=eth0]/state/mtu", 1),
                ("/interfaces/interface[name=eth1/1]/state/mtu", 1),
                ("/interfaces/interface[name=eth2]/config/mtu", 1),
                ("/interfaces-x/a", 1),
                ("/system/config/hostname", 1),
            ]);
            if root == "/.../config" {
                // It names /system/config too, which the dump did not carry.
                let mut d = Delta::new();
                d.delete(subtree("/system/config"));
                expected = expected.apply(d).0;
            }
            assert_eq!(r, expected, "{root}");
            assert!(
                change
                    .deletes()
                    .any(|k| k == key("/interfaces/interface[name=eth1/1]/config/mtu").as_ref()),
                "{root}"
            );
        }
    }

    #[test]
    fn replace_prunes_across_origins() {
        let before = running(&[("oc:/a/x", 1), ("/a/y", 1), ("cli:/a/z", 1), ("/b", 1)]);
        let d = Delta::replacing(&[Path::parse("oc:/a").unwrap()]);
        let (r, _) = before.apply(d);
        assert_eq!(r, running(&[("cli:/a/z", 1), ("/b", 1)]));
        let d = Delta::replacing(&[Path::parse("/a").unwrap()]);
        let (r, _) = before.apply(d);
        assert_eq!(r, running(&[("/b", 1)]));
        let d = Delta::replacing(&[Path::parse("oc:/").unwrap()]);
        let (r, _) = before.apply(d);
        assert_eq!(r, running(&[("cli:/a/z", 1)]));
    }

    #[test]
    fn an_empty_dump_still_prunes() {
        let before = running(&[("/l[k=1]/a", 1), ("/l[k=2]/a", 1), ("/m", 1)]);
        let d = Delta::replacing(&[Path::parse("/l[k=*]").unwrap()]);
        assert!(!d.is_empty());
        let (r, change) = before.apply(d);
        assert_eq!(r, running(&[("/m", 1)]));
        assert_eq!(change.delete_count(), 2);
    }

    #[test]
    fn snapshots_are_independent() {
        let before = running(&[("/a", 1)]);
        let snapshot = before.clone();
        let mut d = Delta::new();
        d.update(key("/a"), int(2));
        let (after, _) = before.apply(d);
        assert_eq!(snapshot.get("/a"), Some(int(1)));
        assert_eq!(after.get("/a"), Some(int(2)));
    }

    #[test]
    fn a_dump_that_repeats_its_leaves_stays_bounded_by_its_distinct_leaves() {
        let batch = 100;
        let mut delta = Delta::replacing(&[]);
        for round in 0..1000 {
            for i in 0..30 {
                delta.update_ref(&format!("/a/l{i}"), &int(round));
            }
            if let Some(b) = delta.take_batch(batch) {
                delta.add_run(b.sort());
            }
            // 30,000 updates of 30 leaves: never more than about twice a
            // batch held (before coalescing, every update was).
            assert!(delta.len() <= 4 * batch, "{} held", delta.len());
        }
        assert!(delta.leaves_at_least() <= 30);
        let (after, _) = Running::new().apply(delta);
        assert_eq!(after.len(), 30);
        assert_eq!(after.get("/a/l0"), Some(int(999)));
    }

    #[test]
    fn deltas_stay_bounded_by_distinct_paths() {
        let mut d = Delta::new();
        for i in 0..10_000 {
            d.update(key(&format!("/p{}", i % 10)), int(i));
            if i % 7 == 0 {
                d.delete(subtree(&format!("/p{}", i % 10)));
            }
        }
        assert!(d.len() <= 20, "{}", d.len());
    }

    /// One stream operation for the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Update(String, i64),
        Delete(String),
    }

    fn arb_path() -> impl Strategy<Value = String> {
        let elem = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("a-b".to_string()),
            Just("l[k=1]".to_string()),
            Just("l[k=2]".to_string()),
            Just("l".to_string()),
        ];
        let origin = prop_oneof![4 => Just(""), 1 => Just("oc:")];
        let root = prop_oneof![Just("/".to_string()), Just("oc:/".to_string())];
        prop_oneof![
            8 => (origin, prop::collection::vec(elem, 1..4))
                .prop_map(|(o, e)| format!("{o}/{}", e.join("/"))),
            1 => root,
        ]
    }

    /// Subscription paths over the same names, wildcards included.
    fn arb_pattern() -> impl Strategy<Value = String> {
        let elem = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("l".to_string()),
            Just("l[k=1]".to_string()),
            Just("l[k=*]".to_string()),
            Just("m:a".to_string()),
            Just("*".to_string()),
            Just("...".to_string()),
        ];
        let origin = prop_oneof![3 => Just(""), 1 => Just("oc:"), 1 => Just("x:")];
        (origin, prop::collection::vec(elem, 0..4))
            .prop_map(|(o, e)| format!("{o}/{}", e.join("/")))
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (arb_path(), 0i64..3).prop_map(|(p, v)| Op::Update(p, v)),
            1 => arb_path().prop_map(Op::Delete),
        ]
    }

    /// The reference: replays operations one by one on a plain map.
    fn replay(start: &BTreeMap<String, i64>, ops: &[Op]) -> BTreeMap<String, i64> {
        let mut m = start.clone();
        for op in ops {
            match op {
                Op::Update(p, v) => {
                    m.insert(key(p).to_string(), *v);
                }
                Op::Delete(p) => {
                    let s = subtree(p);
                    m.retain(|k, _| !s.contains(k));
                }
            }
        }
        m
    }

    proptest! {
        /// Coalescing into a delta and applying it equals replaying the stream,
        /// and the reported change turns the old map into the new one.
        #[test]
        fn delta_equals_replay(
            start in prop::collection::btree_map(arb_path(), 0i64..3, 0..12),
            ops in prop::collection::vec(arb_op(), 0..40),
        ) {
            let start: BTreeMap<String, i64> =
                start.into_iter().map(|(k, v)| (key(&k).to_string(), v)).collect();
            let before = Running::from_leaves(start.iter().map(|(k, v)| (Key::from(k.as_str()), int(*v))));
            let mut delta = Delta::new();
            for op in &ops {
                match op {
                    Op::Update(p, v) => delta.update(key(p), int(*v)),
                    Op::Delete(p) => delta.delete(subtree(p)),
                }
            }
            let (after, change) = before.apply(delta);
            let expected = replay(&start, &ops);
            let got: BTreeMap<String, i64> = after
                .iter()
                .map(|(k, v)| {
                    let Some(typed_value::Value::IntVal(i)) = v.value else { unreachable!() };
                    (k.to_string(), i)
                })
                .collect();
            prop_assert_eq!(&got, &expected);

            // Applying the change to the old map gives the new one.
            let mut rebuilt = start.clone();
            for k in change.deletes() {
                prop_assert!(rebuilt.remove(&k).is_some(), "deleted leaf {} was not there", k);
            }
            for (k, v) in change.updates() {
                let Some(typed_value::Value::IntVal(i)) = v.value else { unreachable!() };
                prop_assert!(start.get(&k) != Some(&i), "unchanged leaf {} reported", k);
                rebuilt.insert(k, i);
            }
            prop_assert_eq!(rebuilt, expected);
        }

        /// A replace with pattern roots leaves running equal to the leaves
        /// outside what the patterns match, plus the dump; whether the dump
        /// arrived as a log or with a delete in it (a map).
        #[test]
        fn replace_equals_outside_plus_dump(
            start in prop::collection::btree_map(arb_path(), 0i64..3, 0..16),
            roots in prop::collection::vec(arb_pattern(), 1..3),
            dump in prop::collection::btree_map(arb_path(), 0i64..3, 0..8),
            delete_in_dump: bool,
        ) {
            let start: BTreeMap<String, i64> =
                start.into_iter().map(|(k, v)| (key(&k).to_string(), v)).collect();
            let before = Running::from_leaves(start.iter().map(|(k, v)| (Key::from(k.as_str()), int(*v))));
            let roots: Vec<Path> = roots.iter().map(|r| Path::parse(r).unwrap()).collect();
            let patterns: Vec<PathPattern> = roots.iter().map(PathPattern::new).collect();
            let mut delta = Delta::replacing(&roots);
            if delete_in_dump {
                // A delete of something absent turns the log into the map.
                delta.delete(subtree("/nowhere"));
            }
            for (k, v) in &dump {
                delta.update(key(k), int(*v));
            }
            let (after, change) = before.apply(delta);
            let mut expected: BTreeMap<String, i64> = start
                .iter()
                .filter(|(k, _)| !patterns.iter().any(|p| p.matches(k)))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for (k, v) in &dump {
                expected.insert(key(k).to_string(), *v);
            }
            let got: BTreeMap<String, i64> = after
                .iter()
                .map(|(k, v)| {
                    let Some(typed_value::Value::IntVal(i)) = v.value else { unreachable!() };
                    (k, i)
                })
                .collect();
            prop_assert_eq!(&got, &expected);
            let mut rebuilt = start.clone();
            for k in change.deletes() {
                prop_assert!(rebuilt.remove(&k).is_some());
            }
            for (k, v) in change.updates() {
                let Some(typed_value::Value::IntVal(i)) = v.value else { unreachable!() };
                rebuilt.insert(k, i);
            }
            prop_assert_eq!(rebuilt, expected);
        }

        /// A dump's log, sorted in batches taken at any points, applies like
        /// the same operations held in a map.
        #[test]
        fn batched_dump_equals_replay(
            start in prop::collection::btree_map(arb_path(), 0i64..3, 0..12),
            ops in prop::collection::vec((arb_op(), 0usize..4), 0..40),
        ) {
            let start: BTreeMap<String, i64> =
                start.into_iter().map(|(k, v)| (key(&k).to_string(), v)).collect();
            let before = Running::from_leaves(start.iter().map(|(k, v)| (Key::from(k.as_str()), int(*v))));
            let mut delta = Delta::replacing(&[]);
            for (op, batch) in &ops {
                match op {
                    Op::Update(p, v) => delta.update_ref(&key(p), &int(*v)),
                    Op::Delete(p) => delta.delete(subtree(p)),
                }
                if let Some(b) = delta.take_batch(*batch) {
                    delta.add_run(b.sort());
                }
            }
            let plain: Vec<Op> = ops.iter().map(|(op, _)| op.clone()).collect();
            let (after, _) = before.apply(delta);
            let got: BTreeMap<String, i64> = after
                .iter()
                .map(|(k, v)| {
                    let Some(typed_value::Value::IntVal(i)) = v.value else { unreachable!() };
                    (k, i)
                })
                .collect();
            prop_assert_eq!(got, replay(&start, &plain));
        }
    }
}
