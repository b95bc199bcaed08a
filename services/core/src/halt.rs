//! What a stop (or a fail) does to the ledger: every recipient not yet sent or
//! failed becomes `skipped` with a reason, so a campaign in a terminal state
//! accounts for everyone (`sent + failed + skipped == total`, invariant 11).
//!
//! The transition itself writes no recipient row: a stop must answer at once
//! whatever the campaign's size, and skipping a million rows takes seconds (no
//! index covers `status`, so every row of the campaign is read; measured in
//! docs/RELIABILITY.md). Instead the transition records a *halt* in its own
//! transaction (`campaign_halts`, migration 0008), and the process that committed
//! it skips the rows right after ([`skip_open_recipients`]), in chunks of
//! [`SKIP_CHUNK`] rows by id, each chunk its own short transaction. Nothing can
//! claim them meanwhile: the campaign is no longer sending. If that process dies
//! first, the packer's sweep takes the halt over once it has been idle for
//! `HERALD_STALL_SECONDS`, from where it stopped.
//!
//! A pass skips the rows nobody holds: pending rows, and rows whose lease
//! expired (their sender died). Rows under a live lease belong to a sender still
//! working on them; it marks them sent or failed, or releases them, and a
//! release into a stopped campaign skips them too (`release_claims` in the
//! sender's ledger). If that sender dies instead, the sweep skips the rows once
//! their lease expires.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::lifecycle::Action;
use crate::reason::Reason;

/// Rows read per chunk of a pass: about 40-50 ms of Postgres time each on a
/// 2-core machine (a million rows in 8-9 s; docs/RELIABILITY.md).
pub const SKIP_CHUNK: i64 = 5_000;

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

/// Records that the campaign's open rows must be skipped with `reason`, in the
/// halting transition's transaction.
pub async fn record_halt(
    tx: &mut PgConnection,
    campaign: Uuid,
    reason: Reason,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO campaign_halts (campaign_id, reason) VALUES ($1, $2)
         ON CONFLICT (campaign_id) DO NOTHING",
    )
    .bind(campaign)
    .bind(reason.as_str())
    .execute(tx)
    .await?;
    Ok(())
}

/// Skips the next chunk of the campaign's open unheld rows after its halt's
/// cursor: reads up to [`SKIP_CHUNK`] rows by id, skips those still open, moves
/// them from pending (or sending) to skipped in counter shard 0, counts them by
/// reason, and moves the cursor. Returns how many rows it skipped, or `None`
/// when the chunk was empty: the pass is over (and the halt row is gone).
async fn skip_chunk(pool: &PgPool, campaign: Uuid) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH halt AS (
             SELECT reason, cursor FROM campaign_halts WHERE campaign_id = $1
         ), cand AS (
             -- The cursor as a scalar, so it bounds the index scan (as a join
             -- it only filtered it, and each chunk re-read every row before it).
             SELECT r.id, r.status AS prev FROM recipients r
             WHERE r.campaign_id = $1 AND r.id > (SELECT cursor FROM halt)
             ORDER BY r.id LIMIT $2
         ), skipped AS (
             UPDATE recipients r SET status = 'skipped', reason = (SELECT reason FROM halt),
                    last_error = CASE (SELECT reason FROM halt) WHEN 'campaign_failed' THEN $4 ELSE $3 END,
                    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM cand WHERE r.campaign_id = $1 AND r.id = cand.id
               AND (r.status = 'pending' OR (r.status = 'sending' AND r.lease_expires_at < now()))
             RETURNING cand.prev, r.reason
         ), tally AS (
             SELECT count(*) AS n, count(*) FILTER (WHERE prev = 'pending') AS from_pending,
                    count(*) FILTER (WHERE prev = 'sending') AS from_sending, max(reason) AS reason
             FROM skipped
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, pending, sending, skipped)
             SELECT $1, 0, -from_pending, -from_sending, n FROM tally WHERE n > 0
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 pending = d.pending + excluded.pending, sending = d.sending + excluded.sending,
                 skipped = d.skipped + excluded.skipped, updated_at = now()
         ), reasons AS (
             INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
             SELECT $1, 0, reason, n FROM tally WHERE n > 0
             ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count
         ), moved AS (
             UPDATE campaign_halts SET cursor = (SELECT max(id) FROM cand), updated_at = now()
             WHERE campaign_id = $1 AND EXISTS (SELECT 1 FROM cand)
         ), done AS (
             DELETE FROM campaign_halts
             WHERE campaign_id = $1 AND NOT EXISTS (SELECT 1 FROM cand)
         )
         SELECT CASE WHEN EXISTS (SELECT 1 FROM cand) THEN (SELECT n FROM tally) END",
    )
    .bind(campaign)
    .bind(SKIP_CHUNK)
    .bind(halt_message(Reason::CampaignStopped))
    .bind(halt_message(Reason::CampaignFailed))
    .fetch_one(pool)
    .await
}

/// Runs the halt pass of a stopped or failed campaign to its end: skips every
/// open unheld row, chunk by chunk, then removes the halt. Safe to run twice at
/// once (each row is re-checked as it is updated) and to resume after a crash
/// (the cursor is committed with each chunk). Returns how many rows it skipped;
/// 0 if the campaign has no halt.
pub async fn skip_open_recipients(pool: &PgPool, campaign: Uuid) -> Result<i64, sqlx::Error> {
    let mut total = 0;
    while let Some(skipped) = skip_chunk(pool, campaign).await? {
        total += skipped;
    }
    Ok(total)
}

/// Halts whose pass has made no progress for `idle_seconds`: the process that
/// committed the stop died before it finished skipping. The packer's sweep
/// runs these.
pub async fn abandoned_halts(pool: &PgPool, idle_seconds: f64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT campaign_id FROM campaign_halts
         WHERE updated_at < now() - make_interval(secs => $1) ORDER BY created_at",
    )
    .bind(idle_seconds)
    .fetch_all(pool)
    .await
}
