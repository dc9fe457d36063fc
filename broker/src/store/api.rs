//! The store's contract: the [`Store`] trait every database implements, and the records
//! it reads and writes. Kept apart from the implementations so that they, the behavioural
//! suite and the callers all depend on this one file and not on each other.
//!
//! The store is the source of truth; everything in memory is a cache of it. Writes that
//! end access (task end, revocation) are committed before the request answers.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use super::failure::{StoreError, StoreResult};

/// The life of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a human to approve issuance.
    PendingApproval,
    /// Issued and usable.
    Active,
    /// Ended by its agent.
    Completed,
    /// Ended by an approver or admin.
    Revoked,
    /// Ended by its window or idle timeout.
    Expired,
    /// Refused by an approver before issuance.
    Denied,
}

impl TaskState {
    /// Every state, for parsing.
    pub const ALL: [TaskState; 6] = [
        TaskState::PendingApproval,
        TaskState::Active,
        TaskState::Completed,
        TaskState::Revoked,
        TaskState::Expired,
        TaskState::Denied,
    ];

    /// The wire name (`active`, `pending_approval`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::PendingApproval => "pending_approval",
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Revoked => "revoked",
            TaskState::Expired => "expired",
            TaskState::Denied => "denied",
        }
    }

    /// Whether the task is over (completed, revoked, expired or denied).
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Revoked | TaskState::Expired | TaskState::Denied
        )
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A task to insert, with the revocation id of its token and the agent credential that
/// asks for it ([`Store::insert_tasks`]).
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The task.
    pub task: TaskRecord,
    /// Its token's revocation id, recorded as the task's token.
    pub revocation_id: Option<String>,
    /// The asking credential's revocation id: if revoked, the task is not inserted.
    pub credential: Option<String>,
}

/// Which tasks `list_tasks` answers: every field narrows the list; none set lists all.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only this agent's tasks.
    pub agent: Option<String>,
    /// Only tasks this person started (for an MCP client).
    pub user: Option<String>,
    /// Only tasks whose tools include this name exactly.
    pub tool: Option<String>,
    /// Only tasks created at or after this time.
    pub since_ms: Option<i64>,
    /// Only tasks created before this time.
    pub until_ms: Option<i64>,
    /// Only tasks listed after this one (its creation time and id): the next page.
    pub after: Option<(i64, String)>,
    /// At most this many.
    pub limit: i64,
}

/// What [`Store::prune_history`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Audit rows up to and including this seq are gone (a signed checkpoint names it).
    pub through_seq: Option<i64>,
    /// How many audit rows were deleted.
    pub rows: u64,
    /// How many ended tasks were deleted.
    pub tasks: u64,
}

/// Makes the audit row that records a retention cut ([`Store::prune_history`] appends
/// it with the cut, so a pruned log always says so).
pub type PruneRecord<'a> = dyn Fn(&Pruned) -> NewAuditEvent + Send + Sync + 'a;

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// `tsk_…`.
    pub task_id: String,
    /// Owner agent.
    pub agent: String,
    /// What the agent said the task is for.
    pub purpose: String,
    /// Tools the token grants.
    pub tools: Vec<String>,
    /// Checks the agent asked for (the grant's are in the token too).
    pub checks: Vec<String>,
    /// Current state.
    pub state: TaskState,
    /// Creation time (ms since epoch).
    pub created_at_ms: i64,
    /// End of the window (ms since epoch).
    pub expires_at_ms: i64,
    /// Idle timeout, if the grant has one.
    pub idle_timeout_ms: Option<i64>,
    /// The grant's call budget.
    pub max_calls: Option<u64>,
    /// Calls admitted so far.
    pub calls: u64,
    /// Last call or renewal (ms since epoch).
    pub last_activity_ms: i64,
    /// When it ended.
    pub ended_at_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// The newest token of the task, sealed ([`crate::tokens::seal`]); opened only to be
    /// returned to its owner.
    pub token: Option<String>,
    /// The person who started it for an MCP client (the grant is theirs), if any.
    pub user: Option<String>,
    /// The OpenID Connect group whose `[groups]` grant applies to that person (none: their
    /// own `[users]` grant).
    pub user_group: Option<String>,
    /// The one resource its tokens are for (`<public url>/mcp`), if bound to one.
    pub audience: Option<String>,
}

impl TaskRecord {
    /// Whose grant the task is under, for messages: `user "alice"` or `agent "bot"`.
    pub fn holder(&self) -> String {
        match &self.user {
            Some(user) => format!("user {user:?}"),
            None => format!("agent {:?}", self.agent),
        }
    }
}

/// One entry of the public revocation feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revocation {
    /// Position in the feed.
    pub seq: i64,
    /// Hex revocation id; every token containing a block with it is dead.
    pub revocation_id: String,
    /// The task it belonged to, if any.
    pub task_id: Option<String>,
    /// Why: `revoked`, `completed`, `expired`, `denied` (the task ended), `token` (one
    /// token revoked), `credential`.
    pub reason: String,
    /// When (ms since epoch).
    pub at_ms: i64,
    /// When every token carrying this id is past its own window anyway (ms since
    /// epoch): the task's window. After that (and a margin for clocks) the id may be
    /// forgotten: the token is refused as expired, and the broker refuses it by its
    /// task's state anyway. `None`: kept for ever — credentials, whose only record of
    /// being revoked is this id (a clock that jumps ahead must not resurrect them).
    pub expires_at_ms: Option<i64>,
}

/// One row of the audit chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Position in the chain.
    pub seq: i64,
    /// When (ms since epoch).
    pub at_ms: i64,
    /// What happened (`task.issued`, `call.allowed`, …).
    pub kind: String,
    /// Who did it (`agent:x`, `approver:y`, `admin`, `broker`).
    pub actor: String,
    /// The task concerned.
    pub task_id: Option<String>,
    /// Event details (never a token or secret).
    pub detail: serde_json::Value,
    /// Hash of the previous row (hex), empty for the first.
    pub prev_hash: String,
    /// SHA-256 over this row's content and `prev_hash` (hex).
    pub hash: String,
}

/// A signed statement of the audit chain's head: "the chain had `seq` rows and its last
/// hash was `hash`". Deleting the newest rows is then visible, because a checkpoint names
/// a row that is no longer there ([`crate::audit::checkpoint`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The seq of the row it covers (every row up to it).
    pub seq: i64,
    /// That row's hash (hex).
    pub hash: String,
    /// When it was signed (ms since epoch).
    pub at_ms: i64,
    /// The root key id that signed it.
    pub kid: u32,
    /// Ed25519 signature (base64url, no padding) over [`crate::audit::checkpoint::signed_bytes`].
    pub signature: String,
}

/// What an approval decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// Issuing a task's first token.
    Issuance,
    /// One call of a `per_call` tool.
    Call,
    /// Renewing a task whose grant needs approval.
    Renewal,
    /// Accepting a changed definition of an upstream MCP tool.
    Definition,
}

impl ApprovalKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalKind::Issuance => "issuance",
            ApprovalKind::Call => "call",
            ApprovalKind::Renewal => "renewal",
            ApprovalKind::Definition => "definition",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        [
            ApprovalKind::Issuance,
            ApprovalKind::Call,
            ApprovalKind::Renewal,
            ApprovalKind::Definition,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a human.
    Pending,
    /// Approved (a call approval not used yet).
    Approved,
    /// Denied by a human.
    Denied,
    /// Undecided for too long: counts as denied.
    Expired,
    /// A call approval that has been spent.
    Used,
}

impl ApprovalState {
    /// Every state.
    pub const ALL: [ApprovalState; 5] = [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Denied,
        ApprovalState::Expired,
        ApprovalState::Used,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
            ApprovalState::Used => "used",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        ApprovalState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A request for a human decision.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    /// `apr_…`.
    pub approval_id: String,
    /// What it decides.
    pub kind: ApprovalKind,
    /// The task concerned.
    pub task_id: String,
    /// The task's agent.
    pub agent: String,
    /// The person whose task it is (an MCP client's), if any.
    pub user: Option<String>,
    /// The task's purpose.
    pub purpose: String,
    /// The task's tools.
    pub tools: Vec<String>,
    /// For a call: the tool.
    pub call_tool: Option<String>,
    /// For a call: the arguments, as shown to approvers.
    pub call_args: Option<serde_json::Value>,
    /// For a call: SHA-256 of the canonical arguments; the approval is bound to it.
    pub args_hash: Option<String>,
    /// For issuance and renewal: the window asked for.
    pub ttl_ms: Option<i64>,
    /// Where it stands.
    pub state: ApprovalState,
    /// When it was asked for.
    pub requested_at_ms: i64,
    /// When it counts as denied if still undecided.
    pub expires_at_ms: i64,
    /// When it was decided.
    pub decided_at_ms: Option<i64>,
    /// Who decided (`approver:x`, `admin`, `broker`).
    pub decided_by: Option<String>,
    /// The decider's note.
    pub note: Option<String>,
}

/// A task token minted on approval, to store with the decision.
#[derive(Debug, Clone)]
pub struct Activation {
    /// The task.
    pub task_id: String,
    /// Its new window.
    pub expires_at_ms: i64,
    /// The new token, sealed ([`crate::tokens::seal`]).
    pub token: String,
    /// Its revocation id.
    pub revocation_id: String,
    /// The tools the new token grants: the task's tools the policy still grants.
    pub tools: Vec<String>,
}

/// How deciding an approval went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Decided now.
    Done,
    /// It was not pending: it is in this state.
    AlreadyDecided(ApprovalState),
    /// Its task could no longer take the activation (ended meanwhile); nothing changed.
    TaskNotPending,
}

/// The pinned definition of an upstream MCP tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPin {
    /// Its key: `server/tool/NAME`, `server/prompt/NAME`, `server/template/URI-TEMPLATE`
    /// (the server's own names); `server.tool` for a tool pinned before keys had kinds.
    pub name: String,
    /// SHA-256 of the accepted name, description and input schema.
    pub hash: String,
    /// A changed definition waiting for an approver: its hash.
    pub pending_hash: Option<String>,
    /// The approval deciding it.
    pub approval_id: Option<String>,
}

/// An audit event to append; the store gives it its place and hash in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// When (ms since epoch).
    pub at_ms: i64,
    /// What happened.
    pub kind: String,
    /// Who did it.
    pub actor: String,
    /// The task concerned.
    pub task_id: Option<String>,
    /// Details (never a token or secret).
    pub detail: serde_json::Value,
}

/// Counters written behind the hot path.
#[derive(Debug, Clone, Default)]
pub struct UsageBatch {
    /// `(task_id, calls, last_activity_ms)`: absolute values, the store keeps the max.
    pub tasks: Vec<(String, u64, i64)>,
    /// `(revocation id, calls)`: calls admitted with that prefix of a token chain since
    /// the last write; the store adds them to its total (every replica adds its own).
    pub tokens: Vec<(String, u64)>,
}

/// Durable state. One implementation per database; one behavioural suite for all.
#[async_trait]
pub trait Store:
    super::identity_api::IdentityStore + super::connections_api::ConnectionStore + Send + Sync + 'static
{
    /// Inserts a new task and the revocation id of its first token, unless `credential`
    /// (the revocation id of the agent credential that asks) is revoked: then nothing is
    /// inserted and the answer is `false`. Checked inside the inserting transaction and
    /// serialised with [`Store::revoke_credentials`] of the same agent, so a task cannot
    /// slip past an agent revoke made on another replica.
    async fn insert_task(
        &self,
        task: &TaskRecord,
        revocation_id: Option<&str>,
        credential: Option<&str>,
    ) -> StoreResult<bool> {
        let answers = self
            .insert_tasks(&[NewTask {
                task: task.clone(),
                revocation_id: revocation_id.map(str::to_string),
                credential: credential.map(str::to_string),
            }])
            .await?;
        Ok(answers.first().copied().unwrap_or(false))
    }
    /// [`Store::insert_task`] for many tasks in one transaction (one commit, one fsync:
    /// group commit of concurrent mints). One answer per task, in order; either all are
    /// committed or none.
    async fn insert_tasks(&self, tasks: &[NewTask]) -> StoreResult<Vec<bool>>;
    /// Reads a task.
    async fn get_task(&self, task_id: &str) -> StoreResult<Option<TaskRecord>>;
    /// Lists the tasks `query` selects, newest first (then by task id, descending).
    async fn list_tasks(&self, query: &TaskQuery) -> StoreResult<Vec<TaskRecord>>;
    /// Active tasks whose window or idle timeout has passed at `now_ms` (by stored activity).
    async fn due_tasks(&self, now_ms: i64) -> StoreResult<Vec<TaskRecord>>;
    /// Tasks whose token is stored in clear (written before tokens were sealed):
    /// `(task_id, token)`.
    async fn plain_tokens(&self) -> StoreResult<Vec<(String, String)>>;
    /// Replaces a task's stored token, if it still is `old`.
    async fn replace_token(&self, task_id: &str, old: &str, new: &str) -> StoreResult<()>;
    /// Rewrites storage so that replaced values do not linger in freed pages (after
    /// clear tokens were sealed). Slow; for start-up only.
    async fn purge_freed(&self) -> StoreResult<()>;
    /// Gives an active task a new window, token and (current) tools. False if it is not
    /// active.
    async fn renew_task(&self, renewal: &Activation, now_ms: i64) -> StoreResult<bool>;
    /// Ends a non-terminal task and publishes the revocation of every token issued for
    /// it, in one transaction. `None` if the task was already terminal (or unknown).
    async fn end_task(
        &self,
        task_id: &str,
        state: TaskState,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Option<Vec<Revocation>>>;
    /// Ends every live task of `agent` in one transaction (an agent revoke): each ended
    /// task's token ids are published as [`Store::end_task`] would. Serialised with
    /// [`Store::insert_tasks`] of that agent. Returns the ended tasks' ids and the new
    /// feed entries.
    async fn end_agent_tasks(
        &self,
        agent: &str,
        state: TaskState,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<(Vec<String>, Vec<Revocation>)>;
    /// Publishes revocation ids (one token, not its task; or one credential) with the
    /// feed's `reason`. Already revoked ids are skipped.
    async fn revoke_ids(
        &self,
        ids: &[String],
        task_id: Option<&str>,
        reason: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>>;
    /// Records a minted credential's revocation id and expiry.
    async fn insert_credential(
        &self,
        revocation_id: &str,
        role: &str,
        subject: &str,
        at_ms: i64,
        expires_at_ms: Option<i64>,
    ) -> StoreResult<()>;
    /// Forgets feed entries whose tokens' windows ended before `before_ms`; answers how
    /// many.
    async fn prune_revocations(&self, before_ms: i64) -> StoreResult<u64>;
    /// How many ids of one task were revoked one token at a time.
    async fn revoked_tokens_of(&self, task_id: &str) -> StoreResult<i64>;
    /// Revokes every credential of a subject (role + id).
    async fn revoke_credentials(
        &self,
        role: &str,
        subject: &str,
        at_ms: i64,
    ) -> StoreResult<Vec<Revocation>>;
    /// The feed after `seq`, at most `limit` entries.
    async fn revocations_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<Revocation>>;
    /// How many ids the feed holds.
    async fn revocation_count(&self) -> StoreResult<i64>;
    /// The feed after `seq` without the entries that no longer matter at `since_ms`
    /// (their window ended before it), at most `limit` entries: what a starting broker
    /// loads into memory.
    async fn live_revocations_after(
        &self,
        seq: i64,
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<Revocation>>;
    /// How many feed entries still matter at `since_ms` (no window, or a window ending
    /// at or after it).
    async fn live_revocation_count(&self, since_ms: i64) -> StoreResult<i64>;
    /// Every revoked id with its reason (loaded once at start).
    async fn all_revoked_ids(&self) -> StoreResult<Vec<(String, String)>>;
    /// Writes counters; answers the new total of each entry of `batch.tokens`, in order.
    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<Vec<u64>>;
    /// Calls made so far with one prefix of a token chain (a revocation id) and with
    /// everything attenuated from it, by every broker.
    async fn token_calls(&self, revocation_id: &str) -> StoreResult<u64>;
    /// Inserts a pending approval.
    async fn insert_approval(&self, approval: &ApprovalRecord) -> StoreResult<()>;
    /// How many approvals an agent has waiting for a decision.
    async fn pending_approvals_of(&self, agent: &str) -> StoreResult<i64>;
    /// Reads an approval.
    async fn get_approval(&self, approval_id: &str) -> StoreResult<Option<ApprovalRecord>>;
    /// Lists approvals, oldest first, optionally in one state.
    async fn list_approvals(
        &self,
        state: Option<ApprovalState>,
        limit: i64,
    ) -> StoreResult<Vec<ApprovalRecord>>;
    /// Pending approvals whose time ran out at `now_ms`.
    async fn due_approvals(&self, now_ms: i64) -> StoreResult<Vec<ApprovalRecord>>;
    /// Decides a pending approval. With an `activation`, in the same transaction the task
    /// becomes active with that token (issuance: from `pending_approval`) or gets it as its
    /// new window (renewal: while `active`); if the task cannot, nothing changes.
    async fn decide_approval(
        &self,
        approval_id: &str,
        state: ApprovalState,
        decided_by: &str,
        note: Option<&str>,
        at_ms: i64,
        activation: Option<&Activation>,
    ) -> StoreResult<Decided>;
    /// Spends an approved call approval: true once, false ever after.
    async fn use_approval(&self, approval_id: &str, at_ms: i64) -> StoreResult<bool>;
    /// The pin of a tool.
    async fn get_pin(&self, name: &str) -> StoreResult<Option<ToolPin>>;
    /// Inserts or replaces a pin.
    async fn put_pin(&self, pin: &ToolPin) -> StoreResult<()>;
    /// Appends events to the audit chain, atomically, under the store's write lock: each
    /// gets the next seq and a hash over the previous row's (so replicas share one chain).
    async fn append_audit(&self, events: &[NewAuditEvent]) -> StoreResult<()>;
    /// The last audit row's seq and hash.
    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>>;
    /// Audit rows after `seq`, at most `limit`.
    async fn audit_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<AuditRow>>;
    /// Up to `limit` audit rows of one task after `seq`, oldest first.
    async fn audit_of_task(
        &self,
        task_id: &str,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditRow>>;
    /// Stores a checkpoint unless one for its seq exists (replicas may sign the same head):
    /// true if this one was stored. An existing checkpoint is never replaced.
    async fn insert_checkpoint(&self, checkpoint: &AuditCheckpoint) -> StoreResult<bool>;
    /// Checkpoints after `seq`, oldest first, at most `limit`.
    async fn checkpoints_after(&self, seq: i64, limit: i64) -> StoreResult<Vec<AuditCheckpoint>>;
    /// The checkpoint with the highest seq.
    async fn latest_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>>;
    /// Retention: deletes the oldest audit rows, through a signed checkpoint such that
    /// no row before it is younger than `before_ms` or belongs to a task that has not
    /// ended before `before_ms`, and no task has rows on both sides of it (never the
    /// chain's head); then every task that ended before `before_ms` and has no audit row
    /// left, with its decided approvals and its token list; and appends the row `record`
    /// makes of what was cut, in the same transaction. The checkpoint stays: it anchors
    /// the rows that remain.
    ///
    /// One call deletes the rows up to the newest such checkpoint within `max_rows` of
    /// the oldest row (or, when there is none that close, up to the oldest such
    /// checkpoint): the audit lock it holds stalls audit writes, so a large backlog is
    /// cut in several calls.
    async fn prune_history(
        &self,
        before_ms: i64,
        max_rows: i64,
        record: &PruneRecord<'_>,
    ) -> StoreResult<Pruned>;
}
