//! The URL shortener: links, the redirect, its cache, clicks and stats.

use mercato_kernel::clock::Clock as _;
use mercato_testkit::{TestApp, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

async fn visit(app: &TestApp, code: &str, ua: &str) -> reqwest::Response {
    http()
        .get(format!("{}/{code}", app.address))
        .header("user-agent", ua)
        .header("referer", "https://www.news.example/article")
        .header("cf-ipcountry", "DE")
        .send()
        .await
        .expect("redirect request")
}

async fn create(_app: &TestApp, who: &mercato_testkit::Client, body: Value) -> Value {
    let r = who.post("/links", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

#[tokio::test]
async fn a_link_is_created_redirects_changes_and_is_deleted() {
    let app = spawn_app().await;
    let user = app.customer().await;
    let link = create(
        &app,
        &user,
        json!({"url": "https://example.com/a?x=1", "tags": ["spring"]}),
    )
    .await;
    let code = link["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(code.len(), 7);
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(link["short_url"], format!("{}/{code}", app.address));
    assert_eq!(link["clicks"], 0);

    let r = visit(&app, &code, CHROME).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://example.com/a?x=1");
    assert_eq!(r.headers()["cache-control"], "private, max-age=0");

    // HEAD answers the same without a body.
    let r = http()
        .head(format!("{}/{code}", app.address))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://example.com/a?x=1");

    // The change is visible on the very next redirect (this node's cache dropped it).
    let id = link["id"].as_str().unwrap_or_default();
    let r = user
        .patch(
            &format!("/links/{id}"),
            json!({"url": "https://example.com/b", "redirect": "301"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = visit(&app, &code, CHROME).await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://example.com/b");

    let listed = user.get("/links?tag=spring").await;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(user.get("/links?tag=other").await.body["data"], json!([]));

    let r = user.delete(&format!("/links/{id}")).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = visit(&app, &code, CHROME).await;
    assert_eq!(r.status(), 404);
    let r = http()
        .get(format!("{}/{code}", app.address))
        .header("accept", "text/html")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/html")
    );
    assert_eq!(user.get(&format!("/links/{id}")).await.status, 404);
}

#[tokio::test]
async fn slugs_and_urls_are_validated() {
    let app = spawn_app().await;
    let user = app.customer().await;
    let r = user
        .post(
            "/links",
            json!({"url": "https://example.com/", "slug": "Summer-Sale"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["code"], "Summer-Sale");
    let r = user
        .post(
            "/links",
            json!({"url": "https://example.com/", "slug": "Summer-Sale"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.code(), "slug_taken");
    // Codes are case-sensitive.
    let r = user
        .post(
            "/links",
            json!({"url": "https://example.com/", "slug": "summer-sale"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    for reserved in ["api", "healthz", "metrics", "admin", "static"] {
        let r = user
            .post(
                "/links",
                json!({"url": "https://example.com/", "slug": reserved}),
            )
            .await;
        assert_eq!(r.status, 422, "{reserved}: {}", r.body);
    }
    let host = app.address.trim_start_matches("http://").to_owned();
    let long = format!("https://example.com/{}", "a".repeat(2100));
    for bad in [
        "javascript:alert(1)".to_owned(),
        "/relative/path".to_owned(),
        "ftp://example.com/x".to_owned(),
        long,
        format!("http://{host}/abc"),
    ] {
        let r = user.post("/links", json!({"url": bad})).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert_eq!(r.code(), "invalid_url", "{bad}");
    }
    // Nothing was created by the refused requests.
    assert_eq!(
        user.get("/links").await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // Anonymous callers cannot create links.
    let r = app
        .api
        .anonymous()
        .post("/links", json!({"url": "https://example.com/"}))
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn utm_parameters_are_merged_keeping_the_existing_query() {
    let app = spawn_app().await;
    let user = app.customer().await;
    let link = create(
        &app,
        &user,
        json!({"url": "https://shop.example/p?color=red&size=m",
               "utm": {"source": "newsletter", "campaign": "spring"}}),
    )
    .await;
    let r = visit(&app, link["code"].as_str().unwrap_or_default(), CHROME).await;
    assert_eq!(
        r.headers()["location"],
        "https://shop.example/p?color=red&size=m&utm_source=newsletter&utm_campaign=spring"
    );
}

#[tokio::test]
async fn expired_and_used_up_links_are_gone() {
    let app = spawn_app().await;
    let user = app.customer().await;
    let limited = create(
        &app,
        &user,
        json!({"url": "https://example.com/", "max_clicks": 2}),
    )
    .await;
    let code = limited["code"].as_str().unwrap_or_default();
    assert_eq!(visit(&app, code, CHROME).await.status(), 302);
    assert_eq!(visit(&app, code, CHROME).await.status(), 302);
    let r = visit(&app, code, CHROME).await;
    assert_eq!(r.status(), 410);

    let soon = app.clock.now().plus(Duration::from_secs(60)).to_rfc3339();
    let expiring = create(
        &app,
        &user,
        json!({"url": "https://example.com/", "expires_at": soon}),
    )
    .await;
    let code = expiring["code"].as_str().unwrap_or_default();
    assert_eq!(visit(&app, code, CHROME).await.status(), 302);
    app.clock.advance(Duration::from_secs(61));
    let r = http()
        .get(format!("{}/{code}", app.address))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 410);
    let r = http()
        .get(format!("{}/{code}", app.address))
        .header("accept", "application/json")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 410);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn another_users_link_is_not_found() {
    let app = spawn_app().await;
    let alice = app.customer().await;
    let bob = app.customer().await;
    let link = create(&app, &alice, json!({"url": "https://example.com/"})).await;
    let id = link["id"].as_str().unwrap_or_default();
    assert_eq!(bob.get(&format!("/links/{id}")).await.status, 404);
    assert_eq!(bob.get(&format!("/links/{id}/stats")).await.status, 404);
    // Ownership is checked before the body: a malformed body still answers 404.
    let r = bob
        .send_raw(
            reqwest::Method::PATCH,
            &format!("/links/{id}"),
            "application/json",
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(bob.delete(&format!("/links/{id}")).await.status, 404);
    assert_eq!(bob.get("/links").await.body["data"], json!([]));
    let admin = app.admin().await;
    assert_eq!(admin.get(&format!("/links/{id}")).await.status, 200);
}

#[tokio::test]
async fn a_flood_of_unknown_codes_reads_the_database_once_per_code() {
    let app = spawn_app().await;
    let before = app.links.cache().db_reads();
    let codes: Vec<String> = (0..20).map(|i| format!("nope{i:03}")).collect();
    let mut tasks = Vec::new();
    for round in 0..10 {
        for c in &codes {
            let url = format!("{}/{c}", app.address);
            tasks.push(tokio::spawn(async move {
                let _ = round;
                http().get(url).send().await.map(|r| r.status().as_u16())
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.ok().and_then(Result::ok), Some(404));
    }
    assert_eq!(app.links.cache().db_reads() - before, 20);
    // A code created after it was asked for is found at once (the negative entry is dropped).
    let user = app.customer().await;
    create(
        &app,
        &user,
        json!({"url": "https://example.com/", "slug": "nope000"}),
    )
    .await;
    assert_eq!(visit(&app, "nope000", CHROME).await.status(), 302);
}

#[tokio::test]
async fn a_change_on_one_node_reaches_the_other_within_a_second() {
    let a = spawn_app().await;
    let url = a.settings.effective_database_url();
    let b = spawn_app_with(|s| s.database_url = Some(url)).await;
    let user = a.customer().await;
    let link = create(&a, &user, json!({"url": "https://example.com/one"})).await;
    let code = link["code"].as_str().unwrap_or_default().to_owned();
    let id = link["id"].as_str().unwrap_or_default().to_owned();
    // Node B caches the link.
    assert_eq!(
        visit(&b, &code, CHROME).await.headers()["location"],
        "https://example.com/one"
    );
    let r = user
        .patch(
            &format!("/links/{id}"),
            json!({"url": "https://example.com/two"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let started = std::time::Instant::now();
    let seen = b
        .eventually(Duration::from_secs(1), || {
            let (b, code) = (&b, code.clone());
            async move {
                let r = visit(b, &code, CHROME).await;
                (r.headers().get("location").and_then(|v| v.to_str().ok())
                    == Some("https://example.com/two"))
                .then_some(())
            }
        })
        .await;
    assert!(
        seen.is_some(),
        "node B still redirects to the old URL after 1 s"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    user.delete(&format!("/links/{id}")).await;
    let gone = b
        .eventually(Duration::from_secs(1), || {
            let (b, code) = (&b, code.clone());
            async move { (visit(b, &code, CHROME).await.status() == 404).then_some(()) }
        })
        .await;
    assert!(
        gone.is_some(),
        "node B still redirects a deleted link after 1 s"
    );
}

#[tokio::test]
async fn stats_count_exactly_the_human_clicks_per_interval_and_dimension() {
    let app = spawn_app_with(|s| s.links_flush_ms = 50).await;
    let user = app.customer().await;
    let link = create(&app, &user, json!({"url": "https://example.com/"})).await;
    let code = link["code"].as_str().unwrap_or_default().to_owned();
    let id = link["id"].as_str().unwrap_or_default().to_owned();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (addr, code) = (app.address.clone(), code.clone());
        let ua = if i % 4 == 0 { GOOGLEBOT } else { CHROME };
        tasks.push(tokio::spawn(async move {
            http()
                .get(format!("{addr}/{code}"))
                .header("user-agent", ua)
                .header("referer", "https://www.news.example/x")
                .header("cf-ipcountry", "de")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.ok().and_then(Result::ok), Some(302));
    }
    // 30 humans, 10 crawlers; wait until the batch is flushed.
    let stats = app
        .eventually(Duration::from_secs(5), || {
            let user = &user;
            let id = id.clone();
            async move {
                let r = user
                    .get(&format!(
                        "/links/{id}/stats?interval=minute&include_bots=true"
                    ))
                    .await;
                (r.body["clicks"] == 40).then_some(())
            }
        })
        .await;
    assert!(stats.is_some(), "the batch was not flushed");
    let r = user
        .get(&format!("/links/{id}/stats?interval=minute"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &r.body;
    assert_eq!(s["clicks"], 30, "{s}");
    let series: i64 = s["series"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["clicks"].as_i64()).sum())
        .unwrap_or(0);
    assert_eq!(series, 30);
    assert_eq!(
        s["referrers"],
        json!([{"value": "news.example", "clicks": 30}])
    );
    assert_eq!(s["countries"], json!([{"value": "DE", "clicks": 30}]));
    assert_eq!(s["browsers"], json!([{"value": "Chrome", "clicks": 30}]));
    assert_eq!(s["devices"], json!([{"value": "desktop", "clicks": 30}]));
    assert_eq!(
        s["unique_visitors"], 1,
        "one address and agent: one visitor"
    );
    for interval in ["hour", "day"] {
        let r = user
            .get(&format!("/links/{id}/stats?interval={interval}"))
            .await;
        assert_eq!(r.body["clicks"], 30, "{interval}: {}", r.body);
    }
    // The rollups agree with the raw clicks.
    let raw = app
        .links
        .store()
        .raw_click_count(&id, false)
        .await
        .unwrap_or(-1);
    assert_eq!(raw, 30);
    let got = user.get(&format!("/links/{id}")).await;
    assert_eq!(got.body["clicks"], 40);
    assert_eq!(
        user.get(&format!("/links/{id}/stats?interval=week"))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn reserved_words_cover_every_first_segment_of_the_router() {
    // The first path segments the server routes at its root; a slug may take none of them.
    let app = spawn_app().await;
    let doc = app.api.get("/api/v1/openapi.json").await.body;
    let mut firsts: Vec<String> = vec!["healthz".into(), "readyz".into(), "metrics".into()];
    if let Some(paths) = doc["paths"].as_object() {
        for p in paths.keys() {
            if let Some(first) = p.trim_start_matches('/').split('/').next() {
                firsts.push(first.to_owned());
            }
        }
    }
    for f in firsts {
        assert!(
            mercato_links::model::RESERVED.contains(&f.as_str()),
            "`{f}` is routed but not reserved"
        );
        let r = app.api.get(&format!("/{f}")).await;
        assert_ne!(r.status, 302, "/{f} must not be a short link");
    }
}
