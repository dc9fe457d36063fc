//! One task's live state: its runtime (state, window, idle clock, call count, all
//! atomics read on the hot path), the per-prefix call counters of its tokens, the call
//! slot a checked call holds, and the writer that flushes counters behind the hot path
//! (every [`FLUSH_EVERY`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::store::{Store, TaskRecord, TaskState, UsageBatch};

/// Why a task idled out.
pub(super) const IDLE: &str = "it was idle too long";

/// How often counters are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The live view of one task.
#[derive(Debug)]
pub struct TaskRuntime {
    /// The task id.
    pub task_id: String,
    /// Owner agent.
    pub agent: String,
    pub(super) state: AtomicU8,
    pub(super) expires_at_ms: AtomicI64,
    pub(super) idle_timeout_ms: Option<i64>,
    /// The grant's call budget.
    pub max_calls: Option<u64>,
    pub(super) calls: AtomicU64,
    pub(super) last_activity_ms: AtomicI64,
    /// Serialises state changes of this task.
    pub(super) change: Mutex<()>,
    /// Revocation ids of the derived tokens this replica has seen used (at most
    /// [`MAX_DERIVED_SEEN`]): the first call of each records the token's blocks.
    derived_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Derived tokens remembered per task; past it, later ones are recorded by id only.
const MAX_DERIVED_SEEN: usize = 1024;

pub(super) fn state_code(state: TaskState) -> u8 {
    TaskState::ALL.iter().position(|s| *s == state).unwrap_or(0) as u8
}

impl TaskRuntime {
    pub(super) fn from_record(record: &TaskRecord) -> Self {
        TaskRuntime {
            task_id: record.task_id.clone(),
            agent: record.agent.clone(),
            state: AtomicU8::new(state_code(record.state)),
            expires_at_ms: AtomicI64::new(record.expires_at_ms),
            idle_timeout_ms: record.idle_timeout_ms,
            max_calls: record.max_calls,
            calls: AtomicU64::new(record.calls),
            last_activity_ms: AtomicI64::new(record.last_activity_ms),
            change: Mutex::new(()),
            derived_seen: std::sync::Mutex::default(),
        }
    }

    /// Whether this is the first use (on this replica) of the derived token `id`.
    pub fn first_use_of(&self, id: &str) -> bool {
        let Ok(mut seen) = self.derived_seen.lock() else {
            return false;
        };
        if seen.contains(id) || seen.len() >= MAX_DERIVED_SEEN {
            return false;
        }
        seen.insert(id.to_string())
    }

    /// Current state.
    pub fn state(&self) -> TaskState {
        TaskState::ALL[self.state.load(Ordering::SeqCst) as usize % TaskState::ALL.len()]
    }

    pub(super) fn set_state(&self, state: TaskState) {
        self.state.store(state_code(state), Ordering::SeqCst);
    }

    /// End of the window (ms since epoch).
    pub fn expires_at_ms(&self) -> i64 {
        self.expires_at_ms.load(Ordering::SeqCst)
    }

    /// Calls admitted so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Last call or renewal.
    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::SeqCst)
    }

    /// Why the task cannot be used at `now_ms`, if it cannot.
    pub(super) fn lapse(&self, now_ms: i64) -> Option<&'static str> {
        if now_ms >= self.expires_at_ms() {
            return Some("its window ended");
        }
        match self.idle_timeout_ms {
            Some(idle) if now_ms - self.last_activity_ms() >= idle => Some(IDLE),
            _ => None,
        }
    }
}

/// Calls admitted with one prefix of a token chain (one revocation id): with the token
/// that ends at that block and with every token attenuated from it.
///
/// The store holds the deployment-wide total; this broker adds what it admitted since
/// its last write. Each flush adds this broker's committed calls to the store and reads
/// the total back, so every replica sees the others' calls within one flush.
#[derive(Debug, Default)]
pub(super) struct PrefixCounter {
    /// The store's total when last read or written (calls of every replica).
    pub(super) stored: AtomicU64,
    /// Slots taken here and not yet written to the store (in flight or committed).
    pub(super) local: AtomicU64,
    /// Calls committed here and not yet written to the store.
    pub(super) committed: AtomicU64,
    /// When `stored` was last read from or written to the store (ms on [`mono_ms`]).
    pub(super) synced_ms: AtomicU64,
}

impl PrefixCounter {
    pub(super) fn loaded(stored: u64) -> Self {
        PrefixCounter {
            stored: AtomicU64::new(stored),
            synced_ms: AtomicU64::new(mono_ms()),
            ..PrefixCounter::default()
        }
    }

    /// Takes a slot; answers the calls admitted before it.
    pub(super) fn take(&self) -> u64 {
        let local = self.local.fetch_add(1, Ordering::SeqCst);
        self.stored.load(Ordering::SeqCst) + local
    }
}

/// Milliseconds on a monotonic clock, for counter freshness.
pub(super) fn mono_ms() -> u64 {
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    START.elapsed().as_millis() as u64
}

/// A call slot taken from the task's counter and the counter of every prefix of the
/// presented token. Dropping it without [`CallSlot::commit`] gives the slots back (the
/// call was not admitted or not completed).
pub struct CallSlot {
    pub(super) runtime: Arc<TaskRuntime>,
    pub(super) prefixes: Vec<(String, Arc<PrefixCounter>)>,
    /// Calls admitted in the task before this one.
    pub task_calls: u64,
    /// Per block of the token, authority first: calls admitted before this one with the
    /// token ending at that block and everything attenuated from it (counted for budget
    /// blocks only; 0 for the others, whose checks never read it).
    pub prefix_calls: Vec<u64>,
    pub(super) committed: bool,
    pub(super) usage: mpsc::UnboundedSender<Flush>,
}

impl CallSlot {
    /// Keeps the slot: the call counts.
    pub fn commit(mut self, now_ms: i64) {
        self.committed = true;
        self.runtime
            .last_activity_ms
            .fetch_max(now_ms, Ordering::SeqCst);
        for (_, counter) in &self.prefixes {
            counter.committed.fetch_add(1, Ordering::SeqCst);
        }
        let _ = self.usage.send(Flush::Usage(Usage {
            task_id: self.runtime.task_id.clone(),
            calls: self.runtime.calls(),
            last_activity_ms: self.runtime.last_activity_ms(),
            prefixes: std::mem::take(&mut self.prefixes),
        }));
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        if !self.committed {
            self.runtime.calls.fetch_sub(1, Ordering::SeqCst);
            for (_, counter) in &self.prefixes {
                counter.local.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

pub(super) struct Usage {
    task_id: String,
    calls: u64,
    last_activity_ms: i64,
    prefixes: Vec<(String, Arc<PrefixCounter>)>,
}

pub(super) enum Flush {
    Usage(Usage),
    Barrier(oneshot::Sender<()>),
}

/// Writes counters behind the hot path, coalescing per task and per token prefix.
pub(super) async fn write_usage(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Flush>) {
    let mut tasks: HashMap<String, (u64, i64)> = HashMap::new();
    // Keyed by the counter itself: a counter evicted and loaded again meanwhile is
    // another counter for the same id, and both deltas must be written.
    let mut prefixes: HashMap<usize, (String, Arc<PrefixCounter>)> = HashMap::new();
    let mut waiters = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut closed = false;
        tokio::select! {
            message = rx.recv() => match message {
                Some(Flush::Usage(u)) => {
                    let entry = tasks.entry(u.task_id).or_insert((0, 0));
                    entry.0 = entry.0.max(u.calls);
                    entry.1 = entry.1.max(u.last_activity_ms);
                    for (id, counter) in u.prefixes {
                        prefixes.insert(Arc::as_ptr(&counter) as usize, (id, counter));
                    }
                    continue;
                }
                Some(Flush::Barrier(done)) => waiters.push(done),
                None => closed = true,
            },
            _ = ticker.tick() => {}
        }
        if !tasks.is_empty() || !prefixes.is_empty() {
            // What each prefix committed since the last write; taken now, so calls
            // committed during the write go into the next one.
            let written: Vec<(String, Arc<PrefixCounter>, u64)> = prefixes
                .drain()
                .map(|(_, (id, c))| {
                    let delta = c.committed.swap(0, Ordering::SeqCst);
                    (id, c, delta)
                })
                .collect();
            let batch = UsageBatch {
                tasks: tasks
                    .drain()
                    .map(|(id, (calls, last))| (id, calls, last))
                    .collect(),
                tokens: written
                    .iter()
                    .map(|(id, _, delta)| (id.clone(), *delta))
                    .collect(),
            };
            match store.record_usage(&batch).await {
                Ok(totals) => {
                    for ((_, counter, delta), total) in written.iter().zip(totals) {
                        // The total first, then the local share: a call in between sees
                        // its slot counted twice (fail closed), never not at all.
                        counter.stored.fetch_max(total, Ordering::SeqCst);
                        counter.local.fetch_sub(*delta, Ordering::SeqCst);
                        counter.synced_ms.store(mono_ms(), Ordering::SeqCst);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot write call counters; will retry");
                    for (id, calls, last) in batch.tasks {
                        tasks.insert(id, (calls, last));
                    }
                    for (id, counter, delta) in written {
                        counter.committed.fetch_add(delta, Ordering::SeqCst);
                        prefixes.insert(Arc::as_ptr(&counter) as usize, (id, counter));
                    }
                }
            }
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
        if closed {
            break;
        }
    }
}
