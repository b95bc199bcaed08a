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
//! Baseline, same invocation: the same with the control fast path off
//! (`HERALD_CONTROL_FAST_PATH=false` for senders and packers, status TTL 5 s), so
//! senders notice the pause only when their cached status expires. Without a
//! control listener nothing records an apply time, so the baseline's effective
//! latency is its last request.
//!
//! The sink answers after a delay (20 ms by default) so requests are in flight when
//! the pause lands, as with a real provider. A campaign that runs low is replaced
//! by a fresh one between iterations; those set-up steps are not timed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use herald_core::contracts::ControlAction;
use serde_json::json;
use uuid::Uuid;

use crate::args::BenchArgs;
use crate::env::with_env;
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::sink::Sink;
use crate::stack::{InProcessStack, with_stack};
use crate::stats::summary;

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
    fn missed(&self) -> usize {
        self.samples.iter().map(|s| s.missed).sum()
    }
}

struct Runner<'a> {
    stack: &'a InProcessStack,
    sink: &'a Sink,
    recipients: u64,
    fast_path: bool,
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
                self.stack.client.must(id, "stop").await?;
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

    async fn iteration(&mut self) -> anyhow::Result<Option<Sample>> {
        let id = self.ensure_running().await?;
        let client = &self.stack.client;
        let base = self.sink.total();
        if !self
            .sink
            .wait_for_total(base + self.in_flight_budget, Duration::from_secs(30))
            .await
        {
            // Finished (or stuck) before it got going again: take a fresh campaign.
            self.campaign = None;
            self.series.discarded += 1;
            return Ok(None);
        }
        let requested_at = Utc::now();
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
        let mut sample = Sample::default();
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

async fn measure(args: &BenchArgs, fast_path: bool, iterations: usize) -> anyhow::Result<Series> {
    let senders = args.max_senders();
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    with_env(args, |env| async move {
        let sink = Sink::start(Duration::from_millis(args.pause_sink_delay_ms)).await?;
        let series = with_stack(
            &env,
            args,
            args.packers,
            senders,
            fast_path,
            async |stack| {
                let mut runner = Runner {
                    stack,
                    sink: &sink,
                    recipients,
                    fast_path,
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

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let senders = args.max_senders();
    let budget = (senders * args.sender_concurrency) as f64;
    let mut report = ScenarioReport::new(
        "pause",
        json!({
            "recipients": args.recipients_or(DEFAULT_RECIPIENTS), "senders": senders,
            "packers": args.packers, "iterations": args.iterations,
            "baseline_iterations": args.baseline_iterations,
            "sender_concurrency": args.sender_concurrency, "sink_delay_ms": args.pause_sink_delay_ms,
            "status_ttl_ms": 5000,
        }),
    );
    eprintln!("   fast path on, {} iterations", args.iterations);
    let fast = measure(args, true, args.iterations.max(1)).await?;
    eprintln!(
        "   fast path off, {} iterations (each waits out the status TTL)",
        args.baseline_iterations
    );
    let slow = measure(args, false, args.baseline_iterations.max(1)).await?;

    let (a50, a99, amax) = summary(&fast.apply());
    let (e50, e99, emax) = summary(&fast.effective());
    let (b50, b99, bmax) = summary(&slow.effective());
    let (l50, l99, lmax) = summary(&fast.last_request());
    let (o50, o99, omax) = summary(&fast.overshoot());
    let (s50, s99, smax) = summary(&slow.overshoot());
    let base = "fast path off";
    for (q, apply, baseline) in [("p50", a50, b50), ("p99", a99, b99), ("max", amax, bmax)] {
        let mut f = Figure::new(
            format!("apply_ms_{q}"),
            format!("pause applied by each sender, {q}"),
            apply,
            "ms",
        )
        .against(baseline, base, RatioKind::TimesFaster);
        if q == "p99" {
            f = f.target("< 50 ms", apply < 50.0);
        }
        report.push(f);
    }
    for (q, last, baseline) in [("p50", l50, b50), ("p99", l99, b99), ("max", lmax, bmax)] {
        report.push(
            Figure::new(
                format!("last_request_ms_{q}"),
                format!("last provider request after the pause, {q}"),
                last,
                "ms",
            )
            .against(baseline, base, RatioKind::TimesFaster),
        );
    }
    for (q, effective, baseline) in [("p50", e50, b50), ("p99", e99, b99), ("max", emax, bmax)] {
        let mut f = Figure::new(
            format!("effective_ms_{q}"),
            format!("pause in effect everywhere (apply and last request), {q}"),
            effective,
            "ms",
        )
        .against(baseline, base, RatioKind::TimesFaster);
        if q == "p99" {
            let ratio = f.ratio.unwrap_or(0.0);
            f = f.target(">= 50x faster", ratio >= 50.0);
        }
        report.push(f);
    }
    for (q, over, baseline) in [("p50", o50, s50), ("p99", o99, s99), ("max", omax, smax)] {
        let mut f = Figure::new(
            format!("overshoot_{q}"),
            format!("requests started after the pause response, {q}"),
            over,
            "requests",
        )
        .against(baseline, base, RatioKind::TimesFewer);
        if q == "max" {
            f = f.target(
                format!("<= {budget} (senders x concurrency)"),
                over <= budget,
            );
        }
        report.push(f);
    }
    let (r50, r99, rmax) = summary(&fast.apply_from_request());
    for (q, v, baseline) in [("p50", r50, b50), ("p99", r99, b99), ("max", rmax, bmax)] {
        report.push(
            Figure::new(
                format!("apply_from_request_ms_{q}"),
                format!("pause applied by each sender, from the request, {q}"),
                v,
                "ms",
            )
            .against(baseline, base, RatioKind::TimesFaster),
        );
    }
    let applies = fast.apply().len();
    let early = fast.applied_before_response();
    report.push(Figure::new(
        "applied_before_response_pct",
        "sender applies done before the client had the response",
        100.0 * early as f64 / applies.max(1) as f64,
        "%",
    ));
    report.push(
        Figure::new(
            "missed_applies",
            "sender applies missing after 2 s",
            fast.missed() as f64,
            "applies",
        )
        .target("0", fast.missed() == 0),
    );
    report.push(Figure::new(
        "iterations",
        "pauses measured (fast path on)",
        fast.samples.len() as f64,
        "pauses",
    ));
    report.push(Figure::new(
        "baseline_iterations",
        "pauses measured (fast path off)",
        slow.samples.len() as f64,
        "pauses",
    ));
    report.note(format!(
        "Baseline: fast path off with the default 5 s status TTL, {} iterations (each one waits \
         for the senders' cached status to expire or their claimed batches to drain). Without a \
         control listener no replica records an apply time, so every baseline column is the \
         baseline's effective latency, i.e. its last request after the pause.",
        slow.samples.len()
    ));
    report.note(format!(
        "Campaigns used: {} (fast path), {} (baseline); iterations discarded because a campaign \
         ran out: {} and {}. Apply times before the client saw the response count as 0 ms (the api \
         publishes the control message before it answers); the from-request figures show the \
         same applies from the moment the request was sent. Ratios floor latencies at 1 ms.",
        fast.campaigns, slow.campaigns, fast.discarded, slow.discarded
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
