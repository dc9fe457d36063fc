//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! It is generated from the code: every handler carries a `#[utoipa::path]` attribute,
//! query strings are the handlers' own types, and every request and response body is
//! the type the handler reads or answers, from `leash_sdk::protocol` (the SDK reads
//! the same types), so the document cannot drift from the answers.
//! The schemathesis test (`tests/e2e/openapi.rs`) checks every answer of a running
//! broker against this document, for each role.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use leash_sdk::protocol::{ErrorBody, ErrorCode, ErrorDetail, KeySet, PublishedKey};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Response as DocResponse, ResponseBuilder};
use utoipa::{Modify, OpenApi};

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
        tasks::timeline,
        tasks::evidence,
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
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = serde_json::Value))
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
