//! Notification platform, black box: the real app with local SMTP and HTTP provider peers.

use mercato_kernel::Timestamp;
use mercato_kernel::clock::Clock;
use mercato_notify::model::Priority;
use mercato_testkit::peers::{HttpSink, SmtpSink};
use mercato_testkit::{Client, TestApp, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

pub const WEBHOOK_SECRET: &str = "whsec-test-test-test";

pub struct Peers {
    pub smtp: SmtpSink,
    pub sms: HttpSink,
    pub sms2: HttpSink,
    pub push: HttpSink,
}

/// An app whose providers are local peers, with fast retries.
pub async fn app_with_peers(
    configure: impl FnOnce(&mut mercato_kernel::config::Settings),
) -> (TestApp, Peers) {
    let peers = Peers {
        smtp: SmtpSink::start().await,
        sms: HttpSink::start().await,
        sms2: HttpSink::start().await,
        push: HttpSink::start().await,
    };
    let (smtp, sms, sms2, push) = (
        peers.smtp.url.clone(),
        peers.sms.url.clone(),
        peers.sms2.url.clone(),
        peers.push.url.clone(),
    );
    let app = spawn_app_with(move |s| {
        s.smtp_url = Some(smtp);
        s.sms_url = Some(format!("{sms},{sms2}"));
        s.push_url = Some(push);
        s.notify_provider_token = Some("provider-token".into());
        s.notify_webhook_secret = Some(WEBHOOK_SECRET.into());
        s.notify_retry_base_ms = 20;
        s.notify_critical_retry_ms = 50;
        s.notify_poll_ms = 20;
        s.notify_provider_timeout_ms = 3000;
        s.jwt_ttl_secs = 24 * 3600;
        // Every new user would get a welcome email; tests of other types turn it off.
        s.notify_types = Some(r#"{"welcome": {"channels": []}}"#.into());
        configure(s);
    })
    .await;
    (app, peers)
}

/// A client holding a service API key.
pub async fn service(app: &TestApp) -> Client {
    let admin = app.admin().await;
    let r = admin.create_api_key("notifier").await;
    assert_eq!(r.status, 201, "{}", r.body);
    app.api
        .with_token(r.body["key"].as_str().unwrap_or_default())
}

/// Polls the notification until `pred` holds for it.
pub async fn wait_for(
    app: &TestApp,
    client: &Client,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let found = app
        .eventually(Duration::from_secs(20), || async {
            let r = client.get(&format!("/notifications/{id}")).await;
            (r.status == 200 && pred(&r.body)).then_some(r.body)
        })
        .await;
    match found {
        Some(v) => v,
        None => {
            let r = client.get(&format!("/notifications/{id}")).await;
            panic!("timed out waiting for {what}: {}", r.body)
        }
    }
}

pub fn delivery<'a>(n: &'a Value, channel: &str) -> &'a Value {
    n["deliveries"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["channel"] == channel))
        .unwrap_or(&Value::Null)
}

pub fn status_is(channel: &'static str, status: &'static str) -> impl Fn(&Value) -> bool {
    move |n| delivery(n, channel)["status"] == status
}

async fn user_id(c: &Client) -> String {
    c.me().await.body["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn now(app: &TestApp) -> Timestamp {
    app.clock.now()
}

#[tokio::test]
async fn each_channel_delivers_and_records_its_status() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let customer = app.customer().await;
    let uid = user_id(&customer).await;
    assert_eq!(
        customer
            .add_address(mercato_testkit::sample_address())
            .await
            .status,
        201
    );
    let r = customer
        .post(
            "/me/devices",
            json!({"platform": "ios", "token": "tok-ios-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let r = svc
        .post(
            "/notifications",
            json!({"user_id": uid, "type": "payment_failed",
                   "data": {"payment_id": "pay_1", "amount": {"amount": 4999, "currency": "USD"},
                            "decline_code": "card_declined"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "accepted");
    let id = r.id();
    assert_eq!(r.body["deliveries"].as_array().map(Vec::len), Some(4));

    let n = wait_for(&app, &svc, &id, "every channel", |n| {
        ["email", "sms", "push"]
            .iter()
            .all(|c| delivery(n, c)["status"] == "sent")
            && delivery(n, "in_app")["status"] == "delivered"
    })
    .await;
    for c in ["email", "sms", "push", "in_app"] {
        let d = delivery(&n, c);
        assert_eq!(d["attempts"], 1, "{c}: {d}");
        assert!(d["sent_at"].is_string(), "{c}: {d}");
        assert!(d["provider"].is_string(), "{c}: {d}");
    }
    assert_eq!(delivery(&n, "sms")["provider"], "sms-1");
    assert_eq!(delivery(&n, "email")["provider"], "email-1");

    // What the providers got: the stable message id, the auth header, the rendered text.
    let mail = peers.smtp.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(mail.len(), 1);
    let email_id = delivery(&n, "email")["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        mail[0]
            .header("message-id")
            .is_some_and(|m| m.contains(&email_id))
    );
    assert!(mail[0].body().contains("USD 49.99"), "{}", mail[0].data);
    let sms = peers.sms.received();
    assert_eq!(sms.len(), 1);
    assert_eq!(
        sms[0].authorization.as_deref(),
        Some("Bearer provider-token")
    );
    assert_eq!(sms[0].body["to"], "+44 20 7946 0000");
    assert_eq!(sms[0].message_id(), delivery(&n, "sms")["id"].as_str());
    assert_eq!(sms[0].idempotency_key.as_deref(), sms[0].message_id());
    let push = peers.push.received();
    assert_eq!(push[0].body["tokens"], json!(["tok-ios-1"]));
    let inbox = customer.get("/me/inbox").await;
    assert_eq!(inbox.body["data"][0]["notification_id"], id.as_str());
    assert!(
        peers.sms2.received().is_empty(),
        "the fallback was not needed"
    );

    // Metrics per channel/provider/status.
    let m = app.api.get("/metrics").await;
    assert!(
        m.body
            .as_str()
            .is_some_and(|t| t.contains("notify_deliveries_total"))
    );
}

#[tokio::test]
async fn a_provider_failing_twice_then_succeeding_delivers_after_backoff_with_three_attempts() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    peers.sms.fail_next(2);
    peers.smtp.fail_next(2);
    let r = svc
        .post(
            "/notifications",
            json!({"recipient": {"phone": "+14155550100", "email": "flaky@example.com"},
                   "type": "payment_failed", "channels": ["sms", "email"],
                   "data": {"payment_id": "pay_2", "amount": {"amount": 100, "currency": "USD"},
                            "decline_code": "insufficient_funds"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = wait_for(&app, &svc, &r.id(), "sms and email sent", |n| {
        delivery(n, "sms")["status"] == "sent" && delivery(n, "email")["status"] == "sent"
    })
    .await;
    for c in ["sms", "email"] {
        let d = delivery(&n, c);
        assert_eq!(d["attempts"], 3, "{c}: {d}");
        assert!(
            d["last_error"].is_string(),
            "the last failure stays visible: {d}"
        );
    }
    assert_eq!(peers.sms.received().len(), 3);
    assert_eq!(peers.sms.accepted_ids().len(), 1);
    assert_eq!(peers.smtp.messages().len(), 1);
    assert_eq!(peers.smtp.transactions(), 3);
}

#[tokio::test]
async fn a_provider_that_always_fails_goes_dead_and_is_redriven_after_it_recovers() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let admin = app.admin().await;
    peers.push.fail_always(true);
    let r = svc
        .post(
            "/notifications",
            json!({"recipient": {"push_tokens": ["tok-promo"]}, "type": "promotional",
                   "data": {"title": "Sale", "message": "Everything 20% off", "campaign_id": "c1"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.id();
    let n = wait_for(&app, &svc, &id, "dead", status_is("push", "dead")).await;
    let d = delivery(&n, "push").clone();
    assert_eq!(d["attempts"], 5, "{d}");
    assert_eq!(d["reason"], "retries_exhausted");
    assert!(
        d["last_error"].as_str().is_some_and(|e| e.contains("503")),
        "{d}"
    );
    assert_eq!(peers.push.received().len(), 5);

    let dl = admin.get("/admin/notifications/dead-letters").await;
    assert_eq!(dl.status, 200, "{}", dl.body);
    let did = d["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        dl.body["data"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == did.as_str()))
    );
    assert_eq!(
        svc.post(
            &format!("/admin/notifications/dead-letters/{did}/redrive"),
            json!({})
        )
        .await
        .status,
        403
    );

    peers.push.fail_always(false);
    let r = admin
        .post(
            &format!("/admin/notifications/dead-letters/{did}/redrive"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = wait_for(
        &app,
        &svc,
        &id,
        "sent after redrive",
        status_is("push", "sent"),
    )
    .await;
    assert_eq!(delivery(&n, "push")["attempts"], 1);
    assert_eq!(peers.push.accepted_ids().len(), 1);
    let again = admin
        .post(
            &format!("/admin/notifications/dead-letters/{did}/redrive"),
            json!({}),
        )
        .await;
    assert_eq!(again.code(), "not_dead_letter");
    let dl = admin.get("/admin/notifications/dead-letters").await;
    assert!(!dl.body.to_string().contains(&did));
}

#[tokio::test]
async fn a_critical_message_falls_back_to_the_second_provider() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    peers.sms.fail_always(true);
    let r = svc
        .post(
            "/notifications",
            json!({"recipient": {"phone": "+14155550101"}, "type": "otp", "channels": ["sms"],
                   "data": {"code": "424242", "minutes": 5}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let n = wait_for(
        &app,
        &svc,
        &r.id(),
        "sent by the fallback",
        status_is("sms", "sent"),
    )
    .await;
    let d = delivery(&n, "sms");
    assert_eq!(d["provider"], "sms-2", "{d}");
    assert_eq!(
        d["attempts"], 4,
        "3 fast attempts on the primary, then the fallback: {d}"
    );
    assert_eq!(peers.sms.received().len(), 3);
    let got = peers.sms2.received();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].body["body"]
            .as_str()
            .is_some_and(|b| b.contains("424242"))
    );
}

#[tokio::test]
async fn a_duplicate_request_id_sends_once() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let body = json!({"recipient": {"phone": "+14155550102"}, "type": "otp", "channels": ["sms"],
                      "request_id": "login-otp-1", "data": {"code": "111111", "minutes": 5}});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (svc, body) = (svc.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            svc.post("/notifications", body).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| panic!("task: {e}"));
        assert_eq!(r.status, 202, "{}", r.body);
        ids.insert(r.id());
        if r.body["deduplicated"] == false {
            fresh += 1;
        }
    }
    assert_eq!(ids.len(), 1, "one notification: {ids:?}");
    assert_eq!(fresh, 1);
    let id = ids.into_iter().next().unwrap_or_default();
    wait_for(&app, &svc, &id, "sent", status_is("sms", "sent")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peers.sms.received().len(), 1, "sent once");

    // Type-level dedup: the same user, type (and order) inside the window is the same message…
    let customer = app.customer().await;
    let uid = user_id(&customer).await;
    let delivered = json!({"user_id": uid, "type": "order_delivered", "channels": ["in_app"],
                           "data": {"order_id": "ord_1", "order_number": "M-1"}});
    let a = svc.post("/notifications", delivered.clone()).await;
    let b = svc.post("/notifications", delivered.clone()).await;
    assert_eq!(a.id(), b.id());
    assert_eq!(b.body["deduplicated"], true);
    // …another order is another message…
    let mut other = delivered.clone();
    other["data"]["order_id"] = json!("ord_2");
    assert_ne!(svc.post("/notifications", other).await.id(), a.id());
    // …and a request can turn type-level dedup off.
    let mut c = delivered.clone();
    c["dedup_window_secs"] = json!(0);
    let c = svc.post("/notifications", c).await;
    assert_ne!(c.id(), a.id());
    assert_eq!(
        customer.get("/me/inbox/unread-count").await.body["unread"],
        3
    );
}

#[tokio::test]
async fn opt_out_is_respected_for_promotional_but_not_for_critical() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let customer = app.customer().await;
    let uid = user_id(&customer).await;
    assert_eq!(
        customer
            .add_address(mercato_testkit::sample_address())
            .await
            .status,
        201
    );
    let prefs = json!({"channels": {"sms": false},
                       "types": {"promotional": {"email": false, "in_app": false}}});
    let r = customer
        .put("/me/notification-preferences", prefs.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(customer.get("/me/notification-preferences").await.body, {
        let mut p = prefs.clone();
        p["quiet_hours"] = Value::Null;
        p
    });

    let r = svc
        .post(
            "/notifications",
            json!({"user_id": uid, "type": "promotional", "channels": ["email", "in_app"],
                   "data": {"title": "Sale", "message": "hi", "campaign_id": "c2"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "suppressed");
    assert_eq!(r.body["reason"], "opted_out");
    assert!(r.body["deliveries"].as_array().is_some_and(|d| {
        d.iter()
            .all(|d| d["status"] == "suppressed" && d["reason"] == "opted_out")
    }));

    let r = svc
        .post(
            "/notifications",
            json!({"user_id": uid, "type": "otp", "channels": ["sms"], "data": {"code": "9", "minutes": 1}}),
        )
        .await;
    assert_eq!(r.body["status"], "accepted", "{}", r.body);
    wait_for(
        &app,
        &svc,
        &r.id(),
        "critical sms sent",
        status_is("sms", "sent"),
    )
    .await;
    assert!(peers.smtp.messages().is_empty());
    assert_eq!(peers.sms.received().len(), 1);

    // Preferences are validated.
    let bad = customer
        .put(
            "/me/notification-preferences",
            json!({"types": {"nope": {"email": false}},
             "quiet_hours": {"start": "25:00", "end": "08:00", "time_zone": "Mars/Base"}}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let fields: Vec<&str> = bad.body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&"types.nope") && fields.contains(&"quiet_hours.start"),
        "{fields:?}"
    );
    assert_eq!(svc.get("/me/notification-preferences").await.status, 403);
}

fn hhmm(t: Timestamp) -> String {
    let z = t.to_jiff().to_zoned(jiff::tz::TimeZone::UTC);
    format!("{:02}:{:02}", z.hour(), z.minute())
}

#[tokio::test]
async fn quiet_hours_defer_until_the_window_ends_but_not_critical_messages() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let customer = app.customer().await;
    let uid = user_id(&customer).await;
    let t = now(&app);
    let start = hhmm(t.plus_secs(-3600));
    let end_at = t.plus_secs(20 * 60 + 60);
    let end = hhmm(end_at);
    let r = customer
        .put(
            "/me/notification-preferences",
            json!({"quiet_hours": {"start": start, "end": end, "time_zone": "UTC"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = svc
        .post(
            "/notifications",
            json!({"user_id": uid, "type": "order_update", "channels": ["email"],
                   "data": {"order_number": "M-9", "message": "late"}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let d = delivery(&r.body, "email").clone();
    assert_eq!(d["status"], "deferred", "{d}");
    assert_eq!(d["reason"], "quiet_hours");
    let due = d["next_attempt_at"]
        .as_str()
        .and_then(Timestamp::parse_rfc3339)
        .unwrap_or_default();
    assert_eq!(hhmm(due), end, "deferred to the end of the window");
    assert!(due > t && due <= end_at);

    // A critical message is not held back.
    let otp = svc
        .post("/notifications", json!({"user_id": uid, "type": "otp", "channels": ["email"], "data": {"code": "1", "minutes": 1}}))
        .await;
    wait_for(
        &app,
        &svc,
        &otp.id(),
        "critical sent",
        status_is("email", "sent"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        peers.smtp.messages().len(),
        1,
        "only the critical one so far"
    );

    app.clock
        .advance(due.since(now(&app)) + Duration::from_secs(1));
    let n = wait_for(
        &app,
        &svc,
        &r.id(),
        "sent at the end of quiet hours",
        status_is("email", "sent"),
    )
    .await;
    assert_eq!(delivery(&n, "email")["attempts"], 1);
    assert_eq!(peers.smtp.messages().len(), 2);
}

#[tokio::test]
async fn the_fourth_email_in_an_hour_is_deferred_to_the_next_hour() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let mut answers = Vec::new();
    for i in 0..4 {
        let r = svc
            .post(
                "/notifications",
                json!({"recipient": {"email": "limited@example.com"}, "type": "account_update",
                       "data": {"message": format!("change {i}")}}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        answers.push(r);
    }
    for r in &answers[..3] {
        assert_eq!(
            delivery(&r.body, "email")["status"],
            "pending",
            "{}",
            r.body
        );
    }
    let fourth = delivery(&answers[3].body, "email").clone();
    assert_eq!(fourth["status"], "deferred", "{fourth}");
    assert_eq!(fourth["reason"], "rate_limited");
    let due = fourth["next_attempt_at"]
        .as_str()
        .and_then(Timestamp::parse_rfc3339)
        .unwrap_or_default();
    assert_eq!(
        due,
        mercato_notify::model::rate_window_start(now(&app)).plus_secs(3600)
    );
    peers.smtp.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peers.smtp.messages().len(), 3, "never more than 3 an hour");

    app.clock
        .advance(due.since(now(&app)) + Duration::from_secs(1));
    wait_for(
        &app,
        &svc,
        &answers[3].id(),
        "sent next hour",
        status_is("email", "sent"),
    )
    .await;
    assert_eq!(peers.smtp.messages().len(), 4, "deferred, not dropped");
}

#[tokio::test]
async fn an_expired_otp_is_never_sent() {
    // No background workers: the test drives the critical lane by hand.
    let (app, peers) = app_with_peers(|s| s.role = "api".into()).await;
    let svc = service(&app).await;
    let expires = now(&app).plus_secs(30);
    let r = svc
        .post(
            "/notifications",
            json!({"recipient": {"phone": "+14155550103"}, "type": "otp", "channels": ["sms"],
                   "expires_at": expires.to_rfc3339(), "data": {"code": "777777", "minutes": 1}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(delivery(&r.body, "sms")["status"], "pending");
    app.clock.advance(Duration::from_secs(60));
    let step = app.notify.lane_step(Priority::Critical).await;
    assert!(step.is_ok(), "{step:?}");
    let n = svc.get(&format!("/notifications/{}", r.id())).await.body;
    assert_eq!(delivery(&n, "sms")["status"], "expired", "{n}");
    assert!(
        peers.sms.received().is_empty(),
        "never handed to the provider"
    );

    // One that is already expired when it arrives is expired at once.
    let r = svc
        .post(
            "/notifications",
            json!({"recipient": {"phone": "+14155550103"}, "type": "otp", "channels": ["sms"],
                   "expires_at": now(&app).plus_secs(-1).to_rfc3339(), "data": {"code": "1", "minutes": 1}}),
        )
        .await;
    assert_eq!(delivery(&r.body, "sms")["status"], "expired", "{}", r.body);
    let _ = app.notify.lane_step(Priority::Critical).await;
    assert!(peers.sms.received().is_empty());
}

async fn post_webhook(
    app: &TestApp,
    provider: &str,
    body: &Value,
    secret: &str,
) -> mercato_testkit::TestResponse {
    let raw = serde_json::to_vec(body).unwrap_or_default();
    let sig = mercato_notify::webhook::sign(secret.as_bytes(), now(app).as_unix_secs(), &raw);
    let resp = app
        .api
        .http
        .post(format!(
            "{}/api/v1/webhooks/notifications/{provider}",
            app.address
        ))
        .header("content-type", "application/json")
        .header("mercato-signature", sig)
        .body(raw)
        .send()
        .await
        .unwrap_or_else(|e| panic!("webhook: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    mercato_testkit::TestResponse {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn provider_webhooks_update_delivered_and_opened_and_forgeries_are_refused() {
    let (app, _peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let r = svc
        .post("/notifications", json!({"recipient": {"phone": "+14155550104"}, "type": "otp", "channels": ["sms"], "data": {"code": "5", "minutes": 1}}))
        .await;
    let n = wait_for(&app, &svc, &r.id(), "sent", status_is("sms", "sent")).await;
    let mid = delivery(&n, "sms")["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Forged, stale, unknown provider, garbage: 400 and nothing changes.
    let ev = json!({"id": "pe_1", "type": "delivered", "message_id": mid});
    let forged = post_webhook(&app, "sms-1", &ev, "not-the-secret").await;
    assert_eq!(forged.status, 400, "{}", forged.body);
    assert_eq!(forged.body["code"], "invalid_webhook");
    let unknown = post_webhook(&app, "carrier-pigeon", &ev, WEBHOOK_SECRET).await;
    assert_eq!(unknown.status, 400);
    let unsigned = app
        .api
        .post("/webhooks/notifications/sms-1", ev.clone())
        .await;
    assert_eq!(unsigned.status, 400);
    let n = svc.get(&format!("/notifications/{}", r.id())).await.body;
    assert_eq!(delivery(&n, "sms")["status"], "sent");

    let ok = post_webhook(&app, "sms-1", &ev, WEBHOOK_SECRET).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["status"], "applied");
    let replay = post_webhook(&app, "sms-1", &ev, WEBHOOK_SECRET).await;
    assert_eq!(replay.body["status"], "duplicate");
    let n = svc.get(&format!("/notifications/{}", r.id())).await.body;
    assert_eq!(delivery(&n, "sms")["status"], "delivered");
    assert!(delivery(&n, "sms")["delivered_at"].is_string());

    let opened = post_webhook(
        &app,
        "sms-1",
        &json!({"id": "pe_2", "type": "opened", "message_id": mid}),
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(opened.body["status"], "applied", "{}", opened.body);
    let n = svc.get(&format!("/notifications/{}", r.id())).await.body;
    assert_eq!(delivery(&n, "sms")["status"], "opened");
    assert!(delivery(&n, "sms")["opened_at"].is_string());
    // Going backwards is ignored.
    let late = post_webhook(
        &app,
        "sms-1",
        &json!({"id": "pe_3", "type": "delivered", "message_id": mid}),
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(late.body["status"], "ignored");
    // Another provider cannot touch this delivery.
    let other = post_webhook(
        &app,
        "sms-2",
        &json!({"id": "pe_4", "type": "bounced", "message_id": mid}),
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(other.body["status"], "ignored");
}

#[tokio::test]
async fn an_unregistered_answer_deactivates_the_device() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let customer = app.customer().await;
    let uid = user_id(&customer).await;
    for t in ["tok-dead", "tok-alive", "tok-hook"] {
        let r = customer
            .post("/me/devices", json!({"platform": "android", "token": t}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    peers.push.unregister("tok-dead");
    let r = svc
        .post(
            "/notifications",
            json!({"user_id": uid, "type": "order_update", "channels": ["push"],
                                        "data": {"order_number": "M-1", "message": "packed"}}),
        )
        .await;
    wait_for(&app, &svc, &r.id(), "sent", status_is("push", "sent")).await;
    let devices = customer.get("/me/devices").await.body;
    let active = |t: &str| {
        devices["data"].as_array().and_then(|d| {
            d.iter()
                .find(|x| x["token"] == t)
                .map(|x| x["active"].clone())
        })
    };
    assert_eq!(active("tok-dead"), Some(json!(false)), "{devices}");
    assert_eq!(active("tok-alive"), Some(json!(true)));

    // Every token dead: the delivery fails as unregistered and they are deactivated.
    peers.push.unregister_all(true);
    let r = svc
        .post(
            "/notifications",
            json!({"user_id": uid, "type": "order_update", "channels": ["push"],
                                        "data": {"order_number": "M-2", "message": "packed"}}),
        )
        .await;
    let n = wait_for(&app, &svc, &r.id(), "failed", status_is("push", "failed")).await;
    assert_eq!(delivery(&n, "push")["reason"], "unregistered");
    let devices = customer.get("/me/devices").await.body;
    assert!(
        devices["data"]
            .as_array()
            .is_some_and(|d| d.iter().all(|x| x["active"] == false)),
        "{devices}"
    );

    // A provider callback can say it too; and a user can delete their own device only.
    let again = customer
        .post(
            "/me/devices",
            json!({"platform": "web", "token": "tok-hook"}),
        )
        .await;
    assert_eq!(again.body["active"], true);
    let hook = post_webhook(
        &app,
        "push-1",
        &json!({"id": "pe_u", "type": "unregistered", "token": "tok-hook"}),
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(hook.body["status"], "applied", "{}", hook.body);
    let dev_id = again.id();
    let other = app.customer().await;
    assert_eq!(
        other.delete(&format!("/me/devices/{dev_id}")).await.status,
        404
    );
    assert_eq!(
        customer
            .delete(&format!("/me/devices/{dev_id}"))
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn the_inbox_lists_marks_read_and_counts_for_its_owner_only() {
    let (app, _peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let customer = app.customer().await;
    let uid = user_id(&customer).await;
    for i in 0..3 {
        let r = svc
            .post("/notifications", json!({"user_id": uid, "type": "order_update", "channels": ["in_app"],
                                            "data": {"order_number": format!("M-{i}"), "message": "update"}}))
            .await;
        assert_eq!(
            delivery(&r.body, "in_app")["status"],
            "delivered",
            "{}",
            r.body
        );
    }
    let page = customer.get("/me/inbox?limit=2").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        page.body["data"][0]["title"], "Update on order M-2",
        "newest first"
    );
    let cursor = page.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rest = customer
        .get(&format!("/me/inbox?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        customer.get("/me/inbox/unread-count").await.body["unread"],
        3
    );

    let item = page.body["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let other = app.customer().await;
    assert_eq!(
        other
            .post(&format!("/me/inbox/{item}/read"), json!({}))
            .await
            .status,
        404
    );
    assert_eq!(other.get("/me/inbox").await.body["data"], json!([]));
    let r = customer
        .post(&format!("/me/inbox/{item}/read"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["read"], true);
    assert_eq!(
        customer.get("/me/inbox/unread-count").await.body["unread"],
        2
    );
    let unread = customer.get("/me/inbox?unread=true").await;
    assert_eq!(unread.body["data"].as_array().map(Vec::len), Some(2));
    // Reading it shows on the delivery.
    let nid = page.body["data"][0]["notification_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let n = svc.get(&format!("/notifications/{nid}")).await.body;
    assert_eq!(delivery(&n, "in_app")["status"], "read");
    assert_eq!(
        customer.get(&format!("/notifications/{nid}")).await.status,
        200,
        "the recipient may look"
    );
    assert_eq!(
        other.get(&format!("/notifications/{nid}")).await.status,
        404
    );

    let all = customer.post("/me/inbox/read-all", json!({})).await;
    assert_eq!(all.body["updated"], 2);
    assert_eq!(
        customer.get("/me/inbox/unread-count").await.body["unread"],
        0
    );
    assert_eq!(customer.get("/me/inbox?unread=maybe").await.status, 422);
    assert_eq!(customer.get("/me/inbox?cursor=!!").await.status, 400);
}

/// Reads SSE events (`id`, `data`) from a streaming response until `n` arrived or time runs out.
async fn read_events(
    resp: &mut reqwest::Response,
    buf: &mut String,
    n: usize,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut id = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                out.push((id, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
        if out.len() >= n {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => buf.push_str(&String::from_utf8_lossy(&bytes)),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn the_inbox_stream_pushes_new_items_and_replays_missed_ones_after_last_event_id() {
    let (app, _peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let customer = app.customer().await;
    let uid = user_id(&customer).await;
    let token = customer.token.clone().unwrap_or_default();
    let url = format!("{}/api/v1/me/inbox/stream", app.address);
    let send = |i: usize| {
        let (svc, uid) = (svc.clone(), uid.clone());
        async move {
            let r = svc
                .post("/notifications", json!({"user_id": uid, "type": "order_update", "channels": ["in_app"],
                                                "data": {"order_number": format!("S-{i}"), "message": "live"}}))
                .await;
            assert_eq!(r.status, 202, "{}", r.body);
        }
    };
    let mut resp = app
        .api
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"))
    );
    send(1).await;
    let mut buf = String::new();
    let got = read_events(&mut resp, &mut buf, 1).await;
    assert_eq!(got.len(), 1, "pushed live");
    assert_eq!(got[0].0, "1");
    assert_eq!(got[0].1["title"], "Update on order S-1");
    drop(resp);

    // Missed while disconnected: replayed after Last-Event-ID, then live again.
    send(2).await;
    send(3).await;
    let mut resp = app
        .api
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = String::new();
    let got = read_events(&mut resp, &mut buf, 2).await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["2", "3"]);
    send(4).await;
    let got = read_events(&mut resp, &mut buf, 1).await;
    assert_eq!(got.first().map(|g| g.0.as_str()), Some("4"));
    drop(resp);

    let bad = app
        .api
        .http
        .get(&url)
        .bearer_auth(&token)
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(app.api.get("/me/inbox/stream").await.status, 401);
}

#[tokio::test]
async fn a_worker_killed_mid_delivery_delivers_exactly_once_after_the_lease() {
    // No background workers; a 1-second lease; a slow provider.
    let (app, peers) = app_with_peers(|s| {
        s.role = "api".into();
        s.notify_lease_secs = 1;
    })
    .await;
    let svc = service(&app).await;
    peers.sms.delay(Duration::from_millis(1500));
    let r = svc
        .post("/notifications", json!({"recipient": {"phone": "+14155550105"}, "type": "payment_failed",
                                        "channels": ["sms"], "priority": "normal",
                                        "data": {"payment_id": "pay_k", "amount": {"amount": 1, "currency": "USD"}, "decline_code": "x"}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let notify = app.notify.clone();
    let worker = tokio::spawn(async move { notify.lane_step(Priority::Normal).await });
    let got = peers
        .sms
        .wait_for_requests(1, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1, "the worker called the provider");
    worker.abort(); // killed mid-delivery: the outcome is never recorded
    let _ = worker.await;
    let n = svc.get(&format!("/notifications/{}", r.id())).await.body;
    assert_eq!(
        delivery(&n, "sms")["status"],
        "processing",
        "still claimed: {n}"
    );

    // Before the lease runs out nobody takes it; after, the job is claimed again.
    peers.sms.delay(Duration::ZERO);
    let early = app.notify.lane_step(Priority::Normal).await;
    assert!(
        matches!(early, Ok(mercato_kernel::jobs::Outcome::Idle)),
        "{early:?}"
    );
    app.clock.advance(Duration::from_secs(2));
    let again = app.notify.lane_step(Priority::Normal).await;
    assert!(
        matches!(again, Ok(mercato_kernel::jobs::Outcome::Worked)),
        "{again:?}"
    );
    let n = svc.get(&format!("/notifications/{}", r.id())).await.body;
    let d = delivery(&n, "sms");
    assert_eq!(d["status"], "sent", "{n}");
    assert_eq!(d["attempts"], 2);
    tokio::time::sleep(Duration::from_millis(1700)).await; // let the first call finish at the sink
    let received = peers.sms.received();
    assert_eq!(
        received.len(),
        2,
        "at least once: the provider saw it twice"
    );
    assert_eq!(
        received[0].message_id(),
        received[1].message_id(),
        "with one stable message id"
    );
    assert_eq!(
        peers.sms.accepted_ids().len(),
        1,
        "so the person gets it exactly once"
    );
}

#[tokio::test]
async fn many_racing_producers_lose_no_notification_and_duplicate_none() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        for _ in 0..2 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                svc.post("/notifications", json!({"recipient": {"email": format!("race-{i}@example.com")},
                    "type": "account_update", "request_id": format!("race-{i}"), "data": {"message": format!("m{i}")}}))
                    .await
            }));
        }
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 202, "{}", r.body);
        ids.insert(r.id());
    }
    assert_eq!(ids.len(), 60);
    let mail = peers.smtp.wait_for(60, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mail = if mail.len() == 60 {
        peers.smtp.messages()
    } else {
        mail
    };
    assert_eq!(mail.len(), 60, "none lost, none twice");
    let distinct: std::collections::HashSet<String> =
        mail.iter().filter_map(|m| m.header("message-id")).collect();
    assert_eq!(distinct.len(), 60);
    for id in &ids {
        wait_for(&app, &svc, id, "sent", status_is("email", "sent")).await;
    }
}

#[tokio::test]
async fn templates_are_validated_at_save_time_previewed_and_localised_with_fallback() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let admin = app.admin().await;
    let svc = service(&app).await;

    let bad = admin
        .post(
            "/notification-templates/order_update",
            json!({"channel": "email", "locale": "fr",
              "subject": "Commande {{ order_number }}", "body": "Bonjour\n{% if %}"}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["code"], "template_invalid");
    assert_eq!(bad.body["line"], 2);
    let unknown = admin
        .post(
            "/notification-templates/order_update",
            json!({"channel": "email", "locale": "fr",
              "subject": "Commande {{ order_number }}", "body": "Bonjour\n\n{{ numero }}"}),
        )
        .await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.body["line"], 3);
    assert!(
        unknown.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("numero"))
    );
    let missing_subject = admin
        .post(
            "/notification-templates/order_update",
            json!({"channel": "email", "body": "x"}),
        )
        .await;
    assert_eq!(missing_subject.status, 422);
    assert_eq!(
        svc.post(
            "/notification-templates/order_update",
            json!({"channel": "sms", "body": "x"})
        )
        .await
        .status,
        403
    );

    let fr = json!({"channel": "email", "locale": "fr", "subject": "Commande {{ order_number }}",
                    "body": "Du nouveau pour {{ order_number }} : {{ message }}"});
    let r = admin
        .post("/notification-templates/order_update", fr.clone())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    assert_eq!(
        admin
            .post("/notification-templates/order_update", fr.clone())
            .await
            .status,
        409
    );
    let mut stale = fr.clone();
    stale["version"] = json!(0);
    let conflict = admin
        .put("/notification-templates/order_update", stale)
        .await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(conflict.body["code"], "template_version_conflict");
    let mut next = fr.clone();
    next["version"] = json!(1);
    next["body"] = json!("Nouvelles de {{ order_number }} : {{ message }}");
    let r = admin
        .put("/notification-templates/order_update", next)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["version"], 2);

    let view = admin.get("/notification-templates/order_update").await;
    assert_eq!(view.status, 200);
    assert!(view.body["variants"].as_array().is_some_and(|v| {
        v.iter()
            .any(|x| x["locale"] == "fr" && x["builtin"] == false)
    }));
    assert_eq!(
        admin
            .get("/notification-templates/no_such_template")
            .await
            .status,
        404
    );

    let p = admin
        .post(
            "/notification-templates/order_update/preview",
            json!({"data": {"order_number": "M-7", "message": "parti"},
              "channels": ["email"], "locale": "fr"}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["data"][0]["body"], "Nouvelles de M-7 : parti");
    let p = admin
        .post(
            "/notification-templates/order_update/preview",
            json!({"data": {}}),
        )
        .await;
    assert_eq!(
        p.status, 422,
        "missing variables fail the preview: {}",
        p.body
    );

    // fr is used for fr; de falls back to the default locale (the built-in English).
    for (locale, expect) in [("fr", "Nouvelles de M-8"), ("de", "An update on order M-8")] {
        let r = svc
            .post("/notifications", json!({"recipient": {"email": format!("{locale}@example.com")}, "type": "order_update",
                  "channels": ["email"], "locale": locale, "data": {"order_number": "M-8", "message": "x"}}))
            .await;
        wait_for(&app, &svc, &r.id(), "sent", status_is("email", "sent")).await;
        let mail = peers.smtp.messages();
        let m = mail
            .iter()
            .find(|m| m.to.contains(&format!("{locale}@example.com")))
            .cloned();
        assert!(
            m.as_ref().is_some_and(|m| m.body().contains(expect)),
            "{locale}: {:?}",
            m.map(|m| m.data)
        );
    }

    // Data that does not fit the template fails that delivery, visibly.
    let r = svc
        .post("/notifications", json!({"recipient": {"email": "x@example.com"}, "type": "order_update", "channels": ["email"], "data": {}}))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["status"], "suppressed");
    let d = delivery(&r.body, "email");
    assert_eq!(d["status"], "failed");
    assert_eq!(d["reason"], "template_error");
}

#[tokio::test]
async fn bad_input_is_a_clear_problem_and_changes_nothing() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let customer = app.customer().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM notifications WHERE type <> 'welcome'")
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or(-1)
    };
    let before = count().await;
    let cases = [
        (
            json!({"recipient": {"email": "a@b.co"}, "type": "fax_blast", "data": {}}),
            422,
            "unknown_notification_type",
        ),
        (json!({"type": "otp", "data": {}}), 422, "validation_failed"),
        (
            json!({"recipient": {"email": "nope"}, "type": "otp", "data": {}}),
            422,
            "validation_failed",
        ),
        (
            json!({"recipient": {"email": "a@b.co"}, "type": "otp", "channels": ["fax"]}),
            422,
            "validation_failed",
        ),
        (
            json!({"recipient": {"email": "a@b.co"}, "type": "otp", "priority": "urgent"}),
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": "usr_01NOSUCHUSER", "type": "otp", "data": {}}),
            422,
            "validation_failed",
        ),
        (
            json!({"recipient": {"email": "a@b.co"}, "type": "otp", "data": [1]}),
            422,
            "validation_failed",
        ),
        (
            json!({"recipient": {"email": "a@b.co"}, "type": "otp", "surprise": 1}),
            422,
            "validation_failed",
        ),
    ];
    for (body, status, code) in cases {
        let r = svc.post("/notifications", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.code(), code, "{body}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    let ok = json!({"recipient": {"email": "a@b.co"}, "type": "otp", "data": {"code": "1", "minutes": 1}});
    assert_eq!(
        customer.post("/notifications", ok.clone()).await.status,
        403
    );
    assert_eq!(app.api.post("/notifications", ok.clone()).await.status, 401);
    assert_eq!(svc.get("/notifications/ntf_nope").await.status, 404);
    assert_eq!(count().await, before, "nothing was written");
    assert!(peers.smtp.messages().is_empty());

    // Idempotency-Key is honoured: the same key replays the first answer.
    let a = svc.post_idem("/notifications", ok.clone(), "k-1").await;
    let b = svc.post_idem("/notifications", ok.clone(), "k-1").await;
    assert_eq!(a.status, 202);
    assert_eq!(a.id(), b.id());
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn a_bulk_send_accepts_each_recipient_on_its_own() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let svc = service(&app).await;
    let mut recipients: Vec<Value> = (0..30)
        .map(|i| json!({"push_tokens": [format!("bulk-{i}")]}))
        .collect();
    recipients.push(json!({"email": "not-an-email"}));
    recipients.push(json!({"push_tokens": ["bulk-0"], "request_id": "dup"}));
    recipients.push(json!({"push_tokens": ["bulk-x"], "request_id": "dup"}));
    let r = svc
        .post("/notifications/bulk", json!({"type": "promotional", "channels": ["push"],
              "data": {"title": "Sale", "message": "hi", "campaign_id": "bulk"}, "recipients": recipients}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["accepted"], 32);
    assert_eq!(
        r.body["deduplicated"], 2,
        "bulk-0 twice in one campaign, and request_id dup twice"
    );
    assert_eq!(r.body["rejected"][0]["index"], 30);
    assert!(
        r.body["batch_id"]
            .as_str()
            .is_some_and(|b| b.starts_with("nbt_"))
    );
    let got = peers
        .push
        .wait_for_accepted(30, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), 30);
    let empty = svc
        .post(
            "/notifications/bulk",
            json!({"type": "promotional", "recipients": []}),
        )
        .await;
    assert_eq!(empty.status, 422);
    let unknown = svc
        .post(
            "/notifications/bulk",
            json!({"type": "nope", "recipients": [{"email": "a@b.co"}]}),
        )
        .await;
    assert_eq!(unknown.code(), "unknown_notification_type");

    let admin = app.admin().await;
    let push_sent = || async {
        let s = admin.get("/admin/notifications/stats").await;
        assert_eq!(s.status, 200, "{}", s.body);
        let push = s.body["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["channel"] == "push").cloned())
            .unwrap_or_default();
        (push["sent"] == 30).then_some((s, push))
    };
    let Some((s, push)) = app.eventually(Duration::from_secs(10), push_sent).await else {
        panic!(
            "stats never showed 30 push sent: {}",
            admin.get("/admin/notifications/stats").await.body
        )
    };
    assert!(push["p99_ms"].as_f64().is_some());
    assert_eq!(s.body["queues"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        admin
            .get("/admin/notifications/stats?from=yesterday")
            .await
            .status,
        422
    );
    assert_eq!(svc.get("/admin/notifications/stats").await.status, 403);
}

#[tokio::test]
async fn commerce_events_become_notifications_once_per_event() {
    use mercato_kernel::outbox::{Event, NewEvent};
    let (app, peers) = app_with_peers(|s| s.notify_types = None).await;
    let admin = app.admin().await;
    let customer = app.customer().await;
    let me = customer.me().await.body;
    let uid = me["id"].as_str().unwrap_or_default().to_owned();
    let email = me["email"].as_str().unwrap_or_default().to_owned();

    // user.registered (emitted by identity today) → welcome.
    let welcomed = app
        .eventually(Duration::from_secs(10), || async {
            peers
                .smtp
                .messages()
                .into_iter()
                .find(|m| m.to.contains(&email))
        })
        .await;
    assert!(welcomed.is_some_and(|m| {
        m.header("subject")
            .is_some_and(|s| s.starts_with("Welcome to Mercato"))
    }));

    // Built with the producers' payload types (mercato-events), as the producers do.
    use mercato_events::{inventory, orders, payments};
    let money = mercato_kernel::Money::new(2500, mercato_kernel::Currency::USD);
    let order = |status: &str| orders::OrderSummary {
        order_id: "ord_e1".into(),
        order_number: "M-100".into(),
        customer_id: uid.clone(),
        checkout_id: "chk_e1".into(),
        status: status.into(),
        guest: None,
        attribution: None,
        total: money,
        items: vec![orders::OrderLine {
            sku: "TEE".into(),
            name: "T-shirt".into(),
            quantity: 2,
            product_id: "prd_e1".into(),
            seller_id: "usr_e1".into(),
            unit_price: mercato_kernel::Money::new(1250, mercato_kernel::Currency::USD),
        }],
    };
    let events = [
        NewEvent::of(&orders::OrderConfirmed {
            order: order("confirmed"),
            reason: None,
        }),
        NewEvent::of(&payments::PaymentDeclined {
            payment_id: "pay_e1".into(),
            checkout_id: "chk_e1".into(),
            customer_id: uid.clone(),
            amount: money,
            decline_code: "card_declined".into(),
        }),
        NewEvent::of(&orders::OrderShipped {
            order: order("shipped"),
            reason: Some("shipped".into()),
            carrier: "UPS".into(),
            tracking_number: "1Z".into(),
        }),
        NewEvent::of(&orders::OrderDelivered {
            order: order("delivered"),
            reason: None,
        }),
        NewEvent::of(&orders::OrderRefunded {
            order: order("refunded"),
            reason: None,
            amount: money,
            refund_id: None,
            source: None,
        }),
        NewEvent::of(&orders::OrderReturned {
            order: order("returned"),
            reason: None,
            return_id: "ret_e1".into(),
        }),
        NewEvent::of(&inventory::LowStock {
            sku: "TEE".into(),
            warehouse_id: "wh_e1".into(),
            available: 3,
            threshold: 10,
        }),
    ];
    let mut appended = Vec::new();
    let db = &app.state.kernel.db;
    let mut tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
    for e in events {
        let (t, data) = (e.event_type.clone(), e.data.clone());
        let id = mercato_kernel::outbox::append(&mut tx, now(&app), e)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        appended.push((id, t, data));
    }
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));

    // The customer's inbox: welcome + six order/payment messages; the admin's: low stock.
    let inbox_types = |c: Client| async move {
        let r = c.get("/me/inbox?limit=100").await;
        let mut t: Vec<String> = r.body["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|i| i["type"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        t.sort();
        t
    };
    let want = vec![
        "order_confirmed",
        "order_delivered",
        "order_shipped",
        "payment_failed",
        "refund_issued",
        "return_approved",
        "welcome",
    ];
    let got = app
        .eventually(Duration::from_secs(15), || async {
            let t = inbox_types(customer.clone()).await;
            (t == want).then_some(t)
        })
        .await;
    assert!(
        got.is_some(),
        "customer inbox: {:?}",
        inbox_types(customer.clone()).await
    );
    let admin_types = app
        .eventually(Duration::from_secs(10), || async {
            let t = inbox_types(admin.clone()).await;
            t.contains(&"low_stock".to_owned()).then_some(t)
        })
        .await;
    assert!(
        admin_types.is_some(),
        "admin inbox: {:?}",
        inbox_types(admin.clone()).await
    );
    let confirmation = app
        .eventually(Duration::from_secs(10), || async {
            peers.smtp.messages().into_iter().find(|m| {
                m.header("subject")
                    .is_some_and(|s| s.contains("M-100 confirmed"))
            })
        })
        .await;
    assert!(
        confirmation
            .is_some_and(|m| m.body().contains("2 x T-shirt") && m.body().contains("USD 25.00"))
    );

    // Redelivering an event changes nothing: one notification per event id.
    let consumer = mercato_notify::consumer(&app.notify);
    for (id, t, data) in &appended {
        let event = Event {
            id: id.clone(),
            event_type: t.clone(),
            occurred_at: now(&app),
            aggregate_type: "order".into(),
            aggregate_id: "ord_e1".into(),
            correlation_id: None,
            causation_id: None,
            version: 1,
            data: data.clone(),
        };
        consumer
            .handle(&event)
            .await
            .unwrap_or_else(|e| panic!("{t}: {e:#}"));
    }
    assert_eq!(inbox_types(customer.clone()).await, want);
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE request_id LIKE 'event:%'")
            .fetch_one(db.reader())
            .await
            .unwrap_or_default();
    let admins: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE type = 'low_stock'")
            .fetch_one(db.reader())
            .await
            .unwrap_or_default();
    // welcomes (the admin's and the customer's) + six customer messages + one per admin.
    assert_eq!(
        count,
        2 + 6 + admins,
        "one notification per event (and admin)"
    );
}
