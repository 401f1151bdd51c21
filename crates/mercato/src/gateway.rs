//! The payment gateway this process talks to: an [`HttpGateway`] to `gateway_url`, or — when
//! that is unset — to a gateway simulator started in this process on an ephemeral loopback
//! port, whose webhooks come back to this process's own API at [`WEBHOOK_PATH`]. Also
//! `mercato gateway-sim`, the simulator as its own process.

use anyhow::Context as _;
use mercato_commerce::gateway::{HttpGateway, HttpGatewayConfig, PaymentGateway};
use mercato_gateway_sim::{GatewaySim, SimConfig};
use mercato_kernel::config::Settings;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Where the gateway POSTs its events, relative to this process's listener.
pub const WEBHOOK_PATH: &str = "/api/v1/webhooks/gateway";

/// The gateway client, the webhook secret to verify its events with, and the in-process
/// simulator when there is one.
#[derive(Clone)]
pub struct GatewaySetup {
    /// What payments call.
    pub client: Arc<dyn PaymentGateway>,
    /// The secret `verify_webhook` checks `Mercato-Signature` against: `gateway_webhook_secret`,
    /// or for the in-process simulator (when unset) a random secret shared by both sides.
    pub webhook_secret: String,
    /// The in-process simulator (`gateway_url` unset): tests inspect it and inject faults.
    pub simulator: Option<GatewaySim>,
}

impl std::fmt::Debug for GatewaySetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySetup")
            .field("client", &self.client.name())
            .field("simulator", &self.simulator)
            .finish_non_exhaustive()
    }
}

/// Connects to `gateway_url`, or starts the in-process simulator when it is unset.
pub async fn start_gateway(settings: &Settings) -> anyhow::Result<GatewaySetup> {
    let (base_url, webhook_secret, simulator, name) = match &settings.gateway_url {
        Some(url) => {
            let secret = settings
                .gateway_webhook_secret
                .clone()
                .context("gateway_webhook_secret must be set when gateway_url is set")?;
            (url.clone(), secret, None, "http")
        }
        None => {
            let secret = settings
                .gateway_webhook_secret
                .clone()
                .unwrap_or_else(|| format!("whsec_{}", mercato_kernel::id::random_hex(24)));
            let sim = GatewaySim::bind(
                &settings.gateway_sim_addr,
                SimConfig {
                    api_key: settings.gateway_api_key.clone(),
                    hang: Duration::from_millis(settings.gateway_sim_hang_ms),
                    latency: Duration::from_millis(settings.gateway_sim_latency_ms),
                    ..SimConfig::default()
                },
            )
            .await
            .context("starting the in-process gateway simulator")?;
            tracing::info!(url = %sim.base_url(), "in-process payment gateway simulator started");
            (sim.base_url(), secret, Some(sim), "simulator")
        }
    };
    let mut config = HttpGatewayConfig::new(base_url, settings.gateway_api_key.clone());
    config.timeout = Duration::from_millis(settings.gateway_timeout_ms.max(1));
    config.name = name.into();
    let client = HttpGateway::new(config).context("building the payment gateway client")?;
    Ok(GatewaySetup {
        client: Arc::new(client),
        webhook_secret,
        simulator,
    })
}

impl GatewaySetup {
    /// Sends the in-process simulator's webhooks to this process's API listening on
    /// `api_addr` (an unspecified address means loopback). No-op for an external gateway,
    /// which is configured on its side.
    pub fn point_webhooks_at(&self, api_addr: SocketAddr) {
        let Some(sim) = &self.simulator else {
            return;
        };
        let ip = match api_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let url = format!(
            "http://{}{WEBHOOK_PATH}",
            SocketAddr::new(ip, api_addr.port())
        );
        sim.set_webhook(url, self.webhook_secret.clone());
    }
}

/// `mercato gateway-sim`: flags, falling back on the `gateway_*` settings.
#[derive(clap::Args, Debug)]
pub struct GatewaySimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub addr: String,
    /// API key clients must send (default: `gateway_api_key`).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Where to POST events (e.g. http://127.0.0.1:8080/api/v1/webhooks/gateway).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Secret to sign events with (default: `gateway_webhook_secret`).
    #[arg(long)]
    pub webhook_secret: Option<String>,
    /// Latency added to every API request, ms (default: `gateway_sim_latency_ms`).
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// How long answers to tok_timeout* are held back, ms (default: `gateway_sim_hang_ms`).
    #[arg(long)]
    pub hang_ms: Option<u64>,
    /// Probability (0..1) of answering 500 before doing anything.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
}

/// Runs the simulator until Ctrl-C / SIGTERM.
pub async fn run_simulator(args: GatewaySimArgs, settings: &Settings) -> anyhow::Result<()> {
    let webhook_secret = args
        .webhook_secret
        .or_else(|| settings.gateway_webhook_secret.clone());
    if args.webhook_url.is_some() && webhook_secret.is_none() {
        anyhow::bail!("--webhook-url needs --webhook-secret (or MERCATO_GATEWAY_WEBHOOK_SECRET)");
    }
    // Installed before the simulator answers: a SIGTERM right after it is up stops it cleanly.
    let stop = crate::startup::shutdown_signal();
    let sim = GatewaySim::bind(
        &args.addr,
        SimConfig {
            api_key: args
                .api_key
                .unwrap_or_else(|| settings.gateway_api_key.clone()),
            webhook_url: args.webhook_url,
            webhook_secret,
            latency: Duration::from_millis(
                args.latency_ms.unwrap_or(settings.gateway_sim_latency_ms),
            ),
            hang: Duration::from_millis(args.hang_ms.unwrap_or(settings.gateway_sim_hang_ms)),
            failure_rate: args.failure_rate,
            ..SimConfig::default()
        },
    )
    .await?;
    println!(
        "Gateway simulator listening on {}  (API: {}/v1, webhooks: {})",
        sim.base_url(),
        sim.base_url(),
        sim.webhook_url().as_deref().unwrap_or("off")
    );
    stop.await;
    sim.stop().await;
    Ok(())
}
