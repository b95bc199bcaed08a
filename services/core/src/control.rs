//! The per-replica control consumer: every packer and sender replica has its own
//! durable on `campaigns.control.>`, so every replica sees every pause, resume and
//! stop (a shared consumer would split them, as the Kafka group did).
//!
//! The durable survives a NATS restart with its position, and expires by itself
//! (`inactive_threshold`) when its replica is gone for good. If it is lost anyway,
//! it is recreated from the sequence after the last one seen, never from the start
//! of the stream. Control messages are hints: the callback must only drop cached
//! state and re-read Postgres, so replays and forgeries are harmless.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{self, DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::CancellationToken;
use crate::bus::Bus;
use crate::contracts::{self, ControlMessage};
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
}

impl ControlListenerConfig {
    pub fn durable_name(&self) -> String {
        format!("ctl_{}_{}", self.service, self.replica_id)
    }
}

async fn open_control_consumer(
    bus: &Bus,
    config: &ControlListenerConfig,
    last_seen: Option<u64>,
) -> anyhow::Result<pull::Stream> {
    let stream = bus.js.get_stream(&bus.streams.control).await?;
    let deliver_policy = match last_seen {
        // Recreated after a loss: continue after what we saw, never replay all.
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => DeliverPolicy::New,
    };
    let durable = config.durable_name();
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: bus.subjects.control_all(),
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                max_deliver: 5,
                inactive_threshold: config.inactive_threshold,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer
        .stream()
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?)
}

/// Starts this replica's control listener if the fast path is on. `service` is
/// `packer` or `sender` and names the durable (`ctl_<service>_<replica>`).
pub fn spawn_control_listener<F>(
    bus: &Bus,
    config: &ControlConfig,
    service: &str,
    replica_id: &str,
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
pub async fn run_control_listener<F>(
    bus: Bus,
    config: ControlListenerConfig,
    shutdown: CancellationToken,
    on_signal: F,
) where
    F: Fn(ControlSignal) + Send + Sync,
{
    let identity = WorkerIdentity {
        consumer: config.durable_name(),
        replica_id: config.replica_id.clone(),
    };
    let mut last_seen: Option<u64> = None;
    while !shutdown.is_cancelled() {
        let mut messages = match open_control_consumer(&bus, &config, last_seen).await {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "control consumer unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(error)) => {
                    tracing::warn!(%error, "control pull error");
                    if matches!(error.kind(), pull::MessagesErrorKind::ConsumerDeleted) {
                        break;
                    }
                    continue;
                }
                None => break,
            };
            let info = message
                .info()
                .ok()
                .map(|i| (i.stream_sequence, i.published));
            if let Some((seq, _)) = info {
                last_seen = Some(last_seen.map_or(seq, |s| s.max(seq)));
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
                    on_signal(ControlSignal {
                        message: control,
                        published_at,
                        stream_sequence: info.map(|(s, _)| s).unwrap_or(0),
                        request_correlation_id,
                    });
                    let _ = message.ack().await;
                }
                Err(error) => {
                    dead_letter(&bus, &identity, &message, &error.to_string()).await;
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
    }
}
