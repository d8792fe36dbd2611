//! Shared by the PostgreSQL store's tests: the server URL and fresh schemas.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;

use tickwheel_postgres::PgStore;

/// The server the tests use: `TICKWHEEL_TEST_POSTGRES_URL` (set by
/// `scripts/test.sh`). Unset: a failure under `CI=true`, else a printed skip.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var("TICKWHEEL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "TICKWHEEL_TEST_POSTGRES_URL is not set and CI=true: the PostgreSQL tests must run"
                );
            }
            eprintln!(
                "SKIPPED {test}: TICKWHEEL_TEST_POSTGRES_URL is not set (scripts/test.sh starts a server)"
            );
            None
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::now_v7().simple())
}

/// A future of a store in a fresh schema with retention 5 (as the memory
/// store's conformance run), or `None` when the tests are skipped.
pub fn conformance_store() -> Option<impl Future<Output = PgStore>> {
    let url = server_url("conformance")?;
    Some(async move {
        PgStore::builder()
            .schema(fresh_schema())
            .retention(5)
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect to the test server")
    })
}
