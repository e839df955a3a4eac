//! A scenario's results: metrics, targets met or not, printed as a table for
//! people and one JSON line for programs.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// One metric: JSON key, value, how a person reads it.
struct Metric {
    key: &'static str,
    /// `None`: could not be measured in this run.
    value: Option<f64>,
    json: Value,
    shown: String,
}

/// A bound a metric should respect.
struct Target {
    key: &'static str,
    at_most: bool,
    limit: f64,
    shown: String,
}

/// The results of one scenario.
pub struct Report {
    scenario: &'static str,
    quick: bool,
    metrics: Vec<Metric>,
    targets: Vec<Target>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report of `scenario`.
    pub fn new(scenario: &'static str, quick: bool) -> Self {
        Self {
            scenario,
            quick,
            metrics: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn push(&mut self, key: &'static str, value: f64, json: Value, shown: String) {
        self.metrics.push(Metric {
            key,
            value: Some(value),
            json,
            shown,
        });
    }

    /// A metric this run could not measure: `null` in the JSON, and any
    /// target on it not met.
    pub fn absent(&mut self, key: &'static str) {
        self.metrics.push(Metric {
            key,
            value: None,
            json: Value::Null,
            shown: "n/a".into(),
        });
    }

    /// A rate per second, if measured.
    pub fn rate_if(&mut self, key: &'static str, value: Option<f64>) {
        match value {
            Some(value) => self.rate(key, value),
            None => self.absent(key),
        }
    }

    /// A number, if measured.
    pub fn number_if(&mut self, key: &'static str, value: Option<f64>) {
        match value {
            Some(value) => self.number(key, value),
            None => self.absent(key),
        }
    }

    /// A duration in milliseconds, if measured.
    pub fn millis_if(&mut self, key: &'static str, value: Option<Duration>) {
        match value {
            Some(value) => self.millis(key, value),
            None => self.absent(key),
        }
    }

    /// A count.
    pub fn count(&mut self, key: &'static str, value: u64) {
        self.push(key, value as f64, json!(value), group(value));
    }

    /// A duration, in seconds.
    pub fn seconds(&mut self, key: &'static str, value: Duration) {
        let s = value.as_secs_f64();
        self.push(key, s, json!(round(s, 4)), format!("{s:.3} s"));
    }

    /// A duration, in milliseconds.
    pub fn millis(&mut self, key: &'static str, value: Duration) {
        let ms = value.as_secs_f64() * 1e3;
        self.push(key, ms, json!(round(ms, 2)), format!("{ms:.1} ms"));
    }

    /// A rate per second.
    pub fn rate(&mut self, key: &'static str, value: f64) {
        self.push(
            key,
            value,
            json!(value.round()),
            format!("{} /s", group(value.round() as u64)),
        );
    }

    /// A size in bytes.
    pub fn bytes(&mut self, key: &'static str, value: u64) {
        self.push(
            key,
            value as f64,
            json!(value),
            format!("{:.1} MB", value as f64 / 1e6),
        );
    }

    /// A plain number (a ratio, bytes per leaf).
    pub fn number(&mut self, key: &'static str, value: f64) {
        self.push(key, value, json!(round(value, 4)), format!("{value:.3}"));
    }

    /// A yes/no fact.
    pub fn flag(&mut self, key: &'static str, value: bool) {
        self.push(
            key,
            f64::from(u8::from(value)),
            json!(value),
            (if value { "yes" } else { "no" }).into(),
        );
    }

    /// Target: metric `key` at most `limit`.
    pub fn at_most(&mut self, key: &'static str, limit: f64) {
        self.targets.push(Target {
            key,
            at_most: true,
            limit,
            shown: format!("<= {}", short(limit)),
        });
    }

    /// Target: metric `key` at least `limit`.
    pub fn at_least(&mut self, key: &'static str, limit: f64) {
        self.targets.push(Target {
            key,
            at_most: false,
            limit,
            shown: format!(">= {}", short(limit)),
        });
    }

    /// A line of explanation printed under the table.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    fn met(&self, target: &Target) -> Option<bool> {
        let metric = self.metrics.iter().find(|m| m.key == target.key)?;
        Some(metric.value.is_some_and(|value| {
            if target.at_most {
                value <= target.limit
            } else {
                value >= target.limit
            }
        }))
    }

    /// The JSON line: `{"scenario", "metrics", "targets", "quick"}`.
    pub fn json(&self) -> Value {
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|m| (m.key.to_string(), m.json.clone()))
            .collect();
        let targets: Map<String, Value> = self
            .targets
            .iter()
            .map(|t| {
                let bound = if t.at_most { "max" } else { "min" };
                (
                    t.key.to_string(),
                    json!({ bound: t.limit, "met": self.met(t) }),
                )
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "metrics": metrics,
            "targets": targets,
            "quick": self.quick,
        })
    }

    /// Prints the table and the JSON line on stdout.
    pub fn print(&self) {
        println!();
        if self.quick {
            println!(
                "{} (quick: small sizes; the targets are for the full sizes)",
                self.scenario
            );
        } else {
            println!("{}", self.scenario);
        }
        println!(
            "  {:<34} {:>18}  {:<14} result",
            "metric", "value", "target"
        );
        for metric in &self.metrics {
            let (target, verdict) = self.targets.iter().find(|t| t.key == metric.key).map_or(
                (String::new(), ""),
                |t| {
                    let verdict = match self.met(t) {
                        Some(true) => "met",
                        Some(false) => "NOT MET",
                        None => "",
                    };
                    (t.shown.clone(), verdict)
                },
            );
            println!(
                "  {:<34} {:>18}  {:<14} {}",
                metric.key, metric.shown, target, verdict
            );
        }
        for note in &self.notes {
            println!("  {note}");
        }
        println!("{}", self.json_line());
    }

    /// The JSON line as printed: the same object as [`Report::json`], with
    /// `scenario` first for people reading it (serde_json sorts keys).
    pub fn json_line(&self) -> String {
        let json = self.json();
        format!(
            r#"{{"scenario":{},"metrics":{},"targets":{},"quick":{}}}"#,
            json["scenario"], json["metrics"], json["targets"], json["quick"]
        )
    }
}

/// The JSON line of a scenario that could not run to the end.
pub fn error_json_line(scenario: &str, quick: bool, error: &str) -> String {
    format!(
        r#"{{"scenario":{},"error":{},"quick":{quick}}}"#,
        json!(scenario),
        json!(error)
    )
}

/// `value` rounded to `digits` decimals.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// 1234567 as "1,234,567".
fn group(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A limit as a person writes it: 500,000 or 1.5.
fn short(limit: f64) -> String {
    if limit.fract() == 0.0 && limit.abs() >= 1000.0 {
        group(limit as u64)
    } else {
        format!("{limit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_judged_and_reported() {
        let mut report = Report::new("x", true);
        report.number("ratio", 1.2);
        report.rate("rate", 400_000.0);
        report.absent("latency");
        report.at_most("ratio", 1.5);
        report.at_least("rate", 500_000.0);
        report.at_most("latency", 1.0);
        let json = report.json();
        assert_eq!(json["scenario"], "x");
        assert_eq!(json["quick"], true);
        assert_eq!(json["metrics"]["rate"], 400_000.0);
        assert_eq!(json["targets"]["ratio"], json!({"max": 1.5, "met": true}));
        assert_eq!(
            json["targets"]["rate"],
            json!({"min": 500_000.0, "met": false})
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(short(1.5), "1.5");
        assert_eq!(short(500_000.0), "500,000");
    }
}
