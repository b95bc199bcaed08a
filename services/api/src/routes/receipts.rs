//! The delivery receipts endpoint: `POST /v1/receipts/{channel_id}/{token}`,
//! also under `/{event}` (Evolution API appends the event name, e.g.
//! `/messages-update`, when an instance sends webhooks by event).
//!
//! Providers call it without an API token: the unguessable per-channel token in
//! the path is the credential (`receipts_url` on the channel), and a wrong one
//! is a 404, the same answer as an unknown channel. The body is Herald's own
//! format or Evolution API's webhook ([`herald_core::receipts::formats`]). A
//! receipt for a message Herald does not know is counted as `unmatched`, never
//! refused: providers report on messages sent by other systems too.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_core::receipts::formats::parse_receipts;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// The answer to a receipts request.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReceiptsResult {
    /// Receipts that named a message Herald sent through this channel (whether
    /// or not they changed its state: duplicates and late receipts match too).
    pub matched: usize,
    /// Receipts that named no such message.
    pub unmatched: usize,
    /// Entries that report nothing Herald counts (an Evolution `SERVER_ACK`, or
    /// another event than `messages.update`).
    pub ignored: usize,
}

fn receipts_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such receipts URL")
}

/// Compares without an early exit, so response times do not reveal how much
/// of a guessed token was right.
fn tokens_match(expected: &str, given: &str) -> bool {
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[utoipa::path(post, path = "/v1/receipts/{channel_id}/{token}",
    params(("channel_id" = Uuid, Path, description = "The channel the messages were sent through"),
           ("token" = String, Path, description = "The channel's receipts token (from its `receipts_url`)")),
    request_body(description = "Herald's format `{\"receipts\": [{\"provider_message_id\", \"status\": \"delivered\" | \"read\" | \"failed\" | \"opted_out\", \"at\", \"reason\"}]}` \
                                (at most 10,000 receipts), or an Evolution API webhook body (`messages.update`; other events are ignored)",
                 content_type = "application/json",
                 content = Object,
                 example = json!({"receipts": [{"provider_message_id": "3EB0A1", "status": "delivered", "at": "2026-11-30T12:00:00Z"}]})),
    responses((status = 200, description = "The receipts are in the ledger", body = ReceiptsResult),
              (status = 400, description = "The body is not valid JSON", body = ErrorBody),
              (status = 404, description = "No such channel, or the token is wrong", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "The body is neither format, or an entry is invalid (the message names it)", body = ErrorBody),
              (status = 503, description = "The ledger cannot be written now; send again", body = ErrorBody)),
    tag = "receipts")]
pub async fn post_receipts(
    State(state): State<AppState>,
    path: Result<Path<(Uuid, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<ReceiptsResult>> {
    let Path((channel_id, token)) = path.map_err(|_| receipts_not_found())?;
    // Over the body limit: 413 in the JSON error shape, not axum's plain text.
    let body = body?;
    receive(state, channel_id, &token, &body).await
}

/// The same endpoint with the event name Evolution API appends.
#[utoipa::path(post, path = "/v1/receipts/{channel_id}/{token}/{event}",
    params(("channel_id" = Uuid, Path, description = "The channel the messages were sent through"),
           ("token" = String, Path, description = "The channel's receipts token"),
           ("event" = String, Path, description = "Ignored: the body says which event it is")),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "The receipts are in the ledger", body = ReceiptsResult),
              (status = 400, description = "The body is not valid JSON", body = ErrorBody),
              (status = 404, description = "No such channel, or the token is wrong", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "The body is neither format", body = ErrorBody),
              (status = 503, description = "The ledger cannot be written now; send again", body = ErrorBody)),
    tag = "receipts")]
pub async fn post_receipts_by_event(
    State(state): State<AppState>,
    path: Result<Path<(Uuid, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<ReceiptsResult>> {
    let Path((channel_id, token, _event)) = path.map_err(|_| receipts_not_found())?;
    let body = body?;
    receive(state, channel_id, &token, &body).await
}

async fn receive(
    state: AppState,
    channel_id: Uuid,
    token: &str,
    body: &[u8],
) -> ApiResult<axum::Json<ReceiptsResult>> {
    let expected = state
        .receipt_tokens
        .token(&state.pool, channel_id)
        .await?
        .ok_or_else(receipts_not_found)?;
    if !tokens_match(&expected, token) {
        return Err(receipts_not_found());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("request body is not valid JSON"))?;
    let parsed = parse_receipts(&value).map_err(|e| ApiError::validation(e.0))?;
    let counts = state
        .receipts
        .apply(channel_id, parsed.receipts)
        .await
        .map_err(|()| ApiError::unavailable("the ledger"))?;
    Ok(axum::Json(ReceiptsResult {
        matched: counts.matched,
        unmatched: counts.unmatched,
        ignored: parsed.ignored,
    }))
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn tokens_match_only_when_equal_in_full() {
        assert!(tokens_match("abc123", "abc123"));
        assert!(!tokens_match("abc123", "abc124"));
        assert!(!tokens_match("abc123", "abc12"));
        assert!(!tokens_match("abc123", ""));
    }
}
