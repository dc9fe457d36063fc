//! One behavioural suite for every store: the same cases run against SQLite and
//! PostgreSQL (a fresh schema per test on this machine's server), so the two
//! implementations cannot drift.

use std::sync::Arc;

use serde_json::json;

use super::api::{
    Activation, ApprovalKind, ApprovalRecord, ApprovalState, AuditCheckpoint, Decided,
    NewAuditEvent, NewTask, Store, TaskQuery, TaskRecord, TaskState, ToolPin, UsageBatch,
};
use super::chain::verify_chain;
use super::connections_api::{ConnectionRecord, Refreshed, TaskUpstreamToken};
use super::identity_api::{OAuthClient, OAuthGrant, Redeemed, Rotated, UserRecord, WebSession};
use super::postgres::PgStore;
use super::sqlite::SqliteStore;

fn task(id: &str, state: TaskState) -> TaskRecord {
    TaskRecord {
        task_id: id.into(),
        agent: "bot".into(),
        purpose: "p".into(),
        tools: vec!["web.search".into()],
        checks: vec![],
        state,
        created_at_ms: 1_000,
        expires_at_ms: 10_000,
        idle_timeout_ms: Some(2_000),
        max_calls: Some(5),
        calls: 0,
        last_activity_ms: 1_000,
        ended_at_ms: None,
        end_reason: None,
        token: Some("t0".into()),
        user: None,
        user_group: None,
        audience: None,
    }
}

fn approval(id: &str, task_id: &str, kind: ApprovalKind) -> ApprovalRecord {
    ApprovalRecord {
        approval_id: id.into(),
        kind,
        task_id: task_id.into(),
        agent: "bot".into(),
        user: None,
        purpose: "p".into(),
        tools: vec!["web.search".into()],
        call_tool: None,
        call_args: None,
        args_hash: None,
        ttl_ms: Some(60_000),
        state: ApprovalState::Pending,
        requested_at_ms: 1_000,
        expires_at_ms: 5_000,
        decided_at_ms: None,
        decided_by: None,
        note: None,
    }
}

/// A renewal of task `tsk_a`.
fn renewal(expires_at_ms: i64, token: &str, revocation_id: &str, tools: &[&str]) -> Activation {
    Activation {
        task_id: "tsk_a".into(),
        expires_at_ms,
        token: token.into(),
        revocation_id: revocation_id.into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
    }
}

async fn task_lifecycle(store: Arc<dyn Store>) {
    store
        .insert_task(&task("tsk_a", TaskState::Active), Some("aa01"), None)
        .await
        .unwrap();
    assert_eq!(
        store.get_task("tsk_a").await.unwrap().unwrap().state,
        TaskState::Active
    );
    assert!(
        store
            .renew_task(&renewal(20_000, "t1", "aa02", &["web.search"]), 2_000)
            .await
            .unwrap()
    );
    let renewed = store.get_task("tsk_a").await.unwrap().unwrap();
    assert_eq!(
        (
            renewed.expires_at_ms,
            renewed.token.as_deref(),
            renewed.last_activity_ms
        ),
        (20_000, Some("t1"), 2_000)
    );
    assert_eq!(
        renewed.tools,
        vec!["web.search".to_string()],
        "renewal stores the current tools"
    );
    assert_eq!(store.due_tasks(21_000).await.unwrap().len(), 1);
    assert_eq!(store.due_tasks(3_000).await.unwrap().len(), 0);
    let ended = store
        .end_task("tsk_a", TaskState::Completed, "done", 3_000)
        .await
        .unwrap()
        .unwrap();
    let mut ids: Vec<&str> = ended.iter().map(|r| r.revocation_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["aa01", "aa02"]);
    assert!(
        ended
            .iter()
            .all(|r| r.reason == "completed" && r.task_id.as_deref() == Some("tsk_a"))
    );
    assert_eq!(
        store
            .end_task("tsk_a", TaskState::Revoked, "again", 4_000)
            .await
            .unwrap(),
        None,
        "ending twice"
    );
    assert!(
        !store
            .renew_task(&renewal(30_000, "t2", "aa03", &["web.search"]), 4_000)
            .await
            .unwrap()
    );
    let feed = store.revocations_after(0, 10).await.unwrap();
    assert_eq!(feed.len(), 2);
    assert!(feed[0].seq < feed[1].seq);
    assert_eq!(
        store
            .revocations_after(feed[0].seq, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.all_revoked_ids().await.unwrap().len(), 2);
    store
        .insert_task(&task("tsk_b", TaskState::Active), None, None)
        .await
        .unwrap();
    let query = |state| TaskQuery {
        state,
        limit: 10,
        ..TaskQuery::default()
    };
    assert_eq!(
        store
            .list_tasks(&query(Some(TaskState::Completed)))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.list_tasks(&query(None)).await.unwrap().len(), 2);
}

/// Tasks found by agent, person, tool, state and time, a page at a time; a tool name's
/// `_` or `%` is a character, not a wildcard.
async fn tasks_searched_and_paged(store: Arc<dyn Store>) {
    let made = [
        ("tsk_1", "bot", None, "web.search", 1_000, TaskState::Active),
        (
            "tsk_2",
            "bot",
            Some("ada"),
            "web_search",
            2_000,
            TaskState::Completed,
        ),
        (
            "tsk_3",
            "crawler",
            Some("ada"),
            "web.search",
            3_000,
            TaskState::Revoked,
        ),
        ("tsk_4", "bot", None, "webxsearch", 3_000, TaskState::Active),
        ("tsk_5", "bot", None, "web.search", 3_000, TaskState::Active),
    ];
    for (id, agent, user, tool, at, state) in made {
        let mut record = task(id, state);
        record.agent = agent.into();
        record.user = user.map(String::from);
        record.tools = vec![tool.into(), "notes.read".into()];
        record.created_at_ms = at;
        assert!(store.insert_task(&record, None, None).await.unwrap());
    }
    let ids = |query: TaskQuery| {
        let store = store.clone();
        async move {
            let query = TaskQuery {
                limit: if query.limit == 0 { 10 } else { query.limit },
                ..query
            };
            store
                .list_tasks(&query)
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.task_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ids(TaskQuery::default()).await,
        ["tsk_5", "tsk_4", "tsk_3", "tsk_2", "tsk_1"]
    );
    let by_agent = TaskQuery {
        agent: Some("crawler".into()),
        ..TaskQuery::default()
    };
    assert_eq!(ids(by_agent).await, ["tsk_3"]);
    let by_user = TaskQuery {
        user: Some("ada".into()),
        ..TaskQuery::default()
    };
    assert_eq!(ids(by_user).await, ["tsk_3", "tsk_2"]);
    let by_tool = TaskQuery {
        tool: Some("web_search".into()),
        ..TaskQuery::default()
    };
    assert_eq!(ids(by_tool).await, ["tsk_2"]);
    let by_prefix = TaskQuery {
        tool: Some("web".into()),
        ..TaskQuery::default()
    };
    assert!(ids(by_prefix).await.is_empty(), "a tool matches whole");
    let by_state_and_time = TaskQuery {
        state: Some(TaskState::Active),
        since_ms: Some(2_000),
        until_ms: Some(3_001),
        ..TaskQuery::default()
    };
    assert_eq!(ids(by_state_and_time).await, ["tsk_5", "tsk_4"]);
    // Pages of two: each starts after the last row of the one before, ties included.
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = store
            .list_tasks(&TaskQuery {
                after: after.clone(),
                limit: 2,
                ..TaskQuery::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.created_at_ms, last.task_id.clone()));
        seen.extend(page.into_iter().map(|t| t.task_id));
    }
    assert_eq!(seen, ["tsk_5", "tsk_4", "tsk_3", "tsk_2", "tsk_1"]);
}

/// A task's audit rows, after a position, oldest first; other tasks' rows are not among them.
async fn audit_rows_of_one_task(store: Arc<dyn Store>) {
    let event = |task: Option<&str>, n: i64| NewAuditEvent {
        at_ms: n,
        kind: "k".into(),
        actor: "a".into(),
        task_id: task.map(String::from),
        detail: json!({ "n": n }),
    };
    store
        .append_audit(&[
            event(Some("tsk_a"), 1),
            event(Some("tsk_b"), 2),
            event(None, 3),
            event(Some("tsk_a"), 4),
            event(Some("tsk_a"), 5),
        ])
        .await
        .unwrap();
    let seqs = |rows: Vec<super::api::AuditRow>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.audit_of_task("tsk_a", 0, 10).await.unwrap()),
        [1, 4, 5]
    );
    assert_eq!(seqs(store.audit_of_task("tsk_a", 1, 1).await.unwrap()), [4]);
    assert!(
        store
            .audit_of_task("tsk_c", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The row a test's retention cut appends: young, so it stays.
fn record_cut(pruned: &super::api::Pruned) -> NewAuditEvent {
    NewAuditEvent {
        at_ms: 9_000,
        kind: "audit.pruned".into(),
        actor: "broker".into(),
        task_id: None,
        detail: json!({"through_seq": pruned.through_seq, "rows": pruned.rows}),
    }
}

/// The kinds of the rows left, by seq.
async fn rows_left(store: &dyn Store) -> Vec<(i64, String)> {
    store
        .audit_after(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.kind))
        .collect()
}

/// Retention cuts the chain only at a signed checkpoint, never past the first row a kept
/// task or a young row needs, never the head; a task goes once its last row is gone.
async fn history_pruned_only_up_to_a_checkpoint(store: Arc<dyn Store>) {
    let mut old = task("tsk_old", TaskState::Completed);
    old.ended_at_ms = Some(100);
    let mut recent = task("tsk_recent", TaskState::Completed);
    recent.ended_at_ms = Some(5_000);
    let running = task("tsk_running", TaskState::Active);
    for record in [&old, &recent, &running] {
        assert!(store.insert_task(record, None, None).await.unwrap());
    }
    let event = |task: Option<&str>, at_ms: i64| NewAuditEvent {
        at_ms,
        kind: "k".into(),
        actor: "a".into(),
        task_id: task.map(String::from),
        detail: json!({}),
    };
    store
        .append_audit(&[
            event(Some("tsk_old"), 50),
            event(None, 60),
            event(Some("tsk_old"), 100),
            event(Some("tsk_recent"), 200),
            event(None, 300),
            event(Some("tsk_running"), 400),
        ])
        .await
        .unwrap();
    let hashes: Vec<String> = store
        .audit_after(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.hash)
        .collect();
    let checkpoint = |seq: i64| AuditCheckpoint {
        seq,
        hash: hashes[seq as usize - 1].clone(),
        at_ms: 1,
        kid: 1,
        signature: "s".into(),
    };
    assert_eq!(
        store.prune_history(1_000, 100, &record_cut).await.unwrap(),
        super::api::Pruned::default(),
        "no checkpoint, no cut"
    );
    store.insert_checkpoint(&checkpoint(2)).await.unwrap();
    // A checkpoint that names another hash than its row's is no anchor.
    store
        .insert_checkpoint(&AuditCheckpoint {
            hash: "forged".into(),
            ..checkpoint(5)
        })
        .await
        .unwrap();
    // Cutting at 2 would leave tsk_old without its beginning (row 1) but with row 3:
    // no cut until a checkpoint after its last row.
    assert_eq!(
        store.prune_history(1_000, 100, &record_cut).await.unwrap(),
        super::api::Pruned::default()
    );
    store.insert_checkpoint(&checkpoint(3)).await.unwrap();
    // Row 4 belongs to a task that ended within the retention: the cut is at 3.
    let pruned = store.prune_history(1_000, 100, &record_cut).await.unwrap();
    assert_eq!(
        (pruned.through_seq, pruned.rows, pruned.tasks),
        (Some(3), 3, 1)
    );
    assert!(store.get_task("tsk_old").await.unwrap().is_none());
    assert!(store.get_task("tsk_recent").await.unwrap().is_some());
    assert_eq!(
        store
            .prune_history(1_000, 100, &record_cut)
            .await
            .unwrap()
            .through_seq,
        None
    );
    // Later the recent task is old too, but the only checkpoint before the running
    // task's row is the forged one: nothing is cut; the head never is.
    store.insert_checkpoint(&checkpoint(6)).await.unwrap();
    assert_eq!(
        store
            .prune_history(10_000, 100, &record_cut)
            .await
            .unwrap()
            .through_seq,
        None
    );
    // The cut is recorded in the chain with it.
    assert_eq!(
        rows_left(store.as_ref()).await,
        [
            (4, "k".to_string()),
            (5, "k".into()),
            (6, "k".into()),
            (7, "audit.pruned".into())
        ]
    );
    let record = store.audit_after(6, 1).await.unwrap();
    assert_eq!(record[0].detail["through_seq"], 3);
    let chain = store.audit_after(0, 10).await.unwrap();
    assert!(chain.windows(2).all(|w| w[1].prev_hash == w[0].hash));
}

/// A checkpoint (unsigned: the store does not check signatures) naming stored row `seq`
/// with its hash as stored.
async fn checkpoint_of_row(store: &dyn Store, seq: i64) -> AuditCheckpoint {
    let row = store.audit_after(seq - 1, 1).await.unwrap();
    let row = row
        .first()
        .filter(|r| r.seq == seq)
        .expect("the row is stored");
    AuditCheckpoint {
        seq,
        hash: row.hash.clone(),
        at_ms: 1,
        kid: 1,
        signature: "s".into(),
    }
}

/// A large backlog is cut a batch at a time: each call stops at the newest checkpoint
/// within `max_rows` of the oldest row, or, with none that close, at the oldest one.
async fn history_pruned_a_batch_at_a_time(store: Arc<dyn Store>) {
    let mut events: Vec<NewAuditEvent> = (1..=11)
        .map(|n| NewAuditEvent {
            at_ms: n * 10,
            kind: "k".into(),
            actor: "a".into(),
            task_id: None,
            detail: json!({}),
        })
        .collect();
    events[10].at_ms = 5_000;
    store.append_audit(&events).await.unwrap();
    for seq in [2, 4, 6, 8, 10] {
        let checkpoint = checkpoint_of_row(store.as_ref(), seq).await;
        store.insert_checkpoint(&checkpoint).await.unwrap();
    }
    let mut cuts = Vec::new();
    while let Some(through) = store
        .prune_history(1_000, 3, &record_cut)
        .await
        .unwrap()
        .through_seq
    {
        cuts.push(through);
        assert!(cuts.len() < 10, "it ends: {cuts:?}");
    }
    assert_eq!(
        cuts,
        [2, 4, 6, 8, 10],
        "at most 3 rows a cut while checkpoints allow"
    );
    let left = rows_left(store.as_ref()).await;
    assert_eq!(left[0], (11, "k".into()), "the young head stays");
    assert_eq!(
        left[1..]
            .iter()
            .map(|(_, kind)| kind.as_str())
            .collect::<Vec<_>>(),
        ["audit.pruned"; 5],
        "each cut recorded: {left:?}"
    );
}

/// A long task at the log's front straddles every checkpoint within `max_rows`: the cut
/// goes forward past its last row (it used to stop every cut for good), but never past
/// a row that must stay.
async fn history_pruned_past_a_long_task_at_the_front(store: Arc<dyn Store>) {
    let mut long = task("tsk_long", TaskState::Completed);
    long.ended_at_ms = Some(10);
    assert!(store.insert_task(&long, None, None).await.unwrap());
    let events: Vec<NewAuditEvent> = (1..=60)
        .map(|n| NewAuditEvent {
            at_ms: if n == 60 { 5_000 } else { n },
            kind: "k".into(),
            actor: "a".into(),
            task_id: (n == 1 || n == 50).then(|| "tsk_long".to_string()),
            detail: json!({}),
        })
        .collect();
    store.append_audit(&events).await.unwrap();
    for seq in [10, 20, 30, 40, 50] {
        let checkpoint = checkpoint_of_row(store.as_ref(), seq).await;
        store.insert_checkpoint(&checkpoint).await.unwrap();
    }
    // Rows from seq 40 on are young for a retention ending at 40: the only cut past the
    // task (50) would take row 40.
    assert_eq!(
        store.prune_history(40, 20, &record_cut).await.unwrap(),
        super::api::Pruned::default()
    );
    let pruned = store.prune_history(1_000, 20, &record_cut).await.unwrap();
    assert_eq!(
        (pruned.through_seq, pruned.rows, pruned.tasks),
        (Some(50), 50, 1)
    );
    assert!(store.get_task("tsk_long").await.unwrap().is_none());
    assert_eq!(
        store
            .prune_history(1_000, 20, &record_cut)
            .await
            .unwrap()
            .through_seq,
        None
    );
    let left = rows_left(store.as_ref()).await;
    assert_eq!(left.first(), Some(&(51, "k".into())));
    assert_eq!(left.last(), Some(&(61, "audit.pruned".into())));
}

/// Twenty ended tasks at the log's front, each starting before the one before it ends:
/// every checkpoint among them is straddled by one, so the cut steps forward task by
/// task past them all (a search capped at 16 steps never cut again).
async fn history_pruned_past_a_chain_of_overlapping_tasks(store: Arc<dyn Store>) {
    const TASKS: i64 = 20;
    let task_of = |seq: i64| {
        // Task i has rows 2i+1 and 2i+4.
        let i = if seq % 2 == 1 {
            (seq - 1) / 2
        } else {
            (seq - 4) / 2
        };
        (seq != 2 && i < TASKS).then(|| format!("tsk_{i:02}"))
    };
    for i in 0..TASKS {
        let mut ended = task(&format!("tsk_{i:02}"), TaskState::Completed);
        ended.ended_at_ms = Some(10);
        assert!(store.insert_task(&ended, None, None).await.unwrap());
    }
    let last_of_tasks = 2 * (TASKS - 1) + 4;
    let events: Vec<NewAuditEvent> = (1..=last_of_tasks + 6)
        .map(|seq| NewAuditEvent {
            at_ms: if seq == last_of_tasks + 6 { 5_000 } else { seq },
            kind: "k".into(),
            actor: "a".into(),
            task_id: task_of(seq),
            detail: json!({}),
        })
        .collect();
    store.append_audit(&events).await.unwrap();
    for seq in 1..last_of_tasks + 6 {
        let checkpoint = checkpoint_of_row(store.as_ref(), seq).await;
        store.insert_checkpoint(&checkpoint).await.unwrap();
    }
    let pruned = store.prune_history(1_000, 1, &record_cut).await.unwrap();
    assert_eq!(
        (pruned.through_seq, pruned.rows, pruned.tasks),
        (Some(last_of_tasks), last_of_tasks as u64, TASKS as u64),
        "the first cut after the last of the chained tasks"
    );
    let left = rows_left(store.as_ref()).await;
    assert_eq!(left.first(), Some(&(last_of_tasks + 1, "k".into())));
}

/// With no checkpoint within `max_rows`, the cut goes to the oldest one it may use
/// rather than never pruning.
async fn history_pruned_past_a_batch_when_checkpoints_are_sparse(store: Arc<dyn Store>) {
    let events: Vec<NewAuditEvent> = (1..=6)
        .map(|n| NewAuditEvent {
            at_ms: if n == 6 { 5_000 } else { n * 10 },
            kind: "k".into(),
            actor: "a".into(),
            task_id: None,
            detail: json!({}),
        })
        .collect();
    store.append_audit(&events).await.unwrap();
    for seq in [4, 5] {
        let checkpoint = checkpoint_of_row(store.as_ref(), seq).await;
        store.insert_checkpoint(&checkpoint).await.unwrap();
    }
    let pruned = store.prune_history(1_000, 1, &record_cut).await.unwrap();
    assert_eq!((pruned.through_seq, pruned.rows), (Some(4), 4));
    let pruned = store.prune_history(1_000, 1, &record_cut).await.unwrap();
    assert_eq!((pruned.through_seq, pruned.rows), (Some(5), 1));
    assert_eq!(
        store
            .prune_history(1_000, 1, &record_cut)
            .await
            .unwrap()
            .through_seq,
        None
    );
}

async fn revocations_and_credentials(store: Arc<dyn Store>) {
    store
        .insert_credential("cc01", "agent", "bot", 1, Some(50_000))
        .await
        .unwrap();
    store
        .insert_credential("cc02", "agent", "bot", 2, None)
        .await
        .unwrap();
    store
        .insert_credential("cc03", "approver", "bot", 3, Some(60_000))
        .await
        .unwrap();
    let revoked = store.revoke_credentials("agent", "bot", 10).await.unwrap();
    assert_eq!(revoked.len(), 2);
    let mut windows: Vec<Option<i64>> = revoked.iter().map(|r| r.expires_at_ms).collect();
    windows.sort();
    assert_eq!(
        windows,
        vec![None, None],
        "a credential's revocation is kept for ever"
    );
    assert!(
        store
            .revoke_credentials("agent", "bot", 11)
            .await
            .unwrap()
            .is_empty(),
        "idempotent"
    );
    let one = store
        .revoke_ids(&["dd01".into()], Some("tsk_x"), "token", 12)
        .await
        .unwrap();
    assert_eq!((one.len(), one[0].reason.as_str()), (1, "token"));
    assert_eq!(one[0].expires_at_ms, None, "no such task: kept for ever");
    assert!(
        store
            .revoke_ids(&["dd01".into()], Some("tsk_x"), "token", 13)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.all_revoked_ids().await.unwrap().len(), 3);
    assert_eq!(store.revocation_count().await.unwrap(), 3);
    assert_eq!(store.revoked_tokens_of("tsk_x").await.unwrap(), 1);
    // A task's ids carry the task's window; past it they can be pruned, others stay.
    store
        .insert_task(&task("tsk_w", TaskState::Active), None, None)
        .await
        .unwrap();
    let windowed = store
        .revoke_ids(&["dd02".into()], Some("tsk_w"), "token", 14)
        .await
        .unwrap();
    let window = windowed[0].expires_at_ms.expect("the task's window");
    assert_eq!(window, 10_000);
    let live: Vec<String> = store
        .live_revocations_after(0, window + 1, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.revocation_id)
        .collect();
    assert!(
        !live.contains(&"dd02".to_string()),
        "past its window: not loaded"
    );
    assert!(
        live.contains(&"cc01".to_string()),
        "a credential is always loaded"
    );
    assert_eq!(
        store.live_revocation_count(window + 1).await.unwrap(),
        live.len() as i64
    );
    assert_eq!(
        store.prune_revocations(window).await.unwrap(),
        0,
        "not before the window ends"
    );
    assert_eq!(
        store.prune_revocations(window + 1).await.unwrap(),
        1,
        "dd02"
    );
    assert_eq!(
        store.prune_revocations(i64::MAX).await.unwrap(),
        0,
        "credentials stay"
    );
    assert_eq!(
        store.revocation_count().await.unwrap(),
        3,
        "no window: kept"
    );
}

/// After a feed written before the prefix index (entries `aa01` of task `tsk_1`, a
/// token, and `aa02`) was brought up to date: the task index answers, an id already
/// there is skipped, a new one is published. Answers the new entries' seqs.
pub(super) async fn upgraded_feed_goes_on(store: &dyn Store) -> Vec<i64> {
    assert_eq!(store.revoked_tokens_of("tsk_1").await.unwrap(), 1);
    store
        .revoke_ids(&["aa03".into(), "aa01".into()], None, "token", 4)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

/// The feed finds ids by their first 16 digits: ids that share those are still told
/// apart everywhere an id is looked up, and each id is in the feed once.
async fn ids_sharing_a_prefix_stay_apart(store: Arc<dyn Store>) {
    let id = |prefix: char, tail: &str| format!("{}{tail}", prefix.to_string().repeat(16));
    let revoke = |ids: Vec<String>| {
        let store = store.clone();
        async move { store.revoke_ids(&ids, None, "token", 1).await.unwrap() }
    };
    assert_eq!(revoke(vec![id('a', "01")]).await.len(), 1);
    let second = revoke(vec![id('a', "02")]).await;
    assert_eq!(second.len(), 1, "not mistaken for its neighbour");
    assert_eq!(second[0].revocation_id, id('a', "02"));
    assert!(revoke(vec![id('a', "01"), id('a', "02")]).await.is_empty());
    assert!(
        revoke(vec![id('a', "")]).await.len() == 1,
        "a prefix of both is its own id"
    );

    // A mint checks its credential's id, not one that merely starts the same.
    store
        .insert_credential(&id('b', "01"), "agent", "bot", 1, None)
        .await
        .unwrap();
    revoke(vec![id('b', "02"), id('b', "01x")]).await;
    let mint = |task_id: &str| NewTask {
        task: TaskRecord {
            agent: "bot".into(),
            ..task(task_id, TaskState::Active)
        },
        revocation_id: Some(id('c', task_id)),
        credential: Some(id('b', "01")),
    };
    assert_eq!(
        store.insert_tasks(&[mint("tsk_p1")]).await.unwrap(),
        vec![true]
    );
    store.revoke_credentials("agent", "bot", 2).await.unwrap();
    assert_eq!(
        store.insert_tasks(&[mint("tsk_p2")]).await.unwrap(),
        vec![false]
    );

    // An agent revoke publishes a token whose neighbour is revoked, and skips one
    // revoked already.
    store
        .insert_task(
            &TaskRecord {
                agent: "bot".into(),
                ..task("tsk_p3", TaskState::Active)
            },
            Some(&id('d', "01")),
            None,
        )
        .await
        .unwrap();
    revoke(vec![id('d', "02"), id('c', "tsk_p1")]).await;
    let (ended, published) = store
        .end_agent_tasks("bot", TaskState::Revoked, "cut off", 3)
        .await
        .unwrap();
    assert_eq!(ended.len(), 2);
    let published: Vec<String> = published.into_iter().map(|r| r.revocation_id).collect();
    assert_eq!(published, vec![id('d', "01")]);
    let mut feed: Vec<String> = store
        .all_revoked_ids()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let listed = feed.len();
    feed.sort();
    feed.dedup();
    assert_eq!(feed.len(), listed, "each id once");
    assert_eq!(listed, 9);
}

async fn approvals(store: Arc<dyn Store>) {
    store
        .insert_task(&task("tsk_p", TaskState::PendingApproval), None, None)
        .await
        .unwrap();
    store
        .insert_approval(&approval("apr_1", "tsk_p", ApprovalKind::Issuance))
        .await
        .unwrap();
    assert_eq!(
        store
            .list_approvals(Some(ApprovalState::Pending), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.due_approvals(6_000).await.unwrap().len(), 1);
    let activation = Activation {
        task_id: "tsk_p".into(),
        expires_at_ms: 70_000,
        token: "tok".into(),
        revocation_id: "ee01".into(),
        tools: vec!["web.search".into()],
    };
    let decided = store
        .decide_approval(
            "apr_1",
            ApprovalState::Approved,
            "approver:ann",
            Some("ok"),
            2_000,
            Some(&activation),
        )
        .await
        .unwrap();
    assert_eq!(decided, Decided::Done);
    let active = store.get_task("tsk_p").await.unwrap().unwrap();
    assert_eq!(
        (active.state, active.token.as_deref()),
        (TaskState::Active, Some("tok"))
    );
    let again = store
        .decide_approval("apr_1", ApprovalState::Denied, "x", None, 3_000, None)
        .await
        .unwrap();
    assert_eq!(again, Decided::AlreadyDecided(ApprovalState::Approved));
    // An approval whose task ended first changes nothing.
    store
        .insert_task(&task("tsk_q", TaskState::PendingApproval), None, None)
        .await
        .unwrap();
    store
        .insert_approval(&approval("apr_2", "tsk_q", ApprovalKind::Issuance))
        .await
        .unwrap();
    store
        .end_task("tsk_q", TaskState::Revoked, "race", 1_500)
        .await
        .unwrap();
    let late = Activation {
        task_id: "tsk_q".into(),
        expires_at_ms: 1,
        token: "tok2".into(),
        revocation_id: "ee02".into(),
        tools: vec!["web.search".into()],
    };
    let decided = store
        .decide_approval(
            "apr_2",
            ApprovalState::Approved,
            "x",
            None,
            2_000,
            Some(&late),
        )
        .await
        .unwrap();
    assert_eq!(decided, Decided::TaskNotPending);
    assert_eq!(
        store.get_approval("apr_2").await.unwrap().unwrap().state,
        ApprovalState::Pending
    );
    assert!(
        store
            .get_task("tsk_q")
            .await
            .unwrap()
            .unwrap()
            .token
            .as_deref()
            == Some("t0")
    );
    // A call approval is spent once.
    store
        .insert_approval(&approval("apr_3", "tsk_p", ApprovalKind::Call))
        .await
        .unwrap();
    assert!(
        !store.use_approval("apr_3", 1).await.unwrap(),
        "pending is not spendable"
    );
    store
        .decide_approval("apr_3", ApprovalState::Approved, "x", None, 2, None)
        .await
        .unwrap();
    assert!(store.use_approval("apr_3", 3).await.unwrap());
    assert!(!store.use_approval("apr_3", 4).await.unwrap());
}

/// Files an approval of `kind` for `task_id` and approves it with a new token for the
/// task (window 20_000).
async fn approve_new(store: &dyn Store, id: &str, task_id: &str, kind: ApprovalKind) -> Decided {
    store
        .insert_approval(&approval(id, task_id, kind))
        .await
        .unwrap();
    let activation = Activation {
        task_id: task_id.into(),
        ..renewal(
            20_000,
            &format!("tok_{id}"),
            &format!("id_{id}"),
            &["web.search"],
        )
    };
    let approved = ApprovalState::Approved;
    store
        .decide_approval(id, approved, "x", None, 2_000, Some(&activation))
        .await
        .unwrap()
}

/// Which task an approved activation may change: a renewal only a task still active, an
/// issuance only a task still waiting for it; otherwise nothing changes.
async fn renewal_guard(store: Arc<dyn Store>) {
    let store = store.as_ref();
    store
        .insert_task(&task("tsk_a", TaskState::Active), Some("aa01"), None)
        .await
        .unwrap();
    store
        .insert_task(&task("tsk_p", TaskState::PendingApproval), None, None)
        .await
        .unwrap();
    let task_now = |id: &'static str| async move {
        let t = store.get_task(id).await.unwrap().unwrap();
        (t.state, t.expires_at_ms, t.token.unwrap_or_default())
    };
    let untouched = |state| (state, 10_000, "t0".to_string());
    // A renewal does not issue a task still waiting for its issuance approval, and an
    // issuance does not replace the token of a task already running.
    let not_pending = Decided::TaskNotPending;
    let renewal_of_pending = approve_new(store, "apr_r1", "tsk_p", ApprovalKind::Renewal).await;
    assert_eq!(renewal_of_pending, not_pending, "renewal of a pending task");
    assert_eq!(
        task_now("tsk_p").await,
        untouched(TaskState::PendingApproval)
    );
    let issuance_of_active = approve_new(store, "apr_i1", "tsk_a", ApprovalKind::Issuance).await;
    assert_eq!(
        issuance_of_active, not_pending,
        "issuance of an active task"
    );
    assert_eq!(task_now("tsk_a").await, untouched(TaskState::Active));
    for id in ["apr_r1", "apr_i1"] {
        let state = store.get_approval(id).await.unwrap().unwrap().state;
        assert_eq!(state, ApprovalState::Pending, "{id}: nothing changes");
    }
    // A renewal of an active task gives it the new window and token, whose id is
    // revoked with the task; an ended task is not renewed.
    let renewal = approve_new(store, "apr_r2", "tsk_a", ApprovalKind::Renewal).await;
    assert_eq!(renewal, Decided::Done);
    let renewed = (TaskState::Active, 20_000, "tok_apr_r2".to_string());
    assert_eq!(task_now("tsk_a").await, renewed);
    let ended = store.end_task("tsk_a", TaskState::Revoked, "r", 3_000);
    let mut ids: Vec<String> = (ended.await.unwrap().unwrap().into_iter())
        .map(|r| r.revocation_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["aa01", "id_apr_r2"]);
    let late = approve_new(store, "apr_r3", "tsk_a", ApprovalKind::Renewal).await;
    assert_eq!(late, not_pending, "renewal of an ended task");
    assert_eq!(task_now("tsk_a").await.0, TaskState::Revoked);
}

async fn usage_pins_and_audit(store: Arc<dyn Store>) {
    store
        .insert_task(&task("tsk_u", TaskState::Active), None, None)
        .await
        .unwrap();
    let batch = UsageBatch {
        tasks: vec![("tsk_u".into(), 3, 5_000)],
        tokens: vec![("ff01".into(), 2)],
    };
    assert_eq!(store.record_usage(&batch).await.unwrap(), vec![2]);
    let older = UsageBatch {
        tasks: vec![("tsk_u".into(), 1, 4_000)],
        tokens: vec![("ff01".into(), 1)],
    };
    assert_eq!(
        store.record_usage(&older).await.unwrap(),
        vec![3],
        "token prefix counts add up what every broker wrote"
    );
    let t = store.get_task("tsk_u").await.unwrap().unwrap();
    assert_eq!(
        (t.calls, t.last_activity_ms),
        (3, 5_000),
        "counters only grow"
    );
    assert_eq!(store.token_calls("ff01").await.unwrap(), 3);
    assert_eq!(store.token_calls("nope").await.unwrap(), 0);

    let pin = ToolPin {
        name: "s.t".into(),
        hash: "h1".into(),
        pending_hash: Some("h2".into()),
        approval_id: Some("apr_9".into()),
    };
    store.put_pin(&pin).await.unwrap();
    assert_eq!(store.get_pin("s.t").await.unwrap().unwrap(), pin);

    let event = |n: i64| NewAuditEvent {
        at_ms: n,
        kind: "k".into(),
        actor: "a".into(),
        task_id: None,
        detail: json!({"n": n}),
    };
    store.append_audit(&[event(1), event(2)]).await.unwrap();
    store.append_audit(&[event(3)]).await.unwrap();
    let rows = store.audit_after(0, 10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(verify_chain((0, ""), &rows).unwrap().0, 3);
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 3);
    // A batch written in several statements: every row in order, each its own detail,
    // and the chain unbroken across them.
    let many: Vec<NewAuditEvent> = (4..=103).map(event).collect();
    store.append_audit(&many).await.unwrap();
    let rows = store.audit_after(0, 200).await.unwrap();
    assert_eq!(verify_chain((0, ""), &rows).unwrap().0, 103);
    for row in &rows {
        assert_eq!((row.at_ms, &row.detail), (row.seq, &json!({"n": row.seq})));
    }
}

async fn audit_checkpoints(store: Arc<dyn Store>) {
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    let checkpoint = |seq: i64, hash: &str| AuditCheckpoint {
        seq,
        hash: hash.into(),
        at_ms: 1_000 + seq,
        kid: 7,
        signature: format!("sig{seq}"),
    };
    assert!(store.insert_checkpoint(&checkpoint(3, "h3")).await.unwrap());
    assert!(store.insert_checkpoint(&checkpoint(9, "h9")).await.unwrap());
    // A second replica signing the same head: kept once, the first one stays.
    assert!(
        !store
            .insert_checkpoint(&checkpoint(9, "other"))
            .await
            .unwrap()
    );
    assert!(store.insert_checkpoint(&checkpoint(5, "h5")).await.unwrap());
    assert_eq!(
        store.latest_checkpoint().await.unwrap(),
        Some(checkpoint(9, "h9"))
    );
    let all = store.checkpoints_after(0, 10).await.unwrap();
    assert_eq!(
        all,
        vec![
            checkpoint(3, "h3"),
            checkpoint(5, "h5"),
            checkpoint(9, "h9")
        ]
    );
    let page = store.checkpoints_after(3, 1).await.unwrap();
    assert_eq!(page, vec![checkpoint(5, "h5")]);
}

async fn people_and_oauth(store: Arc<dyn Store>) {
    let user = UserRecord {
        name: "alice@example.com".into(),
        password_hash: "$argon2id$x".into(),
        approver: true,
        created_at_ms: 1_000,
    };
    assert!(store.insert_user(&user).await.unwrap());
    assert!(
        !store.insert_user(&user).await.unwrap(),
        "a name is taken once"
    );
    assert_eq!(
        store.get_user("alice@example.com").await.unwrap(),
        Some(user)
    );
    assert_eq!(store.get_user("bob").await.unwrap(), None);

    let session = WebSession {
        id_hash: "s1".into(),
        user: "alice@example.com".into(),
        approver: true,
        groups: vec!["security".into()],
        csrf: "c1".into(),
        created_at_ms: 1_000,
        expires_at_ms: 5_000,
    };
    store.insert_session(&session).await.unwrap();
    assert_eq!(store.get_session("s1", 4_999).await.unwrap(), Some(session));
    assert_eq!(
        store.get_session("s1", 5_000).await.unwrap(),
        None,
        "expired"
    );
    store.delete_session("s1", 1_000).await.unwrap();
    assert_eq!(
        store.get_session("s1", 2_000).await.unwrap(),
        None,
        "signed out"
    );

    let client = OAuthClient {
        client_id: "lc_1".into(),
        client_name: "Client".into(),
        redirect_uris: vec!["http://127.0.0.1:9/cb".into()],
        created_at_ms: 1_000,
    };
    store.insert_client(&client).await.unwrap();
    assert_eq!(store.get_client("lc_1").await.unwrap(), Some(client));

    let grant = OAuthGrant {
        task_id: "tsk_a".into(),
        client_id: "lc_1".into(),
        user: "alice@example.com".into(),
        redirect_uri: "http://127.0.0.1:9/cb".into(),
        code_challenge: "ch".into(),
        resource: "http://127.0.0.1:7070/mcp".into(),
        state: Some("st".into()),
        scope: "web.search".into(),
        created_at_ms: 1_000,
        code_expires_at_ms: None,
        code_issued: false,
    };
    store.insert_grant(&grant).await.unwrap();
    assert_eq!(store.redeem_code("c0de").await.unwrap(), Redeemed::Unknown);
    assert!(store.set_code("tsk_a", "c0de", 61_000).await.unwrap());
    assert!(
        !store.set_code("tsk_a", "other", 61_000).await.unwrap(),
        "one code per grant"
    );
    let issued = OAuthGrant {
        code_expires_at_ms: Some(61_000),
        code_issued: true,
        ..grant
    };
    assert_eq!(
        store.redeem_code("c0de").await.unwrap(),
        Redeemed::First(issued.clone())
    );
    assert_eq!(
        store.redeem_code("c0de").await.unwrap(),
        Redeemed::Replayed(issued),
        "a code redeems once"
    );

    assert_eq!(
        store.expire_codes(70_000, 0).await.unwrap(),
        Vec::<String>::new(),
        "a redeemed code does not expire"
    );
    let unredeemed = OAuthGrant {
        task_id: "tsk_b".into(),
        ..store.get_grant("tsk_a").await.unwrap().unwrap()
    };
    store.insert_grant(&unredeemed).await.unwrap();
    assert!(store.set_code("tsk_b", "c0de-b", 61_000).await.unwrap());
    assert_eq!(
        store.expire_codes(60_999, 0).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.expire_codes(61_000, 0).await.unwrap(),
        vec!["tsk_b".to_string()]
    );
    assert_eq!(
        store.expire_codes(62_000, 0).await.unwrap(),
        Vec::<String>::new(),
        "once"
    );
    assert!(matches!(
        store.redeem_code("c0de-b").await.unwrap(),
        Redeemed::Expired(_)
    ));

    // A grant nobody came back for (its approval never collected) ends too.
    let unclaimed = OAuthGrant {
        task_id: "tsk_c".into(),
        created_at_ms: 5_000,
        ..store.get_grant("tsk_a").await.unwrap().unwrap()
    };
    store.insert_grant(&unclaimed).await.unwrap();
    assert_eq!(
        store.expire_codes(62_000, 4_999).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.expire_codes(62_000, 5_000).await.unwrap(),
        vec!["tsk_c".to_string()]
    );
    assert!(
        !store.set_code("tsk_c", "late", 99_000).await.unwrap(),
        "too late for a code"
    );
    assert_eq!(store.count_clients().await.unwrap(), 1);
    assert_eq!(
        store.prune_clients(2_000).await.unwrap(),
        0,
        "lc_1 has grants"
    );
    store
        .insert_client(&OAuthClient {
            client_id: "lc_unused".into(),
            client_name: "Unused".into(),
            redirect_uris: vec!["http://127.0.0.1:9/cb".into()],
            created_at_ms: 1_000,
        })
        .await
        .unwrap();
    assert_eq!(
        store.prune_clients(1_000).await.unwrap(),
        0,
        "not old enough"
    );
    assert_eq!(store.prune_clients(1_001).await.unwrap(), 1);
    assert_eq!(store.get_client("lc_unused").await.unwrap(), None);

    store.insert_refresh("r1", "tsk_a", 2_000).await.unwrap();
    assert_eq!(
        store.rotate_refresh("r1", "r2", 3_000).await.unwrap(),
        Rotated::Current("tsk_a".into())
    );
    assert_eq!(
        store.rotate_refresh("r1", "r3", 4_000).await.unwrap(),
        Rotated::Replayed("tsk_a".into()),
        "a rotated refresh token does not rotate again"
    );
    assert_eq!(
        store.rotate_refresh("r2", "r4", 4_000).await.unwrap(),
        Rotated::Current("tsk_a".into())
    );
    assert_eq!(
        store.rotate_refresh("nope", "r5", 4_000).await.unwrap(),
        Rotated::Unknown
    );
    assert_eq!(
        store.refresh_task("r1").await.unwrap().as_deref(),
        Some("tsk_a")
    );
    assert_eq!(
        store.refresh_task("r3").await.unwrap(),
        None,
        "a refused rotation stores nothing"
    );
}

fn connection(id: &str, user: &str, provider: &str) -> ConnectionRecord {
    ConnectionRecord {
        connection_id: id.into(),
        user: user.into(),
        provider: provider.into(),
        state: "active".into(),
        broken_reason: None,
        scopes: "notes:read offline_access".into(),
        refresh_token: Some("sealed-refresh".into()),
        access_token: Some("sealed-access".into()),
        access_expires_at_ms: Some(5_000),
        refreshing_until_ms: None,
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
        version: 0,
    }
}

fn task_token(task_id: &str, connection_id: &str, token: &str, expires: i64) -> TaskUpstreamToken {
    TaskUpstreamToken {
        task_id: task_id.into(),
        provider: "acme".into(),
        connection_id: connection_id.into(),
        access_token: token.into(),
        expires_at_ms: Some(expires),
        revoked_at_ms: None,
        created_at_ms: 1_000,
    }
}

async fn upstream_connections(store: Arc<dyn Store>) {
    // One connection per person and provider: connecting again replaces the old one and
    // hands it back (its tokens are to be revoked).
    assert!(
        store
            .put_connection(&connection("con_1", "alice", "acme"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .put_connection(&connection("con_b", "bob", "acme"))
            .await
            .unwrap()
            .is_none()
    );
    let replaced = store
        .put_connection(&connection("con_2", "alice", "acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.connection_id, "con_1");
    let alice = store
        .get_connection("alice", "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.connection_id, "con_2");
    assert_eq!(store.list_connections("alice").await.unwrap().len(), 1);

    // The right to refresh: one holder at a time, until its lease runs out.
    assert!(store.claim_refresh("con_2", 0, 2_000, 3_000).await.unwrap());
    assert!(!store.claim_refresh("con_2", 0, 2_500, 3_500).await.unwrap());
    assert!(
        store.claim_refresh("con_2", 0, 3_000, 4_000).await.unwrap(),
        "lease ran out"
    );
    store
        .store_refreshed(
            "con_2",
            &Refreshed {
                access_token: "sealed-access-2".into(),
                access_expires_at_ms: Some(9_000),
                refresh_token: None,
                scopes: None,
            },
            3_100,
        )
        .await
        .unwrap();
    let refreshed = store
        .get_connection("alice", "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refreshed.access_token.as_deref(), Some("sealed-access-2"));
    // No new refresh token sent: the old one stays.
    assert_eq!(refreshed.refresh_token.as_deref(), Some("sealed-refresh"));
    assert_eq!(refreshed.refreshing_until_ms, None);
    assert_eq!(refreshed.updated_at_ms, 3_100);
    assert_eq!(refreshed.version, 1);
    // A replica that read the tokens before that refresh cannot claim one: its refresh
    // token is spent.
    assert!(!store.claim_refresh("con_2", 0, 3_200, 4_200).await.unwrap());
    assert!(store.claim_refresh("con_2", 1, 3_200, 4_200).await.unwrap());
    store.release_refresh("con_2").await.unwrap();
    // Broken: tokens forgotten, and nobody may refresh it.
    store.mark_broken("con_2", "refused", 3_300).await.unwrap();
    let broken = store
        .get_connection("alice", "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broken.state, "broken");
    assert_eq!(broken.broken_reason.as_deref(), Some("refused"));
    assert!(broken.refresh_token.is_none() && broken.access_token.is_none());
    assert!(!store.claim_refresh("con_2", 2, 9_000, 9_500).await.unwrap());

    // A task's token: stored once; a fresh stored one wins over a second one, an expiring
    // one is replaced, a revoked one never.
    store
        .insert_task(&task("tsk_t", TaskState::Active), Some("ab01"), None)
        .await
        .unwrap();
    assert!(
        store
            .put_task_token(&task_token("tsk_t", "con_b", "one", 8_000), 2_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_task_token(&task_token("tsk_t", "con_b", "two", 9_000), 2_000)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_task_token("tsk_t", "acme")
            .await
            .unwrap()
            .unwrap()
            .access_token,
        "one"
    );
    assert!(
        store
            .put_task_token(&task_token("tsk_t", "con_b", "three", 9_000), 8_500)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_task_token("tsk_t", "acme")
            .await
            .unwrap()
            .unwrap()
            .access_token,
        "three"
    );
    // Not due while the task is active and its connection serves.
    assert!(
        store
            .task_tokens_to_revoke("acme", 4_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .end_task("tsk_t", TaskState::Completed, "done", 4_000)
        .await
        .unwrap();
    let due = store
        .task_tokens_to_revoke("acme", 4_000, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    // Claimed once across replicas; given back when the provider was away, due again
    // only from the retry time on.
    assert!(
        store
            .claim_task_token_revocation("tsk_t", "acme", 4_100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_task_token_revocation("tsk_t", "acme", 4_100)
            .await
            .unwrap()
    );
    assert!(
        store
            .task_tokens_to_revoke("acme", 4_100, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .unclaim_task_token_revocation("tsk_t", "acme", 9_000)
        .await
        .unwrap();
    assert!(
        store
            .task_tokens_to_revoke("acme", 8_999, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .task_tokens_to_revoke("acme", 9_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .claim_task_token_revocation("tsk_t", "acme", 9_100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_task_token(&task_token("tsk_t", "con_b", "four", 9_999), 99_999)
            .await
            .unwrap(),
        "a revoked token is never replaced"
    );

    // A live task's token is due once its connection stops serving.
    store
        .insert_task(&task("tsk_u", TaskState::Active), Some("ab02"), None)
        .await
        .unwrap();
    assert!(
        store
            .put_task_token(&task_token("tsk_u", "con_b", "five", 99_000), i64::MIN)
            .await
            .unwrap()
    );
    assert!(
        store
            .task_tokens_to_revoke("acme", 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Disconnect: only the person's own connection; it stops serving at once and waits
    // for its tokens to be revoked, claimed by one replica at a time.
    assert!(!store.disconnect("alice", "con_b", 10_000).await.unwrap());
    assert!(store.disconnect("bob", "con_b", 10_000).await.unwrap());
    assert!(
        !store.disconnect("bob", "con_b", 10_001).await.unwrap(),
        "once"
    );
    assert!(store.get_connection("bob", "acme").await.unwrap().is_none());
    assert!(store.list_connections("bob").await.unwrap().is_empty());
    let due = store
        .task_tokens_to_revoke("acme", 10_000, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].task_id, "tsk_u");
    // con_1, replaced by alice's reconnect, waits too.
    let waiting = store.disconnected(10_000, 10).await.unwrap();
    let ids: Vec<&str> = waiting.iter().map(|c| c.connection_id.as_str()).collect();
    assert_eq!(ids, vec!["con_1", "con_b"]);
    assert_eq!(waiting[1].refresh_token.as_deref(), Some("sealed-refresh"));
    store.forget_connection("con_1").await.unwrap();
    assert!(
        store
            .claim_disconnected("con_b", 10_000, 15_000)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_disconnected("con_b", 12_000, 17_000)
            .await
            .unwrap()
    );
    assert!(store.disconnected(12_000, 10).await.unwrap().is_empty());
    assert_eq!(store.disconnected(15_000, 10).await.unwrap().len(), 1);
    store.forget_connection("con_b").await.unwrap();
    assert!(store.disconnected(20_000, 10).await.unwrap().is_empty());
    // The task's token, revoked because its connection went, is forgotten: the task may
    // get one from a new connection.
    assert!(
        store
            .claim_task_token_revocation("tsk_u", "acme", 20_100)
            .await
            .unwrap()
    );
    // (Only the revoked token of that connection: a newer one from another stays.)
    store
        .forget_task_token("tsk_u", "acme", "con_other")
        .await
        .unwrap();
    assert!(
        store
            .get_task_token("tsk_u", "acme")
            .await
            .unwrap()
            .is_some()
    );
    store
        .forget_task_token("tsk_u", "acme", "con_b")
        .await
        .unwrap();
    assert!(
        store
            .get_task_token("tsk_u", "acme")
            .await
            .unwrap()
            .is_none()
    );
    // Connecting again replaces a broken connection; the old row waits for its tokens
    // to be revoked.
    assert_eq!(
        store
            .put_connection(&connection("con_3", "alice", "acme"))
            .await
            .unwrap()
            .unwrap()
            .connection_id,
        "con_2"
    );
    let waiting = store.disconnected(30_000, 10).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].connection_id, "con_2");
    assert_eq!(
        store
            .get_connection("alice", "acme")
            .await
            .unwrap()
            .unwrap()
            .connection_id,
        "con_3"
    );
}

/// Group commit of mints: one transaction, one answer per task, a revoked credential
/// refuses only its own tasks, and a failing task takes the whole batch with it.
async fn tasks_inserted_in_one_batch(store: Arc<dyn Store>) {
    store
        .insert_credential("cr01", "agent", "bot", 1, None)
        .await
        .unwrap();
    store
        .insert_credential("cr02", "agent", "other", 1, None)
        .await
        .unwrap();
    store.revoke_credentials("agent", "other", 2).await.unwrap();
    let new = |id: &str, agent: &str, credential: &str| NewTask {
        task: TaskRecord {
            agent: agent.into(),
            ..task(id, TaskState::Active)
        },
        revocation_id: Some(format!("rv_{id}")),
        credential: Some(credential.into()),
    };
    let answers = store
        .insert_tasks(&[
            new("tsk_b1", "bot", "cr01"),
            new("tsk_b2", "other", "cr02"),
            new("tsk_b3", "bot", "cr01"),
        ])
        .await
        .unwrap();
    assert_eq!(answers, vec![true, false, true]);
    assert!(store.get_task("tsk_b1").await.unwrap().is_some());
    assert!(
        store.get_task("tsk_b2").await.unwrap().is_none(),
        "revoked credential"
    );
    assert!(store.get_task("tsk_b3").await.unwrap().is_some());
    // A duplicate id fails the batch: nothing of it is committed.
    assert!(
        store
            .insert_tasks(&[new("tsk_b4", "bot", "cr01"), new("tsk_b1", "bot", "cr01")])
            .await
            .is_err()
    );
    assert!(
        store.get_task("tsk_b4").await.unwrap().is_none(),
        "all or nothing"
    );
    assert!(store.insert_tasks(&[]).await.unwrap().is_empty());

    // A batch larger than one statement takes (written in several): every row keeps its
    // own values and its own token, whatever the chunk it fell in.
    let batch: Vec<NewTask> = (0..77)
        .map(|n| {
            let mut new = new(
                &format!("tsk_m{n:02}"),
                if n % 5 == 0 { "other" } else { "big" },
                if n % 5 == 0 { "cr02" } else { "cr03" },
            );
            new.task.purpose = format!("purpose {n}");
            new.task.expires_at_ms = 50_000 + n;
            new
        })
        .collect();
    store
        .insert_credential("cr03", "agent", "big", 1, None)
        .await
        .unwrap();
    let answers = store.insert_tasks(&batch).await.unwrap();
    assert_eq!(answers, (0..77).map(|n| n % 5 != 0).collect::<Vec<_>>());
    for n in 0..77i64 {
        let id = format!("tsk_m{n:02}");
        let record = store.get_task(&id).await.unwrap();
        if n % 5 == 0 {
            assert!(record.is_none(), "{id}: revoked credential");
            continue;
        }
        let record = record.unwrap();
        assert_eq!(record.purpose, format!("purpose {n}"));
        assert_eq!(record.expires_at_ms, 50_000 + n);
        assert_eq!(record.agent, "big");
    }
    let (_, published) = store
        .end_agent_tasks("big", TaskState::Revoked, "done", 60_000)
        .await
        .unwrap();
    let mut tokens: Vec<(String, Option<String>)> = published
        .into_iter()
        .map(|r| (r.revocation_id, r.task_id))
        .collect();
    tokens.sort();
    let expected: Vec<(String, Option<String>)> = (0..77)
        .filter(|n| n % 5 != 0)
        .map(|n| (format!("rv_tsk_m{n:02}"), Some(format!("tsk_m{n:02}"))))
        .collect();
    assert_eq!(tokens, expected, "each token belongs to its own task");
}

/// An agent revoke ends exactly the agent's live tasks, in one transaction, and
/// publishes every token of theirs (renewed ones too) with its task's window.
async fn all_tasks_of_an_agent_end_at_once(store: Arc<dyn Store>) {
    let of = |id: &str, agent: &str, state: TaskState| TaskRecord {
        agent: agent.into(),
        ..task(id, state)
    };
    let insert = |record: TaskRecord, token: &'static str| {
        let store = store.clone();
        async move { store.insert_task(&record, Some(token), None).await.unwrap() }
    };
    insert(of("tsk_e1", "bot", TaskState::Active), "ee01").await;
    insert(of("tsk_e2", "bot", TaskState::PendingApproval), "ee02").await;
    insert(of("tsk_e3", "bot", TaskState::Active), "ee03").await;
    insert(of("tsk_e4", "other", TaskState::Active), "ee04").await;
    // A renewed task has two tokens; a completed one has had its token revoked already.
    assert!(
        store
            .renew_task(
                &Activation {
                    task_id: "tsk_e1".into(),
                    ..renewal(20_000, "t1", "ee11", &["web.search"])
                },
                2_000
            )
            .await
            .unwrap()
    );
    store
        .end_task("tsk_e3", TaskState::Completed, "done", 3_000)
        .await
        .unwrap()
        .unwrap();
    let (ended, published) = store
        .end_agent_tasks("bot", TaskState::Revoked, "cut off", 4_000)
        .await
        .unwrap();
    let mut ended = ended;
    ended.sort();
    assert_eq!(ended, vec!["tsk_e1".to_string(), "tsk_e2".to_string()]);
    let mut ids: Vec<(String, Option<String>, Option<i64>)> = published
        .iter()
        .map(|r| (r.revocation_id.clone(), r.task_id.clone(), r.expires_at_ms))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("ee01".into(), Some("tsk_e1".into()), Some(20_000)),
            ("ee02".into(), Some("tsk_e2".into()), Some(10_000)),
            ("ee11".into(), Some("tsk_e1".into()), Some(20_000)),
        ]
    );
    assert!(published.iter().all(|r| r.reason == "revoked"));
    for (id, state) in [
        ("tsk_e1", TaskState::Revoked),
        ("tsk_e2", TaskState::Revoked),
        ("tsk_e3", TaskState::Completed),
        ("tsk_e4", TaskState::Active),
    ] {
        let record = store.get_task(id).await.unwrap().unwrap();
        assert_eq!(record.state, state, "{id}");
    }
    let feed = store.revocations_after(0, 100).await.unwrap();
    assert!(
        feed.iter().all(|r| r.revocation_id != "ee04"),
        "other agent untouched"
    );
    // Nothing live is left: a second revoke ends nothing and publishes nothing.
    let (again, none) = store
        .end_agent_tasks("bot", TaskState::Revoked, "cut off", 5_000)
        .await
        .unwrap();
    assert!(again.is_empty() && none.is_empty());
}

/// An agent revoke racing tasks that end on their own: no deadlock, every task ends
/// once, every token is published once.
async fn an_agent_revoke_races_single_ends(store: Arc<dyn Store>) {
    let ids: Vec<String> = (0..20).map(|i| format!("tsk_r{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        store
            .insert_task(
                &task(id, TaskState::Active),
                Some(&format!("rr{i:02}")),
                None,
            )
            .await
            .unwrap();
    }
    let mut singles = Vec::new();
    for id in ids.clone() {
        let store = store.clone();
        singles.push(tokio::spawn(async move {
            store
                .end_task(&id, TaskState::Completed, "done", 7_000)
                .await
        }));
    }
    let revoke = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .end_agent_tasks("bot", TaskState::Revoked, "cut off", 7_000)
                .await
        })
    };
    let mut ended_alone = 0;
    for single in singles {
        if single.await.unwrap().unwrap().is_some() {
            ended_alone += 1;
        }
    }
    let (by_revoke, _) = revoke.await.unwrap().unwrap();
    assert_eq!(
        ended_alone + by_revoke.len(),
        ids.len(),
        "each task ends once"
    );
    let feed = store.revocations_after(0, 100).await.unwrap();
    let mut published: Vec<&str> = feed.iter().map(|r| r.revocation_id.as_str()).collect();
    published.sort();
    let expected: Vec<String> = (0..20).map(|i| format!("rr{i:02}")).collect();
    assert_eq!(published, expected, "every token published once");
}

/// An agent revoke racing the counter writer over the same task rows (in reverse order):
/// neither may deadlock.
async fn an_agent_revoke_races_usage_writes(store: Arc<dyn Store>) {
    let ids: Vec<String> = (0..30).map(|i| format!("tsk_u{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        store
            .insert_task(
                &task(id, TaskState::Active),
                Some(&format!("uu{i:02}")),
                None,
            )
            .await
            .unwrap();
    }
    let mut writers = Vec::new();
    for round in 0..8u64 {
        let store = store.clone();
        let batch = UsageBatch {
            tasks: ids
                .iter()
                .rev()
                .map(|id| (id.clone(), round, 2_000))
                .collect(),
            tokens: Vec::new(),
        };
        writers.push(tokio::spawn(
            async move { store.record_usage(&batch).await },
        ));
    }
    let revoke = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .end_agent_tasks("bot", TaskState::Revoked, "cut off", 8_000)
                .await
        })
    };
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let (ended, published) = revoke.await.unwrap().unwrap();
    assert_eq!((ended.len(), published.len()), (30, 30));
}

/// Runs every case, each on a fresh store from `make`.
macro_rules! suite {
    ($make:expr) => {
        #[tokio::test]
        async fn task_lifecycle() {
            super::task_lifecycle($make.await).await
        }
        #[tokio::test]
        async fn all_tasks_of_an_agent_end_at_once() {
            super::all_tasks_of_an_agent_end_at_once($make.await).await
        }
        #[tokio::test]
        async fn an_agent_revoke_races_single_ends() {
            super::an_agent_revoke_races_single_ends($make.await).await
        }
        #[tokio::test]
        async fn an_agent_revoke_races_usage_writes() {
            super::an_agent_revoke_races_usage_writes($make.await).await
        }
        #[tokio::test]
        async fn tasks_inserted_in_one_batch() {
            super::tasks_inserted_in_one_batch($make.await).await
        }
        #[tokio::test]
        async fn tasks_searched_and_paged() {
            super::tasks_searched_and_paged($make.await).await
        }
        #[tokio::test]
        async fn audit_rows_of_one_task() {
            super::audit_rows_of_one_task($make.await).await
        }
        #[tokio::test]
        async fn history_pruned_only_up_to_a_checkpoint() {
            super::history_pruned_only_up_to_a_checkpoint($make.await).await
        }
        #[tokio::test]
        async fn history_pruned_a_batch_at_a_time() {
            super::history_pruned_a_batch_at_a_time($make.await).await
        }
        #[tokio::test]
        async fn history_pruned_past_a_batch_when_checkpoints_are_sparse() {
            super::history_pruned_past_a_batch_when_checkpoints_are_sparse($make.await).await
        }
        #[tokio::test]
        async fn history_pruned_past_a_long_task_at_the_front() {
            super::history_pruned_past_a_long_task_at_the_front($make.await).await
        }
        #[tokio::test]
        async fn history_pruned_past_a_chain_of_overlapping_tasks() {
            super::history_pruned_past_a_chain_of_overlapping_tasks($make.await).await
        }
        #[tokio::test]
        async fn revocations_and_credentials() {
            super::revocations_and_credentials($make.await).await
        }
        #[tokio::test]
        async fn ids_sharing_a_prefix_stay_apart() {
            super::ids_sharing_a_prefix_stay_apart($make.await).await
        }
        #[tokio::test]
        async fn approvals() {
            super::approvals($make.await).await
        }
        #[tokio::test]
        async fn renewal_guard() {
            super::renewal_guard($make.await).await
        }
        #[tokio::test]
        async fn usage_pins_and_audit() {
            super::usage_pins_and_audit($make.await).await
        }
        #[tokio::test]
        async fn audit_checkpoints() {
            super::audit_checkpoints($make.await).await
        }
        #[tokio::test]
        async fn people_and_oauth() {
            super::people_and_oauth($make.await).await
        }
        #[tokio::test]
        async fn upstream_connections() {
            super::upstream_connections($make.await).await
        }
    };
}

mod sqlite {
    use super::*;

    async fn make() -> Arc<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        std::mem::forget(dir); // the file must outlive the test's store
        Arc::new(store)
    }

    suite!(make());
}

mod postgres {
    use super::*;

    /// This machine's PostgreSQL (trust auth, database `test`), a fresh schema per test.
    pub async fn make() -> Arc<dyn Store> {
        let url = std::env::var("LEASH_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("suite_{}", crate::ids::random_hex(6));
        Arc::new(
            PgStore::open(&url, &schema)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (database test)"),
        )
    }

    suite!(make());
}
