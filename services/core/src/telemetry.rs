//! Metrics: one Prometheus recorder per process, rendered by the api at
//! `/metrics`, and by worker processes on `HERALD_METRICS_LISTEN` when set.
//!
//! Names (all prefixed `herald_`):
//! - `dispatches_total{provider,outcome}`, `provider_attempts_total{provider,outcome}`,
//!   `provider_latency_seconds{provider}` (histogram), `dispatch_retries_total{provider}`
//! - `control_apply_seconds{service,replica}` (histogram): publish to apply, per replica
//! - `relay_backlog`: events committed but not yet on JetStream
//! - `consumer_pending{consumer}`, `consumer_ack_pending{consumer}`,
//!   `consumer_redelivered{consumer}`: JetStream consumer state, sampled
//! - `dead_lettered_total{subject}`, `messages_handled_total{consumer,outcome}`
//! - `http_requests_total{method,route,status}`, `http_request_seconds{method,route}`
//! - `transitions_total{action}`, `batches_packed_total`

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets from 1 ms to 30 s, suited to control apply and provider calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global recorder once; later calls return the same handle. Returns
/// `None` if another recorder was installed first (for example by a test).
pub fn install() -> Option<&'static PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Some(handle);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .ok()?
        .install_recorder()
        .ok()?;
    let _ = HANDLE.set(handle);
    let handle = HANDLE.get()?;
    // Histograms need periodic upkeep to drain their buffers.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .ok()?;
    Some(handle)
}

/// The Prometheus text exposition, if a recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

async fn metrics_handler() -> axum::response::Response {
    use axum::response::IntoResponse;
    match render() {
        Some(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// The `/metrics` route, for any axum router.
pub fn metrics_router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route("/metrics", axum::routing::get(metrics_handler))
}

/// Serves `/metrics` (and `/healthz`) on its own address: for worker processes,
/// which have no HTTP server otherwise.
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: crate::CancellationToken,
) -> anyhow::Result<()> {
    let app = metrics_router::<()>().route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
