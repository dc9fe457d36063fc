//! Call arguments as Biscuit terms: `arg("<name>", <value>)`, one per top-level argument.
//!
//! JSON strings, integers, booleans and null map to the same Biscuit terms; objects and
//! arrays to Datalog 3.3 maps and arrays. Biscuit has no floating point: a number that is
//! not a 64-bit integer becomes the string of its JSON text, so a numeric comparison
//! against it fails (closed) instead of passing.

use std::collections::BTreeMap;

use biscuit_auth::builder::{Fact, MapKey, Term, fact, string};
use serde_json::Value;

/// Deepest nesting of arguments accepted (deeper is a 400).
pub const MAX_DEPTH: usize = 32;

/// The `arg` facts of an argument object.
pub fn arg_facts(args: &serde_json::Map<String, Value>) -> Vec<Fact> {
    args.iter()
        .map(|(name, value)| fact("arg", &[string(name), to_term(value)]))
        .collect()
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
        Value::Number(n) => match n.as_i64() {
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
        assert_eq!(to_term(&json!(u64::MAX)), Term::Str(u64::MAX.to_string()));
        assert_eq!(to_term(&json!(null)), Term::Null);
        assert!(matches!(to_term(&json!({"a": [1]})), Term::Map(_)));
        let facts = arg_facts(json!({"path": "/data/x"}).as_object().unwrap());
        assert_eq!(facts[0].to_string(), "arg(\"path\", \"/data/x\")");
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({"a": {"b": [1]}})), 3);
    }
}
