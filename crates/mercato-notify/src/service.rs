//! Use cases: the accept pipeline (dedupe → channels → quiet hours → hourly limits → render →
//! enqueue), bulk sends, reads, preferences, devices, templates, the inbox, provider callbacks
//! and dead-letter redrive. Delivery itself lives in [`crate::worker`].

use crate::directory::{Contact, Directory};
use crate::hub::InboxHub;
use crate::model::{
    Channel, DeliveryEvent, DeliveryStatus, HourlyLimits, Preferences, Priority, Reason,
    RetryPolicy, TypeRegistry, TypeSpec, is_valid_locale, is_valid_type_name, resolve_channels,
    type_dedup_key,
};
use crate::providers::Providers;
use crate::store::{DeliveryRow, InboxRow, NotificationRow, NotifyStore, TemplateRow};
use crate::templates::{self, DEFAULT_LOCALE, Rendered, TemplateError};
use mercato_kernel::Timestamp;
use mercato_kernel::clock::SharedClock;
use mercato_kernel::db::{Db, StoreError};
use mercato_kernel::error::{ApiError, Code, Validator};
use mercato_kernel::idempotency::ReplayWriter;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a `request_id` is remembered.
const REQUEST_ID_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Most recipients in one bulk request.
pub const BULK_MAX: usize = 10_000;
/// Recipients written per transaction in a bulk send (short transactions: the critical lane
/// shares SQLite's single writer).
const BULK_CHUNK: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{0}")]
    Invalid(ApiError),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for NotifyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => NotifyError::NotFound,
            other => NotifyError::Unexpected(other.into()),
        }
    }
}

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> ApiError {
        match e {
            NotifyError::Invalid(e) => e,
            NotifyError::NotFound => ApiError::not_found(),
            NotifyError::Unexpected(e) => ApiError::from(e),
        }
    }
}

type Result<T, E = NotifyError> = std::result::Result<T, E>;

/// Configuration of the platform (from `Settings`).
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    pub limits: HourlyLimits,
    pub retry: RetryPolicy,
    pub lease: Duration,
    pub poll: Duration,
    pub default_locale: String,
    pub webhook_secret: Option<String>,
    pub registry: TypeRegistry,
}

/// An explicit recipient (no user account).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub push_tokens: Option<Vec<String>>,
}

/// A validated request to notify someone.
#[derive(Clone, Debug, Default)]
pub struct SendRequest {
    pub user_id: Option<String>,
    pub recipient: Option<Recipient>,
    pub type_name: String,
    pub channels: Vec<Channel>,
    pub template: Option<String>,
    pub data: serde_json::Value,
    pub priority: Option<Priority>,
    pub request_id: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub dedup_window_secs: Option<u64>,
    pub locale: Option<String>,
}

/// One delivery as answered by accept.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedDelivery {
    pub id: String,
    pub channel: Channel,
    pub status: DeliveryStatus,
    pub reason: Option<Reason>,
    /// When a deferred or queued delivery is due.
    pub next_attempt_at: Option<Timestamp>,
}

/// The answer to `POST /notifications` (202).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: String,
    /// `accepted`, or `suppressed` when no channel will deliver.
    pub status: String,
    pub reason: Option<String>,
    /// True when this answer is an earlier notification (same `request_id`, or same user and
    /// type inside the dedup window): nothing was sent again.
    pub deduplicated: bool,
    pub deliveries: Vec<AcceptedDelivery>,
}

/// A delivery as shown by `GET /notifications/{id}`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub notification_id: String,
    pub channel: Channel,
    pub priority: Priority,
    pub provider: Option<String>,
    pub status: DeliveryStatus,
    pub reason: Option<Reason>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub sent_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub opened_at: Option<Timestamp>,
    pub read_at: Option<Timestamp>,
}

impl From<&DeliveryRow> for DeliveryView {
    fn from(d: &DeliveryRow) -> DeliveryView {
        DeliveryView {
            id: d.id.clone(),
            notification_id: d.notification_id.clone(),
            channel: d.channel,
            priority: d.lane,
            provider: d.provider.clone(),
            status: d.status,
            reason: d.reason,
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            next_attempt_at: d.status.is_queued().then_some(d.next_attempt_at),
            created_at: d.created_at,
            updated_at: d.updated_at,
            sent_at: d.sent_at,
            delivered_at: d.delivered_at,
            opened_at: d.opened_at,
            read_at: d.read_at,
        }
    }
}

/// `GET /notifications/{id}`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub priority: Priority,
    pub user_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub template: String,
    pub request_id: Option<String>,
    pub batch_id: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub deliveries: Vec<DeliveryView>,
    pub created_at: Timestamp,
}

/// One recipient of a bulk send.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRecipient {
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub push_tokens: Option<Vec<String>>,
    /// Merged over the batch's `data`.
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    pub request_id: Option<String>,
    pub locale: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BulkRejection {
    pub index: usize,
    pub error: String,
}

/// The answer to `POST /notifications/bulk` (202).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BulkAccepted {
    pub batch_id: String,
    /// Recipients accepted (including those answered by an earlier notification).
    pub accepted: usize,
    /// Of `accepted`, those that were duplicates of an earlier notification.
    pub deduplicated: usize,
    pub rejected: Vec<BulkRejection>,
}

/// An inbox item.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    pub id: String,
    /// Position in the user's inbox; the SSE event id.
    pub seq: i64,
    pub notification_id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub title: Option<String>,
    pub body: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub read: bool,
    pub read_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl From<InboxRow> for InboxItem {
    fn from(r: InboxRow) -> InboxItem {
        InboxItem {
            id: r.id,
            seq: r.seq,
            notification_id: r.notification_id,
            type_name: r.type_name,
            title: r.title,
            body: r.body,
            data: serde_json::from_str(&r.data).unwrap_or(serde_json::Value::Null),
            read: r.read_at.is_some(),
            read_at: r.read_at,
            created_at: r.created_at,
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Device {
    pub id: String,
    pub platform: String,
    pub token: String,
    pub active: bool,
    pub deactivated_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<crate::store::DeviceRow> for Device {
    fn from(d: crate::store::DeviceRow) -> Device {
        Device {
            id: d.id,
            platform: d.platform,
            token: d.token,
            active: d.active,
            deactivated_reason: d.deactivated_reason,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A template variant (stored, or built in).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TemplateVariant {
    pub channel: Channel,
    pub locale: String,
    pub subject: Option<String>,
    pub body: String,
    /// 0 for built-ins; stored variants start at 1 and grow with every save.
    pub version: i64,
    pub builtin: bool,
    pub updated_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TemplateView {
    pub name: String,
    pub variants: Vec<TemplateVariant>,
    /// Variables of the built-in sample data (empty for custom names).
    #[schema(value_type = Object)]
    pub sample_data: serde_json::Value,
}

/// A template to save.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    pub channel: Channel,
    /// Default: the default locale (`en`).
    pub locale: Option<String>,
    pub subject: Option<String>,
    pub body: String,
    /// Optimistic concurrency: the version this edit is based on (0 = new). Omitted = overwrite.
    pub version: Option<i64>,
    /// Example data: the variables the template may use (built-in names have their own).
    #[schema(value_type = Object)]
    pub sample_data: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewItem {
    pub channel: Channel,
    pub locale: String,
    pub subject: Option<String>,
    pub body: String,
}

/// A provider callback (`POST /webhooks/notifications/{provider}`).
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct ProviderEvent {
    /// The provider's event id (replays are acknowledged and ignored).
    pub id: String,
    /// `delivered`, `opened`, `bounced` or `unregistered`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The message id we sent (the delivery id).
    pub message_id: Option<String>,
    /// For `unregistered`: the dead device token.
    pub token: Option<String>,
    pub at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookOutcome {
    /// `applied`, `ignored` (unknown message or no change) or `duplicate`.
    pub status: &'static str,
}

/// What the planning step decided for one channel.
#[derive(Clone, Debug)]
struct PlannedDelivery {
    channel: Channel,
    status: DeliveryStatus,
    reason: Option<Reason>,
    address: Vec<String>,
    rendered: Option<Rendered>,
    error: Option<String>,
}

/// A request resolved against the directory, preferences and templates (outside any
/// transaction), ready to be written.
#[derive(Clone, Debug)]
struct Prepared {
    req: SendRequest,
    spec: TypeSpec,
    lane: Priority,
    template: String,
    locale: String,
    prefs: Preferences,
    planned: Vec<PlannedDelivery>,
    /// Who the hourly limits and type dedup count for.
    who: Option<String>,
    suppressed: Option<Reason>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub store: NotifyStore,
    pub clock: SharedClock,
    pub cfg: NotifyConfig,
    pub providers: Providers,
    pub directory: Arc<dyn Directory>,
    pub env: minijinja::Environment<'static>,
    pub hub: InboxHub,
    pub node: String,
    pub express: crate::worker::Express,
    pub shutdown: mercato_kernel::shutdown::Shutdown,
    /// Caps on open inbox streams per user and IP (shared with every SSE route).
    pub streams: Arc<mercato_kernel::streams::StreamLimits>,
    pub last_purge: std::sync::atomic::AtomicI64,
}

/// The notification platform's entry point (cheap to clone; also the axum state).
#[derive(Clone)]
pub struct Notifier {
    pub(crate) inner: Arc<Inner>,
}

fn invalid(field: &str, message: impl Into<String>) -> NotifyError {
    NotifyError::Invalid(ApiError::invalid(field, message))
}

fn visible_ascii(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Light checks of addresses: we are not the mail server, but garbage never reaches a provider.
pub fn is_plausible_email(s: &str) -> bool {
    s.len() <= 254
        && s.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        })
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
}

pub fn is_plausible_phone(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    (6..=20).contains(&digits)
        && s.len() <= 32
        && s.chars().enumerate().all(|(i, c)| {
            c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')') || (i == 0 && c == '+')
        })
}

fn check_tokens(v: &mut Validator, field: &str, tokens: &[String]) {
    v.check(
        (1..=20).contains(&tokens.len()),
        field,
        "give 1 to 20 push tokens",
    );
    for (i, t) in tokens.iter().enumerate() {
        v.check(
            visible_ascii(t, 4096),
            &format!("{field}[{i}]"),
            "a push token is 1-4096 visible ASCII characters",
        );
    }
}

impl SendRequest {
    /// Field checks that need no IO. `spec` is looked up separately (422
    /// `unknown_notification_type`).
    pub fn validate(&self) -> std::result::Result<(), ApiError> {
        let mut v = Validator::new();
        match (&self.user_id, &self.recipient) {
            (Some(_), Some(_)) => {
                v.add("recipient", "give either user_id or recipient, not both");
            }
            (None, None) => {
                v.add("user_id", "give user_id or recipient");
            }
            (Some(u), None) => {
                v.check(
                    mercato_kernel::id::is_valid("usr", u),
                    "user_id",
                    "not a user id",
                );
            }
            (None, Some(r)) => {
                v.check(
                    r.email.is_some() || r.phone.is_some() || r.push_tokens.is_some(),
                    "recipient",
                    "give at least one of email, phone, push_tokens",
                );
                if let Some(e) = &r.email {
                    v.check(
                        is_plausible_email(e),
                        "recipient.email",
                        "not an email address",
                    );
                }
                if let Some(p) = &r.phone {
                    v.check(
                        is_plausible_phone(p),
                        "recipient.phone",
                        "not a phone number (E.164, e.g. +14155550100)",
                    );
                }
                if let Some(t) = &r.push_tokens {
                    check_tokens(&mut v, "recipient.push_tokens", t);
                }
            }
        }
        if let Some(t) = &self.template {
            v.check(
                is_valid_type_name(t),
                "template",
                "a template name is 1-64 of a-z, 0-9, _ . - starting with a letter",
            );
        }
        if let Some(r) = &self.request_id {
            v.check(
                visible_ascii(r, 255),
                "request_id",
                "1-255 visible ASCII characters",
            );
        }
        if let Some(w) = self.dedup_window_secs {
            v.check(
                w <= 30 * 86_400,
                "dedup_window_secs",
                "at most 30 days (2592000)",
            );
        }
        if let Some(l) = &self.locale {
            v.check(
                is_valid_locale(l),
                "locale",
                "not a locale (e.g. en, pt-BR)",
            );
        }
        v.check(self.data.is_object(), "data", "must be a JSON object");
        v.finish()
    }
}

impl Notifier {
    pub(crate) fn new(inner: Inner) -> Notifier {
        Notifier {
            inner: Arc::new(inner),
        }
    }

    pub fn store(&self) -> &NotifyStore {
        &self.inner.store
    }

    pub fn registry(&self) -> &TypeRegistry {
        &self.inner.cfg.registry
    }

    pub fn hub(&self) -> &InboxHub {
        &self.inner.hub
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn spec(&self, type_name: &str) -> Result<TypeSpec> {
        self.inner
            .cfg
            .registry
            .get(type_name)
            .cloned()
            .ok_or_else(|| {
                NotifyError::Invalid(
                    ApiError::new(Code::UnknownNotificationType)
                        .detail(format!("no notification type {type_name:?}"))
                        .field("type", "unknown notification type")
                        .with("type", type_name.to_owned()),
                )
            })
    }

    // --- accept ---------------------------------------------------------------------------

    /// Template text for `name` on `channel` in `locale`: stored variant in the locale, then in
    /// the default locale, then the built-in.
    fn pick_template(
        &self,
        stored: &[TemplateRow],
        name: &str,
        channel: Channel,
        locale: &str,
    ) -> Option<(Option<String>, String)> {
        let default = self.inner.cfg.default_locale.as_str();
        for l in [locale, default] {
            if let Some(t) = stored
                .iter()
                .find(|t| t.channel == channel && t.locale == l)
            {
                return Some((t.subject.clone(), t.body.clone()));
            }
        }
        templates::builtin(name).map(|b| {
            let (s, body) = b.for_channel(channel);
            (s.map(str::to_owned), body.to_owned())
        })
    }

    async fn contact_of(&self, user_id: &str) -> Result<Contact> {
        self.inner
            .directory
            .contact(user_id)
            .await
            .map_err(NotifyError::Unexpected)?
            .ok_or_else(|| invalid("user_id", "no such user"))
    }

    /// Resolves everything that needs reads but no writes: the type, the recipient's addresses
    /// and preferences, the channels, and the rendered content.
    async fn prepare(
        &self,
        req: SendRequest,
        stored_templates: &mut HashMap<String, Vec<TemplateRow>>,
    ) -> Result<Prepared> {
        req.validate().map_err(NotifyError::Invalid)?;
        let spec = self.spec(&req.type_name)?;
        let template = req.template.clone().unwrap_or_else(|| spec.name.clone());
        let (contact, prefs, tokens, who) = match (&req.user_id, &req.recipient) {
            (Some(user_id), _) => {
                let contact = self.contact_of(user_id).await?;
                let prefs = self
                    .inner
                    .store
                    .preferences(user_id)
                    .await?
                    .unwrap_or_default();
                let tokens = self.inner.store.active_tokens(user_id).await?;
                (contact, prefs, tokens, Some(user_id.clone()))
            }
            (None, Some(r)) => {
                let who = r
                    .email
                    .as_ref()
                    .map(|e| format!("email:{}", e.to_ascii_lowercase()))
                    .or_else(|| r.phone.as_ref().map(|p| format!("phone:{p}")))
                    .or_else(|| {
                        r.push_tokens
                            .as_ref()
                            .and_then(|t| t.first().map(|t| format!("push:{t}")))
                    });
                (
                    Contact {
                        email: r.email.clone(),
                        phone: r.phone.clone(),
                        name: None,
                        locale: None,
                    },
                    Preferences::default(),
                    r.push_tokens.clone().unwrap_or_default(),
                    who,
                )
            }
            (None, None) => return Err(invalid("user_id", "give user_id or recipient")),
        };
        let locale = req
            .locale
            .clone()
            .or(contact.locale.clone())
            .unwrap_or_else(|| self.inner.cfg.default_locale.clone());
        let lane = req.priority.unwrap_or(spec.priority);
        if !stored_templates.contains_key(&template) {
            let rows = self.inner.store.templates(&template).await?;
            stored_templates.insert(template.clone(), rows);
        }
        let stored = stored_templates
            .get(&template)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut planned = Vec::new();
        let resolved = resolve_channels(&req.channels, &spec, &prefs);
        for (channel, reason) in &resolved {
            let address: Vec<String> = match channel {
                Channel::Email => contact.email.clone().into_iter().collect(),
                Channel::Sms => contact.phone.clone().into_iter().collect(),
                Channel::Push => tokens.clone(),
                Channel::InApp => req.user_id.clone().into_iter().collect(),
            };
            let mut p = PlannedDelivery {
                channel: *channel,
                status: DeliveryStatus::Pending,
                reason: *reason,
                address,
                rendered: None,
                error: None,
            };
            if p.reason.is_none() && !self.inner.providers.available(*channel) {
                p.reason = Some(Reason::NoProvider);
            }
            if p.reason.is_none() && p.address.is_empty() {
                p.reason = Some(Reason::NoAddress);
            }
            if p.reason.is_some() {
                p.status = DeliveryStatus::Suppressed;
                planned.push(p);
                continue;
            }
            match self.pick_template(stored, &template, *channel, &locale) {
                None => {
                    p.status = DeliveryStatus::Failed;
                    p.reason = Some(Reason::NoTemplate);
                    p.error = Some(format!(
                        "no template {template:?} for {} in {locale} or {}",
                        channel.as_str(),
                        self.inner.cfg.default_locale
                    ));
                }
                Some((subject, body)) => {
                    match templates::render(&self.inner.env, subject.as_deref(), &body, &req.data) {
                        Ok(r) => p.rendered = Some(r),
                        Err(e) => {
                            p.status = DeliveryStatus::Failed;
                            p.reason = Some(Reason::TemplateError);
                            p.error = Some(format!("template {template:?}: {e}"));
                        }
                    }
                }
            }
            planned.push(p);
        }
        let suppressed = if resolved.is_empty() {
            Some(Reason::NoChannels)
        } else if planned.iter().all(|p| {
            matches!(
                p.status,
                DeliveryStatus::Suppressed | DeliveryStatus::Failed
            )
        }) {
            planned.iter().find_map(|p| p.reason)
        } else {
            None
        };
        Ok(Prepared {
            req,
            spec,
            lane,
            template,
            locale,
            prefs,
            planned,
            who,
            suppressed,
        })
    }

    /// Writes a prepared request inside `tx`: dedup keys, schedule (quiet hours, hourly
    /// limits, expiry), the notification and its deliveries, inbox items. Returns the answer
    /// and the jobs to hand to the in-process express lane after commit; or the id of the
    /// earlier notification when this one is a duplicate (the caller must roll back).
    async fn write(
        &self,
        tx: &mut mercato_kernel::db::Tx,
        p: &Prepared,
        producer: &str,
        batch_id: Option<&str>,
        express_ok: bool,
    ) -> Result<Written> {
        let store = &self.inner.store;
        let now = self.now();
        let id = crate::model::NotificationId::new().into_string();
        if let Some(r) = &p.req.request_id
            && let Some(existing) = store
                .take_dedup_key(tx, &format!("req:{r}"), &id, now.plus(REQUEST_ID_TTL), now)
                .await?
        {
            return Ok(Written::Duplicate(existing));
        }
        let window = p.req.dedup_window_secs.unwrap_or(p.spec.dedup_window_secs);
        if let Some(key) = type_dedup_key(&p.spec, window, p.who.as_deref(), &p.req.data)
            && let Some(existing) = store
                .take_dedup_key(tx, &key, &id, now.plus_secs(window as i64), now)
                .await?
        {
            // The request id now stands for the earlier notification too (and is never left
            // pointing at one that was not written).
            if let Some(r) = &p.req.request_id {
                store
                    .point_dedup_key(tx, &format!("req:{r}"), &existing)
                    .await?;
            }
            return Ok(Written::Duplicate(existing));
        }
        let status = if p.suppressed.is_some() {
            "suppressed"
        } else {
            "accepted"
        };
        let notification = NotificationRow {
            id: id.clone(),
            type_name: p.spec.name.clone(),
            priority: p.lane,
            user_id: p.req.user_id.clone(),
            recipient: p
                .req
                .recipient
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
            template: p.template.clone(),
            data: p.req.data.to_string(),
            locale: Some(p.locale.clone()),
            request_id: p.req.request_id.clone(),
            status: status.to_owned(),
            reason: p.suppressed.map(|r| r.as_str().to_owned()),
            batch_id: batch_id.map(str::to_owned),
            producer: producer.to_owned(),
            expires_at: p.req.expires_at,
            created_at: now,
        };
        store.insert_notification(tx, &notification).await?;
        let mut answer = Accepted {
            id: id.clone(),
            status: status.to_owned(),
            reason: notification.reason.clone(),
            deduplicated: false,
            deliveries: Vec::new(),
        };
        let mut express = Vec::new();
        let mut inbox_user = None;
        for planned in &p.planned {
            let mut d = DeliveryRow {
                id: crate::model::DeliveryId::new().into_string(),
                notification_id: id.clone(),
                channel: planned.channel,
                lane: p.lane,
                user_id: p.req.user_id.clone(),
                status: planned.status,
                reason: planned.reason,
                address: serde_json::to_string(&planned.address).ok(),
                subject: planned.rendered.as_ref().and_then(|r| r.subject.clone()),
                body: planned.rendered.as_ref().map(|r| r.body.clone()),
                provider: None,
                provider_index: 0,
                provider_attempts: 0,
                provider_ref: None,
                attempts: 0,
                next_attempt_at: now,
                locked_until: None,
                lease_owner: None,
                last_error: planned.error.clone(),
                expires_at: p.req.expires_at,
                created_at: now,
                updated_at: now,
                sent_at: None,
                delivered_at: None,
                opened_at: None,
                read_at: None,
            };
            if d.status == DeliveryStatus::Pending {
                self.schedule(tx, p, &mut d, now).await?;
            }
            if d.status == DeliveryStatus::Pending && d.channel == Channel::InApp {
                // The inbox is our own store: delivered in this very transaction.
                let user_id = p.req.user_id.clone().unwrap_or_default();
                let rendered = planned.rendered.clone().unwrap_or(Rendered {
                    subject: None,
                    body: String::new(),
                });
                store
                    .append_inbox(
                        tx,
                        &InboxRow {
                            id: crate::model::InboxItemId::new().into_string(),
                            user_id: user_id.clone(),
                            seq: 0,
                            delivery_id: d.id.clone(),
                            notification_id: id.clone(),
                            type_name: p.spec.name.clone(),
                            title: rendered.subject,
                            body: rendered.body,
                            data: p.req.data.to_string(),
                            read_at: None,
                            created_at: now,
                        },
                    )
                    .await?;
                d.status = DeliveryStatus::Delivered;
                d.provider = Some("inbox".into());
                d.attempts = 1;
                d.sent_at = Some(now);
                d.delivered_at = Some(now);
                inbox_user = Some(user_id);
            } else if d.status == DeliveryStatus::Pending && express_ok && p.lane.is_express() {
                // Claimed right here: the express lane calls the provider as soon as this
                // commits; the lease makes a crash before that recoverable.
                let lease_until = now.plus(self.inner.cfg.lease);
                d.status = DeliveryStatus::Processing;
                d.attempts = 1;
                d.provider_attempts = 1;
                d.locked_until = Some(lease_until);
                d.next_attempt_at = lease_until;
                d.lease_owner = Some(self.inner.node.clone());
                express.push(d.clone());
            }
            store.insert_delivery(tx, &d).await?;
            answer.deliveries.push(AcceptedDelivery {
                id: d.id.clone(),
                channel: d.channel,
                status: if d.status == DeliveryStatus::Processing {
                    DeliveryStatus::Pending
                } else {
                    d.status
                },
                reason: d.reason,
                next_attempt_at: matches!(d.status, DeliveryStatus::Deferred)
                    .then_some(d.next_attempt_at),
            });
        }
        Ok(Written::New {
            answer,
            express,
            inbox_user,
        })
    }

    /// Quiet hours, hourly limits and expiry for one deliverable delivery.
    async fn schedule(
        &self,
        tx: &mut mercato_kernel::db::Tx,
        p: &Prepared,
        d: &mut DeliveryRow,
        now: Timestamp,
    ) -> Result<()> {
        if let Some(exp) = p.req.expires_at
            && exp <= now
        {
            d.status = DeliveryStatus::Expired;
            d.reason = Some(Reason::Expired);
            return Ok(());
        }
        if p.spec.critical || !d.channel.is_interruptive() {
            return Ok(());
        }
        let mut at = now;
        if let Some(q) = &p.prefs.quiet_hours
            && let Some(end) = q.deferral(now)
        {
            at = end;
            d.reason = Some(Reason::QuietHours);
        }
        if let (Some(limit), Some(who)) = (self.inner.cfg.limits.of(d.channel), &p.who) {
            let window = self
                .inner
                .store
                .reserve_rate_slot(tx, who, d.channel, limit, at)
                .await?;
            if window > at {
                at = window;
                d.reason = Some(Reason::RateLimited);
            }
        }
        if at > now {
            d.status = DeliveryStatus::Deferred;
            d.next_attempt_at = at;
            if let Some(exp) = p.req.expires_at
                && exp <= at
            {
                // It could only be sent after it expires: it never will be.
                d.status = DeliveryStatus::Expired;
                d.reason = Some(Reason::Expired);
            }
        }
        Ok(())
    }

    fn after_commit(&self, express: Vec<DeliveryRow>, inbox_user: Option<String>) {
        if let Some(u) = inbox_user {
            self.inner.hub.publish(&u);
        }
        for job in express {
            self.inner.express.dispatch(job);
        }
    }

    /// The accept pipeline for one request (`POST /notifications`, event consumers).
    pub async fn accept(
        &self,
        producer: &str,
        req: SendRequest,
        replay: Option<ReplayWriter<'_>>,
    ) -> Result<(Accepted, Option<Vec<u8>>)> {
        let started = std::time::Instant::now();
        let mut cache = HashMap::new();
        let prepared = self.prepare(req, &mut cache).await?;
        let express_ok = self.inner.express.enabled();
        let _turn = self.inner.store.gate(prepared.lane.is_express()).await;
        let mut tx = self.inner.db.begin().await.map_err(NotifyError::from)?;
        match self
            .write(&mut tx, &prepared, producer, None, express_ok)
            .await?
        {
            Written::Duplicate(existing) => {
                tx.rollback().await.map_err(StoreError::from)?;
                metrics::counter!("notify_deduplicated_total", "type" => prepared.spec.name.clone())
                    .increment(1);
                let answer = self.accepted_view(&existing).await?;
                Ok((answer, None))
            }
            Written::New {
                answer,
                express,
                inbox_user,
            } => {
                let body = match replay {
                    Some(w) => Some(w.write(&mut tx, &answer).await?),
                    None => None,
                };
                tx.commit().await.map_err(StoreError::from)?;
                self.after_commit(express, inbox_user);
                record_accept(&prepared, &answer, started);
                Ok((answer, body))
            }
        }
    }

    async fn accepted_view(&self, id: &str) -> Result<Accepted> {
        let n = self
            .inner
            .store
            .notification(id)
            .await?
            .ok_or(NotifyError::NotFound)?;
        let deliveries = self.inner.store.deliveries(id).await?;
        Ok(Accepted {
            id: n.id,
            status: n.status,
            reason: n.reason,
            deduplicated: true,
            deliveries: deliveries
                .iter()
                .map(|d| AcceptedDelivery {
                    id: d.id.clone(),
                    channel: d.channel,
                    status: d.status,
                    reason: d.reason,
                    next_attempt_at: d.status.is_queued().then_some(d.next_attempt_at),
                })
                .collect(),
        })
    }

    /// A bulk send: every recipient goes through the same pipeline; failures are per recipient.
    pub async fn bulk(
        &self,
        producer: &str,
        template_req: SendRequest,
        recipients: Vec<BulkRecipient>,
    ) -> Result<BulkAccepted> {
        // The shared part must be valid on its own (with a placeholder recipient).
        let mut probe = template_req.clone();
        probe.recipient = Some(Recipient {
            email: Some("probe@example.com".into()),
            ..Recipient::default()
        });
        probe.validate().map_err(NotifyError::Invalid)?;
        self.spec(&template_req.type_name)?;
        if recipients.is_empty() || recipients.len() > BULK_MAX {
            return Err(invalid(
                "recipients",
                format!("give 1 to {BULK_MAX} recipients"),
            ));
        }
        let batch_id = crate::model::BatchId::new().into_string();
        let mut rejected = Vec::new();
        let mut accepted = 0;
        let mut deduplicated = 0;
        let mut cache: HashMap<String, Vec<TemplateRow>> = HashMap::new();
        let express_ok = self.inner.express.enabled();
        let indexed: Vec<(usize, BulkRecipient)> = recipients.into_iter().enumerate().collect();
        for chunk in indexed.chunks(BULK_CHUNK) {
            let mut prepared = Vec::with_capacity(chunk.len());
            for (index, r) in chunk {
                let req = bulk_request(&template_req, r.clone());
                match self.prepare(req, &mut cache).await {
                    Ok(p) => prepared.push((*index, p)),
                    Err(NotifyError::Invalid(e)) => rejected.push(BulkRejection {
                        index: *index,
                        error: e.detail.unwrap_or_else(|| e.code.as_str().to_owned()),
                    }),
                    Err(other) => return Err(other),
                }
            }
            // Let other tasks (critical accepts) run between chunks.
            tokio::task::yield_now().await;
            let turn = self.inner.store.gate(false).await;
            let mut tx = self.inner.db.begin().await.map_err(NotifyError::from)?;
            let mut after = Vec::new();
            for (_, p) in &prepared {
                // A savepoint-free duplicate check: write() only inserts after both dedup keys
                // were taken, and a taken key for a duplicate is never written.
                match self
                    .write(&mut tx, p, producer, Some(&batch_id), express_ok)
                    .await?
                {
                    Written::Duplicate(_) => {
                        accepted += 1;
                        deduplicated += 1;
                    }
                    Written::New {
                        express,
                        inbox_user,
                        ..
                    } => {
                        accepted += 1;
                        after.push((express, inbox_user));
                    }
                }
            }
            tx.commit().await.map_err(StoreError::from)?;
            drop(turn);
            for (express, inbox_user) in after {
                self.after_commit(express, inbox_user);
            }
        }
        metrics::counter!("notify_bulk_recipients_total", "outcome" => "accepted")
            .increment(accepted as u64);
        Ok(BulkAccepted {
            batch_id,
            accepted,
            deduplicated,
            rejected,
        })
    }

    // --- reads ----------------------------------------------------------------------------

    pub async fn notification(&self, id: &str) -> Result<NotificationView> {
        let n = self
            .inner
            .store
            .notification(id)
            .await?
            .ok_or(NotifyError::NotFound)?;
        let deliveries = self.inner.store.deliveries(id).await?;
        Ok(NotificationView {
            id: n.id,
            type_name: n.type_name,
            priority: n.priority,
            user_id: n.user_id,
            status: n.status,
            reason: n.reason,
            template: n.template,
            request_id: n.request_id,
            batch_id: n.batch_id,
            expires_at: n.expires_at,
            deliveries: deliveries.iter().map(DeliveryView::from).collect(),
            created_at: n.created_at,
        })
    }

    // --- preferences ----------------------------------------------------------------------

    pub async fn preferences(&self, user_id: &str) -> Result<Preferences> {
        Ok(self
            .inner
            .store
            .preferences(user_id)
            .await?
            .unwrap_or_default())
    }

    pub async fn set_preferences(&self, user_id: &str, prefs: Preferences) -> Result<Preferences> {
        let mut v = Validator::new();
        for name in prefs.types.keys() {
            v.check(
                self.inner.cfg.registry.get(name).is_some(),
                &format!("types.{name}"),
                "unknown notification type",
            );
        }
        if let Some(q) = &prefs.quiet_hours
            && let Err((field, msg)) = q.validate()
        {
            v.add(field, msg);
        }
        v.finish().map_err(NotifyError::Invalid)?;
        self.inner
            .store
            .put_preferences(user_id, &prefs, self.now())
            .await?;
        Ok(prefs)
    }

    // --- devices --------------------------------------------------------------------------

    pub async fn register_device(
        &self,
        user_id: &str,
        platform: &str,
        token: &str,
    ) -> Result<Device> {
        let mut v = Validator::new();
        v.check(
            matches!(platform, "ios" | "android" | "web"),
            "platform",
            "one of ios, android, web",
        );
        v.check(
            visible_ascii(token, 4096),
            "token",
            "1-4096 visible ASCII characters",
        );
        v.finish().map_err(NotifyError::Invalid)?;
        let row = self
            .inner
            .store
            .upsert_device(
                crate::model::DeviceId::new().as_str(),
                user_id,
                platform,
                token,
                self.now(),
            )
            .await?;
        Ok(row.into())
    }

    pub async fn delete_device(&self, user_id: &str, id: &str) -> Result<()> {
        if self.inner.store.delete_device(user_id, id).await? {
            Ok(())
        } else {
            Err(NotifyError::NotFound)
        }
    }

    pub async fn devices(&self, user_id: &str) -> Result<Vec<Device>> {
        Ok(self
            .inner
            .store
            .devices(user_id)
            .await?
            .into_iter()
            .map(Device::from)
            .collect())
    }

    // --- templates ------------------------------------------------------------------------

    pub async fn template(&self, name: &str) -> Result<TemplateView> {
        let stored = self.inner.store.templates(name).await?;
        let builtin = templates::builtin(name);
        if stored.is_empty() && builtin.is_none() {
            return Err(NotifyError::NotFound);
        }
        let mut variants: Vec<TemplateVariant> = stored
            .iter()
            .map(|t| TemplateVariant {
                channel: t.channel,
                locale: t.locale.clone(),
                subject: t.subject.clone(),
                body: t.body.clone(),
                version: t.version,
                builtin: false,
                updated_at: Some(t.updated_at),
            })
            .collect();
        if let Some(b) = builtin {
            for c in Channel::ALL {
                if variants
                    .iter()
                    .any(|v| v.channel == c && v.locale == DEFAULT_LOCALE)
                {
                    continue;
                }
                let (s, body) = b.for_channel(c);
                variants.push(TemplateVariant {
                    channel: c,
                    locale: DEFAULT_LOCALE.into(),
                    subject: s.map(str::to_owned),
                    body: body.to_owned(),
                    version: 0,
                    builtin: true,
                    updated_at: None,
                });
            }
        }
        Ok(TemplateView {
            name: name.to_owned(),
            variants,
            sample_data: builtin
                .map(|b| (b.sample)())
                .unwrap_or(serde_json::json!({})),
        })
    }

    /// Validates and saves a variant. `create`: 409 when it exists already.
    pub async fn save_template(
        &self,
        actor: &str,
        name: &str,
        input: TemplateInput,
        create: bool,
    ) -> Result<TemplateVariant> {
        let locale = input
            .locale
            .clone()
            .unwrap_or_else(|| self.inner.cfg.default_locale.clone());
        let mut v = Validator::new();
        v.check(
            is_valid_locale(&locale),
            "locale",
            "not a locale (e.g. en, pt-BR)",
        );
        v.check(
            input.channel == Channel::Sms || input.subject.is_some(),
            "subject",
            "required for email, push and in-app templates",
        );
        if let Some(s) = &input.sample_data {
            v.check(s.is_object(), "sample_data", "must be a JSON object");
        }
        if let Some(ver) = input.version {
            v.check(ver >= 0, "version", "must be 0 or more");
        }
        v.finish().map_err(NotifyError::Invalid)?;
        let sample = input
            .sample_data
            .clone()
            .or_else(|| templates::builtin(name).map(|b| (b.sample)()));
        let check = |field: &'static str, source: &str| {
            templates::validate_source(&self.inner.env, field, source, sample.as_ref())
                .map_err(template_invalid)
        };
        if let Some(s) = &input.subject {
            check("subject", s)?;
        }
        check("body", &input.body)?;
        let expected = if create { Some(0) } else { input.version };
        let row = TemplateRow {
            name: name.to_owned(),
            channel: input.channel,
            locale: locale.clone(),
            subject: input.subject.clone(),
            body: input.body.clone(),
            version: 0,
            updated_by: actor.to_owned(),
            updated_at: self.now(),
        };
        match self.inner.store.save_template(&row, expected).await? {
            Some(saved) => Ok(TemplateVariant {
                channel: saved.channel,
                locale: saved.locale,
                subject: saved.subject,
                body: saved.body,
                version: saved.version,
                builtin: false,
                updated_at: Some(saved.updated_at),
            }),
            None if create => Err(NotifyError::Invalid(
                ApiError::conflict(format!(
                    "template {name} already has a {} variant in {locale}; use PUT to change it",
                    input.channel.as_str()
                ))
                .with("channel", input.channel.as_str())
                .with("locale", locale),
            )),
            None => Err(NotifyError::Invalid(
                ApiError::new(Code::TemplateVersionConflict)
                    .detail("the template changed since the version you edited; reload it"),
            )),
        }
    }

    /// Renders `name` with `data` on each channel (or the ones asked) without sending.
    pub async fn preview(
        &self,
        name: &str,
        data: serde_json::Value,
        channels: Vec<Channel>,
        locale: Option<String>,
    ) -> Result<Vec<PreviewItem>> {
        if !data.is_object() {
            return Err(invalid("data", "must be a JSON object"));
        }
        let locale = locale.unwrap_or_else(|| self.inner.cfg.default_locale.clone());
        if !is_valid_locale(&locale) {
            return Err(invalid("locale", "not a locale (e.g. en, pt-BR)"));
        }
        let stored = self.inner.store.templates(name).await?;
        if stored.is_empty() && templates::builtin(name).is_none() {
            return Err(NotifyError::NotFound);
        }
        let channels = if channels.is_empty() {
            Channel::ALL.to_vec()
        } else {
            channels
        };
        let mut out = Vec::new();
        for c in channels {
            let Some((subject, body)) = self.pick_template(&stored, name, c, &locale) else {
                continue;
            };
            let r = templates::render(&self.inner.env, subject.as_deref(), &body, &data)
                .map_err(template_invalid)?;
            out.push(PreviewItem {
                channel: c,
                locale: locale.clone(),
                subject: r.subject,
                body: r.body,
            });
        }
        Ok(out)
    }

    // --- inbox ----------------------------------------------------------------------------

    pub async fn inbox(
        &self,
        user_id: &str,
        unread_only: bool,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<InboxItem>> {
        Ok(self
            .inner
            .store
            .inbox(user_id, unread_only, before, limit)
            .await?
            .into_iter()
            .map(InboxItem::from)
            .collect())
    }

    pub async fn mark_read(&self, user_id: &str, id: &str) -> Result<InboxItem> {
        self.inner
            .store
            .mark_read(user_id, id, self.now())
            .await?
            .map(InboxItem::from)
            .ok_or(NotifyError::NotFound)
    }

    pub async fn read_all(&self, user_id: &str) -> Result<u64> {
        Ok(self.inner.store.read_all(user_id, self.now()).await?)
    }

    pub async fn unread_count(&self, user_id: &str) -> Result<i64> {
        Ok(self.inner.store.unread_count(user_id).await?)
    }

    // --- provider callbacks ---------------------------------------------------------------

    /// Verifies and applies a provider callback. `Err(Invalid)` (400) for an unknown provider,
    /// a missing/forged/stale signature, or a body that is not an event.
    pub async fn provider_callback(
        &self,
        provider: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookOutcome> {
        let refuse = |why: &str| {
            NotifyError::Invalid(ApiError::new(Code::InvalidWebhook).detail(why.to_owned()))
        };
        if self.inner.providers.find(provider).is_none() {
            return Err(refuse("unknown provider"));
        }
        let Some(secret) = &self.inner.cfg.webhook_secret else {
            return Err(refuse(
                "webhook signing is not configured (notify_webhook_secret)",
            ));
        };
        let now = self.now();
        crate::webhook::verify(secret.as_bytes(), signature, body, now.as_unix_secs())
            .map_err(|e| refuse(&e))?;
        let event: ProviderEvent =
            serde_json::from_slice(body).map_err(|_| refuse("the body is not a provider event"))?;
        if !visible_ascii(&event.id, 255) {
            return Err(refuse(
                "the event id must be 1-255 visible ASCII characters",
            ));
        }
        let kind = match event.event_type.as_str() {
            "delivered" => Some(DeliveryEvent::Delivered),
            "opened" => Some(DeliveryEvent::Opened),
            "bounced" => Some(DeliveryEvent::Bounce),
            "unregistered" => None,
            _ => return Err(refuse("unknown event type")),
        };
        let mut tx = self.inner.db.begin().await.map_err(NotifyError::from)?;
        let consumer = format!("notify-webhook:{provider}");
        if !mercato_kernel::outbox::mark_processed(&mut tx, &consumer, &event.id, now).await? {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(WebhookOutcome {
                status: "duplicate",
            });
        }
        let applied = match kind {
            Some(ev) => match &event.message_id {
                Some(m) if crate::model::DeliveryId::parse(m).is_some() => {
                    self.inner
                        .store
                        .apply_provider_event(
                            &mut tx,
                            m,
                            provider,
                            ev,
                            event.at.unwrap_or(now),
                            now,
                        )
                        .await?
                }
                _ => false,
            },
            None => match &event.token {
                Some(t) => self.inner.store.unregister_token(&mut tx, t, now).await?,
                None => false,
            },
        };
        tx.commit().await.map_err(StoreError::from)?;
        metrics::counter!("notify_provider_callbacks_total", "provider" => provider.to_owned(),
            "type" => event.event_type.clone(), "applied" => if applied { "yes" } else { "no" })
        .increment(1);
        Ok(WebhookOutcome {
            status: if applied { "applied" } else { "ignored" },
        })
    }

    // --- operations -----------------------------------------------------------------------

    pub async fn dead_letters(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<DeliveryView>> {
        Ok(self
            .inner
            .store
            .dead_letters(after, limit)
            .await?
            .iter()
            .map(DeliveryView::from)
            .collect())
    }

    pub async fn redrive(&self, actor: &str, id: &str) -> Result<DeliveryView> {
        match self.inner.store.redrive(id, actor, self.now()).await? {
            None => Err(NotifyError::NotFound),
            Some(false) => Err(NotifyError::Invalid(
                ApiError::new(Code::NotDeadLetter).detail("only dead deliveries can be redriven"),
            )),
            Some(true) => {
                self.inner.express.wake();
                let d = self
                    .inner
                    .store
                    .delivery(id)
                    .await?
                    .ok_or(NotifyError::NotFound)?;
                Ok(DeliveryView::from(&d))
            }
        }
    }
}

enum Written {
    New {
        answer: Accepted,
        express: Vec<DeliveryRow>,
        inbox_user: Option<String>,
    },
    Duplicate(String),
}

fn template_invalid(e: TemplateError) -> NotifyError {
    let mut err = ApiError::new(Code::TemplateInvalid)
        .detail(e.to_string())
        .field(e.field, e.message.clone());
    if let Some(line) = e.line {
        err = err.with("line", line);
    }
    NotifyError::Invalid(err.with("field", e.field))
}

fn bulk_request(shared: &SendRequest, r: BulkRecipient) -> SendRequest {
    let mut data = shared.data.clone();
    if let (Some(obj), Some(serde_json::Value::Object(extra))) = (data.as_object_mut(), r.data) {
        for (k, v) in extra {
            obj.insert(k, v);
        }
    }
    let recipient =
        (r.email.is_some() || r.phone.is_some() || r.push_tokens.is_some()).then_some(Recipient {
            email: r.email,
            phone: r.phone,
            push_tokens: r.push_tokens,
        });
    SendRequest {
        user_id: r.user_id,
        recipient,
        data,
        request_id: r.request_id,
        locale: r.locale.or_else(|| shared.locale.clone()),
        ..shared.clone()
    }
}

fn record_accept(p: &Prepared, answer: &Accepted, started: std::time::Instant) {
    metrics::counter!("notify_accepted_total", "type" => p.spec.name.clone(),
        "priority" => p.lane.as_str(), "status" => answer.status.clone())
    .increment(1);
    for d in &answer.deliveries {
        metrics::counter!("notify_deliveries_total", "channel" => d.channel.as_str(),
            "provider" => "-", "status" => d.status.as_str())
        .increment(1);
    }
    metrics::histogram!("notify_accept_seconds", "priority" => p.lane.as_str())
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_lightly() {
        assert!(is_plausible_email("ada@example.com"));
        assert!(!is_plausible_email("ada@example"));
        assert!(!is_plausible_email("a b@example.com"));
        assert!(!is_plausible_email("<a@b.c>"));
        assert!(is_plausible_phone("+1 415 555 0100"));
        assert!(!is_plausible_phone("12"));
        assert!(!is_plausible_phone("+1 415 555 0100; rm -rf"));
    }

    #[test]
    fn requests_need_exactly_one_recipient() {
        let base = SendRequest {
            type_name: "otp".into(),
            data: serde_json::json!({}),
            ..SendRequest::default()
        };
        assert!(base.validate().is_err());
        let both = SendRequest {
            user_id: Some("usr_1".into()),
            recipient: Some(Recipient {
                email: Some("a@b.co".into()),
                ..Recipient::default()
            }),
            ..base.clone()
        };
        assert!(both.validate().is_err());
        let ok = SendRequest {
            user_id: Some("usr_1".into()),
            ..base.clone()
        };
        assert!(ok.validate().is_ok());
        let bad_data = SendRequest {
            data: serde_json::json!([1]),
            ..ok
        };
        assert!(bad_data.validate().is_err());
    }

    #[test]
    fn bulk_recipients_merge_their_data_over_the_batch() {
        let shared = SendRequest {
            type_name: "promotional".into(),
            data: serde_json::json!({"title": "Sale", "message": "hi"}),
            ..SendRequest::default()
        };
        let r = bulk_request(
            &shared,
            BulkRecipient {
                email: Some("a@b.co".into()),
                data: Some(serde_json::json!({"message": "hello Ada"})),
                ..BulkRecipient::default()
            },
        );
        assert_eq!(r.data["title"], "Sale");
        assert_eq!(r.data["message"], "hello Ada");
        assert!(r.recipient.is_some());
    }
}
