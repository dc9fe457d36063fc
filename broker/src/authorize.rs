//! The broker's call decision: the shared evaluator of the capability vocabulary
//! ([`leash_sdk::capability`]) plus the broker's counters, mapped to API denials.
//! Pure: token + call + now + counters → allowed, or why not.

use biscuit_auth::{Biscuit, error};
use leash_sdk::capability::{CallFacts as SharedFacts, evaluate, explain, failed_rules};
use serde_json::{Map, Value};

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

impl CallFacts<'_> {
    fn shared(&self) -> SharedFacts<'_> {
        SharedFacts {
            tool: self.tool,
            args: self.args,
            now_secs: self.now_secs,
            counters: Some((self.task_calls, self.token_calls)),
        }
    }
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
    evaluate(token, &call.shared()).map_err(|err| {
        if let error::Token::FailedLogic(
            error::Logic::Unauthorized { checks, .. } | error::Logic::NoMatchingPolicy { checks },
        ) = &err
        {
            let rules = failed_rules(checks);
            if rules
                .iter()
                .any(|r| r.contains("token_calls") || r.contains("task_calls"))
            {
                return Denial::Budget(format!("call budget exhausted: {}", rules.join("; ")));
            }
        }
        Denial::Capability(explain(&err, call.tool))
    })
}

/// Whether a tool belongs in the token's tool list: the call is allowed, or refused only
/// by checks about arguments (which depend on the call) or budgets.
pub fn listable(token: &Biscuit, call: &CallFacts<'_>) -> bool {
    match evaluate(token, &call.shared()) {
        Ok(()) => true,
        Err(error::Token::FailedLogic(error::Logic::Unauthorized {
            policy: error::MatchedPolicy::Allow(_),
            checks,
        })) => failed_rules(&checks).iter().all(|rule| {
            rule.contains("arg(") || rule.contains("token_calls") || rule.contains("task_calls")
        }),
        Err(_) => false,
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
