//! Test kit: the real application on port 0 with a fresh database per test, and a typed client.
//!
//! Backend: a temp SQLite file by default; a fresh PostgreSQL database (dropped afterwards)
//! when `MERCATO_TEST_POSTGRES_URL` is set. The same API tests therefore run on both.
#![forbid(unsafe_code)]

mod client;
pub mod mmdb;
pub mod peers;
mod postgres;
pub mod process;

pub use client::{Client, TestResponse, sample_address, sample_product};

use mercato::{Application, BuildOptions};
use mercato_commerce::AppState;
use mercato_kernel::clock::{Clock, Timestamp};
use mercato_kernel::config::Settings;
use mercato_kernel::outbox::EmbeddedBus;
use mercato_kernel::shutdown::ShutdownTrigger;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The wall clock plus an offset tests can move forward (token expiry, checkout TTLs) while
/// real time still flows for leases and backoff.
#[derive(Debug, Default)]
pub struct TestClock {
    offset_us: AtomicI64,
}

impl TestClock {
    pub fn advance(&self, d: Duration) {
        self.offset_us.fetch_add(
            i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        mercato_kernel::clock::SystemClock
            .now()
            .plus(Duration::from_micros(
                u64::try_from(self.offset_us.load(Ordering::SeqCst)).unwrap_or(0),
            ))
    }
}

/// A running application for one test.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    pub api: Client,
    pub state: AppState,
    pub bus: Arc<EmbeddedBus>,
    /// The notification platform (drive its lanes by hand with `lane_step`).
    pub notify: mercato_notify::Notifier,
    /// Merchant webhooks.
    pub webhooks: mercato_webhooks::Webhooks,
    /// The URL shortener (cache counters, click queue, stores).
    pub links: mercato_links::Links,
    /// Live streams (hub, store).
    pub live: mercato_live::Live,
    pub clock: Arc<TestClock>,
    pub settings: Settings,
    /// The in-process payment gateway simulator (inspect charges and refunds, inject faults).
    pub gateway: mercato_gateway_sim::GatewaySim,
    stopper: ShutdownTrigger,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data_dir: Option<tempfile::TempDir>,
    _pg: Option<postgres::TestDatabase>,
}

/// Which backend tests run on, for messages.
pub fn backend_name() -> &'static str {
    if postgres::admin_url().is_some() {
        "postgres"
    } else {
        "sqlite"
    }
}

/// Settings tuned for tests: cheap password hashing, fast retries, generous rate limits.
pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    Settings {
        data_dir: data_dir.to_path_buf(),
        addr: "127.0.0.1:0".into(),
        password_hash_memory_kib: 256,
        password_hash_iterations: 1,
        rate_limit_ip_per_sec: 100_000,
        rate_limit_principal_per_sec: 100_000,
        outbox_backoff_base_ms: 20,
        outbox_max_attempts: 3,
        outbox_poll_ms: 20,
        jwt_secret: Some("test-secret-test-secret-test-secret!".into()),
        gateway_timeout_ms: 500,
        gateway_sim_hang_ms: 2_000,
        // The sample address is in GB and the generic test cards are US cards, tests pay many
        // times with one card, and every test customer is a new account buying whatever the
        // test needs: these three rules would hold test orders for review. The fraud tests
        // turn them on (PUT /admin/fraud/rules/{name}).
        fraud_rules_off: "card_country_mismatch,velocity,high_value_new_account".into(),
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the app after letting the test adjust its settings.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    match try_spawn(configure).await {
        Ok(app) => app,
        Err(e) => panic!("spawning the test app failed: {e:#}"),
    }
}

async fn try_spawn(configure: impl FnOnce(&mut Settings)) -> anyhow::Result<TestApp> {
    // Warnings and errors of the app show in a failing test's output (RUST_LOG overrides).
    mercato_kernel::telemetry::init_tracing("pretty", "warn");
    let data_dir = tempfile::tempdir()?;
    let mut settings = test_settings(data_dir.path());
    let pg = match postgres::admin_url() {
        Some(admin) => {
            let db = postgres::TestDatabase::create(&admin).await?;
            settings.database_url = Some(db.url.clone());
            settings.database_max_connections = 8;
            Some(db)
        }
        None => None,
    };
    configure(&mut settings);
    start(settings, Arc::new(TestClock::default()), data_dir, pg).await
}

async fn start(
    settings: Settings,
    clock: Arc<TestClock>,
    data_dir: tempfile::TempDir,
    pg: Option<postgres::TestDatabase>,
) -> anyhow::Result<TestApp> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = Application::build(
        settings.clone(),
        BuildOptions {
            clock: Some(clock.clone()),
            listener: Some(listener),
        },
    )
    .await?;
    let addr = app
        .local_addr()
        .ok_or_else(|| anyhow::anyhow!("the test app has no listener"))?;
    let state = app.state().clone();
    let bus = app.bus();
    let gateway = app
        .gateway()
        .simulator
        .clone()
        .ok_or_else(|| anyhow::anyhow!("tests run with the in-process gateway simulator"))?;
    let notify = app.notify();
    let webhooks = app.webhooks();
    let links = app.links();
    let live = app.live();
    let stopper = app.stopper();
    let server = tokio::spawn(app.run_until(std::future::pending()));
    let address = format!("http://{addr}");
    Ok(TestApp {
        api: Client::new(&address),
        address,
        state,
        bus,
        notify,
        webhooks,
        links,
        live,
        clock,
        settings,
        gateway,
        stopper,
        server: Some(server),
        _data_dir: Some(data_dir),
        _pg: pg,
    })
}

impl TestApp {
    /// Stops the application gracefully and waits for it.
    pub async fn stop(mut self) {
        self.stopper.trigger();
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), s).await;
        }
    }

    /// Stops the application gracefully and starts it again on the same database, data
    /// directory and clock (a new port and client); `between` runs while it is stopped
    /// (e.g. to delete the search index).
    pub async fn restart(mut self, between: impl FnOnce(&Settings)) -> TestApp {
        self.stopper.trigger();
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), s).await;
        }
        between(&self.settings);
        let (Some(data_dir), pg) = (self._data_dir.take(), self._pg.take()) else {
            panic!("restarting a test app without its data directory");
        };
        match start(self.settings.clone(), self.clock.clone(), data_dir, pg).await {
            Ok(app) => app,
            Err(e) => panic!("restarting the test app failed: {e:#}"),
        }
    }

    /// Polls `check` until it returns `Some`, up to `timeout`.
    pub async fn eventually<T, F, Fut>(&self, timeout: Duration, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return Some(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates a user with `role` directly through the service and returns a signed-in client.
    pub async fn user_with_role(&self, role: mercato_kernel::auth::Role) -> Client {
        let email = format!(
            "{}-{}@example.com",
            role.as_str(),
            mercato_kernel::id::random_hex(6)
        );
        let password = "correct horse battery";
        if let Err(e) = self
            .state
            .identity
            .create_user(&email, password, None, role)
            .await
        {
            panic!("creating a {role:?}: {e}");
        }
        let r = self.api.login(&email, password).await;
        assert_eq!(r.status, 200, "login failed: {}", r.body);
        self.api
            .with_token(r.body["access_token"].as_str().unwrap_or_default())
    }

    pub async fn admin(&self) -> Client {
        self.user_with_role(mercato_kernel::auth::Role::Admin).await
    }

    /// Registers a new customer through the API and returns a signed-in client.
    pub async fn customer(&self) -> Client {
        let email = format!("customer-{}@example.com", mercato_kernel::id::random_hex(6));
        let r = self.api.register(&email, "correct horse battery").await;
        assert_eq!(r.status, 201, "register failed: {}", r.body);
        self.api
            .with_token(r.body["access_token"].as_str().unwrap_or_default())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stopper.trigger();
    }
}
