//! Auto-pause on failure rate: a campaign with `auto_pause` pauses itself when
//! more than `max_failure_rate` of its last `window` outcomes failed.
//!
//! The window is the campaign's, across every sender replica: one row per
//! campaign in `campaign_outcome_windows` (migration 0010) holds its last
//! `window` outcomes as a text ring of `0` (sent) and `1` (failed). The
//! sender's outcome write appends to it in the same statement that marks the
//! rows (`herald_sender::ledger::mark_leased_outcomes`), only for campaigns
//! with `auto_pause`, and returns the campaigns whose full window now exceeds
//! the rate while they are still sending. The sender then pauses them through
//! [`crate::transitions::Lifecycle::apply`] with `Actor::system("auto-pause")`
//! and the payload of [`cause`]. A window per replica would let each of N
//! replicas fail `window` recipients before pausing.
//!
//! Every transition that opens a run epoch (start, resume, a retry of a
//! completed campaign) empties the window ([`reset_window`]): the outcomes
//! that caused the pause would otherwise pause the resumed campaign again on
//! its first outcome.

use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// The campaign's `auto_pause` setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoPause {
    /// Pause when the failed share of the last `window` outcomes exceeds this
    /// (0 < rate <= 1; 1 never pauses).
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub max_failure_rate: f64,
    /// How many of the latest outcomes (sent or failed) are measured, 1 to
    /// 10000. The campaign pauses only once that many are recorded.
    #[schema(minimum = 1, maximum = 10000)]
    pub window: i32,
}

impl AutoPause {
    /// The reason the setting is refused, if it is.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.max_failure_rate > 0.0 && self.max_failure_rate <= 1.0) {
            return Err("auto_pause.max_failure_rate must be above 0 and at most 1".into());
        }
        if !(1..=10_000).contains(&self.window) {
            return Err("auto_pause.window must be between 1 and 10000".into());
        }
        Ok(())
    }

    /// The setting as stored in `campaigns.auto_pause`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A campaign whose window exceeded its rate, as the outcome write saw it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tripped {
    pub campaign_id: Uuid,
    pub failure_rate: f64,
    pub window: i32,
}

/// What the auto-pause's `paused` event carries beside the transition's fields.
pub fn cause(trip: &Tripped) -> serde_json::Map<String, serde_json::Value> {
    let mut cause = serde_json::Map::new();
    cause.insert("reason".into(), "failure_rate".into());
    cause.insert("failure_rate".into(), trip.failure_rate.into());
    cause.insert("window".into(), trip.window.into());
    cause
}

/// Empties the campaign's window (under the transition's lock of the campaign).
pub async fn reset_window(
    tx: &mut Transaction<'_, Postgres>,
    campaign: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE campaign_outcome_windows SET outcomes = '' WHERE campaign_id = $1")
        .bind(campaign)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_above_zero_up_to_one_and_windows_of_1_to_10000_are_accepted() {
        let ok = |rate, window| {
            AutoPause {
                max_failure_rate: rate,
                window,
            }
            .validate()
            .is_ok()
        };
        assert!(ok(0.5, 100) && ok(1.0, 1) && ok(0.001, 10_000));
        assert!(!ok(0.0, 100) && !ok(1.01, 100) && !ok(-0.5, 100) && !ok(f64::NAN, 100));
        assert!(!ok(0.5, 0) && !ok(0.5, 10_001));
    }
}
