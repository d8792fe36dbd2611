//! The runnable tickwheel service: the Scheduled Tasks API and a scheduler
//! in one process.
//!
//! ```text
//! cargo run -p tickwheel-http --example server
//! ```
//!
//! Environment:
//! - `TICKWHEEL_BIND`: address to listen on (default `127.0.0.1:8080`;
//!   port 0 picks a free one). The address is printed as
//!   `listening on http://ADDR`.
//! - `TICKWHEEL_STORE`: `memory` (default), `postgres://…` or `redis://…`
//!   (comma-separated `redis://` URLs for a Redis Cluster). Several servers
//!   on one PostgreSQL or Redis store form a cluster: each occurrence runs
//!   once across them.
//! - `TICKWHEEL_API_KEYS`: comma-separated `KEY:TENANT:SCOPE` entries,
//!   SCOPE `read` or `write`. Without it one write key for tenant `default`
//!   is generated and printed.
//! - `TICKWHEEL_NODE_ID`: this instance's name in execution records
//!   (default `HOST-PID`).
//! - `TICKWHEEL_LEASE_MS`: how long a run's lease lasts before another
//!   instance may take it over (default 30000; renewed every third of it).
//! - `RUST_LOG`: log filter (default `info`).
//!
//! Each run is logged; when the task's notification method is `Http`, the
//! run is POSTed as JSON to the notification's destination, and a failed
//! POST (no answer, or not 2xx) fails the run, so the task's retry policy
//! applies. Plain `http://` only: this example has no TLS client.
//!
//! SIGINT or SIGTERM stops accepting requests, lets requests in flight
//! finish, then gives running tasks up to 30 s before recording them
//! `abandoned` (another instance on a shared store retries them).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tickwheel::{Executor, MemoryStore, NotificationMethod, Run, RunResult, Scheduler, Store};
use tickwheel_http::{ApiState, KeyTable, Scope};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;
use tracing_subscriber::EnvFilter;

/// How long the server waits at start for a store that is unavailable.
const STORE_PATIENCE: Duration = Duration::from_secs(60);
/// How long running tasks get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Longest wait for a notification POST (a task's own timeout can cut it
/// shorter).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let bind = env("TICKWHEEL_BIND").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let store = open_store_patiently(env("TICKWHEEL_STORE").as_deref().unwrap_or("memory")).await?;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let addr = listener.local_addr()?;
    let keys = match env("TICKWHEEL_API_KEYS") {
        Some(spec) => KeyTable::parse(&spec).context("TICKWHEEL_API_KEYS")?,
        None => {
            let key = generate_key();
            println!("API key (tenant default, write): {key}");
            println!(
                "  try: curl -H 'Authorization: UserKey {key}' http://{addr}/api/v1/scheduled_tasks"
            );
            KeyTable::new().with_key(&key, "default", Scope::Write)
        }
    };
    if keys.is_empty() {
        bail!("TICKWHEEL_API_KEYS holds no key");
    }
    let node = env("TICKWHEEL_NODE_ID").unwrap_or_else(default_node_id);

    let lease = match env("TICKWHEEL_LEASE_MS") {
        Some(ms) => Duration::from_millis(
            ms.parse::<u64>()
                .ok()
                .filter(|ms| *ms >= 100)
                .with_context(|| {
                    format!("TICKWHEEL_LEASE_MS={ms:?}: expected milliseconds, at least 100")
                })?,
        ),
        None => Duration::from_secs(30),
    };
    let scheduler = Scheduler::builder(store.clone(), Notifier::new())
        .node_id(node.clone())
        .lease(lease)
        .start();
    let state = ApiState::new(store, Arc::new(keys)).with_scheduler(scheduler.handle());
    let app = Router::new()
        .merge(tickwheel_http::router(state))
        .fallback(tickwheel_http::not_found)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        );

    println!("listening on http://{addr} (node {node})");
    tracing::info!(%addr, node, "serving the Scheduled Tasks API");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    tracing::info!("HTTP server stopped; stopping the scheduler");
    let report = scheduler.shutdown(SHUTDOWN_GRACE).await;
    tracing::info!(
        finished = report.finished,
        abandoned = report.abandoned,
        "scheduler stopped"
    );
    Ok(())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// [`open_store`], retried with backoff for up to a minute while the store
/// is unavailable (starting, restarting, loading its data): a service that
/// starts next to its database should wait for it, not exit. Other errors
/// (a bad URL, a failed migration) end the start at once.
async fn open_store_patiently(url: &str) -> Result<Arc<dyn Store>> {
    let deadline = std::time::Instant::now() + STORE_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        match open_store(url).await {
            Ok(store) => return Ok(store),
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.chain().any(|c| {
                        c.downcast_ref::<tickwheel::Error>()
                            .is_some_and(tickwheel::Error::is_transient)
                    }) =>
            {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "store unavailable at start; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `memory`, `postgres://…` (migrations applied on connect) or `redis://…`
/// (several comma-separated URLs: a Redis Cluster).
async fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    if url == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = tickwheel_postgres::PgStore::connect(url)
            .await
            .context("connecting to PostgreSQL (TICKWHEEL_STORE)")?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let store = if urls.len() > 1 {
            tickwheel_redis::RedisStore::connect_cluster(&urls).await
        } else {
            tickwheel_redis::RedisStore::connect(url).await
        }
        .context("connecting to Redis (TICKWHEEL_STORE)")?;
        return Ok(Arc::new(store));
    }
    bail!("TICKWHEEL_STORE={url:?}: expected `memory`, `postgres://…` or `redis://…`")
}

/// 244 random bits as text.
fn generate_key() -> String {
    format!(
        "tw_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// The example's executor: logs each run and POSTs it to `Http`
/// notification destinations.
#[derive(Debug, Clone)]
struct Notifier {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Notifier {
    fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Result<u16, String> {
        if url.starts_with("https://") {
            return Err("https destinations need a TLS client, which this example does not have; use http://".to_owned());
        }
        let request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad destination {url:?}: {e}"))?;
        let response = tokio::time::timeout(NOTIFY_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("POST {url}: no answer within {NOTIFY_TIMEOUT:?}"))?
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        // Drain the answer so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(format!("POST {url}: answered {status}"))
        }
    }
}

#[async_trait::async_trait]
impl Executor for Notifier {
    async fn run(&self, run: Run) -> RunResult {
        let task = &run.task;
        let e = &run.execution;
        tracing::info!(
            task = %task.id,
            name = %task.name,
            agent = %task.agent,
            scheduled_for = %e.scheduled_for,
            attempt = e.attempt,
            trigger = ?e.trigger,
            execution = %e.id,
            "run"
        );
        let Some(notification) = &task.notification else {
            return Ok(None);
        };
        if notification.method != NotificationMethod::Http {
            return Ok(None);
        }
        let body = serde_json::json!({
            "task_id": task.id,
            "tenant": task.tenant,
            "name": task.name,
            "agent": task.agent,
            "prompt": task.prompt,
            "channel_id": task.channel_id,
            "execution_id": e.id,
            "scheduled_for": e.scheduled_for,
            "started_at": e.started_at,
            "attempt": e.attempt,
            "trigger": e.trigger,
            "node": e.node,
        });
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        tokio::select! {
            result = self.post(&notification.destination, body) => {
                result.map(|status| Some(format!("POST {} answered {status}", notification.destination)))
            }
            () = run.cancel.cancelled() => Err("cancelled".to_owned()),
        }
    }
}
