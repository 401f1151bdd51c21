//! Identity use cases: registration, login, tokens, addresses, API keys, suspension, and the
//! per-request [`Authenticator`].

use super::model::{Address, AddressInput, Email, Password, User, UserId, UserStatus, person_role};
use super::password::PasswordHasher;
use super::store::{ApiKeyRow, IdentityStore, NewApiKey, NewUser};
use super::token::{TokenError, TokenSigner};
use mercato_kernel::Kernel;
use mercato_kernel::auth::{Authenticator, Principal, Role};
use mercato_kernel::db::StoreError;
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::idempotency::ReplayWriter;
use mercato_kernel::ratelimit::Quota;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The prefix of every API key secret (lets scanners and our authenticator recognise them).
pub const API_KEY_PREFIX: &str = "mercato_sk_";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("the email or password is wrong")]
    InvalidCredentials,
    #[error("too many failed logins")]
    TooManyAttempts(mercato_kernel::ratelimit::Decision),
    #[error("this account is suspended")]
    Suspended,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Invalid(ApiError),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => IdentityError::NotFound,
            other => IdentityError::Unexpected(other.into()),
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> ApiError {
        match e {
            IdentityError::EmailTaken => ApiError::new(Code::EmailTaken),
            IdentityError::InvalidCredentials => ApiError::new(Code::InvalidCredentials),
            IdentityError::TooManyAttempts(d) => d
                .into_error()
                .detail("too many failed logins; wait before trying again"),
            IdentityError::Suspended => ApiError::new(Code::AccountSuspended),
            IdentityError::NotFound => ApiError::not_found(),
            IdentityError::Invalid(e) => e,
            IdentityError::Conflict(d) => ApiError::conflict(d),
            IdentityError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// What register and login answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthSession {
    pub user: User,
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// An API key as listed (the secret is never shown again after creation).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// First characters of the secret, to recognise it.
    pub prefix: String,
    pub created_by: String,
    pub created_at: mercato_kernel::Timestamp,
    pub revoked_at: Option<mercato_kernel::Timestamp>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> ApiKey {
        ApiKey {
            id: r.id,
            name: r.name,
            role: r.role,
            prefix: r.key_prefix,
            created_by: r.created_by,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// Called after a successful login (e.g. carts merge the guest cart into the user's).
#[async_trait::async_trait]
pub trait LoginHook: Send + Sync + 'static {
    async fn on_login(&self, user_id: &str, guest_cart_id: Option<&str>) -> Result<(), ApiError>;
}

#[derive(Clone)]
pub struct IdentityService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: IdentityStore,
    tokens: TokenSigner,
    hasher: PasswordHasher,
    /// Run after each login (carts merge the guest cart); passed at construction.
    login_hook: Arc<dyn LoginHook>,
    /// Role and status per user as last read: user id → (role, status, read at).
    principals: std::sync::Mutex<std::collections::HashMap<String, (String, String, Instant)>>,
}

/// How long a user's role and status are trusted from memory. A change made through this
/// process applies at once (the entry is dropped); one made by another node within this time.
/// How long an email verification token is valid.
const EMAIL_VERIFICATION_TTL_SECS: i64 = 24 * 3600;
const PRINCIPAL_TTL: Duration = Duration::from_secs(1);
const PRINCIPALS_MAX: usize = 50_000;

pub(super) fn sha256_hex(s: &str) -> String {
    mercato_kernel::id::hex(&Sha256::digest(s.as_bytes()))
}

impl IdentityService {
    pub fn new(
        kernel: Kernel,
        jwt_secret: &[u8],
        login_hook: Arc<dyn LoginHook>,
    ) -> anyhow::Result<IdentityService> {
        let s = &kernel.settings;
        let hasher = PasswordHasher::new(s.password_hash_memory_kib, s.password_hash_iterations)?;
        let tokens = TokenSigner::new(jwt_secret, s.jwt_ttl_secs);
        Ok(IdentityService {
            inner: Arc::new(Inner {
                store: IdentityStore::new(kernel.db.clone()),
                kernel,
                tokens,
                hasher,
                login_hook,
                principals: std::sync::Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }

    fn now(&self) -> mercato_kernel::Timestamp {
        self.inner.kernel.clock.now()
    }

    fn session(&self, user: User) -> AuthSession {
        let access_token = self.inner.tokens.issue(&user.id, user.role, self.now());
        AuthSession {
            user,
            access_token,
            token_type: "Bearer",
            expires_in: self.inner.tokens.ttl_secs(),
        }
    }

    fn parse_credentials(email: &str, password: &str) -> Result<(Email, Password), IdentityError> {
        let mut v = mercato_kernel::error::Validator::new();
        let e = Email::parse(email);
        v.check(e.is_some(), "email", "email must be a valid email address");
        let p = Password::parse(password);
        if let Err(msg) = &p {
            v.add("password", *msg);
        }
        v.finish().map_err(IdentityError::Invalid)?;
        match (e, p) {
            (Some(e), Ok(p)) => Ok((e, p)),
            _ => Err(IdentityError::Invalid(ApiError::new(
                Code::ValidationFailed,
            ))),
        }
    }

    fn validate_name(name: Option<&str>) -> Result<Option<String>, IdentityError> {
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        if let Some(n) = name
            && (n.chars().count() > 200 || n.chars().any(char::is_control))
        {
            return Err(IdentityError::Invalid(ApiError::invalid(
                "name",
                "name must be at most 200 printable characters",
            )));
        }
        Ok(name.map(str::to_owned))
    }

    /// Self-service sign-up: always role `customer`. Emits `user.registered`.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: Option<&str>,
    ) -> Result<AuthSession, IdentityError> {
        let user = self
            .create_user(email, password, name, Role::Customer)
            .await?;
        Ok(self.session(user))
    }

    /// Creates an account with any person role (CLI, admin tooling).
    pub async fn create_user(
        &self,
        email: &str,
        password: &str,
        name: Option<&str>,
        role: Role,
    ) -> Result<User, IdentityError> {
        if !person_role(role) {
            return Err(IdentityError::Invalid(ApiError::invalid(
                "role",
                "role must be customer, seller or admin",
            )));
        }
        let (email, password) = Self::parse_credentials(email, password)?;
        let name = Self::validate_name(name)?;
        let hash = self.inner.hasher.hash(password.expose()).await?;
        let id = UserId::new();
        let res = self
            .inner
            .store
            .insert_user(
                NewUser {
                    id: id.as_str(),
                    email: email.as_str(),
                    password_hash: &hash,
                    name: name.as_deref(),
                    role,
                },
                self.now(),
                true,
            )
            .await;
        match res {
            Ok(u) => {
                metrics::counter!("users_registered_total", "role" => role.as_str()).increment(1);
                Ok(u)
            }
            Err(e) if e.is_unique_violation() => Err(IdentityError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks credentials. Unknown emails take as long as wrong passwords; failures are rate
    /// limited per email and per client IP.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        ip: IpAddr,
        guest_cart_id: Option<&str>,
    ) -> Result<AuthSession, IdentityError> {
        let limiter = &self.inner.kernel.rate_limiter;
        let settings = &self.inner.kernel.settings;
        let window = Duration::from_secs(15 * 60);
        let per_email = Quota::new(settings.login_failures_per_15min, window);
        let per_ip = Quota::new(settings.login_failures_per_15min.saturating_mul(5), window);
        let normalized = email.trim().to_lowercase();
        let email_key = format!("login-email:{normalized}");
        let ip_key = format!("login-ip:{ip}");
        for (key, quota) in [(&email_key, per_email), (&ip_key, per_ip)] {
            let d = limiter.check(key, quota, 0).await;
            if !d.allowed {
                return Err(IdentityError::TooManyAttempts(d));
            }
        }
        let fail = || async {
            limiter.check(&email_key, per_email, 1).await;
            limiter.check(&ip_key, per_ip, 1).await;
            metrics::counter!("logins_total", "outcome" => "failed").increment(1);
            IdentityError::InvalidCredentials
        };
        if password.chars().count() > super::model::MAX_PASSWORD_LEN {
            return Err(fail().await);
        }
        let creds = match Email::parse(email) {
            Some(e) => self.inner.store.credentials_by_email(e.as_str()).await?,
            None => None,
        };
        let Some(creds) = creds else {
            self.inner.hasher.verify_dummy(password).await?;
            return Err(fail().await);
        };
        if !self
            .inner
            .hasher
            .verify(password, &creds.password_hash)
            .await?
        {
            return Err(fail().await);
        }
        if creds.user.status == UserStatus::Suspended {
            return Err(IdentityError::Suspended);
        }
        self.inner
            .login_hook
            .on_login(&creds.user.id, guest_cart_id)
            .await
            .map_err(IdentityError::Invalid)?;
        if creds.user.email_verified_at.is_some() {
            // Guest orders bought with this email since it was verified attach now.
            self.inner
                .store
                .announce_verified(&creds.user, self.now())
                .await?;
        }
        metrics::counter!("logins_total", "outcome" => "ok").increment(1);
        Ok(self.session(creds.user))
    }

    /// Mails the user a token that proves their email (`POST /auth/verify-email`), valid for
    /// 24 hours; at most 5 per user per hour. `false` when the email is already verified
    /// (nothing is sent).
    pub async fn request_email_verification(&self, user_id: &str) -> Result<bool, IdentityError> {
        let user = self.user(user_id).await?;
        if user.email_verified_at.is_some() {
            return Ok(false);
        }
        let d = self
            .inner
            .kernel
            .rate_limiter
            .check(
                &format!("email-verification:{user_id}"),
                Quota::new(5, Duration::from_secs(3600)),
                1,
            )
            .await;
        if !d.allowed {
            return Err(IdentityError::Invalid(
                d.into_error()
                    .detail("too many verification emails; wait before asking again"),
            ));
        }
        let now = self.now();
        let token = mercato_kernel::id::new_secret_id("evt");
        self.inner
            .store
            .request_verification(
                &user,
                &token,
                now.plus_secs(EMAIL_VERIFICATION_TTL_SECS),
                now,
            )
            .await?;
        Ok(true)
    }

    /// Uses a verification token: the user's email is verified and their guest orders attach.
    pub async fn verify_email(&self, token: &str) -> Result<User, IdentityError> {
        let unknown = || {
            IdentityError::Invalid(ApiError::invalid(
                "token",
                "unknown, used or expired verification token",
            ))
        };
        if !mercato_kernel::id::is_valid("evt", token.trim()) {
            return Err(unknown());
        }
        self.inner
            .store
            .verify_email(token.trim(), self.now())
            .await?
            .ok_or_else(unknown)
    }

    pub async fn user(&self, id: &str) -> Result<User, IdentityError> {
        self.inner
            .store
            .user(id)
            .await?
            .ok_or(IdentityError::NotFound)
    }

    pub async fn list_users(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<User>, IdentityError> {
        Ok(self.inner.store.list_users(after, limit).await?)
    }

    pub async fn set_status(
        &self,
        actor: &Principal,
        user_id: &str,
        status: UserStatus,
    ) -> Result<User, IdentityError> {
        if actor.subject == user_id && status == UserStatus::Suspended {
            return Err(IdentityError::Conflict(
                "you cannot suspend your own account".into(),
            ));
        }
        let user = self
            .inner
            .store
            .set_status(user_id, status, &actor.subject, self.now())
            .await?;
        self.forget_principal(user_id);
        Ok(user)
    }

    /// Drops the cached role and status of `user_id` (after a change).
    fn forget_principal(&self, user_id: &str) {
        if let Ok(mut m) = self.inner.principals.lock() {
            m.remove(user_id);
        }
    }

    /// Role and status of a user: from memory when read less than [`PRINCIPAL_TTL`] ago.
    async fn role_and_status(
        &self,
        user_id: &str,
    ) -> mercato_kernel::db::StoreResult<Option<(String, String)>> {
        let now = Instant::now();
        if let Some((role, status, at)) = self
            .inner
            .principals
            .lock()
            .ok()
            .and_then(|m| m.get(user_id).cloned())
            && now.duration_since(at) < PRINCIPAL_TTL
        {
            return Ok(Some((role, status)));
        }
        let found = self.inner.store.role_and_status(user_id).await?;
        if let (Some((role, status)), Ok(mut m)) = (&found, self.inner.principals.lock()) {
            if m.len() >= PRINCIPALS_MAX {
                m.retain(|_, e| now.duration_since(e.2) < PRINCIPAL_TTL);
            }
            m.insert(user_id.to_owned(), (role.clone(), status.clone(), now));
        }
        Ok(found)
    }

    pub async fn addresses(&self, user_id: &str) -> Result<Vec<Address>, IdentityError> {
        Ok(self.inner.store.addresses(user_id).await?)
    }

    /// One address of the user (checkout reads shipping addresses through this).
    pub async fn address(&self, user_id: &str, id: &str) -> Result<Address, IdentityError> {
        self.inner
            .store
            .address(user_id, id)
            .await?
            .ok_or(IdentityError::NotFound)
    }

    /// Adds an address; returns it with its JSON (stored for replay when `replay` is given).
    pub async fn add_address(
        &self,
        user_id: &str,
        input: AddressInput,
        replay: Option<ReplayWriter<'_>>,
    ) -> Result<(Address, Vec<u8>), IdentityError> {
        let input = input.validate("").map_err(IdentityError::Invalid)?;
        let count = self.inner.store.addresses(user_id).await?.len();
        if count >= 50 {
            return Err(IdentityError::Conflict(
                "at most 50 addresses per account".into(),
            ));
        }
        Ok(self
            .inner
            .store
            .insert_address(user_id, &input, self.now(), replay)
            .await?)
    }

    pub async fn delete_address(&self, user_id: &str, id: &str) -> Result<(), IdentityError> {
        Ok(self.inner.store.delete_address(user_id, id).await?)
    }

    /// Creates an API key; returns it with the secret, which is never retrievable again.
    pub async fn create_api_key(
        &self,
        actor: &Principal,
        name: &str,
        role: Role,
    ) -> Result<(ApiKey, String), IdentityError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(IdentityError::Invalid(ApiError::invalid(
                "name",
                "name is required (≤ 100 chars)",
            )));
        }
        if role != Role::Service {
            return Err(IdentityError::Invalid(ApiError::invalid(
                "role",
                "API keys have role service",
            )));
        }
        let secret = format!("{API_KEY_PREFIX}{}", mercato_kernel::id::random_hex(24));
        let prefix: String = secret.chars().take(API_KEY_PREFIX.len() + 6).collect();
        let id = super::model::ApiKeyId::new();
        let row = self
            .inner
            .store
            .insert_api_key(
                NewApiKey {
                    id: id.as_str(),
                    name,
                    role,
                    key_hash: &sha256_hex(&secret),
                    key_prefix: &prefix,
                    actor: &actor.subject,
                },
                self.now(),
            )
            .await?;
        Ok((row.into(), secret))
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, IdentityError> {
        Ok(self
            .inner
            .store
            .api_keys()
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn revoke_api_key(
        &self,
        actor: &Principal,
        id: &str,
    ) -> Result<ApiKey, IdentityError> {
        Ok(self
            .inner
            .store
            .revoke_api_key(id, &actor.subject, self.now())
            .await?
            .into())
    }
}

#[async_trait::async_trait]
impl Authenticator for IdentityService {
    async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        if token.starts_with(API_KEY_PREFIX) {
            if token.len() > 200 {
                return Err(ApiError::new(Code::InvalidToken));
            }
            return match self
                .inner
                .store
                .active_key_by_hash(&sha256_hex(token))
                .await?
            {
                Some((id, role)) => Ok(Principal { subject: id, role }),
                None => Err(ApiError::new(Code::InvalidToken).detail("unknown or revoked API key")),
            };
        }
        let claims = self
            .inner
            .tokens
            .verify(token, self.now())
            .map_err(|e| match e {
                TokenError::Expired => {
                    ApiError::new(Code::InvalidToken).detail("the access token has expired")
                }
                TokenError::NotYetValid => ApiError::new(Code::InvalidToken)
                    .detail("the access token is not valid yet (iat or nbf in the future)"),
                _ => ApiError::new(Code::InvalidToken),
            })?;
        if !mercato_kernel::id::is_valid("usr", &claims.sub) {
            return Err(ApiError::new(Code::InvalidToken));
        }
        // Role and status come from the database (at most a second old), so suspensions and
        // role changes take effect at once rather than when the token expires.
        let Some((role, status)) = self.role_and_status(&claims.sub).await? else {
            return Err(ApiError::new(Code::InvalidToken).detail("the account no longer exists"));
        };
        if status != UserStatus::Active.as_str() {
            return Err(ApiError::new(Code::AccountSuspended));
        }
        let role =
            Role::parse(&role).ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad role")))?;
        Ok(Principal {
            subject: claims.sub,
            role,
        })
    }
}
