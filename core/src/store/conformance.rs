//! The store conformance suite: what every [`Store`] must do, one `pub async
//! fn` per behaviour, each taking a fresh, empty store.
//!
//! A backend runs all of it with [`conformance_tests!`](crate::conformance_tests),
//! which expands to one `#[tokio::test]` per behaviour:
//!
//! ```ignore
//! tickwheel::conformance_tests!(async { MyStore::connect_fresh().await });
//! ```
//!
//! Times are fixed (year 2030) so results do not depend on the wall clock;
//! tenants are unique per test.

use chrono::{DateTime, Duration, Utc};
use futures::future::join_all;

use super::{
    Change, ChangeFeed, Claim, ClaimKind, ClaimOutcome, ExecutionQuery, Finish, Store, TaskPage,
};
use crate::error::Error;
use crate::model::{
    Execution, ExecutionStatus, Misfire, NewTask, Overlap, Policy, Task, TaskPatch, TaskStatus,
    Trigger,
};

/// Expands to one `#[tokio::test]` per conformance behaviour; `$make` is an
/// expression evaluating to a future of a fresh store (anything that derefs
/// to `dyn Store` by `&`).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            create_and_get,
            tenants_are_isolated,
            list_pages_oldest_first,
            update_changes_given_fields_and_checks_version,
            update_never_reverts_a_claimed_next_run,
            delete_removes_task_and_history,
            due_scan_is_a_window_in_order,
            claim_wins_once,
            finish_records_the_actual_start,
            claim_race_has_one_winner,
            claim_requires_the_seen_version_and_enabled,
            claim_records_missed_occurrences,
            overlap_allow_runs_side_by_side,
            overlap_skip_records_skipped,
            overlap_queue_one_starts_after_finish,
            overlap_replace_ends_the_running_one,
            lease_renew_and_fencing,
            expired_leases_are_recovered_once,
            retries_are_claimed_once,
            one_time_task_completes_or_fails,
            history_pages_newest_first_with_total,
            retention_keeps_the_newest,
            output_is_truncated,
            change_feed_reports_writes,
            heartbeats_list_the_live_nodes,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $make.await;
                $crate::store::conformance::$name(&store).await;
            }
        )*
    };
}

/// 2030-01-01T00:00:00Z, the suite's "now".
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_893_456_000, 0).expect("valid")
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn tenant(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::now_v7().simple())
}

fn every_minute(tenant: &str) -> Task {
    NewTask::cron("every minute", "agent", "* * * * *")
        .validate(tenant, t0())
        .expect("valid task")
}

fn with_policy(tenant: &str, policy: Policy) -> Task {
    let mut input = NewTask::cron("with policy", "agent", "* * * * *");
    input.policy = Some(policy);
    input.validate(tenant, t0()).expect("valid task")
}

async fn create(store: &dyn Store, task: Task) -> Task {
    store.create_task(task).await.expect("create")
}

fn scheduled(task: &Task, node: &str, now: DateTime<Utc>) -> Claim {
    let at = task.next_run.expect("task has a next run");
    let schedule = task.compiled_schedule().expect("schedule");
    Claim {
        task_id: task.id,
        kind: ClaimKind::Scheduled {
            expected_next_run: at,
            expected_version: task.version,
            new_next_run: schedule.next_after(at),
        },
        execution: Some(Execution::start(
            task,
            at,
            1,
            Trigger::Schedule,
            node,
            now,
            now + secs(30),
        )),
        missed: Vec::new(),
        node: node.to_owned(),
        now,
    }
}

async fn claim_one(store: &dyn Store, claim: Claim) -> ClaimOutcome {
    let mut out = store.claim(vec![claim]).await.expect("claim");
    assert_eq!(out.len(), 1, "one outcome per claim");
    out.remove(0)
}

fn started(outcome: ClaimOutcome) -> Execution {
    match outcome {
        ClaimOutcome::Started(e) => e,
        other => panic!("expected Started, got {other:?}"),
    }
}

fn finish(e: &Execution, status: ExecutionStatus, at: DateTime<Utc>) -> Finish {
    Finish {
        id: e.id,
        fence: e.fence,
        status,
        started_at: None,
        finished_at: at,
        error: (status != ExecutionStatus::Succeeded).then(|| "boom".to_owned()),
        output: Some("out".to_owned()),
        retry_at: None,
        node: "node-a".to_owned(),
        lease_until: at + secs(30),
    }
}

async fn history(store: &dyn Store, task: &Task) -> Vec<Execution> {
    store
        .executions(&task.tenant, task.id, ExecutionQuery::newest(10_000))
        .await
        .expect("history")
        .executions
}

fn is_not_found(r: Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::NotFound { .. }))
}

fn is_conflict(r: Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::Conflict { .. }))
}

/// A created task reads back equal, and a duplicate id is a conflict.
pub async fn create_and_get(store: &dyn Store) {
    let t = tenant("create");
    let task = create(store, every_minute(&t)).await;
    assert_eq!(store.get_task(&t, task.id).await.expect("get"), task);
    assert!(
        is_conflict(store.create_task(task.clone()).await),
        "duplicate id accepted"
    );
    assert!(is_not_found(store.get_task(&t, crate::TaskId::new()).await));
}

/// Another tenant's task is invisible: not found, not listed, not writable.
pub async fn tenants_are_isolated(store: &dyn Store) {
    let (a, b) = (tenant("iso-a"), tenant("iso-b"));
    let task = create(store, every_minute(&a)).await;
    assert!(is_not_found(store.get_task(&b, task.id).await));
    assert!(
        store
            .list_tasks(&b, TaskPage::first(100))
            .await
            .expect("list")
            .is_empty()
    );
    let patch = TaskPatch {
        name: Some("stolen".into()),
        ..TaskPatch::default()
    };
    assert!(is_not_found(
        store.update_task(&b, task.id, &patch, None, t0()).await
    ));
    assert!(is_not_found(store.delete_task(&b, task.id).await));
    assert!(is_not_found(
        store
            .executions(&b, task.id, ExecutionQuery::newest(10))
            .await
    ));
    assert_eq!(
        store.get_task(&a, task.id).await.expect("still there").name,
        "every minute"
    );
}

/// Listing is oldest first with keyset paging.
pub async fn list_pages_oldest_first(store: &dyn Store) {
    let t = tenant("list");
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(create(store, every_minute(&t)).await.id);
    }
    create(store, every_minute(&tenant("list-other"))).await;
    let first = store
        .list_tasks(&t, TaskPage::first(3))
        .await
        .expect("page 1");
    let second = store
        .list_tasks(&t, TaskPage::after(first[2].id, 3))
        .await
        .expect("page 2");
    let third = store
        .list_tasks(&t, TaskPage::after(second[2].id, 3))
        .await
        .expect("page 3");
    let listed: Vec<_> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, ids);
    assert!(
        store
            .list_tasks(&t, TaskPage::after(ids[6], 3))
            .await
            .expect("empty")
            .is_empty()
    );
}

/// A partial update changes only what it names, bumps the version, and is
/// refused with a stale expected version.
pub async fn update_changes_given_fields_and_checks_version(store: &dyn Store) {
    let t = tenant("update");
    let task = create(store, every_minute(&t)).await;
    let patch = TaskPatch {
        name: Some("renamed".into()),
        ..TaskPatch::default()
    };
    let later = t0() + secs(5);
    let updated = store
        .update_task(&t, task.id, &patch, Some(1), later)
        .await
        .expect("update");
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.agent, task.agent);
    assert_eq!(updated.version, 2);
    assert_eq!(updated.updated_at, later);
    assert_eq!(store.get_task(&t, task.id).await.expect("get"), updated);
    assert!(is_conflict(
        store.update_task(&t, task.id, &patch, Some(1), later).await
    ));
    let bad = TaskPatch {
        schedule: Some(Some("* * * * MOM".into())),
        ..TaskPatch::default()
    };
    assert!(matches!(
        store.update_task(&t, task.id, &bad, None, later).await,
        Err(Error::InvalidSchedule(_))
    ));
    assert_eq!(
        store
            .get_task(&t, task.id)
            .await
            .expect("unchanged")
            .version,
        2
    );
}

/// An update that leaves the timing alone keeps the `next_run` a claim set.
pub async fn update_never_reverts_a_claimed_next_run(store: &dyn Store) {
    let t = tenant("revert");
    let task = create(store, every_minute(&t)).await;
    started(claim_one(store, scheduled(&task, "n", t0() + secs(60))).await);
    let patch = TaskPatch {
        name: Some("renamed".into()),
        ..TaskPatch::default()
    };
    let updated = store
        .update_task(&t, task.id, &patch, None, t0() + secs(61))
        .await
        .expect("update");
    assert_eq!(updated.next_run, Some(t0() + secs(120)));
    assert_eq!(updated.last_run, Some(t0() + secs(60)));
}

/// Delete removes the task and its history.
pub async fn delete_removes_task_and_history(store: &dyn Store) {
    let t = tenant("delete");
    let task = create(store, every_minute(&t)).await;
    let e = started(claim_one(store, scheduled(&task, "n", t0() + secs(60))).await);
    store.delete_task(&t, task.id).await.expect("delete");
    assert!(is_not_found(store.get_task(&t, task.id).await));
    assert!(is_not_found(store.delete_task(&t, task.id).await));
    assert!(
        store
            .due_tasks(None, t0() + secs(3600), 100)
            .await
            .expect("due")
            .is_empty()
    );
    // Its running execution cannot be renewed or finished any more.
    assert!(
        store
            .renew_lease(e.id, e.fence, t0() + secs(90))
            .await
            .is_err()
    );
    assert!(
        store
            .finish(finish(&e, ExecutionStatus::Succeeded, t0() + secs(61)))
            .await
            .is_err()
    );
}

/// The due scan returns enabled tasks with `next_run` in the window, in
/// `(next_run, id)` order, paged by the last key.
pub async fn due_scan_is_a_window_in_order(store: &dyn Store) {
    let t = tenant("due");
    let mut expected = Vec::new();
    for expr in [
        "5 0 * * *",
        "1 0 * * *",
        "3 0 * * *",
        "1 0 * * *",
        "0 5 * * *",
    ] {
        let task = NewTask::cron("d", "a", expr)
            .validate(&t, t0())
            .expect("valid");
        let task = create(store, task).await;
        if expr != "0 5 * * *" {
            expected.push((task.next_run.expect("next"), task.id));
        }
    }
    let mut paused = NewTask::cron("p", "a", "2 0 * * *");
    paused.enabled = Some(false);
    create(store, paused.validate(&t, t0()).expect("valid")).await;
    expected.sort();
    let horizon = t0() + secs(600);
    let all: Vec<_> = store
        .due_tasks(None, horizon, 100)
        .await
        .expect("due")
        .iter()
        .map(|t| (t.next_run.expect("next"), t.id))
        .collect();
    assert_eq!(all, expected, "window, order, enabled only");
    let page1 = store.due_tasks(None, horizon, 2).await.expect("page 1");
    let last = page1.last().expect("two");
    let page2 = store
        .due_tasks(Some((last.next_run.expect("next"), last.id)), horizon, 100)
        .await
        .expect("page 2");
    let paged: Vec<_> = page1
        .iter()
        .chain(&page2)
        .map(|t| (t.next_run.expect("next"), t.id))
        .collect();
    assert_eq!(paged, expected);
    // The horizon is inclusive.
    let at = expected[0].0;
    assert!(
        store
            .due_tasks(None, at, 100)
            .await
            .expect("due")
            .iter()
            .any(|t| t.id == expected[0].1)
    );
}

/// A claim starts the occurrence and advances `next_run`; the same claim
/// again loses and reports the task as it now is.
pub async fn claim_wins_once(store: &dyn Store) {
    let t = tenant("claim");
    let task = create(store, every_minute(&t)).await;
    let claim = scheduled(&task, "node-a", t0() + secs(60));
    let e = started(claim_one(store, claim.clone()).await);
    assert_eq!(e.status, ExecutionStatus::Running);
    assert_eq!(
        (e.scheduled_for, e.attempt, e.node.as_str()),
        (t0() + secs(60), 1, "node-a")
    );
    let now = store.get_task(&t, task.id).await.expect("get");
    assert_eq!(now.next_run, Some(t0() + secs(120)));
    assert_eq!(now.last_run, Some(t0() + secs(60)));
    assert_eq!(now.version, task.version, "claims do not bump the version");
    match claim_one(store, claim).await {
        ClaimOutcome::Lost {
            current: Some(current),
        } => assert_eq!(current.next_run, Some(t0() + secs(120))),
        other => panic!("second claim: {other:?}"),
    }
    assert_eq!(history(store, &task).await.len(), 1);
}

/// A claim made ahead of its instant records the planned start; the finish
/// reports the actual one, which history keeps (and counts the duration
/// from). A finish without it keeps the claimed start.
pub async fn finish_records_the_actual_start(store: &dyn Store) {
    let t = tenant("actual-start");
    let task = create(store, every_minute(&t)).await;
    let planned = t0() + secs(60);
    let e = started(claim_one(store, scheduled(&task, "node-a", planned)).await);
    assert_eq!(e.started_at, planned);
    let mut f = finish(&e, ExecutionStatus::Succeeded, planned + secs(5));
    f.started_at = Some(planned + Duration::milliseconds(2_250));
    store.finish(f).await.expect("finish");
    let first = history(store, &task).await.remove(0);
    assert_eq!(
        (first.started_at, first.duration_ms),
        (planned + Duration::milliseconds(2_250), Some(2_750)),
        "the actual start and the duration from it"
    );

    let task = store.get_task(&t, task.id).await.expect("get");
    let planned = t0() + secs(120);
    let e = started(claim_one(store, scheduled(&task, "node-a", planned)).await);
    store
        .finish(finish(&e, ExecutionStatus::Succeeded, planned + secs(1)))
        .await
        .expect("finish");
    let newest = history(store, &task).await.remove(0);
    assert_eq!(
        (newest.started_at, newest.duration_ms),
        (planned, Some(1_000))
    );
}

/// Many concurrent claimers of one occurrence: exactly one wins.
pub async fn claim_race_has_one_winner(store: &dyn Store) {
    let t = tenant("race");
    let tasks: Vec<Task> = join_all((0..5).map(|_| store.create_task(every_minute(&t))))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("create");
    for task in &tasks {
        let claims = (0..16).map(|i| {
            let claim = scheduled(task, &format!("node-{i}"), t0() + secs(60));
            store.claim(vec![claim])
        });
        let outcomes = join_all(claims).await;
        let winners = outcomes
            .into_iter()
            .map(|o| o.expect("claim"))
            .filter(|o| matches!(o[0], ClaimOutcome::Started(_)))
            .count();
        assert_eq!(winners, 1, "task={}", task.id);
        assert_eq!(history(store, task).await.len(), 1);
    }
}

/// A claim made from a stale version or for a paused task loses.
pub async fn claim_requires_the_seen_version_and_enabled(store: &dyn Store) {
    let t = tenant("stale");
    let task = create(store, every_minute(&t)).await;
    let patch = TaskPatch {
        prompt: Some("new prompt".into()),
        ..TaskPatch::default()
    };
    store
        .update_task(&t, task.id, &patch, None, t0())
        .await
        .expect("update");
    assert!(matches!(
        claim_one(store, scheduled(&task, "n", t0() + secs(60))).await,
        ClaimOutcome::Lost { current: Some(_) }
    ));
    let fresh = store.get_task(&t, task.id).await.expect("get");
    let pause = TaskPatch {
        enabled: Some(false),
        ..TaskPatch::default()
    };
    store
        .update_task(&t, task.id, &pause, None, t0())
        .await
        .expect("pause");
    let mut claim = scheduled(&fresh, "n", t0() + secs(60));
    if let ClaimKind::Scheduled {
        expected_version, ..
    } = &mut claim.kind
    {
        *expected_version += 1;
    }
    assert!(matches!(
        claim_one(store, claim).await,
        ClaimOutcome::Lost { .. }
    ));
    assert!(history(store, &task).await.is_empty());
}

/// Missed occurrences given with a claim are recorded `missed`.
pub async fn claim_records_missed_occurrences(store: &dyn Store) {
    let t = tenant("missed");
    let task = create(
        store,
        with_policy(
            &t,
            Policy {
                misfire: Misfire::Skip,
                ..Policy::default()
            },
        ),
    )
    .await;
    let mut claim = scheduled(&task, "n", t0() + secs(600));
    claim.missed = vec![t0() + secs(120), t0() + secs(180)];
    started(claim_one(store, claim).await);
    let h = history(store, &task).await;
    let missed: Vec<_> = h
        .iter()
        .filter(|e| e.status == ExecutionStatus::Missed)
        .map(|e| e.scheduled_for)
        .collect();
    assert_eq!(
        missed,
        vec![t0() + secs(180), t0() + secs(120)],
        "newest first"
    );
    // A claim without an execution only advances the task.
    let now = store.get_task(&t, task.id).await.expect("get");
    let mut skip = scheduled(&now, "n", t0() + secs(900));
    skip.execution = None;
    skip.missed = vec![t0() + secs(180)];
    assert!(matches!(
        claim_one(store, skip).await,
        ClaimOutcome::Advanced
    ));
    let after = store.get_task(&t, task.id).await.expect("get");
    assert_eq!(after.next_run, Some(t0() + secs(180)));
    assert_eq!(
        history(store, &task).await.len(),
        3,
        "a missed record is not added twice"
    );
}

async fn two_occurrences(store: &dyn Store, overlap: Overlap) -> (Task, Execution, ClaimOutcome) {
    let t = tenant("overlap");
    let task = create(
        store,
        with_policy(
            &t,
            Policy {
                overlap,
                ..Policy::default()
            },
        ),
    )
    .await;
    let first = started(claim_one(store, scheduled(&task, "n", t0() + secs(60))).await);
    let now = store.get_task(&t, task.id).await.expect("get");
    let second = claim_one(store, scheduled(&now, "n", t0() + secs(120))).await;
    assert_eq!(
        store.get_task(&t, task.id).await.expect("get").next_run,
        Some(t0() + secs(180)),
        "the occurrence is consumed whatever the overlap policy"
    );
    (task, first, second)
}

/// `overlap: allow`: the second occurrence starts while the first runs.
pub async fn overlap_allow_runs_side_by_side(store: &dyn Store) {
    let (_, _, second) = two_occurrences(store, Overlap::Allow).await;
    started(second);
}

/// `overlap: skip`: the second occurrence is recorded `skipped`.
pub async fn overlap_skip_records_skipped(store: &dyn Store) {
    let (task, _, second) = two_occurrences(store, Overlap::Skip).await;
    match second {
        ClaimOutcome::Skipped(e) => assert_eq!(e.status, ExecutionStatus::Skipped),
        other => panic!("expected Skipped, got {other:?}"),
    }
    let h = history(store, &task).await;
    assert_eq!(h[0].status, ExecutionStatus::Skipped);
    assert_eq!(h[0].scheduled_for, t0() + secs(120));
}

/// `overlap: queue_one`: the second waits and starts when the first ends;
/// a third while one waits is skipped.
pub async fn overlap_queue_one_starts_after_finish(store: &dyn Store) {
    let (task, first, second) = two_occurrences(store, Overlap::QueueOne).await;
    assert!(matches!(second, ClaimOutcome::Queued), "{second:?}");
    let now = store.get_task(&task.tenant, task.id).await.expect("get");
    assert!(matches!(
        claim_one(store, scheduled(&now, "n", t0() + secs(180))).await,
        ClaimOutcome::Skipped(_)
    ));
    let out = store
        .finish(finish(&first, ExecutionStatus::Succeeded, t0() + secs(200)))
        .await
        .expect("finish");
    let next = out.started.expect("queued occurrence started");
    assert_eq!(
        (next.scheduled_for, next.status),
        (t0() + secs(120), ExecutionStatus::Running)
    );
    store
        .finish(finish(&next, ExecutionStatus::Succeeded, t0() + secs(210)))
        .await
        .expect("finish queued");
}

/// `overlap: replace`: the running one is ended and fenced; the new starts.
pub async fn overlap_replace_ends_the_running_one(store: &dyn Store) {
    let (task, first, second) = two_occurrences(store, Overlap::Replace).await;
    match second {
        ClaimOutcome::Replaced { started, replaced } => {
            assert_eq!(replaced, vec![first.id]);
            assert_eq!(started.scheduled_for, t0() + secs(120));
        }
        other => panic!("expected Replaced, got {other:?}"),
    }
    assert!(is_conflict(
        store
            .renew_lease(first.id, first.fence, t0() + secs(200))
            .await
    ));
    let h = history(store, &task).await;
    let old = h.iter().find(|e| e.id == first.id).expect("first kept");
    assert_eq!(old.status, ExecutionStatus::Abandoned);
}

/// Renewal needs the current fence; after a takeover the old holder can
/// neither renew nor record a result.
pub async fn lease_renew_and_fencing(store: &dyn Store) {
    let t = tenant("lease");
    let task = create(store, every_minute(&t)).await;
    let e = started(claim_one(store, scheduled(&task, "n", t0() + secs(60))).await);
    store
        .renew_lease(e.id, e.fence, t0() + secs(120))
        .await
        .expect("renew");
    assert!(is_conflict(
        store.renew_lease(e.id, e.fence + 1, t0() + secs(150)).await
    ));
    // The renewal moved the lease: nothing expires at +100 s.
    let r = store
        .recover_expired(t0() + secs(100), "other", t0() + secs(130), 100)
        .await
        .expect("recover");
    assert!(r.abandoned.is_empty());
    let r = store
        .recover_expired(t0() + secs(121), "other", t0() + secs(150), 100)
        .await
        .expect("recover");
    assert_eq!(r.abandoned.len(), 1);
    assert!(is_conflict(
        store.renew_lease(e.id, e.fence, t0() + secs(180)).await
    ));
    assert!(is_conflict(
        store
            .finish(finish(&e, ExecutionStatus::Succeeded, t0() + secs(125)))
            .await
    ));
    let h = history(store, &task).await;
    assert_eq!(
        h[0].status,
        ExecutionStatus::Abandoned,
        "the late result did not overwrite"
    );
}

/// Expired leases are taken over once, however many schedulers ask.
pub async fn expired_leases_are_recovered_once(store: &dyn Store) {
    let t = tenant("recover");
    let task = create(store, every_minute(&t)).await;
    let e = started(claim_one(store, scheduled(&task, "n", t0() + secs(60))).await);
    let later = t0() + secs(600);
    let results = join_all((0..8).map(|i| {
        store.recover_expired(
            later,
            if i % 2 == 0 { "a" } else { "b" },
            later + secs(30),
            100,
        )
    }))
    .await;
    let total: usize = results
        .into_iter()
        .map(|r| r.expect("recover").abandoned.len())
        .sum();
    assert_eq!(total, 1);
    let h = history(store, &task).await;
    assert_eq!((h[0].id, h[0].status), (e.id, ExecutionStatus::Abandoned));
    assert!(h[0].fence > e.fence);
    assert_eq!(h[0].retry_at, None, "no retries in the default policy");
}

/// A failed attempt with `retry_at` is listed as a due retry and its next
/// attempt can be claimed once.
pub async fn retries_are_claimed_once(store: &dyn Store) {
    let t = tenant("retry");
    let task = create(
        store,
        with_policy(
            &t,
            Policy {
                max_retries: 2,
                ..Policy::default()
            },
        ),
    )
    .await;
    let e = started(claim_one(store, scheduled(&task, "n", t0() + secs(60))).await);
    let mut f = finish(&e, ExecutionStatus::Failed, t0() + secs(61));
    f.retry_at = Some(t0() + secs(62));
    store.finish(f).await.expect("finish");
    assert!(
        store
            .due_retries(t0() + secs(61), 10)
            .await
            .expect("none yet")
            .is_empty()
    );
    let due = store
        .due_retries(t0() + secs(62), 10)
        .await
        .expect("due retries");
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].id, due[0].retry_at), (e.id, Some(t0() + secs(62))));
    let retry = Claim {
        task_id: task.id,
        kind: ClaimKind::Retry { failed: e.id },
        execution: Some(Execution::start(
            &task,
            e.scheduled_for,
            2,
            Trigger::Retry,
            "n",
            t0() + secs(62),
            t0() + secs(92),
        )),
        missed: Vec::new(),
        node: "n".to_owned(),
        now: t0() + secs(62),
    };
    let outcomes = join_all((0..4).map(|_| store.claim(vec![retry.clone()]))).await;
    let winners = outcomes
        .into_iter()
        .filter(|o| matches!(o.as_ref().expect("claim")[0], ClaimOutcome::Started(_)))
        .count();
    assert_eq!(winners, 1);
    assert!(
        store
            .due_retries(t0() + secs(3600), 10)
            .await
            .expect("consumed")
            .is_empty()
    );
    let h = history(store, &task).await;
    assert_eq!(
        h.iter()
            .filter(|x| x.scheduled_for == e.scheduled_for)
            .count(),
        2
    );
    assert_eq!(h[0].attempt, 2, "newest first: attempt 2 before attempt 1");
}

/// A one-time task is `completed` after a successful run and `failed`
/// after a failed run with no retry left.
pub async fn one_time_task_completes_or_fails(store: &dyn Store) {
    let t = tenant("once");
    for (status, expected) in [
        (ExecutionStatus::Succeeded, TaskStatus::Completed),
        (ExecutionStatus::Failed, TaskStatus::Failed),
    ] {
        let at = t0() + secs(30);
        let task = create(
            store,
            NewTask::once("o", "a", at)
                .validate(&t, t0())
                .expect("valid"),
        )
        .await;
        let claim = Claim {
            task_id: task.id,
            kind: ClaimKind::Scheduled {
                expected_next_run: at,
                expected_version: task.version,
                new_next_run: None,
            },
            execution: Some(Execution::start(
                &task,
                at,
                1,
                Trigger::Schedule,
                "n",
                at,
                at + secs(30),
            )),
            missed: Vec::new(),
            node: "n".to_owned(),
            now: at,
        };
        let e = started(claim_one(store, claim).await);
        store
            .finish(finish(&e, status, at + secs(1)))
            .await
            .expect("finish");
        let done = store.get_task(&t, task.id).await.expect("get");
        assert_eq!((done.status, done.next_run), (expected, None));
        assert!(
            !store
                .due_tasks(None, at + secs(3600), 100)
                .await
                .expect("due")
                .iter()
                .any(|x| x.id == task.id)
        );
    }
}

/// History is newest first, paged by offset, with a total and a status filter.
pub async fn history_pages_newest_first_with_total(store: &dyn Store) {
    let t = tenant("history");
    let mut task = create(store, every_minute(&t)).await;
    for i in 0..5 {
        let now = t0() + secs(60 * (i + 1));
        let e = started(claim_one(store, scheduled(&task, "n", now)).await);
        let status = if i % 2 == 0 {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        };
        store
            .finish(finish(&e, status, now + secs(1)))
            .await
            .expect("finish");
        task = store.get_task(&t, task.id).await.expect("get");
    }
    let page = store
        .executions(
            &t,
            task.id,
            ExecutionQuery {
                limit: 2,
                offset: 1,
                status: None,
            },
        )
        .await
        .expect("page");
    assert_eq!(page.total, 5);
    let times: Vec<_> = page.executions.iter().map(|e| e.scheduled_for).collect();
    assert_eq!(times, vec![t0() + secs(240), t0() + secs(180)]);
    let failed = store
        .executions(
            &t,
            task.id,
            ExecutionQuery {
                limit: 10,
                offset: 0,
                status: Some(ExecutionStatus::Failed),
            },
        )
        .await
        .expect("failed");
    assert_eq!(failed.total, 2);
    assert!(
        failed
            .executions
            .iter()
            .all(|e| e.status == ExecutionStatus::Failed)
    );
    let e = &failed.executions[0];
    assert_eq!(e.duration_ms, Some(1000));
    assert_eq!(e.error.as_deref(), Some("boom"));
    assert_eq!(e.output.as_deref(), Some("out"));
}

/// Only the newest executions are kept (the backend under test is built
/// with a retention of 5).
pub async fn retention_keeps_the_newest(store: &dyn Store) {
    let t = tenant("retention");
    let mut task = create(store, every_minute(&t)).await;
    for i in 0..12 {
        let now = t0() + secs(60 * (i + 1));
        let e = started(claim_one(store, scheduled(&task, "n", now)).await);
        store
            .finish(finish(&e, ExecutionStatus::Succeeded, now))
            .await
            .expect("finish");
        task = store.get_task(&t, task.id).await.expect("get");
    }
    let h = history(store, &task).await;
    assert!(h.len() >= 5 && h.len() <= 6, "kept {} executions", h.len());
    assert_eq!(h[0].scheduled_for, t0() + secs(720), "the newest is kept");
}

/// Output beyond 64 KiB is cut.
pub async fn output_is_truncated(store: &dyn Store) {
    let t = tenant("output");
    let task = create(store, every_minute(&t)).await;
    let e = started(claim_one(store, scheduled(&task, "n", t0() + secs(60))).await);
    let mut f = finish(&e, ExecutionStatus::Succeeded, t0() + secs(61));
    f.output = Some("x".repeat(200_000));
    store.finish(f).await.expect("finish");
    let out = history(store, &task).await[0]
        .output
        .clone()
        .expect("output");
    assert!(
        out.len() <= crate::model::MAX_OUTPUT_BYTES,
        "len={}",
        out.len()
    );
}

async fn next_change(feed: &mut ChangeFeed) -> Change {
    tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .expect("a change within 5 s")
        .expect("feed open")
}

/// Creates, updates and deletes reach subscribers.
pub async fn change_feed_reports_writes(store: &dyn Store) {
    let t = tenant("feed");
    let mut feed = store.subscribe().await.expect("subscribe");
    let task = create(store, every_minute(&t)).await;
    loop {
        match next_change(&mut feed).await {
            Change::Upserted {
                tenant,
                task_id,
                next_run,
                version,
            } if task_id == task.id => {
                assert_eq!(
                    (tenant.as_str(), next_run, version),
                    (t.as_str(), task.next_run, 1)
                );
                break;
            }
            _ => {}
        }
    }
    let pause = TaskPatch {
        enabled: Some(false),
        ..TaskPatch::default()
    };
    store
        .update_task(&t, task.id, &pause, None, t0())
        .await
        .expect("pause");
    loop {
        match next_change(&mut feed).await {
            Change::Upserted {
                task_id,
                next_run,
                version,
                ..
            } if task_id == task.id => {
                assert_eq!(
                    (next_run, version),
                    (None, 2),
                    "a paused task has nothing to schedule"
                );
                break;
            }
            _ => {}
        }
    }
    store.delete_task(&t, task.id).await.expect("delete");
    loop {
        if matches!(next_change(&mut feed).await, Change::Deleted { task_id } if task_id == task.id)
        {
            break;
        }
    }
}

/// Membership: a heartbeat lists every node alive at `now`, itself
/// included, sorted; entries expire at their `until`; `leave` removes one.
pub async fn heartbeats_list_the_live_nodes(store: &dyn Store) {
    let [a, b, c] = ["a", "b", "c"].map(|n| tenant(&format!("node-{n}")));
    let now = t0();
    async fn beat(
        store: &dyn Store,
        node: &str,
        at: DateTime<Utc>,
        ttl: i64,
    ) -> Result<Vec<String>, Error> {
        store.heartbeat(node, at, at + Duration::seconds(ttl)).await
    }
    assert_eq!(
        beat(store, &b, now, 3).await.expect("heartbeat"),
        std::slice::from_ref(&b)
    );
    assert_eq!(
        beat(store, &a, now, 3).await.expect("heartbeat"),
        [a.clone(), b.clone()]
    );
    // `c` beats with a short lease; a second later it has expired.
    beat(store, &c, now, 1).await.expect("heartbeat");
    assert_eq!(
        beat(store, &a, now + Duration::milliseconds(500), 3)
            .await
            .expect("heartbeat"),
        [a.clone(), b.clone(), c.clone()]
    );
    assert_eq!(
        beat(store, &a, now + Duration::seconds(2), 3)
            .await
            .expect("heartbeat"),
        [a.clone(), b.clone()],
        "an expired node is not listed"
    );
    // A node that comes back is listed again; one that leaves is not.
    beat(store, &c, now + Duration::seconds(2), 3)
        .await
        .expect("heartbeat");
    store.leave(&b).await.expect("leave");
    store.leave(&b).await.expect("leaving twice is fine");
    assert_eq!(
        beat(store, &a, now + Duration::seconds(2), 3)
            .await
            .expect("heartbeat"),
        [a.clone(), c.clone()]
    );
}
