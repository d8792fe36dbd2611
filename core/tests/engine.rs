//! Engine behaviour with a manual clock: firing, misfire after a restart,
//! overlap, retries, timeout, shutdown, two schedulers on one store, and a
//! store that goes away. No test sleeps to wait for a result: time moves
//! only when a test advances the clock, and results are awaited with
//! timeouts.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use tickwheel::store::{
    ChangeFeed, Claim, ClaimOutcome, ExecutionPage, ExecutionQuery, Finish, FinishOutcome,
    Recovered, TaskPage,
};
use tickwheel::{
    Clock, Error, Execution, ExecutionId, ExecutionStatus, ManualClock, MemoryStore, Misfire,
    NewTask, Overlap, Policy, Run, Scheduler, Store, Task, TaskId, TaskPatch, Trigger, executor_fn,
};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn t0() -> DateTime<Utc> {
    "2030-01-01T00:00:00Z".parse().unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// What the probe executor does with a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Succeed,
    Fail,
    /// Wait until cancelled (or released by `release`).
    Block,
}

/// An executor that reports every run on a channel and behaves per `mode`.
#[derive(Clone)]
struct Probe {
    runs: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Run>>>,
    mode: Arc<Mutex<Mode>>,
    release: Arc<tokio::sync::Notify>,
    count: Arc<AtomicUsize>,
}

impl Probe {
    fn new(mode: Mode) -> (Self, impl tickwheel::Executor) {
        let (tx, rx) = mpsc::unbounded_channel();
        let probe = Probe {
            runs: Arc::new(tokio::sync::Mutex::new(rx)),
            mode: Arc::new(Mutex::new(mode)),
            release: Arc::new(tokio::sync::Notify::new()),
            count: Arc::new(AtomicUsize::new(0)),
        };
        let (mode, release, count) = (
            probe.mode.clone(),
            probe.release.clone(),
            probe.count.clone(),
        );
        let executor = executor_fn(move |run: Run| {
            let tx = tx.clone();
            let mode = *mode.lock().unwrap();
            let release = release.clone();
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                let cancel = run.cancel.clone();
                // Registered before the run is reported, so a release sent
                // as soon as the test sees the run is not lost.
                let released = release.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                let _ = tx.send(run);
                match mode {
                    Mode::Succeed => Ok(Some("ok".to_owned())),
                    Mode::Fail => Err("boom".to_owned()),
                    Mode::Block => {
                        tokio::select! {
                            _ = cancel.cancelled() => Err("cancelled".to_owned()),
                            _ = released => Ok(None),
                        }
                    }
                }
            }
        });
        (probe, executor)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    async fn next(&self) -> Run {
        let mut rx = self.runs.lock().await;
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a run within the timeout")
            .expect("executor alive")
    }

    fn try_next(&self) -> Option<Run> {
        self.runs.try_lock().ok()?.try_recv().ok()
    }

    fn has_pending(&self) -> bool {
        self.runs.try_lock().is_ok_and(|rx| !rx.is_empty())
    }
}

/// `eventually` for a takeover on the manual clock. A node that claimed its
/// own work late (here: the clock jumped a second before it claimed) leaves
/// its peers' late work to them for `takeover_after`, as it would in real
/// time; so while `check` fails, time passes: the clock moves on half a
/// second after each half second of waiting, at most `nudges` times.
async fn eventually_as_time_passes<F, Fut>(
    clock: &ManualClock,
    what: &str,
    nudges: u32,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..nudges {
        if holds_within(Duration::from_millis(500), &mut check).await {
            return;
        }
        clock.advance(Duration::from_millis(500));
    }
    eventually(what, check).await;
}

/// Sets the manual clock to `t`, or leaves it if it is already later.
fn set_at_least(clock: &ManualClock, t: DateTime<Utc>) {
    if clock.now() < t {
        clock.set(t);
    }
}

/// Waits (with a timeout) until `check` holds, re-checking as the store changes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        holds_within(WAIT, &mut check).await,
        "timed out waiting for: {what}"
    );
}

/// Whether `check` holds within `limit` (real time), re-checked every 2 ms.
async fn holds_within<F, Fut>(limit: Duration, check: &mut F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn history(store: &dyn Store, task: &Task) -> Vec<Execution> {
    store
        .executions(&task.tenant, task.id, ExecutionQuery::newest(100_000))
        .await
        .unwrap()
        .executions
}

async fn create(store: &dyn Store, expr: &str, policy: Policy) -> Task {
    let mut input = NewTask::cron("t", "agent", expr);
    input.policy = Some(policy);
    store
        .create_task(input.validate("acme", t0()).unwrap())
        .await
        .unwrap()
}

fn start(
    store: Arc<dyn Store>,
    clock: &ManualClock,
    executor: impl tickwheel::Executor,
    node: &str,
) -> Scheduler {
    Scheduler::builder(store, executor)
        .clock(Arc::new(clock.clone()))
        .node_id(node)
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_each_occurrence_on_time() {
    let store = Arc::new(MemoryStore::new());
    let task = create(store.as_ref(), "*/10 * * * * *", Policy::default()).await;
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Succeed);
    let scheduler = start(store.clone(), &clock, executor, "a");
    for i in 1..=3 {
        clock.set(t0() + secs(10 * i));
        let run = probe.next().await;
        assert_eq!(run.execution.scheduled_for, t0() + secs(10 * i));
        assert_eq!(run.execution.trigger, Trigger::Schedule);
        assert_eq!(run.execution.started_at, t0() + secs(10 * i));
        assert_eq!(run.task.id, task.id);
    }
    eventually("three succeeded", || async {
        history(store.as_ref(), &task)
            .await
            .iter()
            .filter(|e| e.status == ExecutionStatus::Succeeded)
            .count()
            == 3
    })
    .await;
    let report = scheduler.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.abandoned, 0);
    assert!(
        probe.try_next().is_none(),
        "nothing fired without time moving"
    );
}

/// An occurrence is claimed `claim_ahead` before its instant (recorded
/// `running` with the planned start) and run at the instant; a run that
/// starts late records its actual start; a shutdown runs what it claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occurrences_are_claimed_ahead_and_run_at_their_instant() {
    let store = Arc::new(MemoryStore::new());
    let task = create(store.as_ref(), "*/10 * * * * *", Policy::default()).await;
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Succeed);
    let scheduler = Scheduler::builder(store.clone(), executor)
        .clock(Arc::new(clock.clone()))
        .node_id("a")
        .claim_ahead(Duration::from_millis(100))
        .start();
    let ms = TimeDelta::milliseconds;
    let newest = || async { history(store.as_ref(), &task).await.remove(0) };
    let claimed = |n: usize| {
        let store = store.clone();
        let task = task.clone();
        async move {
            let h = history(store.as_ref(), &task).await;
            h.len() == n && h[0].status == ExecutionStatus::Running
        }
    };

    // On time: claimed 60 ms ahead, run at the instant.
    let at = t0() + secs(10);
    clock.set(at - ms(60));
    eventually("the first occurrence claimed ahead", || claimed(1)).await;
    assert_eq!(newest().await.started_at, at, "the planned start");
    assert!(
        probe.try_next().is_none(),
        "nothing runs before its instant"
    );
    clock.set(at);
    let run = probe.next().await;
    assert_eq!(run.execution.started_at, at);
    eventually("the first run recorded", || async {
        let e = newest().await;
        e.status == ExecutionStatus::Succeeded && e.started_at == at
    })
    .await;

    // Late: the process stalls past the instant; the actual start is kept.
    let at = t0() + secs(20);
    clock.set(at - ms(60));
    eventually("the second occurrence claimed ahead", || claimed(2)).await;
    clock.set(at + ms(30));
    let run = probe.next().await;
    assert_eq!(
        run.execution.started_at,
        at + ms(30),
        "the executor sees it"
    );
    eventually("the late start recorded", || async {
        let e = newest().await;
        e.status == ExecutionStatus::Succeeded
            && e.started_at == at + ms(30)
            && e.duration_ms == Some(0)
    })
    .await;

    // Shutdown: a claimed occurrence still runs at its instant.
    let at = t0() + secs(30);
    clock.set(at - ms(60));
    eventually("the third occurrence claimed ahead", || claimed(3)).await;
    let handle = scheduler.handle();
    let stopping = tokio::spawn(scheduler.shutdown(Duration::from_secs(5)));
    eventually("the shutdown under way", || async {
        matches!(
            handle.trigger_now("acme", TaskId::new()).await,
            Err(Error::ShuttingDown)
        )
    })
    .await;
    clock.set(at);
    assert_eq!(probe.next().await.execution.started_at, at);
    let report = tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    assert_eq!(report.abandoned, 0);
    eventually("the third run recorded", || async {
        newest().await.status == ExecutionStatus::Succeeded
    })
    .await;
}

/// Runs claimed ahead wait for their instant without a `max_concurrent`
/// permit, so a low cap does not stop a node claiming ahead; at the instant
/// the cap holds: one run at a time, each starting after the one before it
/// was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_claimed_ahead_take_their_permit_at_the_instant() {
    let store = Arc::new(MemoryStore::new());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(create(store.as_ref(), "*/10 * * * * *", Policy::default()).await);
    }
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Block);
    let scheduler = Scheduler::builder(store.clone(), executor)
        .clock(Arc::new(clock.clone()))
        .node_id("a")
        .max_concurrent(1)
        .claim_ahead(Duration::from_millis(100))
        .start();
    let at = t0() + secs(10);
    clock.set(at - TimeDelta::milliseconds(60));
    eventually("all three claimed ahead under a cap of one", || async {
        let mut running = 0;
        for task in &tasks {
            running += history(store.as_ref(), task)
                .await
                .iter()
                .filter(|e| e.status == ExecutionStatus::Running)
                .count();
        }
        running == 3
    })
    .await;
    assert!(
        probe.try_next().is_none(),
        "nothing runs before its instant"
    );

    clock.set(at);
    let mut done = Vec::new();
    for n in 0..3 {
        let run = probe.next().await;
        assert_eq!(
            run.execution.started_at, at,
            "run {n} starts at its instant"
        );
        for id in &done {
            let task = tasks.iter().find(|t| t.id == *id).unwrap();
            assert_eq!(
                history(store.as_ref(), task).await[0].status,
                ExecutionStatus::Succeeded,
                "run {n} started only after the runs before it were recorded (cap 1)"
            );
        }
        done.push(run.task.id);
        probe.release.notify_one();
    }
    scheduler.shutdown(Duration::from_secs(5)).await;
}

/// Stop, advance an hour, start: the misfire policy decides what runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_an_hour_follows_the_misfire_policy() {
    for misfire in [Misfire::FireOnce, Misfire::Skip, Misfire::CatchUp] {
        let store = Arc::new(MemoryStore::new());
        let policy = Policy {
            misfire,
            ..Policy::default()
        };
        let task = create(store.as_ref(), "*/5 * * * *", policy).await;
        let clock = ManualClock::new(t0() + secs(3600));
        let (probe, executor) = Probe::new(Mode::Succeed);
        let scheduler = start(store.clone(), &clock, executor, "a");
        match misfire {
            Misfire::FireOnce => {
                let run = probe.next().await;
                assert_eq!(
                    run.execution.scheduled_for,
                    t0() + secs(3600),
                    "the latest passed occurrence"
                );
                assert_eq!(run.execution.trigger, Trigger::CatchUp);
            }
            Misfire::Skip => {
                eventually("12 missed", || async {
                    history(store.as_ref(), &task)
                        .await
                        .iter()
                        .filter(|e| e.status == ExecutionStatus::Missed)
                        .count()
                        == 12
                })
                .await;
            }
            Misfire::CatchUp => {
                let mut runs = Vec::new();
                for _ in 0..12 {
                    runs.push(probe.next().await.execution);
                }
                // Claimed oldest first: execution ids (UUIDv7) follow claim order.
                runs.sort_by_key(|e| e.id);
                let times: Vec<_> = runs.iter().map(|e| e.scheduled_for).collect();
                let expected: Vec<_> = (1..=12).map(|i| t0() + secs(300 * i)).collect();
                assert_eq!(times, expected, "each missed occurrence, oldest first");
                assert!(runs[..11].iter().all(|e| e.trigger == Trigger::CatchUp));
                assert_eq!(
                    runs[11].trigger,
                    Trigger::Schedule,
                    "01:00 itself is on time"
                );
            }
            _ => unreachable!(),
        }
        eventually("next_run moved past now", || async {
            store.get_task("acme", task.id).await.unwrap().next_run == Some(t0() + secs(3900))
        })
        .await;
        // Then on time again.
        clock.set(t0() + secs(3900));
        let run = probe.next().await;
        assert_eq!(
            (run.execution.scheduled_for, run.execution.trigger),
            (t0() + secs(3900), Trigger::Schedule)
        );
        scheduler.shutdown(Duration::from_secs(1)).await;
        assert!(
            probe.try_next().is_none(),
            "policy={misfire:?}: no extra runs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_and_queue_one() {
    for overlap in [Overlap::Skip, Overlap::QueueOne, Overlap::Allow] {
        let store = Arc::new(MemoryStore::new());
        let policy = Policy {
            overlap,
            ..Policy::default()
        };
        let task = create(store.as_ref(), "* * * * * *", policy).await;
        let clock = ManualClock::new(t0());
        let (probe, executor) = Probe::new(Mode::Block);
        let scheduler = start(store.clone(), &clock, executor, "a");
        clock.set(t0() + secs(1));
        let first = probe.next().await;
        assert_eq!(first.execution.scheduled_for, t0() + secs(1));
        clock.set(t0() + secs(2));
        match overlap {
            Overlap::Skip => {
                eventually("second skipped", || async {
                    history(store.as_ref(), &task)
                        .await
                        .iter()
                        .any(|e| e.status == ExecutionStatus::Skipped)
                })
                .await;
                probe.release.notify_waiters();
            }
            Overlap::QueueOne => {
                eventually("second consumed", || async {
                    store.get_task("acme", task.id).await.unwrap().next_run == Some(t0() + secs(3))
                })
                .await;
                assert!(probe.try_next().is_none(), "queued, not started");
                probe.set(Mode::Succeed);
                probe.release.notify_waiters();
                let queued = probe.next().await;
                assert_eq!(
                    queued.execution.scheduled_for,
                    t0() + secs(2),
                    "started when the first ended"
                );
            }
            Overlap::Allow => {
                let second = probe.next().await;
                assert_eq!(second.execution.scheduled_for, t0() + secs(2));
                probe.release.notify_waiters();
            }
            _ => unreachable!(),
        }
        scheduler.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_are_retried_with_backoff() {
    let store = Arc::new(MemoryStore::new());
    let policy = Policy {
        max_retries: 2,
        retry_backoff_ms: 1000,
        ..Policy::default()
    };
    let task = create(store.as_ref(), "0 * * * *", policy).await;
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Fail);
    let scheduler = start(store.clone(), &clock, executor, "a");
    clock.set(t0() + secs(3600));
    assert_eq!(probe.next().await.execution.attempt, 1);
    // First retry after 1 s, second after 2 s more.
    eventually("retry scheduled", || async {
        history(store.as_ref(), &task)
            .await
            .first()
            .is_some_and(|e| e.retry_at == Some(t0() + secs(3601)))
    })
    .await;
    clock.set(t0() + secs(3601));
    let r = probe.next().await;
    assert_eq!(
        (r.execution.attempt, r.execution.trigger),
        (2, Trigger::Retry)
    );
    assert_eq!(r.execution.scheduled_for, t0() + secs(3600));
    eventually("second retry scheduled", || async {
        history(store.as_ref(), &task)
            .await
            .first()
            .is_some_and(|e| e.retry_at == Some(t0() + secs(3603)))
    })
    .await;
    clock.set(t0() + secs(3603));
    assert_eq!(probe.next().await.execution.attempt, 3);
    eventually("three failed attempts", || async {
        let h = history(store.as_ref(), &task).await;
        h.len() == 3
            && h.iter().all(|e| e.status == ExecutionStatus::Failed)
            && h[0].retry_at.is_none()
    })
    .await;
    clock.set(t0() + secs(3700));
    scheduler.shutdown(Duration::from_secs(1)).await;
    assert!(probe.try_next().is_none(), "no fourth attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_cancelled_and_recorded() {
    let store = Arc::new(MemoryStore::new());
    let policy = Policy {
        timeout_ms: Some(2000),
        ..Policy::default()
    };
    let task = create(store.as_ref(), "0 * * * *", policy).await;
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Block);
    let scheduler = start(store.clone(), &clock, executor, "a");
    clock.set(t0() + secs(3600));
    let run = probe.next().await;
    clock.set(t0() + secs(3602));
    tokio::time::timeout(WAIT, run.cancel.cancelled())
        .await
        .expect("the run was told to stop");
    eventually("timed_out recorded", || async {
        history(store.as_ref(), &task)
            .await
            .first()
            .is_some_and(|e| e.status == ExecutionStatus::TimedOut)
    })
    .await;
    scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_nothing_running_without_a_lease() {
    let store = Arc::new(MemoryStore::new());
    let task = create(store.as_ref(), "0 * * * *", Policy::default()).await;
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Block);
    let scheduler = start(store.clone(), &clock, executor, "a");
    clock.set(t0() + secs(3600));
    probe.next().await;
    let report = scheduler.shutdown(Duration::ZERO).await;
    assert_eq!(report.abandoned, 1);
    let h = history(store.as_ref(), &task).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].status, ExecutionStatus::Abandoned);
    assert_eq!(h[0].lease_until, None);
    assert_eq!(
        h[0].retry_at,
        Some(t0() + secs(3600)),
        "another node retries it at once"
    );
    // A new scheduler picks the retry up.
    let (probe2, executor2) = Probe::new(Mode::Succeed);
    let scheduler2 = start(store.clone(), &clock, executor2, "b");
    let retry = probe2.next().await;
    assert_eq!(
        (retry.execution.attempt, retry.execution.node.as_str()),
        (2, "b")
    );
    scheduler2.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_trigger_runs_now_and_leaves_next_run() {
    let store = Arc::new(MemoryStore::new());
    let task = create(store.as_ref(), "0 0 1 1 *", Policy::default()).await;
    let clock = ManualClock::new(t0() + secs(42));
    let (probe, executor) = Probe::new(Mode::Succeed);
    let scheduler = start(store.clone(), &clock, executor, "a");
    let outcome = scheduler.trigger_now("acme", task.id).await.unwrap();
    let ClaimOutcome::Started(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (e.trigger, e.scheduled_for),
        (Trigger::Manual, t0() + secs(42))
    );
    assert_eq!(probe.next().await.execution.id, e.id);
    assert_eq!(
        store.get_task("acme", task.id).await.unwrap().next_run,
        task.next_run
    );
    assert!(matches!(
        scheduler.trigger_now("globex", task.id).await,
        Err(Error::NotFound { .. })
    ));
    scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_reaches_the_engine_through_the_change_feed() {
    let store = Arc::new(MemoryStore::new());
    let task = create(store.as_ref(), "0 0 1 1 *", Policy::default()).await;
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Succeed);
    let scheduler = start(store.clone(), &clock, executor, "a");
    let patch = TaskPatch {
        schedule: Some(Some("*/2 * * * * *".into())),
        ..TaskPatch::default()
    };
    store
        .update_task("acme", task.id, &patch, None, t0())
        .await
        .unwrap();
    // Give the engine the feed message, then let time reach the new run.
    eventually("engine saw the change", || async {
        clock.set(t0() + secs(2));
        probe.has_pending()
    })
    .await;
    assert_eq!(probe.next().await.execution.scheduled_for, t0() + secs(2));
    scheduler.shutdown(Duration::from_secs(1)).await;
}

/// Two schedulers on one store, 1,000 tasks × 100 occurrences: each
/// occurrence started exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_start_each_occurrence_once() {
    two_schedulers_each_occurrence_once(true).await;
}

/// The same without affinity: both race for every occurrence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_schedulers_start_each_occurrence_once() {
    two_schedulers_each_occurrence_once(false).await;
}

async fn two_schedulers_each_occurrence_once(affinity: bool) {
    const TASKS: usize = 1000;
    const OCCURRENCES: i64 = 100;
    let store = Arc::new(MemoryStore::with_retention(1000));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        tasks.push(create(store.as_ref(), "* * * * * *", Policy::default()).await);
    }
    let clock = ManualClock::new(t0());
    let (probe_a, exec_a) = Probe::new(Mode::Succeed);
    let (probe_b, exec_b) = Probe::new(Mode::Succeed);
    let node = |executor, name| {
        Scheduler::builder(store.clone(), executor)
            .clock(Arc::new(clock.clone()))
            .node_id(name)
            .affinity(affinity)
            .start()
    };
    let a = node(exec_a, "a");
    let b = node(exec_b, "b");
    let total = || probe_a.count.load(Ordering::SeqCst) + probe_b.count.load(Ordering::SeqCst);
    for second in 1..=OCCURRENCES {
        clock.set(t0() + secs(second));
        let want = TASKS * second as usize;
        eventually(&format!("{want} runs by second {second}"), || async {
            total() >= want
        })
        .await;
    }
    let (a_stats, b_stats) = (a.stats(), b.stats());
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    assert_eq!(total(), TASKS * OCCURRENCES as usize, "no duplicates");
    let mut by_node: HashMap<String, usize> = HashMap::new();
    for task in &tasks {
        let h = history(store.as_ref(), task).await;
        let mut times: Vec<_> = h.iter().map(|e| e.scheduled_for).collect();
        times.sort();
        let expected: Vec<_> = (1..=OCCURRENCES).map(|s| t0() + secs(s)).collect();
        assert_eq!(times, expected, "task={}", task.id);
        for e in &h {
            *by_node.entry(e.node.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        by_node.values().sum::<usize>(),
        TASKS * OCCURRENCES as usize
    );
    if !affinity {
        assert!(
            a_stats.claims_lost > 0 && b_stats.claims_lost > 0,
            "the two raced: {a_stats:?} {b_stats:?}"
        );
    }
}

/// A store wrapper that fails every call while `down` is set.
#[derive(Debug)]
struct Flaky {
    inner: MemoryStore,
    down: AtomicBool,
    /// Fail only claims (a node that heartbeats but cannot do its work).
    claims_down: AtomicBool,
    /// Each claim moves this clock on by this much (a store slower than
    /// the work it is asked to claim).
    claim_takes: Mutex<Option<(ManualClock, std::time::Duration)>>,
}

impl Flaky {
    fn check(&self) -> Result<(), Error> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::Unavailable {
                backend: "flaky",
                source: "store is down".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Flaky {
    async fn create_task(&self, task: Task) -> Result<Task, Error> {
        self.check()?;
        self.inner.create_task(task).await
    }
    async fn get_task(&self, tenant: &str, id: TaskId) -> Result<Task, Error> {
        self.check()?;
        self.inner.get_task(tenant, id).await
    }
    async fn list_tasks(&self, tenant: &str, page: TaskPage) -> Result<Vec<Task>, Error> {
        self.check()?;
        self.inner.list_tasks(tenant, page).await
    }
    async fn update_task(
        &self,
        tenant: &str,
        id: TaskId,
        patch: &TaskPatch,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Task, Error> {
        self.check()?;
        self.inner
            .update_task(tenant, id, patch, expected_version, now)
            .await
    }
    async fn delete_task(&self, tenant: &str, id: TaskId) -> Result<(), Error> {
        self.check()?;
        self.inner.delete_task(tenant, id).await
    }
    async fn due_tasks(
        &self,
        after: Option<(DateTime<Utc>, TaskId)>,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        self.check()?;
        self.inner.due_tasks(after, horizon, limit).await
    }
    async fn due_retries(
        &self,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Execution>, Error> {
        self.check()?;
        self.inner.due_retries(horizon, limit).await
    }
    async fn claim(&self, claims: Vec<Claim>) -> Result<Vec<ClaimOutcome>, Error> {
        self.check()?;
        if self.claims_down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: "flaky",
                source: "claims fail".into(),
            });
        }
        if let Some((clock, takes)) = &*self.claim_takes.lock().unwrap() {
            clock.advance(*takes);
        }
        self.inner.claim(claims).await
    }
    async fn renew_lease(
        &self,
        id: ExecutionId,
        fence: u64,
        until: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.check()?;
        self.inner.renew_lease(id, fence, until).await
    }
    async fn finish(&self, finish: Finish) -> Result<FinishOutcome, Error> {
        self.check()?;
        self.inner.finish(finish).await
    }
    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        node: &str,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Recovered, Error> {
        self.check()?;
        self.inner
            .recover_expired(now, node, lease_until, limit)
            .await
    }
    async fn executions(
        &self,
        tenant: &str,
        task_id: TaskId,
        query: ExecutionQuery,
    ) -> Result<ExecutionPage, Error> {
        self.check()?;
        self.inner.executions(tenant, task_id, query).await
    }
    async fn subscribe(&self) -> Result<ChangeFeed, Error> {
        self.check()?;
        self.inner.subscribe().await
    }
    async fn heartbeat(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<String>, Error> {
        self.check()?;
        self.inner.heartbeat(node, now, until).await
    }
    async fn leave(&self, node: &str) -> Result<(), Error> {
        self.check()?;
        self.inner.leave(node).await
    }
}

/// A node that cannot keep up (each claim takes longer than the work it
/// claims, so more is always due) still answers its commands: a turn
/// claims only what was due when it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_keep_up_still_answers_a_shutdown() {
    let clock = ManualClock::new(t0());
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(),
        down: AtomicBool::new(false),
        claims_down: AtomicBool::new(false),
        claim_takes: Mutex::new(Some((clock.clone(), Duration::from_secs(1)))),
    });
    for _ in 0..4 {
        create(flaky.as_ref(), "* * * * * *", Policy::default()).await;
    }
    let (probe, executor) = Probe::new(Mode::Succeed);
    let scheduler = start(flaky.clone(), &clock, executor, "a");
    clock.set(t0() + secs(1));
    probe.next().await;
    let report = tokio::time::timeout(WAIT, scheduler.shutdown(Duration::from_secs(5)))
        .await
        .expect("the shutdown answered");
    assert_eq!(report.abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_delays_runs_but_loses_none() {
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(),
        down: AtomicBool::new(false),
        claims_down: AtomicBool::new(false),
        claim_takes: Mutex::new(None),
    });
    let task = create(flaky.as_ref(), "* * * * * *", Policy::default()).await;
    let clock = ManualClock::new(t0());
    let (probe, executor) = Probe::new(Mode::Succeed);
    let scheduler = start(flaky.clone(), &clock, executor, "a");
    clock.set(t0() + secs(1));
    assert_eq!(probe.next().await.execution.scheduled_for, t0() + secs(1));
    eventually("first result recorded", || async {
        history(&flaky.inner, &task)
            .await
            .first()
            .is_some_and(|e| e.status == ExecutionStatus::Succeeded)
    })
    .await;
    flaky.down.store(true, Ordering::SeqCst);
    // Two occurrences pass while the store is down: within the grace period.
    for s in 2..=3 {
        clock.set(t0() + secs(s));
        tokio::task::yield_now().await;
    }
    assert!(probe.try_next().is_none(), "nothing starts without a claim");
    flaky.down.store(false, Ordering::SeqCst);
    // Backoff retries are timed by the clock: move it a little at a time.
    let mut seen = Vec::new();
    for step in 0..200 {
        clock.set(t0() + secs(3) + TimeDelta::milliseconds(50 * step));
        while let Some(run) = probe.try_next() {
            seen.push(run.execution.scheduled_for);
        }
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![t0() + secs(2), t0() + secs(3)],
        "both late occurrences ran"
    );
    scheduler.shutdown(Duration::from_secs(1)).await;
}

/// A memory store with `n` tasks firing every second.
async fn every_second(n: usize) -> (MemoryStore, Vec<Task>) {
    let store = MemoryStore::with_retention(1000);
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(create(&store, "* * * * * *", Policy::default()).await);
    }
    (store, tasks)
}

/// Asserts that `task`'s occurrences from `from` on ran on one node; returns it.
async fn ran_on_one_node(store: &MemoryStore, task: &Task, from: DateTime<Utc>) -> String {
    let nodes: HashSet<String> = history(store, task)
        .await
        .into_iter()
        .filter(|e| e.scheduled_for >= from)
        .map(|e| e.node)
        .collect();
    assert_eq!(nodes.len(), 1, "task {} ran on {nodes:?}", task.id);
    nodes.into_iter().next().expect("one node")
}

/// When every node is behind (here: the clock jumps 2 s, as after a pause
/// of the whole cluster shorter than the membership's expiry), none takes
/// over its peers' late occurrences: each owner catches up on its own, and
/// no claim races another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_are_all_behind_do_not_take_over() {
    const TASKS: usize = 100;
    let (store, tasks) = every_second(TASKS).await;
    let clock = ManualClock::new(t0());
    let node = |name: &str| {
        let (_probe, executor) = Probe::new(Mode::Succeed);
        Scheduler::builder(Arc::new(store.clone()), executor)
            .clock(Arc::new(clock.clone()))
            .node_id(name)
            .takeover_after(Duration::from_millis(500))
            .start()
    };
    let (a, b) = (node("a"), node("b"));
    let ran_at = |second: i64| {
        let (store, tasks) = (&store, &tasks);
        async move {
            for task in tasks {
                let done = history(store, task)
                    .await
                    .iter()
                    .any(|e| e.scheduled_for == t0() + secs(second) && e.status.is_final());
                if !done {
                    return false;
                }
            }
            true
        }
    };
    for second in 1..=4 {
        clock.set(t0() + secs(second));
        eventually(&format!("runs of second {second}"), || ran_at(second)).await;
    }
    eventually("both nodes see both", || async {
        a.stats().members == 2 && b.stats().members == 2
    })
    .await;
    let lost_before = [a.stats().claims_lost, b.stats().claims_lost];
    // Occurrences of second 5 are 1 s late, twice `takeover_after`.
    clock.set(t0() + secs(6));
    eventually("the late runs", || async {
        ran_at(5).await && ran_at(6).await
    })
    .await;
    for second in 7..=8 {
        clock.set(t0() + secs(second));
        eventually(&format!("runs of second {second}"), || ran_at(second)).await;
    }
    for (node, lost) in [&a, &b].into_iter().zip(lost_before) {
        let stats = node.stats();
        assert_eq!(stats.members, 2, "{stats:?}");
        assert_eq!(
            stats.claims_lost, lost,
            "no claim raced the owner's: {stats:?}"
        );
    }
    for task in &tasks {
        ran_on_one_node(&store, task, t0() + secs(4)).await;
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

/// Affinity: two schedulers split the tasks (each task runs on one node).
/// When one can no longer claim but still heartbeats, the other claims its
/// occurrences once they are `takeover_after` late; when it stops
/// heartbeating too, the other owns its tasks. None lost, none run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_has_its_tasks_taken_over() {
    const TASKS: usize = 200;
    let (store, tasks) = every_second(TASKS).await;
    let flaky_b = Arc::new(Flaky {
        inner: store.clone(),
        down: AtomicBool::new(false),
        claims_down: AtomicBool::new(false),
        claim_takes: Mutex::new(None),
    });
    let clock = ManualClock::new(t0());
    let (_probe_a, exec_a) = Probe::new(Mode::Succeed);
    let (_probe_b, exec_b) = Probe::new(Mode::Succeed);
    let a = start(Arc::new(store.clone()), &clock, exec_a, "a");
    let b = start(flaky_b.clone(), &clock, exec_b, "b");
    // Every occurrence up to `upto` has run and been recorded.
    let ran_upto = |upto: i64| {
        let (store, tasks) = (&store, &tasks);
        async move {
            for task in tasks {
                let done = history(store, task)
                    .await
                    .iter()
                    .filter(|e| e.scheduled_for <= t0() + secs(upto) && e.status.is_final())
                    .count();
                if done < upto as usize {
                    return false;
                }
            }
            true
        }
    };
    let mut lost_at_5 = [0, 0];
    // The first second both nodes saw both (their heartbeats run on the
    // manual clock too, so on a busy machine they may lag a step).
    let mut settled = None;
    for second in 1..=10 {
        clock.set(t0() + secs(second));
        eventually(&format!("runs up to second {second}"), || ran_upto(second)).await;
        if settled.is_none() && a.stats().members == 2 && b.stats().members == 2 {
            settled = Some(second);
        }
        if second == 5 {
            lost_at_5 = [a.stats().claims_lost, b.stats().claims_lost];
        }
    }
    let settled = settled.expect("both nodes see both by second 10");
    assert!(settled <= 5, "membership settled at second {settled}");
    // Once both see both, each task runs on one node.
    let mut owned = HashMap::<String, usize>::new();
    for task in &tasks {
        let node = ran_on_one_node(&store, task, t0() + secs(settled + 1)).await;
        *owned.entry(node).or_default() += 1;
    }
    assert_eq!(owned.len(), 2, "both nodes own tasks: {owned:?}");
    for (node, lost_before) in [&a, &b].into_iter().zip(lost_at_5) {
        let stats = node.stats();
        assert_eq!(stats.members, 2, "{stats:?}");
        assert!(stats.shadowed > 0 && stats.claims_won > 0, "{stats:?}");
        // Claims lose only while the membership settles (the first seconds).
        assert_eq!(stats.claims_lost, lost_before, "{stats:?}");
    }
    // `b` cannot claim but stays a member: `a` claims b's occurrences once
    // they are 2 s late (the overdue scan).
    flaky_b.claims_down.store(true, Ordering::SeqCst);
    for second in 11..=20 {
        set_at_least(&clock, t0() + secs(second));
        let upto = second - 3;
        eventually_as_time_passes(&clock, &format!("runs up to second {upto}"), 8, || {
            ran_upto(upto)
        })
        .await;
    }
    let mut taken = 0;
    for task in &tasks {
        taken += history(&store, task)
            .await
            .iter()
            .filter(|e| e.scheduled_for == t0() + secs(15) && e.node == "a")
            .count();
    }
    assert_eq!(taken, TASKS, "a ran every task's occurrence of second 15");
    // `b` loses the store altogether: its heartbeat expires, `a` owns all.
    flaky_b.down.store(true, Ordering::SeqCst);
    for second in 21..=30 {
        set_at_least(&clock, t0() + secs(second));
        let upto = second - 3;
        eventually_as_time_passes(&clock, &format!("runs up to second {upto}"), 8, || {
            ran_upto(upto)
        })
        .await;
    }
    set_at_least(&clock, t0() + secs(35));
    eventually("runs up to second 30", || ran_upto(30)).await;
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    for task in &tasks {
        let mut times: Vec<_> = history(&store, task)
            .await
            .iter()
            .filter(|e| e.scheduled_for <= t0() + secs(30))
            .map(|e| e.scheduled_for)
            .collect();
        times.sort();
        let expected: Vec<_> = (1..=30).map(|s| t0() + secs(s)).collect();
        assert_eq!(times, expected, "each occurrence once, task={}", task.id);
    }
}
