//! Signed webhooks: every event delivered, signed, and retried until the receiver says 2xx.

use crate::{Api, eventually, reference, sim_with};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use mercato_gateway_sim::{Event, signature_header};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "whsec_test_secret";

/// `(Mercato-Signature, raw body)` of every delivery received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook receiver on port 0 that answers 500 to its first `fail_first` deliveries.
#[derive(Clone, Default)]
struct Receiver {
    got: Received,
    fail_first: Arc<AtomicU32>,
}

impl Receiver {
    async fn spawn(fail_first: u32) -> (String, Receiver) {
        let receiver = Receiver::default();
        receiver.fail_first.store(fail_first, Ordering::SeqCst);
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let r = r.clone();
                async move {
                    let sig = headers
                        .get("mercato-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    r.got.lock().expect("lock").push((sig, body.to_vec()));
                    let left = r.fail_first.load(Ordering::SeqCst);
                    if left > 0 {
                        r.fail_first.store(left - 1, Ordering::SeqCst);
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), receiver)
    }

    fn events(&self) -> Vec<(String, Event, Vec<u8>)> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .map(|(sig, body)| {
                (
                    sig.clone(),
                    serde_json::from_slice(body).expect("event json"),
                    body.clone(),
                )
            })
            .collect()
    }

    fn count(&self) -> usize {
        self.got.lock().expect("lock").len()
    }
}

/// Checks `t=…,v1=…` against the body with the shared secret.
fn assert_signed(sig: &str, body: &[u8]) {
    let t: i64 = sig
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .expect("t= in the signature");
    assert_eq!(sig, signature_header(SECRET, t, body));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    assert!((now - t).abs() < 60, "signed just now");
}

async fn sim_sending_to(url: &str) -> mercato_gateway_sim::GatewaySim {
    let url = url.to_owned();
    sim_with(move |c| {
        c.webhook_url = Some(url);
        c.webhook_secret = Some(SECRET.into());
    })
    .await
}

#[tokio::test]
async fn every_event_is_delivered_signed_with_the_charge() {
    let (url, receiver) = Receiver::spawn(0).await;
    let sim = sim_sending_to(&url).await;
    let api = Api::new(&sim);
    let r = reference();
    let ok = api.charge("a", "tok_visa", &r, 1000).await;
    let charge = ok.body["id"].as_str().expect("id").to_owned();
    let declined = api.charge("b", "tok_chargeDeclined", &r, 1000).await;
    assert_eq!(declined.status, 402);
    let refund = api
        .post(
            "/v1/refunds",
            Some("c"),
            &json!({"charge": charge, "amount": 400}),
        )
        .await;
    assert_eq!(refund.status, 200);
    let dispute = api
        .post("/v1/test/disputes", None, &json!({"charge": charge}))
        .await;
    assert_eq!(dispute.status, 200, "{}", dispute.body);
    assert!(
        dispute.body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("dp_"))
    );
    assert_eq!(dispute.body["amount"], 600);

    assert!(eventually(Duration::from_secs(5), || receiver.count() >= 4).await);
    let events = receiver.events();
    let mut types: Vec<&str> = events
        .iter()
        .map(|(_, e, _)| e.event_type.as_str())
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        vec![
            "charge.dispute.created",
            "charge.failed",
            "charge.refunded",
            "charge.succeeded"
        ]
    );
    for (sig, event, body) in &events {
        assert_signed(sig, body);
        assert!(event.id.starts_with("evt_"));
        assert_eq!(event.object, "event");
        assert_eq!(event.data.object.reference, r);
        let raw: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(raw["type"], event.event_type.as_str());
        assert!(raw["created"].is_i64());
        assert_eq!(raw["data"]["object"]["object"], "charge");
        match event.event_type.as_str() {
            "charge.refunded" => assert_eq!(event.data.object.amount_refunded, 400),
            "charge.dispute.created" => {
                assert!(event.data.object.disputed);
                assert_eq!(
                    event.data.dispute.as_ref().map(|d| d.charge.as_str()),
                    Some(charge.as_str())
                );
            }
            "charge.failed" => assert_eq!(
                event.data.object.failure_code.as_deref(),
                Some("card_declined")
            ),
            _ => assert!(event.data.object.captured),
        }
    }
    assert_eq!(sim.events().len(), 4);
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_again_until_it_answers_2xx() {
    let (url, receiver) = Receiver::spawn(2).await;
    let sim = sim_sending_to(&url).await;
    let api = Api::new(&sim);
    assert_eq!(
        api.charge("a", "tok_visa", &reference(), 100).await.status,
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || sim
            .webhook_attempts()
            .iter()
            .any(|a| a.delivered()))
        .await
    );
    let attempts = sim.webhook_attempts();
    assert_eq!(attempts.len(), 3);
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(attempts[0].status, Some(500));
    assert_eq!(attempts[2].status, Some(200));
    let events = receiver.events();
    assert_eq!(events.len(), 3);
    assert!(
        events.iter().all(|(_, e, _)| e.id == events[0].1.id),
        "same event id"
    );
    for (sig, _, body) in &events {
        assert_signed(sig, body);
    }
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_then_given_up() {
    // A port with nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    drop(listener);
    let sim = sim_with(move |c| {
        c.webhook_url = Some(url);
        c.webhook_secret = Some(SECRET.into());
        c.webhook_max_attempts = 3;
    })
    .await;
    let api = Api::new(&sim);
    assert_eq!(
        api.charge("a", "tok_visa", &reference(), 100).await.status,
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || sim.webhook_attempts().len()
            == 3)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = sim.webhook_attempts();
    assert_eq!(attempts.len(), 3, "no more than the configured attempts");
    assert!(
        attempts
            .iter()
            .all(|a| a.status.is_none() && a.error.is_some())
    );
}

#[tokio::test]
async fn tok_timeout_still_sends_charge_succeeded() {
    let (url, receiver) = Receiver::spawn(0).await;
    let sim = sim_sending_to(&url).await;
    let api = Api::new(&sim);
    let r = reference();
    let sent = api
        .http
        .post(format!("{}/v1/charges", api.base))
        .bearer_auth(&api.key)
        .header("Idempotency-Key", "t")
        .json(&crate::charge_body("tok_timeout", &r, 100))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(sent.is_err());
    assert!(eventually(Duration::from_secs(5), || receiver.count() == 1).await);
    let (_, event, _) = &receiver.events()[0];
    assert_eq!(event.event_type, "charge.succeeded");
    assert_eq!(event.data.object.reference, r);
}

#[tokio::test]
async fn only_captured_charges_can_be_disputed() {
    let sim = crate::sim().await;
    let api = Api::new(&sim);
    let r = reference();
    let declined = api.charge("d", "tok_chargeDeclined", &r, 100).await;
    let id = declined.body["error"]["charge"].as_str().expect("id");
    let a = api
        .post("/v1/test/disputes", None, &json!({"charge": id}))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["code"], "charge_not_captured");
    let missing = api
        .post("/v1/test/disputes", None, &json!({"charge": "ch_none"}))
        .await;
    assert_eq!(missing.status, 404);
    // The in-process handle does the same.
    let ok = api.charge("v", "tok_visa", &r, 100).await;
    let dispute = sim
        .dispute(ok.body["id"].as_str().expect("id"))
        .expect("dispute");
    assert_eq!(dispute.amount, 100);
    assert_eq!(sim.disputes().len(), 1);
}
