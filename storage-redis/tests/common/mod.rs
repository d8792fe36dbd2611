//! Shared by the Redis tests: the servers come from the environment
//! (`scripts/test.sh` starts them, see `scripts/services/redis.sh`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tickwheel::store::ExecutionQuery;
use tickwheel::{ExecutionStatus, Executor, NewTask, Store, TaskId, executor_fn};
use tickwheel_redis::RedisStore;

pub(crate) const SINGLE_VAR: &str = "TICKWHEEL_TEST_REDIS_URL";
pub(crate) const CLUSTER_VAR: &str = "TICKWHEEL_TEST_REDIS_CLUSTER_URLS";

/// The value of `var`; without it the test fails under `CI=true` and is
/// skipped (with a line saying so) otherwise.
pub(crate) fn env_or_skip(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{var} is not set and CI=true: the Redis tests need the servers scripts/test.sh starts"
                );
            }
            eprintln!("SKIPPED: {var} is not set (scripts/test.sh starts Redis and sets it)");
            None
        }
    }
}

/// A key prefix no other test uses.
pub(crate) fn unique_prefix(what: &str) -> String {
    format!("test-{what}-{}", uuid::Uuid::now_v7().simple())
}

/// The single-server URL, or `None` (skip).
pub(crate) fn single_url() -> Option<String> {
    env_or_skip(SINGLE_VAR)
}

/// The cluster's node URLs, or `None` (skip).
pub(crate) fn cluster_urls() -> Option<Vec<String>> {
    env_or_skip(CLUSTER_VAR).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// A store on the single server with its own prefix.
pub(crate) async fn single_store(prefix: &str, retention: usize) -> Option<RedisStore> {
    let url = single_url()?;
    Some(
        RedisStore::builder()
            .prefix(prefix)
            .retention(retention)
            .connect(&url)
            .await
            .expect("connect to the test Redis server"),
    )
}

/// A store on the cluster with its own prefix.
pub(crate) async fn cluster_store(prefix: &str, retention: usize) -> Option<RedisStore> {
    let urls = cluster_urls()?;
    Some(
        RedisStore::builder()
            .prefix(prefix)
            .retention(retention)
            .connect_cluster(&urls)
            .await
            .expect("connect to the test Redis cluster"),
    )
}

/// How many times each `(task, occurrence)` reached the executor.
pub(crate) type Runs = Arc<Mutex<HashMap<(TaskId, DateTime<Utc>), usize>>>;

/// An executor that counts its runs in `runs` and succeeds.
pub(crate) fn counting_executor(runs: Runs) -> impl Executor {
    executor_fn(move |run| {
        let runs = runs.clone();
        async move {
            *runs
                .lock()
                .unwrap()
                .entry((run.task.id, run.execution.scheduled_for))
                .or_default() += 1;
            Ok(None)
        }
    })
}

/// `count` tasks firing every second for `tenant`.
pub(crate) async fn every_second(store: &dyn Store, tenant: &str, count: usize) -> Vec<TaskId> {
    let now = Utc::now();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let task = NewTask::cron(format!("t{i}"), "agent", "* * * * * *")
            .validate(tenant, now)
            .expect("valid task");
        ids.push(store.create_task(task).await.expect("create").id);
    }
    ids
}

/// The whole second at least `lead` seconds from now.
pub(crate) fn window_start(lead: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() + lead, 0).expect("valid time")
}

/// The occurrences of an every-second task in `[start, end)`.
pub(crate) fn occurrences(start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let n = (end - start).num_seconds();
    (0..n).map(|s| start + TimeDelta::seconds(s)).collect()
}

/// Waits (up to `timeout`) until every occurrence in `[start, end)` of
/// every task has reached the executor.
pub(crate) async fn wait_for_runs(
    runs: &Runs,
    ids: &[TaskId],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    timeout: Duration,
) {
    let expected = occurrences(start, end);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let missing = {
            let runs = runs.lock().unwrap();
            ids.iter()
                .flat_map(|id| expected.iter().map(move |t| (*id, *t)))
                .filter(|key| !runs.contains_key(key))
                .count()
        };
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} occurrences never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every occurrence in `[start, end)` of every task: started exactly once
/// according to the history (one execution, `succeeded`) and run exactly
/// once by the executors. Returns the problems found.
pub(crate) async fn audit(
    store: &dyn Store,
    tenant: &str,
    ids: &[TaskId],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    runs: &Runs,
) -> Vec<String> {
    let expected = occurrences(start, end);
    let runs = runs.lock().unwrap().clone();
    let mut problems = Vec::new();
    for &id in ids {
        let history = store
            .executions(tenant, id, ExecutionQuery::newest(10_000))
            .await
            .expect("history")
            .executions;
        let mut seen: HashMap<DateTime<Utc>, Vec<ExecutionStatus>> = HashMap::new();
        for e in history
            .iter()
            .filter(|e| e.scheduled_for >= start && e.scheduled_for < end)
        {
            seen.entry(e.scheduled_for).or_default().push(e.status);
        }
        for t in &expected {
            match seen.get(t).map(Vec::as_slice) {
                Some([ExecutionStatus::Succeeded]) => {}
                other => problems.push(format!("task {id} at {t}: history {other:?}")),
            }
            let ran = runs.get(&(id, *t)).copied().unwrap_or(0);
            if ran != 1 {
                problems.push(format!("task {id} at {t}: ran {ran} times"));
            }
        }
    }
    problems
}
