//! An HTTP sink shaped like an SMS or push provider: it accepts `POST /` (any path) with a JSON
//! body, records the request, and answers `200 {"id": …}`. Tests can make it fail the next N
//! requests (503) or all of them, slow down, or answer that device tokens are unregistered.
//! It deduplicates by the body's `message_id` the way a real provider does with an idempotency
//! key: a resend of an accepted message is answered with the original id and not counted twice.
//! In webhook mode ([`HttpSink::start_webhook_receiver`]) it plays a merchant's webhook endpoint
//! instead: any body is accepted (200), and each request keeps its raw body and headers so that
//! a test can verify signatures.

use axum::Json;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received (recorded on arrival, before any delay).
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub body: Value,
    /// The body exactly as received.
    pub raw: Vec<u8>,
    /// Every header (lower-case names; the last value of repeated ones).
    pub headers: HashMap<String, String>,
    pub at: Instant,
}

impl ReceivedRequest {
    pub fn message_id(&self) -> Option<&str> {
        self.body["message_id"].as_str()
    }
}

#[derive(Default)]
struct Sink {
    received: Mutex<Vec<ReceivedRequest>>,
    accepted: Mutex<HashMap<String, String>>,
    unregistered: Mutex<HashSet<String>>,
    fail_next: AtomicU32,
    fail_always: AtomicBool,
    webhook_mode: AtomicBool,
    unregister_all: AtomicBool,
    delay_ms: AtomicU64,
    counter: AtomicU64,
}

/// A running HTTP sink (stops when the last clone is dropped).
#[derive(Clone)]
pub struct HttpSink {
    /// `http://127.0.0.1:<port>/send`
    pub url: String,
    sink: Arc<Sink>,
    task: Arc<tokio::task::AbortHandle>,
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn handle(
    AxState(s): AxState<Arc<Sink>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let raw = body.to_vec();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let req = ReceivedRequest {
        path: uri.path().to_owned(),
        authorization: h("authorization"),
        idempotency_key: h("idempotency-key"),
        body: body.clone(),
        raw,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        at: Instant::now(),
    };
    if let Ok(mut r) = s.received.lock() {
        r.push(req);
    }
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if s.fail_always.load(Ordering::SeqCst)
        || s.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "unavailable"})),
        )
            .into_response();
    }
    if s.webhook_mode.load(Ordering::SeqCst) {
        return (StatusCode::OK, Json(json!({"received": true}))).into_response();
    }
    if s.unregister_all.load(Ordering::SeqCst) {
        return (StatusCode::GONE, Json(json!({"error": "unregistered"}))).into_response();
    }
    let Some(message_id) = body["message_id"].as_str().map(str::to_owned) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "message_id required"})),
        )
            .into_response();
    };
    let dead: Vec<String> = match (body["tokens"].as_array(), s.unregistered.lock()) {
        (Some(tokens), Ok(set)) => tokens
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| set.contains(*t))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let id = match s.accepted.lock() {
        Ok(mut acc) => acc
            .entry(message_id)
            .or_insert_with(|| format!("prov_{}", s.counter.fetch_add(1, Ordering::SeqCst) + 1))
            .clone(),
        Err(_) => "prov_x".to_owned(),
    };
    (
        StatusCode::OK,
        Json(json!({"id": id, "unregistered": dead})),
    )
        .into_response()
}

impl HttpSink {
    /// A merchant's webhook endpoint: accepts any request with 200 (until told to fail).
    pub async fn start_webhook_receiver() -> HttpSink {
        let sink = HttpSink::start().await;
        sink.sink.webhook_mode.store(true, Ordering::SeqCst);
        sink
    }

    pub async fn start() -> HttpSink {
        let sink = Arc::new(Sink::default());
        let app = axum::Router::new()
            .fallback(axum::routing::any(handle))
            .with_state(sink.clone());
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("binding the HTTP sink: {e}"),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpSink {
            url: format!("http://127.0.0.1:{port}/send"),
            sink,
            task: Arc::new(task.abort_handle()),
        }
    }

    /// Every request received, in arrival order (failed ones too).
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.sink
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Distinct message ids the sink accepted (what a person would actually receive).
    pub fn accepted_ids(&self) -> HashSet<String> {
        self.sink
            .accepted
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Answers 503 to the next `n` requests.
    pub fn fail_next(&self, n: u32) {
        self.sink.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answers 503 to every request while `on`.
    pub fn fail_always(&self, on: bool) {
        self.sink.fail_always.store(on, Ordering::SeqCst);
    }

    /// Waits this long before answering each request.
    pub fn delay(&self, d: Duration) {
        self.sink.delay_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Reports `token` as unregistered (in the `unregistered` list of a 200).
    pub fn unregister(&self, token: &str) {
        if let Ok(mut s) = self.sink.unregistered.lock() {
            s.insert(token.to_owned());
        }
    }

    /// Answers 410 `{"error": "unregistered"}` to everything while `on`.
    pub fn unregister_all(&self, on: bool) {
        self.sink.unregister_all.store(on, Ordering::SeqCst);
    }

    /// Waits until at least `n` distinct messages were accepted.
    pub async fn wait_for_accepted(&self, n: usize, timeout: Duration) -> HashSet<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let a = self.accepted_ids();
            if a.len() >= n || tokio::time::Instant::now() >= deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<ReceivedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.received();
            if r.len() >= n || tokio::time::Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
