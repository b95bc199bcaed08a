//! The sender's statements on the recipient ledger: claim (`claim`), mark
//! (`mark`), release, renew and finish (`lease`).
//!
//! Each is one statement that also moves the campaign's counters (in a counter
//! shard, `campaign_counter_deltas`) and, for rows it gives a reason, the
//! campaign's reason counts (`campaign_reason_counts`), so the projection never
//! drifts from the ledger. None of them writes an indexed column of
//! `recipients`, so Postgres updates the rows in place (HOT); see
//! migrations/0002_hot_ledger.sql.

use herald_core::contracts::SendBatch;
use herald_core::reason::Reason;
use uuid::Uuid;

mod claim;
mod lease;
mod mark;

pub use claim::{claim_batch, claim_batch_in};
pub use lease::{Released, finish_lease, release_claims, renew_leases};
pub use mark::{Marked, mark_leased_outcomes, mark_outcomes};

/// A recipient this replica now holds a lease on.
#[derive(Debug, Clone)]
pub struct ClaimedRecipient {
    pub id: i64,
    pub address: String,
    pub variables: serde_json::Value,
    /// Provider requests already made for this recipient in earlier runs (a
    /// pause or stop released it mid-retry) since its last retry by scope
    /// (`attempts - attempts_base`): they count against `HERALD_MAX_ATTEMPTS`.
    pub attempts: i32,
    /// The A/B variant to render it with; None in a plain campaign.
    pub variant: Option<String>,
}

/// What one claim took: the rows now leased to the caller, by id, and how many
/// rows it skipped instead because their address is suppressed.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub rows: Vec<ClaimedRecipient>,
    pub suppressed: i64,
}

/// The most rows one batch may claim: twice its declared size (rows in its range
/// can reopen after it was packed), never more than the schema's maximum. A batch
/// with a huge id range cannot make one sender claim a whole campaign.
pub fn claim_limit(batch: &SendBatch) -> i64 {
    batch.recipient_count.clamp(1, 50_000) * 2
}

/// Which counter shard a lease writes to: fixed per lease, so one batch's writes
/// land on one row while different batches spread over `COUNTER_SHARDS` rows.
pub const COUNTER_SHARDS: u128 = 16;

fn counter_shard(lease_token: Uuid) -> i16 {
    (lease_token.as_u128() % COUNTER_SHARDS) as i16
}

/// The final state of one dispatched recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub id: i64,
    pub sent: bool,
    pub provider_message_id: Option<String>,
    /// Why it failed, for people (`last_error`); None when sent.
    pub error: Option<String>,
    /// Why it failed, as a code (`reason`); None when sent.
    pub reason: Option<Reason>,
    /// Provider requests made in this run; added to the row's count.
    pub attempts: i32,
}

impl RecipientOutcome {
    /// Accepted by the provider after `attempts` requests in this run.
    pub fn sent(id: i64, provider_message_id: Option<String>, attempts: i32) -> Self {
        Self {
            id,
            sent: true,
            provider_message_id,
            error: None,
            reason: None,
            attempts,
        }
    }

    /// Failed for `reason` (with `error` for people) after `attempts` requests
    /// in this run.
    pub fn failed(id: i64, reason: Reason, error: String, attempts: i32) -> Self {
        Self {
            id,
            sent: false,
            provider_message_id: None,
            error: Some(error),
            reason: Some(reason),
            attempts,
        }
    }
}

/// A claimed recipient given back unsent because its campaign stopped being
/// sendable: back to pending after a pause, skipped after a stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    pub id: i64,
    /// Provider requests made in this run before the pause (retries of a
    /// transient failure); added to the row's count.
    pub attempts: i32,
    /// The last of those requests' error, if any.
    pub last_error: Option<String>,
}

/// What is left open in a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCounts {
    pub pending: i64,
    pub sending: i64,
    /// The campaign sends and its run epoch is not fully packed yet.
    pub more_to_pack: bool,
    pub run_epoch: i32,
    /// The campaign sends an A/B test not yet decided: its test cohort may
    /// have just finished (`herald_core::ab::decision::note_test_done`).
    pub ab_undecided: bool,
}

impl OpenCounts {
    pub fn is_done(&self) -> bool {
        self.pending == 0 && self.sending == 0
    }
}

/// One outcome with the lease it was claimed under: what a replica-wide write
/// of several batches' outcomes is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedOutcome {
    pub campaign_id: Uuid,
    pub lease_token: Uuid,
    pub outcome: RecipientOutcome,
}
