//! Presence and control acks: how the api knows which packer and sender replicas
//! are alive and whether each one has applied a pause or stop.
//!
//! Both travel on core NATS, not JetStream: they are only worth anything while
//! they are fresh, and an ack nobody waits for should cost nothing.
//!
//! - **Presence.** Every replica publishes a [`PresenceBeat`] on
//!   `campaigns.presence.<service>.<replica>` every [`HEARTBEAT_INTERVAL`], and
//!   at once after it applies a control message (so its control progress is
//!   exact within milliseconds, not a second). The beat carries the highest
//!   `<P>_CONTROL` stream sequence the replica has applied ([`ControlProgress`]).
//!   A replica is *live* while its last beat is younger than [`LIVE_WITHIN`].
//! - **Acks.** After a replica applies a control message of campaign X it
//!   publishes a [`ControlAck`] on `campaigns.acks.X`, naming the control
//!   message by its `correlationId` (unique per event), so an ack of an older
//!   pause never counts for a newer one. A sender then publishes a second ack
//!   when its requests of X in flight drop to zero (see `herald_sender`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::CancellationToken;
use crate::bus::Bus;
use crate::contracts::{self, ControlAction, contract};
use crate::control::ControlSignal;

/// How often a replica announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A replica is live while its last heartbeat is younger than this (three beats).
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);

/// `campaigns.presence.<service>.<replicaId>`: a replica's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresenceBeat {
    /// `packer` or `sender`.
    pub service: String,
    pub replica_id: String,
    pub started_at: DateTime<Utc>,
    pub sent_at: DateTime<Utc>,
    /// False: the replica does not listen to control messages and never acks.
    pub control_fast_path: bool,
    /// The highest control stream sequence applied; `None` before the
    /// replica's control consumer exists.
    pub control_applied_seq: Option<u64>,
    #[serde(default)]
    pub last_control_at: Option<DateTime<Utc>>,
}
contract!(PresenceBeat, "campaigns.presence.json");

/// `campaigns.acks.<campaignId>`: one replica applied one control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlAck {
    pub campaign_id: Uuid,
    pub action: ControlAction,
    /// The applied control message's `correlationId` (its event's).
    pub control_correlation_id: Uuid,
    pub service: String,
    pub replica_id: String,
    pub applied_at: DateTime<Utc>,
    /// Requests of the campaign on this replica past their status check and not
    /// yet answered by the provider.
    pub in_flight: u64,
}
contract!(ControlAck, "campaigns.acks.json", {
    fn campaign(&self) -> Option<Uuid> {
        Some(self.campaign_id)
    }
});

/// What a replica's control listener has applied, for its heartbeat.
#[derive(Debug, Default)]
pub struct ControlProgress {
    state: Mutex<(Option<u64>, Option<DateTime<Utc>>)>,
    changed: Notify,
}

impl ControlProgress {
    /// The control consumer was (re)attached: everything up to stream sequence
    /// `floor` was applied or predates this replica's consumer (the ack floor,
    /// or the last delivered sequence when no ack is pending; see
    /// `control::applied_floor`).
    pub fn attached(&self, floor: u64) {
        let mut state = self.state.lock().expect("progress lock");
        state.0 = Some(state.0.map_or(floor, |s| s.max(floor)));
    }

    /// A control message at stream sequence `seq` was applied just now.
    pub fn applied(&self, seq: u64) {
        {
            let mut state = self.state.lock().expect("progress lock");
            state.0 = Some(state.0.map_or(seq, |s| s.max(seq)));
            state.1 = Some(Utc::now());
        }
        self.changed.notify_one();
    }

    /// (highest applied sequence, when the last message was applied).
    pub fn snapshot(&self) -> (Option<u64>, Option<DateTime<Utc>>) {
        *self.state.lock().expect("progress lock")
    }
}

#[derive(Debug)]
struct PresenceInner {
    bus: Bus,
    service: String,
    replica_id: String,
    started_at: DateTime<Utc>,
    control_fast_path: bool,
    progress: Arc<ControlProgress>,
}

/// One replica's presence on the bus: its heartbeat and its control acks.
#[derive(Debug, Clone)]
pub struct Presence {
    inner: Arc<PresenceInner>,
}

impl Presence {
    pub fn new(bus: &Bus, service: &str, replica_id: &str, control_fast_path: bool) -> Self {
        Self {
            inner: Arc::new(PresenceInner {
                bus: bus.clone(),
                service: service.to_owned(),
                replica_id: replica_id.to_owned(),
                started_at: Utc::now(),
                control_fast_path,
                progress: Arc::default(),
            }),
        }
    }

    /// Where the control listener records what it applied.
    pub fn progress(&self) -> Arc<ControlProgress> {
        self.inner.progress.clone()
    }

    fn beat(&self) -> PresenceBeat {
        let (control_applied_seq, last_control_at) = self.inner.progress.snapshot();
        PresenceBeat {
            service: self.inner.service.clone(),
            replica_id: self.inner.replica_id.clone(),
            started_at: self.inner.started_at,
            sent_at: Utc::now(),
            control_fast_path: self.inner.control_fast_path,
            control_applied_seq,
            last_control_at,
        }
    }

    /// Publishes one heartbeat (core NATS: nothing is stored; a lost one is
    /// replaced a second later).
    async fn announce(&self) {
        let bus = &self.inner.bus;
        let subject = bus
            .subjects
            .presence(&self.inner.service, &self.inner.replica_id);
        match contracts::encode(&self.beat()) {
            Ok(payload) => {
                if let Err(error) = bus.client.publish(subject, payload).await {
                    tracing::debug!(%error, "heartbeat not published");
                }
            }
            Err(error) => tracing::warn!(%error, "heartbeat violates its schema"),
        }
    }

    /// Heartbeats until shutdown: every [`HEARTBEAT_INTERVAL`], and at once
    /// after a control message is applied.
    pub fn spawn(&self, shutdown: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let (presence, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = presence.inner.progress.changed.notified() => {}
                }
                presence.announce().await;
            }
        })
    }

    /// The ack of `signal`, applied now with `in_flight` requests outstanding.
    pub fn ack_of(&self, signal: &ControlSignal, in_flight: u64) -> ControlAck {
        ControlAck {
            campaign_id: signal.message.campaign_id,
            action: signal.message.action,
            control_correlation_id: signal.message.correlation_id,
            service: self.inner.service.clone(),
            replica_id: self.inner.replica_id.clone(),
            applied_at: Utc::now(),
            in_flight,
        }
    }

    /// Publishes an ack on `campaigns.acks.<campaign>`; a failure is logged (the
    /// api then lists this replica as missing).
    pub async fn publish_ack(&self, ack: &ControlAck) {
        let bus = &self.inner.bus;
        let subject = bus.subjects.acks(ack.campaign_id);
        let published = match contracts::encode(ack) {
            Ok(payload) => bus
                .client
                .publish(subject, payload)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = published {
            tracing::warn!(campaign_id = %ack.campaign_id, %error, "control ack not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_and_ack_messages_are_schema_valid_and_strict() {
        let beat = PresenceBeat {
            service: "sender".into(),
            replica_id: "sender-1".into(),
            started_at: Utc::now(),
            sent_at: Utc::now(),
            control_fast_path: true,
            control_applied_seq: None,
            last_control_at: None,
        };
        let bytes = contracts::encode(&beat).unwrap();
        assert_eq!(contracts::decode::<PresenceBeat>(&bytes).unwrap(), beat);
        let ack = ControlAck {
            campaign_id: Uuid::new_v4(),
            action: ControlAction::Pause,
            control_correlation_id: Uuid::new_v4(),
            service: "packer".into(),
            replica_id: "packer-0".into(),
            applied_at: Utc::now(),
            in_flight: 3,
        };
        let bytes = contracts::encode(&ack).unwrap();
        assert_eq!(contracts::decode::<ControlAck>(&bytes).unwrap(), ack);
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["service"] = "api".into();
        assert!(contracts::decode::<ControlAck>(value.to_string().as_bytes()).is_err());
        value["service"] = "sender".into();
        value["inFlight"] = (-1).into();
        assert!(contracts::decode::<ControlAck>(value.to_string().as_bytes()).is_err());
    }

    #[test]
    fn control_progress_only_moves_forward() {
        let progress = ControlProgress::default();
        assert_eq!(progress.snapshot().0, None);
        progress.attached(7);
        progress.applied(5);
        assert_eq!(progress.snapshot().0, Some(7));
        progress.applied(9);
        progress.attached(8);
        assert_eq!(progress.snapshot().0, Some(9));
        assert!(progress.snapshot().1.is_some());
    }
}
