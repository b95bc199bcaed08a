//! Send windows (quiet hours): the days and local hours in which a channel or a
//! campaign may send, in an IANA time zone, with daylight saving time handled by
//! `chrono-tz`.
//!
//! Shape: `{"timezone": "America/Sao_Paulo", "days": ["mon", …], "start": "09:00",
//! "end": "20:00"}`. `start` is inclusive and `end` exclusive, both local
//! wall-clock times; an `end` at or before `start` is an overnight window (22:00
//! to 06:00 opens on each listed day at 22:00). `days` defaults to every day. A
//! local start time that does not exist on a day (skipped by a DST jump) opens
//! at the first local time after the gap.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// A day of the week, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    const ALL: [Day; 7] = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];

    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Mon,
            Day::Tue => Weekday::Tue,
            Day::Wed => Weekday::Wed,
            Day::Thu => Weekday::Thu,
            Day::Fri => Weekday::Fri,
            Day::Sat => Weekday::Sat,
            Day::Sun => Weekday::Sun,
        }
    }
}

fn every_day() -> Vec<Day> {
    Day::ALL.to_vec()
}

/// When sending is allowed. See the module docs for the shape and rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendWindow {
    /// IANA time zone name, e.g. `America/Sao_Paulo`.
    pub timezone: String,
    /// Days on which the window opens (local); every day when omitted.
    #[serde(default = "every_day")]
    pub days: Vec<Day>,
    /// Local opening time, `HH:MM` (inclusive).
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start: String,
    /// Local closing time, `HH:MM` (exclusive); at or before `start`: overnight.
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub end: String,
}

fn parse_hhmm(field: &str, value: &str) -> Result<NaiveTime, String> {
    let valid = value.len() == 5 && value.as_bytes()[2] == b':';
    valid
        .then(|| NaiveTime::parse_from_str(value, "%H:%M").ok())
        .flatten()
        .ok_or_else(|| format!("send_window.{field} must be a time HH:MM, got {value:?}"))
}

/// A validated window, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Window {
    tz: Tz,
    days: Vec<Weekday>,
    start: NaiveTime,
    end: NaiveTime,
}

impl SendWindow {
    /// Checks the time zone, the times and the days; the error names the field.
    pub fn compile(&self) -> Result<Window, String> {
        let tz: Tz = self.timezone.parse().map_err(|_| {
            format!(
                "send_window.timezone must be an IANA time zone such as America/Sao_Paulo, got {:?}",
                self.timezone
            )
        })?;
        let start = parse_hhmm("start", &self.start)?;
        let end = parse_hhmm("end", &self.end)?;
        if start == end {
            return Err("send_window.start and send_window.end must differ".into());
        }
        if self.days.is_empty() {
            return Err("send_window.days must name at least one day".into());
        }
        Ok(Window {
            tz,
            days: self.days.iter().map(|d| d.weekday()).collect(),
            start,
            end,
        })
    }
}

impl Window {
    /// The window's time zone (also the zone of a channel's daily cap).
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    fn overnight(&self) -> bool {
        self.end <= self.start
    }

    fn opens_on(&self, date: NaiveDate) -> bool {
        self.days.contains(&date.weekday())
    }

    /// True if sending is allowed at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz);
        let (date, time) = (local.date_naive(), local.time());
        if self.overnight() {
            (self.opens_on(date) && time >= self.start)
                || (date.pred_opt().is_some_and(|d| self.opens_on(d)) && time < self.end)
        } else {
            self.opens_on(date) && time >= self.start && time < self.end
        }
    }

    /// The instant the window opens on local `date`: `start` there, or the first
    /// local minute after a DST gap that swallowed it.
    fn opening_on(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let mut local = date.and_time(self.start);
        for _ in 0..=180 {
            if let Some(at) = self.tz.from_local_datetime(&local).earliest() {
                return Some(at.with_timezone(&Utc));
            }
            local += Duration::minutes(1);
        }
        None
    }

    /// `at` itself if the window is open then, else its next opening (searched
    /// over the next eight days, which covers every weekly pattern).
    pub fn next_open(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_open(at) {
            return Some(at);
        }
        let today = at.with_timezone(&self.tz).date_naive();
        (0..=8)
            .filter_map(|n| today.checked_add_signed(Duration::days(n)))
            .filter(|date| self.opens_on(*date))
            .filter_map(|date| self.opening_on(date))
            .find(|opening| *opening > at)
    }
}

/// When every one of `windows` is open at once: `at` if they all are now, else
/// the first such instant within about a week, or `None` if they never overlap
/// (a campaign whose window and channel window are disjoint).
pub fn next_open_together(windows: &[&Window], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let horizon = at + Duration::days(8);
    let mut candidate = at;
    // Each step jumps to the latest next opening of the windows closed at the
    // candidate; a non-empty intersection is reached in a few steps.
    for _ in 0..64 {
        let mut latest = candidate;
        for window in windows {
            latest = latest.max(window.next_open(candidate)?);
        }
        if latest == candidate {
            return Some(candidate);
        }
        if latest > horizon {
            return None;
        }
        candidate = latest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tz: &str, days: &[Day], start: &str, end: &str) -> Window {
        SendWindow {
            timezone: tz.into(),
            days: days.to_vec(),
            start: start.into(),
            end: end.into(),
        }
        .compile()
        .expect("valid window")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("RFC 3339")
    }

    const WEEKDAYS: &[Day] = &[Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri];

    #[test]
    fn office_hours_in_sao_paulo_open_at_nine_local_on_weekdays_only() {
        let w = window("America/Sao_Paulo", WEEKDAYS, "09:00", "20:00");
        // Sao Paulo is UTC-3 all year (no DST since 2019). 2026-12-04 is a Friday.
        assert!(w.is_open(utc("2026-12-04T12:00:00Z")));
        assert!(!w.is_open(utc("2026-12-04T11:59:00Z")));
        assert!(!w.is_open(utc("2026-12-04T23:00:00Z")), "20:00 is closed");
        // Friday night: next opening is Monday 09:00 local.
        assert_eq!(
            w.next_open(utc("2026-12-04T23:30:00Z")),
            Some(utc("2026-12-07T12:00:00Z"))
        );
    }

    #[test]
    fn the_same_local_hours_move_in_utc_across_a_dst_change() {
        // New York springs forward on 2026-03-08: 09:00 is 14:00Z before, 13:00Z after.
        let w = window("America/New_York", WEEKDAYS, "09:00", "17:00");
        assert_eq!(
            w.next_open(utc("2026-03-06T05:00:00Z")),
            Some(utc("2026-03-06T14:00:00Z"))
        );
        assert_eq!(
            w.next_open(utc("2026-03-07T00:00:00Z")),
            Some(utc("2026-03-09T13:00:00Z"))
        );
        assert!(w.is_open(utc("2026-03-09T13:30:00Z")));
        assert!(!w.is_open(utc("2026-03-06T13:30:00Z")));
    }

    #[test]
    fn a_start_time_skipped_by_the_dst_jump_opens_right_after_the_gap() {
        // 02:30 does not exist in New York on 2026-03-08 (02:00 jumps to 03:00 EDT).
        let w = window("America/New_York", &[Day::Sun], "02:30", "04:00");
        assert_eq!(
            w.next_open(utc("2026-03-08T05:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z")),
            "03:00 EDT is 07:00Z"
        );
    }

    #[test]
    fn an_overnight_window_spans_midnight_from_its_listed_day() {
        let w = window("UTC", &[Day::Fri], "22:00", "06:00");
        assert!(w.is_open(utc("2026-12-04T23:00:00Z")), "Friday 23:00");
        assert!(w.is_open(utc("2026-12-05T05:59:00Z")), "Saturday 05:59");
        assert!(!w.is_open(utc("2026-12-05T23:00:00Z")), "Saturday 23:00");
    }

    #[test]
    fn two_windows_are_open_together_only_where_they_overlap() {
        let channel = window("UTC", &Day::ALL, "08:00", "12:00");
        let campaign = window("UTC", &Day::ALL, "10:00", "18:00");
        assert_eq!(
            next_open_together(&[&channel, &campaign], utc("2026-12-04T07:00:00Z")),
            Some(utc("2026-12-04T10:00:00Z"))
        );
        assert_eq!(
            next_open_together(&[&channel, &campaign], utc("2026-12-04T13:00:00Z")),
            Some(utc("2026-12-05T10:00:00Z"))
        );
        let night = window("UTC", &Day::ALL, "20:00", "22:00");
        assert_eq!(
            next_open_together(&[&channel, &night], utc("2026-12-04T07:00:00Z")),
            None
        );
    }

    #[test]
    fn windows_with_bad_fields_are_refused_with_the_field_named() {
        let bad = |tz: &str, start: &str, end: &str, days: Vec<Day>| {
            SendWindow {
                timezone: tz.into(),
                days,
                start: start.into(),
                end: end.into(),
            }
            .compile()
            .unwrap_err()
        };
        assert!(bad("Mars/Base", "09:00", "10:00", every_day()).contains("timezone"));
        assert!(bad("UTC", "9:00", "10:00", every_day()).contains("start"));
        assert!(bad("UTC", "09:00", "24:00", every_day()).contains("end"));
        assert!(bad("UTC", "09:00", "09:00", every_day()).contains("differ"));
        assert!(bad("UTC", "09:00", "10:00", vec![]).contains("days"));
    }
}
