//! The `apalis` engine (apalis 1.0, apalis-cron, apalis-postgres).
//!
//! Memory: one worker per job per node, each with its own apalis-cron
//! `CronScheduler` backend; the job receives the `Tick` it runs for. Nodes
//! share nothing, so K nodes run each occurrence K times.
//!
//! PostgreSQL: every node runs, per job, an apalis-cron `CronScheduler`
//! stream that pushes each tick into one apalis-postgres queue (fresh name
//! per run) through a pool of 48 connections shared by the nodes, and one
//! worker that consumes the queue through a pool of 16 of its own, fetching
//! up to 100 tasks every 50 ms. Each task carries the idempotency key
//! `job:tick`, unique in apalis-postgres, so the K pushes of one
//! occurrence yield one task: the K − 1 refused pushes are counted in
//! `push_refused`, any other push failure in `push_errors`.
//!
//! Choices made after trying the alternatives at 1000 jobs: with
//! LISTEN/NOTIFY wake-up (`with_pubsub`) the workers stopped fetching after
//! a second or two, no error surfaced, tasks stayed `Pending`; the same
//! happened with a worker pool of 4, or with the worker on the producers'
//! pool (its fetches queue behind thousands of pushes). The default batch
//! of 10 caps a worker at 200 tasks a second at this interval.
//!
//! Where the time goes on PostgreSQL: each push is its own transaction,
//! and apalis-postgres's insert trigger sends a NOTIFY with it. PostgreSQL
//! serialises the commits of notifying transactions on one lock, so pushes
//! commit one WAL flush at a time: at 1000 pushes a second most of the 48
//! connections sat in `COMMIT` waiting on that lock (`pg_stat_activity`:
//! wait event `Lock`/`object`), and the worker's fetches and acknowledgements
//! wait in the same line; in some runs no task completed within the window.
//!
//! An apalis-cron stream polled after its next tick has passed fails on
//! every poll from then on (it keeps the past tick). A producer's push is
//! one transaction, awaited before the stream is polled again, so a push
//! slower than a second trips this: the producer counts it in
//! `cron_errors` and starts a new stream, whose first tick is the next one
//! after now; the ticks in between are never pushed. In the memory form
//! the same error ends the worker's `run` (`worker_exits`), and that job
//! fires no more.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use apalis::prelude::{BackendExt, BoxDynError, Data, TaskBuilder, TaskSink, WorkerBuilder};
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

/// What went wrong along the way, reported in the JSON line.
#[derive(Debug, Default)]
struct Trouble {
    /// Pushes refused by the idempotency key (PostgreSQL, K > 1).
    refused: Arc<AtomicU64>,
    /// Other push failures.
    push_errors: Arc<AtomicU64>,
    /// Errors from an apalis-cron stream (a tick already past when the
    /// stream was polled again); the producer then starts a new stream.
    cron_errors: Arc<AtomicU64>,
    /// Workers whose `run` returned before the harness stopped them.
    worker_exits: Arc<AtomicU64>,
}

/// One job's apalis-cron stream, pushing every tick into the queue.
async fn produce(
    job: u32,
    schedule: cron::Schedule,
    pool: PgPool,
    config: Config,
    trouble: Arc<Trouble>,
) {
    let storage = || PostgresStorage::<JobTick>::new(&pool).with_config(config.clone());
    let mut sink = storage();
    let stream = || Box::pin(CronScheduler::new(schedule.clone()).into_stream());
    let mut ticks = stream();
    while let Some(tick) = ticks.next().await {
        let Ok(tick) = tick else {
            // apalis-cron keeps a past tick and fails on every poll after
            // it: a new stream starts from the next tick after now.
            trouble.cron_errors.fetch_add(1, Ordering::Relaxed);
            ticks = stream();
            continue;
        };
        let at = tick.get_timestamp();
        let task = TaskBuilder::new(JobTick { job, at })
            .idempotency_key(format!("{job}:{at}"))
            .build();
        if let Err(e) = sink.push_task(task).await {
            if format!("{e:?}").contains("duplicate key") {
                trouble.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                trouble.push_errors.fetch_add(1, Ordering::Relaxed);
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
    let trouble = Arc::new(Trouble::default());
    // A worker's `run` returns only if the worker stopped by itself (the
    // harness aborts the rest): count those.
    let spawn_worker = |run: Pin<Box<dyn Future<Output = ()> + Send>>| {
        let exits = trouble.worker_exits.clone();
        tokio::spawn(async move {
            run.await;
            exits.fetch_add(1, Ordering::Relaxed);
        })
    };
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
                    handles.push(spawn_worker(Box::pin(async move {
                        let _ = worker.run().await;
                    })));
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
            for node in 0..args.nodes {
                // The worker gets a pool of its own: behind thousands of
                // pushes waiting for the shared pool, its fetches would
                // starve.
                let worker_pool = sqlx09::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .connect(url)
                    .await
                    .context("apalis: connecting to PostgreSQL")?;
                let backend = PostgresStorage::<JobTick>::new(&worker_pool)
                    .with_config(config.clone())
                    .poll_with_interval(std::time::Duration::from_millis(50));
                let worker = WorkerBuilder::new(format!("loadgen-{run}-node{node}"))
                    .backend(backend)
                    .data(ledger.clone())
                    .build(on_task);
                handles.push(spawn_worker(Box::pin(async move {
                    let _ = worker.run().await;
                })));
                for job in 0..args.tasks as u32 {
                    handles.push(tokio::spawn(produce(
                        job,
                        schedule.clone(),
                        pool.clone(),
                        config.clone(),
                        trouble.clone(),
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
        counters: vec![
            ("push_refused", trouble.refused.clone()),
            ("push_errors", trouble.push_errors.clone()),
            ("cron_errors", trouble.cron_errors.clone()),
            ("worker_exits", trouble.worker_exits.clone()),
        ],
    })
}
