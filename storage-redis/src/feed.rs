//! The change feed: Redis pub/sub on one channel per key prefix.
//!
//! The create, update and delete scripts `PUBLISH` their change in the same
//! atomic step as the write, so a subscriber never sees a change before it
//! is readable. One background task per store holds a dedicated pub/sub
//! connection (to any node: in a cluster, `PUBLISH` reaches every node),
//! fans messages out to the store's subscribers, checks the connection with
//! a `PING` every few seconds, and after a lost connection resubscribes and
//! sends [`Change::Resync`], because messages published meanwhile are gone.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tickwheel::TaskId;
use tickwheel::store::Change;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// How often the idle pub/sub connection is checked.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long connecting, subscribing or a ping may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A change as published.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k")]
pub(crate) enum Message {
    /// [`Change::Upserted`]; `nr` in microseconds.
    #[serde(rename = "u")]
    Upserted {
        t: String,
        id: TaskId,
        nr: Option<i64>,
        v: u64,
    },
    /// [`Change::Deleted`].
    #[serde(rename = "d")]
    Deleted { id: TaskId },
}

impl Message {
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn decode(payload: &[u8]) -> Option<Change> {
        match serde_json::from_slice(payload) {
            Ok(Message::Upserted { t, id, nr, v }) => Some(Change::Upserted {
                tenant: t,
                task_id: id,
                next_run: nr.and_then(chrono::DateTime::from_timestamp_micros),
                version: v,
            }),
            Ok(Message::Deleted { id }) => Some(Change::Deleted { task_id: id }),
            Err(err) => {
                tracing::warn!(%err, "ignoring a malformed change message");
                None
            }
        }
    }
}

/// Runs the subscription until `stop`: `ready` counts the successful
/// (re)subscriptions.
pub(crate) async fn run(
    clients: Vec<redis::Client>,
    channel: String,
    tx: broadcast::Sender<Change>,
    ready: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut generation = 0u64;
    let mut backoff = Duration::from_millis(50);
    let mut next = 0usize;
    loop {
        let client = &clients[next % clients.len()];
        next += 1;
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let connected = tokio::select! {
            r = tokio::time::timeout(IO_TIMEOUT, connect) => r,
            _ = stop.cancelled() => return,
        };
        match connected {
            Ok(Ok(pubsub)) => {
                generation += 1;
                backoff = Duration::from_millis(50);
                if generation > 1 {
                    let _ = tx.send(Change::Resync);
                }
                let _ = ready.send(generation);
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                if let Some(change) = Message::decode(msg.get_payload_bytes()) {
                                    let _ = tx.send(change);
                                }
                            }
                            None => break,
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                        _ = stop.cancelled() => return,
                    }
                }
                tracing::warn!("change feed connection lost; resubscribing");
            }
            Ok(Err(err)) => tracing::warn!(%err, "change feed: subscribing failed; retrying"),
            Err(_) => tracing::warn!("change feed: subscribing timed out; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
