//! Response and request bodies of the HTTP API (also the OpenAPI schemas).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use herald_core::ab::AbTest;
use herald_core::address::AddressKind;
pub use herald_core::auto_pause::AutoPause;
use herald_core::campaigns::{Campaign, Counters, Funnel};
use herald_core::channel::ChannelConfig;
use herald_core::lifecycle::Status;
use herald_core::reason::Reason;
use herald_core::send_window::SendWindow;
use herald_core::template::MessageTemplate;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::state::AppState;

pub use crate::ab_views::*;
pub use crate::channel_views::*;
pub use crate::import_views::*;
pub use crate::lifecycle_views::*;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Message body; minijinja syntax, e.g. `Hi {{ name }}`. A missing variable
    /// renders empty, as does an attribute of a missing object;
    /// `{{ profile.first | default("there") }}` gives a fallback.
    #[schema(min_length = 1)]
    pub body: String,
    /// When true, an import rejects (reason `template_error`) every row that
    /// lacks a top-level variable the body uses, instead of sending it with
    /// blanks. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

impl TemplateSpec {
    /// A stored template (`campaigns.template`); None when it is unreadable.
    pub fn from_stored(template: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(template.clone()).ok()
    }
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
    /// An inline channel config, used by this campaign alone (the provider's
    /// keys, plus the optional `address_kind` and `default_region`).
    #[serde(default)]
    pub channel: Option<ChannelConfig>,
    /// The message; not with `variants`.
    #[serde(default)]
    pub template: Option<TemplateSpec>,
    /// An A/B/n test instead of `template`: 2 to 5 variants, each recipient
    /// assigned one by weight (docs/AB_TESTS.md).
    #[serde(default)]
    #[schema(min_items = 2, max_items = 5)]
    pub variants: Option<Vec<VariantSpec>>,
    /// With `variants`: send a test cohort first, then the rest with the winner.
    #[serde(default)]
    pub ab_test: Option<AbTest>,
    /// When this campaign may send, on top of its channel's window.
    #[serde(default)]
    pub send_window: Option<SendWindow>,
    /// RFC 3339 with an offset (`Z` for UTC).
    #[serde(default, deserialize_with = "crate::timestamps::scheduled_at")]
    pub scheduled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_second: Option<i32>,
    /// Pause by itself when more than `max_failure_rate` of the campaign's
    /// last `window` outcomes failed (across every sender replica).
    #[serde(default)]
    pub auto_pause: Option<AutoPause>,
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
    pub channel: Option<ChannelConfig>,
    pub template: Option<TemplateSpec>,
    /// The campaign's own send window; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SendWindow>)]
    pub send_window: Option<Option<SendWindow>>,
    /// RFC 3339 with an offset (`Z` for UTC).
    #[serde(default, deserialize_with = "crate::timestamps::scheduled_at")]
    pub scheduled_at: Option<DateTime<Utc>>,
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_second: Option<i32>,
    /// The campaign's auto-pause setting; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<AutoPause>)]
    pub auto_pause: Option<Option<AutoPause>>,
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
    /// The message; null for an A/B campaign (see `variants`).
    #[schema(value_type = Option<Object>)]
    pub template: serde_json::Value,
    /// The top-level variables the template (every variant's, for an A/B
    /// campaign) uses, sorted (`{{ profile.first }}` uses `profile`): what
    /// each imported row should carry.
    pub template_variables: Vec<String>,
    /// An A/B campaign's variants with their counters; null otherwise.
    pub variants: Option<Vec<VariantView>>,
    /// Its test-then-winner plan and the winner; null without one.
    pub ab_test: Option<AbTestView>,
    pub scheduled_at: Option<DateTime<Utc>>,
    /// An extra cap for this campaign alone, in messages per second.
    pub rate_limit_per_second: Option<i32>,
    /// The campaign's own send window, if any.
    pub send_window: Option<SendWindow>,
    /// Why a sending campaign is not moving; null when it is not sending or
    /// not waiting.
    pub waiting: Option<WaitingView>,
    /// Pauses the campaign by itself on a failure rate; null when off.
    pub auto_pause: Option<AutoPause>,
    /// Why a paused campaign paused: `failure_rate` after an auto-pause; null
    /// for a manual pause or when not paused.
    pub paused_reason: Option<String>,
    pub counters: Counters,
    /// How far accepted messages got, from delivery receipts: `sent` (accepted
    /// by the provider, bounces included), `delivered` (delivered or read),
    /// `read`, `bounced`.
    pub funnel: Funnel,
    /// Where the campaign's provider sends delivery receipts: its channel's
    /// receipts URL (docs/RECEIPTS.md). Needs no API token; keep it private.
    pub receipts_url: String,
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

impl CampaignView {
    /// The view of `c`, with its receipts URL under the API's public URL.
    pub fn of(c: Campaign, state: &AppState) -> Self {
        let receipts_url = state.receipts_url(c.channel_id, &c.receipts_token);
        let waiting = WaitingView::of(&c);
        let channel = ChannelConfig::redact_stored(c.channel.clone());
        let template_variables: Vec<String> = stored_templates(&c)
            .iter()
            .filter_map(|t| MessageTemplate::compile(&t.body).ok())
            .flat_map(|t| t.variables())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        let (variants, ab_test) = (variant_views(&c), ab_test_view(&c));
        Self {
            id: c.id,
            name: c.name,
            status: c.status,
            version: c.version,
            run_epoch: c.run_epoch,
            channel_id: c.channel_id,
            channel,
            template: c.template,
            template_variables,
            variants,
            ab_test,
            scheduled_at: c.scheduled_at,
            rate_limit_per_second: c.rate_limit_per_second,
            auto_pause: c.auto_pause,
            paused_reason: c.paused_reason.clone(),
            send_window: c.send_window.and_then(|w| serde_json::from_value(w).ok()),
            waiting,
            counters: c.counters,
            funnel: c.funnel,
            receipts_url,
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
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientView {
    pub id: i64,
    /// The normalised address: what is sent to and deduped on.
    pub address: String,
    /// The address as imported, when it differs from `address`; else null.
    pub address_input: Option<String>,
    /// What the address was read as; null for rows imported before Herald
    /// normalised addresses.
    pub address_kind: Option<AddressKind>,
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
    /// An A/B campaign's variant for this recipient (a `rest` recipient's is
    /// the winner's once claimed); null in a plain campaign.
    pub variant: Option<String>,
    /// `test` or `rest` in a campaign with an `ab_test`; else null.
    #[schema(pattern = "^(test|rest)$")]
    pub ab_cohort: Option<String>,
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
