//! The Python SDK against the Rust SDK: the same capabilities and arguments go through
//! both evaluators (`leash_sdk::capability` here, `leash.capability` in Python via
//! `sdk/python/tests/differential.py`) and every decision must be the same. Arguments
//! cover strings (unicode, quotes, control characters), integers at the 64-bit edges,
//! integral and other floats, null, booleans, nested objects and arrays; checks include
//! an exact-term equality (`$x == {the Rust term}`), so any difference in how a value
//! becomes a Biscuit term changes a decision. The limit on argument values is compared
//! too (at it both judge, past it both refuse).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use biscuit_auth::builder::{BiscuitBuilder, BlockBuilder, Term};
use biscuit_auth::{Biscuit, KeyPair};
use leash_sdk::capability::{CallFacts, evaluate, evaluate_forwarded, per_call};
use leash_sdk::facts::to_term;
use serde_json::{Map, Value, json};

const NOW: i64 = 1_900_000_000;

/// Argument values, as JSON text (so both sides parse the same bytes).
const VALUES: &[&str] = &[
    r#""a""#,
    r#""""#,
    r#""abc/def""#,
    r#""ünïcödé 中文 😀""#,
    r#""quote \" backslash \\ newline \n tab \t nul \u0000 bell \u0007""#,
    r#""{p0} ${x} check if true""#,
    r#""k""#,
    "0",
    "-1",
    "11",
    "1234",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "100000000000000000000",
    "-9223372036854775809",
    "1234.0",
    "1.234e3",
    "1e2",
    "-0.0",
    "-5.0",
    "9.2e18",
    "9.3e18",
    "1e19",
    "1.5",
    "0.1",
    "-2.5e-7",
    "1e-7",
    "0.000123",
    "123456.789",
    "1e300",
    "1.2345678901234567e21",
    "4e16",
    "12345678901234567.5",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    r#"[1, "a", 2.0, null, true, [2]]"#,
    r#"{"k": 1, "j": [1.0, {"z": null}], "ü": "ö"}"#,
    r#"{"k": 1.5}"#,
    r#"[[[[[[["deep"]]]]]]]"#,
    r#"{"a": {"b": {"c": {"d": [1, 2, {"e": "f"}]}}}}"#,
    r#""\ud800""#,
    "1E2",
    "0.1e1",
    "2e15",
    "5e-324",
    "-1e-320",
    "1.7976931348623157e308",
    "0.00001",
    "0.000001",
    "1234567890123456.7",
    "9007199254740993",
];

/// Checks on the argument `v` (one attenuation block each).
const CHECKS: &[&str] = &[
    r#"check if arg("v", $x), $x > 10"#,
    r#"check if arg("v", $x), $x == 1234"#,
    r#"check if arg("v", $x), $x == "1234.0""#,
    r#"check if arg("v", $x), $x == "1.5""#,
    r#"check if arg("v", $x), $x == "1e300""#,
    r#"check if arg("v", $x), $x.starts_with("a")"#,
    r#"check if arg("v", $x), $x.contains("k")"#,
    r#"check if arg("v", $x), $x.length() > 2"#,
    r#"check if arg("v", $x), $x == null"#,
    r#"check if arg("v", $x), $x == true"#,
    r#"check if arg("v", $x), $x.get("k") == 1"#,
    r#"check if arg("v", $x), $x.contains(2)"#,
    r#"check if arg("v", $x), $x.any($y -> $y == "a")"#,
    r#"reject if arg("v", $x), $x == 9223372036854775807"#,
    r#"check if arg("name", "x"), arg("ключ", $k), arg("v", $x), $k == $x"#,
    r#"check if arg("v", $x), $x.type() == "integer""#,
    r#"check if arg("v", $x), $x.type() == "string""#,
    r#"check if arg("v", $x), $x.type() == "map""#,
];

fn task_token(root: &KeyPair, tools: &[&str]) -> Biscuit {
    let mut source = String::from(r#"task("tsk_diff"); agent("bot");"#);
    for tool in tools {
        source.push_str(&format!(" tool({tool:?});"));
    }
    source.push_str(&format!(
        " check if time($t), $t <= {};",
        time::OffsetDateTime::from_unix_timestamp(NOW + 600)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    ));
    BiscuitBuilder::new()
        .code(source)
        .unwrap()
        .build(root)
        .unwrap()
}

fn with_block(token: &Biscuit, block: BlockBuilder) -> Biscuit {
    token.append(block).unwrap()
}

struct Case {
    token: Biscuit,
    tool: &'static str,
    args: String,
    now: i64,
    forwarded: bool,
}

fn rust_decision(case: &Case, forwarding: &KeyPair) -> Result<(), String> {
    let args: Value = serde_json::from_str(&case.args).map_err(|e| e.to_string())?;
    let empty = Map::new();
    let object = args.as_object().unwrap_or(&empty);
    // The Rust verifier refuses this many values before evaluating (as the broker does).
    if leash_sdk::facts::value_count(object) > leash_sdk::facts::MAX_VALUES {
        return Err("too many values".into());
    }
    let call = CallFacts {
        tool: case.tool,
        args: object,
        now_secs: case.now,
        counters: None,
        subject: leash_sdk::capability::Subject::Tool,
    };
    let result = if case.forwarded {
        evaluate_forwarded(&case.token, &call, &forwarding.public())
    } else {
        evaluate(&case.token, &call)
    };
    result.map_err(|e| e.to_string())
}

fn cases(root: &KeyPair, forwarding: &KeyPair) -> Vec<Case> {
    let base = task_token(root, &["t", "other"]);
    let mut cases = Vec::new();
    for value in VALUES {
        let args = format!(r#"{{"name": "x", "ключ": {value}, "v": {value}}}"#);
        // The exact term the Rust SDK makes: Python must make the same one. (A value
        // serde_json refuses, such as a lone surrogate, is refused by both sides below.)
        if let Ok(parsed) = serde_json::from_str::<Value>(value) {
            let term: Term = to_term(&parsed);
            let exact = BlockBuilder::new()
                .code_with_params(
                    r#"check if arg("v", $x), $x == {t}"#,
                    HashMap::from([("t".to_string(), term)]),
                    HashMap::new(),
                )
                .unwrap();
            cases.push(Case {
                token: with_block(&base, exact),
                tool: "t",
                args: args.clone(),
                now: NOW,
                forwarded: false,
            });
        }
        for check in CHECKS {
            let block = BlockBuilder::new().code(*check).unwrap();
            cases.push(Case {
                token: with_block(&base, block),
                tool: "t",
                args: args.clone(),
                now: NOW,
                forwarded: false,
            });
        }
    }
    // Duplicate names: the last one counts, on both sides.
    for args in [
        r#"{"v": 1, "v": "a", "name": "x", "ключ": "a"}"#,
        r#"{"v": "a", "v": 1234.0, "name": "x", "ключ": 1234}"#,
    ] {
        for check in CHECKS {
            let block = BlockBuilder::new().code(*check).unwrap();
            cases.push(Case {
                token: with_block(&base, block),
                tool: "t",
                args: args.to_string(),
                now: NOW,
                forwarded: false,
            });
        }
    }
    // Past the limit on argument values, both refuse; at it, both judge.
    for n in [
        leash_sdk::facts::MAX_VALUES - 1,
        leash_sdk::facts::MAX_VALUES,
    ] {
        let args = format!(r#"{{"v": [{}]}}"#, vec!["1"; n].join(", "));
        cases.push(Case {
            token: base.clone(),
            tool: "t",
            args,
            now: NOW,
            forwarded: false,
        });
    }
    // Grants, windows and forwarding.
    let plain = r#"{"v": 1}"#.to_string();
    let forwarded = Biscuit::from_base64(
        per_call(&base, "t", NOW + 30, forwarding).unwrap(),
        root.public(),
    )
    .unwrap();
    for (token, tool, now, fwd) in [
        (base.clone(), "t", NOW, false),
        (base.clone(), "not-granted", NOW, false),
        (base.clone(), "t", NOW + 601, false),
        (base.clone(), "t", NOW, true),
        (forwarded.clone(), "t", NOW, true),
        (forwarded.clone(), "other", NOW, true),
        (forwarded.clone(), "t", NOW + 31, true),
        (forwarded, "t", NOW, false),
    ] {
        cases.push(Case {
            token,
            tool,
            args: plain.clone(),
            now,
            forwarded: fwd,
        });
    }
    cases
}

#[test]
fn the_python_sdk_decides_every_call_as_the_rust_sdk_does() {
    let root_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root_dir.join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (it installs the Python SDK)",
        python.display()
    );
    let (root, forwarding) = (KeyPair::new(), KeyPair::new());
    let cases = cases(&root, &forwarding);
    let request = json!({
        "root": root.public().to_string(),
        "forwarding": forwarding.public().to_string(),
        "cases": cases.iter().map(|c| json!({
            "token": c.token.to_base64().unwrap(),
            "tool": c.tool,
            "args": c.args,
            "now": c.now,
            "forwarded": c.forwarded,
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(&python)
        .arg(root_dir.join("sdk/python/tests/differential.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        request.to_string().as_bytes(),
    )
    .unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "differential.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python_decisions: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(python_decisions.len(), cases.len());
    let mut mismatches = Vec::new();
    let (mut allowed, mut denied) = (0, 0);
    for (case, python) in cases.iter().zip(&python_decisions) {
        let rust = rust_decision(case, &forwarding);
        match rust {
            Ok(()) => allowed += 1,
            Err(_) => denied += 1,
        }
        if rust.is_ok() != (python == "allow") {
            mismatches.push(format!(
                "args {} tool {} now {} forwarded {} block {:?}: rust {:?}, python {python:?}",
                case.args,
                case.tool,
                case.now,
                case.forwarded,
                case.token
                    .print_block_source(case.token.block_count() - 1)
                    .unwrap_or_default(),
                rust
            ));
        }
    }
    println!(
        "{} cases: {allowed} allowed and {denied} denied by Rust; {} differ",
        cases.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "decisions differ:\n{}",
        mismatches.join("\n")
    );
    // The battery must exercise both outcomes broadly, or it proves little.
    assert!(
        allowed > 100 && denied > 300,
        "{allowed} allowed, {denied} denied"
    );
}
