//! Flash sales (API.md "Flash sales"): the admin input and its 422s, units set aside and given
//! back, the waiting room (same ticket twice, shuffle of early joiners, 1 poll/s), purchase
//! tokens (single use, expiry, bound to their customer), the SKU sold only with a token while
//! the sale is live, and 500 customers racing for 50 units: exactly 50 sold, none oversold.

use crate::inventory::stocked;
use mercato_kernel::clock::Clock;
use mercato_testkit::{Client, TestApp, TestResponse, sample_address};
use serde_json::{Value, json};
use std::time::Duration;

fn at(app: &TestApp, secs: i64) -> String {
    app.clock.now().plus_secs(secs).to_rfc3339()
}

fn sale_body(app: &TestApp, sku: &str, units: i64, starts_in: i64) -> Value {
    json!({
        "sku": sku, "price": {"amount": 500, "currency": "USD"}, "units": units,
        "starts_at": at(app, starts_in), "ends_at": at(app, 3600),
        "admit_per_minute": 600_000, "token_ttl_secs": 300
    })
}

async fn create_sale(admin: &Client, body: Value) -> String {
    let r = admin.post("/admin/flash-sales", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.id()
}

async fn join(c: &Client, sale: &str) -> TestResponse {
    c.post(&format!("/flash-sales/{sale}/queue"), json!({}))
        .await
}

async fn poll(c: &Client, sale: &str, ticket: &str) -> TestResponse {
    c.get(&format!("/flash-sales/{sale}/queue/{ticket}")).await
}

async fn start(app: &TestApp, secs: u64) {
    app.clock.advance(Duration::from_secs(secs));
    if let Err(e) = app.state.flash_sales.tick().await {
        panic!("tick: {e:#}");
    }
}

async fn add_with_token(c: &Client, cart: &str, sku: &str, q: i64, token: &str) -> TestResponse {
    c.post(
        &format!("/carts/{cart}/items"),
        json!({"sku": sku, "quantity": q, "purchase_token": token}),
    )
    .await
}

/// A customer admitted with a token: (client, ticket, token).
async fn admitted(app: &TestApp, sale: &str) -> (Client, String, String) {
    let c = app.customer().await;
    let t = join(&c, sale).await;
    assert_eq!(t.status, 202, "{}", t.body);
    let ticket = t.body["ticket"].as_str().unwrap_or_default().to_owned();
    let p = poll(&c, sale, &ticket).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["status"], "admitted", "{}", p.body);
    let token = p.body["purchase_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (c, ticket, token)
}

async fn buy(c: &Client, sku: &str, q: i64, token: &str, key: &str) -> TestResponse {
    let cart = c.create_cart().await.id();
    let r = add_with_token(c, &cart, sku, q, token).await;
    if r.status != 200 {
        return r;
    }
    let chk = c.checkout(&cart, sample_address()).await;
    if chk.status != 201 {
        return chk;
    }
    c.pay(&chk.id(), "tok_visa", key).await
}

async fn counters(admin: &Client, sale: &str) -> Value {
    let r = admin.get(&format!("/admin/flash-sales/{sale}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn a_sale_sets_its_units_aside_and_bad_input_answers_422_with_the_field() {
    let app = mercato_testkit::spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "fsa").await;
    admin.set_stock(&sku, &de, 100).await;
    let customer = app.customer().await;

    // Authorization answers before the body is judged.
    let r = customer
        .post("/admin/flash-sales", json!({"units": -1}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    let mut bad = sale_body(&app, &sku, 0, 60);
    bad["price"] = json!({"amount": -5, "currency": "USD"});
    bad["per_customer_limit"] = json!(0);
    bad["ends_at"] = json!(at(&app, 30));
    let r = admin.post("/admin/flash-sales", bad).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for f in ["units", "price.amount", "per_customer_limit", "ends_at"] {
        assert!(fields.contains(&f), "{f} missing: {}", r.body);
    }
    let r = admin
        .post("/admin/flash-sales", sale_body(&app, "NO-SUCH-SKU", 5, 60))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errors"][0]["field"], "sku");
    let r = admin
        .post("/admin/flash-sales", sale_body(&app, &sku, 101, 60))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "insufficient_stock"),
        "{}",
        r.body
    );
    assert_eq!(r.body["available"], 100);

    let id = create_sale(&admin, sale_body(&app, &sku, 30, 60)).await;
    assert!(id.starts_with("fls_"), "{id}");
    let stock = admin.stock(&sku).await.body;
    assert_eq!(stock["reserved"], 30, "{stock}");
    let r = admin
        .post("/admin/flash-sales", sale_body(&app, &sku, 5, 120))
        .await;
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);

    let public = app.api.get(&format!("/flash-sales/{id}")).await;
    assert_eq!(public.status, 200, "{}", public.body);
    assert_eq!(public.body["status"], "scheduled");
    assert_eq!(public.body["remaining"], 30);
    assert_eq!(
        public.body["price"],
        json!({"amount": 500, "currency": "USD"})
    );
    assert_eq!(app.api.get("/flash-sales/fls_nope").await.status, 404);
    assert_eq!(app.api.get("/flash-sales/garbage").await.status, 404);
    let list = admin.get("/admin/flash-sales").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["data"][0]["id"], id.as_str());

    // Before the start the SKU sells normally from the stock not set aside.
    let cart = customer.create_cart().await.id();
    let r = customer.add_to_cart(&cart, &sku, 2).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Guests and anonymous callers cannot queue.
    assert_eq!(join(&app.api, &id).await.status, 401);
    // Live: the same line now needs a token, at the cart and at checkout.
    start(&app, 61).await;
    let public = app.api.get(&format!("/flash-sales/{id}")).await;
    assert_eq!(public.body["status"], "live", "{}", public.body);
    let view = customer.cart(&cart).await;
    assert!(
        view.body["warnings"]
            .to_string()
            .contains("purchase_token_required"),
        "{}",
        view.body
    );
    let r = customer.checkout(&cart, sample_address()).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "purchase_token_required"),
        "{}",
        r.body
    );
    let r = customer.add_to_cart(&cart, &sku, 1).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.code(), "purchase_token_required");
    let r = add_with_token(&customer, &cart, &sku, 1, "pt_forged.c2lnbmF0dXJl").await;
    assert_eq!(
        (r.status, r.code()),
        (403, "purchase_token_invalid"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn five_hundred_customers_race_for_fifty_units_and_exactly_fifty_are_sold() {
    let app = mercato_testkit::spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "fsr").await;
    admin.set_stock(&sku, &de, 80).await;
    let sale = create_sale(&admin, sale_body(&app, &sku, 50, 30)).await;
    let mut customers = Vec::new();
    for _ in 0..500 {
        customers.push(app.customer().await);
    }
    // Everyone joins before the start, at once.
    let mut tasks = Vec::new();
    for c in customers {
        let sale = sale.clone();
        tasks.push(tokio::spawn(async move {
            let r = join(&c, &sale).await;
            assert_eq!(r.status, 202, "{}", r.body);
            let again = join(&c, &sale).await;
            assert_eq!(again.body["ticket"], r.body["ticket"], "same ticket twice");
            let ticket = r.body["ticket"].as_str().unwrap_or_default().to_owned();
            (c, ticket)
        }));
    }
    let mut joined = Vec::new();
    for t in tasks {
        joined.push(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(counters(&admin, &sale).await["queued"], 500);
    start(&app, 31).await;
    // Everyone is admitted (600,000 a minute) and polls at once; then buys with its token.
    let mut tasks = Vec::new();
    for (i, (c, ticket)) in joined.into_iter().enumerate() {
        let (sale, sku) = (sale.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            let p = poll(&c, &sale, &ticket).await;
            assert_eq!(p.status, 200, "{}", p.body);
            match p.body["status"].as_str() {
                Some("admitted") => {}
                Some("sold_out") => {
                    // Nobody buys without a token.
                    let cart = c.create_cart().await.id();
                    let r = c.add_to_cart(&cart, &sku, 1).await;
                    assert_eq!(r.code(), "purchase_token_required", "{}", r.body);
                    return (false, false);
                }
                other => panic!("unexpected ticket status {other:?}: {}", p.body),
            }
            let token = p.body["purchase_token"].as_str().unwrap_or_default();
            let r = buy(&c, &sku, 1, token, &format!("fs-{i}")).await;
            assert_eq!(r.status, 201, "{}", r.body);
            (true, true)
        }));
    }
    let (mut tokens, mut paid) = (0, 0);
    for t in tasks {
        let (got, bought) = t.await.unwrap_or_else(|e| panic!("{e}"));
        tokens += i64::from(got);
        paid += i64::from(bought);
    }
    assert_eq!((tokens, paid), (50, 50));
    let c = counters(&admin, &sale).await;
    assert_eq!(c["sold"], 50, "{c}");
    assert_eq!(c["tokens_issued"], 50, "{c}");
    assert_eq!(c["tokens_redeemed"], 50, "{c}");
    assert_eq!(c["remaining"], 0, "{c}");
    assert_eq!(c["status"], "sold_out", "{c}");
    let ordered: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM order_items WHERE sku = $1",
    )
    .bind(&sku)
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or(-1);
    assert_eq!(ordered, 50, "0 oversold");
    let stock = admin.stock(&sku).await.body;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(30), Some(0)),
        "{stock}"
    );
    let paid_at_sale_price: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM order_items WHERE sku = $1 AND unit_price = $2")
            .bind(&sku)
            .bind(500_i64)
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or(-1);
    assert_eq!(paid_at_sale_price, 50);
}

#[tokio::test]
async fn a_token_is_bound_to_its_customer_used_once_and_expires() {
    let app = mercato_testkit::spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "fst").await;
    admin.set_stock(&sku, &de, 20).await;
    let mut body = sale_body(&app, &sku, 5, 1);
    body["per_customer_limit"] = json!(2);
    body["token_ttl_secs"] = json!(60);
    let sale = create_sale(&admin, body).await;
    start(&app, 2).await;

    let (a, _, token) = admitted(&app, &sale).await;
    let cart = a.create_cart().await.id();
    let r = add_with_token(&a, &cart, &sku, 3, &token).await;
    assert_eq!(r.status, 422, "over the token's units: {}", r.body);
    let r = add_with_token(&a, &cart, &sku, 2, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["items"][0]["unit_price"]["amount"], 500,
        "{}",
        r.body
    );
    // Someone else's token is refused.
    let b = app.customer().await;
    let bcart = b.create_cart().await.id();
    let r = add_with_token(&b, &bcart, &sku, 1, &token).await;
    assert_eq!(r.code(), "purchase_token_invalid", "{}", r.body);
    // A declined payment gives the token back; the retry buys.
    let chk = a.checkout(&cart, sample_address()).await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    assert_eq!(chk.body["subtotal"]["amount"], 1000, "{}", chk.body);
    let r = a.pay(&chk.id(), "tok_chargeDeclined", "fst-d").await;
    assert_eq!(r.status, 402, "{}", r.body);
    // The cart is still active; a new checkout of it holds the token again.
    let chk = a.checkout(&cart, sample_address()).await;
    assert_eq!(
        chk.status, 201,
        "the token lives on after a decline: {}",
        chk.body
    );
    let r = a.pay(&chk.id(), "tok_visa", "fst-p").await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Used: never again.
    let cart3 = a.create_cart().await.id();
    let r = add_with_token(&a, &cart3, &sku, 1, &token).await;
    assert_eq!(r.code(), "purchase_token_invalid", "{}", r.body);

    // An unused token expires and its units go back to the room.
    let (c, ticket, ctoken) = admitted(&app, &sale).await;
    let before = counters(&admin, &sale).await;
    assert_eq!(before["remaining"], 1, "{before}");
    start(&app, 61).await;
    let ccart = c.create_cart().await.id();
    let r = add_with_token(&c, &ccart, &sku, 1, &ctoken).await;
    assert_eq!(r.code(), "purchase_token_expired", "{}", r.body);
    let p = poll(&c, &sale, &ticket).await;
    assert_eq!(p.body["status"], "expired", "{}", p.body);
    let after = counters(&admin, &sale).await;
    assert_eq!(after["tokens_issued"], 2, "{after}");
    assert_eq!(after["tokens_redeemed"], 1, "{after}");
    assert_eq!(after["tokens_expired"], 1, "{after}");
    assert_eq!(after["sold"], 2, "{after}");
    assert_eq!(after["remaining"], 3, "{after}");
}

#[tokio::test]
async fn polling_faster_than_once_a_second_answers_429_with_retry_after() {
    let app = mercato_testkit::spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "fsp").await;
    admin.set_stock(&sku, &de, 10).await;
    let mut body = sale_body(&app, &sku, 5, 600);
    body["admit_per_minute"] = json!(1);
    let sale = create_sale(&admin, body).await;
    let c = app.customer().await;
    let t = join(&c, &sale).await;
    assert_eq!(t.status, 202, "{}", t.body);
    assert_eq!(t.body["position"], 1);
    assert!(
        t.body["estimated_wait_secs"].as_i64().unwrap_or(0) >= 600,
        "{}",
        t.body
    );
    let ticket = t.body["ticket"].as_str().unwrap_or_default().to_owned();
    let p = poll(&c, &sale, &ticket).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["status"], "waiting");
    let p = poll(&c, &sale, &ticket).await;
    assert_eq!((p.status, p.code()), (429, "rate_limited"), "{}", p.body);
    assert!(p.header("retry-after").is_some());
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(poll(&c, &sale, &ticket).await.status, 200);
    // Another customer's ticket is not yours.
    let other = app.customer().await;
    assert_eq!(poll(&other, &sale, &ticket).await.status, 404);
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(poll(&other, &sale, "tkt_nope").await.status, 404);
}

/// Spearman's rank correlation of the join order with the position after the start.
fn spearman(positions: &[i64]) -> f64 {
    let n = positions.len() as f64;
    let d2: f64 = positions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let d = (i as f64 + 1.0) - *p as f64;
            d * d
        })
        .sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[tokio::test]
async fn early_joiners_are_shuffled_at_the_start_and_late_ones_queue_in_order() {
    let app = mercato_testkit::spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "fss").await;
    admin.set_stock(&sku, &de, 10).await;
    let mut body = sale_body(&app, &sku, 5, 30);
    body["admit_per_minute"] = json!(1);
    let sale = create_sale(&admin, body).await;
    let mut early = Vec::new();
    for i in 0..80 {
        let c = app.customer().await;
        let t = join(&c, &sale).await;
        assert_eq!(
            t.body["position"],
            i + 1,
            "provisional order before the start"
        );
        early.push((c, t.body["ticket"].as_str().unwrap_or_default().to_owned()));
    }
    start(&app, 30).await;
    let late = app.customer().await;
    let lt = join(&late, &sale).await;
    assert_eq!(
        lt.body["position"], 81,
        "a late arrival queues after the early ones"
    );
    let mut positions = Vec::new();
    for (c, ticket) in &early {
        let p = poll(c, &sale, ticket).await;
        assert_eq!(p.body["status"], "waiting", "{}", p.body);
        positions.push(p.body["position"].as_i64().unwrap_or(0));
    }
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=80).collect::<Vec<i64>>(), "a permutation");
    // Under a uniform shuffle |rho| > 0.45 has probability below 1e-4 for n = 80.
    let rho = spearman(&positions);
    assert!(
        rho.abs() < 0.45,
        "join order survived the shuffle: rho = {rho}"
    );
    assert_ne!(positions, (1..=80).collect::<Vec<i64>>());
}

#[tokio::test]
async fn when_the_sale_ends_its_unsold_units_go_back_and_the_sku_sells_normally() {
    let app = mercato_testkit::spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "fse").await;
    admin.set_stock(&sku, &de, 10).await;
    let sale = create_sale(&admin, sale_body(&app, &sku, 6, 1)).await;
    start(&app, 2).await;
    let (c, _, token) = admitted(&app, &sale).await;
    let r = buy(&c, &sku, 1, &token, "fse-1").await;
    assert_eq!(r.status, 201, "{}", r.body);
    start(&app, 3600).await;
    // An hour on, the access tokens have expired: sign in again.
    let admin = app.admin().await;
    let s = counters(&admin, &sale).await;
    assert_eq!(s["status"], "ended", "{s}");
    assert_eq!(s["sold"], 1, "{s}");
    let stock = admin.stock(&sku).await.body;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(9), Some(0)),
        "{stock}"
    );
    let ended: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE event_type = 'flash_sale.ended' AND aggregate_id = $1",
    )
    .bind(&sale)
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or(-1);
    assert_eq!(ended, 1);
    let other = app.customer().await;
    let cart = other.create_cart().await.id();
    let r = other.add_to_cart(&cart, &sku, 2).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["items"][0]["unit_price"]["amount"], 1000,
        "{}",
        r.body
    );
    // Joining an ended sale is refused.
    assert_eq!(join(&other, &sale).await.status, 409);
}
