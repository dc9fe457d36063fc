//! A call's arguments as the audit log, the approver's timeline and a task's evidence
//! show them: every value the tool's input schema marks `writeOnly` (a password, a key
//! the agent passes on) is replaced by [`MASK`] before anything is kept.
//!
//! The walk follows `properties`, `additionalProperties`, `items` and `prefixItems`.
//! Where the schema chooses a subschema by other means (`$ref`, `allOf`/`anyOf`/`oneOf`,
//! `if`, `patternProperties`, …) and a `writeOnly` could be behind it, the whole value at
//! that place is masked: when in doubt, hide.

use serde_json::{Map, Value};

/// What a masked value reads as.
pub const MASK: &str = "[writeOnly]";

/// Keywords whose subschema a value-directed walk cannot pick with certainty.
const UNFOLLOWED: &[&str] = &[
    "$ref",
    "$dynamicRef",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
];

/// `args` with every `writeOnly` value of `schema` masked.
pub fn masked(schema: &Value, args: &Value) -> Value {
    mask(schema, schema, args)
}

fn mask(root: &Value, schema: &Value, value: &Value) -> Value {
    let Some(schema) = schema.as_object() else {
        return value.clone();
    };
    if schema.get("writeOnly") == Some(&Value::Bool(true)) {
        return Value::String(MASK.into());
    }
    let uncertain = UNFOLLOWED.iter().any(|keyword| {
        schema.get(*keyword).is_some_and(|sub| {
            // A reference may lead anywhere in the document.
            let reference = matches!(*keyword, "$ref" | "$dynamicRef");
            mentions_write_only(sub) || (reference && mentions_write_only(root))
        })
    });
    if uncertain {
        return Value::String(MASK.into());
    }
    match value {
        Value::Object(fields) => Value::Object(mask_fields(root, schema, fields)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| match item_schema(schema, index) {
                    Some(sub) => mask(root, sub, item),
                    None => item.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn mask_fields(
    root: &Value,
    schema: &Map<String, Value>,
    fields: &Map<String, Value>,
) -> Map<String, Value> {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    fields
        .iter()
        .map(|(name, field)| {
            let sub = properties.and_then(|p| p.get(name)).or(additional);
            let shown = match sub {
                Some(sub) => mask(root, sub, field),
                None => field.clone(),
            };
            (name.clone(), shown)
        })
        .collect()
}

fn item_schema(schema: &Map<String, Value>, index: usize) -> Option<&Value> {
    if let Some(sub) = schema
        .get("prefixItems")
        .and_then(Value::as_array)
        .and_then(|prefix| prefix.get(index))
    {
        return Some(sub);
    }
    match schema.get("items") {
        // Draft 4–2019 tuples: one schema per position, then `additionalItems`.
        Some(Value::Array(tuple)) => tuple.get(index).or(schema.get("additionalItems")),
        other => other,
    }
}

/// Whether `writeOnly: true` appears anywhere in `schema`.
fn mentions_write_only(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map.iter().any(|(key, value)| {
            (key == "writeOnly" && value == &Value::Bool(true)) || mentions_write_only(value)
        }),
        Value::Array(items) => items.iter().any(mentions_write_only),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{MASK, masked};

    #[test]
    fn write_only_properties_are_masked_at_any_depth() {
        let schema = json!({
            "type": "object",
            "properties": {
                "user": {"type": "string"},
                "password": {"type": "string", "writeOnly": true},
                "profile": {"type": "object", "properties": {"pin": {"writeOnly": true}}},
                "keys": {"type": "array", "items": {"type": "string", "writeOnly": true}},
                "pairs": {"type": "array", "prefixItems": [{"type": "string"}, {"writeOnly": true}]},
                "extra": {"type": "object", "additionalProperties": {"writeOnly": true}}
            }
        });
        let args = json!({
            "user": "ada",
            "password": "hunter2",
            "profile": {"pin": 1234, "city": "Paris"},
            "keys": ["k1", "k2"],
            "pairs": ["a", "secret"],
            "extra": {"x": "s1"},
            "unlisted": "kept"
        });
        assert_eq!(
            masked(&schema, &args),
            json!({
                "user": "ada",
                "password": MASK,
                "profile": {"pin": MASK, "city": "Paris"},
                "keys": [MASK, MASK],
                "pairs": ["a", MASK],
                "extra": {"x": MASK},
                "unlisted": "kept"
            })
        );
    }

    #[test]
    fn a_write_only_value_behind_a_choice_masks_the_whole_place() {
        let schema = json!({
            "type": "object",
            "properties": {
                "auth": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"key": {"writeOnly": true}}}]},
                "plain": {"anyOf": [{"type": "string"}, {"type": "number"}]},
                "linked": {"$ref": "#/$defs/secret"}
            },
            "$defs": {"secret": {"type": "string", "writeOnly": true}}
        });
        let args = json!({"auth": {"key": "s"}, "plain": "shown", "linked": "s2"});
        assert_eq!(
            masked(&schema, &args),
            json!({"auth": MASK, "plain": "shown", "linked": MASK})
        );
        // A whole schema that is write-only hides everything.
        assert_eq!(
            masked(&json!({"writeOnly": true}), &json!({"a": 1})),
            json!(MASK)
        );
    }

    #[test]
    fn schemas_without_write_only_change_nothing() {
        let args = json!({"q": "x", "n": [1, 2], "deep": {"a": {"b": true}}});
        assert_eq!(masked(&json!({"type": "object"}), &args), args);
        assert_eq!(masked(&json!(true), &args), args);
        let referenced =
            json!({"properties": {"q": {"$ref": "#/$defs/q"}}, "$defs": {"q": {"type": "string"}}});
        assert_eq!(masked(&referenced, &args), args);
    }
}
