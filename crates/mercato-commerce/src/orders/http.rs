//! Order routes: lists and reads (customer, seller, admin), cancel, fulfilment, returns, and
//! the admin sales report and audit trail.

use super::model::{Order, OrderStatus, ReturnLine, ReturnRequest};
use super::service::{OrderQuery, SalesReport};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use mercato_kernel::Timestamp;
use mercato_kernel::auth::{Admins, Authorized, Buyer, Staff};
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, DeferredJson, created};
use mercato_kernel::outbox::AuditEntry;
use mercato_kernel::pagination::{Page, PageQuery};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(fulfil_order))
        .routes(routes!(ship_order))
        .routes(routes!(deliver_order))
        .routes(routes!(request_return))
        .routes(routes!(get_return))
        .routes(routes!(approve_return))
        .routes(routes!(reject_return))
        .routes(routes!(sales_report))
        .routes(routes!(audit_trail))
}

fn order_id(raw: &str) -> Result<(), ApiError> {
    if mercato_kernel::id::is_valid("ord", raw) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

fn return_id(raw: &str) -> Result<(), ApiError> {
    if mercato_kernel::id::is_valid("ret", raw) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// Filter by status.
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<String>,
    /// Admins: filter by customer.
    pub customer_id: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Orders: customers their own, sellers those holding their items, admins all.
#[utoipa::path(get, path = "/orders", tag = "orders", params(OrdersQuery),
    responses((status = 200, body = Page<Order>)), security(("bearer" = [])))]
async fn list_orders(
    State(s): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<OrdersQuery>,
) -> Result<Json<Page<Order>>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(raw) => Some(
            OrderStatus::parse(raw)
                .ok_or_else(|| ApiError::invalid("status", "unknown order status"))?,
        ),
    };
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<(i64, String)>()?;
    let rows = s
        .orders
        .list(
            &p,
            &OrderQuery {
                status,
                customer_id: q.customer_id,
            },
            page.after,
            page.limit,
        )
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |o| {
        (o.created_at.as_micros(), o.id.clone())
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderAccess {
    /// A guest order's `guest_token`, for links in emails (instead of the bearer header).
    #[param(pattern = "^gst_[0-9A-Za-z]{1,64}$")]
    pub token: Option<String>,
}

/// One order with items, totals, address, payment summary and full history. A guest reads
/// theirs with its `guest_token` (bearer, or `?token=`); without either it is 404.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = String, Path), OrderAccess),
    responses((status = 200, body = Order), (status = 404, body = Problem)), security(("bearer" = []), ()))]
async fn get_order(
    State(s): State<AppState>,
    who: Result<Buyer, ApiError>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OrderAccess>,
) -> Result<Json<Order>, ApiError> {
    order_id(&id)?;
    let p = match (who, q.token) {
        (Ok(Buyer(p)), None) => p,
        (_, Some(token)) if mercato_kernel::id::is_valid("gst", &token) => Principal::guest(&token),
        // No credentials (or a malformed link): the order is not there for this caller.
        _ => return Err(ApiError::not_found()),
    };
    let mut order = s.orders.view(&id, &p).await?;
    if p.is_admin() {
        order.risk = s.fraud.risk_of_order(&id).await?;
    }
    Ok(Json(order))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: String,
}

/// Cancel: releases or restocks the stock and refunds the capture in full, exactly once.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", params(("id" = String, Path)), request_body = ReasonBody,
    responses((status = 200, body = Order), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn cancel_order(
    State(s): State<AppState>,
    Buyer(p): Buyer,
    Path(id): Path<String>,
    body: DeferredJson<ReasonBody>,
) -> Result<Json<Order>, ApiError> {
    order_id(&id)?;
    // Someone else's order is 404 before the body is looked at.
    s.orders.view(&id, &p).await?;
    let req = body.parse()?;
    Ok(Json(s.orders.cancel(&p, &id, &req.reason).await?))
}

/// Start fulfilment (admin or the order's seller): confirmed → processing.
#[utoipa::path(post, path = "/orders/{id}/fulfil", tag = "orders", params(("id" = String, Path)),
    responses((status = 200, body = Order), (status = 409, body = Problem)), security(("bearer" = [])))]
async fn fulfil_order(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    order_id(&id)?;
    Ok(Json(s.orders.fulfil(&p, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipBody {
    pub carrier: String,
    pub tracking_number: String,
}

/// Ship (admin or the order's seller): processing → shipped.
#[utoipa::path(post, path = "/orders/{id}/ship", tag = "orders", params(("id" = String, Path)), request_body = ShipBody,
    responses((status = 200, body = Order), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn ship_order(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    Path(id): Path<String>,
    body: DeferredJson<ShipBody>,
) -> Result<Json<Order>, ApiError> {
    order_id(&id)?;
    s.orders.view(&id, &p).await?;
    let req = body.parse()?;
    Ok(Json(
        s.orders
            .ship(&p, &id, &req.carrier, &req.tracking_number)
            .await?,
    ))
}

/// Mark delivered (admin or the order's seller): shipped → delivered.
#[utoipa::path(post, path = "/orders/{id}/deliver", tag = "orders", params(("id" = String, Path)),
    responses((status = 200, body = Order), (status = 409, body = Problem)), security(("bearer" = [])))]
async fn deliver_order(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    order_id(&id)?;
    Ok(Json(s.orders.deliver(&p, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnBody {
    pub items: Vec<ReturnLine>,
    pub reason: String,
}

/// Ask to return delivered items (the order's customer, within 30 days of delivery).
#[utoipa::path(post, path = "/orders/{id}/returns", tag = "orders", params(("id" = String, Path)), request_body = ReturnBody,
    responses((status = 201, body = ReturnRequest), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn request_return(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    body: DeferredJson<ReturnBody>,
) -> Result<impl IntoResponse, ApiError> {
    order_id(&id)?;
    s.orders.view(&id, &p).await?;
    let req = body.parse()?;
    Ok(created(
        s.orders
            .request_return(&p, &id, req.items, &req.reason)
            .await?,
    ))
}

/// A return request (admin, or the order's customer).
#[utoipa::path(get, path = "/returns/{id}", tag = "orders", params(("id" = String, Path)),
    responses((status = 200, body = ReturnRequest), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_return(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<ReturnRequest>, ApiError> {
    return_id(&id)?;
    let r = s.orders.return_request(&id).await?;
    if p.role != Role::Admin {
        s.orders.view(&r.order_id, &p).await?;
    }
    Ok(Json(r))
}

/// Approve a return (admin): restock the returned lines and refund them.
#[utoipa::path(post, path = "/returns/{id}/approve", tag = "orders", params(("id" = String, Path)),
    responses((status = 200, body = ReturnRequest), (status = 409, body = Problem)), security(("bearer" = [])))]
async fn approve_return(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<ReturnRequest>, ApiError> {
    return_id(&id)?;
    Ok(Json(s.orders.approve_return(&p, &id).await?))
}

/// Reject a return (admin).
#[utoipa::path(post, path = "/returns/{id}/reject", tag = "orders", params(("id" = String, Path)), request_body = ReasonBody,
    responses((status = 200, body = ReturnRequest), (status = 409, body = Problem)), security(("bearer" = [])))]
async fn reject_return(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReasonBody>,
) -> Result<Json<ReturnRequest>, ApiError> {
    return_id(&id)?;
    Ok(Json(s.orders.reject_return(&p, &id, &req.reason).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SalesQuery {
    /// RFC 3339, inclusive (default: 30 days ago).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339, exclusive (default: now).
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `day`, `seller` or `sku` (default `day`).
    #[param(pattern = "^(day|seller|sku)$")]
    pub group_by: Option<String>,
}

/// Revenue, orders, units and refunds (admin).
#[utoipa::path(get, path = "/admin/reports/sales", tag = "admin", params(SalesQuery),
    responses((status = 200, body = SalesReport), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn sales_report(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<SalesQuery>,
) -> Result<Json<SalesReport>, ApiError> {
    let now = s.kernel.clock.now();
    let parse =
        |field: &str, v: &Option<String>, default: Timestamp| -> Result<Timestamp, ApiError> {
            match v {
                None => Ok(default),
                Some(raw) => Timestamp::parse_rfc3339(raw)
                    .ok_or_else(|| ApiError::invalid(field, "must be an RFC 3339 timestamp")),
            }
        };
    let from = parse("from", &q.from, now.plus_secs(-30 * 86_400))?;
    let to = parse("to", &q.to, now.plus_secs(1))?;
    if from >= to {
        return Err(ApiError::invalid("from", "from must be before to"));
    }
    Ok(Json(
        s.orders
            .sales_report(from, to, q.group_by.as_deref().unwrap_or("day"))
            .await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The append-only audit trail (admin), oldest first.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>)), security(("bearer" = [])))]
async fn audit_trail(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<i64>()?;
    let rows = mercato_kernel::outbox::audit_page(
        &s.kernel.db,
        q.entity_type.as_deref(),
        q.entity_id.as_deref(),
        page.after.unwrap_or(0),
        page.limit,
    )
    .await?;
    Ok(Json(
        Page::from_rows(rows, page.limit, |(seq, _)| *seq).map(|(_, e)| e),
    ))
}
