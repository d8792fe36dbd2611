//! The contract between the engine and a storage backend.
//!
//! [`Store`] is the whole of it: task CRUD scoped by tenant, the engine's due
//! scan, the atomic claim that makes every occurrence start exactly once,
//! leases with fencing, recovery of runs whose scheduler died, execution
//! history with retention, and a change feed. Every backend (memory,
//! PostgreSQL, Redis) implements it with the same meaning and passes the same
//! conformance suite (`tickwheel::store::conformance`, feature
//! `test-utils`).
//!
//! Atomicity, stated once for every backend:
//! - [`Store::claim`] applies each claim in one atomic step: check the task
//!   (exists, enabled, `next_run` and `version` as expected), decide overlap
//!   against the task's running executions, advance `next_run`, insert the
//!   execution(s). Claims in one call are independent of each other.
//! - [`Store::update_task`] is atomic with respect to claims: it never writes
//!   back a `next_run` older than the one it read.
//! - [`Store::renew_lease`] and [`Store::finish`] succeed only while the
//!   caller's fence is the execution's fence; [`Store::recover_expired`]
//!   bumps the fence of what it takes over.
//! - `(task_id, scheduled_for, attempt)` is unique among executions.
//!
//! `Task::version` counts writes to a task's definition; the engine's
//! bookkeeping (`next_run`, `last_run`, the status of a finished one-time
//! task) does not bump it, so optimistic updates of busy tasks still succeed.

mod history;
mod memory;
mod row;
mod slab;

#[cfg(feature = "test-utils")]
pub mod conformance;

pub use memory::MemoryStore;

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::error::Error;
use crate::model::{Execution, ExecutionId, ExecutionStatus, Task, TaskId, TaskPatch};

/// Default number of executions kept per task.
pub const DEFAULT_RETENTION: usize = 1000;

/// Most tasks one [`Store::list_tasks`] call returns.
pub const MAX_PAGE: usize = 1000;

/// A page request over a tenant's tasks, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskPage {
    /// Start after this task id (keyset paging); `None` for the first page.
    pub after: Option<TaskId>,
    /// Most tasks to return (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

impl TaskPage {
    /// The first `limit` tasks.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The `limit` tasks after `after`.
    pub fn after(after: TaskId, limit: usize) -> Self {
        Self {
            after: Some(after),
            limit,
        }
    }
}

/// Which executions of a task to list, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionQuery {
    /// Most executions to return.
    pub limit: usize,
    /// How many of the newest to skip.
    pub offset: usize,
    /// Only executions with this status.
    pub status: Option<ExecutionStatus>,
}

impl ExecutionQuery {
    /// The newest `limit` executions of any status.
    pub fn newest(limit: usize) -> Self {
        Self {
            limit,
            offset: 0,
            status: None,
        }
    }
}

/// A page of execution history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPage {
    /// The executions, newest first (by `scheduled_for`, then attempt).
    pub executions: Vec<Execution>,
    /// How many executions match the query in all.
    pub total: usize,
}

/// What a claim is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimKind {
    /// A scheduled occurrence: applies iff the task's `next_run` is
    /// `expected_next_run` and its `version` is `expected_version`; then
    /// `next_run` becomes `new_next_run`.
    Scheduled {
        /// The `next_run` the claimer saw.
        expected_next_run: DateTime<Utc>,
        /// The `version` the claimer saw.
        expected_version: u64,
        /// The occurrence after this one (`None`: the task has no more).
        new_next_run: Option<DateTime<Utc>>,
    },
    /// The next attempt of a failed execution whose `retry_at` is set:
    /// applies iff that execution still awaits its retry.
    Retry {
        /// The failed attempt.
        failed: ExecutionId,
    },
    /// A run asked for by hand; `next_run` is left alone.
    Manual,
}

/// One claim: if `kind` still holds, do its bookkeeping, record `missed`,
/// and start `execution` (status `running`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The task.
    pub task_id: TaskId,
    /// The condition and the bookkeeping.
    pub kind: ClaimKind,
    /// The execution to start: `running`, with its lease and node. `None`
    /// only advances the task (misfire `skip`: nothing runs).
    pub execution: Option<Execution>,
    /// Occurrences to record as `missed` in the same step (misfire `skip`).
    pub missed: Vec<DateTime<Utc>>,
    /// The claimer's node and time, for the `missed` records.
    pub node: String,
    /// The claimer's time.
    pub now: DateTime<Utc>,
}

/// The answer to one [`Claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// The claim won: run this execution.
    Started(Execution),
    /// The claim won, but the task's previous run is still running and its
    /// policy is `overlap: skip`: the occurrence was recorded `skipped`.
    Skipped(Execution),
    /// The claim won, the previous run is still running and the policy is
    /// `overlap: queue_one`: the occurrence waits and starts when that run
    /// ends (handed out by [`Store::finish`] or [`Store::recover_expired`]).
    Queued,
    /// The claim won and the policy is `overlap: replace`: the running
    /// executions were ended (`abandoned`, fence bumped) and this one started.
    Replaced {
        /// The execution to run.
        started: Execution,
        /// The executions that were ended.
        replaced: Vec<ExecutionId>,
    },
    /// The claim won and the task advanced; nothing was to be started.
    Advanced,
    /// Someone else got there first, or the task changed: nothing was
    /// written. `current` is the task as it is now (`None` if deleted).
    Lost {
        /// The task now.
        current: Option<Box<Task>>,
    },
}

/// The result of a run, recorded by [`Store::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The execution.
    pub id: ExecutionId,
    /// The fence the caller holds.
    pub fence: u64,
    /// `succeeded`, `failed`, `timed_out` or `abandoned`.
    pub status: ExecutionStatus,
    /// When the run really started, if not when its claim recorded: a claim
    /// made ahead of its instant records the planned start, and the run
    /// reports the actual one here. `None` keeps the recorded start. The
    /// duration is counted from the start kept.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Error message.
    pub error: Option<String>,
    /// Output (truncated to 64 KiB by the store).
    pub output: Option<String>,
    /// When the next attempt is due, if the policy allows another.
    pub retry_at: Option<DateTime<Utc>>,
    /// The node finishing, which starts a queued occurrence if one waits.
    pub node: String,
    /// Lease for a queued occurrence this call starts.
    pub lease_until: DateTime<Utc>,
}

/// What [`Store::finish`] did besides recording the result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FinishOutcome {
    /// A queued occurrence (`overlap: queue_one`) started for the caller to run.
    pub started: Option<Execution>,
}

/// What [`Store::recover_expired`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// The executions marked `abandoned`.
    pub abandoned: Vec<Execution>,
    /// Queued occurrences started for the caller to run.
    pub started: Vec<Execution>,
}

/// A write that the engines of every process should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A task was created or updated (not sent for claims).
    Upserted {
        /// The task's tenant.
        tenant: String,
        /// The task.
        task_id: TaskId,
        /// Its next occurrence (`None`: nothing to schedule).
        next_run: Option<DateTime<Utc>>,
        /// Its version after the write.
        version: u64,
    },
    /// A task was deleted.
    Deleted {
        /// The task.
        task_id: TaskId,
    },
    /// Changes may have been lost (a subscriber fell behind, a connection
    /// dropped): rescan everything.
    Resync,
}

/// A subscription to a store's [`Change`]s.
#[derive(Debug)]
pub struct ChangeFeed {
    rx: broadcast::Receiver<Change>,
}

impl ChangeFeed {
    /// A feed reading from a broadcast channel the backend writes to.
    pub fn new(rx: broadcast::Receiver<Change>) -> Self {
        Self { rx }
    }

    /// The next change; [`Change::Resync`] if some were missed; `None` when
    /// the store is gone.
    pub async fn next(&mut self) -> Option<Change> {
        match self.rx.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// A change if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Change> {
        match self.rx.try_recv() {
            Ok(change) => Some(change),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Change::Resync),
            Err(_) => None,
        }
    }
}

/// Storage for tasks and executions, shared by every scheduler of a cluster.
///
/// See the [module docs](self) for the atomicity each method promises. Errors
/// mean the same for every backend: [`Error::NotFound`] (no such item in the
/// tenant), [`Error::Conflict`] (a version or fence that moved on),
/// [`Error::Invalid`], [`Error::Unavailable`] (retry later).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Stores a task built by [`NewTask::validate`](crate::NewTask::validate).
    async fn create_task(&self, task: Task) -> Result<Task, Error>;

    /// One task of `tenant`.
    async fn get_task(&self, tenant: &str, id: TaskId) -> Result<Task, Error>;

    /// A page of `tenant`'s tasks, oldest (smallest id) first.
    async fn list_tasks(&self, tenant: &str, page: TaskPage) -> Result<Vec<Task>, Error>;

    /// Applies `patch` (see [`TaskPatch::apply`]) atomically; with
    /// `expected_version`, only if the task is still at that version.
    async fn update_task(
        &self,
        tenant: &str,
        id: TaskId,
        patch: &TaskPatch,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Task, Error>;

    /// Deletes a task and its executions.
    async fn delete_task(&self, tenant: &str, id: TaskId) -> Result<(), Error>;

    /// Enabled tasks of every tenant with `next_run` in `(after, horizon]`,
    /// ordered by `(next_run, id)`, at most `limit`; `after` is the last
    /// `(next_run, id)` of the previous page. Served from an index: the cost
    /// is in the number of tasks returned, not the number stored.
    async fn due_tasks(
        &self,
        after: Option<(DateTime<Utc>, TaskId)>,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, Error>;

    /// Failed attempts awaiting a retry due at or before `horizon`, oldest
    /// `retry_at` first, at most `limit`.
    async fn due_retries(
        &self,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Execution>, Error>;

    /// Applies each claim atomically; one outcome per claim, in order.
    async fn claim(&self, claims: Vec<Claim>) -> Result<Vec<ClaimOutcome>, Error>;

    /// Extends a running execution's lease. [`Error::Conflict`] if the fence
    /// moved on or the execution is no longer running.
    async fn renew_lease(
        &self,
        id: ExecutionId,
        fence: u64,
        until: DateTime<Utc>,
    ) -> Result<(), Error>;

    /// Records a run's result if `fence` is still the execution's fence
    /// ([`Error::Conflict`] otherwise); ends a one-time task (`completed`, or
    /// `failed` when no retry follows); starts a queued occurrence.
    async fn finish(&self, finish: Finish) -> Result<FinishOutcome, Error>;

    /// Takes over running executions whose lease ended before `now` (at most
    /// `limit`): marks them `abandoned` (fence bumped; `retry_at` set per the
    /// task's policy if attempts remain), and starts for `node` the queued
    /// occurrences that were waiting on them.
    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        node: &str,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Recovered, Error>;

    /// A page of one task's executions.
    async fn executions(
        &self,
        tenant: &str,
        task_id: TaskId,
        query: ExecutionQuery,
    ) -> Result<ExecutionPage, Error>;

    /// A feed of task writes made through any process sharing this store.
    async fn subscribe(&self) -> Result<ChangeFeed, Error>;

    /// Records that scheduler `node` is alive until `until` and returns the
    /// names of every node alive at `now` (`alive_until > now`), `node`
    /// included, sorted.
    ///
    /// Schedulers sharing a store use the list to split the claiming of
    /// occurrences between them (see the scheduler docs, "Affinity"). It
    /// only saves work: exactly-once never depends on it, since every claim
    /// is still atomic. The default keeps no membership and returns an empty
    /// list, which makes every scheduler claim everything, as if alone.
    async fn heartbeat(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<String>, Error> {
        let _ = (node, now, until);
        Ok(Vec::new())
    }

    /// Removes `node` from the membership [`heartbeat`](Store::heartbeat)
    /// keeps (a scheduler shutting down), so the others take its share at
    /// their next heartbeat rather than when its entry expires.
    async fn leave(&self, node: &str) -> Result<(), Error> {
        let _ = node;
        Ok(())
    }
}
