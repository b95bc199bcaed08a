//! The pause answer under load: request to response of `POST …/pause`, with every
//! service its own process (the api, `--packers` packers, the largest `--senders`
//! count of senders) and a campaign of `--recipients` sending flat out.
//!
//! Baseline, same invocation and same processes: the same pauses of a campaign
//! held to 1 msg/s by its own `rate_limit_per_second`, so nothing else is busy.
//! Each pause comes after a uniformly random sleep of up to the status TTL (as in
//! the in-process part), then the campaign is resumed once it has been quiet.
//!
//! The api's own `herald_transition_seconds` histogram (from its `/metrics`) splits
//! the loaded pauses into the row-lock wait, the rest of the commit and the
//! publish, so a slow answer says where its time went.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use uuid::Uuid;

use crate::api_client::ApiClient;
use crate::args::BenchArgs;
use crate::env::with_env;
use crate::processes::ProcessStack;
use crate::sink::Sink;

/// Request-to-response times of the pauses, in ms, and the api's mean time per
/// transition phase over the loaded pauses, in ms (`lock`, `commit`, `publish`).
#[derive(Debug, Default)]
pub struct ResponseTimes {
    pub loaded: Vec<f64>,
    pub idle: Vec<f64>,
    /// Mean ms per phase over the loaded pauses, then over the idle ones.
    pub loaded_phases: Vec<PhaseSummary>,
    pub idle_phases: Vec<PhaseSummary>,
}

/// Per phase between two readings of the api's metrics: the mean in ms, and how
/// many pauses spent more than 50 ms in it.
fn phase_means(before: &[PhaseReading], after: &[PhaseReading]) -> Vec<PhaseSummary> {
    let mut means = Vec::new();
    for reading in after {
        let earlier = before
            .iter()
            .find(|p| p.phase == reading.phase)
            .cloned()
            .unwrap_or_default();
        let count = reading.count - earlier.count;
        if count > 0.0 {
            means.push(PhaseSummary {
                phase: reading.phase.clone(),
                mean_ms: 1000.0 * (reading.sum - earlier.sum) / count,
                over_50ms: count - (reading.within_50ms - earlier.within_50ms),
            });
        }
    }
    means
}

/// One phase over a series of pauses.
#[derive(Debug, Clone)]
pub struct PhaseSummary {
    pub phase: String,
    pub mean_ms: f64,
    pub over_50ms: f64,
}

/// One pause, timed from request to response; `None` if it was refused (the
/// campaign completed first).
async fn timed_pause(client: &ApiClient, campaign: Uuid) -> anyhow::Result<Option<f64>> {
    let asked = Instant::now();
    let (status, body) = client.transition(campaign, "pause").await?;
    let took = asked.elapsed().as_secs_f64() * 1000.0;
    match status {
        200 => Ok(Some(took)),
        409 => Ok(None),
        _ => anyhow::bail!("pause answered {status}: {body}"),
    }
}

fn random_phase(ttl: Duration) -> Duration {
    Duration::from_micros(rand::random_range(0..ttl.as_micros().max(1) as u64))
}

/// One phase of the api's `herald_transition_seconds{action="pause"}` histogram:
/// sum (s), count, and how many took at most 50 ms.
#[derive(Debug, Clone, Default)]
struct PhaseReading {
    phase: String,
    sum: f64,
    count: f64,
    within_50ms: f64,
}

/// Per phase, from the api's Prometheus text.
fn pause_phases(metrics: &str) -> Vec<PhaseReading> {
    let mut phases: Vec<PhaseReading> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("herald_transition_seconds_") else {
            continue;
        };
        if !rest.contains("action=\"pause\"") {
            continue;
        }
        let (kind, labels_and_value) = rest.split_once('{').unwrap_or(("", ""));
        let phase = labels_and_value
            .split("phase=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap_or_default();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let index = match phases.iter().position(|p| p.phase == phase) {
            Some(i) => i,
            None => {
                phases.push(PhaseReading {
                    phase: phase.to_owned(),
                    ..PhaseReading::default()
                });
                phases.len() - 1
            }
        };
        match kind {
            "sum" => phases[index].sum += value,
            "count" => phases[index].count += value,
            "bucket" if labels_and_value.contains("le=\"0.05\"") => {
                phases[index].within_50ms += value
            }
            _ => {}
        }
    }
    phases
}

async fn api_metrics(base_url: &str) -> anyhow::Result<String> {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text)
}

struct Load<'a> {
    client: &'a ApiClient,
    sink: &'a Sink,
    recipients: u64,
    min_pending: u64,
    campaign: Option<Uuid>,
}

impl Load<'_> {
    /// A campaign that is sending with at least `min_pending` rows to go.
    async fn running(&mut self) -> anyhow::Result<Uuid> {
        if let Some(id) = self.campaign {
            let body = self.client.campaign(id).await?;
            let pending = body["counters"]["pending"].as_u64().unwrap_or(0);
            if body["status"] == "sending" && pending >= self.min_pending {
                return Ok(id);
            }
            let _ = self.client.transition(id, "stop").await?;
        }
        let client = self.client;
        let id = client
            .create_campaign(self.sink.webhook_channel(), None)
            .await?;
        client.import_csv(id, self.recipients).await?;
        client.must(id, "start").await?;
        self.campaign = Some(id);
        Ok(id)
    }
}

/// Runs the idle baseline, then the loaded pauses, on one process stack.
pub async fn measure_response(
    args: &BenchArgs,
    iterations: usize,
    ttl: Duration,
) -> anyhow::Result<ResponseTimes> {
    with_env(args, |env| async move {
        let sink = Sink::start(Duration::from_millis(args.pause_sink_delay_ms)).await?;
        let stack = ProcessStack::start(args, &env, &args.herald_bin).await?;
        let result = async {
            let client = &stack.client;
            let mut times = ResponseTimes::default();
            let at_start = pause_phases(&api_metrics(&stack.base_url).await?);
            let idle = client
                .create_campaign(sink.webhook_channel(), Some(1))
                .await?;
            client.import_csv(idle, 1_000).await?;
            client.must(idle, "start").await?;
            while times.idle.len() < iterations {
                tokio::time::sleep(random_phase(ttl)).await;
                let took = timed_pause(client, idle)
                    .await?
                    .context("idle pause refused")?;
                times.idle.push(took);
                client.must(idle, "resume").await?;
            }
            client.must(idle, "stop").await?;
            let senders = args.max_senders() as u64;
            let in_flight = senders * args.sender_concurrency as u64;
            let mut load = Load {
                client,
                sink: &sink,
                recipients: args.recipients_or(super::DEFAULT_RECIPIENTS),
                min_pending: (senders * args.sender_batches as u64 * args.batch_size as u64)
                    .min(args.recipients_or(super::DEFAULT_RECIPIENTS) / 2),
                campaign: None,
            };
            let before = pause_phases(&api_metrics(&stack.base_url).await?);
            times.idle_phases = phase_means(&at_start, &before);
            while times.loaded.len() < iterations {
                let id = load.running().await?;
                let base = sink.total();
                if !sink
                    .wait_for_total(base + in_flight, Duration::from_secs(30))
                    .await
                {
                    load.campaign = None;
                    continue;
                }
                tokio::time::sleep(random_phase(ttl)).await;
                let Some(took) = timed_pause(client, id).await? else {
                    load.campaign = None;
                    continue;
                };
                times.loaded.push(took);
                sink.wait_quiet(Duration::from_millis(100), Duration::from_secs(10))
                    .await;
                client.must(id, "resume").await?;
                let done = times.loaded.len();
                if done % 20 == 0 || done == iterations {
                    eprintln!("   {done}/{iterations} pauses under load (processes)");
                }
            }
            if let Some(id) = load.campaign {
                let _ = client.transition(id, "stop").await?;
            }
            let after = pause_phases(&api_metrics(&stack.base_url).await?);
            times.loaded_phases = phase_means(&before, &after);
            anyhow::Ok(times)
        }
        .await;
        stack.stop(result.is_err()).await;
        sink.stop();
        anyhow::ensure!(
            sink.duplicates() == 0,
            "{} duplicate sends",
            sink.duplicates()
        );
        result
    })
    .await
}
