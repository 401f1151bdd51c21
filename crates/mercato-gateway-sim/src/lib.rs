//! A Stripe-shaped payment gateway simulator speaking real HTTP, for Mercato's embedded mode,
//! its tests and its benchmarks (`mercato gateway-sim` runs it as its own process).
//!
//! What it owns: charges, refunds, disputes and idempotency records, all in memory. What it
//! promises, like a real gateway: a charge request with an `Idempotency-Key` is executed at most
//! once (the same key with the same body replays the first answer; with another body it is
//! refused; while the first is still running it answers 409); refunds never exceed what was
//! captured; every state change emits an event (`charge.succeeded`, `charge.failed`,
//! `charge.refunded`, `charge.dispute.created`) delivered as a signed webhook with retries.
//! The test tokens of API.md choose the outcome; latency, failures and hangs can be injected.
//! The protocol is described in `docs/gateway.md`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mercato_gateway_sim::{GatewaySim, SimConfig};
//! let sim = GatewaySim::start(SimConfig::default()).await?; // 127.0.0.1, ephemeral port
//! println!("{}", sim.base_url());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod http;
pub mod model;
mod state;
pub mod webhook;

pub use model::{Charge, ChargeStatus, ConfigPatch, Dispute, Event, Refund, TokenBehaviour};
pub use state::{Knobs, RequestRecord, WebhookAttempt};
pub use webhook::{SIGNATURE_HEADER, signature_header};

use anyhow::{Context as _, bail};
use mercato_kernel::shutdown::{self, Shutdown, ShutdownTrigger};
use state::{Store, WebhookTarget};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The API key the simulator accepts unless told otherwise (Mercato's `gateway_api_key` default).
pub const DEFAULT_API_KEY: &str = "sk_test_mercato";

/// How the simulator starts. Every knob but the API key and the webhook retry policy can also
/// be changed while it runs (`POST /v1/test/config`, or the setters on [`GatewaySim`]).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The key clients must send as `Authorization: Bearer <api_key>`.
    pub api_key: String,
    /// Where events are POSTed (none: events are recorded but not sent).
    pub webhook_url: Option<String>,
    /// The HMAC secret webhooks are signed with; required with `webhook_url`.
    pub webhook_secret: Option<String>,
    /// Added to every API request before it is processed.
    pub latency: Duration,
    /// Probability (0..=1) of answering an API request with 500 before doing anything.
    pub failure_rate: f64,
    /// How long answers to the `tok_timeout*` tokens are held back.
    pub hang: Duration,
    /// Attempts per webhook before giving up.
    pub webhook_max_attempts: u32,
    /// Base of the exponential backoff (with jitter) between webhook attempts.
    pub webhook_backoff_base: Duration,
    /// Cap of that backoff.
    pub webhook_backoff_max: Duration,
    /// Timeout of one webhook attempt.
    pub webhook_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: DEFAULT_API_KEY.into(),
            webhook_url: None,
            webhook_secret: None,
            latency: Duration::ZERO,
            failure_rate: 0.0,
            hang: Duration::from_secs(10),
            webhook_max_attempts: 6,
            webhook_backoff_base: Duration::from_millis(500),
            webhook_backoff_max: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(5),
        }
    }
}

/// State shared by the HTTP handlers and the webhook deliveries.
pub(crate) struct Core {
    pub(crate) config: SimConfig,
    store: Mutex<Store>,
    pub(crate) http: reqwest::Client,
    pub(crate) shutdown: Shutdown,
}

impl Core {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the maps consistent (every update is a
        // single insert/assignment), so keep serving rather than poison every later request.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn webhook_target(&self) -> Option<WebhookTarget> {
        self.lock().webhook.clone()
    }

    /// The latency knob applied to reads (writes apply it inside their idempotent work).
    pub(crate) async fn read_latency(&self) {
        let latency = self.lock().latency();
        if !latency.is_zero() {
            let _ = self.shutdown.clone().sleep(latency).await;
        }
    }

    pub(crate) fn apply(&self, patch: &ConfigPatch) -> Result<(), model::ApiFailure> {
        if let Some(rate) = patch.failure_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(model::ApiFailure::invalid(
                "parameter_invalid",
                "failure_rate must be 0..=1",
            )
            .with("param", "failure_rate"));
        }
        let mut store = self.lock();
        if let Some(v) = patch.latency_ms {
            store.knobs.latency_ms = v;
        }
        if let Some(v) = patch.failure_rate {
            store.knobs.failure_rate = v;
        }
        if let Some(v) = patch.hang_ms {
            store.knobs.hang_ms = v;
        }
        if let Some(v) = patch.fail_next {
            store.knobs.fail_next = v;
        }
        Ok(())
    }
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A running simulator. Cheap to clone; it stops when the last clone is dropped or on
/// [`GatewaySim::stop`].
#[derive(Clone)]
pub struct GatewaySim {
    inner: Arc<Running>,
}

struct Running {
    core: Arc<Core>,
    addr: SocketAddr,
    trigger: ShutdownTrigger,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

impl std::fmt::Debug for GatewaySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySim")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl GatewaySim {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start(config: SimConfig) -> anyhow::Result<GatewaySim> {
        GatewaySim::bind("127.0.0.1:0", config).await
    }

    /// Starts on `addr` (`host:port`; port 0 = ephemeral).
    pub async fn bind(addr: &str, config: SimConfig) -> anyhow::Result<GatewaySim> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the gateway simulator to {addr}"))?;
        GatewaySim::serve(listener, config)
    }

    /// Starts serving on `listener` (in the current Tokio runtime).
    pub fn serve(listener: TcpListener, config: SimConfig) -> anyhow::Result<GatewaySim> {
        if !(0.0..=1.0).contains(&config.failure_rate) {
            bail!("failure_rate must be between 0 and 1");
        }
        let webhook = match (&config.webhook_url, &config.webhook_secret) {
            (Some(url), Some(secret)) => Some(WebhookTarget {
                url: url.clone(),
                secret: secret.clone(),
            }),
            (Some(_), None) => bail!("a webhook URL needs a webhook secret to sign with"),
            (None, _) => None,
        };
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            // Webhook targets are this machine or a known host: never an ambient proxy.
            .no_proxy()
            .build()
            .context("building the webhook HTTP client")?;
        let (trigger, shutdown) = shutdown::channel();
        let knobs = Knobs {
            latency_ms: u64::try_from(config.latency.as_millis()).unwrap_or(u64::MAX),
            failure_rate: config.failure_rate,
            hang_ms: u64::try_from(config.hang.as_millis()).unwrap_or(u64::MAX),
            fail_next: 0,
        };
        let core = Arc::new(Core {
            store: Mutex::new(Store::new(knobs, webhook)),
            config,
            http,
            shutdown: shutdown.clone(),
        });
        let router = http::router(core.clone());
        let mut stop = shutdown;
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.wait().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "gateway simulator server failed");
            }
        });
        tracing::debug!(%addr, "gateway simulator listening");
        Ok(GatewaySim {
            inner: Arc::new(Running {
                core,
                addr,
                trigger,
                server: Mutex::new(Some(server)),
            }),
        })
    }

    /// Stops serving: held-back answers are released, webhook retries end, and in-flight
    /// requests get up to 5 s to finish.
    pub async fn stop(self) {
        self.inner.trigger.trigger();
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(server) = server {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://<addr>` (no trailing slash); the API is under `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn api_key(&self) -> &str {
        &self.inner.core.config.api_key
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    // --- knobs ---

    /// Sends events to `url`, signed with `secret` (also for events whose delivery is already
    /// being retried).
    pub fn set_webhook(&self, url: impl Into<String>, secret: impl Into<String>) {
        self.core().lock().webhook = Some(WebhookTarget {
            url: url.into(),
            secret: secret.into(),
        });
    }

    /// Stops sending events.
    pub fn clear_webhook(&self) {
        self.core().lock().webhook = None;
    }

    /// The secret webhooks are signed with, when a target is set.
    pub fn webhook_secret(&self) -> Option<String> {
        self.core().webhook_target().map(|t| t.secret)
    }

    /// Where webhooks go, when a target is set.
    pub fn webhook_url(&self) -> Option<String> {
        self.core().webhook_target().map(|t| t.url)
    }

    pub fn knobs(&self) -> Knobs {
        self.core().lock().knobs.clone()
    }

    /// Changes knobs exactly as `POST /v1/test/config` does.
    pub fn configure(&self, patch: ConfigPatch) -> anyhow::Result<()> {
        self.core()
            .apply(&patch)
            .map_err(|f| anyhow::anyhow!("{}", f.body))
    }

    pub fn set_latency(&self, latency: Duration) {
        self.core().lock().knobs.latency_ms = u64::try_from(latency.as_millis()).unwrap_or(0);
    }

    /// Probability of an injected 500, clamped to 0..=1.
    pub fn set_failure_rate(&self, rate: f64) {
        self.core().lock().knobs.failure_rate = rate.clamp(0.0, 1.0);
    }

    pub fn set_hang(&self, hang: Duration) {
        self.core().lock().knobs.hang_ms = u64::try_from(hang.as_millis()).unwrap_or(0);
    }

    /// Answers the next `n` API requests with 500 before doing anything.
    pub fn fail_next(&self, n: u32) {
        self.core().lock().knobs.fail_next = n;
    }

    // --- what it did ---

    /// Every charge, oldest first.
    pub fn charges(&self) -> Vec<Charge> {
        self.core().lock().charges().to_vec()
    }

    pub fn charge(&self, id: &str) -> Option<Charge> {
        self.core().lock().charge(id).cloned()
    }

    /// Charges with this reference, newest first (as `GET /v1/charges?reference=`).
    pub fn charges_for(&self, reference: &str) -> Vec<Charge> {
        self.core().lock().charges_by_reference(Some(reference))
    }

    /// How many charges with this reference were captured: the double-charge check.
    pub fn captured_count(&self, reference: &str) -> usize {
        self.charges_for(reference)
            .iter()
            .filter(|c| c.captured)
            .count()
    }

    /// Every refund, oldest first.
    pub fn refunds(&self) -> Vec<Refund> {
        let store = self.core().lock();
        let mut all: Vec<Refund> = store
            .charges()
            .iter()
            .flat_map(|c| c.refunds.iter().cloned())
            .collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        all
    }

    /// Refunds of the charges whose reference is `reference`, oldest first.
    pub fn refunds_for(&self, reference: &str) -> Vec<Refund> {
        let mut all: Vec<Refund> = self
            .charges_for(reference)
            .into_iter()
            .flat_map(|c| c.refunds)
            .collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        all
    }

    pub fn disputes(&self) -> Vec<Dispute> {
        self.core().lock().disputes().to_vec()
    }

    /// Opens a dispute on a captured charge (as `POST /v1/test/disputes`): emits
    /// `charge.dispute.created`.
    pub fn dispute(&self, charge_id: &str) -> anyhow::Result<Dispute> {
        let req = model::CreateDispute {
            charge: charge_id.to_owned(),
            reason: None,
        };
        let result = self.core().lock().create_dispute(&req, now_secs());
        match result {
            Ok((dispute, event)) => {
                webhook::dispatch(&self.inner.core, event);
                Ok(dispute)
            }
            Err(f) => bail!("{}", f.body),
        }
    }

    /// Every event emitted, oldest first (whether or not it was delivered).
    pub fn events(&self) -> Vec<Event> {
        self.core().lock().events().to_vec()
    }

    /// Every webhook delivery attempt, oldest first (the last 10,000).
    pub fn webhook_attempts(&self) -> Vec<WebhookAttempt> {
        self.core().lock().webhook_attempts()
    }

    /// Every API request received, oldest first (the last 10,000), with the status answered.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.core().lock().requests()
    }
}
