//! Channels as a resource: the rows of `channels` (migrations/0003_scheduling.sql)
//! and the statements the API runs on them.
//!
//! A channel is one sending identity of a tenant (one WhatsApp number, one webhook
//! endpoint): its provider `config` (a [`crate::channel::Channel`] as JSON), its
//! optional send budget (`per_second`, `per_day`) shared by every campaign that
//! references it, and its optional send window. A campaign created with an inline
//! channel object gets a `private` channel of its own: never listed, never
//! readable through `/v1/channels`, never usable by another campaign.
//!
//! Deleting is soft (`deleted_at`): campaigns that sent through a channel keep
//! referencing it, but none may start, schedule or retry on it any more. Every
//! read here skips deleted rows; the public reads also skip private ones.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

/// One row of `channels`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// The provider config, secrets included (redact before showing it).
    pub config: serde_json::Value,
    /// Requests started per second across every campaign and replica; None: no limit.
    pub per_second: Option<i32>,
    /// Requests started per local calendar day; None: no limit.
    pub per_day: Option<i32>,
    /// A [`crate::send_window::SendWindow`] as JSON; None: always open.
    pub send_window: Option<serde_json::Value>,
    pub private: bool,
    /// 1 on insert, bumped by every update.
    pub version: i64,
    /// The secret part of the channel's receipts URL (migration 0009).
    pub receipts_token: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const CHANNEL_COLUMNS: &str = "id, tenant_id, name, config, per_second, per_day, send_window, \
    private, version, receipts_token, created_at, updated_at";

/// The receipts token of a channel that receipts may be sent to (not
/// deleted; private channels included: their campaigns get receipts too).
pub async fn receipts_token<'e>(
    db: impl PgExecutor<'e>,
    channel_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT receipts_token FROM channels WHERE id = $1 AND deleted_at IS NULL")
        .bind(channel_id)
        .fetch_optional(db)
        .await
}

/// What a new channel row holds (the id is chosen here).
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub name: String,
    pub config: serde_json::Value,
    pub per_second: Option<i32>,
    pub per_day: Option<i32>,
    pub send_window: Option<serde_json::Value>,
    pub private: bool,
}

impl NewChannel {
    /// The private channel behind a campaign's inline channel object: named
    /// `campaign <name>` (at most 200 characters), no limits, no window.
    pub fn private_for(campaign_name: &str, config: serde_json::Value) -> Self {
        Self {
            name: format!("campaign {campaign_name}")
                .chars()
                .take(200)
                .collect(),
            config,
            per_second: None,
            per_day: None,
            send_window: None,
            private: true,
        }
    }
}

/// Inserts a channel of `tenant` and returns the stored row.
pub async fn insert_channel<'e>(
    db: impl PgExecutor<'e>,
    tenant: Uuid,
    new: &NewChannel,
) -> Result<ChannelRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO channels (id, tenant_id, name, config, per_second, per_day, send_window, private)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {CHANNEL_COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(&new.name)
    .bind(&new.config)
    .bind(new.per_second)
    .bind(new.per_day)
    .bind(&new.send_window)
    .bind(new.private)
    .fetch_one(db)
    .await
}

/// One page of a tenant's listed channels, newest first: not private, not
/// deleted, strictly after the `(created_at, id)` cursor when one is given.
pub async fn list_channel_page<'e>(
    db: impl PgExecutor<'e>,
    tenant: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ChannelRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLUMNS} FROM channels
         WHERE tenant_id = $1 AND NOT private AND deleted_at IS NULL
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    )))
    .bind(tenant)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A tenant's channel as `/v1/channels/{id}` and `channel_id` see it: None when
/// it does not exist, belongs to another tenant, is private or is deleted.
pub async fn fetch_channel<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    tenant: Uuid,
) -> Result<Option<ChannelRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLUMNS} FROM channels
         WHERE id = $1 AND tenant_id = $2 AND NOT private AND deleted_at IS NULL"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await
}

/// [`fetch_channel`] with the row locked until the transaction ends, so an
/// update or a delete and the checks before it see the same row.
pub async fn lock_channel(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    tenant: Uuid,
) -> Result<Option<ChannelRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLUMNS} FROM channels
         WHERE id = $1 AND tenant_id = $2 AND NOT private AND deleted_at IS NULL FOR UPDATE"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await
}

/// Whether `id` names a channel `tenant` may send through (listed: not private,
/// not deleted), holding a share lock until the transaction ends so that the
/// channel cannot be deleted while a campaign is pointed at it.
pub async fn claim_shared_channel(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    tenant: Uuid,
) -> Result<bool, sqlx::Error> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM channels
         WHERE id = $1 AND tenant_id = $2 AND NOT private AND deleted_at IS NULL FOR SHARE",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(found.is_some())
}

/// The new state of an existing channel (the caller merges the changes in).
#[derive(Debug, Clone)]
pub struct ChannelUpdate {
    pub name: String,
    pub config: serde_json::Value,
    pub per_second: Option<i32>,
    pub per_day: Option<i32>,
    pub send_window: Option<serde_json::Value>,
}

impl From<ChannelRow> for ChannelUpdate {
    fn from(row: ChannelRow) -> Self {
        Self {
            name: row.name,
            config: row.config,
            per_second: row.per_second,
            per_day: row.per_day,
            send_window: row.send_window,
        }
    }
}

/// Writes `update` over channel `id`, bumps `version` and `updated_at`.
pub async fn update_channel(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    update: &ChannelUpdate,
) -> Result<ChannelRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE channels SET name = $2, config = $3, per_second = $4, per_day = $5,
             send_window = $6, version = version + 1, updated_at = now()
         WHERE id = $1 RETURNING {CHANNEL_COLUMNS}"
    )))
    .bind(id)
    .bind(&update.name)
    .bind(&update.config)
    .bind(update.per_second)
    .bind(update.per_day)
    .bind(&update.send_window)
    .fetch_one(&mut **tx)
    .await
}

/// How many campaigns send through channel `id` now or will without anyone
/// acting (status `sending`, `paused` or `scheduled`): a channel they use
/// cannot be deleted. Every campaign on the channel is locked until the
/// transaction ends, so a start or schedule that races the delete is either
/// counted here, or waits for it and then finds the channel deleted
/// ([`is_deleted`]).
pub async fn count_active_campaigns(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE status IN ('sending', 'paused', 'scheduled'))
         FROM (SELECT status FROM campaigns WHERE channel_id = $1 FOR UPDATE) AS using_it",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await
}

/// Whether channel `id` was deleted: a campaign on it may no longer start,
/// schedule or retry (drafts and finished campaigns keep naming it). A plain
/// read, not a lock: the delete locks the channel and then the campaigns, while
/// a transition holds its campaign first, so locking here could deadlock;
/// [`count_active_campaigns`] orders the two instead.
pub async fn is_deleted(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM channels WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map(|deleted| deleted.unwrap_or(false))
}

/// Marks channel `id` deleted (kept for the campaigns that reference it).
pub async fn soft_delete_channel(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE channels SET deleted_at = now(), updated_at = now(), version = version + 1
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Gives channel `id` a new receipts token, as unguessable as the one it was
/// created with (256 bits; migrations/0009_delivery_receipts.sql), so its old
/// receipts URL stops working; bumps its version. Returns the channel as it is
/// now. The caller has locked the row and checked who may rotate it.
pub async fn rotate_receipts_token(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<ChannelRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE channels SET receipts_token = replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                version = version + 1, updated_at = now()
         WHERE id = $1 RETURNING {CHANNEL_COLUMNS}"
    )))
    .bind(id)
    .fetch_one(&mut **tx)
    .await
}

/// The channel campaign `campaign` of `tenant` sends through, locked until the
/// transaction ends: its id and whether it is the campaign's private one.
/// `None` when the campaign is not the tenant's.
pub async fn lock_campaign_channel(
    tx: &mut Transaction<'_, Postgres>,
    campaign: Uuid,
    tenant: Uuid,
) -> Result<Option<(Uuid, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ch.id, ch.private FROM campaigns c JOIN channels ch ON ch.id = c.channel_id
         WHERE c.id = $1 AND c.tenant_id = $2 FOR UPDATE OF ch",
    )
    .bind(campaign)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await
}

/// Soft-deletes channel `id` only if it is private: what happens to a draft's
/// own channel when the draft moves to another channel.
pub async fn retire_private_channel(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE channels SET deleted_at = now(), updated_at = now()
         WHERE id = $1 AND private AND deleted_at IS NULL",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A new private channel with the config, limits and window of channel `source`
/// (a duplicated campaign's own channel, with a budget of its own). None when
/// `source` does not exist.
pub async fn copy_private_channel(
    tx: &mut Transaction<'_, Postgres>,
    source: Uuid,
    campaign_name: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let id = Uuid::new_v4();
    let copied = sqlx::query(
        "INSERT INTO channels (id, tenant_id, name, config, per_second, per_day, send_window, private)
         SELECT $1, tenant_id, left('campaign ' || $3, 200), config, per_second, per_day, send_window, true
         FROM channels WHERE id = $2",
    )
    .bind(id)
    .bind(source)
    .bind(campaign_name)
    .execute(&mut **tx)
    .await?;
    Ok((copied.rows_affected() == 1).then_some(id))
}

/// Whether channel `id` is a private one (None when it does not exist).
pub async fn is_private<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT private FROM channels WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}
