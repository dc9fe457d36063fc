//! Reading rows into records: one mapping for every store (SQLite and PostgreSQL rows
//! hold the same columns with the same types).

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::api::{
    ApprovalKind, ApprovalRecord, ApprovalState, AuditCheckpoint, AuditRow, Revocation, StoreError,
    StoreResult, TaskRecord, TaskState, ToolPin,
};

/// A `tasks` row.
pub(super) fn task_from_row<'r, R>(row: &'r R) -> StoreResult<TaskRecord>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = row.try_get("state")?;
    let tools: String = row.try_get("tools")?;
    let checks: String = row.try_get("checks")?;
    Ok(TaskRecord {
        task_id: row.try_get("task_id")?,
        agent: row.try_get("agent")?,
        purpose: row.try_get("purpose")?,
        tools: serde_json::from_str(&tools)
            .map_err(|e| StoreError::Corrupt(format!("tools: {e}")))?,
        checks: serde_json::from_str(&checks)
            .map_err(|e| StoreError::Corrupt(format!("checks: {e}")))?,
        state: TaskState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("state {state:?}")))?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        idle_timeout_ms: row.try_get("idle_timeout_ms")?,
        max_calls: row
            .try_get::<Option<i64>, _>("max_calls")?
            .map(|n| n.max(0) as u64),
        calls: row.try_get::<i64, _>("calls")?.max(0) as u64,
        last_activity_ms: row.try_get("last_activity_ms")?,
        ended_at_ms: row.try_get("ended_at_ms")?,
        end_reason: row.try_get("end_reason")?,
        token: row.try_get("token")?,
        user: row.try_get("user_name")?,
        user_group: row.try_get("user_group")?,
        audience: row.try_get("audience")?,
    })
}

/// An `approvals` row.
pub(super) fn approval_from_row<'r, R>(row: &'r R) -> StoreResult<ApprovalRecord>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let tools: String = row.try_get("tools")?;
    let call_args: Option<String> = row.try_get("call_args")?;
    Ok(ApprovalRecord {
        approval_id: row.try_get("approval_id")?,
        kind: ApprovalKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("approval kind {kind:?}")))?,
        task_id: row.try_get("task_id")?,
        agent: row.try_get("agent")?,
        user: row.try_get("user_name")?,
        purpose: row.try_get("purpose")?,
        tools: serde_json::from_str(&tools)
            .map_err(|e| StoreError::Corrupt(format!("approval tools: {e}")))?,
        call_tool: row.try_get("call_tool")?,
        call_args: call_args
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("approval args: {e}")))?,
        args_hash: row.try_get("args_hash")?,
        ttl_ms: row.try_get("ttl_ms")?,
        state: ApprovalState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("approval state {state:?}")))?,
        requested_at_ms: row.try_get("requested_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        decided_by: row.try_get("decided_by")?,
        note: row.try_get("note")?,
    })
}

/// A `revocations` row.
pub(super) fn revocation_from_row<'r, R>(row: &'r R) -> StoreResult<Revocation>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Revocation {
        seq: row.try_get("seq")?,
        revocation_id: row.try_get("revocation_id")?,
        task_id: row.try_get("task_id")?,
        reason: row.try_get("reason")?,
        at_ms: row.try_get("at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}

/// A count as stored (saturating: SQL integers are signed).
pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An `audit_checkpoints` row.
pub(super) fn checkpoint_from_row<'r, R>(row: &'r R) -> StoreResult<AuditCheckpoint>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let kid: i64 = row.try_get("kid")?;
    Ok(AuditCheckpoint {
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        at_ms: row.try_get("at_ms")?,
        kid: u32::try_from(kid)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint key id {kid}")))?,
        signature: row.try_get("signature")?,
    })
}

/// An `audit` row.
pub(super) fn audit_row_from_row<'r, R>(row: &'r R) -> StoreResult<AuditRow>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    let detail: String = row.try_get("detail")?;
    Ok(AuditRow {
        seq: row.try_get("seq")?,
        at_ms: row.try_get("at_ms")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        task_id: row.try_get("task_id")?,
        detail: serde_json::from_str(&detail)
            .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// A `tool_pins` row.
pub(super) fn pin_from_row<'r, R>(row: &'r R) -> StoreResult<ToolPin>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ToolPin {
        name: row.try_get("name")?,
        hash: row.try_get("hash")?,
        pending_hash: row.try_get("pending_hash")?,
        approval_id: row.try_get("approval_id")?,
    })
}
