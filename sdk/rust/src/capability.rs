//! The capability vocabulary, evaluated the same way by the broker and by tool servers:
//! the call facts, the one policy, explicit limits, and offline attenuation.
//!
//! Facts: `time(now)`, `call(tool)`, one `arg(name, value)` per argument, for a use of
//! an MCP server's resources or prompts `resource(uri)` or `prompt(name)` ([`Subject`]),
//! and — only in the broker, which keeps counters — `task_calls(N)` and `token_calls(N)`. Policy:
//! `allow if call($t), tool($t)`, so only authority-block `tool` facts grant anything.
//!
//! `token_calls(N)` is per block: a budget written in block *i* bounds the calls made
//! with the token that ends at block *i* **and with every token attenuated from it**, so
//! each block's checks see the count of their own prefix of the chain. Appending a block
//! offline therefore never resets a budget. Biscuit has one authorizer-fact scope for
//! all blocks, so a token whose budget blocks see different counts is evaluated once per
//! distinct count, and each block is judged only by the run that gave it its own count.
//!
//! The per-call capability the broker forwards upstream ([`per_call`]) ends in a block
//! the broker signs as a third party with its *forwarding key*; [`evaluate_forwarded`]
//! trusts a `forwarded(tool)` fact only from a block signed by that key. An agent holds
//! the task token but not the forwarding key, so a tool server can tell a call Leash
//! checked and forwarded from a task token sent to it directly.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use biscuit_auth::builder::{
    AuthorizerBuilder, BlockBuilder, Policy, Term, date, fact, int, string,
};
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair, PublicKey, UnverifiedBiscuit, error};
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
    /// The call counters, supplied only by the broker (a tool server keeps none, so its
    /// verifier never sees a budget fail and leaves the counting to the broker).
    pub counters: Option<Counters<'a>>,
    /// What the call uses besides its name: a tool, a resource, a prompt.
    pub subject: Subject<'a>,
}

/// What a call uses. A tool call adds no fact; the MCP gateway's other uses add one, so a
/// holder can narrow them: `check if resource($u), $u.starts_with("file:///docs/")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A tool (`tools/call`, `POST /v1/tools/…/call`): no extra fact.
    Tool,
    /// A resource read (`resources/read`): `resource("<uri>")`, the URI as asked.
    Resource(&'a str),
    /// A prompt (`prompts/get`): `prompt("<name>")`, the name as Leash exposes it (the
    /// same as `call`).
    Prompt,
}

/// What the broker has counted before this call.
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    /// Calls admitted so far in the task (`task_calls`).
    pub task_calls: u64,
    /// Per block of the presented token, authority first: calls admitted so far with
    /// the token ending at that block and with everything attenuated from it. A block
    /// missing from the slice counts as exhausted (fail closed).
    pub prefix_calls: &'a [u64],
}

impl Counters<'_> {
    fn of_block(&self, block: usize) -> u64 {
        self.prefix_calls.get(block).copied().unwrap_or(u64::MAX)
    }
}

/// The blocks of `token` whose Datalog mentions `token_calls`, authority first: the
/// blocks that hold a per-token budget. Cheap enough per call, cacheable per token.
pub fn budget_blocks(token: &Biscuit) -> Vec<usize> {
    (0..token.block_count())
        .filter(|&i| {
            // A block that cannot be printed is treated as holding a budget: the extra
            // evaluation can only deny more.
            token
                .print_block_source(i)
                .map_or(true, |source| source.contains("token_calls"))
        })
        .collect()
}

/// The check a tool server adds to accept only forwarded capabilities: the called tool
/// must be named by a `forwarded` fact of a block signed by the forwarding key. Facts
/// of other blocks (the authority block, or an agent's attenuation, first- or
/// third-party) are outside this scope, so nobody but the key's holder can satisfy it.
pub const FORWARDED_CHECK: &str = "check if forwarded($t), call($t) trusting {forwarding}";

/// Runs the authorizer for a call that must have been forwarded by the broker: as
/// [`evaluate`] without counters (a tool server keeps none; `call.counters` is not
/// read), plus [`FORWARDED_CHECK`] trusting `forwarding` (the broker's published
/// forwarding key). A task token presented directly, or an agent's copy of a forwarded
/// block, fails that check.
pub fn evaluate_forwarded(
    token: &Biscuit,
    call: &CallFacts<'_>,
    forwarding: &PublicKey,
) -> Result<(), error::Token> {
    run(token, call, None, Some(forwarding), deadline())
}

/// Whether some block of `token` is signed by `forwarding` as a third party (a cheap
/// look before the authorizer, so a raw task token gets a clear refusal).
pub fn is_forwarded_by(token: &Biscuit, forwarding: &PublicKey) -> bool {
    (1..token.block_count())
        .any(|i| matches!(token.block_external_key(i), Ok(Some(key)) if key == *forwarding))
}

/// Runs the authorizer for one call. The error is biscuit-auth's, with the failed checks.
pub fn evaluate(token: &Biscuit, call: &CallFacts<'_>) -> Result<(), error::Token> {
    let budgets = match &call.counters {
        Some(_) => budget_blocks(token),
        None => Vec::new(),
    };
    evaluate_with_budgets(token, call, &budgets)
}

/// [`evaluate`] with the token's budget blocks already known (see [`budget_blocks`]).
pub fn evaluate_with_budgets(
    token: &Biscuit,
    call: &CallFacts<'_>,
    budget_blocks: &[usize],
) -> Result<(), error::Token> {
    // One time budget for the whole evaluation, however many runs it takes.
    let deadline = deadline();
    let Some(counters) = call.counters else {
        return run(token, call, None, None, deadline);
    };
    let last = token.block_count().saturating_sub(1);
    // The main run gives `token_calls` the count of the whole token and judges every
    // block that holds no budget, the policy, and the budget blocks with that count.
    let main_count = counters.of_block(last);
    let judged_elsewhere = |block: u32| {
        let block = block as usize;
        budget_blocks.contains(&block) && counters.of_block(block) != main_count
    };
    let (policy, mut failed) = outcome(run(token, call, Some(main_count), None, deadline))?;
    failed.retain(
        |check| !matches!(check, error::FailedCheck::Block(b) if judged_elsewhere(b.block_id)),
    );
    // One more run per other count, judging only the budget blocks that count applies to.
    let mut other_counts: Vec<u64> = budget_blocks
        .iter()
        .map(|&b| counters.of_block(b))
        .filter(|&n| n != main_count)
        .collect();
    other_counts.sort_unstable();
    other_counts.dedup();
    if other_counts.len() >= MAX_RUNS {
        return Err(error::Token::RunLimit(error::RunLimit::TooManyIterations));
    }
    for n in other_counts {
        let (_, checks) = outcome(run(token, call, Some(n), None, deadline))?;
        failed.extend(checks.into_iter().filter(|check| {
            matches!(check, error::FailedCheck::Block(b)
                if budget_blocks.contains(&(b.block_id as usize)) && counters.of_block(b.block_id as usize) == n)
        }));
    }
    match (policy, failed.is_empty()) {
        (Some(error::MatchedPolicy::Allow(_)), true) => Ok(()),
        (Some(policy), _) => Err(error::Token::FailedLogic(error::Logic::Unauthorized {
            policy,
            checks: failed,
        })),
        (None, _) => Err(error::Token::FailedLogic(error::Logic::NoMatchingPolicy {
            checks: failed,
        })),
    }
}

/// Most authorizer runs one evaluation may take (one per distinct budget count): a token
/// whose budgets need more is refused at the limit rather than costing more time.
pub const MAX_RUNS: usize = 8;

/// When an evaluation starting now must end: [`limits`]' time, for all its runs together.
fn deadline() -> std::time::Instant {
    std::time::Instant::now() + limits().max_time
}

/// One authorizer run with `token_calls` set to `token_calls` (when counting), and
/// [`FORWARDED_CHECK`] when `forwarding` is given, within what is left before `deadline`.
fn run(
    token: &Biscuit,
    call: &CallFacts<'_>,
    token_calls: Option<u64>,
    forwarding: Option<&PublicKey>,
    deadline: std::time::Instant,
) -> Result<(), error::Token> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(error::Token::RunLimit(error::RunLimit::Timeout));
    }
    let now = UNIX_EPOCH + Duration::from_secs(call.now_secs.max(0) as u64);
    let mut builder = AuthorizerBuilder::new().set_limits(AuthorizerLimits {
        max_time: left,
        ..limits()
    });
    let mut facts = vec![
        fact("time", &[date(&now)]),
        fact("call", &[string(call.tool)]),
    ];
    match call.subject {
        Subject::Tool => {}
        Subject::Resource(uri) => facts.push(fact("resource", &[string(uri)])),
        Subject::Prompt => facts.push(fact("prompt", &[string(call.tool)])),
    }
    if let (Some(counters), Some(token_calls)) = (&call.counters, token_calls) {
        facts.push(fact("task_calls", &[count(counters.task_calls)]));
        facts.push(fact("token_calls", &[count(token_calls)]));
    }
    facts.extend(arg_facts(call.args));
    for f in facts {
        builder = builder.fact(f)?;
    }
    if let Some(key) = forwarding {
        builder = builder.code_with_params(
            FORWARDED_CHECK,
            HashMap::new(),
            HashMap::from([("forwarding".to_string(), *key)]),
        )?;
    }
    let mut authorizer = builder.policy(ALLOW_GRANTED_TOOL.clone())?.build(token)?;
    authorizer.authorize().map(|_| ())
}

/// A run's matched policy (`None`: no policy matched) and failed checks; any other
/// error (a run limit, a malformed block) ends the evaluation as it is.
fn outcome(
    result: Result<(), error::Token>,
) -> Result<(Option<error::MatchedPolicy>, Vec<error::FailedCheck>), error::Token> {
    match result {
        Ok(()) => Ok((Some(error::MatchedPolicy::Allow(0)), Vec::new())),
        Err(error::Token::FailedLogic(error::Logic::Unauthorized { policy, checks })) => {
            Ok((Some(policy), checks))
        }
        Err(error::Token::FailedLogic(error::Logic::NoMatchingPolicy { checks })) => {
            Ok((None, checks))
        }
        Err(other) => Err(other),
    }
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

/// The per-call capability the broker sends upstream (`Leash-Capability`): `token` with
/// one more block, signed by the broker's `forwarding` key as a third party:
///
/// ```text
/// forwarded("<tool>");
/// check if call("<tool>");
/// check if time($t), $t <= <until>;
/// ```
///
/// A third-party signature covers the previous block's signature, so the block cannot
/// be moved onto another token; its checks pin it to one tool and a short window.
///
/// ```
/// # use biscuit_auth::{KeyPair, Biscuit};
/// let (root, forwarding) = (KeyPair::new(), KeyPair::new());
/// let token = Biscuit::builder().fact("tool(\"fs.read\")").unwrap().build(&root).unwrap();
/// let capability = leash_sdk::capability::per_call(&token, "fs.read", 1_900_000_000, &forwarding).unwrap();
/// let parsed = Biscuit::from_base64(&capability, root.public()).unwrap();
/// assert!(leash_sdk::capability::is_forwarded_by(&parsed, &forwarding.public()));
/// ```
pub fn per_call(
    token: &Biscuit,
    tool: &str,
    until_secs: i64,
    forwarding: &KeyPair,
) -> Result<String, error::Token> {
    let until = UNIX_EPOCH + Duration::from_secs(until_secs.max(0) as u64);
    let block = BlockBuilder::new()
        .fact(fact("forwarded", &[string(tool)]))?
        .check(biscuit_auth::builder::check(
            &[biscuit_auth::builder::pred("call", &[string(tool)])],
            biscuit_auth::builder::CheckKind::One,
        ))?
        .code_with_params(
            "check if time($t), $t <= {until};",
            HashMap::from([("until".to_string(), date(&until))]),
            HashMap::new(),
        )?;
    let signed = token
        .third_party_request()?
        .create_block(&forwarding.private(), block)?;
    token
        .append_third_party(forwarding.public(), signed)?
        .to_base64()
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

#[cfg(test)]
mod tests {
    use super::*;
    use biscuit_auth::builder::BiscuitBuilder;

    const NOW: i64 = 1_800_000_000;

    fn task_token(root: &KeyPair, extra: &str) -> Biscuit {
        let source =
            format!(r#"task("tsk_1"); agent("bot"); tool("web.search"); tool("fs.read"); {extra}"#);
        BiscuitBuilder::new()
            .code(source)
            .unwrap()
            .build(root)
            .unwrap()
    }

    fn allowed(token: &Biscuit, tool: &str, forwarding: &PublicKey) -> bool {
        let args = Map::new();
        let call = CallFacts {
            tool,
            args: &args,
            now_secs: NOW,
            counters: None,
            subject: crate::capability::Subject::Tool,
        };
        evaluate_forwarded(token, &call, forwarding).is_ok()
    }

    fn reparse(text: &str, root: &KeyPair) -> Biscuit {
        Biscuit::from_base64(text, root.public()).unwrap()
    }

    #[test]
    fn only_a_block_signed_by_the_forwarding_key_makes_a_call_forwarded() {
        let (root, forwarding, agent) = (KeyPair::new(), KeyPair::new(), KeyPair::new());
        let fwd = forwarding.public();
        let token = task_token(&root, "");
        let capability = reparse(
            &per_call(&token, "web.search", NOW + 30, &forwarding).unwrap(),
            &root,
        );
        assert!(is_forwarded_by(&capability, &fwd));
        assert!(allowed(&capability, "web.search", &fwd));
        assert!(!allowed(&capability, "fs.read", &fwd), "another tool");
        let late = CallFacts {
            tool: "web.search",
            args: &Map::new(),
            now_secs: NOW + 31,
            counters: None,
            subject: crate::capability::Subject::Tool,
        };
        assert!(
            evaluate_forwarded(&capability, &late, &fwd).is_err(),
            "past its window"
        );

        // The raw token, and copies an agent can make.
        assert!(!is_forwarded_by(&token, &fwd));
        assert!(!allowed(&token, "web.search", &fwd));
        let text = token.to_base64().unwrap();
        for code in [
            r#"forwarded("web.search");"#,
            "forwarded($t) <- call($t);",
            r#"forwarded($t) <- call($t) trusting ed25519/0000000000000000000000000000000000000000000000000000000000000000;"#,
        ] {
            let block = BlockBuilder::new().code(code).unwrap();
            let copy = UnverifiedBiscuit::from_base64(&text)
                .unwrap()
                .append(block)
                .unwrap()
                .to_base64()
                .unwrap();
            assert!(
                !allowed(&reparse(&copy, &root), "web.search", &fwd),
                "{code}"
            );
        }
        let block = BlockBuilder::new()
            .code(r#"forwarded("web.search");"#)
            .unwrap();
        let signed = token
            .third_party_request()
            .unwrap()
            .create_block(&agent.private(), block)
            .unwrap();
        let own = token.append_third_party(agent.public(), signed).unwrap();
        assert!(!is_forwarded_by(&own, &fwd));
        assert!(!allowed(&own, "web.search", &fwd), "signed by another key");

        // A forwarded fact in the authority block (a mint bug) would not count either.
        let minted = task_token(&root, r#"forwarded("web.search");"#);
        assert!(!allowed(&minted, "web.search", &fwd));
        // Nor does the root key count as the forwarding key.
        assert!(!allowed(&minted, "web.search", &root.public()));
    }

    #[test]
    fn a_forwarded_block_is_bound_to_the_token_it_was_signed_for() {
        let (root, forwarding) = (KeyPair::new(), KeyPair::new());
        let token = task_token(&root, "");
        let other = task_token(&root, "");
        let block = || {
            BlockBuilder::new()
                .fact(fact("forwarded", &[string("web.search")]))
                .unwrap()
        };
        let signed = token
            .third_party_request()
            .unwrap()
            .create_block(&forwarding.private(), block())
            .unwrap();
        assert!(
            other
                .append_third_party(forwarding.public(), signed.clone())
                .is_err(),
            "the library refuses the move"
        );
        // A hand-made token with the moved block does not verify.
        let moved = UnverifiedBiscuit::from_base64(other.to_base64().unwrap())
            .unwrap()
            .append_third_party(&signed.serialize().unwrap())
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(Biscuit::from_base64(&moved, root.public()).is_err());
    }
}
