//! Merchant webhooks: the shop's events delivered to merchants' HTTP endpoints, signed per the
//! Standard Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//! Depends on the kernel and the event contract only.
//!
//! Pipeline: a durable bus consumer (`webhooks-fanout`) turns each event into one delivery row
//! per enabled endpoint that subscribed to it (and existed when it occurred) — written in one
//! transaction, unique per (endpoint, event), so a redelivered event changes nothing. The
//! delivery worker claims due rows with a lease, POSTs the event envelope outside any
//! transaction, and records the attempt (status code, latency, error). A 2xx within the
//! timeout is success; otherwise the delivery is retried with exponential backoff and jitter
//! (`webhooks_retry_base_ms`, doubling, capped at 240× the base) until `webhooks_max_attempts`,
//! then `dead` (redeliverable through the admin API).
//!
//! Invariants:
//! - nothing is lost on a restart: deliveries are rows, claimed with a lease that a crashed
//!   worker's successor takes over; the receiver may see an event twice, never zero times,
//!   always under the same `webhook-id` (the event id) to deduplicate on;
//! - no network I/O inside a transaction;
//! - targets are http(s) and public unless `webhooks_allow_private_targets`: checked when an
//!   endpoint is saved and again at every connection (a resolver that never hands out a
//!   non-public address; IP literals checked before sending; no redirects followed);
//! - an endpoint failing every attempt for `webhooks_disable_after_secs` (3 days) is disabled
//!   and `webhook.endpoint_disabled` is emitted in the same transaction (notifications tell
//!   the admins).
//!
//! Consumes every event type. Emits `webhook.endpoint_disabled`.
#![forbid(unsafe_code)]

pub mod http;
pub mod model;
pub mod service;
pub mod store;

pub use http::router;
pub use service::{WebhookConfig, WebhookError, Webhooks};

use mercato_kernel::clock::SharedClock;
use mercato_kernel::config::Settings;
use mercato_kernel::db::Db;
use mercato_kernel::outbox::{Event, EventHandler};
use std::sync::Arc;
use std::time::Duration;

impl WebhookConfig {
    /// Reads the `webhooks_*` settings.
    pub fn from_settings(s: &Settings) -> WebhookConfig {
        WebhookConfig {
            allow_private_targets: s.webhooks_allow_private_targets,
            timeout: Duration::from_millis(s.webhooks_timeout_ms.max(1)),
            retry_base: Duration::from_millis(s.webhooks_retry_base_ms.max(1)),
            max_attempts: s.webhooks_max_attempts.max(1),
            disable_after: Duration::from_secs(s.webhooks_disable_after_secs.max(1)),
            rotation_grace: Duration::from_secs(s.webhooks_rotation_grace_secs),
            poll: Duration::from_millis(s.outbox_poll_ms.max(1)),
        }
    }
}

/// Builds the service from settings.
pub fn build(db: Db, clock: SharedClock, settings: &Settings) -> anyhow::Result<Webhooks> {
    let cfg = WebhookConfig::from_settings(settings);
    let http = service::http_client(&cfg)?;
    Ok(Webhooks {
        inner: Arc::new(service::Inner {
            store: store::WebhookStore::new(db),
            clock,
            cfg,
            http,
            node: mercato_kernel::id::new_id("node"),
            wake: tokio::sync::Notify::new(),
        }),
    })
}

/// The durable consumer name of the fan-out.
pub const CONSUMER: &str = "webhooks-fanout";

struct FanOut(Webhooks);

#[async_trait::async_trait]
impl EventHandler for FanOut {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn interested_in(&self, _event_type: &str) -> bool {
        true
    }

    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        self.0.fan_out(event).await.map(|_| ())
    }
}

/// The bus consumer that turns events into deliveries.
pub fn consumer(webhooks: &Webhooks) -> Arc<dyn EventHandler> {
    Arc::new(FanOut(webhooks.clone()))
}
