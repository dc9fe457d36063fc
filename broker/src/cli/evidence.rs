//! `leash evidence verify FILE [--keys URL|FILE]`: checks a task's evidence offline with
//! the deployment's published keys and names every part that does not match.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use biscuit_auth::PublicKey;
use leash_sdk::protocol::KeySet;

use crate::audit::evidence::verify as verify_evidence;

/// Largest evidence file read.
const MAX_READ: u64 = 256 * 1024 * 1024;

/// Largest keys document read.
const MAX_KEYS: u64 = 1024 * 1024;

/// Verifies the evidence in `file` with the keys at `keys` (a URL or a file).
pub async fn verify(file: &Path, keys: &str) -> anyhow::Result<ExitCode> {
    let text = read_bounded(file)?;
    let document: serde_json::Value = serde_json::from_str(&text)
        .map_err(|err| anyhow::anyhow!("{} is not JSON: {err}", file.display()))?;
    let keys = root_keys(keys).await?;
    let found = verify_evidence(&document, &keys);
    for note in &found.notes {
        println!("note: {note}");
    }
    if found.problems.is_empty() {
        let task = document
            .pointer("/evidence/task/task_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        let kid = document
            .pointer("/signature/kid")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_default();
        let key = u32::try_from(kid)
            .ok()
            .and_then(|kid| keys.get(&kid))
            .map(ToString::to_string)
            .unwrap_or_default();
        println!(
            "evidence of {task} verifies: signed by root key {kid} ({key}), {} audit row(s) match their hashes and the counts",
            found.rows
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &found.problems {
        eprintln!("does not match: {problem}");
    }
    Ok(ExitCode::FAILURE)
}

fn read_bounded(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?
        .len();
    if size > MAX_READ {
        anyhow::bail!("{} is larger than {MAX_READ} bytes", path.display());
    }
    std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))
}

/// The root keys by id from a keys document at a URL or in a file.
async fn root_keys(source: &str) -> anyhow::Result<BTreeMap<u32, PublicKey>> {
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        // Keys fetched in the clear could be anybody's: plain http only on this machine.
        let url = reqwest::Url::parse(source)
            .map_err(|err| anyhow::anyhow!("--keys is not a URL: {err}"))?;
        let local = matches!(url.host(), Some(url::Host::Domain("localhost")))
            || matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
        if url.scheme() == "http" && !local {
            anyhow::bail!(
                "fetch the keys over https (or from this machine): keys fetched in the clear could be anybody's"
            );
        }
        leash_sdk::tls::install_default_provider();
        let client = leash_sdk::tls::client_builder(&[])?
            .timeout(Duration::from_secs(10))
            .build()?;
        let response = client.get(source).send().await.map_err(|err| {
            anyhow::anyhow!("cannot fetch the keys: {}", leash_sdk::tls::describe(&err))
        })?;
        if !response.status().is_success() {
            anyhow::bail!("the keys URL answered HTTP {}", response.status().as_u16());
        }
        if response.content_length().is_some_and(|n| n > MAX_KEYS) {
            anyhow::bail!("the keys document is larger than {MAX_KEYS} bytes");
        }
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > MAX_KEYS {
                anyhow::bail!("the keys document is larger than {MAX_KEYS} bytes");
            }
        }
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the keys document is not UTF-8"))?
    } else {
        read_bounded(Path::new(source))?
    };
    let set: KeySet = serde_json::from_str(&text)
        .map_err(|err| anyhow::anyhow!("not a keys document (/.well-known/leash/keys): {err}"))?;
    set.keys
        .iter()
        .map(|key| {
            let public = PublicKey::from_str(&key.public_key).map_err(|err| {
                anyhow::anyhow!("root key {} is not a public key: {err}", key.kid)
            })?;
            Ok((key.kid, public))
        })
        .collect()
}
