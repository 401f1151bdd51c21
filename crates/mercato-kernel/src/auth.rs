//! Who is calling: roles, the authenticated principal, and the middleware that resolves a
//! bearer token into one. How tokens are checked (JWT, API keys, suspension) is identity's
//! business, behind the [`Authenticator`] trait.

use crate::error::{ApiError, Code};
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Seller,
    Admin,
    /// Server-to-server callers holding an API key.
    Service,
    /// The holder of a guest checkout's `guest_token`: pays that checkout, reads or cancels
    /// its order, nothing else. Never stored as a user's role.
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Seller => "seller",
            Role::Admin => "admin",
            Role::Service => "service",
            Role::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "customer" => Some(Role::Customer),
            "seller" => Some(Role::Seller),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// The prefix of guest tokens (`gst_` + 128 random bits).
pub const GUEST_TOKEN_PREFIX: &str = "gst_";

/// A new guest token (a bearer secret: 128 random bits).
pub fn new_guest_token() -> String {
    crate::id::new_secret_id("gst")
}

/// The subject a guest token stands for: `gst_` + the first 128 bits of its SHA-256, so the
/// token itself never appears in logs or events, and no lookup is needed to authenticate it.
/// Checkouts and orders bought as a guest carry it as their `customer_id`.
pub fn guest_subject(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    format!("gst_{}", crate::id::hex(&digest[..16]))
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `usr_…` for people, `key_…` for API keys.
    pub subject: String,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// 403 unless the principal has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden().detail(format!(
                "this requires the role {}",
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )))
        }
    }

    /// The principal of a guest token (see [`guest_subject`]).
    pub fn guest(token: &str) -> Principal {
        Principal {
            subject: guest_subject(token),
            role: Role::Guest,
        }
    }

    pub fn is_guest(&self) -> bool {
        self.role == Role::Guest
    }

    /// The user id when the principal is a person (not an API key).
    pub fn user_id(&self) -> Option<&str> {
        self.subject
            .starts_with("usr_")
            .then_some(self.subject.as_str())
    }
}

/// Resolves a bearer token into a principal.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// `Err` with 401 for an invalid/expired token, 403 for a suspended account.
    async fn authenticate(&self, token: &str) -> Result<Principal, ApiError>;
}

/// What the auth middleware found: a principal, or why the token was refused.
#[derive(Clone, Debug)]
enum AuthOutcome {
    Authenticated(Principal),
    Refused(Code, String),
}

/// Middleware: when an `Authorization: Bearer` header is present, authenticates it and leaves
/// the outcome in the request for the [`Principal`] / [`MaybePrincipal`] extractors. Public
/// routes simply ignore it; routes that need a principal answer the refusal.
pub async fn authenticate(auth: Arc<dyn Authenticator>, mut req: Request, next: Next) -> Response {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let outcome = match value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
        {
            // A guest token needs no lookup: its hash is the subject, which only the checkout
            // and order it was issued for carry.
            Some(token) if token.starts_with(GUEST_TOKEN_PREFIX) => {
                if crate::id::is_valid("gst", token) {
                    AuthOutcome::Authenticated(Principal::guest(token))
                } else {
                    AuthOutcome::Refused(Code::InvalidToken, "malformed guest token".into())
                }
            }
            Some(token) if !token.is_empty() => match auth.authenticate(token).await {
                Ok(p) => {
                    tracing::Span::current().record("user_id", p.subject.as_str());
                    AuthOutcome::Authenticated(p)
                }
                Err(e) => AuthOutcome::Refused(e.code, e.detail.unwrap_or_default()),
            },
            _ => AuthOutcome::Refused(
                Code::InvalidToken,
                "the Authorization header must be `Bearer <token>`".into(),
            ),
        };
        // A token that is sent but refused is answered here, on every route — public ones
        // included: a client that believes it is signed in must learn that it is not.
        if let AuthOutcome::Refused(code, detail) = outcome {
            return refusal(code, &detail).into_response();
        }
        req.extensions_mut().insert(outcome);
    }
    next.run(req).await
}

fn refusal(code: Code, detail: &str) -> ApiError {
    let e = ApiError::new(code);
    if detail.is_empty() {
        e
    } else {
        e.detail(detail.to_owned())
    }
    .header(header::WWW_AUTHENTICATE, "Bearer")
}

/// The principal resolved by the middleware, if the request was authenticated.
pub fn principal_of(parts: &axum::http::Extensions) -> Option<&Principal> {
    match parts.get::<AuthOutcome>() {
        Some(AuthOutcome::Authenticated(p)) => Some(p),
        _ => None,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    /// A signed-in user or an API key; a guest token is refused (403) — the few routes a
    /// guest may use take [`Buyer`].
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let p = Buyer::from_request_parts(parts, state).await?.0;
        if p.is_guest() {
            return Err(ApiError::forbidden()
                .detail("a guest token only pays its checkout and reads or cancels its order"));
        }
        Ok(p)
    }
}

/// A principal that may also be a guest (checkout and order routes a guest token opens).
#[derive(Clone, Debug)]
pub struct Buyer(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Buyer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<AuthOutcome>() {
            Some(AuthOutcome::Authenticated(p)) => Ok(Buyer(p.clone())),
            Some(AuthOutcome::Refused(code, detail)) => Err(refusal(*code, detail)),
            None => Err(ApiError::new(Code::Unauthorized)
                .detail("send `Authorization: Bearer <token>`")
                .header(header::WWW_AUTHENTICATE, "Bearer")),
        }
    }
}

/// A principal when the caller is signed in; `None` for anonymous callers. A token that was
/// sent but refused is still an error (a client that thinks it is signed in must learn it is
/// not, rather than silently acting as a guest).
#[derive(Clone, Debug)]
pub struct MaybePrincipal(pub Option<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for MaybePrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.extensions.get::<AuthOutcome>().is_none() {
            return Ok(MaybePrincipal(None));
        }
        Principal::from_request_parts(parts, state)
            .await
            .map(|p| MaybePrincipal(Some(p)))
    }
}

/// A set of roles a route admits (see [`Authorized`]).
pub trait RoleSet: Send + Sync + 'static {
    const ROLES: &'static [Role];
}

/// Admins only.
pub struct Admins;
impl RoleSet for Admins {
    const ROLES: &'static [Role] = &[Role::Admin];
}

/// Admins and sellers (sellers are further limited to what they own by the service).
pub struct Staff;
impl RoleSet for Staff {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Seller];
}

/// Admins and server-to-server API keys.
pub struct AdminsOrServices;
impl RoleSet for AdminsOrServices {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Service];
}

/// Customers only (reviews, checkouts).
pub struct Customers;
impl RoleSet for Customers {
    const ROLES: &'static [Role] = &[Role::Customer];
}

/// Signed-in people (any role but API keys).
pub struct People;
impl RoleSet for People {
    const ROLES: &'static [Role] = &[Role::Customer, Role::Seller, Role::Admin];
}

/// A principal whose role is in `R`, checked while the request's head is extracted — before
/// any body extractor runs. Put it before the body in a handler's arguments and a caller with
/// the wrong role gets 401/403, never a 422 that lists what the body should have been:
///
/// ```ignore
/// async fn create(State(s): State<AppState>, who: Authorized<Admins>, ApiJson(b): ApiJson<X>)
/// ```
///
/// Checks that need the database (ownership of a product, say) use [`crate::http::DeferredJson`]
/// so the body is parsed only after them.
pub struct Authorized<R: RoleSet> {
    pub principal: Principal,
    _roles: std::marker::PhantomData<R>,
}

impl<R: RoleSet> std::ops::Deref for Authorized<R> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl<R: RoleSet, S: Send + Sync> FromRequestParts<S> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(R::ROLES)?;
        Ok(Authorized {
            principal,
            _roles: std::marker::PhantomData,
        })
    }
}
