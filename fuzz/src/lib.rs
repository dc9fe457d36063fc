//! Pieces shared by the fuzz targets: fixed root keys (so committed seed tokens keep
//! verifying), the call facts used when a token verifies, and seed writing.

use std::path::Path;

use leash_broker::tokens::keys::{ForwardingKey, RootKeys, StoredKey};
use leash_broker::tokens::mint::{self, Role, TaskClaims};

/// "Now" of every evaluation: 2027-01-15 (before [`EXPIRES_AT`]).
pub const NOW_SECS: i64 = 1_800_000_000;
/// End of the window of the seed tokens (2030-03-17).
pub const EXPIRES_AT: i64 = 1_900_000_000;
/// The task id of the seed task tokens.
pub const TASK_ID: &str = "tsk_00000000000000000000000000000001";
/// The agent of the seed tokens.
pub const AGENT: &str = "research-bot";
/// The tools granted by the seed task token.
pub const TOOLS: [&str; 2] = ["notes.read", "notes.search"];

/// The fuzzing root keys: two fixed ed25519 keys (kids 1 and 2; 2 signs), built the
/// way the broker loads its stored keys. Not a secret: only for fuzzing.
pub fn root_keys() -> RootKeys {
    RootKeys::from_stored(&[
        StoredKey {
            kid: 1,
            algorithm: "ed25519".into(),
            private_key: "11".repeat(32),
        },
        StoredKey {
            kid: 2,
            algorithm: "ed25519".into(),
            private_key: "22".repeat(32),
        },
    ])
    .expect("fixed fuzzing keys are valid")
}

/// The fuzzing forwarding key (fixed, like [`root_keys`]; not a secret).
pub fn forwarding_key() -> ForwardingKey {
    ForwardingKey::from_hex(&"33".repeat(32)).expect("the fixed fuzzing key is valid")
}

/// A task token minted by the broker's own mint code, with `checks` as the grant's and
/// agent's checks.
pub fn task_token(keys: &RootKeys, checks: &[String]) -> biscuit_auth::Biscuit {
    let tools: Vec<String> = TOOLS.iter().map(|t| t.to_string()).collect();
    mint::task_token(
        keys,
        &TaskClaims {
            task_id: TASK_ID,
            agent: AGENT,
            user: None,
            audience: None,
            tools: &tools,
            expires_at_secs: EXPIRES_AT,
            checks,
        },
    )
    .expect("the seed task token mints")
}

/// Seed tokens (base64 text), all minted with the project's code and [`root_keys`]:
/// task tokens with and without checks, credentials, offline attenuations and a
/// per-call capability.
pub fn seed_tokens() -> Vec<String> {
    let keys = root_keys();
    let plain = task_token(&keys, &[]);
    let checked = task_token(
        &keys,
        &[
            r#"check if call($t), $t != "notes.delete""#.to_string(),
            r#"reject if token_calls($n), $n >= 100"#.to_string(),
        ],
    );
    let mut out = vec![
        plain.to_base64().unwrap(),
        checked.to_base64().unwrap(),
        mint::credential(&keys, Role::Agent, AGENT, None)
            .unwrap()
            .to_base64()
            .unwrap(),
        mint::credential(&keys, Role::Approver, "ann", Some(EXPIRES_AT))
            .unwrap()
            .to_base64()
            .unwrap(),
    ];
    let parent = plain.to_base64().unwrap();
    for checks in [
        &[r#"check if arg("path", $p), $p.starts_with("/notes/")"#][..],
        &[
            r#"check if call("notes.read")"#,
            "reject if token_calls($n), $n >= 3",
        ][..],
        &[r#"check all arg($k, $v), $v != null"#][..],
    ] {
        out.push(leash_sdk::attenuate(&parent, checks).unwrap());
    }
    out.push(
        leash_sdk::capability::per_call(
            &plain,
            "notes.read",
            NOW_SECS + 30,
            forwarding_key().pair(),
        )
        .unwrap(),
    );
    out
}

/// When `LEASH_FUZZ_SEEDS_OUT` names a folder, writes `seeds` there (as `seed-N`) and
/// exits: `LEASH_FUZZ_SEEDS_OUT=fuzz/corpus/token cargo fuzz run token -- -runs=0`.
pub fn write_seeds_if_asked(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("LEASH_FUZZ_SEEDS_OUT") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create the seed folder");
    for (n, seed) in seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{n}")), seed).expect("write a seed");
    }
    eprintln!("wrote seeds to {}", dir.display());
    std::process::exit(0);
}
