//! Catalog routes: categories, products, reviews. (Listing and search live in `search`.)

use super::model::{Category, Product, ProductInput, ProductPatch, Review, ReviewInput};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use mercato_kernel::auth::MaybePrincipal;
use mercato_kernel::auth::{Admins, Authorized, Customers, Staff};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, DeferredJson, created};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_categories, create_category))
        .routes(routes!(create_product))
        .routes(routes!(get_product, update_product))
        .routes(routes!(list_reviews, add_review))
}

fn product_id(raw: &str) -> Result<(), ApiError> {
    if mercato_kernel::id::is_valid("prd", raw) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCategory {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// a-z 0-9 -, unique.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$")]
    pub slug: String,
    pub parent_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CategoryTree {
    pub data: Vec<Category>,
}

/// Create a category (admin).
#[utoipa::path(post, path = "/categories", tag = "catalog", request_body = CreateCategory,
    responses((status = 201, body = Category), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_category(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiJson(req): ApiJson<CreateCategory>,
) -> Result<impl IntoResponse, ApiError> {
    let c = s
        .catalog
        .create_category(&req.name, &req.slug, req.parent_id.as_deref())
        .await?;
    Ok(created(c))
}

/// The category tree.
#[utoipa::path(get, path = "/categories", tag = "catalog", responses((status = 200, body = CategoryTree)))]
async fn list_categories(State(s): State<AppState>) -> Result<Json<CategoryTree>, ApiError> {
    Ok(Json(CategoryTree {
        data: s.catalog.category_tree().await?,
    }))
}

/// Create a product (admin, or a seller for itself).
#[utoipa::path(post, path = "/products", tag = "catalog", request_body = ProductInput,
    responses((status = 201, body = Product), (status = 403, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_product(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    ApiJson(input): ApiJson<ProductInput>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(created(s.catalog.create_product(&p, input).await?))
}

/// A product with its variants, rating and availability. Drafts are visible to their seller
/// and admins only.
#[utoipa::path(get, path = "/products/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = Product), (status = 404, body = Problem)))]
async fn get_product(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    Path(id): Path<String>,
) -> Result<Json<Product>, ApiError> {
    product_id(&id)?;
    Ok(Json(s.catalog.product(&id, p.as_ref()).await?))
}

/// Partially update a product, prices included (admin or the owning seller).
#[utoipa::path(patch, path = "/products/{id}", tag = "catalog", params(("id" = String, Path)),
    request_body = ProductPatch,
    responses((status = 200, body = Product), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn update_product(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    Path(id): Path<String>,
    body: DeferredJson<ProductPatch>,
) -> Result<Json<Product>, ApiError> {
    product_id(&id)?;
    s.catalog.authorize_edit(&p, &id).await?;
    let patch = body.parse()?;
    Ok(Json(s.catalog.update_product(&p, &id, patch).await?))
}

/// Review a product (customers; one review per customer and product).
#[utoipa::path(post, path = "/products/{id}/reviews", tag = "catalog", params(("id" = String, Path)),
    request_body = ReviewInput,
    responses((status = 201, body = Review), (status = 403, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn add_review(
    State(s): State<AppState>,
    p: Authorized<Customers>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ReviewInput>,
) -> Result<impl IntoResponse, ApiError> {
    product_id(&id)?;
    Ok(created(s.catalog.add_review(&p, &id, input).await?))
}

/// Reviews of a product, newest first.
#[utoipa::path(get, path = "/products/{id}/reviews", tag = "catalog", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<Review>), (status = 404, body = Problem)))]
async fn list_reviews(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Review>>, ApiError> {
    product_id(&id)?;
    let page = q.parse::<(i64, String)>()?;
    let rows = s.catalog.reviews(&id, page.after, page.limit).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |r| {
        (r.created_at.as_micros(), r.id.clone())
    })))
}
