//! Arguments → Datalog facts: JSON object → `leash_sdk::facts::{depth, arg_facts,
//! to_term}`, then the broker's decision (`authorize::authorize_call`, over
//! `capability::evaluate`) against a task token minted with argument checks, and the
//! tools' input schemas of the example policy (`schema::violations`) — the order of
//! `calls::checked_call`.
//!
//! Invariants: one fact per argument; the decision on the token's checks agrees with the
//! same checks computed in Rust, so strings, integers and non-integers reach Datalog
//! unchanged (a non-integer number is a string and fails numeric checks closed).

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use biscuit_auth::Biscuit;
use biscuit_auth::builder::Term;
use leash_broker::policy::{ToolDef, load_sources};
use leash_broker::tokens::authorize::{CallFacts, Denial, authorize_call};
use leash_sdk::facts::{MAX_DEPTH, arg_facts, depth, to_term};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

struct State {
    /// A task token whose checks read `path`, `n` and `tags`.
    token: Biscuit,
    tools: Vec<Arc<ToolDef>>,
}

/// The checks an agent could ask for (as text: they go through `mint::parse_check`).
const CHECKS: [&str; 3] = [
    r#"check if arg("path", $p), $p.starts_with("/notes/")"#,
    r#"reject if arg("n", $n), $n > 10"#,
    r#"reject if arg("tags", $t), $t.any($x -> $x.length() > 8)"#,
];

static STATE: LazyLock<State> = LazyLock::new(|| {
    let keys = leash_fuzz::root_keys();
    let checks: Vec<String> = CHECKS.iter().map(|c| c.to_string()).collect();
    for check in &checks {
        leash_broker::tokens::mint::parse_check(check).expect("the fuzz checks parse");
    }
    let token = leash_fuzz::task_token(&keys, &checks);
    let policy = load_sources(
        &[(
            PathBuf::from("example.toml"),
            include_str!("../../policies/example.toml").to_string(),
        )],
        &|_| None,
    )
    .expect("the example policy loads");
    State {
        token,
        tools: policy.tools.values().cloned().collect(),
    }
});

/// What the three checks say, computed in Rust; `None` when Datalog may answer either
/// way for reasons outside the conversion (an error the check turns into a failure).
fn expected(args: &Map<String, Value>) -> Option<bool> {
    let path_ok = matches!(args.get("path"), Some(Value::String(p)) if p.starts_with("/notes/"));
    // `reject if arg("n", $n), $n > 10`: comparing a non-integer with 10 is an execution
    // error in Datalog (the check fails closed), so only integers and absence are certain.
    let n_ok = match args.get("n") {
        None => true,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => i <= 10,
            None => return None,
        },
        Some(_) => return None,
    };
    // `reject if arg("tags", $t), $t.any(...)`: only arrays of strings are certain
    // (`length` counts bytes in biscuit-auth). (Not `check all`: in biscuit-auth it
    // also needs at least one match, so it fails when `tags` is absent.)
    let tags_ok = match args.get("tags") {
        None => true,
        Some(Value::Array(items)) => {
            let mut ok = true;
            for item in items {
                match item {
                    Value::String(s) => ok &= s.len() <= 8,
                    _ => return None,
                }
            }
            ok
        }
        Some(_) => return None,
    };
    Some(path_ok && n_ok && tags_ok)
}

fuzz_target!(
    init: {
        leash_fuzz::write_seeds_if_asked(|| {
            [
                r#"{"path": "/notes/a-1"}"#,
                r#"{"path": "/notes/x", "n": 10, "tags": ["a", "bb"]}"#,
                r#"{"path": "/etc/passwd", "n": 11}"#,
                r#"{"path": "/notes/x", "n": 1.5, "tags": [1, null, {"a": []}]}"#,
                r#"{"query": "hello \u0000 \"world\" \\ \ud83d\ude00", "big": 18446744073709551615, "neg": -9223372036854775808, "e": 1e300}"#,
                r#"{"a": {"b": {"c": [[[[true, false, null]]]]}}, "": "", "$x": "$"}"#,
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
        });
        LazyLock::force(&STATE);
    },
    |data: &[u8]| {
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let Some(args) = value.as_object() else {
            return;
        };
        let facts = arg_facts(args);
        assert_eq!(facts.len(), args.len(), "one fact per argument");
        for (fact, (name, arg)) in facts.iter().zip(args) {
            let _ = fact.to_string();
            let term = to_term(arg);
            if let Value::String(s) = arg {
                assert_eq!(term, Term::Str(s.clone()));
            }
            if let Some(i) = arg.as_i64() {
                assert_eq!(term, Term::Integer(i));
            }
            let _ = name;
        }
        // The broker refuses deeper arguments before authorizing.
        if depth(&value) > MAX_DEPTH {
            return;
        }
        let state = &*STATE;
        let call = CallFacts {
            tool: "notes.read",
            args,
            now_secs: leash_fuzz::NOW_SECS,
            task_calls: 1,
            prefix_calls: &[1],
            // The token holds no budget.
            budget_blocks: &[],
            subject: leash_broker::tokens::authorize::Subject::Tool,
        };
        let decision = authorize_call(&state.token, &call);
        if let Err(Denial::Capability(why)) = &decision
            && why.contains("limit")
        {
            // A run limit (too many facts, time) is its own denial; no oracle then.
        } else if let Some(allowed) = expected(args) {
            assert_eq!(
                decision.is_ok(),
                allowed,
                "the token's checks and Rust disagree on {args:?}: {decision:?}"
            );
        }
        for tool in &state.tools {
            let _ = leash_broker::policy::input_schema::violations(&tool.validator, &value);
        }
    }
);
