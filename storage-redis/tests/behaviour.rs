//! Redis-specific behaviour beyond the conformance suite: strings stored
//! verbatim, the replaced-run message written by Lua, options checked,
//! connection failures as `Error::Unavailable`.

#[allow(dead_code)]
mod common;

use chrono::{DateTime, Duration, Utc};
use tickwheel::store::{Claim, ClaimKind, ClaimOutcome, ExecutionQuery, Finish, TaskPage};
use tickwheel::{
    Error, Execution, ExecutionStatus, NewTask, Overlap, Policy, Store, TaskPatch, Trigger,
};
use tickwheel_redis::RedisStore;

use common::{single_store, single_url, unique_prefix};

fn manual(task: &tickwheel::Task, at: DateTime<Utc>) -> Claim {
    Claim {
        task_id: task.id,
        kind: ClaimKind::Manual,
        execution: Some(Execution::start(
            task,
            at,
            1,
            Trigger::Manual,
            "n",
            at,
            at + Duration::seconds(30),
        )),
        missed: Vec::new(),
        node: "n".to_owned(),
        now: at,
    }
}

/// A task firing every minute under tenant `tenant`, with `policy`.
async fn every_minute(store: &RedisStore, tenant: &str, policy: Policy) -> tickwheel::Task {
    let mut input = NewTask::cron(tenant, "a", "* * * * *");
    input.policy = Some(policy);
    store
        .create_task(input.validate(tenant, Utc::now()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn strings_are_stored_verbatim() {
    let Some(store) = single_store(&unique_prefix("verbatim"), 5).await else {
        return;
    };
    // No NUL: the model refuses it in task fields (the codec test covers it).
    let nasty = "ab\u{1}c\r\n\t'\"\\ %s %d {x} } ]] [[ --[==[ redis.call('FLUSHALL') é 😀 |:";
    let tenant = format!("t{{{nasty}");
    let mut input = NewTask::cron(format!("n{nasty}"), format!("a{nasty}"), "* * * * *");
    input.description = Some(nasty.to_owned());
    input.prompt = Some(nasty.repeat(100));
    input.channel_id = Some("#c{}|'\"".to_owned());
    let task = store
        .create_task(input.validate(&tenant, Utc::now()).unwrap())
        .await
        .unwrap();
    assert_eq!(store.get_task(&tenant, task.id).await.unwrap(), task);
    assert_eq!(
        store
            .list_tasks(&tenant, TaskPage::first(10))
            .await
            .unwrap(),
        vec![task.clone()]
    );
    let at = task.next_run.unwrap();
    let ClaimOutcome::Started(e) = store.claim(vec![manual(&task, at)]).await.unwrap()[0].clone()
    else {
        panic!("not started");
    };
    store
        .finish(Finish {
            id: e.id,
            fence: e.fence,
            status: ExecutionStatus::Failed,
            started_at: None,
            finished_at: at + Duration::seconds(1),
            error: Some(nasty.to_owned()),
            output: Some(String::new()),
            retry_at: None,
            node: format!("node{nasty}"),
            lease_until: at + Duration::seconds(31),
        })
        .await
        .unwrap();
    let h = store
        .executions(&tenant, task.id, ExecutionQuery::newest(10))
        .await
        .unwrap();
    assert_eq!(h.total, 1);
    let got = &h.executions[0];
    assert_eq!(got.error.as_deref(), Some(nasty));
    assert_eq!(got.output.as_deref(), Some(""), "Some(\"\") is not None");
    assert_eq!(got.tenant, tenant);
    store.delete_task(&tenant, task.id).await.unwrap();
}

/// The Lua side writes "replaced by the run for <RFC 3339>" exactly as
/// chrono's `to_rfc3339` does, for whole, milli- and microsecond times and
/// times before 1970.
#[tokio::test]
async fn replaced_runs_name_their_successor_like_chrono() {
    let Some(store) = single_store(&unique_prefix("replace"), 50).await else {
        return;
    };
    let policy = Policy {
        overlap: Overlap::Replace,
        ..Policy::default()
    };
    let task = every_minute(&store, "replace", policy).await;
    let times = [
        "2030-01-01T00:02:00Z",
        "1999-12-31T23:59:59.500Z",
        "2024-02-29T12:34:56.123456Z",
        "1969-07-20T20:17:40.000001Z",
        "2000-03-01T00:00:00Z",
        "2100-12-31T23:59:59.999Z",
    ];
    let mut previous: Option<Execution> = None;
    for t in times {
        let at: DateTime<Utc> = t.parse().unwrap();
        let outcome = store
            .claim(vec![manual(&task, at)])
            .await
            .unwrap()
            .remove(0);
        let started = match outcome {
            ClaimOutcome::Started(e) => e,
            ClaimOutcome::Replaced { started, replaced } => {
                let prev = previous.take().unwrap();
                assert_eq!(replaced, vec![prev.id]);
                let h = store
                    .executions("replace", task.id, ExecutionQuery::newest(100))
                    .await
                    .unwrap();
                let old = h.executions.iter().find(|e| e.id == prev.id).unwrap();
                assert_eq!(
                    old.error.as_deref(),
                    Some(format!("replaced by the run for {}", at.to_rfc3339()).as_str()),
                );
                started
            }
            other => panic!("{other:?}"),
        };
        previous = Some(started);
    }
}

#[tokio::test]
async fn a_task_updated_with_stale_data_is_not_written_back() {
    // An update racing a claim re-reads instead of reverting next_run.
    let Some(store) = single_store(&unique_prefix("cas"), 5).await else {
        return;
    };
    let now = Utc::now();
    let task = store
        .create_task(
            NewTask::cron("c", "a", "* * * * * *")
                .validate("cas", now)
                .unwrap(),
        )
        .await
        .unwrap();
    let mut current = task.clone();
    for i in 0..20 {
        let at = current.next_run.unwrap();
        let next = current.compiled_schedule().unwrap().next_after(at);
        let claim = Claim {
            task_id: task.id,
            kind: ClaimKind::Scheduled {
                expected_next_run: at,
                expected_version: current.version,
                new_next_run: next,
            },
            execution: None,
            missed: Vec::new(),
            node: "n".into(),
            now: at,
        };
        let s = store.clone();
        let patch = TaskPatch {
            name: Some(format!("name {i}")),
            ..TaskPatch::default()
        };
        let updater =
            tokio::spawn(async move { s.update_task("cas", task.id, &patch, None, now).await });
        let outcome = store.claim(vec![claim]).await.unwrap().remove(0);
        let updated = updater.await.unwrap().unwrap();
        current = store.get_task("cas", task.id).await.unwrap();
        match outcome {
            ClaimOutcome::Advanced => assert_eq!(current.next_run, next),
            ClaimOutcome::Lost { .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(updated.next_run <= current.next_run);
    }
    assert_eq!(current.version, 21);
}

#[tokio::test]
async fn options_are_checked() {
    let Some(url) = single_url() else {
        return;
    };
    for prefix in ["", "a{b", "a}b"] {
        assert!(matches!(
            RedisStore::builder().prefix(prefix).connect(&url).await,
            Err(Error::Invalid { .. })
        ));
    }
    assert!(matches!(
        RedisStore::builder().partitions(0).connect(&url).await,
        Err(Error::Invalid { .. })
    ));
    let prefix = unique_prefix("parts");
    RedisStore::builder()
        .prefix(&prefix)
        .partitions(8)
        .connect(&url)
        .await
        .expect("first store sets the partition count");
    match RedisStore::builder()
        .prefix(&prefix)
        .partitions(16)
        .connect(&url)
        .await
    {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "partitions"),
        other => panic!("another partition count accepted: {other:?}"),
    }
}

/// A prefix holding data in the earlier key layout (one hash per
/// execution; its settings record no layout) is refused, not misread.
#[tokio::test]
async fn a_prefix_in_an_earlier_layout_is_refused() {
    let Some(url) = single_url() else {
        return;
    };
    let prefix = unique_prefix("layout");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HSET")
        .arg(format!("{{{prefix}}}:conf"))
        .arg("partitions")
        .arg(16)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap();
    match RedisStore::builder().prefix(&prefix).connect(&url).await {
        Err(Error::Invalid { field, message }) => {
            assert_eq!(field, "prefix");
            assert!(message.contains("earlier key layout"), "{message}");
        }
        other => panic!("an earlier layout accepted: {other:?}"),
    }
    // A new prefix records this version's layout: a second store connects.
    let fresh = unique_prefix("layout");
    for _ in 0..2 {
        RedisStore::builder()
            .prefix(&fresh)
            .connect(&url)
            .await
            .expect("this version's layout");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port nothing listens on: bind one, then let it go.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = RedisStore::builder()
        .connect_timeout(std::time::Duration::from_millis(500))
        .connect(&format!("redis://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(
        RedisStore::connect("not a url").await,
        Err(Error::Invalid { .. })
    ));
}

/// Runs of a default (`overlap: allow`) cron task are not tracked on the
/// task; switching the policy to `skip` while one runs lists it, so the
/// next occurrence is skipped as the memory store would.
#[tokio::test]
async fn a_policy_switch_sees_the_runs_already_running() {
    let Some(store) = single_store(&unique_prefix("switch"), 50).await else {
        return;
    };
    let task = every_minute(&store, "switch", Policy::default()).await;
    let at = task.next_run.unwrap();
    let ClaimOutcome::Started(first) =
        store.claim(vec![manual(&task, at)]).await.unwrap()[0].clone()
    else {
        panic!("not started");
    };
    let patch = TaskPatch {
        policy: Some(Policy {
            overlap: Overlap::Skip,
            ..Policy::default()
        }),
        ..TaskPatch::default()
    };
    let task = store
        .update_task("switch", task.id, &patch, None, at)
        .await
        .unwrap();
    let later = at + Duration::seconds(60);
    match store
        .claim(vec![manual(&task, later)])
        .await
        .unwrap()
        .remove(0)
    {
        ClaimOutcome::Skipped(e) => assert_eq!(e.scheduled_for, later),
        other => panic!("expected Skipped, got {other:?}"),
    }
    // Once the first run ends, the next one starts.
    store
        .finish(Finish {
            id: first.id,
            fence: first.fence,
            status: ExecutionStatus::Succeeded,
            started_at: None,
            finished_at: later,
            error: None,
            output: None,
            retry_at: None,
            node: "n".into(),
            lease_until: later + Duration::seconds(30),
        })
        .await
        .unwrap();
    let again = later + Duration::seconds(60);
    assert!(matches!(
        store
            .claim(vec![manual(&task, again)])
            .await
            .unwrap()
            .remove(0),
        ClaimOutcome::Started(_)
    ));
}

/// A lost claim reports the task as it is now, whether or not the store
/// that claimed has its definition (it then leaves it out of the reply).
#[tokio::test]
async fn a_lost_claim_reports_the_task_as_it_is() {
    let prefix = unique_prefix("lost");
    let (Some(a), Some(b)) = (
        single_store(&prefix, 5).await,
        single_store(&prefix, 5).await,
    ) else {
        return;
    };
    let task = every_minute(&a, "lost", Policy::default()).await;
    let at = task.next_run.unwrap();
    let claim = Claim {
        task_id: task.id,
        kind: ClaimKind::Scheduled {
            expected_next_run: at,
            expected_version: task.version,
            new_next_run: Some(at + Duration::seconds(60)),
        },
        execution: Some(Execution::start(
            &task,
            at,
            1,
            Trigger::Schedule,
            "n",
            at,
            at + Duration::seconds(30),
        )),
        missed: Vec::new(),
        node: "n".into(),
        now: at,
    };
    assert!(matches!(
        a.claim(vec![claim.clone()]).await.unwrap()[0],
        ClaimOutcome::Started(_)
    ));
    let now = a.get_task("lost", task.id).await.unwrap();
    for store in [&a, &b] {
        match store.claim(vec![claim.clone()]).await.unwrap().remove(0) {
            ClaimOutcome::Lost { current } => assert_eq!(current.as_deref(), Some(&now)),
            other => panic!("{other:?}"),
        }
    }
    let patch = TaskPatch {
        name: Some("renamed".into()),
        ..TaskPatch::default()
    };
    let renamed = b
        .update_task("lost", task.id, &patch, None, at)
        .await
        .unwrap();
    match a.claim(vec![claim]).await.unwrap().remove(0) {
        ClaimOutcome::Lost { current } => assert_eq!(current.as_deref(), Some(&renamed)),
        other => panic!("{other:?}"),
    }
}

/// A manual claim for `(at, attempt)`, with a 30 s lease.
fn manual_attempt(task: &tickwheel::Task, at: DateTime<Utc>, attempt: u32) -> Claim {
    let mut claim = manual(task, at);
    if let Some(e) = &mut claim.execution {
        e.attempt = attempt;
    }
    claim
}

fn succeeded(e: &Execution, at: DateTime<Utc>) -> Finish {
    Finish {
        id: e.id,
        fence: e.fence,
        status: ExecutionStatus::Succeeded,
        started_at: None,
        finished_at: at,
        error: None,
        output: None,
        retry_at: None,
        node: "n".into(),
        lease_until: at + Duration::seconds(30),
    }
}

async fn start(store: &RedisStore, claim: Claim) -> Execution {
    match store.claim(vec![claim]).await.unwrap().remove(0) {
        ClaimOutcome::Started(e) => e,
        other => panic!("expected Started, got {other:?}"),
    }
}

async fn history_of(store: &RedisStore, tenant: &str, task: &tickwheel::Task) -> Vec<Execution> {
    let page = store
        .executions(tenant, task.id, ExecutionQuery::newest(100))
        .await
        .unwrap();
    assert_eq!(page.total, page.executions.len());
    page.executions
}

/// (scheduled_for, attempt) is unique whether the occurrence is later than
/// every one recorded (no lookup) or not.
#[tokio::test]
async fn an_occurrence_starts_once_per_attempt() {
    let Some(store) = single_store(&unique_prefix("unique"), 50).await else {
        return;
    };
    let task = every_minute(&store, "unique", Policy::default()).await;
    let at = task.next_run.unwrap();
    let earlier = at - Duration::seconds(600);
    start(&store, manual_attempt(&task, at, 1)).await;
    for (when, attempt, wins) in [
        (at, 1, false),
        (at, 2, true),
        (at, 2, false),
        (earlier, 1, true),
        (earlier, 1, false),
        (earlier, 3, true),
        (at + Duration::seconds(1), 1, true),
    ] {
        let outcome = store
            .claim(vec![manual_attempt(&task, when, attempt)])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            matches!(outcome, ClaimOutcome::Started(_)),
            wins,
            "({when}, {attempt}): {outcome:?}"
        );
    }
    let h = history_of(&store, "unique", &task).await;
    let keys: Vec<_> = h.iter().map(|e| (e.scheduled_for, e.attempt)).collect();
    assert_eq!(
        keys,
        vec![
            (at + Duration::seconds(1), 1),
            (at, 2),
            (at, 1),
            (earlier, 3),
            (earlier, 1)
        ]
    );
}

/// The retention counts ended executions and keeps the latest to end;
/// running ones and failed ones awaiting a retry are kept besides, however
/// old. History reads in (scheduled_for, attempt) order whatever the order
/// of ends.
#[tokio::test]
async fn the_trim_keeps_the_latest_ends_and_runs_not_done() {
    let Some(store) = single_store(&unique_prefix("trim"), 3).await else {
        return;
    };
    let policy = Policy {
        max_retries: 1,
        ..Policy::default()
    };
    let task = every_minute(&store, "trim", policy).await;
    let t0 = task.next_run.unwrap();
    let at = |i: i64| t0 + Duration::seconds(60 * i);
    let running = start(&store, manual(&task, at(1))).await;
    let failed = start(&store, manual(&task, at(2))).await;
    let mut f = succeeded(&failed, at(2));
    f.status = ExecutionStatus::Failed;
    f.retry_at = Some(at(100));
    store.finish(f).await.unwrap();
    let mut done = Vec::new();
    for i in 3..=6 {
        let e = start(&store, manual(&task, at(i))).await;
        store.finish(succeeded(&e, at(i))).await.unwrap();
        done.push(e.id);
    }
    let ids = |h: &[Execution]| h.iter().map(|e| e.id).collect::<Vec<_>>();
    let h = history_of(&store, "trim", &task).await;
    assert_eq!(
        ids(&h),
        vec![done[3], done[2], done[1], failed.id, running.id]
    );
    assert_eq!(h[4].status, ExecutionStatus::Running);
    // The oldest occurrence ends last: it is kept, the earliest end goes.
    store.finish(succeeded(&running, at(7))).await.unwrap();
    let next = start(&store, manual(&task, at(8))).await;
    let h = history_of(&store, "trim", &task).await;
    assert_eq!(
        ids(&h),
        vec![next.id, done[3], done[2], failed.id, running.id]
    );
    assert_eq!(h[4].status, ExecutionStatus::Succeeded);
    let retries = store.due_retries(at(100), 10).await.unwrap();
    assert_eq!(ids(&retries), vec![failed.id], "the retry still awaits");
}

/// A queued occurrence starts under the id of the claim that queued it;
/// the lease of a running execution reads back from the lease index.
#[tokio::test]
async fn a_queued_occurrence_keeps_its_claims_id_and_leases_read_back() {
    let Some(store) = single_store(&unique_prefix("queue"), 50).await else {
        return;
    };
    let policy = Policy {
        overlap: Overlap::QueueOne,
        ..Policy::default()
    };
    let task = every_minute(&store, "queue", policy).await;
    let at = task.next_run.unwrap();
    let first = start(&store, manual(&task, at)).await;
    let later = at + Duration::seconds(60);
    let queued = manual(&task, later);
    let queued_id = queued.execution.as_ref().unwrap().id;
    assert_eq!(
        store.claim(vec![queued]).await.unwrap()[0],
        ClaimOutcome::Queued
    );
    let renewed = at + Duration::seconds(45);
    store
        .renew_lease(first.id, first.fence, renewed)
        .await
        .unwrap();
    let h = history_of(&store, "queue", &task).await;
    assert_eq!(h[0].lease_until, Some(renewed));
    let outcome = store.finish(succeeded(&first, later)).await.unwrap();
    let started = outcome.started.expect("the queued occurrence starts");
    assert_eq!(
        (started.id, started.scheduled_for, started.status),
        (queued_id, later, ExecutionStatus::Running)
    );
    assert_eq!(started.lease_until, Some(later + Duration::seconds(30)));
    let h = history_of(&store, "queue", &task).await;
    assert_eq!(h[0], started);
    assert_eq!(
        (h[1].lease_until, h[1].duration_ms),
        (None, Some(60_000)),
        "an ended run has no lease"
    );
}

/// Long errors and outputs are kept out of the history's records and read
/// back whole: in history pages and in due retries; the trim and the
/// task's deletion drop them with their records.
#[tokio::test]
async fn long_texts_are_kept_aside_and_read_back() {
    let Some(url) = single_url() else {
        return;
    };
    let prefix = unique_prefix("aside");
    let Some(store) = single_store(&prefix, 2).await else {
        return;
    };
    let policy = Policy {
        max_retries: 1,
        ..Policy::default()
    };
    let task = every_minute(&store, "aside", policy).await;
    let t0 = task.next_run.unwrap();
    let at = |i: i64| t0 + Duration::seconds(60 * i);
    let long = |c: &str| c.repeat(300);
    // A failed run awaiting its retry, with long texts.
    let failed = start(&store, manual(&task, at(1))).await;
    let mut f = succeeded(&failed, at(1));
    f.status = ExecutionStatus::Failed;
    f.error = Some(long("e"));
    f.output = Some(long("o|"));
    f.retry_at = Some(at(100));
    store.finish(f).await.unwrap();
    let retries = store.due_retries(at(100), 10).await.unwrap();
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].error.as_deref(), Some(long("e").as_str()));
    assert_eq!(retries[0].output.as_deref(), Some(long("o|").as_str()));
    // Runs with long output, more than the retention of 2.
    for i in 2..=5 {
        let e = start(&store, manual(&task, at(i))).await;
        let mut f = succeeded(&e, at(i));
        f.output = Some(long(&i.to_string()));
        store.finish(f).await.unwrap();
    }
    let h = history_of(&store, "aside", &task).await;
    let outputs: Vec<_> = h.iter().map(|e| e.output.clone().unwrap()).collect();
    assert_eq!(
        outputs,
        vec![long("5"), long("4"), long("o|")],
        "the two latest ends, then the retry awaiting"
    );
    // Texts aside: the failed run's and those of the two records kept (at
    // a retention of 2 the list is trimmed as soon as it holds 3).
    let (_, low) = task.id.as_uuid().as_u64_pair();
    let aside_key = format!("{{{prefix}:p{}}}:o:{}", low % 16, task.id);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let kept: usize = redis::cmd("HLEN")
        .arg(&aside_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 3, "the retry's and the two records' texts");
    store.delete_task("aside", task.id).await.unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&aside_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "deleting the task drops its texts");
}

/// A claim that fails inside a batch (here its history key holds the wrong
/// type) leaves the claims before it whole, its own batched index writes
/// undone, and comes back with Redis's error code.
#[tokio::test]
async fn a_claim_failing_mid_batch_leaves_the_others_whole() {
    let Some(url) = single_url() else {
        return;
    };
    let prefix = unique_prefix("fail");
    let Some(store) = single_store(&prefix, 50).await else {
        return;
    };
    let partition = |t: &tickwheel::Task| t.id.as_uuid().as_u64_pair().1 % 16;
    // Two tasks, the first in a partition the call reaches first.
    let (a, b) = loop {
        let a = every_minute(&store, "fail", Policy::default()).await;
        let b = every_minute(&store, "fail", Policy::default()).await;
        if partition(&a) < partition(&b) {
            break (a, b);
        }
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(format!("{{{prefix}:p{}}}:l:{}", partition(&b), b.id))
        .arg("not a list")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let scheduled = |t: &tickwheel::Task, missed: Vec<DateTime<Utc>>| {
        let at = t.next_run.unwrap();
        Claim {
            task_id: t.id,
            kind: ClaimKind::Scheduled {
                expected_next_run: at,
                expected_version: t.version,
                new_next_run: Some(at + Duration::seconds(60)),
            },
            execution: Some(Execution::start(
                t,
                at,
                1,
                Trigger::Schedule,
                "n",
                at,
                at + Duration::seconds(30),
            )),
            missed,
            node: "n".to_owned(),
            now: at,
        }
    };
    let before = b.next_run.unwrap() - Duration::seconds(60);
    let err = store
        .claim(vec![scheduled(&a, Vec::new()), scheduled(&b, vec![before])])
        .await
        .expect_err("the second claim cannot write its missed record");
    let text = err.to_string();
    assert!(text.contains("WRONGTYPE"), "{text}");
    assert!(!text.contains("user_script"), "{text}");
    let due = store
        .due_tasks(None, Utc::now() + Duration::days(1), 100)
        .await
        .unwrap();
    let next = |t: &tickwheel::Task| due.iter().find(|x| x.id == t.id).unwrap().next_run;
    assert_eq!(next(&a), a.next_run.map(|n| n + Duration::seconds(60)));
    assert_eq!(next(&b), b.next_run, "the failed claim moved nothing");
    let score: f64 = redis::cmd("ZSCORE")
        .arg(format!("{{{prefix}:p{}}}:due", partition(&b)))
        .arg(b.id.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        score as i64,
        b.next_run.unwrap().timestamp_micros(),
        "nor its due index entry"
    );
    let h = history_of(&store, "fail", &a).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].status, ExecutionStatus::Running);
}
