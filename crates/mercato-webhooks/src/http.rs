//! Admin routes of merchant webhooks: parse → call the service → map to a response. Every
//! route is admin-only, checked before any body is read.

use crate::model::{DeliveryId, DeliveryStatus, EndpointId, EndpointStatus};
use crate::service::{NewEndpoint, Webhooks};
use crate::store::{AttemptRow, DeliveryRow, EndpointChanges, EndpointRow};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mercato_kernel::Timestamp;
use mercato_kernel::auth::{Admins, Authorized};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, created};
use mercato_kernel::idempotency::DoNotStore;
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<Webhooks> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(send_test))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

fn endpoint_id(raw: &str) -> Result<String, ApiError> {
    EndpointId::parse(raw)
        .map(EndpointId::into_string)
        .ok_or_else(ApiError::not_found)
}

/// A webhook endpoint (its secret is shown only when created or rotated).
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    /// Event types and patterns (`order.*`, `*`) it receives.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub status: EndpointStatus,
    /// `admin` (disabled through the API) or `failing` (failed every attempt for 3 days).
    pub disabled_reason: Option<String>,
    /// First failed attempt since the last success.
    pub failing_since: Option<Timestamp>,
    /// Until when the previous secret still signs (after a rotation).
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl EndpointView {
    fn of(e: EndpointRow, now: Timestamp) -> EndpointView {
        EndpointView {
            id: e.id,
            url: e.url,
            events: e.events,
            description: e.description,
            status: e.status,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since,
            previous_secret_expires_at: e.previous_secret_expires_at.filter(|t| *t > now),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A new endpoint, with its signing secret (shown once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_` + base64 of the key bytes. Shown only now.
    pub secret: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// http(s) URL resolving to public addresses.
    pub url: String,
    /// Event types (`order.confirmed`), system patterns (`order.*`) or `*`.
    pub events: Vec<String>,
    pub description: Option<String>,
}

/// Register a webhook endpoint (admin). Answers 201 with the signing secret, shown once.
#[utoipa::path(post, path = "/admin/webhooks", tag = "webhooks", request_body = CreateEndpoint,
    responses((status = 201, body = CreatedEndpoint), (status = 422, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn create_endpoint(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    ApiJson(req): ApiJson<CreateEndpoint>,
) -> Result<Response, ApiError> {
    let e = w
        .create(NewEndpoint {
            url: req.url,
            events: req.events,
            description: req.description,
        })
        .await?;
    let secret = e.secret.clone();
    let mut resp = created(CreatedEndpoint {
        endpoint: EndpointView::of(e, w.now()),
        secret,
    })
    .into_response();
    // The secret is shown once: never stored for idempotent replay.
    resp.extensions_mut().insert(DoNotStore);
    Ok(resp)
}

/// List webhook endpoints, oldest first (admin).
#[utoipa::path(get, path = "/admin/webhooks", tag = "webhooks", params(PageQuery),
    responses((status = 200, body = Page<EndpointView>)), security(("bearer" = [])))]
async fn list_endpoints(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<EndpointView>>, ApiError> {
    let page = q.parse::<(i64, String)>()?;
    let rows = w.store().endpoints_page(page.after, page.limit).await?;
    let now = w.now();
    Ok(Json(
        Page::from_rows(rows, page.limit, |e| {
            (e.created_at.as_micros(), e.id.clone())
        })
        .map(|e| EndpointView::of(e, now)),
    ))
}

/// A webhook endpoint (admin).
#[utoipa::path(get, path = "/admin/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_endpoint(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let e = w.endpoint(&endpoint_id(&id)?).await?;
    Ok(Json(EndpointView::of(e, w.now())))
}

fn some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `enabled` or `disabled`; enabling again clears the failure streak.
    pub status: Option<EndpointStatus>,
}

/// Change an endpoint's URL, events, description or status (admin).
#[utoipa::path(patch, path = "/admin/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body = UpdateEndpoint,
    responses((status = 200, body = EndpointView), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn update_endpoint(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateEndpoint>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    let e = w
        .update(
            &id,
            EndpointChanges {
                url: req.url,
                events: req.events,
                description: req.description,
                status: req.status,
            },
        )
        .await?;
    Ok(Json(EndpointView::of(e, w.now())))
}

/// Delete an endpoint with its delivery log (admin).
#[utoipa::path(delete, path = "/admin/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn delete_endpoint(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    w.delete(&endpoint_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The new secret after a rotation (shown once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    pub id: String,
    pub secret: String,
    /// Until then deliveries carry signatures with both the old and the new secret.
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// Rotate the signing secret (admin): the old one keeps signing for 24 h beside the new one.
#[utoipa::path(post, path = "/admin/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = RotatedSecret), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn rotate_secret(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let e = w.rotate_secret(&endpoint_id(&id)?).await?;
    let mut resp = Json(RotatedSecret {
        id: e.id,
        secret: e.secret,
        previous_secret_expires_at: e.previous_secret_expires_at,
    })
    .into_response();
    resp.extensions_mut().insert(DoNotStore);
    Ok(resp)
}

/// One attempt of a delivery.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1-based, counting across redeliveries.
    pub attempt: i64,
    pub at: Timestamp,
    /// The endpoint's HTTP status; absent when no answer came (connection error, timeout).
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub success: bool,
    pub error: Option<String>,
}

/// One event's delivery to one endpoint, with its attempts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub endpoint_id: String,
    /// Sent as `webhook-id`.
    pub event_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempt_count: i64,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<Timestamp>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub attempts: Vec<AttemptView>,
}

impl DeliveryView {
    fn of(d: DeliveryRow, attempts: &[AttemptRow]) -> DeliveryView {
        DeliveryView {
            attempts: attempts
                .iter()
                .filter(|a| a.delivery_id == d.id)
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: a.at,
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    success: a.success,
                    error: a.error.clone(),
                })
                .collect(),
            next_attempt_at: (d.status == DeliveryStatus::Pending).then_some(d.next_attempt_at),
            id: d.id,
            endpoint_id: d.endpoint_id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempt_count: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
        }
    }
}

async fn view(w: &Webhooks, d: DeliveryRow) -> Result<DeliveryView, ApiError> {
    let attempts = w.store().attempts_of(std::slice::from_ref(&d.id)).await?;
    Ok(DeliveryView::of(d, &attempts))
}

/// Send a `webhook.test` event to this endpoint now (admin). Answers 202 with the delivery.
#[utoipa::path(post, path = "/admin/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 202, body = DeliveryView), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn send_test(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = w.send_test(&endpoint_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&w, d).await?)).into_response())
}

/// An endpoint's deliveries, newest first, each with its attempts (admin).
#[utoipa::path(get, path = "/admin/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<DeliveryView>), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn list_deliveries(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    let id = endpoint_id(&id)?;
    let page = q.parse::<(i64, String)>()?;
    w.endpoint(&id).await?;
    let rows = w
        .store()
        .deliveries_page(&id, page.after, page.limit)
        .await?;
    let page = Page::from_rows(rows, page.limit, |d| {
        (d.created_at.as_micros(), d.id.clone())
    });
    let ids: Vec<String> = page.data.iter().map(|d| d.id.clone()).collect();
    let attempts = w.store().attempts_of(&ids).await?;
    Ok(Json(page.map(|d| DeliveryView::of(d, &attempts))))
}

/// Deliver a dead (or delivered) delivery again: same event id and body, a fresh attempt
/// budget (admin). Answers 202; a delivery still pending or in flight is 409.
#[utoipa::path(post, path = "/admin/webhooks/deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 202, body = DeliveryView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn redeliver(
    State(w): State<Webhooks>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = DeliveryId::parse(&id)
        .map(DeliveryId::into_string)
        .ok_or_else(ApiError::not_found)?;
    let d = w.redeliver(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&w, d).await?)).into_response())
}
