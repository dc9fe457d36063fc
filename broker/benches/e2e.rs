//! End-to-end bench: the cost of a checked call, side by side with calling the upstream
//! directly and through nginx (when installed), under one fixed-concurrency load.
//! Run: `cargo bench -p leash-broker --bench e2e` (BENCHMARKS.md).
//!
//! The broker is the release `leash` binary in its own process (so its peak RSS is its
//! own); the echo upstream and the load generator share this process. Targets are
//! measured in alternating rounds so that the shared, noisy machine affects all alike.
//! Then the store is seeded with 100,000 active tasks and 1,000,000 revoked ids, the
//! broker restarted, and the Leash figures measured again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";
const CONCURRENCY: usize = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Latencies and throughput of one target.
#[derive(Default)]
struct Sample {
    latencies: Vec<Duration>,
    requests: u64,
    seconds: f64,
    errors: u64,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.requests += other.requests;
        self.seconds += other.seconds;
        self.errors += other.errors;
    }
    fn pct(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
}

/// `CONCURRENCY` callers POSTing `body` to `url` for `duration`.
async fn load(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    duration: Duration,
) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, bearer, stop) = (
            client.clone(),
            url.to_string(),
            bearer.map(String::from),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut sample = Sample::default();
            while !stop.load(Ordering::Relaxed) {
                let mut request = client.post(&url).json(&json!({"query": "bench"}));
                if let Some(token) = &bearer {
                    request = request.bearer_auth(token);
                }
                let t = Instant::now();
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        sample.latencies.push(t.elapsed());
                        sample.requests += 1;
                    }
                    _ => sample.errors += 1,
                }
            }
            sample
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Sample::default();
    for w in workers {
        total.add(w.await.unwrap());
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

struct Broker {
    child: Child,
    url: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    async fn start(policies: &Path, data: &Path) -> (Broker, Duration) {
        let port = free_port();
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_leash"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--policies")
            .arg(policies)
            .arg("--data")
            .arg(data)
            .env("LEASH_ADMIN_TOKEN", ADMIN)
            .env("LEASH_LOG", "error")
            // One agent drives all the load here: no per-agent rate limit.
            .env("LEASH_RATE_LIMIT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        while reqwest::get(format!("{url}/healthz")).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "broker did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (Broker { child, url }, started.elapsed())
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        bearer: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = client
            .post(format!("{}{path}", self.url))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

/// nginx as a plain reverse proxy to the upstream, if installed.
fn start_nginx(dir: &Path, upstream: u16) -> Option<(Child, u16)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
         events {{ worker_connections 4096; }}
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
           upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}
           server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up;
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = Command::new(nginx)
        .args([
            "-c",
            &dir.join("nginx.conf").display().to_string(),
            "-p",
            &d.to_string(),
            "-e",
            &format!("{d}/error.log"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some((child, port))
}

async fn mints_per_second(
    client: &reqwest::Client,
    broker: &Broker,
    credential: &str,
    duration: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let started = Instant::now();
    for _ in 0..CONCURRENCY {
        let (client, url, credential, stop) = (
            client.clone(),
            broker.url.clone(),
            credential.to_string(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(format!("{url}/v1/tasks"))
                    .bearer_auth(&credential)
                    .json(&json!({"purpose": "bench", "tools": ["bench.echo"]}))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 201) {
                    n += 1;
                }
            }
            n
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Revoke response → first refused call, over `trials` tasks; (p50, p99) in µs.
async fn revocation_time(
    client: &reqwest::Client,
    broker: &Broker,
    credential: &str,
    trials: usize,
) -> (f64, f64) {
    let mut times = Vec::new();
    for _ in 0..trials {
        let (_, task) = broker
            .post(
                client,
                "/v1/tasks",
                credential,
                json!({"purpose": "r", "tools": ["bench.echo"]}),
            )
            .await;
        let (id, token) = (
            task["task_id"].as_str().unwrap().to_string(),
            task["token"].as_str().unwrap().to_string(),
        );
        broker
            .post(
                client,
                "/v1/tools/bench.echo/call",
                &token,
                json!({"query": "x"}),
            )
            .await;
        broker
            .post(client, &format!("/v1/tasks/{id}/revoke"), ADMIN, json!({}))
            .await;
        let answered = Instant::now();
        loop {
            let (status, _) = broker
                .post(
                    client,
                    "/v1/tools/bench.echo/call",
                    &token,
                    json!({"query": "x"}),
                )
                .await;
            if status == 401 {
                break;
            }
        }
        times.push(answered.elapsed());
    }
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// 100,000 active tasks and 1,000,000 revoked ids, written straight into the store.
async fn seed(data: &Path) -> Duration {
    use sqlx::sqlite::SqliteConnectOptions;
    let started = Instant::now();
    let options = SqliteConnectOptions::new().filename(data.join("leash.db"));
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for i in 0..100_000u64 {
        sqlx::query(
            "INSERT INTO tasks (task_id, agent, purpose, tools, checks, state, created_at_ms, expires_at_ms,
               calls, last_activity_ms) VALUES (?, 'bench', 'seed', '[\"bench.echo\"]', '[]', 'active', 0, 4000000000000, 0, 0)",
        )
        .bind(format!("tsk_{i:032x}"))
        .execute(&mut *tx)
        .await
        .unwrap();
        // Each task's token, so that revoking the agent revokes 100,000 tokens.
        sqlx::query(
            "INSERT INTO task_tokens (revocation_id, task_id, issued_at_ms) VALUES (?, ?, 0)",
        )
        .bind(format!("{i:064x}"))
        .bind(format!("tsk_{i:032x}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..1_000_000u64 {
        sqlx::query("INSERT INTO revocations (revocation_id, task_id, reason, at_ms) VALUES (?, NULL, 'token', 0)")
            .bind(format!("{:0128x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    pool.close().await;
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let seconds = env_u64("LEASH_BENCH_SECONDS", 2);
    let rounds = env_u64("LEASH_BENCH_ROUNDS", 3);
    let phase = Duration::from_secs(seconds);

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    let app = Router::new().route(
        "/echo",
        post(|body: axum::Json<Value>| async move { axum::Json(json!({"echo": body.0})) }),
    );
    tokio::spawn(async move { axum::serve(upstream, app).await.unwrap() });

    let work = tempfile::tempdir().unwrap();
    let policies = work.path().join("policies");
    let data = work.path().join("data");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("bench.toml"),
        format!(
            r#"[tools."bench.echo"]
upstream = "http://127.0.0.1:{up_port}/echo"
input_schema = {{ type = "object", required = ["query"], properties = {{ query = {{ type = "string", maxLength = 100 }} }} }}
upstream_headers = {{ Authorization = "Bearer upstream-key" }}

[agents.bench]
tools = ["bench.*"]
max_ttl_seconds = 86400
max_calls = 1000000000
"#
        ),
    )
    .unwrap();
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx = start_nginx(&nginx_dir, up_port);

    leash_sdk::tls::install_default_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .build()
        .unwrap();
    let (broker, _) = Broker::start(&policies, &data).await;
    let (_, cred) = broker
        .post(&client, "/v1/agents/bench/credentials", ADMIN, json!({}))
        .await;
    let credential = cred["credential"].as_str().unwrap().to_string();
    let (_, task) = broker
        .post(
            &client,
            "/v1/tasks",
            &credential,
            json!({"purpose": "bench", "tools": ["bench.echo"]}),
        )
        .await;
    let token = task["token"].as_str().unwrap().to_string();

    let direct_url = format!("http://127.0.0.1:{up_port}/echo");
    let leash_url = format!("{}/v1/tools/bench.echo/call", broker.url);
    let nginx_url = nginx
        .as_ref()
        .map(|(_, port)| format!("http://127.0.0.1:{port}/echo"));
    // Warm-up.
    load(&client, &direct_url, None, Duration::from_millis(300)).await;
    load(
        &client,
        &leash_url,
        Some(&token),
        Duration::from_millis(300),
    )
    .await;
    let (mut direct, mut via_nginx, mut via_leash) =
        (Sample::default(), Sample::default(), Sample::default());
    for _ in 0..rounds {
        direct.add(load(&client, &direct_url, None, phase).await);
        if let Some(url) = &nginx_url {
            via_nginx.add(load(&client, url, None, phase).await);
        }
        via_leash.add(load(&client, &leash_url, Some(&token), phase).await);
    }
    let mints = mints_per_second(
        &client,
        &broker,
        &credential,
        Duration::from_secs(seconds.max(2)),
    )
    .await;
    let (rev_p50, rev_p99) = revocation_time(&client, &broker, &credential, 200).await;
    let rss = broker.peak_rss_mib();
    drop(broker);

    println!(
        "\n## Leash end-to-end bench ({CONCURRENCY} concurrent callers, {rounds} rounds x {seconds} s per target)\n"
    );
    println!("| target | req/s | p50 µs | p90 µs | p99 µs | errors |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, s: &Sample| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            s.rps(),
            s.pct(0.5),
            s.pct(0.9),
            s.pct(0.99),
            s.errors
        )
    };
    row("direct", &direct);
    if nginx_url.is_some() {
        row("nginx", &via_nginx);
    } else {
        println!("| nginx | not installed (apt-get install nginx-light) | | | | |");
    }
    row("leash", &via_leash);
    println!();
    println!(
        "- added latency by Leash: p50 +{:.0} µs, p99 +{:.0} µs",
        via_leash.pct(0.5) - direct.pct(0.5),
        via_leash.pct(0.99) - direct.pct(0.99)
    );
    println!(
        "- throughput Leash/direct: {:.2}",
        via_leash.rps() / direct.rps()
    );
    if nginx_url.is_some() {
        println!(
            "- throughput Leash/nginx: {:.2}; p50 Leash/nginx: {:.2}",
            via_leash.rps() / via_nginx.rps(),
            via_leash.pct(0.5) / via_nginx.pct(0.5)
        );
    }
    println!("- task mints per second ({CONCURRENCY} callers): {mints:.0}");
    println!(
        "- revocation time (revoke response -> first refused call), 200 trials: p50 {rev_p50:.0} µs, p99 {rev_p99:.0} µs"
    );
    println!("- broker peak RSS: {rss:.1} MiB");

    // Scale: 100,000 active tasks and 1,000,000 revoked ids in the store.
    let seeded = seed(&data).await;
    let (broker, startup) = Broker::start(&policies, &data).await;
    let (_, task) = broker
        .post(
            &client,
            "/v1/tasks",
            &credential,
            json!({"purpose": "bench", "tools": ["bench.echo"]}),
        )
        .await;
    let token = task["token"].as_str().unwrap().to_string();
    let scaled_url = format!("{}/v1/tools/bench.echo/call", broker.url);
    load(
        &client,
        &scaled_url,
        Some(&token),
        Duration::from_millis(300),
    )
    .await;
    let mut scaled = Sample::default();
    for _ in 0..rounds {
        scaled.add(load(&client, &scaled_url, Some(&token), phase).await);
    }
    let mints_scaled = mints_per_second(
        &client,
        &broker,
        &credential,
        Duration::from_secs(seconds.max(2)),
    )
    .await;
    let (rev_p50_s, rev_p99_s) = revocation_time(&client, &broker, &credential, 200).await;
    // Last, as it ends the agent: revoke it with its 100,000 seeded tasks (and their
    // tokens) plus the ones this run minted; its token must be refused right after.
    let started = Instant::now();
    let (status, revoked) = broker
        .post(&client, "/v1/agents/bench/revoke", ADMIN, json!({}))
        .await;
    let revoke_agent = started.elapsed();
    assert_eq!(status, 200, "agent revoke: {revoked}");
    let (refused, _) = broker
        .post(
            &client,
            "/v1/tools/bench.echo/call",
            &token,
            json!({"query": "x"}),
        )
        .await;
    assert_eq!(
        refused, 401,
        "a token of the revoked agent is refused at once"
    );
    let rss_scaled = broker.peak_rss_mib();
    println!(
        "\n## At scale: 100,000 active tasks and 1,000,000 revoked ids (seeded in {seeded:.1?}; broker start {startup:.1?})\n"
    );
    println!("| target | req/s | p50 µs | p90 µs | p99 µs | errors |");
    println!("|---|---|---|---|---|---|");
    row("leash (at scale)", &scaled);
    println!();
    println!(
        "- p50 at scale / p50 empty: {:.2}",
        scaled.pct(0.5) / via_leash.pct(0.5)
    );
    println!("- task mints per second: {mints_scaled:.0}");
    println!("- revocation time: p50 {rev_p50_s:.0} µs, p99 {rev_p99_s:.0} µs");
    println!(
        "- revoking the agent with {} live tasks: answered in {revoke_agent:.2?}; its token refused by the next call",
        revoked["revoked_tasks"]
    );
    println!("- broker peak RSS: {rss_scaled:.1} MiB");
    if let Some((mut child, _)) = nginx {
        let _ = child.kill();
        let _ = child.wait();
    }
}
