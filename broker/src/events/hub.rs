//! The event hub: approval and task events, fanned out to the approvers' event stream
//! (`GET /v1/events`), the webhook, and long-polls of `GET /v1/tasks/{id}?wait=`.
//!
//! Events are notifications: the store stays the truth, so a subscriber that falls
//! behind re-reads state rather than trusting what it missed.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for slow subscribers before they lag.
const CAPACITY: usize = 4096;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `approval.requested`, `approval.decided`, `task.activated`, `task.completed`,
    /// `task.revoked`, `task.expired`, `timeline.appended` (a task's audit rows were
    /// committed: its timeline has more).
    pub kind: &'static str,
    /// The task concerned.
    pub task_id: Option<String>,
    /// Details (never a token or secret).
    pub data: Value,
}

/// The hub. Cloning shares it.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Publishes an event to every current subscriber (none is fine).
    pub fn publish(&self, kind: &'static str, task_id: Option<&str>, data: Value) {
        let _ = self.tx.send(Event {
            kind,
            task_id: task_id.map(String::from),
            data,
        });
    }

    /// A new subscription, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
