//! Values by meaning: whether two gNMI values say the same thing whatever
//! encoding they came in ([`same_meaning`]), and a value written the way a
//! device's encoding expects it ([`for_device`]), and a JSON scalar as a
//! typed scalar for people to read ([`to_scalar`]).
//!
//! netsync has no YANG schema, so equality is decided from the values alone:
//! - text (`string_val`, `ascii_val`, a JSON string) equals the same text;
//! - numbers (`int_val`, `uint_val`, `decimal_val`, `double_val`,
//!   `float_val`, a JSON number, or text holding a number, as RFC 7951 sends
//!   64-bit integers and decimals) compare by numeric value: exactly between
//!   integers, decimals and JSON numbers; at the precision of the float (f64,
//!   or f32 if either side is a `float_val`) when one side is one;
//! - booleans (`bool_val`, a JSON `true`/`false`, or the text `true`/`false`);
//! - leaf-lists (`leaflist_val`, a JSON array) element by element, in order;
//! - bytes (`bytes_val`, or base64 text as RFC 7951 writes `binary`);
//! - JSON objects and `null` compare as JSON; `any_val` and `proto_bytes` only
//!   as they are; JSON that does not parse only byte for byte.
//!
//! Two texts are compared as text, never as numbers: `"007"` and `"7"`
//! differ, although each equals the number 7 (a string leaf is not a number
//! leaf, and only comparing with a number says that the text is meant as one).
//! The relation is therefore reflexive and symmetric, not transitive.

use std::borrow::Cow;

use base64::Engine as _;
use netsync_proto::gnmi::{self, TypedValue, typed_value::Value as V};
use prost::Message;
use serde_json::Value as Json;

use crate::datastore::Encoding;

/// Whether `a` and `b` mean the same value (see the module documentation).
pub fn same_meaning(a: &TypedValue, b: &TypedValue) -> bool {
    meaning_eq(&Meaning::of(a), &Meaning::of(b))
}

/// Whether the protobuf-encoded `TypedValue` `encoded` (the form running
/// stores) means the same as `value`. Compares bytes first, without
/// allocating for small values, and decodes only when they differ: on the
/// commit path the same encoding on both sides is the common case.
pub fn encoded_same_meaning(encoded: &[u8], value: &TypedValue) -> bool {
    let len = value.encoded_len();
    if len == encoded.len() {
        let mut small = [0u8; 128];
        let same = if len <= small.len() {
            let mut buf = &mut small[..];
            value.encode(&mut buf).is_ok() && small[..len] == *encoded
        } else {
            value.encode_to_vec() == encoded
        };
        if same {
            return true;
        }
    }
    TypedValue::decode(encoded).is_ok_and(|stored| same_meaning(&stored, value))
}

/// `value` as a device speaking `encoding` expects it in a Set:
/// - JSON_IETF: `json_ietf_val` holding RFC 7951 JSON: text as a JSON string,
///   `int_val`, `uint_val` and `decimal_val` (64-bit integers and decimal64)
///   as JSON strings, doubles and floats as JSON numbers, booleans, bytes as
///   base64 strings, leaf-lists as arrays; a `json_val` is sent as
///   `json_ietf_val` as it is;
/// - JSON: `json_val`, the same but every number a JSON number; a
///   `json_ietf_val` is sent as `json_val` as it is;
/// - PROTO: typed values as given; a JSON value (`json_val`,
///   `json_ietf_val`) as the typed value the device has at that leaf (below),
///   else as given;
/// - ASCII: the value as given.
///
/// `current` is the leaf's value in running, if any. It tells how the device
/// writes this leaf, which a schema would: when the device sends it as a JSON
/// number where the rule above gives a string (a 32-bit integer), or the
/// other way round, the value is written the device's way; a PROTO device
/// that sends the leaf as `uint_val` gets a JSON `"9216"` as `uint_val`
/// 9216. Each only where the value keeps its meaning. What JSON cannot hold
/// (`any_val`, `proto_bytes`, NaN and infinities) is sent as given.
pub fn for_device(
    value: &TypedValue,
    encoding: Encoding,
    current: Option<&TypedValue>,
) -> TypedValue {
    let ietf = match encoding {
        Encoding::JsonIetf => true,
        Encoding::Json => false,
        Encoding::Proto => {
            return current
                .and_then(|like| typed_like(value, like))
                .unwrap_or_else(|| value.clone());
        }
        Encoding::Ascii => return value.clone(),
    };
    let wrap = |bytes: Vec<u8>| TypedValue {
        value: Some(if ietf {
            V::JsonIetfVal(bytes)
        } else {
            V::JsonVal(bytes)
        }),
    };
    match &value.value {
        Some(V::JsonVal(bytes) | V::JsonIetfVal(bytes)) => wrap(bytes.clone()),
        _ => match to_json(value, ietf) {
            Some(json) => {
                let json = match current.and_then(json_scalar) {
                    Some(shape) => in_shape_of(json, &shape),
                    None => json,
                };
                wrap(json.to_string().into_bytes())
            }
            None => value.clone(),
        },
    }
}

/// `value` with a JSON scalar (`json_val`, `json_ietf_val`) as a typed
/// scalar, for readers (the API's `VALUE_FORMAT_SCALAR`): a string as
/// `string_val`, an integer as `int_val` (`uint_val` above `i64::MAX`), any
/// other number as `double_val`, `true`/`false` as `bool_val`. Objects,
/// arrays, `null`, JSON that does not parse and every other kind of value are
/// returned as they are.
///
/// A JSON string stays a string even when it holds a number, as RFC 7951
/// writes 64-bit integers and decimal64: without a schema `"42"` may as well
/// be a string leaf, and a leaf whose type changes with its value would be
/// harder to use than text. The result has the same meaning as `value`
/// ([`same_meaning`]).
pub fn to_scalar(value: TypedValue) -> TypedValue {
    let Some(V::JsonVal(bytes) | V::JsonIetfVal(bytes)) = &value.value else {
        return value;
    };
    let scalar = match serde_json::from_slice::<Json>(bytes) {
        Ok(Json::String(s)) => V::StringVal(s),
        Ok(Json::Bool(b)) => V::BoolVal(b),
        Ok(Json::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => V::IntVal(i),
            (None, Some(u), _) => V::UintVal(u),
            (None, None, Some(f)) => V::DoubleVal(f),
            _ => return value,
        },
        _ => return value,
    };
    TypedValue {
        value: Some(scalar),
    }
}

/// A value as JSON (RFC 7951 when `ietf`), or `None` where JSON has no form
/// for it.
fn to_json(value: &TypedValue, ietf: bool) -> Option<Json> {
    #[allow(deprecated, reason = "devices still send float_val and decimal_val")]
    let json = match value.value.as_ref()? {
        V::StringVal(s) | V::AsciiVal(s) => Json::String(s.clone()),
        V::IntVal(i) if ietf => Json::String(i.to_string()),
        V::IntVal(i) => Json::from(*i),
        V::UintVal(u) if ietf => Json::String(u.to_string()),
        V::UintVal(u) => Json::from(*u),
        V::BoolVal(b) => Json::Bool(*b),
        V::BytesVal(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        V::DoubleVal(f) => Json::Number(serde_json::Number::from_f64(*f)?),
        // Through its shortest text, so that 1.1f32 is 1.1, not 1.100000023841858.
        V::FloatVal(f) if f.is_finite() => serde_json::from_str(&f.to_string()).ok()?,
        V::FloatVal(_) => return None,
        V::DecimalVal(d) => {
            let text = decimal_text(d);
            if ietf {
                Json::String(text)
            } else {
                serde_json::from_str(&text).ok()?
            }
        }
        V::LeaflistVal(list) => Json::Array(
            list.element
                .iter()
                .map(|e| to_json(e, ietf))
                .collect::<Option<_>>()?,
        ),
        V::JsonVal(b) | V::JsonIetfVal(b) => serde_json::from_slice(b).ok()?,
        V::AnyVal(_) | V::ProtoBytes(_) => return None,
    };
    Some(json)
}

/// A JSON `value` as a typed value of the kind `like` has (`None` if
/// `value` is not JSON, `like` is, or the value cannot be that kind with the
/// same meaning).
fn typed_like(value: &TypedValue, like: &TypedValue) -> Option<TypedValue> {
    let (Some(V::JsonVal(bytes) | V::JsonIetfVal(bytes)), Some(kind)) = (&value.value, &like.value)
    else {
        return None;
    };
    if matches!(kind, V::JsonVal(_) | V::JsonIetfVal(_)) {
        return None;
    }
    let json: Json = serde_json::from_slice(bytes).ok()?;
    let typed = json_as(&json, like)?;
    same_meaning(&typed, value).then_some(typed)
}

/// JSON as a typed value of the kind `like` has.
fn json_as(json: &Json, like: &TypedValue) -> Option<TypedValue> {
    let text = match json {
        Json::String(s) => Cow::Borrowed(s.as_str()),
        Json::Number(n) => Cow::Owned(n.to_string()),
        Json::Bool(b) => Cow::Owned(b.to_string()),
        Json::Array(items) => {
            let Some(V::LeaflistVal(list)) = &like.value else {
                return None;
            };
            let element = list.element.first()?;
            let element = items
                .iter()
                .map(|item| json_as(item, element))
                .collect::<Option<_>>()?;
            return Some(TypedValue {
                value: Some(V::LeaflistVal(gnmi::ScalarArray { element })),
            });
        }
        Json::Object(_) | Json::Null => return None,
    };
    #[allow(deprecated, reason = "devices still send float_val and decimal_val")]
    let value = match like.value.as_ref()? {
        V::StringVal(_) => V::StringVal(text.into_owned()),
        V::AsciiVal(_) => V::AsciiVal(text.into_owned()),
        V::IntVal(_) => V::IntVal(text.parse().ok()?),
        V::UintVal(_) => V::UintVal(text.parse().ok()?),
        V::BoolVal(_) => V::BoolVal(text.parse().ok()?),
        V::DoubleVal(_) => V::DoubleVal(text.parse().ok()?),
        V::FloatVal(_) => V::FloatVal(text.parse().ok()?),
        V::DecimalVal(d) => V::DecimalVal(decimal64(&parse_decimal(&text)?, d.precision)?),
        V::BytesVal(_) => V::BytesVal(
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .ok()?,
        ),
        _ => return None,
    };
    Some(TypedValue { value: Some(value) })
}

/// `d` as a decimal64 with at least `precision` fraction digits (the leaf's
/// own), if it fits.
fn decimal64(d: &Decimal, precision: u32) -> Option<gnmi::Decimal64> {
    let magnitude: i64 = if d.digits.is_empty() {
        0
    } else {
        d.digits.parse().ok()?
    };
    let signed = if d.negative { -magnitude } else { magnitude };
    let own = u32::try_from(d.exponent.min(0).checked_neg()?).ok()?;
    let precision = precision.max(own);
    // digits × 10^(exponent + precision), exactly.
    let shift = u32::try_from(d.exponent.checked_add(i64::from(precision))?).ok()?;
    let digits = signed.checked_mul(10i64.checked_pow(shift)?)?;
    Some(gnmi::Decimal64 { digits, precision })
}

/// The JSON scalar a JSON-encoded value holds (not a list or object).
fn json_scalar(value: &TypedValue) -> Option<Json> {
    match &value.value {
        Some(V::JsonVal(b) | V::JsonIetfVal(b)) => serde_json::from_slice::<Json>(b)
            .ok()
            .filter(|j| j.is_string() || j.is_number() || j.is_boolean()),
        _ => None,
    }
}

/// `json` written as the same kind of JSON scalar as `shape` (number, string
/// or boolean) when that keeps its meaning; else `json` unchanged.
fn in_shape_of(json: Json, shape: &Json) -> Json {
    let converted = match (&json, shape) {
        (Json::String(s), Json::Number(_)) if parse_decimal(s).is_some() => {
            serde_json::from_str::<Json>(s).ok().filter(Json::is_number)
        }
        (Json::String(s), Json::Bool(_)) => match s.as_str() {
            "true" => Some(Json::Bool(true)),
            "false" => Some(Json::Bool(false)),
            _ => None,
        },
        (Json::Number(n), Json::String(_)) => Some(Json::String(n.to_string())),
        (Json::Bool(b), Json::String(_)) => Some(Json::String(b.to_string())),
        _ => None,
    };
    // The conversion must not change what the value means (a number too
    // large for an exact JSON number stays a string).
    match converted {
        Some(c) if json_meaning_eq(&c, &json) => c,
        _ => json,
    }
}

fn json_meaning_eq(a: &Json, b: &Json) -> bool {
    meaning_eq(&Meaning::from_json(a), &Meaning::from_json(b))
}

/// What a value says, with its encoding set aside.
#[derive(Debug)]
enum Meaning<'a> {
    /// A `TypedValue` with no value.
    Absent,
    Text(Cow<'a, str>),
    Bool(bool),
    Number(Number),
    Bytes(&'a [u8]),
    List(Vec<Meaning<'a>>),
    /// A JSON object or `null`.
    Json(Cow<'a, Json>),
    /// `any_val`, `proto_bytes`: compared as they are.
    Opaque(&'a TypedValue),
    /// JSON text that does not parse: compared byte for byte.
    BadJson(&'a [u8]),
}

/// A number, exact or as a float.
#[derive(Debug, Clone, PartialEq)]
enum Number {
    Exact(Decimal),
    F64(f64),
    F32(f32),
}

/// An exact decimal `±digits × 10^exponent`, normalised: `digits` has no
/// leading or trailing zeros, and zero is empty digits, not negative,
/// exponent 0. Two equal numbers have equal normal forms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn new(negative: bool, digits: &str, exponent: i64) -> Option<Self> {
        let digits = digits.trim_start_matches('0');
        let trimmed = digits.trim_end_matches('0');
        if trimmed.is_empty() {
            return Some(Self {
                negative: false,
                digits: String::new(),
                exponent: 0,
            });
        }
        let shift = i64::try_from(digits.len() - trimmed.len()).ok()?;
        Some(Self {
            negative,
            digits: trimmed.to_string(),
            exponent: exponent.checked_add(shift)?,
        })
    }

    fn from_i128(value: i128) -> Self {
        Self::new(value < 0, &value.unsigned_abs().to_string(), 0).expect("an integer fits")
    }

    fn to_f64(&self) -> f64 {
        self.text().parse().unwrap_or(f64::NAN)
    }

    fn to_f32(&self) -> f32 {
        self.text().parse().unwrap_or(f32::NAN)
    }

    /// Scientific text that Rust's float parser reads with correct rounding.
    fn text(&self) -> String {
        if self.digits.is_empty() {
            return "0".into();
        }
        let sign = if self.negative { "-" } else { "" };
        format!("{sign}{}e{}", self.digits, self.exponent)
    }
}

/// Parses a number written as JSON or YANG writes one: an optional sign,
/// digits, an optional fraction and an optional exponent.
fn parse_decimal(text: &str) -> Option<Decimal> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => {
            let exp = &rest[at + 1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (&rest[..at], exp.parse::<i64>().ok()?)
        }
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) || mantissa.ends_with('.') {
        return None;
    }
    let frac_len = i64::try_from(frac.len()).ok()?;
    Decimal::new(
        negative,
        &format!("{int}{frac}"),
        exponent.checked_sub(frac_len)?,
    )
}

/// A number from text, for comparing with `number`: decimal text always;
/// the float words (`NaN`, `inf`, `infinity`, any case, signed) only against
/// a float.
fn number_of_text(text: &str, number: &Number) -> Option<Number> {
    if let Some(d) = parse_decimal(text) {
        return Some(Number::Exact(d));
    }
    if matches!(number, Number::Exact(_)) {
        return None;
    }
    let word = text.trim_start_matches(['-', '+']).to_ascii_lowercase();
    if matches!(word.as_str(), "nan" | "inf" | "infinity") {
        return text.parse().ok().map(Number::F64);
    }
    None
}

fn numbers_eq(a: &Number, b: &Number) -> bool {
    fn f32_eq(x: f32, y: f32) -> bool {
        x == y || (x.is_nan() && y.is_nan())
    }
    fn f64_eq(x: f64, y: f64) -> bool {
        x == y || (x.is_nan() && y.is_nan())
    }
    match (a, b) {
        (Number::Exact(x), Number::Exact(y)) => x == y,
        (Number::F32(x), Number::F32(y)) => f32_eq(*x, *y),
        // A float_val has the precision of an f32: compare at that precision.
        (Number::F32(x), Number::F64(y)) | (Number::F64(y), Number::F32(x)) => {
            f32_eq(*x, *y as f32)
        }
        (Number::F32(x), Number::Exact(d)) | (Number::Exact(d), Number::F32(x)) => {
            f32_eq(*x, d.to_f32())
        }
        (Number::F64(x), Number::F64(y)) => f64_eq(*x, *y),
        (Number::F64(x), Number::Exact(d)) | (Number::Exact(d), Number::F64(x)) => {
            f64_eq(*x, d.to_f64())
        }
    }
}

fn decimal_text(d: &gnmi::Decimal64) -> String {
    let magnitude = d.digits.unsigned_abs().to_string();
    let sign = if d.digits < 0 { "-" } else { "" };
    let precision = d.precision as usize;
    if precision == 0 {
        return format!("{sign}{magnitude}");
    }
    let padded = format!("{magnitude:0>width$}", width = precision + 1);
    let (int, frac) = padded.split_at(padded.len() - precision);
    format!("{sign}{int}.{frac}")
}

impl<'a> Meaning<'a> {
    fn of(value: &'a TypedValue) -> Self {
        #[allow(deprecated, reason = "devices still send float_val and decimal_val")]
        match &value.value {
            None => Meaning::Absent,
            Some(V::StringVal(s) | V::AsciiVal(s)) => Meaning::Text(Cow::Borrowed(s)),
            Some(V::IntVal(i)) => {
                Meaning::Number(Number::Exact(Decimal::from_i128(i128::from(*i))))
            }
            Some(V::UintVal(u)) => {
                Meaning::Number(Number::Exact(Decimal::from_i128(i128::from(*u))))
            }
            Some(V::BoolVal(b)) => Meaning::Bool(*b),
            Some(V::BytesVal(b)) => Meaning::Bytes(b),
            Some(V::DoubleVal(f)) => Meaning::Number(Number::F64(*f)),
            Some(V::FloatVal(f)) => Meaning::Number(Number::F32(*f)),
            Some(V::DecimalVal(d)) => {
                let exact = Decimal::new(
                    d.digits < 0,
                    &d.digits.unsigned_abs().to_string(),
                    -i64::from(d.precision),
                )
                .expect("a decimal64 fits");
                Meaning::Number(Number::Exact(exact))
            }
            Some(V::LeaflistVal(list)) => {
                Meaning::List(list.element.iter().map(Meaning::of).collect())
            }
            Some(V::JsonVal(bytes) | V::JsonIetfVal(bytes)) => {
                match serde_json::from_slice::<Json>(bytes) {
                    // A number alone: its own text, exactly (serde_json would
                    // round a long one to an f64).
                    Ok(Json::Number(n)) => {
                        let text = std::str::from_utf8(bytes)
                            .map(str::trim)
                            .unwrap_or_default();
                        parse_decimal(text)
                            .or_else(|| parse_decimal(&n.to_string()))
                            .map_or(Meaning::BadJson(bytes), |d| {
                                Meaning::Number(Number::Exact(d))
                            })
                    }
                    Ok(json) => Meaning::from_json_owned(json),
                    Err(_) => Meaning::BadJson(bytes),
                }
            }
            Some(V::AnyVal(_) | V::ProtoBytes(_)) => Meaning::Opaque(value),
        }
    }

    fn from_json(json: &'a Json) -> Self {
        match json {
            Json::String(s) => Meaning::Text(Cow::Borrowed(s)),
            Json::Bool(b) => Meaning::Bool(*b),
            Json::Number(n) => json_number(n),
            Json::Array(items) => Meaning::List(items.iter().map(Meaning::from_json).collect()),
            Json::Object(_) | Json::Null => Meaning::Json(Cow::Borrowed(json)),
        }
    }

    fn from_json_owned(json: Json) -> Meaning<'static> {
        match json {
            Json::String(s) => Meaning::Text(Cow::Owned(s)),
            Json::Bool(b) => Meaning::Bool(b),
            Json::Number(n) => json_number(&n),
            Json::Array(items) => {
                Meaning::List(items.into_iter().map(Meaning::from_json_owned).collect())
            }
            json @ (Json::Object(_) | Json::Null) => Meaning::Json(Cow::Owned(json)),
        }
    }
}

/// A JSON number inside a document: exact for integers and for decimals as
/// serde_json kept them (an f64's shortest text).
fn json_number(n: &serde_json::Number) -> Meaning<'static> {
    match parse_decimal(&n.to_string()) {
        Some(d) => Meaning::Number(Number::Exact(d)),
        None => Meaning::Number(Number::F64(n.as_f64().unwrap_or(f64::NAN))),
    }
}

/// The comparison itself. Each mixed pair is listed in both orders and
/// handled by one helper, so the relation is symmetric by construction.
fn meaning_eq(a: &Meaning<'_>, b: &Meaning<'_>) -> bool {
    use Meaning as M;
    match (a, b) {
        (M::Absent, M::Absent) => true,
        (M::Text(x), M::Text(y)) => x == y,
        (M::Bool(x), M::Bool(y)) => x == y,
        (M::Number(x), M::Number(y)) => numbers_eq(x, y),
        (M::Bytes(x), M::Bytes(y)) => x == y,
        (M::List(x), M::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| meaning_eq(x, y))
        }
        (M::Json(x), M::Json(y)) => json_eq(x, y),
        (M::Opaque(x), M::Opaque(y)) => x == y,
        (M::BadJson(x), M::BadJson(y)) => x == y,
        (M::Text(t), M::Number(n)) | (M::Number(n), M::Text(t)) => {
            number_of_text(t, n).is_some_and(|m| numbers_eq(&m, n))
        }
        (M::Text(t), M::Bool(b)) | (M::Bool(b), M::Text(t)) => {
            *t == if *b { "true" } else { "false" }
        }
        (M::Text(t), M::Bytes(b)) | (M::Bytes(b), M::Text(t)) => {
            base64::engine::general_purpose::STANDARD
                .decode(t.as_bytes())
                .is_ok_and(|decoded| decoded == *b)
        }
        _ => false,
    }
}

/// JSON objects by meaning: the same members (module prefixes kept as
/// written), each member's value by meaning.
fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_meaning_eq(v, w)))
        }
        (Json::Null, Json::Null) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn to_scalar_decodes_json_scalars_and_leaves_the_rest() {
        let ietf = |j: &str| TypedValue {
            value: Some(V::JsonIetfVal(j.as_bytes().to_vec())),
        };
        let json = |j: &str| TypedValue {
            value: Some(V::JsonVal(j.as_bytes().to_vec())),
        };
        let typed = |v: V| TypedValue { value: Some(v) };
        let cases = [
            (
                ietf("\"managed by netsync\""),
                typed(V::StringVal("managed by netsync".into())),
            ),
            // RFC 7951's uint64: a JSON string, kept a string without a schema.
            (
                ietf("\"18446744073709551615\""),
                typed(V::StringVal("18446744073709551615".into())),
            ),
            (ietf("-7"), typed(V::IntVal(-7))),
            (json("1500"), typed(V::IntVal(1500))),
            (ietf("18446744073709551615"), typed(V::UintVal(u64::MAX))),
            (ietf("2.5"), typed(V::DoubleVal(2.5))),
            (ietf("true"), typed(V::BoolVal(true))),
            (json("false"), typed(V::BoolVal(false))),
        ];
        for (given, scalar) in cases {
            let got = to_scalar(given.clone());
            assert_eq!(got, scalar, "{given:?}");
            assert!(same_meaning(&got, &given), "{given:?} kept its meaning");
        }
        // Non-scalars, unparsable JSON and typed values: unchanged.
        for given in [
            ietf("{\"a\": 1}"),
            ietf("[1, 2]"),
            ietf("null"),
            ietf("not json"),
            typed(V::UintVal(9)),
            typed(V::StringVal("x".into())),
            TypedValue { value: None },
        ] {
            assert_eq!(to_scalar(given.clone()), given);
        }
    }

    use proptest::prelude::*;

    use super::*;

    fn t(v: V) -> TypedValue {
        TypedValue { value: Some(v) }
    }
    fn s(x: &str) -> TypedValue {
        t(V::StringVal(x.into()))
    }
    fn ascii(x: &str) -> TypedValue {
        t(V::AsciiVal(x.into()))
    }
    fn ietf(x: &str) -> TypedValue {
        t(V::JsonIetfVal(x.into()))
    }
    fn json(x: &str) -> TypedValue {
        t(V::JsonVal(x.into()))
    }
    fn uint(x: u64) -> TypedValue {
        t(V::UintVal(x))
    }
    fn int(x: i64) -> TypedValue {
        t(V::IntVal(x))
    }
    fn double(x: f64) -> TypedValue {
        t(V::DoubleVal(x))
    }
    #[allow(deprecated, reason = "devices still send float_val")]
    fn float(x: f32) -> TypedValue {
        t(V::FloatVal(x))
    }
    #[allow(deprecated, reason = "devices still send decimal_val")]
    fn decimal(digits: i64, precision: u32) -> TypedValue {
        t(V::DecimalVal(gnmi::Decimal64 { digits, precision }))
    }
    fn boolean(x: bool) -> TypedValue {
        t(V::BoolVal(x))
    }
    fn list(items: Vec<TypedValue>) -> TypedValue {
        t(V::LeaflistVal(gnmi::ScalarArray { element: items }))
    }

    /// Every pair within a group means the same.
    fn assert_all_equal(group: &[TypedValue]) {
        for a in group {
            for b in group {
                assert!(same_meaning(a, b), "{a:?} should equal {b:?}");
                assert!(
                    encoded_same_meaning(&a.encode_to_vec(), b),
                    "{a:?} (encoded) should equal {b:?}"
                );
            }
        }
    }

    #[test]
    fn strings_in_every_encoding() {
        assert_all_equal(&[
            s("x"),
            ietf("\"x\""),
            json("\"x\""),
            ascii("x"),
            ietf(" \"x\" "),
        ]);
        assert_all_equal(&[s("managed by netsync"), ietf("\"managed by netsync\"")]);
        assert_all_equal(&[s(""), ietf("\"\""), ascii("")]);
        assert_all_equal(&[s("é\"q"), ietf(r#""\u00e9\"q""#)]);
    }

    #[test]
    fn numbers_by_value() {
        assert_all_equal(&[
            uint(123),
            int(123),
            ietf("123"),
            ietf("\"123\""),
            json("123"),
            json("\"123\""),
            double(123.0),
            float(123.0),
            decimal(12300, 2),
            decimal(123, 0),
            s("123"),
            ascii("123"),
            ietf("1.23e2"),
        ]);
        // Text means a number only next to a number: as text, "123.000" is
        // not "123".
        assert_all_equal(&[uint(123), ietf("\"123.000\"")]);
        assert_all_equal(&[decimal(123, 0), s("123.000")]);
        assert!(!same_meaning(&s("123"), &ietf("\"123.000\"")));
        assert_all_equal(&[
            int(-5),
            ietf("\"-5\""),
            ietf("-5"),
            decimal(-50, 1),
            double(-5.0),
        ]);
        assert_all_equal(&[
            uint(u64::MAX),
            ietf("\"18446744073709551615\""),
            ietf("18446744073709551615"),
        ]);
        assert_all_equal(&[int(i64::MIN), ietf("\"-9223372036854775808\"")]);
        assert_all_equal(&[
            double(1.5),
            decimal(15, 1),
            ietf("1.5"),
            ietf("\"1.50\""),
            float(1.5),
        ]);
        // Against a float, at the float's precision; exact numbers exactly.
        assert_all_equal(&[double(0.1), ietf("0.1")]);
        assert_all_equal(&[double(0.1), ietf("0.10000000000000001")]);
        assert!(!same_meaning(&ietf("0.1"), &ietf("0.10000000000000001")));
        assert_all_equal(&[float(1.1), ietf("1.1")]);
        assert_all_equal(&[float(1.1), double(f64::from(1.1f32))]);
        assert_all_equal(&[double(0.0), double(-0.0), int(0), ietf("-0"), decimal(0, 3)]);
        assert_all_equal(&[double(f64::NAN), s("NaN")]);
        assert_all_equal(&[double(f64::INFINITY), s("inf")]);
        assert_all_equal(&[double(f64::NEG_INFINITY), ietf("\"-Infinity\"")]);
    }

    #[test]
    fn booleans() {
        assert_all_equal(&[
            boolean(true),
            ietf("true"),
            json("true"),
            s("true"),
            ietf("\"true\""),
        ]);
        assert_all_equal(&[boolean(false), ietf("false"), ascii("false")]);
    }

    #[test]
    fn leaf_lists_element_by_element() {
        assert_all_equal(&[
            list(vec![s("a"), uint(1)]),
            ietf(r#"["a", "1"]"#),
            json(r#"["a",1]"#),
        ]);
        assert_all_equal(&[list(vec![]), ietf("[]")]);
    }

    #[test]
    fn other_kinds() {
        let bytes = t(V::BytesVal(vec![1, 2, 3]));
        assert_all_equal(&[bytes.clone(), ietf("\"AQID\"")]);
        assert_all_equal(&[ietf(r#"{"a": 1, "b": "2"}"#), json(r#"{"b":2,"a":"1"}"#)]);
        assert_all_equal(&[TypedValue::default()]);
        assert_all_equal(&[ietf("{bad")]);
        assert_all_equal(&[t(V::ProtoBytes(vec![9]))]);
    }

    #[test]
    fn unequal_values() {
        let cases = [
            (s("123"), uint(124)),
            (ietf("\"123\""), uint(124)),
            (s("x"), s("y")),
            (s("x"), ietf("\"y\"")),
            (boolean(true), s("false")),
            (boolean(true), ietf("\"false\"")),
            (boolean(true), boolean(false)),
            (boolean(true), uint(1)),
            (s("True"), boolean(true)),
            (double(1.5), uint(1)),
            (double(1.5), ietf("1")),
            (decimal(15, 1), int(1)),
            (s("007"), s("7")),
            (s("\"x\""), ietf("\"x\"")),
            (s("x"), ietf("x")),
            (int(-1), uint(u64::MAX)),
            (uint(u64::MAX), ietf("\"18446744073709551614\"")),
            (uint(9_007_199_254_740_993), ietf("9007199254740992")),
            (list(vec![s("a"), s("b")]), ietf(r#"["b","a"]"#)),
            (list(vec![s("a")]), ietf(r#"["a","a"]"#)),
            (list(vec![s("a")]), s("a")),
            (double(f64::NAN), double(0.0)),
            (s("NaN"), uint(0)),
            (s("1e5x"), uint(100_000)),
            (s("12a"), int(12)),
            (TypedValue::default(), s("")),
            (ietf("null"), TypedValue::default()),
            (t(V::BytesVal(vec![1])), ietf("\"AQID\"")),
            (ietf(r#"{"a": 1}"#), ietf(r#"{"a": 2}"#)),
            (ietf("{bad"), ietf("{bad ")),
        ];
        for (a, b) in cases {
            assert!(!same_meaning(&a, &b), "{a:?} should differ from {b:?}");
            assert!(!same_meaning(&b, &a), "{b:?} should differ from {a:?}");
            assert!(
                !encoded_same_meaning(&a.encode_to_vec(), &b),
                "{a:?} (encoded) vs {b:?}"
            );
        }
    }

    #[test]
    fn large_values_compare_through_the_allocating_path() {
        let long = "x".repeat(500);
        assert!(encoded_same_meaning(&s(&long).encode_to_vec(), &s(&long)));
        assert!(encoded_same_meaning(
            &s(&long).encode_to_vec(),
            &ietf(&format!("\"{long}\""))
        ));
    }

    #[test]
    fn sets_are_written_in_the_device_encoding() {
        let cases = [
            (
                s("managed by netsync"),
                Encoding::JsonIetf,
                ietf("\"managed by netsync\""),
            ),
            (uint(1500), Encoding::JsonIetf, ietf("\"1500\"")),
            (int(-3), Encoding::JsonIetf, ietf("\"-3\"")),
            (decimal(150, 2), Encoding::JsonIetf, ietf("\"1.50\"")),
            (double(2.5), Encoding::JsonIetf, ietf("2.5")),
            (float(1.1), Encoding::JsonIetf, ietf("1.1")),
            (boolean(true), Encoding::JsonIetf, ietf("true")),
            (
                t(V::BytesVal(vec![1, 2, 3])),
                Encoding::JsonIetf,
                ietf("\"AQID\""),
            ),
            (
                list(vec![s("a"), uint(7)]),
                Encoding::JsonIetf,
                ietf(r#"["a","7"]"#),
            ),
            (json("{\"a\":1}"), Encoding::JsonIetf, ietf("{\"a\":1}")),
            (s("x"), Encoding::Json, json("\"x\"")),
            (uint(1500), Encoding::Json, json("1500")),
            (decimal(150, 2), Encoding::Json, json("1.5")),
            (
                list(vec![s("a"), uint(7)]),
                Encoding::Json,
                json(r#"["a",7]"#),
            ),
            (ietf("\"x\""), Encoding::Json, json("\"x\"")),
            (s("x"), Encoding::Proto, s("x")),
            // Without a value in running to show the leaf's type: as given.
            (ietf("\"x\""), Encoding::Proto, ietf("\"x\"")),
            (uint(1), Encoding::Ascii, uint(1)),
            (double(f64::NAN), Encoding::JsonIetf, double(f64::NAN)),
            (
                t(V::ProtoBytes(vec![1])),
                Encoding::Json,
                t(V::ProtoBytes(vec![1])),
            ),
        ];
        for (value, encoding, expected) in cases {
            let sent = for_device(&value, encoding, None);
            if let Some(V::DoubleVal(f)) = sent.value {
                assert!(f.is_nan());
                continue;
            }
            assert_eq!(sent, expected, "{value:?} in {encoding:?}");
        }
    }

    #[test]
    fn the_device_shows_how_it_writes_a_leaf() {
        // A 16-bit leaf the device writes as a number gets a number.
        assert_eq!(
            for_device(&uint(9000), Encoding::JsonIetf, Some(&ietf("1500"))),
            ietf("9000")
        );
        assert_eq!(
            for_device(&s("9000"), Encoding::JsonIetf, Some(&ietf("1500"))),
            ietf("9000")
        );
        // A 64-bit one it writes as a string stays a string.
        assert_eq!(
            for_device(&uint(9000), Encoding::JsonIetf, Some(&ietf("\"1500\""))),
            ietf("\"9000\"")
        );
        // A number written as a string where the device has a string leaf.
        assert_eq!(
            for_device(&double(2.5), Encoding::JsonIetf, Some(&ietf("\"x\""))),
            ietf("\"2.5\"")
        );
        // Text that is no number stays text; a different kind of hint is ignored.
        assert_eq!(
            for_device(&s("fast"), Encoding::JsonIetf, Some(&ietf("1500"))),
            ietf("\"fast\"")
        );
        assert_eq!(
            for_device(&boolean(true), Encoding::JsonIetf, Some(&ietf("[1]"))),
            ietf("true")
        );
        // Too large for an exact JSON number: stays a string.
        assert_eq!(
            for_device(
                &s("18446744073709551616"),
                Encoding::JsonIetf,
                Some(&ietf("1"))
            ),
            ietf("\"18446744073709551616\"")
        );
    }

    #[test]
    fn json_for_a_proto_device_takes_the_type_of_its_leaf() {
        let cases = [
            (ietf("\"9216\""), uint(1500), uint(9216)),
            (ietf("9216"), uint(1500), uint(9216)),
            (ietf("\"-3\""), int(5), int(-3)),
            (ietf("\"managed\""), s("old"), s("managed")),
            (json("\"x\""), ascii("old"), ascii("x")),
            (ietf("false"), boolean(true), boolean(false)),
            (ietf("2.5"), double(1.0), double(2.5)),
            (ietf("\"1.5\""), decimal(100, 2), decimal(150, 2)),
            (ietf("\"1.125\""), decimal(100, 2), decimal(1125, 3)),
            (
                ietf("\"AQID\""),
                t(V::BytesVal(vec![])),
                t(V::BytesVal(vec![1, 2, 3])),
            ),
            (
                ietf(r#"["a","b"]"#),
                list(vec![s("x")]),
                list(vec![s("a"), s("b")]),
            ),
            (ietf(r#"["7"]"#), list(vec![uint(1)]), list(vec![uint(7)])),
            // What would change the meaning, or has no typed form, stays as given.
            (ietf("\"big\""), uint(1), ietf("\"big\"")),
            (ietf("-1"), uint(1), ietf("-1")),
            (ietf("1.5"), int(1), ietf("1.5")),
            (ietf("\"x\""), ietf("\"y\""), ietf("\"x\"")),
            (ietf(r#"["a"]"#), list(vec![]), ietf(r#"["a"]"#)),
            (ietf(r#"{"a": 1}"#), s("x"), ietf(r#"{"a": 1}"#)),
        ];
        for (value, current, expected) in cases {
            assert_eq!(
                for_device(&value, Encoding::Proto, Some(&current)),
                expected,
                "{value:?} where the device has {current:?}"
            );
        }
    }

    #[allow(deprecated, reason = "devices still send float_val and decimal_val")]
    fn arb_scalar() -> impl Strategy<Value = TypedValue> {
        let text = prop_oneof![
            Just(String::new()),
            "[a-z]{1,3}",
            "-?[0-9]{1,3}(\\.[0-9]{0,2})?",
            Just("true".to_string()),
            Just("false".to_string()),
            Just("NaN".to_string()),
            Just("AQID".to_string()),
        ];
        prop_oneof![
            text.clone().prop_map(|x| t(V::StringVal(x))),
            text.prop_map(|x| t(V::AsciiVal(x))),
            (-300i64..300).prop_map(int),
            prop_oneof![0u64..300, Just(u64::MAX)].prop_map(uint),
            any::<bool>().prop_map(boolean),
            prop_oneof![
                (-300i32..300).prop_map(|i| f64::from(i) / 4.0),
                Just(f64::NAN),
                any::<f64>()
            ]
            .prop_map(double),
            prop_oneof![(-300i32..300).prop_map(|i| i as f32 / 4.0), Just(f32::NAN)]
                .prop_map(float),
            (-3000i64..3000, 0u32..4).prop_map(|(d, p)| decimal(d, p)),
            prop::collection::vec(any::<u8>(), 0..3).prop_map(|b| t(V::BytesVal(b))),
            Just(t(V::ProtoBytes(vec![1]))),
            Just(TypedValue::default()),
        ]
    }

    /// Scalars, leaf-lists of them, and each of those as JSON and JSON_IETF
    /// in both RFC 7951 and plain form.
    fn arb_value() -> impl Strategy<Value = TypedValue> {
        let value = prop_oneof![
            3 => arb_scalar(),
            1 => prop::collection::vec(arb_scalar(), 0..3).prop_map(list),
            1 => Just(ietf(r#"{"a": "1", "b": [true]}"#)),
            1 => Just(ietf("{bad")),
        ];
        (value, 0u8..3).prop_map(|(v, form)| match form {
            1 => for_device(&v, Encoding::JsonIetf, None),
            2 => for_device(&v, Encoding::Json, None),
            _ => v,
        })
    }

    proptest! {
        #[test]
        fn reflexive_and_symmetric(a in arb_value(), b in arb_value()) {
            prop_assert!(same_meaning(&a, &a), "{:?}", a);
            prop_assert_eq!(same_meaning(&a, &b), same_meaning(&b, &a), "{:?} {:?}", a, b);
            prop_assert_eq!(
                encoded_same_meaning(&a.encode_to_vec(), &b),
                same_meaning(&a, &b),
                "{:?} {:?}", a, b
            );
        }

        /// What a Set sends means what the intent says, in every encoding,
        /// whatever the leaf holds now.
        #[test]
        fn a_set_means_the_value(v in arb_value(), current in prop::option::of(arb_value())) {
            for encoding in [Encoding::JsonIetf, Encoding::Json, Encoding::Proto, Encoding::Ascii] {
                let sent = for_device(&v, encoding, current.as_ref());
                prop_assert!(same_meaning(&sent, &v), "{:?} in {:?} sent as {:?}", v, encoding, sent);
            }
        }
    }
}
