//! Recipient import (`POST /v1/campaigns/{id}/recipients`): JSON or streamed CSV
//! into the ledger.
//!
//! Each row is checked by the campaign's [`rules::ImportRules`]: its address is
//! normalised the way the channel wants (E.164 phone numbers, e-mail domains
//! lower-cased, see [`herald_core::address`]) and deduped on that form; a strict
//! template rejects rows that lack a variable it uses. A row that fails is
//! counted and listed with a machine-readable reason and a human message.
//!
//! Rows are written in chunks of [`batch::IMPORT_CHUNK`]. Each chunk locks the
//! campaign row and re-checks that it is still a draft or scheduled, so an
//! import cannot add rows to a campaign that has started.

pub mod batch;
pub mod csv;
pub mod header;
pub mod rules;

use axum::body::Body;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::RecipientImport;
use batch::ImportBatch;

/// Imports an `application/json` body (`{"recipients": [...]}`) into `batch`.
/// The body is read whole (up to the import limit): 400 when it is not JSON,
/// 422 when it has the wrong shape.
pub async fn import_json(state: &AppState, batch: &mut ImportBatch, body: Body) -> ApiResult<()> {
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
