//! Refunds: partial, total, never above captured, idempotent.

use crate::{Api, reference, sim};
use serde_json::json;

async fn captured(api: &Api, amount: i64) -> (String, String) {
    let r = reference();
    let a = api.charge(&format!("{r}-c"), "tok_visa", &r, amount).await;
    assert_eq!(a.status, 200);
    (a.body["id"].as_str().expect("id").to_owned(), r)
}

#[tokio::test]
async fn partial_refunds_add_up_to_the_captured_amount_and_never_beyond() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let (charge, r) = captured(&api, 1000).await;
    let first = api
        .post(
            "/v1/refunds",
            Some("rf-1"),
            &json!({"charge": charge, "amount": 300, "reason": "requested_by_customer", "reference": "ref_1"}),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let f = &first.body;
    assert!(f["id"].as_str().is_some_and(|id| id.starts_with("re_")));
    assert_eq!(f["object"], "refund");
    assert_eq!(f["charge"], charge.as_str());
    assert_eq!(f["amount"], 300);
    assert_eq!(f["status"], "succeeded");
    assert_eq!(f["reference"], "ref_1");
    assert!(f["created"].as_i64().is_some());

    let too_much = api
        .post(
            "/v1/refunds",
            Some("rf-2"),
            &json!({"charge": charge, "amount": 701}),
        )
        .await;
    assert_eq!(too_much.status, 400);
    assert_eq!(too_much.body["error"]["type"], "invalid_request_error");
    assert_eq!(too_much.body["error"]["code"], "amount_too_large");

    let rest = api
        .post(
            "/v1/refunds",
            Some("rf-3"),
            &json!({"charge": charge, "amount": 700}),
        )
        .await;
    assert_eq!(rest.status, 200);
    let one_more = api
        .post(
            "/v1/refunds",
            Some("rf-4"),
            &json!({"charge": charge, "amount": 1}),
        )
        .await;
    assert_eq!(one_more.status, 400);

    let c = api.get(&format!("/v1/charges/{charge}")).await;
    assert_eq!(c.body["amount_refunded"], 1000);
    assert_eq!(c.body["refunded"], true);
    assert_eq!(c.body["refunds"].as_array().map(Vec::len), Some(2));
    let total: i64 = sim.refunds_for(&r).iter().map(|x| x.amount).sum();
    assert_eq!(total, 1000);
}

#[tokio::test]
async fn a_refund_without_an_amount_refunds_the_rest() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let (charge, r) = captured(&api, 900).await;
    let part = api
        .post(
            "/v1/refunds",
            Some("p"),
            &json!({"charge": charge, "amount": 100}),
        )
        .await;
    assert_eq!(part.status, 200);
    let rest = api
        .post("/v1/refunds", Some("r"), &json!({"charge": charge}))
        .await;
    assert_eq!(rest.status, 200);
    assert_eq!(rest.body["amount"], 800);
    let again = api
        .post("/v1/refunds", Some("again"), &json!({"charge": charge}))
        .await;
    assert_eq!(again.status, 400);
    assert_eq!(sim.refunds_for(&r).len(), 2);
}

#[tokio::test]
async fn refunds_are_idempotent() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let (charge, r) = captured(&api, 500).await;
    let body = json!({"charge": charge, "amount": 200});
    let first = api.post("/v1/refunds", Some("same"), &body).await;
    let second = api.post("/v1/refunds", Some("same"), &body).await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert!(second.replayed);
    assert_eq!(first.body, second.body);
    let changed = api
        .post(
            "/v1/refunds",
            Some("same"),
            &json!({"charge": charge, "amount": 201}),
        )
        .await;
    assert_eq!(changed.status, 400);
    assert_eq!(changed.body["error"]["type"], "idempotency_error");
    let no_key = api.post("/v1/refunds", None, &body).await;
    assert_eq!(no_key.status, 400);
    assert_eq!(sim.refunds_for(&r).len(), 1);
}

#[tokio::test]
async fn failed_or_unknown_charges_cannot_be_refunded() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let declined = api.charge("d", "tok_chargeDeclined", &r, 500).await;
    let id = declined.body["error"]["charge"].as_str().expect("id");
    let refund = api
        .post("/v1/refunds", Some("x"), &json!({"charge": id}))
        .await;
    assert_eq!(refund.status, 400);
    assert_eq!(refund.body["error"]["code"], "charge_not_captured");
    let missing = api
        .post("/v1/refunds", Some("y"), &json!({"charge": "ch_nope"}))
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "resource_missing");
    let zero = api
        .post(
            "/v1/refunds",
            Some("z"),
            &json!({"charge": id, "amount": 0}),
        )
        .await;
    assert_eq!(zero.status, 400);
    assert!(sim.refunds().is_empty());
}
