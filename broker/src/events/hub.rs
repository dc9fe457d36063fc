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
    /// `task.revoked`, `task.expired`; on its own channel, `timeline.appended` (a task's
    /// audit rows were committed: its timeline has more).
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
    /// `timeline.appended` only, on a channel of its own: as many as calls, they must
    /// never make the webhook or a long-poll fall behind on approval and task events.
    timeline: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
            timeline: broadcast::channel(CAPACITY).0,
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

    /// Says that `task_id`'s timeline has new entries (`timeline.appended`).
    pub fn publish_timeline(&self, task_id: &str) {
        let _ = self.timeline.send(Event {
            kind: "timeline.appended",
            task_id: Some(task_id.to_string()),
            data: serde_json::json!({ "task_id": task_id }),
        });
    }

    /// A new subscription to `timeline.appended`, from now on.
    pub fn subscribe_timeline(&self) -> broadcast::Receiver<Event> {
        self.timeline.subscribe()
    }
}
