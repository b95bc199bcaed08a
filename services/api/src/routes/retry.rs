//! `POST /v1/campaigns/{id}/retry`: re-open a campaign's failed recipients by
//! scope (`failed` or `transient`, narrowed by `reasons`), through the one
//! transition function (`retry` in the lifecycle table; `herald_core::retry`).

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use herald_core::lifecycle::Action;
use herald_core::retry::{RetryScope, RetrySelection};
use herald_core::transitions::{TransitionDetail, TransitionRequest};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthTenant, IfMatch, RequestCorrelation};
use crate::state::AppState;
use crate::views::CampaignView;

/// Which failed recipients to send again.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// `transient`: failures that may succeed later (`retries_exhausted`:
    /// timeouts, 5xx, 408, 429 that used up their attempts). `failed`: every
    /// failure reason (`template_error`, `provider_rejected`,
    /// `retries_exhausted`), and `bounced` only when `reasons` names it.
    pub scope: RetryScope,
    /// Narrows the scope to these reason codes (at least one). A code the
    /// scope does not cover is a 422.
    #[serde(default)]
    #[schema(value_type = Option<Vec<herald_core::reason::Reason>>, min_items = 1)]
    pub reasons: Option<Vec<String>>,
}

/// The campaign after the retry, and how many recipients it re-opened.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetryResult {
    /// Failed recipients moved back to pending.
    pub reopened: i64,
    pub campaign: CampaignView,
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/retry",
    params(("id" = Uuid, Path),
           ("If-Match" = Option<i64>, Header, nullable = false, description = "expected campaign version"),
           ("X-Correlation-Id" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the caller's id for this request; recorded on its events and carried on the bus (400 when malformed)")),
    request_body = RetryRequest,
    responses((status = 200, description = "The matching failed recipients are pending again: a completed campaign is sending them, a paused one sends them on resume", body = RetryResult,
               headers(("ETag" = String, description = "The campaign's new version, quoted"))),
              (status = 400, body = ErrorBody),
              (status = 404, description = "No such campaign for this tenant", body = ErrorBody),
              (status = 409, description = "The campaign is neither paused nor completed (`invalid_transition` with `from` and `to`), or no failed recipient matches (`precondition_failed`)", body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody),
              (status = 422, description = "Unknown scope, an unknown reason code (the message lists the codes), or a reason the scope does not cover", body = ErrorBody)),
    security(("bearer" = [])), tag = "lifecycle")]
pub async fn retry_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    if_match: Option<IfMatch>,
    body: Result<ApiJson<RetryRequest>, ApiError>,
) -> ApiResult<impl IntoResponse> {
    let Path(id) = path?;
    let ApiJson(body) = body?;
    let selection = RetrySelection::resolve(body.scope, body.reasons.as_deref())
        .map_err(ApiError::validation)?;
    let done = state
        .lifecycle
        .apply(TransitionRequest {
            campaign_id: id,
            tenant_id: Some(auth.0.id),
            action: Action::Retry,
            expected_version: if_match.map(|m| m.0),
            scheduled_at: None,
            actor: auth.actor(&correlation),
            detail: Some(TransitionDetail::Retry(selection)),
        })
        .await?;
    let reopened = done.reopened.unwrap_or(0);
    tracing::info!(campaign_id = %id, reopened, from = %done.from, to = %done.campaign.status, "retry committed");
    let etag = format!("\"{}\"", done.campaign.version);
    Ok((
        [(axum::http::header::ETAG, etag)],
        axum::Json(RetryResult {
            reopened,
            campaign: CampaignView::of(done.campaign, &state),
        }),
    ))
}
