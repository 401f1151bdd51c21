//! Durability under `kill -9`: the real binary as a child process, killed while purchases are
//! in flight, then started again on the same database (SQLite file, or PostgreSQL when
//! `MERCATO_TEST_POSTGRES_URL` is set). A 2xx is only ever sent after the commit that covers it
//! is durable (ADR 0005), so every acknowledged purchase must be there after the restart.

use mercato_testkit::process::{ProcessData, ServerProcess, create_user};
use mercato_testkit::{Client, sample_address, sample_product};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mercato"))
}

async fn sign_in(api: &Client, email: &str) -> Client {
    let r = api.login(email, PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.body);
    api.with_token(r.body["access_token"].as_str().unwrap_or_default())
}

/// An admin, a catalog of `skus` SKUs with ample stock, and `customers` signed-in customers.
pub async fn shop(
    api: &Client,
    skus: usize,
    customers: usize,
) -> (Client, Vec<String>, Vec<Client>) {
    let admin = sign_in(api, "admin@crash.test").await;
    let cat = admin.create_category("Crash", "crash", None).await;
    assert_eq!(cat.status, 201, "{}", cat.body);
    let wh = admin.create_warehouse("crash-gb", "GB").await;
    assert_eq!(wh.status, 201, "{}", wh.body);
    let mut list = Vec::new();
    for i in 0..skus {
        let sku = format!("CRASH-{i}");
        let p = admin
            .create_product(sample_product(
                &cat.id(),
                &format!("Crash {i}"),
                "K",
                &[(&sku, 1500)],
            ))
            .await;
        assert_eq!(p.status, 201, "{}", p.body);
        let s = admin.set_stock(&sku, &wh.id(), 100_000).await;
        assert_eq!(s.status, 200, "{}", s.body);
        list.push(sku);
    }
    let mut people = Vec::new();
    for _ in 0..customers {
        let email = crate::unique_email("crash");
        let r = api.register(&email, PASSWORD).await;
        assert_eq!(r.status, 201, "{}", r.body);
        people.push(api.with_token(r.body["access_token"].as_str().unwrap_or_default()));
    }
    (admin, list, people)
}

/// One purchase: cart, add, checkout, pay. `Ok(Some(order_id))` when the pay answered 201.
async fn purchase(c: &Client, sku: &str, key: &str) -> Result<Option<String>, String> {
    let cart = c
        .try_send(reqwest::Method::POST, "/carts", None, &[])
        .await?;
    if cart.status != 201 {
        return Ok(None);
    }
    let add = c
        .try_send(
            reqwest::Method::POST,
            &format!("/carts/{}/items", cart.id()),
            Some(&json!({"sku": sku, "quantity": 1})),
            &[],
        )
        .await?;
    if add.status != 200 {
        return Ok(None);
    }
    let chk = c
        .try_send(
            reqwest::Method::POST,
            "/checkouts",
            Some(&json!({"cart_id": cart.id(), "shipping_address": sample_address()})),
            &[],
        )
        .await?;
    if chk.status != 201 {
        return Ok(None);
    }
    let pay = c
        .try_send(
            reqwest::Method::POST,
            &format!("/checkouts/{}/pay", chk.id()),
            Some(&json!({"payment_method": "card", "payment_token": "tok_visa"})),
            &[("idempotency-key", key)],
        )
        .await?;
    Ok((pay.status == 201).then(|| pay.body["order_id"].as_str().unwrap_or_default().to_owned()))
}

#[tokio::test]
async fn every_purchase_acknowledged_before_a_kill_9_is_there_after_the_restart() {
    let data = ProcessData::new().await.unwrap_or_else(|e| panic!("{e:#}"));
    create_user(bin(), &data, "admin@crash.test", PASSWORD, "admin")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let server = ServerProcess::start(bin(), &data, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let (_, skus, customers) = shop(&server.api, 4, 16).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (w, c) in customers.into_iter().enumerate() {
        let (acked, count, stop, sku) = (
            acked.clone(),
            count.clone(),
            stop.clone(),
            skus[w % skus.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                match purchase(&c, &sku, &format!("crash-{w}-{i}")).await {
                    Ok(Some(order)) => {
                        if let Ok(mut a) = acked.lock() {
                            a.push(order);
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(None) => {}
                    // The server is gone.
                    Err(_) => break,
                }
            }
        }));
    }
    // Kill as soon as enough purchases were acknowledged: the newest acknowledgements are
    // microseconds old, and other purchases are in flight.
    for _ in 0..6000 {
        if count.load(Ordering::SeqCst) >= 48 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let acked: Vec<String> = acked.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        acked.len() >= 48,
        "only {} purchases before the kill",
        acked.len()
    );

    let server = ServerProcess::start(bin(), &data, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let admin = sign_in(&server.api, "admin@crash.test").await;
    let mut missing = Vec::new();
    for id in &acked {
        let o = admin.order(id).await;
        if o.status != 200 || o.body["status"] != "confirmed" {
            missing.push((id.clone(), o.status, o.body["status"].clone()));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged orders lost or changed after kill -9: {missing:?}",
        missing.len(),
        acked.len()
    );
}

/// Issue 16: a pay in flight when the server is killed, retried with the same
/// `Idempotency-Key` after the restart, converges to what the gateway did — 201 with the order
/// it paid for (or 402 when the charge never reached the gateway) — within the saga recovery
/// threshold, and is never charged twice. The gateway is its own peer here (a real HTTP
/// simulator outside the killed process), as a real gateway would be.
#[tokio::test]
async fn a_pay_retried_after_a_kill_9_gets_the_order_it_paid_for() {
    let sim = mercato_gateway_sim::GatewaySim::start(mercato_gateway_sim::SimConfig {
        latency: Duration::from_millis(400),
        ..mercato_gateway_sim::SimConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let gateway_url = sim.base_url();
    let env = [
        ("MERCATO_GATEWAY_URL", gateway_url.as_str()),
        ("MERCATO_GATEWAY_WEBHOOK_SECRET", "whsec_crash_test"),
    ];
    let data = ProcessData::new().await.unwrap_or_else(|e| panic!("{e:#}"));
    create_user(bin(), &data, "admin@crash.test", PASSWORD, "admin")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let server = ServerProcess::start(bin(), &data, &env).unwrap_or_else(|e| panic!("{e:#}"));
    let (_, skus, customers) = shop(&server.api, 2, 16).await;
    // Open checkouts, then pay them all at once and kill the server while the charges are
    // at the (slow) gateway.
    let mut pays = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        let cart = c.create_cart().await;
        assert_eq!(cart.status, 201, "{}", cart.body);
        let r = c.add_to_cart(&cart.id(), &skus[i % skus.len()], 1).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let chk = c.checkout(&cart.id(), sample_address()).await;
        assert_eq!(chk.status, 201, "{}", chk.body);
        pays.push((
            c.token.clone().unwrap_or_default(),
            chk.id(),
            format!("k-{i}"),
        ));
    }
    let body = json!({"payment_method": "card", "payment_token": "tok_visa"});
    let mut inflight = Vec::new();
    for (token, chk, key) in pays.clone() {
        let c = server.api.with_token(&token);
        let body = body.clone();
        inflight.push(tokio::spawn(async move {
            c.try_send(
                reqwest::Method::POST,
                &format!("/checkouts/{chk}/pay"),
                Some(&body),
                &[("idempotency-key", &key)],
            )
            .await
            .map(|r| r.status)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill9();
    let mut answered_before_kill = 0;
    for t in inflight {
        if matches!(t.await, Ok(Ok(201))) {
            answered_before_kill += 1;
        }
    }

    let started = std::time::Instant::now();
    let server = ServerProcess::start(bin(), &data, &env).unwrap_or_else(|e| panic!("{e:#}"));
    let mut outcomes = Vec::new();
    for (token, chk, key) in &pays {
        let c = server.api.with_token(token);
        let outcome = loop {
            let r = c
                .try_send(
                    reqwest::Method::POST,
                    &format!("/checkouts/{chk}/pay"),
                    Some(&body),
                    &[("idempotency-key", key)],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if r.status == 201 || r.status == 402 {
                break r;
            }
            assert!(
                r.status == 409 || r.status == 202,
                "a retry answers the outcome or asks to retry: {} {}",
                r.status,
                r.body
            );
            assert!(
                r.code() != "checkout_not_open",
                "a retry is never refused for the checkout's own state: {}",
                r.body
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the retry did not converge within the saga recovery threshold: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let reference = format!("{chk}:pay:1");
        if outcome.status == 201 {
            let order = outcome.body["order_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let o = c.order(&order).await;
            assert_eq!(o.status, 200, "{}", o.body);
            assert_eq!(o.body["status"], "confirmed", "{}", o.body);
            assert_eq!(o.body["checkout_id"], chk.as_str(), "{}", o.body);
            assert_eq!(sim.captured_count(&reference), 1, "charged exactly once");
            // The same key keeps answering the same order.
            let again = c
                .try_send(
                    reqwest::Method::POST,
                    &format!("/checkouts/{chk}/pay"),
                    Some(&body),
                    &[("idempotency-key", key)],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(again.status, 201, "{}", again.body);
            assert_eq!(again.body["order_id"], order.as_str());
        } else {
            assert_eq!(
                sim.captured_count(&reference),
                0,
                "402 only when nothing was charged: {}",
                outcome.body
            );
        }
        outcomes.push(outcome.status);
    }
    let paid = outcomes.iter().filter(|s| **s == 201).count();
    assert!(
        paid >= answered_before_kill,
        "{paid} paid after the restart, {answered_before_kill} answered before the kill"
    );
    assert_eq!(
        sim.charges().iter().filter(|c| c.captured).count(),
        paid,
        "every charge has exactly one order"
    );
}

/// Issue 16: a storm of 200 concurrent logins with production-size argon2 parameters keeps
/// the server's memory bounded (one reused buffer per hashing thread) and its other requests
/// answering.
#[tokio::test]
async fn a_login_storm_keeps_memory_bounded_and_other_requests_answering() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc to read the server's memory from");
        return;
    }
    let data = ProcessData::new().await.unwrap_or_else(|e| panic!("{e:#}"));
    let env = [
        ("MERCATO_PASSWORD_HASH_MEMORY_KIB", "19456"),
        ("MERCATO_PASSWORD_HASH_ITERATIONS", "1"),
    ];
    let server = ServerProcess::start(bin(), &data, &env).unwrap_or_else(|e| panic!("{e:#}"));
    let api = server.api.clone();
    let mut emails = Vec::new();
    let mut regs = Vec::new();
    for _ in 0..200 {
        let email = crate::unique_email("storm");
        emails.push(email.clone());
        let api = api.clone();
        regs.push(tokio::spawn(async move {
            api.register(&email, PASSWORD).await.status
        }));
    }
    for r in regs {
        let status = r.await.unwrap_or(0);
        assert!(status == 201 || status == 503, "register answered {status}");
    }
    let idle = server.rss_kib().unwrap_or(0);
    let mut logins = Vec::new();
    for email in emails {
        let api = api.clone();
        logins.push(tokio::spawn(async move {
            api.login(&email, PASSWORD).await.status
        }));
    }
    // Meanwhile the rest of the API answers.
    let mut peak = idle;
    let mut slowest = Duration::ZERO;
    while !logins.iter().all(|l| l.is_finished()) {
        let t = std::time::Instant::now();
        let r = api.get("/products").await;
        assert_eq!(r.status, 200, "{}", r.body);
        slowest = slowest.max(t.elapsed());
        peak = peak.max(server.rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ok = 0;
    for l in logins {
        match l.await.unwrap_or(0) {
            200 => ok += 1,
            503 => {}
            other => panic!("login answered {other}"),
        }
    }
    assert!(ok > 0, "some logins went through");
    assert!(
        peak < 200 * 1024,
        "RSS peaked at {} MiB during the storm (idle {} MiB)",
        peak / 1024,
        idle / 1024
    );
    assert!(
        slowest < Duration::from_secs(2),
        "other requests waited {slowest:?} during the storm"
    );
}
