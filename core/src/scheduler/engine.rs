//! The engine loop: wheel, refill, change feed, claims.
//!
//! Invariants:
//! - A task is *tracked* iff it is enabled and its `next_run` (as last seen)
//!   is within the look-ahead window; a tracked task has exactly one of: a
//!   timer on the wheel at `next_run + jitter`, or a place in `ready`.
//! - Due work stays on the wheel (which orders it) until a batch is formed:
//!   `ready` holds at most one batch taken off the wheel, in firing order,
//!   and what a failed claim put back at its front. (Draining everything
//!   due into a queue would put an occurrence that became due after a
//!   backlog formed behind that backlog, late by all of it.)
//! - The due-scan watermark only moves past pages that were read
//!   successfully.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::affinity::Members;
use super::plan::plan;
use super::run::{Cancel, Event, Shared};
use super::{ShutdownReport, tick};
use crate::model::{Execution, ExecutionId, IdMap, IdSet, Task, TaskId, Trigger};
use crate::schedule::Schedule;
use crate::store::{Change, ChangeFeed, Claim, ClaimKind, ClaimOutcome};
use crate::wheel::{TimerKey, TimingWheel};

/// Tasks read per due-scan page (one page per loop turn).
const SCAN_PAGE: usize = 2_000;
/// The page of the periodic safety-net scan, which runs while occurrences
/// are being claimed: smaller, so no page holds the loop up for long.
const SAFETY_PAGE: usize = 500;
/// Store backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Requests from the [`Scheduler`](super::Scheduler) handle.
#[derive(Debug)]
pub(crate) enum Command {
    Refresh {
        tenant: String,
        task_id: TaskId,
    },
    Shutdown {
        deadline: Duration,
        reply: oneshot::Sender<ShutdownReport>,
    },
}

#[derive(Debug, Clone)]
enum Due {
    Task(TaskId),
    Retry {
        failed: Box<Execution>,
        task: Arc<Task>,
    },
}

/// What a due scan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    /// Everything up to the horizon (start, resync, every `full_scan_every`).
    Full,
    /// The slice that entered the look-ahead window since the last scan.
    Refill,
    /// Occurrences late by `takeover_after` (affinity: their owner did not
    /// claim them).
    Overdue,
}

/// A due scan in progress: the slice `(from, top]` of the due order
/// `(next_run, id)`, read in chunks, each in pages.
///
/// Claims move a task up the order, by at least a second (the shortest
/// period), while the scan runs. Read bottom to top, a scan meets every
/// task claimed behind it again, and the due ones are claimed all the time:
/// with a second-period workload the scan chased them until its horizon
/// passed, reading every such task ten times over (a look-ahead's worth),
/// and it ended with the next refill's start as far behind as it began,
/// so the next refill chased as well (at 30,000 fires/s on Redis, three
/// nodes read 540,000 tasks every 20 s that way, about as many as the
/// claims' own reads). So refills and full scans but the first read what is due
/// within a second of their start, bottom to top (the urgent part; what
/// is claimed there moves above it and is read once more), then the rest
/// in chunks from the top down, so what is claimed during the scan moves
/// into a chunk already read. Chunks are a second wide (the shortest
/// period), wider for a look-ahead over 17 s (at most 16 of them), where a
/// task with a shorter period than its chunk may be read again. (A task
/// claimed by a peer, unknown here, may so move past the scan unread; the
/// next full scan reads it, and its owner runs it meanwhile.)
///
/// The first full scan (nothing tracked yet) reads bottom to top in one
/// chunk: what is not tracked is read in the order it falls due, at the
/// price of one chase. A later one (periodic, or on a resync, a new
/// subscription or a failed re-read) is chunked.
///
/// A page with fewer tasks than asked ends its chunk; a store that leaves
/// out tasks changed between its reads (Redis) can so end a chunk early,
/// and the rest of it is read by the next full scan.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// The page cursor in the current chunk.
    after: Option<(DateTime<Utc>, TaskId)>,
    /// The current chunk's upper end.
    horizon: DateTime<Utc>,
    /// Where the scan's slice starts (exclusive), and its upper end.
    from: Option<(DateTime<Utc>, TaskId)>,
    top: DateTime<Utc>,
    /// Where the urgent chunk ends and the top-down chunks stop; the
    /// chunks' width.
    split: DateTime<Utc>,
    width: TimeDelta,
    /// Reading the urgent chunk (`(from, split]`, bottom to top).
    urgent: bool,
    /// When the scan started: its slice is the window as of then.
    started: DateTime<Utc>,
    kind: ScanKind,
    /// Tasks read per page.
    page: usize,
}

/// The narrowest a top-down scan chunk is, and the urgent part's length:
/// the shortest period a task can have, so a task claimed during the scan
/// leaves the chunk it was in.
const SCAN_CHUNK: TimeDelta = TimeDelta::seconds(1);
/// The least time between the end of a scan and the next refill.
const REFILL_GAP: TimeDelta = TimeDelta::milliseconds(500);
/// Most top-down chunks in one scan (a long look-ahead gets wider ones).
const SCAN_CHUNKS_MAX: i32 = 16;

/// The due-order key just after every task at `t`.
fn after_all_at(t: DateTime<Utc>) -> Option<(DateTime<Utc>, TaskId)> {
    Some((t, TaskId::from_uuid(uuid::Uuid::max())))
}

impl Scan {
    /// A scan of `(from, top]` started at `now`, chunked as the type's docs
    /// say (`chunked`), or in one chunk read bottom to top.
    fn new(
        from: Option<(DateTime<Utc>, TaskId)>,
        top: DateTime<Utc>,
        now: DateTime<Utc>,
        kind: ScanKind,
        page: usize,
        chunked: bool,
    ) -> Self {
        let split = if chunked {
            (now + SCAN_CHUNK).min(top)
        } else {
            top
        };
        let mut scan = Self {
            after: from,
            horizon: split,
            from,
            top,
            split,
            // Rounded up to the millisecond, so there are never more
            // than `SCAN_CHUNKS_MAX` chunks.
            width: TimeDelta::milliseconds(
                ((top - split).num_milliseconds() + i64::from(SCAN_CHUNKS_MAX) - 1)
                    / i64::from(SCAN_CHUNKS_MAX),
            )
            .max(SCAN_CHUNK),
            urgent: true,
            started: now,
            kind,
            page,
        };
        if from >= after_all_at(split) {
            // Nothing due within the urgent chunk: start at the top.
            scan.urgent = false;
            scan.horizon = top;
            scan.after = scan.chunk_start(top);
        }
        scan
    }

    /// Where the top-down chunk ending at `hi` starts (exclusive): a width
    /// below, but not below the split or the scan's start.
    fn chunk_start(&self, hi: DateTime<Utc>) -> Option<(DateTime<Utc>, TaskId)> {
        let lo = after_all_at((hi - self.width).max(self.split));
        lo.max(self.from)
    }

    /// Moves to the next chunk once the current one is read; false when
    /// the scan is done.
    fn next_chunk(&mut self) -> bool {
        let hi = if self.urgent {
            self.urgent = false;
            self.top
        } else {
            let lo = self.chunk_start(self.horizon);
            match lo {
                Some((t, _)) if lo != self.from && t > self.split => t,
                _ => return false,
            }
        };
        if hi <= self.split {
            return false;
        }
        self.horizon = hi;
        self.after = self.chunk_start(hi);
        true
    }
}

/// Longest a shutting-down scheduler waits to leave the membership.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// A node that claims its own occurrences this late (they are claimed
/// `claim_ahead` before their instant when it keeps up) is behind.
const BEHIND: TimeDelta = TimeDelta::milliseconds(100);

/// How often the overdue scan runs while several nodes share the work.
const OVERDUE_SCAN_EVERY: TimeDelta = TimeDelta::seconds(1);

#[derive(Debug)]
struct Tracked {
    /// Timer on the wheel; `None` while the task waits in `ready`.
    key: Option<TimerKey>,
    task: Arc<Task>,
    schedule: Schedule,
    next_run: DateTime<Utc>,
    /// The overdue scan found this occurrence unclaimed in the store
    /// `takeover_after` late: claim it even if another node owns the task.
    takeover: bool,
}

pub(crate) struct Engine {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    wheel: TimingWheel<Due>,
    tracked: IdMap<TaskId, Tracked>,
    /// Failed attempts whose retry is on the wheel.
    retries: IdSet<ExecutionId>,
    ready: VecDeque<Due>,
    watermark: Option<(DateTime<Utc>, TaskId)>,
    scan: Option<Scan>,
    feed: Option<ChangeFeed>,
    next_refill: DateTime<Utc>,
    next_full_scan: DateTime<Utc>,
    next_overdue_scan: DateTime<Utc>,
    /// When this node last claimed one of its own occurrences `BEHIND`
    /// or more after its instant: it is behind itself, so occurrences its
    /// peers left as late are not taken over (see `plan_scan`).
    behind_at: Option<DateTime<Utc>>,
    /// The last claim turn left work of this node's past its instant
    /// unclaimed (it could not keep up, or had no permit or store).
    lagging: bool,
    full_scan_pending: bool,
    backoff: Duration,
    backoff_until: Option<DateTime<Utc>>,
    stop_helpers: CancellationToken,
    /// The heartbeat task (affinity) and its own stop, so shutdown can end
    /// it before leaving the membership.
    membership: Option<tokio::task::JoinHandle<()>>,
    stop_membership: CancellationToken,
    /// The membership as of this loop turn (read once a turn, not per use).
    members: Members,
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn from_tick(t: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(t).unwrap_or(i64::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Engine {
    pub(crate) fn new(shared: Arc<Shared>, commands: mpsc::Receiver<Command>) -> Self {
        let events = shared
            .events_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("one engine per Shared");
        let now = shared.clock.now();
        let stop_helpers = CancellationToken::new();
        let members = Members::everything(&shared.config.node);
        Self {
            wheel: TimingWheel::with_now(tick(now)),
            shared,
            commands,
            events,
            tracked: IdMap::default(),
            retries: IdSet::default(),
            ready: VecDeque::new(),
            watermark: None,
            scan: None,
            feed: None,
            next_refill: now,
            next_full_scan: now,
            next_overdue_scan: now,
            behind_at: None,
            lagging: false,
            full_scan_pending: true,
            backoff: BACKOFF_MIN,
            backoff_until: None,
            stop_membership: stop_helpers.child_token(),
            members,
            stop_helpers,
            membership: None,
        }
    }

    fn look_ahead(&self) -> TimeDelta {
        delta(self.shared.config.look_ahead)
    }

    fn claim_ahead(&self) -> TimeDelta {
        delta(self.shared.config.claim_ahead)
    }

    pub(crate) async fn run(mut self) {
        tokio::spawn(
            self.shared
                .clone()
                .keep_leases(self.stop_helpers.child_token()),
        );
        tokio::spawn(self.shared.clone().recover(self.stop_helpers.child_token()));
        if self.shared.config.affinity {
            self.membership = Some(tokio::spawn(
                self.shared
                    .clone()
                    .keep_membership(self.stop_membership.clone()),
            ));
        }
        // The pending wait, kept across iterations while its deadline holds.
        let mut sleep: Option<(DateTime<Utc>, crate::SleepFuture)> = None;
        let shutdown = loop {
            self.members = self.shared.members();
            let now = self.shared.clock.now();
            if self.feed.is_none() {
                self.subscribe().await;
            }
            if self.store_ok(now) {
                self.plan_scan(now);
                self.scan_page(now).await;
            }
            let now = self.shared.clock.now();
            if self.store_ok(now) {
                self.claim_ready().await;
            }
            let now = self.shared.clock.now();
            self.lagging = !self.ready.is_empty()
                || self
                    .wheel
                    .next_deadline()
                    .is_some_and(|d| from_tick(d) <= now);
            let wake = self.wake_time(now);
            if sleep.as_ref().is_none_or(|(at, _)| *at != wake) {
                sleep = Some((wake, self.shared.clock.sleep_until(wake)));
            }
            let (_, timer) = sleep.as_mut().expect("set above");
            // Due work waits for a run to end and free a permit.
            let blocked = self.shared.permits.available_permits() == 0 && self.has_due(now);
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown { deadline, reply }) => break Some((deadline, reply)),
                    Some(Command::Refresh { tenant, task_id }) => {
                        self.refresh(&tenant, task_id).await;
                        // A write through this process fires on time here,
                        // whether or not this node owns the task (its owner
                        // hears of it only through the change feed).
                        if let Some(t) = self.tracked.get_mut(&task_id) {
                            t.takeover = true;
                        }
                    }
                    // The handle was dropped without a shutdown: stop at once.
                    None => break None,
                },
                Some(event) = self.events.recv() => self.on_event(event).await,
                change = next_change(&mut self.feed) => self.on_change(change).await,
                () = self.shared.permit_freed.notified(), if blocked => {}
                () = timer => sleep = None,
            }
        };
        if let Some((deadline, reply)) = shutdown {
            let report = self.shutdown(deadline).await;
            let _ = reply.send(report);
        } else {
            self.shared.begin_stopping();
        }
        self.stop_helpers.cancel();
    }

    /// The next moment the loop has something to do.
    ///
    /// While the store is backed off nothing that needs it can happen
    /// before the backoff ends, and a scan in progress runs at once: a
    /// refill or full scan already overdue must not count then, or the loop
    /// spins (it did, at full CPU, for as long as a store stayed away).
    /// Due work left on the wheel counts only while it can be claimed: with
    /// the store backed off or every permit taken it waits (for the
    /// backoff's end, or for `permit_freed`).
    fn wake_time(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let can_claim = self.shared.permits.available_permits() > 0;
        let mut wake = match self.backoff_until {
            Some(until) if until > now => return until,
            _ if self.scan.is_some() || (can_claim && !self.ready.is_empty()) => now,
            _ => {
                let mut next_scan = self.next_refill.min(self.next_full_scan);
                if self.members.is_split() {
                    next_scan = next_scan.min(self.next_overdue_scan);
                }
                next_scan
            }
        };
        if can_claim && let Some(deadline) = self.wheel.next_deadline() {
            wake = wake.min(from_tick(deadline) - self.claim_ahead());
        }
        wake.max(now)
    }

    /// Whether anything is due to be claimed: in `ready`, or on the wheel
    /// within `claim_ahead`.
    fn has_due(&self, now: DateTime<Utc>) -> bool {
        !self.ready.is_empty()
            || self
                .wheel
                .next_deadline()
                .is_some_and(|d| d <= tick(now + self.claim_ahead()))
    }

    /// Tops `ready` up to `want` from the wheel with work due by `until`,
    /// earliest first.
    fn fill_ready(&mut self, until: u64, want: usize) {
        while self.ready.len() < want {
            let Some((_, _, due)) = self.wheel.poll(until) else {
                return;
            };
            if let Due::Task(id) = &due
                && let Some(t) = self.tracked.get_mut(id)
            {
                t.key = None;
            }
            self.ready.push_back(due);
        }
    }

    fn store_ok(&self, now: DateTime<Utc>) -> bool {
        self.backoff_until.is_none_or(|until| now >= until)
    }

    fn store_failed(&mut self, now: DateTime<Utc>, what: &str, err: &crate::Error) {
        super::run::Counters::add(&self.shared.counters.store_errors, 1);
        tracing::warn!(%err, backoff_ms = self.backoff.as_millis() as u64, "{what} failed; retrying");
        self.backoff_until = Some(now + delta(self.backoff));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn store_recovered(&mut self) {
        self.backoff_until = None;
        self.backoff = BACKOFF_MIN;
    }

    async fn subscribe(&mut self) {
        match self.shared.store.subscribe().await {
            Ok(feed) => {
                self.feed = Some(feed);
                // Writes made while unsubscribed are found by a full scan.
                self.full_scan_pending = true;
            }
            Err(err) => tracing::warn!(%err, "subscribing to the change feed failed; will retry"),
        }
    }

    /// Starts a due scan if one is due: a full one (everything up to the
    /// horizon) at start, on `Resync` and every `full_scan_every`; otherwise
    /// an incremental one over the slice that entered the look-ahead window
    /// since the last scan; otherwise, while several nodes share the work,
    /// one for occurrences their owners left late.
    fn plan_scan(&mut self, now: DateTime<Utc>) {
        if self.scan.is_some() {
            return;
        }
        let horizon = now + self.look_ahead();
        if self.full_scan_pending || now >= self.next_full_scan {
            // The first scan reads what falls due first, first; later
            // ones, of tasks tracked already, in chunks (see `Scan`).
            let page = if self.full_scan_pending {
                SCAN_PAGE
            } else {
                SAFETY_PAGE
            };
            let chunked = !self.tracked.is_empty();
            self.scan = Some(Scan::new(None, horizon, now, ScanKind::Full, page, chunked));
        } else if now >= self.next_refill {
            self.scan = Some(Scan::new(
                self.watermark,
                horizon,
                now,
                ScanKind::Refill,
                SCAN_PAGE,
                true,
            ));
        } else if now >= self.next_overdue_scan && self.members.is_split() {
            // A node that is itself behind leaves its peers' late work to
            // them: when every node is overloaded, taking over would only
            // add claims that race the owners' and read more rows, and the
            // overload would feed itself. A dead or stuck owner is found by
            // the nodes that keep up.
            //
            // Behind means: its last claim turn left work past its instant
            // unclaimed, or it claimed its own work `BEHIND` late within
            // `takeover_after`.
            // (It was: half of `takeover_after` late, or anything in
            // `ready`, when `ready` held everything due and was seldom
            // empty under load. With due work left on the wheel, that
            // would let nodes a second behind take over.)
            let takeover_after = delta(self.shared.config.takeover_after);
            let behind = self.lagging || self.behind_at.is_some_and(|at| now - at < takeover_after);
            if behind {
                self.next_overdue_scan = now + OVERDUE_SCAN_EVERY;
                return;
            }
            self.scan = Some(Scan::new(
                None,
                now - takeover_after,
                now,
                ScanKind::Overdue,
                SCAN_PAGE,
                false,
            ));
        }
    }

    /// Reads one page of the scan in progress (so claims are never held up
    /// for long) and, after the last, the retries due in the window.
    async fn scan_page(&mut self, now: DateTime<Utc>) {
        let Some(scan) = self.scan.as_mut() else {
            return;
        };
        let (after, horizon, top, started, kind, page) = (
            scan.after,
            scan.horizon,
            scan.top,
            scan.started,
            scan.kind,
            scan.page,
        );
        let tasks = match self.shared.store.due_tasks(after, horizon, page).await {
            Ok(tasks) => tasks,
            Err(err) => {
                self.store_failed(now, "due scan", &err);
                return;
            }
        };
        let n = tasks.len();
        let mut last = after;
        for task in tasks {
            let (id, next_run) = (task.id, task.next_run);
            // Overdue: the occurrence's jittered instant, not just its time,
            // is `takeover_after` in the past (the scan reads by time).
            let overdue = next_run.is_some_and(|n| n + task.policy.jitter(id, n) <= horizon);
            if let Some(next) = next_run {
                last = Some((next, id));
            }
            self.track(task, now);
            if kind == ScanKind::Overdue
                && overdue
                && let Some(t) = self.tracked.get_mut(&id)
                && Some(t.next_run) == next_run
            {
                t.takeover = true;
            }
        }
        if let Some(scan) = self.scan.as_mut() {
            if n == page {
                scan.after = last;
                return;
            }
            if scan.next_chunk() {
                return;
            }
        }
        if kind == ScanKind::Overdue {
            self.store_recovered();
            self.scan = None;
            self.next_overdue_scan = now + OVERDUE_SCAN_EVERY;
            return;
        }
        match self.shared.store.due_retries(top, SCAN_PAGE).await {
            Ok(failed) => {
                for e in failed {
                    self.track_retry(e, None).await;
                }
            }
            Err(err) => {
                self.store_failed(now, "retry scan", &err);
                return;
            }
        }
        self.store_recovered();
        self.scan = None;
        // Tasks at or before the scan's top were read (or reach the engine by
        // its own claims, lost claims and the change feed).
        self.watermark = after_all_at(top);
        // The window has moved on since the scan started, not since it
        // ended: a scan that took long (a large first read, a clock that
        // jumped) is followed by a refill sooner, but not at once, so the
        // overdue scan (which waits for no refill to be due) still runs.
        self.next_refill = (started + (self.look_ahead() / 2).max(TimeDelta::milliseconds(500)))
            .max(now + REFILL_GAP);
        if kind == ScanKind::Full {
            self.full_scan_pending = false;
            // Spread over 75–125% of the period, differently per node and
            // per turn, so nodes started together do not all read every
            // task at the same moment.
            let spread = crate::model::mix64(
                super::affinity::seed(&self.shared.config.node) ^ now.timestamp_millis() as u64,
            ) % 501;
            self.next_full_scan =
                now + delta(self.shared.config.full_scan_every) * (750 + spread as i32) / 1000;
        }
    }

    /// Puts a task on the wheel at its `next_run` (plus jitter) if that is
    /// within the look-ahead window; forgets it otherwise.
    fn track(&mut self, task: Task, now: DateTime<Utc>) {
        let id = task.id;
        let horizon = now + self.look_ahead();
        let next = match task.next_run {
            Some(next) if task.enabled && next <= horizon => next,
            _ => {
                self.untrack(id);
                return;
            }
        };
        if let Some(t) = self.tracked.get_mut(&id) {
            if t.next_run == next && t.task.version == task.version {
                return;
            }
            if t.key.is_none() {
                // Waiting in `ready`: the claim will use what we know now.
                if t.task.version != task.version {
                    match task.compiled_schedule() {
                        Ok(s) => t.schedule = s,
                        Err(_) => return,
                    }
                }
                t.next_run = next;
                t.task = Arc::new(task);
                return;
            }
        }
        let schedule = match task.compiled_schedule() {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(task = %id, %err, "stored task has an invalid schedule; not scheduling it");
                self.untrack(id);
                return;
            }
        };
        self.untrack(id);
        let due = next + task.policy.jitter(id, next);
        let key = self.wheel.insert(tick(due), Due::Task(id));
        self.tracked.insert(
            id,
            Tracked {
                key: Some(key),
                task: Arc::new(task),
                schedule,
                next_run: next,
                takeover: false,
            },
        );
    }

    fn untrack(&mut self, id: TaskId) {
        if let Some(key) = self.tracked.remove(&id).and_then(|t| t.key) {
            self.wheel.cancel(key);
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Retry { failed, task } => {
                let horizon = self.shared.clock.now() + self.look_ahead();
                if failed.retry_at.is_some_and(|at| at <= horizon) {
                    self.track_retry(*failed, task).await;
                }
            }
        }
    }

    async fn track_retry(&mut self, failed: Execution, task: Option<Arc<Task>>) {
        if self.retries.contains(&failed.id) {
            return;
        }
        let Some(at) = failed.retry_at else {
            return;
        };
        let task = match task {
            Some(task) => task,
            None => match self
                .shared
                .store
                .get_task(&failed.tenant, failed.task_id)
                .await
            {
                Ok(task) => Arc::new(task),
                Err(err) => {
                    tracing::warn!(execution = %failed.id, %err, "cannot load the task of a retry");
                    return;
                }
            },
        };
        let id = failed.id;
        self.wheel.insert(
            tick(at),
            Due::Retry {
                failed: Box::new(failed),
                task,
            },
        );
        self.retries.insert(id);
    }

    /// Claims due work in batches while permits are free.
    ///
    /// A run claimed ahead takes its permit at its instant (see
    /// `Shared::spawn_run`), so runs waiting for their instant do not count
    /// against `max_concurrent`; a batch is at most as large as the permits
    /// free when it is formed, and nothing is claimed while none is, so a
    /// node whose executor is saturated leaves its work on the wheel (and,
    /// late by `takeover_after`, to its peers).
    async fn claim_ready(&mut self) {
        let node = self.shared.config.node.clone();
        let grace = delta(self.shared.config.grace);
        let takeover_grace = delta(self.shared.config.takeover_after) + OVERDUE_SCAN_EVERY;
        let mut shadows: Vec<(TaskId, Option<DateTime<Utc>>)> = Vec::new();
        // What is due as of this turn: work that comes due while it is
        // claimed waits for the next turn, so a node that cannot keep up
        // still reads its commands and change feed and scans.
        let until = tick(self.shared.clock.now() + self.claim_ahead());
        loop {
            // Each batch is stamped with the time it is claimed at, and
            // split by the membership as of then: a turn can be long (a
            // start-up catch-up of every task), and one that kept the
            // membership of its start claimed everything of its peers'
            // that schedulers started together had not yet heard of
            // (22,700–39,400 lost claims a run on PostgreSQL at 10,000
            // fires/s; 1,200–2,700 since).
            let now = self.shared.clock.now();
            let members = self.shared.members();
            let lease_until = now + self.shared.lease();
            let want = self
                .shared
                .permits
                .available_permits()
                .min(self.shared.config.claim_batch);
            self.fill_ready(until, want);
            let n = self.ready.len().min(want);
            if n == 0 {
                break;
            }
            let mut claims = Vec::with_capacity(n);
            let mut meta = Vec::with_capacity(n);
            for due in self.ready.drain(..n) {
                let (claim, task, next) = match &due {
                    Due::Task(id) => {
                        let Some(t) = self.tracked.get(id) else {
                            continue;
                        };
                        if !t.takeover && !members.owns(*id) {
                            // Its owner claims it: only move our copy on (the
                            // overdue scan catches what the owner leaves).
                            shadows.push((*id, t.schedule.next_after(t.next_run)));
                            continue;
                        }
                        // A taken-over occurrence is late because its owner
                        // failed: judge it on time up to the grace plus the
                        // takeover delay, as its owner would have.
                        let grace = if t.takeover {
                            grace + takeover_grace
                        } else {
                            grace
                        };
                        if !t.takeover
                            && now - (t.next_run + t.task.policy.jitter(*id, t.next_run)) >= BEHIND
                        {
                            self.behind_at = Some(now);
                        }
                        let p = plan(&t.schedule, &t.task.policy, *id, t.next_run, now, grace);
                        let execution = p.run.map(|(at, trigger)| {
                            // Claimed ahead, it is recorded as starting at
                            // its instant (the run corrects that if late).
                            let start = now.max(at + t.task.policy.jitter(*id, at));
                            Execution::start(&t.task, at, 1, trigger, &node, start, lease_until)
                        });
                        let claim = Claim {
                            task_id: *id,
                            kind: ClaimKind::Scheduled {
                                expected_next_run: t.next_run,
                                expected_version: t.task.version,
                                new_next_run: p.next_run,
                            },
                            execution,
                            missed: p.missed,
                            node: node.clone(),
                            now,
                        };
                        (claim, t.task.clone(), p.next_run)
                    }
                    Due::Retry { failed, task } => {
                        let start = failed.retry_at.map_or(now, |at| now.max(at));
                        let execution = Execution::start(
                            task,
                            failed.scheduled_for,
                            failed.attempt + 1,
                            Trigger::Retry,
                            &node,
                            start,
                            lease_until,
                        );
                        let claim = Claim {
                            task_id: task.id,
                            kind: ClaimKind::Retry { failed: failed.id },
                            execution: Some(execution),
                            missed: Vec::new(),
                            node: node.clone(),
                            now,
                        };
                        (claim, task.clone(), None)
                    }
                };
                claims.push(claim);
                meta.push((due, task, next));
            }
            super::run::Counters::add(&self.shared.counters.shadowed, shadows.len() as u64);
            for (id, next) in shadows.drain(..) {
                self.advance(id, next, now);
            }
            if claims.is_empty() {
                continue;
            }
            match self.shared.store.claim(claims).await {
                Ok(outcomes) => {
                    self.store_recovered();
                    for (outcome, (due, task, next)) in outcomes.into_iter().zip(meta) {
                        self.settle(now, due, task, next, outcome);
                    }
                    // Let the runs just started (and their results) use this
                    // worker too: an in-process store never yields by itself.
                    tokio::task::yield_now().await;
                }
                Err(err) => {
                    // Put everything back, in order, and wait.
                    for (due, ..) in meta.into_iter().rev() {
                        self.ready.push_front(due);
                    }
                    self.store_failed(now, "claim", &err);
                    return;
                }
            }
        }
    }

    /// Acts on one claim outcome and reschedules its task.
    fn settle(
        &mut self,
        now: DateTime<Utc>,
        due: Due,
        task: Arc<Task>,
        next: Option<DateTime<Utc>>,
        outcome: ClaimOutcome,
    ) {
        let lost = self.shared.dispatch(task, outcome, None);
        match due {
            Due::Retry { failed, .. } => {
                self.retries.remove(&failed.id);
            }
            Due::Task(id) => match lost {
                Some(Some(current)) => {
                    // Force a fresh timer from what the store says now.
                    self.untrack(id);
                    self.track(*current, now);
                }
                Some(None) => self.untrack(id),
                None => self.advance(id, next, now),
            },
        }
    }

    /// Moves a tracked task to its next occurrence after a won claim,
    /// reusing what is known of it (no copy, no recompiling).
    fn advance(&mut self, id: TaskId, next: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        let horizon = now + self.look_ahead();
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        match next {
            Some(next) if next <= horizon => {
                if let Some(key) = t.key.take() {
                    self.wheel.cancel(key);
                }
                t.next_run = next;
                t.takeover = false;
                let due = next + t.task.policy.jitter(id, next);
                t.key = Some(self.wheel.insert(tick(due), Due::Task(id)));
            }
            _ => self.untrack(id),
        }
    }

    async fn on_change(&mut self, change: Option<Change>) {
        let now = self.shared.clock.now();
        match change {
            None => {
                tracing::warn!("change feed closed; resubscribing");
                self.feed = None;
            }
            Some(Change::Resync) => self.full_scan_pending = true,
            Some(Change::Deleted { task_id }) => self.untrack(task_id),
            Some(Change::Upserted {
                tenant,
                task_id,
                next_run,
                version,
            }) => {
                if self
                    .tracked
                    .get(&task_id)
                    .is_some_and(|t| t.task.version == version && Some(t.next_run) == next_run)
                {
                    return;
                }
                match next_run {
                    Some(next) if next <= now + self.look_ahead() => {
                        self.refresh(&tenant, task_id).await
                    }
                    _ => self.untrack(task_id),
                }
            }
        }
    }

    /// Re-reads one task and reschedules it.
    async fn refresh(&mut self, tenant: &str, task_id: TaskId) {
        let now = self.shared.clock.now();
        match self.shared.store.get_task(tenant, task_id).await {
            Ok(task) => {
                if self.tracked.get(&task_id).is_some_and(|t| t.key.is_some()) {
                    self.untrack(task_id);
                }
                self.track(task, now);
            }
            Err(crate::Error::NotFound { .. }) => self.untrack(task_id),
            Err(err) => {
                tracing::warn!(task = %task_id, %err, "reading a changed task failed; the next full scan will pick it up");
                self.full_scan_pending = true;
            }
        }
    }

    async fn shutdown(&mut self, deadline: Duration) -> ShutdownReport {
        self.shared.begin_stopping();
        let until = self.shared.clock.now() + delta(deadline);
        if self.shared.config.affinity {
            // The heartbeat loop first (it stops at its next turn: stopping
            // is set), so no heartbeat lands after the leave; both bounded,
            // so a store that is away cannot hold the shutdown up.
            self.stop_membership.cancel();
            if let Some(beat) = self.membership.take() {
                let _ = tokio::time::timeout(LEAVE_TIMEOUT, beat).await;
            }
            let node = &self.shared.config.node;
            match tokio::time::timeout(LEAVE_TIMEOUT, self.shared.store.leave(node)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%err, "leaving the membership failed; others take over when it expires")
                }
                Err(_) => tracing::warn!(
                    "leaving the membership timed out; others take over when it expires"
                ),
            }
        }
        let before = self.shared.running_count();
        let finished_in_time = self.shared.wait_idle(Some(until)).await;
        let abandoned = if finished_in_time {
            0
        } else {
            let n = self.shared.cancel_all(Cancel::Shutdown);
            self.shared.wait_idle(None).await;
            n
        };
        ShutdownReport {
            finished: before.saturating_sub(abandoned),
            abandoned,
        }
    }
}

async fn next_change(feed: &mut Option<ChangeFeed>) -> Option<Change> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Key = Option<(DateTime<Utc>, TaskId)>;

    /// The chunks `(after, horizon]` a scan reads, in order (each read in
    /// one page here).
    fn chunks(mut scan: Scan) -> Vec<(Key, DateTime<Utc>)> {
        let mut out = vec![(scan.after, scan.horizon)];
        while scan.next_chunk() {
            out.push((scan.after, scan.horizon));
            assert!(out.len() < 100, "the scan never ends: {out:?}");
        }
        out
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// Whether key `(t, id)` is in chunk `(after, horizon]`.
    fn holds(chunk: &(Key, DateTime<Utc>), t: DateTime<Utc>, id: TaskId) -> bool {
        chunk.0.is_none_or(|a| (t, id) > a) && t <= chunk.1
    }

    #[test]
    fn a_full_scan_reads_the_urgent_second_first_then_the_rest_top_down() {
        let now = at(0);
        let got = chunks(Scan::new(None, at(10), now, ScanKind::Full, 10, true));
        let want: Vec<(Key, DateTime<Utc>)> = std::iter::once((None, at(1)))
            .chain((2..=10).rev().map(|hi| (after_all_at(at(hi - 1)), at(hi))))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_chunks_cover_the_slice_once_each_key() {
        let id = TaskId::from_uuid(uuid::Uuid::from_u128(7));
        for (from, top, chunked) in [
            (None, at(10), true),
            (after_all_at(at(-3)), at(10), true),
            (Some((at(4), id)), at(10), true),
            (Some((at(1), id)), at(10), true),
            (Some((at(10), id)), at(10), false),
            (after_all_at(at(6)), at(10), true),
            (after_all_at(at(10)), at(10), true),
            (None, at(3600), true),
            (None, at(10), false),
            (None, at(-2), false),
        ] {
            let got = chunks(Scan::new(from, top, at(0), ScanKind::Refill, 10, chunked));
            assert!(got.len() <= SCAN_CHUNKS_MAX as usize + 1, "{got:?}");
            for ms in (-5_000..3_700_000).step_by(250) {
                let t = at(0) + TimeDelta::milliseconds(ms);
                for key_id in [
                    TaskId::from_uuid(uuid::Uuid::nil()),
                    id,
                    TaskId::from_uuid(uuid::Uuid::from_u128(8)),
                    TaskId::from_uuid(uuid::Uuid::max()),
                ] {
                    let in_slice = from.is_none_or(|f| (t, key_id) > f) && t <= top;
                    let n = got.iter().filter(|c| holds(c, t, key_id)).count();
                    assert_eq!(
                        n,
                        usize::from(in_slice),
                        "{t} {key_id} from {from:?} top {top}: {got:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_refill_ahead_of_the_urgent_second_starts_at_the_top() {
        let got = chunks(Scan::new(
            after_all_at(at(5)),
            at(10),
            at(0),
            ScanKind::Refill,
            10,
            true,
        ));
        let want: Vec<(Key, DateTime<Utc>)> = (6..=10)
            .rev()
            .map(|hi| (after_all_at(at(hi - 1)), at(hi)))
            .collect();
        assert_eq!(got, want);
    }
}
