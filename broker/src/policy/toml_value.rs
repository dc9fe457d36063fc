//! Converting spanned TOML values into JSON values and source positions.

use toml::Spanned;
use toml::de::DeValue;

/// A TOML value as JSON (for schemas and typed reads). Datetimes become strings.
pub fn to_json(value: &DeValue<'_>) -> Result<serde_json::Value, String> {
    Ok(match value {
        DeValue::String(s) => serde_json::Value::String(s.to_string()),
        DeValue::Integer(i) => {
            let parsed = i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("integer {} is out of range", i.as_str()))?;
            serde_json::Value::from(parsed)
        }
        DeValue::Float(f) => {
            let parsed: f64 = f
                .as_str()
                .parse()
                .map_err(|_| format!("float {} is not a finite number", f.as_str()))?;
            serde_json::Number::from_f64(parsed)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("float {} is not a finite number", f.as_str()))?
        }
        DeValue::Boolean(b) => serde_json::Value::Bool(*b),
        DeValue::Datetime(d) => serde_json::Value::String(d.to_string()),
        DeValue::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|item| to_json(item.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => {
            let mut object = serde_json::Map::new();
            for (key, value) in table.iter() {
                object.insert(key.get_ref().to_string(), to_json(value.get_ref())?);
            }
            serde_json::Value::Object(object)
        }
    })
}

/// 1-based line and column of a byte offset in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = source
        .get(line_start..offset)
        .map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

/// Start offset of a spanned item.
pub fn start<T>(item: &Spanned<T>) -> usize {
    item.span().start
}
