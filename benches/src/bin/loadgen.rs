//! Load harness: many jobs firing every second on tickwheel or on a peer
//! scheduler, several instances in one process, then an audit of every
//! occurrence due in a fixed window.
//!
//! ```text
//! cargo run --release -p tickwheel-benches --bin loadgen -- \
//!     [--engine tickwheel|tokio-cron-scheduler|apalis|delayqueue] \
//!     --store memory|postgres://…|redis://… --tasks N --seconds S [--nodes K] \
//!     [--jitter-ms J] [--schedule EXPR] [--max-concurrent C] [--claim-ahead-ms A] \
//!     [--timeline] \
//!     [--lateness-out PATH] [--max-setup-s T] [--warmup-s W] [--create-workers P]
//! ```
//!
//! Creates N jobs (default schedule `* * * * * *`), starts K scheduler
//! instances in this process on one store with a no-op job, lets them run
//! for a window of S whole seconds (after one to two seconds of warm-up:
//! the window starts at the second whole second after setup; `--warmup-s W`
//! makes that the W-th, to leave out the start-up burst, when every task
//! created during setup is due at once), stops them
//! three seconds after the window ends, and audits every occurrence whose
//! intended instant is in the window:
//!
//! - `expected`: occurrences whose time (before jitter) is in the window;
//! - `fired`: those with at least one run; `lost` = expected − fired;
//! - `duplicates`: occurrences started more than once;
//! - `lateness_ms`: run start minus the occurrence's intended instant
//!   (every run counted, duplicates included);
//! - `rss_mb`: peak resident memory of the process (`VmHWM`, so it includes
//!   setup): for tickwheel it includes the store's execution history, for
//!   the others the harness's run ledger (24 bytes a run, in vectors that
//!   grow by doubling: 35 to 70 MiB for 100k jobs over a 10 s window plus
//!   warm-up and drain); `cpu_s`: CPU time (user + system) spent during
//!   the window.
//!
//! The last line printed is one JSON object with those fields, `engine`
//! first; earlier lines report setup. `--lateness-out PATH` also writes every
//! lateness sample (ms, one number a line, unsorted) for plotting.
//! `--create-workers P` (tickwheel only, default 1) creates the jobs from P
//! tokio tasks at once, each a contiguous range of them.
//! `--max-setup-s T` (default 120) bounds job creation and start-up: past it
//! the harness prints `{"engine":…,"error":"setup exceeded T s",
//! "created":M,…}` (M = job registrations so far, all nodes counted) and
//! exits with status 2. A watchdog thread does the same, with `"error":"run
//! did not finish…"`, when the engines have not stopped 30 s after the
//! drain (an engine whose tasks never yield can starve the runtime).
//!
//! # Engines
//!
//! Every engine runs the same workload: the same cron expression, a job body
//! that does nothing but note its start, the same window and drain.
//!
//! - `tickwheel` (default): [`tickwheel::Scheduler`] on `--store memory`,
//!   `postgres://…` or `redis://…`; K schedulers share one store, which
//!   claims each occurrence once. Audited from the store's execution
//!   history; the intended instant is `scheduled_for` plus the task's
//!   jitter. The only engine that takes `--jitter-ms`, `--max-concurrent`,
//!   `--claim-ahead-ms` (the schedulers' `claim_ahead`; default theirs,
//!   100 ms), `--create-workers` and `redis://`. On PostgreSQL each run
//!   has a schema of its own, dropped after the audit.
//! - `tokio-cron-scheduler`: one `JobScheduler` per node, each job a cron
//!   job with a fixed id shared by all nodes. Memory: the nodes share one
//!   `SimpleMetadataStore` (through a wrapper that serialises access), so
//!   they see one `next_tick` per job, as they would on a shared database.
//!   PostgreSQL: its own `PostgresMetadataStore` and
//!   `PostgresNotificationStore` (in a schema per run), one connection per
//!   node, as in its `postgres_job` example. It has no claim step: every
//!   node that polls while a job is due runs it, so several nodes can run
//!   an occurrence more than once; the audit counts what happened. Its
//!   broadcast channels are sized to N (at least 200): at the default 200,
//!   a second with more due jobs than that drops activations.
//! - `apalis`: apalis 1.0 with apalis-cron. Memory: one worker per job per
//!   node, each with its own `CronScheduler` backend (apalis-cron's plain
//!   form); nothing is shared, so K nodes run every occurrence K times.
//!   PostgreSQL (apalis-postgres, the 1.0 home of apalis-sql's
//!   `PostgresStorage`): each node runs one apalis-cron `CronScheduler`
//!   stream per job that pushes every tick into the shared queue, and one
//!   worker that polls the queue every 50 ms. Each pushed task carries the
//!   idempotency key `job:tick`, which apalis-postgres keeps unique, so
//!   with K nodes K − 1 of the K pushes of an occurrence are refused
//!   (`push_refused` in the JSON; those refusals are the deduplication, not
//!   failures). Each push is its own transaction that also sends a NOTIFY,
//!   and PostgreSQL serialises such commits, so the push rate is bounded
//!   by one WAL flush at a time; a push slower than a second
//!   makes apalis-cron's stream fail (`cron_errors`) and skip ticks. Why
//!   polling rather than LISTEN/NOTIFY, and the pool sizes: see
//!   `loadgen/apalis_peer.rs`.
//! - `delayqueue`: the raw limit for firing, with no engine at all: a bare
//!   [`tokio_util::time::DelayQueue`] holding each job's next occurrence
//!   (computed with tickwheel's cron parser), re-inserted after it fires;
//!   each expiry spawns a tokio task that runs the no-op job. Memory only,
//!   one node.
//!
//! # How peers' intended instants are known
//!
//! Peers and `delayqueue` record every run in an in-process ledger (job,
//! intended second, start instant), audited like tickwheel's history.
//!
//! - apalis: the task carries the apalis-cron `Tick`, the scheduled second.
//! - delayqueue: the deadline the entry was inserted with.
//! - tokio-cron-scheduler does not hand the job its tick, and the
//!   `last_tick` it stores is the poll time, not the tick. Its scheduler
//!   polls every 500 ms, lists every job's `next_tick` and runs those due.
//!   The harness wraps the metadata store and notes, per node, the
//!   `next_tick` of each due job that a poll listed; the job body reads
//!   that note. A run that starts after its node's next poll has already
//!   listed the following tick (a run more than 0.5–1 s behind its poll)
//!   would be attributed to that later tick, showing as a duplicate plus a
//!   loss and a lateness a second too small; if no note exists the start
//!   is rounded down to the second. So once its lateness passes about half
//!   a second (100k jobs in memory, or PostgreSQL), the split of its runs
//!   between `fired` and `duplicates` is uncertain: the number of runs and
//!   `fires_per_s` stay exact. (Its code can also run an occurrence twice
//!   by itself: the `next_tick` update after a run is a separate task, and
//!   a poll that comes before it is written fires the job again.)
//!   Note: on PostgreSQL its due query is `next_tick < now` in whole
//!   seconds, so a job is picked up one to 1.5 s after its tick, and its
//!   next tick is computed from that poll time: every other second is
//!   skipped. The audit shows this as lost occurrences and lateness over a
//!   second; it is the library's behaviour, not the harness's.

#[path = "loadgen/apalis_peer.rs"]
mod apalis_peer;
#[path = "loadgen/delayqueue.rs"]
mod delayqueue;
#[path = "loadgen/ledger.rs"]
mod ledger;
#[path = "loadgen/tcs.rs"]
mod tcs;
#[path = "loadgen/tickwheel_engine.rs"]
mod tickwheel_engine;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, TimeDelta, Utc};
use tickwheel::Schedule;

use crate::ledger::Ledger;

/// mimalloc, as a latency-sensitive service would use: with glibc's malloc
/// the p99 lateness of the 100k fires/s run varied from 3 to 95 ms between
/// runs (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Time between the end of the window and stopping the engines, so that the
/// window's last occurrences can start.
const DRAIN: Duration = Duration::from_secs(3);

/// Which scheduler runs the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Tickwheel,
    TokioCronScheduler,
    Apalis,
    DelayQueue,
}

impl Engine {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "tickwheel" => Self::Tickwheel,
            "tokio-cron-scheduler" => Self::TokioCronScheduler,
            "apalis" => Self::Apalis,
            "delayqueue" => Self::DelayQueue,
            other => bail!(
                "--engine {other:?}: expected tickwheel, tokio-cron-scheduler, apalis or delayqueue"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tickwheel => "tickwheel",
            Self::TokioCronScheduler => "tokio-cron-scheduler",
            Self::Apalis => "apalis",
            Self::DelayQueue => "delayqueue",
        }
    }
}

/// The store named by `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StoreKind {
    Memory,
    Postgres(String),
    Redis(String),
}

impl StoreKind {
    fn parse(s: &str) -> Result<Self> {
        if s == "memory" {
            Ok(Self::Memory)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_owned()))
        } else if s.starts_with("redis://") {
            Ok(Self::Redis(s.to_owned()))
        } else {
            bail!("--store {s:?}: expected `memory`, `postgres://…` or `redis://…`")
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    engine: Engine,
    store: String,
    store_kind: StoreKind,
    tasks: usize,
    seconds: u64,
    nodes: usize,
    jitter_ms: u64,
    schedule: String,
    max_concurrent: Option<usize>,
    /// The schedulers' `claim_ahead` in ms, when not the default.
    claim_ahead_ms: Option<u64>,
    timeline: bool,
    lateness_out: Option<PathBuf>,
    max_setup_s: u64,
    /// Whole seconds between setup and the window (at least 2).
    warmup_s: u64,
    /// How many tasks create the jobs at once (tickwheel only).
    create_workers: usize,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T> {
    value
        .parse()
        .ok()
        .with_context(|| format!("{flag} {value:?}: expected a whole number"))
}

/// What `--help` prints (the options are explained in the module docs).
const USAGE: &str = "loadgen [--engine tickwheel|tokio-cron-scheduler|apalis|delayqueue] \
--store memory|postgres://…|redis://…[,redis://…] --tasks N --seconds S [--nodes K] \
[--jitter-ms J] [--schedule EXPR] [--max-concurrent C] [--claim-ahead-ms A] [--timeline] \
[--lateness-out PATH] [--max-setup-s T] [--warmup-s W] [--create-workers P]

Creates N jobs firing on EXPR (default every second), runs K scheduler
instances on one store for a window of S seconds, audits every occurrence
due in the window and prints one JSON line: expected, fired, lost,
duplicates, lateness percentiles, RSS and CPU. Details: the module docs of
benches/src/bin/loadgen.rs.";

fn parse_args() -> Result<Args> {
    let mut engine = "tickwheel".to_owned();
    let mut store = "memory".to_owned();
    let mut args = Args {
        engine: Engine::Tickwheel,
        store: String::new(),
        store_kind: StoreKind::Memory,
        tasks: 1000,
        seconds: 10,
        nodes: 1,
        jitter_ms: 0,
        schedule: "* * * * * *".into(),
        max_concurrent: None,
        claim_ahead_ms: None,
        timeline: false,
        lateness_out: None,
        max_setup_s: 120,
        warmup_s: 2,
        create_workers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--engine" => engine = value()?,
            "--store" => store = value()?,
            "--tasks" => args.tasks = number(&flag, &value()?)?,
            "--seconds" => args.seconds = number(&flag, &value()?)?,
            "--nodes" => args.nodes = number(&flag, &value()?)?,
            "--jitter-ms" => args.jitter_ms = number(&flag, &value()?)?,
            "--schedule" => args.schedule = value()?,
            "--max-concurrent" => args.max_concurrent = Some(number(&flag, &value()?)?),
            "--claim-ahead-ms" => args.claim_ahead_ms = Some(number(&flag, &value()?)?),
            "--timeline" => args.timeline = true,
            "--lateness-out" => args.lateness_out = Some(value()?.into()),
            "--max-setup-s" => args.max_setup_s = number(&flag, &value()?)?,
            "--warmup-s" => args.warmup_s = number::<u64>(&flag, &value()?)?.max(2),
            "--create-workers" => args.create_workers = number(&flag, &value()?)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (try --help)"),
        }
    }
    args.engine = Engine::parse(&engine)?;
    args.store_kind = StoreKind::parse(&store)?;
    args.store = store;
    if args.nodes == 0 || args.tasks == 0 || args.seconds == 0 {
        bail!("--nodes, --tasks and --seconds must be at least 1");
    }
    if args.max_setup_s == 0 {
        bail!("--max-setup-s must be at least 1");
    }
    if args.tasks > u32::MAX as usize {
        bail!("--tasks {}: at most {}", args.tasks, u32::MAX);
    }
    if args.max_concurrent == Some(0) {
        bail!("--max-concurrent must be at least 1");
    }
    if args.create_workers == 0 {
        bail!("--create-workers must be at least 1");
    }
    let name = args.engine.name();
    if args.engine != Engine::Tickwheel {
        if args.jitter_ms > 0 {
            bail!("--jitter-ms is only supported by --engine tickwheel ({name} has no jitter)");
        }
        if args.max_concurrent.is_some() || args.claim_ahead_ms.is_some() || args.create_workers > 1
        {
            bail!(
                "--max-concurrent, --claim-ahead-ms and --create-workers are only supported by --engine tickwheel"
            );
        }
        if matches!(args.store_kind, StoreKind::Redis(_)) {
            bail!(
                "--store redis://… is only supported by --engine tickwheel ({name} has no Redis storage here)"
            );
        }
    }
    if args.engine == Engine::DelayQueue {
        if args.store_kind != StoreKind::Memory {
            bail!("--store: --engine delayqueue runs in memory only");
        }
        if args.nodes != 1 {
            bail!("--nodes: --engine delayqueue runs one node only");
        }
    }
    // Parse the expression once here so a bad one is reported before setup.
    Schedule::parse(&args.schedule, "UTC")
        .with_context(|| format!("--schedule {:?}", args.schedule))?;
    Ok(args)
}

/// Where the audit reads the runs from.
enum Audit {
    /// tickwheel's own execution history.
    Store(tickwheel_engine::History),
    /// The in-process ledger of a peer or of the bare `DelayQueue`.
    Ledger(Arc<Ledger>),
}

/// A stop action: runs once the window and the drain are over.
type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An engine with its jobs created and its nodes running.
struct Started {
    audit: Audit,
    stop: Stop,
    /// Extra counters reported in the JSON line, as `"name":value`.
    counters: Vec<(&'static str, Arc<AtomicU64>)>,
}

/// One run found by the audit.
#[derive(Debug, Clone, Copy)]
struct Sample {
    intended: DateTime<Utc>,
    late_ms: f64,
}

/// What the audit counted over the window.
#[derive(Debug, Default)]
struct Counts {
    expected: usize,
    fired: usize,
    duplicates: usize,
    samples: Vec<Sample>,
}

impl Counts {
    /// Counts one job's runs: `due` are its occurrences in the window,
    /// `runs` its runs in the window, each with the occurrence it is for
    /// (the intended instant before jitter).
    fn add_job(
        &mut self,
        due: &[DateTime<Utc>],
        runs: impl IntoIterator<Item = (DateTime<Utc>, Sample)>,
    ) {
        self.expected += due.len();
        let mut starts: HashMap<DateTime<Utc>, usize> = HashMap::new();
        for (occurrence, run) in runs {
            *starts.entry(occurrence).or_default() += 1;
            self.samples.push(run);
        }
        self.fired += due.iter().filter(|t| starts.contains_key(t)).count();
        self.duplicates += starts.values().filter(|&&n| n > 1).count();
    }
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

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(args));
    // Peers may leave tasks behind that never finish (workers blocked on a
    // socket, pollers): the report is printed, so leave without waiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Ends the process with a JSON error line when setup or the run overruns.
///
/// A thread of its own, not a tokio timer: an engine whose tasks never
/// yield can starve the runtime, and then no timer fires.
struct Watchdog {
    /// The current deadline and the error it reports; `None` once the
    /// engines stopped. Held while the error line is printed.
    deadline: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Watchdog {
    fn start(args: &Args, created: Arc<AtomicUsize>) -> Self {
        let deadline = Arc::new(Mutex::new(Some((
            Instant::now() + Duration::from_secs(args.max_setup_s),
            format!("setup exceeded {} s", args.max_setup_s),
        ))));
        let watched = deadline.clone();
        let args = args.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let guard = watched.lock().unwrap_or_else(|e| e.into_inner());
                let Some((at, error)) = &*guard else { return };
                if Instant::now() < *at {
                    continue;
                }
                let (_, rss_peak) = rss_mb();
                println!(
                    concat!(
                        r#"{{"engine":{},"store":{},"nodes":{},"tasks":{},"seconds":{},"#,
                        r#""error":{},"created":{},"rss_mb":{:.1}}}"#
                    ),
                    json_str(args.engine.name()),
                    json_str(&args.store),
                    args.nodes,
                    args.tasks,
                    args.seconds,
                    json_str(error),
                    created.load(Ordering::Relaxed),
                    rss_peak,
                );
                let _ = std::io::stdout().flush();
                std::process::exit(2);
            }
        });
        Self { deadline }
    }

    /// Replaces the deadline with one `within` from now.
    fn set(&self, within: Duration, error: String) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now() + within, error));
    }

    /// The engines stopped: no more deadline.
    fn done(&self) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Creates the jobs and starts the nodes of the chosen engine.
async fn start(args: &Args, created: &Arc<AtomicUsize>) -> Result<Started> {
    match args.engine {
        Engine::Tickwheel => tickwheel_engine::start(args, created).await,
        Engine::TokioCronScheduler => tcs::start(args, created).await,
        Engine::Apalis => apalis_peer::start(args, created).await,
        Engine::DelayQueue => delayqueue::start(args, created).await,
    }
}

async fn run(args: Args) -> Result<()> {
    let schedule = Schedule::parse(&args.schedule, "UTC")?;
    let created = Arc::new(AtomicUsize::new(0));
    let (rss_before, _) = rss_mb();
    let setup_started = Instant::now();
    let watchdog = Watchdog::start(&args, created.clone());
    let started = start(&args, &created).await?;
    // Stopping gets 30 s past the drain before the watchdog gives up.
    watchdog.set(
        Duration::from_secs(args.warmup_s + args.seconds + 30)
            + DRAIN
            + Duration::from_millis(args.jitter_ms),
        "run did not finish: the engine stopped answering".to_owned(),
    );
    let create_s = setup_started.elapsed().as_secs_f64();

    // Warm-up: the window starts at the second (or `--warmup-s`) whole
    // second from now.
    let start = DateTime::from_timestamp(Utc::now().timestamp() + args.warmup_s as i64, 0)
        .context("time")?;
    let end = start + TimeDelta::seconds(args.seconds as i64);
    tokio::time::sleep((start - Utc::now()).to_std().unwrap_or_default()).await;
    let (rss_loaded, _) = rss_mb();
    println!(
        "setup: {} {} jobs created and {} node(s) started in {create_s:.2} s ({:.0}/s); rss {rss_loaded:.0} MiB ({:.0} bytes per job over the {rss_before:.0} MiB baseline); window from {}",
        args.tasks,
        args.engine.name(),
        args.nodes,
        args.tasks as f64 / create_s,
        (rss_loaded - rss_before) * 1024.0 * 1024.0 / args.tasks as f64,
        start.to_rfc3339(),
    );
    let cpu_start = cpu_s();
    tokio::time::sleep((end - Utc::now()).to_std().unwrap_or_default()).await;
    let cpu_window = cpu_s() - cpu_start;
    // Let the last occurrences of the window (plus jitter) start.
    tokio::time::sleep(Duration::from_millis(args.jitter_ms) + DRAIN).await;
    started.stop.await;
    watchdog.done();
    let (_, rss_peak) = rss_mb();

    // Every job has the same schedule, so the same occurrences are due.
    let due: Vec<DateTime<Utc>> = schedule
        .upcoming(start - TimeDelta::seconds(1))
        .take_while(|t| *t < end)
        .collect();
    let counts = match started.audit {
        Audit::Store(history) => {
            let counts = history.audit(&due, start, end).await?;
            history.cleanup().await?;
            counts
        }
        Audit::Ledger(ledger) => audit_ledger(&ledger, args.tasks, &due, start, end),
    };
    report(
        &args,
        &counts,
        start,
        rss_peak,
        cpu_window,
        &started.counters,
    )
}

/// Counts the ledger's runs exactly as the store audit counts executions.
fn audit_ledger(
    ledger: &Ledger,
    tasks: usize,
    due: &[DateTime<Utc>],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Counts {
    let mut by_job: Vec<Vec<Sample>> = vec![Vec::new(); tasks];
    for run in ledger.runs() {
        let Some(intended) = DateTime::from_timestamp(run.intended_s, 0) else {
            continue;
        };
        if intended < start || intended >= end {
            continue;
        }
        let late_ms = (run.started - intended)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64
            / 1000.0;
        if let Some(runs) = by_job.get_mut(run.job as usize) {
            runs.push(Sample { intended, late_ms });
        }
    }
    let due_set: HashSet<DateTime<Utc>> = due.iter().copied().collect();
    let mut counts = Counts::default();
    for runs in by_job {
        debug_assert!(
            runs.iter().all(|r| due_set.contains(&r.intended)),
            "a run's intended instant is not an occurrence of the schedule"
        );
        counts.add_job(due, runs.into_iter().map(|s| (s.intended, s)));
    }
    counts
}

fn report(
    args: &Args,
    counts: &Counts,
    start: DateTime<Utc>,
    rss_peak: f64,
    cpu_window: f64,
    counters: &[(&'static str, Arc<AtomicU64>)],
) -> Result<()> {
    let mut lateness: Vec<f64> = counts.samples.iter().map(|s| s.late_ms).collect();
    if let Some(path) = &args.lateness_out {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("--lateness-out {}", path.display()))?,
        );
        for late in &lateness {
            writeln!(out, "{late:.3}")?;
        }
        out.flush()
            .with_context(|| format!("--lateness-out {}", path.display()))?;
    }
    lateness.sort_by(f64::total_cmp);
    if args.timeline {
        let mut by_tenth: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for s in &counts.samples {
            by_tenth
                .entry((s.intended - start).num_milliseconds() / 100)
                .or_default()
                .push(s.late_ms);
        }
        for (tenth, mut late) in by_tenth {
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
    }
    let extra: String = counters
        .iter()
        .map(|(name, value)| format!(r#","{name}":{}"#, value.load(Ordering::Relaxed)))
        .collect();
    println!(
        concat!(
            r#"{{"engine":{},"store":{},"nodes":{},"tasks":{},"seconds":{},"expected":{},"fired":{},"duplicates":{},"lost":{},"#,
            r#""fires_per_s":{:.0},"lateness_ms":{{"p50":{:.3},"p99":{:.3},"p999":{:.3},"max":{:.3}}},"rss_mb":{:.1},"cpu_s":{:.2}{}}}"#
        ),
        json_str(args.engine.name()),
        json_str(&args.store),
        args.nodes,
        args.tasks,
        args.seconds,
        counts.expected,
        counts.fired,
        counts.duplicates,
        counts.expected - counts.fired,
        counts.fired as f64 / args.seconds as f64,
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.99),
        percentile(&lateness, 0.999),
        lateness.last().copied().unwrap_or(0.0),
        rss_peak,
        cpu_window,
        extra,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Run;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn ledger_audit_counts_like_the_store_audit() {
        // Window [100, 103): three occurrences per job, two jobs.
        let (start, end) = (at(100), at(103));
        let due = [at(100), at(101), at(102)];
        let ledger = Ledger::new();
        let run = |job, intended_s, late_ms| Run {
            job,
            intended_s,
            started: at(intended_s) + TimeDelta::milliseconds(late_ms),
        };
        // Job 0: 100 twice (a duplicate), 101 once, 102 lost; a warm-up run
        // at 99 and a drain run at 103 are outside the window.
        for r in [
            run(0, 99, 1),
            run(0, 100, 2),
            run(0, 100, 7),
            run(0, 101, 3),
            run(0, 103, 1),
        ] {
            ledger.record(r);
        }
        // Job 1: every occurrence once.
        for s in 100..103 {
            ledger.record(run(1, s, 5));
        }
        let counts = audit_ledger(&ledger, 2, &due, start, end);
        assert_eq!(counts.expected, 6);
        assert_eq!(counts.fired, 5);
        assert_eq!(counts.duplicates, 1);
        let mut late: Vec<f64> = counts.samples.iter().map(|s| s.late_ms).collect();
        late.sort_by(f64::total_cmp);
        assert_eq!(late, [2.0, 3.0, 5.0, 5.0, 5.0, 7.0]);
    }

    #[test]
    fn engine_names_round_trip_and_unknown_ones_name_the_flag() {
        for name in ["tickwheel", "tokio-cron-scheduler", "apalis", "delayqueue"] {
            assert_eq!(Engine::parse(name).unwrap().name(), name);
        }
        let err = Engine::parse("cron").unwrap_err().to_string();
        assert!(err.starts_with("--engine"), "{err}");
        let err = StoreKind::parse("mysql://x").unwrap_err().to_string();
        assert!(err.starts_with("--store"), "{err}");
    }
}
