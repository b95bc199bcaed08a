//! Campaign endpoints: create, list, read, edit and delete (duplicating lives in
//! `duplicate`). Each campaign sends through a channel (`channel_id`, or a
//! private channel made from an inline `channel` object); lifecycle transitions
//! live in `lifecycle`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Datelike, Utc};
use herald_core::campaigns::{CAMPAIGN_COLUMNS, Campaign, fetch_campaign};
use herald_core::channel::ChannelConfig;
use herald_core::channels::{self, NewChannel};
use herald_core::lifecycle::Status;
use herald_core::template::MessageTemplate;
use herald_core::transitions::append_event;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthTenant, IfMatch, RequestCorrelation};
use crate::routes::ab::{Messages, validate_messages};
use crate::routes::common::{
    decode_cursor, encode_cursor, page_limit, validate_channel, validate_name, validate_window,
    window_json,
};
use crate::state::AppState;
use crate::views::*;

/// Checks one template; `field` names it in the message (`template`,
/// `variants[1].template`).
pub(crate) fn validate_template(template: &TemplateSpec, field: &str) -> ApiResult<()> {
    if template.body.is_empty() || template.body.len() > 10_000 {
        return Err(ApiError::validation(format!(
            "{field}.body must be 1 to 10000 bytes"
        )));
    }
    if template.body.contains('\0') {
        return Err(ApiError::validation(format!(
            "{field}.body must not contain NUL characters"
        )));
    }
    MessageTemplate::compile(&template.body)
        .map_err(|e| ApiError::validation(format!("{field}: {e}")))?;
    Ok(())
}

/// chrono reads years Postgres cannot store (before 4713 BC): keep to 4-digit years.
pub(crate) fn validate_scheduled_at(at: Option<DateTime<Utc>>) -> ApiResult<()> {
    if at.is_some_and(|at| !(1..=9999).contains(&at.year())) {
        return Err(ApiError::validation(
            "scheduled_at must be a time between the years 1 and 9999",
        ));
    }
    Ok(())
}

fn validate_auto_pause(auto_pause: Option<&AutoPause>) -> ApiResult<()> {
    match auto_pause {
        Some(setting) => setting.validate().map_err(ApiError::validation),
        None => Ok(()),
    }
}

fn validate_rate(rate: Option<i32>) -> ApiResult<()> {
    match rate {
        Some(r) if !(1..=100_000).contains(&r) => Err(ApiError::validation(
            "rate_limit_per_second must be between 1 and 100000",
        )),
        _ => Ok(()),
    }
}

/// Where a new or edited campaign sends: a shared channel or an inline config.
/// 422 unless exactly one is given (`required`) or at most one (`!required`).
fn channel_source(
    channel_id: Option<Uuid>,
    channel: Option<&ChannelConfig>,
    required: bool,
) -> ApiResult<Option<Result<Uuid, &ChannelConfig>>> {
    match (channel_id, channel) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "give either channel_id or channel, not both",
        )),
        (Some(id), None) => Ok(Some(Ok(id))),
        (None, Some(channel)) => {
            validate_channel(channel)?;
            Ok(Some(Err(channel)))
        }
        (None, None) if required => Err(ApiError::validation(
            "give channel_id (a channel of this tenant) or an inline channel object",
        )),
        (None, None) => Ok(None),
    }
}

/// The channel id a campaign named `name` will reference: the shared channel
/// (422 if it is not one of this tenant's) or a new private channel.
async fn resolve_channel(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    name: &str,
    source: Result<Uuid, &ChannelConfig>,
) -> ApiResult<Uuid> {
    match source {
        Ok(id) => {
            if !channels::claim_shared_channel(tx, id, tenant).await? {
                return Err(ApiError::validation(format!(
                    "channel_id {id} does not name a channel of this tenant \
                     (unknown, deleted or another tenant's)"
                )));
            }
            Ok(id)
        }
        Err(inline) => {
            let new = NewChannel::private_for(name, inline.to_json());
            Ok(channels::insert_channel(&mut **tx, tenant, &new).await?.id)
        }
    }
}

async fn insert_campaign(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    channel_id: Uuid,
    body: &CreateCampaign,
    messages: Messages,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    let (template, variants, ab_test) = messages;
    sqlx::query(
        "INSERT INTO campaigns (id, tenant_id, name, channel_id, template, status, scheduled_at,
                                rate_limit_per_second, send_window, variants, ab_test,
                                auto_pause)
         VALUES ($1, $2, $3, $4, $5, 'draft', $6, $7, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(tenant)
    .bind(body.name.trim())
    .bind(channel_id)
    .bind(template)
    .bind(body.scheduled_at)
    .bind(body.rate_limit_per_second)
    .bind(window_json(body.send_window.as_ref()))
    .bind(variants)
    .bind(ab_test)
    .bind(body.auto_pause.as_ref().map(AutoPause::to_json))
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// The payload of a campaign's `created` event.
pub(crate) fn created_payload() -> serde_json::Value {
    serde_json::json!({"from": null, "to": "draft", "version": 1, "runEpoch": 0})
}

#[utoipa::path(post, path = "/v1/campaigns", request_body = CreateCampaign,
    params(("X-Correlation-Id" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the caller's id for this request; recorded on its events and carried on the bus (400 when malformed)")),
    responses((status = 201, description = "The campaign was created as a draft", body = CampaignView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn create_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    ApiJson(body): ApiJson<CreateCampaign>,
) -> ApiResult<impl IntoResponse> {
    validate_name(&body.name)?;
    let source = channel_source(body.channel_id, body.channel.as_ref(), true)?
        .ok_or_else(|| ApiError::validation("give channel_id or channel"))?;
    let messages = validate_messages(&body)?;
    validate_rate(body.rate_limit_per_second)?;
    validate_auto_pause(body.auto_pause.as_ref())?;
    validate_scheduled_at(body.scheduled_at)?;
    if let Some(window) = &body.send_window {
        validate_window(window)?;
    }
    let mut tx = state.pool.begin().await?;
    let channel_id = resolve_channel(&mut tx, auth.0.id, body.name.trim(), source).await?;
    let id = insert_campaign(&mut tx, auth.0.id, channel_id, &body, messages).await?;
    append_event(
        &mut tx,
        id,
        "created",
        created_payload(),
        &auth.actor(&correlation),
    )
    .await?;
    tx.commit().await?;
    state.lifecycle.outbox.publish_fast(id).await;
    let campaign = fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    tracing::info!(campaign_id = %id, "campaign created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CampaignView::of(campaign, &state)),
    ))
}

async fn list_campaign_page(
    state: &AppState,
    tenant: Uuid,
    status: Option<Status>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Campaign>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
         WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC LIMIT $5"
    )))
    .bind(tenant)
    .bind(status.map(|s| s.as_str()))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(&state.pool)
    .await
}

#[utoipa::path(get, path = "/v1/campaigns", params(ListQuery),
    responses((status = 200, description = "One page of campaigns, newest first", body = CampaignPage),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn list_campaigns(
    State(state): State<AppState>,
    auth: AuthTenant,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<CampaignPage>> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut rows = list_campaign_page(&state, auth.0.id, query.status, after, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|c| encode_cursor(c.created_at, c.id))
    } else {
        None
    };
    Ok(axum::Json(CampaignPage {
        items: rows
            .into_iter()
            .map(|c| CampaignView::of(c, &state))
            .collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/campaigns/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The campaign with its counters", body = CampaignView,
               headers(("ETag" = String, description = "The campaign's version, quoted"))),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn get_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let Path(id) = id?;
    let campaign = fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    let etag = format!("\"{}\"", campaign.version);
    Ok((
        [(axum::http::header::ETAG, etag)],
        axum::Json(CampaignView::of(campaign, &state)),
    ))
}

async fn lock_tenant_campaign(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    tenant: Uuid,
) -> Result<Option<Campaign>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1 AND tenant_id = $2 FOR UPDATE"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await
}

fn require_draft(campaign: &Campaign, what: &str, if_match: Option<IfMatch>) -> ApiResult<()> {
    if let Some(IfMatch(expected)) = if_match {
        if expected != campaign.version {
            return Err(herald_core::transitions::TransitionError::VersionMismatch {
                current: campaign.version,
                expected,
            }
            .into());
        }
    }
    if campaign.status != Status::Draft {
        let mut e = ApiError::conflict(
            "not_draft",
            format!(
                "only draft campaigns can be {what}; this one is {}",
                campaign.status
            ),
        );
        e.detail.from = Some(campaign.status.as_str().into());
        return Err(e);
    }
    Ok(())
}

async fn apply_update(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    channel_id: Option<Uuid>,
    body: &UpdateCampaign,
) -> Result<Campaign, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE campaigns SET
             name = coalesce($2, name),
             channel_id = coalesce($3, channel_id),
             template = coalesce($4, template),
             scheduled_at = coalesce($5, scheduled_at),
             rate_limit_per_second = coalesce($6, rate_limit_per_second),
             send_window = CASE WHEN $7 THEN $8 ELSE send_window END,
             auto_pause = CASE WHEN $9 THEN $10 ELSE auto_pause END,
             version = version + 1,
             updated_at = now()
         WHERE id = $1 RETURNING {CAMPAIGN_COLUMNS}"
    )))
    .bind(id)
    .bind(body.name.as_deref().map(str::trim))
    .bind(channel_id)
    .bind(
        body.template
            .as_ref()
            .map(|t| serde_json::to_value(t).unwrap_or_default()),
    )
    .bind(body.scheduled_at)
    .bind(body.rate_limit_per_second)
    .bind(body.send_window.is_some())
    .bind(window_json(
        body.send_window.as_ref().and_then(Option::as_ref),
    ))
    .bind(body.auto_pause.is_some())
    .bind(
        body.auto_pause
            .as_ref()
            .and_then(Option::as_ref)
            .map(AutoPause::to_json),
    )
    .fetch_one(&mut **tx)
    .await
}

#[utoipa::path(patch, path = "/v1/campaigns/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<i64>, Header, nullable = false, description = "expected campaign version"),
           ("X-Correlation-Id" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the caller's id for this request; recorded on its events and carried on the bus (400 when malformed)")),
    request_body = UpdateCampaign,
    responses((status = 200, description = "The edited draft", body = CampaignView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "Only drafts can be edited (`not_draft`)", body = ErrorBody),
              (status = 412, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn update_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    if_match: Option<IfMatch>,
    ApiJson(body): ApiJson<UpdateCampaign>,
) -> ApiResult<axum::Json<CampaignView>> {
    let Path(id) = id?;
    if let Some(name) = &body.name {
        validate_name(name)?;
    }
    let source = channel_source(body.channel_id, body.channel.as_ref(), false)?;
    if let Some(template) = &body.template {
        validate_template(template, "template")?;
    }
    validate_rate(body.rate_limit_per_second)?;
    validate_auto_pause(body.auto_pause.as_ref().and_then(Option::as_ref))?;
    validate_scheduled_at(body.scheduled_at)?;
    if let Some(Some(window)) = &body.send_window {
        validate_window(window)?;
    }
    let mut tx = state.pool.begin().await?;
    // A shared channel is locked before the campaign, in the order a channel
    // delete takes them, so the two never deadlock.
    if let Some(Ok(channel_id)) = source {
        resolve_channel(&mut tx, auth.0.id, "", Ok(channel_id)).await?;
    }
    let current = lock_tenant_campaign(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    require_draft(&current, "edited", if_match)?;
    if body.template.is_some() && current.variants.is_some() {
        return Err(ApiError::validation(
            "this is an A/B campaign: its templates are its variants, which cannot be edited \
             (duplicate it, or create a new campaign)",
        ));
    }
    let channel_id = match source {
        None => None,
        Some(Ok(shared)) => Some(shared),
        Some(Err(inline)) => {
            let name = body.name.as_deref().unwrap_or(&current.name).trim();
            Some(resolve_channel(&mut tx, auth.0.id, name, Err(inline)).await?)
        }
    };
    if channel_id.is_some_and(|new| new != current.channel_id) {
        // The draft's own channel is of no use to anyone once it moves.
        channels::retire_private_channel(&mut tx, current.channel_id).await?;
    }
    let updated = apply_update(&mut tx, id, channel_id, &body).await?;
    // Every version has its event, so the history explains every change.
    let payload = serde_json::json!({"from": "draft", "to": "draft", "version": updated.version, "runEpoch": 0});
    append_event(&mut tx, id, "updated", payload, &auth.actor(&correlation)).await?;
    tx.commit().await?;
    state.lifecycle.outbox.publish_fast(id).await;
    Ok(axum::Json(CampaignView::of(updated, &state)))
}

#[utoipa::path(delete, path = "/v1/campaigns/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<i64>, Header, nullable = false, description = "expected campaign version")),
    responses((status = 204, description = "The draft was deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "Only drafts can be deleted (`not_draft`)", body = ErrorBody), (status = 412, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn delete_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    if_match: Option<IfMatch>,
) -> ApiResult<StatusCode> {
    let Path(id) = id?;
    let mut tx = state.pool.begin().await?;
    let current = lock_tenant_campaign(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    require_draft(&current, "deleted", if_match)?;
    sqlx::query("DELETE FROM campaigns WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    channels::retire_private_channel(&mut tx, current.channel_id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
