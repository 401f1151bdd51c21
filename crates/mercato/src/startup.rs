//! Building and running the application: database, kernel, services, router, workers.

use crate::gateway::GatewaySetup;
use anyhow::Context as _;
use mercato_commerce::AppState;
use mercato_kernel::Kernel;
use mercato_kernel::clock::{SharedClock, SystemClock};
use mercato_kernel::config::Settings;
use mercato_kernel::db::{Db, DbOptions};
use mercato_kernel::jobs::{Outcome, run_worker};
use mercato_kernel::outbox::{BusConfig, EmbeddedBus, EventBus};
use mercato_kernel::ratelimit::MemoryRateLimiter;
use mercato_kernel::shutdown::{self, Shutdown, ShutdownTrigger};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Choices tests make that configuration does not.
#[derive(Default)]
pub struct BuildOptions {
    /// Inject a clock (tests move time forward); default is the wall clock.
    pub clock: Option<SharedClock>,
    /// Bind to this listener instead of `settings.addr` (tests pass port 0).
    pub listener: Option<TcpListener>,
}

/// A built application, bound to its port, not yet serving.
pub struct Application {
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    state: AppState,
    bus: Arc<EmbeddedBus>,
    notify: mercato_notify::Notifier,
    webhooks: mercato_webhooks::Webhooks,
    links: mercato_links::Links,
    live: mercato_live::Live,
    /// The dedicated short-link listener (`links_addr`).
    links_listener: Option<TcpListener>,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    runs_workers: bool,
    gateway: GatewaySetup,
}

/// Connects to the configured database and applies migrations.
pub async fn connect_database(settings: &Settings) -> anyhow::Result<Db> {
    let url = settings.effective_database_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    }
    let db = Db::connect(
        &url,
        &DbOptions {
            max_connections: settings.database_max_connections,
            group_commit: mercato_kernel::db::GroupCommitConfig {
                max_batch: settings.group_commit_max_batch.max(1),
                max_delay: Duration::from_millis(settings.group_commit_max_delay_ms),
            },
            ..DbOptions::default()
        },
    )
    .await?;
    db.migrate().await?;
    Ok(db)
}

/// Builds the shared kernel and every service (no listener, no workers): also used by the CLI.
pub async fn build_state(
    settings: Settings,
    clock: Option<SharedClock>,
) -> anyhow::Result<(AppState, Arc<EmbeddedBus>)> {
    let (state, bus, gw) = build_state_with_gateway(settings, clock).await?;
    if let Some(sim) = gw.simulator {
        sim.stop().await;
    }
    Ok((state, bus))
}

async fn build_state_with_gateway(
    settings: Settings,
    clock: Option<SharedClock>,
) -> anyhow::Result<(AppState, Arc<EmbeddedBus>, GatewaySetup)> {
    let db = connect_database(&settings).await?;
    let clock: SharedClock = clock.unwrap_or_else(|| Arc::new(SystemClock));
    let bus = Arc::new(EmbeddedBus::new(
        db.clone(),
        clock.clone(),
        BusConfig {
            max_attempts: settings.outbox_max_attempts,
            backoff_base: Duration::from_millis(settings.outbox_backoff_base_ms),
            poll_interval: Duration::from_millis(settings.outbox_poll_ms.max(1)),
            ..BusConfig::default()
        },
    ));
    let jwt_secret = mercato_commerce::identity::load_or_create_jwt_secret(
        settings.jwt_secret.as_deref(),
        &settings.data_dir,
    )?;
    let streams = Arc::new(mercato_kernel::streams::StreamLimits::new(
        settings.sse_max_streams_per_user,
        settings.sse_max_streams_per_ip,
    ));
    // Rate limits are shared by every node through Redis when it is configured (falling back
    // per node while it does not answer), else kept in this process.
    let rate_limiter: Arc<dyn mercato_kernel::ratelimit::RateLimiter> =
        match settings.redis_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Arc::new(
                mercato_kernel::ratelimit::RedisRateLimiter::connect(
                    url,
                    &settings.redis_key_prefix,
                    clock.clone(),
                    Duration::from_millis(250),
                )
                .await?,
            ),
            _ => Arc::new(MemoryRateLimiter::new(clock.clone())),
        };
    let kernel = Kernel {
        streams,
        settings: Arc::new(settings),
        db,
        clock: clock.clone(),
        bus: bus.clone(),
        rate_limiter,
        stock_gate: Arc::new(mercato_kernel::gate::MemoryStockGate::default()),
        failpoints: mercato_kernel::Failpoints::default(),
    };
    let gw = crate::gateway::start_gateway(&kernel.settings).await?;
    let state = AppState::build(
        kernel,
        &jwt_secret,
        gw.client.clone(),
        gw.webhook_secret.clone(),
    )?;
    // The fraud caches (rules, blocklist, model, features) before the first payment.
    state.fraud.refresh().await?;
    Ok((state, bus, gw))
}

impl Application {
    pub async fn build(settings: Settings, opts: BuildOptions) -> anyhow::Result<Application> {
        // Install the metrics recorder before anything records.
        let _ = mercato_kernel::telemetry::prometheus();
        let role = settings.process_role()?;
        let addr = settings.addr.clone();
        let (state, bus, gateway) = build_state_with_gateway(settings, opts.clock).await?;
        if role.runs_api() {
            // Each API node keeps its own search index, fed by its own durable consumer.
            state.search.open()?;
            bus.subscribe(state.search.indexer()?);
        }
        let listener = if role.runs_api() {
            Some(match opts.listener {
                Some(l) => l,
                None => TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?,
            })
        } else {
            None
        };
        let local_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        if let Some(addr) = local_addr {
            gateway.point_webhooks_at(addr);
        }
        let (trigger, shutdown) = shutdown::channel();
        let notify = crate::notify::build(&state, &bus, shutdown.clone())?;
        let webhooks = mercato_webhooks::build(
            state.kernel.db.clone(),
            state.kernel.clock.clone(),
            &state.kernel.settings,
        )?;
        bus.subscribe(mercato_webhooks::consumer(&webhooks));
        let links = mercato_links::build(
            state.kernel.db.clone(),
            state.kernel.clock.clone(),
            &state.kernel.settings,
        )?;
        bus.subscribe(mercato_links::consumer(&links));
        let live = mercato_live::build(
            &state.kernel,
            std::sync::Arc::new(crate::live::ShopDirectory::new(state.clone())),
            shutdown.clone(),
        );
        bus.subscribe(mercato_live::consumer(&live));
        let links_listener = match state.kernel.settings.links_addr.as_deref() {
            Some(a) if role.runs_api() && !a.trim().is_empty() => {
                let l = TcpListener::bind(a.trim())
                    .await
                    .with_context(|| format!("binding links_addr {a}"))?;
                links.set_dedicated_addr(l.local_addr()?);
                Some(l)
            }
            _ => None,
        };
        Ok(Application {
            listener,
            local_addr,
            state,
            bus,
            notify,
            webhooks,
            links,
            live,
            links_listener,
            trigger,
            shutdown,
            runs_workers: role.runs_workers(),
            gateway,
        })
    }

    /// The bound address (port 0 resolved), when this process serves the API.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn bus(&self) -> Arc<EmbeddedBus> {
        self.bus.clone()
    }

    /// The payment gateway client, its webhook secret, and the in-process simulator (when
    /// `gateway_url` is unset; its webhooks already point at this application's listener).
    pub fn gateway(&self) -> &GatewaySetup {
        &self.gateway
    }

    /// The notification platform.
    pub fn notify(&self) -> mercato_notify::Notifier {
        self.notify.clone()
    }

    /// Merchant webhooks.
    pub fn webhooks(&self) -> mercato_webhooks::Webhooks {
        self.webhooks.clone()
    }

    /// The URL shortener.
    pub fn links(&self) -> mercato_links::Links {
        self.links.clone()
    }

    /// Live streams.
    pub fn live(&self) -> mercato_live::Live {
        self.live.clone()
    }

    /// A handle that stops the application (same as SIGTERM).
    pub fn stopper(&self) -> ShutdownTrigger {
        self.trigger.clone()
    }

    fn spawn_workers(&self) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        let bus: Arc<dyn EventBus> = self.bus.clone();
        handles.push(tokio::spawn(bus.run(self.shutdown.clone())));
        handles.extend(self.notify.spawn_workers(self.shutdown.clone()));
        handles.push(tokio::spawn(
            self.webhooks.clone().run(self.shutdown.clone()),
        ));

        let sweep = Duration::from_secs(self.state.kernel.settings.sweep_every_secs.max(1));
        let carts = self.state.carts.clone();
        handles.push(tokio::spawn(run_worker(
            "guest-cart-expiry",
            sweep,
            self.shutdown.clone(),
            move || {
                let carts = carts.clone();
                async move { carts.expire_guest_carts().await }
            },
        )));

        let checkout = self.state.checkout.clone();
        handles.push(tokio::spawn(run_worker(
            "checkout-expiry",
            sweep,
            self.shutdown.clone(),
            move || {
                let checkout = checkout.clone();
                async move { checkout.expire_due().await }
            },
        )));
        let checkout = self.state.checkout.clone();
        handles.push(tokio::spawn(run_worker(
            "saga-recovery",
            sweep,
            self.shutdown.clone(),
            move || {
                let checkout = checkout.clone();
                async move { checkout.recover_stuck().await }
            },
        )));
        let checkout = self.state.checkout.clone();
        let reconcile = Duration::from_secs(self.state.kernel.settings.reconcile_every_secs.max(1));
        handles.push(tokio::spawn(run_worker(
            "payment-reconciliation",
            reconcile,
            self.shutdown.clone(),
            move || {
                let checkout = checkout.clone();
                async move { checkout.reconcile().await }
            },
        )));
        let payments = self.state.payments.clone();
        handles.push(tokio::spawn(run_worker(
            "refund-retry",
            Duration::from_secs(2),
            self.shutdown.clone(),
            move || {
                let payments = payments.clone();
                async move { payments.retry_refunds().await }
            },
        )));

        // Fraud: the feature store (and rules, blocklist, model caches) recomputed every
        // `fraud_features_refresh_secs`, the model retrained every `fraud_train_every_secs`.
        // Both first wait one period: build_state loaded the caches already.
        let settings = &self.state.kernel.settings;
        for (name, every, train) in [
            (
                "fraud-features",
                settings.fraud_features_refresh_secs.clamp(1, 3600),
                false,
            ),
            (
                "fraud-training",
                settings.fraud_train_every_secs.max(60),
                true,
            ),
        ] {
            let fraud = self.state.fraud.clone();
            let mut shutdown = self.shutdown.clone();
            let every = Duration::from_secs(every);
            handles.push(tokio::spawn(async move {
                if shutdown.sleep(every).await {
                    return;
                }
                run_worker(name, every, shutdown, move || {
                    let fraud = fraud.clone();
                    async move {
                        if train {
                            fraud.train_due().await
                        } else {
                            fraud.refresh().await
                        }
                    }
                })
                .await
            }));
        }

        let flash = self.state.flash_sales.clone();
        handles.push(tokio::spawn(run_worker(
            "flash-sales",
            Duration::from_secs(1),
            self.shutdown.clone(),
            move || {
                let flash = flash.clone();
                async move { flash.tick().await }
            },
        )));

        let inventory = self.state.inventory.clone();
        handles.push(tokio::spawn(run_worker(
            "reservation-expiry",
            sweep,
            self.shutdown.clone(),
            move || {
                let inventory = inventory.clone();
                async move { inventory.expire_due().await }
            },
        )));

        let db = self.state.kernel.db.clone();
        let clock = self.state.kernel.clock.clone();
        handles.push(tokio::spawn(run_worker(
            "idempotency-cleanup",
            Duration::from_secs(3600),
            self.shutdown.clone(),
            move || {
                let db = db.clone();
                let clock = clock.clone();
                async move {
                    let n = mercato_kernel::idempotency::cleanup(&db, clock.now()).await?;
                    if n > 0 {
                        tracing::info!(deleted = n, "expired idempotency keys removed");
                    }
                    Ok(Outcome::Idle)
                }
            },
        )));
        handles
    }

    /// Serves until `signal` resolves (or [`Application::stopper`] fires), then shuts down
    /// gracefully: stop accepting, finish in-flight requests, stop workers, close the database.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut workers = if self.runs_workers {
            self.spawn_workers()
        } else {
            Vec::new()
        };
        // Every node serving redirects runs its own click batcher and change poller (its
        // queue and cache are in process).
        if self.listener.is_some() {
            workers.extend(self.links.spawn_workers(self.shutdown.clone()));
        }
        // The search index closes last, on its own signal, after every consumer that feeds it
        // has stopped (else a late delivery would find it closed).
        let (search_trigger, search_stop) = shutdown::channel();
        let search = self.state.search.spawn(search_stop);
        let search_feed = match (&search, self.runs_workers) {
            (Some(_), false) => Some(
                self.state
                    .search
                    .spawn_feed(self.bus.clone(), self.shutdown.clone())?,
            ),
            _ => None,
        };
        let mut stop = self.shutdown.clone();
        let trigger = self.trigger;
        let server = match self.listener {
            Some(listener) => {
                let router = crate::routes::build_router(
                    self.state.clone(),
                    self.notify.clone(),
                    self.webhooks.clone(),
                    self.links.clone(),
                    self.live.clone(),
                );
                let mut stop_server = stop.clone();
                Some(tokio::spawn(async move {
                    axum::serve(
                        listener,
                        router.into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(async move { stop_server.wait().await })
                    .await
                }))
            }
            None => None,
        };
        let links_server = self.links_listener.map(|listener| {
            let router =
                crate::routes::build_links_router(&self.state.kernel.settings, self.links.clone());
            let mut stop_links = stop.clone();
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move { stop_links.wait().await })
                .await
            })
        });
        tokio::select! {
            _ = signal => {}
            _ = stop.wait() => {}
        }
        tracing::info!("shutting down: finishing in-flight requests and stopping workers");
        trigger.trigger();
        if let Some(server) = server {
            match tokio::time::timeout(Duration::from_secs(30), server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
                Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
                Err(_) => tracing::warn!("in-flight requests did not finish within 30 s"),
            }
        }
        if let Some(server) = links_server {
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
        for w in workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
        if let Some(f) = search_feed {
            let _ = tokio::time::timeout(Duration::from_secs(10), f).await;
        }
        search_trigger.trigger();
        if let Some(s) = search {
            let _ = tokio::time::timeout(Duration::from_secs(30), s).await;
        }
        if let Some(sim) = self.gateway.simulator {
            sim.stop().await;
        }
        self.state.kernel.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM. The SIGTERM handler is installed when this is called, not
/// when the future is first polled: call it before the listener answers, so a SIGTERM sent
/// right after the first response is a graceful stop rather than the default kill.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => futures::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = futures::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
}
