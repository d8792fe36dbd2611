//! Losing the database connections mid-run: the engines see `Unavailable`,
//! back off, and carry on when connections come back; a node whose pool is
//! closed is replaced by a new one. Nothing committed is lost, nothing runs
//! twice. Also: the change feed reconnects and asks for a rescan.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tickwheel::store::{Change, ExecutionQuery};
use tickwheel::{
    Error, ExecutionStatus, NewTask, Schedule, Scheduler, Store, TaskId, TaskPatch, executor_fn,
};
use tickwheel_postgres::PgStore;

const TASKS: usize = 50;
const WINDOW_S: i64 = 12;

type Runs = Arc<Mutex<HashMap<(TaskId, DateTime<Utc>), usize>>>;

async fn store(url: &str, schema: &str) -> PgStore {
    PgStore::builder()
        .schema(schema)
        .max_connections(4)
        .connect(url)
        .await
        .expect("connect")
}

fn scheduler(store: &PgStore, node: &str, runs: &Runs) -> Scheduler {
    let runs = runs.clone();
    let executor = executor_fn(move |run| {
        let runs = runs.clone();
        async move {
            let key = (run.execution.task_id, run.execution.scheduled_for);
            *runs.lock().unwrap().entry(key).or_default() += 1;
            Ok(None)
        }
    });
    Scheduler::builder(Arc::new(store.clone()), executor)
        .node_id(node)
        .lease(Duration::from_secs(2))
        .start()
}

async fn sleep_until(t: DateTime<Utc>) {
    tokio::time::sleep((t - Utc::now()).to_std().unwrap_or_default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_connections_and_a_closed_pool_lose_nothing() {
    let Some(url) = common::server_url("lost_connections_and_a_closed_pool_lose_nothing") else {
        return;
    };
    let schema = common::fresh_schema();
    let app = format!("tw_restart_{}", uuid::Uuid::now_v7().simple());
    let url_a = common::with_app_name(&url, &app);
    let store_a = store(&url_a, &schema).await;
    let store_b = store(&url, &schema).await;
    let now = Utc::now();
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let task = NewTask::cron(format!("restart {i}"), "noop", "* * * * * *")
            .validate("restart", now)
            .expect("valid");
        ids.push(store_b.create_task(task).await.expect("create").id);
    }
    let runs: Runs = Arc::default();
    let a = scheduler(&store_a, "a", &runs);
    let b = scheduler(&store_b, "b", &runs);
    let start = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).expect("time");
    let end = start + TimeDelta::seconds(WINDOW_S);

    // Every connection of node a (pool and change-feed listener) is killed.
    sleep_until(start + TimeDelta::seconds(3)).await;
    let killed = common::terminate_backends(&url, &app).await;
    assert!(killed >= 1, "node a had connections to terminate");

    // Node a's pool is closed mid-run; a new store and scheduler take its place.
    sleep_until(start + TimeDelta::seconds(6)).await;
    store_a.pool().close().await;
    let a_report = a.shutdown(Duration::from_secs(1)).await;
    let store_a2 = store(&url, &schema).await;
    let a2 = scheduler(&store_a2, "a2", &runs);
    assert!(
        matches!(
            store_a.get_task("restart", ids[0]).await,
            Err(Error::Unavailable { .. })
        ),
        "a closed pool is Unavailable"
    );

    sleep_until(end).await;
    let schedule = Schedule::parse("* * * * * *", "UTC").expect("schedule");
    let due: Vec<DateTime<Utc>> = schedule
        .upcoming(start - TimeDelta::seconds(1))
        .take_while(|t| *t < end)
        .collect();
    // Wait (bounded) until no execution of the window is left running: runs
    // whose result node a could not record are recovered once their lease
    // (2 s) expires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let histories = loop {
        let mut histories = Vec::new();
        let mut running = 0;
        for &id in &ids {
            let h = store_b
                .executions("restart", id, ExecutionQuery::newest(10_000))
                .await
                .expect("history")
                .executions;
            running += h
                .iter()
                .filter(|e| e.status == ExecutionStatus::Running && e.scheduled_for < end)
                .count();
            histories.push(h);
        }
        if running == 0 {
            break histories;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} executions still running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    a2.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;

    let runs = runs.lock().unwrap().clone();
    let mut abandoned = 0;
    for (id, history) in ids.iter().zip(&histories) {
        let mut times: Vec<DateTime<Utc>> = history
            .iter()
            .filter(|e| e.scheduled_for >= start && e.scheduled_for < end)
            .map(|e| {
                assert!(
                    matches!(
                        e.status,
                        ExecutionStatus::Succeeded | ExecutionStatus::Abandoned
                    ),
                    "execution={e:?}"
                );
                if e.status == ExecutionStatus::Abandoned {
                    abandoned += 1;
                } else {
                    assert_eq!(runs.get(&(*id, e.scheduled_for)), Some(&1), "{e:?}");
                }
                e.scheduled_for
            })
            .collect();
        times.sort();
        assert_eq!(times, due, "task={id}: each occurrence started once");
        for at in &due {
            assert!(
                runs.get(&(*id, *at)).is_none_or(|n| *n <= 1),
                "task={id} occurrence={at} ran twice"
            );
        }
    }
    eprintln!(
        "terminated {killed} connections; node a's shutdown: {a_report:?}; {abandoned} runs abandoned"
    );
}

async fn next(feed: &mut tickwheel::store::ChangeFeed, within: Duration) -> Change {
    tokio::time::timeout(within, feed.next())
        .await
        .expect("a change in time")
        .expect("feed open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_reconnects_and_asks_for_a_rescan() {
    let Some(url) = common::server_url("change_feed_reconnects_and_asks_for_a_rescan") else {
        return;
    };
    let schema = common::fresh_schema();
    let app = format!("tw_feed_{}", uuid::Uuid::now_v7().simple());
    let listener = store(&common::with_app_name(&url, &app), &schema).await;
    let writer = store(&url, &schema).await;
    let mut feed = listener.subscribe().await.expect("subscribe");

    // A write through another store (another node) arrives within a second.
    let task = NewTask::cron("feed", "agent", "* * * * *")
        .validate("feed", Utc::now())
        .expect("valid");
    let task = writer.create_task(task).await.expect("create");
    match next(&mut feed, Duration::from_secs(1)).await {
        Change::Upserted { task_id, .. } => assert_eq!(task_id, task.id),
        other => panic!("expected the create, got {other:?}"),
    }

    common::terminate_backends(&url, &app).await;
    assert_eq!(
        next(&mut feed, Duration::from_secs(10)).await,
        Change::Resync,
        "a reconnect asks for a rescan"
    );
    let patch = TaskPatch {
        name: Some("renamed".into()),
        ..TaskPatch::default()
    };
    writer
        .update_task("feed", task.id, &patch, None, Utc::now())
        .await
        .expect("update");
    match next(&mut feed, Duration::from_secs(1)).await {
        Change::Upserted {
            task_id, version, ..
        } => assert_eq!((task_id, version), (task.id, 2)),
        other => panic!("expected the update, got {other:?}"),
    }
}
