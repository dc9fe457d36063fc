//! The authorizer: pure, no I/O. Token + call + now + counters → allowed, or why not.
//!
//! Facts supplied: `time(now)`, `call(tool)`, one `arg(name, value)` per argument,
//! `task_calls(N)` and `token_calls(N)`. The only policy is `allow if call($t), tool($t)`,
//! so only authority-block `tool` facts grant anything. Limits are explicit.

use std::sync::LazyLock;
use std::time::Duration;

use biscuit_auth::builder::{AuthorizerBuilder, Policy, Term, fact, int, string};
use biscuit_auth::{AuthorizerLimits, Biscuit, error};
use serde_json::{Map, Value};

use crate::facts::arg_facts;

/// The broker's one policy.
static ALLOW_GRANTED_TOOL: LazyLock<Policy> = LazyLock::new(|| {
    Policy::try_from("allow if call($t), tool($t)").expect("the broker policy parses")
});

/// Limits of one authorization: generous for a busy 2-core machine (FIELD-NOTES.md),
/// small enough that a hostile attenuation cannot stall the broker.
pub fn limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 2_000,
        max_iterations: 200,
        max_time: Duration::from_millis(50),
    }
}

/// One call to authorize.
pub struct CallFacts<'a> {
    /// The tool called.
    pub tool: &'a str,
    /// The arguments object.
    pub args: &'a Map<String, Value>,
    /// Now, in seconds since the epoch.
    pub now_secs: i64,
    /// Calls admitted so far in the task.
    pub task_calls: u64,
    /// Calls admitted so far with this exact token.
    pub token_calls: u64,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A check failed, or no tool fact allows the call; the text says which.
    Capability(String),
    /// A budget check (`token_calls` / `task_calls`) failed.
    Budget(String),
}

/// Authorizes one call.
pub fn authorize_call(token: &Biscuit, call: &CallFacts<'_>) -> Result<(), Denial> {
    run(token, call).map_err(|err| explain(err, call.tool))
}

/// Whether a tool belongs in the token's tool list: the call is allowed, or refused only
/// by checks about arguments (which depend on the call) or budgets.
pub fn listable(token: &Biscuit, call: &CallFacts<'_>) -> bool {
    match run(token, call) {
        Ok(()) => true,
        Err(error::Token::FailedLogic(error::Logic::Unauthorized {
            policy: error::MatchedPolicy::Allow(_),
            checks,
        })) => checks.iter().all(|check| {
            let rule = match check {
                error::FailedCheck::Block(b) => &b.rule,
                error::FailedCheck::Authorizer(a) => &a.rule,
            };
            rule.contains("arg(") || rule.contains("token_calls") || rule.contains("task_calls")
        }),
        Err(_) => false,
    }
}

fn run(token: &Biscuit, call: &CallFacts<'_>) -> Result<(), error::Token> {
    let now = std::time::UNIX_EPOCH + Duration::from_secs(call.now_secs.max(0) as u64);
    let mut builder = AuthorizerBuilder::new().set_limits(limits());
    let mut facts = vec![
        fact("time", &[biscuit_auth::builder::date(&now)]),
        fact("call", &[string(call.tool)]),
        fact("task_calls", &[count(call.task_calls)]),
        fact("token_calls", &[count(call.token_calls)]),
    ];
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

/// Turns an authorizer error into a reason a caller can act on.
fn explain(err: error::Token, tool: &str) -> Denial {
    match err {
        error::Token::FailedLogic(logic) => {
            let (checks, matched) = match logic {
                error::Logic::Unauthorized { checks, .. } => (checks, true),
                error::Logic::NoMatchingPolicy { checks } => (checks, false),
                other => return Denial::Capability(other.to_string()),
            };
            let rules: Vec<String> = checks
                .iter()
                .map(|c| match c {
                    error::FailedCheck::Block(b) => format!("block {}: {}", b.block_id, b.rule),
                    error::FailedCheck::Authorizer(a) => format!("authorizer: {}", a.rule),
                })
                .collect();
            let budget = rules
                .iter()
                .any(|r| r.contains("token_calls") || r.contains("task_calls"));
            if budget {
                return Denial::Budget(format!("call budget exhausted: {}", rules.join("; ")));
            }
            if rules.is_empty() && !matched {
                return Denial::Capability(format!("the capability does not grant tool {tool:?}"));
            }
            let mut message = format!("check failed: {}", rules.join("; "));
            if !matched {
                message.push_str(&format!(
                    " (and the capability does not grant tool {tool:?})"
                ));
            }
            Denial::Capability(message)
        }
        error::Token::RunLimit(limit) => {
            Denial::Capability(format!("authorization stopped at its limit: {limit}"))
        }
        other => Denial::Capability(format!("authorization failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootKeys;
    use crate::mint::{TaskClaims, task_token};
    use biscuit_auth::builder::BlockBuilder;
    use serde_json::json;

    fn token(keys: &RootKeys, expires: i64) -> Biscuit {
        task_token(
            keys,
            &TaskClaims {
                task_id: "tsk_a",
                agent: "bot",
                tools: &["web.search".to_string(), "fs.read".to_string()],
                expires_at_secs: expires,
                checks: &[],
            },
        )
        .unwrap()
    }

    fn call<'a>(
        tool: &'a str,
        args: &'a Map<String, Value>,
        now: i64,
        token_calls: u64,
    ) -> CallFacts<'a> {
        CallFacts {
            tool,
            args,
            now_secs: now,
            task_calls: 0,
            token_calls,
        }
    }

    #[test]
    fn granted_tool_within_window_is_allowed_and_others_are_not() {
        let keys = RootKeys::generate();
        let t = token(&keys, 2_000);
        let args = Map::new();
        assert_eq!(
            authorize_call(&t, &call("web.search", &args, 1_000, 0)),
            Ok(())
        );
        let Err(Denial::Capability(why)) = authorize_call(&t, &call("shell.exec", &args, 1_000, 0))
        else {
            panic!()
        };
        assert!(why.contains("does not grant tool \"shell.exec\""), "{why}");
        let Err(Denial::Capability(why)) = authorize_call(&t, &call("web.search", &args, 2_001, 0))
        else {
            panic!()
        };
        assert!(why.contains("time"), "{why}");
    }

    #[test]
    fn attenuation_narrows_and_never_widens() {
        let keys = RootKeys::generate();
        let child = token(&keys, 2_000)
            .append(
                BlockBuilder::new()
                    .code(r#"check if call("fs.read"); check if arg("path", $p), $p.starts_with("/data/");
                             tool("shell.exec"); time(1000);"#)
                    .unwrap(),
            )
            .unwrap();
        let ok = json!({"path": "/data/x"});
        let bad = json!({"path": "/etc/passwd"});
        assert_eq!(
            authorize_call(&child, &call("fs.read", ok.as_object().unwrap(), 1_000, 0)),
            Ok(())
        );
        assert!(
            authorize_call(&child, &call("fs.read", bad.as_object().unwrap(), 1_000, 0)).is_err()
        );
        assert!(
            authorize_call(
                &child,
                &call("web.search", ok.as_object().unwrap(), 1_000, 0)
            )
            .is_err()
        );
        // The block's own tool fact and time fact grant nothing.
        assert!(
            authorize_call(
                &child,
                &call("shell.exec", ok.as_object().unwrap(), 1_000, 0)
            )
            .is_err()
        );
        assert!(
            authorize_call(&child, &call("fs.read", ok.as_object().unwrap(), 3_000, 0)).is_err()
        );
    }

    #[test]
    fn child_budget_is_a_budget_denial() {
        let keys = RootKeys::generate();
        let child = token(&keys, 2_000)
            .append(
                BlockBuilder::new()
                    .code("reject if token_calls($n), $n >= 3")
                    .unwrap(),
            )
            .unwrap();
        let args = Map::new();
        assert_eq!(
            authorize_call(&child, &call("web.search", &args, 1_000, 2)),
            Ok(())
        );
        assert!(matches!(
            authorize_call(&child, &call("web.search", &args, 1_000, 3)),
            Err(Denial::Budget(_))
        ));
    }
}
