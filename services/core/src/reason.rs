//! Reason codes: why a recipient ended `failed` or `skipped` (invariant 11).
//!
//! Every failed or skipped row of the ledger carries one of these codes in
//! `recipients.reason` (migration 0005), with a human `last_error` beside it.
//! The code is what clients filter and count on (`GET
//! /v1/campaigns/{id}/recipients?reason=`, `reasons` on the campaign); the text
//! is for people and may change. Codes are stored and served as their
//! snake_case names ([`Reason::as_str`]); a code never changes its meaning, and
//! new codes may be added.
//!
//! Whoever writes a reason on a row also adds it to the campaign's reason counts
//! (`campaign_reason_counts`, migration 0008; see [`REASON_COUNTS`]) in the same
//! statement, the way the ledger counters go to `campaign_counter_deltas`, so
//! `reasons` is read from a few small rows instead of a scan of the ledger.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a recipient is `failed` or `skipped`. Serialized as the snake_case name
/// (`"campaign_stopped"`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Skipped: the address is on the tenant's suppression list (an opt-out).
    /// Checked when the recipient is claimed, so an opt-out that lands
    /// mid-campaign holds for every recipient not yet claimed.
    Suppressed,
    /// Skipped: the campaign was stopped before this recipient was sent,
    /// including rows a sender had claimed and released after the stop.
    CampaignStopped,
    /// Skipped: the campaign was failed (the `fail` transition) before this
    /// recipient was sent.
    CampaignFailed,
    /// The address is not valid for the channel's address kind (found at
    /// import; such rows are rejected there with this code).
    InvalidAddress,
    /// Failed: the template could not be rendered for this recipient's
    /// variables. At send time this fails the one recipient, without a request
    /// and without retries; at import a strict template rejects the row.
    TemplateError,
    /// Failed: the provider refused the request for good (a 4xx other than
    /// 408 and 429). Not retried.
    ProviderRejected,
    /// Failed: every attempt `HERALD_MAX_ATTEMPTS` allows (across pauses and
    /// resumes) met a transient failure: 5xx, 408, 429, a timeout or an
    /// unreachable provider.
    RetriesExhausted,
    /// Failed: the provider accepted the message, then a delivery receipt
    /// reported that it failed (a bounce).
    Bounced,
}

impl Reason {
    /// Every code, in the order the docs list them.
    pub const ALL: [Reason; 8] = [
        Reason::Suppressed,
        Reason::CampaignStopped,
        Reason::CampaignFailed,
        Reason::InvalidAddress,
        Reason::TemplateError,
        Reason::ProviderRejected,
        Reason::RetriesExhausted,
        Reason::Bounced,
    ];

    /// The code as stored in `recipients.reason` and served by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Suppressed => "suppressed",
            Reason::CampaignStopped => "campaign_stopped",
            Reason::CampaignFailed => "campaign_failed",
            Reason::InvalidAddress => "invalid_address",
            Reason::TemplateError => "template_error",
            Reason::ProviderRejected => "provider_rejected",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::Bounced => "bounced",
        }
    }

    /// Every code joined by `sep`, for error messages and docs.
    pub fn list(sep: &str) -> String {
        Self::ALL.map(Reason::as_str).join(sep)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// The table a campaign's counts by reason live in: `(campaign_id, shard,
/// reason, count)`, primary key `(campaign_id, shard, reason)`. A writer adds
/// to its own shard (the sender's lease shard, 0 for transitions) with
/// `INSERT ... ON CONFLICT (campaign_id, shard, reason) DO UPDATE SET count =
/// campaign_reason_counts.count + excluded.count`, in the statement that writes
/// the rows, after any `campaign_counter_deltas` write of that statement (one
/// lock order for every writer); a row that leaves a reason behind adds -1.
pub const REASON_COUNTS: &str = "campaign_reason_counts";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_name_and_serde() {
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, serde_json::json!(reason.as_str()));
        }
        assert!("stopped".parse::<Reason>().is_err());
    }
}
