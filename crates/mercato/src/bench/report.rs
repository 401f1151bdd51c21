//! Latency recording and the printed report.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Collects latencies (microseconds) and errors per named step. Cheap enough for benches:
/// one short mutex hold per sample.
#[derive(Default)]
pub struct Recorder {
    steps: Mutex<BTreeMap<String, (Vec<u64>, u64)>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    pub fn ok(&self, step: &str, latency: Duration) {
        if let Ok(mut m) = self.steps.lock() {
            m.entry(step.to_owned())
                .or_default()
                .0
                .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
    }

    pub fn error(&self, step: &str) {
        if let Ok(mut m) = self.steps.lock() {
            m.entry(step.to_owned()).or_default().1 += 1;
        }
    }

    /// Per-step statistics over `wall` time.
    pub fn stats(&self, wall: Duration) -> Vec<StepStats> {
        let Ok(mut m) = self.steps.lock() else {
            return Vec::new();
        };
        m.iter_mut()
            .map(|(name, (lat, errors))| {
                lat.sort_unstable();
                let pct = |p: f64| -> f64 {
                    if lat.is_empty() {
                        return 0.0;
                    }
                    let idx = ((p / 100.0) * (lat.len() - 1) as f64).round() as usize;
                    lat[idx.min(lat.len() - 1)] as f64 / 1000.0
                };
                StepStats {
                    step: name.clone(),
                    count: lat.len() as u64,
                    errors: *errors,
                    throughput_per_sec: lat.len() as f64 / wall.as_secs_f64().max(1e-9),
                    p50_ms: pct(50.0),
                    p90_ms: pct(90.0),
                    p99_ms: pct(99.0),
                    max_ms: lat.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub step: String,
    pub count: u64,
    pub errors: u64,
    pub throughput_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// An invariant checked at the end of a run (e.g. oversold units must be 0).
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: String,
    pub value: i64,
    pub expected: i64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub machine: String,
    pub concurrency: usize,
    pub duration_secs: f64,
    pub steps: Vec<StepStats>,
    pub invariants: Vec<Invariant>,
    /// Free-form facts (seeded rows, units, …).
    pub facts: BTreeMap<String, String>,
}

impl Report {
    pub fn new(scenario: &str, target: &str, concurrency: usize, wall: Duration) -> Report {
        Report {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            machine: super::machine(),
            concurrency,
            duration_secs: wall.as_secs_f64(),
            steps: Vec::new(),
            invariants: Vec::new(),
            facts: BTreeMap::new(),
        }
    }

    pub fn invariant(&mut self, name: &str, value: i64, expected: i64) {
        self.invariants.push(Invariant {
            name: name.to_owned(),
            value,
            expected,
            ok: value == expected,
        });
    }

    pub fn fact(&mut self, key: &str, value: impl ToString) {
        self.facts.insert(key.to_owned(), value.to_string());
    }

    pub fn print(&self) {
        println!("scenario:    {}", self.scenario);
        println!("target:      {}", self.target);
        println!("machine:     {}", self.machine);
        println!(
            "load:        {} concurrent clients for {:.1} s",
            self.concurrency, self.duration_secs
        );
        for (k, v) in &self.facts {
            println!("{:<12} {v}", format!("{k}:"));
        }
        println!();
        println!(
            "{:<22} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "step", "count", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for s in &self.steps {
            println!(
                "{:<22} {:>9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                s.step,
                s.count,
                s.errors,
                s.throughput_per_sec,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.max_ms
            );
        }
        if !self.invariants.is_empty() {
            println!();
            for i in &self.invariants {
                println!(
                    "{} {:<32} {} (expected {})",
                    if i.ok { "ok  " } else { "FAIL" },
                    i.name,
                    i.value,
                    i.expected
                );
            }
        }
    }
}
