//! The audit hash chain: how rows are chained and how a run of rows is checked.
//!
//! Each row's hash is SHA-256 over its content and the previous row's hash, so editing
//! or deleting a row breaks every hash after it ([`verify_chain`]). Pure functions, kept
//! beside the stores because they chain rows inside their write transaction (so replicas
//! share one chain); the audit writer and the checkpoint verifier use them too.

use sha2::{Digest, Sha256};

use super::api::{AuditRow, NewAuditEvent};

/// Chains `events` after the row `(seq, hash)` (or from the start): the rows to insert.
pub fn chain_after(head: Option<(i64, String)>, events: &[NewAuditEvent]) -> Vec<AuditRow> {
    let (mut seq, mut prev) = head.unwrap_or((0, String::new()));
    events
        .iter()
        .map(|event| {
            seq += 1;
            let mut row = AuditRow {
                seq,
                at_ms: event.at_ms,
                kind: event.kind.clone(),
                actor: event.actor.clone(),
                task_id: event.task_id.clone(),
                detail: event.detail.clone(),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            row.hash = row_hash(&row);
            prev = row.hash.clone();
            row
        })
        .collect()
}

/// The hash a row must carry.
pub fn row_hash(row: &AuditRow) -> String {
    let mut hasher = Sha256::new();
    hasher.update(row.seq.to_string());
    hasher.update([0]);
    hasher.update(row.at_ms.to_string());
    hasher.update([0]);
    hasher.update(&row.kind);
    hasher.update([0]);
    hasher.update(&row.actor);
    hasher.update([0]);
    hasher.update(row.task_id.as_deref().unwrap_or(""));
    hasher.update([0]);
    hasher.update(row.detail.to_string());
    hasher.update([0]);
    hasher.update(&row.prev_hash);
    hex::encode(hasher.finalize())
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {reason}")]
pub struct ChainBreak {
    /// The first bad row (or the missing seq).
    pub seq: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks a run of rows that continues after `(seq, hash)` of the row before it.
/// Returns the new head.
pub fn verify_chain(after: (i64, &str), rows: &[AuditRow]) -> Result<(i64, String), ChainBreak> {
    let (mut seq, prev) = after;
    let mut prev = prev.to_string();
    for row in rows {
        if row.seq != seq + 1 {
            return Err(ChainBreak {
                seq: seq + 1,
                reason: format!("row {} is missing (next row is {})", seq + 1, row.seq),
            });
        }
        if row.prev_hash != prev {
            return Err(ChainBreak {
                seq: row.seq,
                reason: "prev_hash does not match the previous row".into(),
            });
        }
        if row_hash(row) != row.hash {
            return Err(ChainBreak {
                seq: row.seq,
                reason: "the row was edited (hash mismatch)".into(),
            });
        }
        seq = row.seq;
        prev = row.hash.clone();
    }
    Ok((seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(n: i64) -> Vec<AuditRow> {
        let events: Vec<NewAuditEvent> = (1..=n)
            .map(|seq| NewAuditEvent {
                at_ms: 1000 + seq,
                kind: "call.allowed".into(),
                actor: "agent:a".into(),
                task_id: None,
                detail: json!({"n": seq}),
            })
            .collect();
        chain_after(None, &events)
    }

    #[test]
    fn edits_and_deletions_break_the_chain() {
        let good = rows(5);
        assert_eq!(verify_chain((0, ""), &good).unwrap().0, 5);
        let mut edited = good.clone();
        edited[2].actor = "agent:b".into();
        assert_eq!(verify_chain((0, ""), &edited).unwrap_err().seq, 3);
        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(verify_chain((0, ""), &deleted).unwrap_err().seq, 2);
    }
}
