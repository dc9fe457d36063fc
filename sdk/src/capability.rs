//! The capability vocabulary, evaluated the same way by the broker and by tool servers:
//! the call facts, the one policy, explicit limits, and offline attenuation.
//!
//! Facts: `time(now)`, `call(tool)`, one `arg(name, value)` per argument, and — only in
//! the broker, which keeps counters — `task_calls(N)` and `token_calls(N)`. Policy:
//! `allow if call($t), tool($t)`, so only authority-block `tool` facts grant anything.

use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use biscuit_auth::builder::{
    AuthorizerBuilder, BlockBuilder, Policy, Term, date, fact, int, string,
};
use biscuit_auth::{AuthorizerLimits, Biscuit, UnverifiedBiscuit, error};
use serde_json::{Map, Value};

use crate::facts::arg_facts;

/// The one policy of Leash.
static ALLOW_GRANTED_TOOL: LazyLock<Policy> = LazyLock::new(|| {
    Policy::try_from("allow if call($t), tool($t)").expect("the Leash policy parses")
});

/// Limits of one authorization: generous for a busy small machine, small enough that a
/// hostile attenuation cannot stall the evaluator.
pub fn limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 2_000,
        max_iterations: 200,
        max_time: Duration::from_millis(50),
    }
}

/// One call to evaluate.
pub struct CallFacts<'a> {
    /// The tool called.
    pub tool: &'a str,
    /// The arguments object.
    pub args: &'a Map<String, Value>,
    /// Now, in seconds since the epoch.
    pub now_secs: i64,
    /// `(task_calls, token_calls)`, supplied only by the broker.
    pub counters: Option<(u64, u64)>,
}

/// Runs the authorizer for one call. The error is biscuit-auth's, with the failed checks.
pub fn evaluate(token: &Biscuit, call: &CallFacts<'_>) -> Result<(), error::Token> {
    let now = UNIX_EPOCH + Duration::from_secs(call.now_secs.max(0) as u64);
    let mut builder = AuthorizerBuilder::new().set_limits(limits());
    let mut facts = vec![
        fact("time", &[date(&now)]),
        fact("call", &[string(call.tool)]),
    ];
    if let Some((task_calls, token_calls)) = call.counters {
        facts.push(fact("task_calls", &[count(task_calls)]));
        facts.push(fact("token_calls", &[count(token_calls)]));
    }
    facts.extend(arg_facts(call.args));
    for f in facts {
        builder = builder.fact(f)?;
    }
    let mut authorizer = builder.policy(ALLOW_GRANTED_TOOL.clone())?.build(token)?;
    authorizer.authorize().map(|_| ())
}

fn count(n: u64) -> Term {
    int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Narrows a token offline: appends a block holding `checks` (each a `check if …`,
/// `check all …` or `reject if …`). Needs no key and no broker; the result can only do
/// less than `token`.
///
/// ```
/// # use biscuit_auth::{KeyPair, Biscuit};
/// let root = KeyPair::new();
/// let token = Biscuit::builder().fact("tool(\"fs.read\")").unwrap().build(&root).unwrap().to_base64().unwrap();
/// let child = leash_sdk::attenuate(&token, &[r#"check if call("fs.read")"#, "reject if token_calls($n), $n >= 3"]).unwrap();
/// let parsed = Biscuit::from_base64(&child, root.public()).unwrap();
/// assert_eq!(parsed.block_count(), 2);
/// ```
pub fn attenuate(token: &str, checks: &[&str]) -> Result<String, String> {
    let parent = UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|e| format!("not a Biscuit token: {e}"))?;
    let mut block = BlockBuilder::new();
    for source in checks {
        let check = biscuit_auth::builder::Check::try_from(*source)
            .map_err(|e| format!("{source:?} is not a check: {e}"))?;
        block = block.check(check).map_err(|e| e.to_string())?;
    }
    parent
        .append(block)
        .and_then(|t| t.to_base64())
        .map_err(|e| format!("cannot attenuate: {e}"))
}

/// The per-call capability the broker sends upstream (`Leash-Capability`): `token`
/// narrowed to one tool and a window ending at `until_secs`.
pub fn per_call(token: &Biscuit, tool: &str, until_secs: i64) -> Result<String, error::Token> {
    let until = UNIX_EPOCH + Duration::from_secs(until_secs.max(0) as u64);
    let block = BlockBuilder::new()
        .check(biscuit_auth::builder::check(
            &[biscuit_auth::builder::pred("call", &[string(tool)])],
            biscuit_auth::builder::CheckKind::One,
        ))?
        .code_with_params(
            "check if time($t), $t <= {until};",
            std::collections::HashMap::from([("until".to_string(), date(&until))]),
            std::collections::HashMap::new(),
        )?;
    token.append(block)?.to_base64()
}

/// Why an evaluation failed, in words: the failed checks, or the missing grant.
pub fn explain(err: &error::Token, tool: &str) -> String {
    match err {
        error::Token::FailedLogic(logic) => {
            let (checks, matched) = match logic {
                error::Logic::Unauthorized { checks, .. } => (checks, true),
                error::Logic::NoMatchingPolicy { checks } => (checks, false),
                other => return other.to_string(),
            };
            let rules = failed_rules(checks);
            if rules.is_empty() && !matched {
                return format!("the capability does not grant tool {tool:?}");
            }
            let mut message = format!("check failed: {}", rules.join("; "));
            if !matched {
                message.push_str(&format!(
                    " (and the capability does not grant tool {tool:?})"
                ));
            }
            message
        }
        error::Token::RunLimit(limit) => format!("authorization stopped at its limit: {limit}"),
        other => format!("authorization failed: {other}"),
    }
}

/// The failed checks, as `block N: rule` / `authorizer: rule`.
pub fn failed_rules(checks: &[error::FailedCheck]) -> Vec<String> {
    checks
        .iter()
        .map(|c| match c {
            error::FailedCheck::Block(b) => format!("block {}: {}", b.block_id, b.rule),
            error::FailedCheck::Authorizer(a) => format!("authorizer: {}", a.rule),
        })
        .collect()
}
