//! What a delivery leaves behind besides its ledger writes: outcome metrics,
//! released rows (re-batched if the campaign was resumed meanwhile), and the
//! `campaigns.tracked` report.

use herald_core::contracts::{BatchTracked, SendBatch};
use uuid::Uuid;

use crate::Sender;
use crate::ledger::{self, RecipientOutcome, Unsent};
use crate::recorder::{BatchRecording, RecordError};

/// What one delivery wrote to the ledger.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub sent: i64,
    pub failed: i64,
}

impl Sender {
    /// Hands outcomes to the replica's writer as they arrive, then waits until
    /// all of them are written.
    pub(crate) async fn record_as_completed(
        &self,
        provider: &'static str,
        mut recording: BatchRecording,
        mut done: tokio::sync::mpsc::UnboundedReceiver<RecipientOutcome>,
    ) -> Result<Recorded, RecordError> {
        let mut recorded = Recorded::default();
        while let Some(outcome) = done.recv().await {
            if outcome.sent {
                recorded.sent += 1;
            } else {
                recorded.failed += 1;
            }
            recording.record(outcome)?;
        }
        recording.flushed().await?;
        for (result, count) in [("sent", recorded.sent), ("failed", recorded.failed)] {
            metrics::counter!("herald_dispatches_total", "provider" => provider, "outcome" => result)
                .increment(count as u64);
        }
        Ok(recorded)
    }

    /// Gives claimed but unsent rows back (one statement): to pending after a
    /// pause or when the lease ran out, skipped after a stop. Returns how many
    /// it gave back; rows another replica has taken over meanwhile are not
    /// among them.
    pub(crate) async fn release(
        &self,
        batch: &SendBatch,
        lease_token: Uuid,
        unsent: &[Unsent],
        request_id: Option<&str>,
    ) -> Result<i64, sqlx::Error> {
        let campaign = batch.campaign_id;
        if unsent.is_empty() {
            return Ok(0);
        }
        let released =
            ledger::release_claims(&self.inner.pool, campaign, lease_token, unsent).await?;
        tracing::info!(campaign_id = %campaign, released = released.released,
            skipped = released.skipped, "released unsent recipients");
        if released.campaign_sending && released.released > 0 {
            // Still sending (the lease ran out) or resumed before the release
            // landed: the packer has passed these rows already, so batch them
            // again. Rows another replica took over are skipped by the claim.
            let ids: Vec<i64> = unsent.iter().map(|u| u.id).collect();
            self.rebatch(batch, released.run_epoch, lease_token, &ids, request_id)
                .await;
        }
        Ok(released.released + released.skipped)
    }

    /// Publishes released rows as a new batch of the current epoch, keeping the
    /// original batch's correlation ids so the trace continues.
    async fn rebatch(
        &self,
        origin: &SendBatch,
        run_epoch: i32,
        lease_token: Uuid,
        ids: &[i64],
        request_id: Option<&str>,
    ) {
        let campaign = origin.campaign_id;
        let (Some(first), Some(last)) = (ids.iter().min(), ids.iter().max()) else {
            return;
        };
        let batch = SendBatch {
            campaign_id: campaign,
            run_epoch: run_epoch.max(1),
            first_recipient_id: *first,
            last_recipient_id: *last,
            recipient_count: ids.len() as i64,
            correlation_id: origin.correlation_id,
        };
        // One claim is released once, so its lease token makes a stable message id.
        let id = format!("rebatch-{lease_token}");
        if let Err(error) = self
            .inner
            .bus
            .publish_contract(self.inner.bus.subjects.send(), &batch, &id, request_id)
            .await
        {
            tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "re-batch failed; the sweep will pick the rows up");
        }
    }

    pub(crate) async fn track(
        &self,
        batch: &SendBatch,
        claimed: i64,
        sent: i64,
        failed: i64,
        released: i64,
    ) {
        let tracked = BatchTracked {
            campaign_id: batch.campaign_id,
            run_epoch: batch.run_epoch,
            first_recipient_id: batch.first_recipient_id,
            last_recipient_id: batch.last_recipient_id,
            claimed_count: claimed,
            sent_count: sent,
            failed_count: failed,
            released_count: released,
            replica_id: self.inner.replica_id.clone(),
            correlation_id: Uuid::new_v4(),
        };
        let subject = self.inner.bus.subjects.tracked(batch.campaign_id);
        let id = format!("tracked-{}", tracked.correlation_id);
        if let Err(error) = self
            .inner
            .bus
            .publish_contract(subject, &tracked, &id, None)
            .await
        {
            tracing::debug!(error = %format!("{error:#}"), "tracked publish failed");
        }
    }
}
