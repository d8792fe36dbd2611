//! [`MemoryStore`]: the embedded store, for a single process.
//!
//! Everything lives behind one mutex, held for the few microseconds a call
//! needs; no call scans all tasks. Indexes:
//! - tasks by id (64 hash maps, split by a byte of the id, of slots in a
//!   slab of task records), and per tenant in id order (for paging);
//! - enabled tasks by `(next_run, id)` (the due scan);
//! - running executions by `(lease_until, id)` (recovery), failed attempts by
//!   `(retry_at, id)` (retries), and the id → task map of those two kinds;
//! - each task's executions by `(scheduled_for, attempt)`, which is also the
//!   uniqueness key, trimmed to the retention limit as new ones arrive: slots
//!   in order, the records themselves in a slab of compact records
//!   (`history.rs`, which says why).
//!
//! Tasks are kept packed ([`Row`]: the claim's fields plain, the policy in
//! 16 bytes, the text in one allocation), and a task's run state is
//! allocated at its first execution: a stored task is one 160-byte record
//! plus its text. The task records and the execution records live in slabs
//! whose fresh memory a background thread touches ahead of need
//! (`slab.rs`, which says why). A million idle tasks cost the engine and
//! this store about 356 bytes each plus their text (`benches/README.md`).
//! A task whose policy is outside the bounds
//! [`Policy::validate`](crate::Policy::validate) sets (only one built by
//! hand, not through `NewTask` or `TaskPatch`, can be) is refused with
//! [`Error::Invalid`] naming the field, rather than stored cut to fit.
//!
//! Nothing survives the process: use the PostgreSQL or Redis store to share
//! tasks between processes or keep them across restarts.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use super::history::{Hist, History};
use super::row::Row;
use super::slab::{Slab, Slot};
use super::{
    Change, ChangeFeed, Claim, ClaimKind, ClaimOutcome, DEFAULT_RETENTION, ExecutionPage,
    ExecutionQuery, Finish, FinishOutcome, MAX_PAGE, Recovered, Store, TaskPage,
};
use crate::error::Error;
use crate::model::{
    Execution, ExecutionId, ExecutionStatus, IdMap, MAX_ERROR_BYTES, MAX_OUTPUT_BYTES, Overlap,
    Task, TaskId, TaskPatch, TaskStatus, Trigger, truncate,
};

/// An in-process store. Cheap to clone (clones share the data).
///
/// A million idle tasks cost a scheduler and its store about 356 bytes
/// each plus their text; execution history costs about 100 bytes a record
/// plus its error and output text. Once a store holds more than 8,192
/// tasks it starts a thread, `tickwheel-tasks`, and once it holds more
/// than 8,192 execution records another, `tickwheel-history`: each
/// prepares the memory for the next records off the store's lock, keeps up
/// to five chunks ready for as long as the store lives (about 6.5 MB of
/// task records, 4.3 MB of history), and ends when the store is dropped.
/// Memory freed by retention or by deleting tasks is reused for new
/// records, not returned to the allocator.
///
/// # Examples
///
/// ```
/// # tokio_test_block_on(async {
/// use tickwheel::{MemoryStore, NewTask, Store};
///
/// let store = MemoryStore::new();
/// let task = NewTask::cron("report", "reporter", "0 9 * * MON-FRI").validate("acme", chrono::Utc::now())?;
/// let stored = store.create_task(task).await?;
/// assert_eq!(store.get_task("acme", stored.id).await?.name, "report");
/// # Ok::<(), tickwheel::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Change>,
}

#[derive(Debug)]
struct Inner {
    tasks: Tasks,
    by_tenant: HashMap<String, BTreeSet<TaskId>>,
    due: BTreeSet<(DateTime<Utc>, TaskId)>,
    leases: BTreeSet<(DateTime<Utc>, ExecutionId)>,
    retries: BTreeSet<(DateTime<Utc>, ExecutionId)>,
    /// Running executions and failed ones awaiting a retry.
    live: IdMap<ExecutionId, (TaskId, Slot)>,
    /// Every task's execution records.
    history: History,
    retention: usize,
    /// Scheduler membership: node name to the end of its heartbeat.
    members: HashMap<String, DateTime<Utc>>,
}

/// Tasks by id: the records in a [`Slab`] (whose fresh memory a
/// background thread, `tickwheel-tasks`, touches before a creation needs
/// it), and their slots in [`ID_SHARDS`] hash maps chosen by a byte of the
/// id.
///
/// One map of a million tasks doubles by moving every entry into a new
/// table under the store's lock: the insert that does it took 31 ms in a
/// scratch measurement (`benches/README.md`), and no claim runs meanwhile.
/// Split, a doubling moves a sixty-fourth of the entries. The maps hold
/// 4-byte slots, not records, so their spare capacity is cheap.
#[derive(Debug)]
struct Tasks {
    slots: Box<[IdMap<TaskId, Slot>]>,
    records: Slab<Option<TaskRec>>,
}

/// How many maps [`Tasks`] splits its slots over.
const ID_SHARDS: usize = 64;

impl Tasks {
    fn new() -> Self {
        Self {
            slots: (0..ID_SHARDS).map(|_| IdMap::default()).collect(),
            records: Slab::new("tickwheel-tasks"),
        }
    }

    /// The map holding `id`: chosen by its byte 14, random in a UUIDv7.
    /// [`IdHasher`](crate::model::IdHasher) mixes the other random bytes
    /// into every bit of the hash, so each map still spreads its ids over
    /// all its buckets. Ids that are not UUIDv7 may crowd some maps: slower,
    /// never wrong.
    fn shard(&self, id: &TaskId) -> &IdMap<TaskId, Slot> {
        &self.slots[shard_of(id)]
    }

    fn shard_mut(&mut self, id: &TaskId) -> &mut IdMap<TaskId, Slot> {
        &mut self.slots[shard_of(id)]
    }

    fn get(&self, id: &TaskId) -> Option<&TaskRec> {
        let slot = *self.shard(id).get(id)?;
        self.records.get(slot).as_ref()
    }

    fn get_mut(&mut self, id: &TaskId) -> Option<&mut TaskRec> {
        let slot = *self.shard(id).get(id)?;
        self.records.get_mut(slot).as_mut()
    }

    /// Stores `rec` as task `id`; `false` (and nothing stored) if `id` is
    /// taken.
    fn insert(&mut self, id: TaskId, rec: TaskRec) -> bool {
        use std::collections::hash_map::Entry;
        match self.slots[shard_of(&id)].entry(id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(self.records.insert(Some(rec)));
                true
            }
        }
    }

    fn remove(&mut self, id: &TaskId) -> Option<TaskRec> {
        let slot = self.shard_mut(id).remove(id)?;
        self.records.remove(slot)
    }
}

fn shard_of(id: &TaskId) -> usize {
    usize::from(id.as_uuid().as_bytes()[14]) % ID_SHARDS
}

#[derive(Debug)]
struct TaskRec {
    row: Row,
    /// Allocated at the task's first execution.
    run: Option<Box<RunState>>,
}

/// A task's executions and overlap state.
#[derive(Debug, Default)]
struct RunState {
    /// Slots of the task's records in [`History`], ordered by `(scheduled_for,
    /// attempt)`: 4 bytes an execution. New runs come last, so inserting is
    /// almost always a push.
    executions: VecDeque<Slot>,
    /// At least the key of the newest record (not lowered when that record
    /// is trimmed): a key above it goes last without reading any record.
    newest: Option<(DateTime<Utc>, u32)>,
    running: Vec<ExecutionId>,
    /// The occurrence waiting for the running one (`overlap: queue_one`).
    queued: Option<Queued>,
}

/// The run state of a task that never ran.
static NO_RUNS: RunState = RunState {
    executions: VecDeque::new(),
    newest: None,
    running: Vec::new(),
    queued: None,
};

impl TaskRec {
    fn new(task: &Task) -> Result<Self, Error> {
        Ok(Self {
            row: Row::new(task)?,
            run: None,
        })
    }

    fn runs(&self) -> &RunState {
        self.run.as_deref().unwrap_or(&NO_RUNS)
    }

    fn runs_mut(&mut self) -> &mut RunState {
        self.run.get_or_insert_with(Box::default)
    }
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    scheduled_for: DateTime<Utc>,
    attempt: u32,
    trigger: Trigger,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping the newest 1000 executions per task.
    pub fn new() -> Self {
        Self::with_retention(DEFAULT_RETENTION)
    }

    /// An empty store keeping the newest `retention` executions per task
    /// (running executions and failed ones awaiting a retry are always kept).
    pub fn with_retention(retention: usize) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                tasks: Tasks::new(),
                by_tenant: HashMap::new(),
                due: BTreeSet::new(),
                leases: BTreeSet::new(),
                retries: BTreeSet::new(),
                live: IdMap::default(),
                history: History::default(),
                retention: retention.max(1),
                members: HashMap::new(),
            })),
            changes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the indexes half
        // updated in a way later calls would trip over more than the data
        // itself, so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, change: Change) {
        // No subscriber is fine.
        let _ = self.changes.send(change);
    }
}

/// Whether retention may drop `e`: it is over and no retry awaits it.
fn droppable(e: &Hist) -> bool {
    e.status.is_final() && e.retry_at.is_none()
}

impl Inner {
    fn owned(&self, tenant: &str, id: TaskId) -> Result<&TaskRec, Error> {
        match self.tasks.get(&id) {
            Some(rec) if rec.row.tenant() == tenant => Ok(rec),
            _ => Err(Error::task_not_found(id)),
        }
    }

    fn index_due(&mut self, id: TaskId, enabled: bool, next_run: Option<DateTime<Utc>>) {
        if let (true, Some(next)) = (enabled, next_run) {
            self.due.insert((next, id));
        }
    }

    fn unindex_due(&mut self, id: TaskId, next_run: Option<DateTime<Utc>>) {
        if let Some(next) = next_run {
            self.due.remove(&(next, id));
        }
    }

    /// Inserts a new execution of `task_id`; `false` if its key is taken.
    fn insert_execution(&mut self, task_id: TaskId, e: &Execution) -> bool {
        let key = (e.scheduled_for, e.attempt);
        let Some(rec) = self.tasks.get_mut(&task_id) else {
            return false;
        };
        let runs = rec.runs_mut();
        let history = &mut self.history;
        let at = if runs.newest.is_none_or(|newest| newest < key) {
            runs.executions.len()
        } else {
            match runs
                .executions
                .binary_search_by(|&s| history.get(s).key().cmp(&key))
            {
                Ok(_) => return false,
                Err(at) => at,
            }
        };
        runs.newest = runs.newest.max(Some(key));
        let slot = history.insert(e);
        runs.executions.insert(at, slot);
        if e.status == ExecutionStatus::Running {
            runs.running.push(e.id);
            if let Some(until) = e.lease_until {
                self.leases.insert((until, e.id));
            }
            self.live.insert(e.id, (task_id, slot));
        }
        self.trim(task_id);
        true
    }

    /// Where a running execution, or a failed one awaiting a retry, is.
    fn live(&self, id: ExecutionId) -> Option<(TaskId, Slot)> {
        let found = self.live.get(&id).copied();
        if let Some((_, slot)) = found {
            debug_assert_eq!(
                self.history.get(slot).id,
                id,
                "live points at another record"
            );
        }
        found
    }

    /// Drops the oldest finished executions beyond the retention limit.
    fn trim(&mut self, task_id: TaskId) {
        let retention = self.retention;
        let Some(runs) = self
            .tasks
            .get_mut(&task_id)
            .and_then(|r| r.run.as_deref_mut())
        else {
            return;
        };
        if runs.executions.len() <= retention {
            return;
        }
        let mut excess = runs.executions.len() - retention;
        let history = &mut self.history;
        // The steady state: the oldest record goes, with no shifting.
        while excess > 0
            && let Some(&oldest) = runs.executions.front()
            && droppable(history.get(oldest))
        {
            runs.executions.pop_front();
            history.remove(oldest);
            excess -= 1;
        }
        if excess == 0 {
            return;
        }
        // An old record still running or awaiting a retry is kept.
        runs.executions.retain(|&slot| {
            let doomed = excess > 0 && droppable(history.get(slot));
            if doomed {
                excess -= 1;
                history.remove(slot);
            }
            !doomed
        });
    }

    /// Ends a running execution of `task_id` (status, fence bump) and
    /// removes it from the running and lease indexes; returns its trigger.
    fn end_running(
        &mut self,
        task_id: TaskId,
        slot: Slot,
        status: ExecutionStatus,
        finished_at: DateTime<Utc>,
        error: Option<String>,
    ) -> Option<Trigger> {
        let runs = self.tasks.get_mut(&task_id)?.run.as_deref_mut()?;
        let e = self.history.get_mut(slot);
        debug_assert_eq!(
            e.status,
            ExecutionStatus::Running,
            "ending a finished execution id={}",
            e.id
        );
        if let Some(until) = e.lease_until.take() {
            self.leases.remove(&(until, e.id));
        }
        e.status = status;
        e.fence += 1;
        e.finished_at = Some(finished_at);
        e.set_error(error);
        let (id, trigger) = (e.id, e.trigger);
        runs.running.retain(|r| *r != id);
        self.live.remove(&id);
        Some(trigger)
    }

    /// Sets a finished execution to await a retry at `retry_at`.
    fn await_retry(&mut self, task_id: TaskId, slot: Slot, retry_at: DateTime<Utc>) {
        let e = self.history.get_mut(slot);
        e.retry_at = Some(retry_at);
        let id = e.id;
        self.retries.insert((retry_at, id));
        self.live.insert(id, (task_id, slot));
    }

    /// A one-time task whose scheduled run ended (`status`) without a retry
    /// is done.
    fn settle_one_time(
        &mut self,
        task_id: TaskId,
        status: ExecutionStatus,
        trigger: Trigger,
        retrying: bool,
    ) {
        let Some(rec) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if rec.row.has_schedule() || trigger == Trigger::Manual || retrying {
            return;
        }
        rec.row.status = if status == ExecutionStatus::Succeeded {
            TaskStatus::Completed
        } else {
            TaskStatus::Failed
        };
    }

    /// Starts the queued occurrence of `task_id` if nothing else runs.
    fn start_queued(
        &mut self,
        task_id: TaskId,
        node: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Option<Execution> {
        let rec = self.tasks.get_mut(&task_id)?;
        let runs = rec.run.as_deref_mut()?;
        if !runs.running.is_empty() {
            return None;
        }
        let q = runs.queued.take()?;
        let e = Execution::start_for(
            (task_id, rec.row.tenant()),
            q.scheduled_for,
            q.attempt,
            q.trigger,
            node,
            now,
            lease_until,
        );
        rec.row.last_run = Some(now);
        self.insert_execution(task_id, &e).then_some(e)
    }

    fn claim_one(&mut self, claim: Claim) -> ClaimOutcome {
        let Claim {
            task_id,
            kind,
            execution,
            missed,
            node,
            now,
        } = claim;
        let Some(rec) = self.tasks.get(&task_id) else {
            return ClaimOutcome::Lost { current: None };
        };
        match kind {
            ClaimKind::Scheduled {
                expected_next_run,
                expected_version,
                new_next_run,
            } => {
                let t = &rec.row;
                if !t.enabled
                    || t.next_run != Some(expected_next_run)
                    || t.version != expected_version
                {
                    return self.lost(task_id);
                }
                let missed: Vec<Execution> = missed
                    .into_iter()
                    .map(|at| {
                        let mut m = Execution::start_for(
                            (task_id, t.tenant()),
                            at,
                            1,
                            Trigger::Schedule,
                            &node,
                            now,
                            now,
                        );
                        m.status = ExecutionStatus::Missed;
                        m.lease_until = None;
                        m.finished_at = Some(now);
                        m
                    })
                    .collect();
                self.due.remove(&(expected_next_run, task_id));
                if let Some(next) = new_next_run {
                    self.due.insert((next, task_id));
                }
                if let Some(rec) = self.tasks.get_mut(&task_id) {
                    rec.row.next_run = new_next_run;
                }
                for m in &missed {
                    self.insert_execution(task_id, m);
                }
            }
            ClaimKind::Retry { failed } => {
                let awaiting = match self.live(failed) {
                    Some((owner, slot)) if owner == task_id => {
                        self.history.get(slot).retry_at.map(|at| (at, slot))
                    }
                    _ => None,
                };
                let Some((retry_at, slot)) = awaiting else {
                    return self.lost(task_id);
                };
                self.retries.remove(&(retry_at, failed));
                self.live.remove(&failed);
                self.history.get_mut(slot).retry_at = None;
            }
            ClaimKind::Manual => {}
        }
        match execution {
            Some(execution) => self.start_or_overlap(task_id, execution),
            None => ClaimOutcome::Advanced,
        }
    }

    /// Starts `execution`, or applies the task's overlap policy if a
    /// previous run of it is still running.
    fn start_or_overlap(&mut self, task_id: TaskId, execution: Execution) -> ClaimOutcome {
        let Some(rec) = self.tasks.get_mut(&task_id) else {
            return ClaimOutcome::Lost { current: None };
        };
        let now = execution.started_at;
        let mut replaced = Vec::new();
        if !rec.runs().running.is_empty() {
            match rec.row.policy().overlap {
                Overlap::Allow => {}
                Overlap::QueueOne if rec.runs().queued.is_none() => {
                    rec.runs_mut().queued = Some(Queued {
                        scheduled_for: execution.scheduled_for,
                        attempt: execution.attempt,
                        trigger: execution.trigger,
                    });
                    return ClaimOutcome::Queued;
                }
                Overlap::Skip | Overlap::QueueOne => {
                    let mut skipped = execution;
                    skipped.status = ExecutionStatus::Skipped;
                    skipped.lease_until = None;
                    skipped.finished_at = Some(now);
                    skipped.duration_ms = Some(0);
                    skipped.error = Some("the previous run was still running".to_owned());
                    return if self.insert_execution(task_id, &skipped) {
                        ClaimOutcome::Skipped(skipped)
                    } else {
                        self.lost(task_id)
                    };
                }
                Overlap::Replace => {
                    let running: Vec<ExecutionId> = rec.runs().running.clone();
                    let at = execution.scheduled_for;
                    for id in running {
                        if let Some((_, slot)) = self.live(id) {
                            let why = format!("replaced by the run for {}", at.to_rfc3339());
                            self.end_running(
                                task_id,
                                slot,
                                ExecutionStatus::Abandoned,
                                now,
                                Some(why),
                            );
                            replaced.push(id);
                        }
                    }
                }
            }
        }
        if !self.insert_execution(task_id, &execution) {
            return self.lost(task_id);
        }
        if let Some(rec) = self.tasks.get_mut(&task_id) {
            rec.row.last_run = Some(now);
        }
        if replaced.is_empty() {
            ClaimOutcome::Started(execution)
        } else {
            ClaimOutcome::Replaced {
                started: execution,
                replaced,
            }
        }
    }

    fn lost(&self, task_id: TaskId) -> ClaimOutcome {
        ClaimOutcome::Lost {
            current: self.tasks.get(&task_id).map(|r| Box::new(r.row.task())),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_task(&self, task: Task) -> Result<Task, Error> {
        // Packed before the lock is taken: concurrent creates only queue
        // for the indexes.
        let rec = TaskRec::new(&task)?;
        let mut inner = self.lock();
        if !inner.tasks.insert(task.id, rec) {
            return Err(Error::conflict(format!("task {} already exists", task.id)));
        }
        inner.index_due(task.id, task.enabled, task.next_run);
        match inner.by_tenant.get_mut(&task.tenant) {
            Some(ids) => {
                ids.insert(task.id);
            }
            None => {
                inner
                    .by_tenant
                    .insert(task.tenant.clone(), BTreeSet::from([task.id]));
            }
        }
        drop(inner);
        self.notify(Change::Upserted {
            tenant: task.tenant.clone(),
            task_id: task.id,
            next_run: task.next_run.filter(|_| task.enabled),
            version: task.version,
        });
        Ok(task)
    }

    async fn get_task(&self, tenant: &str, id: TaskId) -> Result<Task, Error> {
        Ok(self.lock().owned(tenant, id)?.row.task())
    }

    async fn list_tasks(&self, tenant: &str, page: TaskPage) -> Result<Vec<Task>, Error> {
        let inner = self.lock();
        let Some(ids) = inner.by_tenant.get(tenant) else {
            return Ok(Vec::new());
        };
        let limit = page.limit.min(MAX_PAGE);
        let range = match page.after {
            Some(after) => {
                ids.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => ids.range(..),
        };
        Ok(range
            .take(limit)
            .filter_map(|id| inner.tasks.get(id).map(|r| r.row.task()))
            .collect())
    }

    async fn update_task(
        &self,
        tenant: &str,
        id: TaskId,
        patch: &TaskPatch,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Task, Error> {
        let mut inner = self.lock();
        let old = inner.owned(tenant, id)?.row.task();
        if expected_version.is_some_and(|v| v != old.version) {
            return Err(Error::conflict(format!(
                "task {id} is at version {}, not {}",
                old.version,
                expected_version.unwrap_or_default()
            )));
        }
        let updated = patch.apply(&old, now)?;
        let row = Row::new(&updated)?;
        inner.unindex_due(id, old.next_run);
        inner.index_due(id, updated.enabled, updated.next_run);
        if let Some(rec) = inner.tasks.get_mut(&id) {
            rec.row = row;
        }
        drop(inner);
        self.notify(Change::Upserted {
            tenant: tenant.to_owned(),
            task_id: id,
            next_run: updated.next_run.filter(|_| updated.enabled),
            version: updated.version,
        });
        Ok(updated)
    }

    async fn delete_task(&self, tenant: &str, id: TaskId) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.owned(tenant, id)?;
        let rec = inner.tasks.remove(&id).expect("checked above");
        inner.unindex_due(id, rec.row.next_run);
        if let Some(ids) = inner.by_tenant.get_mut(tenant) {
            ids.remove(&id);
            if ids.is_empty() {
                inner.by_tenant.remove(tenant);
            }
        }
        for &slot in &rec.runs().executions {
            let e = inner.history.get(slot);
            let (id, lease_until, retry_at) = (e.id, e.lease_until, e.retry_at);
            if inner.live.remove(&id).is_some() {
                if let Some(until) = lease_until {
                    inner.leases.remove(&(until, id));
                }
                if let Some(at) = retry_at {
                    inner.retries.remove(&(at, id));
                }
            }
            inner.history.remove(slot);
        }
        drop(inner);
        self.notify(Change::Deleted { task_id: id });
        Ok(())
    }

    async fn due_tasks(
        &self,
        after: Option<(DateTime<Utc>, TaskId)>,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let inner = self.lock();
        let upper = Included((horizon, TaskId::from_uuid(uuid::Uuid::max())));
        let lower = match after {
            Some(key) => Excluded(key),
            None => Unbounded,
        };
        if matches!((&lower, &upper), (Excluded(a), Included(b)) if a >= b) {
            return Ok(Vec::new());
        }
        Ok(inner
            .due
            .range((lower, upper))
            .take(limit)
            .filter_map(|(_, id)| inner.tasks.get(id).map(|r| r.row.task()))
            .collect())
    }

    async fn due_retries(
        &self,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Execution>, Error> {
        let inner = self.lock();
        Ok(inner
            .retries
            .iter()
            .take_while(|(at, _)| *at <= horizon)
            .take(limit)
            .filter_map(|(_, id)| {
                let (task_id, slot) = inner.live(*id)?;
                let tenant = inner.tasks.get(&task_id)?.row.tenant();
                Some(inner.history.execution(slot, task_id, tenant))
            })
            .collect())
    }

    async fn claim(&self, claims: Vec<Claim>) -> Result<Vec<ClaimOutcome>, Error> {
        let mut inner = self.lock();
        Ok(claims.into_iter().map(|c| inner.claim_one(c)).collect())
    }

    async fn renew_lease(
        &self,
        id: ExecutionId,
        fence: u64,
        until: DateTime<Utc>,
    ) -> Result<(), Error> {
        let mut inner = self.lock();
        let Some((_, slot)) = inner.live(id) else {
            return Err(Error::conflict(format!(
                "execution {id} is no longer running"
            )));
        };
        let e = inner.history.get_mut(slot);
        if e.status != ExecutionStatus::Running || e.fence != fence {
            return Err(Error::conflict(format!("execution {id} was taken over")));
        }
        let old = e.lease_until.replace(until);
        if let Some(old) = old {
            inner.leases.remove(&(old, id));
        }
        inner.leases.insert((until, id));
        Ok(())
    }

    async fn finish(&self, f: Finish) -> Result<FinishOutcome, Error> {
        let mut inner = self.lock();
        let Some((task_id, slot)) = inner.live(f.id) else {
            return Err(Error::conflict(format!(
                "execution {} is no longer running",
                f.id
            )));
        };
        let e = inner.history.get(slot);
        if e.status != ExecutionStatus::Running || e.fence != f.fence {
            return Err(Error::conflict(format!(
                "execution {} was taken over",
                f.id
            )));
        }
        if !f.status.is_final() {
            return Err(Error::invalid(
                "status",
                "a finished execution cannot be running",
            ));
        }
        let error = f.error.map(|s| truncate(s, MAX_ERROR_BYTES));
        if let Some(at) = f.started_at {
            inner.history.get_mut(slot).started_at = at;
        }
        let trigger = inner
            .end_running(task_id, slot, f.status, f.finished_at, error)
            .expect("checked above");
        inner
            .history
            .get_mut(slot)
            .set_output(f.output.map(|s| truncate(s, MAX_OUTPUT_BYTES)));
        let mut retrying = false;
        if let Some(at) = f
            .retry_at
            .filter(|_| f.status != ExecutionStatus::Succeeded)
        {
            inner.await_retry(task_id, slot, at);
            retrying = true;
        }
        inner.settle_one_time(task_id, f.status, trigger, retrying);
        let started = inner.start_queued(task_id, &f.node, f.finished_at, f.lease_until);
        inner.trim(task_id);
        Ok(FinishOutcome { started })
    }

    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        node: &str,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Recovered, Error> {
        let mut inner = self.lock();
        let expired: Vec<ExecutionId> = inner
            .leases
            .iter()
            .take_while(|(until, _)| *until < now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        let mut out = Recovered::default();
        for id in expired {
            let Some((task_id, slot)) = inner.live(id) else {
                continue;
            };
            let why = Some("lease expired: its scheduler stopped renewing it".to_owned());
            let Some(trigger) =
                inner.end_running(task_id, slot, ExecutionStatus::Abandoned, now, why)
            else {
                continue;
            };
            // `end_running` found the task.
            let Some(row) = inner.tasks.get(&task_id).map(|r| &r.row) else {
                continue;
            };
            let policy = row.policy();
            let mut e = inner.history.execution(slot, task_id, row.tenant());
            if e.attempt <= policy.max_retries {
                let at = now + policy.backoff(e.attempt);
                inner.await_retry(task_id, slot, at);
                e.retry_at = Some(at);
            }
            inner.settle_one_time(task_id, e.status, trigger, e.retry_at.is_some());
            if let Some(started) = inner.start_queued(task_id, node, now, lease_until) {
                out.started.push(started);
            }
            out.abandoned.push(e);
        }
        Ok(out)
    }

    async fn executions(
        &self,
        tenant: &str,
        task_id: TaskId,
        query: ExecutionQuery,
    ) -> Result<ExecutionPage, Error> {
        let inner = self.lock();
        let rec = inner.owned(tenant, task_id)?;
        let matching = || {
            rec.runs().executions.iter().rev().filter(|&&slot| {
                query
                    .status
                    .is_none_or(|s| inner.history.get(slot).status == s)
            })
        };
        Ok(ExecutionPage {
            executions: matching()
                .skip(query.offset)
                .take(query.limit)
                .map(|&slot| inner.history.execution(slot, task_id, rec.row.tenant()))
                .collect(),
            total: matching().count(),
        })
    }

    async fn subscribe(&self) -> Result<ChangeFeed, Error> {
        Ok(ChangeFeed::new(self.changes.subscribe()))
    }

    async fn heartbeat(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<String>, Error> {
        let mut inner = self.lock();
        inner.members.insert(node.to_owned(), until);
        inner.members.retain(|_, alive_until| *alive_until > now);
        let mut alive: Vec<String> = inner.members.keys().cloned().collect();
        if !alive.iter().any(|n| n == node) {
            // Alive "until" a moment already past: it still asked.
            alive.push(node.to_owned());
        }
        alive.sort_unstable();
        Ok(alive)
    }

    async fn leave(&self, node: &str) -> Result<(), Error> {
        self.lock().members.remove(node);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewTask;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_893_456_000, 0).unwrap()
    }

    /// A store keeping `retention` executions a task, with one task of
    /// tenant `t`.
    async fn store_with_a_task(retention: usize) -> (MemoryStore, Task) {
        let store = MemoryStore::with_retention(retention);
        let task = store
            .create_task(
                NewTask::cron("n", "a", "* * * * *")
                    .validate("t", t0())
                    .unwrap(),
            )
            .await
            .unwrap();
        (store, task)
    }

    /// The task's history, newest first, as (minutes after `t0`, attempt).
    async fn history_keys(store: &MemoryStore, task: &Task) -> Vec<(i64, u32)> {
        store
            .executions("t", task.id, ExecutionQuery::newest(10))
            .await
            .unwrap()
            .executions
            .iter()
            .map(|e| ((e.scheduled_for - t0()).num_minutes(), e.attempt))
            .collect()
    }

    /// Records arriving out of order (a retry of an older occurrence, a
    /// late catch-up) go to their place, and a taken key is refused.
    #[tokio::test]
    async fn history_stays_ordered_and_unique_whatever_the_arrival_order() {
        let t0 = t0();
        let (store, task) = store_with_a_task(DEFAULT_RETENTION).await;
        let at = |minutes: i64, attempt: u32| {
            let mut e = Execution::start(
                &task,
                t0 + chrono::Duration::minutes(minutes),
                attempt,
                Trigger::Schedule,
                "node",
                t0,
                t0,
            );
            e.status = ExecutionStatus::Succeeded;
            e.lease_until = None;
            e.finished_at = Some(t0);
            e
        };
        {
            let mut inner = store.lock();
            for (minutes, attempt) in [(2, 1), (1, 2), (3, 1), (1, 1), (2, 2)] {
                assert!(inner.insert_execution(task.id, &at(minutes, attempt)));
            }
            assert!(!inner.insert_execution(task.id, &at(1, 2)), "a taken key");
            assert!(
                !inner.insert_execution(task.id, &at(3, 1)),
                "the newest key"
            );
        }
        assert_eq!(
            history_keys(&store, &task).await,
            [(3, 1), (2, 2), (2, 1), (1, 2), (1, 1)]
        );
    }

    /// Retention drops the oldest finished records, steps over an older one
    /// still running, and drops that one once it has ended.
    #[tokio::test]
    async fn retention_keeps_a_running_record_and_drops_it_once_over() {
        let t0 = t0();
        let (store, task) = store_with_a_task(2).await;
        let run = |minutes: i64| {
            let at = t0 + chrono::Duration::minutes(minutes);
            Execution::start(
                &task,
                at,
                1,
                Trigger::Schedule,
                "node",
                at,
                at + chrono::Duration::hours(1),
            )
        };
        let done = |minutes: i64| {
            let mut e = run(minutes);
            e.status = ExecutionStatus::Missed;
            e.lease_until = None;
            e.finished_at = Some(e.started_at);
            e
        };
        let kept = || async {
            let minutes: Vec<i64> = history_keys(&store, &task)
                .await
                .into_iter()
                .map(|(minutes, _)| minutes)
                .collect();
            minutes
        };
        let running = run(1);
        {
            let mut inner = store.lock();
            assert!(inner.insert_execution(task.id, &running));
            for minutes in 2..=4 {
                assert!(inner.insert_execution(task.id, &done(minutes)));
            }
        }
        assert_eq!(kept().await, [4, 1], "the running record is kept");
        store
            .finish(Finish {
                id: running.id,
                fence: running.fence,
                status: ExecutionStatus::Succeeded,
                finished_at: t0 + chrono::Duration::minutes(5),
                started_at: None,
                error: None,
                output: None,
                retry_at: None,
                node: "node".into(),
                lease_until: t0,
            })
            .await
            .unwrap();
        assert!(store.lock().insert_execution(task.id, &done(5)));
        assert_eq!(kept().await, [5, 4], "once over it is the oldest to go");
    }

    #[test]
    fn a_stored_task_is_one_160_byte_record() {
        // The row and the pointer to its run state, as a slab slot (the
        // store's docs and `benches/README.md` count on it).
        let size = std::mem::size_of::<Option<TaskRec>>();
        assert!(size <= 160, "a task's slab slot is {size} bytes");
    }

    #[tokio::test]
    async fn tasks_spread_over_the_id_maps_and_leave_reusable_slots() {
        let store = MemoryStore::new();
        let now = DateTime::from_timestamp(1_893_456_000, 0).unwrap();
        let mut ids = Vec::new();
        for i in 0..2_000 {
            let task = NewTask::cron(format!("t{i}"), "a", "* * * * *")
                .validate("acme", now)
                .unwrap();
            ids.push(store.create_task(task).await.unwrap().id);
        }
        {
            let inner = store.lock();
            let sizes: Vec<usize> = inner.tasks.slots.iter().map(|m| m.len()).collect();
            assert_eq!(sizes.iter().sum::<usize>(), 2_000);
            // 2,000 ids over 64 maps: about 31 each; every map is used.
            assert!(sizes.iter().all(|&n| n > 5), "{sizes:?}");
        }
        for id in &ids[..10] {
            store.delete_task("acme", *id).await.unwrap();
        }
        let again = NewTask::cron("again", "a", "* * * * *")
            .validate("acme", now)
            .unwrap();
        let again = store.create_task(again).await.unwrap();
        assert_eq!(
            store.get_task("acme", again.id).await.unwrap().name,
            "again"
        );
        assert!(store.get_task("acme", ids[0]).await.is_err());
        assert_eq!(store.get_task("acme", ids[10]).await.unwrap().name, "t10");
        let inner = store.lock();
        let slot = inner.tasks.shard(&again.id)[&again.id];
        assert_eq!(slot, 9, "the last slot freed is reused first");
    }
}
