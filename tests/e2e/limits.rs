//! Abuse limits at the edge: the connection cap, slow clients (headers and bodies),
//! oversized request heads, and repeated bad credentials (throttled, logged without
//! the secret).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use serde_json::json;

use crate::common::{BrokerProcess, POLICY, TestBroker, ToolServer, policy_dir, post_json};

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// POSTs JSON to `path` of the broker at `url`.
async fn post(
    url: &str,
    path: &str,
    bearer: &str,
    body: serde_json::Value,
) -> crate::common::Reply {
    post_json(&format!("{url}{path}"), Some(bearer), body).await
}

/// Reads what the server sends until it closes or `within` passes; None on timeout.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let broker = TestBroker::spawn_tuned(POLICY, |c| c.max_connections = 3).await;
    let addr = host_of(&broker.url);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        // A complete keep-alive request: the connection stays open and counted.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let fourth = reqwest::Client::new()
        .get(format!("{}/healthz", broker.url))
        .timeout(Duration::from_millis(700))
        .send()
        .await;
    assert!(
        fourth.is_err(),
        "a fourth connection was served past a cap of 3"
    );
    drop(held.pop());
    let after = reqwest::Client::new()
        .get(format!("{}/healthz", broker.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("served once a slot is free");
    assert_eq!(after.status(), 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let broker = TestBroker::spawn_tuned(POLICY, |c| {
        c.client_timeout = Duration::from_secs(1);
        c.max_connections = 2;
    })
    .await;
    let addr = host_of(&broker.url);
    // Slowloris: two connections that start a request and never finish it, plus one
    // that sends nothing at all.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    for stream in [&mut silent, &mut slow] {
        let closed = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "the server held a stalled connection");
    }
    // The cap is free again for honest clients.
    let reply = broker.get("/healthz", None).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_408() {
    let broker =
        TestBroker::spawn_tuned(POLICY, |c| c.client_timeout = Duration::from_secs(1)).await;
    let agent = broker.agent("bot").await;
    let mut stream = TcpStream::connect(host_of(&broker.url)).await.unwrap();
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {agent}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A byte every 300 ms: each gap is short, the whole is too slow.
    let started = std::time::Instant::now();
    let mut answer = String::new();
    for _ in 0..20 {
        if stream.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 2048];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Nothing was created.
    let admin = crate::common::ADMIN;
    let tasks = broker.get("/v1/tasks?state=all", Some(admin)).await;
    assert_eq!(tasks.body["tasks"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_in_the_error_format() {
    let broker = TestBroker::spawn_tuned(POLICY, |c| c.max_header_bytes = 16 * 1024).await;
    let big = "x".repeat(20 * 1024);
    let reply = broker
        .http
        .get(format!("{}/healthz", broker.url))
        .header("X-Padding", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 431);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Many small headers count too.
    let mut request = broker.http.get(format!("{}/healthz", broker.url));
    for i in 0..90 {
        request = request.header(format!("x-h{i}"), "y".repeat(200));
    }
    assert_eq!(request.send().await.unwrap().status(), 431);
    // Far past the limit, hyper's own backstop still refuses (bare 431).
    let huge = "x".repeat(200 * 1024);
    let reply = broker
        .http
        .get(format!("{}/healthz", broker.url))
        .header("X-Padding", &huge)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 431);
    // And the broker goes on.
    assert_eq!(broker.get("/healthz", None).await.status, 200);
}

#[tokio::test]
async fn repeated_bad_credentials_are_throttled_and_logged_without_the_secret() {
    let upstream = ToolServer::spawn().await;
    let policies = policy_dir(&upstream);
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("broker.log");
    let broker = BrokerProcess::start_logged(
        policies.path(),
        &data.path().join("data"),
        &[("LEASH_AUTH_FAILURE_LIMIT", "2".into())],
        Some(&log),
    )
    .await;
    let admin = std::fs::read_to_string(data.path().join("data/admin_token")).unwrap();
    let admin = admin.trim().to_string();
    let url = broker.url.clone();
    // The audit log needs an approver or the admin: (status, has Retry-After).
    // One client, so a guess costs one request and not a new connection.
    let client = reqwest::Client::new();
    let read_audit = |bearer: &str| {
        let request = client.get(format!("{url}/v1/audit")).bearer_auth(bearer);
        async move {
            let reply = request.send().await.unwrap();
            (
                reply.status().as_u16(),
                reply.headers().contains_key("retry-after"),
            )
        }
    };
    // A genuine token whose task ended is not a guess: an agent that keeps using it
    // gets 401 every time and locks nobody out.
    let credential = post(&url, "/v1/agents/bot/credentials", &admin, json!({})).await;
    let credential = credential.body["credential"].as_str().unwrap().to_string();
    let task = post(
        &url,
        "/v1/tasks",
        &credential,
        json!({"purpose": "p", "tools": ["web.search"]}),
    )
    .await;
    let task_id = task.body["task_id"].as_str().unwrap();
    let token = task.body["token"].as_str().unwrap();
    let ended = post(
        &url,
        &format!("/v1/tasks/{task_id}/complete"),
        token,
        json!({}),
    )
    .await;
    assert_eq!(ended.status, 200);
    for _ in 0..300 {
        let reply = post(
            &url,
            "/v1/tools/web.search/call",
            token,
            json!({"query": "x"}),
        )
        .await;
        assert_eq!(reply.status, 401);
    }
    // Guesses (forged-looking tokens): each alone is just refused (401) until the
    // budget — a burst of 20, refilled at 2 per second — is spent; then they are refused
    // before they are checked: 429 with Retry-After. Counted, not timed: on a loaded
    // machine the guesses take long enough for the bucket to refill a little.
    let mut secrets: Vec<String> = Vec::new();
    let guess_until_throttled = async |secrets: &mut Vec<String>| {
        let started = std::time::Instant::now();
        let before = secrets.len();
        loop {
            let secret = format!(
                "guess-{}-the-admin-token-0123456789abcdef-SECRET",
                secrets.len()
            );
            let (status, retry_after) = read_audit(&secret).await;
            if status == 429 {
                assert!(retry_after, "a 429 says when to retry");
                break;
            }
            assert_eq!(status, 401, "each guess alone is just refused");
            secrets.push(secret);
            assert!(secrets.len() - before <= 200, "never throttled");
        }
        (secrets.len() - before, started.elapsed().as_secs_f64())
    };
    let (refused, took) = guess_until_throttled(&mut secrets).await;
    let budget = 20 + (took * 2.0).ceil() as usize;
    assert!(
        (20..=budget).contains(&refused),
        "{refused} guesses were checked in {took:.2} s; the budget allows 20 + 2/s"
    );
    assert_eq!(read_audit("one-more-guess").await, (429, true));
    // Known-good credentials from the same address still work (the admin token, and a
    // token verified before): one noisy process cannot lock out its neighbours. A new,
    // never-seen credential waits until the budget refills.
    let admin = admin.as_str();
    assert_eq!(read_audit(admin).await.0, 200);
    let approver = post(&url, "/v1/approvers/ann/credentials", admin, json!({})).await;
    let approver = approver.body["credential"].as_str().unwrap().to_string();
    // Whatever refilled meanwhile is spent again first.
    guess_until_throttled(&mut secrets).await;
    assert_eq!(
        read_audit(&approver).await,
        (429, true),
        "an unverified credential"
    );
    // Public endpoints still answer.
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    // After the bucket refills (2 per second), it gets in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(read_audit(&approver).await.0, 200);
    drop(broker);
    let text = std::fs::read_to_string(&log).unwrap();
    let failures = text.matches("authentication failed").count();
    assert_eq!(
        failures,
        secrets.len(),
        "one log line per failed guess, none for ended tokens:\n{text}"
    );
    assert!(text.contains("peer=\"127.0.0.1\""), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes in a log file");
    assert!(
        text.contains("sha256:"),
        "a fingerprint, not the credential:\n{text}"
    );
    for secret in secrets.iter().map(String::as_str).chain([
        admin,
        "one-more-guess",
        token,
        credential.as_str(),
    ]) {
        assert!(!text.contains(secret), "the log holds a secret: {secret}");
    }
}

/// A client whose connections come from `source` (any 127.x.y.z is this machine).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

/// `queries.len()` anonymous long-polls of the revocation feed from `client`, one per
/// query string, each on its own task.
fn long_polls(
    client: &reqwest::Client,
    url: &str,
    queries: &[&str],
) -> Vec<tokio::task::JoinHandle<reqwest::Result<u16>>> {
    queries
        .iter()
        .map(|query| {
            let (client, url) = (
                client.clone(),
                format!("{url}/v1/revocations?after=999999&{query}"),
            );
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect()
}

#[tokio::test]
async fn long_polls_cannot_take_the_connections_health_checks_and_revokes_need() {
    let broker = TestBroker::spawn_tuned(POLICY, |c| {
        c.max_connections = 8;
        c.max_long_polls_per_address = 4;
    })
    .await;
    let agent = broker.agent("bot").await;
    let approver = broker.approver("ann").await;
    let (task_id, _) = broker.task(&agent, &["web.search"]).await;
    let url = broker.url.replace("localhost", "127.0.0.1");
    // Eight anonymous 30-second long-polls from one address.
    let attacker = client_from("127.0.0.2");
    let polls = long_polls(&attacker, &url, &["wait=30"; 8]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // At most four are held; the others were refused at once with 429.
    assert_eq!(broker.state.long_polls.held(), 4);
    let mut refused = 0;
    for poll in &polls {
        if poll.is_finished() {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 4,
        "the long-polls past the address's share are refused"
    );
    // Health checks and revokes from elsewhere are still served, promptly.
    let health = tokio::time::timeout(
        Duration::from_secs(3),
        client_from("127.0.0.1")
            .get(format!("{url}/healthz"))
            .send(),
    )
    .await
    .expect("a health check is served while long-polls are held")
    .unwrap();
    assert_eq!(health.status(), 200);
    // Another address may long-poll too, but only up to the overall cap (three quarters
    // of the connections): a quarter stays for short requests.
    let other = client_from("127.0.0.3");
    let more = long_polls(&other, &url, &["wait=30"; 3]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.state.long_polls.held(), 6, "overall cap of 6 (of 8)");
    assert_eq!(more.iter().filter(|m| m.is_finished()).count(), 1);
    let revoked = tokio::time::timeout(
        Duration::from_secs(3),
        client_from("127.0.0.1")
            .post(format!("{url}/v1/tasks/{task_id}/revoke"))
            .bearer_auth(&approver)
            .json(&json!({}))
            .send(),
    )
    .await
    .expect("a revoke is served while long-polls are held")
    .unwrap();
    assert_eq!(revoked.status(), 200);
    for poll in polls.into_iter().chain(more) {
        poll.abort();
    }
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let broker = TestBroker::spawn_tuned(POLICY, |c| {
        c.max_connections = 16;
        c.max_connections_per_address = 3;
    })
    .await;
    let addr = broker.url.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.4:0".parse().unwrap()).unwrap();
        held.push(socket.connect(addr.parse().unwrap()).await.unwrap());
    }
    // The fourth from that address is answered 429 in the error format and closed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.4:0".parse().unwrap()).unwrap();
    let mut fourth = socket.connect(addr.parse().unwrap()).await.unwrap();
    let answer = read_until_closed(&mut fourth, Duration::from_secs(3))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("budget_exhausted"), "{answer}");
    // Others are served; once one of the three closes, the address may connect again.
    assert_eq!(broker.get("/healthz", None).await.status, 200);
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.4:0".parse().unwrap()).unwrap();
    let mut again = socket.connect(addr.parse().unwrap()).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut again, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_percent_encoded_wait_still_takes_a_long_poll_slot() {
    let broker = TestBroker::spawn_tuned(POLICY, |c| {
        c.max_connections = 8;
        c.max_long_polls_per_address = 2;
    })
    .await;
    let url = broker.url.clone();
    let attacker = client_from("127.0.0.2");
    let polls = long_polls(
        &attacker,
        &url,
        &["wait=30", "%77ait=30", "w%61it=30", "%77%61%69%74=30"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        broker.state.long_polls.held(),
        2,
        "every spelling of wait counts"
    );
    let refused = polls.iter().filter(|p| p.is_finished()).count();
    assert_eq!(refused, 2);
    for poll in polls {
        poll.abort();
    }
}
