//! The per-replica control consumer: every packer and sender replica has its own
//! durable on `campaigns.control.>`, so every replica sees every pause, resume and
//! stop (a shared consumer would split them, as the Kafka group did).
//!
//! The durable survives a NATS restart with its position, and expires by itself
//! (`inactive_threshold`) when its replica is gone for good. If it is lost anyway,
//! it is recreated from the sequence after the last one seen, never from the start
//! of the stream. Control messages are hints: the callback must only drop cached
//! state and re-read Postgres, so replays and forgeries are harmless.
//!
//! On a cluster the pull of a durable can go unanswered (its leader died, or it
//! has none yet because it was just created); the listener then re-issues the
//! pull on its own within 250 ms of noticing ([`crate::pull`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{self, DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::CancellationToken;
use crate::bus::Bus;
use crate::contracts::{self, ControlMessage};
use crate::presence::ControlProgress;
use crate::pull::{PullHealth, Recovery, StreamEnd, pause, sleep_until};
use crate::work::{WorkerIdentity, dead_letter};

/// Control fast-path settings shared by packer and sender replicas.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlConfig {
    /// Listen to campaigns.control (the fast path). Off: senders rely on the
    /// status TTL recheck alone.
    #[arg(long, env = "HERALD_CONTROL_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub control_fast_path: bool,

    /// Seconds the server keeps a replica's control consumer after it goes away.
    #[arg(long, env = "HERALD_CONTROL_INACTIVE_SECONDS", default_value_t = 3600)]
    pub control_inactive_seconds: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            control_fast_path: true,
            control_inactive_seconds: 3600,
        }
    }
}

/// A control message as received by one replica.
#[derive(Debug, Clone)]
pub struct ControlSignal {
    pub message: ControlMessage,
    /// When JetStream stored it (close to the API's response).
    pub published_at: DateTime<Utc>,
    pub stream_sequence: u64,
    pub request_correlation_id: Option<String>,
}

/// Settings of a control listener.
#[derive(Debug, Clone)]
pub struct ControlListenerConfig {
    /// `packer` or `sender`: part of the durable's name.
    pub service: String,
    pub replica_id: String,
    /// How long the server keeps the durable of a replica that went away.
    pub inactive_threshold: Duration,
    /// Where the listener records what it applied (for the replica's heartbeat).
    pub progress: Arc<ControlProgress>,
}

impl ControlListenerConfig {
    pub fn durable_name(&self) -> String {
        format!("ctl_{}_{}", self.service, self.replica_id)
    }
}

/// The stream sequence up to which a (re)attached control consumer has nothing
/// left to apply: every message up to it was applied, or came before the
/// consumer existed.
///
/// That is the ack floor while acks are pending. With none pending, it is the
/// last delivered stream sequence: a new consumer starts there (`DeliverPolicy::New`,
/// or after `last_seen`) with an ack floor of 0 (nats-server 2.9 reports it so),
/// which read alone made every new replica show a `control_lag` of the whole
/// stream in `GET /v1/replicas` until the next control message.
fn applied_floor(ack_floor: u64, delivered: u64, ack_pending: usize) -> u64 {
    if ack_pending == 0 {
        ack_floor.max(delivered)
    } else {
        ack_floor
    }
}

/// Looks up this replica's durable, or creates it: at the next message when new,
/// after `last_seen` when it was lost.
async fn control_consumer(
    bus: &Bus,
    config: &ControlListenerConfig,
    last_seen: Option<u64>,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = bus.js.get_stream(&bus.streams.control).await?;
    let deliver_policy = match last_seen {
        // Recreated after a loss: continue after what we saw, never replay all.
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => DeliverPolicy::New,
    };
    let durable = config.durable_name();
    Ok(stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: bus.subjects.control_all(),
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                // Short: a pull stream dropped after an error (a missed heartbeat,
                // which a busy process can also cause) takes the messages already
                // delivered to it along, and the server sends them again only
                // after `ack_wait`. A control message held that long would leave
                // this replica on a stale status until its cache's TTL; one
                // second bounds that. Handling is idempotent (it invalidates
                // caches), so an early redelivery costs nothing; the handler acks
                // at once, and 20 deliveries leave room for a replica that is
                // slow to ack under load.
                ack_wait: Duration::from_secs(1),
                max_deliver: 20,
                inactive_threshold: config.inactive_threshold,
                ..Default::default()
            },
        )
        .await?)
}

/// Starts this replica's control listener if the fast path is on. `service` is
/// `packer` or `sender` and names the durable (`ctl_<service>_<replica>`);
/// `progress` learns the stream sequence of every message applied.
pub fn spawn_control_listener<F>(
    bus: &Bus,
    config: &ControlConfig,
    (service, replica_id): (&str, &str),
    progress: Arc<ControlProgress>,
    shutdown: &CancellationToken,
    on_signal: F,
) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn(ControlSignal) + Send + Sync + 'static,
{
    if !config.control_fast_path {
        return None;
    }
    let listener = ControlListenerConfig {
        service: service.to_owned(),
        replica_id: replica_id.to_owned(),
        inactive_threshold: Duration::from_secs(config.control_inactive_seconds),
        progress,
    };
    Some(tokio::spawn(run_control_listener(
        bus.clone(),
        listener,
        shutdown.clone(),
        on_signal,
    )))
}

/// Runs until shutdown, calling `on_signal` for every valid control message.
/// Invalid ones are terminated, counted and dead-lettered.
///
/// A failed pull (a replica that started while the cluster was forming and got
/// "no responders", missed heartbeats after a node loss) reopens the pull within
/// 250 ms, so the replica never stays deaf; see [`crate::pull`].
pub async fn run_control_listener<F>(
    bus: Bus,
    config: ControlListenerConfig,
    shutdown: CancellationToken,
    on_signal: F,
) where
    F: Fn(ControlSignal) + Send + Sync,
{
    let mut listener = Listener {
        identity: WorkerIdentity {
            consumer: config.durable_name(),
            replica_id: config.replica_id.clone(),
        },
        health: PullHealth::new(&config.durable_name()),
        last_seen: None,
        progress: config.progress.clone(),
        bus,
        on_signal,
    };
    'lookup: while !shutdown.is_cancelled() {
        let consumer = match control_consumer(&listener.bus, &config, listener.last_seen).await {
            Ok(consumer) => {
                let info = consumer.cached_info();
                listener.progress.attached(applied_floor(
                    info.ack_floor.stream_sequence,
                    info.delivered.stream_sequence,
                    info.num_ack_pending,
                ));
                consumer
            }
            Err(error) => {
                let error = format!("control consumer unavailable: {error:#}");
                listener.health.failed(&error, None);
                if !listener.retry(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        loop {
            match listener.listen(&consumer, &shutdown).await {
                StreamEnd::Shutdown => return,
                StreamEnd::Failed(recovery) => {
                    if !listener.retry(&shutdown).await {
                        return;
                    }
                    if recovery == Recovery::Lookup {
                        continue 'lookup;
                    }
                }
            }
        }
    }
}

/// How long a failed pull stream is read for messages it still holds before it
/// is dropped (see `Listener::drain`).
const DRAIN_GAP: Duration = Duration::from_millis(50);

/// One replica's control listener between pull streams.
struct Listener<F> {
    bus: Bus,
    identity: WorkerIdentity,
    health: PullHealth,
    /// The highest stream sequence handled, to recreate a lost durable after it.
    last_seen: Option<u64>,
    progress: Arc<ControlProgress>,
    on_signal: F,
}

impl<F: Fn(ControlSignal) + Send + Sync> Listener<F> {
    /// Waits before the next attempt; false on shutdown.
    async fn retry(&self, shutdown: &CancellationToken) -> bool {
        pause(&self.bus.client, shutdown, self.health.retry_delay()).await
    }

    /// Serves one pull stream until it fails or shutdown is asked for.
    async fn listen(
        &mut self,
        consumer: &consumer::PullConsumer,
        shutdown: &CancellationToken,
    ) -> StreamEnd {
        let mut messages = match crate::pull::open(consumer, None).await {
            Ok(messages) => messages,
            Err(error) => {
                return StreamEnd::Failed(self.health.failed(&format!("{error:#}"), None));
            }
        };
        self.health.opened();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return StreamEnd::Shutdown,
                next = messages.next() => next,
                // Idle but no missed heartbeat: the pull is being served again.
                _ = sleep_until(self.health.proven_at()) => {
                    self.health.healthy();
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    self.health.healthy();
                    self.handle(message).await;
                }
                Some(Err(error)) => {
                    self.drain(&mut messages).await;
                    return StreamEnd::Failed(self.health.failed(&error, Some(error.kind())));
                }
                None => {
                    return StreamEnd::Failed(self.health.failed(&"the pull stream ended", None));
                }
            }
        }
    }

    /// Before a failed stream is dropped, handles what it still holds. A missed
    /// heartbeat can be a false alarm (a busy process that did not read its
    /// socket in time) while the pull was served all along: its messages are then
    /// already here, and dropping them would hold a pause back until `ack_wait`
    /// redelivers it. Stops at the first gap of [`DRAIN_GAP`], error or end.
    async fn drain(&mut self, messages: &mut async_nats::jetstream::consumer::pull::Stream) {
        while let Ok(Some(Ok(message))) = tokio::time::timeout(DRAIN_GAP, messages.next()).await {
            self.handle(message).await;
        }
    }

    /// Hands one control message to `on_signal` and acks it, or dead-letters it.
    async fn handle(&mut self, message: async_nats::jetstream::Message) {
        let info = message
            .info()
            .ok()
            .map(|i| (i.stream_sequence, i.published));
        if let Some((seq, _)) = info {
            self.last_seen = Some(self.last_seen.map_or(seq, |s| s.max(seq)));
        }
        match contracts::decode::<ControlMessage>(&message.payload) {
            Ok(control) => {
                let published_at = info
                    .and_then(|(_, p)| {
                        DateTime::from_timestamp_nanos(p.unix_timestamp_nanos() as i64).into()
                    })
                    .unwrap_or_else(Utc::now);
                let request_correlation_id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(crate::bus::REQUEST_CORRELATION_HEADER))
                    .map(|v| v.as_str().to_owned());
                (self.on_signal)(ControlSignal {
                    message: control,
                    published_at,
                    stream_sequence: info.map(|(s, _)| s).unwrap_or(0),
                    request_correlation_id,
                });
                if let Some((seq, _)) = info {
                    self.progress.applied(seq);
                }
                let _ = message.ack().await;
            }
            Err(error) => {
                dead_letter(&self.bus, &self.identity, &message, &error.to_string()).await;
                let _ = message.ack_with(AckKind::Term).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::applied_floor;

    #[test]
    fn a_new_consumer_counts_what_came_before_it_as_applied() {
        assert_eq!(applied_floor(0, 7, 0), 7);
    }

    #[test]
    fn a_consumer_with_unacked_messages_counts_only_up_to_its_ack_floor() {
        assert_eq!(applied_floor(5, 7, 2), 5);
    }
}
