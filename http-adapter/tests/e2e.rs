//! The example server as a process: start it on a free port, create a task
//! firing every second through the API, and see it run (in the history and
//! at an HTTP notification endpoint), then stop it with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const KEY: &str = "e2e-write-key";

/// Kills the server if the test fails half-way.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example_binary() -> std::path::PathBuf {
    // target/<profile>/deps/e2e-… → target/<profile>/examples/server
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir
        .join("examples")
        .join(format!("server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; run `cargo build -p tickwheel-http --example server`",
        path.display()
    );
    path
}

fn start_server() -> Server {
    let mut child = Command::new(example_binary())
        .env("TICKWHEEL_BIND", "127.0.0.1:0")
        .env("TICKWHEEL_API_KEYS", format!("{KEY}:e2e:write"))
        .env("TICKWHEEL_NODE_ID", "e2e-node")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening on ") {
                let base = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(base);
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server prints `listening on http://ADDR` within 30 s");
    Server { child, base }
}

async fn call(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("UserKey {KEY}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("request");
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_server_runs_a_task_every_second() {
    // A collector for the Http notifications.
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Value>();
    let collector = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<Value>| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let mut server = start_server();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let tasks = format!("{}/api/v1/scheduled_tasks", server.base);

    let (status, task) = call(
        &client,
        "POST",
        &tasks,
        Some(json!({
            "name": "every second",
            "agent": "e2e",
            "schedule": "* * * * * *",
            "notification": {"method": "Http", "destination": hook},
        })),
    )
    .await;
    assert_eq!(status, 200, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();

    // Two succeeded executions in the history, within 15 s.
    let history = format!("{tasks}/{id}/executions?status=succeeded");
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let (status, page) = call(&client, "GET", &history, None).await;
        assert_eq!(status, 200, "{page}");
        if page["total"].as_u64().unwrap_or(0) >= 2 {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 2 succeeded runs in 15 s: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let runs = page["executions"].as_array().unwrap();
    assert!(
        runs.iter()
            .all(|e| e["node"] == "e2e-node" && e["trigger"] == "schedule")
    );
    assert_ne!(runs[0]["scheduled_for"], runs[1]["scheduled_for"]);

    // The notification endpoint received the runs.
    let first = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    assert_eq!(first["task_id"], id.as_str());
    assert_eq!(first["agent"], "e2e");

    // SIGTERM: a clean exit.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop within 40 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}
