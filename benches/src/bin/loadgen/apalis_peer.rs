//! The `apalis` engine (apalis 1.0, apalis-cron, apalis-postgres).
//!
//! Memory: one worker per job per node, each with its own apalis-cron
//! `CronScheduler` backend; the job receives the `Tick` it runs for. Nodes
//! share nothing, so K nodes run each occurrence K times.
//!
//! PostgreSQL: every node runs, per job, an apalis-cron `CronScheduler`
//! stream that pushes each tick into one apalis-postgres queue (fresh name
//! per run), and one worker that consumes the queue (batch size 100,
//! LISTEN/NOTIFY wake-up). Each task carries the idempotency key
//! `job:tick`, unique in apalis-postgres, so the K pushes of one
//! occurrence yield one task: the K − 1 refused pushes are counted in
//! `push_refused`, any other push failure in `push_errors`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use apalis::prelude::{BoxDynError, Data, TaskBuilder, TaskSink, WorkerBuilder};
use apalis_cron::{CronScheduler, Tick};
use apalis_postgres::{Config, PgPool, PostgresStorage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::delayqueue::noop;
use crate::ledger::Ledger;
use crate::{Args, Audit, Started, StoreKind};

/// The task pushed into PostgreSQL: which job, and the tick it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobTick {
    job: u32,
    /// apalis-cron's tick: seconds since the epoch.
    at: u64,
}

/// Per-worker data of the memory form.
#[derive(Debug, Clone)]
struct JobCtx {
    job: u32,
    ledger: Arc<Ledger>,
}

async fn on_tick(tick: Tick, ctx: Data<JobCtx>) -> Result<(), BoxDynError> {
    ctx.ledger.record_now(ctx.job, tick.get_timestamp() as i64);
    noop().await;
    Ok(())
}

async fn on_task(task: JobTick, ledger: Data<Arc<Ledger>>) -> Result<(), BoxDynError> {
    ledger.record_now(task.job, task.at as i64);
    noop().await;
    Ok(())
}

/// Push outcomes of the PostgreSQL form.
#[derive(Debug, Default)]
struct PushCounts {
    refused: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

/// One job's apalis-cron stream, pushing every tick into the queue.
async fn produce(
    job: u32,
    schedule: cron::Schedule,
    pool: PgPool,
    config: Config,
    counts: Arc<PushCounts>,
) {
    let storage = || PostgresStorage::<JobTick>::new(&pool).with_config(config.clone());
    let mut sink = storage();
    let mut ticks = Box::pin(CronScheduler::new(schedule).into_stream());
    while let Some(tick) = ticks.next().await {
        let Ok(tick) = tick else { continue };
        let at = tick.get_timestamp();
        let task = TaskBuilder::new(JobTick { job, at })
            .idempotency_key(format!("{job}:{at}"))
            .build();
        if let Err(e) = sink.push_task(task).await {
            if format!("{e:?}").contains("duplicate key") {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
            // A failed batch may stay buffered in the sink: start afresh.
            sink = storage();
        }
    }
}

/// Starts every node's cron streams and workers.
pub(crate) async fn start(args: &Args, created: &Arc<AtomicUsize>) -> Result<Started> {
    let schedule = cron::Schedule::from_str(&args.schedule)
        .with_context(|| format!("--schedule {:?} (apalis-cron)", args.schedule))?;
    let ledger = Arc::new(Ledger::new());
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    let mut counters = Vec::new();
    match &args.store_kind {
        StoreKind::Memory => {
            for node in 0..args.nodes {
                for job in 0..args.tasks as u32 {
                    let worker = WorkerBuilder::new(format!("node{node}-job{job}"))
                        .backend(CronScheduler::new(schedule.clone()))
                        .data(JobCtx {
                            job,
                            ledger: ledger.clone(),
                        })
                        .build(on_tick);
                    handles.push(tokio::spawn(async move {
                        let _ = worker.run().await;
                    }));
                    created.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        StoreKind::Postgres(url) => {
            let pool = sqlx09::postgres::PgPoolOptions::new()
                .max_connections(48)
                .connect(url)
                .await
                .context("apalis: connecting to PostgreSQL")?;
            PostgresStorage::<()>::setup(&pool)
                .await
                .context("apalis: migrating")?;
            let run = uuid::Uuid::now_v7().simple();
            let config = Config::default()
                .queue(format!("loadgen-{run}"))
                .batch_size(100);
            let counts = Arc::new(PushCounts::default());
            counters.push(("push_refused", counts.refused.clone()));
            counters.push(("push_errors", counts.errors.clone()));
            for node in 0..args.nodes {
                let backend = PostgresStorage::<JobTick>::new(&pool)
                    .with_config(config.clone())
                    .with_pubsub();
                let worker = WorkerBuilder::new(format!("loadgen-{run}-node{node}"))
                    .backend(backend)
                    .data(ledger.clone())
                    .build(on_task);
                handles.push(tokio::spawn(async move {
                    let _ = worker.run().await;
                }));
                for job in 0..args.tasks as u32 {
                    handles.push(tokio::spawn(produce(
                        job,
                        schedule.clone(),
                        pool.clone(),
                        config.clone(),
                        counts.clone(),
                    )));
                    created.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        StoreKind::Redis(_) => unreachable!("refused by parse_args"),
    }
    Ok(Started {
        audit: Audit::Ledger(ledger),
        stop: Box::pin(async move {
            for handle in &handles {
                handle.abort();
            }
        }),
        counters,
    })
}
