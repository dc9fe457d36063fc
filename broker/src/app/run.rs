//! Running a broker: the background work (sweeps, checkpoints, MCP discovery, the
//! replica feed) and the server, handed its listener and a shutdown future (as in
//! mini-redis), so tests bind `127.0.0.1:0` and run the real thing in-process.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::state::AppState;
use crate::audit::checkpoint::Checkpoints;
use crate::replica::feed::Feed;
use crate::upstream::mcp::Discovery;

/// The checkpoint signer of this broker.
fn checkpoints(state: &AppState) -> Checkpoints {
    Checkpoints {
        audit: state.audit.clone(),
        store: state.store.clone(),
        keys: state.keys.clone(),
        clock: state.clock.clone(),
        file: state.config.audit_checkpoint_file.clone(),
        interval: state.config.audit_checkpoint_interval,
    }
}

/// Serves until `shutdown` resolves, then drains requests, flushes counters and audit,
/// and signs a last audit checkpoint.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_forever(state.clone()));
    let provider_revocations = tokio::spawn(
        state
            .connections
            .clone()
            .run_revocations(PROVIDER_REVOCATION_SWEEP),
    );
    let ended_tasks = tokio::spawn(wake_on_task_end(state.clone()));
    let checkpointer = checkpoints(&state);
    let checkpoints = tokio::spawn(checkpointer.clone().run_forever());
    state.upstreams.start(&Discovery {
        store: state.store.clone(),
        catalog: state.catalog.clone(),
        review: state.approvals.clone(),
        refresh_every: state.config.mcp_refresh,
    });
    if let (Some(pg), Some(master_key)) = (state.pg.clone(), state.master_key.clone()) {
        let feed = Feed {
            store: pg,
            tasks: state.tasks.clone(),
            catalog: state.catalog.clone(),
            revoked: state.revoked.clone(),
            keys: state.keys.clone(),
            verifier: state.verifier.clone(),
            health: state.health.clone(),
            master_key,
            events: state.events.clone(),
        };
        crate::replica::feed::start(feed, state.revocations_loaded_to);
    }
    let app = crate::http::router(state.clone());
    crate::http::edge::serve(
        listener,
        app,
        &state.config,
        state.server_tls.clone(),
        shutdown,
    )
    .await;
    sweeper.abort();
    provider_revocations.abort();
    ended_tasks.abort();
    checkpoints.abort();
    state.tasks.flush().await;
    state.audit.flush().await;
    // A clean stop leaves the head covered: nothing after it can vanish unnoticed.
    if let Err(err) = checkpointer.checkpoint_head().await {
        tracing::warn!(error = %err, "cannot sign the final audit checkpoint");
    }
    Ok(())
}

/// How often revoked ids past their window are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Retention runs on every this many prune passes (hourly).
const HISTORY_PRUNE_EVERY_PASSES: u64 = 60;

/// Forgets revoked ids whose tokens are past their windows (plus the clock margin), in
/// the feed and in memory. Such a token is refused by its own expiry check, so nothing
/// it could do comes back; the set stops growing with old revocations.
pub async fn prune_revocations(state: &AppState) -> anyhow::Result<(u64, usize)> {
    let now = state.clock.now_ms();
    let from_feed = state
        .store
        .prune_revocations(now - crate::tokens::revocation::FEED_RETENTION_MS)
        .await?;
    let from_memory = state.revoked.prune(now);
    Ok((from_feed, from_memory))
}

/// Audit rows one pruning transaction deletes at most (when checkpoints allow a cut that
/// close): it holds the audit lock, and every call's audit row waits for it.
pub const PRUNE_BATCH_ROWS: i64 = 20_000;

/// Retention: prunes ended tasks older than `--task-retention-days` and the audit rows
/// before them, only up to a signed checkpoint, a batch of rows per transaction with a
/// pause between batches; each cut is recorded (`audit.pruned`) in the transaction that makes it.
/// What was deleted in all.
pub async fn prune_history(state: &AppState) -> anyhow::Result<crate::store::Pruned> {
    let retention = i64::try_from(state.config.task_retention.as_millis()).unwrap_or(i64::MAX);
    let before = state.clock.now_ms().saturating_sub(retention);
    let clock = state.clock.clone();
    let record = move |pruned: &crate::store::Pruned| crate::store::NewAuditEvent {
        at_ms: clock.now_ms(),
        kind: "audit.pruned".into(),
        actor: "broker".into(),
        task_id: None,
        detail: serde_json::json!({
            "through_seq": pruned.through_seq, "rows": pruned.rows, "tasks": pruned.tasks,
            "ended_before": crate::clock::rfc3339(before),
        }),
    };
    let mut total = crate::store::Pruned::default();
    loop {
        let pruned = state
            .store
            .prune_history(before, PRUNE_BATCH_ROWS, &record)
            .await?;
        // Each cut deletes at least the row of its checkpoint: this ends.
        let Some(through_seq) = pruned.through_seq else {
            return Ok(total);
        };
        total = crate::store::Pruned {
            through_seq: Some(through_seq),
            rows: total.rows + pruned.rows,
            tasks: total.tasks + pruned.tasks,
        };
        // Audit writes waiting on the lock go first.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How often ended tasks' provider tokens are looked for (tasks other replicas ended, and
/// revocations to retry); a task ending here wakes the sweep at once.
const PROVIDER_REVOCATION_SWEEP: std::time::Duration = std::time::Duration::from_secs(2);

/// Tells the provider-token revocation sweep of every task that ends on this replica.
async fn wake_on_task_end(state: AppState) {
    let mut events = state.events.subscribe();
    loop {
        match events.recv().await {
            Ok(event) if event.kind.starts_with("task.") && event.kind != "task.activated" => {
                state.connections.task_ended()
            }
            Ok(_) => {}
            // Missed some: sweep anyway.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                state.connections.task_ended()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Ends expired and idle tasks, every `sweep_interval`; prunes revoked ids every
/// [`PRUNE_EVERY`].
async fn sweep_forever(state: AppState) {
    let mut ticker = tokio::time::interval(state.config.sweep_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    let mut prune_passes: u64 = 0;
    loop {
        ticker.tick().await;
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            match state.oauth.prune_clients().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(clients = n, "forgot client registrations never used"),
                Err(err) => tracing::warn!(error = %err, "pruning clients failed; will retry"),
            }
            match prune_revocations(&state).await {
                Ok((0, 0)) => {}
                Ok((feed, memory)) => {
                    tracing::info!(feed, memory, "forgot revoked ids past their windows")
                }
                Err(err) => tracing::warn!(error = %err, "pruning revoked ids failed; will retry"),
            }
            // Retention scans the audit table: once an hour is plenty (from the first pass).
            if prune_passes.is_multiple_of(HISTORY_PRUNE_EVERY_PASSES) {
                match prune_history(&state).await {
                    Ok(pruned) if pruned.through_seq.is_none() => {}
                    Ok(pruned) => tracing::info!(
                        rows = pruned.rows,
                        tasks = pruned.tasks,
                        through_seq = pruned.through_seq,
                        "pruned ended tasks past their retention"
                    ),
                    Err(err) => tracing::warn!(error = %err, "pruning history failed; will retry"),
                }
            }
            prune_passes += 1;
        }
        match state.tasks.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "swept expired tasks"),
            Err(err) => tracing::warn!(error = %err, "sweep failed; will retry"),
        }
        match state.approvals.expire_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired undecided approvals"),
            Err(err) => tracing::warn!(error = %err, "approval sweep failed; will retry"),
        }
        match state.oauth.expire_unredeemed().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(ended = n, "ended tasks whose OAuth code was never redeemed"),
            Err(err) => tracing::warn!(error = %err, "OAuth code sweep failed; will retry"),
        }
    }
}
