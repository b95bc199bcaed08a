//! Recipient import (JSON or streamed CSV) and the ledger listing.
//!
//! CSV imports are streamed: rows are parsed as bytes arrive and written in chunks
//! of `IMPORT_CHUNK` rows, so a million-row file never sits in memory. Each chunk
//! locks the campaign row and re-checks that it is still a draft or scheduled, so
//! an import cannot add rows to a campaign that has started.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use herald_core::campaigns::fetch_campaign;
use herald_core::lifecycle::Status;
use herald_core::reason::Reason;
use sqlx::Row;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::AuthTenant;
use crate::state::AppState;
use crate::views::*;

const IMPORT_CHUNK: usize = 2_000;
const MAX_ADDRESS_LEN: usize = 320;
const MAX_REPORTED_REJECTIONS: usize = 1_000;

/// Rows waiting to be written, and the running tallies.
struct ImportBatch {
    campaign: Uuid,
    addresses: Vec<String>,
    variables: Vec<serde_json::Value>,
    result: ImportResult,
}

impl ImportBatch {
    fn new(campaign: Uuid) -> Self {
        Self {
            campaign,
            addresses: Vec::new(),
            variables: Vec::new(),
            result: ImportResult::default(),
        }
    }

    fn reject(&mut self, row: u64, reason: impl Into<String>) {
        self.result.rejected += 1;
        if self.result.rejected_rows.len() < MAX_REPORTED_REJECTIONS {
            self.result.rejected_rows.push(RejectedRow {
                row,
                reason: reason.into(),
            });
        }
    }

    fn push(&mut self, row: u64, address: &str, variables: serde_json::Value) {
        let address = address.trim();
        if address.is_empty() {
            return self.reject(row, "address is empty");
        }
        if address.len() > MAX_ADDRESS_LEN {
            return self.reject(
                row,
                format!("address is longer than {MAX_ADDRESS_LEN} bytes"),
            );
        }
        if address.chars().any(char::is_control) {
            return self.reject(row, "address contains control characters");
        }
        if !variables.is_object() {
            return self.reject(row, "variables must be a JSON object");
        }
        if contains_nul(&variables) {
            return self.reject(row, "variables must not contain NUL characters");
        }
        self.addresses.push(address.to_owned());
        self.variables.push(variables);
    }

    async fn flush(&mut self, state: &AppState) -> ApiResult<()> {
        if self.addresses.is_empty() {
            return Ok(());
        }
        let submitted = self.addresses.len() as u64;
        let (open, inserted) =
            insert_chunk(state, self.campaign, &self.addresses, &self.variables).await?;
        self.addresses.clear();
        self.variables.clear();
        if !open {
            return Err(ApiError::conflict(
                "not_importable",
                format!(
                    "the campaign left draft/scheduled during the import; {} rows were imported before that",
                    self.result.accepted
                ),
            ));
        }
        self.result.accepted += inserted;
        self.result.duplicates += submitted - inserted;
        Ok(())
    }

    async fn push_and_maybe_flush(
        &mut self,
        state: &AppState,
        row: u64,
        address: &str,
        variables: serde_json::Value,
    ) -> ApiResult<()> {
        self.push(row, address, variables);
        if self.addresses.len() >= IMPORT_CHUNK {
            self.flush(state).await?;
        }
        Ok(())
    }
}

/// Inserts one chunk, skipping addresses already present, and bumps the counters,
/// all only while the campaign is still importable. Returns (still open, inserted).
async fn insert_chunk(
    state: &AppState,
    campaign: Uuid,
    addresses: &[String],
    variables: &[serde_json::Value],
) -> Result<(bool, u64), sqlx::Error> {
    let row = sqlx::query(
        "WITH camp AS (
             SELECT id FROM campaigns WHERE id = $1 AND status IN ('draft', 'scheduled') FOR NO KEY UPDATE
         ), ins AS (
             INSERT INTO recipients (campaign_id, address, variables)
             SELECT $1, a, v FROM unnest($2::text[], $3::jsonb[]) WITH ORDINALITY AS u(a, v, n)
             WHERE EXISTS (SELECT 1 FROM camp) ORDER BY n
             ON CONFLICT (campaign_id, address) DO NOTHING
             RETURNING 1
         ), bump AS (
             UPDATE campaigns SET total_count = total_count + (SELECT count(*) FROM ins),
                                  pending_count = pending_count + (SELECT count(*) FROM ins),
                                  updated_at = now()
             WHERE id IN (SELECT id FROM camp)
         )
         SELECT EXISTS (SELECT 1 FROM camp) AS open, (SELECT count(*) FROM ins) AS inserted",
    )
    .bind(campaign)
    .bind(addresses)
    .bind(variables)
    .fetch_one(&state.pool)
    .await?;
    Ok((
        row.try_get("open")?,
        row.try_get::<i64, _>("inserted")? as u64,
    ))
}

async fn import_json(state: &AppState, batch: &mut ImportBatch, body: Body) -> ApiResult<()> {
    let limit = state.limits.import_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::payload_too_large(limit))?;
    let import: RecipientImport = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request("request body is not valid JSON")
        } else {
            ApiError::validation(e.to_string())
        }
    })?;
    for (index, recipient) in import.recipients.into_iter().enumerate() {
        let variables = recipient.variables.unwrap_or_else(|| serde_json::json!({}));
        batch
            .push_and_maybe_flush(state, index as u64 + 1, &recipient.address, variables)
            .await?;
    }
    Ok(())
}

/// Marker error for a body over the import limit.
#[derive(Debug)]
struct BodyTooLarge;
impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body too large")
    }
}
impl std::error::Error for BodyTooLarge {}

fn is_body_too_large(error: &csv_async::Error) -> bool {
    match error.kind() {
        csv_async::ErrorKind::Io(io) => {
            io.get_ref().is_some_and(|inner| inner.is::<BodyTooLarge>())
        }
        _ => false,
    }
}

/// True if a CSV header line was written in UTF-16: it starts with a UTF-16 byte
/// order mark, or has NUL bytes (every ASCII character of UTF-16 has one).
fn looks_like_utf16(headers: &csv_async::ByteRecord) -> bool {
    let first = headers.get(0).unwrap_or_default();
    first.starts_with(&[0xFF, 0xFE])
        || first.starts_with(&[0xFE, 0xFF])
        || headers.iter().any(|field| field.contains(&0))
}

/// The 413 of a streamed import. A body without Content-Length is found too large
/// only while it is imported, after earlier chunks were stored: say how many.
fn import_too_large(limit: usize, batch: &ImportBatch) -> ApiError {
    let mut error = ApiError::payload_too_large(limit);
    if batch.result.accepted > 0 {
        error.detail.message = format!(
            "{}; the first {} rows were imported before the limit was reached \
             (importing the file again skips them as duplicates)",
            error.detail.message, batch.result.accepted
        );
    }
    error
}

async fn import_csv(state: &AppState, batch: &mut ImportBatch, body: Body) -> ApiResult<()> {
    let limit = state.limits.import_body_bytes;
    let seen = Arc::new(AtomicUsize::new(0));
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if seen.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > limit {
            return Err(std::io::Error::other(BodyTooLarge));
        }
        Ok(chunk)
    });
    let reader = tokio_util::io::StreamReader::new(stream);
    let mut csv = csv_async::AsyncReaderBuilder::new()
        .flexible(true)
        .create_reader(reader);
    let headers = match csv.byte_headers().await {
        Ok(h) => h.clone(),
        Err(e) if is_body_too_large(&e) => return Err(ApiError::payload_too_large(limit)),
        Err(_) => return Err(ApiError::validation("could not read the CSV header line")),
    };
    if looks_like_utf16(&headers) {
        return Err(ApiError::validation(
            "the CSV is not UTF-8: it looks like UTF-16 (a byte order mark or NUL bytes in \
             the header line); save it as UTF-8 (\"CSV UTF-8\" in Excel) and import it again",
        ));
    }
    let headers: Vec<String> = headers
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_owned()
        })
        .collect();
    let Some(address_column) = headers.iter().position(|h| h == "address") else {
        return Err(ApiError::validation(
            "the CSV header must have an `address` column",
        ));
    };
    let mut records = csv.byte_records();
    let mut row: u64 = 0;
    while let Some(record) = records.next().await {
        row += 1;
        let record = match record {
            Ok(r) => r,
            Err(e) if is_body_too_large(&e) => return Err(import_too_large(limit, batch)),
            Err(e) => {
                if matches!(e.kind(), csv_async::ErrorKind::Io(_)) {
                    return Err(ApiError::bad_request("the upload was interrupted"));
                }
                batch.reject(row, format!("unreadable CSV row: {e}"));
                continue;
            }
        };
        if record.len() != headers.len() {
            batch.reject(
                row,
                format!(
                    "row has {} fields but the header has {}",
                    record.len(),
                    headers.len()
                ),
            );
            continue;
        }
        let mut fields = Vec::with_capacity(record.len());
        let mut utf8 = true;
        for field in record.iter() {
            match std::str::from_utf8(field) {
                Ok(text) => fields.push(text),
                Err(_) => {
                    utf8 = false;
                    break;
                }
            }
        }
        if !utf8 {
            batch.reject(row, "row is not valid UTF-8");
            continue;
        }
        let variables: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .zip(&fields)
            .enumerate()
            .filter(|(i, _)| *i != address_column)
            .map(|(_, (name, value))| {
                (name.clone(), serde_json::Value::String((*value).to_owned()))
            })
            .collect();
        batch
            .push_and_maybe_flush(
                state,
                row,
                fields[address_column],
                serde_json::Value::Object(variables),
            )
            .await?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/recipients", params(("id" = Uuid, Path)),
    request_body(description = "JSON `{\"recipients\": [...]}`, or `text/csv` streamed: a header line with an `address` column; \
                                every other column becomes a string variable",
                 content(
                     (RecipientImport = "application/json"),
                     (String = "text/csv", example = json!("address,name\n+15550001,Ana\n+15550002,Bo\n")))),
    responses((status = 200, description = "What was imported; rejected rows are listed with their reasons", body = ImportResult),
              (status = 400, description = "The JSON body is not valid JSON, or the upload was interrupted", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "The campaign is neither a draft nor scheduled (`not_importable`)", body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 415, description = "The Content-Type is neither application/json nor text/csv", body = ErrorBody),
              (status = 422, description = "The JSON has the wrong shape, or the CSV has no header line or no `address` column, or is UTF-16", body = ErrorBody)),
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
    let mut batch = ImportBatch::new(id);
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
        "SELECT id, address, variables, status, reason, attempts, last_error, provider_message_id, sent_at
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
                variables: r.try_get("variables")?,
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                provider_message_id: r.try_get("provider_message_id")?,
                sent_at: r.try_get("sent_at")?,
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
