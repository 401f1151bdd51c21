//! Pure domain types and rules of the notification platform: channels, priorities, the
//! delivery state machine, the type registry, preferences and quiet hours, rate windows and the
//! retry policy. No IO here; everything is unit tested below.

use mercato_kernel::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

mercato_kernel::typed_id!(
    /// A notification (`ntf_…`).
    NotificationId,
    "ntf"
);
mercato_kernel::typed_id!(
    /// One delivery of a notification on one channel (`ndl_…`); also the stable message id sent
    /// to providers, so a resend after a crash is recognisable as the same message.
    DeliveryId,
    "ndl"
);
mercato_kernel::typed_id!(
    /// An in-app inbox item (`inb_…`).
    InboxItemId,
    "inb"
);
mercato_kernel::typed_id!(
    /// A registered push device (`dev_…`).
    DeviceId,
    "dev"
);
mercato_kernel::typed_id!(
    /// A bulk send (`nbt_…`).
    BatchId,
    "nbt"
);

/// A delivery channel.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
    InApp,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Push, Channel::InApp];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::InApp => "in_app",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Channels that interrupt a person (quiet hours and hourly limits apply). The in-app inbox
    /// is silent: it is never deferred.
    pub fn is_interruptive(self) -> bool {
        !matches!(self, Channel::InApp)
    }
}

/// A priority, which is also the lane (queue and workers) a delivery travels in.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    Normal,
    Promotional,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Promotional,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Promotional => "promotional",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Lanes whose jobs are handed to an in-process worker right after the accepting
    /// transaction commits (no queue poll on the path to the provider).
    pub fn is_express(self) -> bool {
        matches!(self, Priority::Critical | Priority::High)
    }
}

/// Status of one delivery (API.md "Delivery statuses").
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Processing,
    Deferred,
    Sent,
    Delivered,
    Opened,
    Read,
    Failed,
    Suppressed,
    Expired,
    Dead,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 11] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Processing,
        DeliveryStatus::Deferred,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Opened,
        DeliveryStatus::Read,
        DeliveryStatus::Failed,
        DeliveryStatus::Suppressed,
        DeliveryStatus::Expired,
        DeliveryStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Processing => "processing",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Opened => "opened",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Suppressed => "suppressed",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Still waiting for (or in) a provider call.
    pub fn is_queued(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Pending | DeliveryStatus::Processing | DeliveryStatus::Deferred
        )
    }

    /// Reached the provider (or the inbox).
    pub fn reached_provider(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Sent
                | DeliveryStatus::Delivered
                | DeliveryStatus::Opened
                | DeliveryStatus::Read
        )
    }

    /// Applies `event`; the only way a delivery changes status.
    pub fn transition(self, event: DeliveryEvent) -> Result<DeliveryStatus, InvalidTransition> {
        use DeliveryEvent as E;
        use DeliveryStatus as S;
        let next = match (self, event) {
            (S::Pending | S::Deferred, E::Claim) => S::Processing,
            // A lease that ran out (its worker died) is claimed again.
            (S::Processing, E::Reclaim) => S::Processing,
            (S::Processing, E::Sent) => S::Sent,
            (S::Processing, E::Retry) => S::Pending,
            (S::Pending | S::Processing, E::Defer) => S::Deferred,
            (S::Processing, E::Fail) => S::Failed,
            (S::Processing, E::Die) => S::Dead,
            (S::Pending | S::Deferred | S::Processing, E::Expire) => S::Expired,
            (S::Sent, E::Delivered) => S::Delivered,
            (S::Sent | S::Delivered, E::Opened) => S::Opened,
            (S::Sent | S::Delivered | S::Opened, E::Read) => S::Read,
            (S::Sent | S::Delivered, E::Bounce) => S::Failed,
            (S::Dead, E::Redrive) => S::Pending,
            (from, event) => return Err(InvalidTransition { from, event }),
        };
        Ok(next)
    }

    /// Every status from which `event` is allowed (used to make SQL updates conditional).
    pub fn sources_of(event: DeliveryEvent) -> Vec<DeliveryStatus> {
        DeliveryStatus::ALL
            .into_iter()
            .filter(|s| s.transition(event).is_ok())
            .collect()
    }

    /// `'a', 'b'` for an SQL `IN (…)` list of the statuses `event` may start from. The values are
    /// our own constants, never user input.
    pub fn sql_sources(event: DeliveryEvent) -> String {
        DeliveryStatus::sources_of(event)
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What can happen to a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryEvent {
    Claim,
    Reclaim,
    Sent,
    Retry,
    Defer,
    Fail,
    Die,
    Expire,
    Delivered,
    Opened,
    Read,
    Bounce,
    Redrive,
}

impl DeliveryEvent {
    pub const ALL: [DeliveryEvent; 13] = [
        DeliveryEvent::Claim,
        DeliveryEvent::Reclaim,
        DeliveryEvent::Sent,
        DeliveryEvent::Retry,
        DeliveryEvent::Defer,
        DeliveryEvent::Fail,
        DeliveryEvent::Die,
        DeliveryEvent::Expire,
        DeliveryEvent::Delivered,
        DeliveryEvent::Opened,
        DeliveryEvent::Read,
        DeliveryEvent::Bounce,
        DeliveryEvent::Redrive,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a delivery cannot go from {from:?} on {event:?}")]
pub struct InvalidTransition {
    pub from: DeliveryStatus,
    pub event: DeliveryEvent,
}

/// Why a channel was not used, or a delivery waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The user turned the channel (or this type on it) off.
    OptedOut,
    /// No address for the channel (no email, phone, active device, or user for the inbox).
    NoAddress,
    /// No provider is configured for the channel.
    NoProvider,
    /// None of the requested channels is allowed for the type.
    NoChannels,
    /// Deferred to the end of the user's quiet hours.
    QuietHours,
    /// Deferred to the next hourly window of the per-user limit.
    RateLimited,
    /// `expires_at` passed before the message could be sent.
    Expired,
    /// No template for this channel and locale.
    NoTemplate,
    /// The template failed to render with the given data.
    TemplateError,
    /// The provider said the device token is no longer registered.
    Unregistered,
    /// The provider reported a bounce.
    Bounced,
    /// The provider refused the message permanently.
    Rejected,
    /// Every attempt failed.
    RetriesExhausted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OptedOut => "opted_out",
            Reason::NoAddress => "no_address",
            Reason::NoProvider => "no_provider",
            Reason::NoChannels => "no_channels",
            Reason::QuietHours => "quiet_hours",
            Reason::RateLimited => "rate_limited",
            Reason::Expired => "expired",
            Reason::NoTemplate => "no_template",
            Reason::TemplateError => "template_error",
            Reason::Unregistered => "unregistered",
            Reason::Bounced => "bounced",
            Reason::Rejected => "rejected",
            Reason::RetriesExhausted => "retries_exhausted",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        [
            Reason::OptedOut,
            Reason::NoAddress,
            Reason::NoProvider,
            Reason::NoChannels,
            Reason::QuietHours,
            Reason::RateLimited,
            Reason::Expired,
            Reason::NoTemplate,
            Reason::TemplateError,
            Reason::Unregistered,
            Reason::Bounced,
            Reason::Rejected,
            Reason::RetriesExhausted,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

// ---------------------------------------------------------------------------------------------
// Type registry
// ---------------------------------------------------------------------------------------------

/// What the platform knows about a notification type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeSpec {
    pub name: String,
    /// Channels a message of this type may use (requested channels are intersected with these).
    pub channels: Vec<Channel>,
    /// Same user + type inside this window → the original notification. 0 = no type-level dedup.
    pub dedup_window_secs: u64,
    /// A `data` field whose value refines the type-level dedup key (e.g. `order_id`: two orders
    /// confirmed within a day are two messages; the same order confirmed twice is one).
    pub dedup_by: Option<String>,
    /// Critical types ignore opt-outs, quiet hours and hourly limits.
    pub critical: bool,
    /// Lane used when the request names no priority.
    pub priority: Priority,
}

/// A partial override of a type from configuration (`notify_types`, JSON).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeOverride {
    pub channels: Option<Vec<Channel>>,
    pub dedup_window_secs: Option<u64>,
    pub dedup_by: Option<Option<String>>,
    pub critical: Option<bool>,
    pub priority: Option<Priority>,
}

fn spec(
    name: &str,
    channels: &[Channel],
    dedup_window_secs: u64,
    dedup_by: Option<&str>,
    critical: bool,
    priority: Priority,
) -> TypeSpec {
    TypeSpec {
        name: name.to_owned(),
        channels: channels.to_vec(),
        dedup_window_secs,
        dedup_by: dedup_by.map(str::to_owned),
        critical,
        priority,
    }
}

/// The types built into the code (API.md "Notifications").
pub fn builtin_types() -> Vec<TypeSpec> {
    use Channel::*;
    use Priority::*;
    const DAY: u64 = 86_400;
    const HOUR: u64 = 3_600;
    vec![
        spec("otp", &[Sms, Email], 0, None, true, Critical),
        spec("email_verification", &[Email], 0, None, true, Critical),
        spec(
            "security_alert",
            &[Email, Sms, Push],
            0,
            None,
            true,
            Critical,
        ),
        spec(
            "order_confirmed",
            &[Email, Push, InApp],
            DAY,
            Some("order_id"),
            true,
            Critical,
        ),
        spec(
            "payment_failed",
            &[Email, Sms, Push, InApp],
            HOUR,
            Some("payment_id"),
            false,
            High,
        ),
        spec(
            "order_shipped",
            &[Email, Push, InApp],
            DAY,
            Some("order_id"),
            false,
            High,
        ),
        spec(
            "order_delivered",
            &[Email, Push, InApp],
            DAY,
            Some("order_id"),
            false,
            Normal,
        ),
        spec("refund_issued", &[Email, InApp], 0, None, false, Normal),
        spec(
            "return_approved",
            &[Email, InApp],
            DAY,
            Some("return_id"),
            false,
            Normal,
        ),
        spec(
            "low_stock",
            &[Email, InApp],
            HOUR,
            Some("sku"),
            false,
            Normal,
        ),
        spec(
            "webhook_disabled",
            &[Email, InApp],
            HOUR,
            Some("endpoint_id"),
            false,
            Normal,
        ),
        spec("welcome", &[Email, InApp], DAY, None, false, Normal),
        spec("account_update", &[Email, InApp], 0, None, false, Normal),
        spec(
            "order_update",
            &[Email, Push, InApp],
            0,
            None,
            false,
            Normal,
        ),
        spec(
            "promotional",
            &[Email, Push, InApp],
            DAY,
            Some("campaign_id"),
            false,
            Promotional,
        ),
    ]
}

/// Built-in types plus configured overrides.
#[derive(Clone, Debug)]
pub struct TypeRegistry {
    types: BTreeMap<String, TypeSpec>,
}

impl TypeRegistry {
    pub fn builtin() -> TypeRegistry {
        TypeRegistry {
            types: builtin_types()
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
        }
    }

    /// Applies overrides from configuration: `{"type": {channels?, dedup_window_secs?, dedup_by?,
    /// critical?, priority?}}`. A new type must name its channels.
    pub fn with_overrides(mut self, json: &str) -> anyhow::Result<TypeRegistry> {
        let overrides: BTreeMap<String, TypeOverride> = serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("notify_types is not valid: {e}"))?;
        for (name, o) in overrides {
            if !is_valid_type_name(&name) {
                anyhow::bail!("notify_types: {name:?} is not a valid type name (a-z, 0-9, _)");
            }
            let entry = match self.types.remove(&name) {
                Some(existing) => existing,
                None => {
                    let Some(channels) = &o.channels else {
                        anyhow::bail!("notify_types: the new type {name:?} must list its channels");
                    };
                    spec(&name, channels, 0, None, false, Priority::Normal)
                }
            };
            let mut t = entry;
            // An empty list turns the type off: its messages are recorded as suppressed.
            if let Some(c) = o.channels {
                t.channels = c;
            }
            if let Some(w) = o.dedup_window_secs {
                t.dedup_window_secs = w;
            }
            if let Some(d) = o.dedup_by {
                t.dedup_by = d;
            }
            if let Some(c) = o.critical {
                t.critical = c;
            }
            if let Some(p) = o.priority {
                t.priority = p;
            }
            self.types.insert(name, t);
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&TypeSpec> {
        self.types.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

/// Type and template names: 1..=64 of `a-z0-9_.-`, starting with a letter.
pub fn is_valid_type_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.' || b == b'-'
        })
}

/// Locales: `en`, `fr`, `pt-BR`, `zh-Hant-TW` (1..=35 of letters, digits and `-`).
pub fn is_valid_locale(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 35
        && s.as_bytes()[0].is_ascii_alphabetic()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

// ---------------------------------------------------------------------------------------------
// Preferences, quiet hours, channel resolution
// ---------------------------------------------------------------------------------------------

/// A time of day, `HH:MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub hour: i8,
    pub minute: i8,
}

impl TimeOfDay {
    pub fn parse(s: &str) -> Option<TimeOfDay> {
        let (h, m) = s.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let hour: i8 = h.parse().ok()?;
        let minute: i8 = m.parse().ok()?;
        ((0..24).contains(&hour) && (0..60).contains(&minute)).then_some(TimeOfDay { hour, minute })
    }

    fn minutes(self) -> i32 {
        i32::from(self.hour) * 60 + i32::from(self.minute)
    }

    pub fn format(self) -> String {
        format!("{:02}:{:02}", self.hour, self.minute)
    }
}

/// Quiet hours in the user's time zone. `start == end` means no quiet hours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// `HH:MM`, local time.
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start: String,
    /// `HH:MM`, local time; may be earlier than `start` (the window crosses midnight).
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub end: String,
    /// IANA time zone, e.g. `Europe/Paris`.
    pub time_zone: String,
}

impl QuietHours {
    /// Checks the fields; `Err` names the field and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if TimeOfDay::parse(&self.start).is_none() {
            return Err(("quiet_hours.start", "must be HH:MM (24 h)".into()));
        }
        if TimeOfDay::parse(&self.end).is_none() {
            return Err(("quiet_hours.end", "must be HH:MM (24 h)".into()));
        }
        if jiff::tz::TimeZone::get(&self.time_zone).is_err() {
            return Err((
                "quiet_hours.time_zone",
                "must be an IANA time zone such as Europe/Paris".into(),
            ));
        }
        Ok(())
    }

    /// When `now` falls inside the quiet window, the instant the window ends; `None` otherwise
    /// (or when the settings are invalid).
    pub fn deferral(&self, now: Timestamp) -> Option<Timestamp> {
        let start = TimeOfDay::parse(&self.start)?;
        let end = TimeOfDay::parse(&self.end)?;
        if start == end {
            return None;
        }
        let tz = jiff::tz::TimeZone::get(&self.time_zone).ok()?;
        let local = now.to_jiff().to_zoned(tz.clone());
        let minute_of_day = i32::from(local.hour()) * 60 + i32::from(local.minute());
        let (s, e) = (start.minutes(), end.minutes());
        let inside = if s < e {
            minute_of_day >= s && minute_of_day < e
        } else {
            minute_of_day >= s || minute_of_day < e
        };
        if !inside {
            return None;
        }
        // The end is today (local) when it is later than now, else tomorrow.
        let today = local.date();
        let end_date = if e > minute_of_day {
            today
        } else {
            today.tomorrow().ok()?
        };
        let end_local = end_date.at(end.hour, end.minute, 0, 0);
        // Ambiguous/skipped local times (DST) resolve to the later instant: never early.
        let zoned = end_local.to_zoned(tz).ok()?;
        Some(Timestamp::from_jiff(zoned.timestamp()))
    }
}

/// A user's notification preferences (API.md shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Per channel on/off; a missing channel is on.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub channels: BTreeMap<Channel, bool>,
    /// Per type, per channel on/off; missing entries are on.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub types: BTreeMap<String, BTreeMap<Channel, bool>>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
}

impl Preferences {
    pub fn allows(&self, type_name: &str, channel: Channel) -> bool {
        let channel_on = self.channels.get(&channel).copied().unwrap_or(true);
        let type_on = self
            .types
            .get(type_name)
            .and_then(|m| m.get(&channel))
            .copied()
            .unwrap_or(true);
        channel_on && type_on
    }
}

/// The channels a message will try, each with the reason it will not when suppressed.
/// `requested` empty means "the type's defaults".
pub fn resolve_channels(
    requested: &[Channel],
    spec: &TypeSpec,
    prefs: &Preferences,
) -> Vec<(Channel, Option<Reason>)> {
    let mut out = Vec::new();
    for c in &spec.channels {
        if !requested.is_empty() && !requested.contains(c) {
            continue;
        }
        if out.iter().any(|(x, _)| x == c) {
            continue;
        }
        let reason = (!spec.critical && !prefs.allows(&spec.name, *c)).then_some(Reason::OptedOut);
        out.push((*c, reason));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rate windows and retries
// ---------------------------------------------------------------------------------------------

pub const RATE_WINDOW_MICROS: i64 = 3_600_000_000;

/// Start of the hourly window holding `t`.
pub fn rate_window_start(t: Timestamp) -> Timestamp {
    let us = t.as_micros();
    Timestamp::from_micros(us - us.rem_euclid(RATE_WINDOW_MICROS))
}

/// The per-user hourly limit of a channel (`None` = unlimited).
#[derive(Clone, Copy, Debug)]
pub struct HourlyLimits {
    pub email: u32,
    pub sms: u32,
    pub push: u32,
}

impl HourlyLimits {
    pub fn of(&self, c: Channel) -> Option<u32> {
        match c {
            Channel::Email => Some(self.email),
            Channel::Sms => Some(self.sms),
            Channel::Push => Some(self.push),
            Channel::InApp => None,
        }
    }
}

/// Retry policy (API.md defaults): normal lanes retry with exponential backoff and jitter up to
/// `max_attempts` (5 attempts over ~30 min with a 2-minute base); the critical lane makes
/// `critical_attempts` fast attempts `critical_delay` apart per provider, then falls back to
/// the next provider; then the delivery is dead.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
    pub critical_attempts: u32,
    pub critical_delay: Duration,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    Retry {
        delay: Duration,
        provider_index: u32,
        provider_attempts: u32,
    },
    Dead,
}

impl RetryPolicy {
    /// `attempts`: attempts made so far including the failed one; `provider_attempts`: those
    /// made on the provider at `provider_index` (including the failed one).
    pub fn after_failure(
        &self,
        lane: Priority,
        attempts: u32,
        provider_index: u32,
        provider_attempts: u32,
        providers: u32,
    ) -> AfterFailure {
        if lane == Priority::Critical {
            if provider_attempts < self.critical_attempts.max(1) {
                return AfterFailure::Retry {
                    delay: self.critical_delay,
                    provider_index,
                    provider_attempts,
                };
            }
            if provider_index + 1 < providers {
                return AfterFailure::Retry {
                    delay: Duration::ZERO,
                    provider_index: provider_index + 1,
                    provider_attempts: 0,
                };
            }
            return AfterFailure::Dead;
        }
        if attempts < self.max_attempts.max(1) {
            AfterFailure::Retry {
                delay: mercato_kernel::resilience::backoff(attempts, self.base, self.max_delay),
                provider_index,
                provider_attempts,
            }
        } else {
            AfterFailure::Dead
        }
    }
}

/// The type-level dedup key of a message (`None` when the window is 0 or there is nobody to
/// dedup for).
pub fn type_dedup_key(
    spec: &TypeSpec,
    window_secs: u64,
    who: Option<&str>,
    data: &serde_json::Value,
) -> Option<String> {
    if window_secs == 0 {
        return None;
    }
    let who = who?;
    let mut key = format!("type:{}:{}", spec.name, who);
    if let Some(field) = &spec.dedup_by
        && let Some(v) = data.get(field)
    {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        key.push(':');
        key.push_str(&v);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_table_is_exactly_this() {
        use DeliveryEvent as E;
        use DeliveryStatus as S;
        let allowed: &[(S, E, S)] = &[
            (S::Pending, E::Claim, S::Processing),
            (S::Deferred, E::Claim, S::Processing),
            (S::Processing, E::Reclaim, S::Processing),
            (S::Processing, E::Sent, S::Sent),
            (S::Processing, E::Retry, S::Pending),
            (S::Pending, E::Defer, S::Deferred),
            (S::Processing, E::Defer, S::Deferred),
            (S::Processing, E::Fail, S::Failed),
            (S::Processing, E::Die, S::Dead),
            (S::Pending, E::Expire, S::Expired),
            (S::Deferred, E::Expire, S::Expired),
            (S::Processing, E::Expire, S::Expired),
            (S::Sent, E::Delivered, S::Delivered),
            (S::Sent, E::Opened, S::Opened),
            (S::Delivered, E::Opened, S::Opened),
            (S::Sent, E::Read, S::Read),
            (S::Delivered, E::Read, S::Read),
            (S::Opened, E::Read, S::Read),
            (S::Sent, E::Bounce, S::Failed),
            (S::Delivered, E::Bounce, S::Failed),
            (S::Dead, E::Redrive, S::Pending),
        ];
        let mut n = 0;
        for from in S::ALL {
            for event in E::ALL {
                let expected = allowed
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, t)| *t);
                match (from.transition(event), expected) {
                    (Ok(to), Some(t)) => {
                        assert_eq!(to, t, "{from:?} on {event:?}");
                        n += 1;
                    }
                    (Err(_), None) => {}
                    (got, want) => panic!("{from:?} on {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(n, allowed.len());
        // Terminal states stay terminal (apart from redriving the dead).
        for s in [S::Failed, S::Suppressed, S::Expired, S::Read] {
            assert!(E::ALL.iter().all(|e| s.transition(*e).is_err()), "{s:?}");
        }
    }

    #[test]
    fn sql_sources_lists_the_allowed_origins() {
        assert_eq!(
            DeliveryStatus::sql_sources(DeliveryEvent::Claim),
            "'pending', 'deferred'"
        );
        assert_eq!(
            DeliveryStatus::sql_sources(DeliveryEvent::Opened),
            "'sent', 'delivered'"
        );
    }

    #[test]
    fn names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::Value::String(s.as_str().into()))
            );
        }
        assert_eq!(Reason::parse("quiet_hours"), Some(Reason::QuietHours));
    }

    fn registry() -> TypeRegistry {
        TypeRegistry::builtin()
    }

    #[test]
    fn the_builtin_registry_has_every_api_type() {
        let r = registry();
        for t in [
            "otp",
            "security_alert",
            "order_confirmed",
            "payment_failed",
            "order_shipped",
            "order_delivered",
            "refund_issued",
            "return_approved",
            "low_stock",
            "welcome",
            "account_update",
            "order_update",
            "promotional",
        ] {
            assert!(r.get(t).is_some(), "{t}");
        }
        assert!(r.get("otp").is_some_and(|t| t.critical));
        assert!(r.get("promotional").is_some_and(|t| !t.critical));
    }

    #[test]
    fn overrides_change_and_add_types() {
        let r = registry()
            .with_overrides(
                r#"{"promotional": {"channels": ["push"], "dedup_window_secs": 0},
                    "flash_sale": {"channels": ["push", "in_app"], "priority": "promotional"}}"#,
            )
            .expect("overrides");
        let p = r.get("promotional").expect("promotional");
        assert_eq!(p.channels, vec![Channel::Push]);
        assert_eq!(p.dedup_window_secs, 0);
        assert_eq!(
            r.get("flash_sale").map(|t| t.priority),
            Some(Priority::Promotional)
        );
        assert!(registry().with_overrides(r#"{"x": {}}"#).is_err());
        assert!(
            registry()
                .with_overrides(r#"{"otp": {"sound": 1}}"#)
                .is_err()
        );
        assert!(registry().with_overrides("nope").is_err());
    }

    #[test]
    fn channels_are_requested_and_defaults_and_preferences() {
        let r = registry();
        let promo = r.get("promotional").expect("type");
        let mut prefs = Preferences::default();
        prefs
            .types
            .insert("promotional".into(), [(Channel::Email, false)].into());
        let got = resolve_channels(&[], promo, &prefs);
        assert_eq!(
            got,
            vec![
                (Channel::Email, Some(Reason::OptedOut)),
                (Channel::Push, None),
                (Channel::InApp, None)
            ]
        );
        // Requested ∩ defaults: sms is not a promotional channel.
        let got = resolve_channels(&[Channel::Sms, Channel::Push], promo, &prefs);
        assert_eq!(got, vec![(Channel::Push, None)]);
        // Critical types ignore opt-outs.
        prefs.channels.insert(Channel::Sms, false);
        let otp = r.get("otp").expect("type");
        let got = resolve_channels(&[Channel::Sms], otp, &prefs);
        assert_eq!(got, vec![(Channel::Sms, None)]);
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).expect("timestamp")
    }

    #[test]
    fn quiet_hours_defer_to_the_local_end_of_the_window() {
        let q = QuietHours {
            start: "22:00".into(),
            end: "08:00".into(),
            time_zone: "Europe/Paris".into(),
        };
        assert!(q.validate().is_ok());
        // 23:30 Paris (UTC+1 in January) → 08:00 Paris next day = 07:00Z.
        assert_eq!(
            q.deferral(ts("2024-01-10T22:30:00Z")),
            Some(ts("2024-01-11T07:00:00Z"))
        );
        // 03:00 Paris → 08:00 the same day.
        assert_eq!(
            q.deferral(ts("2024-01-11T02:00:00Z")),
            Some(ts("2024-01-11T07:00:00Z"))
        );
        // 12:00 Paris: not quiet.
        assert_eq!(q.deferral(ts("2024-01-11T11:00:00Z")), None);
        // Summer time: 08:00 Paris = 06:00Z.
        assert_eq!(
            q.deferral(ts("2024-07-10T23:00:00Z")),
            Some(ts("2024-07-11T06:00:00Z"))
        );
        // A window that does not cross midnight.
        let day = QuietHours {
            start: "13:00".into(),
            end: "14:00".into(),
            time_zone: "UTC".into(),
        };
        assert_eq!(
            day.deferral(ts("2024-01-10T13:59:00Z")),
            Some(ts("2024-01-10T14:00:00Z"))
        );
        assert_eq!(day.deferral(ts("2024-01-10T14:00:00Z")), None);
        let bad = QuietHours {
            start: "25:00".into(),
            end: "08:00".into(),
            time_zone: "Mars/Olympus".into(),
        };
        assert!(bad.validate().is_err());
        assert_eq!(bad.deferral(ts("2024-01-10T13:59:00Z")), None);
    }

    #[test]
    fn quiet_hours_never_end_early_across_a_dst_gap() {
        // 2024-03-31 02:00-03:00 does not exist in Paris; a window ending at 02:30 ends at 03:30 CEST
        // or later, never before 02:30 local.
        let q = QuietHours {
            start: "22:00".into(),
            end: "02:30".into(),
            time_zone: "Europe/Paris".into(),
        };
        let end = q.deferral(ts("2024-03-30T23:00:00Z")).expect("inside");
        assert!(end >= ts("2024-03-31T00:30:00Z"));
    }

    #[test]
    fn time_of_day_parses_strictly() {
        assert_eq!(
            TimeOfDay::parse("07:05"),
            Some(TimeOfDay { hour: 7, minute: 5 })
        );
        for bad in ["7:05", "24:00", "12:60", "ab:cd", "", "12:5", "-1:00"] {
            assert_eq!(TimeOfDay::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rate_windows_are_whole_hours() {
        let t = ts("2024-01-10T13:59:59Z");
        assert_eq!(rate_window_start(t), ts("2024-01-10T13:00:00Z"));
        assert_eq!(
            rate_window_start(ts("2024-01-10T14:00:00Z")),
            ts("2024-01-10T14:00:00Z")
        );
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(120),
            max_delay: Duration::from_secs(3600),
            critical_attempts: 3,
            critical_delay: Duration::from_secs(2),
        }
    }

    #[test]
    fn normal_retries_back_off_five_times_over_about_thirty_minutes() {
        let p = policy();
        let mut total = Duration::ZERO;
        for attempt in 1..5 {
            match p.after_failure(Priority::Normal, attempt, 0, attempt, 1) {
                AfterFailure::Retry { delay, .. } => total += delay,
                AfterFailure::Dead => panic!("attempt {attempt} should retry"),
            }
        }
        assert!(total <= Duration::from_secs(30 * 60), "{total:?}");
        assert!(total >= Duration::from_secs(15 * 60), "{total:?}");
        assert_eq!(
            p.after_failure(Priority::Normal, 5, 0, 5, 2),
            AfterFailure::Dead
        );
    }

    #[test]
    fn critical_retries_fast_then_falls_back_then_dies() {
        let p = policy();
        assert_eq!(
            p.after_failure(Priority::Critical, 1, 0, 1, 2),
            AfterFailure::Retry {
                delay: Duration::from_secs(2),
                provider_index: 0,
                provider_attempts: 1
            }
        );
        assert_eq!(
            p.after_failure(Priority::Critical, 3, 0, 3, 2),
            AfterFailure::Retry {
                delay: Duration::ZERO,
                provider_index: 1,
                provider_attempts: 0
            }
        );
        assert_eq!(
            p.after_failure(Priority::Critical, 6, 1, 3, 2),
            AfterFailure::Dead
        );
    }

    #[test]
    fn type_dedup_keys_refine_by_the_named_field() {
        let r = registry();
        let t = r.get("order_confirmed").expect("type");
        let data = serde_json::json!({"order_id": "ord_1"});
        assert_eq!(
            type_dedup_key(t, 60, Some("usr_1"), &data).as_deref(),
            Some("type:order_confirmed:usr_1:ord_1")
        );
        assert_eq!(type_dedup_key(t, 0, Some("usr_1"), &data), None);
        assert_eq!(type_dedup_key(t, 60, None, &data), None);
    }

    #[test]
    fn names_and_locales_are_checked() {
        assert!(is_valid_type_name("order_confirmed"));
        assert!(!is_valid_type_name("Order"));
        assert!(!is_valid_type_name("../etc"));
        assert!(is_valid_locale("pt-BR"));
        assert!(!is_valid_locale("en_US!"));
    }
}
