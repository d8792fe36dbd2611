//! Load harness: many tasks, several schedulers on one store, then an audit
//! of the store's history.
//!
//! ```text
//! cargo run --release -p tickwheel-benches --bin loadgen -- \
//!     --store memory --tasks N --seconds S [--nodes K] [--jitter-ms J] \
//!     [--schedule EXPR] [--max-concurrent C] [--timeline]
//! ```
//!
//! Creates N tasks (default schedule `* * * * * *`), starts K schedulers in
//! this process on one store with a no-op executor, lets them run for a
//! window of S whole seconds (after one second of warm-up), stops them, and
//! audits every occurrence due in the window:
//!
//! - `expected`: occurrences whose time (before jitter) is in the window;
//! - `fired`: those with at least one execution; `lost` = expected − fired;
//! - `duplicates`: occurrences started more than once;
//! - `lateness_ms`: execution start minus the occurrence's jittered instant;
//! - `rss_mb`: peak resident memory of the process; `cpu_s`: CPU time
//!   (user + system) spent during the window.
//!
//! The last line printed is one JSON object with those fields; earlier lines
//! report setup: creation time and the memory per task once all are loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// mimalloc, as a latency-sensitive service would use: with glibc's malloc
/// the p99 lateness of the 100k fires/s run varied from 3 to 95 ms between
/// runs (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use chrono::{DateTime, TimeDelta, Utc};
use tickwheel::store::ExecutionQuery;
use tickwheel::{MemoryStore, NewTask, Policy, Schedule, Scheduler, Store, TaskId, executor_fn};

#[derive(Debug)]
struct Args {
    store: String,
    tasks: usize,
    seconds: u64,
    nodes: usize,
    jitter_ms: u64,
    schedule: String,
    max_concurrent: usize,
    timeline: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        store: "memory".into(),
        tasks: 1000,
        seconds: 10,
        nodes: 1,
        jitter_ms: 0,
        schedule: "* * * * * *".into(),
        max_concurrent: 1024,
        timeline: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => args.store = value()?,
            "--tasks" => args.tasks = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--nodes" => args.nodes = value()?.parse()?,
            "--jitter-ms" => args.jitter_ms = value()?.parse()?,
            "--schedule" => args.schedule = value()?,
            "--max-concurrent" => args.max_concurrent = value()?.parse()?,
            "--timeline" => args.timeline = true,
            other => bail!("unknown option {other:?}"),
        }
    }
    if args.nodes == 0 || args.tasks == 0 || args.seconds == 0 {
        bail!("--nodes, --tasks and --seconds must be at least 1");
    }
    Ok(args)
}

/// Opens the store named by `--store`. Every backend keeps enough history
/// per task to audit the whole window (one execution per second per task).
async fn make_store(kind: &str, seconds: u64) -> Result<Arc<dyn Store>> {
    let retention = seconds as usize + 10;
    if kind == "memory" {
        return Ok(Arc::new(MemoryStore::with_retention(retention)));
    }
    if kind.starts_with("postgres://") || kind.starts_with("postgresql://") {
        // A fresh schema per run, so a run never sees an earlier run's tasks.
        let schema = format!("loadgen_{}", uuid::Uuid::now_v7().simple());
        let store = tickwheel_postgres::PgStore::builder()
            .schema(schema)
            .retention(retention)
            .max_connections(48)
            .connect(kind)
            .await?;
        return Ok(Arc::new(store));
    }
    if kind.starts_with("redis://") {
        // A fresh key prefix per run; several comma-separated node URLs
        // mean a Redis Cluster.
        let builder = tickwheel_redis::RedisStore::builder()
            .prefix(format!(
                "loadgen-{}-{}",
                std::process::id(),
                Utc::now().timestamp_micros()
            ))
            .retention(retention);
        let urls: Vec<&str> = kind.split(',').map(str::trim).collect();
        let store = if urls.len() > 1 {
            builder.connect_cluster(&urls).await?
        } else {
            builder.connect(kind).await?
        };
        return Ok(Arc::new(store));
    }
    bail!("--store {kind:?}: expected `memory`, `postgres://…` or `redis://…`")
}

/// Resident set (current, peak) in MiB, from /proc.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) of this process, from /proc.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ")".
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let store = make_store(&args.store, args.seconds).await?;
    let policy = Policy {
        jitter_ms: args.jitter_ms,
        ..Policy::default()
    };
    let (rss_before, _) = rss_mb();
    let created = Instant::now();
    let now = Utc::now();
    // Only ids are kept here, so the memory figure is the store's and the
    // engine's: every task shares the schedule and the policy.
    let mut ids: Vec<TaskId> = Vec::with_capacity(args.tasks);
    for i in 0..args.tasks {
        let mut input = NewTask::cron(format!("load {i}"), "noop", args.schedule.clone());
        input.policy = Some(policy);
        let task = input.validate("load", now)?;
        ids.push(store.create_task(task).await?.id);
    }
    let create_s = created.elapsed().as_secs_f64();
    let schedule = Schedule::parse(&args.schedule, "UTC")?;

    let schedulers: Vec<Scheduler> = (0..args.nodes)
        .map(|i| {
            Scheduler::builder(store.clone(), executor_fn(|_run| async { Ok(None) }))
                .node_id(format!("node-{i}"))
                .max_concurrent(args.max_concurrent)
                .start()
        })
        .collect();
    // Warm-up: the window starts at the second whole second from now.
    let start = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).context("time")?;
    let end = start + TimeDelta::seconds(args.seconds as i64);
    tokio::time::sleep((start - Utc::now()).to_std().unwrap_or_default()).await;
    let (rss_loaded, _) = rss_mb();
    println!(
        "setup: {} tasks created in {create_s:.2} s ({:.0}/s); {} scheduler(s) running; rss {rss_loaded:.0} MiB ({:.0} bytes per task over the {rss_before:.0} MiB baseline)",
        args.tasks,
        args.tasks as f64 / create_s,
        args.nodes,
        (rss_loaded - rss_before) * 1024.0 * 1024.0 / args.tasks as f64,
    );
    let cpu_start = cpu_s();
    tokio::time::sleep((end - Utc::now()).to_std().unwrap_or_default()).await;
    let cpu_window = cpu_s() - cpu_start;
    // Let the last occurrences of the window (plus jitter) start and finish.
    let drain = Duration::from_millis(args.jitter_ms) + Duration::from_secs(2);
    tokio::time::sleep(drain).await;
    for s in schedulers {
        s.shutdown(Duration::from_secs(5)).await;
    }
    let (_, rss_peak) = rss_mb();

    // Audit the history.
    let mut expected = 0usize;
    let mut fired = 0usize;
    let mut duplicates = 0usize;
    let mut lateness = Vec::new();
    let mut by_second: std::collections::BTreeMap<i64, Vec<f64>> =
        std::collections::BTreeMap::new();
    for &id in &ids {
        let due: Vec<DateTime<Utc>> = schedule
            .upcoming(start - TimeDelta::seconds(1))
            .take_while(|t| *t < end)
            .collect();
        expected += due.len();
        let history = store
            .executions("load", id, ExecutionQuery::newest(usize::MAX))
            .await?
            .executions;
        let mut starts: HashMap<DateTime<Utc>, usize> = HashMap::new();
        for e in history
            .iter()
            .filter(|e| e.scheduled_for >= start && e.scheduled_for < end)
        {
            *starts.entry(e.scheduled_for).or_default() += 1;
            let intended = e.scheduled_for + policy.jitter(id, e.scheduled_for);
            let late = (e.started_at - intended)
                .num_microseconds()
                .unwrap_or(i64::MAX) as f64
                / 1000.0;
            lateness.push(late);
            if args.timeline {
                by_second
                    .entry((intended - start).num_milliseconds() / 100)
                    .or_default()
                    .push(late);
            }
        }
        fired += due.iter().filter(|t| starts.contains_key(t)).count();
        duplicates += starts.values().filter(|&&n| n > 1).count();
    }
    lateness.sort_by(f64::total_cmp);
    for (tenth, mut late) in by_second {
        late.sort_by(f64::total_cmp);
        println!(
            "t+{:.1}s fires={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            tenth as f64 / 10.0,
            late.len(),
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            late.last().copied().unwrap_or(0.0)
        );
    }
    let json = format!(
        concat!(
            r#"{{"store":"{}","nodes":{},"tasks":{},"seconds":{},"expected":{},"fired":{},"duplicates":{},"lost":{},"#,
            r#""fires_per_s":{:.0},"lateness_ms":{{"p50":{:.3},"p99":{:.3},"p999":{:.3},"max":{:.3}}},"rss_mb":{:.1},"cpu_s":{:.2}}}"#
        ),
        args.store,
        args.nodes,
        args.tasks,
        args.seconds,
        expected,
        fired,
        duplicates,
        expected - fired,
        fired as f64 / args.seconds as f64,
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.99),
        percentile(&lateness, 0.999),
        lateness.last().copied().unwrap_or(0.0),
        rss_peak,
        cpu_window,
    );
    println!("{json}");
    Ok(())
}
