//! The pause scenario's figures: every measure as p50, p99 and max against the
//! same with the fast path off.

use std::time::{Duration, Instant};

use serde_json::json;

use super::response::measure_response;
use super::{DEFAULT_RECIPIENTS, measure, status_ttl_ms};
use crate::args::BenchArgs;
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::stats::summary;

/// Pushes the p50, p99 and max of `fast` against the same of `slow`.
fn quantiles(
    report: &mut ScenarioReport,
    (key, label, unit): (&str, &str, &str),
    fast: &[f64],
    slow: &[f64],
    kind: RatioKind,
    target: impl Fn(&str, &Figure) -> Option<(String, bool)>,
) {
    let (f, s) = (summary(fast), summary(slow));
    for (q, value, baseline) in [("p50", f.0, s.0), ("p99", f.1, s.1), ("max", f.2, s.2)] {
        let mut figure = Figure::new(format!("{key}_{q}"), format!("{label}, {q}"), value, unit)
            .against(baseline, "fast path off", kind);
        if let Some((text, met)) = target(q, &figure) {
            figure = figure.target(text, met);
        }
        report.push(figure);
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let senders = args.max_senders();
    let budget = (senders * args.sender_concurrency) as f64;
    let ttl_ms = status_ttl_ms(args);
    let mut report = ScenarioReport::new(
        "pause",
        json!({
            "recipients": args.recipients_or(DEFAULT_RECIPIENTS), "senders": senders,
            "packers": args.packers, "iterations": args.iterations,
            "baseline_iterations": args.baseline_iterations,
            "sender_concurrency": args.sender_concurrency, "sink_delay_ms": args.pause_sink_delay_ms,
            "status_ttl_ms": ttl_ms, "pause_phase": "uniform in [0, status_ttl_ms)",
        }),
    );
    eprintln!("   fast path on, {} iterations", args.iterations);
    let fast = measure(args, true, args.iterations.max(1)).await?;
    eprintln!(
        "   fast path off, {} iterations (each waits out the status TTL)",
        args.baseline_iterations
    );
    let slow = measure(args, false, args.baseline_iterations.max(1)).await?;
    let none = |_: &str, _: &Figure| None;
    let (times, fewer) = (RatioKind::TimesFaster, RatioKind::TimesFewer);
    quantiles(
        &mut report,
        ("apply_ms", "pause applied by each sender", "ms"),
        &fast.apply(),
        &slow.effective(),
        times,
        |q, f| (q == "p99").then(|| ("< 50 ms".to_owned(), f.value < 50.0)),
    );
    quantiles(
        &mut report,
        (
            "last_request_ms",
            "latest provider request start after the pause response, over all pauses",
            "ms",
        ),
        &fast.last_request(),
        &slow.last_request(),
        times,
        none,
    );
    quantiles(
        &mut report,
        (
            "effective_ms",
            "pause in effect everywhere (apply and last request)",
            "ms",
        ),
        &fast.effective(),
        &slow.effective(),
        times,
        |q, f| {
            let met = f.ratio.unwrap_or(0.0) >= 50.0;
            (q == "p99").then(|| (">= 50x faster".to_owned(), met))
        },
    );
    quantiles(
        &mut report,
        (
            "overshoot",
            "requests started after the pause response",
            "requests",
        ),
        &fast.overshoot(),
        &slow.overshoot(),
        fewer,
        |q, f| {
            let text = format!("<= {budget} (senders x concurrency)");
            (q == "max").then_some((text, f.value <= budget))
        },
    );
    quantiles(
        &mut report,
        (
            "apply_from_request_ms",
            "pause applied by each sender, from the request",
            "ms",
        ),
        &fast.apply_from_request(),
        &slow.effective(),
        times,
        none,
    );
    acked_figures(&mut report, &fast, args.packers + senders);
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
        "Status TTL {ttl_ms} ms in both modes (--status-ttl-ms; production default 5000 ms, \
         shortened so the run stays affordable). Each pause came after a uniformly random sleep \
         in [0, {ttl_ms} ms) following the previous resume, so pauses land at random points of \
         the senders' status re-read cycle."
    ));
    report.note(format!(
        "Baseline: fast path off, same TTL, {} iterations (each one waits for the senders' \
         cached status to expire or their claimed batches to drain). Without a control listener \
         no replica records an apply time, so the baseline of the apply columns is the \
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
    response_figures(args, &mut report, Duration::from_millis(ttl_ms)).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The acknowledged pause's round trip against the plain pause of the same run.
fn acked_figures(report: &mut ScenarioReport, fast: &super::Series, replicas: usize) {
    let acked: Vec<f64> = fast.acked.iter().map(|a| a.round_trip_ms).collect();
    let (a, p) = (summary(&acked), summary(&fast.round_trip()));
    for (q, value, baseline) in [("p50", a.0, p.0), ("p99", a.1, p.1), ("max", a.2, p.2)] {
        report.push(
            Figure::new(
                format!("acked_round_trip_ms_{q}"),
                format!(
                    "acknowledged pause (wait=applied), request to response with every ack, {q}"
                ),
                value,
                "ms",
            )
            .against(baseline, "plain pause, same run", RatioKind::TimesBaseline),
        );
    }
    let incomplete = fast
        .acked
        .iter()
        .filter(|a| a.missing > 0 || a.acked < replicas)
        .count();
    report.push(
        Figure::new(
            "acked_incomplete",
            format!("acknowledged pauses without all {replicas} replicas acked"),
            incomplete as f64,
            "pauses",
        )
        .target("0", incomplete == 0),
    );
    report.push(Figure::new(
        "acked_iterations",
        "acknowledged pauses measured",
        fast.acked.len() as f64,
        "pauses",
    ));
}

/// The pause answer under load, with every service a process: only when the
/// `herald` binary (`--herald-bin`) exists.
async fn response_figures(
    args: &BenchArgs,
    report: &mut ScenarioReport,
    ttl: Duration,
) -> anyhow::Result<()> {
    if !args.herald_bin.exists() {
        report.note(format!(
            "Pause answer under load (processes): skipped, {} does not exist (build it with \
             `cargo build --release -p herald`).",
            args.herald_bin.display()
        ));
        return Ok(());
    }
    let iterations = args.iterations.max(1);
    eprintln!("   pause answer under load, processes, {iterations} iterations");
    let times = measure_response(args, iterations, ttl).await?;
    let (loaded, idle) = (summary(&times.loaded), summary(&times.idle));
    for (q, value, baseline) in [
        ("p50", loaded.0, idle.0),
        ("p99", loaded.1, idle.1),
        ("max", loaded.2, idle.2),
    ] {
        let mut figure = Figure::new(
            format!("response_ms_{q}"),
            format!("pause request to response under load, processes, {q}"),
            value,
            "ms",
        )
        .against(baseline, "idle (1 msg/s)", RatioKind::TimesBaseline);
        if q == "p99" {
            figure = figure.target("<= 50 ms", value <= 50.0);
        }
        report.push(figure);
    }
    for loaded in &times.loaded_phases {
        let what = match loaded.phase.as_str() {
            "lock" => "connection and campaign row lock",
            "commit" => "whole commit, lock included",
            "publish" => "publish after the commit",
            other => other,
        };
        let idle = times.idle_phases.iter().find(|p| p.phase == loaded.phase);
        report.push(
            Figure::new(
                format!("response_phase_{}_ms", loaded.phase),
                format!("pause under load in the api, mean: {what}"),
                loaded.mean_ms,
                "ms",
            )
            .against(
                idle.map_or(0.0, |p| p.mean_ms),
                "idle (1 msg/s)",
                RatioKind::TimesBaseline,
            ),
        );
        report.push(
            Figure::new(
                format!("response_phase_{}_over_50ms", loaded.phase),
                format!("pause under load in the api, over 50 ms in: {what}"),
                loaded.over_50ms,
                "pauses",
            )
            .beside(idle.map_or(0.0, |p| p.over_50ms), "idle (1 msg/s)"),
        );
    }
    for (label, answers) in [("loaded", &times.loaded), ("idle", &times.idle)] {
        let mut sorted = answers.to_vec();
        sorted.sort_by(f64::total_cmp);
        eprintln!("   {label} pause answers, ms, sorted: {sorted:.1?}");
    }
    report.note(format!(
        "Pause answer under load: api, {} packers and {} senders as `herald` processes ({}), \
         a campaign of {} recipients sending; {iterations} pauses, each after a random sleep of \
         up to the status TTL, resumed once quiet. Baseline: the same pauses of a campaign \
         held to 1 msg/s on the same processes. The phase means come from the api's \
         herald_transition_seconds histogram.",
        args.packers,
        args.max_senders(),
        args.herald_bin.display(),
        args.recipients_or(DEFAULT_RECIPIENTS),
    ));
    Ok(())
}
