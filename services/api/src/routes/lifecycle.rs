//! Lifecycle endpoints of a campaign: one transition (`schedule`, `start`,
//! `pause`, ...), bulk transitions over many campaigns, and the event history.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::campaigns::fetch_campaign;
use herald_core::lifecycle::Action;
use herald_core::transitions::TransitionRequest;
use sqlx::Row;
use uuid::Uuid;

use crate::acks::{AckWait, Acks, WaitQuery};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, AuthTenant, IfMatch, RequestCorrelation};
use crate::routes::campaigns::validate_scheduled_at;
use crate::state::AppState;
use crate::views::*;

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

/// A transition's optional body: empty, `null` or an object (a JSON array is a
/// 422, though serde would read `[]` as a struct whose fields all default).
fn schedule_body(body: &[u8]) -> ApiResult<ScheduleBody> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ScheduleBody::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("request body is not valid JSON"))?;
    match value {
        serde_json::Value::Null => Ok(ScheduleBody::default()),
        serde_json::Value::Object(_) => serde_json::from_value(value)
            .map_err(|e| ApiError::validation(format!("invalid body: {e}"))),
        _ => Err(ApiError::validation(
            "the body must be a JSON object, null or empty",
        )),
    }
}

/// The answer of a pause or stop with `wait`: the campaign plus the replicas' acks.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AcknowledgedTransition {
    #[serde(flatten)]
    pub campaign: CampaignView,
    /// Present only when the request asked to `wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<Acks>,
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/{action}",
    params(("id" = Uuid, Path),
           ("action" = TransitionAction, Path, description = "schedule, unschedule, start, pause, resume or stop"),
           WaitQuery,
           ("If-Match" = Option<i64>, Header, nullable = false, description = "expected campaign version"),
           ("X-Correlation-Id" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the caller's id for this request; recorded on its events and carried on the bus (400 when malformed)")),
    request_body(content = Option<ScheduleBody>, description = "Optional: empty, `null` or an object; only `schedule` reads `scheduled_at`"),
    responses((status = 200, description = "The transition was committed; the campaign after it. With `wait` (pause and stop), also `acks`: which live replicas applied it (and drained, for `wait=drained`) within `timeout_ms`, and which are `missing`; still 200 when some are, since the transition has committed", body = AcknowledgedTransition,
               headers(("ETag" = String, description = "The campaign's new version, quoted"))),
              (status = 400, body = ErrorBody),
              (status = 404, description = "No such campaign for this tenant, or an unknown action", body = ErrorBody),
              (status = 409, description = "The campaign's status does not allow this transition (`invalid_transition` with `from` and `to`), or a precondition fails (`precondition_failed`, e.g. no recipients)", body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])), tag = "lifecycle")]
pub async fn transition_campaign(
    State(state): State<AppState>,
    auth: AuthTenant,
    correlation: RequestCorrelation,
    path: Result<Path<(Uuid, String)>, axum::extract::rejection::PathRejection>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    if_match: Option<IfMatch>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let Path((id, action)) = path?;
    let action = parse_action(&action)?;
    let Query(query) = query?;
    let wait = query.parse(action)?;
    // Over the body limit: 413 in the JSON error shape, not axum's plain text.
    let body = body?;
    // Empty and `null` are both "no body" (the document marks the body optional
    // and nullable).
    let schedule = schedule_body(&body)?;
    // Bound into the transition's UPDATE whatever the action.
    validate_scheduled_at(schedule.scheduled_at)?;
    // Before the commit, so no ack can be missed (crate::acks).
    let acks = match wait {
        Some(wait) => Some(AckWait::subscribe(&state.bus, id, wait, state.replicas.live()).await),
        None => None,
    };
    let done = state
        .lifecycle
        .apply(TransitionRequest {
            campaign_id: id,
            tenant_id: Some(auth.0.id),
            action,
            expected_version: if_match.map(|m| m.0),
            scheduled_at: schedule.scheduled_at,
            actor: auth.actor(&correlation),
            detail: None,
        })
        .await?;
    tracing::info!(campaign_id = %id, %action, from = %done.from, to = %done.campaign.status, "transition committed");
    let etag = [(
        axum::http::header::ETAG,
        format!("\"{}\"", done.campaign.version),
    )];
    let campaign = CampaignView::of(done.campaign, &state);
    Ok(match acks {
        None => (etag, axum::Json(campaign)).into_response(),
        Some(acks) => {
            let acks = acks.collect(done.correlation_id).await;
            tracing::info!(campaign_id = %id, complete = acks.complete, waited_ms = acks.waited_ms, "acks collected");
            let body = AcknowledgedTransition {
                campaign,
                acks: Some(acks),
            };
            (etag, axum::Json(body)).into_response()
        }
    })
}

#[utoipa::path(post, path = "/v1/campaigns/bulk/{action}",
    params(("action" = BulkAction, Path, description = "pause, resume or stop"),
           ("X-Correlation-Id" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the caller's id for this request; recorded on its events and carried on the bus (400 when malformed)")),
    request_body = BulkRequest,
    responses((status = 200, description = "One result per id, in order; a failed id does not stop the others", body = BulkResponse),
              (status = 400, body = ErrorBody),
              (status = 404, description = "Unknown bulk action", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
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
                detail: None,
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
    responses((status = 200, description = "The campaign's lifecycle events, oldest first", body = EventList),
              (status = 404, body = ErrorBody)),
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
