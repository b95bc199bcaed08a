//! What a stop (or a fail) does to the ledger: every recipient not yet sent or
//! failed becomes `skipped` with a reason, so a campaign in a terminal state
//! accounts for everyone (`sent + failed + skipped == total`, invariant 11).
//!
//! The transition does it in its own transaction, under the campaign's row lock
//! and closed claim gate, for the rows nobody holds: pending rows, and rows whose
//! lease expired (their sender died). Rows under a live lease belong to a sender
//! that is still working on them; it marks them sent or failed, or releases them,
//! and a release into a stopped campaign skips them too (`release_claims` in the
//! sender's ledger). If that sender dies instead, the packer's sweep skips the
//! rows once their lease expires.
//!
//! The price is one pass over the campaign's open rows inside the transition: no
//! index covers `status` (migrations/0002_hot_ledger.sql), so the statement reads
//! every row of the campaign, and the stop answers once they are written
//! (docs/RELIABILITY.md gives the measured time).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::lifecycle::Action;
use crate::reason::Reason;

/// The reason a halting action gives the rows it leaves unsent; `None` for
/// actions that do not end a campaign's sending for good.
pub fn halt_reason(action: Action) -> Option<Reason> {
    match action {
        Action::Stop => Some(Reason::CampaignStopped),
        Action::Fail => Some(Reason::CampaignFailed),
        _ => None,
    }
}

/// The human text beside a halt reason in `last_error`.
pub fn halt_message(reason: Reason) -> &'static str {
    match reason {
        Reason::CampaignFailed => "the campaign failed before this recipient was sent",
        _ => "the campaign was stopped before this recipient was sent",
    }
}

/// Skips every unheld open row of the campaign with `reason`, moving the
/// campaign's counter columns (pending or sending to skipped) and its reason
/// count (shard 0) in the same statement. The caller holds the campaign row
/// lock. Returns how many rows it skipped.
pub async fn skip_open_recipients(
    tx: &mut PgConnection,
    campaign: Uuid,
    reason: Reason,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH cand AS (
             SELECT id, status AS prev FROM recipients
             WHERE campaign_id = $1
               AND (status = 'pending' OR (status = 'sending' AND lease_expires_at < now()))
         ), skipped AS (
             UPDATE recipients r SET status = 'skipped', reason = $2, last_error = $3,
                    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM cand WHERE r.campaign_id = $1 AND r.id = cand.id
               AND (r.status = 'pending' OR (r.status = 'sending' AND r.lease_expires_at < now()))
             RETURNING cand.prev
         ), tally AS (
             SELECT count(*) AS n, count(*) FILTER (WHERE prev = 'pending') AS from_pending,
                    count(*) FILTER (WHERE prev = 'sending') AS from_sending
             FROM skipped
         ), counted AS (
             UPDATE campaigns c SET pending_count = c.pending_count - t.from_pending,
                    sending_count = c.sending_count - t.from_sending,
                    skipped_count = c.skipped_count + t.n
             FROM tally t WHERE c.id = $1 AND t.n > 0
         ), reasons AS (
             INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
             SELECT $1, 0, $2, n FROM tally WHERE n > 0
             ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count
         )
         SELECT n FROM tally",
    )
    .bind(campaign)
    .bind(reason.as_str())
    .bind(halt_message(reason))
    .fetch_one(tx)
    .await
}
