//! The campaign projection row and the reads every service shares.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::lifecycle::Status;

/// One row of `campaigns`.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// The channel this campaign sends through (`channels.id`).
    pub channel_id: Uuid,
    /// The provider config of that channel, secrets included; Null if unreadable.
    pub channel: serde_json::Value,
    pub template: serde_json::Value,
    pub status: Status,
    pub version: i64,
    pub run_epoch: i32,
    pub packed_epoch: i32,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub rate_limit_per_second: Option<i32>,
    /// The campaign's own send window (a `SendWindow` as JSON), if any.
    pub send_window: Option<serde_json::Value>,
    /// Why the campaign is not moving, as the sender last recorded it
    /// (`campaign_waits`); None when it is not waiting.
    pub waiting: Option<Waiting>,
    pub counters: Counters,
    /// How far accepted messages got, from delivery receipts.
    pub funnel: Funnel,
    /// The token of the channel's receipts URL (`/v1/receipts/{channel_id}/{token}`).
    pub receipts_token: String,
    /// Pause by itself when too many of the latest outcomes fail.
    pub auto_pause: Option<crate::auto_pause::AutoPause>,
    /// Why a paused campaign paused, from its last `paused` event's `reason`
    /// (`failure_rate` for an auto-pause); None for a manual pause or when not
    /// paused.
    pub paused_reason: Option<String>,
    /// Failed and skipped recipients by reason code (`crate::reason::Reason`
    /// names; only non-zero counts), from `campaign_reason_counts`.
    pub reasons: BTreeMap<String, i64>,
    /// An A/B campaign's variants (`[{"name", "template", "weight"}]`, see
    /// `crate::ab`); None for a plain campaign.
    pub variants: Option<serde_json::Value>,
    /// Its test-then-winner plan (`crate::ab::AbTest` as JSON), if any.
    pub ab_test: Option<serde_json::Value>,
    /// The winner, once decided.
    pub ab_winner: Option<String>,
    pub ab_decided_at: Option<DateTime<Utc>>,
    /// Counters per variant name (`campaign_variant_counts`, migration 0012).
    pub variant_counts: BTreeMap<String, crate::ab::VariantCounters>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A row of `campaign_waits`: why a sending campaign is not moving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `rate_limit`, `send_window`, `daily_cap` or `ab_decision`.
    pub reason: String,
    /// When the sender expects to move again; None when it cannot tell.
    pub until: Option<DateTime<Utc>>,
}

/// Recipients per ledger state.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Counters {
    pub total: i64,
    pub pending: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    pub skipped: i64,
}

/// The delivery funnel, from delivery receipts (docs/RECEIPTS.md).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Funnel {
    /// Messages the provider accepted: recipients `sent`, plus those a
    /// provider bounced afterwards.
    pub sent: i64,
    /// Messages delivered or read.
    pub delivered: i64,
    /// Messages read.
    pub read: i64,
    /// Messages the provider failed after accepting them (recipients now
    /// `failed` with reason `bounced`).
    pub bounced: i64,
}

/// The columns a [`Campaign`] is read from, for `SELECT ... FROM campaigns` and
/// `RETURNING` (the table must not be aliased). The ledger counters are the
/// campaign's own columns (what imports write) plus its counter shards (what
/// claims, marks and releases write; see migrations/0002_hot_ledger.sql).
/// `channel` is the config of the campaign's channel row (the campaign's own
/// `channel` column is legacy and no longer written), and `waiting_reason` /
/// `waiting_until` come from `campaign_waits`, the funnel (`delivered_count`,
/// `read_count`, `bounced_count`) from the counter shards (migration 0009), and `reasons` (a JSON object of
/// counts by reason code) from `campaign_reason_counts` (migration 0008), and
/// `variant_counts` (counters by variant name) from `campaign_variant_counts`
/// (migration 0012; `crate::ab::VARIANT_COUNTS_SQL`, repeated here because a
/// `const` cannot be concatenated from another).
pub const CAMPAIGN_COLUMNS: &str = "id, tenant_id, name, channel_id, \
    (SELECT ch.config FROM channels ch WHERE ch.id = campaigns.channel_id) AS channel, \
    template, status, version, run_epoch, \
    packed_epoch, scheduled_at, rate_limit_per_second, send_window, auto_pause, \
    (SELECT e.payload->>'reason' FROM campaign_events e WHERE e.campaign_id = campaigns.id \
     AND campaigns.status = 'paused' AND e.type = 'paused' ORDER BY e.seq DESC LIMIT 1) AS paused_reason, \
    (SELECT w.reason FROM campaign_waits w WHERE w.campaign_id = campaigns.id) AS waiting_reason, \
    (SELECT w.until FROM campaign_waits w WHERE w.campaign_id = campaigns.id) AS waiting_until, \
    total_count, \
    pending_count + (SELECT coalesce(sum(d.pending), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS pending_count, \
    sending_count + (SELECT coalesce(sum(d.sending), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS sending_count, \
    sent_count + (SELECT coalesce(sum(d.sent), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS sent_count, \
    failed_count + (SELECT coalesce(sum(d.failed), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS failed_count, \
    skipped_count + (SELECT coalesce(sum(d.skipped), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS skipped_count, \
    (SELECT coalesce(sum(d.delivered), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS delivered_count, \
    (SELECT coalesce(sum(d.read), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS read_count, \
    (SELECT coalesce(sum(d.bounced), 0)::bigint FROM campaign_counter_deltas d WHERE d.campaign_id = campaigns.id) AS bounced_count, \
    (SELECT ch.receipts_token FROM channels ch WHERE ch.id = campaigns.channel_id) AS receipts_token, \
    (SELECT coalesce(jsonb_object_agg(x.reason, x.n), '{}'::jsonb) \
     FROM (SELECT rc.reason, sum(rc.count)::bigint AS n FROM campaign_reason_counts rc \
           WHERE rc.campaign_id = campaigns.id GROUP BY rc.reason HAVING sum(rc.count) <> 0) x) AS reasons, \
    variants, ab_test, ab_winner, ab_decided_at, \
    (SELECT coalesce(jsonb_object_agg(x.variant, to_jsonb(x) - 'variant'), '{}'::jsonb) \
     FROM (SELECT vc.variant, sum(vc.recipients)::bigint AS recipients, \
                  sum(vc.test_recipients)::bigint AS test_recipients, sum(vc.sent)::bigint AS sent, \
                  sum(vc.failed)::bigint AS failed, sum(vc.delivered)::bigint AS delivered, \
                  sum(vc.read)::bigint AS read \
           FROM campaign_variant_counts vc WHERE vc.campaign_id = campaigns.id GROUP BY vc.variant) x) AS variant_counts, \
    created_at, updated_at, started_at, finished_at";

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Campaign {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            channel_id: row.try_get("channel_id")?,
            channel: row
                .try_get::<Option<serde_json::Value>, _>("channel")?
                .unwrap_or_default(),
            template: row.try_get("template")?,
            status: status
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            version: row.try_get("version")?,
            run_epoch: row.try_get("run_epoch")?,
            packed_epoch: row.try_get("packed_epoch")?,
            scheduled_at: row.try_get("scheduled_at")?,
            rate_limit_per_second: row.try_get("rate_limit_per_second")?,
            send_window: row.try_get("send_window")?,
            auto_pause: row
                .try_get::<Option<serde_json::Value>, _>("auto_pause")?
                .and_then(|v| serde_json::from_value(v).ok()),
            paused_reason: row.try_get("paused_reason")?,
            waiting: row
                .try_get::<Option<String>, _>("waiting_reason")?
                .map(|reason| -> Result<Waiting, sqlx::Error> {
                    Ok(Waiting {
                        reason,
                        until: row.try_get("waiting_until")?,
                    })
                })
                .transpose()?,
            counters: Counters {
                total: row.try_get("total_count")?,
                pending: row.try_get("pending_count")?,
                sending: row.try_get("sending_count")?,
                sent: row.try_get("sent_count")?,
                failed: row.try_get("failed_count")?,
                skipped: row.try_get("skipped_count")?,
            },
            funnel: {
                let bounced: i64 = row.try_get("bounced_count")?;
                Funnel {
                    sent: row.try_get::<i64, _>("sent_count")? + bounced,
                    delivered: row.try_get("delivered_count")?,
                    read: row.try_get("read_count")?,
                    bounced,
                }
            },
            receipts_token: row
                .try_get::<Option<String>, _>("receipts_token")?
                .unwrap_or_default(),
            reasons: serde_json::from_value(row.try_get::<serde_json::Value, _>("reasons")?)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            variants: row.try_get("variants")?,
            ab_test: row.try_get("ab_test")?,
            ab_winner: row.try_get("ab_winner")?,
            ab_decided_at: row.try_get("ab_decided_at")?,
            variant_counts: serde_json::from_value(
                row.try_get::<serde_json::Value, _>("variant_counts")?,
            )
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

/// Reads one campaign, optionally scoped to a tenant (API callers always scope).
pub async fn fetch_campaign<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    tenant: Option<Uuid>,
) -> Result<Option<Campaign>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await
}

/// Just the status: what the sender's cache re-reads.
pub async fn fetch_status<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<Status>, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    status
        .map(|s| s.parse().map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}
