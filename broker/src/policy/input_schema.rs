//! JSON Schema: compiled once per tool at policy load, checked on every call.

use serde_json::{Value, json};

/// Most violations listed in one 422 answer.
const MAX_VIOLATIONS: usize = 20;

/// Compiles a tool's input schema; the message says why it is not a valid schema.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err("the schema must be a table (a JSON object)".into());
    }
    jsonschema::validator_for(schema).map_err(|e| e.masked().to_string())
}

/// Every violation of `args` against the schema, as `{"pointer","message"}`.
/// Messages mask the argument values: they are the caller's data, and may be huge.
pub fn violations(validator: &jsonschema::Validator, args: &Value) -> Vec<Value> {
    validator
        .iter_errors(args)
        .take(MAX_VIOLATIONS)
        .map(|error| {
            json!({
                "pointer": error.instance_path().as_str(),
                "message": error.masked().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_carry_json_pointers_and_no_values() {
        let validator = compile(&json!({
            "type": "object",
            "properties": { "query": { "type": "string", "maxLength": 3 } },
            "additionalProperties": false
        }))
        .unwrap();
        let found = violations(&validator, &json!({"query": "secret-long", "x": 1}));
        assert_eq!(found.len(), 2, "{found:?}");
        let text = serde_json::to_string(&found).unwrap();
        assert!(text.contains("\"/query\""), "{text}");
        assert!(!text.contains("secret-long"), "{text}");
        assert!(violations(&validator, &json!({"query": "ok"})).is_empty());
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(compile(&json!({"type": "objekt"})).is_err());
        assert!(compile(&json!(true)).is_err());
    }

    /// A schema that refers outside itself is refused, never fetched: Leash would have
    /// to go where a tool server points it (a request it did not choose), and a
    /// `writeOnly` there could not be masked (`write_only` reads only the schema).
    #[test]
    fn references_outside_the_schema_are_refused() {
        for target in [
            "https://schemas.example/creds.json",
            "http://127.0.0.1:9/creds.json#/$defs/c",
            "file:///etc/passwd",
            "other.json",
        ] {
            let schema = json!({"type": "object", "properties": {"c": {"$ref": target}}});
            assert!(compile(&schema).is_err(), "{target}");
        }
        let local = json!({"type": "object", "properties": {"c": {"$ref": "#/$defs/c"}},
                           "$defs": {"c": {"type": "string"}}});
        assert!(compile(&local).is_ok());
    }
}
