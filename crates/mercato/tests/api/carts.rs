use crate::catalog::categories;
use crate::unique_email;
use mercato_testkit::{TestApp, sample_product, spawn_app};
use serde_json::json;
use std::time::Duration;

/// Creates a product with SKUs `{prefix}-A` (10.00) and `{prefix}-B` (25.00); returns its id.
async fn product(app: &TestApp, prefix: &str) -> String {
    let (_, laptops) = categories(app).await;
    let admin = app.admin().await;
    let a = format!("{prefix}-a");
    let b = format!("{prefix}-b");
    let r = admin
        .create_product(sample_product(
            &laptops,
            "Cart Thing",
            "Brand",
            &[(&a, 1000), (&b, 2500)],
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.id()
}

#[tokio::test]
async fn a_guest_cart_adds_sums_updates_and_removes_lines() {
    let app = spawn_app().await;
    product(&app, "g").await;
    let cart = app.api.create_cart().await;
    assert_eq!(cart.status, 201, "{}", cart.body);
    let id = cart.id();
    assert!(
        id.starts_with("cart_") && id.len() >= 5 + 26,
        "a 128-bit secret: {id}"
    );
    assert_eq!(cart.body["status"], "active");
    assert_eq!(cart.body["item_count"], 0);
    assert!(cart.body["expires_at"].is_string());

    let r = app.api.add_to_cart(&id, "g-a", 2).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.api.add_to_cart(&id, "G-A", 3).await;
    assert_eq!(
        r.body["items"][0]["quantity"], 5,
        "adding an existing SKU adds to it"
    );
    let r = app.api.add_to_cart(&id, "g-b", 1).await;
    assert_eq!(r.body["item_count"], 6);
    assert_eq!(
        r.body["subtotal"],
        json!({"amount": 5 * 1000 + 2500, "currency": "USD"})
    );
    assert_eq!(r.body["items"][0]["line_total"]["amount"], 5000);
    assert_eq!(r.body["items"][0]["price_at_addition"]["amount"], 1000);
    assert!(
        r.body["items"][0]["variant_id"]
            .as_str()
            .is_some_and(|v| v.starts_with("var_"))
    );

    let r = app.api.set_cart_quantity(&id, "g-a", 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["items"][0]["quantity"], 1);
    let r = app.api.set_cart_quantity(&id, "g-a", 0).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "0 removes"
    );
    let r = app.api.delete(&format!("/carts/{id}/items/G-B")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["item_count"], 0);
    assert_eq!(
        app.api
            .delete(&format!("/carts/{id}/items/G-B"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn bad_quantities_unknown_skus_and_unknown_carts_are_refused() {
    let app = spawn_app().await;
    product(&app, "q").await;
    let id = app.api.create_cart().await.id();
    for q in [0, -1, 11, 1000] {
        let r = app.api.add_to_cart(&id, "q-a", q).await;
        assert_eq!(r.status, 422, "quantity {q}");
        assert_eq!(r.body["errors"][0]["field"], "quantity");
    }
    let r = app.api.add_to_cart(&id, "NOPE-1", 1).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["sku"], "NOPE-1");
    assert_eq!(app.api.add_to_cart(&id, "bad sku!", 1).await.status, 404);
    assert_eq!(
        app.api
            .cart("cart_01UNKNOWNUNKNOWNUNKNOWN0000")
            .await
            .status,
        404
    );
    assert_eq!(
        app.api.add_to_cart("cart_01UNKNOWN", "q-a", 1).await.status,
        404
    );
    // A line never exceeds the maximum, however it is reached.
    assert_eq!(app.api.add_to_cart(&id, "q-a", 8).await.status, 200);
    let r = app.api.add_to_cart(&id, "q-a", 3).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        app.api.cart(&id).await.body["items"][0]["quantity"],
        8,
        "nothing changed"
    );
    assert_eq!(app.api.set_cart_quantity(&id, "q-a", 11).await.status, 422);
    let r = app
        .api
        .post(&format!("/carts/{id}/items"), json!({"sku": "q-a"}))
        .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn concurrent_adds_never_push_a_line_past_the_maximum() {
    let app = spawn_app().await;
    product(&app, "c").await;
    let id = app.api.create_cart().await.id();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let api = app.api.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            api.add_to_cart(&id, "c-a", 1).await.status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap_or(0) {
            200 => ok += 1,
            422 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(app.api.cart(&id).await.body["items"][0]["quantity"], 10);
}

#[tokio::test]
async fn carts_show_price_changes_and_unavailable_products() {
    let app = spawn_app().await;
    let pid = product(&app, "p").await;
    let id = app.api.create_cart().await.id();
    app.api.add_to_cart(&id, "p-a", 2).await;
    let admin = app.admin().await;
    let r = admin
        .patch(
            &format!("/products/{pid}"),
            json!({"variants": [{"sku": "p-a", "sale_price": {"amount": 800, "currency": "USD"}}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let cart = app.api.cart(&id).await;
    assert_eq!(cart.body["items"][0]["unit_price"]["amount"], 800);
    assert_eq!(cart.body["items"][0]["price_at_addition"]["amount"], 1000);
    assert_eq!(cart.body["items"][0]["warnings"], json!(["price_changed"]));
    assert_eq!(
        cart.body["warnings"][0],
        json!({"code": "price_changed", "sku": "P-A"})
    );
    assert_eq!(cart.body["subtotal"]["amount"], 1600);

    admin
        .patch(&format!("/products/{pid}"), json!({"status": "draft"}))
        .await;
    let r = app.api.add_to_cart(&id, "p-b", 1).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "product_unavailable");
    let cart = app.api.cart(&id).await;
    assert!(
        cart.body["items"][0]["warnings"]
            .to_string()
            .contains("unavailable")
    );
    assert_eq!(
        cart.body["subtotal"]["amount"], 0,
        "unavailable lines are not in the subtotal"
    );
}

#[tokio::test]
async fn signed_in_users_have_one_cart_that_others_cannot_see() {
    let app = spawn_app().await;
    product(&app, "u").await;
    let alice = app.customer().await;
    let first = alice.create_cart().await;
    assert_eq!(first.status, 201);
    let again = alice.create_cart().await;
    assert_eq!(again.status, 200, "the existing cart is reused");
    assert_eq!(again.id(), first.id());
    assert!(first.body["user_id"].is_string());
    assert!(
        first.body["expires_at"].is_null(),
        "user carts do not expire"
    );

    let bob = app.customer().await;
    assert_eq!(bob.cart(&first.id()).await.status, 404);
    assert_eq!(bob.add_to_cart(&first.id(), "u-a", 1).await.status, 404);
    assert_eq!(app.api.cart(&first.id()).await.status, 404, "anonymous");
    assert_eq!(alice.add_to_cart(&first.id(), "u-a", 1).await.status, 200);
}

#[tokio::test]
async fn login_merges_the_guest_cart_summing_and_capping_then_freezes_it() {
    let app = spawn_app().await;
    product(&app, "m").await;
    let email = unique_email("merge");
    let reg = app.api.register(&email, "correct horse battery").await;
    let user = app
        .api
        .with_token(reg.body["access_token"].as_str().unwrap_or_default());
    let user_cart = user.create_cart().await.id();
    user.add_to_cart(&user_cart, "m-a", 6).await;
    user.add_to_cart(&user_cart, "m-b", 1).await;

    let guest = app.api.create_cart().await.id();
    app.api.add_to_cart(&guest, "m-a", 7).await; // 6 + 7 = 13 → capped at 10
    app.api.add_to_cart(&guest, "m-b", 2).await; // 1 + 2 = 3

    let r = app
        .api
        .login_with_cart(&email, "correct horse battery", &guest)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cart = user.cart(&user_cart).await;
    let qty = |sku: &str| {
        cart.body["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["sku"] == sku))
            .map(|i| i["quantity"].clone())
    };
    assert_eq!(qty("M-A"), Some(json!(10)));
    assert_eq!(qty("M-B"), Some(json!(3)));

    let g = app.api.cart(&guest).await;
    assert_eq!(g.body["status"], "merged");
    assert_eq!(g.body["merged_into"], user_cart.as_str());
    let r = app.api.add_to_cart(&guest, "m-a", 1).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "cart_not_active");

    // A second login with the same (merged) cart id changes nothing and still signs in.
    let r = app
        .api
        .login_with_cart(&email, "correct horse battery", &guest)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        user.cart(&user_cart).await.body["items"],
        cart.body["items"]
    );
}

#[tokio::test]
async fn a_user_without_a_cart_gets_one_from_the_merge() {
    let app = spawn_app().await;
    product(&app, "n").await;
    let email = unique_email("nocart");
    app.api.register(&email, "correct horse battery").await;
    let guest = app.api.create_cart().await.id();
    app.api.add_to_cart(&guest, "n-a", 2).await;
    let r = app
        .api
        .login_with_cart(&email, "correct horse battery", &guest)
        .await;
    let user = app
        .api
        .with_token(r.body["access_token"].as_str().unwrap_or_default());
    let cart = user.create_cart().await;
    assert_eq!(cart.status, 200, "the merge created it");
    assert_eq!(cart.body["items"][0]["quantity"], 2);
}

#[tokio::test]
async fn idle_guest_carts_expire_after_thirty_days() {
    let app = spawn_app().await;
    product(&app, "e").await;
    let old = app.api.create_cart().await.id();
    app.api.add_to_cart(&old, "e-a", 1).await;
    app.clock.advance(Duration::from_secs(29 * 86_400));
    let fresh = app.api.create_cart().await.id();
    app.api.add_to_cart(&old, "e-a", 1).await; // activity refreshes the expiry
    app.clock.advance(Duration::from_secs(29 * 86_400));
    app.state
        .carts
        .expire_guest_carts()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        app.api.cart(&old).await.body["status"],
        "active",
        "touched 29 days ago"
    );
    assert_eq!(app.api.cart(&fresh).await.body["status"], "active");
    app.clock.advance(Duration::from_secs(2 * 86_400));
    app.state
        .carts
        .expire_guest_carts()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(app.api.cart(&old).await.body["status"], "expired");
    let r = app.api.add_to_cart(&old, "e-a", 1).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "cart_not_active");
}

#[tokio::test]
async fn a_json_array_body_is_refused_not_read_as_the_fields_in_order() {
    let app = spawn_app().await;
    let c = app.customer().await;
    for body in [serde_json::json!([null, null]), serde_json::json!(["EUR"])] {
        let r = c.post("/carts", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert_eq!(r.code(), "validation_failed");
    }
    // Nothing was created by the refused requests.
    let r = c.post("/carts", serde_json::json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
}
