//! The data model: tasks, their policies, and executions.
//!
//! A [`Task`] is one schedule owned by one tenant. Writes go through
//! [`NewTask`] (create) and [`TaskPatch`] (partial update); both are checked
//! by [`NewTask::validate`] / [`TaskPatch::apply`], the one place that decides
//! what a valid task is, used by every store and by the REST adapter.
//!
//! Times are UTC. Identifiers are UUIDv7, so they sort by creation time.
//!
//! The model structs are plain data with public fields (so stores in other
//! crates can build them and callers can use struct-update syntax with
//! `Default`); adding a field is a breaking change.
//!
//! Limits (bytes unless noted): `name` and `agent` 1–200 characters,
//! `description` ≤ 4 KiB, `prompt` ≤ 64 KiB, `channel_id` ≤ 200 characters,
//! notification destination ≤ 2 KiB, execution `output` ≤ 64 KiB (longer
//! output is truncated at a character boundary and marked), `error` ≤ 8 KiB.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
use crate::schedule::{Schedule, parse_timezone};

/// Most characters in a task's `name` or `agent`.
pub const MAX_NAME_CHARS: usize = 200;
/// Most bytes in a task's `description`.
pub const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;
/// Most bytes in a task's `prompt`.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// Most bytes of an execution's `output` kept; the rest is cut off.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Most bytes of an execution's `error` kept.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;
/// Upper bound of `policy.max_retries`.
pub const MAX_RETRIES: u32 = 100;
/// Upper bound of retry backoff (and of `policy.retry_backoff_ms`): 10 min.
pub const MAX_BACKOFF_MS: u64 = 10 * 60 * 1000;
/// Upper bound of `policy.jitter_ms`: 1 hour.
pub const MAX_JITTER_MS: u64 = 60 * 60 * 1000;
/// Upper bound of `policy.timeout_ms`: 7 days.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1000;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new identifier, ordered after every one made before it in
            /// this process (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The identifier as a UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// An identifier from a UUID.
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.as_hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

/// A hasher for maps keyed by [`TaskId`] or [`ExecutionId`]: the last 8
/// bytes of the id, mixed. Of those bytes a UUIDv7 from the `uuid` crate
/// has a counter in the first four (the low part of a 42-bit counter that
/// goes up by one per id within a millisecond) and random bits in the
/// other four, so unmixed the low bits, which pick a bucket, repeat across
/// ids made together: 1M ids in one map took 2.4 times as long to insert
/// (`benches/README.md`). One multiply and two shifts fold the random half
/// into every bit. Ids are made by the server, never chosen by a client,
/// so this cannot be steered into collisions.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        match bytes.last_chunk::<8>() {
            Some(tail) => self.0 ^= u64::from_le_bytes(*tail),
            None => {
                for b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }

    fn write_usize(&mut self, _len: usize) {}

    fn finish(&self) -> u64 {
        let x = (self.0 ^ (self.0 >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 32)
    }
}

/// A `HashMap` keyed by ids, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A `HashSet` of ids, hashed with [`IdHasher`].
pub(crate) type IdSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<IdHasher>>;

id_type!(
    /// Identifier of a [`Task`].
    TaskId
);
id_type!(
    /// Identifier of an [`Execution`].
    ExecutionId
);

/// Lifecycle state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskStatus {
    /// Enabled and scheduled.
    Active,
    /// Disabled (`enabled: false`): no runs fire.
    Paused,
    /// A one-time task whose run succeeded.
    Completed,
    /// A one-time task whose run failed after all retries.
    Failed,
}

/// What happens to occurrences that passed while no scheduler ran the task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Misfire {
    /// One catch-up run for all of them, then continue.
    #[default]
    FireOnce,
    /// Record them as `missed` and continue with the next future time.
    Skip,
    /// Run each one, oldest first (at most 100).
    CatchUp,
}

/// What happens when an occurrence comes while the previous run still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Overlap {
    /// Run them side by side.
    #[default]
    Allow,
    /// Record the new occurrence as `skipped`.
    Skip,
    /// Run it right after the current one; at most one waits.
    QueueOne,
    /// Cancel the running one and start the new one.
    Replace,
}

/// How a task's runs are governed; every field has a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Missed occurrences: see [`Misfire`].
    pub misfire: Misfire,
    /// Overlapping runs: see [`Overlap`].
    pub overlap: Overlap,
    /// Retries after a failed or timed-out run (default 0, at most 100).
    pub max_retries: u32,
    /// First retry delay; doubles per attempt, capped at 10 minutes
    /// (default 1000).
    pub retry_backoff_ms: u64,
    /// Cancel a run after this long and record it `timed_out` (default none).
    pub timeout_ms: Option<u64>,
    /// Spread runs by up to this much after their time, by a deterministic
    /// offset from the task id and occurrence (default 0).
    pub jitter_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            misfire: Misfire::FireOnce,
            overlap: Overlap::Allow,
            max_retries: 0,
            retry_backoff_ms: 1000,
            timeout_ms: None,
            jitter_ms: 0,
        }
    }
}

impl Policy {
    /// Checks the bounds documented on each field.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_retries > MAX_RETRIES {
            return Err(Error::invalid(
                "policy.max_retries",
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        if self.retry_backoff_ms == 0 || self.retry_backoff_ms > MAX_BACKOFF_MS {
            return Err(Error::invalid(
                "policy.retry_backoff_ms",
                format!("must be between 1 and {MAX_BACKOFF_MS}"),
            ));
        }
        if self
            .timeout_ms
            .is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS)
        {
            return Err(Error::invalid(
                "policy.timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        if self.jitter_ms > MAX_JITTER_MS {
            return Err(Error::invalid(
                "policy.jitter_ms",
                format!("must be at most {MAX_JITTER_MS}"),
            ));
        }
        Ok(())
    }

    /// The jitter of occurrence `at` of `task`: an offset in
    /// `0..=jitter_ms` milliseconds, a hash of the id and the occurrence's
    /// Unix milliseconds, so every node computes the same one.
    pub fn jitter(&self, task: TaskId, at: DateTime<Utc>) -> chrono::Duration {
        if self.jitter_ms == 0 {
            return chrono::Duration::zero();
        }
        let (hi, lo) = task.as_uuid().as_u64_pair();
        let h = mix64(hi ^ mix64(lo ^ mix64(at.timestamp_millis() as u64)));
        chrono::Duration::milliseconds((h % (self.jitter_ms + 1)) as i64)
    }

    /// Delay before retry number `retry` (1-based): the backoff doubled per
    /// earlier retry, capped at 10 minutes.
    pub fn backoff(&self, retry: u32) -> std::time::Duration {
        let factor = 1u64 << retry.saturating_sub(1).min(32);
        std::time::Duration::from_millis(
            self.retry_backoff_ms
                .saturating_mul(factor)
                .min(MAX_BACKOFF_MS),
        )
    }
}

/// splitmix64's finalizer: a few multiplies, evenly spread, the same in
/// every process and version (jitter offsets, task owners).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a task's results are announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum NotificationMethod {
    /// A Slack message.
    Slack,
    /// An email.
    Email,
    /// An HTTP POST to a URL.
    Http,
    /// A Microsoft Teams message.
    Teams,
}

/// Where a task's results go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// The channel.
    pub method: NotificationMethod,
    /// Address for the channel: a URL for `Http`, an address for `Email`.
    pub destination: String,
}

/// One scheduled task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    /// Server-assigned, sortable by creation.
    pub id: TaskId,
    /// Owning organisation.
    pub tenant: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// What the executor runs.
    pub agent: String,
    /// Payload handed to the executor.
    pub prompt: String,
    /// Cron expression, for recurring tasks.
    pub schedule: Option<String>,
    /// Instant, for one-time tasks.
    pub run_at: Option<DateTime<Utc>>,
    /// IANA zone the cron expression is evaluated in.
    pub timezone: String,
    /// False while paused.
    pub enabled: bool,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// Where results go, Slack-style.
    pub channel_id: Option<String>,
    /// How results are announced.
    pub notification: Option<Notification>,
    /// Run policy.
    pub policy: Policy,
    /// Start of the latest run.
    pub last_run: Option<DateTime<Utc>>,
    /// Next occurrence (before jitter), or none.
    pub next_run: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
    /// Bumped on every write.
    pub version: u64,
}

impl Task {
    /// The task's schedule, compiled.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if the stored schedule no longer parses (only
    /// possible for data written outside tickwheel).
    pub fn compiled_schedule(&self) -> Result<Schedule, Error> {
        compile(self.schedule.as_deref(), self.run_at, &self.timezone)
    }
}

fn compile(
    schedule: Option<&str>,
    run_at: Option<DateTime<Utc>>,
    timezone: &str,
) -> Result<Schedule, Error> {
    if let (Some(expr), None) = (schedule, run_at) {
        return compile_cron(expr, timezone);
    }
    parse_timezone(timezone).map_err(Error::InvalidSchedule)?;
    match (schedule, run_at) {
        (None, Some(at)) => Ok(Schedule::once(at)),
        (Some(_), _) => Err(Error::invalid(
            "schedule",
            "give either schedule or run_at, not both",
        )),
        (None, None) => Err(Error::invalid(
            "schedule",
            "a task needs a schedule (cron) or a run_at time",
        )),
    }
}

thread_local! {
    /// The last cron schedule this thread compiled, by expression and zone:
    /// tasks are often created (and their schedules read back) in runs on
    /// one expression, and a hit costs two string compares instead of a
    /// parse and a zone lookup.
    static LAST_CRON: std::cell::RefCell<(String, String, Option<Schedule>)> =
        const { std::cell::RefCell::new((String::new(), String::new(), None)) };
}

/// [`Schedule::cron`] in the zone named `timezone`, through [`LAST_CRON`].
fn compile_cron(expr: &str, timezone: &str) -> Result<Schedule, Error> {
    let compile = || {
        let tz = parse_timezone(timezone).map_err(Error::InvalidSchedule)?;
        Schedule::cron(expr, tz).map_err(Error::InvalidSchedule)
    };
    // Without the cache while the thread's locals are being torn down.
    LAST_CRON
        .try_with(|last| {
            let mut last = last.borrow_mut();
            let (last_expr, last_zone, last_schedule) = &mut *last;
            if let Some(schedule) = *last_schedule
                && last_expr == expr
                && last_zone == timezone
            {
                return Ok(schedule);
            }
            let schedule = compile()?;
            last_expr.clear();
            last_expr.push_str(expr);
            last_zone.clear();
            last_zone.push_str(timezone);
            *last_schedule = Some(schedule);
            Ok(schedule)
        })
        .unwrap_or_else(|_| compile())
}

/// The input of a task creation, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTask {
    /// Required, 1–200 characters.
    pub name: String,
    /// Default `""`.
    pub description: Option<String>,
    /// Required, 1–200 characters.
    pub agent: String,
    /// Default: the description.
    pub prompt: Option<String>,
    /// Cron expression; exactly one of `schedule` and `run_at`.
    pub schedule: Option<String>,
    /// One-time instant.
    pub run_at: Option<DateTime<Utc>>,
    /// Default `UTC`.
    pub timezone: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Optional.
    pub channel_id: Option<String>,
    /// Optional.
    pub notification: Option<Notification>,
    /// Default policy if absent.
    pub policy: Option<Policy>,
}

impl NewTask {
    /// A creation input with the two required fields and a cron schedule.
    pub fn cron(
        name: impl Into<String>,
        agent: impl Into<String>,
        schedule: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            agent: agent.into(),
            schedule: Some(schedule.into()),
            ..Self::default()
        }
    }

    /// A creation input with the two required fields and a one-time instant.
    pub fn once(name: impl Into<String>, agent: impl Into<String>, run_at: DateTime<Utc>) -> Self {
        Self {
            name: name.into(),
            agent: agent.into(),
            run_at: Some(run_at),
            ..Self::default()
        }
    }

    /// Validates the input and builds the task for `tenant` at time `now`,
    /// with a fresh id, version 1 and `next_run` computed from the schedule.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] or [`Error::InvalidSchedule`] naming what is wrong.
    pub fn validate(self, tenant: &str, now: DateTime<Utc>) -> Result<Task, Error> {
        check_tenant(tenant)?;
        let description = self.description.unwrap_or_default();
        let prompt = self.prompt.unwrap_or_else(|| description.clone());
        let mut task = Task {
            id: TaskId::new(),
            tenant: tenant.to_owned(),
            name: self.name,
            description,
            agent: self.agent,
            prompt,
            schedule: self.schedule,
            run_at: self.run_at,
            timezone: self.timezone.unwrap_or_else(|| "UTC".to_owned()),
            enabled: self.enabled.unwrap_or(true),
            status: TaskStatus::Active,
            channel_id: self.channel_id,
            notification: self.notification,
            policy: self.policy.unwrap_or_default(),
            last_run: None,
            next_run: None,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        check_fields(&task)?;
        let schedule = task.compiled_schedule()?;
        task.status = if task.enabled {
            TaskStatus::Active
        } else {
            TaskStatus::Paused
        };
        task.next_run = first_run(&schedule, now);
        Ok(task)
    }
}

/// The first occurrence of a new or rescheduled task: the next fire time
/// after `now` (a cron schedule), or the instant itself however old (a
/// one-time task runs once, late if its time has passed).
pub fn first_run(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match schedule.run_at() {
        Some(at) => Some(at),
        None => schedule.next_after(now),
    }
}

/// A partial update: fields left `None` keep their value. Nullable fields
/// are `Option<Option<_>>`: `Some(None)` clears them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New agent.
    pub agent: Option<String>,
    /// New prompt.
    pub prompt: Option<String>,
    /// New cron expression (`Some(None)`: none, the task becomes one-time).
    pub schedule: Option<Option<String>>,
    /// New one-time instant (`Some(None)`: none).
    pub run_at: Option<Option<DateTime<Utc>>>,
    /// New zone.
    pub timezone: Option<String>,
    /// Pause (`false`) or resume (`true`).
    pub enabled: Option<bool>,
    /// New channel.
    pub channel_id: Option<Option<String>>,
    /// New notification.
    pub notification: Option<Option<Notification>>,
    /// New policy (replaces the whole policy).
    pub policy: Option<Policy>,
}

impl TaskPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the patch to `task` at time `now`: validates the result, bumps
    /// `version` and `updated_at`, and recomputes `next_run` when the timing
    /// changed (schedule, run_at, timezone) or the task is resumed.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] or [`Error::InvalidSchedule`]; `task` is left
    /// unchanged on error.
    pub fn apply(&self, task: &Task, now: DateTime<Utc>) -> Result<Task, Error> {
        let mut next = task.clone();
        let p = self.clone();
        set(&mut next.name, p.name);
        set(&mut next.description, p.description);
        set(&mut next.agent, p.agent);
        set(&mut next.prompt, p.prompt);
        // Giving one of schedule / run_at switches the task's kind.
        match (p.schedule, p.run_at) {
            (Some(Some(s)), None) => {
                next.schedule = Some(s);
                next.run_at = None;
            }
            (None, Some(Some(at))) => {
                next.run_at = Some(at);
                next.schedule = None;
            }
            (s, r) => {
                set(&mut next.schedule, s);
                set(&mut next.run_at, r);
            }
        }
        set(&mut next.timezone, p.timezone);
        set(&mut next.enabled, p.enabled);
        set(&mut next.channel_id, p.channel_id);
        set(&mut next.notification, p.notification);
        set(&mut next.policy, p.policy);
        check_fields(&next)?;
        let schedule = next.compiled_schedule()?;
        let timing_changed = next.schedule != task.schedule
            || next.run_at != task.run_at
            || next.timezone != task.timezone;
        let resumed = next.enabled && !task.enabled;
        if timing_changed || resumed {
            next.next_run = first_run(&schedule, now);
            if timing_changed && matches!(task.status, TaskStatus::Completed | TaskStatus::Failed) {
                // A finished one-time task given a new time runs again.
                next.status = TaskStatus::Active;
            }
        }
        next.status = match (next.enabled, next.status) {
            (_, s @ (TaskStatus::Completed | TaskStatus::Failed)) => s,
            (true, _) => TaskStatus::Active,
            (false, _) => TaskStatus::Paused,
        };
        next.version = task.version + 1;
        next.updated_at = now;
        Ok(next)
    }
}

/// Overwrites `slot` with a given patch value.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

fn check_tenant(tenant: &str) -> Result<(), Error> {
    if tenant.is_empty() || tenant.len() > 200 {
        return Err(Error::invalid("tenant", "must be 1 to 200 bytes"));
    }
    Ok(())
}

fn check_required(field: &'static str, value: &str) -> Result<(), Error> {
    let chars = value.chars().count();
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "is required and must not be blank"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("is {chars} characters; at most {MAX_NAME_CHARS}"),
        ));
    }
    Ok(())
}

/// Every text field of a task, by name.
fn text_fields(task: &Task) -> [(&'static str, Option<&str>); 9] {
    [
        ("tenant", Some(&task.tenant)),
        ("name", Some(&task.name)),
        ("description", Some(&task.description)),
        ("agent", Some(&task.agent)),
        ("prompt", Some(&task.prompt)),
        ("schedule", task.schedule.as_deref()),
        ("timezone", Some(&task.timezone)),
        ("channel_id", task.channel_id.as_deref()),
        (
            "notification.destination",
            task.notification.as_ref().map(|n| n.destination.as_str()),
        ),
    ]
}

fn check_fields(task: &Task) -> Result<(), Error> {
    // NUL is the one character refused everywhere: PostgreSQL text cannot
    // hold it, and a task must be storable in every backend. Every other
    // character, control characters included, is kept verbatim.
    for (field, value) in text_fields(task) {
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(Error::invalid(field, "must not contain NUL (U+0000)"));
        }
    }
    check_required("name", &task.name)?;
    check_required("agent", &task.agent)?;
    if task.description.len() > MAX_DESCRIPTION_BYTES {
        return Err(Error::invalid(
            "description",
            format!(
                "is {} bytes; at most {MAX_DESCRIPTION_BYTES}",
                task.description.len()
            ),
        ));
    }
    if task.prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::invalid(
            "prompt",
            format!("is {} bytes; at most {MAX_PROMPT_BYTES}", task.prompt.len()),
        ));
    }
    if task.channel_id.as_deref().is_some_and(|channel| {
        channel.is_empty()
            || channel.chars().count() > MAX_NAME_CHARS
            || channel.chars().any(|c| c.is_whitespace() || c.is_control())
    }) {
        return Err(Error::invalid(
            "channel_id",
            "must be 1 to 200 characters without spaces (#channel, @user or an ID)",
        ));
    }
    if let Some(n) = &task.notification {
        check_notification(n)?;
    }
    task.policy.validate()
}

fn check_notification(n: &Notification) -> Result<(), Error> {
    let d = n.destination.as_str();
    if d.trim().is_empty() || d.len() > 2048 {
        return Err(Error::invalid(
            "notification.destination",
            "must be 1 to 2048 bytes",
        ));
    }
    match n.method {
        NotificationMethod::Http if !(d.starts_with("http://") || d.starts_with("https://")) => {
            Err(Error::invalid(
                "notification.destination",
                "must be an http:// or https:// URL for method Http",
            ))
        }
        NotificationMethod::Email if !d.contains('@') => Err(Error::invalid(
            "notification.destination",
            "must be an email address for method Email",
        )),
        _ => Ok(()),
    }
}

/// Outcome of one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExecutionStatus {
    /// Started, holding a lease.
    Running,
    /// Finished without error.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Cancelled after `policy.timeout_ms`.
    TimedOut,
    /// Its scheduler died or shut down before it finished.
    Abandoned,
    /// Not run: the previous run was still running (`overlap: skip`).
    Skipped,
    /// Not run: it passed while nothing ran the task (`misfire: skip`).
    Missed,
}

impl ExecutionStatus {
    /// Whether the execution is over (anything but `running`).
    pub fn is_final(self) -> bool {
        self != ExecutionStatus::Running
    }
}

/// Why an execution started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Trigger {
    /// Its scheduled time came.
    Schedule,
    /// Someone asked for it (`trigger_now`, `POST …/run`).
    Manual,
    /// A retry of a failed attempt.
    Retry,
    /// A missed occurrence run late by the misfire policy.
    CatchUp,
}

/// One occurrence of one task (one attempt at it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Execution {
    /// Identifier.
    pub id: ExecutionId,
    /// The task.
    pub task_id: TaskId,
    /// The task's tenant.
    pub tenant: String,
    /// The occurrence instant (before jitter).
    pub scheduled_for: DateTime<Utc>,
    /// When it started (for `skipped` / `missed`, when that was recorded).
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// `finished_at - started_at`.
    pub duration_ms: Option<u64>,
    /// 1 for the first attempt at an occurrence.
    pub attempt: u32,
    /// Where it is.
    pub status: ExecutionStatus,
    /// Error message of a failed run.
    pub error: Option<String>,
    /// Output of the run, at most 64 KiB.
    pub output: Option<String>,
    /// The scheduler instance that ran it.
    pub node: String,
    /// Why it started.
    pub trigger: Trigger,
    /// Until when the running execution's lease holds.
    pub lease_until: Option<DateTime<Utc>>,
    /// Fencing token: bumped when another scheduler takes the execution over,
    /// so a stale holder cannot record a result.
    pub fence: u64,
    /// When the next attempt of a failed run is due (cleared once it starts).
    pub retry_at: Option<DateTime<Utc>>,
}

impl Execution {
    /// A `running` execution of `task` for the occurrence `scheduled_for`,
    /// started at `now` on `node`, holding a lease until `lease_until`.
    pub fn start(
        task: &Task,
        scheduled_for: DateTime<Utc>,
        attempt: u32,
        trigger: Trigger,
        node: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Self {
        Self::start_for(
            (task.id, &task.tenant),
            scheduled_for,
            attempt,
            trigger,
            node,
            now,
            lease_until,
        )
    }

    /// [`Execution::start`] for a task known by its id and tenant.
    pub(crate) fn start_for(
        (task_id, tenant): (TaskId, &str),
        scheduled_for: DateTime<Utc>,
        attempt: u32,
        trigger: Trigger,
        node: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Self {
        Self {
            id: ExecutionId::new(),
            task_id,
            tenant: tenant.to_owned(),
            scheduled_for,
            started_at: now,
            finished_at: None,
            duration_ms: None,
            attempt,
            status: ExecutionStatus::Running,
            error: None,
            output: None,
            node: node.to_owned(),
            trigger,
            lease_until: Some(lease_until),
            fence: 1,
            retry_at: None,
        }
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary, marking the cut.
pub fn truncate(mut text: String, max: usize) -> String {
    const MARK: &str = "…[truncated]";
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(MARK);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        at("2030-01-01T10:00:00Z")
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            Error::InvalidSchedule(crate::ScheduleError::UnknownTimeZone { .. }) => {
                "timezone".to_owned()
            }
            Error::InvalidSchedule(_) => "schedule".to_owned(),
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn create_fills_defaults_and_next_run() {
        let task = NewTask::cron("daily report", "reporter", "0 9 * * *")
            .validate("acme", now())
            .unwrap();
        assert_eq!(task.tenant, "acme");
        assert_eq!(task.timezone, "UTC");
        assert!(task.enabled);
        assert_eq!(task.status, TaskStatus::Active);
        assert_eq!(task.description, "");
        assert_eq!(task.prompt, "");
        assert_eq!(task.version, 1);
        assert_eq!(task.policy, Policy::default());
        assert_eq!(task.next_run, Some(at("2030-01-02T09:00:00Z")));
        assert_eq!(task.created_at, now());
    }

    #[test]
    fn the_last_compiled_schedule_is_reused_only_for_the_same_expression_and_zone() {
        let next = |expr: &str, zone: &str| {
            let mut input = NewTask::cron("n", "a", expr);
            input.timezone = Some(zone.to_owned());
            input.validate("acme", now()).map(|t| t.next_run)
        };
        let utc = Some(at("2030-01-02T09:00:00Z"));
        let new_york = Some(at("2030-01-01T14:00:00Z"));
        assert_eq!(next("0 9 * * *", "UTC").unwrap(), utc);
        assert_eq!(next("0 9 * * *", "UTC").unwrap(), utc);
        assert_eq!(next("0 9 * * *", "America/New_York").unwrap(), new_york);
        assert_eq!(next("0 9 * * *", "UTC").unwrap(), utc);
        assert_eq!(
            next("30 9 * * *", "UTC").unwrap(),
            Some(at("2030-01-02T09:30:00Z"))
        );
        assert_eq!(
            field_of(next("0 9 * * *", "Mars/Olympus").unwrap_err()),
            "timezone"
        );
        assert_eq!(field_of(next("0 25 * * *", "UTC").unwrap_err()), "schedule");
        assert_eq!(next("0 9 * * *", "UTC").unwrap(), utc);
    }

    #[test]
    fn prompt_defaults_to_description() {
        let mut input = NewTask::cron("n", "a", "* * * * *");
        input.description = Some("summarise the inbox".to_owned());
        let task = input.validate("t", now()).unwrap();
        assert_eq!(task.prompt, "summarise the inbox");
    }

    #[test]
    fn one_time_task_keeps_a_past_run_at() {
        let task = NewTask::once("n", "a", at("2029-12-31T00:00:00Z"))
            .validate("t", now())
            .unwrap();
        assert_eq!(task.next_run, Some(at("2029-12-31T00:00:00Z")));
    }

    #[test]
    fn paused_on_create() {
        let mut input = NewTask::cron("n", "a", "* * * * *");
        input.enabled = Some(false);
        let task = input.validate("t", now()).unwrap();
        assert_eq!(task.status, TaskStatus::Paused);
    }

    #[test]
    fn invalid_inputs_name_their_field() {
        let base = || NewTask::cron("n", "a", "* * * * *");
        let cases: Vec<(NewTask, &str)> = vec![
            (
                NewTask {
                    name: String::new(),
                    ..base()
                },
                "name",
            ),
            (
                NewTask {
                    name: "   ".into(),
                    ..base()
                },
                "name",
            ),
            (
                NewTask {
                    name: "x".repeat(201),
                    ..base()
                },
                "name",
            ),
            (
                NewTask {
                    agent: String::new(),
                    ..base()
                },
                "agent",
            ),
            (
                NewTask {
                    description: Some("x".repeat(4097)),
                    ..base()
                },
                "description",
            ),
            (
                NewTask {
                    prompt: Some("x".repeat(64 * 1024 + 1)),
                    ..base()
                },
                "prompt",
            ),
            (
                NewTask {
                    schedule: Some("* * * * MOM".into()),
                    ..base()
                },
                "schedule",
            ),
            (
                NewTask {
                    schedule: None,
                    ..base()
                },
                "schedule",
            ),
            (
                NewTask {
                    run_at: Some(now()),
                    ..base()
                },
                "schedule",
            ),
            (
                NewTask {
                    timezone: Some("Mars/Base".into()),
                    ..base()
                },
                "timezone",
            ),
            (
                NewTask {
                    channel_id: Some("has space".into()),
                    ..base()
                },
                "channel_id",
            ),
            (
                NewTask {
                    prompt: Some("nul \0 inside".into()),
                    ..base()
                },
                "prompt",
            ),
            (
                NewTask {
                    name: "\0".into(),
                    ..base()
                },
                "name",
            ),
            (
                NewTask {
                    notification: Some(Notification {
                        method: NotificationMethod::Http,
                        destination: "ftp://x".into(),
                    }),
                    ..base()
                },
                "notification.destination",
            ),
            (
                NewTask {
                    notification: Some(Notification {
                        method: NotificationMethod::Email,
                        destination: "nobody".into(),
                    }),
                    ..base()
                },
                "notification.destination",
            ),
            (
                NewTask {
                    policy: Some(Policy {
                        max_retries: 101,
                        ..Policy::default()
                    }),
                    ..base()
                },
                "policy.max_retries",
            ),
            (
                NewTask {
                    policy: Some(Policy {
                        retry_backoff_ms: 0,
                        ..Policy::default()
                    }),
                    ..base()
                },
                "policy.retry_backoff_ms",
            ),
            (
                NewTask {
                    policy: Some(Policy {
                        timeout_ms: Some(0),
                        ..Policy::default()
                    }),
                    ..base()
                },
                "policy.timeout_ms",
            ),
            (
                NewTask {
                    policy: Some(Policy {
                        jitter_ms: MAX_JITTER_MS + 1,
                        ..Policy::default()
                    }),
                    ..base()
                },
                "policy.jitter_ms",
            ),
        ];
        for (input, field) in cases {
            let err = input
                .clone()
                .validate("t", now())
                .expect_err(&format!("{input:?} accepted"));
            assert_eq!(field_of(err), field, "input={input:?}");
        }
        // 200 characters (not bytes) is fine.
        let task = NewTask {
            name: "é".repeat(200),
            ..base()
        }
        .validate("t", now());
        assert!(task.is_ok());
    }

    #[test]
    fn patch_changes_only_given_fields() {
        let task = NewTask::cron("n", "a", "0 9 * * *")
            .validate("t", now())
            .unwrap();
        let patch = TaskPatch {
            name: Some("renamed".into()),
            ..TaskPatch::default()
        };
        let later = at("2030-01-01T12:00:00Z");
        let next = patch.apply(&task, later).unwrap();
        assert_eq!(next.name, "renamed");
        assert_eq!(next.agent, task.agent);
        assert_eq!(
            next.next_run, task.next_run,
            "timing unchanged keeps next_run"
        );
        assert_eq!(next.version, 2);
        assert_eq!(next.updated_at, later);
        assert_eq!(next.created_at, task.created_at);
    }

    #[test]
    fn patch_of_timing_recomputes_next_run() {
        let task = NewTask::cron("n", "a", "0 9 * * *")
            .validate("t", now())
            .unwrap();
        let patch = TaskPatch {
            schedule: Some(Some("30 10 * * *".into())),
            ..TaskPatch::default()
        };
        let next = patch.apply(&task, now()).unwrap();
        assert_eq!(next.next_run, Some(at("2030-01-01T10:30:00Z")));
        let patch = TaskPatch {
            timezone: Some("America/New_York".into()),
            ..TaskPatch::default()
        };
        let next = patch.apply(&next, now()).unwrap();
        assert_eq!(next.next_run, Some(at("2030-01-01T15:30:00Z")));
    }

    #[test]
    fn patch_switches_between_cron_and_one_time() {
        let task = NewTask::cron("n", "a", "0 9 * * *")
            .validate("t", now())
            .unwrap();
        let run_at = at("2030-06-01T00:00:00Z");
        let once = TaskPatch {
            run_at: Some(Some(run_at)),
            ..TaskPatch::default()
        }
        .apply(&task, now())
        .unwrap();
        assert_eq!(
            (once.schedule.as_deref(), once.run_at),
            (None, Some(run_at))
        );
        assert_eq!(once.next_run, Some(run_at));
        let back = TaskPatch {
            schedule: Some(Some("0 0 * * *".into())),
            ..TaskPatch::default()
        }
        .apply(&once, now())
        .unwrap();
        assert_eq!(back.run_at, None);
        // Clearing both is refused, and the task is untouched.
        let err = TaskPatch {
            schedule: Some(None),
            ..TaskPatch::default()
        }
        .apply(&back, now())
        .unwrap_err();
        assert_eq!(field_of(err), "schedule");
    }

    #[test]
    fn pause_and_resume() {
        let task = NewTask::cron("n", "a", "0 9 * * *")
            .validate("t", now())
            .unwrap();
        let paused = TaskPatch {
            enabled: Some(false),
            ..TaskPatch::default()
        }
        .apply(&task, now())
        .unwrap();
        assert_eq!(paused.status, TaskStatus::Paused);
        let much_later = at("2030-03-01T10:00:00Z");
        let resumed = TaskPatch {
            enabled: Some(true),
            ..TaskPatch::default()
        }
        .apply(&paused, much_later)
        .unwrap();
        assert_eq!(resumed.status, TaskStatus::Active);
        // No misfire burst: the next run is counted from the resume.
        assert_eq!(resumed.next_run, Some(at("2030-03-02T09:00:00Z")));
    }

    #[test]
    fn backoff_doubles_and_caps_at_ten_minutes() {
        let p = Policy {
            retry_backoff_ms: 1000,
            ..Policy::default()
        };
        let ms: Vec<u128> = (1..=12).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(&ms[..4], &[1000, 2000, 4000, 8000]);
        assert_eq!(ms[11], 600_000);
        assert_eq!(p.backoff(u32::MAX).as_millis(), 600_000);
    }

    #[test]
    fn json_shape_uses_snake_case_and_text_ids() {
        let task = NewTask::cron("n", "a", "* * * * *")
            .validate("t", now())
            .unwrap();
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["status"], "active");
        assert_eq!(json["policy"]["misfire"], "fire_once");
        assert_eq!(json["policy"]["overlap"], "allow");
        assert_eq!(json["id"], task.id.to_string());
        assert_eq!(json["next_run"], "2030-01-01T10:01:00Z");
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back, task);
    }

    #[test]
    fn ids_sort_by_creation() {
        let ids: Vec<TaskId> = (0..100).map(|_| TaskId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids[0].to_string().parse::<TaskId>().unwrap(), ids[0]);
    }

    #[test]
    fn truncate_cuts_at_a_char_boundary() {
        assert_eq!(truncate("short".into(), 64), "short");
        let cut = truncate("é".repeat(100), 50);
        assert!(cut.len() <= 50, "len={}", cut.len());
        assert!(cut.ends_with("[truncated]"));
    }
}
