//! Acking a control message (`campaigns.acks.<campaign>`, see
//! `herald_core::presence`).
//!
//! The ack goes out once the message is *applied*: the status cache was
//! invalidated and has read the campaign's status from Postgres again (the api
//! publishes control only after its commit, so that read sees the pause), so no
//! request of the campaign starts on this replica after the ack. It reports the
//! requests still in flight ([`crate::in_flight`]). After a pause or stop with
//! requests in flight, a second ack follows when they have all been answered:
//! that is what `wait=drained` waits for. The replica sends it unasked, because
//! it alone sees its requests end; the api only listens.

use std::time::Duration;

use herald_core::contracts::ControlAction;
use herald_core::control::ControlSignal;

use crate::Sender;

impl Sender {
    pub(crate) async fn acknowledge(&self, signal: ControlSignal) {
        let campaign = signal.message.campaign_id;
        // A failed read leaves the campaign unsendable here (fail safe), so the
        // message counts as applied either way.
        let _ = self.inner.cache.is_sendable(campaign).await;
        let presence = &self.inner.presence;
        let in_flight = self.inner.in_flight.count(campaign);
        presence
            .publish_ack(&presence.ack_of(&signal, in_flight))
            .await;
        if in_flight == 0 || signal.message.action == ControlAction::Resume {
            return;
        }
        // No request outlives the provider timeout; a retry waits unless paused,
        // so it is released instead of sent.
        let limit =
            Duration::from_millis(self.inner.config.provider_timeout_ms) + Duration::from_secs(5);
        let drained = self.inner.in_flight.drained(campaign);
        if tokio::time::timeout(limit, drained).await.is_ok() {
            presence.publish_ack(&presence.ack_of(&signal, 0)).await;
        }
    }
}
