//! Client ID metadata documents: a client whose `client_id` is an https URL is known by
//! the document found there. Served here by a real HTTPS server with a certificate made
//! in the test; Leash trusts its CA through `ca_bundle` and may fetch from 127.0.0.1 only
//! because the test lists that host. Every fence of the fetch is attacked: private
//! addresses, a name that resolves to one, a huge or slow document, a redirect, a
//! document naming another client or carrying a secret.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::TestBroker;
use crate::oauth::{
    ALICE_PASSWORD, App, POLICY, choose, code_of, mcp_tools, pkce, read_form, signed_in,
};
use crate::tls::{Ca, server_config};

/// An HTTPS server of metadata documents on 127.0.0.1; remembers the paths asked for.
struct DocumentServer {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    bundle: std::path::PathBuf,
}

impl Drop for DocumentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn document(client_id: &str, redirect: &str) -> String {
    json!({
        "client_id": client_id,
        "client_name": "Documented Client",
        "redirect_uris": [redirect],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
    })
    .to_string()
}

const REDIRECT: &str = "http://127.0.0.1:8977/callback";

impl DocumentServer {
    async fn start() -> DocumentServer {
        let ca = Ca::new("documents test CA");
        let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, ca.pem()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&cert, &key));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(path.clone());
                    let me = format!("https://127.0.0.1:{}", addr.port());
                    let (status, extra, body) = match path.as_str() {
                        "/client.json" => (
                            "200 OK",
                            "",
                            document(&format!("{me}/client.json"), REDIRECT),
                        ),
                        "/other.json" => (
                            "200 OK",
                            "",
                            document(&format!("{me}/client.json"), REDIRECT),
                        ),
                        "/secret.json" => {
                            let mut doc: serde_json::Value = serde_json::from_str(&document(
                                &format!("{me}/secret.json"),
                                REDIRECT,
                            ))
                            .unwrap();
                            doc["client_secret"] = json!("s3cret");
                            ("200 OK", "", doc.to_string())
                        }
                        "/huge.json" => {
                            let mut doc: serde_json::Value = serde_json::from_str(&document(
                                &format!("{me}/huge.json"),
                                REDIRECT,
                            ))
                            .unwrap();
                            doc["padding"] = json!("x".repeat(20 * 1024));
                            ("200 OK", "", doc.to_string())
                        }
                        "/slow.json" => {
                            tokio::time::sleep(Duration::from_secs(8)).await;
                            ("200 OK", "", document(&format!("{me}/slow.json"), REDIRECT))
                        }
                        "/redirect.json" => {
                            ("302 Found", "Location: /client.json\r\n", String::new())
                        }
                        _ => ("404 Not Found", "", String::new()),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        DocumentServer {
            addr,
            asked,
            task,
            _dir: dir,
            bundle,
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// A broker trusting the document server's CA; `private_hosts` may be fetched from
/// although they are loopback.
async fn broker(documents: &DocumentServer, private_hosts: &[&str]) -> TestBroker {
    let bundle = documents.bundle.clone();
    let hosts: Vec<String> = private_hosts.iter().map(|h| h.to_string()).collect();
    let broker = TestBroker::spawn_tuned(POLICY, move |c| {
        c.ca_bundle = Some(bundle);
        c.client_metadata_private_hosts = hosts;
    })
    .await;
    broker
        .state
        .accounts
        .add("alice", ALICE_PASSWORD, false)
        .await
        .unwrap();
    broker
}

fn app(client_id: &str) -> App {
    let (verifier, challenge) = pkce();
    App {
        id: client_id.to_string(),
        redirect: REDIRECT.to_string(),
        verifier,
        challenge,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_known_by_its_metadata_document_connects() {
    let documents = DocumentServer::start().await;
    let broker = broker(&documents, &["127.0.0.1"]).await;
    let metadata = broker
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(metadata.body["client_id_metadata_document_supported"], true);

    let client = app(&documents.url("127.0.0.1", "/client.json"));
    let mut browser = signed_in(&broker, "alice", ALICE_PASSWORD).await;
    let page = browser
        .get(&client.authorize(&broker, "st", Some("web.search")))
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("Documented Client"), "{}", page.body);
    assert!(
        page.body.contains("127.0.0.1"),
        "the client's host is shown"
    );
    let form = read_form(&page.body, "/oauth/authorize");
    let answer = browser
        .post_form("/oauth/authorize", &choose(&form, None, "allow"))
        .await;
    let code = code_of(&broker, &client, "st", &answer);
    let tokens = client.exchange(&broker, &code).await;
    assert_eq!(tokens.status, 200, "{tokens:?}");
    assert_eq!(
        mcp_tools(&broker, &tokens.access()).await,
        vec!["web.search"]
    );
    // A second authorization is served from the cache: one fetch in all.
    let again = browser
        .get(&client.authorize(&broker, "st2", Some("web.search")))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(documents.asked(), vec!["/client.json".to_string()]);
}

/// The authorization request for `client_id` is refused with a page (no redirect)
/// whose text contains `why`.
async fn refused(broker: &TestBroker, client_id: &str, why: &str) {
    let client = app(client_id);
    let mut browser = signed_in(broker, "alice", ALICE_PASSWORD).await;
    let page = browser
        .get(&client.authorize(broker, "st", Some("web.search")))
        .await;
    assert_eq!(page.status, 400, "{client_id}: {page:?}");
    assert!(page.location.is_none(), "never redirected: {page:?}");
    assert!(
        page.body.contains(why),
        "{client_id}: {why:?} in {}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_on_a_private_address_is_never_fetched() {
    let documents = DocumentServer::start().await;
    // No host is allowed to be private here.
    let broker = broker(&documents, &[]).await;
    refused(
        &broker,
        &documents.url("127.0.0.1", "/client.json"),
        "not a public address",
    )
    .await;
    // A name that resolves to a loopback address is refused by the resolver.
    refused(
        &broker,
        &documents.url("localhost", "/client.json"),
        "could not be fetched",
    )
    .await;
    assert!(documents.asked().is_empty(), "{:?}", documents.asked());
    // Cloud metadata and other private ranges are refused before any connection.
    for url in [
        "https://169.254.169.254/latest/meta-data/client.json",
        "https://10.0.0.1/client.json",
        "https://[::1]/client.json",
    ] {
        refused(&broker, url, "not a public address").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_slow_redirected_foreign_or_secret_bearing_documents_are_refused() {
    let documents = DocumentServer::start().await;
    let broker = broker(&documents, &["127.0.0.1"]).await;
    refused(
        &broker,
        &documents.url("127.0.0.1", "/huge.json"),
        "larger than 16 KiB",
    )
    .await;
    refused(
        &broker,
        &documents.url("127.0.0.1", "/redirect.json"),
        "answered HTTP 302",
    )
    .await;
    refused(
        &broker,
        &documents.url("127.0.0.1", "/other.json"),
        "names another client_id",
    )
    .await;
    refused(
        &broker,
        &documents.url("127.0.0.1", "/secret.json"),
        "client_secret",
    )
    .await;
    refused(
        &broker,
        &documents.url("127.0.0.1", "/missing.json"),
        "answered HTTP 404",
    )
    .await;
    refused(&broker, "https://127.0.0.1/", "must have a path").await;
    refused(
        &broker,
        &documents.url("127.0.0.1", "/slow.json"),
        "did not arrive within 5 seconds",
    )
    .await;
    // The redirect was not followed.
    assert!(
        !documents.asked().iter().any(|path| path == "/client.json"),
        "{:?}",
        documents.asked()
    );
}
