//! The client against the real simulator on port 0, over real HTTP.

use super::*;
use mercato_gateway_sim::{GatewaySim, SimConfig, signature_header};
use mercato_kernel::Currency;
use mercato_kernel::resilience::BreakerState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn usd(amount: i64) -> Money {
    Money::new(amount, Currency::USD)
}

fn reference() -> String {
    format!("chk_{}:pay:1", mercato_kernel::id::random_hex(8))
}

async fn sim() -> GatewaySim {
    GatewaySim::start(SimConfig {
        hang: Duration::from_secs(3),
        ..SimConfig::default()
    })
    .await
    .expect("simulator")
}

/// A client with short timeouts and fast retries.
fn client(sim: &GatewaySim, configure: impl FnOnce(&mut HttpGatewayConfig)) -> HttpGateway {
    let mut config = HttpGatewayConfig::new(sim.base_url(), sim.api_key());
    config.timeout = Duration::from_millis(500);
    config.retry_base = Duration::from_millis(20);
    config.retry_max = Duration::from_millis(100);
    configure(&mut config);
    HttpGateway::new(config).expect("client")
}

fn charge_req(token: &str, reference: &str, amount: i64) -> ChargeRequest {
    ChargeRequest {
        amount: usd(amount),
        token: token.into(),
        reference: reference.into(),
        idempotency_key: reference.into(),
    }
}

fn charge_posts(sim: &GatewaySim, key: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path == "/v1/charges" && r.idempotency_key.as_deref() == Some(key))
        .count()
}

async fn captured(gw: &HttpGateway, amount: i64) -> (String, String) {
    let r = reference();
    match gw.charge(charge_req("tok_visa", &r, amount)).await {
        Ok(ChargeOutcome::Captured { charge_id, .. }) => (charge_id, r),
        other => panic!("expected a capture, got {other:?}"),
    }
}

// --- charges ---

#[tokio::test]
async fn approving_tokens_are_captured() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    for token in ["tok_visa", "tok_mastercard"] {
        let r = reference();
        let out = gw.charge(charge_req(token, &r, 2599)).await;
        let Ok(ChargeOutcome::Captured { charge_id, amount }) = out else {
            panic!("{token}: {out:?}");
        };
        assert!(charge_id.starts_with("ch_"));
        assert_eq!(amount, usd(2599));
        assert_eq!(sim.captured_count(&r), 1);
    }
    assert_eq!(gw.name(), "http");
}

#[tokio::test]
async fn declining_tokens_are_declined_with_their_code() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    for (token, code) in [
        ("tok_chargeDeclined", "card_declined"),
        ("tok_insufficientFunds", "insufficient_funds"),
        ("tok_unheardOf", "invalid_token"),
    ] {
        let r = reference();
        let out = gw.charge(charge_req(token, &r, 100)).await;
        let Ok(ChargeOutcome::Declined {
            charge_id,
            decline_code,
        }) = out
        else {
            panic!("{token}: {out:?}");
        };
        assert_eq!(decline_code, code);
        let id = charge_id.expect("the failed charge's id");
        let stored = gw.retrieve(&id).await.expect("retrieve").expect("found");
        assert_eq!(stored.status, ChargeStatus::Failed);
        assert!(!stored.is_captured());
        assert_eq!(stored.failure_code.as_deref(), Some(code));
        assert_eq!(charge_posts(&sim, &r), 1, "a decline is final: no retry");
    }
}

#[tokio::test]
async fn a_timeout_is_unknown_at_once_and_the_capture_is_then_found_by_reference() {
    let sim = sim().await; // holds tok_timeout answers for 3 s
    let gw = client(&sim, |c| c.timeout = Duration::from_millis(300));
    let r = reference();
    let started = Instant::now();
    let out = gw.charge(charge_req("tok_timeout", &r, 4200)).await;
    assert!(matches!(out, Ok(ChargeOutcome::Unknown { .. })), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the client timeout, not the hang"
    );
    assert_eq!(
        charge_posts(&sim, &r),
        1,
        "a timed-out charge is never retried"
    );
    let found = gw.find_by_reference(&r).await.expect("find");
    assert_eq!(found.len(), 1);
    assert!(found[0].is_captured());
    assert_eq!(found[0].amount, usd(4200));
    assert_eq!(found[0].reference, r);
}

#[tokio::test]
async fn a_declined_timeout_is_unknown_and_then_found_failed() {
    let sim = sim().await;
    let gw = client(&sim, |c| c.timeout = Duration::from_millis(300));
    let r = reference();
    let out = gw.charge(charge_req("tok_timeoutDeclined", &r, 4200)).await;
    assert!(matches!(out, Ok(ChargeOutcome::Unknown { .. })), "{out:?}");
    let found = gw.find_by_reference(&r).await.expect("find");
    assert!(found.iter().all(|c| !c.is_captured()), "nothing captured");
    assert!(found.iter().all(|c| c.status == ChargeStatus::Failed));
    assert!(
        gw.find_by_reference("chk_never:pay:1")
            .await
            .expect("find")
            .is_empty()
    );
}

#[tokio::test]
async fn paying_twice_with_the_same_key_charges_once() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    let r = reference();
    let first = gw
        .charge(charge_req("tok_visa", &r, 700))
        .await
        .expect("first");
    let second = gw
        .charge(charge_req("tok_visa", &r, 700))
        .await
        .expect("second");
    assert_eq!(first, second);
    assert_eq!(sim.charges_for(&r).len(), 1);
}

#[tokio::test]
async fn the_same_key_with_another_amount_is_unknown_and_charges_nothing_more() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    let r = reference();
    let first = gw.charge(charge_req("tok_visa", &r, 700)).await;
    assert!(matches!(first, Ok(ChargeOutcome::Captured { .. })));
    let other = gw.charge(charge_req("tok_visa", &r, 800)).await;
    assert!(
        matches!(other, Ok(ChargeOutcome::Unknown { .. })),
        "{other:?}"
    );
    assert_eq!(sim.charges_for(&r).len(), 1);
}

#[tokio::test]
async fn concurrent_charges_with_one_key_charge_once() {
    let sim = sim().await;
    sim.set_latency(Duration::from_millis(100));
    let gw = Arc::new(client(&sim, |c| {
        c.max_attempts = 6;
        c.retry_base = Duration::from_millis(50);
        c.retry_max = Duration::from_millis(200);
    }));
    let r = reference();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let gw = gw.clone();
            let req = charge_req("tok_visa", &r, 1500);
            tokio::spawn(async move { gw.charge(req).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(ChargeOutcome::Captured { charge_id, .. }) => ids.push(charge_id),
            // Allowed: a racer that ran out of attempts while the first was in flight.
            Ok(ChargeOutcome::Unknown { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| *id == ids[0]), "one charge id: {ids:?}");
    assert_eq!(sim.charges_for(&r).len(), 1);
    assert_eq!(sim.captured_count(&r), 1);
}

// --- failures, retries, breaker ---

#[tokio::test]
async fn injected_failures_are_retried_with_the_same_key_until_the_charge_succeeds() {
    let sim = sim().await;
    let gw = client(&sim, |c| c.max_attempts = 3);
    sim.fail_next(2);
    let r = reference();
    let out = gw.charge(charge_req("tok_visa", &r, 900)).await;
    assert!(matches!(out, Ok(ChargeOutcome::Captured { .. })), "{out:?}");
    let posts: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|q| q.path == "/v1/charges")
        .collect();
    assert_eq!(posts.len(), 3);
    assert!(
        posts
            .iter()
            .all(|q| q.idempotency_key.as_deref() == Some(r.as_str()))
    );
    assert_eq!(
        posts.iter().map(|q| q.status).collect::<Vec<_>>(),
        vec![Some(500), Some(500), Some(200)]
    );
    assert_eq!(sim.captured_count(&r), 1);
}

#[tokio::test]
async fn reads_are_retried_after_a_server_error() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    let (id, r) = captured(&gw, 100).await;
    sim.fail_next(2);
    let found = gw.find_by_reference(&r).await.expect("find");
    assert_eq!(found.len(), 1);
    sim.fail_next(1);
    assert!(gw.retrieve(&id).await.expect("retrieve").is_some());
}

#[tokio::test]
async fn persistent_failures_end_unknown_then_the_breaker_opens_and_fails_fast() {
    let sim = sim().await;
    let gw = client(&sim, |c| {
        c.max_attempts = 2;
        c.breaker_threshold = 3;
        c.breaker_cool_down = Duration::from_millis(300);
    });
    sim.set_failure_rate(1.0);
    // Two 500s: the gateway may have done something, so the outcome is unknown.
    let first = gw.charge(charge_req("tok_visa", &reference(), 100)).await;
    assert!(
        matches!(first, Ok(ChargeOutcome::Unknown { .. })),
        "{first:?}"
    );
    // The third failure opens the breaker in the middle of this call's retries.
    let second = gw.charge(charge_req("tok_visa", &reference(), 100)).await;
    assert!(
        matches!(second, Ok(ChargeOutcome::Unknown { .. })),
        "{second:?}"
    );
    assert_eq!(gw.breaker_state(), BreakerState::Open);

    let seen = sim.requests().len();
    let started = Instant::now();
    let r = reference();
    let blocked = gw.charge(charge_req("tok_visa", &r, 100)).await;
    assert!(
        matches!(blocked, Err(GatewayError::Unavailable { .. })),
        "{blocked:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(250), "fails fast");
    assert!(matches!(
        gw.find_by_reference(&r).await,
        Err(GatewayError::Unavailable { .. })
    ));
    assert_eq!(sim.requests().len(), seen, "nothing reached the gateway");

    // After the cool-down one trial call goes through; its success closes the breaker.
    sim.set_failure_rate(0.0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(gw.breaker_state(), BreakerState::HalfOpen);
    let trial = gw.charge(charge_req("tok_visa", &r, 100)).await;
    assert!(
        matches!(trial, Ok(ChargeOutcome::Captured { .. })),
        "{trial:?}"
    );
    assert_eq!(gw.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn an_unreachable_gateway_is_unavailable_and_nothing_was_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut config = HttpGatewayConfig::new(format!("http://{addr}"), "sk_test_mercato");
    config.retry_base = Duration::from_millis(10);
    config.retry_max = Duration::from_millis(20);
    let gw = HttpGateway::new(config).expect("client");
    let out = gw.charge(charge_req("tok_visa", &reference(), 100)).await;
    assert!(
        matches!(out, Err(GatewayError::Unavailable { .. })),
        "{out:?}"
    );
    let refund = gw
        .refund(RefundRequest {
            charge_id: "ch_x".into(),
            amount: usd(1),
            idempotency_key: "r".into(),
            reference: "ref_x".into(),
        })
        .await;
    assert!(
        matches!(refund, Err(GatewayError::Unavailable { .. })),
        "{refund:?}"
    );
}

#[tokio::test]
async fn a_connection_lost_after_sending_is_unknown_and_not_retried() {
    // A peer that reads the request and hangs up without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(Mutex::new(0usize));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            *count.lock().expect("lock") += 1;
            let mut buf = vec![0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
            drop(socket);
        }
    });
    let gw = HttpGateway::new(HttpGatewayConfig::new(
        format!("http://{addr}"),
        "sk_test_mercato",
    ))
    .expect("client");
    let out = gw.charge(charge_req("tok_visa", &reference(), 100)).await;
    assert!(matches!(out, Ok(ChargeOutcome::Unknown { .. })), "{out:?}");
    assert_eq!(*accepted.lock().expect("lock"), 1);
}

#[tokio::test]
async fn a_wrong_api_key_is_rejected() {
    let sim = sim().await;
    let gw = client(&sim, |c| c.api_key = "sk_test_wrong".into());
    let out = gw.charge(charge_req("tok_visa", &reference(), 100)).await;
    assert!(
        matches!(out, Err(GatewayError::Rejected { status: 401, .. })),
        "{out:?}"
    );
    assert!(sim.charges().is_empty());
}

// --- refunds and reads ---

fn refund_req(charge_id: &str, amount: i64, key: &str) -> RefundRequest {
    RefundRequest {
        charge_id: charge_id.into(),
        amount: usd(amount),
        idempotency_key: key.into(),
        reference: format!("ref_{key}"),
    }
}

#[tokio::test]
async fn partial_refunds_never_exceed_the_capture_and_are_idempotent() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    let (charge, r) = captured(&gw, 1000).await;
    let first = gw
        .refund(refund_req(&charge, 300, "a"))
        .await
        .expect("refund");
    let RefundOutcome::Refunded { refund_id, amount } = &first else {
        panic!("{first:?}");
    };
    assert!(refund_id.starts_with("re_"));
    assert_eq!(*amount, usd(300));
    // The same key again: the same refund, not a second one.
    let again = gw
        .refund(refund_req(&charge, 300, "a"))
        .await
        .expect("again");
    assert_eq!(again, first);
    let too_much = gw.refund(refund_req(&charge, 701, "b")).await.expect("b");
    assert_eq!(
        too_much,
        RefundOutcome::Rejected {
            code: "amount_too_large".into()
        }
    );
    let rest = gw.refund(refund_req(&charge, 700, "c")).await.expect("c");
    assert!(matches!(rest, RefundOutcome::Refunded { .. }));
    let over = gw.refund(refund_req(&charge, 1, "d")).await.expect("d");
    assert!(matches!(over, RefundOutcome::Rejected { .. }), "{over:?}");

    let c = gw
        .retrieve(&charge)
        .await
        .expect("retrieve")
        .expect("found");
    assert_eq!(c.amount_refunded, usd(1000));
    assert_eq!(c.refunds.len(), 2);
    assert_eq!(c.refunds[0].reference.as_deref(), Some("ref_a"));
    assert_eq!(
        sim.refunds_for(&r).iter().map(|x| x.amount).sum::<i64>(),
        1000
    );
}

#[tokio::test]
async fn refunds_of_failed_or_unknown_charges_are_rejected() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    let r = reference();
    let Ok(ChargeOutcome::Declined {
        charge_id: Some(failed),
        ..
    }) = gw.charge(charge_req("tok_chargeDeclined", &r, 100)).await
    else {
        panic!("expected a decline");
    };
    assert_eq!(
        gw.refund(refund_req(&failed, 100, "x")).await,
        Ok(RefundOutcome::Rejected {
            code: "charge_not_captured".into()
        })
    );
    assert_eq!(
        gw.refund(refund_req("ch_missing", 100, "y")).await,
        Ok(RefundOutcome::Rejected {
            code: "resource_missing".into()
        })
    );
    assert!(sim.refunds().is_empty());
}

#[tokio::test]
async fn retrieve_and_find_read_what_the_gateway_recorded() {
    let sim = sim().await;
    let gw = client(&sim, |_| {});
    let r = reference();
    let Ok(ChargeOutcome::Declined {
        charge_id: Some(failed),
        ..
    }) = gw.charge(charge_req("tok_chargeDeclined", &r, 100)).await
    else {
        panic!("expected a decline");
    };
    let mut retry = charge_req("tok_visa", &r, 100);
    retry.idempotency_key = format!("{r}-2");
    let Ok(ChargeOutcome::Captured { charge_id: ok, .. }) = gw.charge(retry).await else {
        panic!("expected a capture");
    };
    let found = gw.find_by_reference(&r).await.expect("find");
    assert_eq!(
        found.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![ok.as_str(), failed.as_str()],
        "newest first"
    );
    let c = gw.retrieve(&ok).await.expect("retrieve").expect("found");
    assert!(c.is_captured());
    assert_eq!(c.amount_refunded, usd(0));
    assert!(c.created.as_unix_secs() > 1_600_000_000);
    assert_eq!(gw.retrieve("ch_nope").await, Ok(None));
    // Odd ids and references are encoded, not spliced into the URL.
    assert_eq!(gw.retrieve("ch_a/../b?c").await, Ok(None));
    assert!(
        gw.find_by_reference("a&reference=b#c")
            .await
            .expect("find")
            .is_empty()
    );
}

// --- webhooks ---

const SECRET: &str = "whsec_unit_test";

fn now() -> Timestamp {
    mercato_kernel::clock::Clock::now(&mercato_kernel::clock::SystemClock)
}

fn sample_event() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "evt_1", "object": "event", "type": "charge.succeeded", "created": 1_700_000_000,
        "data": {"object": {
            "id": "ch_1", "object": "charge", "amount": 1999, "currency": "usd",
            "status": "succeeded", "captured": true, "paid": true, "reference": "chk_1:pay:1",
            "amount_refunded": 0, "failure_code": null, "created": 1_700_000_000, "refunds": [],
            "some_future_field": {"ignored": true}
        }}
    }))
    .expect("json")
}

#[test]
fn a_valid_signature_yields_the_typed_event() {
    let body = sample_event();
    let t = now().as_unix_secs();
    let header = signature_header(SECRET, t, &body);
    let event =
        verify_webhook(SECRET, Some(&header), &body, now(), WEBHOOK_TOLERANCE).expect("valid");
    assert_eq!(event.id, "evt_1");
    assert_eq!(event.event_type, GatewayEventType::ChargeSucceeded);
    assert_eq!(event.created.as_unix_secs(), 1_700_000_000);
    assert_eq!(event.charge.id, "ch_1");
    assert_eq!(event.charge.amount, usd(1999));
    assert_eq!(event.charge.reference, "chk_1:pay:1");
    assert!(event.charge.is_captured());
    assert_eq!(event.dispute, None);
    // Rotation: several v1 values, one of them right.
    let rotated = format!("{header},v1={}", "ab".repeat(32));
    let rotated = rotated.replacen("v1=", &format!("v1={},v1=", "cd".repeat(32)), 1);
    assert!(verify_webhook(SECRET, Some(&rotated), &body, now(), WEBHOOK_TOLERANCE).is_ok());
}

#[test]
fn forged_tampered_stale_and_garbled_signatures_are_refused() {
    let body = sample_event();
    let t = now().as_unix_secs();
    let check = |header: Option<&str>, body: &[u8]| {
        verify_webhook(SECRET, header, body, now(), WEBHOOK_TOLERANCE)
    };
    let forged = signature_header("whsec_someone_else", t, &body);
    assert_eq!(
        check(Some(&forged), &body),
        Err(WebhookError::SignatureMismatch)
    );
    let good = signature_header(SECRET, t, &body);
    let mut tampered = body.clone();
    if let Some(b) = tampered.iter_mut().find(|b| **b == b'9') {
        *b = b'8';
    }
    assert_eq!(
        check(Some(&good), &tampered),
        Err(WebhookError::SignatureMismatch)
    );
    // The timestamp is part of what is signed.
    let moved = good.replacen(&format!("t={t}"), &format!("t={}", t - 1), 1);
    assert_eq!(
        check(Some(&moved), &body),
        Err(WebhookError::SignatureMismatch)
    );

    let stale = signature_header(SECRET, t - 301, &body);
    assert!(matches!(
        check(Some(&stale), &body),
        Err(WebhookError::Stale { .. })
    ));
    let future = signature_header(SECRET, t + 301, &body);
    assert!(matches!(
        check(Some(&future), &body),
        Err(WebhookError::FromTheFuture { .. })
    ));
    let edge = signature_header(SECRET, t - 290, &body);
    assert!(check(Some(&edge), &body).is_ok(), "inside the tolerance");

    assert_eq!(check(None, &body), Err(WebhookError::MissingSignature));
    assert_eq!(check(Some(""), &body), Err(WebhookError::MissingSignature));
    for garbled in [
        "garbage",
        "t=abc,v1=00",
        "v1=0011",
        &format!("t={t}"),
        &format!("t={t},v1=zz"),
        &format!("t={t},t={t},v1=00"),
    ] {
        assert_eq!(
            check(Some(garbled), &body),
            Err(WebhookError::MalformedSignature),
            "{garbled}"
        );
    }
    // Correctly signed, but not an event.
    let junk = b"{\"hello\":1}";
    let signed_junk = signature_header(SECRET, t, junk);
    assert!(matches!(
        check(Some(&signed_junk), junk),
        Err(WebhookError::MalformedPayload(_))
    ));
}

/// Receives webhooks and verifies them exactly as Mercato's endpoint will.
async fn verifying_receiver() -> (String, Arc<Mutex<Vec<Result<GatewayEvent, WebhookError>>>>) {
    let got: Arc<Mutex<Vec<Result<GatewayEvent, WebhookError>>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/api/v1/webhooks/gateway",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let sig = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
                    let verified = verify_webhook(SECRET, sig, &body, now(), WEBHOOK_TOLERANCE);
                    let status = if verified.is_ok() {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::BAD_REQUEST
                    };
                    sink.lock().expect("lock").push(verified);
                    status
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/api/v1/webhooks/gateway"), got)
}

#[tokio::test]
async fn webhooks_from_the_simulator_verify_and_carry_the_charge() {
    let (url, got) = verifying_receiver().await;
    let sim = sim().await;
    sim.set_webhook(url, SECRET);
    let gw = client(&sim, |_| {});
    let (charge, r) = captured(&gw, 500).await;
    gw.refund(refund_req(&charge, 200, "w"))
        .await
        .expect("refund");
    sim.dispute(&charge).expect("dispute");
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.lock().expect("lock").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events: Vec<GatewayEvent> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|e| e.clone().expect("every delivery verifies"))
        .collect();
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e.charge.reference, r);
        assert_eq!(e.charge.id, charge);
        match &e.event_type {
            GatewayEventType::ChargeSucceeded => assert!(e.charge.is_captured()),
            GatewayEventType::ChargeRefunded => assert_eq!(e.charge.amount_refunded, usd(200)),
            GatewayEventType::DisputeCreated => {
                assert!(e.charge.disputed);
                assert_eq!(e.dispute.as_ref().map(|d| d.amount), Some(usd(300)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn webhooks_signed_with_another_secret_are_refused_and_redelivered() {
    let (url, got) = verifying_receiver().await;
    let sim = GatewaySim::start(SimConfig {
        webhook_url: Some(url.clone()),
        webhook_secret: Some("whsec_wrong".into()),
        webhook_backoff_base: Duration::from_millis(20),
        webhook_backoff_max: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let gw = client(&sim, |_| {});
    captured(&gw, 100).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.lock().expect("lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        got.lock().expect("lock")[0],
        Err(WebhookError::SignatureMismatch)
    );
    // Fix the secret: the retry of the same event now verifies.
    sim.set_webhook(url, SECRET);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.lock().expect("lock").iter().any(Result::is_ok) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The simulator records an attempt once the answer is back, which can be just after the
    // receiver saw the request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sim.webhook_attempts().last().is_some_and(|a| a.delivered()) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attempts = sim.webhook_attempts();
    assert!(attempts.iter().any(|a| a.status == Some(400)));
    assert!(attempts.last().is_some_and(|a| a.delivered()));
}
