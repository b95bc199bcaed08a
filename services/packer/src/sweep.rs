//! The packer's periodic sweep: what makes every recipient end terminal after a
//! crash or a lost message. It re-batches rows held by expired leases (a sender
//! died), re-packs campaigns whose windowed packing stalled (the batches that
//! should have asked for more were lost), re-batches pending rows of a fully
//! packed campaign that made no progress, completes a campaign left with
//! nothing open, skips the rows a dead sender held in a stopped campaign, and
//! finishes a stop's halt pass whose process died.
//! Campaigns waiting for a send window or a budget are left alone, and so are
//! A/B tests waiting for their decision; an A/B test whose test cohort is done
//! but was not noted so (its last sender died first) is noted here.

use uuid::Uuid;

use herald_core::contracts::{PackRequest, TriggeredBy};
use herald_core::halt;
use herald_core::transitions::complete_if_done;

use crate::store::*;
use crate::{Packer, batch_for};

impl Packer {
    /// One sweep: re-batches expired leases and stalled pending rows, and completes
    /// a stalled campaign with nothing open. Harmless when several replicas sweep
    /// at once: the sender's claim and the completion transition decide.
    pub async fn sweep(&self) -> Result<usize, sqlx::Error> {
        let pool = &self.inner.pool;
        let mut published = 0;
        // Rows a dead sender held in a stopped campaign are skipped, not
        // re-batched (invariant 11). Then forget the leases whose rows were
        // already taken care of (by the previous sweep's batches, for
        // instance), and re-batch the rest.
        let skipped = skip_stranded_of_halted(pool).await?;
        if skipped > 0 {
            tracing::info!(
                skipped,
                "sweep skipped rows a dead sender held in stopped campaigns"
            );
        }
        drop_spent_leases(pool).await?;
        for (campaign, epoch) in campaigns_with_expired_leases(pool).await? {
            published += self
                .rebatch_stranded(campaign, epoch, Stranded::ExpiredLeases)
                .await?;
        }
        let stall = self.inner.config.stall_seconds as f64;
        // A stop whose process died before its halt pass finished.
        for campaign in halt::abandoned_halts(pool, stall).await? {
            tracing::warn!(campaign_id = %campaign, "a stopped campaign's halt pass was abandoned; finishing it");
            halt::skip_open_recipients(pool, campaign).await?;
        }
        for (campaign, epoch) in stalled_packing(pool, stall).await? {
            touch_campaign(pool, campaign).await?;
            tracing::warn!(campaign_id = %campaign, "campaign's packing stalled; packing a window again");
            published += self.publish_sweep_pack(campaign, epoch).await;
        }
        for (campaign, epoch, pending) in stalled_campaigns(pool, stall).await? {
            // Touched first, so a campaign comes back at most once per stall period.
            touch_campaign(pool, campaign).await?;
            if herald_core::ab::decision::note_test_done(pool, campaign).await? {
                tracing::info!(campaign_id = %campaign, "A/B test cohort done; waiting for the decision");
                continue;
            }
            if pending > 0 {
                tracing::warn!(campaign_id = %campaign, "campaign stalled with pending rows; re-batching them");
                published += self
                    .rebatch_stranded(campaign, epoch, Stranded::Pending)
                    .await?;
            } else {
                // Nothing open, yet still sending: the completion check of its last
                // batch did not run (Postgres was unreachable at that moment, or
                // the sender died right after its last write).
                tracing::warn!(campaign_id = %campaign, "campaign stalled with nothing open; completing it");
                if let Err(error) =
                    complete_if_done(&self.inner.lifecycle, campaign, "packer").await
                {
                    tracing::warn!(campaign_id = %campaign, %error, "completion check failed");
                }
            }
        }
        Ok(published)
    }

    async fn rebatch_stranded(
        &self,
        campaign: Uuid,
        epoch: i32,
        which: Stranded,
    ) -> Result<usize, sqlx::Error> {
        let size = self.inner.config.batch_size.clamp(1, 100_000);
        let (mut after, mut published) = (0, 0);
        loop {
            let ids = stranded_page(&self.inner.pool, campaign, which, after, size).await?;
            let Some(&last) = ids.last() else {
                return Ok(published);
            };
            published += self.publish_sweep_batch(campaign, epoch, &ids).await;
            after = last;
        }
    }

    /// Asks the packers to page a window of the campaign's next batches.
    async fn publish_sweep_pack(&self, campaign: Uuid, epoch: i32) -> usize {
        let request = PackRequest {
            campaign_id: campaign,
            run_epoch: epoch,
            triggered_at: chrono::Utc::now(),
            triggered_by: TriggeredBy::Sweep,
            correlation_id: Uuid::new_v4(),
            batches: None,
        };
        let id = format!("sweep-pack-{}", request.correlation_id);
        let bus = &self.inner.bus;
        match bus
            .publish_contract(bus.subjects.pack(), &request, &id, None)
            .await
        {
            Ok(()) => 1,
            Err(error) => {
                tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "sweep pack request failed");
                0
            }
        }
    }

    async fn publish_sweep_batch(&self, campaign: Uuid, epoch: i32, ids: &[i64]) -> usize {
        let batch = batch_for(campaign, epoch, ids);
        let id = format!("sweep-{}", batch.correlation_id);
        match self
            .inner
            .bus
            .publish_contract(self.inner.bus.subjects.send(), &batch, &id, None)
            .await
        {
            Ok(()) => 1,
            Err(error) => {
                tracing::warn!(campaign_id = %campaign, error = %format!("{error:#}"), "sweep publish failed");
                0
            }
        }
    }
}
