//! Recipient endpoints: the import (parsing, normalisation and writing live in
//! [`crate::import`]) and the ledger listing.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use herald_core::campaigns::fetch_campaign;
use herald_core::lifecycle::Status;
use herald_core::reason::Reason;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::AuthTenant;
use crate::import::batch::ImportBatch;
use crate::import::rules::ImportRules;
use crate::import::{csv::import_csv, import_json};
use crate::state::AppState;
use crate::views::*;

#[utoipa::path(post, path = "/v1/campaigns/{id}/recipients", params(("id" = Uuid, Path)),
    request_body(description = "JSON `{\"recipients\": [...]}`, or `text/csv` streamed: a header line with an address column \
                                (`address`, or else `phone`, `email`, `number` or `to`; names match ignoring case and surrounding spaces); \
                                every other column becomes a string variable. Addresses are normalised by kind (E.164 phone numbers, \
                                e-mail domains lower-cased; the channel's `address_kind` and `default_region`) and deduped on that form",
                 content(
                     (RecipientImport = "application/json"),
                     (String = "text/csv", example = json!("address,name\n+15550001,Ana\n+15550002,Bo\n")))),
    responses((status = 200, description = "What was imported; rejected rows are listed with a `reason` code \
                                  (`invalid_address`, `invalid_variables`, `malformed_row`, `template_error`) and a `message`", body = ImportResult),
              (status = 400, description = "The JSON body is not valid JSON, or the upload was interrupted", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "The campaign is neither a draft nor scheduled (`not_importable`)", body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 415, description = "The Content-Type is neither application/json nor text/csv", body = ErrorBody),
              (status = 422, description = "The JSON has the wrong shape, or the CSV has no header line, no address column \
                                  (the message lists the headers found) or several, or is UTF-16", body = ErrorBody)),
    security(("bearer" = [])), tag = "recipients")]
pub async fn import_recipients(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<ImportResult>> {
    let Path(id) = id?;
    let campaign = fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    if !matches!(campaign.status, Status::Draft | Status::Scheduled) {
        let mut e = ApiError::conflict(
            "not_importable",
            format!(
                "recipients can be imported only into draft or scheduled campaigns; this one is {}",
                campaign.status
            ),
        );
        e.detail.from = Some(campaign.status.as_str().into());
        return Err(e);
    }
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if length > state.limits.import_body_bytes {
            return Err(ApiError::payload_too_large(state.limits.import_body_bytes));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut batch = ImportBatch::new(id, ImportRules::for_campaign(&campaign));
    match content_type.as_str() {
        "application/json" => import_json(&state, &mut batch, body).await?,
        "text/csv" => import_csv(&state, &mut batch, body).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/json or text/csv",
            ));
        }
    }
    batch.flush(&state).await?;
    tracing::info!(campaign_id = %id, accepted = batch.result.accepted, duplicates = batch.result.duplicates,
        rejected = batch.result.rejected, "recipients imported");
    if batch.result.accepted >= ANALYZE_AFTER_IMPORTED_ROWS {
        refresh_ledger_statistics(&state.pool, id).await;
    }
    Ok(axum::Json(batch.result))
}

/// Imports at least this large refresh the planner's statistics at once.
const ANALYZE_AFTER_IMPORTED_ROWS: u64 = 10_000;

/// `ANALYZE recipients` after a bulk load, as the Postgres manual advises.
///
/// Without it, the packer's first pages of a large campaign imported into a
/// table whose statistics predate it are planned as if the campaign had a few
/// rows: a bitmap scan of the whole campaign and a sort, repeated for each of
/// the first five (custom-planned) pages; measured at about 3.5 s of a
/// 1,000,000-recipient run (docs/BENCHMARKS.md). ANALYZE samples a fixed number
/// of rows, so it costs a fraction of a second whatever the table's size. A
/// failure (say, the api's role does not own the table) is only logged:
/// autovacuum will analyze the table later.
async fn refresh_ledger_statistics(pool: &sqlx::PgPool, campaign: Uuid) {
    if let Err(error) = sqlx::query("ANALYZE recipients").execute(pool).await {
        tracing::warn!(campaign_id = %campaign, %error, "could not analyze recipients after the import");
    }
}

/// One page of the ledger by id, filtered by status and reason code (either may
/// be absent).
async fn recipient_page(
    state: &AppState,
    campaign: Uuid,
    (status, reason): (Option<&str>, Option<Reason>),
    after: i64,
    limit: i64,
) -> Result<Vec<RecipientView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, address, address_input, address_kind, variables, status, reason, attempts, variant, ab_cohort,
                last_error, provider_message_id, sent_at
         FROM recipients WHERE campaign_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($5::text IS NULL OR reason = $5) AND id > $3
         ORDER BY id LIMIT $4",
    )
    .bind(campaign)
    .bind(status)
    .bind(after)
    .bind(limit)
    .bind(reason.map(Reason::as_str))
    .fetch_all(&state.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RecipientView {
                id: r.try_get("id")?,
                address: r.try_get("address")?,
                address_input: r.try_get("address_input")?,
                address_kind: r
                    .try_get::<Option<String>, _>("address_kind")?
                    .and_then(|k| serde_json::from_value(serde_json::Value::String(k)).ok()),
                variables: r.try_get("variables")?,
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                provider_message_id: r.try_get("provider_message_id")?,
                sent_at: r.try_get("sent_at")?,
                variant: r.try_get("variant")?,
                ab_cohort: r.try_get("ab_cohort")?,
            })
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/campaigns/{id}/recipients", params(("id" = Uuid, Path), RecipientQuery),
    responses((status = 200, description = "One page of the campaign's recipients, by id, filtered by `status` and `reason` if given", body = RecipientPage),
              (status = 404, body = ErrorBody),
              (status = 422, description = "An unknown `status` or `reason`, a bad `cursor` or `limit`", body = ErrorBody)),
    security(("bearer" = [])), tag = "recipients")]
pub async fn list_recipients(
    State(state): State<AppState>,
    auth: AuthTenant,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    query: Result<Query<RecipientQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<RecipientPage>> {
    let Path(id) = id?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 1000"));
    }
    if let Some(status) = &query.status {
        if !["pending", "sending", "sent", "failed", "skipped"].contains(&status.as_str()) {
            return Err(ApiError::validation(
                "status must be pending, sending, sent, failed or skipped",
            ));
        }
    }
    let reason = query
        .reason
        .as_deref()
        .map(|r| {
            r.parse::<Reason>().map_err(|_| {
                ApiError::validation(format!("reason must be one of {}", Reason::list(", ")))
            })
        })
        .transpose()?;
    let after = match &query.cursor {
        Some(c) => c
            .parse::<i64>()
            .map_err(|_| ApiError::validation("cursor is not valid"))?,
        None => 0,
    };
    fetch_campaign(&state.pool, id, Some(auth.0.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    let filter = (query.status.as_deref(), reason);
    let mut items = recipient_page(&state, id, filter, after, limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(axum::Json(RecipientPage { items, next_cursor }))
}
