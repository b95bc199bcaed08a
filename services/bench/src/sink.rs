//! The provider stand-in: a minimal axum server that accepts every POST, counts it
//! by idempotency key and answers `200 {"id": "m<hex>"}` (a message id, as a
//! real provider gives).
//!
//! It is kept as cheap as possible because it shares the machine with everything
//! it measures: no body parsing, no per-request allocation beyond the key's
//! recipient id in a sharded set, and atomics for the totals that the pause
//! scenario reads (request count and the start time of the latest request).
//! A sink started with [`Sink::start_logged`] also keeps every request's start
//! time, for the rate scenario's sliding windows.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use herald_core::CancellationToken;

const SHARDS: usize = 32;

#[derive(Debug)]
struct SinkState {
    epoch: Instant,
    delay: Duration,
    total: AtomicU64,
    duplicates: AtomicU64,
    /// Nanoseconds after `epoch` at which the latest request started (0: none yet).
    last_start_ns: AtomicU64,
    seen: Vec<Mutex<HashSet<u64>>>,
    /// Every request's start, ns after `epoch`, when logging (one lock per request:
    /// only for the throttled scenarios, never for throughput).
    starts: Option<Mutex<Vec<u64>>>,
}

/// A running sink. Cheap to clone; stops when the last [`Sink::stop`] is called.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Where to POST (`http://127.0.0.1:<port>/send`).
    pub url: String,
    state: Arc<SinkState>,
    shutdown: CancellationToken,
}

/// Herald's keys are `herald-<campaign>-<recipient id>`; recipient ids are unique in a
/// database, so the id alone identifies the recipient. Anything else is hashed.
fn key_of(headers: &HeaderMap) -> u64 {
    let raw = headers
        .get("idempotency-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let tail = raw.rsplit(|b| *b == b'-').next().unwrap_or_default();
    match std::str::from_utf8(tail)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
    {
        Some(id) => id,
        None => {
            let mut hasher = DefaultHasher::new();
            raw.hash(&mut hasher);
            hasher.finish() | (1 << 63)
        }
    }
}

async fn accept(
    State(state): State<Arc<SinkState>>,
    headers: HeaderMap,
    // Read the body so the connection stays reusable (keep-alive).
    _body: axum::body::Bytes,
) -> impl IntoResponse {
    let started = state.epoch.elapsed().as_nanos() as u64;
    state
        .last_start_ns
        .fetch_max(started.max(1), Ordering::Relaxed);
    state.total.fetch_add(1, Ordering::Relaxed);
    if let Some(starts) = &state.starts {
        starts.lock().expect("sink start log lock").push(started);
    }
    let key = key_of(&headers);
    let fresh = state.seen[(key as usize) % SHARDS]
        .lock()
        .expect("sink shard lock")
        .insert(key);
    if !fresh {
        state.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    // A message id, as real providers answer: the sender records it for
    // delivery receipts (provider_messages), which a sink answering `{}` would
    // leave out of every throughput figure.
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"id\":\"m{key:x}\"}}"),
    )
}

impl Sink {
    /// Starts a sink on a free loopback port that answers after `delay`.
    pub async fn start(delay: Duration) -> anyhow::Result<Self> {
        Self::start_with(delay, false).await
    }

    /// The same, also logging every request's start time ([`Sink::start_times`]).
    pub async fn start_logged(delay: Duration) -> anyhow::Result<Self> {
        Self::start_with(delay, true).await
    }

    async fn start_with(delay: Duration, log: bool) -> anyhow::Result<Self> {
        let state = Arc::new(SinkState {
            epoch: Instant::now(),
            delay,
            total: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            last_start_ns: AtomicU64::new(0),
            seen: (0..SHARDS).map(|_| Mutex::new(HashSet::new())).collect(),
            starts: log.then(|| Mutex::new(Vec::new())),
        });
        let app = axum::Router::new()
            .route("/send", post(accept))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(signal.cancelled_owned())
                .await;
        });
        Ok(Self {
            url: format!("http://{addr}/send"),
            state,
            shutdown,
        })
    }

    /// Requests received so far (retries included).
    pub fn total(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    /// Requests that repeated an idempotency key already seen.
    pub fn duplicates(&self) -> u64 {
        self.state.duplicates.load(Ordering::Relaxed)
    }

    /// Distinct idempotency keys seen.
    pub fn distinct(&self) -> u64 {
        self.total() - self.duplicates()
    }

    /// When the latest request started, if any did.
    pub fn last_start(&self) -> Option<Instant> {
        match self.state.last_start_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.state.epoch + Duration::from_nanos(ns)),
        }
    }

    /// Every request's start time, sorted (empty unless started with
    /// [`Sink::start_logged`]).
    pub fn start_times(&self) -> Vec<Instant> {
        let Some(starts) = &self.state.starts else {
            return Vec::new();
        };
        let mut ns = starts.lock().expect("sink start log lock").clone();
        ns.sort_unstable();
        ns.into_iter()
            .map(|ns| self.state.epoch + Duration::from_nanos(ns))
            .collect()
    }

    /// The webhook channel of a campaign that sends here.
    pub fn webhook_channel(&self) -> serde_json::Value {
        serde_json::json!({"provider": "webhook", "url": self.url})
    }

    /// Waits until no request arrived for `quiet`, or `limit` passed. Returns the
    /// total at that point.
    pub async fn wait_quiet(&self, quiet: Duration, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        let step = (quiet / 5).max(Duration::from_millis(2));
        let mut last = self.total();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(step).await;
            let now = self.total();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet || Instant::now() >= deadline {
                return now;
            }
            if Instant::now() >= deadline {
                return now;
            }
        }
    }

    /// Waits until at least `count` requests arrived, or `limit` passed.
    pub async fn wait_for_total(&self, count: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.total() < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_keys_count_by_recipient_id_and_others_by_hash() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            "herald-0b0e6c8e-2d4c-4b7e-9d4a-1a2b3c4d5e6f-42"
                .parse()
                .unwrap(),
        );
        assert_eq!(key_of(&headers), 42);
        headers.insert("idempotency-key", "something-else".parse().unwrap());
        assert!(key_of(&headers) >= 1 << 63);
    }
}
