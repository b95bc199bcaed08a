//! The live packer and sender replicas, as their heartbeats say
//! (`campaigns.presence.>`, `herald_core::presence`).
//!
//! One core-NATS subscription per api process keeps a table of the last beat of
//! every replica. A replica is live while its last beat is younger than
//! `LIVE_WITHIN` (three beats); older entries are forgotten after a minute. An
//! api that just started knows nobody for up to one heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use herald_core::CancellationToken;
use herald_core::bus::Bus;
use herald_core::contracts;
use herald_core::presence::{LIVE_WITHIN, PresenceBeat};

/// How long a silent replica stays in the table (not live) before it is dropped.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// One replica's last heartbeat, as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub beat: PresenceBeat,
    /// When this api received it.
    pub last_seen: DateTime<Utc>,
    received: Instant,
}

#[derive(Debug, Default)]
struct Table {
    replicas: Mutex<HashMap<(String, String), Seen>>,
    /// Ends the listener.
    closed: CancellationToken,
}

/// The live-replica table of one api process. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReplicaTable {
    inner: Arc<Table>,
}

impl ReplicaTable {
    /// Starts listening to heartbeats.
    pub fn start(bus: Bus) -> Self {
        let table = Self::default();
        let closed = table.inner.closed.clone();
        tokio::spawn(listen(Arc::downgrade(&table.inner), bus, closed));
        table
    }

    /// Ends the listener once `shutdown` is cancelled.
    pub fn close_on(&self, shutdown: CancellationToken) {
        herald_core::cancel_on(&self.inner.closed, shutdown);
    }

    fn record(inner: &Table, beat: PresenceBeat) {
        let mut replicas = inner.replicas.lock().expect("replica table lock");
        replicas.retain(|_, seen| seen.received.elapsed() < FORGET_AFTER);
        let key = (beat.service.clone(), beat.replica_id.clone());
        replicas.insert(
            key,
            Seen {
                beat,
                last_seen: Utc::now(),
                received: Instant::now(),
            },
        );
    }

    /// The replicas heard from within `LIVE_WITHIN`, by service then id.
    pub fn live(&self) -> Vec<Seen> {
        let replicas = self.inner.replicas.lock().expect("replica table lock");
        let mut live: Vec<Seen> = replicas
            .values()
            .filter(|seen| seen.received.elapsed() < LIVE_WITHIN)
            .cloned()
            .collect();
        live.sort_by(|a, b| {
            (&a.beat.service, &a.beat.replica_id).cmp(&(&b.beat.service, &b.beat.replica_id))
        });
        live
    }
}

/// Feeds the table from `campaigns.presence.>`; re-subscribes after a failure.
async fn listen(table: Weak<Table>, bus: Bus, shutdown: CancellationToken) {
    let subject = bus.subjects.presence_all();
    while !shutdown.is_cancelled() {
        let mut subscription = match bus.client.subscribe(subject.clone()).await {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::warn!(%error, "presence subscription failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = subscription.next() => message,
            };
            let Some(message) = message else { break };
            let Some(inner) = table.upgrade() else { return };
            match contracts::decode::<PresenceBeat>(&message.payload) {
                Ok(beat) => ReplicaTable::record(&inner, beat),
                Err(error) => {
                    tracing::debug!(%error, subject = %message.subject, "bad heartbeat ignored")
                }
            }
        }
    }
}
