//! Charges: each test token's outcome, lookup, validation, authentication.

use crate::{Api, charge_body, reference, sim};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn approving_tokens_capture_the_charge() {
    let sim = sim().await;
    let api = Api::new(&sim);
    for token in ["tok_visa", "tok_mastercard"] {
        let r = reference();
        let a = api.charge(&format!("{r}-key"), token, &r, 1999).await;
        assert_eq!(a.status, 200, "{token}: {}", a.body);
        let c = &a.body;
        assert!(c["id"].as_str().is_some_and(|id| id.starts_with("ch_")));
        assert_eq!(c["object"], "charge");
        assert_eq!(c["amount"], 1999);
        assert_eq!(c["currency"], "usd");
        assert_eq!(c["status"], "succeeded");
        assert_eq!(c["captured"], true);
        assert_eq!(c["paid"], true);
        assert_eq!(c["reference"], r.as_str());
        assert_eq!(c["amount_refunded"], 0);
        assert_eq!(c["failure_code"], serde_json::Value::Null);
        assert!(c["created"].as_i64().is_some_and(|t| t > 1_600_000_000));
        assert_eq!(c["refunds"], json!([]));
        assert_eq!(sim.captured_count(&r), 1);
    }
}

#[tokio::test]
async fn declining_tokens_answer_402_with_their_decline_code_and_store_a_failed_charge() {
    let sim = sim().await;
    let api = Api::new(&sim);
    for (token, decline_code) in [
        ("tok_chargeDeclined", "card_declined"),
        ("tok_insufficientFunds", "insufficient_funds"),
        ("tok_doesNotExist", "invalid_token"),
        ("not-even-a-token", "invalid_token"),
    ] {
        let r = reference();
        let a = api.charge(&format!("{r}-key"), token, &r, 500).await;
        assert_eq!(a.status, 402, "{token}: {}", a.body);
        let e = &a.body["error"];
        assert_eq!(e["type"], "card_error");
        assert_eq!(e["code"], "card_declined");
        assert_eq!(e["decline_code"], decline_code);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        let id = e["charge"].as_str().expect("declined charge id");
        let stored = sim.charge(id).expect("the failed charge is stored");
        assert!(!stored.captured);
        assert_eq!(stored.failure_code.as_deref(), Some(decline_code));
        assert_eq!(sim.captured_count(&r), 0);
        let looked_up = api.get(&format!("/v1/charges/{id}")).await;
        assert_eq!(looked_up.status, 200);
        assert_eq!(looked_up.body["status"], "failed");
        assert_eq!(looked_up.body["captured"], false);
    }
}

#[tokio::test]
async fn tok_timeout_captures_but_holds_the_answer_back() {
    let sim = sim().await; // hang 2 s
    let api = Api::new(&sim);
    let r = reference();
    let started = Instant::now();
    let sent = api
        .http
        .post(format!("{}/v1/charges", api.base))
        .bearer_auth(&api.key)
        .header("Idempotency-Key", format!("{r}-key"))
        .json(&charge_body("tok_timeout", &r, 700))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    let err = sent.expect_err("the answer is held back past the client's timeout");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The charge was captured all the same: reconciliation finds it by reference.
    let listed = api.get(&format!("/v1/charges?reference={r}")).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["object"], "list");
    let data = listed.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["status"], "succeeded");
    assert_eq!(data[0]["captured"], true);
    assert_eq!(sim.captured_count(&r), 1);
}

#[tokio::test]
async fn tok_timeout_answers_after_the_hang_when_the_client_waits() {
    let sim = crate::sim_with(|c| c.hang = Duration::from_millis(200)).await;
    let api = Api::new(&sim);
    let r = reference();
    let started = Instant::now();
    let a = api.charge("k-wait", "tok_timeout", &r, 700).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "succeeded");
}

#[tokio::test]
async fn tok_timeout_declined_stores_a_failed_charge_and_holds_the_answer_back() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let sent = api
        .http
        .post(format!("{}/v1/charges", api.base))
        .bearer_auth(&api.key)
        .header("Idempotency-Key", format!("{r}-key"))
        .json(&charge_body("tok_timeoutDeclined", &r, 700))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(sent.expect_err("held back").is_timeout());
    let listed = api.get(&format!("/v1/charges?reference={r}")).await;
    let data = listed.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["status"], "failed");
    assert_eq!(data[0]["captured"], false);
    assert_eq!(sim.captured_count(&r), 0);
}

#[tokio::test]
async fn charges_are_listed_by_reference_newest_first_and_retrieved_by_id() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let first = api.charge("k1", "tok_chargeDeclined", &r, 100).await;
    let second = api.charge("k2", "tok_visa", &r, 100).await;
    let other = api.charge("k3", "tok_visa", &reference(), 100).await;
    assert_eq!(other.status, 200);
    let listed = api.get(&format!("/v1/charges?reference={r}")).await;
    let ids: Vec<&str> = listed.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![
            second.body["id"].as_str().expect("id"),
            first.body["error"]["charge"].as_str().expect("id"),
        ]
    );
    let none = api.get("/v1/charges?reference=nothing-here").await;
    assert_eq!(none.body["data"], json!([]));

    let id = second.body["id"].as_str().expect("id");
    let got = api.get(&format!("/v1/charges/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, second.body);
    let missing = api.get("/v1/charges/ch_missing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["type"], "invalid_request_error");
    assert_eq!(missing.body["error"]["code"], "resource_missing");
}

#[tokio::test]
async fn the_currency_is_accepted_in_any_case_and_answered_in_lower_case() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let body = json!({"amount": 250, "currency": "USD", "source": "tok_visa",
        "reference": reference(), "description": "order 1", "metadata": {"order": "ord_1"}});
    let a = api.post("/v1/charges", Some("k"), &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["currency"], "usd");
    assert_eq!(a.body["description"], "order 1");
    assert_eq!(a.body["metadata"]["order"], "ord_1");
}

#[tokio::test]
async fn malformed_charges_are_refused_and_nothing_is_stored() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let cases = [
        (
            json!({"amount": 0, "currency": "usd", "source": "tok_visa", "reference": r}),
            "parameter_invalid",
        ),
        (
            json!({"amount": -5, "currency": "usd", "source": "tok_visa", "reference": r}),
            "parameter_invalid",
        ),
        (
            json!({"amount": 100, "currency": "us", "source": "tok_visa", "reference": r}),
            "parameter_invalid",
        ),
        (
            json!({"amount": 100, "currency": "usd", "source": "", "reference": r}),
            "parameter_missing",
        ),
        (
            json!({"amount": 100, "currency": "usd", "source": "tok_visa", "reference": ""}),
            "parameter_missing",
        ),
        (
            json!({"amount": 100, "currency": "usd", "source": "tok_visa"}),
            "parameter_invalid",
        ),
        (
            json!({"amount": 1.5, "currency": "usd", "source": "tok_visa", "reference": r}),
            "parameter_invalid",
        ),
        (
            json!({"amount": 100, "currency": "usd", "source": "tok_visa", "reference": r, "metadata": 3}),
            "parameter_invalid",
        ),
        (
            json!({"amount": 100, "currency": "usd", "source": "tok_visa", "reference": r, "bogus": 1}),
            "parameter_invalid",
        ),
    ];
    for (i, (body, code)) in cases.iter().enumerate() {
        let a = api
            .post("/v1/charges", Some(&format!("bad-{i}")), body)
            .await;
        assert_eq!(a.status, 400, "case {i}: {}", a.body);
        assert_eq!(a.body["error"]["type"], "invalid_request_error", "case {i}");
        assert_eq!(a.body["error"]["code"], *code, "case {i}: {}", a.body);
    }
    let no_key = api
        .post("/v1/charges", None, &charge_body("tok_visa", &r, 100))
        .await;
    assert_eq!(no_key.status, 400);
    assert_eq!(no_key.body["error"]["type"], "idempotency_error");
    assert_eq!(no_key.body["error"]["code"], "idempotency_key_missing");
    let raw = api
        .http
        .post(format!("{}/v1/charges", api.base))
        .bearer_auth(&api.key)
        .header("Idempotency-Key", "raw")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status().as_u16(), 400);
    assert!(sim.charges().is_empty());
}

#[tokio::test]
async fn requests_without_the_right_api_key_are_refused() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let url = format!("{}/v1/charges", api.base);
    let body = charge_body("tok_visa", &reference(), 100);
    let missing = api
        .http
        .post(&url)
        .header("Idempotency-Key", "a")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status().as_u16(), 401);
    let wrong = api
        .http
        .post(&url)
        .bearer_auth("sk_test_wrong")
        .header("Idempotency-Key", "b")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status().as_u16(), 401);
    let wrong_body: serde_json::Value = wrong.json().await.expect("json");
    assert_eq!(wrong_body["error"]["code"], "api_key_invalid");
    let list = api
        .http
        .get(format!("{}/v1/charges?reference=x", api.base))
        .send()
        .await
        .expect("send");
    assert_eq!(list.status().as_u16(), 401);
    assert!(sim.charges().is_empty());
    // Health needs no key.
    let health = api
        .http
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn unknown_routes_answer_a_json_404() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let a = api.get("/v1/customers").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"]["code"], "unrecognized_request_url");
}
