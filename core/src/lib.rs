//! tickwheel: in-process scheduling for Rust services.
//!
//! A host embeds a scheduler, gives it a store and an executor, and every
//! occurrence of every task starts once. This crate holds the pieces the
//! rest is built from:
//!
//! - [`Schedule`] and [`Cron`]: the cron dialect, evaluated in an IANA time
//!   zone with Vixie cron's daylight-saving rules, and one-time schedules
//!   (see the [`schedule`] module for the dialect);
//! - [`Clock`], with [`SystemClock`] and the [`ManualClock`] tests drive;
//! - [`TimingWheel`]: the hierarchical timer wheel the engine keeps upcoming
//!   occurrences on;
//! - the [`model`]: [`Task`], [`Execution`], the validated create input
//!   [`NewTask`] and the partial update [`TaskPatch`] (the one place that
//!   decides what a valid task is);
//! - the [`Store`] contract and [`MemoryStore`], the embedded default (the
//!   PostgreSQL and Redis stores live in their own crates);
//! - the [`Executor`] the host implements, and the [`Scheduler`] engine that
//!   starts every occurrence once.
//!
//! Features: `test-utils` (the store conformance suite,
//! `tickwheel::store::conformance`); `openapi` (`utoipa::ToSchema` on the model
//! types, used by the REST adapter's OpenAPI document).

pub mod model;
pub mod schedule;
pub mod store;

mod clock;
mod error;
mod executor;
mod scheduler;
mod wheel;

pub use clock::{Clock, ManualClock, SleepFuture, SystemClock};
pub use error::{BoxError, Error};
pub use executor::{Executor, FnExecutor, Run, RunResult, executor_fn};
pub use model::{
    Execution, ExecutionId, ExecutionStatus, Misfire, NewTask, Notification, NotificationMethod,
    Overlap, Policy, Task, TaskId, TaskPatch, TaskStatus, Trigger,
};
pub use schedule::{Cron, Field, Reason, Schedule, ScheduleError, Upcoming, parse_timezone};
pub use scheduler::{Scheduler, SchedulerBuilder, SchedulerHandle, SchedulerStats, ShutdownReport};
pub use store::{MemoryStore, Store};
pub use wheel::{TimerKey, TimingWheel};
