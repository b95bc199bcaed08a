//! The packer's statements on Postgres: where a campaign's paging stands, the
//! next page, the cursor, and what the sweep looks for.

use herald_core::halt::halt_message;
use herald_core::lifecycle::Status;
use herald_core::reason::Reason;
use sqlx::{PgExecutor, PgPool, Row};
use uuid::Uuid;

/// Where a campaign's paging stands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PackState {
    pub status: Status,
    pub run_epoch: i32,
    pub packed_epoch: i32,
    pub pack_epoch: i32,
    pub pack_cursor: i64,
    /// Whether rows of an A/B test's `rest` cohort may be paged: the campaign
    /// has no test, or its winner is decided. Until then they wait, and paging
    /// them would fill the window with batches that claim nothing.
    pub rest_open: bool,
}

pub(crate) async fn load_pack_state<'e>(
    pool: impl PgExecutor<'e>,
    campaign: Uuid,
) -> Result<Option<PackState>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT status, run_epoch, packed_epoch, pack_epoch, pack_cursor,
                (ab_test IS NULL OR ab_winner IS NOT NULL) AS rest_open
         FROM campaigns WHERE id = $1",
    )
    .bind(campaign)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(PackState {
            status: r
                .try_get::<String, _>("status")?
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            run_epoch: r.try_get("run_epoch")?,
            packed_epoch: r.try_get("packed_epoch")?,
            pack_epoch: r.try_get("pack_epoch")?,
            pack_cursor: r.try_get("pack_cursor")?,
            rest_open: r.try_get("rest_open")?,
        })
    })
    .transpose()
}

/// The next page of open recipients after `cursor`, by id; without the rows
/// of an A/B test's `rest` cohort unless `rest_open` (see [`PackState`]).
pub(crate) async fn next_page<'e>(
    pool: impl PgExecutor<'e>,
    campaign: Uuid,
    cursor: i64,
    size: i64,
    rest_open: bool,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM recipients
         WHERE campaign_id = $1 AND id > $2
           AND (status = 'pending' OR (status = 'sending' AND lease_expires_at < now()))
           AND ($4 OR ab_cohort IS DISTINCT FROM 'rest')
         ORDER BY id LIMIT $3",
    )
    .bind(campaign)
    .bind(cursor)
    .bind(size)
    .bind(rest_open)
    .fetch_all(pool)
    .await
}

/// Takes the campaign's paging lock until the end of the transaction, if no
/// other pack request holds it: several pack requests of one campaign can run
/// at once (each finished batch asks for the next), and each page must be
/// paged and published by one of them only. An advisory lock, not the campaign
/// row's: a transition never waits for a page's publish.
pub(crate) async fn try_lock_paging(
    tx: &mut sqlx::PgConnection,
    campaign: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1::text, 7))")
        .bind(campaign)
        .fetch_one(tx)
        .await
}

/// Moves the paging cursor from `from` to `to`, only while the epoch is current,
/// the campaign is sending and the cursor is where the caller read it. False
/// means: stop paging (paused, stopped or a newer epoch).
pub(crate) async fn advance_cursor<'e>(
    pool: impl PgExecutor<'e>,
    campaign: Uuid,
    epoch: i32,
    from: i64,
    to: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE campaigns SET pack_epoch = $2, pack_cursor = $4
         WHERE id = $1 AND run_epoch = $2 AND status = 'sending'
           AND (pack_epoch <> $2 OR pack_cursor = $3)",
    )
    .bind(campaign)
    .bind(epoch)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Sending campaigns whose packing is unfinished but which have no batch in
/// flight and no progress for a while, and are not waiting for a send window or
/// a budget: the batches that should have asked for more were lost.
pub(crate) async fn stalled_packing(
    pool: &PgPool,
    stall_seconds: f64,
) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.run_epoch FROM campaigns c
         LEFT JOIN campaign_counter_deltas d ON d.campaign_id = c.id
         WHERE c.status = 'sending' AND c.packed_epoch < c.run_epoch
           AND NOT EXISTS (SELECT 1 FROM recipient_leases l WHERE l.campaign_id = c.id)
           AND NOT EXISTS (SELECT 1 FROM campaign_waits w WHERE w.campaign_id = c.id AND w.until > now())
         GROUP BY c.id
         HAVING greatest(c.updated_at, max(d.updated_at)) < now() - make_interval(secs => $1)",
    )
    .bind(stall_seconds)
    .fetch_all(pool)
    .await
}

pub(crate) async fn mark_epoch_packed(
    pool: &PgPool,
    campaign: Uuid,
    epoch: i32,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("UPDATE campaigns SET packed_epoch = $2 WHERE id = $1 AND run_epoch = $2 AND packed_epoch < $2")
        .bind(campaign)
        .bind(epoch)
        .execute(pool)
        .await?
        .rows_affected()
        == 1)
}

/// Campaigns with a lease row past its expiry: a sender died (or could not
/// delete the row) before finishing a batch.
pub(crate) async fn campaigns_with_expired_leases(
    pool: &PgPool,
) -> Result<Vec<(Uuid, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.run_epoch FROM campaigns c
         WHERE c.status = 'sending' AND EXISTS (
             SELECT 1 FROM recipient_leases l WHERE l.campaign_id = c.id AND l.expires_at < now())",
    )
    .fetch_all(pool)
    .await
}

/// Deletes expired lease rows that guard nothing any more: every row they
/// covered was marked, released or claimed again under another lease, or the
/// campaign is paused or not started (a resume re-pages whatever is left open,
/// and a stop skips rows under expired leases itself). A stopped or failed
/// campaign's lease rows stay until [`skip_stranded_of_halted`] has skipped
/// their rows.
pub(crate) async fn drop_spent_leases(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM recipient_leases l
         WHERE l.expires_at < now() AND (
             NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = l.campaign_id
                         AND c.status IN ('sending', 'stopped', 'failed'))
             OR NOT EXISTS (
                 SELECT 1 FROM recipients r
                 WHERE r.campaign_id = l.campaign_id AND r.id BETWEEN l.first_id AND l.last_id
                   AND r.lease_token = l.lease_token AND r.status = 'sending'))",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Skips the rows that a sender held under a lease that has expired when their
/// campaign is stopped or failed: the sender died after the stop, before it
/// could mark or release them. They get the halt's reason, like the rows the
/// stop itself skipped (`herald_core::halt`), and move from sending to skipped
/// in counter shard 0. Returns how many rows it skipped.
pub(crate) async fn skip_stranded_of_halted(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH cand AS (
             SELECT r.campaign_id, r.id, c.status FROM recipient_leases l
             JOIN campaigns c ON c.id = l.campaign_id AND c.status IN ('stopped', 'failed')
             JOIN recipients r ON r.campaign_id = l.campaign_id AND r.id BETWEEN l.first_id AND l.last_id
                              AND r.lease_token = l.lease_token
             WHERE l.expires_at < now() AND r.status = 'sending' AND r.lease_expires_at < now()
         ), skipped AS (
             UPDATE recipients r SET status = 'skipped',
                    reason = CASE cand.status WHEN 'stopped' THEN 'campaign_stopped' ELSE 'campaign_failed' END,
                    last_error = CASE cand.status WHEN 'stopped' THEN $1 ELSE $2 END,
                    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM cand WHERE r.campaign_id = cand.campaign_id AND r.id = cand.id
               AND r.status = 'sending' AND r.lease_expires_at < now()
             RETURNING r.campaign_id, r.reason
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, sending, skipped)
             SELECT campaign_id, 0, -count(*), count(*) FROM skipped
             GROUP BY campaign_id ORDER BY campaign_id
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 sending = d.sending + excluded.sending, skipped = d.skipped + excluded.skipped,
                 updated_at = now()
         ), reasons AS (
             INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
             SELECT campaign_id, 0, reason, count(*) FROM skipped
             GROUP BY campaign_id, reason ORDER BY campaign_id, reason
             ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count
         )
         SELECT count(*) FROM skipped",
    )
    .bind(halt_message(Reason::CampaignStopped))
    .bind(halt_message(Reason::CampaignFailed))
    .fetch_one(pool)
    .await
}

/// Which rows a sweep re-batches.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stranded {
    /// Claimed by a sender that stopped renewing its lease (it crashed).
    ExpiredLeases,
    /// Pending in a campaign that made no progress for a while.
    Pending,
}

/// The next page of stranded rows after `after`, by id.
pub(crate) async fn stranded_page(
    pool: &PgPool,
    campaign: Uuid,
    which: Stranded,
    after: i64,
    size: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = match which {
        // Through the expired lease rows: each names the id range its rows are in.
        Stranded::ExpiredLeases => {
            "SELECT r.id FROM recipient_leases l
             JOIN recipients r ON r.campaign_id = l.campaign_id AND r.id BETWEEN l.first_id AND l.last_id
                              AND r.lease_token = l.lease_token
             WHERE l.campaign_id = $1 AND l.expires_at < now()
               AND r.status = 'sending' AND r.lease_expires_at < now() AND r.id > $2
             ORDER BY r.id LIMIT $3"
        }
        // Not an undecided A/B test's `rest` rows: they wait for the winner.
        Stranded::Pending => {
            "SELECT id FROM recipients WHERE campaign_id = $1 AND status = 'pending' AND id > $2
               AND (ab_cohort IS DISTINCT FROM 'rest'
                    OR (SELECT ab_winner FROM campaigns WHERE id = $1) IS NOT NULL)
             ORDER BY id LIMIT $3"
        }
    };
    sqlx::query_scalar(sql)
        .bind(campaign)
        .bind(after)
        .bind(size)
        .fetch_all(pool)
        .await
}

/// Fully packed campaigns with nothing in flight and no ledger progress for a
/// while, with how many rows they still have pending. Not those waiting for a
/// window or a budget, nor for an A/B decision (their pending rows wait for
/// the winner).
pub(crate) async fn stalled_campaigns(
    pool: &PgPool,
    stall_seconds: f64,
) -> Result<Vec<(Uuid, i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.run_epoch, (c.pending_count + coalesce(sum(d.pending), 0))::bigint
         FROM campaigns c
         LEFT JOIN campaign_counter_deltas d ON d.campaign_id = c.id
         WHERE c.status = 'sending' AND c.packed_epoch = c.run_epoch
           AND NOT EXISTS (SELECT 1 FROM campaign_waits w WHERE w.campaign_id = c.id
                           AND (w.until > now() OR w.reason = 'ab_decision'))
         GROUP BY c.id
         HAVING c.sending_count + coalesce(sum(d.sending), 0) = 0
            AND greatest(c.updated_at, max(d.updated_at)) < now() - make_interval(secs => $1)",
    )
    .bind(stall_seconds)
    .fetch_all(pool)
    .await
}

pub(crate) async fn touch_campaign(pool: &PgPool, campaign: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE campaigns SET updated_at = now() WHERE id = $1")
        .bind(campaign)
        .execute(pool)
        .await?;
    Ok(())
}
