//! Suppression list endpoints (`/v1/suppressions`): add opt-outs (JSON or
//! streamed CSV), page through the list, and remove an address. Each tenant has
//! one list and sees only its own: every statement is scoped by the token's
//! tenant, so another tenant's address is simply not there (404).
//!
//! Addresses are normalised on the way in, in filters and in the delete path
//! ([`herald_core::suppressions::normalise_suppression_address`]), so
//! `Ana@Example.COM` finds and removes `ana@example.com`.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use herald_core::suppressions::{
    delete_suppression as delete_entry, list_suppression_page, normalise_suppression_address,
};

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::AuthTenant;
use crate::routes::common::page_limit;
use crate::routes::suppression_import::{SuppressionBatch, read_csv, read_json};
use crate::state::AppState;
use crate::suppression_views::{
    SuppressionImport, SuppressionPage, SuppressionQuery, SuppressionResult,
};

/// The opaque cursor after `address`: its URL-safe base64.
fn encode_cursor(address: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(address)
}

/// Reads a cursor from [`encode_cursor`]; 422 when it is not one.
fn decode_cursor(cursor: &str) -> ApiResult<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        // Every listed address is free of control characters (the normaliser
        // refuses them); Postgres refuses a NUL outright.
        .filter(|address| !address.chars().any(char::is_control))
        .ok_or_else(|| ApiError::validation("cursor is not valid"))
}

/// The normalised form of an address from a query or path; 422 if it has none.
fn normalised(address: &str) -> ApiResult<String> {
    normalise_suppression_address(address).map_err(|e| ApiError::validation(e.to_string()))
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[utoipa::path(post, path = "/v1/suppressions",
    request_body(description = "JSON `{\"entries\": [{\"address\", \"reason\"}]}` (at most 100,000 entries), or `text/csv` streamed: \
                                a header line with an address column (`address`, or one of `phone`, `email`, `number`, `to`; any case) \
                                and an optional `reason` column; other columns are ignored. A missing or blank reason is `opted_out`",
                 content(
                     (SuppressionImport = "application/json"),
                     (String = "text/csv", example = json!("address,reason\n+1 555 000 1234,replied STOP\nAna@Example.com,\n")))),
    responses((status = 200, description = "What was added; addresses already listed are left as they were, rejected entries are listed with their reasons", body = SuppressionResult),
              (status = 400, description = "The JSON body is not valid JSON, or the upload was interrupted", body = ErrorBody),
              (status = 413, description = "The body is over the import limit (`payload_too_large`), or a JSON body has more than 100,000 entries (`too_many_entries`)", body = ErrorBody),
              (status = 415, description = "The Content-Type is neither application/json nor text/csv", body = ErrorBody),
              (status = 422, description = "The JSON has the wrong shape, or the CSV has no header line, no address column or several, or is UTF-16", body = ErrorBody)),
    security(("bearer" = [])), tag = "suppressions")]
pub async fn add_suppressions(
    State(state): State<AppState>,
    auth: AuthTenant,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<SuppressionResult>> {
    let limit = state.limits.import_body_bytes;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if length > limit {
            return Err(ApiError::payload_too_large(limit));
        }
    }
    let mut batch = SuppressionBatch::new(auth.0.id);
    match media_type(&headers).as_str() {
        "application/json" => read_json(&state, &mut batch, body).await?,
        "text/csv" => read_csv(&state, &mut batch, body).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/json or text/csv",
            ));
        }
    }
    batch.flush(&state).await?;
    let result = batch.result;
    tracing::info!(tenant_id = %auth.0.id, added = result.added, already_present = result.already_present,
        rejected = result.rejected, "suppressions added");
    Ok(axum::Json(result))
}

#[utoipa::path(get, path = "/v1/suppressions", params(SuppressionQuery),
    responses((status = 200, description = "One page of this tenant's suppression list, in address order", body = SuppressionPage),
              (status = 422, description = "A query parameter is invalid (an empty `address` too)", body = ErrorBody)),
    security(("bearer" = [])), tag = "suppressions")]
pub async fn list_suppressions(
    State(state): State<AppState>,
    auth: AuthTenant,
    query: Result<Query<SuppressionQuery>, QueryRejection>,
) -> ApiResult<axum::Json<SuppressionPage>> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let address = query.address.as_deref().map(normalised).transpose()?;
    let mut rows = list_suppression_page(
        &state.pool,
        auth.0.id,
        address.as_deref(),
        after.as_deref(),
        limit + 1,
    )
    .await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|row| encode_cursor(&row.address))
    } else {
        None
    };
    Ok(axum::Json(SuppressionPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

#[utoipa::path(delete, path = "/v1/suppressions/{address}",
    params(("address" = String, Path, description = "The address, URL-encoded (`%2B` or `+` for a leading plus); normalised as on import")),
    responses((status = 204, description = "The address was removed from the list"),
              (status = 404, description = "The address is not on this tenant's list", body = ErrorBody),
              (status = 422, description = "The address is empty once trimmed, too long or has control characters", body = ErrorBody)),
    security(("bearer" = [])), tag = "suppressions")]
pub async fn delete_suppression(
    State(state): State<AppState>,
    auth: AuthTenant,
    address: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(address) = address?;
    let address = normalised(&address)?;
    if !delete_entry(&state.pool, auth.0.id, &address).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "that address is not on the suppression list",
        ));
    }
    tracing::info!(tenant_id = %auth.0.id, "suppression removed");
    Ok(StatusCode::NO_CONTENT)
}
