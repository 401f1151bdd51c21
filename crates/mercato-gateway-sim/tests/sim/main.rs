//! The simulator over real HTTP, on port 0: one test binary (see STYLE.md, link time).

mod charges;
mod faults;
mod idempotency;
mod refunds;
mod webhooks;

use mercato_gateway_sim::{GatewaySim, SimConfig};
use serde_json::{Value, json};
use std::time::Duration;

/// A raw HTTP client for the simulator's API.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

impl Api {
    pub fn new(sim: &GatewaySim) -> Api {
        Api {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
            base: sim.base_url(),
            key: sim.api_key().to_owned(),
        }
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        answer(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        answer(req.send().await.expect("request")).await
    }

    pub async fn charge(&self, key: &str, token: &str, reference: &str, amount: i64) -> Answer {
        self.post(
            "/v1/charges",
            Some(key),
            &charge_body(token, reference, amount),
        )
        .await
    }
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        body,
        replayed,
    }
}

pub fn charge_body(token: &str, reference: &str, amount: i64) -> Value {
    json!({"amount": amount, "currency": "usd", "source": token, "reference": reference})
}

/// A unique reference per test (several tests share nothing, but unique names read better).
pub fn reference() -> String {
    format!("chk_{}:pay:1", mercato_kernel::id::random_hex(8))
}

pub async fn sim() -> GatewaySim {
    sim_with(|_| {}).await
}

pub async fn sim_with(configure: impl FnOnce(&mut SimConfig)) -> GatewaySim {
    let mut config = SimConfig {
        hang: Duration::from_secs(2),
        webhook_backoff_base: Duration::from_millis(20),
        webhook_backoff_max: Duration::from_millis(100),
        ..SimConfig::default()
    };
    configure(&mut config);
    GatewaySim::start(config).await.expect("start simulator")
}

/// Polls `check` every 20 ms until it holds, up to `timeout`.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
