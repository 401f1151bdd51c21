//! Use cases: managing endpoints, fanning events out into deliveries, and the delivery worker.

use crate::model::{self, DeliveryStatus, EndpointId, EndpointStatus};
use crate::store::{
    AttemptOutcome, DeliveryRow, EndpointChanges, EndpointRow, NewDelivery, WebhookStore,
};
use mercato_events::webhooks::{EndpointDisabled, WebhookTest};
use mercato_kernel::Timestamp;
use mercato_kernel::clock::SharedClock;
use mercato_kernel::db::StoreError;
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::jobs::Outcome;
use mercato_kernel::outbox::{Event, EventPayload as _, NewEvent};
use mercato_kernel::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Policy, from the `webhooks_*` settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub allow_private_targets: bool,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub max_attempts: u32,
    pub disable_after: Duration,
    pub rotation_grace: Duration,
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("not found")]
    NotFound,
    #[error("invalid webhook url: {0}")]
    InvalidUrl(String),
    #[error("{0}")]
    Invalid(ApiError),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => WebhookError::NotFound,
            other => WebhookError::Unexpected(other.into()),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::NotFound => ApiError::not_found(),
            WebhookError::InvalidUrl(why) => ApiError::new(Code::InvalidWebhookUrl)
                .detail(why.clone())
                .field("url", why),
            WebhookError::Invalid(e) => e,
            WebhookError::Conflict(why) => ApiError::conflict(why),
            WebhookError::Unexpected(e) => ApiError::from(e),
        }
    }
}

pub struct Inner {
    pub store: WebhookStore,
    pub clock: SharedClock,
    pub cfg: WebhookConfig,
    pub http: reqwest::Client,
    pub node: String,
    pub wake: tokio::sync::Notify,
}

/// The webhooks service (cheap to clone).
#[derive(Clone)]
pub struct Webhooks {
    pub inner: Arc<Inner>,
}

/// A new endpoint as asked for.
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
}

/// Event types an endpoint may subscribe to (every registered type, and the test event).
fn known_types() -> Vec<&'static str> {
    let mut v = mercato_events::TYPES.to_vec();
    v.push(model::TEST_EVENT);
    v
}

fn check_events(events: &[String]) -> Result<(), WebhookError> {
    if events.is_empty() {
        return Err(WebhookError::Invalid(ApiError::invalid(
            "events",
            "subscribe to at least one event type or pattern",
        )));
    }
    if events.len() > model::MAX_PATTERNS {
        return Err(WebhookError::Invalid(ApiError::invalid(
            "events",
            format!("at most {} patterns", model::MAX_PATTERNS),
        )));
    }
    let known = known_types();
    for (i, p) in events.iter().enumerate() {
        if let Err(why) = model::check_pattern(p, &known) {
            return Err(WebhookError::Invalid(ApiError::invalid(
                format!("events[{i}]"),
                why,
            )));
        }
    }
    Ok(())
}

fn check_description(d: &Option<String>) -> Result<(), WebhookError> {
    if d.as_ref().is_some_and(|d| d.chars().count() > 500) {
        return Err(WebhookError::Invalid(ApiError::invalid(
            "description",
            "at most 500 characters",
        )));
    }
    Ok(())
}

/// Checks a target URL: http(s), no credentials, and — unless private targets are allowed —
/// a host whose every address is public (an IP literal is checked as it is).
pub async fn check_target(raw: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let url = model::check_url_shape(raw)?;
    if allow_private {
        return Ok(url);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![ip.into()],
        Some(url::Host::Ipv6(ip)) => vec![ip.into()],
        Some(url::Host::Domain(d)) => {
            let lookup = tokio::net::lookup_host((d.to_owned(), port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(a)) => a.map(|a: SocketAddr| a.ip()).collect(),
                _ => return Err(format!("the host {d} does not resolve")),
            }
        }
        None => return Err("the URL has no host".into()),
    };
    if addrs.is_empty() {
        return Err("the host does not resolve".into());
    }
    if let Some(ip) = addrs.iter().find(|ip| !model::is_public(**ip)) {
        return Err(format!(
            "the URL resolves to {ip}, a private, loopback or link-local address"
        ));
    }
    Ok(url)
}

/// A DNS resolver for deliveries that never hands out a non-public address (unless allowed):
/// checked when the connection is made, so a name that re-resolves to an internal address
/// after the endpoint was saved (DNS rebinding) is not reached.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || model::is_public(a.ip()))
                .collect();
            if found.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::other(
                    format!("{host} resolves to no public address"),
                ));
                return Err(e);
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// Builds the HTTP client of deliveries: rustls, the timeout, no redirects (a redirect could
/// point anywhere), the guarded resolver.
pub fn http_client(cfg: &WebhookConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Mercato-Webhooks/1")
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: cfg.allow_private_targets,
        }))
        .build()?)
}

impl Webhooks {
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    pub fn store(&self) -> &WebhookStore {
        &self.inner.store
    }

    pub async fn create(&self, req: NewEndpoint) -> Result<EndpointRow, WebhookError> {
        check_events(&req.events)?;
        check_description(&req.description)?;
        let url = check_target(&req.url, self.inner.cfg.allow_private_targets)
            .await
            .map_err(WebhookError::InvalidUrl)?;
        let now = self.now();
        let row = EndpointRow {
            id: EndpointId::new().into_string(),
            url: url.to_string(),
            events: req.events,
            description: req.description,
            status: EndpointStatus::Enabled,
            disabled_reason: None,
            secret: model::new_secret(),
            previous_secret: None,
            previous_secret_expires_at: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        self.inner.store.insert_endpoint(&row).await?;
        Ok(row)
    }

    pub async fn endpoint(&self, id: &str) -> Result<EndpointRow, WebhookError> {
        self.inner
            .store
            .endpoint(id)
            .await?
            .ok_or(WebhookError::NotFound)
    }

    pub async fn update(
        &self,
        id: &str,
        mut changes: EndpointChanges,
    ) -> Result<EndpointRow, WebhookError> {
        // Unknown endpoints are 404 before the body is judged.
        self.endpoint(id).await?;
        if let Some(e) = &changes.events {
            check_events(e)?;
        }
        if let Some(d) = &changes.description {
            check_description(d)?;
        }
        if let Some(u) = &changes.url {
            let url = check_target(u, self.inner.cfg.allow_private_targets)
                .await
                .map_err(WebhookError::InvalidUrl)?;
            changes.url = Some(url.to_string());
        }
        let row = self
            .inner
            .store
            .update_endpoint(id, &changes, self.now())
            .await?
            .ok_or(WebhookError::NotFound)?;
        if changes.status == Some(EndpointStatus::Enabled) {
            self.inner.wake.notify_one();
        }
        Ok(row)
    }

    pub async fn delete(&self, id: &str) -> Result<(), WebhookError> {
        if self.inner.store.delete_endpoint(id).await? {
            Ok(())
        } else {
            Err(WebhookError::NotFound)
        }
    }

    /// A new secret; the previous one keeps signing for the grace period.
    pub async fn rotate_secret(&self, id: &str) -> Result<EndpointRow, WebhookError> {
        let now = self.now();
        self.inner
            .store
            .rotate_secret(
                id,
                &model::new_secret(),
                now.plus(self.inner.cfg.rotation_grace),
                now,
            )
            .await?
            .ok_or(WebhookError::NotFound)
    }

    /// Queues a `webhook.test` event for this endpoint only.
    pub async fn send_test(&self, id: &str) -> Result<DeliveryRow, WebhookError> {
        let endpoint = self.endpoint(id).await?;
        let now = self.now();
        let payload = WebhookTest {
            endpoint_id: endpoint.id.clone(),
            message: "a test event sent from the admin API".into(),
        };
        let event = Event {
            id: mercato_kernel::id::new_id("evt"),
            event_type: WebhookTest::TYPE.into(),
            occurred_at: now,
            aggregate_type: WebhookTest::AGGREGATE.into(),
            aggregate_id: endpoint.id.clone(),
            correlation_id: mercato_kernel::http::current_request_id(),
            causation_id: None,
            version: 1,
            data: serde_json::to_value(&payload).map_err(anyhow::Error::from)?,
        };
        let id = model::DeliveryId::new().into_string();
        self.inner
            .store
            .insert_deliveries(
                &[NewDelivery {
                    id: id.clone(),
                    endpoint_id: endpoint.id,
                    event_id: event.id.clone(),
                    event_type: event.event_type.clone(),
                    payload: serde_json::to_string(&event).map_err(anyhow::Error::from)?,
                }],
                now,
            )
            .await?;
        self.inner.wake.notify_one();
        self.inner
            .store
            .delivery(&id)
            .await?
            .ok_or(WebhookError::NotFound)
    }

    /// Queues a dead or delivered delivery again (same event id, same body).
    pub async fn redeliver(&self, delivery_id: &str) -> Result<DeliveryRow, WebhookError> {
        match self.inner.store.redeliver(delivery_id, self.now()).await? {
            None => Err(WebhookError::NotFound),
            Some(false) => Err(WebhookError::Conflict(
                "the delivery is still pending or in flight".into(),
            )),
            Some(true) => {
                self.inner.wake.notify_one();
                self.inner
                    .store
                    .delivery(delivery_id)
                    .await?
                    .ok_or(WebhookError::NotFound)
            }
        }
    }

    /// Writes one delivery per enabled endpoint that subscribed to the event and existed when
    /// it occurred. Idempotent per (endpoint, event).
    pub async fn fan_out(&self, event: &Event) -> anyhow::Result<u64> {
        let endpoints = self.inner.store.enabled_endpoints().await?;
        let wanted: Vec<&EndpointRow> = endpoints
            .iter()
            .filter(|e| {
                e.created_at <= event.occurred_at && model::matches(&e.events, &event.event_type)
            })
            .collect();
        if wanted.is_empty() {
            return Ok(0);
        }
        let payload = serde_json::to_string(event)?;
        let deliveries: Vec<NewDelivery> = wanted
            .iter()
            .map(|e| NewDelivery {
                id: model::DeliveryId::new().into_string(),
                endpoint_id: e.id.clone(),
                event_id: event.id.clone(),
                event_type: event.event_type.clone(),
                payload: payload.clone(),
            })
            .collect();
        let n = self
            .inner
            .store
            .insert_deliveries(&deliveries, self.now())
            .await?;
        if n > 0 {
            self.inner.wake.notify_one();
        }
        Ok(n)
    }

    /// One step of the delivery worker: claims due deliveries, attempts them concurrently
    /// (outside any transaction), records each outcome.
    pub async fn try_execute_task(&self) -> anyhow::Result<Outcome> {
        let cfg = &self.inner.cfg;
        let now = self.now();
        let lease = cfg.timeout + Duration::from_secs(30);
        let claimed = self
            .inner
            .store
            .claim_due(now, now.plus(lease), &self.inner.node, 32)
            .await?;
        if claimed.is_empty() {
            return Ok(Outcome::Idle);
        }
        let results = futures::future::join_all(claimed.iter().map(|d| self.attempt(d))).await;
        for r in results {
            if let Err(e) = r {
                tracing::warn!(error = %format!("{e:#}"), "recording a webhook attempt failed");
            }
        }
        Ok(Outcome::Worked)
    }

    async fn attempt(&self, d: &DeliveryRow) -> anyhow::Result<()> {
        let cfg = &self.inner.cfg;
        let Some(endpoint) = self.inner.store.endpoint(&d.endpoint_id).await? else {
            return Ok(()); // deleted meanwhile (its deliveries went with it)
        };
        let started = Instant::now();
        let now = self.now();
        let (status_code, error) = self.send(&endpoint, d, now).await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let success = error.is_none();
        let done_now = self.now();
        let round = u32::try_from((d.attempts - d.round_start).max(1)).unwrap_or(u32::MAX);
        let retry_at = (!success && round < cfg.max_attempts)
            .then(|| done_now.plus(model::retry_delay(round, cfg.retry_base)));
        let outcome = AttemptOutcome {
            delivery_id: d.id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            attempt: d.attempts,
            status_code,
            latency_ms,
            error,
            success,
            retry_at,
        };
        metrics::counter!("webhook_attempts_total", "outcome" => if success { "delivered" } else { "failed" })
            .increment(1);
        let disable_before = done_now.minus(cfg.disable_after);
        let disabled = self
            .inner
            .store
            .record_attempt(&outcome, &self.inner.node, done_now, disable_before, |e| {
                NewEvent::of(&EndpointDisabled {
                    endpoint_id: e.id.clone(),
                    url: e.url.clone(),
                    reason: "failing".into(),
                    failing_since: e.failing_since.unwrap_or(done_now),
                })
            })
            .await?;
        if disabled {
            tracing::warn!(endpoint = %endpoint.id, url = %endpoint.url, "webhook endpoint disabled after failing");
        }
        Ok(())
    }

    /// One HTTP attempt: `(status code, error)`; no error means a 2xx.
    async fn send(
        &self,
        endpoint: &EndpointRow,
        d: &DeliveryRow,
        now: Timestamp,
    ) -> (Option<i64>, Option<String>) {
        // IP literals bypass the resolver: check them here (the URL may predate a setting change).
        let url = match model::check_url_shape(&endpoint.url) {
            Ok(u) => u,
            Err(e) => return (None, Some(e)),
        };
        if !self.inner.cfg.allow_private_targets {
            let literal: Option<std::net::IpAddr> = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(ip.into()),
                Some(url::Host::Ipv6(ip)) => Some(ip.into()),
                _ => None,
            };
            if let Some(ip) = literal
                && !model::is_public(ip)
            {
                return (None, Some(format!("{ip} is not a public address")));
            }
        }
        let timestamp = now.as_unix_secs();
        let body = d.payload.clone().into_bytes();
        let signature = model::signature_header(
            &endpoint.signing_secrets(now),
            &d.event_id,
            timestamp,
            &body,
        );
        let r = self
            .inner
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match r {
            Ok(resp) => {
                let status = resp.status();
                let code = Some(i64::from(status.as_u16()));
                if status.is_success() {
                    (code, None)
                } else {
                    (code, Some(format!("HTTP {}", status.as_u16())))
                }
            }
            Err(e) if e.is_timeout() => (None, Some("timed out".into())),
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg.truncate(500);
                (None, Some(msg))
            }
        }
    }

    /// The delivery worker until shutdown: woken at once by new work in this process, else
    /// polling for due retries and other processes' work.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut failures = 0u32;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let pause = match self.try_execute_task().await {
                Ok(Outcome::Worked) => {
                    failures = 0;
                    continue;
                }
                Ok(Outcome::Idle) => {
                    failures = 0;
                    self.inner.cfg.poll
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %format!("{e:#}"), "webhook delivery step failed");
                    mercato_kernel::resilience::backoff(
                        failures,
                        self.inner.cfg.poll.max(Duration::from_millis(100)),
                        Duration::from_secs(30),
                    )
                }
            };
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                stopped = shutdown.sleep(pause) => if stopped { break },
            }
        }
    }

    /// Whether a delivery is finished (for views).
    pub fn is_final(status: DeliveryStatus) -> bool {
        matches!(status, DeliveryStatus::Delivered | DeliveryStatus::Dead)
    }
}
