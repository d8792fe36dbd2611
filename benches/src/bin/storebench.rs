//! The store's cost per fire, without an engine: claim a batch of due
//! occurrences, finish every run it started, repeat.
//!
//! ```text
//! cargo run --release -p tickwheel-benches --bin storebench -- \
//!     --store memory|postgres://…|redis://…[,redis://…] \
//!     [--tasks N] [--seconds S] [--batch B] [--workers W] [--retention R]
//! ```
//!
//! N tasks (default 10,000) firing every second are created in a fresh
//! schema or key prefix. W workers (default 3, like loadgen's nodes) each own
//! every W-th task and loop for S seconds (default 10): one
//! [`Store::claim`] of B scheduled occurrences (default 32), each starting
//! a run, then the B [`Store::finish`]es at once, as the engine issues them.
//! Nothing is lost to contention: a worker is the only claimer of its tasks,
//! so every claim must win. `--retention R` sets the executions kept per
//! task (default the stores' 1000): with few tasks and a small R every
//! history reaches its limit within seconds, so the run measures the steady
//! state of production, where every claim trims one.
//!
//! This is the figure the engine's store path cannot beat (its batches are
//! whatever is due when the previous claim returns), used to compare store
//! changes. It prints one JSON line: the schema or key prefix it used (left
//! in place), fires per second, and the claim and finish latencies (per
//! call).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, TimeDelta, Utc};
use tickwheel::model::{Execution, ExecutionStatus, Trigger};
use tickwheel::store::{Claim, ClaimKind, ClaimOutcome, Finish};
use tickwheel::{MemoryStore, NewTask, Store, Task};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug)]
struct Args {
    store: String,
    tasks: usize,
    seconds: u64,
    batch: usize,
    workers: usize,
    retention: Option<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        store: "memory".into(),
        tasks: 10_000,
        seconds: 10,
        batch: 32,
        workers: 3,
        retention: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => args.store = value()?,
            "--tasks" => args.tasks = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--workers" => args.workers = value()?.parse()?,
            "--retention" => args.retention = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!(
                    "storebench --store memory|postgres://…|redis://…[,redis://…] \
                     [--tasks N] [--seconds S] [--batch B] [--workers W] [--retention R]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (try --help)"),
        }
    }
    if args.batch == 0 || args.workers == 0 || args.tasks < args.workers {
        bail!("--batch and --workers must be at least 1, and --tasks at least --workers");
    }
    Ok(args)
}

/// The store for `url`, in a fresh schema or key prefix `tag`.
async fn open(url: &str, tag: &str, retention: Option<usize>) -> Result<Arc<dyn Store>> {
    Ok(if url == "memory" {
        Arc::new(retention.map_or_else(MemoryStore::new, MemoryStore::with_retention))
    } else if url.starts_with("postgres") {
        let mut builder = tickwheel_postgres::PgStore::builder()
            .schema(tag)
            .max_connections(48);
        if let Some(r) = retention {
            builder = builder.retention(r);
        }
        Arc::new(builder.connect(url).await?)
    } else if url.starts_with("redis") {
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let mut builder = tickwheel_redis::RedisStore::builder().prefix(tag);
        if let Some(r) = retention {
            builder = builder.retention(r);
        }
        Arc::new(if urls.len() > 1 {
            builder.connect_cluster(&urls).await?
        } else {
            builder.connect(urls[0]).await?
        })
    } else {
        bail!("--store must be memory, postgres://… or redis://…")
    })
}

/// Latencies of one kind of call, in microseconds.
#[derive(Default)]
struct Timings(Vec<u64>);

impl Timings {
    fn add(&mut self, since: Instant) {
        self.0.push(since.elapsed().as_micros() as u64);
    }

    fn json(mut self) -> String {
        self.0.sort_unstable();
        let at = |q: f64| {
            self.0
                .get(((self.0.len() as f64 * q) as usize).min(self.0.len().saturating_sub(1)))
                .map_or(0.0, |&us| us as f64 / 1000.0)
        };
        format!(
            "{{\"calls\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
            self.0.len(),
            at(0.5),
            at(0.99)
        )
    }
}

/// One worker: claims and finishes its tasks' occurrences in order until
/// `until`. Returns the runs it started and finished, and its timings.
async fn worker(
    store: Arc<dyn Store>,
    mut tasks: Vec<Task>,
    batch: usize,
    until: Instant,
) -> Result<(u64, Timings, Timings)> {
    let node = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let (mut claims_t, mut finish_t) = (Timings::default(), Timings::default());
    let mut fired = 0u64;
    let mut next = 0usize;
    while Instant::now() < until {
        let now = Utc::now();
        let lease_until = now + TimeDelta::seconds(30);
        let mut claims = Vec::with_capacity(batch);
        let mut picked = Vec::with_capacity(batch);
        for _ in 0..batch {
            let i = next % tasks.len();
            next += 1;
            picked.push(i);
            let task = &tasks[i];
            let at: DateTime<Utc> = task.next_run.context("cron task")?;
            claims.push(Claim {
                task_id: task.id,
                kind: ClaimKind::Scheduled {
                    expected_next_run: at,
                    expected_version: task.version,
                    new_next_run: Some(at + TimeDelta::seconds(1)),
                },
                execution: Some(Execution::start(
                    task,
                    at,
                    1,
                    Trigger::Schedule,
                    &node,
                    now,
                    lease_until,
                )),
                missed: Vec::new(),
                node: node.clone(),
                now,
            });
        }
        let started = Instant::now();
        let outcomes = store.claim(claims).await?;
        claims_t.add(started);
        let mut finishes = Vec::with_capacity(batch);
        for (i, outcome) in picked.into_iter().zip(outcomes) {
            let ClaimOutcome::Started(execution) = outcome else {
                bail!("a claim without a rival did not start its run: {outcome:?}");
            };
            let task = &mut tasks[i];
            task.next_run = task.next_run.map(|at| at + TimeDelta::seconds(1));
            finishes.push(Finish {
                id: execution.id,
                fence: execution.fence,
                status: ExecutionStatus::Succeeded,
                started_at: None,
                finished_at: Utc::now(),
                error: None,
                output: None,
                retry_at: None,
                node: node.clone(),
                lease_until,
            });
        }
        let started = Instant::now();
        let results =
            futures::future::join_all(finishes.into_iter().map(|f| store.finish(f))).await;
        finish_t.add(started);
        for r in results {
            r?;
            fired += 1;
        }
    }
    Ok((fired, claims_t, finish_t))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let tag = format!("sb_{}", uuid::Uuid::now_v7().simple());
    let store = open(&args.store, &tag, args.retention).await?;
    let now = Utc::now();
    let inputs = (0..args.tasks)
        .map(|i| NewTask::cron(format!("bench {i}"), "noop", "* * * * * *").validate("bench", now))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tasks = Vec::with_capacity(args.tasks);
    for input in inputs {
        tasks.push(store.create_task(input).await?);
    }
    let mut shares: Vec<Vec<Task>> = vec![Vec::new(); args.workers];
    for (i, t) in tasks.into_iter().enumerate() {
        shares[i % args.workers].push(t);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(worker(store.clone(), share, args.batch, until)))
        .collect();
    let (mut fired, mut claims_t, mut finish_t) = (0, Timings::default(), Timings::default());
    for h in handles {
        let (n, c, f) = h.await??;
        fired += n;
        claims_t.0.extend(c.0);
        finish_t.0.extend(f.0);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"store\":{:?},\"prefix\":{tag:?},\"tasks\":{},\"workers\":{},\"batch\":{},\"seconds\":{secs:.2},\
         \"fired\":{fired},\"fires_per_s\":{:.0},\"claim\":{},\"finish\":{}}}",
        args.store.split("://").next().unwrap_or(""),
        args.tasks,
        args.workers,
        args.batch,
        fired as f64 / secs,
        claims_t.json(),
        finish_t.json()
    );
    Ok(())
}
