//! Replica fan-out: every replica LISTENs on the schema's channel and applies what other
//! replicas commit — `task:<id>` (state, window), `rev` (new revocations), `keys`,
//! `pin:<tool>` — to its caches, and publishes `timeline:<id>,<id>…` (audit rows of those
//! tasks committed, by any replica, itself included) as `timeline.appended` events.
//!
//! Every [`HEARTBEAT`] a replica NOTIFYs a ping carrying its own id and must hear it
//! back ([`crate::replica::health`]); after any gap it catches up from the tables
//! (notifications sent while it was away are lost by PostgreSQL; the tables are the
//! truth).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::error::ApiError;
use crate::events::hub::Events;
use crate::ids::random_hex;
use crate::replica::health::FeedHealth;
use crate::replica::sealed_keys::MasterKey;
use crate::store::{PgStore, Store};
use crate::tasks::runtime::Tasks;
use crate::tokens::keys::RootKeys;
use crate::tokens::revocation::RevocationSet;
use crate::tokens::verify::TokenVerifier;
use crate::upstream::catalog::Catalog;

/// What a replica applies other replicas' changes to: its caches and its health.
#[derive(Clone)]
pub struct Feed {
    /// The shared database (its channel, its pool, its tables).
    pub store: PgStore,
    /// Live tasks (state, window).
    pub tasks: Arc<Tasks>,
    /// Discovered tools (released pins).
    pub catalog: Arc<Catalog>,
    /// Revoked ids.
    pub revoked: Arc<RevocationSet>,
    /// Root keys (rotations).
    pub keys: Arc<RootKeys>,
    /// Token verification, whose cache a rotation clears.
    pub verifier: Arc<TokenVerifier>,
    /// This replica's freshness.
    pub health: Arc<FeedHealth>,
    /// Opens the sealed root keys.
    pub master_key: Arc<MasterKey>,
    /// Where `timeline.appended` is published for every replica's audit rows.
    pub events: Events,
}

/// How often a replica pings itself through PostgreSQL.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// Starts the listener and the heartbeat of a replica.
/// `loaded_to` is the feed position already read into the revoked set at start.
pub fn start(feed: Feed, loaded_to: i64) {
    let store = &feed.store;
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
    tokio::spawn(listen(feed, pool, channel, replica, loaded_to));
}

async fn listen(feed: Feed, pool: sqlx::PgPool, channel: String, replica: String, loaded_to: i64) {
    let mut backoff = Duration::from_millis(100);
    let last_seq = Arc::new(AtomicI64::new(loaded_to));
    loop {
        feed.health.set_caught_up(false);
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
        if let Err(err) = catch_up(&feed, &last_seq).await {
            tracing::warn!(error = %err, "catching up from the tables failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        feed.health.set_caught_up(true);
        backoff = Duration::from_millis(100);
        tracing::info!("replica listener connected and caught up");
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    if payload.strip_prefix("ping:") == Some(replica.as_str()) {
                        feed.health.heard_own_ping();
                    } else if let Err(err) = apply(&feed, payload, &last_seq).await {
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
async fn apply(feed: &Feed, payload: &str, last_seq: &AtomicI64) -> Result<(), ApiError> {
    if payload == "rev" {
        return read_revocations(feed, last_seq).await;
    }
    if payload == "keys" {
        return reload_keys(feed).await;
    }
    if let Some(task_id) = payload.strip_prefix("task:") {
        if let Some(record) = feed
            .store
            .get_task(task_id)
            .await
            .map_err(ApiError::internal)?
        {
            feed.tasks.apply_external(&record).await;
        }
        return Ok(());
    }
    if let Some(tasks) = payload.strip_prefix("timeline:") {
        // Any replica's committed audit rows: approvers watching here see them live.
        for task_id in tasks.split(',').filter(|id| crate::ids::is_task_id(id)) {
            feed.events.publish_timeline(task_id);
        }
        return Ok(());
    }
    if let Some(agent) = payload.strip_prefix("agent:") {
        return feed.tasks.reload_agent(agent).await;
    }
    if let Some(tool) = payload.strip_prefix("pin:")
        && let Some(pin) = feed.store.get_pin(tool).await.map_err(ApiError::internal)?
        && pin.pending_hash.is_none()
    {
        feed.catalog.release(tool, &pin.hash);
    }
    Ok(())
}

async fn read_revocations(feed: &Feed, last_seq: &AtomicI64) -> Result<(), ApiError> {
    loop {
        let after = last_seq.load(Ordering::SeqCst);
        let page = feed
            .store
            .revocations_after(after, 1000)
            .await
            .map_err(ApiError::internal)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        feed.revoked.extend(&page);
        last_seq.fetch_max(last.seq, Ordering::SeqCst);
    }
}

async fn reload_keys(feed: &Feed) -> Result<(), ApiError> {
    match crate::replica::sealed_keys::load(feed.store.pool(), &feed.master_key).await {
        Ok(Some(keys)) => {
            feed.keys.replace(keys);
            feed.verifier.clear();
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(err) => Err(ApiError::internal(err)),
    }
}

/// After a gap: every revocation since the last one seen, every cached task's state,
/// and the keys, from the tables.
async fn catch_up(feed: &Feed, last_seq: &AtomicI64) -> Result<(), ApiError> {
    read_revocations(feed, last_seq).await?;
    feed.tasks.reload_all().await?;
    reload_keys(feed).await
}
