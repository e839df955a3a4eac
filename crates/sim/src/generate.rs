//! The deterministic device generator behind `--leaves N --seed S`: a device
//! shaped like an OpenConfig router (interfaces with subinterfaces and
//! addresses, system users, BGP neighbours, platform components) with a mix of
//! string, int, uint, bool, double, decimal and leaf-list values. The same
//! `(N, S)` always gives the same leaves, paths and values.

use std::io::Write as _;

use netsync_core::{Path, PathElem};
use netsync_proto::gnmi;
use netsync_proto::gnmi::typed_value::Value;
use prost::Message;

/// SplitMix64: a tiny, fast, well-mixed generator.
///
/// Written here rather than taken from `rand` because the generated device
/// (and so every benchmark and test expectation built on it) must stay
/// identical across dependency upgrades, which `rand`'s `StdRng` does not
/// promise.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x6a09_e667_f3bc_c909)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for a simulator and branch-free.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// A `string_val`.
pub fn string(text: impl Into<String>) -> gnmi::TypedValue {
    typed(Value::StringVal(text.into()))
}

/// A `uint_val`.
pub fn uint(value: u64) -> gnmi::TypedValue {
    typed(Value::UintVal(value))
}

/// An `int_val`.
pub fn int(value: i64) -> gnmi::TypedValue {
    typed(Value::IntVal(value))
}

/// A `bool_val`.
pub fn boolean(value: bool) -> gnmi::TypedValue {
    typed(Value::BoolVal(value))
}

/// A `double_val`.
pub fn double(value: f64) -> gnmi::TypedValue {
    typed(Value::DoubleVal(value))
}

/// A `decimal_val` of `digits / 10^precision`.
pub fn decimal(digits: i64, precision: u32) -> gnmi::TypedValue {
    #[allow(
        deprecated,
        reason = "decimal64 values are part of the device's realistic mix"
    )]
    typed(Value::DecimalVal(gnmi::Decimal64 { digits, precision }))
}

/// A `leaflist_val` of the given scalars.
pub fn leaf_list(elements: Vec<gnmi::TypedValue>) -> gnmi::TypedValue {
    typed(Value::LeaflistVal(gnmi::ScalarArray { element: elements }))
}

fn typed(value: Value) -> gnmi::TypedValue {
    gnmi::TypedValue { value: Some(value) }
}

/// Builds paths of one entity from a fixed base.
struct Entity {
    base: Path,
    leaves: Vec<(Path, gnmi::TypedValue)>,
}

impl Entity {
    fn new(base: Path) -> Self {
        Self {
            base,
            leaves: Vec::new(),
        }
    }

    /// Adds the leaf at `base/rel` (`rel` is a relative path string).
    fn leaf(&mut self, rel: &str, value: gnmi::TypedValue) {
        let rel = Path::parse(rel).expect("generator paths are valid");
        let mut path = self.base.clone();
        path.extend(rel.elems().iter().cloned());
        self.leaves.push((path, value));
    }
}

fn elem(name: &str, keys: &[(&str, &str)]) -> PathElem {
    let mut elem = PathElem::new(name).expect("generator names are not empty");
    for (k, v) in keys {
        elem = elem
            .with_key(*k, *v)
            .expect("generator key names are not empty");
    }
    elem
}

fn path(elems: Vec<PathElem>) -> Path {
    elems.into_iter().collect()
}

const ADJECTIVES: &[&str] = &[
    "core", "edge", "access", "uplink", "backbone", "customer", "peering",
];
const ROLES: &[&str] = &["admin", "operator", "read-only"];
const OPER: &[&str] = &["UP", "DOWN", "LOWER_LAYER_DOWN"];
const BGP_STATES: &[&str] = &["ESTABLISHED", "ACTIVE", "IDLE", "CONNECT"];

/// Generates the leaves of a device, entity by entity, deterministically.
pub struct Generator {
    rng: Rng,
    next_entity: u64,
    queue: std::vec::IntoIter<(Path, gnmi::TypedValue)>,
}

impl Generator {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut generator = Self {
            rng: Rng::new(seed),
            next_entity: 0,
            queue: Vec::new().into_iter(),
        };
        generator.queue = generator.system().into_iter();
        generator
    }

    /// The global system leaves that every device has.
    fn system(&mut self) -> Vec<(Path, gnmi::TypedValue)> {
        let mut e = Entity::new(path(vec![elem("system", &[])]));
        // Key leaves come first in every entry, so that any prefix of the
        // generated sequence has YANG shape.
        let n = self.rng.below(1000);
        e.leaf("config/hostname", string(format!("sim-router-{n}")));
        e.leaf("config/domain-name", string("lab.example"));
        e.leaf(
            "dns/config/search",
            leaf_list(vec![string("lab.example"), string("example")]),
        );
        e.leaf(
            "state/boot-time",
            uint(1_700_000_000_000_000_000 + self.rng.below(1 << 40)),
        );
        e.leaf("state/software-version", string("sim-1.0"));
        e.leaf("memory/state/physical", uint(34_359_738_368));
        e.leaf("cpus/cpu[index=0]/index", uint(0));
        e.leaf(
            "cpus/cpu[index=0]/state/total/avg",
            decimal(self.rng.below(10_000) as i64, 2),
        );
        // The list entries every BGP neighbour sits in, with their key leaves.
        let mut ni = Entity::new(path(vec![
            elem("network-instances", &[]),
            elem("network-instance", &[("name", "default")]),
        ]));
        ni.leaf("name", string("default"));
        ni.leaf("config/name", string("default"));
        ni.leaf("config/type", string("DEFAULT_INSTANCE"));
        let bgp = "protocols/protocol[identifier=BGP][name=bgp]";
        ni.leaf(&format!("{bgp}/identifier"), string("BGP"));
        ni.leaf(&format!("{bgp}/name"), string("bgp"));
        ni.leaf(&format!("{bgp}/bgp/global/config/as"), uint(64_500));
        ni.leaf(
            &format!("{bgp}/bgp/global/config/router-id"),
            string("192.0.2.1"),
        );
        e.leaves.extend(ni.leaves);
        e.leaves
    }

    /// The leaves of entity number `i`: mostly interfaces, then BGP
    /// neighbours, users and components.
    fn entity(&mut self, i: u64) -> Vec<(Path, gnmi::TypedValue)> {
        match i % 10 {
            0..=5 => self.interface(i),
            6 | 7 => self.neighbor(i),
            8 => self.user(i),
            _ => self.component(i),
        }
    }

    fn interface(&mut self, i: u64) -> Vec<(Path, gnmi::TypedValue)> {
        let name = format!("ethernet-{}/{}", i / 480 + 1, (i / 10) * 6 + i % 10 + 1);
        let rng = &mut self.rng;
        let mut e = Entity::new(path(vec![
            elem("interfaces", &[]),
            elem("interface", &[("name", &name)]),
        ]));
        let adjective = ADJECTIVES[rng.below(ADJECTIVES.len() as u64) as usize];
        e.leaf("name", string(&name));
        e.leaf("config/name", string(&name));
        e.leaf(
            "config/description",
            string(format!("{adjective} link {i}")),
        );
        e.leaf("config/enabled", boolean(rng.chance(0.9)));
        e.leaf(
            "config/mtu",
            uint([1500, 9000, 9216][rng.below(3) as usize]),
        );
        e.leaf("config/type", string("iana-if-type:ethernetCsmacd"));
        e.leaf("state/oper-status", string(OPER[rng.below(3) as usize]));
        e.leaf("state/admin-status", string("UP"));
        e.leaf(
            "state/last-change",
            uint(1_700_000_000_000_000_000 + rng.below(1 << 40)),
        );
        e.leaf("state/counters/in-octets", uint(rng.below(1 << 48)));
        e.leaf("state/counters/out-octets", uint(rng.below(1 << 48)));
        e.leaf("state/counters/in-pkts", uint(rng.below(1 << 40)));
        e.leaf("state/counters/out-pkts", uint(rng.below(1 << 40)));
        e.leaf("state/counters/in-errors", uint(rng.below(100)));
        e.leaf("state/counters/out-discards", uint(rng.below(100)));
        e.leaf("ethernet/state/port-speed", string("SPEED_100GB"));
        e.leaf("ethernet/state/negotiated-duplex-mode", string("FULL"));
        let subinterfaces = 1 + rng.below(3);
        for sub in 0..subinterfaces {
            let base = format!("subinterfaces/subinterface[index={sub}]");
            e.leaf(&format!("{base}/index"), uint(sub));
            e.leaf(&format!("{base}/config/index"), uint(sub));
            e.leaf(
                &format!("{base}/config/description"),
                string(format!("unit {sub} of {name}")),
            );
            e.leaf(&format!("{base}/config/enabled"), boolean(true));
            e.leaf(
                &format!("{base}/vlan/config/vlan-id"),
                uint(100 + (i * 3 + sub) % 4000),
            );
            let ip = format!("10.{}.{}.{}", (i >> 8) & 255, i & 255, sub * 4 + 1);
            let addr = format!("{base}/ipv4/addresses/address[ip={ip}]");
            e.leaf(&format!("{addr}/ip"), string(&ip));
            e.leaf(&format!("{addr}/config/ip"), string(&ip));
            e.leaf(&format!("{addr}/config/prefix-length"), uint(30));
            e.leaf(
                &format!("{base}/state/counters/in-pkts"),
                uint(rng.below(1 << 32)),
            );
            e.leaf(
                &format!("{base}/ipv4/state/mtu"),
                int(1500 - 18 * rng.below(2) as i64),
            );
        }
        e.leaves
    }

    fn neighbor(&mut self, i: u64) -> Vec<(Path, gnmi::TypedValue)> {
        let address = format!("192.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let rng = &mut self.rng;
        let mut e = Entity::new(path(vec![
            elem("network-instances", &[]),
            elem("network-instance", &[("name", "default")]),
            elem("protocols", &[]),
            elem("protocol", &[("identifier", "BGP"), ("name", "bgp")]),
            elem("bgp", &[]),
            elem("neighbors", &[]),
            elem("neighbor", &[("neighbor-address", &address)]),
        ]));
        e.leaf("neighbor-address", string(&address));
        e.leaf("config/neighbor-address", string(&address));
        e.leaf("config/peer-as", uint(64_512 + rng.below(1000)));
        e.leaf("config/enabled", boolean(true));
        e.leaf("config/description", string(format!("peer {i}")));
        e.leaf("config/send-community", string("BOTH"));
        e.leaf(
            "state/session-state",
            string(BGP_STATES[rng.below(4) as usize]),
        );
        e.leaf("state/established-transitions", uint(rng.below(50)));
        e.leaf(
            "state/last-established",
            int(1_700_000_000 + rng.below(1 << 24) as i64),
        );
        e.leaf(
            "timers/config/hold-time",
            decimal(90 + 10 * rng.below(3) as i64, 0),
        );
        e.leaf(
            "timers/config/keepalive-interval",
            decimal(300 + rng.below(10) as i64, 1),
        );
        e.leaf(
            "afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/afi-safi-name",
            string("IPV4_UNICAST"),
        );
        e.leaf(
            "afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/received",
            uint(rng.below(1 << 20)),
        );
        e.leaf(
            "afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/sent",
            uint(rng.below(1 << 20)),
        );
        e.leaves
    }

    fn user(&mut self, i: u64) -> Vec<(Path, gnmi::TypedValue)> {
        let username = format!("user{i}");
        let rng = &mut self.rng;
        let mut e = Entity::new(path(vec![
            elem("system", &[]),
            elem("aaa", &[]),
            elem("authentication", &[]),
            elem("users", &[]),
            elem("user", &[("username", &username)]),
        ]));
        e.leaf("username", string(&username));
        e.leaf("config/username", string(&username));
        e.leaf("config/role", string(ROLES[rng.below(3) as usize]));
        e.leaf(
            "config/password-hashed",
            string(format!("$6${:016x}", rng.next_u64())),
        );
        e.leaf(
            "config/ssh-keys",
            leaf_list(vec![string(format!(
                "ssh-ed25519 AAAA{:x}",
                rng.next_u64()
            ))]),
        );
        e.leaves
    }

    fn component(&mut self, i: u64) -> Vec<(Path, gnmi::TypedValue)> {
        let name = format!("linecard-{i}");
        let rng = &mut self.rng;
        let mut e = Entity::new(path(vec![
            elem("components", &[]),
            elem("component", &[("name", &name)]),
        ]));
        e.leaf("name", string(&name));
        e.leaf("config/name", string(&name));
        e.leaf("state/type", string("LINECARD"));
        e.leaf(
            "state/temperature/instant",
            double(30.0 + rng.unit() * 40.0),
        );
        e.leaf("state/temperature/max", double(70.0 + rng.unit() * 10.0));
        e.leaf("state/temperature/alarm-status", boolean(rng.chance(0.05)));
        e.leaf("state/power/allocated", int(100 + rng.below(400) as i64));
        e.leaf(
            "state/serial-no",
            string(format!("SN{:010}", rng.below(10_000_000_000))),
        );
        e.leaves
    }
}

impl Iterator for Generator {
    type Item = (Path, gnmi::TypedValue);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(leaf) = self.queue.next() {
                return Some(leaf);
            }
            let i = self.next_entity;
            self.next_entity += 1;
            self.queue = self.entity(i).into_iter();
        }
    }
}

/// The first `count` leaves of the device for `seed`, in generation order.
pub fn device(count: usize, seed: u64) -> impl Iterator<Item = (Path, gnmi::TypedValue)> {
    Generator::new(seed).take(count)
}

/// A value of the same kind as `old`, different from it where the kind allows.
pub fn changed_value(old: &gnmi::TypedValue, rng: &mut Rng) -> gnmi::TypedValue {
    #[allow(
        deprecated,
        reason = "float_val and decimal_val are kept as the leaf has them"
    )]
    let value = match &old.value {
        Some(Value::StringVal(s)) => Value::StringVal(mutate_string(s, rng)),
        Some(Value::AsciiVal(s)) => Value::AsciiVal(mutate_string(s, rng)),
        Some(Value::IntVal(v)) => Value::IntVal(v.wrapping_add(1 + rng.below(1000) as i64)),
        Some(Value::UintVal(v)) => Value::UintVal(v.wrapping_add(1 + rng.below(1000))),
        Some(Value::BoolVal(v)) => Value::BoolVal(!v),
        Some(Value::BytesVal(b)) => {
            let mut b = b.clone();
            b.push(rng.below(256) as u8);
            b.truncate(64);
            Value::BytesVal(b)
        }
        Some(Value::FloatVal(v)) => Value::FloatVal(v + 0.5 + rng.unit() as f32),
        Some(Value::DoubleVal(v)) => Value::DoubleVal((v + 0.5 + rng.unit()) % 1.0e9),
        Some(Value::DecimalVal(d)) => Value::DecimalVal(gnmi::Decimal64 {
            digits: d.digits.wrapping_add(1 + rng.below(100) as i64),
            precision: d.precision,
        }),
        Some(Value::LeaflistVal(list)) => {
            let mut list = list.clone();
            match list.element.first().cloned() {
                Some(first) if list.element.len() < 4 => {
                    list.element.push(changed_value(&first, rng));
                }
                _ if !list.element.is_empty() => {
                    list.element.pop();
                }
                _ => list.element.push(uint(rng.below(100))),
            }
            Value::LeaflistVal(list)
        }
        _ => Value::StringVal(format!("changed-{}", rng.below(1_000_000))),
    };
    typed(value)
}

/// [`changed_value`] for an encoded `TypedValue`: writes the encoding of the
/// changed value into `out` (cleared first). Strings, integers, booleans and
/// doubles are changed in their encoded form, without decoding them into
/// owned values; the result is byte for byte what encoding `changed_value`'s
/// result gives, with the same random draws. This is churn's hot path.
pub fn changed_value_wire(old: &[u8], rng: &mut Rng, out: &mut Vec<u8>) {
    out.clear();
    if !change_in_place(old, rng, out) {
        out.clear();
        let value = gnmi::TypedValue::decode(old).unwrap_or_default();
        changed_value(&value, rng).encode(out).expect("a Vec grows");
    }
}

/// `TypedValue` oneof tags, as prost writes them.
const STRING_VAL: u8 = 0x0a;
const INT_VAL: u8 = 0x10;
const UINT_VAL: u8 = 0x18;
const BOOL_VAL: u8 = 0x20;
const DOUBLE_VAL: u8 = 0x71;

/// The common kinds of [`changed_value_wire`]; false (with nothing drawn from
/// `rng`) for any other kind or an encoding it does not expect.
fn change_in_place(old: &[u8], rng: &mut Rng, out: &mut Vec<u8>) -> bool {
    let Some((&tag, mut rest)) = old.split_first() else {
        return false;
    };
    match tag {
        INT_VAL | UINT_VAL | BOOL_VAL => {
            let Ok(v) = prost::encoding::decode_varint(&mut rest) else {
                return false;
            };
            if !rest.is_empty() {
                return false;
            }
            let new = match tag {
                INT_VAL => (v as i64).wrapping_add(1 + rng.below(1000) as i64) as u64,
                UINT_VAL => v.wrapping_add(1 + rng.below(1000)),
                _ => u64::from(v == 0),
            };
            out.push(tag);
            prost::encoding::encode_varint(new, out);
            true
        }
        DOUBLE_VAL => {
            let Ok(bytes) = <[u8; 8]>::try_from(rest) else {
                return false;
            };
            let v = f64::from_le_bytes(bytes);
            out.push(tag);
            out.extend_from_slice(&((v + 0.5 + rng.unit()) % 1.0e9).to_le_bytes());
            true
        }
        STRING_VAL => {
            let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
                return false;
            };
            let Some(text) = (len == rest.len() as u64)
                .then(|| std::str::from_utf8(rest).ok())
                .flatten()
            else {
                return false;
            };
            // The new text goes after a one-byte length, which is fixed up
            // when the text turns out longer.
            out.extend_from_slice(&[tag, 0]);
            let stem = string_stem(text);
            out.extend_from_slice(stem.as_bytes());
            write!(out, " #{}", rng.below(1_000_000)).expect("a Vec grows");
            let len = out.len() - 2;
            if len < 0x80 {
                out[1] = len as u8;
            } else {
                let text = out.split_off(2);
                out.truncate(1);
                prost::encoding::encode_varint(len as u64, out);
                out.extend_from_slice(&text);
            }
            true
        }
        _ => false,
    }
}

/// A string like `s` with a changed numeric suffix, so that strings stay short.
fn mutate_string(s: &str, rng: &mut Rng) -> String {
    format!("{} #{}", string_stem(s), rng.below(1_000_000))
}

/// `s` without the numeric suffix a change gives it.
fn string_stem(s: &str) -> &str {
    let stem = s.trim_end_matches(|c: char| c.is_ascii_digit() || c == '#');
    stem.strip_suffix(' ').unwrap_or(stem)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::tree::Kind;

    #[test]
    fn deterministic_and_exact_count() {
        let a: Vec<_> = device(5000, 7).collect();
        let b: Vec<_> = device(5000, 7).collect();
        let c: Vec<_> = device(5000, 8).collect();
        assert_eq!(a.len(), 5000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Paths are distinct.
        let distinct: BTreeSet<_> = a.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(distinct.len(), 5000);
    }

    #[test]
    fn realistic_mix() {
        let leaves: Vec<_> = device(3000, 1).collect();
        let kinds: BTreeSet<_> = leaves
            .iter()
            .map(|(_, v)| Kind::of(v).unwrap().name())
            .collect();
        for kind in [
            "string",
            "int",
            "uint",
            "bool",
            "double",
            "decimal",
            "leaf-list",
        ] {
            assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
        }
        let text: Vec<String> = leaves.iter().map(|(p, _)| p.to_string()).collect();
        for needle in [
            "/interfaces/interface[",
            "/subinterface[index=",
            "/neighbor[neighbor-address=",
            "/user[username=",
        ] {
            assert!(text.iter().any(|t| t.contains(needle)), "{needle}");
        }
    }

    #[test]
    fn changed_values_keep_their_kind() {
        let mut rng = Rng::new(1);
        for (_, value) in device(2000, 3) {
            let changed = changed_value(&value, &mut rng);
            assert_eq!(Kind::of(&changed), Kind::of(&value));
            assert_ne!(changed, value);
        }
    }

    #[test]
    fn changing_encoded_values_equals_changing_decoded_ones() {
        let mut values: Vec<gnmi::TypedValue> = device(3000, 5).map(|(_, v)| v).collect();
        values.extend([
            string(""),
            string("x".repeat(200)),
            int(-5),
            int(i64::MAX),
            uint(u64::MAX),
            boolean(false),
            double(-1.5),
            typed(Value::BytesVal(vec![1, 2])),
            typed(Value::AsciiVal("a 1".into())),
            gnmi::TypedValue::default(),
        ]);
        let (mut decoded_rng, mut wire_rng) = (Rng::new(9), Rng::new(9));
        let mut out = Vec::new();
        for value in values {
            // Three rounds: each change starts from the last one's result.
            let mut value = value;
            for _ in 0..3 {
                let expected = changed_value(&value, &mut decoded_rng);
                changed_value_wire(&value.encode_to_vec(), &mut wire_rng, &mut out);
                assert_eq!(out, expected.encode_to_vec(), "changing {value:?}");
                value = expected;
            }
        }
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut rng = Rng::new(42);
        for n in [1, 2, 3, 10, 1000] {
            for _ in 0..1000 {
                assert!(rng.below(n) < n);
            }
        }
    }
}
