//! The sender's statements on the recipient ledger: claim, mark, release, renew.
//!
//! Each is one statement that also moves the campaign's counters, so the
//! projection never drifts from the ledger.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use herald_core::contracts::SendBatch;

/// A recipient this replica now holds a lease on.
#[derive(Debug, Clone)]
pub struct ClaimedRecipient {
    pub id: i64,
    pub address: String,
    pub variables: serde_json::Value,
}

/// The most rows one batch may claim: twice its declared size (rows in its range
/// can reopen after it was packed), never more than the schema's maximum. A batch
/// with a huge id range cannot make one sender claim a whole campaign.
fn claim_limit(batch: &SendBatch) -> i64 {
    batch.recipient_count.clamp(1, 50_000) * 2
}

/// Claims the batch's open rows, atomically with the campaign's status.
///
/// The campaign row is locked `FOR NO KEY UPDATE`, which conflicts with the
/// transition's `FOR UPDATE`: a claim that races a pause either commits before the
/// pause does, or waits and then sees `paused` and claims nothing. Rows held by a
/// live lease elsewhere are skipped, so a duplicated batch claims nothing twice.
pub async fn claim_batch(
    pool: &PgPool,
    batch: &SendBatch,
    lease_token: Uuid,
    lease_seconds: f64,
) -> Result<Vec<ClaimedRecipient>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH camp AS (
             SELECT id FROM campaigns WHERE id = $1 AND status = 'sending' FOR NO KEY UPDATE
         ), cand AS (
             SELECT r.id, r.status AS prev FROM recipients r
             WHERE r.campaign_id = $1 AND r.id BETWEEN $2 AND $3 AND EXISTS (SELECT 1 FROM camp)
               AND (r.status = 'pending' OR (r.status = 'sending' AND r.lease_expires_at < now()))
             ORDER BY r.id LIMIT $6
             FOR UPDATE OF r SKIP LOCKED
         ), upd AS (
             UPDATE recipients r SET status = 'sending', lease_token = $4,
                    lease_expires_at = now() + make_interval(secs => $5), claimed_at = clock_timestamp(),
                    updated_at = now()
             FROM cand WHERE r.campaign_id = $1 AND r.id = cand.id
             RETURNING r.id, r.address, r.variables, cand.prev
         ), bump AS (
             UPDATE campaigns SET
                 pending_count = pending_count - (SELECT count(*) FROM upd WHERE prev = 'pending'),
                 sending_count = sending_count + (SELECT count(*) FROM upd WHERE prev = 'pending'),
                 updated_at = now()
             WHERE id = $1 AND EXISTS (SELECT 1 FROM upd)
         )
         SELECT id, address, variables FROM upd ORDER BY id",
    )
    .bind(batch.campaign_id)
    .bind(batch.first_recipient_id)
    .bind(batch.last_recipient_id)
    .bind(lease_token)
    .bind(lease_seconds)
    .bind(claim_limit(batch))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ClaimedRecipient {
                id: r.try_get("id")?,
                address: r.try_get("address")?,
                variables: r.try_get("variables")?,
            })
        })
        .collect()
}

/// The final state of one dispatched recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub id: i64,
    pub sent: bool,
    pub provider_message_id: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
}

/// What is left open in the campaign after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCounts {
    pub pending: i64,
    pub sending: i64,
    pub written: i64,
}

/// Records sent and failed rows in one statement. Only rows still held by this
/// lease are written.
///
/// The rows are found by primary key inside the batch's id range, and the lease
/// token alone proves they are still held: only `claim_batch` sets a token (with
/// status `sending`), and marking or releasing clears it. The statement must not
/// say `status = 'sending'`: that lets the planner pick the partial index
/// `recipients_leases`, which keeps an entry for every row ever claimed until
/// vacuum, so each mark scanned all of the campaign's past claims (measured: ~190k
/// index entries and 40-140 ms per mark halfway through a 1M-recipient campaign;
/// see docs/BENCHMARKS.md).
pub async fn mark_outcomes(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
    outcomes: &[RecipientOutcome],
) -> Result<OpenCounts, sqlx::Error> {
    let ids: Vec<i64> = outcomes.iter().map(|o| o.id).collect();
    let statuses: Vec<&str> = outcomes
        .iter()
        .map(|o| if o.sent { "sent" } else { "failed" })
        .collect();
    let message_ids: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.provider_message_id.as_deref())
        .collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.error.as_deref()).collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.attempts).collect();
    let first = ids.iter().copied().min().unwrap_or(0);
    let last = ids.iter().copied().max().unwrap_or(-1);
    let row = sqlx::query(
        "WITH o AS (
             SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[])
                 AS o(id, status, provider_message_id, last_error, attempts)
         ), upd AS (
             UPDATE recipients r SET status = o.status, provider_message_id = o.provider_message_id,
                    last_error = o.last_error, attempts = r.attempts + o.attempts,
                    sent_at = CASE WHEN o.status = 'sent' THEN now() END,
                    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM o WHERE r.campaign_id = $1 AND r.id BETWEEN $8 AND $9 AND r.id = o.id
                      AND r.lease_token = $7
             RETURNING r.status
         )
         UPDATE campaigns SET
             sending_count = sending_count - (SELECT count(*) FROM upd),
             sent_count = sent_count + (SELECT count(*) FROM upd WHERE status = 'sent'),
             failed_count = failed_count + (SELECT count(*) FROM upd WHERE status = 'failed'),
             updated_at = now()
         WHERE id = $1
         RETURNING pending_count, sending_count, (SELECT count(*) FROM upd) AS written",
    )
    .bind(campaign_id)
    .bind(&ids)
    .bind(&statuses)
    .bind(&message_ids)
    .bind(&errors)
    .bind(&attempts)
    .bind(lease_token)
    .bind(first)
    .bind(last)
    .fetch_one(pool)
    .await?;
    Ok(OpenCounts {
        pending: row.try_get("pending_count")?,
        sending: row.try_get("sending_count")?,
        written: row.try_get("written")?,
    })
}

/// The campaign as a release left it.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    pub released: i64,
    pub campaign_sending: bool,
    pub run_epoch: i32,
}

/// Puts claimed but unsent rows back to pending at once (after a pause or stop).
/// Takes the campaign row lock, so it is ordered against a resume: the caller
/// learns whether the campaign is sending again and must re-batch the rows.
pub async fn release_claims(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
    ids: &[i64],
) -> Result<Released, sqlx::Error> {
    let row = sqlx::query(
        "WITH upd AS (
             UPDATE recipients SET status = 'pending', lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE campaign_id = $1 AND id = ANY($2) AND status = 'sending' AND lease_token = $3
             RETURNING id
         )
         UPDATE campaigns SET
             sending_count = sending_count - (SELECT count(*) FROM upd),
             pending_count = pending_count + (SELECT count(*) FROM upd),
             updated_at = now()
         WHERE id = $1
         RETURNING status, run_epoch, (SELECT count(*) FROM upd) AS released",
    )
    .bind(campaign_id)
    .bind(ids)
    .bind(lease_token)
    .fetch_one(pool)
    .await?;
    Ok(Released {
        released: row.try_get("released")?,
        campaign_sending: row.try_get::<String, _>("status")? == "sending",
        run_epoch: row.try_get("run_epoch")?,
    })
}

/// Extends this batch's leases while it is still working on them.
pub async fn renew_leases(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
    ids: &[i64],
    lease_seconds: f64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE recipients SET lease_expires_at = now() + make_interval(secs => $4)
         WHERE campaign_id = $1 AND id = ANY($2) AND lease_token = $3 AND status = 'sending'",
    )
    .bind(campaign_id)
    .bind(ids)
    .bind(lease_token)
    .bind(lease_seconds)
    .execute(pool)
    .await?
    .rows_affected())
}
