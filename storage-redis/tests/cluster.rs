//! Three schedulers, each with its own connection, share one store on the
//! 3-master Redis Cluster: 500 tasks firing every second for 20 s of real
//! time, and every occurrence is started exactly once.

#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use tickwheel::{Scheduler, Store};
use tickwheel_redis::RedisStore;

use common::{Runs, audit, cluster_urls, counting_executor, every_second, unique_prefix};

const TASKS: usize = 500;
const SECONDS: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_start_each_occurrence_once() {
    let Some(urls) = cluster_urls() else {
        return;
    };
    let prefix = unique_prefix("schedulers");
    let connect = || async {
        RedisStore::builder()
            .prefix(&prefix)
            .retention(100)
            .connect_cluster(&urls)
            .await
            .expect("connect to the cluster")
    };
    let admin = connect().await;
    let tenant = "schedulers";
    let ids = every_second(&admin, tenant, TASKS).await;
    let runs = Runs::default();
    let mut schedulers = Vec::new();
    for i in 0..3 {
        let store: Arc<dyn Store> = Arc::new(connect().await);
        schedulers.push(
            // node-0 claims everything (no affinity) while the other two
            // split the tasks, so every occurrence is raced for by two.
            Scheduler::builder(store, counting_executor(runs.clone()))
                .node_id(format!("node-{i}"))
                .affinity(i != 0)
                .start(),
        );
    }
    let start = common::window_start(2);
    let end = start + TimeDelta::seconds(SECONDS);
    common::wait_for_runs(
        &runs,
        &ids,
        start,
        end,
        Duration::from_secs(SECONDS as u64 + 30),
    )
    .await;
    for s in schedulers {
        s.shutdown(Duration::from_secs(5)).await;
    }
    let problems = audit(&admin, tenant, &ids, start, end, &runs).await;
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}
