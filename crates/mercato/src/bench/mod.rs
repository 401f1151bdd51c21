//! `mercato bench <scenario>`: a built-in load generator.
//!
//! Each scenario drives the real HTTP API with a keep-alive client at fixed concurrency for a
//! duration (closed loop), records latency per step, checks its invariants, and prints a table
//! (or JSON with `--json`). Without `--target`, a scenario starts its own server in-process on a
//! temporary SQLite database and seeds it. Results go to `docs/BENCHMARKS.md` with the exact
//! command; nothing here is asserted by timed tests.

pub mod cart;
pub mod commerce;
pub mod notify;
pub mod redirect;
pub mod report;
pub mod search;

pub use report::{Recorder, Report, StepStats};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Command-line options shared by every scenario.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    pub scenario: String,
    /// Base URL of a running server (default: start one in-process on a temp SQLite database).
    #[arg(long)]
    pub target: Option<String>,
    /// How long to drive load, e.g. 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Scenario size knob (products to seed, units for sale, messages to send…).
    #[arg(long)]
    pub size: Option<usize>,
    /// In-process server's database: `sqlite` (a temp file) or `postgres` (a fresh database on
    /// `MERCATO_BENCH_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`,
    /// dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    pub backend: String,
    /// `checkout`: instead of load, buy one at a time and print the write transactions, durable
    /// commits and SQL statements each step of a purchase costs.
    #[arg(long)]
    pub profile: bool,
    /// `flash-sale`: sell through a flash sale's waiting room and purchase tokens
    /// (`--concurrency` customers join a sale of `--size` units, poll once a second, buy with
    /// their tokens) instead of letting every buyer race the database.
    #[arg(long)]
    pub waiting_room: bool,
    /// `checkout`: apply a 10 % coupon (no usage limit) to every purchase.
    #[arg(long)]
    pub coupon: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err("duration must be positive and under a day".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs `op(worker, iteration)` from `concurrency` workers until `duration` has passed.
/// Returns the wall time taken.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Duration
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency.max(1) {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                op(w, i).await;
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    started.elapsed()
}

/// A one-line description of this machine for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {mem_gib} GiB RAM, {}",
        std::env::consts::OS
    )
}

/// A server to drive: the `--target` URL, or one started in-process on a temporary SQLite
/// database (kept alive as long as this value).
pub struct Target {
    pub base: String,
    pub state: Option<mercato_commerce::AppState>,
    /// The in-process payment gateway simulator (in-process targets only).
    pub gateway: Option<mercato_gateway_sim::GatewaySim>,
    /// The links system (in-process targets only).
    pub links: Option<mercato_links::Links>,
    _stop: Option<mercato_kernel::shutdown::ShutdownTrigger>,
    _dir: Option<tempfile::TempDir>,
    pub(crate) _pg: Option<BenchDatabase>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(s) = &self._stop {
            s.trigger();
        }
    }
}

/// A fresh PostgreSQL database for one in-process bench run, dropped afterwards.
pub(crate) struct BenchDatabase {
    admin: String,
    name: String,
}

impl BenchDatabase {
    async fn create() -> anyhow::Result<(BenchDatabase, String)> {
        use sqlx::{Connection as _, Executor as _};
        let admin = std::env::var("MERCATO_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("mercato_bench_{}", mercato_kernel::id::random_hex(6));
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await?;
        let _ = conn.close().await;
        let base = admin.split_once('?').map_or(admin.as_str(), |(b, _)| b);
        let authority = base.find("://").map_or(0, |i| i + 3);
        let Some(slash) = base.rfind('/').filter(|&i| i > authority) else {
            anyhow::bail!(
                "MERCATO_BENCH_POSTGRES_URL must name a database, e.g. postgres://postgres@127.0.0.1:5432/postgres"
            );
        };
        let url = format!("{}/{name}", &base[..slash]);
        Ok((BenchDatabase { admin, name }, url))
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            // Give the stopping in-process server a moment to close its pool first.
            std::thread::sleep(Duration::from_millis(300));
            use sqlx::{Connection as _, Executor as _};
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(
                            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// Starts the in-process server unless `--target` names one. Rate limits are lifted: the
/// load generator is one client IP.
pub async fn target(args: &BenchArgs) -> anyhow::Result<Target> {
    if let Some(url) = &args.target {
        return Ok(Target {
            base: url.trim_end_matches('/').to_owned(),
            state: None,
            gateway: None,
            links: None,
            _stop: None,
            _dir: None,
            _pg: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let mut settings = mercato_kernel::config::Settings::load(None, std::env::vars())?;
    settings.data_dir = dir.path().to_path_buf();
    let pg = match args.backend.as_str() {
        "sqlite" => {
            settings.database_url = None;
            None
        }
        "postgres" => {
            let (db, url) = BenchDatabase::create().await?;
            settings.database_url = Some(url);
            Some(db)
        }
        other => anyhow::bail!("--backend must be sqlite or postgres, not {other:?}"),
    };
    settings.addr = "127.0.0.1:0".into();
    settings.rate_limit_ip_per_sec = 10_000_000;
    settings.rate_limit_principal_per_sec = 10_000_000;
    settings.max_in_flight_requests = 100_000;
    // Registration is set-up, not what is measured: keep password hashing cheap here.
    settings.password_hash_memory_kib = 1024;
    settings.password_hash_iterations = 1;
    // A few bench customers buy over and over: the per-customer velocity rule would block
    // them; the amount rules stay on.
    settings.fraud_max_attempts_per_hour = i64::MAX;
    // For the same reason the per-card velocity rule (each bench customer pays with its own
    // `tok_visa`, over and over) and the card-country rule (US test cards, mixed shipping
    // countries) start off; the rest of the fraud check runs on every payment.
    settings.fraud_rules_off = "velocity,card_country_mismatch".into();
    let app = crate::Application::build(settings, crate::BuildOptions::default()).await?;
    let addr = app
        .local_addr()
        .ok_or_else(|| anyhow::anyhow!("no listener"))?;
    let state = app.state().clone();
    let gateway = app.gateway().simulator.clone();
    let links = app.links();
    let stop = app.stopper();
    tokio::spawn(app.run_until(std::future::pending()));
    Ok(Target {
        base: format!("http://{addr}"),
        state: Some(state),
        gateway,
        links: Some(links),
        _stop: Some(stop),
        _dir: Some(dir),
        _pg: pg,
    })
}

/// A keep-alive HTTP client sized for `concurrency`.
pub fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// `health`: GET /healthz — the floor every other scenario stands on (HTTP stack, middleware).
async fn health(args: &BenchArgs) -> anyhow::Result<Report> {
    let target = target(args).await?;
    let client = http_client(args.concurrency)?;
    let rec = Arc::new(Recorder::new());
    let url = format!("{}/healthz", target.base);
    let (r, c) = (rec.clone(), client.clone());
    let wall = closed_loop(args.concurrency, args.duration, move |_, _| {
        let (r, c, url) = (r.clone(), c.clone(), url.clone());
        async move {
            let t = Instant::now();
            match c.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => {
                    let _ = resp.bytes().await;
                    r.ok("GET /healthz", t.elapsed());
                }
                _ => r.error("GET /healthz"),
            }
        }
    })
    .await;
    let mut report = Report::new("health", &target.base, args.concurrency, wall);
    report.steps = rec.stats(wall);
    Ok(report)
}

/// Runs the scenario named in `args` and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report: Report = match args.scenario.as_str() {
        "health" => health(&args).await?,
        "notify" => notify::run(&args).await?,
        "search" => search::run(&args).await?,
        "cart" => cart::run(&args).await?,
        "flash-sale" if args.waiting_room => commerce::flash_sale_waiting_room(&args).await?,
        "flash-sale" => commerce::flash_sale(&args).await?,
        "checkout" => commerce::checkout(&args).await?,
        "db-commit" => commerce::db_commit(&args).await?,
        "redirect" => redirect::run(&args).await?,
        other => anyhow::bail!(
            "unknown scenario {other:?} (available: health, db-commit, search, cart, notify, flash-sale, checkout, redirect)"
        ),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}
