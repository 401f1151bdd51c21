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

#[tokio::test]
async fn a_qr_code_decodes_to_the_short_url() {
    let app = spawn_app().await;
    let user = app.customer().await;
    let link = create(&app, &user, json!({"url": "https://example.com/qr"})).await;
    let id = link["id"].as_str().unwrap_or_default();
    let short_url = link["short_url"].as_str().unwrap_or_default().to_owned();

    let r = http()
        .get(format!(
            "{}/api/v1/links/{id}/qr?format=png&size=200",
            app.address
        ))
        .bearer_auth(user.token.clone().unwrap_or_default())
        .send()
        .await
        .expect("qr request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().await.expect("png bytes");
    // Decode the PNG, then read the QR code in it.
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    let mut reader = decoder.read_info().expect("a png header");
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or_default()];
    let info = reader.next_frame(&mut buf).expect("a png frame");
    assert!(info.width >= 200 && info.width == info.height);
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    let (_, text) = grids[0].decode().expect("a readable QR code");
    assert_eq!(text, short_url);

    let svg = user.get(&format!("/links/{id}/qr")).await;
    assert_eq!(svg.status, 200);
    for bad in ["format=gif", "size=10", "size=5000", "size=abc"] {
        let r = user.get(&format!("/links/{id}/qr?{bad}")).await;
        assert!(matches!(r.status, 400 | 422), "{bad}: {}", r.status);
    }
    let bob = app.customer().await;
    assert_eq!(bob.get(&format!("/links/{id}/qr")).await.status, 404);
}

#[tokio::test]
async fn an_attributed_carts_paid_order_appears_in_the_links_stats() {
    let app = spawn_app().await;
    let (admin, sku, wh, _) = crate::inventory::stocked(&app, "attr").await;
    admin.set_stock(&sku, &wh, 10).await;
    let marketer = app.customer().await;
    // A link into the shop's own storefront: the redirect carries the code as `mref`.
    let link = create(
        &app,
        &marketer,
        json!({"url": format!("{}/products/{sku}?color=red", app.address), "slug": "spring-tee"}),
    )
    .await;
    let id = link["id"].as_str().unwrap_or_default().to_owned();
    let r = visit(&app, "spring-tee", CHROME).await;
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("{}/products/{sku}?color=red&mref=spring-tee", app.address).as_str()
    );
    // A link to an outside site gets no mref.
    let other = create(&app, &marketer, json!({"url": "https://example.com/x"})).await;
    assert_eq!(other["destination"], "https://example.com/x");

    // The storefront creates the cart with the code it was sent.
    let buyer = app.customer().await;
    let bad = buyer
        .post("/carts", json!({"attribution": "no spaces allowed"}))
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let cart = buyer
        .post("/carts", json!({"attribution": "spring-tee"}))
        .await;
    assert_eq!(cart.status, 201, "{}", cart.body);
    assert_eq!(cart.body["attribution"], "spring-tee");
    let cart_id = cart.id();
    assert_eq!(buyer.add_to_cart(&cart_id, &sku, 2).await.status, 200);
    let chk = buyer
        .checkout(&cart_id, mercato_testkit::sample_address())
        .await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let paid = buyer.pay(&chk.id(), "tok_visa", "attr-pay").await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    let order_id = paid.body["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let total = paid.body["payment"]["amount"]["amount"]
        .as_i64()
        .unwrap_or_default();
    assert!(total > 0);
    assert_eq!(
        buyer.order(&order_id).await.body["attribution"],
        "spring-tee"
    );

    // An unattributed purchase does not count.
    let (other_buyer, _) = (app.customer().await, ());
    let c2 = other_buyer.create_cart().await.id();
    other_buyer.add_to_cart(&c2, &sku, 1).await;
    let chk2 = other_buyer
        .checkout(&c2, mercato_testkit::sample_address())
        .await;
    assert_eq!(
        other_buyer
            .pay(&chk2.id(), "tok_visa", "attr-pay-2")
            .await
            .status,
        201
    );

    let stats = app
        .eventually(Duration::from_secs(10), || {
            let marketer = marketer.clone();
            let id = id.clone();
            async move {
                let s = marketer.get(&format!("/links/{id}/stats")).await;
                (s.body["orders"] == 1).then_some(s.body)
            }
        })
        .await
        .expect("the attributed order reaches the link's stats");
    assert_eq!(stats["revenue"][0]["amount"], total);
    assert_eq!(stats["revenue"][0]["currency"], "USD");
    assert_eq!(stats["revenue"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_dedicated_links_host_answers_only_redirects() {
    let app = spawn_app_with(|s| s.links_host = Some("sho.rt.test".into())).await;
    let user = app.customer().await;
    let link = create(&app, &user, json!({"url": "https://example.com/dedicated"})).await;
    let code = link["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(link["short_url"], format!("http://sho.rt.test/{code}"));
    let on = |path: &str, host: Option<&str>| {
        let mut rb = http().get(format!("{}{path}", app.address));
        if let Some(h) = host {
            rb = rb.header("host", h);
        }
        rb.send()
    };
    let r = on(&format!("/{code}"), Some("sho.rt.test"))
        .await
        .expect("redirect");
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://example.com/dedicated");
    // The main host no longer answers codes; the short host answers nothing else.
    assert_eq!(
        on(&format!("/{code}"), None).await.expect("main").status(),
        404
    );
    assert_eq!(
        on("/api/v1/products", Some("sho.rt.test:80"))
            .await
            .expect("api")
            .status(),
        404
    );
    assert_eq!(
        on("/api/v1/products", None).await.expect("api").status(),
        200
    );
    // Anything on the short host is a loop; the shop's own pages are not.
    let r = user
        .post("/links", json!({"url": "http://sho.rt.test/products/1"}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "invalid_url");
    let shop = format!("{}/about", app.address);
    assert_eq!(user.post("/links", json!({"url": shop})).await.status, 201);
}

#[tokio::test]
async fn a_dedicated_links_listener_serves_the_redirect() {
    let app = spawn_app_with(|s| s.links_addr = Some("127.0.0.1:0".into())).await;
    let user = app.customer().await;
    let link = create(&app, &user, json!({"url": "https://example.com/listener"})).await;
    let code = link["code"].as_str().unwrap_or_default().to_owned();
    let short_url = link["short_url"].as_str().unwrap_or_default().to_owned();
    assert_ne!(short_url, format!("{}/{code}", app.address));
    let r = http().get(&short_url).send().await.expect("redirect");
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://example.com/listener");
    assert!(r.headers().contains_key("x-request-id"));
    let r = http().head(&short_url).send().await.expect("head");
    assert_eq!(r.status(), 302);
    let base = short_url.trim_end_matches(&format!("/{code}")).to_owned();
    let r = http()
        .get(format!("{base}/api/v1/products"))
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 404, "only redirects on the links listener");
    let r = http()
        .get(format!("{}/{code}", app.address))
        .send()
        .await
        .expect("main");
    assert_eq!(r.status(), 404, "the main listener no longer answers codes");
}

#[tokio::test]
async fn click_countries_come_from_the_geoip_database_when_no_cdn_header_says() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("countries.mmdb");
    let db = mercato_testkit::mmdb::country_db(&[
        (std::net::Ipv4Addr::new(127, 0, 0, 0), 8, "GB"),
        (std::net::Ipv4Addr::new(10, 0, 0, 0), 8, "FR"),
    ]);
    std::fs::write(&path, db).expect("writing the database");
    let p = path.to_string_lossy().into_owned();
    let app = spawn_app_with(move |s| s.links_geoip_db = Some(p)).await;
    let user = app.customer().await;
    let link = create(&app, &user, json!({"url": "https://example.com/geo"})).await;
    let code = link["code"].as_str().unwrap_or_default().to_owned();
    let id = link["id"].as_str().unwrap_or_default().to_owned();
    for _ in 0..2 {
        let r = http()
            .get(format!("{}/{code}", app.address))
            .header("user-agent", CHROME)
            .send()
            .await
            .expect("redirect");
        assert_eq!(r.status(), 302);
    }
    // The trusted CDN header wins over the database.
    assert_eq!(visit(&app, &code, CHROME).await.status(), 302);
    let stats = app
        .eventually(Duration::from_secs(5), || {
            let user = user.clone();
            let id = id.clone();
            async move {
                let s = user
                    .get(&format!("/links/{id}/stats?interval=minute"))
                    .await;
                (s.body["clicks"] == 3).then_some(s.body)
            }
        })
        .await
        .expect("the clicks were flushed");
    assert_eq!(
        stats["countries"],
        json!([{"value": "GB", "clicks": 2}, {"value": "DE", "clicks": 1}])
    );
}

#[tokio::test]
async fn a_missing_geoip_database_fails_the_start_with_its_setting() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut settings = mercato_testkit::test_settings(dir.path());
    settings.links_geoip_db = Some("/nonexistent/countries.mmdb".into());
    let err = mercato::startup::Application::build(settings, Default::default())
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("links_geoip_db"), "{err}");
}
