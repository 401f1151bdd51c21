//! Link routes (`/api/v1/links…`) and the redirect (`GET|HEAD /{code}` at the root): parse →
//! call the service → map to a response.

use crate::model::Utm;
use crate::service::{ClickFacts, LinkPatch, LinkView, Links, NewLink, Resolution, Stats};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Body};
use mercato_kernel::Timestamp;
use mercato_kernel::auth::Principal;
use mercato_kernel::error::{ApiError, Code, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, ClientIp, DeferredJson, created};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Deserializer};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<Links> {
    OpenApiRouter::new()
        .routes(routes!(create_link, list_links))
        .routes(routes!(get_link, patch_link, delete_link))
        .routes(routes!(link_stats))
        .routes(routes!(link_qr))
}

/// The redirect route, for the root of the short-link host.
pub fn redirect_router() -> axum::Router<Links> {
    axum::Router::new().route("/{code}", axum::routing::get(redirect))
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// Absolute http(s) URL, ≤ 2,048 characters, not on this server's short-link host.
    #[schema(
        min_length = 8,
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://"
    )]
    pub url: String,
    /// Custom code: 3–64 of `[A-Za-z0-9_-]`, not a reserved word; case-sensitive.
    #[schema(pattern = "^[A-Za-z0-9_-]{3,64}$")]
    pub slug: Option<String>,
    pub expires_at: Option<Timestamp>,
    #[schema(minimum = 1)]
    pub max_clicks: Option<i64>,
    /// At most 20 tags of 1–64 characters (trimmed; duplicates dropped).
    #[schema(max_items = 20)]
    pub tags: Option<Vec<String>>,
    pub utm: Option<Utm>,
    /// `"302"` (default) or `"301"`.
    #[schema(pattern = "^30[12]$")]
    pub redirect: Option<String>,
}

/// Create a short link (any signed-in user or API key).
#[utoipa::path(post, path = "/links", tag = "links", request_body = CreateLink,
    responses((status = 201, body = LinkView), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_link(
    State(l): State<Links>,
    who: Principal,
    headers: HeaderMap,
    ApiJson(b): ApiJson<CreateLink>,
) -> Result<Response, ApiError> {
    let req = NewLink {
        url: b.url,
        slug: b.slug,
        expires_at: b.expires_at,
        max_clicks: b.max_clicks,
        tags: b.tags.unwrap_or_default(),
        utm: b.utm,
        redirect: b.redirect,
    };
    let row = l.create(&who, req, host(&headers)).await?;
    Ok(created(l.view(&row, &l.base_url(host(&headers)))).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only links with this tag.
    pub tag: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Own links, newest first (admin: everyone's).
#[utoipa::path(get, path = "/links", tag = "links", params(ListQuery),
    responses((status = 200, body = Page<LinkView>)), security(("bearer" = [])))]
async fn list_links(
    State(l): State<Links>,
    who: Principal,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<LinkView>>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<(i64, String)>()?;
    let rows = l
        .list(&who, q.tag.as_deref(), page.after, page.limit)
        .await?;
    let base = l.base_url(host(&headers));
    let page = Page::from_rows(rows, page.limit, |r| (r.created_at, r.id.clone()));
    Ok(Json(page.map(|r| l.view(&r, &base))))
}

/// A link (owner or admin; anyone else gets 404).
#[utoipa::path(get, path = "/links/{id}", tag = "links", params(("id" = String, Path)),
    responses((status = 200, body = LinkView), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_link(
    State(l): State<Links>,
    who: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<LinkView>, ApiError> {
    let row = l.get(&who, &id).await?;
    Ok(Json(l.view(&row, &l.base_url(host(&headers)))))
}

/// `Some(None)` for an explicit `null`, `None` when absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchLink {
    #[schema(
        min_length = 8,
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://"
    )]
    pub url: Option<String>,
    /// `null` removes the expiry.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Timestamp>)]
    pub expires_at: Option<Option<Timestamp>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub max_clicks: Option<Option<i64>>,
    #[schema(max_items = 20)]
    pub tags: Option<Vec<String>>,
    /// `null` removes the UTM parameters.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub utm: Option<Option<Utm>>,
    #[schema(pattern = "^30[12]$")]
    pub redirect: Option<String>,
}

/// Change a link (owner or admin). Takes effect on this node's redirect at once and on every
/// other node within a second.
#[utoipa::path(patch, path = "/links/{id}", tag = "links", params(("id" = String, Path)),
    request_body = PatchLink,
    responses((status = 200, body = LinkView), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn patch_link(
    State(l): State<Links>,
    who: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: DeferredJson<PatchLink>,
) -> Result<Json<LinkView>, ApiError> {
    // Ownership first: someone else's link is a 404 whatever the body says.
    let row = l.get(&who, &id).await?;
    let b = body.parse()?;
    let patch = LinkPatch {
        url: b.url,
        expires_at: b.expires_at,
        max_clicks: b.max_clicks,
        tags: b.tags,
        utm: b.utm,
        redirect: b.redirect,
    };
    let row = l.update(row, patch, host(&headers)).await?;
    Ok(Json(l.view(&row, &l.base_url(host(&headers)))))
}

/// Delete a link (owner or admin): its redirect answers 404 at once; the code stays taken.
#[utoipa::path(delete, path = "/links/{id}", tag = "links", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn delete_link(
    State(l): State<Links>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = l.get(&who, &id).await?;
    l.delete(row).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// RFC 3339; default: one hour (minute), two days (hour) or 30 days (day) before `to`.
    pub from: Option<Timestamp>,
    /// RFC 3339; default now.
    pub to: Option<Timestamp>,
    /// `minute`, `hour` or `day` (default).
    #[param(pattern = "^(minute|hour|day)$")]
    pub interval: Option<String>,
    /// Count bots too (default false).
    pub include_bots: Option<bool>,
}

/// Click stats of a link from its rollups (owner or admin).
#[utoipa::path(get, path = "/links/{id}/stats", tag = "links", params(("id" = String, Path), StatsQuery),
    responses((status = 200, body = Stats), (status = 404, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn link_stats(
    State(l): State<Links>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<Stats>, ApiError> {
    let row = l.get(&who, &id).await?;
    let interval = q.interval.as_deref().unwrap_or("day");
    Ok(Json(
        l.stats(
            &row,
            q.from,
            q.to,
            interval,
            q.include_bots.unwrap_or(false),
        )
        .await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QrQuery {
    /// `svg` (default) or `png`.
    #[param(pattern = "^(svg|png)$")]
    pub format: Option<String>,
    /// Side in pixels, 64–2048 (default 256); a PNG rounds up to whole pixels per module.
    #[param(minimum = 64, maximum = 2048)]
    pub size: Option<u32>,
}

/// A QR code of the link's short URL (owner or admin).
#[utoipa::path(get, path = "/links/{id}/qr", tag = "links", params(("id" = String, Path), QrQuery),
    responses((status = 200, description = "the QR code image", content((String = "image/svg+xml"), (Vec<u8> = "image/png"))),
              (status = 404, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn link_qr(
    State(l): State<Links>,
    who: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<QrQuery>,
) -> Result<Response, ApiError> {
    let row = l.get(&who, &id).await?;
    let size = q.size.unwrap_or(256);
    if !crate::model::QR_SIZES.contains(&size) {
        return Err(ApiError::invalid("size", "64 to 2048 pixels"));
    }
    let short_url = format!("{}/{}", l.base_url(host(&headers)), row.code);
    let (body, content_type) = match q.format.as_deref().unwrap_or("svg") {
        "svg" => (
            crate::model::qr_svg(&short_url, size)
                .map_err(|e| ApiError::internal(anyhow::anyhow!("QR encoding: {e}")))?
                .into_bytes(),
            "image/svg+xml",
        ),
        "png" => (
            crate::model::qr_png(&short_url, size).map_err(ApiError::internal)?,
            "image/png",
        ),
        _ => return Err(ApiError::invalid("format", "svg or png")),
    };
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(r)
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0"),
    );
    r
}

/// The redirect: no auth, no body, from the cache. A browser (Accept: text/html) gets a small
/// HTML page for unknown (404) and expired or used-up (410) links; other clients problem+json.
async fn redirect(
    State(l): State<Links>,
    method: axum::http::Method,
    headers: HeaderMap,
    ip: ClientIp,
    Path(code): Path<String>,
) -> Response {
    let facts = (method == axum::http::Method::GET).then(|| ClickFacts {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        referer: headers.get(header::REFERER).and_then(|v| v.to_str().ok()),
        country: l
            .country_header()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok()),
        ip: ip.0,
    });
    match l.resolve(&code, facts).await {
        Resolution::Redirect { status, location } => {
            let Ok(loc) = HeaderValue::from_str(&location) else {
                return ApiError::internal(anyhow::anyhow!("unencodable Location")).into_response();
            };
            let mut r = Response::new(Body::empty());
            *r.status_mut() = if status == 301 {
                StatusCode::MOVED_PERMANENTLY
            } else {
                StatusCode::FOUND
            };
            let h = r.headers_mut();
            h.insert(header::LOCATION, loc);
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=0"),
            );
            r
        }
        Resolution::NotFound if wants_html(&headers) => page(
            StatusCode::NOT_FOUND,
            "Link not found",
            "There is no link at this address.",
        ),
        // The same answer as any unknown route, so a short-link host and the API agree.
        Resolution::NotFound => ApiError::new(Code::RouteNotFound).into_response(),
        Resolution::Gone if wants_html(&headers) => page(
            StatusCode::GONE,
            "Link expired",
            "This link has expired or is no longer available.",
        ),
        Resolution::Gone => ApiError::new(Code::LinkGone).into_response(),
    }
}
