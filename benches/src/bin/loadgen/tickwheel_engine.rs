//! The `tickwheel` engine: K [`Scheduler`]s on one [`Store`], audited from
//! the store's execution history (each execution's `scheduled_for` is the
//! occurrence; its intended instant adds the task's jitter).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use tickwheel::store::ExecutionQuery;
use tickwheel::{MemoryStore, NewTask, Policy, Scheduler, Store, TaskId, executor_fn};

use crate::{Args, Audit, Counts, Sample, Started, StoreKind};

/// What the audit needs to read tickwheel's history.
pub(crate) struct History {
    store: Arc<dyn Store>,
    /// The tasks' ids in task order (`load 0`, `load 1`, …), one vector per creating worker
    /// (not joined: that would add a copy of them to the peak RSS).
    ids: Vec<Vec<TaskId>>,
    policy: Policy,
    /// PostgreSQL: the run's schema, dropped after the audit.
    schema: Option<(sqlx::PgPool, String)>,
}

/// Opens the store named by `--store`. Every backend keeps enough history
/// per task to audit the whole window (one execution per second per task).
async fn make_store(
    kind: &StoreKind,
    seconds: u64,
) -> Result<(Arc<dyn Store>, Option<(sqlx::PgPool, String)>)> {
    let retention = seconds as usize + 10;
    match kind {
        StoreKind::Memory => Ok((Arc::new(MemoryStore::with_retention(retention)), None)),
        StoreKind::Postgres(url) => {
            // A fresh schema per run, so a run never sees an earlier run's tasks.
            let schema = format!("loadgen_{}", uuid::Uuid::now_v7().simple());
            let store = tickwheel_postgres::PgStore::builder()
                .schema(schema.clone())
                .retention(retention)
                .max_connections(48)
                .connect(url)
                .await?;
            let pool = store.pool().clone();
            Ok((Arc::new(store), Some((pool, schema))))
        }
        StoreKind::Redis(urls) => {
            // A fresh key prefix per run; several comma-separated node URLs
            // mean a Redis Cluster.
            let builder = tickwheel_redis::RedisStore::builder()
                .prefix(format!(
                    "loadgen-{}-{}",
                    std::process::id(),
                    Utc::now().timestamp_micros()
                ))
                .retention(retention);
            let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
            let store = if urls.len() > 1 {
                builder.connect_cluster(&urls).await?
            } else {
                builder.connect(urls[0]).await?
            };
            Ok((Arc::new(store), None))
        }
    }
}

/// Creates the tasks and starts the schedulers.
pub(crate) async fn start(args: &Args, created: &Arc<AtomicUsize>) -> Result<Started> {
    let (store, schema) = make_store(&args.store_kind, args.seconds).await?;
    let policy = Policy {
        jitter_ms: args.jitter_ms,
        ..Policy::default()
    };
    let now = Utc::now();
    // Only ids are kept here, so the memory figure is the store's and the
    // engine's: every task shares the schedule and the policy. Created by
    // `--create-workers` tasks at once, each a contiguous range, so ids stay
    // in task order.
    let workers = args.create_workers.clamp(1, args.tasks.max(1));
    let per = args.tasks.div_ceil(workers);
    let mut creators = Vec::with_capacity(workers);
    for w in 0..workers {
        let (store, created, schedule) = (store.clone(), created.clone(), args.schedule.clone());
        let range = (w * per)..((w + 1) * per).min(args.tasks);
        creators.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(range.len());
            for i in range {
                let mut input = NewTask::cron(format!("load {i}"), "noop", schedule.clone());
                input.policy = Some(policy);
                let task = input.validate("load", now)?;
                ids.push(store.create_task(task).await?.id);
                created.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(workers);
    for creator in creators {
        ids.push(creator.await??);
    }
    let schedulers: Vec<Scheduler> = (0..args.nodes)
        .map(|i| {
            let mut builder =
                Scheduler::builder(store.clone(), executor_fn(|_run| async { Ok(None) }))
                    .node_id(format!("node-{i}"))
                    .max_concurrent(args.max_concurrent.unwrap_or(1024));
            if let Some(ms) = args.claim_ahead_ms {
                builder = builder.claim_ahead(Duration::from_millis(ms));
            }
            builder.start()
        })
        .collect();
    // The schedulers' own counters, summed over the nodes: with affinity a
    // node leaves the others' occurrences to them (`shadowed`) and loses
    // next to no claims.
    let won = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let shadowed = Arc::new(AtomicU64::new(0));
    let counters = vec![
        ("claims_won", won.clone()),
        ("claims_lost", lost.clone()),
        ("shadowed", shadowed.clone()),
    ];
    Ok(Started {
        audit: Audit::Store(History {
            store,
            ids,
            policy,
            schema,
        }),
        stop: Box::pin(async move {
            for s in schedulers {
                let stats = s.stats();
                won.fetch_add(stats.claims_won, Ordering::Relaxed);
                lost.fetch_add(stats.claims_lost, Ordering::Relaxed);
                shadowed.fetch_add(stats.shadowed, Ordering::Relaxed);
                s.shutdown(Duration::from_secs(5)).await;
            }
        }),
        counters,
    })
}

impl History {
    /// Drops what the run left in the store (PostgreSQL: its schema), so
    /// runs against one server do not pile up tables (ten runs of 10,000
    /// tasks left 2.2 GB). Redis keys (under the run's prefix) are left.
    pub(crate) async fn cleanup(&self) -> Result<()> {
        if let Some((pool, schema)) = &self.schema {
            sqlx::query(&format!(r#"DROP SCHEMA "{schema}" CASCADE"#))
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Counts, for every task, its executions whose occurrence is in
    /// `[start, end)`.
    pub(crate) async fn audit(
        &self,
        due: &[DateTime<Utc>],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Counts> {
        let mut counts = Counts::default();
        for &id in self.ids.iter().flatten() {
            let history = self
                .store
                .executions("load", id, ExecutionQuery::newest(usize::MAX))
                .await?
                .executions;
            let runs = history
                .iter()
                .filter(|e| e.scheduled_for >= start && e.scheduled_for < end)
                .map(|e| {
                    let intended = e.scheduled_for + self.policy.jitter(id, e.scheduled_for);
                    let late_ms = (e.started_at - intended)
                        .num_microseconds()
                        .unwrap_or(i64::MAX) as f64
                        / 1000.0;
                    // Counted by occurrence (before jitter), as before.
                    (e.scheduled_for, Sample { intended, late_ms })
                })
                .collect::<Vec<_>>();
            counts.add_job(due, runs);
        }
        Ok(counts)
    }
}
