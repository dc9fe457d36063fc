//! End-to-end latency of a checked call on loopback, side by side with calling the
//! upstream directly. Run: `cargo bench -p leash-broker --bench checked_call`.
//!
//! Both paths are measured in alternating rounds in one run (the machine is shared and
//! noisy), with one HTTP client each, against the same in-process echo upstream.
//! Prints p50/p90/p99 per path, the added latency, and throughput with 16 callers.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use leash_broker::ServeConfig;
use serde_json::{Value, json};

const ROUNDS: usize = 20;
const PER_ROUND: usize = 250;
const CONCURRENCY: usize = 16;
const ADMIN: &str = "bench-admin-token-0123456789abcdef";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn timed(client: &reqwest::Client, url: &str, bearer: Option<&str>, out: &mut Vec<Duration>) {
    let mut request = client.post(url).json(&json!({"query": "bench"}));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let started = Instant::now();
    let response = request.send().await.expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.expect("body");
    out.push(started.elapsed());
}

async fn throughput(url: String, bearer: Option<String>, duration: Duration) -> f64 {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let url = url.clone();
        let bearer = bearer.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let mut request = client.post(&url).json(&json!({"query": "bench"}));
                if let Some(token) = &bearer {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.expect("request");
                assert!(response.status().is_success());
                response.bytes().await.expect("body");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    total as f64 / duration.as_secs_f64()
}

#[tokio::main]
async fn main() {
    // The upstream: echoes the arguments.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let app = Router::new().route(
        "/echo",
        post(|body: axum::Json<Value>| async move { axum::Json(json!({"echo": body.0})) }),
    );
    tokio::spawn(async move { axum::serve(upstream, app).await.unwrap() });

    // The broker, in-process on loopback.
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("bench.toml"),
        format!(
            r#"[tools."bench.echo"]
upstream = "http://{upstream_addr}/echo"
input_schema = {{ type = "object", required = ["query"], properties = {{ query = {{ type = "string", maxLength = 100 }} }} }}
upstream_headers = {{ Authorization = "Bearer upstream-key" }}

[agents.bench]
tools = ["bench.*"]
max_ttl_seconds = 3600
max_calls = 100000000
"#
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(policies.path().to_path_buf(), data.path().to_path_buf());
    config.admin_token = Some(ADMIN.into());
    let state = leash_broker::prepare(config, &|_| None)
        .await
        .expect("broker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(leash_broker::run(state, listener, std::future::pending()));

    let client = reqwest::Client::new();
    let credential: Value = client
        .post(format!("{broker}/v1/agents/bench/credentials"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let credential = credential["credential"].as_str().unwrap().to_string();
    let task: Value = client
        .post(format!("{broker}/v1/tasks"))
        .bearer_auth(&credential)
        .json(&json!({"purpose": "bench", "tools": ["bench.echo"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = task["token"].as_str().unwrap().to_string();

    let direct_url = format!("http://{upstream_addr}/echo");
    let leash_url = format!("{broker}/v1/tools/bench.echo/call");
    let direct_client = reqwest::Client::new();
    let leash_client = reqwest::Client::new();
    // Warm up connections and caches.
    let mut scratch = Vec::new();
    for _ in 0..200 {
        timed(&direct_client, &direct_url, None, &mut scratch).await;
        timed(&leash_client, &leash_url, Some(&token), &mut scratch).await;
    }
    let (mut direct, mut leash) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            timed(&direct_client, &direct_url, None, &mut direct).await;
        }
        for _ in 0..PER_ROUND {
            timed(&leash_client, &leash_url, Some(&token), &mut leash).await;
        }
    }
    direct.sort();
    leash.sort();
    let window = Duration::from_secs(3);
    let direct_rps = throughput(direct_url.clone(), None, window).await;
    let leash_rps = throughput(leash_url.clone(), Some(token.clone()), window).await;

    println!(
        "checked call on loopback, {} sequential calls per path in {ROUNDS} alternating rounds",
        ROUNDS * PER_ROUND
    );
    println!("| path | p50 µs | p90 µs | p99 µs | req/s ({CONCURRENCY} callers) |");
    println!("|---|---|---|---|---|");
    for (name, samples, rps) in [
        ("direct", &direct, direct_rps),
        ("leash", &leash, leash_rps),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            micros(percentile(samples, 0.5)),
            micros(percentile(samples, 0.9)),
            micros(percentile(samples, 0.99)),
            rps
        );
    }
    println!(
        "added by leash: p50 +{:.0} µs, p99 +{:.0} µs; throughput ratio leash/direct {:.2}",
        micros(percentile(&leash, 0.5)) - micros(percentile(&direct, 0.5)),
        micros(percentile(&leash, 0.99)) - micros(percentile(&direct, 0.99)),
        leash_rps / direct_rps
    );
}
