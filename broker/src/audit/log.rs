//! The audit log: append-only, hash-chained, written behind the request path.
//!
//! Each row's hash is SHA-256 over its content and the previous row's hash, so editing
//! or deleting a row breaks every hash after it ([`verify_chain`]). Events never hold
//! token text or secrets: tokens are named by revocation id.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::store::{AuditRow, NewAuditEvent, Store};

/// One thing worth recording.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What happened (`task.issued`, `call.denied`, …).
    pub kind: &'static str,
    /// Who did it (`agent:x`, `approver:y`, `admin`, `broker`).
    pub actor: String,
    /// The task concerned.
    pub task_id: Option<String>,
    /// Details.
    pub detail: Value,
}

enum Message {
    Event(AuditEvent),
    Flush(oneshot::Sender<()>),
}

/// Handle to the audit writer.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Message>,
    /// Set while writes fail (disk full, read-only folder): calls are refused then, so
    /// no call goes unaudited for longer than one failed write.
    failing: Arc<AtomicBool>,
    /// When to sign the next checkpoint ([`crate::audit::checkpoint`]).
    checkpoints: Arc<CheckpointTrigger>,
}

/// Counts events written since the last checkpoint and wakes the checkpoint signer once
/// `every` of them are in the store.
struct CheckpointTrigger {
    every: u64,
    since: AtomicU64,
    due: Notify,
}

impl CheckpointTrigger {
    fn written(&self, events: usize) {
        let since = self.since.fetch_add(events as u64, Ordering::AcqRel) + events as u64;
        if self.every > 0 && since >= self.every {
            self.due.notify_one();
        }
    }
}

/// Events buffered before callers wait.
const QUEUE: usize = 65_536;

impl Audit {
    /// Starts the writer, continuing the chain already in the store. A checkpoint is due
    /// after every `checkpoint_every` events written (0: not by count).
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Clock,
        checkpoint_every: u64,
    ) -> anyhow::Result<Audit> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        let checkpoints = Arc::new(CheckpointTrigger {
            every: checkpoint_every,
            since: AtomicU64::new(0),
            due: Notify::new(),
        });
        tokio::spawn(writer(
            store,
            clock,
            rx,
            failing.clone(),
            checkpoints.clone(),
        ));
        Ok(Audit {
            tx,
            failing,
            checkpoints,
        })
    }

    /// Resolves once enough events were written since the last checkpoint.
    pub async fn checkpoint_due(&self) {
        self.checkpoints.due.notified().await
    }

    /// A checkpoint is being signed: counting starts again.
    pub fn checkpoint_taken(&self) {
        self.checkpoints.since.store(0, Ordering::Release);
    }

    /// Refuses (503) while the audit log cannot be written.
    pub fn check_writable(&self) -> Result<(), ApiError> {
        if self.failing.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(
                "the audit log cannot be written (disk full or read-only data folder?); calls are refused until it can".into(),
            ));
        }
        Ok(())
    }

    /// Records an event (waits only if the queue is full).
    pub async fn record(&self, event: AuditEvent) {
        if self.tx.send(Message::Event(event)).await.is_err() {
            tracing::error!("audit writer has stopped; event not recorded");
        }
    }

    /// Waits until every event recorded before this call is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn writer(
    store: Arc<dyn Store>,
    clock: Clock,
    mut rx: mpsc::Receiver<Message>,
    failing: Arc<AtomicBool>,
    checkpoints: Arc<CheckpointTrigger>,
) {
    let mut pending: Vec<NewAuditEvent> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        for message in batch {
            match message {
                Message::Event(event) => pending.push(NewAuditEvent {
                    at_ms: clock.now_ms(),
                    kind: event.kind.to_string(),
                    actor: event.actor,
                    task_id: event.task_id,
                    detail: event.detail,
                }),
                Message::Flush(done) => waiters.push(done),
            }
        }
        // A failed write (disk full, read-only) is retried; events are never dropped or reordered.
        let mut delay = Duration::from_millis(50);
        while !pending.is_empty() {
            match store.append_audit(&pending).await {
                Ok(()) => {
                    checkpoints.written(pending.len());
                    pending.clear();
                    if failing.swap(false, Ordering::AcqRel) {
                        tracing::warn!("the audit log is writable again; calls resume");
                    }
                }
                Err(err) => {
                    failing.store(true, Ordering::Release);
                    tracing::error!(error = %err, rows = pending.len(), "cannot write audit rows; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

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
