//! Request and response bodies of the channel endpoints (also OpenAPI schemas).

use chrono::{DateTime, Utc};
use herald_core::channel::ChannelConfig;
use herald_core::channels::ChannelRow;
use herald_core::send_window::SendWindow;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::AppState;
use crate::views::present;

/// A channel's send budget, shared by every campaign on the channel.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests started per second across every replica; 1 to 100000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub per_second: Option<i32>,
    /// Requests started per local calendar day (the window's time zone, UTC
    /// without one); 1 to 1000000000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000000)]
    pub per_day: Option<i32>,
}

/// A new channel.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// The provider config, as a campaign's inline `channel` takes it, with
    /// the optional `address_kind` and `default_region` beside the provider's
    /// keys.
    pub config: ChannelConfig,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub send_window: Option<SendWindow>,
}

/// PATCH body of a channel: any field; `null` removes `rate_limit` or
/// `send_window`. `config` is replaced whole (secrets included).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: Option<String>,
    pub config: Option<ChannelConfig>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SendWindow>)]
    pub send_window: Option<Option<SendWindow>>,
}

/// A channel as clients see it: secrets in `config` are `***`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelView {
    pub id: Uuid,
    pub name: String,
    /// The provider config (addressing keys included) with `secret` and
    /// `api_key` replaced by `***`.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Null when the channel has no limit.
    pub rate_limit: Option<RateLimit>,
    /// Null when the channel may always send.
    pub send_window: Option<SendWindow>,
    /// Bumped by every change.
    pub version: i64,
    /// Where providers send delivery receipts for this channel's messages:
    /// `{public_url}/v1/receipts/{id}/{token}`, callable without an API token
    /// (the token in it is the credential; docs/RECEIPTS.md).
    pub receipts_url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ChannelView {
    /// The view of `row`, secrets masked, with its receipts URL.
    pub fn of(row: ChannelRow, state: &AppState) -> Self {
        let receipts_url = state.receipts_url(row.id, &row.receipts_token);
        let config = ChannelConfig::redact_stored(row.config);
        let rate_limit = (row.per_second.is_some() || row.per_day.is_some()).then_some(RateLimit {
            per_second: row.per_second,
            per_day: row.per_day,
        });
        Self {
            id: row.id,
            name: row.name,
            config,
            rate_limit,
            send_window: row.send_window.and_then(|w| serde_json::from_value(w).ok()),
            version: row.version,
            receipts_url,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelPage {
    pub items: Vec<ChannelView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChannelListQuery {
    /// Opaque: the `next_cursor` of the previous page, passed back unchanged
    /// (URL-safe base64 without padding); anything else is a 422.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    /// 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}
