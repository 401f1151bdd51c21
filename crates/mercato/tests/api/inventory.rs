use crate::catalog::categories;
use mercato_commerce::inventory::InventoryService;
use mercato_kernel::auth::Role;
use mercato_testkit::{Client, TestApp, sample_product, spawn_app};
use serde_json::json;

/// An admin, a product with SKU `{prefix}-A`, and two warehouses (DE, FR).
pub async fn stocked(app: &TestApp, prefix: &str) -> (Client, String, String, String) {
    let (_, laptops) = categories(app).await;
    let admin = app.admin().await;
    let sku = format!("{prefix}-A").to_uppercase();
    let r = admin
        .create_product(sample_product(&laptops, "Stocked", "S", &[(&sku, 1000)]))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let de = admin.create_warehouse(&format!("{prefix}-de"), "DE").await;
    assert_eq!(de.status, 201, "{}", de.body);
    let fr = admin.create_warehouse(&format!("{prefix}-fr"), "FR").await;
    (admin, sku, de.id(), fr.id())
}

async fn movement_sums(app: &TestApp, sku: &str) -> (i64, i64, i64, i64) {
    let (mo, mr): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(delta_on_hand), 0) AS BIGINT), CAST(COALESCE(SUM(delta_reserved), 0) AS BIGINT) \
         FROM stock_movements WHERE sku = $1",
    )
    .bind(sku)
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or_default();
    let (so, sr): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(on_hand), 0) AS BIGINT), CAST(COALESCE(SUM(reserved), 0) AS BIGINT) FROM stock WHERE sku = $1",
    )
    .bind(sku)
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or_default();
    (mo, so, mr, sr)
}

async fn reserve(app: &TestApp, checkout: &str, sku: &str, q: i64, country: Option<&str>) -> bool {
    let now = app.state.kernel.clock.now();
    let mut tx = app
        .state
        .kernel
        .db
        .begin()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = InventoryService::reserve_tx(
        &mut tx,
        checkout,
        &[(sku.to_owned(), q)],
        country,
        now.plus_secs(900),
        "test",
        now,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    match r {
        Ok(_) => {
            tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
            true
        }
        Err(_) => {
            let _ = tx.rollback().await;
            false
        }
    }
}

#[tokio::test]
async fn warehouses_are_created_listed_and_unique_by_code() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let r = admin.create_warehouse("par-1", "fr").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["country"], "FR");
    assert!(r.id().starts_with("wh_"));
    assert_eq!(
        admin.create_warehouse("par-1", "FR").await.code(),
        "warehouse_code_taken"
    );
    assert_eq!(admin.create_warehouse("x", "France").await.status, 422);
    assert_eq!(
        app.customer()
            .await
            .create_warehouse("y", "FR")
            .await
            .status,
        403
    );
    let list = admin.get("/warehouses").await;
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn stock_is_set_adjusted_and_logged() {
    let app = spawn_app().await;
    let (admin, sku, de, fr) = stocked(&app, "st").await;
    let r = admin.set_stock(&sku, &de, 30).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["on_hand"], 30);
    assert_eq!(
        admin.set_stock(&sku, &de, 30).await.body["on_hand"],
        30,
        "idempotent"
    );
    admin.set_stock(&sku, &fr, 5).await;
    let r = admin
        .post(
            &format!("/inventory/{sku}/adjustments"),
            json!({"warehouse_id": fr, "delta": 7, "reason": "restock", "reference": "PO-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["on_hand"], 12);
    let r = admin
        .post(
            &format!("/inventory/{sku}/adjustments"),
            json!({"warehouse_id": fr, "delta": -13, "reason": "damage"}),
        )
        .await;
    assert_eq!(r.status, 409, "cannot go below zero");
    let r = admin
        .post(
            &format!("/inventory/{sku}/adjustments"),
            json!({"warehouse_id": fr, "delta": 1, "reason": "stolen"}),
        )
        .await;
    assert_eq!(r.status, 422);

    let level = admin.stock(&sku).await;
    assert_eq!(level.body["on_hand"], 42);
    assert_eq!(level.body["available"], 42);
    assert_eq!(level.body["warehouses"].as_array().map(Vec::len), Some(2));
    let public = app.api.stock(&sku).await;
    assert_eq!(public.body, json!({"sku": sku, "available": 42}));
    assert_eq!(app.api.stock("NOPE-9").await.status, 404);

    let log = admin
        .get(&format!("/inventory/{sku}/movements?limit=2"))
        .await;
    assert_eq!(log.status, 200);
    assert_eq!(log.body["data"][0]["kind"], "set");
    let next = log.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rest = admin
        .get(&format!("/inventory/{sku}/movements?cursor={next}"))
        .await;
    assert_eq!(rest.body["data"][0]["reason"], "restock");
    assert_eq!(rest.body["data"][0]["reference"], "PO-1");
    let (mo, so, mr, sr) = movement_sums(&app, &sku).await;
    assert_eq!((mo, mr), (so, sr), "the movement log sums to the stock");
}

#[tokio::test]
async fn stock_cannot_be_set_below_what_is_reserved() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "br").await;
    admin.set_stock(&sku, &de, 10).await;
    assert!(reserve(&app, "chk_1", &sku, 6, None).await);
    let r = admin.set_stock(&sku, &de, 5).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "below_reserved");
    assert_eq!(r.body["reserved"], 6);
    assert_eq!(
        admin.stock(&sku).await.body["on_hand"],
        10,
        "nothing changed"
    );
    assert_eq!(admin.set_stock(&sku, &de, 6).await.status, 200);
    assert_eq!(admin.stock(&sku).await.body["available"], 0);
}

#[tokio::test]
async fn sellers_manage_only_their_own_stock() {
    let app = spawn_app().await;
    let (_, laptops) = categories(&app).await;
    let admin = app.admin().await;
    let wh = admin.create_warehouse("s-1", "DE").await.id();
    let alice = app.user_with_role(Role::Seller).await;
    let bob = app.user_with_role(Role::Seller).await;
    alice
        .create_product(sample_product(&laptops, "Alice's", "A", &[("ALI-1", 100)]))
        .await;
    assert_eq!(alice.set_stock("ALI-1", &wh, 5).await.status, 200);
    assert_eq!(bob.set_stock("ALI-1", &wh, 500).await.status, 403);
    assert_eq!(
        app.customer().await.set_stock("ALI-1", &wh, 5).await.status,
        403
    );
    assert!(bob.stock("ALI-1").await.body.get("on_hand").is_none());
    assert_eq!(alice.stock("ALI-1").await.body["on_hand"], 5);
}

#[tokio::test]
async fn reservations_prefer_the_shipping_country_and_release_and_commit_exactly_once() {
    let app = spawn_app().await;
    let (admin, sku, de, fr) = stocked(&app, "pref").await;
    admin.set_stock(&sku, &de, 50).await;
    admin.set_stock(&sku, &fr, 10).await;
    assert!(reserve(&app, "chk_fr", &sku, 4, Some("FR")).await);
    let rs = app
        .state
        .inventory
        .reservations("chk_fr")
        .await
        .unwrap_or_default();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].warehouse_id, fr);
    // More than any one warehouse holds: split.
    assert!(reserve(&app, "chk_big", &sku, 54, Some("FR")).await);
    assert_eq!(
        app.state
            .inventory
            .reservations("chk_big")
            .await
            .unwrap_or_default()
            .len(),
        2
    );
    assert!(
        !reserve(&app, "chk_none", &sku, 3, None).await,
        "only 2 left"
    );
    assert_eq!(admin.stock(&sku).await.body["reserved"], 58);

    let now = app.state.kernel.clock.now();
    for _ in 0..2 {
        let mut tx = app
            .state
            .kernel
            .db
            .begin()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        InventoryService::release_tx(
            &mut tx,
            &*app.state.kernel.stock_gate,
            "chk_fr",
            false,
            "test",
            "test",
            now,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        InventoryService::commit_tx(&mut tx, "chk_big", "ord_x", "test", now)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let level = admin.stock(&sku).await;
    assert_eq!(level.body["reserved"], 0);
    assert_eq!(level.body["on_hand"], 60 - 54);
    let (mo, so, mr, sr) = movement_sums(&app, &sku).await;
    assert_eq!((mo, mr), (so, sr));
}

#[tokio::test]
async fn two_hundred_racing_reservations_never_oversell_fifty_units() {
    let app = spawn_app().await;
    let (admin, sku, de, fr) = stocked(&app, "race").await;
    admin.set_stock(&sku, &de, 30).await;
    admin.set_stock(&sku, &fr, 20).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let db = app.state.kernel.db.clone();
        let clock = app.state.kernel.clock.clone();
        let sku = sku.clone();
        tasks.push(tokio::spawn(async move {
            let now = clock.now();
            let mut tx = db.begin().await.ok()?;
            let r = InventoryService::reserve_tx(
                &mut tx,
                &format!("chk_{i}"),
                &[(sku, 1)],
                Some("FR"),
                now.plus_secs(60),
                "t",
                now,
            )
            .await
            .ok()?;
            match r {
                Ok(_) => tx.commit().await.ok().map(|_| true),
                Err(_) => {
                    let _ = tx.rollback().await;
                    Some(false)
                }
            }
        }));
    }
    let mut won = 0;
    for t in tasks {
        if t.await.ok().flatten() == Some(true) {
            won += 1;
        }
    }
    assert_eq!(won, 50);
    let level = admin.stock(&sku).await;
    assert_eq!(level.body["reserved"], 50);
    assert_eq!(level.body["available"], 0);
    for w in level.body["warehouses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        assert!(w["available"].as_i64().unwrap_or(-1) >= 0);
    }
    let (mo, so, mr, sr) = movement_sums(&app, &sku).await;
    assert_eq!((mo, mr), (so, sr));
}

#[tokio::test]
async fn crossing_the_low_stock_threshold_emits_one_event() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "low").await;
    admin.set_stock(&sku, &de, 12).await;
    assert!(reserve(&app, "chk_a", &sku, 2, None).await); // 12 → 10: not below
    assert!(reserve(&app, "chk_b", &sku, 1, None).await); // 10 → 9: crosses
    assert!(reserve(&app, "chk_c", &sku, 1, None).await); // 9 → 8: already below
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE event_type = 'inventory.low_stock' AND aggregate_id = $1")
        .bind(&sku)
        .fetch_one(app.state.kernel.db.reader())
        .await
        .unwrap_or_default();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn carts_and_products_see_tracked_stock() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "cs").await;
    let cart = app.api.create_cart().await.id();
    assert_eq!(
        app.api.add_to_cart(&cart, &sku, 3).await.status,
        200,
        "untracked: unlimited"
    );
    admin.set_stock(&sku, &de, 2).await;
    let r = app.api.cart(&cart).await;
    assert_eq!(r.body["items"][0]["available"], 2);
    assert_eq!(
        r.body["items"][0]["warnings"],
        json!(["insufficient_stock"])
    );
    let r = app.api.add_to_cart(&cart, &sku, 1).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "insufficient_stock");
    assert_eq!(r.body["available"], 2);
    assert_eq!(r.body["requested"], 4);
    let product_id: String = sqlx::query_scalar("SELECT product_id FROM variants WHERE sku = $1")
        .bind(&sku)
        .fetch_one(app.state.kernel.db.reader())
        .await
        .unwrap_or_default();
    assert_eq!(
        app.api.product(&product_id).await.body["variants"][0]["available"],
        2
    );
}
