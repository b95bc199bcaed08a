//! Streamed CSV imports: rows are parsed as bytes arrive (the reader of
//! [`crate::csv_upload`]) and written in chunks, so a million-row file never
//! sits in memory.

use axum::body::Body;
use futures::StreamExt;

use super::batch::ImportBatch;
use super::header;
use crate::csv_upload::{
    CsvUpload, RowProblem, checked_record, open_csv_upload, upload_interrupted,
};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::RejectReason;

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

/// A record's fields as text, or None when one is not UTF-8.
fn utf8_fields(record: &csv_async::ByteRecord) -> Option<Vec<&str>> {
    record
        .iter()
        .map(|field| std::str::from_utf8(field).ok())
        .collect()
}

/// Imports a `text/csv` body into `batch`: a header line (see [`header`]), then
/// one recipient per row, every column but the address a string variable.
pub async fn import_csv(state: &AppState, batch: &mut ImportBatch, body: Body) -> ApiResult<()> {
    let limit = state.limits.import_body_bytes;
    let CsvUpload {
        mut reader,
        headers,
    } = open_csv_upload(body, limit).await?;
    let columns = header::resolve(&headers, batch.template_variables())?;
    let mut records = reader.byte_records();
    let mut row: u64 = 0;
    while let Some(record) = records.next().await {
        row += 1;
        let record = match checked_record(record, headers.len()) {
            Ok(record) => record,
            Err(RowProblem::TooLarge) => return Err(import_too_large(limit, batch)),
            Err(RowProblem::Malformed(message)) => {
                batch
                    .reject(state, row, RejectReason::MalformedRow, message)
                    .await?;
                continue;
            }
            Err(RowProblem::Interrupted) => return Err(upload_interrupted()),
        };
        let Some(fields) = utf8_fields(&record) else {
            batch
                .reject(
                    state,
                    row,
                    RejectReason::MalformedRow,
                    "row is not valid UTF-8",
                )
                .await?;
            continue;
        };
        let variables: serde_json::Map<String, serde_json::Value> = columns
            .names
            .iter()
            .zip(&fields)
            .enumerate()
            .filter(|(i, _)| *i != columns.address)
            .map(|(_, (name, value))| {
                (name.clone(), serde_json::Value::String((*value).to_owned()))
            })
            .collect();
        batch
            .push_and_maybe_flush(
                state,
                row,
                fields[columns.address],
                serde_json::Value::Object(variables),
            )
            .await?;
    }
    Ok(())
}
