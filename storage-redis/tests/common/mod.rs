//! Shared by the Redis tests: the servers come from the environment
//! (`scripts/test.sh` starts them, see `scripts/services/redis.sh`).

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
