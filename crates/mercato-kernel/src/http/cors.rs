//! CORS for browser clients on other origins (headless storefronts, an admin console hosted
//! elsewhere), per route class: `/api/v1/admin/*` (and `/admin`) answer the admin origins,
//! every other route the store origins.
//!
//! Only a listed origin gets CORS headers — a request from anywhere else (or without `Origin`)
//! is answered exactly as without CORS, so the browser refuses to hand the answer to the page.
//! Credentials are never allowed (tokens travel in `Authorization`, not cookies). Preflights
//! (`OPTIONS` with `Access-Control-Request-Method`) from a listed origin are answered here,
//! before authentication, rate limits or routing; other `OPTIONS` requests pass through.
//!
//! Hand-written rather than tower-http's `CorsLayer`, which answers every `OPTIONS` as a
//! preflight and sends `Access-Control-Allow-Methods`/`-Headers` to unlisted origins too.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;

/// Methods a preflight allows (every method some route answers).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// Request headers a preflight allows.
pub const ALLOWED_HEADERS: &str =
    "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Device-Id";
/// Response headers a page may read.
pub const EXPOSED_HEADERS: &str = "x-request-id, idempotent-replayed, RateLimit-Limit, \
    RateLimit-Remaining, RateLimit-Reset, Retry-After, Location";
/// How long a browser may cache a preflight answer, seconds.
const MAX_AGE_SECS: &str = "600";

/// Allowed origins per route class.
#[derive(Clone, Debug, Default)]
pub struct CorsPolicy {
    pub store: HashSet<String>,
    pub admin: HashSet<String>,
}

/// Splits a comma-separated list of origins (`https://shop.example, http://localhost:3000`);
/// a trailing slash is ignored, and an origin must be `scheme://host[:port]`.
pub fn parse_origins(raw: Option<&str>) -> anyhow::Result<HashSet<String>> {
    let mut out = HashSet::new();
    for o in raw.unwrap_or_default().split(',') {
        let o = o.trim().trim_end_matches('/');
        if o.is_empty() {
            continue;
        }
        let Some((scheme, rest)) = o.split_once("://") else {
            anyhow::bail!("CORS origin {o:?} must look like https://host[:port]");
        };
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
            anyhow::bail!("CORS origin {o:?} must look like https://host[:port]");
        }
        out.insert(o.to_ascii_lowercase());
    }
    Ok(out)
}

impl CorsPolicy {
    pub fn from_lists(store: Option<&str>, admin: Option<&str>) -> anyhow::Result<CorsPolicy> {
        Ok(CorsPolicy {
            store: parse_origins(store)?,
            admin: parse_origins(admin)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty() && self.admin.is_empty()
    }

    /// Whether `origin` may call `path` from a browser.
    pub fn allows(&self, path: &str, origin: &str) -> bool {
        let list = if is_admin_path(path) {
            &self.admin
        } else {
            &self.store
        };
        list.contains(&origin.to_ascii_lowercase())
    }
}

/// The admin route class.
pub fn is_admin_path(path: &str) -> bool {
    let admin = |p: &str| p == "/admin" || p.starts_with("/admin/");
    admin(path) || path.strip_prefix("/api/v1").is_some_and(admin)
}

/// The middleware (outermost, so that every answer — errors and rate limits included —
/// carries the headers a listed origin needs to read it).
pub async fn cors(policy: std::sync::Arc<CorsPolicy>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| policy.allows(req.uri().path(), o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        let mut resp = next.run(req).await;
        if !policy.is_empty() {
            // The answer differs by Origin: shared caches must not reuse it across origins.
            resp.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
        return resp;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
        h.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_and_checked() {
        let p = CorsPolicy::from_lists(
            Some("https://shop.example, http://localhost:3000/"),
            Some("https://admin.example"),
        )
        .expect("lists");
        assert!(p.allows("/api/v1/products", "https://shop.example"));
        assert!(p.allows("/api/v1/products", "http://localhost:3000"));
        assert!(p.allows("/api/v1/me/inbox/stream", "HTTPS://SHOP.EXAMPLE"));
        assert!(!p.allows("/api/v1/admin/webhooks", "https://shop.example"));
        assert!(p.allows("/api/v1/admin/webhooks", "https://admin.example"));
        assert!(p.allows("/api/v1/admin", "https://admin.example"));
        assert!(!p.allows("/api/v1/administrators", "https://admin.example"));
        assert!(!p.allows("/api/v1/products", "https://evil.example"));
        assert!(CorsPolicy::from_lists(Some("shop.example"), None).is_err());
        assert!(CorsPolicy::from_lists(Some("https://a.example/path"), None).is_err());
        assert!(
            CorsPolicy::from_lists(None, None)
                .expect("empty")
                .is_empty()
        );
    }
}
