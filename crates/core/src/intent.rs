//! Intents and deviations: the intended state of a datastore as the merge of
//! its intents, and where running differs from it, both kept up to date
//! incrementally from intent changes and commits.
//!
//! An intent claims leaves (they must have its values) and subtrees (they must
//! be absent). Where claims overlap, the lower priority wins; on a tie, the
//! intent name that sorts first. A leaf is decided by the best claim among the
//! leaf claims on it and the absence claims on it or any subtree above it.
//!
//! Work is proportional to what changed: a commit rechecks only the leaves it
//! changed; an intent change rechecks only the paths that intent claims (and,
//! for absence claims, the leaves below them). Reading the deviations
//! costs in proportion to their number.
//!
//! A leaf deviates when running's value does not mean the intent's value
//! (see [`crate::value::same_meaning`]): the encoding a device writes in is
//! not a deviation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message as _;

use crate::running::{Change, Key, Running, Subtree, Value};
use crate::value;

/// A declared intent.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// Unique within the datastore.
    pub name: String,
    /// Lower wins where intents overlap.
    pub priority: i32,
    /// Leaves that must have these values.
    pub updates: BTreeMap<Key, Value>,
    /// Subtrees that must be absent.
    pub deletes: Vec<Subtree>,
    /// Applied once; later drift is reported, not reverted.
    pub non_revertive: bool,
    /// Revision of running when the intent was last written.
    pub revision: u64,
}

/// A leaf where running differs from the winning intent.
#[derive(Debug, Clone, PartialEq)]
pub struct Deviation {
    /// The leaf.
    pub path: Key,
    /// The intent that decides it.
    pub intent: String,
    /// What it should be; `None`: it must not exist.
    pub expected: Option<Value>,
    /// What running has; `None`: missing.
    pub actual: Option<Value>,
}

/// How an intent ranks: lower priority first, then name.
type Rank = (i32, String);

/// The merged intents of one datastore and its current deviations.
#[derive(Debug, Default, Clone)]
pub struct Intended {
    intents: BTreeMap<String, Intent>,
    /// Leaf path -> the intents claiming a value for it, best first.
    leaf_claims: HashMap<Key, BTreeSet<Rank>>,
    /// Subtree root -> (the subtree, the intents claiming it absent, best first).
    absent_claims: HashMap<Key, (Subtree, BTreeSet<Rank>)>,
    deviations: BTreeMap<Key, Deviation>,
}

impl Intended {
    /// No intents.
    pub fn new() -> Self {
        Self::default()
    }

    /// `intents` merged, with their deviations from `running` (e.g. for a
    /// dry run: the intents as they would be after a write).
    pub fn from_intents(intents: impl IntoIterator<Item = Intent>, running: &Running) -> Self {
        let mut intended = Self::new();
        for intent in intents {
            intended.set(intent, running);
        }
        intended
    }

    /// The intents, by name.
    pub fn intents(&self) -> impl Iterator<Item = &Intent> {
        self.intents.values()
    }

    /// One intent.
    pub fn get(&self, name: &str) -> Option<&Intent> {
        self.intents.get(name)
    }

    /// The current deviations, sorted by path.
    pub fn deviations(&self) -> impl Iterator<Item = &Deviation> {
        self.deviations.values()
    }

    /// Adds or replaces an intent and rechecks what it touches against `running`.
    pub fn set(&mut self, intent: Intent, running: &Running) {
        let mut touched = self.remove_claims(&intent.name, running);
        let rank = (intent.priority, intent.name.clone());
        for key in intent.updates.keys() {
            self.leaf_claims
                .entry(key.clone())
                .or_default()
                .insert(rank.clone());
            touched.insert(key.clone());
        }
        for subtree in &intent.deletes {
            let root: Key = subtree.path().into();
            self.absent_claims
                .entry(root)
                .or_insert_with(|| (subtree.clone(), BTreeSet::new()))
                .1
                .insert(rank.clone());
            touched.extend(self.covered(subtree, running));
        }
        self.intents.insert(intent.name.clone(), intent);
        self.recheck(touched, running);
    }

    /// Removes an intent; returns it. Rechecks what it touched.
    pub fn remove(&mut self, name: &str, running: &Running) -> Option<Intent> {
        let touched = self.remove_claims(name, running);
        let removed = self.intents.remove(name);
        self.recheck(touched, running);
        removed
    }

    /// Rechecks the leaves a commit changed.
    pub fn on_commit(&mut self, change: &Change, running: &Running) {
        // Without intents nothing can deviate: a large first commit then
        // costs nothing here.
        if self.leaf_claims.is_empty()
            && self.absent_claims.is_empty()
            && self.deviations.is_empty()
        {
            return;
        }
        let mut touched = Vec::new();
        change.for_each_update_encoded(|k, _| touched.push(Key::from(k)));
        change.for_each_delete(|k| touched.push(Key::from(k)));
        self.recheck(touched, running);
    }

    /// Recomputes everything from scratch (after the datastore's running was
    /// replaced wholesale, e.g. at load).
    pub fn rebuild(&mut self, running: &Running) {
        self.deviations.clear();
        let mut touched: BTreeSet<Key> = self.leaf_claims.keys().cloned().collect();
        for (subtree, _) in self.absent_claims.values() {
            touched.extend(running.subtree(subtree).map(|(k, _)| Key::from(k)));
        }
        self.recheck(touched, running);
    }

    /// What decides `key`: the winning intent and the expected value (`None`
    /// for absent), or `None` when no intent claims it.
    pub fn winner(&self, key: &str) -> Option<(&str, Option<&Value>)> {
        best_claim(&self.leaf_claims, &self.absent_claims, key).map(|(rank, leaf)| {
            let value = leaf
                .then(|| self.intents.get(&rank.1).and_then(|i| i.updates.get(key)))
                .flatten();
            (rank.1.as_str(), value)
        })
    }

    fn remove_claims(&mut self, name: &str, running: &Running) -> BTreeSet<Key> {
        let mut touched = BTreeSet::new();
        let Some(old) = self.intents.get(name) else {
            return touched;
        };
        let rank = (old.priority, old.name.clone());
        for key in old.updates.keys() {
            if let Some(ranks) = self.leaf_claims.get_mut(key) {
                ranks.remove(&rank);
                if ranks.is_empty() {
                    self.leaf_claims.remove(key);
                }
            }
            touched.insert(key.clone());
        }
        for subtree in &old.deletes {
            if let Some((_, ranks)) = self.absent_claims.get_mut(subtree.path()) {
                ranks.remove(&rank);
                if ranks.is_empty() {
                    self.absent_claims.remove(subtree.path());
                }
            }
            touched.extend(self.covered(subtree, running));
        }
        touched
    }

    /// The leaves an absence claim on `subtree` can decide: those in running
    /// and those other intents claim values for (they may be missing).
    fn covered(&self, subtree: &Subtree, running: &Running) -> Vec<Key> {
        let claimed = self
            .leaf_claims
            .keys()
            .filter(|k| subtree.contains(k))
            .cloned();
        running
            .subtree(subtree)
            .map(|(k, _)| Key::from(k))
            .chain(claimed)
            .collect()
    }

    /// Values compare by meaning (see [`crate::value`]): an intent's
    /// `string_val` is met by the device's `json_ietf_val` of that string.
    /// Running's stored bytes are compared first and decoded only when they
    /// differ, so a commit that rechecks leaves at their intents' values in
    /// the intents' own encoding decodes nothing.
    fn recheck(&mut self, keys: impl IntoIterator<Item = Key>, running: &Running) {
        let decode = |bytes: Vec<u8>| Value::decode(bytes.as_slice()).unwrap_or_default();
        for key in keys {
            let stored = running.get_encoded(&key);
            let deviation = match self.winner(&key) {
                Some((intent, Some(expected)))
                    if !stored
                        .as_ref()
                        .is_some_and(|s| value::encoded_same_meaning(s, expected)) =>
                {
                    Some(Deviation {
                        path: key.clone(),
                        intent: intent.to_string(),
                        expected: Some(expected.clone()),
                        actual: stored.map(decode),
                    })
                }
                Some((intent, None)) if stored.is_some() => Some(Deviation {
                    path: key.clone(),
                    intent: intent.to_string(),
                    expected: None,
                    actual: stored.map(decode),
                }),
                _ => None,
            };
            match deviation {
                Some(d) => {
                    self.deviations.insert(key, d);
                }
                None => {
                    self.deviations.remove(&key);
                }
            }
        }
    }
}

/// The best claim on `key` under the priority rule: its rank, and whether
/// it is a leaf claim (a value) rather than an absence claim. The one rule
/// both [`Intended::winner`] and [`Owners::owner`] apply.
fn best_claim<'a>(
    leaf_claims: &'a HashMap<Key, BTreeSet<Rank>>,
    absent_claims: &'a HashMap<Key, (Subtree, BTreeSet<Rank>)>,
    key: &str,
) -> Option<(&'a Rank, bool)> {
    let mut best: Option<(&Rank, bool)> = leaf_claims
        .get(key)
        .and_then(BTreeSet::first)
        .map(|rank| (rank, true));
    if absent_claims.is_empty() {
        return best;
    }
    for ancestor in ancestors_or_self(key) {
        if let Some((subtree, ranks)) = absent_claims.get(ancestor)
            && subtree.contains(key)
            && let Some(rank) = ranks.first()
            && best.is_none_or(|(b, _)| rank < b)
        {
            best = Some((rank, false));
        }
    }
    best
}

/// Who decides each path, from a set of intents alone: the blame of a read
/// (`GetRunning` with `with_owner`). Built in time proportional to the
/// intents' claims; each lookup costs a hash lookup per element of the path
/// (none beyond the first when no intent requires anything absent).
#[derive(Debug, Default)]
pub struct Owners {
    leaf_claims: HashMap<Key, BTreeSet<Rank>>,
    absent_claims: HashMap<Key, (Subtree, BTreeSet<Rank>)>,
}

impl Owners {
    /// The owners under `intents`.
    pub fn new<'a>(intents: impl IntoIterator<Item = &'a Intent>) -> Self {
        let mut owners = Self::default();
        for intent in intents {
            let rank = (intent.priority, intent.name.clone());
            for key in intent.updates.keys() {
                owners
                    .leaf_claims
                    .entry(key.clone())
                    .or_default()
                    .insert(rank.clone());
            }
            for subtree in &intent.deletes {
                owners
                    .absent_claims
                    .entry(subtree.path().into())
                    .or_insert_with(|| (subtree.clone(), BTreeSet::new()))
                    .1
                    .insert(rank.clone());
            }
        }
        owners
    }

    /// The intent whose update or delete decides the leaf `key` (the same
    /// winner as [`Intended::winner`]), or `None` when no intent covers it.
    pub fn owner(&self, key: &str) -> Option<&str> {
        best_claim(&self.leaf_claims, &self.absent_claims, key).map(|(rank, _)| rank.1.as_str())
    }
}

/// The canonical path strings of `key` and every path above it, down to the
/// root `/`: each element boundary, and for a keyed element also the same
/// element without its keys (a list's subtree covers its entries).
fn ancestors_or_self(key: &str) -> Vec<&str> {
    let mut out = vec![key];
    let mut in_brackets = false;
    let mut escaped = false;
    let mut elem_start = None;
    for (i, c) in key.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' if !in_brackets => {
                in_brackets = true;
                if i > 0 {
                    out.push(&key[..i]);
                }
            }
            ']' => in_brackets = false,
            '/' if !in_brackets => {
                if let Some(start) = elem_start
                    && i > start
                {
                    out.push(&key[..i]);
                }
                elem_start = Some(i + 1);
            }
            _ => {}
        }
    }
    // The root of the key's origin, e.g. `/` or `oc:/`.
    if let Some(slash) = key.find('/') {
        out.push(&key[..=slash]);
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use netsync_proto::gnmi::{TypedValue, typed_value};
    use proptest::prelude::*;

    use super::*;
    use crate::path::Path;

    fn key(s: &str) -> Key {
        Path::parse(s).unwrap().to_string().into()
    }

    fn int(v: i64) -> Value {
        TypedValue {
            value: Some(typed_value::Value::IntVal(v)),
        }
    }

    fn intent(name: &str, priority: i32, updates: &[(&str, i64)], deletes: &[&str]) -> Intent {
        Intent {
            name: name.into(),
            priority,
            updates: updates.iter().map(|(k, v)| (key(k), int(*v))).collect(),
            deletes: deletes
                .iter()
                .map(|p| Subtree::new(&Path::parse(p).unwrap()))
                .collect(),
            non_revertive: false,
            revision: 0,
        }
    }

    fn running(leaves: &[(&str, i64)]) -> Running {
        Running::from_leaves(leaves.iter().map(|(k, v)| (key(k), int(*v))))
    }

    /// An integer as `json_ietf_val`, as a JSON_IETF device sends it.
    fn int_ietf(v: i64) -> Value {
        TypedValue {
            value: Some(typed_value::Value::JsonIetfVal(
                format!("\"{v}\"").into_bytes(),
            )),
        }
    }

    fn as_int(v: &Value) -> i64 {
        match &v.value {
            Some(typed_value::Value::IntVal(i)) => *i,
            Some(typed_value::Value::JsonIetfVal(text)) => std::str::from_utf8(text)
                .unwrap()
                .trim_matches('"')
                .parse()
                .unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn deviations(i: &Intended) -> Vec<(String, String, Option<i64>, Option<i64>)> {
        let as_int = |v: &Option<Value>| v.as_ref().map(as_int);
        i.deviations()
            .map(|d| {
                (
                    d.path.to_string(),
                    d.intent.clone(),
                    as_int(&d.expected),
                    as_int(&d.actual),
                )
            })
            .collect()
    }

    #[test]
    fn ancestors() {
        assert_eq!(
            ancestors_or_self("/a/l[k=x/y]/v"),
            vec!["/", "/a", "/a/l", "/a/l[k=x/y]", "/a/l[k=x/y]/v"]
        );
        assert_eq!(
            ancestors_or_self("oc:/a\\/b/c"),
            vec!["oc:/", "oc:/a\\/b", "oc:/a\\/b/c"]
        );
    }

    #[test]
    fn deviations_appear_and_clear() {
        let mut r = running(&[("/a", 1), ("/b", 2)]);
        let mut i = Intended::new();
        i.set(intent("x", 10, &[("/a", 1), ("/c", 3)], &["/b"]), &r);
        assert_eq!(
            deviations(&i),
            vec![
                ("/b".into(), "x".into(), None, Some(2)),
                ("/c".into(), "x".into(), Some(3), None),
            ]
        );
        // The device drifts: /a changes, /b goes away, /c appears.
        let change = Change::new([(key("/a"), int(9)), (key("/c"), int(3))], [key("/b")]);
        r.apply_change(&change);
        i.on_commit(&change, &r);
        assert_eq!(
            deviations(&i),
            vec![("/a".into(), "x".into(), Some(1), Some(9))]
        );
        // Removing the intent clears its deviations.
        i.remove("x", &r);
        assert!(deviations(&i).is_empty());
    }

    #[test]
    fn values_compare_by_meaning_not_encoding() {
        let ietf = |text: &str| TypedValue {
            value: Some(typed_value::Value::JsonIetfVal(text.into())),
        };
        let string = |text: &str| TypedValue {
            value: Some(typed_value::Value::StringVal(text.into())),
        };
        let mut r = Running::from_leaves([
            (key("/motd"), ietf("\"managed by netsync\"")),
            (key("/mtu"), ietf("\"9000\"")),
        ]);
        let mut i = Intended::new();
        let mut wanted = intent("x", 0, &[("/mtu", 9000)], &[]);
        wanted
            .updates
            .insert(key("/motd"), string("managed by netsync"));
        i.set(wanted, &r);
        assert_eq!(
            i.deviations().count(),
            0,
            "{:?}",
            i.deviations().collect::<Vec<_>>()
        );
        // The device changes the leaf: that is a deviation, with the value as
        // the device sent it.
        let change = Change::new([(key("/motd"), ietf("\"hacked\""))], []);
        r.apply_change(&change);
        i.on_commit(&change, &r);
        let found: Vec<_> = i.deviations().cloned().collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expected, Some(string("managed by netsync")));
        assert_eq!(found[0].actual, Some(ietf("\"hacked\"")));
        // Back to the same value in yet another encoding: no deviation.
        let change = Change::new([(key("/motd"), string("managed by netsync"))], []);
        r.apply_change(&change);
        i.on_commit(&change, &r);
        assert_eq!(i.deviations().count(), 0);
    }

    #[test]
    fn priority_then_name_decides() {
        let r = running(&[("/s/a", 0), ("/s/b", 0)]);
        let mut i = Intended::new();
        i.set(intent("later", 5, &[("/s/a", 1)], &[]), &r);
        i.set(intent("earlier", 5, &[("/s/a", 2)], &[]), &r);
        assert_eq!(i.winner("/s/a"), Some(("earlier", Some(&int(2)))));
        i.set(intent("strong", 1, &[], &["/s"]), &r);
        assert_eq!(i.winner("/s/a"), Some(("strong", None)));
        assert_eq!(deviations(&i).len(), 2, "both leaves must go");
        i.remove("strong", &r);
        assert_eq!(
            deviations(&i),
            vec![("/s/a".into(), "earlier".into(), Some(2), Some(0))]
        );
        i.remove("earlier", &r);
        assert_eq!(
            deviations(&i),
            vec![("/s/a".into(), "later".into(), Some(1), Some(0))]
        );
    }

    #[test]
    fn absent_subtrees_catch_new_leaves_and_list_entries() {
        let mut r = running(&[]);
        let mut i = Intended::new();
        i.set(intent("no-users", 0, &[], &["/users/user"]), &r);
        let change = Change::new(
            [
                (key("/users/user[name=eve]/name"), int(1)),
                (key("/users/userx"), int(1)),
            ],
            [],
        );
        r.apply_change(&change);
        i.on_commit(&change, &r);
        assert_eq!(
            deviations(&i),
            vec![(
                "/users/user[name=eve]/name".into(),
                "no-users".into(),
                None,
                Some(1)
            )]
        );
    }

    #[test]
    fn replacing_an_intent_rechecks_old_and_new_claims() {
        let r = running(&[("/a", 1), ("/b", 1)]);
        let mut i = Intended::new();
        i.set(intent("x", 0, &[("/a", 2)], &[]), &r);
        assert_eq!(deviations(&i).len(), 1);
        i.set(intent("x", 0, &[("/b", 3)], &[]), &r);
        assert_eq!(
            deviations(&i),
            vec![("/b".into(), "x".into(), Some(3), Some(1))]
        );
    }

    /// What the deviations are, computed naively from scratch.
    fn reference(
        intents: &[Intent],
        r: &Running,
    ) -> Vec<(String, String, Option<i64>, Option<i64>)> {
        let mut paths: BTreeSet<Key> = r.iter().map(|(k, _)| Key::from(k)).collect();
        for i in intents {
            paths.extend(i.updates.keys().cloned());
        }
        let mut out = Vec::new();
        for path in paths {
            let mut best: Option<((i32, &str), Option<&Value>)> = None;
            for i in intents {
                let rank = (i.priority, i.name.as_str());
                if let Some(v) = i.updates.get(&path)
                    && best.is_none_or(|(b, _)| rank < b)
                {
                    best = Some((rank, Some(v)));
                }
                if i.deletes.iter().any(|d| d.contains(&path)) && best.is_none_or(|(b, _)| rank < b)
                {
                    best = Some((rank, None));
                }
            }
            let actual = r.get(&path);
            let as_int = |v: Option<&Value>| v.map(as_int);
            let actual = actual.as_ref();
            let met = match (expected_of(best), actual) {
                (Some(e), Some(a)) => crate::value::same_meaning(e, a),
                (e, a) => e.is_none() && a.is_none(),
            };
            if let Some(((_, name), expected)) = best
                && !met
            {
                out.push((
                    path.to_string(),
                    name.to_string(),
                    as_int(expected),
                    as_int(actual),
                ));
            }
        }
        out
    }

    fn expected_of<'a>(best: Option<((i32, &str), Option<&'a Value>)>) -> Option<&'a Value> {
        best.and_then(|(_, v)| v)
    }

    const PATHS: &[&str] = &["/a", "/b/x", "/b/y", "/b/l[k=1]/v", "/b/l[k=2]/v", "/c"];
    const SUBTREES: &[&str] = &["/b", "/b/l", "/b/l[k=1]", "/c", "/a"];

    fn arb_intent() -> impl Strategy<Value = Intent> {
        (
            prop::sample::select(&["i1", "i2", "i3"][..]),
            0i32..3,
            prop::collection::vec((prop::sample::select(PATHS), 0i64..3), 0..4),
            prop::collection::vec(prop::sample::select(SUBTREES), 0..2),
        )
            .prop_map(|(name, priority, updates, deletes)| {
                intent(name, priority, &updates, &deletes)
            })
    }

    proptest::proptest! {
        /// Incremental maintenance equals a from-scratch computation after any
        /// mix of intent sets, removals and commits, values compared by meaning.
        #[test]
        fn incremental_equals_from_scratch(
            steps in proptest::collection::vec(
                proptest::prop_oneof![
                    arb_intent().prop_map(|i| (Some(i), None, None)),
                    proptest::sample::select(&["i1", "i2", "i3"][..]).prop_map(|n| (None, Some(n), None)),
                    proptest::collection::vec(
                        (proptest::sample::select(PATHS), proptest::option::of(0i64..3), proptest::bool::ANY),
                        1..4,
                    )
                    .prop_map(|c| (None, None, Some(c))),
                ],
                1..30,
            )
        ) {
            let mut r = Running::new();
            let mut incremental = Intended::new();
            let mut declared: BTreeMap<String, Intent> = BTreeMap::new();
            for (set, remove, commit) in steps {
                if let Some(i) = set {
                    declared.insert(i.name.clone(), i.clone());
                    incremental.set(i, &r);
                }
                if let Some(name) = remove {
                    declared.remove(name);
                    incremental.remove(name, &r);
                }
                if let Some(changes) = commit {
                    let mut delta = crate::running::Delta::new();
                    // The device writes values as integers or as JSON_IETF
                    // strings: either meets an intent's integer.
                    for (p, v, ietf) in changes {
                        match v {
                            Some(v) if ietf => delta.update(key(p), int_ietf(v)),
                            Some(v) => delta.update(key(p), int(v)),
                            None => delta.delete(Subtree::new(&Path::parse(p).unwrap())),
                        }
                    }
                    let (next, change) = r.apply(delta);
                    r = next;
                    incremental.on_commit(&change, &r);
                }
                let all: Vec<Intent> = declared.values().cloned().collect();
                proptest::prop_assert_eq!(deviations(&incremental), reference(&all, &r));
                // The blame of a read names the same winner, built from the
                // intents alone.
                let owners = Owners::new(&all);
                for path in PATHS {
                    let path = key(path);
                    proptest::prop_assert_eq!(
                        owners.owner(&path),
                        incremental.winner(&path).map(|(name, _)| name)
                    );
                }
                let rebuilt = Intended::from_intents(all.clone(), &r);
                proptest::prop_assert_eq!(deviations(&rebuilt), deviations(&incremental));
            }
        }
    }
}
