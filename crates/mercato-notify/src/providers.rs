//! Providers: one [`Provider`] per configured endpoint, grouped per channel in an ordered
//! fallback list, each behind its own timeout and circuit breaker.
//!
//! Protocols (see docs/notifications.md):
//! - **email**: SMTP (lettre, pooled connections, no TLS for local peers). The delivery id goes
//!   out as the `Message-ID` header, so a resend after a crash carries the same id.
//! - **sms / push**: `POST <url>` with a JSON body, `Authorization: Bearer <notify_provider_token>`
//!   and `Idempotency-Key: <delivery id>`. 2xx = accepted (`{"id": …}` optional, and
//!   `{"unregistered": [tokens]}` for push); 410, or `{"status": "unregistered"}` = the device
//!   token is dead; 408/429/5xx/timeouts = transient; other 4xx = permanent refusal.
//!
//! Configuration: `smtp_url`, `sms_url`, `push_url` each take a comma-separated ordered list;
//! providers are named `<channel>-<n>` (`sms-1`, `sms-2`, `email-1`…), the names used in the
//! webhook path and on deliveries.

use crate::model::Channel;
use mercato_kernel::resilience::CircuitBreaker;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// What a provider is asked to send.
#[derive(Clone, Debug, Serialize)]
pub struct OutboundMessage {
    /// Stable across retries and resends: the delivery id.
    pub message_id: String,
    pub notification_id: String,
    pub channel: Channel,
    /// Email address, phone number, or push tokens.
    pub to: Vec<String>,
    pub subject: Option<String>,
    pub body: String,
}

/// A provider's answer when it accepted the message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's own id for the message, when it gives one.
    pub provider_ref: Option<String>,
    /// Push tokens the provider reported as no longer registered.
    pub unregistered: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying (timeouts, 5xx, throttling, connection errors).
    #[error("{0}")]
    Transient(String),
    /// The provider refused this message for good.
    #[error("{0}")]
    Permanent(String),
    /// Every device token is unregistered.
    #[error("device token unregistered")]
    Unregistered,
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn channel(&self) -> Channel;
    async fn send(&self, msg: &OutboundMessage) -> Result<Receipt, ProviderError>;
}

/// A provider with its breaker and timeout.
pub struct Slot {
    pub provider: Arc<dyn Provider>,
    pub breaker: CircuitBreaker,
    pub timeout: Duration,
}

impl Slot {
    pub fn new(provider: Arc<dyn Provider>, timeout: Duration) -> Slot {
        Slot {
            provider,
            // Ten consecutive failures open the circuit for 30 s; then one trial call.
            breaker: CircuitBreaker::new(10, Duration::from_secs(30)),
            timeout,
        }
    }

    /// Calls the provider under its timeout and records the outcome in the breaker.
    pub async fn call(&self, msg: &OutboundMessage) -> Result<Receipt, ProviderError> {
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.provider.send(msg)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Transient(format!(
                "timed out after {} ms",
                self.timeout.as_millis()
            ))),
        };
        match &result {
            Err(ProviderError::Transient(_)) => self.breaker.record_failure(),
            _ => self.breaker.record_success(),
        }
        let outcome = match &result {
            Ok(_) => "sent",
            Err(ProviderError::Transient(_)) => "transient_error",
            Err(ProviderError::Permanent(_)) => "rejected",
            Err(ProviderError::Unregistered) => "unregistered",
        };
        metrics::counter!("notify_provider_calls_total",
            "channel" => msg.channel.as_str(), "provider" => self.provider.name().to_owned(), "outcome" => outcome)
        .increment(1);
        metrics::histogram!("notify_provider_call_seconds",
            "channel" => msg.channel.as_str(), "provider" => self.provider.name().to_owned())
        .record(started.elapsed().as_secs_f64());
        result
    }
}

/// The providers of every channel, in fallback order.
#[derive(Default)]
pub struct Providers {
    pub email: Vec<Slot>,
    pub sms: Vec<Slot>,
    pub push: Vec<Slot>,
}

impl Providers {
    pub fn of(&self, channel: Channel) -> &[Slot] {
        match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
            Channel::Push => &self.push,
            Channel::InApp => &[],
        }
    }

    /// Whether a channel can deliver at all (in-app always can).
    pub fn available(&self, channel: Channel) -> bool {
        channel == Channel::InApp || !self.of(channel).is_empty()
    }

    pub fn find(&self, name: &str) -> Option<&Slot> {
        self.email
            .iter()
            .chain(&self.sms)
            .chain(&self.push)
            .find(|s| s.provider.name() == name)
    }

    /// Builds providers from the configured URL lists.
    pub fn from_config(cfg: &ProviderConfig) -> anyhow::Result<Providers> {
        let mut p = Providers::default();
        for (i, url) in split_urls(cfg.smtp_url.as_deref()).enumerate() {
            let smtp = SmtpProvider::new(
                &format!("email-{}", i + 1),
                url,
                &cfg.email_from,
                cfg.timeout,
            )?;
            p.email.push(Slot::new(Arc::new(smtp), cfg.timeout));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(256)
            .build()?;
        for (channel, urls) in [(Channel::Sms, &cfg.sms_url), (Channel::Push, &cfg.push_url)] {
            for (i, url) in split_urls(urls.as_deref()).enumerate() {
                let url = reqwest::Url::parse(url)
                    .map_err(|e| anyhow::anyhow!("{}_url {url:?}: {e}", channel.as_str()))?;
                let provider = HttpProvider {
                    name: format!("{}-{}", channel.as_str(), i + 1),
                    channel,
                    url,
                    token: cfg.token.clone(),
                    client: http.clone(),
                };
                let slot = Slot::new(Arc::new(provider), cfg.timeout);
                match channel {
                    Channel::Sms => p.sms.push(slot),
                    _ => p.push.push(slot),
                }
            }
        }
        Ok(p)
    }
}

fn split_urls(list: Option<&str>) -> impl Iterator<Item = &str> {
    list.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Provider settings taken from the configuration.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub smtp_url: Option<String>,
    pub sms_url: Option<String>,
    pub push_url: Option<String>,
    pub token: Option<String>,
    pub email_from: String,
    pub timeout: Duration,
}

// --- SMTP -------------------------------------------------------------------------------------

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

pub struct SmtpProvider {
    name: String,
    from: lettre::message::Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpProvider {
    /// `smtp://[user[:password]@]host[:port]` (port 25 by default). Plain SMTP: TLS is for a
    /// relay on another host, which a `smtps`/STARTTLS build of lettre would add.
    pub fn new(
        name: &str,
        url: &str,
        from: &str,
        timeout: Duration,
    ) -> anyhow::Result<SmtpProvider> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("smtp_url {url:?}: {e}"))?;
        if parsed.scheme() != "smtp" {
            anyhow::bail!("smtp_url must start with smtp:// (got {url:?})");
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("smtp_url {url:?} has no host"))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(parsed.port().unwrap_or(25))
            .timeout(Some(timeout))
            .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(32));
        if !parsed.username().is_empty() {
            builder =
                builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                    parsed.username().to_owned(),
                    parsed.password().unwrap_or("").to_owned(),
                ));
        }
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("notify_email_from {from:?}: {e}"))?;
        Ok(SmtpProvider {
            name: name.to_owned(),
            from,
            transport: builder.build(),
        })
    }
}

#[async_trait::async_trait]
impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn channel(&self) -> Channel {
        Channel::Email
    }
    async fn send(&self, msg: &OutboundMessage) -> Result<Receipt, ProviderError> {
        let to = msg
            .to
            .first()
            .ok_or_else(|| ProviderError::Permanent("no recipient".into()))?;
        let to: lettre::message::Mailbox = to
            .parse()
            .map_err(|e| ProviderError::Permanent(format!("bad recipient address: {e}")))?;
        let message_id = format!("<{}@mercato.notify>", msg.message_id);
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(msg.subject.clone().unwrap_or_default())
            .message_id(Some(message_id.clone()))
            .body(msg.body.clone())
            .map_err(|e| ProviderError::Permanent(format!("building the message: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(Receipt {
                provider_ref: Some(message_id),
                unregistered: Vec::new(),
            }),
            Err(e) if e.is_permanent() => Err(ProviderError::Permanent(format!("smtp: {e}"))),
            Err(e) => Err(ProviderError::Transient(format!("smtp: {e}"))),
        }
    }
}

// --- HTTP (SMS, push) -------------------------------------------------------------------------

pub struct HttpProvider {
    name: String,
    channel: Channel,
    url: reqwest::Url,
    token: Option<String>,
    client: reqwest::Client,
}

#[derive(Serialize)]
struct SmsBody<'a> {
    message_id: &'a str,
    to: &'a str,
    body: &'a str,
}

#[derive(Serialize)]
struct PushBody<'a> {
    message_id: &'a str,
    tokens: &'a [String],
    title: Option<&'a str>,
    body: &'a str,
    data: serde_json::Value,
}

#[async_trait::async_trait]
impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn channel(&self) -> Channel {
        self.channel
    }
    async fn send(&self, msg: &OutboundMessage) -> Result<Receipt, ProviderError> {
        let body = if self.channel == Channel::Sms {
            let to = msg
                .to
                .first()
                .ok_or_else(|| ProviderError::Permanent("no recipient".into()))?;
            serde_json::to_value(SmsBody {
                message_id: &msg.message_id,
                to,
                body: &msg.body,
            })
        } else {
            serde_json::to_value(PushBody {
                message_id: &msg.message_id,
                tokens: &msg.to,
                title: msg.subject.as_deref(),
                body: &msg.body,
                data: serde_json::json!({"notification_id": msg.notification_id, "message_id": msg.message_id}),
            })
        }
        .map_err(|e| ProviderError::Permanent(format!("encoding: {e}")))?;
        let mut req = self
            .client
            .post(self.url.clone())
            .header("idempotency-key", &msg.message_id)
            .json(&body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            ProviderError::Transient(if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "connection refused or unreachable".to_owned()
            } else {
                format!("request failed: {e}")
            })
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        let snippet: String = text.chars().take(200).collect();
        if status.as_u16() == 410
            || json["status"] == "unregistered"
            || json["error"] == "unregistered"
        {
            return Err(ProviderError::Unregistered);
        }
        if status.is_success() {
            let unregistered: Vec<String> = json["unregistered"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if !msg.to.is_empty() && msg.to.iter().all(|t| unregistered.contains(t)) {
                return Err(ProviderError::Unregistered);
            }
            return Ok(Receipt {
                provider_ref: json["id"].as_str().map(str::to_owned),
                unregistered,
            });
        }
        let what = format!("HTTP {}: {snippet}", status.as_u16());
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(ProviderError::Transient(what))
        } else {
            Err(ProviderError::Permanent(what))
        }
    }
}
