//! Group commit of task mints: every mint waits for its task to be committed before it
//! answers (a minted token always names a stored task), but mints that arrive together
//! share one transaction — one fsync for all of them instead of one each. One writer
//! takes whatever queued while the previous commit ran, so a lone mint waits for nothing
//! and a crowd is committed in batches.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{NewTask, Store, StoreError};

/// At most this many mints share a transaction.
const MAX_BATCH: usize = 256;

type Answer = oneshot::Sender<Result<bool, StoreError>>;

/// Handle to the mint writer.
pub struct MintQueue {
    tx: mpsc::Sender<(NewTask, Answer)>,
}

impl MintQueue {
    /// Starts the writer.
    pub fn start(store: Arc<dyn Store>) -> MintQueue {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer(store, rx));
        MintQueue { tx }
    }

    /// Inserts `task` ([`Store::insert_task`]): `false` if its credential is revoked.
    /// Answers once the transaction holding it has committed.
    pub async fn insert(&self, task: NewTask) -> Result<bool, StoreError> {
        let (answer, wait) = oneshot::channel();
        let stopped = || StoreError::Shared("the task writer has stopped".into());
        self.tx.send((task, answer)).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

async fn writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<(NewTask, Answer)>) {
    let mut tasks = Vec::with_capacity(MAX_BATCH);
    let mut answers = Vec::with_capacity(MAX_BATCH);
    while let Some((task, answer)) = rx.recv().await {
        tasks.push(task);
        answers.push(answer);
        while tasks.len() < MAX_BATCH {
            let Ok((task, answer)) = rx.try_recv() else {
                break;
            };
            tasks.push(task);
            answers.push(answer);
        }
        match store.insert_tasks(&tasks).await {
            Ok(inserted) => {
                for (answer, ok) in answers.drain(..).zip(inserted) {
                    let _ = answer.send(Ok(ok));
                }
            }
            // One bad task (a duplicate id) must not fail its neighbours: each is tried
            // alone. Any other failure (the database away, a timeout) fails the batch
            // at once rather than once per task.
            Err(err) if tasks.len() > 1 && is_constraint(&err) => {
                for (task, answer) in tasks.iter().zip(answers.drain(..)) {
                    let alone = store.insert_tasks(std::slice::from_ref(task)).await;
                    let _ = answer.send(alone.map(|inserted| inserted.first() == Some(&true)));
                }
            }
            Err(err) => {
                for answer in answers.drain(..) {
                    let _ = answer.send(Err(StoreError::Shared(err.to_string())));
                }
            }
        }
        answers.clear();
        tasks.clear();
    }
}

/// Whether `err` is a row of the batch breaking a constraint (not the database failing).
fn is_constraint(err: &StoreError) -> bool {
    match err {
        StoreError::Database(sqlx::Error::Database(db)) => matches!(
            db.kind(),
            sqlx::error::ErrorKind::UniqueViolation
                | sqlx::error::ErrorKind::ForeignKeyViolation
                | sqlx::error::ErrorKind::NotNullViolation
                | sqlx::error::ErrorKind::CheckViolation
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, TaskRecord, TaskState};

    fn new(id: &str) -> NewTask {
        NewTask {
            task: TaskRecord {
                task_id: id.into(),
                agent: "bot".into(),
                purpose: "p".into(),
                tools: vec!["web.search".into()],
                checks: vec![],
                state: TaskState::Active,
                created_at_ms: 1_000,
                expires_at_ms: 10_000,
                idle_timeout_ms: None,
                max_calls: None,
                calls: 0,
                last_activity_ms: 1_000,
                ended_at_ms: None,
                end_reason: None,
                token: None,
                user: None,
                user_group: None,
                audience: None,
            },
            revocation_id: None,
            credential: None,
        }
    }

    #[tokio::test]
    async fn concurrent_mints_are_all_committed_and_a_bad_one_fails_alone() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let queue = Arc::new(MintQueue::start(store.clone()));
        assert!(queue.insert(new("tsk_dup")).await.unwrap());
        let mut joins = Vec::new();
        for i in 0..200 {
            let queue = queue.clone();
            // Every tenth is a duplicate id: it must fail, and only it.
            let id = if i % 10 == 0 {
                "tsk_dup".to_string()
            } else {
                format!("tsk_{i}")
            };
            joins.push(tokio::spawn(async move {
                (id.clone(), queue.insert(new(&id)).await)
            }));
        }
        for join in joins {
            let (id, answer) = join.await.unwrap();
            if id == "tsk_dup" {
                assert!(answer.is_err(), "a duplicate task id is refused");
            } else {
                assert!(answer.unwrap(), "{id} inserted");
                assert!(
                    store.get_task(&id).await.unwrap().is_some(),
                    "{id} committed"
                );
            }
        }
    }
}
