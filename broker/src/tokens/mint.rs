//! The only place that builds issuance Datalog: task tokens and credentials.
//!
//! Every right lives in the authority block, signed with the root key and tagged with
//! its root key id. Agent- and policy-supplied Datalog is accepted only as checks (they
//! can only narrow), and values are passed as terms, never spliced into source text.

use std::collections::HashMap;
use std::time::Duration;

use biscuit_auth::builder::{BiscuitBuilder, Check, Term, fact, string};
use biscuit_auth::{Biscuit, error};

use crate::tokens::keys::RootKeys;

/// What a task token says.
pub struct TaskClaims<'a> {
    /// `task("…")`.
    pub task_id: &'a str,
    /// `agent("…")`.
    pub agent: &'a str,
    /// `user("…")`: the person who started the task for a client, if any.
    pub user: Option<&'a str>,
    /// `audience("…")`: the one resource this token is for, if bound to one. Such a
    /// token (an OAuth access token) also says `expires(<seconds since the epoch>)`, so
    /// the resource can answer an expired one with 401 before any call is tried.
    pub audience: Option<&'a str>,
    /// One `tool("…")` per allowed tool.
    pub tools: &'a [String],
    /// End of the window, seconds since the epoch (the `time` check).
    pub expires_at_secs: i64,
    /// The grant's checks, then the checks the agent asked for.
    pub checks: &'a [String],
}

/// Parses one check (`check if …`, `check all …`, `reject if …`); anything else —
/// facts, rules, several statements — is refused with a message saying why.
pub fn parse_check(source: &str) -> Result<(), String> {
    parse_checks(source).map(|_| ())
}

fn parse_checks(source: &str) -> Result<Check, String> {
    let builder = BiscuitBuilder::new()
        .code(source)
        .map_err(|e| format!("{source:?} is not valid Datalog: {}", describe(&e)))?;
    let (facts, rules, mut checks) = builder.dump();
    if !facts.is_empty() || !rules.is_empty() || checks.len() != 1 {
        return Err(format!(
            "{source:?} must be exactly one check (check if / check all / reject if), not facts or rules"
        ));
    }
    Ok(checks.remove(0))
}

fn describe(err: &error::Token) -> String {
    match err {
        error::Token::Language(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Mints a task token.
pub fn task_token(keys: &RootKeys, claims: &TaskClaims<'_>) -> Result<Biscuit, String> {
    let (kid, pair) = keys.signing();
    let mut builder = BiscuitBuilder::new()
        .root_key_id(kid)
        .fact(fact("task", &[string(claims.task_id)]))
        .and_then(|b| b.fact(fact("agent", &[string(claims.agent)])))
        .map_err(|e| describe(&e))?;
    if let Some(user) = claims.user {
        builder = builder
            .fact(fact("user", &[string(user)]))
            .map_err(|e| describe(&e))?;
    }
    if let Some(audience) = claims.audience {
        builder = builder
            .fact(fact("audience", &[string(audience)]))
            .and_then(|b| {
                b.fact(fact(
                    "expires",
                    &[biscuit_auth::builder::int(claims.expires_at_secs)],
                ))
            })
            .map_err(|e| describe(&e))?;
    }
    for tool in claims.tools {
        builder = builder
            .fact(fact("tool", &[string(tool)]))
            .map_err(|e| describe(&e))?;
    }
    builder = with_window(builder, claims.expires_at_secs)?;
    for source in claims.checks {
        builder = builder
            .check(parse_checks(source)?)
            .map_err(|e| describe(&e))?;
    }
    builder.build(&pair).map_err(|e| describe(&e))
}

/// Mints a credential: `<role>("id"); role("<role>")`, with an optional window.
pub fn credential(
    keys: &RootKeys,
    role: Role,
    id: &str,
    expires_at_secs: Option<i64>,
) -> Result<Biscuit, String> {
    let (kid, pair) = keys.signing();
    let mut builder = BiscuitBuilder::new()
        .root_key_id(kid)
        .fact(fact(role.as_str(), &[string(id)]))
        .and_then(|b| b.fact(fact("role", &[string(role.as_str())])))
        .map_err(|e| describe(&e))?;
    if let Some(expires) = expires_at_secs {
        builder = with_window(builder, expires)?;
    }
    builder.build(&pair).map_err(|e| describe(&e))
}

/// Adds `check if time($t), $t <= <expiry>` to the authority block, so a verifier
/// that supplies no `time` fact denies.
fn with_window(builder: BiscuitBuilder, expires_at_secs: i64) -> Result<BiscuitBuilder, String> {
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs(expires_at_secs.max(0) as u64);
    let params: HashMap<String, Term> =
        HashMap::from([("expiry".to_string(), biscuit_auth::builder::date(&expiry))]);
    builder
        .code_with_params("check if time($t), $t <= {expiry};", params, HashMap::new())
        .map_err(|e| describe(&e))
}

/// A minted token as text, with the revocation id of its authority block (hex).
pub fn to_text(biscuit: &Biscuit) -> Result<(String, String), String> {
    let revocation_id = biscuit
        .revocation_identifiers()
        .first()
        .map(hex::encode)
        .ok_or_else(|| "the token has no authority block".to_string())?;
    let text = biscuit.to_base64().map_err(|e| describe(&e))?;
    Ok((text, revocation_id))
}

/// The kinds of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agent: may open tasks.
    Agent,
    /// A human approver: may approve, deny and revoke.
    Approver,
}

impl Role {
    /// The Datalog name of the role (`agent`, `approver`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_checks_are_accepted() {
        assert!(parse_check("check if call(\"web.search\")").is_ok());
        assert!(parse_check("reject if token_calls($n), $n >= 3").is_ok());
        assert!(parse_check("tool(\"admin\")").is_err());
        assert!(parse_check("check if true; tool(\"admin\")").is_err());
        assert!(parse_check("grant($x) <- tool($x)").is_err());
        assert!(parse_check("check if nonsense((").is_err());
    }

    #[test]
    fn task_token_carries_the_vocabulary() {
        let keys = RootKeys::generate();
        let tools = vec!["web.search".to_string()];
        let checks = vec!["check if call($t), $t != \"x\"".to_string()];
        let token = task_token(
            &keys,
            &TaskClaims {
                task_id: "tsk_1",
                agent: "bot",
                user: None,
                audience: None,
                tools: &tools,
                expires_at_secs: 1_800_000_000,
                checks: &checks,
            },
        )
        .unwrap();
        let source = token.print_block_source(0).unwrap();
        assert!(source.contains("task(\"tsk_1\")"), "{source}");
        assert!(source.contains("tool(\"web.search\")"), "{source}");
        assert!(
            source.contains("check if time($t), $t <= 2027-01-15T08:00:00Z"),
            "{source}"
        );
        assert_eq!(token.root_key_id(), Some(1));
    }
}
