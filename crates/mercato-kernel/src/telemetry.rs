//! Logs, traces and metrics.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

static COUNT_STATEMENTS: AtomicBool = AtomicBool::new(false);
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// Starts counting the SQL statements sqlx executes (each logs one `sqlx::query` event).
/// Off by default: sqlx formats a summary of every statement it logs, which costs CPU, so only
/// `mercato bench --profile` turns it on.
pub fn count_statements(on: bool) {
    COUNT_STATEMENTS.store(on, Ordering::SeqCst);
}

/// SQL statements executed since the process started counting ([`count_statements`]).
pub fn statements() -> u64 {
    STATEMENTS.load(Ordering::Relaxed)
}

struct StatementCounter;

/// Lets `sqlx::query` events through while counting is on. The interest is `sometimes`, so the
/// switch is read per event (a `filter_fn` would cache its first answer per callsite).
struct WhenCounting;

impl<S> tracing_subscriber::layer::Filter<S> for WhenCounting {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        COUNT_STATEMENTS.load(Ordering::Relaxed) && meta.target() == "sqlx::query"
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.target() == "sqlx::query" {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

static BY_STATEMENT: std::sync::Mutex<Option<std::collections::HashMap<String, u64>>> =
    std::sync::Mutex::new(None);

/// Statements counted so far, by sqlx's summary of their text (most frequent first).
pub fn statements_by_text() -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = BY_STATEMENT
        .lock()
        .map(|m| m.clone().unwrap_or_default().into_iter().collect())
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

struct Summary(Option<String>);

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "db.statement" && !value.trim().is_empty() {
            self.0 = Some(value.split_whitespace().collect::<Vec<_>>().join(" "));
        } else if field.name() == "summary" && self.0.is_none() {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" && self.0.is_none() {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for StatementCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
        let mut summary = Summary(None);
        event.record(&mut summary);
        let text: String = summary.0.unwrap_or_default().chars().take(160).collect();
        if let Ok(mut m) = BY_STATEMENT.lock() {
            *m.get_or_insert_with(Default::default)
                .entry(text)
                .or_default() += 1;
        }
    }
}

/// Installs the global tracing subscriber (once per process; later calls are no-ops).
pub fn init_tracing(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The search engine logs every commit at info; keep it quiet unless asked for by name.
    let asked =
        level.contains("tantivy") || std::env::var("RUST_LOG").is_ok_and(|v| v.contains("tantivy"));
    let filter = match "tantivy=warn".parse() {
        Ok(d) if !asked => filter.add_directive(d),
        _ => filter,
    };
    // Logs go to stderr: stdout belongs to what a command prints (bench --json, demo lines).
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let counter = StatementCounter.with_filter(WhenCounting);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(counter)
        .try_init();
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests in one process); then keep ours
        // unattached and render an empty page rather than fail.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Formats an error with its whole cause chain on one line (`a: b: c`).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_are_counted_when_asked() {
        super::init_tracing("pretty", "error");
        // The callsite is seen first while counting is off.
        let quiet = || tracing::debug!(target: "sqlx::query", summary = "SELECT 1", "x");
        quiet();
        super::count_statements(true);
        let before = super::statements();
        quiet();
        let enabled = tracing::enabled!(target: "sqlx::query", tracing::Level::DEBUG);
        assert!(enabled, "enabled");
        assert!(super::statements() > before);
    }
}
