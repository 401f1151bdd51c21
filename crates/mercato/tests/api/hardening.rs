//! Hardening (issue 16): tokens from the future and invalid tokens are 401 on every route
//! class; authorization answers before body validation; bounds and overflow are 422; open
//! streams per user are capped.

use crate::inventory::stocked;
use mercato_commerce::identity::token::{Claims, TokenSigner};
use mercato_testkit::{Client, spawn_app, spawn_app_with};
use serde_json::json;

const TEST_SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

fn token_from_the_future(
    user_id: &str,
    role: &str,
    nbf_secs: Option<i64>,
    iat_secs: i64,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    TokenSigner::new(TEST_SECRET, 3600).sign(&Claims {
        sub: user_id.into(),
        role: role.into(),
        iat: now + iat_secs,
        exp: now + 7200,
        nbf: nbf_secs.map(|n| now + n),
        jti: "future".into(),
    })
}

#[tokio::test]
async fn future_and_invalid_tokens_are_401_on_public_customer_and_admin_routes() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let me = admin.get("/me").await;
    assert_eq!(me.status, 200, "{}", me.body);
    let admin_id = me.body["id"].as_str().unwrap_or_default().to_owned();
    // A well-signed token of a real admin, issued "later" (iat) or not valid before (nbf) a
    // time beyond the leeway, and plain garbage.
    let tokens = [
        token_from_the_future(&admin_id, "admin", None, 600),
        token_from_the_future(&admin_id, "admin", Some(600), 0),
        "not-a-token".to_owned(),
    ];
    for t in &tokens {
        let c = app.api.with_token(t);
        for path in [
            "/products",
            "/categories",
            "/me",
            "/admin/users",
            "/admin/outbox",
        ] {
            let r = c.get(path).await;
            assert_eq!(r.status, 401, "{path} with {t}: {}", r.body);
            assert_eq!(r.code(), "invalid_token");
        }
        let r = c.post("/carts", json!({})).await;
        assert_eq!(r.status, 401, "a public POST: {}", r.body);
    }
    // Within the leeway (clock skew between nodes) the token is accepted.
    let skewed = app
        .api
        .with_token(&token_from_the_future(&admin_id, "admin", None, 30));
    assert_eq!(skewed.get("/me").await.status, 200);
}

#[tokio::test]
async fn a_customers_malformed_body_to_an_admin_or_seller_route_is_403_not_422() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "az").await;
    let customer = app.customer().await;
    let bogus = json!({"bogus": [1, 2, 3], "on_hand": "many"});
    let routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::POST, "/categories".into()),
        (reqwest::Method::POST, "/products".into()),
        (reqwest::Method::POST, "/warehouses".into()),
        (
            reqwest::Method::PUT,
            format!("/inventory/{sku}/warehouses/{de}"),
        ),
        (
            reqwest::Method::POST,
            format!("/inventory/{sku}/adjustments"),
        ),
        (reqwest::Method::POST, "/admin/api-keys".into()),
        (
            reqwest::Method::PATCH,
            "/admin/users/usr_00000000000000000000000000".into(),
        ),
        (
            reqwest::Method::POST,
            "/orders/ord_00000000000000000000000000/ship".into(),
        ),
        (
            reqwest::Method::POST,
            "/payments/pay_00000000000000000000000000/refunds".into(),
        ),
        (
            reqwest::Method::POST,
            "/returns/ret_00000000000000000000000000/reject".into(),
        ),
        (reqwest::Method::POST, "/notifications".into()),
        (reqwest::Method::POST, "/notifications/bulk".into()),
        (reqwest::Method::PUT, "/notification-templates/x.y".into()),
        (
            reqwest::Method::POST,
            "/notification-templates/x.y/preview".into(),
        ),
    ];
    for (method, path) in routes {
        let r = customer
            .try_send(
                method.clone(),
                &path,
                Some(&bogus),
                &[("idempotency-key", &mercato_kernel::id::random_hex(8))],
            )
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert!(
            r.body.get("errors").is_none(),
            "{method} {path} must not list the body's fields: {}",
            r.body
        );
    }
    // A seller editing another seller's product (the admin's) is refused before its body is
    // read.
    let cat = admin.create_category("Owned", "owned", None).await;
    assert_eq!(cat.status, 201, "{}", cat.body);
    let p = admin
        .create_product(mercato_testkit::sample_product(
            &cat.id(),
            "Owned",
            "O",
            &[("AZ-OWNED", 100)],
        ))
        .await;
    assert_eq!(p.status, 201, "{}", p.body);
    let seller = app.user_with_role(mercato_kernel::auth::Role::Seller).await;
    let r = seller.patch(&format!("/products/{}", p.id()), bogus).await;
    assert_eq!(r.status, 403, "{}", r.body);
}

#[tokio::test]
async fn stock_adjustments_are_bounded_and_never_overflow() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "bd").await;
    assert_eq!(admin.set_stock(&sku, &de, 999_999_990).await.status, 200);
    let path = format!("/inventory/{sku}/adjustments");
    for delta in [i64::MIN, i64::MAX, -i64::MAX, 1_000_000_001, 11] {
        let r = admin
            .post(
                &path,
                json!({"warehouse_id": de, "delta": delta, "reason": "restock"}),
            )
            .await;
        assert_eq!(r.status, 422, "delta {delta}: {}", r.body);
    }
    let r = admin
        .post(
            &path,
            json!({"warehouse_id": de, "delta": 10, "reason": "restock"}),
        )
        .await;
    assert_eq!(r.status, 201, "up to the cap exactly: {}", r.body);
    assert_eq!(r.body["on_hand"], 1_000_000_000);
}

#[tokio::test]
async fn the_stream_past_a_users_cap_is_429_and_closing_one_frees_a_place() {
    let app = spawn_app_with(|s| s.sse_max_streams_per_user = 5).await;
    let c = app.customer().await;
    let token = c.token.clone().unwrap_or_default();
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/me/inbox/stream", app.address);
    let mut open = Vec::new();
    for _ in 0..5 {
        let r = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // Another user is not affected.
    let other: Client = app.customer().await;
    let r = http
        .get(&url)
        .bearer_auth(other.token.clone().unwrap_or_default())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    drop(r);
    // Hanging up frees the place (the server notices the closed connection).
    drop(open.pop());
    let freed = app
        .eventually(std::time::Duration::from_secs(10), || async {
            let r = http.get(&url).bearer_auth(&token).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    assert!(freed.is_some(), "a closed stream gives its place back");
}
