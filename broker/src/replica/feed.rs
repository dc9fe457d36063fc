//! Replica fan-out: every replica LISTENs on the schema's channel and applies what other
//! replicas commit — `task:<id>` (state, window), `rev` (new revocations), `keys`,
//! `pin:<tool>` — to its caches.
//!
//! Health is proven, not assumed: every [`HEARTBEAT`] a replica NOTIFYs a ping carrying
//! its own id and must hear it back on its listener. If it has heard nothing for longer
//! than the configured staleness (default 2 s) — listener cut, database down, anything —
//! [`FeedHealth::check`] fails and checked calls are refused (503) until the listener is
//! back *and* the replica has caught up from the tables (notifications sent while it was
//! away are lost by PostgreSQL; the tables are the truth).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::app::AppState;
use crate::clock::Clock;
use crate::error::ApiError;
use crate::ids::random_hex;
use crate::store::PgStore;

/// How often a replica pings itself through PostgreSQL.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// Whether this replica's view of the other replicas' changes is fresh.
pub struct FeedHealth {
    /// Replicated at all (PostgreSQL); a single SQLite broker is always fresh.
    replicated: bool,
    /// When this replica last heard its own ping after being caught up (ms).
    last_heard_ms: AtomicI64,
    /// Caught up since the listener last (re)connected.
    caught_up: AtomicBool,
    /// Longest tolerated silence.
    staleness_ms: i64,
    clock: Clock,
}

impl FeedHealth {
    /// Health of a single broker: always fresh.
    pub fn single(clock: Clock) -> Self {
        FeedHealth {
            replicated: false,
            last_heard_ms: AtomicI64::new(0),
            caught_up: AtomicBool::new(true),
            staleness_ms: 0,
            clock,
        }
    }

    /// Health of a replica; fresh for one staleness window from now (startup read the tables).
    pub fn replicated(clock: Clock, staleness: Duration) -> Self {
        let now = clock.now_ms();
        FeedHealth {
            replicated: true,
            last_heard_ms: AtomicI64::new(now),
            caught_up: AtomicBool::new(true),
            staleness_ms: staleness.as_millis() as i64,
            clock,
        }
    }

    /// Refuses (503) while the view may be stale.
    pub fn check(&self) -> Result<(), ApiError> {
        if !self.replicated {
            return Ok(());
        }
        let silence = self.clock.now_ms() - self.last_heard_ms.load(Ordering::SeqCst);
        if !self.caught_up.load(Ordering::SeqCst) || silence > self.staleness_ms {
            return Err(ApiError::Unavailable(format!(
                "this replica has not heard from the revocation channel for {silence} ms (limit {} ms); \
                 refusing checked calls until it has caught up",
                self.staleness_ms
            )));
        }
        Ok(())
    }
}

/// Starts the listener and the heartbeat of a replica.
/// `loaded_to` is the feed position already read into the revoked set at start.
pub fn start(state: AppState, store: PgStore, loaded_to: i64) {
    let replica = random_hex(8);
    let channel = store.channel().to_string();
    let pool = store.pool().clone();
    let ping = format!("ping:{replica}");
    let heartbeat_pool = pool.clone();
    let heartbeat_channel = channel.clone();
    tokio::spawn(async move {
        loop {
            let _ = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&heartbeat_channel)
                .bind(&ping)
                .execute(&heartbeat_pool)
                .await;
            tokio::time::sleep(HEARTBEAT).await;
        }
    });
    tokio::spawn(listen(state, pool, channel, replica, loaded_to));
}

async fn listen(
    state: AppState,
    pool: sqlx::PgPool,
    channel: String,
    replica: String,
    loaded_to: i64,
) {
    let mut backoff = Duration::from_millis(100);
    let last_seq = Arc::new(AtomicI64::new(loaded_to));
    loop {
        state.health.caught_up.store(false, Ordering::SeqCst);
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "replica listener cannot connect; failing closed until it does");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(err) = listener.listen(&channel).await {
            tracing::warn!(error = %err, "cannot LISTEN; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        // Listening first, then reading the tables: nothing committed in between is missed.
        if let Err(err) = catch_up(&state, &last_seq).await {
            tracing::warn!(error = %err, "catching up from the tables failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        state.health.caught_up.store(true, Ordering::SeqCst);
        backoff = Duration::from_millis(100);
        tracing::info!("replica listener connected and caught up");
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    if payload.strip_prefix("ping:") == Some(replica.as_str()) {
                        state
                            .health
                            .last_heard_ms
                            .store(state.clock.now_ms(), Ordering::SeqCst);
                    } else if let Err(err) = apply(&state, payload, &last_seq).await {
                        tracing::warn!(error = %err, "applying a replica notification failed; resynchronising");
                        break;
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        "replica listener lost its connection; failing closed until it is back"
                    );
                    break;
                }
            }
        }
    }
}

/// Applies one notification from another replica.
async fn apply(state: &AppState, payload: &str, last_seq: &AtomicI64) -> Result<(), ApiError> {
    if payload == "rev" {
        return read_revocations(state, last_seq).await;
    }
    if payload == "keys" {
        return reload_keys(state).await;
    }
    if let Some(task_id) = payload.strip_prefix("task:") {
        if let Some(record) = state
            .store
            .get_task(task_id)
            .await
            .map_err(ApiError::internal)?
        {
            state.tasks.apply_external(&record).await;
        }
        return Ok(());
    }
    if let Some(tool) = payload.strip_prefix("pin:")
        && let Some(pin) = state
            .store
            .get_pin(tool)
            .await
            .map_err(ApiError::internal)?
        && pin.pending_hash.is_none()
    {
        state.catalog.release(tool, &pin.hash);
    }
    Ok(())
}

async fn read_revocations(state: &AppState, last_seq: &AtomicI64) -> Result<(), ApiError> {
    loop {
        let after = last_seq.load(Ordering::SeqCst);
        let page = state
            .store
            .revocations_after(after, 1000)
            .await
            .map_err(ApiError::internal)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        state.revoked.extend(&page);
        last_seq.fetch_max(last.seq, Ordering::SeqCst);
    }
}

async fn reload_keys(state: &AppState) -> Result<(), ApiError> {
    let (Some(pg), Some(master)) = (state.pg.as_ref(), state.master_key.as_ref()) else {
        return Ok(());
    };
    let pool = pg.pool();
    match crate::replica::sealed_keys::load(pool, master).await {
        Ok(Some(keys)) => {
            state.keys.replace(keys);
            state.verifier.clear();
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(err) => Err(ApiError::internal(err)),
    }
}

/// After a gap: every revocation since the last one seen, every cached task's state,
/// and the keys, from the tables.
async fn catch_up(state: &AppState, last_seq: &AtomicI64) -> Result<(), ApiError> {
    read_revocations(state, last_seq).await?;
    state.tasks.reload_all().await?;
    reload_keys(state).await
}
