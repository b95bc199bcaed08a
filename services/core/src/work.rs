//! The loop around every work consumer (`campaigns.pack`, `campaigns.send`).
//!
//! Workers are written as step functions `message -> StepOutcome`; this module owns
//! everything around them: pulling, schema validation, bounded concurrency,
//! acks, dead letters, panics and shutdown. A bad message is terminated and
//! dead-lettered, never redelivered forever, and never crashes the consumer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::CancellationToken;
use crate::bus::{Bus, REQUEST_CORRELATION_HEADER};
use crate::contracts::{self, Contract, DeadLetter};
use crate::pull::{self, PullHealth, Recovery, StreamEnd, pause};

/// What a step decided about its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Done (or nothing to do): acknowledge.
    Ack,
    /// Try again later, for example while Postgres is down.
    Retry { delay: Duration },
    /// Not now, by design: hand the message back to be delivered again after
    /// `delay` (a campaign waiting for its send budget or send window). Unlike
    /// [`StepOutcome::Retry`] this is no failure: it never dead-letters, and a
    /// message deferred many times is re-published as a fresh copy so the
    /// consumer's `max_deliver` is never reached.
    Defer { delay: Duration },
    /// The message can never succeed: terminate and dead-letter it.
    DeadLetter { reason: String },
}

/// A message being handled, for steps that need more than the payload.
#[derive(Debug, Clone)]
pub struct Delivery {
    message: Arc<jetstream::Message>,
}

impl Delivery {
    /// The caller's `X-Correlation-Id`, carried as a header.
    pub fn request_correlation_id(&self) -> Option<String> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get(REQUEST_CORRELATION_HEADER))
            .map(|v| v.as_str().to_owned())
    }

    /// Extends the ack deadline while long work goes on.
    pub async fn in_progress(&self) {
        if let Err(error) = self.message.ack_with(AckKind::Progress).await {
            tracing::debug!(%error, "progress ack failed");
        }
    }

    pub fn delivered_count(&self) -> i64 {
        self.message.info().map(|i| i.delivered).unwrap_or(1)
    }
}

/// Names used in dead letters and metrics.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub consumer: String,
    pub replica_id: String,
}

/// After this many deliveries a message that keeps asking for retry is dead-lettered.
const MAX_RETRY_DELIVERIES: i64 = 15;

/// A deferred message delivered this often is re-published as a fresh copy (and
/// the old one acknowledged), well before the work consumers' `max_deliver` (20).
const DEFERS_BEFORE_REPUBLISH: i64 = 10;

/// Deliveries of a deferred message before it is re-published, at most this
/// long apart: long waits (a closed send window) are re-evaluated this often.
pub const MAX_DEFER: Duration = Duration::from_secs(30);

/// Hands a deferred message back: a delayed NAK, or after many deliveries a
/// fresh copy (same payload and headers, a new `Nats-Msg-Id`) and an ack. The
/// copy is delivered at once and deferred again by its step if it must wait.
async fn defer(
    bus: &Bus,
    message: &jetstream::Message,
    delivered: i64,
    delay: Duration,
) -> Result<(), async_nats::Error> {
    if delivered < DEFERS_BEFORE_REPUBLISH {
        return message
            .ack_with(AckKind::Nak(Some(delay.min(MAX_DEFER))))
            .await;
    }
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(
        "Nats-Msg-Id",
        format!("deferred-{}", uuid::Uuid::new_v4()).as_str(),
    );
    bus.js
        .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
        .await?
        .await?;
    message.ack().await
}

async fn settle(
    bus: &Bus,
    identity: &WorkerIdentity,
    message: &jetstream::Message,
    outcome: StepOutcome,
) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let outcome = match outcome {
        StepOutcome::Retry { .. } if delivered >= MAX_RETRY_DELIVERIES => StepOutcome::DeadLetter {
            reason: format!("still failing after {delivered} deliveries"),
        },
        other => other,
    };
    let result = match outcome {
        StepOutcome::Ack => message.ack().await,
        // Back off harder on each redelivery, so an outage of a minute or two does
        // not exhaust the deliveries of healthy messages.
        StepOutcome::Retry { delay } => {
            let factor = 1u32 << delivered.clamp(1, 6).saturating_sub(1);
            let delay = (delay * factor).min(Duration::from_secs(30));
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
        StepOutcome::Defer { delay } => defer(bus, message, delivered, delay).await,
        StepOutcome::DeadLetter { reason } => {
            dead_letter(bus, identity, message, &reason).await;
            message.ack_with(AckKind::Term).await
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, consumer = %identity.consumer, "could not settle message; it will be redelivered");
    }
}

/// Copies a message to the dead-letter subject with its reason.
pub async fn dead_letter(
    bus: &Bus,
    identity: &WorkerIdentity,
    message: &jetstream::Message,
    reason: &str,
) {
    tracing::warn!(subject = %message.subject, consumer = %identity.consumer, %reason, "dead-lettering message");
    let mut letter = DeadLetter::new(
        &message.subject,
        reason,
        &identity.consumer,
        &identity.replica_id,
        &message.payload,
    );
    if let Ok(info) = message.info() {
        letter.stream_sequence = Some(info.stream_sequence);
        letter.delivered_count = Some(info.delivered);
    }
    bus.dead_letter(letter).await;
}

async fn handle_one<T, F, Fut>(
    bus: Bus,
    identity: WorkerIdentity,
    message: jetstream::Message,
    step: F,
) where
    T: Contract,
    F: Fn(T, Delivery) -> Fut,
    Fut: Future<Output = StepOutcome>,
{
    // Every log line about this message carries its campaign and correlation id.
    let span = tracing::info_span!(
        "message",
        consumer = %identity.consumer,
        subject = %message.subject,
        campaign_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
    );
    let outcome = match contracts::decode::<T>(&message.payload) {
        Err(error) => StepOutcome::DeadLetter {
            reason: error.to_string(),
        },
        Ok(payload) => {
            let delivery = Delivery {
                message: Arc::new(message.clone()),
            };
            if let Some(campaign) = payload.campaign() {
                span.record("campaign_id", tracing::field::display(campaign));
            }
            // The caller's own id when it sent one, else the producer's.
            match delivery.request_correlation_id() {
                Some(id) => span.record("correlation_id", tracing::field::display(id)),
                None => span.record(
                    "correlation_id",
                    tracing::field::display(payload.correlation().unwrap_or_default()),
                ),
            };
            match AssertUnwindSafe(step(payload, delivery).instrument(span.clone()))
                .catch_unwind()
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => StepOutcome::DeadLetter {
                    reason: "handler panicked".into(),
                },
            }
        }
    };
    let label = match &outcome {
        StepOutcome::Ack => "ack",
        StepOutcome::Retry { .. } => "retry",
        StepOutcome::Defer { .. } => "defer",
        StepOutcome::DeadLetter { .. } => "dead_letter",
    };
    metrics::counter!("herald_messages_handled_total", "consumer" => identity.consumer.clone(), "outcome" => label)
        .increment(1);
    settle(&bus, &identity, &message, outcome)
        .instrument(span)
        .await;
}

/// Publishes a consumer's pending, ack-pending and redelivered counts as gauges.
pub async fn sample_consumer(consumer: &mut PullConsumer, name: &str) {
    if let Ok(info) = consumer.info().await {
        let name = name.to_owned();
        metrics::gauge!("herald_consumer_pending", "consumer" => name.clone())
            .set(info.num_pending as f64);
        metrics::gauge!("herald_consumer_ack_pending", "consumer" => name.clone())
            .set(info.num_ack_pending as f64);
        metrics::gauge!("herald_consumer_redelivered", "consumer" => name)
            .set(info.num_redelivered as f64);
    }
}

/// Samples the consumer's state every 10 s until `stop`.
fn spawn_sampler(mut consumer: PullConsumer, name: String, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            sample_consumer(&mut consumer, &name).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    });
}

/// What a work loop needs while it serves one pull stream.
struct LoopParts<F> {
    bus: Bus,
    identity: WorkerIdentity,
    step: F,
    slots: Arc<Semaphore>,
    batch: usize,
    shutdown: CancellationToken,
}

impl<F> LoopParts<F> {
    /// Waits before the next attempt; false on shutdown.
    async fn retry(&self, health: &PullHealth) -> bool {
        pause(&self.bus.client, &self.shutdown, health.retry_delay()).await
    }
}

/// Pulls from a shared work consumer and runs `step` on each message, at most
/// `max_in_flight` at a time, until `shutdown`. In-flight steps finish first.
///
/// A failed pull (missed heartbeats after a node loss, "no responders" while the
/// consumer has no leader, a lost connection) reopens the pull stream within
/// 250 ms; `consumer` is called again to look the consumer up after 10 s of
/// failures or when it was deleted (see [`crate::pull`]).
pub async fn run_work_loop<T, C, CFut, F, Fut>(
    bus: Bus,
    identity: WorkerIdentity,
    consumer: C,
    max_in_flight: usize,
    shutdown: CancellationToken,
    step: F,
) -> anyhow::Result<()>
where
    T: Contract + Send + 'static,
    C: Fn() -> CFut,
    CFut: Future<Output = anyhow::Result<PullConsumer>>,
    F: Fn(T, Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = StepOutcome> + Send + 'static,
{
    let mut health = PullHealth::new(&identity.consumer);
    let parts = LoopParts {
        bus,
        identity,
        step,
        slots: Arc::new(Semaphore::new(max_in_flight)),
        batch: max_in_flight,
        shutdown,
    };
    let mut sampler: Option<CancellationToken> = None;
    'lookup: while !parts.shutdown.is_cancelled() {
        let pull = match consumer().await {
            Ok(pull) => pull,
            Err(error) => {
                health.failed(&format!("work consumer unavailable: {error:#}"), None);
                if !parts.retry(&health).await {
                    break;
                }
                continue;
            }
        };
        let stop = parts.shutdown.child_token();
        spawn_sampler(pull.clone(), parts.identity.consumer.clone(), stop.clone());
        if let Some(previous) = sampler.replace(stop) {
            previous.cancel();
        }
        loop {
            match serve_stream::<T, _, _>(&parts, &pull, &mut health).await {
                StreamEnd::Shutdown => break 'lookup,
                StreamEnd::Failed(recovery) => {
                    if !parts.retry(&health).await {
                        break 'lookup;
                    }
                    if recovery == Recovery::Lookup {
                        continue 'lookup;
                    }
                }
            }
        }
    }
    // Let in-flight steps finish so their messages are settled, not redelivered.
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        parts.slots.acquire_many(max_in_flight as u32),
    )
    .await;
    Ok(())
}

/// Opens one pull stream and hands its messages to the step until the stream
/// fails or shutdown is asked for.
async fn serve_stream<T, F, Fut>(
    parts: &LoopParts<F>,
    pull: &PullConsumer,
    health: &mut PullHealth,
) -> StreamEnd
where
    T: Contract + Send + 'static,
    F: Fn(T, Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = StepOutcome> + Send + 'static,
{
    let mut messages = match pull::open(pull, Some(parts.batch)).await {
        Ok(messages) => messages,
        Err(error) => return StreamEnd::Failed(health.failed(&format!("{error:#}"), None)),
    };
    health.opened();
    loop {
        let permit = tokio::select! {
            _ = parts.shutdown.cancelled() => return StreamEnd::Shutdown,
            permit = parts.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return StreamEnd::Shutdown,
            },
        };
        let next = tokio::select! {
            biased;
            _ = parts.shutdown.cancelled() => return StreamEnd::Shutdown,
            next = messages.next() => next,
            // Idle but no missed heartbeat: the pull is being served again.
            _ = pull::sleep_until(health.proven_at()) => {
                health.healthy();
                continue;
            }
        };
        match next {
            Some(Ok(message)) => {
                health.healthy();
                let (bus, identity, step) = (
                    parts.bus.clone(),
                    parts.identity.clone(),
                    parts.step.clone(),
                );
                tokio::spawn(async move {
                    handle_one::<T, _, _>(bus, identity, message, step).await;
                    drop(permit);
                });
            }
            Some(Err(error)) => {
                return StreamEnd::Failed(health.failed(&error, Some(error.kind())));
            }
            None => return StreamEnd::Failed(health.failed(&"the pull stream ended", None)),
        }
    }
}
