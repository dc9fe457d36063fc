//! The broker's call decision: the shared evaluator of the capability vocabulary
//! ([`leash_sdk::capability`]) plus the broker's counters, mapped to API denials.
//! Pure: token + call + now + counters → allowed, or why not.

use biscuit_auth::{Biscuit, error};
pub use leash_sdk::capability::Subject;
use leash_sdk::capability::{
    CallFacts as SharedFacts, Counters, evaluate_with_budgets, explain, failed_rules,
};
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
    /// Per block of the token, authority first: calls admitted so far with the token
    /// ending at that block and everything attenuated from it (`token_calls` of that
    /// block's checks).
    pub prefix_calls: &'a [u64],
    /// The blocks whose checks read `token_calls` (see
    /// [`leash_sdk::capability::budget_blocks`]).
    pub budget_blocks: &'a [usize],
    /// What the call uses: a tool, a resource, a prompt (its extra fact).
    pub subject: Subject<'a>,
}

impl CallFacts<'_> {
    fn shared(&self) -> SharedFacts<'_> {
        SharedFacts {
            tool: self.tool,
            args: self.args,
            now_secs: self.now_secs,
            counters: Some(Counters {
                task_calls: self.task_calls,
                prefix_calls: self.prefix_calls,
            }),
            subject: self.subject,
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
    evaluate_with_budgets(token, &call.shared(), call.budget_blocks).map_err(|err| {
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
/// by checks about arguments (which depend on the call) or budgets. A check about
/// `resource` is never excused: a list gives the URI (or template) it shows, and a use
/// that is not a read has no `resource` fact at all.
///
/// With `args_known` (a resource read, whose one argument is its URI) a check about
/// `arg` is judged like any other: only budgets are left to call time.
pub fn listable(token: &Biscuit, call: &CallFacts<'_>, args_known: bool) -> bool {
    match evaluate_with_budgets(token, &call.shared(), call.budget_blocks) {
        Ok(()) => true,
        Err(error::Token::FailedLogic(error::Logic::Unauthorized {
            policy: error::MatchedPolicy::Allow(_),
            checks,
        })) => failed_rules(&checks).iter().all(|rule| {
            (!args_known && rule.contains("arg("))
                || rule.contains("token_calls")
                || rule.contains("task_calls")
        }),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::keys::RootKeys;
    use crate::tokens::mint::{TaskClaims, task_token};
    use biscuit_auth::builder::BlockBuilder;
    use serde_json::json;

    fn token(keys: &RootKeys, expires: i64) -> Biscuit {
        task_token(
            keys,
            &TaskClaims {
                task_id: "tsk_a",
                agent: "bot",
                user: None,
                audience: None,
                tools: &["web.search".to_string(), "fs.read".to_string()],
                expires_at_secs: expires,
                checks: &[],
            },
        )
        .unwrap()
    }

    /// Authorizes with the token's budget blocks found as the broker finds them.
    fn check(
        token: &Biscuit,
        tool: &str,
        args: &Map<String, Value>,
        now: i64,
        prefix_calls: &[u64],
    ) -> Result<(), Denial> {
        let budget_blocks = leash_sdk::capability::budget_blocks(token);
        authorize_call(
            token,
            &CallFacts {
                tool,
                args,
                now_secs: now,
                task_calls: 0,
                prefix_calls,
                budget_blocks: &budget_blocks,
                subject: crate::tokens::authorize::Subject::Tool,
            },
        )
    }

    #[test]
    fn granted_tool_within_window_is_allowed_and_others_are_not() {
        let keys = RootKeys::generate();
        let t = token(&keys, 2_000);
        let args = Map::new();
        assert_eq!(check(&t, "web.search", &args, 1_000, &[0]), Ok(()));
        let Err(Denial::Capability(why)) = check(&t, "shell.exec", &args, 1_000, &[0]) else {
            panic!()
        };
        assert!(why.contains("does not grant tool \"shell.exec\""), "{why}");
        let Err(Denial::Capability(why)) = check(&t, "web.search", &args, 2_001, &[0]) else {
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
        let ok = ok.as_object().unwrap();
        let bad = json!({"path": "/etc/passwd"});
        let bad = bad.as_object().unwrap();
        assert_eq!(check(&child, "fs.read", ok, 1_000, &[0, 0]), Ok(()));
        assert!(check(&child, "fs.read", bad, 1_000, &[0, 0]).is_err());
        assert!(check(&child, "web.search", ok, 1_000, &[0, 0]).is_err());
        // The block's own tool fact and time fact grant nothing.
        assert!(check(&child, "shell.exec", ok, 1_000, &[0, 0]).is_err());
        assert!(check(&child, "fs.read", ok, 3_000, &[0, 0]).is_err());
    }

    fn append(token: &Biscuit, code: &str) -> Biscuit {
        token
            .append(BlockBuilder::new().code(code).unwrap())
            .unwrap()
    }

    #[test]
    fn child_budget_is_a_budget_denial() {
        let keys = RootKeys::generate();
        let child = append(&token(&keys, 2_000), "reject if token_calls($n), $n >= 3");
        let args = Map::new();
        assert_eq!(check(&child, "web.search", &args, 1_000, &[9, 2]), Ok(()));
        assert!(matches!(
            check(&child, "web.search", &args, 1_000, &[9, 3]),
            Err(Denial::Budget(_))
        ));
    }

    #[test]
    fn each_budget_sees_the_count_of_its_own_prefix() {
        let keys = RootKeys::generate();
        let args = Map::new();
        let child = append(&token(&keys, 2_000), "reject if token_calls($n), $n >= 3");
        // A grandchild's own block starts at 0, but the child's budget sees the child's
        // prefix, which counts the grandchild's calls too.
        let grandchild = append(&child, "check if true");
        assert!(matches!(
            check(&grandchild, "web.search", &args, 1_000, &[5, 3, 0]),
            Err(Denial::Budget(_))
        ));
        assert_eq!(
            check(&grandchild, "web.search", &args, 1_000, &[5, 2, 0]),
            Ok(())
        );
        // A grandchild with a budget of its own: both budgets hold, each on its count.
        let budgeted = append(&child, "reject if token_calls($n), $n >= 10");
        assert_eq!(
            check(&budgeted, "web.search", &args, 1_000, &[5, 2, 2]),
            Ok(())
        );
        assert!(matches!(
            check(&budgeted, "web.search", &args, 1_000, &[5, 3, 2]),
            Err(Denial::Budget(why)) if why.contains("block 1")
        ));
        let wide = append(&child, "reject if token_calls($n), $n >= 1");
        assert!(matches!(
            check(&wide, "web.search", &args, 1_000, &[5, 2, 1]),
            Err(Denial::Budget(why)) if why.contains("block 2") && !why.contains("block 1")
        ));
        // A later block cannot loosen an earlier budget by lying about counts.
        let liar = append(&child, "token_calls(0); check if true");
        assert!(check(&liar, "web.search", &args, 1_000, &[5, 3, 0]).is_err());
        // Capability checks still apply alongside budgets.
        assert!(matches!(
            check(&budgeted, "fs.write", &args, 1_000, &[5, 2, 2]),
            Err(Denial::Capability(_))
        ));
        // A count missing for a budget block fails closed.
        assert!(check(&budgeted, "web.search", &args, 1_000, &[5]).is_err());
    }

    #[test]
    fn an_authority_budget_bounds_the_whole_chain() {
        let keys = RootKeys::generate();
        let root = task_token(
            &keys,
            &TaskClaims {
                task_id: "tsk_a",
                agent: "bot",
                user: None,
                audience: None,
                tools: &["web.search".to_string()],
                expires_at_secs: 2_000,
                checks: &["reject if token_calls($n), $n >= 4".to_string()],
            },
        )
        .unwrap();
        let child = append(&root, "check if true");
        let args = Map::new();
        assert_eq!(check(&child, "web.search", &args, 1_000, &[3, 0]), Ok(()));
        assert!(matches!(
            check(&child, "web.search", &args, 1_000, &[4, 0]),
            Err(Denial::Budget(_))
        ));
    }

    #[test]
    fn budgets_needing_too_many_runs_are_refused_at_the_limit() {
        let keys = RootKeys::generate();
        let mut chain = token(&keys, 2_000);
        for _ in 0..leash_sdk::capability::MAX_RUNS + 1 {
            chain = append(&chain, "reject if token_calls($n), $n < 0");
        }
        let args = Map::new();
        let blocks = chain.block_count();
        // Every prefix with its own count: one run each, past the limit.
        let distinct: Vec<u64> = (0..blocks as u64).rev().map(|n| n + 1).collect();
        let Err(Denial::Capability(why)) = check(&chain, "web.search", &args, 1_000, &distinct)
        else {
            panic!("refused at the limit")
        };
        assert!(why.contains("limit"), "{why}");
        // The same token with counts that coincide needs one run, and passes.
        assert_eq!(
            check(&chain, "web.search", &args, 1_000, &vec![3; blocks]),
            Ok(())
        );
    }
}
