//! Why a campaign is not moving: the sender records each wait (rate limit, send
//! window, daily cap) in `campaign_waits`, which the API shows as `waiting`, and
//! clears it when the campaign sends freely again. A wait for an A/B decision
//! (`herald_core::ab::decision`) is not the sender's: these writes never
//! overwrite or clear it; only the decision does. Also the wait metric
//! `herald_wait_seconds{reason}` (its sum: time batches were held back).
//!
//! Writes are rate-limited per campaign on this replica: the same reason is
//! written again only when its `until` moved by more than a second, or a second
//! after the last write, so a throttled campaign costs about one write a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::budget::WaitReason;

/// A wait as last written by this replica (`None`: cleared).
type Written = (Option<(WaitReason, DateTime<Utc>)>, Instant);

const REWRITE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Waits {
    pool: PgPool,
    written: Mutex<HashMap<Uuid, Written>>,
}

async fn upsert_wait(
    pool: &PgPool,
    campaign: Uuid,
    reason: WaitReason,
    until: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO campaign_waits (campaign_id, reason, until) VALUES ($1, $2, $3)
         ON CONFLICT (campaign_id) DO UPDATE SET reason = excluded.reason, until = excluded.until,
             updated_at = now()
         WHERE campaign_waits.reason <> 'ab_decision'",
    )
    .bind(campaign)
    .bind(reason.as_str())
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}

async fn clear_wait(pool: &PgPool, campaign: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM campaign_waits WHERE campaign_id = $1 AND reason <> 'ab_decision'")
        .bind(campaign)
        .execute(pool)
        .await?;
    Ok(())
}

impl Waits {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// The campaign waits for `reason` until `until`; `wait` is how long this
    /// replica will hold its batch back (for the wait-time metric).
    pub async fn waiting(
        &self,
        campaign: Uuid,
        reason: WaitReason,
        until: DateTime<Utc>,
        wait: Duration,
    ) {
        // Its sum is the time batches spent held back, by reason.
        metrics::histogram!("herald_wait_seconds", "reason" => reason.as_str())
            .record(wait.as_secs_f64());
        let due = match self.written.lock().expect("waits lock").get(&campaign) {
            Some((Some((last, last_until)), at)) => {
                *last != reason
                    || (until - *last_until).num_milliseconds().abs() > 1000
                    || at.elapsed() > REWRITE_AFTER
            }
            _ => true,
        };
        if due {
            self.remember(campaign, Some((reason, until)));
            if let Err(error) = upsert_wait(&self.pool, campaign, reason, until).await {
                tracing::warn!(campaign_id = %campaign, %error, "could not record the wait");
            }
        }
    }

    /// The campaign got everything it asked for: it sends freely.
    pub async fn sending_freely(&self, campaign: Uuid) {
        // Another replica may have written the wait, so clear when this one
        // has not cleared it within the last second.
        let due = !matches!(
            self.written.lock().expect("waits lock").get(&campaign),
            Some((None, at)) if at.elapsed() < REWRITE_AFTER
        );
        if due {
            self.remember(campaign, None);
            if let Err(error) = clear_wait(&self.pool, campaign).await {
                tracing::warn!(campaign_id = %campaign, %error, "could not clear the wait");
            }
        }
    }

    fn remember(&self, campaign: Uuid, wait: Option<(WaitReason, DateTime<Utc>)>) {
        let mut written = self.written.lock().expect("waits lock");
        if written.len() > 10_000 {
            written.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(600));
        }
        written.insert(campaign, (wait, Instant::now()));
    }
}
