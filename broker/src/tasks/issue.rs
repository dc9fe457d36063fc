//! Issuing a task token for a task: the grant's checks plus the agent's, a window, and
//! the revocation id to record. Used by task creation, renewal and approval.
//!
//! Always from the *current* policy: a tool the grant no longer allows is dropped from
//! the new token, and a task left with no tool gets none (403 `policy_denied`).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::ApiError;
use crate::policy::Grant;
use crate::tokens::keys::RootKeys;
use crate::tokens::mint::{TaskClaims, task_token, to_text};
use crate::tokens::seal::{Sealer, TASK_TOKEN};

/// Whom a task token speaks for: the task, its agent, and — for a task a person started
/// for an MCP client — the user and the one resource the token is for.
#[derive(Debug, Clone, Copy)]
pub struct TaskIdentity<'a> {
    /// `tsk_…`.
    pub task_id: &'a str,
    /// The agent (`client:<id>` for an MCP client).
    pub agent: &'a str,
    /// The person whose grant the task is under.
    pub user: Option<&'a str>,
    /// The resource (`<public url>/mcp`) the token is refused everywhere but.
    pub audience: Option<&'a str>,
}

impl<'a> TaskIdentity<'a> {
    /// The identity of a stored task.
    pub fn of(record: &'a crate::store::TaskRecord) -> Self {
        TaskIdentity {
            task_id: &record.task_id,
            agent: &record.agent,
            user: record.user.as_deref(),
            audience: record.audience.as_deref(),
        }
    }
}

/// A freshly minted task token.
pub struct Issued {
    /// The token text (base64).
    pub token: String,
    /// Hex revocation id of its authority block.
    pub revocation_id: String,
    /// End of the task's window (ms since epoch, whole seconds).
    pub expires_at_ms: i64,
    /// End of this token's own window: the task's, or sooner for an OAuth access token.
    pub token_expires_at_ms: i64,
    /// The tools it grants: those asked for that the grant still allows.
    pub tools: Vec<String>,
}

impl Issued {
    /// The store's record of this token for `task_id` (the token sealed).
    pub fn activation(&self, task_id: &str, sealer: &Sealer) -> crate::store::Activation {
        crate::store::Activation {
            task_id: task_id.to_string(),
            expires_at_ms: self.expires_at_ms,
            token: sealer.seal(TASK_TOKEN, task_id, &self.token),
            revocation_id: self.revocation_id.clone(),
            tools: self.tools.clone(),
        }
    }
}

/// Mints task tokens: the root keys and the clock, nothing else.
#[derive(Clone)]
pub struct Issuer {
    keys: Arc<RootKeys>,
    clock: Clock,
    /// Longest life of a token bound to an audience (an OAuth access token).
    access_token_ttl: Duration,
}

impl Issuer {
    /// An issuer signing with `keys` (the current root key) at `clock`'s time; tokens bound
    /// to an audience live at most `access_token_ttl`.
    pub fn new(keys: Arc<RootKeys>, clock: Clock, access_token_ttl: Duration) -> Self {
        Issuer {
            keys,
            clock,
            access_token_ttl,
        }
    }

    /// Mints a token for a task of `grant` that ends `ttl_ms` from now — or, for a renewal,
    /// at `current_end_ms` (the task's window now) if that is later: a renewal never
    /// shortens a window, since tokens minted earlier keep theirs, and revocation ids are
    /// kept until the task's window ends (to end sooner, complete or revoke the task). The
    /// grant's `max_ttl` from now still bounds it.
    pub fn issue(
        &self,
        task: &TaskIdentity<'_>,
        grant: &Grant,
        tools: &[String],
        agent_checks: &[String],
        ttl_ms: i64,
        current_end_ms: Option<i64>,
    ) -> Result<Issued, ApiError> {
        let tools: Vec<String> = tools
            .iter()
            .filter(|tool| grant.allows(tool))
            .cloned()
            .collect();
        if tools.is_empty() {
            return Err(ApiError::PolicyDenied(format!(
                "the policy no longer grants agent {:?} any of the task's tools",
                grant.agent
            )));
        }
        let now_secs = self.clock.now_ms().div_euclid(1000);
        let longest = now_secs + grant.max_ttl.as_secs() as i64;
        let kept = current_end_ms.map_or(0, |ms| ms.div_euclid(1000).min(longest));
        let expires_secs = (now_secs + ttl_ms.div_euclid(1000)).max(kept);
        let token_expires_secs = match task.audience {
            Some(_) => expires_secs.min(now_secs + self.access_token_ttl.as_secs() as i64),
            None => expires_secs,
        };
        let checks: Vec<String> = grant.checks.iter().chain(agent_checks).cloned().collect();
        let biscuit = task_token(
            &self.keys,
            &TaskClaims {
                task_id: task.task_id,
                agent: task.agent,
                user: task.user,
                audience: task.audience,
                tools: &tools,
                expires_at_secs: token_expires_secs,
                checks: &checks,
            },
        )
        .map_err(|e| ApiError::internal(anyhow::anyhow!("minting a task token: {e}")))?;
        let (token, revocation_id) = to_text(&biscuit)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("encoding a task token: {e}")))?;
        Ok(Issued {
            token,
            revocation_id,
            expires_at_ms: expires_secs * 1000,
            token_expires_at_ms: token_expires_secs * 1000,
            tools,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::TaskIdentity;
    use crate::error::ApiError;
    use crate::tasks::testkit::{Kit, T0_MS, notes_policy};

    const BOT: TaskIdentity<'static> = TaskIdentity {
        task_id: "tsk_1",
        agent: "narrow",
        user: None,
        audience: None,
    };

    fn tools(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn a_token_holds_only_the_tools_the_grant_still_allows() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let grant = kit.policy.grant("narrow").unwrap().clone();
        let issued = kit
            .issuer
            .issue(
                &BOT,
                &grant,
                &tools(&["notes.read", "notes.delete"]),
                &[],
                60_000,
                None,
            )
            .unwrap();
        assert_eq!(issued.tools, tools(&["notes.read"]));
        let refused = kit
            .issuer
            .issue(&BOT, &grant, &tools(&["notes.delete"]), &[], 60_000, None);
        assert!(matches!(refused, Err(ApiError::PolicyDenied(_))));
    }

    #[tokio::test]
    async fn the_window_starts_now_and_the_grant_bounds_it() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let grant = kit.policy.grant("narrow").unwrap().clone();
        let asked = tools(&["notes.read"]);
        let issued = kit
            .issuer
            .issue(&BOT, &grant, &asked, &[], 60_000, None)
            .unwrap();
        assert_eq!(issued.expires_at_ms, T0_MS + 60_000);
        // A renewal that would keep a window past the grant's max_ttl from now is cut
        // back to it.
        let far = T0_MS + 3_600_000;
        let renewed = kit
            .issuer
            .issue(&BOT, &grant, &asked, &[], 60_000, Some(far))
            .unwrap();
        assert_eq!(renewed.expires_at_ms, T0_MS + 300_000);
    }

    #[tokio::test]
    async fn a_renewal_never_shortens_the_window() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let grant = kit.policy.grant("narrow").unwrap().clone();
        let asked = tools(&["notes.read"]);
        let current_end = T0_MS + 200_000;
        let renewed = kit
            .issuer
            .issue(&BOT, &grant, &asked, &[], 10_000, Some(current_end))
            .unwrap();
        assert_eq!(renewed.expires_at_ms, current_end);
        let longer = kit
            .issuer
            .issue(&BOT, &grant, &asked, &[], 250_000, Some(current_end))
            .unwrap();
        assert_eq!(longer.expires_at_ms, T0_MS + 250_000);
    }

    #[tokio::test]
    async fn an_access_token_lives_shorter_than_its_task_and_names_its_user_and_audience() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let grant = kit.policy.grant("narrow").unwrap().clone();
        let client = TaskIdentity {
            task_id: "tsk_1",
            agent: "client:abc",
            user: Some("alice"),
            audience: Some("http://127.0.0.1:7070/mcp"),
        };
        let issued = kit
            .issuer
            .issue(&client, &grant, &tools(&["notes.read"]), &[], 240_000, None)
            .unwrap();
        // The task keeps the window asked for; the token lives the access-token time.
        assert_eq!(issued.expires_at_ms, T0_MS + 240_000);
        assert_eq!(issued.token_expires_at_ms, T0_MS + 120_000);
        let verified = kit.verifier.verify(&issued.token, |_| None).unwrap();
        assert_eq!(
            verified.audience.as_deref(),
            Some("http://127.0.0.1:7070/mcp")
        );
        assert_eq!(verified.user.as_deref(), Some("alice"));
        assert_eq!(verified.expires_at_secs, Some((T0_MS + 120_000) / 1000));
        // A plain task token lives as long as its task.
        let plain = kit
            .issuer
            .issue(&BOT, &grant, &tools(&["notes.read"]), &[], 240_000, None)
            .unwrap();
        assert_eq!(plain.token_expires_at_ms, plain.expires_at_ms);
    }
}
