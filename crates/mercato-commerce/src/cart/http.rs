//! Cart routes. A guest cart is reached by its secret id alone; a user's cart only by its owner.

use super::model::Cart;
use crate::AppState;
use crate::promotions::http::CartPreview;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use mercato_kernel::auth::MaybePrincipal;
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, OptionalJson};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_cart))
        .routes(routes!(get_cart))
        .routes(routes!(add_item))
        .routes(routes!(update_item, remove_item))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCart {
    /// ISO 4217; defaults to the shop's currency.
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    /// The short-link code the shopper came through (the `mref` query parameter a short
    /// link's redirect adds to storefront URLs). On an existing cart it replaces the earlier
    /// one: the last touch wins.
    #[schema(pattern = "^[A-Za-z0-9_-]{3,64}$")]
    pub attribution: Option<String>,
}

/// Create a cart. Guests get a new cart whose id is its only credential; signed-in users get
/// (or reuse: 200) their one active cart.
#[utoipa::path(post, path = "/carts", tag = "carts", request_body(content = Option<CreateCart>, description = "optional"),
    responses((status = 201, body = Cart), (status = 200, body = Cart, description = "the user's existing cart"),
              (status = 422, body = Problem)))]
async fn create_cart(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    OptionalJson(body): OptionalJson<CreateCart>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body.unwrap_or_default();
    let (cart, created) = s
        .carts
        .create(
            p.as_ref(),
            req.currency.as_deref(),
            req.attribution.as_deref(),
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(cart)))
}

/// A cart with current prices, availability and warnings, and the discounts it would get
/// now (automatic promotions, plus `coupon_code` when given; nothing is reserved).
#[utoipa::path(get, path = "/carts/{id}", tag = "carts", params(("id" = String, Path), CartQuery),
    responses((status = 200, body = CartPreview), (status = 404, body = Problem),
              (status = 422, body = Problem, description = "coupon_invalid, coupon_expired, coupon_exhausted, coupon_not_applicable")))]
async fn get_cart(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CartQuery>,
) -> Result<Json<CartPreview>, ApiError> {
    let cart = s.carts.view(&id, p.as_ref()).await?;
    let discounts = s
        .promotions
        .preview(&cart, q.coupon_code.as_deref())
        .await?;
    Ok(Json(CartPreview { cart, discounts }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CartQuery {
    /// A coupon to preview (case-insensitive).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub coupon_code: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    pub sku: String,
    /// 1..line maximum (default 10), summed with an existing line.
    #[schema(minimum = 1, maximum = 10)]
    pub quantity: i64,
    /// The purchase token from a flash sale's waiting room (required while a flash sale of
    /// the SKU is live; the line is then priced at the sale price).
    #[schema(max_length = 200)]
    pub purchase_token: Option<String>,
}

/// Add a SKU (adding an existing SKU adds to its quantity). Soft stock check; no reservation.
/// While a flash sale of the SKU is live it is sold only with a `purchase_token` (403
/// `purchase_token_required|invalid|expired`).
#[utoipa::path(post, path = "/carts/{id}/items", tag = "carts", params(("id" = String, Path)), request_body = AddItem,
    responses((status = 200, body = Cart), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn add_item(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AddItem>,
) -> Result<Json<Cart>, ApiError> {
    Ok(Json(
        s.carts
            .add_item(
                &id,
                p.as_ref(),
                &req.sku,
                req.quantity,
                req.purchase_token.as_deref(),
            )
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItem {
    /// 0 removes the line.
    #[schema(minimum = 0, maximum = 10)]
    pub quantity: i64,
}

/// Set a line's quantity (0 removes it).
#[utoipa::path(patch, path = "/carts/{id}/items/{sku}", tag = "carts",
    params(("id" = String, Path), ("sku" = String, Path)), request_body = UpdateItem,
    responses((status = 200, body = Cart), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
async fn update_item(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    Path((id, sku)): Path<(String, String)>,
    ApiJson(req): ApiJson<UpdateItem>,
) -> Result<Json<Cart>, ApiError> {
    Ok(Json(
        s.carts
            .set_quantity(&id, p.as_ref(), &sku, req.quantity)
            .await?,
    ))
}

/// Remove a line.
#[utoipa::path(delete, path = "/carts/{id}/items/{sku}", tag = "carts",
    params(("id" = String, Path), ("sku" = String, Path)),
    responses((status = 200, body = Cart), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn remove_item(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    Path((id, sku)): Path<(String, String)>,
) -> Result<Json<Cart>, ApiError> {
    Ok(Json(s.carts.set_quantity(&id, p.as_ref(), &sku, 0).await?))
}
