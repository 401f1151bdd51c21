//! Idempotency keys: replay, mismatch, in flight.

use crate::{Api, charge_body, reference, sim};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_same_key_and_body_replay_the_first_answer_without_a_second_charge() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let first = api.charge("key-1", "tok_visa", &r, 1200).await;
    assert_eq!(first.status, 200);
    assert!(!first.replayed);
    // Same parameters in another key order are the same request.
    let again = api
        .post(
            "/v1/charges",
            Some("key-1"),
            &json!({"reference": r, "source": "tok_visa", "currency": "usd", "amount": 1200}),
        )
        .await;
    assert_eq!(again.status, 200);
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    assert_eq!(sim.charges_for(&r).len(), 1);
}

#[tokio::test]
async fn a_declined_charge_is_replayed_as_declined() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let first = api.charge("key-d", "tok_insufficientFunds", &r, 1200).await;
    let again = api.charge("key-d", "tok_insufficientFunds", &r, 1200).await;
    assert_eq!(first.status, 402);
    assert_eq!(again.status, 402);
    assert_eq!(again.body, first.body);
    assert_eq!(sim.charges_for(&r).len(), 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_refused() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    assert_eq!(api.charge("key-2", "tok_visa", &r, 1200).await.status, 200);
    let other = api.charge("key-2", "tok_visa", &r, 1300).await;
    assert_eq!(other.status, 400);
    assert_eq!(other.body["error"]["type"], "idempotency_error");
    assert!(other.body["error"]["message"].as_str().is_some());
    // The same key on another endpoint is another request too.
    let refund = api
        .post("/v1/refunds", Some("key-2"), &json!({"charge": "ch_x"}))
        .await;
    assert_eq!(refund.status, 400);
    assert_eq!(refund.body["error"]["type"], "idempotency_error");
    assert_eq!(sim.charges_for(&r).len(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_charge() {
    let sim = sim().await;
    sim.set_latency(Duration::from_millis(150));
    let api = Api::new(&sim);
    let r = reference();
    let answers =
        futures::future::join_all((0..10).map(|_| api.charge("key-race", "tok_visa", &r, 999)))
            .await;
    let ok: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    let in_progress: Vec<_> = answers.iter().filter(|a| a.status == 409).collect();
    assert_eq!(ok.len() + in_progress.len(), 10);
    assert!(!ok.is_empty());
    for a in &ok {
        assert_eq!(a.body["id"], ok[0].body["id"], "one charge, one id");
    }
    for a in &in_progress {
        assert_eq!(a.body["error"]["type"], "idempotency_error");
        assert_eq!(a.body["error"]["code"], "request_in_progress");
    }
    assert_eq!(sim.charges_for(&r).len(), 1);
    assert_eq!(sim.captured_count(&r), 1);
    // Once finished, the key replays.
    let later = api.charge("key-race", "tok_visa", &r, 999).await;
    assert_eq!(later.status, 200);
    assert!(later.replayed);
    assert_eq!(later.body["id"], ok[0].body["id"]);
}

#[tokio::test]
async fn a_client_that_gives_up_does_not_cancel_the_charge_nor_block_the_key() {
    let sim = sim().await;
    sim.set_latency(Duration::from_millis(300));
    let api = Api::new(&sim);
    let r = reference();
    let gave_up = api
        .http
        .post(format!("{}/v1/charges", api.base))
        .bearer_auth(&api.key)
        .header("Idempotency-Key", "key-left")
        .json(&charge_body("tok_visa", &r, 400))
        .timeout(Duration::from_millis(50))
        .send()
        .await;
    assert!(gave_up.is_err());
    assert!(
        crate::eventually(Duration::from_secs(5), || sim.captured_count(&r) == 1).await,
        "the charge completes without its client"
    );
    sim.set_latency(Duration::ZERO);
    let retry = api.charge("key-left", "tok_visa", &r, 400).await;
    assert_eq!(retry.status, 200);
    assert!(retry.replayed);
    assert_eq!(sim.charges_for(&r).len(), 1);
}

#[tokio::test]
async fn refused_requests_do_not_consume_the_key() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let bad = api
        .post(
            "/v1/charges",
            Some("key-3"),
            &json!({"amount": 0, "currency": "usd", "source": "tok_visa", "reference": r}),
        )
        .await;
    assert_eq!(bad.status, 400);
    sim.fail_next(1);
    let failed = api.charge("key-3", "tok_visa", &r, 100).await;
    assert_eq!(failed.status, 500);
    let ok = api.charge("key-3", "tok_visa", &r, 100).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(!ok.replayed);
    assert_eq!(sim.charges_for(&r).len(), 1);
}
