//! Failure and latency injection.

use crate::{Api, reference, sim};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_failure_rate_of_one_answers_500_before_doing_anything() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let set = api
        .post("/v1/test/config", None, &json!({"failure_rate": 1.0}))
        .await;
    assert_eq!(set.status, 200);
    assert_eq!(set.body["failure_rate"], 1.0);
    let r = reference();
    for i in 0..3 {
        let a = api.charge(&format!("k{i}"), "tok_visa", &r, 100).await;
        assert_eq!(a.status, 500);
        assert_eq!(a.body["error"]["type"], "api_error");
    }
    assert!(sim.charges().is_empty(), "nothing was done");
    // The test hooks keep working, so the failures can be switched off.
    let off = api
        .post("/v1/test/config", None, &json!({"failure_rate": 0.0}))
        .await;
    assert_eq!(off.status, 200);
    assert_eq!(api.charge("k0", "tok_visa", &r, 100).await.status, 200);
}

#[tokio::test]
async fn fail_next_fails_exactly_that_many_requests() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let set = api
        .post("/v1/test/config", None, &json!({"fail_next": 2}))
        .await;
    assert_eq!(set.body["fail_next"], 2);
    let r = reference();
    let statuses = [
        api.charge("k", "tok_visa", &r, 100).await.status,
        api.charge("k", "tok_visa", &r, 100).await.status,
        api.charge("k", "tok_visa", &r, 100).await.status,
    ];
    assert_eq!(statuses, [500, 500, 200]);
    let logged: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|q| q.path == "/v1/charges")
        .collect();
    assert_eq!(logged.len(), 3);
    assert!(
        logged
            .iter()
            .all(|q| q.idempotency_key.as_deref() == Some("k"))
    );
    assert_eq!(
        logged.iter().map(|q| q.status).collect::<Vec<_>>(),
        vec![Some(500), Some(500), Some(200)]
    );
}

#[tokio::test]
async fn latency_is_added_to_api_requests() {
    let sim = sim().await;
    let api = Api::new(&sim);
    let set = api
        .post(
            "/v1/test/config",
            None,
            &json!({"latency_ms": 150, "hang_ms": 500}),
        )
        .await;
    assert_eq!(set.body["latency_ms"], 150);
    assert_eq!(set.body["hang_ms"], 500);
    let started = Instant::now();
    assert_eq!(
        api.charge("k", "tok_visa", &reference(), 100).await.status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(api.get("/v1/charges?reference=x").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let knobs = api.get("/v1/test/config").await;
    assert_eq!(knobs.body["latency_ms"], 150);
}

#[tokio::test]
async fn bad_knobs_are_refused() {
    let sim = sim().await;
    let api = Api::new(&sim);
    for body in [
        json!({"failure_rate": 1.5}),
        json!({"failure_rate": -0.1}),
        json!({"latency": 3}),
    ] {
        let a = api.post("/v1/test/config", None, &body).await;
        assert_eq!(a.status, 400, "{body}");
    }
    assert_eq!(sim.knobs().failure_rate, 0.0);
}

#[tokio::test]
async fn a_stopped_simulator_refuses_connections() {
    let sim = sim().await;
    let api = Api::new(&sim);
    assert_eq!(api.get("/healthz").await.status, 200);
    let base = sim.base_url();
    sim.stop().await;
    let after = api.http.get(format!("{base}/healthz")).send().await;
    assert!(after.is_err());
}
