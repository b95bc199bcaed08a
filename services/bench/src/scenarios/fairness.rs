//! Fairness between campaigns, with windowed packing (`HERALD_PACK_WINDOW`).
//!
//! **Small campaign behind big ones.** Two big campaigns send (`--recipients`,
//! 200,000 each by default): one on a channel throttled to `--rate-limit` (50/s),
//! one on an unthrottled channel. Then a 3-recipient campaign on a third channel is
//! started `--tries` times (20), one after another, each after the previous one
//! completed. Per try, from the client's start response: its first request at its
//! channel's sink, and its `completed` status (polled every 10 ms). Reported as p50,
//! p99 and max. A big campaign that runs low between tries is replaced by a fresh
//! one (untimed), so both are always sending when a try starts. Targets: first
//! send p99 < 1 s, completion p99 < 2 s.
//!
//! **Shares.** Two unthrottled campaigns on two channels are started together
//! (back to back); their rates at their sinks over the same interval while both
//! send (`--share-seconds`, or until one finishes) must be within 20% of each
//! other: slower / faster >= 80%.
//!
//! Baseline, same invocation: the same with windowing off (pack window
//! 1,000,000, which never binds: the whole campaign is packed up front, as before
//! windowed packing). A baseline try that has not completed within
//! [`TRY_TIMEOUT`] is recorded at the timeout and counted.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::api_client::ApiClient;
use crate::args::BenchArgs;
use crate::env::with_env;
use crate::report::{Figure, RatioKind, ScenarioReport};
use crate::sink::Sink;
use crate::stack::{packer_config, sender_config, with_stack_configs};
use crate::stats::summary;

pub const DEFAULT_RECIPIENTS: u64 = 200_000;
/// Recipients of the small campaign.
const SMALL: u64 = 3;
/// A pack window that never binds: windowing off.
pub const WINDOW_OFF: u32 = 1_000_000;
/// Longest wait for one try; a slower try is recorded at this value.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(120);

/// What one mode measured.
#[derive(Debug, Default)]
struct Outcome {
    first_send_ms: Vec<f64>,
    complete_ms: Vec<f64>,
    timed_out: usize,
    /// Big campaigns started in all (2 at first, more when one ran low).
    big_campaigns: usize,
    /// Rates of the two campaigns started together, in msg/s, and the interval.
    share_rates: (f64, f64),
    share_seconds: f64,
}

impl Outcome {
    fn share_pct(&self) -> f64 {
        let (a, b) = self.share_rates;
        if a.max(b) > 0.0 {
            100.0 * a.min(b) / a.max(b)
        } else {
            0.0
        }
    }
}

/// Creates a campaign on `channel`, imports `recipients` and starts it.
async fn launch(client: &ApiClient, channel: Uuid, recipients: u64) -> anyhow::Result<Uuid> {
    let id = client.create_campaign_on(channel).await?;
    client.import_csv(id, recipients).await?;
    client.must(id, "start").await?;
    Ok(id)
}

/// A big campaign kept sending on one channel.
struct Big {
    channel: Uuid,
    sink: Sink,
    campaign: Uuid,
}

impl Big {
    async fn start(
        client: &ApiClient,
        sink: Sink,
        name: &str,
        per_second: Option<u32>,
        recipients: u64,
    ) -> anyhow::Result<Self> {
        let channel = client
            .create_channel(name, sink.webhook_channel(), per_second)
            .await?;
        let campaign = launch(client, channel, recipients).await?;
        Ok(Self {
            channel,
            sink,
            campaign,
        })
    }

    /// Replaces the campaign by a fresh one if it has less than a tenth left (or
    /// is no longer sending), and waits for its sends. Returns whether it did.
    async fn keep_sending(&mut self, client: &ApiClient, recipients: u64) -> anyhow::Result<bool> {
        let body = client.campaign(self.campaign).await?;
        let pending = body["counters"]["pending"].as_u64().unwrap_or(0);
        if body["status"] == "sending" && pending >= recipients / 10 {
            return Ok(false);
        }
        if body["status"] == "sending" {
            // It may complete in between: a 409 then is as good as a stop.
            client.transition(self.campaign, "stop").await?;
        }
        let before = self.sink.total();
        self.campaign = launch(client, self.channel, recipients).await?;
        self.sink
            .wait_for_total(before + 1, Duration::from_secs(60))
            .await;
        Ok(true)
    }
}

/// Starts the small campaign once and records its times (the timeout if it
/// never got there).
async fn try_small(
    client: &ApiClient,
    sink: &Sink,
    channel: Uuid,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let id = client.create_campaign_on(channel).await?;
    client.import_csv(id, SMALL).await?;
    let before = sink.total() as usize;
    client.must(id, "start").await?;
    let answered = Instant::now();
    let deadline = answered + TRY_TIMEOUT;
    let mut first = None;
    loop {
        if first.is_none() && sink.total() as usize > before {
            first = sink.start_times().get(before).copied();
        }
        if first.is_some() && client.campaign(id).await?["status"] == "completed" {
            break;
        }
        if Instant::now() >= deadline {
            out.timed_out += 1;
            client.transition(id, "stop").await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(if first.is_none() { 1 } else { 10 })).await;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let first_ms = first.map_or(ms(TRY_TIMEOUT), |at| {
        ms(at.saturating_duration_since(answered))
    });
    out.first_send_ms.push(first_ms);
    out.complete_ms
        .push(ms(answered.elapsed().min(TRY_TIMEOUT)).max(first_ms));
    Ok(())
}

/// Two unthrottled campaigns started together: their rates over the same
/// interval while both send.
async fn shares(
    client: &ApiClient,
    recipients: u64,
    limit: Duration,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let sinks = [
        Sink::start(Duration::ZERO).await?,
        Sink::start(Duration::ZERO).await?,
    ];
    let mut ids = Vec::new();
    for (i, sink) in sinks.iter().enumerate() {
        let channel = client
            .create_channel(&format!("share-{i}"), sink.webhook_channel(), None)
            .await?;
        let id = client.create_campaign_on(channel).await?;
        client.import_csv(id, recipients).await?;
        ids.push(id);
    }
    for id in &ids {
        client.must(*id, "start").await?;
    }
    for sink in &sinks {
        sink.wait_for_total(1, Duration::from_secs(60)).await;
    }
    let totals = || (sinks[0].total(), sinks[1].total());
    let (start, at_start) = (Instant::now(), totals());
    let mut last = (start, at_start);
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = totals();
        if now.0 >= recipients || now.1 >= recipients {
            break; // one has finished: the previous sample ends the interval
        }
        last = (Instant::now(), now);
    }
    let seconds = last.0.duration_since(start).as_secs_f64();
    out.share_seconds = seconds;
    out.share_rates = (
        crate::stats::rate(last.1.0 - at_start.0, seconds),
        crate::stats::rate(last.1.1 - at_start.1, seconds),
    );
    for id in ids {
        client.transition(id, "stop").await?;
    }
    for sink in &sinks {
        sink.stop();
    }
    Ok(())
}

async fn measure(args: &BenchArgs, pack_window: u32) -> anyhow::Result<Outcome> {
    let recipients = args.recipients_or(DEFAULT_RECIPIENTS);
    let delay = Duration::from_millis(args.sink_delay_ms.unwrap_or(0));
    let mut packer = packer_config(args, true);
    packer.pack_window = pack_window;
    let sender = sender_config(args, true);
    let (packers, senders) = (args.packers, args.max_senders());
    with_env(args, |env| async move {
        with_stack_configs(&env, packers, senders, packer, sender, async |stack| {
            let client = &stack.client;
            let mut out = Outcome::default();
            eprintln!("   importing and starting two campaigns of {recipients}");
            let limit = Some(args.rate_limit);
            let throttled = Sink::start(delay).await?;
            let mut bigs = [
                Big::start(client, throttled, "throttled", limit, recipients).await?,
                Big::start(client, Sink::start(delay).await?, "open", None, recipients).await?,
            ];
            out.big_campaigns = 2;
            for big in &bigs {
                big.sink.wait_for_total(1, Duration::from_secs(60)).await;
            }
            let small_sink = Sink::start_logged(delay).await?;
            let small = client
                .create_channel("small", small_sink.webhook_channel(), None)
                .await?;
            for i in 0..args.tries.max(1) {
                for big in &mut bigs {
                    out.big_campaigns += usize::from(big.keep_sending(client, recipients).await?);
                }
                try_small(client, &small_sink, small, &mut out).await?;
                if (i + 1) % 5 == 0 {
                    eprintln!("   {}/{} small campaigns", i + 1, args.tries);
                }
            }
            for big in &bigs {
                client.transition(big.campaign, "stop").await?;
                big.sink.stop();
            }
            small_sink.stop();
            eprintln!("   two campaigns of {recipients} started together");
            let limit = Duration::from_secs(args.share_seconds.max(1));
            shares(client, recipients, limit, &mut out).await?;
            anyhow::Ok(out)
        })
        .await
    })
    .await
}

/// p50, p99 and max of one measure, windowed against windowing off.
fn quantiles(
    report: &mut ScenarioReport,
    (key, label): (&str, &str),
    windowed: &[f64],
    off: &[f64],
    target_ms: f64,
) {
    let (w, o) = (summary(windowed), summary(off));
    for (q, value, baseline) in [("p50", w.0, o.0), ("p99", w.1, o.1), ("max", w.2, o.2)] {
        let mut f = Figure::new(format!("{key}_{q}"), format!("{label}, {q}"), value, "ms")
            .against(baseline, "windowing off", RatioKind::TimesFaster);
        if q == "p99" {
            f = f.target(format!("< {target_ms} ms"), value < target_ms);
        }
        report.push(f);
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let window = args
        .pack_window
        .unwrap_or(packer_config(args, true).pack_window);
    let mut report = ScenarioReport::new(
        "fairness",
        json!({
            "recipients": args.recipients_or(DEFAULT_RECIPIENTS), "small_recipients": SMALL,
            "tries": args.tries, "senders": args.max_senders(), "packers": args.packers,
            "throttled_per_second": args.rate_limit, "pack_window": window,
            "baseline_pack_window": WINDOW_OFF, "share_seconds": args.share_seconds,
            "sink_delay_ms": args.sink_delay_ms.unwrap_or(0),
        }),
    );
    eprintln!("   pack window {window}");
    let on = measure(args, window).await?;
    eprintln!("   windowing off (pack window {WINDOW_OFF})");
    let off = measure(args, WINDOW_OFF).await?;
    quantiles(
        &mut report,
        (
            "first_send_ms",
            "small campaign: start response to first send",
        ),
        &on.first_send_ms,
        &off.first_send_ms,
        1000.0,
    );
    quantiles(
        &mut report,
        ("complete_ms", "small campaign: start response to completed"),
        &on.complete_ms,
        &off.complete_ms,
        2000.0,
    );
    let share = on.share_pct();
    report.push(
        Figure::new(
            "share_ratio_pct",
            "two campaigns started together: slower rate / faster rate",
            share,
            "%",
        )
        .beside(off.share_pct(), "windowing off")
        .target(">= 80%", share >= 80.0),
    );
    for (i, key) in ["share_rate_first", "share_rate_second"].iter().enumerate() {
        let pick = |o: &Outcome| {
            if i == 0 {
                o.share_rates.0
            } else {
                o.share_rates.1
            }
        };
        report.push(
            Figure::new(
                *key,
                format!("two campaigns started together: campaign {}", i + 1),
                pick(&on),
                "msg/s",
            )
            .beside(pick(&off), "windowing off"),
        );
    }
    report.push(
        Figure::new(
            "timed_out_tries",
            "small campaigns not completed within 120 s",
            on.timed_out as f64,
            "tries",
        )
        .beside(off.timed_out as f64, "windowing off")
        .target("0", on.timed_out == 0),
    );
    report.note(format!(
        "Small campaign: {SMALL} recipients on its own channel, started {} times per mode, each \
         after the previous completed, while a {}/s-throttled and an unthrottled campaign of {} \
         send on two other channels. Big campaigns used: {} (windowed), {} (windowing off); one \
         is replaced when it has less than a tenth left. Timed-out tries count at 120 s.",
        args.tries,
        args.rate_limit,
        args.recipients_or(DEFAULT_RECIPIENTS),
        on.big_campaigns,
        off.big_campaigns
    ));
    report.note(format!(
        "Shares: measured over {:.1} s (windowed) and {:.1} s (windowing off), from when both \
         campaigns had sent until --share-seconds passed or one finished.",
        on.share_seconds, off.share_seconds
    ));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
