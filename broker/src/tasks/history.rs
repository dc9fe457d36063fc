//! A task's history read back from the audit chain: the approver page's timeline (a page
//! of rows at a time) and the task's signed evidence.
//!
//! Both are built only from stored state — the task's row, its audit rows and the latest
//! signed checkpoint — plus the policy's hash, so every replica of one deployment answers
//! the same evidence, byte for byte, for the same stored state. What a call's row shows
//! of its arguments was masked when the row was written (`writeOnly`), so neither the
//! timeline nor the evidence can reveal more than the audit log holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::audit::checkpoint::to_json as checkpoint_json;
use crate::audit::evidence::{FORMAT, Signed, row_json, sign};
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::store::{AuditRow, Store, TaskRecord};
use crate::tokens::keys::RootKeys;

/// Audit rows read per query.
const PAGE: i64 = 1000;

/// Most audit rows one evidence document holds: a task past it is checked offline with
/// `leash audit verify` instead.
pub const MAX_EVIDENCE_ROWS: usize = 100_000;

/// Most bytes of audit row details one evidence document holds (rows are read a page at a
/// time, so building one never holds much more than this).
pub const MAX_EVIDENCE_BYTES: usize = 32 * 1024 * 1024;

/// Reads tasks' histories: the store, the root keys that sign evidence, the policy's hash.
pub struct History {
    /// Where tasks and the audit chain live.
    pub store: Arc<dyn Store>,
    /// Signs evidence (the current signing root key).
    pub keys: Arc<RootKeys>,
    /// `sha256:…` of the policy files.
    pub policy_hash: String,
}

/// One page of a task's timeline.
pub struct TimelinePage {
    /// The task's rows after the asked position, oldest first.
    pub rows: Vec<AuditRow>,
    /// Where the next page starts (the last row's seq, or the asked position).
    pub next: i64,
}

impl History {
    /// Up to `limit` of the task's audit rows after `after`.
    pub async fn timeline(
        &self,
        task_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<TimelinePage, ApiError> {
        let rows = self
            .store
            .audit_of_task(task_id, after.max(0), limit.clamp(1, PAGE))
            .await
            .map_err(ApiError::internal)?;
        let next = rows.last().map_or(after.max(0), |r| r.seq);
        Ok(TimelinePage { rows, next })
    }

    /// The evidence of the stored `task`, signed.
    pub async fn evidence(&self, task: &TaskRecord) -> Result<Signed, ApiError> {
        let task_id = task.task_id.as_str();
        let mut rows = Vec::new();
        let mut listed = Vec::new();
        let mut after = 0;
        let mut bytes = 0;
        loop {
            let page = self
                .store
                .audit_of_task(task_id, after, PAGE)
                .await
                .map_err(ApiError::internal)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for row in &page {
                let json = row_json(row);
                bytes += json["detail"].as_str().map_or(0, str::len) + row.actor.len() + 200;
                listed.push(json);
            }
            rows.extend(page);
            if rows.len() > MAX_EVIDENCE_ROWS || bytes > MAX_EVIDENCE_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "task {task_id} has more than {MAX_EVIDENCE_ROWS} audit rows or {} MiB of them: one evidence document does not hold it; verify the log with `leash audit verify` instead",
                    MAX_EVIDENCE_BYTES / (1024 * 1024)
                )));
            }
        }
        let checkpoint = self
            .store
            .latest_checkpoint()
            .await
            .map_err(ApiError::internal)?;
        let evidence = json!({
            "format": FORMAT,
            "task": task_facts(task),
            "policy": { "sha256": policy_of(&rows).unwrap_or(&self.policy_hash) },
            "issuance": issuance(&rows),
            "tokens": tokens(&rows),
            "summary": summary(&rows),
            "audit": {
                "count": rows.len(),
                "first_seq": rows.first().map(|r| r.seq),
                "last_seq": rows.last().map(|r| r.seq),
                "last_hash": rows.last().map(|r| r.hash.as_str()),
                "rows": listed,
            },
            "checkpoint": checkpoint.as_ref().map(checkpoint_json),
        });
        sign(&self.keys, evidence).map_err(ApiError::internal)
    }
}

/// The task's own facts (never its token; no counter kept behind the request path, so
/// replicas agree: counts come from the rows).
fn task_facts(task: &TaskRecord) -> Value {
    json!({
        "task_id": task.task_id,
        "agent": task.agent,
        "user": task.user,
        "purpose": task.purpose,
        "tools": task.tools,
        "checks": task.checks,
        "state": task.state.as_str(),
        "created_at": rfc3339(task.created_at_ms),
        "expires_at": rfc3339(task.expires_at_ms),
        "idle_timeout_seconds": task.idle_timeout_ms.map(|ms| ms / 1000),
        "max_calls": task.max_calls,
        "ended_at": task.ended_at_ms.map(rfc3339),
        "end_reason": task.end_reason,
    })
}

/// The hash of the policy the task was opened under, as its first row recorded it (so
/// the evidence does not change when the policy does, nor differ between replicas
/// during a rolling change).
fn policy_of(rows: &[AuditRow]) -> Option<&str> {
    rows.iter()
        .find(|r| matches!(r.kind.as_str(), "task.issued" | "task.requested"))
        .and_then(|r| r.detail.get("policy"))
        .and_then(Value::as_str)
}

/// Who let the task start: the approver and note of its issuance, or the policy.
fn issuance(rows: &[AuditRow]) -> Value {
    let decided = rows.iter().find(|r| {
        matches!(r.kind.as_str(), "approval.approved" | "approval.denied")
            && r.detail.get("kind").and_then(Value::as_str) == Some("issuance")
    });
    match decided {
        Some(row) => json!({
            "by": "approver",
            "decision": row.kind.trim_start_matches("approval."),
            "approver": row.actor,
            "note": row.detail.get("note"),
            "at": rfc3339(row.at_ms),
            "seq": row.seq,
        }),
        None if rows.iter().any(|r| r.kind == "task.issued") => json!({ "by": "policy" }),
        None => json!({ "by": "undecided" }),
    }
}

/// Every token of the task by revocation id, in the order the rows name them: the ones
/// Leash issued (at the start and at each renewal) and the ones holders derived and used
/// (their chain, and the blocks they appended when first seen).
fn tokens(rows: &[AuditRow]) -> Vec<Value> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut tokens: Vec<Value> = Vec::new();
    for row in rows {
        let issued = match row.kind.as_str() {
            "task.issued" => Some("issued"),
            "approval.approved" => match row.detail.get("kind").and_then(Value::as_str) {
                Some("issuance") => Some("issued on approval"),
                Some("renewal") => Some("renewed on approval"),
                _ => None,
            },
            "task.renewed" => Some("renewed"),
            _ => None,
        };
        if let Some(source) = issued
            && let Some(id) = row.detail.get("revocation_id").and_then(Value::as_str)
            && !seen.contains_key(id)
        {
            seen.insert(id.to_string(), tokens.len());
            tokens.push(json!({ "revocation_id": id, "source": source, "seq": row.seq }));
        }
        let Some(chain) = row.detail.get("chain").and_then(Value::as_array) else {
            continue;
        };
        let Some(own) = chain.last().and_then(Value::as_str) else {
            continue;
        };
        match seen.get(own) {
            Some(&index) => {
                if let Some(blocks) = row.detail.get("blocks")
                    && tokens[index].get("blocks").is_none()
                {
                    tokens[index]["blocks"] = blocks.clone();
                }
            }
            None => {
                seen.insert(own.to_string(), tokens.len());
                let mut token = json!({
                    "revocation_id": own,
                    "source": "derived by its holder",
                    "chain": chain,
                    "seq": row.seq,
                });
                if let Some(blocks) = row.detail.get("blocks") {
                    token["blocks"] = blocks.clone();
                }
                tokens.push(token);
            }
        }
    }
    tokens
}

/// Counts by outcome and by tool, from the rows.
fn summary(rows: &[AuditRow]) -> Value {
    let count = |kind: &str| rows.iter().filter(|r| r.kind == kind).count();
    let mut by_tool: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.kind.starts_with("call.")) {
        let tool = row.detail.get("tool").and_then(Value::as_str).unwrap_or("");
        let outcome = row.kind.trim_start_matches("call.");
        *by_tool.entry(tool).or_default().entry(outcome).or_default() += 1;
    }
    json!({
        "calls_allowed": count("call.allowed"),
        "calls_denied": count("call.denied"),
        "calls_held": count("call.held"),
        "approvals_requested": count("approval.requested"),
        "renewals": count("task.renewed"),
        "by_tool": by_tool,
    })
}
