//! Mercato's notification platform: email (SMTP), SMS and push (HTTP providers) and an in-app
//! inbox (with live SSE), fed by an HTTP API and by commerce events. Usable standalone: it
//! depends on the kernel only; who a user is comes through the [`Directory`] trait.
//!
//! Pipeline of one request: accept → dedupe (`request_id`, then user + type inside the type's
//! window) → resolve channels (requested ∩ type defaults ∩ preferences; critical types ignore
//! opt-outs) → quiet hours (defer to the end of the window in the user's time zone) → hourly
//! limits per user and channel (defer to the next window, never drop) → render → enqueue per
//! channel in its priority lane → deliver → record. Every step's outcome is on the delivery rows
//! (`GET /notifications/{id}`).
//!
//! Invariants:
//! - a notification is written with all its deliveries in one transaction, with its dedup keys:
//!   a duplicate is answered with the original and nothing is sent again;
//! - no provider call happens inside a transaction; a delivery is claimed with a lease before the
//!   call and its outcome recorded after, so a crash leaves it claimable again (at least once),
//!   and the provider sees the same message id (the delivery id) on a resend;
//! - a delivery whose `expires_at` has passed is never handed to a provider (status `expired`);
//! - a failed delivery is retried per the lane's policy and then `dead`, never dropped; an admin
//!   can redrive it;
//! - promotional volume never delays critical traffic: separate lanes, batches, short
//!   transactions, and an express hand-off for critical and high jobs.
//!
//! Consumes `order.confirmed`, `payment.declined`, `order.shipped`, `order.delivered`,
//! `order.refunded`, `order.returned`, `inventory.low_stock`, `user.registered`,
//! `webhook.endpoint_disabled` ([`consumers`]). Emits no events.
#![forbid(unsafe_code)]

pub mod consumers;
pub mod directory;
pub mod http;
pub mod hub;
pub mod model;
pub mod providers;
pub mod service;
pub mod store;
pub mod templates;
pub mod webhook;
pub mod worker;

pub use directory::{Contact, Directory, NoDirectory};
pub use http::router;
pub use service::{Notifier, NotifyConfig, NotifyError, SendRequest};

use mercato_kernel::clock::SharedClock;
use mercato_kernel::config::Settings;
use mercato_kernel::db::Db;
use mercato_kernel::shutdown::Shutdown;
use model::{HourlyLimits, RetryPolicy, TypeRegistry};
use std::sync::Arc;
use std::time::Duration;

/// The state of the notification routes.
pub type NotifyState = Notifier;

impl NotifyConfig {
    /// Reads the `notify_*` settings.
    pub fn from_settings(s: &Settings) -> anyhow::Result<NotifyConfig> {
        let mut registry = TypeRegistry::builtin();
        if let Some(json) = s.notify_types.as_deref().filter(|j| !j.trim().is_empty()) {
            registry = registry.with_overrides(json)?;
        }
        if !model::is_valid_locale(&s.notify_default_locale) {
            anyhow::bail!("notify_default_locale is not a locale");
        }
        Ok(NotifyConfig {
            limits: HourlyLimits {
                email: s.notify_email_per_hour,
                sms: s.notify_sms_per_hour,
                push: s.notify_push_per_hour,
            },
            retry: RetryPolicy {
                max_attempts: s.notify_max_attempts.max(1),
                base: Duration::from_millis(s.notify_retry_base_ms),
                max_delay: Duration::from_millis(s.notify_retry_base_ms.saturating_mul(64)),
                critical_attempts: s.notify_critical_attempts.max(1),
                critical_delay: Duration::from_millis(s.notify_critical_retry_ms),
            },
            lease: Duration::from_secs(s.notify_lease_secs.max(1)),
            poll: Duration::from_millis(s.notify_poll_ms.max(1)),
            default_locale: s.notify_default_locale.clone(),
            webhook_secret: s.notify_webhook_secret.clone().filter(|x| !x.is_empty()),
            registry,
        })
    }
}

/// Builds the platform from settings: providers from `smtp_url`/`sms_url`/`push_url`, the
/// `notify_*` settings, and the application's directory of users. `shutdown` ends live streams.
pub fn build(
    db: Db,
    clock: SharedClock,
    settings: &Settings,
    directory: Arc<dyn Directory>,
    streams: Arc<mercato_kernel::streams::StreamLimits>,
    shutdown: Shutdown,
) -> anyhow::Result<Notifier> {
    let cfg = NotifyConfig::from_settings(settings)?;
    let providers = providers::Providers::from_config(&providers::ProviderConfig {
        smtp_url: settings.smtp_url.clone(),
        sms_url: settings.sms_url.clone(),
        push_url: settings.push_url.clone(),
        token: settings.notify_provider_token.clone(),
        email_from: settings.notify_email_from.clone(),
        timeout: Duration::from_millis(settings.notify_provider_timeout_ms.max(1)),
    })?;
    Ok(Notifier::new(service::Inner {
        store: store::NotifyStore::new(db.clone()),
        db,
        clock,
        cfg,
        providers,
        directory,
        env: templates::environment(),
        hub: hub::InboxHub::default(),
        node: mercato_kernel::id::new_id("node"),
        express: worker::Express::default(),
        shutdown,
        streams,
        last_purge: std::sync::atomic::AtomicI64::new(0),
    }))
}

/// The event consumer turning commerce events into notifications.
pub fn consumer(notifier: &Notifier) -> Arc<dyn mercato_kernel::outbox::EventHandler> {
    Arc::new(consumers::CommerceNotifications::new(notifier.clone()))
}
