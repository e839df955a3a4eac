//! Subscription paths as patterns over canonical leaf paths: what a dump
//! replaces, so that its replace prunes exactly the leaves its subscription
//! names, wildcards included.
//!
//! # What a pattern matches
//!
//! A leaf matches when the pattern names the leaf or one of its ancestors,
//! following the gNMI path conventions:
//! - an element named `*` matches any one element (with any keys);
//! - an element named `...` matches any number of elements, none included;
//! - a key whose value is `*` matches any value (or no such key), and a key
//!   the pattern leaves out matches every value: `interface` without keys
//!   names every entry of the list;
//! - otherwise names and key values are compared as text.
//!
//! Origins and module prefixes are compared loosely, because devices differ in
//! whether they echo them: a subscription to `openconfig:/interfaces` may be
//! answered with paths without an origin, and one to
//! `/openconfig-interfaces:interfaces` with plain `interfaces` elements (or
//! the reverse). So an origin given on one side only is ignored (both given:
//! they must be equal), and so is a YANG module prefix (`module:` before an
//! element's name) given on one side only (both given: they must be equal).
//!
//! Matching runs on canonical key text (see [`Path`]'s `Display`) without
//! parsing it into a `Path`: names and key values are compared in their
//! escaped form, which is unique, so equal text means equal names.
//!
//! # Forms refused
//!
//! [`check_sync_path`] refuses what a device may read differently from this
//! matcher: `*` inside a longer name, key name or key value (some devices glob
//! `eth*`, gNMI does not define it), and `...` with keys.

use super::{Path, is_key_special, is_name_special, push_escaped};

/// A subscription path read as a pattern over canonical leaf paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    origin: Option<String>,
    elems: Vec<PatternElem>,
    /// Number of leading elements before the first `...`: up to there a
    /// mismatch in one element rules out every leaf below that element.
    fixed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternElem {
    /// `...`: any number of elements.
    Any,
    /// One element.
    One {
        name: NamePattern,
        /// Key names (escaped) and what their values must be.
        keys: Vec<(String, KeyPattern)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NamePattern {
    /// `*`.
    Any,
    /// A name, escaped, split at its module prefix.
    Exact {
        module: Option<String>,
        local: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyPattern {
    Any,
    /// A value, escaped.
    Exact(String),
}

/// What matching a pattern against one canonical leaf path found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The pattern names the node whose canonical text is the leaf path's
    /// first `n` bytes: that node and everything below it match.
    Match(usize),
    /// No leaf path that starts with the first `n` bytes of this one matches.
    Skip(usize),
    /// This leaf does not match; others close to it may.
    Miss,
}

/// Why a subscription path is refused (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// `*` inside a longer name, key name or key value.
    #[error(
        "`{text}` in element {index} uses `*` inside a {what}; only a whole `*` is a wildcard \
         (partial wildcards are not supported)"
    )]
    PartialWildcard {
        /// Index of the element.
        index: usize,
        /// The offending text.
        text: String,
        /// Name, key name or key value.
        what: &'static str,
    },
    /// `...` with keys.
    #[error("element {index} is `...` with keys; `...` stands for any elements and takes no keys")]
    KeyedEllipsis {
        /// Index of the element.
        index: usize,
    },
}

/// Checks that `path` is a subscription path whose every wildcard netsync
/// prunes the way a device expands it; the error says what is not supported.
pub fn check_sync_path(path: &Path) -> Result<(), PatternError> {
    for (index, elem) in path.elems().iter().enumerate() {
        let name = elem.name();
        if name == "..." && !elem.keys().is_empty() {
            return Err(PatternError::KeyedEllipsis { index });
        }
        let partial = |text: &str| text != "*" && text.contains('*');
        let mut texts = vec![(name, "name")];
        for (k, v) in elem.keys() {
            texts.push((k.as_str(), "key name"));
            texts.push((v.as_str(), "key value"));
        }
        if let Some((text, what)) = texts
            .into_iter()
            .find(|(text, what)| partial(text) || (*what == "key name" && *text == "*"))
        {
            return Err(PatternError::PartialWildcard {
                index,
                text: text.to_owned(),
                what,
            });
        }
    }
    Ok(())
}

fn escaped(text: &str, special: fn(u8) -> bool) -> String {
    let mut out = Vec::with_capacity(text.len());
    push_escaped(&mut out, text.as_bytes(), special);
    // Escaping inserts ASCII before ASCII bytes only.
    String::from_utf8(out).unwrap_or_default()
}

/// Splits a name at its module prefix: `module:local`, or no module.
fn split_module(name: &str) -> (Option<&str>, &str) {
    match name.split_once(':') {
        Some((module, local)) if !module.is_empty() && !local.is_empty() => (Some(module), local),
        _ => (None, name),
    }
}

impl PathPattern {
    /// `path` as a pattern. Forms [`check_sync_path`] refuses are read
    /// literally (`eth*` matches only `eth*`).
    pub fn new(path: &Path) -> Self {
        let elems: Vec<PatternElem> = path
            .elems()
            .iter()
            .map(|e| {
                if e.name() == "..." && e.keys().is_empty() {
                    return PatternElem::Any;
                }
                let name = if e.name() == "*" {
                    NamePattern::Any
                } else {
                    let (module, local) = split_module(e.name());
                    NamePattern::Exact {
                        module: module.map(|m| escaped(m, is_name_special)),
                        local: escaped(local, is_name_special),
                    }
                };
                let keys = e
                    .keys()
                    .iter()
                    .map(|(k, v)| {
                        let value = if v == "*" {
                            KeyPattern::Any
                        } else {
                            KeyPattern::Exact(escaped(v, is_key_special))
                        };
                        (escaped(k, is_key_special), value)
                    })
                    .collect();
                PatternElem::One { name, keys }
            })
            .collect();
        let fixed = elems
            .iter()
            .position(|e| *e == PatternElem::Any)
            .unwrap_or(elems.len());
        Self {
            origin: path.origin().map(str::to_owned),
            elems,
            fixed,
        }
    }

    /// Whether the pattern matches the leaf whose canonical path is `key`.
    pub fn matches(&self, key: &str) -> bool {
        matches!(self.match_key(key, &mut Vec::new()), Outcome::Match(_))
    }

    /// Matches the canonical leaf path `key`; `spans` is scratch space.
    pub(crate) fn match_key(&self, key: &str, spans: &mut Vec<(usize, usize)>) -> Outcome {
        let bytes = key.as_bytes();
        let origin_end = if bytes.first() == Some(&b'/') {
            0
        } else {
            // A canonical origin holds no ':', so the first one ends it.
            let Some(colon) = key.find(':') else {
                return Outcome::Miss;
            };
            if let Some(origin) = &self.origin
                && origin.as_str() != &key[..colon]
            {
                return Outcome::Skip(colon + 1);
            }
            colon + 1
        };
        element_spans(bytes, origin_end, spans);
        // Up to the first `...`, one element at a time: a mismatch rules out
        // the whole subtree of that element.
        for (i, pattern) in self.elems[..self.fixed].iter().enumerate() {
            let Some(&(start, end)) = spans.get(i) else {
                // The leaf lies above what the pattern names.
                return Outcome::Miss;
            };
            if !elem_matches(pattern, &key[start..end]) {
                return if end < bytes.len() {
                    Outcome::Skip(end + 1)
                } else {
                    Outcome::Miss
                };
            }
        }
        let node_end = |depth: usize| match depth {
            0 => origin_end,
            d => spans[d - 1].1,
        };
        if self.fixed == self.elems.len() {
            return Outcome::Match(node_end(self.fixed));
        }
        match match_rest(&self.elems[self.fixed..], key, &spans[self.fixed..]) {
            Some(depth) => Outcome::Match(node_end(self.fixed + depth)),
            None => Outcome::Miss,
        }
    }
}

/// Fills `spans` with the byte ranges of the elements of the canonical path
/// `bytes` whose elements start at `start` (at its first `/`).
fn element_spans(bytes: &[u8], start: usize, spans: &mut Vec<(usize, usize)>) {
    spans.clear();
    // The root (`/` or `origin:/`) has no elements.
    let mut pos = start + 1;
    if pos >= bytes.len() {
        return;
    }
    let mut elem_start = pos;
    // Key values hold `/` verbatim: only a `/` outside brackets ends an
    // element (a `[` or `]` inside a value is escaped).
    let mut in_key = false;
    while pos < bytes.len() {
        match bytes[pos] {
            b'\\' => pos += 2,
            b'[' => {
                in_key = true;
                pos += 1;
            }
            b']' => {
                in_key = false;
                pos += 1;
            }
            b'/' if !in_key => {
                spans.push((elem_start, pos));
                pos += 1;
                elem_start = pos;
            }
            _ => pos += 1,
        }
    }
    spans.push((elem_start, bytes.len().min(pos)));
}

/// Matches the pattern elements from the first `...` on; returns the number
/// of leaf elements they covered (the shortest way found).
fn match_rest(pattern: &[PatternElem], key: &str, spans: &[(usize, usize)]) -> Option<usize> {
    let Some((first, rest)) = pattern.split_first() else {
        return Some(0);
    };
    if *first == PatternElem::Any {
        return (0..=spans.len())
            .find_map(|skip| match_rest(rest, key, &spans[skip..]).map(|n| n + skip));
    }
    let (&(start, end), spans_rest) = spans.split_first()?;
    if !elem_matches(first, &key[start..end]) {
        return None;
    }
    match_rest(rest, key, spans_rest).map(|n| n + 1)
}

/// Position of the first unescaped `target` in `bytes` from `from`.
fn find_unescaped(bytes: &[u8], from: usize, target: u8) -> Option<usize> {
    let mut pos = from;
    while pos < bytes.len() {
        match bytes[pos] {
            b'\\' => pos += 2,
            b if b == target => return Some(pos),
            _ => pos += 1,
        }
    }
    None
}

/// Whether one pattern element matches one canonical element's text.
fn elem_matches(pattern: &PatternElem, elem: &str) -> bool {
    let PatternElem::One { name, keys } = pattern else {
        return true;
    };
    let bytes = elem.as_bytes();
    let name_end = find_unescaped(bytes, 0, b'[').unwrap_or(bytes.len());
    if let NamePattern::Exact { module, local } = name {
        let (leaf_module, leaf_local) = split_module(&elem[..name_end]);
        if leaf_local != local {
            return false;
        }
        if let (Some(a), Some(b)) = (module.as_deref(), leaf_module)
            && a != b
        {
            return false;
        }
    }
    keys.iter().all(|(key, value)| {
        let found = leaf_key(elem, name_end, key);
        match value {
            KeyPattern::Any => true,
            KeyPattern::Exact(v) => found == Some(v.as_str()),
        }
    })
}

/// The value of key `key` (escaped) in the canonical element `elem`, whose
/// keys start at `from`.
fn leaf_key<'a>(elem: &'a str, from: usize, key: &str) -> Option<&'a str> {
    let bytes = elem.as_bytes();
    let mut pos = from;
    while pos < bytes.len() && bytes[pos] == b'[' {
        let eq = find_unescaped(bytes, pos + 1, b'=')?;
        let close = find_unescaped(bytes, eq + 1, b']')?;
        if &elem[pos + 1..eq] == key {
            return Some(&elem[eq + 1..close]);
        }
        pos = close + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::PathElem;

    fn pattern(text: &str) -> PathPattern {
        PathPattern::new(&Path::parse(text).unwrap())
    }

    fn key(text: &str) -> String {
        Path::parse(text).unwrap().to_string()
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            // Literal paths name their subtree.
            (
                "/interfaces",
                "/interfaces/interface[name=e]/config/mtu",
                true,
            ),
            ("/interfaces", "/interfaces", true),
            ("/interfaces", "/interfaces-x/a", false),
            ("/interfaces/interface", "/interfaces", false),
            // A keyed list without keys: every entry.
            (
                "/interfaces/interface/config",
                "/interfaces/interface[name=e]/config/mtu",
                true,
            ),
            (
                "/interfaces/interface/config",
                "/interfaces/interface[name=e]/state/mtu",
                false,
            ),
            // Key value `*`.
            (
                "/interfaces/interface[name=*]/config",
                "/interfaces/interface[name=e]/config/mtu",
                true,
            ),
            (
                "/interfaces/interface[name=*]/config",
                "/interfaces/interface[name=e]/state",
                false,
            ),
            (
                "/interfaces/interface[name=e]/config",
                "/interfaces/interface[name=f]/config/mtu",
                false,
            ),
            (
                "/interfaces/interface[name=e]",
                "/interfaces/interface[name=e]/config/mtu",
                true,
            ),
            // Keys with grammar characters.
            (r"/i/i[name=a/b\]c]/x", r"/i/i[name=a/b\]c]/x/y", true),
            (r"/i/i[name=a/b\]c]/x", r"/i/i[name=a/b]/x/y", false),
            ("/i/i[name=*]/x", r"/i/i[name=a\=b\[\]]/x/y", true),
            // Partial keys of a two-key list.
            ("/p/p[name=bgp]", "/p/p[id=BGP][name=bgp]/x", true),
            ("/p/p[id=*][name=bgp]", "/p/p[id=BGP][name=ospf]/x", false),
            // `*` elements.
            (
                "/interfaces/*/config",
                "/interfaces/interface[name=e]/config/mtu",
                true,
            ),
            ("/interfaces/*/config", "/interfaces/config", false),
            ("/*", "/anything/below", true),
            ("/*[name=a]", "/l[name=a]/x", true),
            ("/*[name=a]", "/l[name=b]/x", false),
            // `...`: any number of elements, none included.
            ("/.../config", "/a/b/config/c", true),
            ("/.../config", "/config/c", true),
            ("/.../config", "/a/b/state/c", false),
            ("/a/.../c", "/a/c", true),
            ("/a/.../c", "/a/x/y/c/z", true),
            ("/a/.../c", "/b/x/c", false),
            ("/a/...", "/a/x", true),
            // Origins: one side only is ignored; both must agree.
            ("openconfig:/interfaces", "/interfaces/x", true),
            ("/interfaces", "openconfig:/interfaces/x", true),
            ("oc:/interfaces", "oc:/interfaces/x", true),
            ("oc:/interfaces", "cli:/interfaces/x", false),
            ("oc:/", "/x", true),
            ("oc:/", "oc:/x", true),
            ("oc:/", "cli:/x", false),
            ("/", "cli:/x", true),
            // Module prefixes: the same.
            (
                "/openconfig-interfaces:interfaces/interface",
                "/interfaces/interface[name=e]/x",
                true,
            ),
            (
                "/interfaces/interface",
                "/openconfig-interfaces:interfaces/interface[name=e]/x",
                true,
            ),
            ("/oc-if:interfaces", "/oc-if:interfaces/x", true),
            ("/oc-if:interfaces", "/other:interfaces/x", false),
            ("/oc-if:interfaces", "/interfacesx", false),
            (
                "/openconfig-interfaces:interfaces/*/config",
                "/interfaces/interface[name=e]/config/x",
                true,
            ),
        ];
        for (pattern_text, leaf, expected) in cases {
            assert_eq!(
                pattern(pattern_text).matches(&key(leaf)),
                *expected,
                "{pattern_text} against {leaf}"
            );
        }
    }

    #[test]
    fn outcomes_say_how_far_to_skip() {
        let mut spans = Vec::new();
        let p = pattern("/interfaces/interface[name=*]/config");
        let k = key("/interfaces/interface[name=e]/config/mtu");
        let Outcome::Match(n) = p.match_key(&k, &mut spans) else {
            panic!()
        };
        assert_eq!(&k[..n], "/interfaces/interface[name=e]/config");
        let k = key("/interfaces/interface[name=e]/state/mtu");
        let Outcome::Skip(n) = p.match_key(&k, &mut spans) else {
            panic!()
        };
        assert_eq!(&k[..n], "/interfaces/interface[name=e]/state/");
        // A leaf above the named nodes: nothing to skip.
        let k = key("/interfaces/interface[name=e]");
        assert_eq!(p.match_key(&k, &mut spans), Outcome::Miss);
        // Another origin: the whole origin.
        let k = key("cli:/interfaces/interface[name=e]/config/mtu");
        let p = pattern("oc:/interfaces");
        let Outcome::Skip(n) = p.match_key(&k, &mut spans) else {
            panic!()
        };
        assert_eq!(&k[..n], "cli:");
        // The root of an origin matches at the origin.
        let k = key("oc:/a/b");
        assert_eq!(pattern("oc:/").match_key(&k, &mut spans), Outcome::Match(3));
        // Past a `...`, a mismatch skips nothing.
        let k = key("/a/b/state/c");
        assert_eq!(
            pattern("/a/.../config").match_key(&k, &mut spans),
            Outcome::Miss
        );
        let Outcome::Skip(n) = pattern("/x/.../config").match_key(&k, &mut spans) else {
            panic!()
        };
        assert_eq!(&k[..n], "/a/");
    }

    #[test]
    fn refused_forms() {
        let check = |text: &str| check_sync_path(&Path::parse(text).unwrap());
        for ok in [
            "/",
            "/interfaces/interface[name=*]/config",
            "/interfaces/interface/config",
            "/*/x",
            "/.../config",
            "oc:/a",
            "/openconfig-interfaces:interfaces",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check("/interfaces/interface[name=eth*]")
                .unwrap_err()
                .to_string(),
            "`eth*` in element 1 uses `*` inside a key value; only a whole `*` is a wildcard \
             (partial wildcards are not supported)"
        );
        assert!(matches!(
            check("/a/int*"),
            Err(PatternError::PartialWildcard {
                index: 1,
                what: "name",
                ..
            })
        ));
        assert!(matches!(
            check("/a/b[*=1]"),
            Err(PatternError::PartialWildcard {
                what: "key name",
                ..
            })
        ));
        assert_eq!(
            check("/a/...[k=v]"),
            Err(PatternError::KeyedEllipsis { index: 1 })
        );
    }

    /// The reference: the same rules written over parsed paths.
    fn reference(pattern: &Path, leaf: &Path) -> bool {
        fn names_match(p: &str, l: &str) -> bool {
            if p == "*" {
                return true;
            }
            let (pm, pl) = split_module(p);
            let (lm, ll) = split_module(l);
            pl == ll && (pm.is_none() || lm.is_none() || pm == lm)
        }
        fn from(p: &[PathElem], l: &[PathElem]) -> bool {
            let Some((first, rest)) = p.split_first() else {
                return true;
            };
            if first.name() == "..." {
                return (0..=l.len()).any(|skip| from(rest, &l[skip..]));
            }
            let Some((lf, lr)) = l.split_first() else {
                return false;
            };
            names_match(first.name(), lf.name())
                && first
                    .keys()
                    .iter()
                    .all(|(k, v)| v == "*" || lf.key(k) == Some(v.as_str()))
                && from(rest, lr)
        }
        let origin_ok = match (pattern.origin(), leaf.origin()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        origin_ok && from(pattern.elems(), leaf.elems())
    }

    fn small_elem(names: &'static [&'static str]) -> impl Strategy<Value = PathElem> {
        (
            proptest::sample::select(names),
            proptest::collection::btree_map(
                proptest::sample::select(vec!["k", "l"]),
                proptest::sample::select(vec!["1", "a/b", "]=", "*"]),
                0..2,
            ),
        )
            .prop_map(|(name, keys)| {
                // `...` with keys is refused, and read literally.
                let keys = if name == "..." {
                    Default::default()
                } else {
                    keys
                };
                keys.into_iter()
                    .fold(PathElem::new(name).unwrap(), |e, (k, v)| {
                        e.with_key(k, v).unwrap()
                    })
            })
    }

    fn small_path(names: &'static [&'static str], len: usize) -> impl Strategy<Value = Path> {
        (
            proptest::option::of(proptest::sample::select(vec!["x", "y"])),
            proptest::collection::vec(small_elem(names), 0..len),
        )
            .prop_map(|(origin, elems)| {
                let path: Path = elems.into_iter().collect();
                path.with_origin(origin.unwrap_or_default()).unwrap()
            })
    }

    const LEAF_NAMES: &[&str] = &["a", "b", "m:a", "n:b", "a-b", "*"];
    const PATTERN_NAMES: &[&str] = &["a", "b", "m:a", "n:a", "*", "..."];

    proptest! {
        /// Matching canonical text agrees with the rules over parsed paths,
        /// and a skip or a match holds for every leaf below what it names.
        #[test]
        fn text_matching_follows_the_rules(
            p in small_path(PATTERN_NAMES, 4),
            leaf in small_path(LEAF_NAMES, 5),
            below in small_path(LEAF_NAMES, 3),
        ) {
            let pattern = PathPattern::new(&p);
            let text = leaf.to_string();
            let mut spans = Vec::new();
            let outcome = pattern.match_key(&text, &mut spans);
            prop_assert_eq!(matches!(outcome, Outcome::Match(_)), reference(&p, &leaf), "{} against {}", p, text);
            // Any leaf under the matched node (or under the skipped prefix)
            // gets the same answer.
            let mut longer = leaf.clone();
            longer.extend(below.elems().iter().cloned());
            let longer_text = longer.to_string();
            match outcome {
                Outcome::Match(n) => {
                    prop_assert!(longer_text.starts_with(&text[..n]));
                    prop_assert!(reference(&p, &longer), "{} under {}", longer_text, &text[..n]);
                }
                Outcome::Skip(n) => {
                    prop_assert!(!reference(&p, &longer), "{} under skipped {}", longer_text, &text[..n]);
                }
                Outcome::Miss => {}
            }
        }
    }
}
