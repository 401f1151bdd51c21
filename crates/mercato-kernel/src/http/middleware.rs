use crate::error::{ApiError, Code};
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderValue, header::HeaderName};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// Settings of the shared middleware stack.
#[derive(Clone, Debug)]
pub struct MiddlewareConfig {
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    pub max_in_flight: usize,
    pub trust_forwarded_for: bool,
}

/// The client's IP address: the peer address, or the first `X-Forwarded-For` hop when
/// configured to trust it. Inserted into request extensions by the middleware.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

/// Wraps `router` (which must already hold every route and the fallback) in the middleware
/// every request goes through, outermost first: panic guard → request id → span + metrics →
/// load shedding → timeout → body limit.
pub fn apply_middleware<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    cfg: MiddlewareConfig,
) -> Router<S> {
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let timeout = cfg.request_timeout;
    let trust_xff = cfg.trust_forwarded_for;
    router
        .layer(axum::extract::DefaultBodyLimit::max(cfg.body_limit_bytes))
        .layer(middleware::from_fn(
            move |req: Request, next: Next| async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(resp) => resp,
                    Err(_) => ApiError::new(Code::Timeout).retry_after(1).into_response(),
                }
            },
        ))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let permits = permits.clone();
            async move {
                // Shed load instead of queueing without bound.
                match permits.try_acquire_owned() {
                    Ok(_permit) => next.run(req).await,
                    Err(_) => {
                        metrics::counter!("http_requests_shed_total").increment(1);
                        ApiError::new(Code::Overloaded)
                            .retry_after(1)
                            .into_response()
                    }
                }
            }
        }))
        .layer(middleware::from_fn(observe))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            request_id(req, next, trust_xff)
        }))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_answer,
        ))
}

/// The thin stack of a hot read path that does no I/O of its own beyond a bounded cache fill
/// (the short-link redirect): panic guard → one layer that sets the request id and client IP,
/// sheds load past `max_in_flight`, and counts the answer per status with counters resolved
/// once (no per-request label allocation, no span, no timer, no body: it reads none).
pub fn apply_thin_middleware<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    route: &'static str,
    cfg: MiddlewareConfig,
) -> Router<S> {
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let trust_xff = cfg.trust_forwarded_for;
    let by_status: Arc<[(u16, metrics::Counter)]> = [301u16, 302, 404, 410, 429, 500, 503]
        .into_iter()
        .map(|s| {
            let status: &'static str = match s {
                301 => "301",
                302 => "302",
                404 => "404",
                410 => "410",
                429 => "429",
                500 => "500",
                _ => "503",
            };
            (
                s,
                metrics::counter!("http_requests_total", "method" => "GET", "route" => route, "status" => status),
            )
        })
        .collect();
    let other = metrics::counter!("http_requests_total", "method" => "GET", "route" => route, "status" => "other");
    router
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            let permits = permits.clone();
            let by_status = by_status.clone();
            let other = other.clone();
            async move {
                let id = req
                    .headers()
                    .get(&X_REQUEST_ID)
                    .and_then(valid_request_id)
                    .unwrap_or_else(|| crate::id::new_id("req"));
                let ip = client_ip(&req, trust_xff);
                req.extensions_mut().insert(ClientIp(ip));
                let mut resp = match permits.try_acquire_owned() {
                    Ok(_permit) => REQUEST_ID.scope(id.clone(), next.run(req)).await,
                    Err(_) => {
                        metrics::counter!("http_requests_shed_total").increment(1);
                        ApiError::new(Code::Overloaded)
                            .retry_after(1)
                            .into_response()
                    }
                };
                let status = resp.status().as_u16();
                match by_status.iter().find(|(s, _)| *s == status) {
                    Some((_, c)) => c.increment(1),
                    None => other.increment(1),
                }
                if let Ok(v) = HeaderValue::from_str(&id) {
                    resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
                }
                resp
            }
        }))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_answer,
        ))
}

/// What a request whose handler panicked answers: a 500 problem, never a dropped connection.
fn panic_answer(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(Code::Internal).into_response()
}

fn client_ip(req: &Request, trust_xff: bool) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    let forwarded = trust_xff
        .then(|| {
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        })
        .flatten();
    forwarded
        .or(peer)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.into())
}

async fn request_id(mut req: Request, next: Next, trust_xff: bool) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(valid_request_id)
        .unwrap_or_else(|| crate::id::new_id("req"));
    let ip = client_ip(&req, trust_xff);
    req.extensions_mut().insert(ClientIp(ip));
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = current_request_id().unwrap_or_default(),
        method = %method,
        route = %route,
        status = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    let started = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    let elapsed = started.elapsed();
    let labels = [
        ("method", method.to_string()),
        ("route", route.clone()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!(
        "http_request_duration_seconds",
        &[("method", method.to_string()), ("route", route)]
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "served");
    });
    resp
}

/// Fallback for unknown routes.
pub async fn route_not_found() -> ApiError {
    ApiError::new(Code::RouteNotFound)
}

/// Fallback for known routes called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(Code::MethodNotAllowed)
}
