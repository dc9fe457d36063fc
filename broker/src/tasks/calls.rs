//! The checked tool call, in the order of the contract:
//! verify token → revocation and task state → tool exists → authorizer (with counters)
//! → JSON Schema → the grant's budget → forward upstream → `{"result": …}`.
//!
//! Every step after verification refuses without side effects: a refused call gives
//! its counter slot back, and so does a call the upstream never performed.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::audit::log::{Audit, AuditEvent};
use crate::clock::Clock;
use crate::connections::Connections;
use crate::error::ApiError;
use crate::ids::is_tool_name;
use crate::metrics::Metrics;
use crate::policy::{McpKind, ToolApproval, ToolDef};
use crate::ratelimit::RateLimiter;
use crate::replica::health::FeedHealth;
use crate::store::Store;
use crate::tasks::approvals::{Approvals, CallApproval};
use crate::tasks::live::TaskRuntime;
use crate::tasks::runtime::Tasks;
use crate::tokens::authorize::{CallFacts, Denial, Subject, authorize_call, listable};
use crate::tokens::keys::ForwardingKey;
use crate::tokens::verify::{Principal, VerifiedToken};
use crate::upstream::catalog::{Catalog, Lookup};
use crate::upstream::client::{Answer, UpstreamFailure};
use crate::upstream::dispatch::{Upstream, Upstreams};
use crate::upstream::mcp::InputRound;
use crate::upstream::relay::{Origin, Relay};

/// Recently minted per-call capabilities: (token id, tool) → (text, end of window).
pub type CapabilityCache = moka::sync::Cache<(String, String), (String, i64)>;

/// The checked call path and the handles it uses, nothing more.
pub struct Calls {
    /// Live tasks and their counters.
    pub tasks: Arc<Tasks>,
    /// Every callable tool.
    pub catalog: Arc<Catalog>,
    /// Where calls are forwarded.
    pub upstreams: Arc<Upstreams>,
    /// Per-call approvals.
    pub approvals: Arc<Approvals>,
    /// The task record a per-call approval names.
    pub store: Arc<dyn Store>,
    /// Every call is audited.
    pub audit: Audit,
    /// Call counters and latencies.
    pub metrics: Arc<Metrics>,
    /// The clock.
    pub clock: Clock,
    /// A replica that may have missed a revocation admits nothing.
    pub health: Arc<FeedHealth>,
    /// The per-agent rate limit.
    pub rate_limiter: Arc<RateLimiter>,
    /// Per-call capabilities minted recently.
    pub capabilities: CapabilityCache,
    /// Signs the forwarded block of each per-call capability.
    pub forwarding: Arc<ForwardingKey>,
    /// Window of the per-call capability.
    pub capability_ttl: std::time::Duration,
    /// The provider tokens of tools with `upstream_auth`.
    pub connections: Arc<Connections>,
}
use leash_sdk::facts::{MAX_DEPTH, MAX_VALUES, depth, value_count};

/// A task token resolved to its live task.
pub struct TaskContext {
    /// The verified token.
    pub token: Arc<VerifiedToken>,
    /// The task's runtime.
    pub runtime: Arc<TaskRuntime>,
}

/// What a checked call learnt on its way, for its audit row.
#[derive(Default)]
struct Seen {
    /// The person's connection that served it.
    connection: Option<String>,
    /// Its arguments with every `writeOnly` value masked.
    arguments: Option<Value>,
    /// What the upstream made of it (`ok`, `tool_error`, or why it failed).
    upstream: Option<&'static str>,
    /// The values masked in `arguments`: never in the audit row, even quoted in an
    /// upstream's error message.
    secrets: Vec<String>,
}

/// Longest refusal reason an audit row keeps.
const MAX_AUDITED_REASON: usize = 1024;

impl Seen {
    /// Why the call was refused, as the audit keeps it: bounded, masked values scrubbed.
    fn reason_of(&self, err: &ApiError) -> String {
        let reason = crate::policy::write_only::scrubbed(&err.to_string(), &self.secrets);
        crate::text::shown(&reason, MAX_AUDITED_REASON)
    }
}

/// What a per-call approval is bound to: the call's arguments and, from the second round
/// of a call that asked its client for input, that round's number and the client's
/// answers. An approval is then of one round, with the answers it was requested with:
/// the agent cannot pick its answers once a person has approved, nor spend a later
/// round's approval on a fresh call.
fn approval_binding<'a>(args: &'a Value, round: Option<&InputRound>) -> Cow<'a, Value> {
    match round.filter(|r| r.number > 1) {
        None => Cow::Borrowed(args),
        Some(round) => Cow::Owned(json!({
            "arguments": args,
            "round": round.number,
            "inputResponses": round.responses,
        })),
    }
}

/// Arguments longer than this (as JSON) are not kept in the audit row, only their length.
const MAX_AUDITED_ARGUMENTS: usize = 4096;

/// Longest block source an audit row keeps.
const MAX_BLOCK_SOURCE: usize = 4096;

/// The Datalog of every block a holder appended to the task's token (authority
/// excluded: Leash wrote it), for the audit row of the derived token's first call.
fn block_sources(token: &VerifiedToken) -> Vec<String> {
    (1..token.biscuit.block_count())
        .map(|index| {
            let source = token
                .biscuit
                .print_block_source(index)
                .unwrap_or_else(|_| "(unprintable)".into());
            crate::text::shown(&source, MAX_BLOCK_SOURCE)
        })
        .collect()
}

/// How a checked call ended.
#[derive(Debug)]
pub enum CallOutcome {
    /// Forwarded; the upstream's JSON answer.
    Done(Answer),
    /// The tool needs a human approval first: repeat the call with this id in
    /// `Leash-Approval` once it is approved.
    PendingApproval(String),
    /// The MCP upstream needs the stateless client's input first (2026-07-28): its
    /// questions and its state for the next round, which the caller seals. This round
    /// was a call (counted, audited); so is the next.
    InputRequired(Box<rmcp::model::InputRequiredResult>),
}

impl Calls {
    /// Resolves a task token to its task and refuses unless the task is active.
    pub async fn active_task(&self, token: Arc<VerifiedToken>) -> Result<TaskContext, ApiError> {
        let Principal::Task { task_id, .. } = &token.principal else {
            return Err(ApiError::TokenInvalid("not a task token".into()));
        };
        // A replica that may have missed a revocation admits nothing.
        self.health.check()?;
        let runtime = self.tasks.runtime(task_id).await?.ok_or_else(|| {
            ApiError::TokenInvalid(format!("the token names unknown task {task_id}"))
        })?;
        self.tasks.check_active(&runtime).await?;
        Ok(TaskContext { token, runtime })
    }

    /// Makes one checked tool call. `approval` is the `Leash-Approval` header, if any.
    pub async fn call_tool(
        &self,
        token: Arc<VerifiedToken>,
        tool_name: &str,
        args: Value,
        approval: Option<&str>,
    ) -> Result<CallOutcome, ApiError> {
        let delivery = Delivery {
            approval,
            ..Delivery::default()
        };
        self.call(token, tool_name, Use::Tool, args, delivery).await
    }

    /// Makes one checked use of `tool_name`: a tool, a prompt (`prompt($name)` among
    /// its facts), or a read of one URI from a server's resources (`resource($uri)`;
    /// `args` is then `{"uri": …}`). `delivery` says what the caller adds besides.
    pub async fn call(
        &self,
        token: Arc<VerifiedToken>,
        tool_name: &str,
        what: Use,
        args: Value,
        delivery: Delivery<'_>,
    ) -> Result<CallOutcome, ApiError> {
        // Integral numbers become integers once, here: the checks, the schema, the approval
        // binding and the upstream all see the same value.
        // A URI a prefix check cannot judge is refused before anything, the audit included.
        if let Use::Resource(uri) = &what {
            check_uri(uri)?;
        }
        let mut args = args;
        leash_sdk::facts::normalize_numbers(&mut args);
        if let Principal::Task { agent, .. } = &token.principal {
            self.rate_limiter.check(agent)?;
        }
        let task = self.active_task(token).await?;
        // Fail closed: no call is admitted while its audit record could not be kept.
        self.audit.check_writable()?;
        let started = std::time::Instant::now();
        let mut seen = Seen::default();
        let outcome = self
            .checked_call(&task, tool_name, &what, &args, delivery, &mut seen)
            .await;
        let (tool_label, outcome_label, took) = match &outcome {
            Ok(CallOutcome::Done(_) | CallOutcome::InputRequired(_)) => {
                (tool_name, "allowed", Some(started.elapsed()))
            }
            Ok(CallOutcome::PendingApproval(_)) => (tool_name, "held", None),
            // Only catalog names become labels: callers cannot invent series.
            Err(err @ ApiError::UnknownTool(_)) => ("unknown", err.status_and_code().1, None),
            Err(err) => (tool_name, err.status_and_code().1, None),
        };
        self.metrics.call(tool_label, outcome_label, took);
        let (kind, mut detail) = match &outcome {
            Ok(CallOutcome::PendingApproval(id)) => (
                "call.held",
                json!({ "tool": tool_name, "token": task.token.own_id(), "approval_id": id }),
            ),
            Ok(CallOutcome::Done(_)) => (
                "call.allowed",
                json!({ "tool": tool_name, "token": task.token.own_id() }),
            ),
            Ok(CallOutcome::InputRequired(_)) => (
                "call.allowed",
                json!({ "tool": tool_name, "token": task.token.own_id(), "input_required": true }),
            ),
            Err(err) => {
                let (status, code) = err.status_and_code();
                (
                    "call.denied",
                    json!({ "tool": tool_name, "token": task.token.own_id(), "status": status.as_u16(), "code": code, "reason": seen.reason_of(err) }),
                )
            }
        };
        match &what {
            Use::Tool => {}
            Use::Prompt => detail["prompt"] = json!(true),
            // Checked to be at most MAX_URI_BYTES; the audit keeps its first 512 bytes.
            Use::Resource(uri) => detail["uri"] = json!(crate::text::shown(uri, 512)),
        }
        // A later round of a call that asked its client for input.
        if let Some(round) = delivery.round.filter(|r| r.number > 1) {
            detail["round"] = json!(round.number);
        }
        // Which person's connection served the call: its id, never its token.
        if let Some(connection) = seen.connection {
            detail["connection"] = json!(connection);
        }
        // What the call asked, as the timeline and the evidence show it (writeOnly masked).
        if let Some(shown) = seen.arguments {
            let bytes = shown.to_string().len();
            if bytes <= MAX_AUDITED_ARGUMENTS {
                detail["arguments"] = shown;
            } else {
                detail["arguments_omitted_bytes"] = json!(bytes);
            }
        }
        if let Some(upstream) = seen.upstream {
            detail["upstream"] = json!(upstream);
        }
        // A token derived from the task's (attenuated by its holder): its whole chain.
        if task.token.revocation_ids.len() > 1 {
            detail["chain"] = json!(task.token.revocation_ids);
            if task.runtime.first_use_of(task.token.own_id()) {
                detail["blocks"] = json!(block_sources(&task.token));
            }
        }
        self.audit
            .record(AuditEvent {
                kind,
                actor: format!("agent:{}", task.runtime.agent),
                task_id: Some(task.runtime.task_id.clone()),
                detail,
            })
            .await;
        outcome
    }

    async fn checked_call(
        &self,
        task: &TaskContext,
        tool_name: &str,
        what: &Use,
        args: &Value,
        delivery: Delivery<'_>,
        seen: &mut Seen,
    ) -> Result<CallOutcome, ApiError> {
        let Delivery {
            approval,
            via,
            round,
        } = delivery;
        let tool = self.lookup(tool_name, what)?;
        let Some(arguments) = args.as_object() else {
            return Err(ApiError::BadRequest(
                "the arguments must be a JSON object".into(),
            ));
        };
        if depth(args) > MAX_DEPTH {
            return Err(ApiError::BadRequest(format!(
                "the arguments nest deeper than {MAX_DEPTH} levels"
            )));
        }
        if value_count(arguments) > MAX_VALUES {
            return Err(ApiError::BadRequest(format!(
                "the arguments hold more than {MAX_VALUES} values"
            )));
        }
        // Masked once the arguments are known to be of a bounded size.
        let (shown, secrets) =
            crate::policy::write_only::masked_with_secrets(&tool.input_schema, args);
        seen.arguments = Some(shown);
        seen.secrets = secrets;
        let slot = self
            .tasks
            .take_slot(
                &task.runtime,
                &task.token.revocation_ids,
                &task.token.budget_blocks,
            )
            .await?;
        let now_secs = self.clock.now_ms().div_euclid(1000);
        let decision = if task.token.costly {
            // Owned copies only for the blocking pool; the plain path borrows.
            let token = task.token.clone();
            let tool = tool_name.to_string();
            let args = arguments.clone();
            let prefix_calls = slot.prefix_calls.clone();
            let task_calls = slot.task_calls;
            let what = what.clone();
            off_the_reactor_if_costly(&task.token, move || {
                authorize_call(
                    &token.biscuit,
                    &CallFacts {
                        tool: &tool,
                        args: &args,
                        now_secs,
                        task_calls,
                        prefix_calls: &prefix_calls,
                        budget_blocks: &token.budget_blocks,
                        subject: what.subject(),
                    },
                )
            })
            .await?
        } else {
            authorize_call(
                &task.token.biscuit,
                &CallFacts {
                    tool: tool_name,
                    args: arguments,
                    now_secs,
                    task_calls: slot.task_calls,
                    prefix_calls: &slot.prefix_calls,
                    budget_blocks: &task.token.budget_blocks,
                    subject: what.subject(),
                },
            )
        };
        decision.map_err(|denial| match denial {
            Denial::Capability(why) => ApiError::CapabilityDenied(why),
            Denial::Budget(why) => ApiError::BudgetExhausted(why),
        })?;
        let violations = crate::policy::input_schema::violations(&tool.validator, args);
        if !violations.is_empty() {
            return Err(ApiError::InvalidArguments {
                message: format!(
                    "the arguments do not match the input schema of {tool_name:?} ({} violations)",
                    violations.len()
                ),
                violations,
            });
        }
        if let Some(max) = task.runtime.max_calls
            && slot.task_calls >= max
        {
            return Err(ApiError::BudgetExhausted(format!(
                "task {} has used all {max} calls its grant allows",
                task.runtime.task_id
            )));
        }
        // The upstream gets the token narrowed to this tool and a short window, never the
        // agent's own token: a captured header is nearly worthless. Minted before an
        // approval is spent, so a token that cannot be narrowed spends nothing.
        let upstream = Upstream::of(&tool);
        let capability = if upstream.carries_capability() {
            Some(self.capability_for(task, tool_name)?)
        } else {
            None
        };
        // The person's provider token (or the deployment's), before an approval is spent:
        // a call whose person must connect an account first spends nothing.
        let injection = self
            .connections
            .for_call(
                &task.runtime.task_id,
                task.token.user.as_deref(),
                &task.token.tools,
                &tool,
            )
            .await?;
        if let Some(injection) = &injection {
            seen.connection.clone_from(&injection.connection_id);
        }
        let authorization = injection.as_ref().map(|i| i.authorization.clone());
        if tool.approval == ToolApproval::PerCall {
            let task_id = &task.runtime.task_id;
            let bound = approval_binding(args, round);
            match approval {
                // Spent only now, after every other check passed; the slot is kept for the call.
                Some(id) => match self
                    .approvals
                    .spend_for_call(id, task_id, tool_name, &bound)
                    .await?
                {
                    CallApproval::Granted => {}
                    CallApproval::Pending(id) => return Ok(CallOutcome::PendingApproval(id)),
                },
                None => {
                    // Not a call yet: the slot is given back when it drops.
                    self.approvals
                        .check_pending_cap(&task.runtime.agent)
                        .await?;
                    let record = self
                        .store
                        .get_task(task_id)
                        .await
                        .map_err(ApiError::internal)?
                        .ok_or_else(|| ApiError::NotFound(format!("no task {task_id}")))?;
                    let filed = self
                        .approvals
                        .request_call(&record, tool_name, args, &bound)
                        .await?;
                    return Ok(CallOutcome::PendingApproval(filed.approval_id));
                }
            }
        }
        // A revoke that answered while this call was being checked must stop it here.
        self.tasks.check_active(&task.runtime).await?;
        let started = Instant::now();
        let forwarded = self
            .upstreams
            .call(&tool, args, capability, authorization, via, round)
            .await;
        seen.upstream = Some(match &forwarded {
            Ok(Answer::Parsed(value)) if value.get("isError") == Some(&Value::Bool(true)) => {
                "tool_error"
            }
            Ok(_) => "ok",
            Err(failure) => failure.kind(),
        });
        match forwarded {
            Ok(result) => {
                // The upstream did this round's work, whatever it answered.
                slot.commit(self.clock.now_ms());
                tracing::debug!(
                    tool = tool_name,
                    micros = started.elapsed().as_micros() as u64,
                    "call forwarded"
                );
                match result {
                    Answer::Asks(asks) if round.is_some() => Ok(CallOutcome::InputRequired(asks)),
                    // Only a stateless MCP client can be asked in rounds.
                    Answer::Asks(_) => Err(ApiError::UpstreamError(format!(
                        "tool {tool_name:?} asked its client for input (2026-07-28 input_required), which only an MCP client of that revision can give"
                    ))),
                    result => Ok(CallOutcome::Done(result)),
                }
            }
            Err(failure) => {
                if !failure.not_performed() {
                    slot.commit(self.clock.now_ms());
                }
                if let (UpstreamFailure::Unauthorized { .. }, Some(injection)) =
                    (&failure, &injection)
                {
                    // Revoked early at the provider, perhaps: the next call gets a new one.
                    self.connections.refused(injection).await;
                }
                Err(match failure {
                    UpstreamFailure::Timeout { .. } => {
                        ApiError::UpstreamTimeout(failure.to_string())
                    }
                    _ => ApiError::UpstreamError(failure.to_string()),
                })
            }
        }
    }

    /// The `Leash-Capability` for a call: the presented token plus a block signed with the
    /// forwarding key (third party) that marks it forwarded and narrows it to `tool` and a
    /// window of `capability_ttl`. Minting one costs two signatures (the forwarding key's
    /// and the block's), so a capability minted for the same token and tool is reused while
    /// at least half of its window remains.
    fn capability_for(&self, task: &TaskContext, tool: &str) -> Result<String, ApiError> {
        let now = self.clock.now_ms().div_euclid(1000);
        let ttl = self.capability_ttl.as_secs() as i64;
        let key = (task.token.own_id().to_string(), tool.to_string());
        if let Some((text, until)) = self.capabilities.get(&key)
            && until - now >= ttl / 2
        {
            return Ok(text);
        }
        let until = now + ttl;
        let text =
        leash_sdk::capability::per_call(&task.token.biscuit, tool, until, self.forwarding.pair())
            .map_err(|e| match e {
                biscuit_auth::error::Token::AppendOnSealed
                | biscuit_auth::error::Token::AlreadySealed => ApiError::BadRequest(
                    "a sealed token cannot be forwarded: Leash narrows each call's capability by appending a block; present the token unsealed".into(),
                ),
                other => ApiError::internal(anyhow::anyhow!(
                    "attenuating the per-call capability: {other}"
                )),
            })?;
        self.capabilities.insert(key, (text.clone(), until));
        Ok(text)
    }

    /// A usable name of the kind `what` uses; unknown and malformed names, and names of
    /// another kind, are all `unknown_tool`; an upstream tool or prompt whose changed
    /// definition awaits an approver is `policy_denied`.
    pub fn lookup(&self, name: &str, what: &Use) -> Result<Arc<ToolDef>, ApiError> {
        let noun = what.noun();
        if !is_tool_name(name) {
            return Err(ApiError::UnknownTool(format!(
                "{name:?} is not a valid {noun} name"
            )));
        }
        match self.catalog.lookup(name) {
            Lookup::Ready(tool) if what.fits(&tool) => Ok(tool),
            Lookup::Withheld => Err(ApiError::PolicyDenied(format!(
                "the definition of {name:?} changed upstream; it is withheld until an approver accepts it"
            ))),
            _ => Err(ApiError::UnknownTool(format!("no {noun} named {name:?}"))),
        }
    }

    /// The tools this token may call: its authority tools that exist, minus those its own
    /// checks rule out whatever the arguments (checks about `arg` are left to call time).
    pub async fn callable_tools(&self, task: &TaskContext) -> Result<Vec<Arc<ToolDef>>, ApiError> {
        let candidates = task
            .token
            .tools
            .iter()
            .filter_map(|name| self.catalog.get(name))
            .filter(|tool| Use::Tool.fits(tool))
            .map(|tool| (tool.name.clone(), Use::Tool, tool))
            .collect();
        self.listable(task, candidates).await
    }

    /// The items this token may see listed: each is `(name, use, item)`, kept when the
    /// token holds `name` and its own checks do not rule the use out whatever the
    /// arguments (checks about `arg` and budgets are left to call time).
    pub async fn listable<T: Send + 'static>(
        &self,
        task: &TaskContext,
        candidates: Vec<(String, Use, T)>,
    ) -> Result<Vec<T>, ApiError> {
        let now_secs = self.clock.now_ms().div_euclid(1000);
        let held: Vec<(String, Use, T)> = candidates
            .into_iter()
            .filter(|(name, _, _)| task.token.tools.iter().any(|t| t == name))
            .collect();
        let token = task.token.clone();
        let task_calls = task.runtime.calls();
        off_the_reactor_if_costly(&task.token, move || {
            let no_args = serde_json::Map::new();
            let no_calls = vec![0; token.revocation_ids.len()];
            // One time budget for the whole list: a long list of a costly token is cut
            // short (what was judged is shown), never a stall.
            let deadline = Instant::now() + LIST_TIME;
            let mut shown = Vec::new();
            for (name, what, item) in held {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        task = %token_task(&token),
                        "a list took longer than its time budget to check; the rest is left out"
                    );
                    break;
                }
                // A read's one argument is its URI, known here: judged, not excused.
                let uri_args = match &what {
                    Use::Resource(uri) => Some(uri_arguments(uri)),
                    _ => None,
                };
                let facts = CallFacts {
                    tool: &name,
                    args: uri_args.as_ref().unwrap_or(&no_args),
                    now_secs,
                    task_calls,
                    prefix_calls: &no_calls,
                    budget_blocks: &token.budget_blocks,
                    subject: what.subject(),
                };
                if listable(&token.biscuit, &facts, uri_args.is_some()) {
                    shown.push(item);
                }
            }
            shown
        })
        .await
    }

    /// Whether this token may use `name` as `what` at all (budgets and, for a prompt,
    /// checks about its arguments aside): for requests that are not calls (completions,
    /// subscriptions), audited as `event` (allowed or denied). A name whose every use
    /// needs a per-call approval is refused: what such a request reveals is the
    /// approver's to allow. Rate-limited like a call, and refused while the audit log
    /// cannot be written.
    pub async fn may_use(
        &self,
        task: &TaskContext,
        name: &str,
        what: Use,
        event: &'static str,
    ) -> Result<Arc<ToolDef>, ApiError> {
        let decision = self.may_use_unaudited(task, name, &what).await;
        let mut detail =
            json!({ "tool": name, "token": task.token.own_id(), "allowed": decision.is_ok() });
        if let Use::Resource(uri) = &what {
            detail["uri"] = json!(crate::text::shown(uri, 512));
        }
        if let Err(err) = &decision {
            detail["code"] = json!(err.status_and_code().1);
        }
        self.audit
            .record(AuditEvent {
                kind: event,
                actor: format!("agent:{}", task.runtime.agent),
                task_id: Some(task.runtime.task_id.clone()),
                detail,
            })
            .await;
        decision
    }

    async fn may_use_unaudited(
        &self,
        task: &TaskContext,
        name: &str,
        what: &Use,
    ) -> Result<Arc<ToolDef>, ApiError> {
        self.rate_limiter.check(&task.runtime.agent)?;
        self.audit.check_writable()?;
        if let Use::Resource(uri) = what {
            check_uri(uri)?;
        }
        let tool = self.lookup(name, what)?;
        if tool.approval == ToolApproval::PerCall {
            return Err(ApiError::PolicyDenied(format!(
                "each use of {name:?} needs a human approval: this request is not offered for it"
            )));
        }
        let shown = self
            .listable(task, vec![(tool.name.clone(), what.clone(), ())])
            .await?;
        if shown.is_empty() {
            return Err(ApiError::CapabilityDenied(format!(
                "this token may not use {name:?}"
            )));
        }
        Ok(tool)
    }
}

/// What the caller adds to a checked call besides its name and arguments.
#[derive(Clone, Copy, Default)]
pub struct Delivery<'a> {
    /// The `Leash-Approval` it presents.
    pub approval: Option<&'a str>,
    /// An MCP client's session and request: what the upstream sends during the call is
    /// relayed to that client.
    pub via: Option<(&'a Relay, &'a Origin)>,
    /// A stateless MCP client that can be asked for input, and its answers to the round
    /// before; without it, an upstream that asks fails the call.
    pub round: Option<&'a InputRound>,
}

/// How long checking one list may take, whatever the token.
const LIST_TIME: std::time::Duration = std::time::Duration::from_secs(1);

use crate::upstream::mcp::MAX_URI_BYTES;

fn token_task(token: &VerifiedToken) -> &str {
    match &token.principal {
        Principal::Task { task_id, .. } => task_id,
        _ => "",
    }
}

/// The arguments of a read of `uri`.
fn uri_arguments(uri: &str) -> serde_json::Map<String, Value> {
    let mut args = serde_json::Map::new();
    args.insert("uri".into(), Value::String(uri.to_string()));
    args
}

/// Refuses a resource URI that a prefix check (`$u.starts_with("file:///docs/")`) could
/// not judge: too long, with control characters or a backslash, with a dot segment
/// (`/../`, `/./`), or with a percent-encoded dot, slash or backslash that an upstream
/// might decode into one. An upstream that resolves paths could otherwise serve
/// `file:///docs/../secret` to a token narrowed to the docs.
pub fn check_uri(uri: &str) -> Result<(), ApiError> {
    if uri.is_empty() || uri.len() > MAX_URI_BYTES {
        return Err(ApiError::BadRequest(format!(
            "a resource URI has 1 to {MAX_URI_BYTES} bytes"
        )));
    }
    let refused = |why: &str| {
        Err(ApiError::BadRequest(format!(
            "resource URI refused: {why} (a prefix check could not judge it)"
        )))
    };
    if uri.chars().any(|c| c.is_control() || c == '\\') {
        return refused("it holds a control character or a backslash");
    }
    let lower = uri.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return refused("it percent-encodes a dot, a slash, a backslash or NUL");
    }
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    if path
        .split('/')
        .skip(1)
        .any(|segment| segment == "." || segment == "..")
    {
        return refused("it has a dot segment");
    }
    Ok(())
}

/// What a checked call uses: a tool, a prompt, or a resource (by URI) of the server
/// whose resources the name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// `tools/call`, `POST /v1/tools/…/call`.
    Tool,
    /// `prompts/get`.
    Prompt,
    /// `resources/read` of this URI.
    Resource(String),
}

impl Use {
    /// The fact the call adds for it.
    pub fn subject(&self) -> Subject<'_> {
        match self {
            Use::Tool => Subject::Tool,
            Use::Prompt => Subject::Prompt,
            Use::Resource(uri) => Subject::Resource(uri),
        }
    }

    /// Whether `tool` is a name of this kind.
    pub fn fits(&self, tool: &ToolDef) -> bool {
        matches!(
            (self, tool.mcp.as_ref().map(|t| &t.kind)),
            (Use::Tool, None | Some(McpKind::Tool(_)))
                | (Use::Prompt, Some(McpKind::Prompt(_)))
                | (Use::Resource(_), Some(McpKind::Resources))
        )
    }

    /// What kind of use it is: `tool`, `prompt` or `resource`.
    pub fn noun(&self) -> &'static str {
        match self {
            Use::Tool => "tool",
            Use::Prompt => "prompt",
            Use::Resource(_) => "resource",
        }
    }
}

/// Runs `work` (an authorizer run) on the blocking pool when the token's Datalog may be
/// costly ([`VerifiedToken::costly`]: blocks a holder appended, an agent's own regex
/// checks): a heavy check may take up to the authorizer's time limit, which must not
/// stall the async workers every other request runs on. Plain tokens run inline.
async fn off_the_reactor_if_costly<T: Send + 'static>(
    token: &VerifiedToken,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if !token.costly {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("the authorizer task failed: {e}")))
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;
