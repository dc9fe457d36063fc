//! Call arguments as Biscuit terms: `arg("<name>", <value>)`, one per top-level argument.
//!
//! JSON strings, integers, booleans and null map to the same Biscuit terms; objects and
//! arrays to Datalog 3.3 maps and arrays. A number with an integral value (`1234.0`,
//! `1.234e3`, `-0.0`) is the integer it equals: [`normalize_numbers`] rewrites it in the
//! arguments *before* they are checked and forwarded, so what a check saw is exactly what
//! the upstream receives. Biscuit has no floating point: any other number that is not a
//! 64-bit integer becomes the string of its JSON text, so a numeric comparison against it
//! fails (closed) instead of passing.

use std::collections::BTreeMap;

use biscuit_auth::builder::{Fact, MapKey, Term, fact, string};
use serde_json::Value;

/// Deepest nesting of arguments accepted (deeper is a 400).
pub const MAX_DEPTH: usize = 32;

/// Most JSON values in one call's arguments (every argument's value and everything nested
/// in it; more is a 400). The authorizer's time limit does not cover building the facts,
/// whose cost grows faster than linearly with the number of distinct strings; this bounds
/// it. The Python SDK applies the same limit.
pub const MAX_VALUES: usize = 10_000;

/// How many JSON values the arguments hold (each argument's value, nested ones included),
/// counting no further than `MAX_VALUES + 1`.
pub fn value_count(args: &serde_json::Map<String, Value>) -> usize {
    fn count(value: &Value, left: &mut usize) {
        if *left == 0 {
            return;
        }
        *left -= 1;
        match value {
            Value::Array(items) => items.iter().for_each(|v| count(v, left)),
            Value::Object(map) => map.values().for_each(|v| count(v, left)),
            _ => {}
        }
    }
    let mut left = MAX_VALUES + 1;
    args.values().for_each(|v| count(v, &mut left));
    MAX_VALUES + 1 - left
}

/// The `arg` facts of an argument object.
pub fn arg_facts(args: &serde_json::Map<String, Value>) -> Vec<Fact> {
    args.iter()
        .map(|(name, value)| fact("arg", &[string(name), to_term(value)]))
        .collect()
}

/// Rewrites every number with an integral value that fits in 64 bits (`1234.0`,
/// `1.234e3`, `1e2`, `-0.0`) as that integer, at any depth. The broker applies it to the
/// arguments before checking and forwarding them, so a deny-list written for `1234`
/// also catches `1234.0`, and the upstream receives the value the check saw.
pub fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(i) = n.as_f64().and_then(integral) {
                *value = Value::from(i);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

/// `f` as an `i64` when it is a whole number in range.
fn integral(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; every finite f64 in [-2^63, 2^63) with no
    // fraction converts exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

/// Nesting depth of a JSON value (a scalar is 0).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// One JSON value as a Biscuit term.
pub fn to_term(value: &Value) -> Term {
    match value {
        Value::Null => Term::Null,
        Value::Bool(b) => Term::Bool(*b),
        Value::Number(n) => match n.as_i64().or_else(|| n.as_f64().and_then(integral)) {
            Some(i) => Term::Integer(i),
            None => Term::Str(n.to_string()),
        },
        Value::String(s) => Term::Str(s.clone()),
        Value::Array(items) => Term::Array(items.iter().map(to_term).collect()),
        Value::Object(map) => Term::Map(
            map.iter()
                .map(|(k, v)| (MapKey::Str(k.clone()), to_term(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn terms_follow_the_vocabulary() {
        assert_eq!(to_term(&json!(5)), Term::Integer(5));
        assert_eq!(to_term(&json!(1.5)), Term::Str("1.5".into()));
        assert_eq!(to_term(&json!(1234.0)), Term::Integer(1234));
        assert_eq!(to_term(&json!(-0.0)), Term::Integer(0));
        assert_eq!(to_term(&json!(u64::MAX)), Term::Str(u64::MAX.to_string()));
        assert_eq!(to_term(&json!(null)), Term::Null);
        assert!(matches!(to_term(&json!({"a": [1]})), Term::Map(_)));
        let facts = arg_facts(json!({"path": "/data/x"}).as_object().unwrap());
        assert_eq!(facts[0].to_string(), "arg(\"path\", \"/data/x\")");
    }

    #[test]
    fn integral_numbers_become_integers_everywhere() {
        for (text, expected) in [
            ("1234.0", json!(1234)),
            ("1.234e3", json!(1234)),
            ("1e2", json!(100)),
            ("-0.0", json!(0)),
            ("-5.0", json!(-5)),
            ("1.5", json!(1.5)),
            ("1e300", json!(1e300)),
            ("9223372036854775807", json!(i64::MAX)),
            ("18446744073709551615", json!(u64::MAX)),
        ] {
            let mut value: Value = serde_json::from_str(text).unwrap();
            normalize_numbers(&mut value);
            assert_eq!(value, expected, "{text}");
            assert_eq!(value.to_string(), expected.to_string(), "{text}");
        }
        let mut nested: Value =
            serde_json::from_str(r#"{"a": [1.0, {"b": 2e0}], "c": "3.0"}"#).unwrap();
        normalize_numbers(&mut nested);
        assert_eq!(nested, json!({"a": [1, {"b": 2}], "c": "3.0"}));
        assert_eq!(to_term(&nested["a"][0]), Term::Integer(1));
    }

    #[test]
    fn values_are_counted_at_every_depth_up_to_one_past_the_limit() {
        let args = json!({"a": 1, "b": [1, 2, {"c": null}], "d": {}});
        assert_eq!(value_count(args.as_object().unwrap()), 7);
        let many = json!({"tags": vec![0; MAX_VALUES * 3]});
        assert_eq!(value_count(many.as_object().unwrap()), MAX_VALUES + 1);
        let at_limit = json!({"tags": vec![0; MAX_VALUES - 1]});
        assert_eq!(value_count(at_limit.as_object().unwrap()), MAX_VALUES);
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({"a": {"b": [1]}})), 3);
    }
}
