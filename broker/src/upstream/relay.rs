//! Relaying an upstream MCP server's messages to the client whose request caused them.
//!
//! A client on an `/mcp` session gets, per upstream server (and per credential, with
//! `upstream_auth`), an upstream session of its own, opened on first use and closed with
//! the client's session. What the upstream sends on it goes to that client only:
//! sampling, elicitation and roots requests on the stream of the client request that
//! caused them, progress under the client's own progress token, log messages, and
//! `resources/updated` for the subscriptions the client made. A form elicitation that
//! asks for a secret-looking field is refused here (the specification forbids servers to
//! ask for secrets that way), so it never reaches the person.
//!
//! Nothing is shared between clients: a message from an upstream session can only reach
//! the one client that session was opened for.

// Sampling, roots, logging and `resources/subscribe` are deprecated by the 2026-07-28
// revision (SEP-2577) but are the 2025-11-25 protocol, which Leash relays as it is.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    ClientCapabilities, ClientResult, CreateMessageRequest, CreateMessageRequestParams,
    CreateMessageResult, ElicitRequest, ElicitRequestParams, ElicitResult, ListRootsRequest,
    ListRootsResult, LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam,
    ProgressToken, RequestId, ResourceUpdatedNotificationParam, ServerRequest,
};
use rmcp::service::{InboundStreamOrigin, OriginatingRequestId, Peer, RequestContext, RoleClient};
use rmcp::{ErrorData, RoleServer};

/// The client request being served, as the relay needs it: its id (server-to-client
/// requests ride its stream) and its progress token, if it asked for progress.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The client's request id.
    pub request: RequestId,
    /// The client's `_meta.progressToken`.
    pub progress: Option<ProgressToken>,
}

/// One client session of `/mcp`: its peer, the logging level it set, and its upstream
/// sessions (kept by [`crate::upstream::mcp::McpServers`], dropped with this).
#[derive(Clone)]
pub struct Relay {
    pub(crate) peer: Peer<RoleServer>,
    /// Whether the session's task is still active: once it is not, nothing more is
    /// relayed to the client (its open stream included) and the server is refused.
    pub(crate) alive: Alive,
    pub(crate) level: Arc<Mutex<Option<LoggingLevel>>>,
    pub(crate) upstreams: Arc<tokio::sync::Mutex<HashMap<SessionKey, RelayedClient>>>,
}

/// An upstream session of a client: the server and the digest of the credential it was
/// opened with (`None`: the server's configured headers).
pub(crate) type SessionKey = (String, Option<[u8; 32]>);

/// Whether a client session's task is still active (cheap: read on every message).
pub type Alive = Arc<dyn Fn() -> bool + Send + Sync>;

/// An open upstream session of a client session.
pub(crate) type RelayedClient = (crate::upstream::mcp::Client, RelayTo);

impl Relay {
    /// The relay of the client session `peer` belongs to, relaying while `alive` says
    /// its task is active.
    pub fn new(peer: Peer<RoleServer>, alive: Alive) -> Self {
        Relay {
            peer,
            alive,
            level: Arc::new(Mutex::new(None)),
            upstreams: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
        }
    }

    /// What this relay's upstream sessions tell the server about the client: the
    /// client's own capabilities for sampling, elicitation and roots, nothing Leash adds.
    pub(crate) fn client_capabilities(&self) -> ClientCapabilities {
        self.peer
            .peer_info()
            .map(|info| {
                let mut capabilities = ClientCapabilities::default();
                capabilities.sampling = info.capabilities.sampling.clone();
                capabilities.elicitation = info.capabilities.elicitation.clone();
                capabilities.roots = info.capabilities.roots.clone();
                capabilities
            })
            .unwrap_or_default()
    }

    /// The logging level the client set, if any.
    pub fn level(&self) -> Option<LoggingLevel> {
        self.level.lock().ok().and_then(|level| *level)
    }

    /// Records the logging level the client set (sent to upstream sessions as they open).
    pub fn set_level(&self, level: LoggingLevel) {
        if let Ok(mut current) = self.level.lock() {
            *current = Some(level);
        }
    }
}

/// What one upstream session relays to its client: the client's peer and the requests
/// in flight on the session (upstream request id → the client request it serves).
#[derive(Clone)]
pub(crate) struct RelayTo {
    pub(crate) peer: Peer<RoleServer>,
    pub(crate) capabilities: ClientCapabilities,
    pub(crate) pending: Arc<Mutex<HashMap<RequestId, Pending>>>,
    /// Notifications for the client, sent in the order they arrived by one task.
    notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    alive: Alive,
}

/// A notification on its way to the client, or a mark answered once everything before
/// it went out.
enum Notice {
    Progress(ProgressNotificationParam),
    Log(LoggingMessageNotificationParam),
    ResourceUpdated(ResourceUpdatedNotificationParam),
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// A request Leash sent upstream for a client request.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) origin: Origin,
    /// The progress token Leash's request carried upstream.
    pub(crate) upstream_progress: ProgressToken,
}

impl RelayTo {
    /// What an upstream session of `relay` relays, on its way to the client. A task
    /// forwards its notifications in order, until the session is dropped.
    pub(crate) fn new(relay: &Relay, pending: Arc<Mutex<HashMap<RequestId, Pending>>>) -> Self {
        let (notices, mut queue) = tokio::sync::mpsc::unbounded_channel::<Notice>();
        let peer = relay.peer.clone();
        let alive = relay.alive.clone();
        tokio::spawn(async move {
            // rmcp hands each notification to a task of its own, so they may come out of
            // order; progress must only increase, so a stale one is dropped.
            let mut last: HashMap<ProgressToken, f64> = HashMap::new();
            while let Some(notice) = queue.recv().await {
                // A task that ended hears nothing more, on any stream of its session.
                if !alive() && !matches!(notice, Notice::Flushed(_)) {
                    continue;
                }
                let _ = match notice {
                    Notice::Progress(params) => {
                        let before = last.insert(params.progress_token.clone(), params.progress);
                        if before.is_some_and(|before| before >= params.progress) {
                            last.insert(params.progress_token.clone(), before.unwrap_or_default());
                            continue;
                        }
                        if last.len() > 1_000 {
                            last.clear();
                        }
                        peer.notify_progress(params).await
                    }
                    Notice::Log(params) => peer.notify_logging_message(params).await,
                    Notice::ResourceUpdated(params) => peer.notify_resource_updated(params).await,
                    Notice::Flushed(done) => {
                        let _ = done.send(());
                        Ok(())
                    }
                };
            }
        });
        RelayTo {
            peer: relay.peer.clone(),
            capabilities: relay.client_capabilities(),
            pending,
            notices,
            alive: relay.alive.clone(),
        }
    }

    /// The client request an upstream request (arriving on the stream of one of Leash's
    /// requests) belongs to; `None` when it arrived on no request's stream.
    fn origin_of(&self, context: &RequestContext<RoleClient>) -> Option<RequestId> {
        let Some(InboundStreamOrigin::OutboundRequest(id)) =
            context.extensions.get::<InboundStreamOrigin>()
        else {
            return None;
        };
        self.pending
            .lock()
            .ok()?
            .get(id)
            .map(|p| p.origin.request.clone())
    }

    /// Sends `request` to the client: on the stream of the client request it belongs to,
    /// or, if the server sent it on no request's stream, on the client's own stream.
    async fn ask(
        &self,
        request: ServerRequest,
        context: &RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        if !(self.alive)() {
            return Err(ErrorData::invalid_request(
                "the client's task has ended: nothing more is relayed to it",
                None,
            ));
        }
        let mut request = request;
        if let Some(origin) = self.origin_of(context) {
            extensions_of(&mut request).insert(OriginatingRequestId(origin));
        }
        self.peer
            .send_request(request)
            .await
            .map_err(|e| ErrorData::internal_error(format!("the client did not answer: {e}"), None))
    }

    /// `sampling/createMessage`, if the client can sample.
    pub(crate) async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: &RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        if self.capabilities.sampling.is_none() {
            return Err(ErrorData::method_not_found::<
                rmcp::model::CreateMessageRequestMethod,
            >());
        }
        let request = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        match self.ask(request, context).await? {
            ClientResult::CreateMessageResult(result) => Ok(*result),
            _ => Err(unexpected()),
        }
    }

    /// `elicitation/create`, if the client can elicit, and never for a secret.
    pub(crate) async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: &RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        if self.capabilities.elicitation.is_none() {
            return Err(ErrorData::method_not_found::<
                rmcp::model::ElicitationCreateRequestMethod,
            >());
        }
        if let Some(field) = secret_field(&params) {
            tracing::warn!(
                field,
                "refused an upstream elicitation that asks for a secret-looking field"
            );
            return Err(ErrorData::invalid_params(
                format!(
                    "Leash refused this elicitation: field {field:?} looks like a secret, and servers must not ask for secrets in a form"
                ),
                None,
            ));
        }
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match self.ask(request, context).await? {
            ClientResult::ElicitResult(result) => Ok(result),
            _ => Err(unexpected()),
        }
    }

    /// `roots/list`, if the client has roots.
    pub(crate) async fn list_roots(
        &self,
        context: &RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        if self.capabilities.roots.is_none() {
            return Err(ErrorData::method_not_found::<
                rmcp::model::ListRootsRequestMethod,
            >());
        }
        let request = ServerRequest::ListRootsRequest(ListRootsRequest::default());
        match self.ask(request, context).await? {
            ClientResult::ListRootsResult(result) => Ok(result),
            _ => Err(unexpected()),
        }
    }

    /// A progress notification, under the client's own token; dropped when it is for no
    /// request of the client's that asked for progress.
    pub(crate) fn progress(&self, params: ProgressNotificationParam) {
        let token = self.pending.lock().ok().and_then(|pending| {
            pending
                .values()
                .find(|p| p.upstream_progress == params.progress_token)
                .and_then(|p| p.origin.progress.clone())
        });
        if let Some(token) = token {
            let mut params = params;
            params.progress_token = token;
            let _ = self.notices.send(Notice::Progress(params));
        }
    }

    /// Waits (briefly) until the notifications the upstream sent before its answer went
    /// out to the client, so its progress reaches the client before the result does.
    /// rmcp hands each notification to a task of its own, so they are first given a
    /// moment to arrive.
    pub(crate) async fn flush(&self) {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.notices.send(Notice::Flushed(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIME, flushed).await;
        }
    }

    /// A log message.
    pub(crate) fn log(&self, params: LoggingMessageNotificationParam) {
        let _ = self.notices.send(Notice::Log(params));
    }

    /// A subscribed resource changed.
    pub(crate) fn resource_updated(&self, params: ResourceUpdatedNotificationParam) {
        let _ = self.notices.send(Notice::ResourceUpdated(params));
    }
}

/// Longest wait for the client's notifications before a result is passed on.
const FLUSH_TIME: std::time::Duration = std::time::Duration::from_millis(500);

fn unexpected() -> ErrorData {
    ErrorData::internal_error("the client answered with another kind of result", None)
}

/// The extensions of a server request (where its originating client request is marked).
fn extensions_of(request: &mut ServerRequest) -> &mut rmcp::model::Extensions {
    use rmcp::model::GetExtensions;
    request.extensions_mut()
}

/// Words that make a form field a secret: the specification forbids servers to request
/// sensitive information through form elicitation.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "credential",
    "privatekey",
    "private_key",
    "private-key",
    "otp",
    "pin",
    "cvv",
    "ssn",
    "creditcard",
    "credit_card",
    "cardnumber",
    "card_number",
];

/// The first field of a form elicitation that looks like a secret: by its name, title
/// or description, or by `format: "password"`/`writeOnly`.
pub fn secret_field(params: &ElicitRequestParams) -> Option<String> {
    let ElicitRequestParams::FormElicitationParams {
        requested_schema, ..
    } = params
    else {
        return None;
    };
    let schema = serde_json::to_value(requested_schema).ok()?;
    let properties = schema.get("properties")?.as_object()?;
    for (name, property) in properties {
        let text = [
            Some(name.as_str()),
            property.get("title").and_then(|v| v.as_str()),
            property.get("description").and_then(|v| v.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
        let words: Vec<&str> = text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let compact: String = text.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let named = SECRET_WORDS.iter().any(|secret| {
            words.contains(secret)
                || (secret.len() >= 6 && compact.contains(&secret.replace(['_', '-'], "")))
        });
        let marked = property.get("format").and_then(|v| v.as_str()) == Some("password")
            || property.get("writeOnly") == Some(&serde_json::Value::Bool(true));
        if named || marked {
            return Some(name.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::secret_field;
    use serde_json::json;

    /// A form elicitation as rmcp reads it off the wire (its schema type keeps the
    /// specification's primitive fields only).
    fn form(properties: serde_json::Value) -> rmcp::model::ElicitRequestParams {
        serde_json::from_value(json!({
            "mode": "form",
            "message": "Please fill in",
            "requestedSchema": { "type": "object", "properties": properties }
        }))
        .unwrap()
    }

    #[test]
    fn a_form_asking_for_a_secret_is_found_and_an_ordinary_one_is_not() {
        for secret in [
            json!({"password": {"type": "string"}}),
            json!({"name": {"type": "string"}, "apiKey": {"type": "string"}}),
            json!({"github_token": {"type": "string"}}),
            json!({"x": {"type": "string", "title": "Your API key"}}),
            json!({"x": {"type": "string", "description": "the card's CVV"}}),
            json!({"db": {"type": "string", "title": "Database passphrase"}}),
        ] {
            assert!(secret_field(&form(secret.clone())).is_some(), "{secret}");
        }
        for ordinary in [
            json!({"name": {"type": "string"}, "email": {"type": "string", "format": "email"}}),
            json!({"age": {"type": "integer"}, "confirm": {"type": "boolean"}}),
            json!({"color": {"type": "string", "enum": ["red", "green"]}}),
            json!({"opinion": {"type": "string", "description": "what do you think of the tokenizer?"}}),
        ] {
            assert_eq!(secret_field(&form(ordinary.clone())), None, "{ordinary}");
        }
    }
}
