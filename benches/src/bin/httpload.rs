//! HTTP load on loopback: the tickwheel REST adapter (memory store) side by
//! side with a bare axum handler, in one process and one run.
//!
//! ```text
//! cargo run --release -p tickwheel-benches --bin httpload -- \
//!     [--seconds S] [--connections C] [--server-threads T]
//! ```
//!
//! Two servers listen on loopback in one tokio runtime (`T` worker threads,
//! default 1): the API router over a `MemoryStore` with 1,000 tasks, and a
//! bare axum router whose handlers do the least an equivalent endpoint can
//! (GET returns a fixed task-sized JSON body; POST decodes the JSON body
//! and answers it). A closed-loop client on its own thread keeps `C`
//! keep-alive HTTP/1.1 connections busy (default 16) for `S` seconds
//! (default 5) per scenario, after a 1 s warm-up:
//!
//! - `get`: `GET /api/v1/scheduled_tasks/{id}` (a random one of the 1,000)
//!   vs the bare GET;
//! - `create`: `POST /api/v1/scheduled_tasks` with a cron task vs the bare
//!   POST with the same body.
//!
//! One JSON line per scenario and target, then a last line with the ratios
//! (API requests per second over bare).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tickwheel::{MemoryStore, NewTask, Store, TaskId};
use tickwheel_http::{ApiState, KeyTable, Scope};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "bench-key";

#[derive(Debug)]
struct Args {
    seconds: u64,
    connections: usize,
    server_threads: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        seconds: 5,
        connections: 16,
        server_threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--connections" => args.connections = value()?.parse()?,
            "--server-threads" => args.server_threads = value()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

/// One request the client repeats (the path may vary per request).
#[derive(Clone)]
struct Scenario {
    method: &'static str,
    paths: Arc<Vec<String>>,
    body: Option<Bytes>,
}

#[derive(Debug, Default)]
struct Outcome {
    requests: usize,
    errors: usize,
    latencies_us: Vec<u32>,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()?;
    let (api_addr, bare_addr, ids) = server_rt.block_on(start_servers())?;

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let task_body = Bytes::from(
        json!({"name": "bench", "agent": "bench-agent", "schedule": "0 9 * * MON-FRI",
               "prompt": "summarise the day", "policy": {"max_retries": 2}})
        .to_string(),
    );
    let get_paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/api/v1/scheduled_tasks/{id}"))
        .collect();
    let get_api = Scenario {
        method: "GET",
        paths: Arc::new(get_paths),
        body: None,
    };
    let get_bare = Scenario {
        method: "GET",
        paths: Arc::new(vec!["/task".to_owned()]),
        body: None,
    };
    let create_api = Scenario {
        method: "POST",
        paths: Arc::new(vec!["/api/v1/scheduled_tasks".to_owned()]),
        body: Some(task_body.clone()),
    };
    let create_bare = Scenario {
        method: "POST",
        paths: Arc::new(vec!["/task".to_owned()]),
        body: Some(task_body),
    };

    let mut ratios = Vec::new();
    for (name, api, bare) in [
        ("get", get_api, get_bare),
        ("create", create_api, create_bare),
    ] {
        let mut rps = [0.0; 2];
        for (i, (target, addr, scenario)) in [("bare", bare_addr, bare), ("api", api_addr, api)]
            .into_iter()
            .enumerate()
        {
            let outcome = client_rt.block_on(drive(addr, scenario, &args))?;
            let secs = args.seconds as f64;
            rps[i] = outcome.requests as f64 / secs;
            let mut lat = outcome.latencies_us;
            lat.sort_unstable();
            let q = |p: f64| {
                lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                    .map_or(0.0, |us| f64::from(*us) / 1000.0)
            };
            println!(
                "{}",
                json!({
                    "scenario": name, "target": target, "connections": args.connections,
                    "seconds": args.seconds, "requests": outcome.requests, "errors": outcome.errors,
                    "rps": rps[i].round(), "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": q(1.0),
                })
            );
        }
        ratios.push((name, rps[1] / rps[0]));
    }
    let ratio: serde_json::Map<String, Value> = ratios
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!((v * 1000.0).round() / 1000.0)))
        .collect();
    println!("{}", json!({ "api_over_bare_rps": ratio }));
    Ok(())
}

async fn start_servers() -> Result<(std::net::SocketAddr, std::net::SocketAddr, Vec<TaskId>)> {
    let store = Arc::new(MemoryStore::new());
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..1000 {
        let task = NewTask::cron(format!("task {i}"), "bench-agent", "0 9 * * MON-FRI")
            .validate("bench", now)?;
        ids.push(store.create_task(task).await?.id);
    }
    // No scheduler: the bench measures the HTTP path, and nothing here is
    // due for hours.
    let state = ApiState::new(
        store,
        Arc::new(KeyTable::new().with_key(KEY, "bench", Scope::Write)),
    );
    let api: Router = tickwheel_http::router(state);
    let sample = json!({
        "id": TaskId::new(), "tenant": "bench", "name": "task 1", "description": "",
        "agent": "bench-agent", "prompt": "", "schedule": "0 9 * * MON-FRI", "run_at": null,
        "timezone": "UTC", "enabled": true, "status": "active", "channel_id": null,
        "notification": null, "policy": {"misfire": "fire_once", "overlap": "allow",
        "max_retries": 0, "retry_backoff_ms": 1000, "timeout_ms": null, "jitter_ms": 0},
        "last_run": null, "next_run": now, "created_at": now, "updated_at": now, "version": 1,
    });
    let bare: Router = Router::new().route(
        "/task",
        get(move || {
            let sample = sample.clone();
            async move { axum::Json(sample) }
        })
        .post(|axum::Json(body): axum::Json<Value>| async move { axum::Json(body) }),
    );
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addrs = (api_listener.local_addr()?, bare_listener.local_addr()?);
    tokio::spawn(async move { axum::serve(api_listener, api).await });
    tokio::spawn(async move { axum::serve(bare_listener, bare).await });
    Ok((addrs.0, addrs.1, ids))
}

/// Warm up for 1 s, then measure for `args.seconds`.
async fn drive(addr: std::net::SocketAddr, scenario: Scenario, args: &Args) -> Result<Outcome> {
    let _ = run_for(addr, &scenario, args.connections, Duration::from_secs(1)).await?;
    run_for(
        addr,
        &scenario,
        args.connections,
        Duration::from_secs(args.seconds),
    )
    .await
}

async fn run_for(
    addr: std::net::SocketAddr,
    scenario: &Scenario,
    connections: usize,
    window: Duration,
) -> Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for c in 0..connections {
        let scenario = scenario.clone();
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            connection(addr, scenario, stop, c).await
        }));
    }
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Outcome::default();
    for h in handles {
        let o = h.await??;
        total.requests += o.requests;
        total.errors += o.errors;
        total.latencies_us.extend(o.latencies_us);
    }
    Ok(total)
}

async fn connection(
    addr: std::net::SocketAddr,
    scenario: Scenario,
    stop: Arc<AtomicBool>,
    seed: usize,
) -> Result<Outcome> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut outcome = Outcome::default();
    let mut i = seed.wrapping_mul(7919);
    while !stop.load(Ordering::Relaxed) {
        i = i.wrapping_add(1);
        let path = &scenario.paths[i % scenario.paths.len()];
        let mut request = hyper::Request::builder()
            .method(scenario.method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", "UserKey bench-key");
        if scenario.body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(scenario.body.clone().unwrap_or_default()))?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        let _ = response.into_body().collect().await?;
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        outcome.requests += 1;
        if !ok {
            outcome.errors += 1;
        }
        outcome.latencies_us.push(us);
    }
    Ok(outcome)
}
