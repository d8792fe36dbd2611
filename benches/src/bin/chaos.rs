//! Chaos harness: several example-server processes on one shared store,
//! killed with SIGKILL at random moments, and an audit of what ran.
//!
//! ```text
//! cargo run --release -p tickwheel-benches --bin chaos -- \
//!     --store postgres://…|redis://… --nodes 3 --tasks T --seconds S \
//!     --kill-every K [--restart-store --restart-cmd 'SHELL COMMAND'] \
//!     [--server PATH] [--lease-ms MS] [--work-ms MS]
//! ```
//!
//! 1. Starts an HTTP collector in this process and `--nodes` example
//!    servers (`--server`, default: the `server` example next to this
//!    binary's directory, as `cargo build --example server` leaves it) on
//!    the store, each with its own node id per incarnation.
//! 2. Creates T tasks through the REST API: `* * * * * *`, `max_retries` 3,
//!    misfire `catch_up`, jitter 700 ms (so runs are in flight all through
//!    each second), notification `Http` to the collector, so every
//!    run's side effect is recorded outside the store. The collector takes
//!    `--work-ms` (default 300) to answer, so kills cut runs off mid-way.
//! 3. For S seconds, every K seconds kills one node at a random moment with
//!    SIGKILL and starts it again; with `--restart-store`, runs
//!    `--restart-cmd` (for example `pg_ctl restart`) once, half-way.
//! 4. Stops killing, lets the cluster drain (lease expiry, recovery,
//!    retries), then audits every occurrence due in the window from the
//!    store's history (through the API) and the collector's ledger:
//!    - `lost`: occurrences with no started execution;
//!    - `duplicates`: an (occurrence, attempt) started twice in the store or
//!      delivered twice to the collector;
//!    - `abandoned` executions, and `retried` those with a next attempt
//!      (an abandoned one with attempts left and no retry is a violation);
//!    - executions still `running` after the drain (no live lease);
//!    - occurrences whose final attempt succeeded but never reached the
//!      collector.
//! 5. Prints a last-line JSON summary and exits 1 on any violation.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::routing::post;
use chrono::{DateTime, TimeDelta, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const KEY: &str = "chaos-key";
const MAX_RETRIES: u64 = 3;

#[derive(Debug, Clone)]
struct Args {
    store: String,
    nodes: usize,
    tasks: usize,
    seconds: u64,
    kill_every: u64,
    restart_store: bool,
    restart_cmd: Option<String>,
    server: Option<PathBuf>,
    lease_ms: u64,
    work_ms: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        store: String::new(),
        nodes: 3,
        tasks: 100,
        seconds: 60,
        kill_every: 10,
        restart_store: false,
        restart_cmd: None,
        server: None,
        lease_ms: 3000,
        work_ms: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--restart-store" {
            args.restart_store = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--store" => args.store = value,
            "--nodes" => args.nodes = value.parse()?,
            "--tasks" => args.tasks = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--kill-every" => args.kill_every = value.parse()?,
            "--restart-cmd" => args.restart_cmd = Some(value),
            "--server" => args.server = Some(value.into()),
            "--lease-ms" => args.lease_ms = value.parse()?,
            "--work-ms" => args.work_ms = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    if !(args.store.starts_with("postgres") || args.store.starts_with("redis")) {
        bail!("--store must be a postgres:// or redis:// URL (the nodes must share it)");
    }
    if args.restart_store && args.restart_cmd.is_none() {
        bail!("--restart-store needs --restart-cmd 'COMMAND' to restart the store server");
    }
    if args.nodes < 2 || args.kill_every == 0 {
        bail!("--nodes must be at least 2 and --kill-every at least 1");
    }
    Ok(args)
}

/// One delivery to the collector.
#[derive(Debug, Clone)]
struct Delivery {
    task: String,
    scheduled_for: String,
    attempt: u64,
}

struct Node {
    child: Child,
    base: String,
    name: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    args: Args,
    server: PathBuf,
    logs: PathBuf,
    nodes: Vec<Option<Node>>,
    incarnations: usize,
}

impl Cluster {
    fn start(&mut self, i: usize) -> Result<()> {
        self.incarnations += 1;
        let name = format!("node{i}-{}", self.incarnations);
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        let mut child = Command::new(&self.server)
            .env("TICKWHEEL_BIND", "127.0.0.1:0")
            .env("TICKWHEEL_STORE", &self.args.store)
            .env("TICKWHEEL_API_KEYS", format!("{KEY}:chaos:write"))
            .env("TICKWHEEL_NODE_ID", &name)
            .env("TICKWHEEL_LEASE_MS", self.args.lease_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.server.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("{name} did not start (see {})", self.logs.display()))?;
        self.nodes[i] = Some(Node { child, base, name });
        Ok(())
    }

    /// A live node's base URL.
    fn any_base(&self) -> Result<String> {
        self.nodes
            .iter()
            .flatten()
            .next()
            .map(|n| n.base.clone())
            .context("no node is running")
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(client: &Http, method: &str, url: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("UserKey {KEY}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(request.body(Full::new(Bytes::from(body)))?),
    )
    .await
    .context("request timed out")??;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok((status, value))
}

/// A small xorshift generator: the moments of the kills.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = runtime.block_on(run(args))?;
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(args: Args) -> Result<bool> {
    let server = match &args.server {
        Some(path) => path.clone(),
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .context("binary dir")?
                .join("examples")
                .join("server")
        }
    };
    if !server.exists() {
        bail!(
            "{} not found: build it with `cargo build [--release] -p tickwheel-http --example server`, or pass --server",
            server.display()
        );
    }
    let logs = std::env::temp_dir().join(format!("tickwheel-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;

    // The collector.
    let ledger: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = ledger.clone();
    let work = Duration::from_millis(args.work_ms);
    let collector = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Delivery {
                        task: text("task_id"),
                        scheduled_for: text("scheduled_for"),
                        attempt: body["attempt"].as_u64().unwrap_or(0),
                    });
                tokio::time::sleep(work).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let mut cluster = Cluster {
        args: args.clone(),
        server,
        logs: logs.clone(),
        nodes: (0..args.nodes).map(|_| None).collect(),
        incarnations: 0,
    };
    for i in 0..args.nodes {
        cluster.start(i)?;
    }
    let client: Http = Client::builder(TokioExecutor::new()).build_http();

    // The tasks.
    let mut ids = Vec::with_capacity(args.tasks);
    let base = cluster.any_base()?;
    for i in 0..args.tasks {
        let (status, task) = call(
            &client,
            "POST",
            &format!("{base}/api/v1/scheduled_tasks"),
            Some(json!({
                "name": format!("chaos {i}"),
                "agent": "chaos",
                "schedule": "* * * * * *",
                "notification": {"method": "Http", "destination": hook},
                "policy": {"max_retries": MAX_RETRIES, "retry_backoff_ms": 200, "misfire": "catch_up", "timeout_ms": 20000, "jitter_ms": 700},
            })),
        )
        .await?;
        if status != 200 {
            bail!("creating task {i}: {status} {task}");
        }
        ids.push(task["id"].as_str().context("task id")?.to_owned());
    }
    eprintln!(
        "chaos: {} tasks created on {} nodes; logs in {}",
        ids.len(),
        args.nodes,
        logs.display()
    );

    // The window, and the kills.
    let start = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).context("time")?;
    let end = start + TimeDelta::seconds(args.seconds as i64);
    let mut rng = Rng(u64::from(std::process::id()) * 2_654_435_761 + 1);
    let mut kills = 0;
    let mut store_restarts = 0;
    let restart_at = start + TimeDelta::seconds(args.seconds as i64 / 2);
    let mut next_kill = start + TimeDelta::milliseconds((args.kill_every * 1000) as i64);
    while Utc::now() < end {
        let now = Utc::now();
        if args.restart_store && store_restarts == 0 && now >= restart_at {
            let cmd = args.restart_cmd.as_deref().unwrap_or_default();
            eprintln!("chaos: restarting the store: {cmd}");
            let status = tokio::process::Command::new("sh")
                .args(["-c", cmd])
                .status()
                .await?;
            if !status.success() {
                bail!("--restart-cmd failed: {status}");
            }
            store_restarts += 1;
        }
        if now >= next_kill {
            // A random moment within the next second, a random node.
            tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
            let i = rng.below(args.nodes as u64) as usize;
            if let Some(mut node) = cluster.nodes[i].take() {
                eprintln!("chaos: SIGKILL {}", node.name);
                let _ = node.child.kill();
                let _ = node.child.wait();
                kills += 1;
            }
            cluster.start(i)?;
            next_kill += TimeDelta::milliseconds((args.kill_every * 1000) as i64);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Drain: leases of killed runs expire and are retried.
    let drain = Duration::from_millis(args.lease_ms * 3 + 5000);
    eprintln!("chaos: window over; draining for {drain:?}");
    tokio::time::sleep(drain).await;

    // Runs cut off near the end may still await lease expiry, recovery or
    // a retry: re-audit for up to a minute before calling anything a
    // violation (lost and duplicated starts never heal by waiting).
    let mut patience = 12;
    let report = loop {
        let report = audit(&client, &cluster.any_base()?, &ids, start, end, &ledger).await?;
        if report.violations.is_empty() || patience == 0 {
            break report;
        }
        patience -= 1;
        eprintln!(
            "chaos: {} open items; re-auditing in 5 s",
            report.violations.len()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };

    // Graceful stop of the survivors.
    for node in cluster.nodes.iter_mut().flatten() {
        let _ = Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    for node in cluster.nodes.iter_mut().flatten() {
        while node.child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let ok = report.violations.is_empty();
    for v in report.violations.iter().take(20) {
        eprintln!("violation: {v}");
    }
    println!(
        "{}",
        json!({
            "store": if args.store.starts_with("redis") { "redis" } else { "postgres" },
            "nodes": args.nodes, "tasks": args.tasks, "seconds": args.seconds,
            "expected": report.expected, "started": report.started, "lost": report.lost,
            "duplicates": report.duplicates, "abandoned": report.abandoned,
            "retried": report.retried, "kills": kills, "store_restarts": store_restarts,
            "violations": report.violations.len(),
        })
    );
    if ok {
        let _ = std::fs::remove_dir_all(&logs);
    }
    Ok(ok)
}

#[derive(Debug, Default)]
struct Report {
    expected: usize,
    started: usize,
    lost: usize,
    duplicates: usize,
    abandoned: usize,
    retried: usize,
    violations: Vec<String>,
}

async fn audit(
    client: &Http,
    base: &str,
    ids: &[String],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    ledger: &Mutex<Vec<Delivery>>,
) -> Result<Report> {
    let mut delivered: HashMap<(String, i64, u64), usize> = HashMap::new();
    for d in ledger.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if let Ok(at) = DateTime::parse_from_rfc3339(&d.scheduled_for) {
            *delivered
                .entry((d.task.clone(), at.timestamp_millis(), d.attempt))
                .or_default() += 1;
        }
    }
    let mut r = Report::default();
    for id in ids {
        let executions = history(client, base, id).await?;
        // Occurrence (ms) → its executions.
        let mut by_occurrence: HashMap<i64, Vec<&Value>> = HashMap::new();
        for e in &executions {
            let at = e["scheduled_for"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis());
            if let Some(at) = at {
                by_occurrence.entry(at).or_default().push(e);
            }
        }
        let mut t = start;
        while t < end {
            r.expected += 1;
            let ms = t.timestamp_millis();
            let runs: Vec<&Value> = by_occurrence
                .get(&ms)
                .map(|v| {
                    v.iter()
                        .copied()
                        .filter(|e| !matches!(e["status"].as_str(), Some("missed" | "skipped")))
                        .collect()
                })
                .unwrap_or_default();
            if runs.is_empty() {
                r.lost += 1;
                r.violations
                    .push(format!("task {id}: occurrence {t} never started"));
            } else {
                r.started += 1;
            }
            let mut attempts = HashSet::new();
            let mut max_attempt = 0;
            for e in &runs {
                let attempt = e["attempt"].as_u64().unwrap_or(0);
                max_attempt = max_attempt.max(attempt);
                if !attempts.insert(attempt) {
                    r.duplicates += 1;
                    r.violations.push(format!(
                        "task {id}: occurrence {t} attempt {attempt} started twice"
                    ));
                }
                if delivered
                    .get(&(id.clone(), ms, attempt))
                    .is_some_and(|n| *n > 1)
                {
                    r.duplicates += 1;
                    r.violations.push(format!(
                        "task {id}: occurrence {t} attempt {attempt} delivered twice"
                    ));
                }
            }
            for e in &runs {
                let attempt = e["attempt"].as_u64().unwrap_or(0);
                match e["status"].as_str() {
                    Some("abandoned") => {
                        r.abandoned += 1;
                        if attempts.contains(&(attempt + 1)) {
                            r.retried += 1;
                        } else if attempt <= MAX_RETRIES {
                            r.violations.push(format!("task {id}: occurrence {t} attempt {attempt} abandoned and never retried"));
                        }
                    }
                    Some("running") => r.violations.push(format!(
                        "task {id}: occurrence {t} attempt {attempt} still running after the drain"
                    )),
                    Some("succeeded")
                        if attempt == max_attempt
                            && !delivered.contains_key(&(id.clone(), ms, attempt)) =>
                    {
                        r.violations.push(format!(
                            "task {id}: occurrence {t} succeeded but the collector never saw it"
                        ));
                    }
                    _ => {}
                }
            }
            t += TimeDelta::seconds(1);
        }
    }
    Ok(r)
}

/// Every execution of a task, through the API's paging. New executions
/// arrive at the front while we page, which can only repeat items on the
/// next page (never skip one); repeats are dropped by id.
async fn history(client: &Http, base: &str, id: &str) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = 0;
    loop {
        let url =
            format!("{base}/api/v1/scheduled_tasks/{id}/executions?limit=1000&offset={offset}");
        let (status, page) = call(client, "GET", &url, None).await?;
        if status != 200 {
            bail!("history of {id}: {status} {page}");
        }
        let batch = page["executions"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        let done = batch.is_empty();
        offset += batch.len();
        for e in batch {
            if seen.insert(e["id"].as_str().unwrap_or_default().to_owned()) {
                all.push(e);
            }
        }
        if done || offset >= total {
            return Ok(all);
        }
    }
}
