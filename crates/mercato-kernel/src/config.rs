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
    /// Redis URL for shared cache, rate limits and dedup (unset = in-process).
    redis_url: Option<String> = None;
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
    /// How often payment reconciliation runs, seconds.
    reconcile_every_secs: u64 = 60;
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
    /// Trust `X-Forwarded-For` for the client IP (only behind a trusted proxy).
    trust_forwarded_for: bool = false;
    /// Hours an idempotency key and its stored response are kept.
    idempotency_ttl_hours: i64 = 24;
    /// Attempts before an event delivery is dead-lettered.
    outbox_max_attempts: u32 = 8;
    /// Base of the exponential backoff between event delivery attempts, milliseconds.
    outbox_backoff_base_ms: u64 = 1000;
    /// How often idle bus workers poll, milliseconds.
    outbox_poll_ms: u64 = 100;
    /// How often staged search index changes are committed (made searchable), milliseconds.
    search_commit_ms: u64 = 1000;
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
        if self.outbox_max_attempts == 0 {
            bail!("outbox_max_attempts must be at least 1");
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < 32
        {
            bail!("jwt_secret must be at least 32 characters");
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
    fn unknown_keys_in_the_file_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "adr = \"typo\"\n").expect("write");
        assert!(Settings::load(Some(&file), Vec::new()).is_err());
    }
}
