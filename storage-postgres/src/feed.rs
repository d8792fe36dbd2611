//! The change feed: `NOTIFY` payloads, and the listener task that turns them
//! into [`Change`]s for subscribers.
//!
//! One listener connection per store, opened by the first subscription. When
//! it drops, the task reconnects with backoff (100 ms doubling to 5 s) and,
//! once listening again, sends [`Change::Resync`]: whatever was written while
//! it was away is found by the engines' full rescan. The task ends when the
//! store (every clone) is dropped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use tickwheel::store::{Change, ChangeFeed};
use tickwheel::{Error, TaskId};
use tokio::sync::{Mutex, broadcast, watch};

use crate::error::db_err;

/// Subscribers may lag this many changes before they get a `Resync`.
const CAPACITY: usize = 16_384;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A change as sent through `NOTIFY`. Its only variable-length field is the
/// tenant (at most 200 bytes), so a payload stays far below 8000 bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Payload {
    U {
        t: String,
        id: TaskId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<DateTime<Utc>>,
        v: u64,
    },
    D {
        id: TaskId,
    },
    R,
}

pub(crate) fn upserted(
    tenant: &str,
    id: TaskId,
    next_run: Option<DateTime<Utc>>,
    version: u64,
) -> String {
    payload(&Payload::U {
        t: tenant.to_owned(),
        id,
        n: next_run,
        v: version,
    })
}

pub(crate) fn deleted(id: TaskId) -> String {
    payload(&Payload::D { id })
}

pub(crate) fn resync() -> String {
    payload(&Payload::R)
}

fn payload(p: &Payload) -> String {
    // Serialising these plain structs cannot fail.
    serde_json::to_string(p).unwrap_or_default()
}

fn parse(payload: &str) -> Change {
    match serde_json::from_str::<Payload>(payload) {
        Ok(Payload::U { t, id, n, v }) => Change::Upserted {
            tenant: t,
            task_id: id,
            next_run: n,
            version: v,
        },
        Ok(Payload::D { id }) => Change::Deleted { task_id: id },
        // A resync, or a payload from a newer version: rescan to be safe.
        Ok(Payload::R) | Err(_) => Change::Resync,
    }
}

/// The store's side of the feed.
#[derive(Debug)]
pub(crate) struct Feed {
    channel: String,
    sender: Mutex<Option<broadcast::Sender<Change>>>,
    /// Dropped with the store, which ends the listener task.
    stop: watch::Sender<()>,
}

impl Feed {
    pub(crate) fn new(channel: String) -> Self {
        Self {
            channel,
            sender: Mutex::new(None),
            stop: watch::channel(()).0,
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// A subscription; the first one opens the listener (and fails with
    /// `Unavailable` if it cannot), so a feed handed out is listening.
    pub(crate) async fn subscribe(&self, pool: &PgPool) -> Result<ChangeFeed, Error> {
        let mut sender = self.sender.lock().await;
        if let Some(tx) = sender.as_ref() {
            return Ok(ChangeFeed::new(tx.subscribe()));
        }
        let listener = listen(pool, &self.channel).await.map_err(db_err)?;
        let (tx, rx) = broadcast::channel(CAPACITY);
        tokio::spawn(run(
            listener,
            pool.clone(),
            self.channel.clone(),
            tx.clone(),
            self.stop.subscribe(),
        ));
        *sender = Some(tx);
        Ok(ChangeFeed::new(rx))
    }
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Do not let the pool's close end the feed silently: a closed pool is
    // reported as a lost connection and retried like one.
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

async fn run(
    mut listener: PgListener,
    pool: PgPool,
    channel: String,
    tx: broadcast::Sender<Change>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        let received = tokio::select! {
            r = listener.try_recv() => r,
            _ = stop.changed() => return,
        };
        match received {
            Ok(Some(n)) => {
                // No subscriber right now is fine.
                let _ = tx.send(parse(n.payload()));
            }
            Ok(None) | Err(_) => {
                tracing::warn!(%channel, "change feed connection lost; reconnecting");
                drop(listener);
                let mut backoff = BACKOFF_MIN;
                listener = loop {
                    if pool.is_closed() {
                        return;
                    }
                    let attempt = tokio::select! {
                        r = listen(&pool, &channel) => r,
                        _ = stop.changed() => return,
                    };
                    match attempt {
                        Ok(l) => break l,
                        Err(err) => {
                            tracing::warn!(%err, backoff_ms = backoff.as_millis() as u64, "change feed reconnect failed");
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                _ = stop.changed() => return,
                            }
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                    }
                };
                let _ = tx.send(Change::Resync);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_stay_small() {
        let id = TaskId::new();
        let at: DateTime<Utc> = "2030-01-01T00:00:00.123456Z".parse().unwrap();
        let tenant = "t\"\\|\n{}".repeat(25);
        let p = upserted(&tenant, id, Some(at), 7);
        assert!(p.len() < 8000, "len={}", p.len());
        assert_eq!(
            parse(&p),
            Change::Upserted {
                tenant,
                task_id: id,
                next_run: Some(at),
                version: 7
            }
        );
        assert_eq!(parse(&deleted(id)), Change::Deleted { task_id: id });
        assert_eq!(parse(&resync()), Change::Resync);
        assert_eq!(parse("garbage"), Change::Resync);
        let none = upserted("t", id, None, 1);
        assert!(matches!(
            parse(&none),
            Change::Upserted { next_run: None, .. }
        ));
    }
}
