//! Tool endpoints for task-token holders: list what may be called, and call it.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::extract::{PathParam, RawBody, parse_json};
use crate::caller::task_token;
use crate::calls::{active_task, call_tool, callable_tools};
use crate::error::ApiResult;
use crate::policy::ToolApproval;
use crate::server::AppState;

/// `GET /v1/tools`.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let token = task_token(&state, &headers)?;
    let task = active_task(&state, token).await?;
    let tools: Vec<Value> = callable_tools(&state, &task)
        .iter()
        .map(|tool| {
            json!({
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.input_schema,
                "approval": match tool.approval { ToolApproval::None => "none", ToolApproval::PerCall => "per_call" },
            })
        })
        .collect();
    Ok(Json(json!({ "tools": tools })))
}

/// `POST /v1/tools/{tool}/call`: the body is the arguments object. The token is checked
/// before the body is parsed, so an unauthenticated caller learns nothing from it.
pub async fn call(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParam(tool): PathParam,
    RawBody(body): RawBody,
) -> ApiResult<Json<Value>> {
    let token = task_token(&state, &headers)?;
    let args: Value = parse_json(&headers, &body, false)?;
    let result = call_tool(&state, token, &tool, args).await?;
    Ok(Json(json!({ "result": result })))
}
