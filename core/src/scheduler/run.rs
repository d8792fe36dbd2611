//! Running executions: the executor call with timeout and cancellation,
//! recording the result (fenced, retried while the store is away), lease
//! renewal, recovery of expired leases, and manual triggers.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Config;
use crate::clock::Clock;
use crate::error::Error;
use crate::executor::{Executor, Run};
use crate::model::{Execution, ExecutionId, ExecutionStatus, IdMap, Task, TaskId, Trigger};
use crate::store::{Claim, ClaimKind, ClaimOutcome, Finish, Store};

/// Why a run was cancelled by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancel {
    /// The scheduler is shutting down: record `abandoned`, retry elsewhere.
    Shutdown,
    /// Another node owns the execution now (lease lost, replaced, deleted):
    /// record nothing.
    Fenced,
}

#[derive(Debug)]
struct Running {
    fence: u64,
    cancel: CancellationToken,
    cause: Arc<OnceLock<Cancel>>,
    lease_until: DateTime<Utc>,
}

/// Sent to the engine loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// An attempt ended awaiting a retry (`retry_at` is set); `task` when known.
    Retry {
        failed: Box<Execution>,
        task: Option<Arc<Task>>,
    },
}

/// State shared by the engine loop, the run tasks, the helpers and the handle.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) executor: Arc<dyn Executor>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Config,
    pub(crate) permits: Arc<Semaphore>,
    running: Mutex<IdMap<ExecutionId, Running>>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    stopping: AtomicBool,
    idle: Notify,
    /// Signalled when a run gives its permit back.
    pub(crate) permit_freed: Notify,
    /// The live schedulers, for affinity.
    pub(crate) members: Mutex<super::affinity::Members>,
    pub(crate) counters: Counters,
}

/// What [`SchedulerStats`](super::SchedulerStats) reports, counted as it
/// happens.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) claims_won: AtomicU64,
    pub(crate) claims_lost: AtomicU64,
    pub(crate) shadowed: AtomicU64,
    pub(crate) store_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.config.node)
            .field("running", &self.running_count())
            .finish_non_exhaustive()
    }
}

/// How a run ended, before it is recorded.
enum Outcome {
    Done(Result<Option<String>, String>),
    TimedOut,
    Cancelled,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        executor: Arc<dyn Executor>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Self {
        let (events, rx) = mpsc::unbounded_channel();
        let members = Mutex::new(super::affinity::Members::everything(&config.node));
        Self {
            store,
            executor,
            clock,
            permits: super::semaphore(config.max_concurrent),
            config,
            running: Mutex::new(IdMap::default()),
            events,
            events_rx: Mutex::new(Some(rx)),
            stopping: AtomicBool::new(false),
            idle: Notify::new(),
            permit_freed: Notify::new(),
            members,
            counters: Counters::default(),
        }
    }

    fn running(&self) -> MutexGuard<'_, IdMap<ExecutionId, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn running_count(&self) -> usize {
        self.running().len()
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn lease(&self) -> TimeDelta {
        TimeDelta::from_std(self.config.lease).unwrap_or(TimeDelta::seconds(30))
    }

    /// Starts a task running `execution` (already claimed) under `permit`,
    /// or, without one, under a permit it takes at the run's instant: a run
    /// claimed ahead waits for its instant without holding one.
    pub(crate) fn spawn_run(
        self: &Arc<Self>,
        task: Arc<Task>,
        execution: Execution,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let (cancel, cause) = self.register(&execution);
        let shared = self.clone();
        tokio::spawn(async move {
            let permit = shared
                .run_loop(task, execution, permit, cancel, cause)
                .await;
            drop(permit);
            // Wakes the engine only if it waits for a permit (a stored
            // notification otherwise, consumed at most once).
            shared.permit_freed.notify_one();
        });
    }

    fn register(&self, e: &Execution) -> (CancellationToken, Arc<OnceLock<Cancel>>) {
        let cancel = CancellationToken::new();
        let cause = Arc::new(OnceLock::new());
        let lease_until = e
            .lease_until
            .unwrap_or_else(|| self.clock.now() + self.lease());
        self.running().insert(
            e.id,
            Running {
                fence: e.fence,
                cancel: cancel.clone(),
                cause: cause.clone(),
                lease_until,
            },
        );
        (cancel, cause)
    }

    fn unregister(&self, id: ExecutionId) {
        let mut running = self.running();
        running.remove(&id);
        if running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Cancels a running execution of this node, if it is here.
    pub(crate) fn cancel(&self, id: ExecutionId, why: Cancel) -> bool {
        match self.running().get(&id) {
            Some(r) => {
                let _ = r.cause.set(why);
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every run in flight; returns how many.
    pub(crate) fn cancel_all(&self, why: Cancel) -> usize {
        let running = self.running();
        for r in running.values() {
            let _ = r.cause.set(why);
            r.cancel.cancel();
        }
        running.len()
    }

    pub(crate) fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Waits until no run is in flight or `until` passes; true if idle.
    pub(crate) async fn wait_idle(&self, until: Option<DateTime<Utc>>) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running_count() == 0 {
                return true;
            }
            match until {
                Some(until) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = self.clock.sleep_until(until) => return self.running_count() == 0,
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Runs `execution` and the queued occurrences `finish` hands over;
    /// returns the permit it ran under.
    async fn run_loop(
        self: &Arc<Self>,
        task: Arc<Task>,
        mut execution: Execution,
        mut permit: Option<OwnedSemaphorePermit>,
        mut cancel: CancellationToken,
        mut cause: Arc<OnceLock<Cancel>>,
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            // A run claimed ahead waits for its instant, then for a permit;
            // the start recorded is the actual one, reported with the
            // result when it differs.
            let claimed_start = execution.started_at;
            if claimed_start > self.clock.now() {
                tokio::select! {
                    () = self.clock.sleep_until(claimed_start) => {}
                    () = cancel.cancelled() => {}
                }
            }
            if permit.is_none() {
                tokio::select! {
                    // The semaphore is never closed, so this waits.
                    p = self.permits.clone().acquire_owned() => permit = p.ok(),
                    () = cancel.cancelled() => {}
                }
            }
            if !cancel.is_cancelled() {
                execution.started_at = claimed_start.max(self.clock.now());
            }
            let outcome = self.perform(&task, &execution, &cancel).await;
            let actual_start =
                (execution.started_at != claimed_start).then_some(execution.started_at);
            let next = self
                .record(
                    &task,
                    &execution,
                    actual_start,
                    outcome,
                    cause.get().copied(),
                )
                .await;
            self.unregister(execution.id);
            let Some(next) = next else {
                return permit;
            };
            // A queued occurrence handed over by `finish`.
            execution = next;
            (cancel, cause) = self.register(&execution);
            if self.is_stopping() {
                let _ = cause.set(Cancel::Shutdown);
                cancel.cancel();
            }
        }
    }

    async fn perform(
        &self,
        task: &Arc<Task>,
        e: &Execution,
        cancel: &CancellationToken,
    ) -> Outcome {
        if cancel.is_cancelled() {
            return Outcome::Cancelled;
        }
        let run = Run {
            task: task.clone(),
            execution: e.clone(),
            cancel: cancel.clone(),
        };
        let work = AssertUnwindSafe(self.executor.run(run)).catch_unwind();
        let timeout = async {
            match task.policy.timeout_ms {
                Some(ms) => {
                    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
                    self.clock
                        .sleep_until(e.started_at + TimeDelta::milliseconds(ms))
                        .await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // An engine cancellation wins over a result that comes with it.
            biased;
            _ = cancel.cancelled() => Outcome::Cancelled,
            result = work => Outcome::Done(result.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                Err(format!("executor panicked: {what}"))
            })),
            _ = timeout => {
                cancel.cancel();
                Outcome::TimedOut
            }
        }
    }

    /// Records a run's result; returns a queued occurrence to run next.
    async fn record(
        &self,
        task: &Task,
        e: &Execution,
        actual_start: Option<DateTime<Utc>>,
        outcome: Outcome,
        cause: Option<Cancel>,
    ) -> Option<Execution> {
        let now = self.clock.now();
        let policy = &task.policy;
        let may_retry = e.attempt <= policy.max_retries;
        let retry = |retry: bool| {
            retry.then(|| now + TimeDelta::from_std(policy.backoff(e.attempt)).unwrap_or_default())
        };
        let (status, error, output, retry_at) = match outcome {
            Outcome::Done(Ok(output)) => (ExecutionStatus::Succeeded, None, output, None),
            Outcome::Done(Err(message)) => (
                ExecutionStatus::Failed,
                Some(message),
                None,
                retry(may_retry),
            ),
            Outcome::TimedOut => (
                ExecutionStatus::TimedOut,
                Some(format!(
                    "timed out after {} ms",
                    policy.timeout_ms.unwrap_or_default()
                )),
                None,
                retry(may_retry),
            ),
            Outcome::Cancelled => match cause {
                Some(Cancel::Shutdown) => (
                    ExecutionStatus::Abandoned,
                    Some(format!("scheduler {} shut down", self.config.node)),
                    None,
                    Some(now),
                ),
                // Another node owns it now; its record stands.
                Some(Cancel::Fenced) | None => return None,
            },
        };
        let finish = Finish {
            id: e.id,
            fence: e.fence,
            status,
            started_at: actual_start,
            finished_at: now,
            error,
            output,
            retry_at,
            node: self.config.node.clone(),
            lease_until: now + self.lease(),
        };
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.finish(finish.clone()).await {
                Ok(out) => {
                    if let (Some(at), false) = (retry_at, self.is_stopping()) {
                        let mut failed = e.clone();
                        failed.status = status;
                        failed.retry_at = Some(at);
                        let _ = self.events.send(Event::Retry {
                            failed: Box::new(failed),
                            task: None,
                        });
                    }
                    return out.started;
                }
                Err(err @ (Error::Conflict { .. } | Error::NotFound { .. })) => {
                    tracing::info!(execution = %e.id, %err, "result not recorded: the execution was taken over");
                    return None;
                }
                Err(err) => {
                    let lease_until = self.running().get(&e.id).map(|r| r.lease_until);
                    let now = self.clock.now();
                    if !err.is_transient() || lease_until.is_none_or(|until| now >= until) {
                        tracing::error!(execution = %e.id, %err, "result lost: the store refused it until the lease ran out");
                        return None;
                    }
                    tracing::warn!(execution = %e.id, %err, "recording the result failed; retrying");
                    self.clock
                        .sleep_until(now + TimeDelta::from_std(delay).unwrap_or_default())
                        .await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Renews the leases of the runs in flight that have used a third of
    /// theirs; cancels the runs whose execution was taken over. Runs until
    /// `stop`.
    ///
    /// Checked every sixth of the lease, so a lease is renewed when between
    /// a half and two thirds of it remain. A run claimed less than a third
    /// of a lease ago (most runs, when runs are short; every run waiting for
    /// its instant) costs no store call: renewing every run in flight each
    /// time sent about ten thousand renewals at once at 100,000 fires/s,
    /// each taking the memory store's lock, and the claims slowed down
    /// when they did.
    pub(crate) async fn keep_leases(self: Arc<Self>, stop: CancellationToken) {
        let lease = self.lease();
        let every = lease / 6;
        loop {
            tokio::select! {
                _ = self.clock.sleep_until(self.clock.now() + every) => {}
                _ = stop.cancelled() => return,
            }
            let renew_before = self.clock.now() + lease * 2 / 3;
            let held: Vec<(ExecutionId, u64)> = self
                .running()
                .iter()
                .filter(|(_, r)| r.lease_until < renew_before)
                .map(|(id, r)| (*id, r.fence))
                .collect();
            for chunk in held.chunks(64) {
                let until = self.clock.now() + self.lease();
                let store = &self.store;
                let renewals = chunk.iter().map(|&(id, fence)| async move {
                    (id, store.renew_lease(id, fence, until).await)
                });
                for (id, result) in futures::future::join_all(renewals).await {
                    match result {
                        Ok(()) => {
                            if let Some(r) = self.running().get_mut(&id) {
                                r.lease_until = until;
                            }
                        }
                        Err(Error::Conflict { .. } | Error::NotFound { .. }) => {
                            tracing::warn!(execution = %id, "lease lost: cancelling the run");
                            self.cancel(id, Cancel::Fenced);
                        }
                        Err(err) => {
                            tracing::warn!(execution = %id, %err, "lease renewal failed; will retry")
                        }
                    }
                }
            }
        }
    }

    /// Takes over executions whose lease expired (their scheduler died) and
    /// runs the queued occurrences that were waiting on them. Runs until `stop`.
    pub(crate) async fn recover(self: Arc<Self>, stop: CancellationToken) {
        let every = TimeDelta::from_std(self.config.lease / 4)
            .unwrap_or(TimeDelta::seconds(5))
            .max(TimeDelta::milliseconds(250));
        loop {
            tokio::select! {
                _ = self.clock.sleep_until(self.clock.now() + every) => {}
                _ = stop.cancelled() => return,
            }
            if self.is_stopping() {
                return;
            }
            let now = self.clock.now();
            let recovered = match self
                .store
                .recover_expired(now, &self.config.node, now + self.lease(), 1000)
                .await
            {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(%err, "recovering expired leases failed; will retry");
                    continue;
                }
            };
            for e in &recovered.abandoned {
                tracing::info!(execution = %e.id, task = %e.task_id, node = %e.node, "took over an execution whose lease expired");
                if e.retry_at.is_some() {
                    let _ = self.events.send(Event::Retry {
                        failed: Box::new(e.clone()),
                        task: None,
                    });
                }
            }
            for e in recovered.started {
                self.adopt(e).await;
            }
        }
    }

    /// Runs an execution the store started for this node outside a claim.
    async fn adopt(self: &Arc<Self>, e: Execution) {
        let task = match self.store.get_task(&e.tenant, e.task_id).await {
            Ok(task) => Arc::new(task),
            Err(err) => {
                tracing::warn!(execution = %e.id, %err, "cannot load the task of a started execution; its lease will expire");
                return;
            }
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        if self.is_stopping() {
            // Left to lease expiry, as if this node had stopped first.
            return;
        }
        self.spawn_run(task, e, Some(permit));
    }

    pub(crate) async fn trigger_now(
        self: &Arc<Self>,
        tenant: &str,
        task_id: TaskId,
    ) -> Result<ClaimOutcome, Error> {
        if self.is_stopping() {
            return Err(Error::ShuttingDown);
        }
        let task = self.store.get_task(tenant, task_id).await?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        if self.is_stopping() {
            return Err(Error::ShuttingDown);
        }
        // Millisecond precision keeps the occurrence key identical in every store.
        let now = self.clock.now().trunc_subsecs(3);
        let execution = Execution::start(
            &task,
            now,
            1,
            Trigger::Manual,
            &self.config.node,
            now,
            now + self.lease(),
        );
        let claim = Claim {
            task_id,
            kind: ClaimKind::Manual,
            execution: Some(execution),
            missed: Vec::new(),
            node: self.config.node.clone(),
            now,
        };
        let outcome = self
            .store
            .claim(vec![claim])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::conflict("the store returned no outcome for the claim"))?;
        self.dispatch(Arc::new(task), outcome.clone(), Some(permit));
        Ok(outcome)
    }

    /// Acts on a claim outcome: runs what started (moving it, no copy)
    /// under `permit`, or one it takes at its instant; cancels what was
    /// replaced here. For a lost claim, returns the task as
    /// the store has it now (`Some(None)`: deleted); `None` otherwise.
    pub(crate) fn dispatch(
        self: &Arc<Self>,
        task: Arc<Task>,
        outcome: ClaimOutcome,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<Option<Box<Task>>> {
        let counters = &self.counters;
        if matches!(outcome, ClaimOutcome::Lost { .. }) {
            Counters::add(&counters.claims_lost, 1);
        } else {
            Counters::add(&counters.claims_won, 1);
        }
        let started = match outcome {
            ClaimOutcome::Started(e) => e,
            ClaimOutcome::Replaced { started, replaced } => {
                for id in replaced {
                    self.cancel(id, Cancel::Fenced);
                }
                started
            }
            ClaimOutcome::Lost { current } => return Some(current),
            _ => return None,
        };
        self.spawn_run(task, started, permit);
        None
    }
}
