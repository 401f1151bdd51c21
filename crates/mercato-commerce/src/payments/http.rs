//! Payment routes: read a payment with its ledger, admin refunds, the gateway webhook.

use super::model::{Payment, Refund};
use crate::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use mercato_kernel::Money;
use mercato_kernel::auth::Principal;
use mercato_kernel::auth::{Admins, Authorized};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::ApiJson;
use mercato_kernel::idempotency::Idempotency;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_payment))
        .routes(routes!(create_refund))
        .routes(routes!(gateway_webhook))
}

fn payment_id(raw: &str) -> Result<(), ApiError> {
    if mercato_kernel::id::is_valid("pay", raw) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// A payment with its append-only ledger (its customer or an admin).
#[utoipa::path(get, path = "/payments/{id}", tag = "payments", params(("id" = String, Path)),
    responses((status = 200, body = Payment), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_payment(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Payment>, ApiError> {
    payment_id(&id)?;
    Ok(Json(s.payments.view(&id, &p).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub amount: Money,
    pub reason: String,
}

/// Refund part or all of a captured payment (admin; `Idempotency-Key` required). The total
/// refunded can never exceed what was captured (422 `refund_exceeds_capture`).
#[utoipa::path(post, path = "/payments/{id}/refunds", tag = "payments", params(("id" = String, Path), ("Idempotency-Key" = String, Header, description = "required")),
    request_body = RefundBody,
    responses((status = 201, body = Refund), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_refund(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    idem: Idempotency,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RefundBody>,
) -> Result<impl IntoResponse, ApiError> {
    idem.require()?;
    payment_id(&id)?;
    let request_key = idem.key().unwrap_or_default().to_owned();
    let refund = s
        .payments
        .admin_refund(&p, &id, req.amount, &req.reason, &request_key)
        .await?;
    Ok((StatusCode::CREATED, Json(refund)))
}

/// Events from the payment gateway, HMAC-SHA256 signed (`Mercato-Signature: t=…,v1=…`,
/// 5-minute tolerance). A bad signature is 400 and changes nothing; a replayed event id is
/// acknowledged and ignored.
#[utoipa::path(post, path = "/webhooks/gateway", tag = "payments",
    request_body(content = String, description = "the gateway's JSON event, signed"),
    responses((status = 200, description = "accepted"), (status = 400, body = Problem)))]
async fn gateway_webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let signature = headers
        .get("mercato-signature")
        .and_then(|v| v.to_str().ok());
    if let Some(payment_id) = s.payments.handle_webhook(signature, &body).await?
        && let Err(e) = s.checkout.settle_payment(&payment_id).await
    {
        // Reconciliation will settle it; the gateway need not resend.
        tracing::warn!(payment = %payment_id, error = %e, "settling after a webhook failed; reconciliation will retry");
    }
    Ok(Json(serde_json::json!({"received": true})))
}
