//! The claim: one statement that takes a batch's open rows under a lease, and
//! skips the ones whose address is on the tenant's suppression list. In an
//! undecided A/B test it takes test-cohort rows only.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use herald_core::contracts::SendBatch;

use super::{Claimed, ClaimedRecipient, claim_limit, counter_shard};

/// What `last_error` says beside reason `suppressed`.
const SUPPRESSED_MESSAGE: &str = "the address is on the tenant's suppression list";

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
/// **Suppression list.** A candidate whose address is on the tenant's
/// suppression list (`suppressions`) is not claimed: the same statement makes it `skipped` with reason `suppressed`, so
/// an opt-out that lands mid-campaign holds for every row not yet claimed, and a
/// suppressed row is never dispatched. The list keeps e-mail addresses lower-cased
/// whole (`herald_core::suppressions`), while the ledger lower-cases only their
/// domain, so an e-mail row is compared by `lower(address)`. It uses up one of the `limit` rows, so a
/// budgeted slice may send one fewer than its tokens. The check is one
/// primary-key probe per candidate (about 2-4 µs), skipped altogether while the
/// tenant's list is empty. It is written as a scalar subquery on purpose: as
/// `EXISTS`, Postgres hashed the tenant's whole list on every claim (70 ms
/// for a claim of 500 rows against a list of 100,000, instead of 8-10 ms).
///
/// The same statement records the lease (one `recipient_leases` row, which the
/// packer's sweep finds if this replica dies), moves the fresh rows from pending
/// to sending and the suppressed ones to skipped in this lease's counter shard,
/// and counts the suppressed ones by reason. It takes at most `limit` rows (what
/// the budget allows now, suppressed ones included), never more than
/// [`claim_limit`]. A claim that only skipped rows returns none, and says how
/// many it skipped: the range is not necessarily used up.
///
/// **A/B tests** (docs/AB_TESTS.md). Each row comes back with the variant it
/// is rendered with. While the campaign's test is undecided (`ab_winner` is
/// null), rows of the `rest` cohort are not candidates: they stay pending for
/// the winner. Once decided, a `rest` row's `variant` becomes the winner as it
/// is claimed (the column is in no index, so the update stays HOT). A
/// suppressed test row closes in the variant's `test_open` count.
///
/// Each row's `attempts` comes back as the requests made since its
/// `attempts_base` (a retry's fresh allowance, `herald_core::retry`): what
/// counts against `HERALD_MAX_ATTEMPTS`.
pub async fn claim_batch(
    pool: &PgPool,
    batch: &SendBatch,
    lease_token: Uuid,
    lease_seconds: f64,
    limit: i64,
) -> Result<Claimed, sqlx::Error> {
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
) -> Result<Claimed, sqlx::Error> {
    herald_core::claim_gate::enter(&mut *tx, batch.campaign_id).await?;
    let rows = sqlx::query(
        "WITH camp AS (
             SELECT id, tenant_id, ab_winner,
                    EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = campaigns.tenant_id) AS has_list
             FROM campaigns WHERE id = $1 AND status = 'sending' FOR KEY SHARE
         ), cand AS (
             SELECT r.id, r.status AS prev,
                    CASE WHEN (SELECT has_list FROM camp) THEN
                        coalesce((SELECT true FROM suppressions s
                                  WHERE s.tenant_id = (SELECT tenant_id FROM camp)
                                    AND s.address = CASE WHEN r.address_kind = 'email'
                                                         THEN lower(r.address) ELSE r.address END),
                                 false)
                    ELSE false END AS suppressed
             FROM recipients r
             WHERE r.campaign_id = $1 AND r.id BETWEEN $2 AND $3 AND EXISTS (SELECT 1 FROM camp)
               AND (r.status = 'pending' OR (r.status = 'sending' AND r.lease_expires_at < now()))
               AND (r.ab_cohort IS DISTINCT FROM 'rest' OR (SELECT ab_winner FROM camp) IS NOT NULL)
             ORDER BY r.id LIMIT $6
         ), fresh AS (
             UPDATE recipients r SET status = 'sending', lease_token = $4,
                    lease_expires_at = now() + make_interval(secs => $5), claimed_at = clock_timestamp(),
                    variant = CASE WHEN r.ab_cohort = 'rest' THEN (SELECT ab_winner FROM camp) ELSE r.variant END,
                    updated_at = now()
             FROM cand WHERE cand.prev = 'pending' AND NOT cand.suppressed
               AND r.campaign_id = $1 AND r.id = cand.id AND r.status = 'pending'
             RETURNING r.id, r.address, r.variables, r.attempts - r.attempts_base AS attempts, r.variant
         ), taken_over AS (
             UPDATE recipients r SET status = 'sending', lease_token = $4,
                    lease_expires_at = now() + make_interval(secs => $5), claimed_at = clock_timestamp(),
                    variant = CASE WHEN r.ab_cohort = 'rest' THEN (SELECT ab_winner FROM camp) ELSE r.variant END,
                    updated_at = now()
             FROM cand WHERE cand.prev = 'sending' AND NOT cand.suppressed
               AND r.campaign_id = $1 AND r.id = cand.id
               AND r.status = 'sending' AND r.lease_expires_at < now()
             RETURNING r.id, r.address, r.variables, r.attempts - r.attempts_base AS attempts, r.variant
         ), suppressed AS (
             UPDATE recipients r SET status = 'skipped', reason = 'suppressed', last_error = $8,
                    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
             FROM cand WHERE cand.suppressed AND r.campaign_id = $1 AND r.id = cand.id
               AND (r.status = 'pending' OR (r.status = 'sending' AND r.lease_expires_at < now()))
             RETURNING cand.prev, r.variant, r.ab_cohort
         ), upd AS (
             SELECT id, address, variables, attempts, variant FROM fresh
             UNION ALL SELECT id, address, variables, attempts, variant FROM taken_over
         ), lease AS (
             INSERT INTO recipient_leases (lease_token, campaign_id, first_id, last_id, expires_at)
             SELECT $4, $1, min(id), max(id), now() + make_interval(secs => $5) FROM upd
             HAVING count(*) > 0
         ), moved AS (
             SELECT (SELECT count(*) FROM fresh) AS fresh,
                    count(*) FILTER (WHERE prev = 'pending') AS skipped_pending,
                    count(*) FILTER (WHERE prev = 'sending') AS skipped_sending
             FROM suppressed
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, pending, sending, skipped)
             SELECT $1, $7, -fresh - skipped_pending, fresh - skipped_sending,
                    skipped_pending + skipped_sending
             FROM moved WHERE fresh + skipped_pending + skipped_sending > 0
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 pending = d.pending + excluded.pending, sending = d.sending + excluded.sending,
                 skipped = d.skipped + excluded.skipped, updated_at = now()
         ), reasons AS (
             INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
             SELECT $1, $7, 'suppressed', skipped_pending + skipped_sending
             FROM moved WHERE skipped_pending + skipped_sending > 0
             ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count
         ), test_closed AS (
             INSERT INTO campaign_variant_counts AS vc (campaign_id, shard, variant, test_open)
             SELECT $1, $7, variant, -count(*) FROM suppressed WHERE ab_cohort = 'test'
             GROUP BY variant ORDER BY variant
             ON CONFLICT (campaign_id, shard, variant) DO UPDATE SET test_open = vc.test_open + excluded.test_open
         )
         SELECT u.id, u.address, u.variables, u.attempts, u.variant,
                m.skipped_pending + m.skipped_sending AS suppressed
         FROM moved m LEFT JOIN upd u ON true ORDER BY u.id",
    )
    .bind(batch.campaign_id)
    .bind(batch.first_recipient_id)
    .bind(batch.last_recipient_id)
    .bind(lease_token)
    .bind(lease_seconds)
    .bind(limit.clamp(0, claim_limit(batch)))
    .bind(counter_shard(lease_token))
    .bind(SUPPRESSED_MESSAGE)
    .fetch_all(&mut *tx)
    .await?;
    // One row per claimed recipient, or a single row of NULLs beside the
    // suppressed count when nothing was claimed.
    let mut claimed = Claimed::default();
    for row in &rows {
        claimed.suppressed = row.try_get("suppressed")?;
        let Some(id) = row.try_get::<Option<i64>, _>("id")? else {
            continue;
        };
        claimed.rows.push(ClaimedRecipient {
            id,
            address: row.try_get("address")?,
            variables: row.try_get("variables")?,
            attempts: row.try_get("attempts")?,
            variant: row.try_get("variant")?,
        });
    }
    Ok(claimed)
}
