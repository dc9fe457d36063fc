//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! It is generated from the code: every handler carries a `#[utoipa::path]` attribute,
//! request bodies and query strings are the handlers' own types, and the response
//! bodies (built with `json!` in the handlers) are described by the types below.
//! The schemathesis test (`tests/e2e/openapi.rs`) checks every answer of a running
//! broker against this document, for each role.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use leash_sdk::protocol::{ErrorBody, ErrorCode, ErrorDetail, KeySet, PublishedKey};
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Response as DocResponse, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{admin, approvals, feeds, tasks, tools, ui};

/// The document's root.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Leash",
        description = "A tool-access broker for AI agents: task-bound Biscuit capabilities, checked tool calls, revocation in milliseconds. Errors are always `{\"error\": {\"code\", \"message\"}}` (see DESIGN.md). The MCP gateway (`POST /mcp`) speaks JSON-RPC as the MCP specification defines it and is not described here."
    ),
    paths(
        feeds::healthz,
        feeds::keys,
        feeds::revocations,
        feeds::audit,
        feeds::audit_checkpoints,
        feeds::metrics,
        admin::agent_credential,
        admin::approver_credential,
        admin::revoke_agent,
        admin::revoke_approver,
        admin::revoke_credential,
        admin::revoke_token,
        tasks::create,
        tasks::list,
        tasks::show,
        tasks::renew,
        tasks::complete,
        tasks::revoke,
        tools::list,
        tools::call,
        approvals::list,
        approvals::approve,
        approvals::deny,
        approvals::events,
        ui::page,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, KeySet, PublishedKey)),
    modifiers(&SecuritySchemes, &CommonErrors),
    tags(
        (name = "feeds", description = "Public feeds and the audit log"),
        (name = "admin", description = "Credentials and kill switches"),
        (name = "tasks", description = "Task lifecycle"),
        (name = "tools", description = "Tool listing and checked calls"),
        (name = "approvals", description = "Human decisions"),
    )
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot render the document: {e}\"}}"))
});

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Value))
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The four kinds of bearer credential (DESIGN.md, "Credentials").
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "admin",
                "The admin token (LEASH_ADMIN_TOKEN or data/admin_token).",
            ),
            ("approver", "An approver credential minted by the admin."),
            ("agent", "An agent credential minted by the admin."),
            ("task", "A task token (or a token attenuated from it)."),
            (
                "metrics",
                "The scrape-only LEASH_METRICS_TOKEN (GET /metrics only).",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// Adds the errors every operation can answer, so no path lists them by hand:
/// 400, 431 and 503 everywhere; 408 and 413 with a request body; 401, 403 and 429 (the
/// invalid-credential throttle) with a credential; 404 with a path parameter. Errors
/// particular to an operation are on its path.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_param = path.contains('{');
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                add_common_errors(operation, has_path_param);
            }
        }
    }
}

fn add_common_errors(operation: &mut Operation, has_path_param: bool) {
    let secured = operation
        .security
        .as_ref()
        .is_some_and(|list| !list.is_empty());
    let mut statuses = vec![
        (
            "400",
            "Malformed request: bad JSON, content type, path or query",
        ),
        (
            "431",
            "The request line and headers are larger than allowed",
        ),
        (
            "503",
            "The broker cannot decide safely now (it fails closed)",
        ),
    ];
    if operation.request_body.is_some() {
        statuses.push(("408", "The request body did not arrive in time"));
        statuses.push(("413", "The request body is larger than allowed"));
    }
    if secured {
        statuses.push((
            "401",
            "No credential, or a forged, expired, revoked or wrong-kind one",
        ));
        statuses.push(("403", "The caller's role or capability does not allow this"));
        statuses.push((
            "429",
            "Too many invalid credentials from this address (see Retry-After)",
        ));
    }
    if has_path_param {
        statuses.push(("404", "No such resource"));
    }
    for (status, description) in statuses {
        if !operation.responses.responses.contains_key(status) {
            operation
                .responses
                .responses
                .insert(status.to_string(), error_response(description));
        }
    }
}

/// A response whose body is the API's error object.
pub fn error_response(description: &str) -> RefOr<DocResponse> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build(),
    )
}

// ---- Response bodies (built with `json!` in the handlers) ----

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// One entry of the revocation feed.
#[derive(ToSchema)]
pub struct RevocationItem {
    /// Position in the feed (increasing).
    pub seq: i64,
    /// Hex revocation id: every token with a block of this id is dead.
    pub revocation_id: String,
    /// The task it belonged to, if any.
    pub task_id: Option<String>,
    /// Why: `completed`, `revoked`, `expired`, `token`, …
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// When every token with this id is past its own window (RFC 3339): a verifier may
    /// forget the id a margin after that. Null: keep it for ever.
    pub expires_at: Option<String>,
}

/// `GET /v1/revocations`.
#[derive(ToSchema)]
pub struct RevocationFeed {
    /// Entries after the asked position (at most 1000).
    pub revocations: Vec<RevocationItem>,
    /// The position to ask after next time.
    pub next: i64,
}

/// One audit event.
#[derive(ToSchema)]
pub struct AuditItem {
    /// Position in the chain.
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// What happened, e.g. `task.created`, `call.allowed`.
    pub kind: String,
    /// Who did it: `agent:…`, `approver:…`, `admin`, `broker`.
    pub actor: String,
    /// The task concerned, if any.
    pub task_id: Option<String>,
    /// Event details (never a token or secret).
    pub detail: Value,
    /// Hash of the previous event (hex).
    pub prev_hash: String,
    /// SHA-256 over this event and `prev_hash` (hex).
    pub hash: String,
}

/// `GET /v1/audit`.
#[derive(ToSchema)]
pub struct AuditPage {
    /// Events after the asked position (at most 1000).
    pub events: Vec<AuditItem>,
    /// The position to ask after next time.
    pub next: i64,
}

/// One signed checkpoint of the audit chain.
#[derive(ToSchema)]
pub struct CheckpointItem {
    /// The seq of the audit event it covers (and every one before it).
    pub seq: i64,
    /// That event's hash (hex).
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub at: String,
    /// The root key id that signed it (see `/.well-known/leash/keys`).
    pub kid: u32,
    /// Ed25519 signature (base64url, no padding) over the UTF-8 text
    /// `leash-audit-checkpoint-v1\n{seq}\n{hash}\n{at}`.
    pub signature: String,
}

/// `GET /v1/audit/checkpoints`.
#[derive(ToSchema)]
pub struct CheckpointList {
    /// Checkpoints after the asked seq, oldest first (at most 1000).
    pub checkpoints: Vec<CheckpointItem>,
}

/// `POST /v1/agents/{agent}/credentials`.
#[derive(ToSchema)]
pub struct AgentCredential {
    /// The agent id.
    pub agent: String,
    /// The credential (a Biscuit); shown once.
    pub credential: String,
}

/// `POST /v1/approvers/{approver}/credentials`.
#[derive(ToSchema)]
pub struct ApproverCredential {
    /// The approver id.
    pub approver: String,
    /// The credential (a Biscuit); shown once.
    pub credential: String,
}

/// `POST /v1/agents/{agent}/revoke`.
#[derive(ToSchema)]
pub struct AgentRevoked {
    /// How many live tasks were ended.
    pub revoked_tasks: u64,
}

/// `POST /v1/approvers/{approver}/revoke`.
#[derive(ToSchema)]
pub struct ApproverRevoked {
    /// The approver id.
    pub approver: String,
    /// How many of its credentials were revoked now.
    pub revoked_credentials: u64,
}

/// `POST /v1/credentials/revoke`.
#[derive(ToSchema)]
pub struct CredentialRevoked {
    /// `agent` or `approver`.
    pub role: String,
    /// The agent or approver id.
    pub subject: String,
    /// The credential's revocation id (hex), now on the revocation feed.
    pub revocation_id: String,
    /// Always `revoked`.
    pub state: String,
}

/// `POST /v1/tokens/revoke`.
#[derive(ToSchema)]
pub struct TokenRevoked {
    /// The token's task (it goes on).
    pub task_id: String,
    /// The revoked block's revocation id (hex).
    pub revocation_id: String,
    /// Always `revoked`.
    pub state: String,
}

/// A new or renewed task: `active` with its token, or `pending_approval`.
#[derive(ToSchema)]
pub struct TaskIssued {
    /// `tsk_` and 32 hex digits.
    pub task_id: String,
    /// `active` or `pending_approval`.
    pub state: String,
    /// The task token (when active).
    pub token: Option<String>,
    /// End of the window (RFC 3339, when active).
    pub expires_at: Option<String>,
    /// The approval to wait for (when pending).
    pub approval_id: Option<String>,
}

/// A task as `GET /v1/tasks/{id}` and the task list show it.
#[derive(ToSchema)]
pub struct TaskDetail {
    /// `tsk_` and 32 hex digits.
    pub task_id: String,
    /// The owner agent.
    pub agent: String,
    /// What the task is for.
    pub purpose: String,
    /// `pending_approval`, `active`, `completed`, `revoked`, `expired` or `denied`.
    pub state: String,
    /// The tools the task may call.
    pub tools: Vec<String>,
    /// When it was opened (RFC 3339).
    pub created_at: String,
    /// End of the window (RFC 3339).
    pub expires_at: String,
    /// Calls admitted so far.
    pub calls: u64,
    /// The grant's call budget, if any.
    pub max_calls: Option<u64>,
    /// When it ended (RFC 3339), once ended.
    pub ended_at: Option<String>,
    /// Why it ended, once ended.
    pub end_reason: Option<String>,
    /// The task token: only to its owner agent, only while active.
    pub token: Option<String>,
}

/// `GET /v1/tasks`.
#[derive(ToSchema)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskDetail>,
}

/// `POST /v1/tasks/{id}/complete` and `/revoke`.
#[derive(ToSchema)]
pub struct TaskEnded {
    /// The task.
    pub task_id: String,
    /// `completed`, `revoked` or `expired`: the task's final state.
    pub state: String,
}

/// One tool the token may call.
#[derive(ToSchema)]
pub struct ToolItem {
    /// The tool's name (`NAME.tool` for MCP upstream tools).
    pub name: String,
    /// What it does.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub input_schema: Value,
    /// `none` or `per_call`.
    pub approval: String,
}

/// `GET /v1/tools`.
#[derive(ToSchema)]
pub struct ToolList {
    /// What this token may call.
    pub tools: Vec<ToolItem>,
}

/// `200` of a call: the upstream's JSON answer.
#[derive(ToSchema)]
pub struct CallDone {
    /// The upstream's answer.
    pub result: Value,
}

/// `202` of a call or renewal that waits for a human.
#[derive(ToSchema)]
pub struct Pending {
    /// Repeat a call with this id in `Leash-Approval` once approved.
    pub approval_id: String,
    /// Always `pending_approval`.
    pub state: String,
    /// The task (renewals only).
    pub task_id: Option<String>,
}

/// The call an approval is about (per-call approvals).
#[derive(ToSchema)]
pub struct ApprovalCall {
    /// The tool.
    pub tool: String,
    /// The arguments, as the agent sent them.
    pub arguments: Value,
}

/// One approval.
#[derive(ToSchema)]
pub struct ApprovalItem {
    /// `apr_` and 32 hex digits.
    pub approval_id: String,
    /// The task (none for a tool-definition approval).
    pub task_id: Option<String>,
    /// The agent asking (empty for a tool-definition approval).
    pub agent: String,
    /// `issuance`, `call`, `renewal` or `definition`.
    pub kind: String,
    /// The task's purpose, or the changed definition.
    pub purpose: String,
    /// The tools concerned.
    pub tools: Vec<String>,
    /// `pending`, `approved`, `denied`, `expired` or `used`.
    pub state: String,
    /// When it was asked (RFC 3339).
    pub requested_at: String,
    /// When an undecided request expires (RFC 3339).
    pub expires_at: String,
    /// The call (per-call approvals).
    pub call: Option<ApprovalCall>,
    /// The window asked for (issuance and renewal).
    pub ttl_seconds: Option<i64>,
    /// When it was decided (RFC 3339).
    pub decided_at: Option<String>,
    /// Who decided: `approver:…` or `admin`.
    pub decided_by: Option<String>,
    /// The decider's note.
    pub note: Option<String>,
}

/// `GET /v1/approvals`.
#[derive(ToSchema)]
pub struct ApprovalList {
    /// Oldest first.
    pub approvals: Vec<ApprovalItem>,
}

/// `POST /v1/approvals/{id}/approve` and `/deny`.
#[derive(ToSchema)]
pub struct Decided {
    /// The approval.
    pub approval_id: String,
    /// `approved` or `denied`.
    pub state: String,
}
