//! Channel endpoints: create, list, read, edit and delete a tenant's sending
//! identities (`/v1/channels`). Campaigns reference a channel by `channel_id` and
//! share its send budget and window.
//!
//! Secrets in a channel's config are write-only: every answer shows the config
//! through [`herald_core::channel::Channel::redacted`]. Private channels (the ones
//! behind a campaign's inline `channel` object) and deleted ones are 404 here.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use herald_core::channels::{self, ChannelUpdate, NewChannel};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthTenant};
use crate::routes::common::{
    decode_cursor, encode_cursor, page_limit, validate_channel, validate_name, validate_rate_limit,
    validate_window, window_json,
};
use crate::state::AppState;
use crate::views::{
    ChannelListQuery, ChannelPage, ChannelView, CreateChannel, RateLimit, UpdateChannel,
};

/// 404 for a channel that is not this tenant's, is private or is deleted.
pub fn channel_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "channel not found")
}

fn config_json(config: &herald_core::channel::ChannelConfig) -> serde_json::Value {
    config.to_json()
}

#[utoipa::path(post, path = "/v1/channels", request_body = CreateChannel,
    responses((status = 201, description = "The channel was created", body = ChannelView),
              (status = 400, description = "The body is not valid JSON", body = ErrorBody),
              (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 415, description = "The body is not application/json", body = ErrorBody),
              (status = 422, description = "A field is missing, unknown or invalid", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn create_channel(
    State(state): State<AppState>,
    auth: AuthTenant,
    ApiJson(body): ApiJson<CreateChannel>,
) -> ApiResult<impl IntoResponse> {
    validate_name(&body.name)?;
    validate_channel(&body.config)?;
    let rate = body.rate_limit.unwrap_or_default();
    validate_rate_limit(&rate)?;
    if let Some(window) = &body.send_window {
        validate_window(window)?;
    }
    let new = NewChannel {
        name: body.name.trim().to_owned(),
        config: config_json(&body.config),
        per_second: rate.per_second,
        per_day: rate.per_day,
        send_window: window_json(body.send_window.as_ref()),
        private: false,
    };
    let row = channels::insert_channel(&state.pool, auth.0.id, &new).await?;
    tracing::info!(channel_id = %row.id, "channel created");
    Ok((
        StatusCode::CREATED,
        axum::Json(ChannelView::of(row, &state)),
    ))
}

#[utoipa::path(get, path = "/v1/channels", params(ChannelListQuery),
    responses((status = 200, description = "One page of channels, newest first", body = ChannelPage),
              (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
              (status = 422, description = "A query parameter is invalid", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn list_channels(
    State(state): State<AppState>,
    auth: AuthTenant,
    query: Result<Query<ChannelListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<ChannelPage>> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut rows = channels::list_channel_page(&state.pool, auth.0.id, after, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|c| encode_cursor(c.created_at, c.id))
    } else {
        None
    };
    Ok(axum::Json(ChannelPage {
        items: rows
            .into_iter()
            .map(|c| ChannelView::of(c, &state))
            .collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/channels/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The channel", body = ChannelView),
              (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
              (status = 404, description = "No such channel for this tenant", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn get_channel(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> ApiResult<axum::Json<ChannelView>> {
    let Path(id) = id?;
    let row = channels::fetch_channel(&state.pool, id, auth.0.id)
        .await?
        .ok_or_else(channel_not_found)?;
    Ok(axum::Json(ChannelView::of(row, &state)))
}

/// Checks every field the PATCH carries and merges it into `update`.
fn merge_update(update: &mut ChannelUpdate, body: UpdateChannel) -> ApiResult<()> {
    if let Some(name) = body.name {
        validate_name(&name)?;
        update.name = name.trim().to_owned();
    }
    if let Some(config) = body.config {
        validate_channel(&config)?;
        update.config = config_json(&config);
    }
    if let Some(rate) = body.rate_limit {
        let rate = rate.unwrap_or_default();
        validate_rate_limit(&rate)?;
        let RateLimit {
            per_second,
            per_day,
        } = rate;
        update.per_second = per_second;
        update.per_day = per_day;
    }
    if let Some(window) = body.send_window {
        if let Some(window) = &window {
            validate_window(window)?;
        }
        update.send_window = window_json(window.as_ref());
    }
    Ok(())
}

#[utoipa::path(patch, path = "/v1/channels/{id}", params(("id" = Uuid, Path)),
    request_body = UpdateChannel,
    responses((status = 200, description = "The updated channel", body = ChannelView),
              (status = 400, description = "The body is not valid JSON", body = ErrorBody),
              (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
              (status = 404, description = "No such channel for this tenant", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 415, description = "The body is not application/json", body = ErrorBody),
              (status = 422, description = "A field is unknown or invalid", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn update_channel(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    ApiJson(body): ApiJson<UpdateChannel>,
) -> ApiResult<axum::Json<ChannelView>> {
    let Path(id) = id?;
    let mut tx = state.pool.begin().await?;
    let current = channels::lock_channel(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(channel_not_found)?;
    let mut update = ChannelUpdate::from(current);
    merge_update(&mut update, body)?;
    let row = channels::update_channel(&mut tx, id, &update).await?;
    tx.commit().await?;
    tracing::info!(channel_id = %id, version = row.version, "channel updated");
    Ok(axum::Json(ChannelView::of(row, &state)))
}

#[utoipa::path(delete, path = "/v1/channels/{id}", params(("id" = Uuid, Path)),
    responses((status = 204, description = "The channel was deleted"),
              (status = 401, description = "Missing or invalid bearer token", body = ErrorBody),
              (status = 404, description = "No such channel for this tenant", body = ErrorBody),
              (status = 409, description = "A sending, paused or scheduled campaign uses the channel (code `channel_in_use`)", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn delete_channel(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = id?;
    let mut tx = state.pool.begin().await?;
    channels::lock_channel(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(channel_not_found)?;
    let active = channels::count_active_campaigns(&mut tx, id).await?;
    if active > 0 {
        let campaigns = if active == 1 {
            "campaign uses"
        } else {
            "campaigns use"
        };
        return Err(ApiError::conflict(
            "channel_in_use",
            format!(
                "{active} sending, paused or scheduled {campaigns} this channel; \
                 stop or unschedule them, or let them complete, before deleting it"
            ),
        ));
    }
    channels::soft_delete_channel(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(channel_id = %id, "channel deleted");
    Ok(StatusCode::NO_CONTENT)
}
