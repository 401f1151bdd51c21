//! Promotions and coupons (API.md "Promotions and coupons"): admin CRUD, validation, and the
//! usage counters' reserve/commit/release under races (driven directly: checkout does not
//! redeem yet).

use mercato_commerce::promotions::{Exhausted, PromotionService};
use mercato_kernel::clock::Clock;
use mercato_testkit::{Client, TestApp, sample_product, spawn_app};
use serde_json::{Value, json};

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

fn amount(v: &Value) -> i64 {
    v["amount"].as_i64().unwrap_or(i64::MIN)
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
