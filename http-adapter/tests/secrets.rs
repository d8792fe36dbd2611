//! API keys never reach logs or answers: every request below runs with all
//! tracing output (down to TRACE, axum and tower-http included) captured,
//! and neither the captured logs nor the bodies contain a key.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use tower::ServiceExt;
use tower_http::trace::{DefaultMakeSpan, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn keys_never_appear_in_logs_or_bodies() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let api = Api::new();
    // The router as the example server wraps it: request tracing included.
    let app = api.app.clone().layer(
        TraceLayer::new_for_http()
            .make_span_with(
                DefaultMakeSpan::new()
                    .level(Level::INFO)
                    .include_headers(false),
            )
            .on_request(DefaultOnRequest::new().level(Level::INFO))
            .on_response(DefaultOnResponse::new().level(Level::INFO)),
    );
    let wrong = "wrong-key-0123456789";
    let mut bodies = Vec::new();
    let requests = [
        (
            ACME,
            "POST",
            "/api/v1/scheduled_tasks",
            cron_body("n", "@daily"),
        ),
        (
            ACME,
            "POST",
            "/api/v1/scheduled_tasks",
            cron_body("n", "* * * * MOM"),
        ),
        (
            ACME,
            "POST",
            "/api/v1/scheduled_tasks",
            "{broken".to_owned(),
        ),
        (
            ACME_READ,
            "POST",
            "/api/v1/scheduled_tasks",
            cron_body("n", "@daily"),
        ),
        (wrong, "GET", "/api/v1/scheduled_tasks", String::new()),
        (
            GLOBEX,
            "GET",
            "/api/v1/scheduled_tasks/not-an-id",
            String::new(),
        ),
        (ACME, "DELETE", "/api/v1/scheduled_tasks", String::new()),
    ];
    for (key, method, uri, body) in requests {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("UserKey {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        bodies.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("task created"), "the capture works: {logs}");
    for key in [ACME, ACME_READ, GLOBEX, wrong] {
        assert!(!logs.contains(key), "key {key} in the logs:\n{logs}");
        for body in &bodies {
            assert!(!body.contains(key), "key {key} in a body: {body}");
        }
    }
}
