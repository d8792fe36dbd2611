//! Rows ↔ model: column lists, decoding, and the text rules PostgreSQL
//! imposes (no NUL in `text`, microsecond timestamps).

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tickwheel::{
    Error, Execution, ExecutionId, Notification, Policy, Task, TaskId, model::NotificationMethod,
};

use crate::error::corrupt;

/// The task columns, in the order [`task_from_row`] reads them by name.
pub(crate) const TASK_COLUMNS: &str = "id, tenant, name, description, agent, prompt, schedule, \
    run_at, timezone, enabled, status, channel_id, notification_method, \
    notification_destination, misfire, overlap, max_retries, retry_backoff_ms, timeout_ms, \
    jitter_ms, last_run, next_run, created_at, updated_at, version";

/// The execution columns [`execution_from_row`] reads.
pub(crate) const EXECUTION_COLUMNS: &str = "id, task_id, tenant, scheduled_for, started_at, \
    finished_at, duration_ms, attempt, status, error, output, node, trigger, lease_until, \
    fence, retry_at";

/// The snake_case name serde gives a model enum (`"queue_one"`).
pub(crate) fn text_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_text<T: DeserializeOwned>(text: String, column: &str) -> Result<T, Error> {
    serde_json::from_value(serde_json::Value::String(text))
        .map_err(|e| corrupt(format!("column {column}: {e}")))
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column)
        .map_err(|e| corrupt(format!("column {column}: {e}")))
}

fn unsigned<T: TryFrom<i64>>(value: i64, column: &str) -> Result<T, Error> {
    T::try_from(value).map_err(|_| corrupt(format!("column {column}: {value} out of range")))
}

/// A task from a row holding [`TASK_COLUMNS`].
pub(crate) fn task_from_row(row: &PgRow) -> Result<Task, Error> {
    let method: Option<String> = get(row, "notification_method")?;
    let destination: Option<String> = get(row, "notification_destination")?;
    let notification = match (method, destination) {
        (Some(method), Some(destination)) => Some(Notification {
            method: parse_text::<NotificationMethod>(method, "notification_method")?,
            destination,
        }),
        _ => None,
    };
    let timeout_ms: Option<i64> = get(row, "timeout_ms")?;
    let policy = Policy {
        misfire: parse_text(get(row, "misfire")?, "misfire")?,
        overlap: parse_text(get(row, "overlap")?, "overlap")?,
        max_retries: unsigned(get::<i32>(row, "max_retries")?.into(), "max_retries")?,
        retry_backoff_ms: unsigned(get(row, "retry_backoff_ms")?, "retry_backoff_ms")?,
        timeout_ms: timeout_ms.map(|t| unsigned(t, "timeout_ms")).transpose()?,
        jitter_ms: unsigned(get(row, "jitter_ms")?, "jitter_ms")?,
    };
    Ok(Task {
        id: TaskId::from_uuid(get(row, "id")?),
        tenant: get(row, "tenant")?,
        name: get(row, "name")?,
        description: get(row, "description")?,
        agent: get(row, "agent")?,
        prompt: get(row, "prompt")?,
        schedule: get(row, "schedule")?,
        run_at: get(row, "run_at")?,
        timezone: get(row, "timezone")?,
        enabled: get(row, "enabled")?,
        status: parse_text(get(row, "status")?, "status")?,
        channel_id: get(row, "channel_id")?,
        notification,
        policy,
        last_run: get(row, "last_run")?,
        next_run: get(row, "next_run")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        version: unsigned(get(row, "version")?, "version")?,
    })
}

/// An execution from a row holding [`EXECUTION_COLUMNS`].
pub(crate) fn execution_from_row(row: &PgRow) -> Result<Execution, Error> {
    let duration_ms: Option<i64> = get(row, "duration_ms")?;
    Ok(Execution {
        id: ExecutionId::from_uuid(get(row, "id")?),
        task_id: TaskId::from_uuid(get(row, "task_id")?),
        tenant: get(row, "tenant")?,
        scheduled_for: get(row, "scheduled_for")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        duration_ms: duration_ms
            .map(|d| unsigned(d, "duration_ms"))
            .transpose()?,
        attempt: unsigned(get::<i32>(row, "attempt")?.into(), "attempt")?,
        status: parse_text(get(row, "status")?, "status")?,
        error: get(row, "error")?,
        output: get(row, "output")?,
        node: get(row, "node")?,
        trigger: parse_text(get(row, "trigger")?, "trigger")?,
        lease_until: get(row, "lease_until")?,
        fence: unsigned(get(row, "fence")?, "fence")?,
        retry_at: get(row, "retry_at")?,
    })
}

/// PostgreSQL `text` cannot hold NUL: a task field with one is refused.
pub(crate) fn check_text(field: &str, value: &str) -> Result<(), Error> {
    if value.contains('\0') {
        return Err(Error::invalid(
            field,
            "contains a NUL character, which PostgreSQL text cannot store",
        ));
    }
    Ok(())
}

/// Checks every string of a task for NUL (see [`check_text`]).
pub(crate) fn check_task(task: &Task) -> Result<(), Error> {
    check_text("tenant", &task.tenant)?;
    check_text("name", &task.name)?;
    check_text("description", &task.description)?;
    check_text("agent", &task.agent)?;
    check_text("prompt", &task.prompt)?;
    if let Some(s) = &task.schedule {
        check_text("schedule", s)?;
    }
    check_text("timezone", &task.timezone)?;
    if let Some(c) = &task.channel_id {
        check_text("channel_id", c)?;
    }
    if let Some(n) = &task.notification {
        check_text("notification.destination", &n.destination)?;
    }
    Ok(())
}

/// Run output and errors come from the executor and must not be lost for a
/// NUL: each NUL is stored as U+FFFD.
pub(crate) fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// A timestamp as PostgreSQL keeps it (microseconds).
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// The task's timestamps cut to what PostgreSQL keeps, so what a write
/// returns equals what a later read returns.
pub(crate) fn stored_task(mut task: Task) -> Task {
    task.run_at = task.run_at.map(micros);
    task.last_run = task.last_run.map(micros);
    task.next_run = task.next_run.map(micros);
    task.created_at = micros(task.created_at);
    task.updated_at = micros(task.updated_at);
    task
}

/// The execution's timestamps cut to what PostgreSQL keeps.
pub(crate) fn stored_execution(mut e: Execution) -> Execution {
    e.scheduled_for = micros(e.scheduled_for);
    e.started_at = micros(e.started_at);
    e.finished_at = e.finished_at.map(micros);
    e.lease_until = e.lease_until.map(micros);
    e.retry_at = e.retry_at.map(micros);
    e
}

pub(crate) fn i64_of(value: u64, field: &str) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::invalid(field, "is too large for PostgreSQL bigint"))
}

pub(crate) fn i32_of(value: u32, field: &str) -> Result<i32, Error> {
    i32::try_from(value).map_err(|_| Error::invalid(field, "is too large for PostgreSQL integer"))
}
