//! The body of `POST /v1/suppressions`: a JSON list of entries or a streamed
//! CSV, checked entry by entry and written in chunks.
//!
//! As with recipient imports, a bad entry is counted and listed with its reason
//! while the good ones are added; only a body that cannot be read as a whole
//! (bad JSON, wrong shape, no address column, UTF-16, over the limit) fails the
//! request. Chunks are written as they fill, so a file found too large while it
//! streams has had its first entries added (the 413 says how many).

use axum::body::Body;
use futures::StreamExt;
use herald_core::suppressions::{
    Source, insert_suppressions, normalise_suppression_address, suppression_reason,
};
use uuid::Uuid;

use crate::csv_upload::{
    CsvUpload, RowProblem, checked_record, open_csv_upload, upload_interrupted,
};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::suppression_views::{SuppressionImport, SuppressionResult};
use crate::views::RejectedRow;

/// Entries written per statement.
const CHUNK: usize = 2_000;
/// Most entries one JSON body may carry (it is parsed whole; CSV streams).
pub const MAX_JSON_ENTRIES: usize = 100_000;
const MAX_REPORTED_REJECTIONS: usize = 1_000;
/// Names the address column of a CSV may have (compared without regard to case).
const ADDRESS_COLUMNS: [&str; 5] = ["address", "phone", "email", "number", "to"];

/// Entries waiting to be written, and the running tallies.
#[derive(Debug)]
pub struct SuppressionBatch {
    tenant: Uuid,
    addresses: Vec<String>,
    reasons: Vec<String>,
    pub result: SuppressionResult,
}

impl SuppressionBatch {
    pub fn new(tenant: Uuid) -> Self {
        Self {
            tenant,
            addresses: Vec::new(),
            reasons: Vec::new(),
            result: SuppressionResult::default(),
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

    fn push(&mut self, row: u64, address: &str, reason: Option<&str>) {
        let address = match normalise_suppression_address(address) {
            Ok(address) => address,
            Err(error) => return self.reject(row, error.to_string()),
        };
        let reason = match suppression_reason(reason) {
            Ok(reason) => reason,
            Err(error) => return self.reject(row, error.to_string()),
        };
        self.addresses.push(address);
        self.reasons.push(reason);
    }

    /// Writes the waiting entries.
    pub async fn flush(&mut self, state: &AppState) -> ApiResult<()> {
        if self.addresses.is_empty() {
            return Ok(());
        }
        let submitted = self.addresses.len() as u64;
        let added = insert_suppressions(
            &state.pool,
            self.tenant,
            &self.addresses,
            &self.reasons,
            Source::Api,
        )
        .await?;
        self.addresses.clear();
        self.reasons.clear();
        self.result.added += added;
        self.result.already_present += submitted - added;
        Ok(())
    }

    async fn push_and_maybe_flush(
        &mut self,
        state: &AppState,
        row: u64,
        address: &str,
        reason: Option<&str>,
    ) -> ApiResult<()> {
        self.push(row, address, reason);
        if self.addresses.len() >= CHUNK {
            self.flush(state).await?;
        }
        Ok(())
    }
}

/// Reads `{"entries": [...]}` (at most [`MAX_JSON_ENTRIES`]) into `batch`.
pub async fn read_json(
    state: &AppState,
    batch: &mut SuppressionBatch,
    body: Body,
) -> ApiResult<()> {
    let limit = state.limits.import_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::payload_too_large(limit))?;
    let import: SuppressionImport = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request("request body is not valid JSON")
        } else {
            ApiError::validation(e.to_string())
        }
    })?;
    if import.entries.len() > MAX_JSON_ENTRIES {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_entries",
            format!(
                "a JSON body takes at most {MAX_JSON_ENTRIES} entries, this one has {}; \
                 split it, or send the list as text/csv (streamed)",
                import.entries.len()
            ),
        ));
    }
    for (index, entry) in import.entries.iter().enumerate() {
        batch
            .push_and_maybe_flush(
                state,
                index as u64 + 1,
                &entry.address,
                entry.reason.as_deref(),
            )
            .await?;
    }
    Ok(())
}

/// The 413 of a streamed list, saying how many entries were added before it.
fn too_large(limit: usize, batch: &SuppressionBatch) -> ApiError {
    let mut error = ApiError::payload_too_large(limit);
    if batch.result.added > 0 {
        error.detail.message = format!(
            "{}; the first {} entries were added before the limit was reached \
             (sending the file again counts them as already present)",
            error.detail.message, batch.result.added
        );
    }
    error
}

/// The address column and the optional `reason` column of a CSV header. The
/// column named `address` wins; otherwise exactly one of the other names must be
/// there (422 listing the headers found when none is, or several are).
fn csv_columns(headers: &[String]) -> ApiResult<(usize, Option<usize>)> {
    let named = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let candidates: Vec<usize> = ADDRESS_COLUMNS.iter().filter_map(|n| named(n)).collect();
    let found = || {
        if headers.iter().all(|h| h.is_empty()) {
            return "no header line".to_owned();
        }
        let names: Vec<String> = headers.iter().map(|h| format!("{h:?}")).collect();
        format!("the headers {}", names.join(", "))
    };
    let address = match (named("address"), candidates.as_slice()) {
        (Some(column), _) => column,
        (None, [column]) => *column,
        (None, []) => {
            let mut message = format!(
                "the CSV header needs an address column (`address`, `phone`, `email`, \
                 `number` or `to`); found {}",
                found()
            );
            if headers.iter().any(|h| h.contains(';') || h.contains('\t')) {
                message.push_str("; the header holds `;` or a tab: separate columns with commas");
            }
            return Err(ApiError::validation(message));
        }
        (None, _) => {
            return Err(ApiError::validation(format!(
                "the CSV header has several address columns (found {}); keep one, or \
                 name the one to use `address`",
                found()
            )));
        }
    };
    Ok((address, named("reason")))
}

/// Streams a CSV (header line with an address column, optional `reason`
/// column, other columns ignored) into `batch`.
pub async fn read_csv(state: &AppState, batch: &mut SuppressionBatch, body: Body) -> ApiResult<()> {
    let limit = state.limits.import_body_bytes;
    let CsvUpload {
        mut reader,
        headers,
    } = open_csv_upload(body, limit).await?;
    let (address_column, reason_column) = csv_columns(&headers)?;
    let mut records = reader.byte_records();
    let mut row: u64 = 0;
    while let Some(record) = records.next().await {
        row += 1;
        let record = match checked_record(record, headers.len()) {
            Ok(record) => record,
            Err(RowProblem::TooLarge) => return Err(too_large(limit, batch)),
            Err(RowProblem::Malformed(message)) => {
                batch.reject(row, message);
                continue;
            }
            Err(RowProblem::Interrupted) => return Err(upload_interrupted()),
        };
        let field = |column: usize| std::str::from_utf8(record.get(column).unwrap_or_default());
        let (Ok(address), Ok(reason)) =
            (field(address_column), reason_column.map(field).transpose())
        else {
            batch.reject(row, "row is not valid UTF-8");
            continue;
        };
        batch
            .push_and_maybe_flush(state, row, address, reason)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(headers: &[&str]) -> Vec<String> {
        headers.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn the_address_column_may_have_another_name_and_any_case() {
        assert_eq!(
            csv_columns(&names(&["Name", "E-mail", "Email", "Reason"])).ok(),
            Some((2, Some(3)))
        );
        assert_eq!(csv_columns(&names(&["PHONE"])).ok(), Some((0, None)));
        assert_eq!(
            csv_columns(&names(&["phone", "Address"])).ok(),
            Some((1, None))
        );
    }

    #[test]
    fn a_header_without_an_address_column_lists_what_it_found() {
        let error = csv_columns(&names(&["address;reason"])).expect_err("no column");
        assert_eq!(error.status, 422);
        assert!(error.detail.message.contains("\"address;reason\""));
        assert!(
            error
                .detail
                .message
                .contains("separate columns with commas")
        );
        let error = csv_columns(&names(&["phone", "email"])).expect_err("ambiguous");
        assert!(error.detail.message.contains("several address columns"));
    }
}
