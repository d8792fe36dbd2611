//! The endpoint handlers. Each one: who is calling (extractor), what they
//! asked (extractors that answer 4xx with the field named), the store call,
//! and a nudge to the local engine after a write so it reschedules at once
//! (other processes learn through the store's change feed).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tickwheel::store::{ClaimOutcome, ExecutionQuery, MAX_PAGE, TaskPage};
use tickwheel::{ExecutionStatus, Schedule, TaskId, parse_timezone};

use crate::ApiState;
use crate::dto::{
    CreateTaskRequest, ExecutionsResponse, PreviewRequest, PreviewResponse, QueuedResponse,
    TaskResponse, UpdateTaskRequest,
};
use crate::error::{ApiError, ErrorBody, schedule_error};
use crate::extract::{JsonBody, QueryPairs, Reader, TaskPath, Writer};

/// Default page size of the task list.
const DEFAULT_TASK_PAGE: usize = 100;
/// Default and largest page size of the execution history.
const DEFAULT_EXECUTION_PAGE: usize = 50;
/// How often an update without a version retries after losing a race with
/// another writer (each retry re-reads the task).
const UPDATE_RETRIES: usize = 5;

/// List the caller's tasks, oldest first.
///
/// Keyset paging: `limit` (1–1000, default 100) and `after` (the last id
/// of the previous page). When the page is full, a `Link: <…>; rel="next"`
/// header points at the next one.
#[utoipa::path(
    get,
    path = "/api/v1/scheduled_tasks",
    tag = "tasks",
    params(
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)"),
        ("after" = Option<String>, Query, description = "Return tasks after this task id"),
    ),
    responses(
        (status = 200, description = "The tasks, oldest first", body = Vec<TaskResponse>),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn list_tasks(
    Reader(caller): Reader,
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let limit = query.number("limit", DEFAULT_TASK_PAGE, 1, MAX_PAGE)?;
    let page = match query.get("after").filter(|s| !s.trim().is_empty()) {
        None => TaskPage::first(limit),
        Some(raw) => {
            let after = raw.trim().parse::<TaskId>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("query parameter after: {raw:?} is not a task id"),
                )
                .with("field", "after")
            })?;
            TaskPage::after(after, limit)
        }
    };
    let tasks = state.store().list_tasks(&caller.tenant, page).await?;
    let next = (tasks.len() == limit)
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    let body: Vec<TaskResponse> = tasks.into_iter().map(TaskResponse::from).collect();
    let mut response = Json(body).into_response();
    if let Some(last) = next {
        let link = format!("<?limit={limit}&after={last}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// One task.
#[utoipa::path(
    get,
    path = "/api/v1/scheduled_tasks/{taskId}",
    tag = "tasks",
    params(("taskId" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = TaskResponse),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
        (status = 404, description = "No such task for this tenant", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn get_task(
    Reader(caller): Reader,
    State(state): State<ApiState>,
    TaskPath(id): TaskPath,
) -> Result<Json<TaskResponse>, ApiError> {
    let task = state.store().get_task(&caller.tenant, id).await?;
    Ok(Json(task.into()))
}

/// Create a task.
#[utoipa::path(
    post,
    path = "/api/v1/scheduled_tasks",
    tag = "tasks",
    request_body = CreateTaskRequest,
    responses(
        (status = 200, description = "The created task", body = TaskResponse),
        (status = 400, description = "Invalid JSON, field or schedule", body = ErrorBody),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
        (status = 403, description = "Read-only key", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn create_task(
    Writer(caller): Writer,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateTaskRequest>,
) -> Result<Json<TaskResponse>, ApiError> {
    let task = request
        .into_new_task()?
        .validate(&caller.tenant, state.now())?;
    let task = state.store().create_task(task).await?;
    state.nudge(&caller.tenant, task.id).await;
    tracing::info!(tenant = %caller.tenant, user = %caller.user, task = %task.id, "task created");
    Ok(Json(task.into()))
}

/// Change some fields of a task.
///
/// Only the fields given change. A new schedule, run time or zone
/// recomputes `next_run`; `enabled: false` pauses. With `version` in the
/// body or an `If-Match` header, the update applies only at that version
/// (409 otherwise).
#[utoipa::path(
    put,
    path = "/api/v1/scheduled_tasks/{taskId}",
    tag = "tasks",
    params(("taskId" = String, Path, description = "Task id")),
    request_body = UpdateTaskRequest,
    responses(
        (status = 200, description = "The updated task", body = TaskResponse),
        (status = 400, description = "Invalid JSON, field or schedule", body = ErrorBody),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
        (status = 403, description = "Read-only key", body = ErrorBody),
        (status = 404, description = "No such task for this tenant", body = ErrorBody),
        (status = 409, description = "The task is not at the given version", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn update_task(
    Writer(caller): Writer,
    State(state): State<ApiState>,
    TaskPath(id): TaskPath,
    headers: HeaderMap,
    JsonBody(request): JsonBody<UpdateTaskRequest>,
) -> Result<Json<TaskResponse>, ApiError> {
    let expected = match request.version {
        Some(v) => Some(v),
        None => if_match(&headers)?,
    };
    let store = state.store();
    if request.policy.is_none() {
        // Nothing merges with the current task: one conditional write.
        let patch = request.to_patch(&tickwheel::Policy::default())?;
        let task = store
            .update_task(&caller.tenant, id, &patch, expected, state.now())
            .await?;
        return Ok(updated(&state, &caller, task).await);
    }
    let mut attempts = 0;
    let task = loop {
        // The policy merges into the current one, so read it first; the
        // write is conditional on the version read.
        let current = store.get_task(&caller.tenant, id).await?;
        let patch = request.to_patch(&current.policy)?;
        let version = expected.unwrap_or(current.version);
        match store
            .update_task(&caller.tenant, id, &patch, Some(version), state.now())
            .await
        {
            Err(tickwheel::Error::Conflict { .. })
                if expected.is_none() && attempts < UPDATE_RETRIES =>
            {
                attempts += 1;
            }
            other => break other?,
        }
    };
    Ok(updated(&state, &caller, task).await)
}

/// After an update: nudge the engine, log, answer.
async fn updated(
    state: &ApiState,
    caller: &crate::Principal,
    task: tickwheel::Task,
) -> Json<TaskResponse> {
    state.nudge(&caller.tenant, task.id).await;
    tracing::info!(tenant = %caller.tenant, user = %caller.user, task = %task.id, version = task.version, "task updated");
    Json(task.into())
}

/// Delete a task and its history.
#[utoipa::path(
    delete,
    path = "/api/v1/scheduled_tasks/{taskId}",
    tag = "tasks",
    params(("taskId" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Deleted; empty body"),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
        (status = 403, description = "Read-only key", body = ErrorBody),
        (status = 404, description = "No such task for this tenant", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn delete_task(
    Writer(caller): Writer,
    State(state): State<ApiState>,
    TaskPath(id): TaskPath,
) -> Result<StatusCode, ApiError> {
    state.store().delete_task(&caller.tenant, id).await?;
    state.nudge(&caller.tenant, id).await;
    tracing::info!(tenant = %caller.tenant, user = %caller.user, task = %id, "task deleted");
    Ok(StatusCode::OK)
}

/// A task's execution history, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/scheduled_tasks/{taskId}/executions",
    tag = "executions",
    params(
        ("taskId" = String, Path, description = "Task id"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 50)"),
        ("offset" = Option<usize>, Query, description = "Skip this many of the newest"),
        ("status" = Option<ExecutionStatus>, Query, description = "Only executions with this status"),
    ),
    responses(
        (status = 200, description = "A page of history", body = ExecutionsResponse),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
        (status = 404, description = "No such task for this tenant", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn executions(
    Reader(caller): Reader,
    State(state): State<ApiState>,
    TaskPath(id): TaskPath,
    query: QueryPairs,
) -> Result<Json<ExecutionsResponse>, ApiError> {
    let limit = query.number("limit", DEFAULT_EXECUTION_PAGE, 1, MAX_PAGE)?;
    let offset = query.number("offset", 0, 0, usize::MAX)?;
    let status = match query.get("status").filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(raw) => Some(parse_status(raw)?),
    };
    let page = state
        .store()
        .executions(
            &caller.tenant,
            id,
            ExecutionQuery {
                limit,
                offset,
                status,
            },
        )
        .await?;
    Ok(Json(ExecutionsResponse {
        executions: page.executions,
        total: page.total,
        limit,
        offset,
    }))
}

/// Run a task now.
///
/// A manual occurrence: it counts in the history (trigger `manual`), obeys
/// the overlap policy and leaves `next_run` alone. The answer is the new
/// execution (`running`, or `skipped` under `overlap: skip` while a run is
/// in progress); under `overlap: queue_one` with a run in progress it is
/// `{"task_id","status":"queued"}` and the run starts when that one ends.
#[utoipa::path(
    post,
    path = "/api/v1/scheduled_tasks/{taskId}/run",
    tag = "executions",
    params(("taskId" = String, Path, description = "Task id")),
    responses(
        (status = 202, description = "The new execution", body = tickwheel::Execution),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
        (status = 403, description = "Read-only key", body = ErrorBody),
        (status = 404, description = "No such task for this tenant", body = ErrorBody),
        (status = 503, description = "No scheduler runs in this process, or it is shutting down", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn run_task(
    Writer(caller): Writer,
    State(state): State<ApiState>,
    TaskPath(id): TaskPath,
) -> Result<Response, ApiError> {
    let Some(scheduler) = state.scheduler() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no scheduler runs in this process, so it cannot run tasks",
        ));
    };
    let outcome = scheduler.trigger_now(&caller.tenant, id).await?;
    tracing::info!(tenant = %caller.tenant, user = %caller.user, task = %id, "manual run");
    let accepted = |body: Response| (StatusCode::ACCEPTED, body).into_response();
    match outcome {
        ClaimOutcome::Started(e)
        | ClaimOutcome::Skipped(e)
        | ClaimOutcome::Replaced { started: e, .. } => Ok(accepted(Json(e).into_response())),
        ClaimOutcome::Queued => Ok(accepted(
            Json(QueuedResponse {
                task_id: id,
                status: "queued".to_owned(),
            })
            .into_response(),
        )),
        ClaimOutcome::Lost { current: None } => Err(ApiError::task_not_found(&id.to_string())),
        other => Err(ApiError::internal(&format!(
            "manual run of {id} ended as {other:?}"
        ))),
    }
}

/// The next fire times of a schedule, without creating a task.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/preview",
    tag = "schedules",
    request_body = PreviewRequest,
    responses(
        (status = 200, description = "The next fire times", body = PreviewResponse),
        (status = 400, description = "Invalid JSON, field or schedule", body = ErrorBody),
        (status = 401, description = "Missing or unknown key", body = ErrorBody),
    ),
    security(("user_key" = []))
)]
pub(crate) async fn preview(
    Reader(_caller): Reader,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<PreviewRequest>,
) -> Result<Json<PreviewResponse>, ApiError> {
    let count = request.count.unwrap_or(5);
    if !(1..=100).contains(&count) {
        return Err(ApiError::invalid_field(
            "count",
            format!("{count} is not from 1 to 100"),
        ));
    }
    let Some(expr) = request.schedule.filter(|s| !s.trim().is_empty()) else {
        return Err(ApiError::invalid_field(
            "schedule",
            "is required: a cron expression",
        ));
    };
    let tz = parse_timezone(request.timezone.as_deref().unwrap_or("UTC"))
        .map_err(|e| schedule_error(&e))?;
    let schedule = Schedule::cron(&expr, tz).map_err(|e| schedule_error(&e))?;
    let from = request.from.unwrap_or_else(|| state.now());
    Ok(Json(PreviewResponse {
        next: schedule.upcoming(from).take(count).collect(),
    }))
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")),
)]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

/// 405 with the JSON error body.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path",
    )
}

fn parse_status(raw: &str) -> Result<ExecutionStatus, ApiError> {
    serde_json::from_value(serde_json::Value::String(raw.trim().to_ascii_lowercase())).map_err(
        |_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "query parameter status: {raw:?} is not one of running, succeeded, failed, timed_out, abandoned, skipped, missed"
                ),
            )
            .with("field", "status")
        },
    )
}

/// The version in an `If-Match` header (`"3"`, `3` or `W/"3"`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::invalid_field("If-Match", "must be a task version such as \"3\"");
    let text = value.to_str().map_err(|_| bad())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<u64>().map(Some).map_err(|_| bad())
}
