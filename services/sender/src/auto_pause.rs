//! The sender's half of auto-pause (`herald_core::auto_pause`): pause each
//! campaign the outcome writer found over its failure rate.
//!
//! The pause goes through the one transition function, as `system:auto-pause`,
//! with `{"reason": "failure_rate", "failure_rate": ..., "window": ...}` in its
//! event. A pause that loses the race (another replica, or the tenant, paused
//! first) is refused by the lifecycle table, which is fine. Either way this
//! replica distrusts its status cache for the campaign at once, so its own
//! dispatches stop within one status read, without waiting for the control
//! message: a worker's events go out through the api's relay. Every other
//! replica learns the same way from its next outcome write of the campaign,
//! or from the control message, whichever comes first; the claim gate already
//! keeps every replica from claiming more rows.

use std::sync::Weak;

use herald_core::auto_pause::{Tripped, cause};
use herald_core::lifecycle::Action;
use herald_core::transitions::{Actor, TransitionDetail, TransitionError, TransitionRequest};
use tokio::sync::mpsc;

use crate::SenderInner;

/// Pauses tripped campaigns until the writer (the channel's sender) ends or
/// the replica is dropped.
pub(crate) async fn run(sender: Weak<SenderInner>, mut trips: mpsc::UnboundedReceiver<Tripped>) {
    while let Some(trip) = trips.recv().await {
        let Some(inner) = sender.upgrade() else {
            return;
        };
        pause(&inner, &trip).await;
    }
}

async fn pause(inner: &SenderInner, trip: &Tripped) {
    let campaign = trip.campaign_id;
    let request = TransitionRequest {
        campaign_id: campaign,
        tenant_id: None,
        action: Action::Pause,
        expected_version: None,
        scheduled_at: None,
        actor: Actor::system("auto-pause"),
        detail: Some(TransitionDetail::Cause(cause(trip))),
    };
    match inner.lifecycle.apply(request).await {
        Ok(_) => {
            metrics::counter!("herald_auto_pauses_total").increment(1);
            tracing::warn!(campaign_id = %campaign, failure_rate = trip.failure_rate,
                window = trip.window, "campaign paused itself: failure rate over its limit");
        }
        Err(TransitionError::Invalid(_)) => {}
        Err(error) => {
            tracing::warn!(campaign_id = %campaign, %error, "auto-pause failed; the next outcome write retries it")
        }
    }
    inner.cache.invalidate(campaign);
}
