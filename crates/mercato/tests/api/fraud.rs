//! Fraud, black-box: rules at their thresholds, blocklists, held orders and their reviews
//! (approve and reject racing), stats, the feature store off the request path, the model.

use crate::inventory::stocked;
use mercato_testkit::{Client, TestApp, TestResponse, sample_address, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// The open review of `order_id` (panics when there is none).
pub async fn review_of(admin: &Client, order_id: &str) -> String {
    let r = admin
        .get("/admin/fraud/reviews?status=open&limit=100")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"]
        .as_array()
        .and_then(|rows| rows.iter().find(|v| v["order_id"] == order_id))
        .map(|v| text(&v["id"]))
        .unwrap_or_else(|| panic!("no open review of {order_id}: {}", r.body))
}

/// A shop with `units` of one SKU (unit price 10.00) and its admin.
async fn shop(app: &TestApp, units: i64) -> (Client, String) {
    let (admin, sku, de, _) = stocked(app, "frd").await;
    assert_eq!(admin.set_stock(&sku, &de, units).await.status, 200);
    (admin, sku)
}

/// An open checkout of one unit for `c`.
async fn open_checkout(c: &Client, sku: &str) -> String {
    let cart = c.create_cart().await.id();
    assert_eq!(c.add_to_cart(&cart, sku, 1).await.status, 200);
    // A blocked checkout leaves its cart active with the line: keep one unit.
    assert_eq!(c.set_cart_quantity(&cart, sku, 1).await.status, 200);
    let chk = c.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    chk.id()
}

/// Pays a checkout with extra headers (device id, client country).
async fn pay_with(c: &Client, chk: &str, token: &str, headers: &[(&str, &str)]) -> TestResponse {
    let key = format!("pay-{chk}");
    let mut h = vec![("idempotency-key", key.as_str())];
    h.extend_from_slice(headers);
    c.send(
        Method::POST,
        &format!("/checkouts/{chk}/pay"),
        Some(&json!({"payment_method": "card", "payment_token": token})),
        &h,
    )
    .await
}

/// A customer buying one unit; the pay answer.
async fn buy(app: &TestApp, sku: &str, token: &str) -> (Client, String, TestResponse) {
    let c = app.customer().await;
    let chk = open_checkout(&c, sku).await;
    let r = pay_with(&c, &chk, token, &[]).await;
    (c, chk, r)
}

async fn put_rule(admin: &Client, name: &str, body: Value) {
    let r = admin.put(&format!("/admin/fraud/rules/{name}"), body).await;
    assert_eq!(r.status, 200, "{name}: {}", r.body);
}

async fn available(admin: &Client, sku: &str) -> i64 {
    admin.stock(sku).await.body["available"]
        .as_i64()
        .unwrap_or(-1)
}

#[tokio::test]
async fn rules_are_data_and_a_bad_config_is_422_with_the_field_changing_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let r = admin.get("/admin/fraud/rules").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<String> = r.body["data"]
        .as_array()
        .map(|a| a.iter().map(|v| text(&v["name"])).collect())
        .unwrap_or_default();
    for n in [
        "blocklist",
        "velocity",
        "high_value_new_account",
        "card_country_mismatch",
        "geo_velocity",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    let velocity = |body: &Value| -> Value {
        body["data"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == "velocity").cloned())
            .unwrap_or_default()
    };
    let before = velocity(&r.body);
    assert_eq!(before["thresholds"]["block_above"], 5);
    assert_eq!(before["thresholds"]["flag_above"], 3);
    assert_eq!(before["thresholds"]["window_secs"], 600);

    for (body, field) in [
        (
            json!({"thresholds": {"window_secs": 0}}),
            "thresholds.window_secs",
        ),
        (json!({"thresholds": {"nope": 1}}), "thresholds.nope"),
        (
            json!({"thresholds": {"flag_above": 9}}),
            "thresholds.flag_above",
        ),
    ] {
        let r = admin.put("/admin/fraud/rules/velocity", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert_eq!(r.body["errors"][0]["field"], field, "{}", r.body);
    }
    let r = admin
        .put("/admin/fraud/rules/velocity", json!({"action": "maybe"}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        admin
            .put("/admin/fraud/rules/nope", json!({"enabled": true}))
            .await
            .status,
        404
    );
    let after = admin.get("/admin/fraud/rules").await;
    assert_eq!(velocity(&after.body), before, "nothing changed");

    let r = admin
        .put(
            "/admin/fraud/rules/velocity",
            json!({"enabled": true, "action": "flag", "thresholds": {"block_above": 7}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["action"], "flag");
    assert_eq!(r.body["enabled"], true);
    assert_eq!(r.body["thresholds"]["block_above"], 7);
    let after = admin.get("/admin/fraud/rules").await;
    assert_eq!(velocity(&after.body)["thresholds"]["block_above"], 7);
}

#[tokio::test]
async fn fraud_admin_routes_answer_403_to_customers_whatever_the_body() {
    let app = spawn_app().await;
    let c = app.customer().await;
    for (method, path, body) in [
        (Method::GET, "/admin/fraud/rules", None),
        (
            Method::PUT,
            "/admin/fraud/rules/velocity",
            Some(json!({"bad": []})),
        ),
        (Method::GET, "/admin/fraud/blocklist", None),
        (
            Method::POST,
            "/admin/fraud/blocklist",
            Some(json!("garbage")),
        ),
        (Method::DELETE, "/admin/fraud/blocklist/fbl_x", None),
        (Method::GET, "/admin/fraud/reviews?status=open", None),
        (Method::POST, "/admin/fraud/reviews/frv_x/approve", None),
        (
            Method::POST,
            "/admin/fraud/reviews/frv_x/reject",
            Some(json!(7)),
        ),
        (Method::GET, "/admin/fraud/stats", None),
        (Method::GET, "/admin/fraud/model", None),
        (Method::POST, "/admin/fraud/model/train", None),
    ] {
        let r = c.send(method.clone(), path, body.as_ref(), &[]).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
    }
    let r = app.api.get("/admin/fraud/rules").await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn blocklisted_email_card_ip_and_device_are_blocked_with_nothing_charged_and_stock_released()
{
    let app = spawn_app().await;
    let (admin, sku) = shop(&app, 10).await;
    let c = app.customer().await;
    let email = text(&c.me().await.body["email"]);
    for (kind, value, token, headers) in [
        ("email", email.as_str(), "tok_visa", vec![]),
        (
            "card_fingerprint",
            "fp_shared0000000000000",
            "tok_shared_card",
            vec![],
        ),
        ("ip", "127.0.0.1", "tok_visa", vec![]),
        (
            "device_id",
            "dev-42",
            "tok_visa",
            vec![("x-device-id", "dev-42")],
        ),
    ] {
        let entry = admin
            .post(
                "/admin/fraud/blocklist",
                json!({"kind": kind, "value": value, "reason": "test"}),
            )
            .await;
        assert_eq!(entry.status, 201, "{kind}: {}", entry.body);
        let again = admin
            .post(
                "/admin/fraud/blocklist",
                json!({"kind": kind, "value": value}),
            )
            .await;
        assert_eq!(again.status, 409, "{kind} listed twice: {}", again.body);
        let chk = open_checkout(&c, &sku).await;
        assert_eq!(available(&admin, &sku).await, 9, "{kind}: reserved");
        let r = pay_with(&c, &chk, token, &headers).await;
        assert_eq!(r.status, 403, "{kind}: {}", r.body);
        assert_eq!(r.code(), "fraud_blocked");
        assert!(app.gateway.charges().is_empty(), "{kind}: nothing charged");
        assert_eq!(available(&admin, &sku).await, 10, "{kind}: stock released");
        let gone = admin
            .delete(&format!("/admin/fraud/blocklist/{}", entry.id()))
            .await;
        assert_eq!(gone.status, 204, "{}", gone.body);
    }
    // Bad entries: the field is named and nothing is listed.
    for (body, field) in [
        (json!({"kind": "phone", "value": "1"}), "kind"),
        (json!({"kind": "email", "value": "not-an-email"}), "value"),
        (json!({"kind": "ip", "value": "999.1.1.1"}), "value"),
    ] {
        let r = admin.post("/admin/fraud/blocklist", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert_eq!(r.body["errors"][0]["field"], field, "{}", r.body);
    }
    let list = admin.get("/admin/fraud/blocklist").await;
    assert_eq!(list.body["data"], json!([]), "{}", list.body);
    // Off the list, the same customer pays.
    let chk = open_checkout(&c, &sku).await;
    assert_eq!(pay_with(&c, &chk, "tok_visa", &[]).await.status, 201);
}

#[tokio::test]
async fn velocity_flags_above_three_and_blocks_above_five_uses_of_one_card() {
    let app = spawn_app().await;
    let (admin, sku) = shop(&app, 20).await;
    put_rule(&admin, "velocity", json!({"enabled": true})).await;
    let mut under_review = Vec::new();
    for i in 1..=6 {
        // A different customer each time: the shared card is one fingerprint for everyone.
        let (c, _, r) = buy(&app, &sku, "tok_shared_card").await;
        if i == 6 {
            assert_eq!(r.status, 403, "6th use: {}", r.body);
            assert_eq!(r.code(), "fraud_blocked");
            continue;
        }
        assert_eq!(r.status, 201, "use {i}: {}", r.body);
        let o = c.order(&text(&r.body["order_id"])).await;
        under_review.push(o.body["under_review"] == true);
    }
    assert_eq!(under_review, vec![false, false, false, true, true]);
    // Generic tokens are each customer's own card: many customers are many cards.
    for _ in 0..4 {
        let (c, _, r) = buy(&app, &sku, "tok_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        let o = c.order(&text(&r.body["order_id"])).await;
        assert_eq!(o.body["under_review"], false, "{}", o.body);
    }
}

#[tokio::test]
async fn high_value_new_account_and_card_country_flag_exactly_at_their_thresholds() {
    let app = spawn_app().await;
    let (admin, sku) = shop(&app, 20).await;
    // One unit to GB: 10.00 + 9.99 shipping + 2.00 VAT = 21.99.
    put_rule(
        &admin,
        "high_value_new_account",
        json!({"enabled": true, "thresholds": {"min_amount": 2199}}),
    )
    .await;
    let (c, _, r) = buy(&app, &sku, "tok_visa").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let o = c.order(&text(&r.body["order_id"])).await;
    assert_eq!(
        o.body["under_review"], false,
        "at the threshold: {}",
        o.body
    );
    put_rule(
        &admin,
        "high_value_new_account",
        json!({"thresholds": {"min_amount": 2198}}),
    )
    .await;
    let (_, _, r) = buy(&app, &sku, "tok_visa").await;
    let oid = text(&r.body["order_id"]);
    let o = admin.order(&oid).await;
    assert_eq!(o.body["under_review"], true, "above it: {}", o.body);
    assert_eq!(o.body["risk"]["decision"], "review", "{}", o.body);
    assert!(
        o.body["risk"]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("high_value_new_account")),
        "{}",
        o.body
    );
    // An account older than the limit is not new.
    put_rule(
        &admin,
        "high_value_new_account",
        json!({"thresholds": {"max_account_age_days": 0}}),
    )
    .await;
    let (_, _, r) = buy(&app, &sku, "tok_visa").await;
    let o = admin.order(&text(&r.body["order_id"])).await;
    assert_eq!(o.body["under_review"], false, "{}", o.body);

    // Card country: a US card shipping to GB is flagged, a GB card is not.
    put_rule(&admin, "card_country_mismatch", json!({"enabled": true})).await;
    let (_, _, r) = buy(&app, &sku, "tok_visa_gb").await;
    let o = admin.order(&text(&r.body["order_id"])).await;
    assert_eq!(o.body["under_review"], false, "{}", o.body);
    let (_, _, r) = buy(&app, &sku, "tok_visa").await;
    let o = admin.order(&text(&r.body["order_id"])).await;
    assert_eq!(o.body["under_review"], true, "{}", o.body);
    // As a block rule it refuses the payment instead.
    put_rule(&admin, "card_country_mismatch", json!({"action": "block"})).await;
    let (_, _, r) = buy(&app, &sku, "tok_visa").await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Geo velocity: the same customer from the US, then from Japan ten seconds later.
    let c = app.customer().await;
    let chk = open_checkout(&c, &sku).await;
    let r = pay_with(&c, &chk, "tok_visa_gb", &[("cf-ipcountry", "US")]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let o = admin.order(&text(&r.body["order_id"])).await;
    assert_eq!(o.body["under_review"], false, "{}", o.body);
    let chk = open_checkout(&c, &sku).await;
    let r = pay_with(&c, &chk, "tok_visa_gb", &[("cf-ipcountry", "JP")]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let o = admin.order(&text(&r.body["order_id"])).await;
    assert_eq!(o.body["under_review"], true, "{}", o.body);
    assert!(
        o.body["risk"].to_string().contains("geo_velocity"),
        "{}",
        o.body
    );
}

#[tokio::test]
async fn a_review_order_is_charged_but_cannot_ship_until_approved() {
    let app = spawn_app_with(|s| s.fraud_review_amount = 1).await;
    let (admin, sku) = shop(&app, 5).await;
    let (c, _, r) = buy(&app, &sku, "tok_visa").await;
    assert_eq!(r.status, 201, "charged: {}", r.body);
    assert_eq!(r.body["status"], "confirmed");
    let oid = text(&r.body["order_id"]);
    for path in ["fulfil", "ship"] {
        let r = admin
            .post(
                &format!("/orders/{oid}/{path}"),
                json!({"carrier": "DHL", "tracking_number": "1"}),
            )
            .await;
        assert_eq!(r.status, 409, "{path}: {}", r.body);
        if path == "fulfil" {
            assert_eq!(r.code(), "order_under_review");
        }
    }
    // Admins see the risk; the customer does not.
    let o = admin.order(&oid).await;
    assert_eq!(o.body["risk"]["decision"], "review", "{}", o.body);
    assert!(o.body["risk"]["score"].is_number(), "{}", o.body);
    let mine = c.order(&oid).await;
    assert!(mine.body.get("risk").is_none(), "{}", mine.body);

    let list = admin.get("/admin/fraud/reviews?status=open").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let review = &list.body["data"][0];
    assert_eq!(review["order_id"], oid.as_str());
    assert!(review["score"].is_number());
    assert!(review["reasons"][0].as_str().is_some(), "{review}");
    assert_eq!(review["top_features"].as_array().map(Vec::len), Some(3));
    assert!(review["top_features"][0]["contribution"].is_number());
    let id = text(&review["id"]);
    assert_eq!(
        admin.get("/admin/fraud/reviews?status=nope").await.status,
        422
    );

    let r = admin
        .post(&format!("/admin/fraud/reviews/{id}/approve"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "approved");
    // Approving again answers the same; rejecting now is refused.
    let again = admin
        .post(&format!("/admin/fraud/reviews/{id}/approve"), json!({}))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let reject = admin
        .post(
            &format!("/admin/fraud/reviews/{id}/reject"),
            json!({"reason": "late"}),
        )
        .await;
    assert_eq!(reject.status, 409, "{}", reject.body);
    assert_eq!(reject.code(), "review_decided");
    crate::orders::advance(&admin, &oid, "shipped").await;
    let open = admin.get("/admin/fraud/reviews?status=open").await;
    assert_eq!(open.body["data"], json!([]), "{}", open.body);

    // Stats: one review decision, approved = a false positive of the rule that flagged it.
    let stats = admin.get("/admin/fraud/stats").await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(stats.body["decisions"]["review"], 1, "{}", stats.body);
    assert_eq!(stats.body["reviews"]["approved"], 1, "{}", stats.body);
    let rule = stats.body["rules"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["rule"] == "order_amount").cloned())
        .unwrap_or_default();
    assert_eq!(rule["flags"], 1, "{}", stats.body);
    assert_eq!(rule["labelled_legit"], 1, "{}", stats.body);
    assert_eq!(rule["false_positive_rate"], 1.0, "{}", stats.body);
}

#[tokio::test]
async fn approve_and_reject_racing_refund_exactly_once() {
    let app = spawn_app_with(|s| s.fraud_review_amount = 1).await;
    let (admin, sku) = shop(&app, 10).await;
    for round in 0..3 {
        let (_, chk, r) = buy(&app, &sku, "tok_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        let oid = text(&r.body["order_id"]);
        let id = review_of(&admin, &oid).await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let admin = admin.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                if (i + round) % 2 == 0 {
                    admin
                        .post(&format!("/admin/fraud/reviews/{id}/approve"), json!({}))
                        .await
                } else {
                    admin
                        .post(
                            &format!("/admin/fraud/reviews/{id}/reject"),
                            json!({"reason": "stolen card"}),
                        )
                        .await
                }
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            let r = t.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(r.status, 200 | 409), "{}", r.body);
            statuses.push(r.status);
        }
        let review = admin.get(&format!("/admin/fraud/reviews/{id}")).await;
        let decided = text(&review.body["status"]);
        let order = admin.order(&oid).await;
        let refunds = app.gateway.refunds_for(&format!("{chk}:pay:1"));
        match decided.as_str() {
            "approved" => {
                assert_eq!(order.body["status"], "confirmed", "{}", order.body);
                assert!(refunds.is_empty(), "approved yet refunded: {refunds:?}");
            }
            "rejected" => {
                assert_eq!(order.body["status"], "cancelled", "{}", order.body);
                assert_eq!(refunds.len(), 1, "refunded exactly once: {refunds:?}");
                assert_eq!(
                    order.body["payment"]["refunded"], order.body["payment"]["captured"],
                    "{}",
                    order.body
                );
            }
            other => panic!("review left {other}"),
        }
        assert!(statuses.contains(&200));
    }
}

#[tokio::test]
async fn features_are_never_read_from_the_database_when_scoring() {
    let app = spawn_app_with(|s| s.fraud_features_refresh_secs = 3600).await;
    let (_, sku) = shop(&app, 10).await;
    let c = app.customer().await;
    let loads = app.state.fraud.cache_loads();
    for _ in 0..3 {
        let chk = open_checkout(&c, &sku).await;
        assert_eq!(
            pay_with(&c, &chk, "tok_visa", &[("x-device-id", "d1")])
                .await
                .status,
            201
        );
    }
    assert_eq!(
        app.state.fraud.cache_loads(),
        loads,
        "scoring read the database"
    );
    // The background recomputation sees the orders (from the fraud module's own records).
    let me = c.me().await;
    let id = text(&me.body["id"]);
    assert_eq!(app.state.fraud.features_of(&id).order_count_30d, 0.0);
    app.state
        .fraud
        .refresh_features()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let f = app.state.fraud.features_of(&id);
    assert_eq!(f.order_count_30d, 3.0, "{f:?}");
    assert_eq!(f.distinct_devices_30d, 1.0, "{f:?}");
    assert_eq!(f.avg_order_value_30d, 2199.0, "{f:?}");
    // Unknown customers get defaults.
    assert_eq!(
        app.state.fraud.features_of("usr_nobody"),
        Default::default()
    );
}

#[tokio::test]
async fn the_model_trains_from_labels_counts_chargebacks_and_a_failed_run_keeps_the_old_one() {
    let app = spawn_app().await;
    let (admin, sku) = shop(&app, 40).await;
    let m = admin.get("/admin/fraud/model").await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.body["version"], 0);
    let r = admin.post("/admin/fraud/model/train", json!({})).await;
    assert_eq!(r.status, 422, "no labels yet: {}", r.body);
    assert_eq!(r.code(), "model_training_failed");

    // Every order to review; US cards shipping to GB are rejected as fraud, GB cards approved.
    put_rule(
        &admin,
        "order_amount",
        json!({"thresholds": {"flag_above": 0}}),
    )
    .await;
    for i in 0..16 {
        let token = if i % 2 == 0 {
            "tok_visa"
        } else {
            "tok_visa_gb"
        };
        let (_, _, r) = buy(&app, &sku, token).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let id = review_of(&admin, &text(&r.body["order_id"])).await;
        let r = if token == "tok_visa" {
            admin
                .post(
                    &format!("/admin/fraud/reviews/{id}/reject"),
                    json!({"reason": "fraud"}),
                )
                .await
        } else {
            admin
                .post(&format!("/admin/fraud/reviews/{id}/approve"), json!({}))
                .await
        };
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = admin.post("/admin/fraud/model/train", json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["samples"], 16);
    assert!(
        r.body["metrics"]["auc"].as_f64().is_some_and(|a| a > 0.9),
        "{}",
        r.body
    );
    assert!(r.body["metrics"]["recall"].is_number());
    assert!(r.body["metrics"]["false_positive_rate"].is_number());

    // The trained model now scores the pattern it learned (a US card shipping to GB) at or
    // above the block threshold: refused before any charge.
    let charges = app.gateway.charges().len();
    let (_, _, r) = buy(&app, &sku, "tok_visa").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(app.gateway.charges().len(), charges, "nothing charged");

    // A chargeback (tok_fraudulent is disputed soon after capture) becomes a label.
    put_rule(
        &admin,
        "order_amount",
        json!({"thresholds": {"flag_above": 1_000_000}}),
    )
    .await;
    // (Shipped to the US: the model just learned that a US card shipping to GB is fraud, and
    // would block it.)
    let c = app.customer().await;
    let cart = c.create_cart().await.id();
    assert_eq!(c.add_to_cart(&cart, &sku, 1).await.status, 200);
    let us = json!({"name": "Bo", "line1": "1 Main St", "city": "Austin", "region": "TX",
                    "postal_code": "73301", "country": "US"});
    let chk = c.checkout(&cart, us).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let r = pay_with(&c, &chk.id(), "tok_fraudulent", &[]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let oid = text(&r.body["order_id"]);
    let labelled = app
        .eventually(Duration::from_secs(15), || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM fraud_decisions WHERE order_id = $1 AND label = 'fraud'",
            )
            .bind(&oid)
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or_default();
            (n == 1).then_some(())
        })
        .await;
    assert!(
        labelled.is_some(),
        "the chargeback never labelled the order"
    );

    // A run that fails leaves version 1 serving.
    app.state.kernel.failpoints.enable("fraud.train");
    let r = admin.post("/admin/fraud/model/train", json!({})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    app.state.kernel.failpoints.disable("fraud.train");
    let m = admin.get("/admin/fraud/model").await;
    assert_eq!(m.body["version"], 1, "{}", m.body);
    // The next run counts the chargeback.
    let r = admin.post("/admin/fraud/model/train", json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["samples"], 17, "{}", r.body);
}
