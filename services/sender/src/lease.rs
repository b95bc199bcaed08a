//! A claim's lease as this replica sees it: the token that names it in the
//! ledger, the local deadline after which the replica starts no further
//! request for its rows, and the heartbeat that renews it.
//!
//! A claim or a renewal sets `lease_expires_at = now() + lease` on every row it
//! holds; once that passes, another replica's claim may take the rows over and
//! send them. The heartbeat renews every third of the lease, but a replica whose
//! renewals stall (an overloaded host, an exhausted connection pool, a paused
//! VM) would otherwise go on sending rows that already belong to somebody else,
//! and every one of them would reach the provider twice. So the replica fences
//! itself by its own clock: the deadline is the instant the last successful
//! claim or renewal *started* plus the lease, less a third of it. The database's
//! `now()` is not earlier than that start, so the deadline always falls before
//! the expiry the database wrote, with a third of the lease to spare for a
//! request that starts just before it.
//!
//! A renewal renews only rows whose lease has not yet expired
//! (`ledger::renew_leases`), and every row of one lease carries the same expiry,
//! so a renewal either extends all the rows still held or none: one deadline
//! covers the whole lease. Requests already in flight at the deadline finish
//! (the idempotency key covers a repeat); rows not yet started are released,
//! which gives back only those nobody has taken over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::work::Delivery;
use tokio::time::Instant;
use uuid::Uuid;

use crate::Sender;
use crate::ledger::{self, ClaimedRecipient};

/// One claim's lease: its ledger token and how long this replica may still
/// start requests under it.
#[derive(Debug)]
pub struct Lease {
    token: Uuid,
    /// The lease length the ledger was given, in seconds (`HERALD_LEASE_SECONDS`).
    seconds: f64,
    /// Past this instant no request starts under the lease.
    deadline: Mutex<Instant>,
    /// Whether a request was already refused (logged once per lease).
    refused: AtomicBool,
}

impl Lease {
    /// A lease the claim that `started` at that instant has just taken.
    pub fn claimed(token: Uuid, seconds: f64, started: Instant) -> Self {
        Self {
            token,
            seconds,
            deadline: Mutex::new(started + usable(seconds)),
            refused: AtomicBool::new(false),
        }
    }

    /// The token the ledger knows the lease by.
    pub fn token(&self) -> Uuid {
        self.token
    }

    /// The lease length in seconds.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Records a renewal that `started` at that instant and renewed `rows` rows.
    /// A renewal that renewed none proves nothing (the rows were all done, or
    /// the lease had already expired), so it leaves the deadline alone.
    pub fn renewed(&self, started: Instant, rows: u64) {
        if rows == 0 {
            return;
        }
        let mut deadline = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        *deadline = (*deadline).max(started + usable(self.seconds));
    }

    /// Whether a request may still start under the lease.
    pub fn held(&self) -> bool {
        self.held_at(Instant::now())
    }

    fn held_at(&self, now: Instant) -> bool {
        now < *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request that did not start because the lease ran out
    /// (`herald_lease_expired_requests_total`), and logs the first per lease.
    /// The caller releases the row like a paused one, which gives it back only
    /// if nobody has taken it over meanwhile.
    pub fn refuse_request(&self, campaign_id: Uuid) {
        metrics::counter!("herald_lease_expired_requests_total").increment(1);
        if !self.refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(%campaign_id, lease_token = %self.token,
                "lease ran out before it was renewed; its unsent rows are left to their next holder");
        }
    }
}

impl Sender {
    /// Keeps the leases and the message alive while the rows are worked on:
    /// every third of the lease, the ledger first (it decides who may send),
    /// then the message's ack deadline.
    pub(crate) fn spawn_heartbeat(
        &self,
        campaign: Uuid,
        lease: Arc<Lease>,
        claimed: &[ClaimedRecipient],
        delivery: Option<Delivery>,
    ) -> tokio::task::JoinHandle<()> {
        let (sender, ids) = (
            self.clone(),
            claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let every = Duration::from_secs_f64((lease.seconds() / 3.0).max(0.5));
            loop {
                tokio::time::sleep(every).await;
                let (pool, started) = (&sender.inner.pool, Instant::now());
                let renewed =
                    ledger::renew_leases(pool, campaign, lease.token(), &ids, lease.seconds())
                        .await;
                match renewed {
                    Ok(rows) => lease.renewed(started, rows),
                    Err(error) => tracing::warn!(campaign_id = %campaign, %error,
                        "could not renew leases; the rows stop being sent when they run out"),
                }
                if let Some(d) = &delivery {
                    d.in_progress().await;
                }
            }
        })
    }
}

/// The part of a lease this replica uses: two thirds of it, so a heartbeat
/// that runs every third may miss one beat without stopping the sends.
fn usable(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds * 2.0 / 3.0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_lease_is_held_for_two_thirds_of_its_length() {
        let start = Instant::now();
        let lease = Lease::claimed(Uuid::new_v4(), 3.0, start);
        assert!(lease.held_at(start + Duration::from_millis(1_990)));
        assert!(!lease.held_at(start + Duration::from_millis(2_000)));
    }

    #[test]
    fn a_renewal_moves_the_deadline_from_when_it_started() {
        let start = Instant::now();
        let lease = Lease::claimed(Uuid::new_v4(), 3.0, start);
        lease.renewed(start + Duration::from_secs(1), 5);
        assert!(lease.held_at(start + Duration::from_millis(2_990)));
        assert!(!lease.held_at(start + Duration::from_secs(3)));
    }

    #[test]
    fn a_renewal_that_renewed_no_row_does_not_extend_the_lease() {
        let start = Instant::now();
        let lease = Lease::claimed(Uuid::new_v4(), 3.0, start);
        lease.renewed(start + Duration::from_secs(1), 0);
        assert!(!lease.held_at(start + Duration::from_secs(2)));
    }

    #[test]
    fn a_late_answer_to_an_older_renewal_never_shortens_the_lease() {
        let start = Instant::now();
        let lease = Lease::claimed(Uuid::new_v4(), 3.0, start);
        lease.renewed(start + Duration::from_secs(2), 5);
        lease.renewed(start + Duration::from_secs(1), 5);
        assert!(lease.held_at(start + Duration::from_millis(3_990)));
    }
}
