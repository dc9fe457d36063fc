//! A call's arguments as the audit log, the approver's timeline and a task's evidence
//! show them: every value the tool's input schema marks `writeOnly` (a password, a key
//! the agent passes on) is replaced by [`MASK`] before anything is kept.
//!
//! The walk follows only `properties`, `additionalProperties`, `items`, `prefixItems`
//! and `additionalItems`. Wherever anything else in a schema — a reference, a
//! combinator, a conditional, a keyword of a draft it does not know — could lead to a
//! `writeOnly` (it mentions one, or a reference at any depth), the whole value at that
//! place is masked: when in doubt, hide. A schema
//! that never mentions `writeOnly` costs one look at the schema.

use serde_json::{Map, Value};

/// What a masked value reads as.
pub const MASK: &str = "[writeOnly]";

/// The keywords the walk follows with the value.
const FOLLOWED: &[&str] = &[
    "properties",
    "additionalProperties",
    "items",
    "prefixItems",
    "additionalItems",
];

/// Reached only through a reference, which masks on its own.
const DEFINITIONS: &[&str] = &["$defs", "definitions"];

/// `args` with every `writeOnly` value of `schema` masked.
pub fn masked(schema: &Value, args: &Value) -> Value {
    masked_with_secrets(schema, args).0
}

/// `args` masked, and the text of every string or number it masked (for scrubbing
/// them from free text such as an upstream's error message).
pub fn masked_with_secrets(schema: &Value, args: &Value) -> (Value, Vec<String>) {
    let mut secrets = Vec::new();
    if !mentions_write_only(schema) {
        return (args.clone(), secrets);
    }
    // The schema mentions it somewhere, so any reference may lead to it.
    let shown = mask(schema, args, &mut secrets);
    (shown, secrets)
}

/// Replaces every secret (of two characters or more) in `text` by [`MASK`], as it is
/// and as an upstream commonly quotes it back: inside a JSON string, or URL-encoded.
/// Longest first, so no secret is left half shown by a shorter one inside it.
pub fn scrubbed(text: &str, secrets: &[String]) -> String {
    let mut spellings: Vec<String> = secrets
        .iter()
        .filter(|s| s.chars().count() >= 2)
        .flat_map(|secret| spellings_of(secret))
        .collect();
    spellings.sort_by_key(|spelling| std::cmp::Reverse(spelling.len()));
    spellings.dedup();
    let mut text = text.to_string();
    for spelling in spellings {
        text = text.replace(spelling.as_str(), MASK);
    }
    text
}

/// `secret` as is, JSON-escaped, form-encoded and percent-encoded.
fn spellings_of(secret: &str) -> [String; 4] {
    let quoted = Value::String(secret.into()).to_string();
    let escaped = quoted[1..quoted.len() - 1].to_string();
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent = form.replace('+', "%20");
    [secret.to_string(), escaped, form, percent]
}

/// [`MASK`], remembering every string and number inside `value`.
fn hide(value: &Value, secrets: &mut Vec<String>) -> Value {
    match value {
        Value::String(text) => secrets.push(text.clone()),
        Value::Number(number) => secrets.push(number.to_string()),
        Value::Array(items) => {
            for item in items {
                hide(item, secrets);
            }
        }
        Value::Object(fields) => {
            for field in fields.values() {
                hide(field, secrets);
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
    Value::String(MASK.into())
}

fn mask(schema: &Value, value: &Value, secrets: &mut Vec<String>) -> Value {
    let Some(schema) = schema.as_object() else {
        return value.clone();
    };
    if schema.get("writeOnly") == Some(&Value::Bool(true)) {
        return hide(value, secrets);
    }
    let uncertain = schema.iter().any(|(keyword, sub)| {
        if FOLLOWED.contains(&keyword.as_str()) || DEFINITIONS.contains(&keyword.as_str()) {
            return false;
        }
        // A reference ($ref, $dynamicRef, $recursiveRef) may lead anywhere, and so may
        // one inside a combinator (`anyOf: [{$ref}, {type: null}]`, pydantic's
        // `Optional[Model]`).
        is_reference(keyword) || mentions_reference(sub) || mentions_write_only(sub)
    });
    if uncertain {
        return hide(value, secrets);
    }
    match value {
        Value::Object(fields) => Value::Object(mask_fields(schema, fields, secrets)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| match item_schema(schema, index) {
                    Some(sub) => mask(sub, item, secrets),
                    None => item.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn mask_fields(
    schema: &Map<String, Value>,
    fields: &Map<String, Value>,
    secrets: &mut Vec<String>,
) -> Map<String, Value> {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    fields
        .iter()
        .map(|(name, field)| {
            let sub = properties.and_then(|p| p.get(name)).or(additional);
            let shown = match sub {
                Some(sub) => mask(sub, field, secrets),
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

/// Whether `keyword` refers to another schema (`$ref`, `$dynamicRef`, `$recursiveRef`).
fn is_reference(keyword: &str) -> bool {
    keyword.starts_with('$') && keyword.ends_with("Ref") || keyword == "$ref"
}

/// Whether a reference appears anywhere in `schema`.
fn mentions_reference(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| is_reference(key) || mentions_reference(value)),
        Value::Array(items) => items.iter().any(mentions_reference),
        _ => false,
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
    fn any_keyword_the_walk_does_not_follow_masks_when_it_could_hide_a_write_only() {
        let schema = json!({
            "type": "object",
            "properties": {
                "mode": {"type": "string"},
                "secret": {"writeOnly": true}
            },
            "dependencies": {"mode": {"properties": {"token": {"writeOnly": true}}}}
        });
        let args = json!({"mode": "a", "token": "t"});
        // `dependencies` could make `token` write-only: the whole object is hidden.
        assert_eq!(masked(&schema, &args), json!(MASK));
        let nested = json!({
            "properties": {
                "child": {"$recursiveRef": "#"},
                "blob": {"contentSchema": {"properties": {"k": {"writeOnly": true}}}},
                "secret": {"writeOnly": true}
            }
        });
        assert_eq!(
            masked(
                &nested,
                &json!({"child": {"secret": "s"}, "blob": "{}", "other": 1})
            ),
            json!({"child": MASK, "blob": MASK, "other": 1})
        );
    }

    #[test]
    fn a_reference_inside_a_combinator_masks_the_whole_place() {
        // pydantic's `creds: Optional[Creds] = None` (anyOf) and older `allOf` wrapping.
        let schema = json!({
            "$defs": {"Creds": {"type": "object", "properties": {
                "user": {"type": "string"},
                "password": {"type": "string", "format": "password", "writeOnly": true}
            }}},
            "type": "object",
            "properties": {
                "creds": {"anyOf": [{"$ref": "#/$defs/Creds"}, {"type": "null"}], "default": null},
                "wrapped": {"allOf": [{"$ref": "#/$defs/Creds"}]},
                "deep": {"oneOf": [{"type": "object", "properties": {"c": {"$ref": "#/$defs/Creds"}}}]},
                "q": {"type": "string"}
            }
        });
        let creds = json!({"user": "ada", "password": "hunter2"});
        let (shown, secrets) = super::masked_with_secrets(
            &schema,
            &json!({"creds": creds, "wrapped": creds, "deep": {"c": creds}, "q": "x"}),
        );
        assert_eq!(
            shown,
            json!({"creds": MASK, "wrapped": MASK, "deep": MASK, "q": "x"})
        );
        assert!(secrets.contains(&"hunter2".to_string()), "{secrets:?}");
    }

    #[test]
    fn the_masked_values_are_scrubbed_from_free_text() {
        let schema = json!({"properties": {"pin": {"writeOnly": true}, "keys": {"items": {"writeOnly": true}}}});
        let (shown, secrets) = super::masked_with_secrets(
            &schema,
            &json!({"pin": 4921, "keys": ["abc-123"], "name": "ada"}),
        );
        assert_eq!(shown, json!({"pin": MASK, "keys": [MASK], "name": "ada"}));
        assert_eq!(
            super::scrubbed("invalid pin 4921 for key abc-123 of ada", &secrets),
            format!("invalid pin {MASK} for key {MASK} of ada")
        );
    }

    #[test]
    fn a_secret_quoted_back_escaped_or_encoded_is_scrubbed_too() {
        let secrets = vec![r#"p"w\x y&z"#.to_string(), "p\"w".to_string()];
        for echo in [
            r#"bad password: {"password": "p\"w\\x y&z"}"#,
            "GET /login?password=p%22w%5Cx+y%26z failed",
            "GET /login/p%22w%5Cx%20y%26z failed",
        ] {
            let scrubbed = super::scrubbed(echo, &secrets);
            assert!(scrubbed.contains(MASK), "{echo} -> {scrubbed}");
            for leak in ["p\"w", "x y", "x+y", "x%20y", "p%22w", "y&z", "y%26z"] {
                assert!(!scrubbed.contains(leak), "{echo} -> {scrubbed}");
            }
        }
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
