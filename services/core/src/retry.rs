//! Retry by scope: which failed recipients a `retry` re-opens, and the
//! statement that re-opens them (`POST /v1/campaigns/{id}/retry`).
//!
//! A retry moves matching `failed` rows back to `pending` inside the `retry`
//! transition's transaction ([`crate::transitions`]), with the ledger counters
//! and the reason counts moved in the same statement, so the projection stays
//! exact. Only `failed` rows are touched: a sent recipient is never re-opened,
//! and skipped ones (suppressed, stopped) stay skipped.
//!
//! **Scopes.** `transient` is the failures that may succeed later: today every
//! timeout, 5xx, 408 and 429 that used up its attempts ends as
//! `retries_exhausted`, so that is the set. `failed` is every failure reason a
//! sender writes (`provider_rejected`, `retries_exhausted`, `template_error`).
//! `reasons` narrows either scope. `bounced` is in neither by default: the
//! provider accepted that message once, so re-sending it is a new message to
//! someone it already reached (and a provider that honours `Idempotency-Key`
//! may answer with the first message instead of sending). A `failed` retry
//! includes bounced recipients only when `reasons` names `bounced`.
//!
//! **Attempts.** `attempts` keeps counting every provider request ever made for
//! a row; `HERALD_MAX_ATTEMPTS` bounds the requests since the row's
//! `attempts_base` (migration 0010). A retry sets `attempts_base = attempts`,
//! which gives the row a fresh allowance without rewriting its history: a
//! retried row whose attempts were used up would otherwise fail again at once,
//! and resetting `attempts` would lose the count of requests made.

use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::reason::Reason;
use crate::transitions::TransitionError;

/// Which failed recipients a retry re-opens, before `reasons` narrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryScope {
    /// Every failure a sender writes; `bounced` only when named in `reasons`.
    Failed,
    /// Failures that may succeed later: `retries_exhausted` (timeouts, 5xx,
    /// 408, 429 that used up their attempts).
    Transient,
}

impl RetryScope {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryScope::Failed => "failed",
            RetryScope::Transient => "transient",
        }
    }

    /// The reasons the scope re-opens when `reasons` is absent.
    pub fn default_reasons(self) -> &'static [Reason] {
        match self {
            RetryScope::Failed => &[
                Reason::TemplateError,
                Reason::ProviderRejected,
                Reason::RetriesExhausted,
            ],
            RetryScope::Transient => &[Reason::RetriesExhausted],
        }
    }

    /// The reasons `reasons` may name under this scope.
    pub fn allowed_reasons(self) -> &'static [Reason] {
        match self {
            RetryScope::Failed => &[
                Reason::TemplateError,
                Reason::ProviderRejected,
                Reason::RetriesExhausted,
                Reason::Bounced,
            ],
            RetryScope::Transient => &[Reason::RetriesExhausted],
        }
    }
}

/// A resolved retry: the scope and the exact reason codes it re-opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySelection {
    pub scope: RetryScope,
    /// Sorted, without duplicates.
    pub reasons: Vec<Reason>,
}

impl RetrySelection {
    /// The selection for `scope` narrowed by the `named` codes, or the reason
    /// it is refused (an unknown code, or one the scope does not cover).
    pub fn resolve(scope: RetryScope, named: Option<&[String]>) -> Result<Self, String> {
        let Some(named) = named else {
            return Ok(Self {
                scope,
                reasons: scope.default_reasons().to_vec(),
            });
        };
        if named.is_empty() {
            return Err("reasons must not be empty (leave it out for the whole scope)".into());
        }
        let allowed = scope.allowed_reasons();
        let mut reasons = Vec::with_capacity(named.len());
        for code in named {
            let reason: Reason = code.parse().map_err(|_| {
                format!(
                    "unknown reason code {code:?}; the codes are: {}",
                    Reason::list(", ")
                )
            })?;
            if !allowed.contains(&reason) {
                let list: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                return Err(format!(
                    "reason {code:?} is not in scope {:?}, which covers: {}",
                    scope.as_str(),
                    list.join(", ")
                ));
            }
            reasons.push(reason);
        }
        reasons.sort();
        reasons.dedup();
        Ok(Self { scope, reasons })
    }

    /// The event payload's part: scope and reason codes.
    pub fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "scope": self.scope,
            "reasons": self.reasons,
        })
    }
}

/// Moves the campaign's failed rows with one of `reasons` back to pending, in
/// the caller's transaction (which holds the campaign row), with a fresh
/// attempts allowance (see the module docs). The ledger counters (shard 0:
/// failed -n, pending +n), the reason counts (-n per reason) and, for an A/B
/// campaign, the variant counts (failed -n; a test-cohort row is open again,
/// `test_open` +1) move in the same statement, in the order the mark writes
/// them. Returns how many rows it re-opened.
///
/// No index covers `status` or `reason` (migrations/0002_hot_ledger.sql), so
/// this reads every row of the campaign once: about 0.3 s per million
/// recipients, spent holding the campaign's row lock. Unlike a stop's skips
/// (`crate::halt`), the re-opened rows are only the failed ones.
pub async fn reopen_failed(
    tx: &mut Transaction<'_, Postgres>,
    campaign: Uuid,
    reasons: &[Reason],
) -> Result<i64, sqlx::Error> {
    let codes: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    sqlx::query_scalar(
        "WITH old AS (
             SELECT id, reason FROM recipients
             WHERE campaign_id = $1 AND status = 'failed' AND reason = ANY($2)
         ), upd AS (
             UPDATE recipients r SET status = 'pending', reason = NULL,
                    attempts_base = r.attempts, lease_token = NULL, lease_expires_at = NULL,
                    updated_at = now()
             FROM old WHERE r.campaign_id = $1 AND r.id = old.id AND r.status = 'failed'
             RETURNING old.reason, r.variant, r.ab_cohort
         ), counted AS (
             INSERT INTO campaign_counter_deltas AS d (campaign_id, shard, pending, failed)
             SELECT $1, 0, count(*), -count(*) FROM upd HAVING count(*) > 0
             ON CONFLICT (campaign_id, shard) DO UPDATE SET
                 pending = d.pending + excluded.pending, failed = d.failed + excluded.failed,
                 updated_at = now()
         ), reasons AS (
             INSERT INTO campaign_reason_counts AS rc (campaign_id, shard, reason, count)
             SELECT $1, 0, reason, -count(*) FROM upd GROUP BY reason ORDER BY reason
             ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count = rc.count + excluded.count
         ), by_variant AS (
             INSERT INTO campaign_variant_counts AS vc (campaign_id, shard, variant, failed, test_open)
             SELECT $1, 0, variant, -count(*), count(*) FILTER (WHERE ab_cohort = 'test')
             FROM upd WHERE variant IS NOT NULL GROUP BY variant ORDER BY variant
             ON CONFLICT (campaign_id, shard, variant) DO UPDATE SET
                 failed = vc.failed + excluded.failed, test_open = vc.test_open + excluded.test_open
         )
         SELECT count(*) FROM upd",
    )
    .bind(campaign)
    .bind(&codes)
    .fetch_one(&mut **tx)
    .await
}

/// An undecided A/B test whose test cohort has open rows again (a retry
/// re-opened some) is no longer done: its `ab_decision` wait goes and the time
/// the test was done is forgotten, so no decision is taken before the retried
/// test rows are sent (and counted), and the sweep looks after them again.
/// Noting the test done (`crate::ab::decision::note_test_done`) records both
/// again once they are.
async fn reopen_undecided_test(
    tx: &mut Transaction<'_, Postgres>,
    campaign: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH undone AS (
             UPDATE campaigns SET ab_test_done_at = NULL
             WHERE id = $1 AND ab_test IS NOT NULL AND ab_winner IS NULL
               AND (SELECT coalesce(sum(test_open), 0) FROM campaign_variant_counts v
                    WHERE v.campaign_id = $1) > 0
             RETURNING id
         )
         DELETE FROM campaign_waits w USING undone
         WHERE w.campaign_id = undone.id AND w.reason = 'ab_decision'",
    )
    .bind(campaign)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`reopen_failed`] for the `retry` transition: none matching is a
/// precondition failure, so a retry that would change nothing changes nothing.
pub(crate) async fn reopen(
    tx: &mut Transaction<'_, Postgres>,
    campaign: Uuid,
    selection: &RetrySelection,
) -> Result<i64, TransitionError> {
    let reopened = reopen_failed(tx, campaign, &selection.reasons).await?;
    reopen_undecided_test(tx, campaign).await?;
    if reopened == 0 {
        return Err(TransitionError::Precondition(format!(
            "no failed recipient matches scope {:?} with reasons {:?}",
            selection.scope.as_str(),
            selection
                .reasons
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
        )));
    }
    Ok(reopened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(codes: &[&str]) -> Vec<String> {
        codes.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn transient_covers_retries_exhausted_and_never_bounced() {
        let all = RetrySelection::resolve(RetryScope::Transient, None).unwrap();
        assert_eq!(all.reasons, vec![Reason::RetriesExhausted]);
        let bounced = names(&["bounced"]);
        let refused = RetrySelection::resolve(RetryScope::Transient, Some(&bounced));
        assert!(refused.unwrap_err().contains("not in scope"));
        let rejected = names(&["provider_rejected"]);
        assert!(RetrySelection::resolve(RetryScope::Transient, Some(&rejected)).is_err());
    }

    #[test]
    fn failed_includes_bounced_only_when_named() {
        let all = RetrySelection::resolve(RetryScope::Failed, None).unwrap();
        assert!(!all.reasons.contains(&Reason::Bounced));
        assert!(all.reasons.contains(&Reason::ProviderRejected));
        let named = names(&["bounced", "provider_rejected", "bounced"]);
        let narrowed = RetrySelection::resolve(RetryScope::Failed, Some(&named)).unwrap();
        assert_eq!(
            narrowed.reasons,
            vec![Reason::ProviderRejected, Reason::Bounced]
        );
    }

    #[test]
    fn unknown_and_skip_reasons_and_an_empty_list_are_refused_with_the_codes_listed() {
        let unknown = names(&["nope"]);
        let error = RetrySelection::resolve(RetryScope::Failed, Some(&unknown)).unwrap_err();
        assert!(error.contains("retries_exhausted") && error.contains("suppressed"));
        let skip = names(&["suppressed"]);
        assert!(RetrySelection::resolve(RetryScope::Failed, Some(&skip)).is_err());
        assert!(RetrySelection::resolve(RetryScope::Failed, Some(&[])).is_err());
    }
}
