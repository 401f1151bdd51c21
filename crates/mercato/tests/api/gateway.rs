//! Payment gateway wiring: the in-process simulator, an external gateway, `mercato gateway-sim`.

use mercato::{Application, BuildOptions};
use mercato_commerce::gateway::{ChargeOutcome, ChargeRequest};
use mercato_gateway_sim::{GatewaySim, SimConfig};
use mercato_kernel::{Currency, Money};
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

fn charge(reference: &str) -> ChargeRequest {
    ChargeRequest {
        amount: Money::new(1234, Currency::USD),
        token: "tok_visa".into(),
        reference: reference.into(),
        idempotency_key: reference.into(),
    }
}

async fn build(settings: mercato_kernel::config::Settings) -> Application {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    Application::build(
        settings,
        BuildOptions {
            clock: None,
            listener: Some(listener),
        },
    )
    .await
    .expect("build")
}

#[tokio::test]
async fn without_a_gateway_url_the_simulator_runs_in_process_and_calls_back_this_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = mercato_testkit::test_settings(dir.path());
    settings.database_url = None;
    let app = build(settings).await;
    let addr = app.local_addr().expect("addr");
    let gateway = app.gateway().clone();
    let sim = gateway.simulator.clone().expect("an in-process simulator");
    assert_eq!(
        sim.webhook_url(),
        Some(format!("http://{addr}/api/v1/webhooks/gateway"))
    );
    assert!(gateway.webhook_secret.starts_with("whsec_"));
    assert_eq!(sim.webhook_secret(), Some(gateway.webhook_secret.clone()));
    assert_eq!(gateway.client.name(), "simulator");

    let stopper = app.stopper();
    let server = tokio::spawn(app.run_until(std::future::pending()));
    let out = gateway.client.charge(charge("chk_wiring:pay:1")).await;
    assert!(matches!(out, Ok(ChargeOutcome::Captured { .. })), "{out:?}");
    assert_eq!(sim.captured_count("chk_wiring:pay:1"), 1);
    let metrics = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"gateway_calls_total{operation="charge",outcome="captured"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_call_duration_seconds_bucket"));
    // The charge.succeeded webhook reached this application's listener (whatever it answered).
    let mut reached = false;
    for _ in 0..250 {
        if sim.webhook_attempts().iter().any(|a| a.status.is_some()) {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reached, "attempts: {:?}", sim.webhook_attempts());

    stopper.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    let after = reqwest::Client::new()
        .get(format!("{}/healthz", sim.base_url()))
        .send()
        .await;
    assert!(after.is_err(), "the simulator stops with the application");
}

#[tokio::test]
async fn a_configured_gateway_url_is_used_instead_of_the_simulator() {
    let external = GatewaySim::start(SimConfig {
        api_key: "sk_test_external".into(),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = mercato_testkit::test_settings(dir.path());
    settings.database_url = None;
    settings.gateway_url = Some(external.base_url());
    settings.gateway_api_key = "sk_test_external".into();
    settings.gateway_webhook_secret = Some("whsec_external".into());
    let app = build(settings).await;
    let gateway = app.gateway();
    assert!(gateway.simulator.is_none());
    assert_eq!(gateway.webhook_secret, "whsec_external");
    assert_eq!(gateway.client.name(), "http");
    let out = gateway.client.charge(charge("chk_external:pay:1")).await;
    assert!(matches!(out, Ok(ChargeOutcome::Captured { .. })), "{out:?}");
    assert_eq!(external.captured_count("chk_external:pay:1"), 1);
}

#[tokio::test]
async fn gateway_sim_runs_as_its_own_process() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args([
            "gateway-sim",
            "--addr",
            "127.0.0.1:0",
            "--api-key",
            "sk_test_cli",
        ])
        .env("MERCATO_LOG_LEVEL", "warn")
        .env_remove("MERCATO_GATEWAY_URL")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        line
    })
    .await
    .expect("read");
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/v1/charges"))
        .bearer_auth("sk_test_cli")
        .header("Idempotency-Key", "cli-1")
        .json(&serde_json::json!({"amount": 500, "currency": "usd", "source": "tok_visa", "reference": "chk_cli:pay:1"}))
        .send()
        .await
        .expect("charge");
    assert_eq!(resp.status().as_u16(), 200);
    let listed: serde_json::Value = http
        .get(format!("{base}/v1/charges?reference=chk_cli:pay:1"))
        .bearer_auth("sk_test_cli")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()));
    let mut status = None;
    for _ in 0..400 {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("gateway-sim did not stop on SIGTERM")
    });
    assert!(status.success(), "exit status {status:?}");
}
