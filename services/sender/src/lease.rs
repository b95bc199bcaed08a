//! A claim's lease as this replica sees it: the token that names it in the
//! ledger, which of its rows the replica still holds, the local deadline after
//! which it starts no further request for them, and the heartbeat that renews
//! it.
//!
//! A claim or a renewal sets `lease_expires_at = now() + lease` on every row it
//! holds; once that passes, another replica's claim may take the rows over and
//! send them. The heartbeat renews every third of the lease, but a replica whose
//! renewals stall (a stopped process, an overloaded host, an exhausted
//! connection pool) would otherwise go on sending rows that already belong to
//! somebody else, and every one of them would reach the provider twice. So the
//! replica fences itself:
//!
//! - By its own clock: the deadline is the instant the last successful claim or
//!   renewal *started* plus two thirds of the lease. The database's `now()` is
//!   not earlier than that start, so the deadline falls a third of the lease
//!   before the expiry the database wrote, which leaves room for a request that
//!   starts just before it. (The clock is the monotonic one: it measures a
//!   stalled process, not a suspended machine, whose clock stops too.)
//! - By row: a renewal returns the rows it renewed (`ledger::renew_leases`),
//!   and only those stay held. A renewal that waited on a row lock may find
//!   some rows taken over and renew the others; the taken ones drop out here.
//!
//! Requests already in flight at the deadline finish (the idempotency key
//! covers a repeat); rows not yet started are released, which gives back only
//! those nobody has taken over.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::work::Delivery;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::Sender;
use crate::ledger::{self, ClaimedRecipient};

/// One claim's lease: its ledger token and which rows this replica may still
/// start requests for, until when.
#[derive(Debug)]
pub struct Lease {
    token: Uuid,
    /// The lease length the ledger was given, in seconds (`HERALD_LEASE_SECONDS`).
    seconds: f64,
    /// When the claim started: the heartbeat's first beat counts from it.
    started: Instant,
    held: Mutex<Held>,
    /// Whether a request was already refused (logged once per lease).
    refused: AtomicBool,
}

#[derive(Debug)]
struct Held {
    /// Past this instant no request starts under the lease.
    deadline: Instant,
    /// The rows the last claim or renewal held; a row that is done drops out
    /// at the next renewal, which does not matter: it is never sent again.
    rows: HashSet<i64>,
}

impl Lease {
    /// A lease on `rows`, taken by the claim that `started` at that instant.
    pub fn claimed(token: Uuid, seconds: f64, started: Instant, rows: &[i64]) -> Self {
        Self {
            token,
            seconds,
            started,
            held: Mutex::new(Held {
                deadline: started + usable(seconds),
                rows: rows.iter().copied().collect(),
            }),
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

    /// Records a renewal that `started` at that instant and renewed `rows`:
    /// only they stay held, for two thirds of the lease from `started`.
    pub fn renewed(&self, started: Instant, rows: &[i64]) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.rows = rows.iter().copied().collect();
        held.deadline = held.deadline.max(started + usable(self.seconds));
    }

    /// Whether a request for row `id` may still start under the lease.
    pub fn holds(&self, id: i64) -> bool {
        self.holds_at(id, Instant::now())
    }

    fn holds_at(&self, id: i64, now: Instant) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        now < held.deadline && held.rows.contains(&id)
    }

    /// Counts a request that did not start because the lease ran out or the
    /// row was taken over (`herald_lease_expired_requests_total`), and logs the
    /// first per lease. The caller releases the row like a paused one, which
    /// gives it back only if nobody has taken it over meanwhile.
    pub fn refuse_request(&self, campaign_id: Uuid) {
        metrics::counter!("herald_lease_expired_requests_total").increment(1);
        if !self.refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(%campaign_id, lease_token = %self.token,
                "lease ran out before it was renewed; its unsent rows are left to their next holder");
        }
    }
}

impl Sender {
    /// Keeps the leases and the message alive while the rows are worked on,
    /// until the handle is dropped (also when the batch panics):
    /// a beat every third of the lease, counted from the claim and from each
    /// beat's start (so slow renewals do not stretch the pace), the ledger
    /// first (it decides who may send), then the message's ack deadline, which
    /// may not hold up the next beat.
    pub(crate) fn spawn_heartbeat(
        &self,
        campaign: Uuid,
        lease: Arc<Lease>,
        claimed: &[ClaimedRecipient],
        delivery: Option<Delivery>,
    ) -> AbortOnDropHandle<()> {
        let (sender, ids) = (
            self.clone(),
            claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
        );
        AbortOnDropHandle::new(tokio::spawn(async move {
            // Floored so that a lease set in code to 0 (flags and the
            // environment refuse under 1 s) cannot make the loop spin.
            let every = Duration::from_secs_f64((lease.seconds() / 3.0).max(0.1));
            let mut beat = lease.started;
            loop {
                beat += every;
                tokio::time::sleep_until(beat).await;
                let (pool, started) = (&sender.inner.pool, Instant::now());
                let renewed =
                    ledger::renew_leases(pool, campaign, lease.token(), &ids, lease.seconds())
                        .await;
                match renewed {
                    Ok(rows) => lease.renewed(started, &rows),
                    Err(error) => tracing::warn!(campaign_id = %campaign, %error,
                        "could not renew leases; the rows stop being sent when they run out"),
                }
                if let Some(d) = &delivery {
                    let _ = tokio::time::timeout(every / 2, d.in_progress()).await;
                }
                // After a stall, beat now rather than once per missed beat.
                beat = beat.max(Instant::now().checked_sub(every).unwrap_or(beat));
            }
        }))
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

    fn lease_on(rows: &[i64], start: Instant) -> Lease {
        Lease::claimed(Uuid::new_v4(), 3.0, start, rows)
    }

    #[test]
    fn a_fresh_lease_holds_its_rows_for_two_thirds_of_its_length() {
        let start = Instant::now();
        let lease = lease_on(&[1, 2], start);
        assert!(lease.holds_at(1, start + Duration::from_millis(1_990)));
        assert!(!lease.holds_at(3, start));
        assert!(!lease.holds_at(1, start + Duration::from_millis(2_000)));
    }

    #[test]
    fn a_renewal_moves_the_deadline_from_when_it_started() {
        let start = Instant::now();
        let lease = lease_on(&[1], start);
        lease.renewed(start + Duration::from_secs(1), &[1]);
        assert!(lease.holds_at(1, start + Duration::from_millis(2_990)));
        assert!(!lease.holds_at(1, start + Duration::from_secs(3)));
    }

    #[test]
    fn a_row_the_renewal_did_not_renew_is_no_longer_held() {
        let start = Instant::now();
        let lease = lease_on(&[1, 2, 3], start);
        lease.renewed(start + Duration::from_secs(1), &[2]);
        assert!(!lease.holds_at(1, start + Duration::from_millis(1_100)));
        assert!(lease.holds_at(2, start + Duration::from_millis(2_900)));
        lease.renewed(start + Duration::from_secs(2), &[]);
        assert!(!lease.holds_at(2, start + Duration::from_millis(2_100)));
    }

    #[test]
    fn a_renewal_never_shortens_the_deadline() {
        let start = Instant::now();
        let lease = lease_on(&[1], start);
        lease.renewed(start + Duration::from_secs(2), &[1]);
        lease.renewed(start + Duration::from_secs(1), &[1]);
        assert!(lease.holds_at(1, start + Duration::from_millis(3_990)));
    }
}
