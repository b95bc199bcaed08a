//! Response and request bodies of the HTTP API (also the OpenAPI schemas).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use herald_core::campaigns::{Campaign, Counters};
use herald_core::channel::Channel;
use herald_core::channels::ChannelRow;
use herald_core::lifecycle::Status;
use herald_core::reason::Reason;
use herald_core::send_window::SendWindow;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

pub use crate::lifecycle_views::*;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Message body; minijinja syntax, e.g. `Hi {{ name }}`.
    #[schema(min_length = 1)]
    pub body: String,
}

/// A new campaign: exactly one of `channel_id` (a shared channel) and `channel`
/// (an inline config, which becomes a private channel of this campaign).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// A channel of this tenant (`POST /v1/channels`); its budget is shared.
    #[serde(default)]
    pub channel_id: Option<Uuid>,
    /// An inline channel config, used by this campaign alone.
    #[serde(default)]
    pub channel: Option<Channel>,
    pub template: TemplateSpec,
    /// When this campaign may send, on top of its channel's window.
    #[serde(default)]
    pub send_window: Option<SendWindow>,
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_second: Option<i32>,
}

/// PATCH body: every field optional; only drafts can be edited.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCampaign {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: Option<String>,
    /// Move the draft to this channel of the tenant (not with `channel`).
    pub channel_id: Option<Uuid>,
    /// A new inline config: the draft gets a new private channel.
    pub channel: Option<Channel>,
    pub template: Option<TemplateSpec>,
    /// The campaign's own send window; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SendWindow>)]
    pub send_window: Option<Option<SendWindow>>,
    pub scheduled_at: Option<DateTime<Utc>>,
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_second: Option<i32>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignView {
    pub id: Uuid,
    pub name: String,
    pub status: Status,
    /// Bumped by every change; send it back in `If-Match`.
    pub version: i64,
    pub run_epoch: i32,
    /// The channel this campaign sends through.
    pub channel_id: Uuid,
    /// That channel's config with secrets replaced by `***`.
    #[schema(value_type = Object)]
    pub channel: serde_json::Value,
    #[schema(value_type = Object)]
    pub template: serde_json::Value,
    pub scheduled_at: Option<DateTime<Utc>>,
    /// An extra cap for this campaign alone, in messages per second.
    pub rate_limit_per_second: Option<i32>,
    /// The campaign's own send window, if any.
    pub send_window: Option<SendWindow>,
    /// Why a sending campaign is not moving; null when it is not sending or
    /// not waiting.
    pub waiting: Option<WaitingView>,
    pub counters: Counters,
    /// Failed and skipped recipients counted by reason code (the codes of
    /// `reason` on a recipient); only codes with a non-zero count appear, `{}`
    /// when none do. Maintained with the counters, not counted from the ledger
    /// on each read.
    #[schema(value_type = std::collections::BTreeMap<Reason, i64>, example = json!({"suppressed": 2, "campaign_stopped": 40}))]
    pub reasons: BTreeMap<String, i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<Campaign> for CampaignView {
    fn from(c: Campaign) -> Self {
        let waiting = WaitingView::of(&c);
        let channel = serde_json::from_value::<Channel>(c.channel.clone())
            .map(|ch| ch.redacted())
            .unwrap_or(serde_json::Value::Null);
        Self {
            id: c.id,
            name: c.name,
            status: c.status,
            version: c.version,
            run_epoch: c.run_epoch,
            channel_id: c.channel_id,
            channel,
            template: c.template,
            scheduled_at: c.scheduled_at,
            rate_limit_per_second: c.rate_limit_per_second,
            send_window: c.send_window.and_then(|w| serde_json::from_value(w).ok()),
            waiting,
            counters: c.counters,
            reasons: c.reasons,
            created_at: c.created_at,
            updated_at: c.updated_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
        }
    }
}

/// Why a sending campaign is not moving right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaitingView {
    /// `rate_limit`, `send_window`, `daily_cap` or `ab_decision`.
    #[schema(pattern = "^(rate_limit|send_window|daily_cap|ab_decision)$")]
    pub reason: String,
    /// When it expects to move again (RFC 3339); null when it cannot tell.
    pub until: Option<DateTime<Utc>>,
}

impl WaitingView {
    /// The campaign's wait, shown only while it is sending.
    pub fn of(campaign: &Campaign) -> Option<Self> {
        campaign
            .waiting
            .clone()
            .filter(|_| campaign.status == Status::Sending)
            .map(|w| WaitingView {
                reason: w.reason,
                until: w.until,
            })
    }
}

/// For PATCH fields where `null` means "remove": absent is `None`, `null` is
/// `Some(None)`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

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
    /// The provider config, as a campaign's inline `channel` takes it.
    pub config: Channel,
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
    pub config: Option<Channel>,
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
    /// The provider config with `secret` and `api_key` replaced by `***`.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Null when the channel has no limit.
    pub rate_limit: Option<RateLimit>,
    /// Null when the channel may always send.
    pub send_window: Option<SendWindow>,
    /// Bumped by every change.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ChannelRow> for ChannelView {
    fn from(row: ChannelRow) -> Self {
        let config = serde_json::from_value::<Channel>(row.config)
            .map(|ch| ch.redacted())
            .unwrap_or(serde_json::Value::Null);
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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignPage {
    pub items: Vec<CampaignView>,
    /// Pass as `cursor` to get the next page; null on the last page. Opaque
    /// (URL-safe base64).
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<Status>,
    /// Opaque: the `next_cursor` of the previous page, passed back unchanged
    /// (URL-safe base64 without padding); anything else is a 422.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    /// 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Whether any string or key in `value` holds U+0000, which Postgres `text` and
/// `jsonb` cannot store (the insert would fail with a server error).
pub fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || contains_nul(item)),
        _ => false,
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientInput {
    pub address: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientImport {
    pub recipients: Vec<RecipientInput>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedRow {
    /// 1-based data row (CSV: not counting the header line).
    pub row: u64,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportResult {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// The first 1,000 rejected rows with their reasons.
    pub rejected_rows: Vec<RejectedRow>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientView {
    pub id: i64,
    pub address: String,
    #[schema(value_type = Object)]
    pub variables: serde_json::Value,
    pub status: String,
    /// Why a `failed` or `skipped` recipient ended so, as a code; null otherwise.
    #[schema(value_type = Option<Reason>)]
    pub reason: Option<String>,
    /// Provider requests made for this recipient, across every run.
    pub attempts: i32,
    /// Why it failed or was skipped, for people (beside `reason`). A pending
    /// recipient may keep its last transient error from before a pause.
    pub last_error: Option<String>,
    pub provider_message_id: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientPage {
    pub items: Vec<RecipientView>,
    /// Pass as `cursor` to get the next page (the last recipient's id, as
    /// decimal digits); null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecipientQuery {
    /// pending, sending, sent, failed or skipped.
    #[param(pattern = "^(pending|sending|sent|failed|skipped)$")]
    pub status: Option<String>,
    /// Only recipients with this reason code (failed or skipped ones): one of
    /// suppressed, campaign_stopped, campaign_failed, invalid_address,
    /// template_error, provider_rejected, retries_exhausted, bounced.
    #[param(value_type = Option<Reason>)]
    pub reason: Option<String>,
    /// The `next_cursor` of the previous page, passed back unchanged: the id of
    /// the last recipient seen (decimal digits); anything else is a 422.
    #[param(pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}
