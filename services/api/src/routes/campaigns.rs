//! Campaign endpoints: create, list, read, edit, delete, duplicate, transitions,
//! bulk transitions and the event history.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
use herald_core::campaigns::{CAMPAIGN_COLUMNS, Campaign, fetch_campaign};
use herald_core::channel::Channel;
use herald_core::lifecycle::{Action, Status};
use herald_core::template::MessageTemplate;
use herald_core::transitions::{TransitionRequest, append_event};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthTenant, IfMatch, RequestCorrelation};
use crate::state::AppState;
use crate::views::*;

fn validate_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation("name must be 1 to 200 characters"));
    }
    if name.contains('\0') {
        return Err(ApiError::validation("name must not contain NUL characters"));
    }
    Ok(())
}

fn validate_template(template: &TemplateSpec) -> ApiResult<()> {
    if template.body.is_empty() || template.body.len() > 10_000 {
        return Err(ApiError::validation(
            "template.body must be 1 to 10000 bytes",
        ));
    }
    if template.body.contains('\0') {
        return Err(ApiError::validation(
            "template.body must not contain NUL characters",
        ));
    }
    MessageTemplate::compile(&template.body).map_err(|e| ApiError::validation(e.to_string()))?;
    Ok(())
}

fn validate_channel(channel: &Channel) -> ApiResult<()> {
    channel.validate().map_err(ApiError::validation)?;
    if contains_nul(&serde_json::to_value(channel).unwrap_or_default()) {
        return Err(ApiError::validation(
            "channel must not contain NUL characters",
        ));
    }
    Ok(())
}

/// chrono reads years Postgres cannot store (before 4713 BC): keep to 4-digit years.
fn validate_scheduled_at(at: Option<DateTime<Utc>>) -> ApiResult<()> {
    if at.is_some_and(|at| !(1..=9999).contains(&at.year())) {
        return Err(ApiError::validation(
            "scheduled_at must be a time between the years 1 and 9999",
        ));
    }
    Ok(())
}

fn validate_rate(rate: Option<i32>) -> ApiResult<()> {
    match rate {
        Some(r) if !(1..=100_000).contains(&r) => Err(ApiError::validation(
            "rate_limit_per_second must be between 1 and 100000",
        )),
        _ => Ok(()),
    }
}

async fn insert_campaign(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    body: &CreateCampaign,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO campaigns (id, tenant_id, name, channel, template, status, scheduled_at, rate_limit_per_second)
         VALUES ($1, $2, $3, $4, $5, 'draft', $6, $7)",
    )
    .bind(id)
    .bind(tenant)
    .bind(body.name.trim())
    .bind(serde_json::to_value(&body.channel).unwrap_or_default())
    .bind(serde_json::to_value(&body.template).unwrap_or_default())
    .bind(body.scheduled_at)
    .bind(body.rate_limit_per_second)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

fn created_payload() -> serde_json::Value {
    serde_json::json!({"from": null, "to": "draft", "version": 1, "runEpoch": 0})
}

#[utoipa::path(post, path = "/v1/campaigns", request_body = CreateCampaign,
    responses((status = 201, body = CampaignView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
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
    validate_channel(&body.channel)?;
    validate_template(&body.template)?;
    validate_rate(body.rate_limit_per_second)?;
    validate_scheduled_at(body.scheduled_at)?;
    let mut tx = state.pool.begin().await?;
    let id = insert_campaign(&mut tx, auth.0.id, &body).await?;
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
        axum::Json(CampaignView::from(campaign)),
    ))
}

fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{id}", created_at.to_rfc3339()))
}

fn decode_cursor(cursor: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
    let bad = || ApiError::validation("cursor is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((
        DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad())?
            .with_timezone(&Utc),
        id.parse().map_err(|_| bad())?,
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
    responses((status = 200, body = CampaignPage), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn list_campaigns(
    State(state): State<AppState>,
    auth: AuthTenant,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<CampaignPage>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 500"));
    }
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut rows = list_campaign_page(&state, auth.0.id, query.status, after, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|c| encode_cursor(c.created_at, c.id))
    } else {
        None
    };
    Ok(axum::Json(CampaignPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/campaigns/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = CampaignView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
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
        axum::Json(CampaignView::from(campaign)),
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
    body: &UpdateCampaign,
) -> Result<Campaign, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE campaigns SET
             name = coalesce($2, name),
             channel = coalesce($3, channel),
             template = coalesce($4, template),
             scheduled_at = coalesce($5, scheduled_at),
             rate_limit_per_second = coalesce($6, rate_limit_per_second),
             version = version + 1,
             updated_at = now()
         WHERE id = $1 RETURNING {CAMPAIGN_COLUMNS}"
    )))
    .bind(id)
    .bind(body.name.as_deref().map(str::trim))
    .bind(
        body.channel
            .as_ref()
            .map(|c| serde_json::to_value(c).unwrap_or_default()),
    )
    .bind(
        body.template
            .as_ref()
            .map(|t| serde_json::to_value(t).unwrap_or_default()),
    )
    .bind(body.scheduled_at)
    .bind(body.rate_limit_per_second)
    .fetch_one(&mut **tx)
    .await
}

#[utoipa::path(patch, path = "/v1/campaigns/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<i64>, Header, nullable = false, description = "expected campaign version")),
    request_body = UpdateCampaign,
    responses((status = 200, body = CampaignView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
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
    if let Some(channel) = &body.channel {
        validate_channel(channel)?;
    }
    if let Some(template) = &body.template {
        validate_template(template)?;
    }
    validate_rate(body.rate_limit_per_second)?;
    validate_scheduled_at(body.scheduled_at)?;
    let mut tx = state.pool.begin().await?;
    let current = lock_tenant_campaign(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    require_draft(&current, "edited", if_match)?;
    let updated = apply_update(&mut tx, id, &body).await?;
    // Every version has its event, so the history explains every change.
    let payload = serde_json::json!({"from": "draft", "to": "draft", "version": updated.version, "runEpoch": 0});
    append_event(&mut tx, id, "updated", payload, &auth.actor(&correlation)).await?;
    tx.commit().await?;
    state.lifecycle.outbox.publish_fast(id).await;
    Ok(axum::Json(updated.into()))
}

#[utoipa::path(delete, path = "/v1/campaigns/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<i64>, Header, nullable = false, description = "expected campaign version")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)),
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
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn copy_campaign(
    tx: &mut Transaction<'_, Postgres>,
    source: Uuid,
    tenant: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    let id = Uuid::new_v4();
    let copied = sqlx::query(
        "INSERT INTO campaigns (id, tenant_id, name, channel, template, status, rate_limit_per_second)
         SELECT $1, tenant_id, left(name || ' (copy)', 200), channel, template, 'draft', rate_limit_per_second
         FROM campaigns WHERE id = $2 AND tenant_id = $3",
    )
    .bind(id)
    .bind(source)
    .bind(tenant)
    .execute(&mut **tx)
    .await?;
    if copied.rows_affected() == 0 {
        return Ok(None);
    }
    // The recipient list comes along, every row pending again.
    let rows = sqlx::query(
        "INSERT INTO recipients (campaign_id, address, variables)
         SELECT $1, address, variables FROM recipients WHERE campaign_id = $2 ORDER BY id",
    )
    .bind(id)
    .bind(source)
    .execute(&mut **tx)
    .await?
    .rows_affected() as i64;
    sqlx::query("UPDATE campaigns SET total_count = $2, pending_count = $2 WHERE id = $1")
        .bind(id)
        .bind(rows)
        .execute(&mut **tx)
        .await?;
    Ok(Some(id))
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/duplicate", params(("id" = Uuid, Path)),
    responses((status = 201, body = CampaignView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn duplicate_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let Path(id) = id?;
    let mut tx = state.pool.begin().await?;
    let copy = copy_campaign(&mut tx, id, auth.0.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    append_event(
        &mut tx,
        copy,
        "created",
        created_payload(),
        &auth.actor(&correlation),
    )
    .await?;
    tx.commit().await?;
    state.lifecycle.outbox.publish_fast(copy).await;
    let campaign = fetch_campaign(&state.pool, copy, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CampaignView::from(campaign)),
    ))
}

fn parse_action(action: &str) -> ApiResult<Action> {
    match action {
        "schedule" => Ok(Action::Schedule),
        "unschedule" => Ok(Action::Unschedule),
        "start" => Ok(Action::Start),
        "pause" => Ok(Action::Pause),
        "resume" => Ok(Action::Resume),
        "stop" => Ok(Action::Stop),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown action {action:?}"),
        )),
    }
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/{action}",
    params(("id" = Uuid, Path), ("action" = String, Path, description = "schedule, unschedule, start, pause, resume or stop"),
           ("If-Match" = Option<i64>, Header, nullable = false, description = "expected campaign version")),
    request_body(content = Option<ScheduleBody>, description = "only for schedule"),
    responses((status = 200, body = CampaignView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])), tag = "lifecycle")]
pub async fn transition_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    path: Result<Path<(Uuid, String)>, axum::extract::rejection::PathRejection>,
    if_match: Option<IfMatch>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let Path((id, action)) = path?;
    let action = parse_action(&action)?;
    // Over the body limit: 413 in the JSON error shape, not axum's plain text.
    let body = body?;
    let schedule: ScheduleBody = if body.iter().all(u8::is_ascii_whitespace) {
        ScheduleBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::bad_request("request body is not valid JSON")
            } else {
                ApiError::validation(e.to_string())
            }
        })?
    };
    // Bound into the transition's UPDATE whatever the action.
    validate_scheduled_at(schedule.scheduled_at)?;
    let done = state
        .lifecycle
        .apply(TransitionRequest {
            campaign_id: id,
            tenant_id: Some(auth.0.id),
            action,
            expected_version: if_match.map(|m| m.0),
            scheduled_at: schedule.scheduled_at,
            actor: auth.actor(&correlation),
        })
        .await?;
    tracing::info!(campaign_id = %id, %action, from = %done.from, to = %done.campaign.status, "transition committed");
    let etag = format!("\"{}\"", done.campaign.version);
    Ok((
        [(axum::http::header::ETAG, etag)],
        axum::Json(CampaignView::from(done.campaign)),
    ))
}

#[utoipa::path(post, path = "/v1/campaigns/bulk/{action}",
    params(("action" = String, Path, description = "pause, resume or stop")),
    request_body = BulkRequest,
    responses((status = 200, body = BulkResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])), tag = "lifecycle")]
pub async fn bulk_transition(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    action: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<ApiJson<BulkRequest>, ApiError>,
) -> ApiResult<axum::Json<BulkResponse>> {
    let Path(action) = action?;
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "stop" => Action::Stop,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown bulk action {other:?}"),
            ));
        }
    };
    // An unknown action is a 404 whatever the body; only then is the body checked.
    let ApiJson(body) = body?;
    if body.ids.is_empty() || body.ids.len() > 1000 {
        return Err(ApiError::validation("ids must hold 1 to 1000 campaign ids"));
    }
    let mut results = Vec::with_capacity(body.ids.len());
    for id in body.ids {
        let outcome = state
            .lifecycle
            .apply(TransitionRequest {
                campaign_id: id,
                tenant_id: Some(auth.0.id),
                action,
                expected_version: None,
                scheduled_at: None,
                actor: auth.actor(&correlation),
            })
            .await;
        results.push(match outcome {
            Ok(done) => BulkResult {
                id,
                ok: true,
                status: Some(done.campaign.status),
                error: None,
            },
            Err(error) => {
                let error = ApiError::from(error);
                if error.status == StatusCode::SERVICE_UNAVAILABLE {
                    return Err(error);
                }
                BulkResult {
                    id,
                    ok: false,
                    status: None,
                    error: Some(error.body()["error"].clone()),
                }
            }
        });
    }
    Ok(axum::Json(BulkResponse { results }))
}

async fn list_events(state: &AppState, campaign: Uuid) -> Result<Vec<EventView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, seq, type, payload, actor, correlation_id, request_correlation_id, created_at, published_at
         FROM campaign_events WHERE campaign_id = $1 ORDER BY seq",
    )
    .bind(campaign)
    .fetch_all(&state.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EventView {
                id: r.try_get("id")?,
                seq: r.try_get("seq")?,
                event_type: r.try_get("type")?,
                payload: r.try_get("payload")?,
                actor: r.try_get("actor")?,
                correlation_id: r.try_get("correlation_id")?,
                request_correlation_id: r.try_get("request_correlation_id")?,
                created_at: r.try_get("created_at")?,
                published_at: r.try_get("published_at")?,
            })
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/campaigns/{id}/events", params(("id" = Uuid, Path)),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])), tag = "campaigns")]
pub async fn campaign_events(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> ApiResult<axum::Json<EventList>> {
    let Path(id) = id?;
    fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(EventList {
        items: list_events(&state, id).await?,
    }))
}
