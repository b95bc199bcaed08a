//! Dispatching one claimed recipient: wait for its start time (its budget
//! token), check the campaign's status right before each request, retry
//! transient failures with backoff, and give the row back if the campaign
//! stops being sendable meanwhile.
//!
//! Every attempt of a budgeted campaign starts on a token of its own: the first
//! on the token its slice reserved, each retry on a fresh one, so retries count
//! against the budget. A token whose start time has passed by more than
//! [`budget::START_SLACK`] is given up for a fresh one (see `budget`).

use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::budget;
use crate::dispatch::{Attempt, OutboundMessage, RetryPolicy};
use crate::lease::Lease;
use crate::ledger::{ClaimedRecipient, RecipientOutcome, Unsent};
use crate::plan::CampaignPlan;
use crate::{LogFailure as _, Sender};
use herald_core::reason::Reason;

/// How one claimed recipient ended on this replica.
pub(crate) enum Dispatched {
    Done(RecipientOutcome),
    /// Not sent because the campaign stopped being sendable: release it, with
    /// the requests it had in this run.
    Unsent(Unsent),
}

/// The attempts left for a recipient that already had `prior` requests in
/// earlier runs: `HERALD_MAX_ATTEMPTS` bounds the total, not each run.
pub(crate) fn attempts_left(max_attempts: u32, prior: i32) -> u32 {
    max_attempts
        .max(1)
        .saturating_sub(u32::try_from(prior).unwrap_or(0))
}

fn unsent(id: i64, attempts: i32, last_error: Option<String>) -> Dispatched {
    Dispatched::Unsent(Unsent {
        id,
        attempts,
        last_error,
    })
}

impl Sender {
    /// Waits for `delay`, but wakes early when a control message for the campaign
    /// arrives. Returns false if the campaign is no longer sendable.
    ///
    /// A control message that lands while this is re-checking (between two
    /// `notified()` registrations) is not lost: it bumped the cache's generation,
    /// so the re-check in flight reads Postgres again before it answers.
    pub(crate) async fn wait_unless_paused(&self, campaign: Uuid, delay: Duration) -> bool {
        let waker = self.inner.cache.waker(campaign);
        let deadline = Instant::now() + delay;
        loop {
            let notified = waker.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.sendable(campaign).await,
                _ = notified => {
                    if !self.sendable(campaign).await {
                        return false;
                    }
                }
            }
        }
    }

    /// A failed status read counts as not sendable: fail safe.
    pub(crate) async fn sendable(&self, campaign: Uuid) -> bool {
        self.inner
            .cache
            .is_sendable(campaign)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%campaign, %error, "status check failed; holding dispatch");
                false
            })
    }

    /// Waits until a request may start under the campaign's budget: on `token`
    /// if it is still usable, else on a freshly reserved one. False if the
    /// campaign stopped being sendable (or its budget could not be read).
    async fn start_gate(
        &self,
        campaign: Uuid,
        plan: &CampaignPlan,
        token: Option<Instant>,
    ) -> bool {
        if !plan.budgeted {
            return true;
        }
        let mut token = token;
        loop {
            let at = match token {
                Some(at) => at,
                None => match self.reserve_one(campaign, plan).await {
                    Some(at) => at,
                    None => return false,
                },
            };
            if !self
                .wait_unless_paused(campaign, at.saturating_duration_since(Instant::now()))
                .await
            {
                return false;
            }
            if Instant::now() <= at + budget::START_SLACK {
                return true;
            }
            // Too late to start on it without crowding a later second.
            metrics::counter!("herald_budget_tokens_expired_total").increment(1);
            token = None;
        }
    }

    /// One token, waiting (pause-aware) while the budget has none.
    async fn reserve_one(&self, campaign: Uuid, plan: &CampaignPlan) -> Option<Instant> {
        loop {
            let asked = Instant::now();
            let grant = budget::reserve(&self.inner.pool, plan.channel_id, campaign, 1, None)
                .await
                .log_failure(campaign, "budget reservation failed")?;
            self.count_tokens(plan, 1, grant.granted);
            if grant.granted > 0 {
                return Some(asked + grant.offset(0));
            }
            let until = grant.wait.map_or(grant.now, |(_, until)| until);
            let wait = (until - grant.now).to_std().unwrap_or_default();
            if !self.wait_unless_paused(campaign, wait).await {
                return None;
            }
        }
    }

    /// Sends one recipient: renders (with its A/B variant's template, if any), waits for its start time, then attempts
    /// with retries until it is accepted, rejected or out of attempts.
    ///
    /// A render error fails this recipient alone (`template_error`), without a
    /// request. The attempts are bounded across runs: a recipient released by a
    /// pause mid-retry comes back with its earlier requests counted
    /// ([`ClaimedRecipient::attempts`]) and gets only what is left of
    /// `HERALD_MAX_ATTEMPTS`. A 4xx fails it at once (`provider_rejected`);
    /// transient failures that use up the attempts fail it with
    /// `retries_exhausted`.
    pub(crate) async fn dispatch_one(
        &self,
        campaign: Uuid,
        plan: &CampaignPlan,
        lease: &Lease,
        recipient: ClaimedRecipient,
        token: Option<Instant>,
    ) -> Dispatched {
        let config = &self.inner.config;
        let (id, prior) = (recipient.id, recipient.attempts);
        let left = attempts_left(config.max_attempts, prior);
        if left == 0 {
            let error = format!("gave up after {prior} attempts (HERALD_MAX_ATTEMPTS)");
            return Dispatched::Done(RecipientOutcome::failed(
                id,
                Reason::RetriesExhausted,
                error,
                0,
            ));
        }
        let policy = RetryPolicy {
            max_attempts: left,
            base_delay: Duration::from_millis(config.retry_base_ms),
            max_delay: Duration::from_millis(config.retry_max_ms),
        };
        let rendered = match plan.template_for(recipient.variant.as_deref()) {
            Some(template) => template.render(&recipient.variables),
            None => Err(herald_core::template::TemplateError(format!(
                "the campaign has no variant {:?}",
                recipient.variant.as_deref().unwrap_or_default()
            ))),
        };
        let body = match rendered {
            Ok(b) => b,
            Err(e) => {
                let error = format!("template error: {e}");
                return Dispatched::Done(RecipientOutcome::failed(
                    id,
                    Reason::TemplateError,
                    error,
                    0,
                ));
            }
        };
        let message = OutboundMessage {
            campaign_id: campaign,
            recipient_id: id,
            address: recipient.address,
            body,
        };
        let mut delays = policy.delays();
        let (mut attempts, mut last_error) = (0, None);
        let mut token = token;
        loop {
            if !self.start_gate(campaign, plan, token.take()).await {
                return unsent(id, attempts, last_error);
            }
            let attempt = {
                // In flight from the check to the answer (`in_flight`): a
                // control ack taken after this check counts this request.
                let _in_flight = self.inner.in_flight.enter(campaign);
                // The check that makes pause immediate: right before each request.
                if !self.sendable(campaign).await {
                    return unsent(id, attempts, last_error);
                }
                // Past the lease's deadline, or once a renewal left the row
                // out, another replica may own it.
                if !lease.holds(id) {
                    lease.refuse_request(campaign);
                    return unsent(id, attempts, last_error);
                }
                attempts += 1;
                self.inner.dispatcher.attempt(&plan.channel, &message).await
            };
            let (reason, retry_after) = match attempt {
                Attempt::Accepted {
                    provider_message_id,
                } => {
                    let sent = RecipientOutcome::sent(id, provider_message_id, attempts);
                    return Dispatched::Done(sent);
                }
                Attempt::Rejected { reason } => {
                    let failed =
                        RecipientOutcome::failed(id, Reason::ProviderRejected, reason, attempts);
                    return Dispatched::Done(failed);
                }
                Attempt::Retryable {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            let Some(backoff) = delays.next() else {
                let total = prior + attempts;
                let error = format!("gave up after {total} attempts: {reason}");
                let failed =
                    RecipientOutcome::failed(id, Reason::RetriesExhausted, error, attempts);
                return Dispatched::Done(failed);
            };
            let max_wait = Duration::from_millis(config.retry_max_ms).max(backoff);
            let delay = retry_after.map_or(backoff, |ra| ra.max(backoff).min(max_wait));
            metrics::counter!("herald_dispatch_retries_total", "provider" => plan.channel.provider()).increment(1);
            last_error = Some(reason);
            if !self.wait_unless_paused(campaign, delay).await {
                // Released with this run's requests counted: a resume gets only
                // what is left of the attempts.
                return unsent(id, attempts, last_error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::attempts_left;

    #[test]
    fn attempts_left_counts_earlier_runs_against_the_maximum() {
        assert_eq!(attempts_left(4, 0), 4);
        assert_eq!(attempts_left(4, 2), 2);
        assert_eq!(attempts_left(4, 4), 0);
        assert_eq!(attempts_left(4, 9), 0);
        assert_eq!(attempts_left(0, 0), 1);
        assert_eq!(attempts_left(4, -1), 4);
    }
}
