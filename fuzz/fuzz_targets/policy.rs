//! Policy parsing: text → `leash_broker::policy::load_sources`, the code behind
//! `leash serve` and `leash policy check` (TOML with spans, schemas compiled, checks
//! parsed, `${NAME}` substituted, every mistake with file:line:column).
//!
//! A line `#--- next file ---` splits the input into two files, so duplicate
//! definitions across files are reached. Invariants: every diagnostic points into its
//! file (line and column within the text); a loaded policy answers its lookups.

#![no_main]

use std::path::PathBuf;

use leash_broker::policy::{Policy, ToolPattern, load_sources};
use libfuzzer_sys::fuzz_target;

const SEPARATOR: &str = "\n#--- next file ---\n";

fn env(name: &str) -> Option<String> {
    match name {
        "FUZZ_TOKEN" => Some("s3cret".into()),
        "FUZZ_EMPTY" => Some(String::new()),
        "FUZZ_NEWLINE" => Some("a\r\nb".into()),
        _ => None,
    }
}

fn exercise(policy: &Policy) {
    let _ = policy.longest_ttl();
    for (name, tool) in &policy.tools {
        assert!(policy.tool(name).is_some());
        let _ = format!("{tool:?}");
        let _ =
            leash_broker::policy::input_schema::violations(&tool.validator, &serde_json::json!({}));
    }
    for (agent, grant) in &policy.grants {
        assert!(policy.grant(agent).is_some());
        for pattern in &grant.tools {
            let _ = policy.names_mcp_server(pattern);
            for tool in policy.tools.keys() {
                let _ = pattern.matches(tool);
            }
        }
        for check in &grant.checks {
            assert!(
                leash_broker::tokens::mint::parse_check(check).is_ok(),
                "a loaded grant holds a check that does not parse: {check:?}"
            );
        }
    }
    for server in policy.mcp_servers.values() {
        let _ = format!("{server:?}");
        let _ = ToolPattern::parse(&format!("{}.*", server.name));
    }
}

fuzz_target!(
    init: {
        leash_fuzz::write_seeds_if_asked(|| {
            vec![include_bytes!("../../policies/example.toml").to_vec()]
        });
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let sources: Vec<(PathBuf, String)> = text
            .splitn(2, SEPARATOR)
            .enumerate()
            .map(|(i, part)| (PathBuf::from(format!("fuzz-{i}.toml")), part.to_string()))
            .collect();
        match load_sources(&sources, &env) {
            Ok(policy) => exercise(&policy),
            Err(errors) => {
                assert!(!errors.0.is_empty(), "a failed load reports no mistake");
                for d in &errors.0 {
                    let source = sources
                        .iter()
                        .find(|(path, _)| *path == d.file)
                        .map(|(_, text)| text.as_str())
                        .unwrap_or_else(|| panic!("a diagnostic names an unknown file: {d:?}"));
                    let lines = source.split('\n').count();
                    assert!(
                        d.line >= 1 && d.line <= lines,
                        "line {} outside the file ({lines} lines): {d:?}",
                        d.line
                    );
                    let line_text = source.split('\n').nth(d.line - 1).unwrap_or("");
                    assert!(
                        d.column >= 1 && d.column <= line_text.chars().count() + 1,
                        "column {} outside line {} ({line_text:?}): {d:?}",
                        d.column,
                        d.line
                    );
                }
                let _ = errors.to_string();
            }
        }
    }
);
