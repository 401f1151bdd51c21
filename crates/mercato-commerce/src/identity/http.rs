//! Identity routes: parse → call the service → map to a response. No business logic here.

use super::model::{Address, AddressInput, User, UserStatus};
use super::service::{ApiKey, AuthSession};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mercato_kernel::auth::{Admins, Authorized, People};
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, ClientIp, created};
use mercato_kernel::idempotency::{DoNotStore, Idempotency, ReplayWriter, json_response};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(request_email_verification))
        .routes(routes!(verify_email, verify_email_link))
        .routes(routes!(list_addresses, add_address))
        .routes(routes!(delete_address))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
        .routes(routes!(list_users))
        .routes(routes!(get_user, update_user))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// 10 to 1024 characters, not blank.
    #[schema(min_length = 10, max_length = 1024, pattern = r"\S")]
    pub password: String,
    /// At most 200 characters, no control characters.
    #[schema(max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// A guest cart to merge into the user's cart.
    pub cart_id: Option<String>,
}

/// Create an account (role customer).
#[utoipa::path(post, path = "/auth/register", tag = "identity", request_body = RegisterRequest,
    responses((status = 201, body = AuthSession), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn register(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let session = s
        .identity
        .register(&req.email, &req.password, req.name.as_deref())
        .await?;
    Ok(created(session))
}

/// Exchange email and password for an access token (optionally merging a guest cart).
#[utoipa::path(post, path = "/auth/login", tag = "identity", request_body = LoginRequest,
    responses((status = 200, body = AuthSession), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn login(
    State(s): State<AppState>,
    ip: ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let session = s
        .identity
        .login(&req.email, &req.password, ip.0, req.cart_id.as_deref())
        .await?;
    // A login answer carries a fresh token: never kept for idempotent replay.
    let mut resp = Json(session).into_response();
    resp.extensions_mut().insert(DoNotStore);
    Ok(resp)
}

/// The signed-in user.
#[utoipa::path(get, path = "/me", tag = "identity",
    responses((status = 200, body = User), (status = 401, body = Problem)), security(("bearer" = [])))]
async fn me(State(s): State<AppState>, p: Principal) -> Result<Json<User>, ApiError> {
    let id = p
        .user_id()
        .ok_or_else(|| ApiError::forbidden().detail("API keys have no user"))?;
    Ok(Json(s.identity.user(id).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VerificationRequested {
    /// `sent`, or `already_verified` (nothing is sent).
    pub status: &'static str,
}

/// Mail the signed-in user a token proving their email (valid 24 h; 5 per hour). A verified
/// email attaches the guest orders bought with it to the account.
#[utoipa::path(post, path = "/me/email-verification", tag = "identity",
    responses((status = 202, body = VerificationRequested), (status = 429, body = Problem)),
    security(("bearer" = [])))]
async fn request_email_verification(
    State(s): State<AppState>,
    p: Authorized<People>,
) -> Result<impl IntoResponse, ApiError> {
    let id = p
        .user_id()
        .ok_or_else(|| ApiError::forbidden().detail("API keys have no email"))?;
    let sent = s.identity.request_email_verification(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(VerificationRequested {
            status: if sent { "sent" } else { "already_verified" },
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyEmail {
    /// The token from the verification email.
    #[schema(pattern = "^evt_[0-9A-Za-z]{1,64}$")]
    #[param(pattern = "^evt_[0-9A-Za-z]{1,64}$")]
    pub token: String,
}

/// Prove an email with the token it was sent (once, within 24 h) → the user, verified.
#[utoipa::path(post, path = "/auth/verify-email", tag = "identity", request_body = VerifyEmail,
    responses((status = 200, body = User), (status = 422, body = Problem)))]
async fn verify_email(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<VerifyEmail>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(s.identity.verify_email(&req.token).await?))
}

/// The verification email's link (same as the POST).
#[utoipa::path(get, path = "/auth/verify-email", tag = "identity", params(VerifyEmail),
    responses((status = 200, body = User), (status = 422, body = Problem)))]
async fn verify_email_link(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<VerifyEmail>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(s.identity.verify_email(&q.token).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AddressList {
    pub data: Vec<Address>,
}

/// The signed-in user's addresses.
#[utoipa::path(get, path = "/me/addresses", tag = "identity",
    responses((status = 200, body = AddressList)), security(("bearer" = [])))]
async fn list_addresses(
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<AddressList>, ApiError> {
    let id = p.user_id().ok_or_else(ApiError::forbidden)?;
    Ok(Json(AddressList {
        data: s.identity.addresses(id).await?,
    }))
}

/// Add an address (the first one becomes the default).
#[utoipa::path(post, path = "/me/addresses", tag = "identity", request_body = AddressInput,
    responses((status = 201, body = Address), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn add_address(
    State(s): State<AppState>,
    p: Principal,
    idem: Idempotency,
    ApiJson(input): ApiJson<AddressInput>,
) -> Result<Response, ApiError> {
    let id = p.user_id().ok_or_else(ApiError::forbidden)?;
    // The replayable response commits in the same transaction as the address.
    let replay = ReplayWriter {
        idem: &idem,
        status: StatusCode::CREATED,
    };
    let (_, body) = s.identity.add_address(id, input, Some(replay)).await?;
    Ok(json_response(StatusCode::CREATED, body))
}

/// Delete an address.
#[utoipa::path(delete, path = "/me/addresses/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn delete_address(
    State(s): State<AppState>,
    p: Principal,
    Path(address_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = p.user_id().ok_or_else(ApiError::forbidden)?;
    if !mercato_kernel::id::is_valid("adr", &address_id) {
        return Err(ApiError::not_found());
    }
    s.identity.delete_address(id, &address_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// Must be `service`.
    #[schema(value_type = String, pattern = "^service$")]
    pub role: Role,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret: shown once, store it now.
    #[serde(rename = "key")]
    pub secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKey>,
}

/// Create a server-to-server API key (admin). The secret is in this answer only.
#[utoipa::path(post, path = "/admin/api-keys", tag = "admin", request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 403, body = Problem)), security(("bearer" = [])))]
async fn create_api_key(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    ApiJson(req): ApiJson<CreateApiKey>,
) -> Result<Response, ApiError> {
    let (key, secret) = s.identity.create_api_key(&p, &req.name, req.role).await?;
    let mut resp = created(CreatedApiKey { key, secret }).into_response();
    // The secret is shown once: it is never stored for idempotent replay.
    resp.extensions_mut().insert(DoNotStore);
    Ok(resp)
}

/// List API keys (admin; secrets are never shown).
#[utoipa::path(get, path = "/admin/api-keys", tag = "admin",
    responses((status = 200, body = ApiKeyList)), security(("bearer" = [])))]
async fn list_api_keys(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
) -> Result<Json<ApiKeyList>, ApiError> {
    Ok(Json(ApiKeyList {
        data: s.identity.api_keys().await?,
    }))
}

/// Revoke an API key (admin). Revoking twice is harmless.
#[utoipa::path(delete, path = "/admin/api-keys/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = ApiKey), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn revoke_api_key(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    if !mercato_kernel::id::is_valid("key", &id) {
        return Err(ApiError::not_found());
    }
    Ok(Json(s.identity.revoke_api_key(&p, &id).await?))
}

/// List users, newest first (admin).
#[utoipa::path(get, path = "/admin/users", tag = "admin", params(PageQuery),
    responses((status = 200, body = Page<User>)), security(("bearer" = [])))]
async fn list_users(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<User>>, ApiError> {
    let page = q.parse::<(i64, String)>()?;
    let rows = s.identity.list_users(page.after, page.limit).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |u| {
        (u.created_at.as_micros(), u.id.clone())
    })))
}

/// One user (admin).
#[utoipa::path(get, path = "/admin/users/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_user(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    if !mercato_kernel::id::is_valid("usr", &id) {
        return Err(ApiError::not_found());
    }
    Ok(Json(s.identity.user(&id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub status: UserStatus,
}

/// Suspend or reactivate a user (admin). A suspended user gets 403 everywhere.
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "admin", params(("id" = String, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = User), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn update_user(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    if !mercato_kernel::id::is_valid("usr", &id) {
        return Err(ApiError::not_found());
    }
    Ok(Json(s.identity.set_status(&p, &id, req.status).await?))
}
