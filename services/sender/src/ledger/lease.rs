//! A lease's other statements: finish it (and read what is left open), release
//! its unsent rows (back to pending, or skipped if the campaign stopped), renew
//! it while the rows are worked on.

use herald_core::halt::halt_message;
use herald_core::reason::Reason;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{OpenCounts, Unsent, counter_shard};

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
    let (pending, sending, more_to_pack, run_epoch, ab_undecided) =
        sqlx::query_as::<_, (i64, i64, bool, i32, bool)>(
            "WITH ended AS (
             DELETE FROM recipient_leases WHERE lease_token = $2
         )
         SELECT c.pending_count + coalesce(sum(d.pending), 0)::bigint,
                c.sending_count + coalesce(sum(d.sending), 0)::bigint,
                c.status = 'sending' AND c.packed_epoch < c.run_epoch, c.run_epoch,
                c.status = 'sending' AND c.ab_test IS NOT NULL AND c.ab_winner IS NULL
         FROM campaigns c LEFT JOIN campaign_counter_deltas d ON d.campaign_id = c.id
         WHERE c.id = $1 GROUP BY c.id",
        )
        .bind(campaign_id)
        .bind(lease_token)
        .fetch_optional(pool)
        .await?
        .unwrap_or((0, 0, false, 0, false));
    Ok(OpenCounts {
        pending,
        sending,
        more_to_pack,
        run_epoch,
        ab_undecided,
    })
}

/// The campaign as a release left it.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    /// Rows put back to pending (the campaign is paused, or resumed meanwhile).
    pub released: i64,
    /// Rows skipped instead, because the campaign was stopped or failed.
    pub skipped: i64,
    pub campaign_sending: bool,
    pub run_epoch: i32,
}

/// Gives claimed but unsent rows back at once, adding the requests each one
/// already had in this run to its `attempts` (so `HERALD_MAX_ATTEMPTS` bounds
/// the total across pauses and resumes).
///
/// After a pause the rows go back to pending. After a stop (or a fail) they
/// become `skipped` with reason `campaign_stopped` (`campaign_failed`): the stop
/// skipped every row nobody held, and these were held by this sender. The
/// statement locks the campaign row before it decides, so it is ordered against
/// the transition: a release that comes second sees the new status (a row lock
/// that waited returns the row as the transition left it), and a stop that comes
/// second finds the rows already pending and skips them itself. The lock also
/// orders it against a resume: the caller learns whether the campaign is sending
/// again and must re-batch the rows. The statement must not update the campaign
/// row itself: the lock would then meet a version its own command wrote, skip
/// the row and release nothing.
pub async fn release_claims(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
    unsent: &[Unsent],
) -> Result<Released, sqlx::Error> {
    let ids: Vec<i64> = unsent.iter().map(|u| u.id).collect();
    let attempts: Vec<i32> = unsent.iter().map(|u| u.attempts).collect();
    let errors: Vec<Option<&str>> = unsent.iter().map(|u| u.last_error.as_deref()).collect();
    let row = sqlx::query(
        "WITH camp AS (
             SELECT status, run_epoch,
                    CASE status WHEN 'stopped' THEN 'campaign_stopped'
                                WHEN 'failed' THEN 'campaign_failed' END AS halt,
                    CASE status WHEN 'stopped' THEN $7 WHEN 'failed' THEN $8 END AS message
             FROM campaigns WHERE id = $1 FOR NO KEY UPDATE
         ), o AS (
             SELECT * FROM unnest($2::bigint[], $5::int[], $6::text[]) AS o(id, attempts, last_error)
         ), upd AS (
             UPDATE recipients r SET
                    status = CASE WHEN camp.halt IS NULL THEN 'pending' ELSE 'skipped' END,
                    reason = camp.halt,
                    last_error = CASE WHEN camp.halt IS NULL THEN o.last_error
                                      ELSE camp.message || coalesce(' (last attempt: ' || o.last_error || ')', '') END,
                    attempts = r.attempts + o.attempts,
                    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM o, camp
             WHERE r.campaign_id = $1 AND r.id = o.id AND r.status = 'sending' AND r.lease_token = $3
             RETURNING r.status, r.reason
         ), moved AS (
             SELECT count(*) FILTER (WHERE status = 'pending') AS released,
                    count(*) FILTER (WHERE status = 'skipped') AS skipped,
                    max(reason) AS reason
             FROM upd
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, pending, sending, skipped)
             SELECT $1, $4, released, -released - skipped, skipped FROM moved
             WHERE released + skipped > 0
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 pending = d.pending + excluded.pending, sending = d.sending + excluded.sending,
                 skipped = d.skipped + excluded.skipped, updated_at = now()
         ), reasons AS (
             INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
             SELECT $1, $4, reason, skipped FROM moved WHERE skipped > 0
             ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count
         )
         SELECT camp.status, camp.run_epoch, moved.released, moved.skipped FROM camp, moved",
    )
    .bind(campaign_id)
    .bind(&ids)
    .bind(lease_token)
    .bind(counter_shard(lease_token))
    .bind(&attempts)
    .bind(&errors)
    .bind(halt_message(Reason::CampaignStopped))
    .bind(halt_message(Reason::CampaignFailed))
    .fetch_one(pool)
    .await?;
    Ok(Released {
        released: row.try_get("released")?,
        skipped: row.try_get("skipped")?,
        campaign_sending: row.try_get::<String, _>("status")? == "sending",
        run_epoch: row.try_get("run_epoch")?,
    })
}

/// Extends this batch's leases while it is still working on them: the rows'
/// own expiry (what a claim checks) and, if any row was renewed, the lease row
/// (what the sweep checks). Returns the ids of the rows renewed.
///
/// Only rows still under this lease and not yet expired are renewed: an
/// expired row may be taken over at any moment, and a renewal that waited on a
/// row lock may find some rows already taken over. The rows left out are no
/// longer this replica's to send (`crate::lease`).
pub async fn renew_leases(
    pool: &PgPool,
    campaign_id: Uuid,
    lease_token: Uuid,
    ids: &[i64],
    lease_seconds: f64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH renewed AS (
             UPDATE recipients SET lease_expires_at = now() + make_interval(secs => $4)
             WHERE campaign_id = $1 AND id = ANY($2) AND lease_token = $3 AND status = 'sending'
               AND lease_expires_at > now()
             RETURNING id
         ), lease AS (
             UPDATE recipient_leases SET expires_at = now() + make_interval(secs => $4)
             WHERE lease_token = $3 AND EXISTS (SELECT 1 FROM renewed)
         )
         SELECT id FROM renewed",
    )
    .bind(campaign_id)
    .bind(ids)
    .bind(lease_token)
    .bind(lease_seconds)
    .fetch_all(pool)
    .await
}
