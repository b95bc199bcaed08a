//! The sender's statements on the recipient ledger: claim, mark, release, renew.
//!
//! Each is one statement that also moves the campaign's counters (in a counter
//! shard, `campaign_counter_deltas`), so the projection never drifts from the
//! ledger. None of them writes an indexed column of `recipients`, so Postgres
//! updates the rows in place (HOT); see migrations/0002_hot_ledger.sql.

use std::collections::HashMap;

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
pub fn claim_limit(batch: &SendBatch) -> i64 {
    batch.recipient_count.clamp(1, 50_000) * 2
}

/// Which counter shard a lease writes to: fixed per lease, so one batch's writes
/// land on one row while different batches spread over `COUNTER_SHARDS` rows.
pub const COUNTER_SHARDS: u128 = 16;

fn counter_shard(lease_token: Uuid) -> i16 {
    (lease_token.as_u128() % COUNTER_SHARDS) as i16
}

/// Claims the batch's open rows, atomically with the campaign's status.
///
/// The claim runs in its own transaction behind the campaign's claim gate
/// ([`herald_core::claim_gate`]), taken shared before the statement: claims do
/// not wait on each other, but a claim that races a pause either commits before
/// the pause does, or waits for it and then (its statement's snapshot taken after
/// the pause committed) sees `paused` and claims nothing. Rows held by a live
/// lease elsewhere are skipped, so a duplicated batch claims nothing twice.
///
/// Each row is taken by an `UPDATE` whose own condition repeats what the row must
/// still be (`pending`, or `sending` under an expired lease). A claim that meets a
/// row another claim is updating waits for it, and Postgres then re-checks that
/// condition against the committed row, which no longer holds. The rows are not
/// locked first (`FOR UPDATE SKIP LOCKED`): that wrote every claimed row twice, a
/// lock and then the update, for about 5-15% of the ledger's throughput
/// (docs/BENCHMARKS.md). Fresh rows and taken-over rows are separate updates, so
/// the counters know what each row was when it was taken.
///
/// The same statement records the lease (one `recipient_leases` row, which the
/// packer's sweep finds if this replica dies) and moves the fresh rows from
/// pending to sending in this lease's counter shard. It claims at most `limit`
/// rows (what the budget allows now), never more than [`claim_limit`].
pub async fn claim_batch(
    pool: &PgPool,
    batch: &SendBatch,
    lease_token: Uuid,
    lease_seconds: f64,
    limit: i64,
) -> Result<Vec<ClaimedRecipient>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = claim_batch_in(&mut tx, batch, lease_token, lease_seconds, limit).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// [`claim_batch`] inside the caller's transaction (which must not have read the
/// campaign's status yet): the claim is not visible, and the gate is held, until
/// the caller commits.
pub async fn claim_batch_in(
    tx: &mut sqlx::PgConnection,
    batch: &SendBatch,
    lease_token: Uuid,
    lease_seconds: f64,
    limit: i64,
) -> Result<Vec<ClaimedRecipient>, sqlx::Error> {
    herald_core::claim_gate::enter(&mut *tx, batch.campaign_id).await?;
    let rows = sqlx::query(
        "WITH camp AS (
             SELECT id FROM campaigns WHERE id = $1 AND status = 'sending' FOR KEY SHARE
         ), cand AS (
             SELECT r.id, r.status AS prev FROM recipients r
             WHERE r.campaign_id = $1 AND r.id BETWEEN $2 AND $3 AND EXISTS (SELECT 1 FROM camp)
               AND (r.status = 'pending' OR (r.status = 'sending' AND r.lease_expires_at < now()))
             ORDER BY r.id LIMIT $6
         ), fresh AS (
             UPDATE recipients r SET status = 'sending', lease_token = $4,
                    lease_expires_at = now() + make_interval(secs => $5), claimed_at = clock_timestamp(),
                    updated_at = now()
             FROM cand WHERE cand.prev = 'pending' AND r.campaign_id = $1 AND r.id = cand.id
               AND r.status = 'pending'
             RETURNING r.id, r.address, r.variables
         ), taken_over AS (
             UPDATE recipients r SET status = 'sending', lease_token = $4,
                    lease_expires_at = now() + make_interval(secs => $5), claimed_at = clock_timestamp(),
                    updated_at = now()
             FROM cand WHERE cand.prev = 'sending' AND r.campaign_id = $1 AND r.id = cand.id
               AND r.status = 'sending' AND r.lease_expires_at < now()
             RETURNING r.id, r.address, r.variables
         ), upd AS (
             SELECT id, address, variables FROM fresh
             UNION ALL SELECT id, address, variables FROM taken_over
         ), lease AS (
             INSERT INTO recipient_leases (lease_token, campaign_id, first_id, last_id, expires_at)
             SELECT $4, $1, min(id), max(id), now() + make_interval(secs => $5) FROM upd
             HAVING count(*) > 0
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, pending, sending)
             SELECT $1, $7, -count(*), count(*) FROM fresh
             HAVING count(*) > 0
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 pending = d.pending + excluded.pending, sending = d.sending + excluded.sending,
                 updated_at = now()
         )
         SELECT id, address, variables FROM upd ORDER BY id",
    )
    .bind(batch.campaign_id)
    .bind(batch.first_recipient_id)
    .bind(batch.last_recipient_id)
    .bind(lease_token)
    .bind(lease_seconds)
    .bind(limit.clamp(0, claim_limit(batch)))
    .bind(counter_shard(lease_token))
    .fetch_all(&mut *tx)
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

/// What is left open in a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCounts {
    pub pending: i64,
    pub sending: i64,
    /// The campaign sends and its run epoch is not fully packed yet.
    pub more_to_pack: bool,
    pub run_epoch: i32,
}

impl OpenCounts {
    pub fn is_done(&self) -> bool {
        self.pending == 0 && self.sending == 0
    }
}

/// One outcome with the lease it was claimed under: what a replica-wide write
/// of several batches' outcomes is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedOutcome {
    pub campaign_id: Uuid,
    pub lease_token: Uuid,
    pub outcome: RecipientOutcome,
}

/// Records one lease's sent and failed rows; returns how many it wrote.
pub async fn mark_outcomes(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
    outcomes: &[RecipientOutcome],
) -> Result<i64, sqlx::Error> {
    let leased: Vec<LeasedOutcome> = outcomes
        .iter()
        .map(|outcome| LeasedOutcome {
            campaign_id,
            lease_token,
            outcome: outcome.clone(),
        })
        .collect();
    Ok(mark_leased_outcomes(pool, &leased).await?.values().sum())
}

/// Records sent and failed rows of any number of leases in one statement (one
/// commit), and returns how many rows each lease wrote. Only rows still held by
/// their lease are written.
///
/// The outcomes drive a nested loop of primary-key lookups (`FROM o` joined on
/// `r.id = o.id`): each row costs one index probe, whatever the group size. Two
/// shapes of this statement were measured and rejected (docs/BENCHMARKS.md):
/// `r.status = 'sending'` in the `WHERE` once let the planner scan a partial
/// lease index over every row the campaign had ever claimed, and an id range
/// (`r.id BETWEEN min AND max`) made it scan the range and compare every row with
/// every outcome, quadratic in the group size. The lease token alone proves a
/// row is still held: only `claim_batch` sets it (with status `sending`), and
/// marking or releasing clears it. The counter shards are written in campaign
/// order, so two writes that touch the same campaigns cannot deadlock.
pub async fn mark_leased_outcomes(
    pool: &PgPool,
    outcomes: &[LeasedOutcome],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let Some(first) = outcomes.first() else {
        return Ok(HashMap::new());
    };
    let campaigns: Vec<Uuid> = outcomes.iter().map(|o| o.campaign_id).collect();
    let tokens: Vec<Uuid> = outcomes.iter().map(|o| o.lease_token).collect();
    let ids: Vec<i64> = outcomes.iter().map(|o| o.outcome.id).collect();
    let statuses: Vec<&str> = outcomes
        .iter()
        .map(|o| if o.outcome.sent { "sent" } else { "failed" })
        .collect();
    let message_ids: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.outcome.provider_message_id.as_deref())
        .collect();
    let errors: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.outcome.error.as_deref())
        .collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.outcome.attempts).collect();
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH o AS MATERIALIZED (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[],
                                  $6::text[], $7::int[])
                 AS o(campaign_id, lease_token, id, status, provider_message_id, last_error, attempts)
         ), upd AS (
             UPDATE recipients r SET status = o.status, provider_message_id = o.provider_message_id,
                    last_error = o.last_error, attempts = r.attempts + o.attempts,
                    sent_at = CASE WHEN o.status = 'sent' THEN now() END,
                    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM o WHERE r.campaign_id = o.campaign_id AND r.id = o.id AND r.lease_token = o.lease_token
             RETURNING r.campaign_id, o.lease_token, r.status
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, sending, sent, failed)
             SELECT campaign_id, $8, -count(*), count(*) FILTER (WHERE status = 'sent'),
                    count(*) FILTER (WHERE status = 'failed')
             FROM upd GROUP BY campaign_id ORDER BY campaign_id
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 sending = d.sending + excluded.sending, sent = d.sent + excluded.sent,
                 failed = d.failed + excluded.failed, updated_at = now()
         )
         SELECT lease_token, count(*) FROM upd GROUP BY lease_token",
    )
    .bind(&campaigns)
    .bind(&tokens)
    .bind(&ids)
    .bind(&statuses)
    .bind(&message_ids)
    .bind(&errors)
    .bind(&attempts)
    .bind(counter_shard(first.lease_token))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Ends a finished batch's lease and reads what is left open in its campaign, in
/// one statement.
///
/// Every row the lease claimed is marked or released by now, so its
/// `recipient_leases` row has nothing left to guard for the sweep. The counts are
/// the campaign's columns plus its shards as committed when the statement starts,
/// after this batch's own writes: whichever batch finishes last sees every other
/// batch's writes and can complete the campaign.
pub async fn finish_lease(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
) -> Result<OpenCounts, sqlx::Error> {
    let (pending, sending, more_to_pack, run_epoch): (i64, i64, bool, i32) = sqlx::query_as(
        "WITH ended AS (
             DELETE FROM recipient_leases WHERE lease_token = $2
         )
         SELECT c.pending_count + coalesce(sum(d.pending), 0)::bigint,
                c.sending_count + coalesce(sum(d.sending), 0)::bigint,
                c.status = 'sending' AND c.packed_epoch < c.run_epoch, c.run_epoch
         FROM campaigns c LEFT JOIN campaign_counter_deltas d ON d.campaign_id = c.id
         WHERE c.id = $1 GROUP BY c.id",
    )
    .bind(campaign_id)
    .bind(lease_token)
    .fetch_optional(pool)
    .await?
    .unwrap_or((0, 0, false, 0));
    Ok(OpenCounts {
        pending,
        sending,
        more_to_pack,
        run_epoch,
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
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, pending, sending)
             SELECT $1, $4, count(*), -count(*) FROM upd HAVING count(*) > 0
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 pending = d.pending + excluded.pending, sending = d.sending + excluded.sending,
                 updated_at = now()
         )
         UPDATE campaigns SET updated_at = now()
         WHERE id = $1
         RETURNING status, run_epoch, (SELECT count(*) FROM upd) AS released",
    )
    .bind(campaign_id)
    .bind(ids)
    .bind(lease_token)
    .bind(counter_shard(lease_token))
    .fetch_one(pool)
    .await?;
    Ok(Released {
        released: row.try_get("released")?,
        campaign_sending: row.try_get::<String, _>("status")? == "sending",
        run_epoch: row.try_get("run_epoch")?,
    })
}

/// Extends this batch's leases while it is still working on them: the rows'
/// own expiry (what a claim checks) and the lease row (what the sweep checks).
pub async fn renew_leases(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
    ids: &[i64],
    lease_seconds: f64,
) -> Result<u64, sqlx::Error> {
    let renewed = sqlx::query(
        "WITH lease AS (
             UPDATE recipient_leases SET expires_at = now() + make_interval(secs => $4)
             WHERE lease_token = $3
         )
         UPDATE recipients SET lease_expires_at = now() + make_interval(secs => $4)
         WHERE campaign_id = $1 AND id = ANY($2) AND lease_token = $3 AND status = 'sending'",
    )
    .bind(campaign_id)
    .bind(ids)
    .bind(lease_token)
    .bind(lease_seconds)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(renewed)
}
