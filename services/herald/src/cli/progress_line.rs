//! The one line `herald campaign watch` draws on a terminal, laid out for the
//! terminal's width: the status and percentage always, then the details in order
//! of importance (rate and ETA, or why nothing moves; failed, pending, done/total,
//! sent, skipped) as far as they fit, then a bar in whatever room is left. At 80
//! columns the rate and the ETA are always visible; the bar is the first thing to
//! shrink, then the least important details go.

use std::time::Duration;

use herald_api::routes::progress::Progress;
use herald_core::lifecycle::Status;

/// Between two details.
const SEPARATOR: &str = " · ";
/// A bar narrower than this says nothing; it is left out instead.
const MIN_BAR: usize = 10;
const MAX_BAR: usize = 40;
/// Eighths of a cell, for a smooth bar edge.
const PARTIAL: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];

/// `12,345`.
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Recipients that reached a final state.
pub fn done(progress: &Progress) -> i64 {
    let c = &progress.counters;
    c.sent + c.failed + c.skipped
}

/// The details of a state, most important first. `rate` is messages per second
/// over recent history, `None` while it is still being measured.
pub fn details(progress: &Progress, rate: Option<f64>) -> Vec<String> {
    let c = &progress.counters;
    let open = c.pending + c.sending;
    let mut parts = Vec::new();
    // A campaign held to its budget still moves: its rate and ETA say more than
    // the wait. A closed send window or a spent daily cap means nothing moves.
    let stalled = progress
        .waiting
        .as_ref()
        .filter(|waiting| waiting.reason != "rate_limit");
    match (progress.status, stalled) {
        (Status::Sending, Some(waiting)) => {
            let until = waiting
                .until
                .map(|u| format!(" until {}", u.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default();
            parts.push(format!("waiting: {}{until}", waiting.reason));
        }
        (Status::Sending, None) => {
            match rate {
                Some(rate) if rate >= 0.05 => {
                    parts.push(format!("{}/s", grouped(rate.round() as i64)));
                    let eta = Duration::from_secs((open.max(0) as f64 / rate).ceil() as u64);
                    parts.push(format!("ETA {}", humantime::format_duration(eta)));
                }
                _ => parts.push("measuring rate…".into()),
            }
            if progress.waiting.is_some() {
                parts.push("rate-limited".into());
            }
        }
        (Status::Paused, _) => match &progress.paused_reason {
            // An auto-pause says why (`failure_rate`).
            Some(reason) => parts.push(format!(
                "paused itself ({reason}): `herald campaign resume` continues"
            )),
            None => parts.push("paused: `herald campaign resume` continues".into()),
        },
        _ => {}
    }
    parts.push(format!("failed {}", grouped(c.failed)));
    parts.push(format!("pending {}", grouped(open)));
    parts.push(format!("{}/{}", grouped(done(progress)), grouped(c.total)));
    parts.push(format!("sent {}", grouped(c.sent)));
    if c.skipped > 0 {
        parts.push(format!("skipped {}", grouped(c.skipped)));
    }
    // Only once receipts come in: a provider that sends none shows nothing.
    let funnel = &progress.funnel;
    if funnel.delivered + funnel.read + funnel.bounced > 0 {
        parts.push(format!("delivered {}", grouped(funnel.delivered)));
        parts.push(format!("read {}", grouped(funnel.read)));
        if funnel.bounced > 0 {
            parts.push(format!("bounced {}", grouped(funnel.bounced)));
        }
    }
    parts
}

fn columns(text: &str) -> usize {
    console::measure_text_width(text)
}

/// `[█████▍    ]`, `cells` wide inside the brackets.
fn bar(fraction: f64, cells: usize) -> String {
    let eighths = (fraction.clamp(0.0, 1.0) * (cells * 8) as f64).round() as usize;
    let mut out = String::with_capacity(cells * 3 + 2);
    out.push('[');
    out.extend(std::iter::repeat_n('█', eighths / 8));
    if eighths / 8 < cells {
        out.push(PARTIAL[eighths % 8]);
        out.extend(std::iter::repeat_n(' ', cells - eighths / 8 - 1));
    }
    out.push(']');
    out
}

/// The line for a terminal `width` columns wide; never wider than `width - 1`
/// (a full-width line makes some terminals wrap).
pub fn bar_line(progress: &Progress, details: &[String], width: usize) -> String {
    let room = width.saturating_sub(1);
    let total = progress.counters.total.max(0);
    let fraction = if total > 0 {
        done(progress) as f64 / total as f64
    } else {
        0.0
    };
    let head = format!(
        "{:>9} {:>3}%",
        progress.status.as_str(),
        (fraction * 100.0).floor()
    );
    let mut used = columns(&head);
    let mut shown = Vec::new();
    for detail in details {
        let need = columns(SEPARATOR) + columns(detail);
        if used + need <= room {
            used += need;
            shown.push(detail.as_str());
        }
    }
    let mut line = head;
    // " [" and "]" around the cells.
    let cells = room.saturating_sub(used + 3).min(MAX_BAR);
    if cells >= MIN_BAR {
        line.push(' ');
        line.push_str(&bar(fraction, cells));
    }
    for detail in shown {
        line.push_str(SEPARATOR);
        line.push_str(detail);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::campaigns::{Counters, Funnel};

    fn sending(total: i64, sent: i64) -> Progress {
        Progress {
            status: Status::Sending,
            version: 3,
            counters: Counters {
                total,
                sent,
                failed: 1_234,
                pending: total - sent - 1_234,
                ..Counters::default()
            },
            funnel: Funnel::default(),
            waiting: None,
            paused_reason: None,
        }
    }

    #[test]
    fn an_auto_pause_says_why_it_paused() {
        let mut progress = sending(1_000, 900);
        progress.status = Status::Paused;
        progress.paused_reason = Some("failure_rate".into());
        let line = bar_line(&progress, &details(&progress, None), 300);
        assert!(line.contains("paused itself (failure_rate)"), "{line}");
    }

    #[test]
    fn receipts_show_as_delivered_and_read_once_they_arrive() {
        let mut progress = sending(1_000, 900);
        let line = bar_line(&progress, &details(&progress, Some(10.0)), 300);
        assert!(!line.contains("delivered"), "{line}");
        progress.funnel = Funnel {
            sent: 900,
            delivered: 850,
            read: 400,
            bounced: 3,
        };
        let line = bar_line(&progress, &details(&progress, Some(10.0)), 300);
        for wanted in ["delivered 850", "read 400", "bounced 3"] {
            assert!(line.contains(wanted), "{wanted:?} missing from {line:?}");
        }
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(20_000), "20,000");
        assert_eq!(grouped(-1_234_567), "-1,234,567");
    }

    #[test]
    fn at_80_columns_the_line_fits_and_keeps_rate_eta_failed_and_pending() {
        let progress = sending(1_000_000, 412_345);
        let line = bar_line(&progress, &details(&progress, Some(12_345.6)), 80);
        assert!(columns(&line) < 80, "{} columns: {line}", columns(&line));
        for wanted in [
            "sending",
            "41%",
            "12,346/s",
            "ETA 48s",
            "failed 1,234",
            "pending 586,421",
        ] {
            assert!(line.contains(wanted), "{wanted:?} missing from {line:?}");
        }
    }

    #[test]
    fn a_wide_terminal_gets_a_bar_and_every_detail() {
        let progress = sending(1_000_000, 500_000);
        let line = bar_line(&progress, &details(&progress, Some(100.0)), 200);
        assert!(line.contains('['), "{line}");
        assert!(line.contains("sent 500,000"), "{line}");
        assert!(line.contains("501,234/1,000,000"), "{line}");
        assert!(columns(&line) < 200);
    }

    #[test]
    fn a_narrow_terminal_drops_the_bar_before_the_rate() {
        let progress = sending(1_000_000, 500_000);
        let line = bar_line(&progress, &details(&progress, Some(100.0)), 40);
        assert!(columns(&line) < 40, "{line}");
        assert!(!line.contains('['), "{line}");
        assert!(line.contains("100/s"), "{line}");
    }

    #[test]
    fn a_rate_limited_campaign_shows_its_rate_and_a_closed_window_shows_the_wait() {
        use herald_api::views::WaitingView;
        let mut progress = sending(2_334, 100);
        progress.waiting = Some(WaitingView {
            reason: "rate_limit".into(),
            until: None,
        });
        let shown = details(&progress, Some(20.0));
        assert_eq!(shown[..3], ["20/s", "ETA 50s", "rate-limited"], "{shown:?}");
        progress.waiting = Some(WaitingView {
            reason: "send_window".into(),
            until: None,
        });
        let shown = details(&progress, Some(20.0));
        assert_eq!(shown[0], "waiting: send_window", "{shown:?}");
    }

    #[test]
    fn the_bar_is_as_full_as_the_campaign_is_done() {
        assert_eq!(bar(0.5, 10), "[█████     ]");
        assert_eq!(bar(1.0, 4), "[████]");
        assert_eq!(bar(0.0, 3), "[   ]");
        assert_eq!(bar(0.25, 2), "[▌ ]");
        assert_eq!(bar(0.0625, 2), "[▏ ]");
    }
}
