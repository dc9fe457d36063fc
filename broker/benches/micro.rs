//! Micro-benchmarks of the hot path's pieces (criterion): minting, attenuating,
//! verifying + authorizing a call with a cold and a warm verification cache, and
//! JSON Schema validation — for tokens of 1, 2 and 4 blocks.
//! Run: `cargo bench -p leash-broker --bench micro`.

use std::hint::black_box;
use std::sync::Arc;

use biscuit_auth::Biscuit;
use criterion::{Criterion, criterion_group, criterion_main};
use leash_broker::tokens::authorize::{CallFacts, authorize_call};
use leash_broker::tokens::keys::RootKeys;
use leash_broker::tokens::mint::{TaskClaims, task_token};
use leash_broker::tokens::verify::TokenVerifier;
use serde_json::json;

fn token(keys: &RootKeys, blocks: usize) -> String {
    let tools = vec!["web.search".to_string(), "fs.read".to_string()];
    let claims = TaskClaims {
        task_id: "tsk_0",
        agent: "bot",
        user: None,
        audience: None,
        tools: &tools,
        expires_at_secs: 4_000_000_000,
        checks: &[],
    };
    let mut text = task_token(keys, &claims).unwrap().to_base64().unwrap();
    for i in 1..blocks {
        text = leash_sdk::attenuate(
            &text,
            &[&format!("reject if token_calls($n), $n >= {}", 1000 + i)],
        )
        .unwrap();
    }
    text
}

fn benches(c: &mut Criterion) {
    let keys = Arc::new(RootKeys::generate());
    let tools = vec!["web.search".to_string()];
    c.bench_function("mint task token", |b| {
        b.iter(|| {
            let claims = TaskClaims {
                task_id: "tsk_0",
                agent: "bot",
                user: None,
                audience: None,
                tools: &tools,
                expires_at_secs: 4_000_000_000,
                checks: &[],
            };
            black_box(task_token(&keys, &claims).unwrap().to_base64().unwrap())
        })
    });
    let one = token(&keys, 1);
    c.bench_function("attenuate (offline, one block)", |b| {
        b.iter(|| {
            black_box(leash_sdk::attenuate(&one, &[r#"check if call("web.search")"#]).unwrap())
        })
    });
    let args = json!({"query": "rust"});
    let args = args.as_object().unwrap();
    for blocks in [1, 2, 4] {
        let text = token(&keys, blocks);
        c.bench_function(
            &format!("verify + authorize, cold cache, {blocks} block(s)"),
            |b| {
                b.iter(|| {
                    // A fresh verifier: signature checks every time.
                    let verifier = TokenVerifier::new(keys.clone());
                    let verified = verifier.verify(&text, |_| None).unwrap();
                    let facts = CallFacts {
                        tool: "web.search",
                        args,
                        now_secs: 1_900_000_000,
                        task_calls: 3,
                        prefix_calls: &[3; 4],
                        budget_blocks: &verified.budget_blocks,
                        subject: leash_broker::tokens::authorize::Subject::Tool,
                    };
                    black_box(authorize_call(&verified.biscuit, &facts).is_ok())
                })
            },
        );
        let verifier = TokenVerifier::new(keys.clone());
        verifier.verify(&text, |_| None).unwrap();
        c.bench_function(
            &format!("verify + authorize, warm cache, {blocks} block(s)"),
            |b| {
                b.iter(|| {
                    let verified = verifier.verify(&text, |_| None).unwrap();
                    let facts = CallFacts {
                        tool: "web.search",
                        args,
                        now_secs: 1_900_000_000,
                        task_calls: 3,
                        prefix_calls: &[3; 4],
                        budget_blocks: &verified.budget_blocks,
                        subject: leash_broker::tokens::authorize::Subject::Tool,
                    };
                    black_box(authorize_call(&verified.biscuit, &facts).is_ok())
                })
            },
        );
    }
    let parsed = Biscuit::from_base64(&one, keys.public_for(Some(1)).unwrap()).unwrap();
    let forwarding = leash_broker::tokens::keys::ForwardingKey::generate();
    c.bench_function(
        "per-call capability (forwarded third-party block, upstream header)",
        |b| {
            b.iter(|| {
                black_box(
                    leash_sdk::capability::per_call(
                        &parsed,
                        "web.search",
                        1_900_000_030,
                        forwarding.pair(),
                    )
                    .unwrap(),
                )
            })
        },
    );
    let schema = json!({"type": "object", "required": ["query"], "additionalProperties": false,
        "properties": {"query": {"type": "string", "maxLength": 200}}});
    let validator = leash_broker::policy::input_schema::compile(&schema).unwrap();
    let good = json!({"query": "rust"});
    c.bench_function("JSON Schema validation", |b| {
        b.iter(|| {
            black_box(leash_broker::policy::input_schema::violations(
                &validator, &good,
            ))
        })
    });
}

criterion_group!(micro, benches);
criterion_main!(micro);
