//! The model's own reading of gNMI paths, written over parsed [`Path`]s and
//! independent of the engine's matching on canonical text: which leaves a
//! subscription path names (what a replace prunes) and which leaves a delete
//! removes.

use netsync_core::{Path, PathElem};

/// Whether the subscription path `pattern` names `leaf` or one of its
/// ancestors, by the rules of docs/ENGINE.md ("Subscription paths"): `*`
/// elements, `...`, `*` key values, keys left out, and origins and module
/// prefixes compared only when both sides give one.
pub fn subscribed(pattern: &Path, leaf: &Path) -> bool {
    let origins_agree = match (pattern.origin(), leaf.origin()) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    origins_agree && elems_match(pattern.elems(), leaf.elems())
}

fn elems_match(pattern: &[PathElem], leaf: &[PathElem]) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        // The pattern named an ancestor (or the leaf itself).
        return true;
    };
    if first.name() == "..." {
        return (0..=leaf.len()).any(|skip| elems_match(rest, &leaf[skip..]));
    }
    let Some((elem, leaf_rest)) = leaf.split_first() else {
        return false;
    };
    names_match(first.name(), elem.name())
        && first
            .keys()
            .iter()
            .all(|(k, v)| v == "*" || elem.key(k) == Some(v.as_str()))
        && elems_match(rest, leaf_rest)
}

fn names_match(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let split = |n: &'_ str| -> (Option<String>, String) {
        match n.split_once(':') {
            Some((m, l)) if !m.is_empty() && !l.is_empty() => (Some(m.to_owned()), l.to_owned()),
            _ => (None, n.to_owned()),
        }
    };
    let (pm, pl) = split(pattern);
    let (lm, ll) = split(name);
    pl == ll && (pm.is_none() || lm.is_none() || pm == lm)
}

/// Whether a gNMI delete of `path` removes `leaf`: the leaf is `path` or
/// lies below it, every element compared literally, except that a last
/// element without keys covers every entry of that list (`/if/i` removes
/// `/if/i[name=e]/...`).
pub fn deleted_by(path: &Path, leaf: &Path) -> bool {
    if path.origin() != leaf.origin() && !path.is_root() {
        return false;
    }
    let (p, l) = (path.elems(), leaf.elems());
    if p.len() > l.len() {
        return false;
    }
    p.iter().zip(l).enumerate().all(|(i, (pe, le))| {
        let last_keyless = i + 1 == p.len() && pe.keys().is_empty();
        pe.name() == le.name() && (last_keyless || pe.keys() == le.keys())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Path {
        Path::parse(text).unwrap()
    }

    #[test]
    fn the_reference_reads_paths_as_the_rules_say() {
        let leaf = p(r"/if/i[name=x\]y]/sub[idx=1]/config/v");
        for (pattern, expected) in [
            ("/", true),
            ("/if/i[name=*]/config", false),
            ("/if/i/sub/config", true),
            ("/.../config", true),
            ("/*/i/*/config/v", true),
            (r"/if/i[name=x\]y]", true),
            (r"/if/i[name=x]", false),
            ("oc:/if", true),
            ("/m:if/i", true),
        ] {
            assert_eq!(subscribed(&p(pattern), &leaf), expected, "{pattern}");
        }
        assert!(deleted_by(&p("/if/i"), &leaf));
        assert!(deleted_by(&p(r"/if/i[name=x\]y]/sub"), &leaf));
        assert!(!deleted_by(&p("/if/i[name=x]"), &leaf));
        assert!(!deleted_by(&p("/if/i/sub"), &leaf));
    }
}
