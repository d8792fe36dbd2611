//! The scheduler engine.
//!
//! A [`Scheduler`] runs one engine task on the current tokio runtime. The
//! engine keeps the occurrences due within the look-ahead window on a
//! [`TimingWheel`](crate::TimingWheel) (ticks are Unix milliseconds from the
//! [`Clock`]), refills it from the store's due scan and change feed, claims
//! due occurrences through the store (the claim is the exactly-once step),
//! and runs the winners on the [`Executor`] under a concurrency cap. Helper
//! tasks renew the leases of running executions and take over executions
//! whose lease expired on other (dead) nodes.
//!
//! Behaviour under failure:
//! - A store error never drops an occurrence: claims that fail are retried
//!   with exponential backoff (50 ms to 5 s), and when the store returns the
//!   misfire policy decides about occurrences that became late meanwhile.
//! - A result that cannot be recorded is retried until the execution's lease
//!   runs out; after that another node has taken it over and the result is
//!   dropped (fencing), which is what makes the takeover safe.
//! - Several schedulers on one store never start an occurrence twice: the
//!   store's claim lets exactly one start it.
//!
//! # Affinity
//!
//! Schedulers sharing a store split the work instead of racing for every
//! occurrence. Each heartbeats into the store every second; each task has
//! one owner among the live nodes (rendezvous hashing), which claims it on
//! time; the others claim it only once it is late by `takeover_after`
//! (default 2 s). A node that dies costs its tasks about that much
//! lateness until its heartbeat expires (3 s), then the others own them.
//! [`SchedulerBuilder::affinity`] turns it off. Details in the source of
//! `scheduler::affinity`.
//!
//! # Claiming ahead
//!
//! The engine claims an occurrence up to `claim_ahead` (default 100 ms)
//! before its instant, then starts the run at the instant (Quartz calls this
//! the fire-ahead window). The store round trip is then off the critical
//! path, a burst is claimed in a few large batches instead of many small
//! ones, and a pause of the process (a GC-like stall, a busy CPU) shorter
//! than the window makes no run late. The execution is recorded `running`
//! from the claim, with the planned start as `started_at`; the run reports
//! the actual start (when the executor was called) with its result, and the
//! store keeps that. What the window costs:
//! - an edit, pause or delete of a task reaches an occurrence only if it
//!   lands before that occurrence's claim, up to `claim_ahead` before its
//!   instant (without the window: before the claim at the instant);
//! - a node that dies inside the window leaves its claimed runs to lease
//!   expiry, like runs it had started: `abandoned`, retried if the policy
//!   allows.
//!
//! A run claimed ahead takes its `max_concurrent` permit at its instant, not
//! at the claim, so a low cap does not shrink the window; the engine claims
//! only while permits are free, at most as many per batch as are free, so a
//! node whose executor is saturated leaves its due work on the wheel (for
//! its peers to take over once it is `takeover_after` late).
//!
//! [`SchedulerBuilder::claim_ahead`] with zero claims at the instant.
//!
//! Choices where the specification is silent:
//! - Runs interrupted by [`Scheduler::shutdown`] are recorded `abandoned`
//!   with an immediate retry, whatever `max_retries` says: they did not fail,
//!   the process stopped. Runs whose scheduler died (lease expiry) are
//!   retried only if the policy allows, as specified.
//! - A paused task that is resumed continues from the resume time: pausing
//!   never causes a misfire burst.
//! - One-time tasks run late whatever their misfire policy.

mod affinity;
mod engine;
mod plan;
mod run;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::executor::Executor;
use crate::model::TaskId;
use crate::store::{ClaimOutcome, Store};

pub(crate) use run::Shared;

/// Builds a [`Scheduler`].
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tickwheel::{MemoryStore, Scheduler, executor_fn};
///
/// let store = Arc::new(MemoryStore::new());
/// let scheduler = Scheduler::builder(store, executor_fn(|run| async move {
///     println!("{} runs", run.task.name);
///     Ok(None)
/// }))
/// .node_id("worker-1")
/// .max_concurrent(64)
/// .start();
/// scheduler.shutdown(Duration::from_secs(5)).await;
/// # });
/// ```
#[must_use = "call start() to run the scheduler"]
pub struct SchedulerBuilder {
    store: Arc<dyn Store>,
    executor: Arc<dyn Executor>,
    clock: Arc<dyn Clock>,
    config: Config,
}

impl std::fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("store", &self.store)
            .field("clock", &self.clock)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Engine settings; see the [`SchedulerBuilder`] methods for each.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) node: String,
    pub(crate) max_concurrent: usize,
    pub(crate) lease: Duration,
    pub(crate) look_ahead: Duration,
    pub(crate) grace: Duration,
    pub(crate) claim_batch: usize,
    pub(crate) claim_ahead: Duration,
    pub(crate) full_scan_every: Duration,
    pub(crate) affinity: bool,
    pub(crate) takeover_after: Duration,
}

impl SchedulerBuilder {
    fn new(store: Arc<dyn Store>, executor: Arc<dyn Executor>) -> Self {
        Self {
            store,
            executor,
            clock: Arc::new(SystemClock),
            config: Config {
                node: format!("node-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
                max_concurrent: 1024,
                lease: Duration::from_secs(30),
                look_ahead: Duration::from_secs(10),
                grace: Duration::from_secs(5),
                claim_batch: 256,
                claim_ahead: Duration::from_millis(100),
                full_scan_every: Duration::from_secs(30),
                affinity: true,
                takeover_after: Duration::from_secs(2),
            },
        }
    }

    /// The clock (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// This scheduler's name in execution records and in the membership
    /// the schedulers sharing a store keep (default: `node-` and a random
    /// suffix). It must be unique among the live processes: two sharing a
    /// name both own the same tasks (still started once each, but raced
    /// for), and one's shutdown removes the other from the membership until
    /// its next heartbeat.
    pub fn node_id(mut self, node: impl Into<String>) -> Self {
        self.config.node = node.into();
        self
    }

    /// Most runs executing at once (default 1024, at least 1). Due
    /// occurrences beyond it wait; none is dropped. A run claimed ahead
    /// (see [`claim_ahead`](Self::claim_ahead)) takes its permit at its
    /// instant; nothing is claimed while every permit is taken.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.config.max_concurrent = n.max(1);
        self
    }

    /// Lease of a running execution (default 30 s, at least 1 s); renewed
    /// once a third of it has passed (checked every sixth of it).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// How far ahead occurrences are loaded onto the wheel (default 10 s,
    /// at least 1 s).
    pub fn look_ahead(mut self, d: Duration) -> Self {
        self.config.look_ahead = d.max(Duration::from_secs(1));
        self
    }

    /// Lateness up to which an occurrence counts as on time (default 5 s).
    pub fn misfire_grace(mut self, d: Duration) -> Self {
        self.config.grace = d;
        self
    }

    /// Most occurrences claimed in one store call (default 256).
    pub fn claim_batch(mut self, n: usize) -> Self {
        self.config.claim_batch = n.max(1);
        self
    }

    /// How long before its instant an occurrence is claimed (default
    /// 100 ms, at most 5 s); its run still starts at the instant. See
    /// "Claiming ahead" in the module docs; zero claims at the instant.
    pub fn claim_ahead(mut self, d: Duration) -> Self {
        self.config.claim_ahead = d.min(Duration::from_secs(5));
        self
    }

    /// Whether schedulers sharing the store split the claiming of
    /// occurrences between them (default `true`); see "Affinity" in the
    /// module docs. With `false` this scheduler claims every occurrence, as
    /// if alone (and still starts each one exactly once with the others).
    pub fn affinity(mut self, on: bool) -> Self {
        self.config.affinity = on;
        self
    }

    /// Lateness after which a scheduler claims an occurrence that another
    /// node owns (default 2 s, at least 100 ms): how long the tasks of a node
    /// that died wait before the others take them. Keep it under the
    /// misfire grace, so those runs still count as on time.
    pub fn takeover_after(mut self, d: Duration) -> Self {
        self.config.takeover_after = d.max(Duration::from_millis(100));
        self
    }

    /// Starts the engine on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Scheduler {
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared::new(
            self.store,
            self.executor,
            self.clock,
            self.config,
        ));
        let engine = engine::Engine::new(shared.clone(), commands_rx);
        let handle = tokio::spawn(engine.run());
        Scheduler {
            handle: SchedulerHandle {
                shared,
                commands: commands_tx,
            },
            engine: handle,
        }
    }
}

/// A running scheduler. Dropping it without [`shutdown`](Scheduler::shutdown)
/// stops the engine abruptly: its runs' leases expire and other nodes retry
/// them.
#[derive(Debug)]
pub struct Scheduler {
    handle: SchedulerHandle,
    engine: JoinHandle<()>,
}

/// A cloneable handle to a running [`Scheduler`], from
/// [`Scheduler::handle`]. Calls after the scheduler shut down fail with
/// [`Error::ShuttingDown`] (or do nothing, for [`refresh`](Self::refresh)).
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
    commands: mpsc::Sender<engine::Command>,
}

impl SchedulerHandle {
    /// The scheduler's node id.
    pub fn node_id(&self) -> &str {
        &self.shared.config.node
    }

    /// Runs a task now (trigger `manual`), subject to its overlap policy and
    /// the concurrency cap; `next_run` is not touched.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown task (or another tenant's),
    /// [`Error::ShuttingDown`], or the store's error.
    pub async fn trigger_now(&self, tenant: &str, task_id: TaskId) -> Result<ClaimOutcome, Error> {
        self.shared.trigger_now(tenant, task_id).await
    }

    /// Counters since the scheduler started.
    pub fn stats(&self) -> SchedulerStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.shared.counters;
        SchedulerStats {
            claims_won: c.claims_won.load(Relaxed),
            claims_lost: c.claims_lost.load(Relaxed),
            shadowed: c.shadowed.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            members: self.shared.members().len(),
            running: self.shared.running_count(),
        }
    }

    /// Asks the engine to look at a task now (for example right after a
    /// write through this process): it is rescheduled within milliseconds,
    /// without waiting for the change feed.
    pub async fn refresh(&self, tenant: &str, task_id: TaskId) {
        let _ = self
            .commands
            .send(engine::Command::Refresh {
                tenant: tenant.to_owned(),
                task_id,
            })
            .await;
    }
}

/// Counters of a running scheduler since it started, from
/// [`SchedulerHandle::stats`]: what its engine did, for dashboards and for
/// seeing how schedulers sharing a store split the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SchedulerStats {
    /// Claims the store granted (a run started, queued or skipped by the
    /// overlap policy, or a `skip` misfire recorded).
    pub claims_won: u64,
    /// Claims another scheduler (or a write) got to first: wasted store
    /// work. With affinity it stays near zero once the nodes have seen each
    /// other, except for retries (any node claims those) and occurrences
    /// taken over from an owner more than `takeover_after` behind.
    pub claims_lost: u64,
    /// Due occurrences left to the scheduler that owns them (affinity),
    /// without a store call.
    pub shadowed: u64,
    /// Store calls of the engine loop (scan, claim) that failed and were
    /// retried with backoff.
    pub store_errors: u64,
    /// Schedulers sharing the work as this one last saw them (1: alone, or
    /// the store keeps no membership).
    pub members: usize,
    /// Runs in flight now.
    pub running: usize,
}

/// What [`Scheduler::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Runs that finished before the deadline.
    pub finished: usize,
    /// Runs cancelled at the deadline and recorded `abandoned`.
    pub abandoned: usize,
}

impl Scheduler {
    /// A builder with the store and the executor.
    pub fn builder(store: Arc<dyn Store>, executor: impl Executor) -> SchedulerBuilder {
        SchedulerBuilder::new(store, Arc::new(executor))
    }

    /// A cloneable handle for the parts of the scheduler that other
    /// components (an HTTP adapter, say) call while it runs.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// This scheduler's node id.
    pub fn node_id(&self) -> &str {
        self.handle.node_id()
    }

    /// Runs a task now; see [`SchedulerHandle::trigger_now`].
    ///
    /// # Errors
    ///
    /// As [`SchedulerHandle::trigger_now`].
    pub async fn trigger_now(&self, tenant: &str, task_id: TaskId) -> Result<ClaimOutcome, Error> {
        self.handle.trigger_now(tenant, task_id).await
    }

    /// Asks the engine to look at a task now; see [`SchedulerHandle::refresh`].
    pub async fn refresh(&self, tenant: &str, task_id: TaskId) {
        self.handle.refresh(tenant, task_id).await;
    }

    /// Stops claiming, waits up to `deadline` for runs in flight, then
    /// cancels the rest and records them `abandoned` (with an immediate
    /// retry, so another node runs them again).
    ///
    /// The deadline is measured on the scheduler's [`Clock`]: under a
    /// [`ManualClock`](crate::ManualClock) it passes when the test moves the
    /// clock past it.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let (tx, rx) = oneshot::channel();
        let report = if self
            .handle
            .commands
            .send(engine::Command::Shutdown {
                deadline,
                reply: tx,
            })
            .await
            .is_ok()
        {
            rx.await.unwrap_or_default()
        } else {
            ShutdownReport::default()
        };
        let _ = self.engine.await;
        report
    }

    /// Counters since the scheduler started; see [`SchedulerStats`].
    pub fn stats(&self) -> SchedulerStats {
        self.handle.stats()
    }

    /// Runs in flight on this scheduler.
    pub fn running(&self) -> usize {
        self.handle.shared.running_count()
    }
}

/// The number of permits a semaphore for `n` runs needs.
pub(crate) fn semaphore(n: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))
}

/// Milliseconds since the Unix epoch as a wheel tick (0 before 1970).
pub(crate) fn tick(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}
