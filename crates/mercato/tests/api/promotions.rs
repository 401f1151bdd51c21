//! Promotions and coupons (API.md "Promotions and coupons"): admin CRUD, validation, the cart
//! preview with exact amounts for each kind and scope, stacking, and the usage counters'
//! reserve/commit/release under races (driven directly), and checkout applying coupons: exact
//! amounts, uses counted once through pay, decline, expiry, supersession and cancellation, and
//! a returned discounted line refunding what was paid for it.

use crate::inventory::stocked;
use mercato_commerce::promotions::{Exhausted, PromotionService};
use mercato_kernel::clock::Clock;
use mercato_testkit::{Client, TestApp, TestResponse, sample_address, sample_product, spawn_app};
use serde_json::{Value, json};
use std::time::Duration;

/// Categories electronics > laptops and home; a laptop (LAP-A 20.00, LAP-B 50.00) and a mug
/// (MUG-A 10.00).
struct Shop {
    admin: Client,
    electronics: String,
    laptops: String,
    home: String,
    laptop: String,
    mug: String,
}

async fn shop(app: &TestApp) -> Shop {
    let admin = app.admin().await;
    let electronics = admin
        .create_category("Electronics", "electronics", None)
        .await
        .id();
    let laptops = admin
        .create_category("Laptops", "laptops", Some(&electronics))
        .await
        .id();
    let home = admin.create_category("Home", "home", None).await.id();
    let r = admin
        .create_product(sample_product(
            &laptops,
            "Laptop",
            "Brand",
            &[("LAP-A", 2000), ("LAP-B", 5000)],
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let laptop = r.id();
    let r = admin
        .create_product(sample_product(&home, "Mug", "Brand", &[("MUG-A", 1000)]))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    Shop {
        admin,
        electronics,
        laptops,
        home,
        laptop,
        mug: r.id(),
    }
}

async fn promo(admin: &Client, body: Value) -> Value {
    let r = admin.post("/admin/promotions", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn cart_with(app: &TestApp, lines: &[(&str, i64)]) -> String {
    let id = app.api.create_cart().await.id();
    for (sku, q) in lines {
        let r = app.api.add_to_cart(&id, sku, *q).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    id
}

async fn preview(app: &TestApp, cart: &str, code: &str) -> TestResponse {
    app.api
        .get(&format!("/carts/{cart}?coupon_code={code}"))
        .await
}

fn amount(v: &Value) -> i64 {
    v["amount"].as_i64().unwrap_or(i64::MIN)
}

fn lines_of(d: &Value) -> Vec<String> {
    d["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

fn coupon(code: &str, kind: &str, value: Value) -> Value {
    json!({"name": format!("{code} promo"), "code": code, "kind": kind, "value": value, "status": "active"})
}

#[tokio::test]
async fn admins_create_read_list_and_patch_promotions() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let p = promo(
        &s.admin,
        json!({
            "name": "Spring", "code": "Spring10", "kind": "percent_off", "value": 1000,
            "applies_to": {"category_ids": [s.electronics]},
            "min_subtotal": {"amount": 5000, "currency": "USD"},
            "usage_limit": 100, "per_customer_limit": 1,
            "budget": {"amount": 100000, "currency": "USD"},
            "priority": 5, "status": "active"
        }),
    )
    .await;
    let id = p["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("prm_"), "{p}");
    assert_eq!(p["code"], "Spring10");
    assert_eq!(p["uses"], 0);
    assert_eq!(p["budget_used"], json!({"amount": 0, "currency": "USD"}));
    assert_eq!(p["value"], 1000);
    assert_eq!(p["applies_to"]["category_ids"], json!([s.electronics]));
    assert_eq!(p["stackable"], false);
    let r = s.admin.get(&format!("/admin/promotions/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, p);
    let second = promo(
        &s.admin,
        json!({"name": "Ship", "automatic": true, "kind": "free_shipping", "status": "active"}),
    )
    .await;
    assert_eq!(second["code"], Value::Null);
    let page = s.admin.get("/admin/promotions?limit=1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["data"][0]["id"], second["id"], "newest first");
    let cursor = page.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let next = s
        .admin
        .get(&format!("/admin/promotions?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(next.body["data"][0]["id"], json!(id));
    assert_eq!(next.body["next_cursor"], Value::Null);

    let r = s
        .admin
        .patch(
            &format!("/admin/promotions/{id}"),
            json!({"name": "Spring sale", "value": 1500, "budget": null, "status": "disabled"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "Spring sale");
    assert_eq!(r.body["value"], 1500);
    assert_eq!(r.body["budget"], Value::Null);
    assert_eq!(r.body["status"], "disabled");
    assert_eq!(r.body["code"], "Spring10");
    let r = s
        .admin
        .patch(&format!("/admin/promotions/{id}"), json!({"value": 10001}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errors"][0]["field"], "value");
    let r = s
        .admin
        .patch(
            &format!("/admin/promotions/{id}"),
            json!({"get": {"quantity": 1}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errors"][0]["field"], "get");
    let r = s
        .admin
        .patch("/admin/promotions/prm_NOPE", json!({"name": "x"}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(s.admin.get("/admin/promotions/prm_NOPE").await.status, 404);
    assert_eq!(s.admin.get("/admin/promotions/nope").await.status, 404);
    let r = s
        .admin
        .get(&format!("/admin/promotions/{id}/redemptions"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"], json!([]));
}

#[tokio::test]
async fn codes_are_unique_whatever_their_case() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    promo(&admin, coupon("SAVE10", "percent_off", json!(1000))).await;
    let r = admin
        .post(
            "/admin/promotions",
            coupon("save10", "percent_off", json!(500)),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.code(), "code_taken");
}

#[tokio::test]
async fn a_customer_is_refused_before_the_body_is_judged() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let r = customer
        .post("/admin/promotions", json!({"nonsense": true}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = customer
        .send_raw(
            reqwest::Method::POST,
            "/admin/promotions",
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(customer.get("/admin/promotions").await.status, 403);
    let r = customer
        .patch("/admin/promotions/prm_X", json!({"value": -1}))
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .api
        .post("/admin/promotions", json!({"nonsense": true}))
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn bad_input_is_a_422_naming_the_field() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let usd = |a: i64| json!({"amount": a, "currency": "USD"});
    let base = |extra: Value| {
        let mut b = coupon("BAD", "percent_off", json!(1000));
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        b
    };
    let cases = [
        (base(json!({"value": -5})), "value"),
        (base(json!({"value": 10001})), "value"),
        (base(json!({"kind": "amount_off", "value": 500})), "value"),
        (
            base(json!({"kind": "amount_off", "value": usd(-5)})),
            "value.amount",
        ),
        (base(json!({"kind": "amount_off", "value": null})), "value"),
        (base(json!({"kind": "buy_x_get_y", "value": null})), "buy"),
        (
            base(json!({"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"})),
            "ends_at",
        ),
        (
            base(json!({"applies_to": {"skus": ["NOPE-1"]}})),
            "applies_to.skus[0]",
        ),
        (
            base(json!({"applies_to": {"product_ids": ["prd_01NOPE"]}})),
            "applies_to.product_ids[0]",
        ),
        (
            base(json!({"applies_to": {"category_ids": ["cat_01NOPE"]}})),
            "applies_to.category_ids[0]",
        ),
        (base(json!({"usage_limit": 0})), "usage_limit"),
        (
            base(json!({"per_customer_limit": -1})),
            "per_customer_limit",
        ),
        (base(json!({"budget": usd(-100)})), "budget.amount"),
        (
            base(json!({"min_subtotal": usd(-1)})),
            "min_subtotal.amount",
        ),
        (base(json!({"code": "has space"})), "code"),
        (base(json!({"starts_at": "yesterday"})), "starts_at"),
    ];
    for (body, field) in cases {
        let r = s.admin.post("/admin/promotions", body.clone()).await;
        assert_eq!(r.status, 422, "{body} → {}", r.body);
        let fields: Vec<&str> = r.body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(
            fields.contains(&field),
            "{body}: wanted {field}, got {fields:?}"
        );
    }
    // Known references are accepted.
    promo(
        &s.admin,
        base(json!({"code": "GOOD", "applies_to": {
            "skus": ["lap-a"], "product_ids": [s.mug, s.laptop],
            "category_ids": [s.home, s.laptops]}})),
    )
    .await;
}

#[tokio::test]
async fn the_preview_gives_exact_amounts_for_each_kind_and_scope() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let a = &s.admin;
    promo(a, coupon("PCT10", "percent_off", json!(1000))).await;
    let mut by_category = coupon(
        "ELEC5",
        "amount_off",
        json!({"amount": 500, "currency": "USD"}),
    );
    by_category["applies_to"] = json!({"category_ids": [s.electronics]});
    promo(a, by_category).await;
    let mut by_product = coupon("MUG25", "percent_off", json!(2500));
    by_product["applies_to"] = json!({"product_ids": [s.mug]});
    promo(a, by_product).await;
    let mut by_sku = coupon("MUGFREE", "percent_off", json!(10000));
    by_sku["applies_to"] = json!({"skus": ["MUG-A"]});
    promo(a, by_sku).await;
    let mut by_leaf = coupon("LAPTOPS", "percent_off", json!(3333));
    by_leaf["applies_to"] = json!({"category_ids": [s.laptops]});
    promo(a, by_leaf).await;
    promo(
        a,
        json!({"name": "B2G1", "code": "B2G1", "kind": "buy_x_get_y",
               "buy": {"quantity": 2, "product_ids": [s.laptop]}, "get": {"quantity": 1},
               "status": "active"}),
    )
    .await;
    promo(
        a,
        json!({"name": "Ship free", "code": "SHIPFREE", "kind": "free_shipping", "status": "active"}),
    )
    .await;

    // 2 × 20.00 + 1 × 10.00 = 50.00
    let cart = cart_with(&app, &[("LAP-A", 2), ("MUG-A", 1)]).await;
    let plain = app.api.cart(&cart).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(amount(&plain.body["discount"]), 0);
    assert_eq!(plain.body["discounts"], json!([]));

    let cases: [(&str, i64, &[&str]); 5] = [
        ("PCT10", 500, &["LAP-A", "MUG-A"]),
        // The category of the laptop's parent covers it; the mug is elsewhere.
        ("elec5", 500, &["LAP-A"]),
        ("MUG25", 250, &["MUG-A"]),
        ("MUGFREE", 1000, &["MUG-A"]),
        // 33.33 % of 40.00 = 13.332 → 13.33
        ("LAPTOPS", 1333, &["LAP-A"]),
    ];
    for (code, want, lines) in cases {
        let r = preview(&app, &cart, code).await;
        assert_eq!(r.status, 200, "{code}: {}", r.body);
        assert_eq!(amount(&r.body["discount"]), want, "{code}: {}", r.body);
        let d = &r.body["discounts"][0];
        assert_eq!(lines_of(d), *lines, "{code}");
        assert_eq!(
            d["code"].as_str().map(str::to_lowercase),
            Some(code.to_lowercase())
        );
        assert!(
            d["promotion_id"]
                .as_str()
                .is_some_and(|p| p.starts_with("prm_"))
        );
        assert_eq!(
            amount(&r.body["subtotal"]),
            5000,
            "the subtotal is before discounts"
        );
    }
    // Two laptops are not enough for buy 2 get 1; three are, and the third is free.
    let r = preview(&app, &cart, "B2G1").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "coupon_not_applicable");
    assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    app.api.add_to_cart(&cart, "LAP-A", 1).await;
    let r = preview(&app, &cart, "B2G1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(amount(&r.body["discount"]), 2000);
    // Free shipping: no goods discount; the amount is known at checkout.
    let r = preview(&app, &cart, "SHIPFREE").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(amount(&r.body["discount"]), 0);
    assert_eq!(r.body["free_shipping"], true);
    assert_eq!(r.body["discounts"][0]["kind"], "free_shipping");
    // Unknown codes.
    for code in ["NOPE", "bad%20code", "", "%20PCT10"] {
        let r = preview(&app, &cart, code).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.code(), "coupon_invalid");
        assert!(r.body["detail"].is_string());
    }
}

#[tokio::test]
async fn stackable_promotions_combine_and_an_exclusive_one_wins_alone_when_better() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let a = &s.admin;
    promo(
        a,
        json!({"name": "Auto 10", "automatic": true, "kind": "percent_off", "value": 1000,
               "stackable": true, "status": "active"}),
    )
    .await;
    let mut stack = coupon(
        "STACK5",
        "amount_off",
        json!({"amount": 500, "currency": "USD"}),
    );
    stack["stackable"] = json!(true);
    promo(a, stack).await;
    promo(a, coupon("ALONE20", "percent_off", json!(2000))).await;
    promo(a, coupon("ALONE5", "percent_off", json!(500))).await;
    let cart = cart_with(&app, &[("LAP-A", 2), ("MUG-A", 1)]).await;
    // The automatic promotion shows without a coupon.
    let r = app.api.cart(&cart).await;
    assert_eq!(amount(&r.body["discount"]), 500, "{}", r.body);
    assert_eq!(r.body["discounts"][0]["code"], Value::Null);
    // 10 % of 50.00, then 5.00 off what is left.
    let r = preview(&app, &cart, "STACK5").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(amount(&r.body["discount"]), 1000);
    assert_eq!(r.body["discounts"].as_array().map(Vec::len), Some(2));
    // Exclusive and worth more: alone.
    let r = preview(&app, &cart, "ALONE20").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(amount(&r.body["discount"]), 1000);
    assert_eq!(r.body["discounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.body["discounts"][0]["code"], "ALONE20");
    // Exclusive and worth less than what already applies.
    let r = preview(&app, &cart, "alone5").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "coupon_not_applicable");
}

#[tokio::test]
async fn a_coupon_needs_its_minimum_subtotal_and_its_window() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let mut min = coupon("BIG", "percent_off", json!(1000));
    min["min_subtotal"] = json!({"amount": 6000, "currency": "USD"});
    min["stackable"] = json!(true);
    promo(&s.admin, min).await;
    let now = app.clock.now();
    let mut later = coupon("LATER", "percent_off", json!(1000));
    later["starts_at"] = json!(now.plus_secs(3600).to_rfc3339());
    promo(&s.admin, later).await;
    let mut soon = coupon("SOON", "percent_off", json!(1000));
    soon["ends_at"] = json!(now.plus_secs(3600).to_rfc3339());
    promo(&s.admin, soon).await;
    let mut auto = json!({"name": "Big spender", "automatic": true, "kind": "amount_off",
                          "value": {"amount": 100, "currency": "USD"}, "stackable": true,
                          "min_subtotal": {"amount": 6000, "currency": "USD"}, "status": "active"});
    auto["priority"] = json!(1);
    promo(&s.admin, auto).await;

    let cart = cart_with(&app, &[("LAP-A", 2), ("MUG-A", 1)]).await;
    let r = preview(&app, &cart, "BIG").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "coupon_not_applicable");
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("6000")),
        "{}",
        r.body
    );
    assert_eq!(amount(&app.api.cart(&cart).await.body["discount"]), 0);
    app.api.add_to_cart(&cart, "MUG-A", 1).await; // 60.00
    let r = preview(&app, &cart, "BIG").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // 1.00 off automatically first, then 10 % of 59.00.
    assert_eq!(amount(&r.body["discount"]), 100 + 590);

    let r = preview(&app, &cart, "LATER").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "coupon_expired");
    assert_eq!(preview(&app, &cart, "SOON").await.status, 200);
    app.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(preview(&app, &cart, "LATER").await.status, 200);
    let r = preview(&app, &cart, "SOON").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "coupon_expired");
}

#[tokio::test]
async fn a_disabled_coupon_is_invalid_and_the_preview_reserves_nothing() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let mut once = coupon("ONCE", "percent_off", json!(1000));
    once["usage_limit"] = json!(1);
    let p = promo(&s.admin, once).await;
    let id = p["id"].as_str().unwrap_or_default().to_owned();
    let cart = cart_with(&app, &[("MUG-A", 1)]).await;
    for _ in 0..3 {
        let r = preview(&app, &cart, "ONCE").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(amount(&r.body["discount"]), 100);
    }
    let r = s.admin.get(&format!("/admin/promotions/{id}")).await;
    assert_eq!(
        (r.body["uses"].clone(), r.body["reserved"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        s.admin
            .get(&format!("/admin/promotions/{id}/redemptions"))
            .await
            .body["data"],
        json!([])
    );
    // Once a checkout holds the only use, the coupon is exhausted.
    let now = app.clock.now();
    let mut tx = app
        .state
        .kernel
        .db
        .begin()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = PromotionService::reserve_tx(&mut tx, &id, "chk_one", "usr_one", 100, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_ok(), "{r:?}");
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let r = preview(&app, &cart, "ONCE").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "coupon_exhausted");
    let r = s
        .admin
        .patch(
            &format!("/admin/promotions/{id}"),
            json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = preview(&app, &cart, "ONCE").await;
    assert_eq!(r.code(), "coupon_invalid");
}

async fn reserve(
    app: &TestApp,
    promotion: &str,
    checkout: &str,
    customer: &str,
    amount: i64,
) -> Option<Result<(), Exhausted>> {
    let now = app.clock.now();
    let mut tx = app.state.kernel.db.begin().await.ok()?;
    match PromotionService::reserve_tx(&mut tx, promotion, checkout, customer, amount, now)
        .await
        .ok()?
    {
        Ok(_) => tx.commit().await.ok().map(|_| Ok(())),
        Err(e) => {
            let _ = tx.rollback().await;
            Some(Err(e))
        }
    }
}

#[tokio::test]
async fn one_hundred_racing_checkouts_reserve_exactly_the_usage_limit() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let mut body = coupon("TEN", "percent_off", json!(1000));
    body["usage_limit"] = json!(10);
    let id = promo(&admin, body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            reserve(&app, &id, &format!("chk_{i}"), &format!("usr_{i}"), 100).await
        }));
    }
    let (mut won, mut exhausted) = (0, 0);
    for t in tasks {
        match t.await.ok().flatten() {
            Some(Ok(())) => won += 1,
            Some(Err(Exhausted::Uses)) => exhausted += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((won, exhausted), (10, 90));
    let p = admin.get(&format!("/admin/promotions/{id}")).await.body;
    assert_eq!(
        (p["uses"].clone(), p["reserved"].clone()),
        (json!(0), json!(10))
    );
    assert_eq!(amount(&p["budget_reserved"]), 1000);
    let r = admin
        .get(&format!("/admin/promotions/{id}/redemptions?limit=100"))
        .await;
    assert_eq!(r.body["data"].as_array().map(Vec::len), Some(10));
}

#[tokio::test]
async fn reserve_commit_and_release_move_the_counters_exactly_once() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let mut body = coupon(
        "FLOW",
        "amount_off",
        json!({"amount": 500, "currency": "USD"}),
    );
    body["usage_limit"] = json!(2);
    body["budget"] = json!({"amount": 1000, "currency": "USD"});
    let id = promo(&admin, body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        reserve(&app, &id, "chk_a", "usr_a", 500).await,
        Some(Ok(()))
    );
    // Reserving again for the same checkout counts nothing.
    assert_eq!(
        reserve(&app, &id, "chk_a", "usr_a", 500).await,
        Some(Ok(()))
    );
    assert_eq!(
        reserve(&app, &id, "chk_b", "usr_b", 400).await,
        Some(Ok(()))
    );
    assert_eq!(
        reserve(&app, &id, "chk_c", "usr_c", 1).await,
        Some(Err(Exhausted::Uses))
    );
    let counters = |p: &Value| {
        (
            p["uses"].as_i64(),
            p["reserved"].as_i64(),
            p["budget_used"]["amount"].as_i64(),
            p["budget_reserved"]["amount"].as_i64(),
        )
    };
    let path = format!("/admin/promotions/{id}");
    let get = || admin.get(&path);
    assert_eq!(
        counters(&get().await.body),
        (Some(0), Some(2), Some(0), Some(900))
    );
    let now = app.clock.now();
    let db = &app.state.kernel.db;
    let mut tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let done = PromotionService::commit_tx(&mut tx, "chk_a", "ord_a", now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.len(), 1);
    let again = PromotionService::commit_tx(&mut tx, "chk_a", "ord_a", now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.is_empty(), "commit is idempotent");
    let released = PromotionService::release_tx(&mut tx, "chk_b", now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(released.len(), 1);
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        counters(&get().await.body),
        (Some(1), Some(0), Some(500), Some(0))
    );
    // The budget left (5.00) refuses more than it holds.
    assert_eq!(
        reserve(&app, &id, "chk_d", "usr_d", 600).await,
        Some(Err(Exhausted::Budget))
    );
    // Cancelling the paid order gives its use and amount back.
    let mut tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let released = PromotionService::release_tx(&mut tx, "chk_a", now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(released.len(), 1);
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        counters(&get().await.body),
        (Some(0), Some(0), Some(0), Some(0))
    );
    let r = admin
        .get(&format!("/admin/promotions/{id}/redemptions"))
        .await;
    let statuses: Vec<&str> = r.body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert_eq!(statuses, ["released", "released"]);
    assert_eq!(r.body["data"][1]["order_id"], "ord_a");
}

#[tokio::test]
async fn one_customer_racing_checkouts_never_passes_the_per_customer_limit() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let mut body = coupon("TWICE", "percent_off", json!(1000));
    body["per_customer_limit"] = json!(2);
    let id = promo(&admin, body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            reserve(&app, &id, &format!("chk_{i}"), "usr_same", 10).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(Ok(())) => won += 1,
            Some(Err(Exhausted::CustomerUses)) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(won, 2);
    assert_eq!(
        reserve(&app, &id, "chk_x", "usr_other", 10).await,
        Some(Ok(()))
    );
    let p = admin.get(&format!("/admin/promotions/{id}")).await.body;
    assert_eq!(p["reserved"], 3, "{p}");
}

#[tokio::test]
async fn racing_checkouts_never_pass_the_budget() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let mut body = coupon(
        "BUDGET",
        "amount_off",
        json!({"amount": 300, "currency": "USD"}),
    );
    body["budget"] = json!({"amount": 1000, "currency": "USD"});
    let id = promo(&admin, body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let app = app.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            reserve(&app, &id, &format!("chk_{i}"), &format!("usr_{i}"), 300).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        if t.await.ok().flatten() == Some(Ok(())) {
            won += 1;
        }
    }
    assert_eq!(won, 3);
    let p = admin.get(&format!("/admin/promotions/{id}")).await.body;
    assert_eq!(amount(&p["budget_reserved"]), 900);
}

#[tokio::test]
async fn a_customer_who_used_a_coupon_up_sees_it_exhausted() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let mut body = coupon("FIRST", "percent_off", json!(1000));
    body["per_customer_limit"] = json!(1);
    let id = promo(&s.admin, body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let customer = app.customer().await;
    let me = customer.me().await.body["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cart = customer.create_cart().await.id();
    customer.add_to_cart(&cart, "MUG-A", 1).await;
    let r = customer
        .get(&format!("/carts/{cart}?coupon_code=first"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(reserve(&app, &id, "chk_1", &me, 100).await, Some(Ok(())));
    let r = customer
        .get(&format!("/carts/{cart}?coupon_code=first"))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "coupon_exhausted");
    // The limit is the cart owner's, whoever looks at the cart.
    let r = s
        .admin
        .get(&format!("/carts/{cart}?coupon_code=first"))
        .await;
    assert_eq!(r.code(), "coupon_exhausted", "{}", r.body);
    // Another customer still can.
    let other = cart_with(&app, &[("MUG-A", 1)]).await;
    assert_eq!(preview(&app, &other, "FIRST").await.status, 200);
}

#[tokio::test]
async fn the_demo_has_welcome10_and_free_shipping_over_one_hundred() {
    let app = spawn_app().await;
    mercato::demo::load(&app.state)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Loading again creates nothing twice.
    mercato::demo::load(&app.state)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let admin = app.admin().await;
    let list = admin.get("/admin/promotions").await.body;
    let data = list["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 2, "{list}");
    let welcome = data
        .iter()
        .find(|p| p["code"] == "WELCOME10")
        .unwrap_or_else(|| panic!("no WELCOME10: {list}"));
    assert_eq!(welcome["value"], 1000);
    assert_eq!(welcome["per_customer_limit"], 1);
    let shipping = data
        .iter()
        .find(|p| p["automatic"] == true)
        .unwrap_or_else(|| panic!("no automatic promotion: {list}"));
    assert_eq!(shipping["kind"], "free_shipping");
    assert_eq!(amount(&shipping["min_subtotal"]), 10000);
}

#[tokio::test]
async fn lowering_a_limit_below_its_uses_admits_no_more() {
    let app = spawn_app().await;
    let s = shop(&app).await;
    let mut body = coupon("LOWER", "percent_off", json!(1000));
    body["usage_limit"] = json!(5);
    let id = promo(&s.admin, body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for i in 0..3 {
        let r = reserve(&app, &id, &format!("chk_{i}"), &format!("usr_{i}"), 100).await;
        assert_eq!(r, Some(Ok(())));
    }
    let r = s
        .admin
        .patch(
            &format!("/admin/promotions/{id}"),
            json!({"usage_limit": 2}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["usage_limit"].clone(), r.body["reserved"].clone()),
        (json!(2), json!(3))
    );
    assert_eq!(
        reserve(&app, &id, "chk_more", "usr_more", 100).await,
        Some(Err(Exhausted::Uses))
    );
    let cart = cart_with(&app, &[("MUG-A", 1)]).await;
    assert_eq!(
        preview(&app, &cart, "LOWER").await.code(),
        "coupon_exhausted"
    );
    // Removing the limit admits uses again.
    let r = s
        .admin
        .patch(
            &format!("/admin/promotions/{id}"),
            json!({"usage_limit": null}),
        )
        .await;
    assert_eq!(r.body["usage_limit"], Value::Null);
    assert_eq!(preview(&app, &cart, "LOWER").await.status, 200);
}

// ---- Checkout applies coupons and counts each use exactly once ----

/// A customer with `qty` × `sku` in a new cart.
async fn buyer(app: &TestApp, sku: &str, qty: i64) -> (Client, String) {
    let c = app.customer().await;
    let cart = c.create_cart().await.id();
    let r = c.add_to_cart(&cart, sku, qty).await;
    assert_eq!(r.status, 200, "{}", r.body);
    (c, cart)
}

async fn checkout_with(c: &Client, cart: &str, code: &str) -> TestResponse {
    c.post(
        "/checkouts",
        json!({"cart_id": cart, "shipping_address": sample_address(), "coupon_code": code}),
    )
    .await
}

/// A coupon promotion's id.
async fn coupon_id(admin: &Client, body: Value) -> String {
    promo(admin, body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn counters(admin: &Client, id: &str) -> (i64, i64, i64, i64) {
    let p = admin.get(&format!("/admin/promotions/{id}")).await.body;
    (
        p["uses"].as_i64().unwrap_or(-1),
        p["reserved"].as_i64().unwrap_or(-1),
        amount(&p["budget_used"]),
        amount(&p["budget_reserved"]),
    )
}

#[tokio::test]
async fn a_coupon_checkout_taxes_the_discounted_price_and_the_order_keeps_the_breakdown() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "cpn").await;
    admin.set_stock(&sku, &de, 5).await;
    let id = coupon_id(&admin, coupon("SAVE10", "percent_off", json!(1000))).await;
    let (c, cart) = buyer(&app, &sku, 2).await;
    let chk = checkout_with(&c, &cart, "save10").await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    // 2 × 10.00 = 20.00; 10 % off = 2.00; 20 % GB VAT on 18.00 = 3.60; shipping 9.99.
    assert_eq!(amount(&chk.body["subtotal"]), 2000);
    assert_eq!(amount(&chk.body["discount"]), 200);
    assert_eq!(amount(&chk.body["tax"]), 360);
    assert_eq!(amount(&chk.body["shipping"]), 999);
    assert_eq!(amount(&chk.body["total"]), 2000 - 200 + 360 + 999);
    assert_eq!(amount(&chk.body["items"][0]["discount"]), 200);
    let d = &chk.body["discounts"][0];
    assert_eq!(d["promotion_id"], id.as_str());
    assert_eq!(d["code"], "SAVE10");
    assert_eq!(amount(&d["amount"]), 200);
    assert_eq!(lines_of(d), vec![sku.clone()]);
    assert_eq!(counters(&admin, &id).await, (0, 1, 0, 200), "reserved");
    let again = c.get(&format!("/checkouts/{}", chk.id())).await;
    assert_eq!(again.body["discounts"], chk.body["discounts"]);

    let r = c.pay(&chk.id(), "tok_visa", "cpn-1").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(amount(&r.body["payment"]["amount"]), 3159);
    assert_eq!(counters(&admin, &id).await, (1, 0, 200, 0), "committed");
    let o = c
        .order(r.body["order_id"].as_str().unwrap_or_default())
        .await;
    assert_eq!(amount(&o.body["discount"]), 200);
    assert_eq!(amount(&o.body["total"]), 3159);
    assert_eq!(o.body["discounts"], chk.body["discounts"]);
    assert_eq!(amount(&o.body["items"][0]["discount"]), 200);
    let reds = admin
        .get(&format!("/admin/promotions/{id}/redemptions"))
        .await;
    assert_eq!(reds.body["data"][0]["status"], "committed", "{}", reds.body);
}

#[tokio::test]
async fn coupon_errors_at_checkout_are_422_and_reserve_nothing() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "cer").await;
    admin.set_stock(&sku, &de, 5).await;
    let mut body = coupon(
        "BIG",
        "amount_off",
        json!({"amount": 500, "currency": "USD"}),
    );
    body["min_subtotal"] = json!({"amount": 5000, "currency": "USD"});
    let id = coupon_id(&admin, body).await;
    let (c, cart) = buyer(&app, &sku, 1).await;
    for (code, want) in [
        ("NOPE", "coupon_invalid"),
        ("BIG", "coupon_not_applicable"),
        ("", "coupon_invalid"),
    ] {
        let r = checkout_with(&c, &cart, code).await;
        assert_eq!((r.status, r.code()), (422, want), "{}", r.body);
        assert!(r.body["detail"].is_string());
    }
    assert_eq!(counters(&admin, &id).await, (0, 0, 0, 0));
    assert_eq!(admin.stock(&sku).await.body["reserved"], 0, "no stock held");
}

#[tokio::test]
async fn one_hundred_customers_race_for_ten_uses_and_exactly_ten_orders_are_discounted() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "race").await;
    admin.set_stock(&sku, &de, 500).await;
    let mut body = coupon("TENONLY", "percent_off", json!(1000));
    body["usage_limit"] = json!(10);
    let id = coupon_id(&admin, body).await;
    let mut buyers = Vec::new();
    for _ in 0..100 {
        buyers.push(buyer(&app, &sku, 1).await);
    }
    let mut tasks = Vec::new();
    for (i, (c, cart)) in buyers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let chk = checkout_with(&c, &cart, "TENONLY").await;
            if chk.status != 201 {
                assert_eq!(
                    (chk.status, chk.code()),
                    (422, "coupon_exhausted"),
                    "{}",
                    chk.body
                );
                return false;
            }
            let r = c.pay(&chk.id(), "tok_visa", &format!("race-{i}")).await;
            assert_eq!(r.status, 201, "{}", r.body);
            true
        }));
    }
    let mut paid = 0;
    for t in tasks {
        if t.await.unwrap_or_else(|e| panic!("{e}")) {
            paid += 1;
        }
    }
    assert_eq!(paid, 10);
    let discounted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE status = 'confirmed' AND discount = $1",
    )
    .bind(100_i64)
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or(-1);
    assert_eq!(discounted, 10);
    assert_eq!(counters(&admin, &id).await, (10, 0, 1000, 0));
}

#[tokio::test]
async fn one_customers_parallel_checkouts_never_pass_the_per_customer_limit() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "pcl").await;
    admin.set_stock(&sku, &de, 50).await;
    let mut body = coupon("MINE", "percent_off", json!(500));
    body["per_customer_limit"] = json!(1);
    let id = coupon_id(&admin, body).await;
    // A customer has one active cart: ten checkouts of it at once, each superseding (and
    // releasing) the ones before it or refused while another holds the customer's one use.
    let (c, cart) = buyer(&app, &sku, 1).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, cart) = (c.clone(), cart.clone());
        tasks.push(tokio::spawn(async move {
            let r = checkout_with(&c, &cart, "MINE").await;
            if r.status != 201 {
                assert_eq!(r.code(), "coupon_exhausted", "{}", r.body);
            }
            r.status == 201
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let open: Vec<String> =
        sqlx::query_scalar("SELECT id FROM checkouts WHERE cart_id = $1 AND status = 'open'")
            .bind(&cart)
            .fetch_all(app.state.kernel.db.reader())
            .await
            .unwrap_or_default();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(counters(&admin, &id).await, (0, 1, 0, 50));
    let r = c.pay(&open[0], "tok_visa", "pcl-1").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(counters(&admin, &id).await, (1, 0, 50, 0));
    let cart = c.create_cart().await.id();
    assert_eq!(c.add_to_cart(&cart, &sku, 1).await.status, 200);
    let r = checkout_with(&c, &cart, "MINE").await;
    assert_eq!(r.code(), "coupon_exhausted", "{}", r.body);
}

#[tokio::test]
async fn checking_out_a_cart_again_reuses_the_last_use_its_older_checkout_held() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "rco").await;
    admin.set_stock(&sku, &de, 10).await;
    let mut body = coupon("LASTONE", "percent_off", json!(1000));
    body["usage_limit"] = json!(1);
    body["per_customer_limit"] = json!(1);
    let id = coupon_id(&admin, body).await;
    let (c, cart) = buyer(&app, &sku, 1).await;
    let first = checkout_with(&c, &cart, "LASTONE").await;
    assert_eq!(first.status, 201, "{}", first.body);
    // The new checkout supersedes the old one, whose use it takes over in one transaction.
    let second = checkout_with(&c, &cart, "LASTONE").await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["discount"]["amount"], 100, "{}", second.body);
    assert_eq!(counters(&admin, &id).await, (0, 1, 0, 100));
    let old = c.get(&format!("/checkouts/{}", first.id())).await;
    assert_eq!(old.body["status"], "cancelled", "{}", old.body);
    // Someone else still finds it exhausted.
    let (other, ocart) = buyer(&app, &sku, 1).await;
    let r = checkout_with(&other, &ocart, "LASTONE").await;
    assert_eq!(r.code(), "coupon_exhausted", "{}", r.body);
    let r = c.pay(&second.id(), "tok_visa", "rco-1").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(counters(&admin, &id).await, (1, 0, 100, 0));
}

#[tokio::test]
async fn racing_coupon_checkouts_never_pass_the_budget() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "bdg").await;
    admin.set_stock(&sku, &de, 50).await;
    let mut body = coupon(
        "FIVE",
        "amount_off",
        json!({"amount": 500, "currency": "USD"}),
    );
    body["budget"] = json!({"amount": 1200, "currency": "USD"});
    let id = coupon_id(&admin, body).await;
    let mut buyers = Vec::new();
    for _ in 0..20 {
        buyers.push(buyer(&app, &sku, 1).await);
    }
    let mut tasks = Vec::new();
    for (c, cart) in buyers {
        tasks.push(tokio::spawn(async move {
            let r = checkout_with(&c, &cart, "FIVE").await;
            if r.status == 201 {
                amount(&r.body["discount"])
            } else {
                assert_eq!(r.code(), "coupon_exhausted", "{}", r.body);
                0
            }
        }));
    }
    let mut given = 0;
    for t in tasks {
        given += t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(given <= 1200, "gave {given}");
    assert!(given >= 1000, "at least two full discounts fit: {given}");
    let (_, _, used, reserved) = counters(&admin, &id).await;
    assert_eq!(used + reserved, given);
}

#[tokio::test]
async fn a_declined_payment_gives_the_use_back() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "dcl").await;
    admin.set_stock(&sku, &de, 5).await;
    let mut body = coupon("ONCE", "percent_off", json!(1000));
    body["usage_limit"] = json!(1);
    let id = coupon_id(&admin, body).await;
    let (c, cart) = buyer(&app, &sku, 1).await;
    let chk = checkout_with(&c, &cart, "ONCE").await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let (other, other_cart) = buyer(&app, &sku, 1).await;
    let r = checkout_with(&other, &other_cart, "ONCE").await;
    assert_eq!(r.code(), "coupon_exhausted", "held by the open checkout");
    let r = c.pay(&chk.id(), "tok_chargeDeclined", "dcl-1").await;
    assert_eq!(r.status, 402, "{}", r.body);
    assert_eq!(counters(&admin, &id).await, (0, 0, 0, 0), "released");
    let r = checkout_with(&other, &other_cart, "ONCE").await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn an_expired_checkout_gives_the_use_back() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "cex").await;
    admin.set_stock(&sku, &de, 5).await;
    let id = coupon_id(&admin, coupon("LATE", "percent_off", json!(1000))).await;
    let (c, cart) = buyer(&app, &sku, 1).await;
    let chk = checkout_with(&c, &cart, "LATE").await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    assert_eq!(counters(&admin, &id).await.1, 1);
    app.clock.advance(Duration::from_secs(901));
    app.state
        .checkout
        .expire_due()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counters(&admin, &id).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn a_new_checkout_of_the_same_cart_releases_the_old_ones_use() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "sup").await;
    admin.set_stock(&sku, &de, 5).await;
    let mut body = coupon("SOLO", "percent_off", json!(1000));
    body["usage_limit"] = json!(2);
    let id = coupon_id(&admin, body).await;
    let (c, cart) = buyer(&app, &sku, 1).await;
    let first = checkout_with(&c, &cart, "SOLO").await;
    assert_eq!(first.status, 201, "{}", first.body);
    for _ in 0..3 {
        let r = checkout_with(&c, &cart, "SOLO").await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(
            counters(&admin, &id).await,
            (0, 1, 0, 100),
            "one open checkout, one use"
        );
    }
    let old = c.get(&format!("/checkouts/{}", first.id())).await;
    assert_eq!(old.body["status"], "cancelled");
}

#[tokio::test]
async fn cancelling_before_shipping_gives_the_use_back() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "ccl").await;
    admin.set_stock(&sku, &de, 5).await;
    let id = coupon_id(&admin, coupon("UNDO", "percent_off", json!(1000))).await;
    let (c, cart) = buyer(&app, &sku, 1).await;
    let chk = checkout_with(&c, &cart, "UNDO").await;
    let r = c.pay(&chk.id(), "tok_visa", "ccl-1").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(counters(&admin, &id).await, (1, 0, 100, 0));
    let oid = r.body["order_id"].as_str().unwrap_or_default().to_owned();
    let r = c
        .post(
            &format!("/orders/{oid}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(counters(&admin, &id).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn a_returned_discounted_line_refunds_what_was_paid_for_it() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "rtn").await;
    admin.set_stock(&sku, &de, 5).await;
    coupon_id(
        &admin,
        coupon(
            "THIRD",
            "amount_off",
            json!({"amount": 700, "currency": "USD"}),
        ),
    )
    .await;
    let (c, cart) = buyer(&app, &sku, 3).await;
    let chk = checkout_with(&c, &cart, "THIRD").await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    // 30.00 - 7.00 = 23.00 paid for the goods; VAT 20 % of 23.00 = 4.60.
    assert_eq!(amount(&chk.body["tax"]), 460);
    let r = c.pay(&chk.id(), "tok_visa", "rtn-1").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let oid = r.body["order_id"].as_str().unwrap_or_default().to_owned();
    crate::orders::advance(&admin, &oid, "delivered").await;
    let r = c
        .post(
            &format!("/orders/{oid}/returns"),
            json!({"items": [{"sku": sku, "quantity": 1}], "reason": "too many"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ret = r.body["id"].as_str().unwrap_or_default().to_owned();
    let r = admin
        .post(&format!("/returns/{ret}/approve"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // One of three units: 23.00 / 3 = 7.666… → 7.67, and 4.60 / 3 = 1.533… → 1.53.
    assert_eq!(amount(&r.body["refund_amount"]), 767 + 153);
}
