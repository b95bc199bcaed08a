//! Requests of each campaign that this replica has in flight: counted from the
//! status check right before a request to the provider's answer.
//!
//! Counting from the check, not from the request, is what makes a control ack
//! exact: a request that passed its check before a pause arrived is already
//! counted when the ack is taken, and a check after that sees the pause. So an
//! ack's `inFlight` bounds every request of the campaign that may still reach
//! the provider from this replica, and when it drops to zero none will.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct InFlight {
    counts: Mutex<HashMap<Uuid, u64>>,
    /// Woken whenever a campaign's count drops to zero.
    drained: Notify,
}

/// One counted request; dropping it (answered, given up or cancelled) uncounts it.
#[derive(Debug)]
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    campaign: Uuid,
}

impl InFlight {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, u64>> {
        self.counts.lock().expect("in-flight lock")
    }

    /// Counts one request of `campaign` until the guard is dropped.
    pub fn enter(self: &Arc<Self>, campaign: Uuid) -> InFlightGuard {
        *self.counts().entry(campaign).or_default() += 1;
        InFlightGuard {
            owner: self.clone(),
            campaign,
        }
    }

    pub fn count(&self, campaign: Uuid) -> u64 {
        self.counts().get(&campaign).copied().unwrap_or(0)
    }

    /// Resolves once no request of `campaign` is in flight.
    pub async fn drained(&self, campaign: Uuid) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a drop in between wakes it.
            notified.as_mut().enable();
            if self.count(campaign) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let zero = {
            let mut counts = self.owner.counts();
            let count = counts.entry(self.campaign).or_default();
            *count = count.saturating_sub(1);
            let zero = *count == 0;
            if zero {
                counts.remove(&self.campaign);
            }
            zero
        };
        if zero {
            self.owner.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drained_resolves_only_after_the_last_request_of_the_campaign_ends() {
        let in_flight = Arc::new(InFlight::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = in_flight.enter(a);
        let second = in_flight.enter(a);
        let _other = in_flight.enter(b);
        assert_eq!(in_flight.count(a), 2);
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.drained(a).await })
        };
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "one request of the campaign is still out"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("drained after the last one")
            .unwrap();
        assert_eq!(in_flight.count(a), 0);
        assert_eq!(in_flight.count(b), 1);
    }
}
