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
    /// Cancelled when the client cancels its request (`notifications/cancelled`).
    pub cancelled: tokio_util::sync::CancellationToken,
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
    /// The URIs the client subscribed to: `resources/updated` of any other is dropped.
    pub(crate) subscribed: Arc<Mutex<std::collections::HashSet<String>>>,
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
            subscribed: Arc::default(),
        }
    }

    /// Records that the client subscribed to `uri` (or, with `on` false, no longer is).
    pub fn subscribe(&self, uri: &str, on: bool) {
        if let Ok(mut subscribed) = self.subscribed.lock() {
            if on {
                if subscribed.len() < MAX_SUBSCRIPTIONS {
                    subscribed.insert(uri.to_string());
                }
            } else {
                subscribed.remove(uri);
            }
        }
    }

    /// What this relay's upstream sessions tell the server about the client: the
    /// client's own capabilities for sampling, elicitation and roots, nothing Leash adds.
    pub(crate) fn client_capabilities(&self) -> ClientCapabilities {
        self.peer
            .peer_info()
            .map(|info| relayable(&info.capabilities))
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
    /// Notifications for the client, sent in the order they arrived by one task; a full
    /// queue (a flood, or a client that does not read) drops what comes next.
    notices: tokio::sync::mpsc::Sender<Notice>,
    alive: Alive,
    subscribed: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Server requests waiting for the client's answer, at most [`MAX_ASKING`].
    asking: Arc<tokio::sync::Semaphore>,
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
        let (notices, mut queue) = tokio::sync::mpsc::channel::<Notice>(MAX_QUEUED);
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
            subscribed: relay.subscribed.clone(),
            asking: Arc::new(tokio::sync::Semaphore::new(MAX_ASKING)),
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
        match self.origin_of(context) {
            Some(origin) => {
                extensions_of(&mut request).insert(OriginatingRequestId(origin));
            }
            // Sent on no request's stream: relayed only while a request of the client's
            // is in flight on this session, never out of the blue.
            None if self.pending.lock().is_ok_and(|p| !p.is_empty()) => {}
            None => {
                return Err(ErrorData::invalid_request(
                    "Leash relays a server's request to the client only during one of the client's requests",
                    None,
                ));
            }
        }
        let Ok(_asking) = self.asking.clone().try_acquire_owned() else {
            return Err(ErrorData::invalid_request(
                format!("{MAX_ASKING} requests already wait for the client's answer"),
                None,
            ));
        };
        // On a task of its own: rmcp would otherwise mark the request with this handler's
        // own (upstream) request id and send it down another stream.
        let peer = self.peer.clone();
        let sent = tokio::spawn(async move {
            tokio::time::timeout(ASK_TIME, peer.send_request(request)).await
        });
        match sent.await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(e))) => Err(ErrorData::internal_error(
                format!("the client did not answer: {e}"),
                None,
            )),
            Ok(Err(_)) => Err(ErrorData::internal_error(
                "the client did not answer in time",
                None,
            )),
            Err(_) => Err(ErrorData::internal_error("the relay failed", None)),
        }
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
        if !url_allowed(&params) {
            return Err(ErrorData::invalid_params(
                "Leash refused this elicitation: a URL-mode elicitation must send the person to an https URL",
                None,
            ));
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
            self.notice(Notice::Progress(params));
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
        if self.notices.try_send(Notice::Flushed(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIME, flushed).await;
        }
    }

    /// Queues a notification; dropped (and logged) when the queue is full.
    fn notice(&self, notice: Notice) {
        if self.notices.try_send(notice).is_err() {
            tracing::warn!(
                "an upstream sent more notifications than its client reads; dropped one"
            );
        }
    }

    /// A log message.
    pub(crate) fn log(&self, params: LoggingMessageNotificationParam) {
        self.notice(Notice::Log(params));
    }

    /// A subscribed resource changed.
    pub(crate) fn resource_updated(&self, params: ResourceUpdatedNotificationParam) {
        let subscribed = self
            .subscribed
            .lock()
            .is_ok_and(|subscribed| subscribed.contains(&params.uri));
        if subscribed {
            self.notice(Notice::ResourceUpdated(params));
        }
    }
}

/// Longest wait for the client's answer to a server's request (a person may be asked).
const ASK_TIME: std::time::Duration = std::time::Duration::from_secs(600);

/// Most server requests (sampling, elicitation, roots) waiting for one client's answer
/// per upstream session.
const MAX_ASKING: usize = 8;

/// Most notifications waiting for one client per upstream session.
const MAX_QUEUED: usize = 1_024;

/// Most resources one client session may be subscribed to.
const MAX_SUBSCRIPTIONS: usize = 1_000;

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

/// Words that make a form field a secret (its name, title or description): the
/// specification forbids servers to request sensitive information through a form.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "passcode",
    "pwd",
    "pass",
    "secret",
    "token",
    "apikey",
    "credential",
    "credentials",
    "privatekey",
    "otp",
    "totp",
    "2fa",
    "mfa",
    "pin",
    "cvv",
    "cvc",
    "ssn",
    "iban",
    "mnemonic",
    "seed",
];

/// Two-word phrases that do the same.
const SECRET_PHRASES: &[&str] = &[
    "api key",
    "private key",
    "secret key",
    "access key",
    "card number",
    "credit card",
    "recovery code",
    "security code",
    "one time",
    "verification code",
    "auth code",
];

/// What makes the form's message itself ask for a secret (fewer words: a message is
/// prose, where `pass` or `pin` mean something else).
const SECRET_IN_MESSAGE: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "passcode",
    "apikey",
    "mnemonic",
    "2fa",
    "mfa",
    "otp",
    "cvv",
    "ssn",
    "api key",
    "private key",
    "secret key",
    "card number",
    "credit card",
    "recovery code",
    "security code",
    "verification code",
    "credential",
    "credentials",
    "api token",
    "access token",
    "auth token",
    "bearer token",
    "client secret",
];

/// The words of `text`: camelCase and snake_case split, lowercased, as one string with a
/// space before and after each word (so phrases match whole words).
fn words_of(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len() + 8);
    let mut previous: Option<char> = None;
    for c in text.chars() {
        if c.is_uppercase() && previous.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit()) {
            spaced.push(' ');
        }
        spaced.push(c);
        previous = Some(c);
    }
    let words: Vec<String> = spaced
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    format!(" {} ", words.join(" "))
}

fn says_any(words: &str, list: &[&str]) -> bool {
    list.iter().any(|w| words.contains(&format!(" {w} ")))
}

/// Why a form elicitation looks like it asks for a secret: the first field whose name,
/// title or description says so, or `message` when the form's message does. A heuristic
/// over English words (camelCase and snake_case split); `None` for a URL-mode one.
pub fn secret_field(params: &ElicitRequestParams) -> Option<String> {
    let ElicitRequestParams::FormElicitationParams {
        requested_schema,
        message,
        ..
    } = params
    else {
        return None;
    };
    if says_any(&words_of(message), SECRET_IN_MESSAGE) {
        return Some("message".into());
    }
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
        .join(" ");
        let words = words_of(&text);
        if says_any(&words, SECRET_WORDS) || says_any(&words, SECRET_PHRASES) {
            return Some(name.clone());
        }
    }
    None
}

/// What of a client's capabilities an upstream is told: sampling, elicitation and roots,
/// which Leash relays, and nothing Leash adds.
pub fn relayable(client: &ClientCapabilities) -> ClientCapabilities {
    let mut capabilities = ClientCapabilities::default();
    capabilities.sampling = client.sampling.clone();
    capabilities.elicitation = client.elicitation.clone();
    capabilities.roots = client.roots.clone();
    capabilities
}

/// Whether a URL-mode elicitation may be shown: an `https` URL only (the person is sent
/// there to type what the server may not ask for in a form).
pub fn url_allowed(params: &ElicitRequestParams) -> bool {
    match params {
        ElicitRequestParams::UrlElicitationParams { url, .. } => {
            reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some())
        }
        _ => true,
    }
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
            json!({"accessToken": {"type": "string"}}),
            json!({"userPin": {"type": "string"}}),
            json!({"otpCode": {"type": "string"}}),
            json!({"cardCvv": {"type": "string"}}),
            json!({"value": {"type": "string", "title": "Recovery code"}}),
            json!({"pwd": {"type": "string"}}),
        ] {
            assert!(secret_field(&form(secret.clone())).is_some(), "{secret}");
        }
        for ordinary in [
            json!({"name": {"type": "string"}, "email": {"type": "string", "format": "email"}}),
            json!({"age": {"type": "integer"}, "confirm": {"type": "boolean"}}),
            json!({"color": {"type": "string", "enum": ["red", "green"]}}),
            json!({"opinion": {"type": "string", "description": "what do you think of the tokenizer?"}}),
            json!({"spinner": {"type": "string"}, "passenger": {"type": "string"}}),
        ] {
            assert_eq!(secret_field(&form(ordinary.clone())), None, "{ordinary}");
        }
    }

    #[test]
    fn a_message_asking_for_a_secret_is_found_and_a_url_must_be_https() {
        let asking = serde_json::from_value::<rmcp::model::ElicitRequestParams>(json!({
            "mode": "form", "message": "Enter your password below",
            "requestedSchema": {"type": "object", "properties": {"value": {"type": "string"}}}
        }))
        .unwrap();
        assert_eq!(secret_field(&asking).as_deref(), Some("message"));
        let token = serde_json::from_value::<rmcp::model::ElicitRequestParams>(json!({
            "mode": "form", "message": "Paste your GitHub access token",
            "requestedSchema": {"type": "object", "properties": {"value": {"type": "string"}}}
        }))
        .unwrap();
        assert_eq!(secret_field(&token).as_deref(), Some("message"));
        let url = |u: &str| {
            serde_json::from_value::<rmcp::model::ElicitRequestParams>(json!({
                "mode": "url", "message": "Sign in", "url": u, "elicitationId": "e1"
            }))
            .unwrap()
        };
        assert!(super::url_allowed(&url("https://auth.example.org/connect")));
        for refused in [
            "http://auth.example.org/",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(!super::url_allowed(&url(refused)), "{refused}");
        }
    }
}
