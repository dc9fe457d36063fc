//! The checked tool call, in the order of the contract:
//! verify token → revocation and task state → tool exists → authorizer (with counters)
//! → JSON Schema → the grant's budget → forward upstream → `{"result": …}`.
//!
//! Every step after verification refuses without side effects: a refused call gives
//! its counter slot back, and so does a call the upstream never performed.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::app::AppState;
use crate::audit::log::AuditEvent;
use crate::error::ApiError;
use crate::ids::is_tool_name;
use crate::policy::{ToolApproval, ToolDef};
use crate::store::ApprovalKind;
use crate::tasks::approvals::{CallApproval, request, spend_for_call};
use crate::tasks::runtime::TaskRuntime;
use crate::tokens::authorize::{CallFacts, Denial, authorize_call, listable};
use crate::tokens::verify::{Principal, VerifiedToken};
use crate::upstream::catalog::Lookup;
use crate::upstream::client::UpstreamFailure;
use leash_sdk::facts::{MAX_DEPTH, depth};

/// A task token resolved to its live task.
pub struct TaskContext {
    /// The verified token.
    pub token: Arc<VerifiedToken>,
    /// The task's runtime.
    pub runtime: Arc<TaskRuntime>,
}

/// Resolves a task token to its task and refuses unless the task is active.
pub async fn active_task(
    state: &AppState,
    token: Arc<VerifiedToken>,
) -> Result<TaskContext, ApiError> {
    let Principal::Task { task_id, .. } = &token.principal else {
        return Err(ApiError::TokenInvalid("not a task token".into()));
    };
    // A replica that may have missed a revocation admits nothing.
    state.health.check()?;
    let runtime =
        state.tasks.runtime(task_id).await?.ok_or_else(|| {
            ApiError::TokenInvalid(format!("the token names unknown task {task_id}"))
        })?;
    state.tasks.check_active(&runtime).await?;
    Ok(TaskContext { token, runtime })
}

/// How a checked call ended.
pub enum CallOutcome {
    /// Forwarded; the upstream's JSON answer.
    Done(Value),
    /// The tool needs a human approval first: repeat the call with this id in
    /// `Leash-Approval` once it is approved.
    PendingApproval(String),
}

/// Makes one checked call. `approval` is the `Leash-Approval` header, if any.
pub async fn call_tool(
    state: &AppState,
    token: Arc<VerifiedToken>,
    tool_name: &str,
    args: Value,
    approval: Option<&str>,
) -> Result<CallOutcome, ApiError> {
    // Integral numbers become integers once, here: the checks, the schema, the approval
    // binding and the upstream all see the same value.
    let mut args = args;
    leash_sdk::facts::normalize_numbers(&mut args);
    if let Principal::Task { agent, .. } = &token.principal {
        state.rate_limiter.check(agent)?;
    }
    let task = active_task(state, token).await?;
    // Fail closed: no call is admitted while its audit record could not be kept.
    state.audit.check_writable()?;
    let started = std::time::Instant::now();
    let outcome = checked_call(state, &task, tool_name, &args, approval).await;
    let (tool_label, outcome_label, took) = match &outcome {
        Ok(CallOutcome::Done(_)) => (tool_name, "allowed", Some(started.elapsed())),
        Ok(CallOutcome::PendingApproval(_)) => (tool_name, "held", None),
        // Only catalog names become labels: callers cannot invent series.
        Err(err @ ApiError::UnknownTool(_)) => ("unknown", err.status_and_code().1, None),
        Err(err) => (tool_name, err.status_and_code().1, None),
    };
    state.metrics.call(tool_label, outcome_label, took);
    let (kind, detail) = match &outcome {
        Ok(CallOutcome::PendingApproval(id)) => (
            "call.held",
            json!({ "tool": tool_name, "token": task.token.own_id(), "approval_id": id }),
        ),
        Ok(CallOutcome::Done(_)) => (
            "call.allowed",
            json!({ "tool": tool_name, "token": task.token.own_id() }),
        ),
        Err(err) => {
            let (status, code) = err.status_and_code();
            (
                "call.denied",
                json!({ "tool": tool_name, "token": task.token.own_id(), "status": status.as_u16(), "code": code, "reason": err.to_string() }),
            )
        }
    };
    state
        .audit
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
    state: &AppState,
    task: &TaskContext,
    tool_name: &str,
    args: &Value,
    approval: Option<&str>,
) -> Result<CallOutcome, ApiError> {
    let tool = lookup_tool(state, tool_name)?;
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
    let slot = state
        .tasks
        .take_slot(
            &task.runtime,
            &task.token.revocation_ids,
            &task.token.budget_blocks,
        )
        .await?;
    let now_secs = state.clock.now_ms().div_euclid(1000);
    let decision = if task.token.costly {
        // Owned copies only for the blocking pool; the plain path borrows.
        let token = task.token.clone();
        let tool = tool_name.to_string();
        let args = arguments.clone();
        let prefix_calls = slot.prefix_calls.clone();
        let task_calls = slot.task_calls;
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
    let capability = match tool.mcp {
        Some(_) => String::new(),
        None => capability_for(state, task, tool_name)?,
    };
    if tool.approval == ToolApproval::PerCall {
        let task_id = &task.runtime.task_id;
        match approval {
            // Spent only now, after every other check passed; the slot is kept for the call.
            Some(id) => match spend_for_call(state, id, task_id, tool_name, args).await? {
                CallApproval::Granted => {}
                CallApproval::Pending(id) => return Ok(CallOutcome::PendingApproval(id)),
            },
            None => {
                // Not a call yet: the slot is given back when it drops.
                crate::tasks::approvals::check_pending_cap(state, &task.runtime.agent).await?;
                let record = state
                    .store
                    .get_task(task_id)
                    .await
                    .map_err(ApiError::internal)?
                    .ok_or_else(|| ApiError::NotFound(format!("no task {task_id}")))?;
                let filed = request(
                    state,
                    ApprovalKind::Call,
                    &record,
                    Some((tool_name, args)),
                    None,
                )
                .await?;
                return Ok(CallOutcome::PendingApproval(filed.approval_id));
            }
        }
    }
    // A revoke that answered while this call was being checked must stop it here.
    state.tasks.check_active(&task.runtime).await?;
    let started = Instant::now();
    let forwarded = match &tool.mcp {
        Some((server, upstream_tool)) => state.upstreams.call(server, upstream_tool, args).await,
        None => {
            state
                .proxy
                .forward(
                    &tool,
                    args,
                    &[(leash_sdk::protocol::CAPABILITY_HEADER, capability)],
                )
                .await
        }
    };
    match forwarded {
        Ok(result) => {
            slot.commit(state.clock.now_ms());
            tracing::debug!(
                tool = tool_name,
                micros = started.elapsed().as_micros() as u64,
                "call forwarded"
            );
            Ok(CallOutcome::Done(result))
        }
        Err(failure) => {
            if !failure.not_performed() {
                slot.commit(state.clock.now_ms());
            }
            Err(match failure {
                UpstreamFailure::Timeout { .. } => ApiError::UpstreamTimeout(failure.to_string()),
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
fn capability_for(state: &AppState, task: &TaskContext, tool: &str) -> Result<String, ApiError> {
    let now = state.clock.now_ms().div_euclid(1000);
    let ttl = state.config.capability_ttl.as_secs() as i64;
    let key = (task.token.own_id().to_string(), tool.to_string());
    if let Some((text, until)) = state.capabilities.get(&key)
        && until - now >= ttl / 2
    {
        return Ok(text);
    }
    let until = now + ttl;
    let text =
        leash_sdk::capability::per_call(&task.token.biscuit, tool, until, state.forwarding.pair())
            .map_err(|e| match e {
                biscuit_auth::error::Token::AppendOnSealed
                | biscuit_auth::error::Token::AlreadySealed => ApiError::BadRequest(
                    "a sealed token cannot be forwarded: Leash narrows each call's capability by appending a block; present the token unsealed".into(),
                ),
                other => ApiError::internal(anyhow::anyhow!(
                    "attenuating the per-call capability: {other}"
                )),
            })?;
    state.capabilities.insert(key, (text.clone(), until));
    Ok(text)
}

/// A callable tool by name; unknown and malformed names are both `unknown_tool`; an
/// upstream tool whose changed definition awaits an approver is `policy_denied`.
pub fn lookup_tool(state: &AppState, name: &str) -> Result<Arc<ToolDef>, ApiError> {
    if !is_tool_name(name) {
        return Err(ApiError::UnknownTool(format!(
            "{name:?} is not a valid tool name"
        )));
    }
    match state.catalog.lookup(name) {
        Lookup::Ready(tool) => Ok(tool),
        Lookup::Withheld => Err(ApiError::PolicyDenied(format!(
            "the definition of {name:?} changed upstream; it is withheld until an approver accepts it"
        ))),
        Lookup::Missing => Err(ApiError::UnknownTool(format!("no tool named {name:?}"))),
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

/// The tools this token may call: its authority tools that exist, minus those its own
/// checks rule out whatever the arguments (checks about `arg` are left to call time).
pub async fn callable_tools(
    state: &AppState,
    task: &TaskContext,
) -> Result<Vec<Arc<ToolDef>>, ApiError> {
    let now_secs = state.clock.now_ms().div_euclid(1000);
    let candidates: Vec<Arc<ToolDef>> = task
        .token
        .tools
        .iter()
        .filter_map(|name| state.catalog.get(name))
        .collect();
    let token = task.token.clone();
    let task_calls = task.runtime.calls();
    off_the_reactor_if_costly(&task.token, move || {
        let no_args = serde_json::Map::new();
        let no_calls = vec![0; token.revocation_ids.len()];
        candidates
            .into_iter()
            .filter(|tool| {
                let facts = CallFacts {
                    tool: &tool.name,
                    args: &no_args,
                    now_secs,
                    task_calls,
                    prefix_calls: &no_calls,
                    budget_blocks: &token.budget_blocks,
                };
                listable(&token.biscuit, &facts)
            })
            .collect()
    })
    .await
}
