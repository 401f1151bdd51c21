//! CORS for headless storefronts: listed origins get CORS answers per route class (store vs
//! admin), everyone else gets none; and a real browser page on another origin can call the API
//! and open an SSE stream (headless Chromium; skipped with a notice when it is not installed).

use mercato_testkit::{TestApp, spawn_app, spawn_app_with};
use reqwest::Method;
use std::time::Duration;

const STORE: &str = "http://shop.example:3000";
const ADMIN: &str = "https://admin.example";

async fn app() -> TestApp {
    spawn_app_with(|s| {
        s.cors_store_origins = Some(format!("{STORE}, http://other-shop.example"));
        s.cors_admin_origins = Some(ADMIN.into());
    })
    .await
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    let r = reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}{path}", app.address))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await;
    match r {
        Ok(r) => r,
        Err(e) => panic!("preflight failed: {e}"),
    }
}

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn a_preflight_from_a_listed_store_origin_is_allowed() {
    let app = app().await;
    let r = preflight(&app, "/api/v1/checkouts", STORE, "POST").await;
    assert_eq!(r.status(), 204);
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(h("access-control-allow-origin"), STORE);
    let methods = h("access-control-allow-methods");
    for m in ["GET", "POST", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h("access-control-allow-headers").to_ascii_lowercase();
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
        "x-device-id",
    ] {
        assert!(headers.contains(name), "{headers}");
    }
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none(),
        "credentials are never allowed"
    );
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_headers() {
    let app = app().await;
    let r = preflight(&app, "/api/v1/checkouts", "https://evil.example", "POST").await;
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    // The admin routes answer the admin origins only.
    let r = preflight(&app, "/api/v1/admin/webhooks", STORE, "POST").await;
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    let r = preflight(&app, "/api/v1/admin/webhooks", ADMIN, "POST").await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(ADMIN)
    );
    // And the admin origin is not a store origin.
    let r = preflight(&app, "/api/v1/products", ADMIN, "GET").await;
    assert_eq!(cors_headers(&r), Vec::<String>::new());
}

#[tokio::test]
async fn answers_to_a_listed_origin_expose_the_api_headers_errors_included() {
    let app = app().await;
    let r = app
        .api
        .send(Method::GET, "/products?limit=1", None, &[("origin", STORE)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(STORE));
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for name in [
        "x-request-id",
        "idempotent-replayed",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
        "location",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert!(r.header("access-control-allow-credentials").is_none());
    let r = app
        .api
        .send(Method::GET, "/me", None, &[("origin", STORE)])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some(STORE));
    let r = app
        .api
        .send(
            Method::GET,
            "/products?limit=1",
            None,
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn sse_streams_answer_cors_for_a_listed_origin() {
    let app = app().await;
    let customer = app.customer().await;
    let token = customer.token.clone().unwrap_or_default();
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/me/inbox/stream", app.address))
        .header("origin", STORE)
        .header("accept", "text/event-stream")
        .bearer_auth(token)
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(STORE)
    );
}

#[tokio::test]
async fn without_cors_settings_no_cors_headers_are_sent() {
    let app = spawn_app().await;
    let r = preflight(&app, "/api/v1/products", STORE, "GET").await;
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    let r = app
        .api
        .send(Method::GET, "/products?limit=1", None, &[("origin", STORE)])
        .await;
    assert!(r.header("access-control-allow-origin").is_none());
}

fn chromium() -> Option<String> {
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .into_iter()
    .find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(str::to_owned)
}

#[tokio::test]
async fn a_browser_page_on_another_origin_calls_the_api_and_opens_an_sse_stream() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: no chromium on this machine (apt-get install chromium)");
        return;
    };
    // The page's origin is known only once its server listens: bind it first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let page_origin = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().map(|a| a.port()).unwrap_or(0)
    );
    drop(listener);
    let origin = page_origin.clone();
    let app = spawn_app_with(move |s| s.cors_store_origins = Some(origin)).await;
    let customer = app.customer().await;
    let token = customer.token.clone().unwrap_or_default();
    let html = format!(
        r#"<!doctype html><html><body><pre id="out">running</pre><script>
const api = "{api}/api/v1";
const out = document.getElementById("out");
const results = {{}};
function done() {{ out.textContent = "RESULT " + JSON.stringify(results); }}
(async () => {{
  try {{
    const r = await fetch(api + "/products?limit=1");
    results.fetch_status = r.status;
    results.request_id = r.headers.get("x-request-id") !== null;
    const me = await fetch(api + "/me", {{ headers: {{ "Authorization": "Bearer {token}",
      "Idempotency-Key": "k-1", "Content-Type": "application/json" }} }});
    results.me_status = me.status;
  }} catch (e) {{ results.fetch_error = String(e); }}
  try {{
    // EventSource cannot send Authorization: storefronts read SSE with a streaming fetch.
    const ctl = new AbortController();
    const sse = await fetch(api + "/me/inbox/stream", {{ signal: ctl.signal,
      headers: {{ "Authorization": "Bearer {token}", "Last-Event-ID": "0", "Accept": "text/event-stream" }} }});
    results.sse_status = sse.status;
    results.sse_type = sse.headers.get("content-type");
    ctl.abort();
  }} catch (e) {{ results.sse_error = String(e); }}
  done();
  setTimeout(done, 8000);
}})();
</script></body></html>"#,
        api = app.address,
    );
    let (page, abort) = match page_server_at(&page_origin, html).await {
        Some(p) => p,
        None => {
            eprintln!("skipped: the page port was taken meanwhile");
            return;
        }
    };
    let out = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            "--dump-dom",
            &page,
        ])
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(60), out).await {
        Ok(Ok(o)) => o,
        other => panic!("running {browser}: {other:?}"),
    };
    abort.abort();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    let Some(json) = dom
        .split("RESULT ")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
    else {
        panic!(
            "no result in the page: {dom}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let json = json.replace("&quot;", "\"");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    assert_eq!(v["fetch_status"], 200, "{v}");
    assert_eq!(v["request_id"], true, "x-request-id is exposed: {v}");
    assert_eq!(
        v["me_status"], 200,
        "a preflighted request with Authorization: {v}"
    );
    assert!(v.get("fetch_error").is_none(), "{v}");
    assert_eq!(v["sse_status"], 200, "the SSE stream answers the page: {v}");
    assert!(
        v["sse_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{v}"
    );
    drop(app);
}

async fn page_server_at(origin: &str, html: String) -> Option<(String, tokio::task::AbortHandle)> {
    let addr = origin.strip_prefix("http://")?;
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Some((format!("{origin}/"), task.abort_handle()))
}
