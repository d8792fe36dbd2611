//! Three schedulers on one PostgreSQL database, each with its own store and
//! pool: 500 tasks firing every second for 20 s on the real clock; every
//! occurrence in the window starts exactly once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tickwheel::store::ExecutionQuery;
use tickwheel::{ExecutionStatus, NewTask, Schedule, Scheduler, Store, TaskId, executor_fn};
use tickwheel_postgres::PgStore;

const TASKS: usize = 500;
const WINDOW_S: i64 = 20;
const NODES: usize = 3;

type Runs = Arc<Mutex<HashMap<(TaskId, DateTime<Utc>), usize>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_schedulers_start_each_occurrence_once() {
    let Some(url) = common::server_url("three_schedulers_start_each_occurrence_once") else {
        return;
    };
    let schema = common::fresh_schema();
    let mut stores = Vec::new();
    for _ in 0..NODES {
        let store = PgStore::builder()
            .schema(&schema)
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect");
        stores.push(store);
    }
    let now = Utc::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            NewTask::cron(format!("cluster {i}"), "noop", "* * * * * *")
                .validate("cluster", now)
                .expect("valid")
        })
        .collect();
    let ids: Vec<TaskId> = stores[0]
        .create_tasks(tasks)
        .await
        .expect("create")
        .iter()
        .map(|t| t.id)
        .collect();

    let runs: Runs = Arc::default();
    let schedulers: Vec<Scheduler> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let runs = runs.clone();
            let executor = executor_fn(move |run| {
                let runs = runs.clone();
                async move {
                    let key = (run.execution.task_id, run.execution.scheduled_for);
                    *runs.lock().unwrap().entry(key).or_default() += 1;
                    Ok(None)
                }
            });
            // node-0 claims everything (no affinity) while the other two
            // split the tasks, so every occurrence is raced for by two.
            Scheduler::builder(Arc::new(store.clone()), executor)
                .node_id(format!("node-{i}"))
                .affinity(i != 0)
                .start()
        })
        .collect();

    // The window starts at the second whole second from now; its length is
    // the run itself, on the real clock.
    let start = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).expect("time");
    let end = start + TimeDelta::seconds(WINDOW_S);
    tokio::time::sleep((end - Utc::now()).to_std().unwrap_or_default()).await;

    // Wait (bounded) until every occurrence of the window has finished.
    let schedule = Schedule::parse("* * * * * *", "UTC").expect("schedule");
    let due: Vec<DateTime<Utc>> = schedule
        .upcoming(start - TimeDelta::seconds(1))
        .take_while(|t| *t < end)
        .collect();
    assert_eq!(due.len(), WINDOW_S as usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = runs
            .lock()
            .unwrap()
            .keys()
            .filter(|(_, at)| *at >= start && *at < end)
            .count();
        if done >= TASKS * due.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of {} occurrences ran",
            TASKS * due.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in schedulers {
        s.shutdown(Duration::from_secs(5)).await;
    }

    let runs = runs.lock().unwrap().clone();
    let mut by_node: HashMap<String, usize> = HashMap::new();
    for &id in &ids {
        let history = stores[1]
            .executions("cluster", id, ExecutionQuery::newest(10_000))
            .await
            .expect("history")
            .executions;
        let mut times: Vec<DateTime<Utc>> = history
            .iter()
            .filter(|e| e.scheduled_for >= start && e.scheduled_for < end)
            .map(|e| {
                assert_eq!(e.status, ExecutionStatus::Succeeded, "execution={e:?}");
                *by_node.entry(e.node.clone()).or_default() += 1;
                e.scheduled_for
            })
            .collect();
        times.sort();
        assert_eq!(times, due, "task={id}: each occurrence recorded once");
        for at in &due {
            assert_eq!(
                runs.get(&(id, *at)),
                Some(&1),
                "task={id} occurrence={at}: run exactly once"
            );
        }
    }
    assert_eq!(by_node.values().sum::<usize>(), TASKS * due.len());
    eprintln!("runs per node: {by_node:?}");
}
