//! Admin routes for promotions (API.md "Promotions and coupons"). The role is checked with the
//! request's head, before the body is read, so a customer gets 403 whatever it sends.

use super::model::{Promotion, PromotionInput, PromotionPatch, Redemption};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use mercato_kernel::auth::{Admins, Authorized};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, DeferredJson, created};
use mercato_kernel::pagination::{Page, PageQuery};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_promotion, list_promotions))
        .routes(routes!(get_promotion, update_promotion))
        .routes(routes!(list_redemptions))
}

/// A cart with the discounts it would get now (`GET /carts/{id}`, served by the cart routes).
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CartPreview {
    #[serde(flatten)]
    pub cart: crate::cart::model::Cart,
    #[serde(flatten)]
    pub discounts: super::model::Discounts,
}

fn promotion_id(raw: &str) -> Result<(), ApiError> {
    if mercato_kernel::id::is_valid(super::model::PromotionId::PREFIX, raw) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// Create a promotion or coupon (admin). Codes are case-insensitive and unique.
#[utoipa::path(post, path = "/admin/promotions", tag = "promotions", request_body = PromotionInput,
    responses((status = 201, body = Promotion), (status = 403, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_promotion(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiJson(input): ApiJson<PromotionInput>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(created(s.promotions.create(input).await?))
}

/// Promotions, newest first (admin).
#[utoipa::path(get, path = "/admin/promotions", tag = "promotions", params(PageQuery),
    responses((status = 200, body = Page<Promotion>), (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn list_promotions(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Promotion>>, ApiError> {
    let page = q.parse::<(i64, String)>()?;
    let rows = s.promotions.list(page.after, page.limit).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |p| {
        (p.created_at.as_micros(), p.id.clone())
    })))
}

/// A promotion with its usage counters (admin).
#[utoipa::path(get, path = "/admin/promotions/{id}", tag = "promotions", params(("id" = String, Path)),
    responses((status = 200, body = Promotion), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn get_promotion(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<Promotion>, ApiError> {
    promotion_id(&id)?;
    Ok(Json(s.promotions.get(&id).await?))
}

/// Change a promotion (admin): name, status, value, reward, conditions, window, limits,
/// stacking and priority. The kind, code and scopes are fixed at creation.
#[utoipa::path(patch, path = "/admin/promotions/{id}", tag = "promotions", params(("id" = String, Path)),
    request_body = PromotionPatch,
    responses((status = 200, body = Promotion), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn update_promotion(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
    body: DeferredJson<PromotionPatch>,
) -> Result<Json<Promotion>, ApiError> {
    // An unknown promotion is a 404 before the body is judged.
    promotion_id(&id)?;
    s.promotions.get(&id).await?;
    let patch = body.parse()?;
    Ok(Json(s.promotions.update(&id, patch).await?))
}

/// The uses of a promotion, newest first (admin): reserved by open checkouts, committed when
/// paid, released when the checkout failed or expired or the order was cancelled.
#[utoipa::path(get, path = "/admin/promotions/{id}/redemptions", tag = "promotions",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<Redemption>), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn list_redemptions(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Redemption>>, ApiError> {
    promotion_id(&id)?;
    let page = q.parse::<(i64, String)>()?;
    let rows = s
        .promotions
        .redemptions(&id, page.after, page.limit)
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |r| {
        (r.created_at.as_micros(), r.id.clone())
    })))
}
