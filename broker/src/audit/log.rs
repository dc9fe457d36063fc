//! The audit log: append-only, hash-chained, written behind the request path.
//!
//! Each row's hash is SHA-256 over its content and the previous row's hash, so editing
//! or deleting a row breaks every hash after it ([`crate::store::chain::verify_chain`]).
//! Events never hold token text or secrets: tokens are named by revocation id.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::events::hub::Events;
use crate::store::{NewAuditEvent, Store};

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
    /// Flushes on their way to the writer: it does not linger while one is.
    flushes: Arc<Flushes>,
    /// Where the writer announces the tasks whose rows it has just committed.
    announce: Arc<OnceLock<Events>>,
}

/// Flush requests sent to the writer and not yet taken by it.
#[derive(Default)]
struct Flushes {
    /// How many are queued (counted before they are sent).
    queued: AtomicUsize,
    /// Ends a linger under way when one is sent.
    sent: Notify,
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

/// Group commit: the writer waits this long after an event for more to arrive, so a
/// busy broker writes one transaction (one fsync) per [`LINGER`] instead of one per
/// call. It is also how far behind its answer a call's audit row may be committed (plus
/// the write itself); `flush` never waits for it: a queued flush ends the wait.
pub const LINGER: Duration = Duration::from_millis(2);

/// At most this many events go into one transaction.
const MAX_BATCH: usize = 1024;

/// Everything that arrives within [`LINGER`] of `first` (at most [`MAX_BATCH`]). The
/// writer sleeps through the wait and then takes what is queued, rather than waking for
/// each event as it arrives: one wake per batch, not one per call. It does not wait with
/// a backlog (a full batch queued) or while a flush request is queued, and a flush sent
/// during the wait ends it.
async fn gather(
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
    flushes: &Flushes,
) -> Vec<Message> {
    let flushing = matches!(first, Message::Flush(_)) || flushes.queued.load(Ordering::SeqCst) > 0;
    if !flushing && rx.len() + 1 < MAX_BATCH {
        tokio::select! {
            _ = tokio::time::sleep(LINGER) => {}
            _ = flushes.sent.notified() => {}
        }
    }
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let Ok(message) = rx.try_recv() else { break };
        batch.push(message);
    }
    batch
}

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
        let flushes = Arc::new(Flushes::default());
        let announce = Arc::new(OnceLock::new());
        tokio::spawn(writer(
            store,
            clock,
            rx,
            Shared {
                failing: failing.clone(),
                checkpoints: checkpoints.clone(),
                flushes: flushes.clone(),
                announce: announce.clone(),
            },
        ));
        Ok(Audit {
            tx,
            failing,
            checkpoints,
            flushes,
            announce,
        })
    }

    /// From now on, each committed batch publishes `timeline.appended` on `events` once
    /// per task it holds rows of: what keeps an approver's open timeline live. Only for a
    /// store without a replica feed: with PostgreSQL the feed publishes them, for every
    /// replica's rows.
    pub fn announce_on(&self, events: Events) {
        let _ = self.announce.set(events);
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
        self.flushes.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            self.flushes.sent.notify_one();
            let _ = wait.await;
        } else {
            self.flushes.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What the writer shares with the handles.
struct Shared {
    failing: Arc<AtomicBool>,
    checkpoints: Arc<CheckpointTrigger>,
    flushes: Arc<Flushes>,
    announce: Arc<OnceLock<Events>>,
}

/// Publishes `timeline.appended` once for each task among `rows`.
fn announce(events: &Events, rows: &[NewAuditEvent]) {
    let mut tasks: Vec<&str> = rows.iter().filter_map(|r| r.task_id.as_deref()).collect();
    tasks.sort_unstable();
    tasks.dedup();
    for task_id in tasks {
        events.publish_timeline(task_id);
    }
}

async fn writer(
    store: Arc<dyn Store>,
    clock: Clock,
    mut rx: mpsc::Receiver<Message>,
    shared: Shared,
) {
    let Shared {
        failing,
        checkpoints,
        flushes,
        announce: announced,
    } = shared;
    let mut pending: Vec<NewAuditEvent> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        let batch = gather(first, &mut rx, &flushes).await;
        for message in batch {
            match message {
                Message::Event(event) => pending.push(NewAuditEvent {
                    at_ms: clock.now_ms(),
                    kind: event.kind.to_string(),
                    actor: event.actor,
                    task_id: event.task_id,
                    detail: event.detail,
                }),
                Message::Flush(done) => {
                    flushes.queued.fetch_sub(1, Ordering::SeqCst);
                    waiters.push(done);
                }
            }
        }
        // A failed write (disk full, read-only) is retried; events are never dropped or reordered.
        let mut delay = Duration::from_millis(50);
        while !pending.is_empty() {
            match store.append_audit(&pending).await {
                Ok(()) => {
                    checkpoints.written(pending.len());
                    if let Some(events) = announced.get() {
                        announce(events, &pending);
                    }
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
