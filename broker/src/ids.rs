//! Identifiers: generation of task ids and validation of every name that
//! reaches Datalog or a path (agents, approvers, tools, task ids).

use rand::RngCore;

/// Prefix of every task id.
pub const TASK_PREFIX: &str = "tsk_";

/// A fresh random task id: `tsk_` and 32 lowercase hex digits (128 bits).
pub fn new_task_id() -> String {
    format!("{TASK_PREFIX}{}", random_hex(16))
}

/// `n` random bytes from the OS generator, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether `id` has the exact shape of a task id.
pub fn is_task_id(id: &str) -> bool {
    id.strip_prefix(TASK_PREFIX).is_some_and(|rest| {
        rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `name` is a valid agent or approver id: 1–64 ASCII letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit. Only ASCII, so look-alike names cannot collide.
pub fn is_principal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `name` is a valid user name: 1–128 ASCII letters, digits, `-`, `_`, `.`, `@`
/// and `+`, starting with a letter or digit (`alice`, `alice@example.com`). ASCII only,
/// like agent ids, so look-alike names cannot collide; e-mail addresses are compared as
/// written (case included).
pub fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'))
}

/// Whether `name` is a valid tool name: dot-separated segments of ASCII letters, digits,
/// `-` and `_`, at most 128 bytes (`web.search`, `everything.echo`).
pub fn is_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_and_reject_look_alikes() {
        let id = new_task_id();
        assert!(is_task_id(&id), "{id}");
        assert!(!is_task_id("tsk_"));
        assert!(!is_task_id(&id.to_uppercase()));
        assert!(!is_task_id(&format!("{id}0")));
        assert!(!is_task_id("tsk_../../etc/passwd000000000000000"));
    }

    #[test]
    fn names_are_plain_ascii() {
        assert!(is_principal_name("research-bot"));
        assert!(!is_principal_name("rеsearch-bot")); // Cyrillic e
        assert!(!is_principal_name("-bot"));
        assert!(!is_principal_name("a\"b"));
        assert!(is_tool_name("web.search"));
        assert!(!is_tool_name("web..search"));
        assert!(!is_tool_name("web.search/.."));
        assert!(!is_tool_name("web.*"));
    }
}
