//! Rate accuracy: a channel with `rate_limit.per_second` = `--rate-limit` (50),
//! two campaigns on it, with 1 sender and with the largest `--senders` count.
//! Measured at the sink, from every request's start time:
//!
//! - **worst window**: the most requests that started within any 1 s (a sliding
//!   window over every start), divided by the limit. Target <= 1.0.
//! - **achieved rate**: requests per second from the first start to the last, a
//!   span in which both campaigns always had work waiting, divided by the limit.
//!   Target >= 0.95 (the budget spaces start times by (1 s + 30 ms) / limit, so
//!   about 0.97 is the most it gives).
//!
//! Baseline, same invocation: the same setup with the channel unthrottled, whose
//! rate is what the machine and the sink allow; against it the reader sees that
//! the limiter, not the machine, sets the throttled rate.
//!
//! Each campaign has `--rate-limit x --rate-seconds / 2` recipients (500 at 50/s
//! and 20 s), so a throttled run takes about `--rate-seconds`; `--recipients` is
//! not used here. The sink answers after `--sink-delay-ms` (20 ms
//! by default), as a real provider would.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::BenchArgs;
use crate::env::with_env;
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::sink::Sink;
use crate::stack::with_stack;

/// Campaigns on the channel.
const CAMPAIGNS: u64 = 2;

/// What one run saw at the sink.
#[derive(Debug, Clone, Copy)]
struct Run {
    requests: usize,
    /// Most starts within any 1 s.
    worst_window: usize,
    /// Requests per second from the first start to the last.
    achieved: f64,
    duplicates: u64,
}

/// The most entries of sorted `starts` within any window of `width`.
pub fn worst_window(starts: &[Instant], width: Duration) -> usize {
    let mut worst = 0;
    let mut first = 0;
    for (last, at) in starts.iter().enumerate() {
        while at.duration_since(starts[first]) >= width {
            first += 1;
        }
        worst = worst.max(last - first + 1);
    }
    worst
}

/// Requests per second from the first start to the last (the intervals between
/// them: n starts span n - 1 intervals).
pub fn achieved_rate(starts: &[Instant]) -> f64 {
    match (starts.first(), starts.last()) {
        (Some(first), Some(last)) if starts.len() > 1 => {
            (starts.len() - 1) as f64 / last.duration_since(*first).as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    }
}

async fn measure(
    args: &BenchArgs,
    senders: usize,
    per_second: Option<u32>,
    recipients: u64,
) -> anyhow::Result<Run> {
    let delay = Duration::from_millis(args.sink_delay_ms.unwrap_or(20));
    with_env(args, |env| async move {
        let sink = Sink::start_logged(delay).await?;
        let result = with_stack(&env, args, args.packers, senders, true, async |stack| {
            let client = &stack.client;
            let channel = client
                .create_channel("rate", sink.webhook_channel(), per_second)
                .await?;
            let mut ids = Vec::new();
            for _ in 0..CAMPAIGNS {
                let id = client.create_campaign_on(channel).await?;
                client.import_csv(id, recipients).await?;
                ids.push(id);
            }
            for id in &ids {
                client.must(*id, "start").await?;
            }
            let expected = CAMPAIGNS * recipients;
            let seconds = per_second.map_or(60, |r| 60 + 2 * expected / u64::from(r));
            for id in &ids {
                client
                    .wait_for_status(
                        *id,
                        "completed",
                        Duration::from_millis(100),
                        Duration::from_secs(seconds),
                    )
                    .await?;
            }
            sink.wait_quiet(Duration::from_millis(200), Duration::from_secs(5))
                .await;
            anyhow::ensure!(
                sink.distinct() == expected,
                "the sink saw {} distinct recipients of {expected}",
                sink.distinct()
            );
            anyhow::Ok(())
        })
        .await;
        sink.stop();
        result?;
        let starts = sink.start_times();
        Ok(Run {
            requests: starts.len(),
            worst_window: worst_window(&starts, Duration::from_secs(1)),
            achieved: achieved_rate(&starts),
            duplicates: sink.duplicates(),
        })
    })
    .await
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let limit = args.rate_limit.max(1);
    let recipients = (u64::from(limit) * args.rate_seconds / CAMPAIGNS).max(1);
    let mut counts = vec![1, args.max_senders()];
    counts.dedup();
    let mut report = ScenarioReport::new(
        "rate",
        json!({
            "per_second": limit, "campaigns": CAMPAIGNS, "recipients_per_campaign": recipients,
            "senders": counts, "packers": args.packers,
            "sink_delay_ms": args.sink_delay_ms.unwrap_or(20),
        }),
    );
    let limit_f = f64::from(limit);
    for &n in &counts {
        eprintln!("   {n} sender(s), limit {limit}/s");
        let throttled = measure(args, n, Some(limit), recipients).await?;
        eprintln!("   {n} sender(s), unthrottled");
        let open = measure(args, n, None, recipients).await?;
        let worst = throttled.worst_window as f64 / limit_f;
        report.push(
            Figure::new(
                format!("worst_window_x_limit_senders_{n}"),
                format!("most starts in any 1 s / limit, {n} sender(s)"),
                worst,
                "x limit",
            )
            .beside(open.worst_window as f64 / limit_f, "unthrottled")
            .target("<= 1.0", worst <= 1.0),
        );
        report.push(
            Figure::new(
                format!("worst_window_requests_senders_{n}"),
                format!("most starts in any 1 s, {n} sender(s)"),
                throttled.worst_window as f64,
                "requests",
            )
            .beside(open.worst_window as f64, "unthrottled"),
        );
        let achieved = throttled.achieved / limit_f;
        report.push(
            Figure::new(
                format!("achieved_x_limit_senders_{n}"),
                format!("achieved rate / limit, {n} sender(s)"),
                achieved,
                "x limit",
            )
            .beside(open.achieved / limit_f, "unthrottled")
            .target(">= 0.95", achieved >= 0.95),
        );
        report.push(
            Figure::new(
                format!("achieved_req_per_s_senders_{n}"),
                format!("achieved rate, {n} sender(s)"),
                throttled.achieved,
                "req/s",
            )
            .against(
                open.achieved,
                "unthrottled, same setup",
                RatioKind::PercentOfBaseline,
            ),
        );
        let duplicates = (throttled.duplicates + open.duplicates) as f64;
        report.push(
            Figure::new(
                format!("duplicates_senders_{n}"),
                format!("duplicate sends, {n} sender(s), both runs"),
                duplicates,
                "requests",
            )
            .target("0", duplicates == 0.0),
        );
        report.note(format!(
            "{n} sender(s): {} requests throttled, {} unthrottled.",
            throttled.requests, open.requests
        ));
    }
    report.note(format!(
        "Channel rate_limit.per_second = {limit}; {CAMPAIGNS} campaigns of {recipients} on it, \
         started together. Start times are taken at the sink as each request arrives; the \
         achieved rate spans the first to the last start, while both campaigns had work waiting."
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_and_rate() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let starts = [at(0), at(100), at(999), at(1000), at(1500), at(1600)];
        // [0, 1000) holds 3; [999, 1999) holds 4.
        assert_eq!(worst_window(&starts, Duration::from_secs(1)), 4);
        assert!((achieved_rate(&starts) - 5.0 / 1.6).abs() < 1e-9);
        assert_eq!(achieved_rate(&starts[..1]), 0.0);
    }
}
