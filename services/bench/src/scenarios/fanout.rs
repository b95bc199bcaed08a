//! Scenario 3, control fan-out: with the sender and packer replicas running (and a
//! campaign keeping them busy), publish control messages and count, for each one,
//! the share of replicas that applied it within 1 s.
//!
//! Comparison in the same invocation: one durable consumer shared by as many pull
//! subscribers as there are replicas, on the same CONTROL stream, receiving the same
//! messages. That is how a Kafka consumer group or a single JetStream durable
//! behaves: each message goes to one member, so most replicas never see a pause.
//!
//! The messages are published on `campaigns.control.<id>` exactly as the api's
//! outbox does (schema-checked contract, `Nats-Msg-Id`), each for its own random
//! campaign id so matching is exact. Control messages are hints, so this changes no
//! state. Packers record no apply time, so a 1 ms poller records when each replica's
//! applied list first shows a message; that is the apply time for every replica.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use herald_core::CancellationToken;
use herald_core::contracts::{self, ControlAction, ControlMessage};
use serde_json::json;
use uuid::Uuid;

use crate::args::BenchArgs;
use crate::env::{BenchEnv, with_env};
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::sink::Sink;
use crate::stack::with_stack;
use crate::stats::summary;

pub const DEFAULT_RECIPIENTS: u64 = 20_000;
const WINDOW: Duration = Duration::from_secs(1);
const SHARED_DURABLE: &str = "bench_shared_control";

type Seen = Arc<Mutex<HashMap<(usize, Uuid), Instant>>>;

/// Per message: the share of `replicas` that saw it within the window, and the
/// latencies of those that did.
fn shares(
    published: &[(Uuid, Instant)],
    seen: &HashMap<(usize, Uuid), Instant>,
    replicas: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut share = Vec::new();
    let mut latency = Vec::new();
    for (id, at) in published {
        let mut within = 0;
        for r in 0..replicas {
            if let Some(t) = seen.get(&(r, *id)) {
                let after = t.saturating_duration_since(*at);
                if after <= WINDOW {
                    within += 1;
                    latency.push(after.as_secs_f64() * 1000.0);
                }
            }
        }
        share.push(100.0 * within as f64 / replicas.max(1) as f64);
    }
    (share, latency)
}

/// `replicas` pull subscribers, each on its own connection, sharing one durable.
async fn shared_subscribers(
    env: &BenchEnv,
    replicas: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Seen, Vec<tokio::task::JoinHandle<()>>)> {
    let bus = env.bus().await?;
    let stream = bus.js.get_stream(&bus.streams.control).await?;
    let _: consumer::PullConsumer = stream
        .get_or_create_consumer(
            SHARED_DURABLE,
            consumer::pull::Config {
                durable_name: Some(SHARED_DURABLE.into()),
                filter_subject: bus.subjects.control_all(),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    for index in 0..replicas {
        let servers = herald_core::config::parse_nats_servers(&env.common.nats_url)?;
        let client = async_nats::connect(servers).await?;
        let js = jetstream::new(client);
        let consumer: consumer::PullConsumer = js
            .get_stream(&bus.streams.control)
            .await?
            .get_consumer(SHARED_DURABLE)
            .await
            .map_err(|e| anyhow::anyhow!("opening the shared durable: {e}"))?;
        let mut messages = consumer.messages().await?;
        let (seen, shutdown) = (seen.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = messages.next() => next,
                };
                let Some(Ok(message)) = next else { return };
                if let Ok(control) = contracts::decode::<ControlMessage>(&message.payload) {
                    seen.lock()
                        .expect("seen lock")
                        .entry((index, control.campaign_id))
                        .or_insert_with(Instant::now);
                }
                let _ = message.ack().await;
            }
        }));
    }
    // Wait until every subscriber's pull request is parked on the durable.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = bus.js.get_stream(&bus.streams.control).await?;
    while Instant::now() < deadline {
        if stream.consumer_info(SHARED_DURABLE).await?.num_waiting >= replicas {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((seen, tasks))
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let senders = args.max_senders();
    let packers = args.packers;
    let replicas = senders + packers;
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let messages = args.messages.max(1);
    let mut report = ScenarioReport::new(
        "fanout",
        json!({
            "senders": senders, "packers": packers, "messages": messages,
            "background_recipients": recipients, "window_ms": WINDOW.as_millis() as u64,
        }),
    );
    let (herald_seen, shared_seen, published) = with_env(args, |env| async move {
        let sink = Sink::start(Duration::from_millis(5)).await?;
        let result = with_stack(&env, args, packers, senders, true, async |stack| {
            // Busy replicas: the control listener shares the runtime with dispatching.
            let background = stack
                .client
                .create_campaign(sink.webhook_channel(), None)
                .await?;
            stack.client.import_csv(background, recipients).await?;
            stack.client.must(background, "start").await?;

            let shutdown = CancellationToken::new();
            let (shared_seen, subscribers) = shared_subscribers(&env, replicas, &shutdown).await?;
            let herald_seen: Seen = Arc::default();
            let poller = {
                let (seen, shutdown) = (herald_seen.clone(), shutdown.clone());
                let senders = stack.senders.clone();
                let packers = stack.packers.clone();
                tokio::spawn(async move {
                    while !shutdown.is_cancelled() {
                        {
                            let now = Instant::now();
                            let mut seen = seen.lock().expect("seen lock");
                            for (i, s) in senders.iter().enumerate() {
                                for c in s.applied_controls() {
                                    seen.entry((i, c.campaign_id)).or_insert(now);
                                }
                            }
                            for (j, p) in packers.iter().enumerate() {
                                for (campaign, _) in p.applied_controls() {
                                    seen.entry((senders.len() + j, campaign)).or_insert(now);
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            };
            let bus = env.bus().await?;
            let actions = [
                ControlAction::Pause,
                ControlAction::Resume,
                ControlAction::Stop,
            ];
            let mut published = Vec::new();
            for k in 0..messages {
                let message = ControlMessage {
                    campaign_id: Uuid::new_v4(),
                    action: actions[k % actions.len()],
                    correlation_id: Uuid::new_v4(),
                };
                bus.publish_contract(
                    bus.subjects.control(message.campaign_id),
                    &message,
                    &message.correlation_id.to_string(),
                    None,
                )
                .await?;
                // Acked by the stream: the moment the api would answer.
                published.push((message.campaign_id, Instant::now()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
            shutdown.cancel();
            let _ = poller.await;
            for task in subscribers {
                let _ = task.await;
            }
            let herald = herald_seen.lock().expect("seen lock").clone();
            let shared = shared_seen.lock().expect("seen lock").clone();
            anyhow::Ok((herald, shared, published))
        })
        .await;
        sink.stop();
        result
    })
    .await?;

    let (herald_share, herald_latency) = shares(&published, &herald_seen, replicas);
    let (shared_share, shared_latency) = shares(&published, &shared_seen, replicas);
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let all = |v: &[f64]| {
        100.0 * v.iter().filter(|s| **s >= 100.0).count() as f64 / v.len().max(1) as f64
    };
    let base = "one shared durable";
    let herald_min = min(&herald_share);
    report.push(
        Figure::new(
            "share_min_pct",
            "replicas applying a message within 1 s, worst message",
            herald_min,
            "%",
        )
        .against(min(&shared_share), base, RatioKind::TimesBaseline)
        .target("100%", herald_min >= 100.0),
    );
    report.push(
        Figure::new(
            "share_mean_pct",
            "replicas applying a message within 1 s, mean",
            mean(&herald_share),
            "%",
        )
        .against(mean(&shared_share), base, RatioKind::TimesBaseline),
    );
    report.push(
        Figure::new(
            "messages_reaching_all_pct",
            "messages applied by every replica within 1 s",
            all(&herald_share),
            "%",
        )
        .against(all(&shared_share), base, RatioKind::TimesBaseline),
    );
    let (h50, h99, hmax) = summary(&herald_latency);
    let (s50, s99, smax) = summary(&shared_latency);
    for (q, h, s) in [("p50", h50, s50), ("p99", h99, s99), ("max", hmax, smax)] {
        report.push(
            Figure::new(
                format!("apply_ms_{q}"),
                format!("publish ack to replica apply, {q}"),
                h,
                "ms",
            )
            .beside(s, format!("{base}, receiving member only")),
        );
    }
    let distinct: HashSet<Uuid> = shared_seen.keys().map(|(_, id)| *id).collect();
    report.note(format!(
        "{messages} control messages, 20 ms apart, {replicas} replicas ({senders} senders, {packers} packers); \
         the shared durable had {replicas} pull subscribers and delivered {} of the messages to one of them each. \
         Apply times come from a 1 ms poll of each replica's applied list, so they are up to ~1 ms late.",
        distinct.len()
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_replicas_within_the_window() {
        let t0 = Instant::now();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let published = vec![(a, t0), (b, t0)];
        let mut seen = HashMap::new();
        seen.insert((0, a), t0 + Duration::from_millis(3));
        seen.insert((1, a), t0 + Duration::from_millis(5));
        seen.insert((0, b), t0 + Duration::from_secs(2));
        let (share, latency) = shares(&published, &seen, 2);
        assert_eq!(share, vec![100.0, 0.0]);
        assert_eq!(latency.len(), 2);
    }
}
