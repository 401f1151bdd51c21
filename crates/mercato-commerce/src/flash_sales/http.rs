//! Routes for flash sales (API.md "Flash sales"): admin create/list/get with counters, the
//! public sale, and the waiting room (join, poll). Roles are checked with the request's head,
//! before any body is read.

use super::model::{FlashSale, FlashSaleAdmin, FlashSaleInput, Joined, TicketView};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use mercato_kernel::auth::{Admins, Authorized, Customers};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, created};
use mercato_kernel::pagination::{Page, PageQuery};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_sale, list_sales))
        .routes(routes!(get_sale_admin))
        .routes(routes!(get_sale))
        .routes(routes!(join_queue))
        .routes(routes!(poll_ticket))
}

/// Create a flash sale (admin): its units are set aside from the SKU's stock now and what is
/// not sold goes back when it ends.
#[utoipa::path(post, path = "/admin/flash-sales", tag = "flash-sales", request_body = FlashSaleInput,
    responses((status = 201, body = FlashSaleAdmin), (status = 403, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_sale(
    State(s): State<AppState>,
    who: Authorized<Admins>,
    ApiJson(input): ApiJson<FlashSaleInput>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(created(
        s.flash_sales.create(input, &who.principal.subject).await?,
    ))
}

/// Flash sales, newest first, with their counters (admin).
#[utoipa::path(get, path = "/admin/flash-sales", tag = "flash-sales", params(PageQuery),
    responses((status = 200, body = Page<FlashSaleAdmin>), (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn list_sales(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<FlashSaleAdmin>>, ApiError> {
    let page = q.parse::<(i64, String)>()?;
    let rows = s
        .flash_sales
        .list(page.after, i64::from(page.limit))
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |f| {
        (f.created_at.as_micros(), f.sale.id.clone())
    })))
}

/// A flash sale with its counters (admin): queued, admitted, tokens issued/redeemed/expired,
/// sold, remaining.
#[utoipa::path(get, path = "/admin/flash-sales/{id}", tag = "flash-sales", params(("id" = String, Path)),
    responses((status = 200, body = FlashSaleAdmin), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn get_sale_admin(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<FlashSaleAdmin>, ApiError> {
    Ok(Json(s.flash_sales.get_admin(&id).await?))
}

/// A flash sale (public): price, window, status and the units left.
#[utoipa::path(get, path = "/flash-sales/{id}", tag = "flash-sales", params(("id" = String, Path)),
    responses((status = 200, body = FlashSale), (status = 404, body = Problem)))]
async fn get_sale(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FlashSale>, ApiError> {
    Ok(Json(s.flash_sales.get(&id).await?))
}

/// Join the waiting room (signed-in customer). Joining twice returns the same ticket; whoever
/// joined before the start is shuffled at the start.
#[utoipa::path(post, path = "/flash-sales/{id}/queue", tag = "flash-sales", params(("id" = String, Path)),
    responses((status = 202, body = Joined), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn join_queue(
    State(s): State<AppState>,
    who: Authorized<Customers>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let customer = who
        .principal
        .user_id()
        .ok_or_else(|| ApiError::forbidden().detail("the waiting room is for customers"))?
        .to_owned();
    let joined = s.flash_sales.join(&id, &customer).await?;
    Ok((StatusCode::ACCEPTED, Json(joined)))
}

/// A ticket's state (its owner only): waiting with position and estimated wait, admitted
/// with the purchase token, sold out, or expired. One poll per second per customer (429 with
/// `Retry-After` otherwise).
#[utoipa::path(get, path = "/flash-sales/{id}/queue/{ticket}", tag = "flash-sales",
    params(("id" = String, Path), ("ticket" = String, Path)),
    responses((status = 200, body = TicketView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = [])))]
async fn poll_ticket(
    State(s): State<AppState>,
    who: Authorized<Customers>,
    Path((id, ticket)): Path<(String, String)>,
) -> Result<Json<TicketView>, ApiError> {
    let customer = who
        .principal
        .user_id()
        .ok_or_else(|| ApiError::forbidden().detail("the waiting room is for customers"))?
        .to_owned();
    if !mercato_kernel::id::is_valid(super::model::TicketId::PREFIX, &ticket) {
        return Err(ApiError::not_found());
    }
    Ok(Json(s.flash_sales.poll(&id, &ticket, &customer).await?))
}
