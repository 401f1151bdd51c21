//! Inventory routes: warehouses (admin), stock writes (admin, or the seller of the SKU),
//! availability (public) and the full breakdown and movement log (admin/seller).

use super::model::{AdjustReason, Movement, StockLevel, Warehouse};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use mercato_kernel::auth::{Admins, Authorized, Staff};
use mercato_kernel::auth::{MaybePrincipal, Role};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, created};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_warehouses, create_warehouse))
        .routes(routes!(set_stock))
        .routes(routes!(adjust_stock))
        .routes(routes!(get_stock))
        .routes(routes!(list_movements))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWarehouse {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,32}$")]
    pub code: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = "^[A-Za-z]{2}$")]
    pub country: String,
    #[schema(max_length = 100)]
    pub region: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WarehouseList {
    pub data: Vec<Warehouse>,
}

/// Create a warehouse (admin).
#[utoipa::path(post, path = "/warehouses", tag = "inventory", request_body = CreateWarehouse,
    responses((status = 201, body = Warehouse), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_warehouse(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiJson(req): ApiJson<CreateWarehouse>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(created(
        s.inventory
            .create_warehouse(&req.code, &req.name, &req.country, req.region.as_deref())
            .await?,
    ))
}

/// List warehouses (admin, seller).
#[utoipa::path(get, path = "/warehouses", tag = "inventory",
    responses((status = 200, body = WarehouseList)), security(("bearer" = [])))]
async fn list_warehouses(
    State(s): State<AppState>,
    _p: Authorized<Staff>,
) -> Result<Json<WarehouseList>, ApiError> {
    Ok(Json(WarehouseList {
        data: s.inventory.warehouses().await?,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub on_hand: i64,
}

/// Set the absolute on-hand count of a SKU in a warehouse (idempotent). Below what is
/// reserved → 409 `below_reserved`.
#[utoipa::path(put, path = "/inventory/{sku}/warehouses/{warehouse_id}", tag = "inventory",
    params(("sku" = String, Path), ("warehouse_id" = String, Path)), request_body = SetStock,
    responses((status = 200, body = StockLevel), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn set_stock(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    Path((sku, warehouse_id)): Path<(String, String)>,
    ApiJson(req): ApiJson<SetStock>,
) -> Result<Json<StockLevel>, ApiError> {
    Ok(Json(
        s.inventory
            .set_on_hand(&p, &sku, &warehouse_id, req.on_hand)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    pub warehouse_id: String,
    /// Units to add (positive) or remove (negative); not zero.
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000)]
    pub delta: i64,
    pub reason: AdjustReason,
    pub reference: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AdjustmentResult {
    pub sku: String,
    pub warehouse_id: String,
    pub delta: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// Change on-hand stock by a delta (restock, damage, return, correction). Every change is an
/// entry in the append-only movement log.
#[utoipa::path(post, path = "/inventory/{sku}/adjustments", tag = "inventory", params(("sku" = String, Path)),
    request_body = Adjustment,
    responses((status = 201, body = AdjustmentResult), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn adjust_stock(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    Path(sku): Path<String>,
    ApiJson(req): ApiJson<Adjustment>,
) -> Result<impl IntoResponse, ApiError> {
    let after = s
        .inventory
        .adjust(
            &p,
            &sku,
            &req.warehouse_id,
            req.delta,
            req.reason,
            req.reference.as_deref(),
        )
        .await?;
    let sku = crate::catalog::model::Sku::parse(&sku)
        .map(|s| s.as_str().to_owned())
        .unwrap_or(sku);
    Ok((
        StatusCode::CREATED,
        Json(AdjustmentResult {
            sku,
            warehouse_id: req.warehouse_id,
            delta: req.delta,
            on_hand: after.on_hand,
            reserved: after.reserved,
            available: after.on_hand - after.reserved,
        }),
    ))
}

/// What anonymous callers and customers see of a SKU's stock.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StockView {
    /// Admins and the SKU's seller.
    Full(StockLevel),
    /// Everyone else.
    Public(PublicStock),
}

/// The stock anyone may see: how many units can be bought now.
#[derive(Serialize, utoipa::ToSchema)]
// Documents `additionalProperties: false`, so a full level never matches this schema too.
#[serde(deny_unknown_fields)]
pub struct PublicStock {
    pub sku: String,
    pub available: i64,
}

/// Stock of a SKU. Admins and the SKU's seller get on-hand, reserved and the per-warehouse
/// breakdown; everyone else gets `{sku, available}`.
#[utoipa::path(get, path = "/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)),
    responses((status = 200, body = StockView), (status = 404, body = Problem)))]
async fn get_stock(
    State(s): State<AppState>,
    MaybePrincipal(p): MaybePrincipal,
    Path(sku): Path<String>,
) -> Result<Json<StockView>, ApiError> {
    let level = s.inventory.level(&sku).await?;
    let full = match &p {
        Some(p) if p.role == Role::Admin => true,
        Some(p) if p.role == Role::Seller => {
            let infos = s.catalog.skus(std::slice::from_ref(&level.sku)).await?;
            infos
                .get(&level.sku)
                .is_some_and(|i| i.seller_id == p.subject)
        }
        _ => false,
    };
    Ok(Json(if full {
        StockView::Full(level)
    } else {
        StockView::Public(PublicStock {
            sku: level.sku,
            available: level.available,
        })
    }))
}

/// The movement log of a SKU, oldest first (admin, or the SKU's seller).
#[utoipa::path(get, path = "/inventory/{sku}/movements", tag = "inventory", params(("sku" = String, Path), PageQuery),
    responses((status = 200, body = Page<Movement>), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn list_movements(
    State(s): State<AppState>,
    p: Authorized<Staff>,
    Path(sku): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Movement>>, ApiError> {
    let level = s.inventory.level(&sku).await?;
    if p.role == Role::Seller {
        let infos = s.catalog.skus(std::slice::from_ref(&level.sku)).await?;
        if infos
            .get(&level.sku)
            .is_none_or(|i| i.seller_id != p.subject)
        {
            return Err(ApiError::forbidden());
        }
    }
    let page = q.parse::<i64>()?;
    let rows = s
        .inventory
        .movements(&level.sku, page.after.unwrap_or(0), page.limit)
        .await?;
    Ok(Json(
        Page::from_rows(rows, page.limit, |(seq, _)| *seq).map(|(_, m)| m),
    ))
}
