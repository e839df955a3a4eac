//! Running and the deltas that change it: a persistent sorted map from canonical
//! path to value (cheap consistent snapshots), the per-path coalesced delta the
//! ingest fills, and the commit step that applies one to the other and reports
//! the net change.
//!
//! Leaves are keyed by their canonical path string. Running sorts them byte-wise
//! by that string; a subtree (a path and everything below it) is then a set of
//! contiguous ranges, found by prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use netsync_proto::gnmi::TypedValue;

use crate::path::Path;

/// A leaf's canonical path, shared between running, deltas and events.
pub type Key = Arc<str>;

/// A leaf value as the device sent it.
pub type Value = TypedValue;

/// The leaves of a datastore at one revision. Cloning is O(1) and the clone is
/// an independent snapshot: later commits never change it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Running {
    leaves: imbl::OrdMap<Key, Value>,
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
        self.prefixes().any(|(prefix, exact)| {
            if exact {
                key == prefix
            } else {
                key.starts_with(prefix.as_str())
            }
        })
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

/// Changes received and not yet committed, coalesced by path: for each leaf only
/// the latest operation is kept, so memory is bounded by the number of distinct
/// paths however fast they change.
///
/// Stream order is preserved by construction: a subtree delete drops every
/// earlier operation inside the subtree, so all operations still held were
/// received after every delete that covers them, and applying the deletes
/// first and then the updates gives the same result as replaying the stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    deletes: BTreeSet<Subtree>,
    updates: BTreeMap<Key, Value>,
}

impl Delta {
    /// An empty delta.
    pub fn new() -> Self {
        Self::default()
    }

    /// A delta that replaces everything under `roots`: it starts by deleting
    /// them, and what the dump sends then re-creates what still exists.
    pub fn replacing(roots: &[Path]) -> Self {
        let mut delta = Self::new();
        for root in roots {
            delta.delete(Subtree::new(root));
        }
        delta
    }

    /// Records an update of leaf `key` to `value`.
    pub fn update(&mut self, key: Key, value: Value) {
        self.updates.insert(key, value);
    }

    /// Records the delete of a subtree (a single leaf is a subtree too).
    pub fn delete(&mut self, subtree: Subtree) {
        // Earlier updates and deletes inside the subtree are superseded.
        let doomed: Vec<Key> = range_in(&self.updates, &subtree).cloned().collect();
        for key in doomed {
            self.updates.remove(&key);
        }
        self.deletes
            .retain(|d| !subtree.contains(&d.path) || *d == subtree);
        // A delete already covered by a wider one adds nothing.
        if !self.deletes.iter().any(|d| d.contains(&subtree.path)) {
            self.deletes.insert(subtree);
        }
    }

    /// Number of distinct operations held (updates plus subtree deletes).
    pub fn len(&self) -> usize {
        self.updates.len() + self.deletes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.deletes.is_empty()
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

/// The net change one commit made: each leaf at most once, either updated (new
/// or changed value) or deleted. Sorted by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    /// Leaves created or changed, with their new values.
    pub updates: Vec<(Key, Value)>,
    /// Leaves removed (never a subtree root that was not itself a leaf).
    pub deletes: Vec<Key>,
}

impl Change {
    /// Whether the commit changed nothing.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.deletes.is_empty()
    }
}

impl Running {
    /// Empty running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Running holding exactly `leaves`.
    pub fn from_leaves(leaves: impl IntoIterator<Item = (Key, Value)>) -> Self {
        Self {
            leaves: leaves.into_iter().collect(),
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The value of one leaf.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.leaves.get(key)
    }

    /// Every leaf, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.leaves.iter()
    }

    /// The leaves of a subtree, sorted by key.
    pub fn subtree<'a>(
        &'a self,
        subtree: &'a Subtree,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        subtree.prefixes().flat_map(move |(prefix, exact)| {
            let start: Key = prefix.clone().into();
            self.leaves
                .range::<_, Key>((Bound::Included(start), Bound::Unbounded))
                .take_while(move |(k, _)| {
                    if exact {
                        ***k == *prefix
                    } else {
                        k.starts_with(prefix.as_str())
                    }
                })
        })
    }

    /// Applies a net change as a commit event or the change log carries it:
    /// leaf deletes, then leaf updates.
    pub fn apply_change(&mut self, change: &Change) {
        for key in &change.deletes {
            self.leaves.remove(key);
        }
        for (key, value) in &change.updates {
            self.leaves.insert(key.clone(), value.clone());
        }
    }

    /// Applies `delta` (deletes first, then updates; see [`Delta`]) and returns
    /// the new running with the net change. `self` is left as it was.
    pub fn apply(&self, delta: Delta) -> (Running, Change) {
        let mut next = self.leaves.clone();
        // Old values of removed leaves, to tell a delete-then-same-value apart
        // from a real change.
        let mut removed: BTreeMap<Key, Value> = BTreeMap::new();
        for subtree in &delta.deletes {
            let doomed: Vec<Key> = Running {
                leaves: next.clone(),
            }
            .subtree(subtree)
            .map(|(k, _)| k.clone())
            .collect();
            for key in doomed {
                if let Some(old) = next.remove(&key) {
                    removed.insert(key, old);
                }
            }
        }
        let mut updates = Vec::with_capacity(delta.updates.len());
        for (key, value) in delta.updates {
            let old = next.insert(key.clone(), value.clone());
            let unchanged = match old {
                Some(old) => old == value,
                None => removed.remove(&key).is_some_and(|old| old == value),
            };
            if !unchanged {
                updates.push((key, value));
            }
        }
        let change = Change {
            updates,
            deletes: removed.into_keys().collect(),
        };
        (Running { leaves: next }, change)
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
        assert_eq!(change.deletes, vec![key("/a/b")]);
        assert!(change.updates.is_empty());
    }

    #[test]
    fn subtree_delete_then_update_inside_ends_present() {
        let mut d = Delta::new();
        d.delete(subtree("/a"));
        d.update(key("/a/x[k=1]/v"), int(2));
        let before = running(&[("/a/x[k=1]/v", 1), ("/a/y", 1), ("/b", 1)]);
        let (r, change) = before.apply(d);
        assert_eq!(r, running(&[("/a/x[k=1]/v", 2), ("/b", 1)]));
        assert_eq!(change.deletes, vec![key("/a/y")]);
        assert_eq!(change.updates, vec![(key("/a/x[k=1]/v"), int(2))]);
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
        assert_eq!(change.deletes, vec![key("/a/y")]);
    }

    #[test]
    fn snapshots_are_independent() {
        let before = running(&[("/a", 1)]);
        let snapshot = before.clone();
        let mut d = Delta::new();
        d.update(key("/a"), int(2));
        let (after, _) = before.apply(d);
        assert_eq!(snapshot.get("/a"), Some(&int(1)));
        assert_eq!(after.get("/a"), Some(&int(2)));
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
        prop::collection::vec(elem, 1..4).prop_map(|e| format!("/{}", e.join("/")))
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
            for k in &change.deletes {
                prop_assert!(rebuilt.remove(&**k).is_some(), "deleted leaf {} was not there", k);
            }
            for (k, v) in &change.updates {
                let Some(typed_value::Value::IntVal(i)) = v.value else { unreachable!() };
                prop_assert!(start.get(&**k) != Some(&i), "unchanged leaf {} reported", k);
                rebuilt.insert(k.to_string(), i);
            }
            prop_assert_eq!(rebuilt, expected);
        }
    }
}
