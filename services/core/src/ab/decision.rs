//! The A/B decision: when a campaign's test cohort is done it waits (still
//! `sending`, `waiting.reason = "ab_decision"`), and a winner is picked, by an
//! operator (`POST /v1/campaigns/{id}/ab/winner`) or by the metric once
//! `decide_after_seconds` have passed (the api's scheduler). The decision is an
//! `ab_decided` event carrying the figures it was taken on; if the campaign is
//! sending, it opens a new run epoch, whose pack request (published with the
//! event) pages the rest of the list, now claimable with the winner's template.
//!
//! The decision does not change the campaign's status, so it is not a lifecycle
//! transition; it locks the campaign row as a transition does, so it is ordered
//! against pause, resume and stop: decided while paused, it opens no epoch (the
//! resume will), and a stopped campaign cannot be decided.

use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::{AbTest, Variant, VariantCounters, WinnerMetric};
use crate::lifecycle::Status;
use crate::transitions::{Actor, Lifecycle, append_event};

/// How the winner is picked.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// An operator named it.
    Operator(&'a str),
    /// The campaign's `winner_metric`, now that the decision is due.
    Metric,
}

/// Why a decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("campaign not found")]
    NotFound,
    #[error("this campaign has no A/B test (`ab_test`) to decide")]
    NotAbTest,
    #[error("the A/B test was already decided: the winner is {0}")]
    AlreadyDecided(String),
    #[error("a campaign that is {0} cannot be decided; only a sending or paused one")]
    NotDecidable(Status),
    #[error("unknown variant {0:?}; the variants are {1}")]
    UnknownVariant(String, String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One variant's figures at the decision: what the event records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub variant: String,
    #[serde(flatten)]
    pub counters: VariantCounters,
    /// The metric's count over the variant's test recipients (0 without any).
    pub rate: f64,
}

/// A committed decision.
#[derive(Debug, Clone)]
pub struct Decided {
    pub winner: String,
    pub event_id: Uuid,
}

struct Locked {
    status: Status,
    variants: Vec<Variant>,
    test: AbTest,
}

async fn lock_for_decision(
    tx: &mut Transaction<'_, Postgres>,
    campaign: Uuid,
    tenant: Option<Uuid>,
) -> Result<Locked, DecideError> {
    let row = sqlx::query(
        "SELECT status, variants, ab_test, ab_winner FROM campaigns
         WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) FOR NO KEY UPDATE",
    )
    .bind(campaign)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(DecideError::NotFound)?;
    let decode = |e: String| DecideError::Database(sqlx::Error::Decode(e.into()));
    let variants: Option<serde_json::Value> = row.try_get("variants")?;
    let test: Option<serde_json::Value> = row.try_get("ab_test")?;
    let (Some(variants), Some(test)) = (variants, test) else {
        return Err(DecideError::NotAbTest);
    };
    if let Some(winner) = row.try_get::<Option<String>, _>("ab_winner")? {
        return Err(DecideError::AlreadyDecided(winner));
    }
    let status: Status = row
        .try_get::<String, _>("status")?
        .parse()
        .map_err(|e: crate::lifecycle::UnknownStatus| decode(e.to_string()))?;
    Ok(Locked {
        status,
        variants: serde_json::from_value(variants).map_err(|e| decode(e.to_string()))?,
        test: serde_json::from_value(test).map_err(|e| decode(e.to_string()))?,
    })
}

/// A campaign's counters per variant, summed over the shards, in the order of
/// `variants` (a variant nothing was counted for has zeros).
pub async fn variant_counters<'e>(
    db: impl sqlx::PgExecutor<'e>,
    campaign: Uuid,
    variants: &[Variant],
) -> Result<Vec<(String, VariantCounters)>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT variant, sum(recipients)::bigint, sum(test_recipients)::bigint, sum(sent)::bigint,
                sum(failed)::bigint, sum(delivered)::bigint, sum(read)::bigint
         FROM campaign_variant_counts WHERE campaign_id = $1 GROUP BY variant",
    )
    .bind(campaign)
    .fetch_all(db)
    .await?;
    Ok(variants
        .iter()
        .map(|v| {
            let counters = rows
                .iter()
                .find(|r| r.0 == v.name)
                .map(|r| VariantCounters {
                    recipients: r.1,
                    test_recipients: r.2,
                    sent: r.3,
                    failed: r.4,
                    delivered: r.5,
                    read: r.6,
                })
                .unwrap_or_default();
            (v.name.clone(), counters)
        })
        .collect())
}

/// The figures by `metric`, and the winner they pick: the highest rate (the
/// metric over the variant's test recipients, so a heavier variant does not win
/// by size alone), then the highest count, then the first listed.
pub fn figures_and_best(
    counters: &[(String, VariantCounters)],
    metric: WinnerMetric,
) -> (Vec<Figure>, Option<String>) {
    let figures: Vec<Figure> = counters
        .iter()
        .map(|(name, c)| Figure {
            variant: name.clone(),
            counters: *c,
            rate: if c.test_recipients > 0 {
                c.metric(metric) as f64 / c.test_recipients as f64
            } else {
                0.0
            },
        })
        .collect();
    let mut best: Option<&Figure> = None;
    for figure in &figures {
        let better = best.is_none_or(|b| {
            figure.rate > b.rate
                || (figure.rate == b.rate
                    && figure.counters.metric(metric) > b.counters.metric(metric))
        });
        if better {
            best = Some(figure);
        }
    }
    let winner = best.map(|f| f.variant.clone());
    (figures, winner)
}

async fn record_winner(
    tx: &mut Transaction<'_, Postgres>,
    campaign: Uuid,
    winner: &str,
) -> Result<(i64, i32), sqlx::Error> {
    let row: (i64, i32) = sqlx::query_as(
        "UPDATE campaigns SET ab_winner = $2, ab_decided_at = now(), version = version + 1,
                run_epoch = run_epoch + CASE WHEN status = 'sending' THEN 1 ELSE 0 END,
                updated_at = now()
         WHERE id = $1 RETURNING version, run_epoch",
    )
    .bind(campaign)
    .bind(winner)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM campaign_waits WHERE campaign_id = $1 AND reason = 'ab_decision'")
        .bind(campaign)
        .execute(&mut **tx)
        .await?;
    Ok(row)
}

/// Decides the campaign's A/B test (see the module docs), then publishes the
/// event (and, while sending, the pack request of the new run epoch).
pub async fn decide(
    lifecycle: &Lifecycle,
    campaign: Uuid,
    tenant: Option<Uuid>,
    pick: Pick<'_>,
    actor: &Actor,
) -> Result<Decided, DecideError> {
    let mut tx = lifecycle.pool.begin().await?;
    let locked = lock_for_decision(&mut tx, campaign, tenant).await?;
    let allowed = match pick {
        Pick::Operator(_) => matches!(locked.status, Status::Sending | Status::Paused),
        Pick::Metric => locked.status == Status::Sending,
    };
    if !allowed {
        return Err(DecideError::NotDecidable(locked.status));
    }
    let metric = locked.test.winner_metric;
    let counters = variant_counters(&mut *tx, campaign, &locked.variants).await?;
    let (figures, best) = figures_and_best(&counters, metric);
    let winner = match pick {
        Pick::Operator(name) => {
            if !locked.variants.iter().any(|v| v.name == name) {
                let names: Vec<&str> = locked.variants.iter().map(|v| v.name.as_str()).collect();
                return Err(DecideError::UnknownVariant(name.into(), names.join(", ")));
            }
            name.to_owned()
        }
        Pick::Metric => best.unwrap_or_else(|| locked.variants[0].name.clone()),
    };
    let (version, run_epoch) = record_winner(&mut tx, campaign, &winner).await?;
    let sending = locked.status == Status::Sending;
    let payload = serde_json::json!({
        "from": locked.status, "to": locked.status, "version": version, "runEpoch": run_epoch,
        "triggeredBy": if sending { Some("ab_decision") } else { None },
        "winner": winner,
        "decidedBy": match pick { Pick::Operator(_) => "operator", Pick::Metric => "metric" },
        "metric": metric,
        "figures": figures,
    });
    let event_id = append_event(&mut tx, campaign, "ab_decided", payload, actor).await?;
    tx.commit().await?;
    lifecycle.outbox.publish_fast(campaign).await;
    tracing::info!(campaign_id = %campaign, %winner, "A/B test decided");
    Ok(Decided { winner, event_id })
}

/// Sending campaigns whose automatic decision is due: their test cohort is
/// done, and `decide_after_seconds` have passed since.
pub async fn due_decisions(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.id FROM campaign_waits w JOIN campaigns c ON c.id = w.campaign_id
         WHERE w.reason = 'ab_decision' AND w.until <= now()
           AND c.status = 'sending' AND c.ab_winner IS NULL
           AND (SELECT coalesce(sum(v.test_open), 0) FROM campaign_variant_counts v
                WHERE v.campaign_id = c.id) = 0
         ORDER BY w.until LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// If the campaign is a sending, undecided A/B test whose test cohort has
/// nothing open, records that it waits for the decision (`campaign_waits`,
/// reason `ab_decision`, until the automatic decision or null) and returns
/// true. The time the test was done is kept on the campaign, so noting it
/// again (after a resume, from the sweep) never moves the decision later.
/// Called where the test cohort may have just finished: a sender ending a
/// lease, the packer finishing an epoch, the sweep.
///
/// The campaign row is locked first, as the decision locks it: a decision
/// committed meanwhile is seen (the row is re-read once the lock is granted),
/// so no wait is written for a campaign already decided.
pub async fn note_test_done(pool: &PgPool, campaign: Uuid) -> Result<bool, sqlx::Error> {
    let noted: Option<i32> = sqlx::query_scalar(
        "WITH c AS (
             SELECT id, ab_test, ab_test_done_at FROM campaigns
             WHERE id = $1 AND status = 'sending' AND ab_test IS NOT NULL AND ab_winner IS NULL
               AND (SELECT coalesce(sum(test_open), 0) FROM campaign_variant_counts v
                    WHERE v.campaign_id = $1) = 0
             FOR NO KEY UPDATE
         ), set_done AS (
             UPDATE campaigns SET ab_test_done_at = now() FROM c
             WHERE campaigns.id = c.id AND c.ab_test_done_at IS NULL
             RETURNING campaigns.ab_test_done_at
         ), w AS (
             SELECT coalesce((SELECT ab_test_done_at FROM set_done), c.ab_test_done_at)
                    + make_interval(secs => (c.ab_test->>'decide_after_seconds')::double precision) AS until
             FROM c
         )
         INSERT INTO campaign_waits (campaign_id, reason, until) SELECT $1, 'ab_decision', until FROM w
         ON CONFLICT (campaign_id) DO UPDATE SET reason = 'ab_decision', until = excluded.until,
             updated_at = now()
         RETURNING 1",
    )
    .bind(campaign)
    .fetch_optional(pool)
    .await?;
    Ok(noted.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(test: i64, sent: i64, read: i64) -> VariantCounters {
        VariantCounters {
            recipients: test * 5,
            test_recipients: test,
            sent,
            read,
            ..Default::default()
        }
    }

    #[test]
    fn the_metric_picks_the_highest_rate_not_the_largest_variant() {
        let counts = vec![
            ("A".to_owned(), counters(300, 270, 10)),
            ("B".to_owned(), counters(100, 95, 40)),
        ];
        let (figures, best) = figures_and_best(&counts, WinnerMetric::Sent);
        assert_eq!(best.as_deref(), Some("B"));
        assert!((figures[0].rate - 0.9).abs() < 1e-9);
        assert_eq!(
            figures_and_best(&counts, WinnerMetric::Read).1.as_deref(),
            Some("B")
        );
    }

    #[test]
    fn a_tie_goes_to_the_larger_count_then_to_the_first_listed() {
        let tie = vec![
            ("A".to_owned(), counters(100, 50, 0)),
            ("B".to_owned(), counters(200, 100, 0)),
        ];
        assert_eq!(
            figures_and_best(&tie, WinnerMetric::Sent).1.as_deref(),
            Some("B")
        );
        let nothing = vec![
            ("A".to_owned(), counters(0, 0, 0)),
            ("B".to_owned(), counters(0, 0, 0)),
        ];
        assert_eq!(
            figures_and_best(&nothing, WinnerMetric::Read).1.as_deref(),
            Some("A")
        );
    }
}
