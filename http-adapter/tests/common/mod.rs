//! A router over a memory store, called through `oneshot` (no sockets).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tickwheel::{Clock, ManualClock, MemoryStore, Run, Scheduler, executor_fn};
use tickwheel_http::{ApiState, KeyTable, Scope};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Write key of tenant acme.
pub const ACME: &str = "acme-write-key";
/// Read-only key of tenant acme.
pub const ACME_READ: &str = "acme-read-key";
/// Write key of tenant globex.
pub const GLOBEX: &str = "globex-write-key";

pub struct Api {
    pub app: Router,
    pub store: Arc<MemoryStore>,
    pub scheduler: Option<Scheduler>,
    pub clock: Arc<ManualClock>,
    pub runs: mpsc::UnboundedReceiver<Run>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.raw))
    }
}

fn keys() -> KeyTable {
    KeyTable::new()
        .with_key(ACME, "acme", Scope::Write)
        .with_key(ACME_READ, "acme", Scope::Read)
        .with_key(GLOBEX, "globex", Scope::Write)
}

/// 2030-01-01T00:00:00Z.
pub fn t0() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_893_456_000, 0).unwrap()
}

impl Api {
    /// A router with a scheduler on a manual clock at [`t0`]; each run is
    /// sent to `runs` and succeeds.
    pub fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(t0()));
        let (tx, runs) = mpsc::unbounded_channel();
        let scheduler = Scheduler::builder(
            store.clone(),
            executor_fn(move |run: Run| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(run);
                    Ok(Some("done".to_owned()))
                }
            }),
        )
        .clock(clock.clone() as Arc<dyn Clock>)
        .node_id("test-node")
        .start();
        let state = ApiState::new(store.clone(), Arc::new(keys()))
            .with_scheduler(scheduler.handle())
            .with_clock(clock.clone() as Arc<dyn Clock>);
        Self {
            app: tickwheel_http::router(state),
            store,
            scheduler: Some(scheduler),
            clock,
            runs,
        }
    }

    /// A router with no scheduler in the process.
    pub fn without_scheduler() -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(t0()));
        let (_tx, runs) = mpsc::unbounded_channel();
        let state = ApiState::new(store.clone(), Arc::new(keys()))
            .with_clock(clock.clone() as Arc<dyn Clock>);
        Self {
            app: tickwheel_http::router(state),
            store,
            scheduler: None,
            clock,
            runs,
        }
    }

    /// Sends a request; `body` is sent as JSON text with
    /// `Content-Type: application/json`.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("authorization", format!("UserKey {key}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    /// Sends a prepared request.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let raw = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or_else(|e| {
                panic!(
                    "{status}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&raw)
                )
            })
        };
        Answer {
            status,
            headers,
            body,
            raw,
        }
    }

    pub async fn get(&self, uri: &str, key: &str) -> Answer {
        self.call(Method::GET, uri, Some(key), None).await
    }

    pub async fn post(&self, uri: &str, key: &str, body: &str) -> Answer {
        self.call(Method::POST, uri, Some(key), Some(body)).await
    }

    pub async fn put(&self, uri: &str, key: &str, body: &str) -> Answer {
        self.call(Method::PUT, uri, Some(key), Some(body)).await
    }

    pub async fn delete(&self, uri: &str, key: &str) -> Answer {
        self.call(Method::DELETE, uri, Some(key), None).await
    }

    /// Creates a task (must succeed) and returns its JSON.
    pub async fn create(&self, key: &str, body: &str) -> Value {
        let a = self.post("/api/v1/scheduled_tasks", key, body).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        a.body
    }

    /// The next run handed to the executor, waiting up to 5 s.
    pub async fn next_run(&mut self) -> Run {
        tokio::time::timeout(Duration::from_secs(5), self.runs.recv())
            .await
            .expect("a run within 5 s")
            .expect("executor alive")
    }
}

/// Asserts an error answer: status, code, and that the message mentions
/// `needle`.
#[track_caller]
pub fn assert_error(a: &Answer, status: StatusCode, code: &str, needle: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.body["error"]["code"], code, "{a:?}");
    let message = a.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} lacks {needle:?}"
    );
    assert!(a.body["error"]["details"].is_object(), "{a:?}");
}

/// A minimal valid cron task body.
pub fn cron_body(name: &str, schedule: &str) -> String {
    serde_json::json!({"name": name, "agent": "agent-1", "schedule": schedule}).to_string()
}
