//! Every endpoint and every error code, through `oneshot`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use serde_json::{Value, json};
use tickwheel::TaskId;

const TASKS: &str = "/api/v1/scheduled_tasks";

fn task_uri(task: &Value) -> String {
    format!("{TASKS}/{}", task["id"].as_str().unwrap())
}

#[tokio::test]
async fn create_returns_the_task_with_defaults() {
    let api = Api::new();
    let t = api
        .create(ACME, &cron_body("nightly report", "0 9 * * MON-FRI"))
        .await;
    assert_eq!(t["task_id"], t["id"]);
    assert!(t["id"].as_str().unwrap().parse::<TaskId>().is_ok());
    assert_eq!(t["tenant"], "acme");
    assert_eq!(t["name"], "nightly report");
    assert_eq!(t["description"], "");
    assert_eq!(t["prompt"], "");
    assert_eq!(t["timezone"], "UTC");
    assert_eq!(t["enabled"], true);
    assert_eq!(t["status"], "active");
    assert_eq!(t["version"], 1);
    assert_eq!(t["run_at"], Value::Null);
    assert_eq!(t["policy"]["misfire"], "fire_once");
    assert_eq!(t["policy"]["max_retries"], 0);
    // 2030-01-01 is a Tuesday.
    assert_eq!(t["next_run"], "2030-01-01T09:00:00Z");
    assert_eq!(t["created_at"], "2030-01-01T00:00:00Z");

    let got = api.get(&task_uri(&t), ACME_READ).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, t);
}

#[tokio::test]
async fn create_accepts_the_field_names_existing_clients_send() {
    let api = Api::new();
    let t = api
        .create(
            ACME,
            &json!({
                "name": "legacy",
                "selected_agent": "writer",
                "task_description": "write the summary",
                "cron_string": "30 2 * * *",
                "scheduled_time": "0001-01-01T00:00:00Z",
                "timezone": "America/New_York",
                "some_field_we_do_not_know": {"nested": [1, 2, 3]},
            })
            .to_string(),
        )
        .await;
    assert_eq!(t["agent"], "writer");
    assert_eq!(t["prompt"], "write the summary");
    assert_eq!(t["schedule"], "30 2 * * *");
    assert_eq!(t["run_at"], Value::Null, "the zero time means none");
    assert_eq!(t["next_run"], "2030-01-01T07:30:00Z");
    assert!(t.get("some_field_we_do_not_know").is_none());

    // An empty cron string means a one-time task.
    let once = api
        .create(
            ACME,
            &json!({
                "name": "once", "selected_agent": "a", "cron_string": "",
                "schedule_time": "2030-06-01T12:00:00+02:00",
            })
            .to_string(),
        )
        .await;
    assert_eq!(once["schedule"], Value::Null);
    assert_eq!(once["run_at"], "2030-06-01T10:00:00Z");
    assert_eq!(once["next_run"], "2030-06-01T10:00:00Z");

    // Neither a schedule nor a time.
    let a = api
        .post(
            TASKS,
            ACME,
            &json!({"name": "n", "agent": "a", "cron_string": "", "scheduled_time": "0001-01-01T00:00:00Z"})
                .to_string(),
        )
        .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "schedule");
}

#[tokio::test]
async fn create_rejects_bad_input_naming_the_field() {
    let api = Api::new();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"agent": "a", "schedule": "* * * * *"}),
            "invalid_field",
            "name",
        ),
        (
            json!({"name": " ", "agent": "a", "schedule": "* * * * *"}),
            "invalid_field",
            "name",
        ),
        (
            json!({"name": "n", "schedule": "* * * * *"}),
            "invalid_field",
            "agent",
        ),
        (
            json!({"name": "x".repeat(201), "agent": "a", "schedule": "* * * * *"}),
            "invalid_field",
            "name",
        ),
        (
            json!({"name": "n", "agent": "a"}),
            "invalid_field",
            "schedule",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "run_at": "2030-01-01T00:00:00Z"}),
            "invalid_field",
            "schedule",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "61 * * * *"}),
            "invalid_schedule",
            "\"61\"",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * MOM"}),
            "invalid_schedule",
            "day-of-week",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "0 0 30 2 *"}),
            "invalid_schedule",
            "never fire",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "timezone": "Mars/Olympus"}),
            "invalid_schedule",
            "timezone",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "run_at": "tomorrow"}),
            "invalid_field",
            "run_at",
        ),
        (
            json!({"name": 5, "agent": "a", "schedule": "* * * * *"}),
            "invalid_field",
            "name",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "enabled": "yes"}),
            "invalid_field",
            "enabled",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "policy": {"max_retries": -1}}),
            "invalid_field",
            "policy.max_retries",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "policy": {"max_retries": 1000}}),
            "invalid_field",
            "policy.max_retries",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "policy": {"misfire": "sometimes"}}),
            "invalid_field",
            "policy.misfire",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "policy": {"jitter_ms": 1e30}}),
            "invalid_field",
            "policy.jitter_ms",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "notification": {"method": "Pigeon", "destination": "x"}}),
            "invalid_field",
            "notification.method",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "notification": {"method": "Http", "destination": "ftp://x"}}),
            "invalid_field",
            "notification.destination",
        ),
        (
            json!({"name": "n", "agent": "a", "schedule": "* * * * *", "channel_id": "has space"}),
            "invalid_field",
            "channel_id",
        ),
        (
            json!({"name": "a\u{0}b", "agent": "a", "schedule": "@daily"}),
            "invalid_field",
            "NUL",
        ),
        (json!([1, 2]), "invalid_field", "request body"),
        (json!("text"), "invalid_field", "request body"),
    ];
    for (body, code, needle) in cases {
        let a = api.post(TASKS, ACME, &body.to_string()).await;
        assert_error(&a, StatusCode::BAD_REQUEST, code, needle);
    }
    // The cron token is in the details.
    let a = api.post(TASKS, ACME, &cron_body("n", "*/0 * * * *")).await;
    assert_eq!(a.body["error"]["details"]["token"], "*/0", "{a:?}");
    assert_eq!(a.body["error"]["details"]["field"], "schedule");
    // Nothing was stored.
    let list = api.get(TASKS, ACME).await;
    assert_eq!(list.body, json!([]));
}

#[tokio::test]
async fn malformed_bodies_are_400_never_500() {
    let api = Api::new();
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested_obj = format!(
        "{}{}",
        "{\"a\":".repeat(5_000),
        "1".to_owned() + &"}".repeat(5_000)
    );
    let huge_number = format!(
        "{{\"name\":\"n\",\"agent\":\"a\",\"schedule\":\"* * * * *\",\"policy\":{{\"timeout_ms\":{}}}}}",
        "9".repeat(400)
    );
    let bodies: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"".to_vec(),
        b"not json".to_vec(),
        b"{\"name\": \"n\",}".to_vec(),
        b"{} trailing".to_vec(),
        deep.into_bytes(),
        nested_obj.into_bytes(),
        huge_number.into_bytes(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        b"{\"name\":\"\\ud800\",\"agent\":\"a\",\"schedule\":\"* * * * *\"}".to_vec(),
    ];
    for body in bodies {
        let request = Request::post(TASKS)
            .header("authorization", format!("UserKey {ACME}"))
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))
            .unwrap();
        let a = api.send(request).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{:?} -> {a:?}",
            String::from_utf8_lossy(&body)
        );
        let code = a.body["error"]["code"].as_str().unwrap();
        assert!(code == "invalid_json" || code == "invalid_field", "{a:?}");
    }
}

#[tokio::test]
async fn strings_are_stored_and_returned_verbatim() {
    let api = Api::new();
    let nasty = "'; DROP TABLE tasks; -- \" \\ \u{0007} \u{001b}[31m redis.call('FLUSHALL') ${x} %s {{}} \u{202e} 日本";
    let t = api
        .create(
            ACME,
            &json!({"name": nasty, "agent": nasty, "description": nasty, "prompt": nasty,
                    "schedule": "@daily", "channel_id": "#ops"})
            .to_string(),
        )
        .await;
    let got = api.get(&task_uri(&t), ACME).await.body;
    for field in ["name", "agent", "description", "prompt"] {
        assert_eq!(got[field], nasty, "{field}");
    }
}

#[tokio::test]
async fn list_is_oldest_first_with_keyset_paging() {
    let api = Api::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        let t = api
            .create(ACME, &cron_body(&format!("t{i}"), "@hourly"))
            .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    api.create(GLOBEX, &cron_body("other tenant", "@hourly"))
        .await;

    let all = api.get(TASKS, ACME_READ).await;
    assert_eq!(all.status, StatusCode::OK);
    let got: Vec<&str> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    assert!(
        all.headers.get("link").is_none(),
        "a short page has no next link"
    );

    let mut seen = Vec::new();
    let mut uri = format!("{TASKS}?limit=3");
    loop {
        let page = api.get(&uri, ACME).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let items = page.body.as_array().unwrap().clone();
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page.headers.get("link") {
            Some(link) => {
                let link = link.to_str().unwrap();
                let next = link.split(['<', '>']).nth(1).unwrap();
                assert!(next.starts_with("?limit=3&after="), "{link}");
                uri = format!("{TASKS}{next}");
            }
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let after = api.get(&format!("{TASKS}?after={}", ids[4]), ACME).await;
    assert_eq!(after.body.as_array().unwrap().len(), 2);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "after=not-an-id",
    ] {
        let a = api.get(&format!("{TASKS}?{bad}"), ACME).await;
        assert_error(
            &a,
            StatusCode::BAD_REQUEST,
            "invalid_query",
            bad.split('=').next().unwrap(),
        );
    }
}

#[tokio::test]
async fn get_unknown_malformed_or_foreign_task_is_404() {
    let api = Api::new();
    let t = api.create(ACME, &cron_body("mine", "@hourly")).await;
    for uri in [
        format!("{TASKS}/{}", TaskId::new()),
        format!("{TASKS}/not-a-uuid"),
        format!("{TASKS}/%00%ff"),
    ] {
        assert_error(
            &api.get(&uri, ACME).await,
            StatusCode::NOT_FOUND,
            "not_found",
            "not found",
        );
    }
    let foreign = api.get(&task_uri(&t), GLOBEX).await;
    assert_error(&foreign, StatusCode::NOT_FOUND, "not_found", "not found");
    // The same answer as for an id that never existed (no existence leak),
    // apart from the id itself.
    let unknown = api.get(&format!("{TASKS}/{}", TaskId::new()), GLOBEX).await;
    assert_eq!(foreign.body["error"]["code"], unknown.body["error"]["code"]);
}

#[tokio::test]
async fn update_changes_only_the_fields_given() {
    let api = Api::new();
    let t = api
        .create(
            ACME,
            &json!({"name": "n", "agent": "a", "schedule": "0 9 * * *", "description": "d",
                    "channel_id": "#ops", "policy": {"max_retries": 3, "jitter_ms": 500}})
            .to_string(),
        )
        .await;
    let uri = task_uri(&t);

    let a = api.put(&uri, ACME, r#"{"name": "renamed"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let u = a.body;
    assert_eq!(u["name"], "renamed");
    assert_eq!(u["version"], 2);
    for same in [
        "agent",
        "schedule",
        "description",
        "channel_id",
        "policy",
        "next_run",
        "created_at",
    ] {
        assert_eq!(u[same], t[same], "{same}");
    }

    // Policy fields merge; null clears a nullable field.
    let u = api
        .put(
            &uri,
            ACME,
            r#"{"policy": {"overlap": "skip"}, "channel_id": null}"#,
        )
        .await
        .body;
    assert_eq!(u["policy"]["overlap"], "skip");
    assert_eq!(u["policy"]["max_retries"], 3);
    assert_eq!(u["policy"]["jitter_ms"], 500);
    assert_eq!(u["channel_id"], Value::Null);

    // A new schedule recomputes next_run; aliases work here too.
    let u = api
        .put(&uri, ACME, r#"{"cron_string": "30 10 * * *"}"#)
        .await
        .body;
    assert_eq!(u["schedule"], "30 10 * * *");
    assert_eq!(u["next_run"], "2030-01-01T10:30:00Z");
    let u = api
        .put(&uri, ACME, r#"{"timezone": "Asia/Tokyo"}"#)
        .await
        .body;
    assert_eq!(u["next_run"], "2030-01-01T01:30:00Z");

    // Pause and resume.
    let u = api.put(&uri, ACME, r#"{"enabled": false}"#).await.body;
    assert_eq!(u["status"], "paused");
    assert_eq!(u["enabled"], false);
    let u = api.put(&uri, ACME, r#"{"enabled": true}"#).await.body;
    assert_eq!(u["status"], "active");

    // Switch to one-time and back.
    let u = api
        .put(
            &uri,
            ACME,
            r#"{"cron_string": "", "scheduled_time": "2030-03-01T00:00:00Z"}"#,
        )
        .await
        .body;
    assert_eq!(u["schedule"], Value::Null);
    assert_eq!(u["next_run"], "2030-03-01T00:00:00Z");

    // An empty body changes nothing but is accepted.
    let before = api.get(&uri, ACME).await.body;
    let same = api.put(&uri, ACME, "{}").await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.body["name"], before["name"]);

    // Invalid updates are 400 and change nothing.
    for (body, code, needle) in [
        (
            r#"{"schedule": "bad cron"}"#,
            "invalid_schedule",
            "schedule",
        ),
        (r#"{"name": ""}"#, "invalid_field", "name"),
        (
            r#"{"policy": {"retry_backoff_ms": 0}}"#,
            "invalid_field",
            "policy.retry_backoff_ms",
        ),
        (
            r#"{"run_at": null, "schedule": null}"#,
            "invalid_field",
            "schedule",
        ),
        (r#"{"enabled": 1}"#, "invalid_field", "enabled"),
    ] {
        let a = api.put(&uri, ACME, body).await;
        assert_error(&a, StatusCode::BAD_REQUEST, code, needle);
    }
    let after = api.get(&uri, ACME).await.body;
    assert_eq!(after["version"], api.get(&uri, ACME).await.body["version"]);
    assert_eq!(after["schedule"], Value::Null);
}

#[tokio::test]
async fn update_with_a_stale_version_is_409() {
    let api = Api::new();
    let t = api.create(ACME, &cron_body("n", "@hourly")).await;
    let uri = task_uri(&t);
    let ok = api.put(&uri, ACME, r#"{"name": "v2", "version": 1}"#).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    let stale = api.put(&uri, ACME, r#"{"name": "v3", "version": 1}"#).await;
    assert_error(&stale, StatusCode::CONFLICT, "conflict", "version");

    let request = |etag: &str| {
        Request::put(&uri)
            .header("authorization", format!("UserKey {ACME}"))
            .header("content-type", "application/json")
            .header("if-match", etag)
            .body(Body::from(r#"{"name": "v3"}"#))
            .unwrap()
    };
    assert_eq!(
        api.send(request("\"1\"")).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(api.send(request("\"2\"")).await.status, StatusCode::OK);
    assert_error(
        &api.send(request("abc")).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        "If-Match",
    );
}

#[tokio::test]
async fn delete_answers_200_with_an_empty_body() {
    let api = Api::new();
    let t = api.create(ACME, &cron_body("n", "@hourly")).await;
    let uri = task_uri(&t);
    assert_error(
        &api.delete(&uri, GLOBEX).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
    assert_error(
        &api.delete(&uri, ACME_READ).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "read-only",
    );
    let a = api.delete(&uri, ACME).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.raw.is_empty(), "{a:?}");
    assert_error(
        &api.get(&uri, ACME).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
    assert_error(
        &api.delete(&uri, ACME).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
}

#[tokio::test]
async fn run_starts_a_manual_execution_and_history_shows_it() {
    let mut api = Api::new();
    let t = api.create(ACME, &cron_body("n", "0 0 1 1 *")).await;
    let uri = task_uri(&t);

    let a = api.post(&format!("{uri}/run"), ACME, "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert_eq!(a.body["trigger"], "manual");
    assert_eq!(a.body["status"], "running");
    assert_eq!(a.body["task_id"], t["id"]);
    let run = api.next_run().await;
    assert_eq!(run.execution.id.to_string(), a.body["id"].as_str().unwrap());

    // The history shows it once the run is recorded.
    let history = format!("{uri}/executions");
    let mut page = Value::Null;
    for _ in 0..500 {
        page = api.get(&history, ACME_READ).await.body;
        if page["executions"][0]["status"] == "succeeded" {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["limit"], 50);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["executions"][0]["status"], "succeeded", "{page}");
    assert_eq!(page["executions"][0]["output"], "done");

    assert_error(
        &api.post(&format!("{uri}/run"), ACME_READ, "").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "write",
    );
    assert_error(
        &api.post(&format!("{uri}/run"), GLOBEX, "").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
    assert_error(
        &api.post(&format!("{TASKS}/{}/run", TaskId::new()), ACME, "")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
}

#[tokio::test]
async fn run_without_a_scheduler_is_503() {
    let api = Api::without_scheduler();
    let t = api.create(ACME, &cron_body("n", "@hourly")).await;
    let a = api.post(&format!("{}/run", task_uri(&t)), ACME, "").await;
    assert_error(
        &a,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "scheduler",
    );
}

#[tokio::test]
async fn executions_page_and_filter() {
    let mut api = Api::new();
    let t = api
        .create(
            ACME,
            &json!({"name": "n", "agent": "a", "schedule": "* * * * * *"}).to_string(),
        )
        .await;
    let uri = task_uri(&t);
    // Five scheduled occurrences, one per manual-clock second.
    for _ in 0..5 {
        api.clock.advance(Duration::from_secs(1));
        api.next_run().await;
    }
    let history = format!("{uri}/executions");
    let mut page = Value::Null;
    for _ in 0..500 {
        page = api
            .get(&format!("{history}?status=succeeded"), ACME)
            .await
            .body;
        if page["total"] == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(page["total"], 5, "{page}");
    let two = api
        .get(&format!("{history}?limit=2&offset=1"), ACME)
        .await
        .body;
    assert_eq!(two["executions"].as_array().unwrap().len(), 2);
    assert_eq!(two["limit"], 2);
    assert_eq!(two["offset"], 1);
    assert_eq!(
        two["executions"][0]["id"], page["executions"][1]["id"],
        "newest first"
    );
    let none = api
        .get(&format!("{history}?status=failed"), ACME)
        .await
        .body;
    assert_eq!(none["total"], 0);
    assert_eq!(none["executions"], json!([]));

    assert_error(
        &api.get(&format!("{history}?status=exploded"), ACME).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "status",
    );
    assert_error(
        &api.get(&format!("{history}?limit=x"), ACME).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "limit",
    );
    assert_error(
        &api.get(&history, GLOBEX).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
}

#[tokio::test]
async fn a_schedule_change_reaches_the_engine_at_once() {
    let mut api = Api::new();
    let t = api.create(ACME, &cron_body("n", "0 0 1 1 *")).await;
    let a = api
        .put(&task_uri(&t), ACME, r#"{"schedule": "* * * * * *"}"#)
        .await;
    assert_eq!(a.body["next_run"], "2030-01-01T00:00:01Z");
    api.clock.advance(Duration::from_secs(1));
    let run = api.next_run().await;
    assert_eq!(
        run.execution.scheduled_for.to_rfc3339(),
        "2030-01-01T00:00:01+00:00"
    );
    // Paused: nothing fires.
    api.put(&task_uri(&t), ACME, r#"{"enabled": false}"#).await;
    api.clock.advance(Duration::from_secs(3));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), api.runs.recv())
            .await
            .is_err(),
        "a paused task ran"
    );
}

#[tokio::test]
async fn preview_lists_the_next_fire_times() {
    let api = Api::new();
    let a = api
        .post(
            "/api/v1/schedules/preview",
            ACME_READ,
            r#"{"schedule": "0 9 * * MON-FRI", "timezone": "America/New_York", "from": "2030-03-08T00:00:00Z", "count": 3}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    // Friday in EST, then Monday and Tuesday after the switch to EDT.
    assert_eq!(
        a.body,
        json!({"next": ["2030-03-08T14:00:00Z", "2030-03-11T13:00:00Z", "2030-03-12T13:00:00Z"]})
    );
    let a = api
        .post(
            "/api/v1/schedules/preview",
            ACME,
            r#"{"cron_string": "@hourly"}"#,
        )
        .await;
    assert_eq!(a.body["next"].as_array().unwrap().len(), 5, "default count");
    assert_eq!(
        a.body["next"][0], "2030-01-01T01:00:00Z",
        "default from is now"
    );
    for (body, code, needle) in [
        (
            r#"{"schedule": "@hourly", "count": 101}"#,
            "invalid_field",
            "count",
        ),
        (
            r#"{"schedule": "@hourly", "count": 0}"#,
            "invalid_field",
            "count",
        ),
        (r#"{}"#, "invalid_field", "schedule"),
        (r#"{"schedule": "* * *"}"#, "invalid_schedule", "5 fields"),
        (
            r#"{"schedule": "@hourly", "timezone": "Nowhere"}"#,
            "invalid_schedule",
            "timezone",
        ),
        (
            r#"{"schedule": "@hourly", "from": "yesterday"}"#,
            "invalid_field",
            "from",
        ),
    ] {
        let a = api.post("/api/v1/schedules/preview", ACME, body).await;
        assert_error(&a, StatusCode::BAD_REQUEST, code, needle);
    }
}

#[tokio::test]
async fn openapi_document_covers_every_endpoint() {
    let api = Api::new();
    let a = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.body["openapi"], "3.1.0");
    let paths = a.body["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/scheduled_tasks", &["get", "post"][..]),
        (
            "/api/v1/scheduled_tasks/{taskId}",
            &["get", "put", "delete"][..],
        ),
        ("/api/v1/scheduled_tasks/{taskId}/executions", &["get"][..]),
        ("/api/v1/scheduled_tasks/{taskId}/run", &["post"][..]),
        ("/api/v1/schedules/preview", &["post"][..]),
        ("/api/v1/openapi.json", &["get"][..]),
    ] {
        for m in methods {
            assert!(paths[path].get(*m).is_some(), "{m} {path} missing");
        }
    }
    let schemas = a.body["components"]["schemas"].as_object().unwrap();
    for name in [
        "Task",
        "Execution",
        "CreateTaskRequest",
        "UpdateTaskRequest",
        "Policy",
        "ErrorBody",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert!(a.body["components"]["securitySchemes"]["user_key"].is_object());
}

#[tokio::test]
async fn auth_401_and_403() {
    let api = Api::new();
    let t = api.create(ACME, &cron_body("n", "@hourly")).await;
    let uri = task_uri(&t);
    // Missing, malformed, unknown.
    let missing = api.call(Method::GET, TASKS, None, None).await;
    assert_error(
        &missing,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authorization",
    );
    assert_eq!(missing.headers["www-authenticate"], "UserKey");
    for header in [
        "Bearer acme-write-key",
        "UserKey",
        "acme-write-key",
        "UserKey wrong-key",
        "UserKey acme-write-key-but-longer",
    ] {
        let request = Request::get(TASKS)
            .header("authorization", header)
            .body(Body::empty())
            .unwrap();
        let a = api.send(request).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized", "");
        assert!(
            !String::from_utf8_lossy(&a.raw).contains("acme-write-key"),
            "a key was echoed: {a:?}"
        );
    }
    // A read key reads but does not write.
    assert_eq!(api.get(&uri, ACME_READ).await.status, StatusCode::OK);
    assert_error(
        &api.post(TASKS, ACME_READ, &cron_body("n", "@daily")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "read-only",
    );
    assert_error(
        &api.put(&uri, ACME_READ, "{}").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "read-only",
    );
    // 401 comes before 403, which comes before anything about the body.
    let a = api.call(Method::POST, TASKS, None, Some("not json")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = api.post(TASKS, ACME_READ, "not json").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn another_tenants_task_is_invisible_through_every_endpoint() {
    let api = Api::new();
    let t = api.create(ACME, &cron_body("secret", "@hourly")).await;
    let uri = task_uri(&t);
    let answers = [
        api.get(&uri, GLOBEX).await,
        api.put(&uri, GLOBEX, r#"{"name": "pwned"}"#).await,
        api.delete(&uri, GLOBEX).await,
        api.get(&format!("{uri}/executions"), GLOBEX).await,
        api.post(&format!("{uri}/run"), GLOBEX, "").await,
    ];
    for a in answers {
        assert_error(&a, StatusCode::NOT_FOUND, "not_found", "not found");
    }
    assert_eq!(api.get(TASKS, GLOBEX).await.body, json!([]));
    let still = api.get(&uri, ACME).await.body;
    assert_eq!(still["name"], "secret");
    assert_eq!(still["version"], 1);
}

#[tokio::test]
async fn body_size_and_content_type() {
    let api = Api::new();
    let big =
        json!({"name": "n", "agent": "a", "schedule": "@daily", "prompt": "x".repeat(300 * 1024)})
            .to_string();
    let a = api.post(TASKS, ACME, &big).await;
    assert_error(
        &a,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "256",
    );
    // Also when the length is not declared up front (chunked).
    let stream = futures_stream(big.into_bytes());
    let request = Request::post(TASKS)
        .header("authorization", format!("UserKey {ACME}"))
        .header("content-type", "application/json")
        .body(stream)
        .unwrap();
    assert_error(
        &api.send(request).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "256",
    );
    // Just under the limit is fine (and the prompt limit of 64 KiB answers).
    let under =
        json!({"name": "n", "agent": "a", "schedule": "@daily", "prompt": "x".repeat(200 * 1024)})
            .to_string();
    assert_error(
        &api.post(TASKS, ACME, &under).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        "prompt",
    );

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let mut request = Request::post(TASKS).header("authorization", format!("UserKey {ACME}"));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let a = api
            .send(request.body(Body::from(cron_body("n", "@daily"))).unwrap())
            .await;
        assert_error(
            &a,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        );
    }
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ] {
        let request = Request::post(TASKS)
            .header("authorization", format!("UserKey {ACME}"))
            .header("content-type", content_type)
            .body(Body::from(cron_body("n", "@daily")))
            .unwrap();
        assert_eq!(
            api.send(request).await.status,
            StatusCode::OK,
            "{content_type}"
        );
    }
}

/// A body with no declared length, sent in 8 KiB chunks.
fn futures_stream(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(futures::stream::iter(chunks))
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let api = Api::new();
    let a = api.call(Method::PATCH, TASKS, Some(ACME), Some("{}")).await;
    assert_error(
        &a,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method",
    );
}

#[tokio::test]
async fn router_nests_under_a_host_prefix_next_to_host_routes() {
    let api = Api::new();
    let app: axum::Router = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .nest("/scheduler", api.app.clone());
    use tower::ServiceExt;
    let health = app
        .clone()
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let list = app
        .oneshot(
            Request::get("/scheduler/api/v1/scheduled_tasks")
                .header("authorization", format!("UserKey {ACME}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
}
