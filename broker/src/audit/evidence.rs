//! The signed evidence of one task: its format, its signature, and the offline check.
//!
//! `GET /v1/tasks/{id}/evidence` answers `{"evidence": {…}, "signature": {"kid", "alg":
//! "ed25519", "value"}}`. The signature is Ed25519, by the root key `kid`, over the RFC 8785
//! (JCS) canonical JSON of `evidence` — bytes any JCS library rebuilds, so a verifier needs
//! only the published keys (`/.well-known/leash/keys`). Every audit row in the evidence
//! carries its `detail` as the exact JSON text its hash covers, so each row's hash can be
//! recomputed from the evidence alone; the latest signed checkpoint says how far the
//! audit chain was sealed when the evidence was made.
//!
//! [`verify`] is what `leash evidence verify` runs: it names every part that does not
//! hold — signature, row hashes, counts, the checkpoint — rather than stopping at the
//! first.

use anyhow::Context;
use std::collections::BTreeMap;

use biscuit_auth::PublicKey;
use leash_sdk::protocol::{EvidenceSignature, TaskEvidence};
use serde_json::Value;

use crate::audit::checkpoint::{check_signature, parse_line};
use crate::store::AuditRow;
use crate::store::chain::row_hash;
use crate::tokens::keys::{DetachedSignatureError, RootKeys, verify_detached};

/// The `format` of every evidence document this broker writes.
pub const FORMAT: &str = "leash-task-evidence-v1";

/// An evidence document: what `GET /v1/tasks/{id}/evidence` answers.
pub type Signed = TaskEvidence;

/// The RFC 8785 canonical bytes of `evidence`: what the signature covers.
pub fn canonical(evidence: &Value) -> anyhow::Result<Vec<u8>> {
    serde_json_canonicalizer::to_vec(evidence)
        .map_err(|err| anyhow::anyhow!("evidence has no canonical form: {err}"))
}

/// Signs `evidence` with the current signing root key.
pub fn sign(keys: &RootKeys, evidence: Value) -> anyhow::Result<Signed> {
    let (kid, value) = keys
        .sign_detached(&canonical(&evidence)?)
        .context("cannot sign the evidence")?;
    Ok(Signed {
        evidence,
        signature: EvidenceSignature {
            kid,
            alg: "ed25519".into(),
            value,
        },
    })
}

/// An audit row as the evidence holds it: `detail` as the exact text its hash covers.
pub fn row_json(row: &AuditRow) -> Value {
    serde_json::json!({
        "seq": row.seq,
        "at_ms": row.at_ms,
        "kind": row.kind,
        "actor": row.actor,
        "task_id": row.task_id,
        "detail": row.detail.to_string(),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    })
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Findings {
    /// What does not hold: the evidence must not be trusted.
    pub problems: Vec<String>,
    /// What holds but limits what the evidence proves.
    pub notes: Vec<String>,
    /// How many audit rows were checked.
    pub rows: usize,
}

/// Checks an evidence document against root public keys by id.
pub fn verify(document: &Value, keys: &BTreeMap<u32, PublicKey>) -> Findings {
    let mut found = Findings::default();
    let signed: Signed = match serde_json::from_value(document.clone()) {
        Ok(signed) => signed,
        Err(err) => {
            found.problems.push(format!(
                "not an evidence document ({{\"evidence\", \"signature\"}}): {err}"
            ));
            return found;
        }
    };
    if let Err(problem) = check_evidence_signature(&signed, keys) {
        found.problems.push(problem);
    }
    let evidence = &signed.evidence;
    if evidence.get("format").and_then(Value::as_str) != Some(FORMAT) {
        found.problems.push(format!(
            "format is not {FORMAT:?}: this tool cannot read it"
        ));
        return found;
    }
    let rows = check_rows(evidence, &mut found);
    check_counts(evidence, &rows, &mut found);
    check_checkpoint(evidence, &rows, keys, &mut found);
    found.rows = rows.len();
    found
}

fn check_evidence_signature(
    signed: &Signed,
    keys: &BTreeMap<u32, PublicKey>,
) -> Result<(), String> {
    if signed.signature.alg != "ed25519" {
        return Err(format!(
            "signature alg is {:?}, not \"ed25519\"",
            signed.signature.alg
        ));
    }
    let kid = signed.signature.kid;
    let bytes = canonical(&signed.evidence).map_err(|err| err.to_string())?;
    verify_detached(keys, kid, &signed.signature.value, &bytes).map_err(|err| match err {
        DetachedSignatureError::UnknownKey => {
            format!("signature is by root key {kid}, which the keys given do not hold")
        }
        DetachedSignatureError::NotEd25519 => {
            format!("root key {kid} is not a valid ed25519 key")
        }
        DetachedSignatureError::Malformed => {
            "signature value is not 64 bytes of base64url".to_string()
        }
        DetachedSignatureError::Mismatch => format!(
            "signature does not verify with root key {kid}: the evidence was changed after signing, or not signed by this deployment"
        ),
    })
}

/// Every row of `evidence.audit.rows`, each one's hash recomputed.
fn check_rows(evidence: &Value, found: &mut Findings) -> Vec<AuditRow> {
    let Some(listed) = evidence.pointer("/audit/rows").and_then(Value::as_array) else {
        found.problems.push("audit.rows is missing".into());
        return Vec::new();
    };
    let task_id = evidence.pointer("/task/task_id").and_then(Value::as_str);
    let mut rows = Vec::with_capacity(listed.len());
    let mut last_seq = 0;
    for (index, listed) in listed.iter().enumerate() {
        let Some(row) = row_from_json(listed) else {
            found
                .problems
                .push(format!("audit row {index} is not a row (seq, at_ms, kind, actor, task_id, detail text, prev_hash, hash)"));
            continue;
        };
        if row_hash(&row) != row.hash {
            found.problems.push(format!(
                "audit row seq {}: its hash does not match its content (edited)",
                row.seq
            ));
        }
        if row.task_id.as_deref() != task_id {
            found
                .problems
                .push(format!("audit row seq {} is not this task's", row.seq));
        }
        if row.seq <= last_seq {
            found.problems.push(format!(
                "audit row seq {} is out of order (after seq {last_seq})",
                row.seq
            ));
        }
        last_seq = row.seq;
        rows.push(row);
    }
    rows
}

fn row_from_json(value: &Value) -> Option<AuditRow> {
    let text = |name: &str| value.get(name)?.as_str().map(String::from);
    Some(AuditRow {
        seq: value.get("seq")?.as_i64()?,
        at_ms: value.get("at_ms")?.as_i64()?,
        kind: text("kind")?,
        actor: text("actor")?,
        task_id: match value.get("task_id")? {
            Value::Null => None,
            other => Some(other.as_str()?.to_string()),
        },
        detail: serde_json::from_str(&text("detail")?).ok()?,
        prev_hash: text("prev_hash")?,
        hash: text("hash")?,
    })
}

/// The summary and the audit range must say what the rows say.
fn check_counts(evidence: &Value, rows: &[AuditRow], found: &mut Findings) {
    let count = |kind: &str| rows.iter().filter(|r| r.kind == kind).count() as u64;
    let expected = [
        ("calls_allowed", count("call.allowed")),
        ("calls_denied", count("call.denied")),
        ("calls_held", count("call.held")),
    ];
    for (name, rows_say) in expected {
        let stated = evidence
            .pointer(&format!("/summary/{name}"))
            .and_then(Value::as_u64);
        if stated != Some(rows_say) {
            found.problems.push(format!(
                "summary.{name} says {} but the rows hold {rows_say}",
                stated.map_or("nothing".into(), |n| n.to_string())
            ));
        }
    }
    let range = [
        ("/audit/count", Some(rows.len() as i64)),
        ("/audit/first_seq", rows.first().map(|r| r.seq)),
        ("/audit/last_seq", rows.last().map(|r| r.seq)),
    ];
    for (pointer, rows_say) in range {
        if evidence.pointer(pointer).and_then(Value::as_i64) != rows_say {
            found.problems.push(format!(
                "{} does not match the rows",
                pointer.trim_start_matches('/').replace('/', ".")
            ));
        }
    }
    let last_hash = evidence.pointer("/audit/last_hash").and_then(Value::as_str);
    if last_hash != rows.last().map(|r| r.hash.as_str()) {
        found
            .problems
            .push("audit.last_hash does not match the last row".into());
    }
}

/// The checkpoint must be validly signed; rows past it are not sealed yet.
fn check_checkpoint(
    evidence: &Value,
    rows: &[AuditRow],
    keys: &BTreeMap<u32, PublicKey>,
    found: &mut Findings,
) {
    let last_seq = rows.last().map_or(0, |r| r.seq);
    match evidence.get("checkpoint") {
        None | Some(Value::Null) => found.notes.push(
            "no signed checkpoint covered the audit chain yet: the deletion of the newest rows could not be shown".into(),
        ),
        Some(checkpoint) => match parse_line(&checkpoint.to_string()) {
            Err(err) => found.problems.push(format!("checkpoint: {err}")),
            Ok(checkpoint) => {
                if let Err(problem) = check_signature(&checkpoint, keys) {
                    found.problems.push(format!("checkpoint {problem}"));
                }
                if let Some(row) = rows.iter().find(|r| r.seq == checkpoint.seq)
                    && row.hash != checkpoint.hash
                {
                    found.problems.push(format!(
                        "checkpoint names seq {} with another hash than the row's",
                        checkpoint.seq
                    ));
                }
                if checkpoint.seq < last_seq {
                    found.notes.push(format!(
                        "rows after seq {} were not yet under a signed checkpoint when the evidence was made",
                        checkpoint.seq
                    ));
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{FORMAT, row_json, sign, verify};
    use crate::store::NewAuditEvent;
    use crate::store::chain::chain_after;
    use crate::tokens::keys::RootKeys;

    /// A signed document of two rows of task `tsk_a`.
    fn document(keys: &RootKeys) -> Value {
        let event = |kind: &str, detail: Value| NewAuditEvent {
            at_ms: 1_000,
            kind: kind.into(),
            actor: "agent:bot".into(),
            task_id: Some("tsk_a".into()),
            detail,
        };
        let rows = chain_after(
            None,
            &[
                event("task.issued", json!({ "revocation_id": "r1" })),
                event(
                    "call.allowed",
                    json!({ "tool": "notes.search", "arguments": { "q": "x" } }),
                ),
            ],
        );
        let evidence = json!({
            "format": FORMAT,
            "task": { "task_id": "tsk_a" },
            "summary": { "calls_allowed": 1, "calls_denied": 0, "calls_held": 0 },
            "audit": {
                "count": 2, "first_seq": 1, "last_seq": 2, "last_hash": rows[1].hash,
                "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
            },
            "checkpoint": null,
        });
        serde_json::to_value(sign(keys, evidence).unwrap()).unwrap()
    }

    #[test]
    fn signed_evidence_verifies_and_any_change_is_named() {
        let keys = RootKeys::generate();
        let published = keys.public_keys();
        let good = document(&keys);
        let found = verify(&good, &published);
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        assert_eq!(found.rows, 2);
        assert_eq!(found.notes.len(), 1, "no checkpoint is noted");

        // A row's content changed: the signature and that row's hash both fail.
        let mut edited = good.clone();
        edited["evidence"]["audit"]["rows"][1]["detail"] =
            json!(r#"{"arguments":{"q":"y"},"tool":"notes.search"}"#);
        let found = verify(&edited, &published);
        assert!(
            found
                .problems
                .iter()
                .any(|p| p.starts_with("signature does not verify"))
        );
        assert!(found.problems.iter().any(|p| p.contains("seq 2: its hash")));

        // A count changed: named, besides the signature.
        let mut counted = good.clone();
        counted["evidence"]["summary"]["calls_allowed"] = json!(5);
        let found = verify(&counted, &published);
        assert!(
            found
                .problems
                .iter()
                .any(|p| p.contains("summary.calls_allowed says 5"))
        );

        // Another deployment's keys: the signature is refused.
        let found = verify(&good, &RootKeys::generate().public_keys());
        assert!(!found.problems.is_empty());

        // The order of members does not matter (canonical form), their values do.
        let text = serde_json::to_string_pretty(&good).unwrap();
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        assert!(verify(&reparsed, &published).problems.is_empty());
    }
}
