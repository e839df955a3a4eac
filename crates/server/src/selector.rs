//! Labels and label selectors, with the syntax of Kubernetes: the keys and
//! values a datastore may carry, and the `filter` of ListDatastores
//! (`env=lab,role!=spine`, `env in (a,b)`, `!key`, `key`).

use std::collections::{BTreeMap, BTreeSet};

/// Longest label name (the part after any prefix) and value.
const MAX_NAME: usize = 63;
/// Longest key prefix (a DNS subdomain).
const MAX_PREFIX: usize = 253;

/// Checks a label key: an optional DNS subdomain prefix and `/`, then a name.
pub fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > MAX_PREFIX {
            return Err(format!(
                "key {key:?}: the prefix must be 1 to {MAX_PREFIX} characters"
            ));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= MAX_NAME
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !prefix.split('.').all(label_ok) {
            return Err(format!(
                "key {key:?}: the prefix must be a DNS subdomain (lowercase letters, digits, '-', '.')"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!("key {key:?}: the name is required"));
    }
    check_name(name).map_err(|m| format!("key {key:?}: {m}"))
}

/// Checks a label value: empty, or a name as in a key.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|m| format!("value {value:?}: {m}"))
}

/// At most 63 alphanumerics, `-`, `_` and `.`, starting and ending with an
/// alphanumeric.
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!("must be at most {MAX_NAME} characters"));
    }
    let ok_inner = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let bytes = name.as_bytes();
    if !bytes.iter().all(|&b| ok_inner(b))
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return Err(
            "must be alphanumerics, '-', '_' and '.', starting and ending with an alphanumeric"
                .into(),
        );
    }
    Ok(())
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key in (values)`, `key=value`.
    In(String, BTreeSet<String>),
    /// `key notin (values)`, `key!=value`: also true without the label.
    NotIn(String, BTreeSet<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses a selector; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = Parser {
            text,
            pos: 0,
            reqs: Vec::new(),
        };
        p.skip_ws();
        if p.at_end() {
            return Ok(Self::default());
        }
        loop {
            let req = p.requirement()?;
            p.reqs.push(req);
            p.skip_ws();
            if p.at_end() {
                break;
            }
            p.expect(",")?;
        }
        Ok(Self(p.reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    reqs: Vec<Requirement>,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at offset {}", self.pos)
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {token:?}")))
        }
    }

    /// A key or value: the characters labels may hold.
    fn word(&mut self) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .bytes()
            .take_while(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
            .count();
        self.pos += len;
        &self.text[start..self.pos]
    }

    fn key(&mut self) -> Result<String, String> {
        self.skip_ws();
        let key = self.word().to_string();
        if key.is_empty() {
            return Err(self.error("expected a label key"));
        }
        validate_key(&key)?;
        Ok(key)
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_ws();
        let value = self.word().to_string();
        validate_value(&value)?;
        Ok(value)
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        self.skip_ws();
        if self.eat("!") {
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        self.skip_ws();
        let one = |v: String| BTreeSet::from([v]);
        if self.eat("!=") {
            return Ok(Requirement::NotIn(key, one(self.value()?)));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::In(key, one(self.value()?)));
        }
        if self.at_end() || self.rest().starts_with(',') {
            return Ok(Requirement::Exists(key));
        }
        let word = self.word().to_string();
        match word.as_str() {
            "in" => Ok(Requirement::In(key, self.set()?)),
            "notin" => Ok(Requirement::NotIn(key, self.set()?)),
            _ => Err(self.error("expected '=', '==', '!=', 'in', 'notin', ',' or the end")),
        }
    }

    /// `(a, b, ...)`.
    fn set(&mut self) -> Result<BTreeSet<String>, String> {
        self.skip_ws();
        self.expect("(")?;
        let mut values = BTreeSet::new();
        loop {
            values.insert(self.value()?);
            self.skip_ws();
            if self.eat(")") {
                return Ok(values);
            }
            self.expect(",")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_selectors_are_refused() {
        for bad in [
            "env=",
            "=lab",
            "env=lab,",
            ",env",
            "env in lab",
            "env in (a,b",
            "env ~ lab",
            "env=la b",
            "-env=lab",
            "env=lab!",
            "!",
            "Bad_Prefix/env=x",
        ] {
            // `env=` is an empty value: allowed, as in Kubernetes.
            if bad == "env=" {
                assert!(Selector::parse(bad).is_ok());
                continue;
            }
            assert!(Selector::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let lab_leaf = labels(&[("env", "lab"), ("role", "leaf")]);
        let lab_spine = labels(&[("env", "lab"), ("role", "spine")]);
        let bare = labels(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            ("", [true, true, true]),
            ("env=lab", [true, true, false]),
            ("env==lab", [true, true, false]),
            ("env=lab,role!=spine", [true, false, false]),
            ("role!=spine", [true, false, true]),
            ("role in (leaf, border)", [true, false, false]),
            ("role notin (leaf)", [false, true, true]),
            ("role", [true, true, false]),
            ("!role", [false, false, true]),
            (" env = lab , !missing ", [true, true, false]),
            ("example.com/tier=a", [false, false, false]),
        ];
        for (text, want) in cases {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let got = [
                s.matches(&lab_leaf),
                s.matches(&lab_spine),
                s.matches(&bare),
            ];
            assert_eq!(&got, want, "{text:?}");
        }
    }

    #[test]
    fn keys_and_values() {
        for ok in [
            "env",
            "a",
            "example.com/env",
            "k8s.io/a_b-c.d",
            &"k".repeat(63),
        ] {
            assert_eq!(validate_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/env",
            "Example.com/env",
            "a/",
            "-a",
            "a-",
            "a b",
            "é",
            &"k".repeat(64),
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "lab", "Lab_1.x-y"] {
            assert_eq!(validate_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-x", "x ", "a/b", &"v".repeat(64)] {
            assert!(validate_value(bad).is_err(), "{bad:?}");
        }
    }
}
