//! Random JSON bodies (random keys, types and values, biased toward the
//! API's own field names) thrown at create, update and preview: the answer
//! is never a 5xx, and a 200 always holds a valid task.
//!
//! Case count: `PROPTEST_CASES` (default 256).

mod common;

use axum::http::StatusCode;
use common::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const FIELDS: &[&str] = &[
    "name",
    "description",
    "agent",
    "prompt",
    "schedule",
    "run_at",
    "timezone",
    "enabled",
    "channel_id",
    "notification",
    "policy",
    "cron_string",
    "selected_agent",
    "task_description",
    "schedule_time",
    "scheduled_time",
    "version",
    "method",
    "destination",
    "misfire",
    "overlap",
    "max_retries",
    "retry_backoff_ms",
    "timeout_ms",
    "jitter_ms",
    "count",
    "from",
    "id",
    "tenant",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "* * * * *",
    "*/5 * * * * *",
    "0 9 * * MON-FRI",
    "@daily",
    "@reboot",
    "61 * * * *",
    "0 0 30 2 *",
    "L W # ?",
    "UTC",
    "Europe/London",
    "Mars/Olympus",
    "2030-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "-000001-01-01T00:00:00Z",
    "Http",
    "Slack",
    "http://127.0.0.1:1/x",
    "skip",
    "catch_up",
    "queue_one",
    "'; DROP TABLE t; --",
    "\u{0}",
    "\u{7f}\u{1b}",
    "日本語",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(STRINGS).prop_map(|s| json!(s)),
        ".{0,40}".prop_map(Value::String),
    ]
}

fn value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                object(inner),
            ]
        })
        .boxed()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

fn object(inner: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), inner), 0..10)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
}

/// A valid create body with one to three fields replaced or added, so
/// the cases reach validation past the first missing field.
fn mutated() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), value()), 1..4).prop_map(|changes| {
        let mut body = json!({"name": "n", "agent": "a", "schedule": "@daily"});
        for (k, v) in changes {
            body[k] = v;
        }
        body
    })
}

/// A body: usually an object, sometimes anything at all.
fn body() -> impl Strategy<Value = Value> {
    prop_oneof![3 => mutated(), 3 => object(value()), 1 => value()]
}

fn check(a: &Answer) -> Result<(), TestCaseError> {
    prop_assert!(a.status.as_u16() < 500, "{a:?}");
    if a.status != StatusCode::OK {
        prop_assert!(a.body["error"]["code"].is_string(), "{a:?}");
        prop_assert!(a.body["error"]["message"].is_string(), "{a:?}");
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_bodies_never_get_a_5xx(create in body(), update in body(), preview in body()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let api = Api::without_scheduler();
            let a = api.post("/api/v1/scheduled_tasks", ACME, &create.to_string()).await;
            check(&a)?;
            if a.status == StatusCode::OK {
                prop_assert!(a.body["name"].as_str().is_some_and(|n| !n.trim().is_empty()));
                prop_assert!(a.body["schedule"].is_string() || a.body["run_at"].is_string());
            }
            let task = api.create(ACME, &cron_body("target", "@hourly")).await;
            let uri = format!("/api/v1/scheduled_tasks/{}", task["id"].as_str().unwrap());
            let a = api.put(&uri, ACME, &update.to_string()).await;
            check(&a)?;
            let after = api.get(&uri, ACME).await;
            prop_assert_eq!(after.status, StatusCode::OK);
            if a.status != StatusCode::OK {
                prop_assert_eq!(&after.body, &task, "a failed update changed the task");
            }
            let a = api.post("/api/v1/schedules/preview", ACME, &preview.to_string()).await;
            check(&a)?;
            Ok(())
        })?;
    }
}
