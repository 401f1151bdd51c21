//! Search routes: `GET /products` (listing with facets), `GET /search`, `GET /search/suggest`.
//! Parameters are parsed from the raw query string so `brand` can repeat.

use super::model::{RawParams, SearchRequest, SearchResults, Suggestions, parse_suggest};
use crate::AppState;
use axum::Json;
use axum::extract::{RawQuery, State};
use mercato_kernel::error::{ApiError, Code, Problem};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products))
        .routes(routes!(search))
        .routes(routes!(suggest))
}

// The query strings are parsed by `SearchRequest::parse` / `parse_suggest` (from the raw
// string, so `brand` can repeat); these structs only describe them, with the same limits.

/// Filters shared by the listing and search (`brand` and `category` may repeat).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListFilters {
    /// Category id; products of its descendants are included. Repeat (or comma-separate) for
    /// any of several (at most 20).
    #[param(max_items = 20, inline, value_type = Option<Vec<CategoryId>>)]
    category: Option<Vec<String>>,
    /// Brand, case-insensitive. Repeat for any of several (at most 20).
    #[param(max_items = 20, inline, value_type = Option<Vec<Brand>>)]
    brand: Option<Vec<String>>,
    /// Lowest current price at least this, in minor units.
    #[param(minimum = 0, maximum = 1_000_000_000_000_i64)]
    min_price: Option<i64>,
    /// Lowest current price at most this, in minor units (at least `min_price`).
    #[param(minimum = 0, maximum = 1_000_000_000_000_i64)]
    max_price: Option<i64>,
    /// Only products that can be bought now.
    in_stock: Option<bool>,
    /// Minimum average rating, 0–5.
    #[param(minimum = 0, maximum = 5)]
    rating: Option<f64>,
    /// 1..=100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page (of the same sort).
    cursor: Option<String>,
}

/// A category id (`cat_…`).
struct CategoryId;

impl utoipa::PartialSchema for CategoryId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^cat_[0-9A-Za-z]{1,64}$"))
            .into()
    }
}
impl utoipa::ToSchema for CategoryId {}

/// A brand: not blank, at most 100 characters, no control characters.
struct Brand;

impl utoipa::PartialSchema for Brand {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(100))
            .pattern(Some(
                r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
            ))
            .into()
    }
}
impl utoipa::ToSchema for Brand {}

/// The listing's orders.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum ListSort {
    PriceAsc,
    PriceDesc,
    Newest,
    Rating,
}

/// Search's orders.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum SearchSort {
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
    Rating,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListOrder {
    /// Default `newest`.
    #[param(inline)]
    sort: Option<ListSort>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SearchText {
    /// The text query (required, not blank, ≤ 200 characters, no control characters).
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    q: String,
    /// Default `relevance`.
    #[param(inline)]
    sort: Option<SearchSort>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SuggestParams {
    /// What the user has typed so far (required, not blank, ≤ 100 characters).
    #[param(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    q: String,
    /// 1..=10, default 10.
    #[param(minimum = 1, maximum = 10)]
    limit: Option<u32>,
}

fn params(raw: Option<String>) -> Result<RawParams, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::new(Code::InvalidQuery).detail("the query string is not valid"))?;
    RawParams::from_pairs(pairs)
}

/// List active products with facets (brands, categories, price ranges, ratings); each facet's
/// counts honour every filter except its own.
#[utoipa::path(get, path = "/products", tag = "search", params(ListFilters, ListOrder),
    responses((status = 200, body = SearchResults), (status = 400, body = Problem), (status = 422, body = Problem)))]
async fn list_products(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SearchResults>, ApiError> {
    let req = SearchRequest::parse(params(raw)?, false)?;
    Ok(Json(s.search.search(req).await?))
}

/// Full-text search: relevance-ranked, typo-tolerant (one typo per word of 4+ letters), with
/// the listing's filters and facets, the total and `did_you_mean` for likely typos.
#[utoipa::path(get, path = "/search", tag = "search", params(SearchText, ListFilters),
    responses((status = 200, body = SearchResults), (status = 400, body = Problem), (status = 422, body = Problem)))]
async fn search(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SearchResults>, ApiError> {
    let req = SearchRequest::parse(params(raw)?, true)?;
    Ok(Json(s.search.search(req).await?))
}

/// Completions of what the user is typing: words of product names and brands, then product
/// names (at most 10).
#[utoipa::path(get, path = "/search/suggest", tag = "search", params(SuggestParams),
    responses((status = 200, body = Suggestions), (status = 400, body = Problem), (status = 422, body = Problem)))]
async fn suggest(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Suggestions>, ApiError> {
    let p = params(raw)?;
    let (q, limit) = parse_suggest(p.q.as_deref(), p.limit.as_deref())?;
    Ok(Json(Suggestions {
        suggestions: s.search.suggest(q, limit).await?,
    }))
}
