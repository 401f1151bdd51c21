use mercato_kernel::auth::Role;
use mercato_testkit::{TestApp, sample_product, spawn_app};
use serde_json::json;

/// Creates "Electronics > Laptops" and returns (root id, child id).
pub async fn categories(app: &TestApp) -> (String, String) {
    let admin = app.admin().await;
    let root = admin
        .create_category("Electronics", "electronics", None)
        .await;
    assert_eq!(root.status, 201, "{}", root.body);
    let child = admin
        .create_category("Laptops", "laptops", Some(&root.id()))
        .await;
    assert_eq!(child.status, 201, "{}", child.body);
    (root.id(), child.id())
}

#[tokio::test]
async fn categories_form_a_tree_with_unique_slugs() {
    let app = spawn_app().await;
    let (root, child) = categories(&app).await;
    let r = app.api.get("/categories").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"][0]["id"], root);
    assert_eq!(r.body["data"][0]["children"][0]["id"], child);

    let admin = app.admin().await;
    let r = admin.create_category("Dup", "laptops", None).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "slug_taken");
    assert_eq!(
        admin.create_category("Bad", "Bad Slug", None).await.status,
        422
    );
    let r = admin
        .create_category("Orphan", "orphan", Some("cat_01NOPE"))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "parent_id");
    let customer = app.customer().await;
    assert_eq!(customer.create_category("X", "x", None).await.status, 403);
}

#[tokio::test]
async fn sellers_create_products_and_reads_show_variants() {
    let app = spawn_app().await;
    let (_, laptops) = categories(&app).await;
    let seller = app.user_with_role(Role::Seller).await;
    let seller_id = seller.me().await.body["id"].clone();
    let r = seller
        .create_product(sample_product(
            &laptops,
            "ThinkBook 14",
            "Lenovo",
            &[("tb14-i5", 89_900), ("tb14-i7", 109_900)],
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["id"].as_str().is_some_and(|s| s.starts_with("prd_")));
    assert_eq!(r.body["seller_id"], seller_id);
    assert_eq!(r.body["variants"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        r.body["variants"][0]["sku"], "TB14-I5",
        "SKUs are upper-cased"
    );
    assert!(
        r.body["variants"][0]["id"]
            .as_str()
            .is_some_and(|s| s.starts_with("var_"))
    );
    assert_eq!(r.body["category"]["slug"], "laptops");
    assert_eq!(r.body["rating"]["count"], 0);

    let public = app.api.product(&r.id()).await;
    assert_eq!(public.status, 200);
    assert_eq!(
        public.body["variants"][1]["price"],
        json!({"amount": 109_900, "currency": "USD"})
    );
    assert!(
        public.body["variants"][0]["available"].is_null(),
        "untracked until inventory"
    );

    let events: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE event_type = 'catalog.product_created' AND aggregate_id = $1",
    )
    .bind(r.id())
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or_default();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn product_input_is_validated_and_skus_are_unique() {
    let app = spawn_app().await;
    let (_, laptops) = categories(&app).await;
    let admin = app.admin().await;
    assert_eq!(
        admin
            .create_product(sample_product(&laptops, "A", "B", &[("dup-1", 100)]))
            .await
            .status,
        201
    );
    let r = admin
        .create_product(sample_product(&laptops, "C", "D", &[("DUP-1", 100)]))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "sku_taken");
    assert_eq!(r.body["sku"], "DUP-1");

    let r = admin
        .create_product(sample_product(&laptops, "No variants", "X", &[]))
        .await;
    assert_eq!(r.status, 422);
    let r = admin
        .create_product(sample_product(&laptops, "Free", "X", &[("free-1", 0)]))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "variants[0].price");
    let r = admin
        .create_product(sample_product(
            "cat_01UNKNOWN",
            "Lost",
            "X",
            &[("lost-1", 10)],
        ))
        .await;
    assert_eq!(r.status, 422);
    let customer = app.customer().await;
    assert_eq!(
        customer
            .create_product(sample_product(&laptops, "Mine", "X", &[("mine-1", 10)]))
            .await
            .status,
        403
    );
    assert_eq!(app.api.product("prd_01NOTHERE").await.status, 404);
    assert_eq!(app.api.product("'; drop").await.status, 404);
}

#[tokio::test]
async fn a_seller_cannot_edit_another_sellers_product_but_an_admin_can() {
    let app = spawn_app().await;
    let (_, laptops) = categories(&app).await;
    let alice = app.user_with_role(Role::Seller).await;
    let bob = app.user_with_role(Role::Seller).await;
    let p = alice
        .create_product(sample_product(&laptops, "Alice's", "A", &[("al-1", 1000)]))
        .await;
    let path = format!("/products/{}", p.id());
    let r = bob.patch(&path, json!({"name": "Hijacked"})).await;
    assert_eq!(r.status, 403);
    assert_eq!(app.api.product(&p.id()).await.body["name"], "Alice's");
    let admin = app.admin().await;
    let r = admin
        .patch(&path, json!({"name": "Renamed by admin"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "Renamed by admin");
    assert_eq!(r.body["version"], 2);
}

#[tokio::test]
async fn price_changes_are_visible_on_the_next_read() {
    let app = spawn_app().await;
    let (_, laptops) = categories(&app).await;
    let seller = app.user_with_role(Role::Seller).await;
    let p = seller
        .create_product(sample_product(&laptops, "Pricey", "P", &[("pr-1", 5000)]))
        .await;
    assert_eq!(
        app.api.product(&p.id()).await.body["variants"][0]["price"]["amount"],
        5000
    );
    let r = seller
        .patch(
            &format!("/products/{}", p.id()),
            json!({"variants": [{"sku": "pr-1", "price": {"amount": 4500, "currency": "USD"}, "sale_price": {"amount": 3999, "currency": "USD"}},
                                {"sku": "pr-2", "name": "Bigger", "price": {"amount": 7000, "currency": "USD"}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let read = app.api.product(&p.id()).await;
    assert_eq!(read.body["variants"][0]["price"]["amount"], 4500);
    assert_eq!(read.body["variants"][0]["sale_price"]["amount"], 3999);
    assert_eq!(read.body["variants"][1]["sku"], "PR-2");
    // Remove the sale price with an explicit null; deactivate a variant.
    let r = seller
        .patch(&format!("/products/{}", p.id()), json!({"variants": [{"sku": "PR-1", "sale_price": null}, {"sku": "pr-2", "active": false}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["variants"][0]["sale_price"].is_null());
    assert_eq!(r.body["variants"][1]["active"], false);
    // A sale price above the price is refused and changes nothing.
    let r = seller
        .patch(&format!("/products/{}", p.id()), json!({"variants": [{"sku": "PR-1", "sale_price": {"amount": 9999, "currency": "USD"}}]}))
        .await;
    assert_eq!(r.status, 422);
    assert!(app.api.product(&p.id()).await.body["variants"][0]["sale_price"].is_null());
    let updates: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE event_type = 'catalog.product_updated' AND aggregate_id = $1",
    )
    .bind(p.id())
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or_default();
    assert_eq!(updates, 2);
}

#[tokio::test]
async fn drafts_are_visible_only_to_their_seller_and_admins() {
    let app = spawn_app().await;
    let (_, laptops) = categories(&app).await;
    let seller = app.user_with_role(Role::Seller).await;
    let mut body = sample_product(&laptops, "Secret", "S", &[("sec-1", 100)]);
    body["status"] = json!("draft");
    let p = seller.create_product(body).await;
    assert_eq!(p.status, 201);
    assert_eq!(app.api.product(&p.id()).await.status, 404);
    assert_eq!(app.customer().await.product(&p.id()).await.status, 404);
    assert_eq!(seller.product(&p.id()).await.status, 200);
    assert_eq!(app.admin().await.product(&p.id()).await.status, 200);
}

#[tokio::test]
async fn customers_review_once_and_the_rating_aggregate_follows() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = crate::inventory::stocked(&app, "rvw").await;
    admin.set_stock(&sku, &de, 10).await;
    let (a, oa) = crate::orders::bought(&app, &sku, 1).await;
    let (b, ob) = crate::orders::bought(&app, &sku, 1).await;
    for o in [&oa, &ob] {
        let oid = o["id"].as_str().unwrap_or_default();
        admin
            .post(&format!("/orders/{oid}/fulfil"), json!({}))
            .await;
        admin
            .post(
                &format!("/orders/{oid}/ship"),
                json!({"carrier": "UPS", "tracking_number": "1Z"}),
            )
            .await;
        admin
            .post(&format!("/orders/{oid}/deliver"), json!({}))
            .await;
    }
    let pid = oa["items"][0]["product_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = format!("/products/{pid}/reviews");
    let r = a
        .post(
            &path,
            json!({"rating": 5, "title": "Great", "body": "Loved it"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["verified_purchase"], true);
    assert_eq!(
        b.post(&path, json!({"rating": 4, "title": "Good"}))
            .await
            .status,
        201
    );
    let r = a
        .post(&path, json!({"rating": 1, "title": "Changed my mind"}))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "review_exists");
    assert_eq!(
        b.post(&path, json!({"rating": 6, "title": "x"}))
            .await
            .status,
        422
    );
    assert_eq!(
        admin
            .post(&path, json!({"rating": 5, "title": "x"}))
            .await
            .status,
        403
    );

    let read = app.api.product(&pid).await;
    assert_eq!(read.body["rating"], json!({"average": 4.5, "count": 2}));
    let list = app.api.get(&format!("{path}?limit=1")).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(1));
    let next = list.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let page2 = app.api.get(&format!("{path}?limit=1&cursor={next}")).await;
    assert_eq!(page2.body["data"].as_array().map(Vec::len), Some(1));
    assert_ne!(page2.body["data"][0]["id"], list.body["data"][0]["id"]);
    assert!(page2.body["next_cursor"].is_null());
}
