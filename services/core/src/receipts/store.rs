//! Applying receipts to the ledger: one transaction per batch, whatever its
//! size, so a burst of webhooks costs a few round trips rather than one per
//! receipt.
//!
//! The batch's messages are locked in key order (`FOR UPDATE`, ordered by
//! channel and provider id), so two batches that share messages wait for each
//! other instead of deadlocking, and each receipt is applied to the state the
//! previous one left: duplicates and reordered receipts inside one batch or
//! across batches count once. Then, each in one statement: the moved messages,
//! the bounced recipients (`sent` to `failed`, reason `bounced`), the funnel and
//! ledger counters and reason counts of each campaign (in campaign order), an
//! A/B campaign's counters per variant (the variant the message was sent with
//! is on its `provider_messages` row), and the opted-out addresses on their
//! tenant's suppression list.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{FunnelDelta, MessageState, Receipt, ReceiptStatus};

/// What a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedReceipts {
    /// Per input receipt, in order: whether its message is known.
    pub matched: Vec<bool>,
    /// Funnel changes by campaign (only campaigns something happened to).
    pub by_campaign: BTreeMap<Uuid, FunnelDelta>,
}

/// One message as locked, and where the batch moves it.
struct Tracked {
    campaign_id: Uuid,
    recipient_id: i64,
    /// The A/B variant the message was rendered with; None in a plain campaign.
    variant: Option<String>,
    before: MessageState,
    state: MessageState,
    delivered_at: Option<DateTime<Utc>>,
    read_at: Option<DateTime<Utc>>,
    bounced_at: Option<DateTime<Utc>>,
    bounce_reason: Option<String>,
}

type MessageKey = (Uuid, String);

/// Applies `receipts` (each with the channel it came in on) in one transaction.
pub async fn apply_receipts(
    pool: &PgPool,
    receipts: &[(Uuid, Receipt)],
) -> Result<AppliedReceipts, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut messages = lock_messages(&mut tx, receipts).await?;
    let now = Utc::now();
    let mut applied = AppliedReceipts::default();
    let mut opt_outs: Vec<(Uuid, i64, Option<String>)> = Vec::new();
    for (channel_id, receipt) in receipts {
        let key = (*channel_id, receipt.provider_message_id.clone());
        let Some(message) = messages.get_mut(&key) else {
            applied.matched.push(false);
            continue;
        };
        applied.matched.push(true);
        let at = receipt.at.unwrap_or(now);
        if receipt.status == ReceiptStatus::OptedOut {
            opt_outs.push((
                message.campaign_id,
                message.recipient_id,
                receipt.reason.clone(),
            ));
            applied
                .by_campaign
                .entry(message.campaign_id)
                .or_default()
                .opted_out += 1;
            continue;
        }
        let Some(next) = message.state.advance(receipt.status) else {
            continue;
        };
        match next {
            MessageState::Delivered => message.delivered_at = Some(at),
            MessageState::Read => {
                message.delivered_at.get_or_insert(at);
                message.read_at = Some(at);
            }
            MessageState::Bounced => {
                message.bounced_at = Some(at);
                message.bounce_reason = receipt.reason.clone();
            }
            MessageState::Sent => {}
        }
        message.state = next;
    }
    let moved: Vec<(&MessageKey, &Tracked)> = messages
        .iter()
        .filter(|(_, m)| m.state != m.before)
        .collect();
    for (_, message) in &moved {
        let funnel = FunnelDelta::of_move(message.before, message.state);
        applied
            .by_campaign
            .entry(message.campaign_id)
            .or_default()
            .add(funnel);
    }
    write_moves(&mut tx, &moved).await?;
    let bounced = bounce_recipients(&mut tx, &moved).await?;
    // Counter tables in the order every ledger statement writes them (variant
    // counts, reason counts, counter deltas; a `WITH` statement runs its
    // unreferenced write steps last-defined first), so a receipt batch and a
    // sender's mark never wait on each other in a cycle.
    add_to_variant_counters(&mut tx, &moved).await?;
    add_to_counters(&mut tx, &applied.by_campaign, &bounced).await?;
    suppress_opt_outs(&mut tx, &opt_outs).await?;
    tx.commit().await?;
    applied.by_campaign.retain(|_, funnel| !funnel.is_empty());
    Ok(applied)
}

async fn lock_messages(
    tx: &mut Transaction<'_, Postgres>,
    receipts: &[(Uuid, Receipt)],
) -> Result<HashMap<MessageKey, Tracked>, sqlx::Error> {
    let channels: Vec<Uuid> = receipts.iter().map(|(c, _)| *c).collect();
    let ids: Vec<&str> = receipts
        .iter()
        .map(|(_, r)| r.provider_message_id.as_str())
        .collect();
    let rows: Vec<(Uuid, String, Uuid, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT m.channel_id, m.provider_message_id, m.campaign_id, m.recipient_id, m.state, m.variant
         FROM provider_messages m
         WHERE (m.channel_id, m.provider_message_id) IN
               (SELECT * FROM unnest($1::uuid[], $2::text[]))
         ORDER BY m.channel_id, m.provider_message_id
         FOR UPDATE",
    )
    .bind(&channels)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(channel, id, campaign_id, recipient_id, state, variant)| {
            let state = MessageState::parse(&state).unwrap_or(MessageState::Sent);
            let tracked = Tracked {
                campaign_id,
                recipient_id,
                variant,
                before: state,
                state,
                delivered_at: None,
                read_at: None,
                bounced_at: None,
                bounce_reason: None,
            };
            ((channel, id), tracked)
        })
        .collect())
}

async fn write_moves(
    tx: &mut Transaction<'_, Postgres>,
    moved: &[(&MessageKey, &Tracked)],
) -> Result<(), sqlx::Error> {
    if moved.is_empty() {
        return Ok(());
    }
    let channels: Vec<Uuid> = moved.iter().map(|((c, _), _)| *c).collect();
    let ids: Vec<&str> = moved.iter().map(|((_, id), _)| id.as_str()).collect();
    let states: Vec<&str> = moved.iter().map(|(_, m)| m.state.as_str()).collect();
    let delivered: Vec<Option<DateTime<Utc>>> = moved.iter().map(|(_, m)| m.delivered_at).collect();
    let read: Vec<Option<DateTime<Utc>>> = moved.iter().map(|(_, m)| m.read_at).collect();
    let bounced: Vec<Option<DateTime<Utc>>> = moved.iter().map(|(_, m)| m.bounced_at).collect();
    sqlx::query(
        "UPDATE provider_messages m SET state = u.state,
                delivered_at = coalesce(m.delivered_at, u.delivered_at),
                read_at = coalesce(m.read_at, u.read_at),
                bounced_at = coalesce(m.bounced_at, u.bounced_at)
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[])
              AS u(channel_id, provider_message_id, state, delivered_at, read_at, bounced_at)
         WHERE m.channel_id = u.channel_id AND m.provider_message_id = u.provider_message_id",
    )
    .bind(&channels)
    .bind(&ids)
    .bind(&states)
    .bind(&delivered)
    .bind(&read)
    .bind(&bounced)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves bounced recipients from `sent` to `failed` (reason `bounced`); returns
/// how many moved per campaign.
async fn bounce_recipients(
    tx: &mut Transaction<'_, Postgres>,
    moved: &[(&MessageKey, &Tracked)],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let bounces: Vec<&Tracked> = moved
        .iter()
        .map(|(_, m)| *m)
        .filter(|m| m.state == MessageState::Bounced)
        .collect();
    if bounces.is_empty() {
        return Ok(HashMap::new());
    }
    let campaigns: Vec<Uuid> = bounces.iter().map(|m| m.campaign_id).collect();
    let ids: Vec<i64> = bounces.iter().map(|m| m.recipient_id).collect();
    let errors: Vec<String> = bounces
        .iter()
        .map(|m| match &m.bounce_reason {
            Some(reason) => format!("bounced: {reason}"),
            None => "bounced: the provider reported the message failed".to_owned(),
        })
        .collect();
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH upd AS (
             UPDATE recipients r SET status = 'failed', reason = 'bounced', last_error = b.error,
                    updated_at = now()
             FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS b(campaign_id, id, error)
             WHERE r.campaign_id = b.campaign_id AND r.id = b.id AND r.status = 'sent'
             RETURNING r.campaign_id
         )
         SELECT campaign_id, count(*) FROM upd GROUP BY campaign_id",
    )
    .bind(&campaigns)
    .bind(&ids)
    .bind(&errors)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Adds the funnel changes, and each bounce's move from sent to failed, to one
/// counter shard per campaign, in campaign order (like every counter write).
async fn add_to_counters(
    tx: &mut Transaction<'_, Postgres>,
    funnels: &BTreeMap<Uuid, FunnelDelta>,
    bounced: &HashMap<Uuid, i64>,
) -> Result<(), sqlx::Error> {
    let changed: Vec<(&Uuid, &FunnelDelta)> = funnels
        .iter()
        .filter(|(_, f)| f.delivered + f.read + f.bounced != 0)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let campaigns: Vec<Uuid> = changed.iter().map(|(c, _)| **c).collect();
    let delivered: Vec<i64> = changed.iter().map(|(_, f)| f.delivered).collect();
    let read: Vec<i64> = changed.iter().map(|(_, f)| f.read).collect();
    let moved: Vec<i64> = changed
        .iter()
        .map(|(c, _)| bounced.get(*c).copied().unwrap_or(0))
        .collect();
    let shard = i16::from(rand::random::<u8>() % 16);
    sqlx::query(
        "WITH u AS (
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
                 AS u(campaign_id, delivered, read, bounced)
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, sent, failed, delivered, read, bounced)
             SELECT campaign_id, $5, -bounced, bounced, delivered, read, bounced FROM u ORDER BY campaign_id
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 sent = d.sent + excluded.sent, failed = d.failed + excluded.failed,
                 delivered = d.delivered + excluded.delivered, read = d.read + excluded.read,
                 bounced = d.bounced + excluded.bounced, updated_at = now()
         )
         INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
         SELECT campaign_id, $5, 'bounced', bounced FROM u WHERE bounced > 0 ORDER BY campaign_id
         ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count",
    )
    .bind(&campaigns)
    .bind(&delivered)
    .bind(&read)
    .bind(&moved)
    .bind(shard)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds the moved messages of A/B campaigns to their variant's counters
/// (delivered, read; a bounce moves one from sent to failed), in one shard per
/// batch, in (campaign, variant) order like every counter write.
async fn add_to_variant_counters(
    tx: &mut Transaction<'_, Postgres>,
    moved: &[(&MessageKey, &Tracked)],
) -> Result<(), sqlx::Error> {
    let mut by_variant: BTreeMap<(Uuid, &str), FunnelDelta> = BTreeMap::new();
    for (_, message) in moved {
        if let Some(variant) = &message.variant {
            by_variant
                .entry((message.campaign_id, variant.as_str()))
                .or_default()
                .add(FunnelDelta::of_move(message.before, message.state));
        }
    }
    if by_variant.is_empty() {
        return Ok(());
    }
    let campaigns: Vec<Uuid> = by_variant.keys().map(|(c, _)| *c).collect();
    let variants: Vec<&str> = by_variant.keys().map(|(_, v)| *v).collect();
    let delivered: Vec<i64> = by_variant.values().map(|f| f.delivered).collect();
    let read: Vec<i64> = by_variant.values().map(|f| f.read).collect();
    let bounced: Vec<i64> = by_variant.values().map(|f| f.bounced).collect();
    sqlx::query(
        "INSERT INTO campaign_variant_counts AS vc (campaign_id, shard, variant, sent, failed, delivered, read)
         SELECT campaign_id, $6, variant, -bounced, bounced, delivered, read
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
              AS u(campaign_id, variant, delivered, read, bounced)
         ORDER BY campaign_id, variant
         ON CONFLICT (campaign_id, shard, variant) DO UPDATE SET
             sent = vc.sent + excluded.sent, failed = vc.failed + excluded.failed,
             delivered = vc.delivered + excluded.delivered, read = vc.read + excluded.read",
    )
    .bind(&campaigns)
    .bind(&variants)
    .bind(&delivered)
    .bind(&read)
    .bind(&bounced)
    .bind(i16::from(rand::random::<u8>() % 16))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts each opted-out recipient's address on its tenant's suppression list
/// (source `receipt`), in the list's form: e-mail addresses lower-cased whole.
async fn suppress_opt_outs(
    tx: &mut Transaction<'_, Postgres>,
    opt_outs: &[(Uuid, i64, Option<String>)],
) -> Result<(), sqlx::Error> {
    if opt_outs.is_empty() {
        return Ok(());
    }
    let campaigns: Vec<Uuid> = opt_outs.iter().map(|(c, _, _)| *c).collect();
    let ids: Vec<i64> = opt_outs.iter().map(|(_, id, _)| *id).collect();
    let reasons: Vec<String> = opt_outs
        .iter()
        .map(|(_, _, reason)| reason.clone().unwrap_or_else(|| "opted_out".to_owned()))
        .collect();
    sqlx::query(
        "INSERT INTO suppressions (tenant_id, address, reason, source)
         SELECT DISTINCT ON (c.tenant_id, a.address) c.tenant_id, a.address, o.reason, 'receipt'
         FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS o(campaign_id, id, reason)
         JOIN campaigns c ON c.id = o.campaign_id
         JOIN recipients r ON r.campaign_id = o.campaign_id AND r.id = o.id
         CROSS JOIN LATERAL (SELECT CASE WHEN r.address_kind = 'email' THEN lower(r.address)
                                         ELSE r.address END AS address) a
         ORDER BY c.tenant_id, a.address
         ON CONFLICT (tenant_id, address) DO NOTHING",
    )
    .bind(&campaigns)
    .bind(&ids)
    .bind(&reasons)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
