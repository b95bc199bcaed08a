//! Rotating a receipts URL: `POST /v1/channels/{id}/receipts-token` for a shared
//! channel, `POST /v1/campaigns/{id}/receipts-token` for the private channel of a
//! campaign created with an inline `channel` object.
//!
//! The token in a receipts URL is its only credential, so a leaked URL lets
//! anyone report deliveries, reads and bounces for the channel's messages. A
//! rotation gives the channel a new token at once: this api replica refuses the
//! old one immediately, the others within `receipt_tokens::TOKEN_TTL` (10 s).
//! There is no grace period; give the provider the new `receipts_url` right
//! away (receipts sent to the old one meanwhile are answered 404, which
//! providers that retry webhooks send again).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use herald_core::campaigns::fetch_campaign;
use herald_core::channels;
use uuid::Uuid;

use crate::channel_views::ChannelView;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::AuthTenant;
use crate::routes::channels::channel_not_found;
use crate::state::AppState;
use crate::views::CampaignView;

#[utoipa::path(post, path = "/v1/channels/{id}/receipts-token", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The channel with its new `receipts_url`; the old one no longer works", body = ChannelView),
              (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
              (status = 404, description = "No such channel for this tenant", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn rotate_channel_receipts_token(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, PathRejection>,
) -> ApiResult<axum::Json<ChannelView>> {
    let Path(id) = id?;
    let mut tx = state.pool.begin().await?;
    channels::lock_channel(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(channel_not_found)?;
    let row = channels::rotate_receipts_token(&mut tx, id).await?;
    tx.commit().await?;
    state.receipt_tokens.forget(id);
    tracing::info!(channel_id = %id, version = row.version, "receipts token rotated");
    Ok(axum::Json(ChannelView::of(row, &state)))
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/receipts-token", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The campaign with its new `receipts_url`; the old one no longer works", body = CampaignView),
              (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
              (status = 404, description = "No such campaign for this tenant", body = ErrorBody),
              (status = 409, description = "The campaign sends through a shared channel (code `shared_channel`): rotate that channel's token instead", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn rotate_campaign_receipts_token(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, PathRejection>,
) -> ApiResult<axum::Json<CampaignView>> {
    let Path(id) = id?;
    let mut tx = state.pool.begin().await?;
    let (channel, private) = channels::lock_campaign_channel(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if !private {
        return Err(ApiError::conflict(
            "shared_channel",
            format!(
                "the campaign sends through shared channel {channel}; \
                 rotate it with POST /v1/channels/{channel}/receipts-token"
            ),
        ));
    }
    channels::rotate_receipts_token(&mut tx, channel).await?;
    tx.commit().await?;
    state.receipt_tokens.forget(channel);
    tracing::info!(campaign_id = %id, channel_id = %channel, "receipts token rotated");
    let campaign = fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(CampaignView::of(campaign, &state)))
}
