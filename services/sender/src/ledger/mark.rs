//! The mark: one statement that records finished recipients, sent or failed
//! with their reason, for any number of leases.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use herald_core::auto_pause::Tripped;

use super::{LeasedOutcome, RecipientOutcome, counter_shard};

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
    Ok(mark_leased_outcomes(pool, &leased)
        .await?
        .written
        .values()
        .sum())
}

/// What one outcome write did: rows written per lease, and the campaigns whose
/// auto-pause window it pushed over their failure rate.
#[derive(Debug, Clone, Default)]
pub struct Marked {
    pub written: HashMap<Uuid, i64>,
    pub tripped: Vec<Tripped>,
}

/// Records sent and failed rows of any number of leases in one statement (one
/// commit), and returns how many rows each lease wrote. Only rows still held by
/// their lease are written. A failed row gets its reason code and its text
/// (`reason`, `last_error`), counted in the campaign's reason counts; a sent row
/// gets neither. `attempts` are added to the row's (earlier runs' requests).
/// A sent row with a provider message id is also entered in
/// `provider_messages` under its campaign's channel, where delivery receipts
/// find it (migrations/0009_delivery_receipts.sql): in the same statement, so a
/// receipt never finds a message whose recipient is not yet `sent`. An id
/// the provider repeats (within the write or after an earlier one) stays with
/// the recipient it was first recorded for (see `MARK_EXPECTING_FRESH_MESSAGE_IDS`
/// for how the statement is chosen).
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
///
/// An A/B campaign's rows also count per variant (`campaign_variant_counts`:
/// sent, failed, and a test row's close in `test_open`), and its messages
/// carry their variant into `provider_messages`, where receipts count them.
///
/// For campaigns with `auto_pause`, the same statement appends the rows'
/// outcomes to the campaign's window (`campaign_outcome_windows`, in campaign
/// order after the shards; see `herald_core::auto_pause`) and returns the
/// sending campaigns whose full window now fails more than their rate.
///
/// `campaigns` is read once per campaign of the write (`camp`), never once per
/// row: its row is share-locked by every claim and updated by the packer's
/// cursor, so its newest version often carries a multixact whose members a
/// probe must look up. Joined per row, for the channel and the auto-pause
/// settings, it was probed twice per outcome (about 500 buffer reads for a
/// write of 250 rows).
pub async fn mark_leased_outcomes(
    pool: &PgPool,
    outcomes: &[LeasedOutcome],
) -> Result<Marked, sqlx::Error> {
    let Some(first) = outcomes.first() else {
        return Ok(Marked::default());
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
    let reasons: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.outcome.reason.map(|r| r.as_str()))
        .collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.outcome.attempts).collect();
    let query = |statement: &'static str| {
        sqlx::query_as::<_, (Uuid, i64, serde_json::Value)>(statement)
            .bind(&campaigns)
            .bind(&tokens)
            .bind(&ids)
            .bind(&statuses)
            .bind(&message_ids)
            .bind(&errors)
            .bind(&attempts)
            .bind(counter_shard(first.lease_token))
            .bind(&reasons)
    };
    let rows = if expect_fresh_message_ids(&message_ids) {
        match query(MARK_EXPECTING_FRESH_MESSAGE_IDS.as_str())
            .fetch_all(pool)
            .await
        {
            Err(e) if is_repeated_message_id(&e) => {
                tolerate_repeated_message_ids_for_a_while();
                tracing::warn!(
                    campaigns = ?distinct(&campaigns), error = %e,
                    "a provider answered a message id already recorded; marking again, the id \
                     staying with its first recipient; repeats are expected for {} s",
                    TOLERANCE_AFTER_A_REPEAT.as_secs()
                );
                query(MARK_TOLERATING_REPEATED_MESSAGE_IDS.as_str())
                    .fetch_all(pool)
                    .await?
            }
            other => other?,
        }
    } else {
        query(MARK_TOLERATING_REPEATED_MESSAGE_IDS.as_str())
            .fetch_all(pool)
            .await?
    };
    let tripped = rows
        .first()
        .and_then(|row| serde_json::from_value(row.2.clone()).ok())
        .unwrap_or_default();
    Ok(Marked {
        written: rows.into_iter().map(|(lease, n, _)| (lease, n)).collect(),
        tripped,
    })
}

/// The mark's statement; `{receipts_conflict}` is what the `provider_messages`
/// insert does on a key it already holds.
const MARK_STATEMENT: &str = r#"WITH o AS MATERIALIZED (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[],
                             $6::text[], $7::int[], $9::text[])
            AS o(campaign_id, lease_token, id, status, provider_message_id, last_error, attempts, reason)
    ), upd AS (
        UPDATE recipients r SET status = o.status, provider_message_id = o.provider_message_id,
               last_error = o.last_error, reason = o.reason, attempts = r.attempts + o.attempts,
               sent_at = CASE WHEN o.status = 'sent' THEN now() END,
               lease_token = NULL, lease_expires_at = NULL, updated_at = now()
        FROM o WHERE r.campaign_id = o.campaign_id AND r.id = o.id AND r.lease_token = o.lease_token
        RETURNING r.campaign_id, r.id, o.lease_token, r.status, o.reason, o.provider_message_id,
                  r.variant, r.ab_cohort
    ), camp AS MATERIALIZED (
        SELECT c.id, c.channel_id, c.auto_pause
        FROM (SELECT DISTINCT campaign_id FROM o) oc JOIN campaigns c ON c.id = oc.campaign_id
    ), receipts_key AS (
        INSERT INTO provider_messages (channel_id, provider_message_id, campaign_id, recipient_id, variant)
        SELECT c.channel_id, upd.provider_message_id, upd.campaign_id, upd.id, upd.variant
        FROM upd JOIN camp c ON c.id = upd.campaign_id
        WHERE upd.status = 'sent' AND upd.provider_message_id IS NOT NULL
        {receipts_conflict}
    ), counted AS (
        INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, sending, sent, failed)
        SELECT campaign_id, $8, -count(*), count(*) FILTER (WHERE status = 'sent'),
               count(*) FILTER (WHERE status = 'failed')
        FROM upd GROUP BY campaign_id ORDER BY campaign_id
        ON CONFLICT (campaign_id, shard) DO UPDATE SET
            sending = d.sending + excluded.sending, sent = d.sent + excluded.sent,
            failed = d.failed + excluded.failed, updated_at = now()
    ), reasons AS (
        INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
        SELECT campaign_id, $8, reason, count(*) FROM upd WHERE reason IS NOT NULL
        GROUP BY campaign_id, reason ORDER BY campaign_id, reason
        ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count
    ), by_variant AS (
        INSERT INTO campaign_variant_counts AS vc (campaign_id, shard, variant, sent, failed, test_open)
        SELECT campaign_id, $8, variant, count(*) FILTER (WHERE status = 'sent'),
               count(*) FILTER (WHERE status = 'failed'), -count(*) FILTER (WHERE ab_cohort = 'test')
        FROM upd WHERE variant IS NOT NULL
        GROUP BY campaign_id, variant ORDER BY campaign_id, variant
        ON CONFLICT (campaign_id, shard, variant) DO UPDATE SET
            sent = vc.sent + excluded.sent, failed = vc.failed + excluded.failed,
            test_open = vc.test_open + excluded.test_open
    ), windowed AS (
        INSERT INTO campaign_outcome_windows AS w (campaign_id, window_size, outcomes)
        SELECT upd.campaign_id, max((c.auto_pause->>'window')::int),
               right(string_agg(CASE WHEN upd.status = 'failed' THEN '1' ELSE '0' END, ''
                                ORDER BY upd.id), max((c.auto_pause->>'window')::int))
        FROM upd JOIN camp c ON c.id = upd.campaign_id AND c.auto_pause IS NOT NULL
        GROUP BY upd.campaign_id ORDER BY upd.campaign_id
        ON CONFLICT (campaign_id) DO UPDATE SET window_size = excluded.window_size,
            outcomes = right(w.outcomes || excluded.outcomes, excluded.window_size)
        RETURNING w.campaign_id, w.window_size, right(w.outcomes, w.window_size) AS ring
    ), tripped AS (
        SELECT windowed.campaign_id, windowed.window_size AS size,
               (length(ring) - length(replace(ring, '1', '')))::float8 / windowed.window_size AS failure_rate,
               (c.auto_pause->>'max_failure_rate')::float8 AS max_rate
        FROM windowed JOIN campaigns c ON c.id = windowed.campaign_id AND c.status = 'sending'
        WHERE length(ring) >= windowed.window_size
    )
    SELECT lease_token, count(*),
           (SELECT coalesce(jsonb_agg(jsonb_build_object('campaign_id', campaign_id,
                    'failure_rate', failure_rate, 'window', size)), '[]'::jsonb)
            FROM tripped WHERE failure_rate > max_rate) AS tripped
    FROM upd GROUP BY lease_token"#;

/// The fast path: a plain insert into `provider_messages`. Its unique key
/// refuses a message id it already holds, which fails the whole statement
/// (nothing is written) with a unique violation; the write then runs again as
/// [`MARK_TOLERATING_REPEATED_MESSAGE_IDS`].
///
/// Why not always `ON CONFLICT DO NOTHING`: that is a speculative insert, which
/// probes the key, inserts, and then writes one more WAL record to confirm each
/// row. Measured with pgbench (3 clients, 250 random 32-character ids a
/// statement, about 225,000 rows): 970 statements/s plain against 730 with
/// `ON CONFLICT DO NOTHING` (docs/BENCHMARKS.md, round 5).
///
/// Repeated ids are not only a misbehaving provider's: a retried recipient is
/// sent again under the same idempotency key, which a provider may answer with
/// its first message id, and a webhook may answer a constant id. So a write
/// whose own ids repeat goes straight to the tolerant statement, and after a
/// repeat fails the fast path this process uses the tolerant statement for
/// [`TOLERANCE_AFTER_A_REPEAT`], so repeats cost one failed statement a
/// minute, not one a write.
static MARK_EXPECTING_FRESH_MESSAGE_IDS: LazyLock<String> =
    LazyLock::new(|| MARK_STATEMENT.replace("{receipts_conflict}", ""));

/// The slow path, after a repeated id failed the fast one: the id keeps its
/// first recipient (within one write, whichever is inserted first), and the
/// others are marked sent without a receipts key.
static MARK_TOLERATING_REPEATED_MESSAGE_IDS: LazyLock<String> =
    LazyLock::new(|| MARK_STATEMENT.replace("{receipts_conflict}", "ON CONFLICT DO NOTHING"));

/// Whether `error` is `provider_messages`' key refusing a message id it holds
/// (the table has no other unique constraint).
fn is_repeated_message_id(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation() && e.table() == Some("provider_messages"))
}

/// How long a process keeps to the tolerant statement after a repeated id.
pub const TOLERANCE_AFTER_A_REPEAT: Duration = Duration::from_secs(60);

/// When this process's tolerance of repeated ids ends, in milliseconds since
/// [`PROCESS_EPOCH`] (0: not tolerating).
static TOLERATING_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
static PROCESS_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis_since_epoch() -> u64 {
    PROCESS_EPOCH.elapsed().as_millis() as u64
}

fn tolerate_repeated_message_ids_for_a_while() {
    let until = millis_since_epoch() + TOLERANCE_AFTER_A_REPEAT.as_millis() as u64;
    TOLERATING_UNTIL_MS.fetch_max(until, Ordering::Relaxed);
}

/// Whether a write with these message ids takes the fast path: no id repeats
/// within it, and no recent write met a repeat.
fn expect_fresh_message_ids(message_ids: &[Option<&str>]) -> bool {
    if millis_since_epoch() < TOLERATING_UNTIL_MS.load(Ordering::Relaxed) {
        return false;
    }
    let mut seen = HashSet::with_capacity(message_ids.len());
    message_ids.iter().flatten().all(|id| seen.insert(*id))
}

fn distinct(campaigns: &[Uuid]) -> Vec<Uuid> {
    let mut distinct = campaigns.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tolerant_statement_ignores_a_repeated_message_id() {
        let plain = MARK_EXPECTING_FRESH_MESSAGE_IDS.as_str();
        let tolerant = MARK_TOLERATING_REPEATED_MESSAGE_IDS.as_str();
        for statement in [plain, tolerant] {
            assert!(!statement.contains("{receipts_conflict}"));
        }
        assert_eq!(plain.matches("ON CONFLICT DO NOTHING").count(), 0);
        assert_eq!(tolerant.matches("ON CONFLICT DO NOTHING").count(), 1);
        assert_eq!(tolerant.replace("ON CONFLICT DO NOTHING", ""), plain);
    }

    #[test]
    fn a_write_whose_own_ids_repeat_skips_the_fast_path() {
        assert!(expect_fresh_message_ids(&[
            Some("a"),
            None,
            Some("b"),
            None
        ]));
        assert!(!expect_fresh_message_ids(&[
            Some("a"),
            Some("b"),
            Some("a")
        ]));
    }
}
