//! The API's request and response bodies, and their conversion to and from
//! the core model (where validation lives: [`NewTask::validate`] and
//! [`TaskPatch::apply`] decide what a valid task is, for the API and for
//! embedders alike).
//!
//! Request bodies accept the field names existing clients send
//! (`cron_string`, `selected_agent`, `task_description`, `schedule_time`,
//! `scheduled_time`) and ignore unknown fields. The zero time
//! `0001-01-01T00:00:00Z` and an empty cron string mean "none".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use tickwheel::{
    Execution, Misfire, NewTask, Notification, NotificationMethod, Overlap, Policy, Task, TaskId,
    TaskPatch,
};
use utoipa::ToSchema;

use crate::error::ApiError;

/// Body of `POST /api/v1/scheduled_tasks`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateTaskRequest {
    /// Required, 1–200 characters.
    pub name: Option<String>,
    /// Free text, at most 4 KiB (default empty).
    pub description: Option<String>,
    /// Required, 1–200 characters: what the executor runs. Alias:
    /// `selected_agent`.
    #[serde(alias = "selected_agent")]
    pub agent: Option<String>,
    /// Payload for the executor, at most 64 KiB (default: the
    /// description). Alias: `task_description`.
    #[serde(alias = "task_description")]
    pub prompt: Option<String>,
    /// Cron expression (5 or 6 fields, or a macro such as `@daily`). Give
    /// exactly one of `schedule` and `run_at`. Alias: `cron_string`, where
    /// an empty string means a one-time task.
    #[serde(alias = "cron_string")]
    pub schedule: Option<String>,
    /// RFC 3339 instant of a one-time task. Aliases: `schedule_time`,
    /// `scheduled_time`; the zero time `0001-01-01T00:00:00Z` means none.
    #[serde(alias = "schedule_time", alias = "scheduled_time")]
    pub run_at: Option<DateTime<Utc>>,
    /// IANA zone the cron expression is evaluated in (default `UTC`).
    pub timezone: Option<String>,
    /// False creates the task paused (default true).
    pub enabled: Option<bool>,
    /// Where results go: `#channel`, `@user` or an ID.
    pub channel_id: Option<String>,
    /// How results are announced.
    pub notification: Option<NotificationInput>,
    /// Run policy; every field optional.
    pub policy: Option<PolicyInput>,
}

/// Body of `PUT /api/v1/scheduled_tasks/{taskId}`: only the fields given
/// change. `null` clears a nullable field (`schedule`, `run_at`,
/// `channel_id`, `notification`, `policy.timeout_ms`); for the others it
/// means "unchanged". Policy fields merge into the current policy.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct UpdateTaskRequest {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New agent. Alias: `selected_agent`.
    #[serde(alias = "selected_agent")]
    pub agent: Option<String>,
    /// New prompt. Alias: `task_description`.
    #[serde(alias = "task_description")]
    pub prompt: Option<String>,
    /// New cron expression; `null` or `""` makes the task one-time (give
    /// `run_at`). Alias: `cron_string`.
    #[serde(alias = "cron_string", deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub schedule: Option<Option<String>>,
    /// New one-time instant; giving it makes the task one-time. Aliases:
    /// `schedule_time`, `scheduled_time`.
    #[serde(
        alias = "schedule_time",
        alias = "scheduled_time",
        deserialize_with = "nullable"
    )]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub run_at: Option<Option<DateTime<Utc>>>,
    /// New zone.
    pub timezone: Option<String>,
    /// `false` pauses, `true` resumes (from now: no misfire burst).
    pub enabled: Option<bool>,
    /// New channel; `null` clears it.
    #[serde(deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub channel_id: Option<Option<String>>,
    /// New notification; `null` clears it.
    #[serde(deserialize_with = "nullable")]
    #[schema(value_type = Option<NotificationInput>)]
    pub notification: Option<Option<NotificationInput>>,
    /// Policy fields to change; the others keep their value.
    pub policy: Option<PolicyInput>,
    /// Optimistic concurrency: apply only if the task is at this version
    /// (409 otherwise). The `If-Match` header does the same.
    pub version: Option<u64>,
}

/// A task's run policy in a request; absent fields keep their value (their
/// default on create).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PolicyInput {
    /// `fire_once` (default), `skip` or `catch_up`.
    pub misfire: Option<Misfire>,
    /// `allow` (default), `skip`, `queue_one` or `replace`.
    pub overlap: Option<Overlap>,
    /// Retries after a failed or timed-out run, 0–100 (default 0).
    pub max_retries: Option<u32>,
    /// First retry delay in ms, doubling per retry (default 1000).
    pub retry_backoff_ms: Option<u64>,
    /// Cancel a run after this many ms; `null` for no timeout.
    #[serde(deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub timeout_ms: Option<Option<u64>>,
    /// Spread runs by up to this many ms (deterministic per occurrence).
    pub jitter_ms: Option<u64>,
}

/// Where a task's results go, in a request. `method` is matched without
/// regard to case.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationInput {
    /// `Slack`, `Email`, `Http` or `Teams`.
    pub method: String,
    /// Address for the method (a URL for `Http`).
    pub destination: String,
}

/// A task as the API returns it: every field of the model, plus `task_id`
/// (the same as `id`, for clients that read that name).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResponse {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// Same as `id`.
    pub task_id: TaskId,
}

impl From<Task> for TaskResponse {
    fn from(task: Task) -> Self {
        Self {
            task_id: task.id,
            task,
        }
    }
}

/// A page of a task's execution history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionsResponse {
    /// The executions.
    pub executions: Vec<Execution>,
    /// How many executions match the filter in all.
    pub total: usize,
    /// The page size used.
    pub limit: usize,
    /// How many of the newest were skipped.
    pub offset: usize,
}

/// Body of `POST /api/v1/schedules/preview`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PreviewRequest {
    /// Cron expression. Alias: `cron_string`.
    #[serde(alias = "cron_string")]
    pub schedule: Option<String>,
    /// IANA zone (default `UTC`).
    pub timezone: Option<String>,
    /// Fire times after this instant (default now).
    pub from: Option<DateTime<Utc>>,
    /// How many fire times, 1–100 (default 5).
    pub count: Option<usize>,
}

/// The next fire times of a schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResponse {
    /// UTC instants, ascending.
    pub next: Vec<DateTime<Utc>>,
}

/// The answer to `POST …/run` when the task's overlap policy is
/// `queue_one` and a run is in progress: the run starts when that one ends.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedResponse {
    /// The task.
    pub task_id: TaskId,
    /// Always `queued`.
    pub status: String,
}

/// `Some(x)` for a present value, `Some(None)` for an explicit `null`; an
/// absent field stays `None` through `#[serde(default)]`.
fn nullable<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// The zero time some clients send for "no time".
fn is_zero_time(t: &DateTime<Utc>) -> bool {
    t.timestamp() == -62_135_596_800
}

fn cron_or_none(s: String) -> Option<String> {
    if s.trim().is_empty() { None } else { Some(s) }
}

impl NotificationInput {
    fn into_model(self) -> Result<Notification, ApiError> {
        let method = match self.method.trim().to_ascii_lowercase().as_str() {
            "slack" => NotificationMethod::Slack,
            "email" => NotificationMethod::Email,
            "http" => NotificationMethod::Http,
            "teams" => NotificationMethod::Teams,
            _ => {
                return Err(ApiError::invalid_field(
                    "notification.method",
                    format!("{:?} is not one of Slack, Email, Http, Teams", self.method),
                ));
            }
        };
        Ok(Notification {
            method,
            destination: self.destination,
        })
    }
}

impl PolicyInput {
    /// `base` with the given fields replaced.
    pub fn merge_into(self, base: Policy) -> Policy {
        Policy {
            misfire: self.misfire.unwrap_or(base.misfire),
            overlap: self.overlap.unwrap_or(base.overlap),
            max_retries: self.max_retries.unwrap_or(base.max_retries),
            retry_backoff_ms: self.retry_backoff_ms.unwrap_or(base.retry_backoff_ms),
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            jitter_ms: self.jitter_ms.unwrap_or(base.jitter_ms),
        }
    }
}

impl CreateTaskRequest {
    /// The core creation input. Missing required fields are left empty for
    /// [`NewTask::validate`] to name.
    pub fn into_new_task(self) -> Result<NewTask, ApiError> {
        Ok(NewTask {
            name: self.name.unwrap_or_default(),
            description: self.description,
            agent: self.agent.unwrap_or_default(),
            prompt: self.prompt,
            schedule: self.schedule.and_then(cron_or_none),
            run_at: self.run_at.filter(|t| !is_zero_time(t)),
            timezone: self.timezone,
            enabled: self.enabled,
            channel_id: self.channel_id,
            notification: self
                .notification
                .map(NotificationInput::into_model)
                .transpose()?,
            policy: self.policy.map(|p| p.merge_into(Policy::default())),
        })
    }
}

impl UpdateTaskRequest {
    /// The core patch; policy fields are merged into `current`'s policy.
    pub fn to_patch(&self, current: &Policy) -> Result<TaskPatch, ApiError> {
        Ok(TaskPatch {
            name: self.name.clone(),
            description: self.description.clone(),
            agent: self.agent.clone(),
            prompt: self.prompt.clone(),
            schedule: self.schedule.clone().map(|s| s.and_then(cron_or_none)),
            run_at: self.run_at.map(|t| t.filter(|t| !is_zero_time(t))),
            timezone: self.timezone.clone(),
            enabled: self.enabled,
            channel_id: self.channel_id.clone(),
            notification: self
                .notification
                .clone()
                .map(|n| n.map(NotificationInput::into_model).transpose())
                .transpose()?,
            policy: self.policy.map(|p| p.merge_into(*current)),
        })
    }
}
