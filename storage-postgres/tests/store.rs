//! What the conformance suite does not pin down for this backend: the same
//! script of claims, finishes and recoveries gives the same answers as
//! `MemoryStore` for every overlap policy and claim kind (batches included),
//! strings round-trip verbatim, NUL is refused naming the field.
//!
//! The script runs below the retention limit: which old rows a trim picks
//! may differ from the memory store (see the crate docs on retention); the
//! conformance suite checks retention itself.

mod common;

use chrono::{DateTime, Utc};
use tickwheel::store::{Claim, ClaimKind, ClaimOutcome, ExecutionQuery, Finish};
use tickwheel::{
    Error, Execution, ExecutionStatus, MemoryStore, Misfire, NewTask, Notification,
    NotificationMethod, Overlap, Policy, Store, Task, TaskPatch, Trigger,
};
use tickwheel_postgres::PgStore;

fn at(s: i64) -> DateTime<Utc> {
    tickwheel::store::conformance::t0() + chrono::TimeDelta::seconds(s)
}

async fn pg(url: &str) -> PgStore {
    PgStore::builder()
        .schema(common::fresh_schema())
        .retention(100)
        .max_connections(4)
        .connect(url)
        .await
        .expect("connect")
}

fn run(task: &Task, scheduled_for: DateTime<Utc>, trigger: Trigger, now: i64) -> Execution {
    Execution::start(task, scheduled_for, 1, trigger, "n", at(now), at(now + 30))
}

fn scheduled(task: &Task, expected: i64, next: i64, now: i64, missed: &[i64]) -> Claim {
    Claim {
        task_id: task.id,
        kind: ClaimKind::Scheduled {
            expected_next_run: at(expected),
            expected_version: task.version,
            new_next_run: Some(at(next)),
        },
        execution: Some(run(task, at(expected), Trigger::Schedule, now)),
        missed: missed.iter().map(|s| at(*s)).collect(),
        node: "n".into(),
        now: at(now),
    }
}

fn manual(task: &Task, now: i64) -> Claim {
    Claim {
        task_id: task.id,
        kind: ClaimKind::Manual,
        execution: Some(run(task, at(now), Trigger::Manual, now)),
        missed: Vec::new(),
        node: "n".into(),
        now: at(now),
    }
}

/// A task of `tenant` firing every minute (first at `at(60)`), created in `store`.
async fn every_minute(store: &PgStore, tenant: &str) -> Task {
    let task = NewTask::cron(tenant, "agent", "* * * * *")
        .validate(tenant, tickwheel::store::conformance::t0())
        .expect("valid");
    store.create_task(task).await.expect("create")
}

/// A task of `tenant` firing every minute under `overlap`, created in `store`.
async fn task_with_overlap(store: &PgStore, tenant: &str, overlap: Overlap) -> Task {
    let mut new = NewTask::cron(tenant, "agent", "* * * * *");
    new.policy = Some(Policy {
        overlap,
        ..Policy::default()
    });
    store
        .create_task(
            new.validate(tenant, tickwheel::store::conformance::t0())
                .expect("valid"),
        )
        .await
        .expect("create")
}

/// The run a claim started.
fn started(outcome: ClaimOutcome) -> Execution {
    match outcome {
        ClaimOutcome::Started(e) => e,
        other => panic!("expected Started, got {other:?}"),
    }
}

/// The store's `leases` rows (execution, expiry), by execution id.
async fn leases_of(store: &PgStore) -> Vec<(uuid::Uuid, DateTime<Utc>)> {
    sqlx::query_as(&format!(
        "SELECT execution_id, lease_until FROM \"{}\".leases ORDER BY execution_id",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .expect("read leases")
}

fn finish(e: &Execution, status: ExecutionStatus, now: i64, retry: Option<i64>) -> Finish {
    Finish {
        id: e.id,
        fence: e.fence,
        status,
        started_at: None,
        finished_at: at(now),
        error: Some("it's a 'test'; DROP TABLE tasks; --".into()),
        output: Some("line\nwith\ttabs \\ and \"quotes\"".into()),
        retry_at: retry.map(at),
        node: "n".into(),
        lease_until: at(now + 30),
    }
}

/// What a store-generated id would make differ between two stores.
fn shape(o: &ClaimOutcome) -> String {
    match o {
        ClaimOutcome::Started(e) => format!("started {}", e.id),
        ClaimOutcome::Skipped(e) => format!("skipped {} {:?}", e.id, e.error),
        ClaimOutcome::Queued => "queued".into(),
        ClaimOutcome::Replaced { started, replaced } => {
            format!("replaced {} {replaced:?}", started.id)
        }
        ClaimOutcome::Advanced => "advanced".into(),
        ClaimOutcome::Lost { current } => format!(
            "lost {:?}",
            current
                .as_ref()
                .map(|t| (t.next_run, t.last_run, t.version))
        ),
        other => format!("{other:?}"),
    }
}

fn history_shape(h: &[Execution]) -> Vec<String> {
    h.iter()
        .map(|e| {
            format!(
                "{} #{} {:?} {:?} {} fence={} lease={:?} retry={:?} fin={:?} dur={:?} err={:?} out={:?}",
                e.scheduled_for,
                e.attempt,
                e.status,
                e.trigger,
                e.node,
                e.fence,
                e.lease_until,
                e.retry_at,
                e.finished_at,
                e.duration_ms,
                e.error,
                e.output
            )
        })
        .collect()
}

/// One script, run on a store; returns a transcript to compare.
async fn script(store: &dyn Store, task: Task) -> Vec<String> {
    let mut log = Vec::new();
    let task = store.create_task(task).await.expect("create");
    // A batch naming the same task twice, a scheduled claim and a manual one.
    let first = store
        .claim(vec![scheduled(&task, 60, 120, 60, &[]), manual(&task, 61)])
        .await
        .expect("claim");
    log.extend(first.iter().map(shape));
    let running: Vec<Execution> = first
        .iter()
        .filter_map(|o| match o {
            ClaimOutcome::Started(e) | ClaimOutcome::Replaced { started: e, .. } => Some(e.clone()),
            _ => None,
        })
        .collect();
    // The next occurrence with two missed ones, and a stale claim, in one batch.
    let second = store
        .claim(vec![
            scheduled(&task, 120, 300, 240, &[180, 200]),
            scheduled(&task, 60, 120, 240, &[]),
        ])
        .await
        .expect("claim");
    log.extend(second.iter().map(shape));
    // The first run fails with a retry due; a finish for a stale fence fails.
    if let Some(e) = running.first() {
        let out = store
            .finish(finish(e, ExecutionStatus::Failed, 250, Some(260)))
            .await;
        log.push(match out {
            Ok(o) => format!(
                "finish started={:?}",
                o.started.map(|s| (s.scheduled_for, s.trigger))
            ),
            Err(Error::Conflict { .. }) => "finish conflict".to_owned(),
            Err(other) => format!("finish {other}"),
        });
        let again = store
            .finish(finish(e, ExecutionStatus::Succeeded, 251, None))
            .await;
        log.push(format!(
            "refinish conflict={}",
            matches!(again, Err(Error::Conflict { .. }))
        ));
    }
    // Recovery takes over whatever still runs and starts what was queued.
    let rec = store
        .recover_expired(at(1000), "r", at(1030), 100)
        .await
        .expect("recover");
    let mut abandoned: Vec<String> = rec
        .abandoned
        .iter()
        .map(|e| format!("abandoned {} {:?}", e.id, e.retry_at))
        .collect();
    abandoned.sort();
    log.extend(abandoned);
    log.extend(
        rec.started
            .iter()
            .map(|e| format!("recovered-start {} {:?}", e.scheduled_for, e.trigger)),
    );
    // The retry, claimed twice in one batch: the second loses.
    let retries = store.due_retries(at(2000), 10).await.expect("retries");
    log.push(format!("retries {}", retries.len()));
    for failed in retries {
        let claim = Claim {
            task_id: task.id,
            kind: ClaimKind::Retry { failed: failed.id },
            execution: Some(Execution::start(
                &task,
                failed.scheduled_for,
                failed.attempt + 1,
                Trigger::Retry,
                "n",
                at(2000),
                at(2030),
            )),
            missed: Vec::new(),
            node: "n".into(),
            now: at(2000),
        };
        let out = store
            .claim(vec![claim.clone(), claim])
            .await
            .expect("retry claim");
        log.extend(out.iter().map(shape));
    }
    let now = store.get_task(&task.tenant, task.id).await.expect("get");
    log.push(format!(
        "task next={:?} last={:?} status={:?} version={}",
        now.next_run, now.last_run, now.status, now.version
    ));
    let h = store
        .executions(&task.tenant, task.id, ExecutionQuery::newest(100))
        .await
        .expect("history");
    log.push(format!("total {}", h.total));
    log.extend(history_shape(&h.executions));
    log
}

/// Replaces each execution id by its order of first appearance, so two runs
/// of the script (each making fresh ids) compare equal when they agree.
fn numbered(log: Vec<String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    log.into_iter()
        .map(|line| {
            let mut out = String::new();
            let mut rest = line.as_str();
            while let Some((i, id)) = find_uuid(rest) {
                let n = match seen.iter().position(|s| *s == id) {
                    Some(n) => n,
                    None => {
                        seen.push(id.clone());
                        seen.len() - 1
                    }
                };
                out.push_str(&rest[..i]);
                out.push_str(&format!("<id{n}>"));
                rest = &rest[i + 36..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

fn find_uuid(s: &str) -> Option<(usize, String)> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(35)).find_map(|i| {
        let cand = &s.get(i..i + 36)?;
        uuid::Uuid::parse_str(cand)
            .ok()
            .filter(|_| cand.as_bytes()[8] == b'-')
            .map(|_| (i, (*cand).to_owned()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_match_the_memory_store_for_every_policy() {
    let Some(url) = common::server_url("claims_match_the_memory_store_for_every_policy") else {
        return;
    };
    let pg = pg(&url).await;
    for overlap in [
        Overlap::Allow,
        Overlap::Skip,
        Overlap::QueueOne,
        Overlap::Replace,
    ] {
        for (misfire, max_retries) in [(Misfire::Skip, 2), (Misfire::FireOnce, 0)] {
            let mut input = NewTask::cron("policy", "agent", "* * * * *");
            input.policy = Some(Policy {
                overlap,
                misfire,
                max_retries,
                ..Policy::default()
            });
            let task = input
                .validate("policies", tickwheel::store::conformance::t0())
                .expect("valid");
            let memory = MemoryStore::with_retention(100);
            let expected = numbered(script(&memory, task.clone()).await);
            let got = numbered(script(&pg, task).await);
            assert_eq!(
                got, expected,
                "overlap={overlap:?} misfire={misfire:?} retries={max_retries}"
            );
            assert_leases_match_running(&pg).await;
        }
    }
}

/// Every running execution has its `leases` row, with the same expiry,
/// and no other execution has one: the two copies of a lease agree after
/// claims, replacements, finishes, queued starts and recovery. A task whose
/// overlap policy tracks its runs lists exactly its running executions.
async fn assert_leases_match_running(store: &PgStore) {
    let untracked: Vec<uuid::Uuid> = sqlx::query_scalar(&format!(
        "SELECT t.id FROM \"{0}\".tasks t
         WHERE t.overlap <> 'allow' AND ARRAY(SELECT unnest(t.running) ORDER BY 1)
            IS DISTINCT FROM ARRAY(SELECT e.id FROM \"{0}\".executions e
                WHERE e.task_id = t.id AND e.status = 'running' ORDER BY 1)",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .expect("read running lists");
    assert!(
        untracked.is_empty(),
        "tasks whose running list is off: {untracked:?}"
    );
    let running: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT id, lease_until FROM \"{}\".executions
         WHERE status = 'running' ORDER BY id",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .expect("read running executions");
    assert_eq!(
        leases_of(store).await,
        running,
        "leases and running executions differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_round_trip_verbatim_and_nul_is_refused() {
    let Some(url) = common::server_url("strings_round_trip_verbatim_and_nul_is_refused") else {
        return;
    };
    let store = pg(&url).await;
    let tricky = "'; DROP TABLE tasks; -- \" \\ $1 %s {} \u{7} \t\r\n é 漢字 🦀 \u{202e}";
    let mut input = NewTask::cron(tricky, tricky, "*/5 * * * *");
    input.description = Some(tricky.into());
    input.prompt = Some(format!("{tricky}{tricky}"));
    input.timezone = Some("Europe/Paris".into());
    input.channel_id = Some("#ch'\"\\".into());
    input.notification = Some(Notification {
        method: NotificationMethod::Email,
        destination: format!("{tricky}@example.com"),
    });
    input.policy = Some(Policy {
        misfire: Misfire::CatchUp,
        overlap: Overlap::QueueOne,
        max_retries: 7,
        retry_backoff_ms: 1234,
        timeout_ms: Some(98_765),
        jitter_ms: 321,
    });
    let tenant = format!("tenant {tricky}");
    let task = input.validate(&tenant, Utc::now()).expect("valid");
    let created = store.create_task(task.clone()).await.expect("create");
    assert_eq!(created.name, task.name);
    let read = store.get_task(&tenant, task.id).await.expect("get");
    assert_eq!(read, created, "read back equal to what create returned");
    let listed = store
        .list_tasks(&tenant, tickwheel::store::TaskPage::first(10))
        .await
        .expect("list");
    assert_eq!(listed, vec![created.clone()]);

    // The model refuses NUL too; a task built around it still is refused.
    let mut bad = NewTask::cron("n", "a", "* * * * *")
        .validate("t", Utc::now())
        .expect("valid");
    bad.prompt = "before\0after".into();
    match store.create_task(bad).await {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "prompt"),
        other => panic!("expected Invalid(prompt), got {other:?}"),
    }
    let patch = TaskPatch {
        description: Some("nul\0".into()),
        ..TaskPatch::default()
    };
    match store
        .update_task(&tenant, task.id, &patch, None, Utc::now())
        .await
    {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "description"),
        other => panic!("expected Invalid(description), got {other:?}"),
    }
    assert_eq!(
        store.get_task(&tenant, task.id).await.expect("get"),
        created,
        "a refused update changes nothing"
    );

    // A NUL in a run's output is kept as U+FFFD rather than losing the result.
    let claim = Claim {
        task_id: task.id,
        kind: ClaimKind::Manual,
        execution: Some(Execution::start(
            &created,
            at(0),
            1,
            Trigger::Manual,
            "n",
            at(0),
            at(30),
        )),
        missed: Vec::new(),
        node: "n".into(),
        now: at(0),
    };
    let e = match store.claim(vec![claim]).await.expect("claim").remove(0) {
        ClaimOutcome::Started(e) => e,
        other => panic!("{other:?}"),
    };
    let mut f = finish(&e, ExecutionStatus::Succeeded, 1, None);
    f.output = Some(format!("a\0b {tricky}"));
    store.finish(f).await.expect("finish");
    let h = store
        .executions(&tenant, task.id, ExecutionQuery::newest(10))
        .await
        .expect("history");
    assert_eq!(
        h.executions[0].output.as_deref(),
        Some(format!("a\u{FFFD}b {tricky}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_schemas_are_invalid_and_a_dead_server_is_unavailable() {
    assert!(matches!(
        PgStore::builder().schema("no-dashes").connect("postgres://x").await,
        Err(Error::Invalid { field, .. }) if field == "schema"
    ));
    assert!(matches!(
        PgStore::connect("not a url").await,
        Err(Error::Invalid { field, .. }) if field == "url"
    ));
    // Nothing listens on port 1.
    let refused = PgStore::builder()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect("postgres://postgres@127.0.0.1:1/postgres")
        .await;
    assert!(
        matches!(refused, Err(Error::Unavailable { .. })),
        "{refused:?}"
    );
}

/// A task switched from `allow` (whose running ids are not kept) to
/// `queue_one` while two runs are in flight still queues behind them, and
/// the queued occurrence starts when the last of them finishes — also when
/// both finish at once (one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_keeps_overlap_exact() {
    let Some(url) = common::server_url("a_policy_change_keeps_overlap_exact") else {
        return;
    };
    let store = pg(&url).await;
    let task = every_minute(&store, "switch").await;
    let a = started(
        store
            .claim(vec![scheduled(&task, 60, 120, 60, &[])])
            .await
            .expect("claim")
            .remove(0),
    );
    let b = started(
        store
            .claim(vec![manual(&task, 61)])
            .await
            .expect("claim")
            .remove(0),
    );
    let patch = TaskPatch {
        policy: Some(Policy {
            overlap: Overlap::QueueOne,
            ..Policy::default()
        }),
        ..TaskPatch::default()
    };
    let task = store
        .update_task("switch", task.id, &patch, None, at(62))
        .await
        .expect("update");
    let out = store
        .claim(vec![scheduled(&task, 120, 180, 120, &[])])
        .await
        .expect("claim")
        .remove(0);
    assert!(matches!(out, ClaimOutcome::Queued), "{out:?}");
    let (fa, fb) = tokio::join!(
        store.finish(finish(&a, ExecutionStatus::Succeeded, 130, None)),
        store.finish(finish(&b, ExecutionStatus::Succeeded, 131, None)),
    );
    let started: Vec<Execution> = [fa.expect("finish a"), fb.expect("finish b")]
        .into_iter()
        .filter_map(|o| o.started)
        .collect();
    assert_eq!(started.len(), 1, "the queued occurrence starts once");
    assert_eq!(started[0].scheduled_for, at(120));
    // With it running, the next occurrence queues again.
    let task = store.get_task("switch", task.id).await.expect("get");
    let out = store
        .claim(vec![scheduled(&task, 180, 240, 180, &[])])
        .await
        .expect("claim")
        .remove(0);
    assert!(matches!(out, ClaimOutcome::Queued), "{out:?}");
}

/// The bulk path stores tasks exactly as `create_task` does (strings with
/// every character COPY escapes, all fields), refuses a duplicate id as a
/// whole, and tells subscribers to rescan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_create_is_faithful_and_atomic() {
    let Some(url) = common::server_url("bulk_create_is_faithful_and_atomic") else {
        return;
    };
    let store = pg(&url).await;
    let mut feed = store.subscribe().await.expect("subscribe");
    let tricky = "tab\there\\back\\slash\nnew\rline \\N \\. '\"; -- é 🦀 \u{1}";
    let now = Utc::now();
    let mut plain = NewTask::once("once", "agent", now + chrono::TimeDelta::hours(1));
    plain.enabled = Some(false);
    let mut rich = NewTask::cron(tricky, tricky, "*/5 * * * *");
    rich.description = Some(tricky.into());
    rich.prompt = Some(tricky.into());
    rich.channel_id = Some("#x\\y".into());
    rich.notification = Some(Notification {
        method: NotificationMethod::Http,
        destination: format!("https://example.com/{tricky}"),
    });
    rich.policy = Some(Policy {
        timeout_ms: Some(5),
        jitter_ms: 7,
        ..Policy::default()
    });
    let tasks = vec![
        plain.validate("bulk", now).expect("valid"),
        rich.validate("bulk", now).expect("valid"),
    ];
    let created = store.create_tasks(tasks.clone()).await.expect("bulk");
    for t in &created {
        assert_eq!(&store.get_task("bulk", t.id).await.expect("get"), t);
    }
    let resync = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if feed.next().await == Some(tickwheel::store::Change::Resync) {
                return;
            }
        }
    })
    .await;
    assert!(resync.is_ok(), "a bulk insert asks subscribers to rescan");

    let fresh = NewTask::cron("fresh", "a", "* * * * *")
        .validate("bulk", now)
        .expect("valid");
    let again = store
        .create_tasks(vec![fresh.clone(), tasks[0].clone()])
        .await;
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
    assert!(
        matches!(
            store.get_task("bulk", fresh.id).await,
            Err(Error::NotFound { .. })
        ),
        "nothing of a failed bulk insert stays"
    );
}

/// Upgrading a schema from before the `leases` table (migration 3) keeps
/// every running execution recoverable: its lease moves into the new table
/// and recovery still finds it once it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_moves_the_leases_of_running_executions() {
    let Some(url) = common::server_url("an_upgrade_moves_the_leases_of_running_executions") else {
        return;
    };
    // A running execution whose lease runs out at 90, written by this store.
    let current = pg(&url).await;
    let task = every_minute(&current, "upgrade").await;
    let running = started(
        current
            .claim(vec![scheduled(&task, 60, 120, 60, &[])])
            .await
            .expect("claim")
            .remove(0),
    );

    // The same rows in a schema at migration 2, then migrated.
    let old = common::fresh_schema();
    let dir = std::env::temp_dir().join(&old);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for file in ["0001_init.sql", "0002_nodes.sql"] {
        std::fs::copy(migrations.join(file), dir.join(file)).expect("copy a migration");
    }
    let before_leases = sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .expect("the first two migrations");
    let pool = current.pool();
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{old}\"; SET search_path TO \"{old}\""
    ))
    .execute(&mut *conn)
    .await
    .expect("old schema");
    before_leases.run(&mut *conn).await.expect("migrations 1-2");
    let new = current.schema();
    sqlx::raw_sql(&format!(
        "INSERT INTO \"{old}\".tasks SELECT * FROM \"{new}\".tasks;
         INSERT INTO \"{old}\".executions SELECT * FROM \"{new}\".executions;
         SET search_path TO DEFAULT"
    ))
    .execute(&mut *conn)
    .await
    .expect("copy the rows");
    drop(conn);
    std::fs::remove_dir_all(&dir).ok();

    let upgraded = PgStore::builder()
        .schema(old.clone())
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect and migrate");
    let leases = leases_of(&upgraded).await;
    let moved = leases
        .iter()
        .filter(|(id, _)| *id == running.id.as_uuid())
        .count();
    assert_eq!(moved, 1, "the running execution's lease moved");
    let before = upgraded
        .recover_expired(at(89), "n", at(119), 10)
        .await
        .expect("recover before expiry");
    assert!(before.abandoned.is_empty(), "{before:?}");
    let after = upgraded
        .recover_expired(at(91), "n", at(121), 10)
        .await
        .expect("recover after expiry");
    let abandoned: Vec<_> = after.abandoned.iter().map(|e| e.id).collect();
    assert_eq!(abandoned, vec![running.id]);
    assert_eq!(after.abandoned[0].status, ExecutionStatus::Abandoned);
    let left = leases_of(&upgraded).await.len();
    assert_eq!(left, 0, "an abandoned run keeps no lease");
}

/// A lease row outlives its execution only by a bug or a hand edit;
/// recovery deletes such a row instead of reporting its task, and a
/// finished run leaves no lease behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_follow_running_executions_only() {
    let Some(url) = common::server_url("leases_follow_running_executions_only") else {
        return;
    };
    let store = pg(&url).await;
    let schema = store.schema().to_owned();
    let leases = || async {
        let ids: Vec<uuid::Uuid> = leases_of(&store)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids
    };
    let task = every_minute(&store, "leases").await;
    let e = started(
        store
            .claim(vec![scheduled(&task, 60, 120, 60, &[])])
            .await
            .expect("claim")
            .remove(0),
    );
    assert_eq!(leases().await, vec![e.id.as_uuid()]);
    store
        .renew_lease(e.id, e.fence, at(150))
        .await
        .expect("renew");
    let until = leases_of(&store).await;
    assert_eq!(
        until,
        vec![(e.id.as_uuid(), at(150))],
        "a renewal moves the lease row too"
    );
    store
        .finish(finish(&e, ExecutionStatus::Succeeded, 65, None))
        .await
        .expect("finish");
    assert!(leases().await.is_empty(), "a finished run keeps no lease");

    let orphan = uuid::Uuid::now_v7();
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".leases (execution_id, task_id, lease_until) VALUES ($1, $2, $3)"
    ))
    .bind(orphan)
    .bind(task.id.as_uuid())
    .bind(at(1))
    .execute(store.pool())
    .await
    .expect("an orphan lease");
    let out = store
        .recover_expired(at(200), "n", at(230), 10)
        .await
        .expect("recover");
    assert!(
        out.abandoned.is_empty() && out.started.is_empty(),
        "{out:?}"
    );
    assert!(leases().await.is_empty(), "the orphan lease is gone");
}

/// Two `replace` claims queue for one task's lock: the second one's
/// snapshot predates the run the first one starts, so it cannot end that
/// run in the same statement. It is sent again, and ends it: one run is
/// left running, the other is recorded as replaced, whatever order the
/// lock was granted in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_ends_a_run_started_by_a_claim_it_waited_for() {
    let Some(url) = common::server_url("replace_ends_a_run_started_by_a_claim_it_waited_for")
    else {
        return;
    };
    let (store, task, outcomes) = two_claims_behind_a_lock(&url, "replace", Overlap::Replace).await;

    let history = store
        .executions("replace", task.id, ExecutionQuery::newest(10))
        .await
        .expect("history");
    let running: Vec<&Execution> = history
        .executions
        .iter()
        .filter(|e| e.status == ExecutionStatus::Running)
        .collect();
    assert_eq!(running.len(), 1, "one run is left: {history:?}");
    let replaced: Vec<&Execution> = history
        .executions
        .iter()
        .filter(|e| e.status == ExecutionStatus::Abandoned)
        .collect();
    assert_eq!(replaced.len(), 1, "the other was replaced: {history:?}");
    let replacing = outcomes
        .iter()
        .find_map(|o| match o {
            ClaimOutcome::Replaced { started, replaced } => Some((started, replaced)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no claim reports a replaced run: {outcomes:?}"));
    assert_eq!(replacing.0.id, running[0].id);
    assert_eq!(replacing.1, &vec![replaced[0].id]);
    let leased: Vec<uuid::Uuid> = leases_of(&store).await.into_iter().map(|l| l.0).collect();
    assert_eq!(
        leased,
        vec![running[0].id.as_uuid()],
        "only the running one is leased"
    );
    assert_leases_match_running(&store).await;
}

/// A task of `tenant` under `overlap`, and the outcomes of two manual
/// claims of it that took their snapshots and then queued for its row lock
/// (held meanwhile by this function, then released).
async fn two_claims_behind_a_lock(
    url: &str,
    tenant: &str,
    overlap: Overlap,
) -> (std::sync::Arc<PgStore>, Task, [ClaimOutcome; 2]) {
    // Its own application name, so that only its own sessions are counted
    // below (tests run in parallel in one database).
    let app = format!("race_{}", uuid::Uuid::now_v7().simple());
    let store = std::sync::Arc::new(pg(&common::with_app_name(url, &app)).await);
    let task = task_with_overlap(&store, tenant, overlap).await;
    let mut holder = store.pool().begin().await.expect("begin");
    sqlx::query(&format!(
        "SELECT 1 FROM \"{}\".tasks WHERE id = $1 FOR UPDATE",
        store.schema()
    ))
    .bind(task.id.as_uuid())
    .execute(&mut *holder)
    .await
    .expect("lock the task");
    let waiting = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND application_name = $1",
        )
        .bind(&app)
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_activity");
        n
    };
    let until_waiting = |n: i64| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while waiting().await < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} claims never queued for the lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let claim = |now: i64| {
        let store = store.clone();
        let claim = manual(&task, now);
        tokio::spawn(async move { store.claim(vec![claim]).await.map(|mut o| o.remove(0)) })
    };
    let first = claim(61);
    until_waiting(1).await;
    let second = claim(62);
    until_waiting(2).await;
    holder.commit().await.expect("release the lock");
    let outcomes = [
        first.await.expect("join").expect("claim"),
        second.await.expect("join").expect("claim"),
    ];
    (store, task, outcomes)
}

/// The same race under `skip`: the claim that waited sees the run the
/// other one started and records a skip, rather than a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_sees_a_run_started_by_a_claim_it_waited_for() {
    let Some(url) = common::server_url("skip_sees_a_run_started_by_a_claim_it_waited_for") else {
        return;
    };
    let (store, _, outcomes) = two_claims_behind_a_lock(&url, "skip", Overlap::Skip).await;
    let shapes: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            ClaimOutcome::Started(_) => "started",
            ClaimOutcome::Skipped(_) => "skipped",
            _ => "other",
        })
        .collect();
    assert!(
        shapes == ["started", "skipped"] || shapes == ["skipped", "started"],
        "{outcomes:?}"
    );
    assert_leases_match_running(&store).await;
}

/// A task that lists a running id with no execution behind it (no
/// statement's snapshot will ever show it) has its claim deferred, then
/// made with its tasks locked first, which starts the run and drops the id,
/// whichever policy tracks its runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_id_with_no_execution_does_not_block_claims() {
    let Some(url) = common::server_url("a_running_id_with_no_execution_does_not_block_claims")
    else {
        return;
    };
    let store = pg(&url).await;
    for overlap in [Overlap::Skip, Overlap::QueueOne, Overlap::Replace] {
        claim_past_a_stray_running_id(&store, overlap).await;
    }
}

async fn claim_past_a_stray_running_id(store: &PgStore, overlap: Overlap) {
    let task = task_with_overlap(store, "ghost", overlap).await;
    sqlx::query(&format!(
        "UPDATE \"{}\".tasks SET running = ARRAY[$2::uuid] WHERE id = $1",
        store.schema()
    ))
    .bind(task.id.as_uuid())
    .bind(uuid::Uuid::now_v7())
    .execute(store.pool())
    .await
    .expect("list a ghost");
    let out = store
        .claim(vec![scheduled(&task, 60, 120, 60, &[])])
        .await
        .expect("claim")
        .remove(0);
    assert!(
        matches!(&out, ClaimOutcome::Started(e) if e.scheduled_for == at(60)),
        "{overlap:?}: {out:?}"
    );
    assert_leases_match_running(store).await;
}

/// Recovery's safety net starts a queued occurrence whose task lists only
/// a running id with no execution behind it, and drops the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_starts_a_queue_held_only_by_a_stray_running_id() {
    let Some(url) = common::server_url("recovery_starts_a_queue_held_only_by_a_stray_running_id")
    else {
        return;
    };
    let store = pg(&url).await;
    let task = task_with_overlap(&store, "stray", Overlap::QueueOne).await;
    sqlx::query(&format!(
        "UPDATE \"{}\".tasks SET running = ARRAY[$2::uuid], queued_for = $3,
            queued_attempt = 1, queued_trigger = 'schedule' WHERE id = $1",
        store.schema()
    ))
    .bind(task.id.as_uuid())
    .bind(uuid::Uuid::now_v7())
    .bind(at(60))
    .execute(store.pool())
    .await
    .expect("a queue behind a stray id");
    let out = store
        .recover_expired(at(61), "n", at(91), 10)
        .await
        .expect("recover");
    assert!(out.abandoned.is_empty(), "{out:?}");
    assert_eq!(
        out.started.len(),
        1,
        "the queued occurrence starts: {out:?}"
    );
    assert_eq!(out.started[0].scheduled_for, at(60));
    assert_leases_match_running(&store).await;
}

/// Tasks that run in step do not all trim their history in the same
/// round: each task's phase (its id's last two bytes modulo slack + 1) moves its
/// trigger, and every task keeps between `retention` and `retention + 2 ×
/// slack` executions. Before the phase, the three tasks below trimmed
/// together at round 23 and every third round after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trims_of_tasks_in_step_are_spread() {
    let Some(url) = common::server_url("trims_of_tasks_in_step_are_spread") else {
        return;
    };
    // Retention 20: slack 2, phases 0, 1 and 2.
    let store = PgStore::builder()
        .schema(common::fresh_schema())
        .retention(20)
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect");
    let mut tasks = Vec::new();
    for phase in 0..3u128 {
        let mut task = NewTask::cron("trim", "agent", "* * * * *")
            .validate("trim", tickwheel::store::conformance::t0())
            .expect("valid");
        task.id = tickwheel::TaskId::from_uuid(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0001_0000 | phase,
        ));
        tasks.push(store.create_task(task).await.expect("create"));
    }
    // Round of each task's first trim, and the most executions it held.
    let mut first_trim = [None; 3];
    let mut most = [0; 3];
    for round in 1..=30i64 {
        let now = 60 * round;
        let claims = tasks
            .iter()
            .map(|t| scheduled(t, now, now + 60, now, &[]))
            .collect();
        let outcomes = store.claim(claims).await.expect("claim");
        for outcome in outcomes {
            let e = started(outcome);
            let mut f = finish(&e, ExecutionStatus::Succeeded, now + 1, None);
            f.error = None;
            store.finish(f).await.expect("finish");
        }
        for (i, task) in tasks.iter_mut().enumerate() {
            *task = store.get_task("trim", task.id).await.expect("get");
            let total = store
                .executions("trim", task.id, ExecutionQuery::newest(1))
                .await
                .expect("history")
                .total;
            most[i] = most[i].max(total);
            assert!(
                total >= (round as usize).min(20) && total <= 24,
                "round {round}: task {i} holds {total} executions"
            );
            if total < round as usize && first_trim[i].is_none() {
                first_trim[i] = Some(round);
            }
        }
    }
    assert_eq!(
        first_trim,
        [Some(23), Some(24), Some(25)],
        "each phase trims first at its own round"
    );
    assert_eq!(most, [22, 23, 24], "the most each task held");
}
