//! Checks and helpers the resource handlers share: names, channel configs, send
//! windows, rate limits and list cursors. Every failure is a 422 naming the field.

use base64::Engine;
use chrono::{DateTime, Utc};
use herald_core::channel::ChannelConfig;
use herald_core::send_window::SendWindow;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::views::{RateLimit, contains_nul};

/// 1 to 200 characters, not only white space, no NUL.
pub fn validate_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation("name must be 1 to 200 characters"));
    }
    if name.contains('\0') {
        return Err(ApiError::validation("name must not contain NUL characters"));
    }
    Ok(())
}

/// [`ChannelConfig::validate`] (the provider's fields, `address_kind` and
/// `default_region`), plus no NUL anywhere (Postgres `jsonb` cannot hold it).
pub fn validate_channel(channel: &ChannelConfig) -> ApiResult<()> {
    channel.validate().map_err(ApiError::validation)?;
    if contains_nul(&channel.to_json()) {
        return Err(ApiError::validation(
            "channel must not contain NUL characters",
        ));
    }
    Ok(())
}

/// [`SendWindow::compile`]: an IANA time zone, `HH:MM` times that differ, a day.
pub fn validate_window(window: &SendWindow) -> ApiResult<()> {
    window.compile().map(drop).map_err(ApiError::validation)
}

/// `per_second` 1 to 100000 and `per_day` 1 to 1000000000, each optional.
pub fn validate_rate_limit(rate: &RateLimit) -> ApiResult<()> {
    if rate.per_second.is_some_and(|r| !(1..=100_000).contains(&r)) {
        return Err(ApiError::validation(
            "rate_limit.per_second must be between 1 and 100000",
        ));
    }
    if rate
        .per_day
        .is_some_and(|r| !(1..=1_000_000_000).contains(&r))
    {
        return Err(ApiError::validation(
            "rate_limit.per_day must be between 1 and 1000000000",
        ));
    }
    Ok(())
}

/// A window as stored in a `jsonb` column.
pub fn window_json(window: Option<&SendWindow>) -> Option<serde_json::Value> {
    window.map(|w| serde_json::to_value(w).unwrap_or_default())
}

/// The opaque cursor after the row `(created_at, id)`: base64 of `created_at|id`.
pub fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{id}", created_at.to_rfc3339()))
}

/// Reads a cursor from [`encode_cursor`]; 422 when it is not one.
pub fn decode_cursor(cursor: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
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

/// A list's page size: 1 to 500, 50 when not given.
pub fn page_limit(limit: Option<i64>) -> ApiResult<i64> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 500"));
    }
    Ok(limit)
}
