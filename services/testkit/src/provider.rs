//! The provider double: a real local HTTP server standing in for the message
//! provider. It records every request with its start time and answers as the
//! test scripts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub idempotency_key: String,
    pub recipient_id: i64,
    pub body: Value,
    pub headers: HeaderMap,
    pub started: Instant,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// 1 for the first request with this idempotency key, 2 for the second, ...
    pub attempt: u32,
}

/// How the double answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    Status(u16),
    RetryAfter(u16, u64),
    /// Accept, but only answer after this long (the sender times out first).
    Hang(Duration),
}

type Script = dyn Fn(&RecordedRequest) -> Reply + Send + Sync;

struct DoubleState {
    requests: Mutex<Vec<RecordedRequest>>,
    attempts: Mutex<HashMap<String, u32>>,
    /// When each answer was sent, in order.
    answered: Mutex<Vec<Instant>>,
    delay: Duration,
    script: Box<Script>,
}

#[derive(Clone)]
pub struct ProviderDouble {
    pub url: String,
    state: Arc<DoubleState>,
    shutdown: tokio_util_free::Shutdown,
}

impl std::fmt::Debug for ProviderDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderDouble")
            .field("url", &self.url)
            .finish()
    }
}

mod tokio_util_free {
    use std::sync::Arc;
    use tokio::sync::Notify;

    /// A tiny one-shot shutdown signal for the double's server.
    #[derive(Clone, Default)]
    pub struct Shutdown(pub Arc<Notify>);
}

async fn handle(
    State(state): State<Arc<DoubleState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let attempt = {
        let mut attempts = state.attempts.lock().expect("lock");
        let n = attempts.entry(idempotency_key.clone()).or_default();
        *n += 1;
        *n
    };
    let request = RecordedRequest {
        recipient_id: body["recipient_id"].as_i64().unwrap_or(-1),
        idempotency_key,
        body,
        headers,
        started,
        started_at: chrono::Utc::now(),
        attempt,
    };
    let reply = (state.script)(&request);
    let id = format!("msg-{}-{}", request.recipient_id, request.attempt);
    state.requests.lock().expect("lock").push(request);
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let response = answer(reply, id).await;
    state.answered.lock().expect("lock").push(Instant::now());
    response
}

async fn answer(reply: Reply, id: String) -> Response {
    match reply {
        Reply::Ok => (StatusCode::OK, axum::Json(serde_json::json!({ "id": id }))).into_response(),
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "scripted failure",
        )
            .into_response(),
        Reply::RetryAfter(code, seconds) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            [("retry-after", seconds.to_string())],
            "slow down",
        )
            .into_response(),
        Reply::Hang(wait) => {
            tokio::time::sleep(wait).await;
            (StatusCode::OK, axum::Json(serde_json::json!({ "id": id }))).into_response()
        }
    }
}

impl ProviderDouble {
    /// A double that accepts everything after `delay`.
    pub async fn start(delay: Duration) -> Self {
        Self::scripted(delay, |_| Reply::Ok).await
    }

    pub async fn scripted(
        delay: Duration,
        script: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let state = Arc::new(DoubleState {
            requests: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            answered: Mutex::new(Vec::new()),
            delay,
            script: Box::new(script),
        });
        let app = axum::Router::new()
            .route("/send", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind double");
        let addr = listener.local_addr().expect("addr");
        let shutdown = tokio_util_free::Shutdown::default();
        let signal = shutdown.0.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.notified().await })
                .await;
        });
        Self {
            url: format!("http://{addr}/send"),
            state,
            shutdown,
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// How many recorded requests match `filter`, counted under the lock
    /// without copying them (cheap enough to poll while the double is busy).
    pub fn count_matching(&self, filter: impl Fn(&RecordedRequest) -> bool) -> usize {
        self.state
            .requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| filter(r))
            .count()
    }

    /// The start times of the recorded requests that match `filter`, without
    /// copying the requests.
    pub fn starts_matching(&self, filter: impl Fn(&RecordedRequest) -> bool) -> Vec<Instant> {
        self.state
            .requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| filter(r))
            .map(|r| r.started)
            .collect()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// When each answer left the double (after its delay), in order; a request
    /// still waiting for its answer is not here yet.
    pub fn answered(&self) -> Vec<Instant> {
        self.state.answered.lock().expect("lock").clone()
    }

    /// How many requests each idempotency key received.
    pub fn per_key(&self) -> HashMap<String, u32> {
        self.state.attempts.lock().expect("lock").clone()
    }

    pub fn webhook_channel(&self) -> Value {
        serde_json::json!({"provider": "webhook", "url": self.url})
    }

    pub fn stop(&self) {
        self.shutdown.0.notify_waiters();
    }
}
