//! Reading the values of one policy file: typed fields with their places, so every
//! mistake is reported by file, line and column; `${NAME}` substitution.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::model::Diagnostic;
use super::toml_value::{line_col, start};

/// One file being read: its text, for positions, and the shared list of mistakes.
pub(super) struct FileCtx<'a> {
    pub(super) path: &'a Path,
    pub(super) source: &'a str,
    pub(super) diagnostics: &'a mut Vec<Diagnostic>,
}

pub(super) type Fields<'t, 'i> = BTreeMap<&'t str, &'t Spanned<DeValue<'i>>>;

impl<'a> FileCtx<'a> {
    pub(super) fn error(&mut self, offset: usize, message: String) {
        let (line, column) = line_col(self.source, offset);
        self.diagnostics.push(Diagnostic {
            file: self.path.to_path_buf(),
            line,
            column,
            message,
        });
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        line_col(self.source, offset).0
    }

    /// The entries of a `[tools]`-like section: a table of tables.
    pub(super) fn section<'t, 'i>(
        &mut self,
        value: &'t Spanned<DeValue<'i>>,
        what: &str,
    ) -> Vec<(&'t Spanned<toml::de::DeString<'i>>, &'t DeTable<'i>)> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(start(value), format!("{what} must be a table"));
            return Vec::new();
        };
        let mut entries = Vec::new();
        for (name, entry) in table.iter() {
            match entry.get_ref().as_table() {
                Some(inner) => entries.push((name, inner)),
                None => self.error(
                    start(name),
                    format!("{what}.{} must be a table", name.get_ref()),
                ),
            }
        }
        entries
    }

    /// The keys of `table`, reporting every key not in `allowed`.
    pub(super) fn fields<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        allowed: &[&str],
        what: &str,
    ) -> Fields<'t, 'i> {
        let mut fields = BTreeMap::new();
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            if allowed.contains(&name) {
                fields.insert(name, value);
            } else {
                self.error(
                    start(key),
                    format!(
                        "unknown key {name:?} in {what} (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        fields
    }

    pub(super) fn string(
        &mut self,
        fields: &Fields<'_, '_>,
        key: &str,
        what: &str,
    ) -> Option<(String, usize)> {
        let value = fields.get(key)?;
        match value.get_ref().as_str() {
            Some(s) => Some((s.to_string(), start(value))),
            None => {
                self.error(start(value), format!("{what}.{key} must be a string"));
                None
            }
        }
    }

    /// A `true`/`false` field, if present.
    pub(super) fn flag(&mut self, fields: &Fields<'_, '_>, key: &str, what: &str) -> Option<bool> {
        let value = fields.get(key)?;
        let flag = value.get_ref().as_bool();
        if flag.is_none() {
            self.error(start(value), format!("{what}.{key} must be true or false"));
        }
        flag
    }

    pub(super) fn integer(
        &mut self,
        fields: &Fields<'_, '_>,
        key: &str,
        what: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let value = fields.get(key)?;
        let parsed = value
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(
                    start(value),
                    format!("{what}.{key} must be an integer from {min} to {max}"),
                );
                None
            }
        }
    }

    pub(super) fn strings(
        &mut self,
        fields: &Fields<'_, '_>,
        key: &str,
        what: &str,
    ) -> Option<Vec<(String, usize)>> {
        let value = fields.get(key)?;
        let Some(items) = value.get_ref().as_array() else {
            self.error(
                start(value),
                format!("{what}.{key} must be an array of strings"),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s.to_string(), start(item))),
                None => self.error(start(item), format!("{what}.{key} must hold only strings")),
            }
        }
        Some(out)
    }

    /// Replaces every `${NAME}` in `text` with the environment variable's value.
    pub(super) fn substitute(
        &mut self,
        text: &str,
        offset: usize,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(begin) = rest.find("${") {
            out.push_str(&rest[..begin]);
            let after = &rest[begin + 2..];
            let Some(end) = after.find('}') else {
                self.error(offset, "unterminated ${ in value".into());
                return None;
            };
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                self.error(
                    offset,
                    format!("${{{name}}} is not a valid environment variable reference"),
                );
                return None;
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None => {
                    self.error(offset, format!("environment variable {name} is not set"));
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}
