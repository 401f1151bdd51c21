//! Search routes: `GET /products` (listing with facets), `GET /search`, `GET /search/suggest`.
//! Parameters are parsed from the raw query string so `brand` can repeat.

use super::model::{RawParams, SearchRequest, SearchResults, Suggestions, parse_suggest};
use crate::AppState;
use axum::Json;
use axum::extract::{RawQuery, State};
use mercato_kernel::error::{ApiError, Code, Problem};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products))
        .routes(routes!(search))
        .routes(routes!(suggest))
}

/// Filters, sort and page shared by the listing and search (documentation of the query
/// string; `brand` and `category` may repeat).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// Category id; products of its descendants are included. Repeat (or comma-separate) for
    /// any of several.
    category: Option<Vec<String>>,
    /// Brand, case-insensitive. Repeat for any of several.
    brand: Option<Vec<String>>,
    /// Lowest current price at least this, in minor units.
    min_price: Option<i64>,
    /// Lowest current price at most this, in minor units.
    max_price: Option<i64>,
    /// Only products that can be bought now.
    in_stock: Option<bool>,
    /// Minimum average rating, 0–5.
    rating: Option<f64>,
    /// `price_asc | price_desc | newest | rating` (default `newest`; search also takes and
    /// defaults to `relevance`).
    sort: Option<String>,
    /// 1..=100, default 20.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SearchText {
    /// The text query (required, ≤ 200 characters).
    q: String,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SuggestParams {
    /// What the user has typed so far (required, ≤ 100 characters).
    q: String,
    /// 1..=10, default 10.
    limit: Option<u32>,
}

fn params(raw: Option<String>) -> Result<RawParams, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::new(Code::InvalidQuery).detail("the query string is not valid"))?;
    RawParams::from_pairs(pairs)
}

/// List active products with facets (brands, categories, price ranges, ratings); each facet's
/// counts honour every filter except its own.
#[utoipa::path(get, path = "/products", tag = "search", params(ListParams),
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
#[utoipa::path(get, path = "/search", tag = "search", params(SearchText, ListParams),
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
