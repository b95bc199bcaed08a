//! The sender's step: one delivery of a `campaigns.send` batch.
//!
//! 1. Is the campaign sending? (Postgres's word before a batch is dropped.)
//! 2. Is its send window open? If not, hand the batch back until it opens.
//! 3. How much may it send now? Reserve a slice of its budget; none: hand the
//!    batch back until the next token.
//! 4. Claim only that many rows of the batch's range, dispatch them on their
//!    start times, record the outcomes, release what a pause or stop left
//!    unsent.
//! 5. Rows left in the range: hand the batch back for the next slice. None: the
//!    batch is done; ask the packer for the campaign's next batch.
//!
//! Waiting therefore never holds a batch slot, a connection or a claimed row:
//! the other campaigns' batches run while a throttled or out-of-window one is
//! handed back ([`StepOutcome::Defer`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use herald_core::contracts::{PackRequest, SendBatch, TriggeredBy};
use herald_core::transitions::complete_if_done;
use herald_core::work::{Delivery, MAX_DEFER, StepOutcome};
use tokio::time::Instant;
use uuid::Uuid;

use crate::budget::{self, WaitReason};
use crate::deliver::Dispatched;
use crate::lease::Lease;
use crate::ledger::{self, Claimed, ClaimedRecipient};
use crate::plan::CampaignPlan;
use crate::{LogFailure as _, Sender};

fn retry_soon() -> StepOutcome {
    StepOutcome::Retry {
        delay: Duration::from_secs(1),
    }
}

/// What the budget allows this delivery: how many rows, each on which start
/// time (`None`: at once), and the wait that limited it.
struct Slice {
    tokens: Vec<Option<Instant>>,
    wait: Option<(WaitReason, chrono::DateTime<Utc>)>,
}

impl Sender {
    /// Step 1: Postgres's word on whether the campaign sends.
    async fn batch_sendable(&self, campaign: Uuid) -> Result<bool, sqlx::Error> {
        match self.inner.cache.is_sendable(campaign).await {
            // A cached "paused" may predate a resume whose control message has not
            // arrived yet (or never will, with the fast path off or NATS's control
            // path down): the batches that resume packs would be dropped and the
            // campaign would wait for the stall sweep. Drop a batch only on
            // Postgres's word.
            Ok(false) => self.inner.cache.refresh(campaign).await,
            known => known,
        }
    }

    /// Hands the batch back until `until`, and says why the campaign waits.
    async fn defer(
        &self,
        campaign: Uuid,
        reason: WaitReason,
        until: chrono::DateTime<Utc>,
    ) -> StepOutcome {
        let delay = (until - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(MAX_DEFER);
        self.inner
            .waits
            .waiting(campaign, reason, until, delay)
            .await;
        StepOutcome::Defer { delay }
    }

    /// Step 3: the slice of the budget this delivery may use.
    async fn reserve_slice(
        &self,
        campaign: Uuid,
        plan: &CampaignPlan,
        want: u32,
    ) -> Result<Slice, sqlx::Error> {
        if !plan.budgeted {
            return Ok(Slice {
                tokens: vec![None; want as usize],
                wait: None,
            });
        }
        let asked = Instant::now();
        let grant =
            budget::reserve(&self.inner.pool, plan.channel_id, campaign, want, None).await?;
        self.count_tokens(plan, want, grant.granted);
        Ok(Slice {
            tokens: (0..grant.granted)
                .map(|i| Some(asked + grant.offset(i)))
                .collect(),
            wait: grant.wait,
        })
    }

    pub(crate) fn count_tokens(&self, plan: &CampaignPlan, want: u32, granted: u32) {
        let channel = plan.channel_id.to_string();
        metrics::counter!("herald_budget_tokens_total", "channel" => channel.clone(), "outcome" => "granted")
            .increment(granted as u64);
        metrics::counter!("herald_budget_tokens_total", "channel" => channel, "outcome" => "denied")
            .increment(want.saturating_sub(granted) as u64);
    }

    /// The step: one delivery of a send batch (see the module docs).
    pub async fn handle_batch(&self, batch: SendBatch, delivery: Option<Delivery>) -> StepOutcome {
        let campaign = batch.campaign_id;
        match self.batch_sendable(campaign).await {
            Ok(true) => {}
            // Paused or stopped: nothing to claim; resume re-packs what is left.
            Ok(false) => return StepOutcome::Ack,
            Err(_) => return retry_soon(),
        }
        let plan = match self.inner.plans.get(campaign).await {
            Ok(Some(plan)) => plan,
            Ok(None) => return StepOutcome::Ack,
            Err(_) => return retry_soon(),
        };
        if let Some(opens) = plan.closed_until(Utc::now()) {
            return self.defer(campaign, WaitReason::SendWindow, opens).await;
        }
        let want = ledger::claim_limit(&batch) as u32;
        let Some(slice) = self
            .reserve_slice(campaign, &plan, want)
            .await
            .log_failure(campaign, "budget reservation failed")
        else {
            return retry_soon();
        };
        if slice.tokens.is_empty() {
            let (reason, until) = slice.wait.unwrap_or((WaitReason::RateLimit, Utc::now()));
            return self.defer(campaign, reason, until).await;
        }
        let lease_token = Uuid::new_v4();
        let seconds = self.inner.config.lease_seconds;
        let limit = slice.tokens.len() as i64;
        let claim_started = Instant::now();
        let Some(Claimed {
            rows: claimed,
            suppressed,
        }) = ledger::claim_batch(&self.inner.pool, &batch, lease_token, seconds, limit)
            .await
            .log_failure(campaign, "claim failed")
        else {
            return retry_soon();
        };
        if claimed.is_empty() {
            return self
                .nothing_claimed(&batch, &plan, suppressed, lease_token)
                .await;
        }
        let rows: Vec<i64> = claimed.iter().map(|r| r.id).collect();
        let lease = Arc::new(Lease::claimed(lease_token, seconds, claim_started, &rows));
        // Suppressed rows the claim skipped used up tokens of the slice too.
        let taken = claimed.len() + usize::try_from(suppressed).unwrap_or(0);
        if taken >= slice.tokens.len() && plan.budgeted {
            // More rows may wait in this range: hand it back for the next slice
            // now, while these rows go out on their start times, so the slices
            // of a lone batch follow each other at the budget's pace instead of
            // waiting for each other's requests and ledger writes. The rows stay
            // leased (and renewed) until they are recorded or released.
            let (sender, batch) = (self.clone(), batch.clone());
            self.inner.detached.spawn(async move {
                sender
                    .send_claimed(&batch, &plan, claimed, slice.tokens, lease, None)
                    .await;
            });
            return match slice.wait {
                Some((reason, until)) => self.defer(campaign, reason, until).await,
                None => StepOutcome::Defer {
                    delay: Duration::ZERO,
                },
            };
        }
        let ended = self
            .send_claimed(
                &batch,
                &plan,
                claimed,
                slice.tokens,
                lease,
                delivery.as_ref(),
            )
            .await;
        if let Some(outcome) = ended {
            return outcome;
        }
        if slice.wait.is_none() {
            self.inner.waits.sending_freely(campaign).await;
        }
        StepOutcome::Ack
    }

    /// A claim that took no row: the range is used up, or every row the claim
    /// met was suppressed (and is skipped now).
    async fn nothing_claimed(
        &self,
        batch: &SendBatch,
        plan: &CampaignPlan,
        suppressed: i64,
        lease_token: Uuid,
    ) -> StepOutcome {
        if suppressed > 0 && plan.budgeted {
            // The slice went to suppressed rows; the range may hold more.
            return StepOutcome::Defer {
                delay: Duration::ZERO,
            };
        }
        if suppressed > 0 {
            // The skipped rows may have been the campaign's last open ones, and
            // no dispatch will end a lease to find out: check now, and ask for
            // the next batch as a finished one does.
            self.end_lease(batch, lease_token, suppressed).await;
        } else if plan.budgeted {
            // The range ran out on a slice boundary: the delivery before this one
            // claimed its last rows in the background and could not know. If the
            // slices before were all skipped rows, nobody has checked completion.
            let campaign = batch.campaign_id;
            let open = ledger::finish_lease(&self.inner.pool, campaign, lease_token).await;
            if open.as_ref().is_ok_and(|open| open.is_done()) {
                self.complete(campaign).await;
            } else {
                let id = format!("more-{}-{}", batch.message_id(), batch.last_recipient_id);
                self.ask_for_next_batch(campaign, batch.run_epoch, &id)
                    .await;
            }
        }
        StepOutcome::Ack
    }

    /// Step 4 and the end of step 5: dispatches the claimed rows on their start
    /// times, records, releases, reports and ends the lease. `Some` is the step's
    /// outcome when something failed; `None` when every row was accounted for.
    async fn send_claimed(
        &self,
        batch: &SendBatch,
        plan: &Arc<CampaignPlan>,
        claimed: Vec<ClaimedRecipient>,
        tokens: Vec<Option<Instant>>,
        lease: Arc<Lease>,
        delivery: Option<&Delivery>,
    ) -> Option<StepOutcome> {
        let (campaign, lease_token) = (batch.campaign_id, lease.token());
        let claimed_count = claimed.len() as i64;
        let heartbeat = self.spawn_heartbeat(campaign, lease.clone(), &claimed, delivery.cloned());
        // Outcomes are written as they complete, with those of the replica's other
        // batches (see `recorder`), not once at the end of the batch. A `kill -9`
        // then repeats at the provider only the requests in flight at that
        // instant and those of the last linger, not every request the batch had
        // already made.
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut unsent = Vec::new();
        let dispatching = async {
            futures::stream::iter(claimed.into_iter().zip(tokens))
                .map(|(recipient, token)| {
                    let (plan, lease) = (plan.clone(), &lease);
                    async move {
                        let _slot = self.inner.dispatch_slots.acquire().await;
                        self.dispatch_one(campaign, &plan, lease, recipient, token)
                            .await
                    }
                })
                .buffer_unordered(self.inner.config.concurrency.max(1))
                .for_each(|result| {
                    match result {
                        Dispatched::Done(outcome) => {
                            let _ = done_tx.send(outcome);
                        }
                        Dispatched::Unsent(row) => unsent.push(row),
                    }
                    async {}
                })
                .await;
            drop(done_tx);
        };
        let recording = self.inner.recorder.batch(campaign, lease_token);
        let ((), recorded) = tokio::join!(
            dispatching,
            self.record_as_completed(plan.channel.provider(), recording, done_rx)
        );
        let Some(recorded) = recorded.log_failure(campaign, "could not record outcomes") else {
            heartbeat.abort();
            // The leases will expire and another replica will finish the rows;
            // the idempotency key keeps the provider from doubling them.
            return Some(retry_soon());
        };
        let request_id = delivery.and_then(|d| d.request_correlation_id());
        let released = self
            .release(batch, lease_token, &unsent, request_id.as_deref())
            .await;
        heartbeat.abort();
        let released = released.log_failure(campaign, "could not release unsent recipients")?;
        self.track(
            batch,
            claimed_count,
            recorded.sent,
            recorded.failed,
            released,
        )
        .await;
        self.end_lease(batch, lease_token, claimed_count).await;
        None
    }

    /// Every claimed row is marked or released by now, so the lease row goes.
    /// The counts are read after this delivery's writes committed: whichever
    /// finishes last sees all the others' and completes the campaign. A
    /// delivery that finished its rows asks the packer for the next batch
    /// (windowed packing); one that may have closed an A/B test cohort notes it
    /// (the campaign then waits for the decision). If this fails, the sweep drops the lease row once it
    /// expires, completes a campaign left with nothing open, and re-packs one
    /// whose packing stalled.
    async fn end_lease(&self, batch: &SendBatch, lease_token: Uuid, claimed: i64) {
        let campaign = batch.campaign_id;
        let Some(open) = ledger::finish_lease(&self.inner.pool, campaign, lease_token)
            .await
            .log_failure(campaign, "completion check failed")
        else {
            return;
        };
        if open.is_done() {
            self.complete(campaign).await;
            return;
        }
        if open.ab_undecided {
            // This batch may have closed the test cohort's last rows.
            let noted = herald_core::ab::decision::note_test_done(&self.inner.pool, campaign).await;
            noted.log_failure(campaign, "could not note the A/B test cohort done");
        }
        if open.more_to_pack && claimed > 0 {
            // One lease ends once, so its token makes a stable message id.
            let id = format!("more-{lease_token}");
            self.ask_for_next_batch(campaign, open.run_epoch, &id).await;
        }
    }

    /// Completes the campaign if nothing is open (re-checked by the transition).
    async fn complete(&self, campaign: Uuid) {
        if let Err(error) = complete_if_done(&self.inner.lifecycle, campaign, "sender").await {
            tracing::warn!(campaign_id = %campaign, %error, "completion check failed");
        }
    }

    /// Asks the packers for one more batch of the campaign (windowed packing);
    /// `id` de-duplicates the request on the stream.
    async fn ask_for_next_batch(&self, campaign: Uuid, run_epoch: i32, id: &str) {
        let request = PackRequest {
            campaign_id: campaign,
            run_epoch,
            triggered_at: Utc::now(),
            triggered_by: TriggeredBy::BatchDone,
            correlation_id: Uuid::new_v4(),
            batches: Some(1),
        };
        let bus = &self.inner.bus;
        if let Err(error) = bus
            .publish_contract(bus.subjects.pack(), &request, id, None)
            .await
        {
            tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "asking for the next batch failed; the sweep will");
        }
    }
}
