//! `herald campaign watch ID`: a live progress bar driven by the API's
//! `GET /v1/campaigns/{id}/progress` Server-Sent Events.
//!
//! The bar shows sent, failed and pending, the current rate and an ETA; it follows
//! pause and resume, and the command exits 0 once the campaign is stopped,
//! completed or failed. A dropped stream is reopened (the server sends the current
//! state first, so nothing is lost). `--json` prints each pushed state as one JSON
//! line instead; without a terminal, plain lines are printed at most once a second.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_api::routes::progress::Progress;
use herald_core::lifecycle::Status;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uuid::Uuid;

use super::progress_line::{bar_line, details, done, grouped};
use super::sse::SseParser;
use super::{ApiClient, CliError};

/// Reconnect attempts in a row, after a first successful connection.
const MAX_RECONNECTS: u32 = 30;
/// The server sends a keep-alive every 15 s; silence this long means a dead link.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// The rate is measured over this much recent history.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Follows a campaign until it is terminal.
pub async fn watch(client: &ApiClient, id: Uuid, json: bool) -> Result<(), CliError> {
    let mut display = Display::new(json);
    let mut connected_once = false;
    let mut failures = 0u32;
    loop {
        let mut received = false;
        let outcome = follow(client, id, &mut display, &mut received).await;
        connected_once |= received;
        if received {
            failures = 0;
        }
        let reason = match outcome {
            Ok(Some(last)) => {
                display.finish(&last);
                return Ok(());
            }
            Ok(None) => "the server closed the stream".to_owned(),
            // A 401 or 404 will not get better by retrying.
            Err(error @ (CliError::Api { .. } | CliError::Usage(_))) => {
                display.abandon();
                return Err(error);
            }
            Err(CliError::Failed(error)) if !connected_once => {
                display.abandon();
                return Err(CliError::Failed(error));
            }
            Err(CliError::Failed(error)) => format!("{error:#}"),
        };
        failures += 1;
        if failures > MAX_RECONNECTS {
            display.abandon();
            return Err(CliError::failed(format!(
                "gave up after {MAX_RECONNECTS} reconnects: {reason}"
            )));
        }
        display.note(&format!("reconnecting ({reason})"));
        let backoff = Duration::from_millis(500 * u64::from(failures.min(10)));
        tokio::time::sleep(backoff).await;
    }
}

/// Reads one connection. `Ok(Some(state))` once a terminal state arrived,
/// `Ok(None)` when the server ended the stream first.
async fn follow(
    client: &ApiClient,
    id: Uuid,
    display: &mut Display,
    received: &mut bool,
) -> Result<Option<Progress>, CliError> {
    let request = client
        .request(
            reqwest::Method::GET,
            &format!("/v1/campaigns/{id}/progress"),
        )
        .header(reqwest::header::ACCEPT, "text/event-stream");
    let response = client.connect(request).await?;
    let mut bytes = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_bytes = Instant::now();
    loop {
        tokio::select! {
            chunk = bytes.next() => {
                let chunk = match chunk {
                    None => return Ok(None),
                    Some(Err(error)) => {
                        return Err(anyhow::Error::new(error).context("the progress stream broke").into());
                    }
                    Some(Ok(chunk)) => chunk,
                };
                last_bytes = Instant::now();
                let events = parser.push(&chunk).map_err(|e| CliError::failed(e.to_string()))?;
                for event in events.into_iter().filter(|e| e.event == "progress") {
                    let progress: Progress = serde_json::from_str(&event.data).map_err(|e| {
                        CliError::failed(format!("unreadable progress event ({e}): {}", event.data))
                    })?;
                    *received = true;
                    display.update(&progress);
                    if progress.status.is_terminal() {
                        return Ok(Some(progress));
                    }
                }
            }
            _ = tick.tick() => {
                if last_bytes.elapsed() > SILENCE_LIMIT {
                    return Err(CliError::failed(format!(
                        "no data from the server for {} s", SILENCE_LIMIT.as_secs()
                    )));
                }
                display.tick();
            }
        }
    }
}

/// Messages per second over the last [`RATE_WINDOW`].
#[derive(Debug, Default)]
struct RateMeter {
    samples: VecDeque<(Instant, i64)>,
}

impl RateMeter {
    fn record(&mut self, at: Instant, done: i64) {
        self.samples.push_back((at, done));
        // Keep one sample older than the window, so the span covers all of it.
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    fn reset(&mut self) {
        self.samples.clear();
    }

    fn per_second(&self) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let span = last.0.duration_since(first.0).as_secs_f64();
        (span >= 0.5).then(|| (last.1 - first.1).max(0) as f64 / span)
    }
}

/// Where the states go: a bar on a terminal, JSON lines, or plain lines.
#[derive(Debug)]
struct Display {
    mode: Mode,
    rate: RateMeter,
    last: Option<Progress>,
    started: Instant,
    last_line: Option<Instant>,
}

#[derive(Debug)]
enum Mode {
    Bar(ProgressBar),
    Json,
    Lines,
}

impl Display {
    fn new(json: bool) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            // The line is laid out by `progress_line` for the terminal's width;
            // indicatif only draws and redraws it.
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message("connecting…");
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        Self {
            mode,
            rate: RateMeter::default(),
            last: None,
            started: Instant::now(),
            last_line: None,
        }
    }

    fn update(&mut self, progress: &Progress) {
        let now = Instant::now();
        let status_changed = self.last.as_ref().map(|p| p.status) != Some(progress.status);
        if status_changed {
            // A rate measured before a pause says nothing about after it.
            self.rate.reset();
        }
        self.rate.record(now, done(progress));
        self.last = Some(progress.clone());
        match &self.mode {
            Mode::Json => {
                if let Ok(line) = serde_json::to_string(progress) {
                    println!("{line}");
                }
            }
            Mode::Bar(bar) => bar.set_message(self.line(progress)),
            Mode::Lines => {
                let due = self
                    .last_line
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                if due || status_changed || progress.status.is_terminal() {
                    self.last_line = Some(now);
                    // The details carry the done/total count.
                    println!("{} {}", progress.status, self.summary(progress));
                }
            }
        }
    }

    /// Once a second without news: the rate decays while nothing moves.
    fn tick(&mut self) {
        let Some(progress) = self.last.clone() else {
            return;
        };
        if progress.status == Status::Sending {
            self.rate.record(Instant::now(), done(&progress));
        }
        if let Mode::Bar(bar) = &self.mode {
            bar.set_message(self.line(&progress));
        }
    }

    fn summary(&self, progress: &Progress) -> String {
        details(progress, self.rate.per_second()).join(" · ")
    }

    /// The bar line for the terminal's current width (it may have been resized).
    fn line(&self, progress: &Progress) -> String {
        let (_, width) = console::Term::stderr().size();
        bar_line(
            progress,
            &details(progress, self.rate.per_second()),
            width.into(),
        )
    }

    fn note(&self, text: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.set_message(text.to_owned()),
            Mode::Json | Mode::Lines => eprintln!("herald: {text}"),
        }
    }

    fn abandon(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.abandon();
        }
    }

    fn finish(&self, last: &Progress) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish();
        }
        if matches!(self.mode, Mode::Json) {
            return;
        }
        let c = &last.counters;
        let elapsed = Duration::from_secs(self.started.elapsed().as_secs());
        println!(
            "{}: {} sent, {} failed, {} skipped of {} (watched for {})",
            last.status,
            grouped(c.sent),
            grouped(c.failed),
            grouped(c.skipped),
            grouped(c.total),
            humantime::format_duration(elapsed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_recent_history() {
        let mut meter = RateMeter::default();
        let start = Instant::now();
        assert_eq!(meter.per_second(), None);
        meter.record(start, 0);
        meter.record(start + Duration::from_secs(2), 200);
        let rate = meter.per_second().expect("two samples");
        assert!((rate - 100.0).abs() < 0.01, "{rate}");
        // Old history falls out of the window.
        meter.record(start + Duration::from_secs(30), 200);
        meter.record(start + Duration::from_secs(31), 300);
        let rate = meter.per_second().expect("samples");
        assert!(rate > 0.0 && rate < 100.0, "{rate}");
    }
}
