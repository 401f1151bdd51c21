//! Settings: defaults, then a TOML file (`--config FILE`), then `MERCATO_<KEY>` environment
//! variables (environment wins), then command-line flags. Every key is flat so that the TOML
//! key, the env var and the docs table are the same name.

use anyhow::{Context as _, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Which parts of the system a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessRole {
    /// HTTP API and background workers.
    All,
    /// HTTP API only.
    Api,
    /// Background workers only (outbox delivery, sweepers, reconciliation).
    Worker,
}

impl ProcessRole {
    pub fn runs_api(self) -> bool {
        matches!(self, ProcessRole::All | ProcessRole::Api)
    }
    pub fn runs_workers(self) -> bool {
        matches!(self, ProcessRole::All | ProcessRole::Worker)
    }
}

impl std::str::FromStr for ProcessRole {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "all" => Ok(ProcessRole::All),
            "api" => Ok(ProcessRole::Api),
            "worker" => Ok(ProcessRole::Worker),
            _ => bail!("role must be all, api or worker"),
        }
    }
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr ;)*) => {
        /// All configuration. See the README's configuration table.
        #[derive(Clone, Debug, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $field: $default, )* }
            }
        }

        impl Settings {
            /// `(key, description)` for every setting, in declaration order (docs, `--help`).
            pub const KEYS: &'static [(&'static str, &'static str)] = &[
                $( (stringify!($field), concat!($($doc),*)), )*
            ];

            fn set_from_str(&mut self, key: &str, value: &str) -> anyhow::Result<bool> {
                match key {
                    $( stringify!($field) => {
                        self.$field = <$ty as FromSetting>::from_setting(value)
                            .with_context(|| format!("invalid value for MERCATO_{}", key.to_ascii_uppercase()))?;
                        Ok(true)
                    } )*
                    _ => Ok(false),
                }
            }
        }
    };
}

settings! {
    /// Address the HTTP server listens on.
    addr: String = "127.0.0.1:8080".into();
    /// Directory for the SQLite database, search index, secrets and media.
    data_dir: PathBuf = PathBuf::from("./data");
    /// `sqlite://…` or `postgres://…`; unset = SQLite at `<data_dir>/mercato.db`.
    database_url: Option<String> = None;
    /// Maximum database connections (PostgreSQL pool; SQLite readers are capped at 8).
    database_max_connections: u32 = 16;
    /// SQLite: most write transactions sharing one durable commit (1 = commit each on its own).
    group_commit_max_batch: usize = 64;
    /// SQLite: a commit batch stops admitting transactions once open this long, milliseconds.
    group_commit_max_delay_ms: u64 = 5;
    /// Redis URL for shared cache, rate limits and dedup (unset = in-process).
    redis_url: Option<String> = None;
    /// Prefix of every key Mercato writes in Redis (several shops can share one Redis).
    redis_key_prefix: String = "mercato:".to_owned();
    /// NATS URL for the event bus (unset = the embedded outbox log).
    nats_url: Option<String> = None;
    /// HS256 secret for access tokens; generated and persisted in the data dir when unset.
    jwt_secret: Option<String> = None;
    /// Lifetime of access tokens, seconds.
    jwt_ttl_secs: i64 = 3600;
    /// Argon2id memory cost in KiB (OWASP minimum 19456).
    password_hash_memory_kib: u32 = 19_456;
    /// Argon2id iterations.
    password_hash_iterations: u32 = 2;
    /// How long checkouts hold stock and prices, seconds.
    checkout_ttl_secs: i64 = 900;
    /// How often sweepers (expired checkouts, carts, reservations) run, seconds.
    sweep_every_secs: u64 = 30;
    /// Largest quantity of one SKU in a cart line.
    cart_max_line_quantity: i64 = 10;
    /// Days of inactivity after which a guest cart expires.
    guest_cart_ttl_days: i64 = 30;
    /// Currency of new carts when the client names none (ISO 4217).
    default_currency: String = "USD".into();
    /// Shipping rates: `method:COUNTRY=minor units`, comma-separated; `*` = any country.
    shipping_rates: String = "standard:*=999,standard:US=499,express:*=2499,express:US=1499".into();
    /// Tax rates in basis points: `CC-REGION=bps`, `CC=bps`, `*=bps`, comma-separated.
    tax_rates: String = "US-CA=725,US-NY=400,US-TX=625,US=0,CA=500,GB=2000,FR=2000,DE=1900,ES=2100,IT=2200,NL=2100,*=0".into();
    /// How often payment reconciliation runs, seconds.
    reconcile_every_secs: u64 = 60;
    /// A checkout saga untouched this long is resumed or compensated by the recovery worker, seconds.
    saga_stuck_after_secs: u64 = 30;
    /// Orders above this total (minor units) are blocked by the fraud check.
    fraud_block_amount: i64 = 5_000_000;
    /// Orders above this total (minor units) are accepted but flagged for review.
    fraud_review_amount: i64 = 1_000_000;
    /// Payment attempts per customer per hour above which the fraud check blocks.
    fraud_max_attempts_per_hour: i64 = 10;
    /// Risk score (per mille, 0..=1000) at or above which a payment is blocked.
    fraud_block_score_permille: i64 = 900;
    /// Risk score (per mille, 0..=1000) at or above which a paid order is held for review.
    fraud_review_score_permille: i64 = 500;
    /// Trusted header carrying the client's country (ISO 3166 alpha-2) for the geo-velocity rule; empty = none.
    fraud_country_header: String = "cf-ipcountry".into();
    /// How often the fraud feature store recomputes per-customer features, seconds (≤ 3600).
    fraud_features_refresh_secs: u64 = 300;
    /// How often the fraud model is retrained in the background, seconds.
    fraud_train_every_secs: u64 = 86_400;
    /// Fraud rules that start disabled until an admin enables them (comma-separated names, e.g. `card_country_mismatch`).
    fraud_rules_off: String = String::new();
    /// Payment gateway base URL (unset = the in-process simulator).
    gateway_url: Option<String> = None;
    /// Payment gateway request timeout, milliseconds.
    gateway_timeout_ms: u64 = 3000;
    /// SMTP server URL for email notifications.
    smtp_url: Option<String> = None;
    /// SMS provider endpoint.
    sms_url: Option<String> = None;
    /// Push provider endpoint.
    push_url: Option<String> = None;
    /// `pretty` or `json`.
    log_format: String = "pretty".into();
    /// Log filter (tracing env-filter syntax).
    log_level: String = "info".into();
    /// Process role: all, api or worker.
    role: String = "all".into();
    /// Per-request timeout, milliseconds (answered 503 request_timeout).
    request_timeout_ms: u64 = 30_000;
    /// Largest accepted request body, bytes.
    body_limit_bytes: usize = 1024 * 1024;
    /// Requests in flight above which new ones are shed with 503.
    max_in_flight_requests: usize = 2048;
    /// Requests per second allowed per client IP (burst = 2× this).
    rate_limit_ip_per_sec: u32 = 200;
    /// Requests per second allowed per authenticated principal (burst = 2× this).
    rate_limit_principal_per_sec: u32 = 100;
    /// Failed logins allowed per email per 15 minutes.
    login_failures_per_15min: u32 = 10;
    /// Guest checkouts (no account) allowed per client IP per hour.
    guest_checkouts_per_hour_per_ip: u32 = 30;
    /// Guest checkouts allowed per guest email per hour.
    guest_checkouts_per_hour_per_email: u32 = 10;
    /// Trust `X-Forwarded-For` for the client IP (only behind a trusted proxy).
    trust_forwarded_for: bool = false;
    /// Hours an idempotency key and its stored response are kept.
    idempotency_ttl_hours: i64 = 24;
    /// How long an in-flight Idempotency-Key claim is held without renewal (renewed every third of it while its request runs; after a crash the key is free again this soon), milliseconds.
    idempotency_lease_ms: u64 = 5_000;
    /// Open server-sent-event streams allowed per user (more → 429 `too_many_streams`).
    sse_max_streams_per_user: u32 = 100;
    /// Open server-sent-event streams allowed per client IP.
    sse_max_streams_per_ip: u32 = 1000;
    /// Attempts before an event delivery is dead-lettered.
    outbox_max_attempts: u32 = 8;
    /// Base of the exponential backoff between event delivery attempts, milliseconds.
    outbox_backoff_base_ms: u64 = 1000;
    /// How often idle bus workers poll, milliseconds.
    outbox_poll_ms: u64 = 100;
    /// API key sent to the payment gateway (and accepted by the simulator).
    gateway_api_key: String = "sk_test_mercato".into();
    /// Secret of the gateway's webhook signatures; required with `gateway_url` (unset = random per process for the in-process simulator).
    gateway_webhook_secret: Option<String> = None;
    /// How long the simulator holds back answers to `tok_timeout*`, milliseconds.
    gateway_sim_hang_ms: u64 = 10_000;
    /// Latency the simulator adds to every API request, milliseconds.
    gateway_sim_latency_ms: u64 = 0;
    /// Where the in-process gateway simulator listens (`host:port`; port 0 = any free port).
    gateway_sim_addr: String = "127.0.0.1:0".into();
    // --- notifications ---
    /// Emails per user per hour; more are deferred to the next hour (critical types bypass).
    notify_email_per_hour: u32 = 3;
    /// SMS per user per hour; more are deferred to the next hour (critical types bypass).
    notify_sms_per_hour: u32 = 2;
    /// Push messages per user per hour; more are deferred to the next hour (critical types bypass).
    notify_push_per_hour: u32 = 10;
    /// Timeout of one provider call (SMTP, SMS, push), milliseconds.
    notify_provider_timeout_ms: u64 = 5000;
    /// Bearer token sent to the SMS and push providers.
    notify_provider_token: Option<String> = None;
    /// HMAC-SHA256 secret of provider callbacks; unset = callbacks are refused.
    notify_webhook_secret: Option<String> = None;
    /// `From:` address of notification emails.
    notify_email_from: String = "Mercato <no-reply@mercato.local>".into();
    /// Attempts of a non-critical delivery before it is dead.
    notify_max_attempts: u32 = 5;
    /// Backoff base between attempts of non-critical deliveries, milliseconds (doubling, jittered).
    notify_retry_base_ms: u64 = 120_000;
    /// Attempts per provider of a critical delivery before the next provider is tried.
    notify_critical_attempts: u32 = 3;
    /// Pause between attempts of a critical delivery, milliseconds.
    notify_critical_retry_ms: u64 = 2000;
    /// Lease of a claimed delivery (a dead worker's job is retried after it), seconds.
    notify_lease_secs: u64 = 60;
    /// How often idle delivery lanes poll for due work, milliseconds.
    notify_poll_ms: u64 = 100;
    /// JSON overrides of the notification type registry (see docs/notifications.md).
    notify_types: Option<String> = None;
    /// Template locale used when a message names none.
    notify_default_locale: String = "en".into();
    /// How often staged search index changes are committed (made searchable), milliseconds.
    search_commit_ms: u64 = 1000;
    /// Allow webhook endpoints on private, loopback and link-local addresses (tests, on-premises integrations).
    webhooks_allow_private_targets: bool = false;
    /// Timeout of one webhook delivery attempt (a 2xx within it is success), milliseconds.
    webhooks_timeout_ms: u64 = 15_000;
    /// Backoff base between webhook delivery attempts, milliseconds (doubling, jittered, at most 240× the base).
    webhooks_retry_base_ms: u64 = 60_000;
    /// Attempts of a webhook delivery before it is dead (16 at the default base span about 24 h).
    webhooks_max_attempts: u32 = 16;
    /// An endpoint failing every attempt for this long is disabled and admins are notified, seconds.
    webhooks_disable_after_secs: u64 = 259_200;
    /// How long the previous secret keeps signing after a rotation, seconds.
    webhooks_rotation_grace_secs: u64 = 86_400;
    /// Origins allowed to call the public and customer API from a browser (comma-separated; unset = no CORS headers).
    cors_store_origins: Option<String> = None;
    /// Origins allowed to call `/admin/*` routes from a browser (comma-separated; unset = no CORS headers).
    cors_admin_origins: Option<String> = None;
    /// Public base URL of short links (`https://sho.rt`); unset = the request's own host. Links to this host are refused as loops.
    links_base_url: Option<String> = None;
    /// Links: a dedicated short-link host name (`sho.rt`): requests to it on the main listener are short-link redirects only, and the main host no longer answers codes at its root.
    links_host: Option<String> = None;
    /// Links: a dedicated listener (`0.0.0.0:8081`) serving only the short-link redirect; the main listener then no longer answers codes at its root.
    links_addr: Option<String> = None;
    /// Links: a MaxMind-format country database (GeoLite2-Country.mmdb) for the country of a click when no trusted CDN header says it.
    links_geoip_db: Option<String> = None;
    /// Links: how long an unknown code is remembered as unknown (negative cache), seconds.
    links_negative_ttl_secs: u64 = 300;
    /// Links: longest time a known link stays cached without a change being seen, seconds.
    links_cache_ttl_secs: u64 = 300;
    /// Links: most links (and unknown codes) held in the redirect cache.
    links_cache_capacity: u64 = 1000000;
    /// Links: how often each node polls for link changes made by other nodes, milliseconds.
    links_poll_ms: u64 = 200;
    /// Links: clicks queued for the batcher; beyond this, clicks are dropped and counted.
    links_click_queue: u64 = 100000;
    /// Links: how often the click batcher flushes, milliseconds (each flush writes ≤ 500 clicks per transaction).
    links_flush_ms: u64 = 1000;
    /// Links: days raw clicks are kept (rollups are kept for good).
    links_click_retention_days: u64 = 90;
    /// Links: trusted CDN header carrying the visitor's country (ISO 3166 alpha-2); empty = none.
    links_country_header: String = "cf-ipcountry".into();
    /// Live: how far back `Last-Event-ID` replays a stream's events from memory (older ids get a `gap` event), seconds.
    live_replay_secs: u64 = 300;
    /// Live: most events of one stream held for replay, however recent.
    live_replay_max_events: u64 = 10000;
    /// Live: events buffered per SSE subscriber; a subscriber this far behind is disconnected (it resumes with `Last-Event-ID`).
    live_subscriber_buffer: u64 = 256;
    /// Live: how often each node reads events of its watched streams written by other nodes (and fills any hole), milliseconds.
    live_poll_ms: u64 = 500;
    /// Live: how often subscribers get a `viewers` event, seconds.
    live_viewers_every_secs: u64 = 5;
    /// Live: the `retry:` hint sent first on every stream (client reconnect delay), milliseconds.
    live_retry_ms: u64 = 2000;
    /// Live: interval of the keep-alive comment lines on idle streams, seconds.
    live_keepalive_secs: u64 = 15;
    /// Live: comments allowed per user per stream per second.
    live_comments_per_second: u32 = 1;
    /// Live: comments allowed per user per stream in any 60 seconds.
    live_comments_per_minute: u32 = 20;
}

trait FromSetting: Sized {
    fn from_setting(s: &str) -> anyhow::Result<Self>;
}

impl FromSetting for String {
    fn from_setting(s: &str) -> anyhow::Result<Self> {
        Ok(s.to_owned())
    }
}
impl FromSetting for PathBuf {
    fn from_setting(s: &str) -> anyhow::Result<Self> {
        Ok(PathBuf::from(s))
    }
}
impl FromSetting for Option<String> {
    fn from_setting(s: &str) -> anyhow::Result<Self> {
        Ok((!s.is_empty()).then(|| s.to_owned()))
    }
}
impl FromSetting for bool {
    fn from_setting(s: &str) -> anyhow::Result<Self> {
        match s {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => bail!("expected true or false"),
        }
    }
}
macro_rules! parse_setting {
    ($($t:ty),*) => {$(
        impl FromSetting for $t {
            fn from_setting(s: &str) -> anyhow::Result<Self> {
                s.trim().parse::<$t>().map_err(|e| anyhow::anyhow!("{e}"))
            }
        }
    )*};
}
parse_setting!(u32, u64, i64, usize);

impl Settings {
    /// Defaults ← TOML file ← `MERCATO_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let mut settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<Settings>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Settings::default(),
        };
        for (name, value) in env {
            let Some(key) = name.strip_prefix("MERCATO_") else {
                continue;
            };
            // Test-harness variables share the prefix but are not settings.
            if key.starts_with("TEST_") {
                continue;
            }
            if !settings.set_from_str(&key.to_ascii_lowercase(), &value)? {
                tracing::warn!(variable = %name, "unknown MERCATO_ variable ignored");
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.process_role()?;
        if !matches!(self.log_format.as_str(), "pretty" | "json") {
            bail!("log_format must be pretty or json");
        }
        if self.checkout_ttl_secs <= 0 {
            bail!("checkout_ttl_secs must be positive");
        }
        if self.jwt_ttl_secs <= 0 {
            bail!("jwt_ttl_secs must be positive");
        }
        if !(1..=1000).contains(&self.cart_max_line_quantity) {
            bail!("cart_max_line_quantity must be 1 to 1000");
        }
        if self.guest_cart_ttl_days <= 0 {
            bail!("guest_cart_ttl_days must be positive");
        }
        if crate::money::Currency::parse(&self.default_currency).is_none() {
            bail!("default_currency must be a 3-letter ISO 4217 code");
        }
        if self.outbox_max_attempts == 0 {
            bail!("outbox_max_attempts must be at least 1");
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < 32
        {
            bail!("jwt_secret must be at least 32 characters");
        }
        if self.gateway_url.is_some() && self.gateway_webhook_secret.is_none() {
            bail!("gateway_webhook_secret must be set when gateway_url is set");
        }
        crate::http::cors::CorsPolicy::from_lists(
            self.cors_store_origins.as_deref(),
            self.cors_admin_origins.as_deref(),
        )?;
        if self.gateway_timeout_ms == 0 {
            bail!("gateway_timeout_ms must be at least 1");
        }
        Ok(())
    }

    pub fn process_role(&self) -> anyhow::Result<ProcessRole> {
        self.role.parse()
    }

    /// The database URL in effect.
    pub fn effective_database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| crate::db::Db::sqlite_url_in(&self.data_dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "addr = \"0.0.0.0:9000\"\ncheckout_ttl_secs = 60\n").expect("write");
        let env = vec![
            ("MERCATO_CHECKOUT_TTL_SECS".to_string(), "120".to_string()),
            ("MERCATO_TEST_POSTGRES_URL".to_string(), "x".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let s = Settings::load(Some(&file), env).expect("load");
        assert_eq!(s.addr, "0.0.0.0:9000");
        assert_eq!(s.checkout_ttl_secs, 120);
        assert_eq!(s.sweep_every_secs, 30);
    }

    #[test]
    fn bad_values_are_reported_with_the_variable_name() {
        let env = vec![("MERCATO_SWEEP_EVERY_SECS".to_string(), "soon".to_string())];
        let err = Settings::load(None, env).expect_err("must fail");
        assert!(format!("{err:#}").contains("MERCATO_SWEEP_EVERY_SECS"));
    }

    #[test]
    fn an_external_gateway_needs_a_webhook_secret() {
        let env = vec![(
            "MERCATO_GATEWAY_URL".to_string(),
            "http://127.0.0.1:8090".to_string(),
        )];
        let err = Settings::load(None, env.clone()).expect_err("must fail");
        assert!(format!("{err:#}").contains("gateway_webhook_secret"));
        let mut env = env;
        env.push((
            "MERCATO_GATEWAY_WEBHOOK_SECRET".to_string(),
            "whsec_x".to_string(),
        ));
        let s = Settings::load(None, env).expect("load");
        assert_eq!(s.gateway_webhook_secret.as_deref(), Some("whsec_x"));
        assert_eq!(s.gateway_api_key, "sk_test_mercato");
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "adr = \"typo\"\n").expect("write");
        assert!(Settings::load(Some(&file), Vec::new()).is_err());
    }
}
