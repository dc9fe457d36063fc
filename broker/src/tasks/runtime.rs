//! Tasks in memory: one shared runtime per task, loaded from the store once, changed
//! only under the task's own lock and only after the store has committed the change.
//!
//! The hot path reads atomics (state, window, idle clock, counters) and never waits on
//! the store. Counters are written behind (every [`FLUSH_EVERY`]). Runtime entries stay
//! cached until they are idle longer than any task can live, so there is exactly one
//! runtime per live task and a state change is seen by the very next call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::audit::log::{Audit, AuditEvent};
use crate::clock::{Clock, rfc3339};
use crate::error::ApiError;
use crate::events::hub::Events;
use crate::store::{
    Activation, ApprovalRecord, ApprovalState, Decided, NewTask, Revocation, Store, StoreError,
    TaskRecord, TaskState,
};
use crate::tasks::live::{
    CallSlot, FLUSH_EVERY, Flush, IDLE, PrefixCounter, TaskRuntime, mono_ms, write_usage,
};
use crate::tasks::mints::MintQueue;
use crate::tokens::revocation::RevocationSet;

/// How a request to end a task went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// This request ended it.
    Ended(Vec<Revocation>),
    /// It had already ended in this state.
    AlreadyEnded(TaskState),
}

/// Every task's runtime, and the lifecycle operations.
pub struct Tasks {
    store: Arc<dyn Store>,
    clock: Clock,
    audit: Audit,
    events: Events,
    revoked: Arc<RevocationSet>,
    runtimes: moka::future::Cache<String, Arc<TaskRuntime>>,
    /// Per revocation id: calls admitted with that prefix of a token chain.
    prefix_counters: moka::future::Cache<String, Arc<PrefixCounter>>,
    /// Whether other brokers write the same counters (replicas on one PostgreSQL): a
    /// counter not written here for a flush interval is re-read before it is used.
    shared_store: bool,
    /// Counter updates and flush barriers, in one queue so a barrier follows every
    /// update sent before it.
    flush: mpsc::UnboundedSender<Flush>,
    /// New tasks, committed in groups.
    mints: MintQueue,
    /// Agent revokes whose per-task events and audit rows are still being queued:
    /// [`Tasks::flush`] waits for them.
    ending: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Tasks {
    /// Starts the registry and its counter writer. `longest_ttl` bounds how long an
    /// untouched runtime may stay cached.
    pub fn start(
        store: Arc<dyn Store>,
        clock: Clock,
        audit: Audit,
        events: Events,
        revoked: Arc<RevocationSet>,
        longest_ttl: Duration,
        shared_store: bool,
    ) -> Arc<Tasks> {
        let idle = longest_ttl + Duration::from_secs(60);
        let (flush_tx, flush_rx) = mpsc::unbounded_channel::<Flush>();
        tokio::spawn(write_usage(store.clone(), flush_rx));
        let mints = MintQueue::start(store.clone());
        Arc::new(Tasks {
            store,
            clock,
            audit,
            events,
            revoked,
            runtimes: moka::future::Cache::builder().time_to_idle(idle).build(),
            prefix_counters: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(idle)
                .build(),
            flush: flush_tx,
            mints,
            ending: tokio::sync::Mutex::new(Vec::new()),
            shared_store,
        })
    }

    /// The runtime of a task, loading it from the store on first use. `None` if unknown.
    pub async fn runtime(&self, task_id: &str) -> Result<Option<Arc<TaskRuntime>>, ApiError> {
        let store = self.store.clone();
        let id = task_id.to_string();
        let loaded = self
            .runtimes
            .try_get_with(task_id.to_string(), async move {
                match store.get_task(&id).await {
                    Ok(Some(record)) => Ok(Arc::new(TaskRuntime::from_record(&record))),
                    Ok(None) => Err(None),
                    Err(err) => Err(Some(err)),
                }
            })
            .await;
        match loaded {
            Ok(runtime) => Ok(Some(runtime)),
            Err(err) => match err.as_ref() {
                None => Ok(None),
                Some(store_err) => Err(ApiError::internal(anyhow::anyhow!(
                    "loading task: {store_err}"
                ))),
            },
        }
    }

    /// Stores a new task and caches its runtime.
    /// `credential` is the revocation id of the agent credential that asks; if it is
    /// revoked (on any replica) nothing is stored and the answer is `false`.
    pub async fn create(
        &self,
        record: &TaskRecord,
        revocation_id: Option<&str>,
        credential: Option<&str>,
    ) -> Result<bool, StoreError> {
        let new = NewTask {
            task: record.clone(),
            revocation_id: revocation_id.map(str::to_string),
            credential: credential.map(str::to_string),
        };
        if !self.mints.insert(new).await? {
            return Ok(false);
        }
        let runtime = Arc::new(TaskRuntime::from_record(record));
        self.runtimes
            .insert(record.task_id.clone(), runtime.clone())
            .await;
        // An agent revoke that committed between the mint and this line did not see
        // this runtime: its token is in the revocation set, and so the task is revoked.
        if revocation_id.is_some_and(|id| self.revoked.contains(id)) {
            runtime.set_state(TaskState::Revoked);
        }
        Ok(true)
    }

    /// Ends a task (complete, revoke, expire). The store commits first; then every
    /// later call sees the new state.
    pub async fn end(
        &self,
        task_id: &str,
        state: TaskState,
        reason: &str,
        actor: &str,
    ) -> Result<EndOutcome, ApiError> {
        let Some(runtime) = self.runtime(task_id).await? else {
            return Err(ApiError::NotFound(format!("no task {task_id}")));
        };
        let _guard = runtime.change.lock().await;
        let now = self.clock.now_ms();
        let ended = self
            .store
            .end_task(task_id, state, reason, now)
            .await
            .map_err(ApiError::internal)?;
        match ended {
            Some(revocations) => {
                runtime.set_state(state);
                self.revoked.extend(&revocations);
                let ids: Vec<&str> = revocations
                    .iter()
                    .map(|r| r.revocation_id.as_str())
                    .collect();
                let ended = Ended {
                    agent: &runtime.agent,
                    state,
                    reason,
                    actor,
                };
                ended
                    .announce(&self.events, &self.audit, task_id, &ids)
                    .await;
                Ok(EndOutcome::Ended(revocations))
            }
            None => {
                let stored = self
                    .store
                    .get_task(task_id)
                    .await
                    .map_err(ApiError::internal)?
                    .map(|r| r.state)
                    .unwrap_or(TaskState::Revoked);
                runtime.set_state(stored);
                Ok(EndOutcome::AlreadyEnded(stored))
            }
        }
    }

    /// Ends every live task of `agent` at once (an agent revoke): one transaction
    /// whatever their number, then the same in-memory changes, events and audit rows as
    /// [`Tasks::end`] for each. The runtimes already loaded are held under their locks
    /// across the commit, so no renewal in flight can set one active again afterwards.
    /// Returns how many tasks this call ended.
    pub async fn end_agent(
        &self,
        agent: &str,
        state: TaskState,
        reason: &str,
        actor: &str,
    ) -> Result<u64, ApiError> {
        let mut loaded = self.loaded_of(agent);
        loaded.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let mut guards = Vec::with_capacity(loaded.len());
        for runtime in &loaded {
            guards.push(runtime.change.lock().await);
        }
        let now = self.clock.now_ms();
        let (ended, revocations) = self
            .store
            .end_agent_tasks(agent, state, reason, now)
            .await
            .map_err(ApiError::internal)?;
        self.revoked.extend(&revocations);
        // Every ended task loaded by now, including one a call loaded since the
        // runtimes were collected (its tokens are in the revocation set already).
        for task_id in &ended {
            if let Some(runtime) = self.runtimes.get(task_id).await {
                runtime.set_state(state);
            }
        }
        drop(guards);
        // Events and audit rows, one per task as for a single end, written behind the
        // answer: the tasks have ended (store, memory, revocation set) by now, and
        // queueing 100,000 audit rows must not hold up the revoke's answer.
        let count = ended.len() as u64;
        let (events, audit) = (self.events.clone(), self.audit.clone());
        let (agent, reason, actor) = (agent.to_string(), reason.to_string(), actor.to_string());
        let handle = tokio::spawn(async move {
            let mut ids_of: std::collections::HashMap<String, Vec<String>> =
                std::collections::HashMap::new();
            for revocation in revocations {
                if let Some(task_id) = revocation.task_id {
                    ids_of
                        .entry(task_id)
                        .or_default()
                        .push(revocation.revocation_id);
                }
            }
            let end = Ended {
                agent: &agent,
                state,
                reason: &reason,
                actor: &actor,
            };
            for task_id in ended {
                let ids = ids_of.remove(&task_id).unwrap_or_default();
                end.announce(&events, &audit, &task_id, &ids).await;
            }
        });
        let mut ending = self.ending.lock().await;
        ending.retain(|h| !h.is_finished());
        ending.push(handle);
        Ok(count)
    }

    /// The runtimes of `agent`'s tasks that are loaded.
    fn loaded_of(&self, agent: &str) -> Vec<Arc<TaskRuntime>> {
        self.runtimes
            .iter()
            .filter(|(_, runtime)| runtime.agent == agent)
            .map(|(_, runtime)| runtime)
            .collect()
    }

    /// Re-reads the loaded tasks of `agent` (another replica ended them all).
    pub async fn reload_agent(&self, agent: &str) -> Result<(), ApiError> {
        let ids = self
            .loaded_of(agent)
            .iter()
            .map(|r| r.task_id.clone())
            .collect();
        self.reload(ids).await
    }

    /// Commits an approved issuance or renewal (the approval decision and the task's new
    /// token, in one transaction) under the task's lock, then updates the live state.
    pub async fn apply_approval(
        &self,
        approval: &ApprovalRecord,
        actor: &str,
        note: Option<&str>,
        activation: &Activation,
    ) -> Result<Decided, ApiError> {
        let Some(runtime) = self.runtime(&approval.task_id).await? else {
            return Err(ApiError::NotFound(format!("no task {}", approval.task_id)));
        };
        let _guard = runtime.change.lock().await;
        let now = self.clock.now_ms();
        let decided = self
            .store
            .decide_approval(
                &approval.approval_id,
                ApprovalState::Approved,
                actor,
                note,
                now,
                Some(activation),
            )
            .await
            .map_err(ApiError::internal)?;
        if decided == Decided::Done {
            runtime
                .expires_at_ms
                .store(activation.expires_at_ms, Ordering::SeqCst);
            runtime.last_activity_ms.fetch_max(now, Ordering::SeqCst);
            if runtime.state() == TaskState::PendingApproval {
                runtime.set_state(TaskState::Active);
                self.events.publish(
                    "task.activated",
                    Some(&approval.task_id),
                    json!({ "task_id": approval.task_id, "agent": runtime.agent, "expires_at": rfc3339(activation.expires_at_ms) }),
                );
            }
        }
        Ok(decided)
    }

    /// Applies a task's stored state after another replica changed it.
    pub async fn apply_external(&self, record: &TaskRecord) {
        if let Some(runtime) = self.runtimes.get(&record.task_id).await {
            runtime
                .expires_at_ms
                .store(record.expires_at_ms, Ordering::SeqCst);
            runtime
                .last_activity_ms
                .fetch_max(record.last_activity_ms, Ordering::SeqCst);
            runtime.calls.fetch_max(record.calls, Ordering::SeqCst);
            runtime.set_state(record.state);
        }
    }

    /// Re-reads every cached task from the store (after a gap in the replica feed).
    pub async fn reload_all(&self) -> Result<(), ApiError> {
        let ids: Vec<String> = self.runtimes.iter().map(|(id, _)| (*id).clone()).collect();
        self.reload(ids).await
    }

    /// Re-reads these tasks from the store into their loaded runtimes.
    async fn reload(&self, ids: Vec<String>) -> Result<(), ApiError> {
        for id in ids {
            if let Some(record) = self.store.get_task(&id).await.map_err(ApiError::internal)? {
                self.apply_external(&record).await;
            }
        }
        Ok(())
    }

    /// Gives an active task a new window, token and tools.
    pub async fn renew(
        &self,
        runtime: &Arc<TaskRuntime>,
        renewal: &Activation,
    ) -> Result<bool, ApiError> {
        let _guard = runtime.change.lock().await;
        let now = self.clock.now_ms();
        let renewed = self
            .store
            .renew_task(renewal, now)
            .await
            .map_err(ApiError::internal)?;
        if renewed {
            runtime
                .expires_at_ms
                .store(renewal.expires_at_ms, Ordering::SeqCst);
            runtime.last_activity_ms.fetch_max(now, Ordering::SeqCst);
        }
        Ok(renewed)
    }

    /// Refuses a task that is not active, ending it first if its window or idle time
    /// has passed (so a call one millisecond late is refused and the state is real).
    pub async fn check_active(&self, runtime: &Arc<TaskRuntime>) -> Result<(), ApiError> {
        let state = runtime.state();
        if state == TaskState::Active {
            let now = self.clock.now_ms();
            let Some(mut why) = runtime.lapse(now) else {
                return Ok(());
            };
            if why == IDLE {
                // Calls may have gone through other replicas: trust the stored activity too.
                if let Some(record) = self
                    .store
                    .get_task(&runtime.task_id)
                    .await
                    .map_err(ApiError::internal)?
                {
                    runtime
                        .last_activity_ms
                        .fetch_max(record.last_activity_ms, Ordering::SeqCst);
                }
                match runtime.lapse(now) {
                    Some(still) => why = still,
                    None => return Ok(()),
                }
            }
            self.end(&runtime.task_id, TaskState::Expired, why, "broker")
                .await?;
            return Err(ApiError::TokenExpired(format!(
                "task {} expired: {why}",
                runtime.task_id
            )));
        }
        Err(inactive(&runtime.task_id, runtime.state()))
    }

    /// Takes a call slot for the task and for every prefix of the presented token that
    /// ends at a budget block (`budget_blocks`, indices into `revocation_ids`, authority
    /// first): only those prefixes' counts are ever read by a check.
    pub async fn take_slot(
        &self,
        runtime: &Arc<TaskRuntime>,
        revocation_ids: &[String],
        budget_blocks: &[usize],
    ) -> Result<CallSlot, ApiError> {
        let mut counters = Vec::with_capacity(budget_blocks.len());
        for &block in budget_blocks {
            if let Some(id) = revocation_ids.get(block) {
                counters.push((block, id.clone(), self.prefix_counter(id).await?));
            }
        }
        // Replicas count a task's calls together too, when its grant has a budget: the
        // same delta-and-total counter, keyed by the task.
        let task_counter = match (self.shared_store, runtime.max_calls) {
            (true, Some(_)) => {
                let key = format!("task:{}", runtime.task_id);
                let counter = self.prefix_counter(&key).await?;
                Some((key, counter))
            }
            _ => None,
        };
        let mut task_calls = runtime.calls.fetch_add(1, Ordering::SeqCst);
        let mut prefix_calls = vec![0; revocation_ids.len()];
        for (block, _, counter) in &counters {
            prefix_calls[*block] = counter.take();
        }
        let mut prefixes: Vec<(String, Arc<PrefixCounter>)> =
            counters.into_iter().map(|(_, id, c)| (id, c)).collect();
        if let Some((key, counter)) = task_counter {
            task_calls = task_calls.max(counter.take());
            prefixes.push((key, counter));
        }
        Ok(CallSlot {
            runtime: runtime.clone(),
            prefixes,
            task_calls,
            prefix_calls,
            committed: false,
            usage: self.flush.clone(),
        })
    }

    /// The counter of one prefix, loaded from the store on first use and, when other
    /// brokers share the store, re-read once it has gone a flush interval unsynced.
    async fn prefix_counter(&self, id: &str) -> Result<Arc<PrefixCounter>, ApiError> {
        let load_error = |e: &dyn std::fmt::Display| {
            ApiError::internal(anyhow::anyhow!("loading token usage: {e}"))
        };
        let store = self.store.clone();
        let key = id.to_string();
        let counter = self
            .prefix_counters
            .try_get_with(id.to_string(), async move {
                store
                    .token_calls(&key)
                    .await
                    .map(|n| Arc::new(PrefixCounter::loaded(n)))
            })
            .await
            .map_err(|e| load_error(&e))?;
        if self.shared_store
            && mono_ms().saturating_sub(counter.synced_ms.load(Ordering::SeqCst))
                >= FLUSH_EVERY.as_millis() as u64
        {
            let total = self
                .store
                .token_calls(id)
                .await
                .map_err(|e| load_error(&e))?;
            counter.stored.fetch_max(total, Ordering::SeqCst);
            counter.synced_ms.store(mono_ms(), Ordering::SeqCst);
        }
        Ok(counter)
    }

    /// Expires every active task whose window or idle time has passed. Returns how many.
    pub async fn sweep(&self) -> Result<usize, ApiError> {
        let now = self.clock.now_ms();
        let due = self
            .store
            .due_tasks(now)
            .await
            .map_err(ApiError::internal)?;
        let mut ended = 0;
        for record in due {
            // The store's activity lags the runtime's by at most one flush.
            let why = match self.runtimes.get(&record.task_id).await {
                Some(runtime) => runtime.lapse(now),
                None => Some(if now >= record.expires_at_ms {
                    "its window ended"
                } else {
                    "it was idle too long"
                }),
            };
            if let Some(why) = why
                && let EndOutcome::Ended(_) = self
                    .end(&record.task_id, TaskState::Expired, why, "broker")
                    .await?
            {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Waits until every counter update made so far is in the store.
    pub async fn flush(&self) {
        // The audit rows of agent revokes still being queued go in before the caller
        // flushes the audit log.
        let pending: Vec<tokio::task::JoinHandle<()>> =
            std::mem::take(&mut *self.ending.lock().await);
        for handle in pending {
            let _ = handle.await;
        }
        let (done, wait) = oneshot::channel();
        if self.flush.send(Flush::Barrier(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// The error for a task that is not active.
pub fn inactive(task_id: &str, state: TaskState) -> ApiError {
    match state {
        TaskState::Revoked => ApiError::TokenRevoked(format!("task {task_id} was revoked")),
        TaskState::Expired => ApiError::TokenExpired(format!("task {task_id} has expired")),
        other => ApiError::TaskInactive(format!("task {task_id} is {}", other.as_str())),
    }
}

/// How a task ended, told the same way by every path that ends tasks.
struct Ended<'a> {
    agent: &'a str,
    state: TaskState,
    reason: &'a str,
    actor: &'a str,
}

impl Ended<'_> {
    /// The event (none for a denied issuance) and the audit row of `task_id`'s end, with
    /// the revocation ids it published.
    async fn announce(
        &self,
        events: &Events,
        audit: &Audit,
        task_id: &str,
        revoked: &[impl serde::Serialize],
    ) {
        let kind = match self.state {
            TaskState::Completed => "task.completed",
            TaskState::Revoked => "task.revoked",
            TaskState::Expired => "task.expired",
            TaskState::Denied => "task.denied",
            _ => "task.ended",
        };
        if self.state != TaskState::Denied {
            events.publish(
                kind,
                Some(task_id),
                json!({ "task_id": task_id, "agent": self.agent, "state": self.state.as_str(), "reason": self.reason }),
            );
        }
        audit
            .record(AuditEvent {
                kind,
                actor: self.actor.to_string(),
                task_id: Some(task_id.to_string()),
                detail: json!({ "reason": self.reason, "revocation_ids": revoked }),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::EndOutcome;
    use crate::error::ApiError;
    use crate::store::TaskState;
    use crate::tasks::testkit::{Kit, notes_policy};

    #[tokio::test]
    async fn ending_a_task_revokes_its_token_at_once_and_only_once() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let (task_id, token) = kit.active_task("bot", &["notes.read"]).await;
        kit.present(&token).unwrap();
        let ended = kit
            .tasks
            .end(&task_id, TaskState::Revoked, "stop", "approver:ann")
            .await
            .unwrap();
        assert!(matches!(ended, EndOutcome::Ended(ref ids) if ids.len() == 1));
        assert!(matches!(
            kit.present(&token),
            Err(ApiError::TokenRevoked(_))
        ));
        let again = kit
            .tasks
            .end(&task_id, TaskState::Completed, "done", "agent:bot")
            .await
            .unwrap();
        assert!(matches!(
            again,
            EndOutcome::AlreadyEnded(TaskState::Revoked)
        ));
        let stored = kit.store.get_task(&task_id).await.unwrap().unwrap();
        assert_eq!(stored.state, TaskState::Revoked);
        assert_eq!(stored.end_reason.as_deref(), Some("stop"));
    }

    #[tokio::test]
    async fn the_sweeper_expires_tasks_at_the_end_of_their_window() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        // `narrow` has a 300 s window and no idle timeout.
        let (task_id, token) = kit.active_task("narrow", &["notes.read"]).await;
        kit.clock.advance(Duration::from_secs(299));
        assert_eq!(kit.tasks.sweep().await.unwrap(), 0);
        kit.clock.advance(Duration::from_secs(1));
        assert_eq!(kit.tasks.sweep().await.unwrap(), 1);
        let stored = kit.store.get_task(&task_id).await.unwrap().unwrap();
        assert_eq!(stored.state, TaskState::Expired);
        assert!(matches!(
            kit.present(&token),
            Err(ApiError::TokenExpired(_))
        ));
    }

    #[tokio::test]
    async fn a_task_idle_longer_than_its_grant_allows_expires() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let (task_id, token) = kit.active_task("bot", &["notes.read"]).await;
        kit.clock.advance(Duration::from_secs(59));
        assert_eq!(kit.tasks.sweep().await.unwrap(), 0);
        kit.clock.advance(Duration::from_secs(1));
        assert_eq!(kit.tasks.sweep().await.unwrap(), 1);
        let stored = kit.store.get_task(&task_id).await.unwrap().unwrap();
        assert_eq!(stored.state, TaskState::Expired);
        assert_eq!(stored.end_reason.as_deref(), Some(super::IDLE));
        // Its window is far from over: only the revocation refuses the token now.
        assert!(matches!(
            kit.present(&token),
            Err(ApiError::TokenExpired(_))
        ));
    }
}
