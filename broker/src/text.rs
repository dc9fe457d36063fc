//! Free text people write — a task's purpose, an approver's note, a revocation reason:
//! shown to approvers, written to the audit log and the database, so it is bounded and
//! printable.

/// Longest free text, in characters.
pub const MAX_CHARS: usize = 1000;

/// Whether `text` is printable: no control characters but newline and tab. (PostgreSQL
/// refuses NUL; terminals and logs mis-show the rest.)
pub fn is_plain_text(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// Whether `text` is acceptable free text: printable and at most [`MAX_CHARS`].
pub fn is_free_text(text: &str) -> bool {
    text.chars().count() <= MAX_CHARS && is_plain_text(text)
}

/// Text from elsewhere (a client's name, a provider's error) as Leash shows it: without
/// control or format characters (bidirectional overrides and isolates, zero-width
/// characters: they could make the text rewrite what is around it), trimmed, at most
/// `max` characters.
pub fn shown(text: &str, max: usize) -> String {
    let is_format = |c: char| {
        matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    };
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control() && !is_format(*c))
        .take(max)
        .collect();
    cleaned.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_is_printable_and_bounded() {
        assert!(is_free_text("line one\nline two\twith a tab, and ünïcødé"));
        assert!(is_free_text(&"é".repeat(MAX_CHARS)));
        assert!(!is_free_text(&"x".repeat(MAX_CHARS + 1)));
        for bad in ["nul\0", "bell\u{7}", "escape\u{1b}[31m", "del\u{7f}"] {
            assert!(!is_free_text(bad), "{bad:?}");
        }
    }
}
