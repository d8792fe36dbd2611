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

/// `url` with an `application_name`, so a test can find (and terminate)
/// exactly its own connections in `pg_stat_activity`.
pub fn with_app_name(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

/// Terminates every backend whose application name is `name`; returns how many.
pub async fn terminate_backends(url: &str, name: &str) -> i64 {
    let admin = PgStore::builder()
        .schema(fresh_schema())
        .migrate(false)
        .max_connections(1)
        .connect(url)
        .await
        .expect("admin connection");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_one(admin.pool())
    .await
    .expect("terminate backends");
    admin.pool().close().await;
    n
}
