//! PostgreSQL baselines for the load harness (benches/results-postgres.md).
//!
//! ```text
//! cargo run --release -p tickwheel-benches --bin pg_raw -- claims \
//!     --store postgres://… [--tasks N] [--seconds S] [--connections C]
//! cargo run --release -p tickwheel-benches --bin pg_raw -- bulk \
//!     --store postgres://… [--tasks N]
//! ```
//!
//! `claims`: the raw limit loadgen is compared with. N tasks in a fresh
//! `PgStore` schema, then N × S claims done directly with sqlx, no scheduler:
//! each one a single-row `UPDATE tasks SET next_run = … WHERE id = … AND
//! next_run = … RETURNING id` in its own transaction (autocommit, so one
//! commit per claim, as a claim that starts a run must be durable), from C
//! connections at once (default 48, loadgen's pool). Prints claims per second.
//!
//! `bulk`: N tasks (default 1,000,000) due far in the future inserted with
//! `PgStore::create_tasks`; prints the time, then the plan of the engine's
//! due scan over the next 5 s (what an idle node asks every refill) with
//! `EXPLAIN (ANALYZE, BUFFERS)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{TimeDelta, Utc};
use tickwheel::{NewTask, Store};
use tickwheel_postgres::PgStore;

#[derive(Debug)]
struct Args {
    mode: String,
    store: String,
    tasks: usize,
    seconds: usize,
    connections: usize,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().context("expected `claims` or `bulk`")?;
    let mut args = Args {
        tasks: if mode == "bulk" { 1_000_000 } else { 10_000 },
        mode,
        store: String::new(),
        seconds: 20,
        connections: 48,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => args.store = value()?,
            "--tasks" => args.tasks = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--connections" => args.connections = value()?.parse()?,
            other => bail!("unknown option {other:?}"),
        }
    }
    if args.store.is_empty() {
        bail!("--store postgres://… is required");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    match args.mode.as_str() {
        "claims" => claims(&args).await,
        "bulk" => bulk(&args).await,
        other => bail!("unknown mode {other:?}: expected `claims` or `bulk`"),
    }
}

async fn fresh_store(args: &Args) -> Result<PgStore> {
    Ok(PgStore::builder()
        .schema(format!("pgraw_{}", uuid::Uuid::now_v7().simple()))
        .max_connections(u32::try_from(args.connections.max(2))?)
        .connect(&args.store)
        .await?)
}

async fn claims(args: &Args) -> Result<()> {
    let store = fresh_store(args).await?;
    let now = Utc::now();
    let tasks = (0..args.tasks)
        .map(|i| NewTask::cron(format!("raw {i}"), "noop", "* * * * * *").validate("raw", now))
        .collect::<Result<Vec<_>, _>>()?;
    let tasks = store.create_tasks(tasks).await?;
    let total = args.tasks * args.seconds;
    let sql = format!(
        "UPDATE \"{}\".tasks SET next_run = $3 WHERE id = $1 AND next_run = $2 RETURNING id",
        store.schema()
    );
    // Claim i takes task i % N at its (i / N)-th occurrence; a task's
    // occurrences are claimed in order by one worker, like a winning node.
    let work: Arc<Vec<(uuid::Uuid, chrono::DateTime<Utc>)>> = Arc::new(
        tasks
            .iter()
            .map(|t| (t.id.as_uuid(), t.next_run.expect("cron task")))
            .collect(),
    );
    let won = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|w| {
            let (pool, sql, work, won) =
                (store.pool().clone(), sql.clone(), work.clone(), won.clone());
            let (n, connections, seconds) = (args.tasks, args.connections, args.seconds);
            tokio::spawn(async move {
                // Worker w owns tasks w, w + C, w + 2C, …
                for round in 0..seconds {
                    for task in (w..n).step_by(connections) {
                        let (id, first) = work[task];
                        let at = first + TimeDelta::seconds(round as i64);
                        let row: Option<uuid::Uuid> = sqlx::query_scalar(&sql)
                            .bind(id)
                            .bind(at)
                            .bind(at + TimeDelta::seconds(1))
                            .fetch_optional(&pool)
                            .await?;
                        if row.is_some() {
                            won.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let won = won.load(Ordering::Relaxed);
    if won != total {
        bail!("{won} of {total} raw claims won");
    }
    println!(
        "{{\"raw_claims\":{total},\"connections\":{},\"seconds\":{secs:.2},\"claims_per_s\":{:.0}}}",
        args.connections,
        total as f64 / secs
    );
    Ok(())
}

async fn bulk(args: &Args) -> Result<()> {
    let store = fresh_store(args).await?;
    let now = Utc::now();
    // Due far in the future: midnight on 1 January.
    let tasks = (0..args.tasks)
        .map(|i| NewTask::cron(format!("bulk {i}"), "noop", "0 0 1 1 *").validate("bulk", now))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    store.create_tasks(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"tasks\":{},\"insert_s\":{secs:.2},\"tasks_per_s\":{:.0}}}",
        args.tasks,
        args.tasks as f64 / secs
    );
    sqlx::query(&format!("ANALYZE \"{}\".tasks", store.schema()))
        .execute(store.pool())
        .await?;
    // What an idle node asks on every refill: the next 5 s.
    let horizon = Utc::now() + TimeDelta::seconds(5);
    // The first call on a connection also prepares the statement.
    for round in ["first", "second"] {
        let scan = Instant::now();
        let due = store.due_tasks(None, horizon, 2000).await?;
        let scan_ms = scan.elapsed().as_secs_f64() * 1000.0;
        println!(
            "due scan of the next 5 s ({round} call): {} tasks in {scan_ms:.2} ms",
            due.len()
        );
    }
    // The store's own connection settings apply (generic plans).
    let mut conn = store.pool().acquire().await?;
    let explain = format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM \"{}\".tasks \
         WHERE enabled AND next_run IS NOT NULL AND next_run <= $1 ORDER BY next_run, id LIMIT $2",
        store.schema()
    );
    let plan: Vec<String> = sqlx::query_scalar(&explain)
        .bind(horizon)
        .bind(2000_i64)
        .fetch_all(&mut *conn)
        .await?;
    println!("{}", plan.join("\n"));
    Ok(())
}
