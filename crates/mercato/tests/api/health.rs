use mercato_testkit::spawn_app;

#[tokio::test]
async fn health_readiness_metrics_and_openapi_answer() {
    let app = spawn_app().await;
    let r = app.api.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));

    let r = app.api.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["checks"]["database"], "ok");
    assert_eq!(r.body["backend"], mercato_testkit::backend_name());

    let r = app.api.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    assert!(r.body["paths"]["/api/v1/auth/register"]["post"].is_object());

    let r = app.api.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.body.as_str().unwrap_or_default();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(
        text.contains("route=\"/readyz\""),
        "metrics are labelled by route template"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_and_unknown_routes_are_problems() {
    let app = spawn_app().await;
    let r = app
        .api
        .send(
            reqwest::Method::GET,
            "/nowhere",
            None,
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.code(), "route_not_found");
    assert_eq!(r.body["request_id"], "abc-123");

    let r = app.api.delete("/auth/register").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.code(), "method_not_allowed");
}

#[tokio::test]
async fn requests_over_the_ip_quota_get_429_with_retry_after() {
    let app = mercato_testkit::spawn_app_with(|s| s.rate_limit_ip_per_sec = 2).await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let r = app.api.get("/me").await;
        statuses.push(r.status);
        if r.status == 429 {
            last = Some(r);
            break;
        }
    }
    let r = last.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert!(r.header("ratelimit-limit").is_some());
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
}
