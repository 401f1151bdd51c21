//! The event contract end to end: real flows on a real app emit every event type, every
//! outbox row decodes with the payload type registered for its type (`mercato-events`), and
//! no consumer's delivery failed (no retries, no dead letters).

use crate::inventory::stocked;
use crate::orders::bought;
use mercato_testkit::{Client, TestApp, sample_address, spawn_app_with};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

async fn post_ok(c: &Client, path: &str, body: Value) -> Value {
    let r = c.post(path, body).await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
    r.body
}

/// Every event published and every consumer past the last one.
async fn delivered(app: &TestApp) -> bool {
    let db = app.state.kernel.db.reader();
    let unpublished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE log_pos IS NULL")
        .fetch_one(db)
        .await
        .unwrap_or(1);
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(log_pos) FROM outbox")
        .fetch_one(db)
        .await
        .unwrap_or_default();
    let behind: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM consumer_offsets WHERE position < $1")
            .bind(last.unwrap_or(0))
            .fetch_one(db)
            .await
            .unwrap_or(1);
    unpublished == 0 && behind == 0
}

#[tokio::test]
async fn every_event_a_flow_emits_decodes_and_every_consumer_accepts_it() {
    // Every order goes to fraud review (fraud.flagged with an order).
    // A webhook endpoint that never answers is disabled after a second of failures.
    let app = spawn_app_with(|s| {
        s.fraud_review_amount = 1;
        s.webhooks_allow_private_targets = true;
        s.webhooks_retry_base_ms = 10;
        s.webhooks_disable_after_secs = 1;
        s.jwt_ttl_secs = 86_400;
    })
    .await;
    let (admin, sku, de, _) = stocked(&app, "evt").await;
    admin.set_stock(&sku, &de, 12).await;
    let hook = admin
        .post(
            "/admin/webhooks",
            json!({"url": "http://127.0.0.1:9/closed", "events": ["webhook.test"]}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let r = admin
        .post(&format!("/admin/webhooks/{}/test", hook.id()), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    post_ok(
        &admin,
        &format!("/inventory/{sku}/adjustments"),
        json!({"warehouse_id": de, "delta": 2, "reason": "restock"}),
    )
    .await;

    // A purchase taking stock below the threshold, fulfilled, delivered, partly returned.
    let (customer, order) = bought(&app, &sku, 5).await;
    let oid = text(&order["id"]);
    // Held for review: approved, so it can be fulfilled (fraud.review_approved).
    let review = crate::fraud::review_of(&admin, &oid).await;
    post_ok(
        &admin,
        &format!("/admin/fraud/reviews/{review}/approve"),
        json!({}),
    )
    .await;
    let product_id = text(&order["items"][0]["product_id"]);
    let r = admin
        .patch(
            &format!("/products/{product_id}"),
            json!({"name": "Renamed"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A live stream showing the product while it sells (its `product` events come from the
    // stock changes below), ended later.
    let stream = post_ok(
        &admin,
        "/live/streams",
        json!({"title": "Events live", "product_ids": [product_id]}),
    )
    .await;
    post_ok(&admin, &format!("/orders/{oid}/fulfil"), json!({})).await;
    post_ok(
        &admin,
        &format!("/orders/{oid}/ship"),
        json!({"carrier": "DHL", "tracking_number": "JD0001"}),
    )
    .await;
    post_ok(&admin, &format!("/orders/{oid}/deliver"), json!({})).await;
    let ret = post_ok(
        &customer,
        &format!("/orders/{oid}/returns"),
        json!({"items": [{"sku": sku, "quantity": 1}], "reason": "too big"}),
    )
    .await;
    post_ok(
        &admin,
        &format!("/returns/{}/approve", text(&ret["id"])),
        json!({}),
    )
    .await;

    // A review rejected as fraud (cancelled and refunded) and a payment blocked by the
    // blocklist (fraud.review_rejected, fraud.blocked).
    let (_, held) = bought(&app, &sku, 1).await;
    let review = crate::fraud::review_of(&admin, &text(&held["id"])).await;
    post_ok(
        &admin,
        &format!("/admin/fraud/reviews/{review}/reject"),
        json!({"reason": "stolen card"}),
    )
    .await;
    let c8 = app.customer().await;
    let email = text(&c8.me().await.body["email"]);
    post_ok(
        &admin,
        "/admin/fraud/blocklist",
        json!({"kind": "email", "value": email}),
    )
    .await;
    let cart = c8.create_cart().await.id();
    assert_eq!(c8.add_to_cart(&cart, &sku, 1).await.status, 200);
    let chk = c8.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let r = c8.pay(&chk.id(), "tok_visa", "evt-blocked").await;
    assert_eq!(r.status, 403, "{}", r.body);

    // A cancellation (refund and restock), an admin refund and a chargeback.
    let (c2, order2) = bought(&app, &sku, 1).await;
    post_ok(
        &c2,
        &format!("/orders/{}/cancel", text(&order2["id"])),
        json!({"reason": "changed my mind"}),
    )
    .await;
    let (_, order3) = bought(&app, &sku, 1).await;
    let pid = text(&order3["payment"]["id"]);
    let r = admin
        .post_idem(
            &format!("/payments/{pid}/refunds"),
            json!({"amount": {"amount": 100, "currency": "USD"}, "reason": "goodwill"}),
            "evt-refund",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let charge_id = text(&admin.get(&format!("/payments/{pid}")).await.body["gateway_ref"]);
    app.gateway
        .dispute(&charge_id)
        .unwrap_or_else(|e| panic!("{e}"));

    // The chargeback arrives by webhook: wait for its event to be delivered too.
    let chargeback = app
        .eventually(Duration::from_secs(15), || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE event_type = 'payment.chargeback'",
            )
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or_default();
            (n == 1 && delivered(&app).await).then_some(())
        })
        .await;
    assert!(chargeback.is_some(), "the chargeback was never delivered");
    let o = admin.order(&text(&order3["id"])).await;
    assert_eq!(o.body["flagged_for_review"], true, "{}", o.body);

    post_ok(
        &admin,
        &format!("/live/streams/{}/end", text(&stream["id"])),
        json!({}),
    )
    .await;

    // A coupon: redeemed when its checkout is paid, released when the order is cancelled
    // before shipping.
    post_ok(
        &admin,
        "/admin/promotions",
        json!({"name": "Events", "code": "EVT10", "kind": "percent_off", "value": 1000,
               "status": "active"}),
    )
    .await;
    let c6 = app.customer().await;
    let cart = c6.create_cart().await.id();
    assert_eq!(c6.add_to_cart(&cart, &sku, 1).await.status, 200);
    let chk = c6
        .post(
            "/checkouts",
            json!({"cart_id": cart, "shipping_address": sample_address(), "coupon_code": "EVT10"}),
        )
        .await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let r = c6.pay(&chk.id(), "tok_visa", "evt-coupon").await;
    assert_eq!(r.status, 201, "{}", r.body);
    post_ok(
        &c6,
        &format!("/orders/{}/cancel", text(&r.body["order_id"])),
        json!({"reason": "changed my mind"}),
    )
    .await;

    // A declined payment, a timeout that turns out not captured, a checkout left to expire.
    let c4 = app.customer().await;
    let cart = c4.create_cart().await.id();
    assert_eq!(c4.add_to_cart(&cart, &sku, 1).await.status, 200);
    let chk = c4.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let r = c4
        .pay(&chk.id(), "tok_chargeDeclined", "evt-declined")
        .await;
    assert_eq!(r.status, 402, "{}", r.body);
    app.gateway.clear_webhook();
    let cart = c4.create_cart().await.id();
    assert_eq!(c4.add_to_cart(&cart, &sku, 1).await.status, 200);
    let chk = c4.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let r = c4
        .pay(&chk.id(), "tok_timeoutDeclined", "evt-timeout")
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.state
        .checkout
        .reconcile()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cart = c4.create_cart().await.id();
    assert_eq!(c4.add_to_cart(&cart, &sku, 1).await.status, 200);
    let chk = c4.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    app.clock.advance(Duration::from_secs(901));
    app.state
        .checkout
        .expire_due()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Tokens issued before the clock jumped may have expired.
    let admin = app.admin().await;
    // Links: create, update, delete.
    let link = c4
        .post("/links", serde_json::json!({"url": "https://example.com/"}))
        .await;
    let link_id = link.id();
    c4.patch(
        &format!("/links/{link_id}"),
        serde_json::json!({"url": "https://example.com/b"}),
    )
    .await;
    c4.delete(&format!("/links/{link_id}")).await;

    // An email verification: requested (mailed), then used (user.email_verified).
    let c5 = app.customer().await;
    let r = c5.post("/me/email-verification", Value::Null).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let data: String = sqlx::query_scalar(
        "SELECT data FROM outbox WHERE event_type = 'user.email_verification_requested'",
    )
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let data: Value = serde_json::from_str(&data).unwrap_or_default();
    post_ok(
        &app.api,
        "/auth/verify-email",
        json!({"token": data["token"]}),
    )
    .await;

    // A flash sale of one unit: started, sold out when its unit is paid, ended.
    let now = mercato_kernel::clock::Clock::now(&*app.clock);
    let sale = post_ok(
        &admin,
        "/admin/flash-sales",
        json!({"sku": sku, "price": {"amount": 100, "currency": "USD"}, "units": 1,
               "starts_at": now.plus_secs(1).to_rfc3339(), "ends_at": now.plus_secs(600).to_rfc3339()}),
    )
    .await;
    let sale = text(&sale["id"]);
    app.clock.advance(Duration::from_secs(2));
    app.state
        .flash_sales
        .tick()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let c7 = app.customer().await;
    let t = c7
        .post(&format!("/flash-sales/{sale}/queue"), json!({}))
        .await;
    assert_eq!(t.status, 202, "{}", t.body);
    let p = c7
        .get(&format!(
            "/flash-sales/{sale}/queue/{}",
            text(&t.body["ticket"])
        ))
        .await;
    assert_eq!(p.body["status"], "admitted", "{}", p.body);
    let cart = c7.create_cart().await.id();
    let r = c7
        .post(
            &format!("/carts/{cart}/items"),
            json!({"sku": sku, "quantity": 1, "purchase_token": p.body["purchase_token"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let chk = c7.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let r = c7.pay(&chk.id(), "tok_visa", "evt-flash").await;
    assert_eq!(r.status, 201, "{}", r.body);
    app.clock.advance(Duration::from_secs(600));
    app.state
        .flash_sales
        .tick()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = app.admin().await;

    let caught_up = app
        .eventually(Duration::from_secs(30), || async {
            delivered(&app).await.then_some(())
        })
        .await;
    assert!(caught_up.is_some(), "the consumers never caught up");
    // Every row decodes with its registered payload type, and the doc names its fields.
    let doc = include_str!("../../../../docs/api.md");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, data FROM outbox ORDER BY seq")
            .fetch_all(app.state.kernel.db.reader())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = BTreeSet::new();
    for (t, data) in &rows {
        let data: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{t}: {e}"));
        let decoded =
            mercato_events::decode_any(t, &data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert_eq!(decoded.event_type(), t);
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{t}` |")))
            .unwrap_or_else(|| panic!("docs/api.md lists no {t}"));
        if let Value::Object(m) = &data {
            for k in m.keys() {
                assert!(
                    row.contains(&format!("`{k}`")),
                    "docs/api.md: {t} has `{k}`"
                );
            }
        }
        seen.insert(t.clone());
    }
    let want: BTreeSet<String> = mercato_events::TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "no flow emitted {missing:?}");

    // No consumer failed on any of them: nothing retrying, nothing dead.
    let r = admin.outbox("").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"], json!([]), "failed deliveries: {}", r.body);
}
