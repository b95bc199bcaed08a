//! Request observability: a span per request carrying the campaign id and the
//! caller's correlation id (so every log line of a request has both), and the
//! `herald_http_requests_total` / `herald_http_request_seconds` metrics.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

/// The campaign id in `/v1/campaigns/{id}/...`, if any.
fn campaign_in_path(path: &str) -> Option<Uuid> {
    path.strip_prefix("/v1/campaigns/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The path as logged: the token of a receipts URL is a credential, so
/// `/v1/receipts/{channel_id}/{token}...` keeps the channel and masks the rest.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix("/v1/receipts/") {
        Some(rest) => {
            let channel = rest.split('/').next().unwrap_or("");
            format!("/v1/receipts/{channel}/***").into()
        }
        None => path.into(),
    }
}

pub fn request_span(request: &axum::http::Request<Body>) -> tracing::Span {
    let correlation = request
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or("");
    let campaign = campaign_in_path(request.uri().path())
        .map(|id| id.to_string())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %loggable_path(request.uri().path()),
        campaign_id = %campaign,
        correlation_id = %correlation,
    )
}

pub async fn track_http(request: Request, next: Next) -> Response {
    // The route template, not the raw path, keeps the label set small.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_tokens_never_reach_the_log() {
        let path = "/v1/receipts/0b0e5a4e-1111-4c4c-8888-123456789abc/s3cr3t/messages-update";
        let logged = loggable_path(path);
        assert!(!logged.contains("s3cr3t"), "{logged}");
        assert!(logged.contains("0b0e5a4e-1111-4c4c-8888-123456789abc"));
        assert_eq!(loggable_path("/v1/campaigns"), "/v1/campaigns");
    }

    #[test]
    fn campaign_ids_are_read_from_campaign_paths_only() {
        let id = Uuid::new_v4();
        assert_eq!(
            campaign_in_path(&format!("/v1/campaigns/{id}/pause")),
            Some(id)
        );
        assert_eq!(campaign_in_path("/v1/campaigns/bulk/pause"), None);
        assert_eq!(campaign_in_path("/healthz"), None);
    }
}
