//! Connections killed mid-run (`CLIENT KILL` from another connection):
//! the stores reconnect, the change feed resubscribes and says `Resync`,
//! and no occurrence is lost or started twice.
//!
//! The only test in its binary: `CLIENT KILL TYPE …` drops every client of
//! the server, and test binaries run one after another.

#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tickwheel::store::Change;
use tickwheel::{Scheduler, Store};
use tickwheel_redis::RedisStore;

use common::{Runs, audit, counting_executor, every_second, single_url, unique_prefix};

const TASKS: usize = 200;
const SECONDS: i64 = 10;

async fn kill_clients(url: &str) -> i64 {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("killer connection");
    let mut killed = 0;
    for kind in ["normal", "pubsub"] {
        killed += redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query_async::<i64>(&mut conn)
            .await
            .expect("CLIENT KILL");
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing_and_start_nothing_twice() {
    let Some(url) = single_url() else {
        return;
    };
    let prefix = unique_prefix("reconnect");
    let connect = || async {
        RedisStore::builder()
            .prefix(&prefix)
            .retention(100)
            .connect(&url)
            .await
            .expect("connect to the server")
    };
    let admin = connect().await;
    let tenant = "reconnect";
    let ids = every_second(&admin, tenant, TASKS).await;
    let runs = Runs::default();
    let mut schedulers = Vec::new();
    let mut feed = None;
    for i in 0..2 {
        let store = connect().await;
        if i == 0 {
            feed = Some(store.subscribe().await.expect("subscribe"));
        }
        let store: Arc<dyn Store> = Arc::new(store);
        schedulers.push(
            Scheduler::builder(store, counting_executor(runs.clone()))
                .node_id(format!("node-{i}"))
                .start(),
        );
    }
    let mut feed = feed.expect("a feed");
    let start = common::window_start(2);
    let end = start + TimeDelta::seconds(SECONDS);
    // Kill everything three times during the window: twice just after a
    // whole second, when the claims of that second and their finishes are
    // in flight, once in between.
    for offset_ms in [2_002, 4_650, 7_005] {
        let at = start + TimeDelta::milliseconds(offset_ms);
        tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
        let killed = kill_clients(&url).await;
        assert!(killed > 0, "nothing to kill at +{offset_ms} ms");
        // The feed noticed: it resubscribed and asks for a rescan.
        let resync = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match feed.next().await {
                    Some(Change::Resync) => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await;
        assert_eq!(
            resync,
            Ok(true),
            "a Resync after the kill at +{offset_ms} ms"
        );
    }
    common::wait_for_runs(&runs, &ids, start, end, Duration::from_secs(40)).await;
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
