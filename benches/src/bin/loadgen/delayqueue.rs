//! The `delayqueue` engine: the raw limit for firing. One tokio task owns a
//! bare [`DelayQueue`] holding each job's next occurrence; when an entry
//! expires it re-inserts the job at its following occurrence and spawns a
//! tokio task that records the run and runs the no-op job. No store, no
//! claim, one node.
//!
//! Deadlines are wall-clock instants mapped onto tokio's monotonic clock
//! once, at setup (`Instant` at setup + (occurrence − wall clock at setup));
//! over a run of a few seconds the two clocks do not drift measurably.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tickwheel::Schedule;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::time::DelayQueue;

use crate::ledger::Ledger;
use crate::{Args, Audit, Started};

/// Maps wall-clock instants onto tokio's clock.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    wall: DateTime<Utc>,
    tokio: Instant,
}

impl Anchor {
    fn now() -> Self {
        Self {
            wall: Utc::now(),
            tokio: Instant::now(),
        }
    }

    fn instant(&self, at: DateTime<Utc>) -> Instant {
        match (at - self.wall).to_std() {
            Ok(ahead) => self.tokio + ahead,
            Err(_) => self.tokio,
        }
    }
}

/// Fills the queue with every job's next occurrence and starts the task
/// that drains it.
pub(crate) async fn start(args: &Args, created: &Arc<AtomicUsize>) -> Result<Started> {
    let schedule = Schedule::parse(&args.schedule, "UTC")?;
    let ledger = Arc::new(Ledger::new());
    let anchor = Anchor::now();
    let mut queue: DelayQueue<(u32, DateTime<Utc>)> = DelayQueue::with_capacity(args.tasks);
    for job in 0..args.tasks as u32 {
        let due = schedule
            .next_after(Utc::now())
            .context("--schedule never fires again")?;
        queue.insert_at((job, due), anchor.instant(due));
        created.fetch_add(1, Ordering::Relaxed);
    }
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let runs = ledger.clone();
    let driver = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                expired = poll_fn(|cx| queue.poll_expired(cx)) => {
                    let Some(expired) = expired else { break };
                    let (job, due) = expired.into_inner();
                    if let Some(next) = schedule.next_after(due) {
                        queue.insert_at((job, next), anchor.instant(next));
                    }
                    let runs = runs.clone();
                    tokio::spawn(async move {
                        runs.record_now(job, due.timestamp());
                        noop().await;
                    });
                }
            }
        }
    });
    Ok(Started {
        audit: Audit::Ledger(ledger),
        stop: Box::pin(async move {
            let _ = stop_tx.send(());
            let _ = driver.await;
        }),
        counters: Vec::new(),
    })
}

/// The job body every engine runs: nothing.
pub(crate) async fn noop() {}
