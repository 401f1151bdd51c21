//! Search, listing with facets, suggestions: the index is fed by events, so every assertion
//! on results waits (`eventually`) for the projection to catch up.

use mercato_events::inventory::LowStock;
use mercato_kernel::outbox::{self, NewEvent};
use mercato_testkit::{Client, TestApp, TestResponse, sample_product, spawn_app};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Generous wait for the projection (the contract is 5 s; CI machines are slow and shared).
const CATCH_UP: Duration = Duration::from_secs(20);

struct Shop {
    admin: Client,
    electronics: String,
    laptops: String,
    phones: String,
    home: String,
}

async fn shop(app: &TestApp) -> Shop {
    let admin = app.admin().await;
    let e = admin
        .create_category("Electronics", "electronics", None)
        .await;
    assert_eq!(e.status, 201, "{}", e.body);
    let l = admin
        .create_category("Laptops", "laptops", Some(&e.id()))
        .await;
    let p = admin
        .create_category("Phones", "phones", Some(&e.id()))
        .await;
    let h = admin.create_category("Home", "home", None).await;
    assert_eq!((l.status, p.status, h.status), (201, 201, 201));
    Shop {
        admin,
        electronics: e.id(),
        laptops: l.id(),
        phones: p.id(),
        home: h.id(),
    }
}

/// Creates a product and returns its id.
async fn product(
    shop: &Shop,
    category: &str,
    name: &str,
    brand: &str,
    sku: &str,
    price: i64,
    extra: Value,
) -> String {
    let mut body = sample_product(category, name, brand, &[(sku, price)]);
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        for (k, v) in extra {
            b.insert(k, v);
        }
    }
    let r = shop.admin.create_product(body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.id()
}

/// The standard catalog of these tests: 6 listed products and a draft.
async fn catalog(app: &TestApp) -> (Shop, Vec<String>) {
    let s = shop(app).await;
    let mut ids = Vec::new();
    for (cat, name, brand, sku, price) in [
        (&s.laptops, "Aurora 14 Laptop", "Lenovo", "L-1", 89_900),
        (&s.laptops, "Zenbook Laptop Pro", "Asus", "L-2", 129_900),
        (&s.laptops, "Carbon Laptop Sleeve", "Lenovo", "L-3", 2_900),
        (&s.phones, "Pixel Phone 8", "Google", "P-1", 69_900),
        (&s.phones, "Galaxy Phone S", "Samsung", "P-2", 79_900),
        (&s.home, "Espresso Machine", "Breville", "H-1", 49_900),
    ] {
        ids.push(product(&s, cat, name, brand, sku, price, json!({})).await);
    }
    product(
        &s,
        &s.laptops,
        "Secret Prototype Quasarbook",
        "Lenovo",
        "D-1",
        99_900,
        json!({"status": "draft"}),
    )
    .await;
    (s, ids)
}

/// GETs `path` until its `total` is `n` (or the wait runs out) and returns the last body.
async fn until_total(app: &TestApp, path: &str, n: u64) -> Value {
    let found = app
        .eventually(CATCH_UP, || async {
            let r = app.api.get(path).await;
            (r.status == 200 && r.body["total"] == n).then_some(r.body)
        })
        .await;
    match found {
        Some(b) => b,
        None => {
            let r = app.api.get(path).await;
            panic!("{path}: expected total {n}, got {} {}", r.status, r.body)
        }
    }
}

fn names(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn count_of(facet: &Value, key: &str, value: &str) -> u64 {
    facet
        .as_array()
        .and_then(|a| a.iter().find(|x| x[key] == value))
        .and_then(|x| x["count"].as_u64())
        .unwrap_or(0)
}

fn problem(r: &TestResponse, status: u16) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn listing_shows_active_products_with_facets_and_never_drafts() {
    let app = spawn_app().await;
    let (s, _) = catalog(&app).await;
    let body = until_total(&app, "/products", 6).await;
    assert!(!names(&body).iter().any(|n| n.contains("Secret")));
    let item = &body["data"][0];
    for field in [
        "id",
        "name",
        "brand",
        "category",
        "price",
        "max_price",
        "image",
        "rating",
        "in_stock",
        "created_at",
    ] {
        assert!(item.get(field).is_some(), "{field} missing in {item}");
    }
    // Newest first by default.
    assert_eq!(body["data"][0]["name"], "Espresso Machine");
    let f = &body["facets"];
    assert_eq!(count_of(&f["brands"], "value", "Lenovo"), 2, "{f}");
    assert_eq!(
        count_of(&f["categories"], "value", &s.electronics),
        5,
        "parents count their descendants: {f}"
    );
    assert_eq!(count_of(&f["categories"], "value", &s.laptops), 3);
    let ranges = f["price_ranges"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        ranges
            .iter()
            .filter_map(|r| r["count"].as_u64())
            .sum::<u64>(),
        6
    );
    assert!(
        ranges
            .iter()
            .any(|r| r["min"] == 150_000 && r["max"].is_null())
    );
    assert_eq!(body["did_you_mean"], Value::Null);

    // Nor in search, suggestions or spelling.
    let r = app.api.get("/search?q=quasarbook").await;
    assert_eq!(r.body["total"], 0, "{}", r.body);
    let r = app.api.get("/search/suggest?q=quasa").await;
    assert_eq!(r.body["suggestions"], json!([]), "{}", r.body);
    let r = app.api.get("/search?q=quasarbok").await;
    assert_eq!(r.body["did_you_mean"], Value::Null, "{}", r.body);
}

#[tokio::test]
async fn facet_counts_follow_the_other_filters_and_ignore_their_own() {
    let app = spawn_app().await;
    let (s, _) = catalog(&app).await;
    until_total(&app, "/products", 6).await;

    let body = until_total(&app, "/products?brand=lenovo", 2).await;
    let f = &body["facets"];
    // The brand facet ignores the brand filter: other brands stay selectable.
    assert_eq!(count_of(&f["brands"], "value", "Asus"), 1, "{f}");
    assert_eq!(count_of(&f["brands"], "value", "Lenovo"), 2);
    // Other facets honour it.
    assert_eq!(count_of(&f["categories"], "value", &s.phones), 0);
    assert_eq!(count_of(&f["categories"], "value", &s.laptops), 2);
    let total: u64 = f["price_ranges"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["count"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(total, 2);

    // A category filter narrows the brand facet but not the category facet.
    let path = format!("/products?category={}", s.phones);
    let body = until_total(&app, &path, 2).await;
    let f = &body["facets"];
    assert_eq!(count_of(&f["brands"], "value", "Lenovo"), 0, "{f}");
    assert_eq!(count_of(&f["brands"], "value", "Google"), 1);
    assert_eq!(count_of(&f["categories"], "value", &s.laptops), 3);

    // A price filter narrows brands; its own facet still shows every range.
    let body = until_total(&app, "/products?max_price=10000", 1).await;
    let f = &body["facets"];
    assert_eq!(count_of(&f["brands"], "value", "Asus"), 0, "{f}");
    let total: u64 = f["price_ranges"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["count"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(total, 6);

    // Search facets work the same way.
    let body = until_total(&app, "/search?q=laptop&brand=Asus", 1).await;
    assert_eq!(count_of(&body["facets"]["brands"], "value", "Lenovo"), 2);
}

#[tokio::test]
async fn filters_by_category_brand_price_rating_and_stock() {
    let app = spawn_app().await;
    let (s, ids) = catalog(&app).await;
    until_total(&app, "/products", 6).await;

    let body = until_total(&app, &format!("/products?category={}", s.electronics), 5).await;
    assert!(!names(&body).contains(&"Espresso Machine".to_owned()));
    until_total(&app, &format!("/products?category={}", s.laptops), 3).await;
    until_total(
        &app,
        &format!("/products?category={}&category={}", s.phones, s.home),
        3,
    )
    .await;
    until_total(&app, "/products?brand=Lenovo&brand=google", 3).await;
    let body = until_total(&app, "/products?min_price=50000&max_price=90000", 3).await;
    for p in body["data"].as_array().cloned().unwrap_or_default() {
        let a = p["price"]["amount"].as_i64().unwrap_or(0);
        assert!((50_000..=90_000).contains(&a), "{p}");
    }

    // Ratings come from reviews (the catalog emits an update; the index re-reads). Reviews
    // need a received purchase: stock the two SKUs, buy, deliver, then review.
    let wh = s.admin.create_warehouse("search-de", "DE").await;
    assert_eq!(wh.status, 201, "{}", wh.body);
    let mut reviewers = Vec::new();
    for sku in ["L-1", "P-1"] {
        let r = s.admin.set_stock(sku, &wh.id(), 5).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (c, order) = crate::orders::bought(&app, sku, 1).await;
        crate::orders::advance(
            &s.admin,
            order["id"].as_str().unwrap_or_default(),
            "delivered",
        )
        .await;
        reviewers.push(c);
    }
    for ((i, stars), c) in [(0usize, 5), (3, 2)].into_iter().zip(&reviewers) {
        let r = c
            .post(
                &format!("/products/{}/reviews", ids[i]),
                json!({"rating": stars, "title": "My view"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let body = until_total(&app, "/products?rating=4", 1).await;
    assert_eq!(body["data"][0]["id"], ids[0].as_str());
    let body = until_total(&app, "/products?rating=2", 2).await;
    let ratings: Vec<u64> = body["facets"]["rating"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["count"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(
        ratings,
        vec![1, 1, 2, 2],
        "4+, 3+, 2+, 1+ ignore the rating filter"
    );
    let body = until_total(&app, "/products?sort=rating&limit=2", 6).await;
    assert_eq!(body["data"][0]["id"], ids[0].as_str());

    // Stock: untracked is in stock; once inventory reports none (an inventory event naming
    // the SKU), the product drops out of in_stock=true.
    until_total(&app, "/products?in_stock=true", 6).await;
    // Inventory reports none of P-1 (its adjustment event names the SKU).
    let r = s.admin.set_stock("P-1", &wh.id(), 0).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut tx = app.state.kernel.db.begin().await.expect("tx");
    // An event the indexer cannot resolve is skipped, not retried forever.
    outbox::append(
        &mut tx,
        app.state.kernel.clock.now(),
        NewEvent::of(&LowStock {
            sku: "NOPE".into(),
            warehouse_id: "wh_test".into(),
            available: 0,
            threshold: 5,
        }),
    )
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    let body = until_total(&app, "/products?in_stock=true", 5).await;
    assert!(!names(&body).contains(&"Pixel Phone 8".to_owned()));
    let body = until_total(&app, &format!("/products?category={}", s.phones), 2).await;
    let pixel = body["data"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "Pixel Phone 8").cloned())
        .unwrap_or_default();
    assert_eq!(pixel["in_stock"], false, "{pixel}");
}

#[tokio::test]
async fn search_ranks_by_relevance_and_tolerates_one_typo_per_word() {
    let app = spawn_app().await;
    let (s, _) = catalog(&app).await;
    product(
        &s,
        &s.laptops,
        "Travel Backpack",
        "Osprey",
        "B-1",
        9_900,
        json!({"description": "Fits a 15 inch laptop", "attributes": {"material": "ripstop nylon"}}),
    )
    .await;
    until_total(&app, "/products", 7).await;

    // The name match outranks the description match.
    let body = until_total(&app, "/search?q=laptop", 4).await;
    assert_ne!(body["data"][0]["name"], "Travel Backpack", "{body}");
    assert_eq!(body["did_you_mean"], Value::Null);
    // Brand, attribute values and stemming.
    until_total(&app, "/search?q=osprey", 1).await;
    until_total(&app, "/search?q=ripstop", 1).await;
    until_total(&app, "/search?q=laptops", 4).await;
    // Every word must match.
    until_total(&app, "/search?q=laptop%20lenovo", 2).await;
    // A SKU as typed.
    until_total(&app, "/search?q=p-2", 1).await;

    // Typos: transposition, deletion, substitution — found, with a suggestion.
    let body = until_total(&app, "/search?q=lpatop", 4).await;
    assert_eq!(body["did_you_mean"], "laptop", "{body}");
    let body = until_total(&app, "/search?q=espreso", 1).await;
    assert_eq!(body["data"][0]["name"], "Espresso Machine");
    assert_eq!(body["did_you_mean"], "espresso");
    let body = until_total(&app, "/search?q=lenovo%20laptip", 2).await;
    assert_eq!(body["did_you_mean"], "lenovo laptop");
    // Two typos in one word are too many.
    until_total(&app, "/search?q=lpatpo", 0).await;
    // Nothing like it: no results, no suggestion.
    let body = until_total(&app, "/search?q=zzzzqqq", 0).await;
    assert_eq!(body["did_you_mean"], Value::Null);
}

#[tokio::test]
async fn suggest_completes_product_names_and_brands() {
    let app = spawn_app().await;
    catalog(&app).await;
    until_total(&app, "/products", 6).await;

    let r = app.api.get("/search/suggest?q=lap").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list: Vec<String> = r.body["suggestions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(list.first().map(String::as_str), Some("laptop"), "{list:?}");
    assert!(list.len() <= 10 && list.len() > 1, "{list:?}");
    for s in &list {
        assert!(
            s.to_lowercase()
                .split_whitespace()
                .any(|w| w.starts_with("lap")),
            "{s} does not complete lap"
        );
    }
    assert!(list.contains(&"Zenbook Laptop Pro".to_owned()), "{list:?}");

    // Brands complete too; earlier words narrow the completions.
    let r = app.api.get("/search/suggest?q=len").await;
    assert_eq!(r.body["suggestions"][0], "lenovo", "{}", r.body);
    let r = app.api.get("/search/suggest?q=carbon%20la").await;
    assert_eq!(r.body["suggestions"][0], "carbon laptop", "{}", r.body);
    let r = app.api.get("/search/suggest?q=lap&limit=1").await;
    assert_eq!(r.body["suggestions"].as_array().map(Vec::len), Some(1));
    let r = app.api.get("/search/suggest?q=xyzzy").await;
    assert_eq!(r.body["suggestions"], json!([]));
}

#[tokio::test]
async fn sorts_and_cursor_pages_cover_every_match_exactly_once() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    // 23 products; a few share a price so the tiebreak matters.
    let mut products = Vec::new();
    for i in 0..23i64 {
        let price = 1_000 + (i % 7) * 500;
        let brand = if i % 2 == 0 { "Even" } else { "Odd" };
        let name = format!("Widget {i}");
        let id = product(
            &s,
            &s.home,
            &name,
            brand,
            &format!("W-{i}"),
            price,
            json!({}),
        )
        .await;
        products.push((id, price));
    }
    until_total(&app, "/products", 23).await;

    for (base, sort) in [
        ("/products?", "newest"),
        ("/products?", "price_asc"),
        ("/products?", "price_desc"),
        ("/products?", "rating"),
        ("/search?q=widget&", "relevance"),
        ("/search?q=widget&", "price_asc"),
    ] {
        let mut seen = Vec::new();
        let mut prices = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let mut path = format!("{base}sort={sort}&limit=5");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let r = app.api.get(&path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            assert_eq!(r.body["total"], 23);
            for p in r.body["data"].as_array().cloned().unwrap_or_default() {
                seen.push(p["id"].as_str().unwrap_or_default().to_owned());
                prices.push(p["price"]["amount"].as_i64().unwrap_or(0));
            }
            cursor = r.body["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(seen.len(), 23, "{sort}: every match once");
        assert_eq!(unique.len(), 23, "{sort}: no duplicates");
        match sort {
            "price_asc" => assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}"),
            "price_desc" => assert!(prices.windows(2).all(|w| w[0] >= w[1]), "{prices:?}"),
            "newest" => {
                let expected: Vec<String> =
                    products.iter().rev().map(|(id, _)| id.clone()).collect();
                assert_eq!(seen, expected, "newest first");
            }
            _ => {}
        }
    }

    // A cursor is bound to its sort and must be well formed.
    let r = app.api.get("/products?sort=newest&limit=5").await;
    let c = r.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    problem(
        &app.api
            .get(&format!("/products?sort=price_asc&cursor={c}"))
            .await,
        400,
    );
    let r = app.api.get("/products?cursor=bm9wZQ").await;
    problem(&r, 400);
    assert_eq!(r.code(), "invalid_cursor");
}

#[tokio::test]
async fn an_update_is_searchable_within_five_seconds() {
    let app = spawn_app().await;
    let (s, ids) = catalog(&app).await;
    until_total(&app, "/search?q=espresso", 1).await;

    let r = s
        .admin
        .patch(
            &format!("/products/{}", ids[5]),
            json!({"name": "Barista Coffee Grinder", "description": "A burr grinder", "variants": [{"sku": "H-1", "name": "Steel burrs", "price": {"amount": 19_900, "currency": "USD"}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let updated = Instant::now();
    let found = app
        .eventually(Duration::from_secs(5), || async {
            let r = app.api.get("/search?q=grinder").await;
            (r.body["total"] == 1 && r.body["data"][0]["price"]["amount"] == 19_900).then_some(())
        })
        .await;
    assert!(
        found.is_some(),
        "not searchable after {:?}",
        updated.elapsed()
    );
    until_total(&app, "/search?q=espresso", 0).await;

    // Unpublishing (back to draft) removes it.
    let r = s
        .admin
        .patch(&format!("/products/{}", ids[5]), json!({"status": "draft"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    until_total(&app, "/search?q=grinder", 0).await;
    until_total(&app, "/products", 5).await;
}

#[tokio::test]
async fn a_deleted_index_is_rebuilt_at_restart_and_search_answers() {
    let app = spawn_app().await;
    catalog(&app).await;
    until_total(&app, "/search?q=laptop", 3).await;

    let app = app
        .restart(|settings| {
            let dir = settings.data_dir.join("search");
            assert!(dir.join("meta.json").exists(), "the index lives in {dir:?}");
            std::fs::remove_dir_all(&dir).expect("delete the index");
        })
        .await;
    until_total(&app, "/search?q=laptop", 3).await;
    until_total(&app, "/products", 6).await;

    // A plain restart keeps the index (and the consumer goes on).
    let app = app.restart(|_| {}).await;
    until_total(&app, "/search?q=laptop", 3).await;
}

#[tokio::test]
async fn bad_parameters_are_problems_not_failures() {
    let app = spawn_app().await;
    for path in [
        "/search",
        "/search?q=",
        "/search?q=%20%20",
        "/search?q=a&limit=0",
        "/search?q=a&limit=101",
        "/search?q=a&limit=x",
        "/search?q=a&sort=cheap",
        "/search?q=a&min_price=-1",
        "/search?q=a&min_price=1.5",
        "/search?q=a&max_price=99999999999999999999",
        "/search?q=a&min_price=10&max_price=5",
        "/search?q=a&in_stock=yes",
        "/search?q=a&rating=6",
        "/search?q=a&rating=NaN",
        "/search?q=a&category=laptops",
        "/search?q=%00",
        "/products?q=laptop",
        "/products?sort=relevance",
        "/products?brand=",
        "/search/suggest",
        "/search/suggest?q=",
        "/search/suggest?q=a&limit=11",
    ] {
        let r = app.api.get(path).await;
        problem(&r, 422);
        assert!(
            r.body["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "{path}: {}",
            r.body
        );
    }
    for path in [
        "/search?q=a&q=b",
        "/products?cursor=%%%",
        "/products?limit=5&limit=6",
    ] {
        problem(&app.api.get(path).await, 400);
    }
    // Odd but valid input answers 200.
    let long = "x".repeat(200);
    for path in [
        "/search?q=!!!",
        "/search?q=%E2%9C%93%20%E6%97%A5%E6%9C%AC",
        &format!("/search?q={long}"),
        "/search?q=a%20b%20c%20d%20e%20f%20g%20h%20i%20j%20k%20l",
        "/search/suggest?q=%E2%9C%93",
        "/products?in_stock=false&rating=0&min_price=0",
    ] {
        let r = app.api.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
}

#[tokio::test]
async fn the_openapi_document_has_both_methods_of_products() {
    let app = spawn_app().await;
    let r = app
        .api
        .http
        .get(format!("{}/api/v1/openapi.json", app.address))
        .send()
        .await
        .expect("openapi");
    let doc: Value = r.json().await.expect("json");
    let products = &doc["paths"]["/api/v1/products"];
    assert!(products.get("get").is_some(), "{products}");
    assert!(products.get("post").is_some(), "{products}");
    assert!(doc["paths"]["/api/v1/search"].get("get").is_some());
    assert!(doc["paths"]["/api/v1/search/suggest"].get("get").is_some());
    // And the router serves both.
    assert_eq!(app.api.get("/products").await.status, 200);
    let r = app.api.post("/products", json!({})).await;
    assert_eq!(r.status, 401, "{}", r.body);
}

fn reindex_command(settings: &mercato_kernel::config::Settings) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"));
    cmd.arg("--data-dir")
        .arg(&settings.data_dir)
        .args(["search", "reindex"])
        .env_remove("MERCATO_DATABASE_URL");
    if let Some(url) = &settings.database_url {
        cmd.env("MERCATO_DATABASE_URL", url);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running mercato: {e}"))
}

#[tokio::test]
async fn search_reindex_rebuilds_the_index_from_the_database() {
    let app = spawn_app().await;
    catalog(&app).await;
    until_total(&app, "/search?q=laptop", 3).await;

    // The running server holds the index: the command refuses, and the index is intact.
    let out = reindex_command(&app.settings);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_total(&app, "/search?q=laptop", 3).await;

    let app = app
        .restart(|settings| {
            let dir = settings.data_dir.join("search");
            std::fs::remove_dir_all(&dir).expect("delete the index");
            let out = reindex_command(settings);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("7 products read, 6 listed"),
                "drafts are read but not listed: {stdout}"
            );
            assert!(dir.join("meta.json").exists());
        })
        .await;
    // The rebuilt index is complete: answered at once, no rebuild needed at start.
    let r = app.api.get("/search?q=laptop").await;
    assert_eq!(r.body["total"], 3, "{}", r.body);
}

#[tokio::test]
async fn the_demo_catalog_loads_once_and_makes_search_meaningful() {
    let app = spawn_app().await;
    let lines = mercato::demo::load(&app.state).await.expect("demo");
    assert!(lines.iter().any(|l| l.contains("60 products")), "{lines:?}");
    let body = until_total(&app, "/products", 60).await;
    let f = &body["facets"];
    assert!(f["brands"].as_array().is_some_and(|b| b.len() >= 10), "{f}");
    let top_level: Vec<&Value> = f["categories"]
        .as_array()
        .map(|c| c.iter().filter(|x| x["parent_id"].is_null()).collect())
        .unwrap_or_default();
    assert_eq!(top_level.len(), 4, "{f}");
    assert!(f["categories"].as_array().is_some_and(|c| c.len() >= 10));

    // A second load adds nothing.
    let again = mercato::demo::load(&app.state).await.expect("demo again");
    assert!(!again.iter().any(|l| l.contains("products")), "{again:?}");
    let cats = app.api.get("/categories").await;
    assert_eq!(cats.body["data"].as_array().map(Vec::len), Some(4));

    let body = until_total(&app, "/products", 60).await;
    assert!(body["data"][0]["variant_count"].as_u64().unwrap_or(0) >= 2);
    let r = app.api.get("/search?q=lpatop").await;
    assert_eq!(r.body["did_you_mean"], "laptop", "{}", r.body);
    assert!(r.body["total"].as_u64().unwrap_or(0) > 0);
    let r = app.api.get("/search/suggest?q=lap").await;
    assert_eq!(r.body["suggestions"][0], "laptop", "{}", r.body);

    // Stock in two warehouses, so the demo can be bought end to end.
    assert!(
        lines.iter().any(|l| l.contains("2 warehouses")),
        "{lines:?}"
    );
    let admin = app.admin().await;
    assert_eq!(
        admin.get("/warehouses").await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let stock = admin
        .stock(&mercato::demo::sku(mercato::demo::DEMO_SKU_PREFIX, 0, 0))
        .await;
    assert_eq!(
        stock.body["warehouses"].as_array().map(Vec::len),
        Some(2),
        "{}",
        stock.body
    );
    assert!(stock.body["available"].as_i64().unwrap_or(0) > 0);
    let (c, order) = crate::orders::bought(
        &app,
        &mercato::demo::sku(mercato::demo::DEMO_SKU_PREFIX, 1, 0),
        1,
    )
    .await;
    assert_eq!(order["status"], "confirmed");
    let _ = c;
}

#[tokio::test]
async fn an_api_only_node_keeps_its_index_fed() {
    // This process runs no bus workers: in production a worker process relays the outbox
    // (assigns log positions); here the test plays that part with `relay_once`.
    let app = mercato_testkit::spawn_app_with(|s| s.role = "api".into()).await;
    let (s, _) = catalog(&app).await;
    let relay = app.bus.clone();
    let found = app
        .eventually(CATCH_UP, || async {
            let _ = relay.relay_once().await;
            let r = app.api.get("/search?q=laptop").await;
            (r.body["total"] == 3).then_some(())
        })
        .await;
    assert!(found.is_some(), "the api node's index was not fed");
    product(&s, &s.home, "Kettle", "Smeg", "K-1", 5_900, json!({})).await;
    let found = app
        .eventually(CATCH_UP, || async {
            let _ = relay.relay_once().await;
            let r = app.api.get("/search?q=kettle").await;
            (r.body["total"] == 1).then_some(())
        })
        .await;
    assert!(found.is_some());
}
