//! Checkout routes and the admin view of sagas.

use super::model::{Checkout, Saga};
use super::service::{CreateCheckout, PayRequest, PayResult};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mercato_kernel::auth::{Admins, Authorized, Buyer, MaybePrincipal};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, ClientIp, created};
use mercato_kernel::idempotency::{Idempotency, json_response};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_checkout))
        .routes(routes!(get_checkout))
        .routes(routes!(pay))
        .routes(routes!(list_sagas))
        .routes(routes!(retry_saga))
}

/// Start a checkout: re-validates the cart, reserves the stock (all lines or none) and locks
/// prices until `expires_at`. Without a token it is a guest checkout of a guest cart: `email`
/// is required and the 201 carries a `guest_token` (shown once) that pays this checkout and
/// reads or cancels its order; 429 past the per-IP or per-email hourly limit.
#[utoipa::path(post, path = "/checkouts", tag = "checkout", request_body = CreateCheckout,
    responses((status = 201, body = Checkout), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []), ()))]
async fn create_checkout(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    ip: ClientIp,
    ApiJson(req): ApiJson<CreateCheckout>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(created(s.checkout.create(p.as_ref(), req, ip.0).await?))
}

/// A checkout (its customer, or the guest holding its `guest_token`).
#[utoipa::path(get, path = "/checkouts/{id}", tag = "checkout", params(("id" = String, Path)),
    responses((status = 200, body = Checkout), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_checkout(
    State(s): State<AppState>,
    Buyer(p): Buyer,
    Path(id): Path<String>,
) -> Result<Json<Checkout>, ApiError> {
    Ok(Json(s.checkout.get(&id, &p).await?))
}

/// Pay (`Idempotency-Key` required): 201 confirmed; 402 `payment_declined` (stock released);
/// 202 `pending_verification` when the gateway's answer is unknown; 409 `checkout_expired` or
/// `checkout_not_open`; 403 `fraud_blocked`. Never charges twice.
#[utoipa::path(post, path = "/checkouts/{id}/pay", tag = "checkout", params(("id" = String, Path), ("Idempotency-Key" = String, Header, description = "required")), request_body = PayRequest,
    responses((status = 201, body = PayResult), (status = 202, body = PayResult), (status = 402, body = Problem),
              (status = 403, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn pay(
    State(s): State<AppState>,
    Buyer(p): Buyer,
    idem: Idempotency,
    ip: ClientIp,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PayRequest>,
) -> Result<Response, ApiError> {
    let client = client_signals(&s, ip, &headers);
    let r = s.checkout.pay(&id, &p, req, &idem, &client).await?;
    let accepted = r.status == StatusCode::ACCEPTED;
    let mut resp = json_response(r.status, r.body);
    if accepted {
        // 202 "pending verification" is not the final answer: a retry with the same key runs
        // again and converges to what the gateway decided (201 or 402).
        resp.extensions_mut()
            .insert(mercato_kernel::idempotency::Unsettled);
    }
    Ok(resp)
}

/// What the fraud check learns from the request: the client IP, the country from the
/// trusted header (`fraud_country_header`) and the storefront's `X-Device-Id`.
fn client_signals(
    s: &AppState,
    ip: ClientIp,
    headers: &axum::http::HeaderMap,
) -> crate::fraud::ClientSignals {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 200)
            .map(str::to_owned)
    };
    let header = &s.kernel.settings.fraud_country_header;
    let country = if header.is_empty() {
        None
    } else {
        text(header)
            .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
            .map(|c| c.to_ascii_uppercase())
    };
    crate::fraud::ClientSignals {
        ip: ip.0.to_string(),
        country,
        device_id: text("x-device-id"),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SagaQuery {
    /// `running`, `awaiting_verification`, `completed`, `compensating`, `compensated`, `failed`.
    #[param(
        pattern = "^(running|awaiting_verification|completed|compensating|compensated|failed)$"
    )]
    pub status: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Checkout sagas with their step logs, newest first (admin).
#[utoipa::path(get, path = "/admin/sagas", tag = "admin", params(SagaQuery),
    responses((status = 200, body = Page<Saga>)), security(("bearer" = [])))]
async fn list_sagas(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<SagaQuery>,
) -> Result<Json<Page<Saga>>, ApiError> {
    if let Some(st) = q.status.as_deref()
        && !matches!(
            st,
            "running"
                | "awaiting_verification"
                | "completed"
                | "compensating"
                | "compensated"
                | "failed"
        )
    {
        return Err(ApiError::invalid("status", "unknown saga status"));
    }
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<String>()?;
    let rows = s
        .checkout
        .sagas(q.status.as_deref(), page.after, page.limit)
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |s| s.id.clone())))
}

/// Settle a saga now by asking the gateway (admin).
#[utoipa::path(post, path = "/admin/sagas/{id}/retry", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = Saga), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn retry_saga(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<Saga>, ApiError> {
    if !mercato_kernel::id::is_valid("sga", &id) {
        return Err(ApiError::not_found());
    }
    Ok(Json(s.checkout.retry_saga(&id).await?))
}
