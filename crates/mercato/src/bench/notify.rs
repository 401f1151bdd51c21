//! `mercato bench notify`: a promotional flood and critical messages at the same time.
//!
//! Enqueues `--size` (default 100,000) promotional push messages through `POST
//! /notifications/bulk` and, while they drain, sends one critical OTP by SMS every 20 ms. A
//! provider peer in this process (an HTTP endpoint shaped like the SMS and push providers)
//! records when each message arrives. Reports critical accept → provider-call latency (from
//! just before the POST to the moment the provider received the message), promotional
//! throughput, and lost or duplicated messages (both must be 0).
//!
//! In-process by default (temporary SQLite database). With `--target URL`, the server must
//! already be configured with `MERCATO_SMS_URL=http://<sink>/sms` and
//! `MERCATO_PUSH_URL=http://<sink>/push`, where `<sink>` is `MERCATO_BENCH_SINK_ADDR`, and an
//! admin or service token must be in `MERCATO_BENCH_TOKEN`.

use super::{BenchArgs, Recorder, Report};
use axum::extract::State;
use axum::http::Uri;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the provider peer saw.
#[derive(Default)]
struct Sink {
    /// message id → (first arrival, arrivals)
    seen: Mutex<HashMap<String, (Instant, u32)>>,
    promo_unique: AtomicU64,
    crit_unique: AtomicU64,
    last_promo: Mutex<Option<Instant>>,
}

async fn receive(
    State(s): State<Arc<Sink>>,
    uri: Uri,
    body: axum::body::Bytes,
) -> axum::Json<Value> {
    let now = Instant::now();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = v["message_id"].as_str().unwrap_or_default().to_owned();
    let first = match s.seen.lock() {
        Ok(mut m) => {
            let e = m.entry(id.clone()).or_insert((now, 0));
            e.1 += 1;
            e.1 == 1
        }
        Err(_) => false,
    };
    if first {
        if uri.path() == "/push" {
            s.promo_unique.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = s.last_promo.lock() {
                *l = Some(now);
            }
        } else {
            s.crit_unique.fetch_add(1, Ordering::Relaxed);
        }
    }
    axum::Json(json!({"id": format!("p-{id}")}))
}

async fn start_sink(addr: &str) -> anyhow::Result<(String, Arc<Sink>)> {
    let sink = Arc::new(Sink::default());
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{local}"), sink))
}

struct Server {
    base: String,
    token: String,
    db: Option<mercato_kernel::db::Db>,
    _stop: Option<mercato_kernel::shutdown::ShutdownTrigger>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = &self._stop {
            s.trigger();
        }
    }
}

async fn server(args: &BenchArgs, sink: &str) -> anyhow::Result<Server> {
    if let Some(url) = &args.target {
        let token = std::env::var("MERCATO_BENCH_TOKEN").map_err(|_| {
            anyhow::anyhow!("--target needs MERCATO_BENCH_TOKEN (admin or service)")
        })?;
        return Ok(Server {
            base: url.trim_end_matches('/').to_owned(),
            token,
            db: None,
            _stop: None,
            _dir: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let mut settings = mercato_kernel::config::Settings::load(None, std::env::vars())?;
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = None;
    settings.addr = "127.0.0.1:0".into();
    settings.rate_limit_ip_per_sec = 10_000_000;
    settings.rate_limit_principal_per_sec = 10_000_000;
    settings.max_in_flight_requests = 100_000;
    settings.sms_url = Some(format!("{sink}/sms"));
    settings.push_url = Some(format!("{sink}/push"));
    settings.smtp_url = None;
    let app = crate::Application::build(settings, crate::BuildOptions::default()).await?;
    let addr = app
        .local_addr()
        .ok_or_else(|| anyhow::anyhow!("no listener"))?;
    let state = app.state().clone();
    let stop = app.stopper();
    tokio::spawn(app.run_until(std::future::pending()));
    let email = "bench-admin@bench.mercato";
    let password = "bench-password-123";
    state
        .identity
        .create_user(email, password, None, mercato_kernel::auth::Role::Admin)
        .await
        .map_err(|e| anyhow::anyhow!("creating the bench admin: {e}"))?;
    let base = format!("http://{addr}");
    let login: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("login failed: {login}"))?
        .to_owned();
    Ok(Server {
        base,
        token,
        db: Some(state.kernel.db.clone()),
        _stop: Some(stop),
        _dir: Some(dir),
    })
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let total = args.size.unwrap_or(100_000).max(1);
    let sink_addr =
        std::env::var("MERCATO_BENCH_SINK_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    let (sink_url, sink) = start_sink(&sink_addr).await?;
    let server = server(args, &sink_url).await?;
    let client = super::http_client(64)?;
    let rec = Arc::new(Recorder::new());
    let api = format!("{}/api/v1", server.base);
    let started = Instant::now();

    // Critical sender: one OTP every 20 ms until the promotional flood has drained.
    let stop_crit = Arc::new(AtomicBool::new(false));
    let crit_sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let crit_errors = Arc::new(AtomicU64::new(0));
    let crit_task = {
        let (client, api, token, rec) = (
            client.clone(),
            api.clone(),
            server.token.clone(),
            rec.clone(),
        );
        let (stop, sent, errors) = (stop_crit.clone(), crit_sent.clone(), crit_errors.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut i = 0u64;
            let mut inflight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let (client, api, token, rec, sent, errors) = (
                    client.clone(),
                    api.clone(),
                    token.clone(),
                    rec.clone(),
                    sent.clone(),
                    errors.clone(),
                );
                // Fire and forget at a steady rate (an open loop: slow answers do not slow the sender).
                inflight.push(tokio::spawn(async move {
                    let body = json!({"recipient": {"phone": format!("+1555{i:07}")}, "type": "otp",
                        "channels": ["sms"], "data": {"code": format!("{:06}", i % 1_000_000), "minutes": 5}});
                    let t0 = Instant::now();
                    let resp = client
                        .post(format!("{api}/notifications"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await;
                    let ok = match resp {
                        Ok(r) if r.status().as_u16() == 202 => r.json::<Value>().await.ok(),
                        _ => None,
                    };
                    match ok.as_ref().and_then(|v| v["deliveries"][0]["id"].as_str()) {
                        Some(id) => {
                            rec.ok("POST /notifications (otp)", t0.elapsed());
                            if let Ok(mut m) = sent.lock() {
                                m.insert(id.to_owned(), t0);
                            }
                        }
                        None => {
                            rec.error("POST /notifications (otp)");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
        })
    };

    // The promotional flood: bulk requests of 5,000 recipients, two at a time.
    let batch = 5_000usize;
    let mut promo_accepted = 0u64;
    let mut promo_rejected = 0u64;
    let enqueue_started = Instant::now();
    let batches: Vec<(usize, usize)> = (0..total)
        .step_by(batch)
        .map(|s| (s, (s + batch).min(total)))
        .collect();
    for pair in batches.chunks(2) {
        let mut posts = Vec::new();
        for (from, to) in pair.iter().copied() {
            let (client, api, token, rec) = (
                client.clone(),
                api.clone(),
                server.token.clone(),
                rec.clone(),
            );
            posts.push(tokio::spawn(async move {
                let recipients: Vec<Value> = (from..to)
                    .map(|i| json!({"push_tokens": [format!("promo-{i}")]}))
                    .collect();
                let body = json!({"type": "promotional", "channels": ["push"], "priority": "promotional",
                    "data": {"title": "Spring sale", "message": "20% off everything", "campaign_id": "bench"},
                    "recipients": recipients});
                let t0 = Instant::now();
                let r = client
                    .post(format!("{api}/notifications/bulk"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let v = match r {
                    Ok(r) if r.status().as_u16() == 202 => r.json::<Value>().await.ok(),
                    _ => None,
                };
                match &v {
                    Some(_) => rec.ok("POST /notifications/bulk (5k)", t0.elapsed()),
                    None => rec.error("POST /notifications/bulk (5k)"),
                }
                v
            }));
        }
        for p in posts {
            if let Ok(Some(v)) = p.await {
                promo_accepted += v["accepted"].as_u64().unwrap_or(0);
                promo_rejected += v["rejected"]
                    .as_array()
                    .map(|a| a.len() as u64)
                    .unwrap_or(0);
            }
        }
    }
    let enqueue_secs = enqueue_started.elapsed().as_secs_f64();

    // Drain: until every accepted promotional message reached the provider (or 10 minutes).
    let deadline = Instant::now() + Duration::from_secs(600).max(args.duration);
    while sink.promo_unique.load(Ordering::Relaxed) < promo_accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Keep the critical traffic going at least `--duration` in all.
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_crit.store(true, Ordering::Relaxed);
    let _ = crit_task.await;
    let crit_expected = crit_sent.lock().map(|m| m.len()).unwrap_or(0) as u64;
    let settle = Instant::now() + Duration::from_secs(30);
    while sink.crit_unique.load(Ordering::Relaxed) < crit_expected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed();

    // Accept → provider call, per critical message.
    let seen = sink.seen.lock().map(|m| m.clone()).unwrap_or_default();
    if let Ok(sent) = crit_sent.lock() {
        for (id, t0) in sent.iter() {
            match seen.get(id) {
                Some((arrived, _)) => rec.ok(
                    "critical accept→provider",
                    arrived.saturating_duration_since(*t0),
                ),
                None => rec.error("critical accept→provider"),
            }
        }
    }
    let arrivals: u64 = seen.values().map(|(_, n)| u64::from(*n)).sum();
    let unique = seen.len() as u64;
    let promo_unique = sink.promo_unique.load(Ordering::Relaxed);
    let crit_unique = sink.crit_unique.load(Ordering::Relaxed);
    let drain_secs = sink
        .last_promo
        .lock()
        .ok()
        .and_then(|l| *l)
        .map(|l| l.saturating_duration_since(enqueue_started).as_secs_f64())
        .unwrap_or(0.0);

    let mut report = Report::new("notify", &server.base, 1, wall);
    report.steps = rec.stats(wall);
    report.fact("promo_messages", total);
    report.fact("promo_accepted", promo_accepted);
    report.fact("promo_enqueue_secs", format!("{enqueue_secs:.1}"));
    report.fact("promo_drain_secs", format!("{drain_secs:.1}"));
    report.fact(
        "promo_per_sec",
        format!("{:.0}", promo_unique as f64 / drain_secs.max(1e-9)),
    );
    report.fact("critical_sent", crit_expected);
    report.fact("critical_rate", "50/s (one every 20 ms)");
    if let Some(db) = &server.db {
        // The last outcomes are recorded just after the provider answered: give them a moment.
        let mut not_sent = -1;
        for _ in 0..100 {
            not_sent = sqlx::query_scalar(
                "SELECT COUNT(*) FROM notify_deliveries d JOIN notifications n ON n.id = d.notification_id \
                 WHERE n.type IN ('otp', 'promotional') \
                 AND d.status NOT IN ('sent', 'delivered', 'opened', 'read')",
            )
            .fetch_one(db.reader())
            .await
            .unwrap_or(-1);
            if not_sent == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.invariant("deliveries not sent (db)", not_sent, 0);
    }
    report.invariant(
        "lost (accepted, never at provider)",
        (promo_accepted + crit_expected) as i64 - (promo_unique + crit_unique) as i64,
        0,
    );
    report.invariant(
        "duplicated (same message twice)",
        (arrivals - unique) as i64,
        0,
    );
    report.invariant("promo rejected", promo_rejected as i64, 0);
    report.invariant(
        "critical send errors",
        crit_errors.load(Ordering::Relaxed) as i64,
        0,
    );
    Ok(report)
}
