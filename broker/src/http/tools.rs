//! Tool endpoints for task-token holders: list what may be called, and call it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use leash_sdk::protocol::{CallResult, PendingApproval, ToolInfo, ToolList};
use serde::Serialize;
use serde_json::Value;

use super::extract::{PathParam, RawBody, parse_json};
use crate::config::ServeConfig;
use crate::error::{ApiError, ApiResult};
use crate::http::auth::TaskToken;
use crate::mcp::guard::public_url;
use crate::policy::ToolApproval;
use crate::tasks::calls::{CallOutcome, Calls};
use crate::upstream::client::Answer;

/// `GET /v1/tools`.
#[utoipa::path(get, path = "/v1/tools", tag = "tools", security(("task" = [])),
    responses((status = 200, description = "The tools this token may call", body = ToolList)))]
pub async fn list(
    TaskToken(token): TaskToken,
    State(calls): State<Arc<Calls>>,
) -> ApiResult<Json<ToolList>> {
    let task = calls.active_task(token).await?;
    let tools = calls
        .callable_tools(&task)
        .await?
        .iter()
        .map(|tool| ToolInfo {
            name: tool.name.clone(),
            description: tool.description.clone(),
            input_schema: tool.input_schema.clone(),
            approval: match tool.approval {
                ToolApproval::None => "none",
                ToolApproval::PerCall => "per_call",
            }
            .into(),
        })
        .collect();
    Ok(Json(ToolList { tools }))
}

/// A forwarded call's answer: `{"result": …}` ([`CallResult`]).
#[derive(Serialize)]
struct Answered {
    result: Answer,
}

/// `POST /v1/tools/{tool}/call`: the body is the arguments object. The token is checked
/// before the body is parsed, so an unauthenticated caller learns nothing from it.
/// A `per_call` tool answers 202 with an approval id; repeat the call with
/// `Leash-Approval: <id>` once it is approved.
#[utoipa::path(post, path = "/v1/tools/{tool}/call", tag = "tools",
    params(
        ("tool" = String, Path, description = "The tool's name"),
        ("Leash-Approval" = Option<String>, Header, description = "The approved per-call approval's id, when repeating a call"),
    ),
    request_body(content = Object, description = "The tool's arguments (a JSON object, checked against its input schema)"),
    security(("task" = [])),
    responses(
        (status = 200, description = "The upstream's answer", body = CallResult),
        (status = 202, description = "The call waits for a per-call approval", body = PendingApproval),
        (status = 403, description = "The capability or policy refuses the call, or the `Leash-Approval` is for another task, tool or arguments, already used, denied or expired", body = leash_sdk::protocol::ErrorBody),
        (status = 422, description = "The arguments break the tool's input schema", body = leash_sdk::protocol::ErrorBody),
        (status = 429, description = "A call budget or the agent's rate is used up", body = leash_sdk::protocol::ErrorBody),
        (status = 502, description = "The upstream failed or answered something unusable", body = leash_sdk::protocol::ErrorBody),
        (status = 504, description = "The upstream did not answer in time", body = leash_sdk::protocol::ErrorBody),
    ))]
pub async fn call(
    TaskToken(token): TaskToken,
    State(calls): State<Arc<Calls>>,
    State(config): State<Arc<ServeConfig>>,
    headers: HeaderMap,
    PathParam(tool): PathParam,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let args: Value = parse_json(&headers, &body, false)?;
    let approval = match headers.get("leash-approval") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest("Leash-Approval is not ASCII".into()))?
                .trim()
                .to_string(),
        ),
    };
    let outcome = calls
        .call_tool(token, &tool, args, approval.as_deref())
        .await
        .map_err(|err| match public_url(&config, &headers) {
            // `connection_required` names where to connect, as an absolute URL.
            Ok(base) => err.with_base(&base),
            Err(_) => err,
        })?;
    match outcome {
        // `CallResult`'s shape, with the upstream's answer written out as it came.
        CallOutcome::Done(result) => Ok(Json(Answered { result }).into_response()),
        CallOutcome::PendingApproval(approval_id) => Ok((
            StatusCode::ACCEPTED,
            Json(PendingApproval {
                approval_id,
                state: "pending_approval".into(),
            }),
        )
            .into_response()),
        // Not asked without a stateless MCP client behind the call; refused if it were.
        CallOutcome::InputRequired(_) => Err(ApiError::UpstreamError(format!(
            "tool {tool:?} asked its client for input, which only an MCP client can give"
        ))),
    }
}
