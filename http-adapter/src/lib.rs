//! tickwheel-http: the REST adapter that serves the Scheduled Tasks API.
//!
//! [`router`] returns an axum [`Router`] for a host to `nest` or `merge`
//! next to its own routes. Its [`ApiState`] holds the [`Store`], the handle
//! of the process's [`Scheduler`](tickwheel::Scheduler) (for manual runs
//! and to reschedule at once after a write) and the [`Authenticator`].
//!
//! | method | path | success |
//! |---|---|---|
//! | GET | `/api/v1/scheduled_tasks` | 200, tasks oldest first (`?limit=&after=`) |
//! | POST | `/api/v1/scheduled_tasks` | 200, the created task |
//! | GET | `/api/v1/scheduled_tasks/{taskId}` | 200, the task |
//! | PUT | `/api/v1/scheduled_tasks/{taskId}` | 200, the task; only given fields change |
//! | DELETE | `/api/v1/scheduled_tasks/{taskId}` | 200, empty body |
//! | GET | `/api/v1/scheduled_tasks/{taskId}/executions` | 200, `{executions,total,limit,offset}` |
//! | POST | `/api/v1/scheduled_tasks/{taskId}/run` | 202, the new execution |
//! | POST | `/api/v1/schedules/preview` | 200, `{"next":[…]}` |
//! | GET | `/api/v1/openapi.json` | 200, the OpenAPI 3.1 document |
//!
//! Errors are `{"error":{"code","message","details"}}` ([`ApiError`]): 400
//! (bad JSON, field, cron; the message names the field and the token), 401
//! (missing, malformed or unknown key), 403 (read-only key writing), 404
//! (unknown task, or another tenant's), 405, 409 (version mismatch), 413
//! (body over 256 KiB), 415 (not JSON), 503 (store unavailable, scheduler
//! stopping). 500 bodies are generic; the detail goes to `tracing`, and a
//! panic in a handler becomes such a 500 rather than a dropped connection.
//!
//! Choices where the specification is silent:
//! - The OpenAPI document is public (no key needed): it describes the API,
//!   not anyone's data.
//! - `PUT` merges `policy` field by field; `null` clears nullable fields.
//!   Without a `version` (or `If-Match`), the other fields apply atomically
//!   to the task as it is; a `policy` change reads the current policy,
//!   writes on that version, and retries a few times if another writer got
//!   in between.
//! - `POST …/run` needs a scheduler in this process (503 otherwise).
//! - Another tenant's task and a malformed id are the same 404 as an
//!   unknown id.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::Router;
//! use axum::routing::get;
//! use tickwheel::{MemoryStore, Scheduler, executor_fn};
//! use tickwheel_http::{ApiState, KeyTable, Scope};
//!
//! # async fn run() -> std::io::Result<()> {
//! let store = Arc::new(MemoryStore::new());
//! let scheduler = Scheduler::builder(store.clone(), executor_fn(|run| async move {
//!     println!("running {}", run.task.name);
//!     Ok(None)
//! }))
//! .start();
//! let keys = KeyTable::new().with_key("secret", "acme", Scope::Write);
//! let state = ApiState::new(store, Arc::new(keys)).with_scheduler(scheduler.handle());
//!
//! // The host's own routes, with the scheduler API under /scheduler.
//! let app: Router = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     .nest("/scheduler", tickwheel_http::router(state));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod auth;
mod dto;
mod error;
mod extract;
mod handlers;
mod openapi;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use tickwheel::{Clock, SchedulerHandle, Store, SystemClock, TaskId};

pub use auth::{AuthError, Authenticator, KeyTable, KeyTableError, Principal, Scope};
pub use dto::{
    CreateTaskRequest, ExecutionsResponse, NotificationInput, PolicyInput, PreviewRequest,
    PreviewResponse, QueuedResponse, TaskResponse, UpdateTaskRequest,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use extract::MAX_BODY_BYTES;
pub use openapi::openapi;

/// What the handlers share: the store, the local scheduler (if any), the
/// authenticator and the clock. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    auth: Arc<dyn Authenticator>,
    scheduler: Option<SchedulerHandle>,
    clock: Arc<dyn Clock>,
}

impl ApiState {
    /// State over `store`, authenticating with `auth`, with no scheduler
    /// (manual runs answer 503) and the system clock.
    pub fn new(store: Arc<dyn Store>, auth: Arc<dyn Authenticator>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                auth,
                scheduler: None,
                clock: Arc::new(SystemClock),
            }),
        }
    }

    /// Uses `scheduler` for manual runs and to reschedule right after a
    /// write.
    #[must_use]
    pub fn with_scheduler(self, scheduler: SchedulerHandle) -> Self {
        self.map(|inner| inner.scheduler = Some(scheduler))
    }

    /// Uses `clock` for `created_at`, `updated_at` and `next_run` (tests
    /// drive a manual clock; the scheduler should share it).
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.map(|inner| inner.clock = clock)
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            store: shared.store.clone(),
            auth: shared.auth.clone(),
            scheduler: shared.scheduler.clone(),
            clock: shared.clock.clone(),
        });
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn store(&self) -> &dyn Store {
        &*self.inner.store
    }

    pub(crate) fn auth(&self) -> &dyn Authenticator {
        &*self.inner.auth
    }

    pub(crate) fn scheduler(&self) -> Option<&SchedulerHandle> {
        self.inner.scheduler.as_ref()
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Tells the local engine a task changed, so it reschedules now rather
    /// than when the change feed delivers.
    pub(crate) async fn nudge(&self, tenant: &str, id: TaskId) {
        if let Some(scheduler) = &self.inner.scheduler {
            scheduler.refresh(tenant, id).await;
        }
    }
}

/// The API's routes, ready to `nest` or `merge` into a host's router (any
/// state type `S`). Paths start with `/api/v1`; see the crate docs.
pub fn router<S>(state: ApiState) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    use handlers::*;
    Router::new()
        .route("/api/v1/scheduled_tasks", get(list_tasks).post(create_task))
        .route(
            "/api/v1/scheduled_tasks/{task_id}",
            get(get_task).put(update_task).delete(delete_task),
        )
        .route(
            "/api/v1/scheduled_tasks/{task_id}/executions",
            get(executions),
        )
        .route("/api/v1/scheduled_tasks/{task_id}/run", post(run_task))
        .route("/api/v1/schedules/preview", post(preview))
        .route("/api/v1/openapi.json", get(handlers::openapi))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(state)
}

/// A 404 in the API's error format, for hosts that want it as their
/// fallback (the example server does).
pub async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}

fn on_panic(_panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::internal(&"a request handler panicked").into_response()
}

/// The README's examples compile (and those not marked `no_run` run) as
/// doc tests of this crate, which can reach every crate they use.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
