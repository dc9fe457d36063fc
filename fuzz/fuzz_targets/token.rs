//! Token parsing and verification.
//!
//! The input is tried as (1) a token in Biscuit's binary form, (2) token text through the
//! broker's `TokenVerifier::verify` (the path of every `Authorization: Bearer`), and
//! (3) Datalog an agent supplies: a check accepted by `mint::parse_check` is minted into a
//! task token, and `leash_sdk::attenuate` appends it to a real task token offline. Every
//! token that verifies is evaluated with the broker's call facts.
//!
//! Invariants checked (besides "no panic"): a token minted by the broker verifies and
//! names its task; an attenuation never changes the principal or the tools, and never
//! allows a call its parent refuses.

#![no_main]

use std::sync::{Arc, LazyLock};

use biscuit_auth::{Biscuit, UnverifiedBiscuit};
use leash_broker::error::ApiError;
use leash_broker::tokens::authorize::{self, CallFacts};
use leash_broker::tokens::keys::{ForwardingKey, RootKeys};
use leash_broker::tokens::mint;
use leash_broker::tokens::verify::{MAX_TOKEN_LEN, Principal, TokenVerifier};
use leash_fuzz::{AGENT, NOW_SECS, TASK_ID, TOOLS};
use leash_sdk::capability;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

struct State {
    keys: Arc<RootKeys>,
    forwarding: ForwardingKey,
    /// A task token minted by the broker, as a Biscuit and as text.
    parent: Biscuit,
    parent_text: String,
    /// The arguments of every evaluated call.
    args: Map<String, Value>,
}

static STATE: LazyLock<State> = LazyLock::new(|| {
    let keys = Arc::new(leash_fuzz::root_keys());
    let parent = leash_fuzz::task_token(&keys, &[]);
    let parent_text = parent.to_base64().unwrap();
    let args = json!({
        "path": "/notes/a-1",
        "query": "q",
        "n": 3,
        "ratio": 1.5,
        "big": u64::MAX,
        "flag": true,
        "none": null,
        "list": ["x", 1, [2]],
        "map": {"k": "v"}
    });
    State {
        keys,
        forwarding: leash_fuzz::forwarding_key(),
        parent,
        parent_text,
        args: args.as_object().unwrap().clone(),
    }
});

/// One call counted before, on the task and on every prefix of the chain.
const ONE_CALL_EACH: [u64; 256] = [1; 256];

fn call<'a>(
    tool: &'a str,
    args: &'a Map<String, Value>,
    budget_blocks: &'a [usize],
) -> CallFacts<'a> {
    CallFacts {
        tool,
        args,
        now_secs: NOW_SECS,
        task_calls: 1,
        prefix_calls: &ONE_CALL_EACH,
        budget_blocks,
        subject: authorize::Subject::Tool,
    }
}

/// Reads everything a parsed-but-unverified token offers (as `verify` and the
/// revocation pre-check do).
fn inspect(token: &UnverifiedBiscuit) {
    let _ = token.root_key_id();
    let _ = token.revocation_identifiers();
    for i in 0..token.block_count() {
        let _ = token.print_block_source(i);
    }
}

/// Evaluates calls of every granted tool and of a tool that is not granted, the way the
/// broker (`authorize_call`, `listable`) and a tool server (`capability::evaluate`) do.
fn exercise(token: &Biscuit, tools: &[String]) {
    let args = &STATE.args;
    let empty = Map::new();
    let budgets = capability::budget_blocks(token);
    for tool in tools.iter().map(String::as_str).chain(["notes.delete", ""]) {
        for args in [args, &empty] {
            let facts = call(tool, args, &budgets);
            if let Err(authorize::Denial::Capability(why) | authorize::Denial::Budget(why)) =
                authorize::authorize_call(token, &facts)
            {
                let _ = why.len();
            }
            let _ = authorize::listable(token, &facts, false);
            // A read of a resource: its `resource` fact, its URI as the one argument.
            let read = authorize::CallFacts {
                subject: authorize::Subject::Resource("file:///docs/readme.md"),
                ..call(tool, args, &budgets)
            };
            let _ = authorize::authorize_call(token, &read);
            let _ = authorize::listable(token, &read, true);
            if let Err(err) = capability::evaluate(
                token,
                &capability::CallFacts {
                    tool,
                    args,
                    now_secs: NOW_SECS,
                    counters: None,
                    subject: capability::Subject::Tool,
                },
            ) {
                let _ = capability::explain(&err, tool);
            }
            // Only a block signed by the forwarding key can make a token count as
            // forwarded: fuzzed blocks (first- or third-party) never do.
            let forwarding = STATE.forwarding.pair().public();
            let plain = capability::CallFacts {
                tool,
                args,
                now_secs: NOW_SECS,
                counters: None,
                subject: capability::Subject::Tool,
            };
            if capability::evaluate_forwarded(token, &plain, &forwarding).is_ok() {
                assert!(
                    capability::is_forwarded_by(token, &forwarding),
                    "accepted as forwarded without a block signed by the forwarding key"
                );
            }
        }
        if let Ok(forwarded) =
            capability::per_call(token, tool, NOW_SECS + 30, STATE.forwarding.pair())
        {
            check_forwarded(token, &forwarded, tool);
        }
    }
    let _ = token.print();
}

/// `forwarded` is the broker's per-call capability for `tool` made from `parent`: it
/// counts as forwarded, allows no other tool, and nothing its parent refuses.
fn check_forwarded(parent: &Biscuit, forwarded: &str, tool: &str) {
    let forwarding = STATE.forwarding.pair().public();
    let capability = Biscuit::from_base64(forwarded, |kid: Option<u32>| STATE.keys.public_for(kid))
        .expect("a forwarded capability verifies with the root keys");
    assert!(capability::is_forwarded_by(&capability, &forwarding));
    let args = &STATE.args;
    for other in TOOLS.iter().copied().chain(["notes.delete", tool]) {
        let facts = capability::CallFacts {
            tool: other,
            args,
            now_secs: NOW_SECS,
            counters: None,
            subject: capability::Subject::Tool,
        };
        if capability::evaluate_forwarded(&capability, &facts, &forwarding).is_ok() {
            assert_eq!(
                other, tool,
                "a capability forwarded for {tool} allows {other}"
            );
            assert!(
                capability::evaluate(parent, &facts).is_ok(),
                "the forwarded capability allows {other} but its parent refuses"
            );
        }
    }
}

/// `child` was derived offline from the broker's task token: it must name the same task
/// and tools, and allow nothing the parent refuses.
fn check_attenuation(child: &Biscuit, verified_tools: &[String], principal: &Principal) {
    let expected = Principal::Task {
        task_id: TASK_ID.into(),
        agent: AGENT.into(),
    };
    assert_eq!(principal, &expected, "an attenuation changed the principal");
    assert_eq!(verified_tools, TOOLS, "an attenuation changed the tools");
    let args = &STATE.args;
    let child_budgets = capability::budget_blocks(child);
    let parent_budgets = capability::budget_blocks(&STATE.parent);
    for tool in TOOLS.iter().copied().chain(["notes.delete"]) {
        if authorize::authorize_call(child, &call(tool, args, &child_budgets)).is_ok() {
            match authorize::authorize_call(&STATE.parent, &call(tool, args, &parent_budgets)) {
                Ok(()) => {}
                Err(denial) => panic!("the child allows {tool} but its parent refuses: {denial:?}"),
            }
        }
    }
}

/// Verifies `text` twice (the second answer comes from the cache; they must agree).
/// With `revoke_some`, ids starting with `00` count as revoked (the revocation
/// pre-check); tokens minted during the run must not use it, their ids are random.
fn verify_text(
    verifier: &TokenVerifier,
    text: &str,
    revoke_some: bool,
) -> Option<Arc<leash_broker::tokens::verify::VerifiedToken>> {
    let revoked = |id: &str| {
        (revoke_some && id.starts_with("00")).then(|| ApiError::TokenRevoked(id.to_string()))
    };
    let first = verifier.verify(text, revoked);
    let second = verifier.verify(text, revoked);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a.principal, b.principal, "cache disagrees"),
        (Err(_), Err(_)) => {}
        _ => panic!("verification and its cached answer disagree for {text:?}"),
    }
    first.ok()
}

fuzz_target!(
    init: {
        leash_fuzz::write_seeds_if_asked(|| {
            let tokens = leash_fuzz::seed_tokens();
            let mut seeds: Vec<Vec<u8>> = tokens.iter().map(|t| t.clone().into_bytes()).collect();
            // The binary form of a token, and checks an agent could write.
            seeds.push(STATE.parent.to_vec().unwrap());
            for check in [
                r#"check if call($t), $t != "notes.delete""#,
                r#"check if arg("path", $p), $p.starts_with("/notes/"), time($t), $t <= 2030-01-01T00:00:00Z"#,
                r#"reject if token_calls($n), $n >= 3"#,
                r#"check all arg($k, $v), $v.type() == "string" || $v.type() == "integer""#,
                r#"check if arg("list", $l), $l.any($x -> $x == "x") && [1, 2].contains(1)"#,
                r#"check if arg("map", $m), $m.get("k") == "v", {"a": null}.length() == 1"#,
                r#"check if arg("query", $q), $q.matches("^q+$")"#,
                "check if true trusting previous",
                "tool(\"admin\")",
            ] {
                seeds.push(check.as_bytes().to_vec());
            }
            seeds
        });
        LazyLock::force(&STATE);
    },
    |data: &[u8]| {
        let state = &*STATE;
        let keys = state.keys.clone();
        // A fresh verifier per input, so its cache cannot grow across inputs.
        let verifier = TokenVerifier::new(keys.clone());

        // (1) The binary form.
        if let Ok(token) = UnverifiedBiscuit::from(data) {
            inspect(&token);
        }
        if let Ok(token) = Biscuit::from(data, |kid: Option<u32>| keys.public_for(kid)) {
            exercise(&token, &TOOLS.map(String::from));
        }

        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };

        // (2) Token text, as a bearer.
        if let Ok(token) = UnverifiedBiscuit::from_base64(text) {
            inspect(&token);
        }
        if let Some(verified) = verify_text(&verifier, text, true) {
            let _ = verified.own_id();
            exercise(&verified.biscuit, &verified.tools);
        }

        // (3) Agent-supplied Datalog: a check in a task token (the broker mints it) ...
        if mint::parse_check(text).is_ok() {
            if let Ok(token) = mint::task_token(
                &keys,
                &mint::TaskClaims {
                    task_id: TASK_ID,
                    agent: AGENT,
                    user: None,
                    audience: None,
                    tools: &TOOLS.map(String::from),
                    expires_at_secs: leash_fuzz::EXPIRES_AT,
                    checks: &[text.to_string()],
                },
            ) {
                let (minted, _revocation_id) = mint::to_text(&token).expect("a minted token prints");
                if minted.len() <= MAX_TOKEN_LEN {
                    let verified = verify_text(&verifier, &minted, false)
                        .unwrap_or_else(|| panic!("a token the broker minted does not verify: check {text:?}"));
                    assert_eq!(verified.tools, TOOLS);
                    exercise(&verified.biscuit, &verified.tools);
                }
            }
        }
        // ... and an offline attenuation of a task token (no key needed).
        if let Ok(child) = leash_sdk::attenuate(&state.parent_text, &[text]) {
            if child.len() <= MAX_TOKEN_LEN {
                let verified = verify_text(&verifier, &child, false)
                    .unwrap_or_else(|| panic!("an attenuated task token does not verify: check {text:?}"));
                check_attenuation(&verified.biscuit, &verified.tools, &verified.principal);
                exercise(&verified.biscuit, &verified.tools);
            }
        }
    }
);
