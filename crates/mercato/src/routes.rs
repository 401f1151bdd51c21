//! Operational routes (`/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json`) and the
//! assembly of the whole HTTP surface.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use mercato_commerce::AppState;
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::http::cors::CorsPolicy;
use mercato_kernel::http::{
    MiddlewareConfig, apply_middleware, method_not_allowed, route_not_found,
};
use mercato_kernel::idempotency::IdempotencyStore;
use mercato_kernel::ratelimit::{HttpQuotas, Quota};
use std::sync::Arc;
use std::time::Duration;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mercato",
        version = "1.0.0",
        description = "Mercato commerce backend — HTTP API v1. Errors are application/problem+json (RFC 9457)."
    ),
    modifiers(&BearerAuth),
    components(schemas(mercato_kernel::error::Problem))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An access token from /auth/login, or an API key"))
                    .build(),
            ),
        );
    }
}

/// Every `/api/v1` route with the OpenAPI document describing them.
pub fn api(
    notify: mercato_notify::NotifyState,
    webhooks: mercato_webhooks::Webhooks,
    links: mercato_links::Links,
    live: mercato_live::Live,
) -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::<AppState>::new()
        .merge(mercato_commerce::router())
        .merge(mercato_kernel::outbox::admin::router::<AppState>())
        // The notification platform has its own state.
        .merge(mercato_notify::router().with_state(notify))
        .merge(mercato_webhooks::router().with_state(webhooks))
        // So do short links.
        .merge(mercato_links::router().with_state(links))
        // And live streams.
        .merge(mercato_live::router().with_state(live));
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .split_for_parts();
    // Once every route is in: the error responses and headers all routes share.
    mercato_kernel::http::openapi::StandardResponses.modify(&mut doc);
    (router, doc)
}

/// The whole HTTP surface with its middleware.
pub fn build_router(
    state: AppState,
    notify: mercato_notify::NotifyState,
    webhooks: mercato_webhooks::Webhooks,
    links: mercato_links::Links,
    live: mercato_live::Live,
) -> Router {
    let settings = state.kernel.settings.clone();
    let (api, openapi) = api(notify, webhooks, links.clone(), live);
    let openapi = Arc::new(openapi.to_json().unwrap_or_else(|_| "{}".into()));

    let idempotency = Arc::new(IdempotencyStore {
        db: state.kernel.db.clone(),
        clock: state.kernel.clock.clone(),
        ttl: Duration::from_secs(
            u64::try_from(settings.idempotency_ttl_hours.max(24)).unwrap_or(24) * 3600,
        ),
        lease: Duration::from_millis(settings.idempotency_lease_ms.max(300)),
        body_limit: settings.body_limit_bytes,
    });
    let limiter = state.kernel.rate_limiter.clone();
    let quotas = HttpQuotas {
        per_ip: Quota::new(
            settings.rate_limit_ip_per_sec.saturating_mul(2),
            Duration::from_secs(2),
        ),
        per_principal: Quota::new(
            settings.rate_limit_principal_per_sec.saturating_mul(2),
            Duration::from_secs(2),
        ),
    };
    let authenticator: Arc<dyn mercato_kernel::auth::Authenticator> =
        Arc::new(state.identity.clone());

    // Innermost first: idempotency needs the principal, which the rate limiter also uses.
    let api = api
        .with_state(state.clone())
        .layer(middleware::from_fn(move |req, next| {
            mercato_kernel::idempotency::middleware(idempotency.clone(), req, next)
        }))
        .layer(middleware::from_fn(move |req, next| {
            mercato_kernel::ratelimit::limit_requests(limiter.clone(), quotas, req, next)
        }))
        .layer(middleware::from_fn(move |req, next| {
            mercato_kernel::auth::authenticate(authenticator.clone(), req, next)
        }));

    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .with_state(state);

    // The redirect (`GET|HEAD /{code}`) sits at the root beside the operational routes, outside
    // the API's auth, rate-limit and idempotency layers: it has no principal and no body.
    let router = ops
        .merge(api)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let router = apply_middleware(router, middleware_config(&settings));
    // The redirect bypasses the API's stack (auth, rate limits, idempotency, spans, label-
    // allocating metrics, timeout) for its own thin one: `/{code}` at the root of the main host
    // (unless a dedicated short-link host or listener is configured), or anything for
    // `links_host`.
    let short_host = links.links_host().map(str::to_owned);
    let on_root = links.served_on_main_root();
    let router = if short_host.is_some() || on_root {
        let short = build_links_router(&settings, links);
        router.layer(middleware::from_fn(
            move |req: axum::extract::Request, next: middleware::Next| {
                let short = short.clone();
                let is_short = match &short_host {
                    Some(h) => request_host(&req).is_some_and(|r| &r == h),
                    None => on_root && mercato_links::model::is_code_path(req.uri().path()),
                };
                async move {
                    if is_short {
                        use tower::ServiceExt as _;
                        match short.oneshot(req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        }
                    } else {
                        next.run(req).await
                    }
                }
            },
        ))
    } else {
        router
    };
    // Outermost: every answer (errors, rate limits, load shedding) carries CORS headers for a
    // listed origin, and preflights are answered before anything else runs. Settings were
    // validated at load, so the lists parse.
    let cors = Arc::new(
        CorsPolicy::from_lists(
            settings.cors_store_origins.as_deref(),
            settings.cors_admin_origins.as_deref(),
        )
        .unwrap_or_default(),
    );
    if cors.is_empty() {
        return router;
    }
    router.layer(middleware::from_fn(move |req, next| {
        mercato_kernel::http::cors::cors(cors.clone(), req, next)
    }))
}

/// The lower-cased host name a request is for (port dropped).
fn request_host(req: &axum::extract::Request) -> Option<String> {
    let h = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let name = match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    };
    Some(name.to_ascii_lowercase())
}

/// The routes of a dedicated short-link host or listener: the redirect and nothing else.
pub fn short_link_router(links: mercato_links::Links) -> Router {
    mercato_links::redirect_router()
        .with_state(links)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The shared middleware settings of every listener.
fn middleware_config(settings: &mercato_kernel::config::Settings) -> MiddlewareConfig {
    MiddlewareConfig {
        request_timeout: Duration::from_millis(settings.request_timeout_ms),
        body_limit_bytes: settings.body_limit_bytes,
        max_in_flight: settings.max_in_flight_requests,
        trust_forwarded_for: settings.trust_forwarded_for,
    }
}

/// The short-link routes behind their thin stack (request id, client IP, load shedding, a
/// counter per status, panic guard): for the main host's root, `links_host` and `links_addr`.
pub fn build_links_router(
    settings: &mercato_kernel::config::Settings,
    links: mercato_links::Links,
) -> Router {
    mercato_kernel::http::apply_thin_middleware(
        short_link_router(links),
        "/{code}",
        middleware_config(settings),
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.kernel.db.ping().await {
        Ok(()) => Json(serde_json::json!({
            "status": "ok",
            "checks": {"database": "ok"},
            "backend": s.kernel.db.backend().as_str(),
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::new(Code::Unavailable)
                .detail("the database does not answer")
                .with("checks", serde_json::json!({"database": "unavailable"}))
                .retry_after(5)
                .into_response()
        }
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    // Gauges computed at scrape time from the database.
    if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox WHERE log_pos IS NULL")
        .fetch_one(s.kernel.db.reader())
        .await
    {
        metrics::gauge!("outbox_unpublished").set(n as f64);
    }
    if let Ok(n) =
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM event_retries WHERE status = 'dead'")
            .fetch_one(s.kernel.db.reader())
            .await
    {
        metrics::gauge!("outbox_dead_letters").set(n as f64);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        mercato_kernel::telemetry::prometheus().render(),
    )
        .into_response()
}
