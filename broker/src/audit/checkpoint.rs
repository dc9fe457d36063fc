//! Signed checkpoints of the audit chain: what makes deleting the newest rows visible.
//!
//! The hash chain ([`crate::audit::log`]) shows an edited or a missing row *inside* the log,
//! but a log cut short is still a valid chain. So every `N` events or `T` seconds (only
//! when there are new events), and once more on a graceful shutdown, the broker signs
//! the chain's head with its root key: `{seq, hash, at, kid, signature}`. A checkpoint
//! names a row; if that row is gone, or holds another hash, the log was cut or rewritten.
//!
//! Checkpoints are stored in their own table (replicas share it: the seq is the key, so
//! two replicas signing the same head store it once) and, optionally, appended as JSON
//! lines to a file outside the database (`--audit-checkpoint-file`, fsynced), so an
//! attacker holding only the database cannot remove them. `GET /v1/audit/checkpoints`
//! publishes them for collectors; `leash audit verify` checks rows against them
//! ([`verify_log`]).
//!
//! The signed bytes are [`signed_bytes`]: domain-separated text an external verifier can
//! rebuild from the published JSON alone. A checkpoint holds no secret.

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use biscuit_auth::PublicKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::log::Audit;
use crate::clock::{Clock, rfc3339};
use crate::store::chain::{ChainBreak, verify_chain};
use crate::store::{AuditCheckpoint, Store};
use crate::tokens::keys::{DetachedSignatureError, RootKeys, verify_detached};

/// The first line of every signed checkpoint: the signature means nothing elsewhere.
pub const DOMAIN: &str = "leash-audit-checkpoint-v1";

/// The bytes a checkpoint's signature covers:
/// `leash-audit-checkpoint-v1\n{seq}\n{hash}\n{at}`, with `seq` in decimal, `hash` the
/// row's lowercase hex hash and `at` the RFC 3339 time exactly as published.
pub fn signed_bytes(seq: i64, hash: &str, at_ms: i64) -> Vec<u8> {
    format!("{DOMAIN}\n{seq}\n{hash}\n{}", rfc3339(at_ms)).into_bytes()
}

/// Signs the head `(seq, hash)` at `at_ms` with the current signing root key.
pub fn sign(keys: &RootKeys, seq: i64, hash: &str, at_ms: i64) -> anyhow::Result<AuditCheckpoint> {
    let (kid, signature) = keys
        .sign_detached(&signed_bytes(seq, hash, at_ms))
        .context("cannot sign the audit checkpoint")?;
    Ok(AuditCheckpoint {
        seq,
        hash: hash.to_string(),
        at_ms,
        kid,
        signature,
    })
}

/// Why a checkpoint's signature does not hold.
pub fn check_signature(
    checkpoint: &AuditCheckpoint,
    keys: &BTreeMap<u32, PublicKey>,
) -> Result<(), String> {
    let kid = checkpoint.kid;
    let bytes = signed_bytes(checkpoint.seq, &checkpoint.hash, checkpoint.at_ms);
    verify_detached(keys, kid, &checkpoint.signature, &bytes).map_err(|err| match err {
        DetachedSignatureError::UnknownKey => format!("is signed by unknown root key {kid}"),
        DetachedSignatureError::NotEd25519 => {
            format!("root key {kid} is not a valid ed25519 key")
        }
        DetachedSignatureError::Malformed => "has a malformed signature".to_string(),
        DetachedSignatureError::Mismatch => {
            format!("has a signature that does not verify with root key {kid} (forged or altered)")
        }
    })
}

/// A checkpoint as published (`GET /v1/audit/checkpoints`) and as a line of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedCheckpoint {
    /// The seq of the row it covers.
    pub seq: i64,
    /// That row's hash (hex).
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub at: String,
    /// The root key id that signed it.
    pub kid: u32,
    /// Ed25519 signature, base64url without padding.
    pub signature: String,
}

impl From<&AuditCheckpoint> for PublishedCheckpoint {
    fn from(c: &AuditCheckpoint) -> Self {
        PublishedCheckpoint {
            seq: c.seq,
            hash: c.hash.clone(),
            at: rfc3339(c.at_ms),
            kid: c.kid,
            signature: c.signature.clone(),
        }
    }
}

/// The JSON of one checkpoint, as published.
pub fn to_json(checkpoint: &AuditCheckpoint) -> Value {
    json!(PublishedCheckpoint::from(checkpoint))
}

/// Reads one line of a checkpoint file.
pub fn parse_line(line: &str) -> Result<AuditCheckpoint, String> {
    let published: PublishedCheckpoint =
        serde_json::from_str(line).map_err(|err| format!("not a checkpoint: {err}"))?;
    let at_ms = crate::clock::parse_rfc3339(&published.at)
        .ok_or_else(|| format!("{:?} is not an RFC 3339 time", published.at))?;
    Ok(AuditCheckpoint {
        seq: published.seq,
        hash: published.hash,
        at_ms,
        kid: published.kid,
        signature: published.signature,
    })
}

/// Every checkpoint of a checkpoint file; a line that is not one is an error naming it.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<AuditCheckpoint>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_line(line)
                .map_err(|err| anyhow::anyhow!("{} line {}: {err}", path.display(), index + 1))
        })
        .collect()
}

/// Appends one checkpoint as a JSON line and fsyncs it.
pub async fn append_to_file(path: &Path, checkpoint: &AuditCheckpoint) -> std::io::Result<()> {
    let mut line = to_json(checkpoint).to_string();
    line.push('\n');
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = open_for_append(&path)?;
        // One write of a short line: with O_APPEND it lands whole, after every other line.
        file.write_all(line.as_bytes())?;
        file.sync_data()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Opens (creating) the checkpoint file for appending; `leash serve` calls it at start so
/// an unwritable path stops the start instead of failing later.
pub fn open_for_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Signs audit checkpoints: the audit writer (which says when one is due), the store,
/// the root keys, the clock, and the optional file outside the database.
#[derive(Clone)]
pub struct Checkpoints {
    /// The audit writer.
    pub audit: Audit,
    /// Where the chain and its checkpoints live.
    pub store: Arc<dyn Store>,
    /// The root keys that sign.
    pub keys: Arc<RootKeys>,
    /// The clock.
    pub clock: Clock,
    /// Also append every checkpoint this broker signs here.
    pub file: Option<PathBuf>,
    /// Sign this often when there are new events (0: not by time).
    pub interval: Duration,
}

impl Checkpoints {
    /// Signs the chain's head unless a checkpoint already covers it; stores it (and appends
    /// it to the file when this broker stored it). `None` when there was nothing to sign.
    pub async fn checkpoint_head(&self) -> anyhow::Result<Option<AuditCheckpoint>> {
        self.audit.checkpoint_taken();
        let Some((seq, hash)) = self.store.audit_head().await? else {
            return Ok(None);
        };
        if let Some(latest) = self.store.latest_checkpoint().await?
            && latest.seq >= seq
        {
            if latest.seq > seq {
                tracing::error!(
                    head = seq,
                    checkpoint = latest.seq,
                    "the audit log ends before its latest checkpoint: rows were deleted (run `leash audit verify`)"
                );
            }
            return Ok(None);
        }
        let checkpoint = sign(&self.keys, seq, &hash, self.clock.now_ms())?;
        if !self.store.insert_checkpoint(&checkpoint).await? {
            // Another replica signed this head first: one checkpoint per head is enough.
            return Ok(None);
        }
        if let Some(path) = &self.file {
            append_to_file(path, &checkpoint).await.map_err(|err| {
                anyhow::anyhow!(
                    "cannot append the audit checkpoint to {}: {err}",
                    path.display()
                )
            })?;
        }
        Ok(Some(checkpoint))
    }

    /// Signs checkpoints for as long as the broker runs: every `audit_checkpoint_interval`
    /// (0: never by time) or as soon as `audit_checkpoint_events` events were written.
    pub async fn run_forever(self) {
        let interval = self.interval;
        loop {
            let timer = async {
                if interval.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(interval).await
                }
            };
            tokio::select! {
                _ = timer => {}
                _ = self.audit.checkpoint_due() => {}
            }
            if let Err(err) = self.checkpoint_head().await {
                tracing::warn!(error = %err, "cannot sign an audit checkpoint; will retry");
            }
        }
    }
}

/// Where a checkpoint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The store's checkpoint table.
    Database,
    /// The checkpoint file (`--checkpoints`).
    File,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Database => "database",
            Source::File => "file",
        }
    }
}

/// Why an audit log does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogProblem {
    /// A row was edited or is missing inside the chain.
    #[error(transparent)]
    Chain(#[from] ChainBreak),
    /// A checkpoint is forged, or the rows up to it were rewritten.
    #[error("checkpoint at seq {seq} (from the {from}) {reason}")]
    Checkpoint {
        /// The checkpoint's seq.
        seq: i64,
        /// Database or file.
        from: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The log ends before a checkpoint: its newest rows were deleted.
    #[error(
        "truncated: rows after seq {head} are missing (checkpoint at seq {seq}, signed {at}, from the {from})"
    )]
    Truncated {
        /// The last row there is (0: none).
        head: i64,
        /// The latest checkpoint's seq.
        seq: i64,
        /// When it was signed (RFC 3339).
        at: String,
        /// Database or file.
        from: &'static str,
    },
}

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The last row's seq (the number of events).
    pub head: i64,
    /// The last row's hash.
    pub head_hash: String,
    /// Rows up to this seq were pruned for retention; the checkpoint there anchors the rest.
    pub pruned_through: Option<i64>,
    /// Distinct checkpoints checked.
    pub checkpoints: usize,
    /// The latest checkpoint, if any.
    pub latest: Option<AuditCheckpoint>,
}

/// Verifies a whole audit log: every checkpoint's signature (`keys`: every root public
/// key, retired ones included), the hash chain row by row, each checkpoint against the
/// row at its seq, and that no row the latest checkpoint covers is missing at the end.
/// `file` holds the checkpoints of a checkpoint file; each must also be in the store.
/// Problems are reported in chain order: the first bad row or checkpoint is named.
pub async fn verify_log(
    store: &dyn Store,
    file: &[AuditCheckpoint],
    keys: &BTreeMap<u32, PublicKey>,
) -> anyhow::Result<Result<Verified, LogProblem>> {
    let mut stored = Vec::new();
    loop {
        let after = stored.last().map_or(0, |c: &AuditCheckpoint| c.seq);
        let page = store.checkpoints_after(after, 5000).await?;
        if page.is_empty() {
            break;
        }
        stored.extend(page);
    }
    let mut by_seq: BTreeMap<i64, Vec<(&AuditCheckpoint, Source)>> = BTreeMap::new();
    for (checkpoint, source) in stored
        .iter()
        .map(|c| (c, Source::Database))
        .chain(file.iter().map(|c| (c, Source::File)))
    {
        let same = by_seq.entry(checkpoint.seq).or_default();
        if !same.iter().any(|(known, _)| *known == checkpoint) {
            same.push((checkpoint, source));
        }
    }
    for (checkpoint, source) in by_seq.values().flatten() {
        if let Err(reason) = check_signature(checkpoint, keys) {
            return Ok(Err(LogProblem::Checkpoint {
                seq: checkpoint.seq,
                from: source.name(),
                reason,
            }));
        }
    }
    let mut head: (i64, String) = (0, String::new());
    // A log pruned for retention starts after a signed checkpoint, which anchors it.
    let first = store.audit_after(0, 1).await?;
    let mut pruned_through = None;
    if let Some(first) = first.first()
        && first.seq > 1
    {
        let anchor = first.seq - 1;
        let at_anchor = by_seq.get(&anchor).map(Vec::as_slice).unwrap_or_default();
        let Some((checkpoint, _)) = at_anchor.first() else {
            return Ok(Err(ChainBreak {
                seq: 1,
                reason: format!(
                    "rows 1 to {anchor} are missing and no signed checkpoint at seq {anchor} anchors the rest (retention prunes only up to a checkpoint)"
                ),
            }
            .into()));
        };
        // Its row is gone: the checkpoints there (database and file) must agree with
        // each other, as each would have to agree with the row.
        if let Some((other, source)) = at_anchor.iter().find(|(c, _)| c.hash != checkpoint.hash) {
            return Ok(Err(LogProblem::Checkpoint {
                seq: anchor,
                from: source.name(),
                reason: format!(
                    "names hash {} for row {anchor}, another checkpoint names {}: one of them is not this log's",
                    other.hash, checkpoint.hash
                ),
            }));
        }
        head = (anchor, checkpoint.hash.clone());
        pruned_through = Some(anchor);
    }
    // The broker records each pruning it does; a cut without its record was not retention.
    let mut pruning_recorded_at = None;
    loop {
        let rows = store.audit_after(head.0, 5000).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            if row.kind == "audit.pruned"
                && pruned_through.is_some()
                && row
                    .detail
                    .get("through_seq")
                    .and_then(serde_json::Value::as_i64)
                    == pruned_through
            {
                pruning_recorded_at = Some(row.seq);
            }
            head = match verify_chain((head.0, &head.1), std::slice::from_ref(row)) {
                Ok(next) => next,
                Err(broken) => return Ok(Err(broken.into())),
            };
            for (checkpoint, source) in by_seq.get(&row.seq).into_iter().flatten() {
                if checkpoint.hash != row.hash {
                    return Ok(Err(LogProblem::Checkpoint {
                        seq: checkpoint.seq,
                        from: source.name(),
                        reason: format!(
                            "does not match row {}: the rows up to it were rewritten",
                            row.seq
                        ),
                    }));
                }
            }
        }
    }
    let latest = by_seq
        .iter()
        .next_back()
        .and_then(|(_, all)| all.first())
        .copied();
    if let Some(anchor) = pruned_through {
        let sealed = latest.map_or(0, |(checkpoint, _)| checkpoint.seq);
        let problem = match pruning_recorded_at {
            None => Some(format!(
                "rows 1 to {anchor} are missing and no audit.pruned row records a pruning through seq {anchor}: they were deleted, not pruned for retention"
            )),
            Some(at) if at > sealed => Some(format!(
                "rows 1 to {anchor} are missing and the audit.pruned row recording it (seq {at}) is not yet under a signed checkpoint (latest covers seq {sealed}); run again after the next checkpoint"
            )),
            Some(_) => None,
        };
        if let Some(reason) = problem {
            return Ok(Err(ChainBreak { seq: 1, reason }.into()));
        }
    }
    if let Some((checkpoint, source)) = latest
        && checkpoint.seq > head.0
    {
        return Ok(Err(LogProblem::Truncated {
            head: head.0,
            seq: checkpoint.seq,
            at: rfc3339(checkpoint.at_ms),
            from: source.name(),
        }));
    }
    for checkpoint in file {
        if !stored.contains(checkpoint) {
            return Ok(Err(LogProblem::Checkpoint {
                seq: checkpoint.seq,
                from: Source::File.name(),
                reason: "is missing from the database: checkpoints were deleted there".into(),
            }));
        }
    }
    Ok(Ok(Verified {
        head: head.0,
        head_hash: head.1,
        pruned_through,
        checkpoints: by_seq.values().map(Vec::len).sum(),
        latest: latest.map(|(c, _)| c.clone()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_bytes_are_domain_separated_text() {
        assert_eq!(
            String::from_utf8(signed_bytes(42, "ab12", 1_700_000_000_123)).unwrap(),
            "leash-audit-checkpoint-v1\n42\nab12\n2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_breaks_it() {
        let keys = RootKeys::generate();
        let public = keys.public_keys();
        let good = sign(&keys, 7, "cafe", 1_000).unwrap();
        assert_eq!(check_signature(&good, &public), Ok(()));
        let line = to_json(&good).to_string();
        assert_eq!(parse_line(&line).unwrap(), good, "file lines round-trip");
        for forged in [
            AuditCheckpoint {
                seq: 8,
                ..good.clone()
            },
            AuditCheckpoint {
                hash: "cafd".into(),
                ..good.clone()
            },
            AuditCheckpoint {
                at_ms: 1_001,
                ..good.clone()
            },
        ] {
            assert!(
                check_signature(&forged, &public)
                    .unwrap_err()
                    .contains("does not verify")
            );
        }
        let unknown = AuditCheckpoint {
            kid: 9,
            ..good.clone()
        };
        assert!(
            check_signature(&unknown, &public)
                .unwrap_err()
                .contains("unknown root key 9")
        );
        let garbled = AuditCheckpoint {
            signature: "!!".into(),
            ..good
        };
        assert!(
            check_signature(&garbled, &public)
                .unwrap_err()
                .contains("malformed")
        );
    }

    /// A pruned log starts at a checkpoint whose row is gone: every checkpoint at that
    /// seq (database and file) must name the same hash, or the log is not vouched for
    /// (it used to take whichever came first).
    #[tokio::test]
    async fn checkpoints_at_a_pruned_anchor_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("leash.db"))
            .await
            .unwrap();
        let event = |at_ms: i64| crate::store::NewAuditEvent {
            at_ms,
            kind: "k".into(),
            actor: "a".into(),
            task_id: None,
            detail: json!({}),
        };
        store
            .append_audit(&[event(1), event(2), event(5_000)])
            .await
            .unwrap();
        let keys = RootKeys::generate();
        let signed_row = |row: crate::store::AuditRow| sign(&keys, row.seq, &row.hash, 10).unwrap();
        let anchor = signed_row(store.audit_after(1, 1).await.unwrap().remove(0));
        store.insert_checkpoint(&anchor).await.unwrap();
        let record = |pruned: &crate::store::Pruned| crate::store::NewAuditEvent {
            detail: json!({ "through_seq": pruned.through_seq }),
            kind: "audit.pruned".into(),
            ..event(9_000)
        };
        let pruned = store.prune_history(1_000, 100, &record).await.unwrap();
        assert_eq!(pruned.through_seq, Some(2));
        let head = signed_row(store.audit_after(3, 1).await.unwrap().remove(0));
        store.insert_checkpoint(&head).await.unwrap();
        let public = keys.public_keys();

        let verified = verify_log(&store, std::slice::from_ref(&anchor), &public)
            .await
            .unwrap();
        assert_eq!(verified.map(|v| v.pruned_through), Ok(Some(2)));

        let other = sign(&keys, 2, &"0".repeat(64), 11).unwrap();
        let problem = verify_log(&store, &[other], &public)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&problem, LogProblem::Checkpoint { seq: 2, from: "file", reason }
                if reason.contains("another checkpoint names")),
            "{problem}"
        );
    }

    /// Logs longer than a page (5,000 rows) are checked across pages, by the verifier
    /// and by a retention cut: an edited row in a later page is named by both, and the
    /// cut deletes nothing until the row is put back.
    #[tokio::test]
    async fn long_logs_are_checked_across_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leash.db");
        let store = crate::store::SqliteStore::open(&path).await.unwrap();
        let events: Vec<crate::store::NewAuditEvent> = (1..=12_000)
            .map(|n| crate::store::NewAuditEvent {
                at_ms: if n == 12_000 { 5_000 } else { 1 },
                kind: "k".into(),
                actor: "a".into(),
                task_id: None,
                detail: json!({ "n": n }),
            })
            .collect();
        for chunk in events.chunks(1_000) {
            store.append_audit(chunk).await.unwrap();
        }
        let keys = RootKeys::generate();
        let row = store.audit_after(10_999, 1).await.unwrap().remove(0);
        store
            .insert_checkpoint(&sign(&keys, row.seq, &row.hash, 10).unwrap())
            .await
            .unwrap();
        let public = keys.public_keys();
        let verified = verify_log(&store, &[], &public).await.unwrap().unwrap();
        assert_eq!((verified.head, verified.pruned_through), (12_000, None));

        let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let set_actor = |actor: &'static str| {
            let raw = raw.clone();
            async move {
                sqlx::query("UPDATE audit SET actor = ? WHERE seq = 7001")
                    .bind(actor)
                    .execute(&raw)
                    .await
                    .unwrap();
            }
        };
        set_actor("someone else").await;
        let problem = verify_log(&store, &[], &public).await.unwrap().unwrap_err();
        assert!(problem.to_string().contains("seq 7001"), "{problem}");
        let record = |pruned: &crate::store::Pruned| crate::store::NewAuditEvent {
            at_ms: 9_000,
            kind: "audit.pruned".into(),
            actor: "broker".into(),
            task_id: None,
            detail: json!({ "through_seq": pruned.through_seq }),
        };
        let refused = store
            .prune_history(1_000, 20_000, &record)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("seq 7001"), "{refused}");

        set_actor("a").await;
        let pruned = store.prune_history(1_000, 20_000, &record).await.unwrap();
        assert_eq!((pruned.through_seq, pruned.rows), (Some(11_000), 11_000));
    }
}
