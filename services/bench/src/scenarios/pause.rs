//! Scenario 2, pause latency: pause and resume a running campaign many times with
//! the largest sender count, and measure from the client's pause response:
//!
//! - **apply**: when each sender replica applied the pause (its own
//!   `AppliedControl::applied_at`, matched by campaign and by the order of the
//!   pauses; both clocks are `Utc` on this host);
//! - **last request**: when the last provider request that started after the
//!   response started (0 when none did);
//! - **overshoot**: how many provider requests started after the response.
//!
//! Each pause lands at a random moment of the senders' status TTL: before it, the
//! scenario sleeps a uniformly random time in [0, TTL). (The resume before it
//! refreshed every cache, so without the sleep no TTL re-read would ever be in
//! flight when a pause lands.) The TTL is `--status-ttl-ms`, 1000 ms by default
//! here for both modes (production: 5000), so 200 iterations stay within a few
//! minutes. The last-request figure (p99 and max over all pauses) is the one that
//! shows a re-read racing a pause.
//!
//! Baseline, same invocation: the same with the control fast path off
//! (`HERALD_CONTROL_FAST_PATH=false` for senders and packers, same status TTL), so
//! senders notice the pause only when their cached status expires. Without a
//! control listener nothing records an apply time, so the baseline's effective
//! latency is its last request. Targets: apply p99 < 50 ms, effective p99 >= 50x
//! faster than the baseline, overshoot <= senders x concurrency.
//!
//! The sink answers after a delay (20 ms by default) so requests are in flight when
//! the pause lands, as with a real provider. A campaign that runs low is replaced
//! by a fresh one between iterations; those set-up steps are not timed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use herald_core::contracts::ControlAction;
use uuid::Uuid;

use crate::args::BenchArgs;
use crate::env::with_env;
use crate::sink::Sink;
use crate::stack::{InProcessStack, packer_config, sender_config, with_stack_configs};

mod acked;
mod figures;
mod response;

pub use figures::run;

pub const DEFAULT_RECIPIENTS: u64 = 200_000;

/// What one pause measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Per sender replica that applied it within the deadline, ms after the response.
    apply_ms: Vec<f64>,
    /// The same, ms after the pause request was sent.
    apply_from_request_ms: Vec<f64>,
    /// Applies that happened before the response reached the client.
    applied_before_response: usize,
    /// Replicas that did not apply it within 2 s.
    missed: usize,
    last_request_ms: f64,
    overshoot: u64,
    /// Request to response of the pause itself.
    round_trip_ms: f64,
}

impl Sample {
    /// When the pause had taken effect everywhere: the slower of the last apply
    /// and the last request.
    fn effective_ms(&self) -> f64 {
        self.apply_ms
            .iter()
            .copied()
            .fold(self.last_request_ms, f64::max)
    }
}

/// All samples of one mode.
#[derive(Debug, Default)]
struct Series {
    samples: Vec<Sample>,
    /// Acknowledged pauses (fast path only): `acked`.
    acked: Vec<acked::AckedSample>,
    discarded: usize,
    campaigns: usize,
}

impl Series {
    fn apply(&self) -> Vec<f64> {
        self.samples
            .iter()
            .flat_map(|s| s.apply_ms.clone())
            .collect()
    }
    fn apply_from_request(&self) -> Vec<f64> {
        self.samples
            .iter()
            .flat_map(|s| s.apply_from_request_ms.clone())
            .collect()
    }
    fn applied_before_response(&self) -> usize {
        self.samples.iter().map(|s| s.applied_before_response).sum()
    }
    fn last_request(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.last_request_ms).collect()
    }
    fn effective(&self) -> Vec<f64> {
        self.samples.iter().map(Sample::effective_ms).collect()
    }
    fn overshoot(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.overshoot as f64).collect()
    }
    fn round_trip(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.round_trip_ms).collect()
    }
    fn missed(&self) -> usize {
        self.samples.iter().map(|s| s.missed).sum()
    }
}

struct Runner<'a> {
    stack: &'a InProcessStack,
    sink: &'a Sink,
    recipients: u64,
    fast_path: bool,
    /// The senders' status TTL: each pause waits a random part of it first.
    ttl: Duration,
    /// Requests that must reach the sink after a (re)start before the next pause,
    /// so every sender is busy when it lands.
    in_flight_budget: u64,
    /// Below this many pending rows the campaign is replaced before the next pause.
    min_pending: u64,
    campaign: Option<Uuid>,
    pauses: HashMap<Uuid, usize>,
    series: Series,
}

impl Runner<'_> {
    async fn ensure_running(&mut self) -> anyhow::Result<Uuid> {
        if let Some(id) = self.campaign {
            let body = self.stack.client.campaign(id).await?;
            let pending = body["counters"]["pending"].as_u64().unwrap_or(0);
            if body["status"] == "sending" && pending >= self.min_pending {
                return Ok(id);
            }
            // Stop the old one and let its last requests land: the sink counts every
            // campaign's requests, and only the measured campaign may be sending.
            if matches!(body["status"].as_str(), Some("sending" | "paused")) {
                // It may complete between the read and the stop: a 409 from
                // `completed` is fine, anything else is an error.
                let (status, answer) = self.stack.client.transition(id, "stop").await?;
                let completed = status == 409 && answer["error"]["from"] == "completed";
                anyhow::ensure!(
                    status == 200 || completed,
                    "stop answered {status}: {answer}"
                );
            }
            self.sink
                .wait_quiet(Duration::from_millis(300), Duration::from_secs(30))
                .await;
        }
        let client = &self.stack.client;
        let id = client
            .create_campaign(self.sink.webhook_channel(), None)
            .await?;
        client.import_csv(id, self.recipients).await?;
        client.must(id, "start").await?;
        self.campaign = Some(id);
        self.series.campaigns += 1;
        Ok(id)
    }

    /// The `nth` pause of `campaign` as `sender` applied it, if it has.
    fn applied_at(
        sender: &herald_sender::Sender,
        campaign: Uuid,
        nth: usize,
    ) -> Option<chrono::DateTime<Utc>> {
        sender
            .applied_controls()
            .iter()
            .filter(|c| c.campaign_id == campaign && c.action == ControlAction::Pause)
            .nth(nth)
            .map(|c| c.applied_at)
    }

    /// A running campaign whose senders are busy again (the sink took another
    /// in-flight budget of requests), at a random phase of the status TTL: the
    /// moment a pause is sent. `None` when the campaign finished (or stuck)
    /// before it got going again; the next iteration takes a fresh one.
    pub(super) async fn busy_at_random_phase(&mut self) -> anyhow::Result<Option<Uuid>> {
        let id = self.ensure_running().await?;
        let base = self.sink.total();
        if !self
            .sink
            .wait_for_total(base + self.in_flight_budget, Duration::from_secs(30))
            .await
        {
            self.campaign = None;
            return Ok(None);
        }
        // A random phase of the TTL: the resume refreshed every cache, so a pause
        // right away would never meet a re-read in flight.
        let phase = rand::random_range(0..self.ttl.as_micros().max(1) as u64);
        tokio::time::sleep(Duration::from_micros(phase)).await;
        Ok(Some(id))
    }

    async fn iteration(&mut self) -> anyhow::Result<Option<Sample>> {
        let Some(id) = self.busy_at_random_phase().await? else {
            self.series.discarded += 1;
            return Ok(None);
        };
        let client = &self.stack.client;
        let requested_at = Utc::now();
        let asked = Instant::now();
        let (status, _) = client.transition(id, "pause").await?;
        let answered = Instant::now();
        let answered_at = Utc::now();
        let at_answer = self.sink.total();
        if status != 200 {
            // Completed between the check and the pause: not a measurement.
            self.campaign = None;
            self.series.discarded += 1;
            return Ok(None);
        }
        let nth = {
            let n = self.pauses.entry(id).or_default();
            *n += 1;
            *n - 1
        };
        let mut sample = Sample {
            round_trip_ms: (answered - asked).as_secs_f64() * 1000.0,
            ..Sample::default()
        };
        if self.fast_path {
            let deadline = answered + Duration::from_secs(2);
            let mut pending: Vec<&herald_sender::Sender> = self.stack.senders.iter().collect();
            while !pending.is_empty() && Instant::now() < deadline {
                pending.retain(|sender| match Self::applied_at(sender, id, nth) {
                    Some(at) => {
                        let micros = (at - answered_at).num_microseconds().unwrap_or(0);
                        // Applied before the response reached us counts as 0: the
                        // api publishes (and awaits the stream's ack) before it answers.
                        if micros < 0 {
                            sample.applied_before_response += 1;
                        }
                        sample.apply_ms.push((micros.max(0) as f64) / 1000.0);
                        let from_request = (at - requested_at).num_microseconds().unwrap_or(0);
                        sample
                            .apply_from_request_ms
                            .push(from_request.max(0) as f64 / 1000.0);
                        false
                    }
                    None => true,
                });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sample.missed = pending.len();
        }
        // Long enough to span a gap between two requests of a sender that still
        // sends; the baseline's senders keep going for up to the status TTL.
        let quiet = if self.fast_path {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(1000)
        };
        let total = self.sink.wait_quiet(quiet, Duration::from_secs(30)).await;
        sample.overshoot = total - at_answer;
        sample.last_request_ms = match self.sink.last_start() {
            Some(last) if sample.overshoot > 0 && last > answered => {
                (last - answered).as_secs_f64() * 1000.0
            }
            _ => 0.0,
        };
        let (status, body) = client.transition(id, "resume").await?;
        if status != 200 {
            anyhow::bail!("resume answered {status}: {body}");
        }
        Ok(Some(sample))
    }
}

/// The status TTL of both modes: `--status-ttl-ms`, else 1000 ms.
pub fn status_ttl_ms(args: &BenchArgs) -> u64 {
    args.status_ttl_ms.unwrap_or(1000).max(1)
}

async fn measure(args: &BenchArgs, fast_path: bool, iterations: usize) -> anyhow::Result<Series> {
    let senders = args.max_senders();
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let ttl_ms = status_ttl_ms(args);
    let mut sender = sender_config(args, fast_path);
    sender.status_ttl_ms = ttl_ms;
    with_env(args, |env| async move {
        let sink = Sink::start(Duration::from_millis(args.pause_sink_delay_ms)).await?;
        let series = with_stack_configs(
            &env,
            args.packers,
            senders,
            packer_config(args, fast_path),
            sender,
            async |stack| {
                let mut runner = Runner {
                    stack,
                    sink: &sink,
                    recipients,
                    fast_path,
                    ttl: Duration::from_millis(ttl_ms),
                    in_flight_budget: (senders * args.sender_concurrency) as u64,
                    // What the baseline can send after one pause (every batch in flight),
                    // but at most half a campaign so small runs still reuse campaigns.
                    min_pending: ((senders * args.sender_batches) as u64
                        * args.batch_size.max(1) as u64)
                        .min(recipients / 2),
                    campaign: None,
                    pauses: HashMap::new(),
                    series: Series::default(),
                };
                let mut attempts = 0;
                while runner.series.samples.len() < iterations {
                    attempts += 1;
                    anyhow::ensure!(
                        attempts <= iterations * 3 + 10,
                        "too many discarded pause iterations"
                    );
                    if let Some(sample) = runner.iteration().await? {
                        runner.series.samples.push(sample);
                        if fast_path && let Some(acked) = runner.acked_iteration().await? {
                            runner.series.acked.push(acked);
                        }
                        let done = runner.series.samples.len();
                        if done % 20 == 0 || done == iterations {
                            eprintln!("   {done}/{iterations} pauses");
                        }
                    }
                }
                anyhow::Ok(runner.series)
            },
        )
        .await;
        sink.stop();
        let series = series?;
        anyhow::ensure!(
            sink.duplicates() == 0,
            "{} duplicate sends across pauses",
            sink.duplicates()
        );
        Ok(series)
    })
    .await
}
