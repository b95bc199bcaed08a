//! Figures, the printed table and the JSON document.
//!
//! A figure carries its baseline from the same invocation and the ratio between
//! the two, so readers compare like with like. The JSON keeps stable keys per
//! figure (`scenarios.<name>.figures.<key>`), which the smoke test checks.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::machine::Machine;

/// How a ratio reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioKind {
    /// value / baseline, in percent (throughput against a ceiling).
    PercentOfBaseline,
    /// baseline / value, "times faster" (latencies against a slower baseline).
    TimesFaster,
    /// value / baseline, "times the baseline" (memory against idle).
    TimesBaseline,
    /// baseline / value, "times fewer" (counts against a larger baseline).
    TimesFewer,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub key: String,
    pub label: String,
    pub value: f64,
    pub unit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_kind: Option<RatioKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

impl Figure {
    pub fn new(key: impl Into<String>, label: impl Into<String>, value: f64, unit: &str) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            value,
            unit: unit.to_owned(),
            baseline: None,
            baseline_label: None,
            ratio: None,
            ratio_kind: None,
            target: None,
            met: None,
        }
    }

    /// Compares with a baseline; the ratio is computed from `kind`.
    pub fn against(mut self, baseline: f64, label: impl Into<String>, kind: RatioKind) -> Self {
        self.baseline = Some(baseline);
        self.baseline_label = Some(label.into());
        self.ratio_kind = Some(kind);
        self.ratio = match kind {
            RatioKind::PercentOfBaseline if baseline > 0.0 => Some(100.0 * self.value / baseline),
            RatioKind::TimesBaseline if baseline > 0.0 => Some(self.value / baseline),
            // Latencies are in ms and polled at about 1 ms: below that a ratio would
            // only measure noise (or divide by zero), so the floor is 1 ms.
            RatioKind::TimesFaster => Some(baseline / self.value.max(1.0)),
            // Counts: zero against zero is "as few", zero against more is floored at 1.
            RatioKind::TimesFewer if baseline > 0.0 => Some(baseline / self.value.max(1.0)),
            RatioKind::TimesFewer => Some(1.0),
            _ => None,
        };
        self
    }

    /// Shows a baseline without a ratio (when a ratio would not mean anything).
    pub fn beside(mut self, baseline: f64, label: impl Into<String>) -> Self {
        self.baseline = Some(baseline);
        self.baseline_label = Some(label.into());
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some(text.into());
        self.met = Some(met);
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    /// The scale and settings this scenario ran with.
    pub params: Value,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// A number with a sensible number of digits for its size.
pub fn fmt_num(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1000.0 || (value.fract() == 0.0 && abs < 1e15) {
        let int = value.round() as i64;
        let digits = int.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if int < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn fmt_ratio(figure: &Figure) -> String {
    match (figure.ratio, figure.ratio_kind) {
        (Some(r), Some(RatioKind::PercentOfBaseline)) => format!("{}%", fmt_num(r)),
        (Some(r), Some(RatioKind::TimesFaster)) => format!("{}x faster", fmt_num(r)),
        (Some(r), Some(RatioKind::TimesBaseline)) => format!("{}x", fmt_num(r)),
        (Some(r), Some(RatioKind::TimesFewer)) => format!("{}x fewer", fmt_num(r)),
        _ => String::new(),
    }
}

impl ScenarioReport {
    pub fn new(name: &str, params: Value) -> Self {
        Self {
            name: name.to_owned(),
            params,
            figures: Vec::new(),
            notes: Vec::new(),
            seconds: 0.0,
        }
    }

    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The scenario as a Markdown table (readable as plain text too).
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 6]> = vec![[
            "figure".into(),
            "value".into(),
            "baseline".into(),
            "ratio".into(),
            "target".into(),
            "met".into(),
        ]];
        for f in &self.figures {
            let baseline = match (&f.baseline, &f.baseline_label) {
                (Some(b), Some(label)) => format!("{} ({label})", fmt_num(*b)),
                (Some(b), None) => fmt_num(*b),
                _ => String::new(),
            };
            rows.push([
                f.label.clone(),
                format!("{} {}", fmt_num(f.value), f.unit),
                baseline,
                fmt_ratio(f),
                f.target.clone().unwrap_or_default(),
                match f.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!("### {} ({:.0} s)\n\n", self.name, self.seconds);
        for (i, row) in rows.iter().enumerate() {
            out.push('|');
            for (c, cell) in row.iter().enumerate() {
                let _ = write!(out, " {cell:<width$} |", width = widths[c]);
            }
            out.push('\n');
            if i == 0 {
                out.push('|');
                for w in &widths {
                    let _ = write!(out, "{}|", "-".repeat(w + 2));
                }
                out.push('\n');
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n- {note}");
        }
        out
    }

    fn to_json(&self) -> Value {
        let figures: Map<String, Value> = self
            .figures
            .iter()
            .map(|f| {
                (
                    f.key.clone(),
                    serde_json::to_value(f).unwrap_or(Value::Null),
                )
            })
            .collect();
        json!({
            "params": self.params,
            "seconds": self.seconds,
            "figures": figures,
            "notes": self.notes,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub machine: Machine,
    pub scenarios: Vec<ScenarioReport>,
}

impl Report {
    pub fn new(machine: Machine) -> Self {
        Self {
            machine,
            scenarios: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Value {
        let scenarios: Map<String, Value> = self
            .scenarios
            .iter()
            .map(|s| (s.name.clone(), s.to_json()))
            .collect();
        json!({
            "machine": self.machine,
            "generated_at": chrono::Utc::now(),
            "scenarios": scenarios,
        })
    }

    /// The machine line and every scenario's table.
    pub fn tables(&self) -> String {
        let mut out = format!("{}\n\n", self.machine.describe());
        for s in &self.scenarios {
            out.push_str(&s.table());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_rounded_by_size() {
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
    }

    #[test]
    fn ratios_follow_their_kind() {
        let f = Figure::new("k", "k", 50.0, "msg/s").against(
            200.0,
            "ceiling",
            RatioKind::PercentOfBaseline,
        );
        assert_eq!(f.ratio, Some(25.0));
        let f = Figure::new("k", "k", 10.0, "ms").against(1000.0, "off", RatioKind::TimesFaster);
        assert_eq!(f.ratio, Some(100.0));
        let table = {
            let mut s = ScenarioReport::new("t", json!({}));
            s.push(f);
            s.table()
        };
        assert!(table.contains("100x faster"), "{table}");
    }
}
