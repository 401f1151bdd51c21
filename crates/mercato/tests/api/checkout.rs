//! The transactional heart, black-box: races and faults assert invariants, never timings.

use crate::inventory::stocked;
use mercato_testkit::{Client, TestApp, sample_address, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

/// A signed-in customer with `qty` of `sku` in their cart and an open checkout.
async fn checkout_for(app: &TestApp, sku: &str, qty: i64) -> (Client, TestResponse) {
    let c = app.customer().await;
    let cart = c.create_cart().await.id();
    let r = c.add_to_cart(&cart, sku, qty).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let chk = c.checkout(&cart, sample_address()).await;
    (c, chk)
}

use mercato_testkit::TestResponse;

async fn level(admin: &Client, sku: &str) -> Value {
    admin.stock(sku).await.body
}

async fn count(app: &TestApp, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(app.state.kernel.db.reader())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn a_checkout_reserves_prices_and_pays_into_a_confirmed_order() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "hp").await;
    admin.set_stock(&sku, &de, 5).await;
    let (c, chk) = checkout_for(&app, &sku, 2).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    assert_eq!(chk.body["status"], "open");
    assert_eq!(chk.body["subtotal"]["amount"], 2000);
    assert_eq!(chk.body["shipping"]["amount"], 999, "standard to GB");
    assert_eq!(chk.body["tax"]["amount"], 400, "20% GB VAT on goods");
    assert_eq!(chk.body["total"]["amount"], 2000 + 999 + 400);
    assert_eq!(chk.body["reservations"][0]["quantity"], 2);
    assert!(chk.body["expires_at"].is_string());
    assert_eq!(level(&admin, &sku).await["reserved"], 2);

    let r = c.pay(&chk.id(), "tok_visa", "pay-1").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "confirmed");
    assert_eq!(r.body["payment"]["status"], "captured");
    assert_eq!(r.body["payment"]["amount"]["amount"], 3399);
    let order_id = r.body["order_id"].as_str().unwrap_or_default().to_owned();
    assert!(
        r.body["order_number"]
            .as_str()
            .is_some_and(|n| n.starts_with('M'))
    );

    let o = c.order(&order_id).await;
    assert_eq!(o.status, 200);
    assert_eq!(o.body["status"], "confirmed");
    assert_eq!(o.body["items"][0]["quantity"], 2);
    assert_eq!(o.body["payment"]["status"], "captured");
    assert_eq!(o.body["payment"]["captured"]["amount"], 3399);
    assert_eq!(o.body["shipping_address"]["country"], "GB");
    let history: Vec<&str> = o.body["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["to"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(history, vec!["pending", "confirmed"]);

    let stock = level(&admin, &sku).await;
    assert_eq!(
        (stock["on_hand"].clone(), stock["reserved"].clone()),
        (json!(3), json!(0))
    );
    let cart = c
        .cart(chk.body["cart_id"].as_str().unwrap_or_default())
        .await;
    assert_eq!(cart.body["status"], "converted");
    let pay = c
        .get(&format!(
            "/payments/{}",
            r.body["payment"]["id"].as_str().unwrap_or_default()
        ))
        .await;
    let ledger: Vec<&str> = pay.body["ledger"]
        .as_array()
        .map(|l| l.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ledger, vec!["initiated", "authorized", "captured"]);
    for t in [
        "checkout.started",
        "inventory.reserved",
        "payment.captured",
        "order.created",
        "order.confirmed",
        "inventory.committed",
    ] {
        assert!(
            count(&app, "SELECT COUNT(*) FROM outbox WHERE event_type = $1", t).await >= 1,
            "{t}"
        );
    }
    // Paying again with another key does not charge twice.
    let again = c.pay(&chk.id(), "tok_visa", "pay-2").await;
    assert_eq!(again.status, 409);
    assert_eq!(again.code(), "checkout_not_open");
    let reference = format!("{}:pay:1", chk.id());
    assert_eq!(app.gateway.captured_count(&reference), 1);
    // Business counters on /metrics.
    let metrics = app
        .api
        .get("/metrics")
        .await
        .body
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for needle in [
        "orders_by_status_total{status=\"confirmed\"}",
        "checkouts_completed_total",
        "inventory_reservations_total",
        "payments_charges_total{outcome=\"captured\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
}

#[tokio::test]
async fn two_hundred_buyers_for_fifty_units_make_exactly_fifty_orders() {
    let app = spawn_app().await;
    let (admin, sku, de, fr) = stocked(&app, "rush").await;
    admin.set_stock(&sku, &de, 30).await;
    admin.set_stock(&sku, &fr, 20).await;
    let mut buyers = Vec::new();
    for _ in 0..200 {
        let c = app.customer().await;
        let cart = c.create_cart().await.id();
        assert_eq!(c.add_to_cart(&cart, &sku, 1).await.status, 200);
        buyers.push((c, cart));
    }
    let mut tasks = Vec::new();
    for (i, (c, cart)) in buyers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let chk = c.checkout(&cart, sample_address()).await;
            if chk.status != 201 {
                assert_eq!(chk.code(), "insufficient_stock", "{}", chk.body);
                return None;
            }
            let r = c.pay(&chk.id(), "tok_visa", &format!("k{i}")).await;
            assert_eq!(r.status, 201, "{}", r.body);
            Some(r.body["order_id"].as_str().unwrap_or_default().to_owned())
        }));
    }
    let mut orders = Vec::new();
    for t in tasks {
        if let Some(o) = t.await.unwrap_or_else(|e| panic!("{e}")) {
            orders.push(o);
        }
    }
    assert_eq!(orders.len(), 50);
    let confirmed = count(
        &app,
        "SELECT COUNT(*) FROM orders WHERE status = $1",
        "confirmed",
    )
    .await;
    assert_eq!(confirmed, 50);
    let stock = level(&admin, &sku).await;
    assert_eq!(stock["available"], 0);
    assert_eq!(stock["reserved"], 0);
    assert_eq!(stock["on_hand"], 0);
    let sums: (i64, i64) = sqlx::query_as(
        "SELECT CAST(SUM(delta_on_hand) AS BIGINT), CAST(SUM(delta_reserved) AS BIGINT) FROM stock_movements WHERE sku = $1",
    )
    .bind(&sku)
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or((-1, -1));
    assert_eq!(sums, (0, 0), "the movement log sums to the stock");
    let captures: usize = app.gateway.charges().iter().filter(|c| c.captured).count();
    assert_eq!(captures, 50, "one capture per order");
}

#[tokio::test]
async fn the_same_pay_request_ten_times_at_once_charges_once() {
    let app = spawn_app_with(|s| s.gateway_sim_latency_ms = 50).await;
    let (admin, sku, de, _) = stocked(&app, "dup").await;
    admin.set_stock(&sku, &de, 5).await;
    let (c, chk) = checkout_for(&app, &sku, 1).await;
    let path = format!("/checkouts/{}/pay", chk.id());
    let body = json!({"payment_method": "card", "payment_token": "tok_visa"});
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, path, body) = (c.clone(), path.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            c.post_idem_patiently(&path, body, "same-key").await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert!(
        answers.iter().all(|a| a.status == 201),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(
        answers.iter().all(|a| a.body == answers[0].body),
        "same body everywhere"
    );
    assert!(
        answers
            .iter()
            .filter(|a| a.header("idempotent-replayed") == Some("true"))
            .count()
            >= 9
    );
    let reference = format!("{}:pay:1", chk.id());
    assert_eq!(app.gateway.captured_count(&reference), 1);
    assert_eq!(app.gateway.charges().len(), 1);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM orders WHERE checkout_id = $1",
            &chk.id()
        )
        .await,
        1
    );
    // A different key on the same checkout: no second charge.
    let r = c.pay(&chk.id(), "tok_visa", "other-key").await;
    assert_eq!(r.status, 409);
    assert_eq!(app.gateway.charges().len(), 1);
}

#[tokio::test]
async fn a_declined_card_is_402_releases_the_stock_and_fails_the_checkout() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "dec").await;
    admin.set_stock(&sku, &de, 3).await;
    let (c, chk) = checkout_for(&app, &sku, 3).await;
    assert_eq!(level(&admin, &sku).await["available"], 0);
    let r = c.pay(&chk.id(), "tok_chargeDeclined", "d1").await;
    assert_eq!(r.status, 402, "{}", r.body);
    assert_eq!(r.code(), "payment_declined");
    assert_eq!(r.body["decline_code"], "card_declined");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(level(&admin, &sku).await["available"], 3, "stock released");
    assert_eq!(
        c.get(&format!("/checkouts/{}", chk.id())).await.body["status"],
        "failed"
    );
    // The replay is the same 402.
    let again = c.pay(&chk.id(), "tok_chargeDeclined", "d1").await;
    assert_eq!(again.status, 402);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // The customer may start a new checkout from the same cart.
    let chk2 = c
        .checkout(
            chk.body["cart_id"].as_str().unwrap_or_default(),
            sample_address(),
        )
        .await;
    assert_eq!(chk2.status, 201, "{}", chk2.body);
    let r = c.pay(&chk2.id(), "tok_insufficientFunds", "d2").await;
    assert_eq!(r.body["decline_code"], "insufficient_funds");
}

#[tokio::test]
async fn a_gateway_timeout_is_202_then_reconciliation_confirms_with_one_capture() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "tmo").await;
    admin.set_stock(&sku, &de, 2).await;
    // The gateway's webhook is lost: only reconciliation can learn the truth.
    app.gateway.clear_webhook();
    let (c, chk) = checkout_for(&app, &sku, 1).await;
    let r = c.pay(&chk.id(), "tok_timeout", "t1").await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "pending_verification");
    let order_id = r.body["order_id"].as_str().unwrap_or_default().to_owned();
    let o = c.order(&order_id).await;
    assert_eq!(o.body["status"], "pending");
    assert_eq!(o.body["payment"]["status"], "pending_verification");
    assert_eq!(
        level(&admin, &sku).await["reserved"],
        1,
        "stock stays reserved meanwhile"
    );
    app.state
        .checkout
        .reconcile()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let o = c.order(&order_id).await;
    assert_eq!(o.body["status"], "confirmed", "{}", o.body);
    assert_eq!(o.body["payment"]["status"], "captured");
    let reference = format!("{}:pay:1", chk.id());
    assert_eq!(app.gateway.captured_count(&reference), 1);
    let stock = level(&admin, &sku).await;
    assert_eq!(
        (stock["on_hand"].clone(), stock["reserved"].clone()),
        (json!(1), json!(0))
    );
    // Reconciling again changes nothing.
    app.state
        .checkout
        .reconcile()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(app.gateway.captured_count(&reference), 1);
}

#[tokio::test]
async fn a_timeout_that_did_not_capture_fails_the_order_and_releases_the_stock() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "tmd").await;
    admin.set_stock(&sku, &de, 2).await;
    app.gateway.clear_webhook();
    let (c, chk) = checkout_for(&app, &sku, 2).await;
    let r = c.pay(&chk.id(), "tok_timeoutDeclined", "t2").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let order_id = r.body["order_id"].as_str().unwrap_or_default().to_owned();
    app.state
        .checkout
        .reconcile()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let o = c.order(&order_id).await;
    assert_eq!(o.body["status"], "failed", "{}", o.body);
    assert_eq!(level(&admin, &sku).await["available"], 2);
    assert_eq!(
        app.gateway.captured_count(&format!("{}:pay:1", chk.id())),
        0
    );
}

#[tokio::test]
async fn a_crash_between_charge_and_order_is_recovered_into_a_confirmed_order() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "crash").await;
    admin.set_stock(&sku, &de, 2).await;
    let (c, chk) = checkout_for(&app, &sku, 1).await;
    app.state.kernel.failpoints.enable("checkout.after_charge");
    let r = c.pay(&chk.id(), "tok_visa", "c1").await;
    assert_eq!(r.status, 500, "the process 'died' after charging");
    app.state.kernel.failpoints.disable("checkout.after_charge");
    let reference = format!("{}:pay:1", chk.id());
    assert_eq!(app.gateway.captured_count(&reference), 1, "money was taken");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM orders WHERE checkout_id = $1",
            &chk.id()
        )
        .await,
        0
    );

    app.clock.advance(Duration::from_secs(31));
    app.state
        .checkout
        .recover_stuck()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let order: (String, String) =
        sqlx::query_as("SELECT id, status FROM orders WHERE checkout_id = $1")
            .bind(chk.id())
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(order.1, "confirmed");
    assert_eq!(
        app.gateway.captured_count(&reference),
        1,
        "never charged twice"
    );
    let stock = level(&admin, &sku).await;
    assert_eq!(
        (stock["on_hand"].clone(), stock["reserved"].clone()),
        (json!(1), json!(0))
    );
    // The saga log tells the story.
    let admin_sagas = admin.get("/admin/sagas?status=completed").await;
    let steps = admin_sagas.body["data"][0]["steps"].to_string();
    assert!(
        steps.contains("create_order") && steps.contains("commit_stock"),
        "{steps}"
    );
}

#[tokio::test]
async fn a_capture_found_for_a_checkout_that_cannot_become_an_order_is_refunded() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "comp").await;
    admin.set_stock(&sku, &de, 2).await;
    let (c, chk) = checkout_for(&app, &sku, 1).await;
    app.state.kernel.failpoints.enable("checkout.after_charge");
    assert_eq!(c.pay(&chk.id(), "tok_visa", "x1").await.status, 500);
    app.state.kernel.failpoints.disable("checkout.after_charge");
    // Meanwhile the checkout was ended by another path.
    app.state
        .kernel
        .db
        .execute_write(
            sqlx::query("UPDATE checkouts SET status = 'failed' WHERE id = $1").bind(chk.id()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.clock.advance(Duration::from_secs(31));
    app.state
        .checkout
        .recover_stuck()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reference = format!("{}:pay:1", chk.id());
    let refunded: i64 = app
        .gateway
        .charges_for(&reference)
        .iter()
        .map(|c| c.amount_refunded)
        .sum();
    let captured: i64 = app
        .gateway
        .charges_for(&reference)
        .iter()
        .filter(|c| c.captured)
        .map(|c| c.amount)
        .sum();
    assert!(captured > 0);
    assert_eq!(
        refunded, captured,
        "a full refund, never a capture without an order"
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM orders WHERE checkout_id = $1",
            &chk.id()
        )
        .await,
        0
    );
}

#[tokio::test]
async fn an_expired_checkout_answers_409_and_its_stock_is_released() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "exp").await;
    admin.set_stock(&sku, &de, 4).await;
    let (c, chk) = checkout_for(&app, &sku, 4).await;
    assert_eq!(level(&admin, &sku).await["reserved"], 4);
    app.clock.advance(Duration::from_secs(901));
    app.state
        .checkout
        .expire_due()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        level(&admin, &sku).await["reserved"],
        0,
        "released by the sweeper"
    );
    let r = c.pay(&chk.id(), "tok_visa", "late").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "checkout_expired");
    assert!(app.gateway.charges().is_empty());
}

#[tokio::test]
async fn checkout_input_errors_are_clear_and_change_nothing() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "bad").await;
    admin.set_stock(&sku, &de, 1).await;
    let c = app.customer().await;
    let cart = c.create_cart().await.id();
    let r = c.checkout(&cart, sample_address()).await;
    assert_eq!(r.code(), "cart_empty");
    c.add_to_cart(&cart, &sku, 1).await;
    let r = c
        .post(
            "/checkouts",
            json!({"cart_id": cart, "shipping_address": sample_address(), "coupon_code": "SAVE10"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "coupon_invalid");
    let r = c.post("/checkouts", json!({"cart_id": cart})).await;
    assert_eq!(r.status, 422);
    let mut addr = sample_address();
    addr["country"] = json!("XX");
    let r = c
        .post(
            "/checkouts",
            json!({"cart_id": cart, "shipping_address": addr, "shipping_method": "teleport"}),
        )
        .await;
    assert_eq!(r.status, 422);
    admin.set_stock(&sku, &de, 0).await;
    let r = c.checkout(&cart, sample_address()).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "insufficient_stock");
    assert_eq!(r.body["sku"], sku.as_str());
    assert_eq!(r.body["requested"], 1);
    assert_eq!(r.body["available"], 0);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM reservations WHERE sku = $1",
            &sku
        )
        .await,
        0,
        "nothing stays reserved"
    );
    admin.set_stock(&sku, &de, 1).await;
    let chk = c.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201);
    let r = c
        .post(
            &format!("/checkouts/{}/pay", chk.id()),
            json!({"payment_method": "card", "payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "idempotency_key_required");
    let r = c.pay(&chk.id(), "not-a-token", "k").await;
    assert_eq!(r.status, 422);
    assert!(app.gateway.charges().is_empty());
}

#[tokio::test]
async fn customers_cannot_see_or_pay_each_others_checkouts_and_orders() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "priv").await;
    admin.set_stock(&sku, &de, 5).await;
    let (a, chk) = checkout_for(&app, &sku, 1).await;
    let b = app.customer().await;
    assert_eq!(b.get(&format!("/checkouts/{}", chk.id())).await.status, 404);
    assert_eq!(b.pay(&chk.id(), "tok_visa", "steal").await.status, 404);
    let paid = a.pay(&chk.id(), "tok_visa", "mine").await;
    let order_id = paid.body["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(b.order(&order_id).await.status, 404);
    assert_eq!(
        b.get(&format!(
            "/payments/{}",
            paid.body["payment"]["id"].as_str().unwrap_or_default()
        ))
        .await
        .status,
        404
    );
    assert_eq!(
        b.post(
            &format!("/orders/{order_id}/cancel"),
            json!({"reason": "mine now"})
        )
        .await
        .status,
        404
    );
    assert!(!b.get("/orders").await.body.to_string().contains(&order_id));
    assert!(a.get("/orders").await.body.to_string().contains(&order_id));
    // Someone else's cart cannot be checked out either.
    let cart_b = b.create_cart().await.id();
    assert_eq!(a.checkout(&cart_b, sample_address()).await.status, 404);
}

#[tokio::test]
async fn fraud_blocks_big_orders_without_charging_and_releases_the_stock() {
    let app = spawn_app_with(|s| {
        s.fraud_block_amount = 1000;
    })
    .await;
    let (admin, sku, de, _) = stocked(&app, "fraud").await;
    admin.set_stock(&sku, &de, 5).await;
    let (c, chk) = checkout_for(&app, &sku, 2).await;
    let r = c.pay(&chk.id(), "tok_visa", "f1").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.code(), "fraud_blocked");
    assert!(app.gateway.charges().is_empty(), "nothing charged");
    assert_eq!(level(&admin, &sku).await["available"], 5, "stock released");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM outbox WHERE event_type = $1",
            "fraud.blocked"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_signed_webhook_settles_a_pending_payment_without_waiting_for_reconciliation() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "wh").await;
    admin.set_stock(&sku, &de, 2).await;
    let secret = app.gateway.webhook_secret().unwrap_or_default();
    app.gateway.clear_webhook();
    let (c, chk) = checkout_for(&app, &sku, 1).await;
    let r = c.pay(&chk.id(), "tok_timeout", "w1").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let order_id = r.body["order_id"].as_str().unwrap_or_default().to_owned();
    // The gateway's charge.succeeded arrives now (signed with the shared secret).
    let reference = format!("{}:pay:1", chk.id());
    let charge = app
        .gateway
        .charges_for(&reference)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no charge"));
    let event = serde_json::json!({"id": "evt_late_1", "type": "charge.succeeded", "created": 1,
        "data": {"object": serde_json::to_value(&charge).unwrap_or_default()}})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let sig = mercato_gateway_sim::signature_header(&secret, now, event.as_bytes());
    let r = app
        .api
        .http
        .post(format!("{}/api/v1/webhooks/gateway", app.address))
        .header("mercato-signature", sig)
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(c.order(&order_id).await.body["status"], "confirmed");
    assert_eq!(app.gateway.captured_count(&reference), 1);
}

#[tokio::test]
async fn reconciliation_turns_a_capture_without_an_order_into_its_order() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "orph").await;
    admin.set_stock(&sku, &de, 2).await;
    let (c, chk) = checkout_for(&app, &sku, 1).await;
    app.state.kernel.failpoints.enable("checkout.after_charge");
    assert_eq!(c.pay(&chk.id(), "tok_visa", "o1").await.status, 500);
    app.state.kernel.failpoints.disable("checkout.after_charge");
    // The capture got recorded (as a webhook or an operator would) but no order was made.
    let reference = format!("{}:pay:1", chk.id());
    let charge = app
        .gateway
        .charges_for(&reference)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no charge"));
    app.state.kernel.db.execute_write(sqlx::query("UPDATE payments SET status = 'captured', captured = amount, gateway_ref = $1 WHERE checkout_id = $2")
        .bind(&charge.id)
        .bind(chk.id()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.clock.advance(Duration::from_secs(31));
    app.state
        .checkout
        .reconcile()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, order_id): (String, String) =
        sqlx::query_as("SELECT status, id FROM orders WHERE checkout_id = $1")
            .bind(chk.id())
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, "confirmed");
    let linked: Option<String> =
        sqlx::query_scalar("SELECT order_id FROM payments WHERE checkout_id = $1")
            .bind(chk.id())
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(linked.as_deref(), Some(order_id.as_str()));
    assert_eq!(app.gateway.captured_count(&reference), 1);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM payments WHERE status = 'captured' AND order_id IS NULL",
            ""
        )
        .await,
        0
    );
}
