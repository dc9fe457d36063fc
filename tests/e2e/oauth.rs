//! MCP clients connect by the book: Leash is the OAuth 2.1 authorization server of its own
//! `/mcp`, local accounts sign in through plain HTML forms, and the grant is a task. The
//! browser is played by reqwest (no redirect followed, cookies kept by hand, forms read
//! from the HTML); the official MCP Python SDK's `OAuthClientProvider` does the whole dance
//! in the interop test at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use leash_broker::ServeConfig;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{ADMIN, TestBroker};

pub(crate) const POLICY: &str = r#"
[tools."web.search"]
description = "Search the web"
upstream = "http://{UP}/search"
input_schema = { type = "object", properties = { query = { type = "string" } } }

[tools."fs.read"]
description = "Read a file"
upstream = "http://{UP}/read"
input_schema = { type = "object", properties = { path = { type = "string" } } }

[tools."fs.write"]
description = "Write a file"
upstream = "http://{UP}/write"
input_schema = { type = "object" }

[tools."shell.exec"]
description = "Granted to no user"
upstream = "http://{UP}/exec"
input_schema = { type = "object" }

[users.alice]
tools = ["fs.*", "web.search"]
max_ttl_seconds = 3600

[users.bob]
tools = ["web.search"]
max_ttl_seconds = 3600
approval = "issuance"
"#;

pub(crate) const ALICE_PASSWORD: &str = "alice-Pa55word-that-is-long";
const BOB_PASSWORD: &str = "bob-Pa55word-that-is-long-too";
const CLIENT_NAME: &str = "Acme Test Agent";
/// Nothing listens here: the browser stops at the redirect and reads its query.
const LOOPBACK: &str = "http://127.0.0.1:8976/callback";

// ---------------------------------------------------------------- the harness

async fn broker() -> TestBroker {
    broker_tuned(|_| {}).await
}

/// A broker on [`POLICY`] with the accounts alice and bob (neither an approver).
async fn broker_tuned(tune: impl FnOnce(&mut ServeConfig)) -> TestBroker {
    let broker = TestBroker::spawn_tuned(POLICY, tune).await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .expect("alice added");
    broker
        .state
        .accounts
        .add("bob", BOB_PASSWORD, false)
        .await
        .expect("bob added");
    broker
}

fn resource(broker: &TestBroker) -> String {
    format!("{}/mcp", broker.url)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn form_body<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k.as_ref()), encode(v.as_ref())))
        .collect::<Vec<_>>()
        .join("&")
}

/// The query parameters of a URL (the first value of each).
pub(crate) fn query_of(url: &str) -> BTreeMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let query = query.split('#').next().unwrap_or("");
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode(k)).or_insert_with(|| decode(v));
    }
    out
}

/// Whether two path-and-query targets are the same (paths equal, queries equal decoded).
pub(crate) fn same_target(a: &str, b: &str) -> bool {
    let path = |t: &str| t.split('?').next().unwrap_or("").to_string();
    path(a) == path(b) && query_of(a) == query_of(b)
}

/// A PKCE pair: (verifier, S256 challenge).
pub(crate) fn pkce() -> (String, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{:?}-{}",
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now(),
        std::process::id()
    );
    let verifier = hex::encode(Sha256::digest(seed.as_bytes())); // 64 unreserved characters
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// One HTTP answer as a browser sees it.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect()
    }

    /// The query of the redirect this page answered with.
    fn redirect_query(&self) -> BTreeMap<String, String> {
        query_of(self.location.as_deref().unwrap_or(""))
    }
}

/// A user's browser: follows no redirect, keeps cookies by hand.
pub(crate) struct Browser {
    pub(crate) http: reqwest::Client,
    base: String,
    pub(crate) cookies: BTreeMap<String, String>,
}

impl Browser {
    pub(crate) fn new(broker: &TestBroker) -> Browser {
        leash_sdk::tls::install_default_provider();
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: broker.url.clone(),
            cookies: BTreeMap::new(),
        }
    }

    fn url(&self, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else {
            format!("{}{target}", self.base)
        }
    }

    fn remember(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            return;
        };
        let (name, value) = (name.trim().to_string(), value.trim().trim_matches('"'));
        let expired = parts.any(|attribute| {
            let attribute = attribute.trim().to_ascii_lowercase().replace(' ', "");
            attribute == "max-age=0"
                || attribute.starts_with("max-age=-")
                || attribute.starts_with("expires=thu,01jan1970")
        });
        if expired || value.is_empty() {
            self.cookies.remove(&name);
        } else {
            self.cookies.insert(name, value.to_string());
        }
    }

    pub(crate) fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    pub(crate) async fn send(&mut self, mut request: reqwest::RequestBuilder) -> Page {
        if !self.cookies.is_empty() {
            let header = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header("cookie", header);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        let page = Page {
            status,
            location: headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            headers,
            body,
        };
        for set_cookie in page.set_cookies() {
            self.remember(&set_cookie);
        }
        assert_ne!(page.status, 500, "never a 500: {page:?}");
        page
    }

    pub(crate) async fn get(&mut self, target: &str) -> Page {
        let request = self.http.get(self.url(target));
        self.send(request).await
    }

    pub(crate) async fn post_form<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        target: &str,
        fields: &[(K, V)],
    ) -> Page {
        let request = self
            .http
            .post(self.url(target))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields));
        self.send(request).await
    }

    /// GET /signin?next=…, fill the form, POST it: the answer to the POST.
    async fn sign_in(&mut self, user: &str, password: &str, next: &str) -> Page {
        let page = self.get(&format!("/signin?next={}", encode(next))).await;
        assert_eq!(page.status, 200, "the sign-in page: {page:?}");
        assert!(
            self.cookie("leash_csrf").is_some(),
            "the sign-in page sets the double-submit cookie: {page:?}"
        );
        let mut fields = read_form(&page.body, "/signin").filled();
        set(&mut fields, "username", user);
        set(&mut fields, "password", password);
        self.post_form("/signin", &fields).await
    }
}

/// A browser signed in as `user`.
pub(crate) async fn signed_in(broker: &TestBroker, user: &str, password: &str) -> Browser {
    let mut browser = Browser::new(broker);
    let answer = browser.sign_in(user, password, "/ui").await;
    assert_eq!(answer.status, 303, "signed in: {answer:?}");
    assert!(browser.cookie("leash_session").is_some(), "{answer:?}");
    browser
}

// ------------------------------------------------------- a regex-free form reader

/// One control of a form: `tag` is input, option (of a select named `name`), textarea
/// or button; `checked` is checked or selected.
#[derive(Debug, Clone)]
struct Control {
    tag: String,
    kind: String,
    name: String,
    value: String,
    checked: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Form {
    controls: Vec<Control>,
}

impl Form {
    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.controls
            .iter()
            .find(|c| {
                c.name == name
                    && (c.tag == "input" || c.tag == "textarea")
                    && !matches!(c.kind.as_str(), "checkbox" | "radio" | "submit" | "button")
            })
            .map(|c| c.value.as_str())
    }

    pub(crate) fn kind_of(&self, name: &str) -> Option<&str> {
        self.controls
            .iter()
            .find(|c| c.name == name && c.tag == "input")
            .map(|c| c.kind.as_str())
    }

    /// The checkboxes named `name`: (value, checked).
    pub(crate) fn checkboxes(&self, name: &str) -> Vec<(String, bool)> {
        self.controls
            .iter()
            .filter(|c| c.name == name && c.tag == "input" && c.kind == "checkbox")
            .map(|c| (c.value.clone(), c.checked))
            .collect()
    }

    /// The options of the select named `name`: (value, selected).
    fn options(&self, name: &str) -> Vec<(String, bool)> {
        self.controls
            .iter()
            .filter(|c| c.name == name && c.tag == "option")
            .map(|c| (c.value.clone(), c.checked))
            .collect()
    }

    /// The values of the submit buttons named `name`.
    fn buttons(&self, name: &str) -> Vec<String> {
        self.controls
            .iter()
            .filter(|c| c.name == name && c.tag == "button")
            .map(|c| c.value.clone())
            .collect()
    }

    /// What a browser submits for the form as it stands (without a button).
    pub(crate) fn filled(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut selects: Vec<(String, String, bool)> = Vec::new();
        for c in &self.controls {
            if c.name.is_empty() {
                continue;
            }
            match (c.tag.as_str(), c.kind.as_str()) {
                ("button", _) | ("input", "submit" | "button" | "reset" | "image") => {}
                ("option", _) => match selects.iter_mut().find(|(name, _, _)| *name == c.name) {
                    Some(chosen) => {
                        if c.checked && !chosen.2 {
                            *chosen = (c.name.clone(), c.value.clone(), true);
                        }
                    }
                    None => selects.push((c.name.clone(), c.value.clone(), c.checked)),
                },
                ("input", "checkbox" | "radio") => {
                    if c.checked {
                        out.push((c.name.clone(), c.value.clone()));
                    }
                }
                _ => out.push((c.name.clone(), c.value.clone())),
            }
        }
        out.extend(selects.into_iter().map(|(name, value, _)| (name, value)));
        out
    }
}

/// Replaces every field `name` by one with `value`.
fn set(fields: &mut Vec<(String, String)>, name: &str, value: &str) {
    fields.retain(|(k, _)| k != name);
    fields.push((name.to_string(), value.to_string()));
}

fn without(fields: &[(String, String)], name: &str) -> Vec<(String, String)> {
    fields.iter().filter(|(k, _)| k != name).cloned().collect()
}

/// The consent form's fields with exactly `tools` ticked and `decision` pressed.
pub(crate) fn choose(form: &Form, tools: Option<&[&str]>, decision: &str) -> Vec<(String, String)> {
    let mut fields = form.filled();
    if let Some(tools) = tools {
        fields.retain(|(k, _)| k != "tools");
        fields.extend(tools.iter().map(|t| ("tools".to_string(), t.to_string())));
    }
    fields.push(("decision".to_string(), decision.to_string()));
    fields
}

pub(crate) fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';').filter(|end| *end <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => {
                if let Some(hex) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                } else if let Some(decimal) = entity.strip_prefix('#') {
                    decimal.parse::<u32>().ok().and_then(char::from_u32)
                } else {
                    None
                }
            }
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The attributes of one tag's text (`<input a="b" c>`), entity-decoded; names lowercased.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let chars: Vec<char> = tag.chars().collect();
    let mut out = BTreeMap::new();
    let mut i = 1;
    while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '>' {
        i += 1;
    }
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '/') {
            i += 1;
        }
        if i >= chars.len() || chars[i] == '>' {
            break;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !matches!(chars[i], '=' | '>' | '/') {
            i += 1;
        }
        let name = chars[start..i]
            .iter()
            .collect::<String>()
            .to_ascii_lowercase();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                let quote = chars[i];
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
                value = chars[start..i.min(chars.len())].iter().collect();
                i += 1;
            } else {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '>' {
                    i += 1;
                }
                value = chars[start..i].iter().collect();
            }
        }
        if !name.is_empty() {
            out.insert(name, unescape(&value));
        }
    }
    out
}

/// The controls of the form on `html` that posts to `action` (a path; an absolute action
/// URL ending in it counts).
pub(crate) fn read_form(html: &str, action: &str) -> Form {
    find_form(html, action).unwrap_or_else(|| panic!("no form posting to {action} in: {html}"))
}

fn find_form(html: &str, action: &str) -> Option<Form> {
    let mut form: Option<Form> = None;
    let mut select: Option<String> = None;
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        rest = &rest[at..];
        let end = rest.find('>').map(|e| e + 1).unwrap_or(rest.len());
        let tag = &rest[..end];
        let after = &rest[end..];
        let name: String = tag[1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
            .collect::<String>()
            .to_ascii_lowercase();
        let attrs = attributes(tag);
        match name.as_str() {
            "form" => {
                let target = attrs.get("action").cloned().unwrap_or_default();
                let target = target.split('?').next().unwrap_or("").to_string();
                // An absolute action URL (scheme://host/path) counts by its path.
                let path = if let Some((_, after)) = target.split_once("://") {
                    after
                        .find('/')
                        .map(|slash| after[slash..].to_string())
                        .unwrap_or_default()
                } else {
                    target.clone()
                };
                if form.is_none() && path == action {
                    form = Some(Form::default());
                }
            }
            "/form" if form.is_some() => return form,
            "/form" => {}
            _ if form.is_none() => {}
            "input" => {
                let f = form.as_mut().unwrap();
                f.controls.push(Control {
                    tag: "input".into(),
                    kind: attrs
                        .get("type")
                        .map(|t| t.to_ascii_lowercase())
                        .unwrap_or_else(|| "text".into()),
                    name: attrs.get("name").cloned().unwrap_or_default(),
                    value: attrs.get("value").cloned().unwrap_or_default(),
                    checked: attrs.contains_key("checked"),
                });
            }
            "select" => select = attrs.get("name").cloned(),
            "/select" => select = None,
            "option" => {
                if let Some(select) = &select {
                    let text = after.split('<').next().unwrap_or("").trim();
                    let f = form.as_mut().unwrap();
                    f.controls.push(Control {
                        tag: "option".into(),
                        kind: "option".into(),
                        name: select.clone(),
                        value: attrs
                            .get("value")
                            .cloned()
                            .unwrap_or_else(|| unescape(text)),
                        checked: attrs.contains_key("selected"),
                    });
                }
            }
            "textarea" => {
                let text = after.split("</textarea").next().unwrap_or("");
                let f = form.as_mut().unwrap();
                f.controls.push(Control {
                    tag: "textarea".into(),
                    kind: "textarea".into(),
                    name: attrs.get("name").cloned().unwrap_or_default(),
                    value: unescape(text),
                    checked: false,
                });
            }
            "button" => {
                let f = form.as_mut().unwrap();
                f.controls.push(Control {
                    tag: "button".into(),
                    kind: attrs
                        .get("type")
                        .cloned()
                        .unwrap_or_else(|| "submit".into()),
                    name: attrs.get("name").cloned().unwrap_or_default(),
                    value: attrs.get("value").cloned().unwrap_or_default(),
                    checked: false,
                });
            }
            _ => {}
        }
        rest = &rest[end.min(rest.len())..];
        if end == 0 {
            break;
        }
    }
    form
}

// ------------------------------------------------------------ the OAuth client side

/// A registered public client with one PKCE pair.
pub(crate) struct App {
    pub(crate) id: String,
    pub(crate) redirect: String,
    pub(crate) verifier: String,
    pub(crate) challenge: String,
}

impl App {
    pub(crate) async fn register(broker: &TestBroker, redirect: &str) -> App {
        let reply = broker
            .post(
                "/oauth/register",
                None,
                json!({
                    "redirect_uris": [redirect],
                    "client_name": CLIENT_NAME,
                    "token_endpoint_auth_method": "none",
                }),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        let (verifier, challenge) = pkce();
        App {
            id: reply.body["client_id"].as_str().unwrap().to_string(),
            redirect: redirect.to_string(),
            verifier,
            challenge,
        }
    }

    /// The parameters of a good authorization request.
    fn params(
        &self,
        broker: &TestBroker,
        state: &str,
        scope: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = [
            ("response_type", "code"),
            ("client_id", self.id.as_str()),
            ("redirect_uri", self.redirect.as_str()),
            ("code_challenge", self.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", state),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        params.push(("resource".into(), resource(broker)));
        if let Some(scope) = scope {
            params.push(("scope".into(), scope.into()));
        }
        params
    }

    pub(crate) fn authorize(
        &self,
        broker: &TestBroker,
        state: &str,
        scope: Option<&str>,
    ) -> String {
        authorize_path(&self.params(broker, state, scope))
    }

    /// `POST /oauth/token` with this client's code.
    pub(crate) async fn exchange(&self, broker: &TestBroker, code: &str) -> TokenReply {
        let resource = resource(broker);
        token(
            broker,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.redirect.as_str()),
                ("client_id", self.id.as_str()),
                ("code_verifier", self.verifier.as_str()),
                ("resource", resource.as_str()),
            ],
        )
        .await
    }

    async fn refresh(&self, broker: &TestBroker, refresh_token: &str) -> TokenReply {
        token(
            broker,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", self.id.as_str()),
            ],
        )
        .await
    }
}

fn authorize_path<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    format!("/oauth/authorize?{}", form_body(params))
}

#[derive(Debug)]
pub(crate) struct TokenReply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    cache_control: Option<String>,
}

impl TokenReply {
    pub(crate) fn access(&self) -> String {
        self.body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {self:?}"))
            .to_string()
    }

    fn refresh(&self) -> String {
        self.body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no refresh token: {self:?}"))
            .to_string()
    }

    /// An OAuth error answer: 400 (401 allowed for invalid_client) with `error` and a
    /// non-empty `error_description`.
    fn assert_error(&self, code: &str, what: &str) {
        let allowed = if code == "invalid_client" {
            &[400, 401][..]
        } else {
            &[400][..]
        };
        assert!(allowed.contains(&self.status), "{what}: {self:?}");
        assert_eq!(self.body["error"], code, "{what}: {self:?}");
        assert!(
            self.body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}: {self:?}"
        );
    }
}

async fn token<K: AsRef<str>, V: AsRef<str>>(broker: &TestBroker, fields: &[(K, V)]) -> TokenReply {
    let response = broker
        .http
        .post(format!("{}/oauth/token", broker.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(fields))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cache_control = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = response.text().await.unwrap_or_default();
    assert_ne!(status, 500, "never a 500: {text}");
    TokenReply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        cache_control,
    }
}

/// A consent page on its way: the client, the signed-in browser, the state, the page.
struct Consent {
    app: App,
    browser: Browser,
    state: String,
    page: Page,
    form: Form,
}

impl Consent {
    /// Ticks exactly `tools` (or leaves the preselection) and presses `decision`.
    async fn decide(&mut self, tools: Option<&[&str]>, decision: &str) -> Page {
        let fields = choose(&self.form, tools, decision);
        self.browser.post_form("/oauth/authorize", &fields).await
    }

    /// Allow; the code from the redirect (state and iss checked).
    async fn allow(&mut self, broker: &TestBroker, tools: Option<&[&str]>) -> String {
        let answer = self.decide(tools, "allow").await;
        code_of(broker, &self.app, &self.state, &answer)
    }
}

/// The code in a 303 to the client's redirect URI, with the state sent and Leash's issuer.
pub(crate) fn code_of(broker: &TestBroker, app: &App, state: &str, answer: &Page) -> String {
    assert_eq!(answer.status, 303, "{answer:?}");
    let location = answer.location.as_deref().unwrap();
    assert!(
        location.starts_with(&format!("{}?", app.redirect)),
        "{location}"
    );
    let query = answer.redirect_query();
    assert_eq!(
        query.get("state").map(String::as_str),
        Some(state),
        "{location}"
    );
    assert_eq!(
        query.get("iss").map(String::as_str),
        Some(broker.url.as_str()),
        "{location}"
    );
    query
        .get("code")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| panic!("no code: {location}"))
        .clone()
}

/// Registers a client at `redirect`, starts authorization, signs in when asked, and
/// arrives at the consent page.
async fn consent_at(
    broker: &TestBroker,
    user: &str,
    password: &str,
    scope: Option<&str>,
    redirect: &str,
) -> Consent {
    let app = App::register(broker, redirect).await;
    let mut browser = Browser::new(broker);
    let state = format!("state-{}", pkce().0);
    let path = app.authorize(broker, &state, scope);
    let first = browser.get(&path).await;
    assert_eq!(
        first.status, 303,
        "not signed in: to the sign-in page {first:?}"
    );
    let to_signin = first.location.clone().unwrap();
    assert!(to_signin.contains("/signin?next="), "{to_signin}");
    let next = query_of(&to_signin)["next"].clone();
    assert!(
        same_target(&next, &path),
        "next is the original path and query: {next}"
    );
    let signed = browser.sign_in(user, password, &next).await;
    assert_eq!(signed.status, 303, "{signed:?}");
    let back = signed.location.clone().unwrap();
    assert!(
        same_target(back.trim_start_matches(broker.url.as_str()), &path),
        "{back}"
    );
    let page = browser.get(&path).await;
    assert_eq!(page.status, 200, "the consent page: {page:?}");
    let form = read_form(&page.body, "/oauth/authorize");
    Consent {
        app,
        browser,
        state,
        page,
        form,
    }
}

async fn consent(broker: &TestBroker, user: &str, password: &str, scope: Option<&str>) -> Consent {
    consent_at(broker, user, password, scope, LOOPBACK).await
}

/// With a browser already signed in: the consent page for `app`, allowed as preselected;
/// the code.
pub(crate) async fn code_with(
    broker: &TestBroker,
    browser: &mut Browser,
    app: &App,
    scope: Option<&str>,
) -> String {
    let page = browser.get(&app.authorize(broker, "st", scope)).await;
    assert_eq!(page.status, 200, "the consent page: {page:?}");
    let form = read_form(&page.body, "/oauth/authorize");
    let answer = browser
        .post_form("/oauth/authorize", &choose(&form, None, "allow"))
        .await;
    code_of(broker, app, "st", &answer)
}

/// A grant carried through: the client, its tokens, the task behind them.
struct Granted {
    app: App,
    access: String,
    refresh: String,
    task_id: String,
}

/// Alice allows `tools` (asked for as the scope) and the client exchanges the code.
async fn granted(broker: &TestBroker, tools: &[&str]) -> Granted {
    let scope = tools.join(" ");
    let mut consent = consent(broker, "alice", ALICE_PASSWORD, Some(&scope)).await;
    let code = consent.allow(broker, Some(tools)).await;
    let reply = consent.app.exchange(broker, &code).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let task_id = task_of(broker, &consent.app.id).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    Granted {
        access: reply.access(),
        refresh: reply.refresh(),
        app: consent.app,
        task_id,
    }
}

/// The task an approver sees for a client (exactly one).
pub(crate) async fn task_of(broker: &TestBroker, client_id: &str) -> Value {
    let agent = format!("client:{client_id}");
    let listed = broker.get("/v1/tasks", Some(ADMIN)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let tasks: Vec<Value> = listed.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["agent"] == agent.as_str())
        .cloned()
        .collect();
    assert_eq!(tasks.len(), 1, "one task for {agent}: {listed:?}");
    tasks[0].clone()
}

async fn task_state(broker: &TestBroker, task_id: &str) -> Value {
    let approver = broker.approver("ann").await;
    let shown = broker
        .get(&format!("/v1/tasks/{task_id}"), Some(&approver))
        .await;
    assert_eq!(shown.status, 200, "{shown:?}");
    shown.body
}

/// A plain JSON-RPC `tools/list` POST to `/mcp`.
async fn mcp_list(broker: &TestBroker, token: Option<&str>) -> reqwest::Response {
    let mut request =
        crate::common::mcp_request(&broker.http, &broker.url, 1, "tools/list", json!({}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The tool names `token` sees at `/mcp`, sorted.
pub(crate) async fn mcp_tools(broker: &TestBroker, token: &str) -> Vec<String> {
    let response = mcp_list(broker, Some(token)).await;
    assert_eq!(response.status(), 200, "tools/list at /mcp");
    let listed: Value = response.json().await.unwrap();
    let mut names: Vec<String> = listed["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The status and WWW-Authenticate of a `tools/list` at `/mcp` with `token`.
async fn mcp_refused(broker: &TestBroker, token: Option<&str>) -> (u16, String) {
    let response = mcp_list(broker, token).await;
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (response.status().as_u16(), challenge)
}

fn sorted(values: &Value) -> Vec<String> {
    let mut out: Vec<String> = values
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {values}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// The HTML with every `value="…"` emptied and the user names blanked: what is left of a
/// page once what was typed in and the fresh CSRF token are taken out.
fn without_values(html: &str, names: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(at) = rest.find("value=\"") {
        out.push_str(&rest[..at + 7]);
        rest = &rest[at + 7..];
        match rest.find('"') {
            Some(end) => rest = &rest[end..],
            None => break,
        }
    }
    out.push_str(rest);
    names
        .iter()
        .fold(out, |page, name| page.replace(*name, "USER"))
}

// ------------------------------------------------------------------------- metadata

#[tokio::test]
async fn the_metadata_documents_name_leash_as_the_authorization_server_of_mcp() {
    let broker = broker().await;
    let url = broker.url.clone();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let prm = broker.get(path, None).await;
        assert_eq!(prm.status, 200, "{path}: {prm:?}");
        assert_eq!(prm.body["resource"], format!("{url}/mcp"), "{path}");
        assert_eq!(prm.body["authorization_servers"], json!([url]), "{path}");
        assert_eq!(prm.body["bearer_methods_supported"], json!(["header"]));
        let scopes = sorted(&prm.body["scopes_supported"]);
        assert!(scopes.contains(&"web.search".to_string()), "{prm:?}");
    }

    let asm = broker
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(asm.status, 200, "{asm:?}");
    let m = &asm.body;
    assert_eq!(
        m["issuer"],
        url.as_str(),
        "the issuer has no trailing slash"
    );
    assert_eq!(
        m["authorization_endpoint"],
        format!("{url}/oauth/authorize")
    );
    assert_eq!(m["token_endpoint"], format!("{url}/oauth/token"));
    assert_eq!(m["registration_endpoint"], format!("{url}/oauth/register"));
    assert_eq!(m["revocation_endpoint"], format!("{url}/oauth/revoke"));
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(
        sorted(&m["grant_types_supported"]),
        vec!["authorization_code", "refresh_token"]
    );
    assert_eq!(
        m["code_challenge_methods_supported"],
        json!(["S256"]),
        "PKCE S256 only, never plain"
    );
    assert_eq!(m["token_endpoint_auth_methods_supported"], json!(["none"]));
    assert_eq!(m["authorization_response_iss_parameter_supported"], true);
    assert!(m["scopes_supported"].is_array(), "{m}");
}

// --------------------------------------------------------------------- registration

#[tokio::test]
async fn registration_accepts_public_clients_with_safe_redirect_uris() {
    let broker = broker().await;
    let reply = broker
        .post(
            "/oauth/register",
            None,
            json!({"redirect_uris": [LOOPBACK], "client_name": CLIENT_NAME,
                   "token_endpoint_auth_method": "none",
                   "grant_types": ["authorization_code", "refresh_token"],
                   "response_types": ["code"]}),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let r = &reply.body;
    assert!(
        r["client_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{r}"
    );
    assert!(r["client_id_issued_at"].is_u64(), "{r}");
    assert_eq!(r["client_name"], CLIENT_NAME);
    assert_eq!(r["redirect_uris"], json!([LOOPBACK]));
    assert_eq!(r["token_endpoint_auth_method"], "none");
    assert_eq!(
        sorted(&r["grant_types"]),
        vec!["authorization_code", "refresh_token"]
    );
    assert_eq!(r["response_types"], json!(["code"]));

    // What the MCP Python SDK sends, extra RFC 7591 / OIDC members included.
    let sdk = broker
        .post(
            "/oauth/register",
            None,
            json!({"redirect_uris": ["http://127.0.0.1:8976/callback"],
                   "client_name": "python-sdk-test", "token_endpoint_auth_method": "none",
                   "grant_types": ["authorization_code", "refresh_token"],
                   "response_types": ["code"], "scope": "web.search",
                   "application_type": "native"}),
        )
        .await;
    assert_eq!(
        sdk.status, 201,
        "unknown client metadata is ignored: {sdk:?}"
    );

    for redirect in [
        "https://app.example.org/callback",
        "http://localhost:33418/cb",
        "http://[::1]:33418/cb",
        "com.example.app:/oauth/callback",
    ] {
        let reply = broker
            .post(
                "/oauth/register",
                None,
                json!({"redirect_uris": [redirect]}),
            )
            .await;
        assert_eq!(reply.status, 201, "{redirect}: {reply:?}");
        assert_eq!(reply.body["redirect_uris"], json!([redirect]));
    }
}

#[tokio::test]
async fn registration_refuses_redirect_uris_that_could_leak_a_code() {
    let broker = broker().await;
    let redirect_error = ["invalid_redirect_uri"];
    let either = ["invalid_redirect_uri", "invalid_client_metadata"];
    for (what, body, codes) in [
        (
            "plain http off loopback",
            json!({"redirect_uris": ["http://evil.example/cb"]}),
            &redirect_error[..],
        ),
        (
            "javascript:",
            json!({"redirect_uris": ["javascript:alert(1)"]}),
            &redirect_error[..],
        ),
        (
            "data:",
            json!({"redirect_uris": ["data:text/html,<script>1</script>"]}),
            &redirect_error[..],
        ),
        (
            "file:",
            json!({"redirect_uris": ["file:///etc/passwd"]}),
            &redirect_error[..],
        ),
        (
            "a fragment",
            json!({"redirect_uris": ["http://127.0.0.1:8976/cb#frag"]}),
            &redirect_error[..],
        ),
        (
            "one bad among good",
            json!({"redirect_uris": ["https://app.example.org/cb", "http://evil.example/cb"]}),
            &redirect_error[..],
        ),
        (
            "not a URI",
            json!({"redirect_uris": ["not a uri"]}),
            &redirect_error[..],
        ),
        ("an empty list", json!({"redirect_uris": []}), &either[..]),
        ("no redirect_uris", json!({"client_name": "x"}), &either[..]),
        (
            "redirect_uris not a list",
            json!({"redirect_uris": "http://127.0.0.1:8976/cb"}),
            &either[..],
        ),
    ] {
        let reply = broker.post("/oauth/register", None, body).await;
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
        let code = reply.body["error"].as_str().unwrap_or("");
        assert!(codes.contains(&code), "{what}: {reply:?}");
        assert!(
            reply.body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}: {reply:?}"
        );
    }
    let not_json = broker
        .http
        .post(format!("{}/oauth/register", broker.url))
        .header("content-type", "application/json")
        .body("{\"redirect_uris\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400, "truncated JSON");
    let body: Value = not_json.json().await.unwrap_or(Value::Null);
    assert!(
        either.contains(&body["error"].as_str().unwrap_or("")),
        "truncated JSON: {body}"
    );
}

// ------------------------------------------------------------------ the happy path

#[tokio::test]
async fn a_user_signs_in_consents_and_the_client_uses_and_refreshes_its_mcp_token() {
    let broker = broker().await;
    let app = App::register(&broker, LOOPBACK).await;
    let mut browser = Browser::new(&broker);
    let path = app.authorize(&broker, "xyz-state", Some("web.search fs.read"));

    // Not signed in: to the sign-in page, which comes back here.
    let first = browser.get(&path).await;
    assert_eq!(first.status, 303, "{first:?}");
    let to_signin = first.location.clone().unwrap();
    assert!(to_signin.starts_with("/signin?next="), "{to_signin}");
    assert!(
        same_target(&query_of(&to_signin)["next"], &path),
        "{to_signin}"
    );
    let signin_page = browser.get(&to_signin).await;
    assert_eq!(signin_page.status, 200);
    let signin = read_form(&signin_page.body, "/signin");
    assert_eq!(signin.kind_of("username"), Some("text"));
    assert_eq!(signin.kind_of("password"), Some("password"));
    assert!(same_target(signin.value("next").unwrap(), &path));
    assert_eq!(
        signin.value("csrf"),
        browser.cookie("leash_csrf"),
        "double-submit CSRF: the field equals the cookie"
    );
    let mut fields = signin.filled();
    set(&mut fields, "username", "alice");
    set(&mut fields, "password", ALICE_PASSWORD);
    let signed = browser.post_form("/signin", &fields).await;
    assert_eq!(signed.status, 303, "{signed:?}");
    assert!(
        same_target(signed.location.as_deref().unwrap_or(""), &path),
        "back to the authorization request: {signed:?}"
    );
    let session = signed
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("leash_session="))
        .unwrap_or_else(|| panic!("a session cookie: {signed:?}"));
    let attributes = session.to_ascii_lowercase().replace(' ', "");
    assert!(attributes.contains(";httponly"), "{session}");
    assert!(attributes.contains(";samesite=lax"), "{session}");
    assert!(attributes.contains(";path=/"), "{session}");

    // The consent page is a task request within alice's grant.
    let page = browser.get(&path).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains(CLIENT_NAME),
        "the client's name is shown"
    );
    assert!(
        page.body.contains("127.0.0.1"),
        "the redirect host is shown"
    );
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'none'"), "strict CSP: {csp}");
    assert!(
        csp.contains("frame-ancestors 'none'")
            || page
                .header("x-frame-options")
                .is_some_and(|v| v.eq_ignore_ascii_case("deny")),
        "the consent page cannot be framed (clickjacking): {csp}"
    );
    let form = read_form(&page.body, "/oauth/authorize");
    for hidden in [
        "client_id",
        "redirect_uri",
        "code_challenge",
        "code_challenge_method",
        "state",
        "resource",
        "scope",
        "csrf",
    ] {
        assert_eq!(form.kind_of(hidden), Some("hidden"), "hidden {hidden}");
    }
    assert_eq!(form.value("client_id"), Some(app.id.as_str()));
    assert_eq!(form.value("redirect_uri"), Some(LOOPBACK));
    assert_eq!(form.value("state"), Some("xyz-state"));
    assert!(
        form.value("purpose").is_some_and(|p| !p.is_empty()),
        "a purpose is prefilled"
    );
    let mut offered = form.checkboxes("tools");
    offered.sort();
    assert_eq!(
        offered,
        vec![
            ("fs.read".to_string(), true),
            ("fs.write".to_string(), false),
            ("web.search".to_string(), true),
        ],
        "only alice's grant is offered, preselected from the scope"
    );
    assert!(
        !page.body.contains("shell.exec"),
        "no tool outside the grant"
    );
    let ttl = form.options("ttl_seconds");
    assert_eq!(ttl.iter().filter(|(_, s)| *s).count(), 1, "{ttl:?}");
    for (value, _) in &ttl {
        let seconds: u64 = value.parse().unwrap();
        assert!((1..=3600).contains(&seconds), "within the grant: {ttl:?}");
    }
    let mut buttons = form.buttons("decision");
    buttons.sort();
    assert_eq!(buttons, vec!["allow", "deny"]);

    // Allow: a code, the state and Leash's issuer at the redirect URI.
    let answer = browser
        .post_form("/oauth/authorize", &choose(&form, None, "allow"))
        .await;
    let code = code_of(&broker, &app, "xyz-state", &answer);

    // The code for tokens.
    let reply = app.exchange(&broker, &code).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    let expires_in = reply.body["expires_in"].as_u64().unwrap();
    assert!((1..=900).contains(&expires_in), "{reply:?}");
    let mut scope: Vec<&str> = reply.body["scope"].as_str().unwrap().split(' ').collect();
    scope.sort();
    assert_eq!(scope, vec!["fs.read", "web.search"]);
    let (access, refresh) = (reply.access(), reply.refresh());

    // The access token is the task token, for /mcp only.
    let task = task_of(&broker, &app.id).await;
    let task_id = task["task_id"].as_str().unwrap().to_string();
    let shown = task_state(&broker, &task_id).await;
    assert_eq!(shown["agent"], format!("client:{}", app.id));
    assert_eq!(shown["user"], "alice");
    assert_eq!(shown["state"], "active");
    assert_eq!(sorted(&shown["tools"]), vec!["fs.read", "web.search"]);
    let biscuit = biscuit_auth::Biscuit::from_base64(&access, broker.public_key().await)
        .expect("the access token is a Biscuit from Leash's root key");
    let authority = biscuit.print_block_source(0).unwrap();
    for fact in [
        format!("task(\"{task_id}\")"),
        format!("agent(\"client:{}\")", app.id),
        "user(\"alice\")".to_string(),
        "tool(\"fs.read\")".to_string(),
        "tool(\"web.search\")".to_string(),
        format!("audience(\"{}/mcp\")", broker.url),
    ] {
        assert!(authority.contains(&fact), "{fact} in {authority}");
    }
    assert!(!authority.contains("tool(\"fs.write\")"), "{authority}");
    assert_eq!(
        mcp_tools(&broker, &access).await,
        vec!["fs.read", "web.search"]
    );
    let call = crate::common::mcp_request(
        &broker.http,
        &broker.url,
        2,
        "tools/call",
        json!({"name": "web.search", "arguments": {"query": "oauth"}}),
    )
    .bearer_auth(&access)
    .send()
    .await
    .unwrap();
    assert_eq!(call.status(), 200);
    let call: Value = call.json().await.unwrap();
    assert_eq!(call["result"]["isError"], false, "{call}");
    let elsewhere = broker.get("/v1/tools", Some(&access)).await;
    assert_eq!(
        (elsewhere.status, elsewhere.code()),
        (401, "token_invalid"),
        "the audience is /mcp only: {elsewhere:?}"
    );
    let before = broker.upstream.count();
    let direct = broker
        .call(&access, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!((direct.status, direct.code()), (401, "token_invalid"));
    assert_eq!(broker.upstream.count(), before);

    // A refresh renews the access token and rotates the refresh token.
    let renewed = app.refresh(&broker, &refresh).await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    assert_eq!(renewed.cache_control.as_deref(), Some("no-store"));
    let (access2, refresh2) = (renewed.access(), renewed.refresh());
    assert_ne!(access2, access);
    assert_ne!(refresh2, refresh);
    assert_eq!(
        mcp_tools(&broker, &access2).await,
        vec!["fs.read", "web.search"]
    );
    let renewed_again = app.refresh(&broker, &refresh2).await;
    assert_eq!(
        renewed_again.status, 200,
        "the new refresh token works: {renewed_again:?}"
    );
    let access3 = renewed_again.access();

    // The old refresh token again: a stolen token replayed. The grant ends.
    let replayed = app.refresh(&broker, &refresh).await;
    replayed.assert_error("invalid_grant", "a rotated refresh token reused");
    assert_eq!(task_state(&broker, &task_id).await["state"], "revoked");
    let (status, _) = mcp_refused(&broker, Some(&access3)).await;
    assert_eq!(status, 401, "the task is revoked");
    app.refresh(&broker, &renewed_again.refresh())
        .await
        .assert_error("invalid_grant", "a refresh of a revoked task");
}

#[tokio::test]
async fn without_a_scope_the_consent_page_preselects_the_whole_grant() {
    let broker = broker().await;
    let consent = consent(&broker, "alice", ALICE_PASSWORD, None).await;
    assert!(consent.page.body.contains(CLIENT_NAME));
    assert!(
        consent.form.value("scope").is_none_or(str::is_empty),
        "no scope asked"
    );
    let mut offered = consent.form.checkboxes("tools");
    offered.sort();
    assert_eq!(
        offered,
        vec![
            ("fs.read".to_string(), true),
            ("fs.write".to_string(), true),
            ("web.search".to_string(), true),
        ]
    );
}

#[tokio::test]
async fn a_scope_beyond_the_grant_offers_only_the_grant() {
    // MCP clients ask for every scope the resource advertises; the person is offered
    // their grant only, preselected where the scope and the grant meet.
    let broker = broker().await;
    let consent = consent(&broker, "alice", ALICE_PASSWORD, Some("shell.exec fs.read")).await;
    let mut offered = consent.form.checkboxes("tools");
    offered.sort();
    assert_eq!(
        offered,
        vec![
            ("fs.read".to_string(), true),
            ("fs.write".to_string(), false),
            ("web.search".to_string(), false),
        ]
    );
    assert!(
        !consent.page.body.contains("shell.exec\""),
        "{}",
        consent.page.body
    );
}

#[tokio::test]
async fn the_tools_the_user_ticks_not_the_ones_asked_for_are_granted() {
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search fs.read")).await;
    let code = consent.allow(&broker, Some(&["web.search"][..])).await;
    let reply = consent.app.exchange(&broker, &code).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["scope"], "web.search");
    assert_eq!(
        mcp_tools(&broker, &reply.access()).await,
        vec!["web.search"]
    );
}

#[tokio::test]
async fn a_forged_consent_cannot_reach_past_the_users_grant() {
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let answer = consent
        .decide(Some(&["web.search", "shell.exec"][..]), "allow")
        .await;
    let query = answer.redirect_query();
    if let Some(code) = query.get("code") {
        // Accepted: then only what the grant holds was granted.
        let reply = consent.app.exchange(&broker, code).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            !mcp_tools(&broker, &reply.access())
                .await
                .contains(&"shell.exec".to_string())
        );
    } else {
        assert!(
            answer.status == 400 || answer.status == 403 || query.contains_key("error"),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn a_loopback_redirect_may_differ_only_in_its_port() {
    let broker = broker().await;
    let app = App::register(&broker, LOOPBACK).await;
    let mut browser = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    let other_port = "http://127.0.0.1:5555/callback";
    let mut params = app.params(&broker, "s1", Some("web.search"));
    set(&mut params, "redirect_uri", other_port);
    let page = browser.get(&authorize_path(&params)).await;
    assert_eq!(page.status, 200, "RFC 8252: any port on loopback: {page:?}");
    let form = read_form(&page.body, "/oauth/authorize");
    assert_eq!(form.value("redirect_uri"), Some(other_port));
    let answer = browser
        .post_form("/oauth/authorize", &choose(&form, None, "allow"))
        .await;
    let location = answer.location.clone().unwrap_or_default();
    assert!(
        location.starts_with(&format!("{other_port}?")),
        "{answer:?}"
    );
    let code = answer.redirect_query()["code"].clone();
    let resource = resource(&broker);
    let reply = token(
        &broker,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", other_port),
            ("client_id", app.id.as_str()),
            ("code_verifier", app.verifier.as_str()),
            ("resource", resource.as_str()),
        ],
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "the same redirect URI as authorized: {reply:?}"
    );
}

// ------------------------------------------------------------------------ bad input

#[tokio::test]
async fn a_wrong_pkce_verifier_is_invalid_grant() {
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let code = consent.allow(&broker, None).await;
    let (other_verifier, _) = pkce();
    let resource = resource(&broker);
    let reply = token(
        &broker,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", LOOPBACK),
            ("client_id", consent.app.id.as_str()),
            ("code_verifier", other_verifier.as_str()),
            ("resource", resource.as_str()),
        ],
    )
    .await;
    reply.assert_error("invalid_grant", "a wrong code_verifier");
    assert!(reply.body.get("access_token").is_none());
    // The code is spent: its task cannot be reached any more, so it ends.
    let task = task_of(&broker, &consent.app.id).await;
    assert_eq!(task["state"], "revoked", "{task}");
}

#[tokio::test]
async fn a_code_used_twice_is_invalid_grant_and_revokes_its_task() {
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let code = consent.allow(&broker, None).await;
    let first = consent.app.exchange(&broker, &code).await;
    assert_eq!(first.status, 200, "{first:?}");
    let access = first.access();
    assert_eq!(mcp_tools(&broker, &access).await, vec!["web.search"]);
    let task_id = task_of(&broker, &consent.app.id).await["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    let second = consent.app.exchange(&broker, &code).await;
    second.assert_error("invalid_grant", "a code used twice");
    assert_eq!(task_state(&broker, &task_id).await["state"], "revoked");
    let (status, _) = mcp_refused(&broker, Some(&access)).await;
    assert_eq!(status, 401, "the first use's token dies with its task");
    consent
        .app
        .refresh(&broker, &first.refresh())
        .await
        .assert_error("invalid_grant", "the first use's refresh token");
}

#[tokio::test]
async fn a_redirect_uri_or_client_other_than_the_authorized_one_is_invalid_grant() {
    let broker = broker().await;
    let resource = resource(&broker);
    let other = App::register(&broker, LOOPBACK).await;
    let mut browser = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    for (what, redirect, other_client) in [
        ("another port", "http://127.0.0.1:8977/callback", false),
        ("another path", "http://127.0.0.1:8976/other", false),
        ("no redirect_uri", "", false),
        ("another client", LOOPBACK, true),
    ] {
        // A fresh code each time: a code is spent by its first redemption, right or wrong.
        let app = App::register(&broker, LOOPBACK).await;
        let code = code_with(&broker, &mut browser, &app, Some("web.search")).await;
        let client = if other_client {
            other.id.as_str()
        } else {
            app.id.as_str()
        };
        let reply = token(
            &broker,
            &[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("client_id", client),
                ("code_verifier", app.verifier.as_str()),
                ("resource", resource.as_str()),
            ],
        )
        .await;
        if redirect.is_empty() {
            // OAuth 2.1 requires it when the request carried it.
            assert!(
                reply.body["error"] == "invalid_request" || reply.body["error"] == "invalid_grant",
                "{what}: {reply:?}"
            );
            assert_eq!(reply.status, 400, "{what}: {reply:?}");
        } else {
            reply.assert_error("invalid_grant", what);
        }
        assert!(reply.body.get("access_token").is_none(), "{what}");
    }
}

#[tokio::test]
async fn an_unknown_client_at_authorize_is_an_error_page_and_never_a_redirect() {
    let broker = broker().await;
    let app = App::register(&broker, LOOPBACK).await;
    let mut params = app.params(&broker, "s", Some("web.search"));
    set(&mut params, "client_id", "no-such-client");
    set(&mut params, "redirect_uri", "https://evil.example/steal");
    let path = authorize_path(&params);

    // Not signed in: no way off-site either.
    let mut stranger = Browser::new(&broker);
    let anonymous = stranger.get(&path).await;
    if let Some(location) = &anonymous.location {
        assert!(
            !location.contains("evil.example") || location.starts_with("/signin"),
            "{location}"
        );
        assert!(
            location.starts_with('/') || location.starts_with(&broker.url),
            "{location}"
        );
    }

    let mut browser = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    let page = browser.get(&path).await;
    assert_eq!(page.status, 400, "{page:?}");
    assert!(page.location.is_none(), "no redirect: {page:?}");
    assert!(
        page.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "an HTML page: {page:?}"
    );
}

#[tokio::test]
async fn an_unregistered_redirect_uri_is_refused_without_redirecting_there() {
    let broker = broker().await;
    let app = App::register(&broker, LOOPBACK).await;
    let mut browser = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    for redirect in [
        "https://evil.example/callback",
        "http://evil.example:8976/callback",
        "http://127.0.0.1:8976/elsewhere",
        "http://127.0.0.1:8976/callback/more",
        "http://127.0.0.1:8976/callback?x=1",
        "http://localhost:8976/callback",
        "https://127.0.0.1:8976/callback",
    ] {
        let mut params = app.params(&broker, "s", Some("web.search"));
        set(&mut params, "redirect_uri", redirect);
        let page = browser.get(&authorize_path(&params)).await;
        assert_eq!(page.status, 400, "{redirect}: {page:?}");
        assert!(
            page.location.is_none(),
            "open redirect to {redirect}: {page:?}"
        );
    }
    // A bad redirect_uri is refused before anything else is looked at.
    let mut params = app.params(&broker, "s", Some("web.search"));
    set(&mut params, "redirect_uri", "https://evil.example/callback");
    set(&mut params, "response_type", "token");
    let page = browser.get(&authorize_path(&params)).await;
    assert_eq!(page.status, 400, "{page:?}");
    assert!(page.location.is_none(), "{page:?}");
}

#[tokio::test]
async fn bad_authorization_parameters_go_back_to_the_client_as_oauth_errors() {
    let broker = broker().await;
    let app = App::register(&broker, LOOPBACK).await;
    let mut browser = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    let v1 = format!("{}/v1", broker.url);
    for (name, what, value, codes) in [
        (
            "response_type",
            "token",
            Some("token"),
            &["unsupported_response_type"][..],
        ),
        (
            "response_type",
            "missing",
            None,
            &["invalid_request", "unsupported_response_type"][..],
        ),
        ("code_challenge", "missing", None, &["invalid_request"][..]),
        (
            "code_challenge_method",
            "plain",
            Some("plain"),
            &["invalid_request"][..],
        ),
        (
            "code_challenge_method",
            "missing",
            None,
            &["invalid_request"][..],
        ),
        (
            "resource",
            "another server",
            Some("https://evil.example/mcp"),
            &["invalid_target"][..],
        ),
        (
            "resource",
            "another path of Leash",
            Some(v1.as_str()),
            &["invalid_target"][..],
        ),
        (
            "scope",
            "an unknown tool",
            Some("web.search nothing.here"),
            &["invalid_scope"][..],
        ),
    ] {
        let mut params = app.params(&broker, "keep-me", Some("web.search"));
        match value {
            Some(value) => set(&mut params, name, value),
            None => params.retain(|(k, _)| k != name),
        }
        let answer = browser.get(&authorize_path(&params)).await;
        let what = format!("{name}: {what}");
        assert_eq!(answer.status, 303, "{what}: {answer:?}");
        let location = answer.location.clone().unwrap();
        assert!(
            location.starts_with(&format!("{LOOPBACK}?")),
            "{what}: {location}"
        );
        let query = answer.redirect_query();
        assert!(
            codes.contains(&query.get("error").map(String::as_str).unwrap_or("")),
            "{what}: {location}"
        );
        assert!(
            query
                .get("error_description")
                .is_some_and(|d| !d.is_empty()),
            "{what}: {location}"
        );
        assert_eq!(
            query.get("state").map(String::as_str),
            Some("keep-me"),
            "{what}"
        );
        assert_eq!(query.get("iss"), Some(&broker.url), "{what}");
        assert!(!query.contains_key("code"), "{what}: {location}");
    }
}

#[tokio::test]
async fn a_consent_without_its_csrf_token_is_403() {
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let fields = choose(&consent.form, None, "allow");
    let missing = consent
        .browser
        .post_form("/oauth/authorize", &without(&fields, "csrf"))
        .await;
    assert_eq!(missing.status, 403, "{missing:?}");
    assert!(missing.location.is_none(), "{missing:?}");
    let mut wrong = fields.clone();
    set(&mut wrong, "csrf", "not-the-token");
    let wrong = consent.browser.post_form("/oauth/authorize", &wrong).await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    assert!(wrong.location.is_none(), "{wrong:?}");

    // The form replayed by another site's page: the browser has no session cookie to send
    // along with it (SameSite=Lax), and the token alone is worth nothing.
    let mut elsewhere = Browser::new(&broker);
    let replayed = elsewhere.post_form("/oauth/authorize", &fields).await;
    assert!(
        !replayed.location.unwrap_or_default().contains("code="),
        "no code without the session"
    );
    // And nothing was granted: the real consent still works once.
    let code = consent.allow(&broker, None).await;
    assert_eq!(consent.app.exchange(&broker, &code).await.status, 200);
}

#[tokio::test]
async fn the_token_endpoint_answers_bad_requests_in_oauth_json() {
    let broker = broker().await;
    let app = App::register(&broker, LOOPBACK).await;
    for (what, fields, code) in [
        (
            "the password grant",
            vec![
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
            "unsupported_grant_type",
        ),
        (
            "client credentials",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", app.id.as_str()),
            ],
            "unsupported_grant_type",
        ),
        (
            "no grant_type",
            vec![("code", "abc"), ("client_id", app.id.as_str())],
            "invalid_request",
        ),
        (
            "a code grant without a code",
            vec![
                ("grant_type", "authorization_code"),
                ("client_id", app.id.as_str()),
            ],
            "invalid_request",
        ),
        (
            "a refresh without a token",
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", app.id.as_str()),
            ],
            "invalid_request",
        ),
        (
            "an unknown code",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "no-such-code"),
                ("redirect_uri", LOOPBACK),
                ("client_id", app.id.as_str()),
                ("code_verifier", app.verifier.as_str()),
            ],
            "invalid_grant",
        ),
        (
            "an unknown refresh token",
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "no-such-token"),
                ("client_id", app.id.as_str()),
            ],
            "invalid_grant",
        ),
    ] {
        let reply = token(&broker, &fields).await;
        reply.assert_error(code, what);
    }
    let empty = token::<&str, &str>(&broker, &[]).await;
    empty.assert_error("invalid_request", "an empty body");
    let json_body = broker
        .http
        .post(format!("{}/oauth/token", broker.url))
        .json(&json!({"grant_type": "authorization_code", "code": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_body.status(),
        400,
        "JSON is not the token endpoint's format"
    );
    let body: Value = json_body.json().await.unwrap_or(Value::Null);
    assert!(body["error"].is_string(), "{body}");
}

// ---------------------------------------------------------------- deny and approval

#[tokio::test]
async fn denying_consent_sends_access_denied_with_state_and_iss() {
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let answer = consent.decide(None, "deny").await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let location = answer.location.clone().unwrap();
    assert!(location.starts_with(&format!("{LOOPBACK}?")), "{location}");
    let query = answer.redirect_query();
    assert_eq!(
        query.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert_eq!(query.get("state"), Some(&consent.state));
    assert_eq!(query.get("iss"), Some(&broker.url));
    assert!(!query.contains_key("code"));
    let agent = format!("client:{}", consent.app.id);
    let tasks = broker.get("/v1/tasks", Some(ADMIN)).await;
    assert!(
        !tasks.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["agent"] == agent.as_str()),
        "no task for a denied grant: {tasks:?}"
    );
}

/// Bob (approval = "issuance") allows; the waiting page's pending path and the task id.
async fn bob_waits(broker: &TestBroker) -> (Consent, String, String) {
    let mut consent = consent(broker, "bob", BOB_PASSWORD, Some("web.search")).await;
    let waiting = consent.decide(None, "allow").await;
    assert_eq!(waiting.status, 200, "waiting for an approver: {waiting:?}");
    let at = waiting
        .body
        .find("/oauth/authorize/pending?task=")
        .unwrap_or_else(|| panic!("a link to the pending grant: {}", waiting.body));
    let task_id: String = waiting.body[at + "/oauth/authorize/pending?task=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(task_id.starts_with("tsk_"), "{task_id}");
    let pending = format!("/oauth/authorize/pending?task={task_id}");
    let still = consent.browser.get(&pending).await;
    assert_eq!(still.status, 200, "undecided: still waiting {still:?}");
    assert!(!still.location.unwrap_or_default().contains("code="));
    (consent, pending, task_id)
}

/// The pending issuance approval of `task_id`.
async fn approval_for(broker: &TestBroker, approver: &str, task_id: &str) -> String {
    let list = broker.get("/v1/approvals", Some(approver)).await;
    assert_eq!(list.status, 200, "{list:?}");
    let approval = list.body["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["task_id"] == task_id)
        .unwrap_or_else(|| panic!("an approval for {task_id}: {list:?}"))
        .clone();
    assert_eq!(approval["kind"], "issuance");
    approval["approval_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_approval_gated_user_waits_and_the_client_gets_its_code_once_approved() {
    let broker = broker().await;
    let approver = broker.approver("ann").await;
    let (mut consent, pending, task_id) = bob_waits(&broker).await;
    let approval = approval_for(&broker, &approver, &task_id).await;
    let decided = broker
        .post(
            &format!("/v1/approvals/{approval}/approve"),
            Some(&approver),
            json!({"note": "ok"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{decided:?}");
    let answer = consent.browser.get(&pending).await;
    let code = code_of(&broker, &consent.app, &consent.state, &answer);
    let reply = consent.app.exchange(&broker, &code).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        mcp_tools(&broker, &reply.access()).await,
        vec!["web.search"]
    );
    let shown = task_state(&broker, &task_id).await;
    assert_eq!(shown["user"], "bob");
    assert_eq!(shown["agent"], format!("client:{}", consent.app.id));
}

#[tokio::test]
async fn an_approval_gated_grant_an_approver_denies_ends_in_access_denied() {
    let broker = broker().await;
    let approver = broker.approver("ann").await;
    let (mut consent, pending, task_id) = bob_waits(&broker).await;
    let approval = approval_for(&broker, &approver, &task_id).await;
    let decided = broker
        .post(
            &format!("/v1/approvals/{approval}/deny"),
            Some(&approver),
            json!({"note": "no"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{decided:?}");
    let answer = consent.browser.get(&pending).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let query = answer.redirect_query();
    assert!(
        answer
            .location
            .as_deref()
            .unwrap()
            .starts_with(&format!("{LOOPBACK}?")),
        "{answer:?}"
    );
    assert_eq!(
        query.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert_eq!(query.get("state"), Some(&consent.state));
    assert_eq!(query.get("iss"), Some(&broker.url));
    assert!(!query.contains_key("code"));
}

// ----------------------------------------------------------------------- signing in

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_401_and_no_session() {
    let broker = broker().await;
    let mut browser = Browser::new(&broker);
    let wrong = browser.sign_in("alice", "not-alices-password", "/ui").await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(
        !wrong
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("leash_session=")),
        "{wrong:?}"
    );
    assert!(browser.cookie("leash_session").is_none());
    let mut browser = Browser::new(&broker);
    let unknown = browser
        .sign_in("mallory", "not-alices-password", "/ui")
        .await;
    assert_eq!(unknown.status, 401, "{unknown:?}");
    assert!(browser.cookie("leash_session").is_none());
    assert_eq!(
        without_values(&wrong.body, &["alice", "mallory"][..]),
        without_values(&unknown.body, &["alice", "mallory"][..]),
        "the same answer: no account enumeration"
    );
    assert!(
        !wrong.body.contains("not-alices-password"),
        "the password is never echoed"
    );
}

#[tokio::test]
async fn sign_in_never_sends_the_browser_off_site() {
    let broker = broker().await;
    for next in [
        "//evil.example/x",
        "https://evil.example/x",
        "/\\evil.example/x",
        "evil.example",
        // Browsers drop tabs from URLs: "/<TAB>/evil.example" is "//evil.example".
        "/\t/evil.example/x",
        "/\t\\evil.example/x",
    ] {
        let mut browser = Browser::new(&broker);
        let answer = browser.sign_in("alice", ALICE_PASSWORD, next).await;
        assert_eq!(answer.status, 303, "{next}: {answer:?}");
        let location = answer.location.clone().unwrap();
        assert!(
            location == "/ui" || location == format!("{}/ui", broker.url),
            "next={next} went to {location}"
        );
    }
    let mut browser = Browser::new(&broker);
    let same_site = browser
        .sign_in("alice", ALICE_PASSWORD, "/ui/approvals?x=1")
        .await;
    assert_eq!(same_site.location.as_deref(), Some("/ui/approvals?x=1"));
}

#[tokio::test]
async fn signing_out_ends_the_session() {
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let session = consent.browser.cookie("leash_session").unwrap().to_string();
    let csrf = consent.form.value("csrf").unwrap().to_string();
    let out = consent
        .browser
        .post_form("/signout", &[("csrf", csrf.as_str())])
        .await;
    assert_eq!(out.status, 303, "{out:?}");
    let location = out.location.clone().unwrap();
    assert!(
        location.starts_with("/signin") || location.starts_with(&format!("{}/signin", broker.url)),
        "{location}"
    );
    let path = consent.app.authorize(&broker, "s2", Some("web.search"));
    let again = consent.browser.get(&path).await;
    assert_eq!(again.status, 303, "{again:?}");
    assert!(again.location.unwrap().contains("/signin?next="));
    // The old cookie, kept by a thief, is dead on the server too.
    let mut thief = Browser::new(&broker);
    thief.cookies.insert("leash_session".into(), session);
    let stolen = thief.get(&path).await;
    assert_eq!(stolen.status, 303, "{stolen:?}");
    assert!(stolen.location.unwrap().contains("/signin?next="));
}

/// A sign-out the store cannot record (the database held by another process for longer
/// than the broker waits) is a 503 page saying so: the session goes on working, so the
/// page must not claim otherwise, and no `user.signed_out` is audited.
#[tokio::test]
async fn a_sign_out_the_store_cannot_record_says_you_are_still_signed_in() {
    use sqlx::ConnectOptions;
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let csrf = consent.form.value("csrf").unwrap().to_string();
    broker.state.audit.flush().await;
    let mut holder = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(broker.data.path().join("leash.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let out = consent
        .browser
        .post_form("/signout", &[("csrf", csrf.as_str())])
        .await;
    assert_eq!(out.status, 503, "{out:?}");
    assert!(out.body.contains("still signed in"), "{}", out.body);
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let path = consent.app.authorize(&broker, "s2", Some("web.search"));
    let still = consent.browser.get(&path).await;
    assert_eq!(still.status, 200, "the session was kept: {still:?}");
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    let kinds: Vec<&str> = audit.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"user.signed_in"), "{kinds:?}");
    assert!(!kinds.contains(&"user.signed_out"), "{kinds:?}");
}

#[tokio::test]
async fn too_many_failed_sign_ins_are_429() {
    // Whatever counts the failures, it is on as in production (TestBroker turns the
    // bearer-failure limit off).
    let broker = broker_tuned(|c| c.auth_failure_limit = 20).await;
    let mut throttled = false;
    for _ in 0..40 {
        let mut browser = Browser::new(&broker);
        let answer = browser
            .sign_in("alice", "wrong-password-guess", "/ui")
            .await;
        assert!(answer.status == 401 || answer.status == 429, "{answer:?}");
        if answer.status == 429 {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "40 wrong passwords in a row and never a 429");
    let mut browser = Browser::new(&broker);
    let right = browser.sign_in("alice", ALICE_PASSWORD, "/ui").await;
    assert_eq!(
        right.status, 429,
        "still throttled, even with the right password: {right:?}"
    );
    assert!(browser.cookie("leash_session").is_none());
}

#[tokio::test]
async fn sign_ins_and_failures_are_audited_and_no_password_is() {
    let broker = broker().await;
    let mut browser = Browser::new(&broker);
    let failed = browser.sign_in("alice", "Wrong-Guess-4711", "/ui").await;
    assert_eq!(failed.status, 401);
    signed_in(&broker, "alice", ALICE_PASSWORD).await;
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    let events = audit.body["events"].as_array().unwrap();
    let signed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "user.signed_in")
        .collect();
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "user.sign_in_failed")
        .collect();
    assert_eq!(signed.len(), 1, "{audit:?}");
    assert_eq!(failures.len(), 1, "{audit:?}");
    assert!(signed[0].to_string().contains("alice"), "{}", signed[0]);
    assert!(failures[0].to_string().contains("alice"), "{}", failures[0]);
    let text = audit.body.to_string();
    assert!(
        !text.contains(ALICE_PASSWORD),
        "the password is in the audit"
    );
    assert!(
        !text.contains("Wrong-Guess-4711"),
        "a guessed password is in the audit"
    );
}

// ----------------------------------------------------------------------- revocation

#[tokio::test]
async fn revoking_the_access_token_ends_the_task() {
    let broker = broker().await;
    let g = granted(&broker, &["web.search"]).await;
    let response = broker
        .http
        .post(format!("{}/oauth/revoke", broker.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("token", g.access.as_str()),
            ("client_id", g.app.id.as_str()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(task_state(&broker, &g.task_id).await["state"], "revoked");
    let (status, _) = mcp_refused(&broker, Some(&g.access)).await;
    assert_eq!(status, 401);
    g.app
        .refresh(&broker, &g.refresh)
        .await
        .assert_error("invalid_grant", "the refresh token of a revoked grant");
}

#[tokio::test]
async fn revoking_the_refresh_token_ends_the_task() {
    let broker = broker().await;
    let g = granted(&broker, &["web.search"]).await;
    let response = broker
        .http
        .post(format!("{}/oauth/revoke", broker.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("token", g.refresh.as_str()),
            ("token_type_hint", "refresh_token"),
            ("client_id", g.app.id.as_str()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(task_state(&broker, &g.task_id).await["state"], "revoked");
    let (status, _) = mcp_refused(&broker, Some(&g.access)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn revoking_an_unknown_token_is_200_and_changes_nothing() {
    let broker = broker().await;
    let g = granted(&broker, &["web.search"]).await;
    for unknown in ["no-such-token", "", "eyJhbGciOiJub25lIn0.e30."] {
        let response = broker
            .http
            .post(format!("{}/oauth/revoke", broker.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("token", unknown),
                ("client_id", g.app.id.as_str()),
            ]))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        // RFC 7009 §2.2: an invalid token is 200; a missing one may be invalid_request.
        assert!(
            status == 200 || (unknown.is_empty() && status == 400),
            "{unknown:?}: {status}"
        );
    }
    assert_eq!(task_state(&broker, &g.task_id).await["state"], "active");
    assert_eq!(mcp_tools(&broker, &g.access).await, vec!["web.search"]);
}

#[tokio::test]
async fn an_approver_revoking_the_task_ends_the_clients_access_on_its_next_call() {
    let broker = broker().await;
    let g = granted(&broker, &["web.search", "fs.read"]).await;
    assert_eq!(
        mcp_tools(&broker, &g.access).await,
        vec!["fs.read", "web.search"]
    );
    let approver = broker.approver("ann").await;
    let revoked = broker
        .post(
            &format!("/v1/tasks/{}/revoke", g.task_id),
            Some(&approver),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let (status, challenge) = mcp_refused(&broker, Some(&g.access)).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            broker.url
        )),
        "{challenge}"
    );
    g.app
        .refresh(&broker, &g.refresh)
        .await
        .assert_error("invalid_grant", "a refresh after the task was revoked");
}

#[tokio::test]
async fn mcp_without_a_token_challenges_with_the_metadata_url_and_a_scope() {
    let broker = broker().await;
    let (status, challenge) = mcp_refused(&broker, None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            broker.url
        )),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\""), "{challenge}");
    assert!(
        !challenge.contains("error="),
        "no token, no error code: {challenge}"
    );
    let (status, challenge) = mcp_refused(&broker, Some("not-a-token")).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn an_access_token_lives_its_configured_lifetime_and_a_refresh_renews_it() {
    let broker = broker_tuned(|c| c.access_token_ttl = Duration::from_secs(2)).await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let code = consent.allow(&broker, None).await;
    let reply = consent.app.exchange(&broker, &code).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let expires_in = reply.body["expires_in"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&expires_in),
        "the configured 2 s: {reply:?}"
    );
    assert_eq!(
        mcp_tools(&broker, &reply.access()).await,
        vec!["web.search"]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = mcp_refused(&broker, Some(&reply.access())).await;
    assert_eq!(status, 401, "expired");
    let renewed = consent.app.refresh(&broker, &reply.refresh()).await;
    assert_eq!(
        renewed.status, 200,
        "the task's window is still open: {renewed:?}"
    );
    assert_eq!(
        mcp_tools(&broker, &renewed.access()).await,
        vec!["web.search"]
    );
}

#[tokio::test]
async fn an_allowed_grant_whose_code_is_never_redeemed_ends_its_task() {
    // Allow opens the task at once; a client that never comes back for its code must
    // not leave a live task behind.
    let broker = broker().await;
    let mut consent = consent(&broker, "alice", ALICE_PASSWORD, Some("web.search")).await;
    let code = consent.allow(&broker, None).await;
    let task = task_of(&broker, &consent.app.id).await;
    let task_id = task["task_id"].as_str().unwrap().to_string();
    assert_eq!(task["state"], "active");
    broker.state.clock.advance(Duration::from_secs(61));
    let mut state = Value::Null;
    for _ in 0..100 {
        state = task_state(&broker, &task_id).await["state"].clone();
        if state == "revoked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "revoked", "the sweeper ended the task");
    consent
        .app
        .exchange(&broker, &code)
        .await
        .assert_error("invalid_grant", "a code past its minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_outrun_the_sign_in_throttle() {
    let broker = broker().await;
    let mut browser = Browser::new(&broker);
    let page = browser.get("/signin?next=/ui").await;
    let mut fields = read_form(&page.body, "/signin").filled();
    set(&mut fields, "username", "alice");
    set(
        &mut fields,
        "password",
        "a wrong guess, sent 30 times at once",
    );
    let cookie = format!("leash_csrf={}", browser.cookie("leash_csrf").unwrap());
    let body = form_body(&fields);
    let mut guesses = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let request = browser
            .http
            .post(format!("{}/signin", broker.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", cookie.clone())
            .body(body.clone());
        guesses.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    let statuses = guesses.join_all().await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 5, "{checked} guesses were checked: {statuses:?}");
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    // Alice's own password is refused too until the account's budget refills.
    let mut alice = Browser::new(&broker);
    let answer = alice.sign_in("alice", ALICE_PASSWORD, "/ui").await;
    assert_eq!(answer.status, 429, "{answer:?}");
}

#[tokio::test]
async fn an_approver_cannot_approve_the_request_of_their_own_client() {
    let broker = TestBroker::spawn_with(POLICY).await;
    broker
        .state
        .accounts
        .add("bob", BOB_PASSWORD, true)
        .await
        .unwrap();
    let (consent, _, task_id) = bob_waits(&broker).await;
    let ann = broker.approver("ann").await;
    let approval_id = approval_for(&broker, &ann, &task_id).await;
    let listed = broker.get("/v1/approvals", Some(&ann)).await;
    let shown = listed.body["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["approval_id"] == approval_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(shown["user"], "bob", "the card names the person: {shown}");
    // Bob is an approver, signed in; his own client's request is not his to approve.
    let mut bob = consent.browser;
    let session = bob.get("/v1/session").await;
    let csrf: Value = serde_json::from_str(&session.body).unwrap();
    let csrf = csrf["csrf"].as_str().unwrap().to_string();
    let request = bob
        .http
        .post(format!("{}/v1/approvals/{approval_id}/approve", broker.url))
        .header("x-leash-csrf", csrf)
        .header("content-type", "application/json")
        .body("{}");
    let refused = bob.send(request).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let approved = broker
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            Some(&ann),
            json!({}),
        )
        .await;
    assert_eq!(approved.status, 200, "another approver may: {approved:?}");
}

#[tokio::test]
async fn registrations_are_limited_per_address() {
    let broker = broker().await;
    let mut statuses = Vec::new();
    for _ in 0..21 {
        let reply = broker
            .post(
                "/oauth/register",
                None,
                json!({ "redirect_uris": [LOOPBACK], "client_name": "many" }),
            )
            .await;
        statuses.push((reply.status, reply.body["error"].clone()));
    }
    assert!(
        statuses[..20].iter().all(|(status, _)| *status == 201),
        "{statuses:?}"
    );
    assert_eq!(
        statuses[20],
        (429, json!("temporarily_unavailable")),
        "{statuses:?}"
    );
}

// ----------------------------------------------------- the official MCP Python SDK

/// The SDK asks for every scope Leash advertises (its challenge names every tool), which
/// is more than alice's grant: the consent page offers only her grant (no `shell.exec`),
/// and she ticks two of its three tools.
pub(crate) const INTEROP_POLICY: &str = r#"
[tools."shell.exec"]
upstream = "http://{UP}/exec"
input_schema = { type = "object" }

[tools."web.search"]
description = "Search the web"
upstream = "http://{UP}/search"
input_schema = { type = "object", properties = { query = { type = "string" } } }

[tools."fs.read"]
upstream = "http://{UP}/read"
input_schema = { type = "object", properties = { path = { type = "string" } } }

[tools."fs.write"]
upstream = "http://{UP}/write"
input_schema = { type = "object" }

[users.alice]
tools = ["fs.*", "web.search"]
max_ttl_seconds = 3600
"#;

fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/interop-venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it installs mcp and biscuit-python)",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_oauth_client_connects_refreshes_and_is_cut_off_by_revocation() {
    let broker = TestBroker::spawn_tuned(INTEROP_POLICY, |c| {
        c.access_token_ttl = Duration::from_secs(2);
    })
    .await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .expect("alice added");
    let approver = broker.approver("ann").await;
    let args = [
        format!("{}/mcp", broker.url),
        "alice".to_string(),
        ALICE_PASSWORD.to_string(),
        approver,
        "web.search,fs.read".to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script("mcp_oauth_client.py"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    println!("MCP OAuth interop: {report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(report.get("error").is_none(), "{report}\n{stderr}");
    assert_eq!(
        report["consented"],
        json!(["fs.read", "web.search"]),
        "{report}"
    );
    assert_eq!(
        report["tools"],
        json!(["fs.read", "web.search"]),
        "exactly the consented tools: {report}"
    );
    assert_eq!(report["call"]["is_error"], false, "{report}");
    assert_eq!(
        report["refreshed"], true,
        "a refresh, not a new authorization: {report}"
    );
    assert_eq!(report["after_refresh"]["is_error"], false, "{report}");
    assert_eq!(report["task"]["user"], "alice", "{report}");
    assert!(
        report["task"]["agent"]
            .as_str()
            .is_some_and(|a| a.starts_with("client:")),
        "{report}"
    );
    assert_eq!(report["revoke_status"], 200, "{report}");
    let after = &report["after_revoke"];
    assert!(
        after.get("error").is_some()
            || after.get("protocol_error").is_some()
            || after["is_error"] == true,
        "the client still got through after its task was revoked: {report}"
    );
    assert_eq!(
        report["resource_requested"],
        format!("{}/mcp", broker.url),
        "RFC 8707 resource: {report}"
    );
}
