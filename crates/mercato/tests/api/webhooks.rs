//! Merchant webhooks end to end: endpoints are testkit HTTP peers; every signature is checked
//! with an implementation of the Standard Webhooks verification written here from the
//! specification (not the server's code).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use mercato_kernel::config::Settings;
use mercato_testkit::peers::{HttpSink, ReceivedRequest};
use mercato_testkit::{Client, TestApp, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(|s| {
        s.webhooks_allow_private_targets = true;
        s.webhooks_retry_base_ms = 10;
        configure(s);
    })
    .await
}

/// Standard Webhooks verification, from the specification: the signed content is
/// `{webhook-id}.{webhook-timestamp}.{body}`, the key is the base64 after `whsec_`, and the
/// header holds space-separated `v1,<base64 HMAC-SHA256>` entries, any of which may match.
fn verifies(secret: &str, req: &ReceivedRequest, max_skew_secs: Option<i64>) -> bool {
    let (Some(id), Some(ts), Some(sigs)) = (
        req.headers.get("webhook-id"),
        req.headers.get("webhook-timestamp"),
        req.headers.get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<i64>() else {
        return false;
    };
    if let Some(skew) = max_skew_secs {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if (now - ts_num).abs() > skew {
            return false;
        }
    }
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| B64.decode(k).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return false;
    };
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(&req.raw);
    mac.update(&content);
    let expected = B64.encode(mac.finalize().into_bytes());
    sigs.split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

async fn create(admin: &Client, url: &str, events: Value) -> (String, String) {
    let r = admin
        .post(
            "/admin/webhooks",
            json!({"url": url, "events": events, "description": "test endpoint"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{}", r.body);
    assert_eq!(r.body["status"], "enabled");
    (r.id(), secret)
}

async fn deliveries(admin: &Client, endpoint: &str) -> Vec<Value> {
    let r = admin
        .get(&format!("/admin/webhooks/{endpoint}/deliveries?limit=100"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"].as_array().cloned().unwrap_or_default()
}

/// Waits until the delivery `id` of `endpoint` has `status`; answers it.
async fn delivery_in(
    app: &TestApp,
    admin: &Client,
    endpoint: &str,
    id: &str,
    status: &str,
) -> Value {
    let d = app
        .eventually(WAIT, || async {
            deliveries(admin, endpoint)
                .await
                .into_iter()
                .find(|d| d["id"] == id && d["status"] == status)
        })
        .await;
    match d {
        Some(d) => d,
        None => panic!(
            "delivery {id} never became {status}: {:?}",
            deliveries(admin, endpoint).await
        ),
    }
}

#[tokio::test]
async fn an_endpoint_receives_each_confirmed_order_once_with_a_verifiable_signature() {
    let app = app_with(|_| {}).await;
    let sink = HttpSink::start_webhook_receiver().await;
    let (admin, sku, wh, _) = crate::inventory::stocked(&app, "whk").await;
    admin.set_stock(&sku, &wh, 10).await;
    let (endpoint, secret) = create(&admin, &sink.url, json!(["order.*"])).await;
    let shown = admin.get(&format!("/admin/webhooks/{endpoint}")).await;
    assert_eq!(shown.status, 200);
    assert!(
        shown.body.get("secret").is_none(),
        "the secret is shown once"
    );

    let mut orders = Vec::new();
    for _ in 0..3 {
        let (_, order) = crate::orders::bought(&app, &sku, 1).await;
        orders.push(order["id"].as_str().unwrap_or_default().to_owned());
    }
    let confirmed = |reqs: &[ReceivedRequest]| -> Vec<ReceivedRequest> {
        reqs.iter()
            .filter(|r| r.body["type"] == "order.confirmed")
            .cloned()
            .collect()
    };
    let got = app
        .eventually(WAIT, || async {
            let c = confirmed(&sink.received());
            (c.len() >= orders.len()).then_some(c)
        })
        .await
        .unwrap_or_default();
    assert_eq!(got.len(), orders.len(), "one order.confirmed per order");
    // Everything queued for the endpoint has been delivered: nothing more will arrive.
    app.eventually(WAIT, || async {
        let ds = deliveries(&admin, &endpoint).await;
        (!ds.is_empty() && ds.iter().all(|d| d["status"] == "delivered")).then_some(())
    })
    .await
    .expect("every delivery delivered");
    let all = sink.received();
    let got = confirmed(&all);
    let mut per_order: HashMap<String, usize> = HashMap::new();
    for r in &got {
        assert!(
            verifies(&secret, r, Some(300)),
            "signature of {:?}",
            r.headers
        );
        assert!(!verifies(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            r,
            None
        ));
        assert_eq!(
            r.headers.get("webhook-id").map(String::as_str),
            r.body["id"].as_str()
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(r.body["aggregate_type"], "order");
        assert_eq!(r.body["data"]["status"], "confirmed");
        *per_order
            .entry(
                r.body["data"]["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    for o in &orders {
        assert_eq!(per_order.get(o), Some(&1), "order {o} confirmed once");
    }
    // Only order events were sent (the filter), each event once.
    assert!(all.iter().all(|r| {
        r.body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("order."))
    }));
    let mut ids: Vec<&str> = all.iter().filter_map(|r| r.body["id"].as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "no event was sent twice");
}

#[tokio::test]
async fn an_endpoint_failing_twice_gets_the_event_on_the_third_attempt() {
    let app = app_with(|_| {}).await;
    let sink = HttpSink::start_webhook_receiver().await;
    let admin = app.admin().await;
    let (endpoint, secret) = create(&admin, &sink.url, json!(["webhook.test"])).await;
    sink.fail_next(2);
    let r = admin
        .post(&format!("/admin/webhooks/{endpoint}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let d = delivery_in(&app, &admin, &endpoint, &r.id(), "delivered").await;
    assert_eq!(d["attempt_count"], 3, "{d}");
    let codes: Vec<Value> = d["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(503), json!(503), json!(200)], "{d}");
    assert_eq!(d["attempts"][0]["error"], "HTTP 503");
    assert!(d["attempts"][2]["latency_ms"].as_i64().is_some());
    let reqs = sink.received();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter()
            .all(|r| r.headers.get("webhook-id") == reqs[0].headers.get("webhook-id")),
        "retries carry the same webhook-id"
    );
    assert!(reqs.iter().all(|r| verifies(&secret, r, Some(300))));
    assert_eq!(reqs[2].body["type"], "webhook.test");
}

#[tokio::test]
async fn an_always_failing_endpoint_goes_dead_and_is_redelivered() {
    let app = app_with(|s| s.webhooks_max_attempts = 3).await;
    let sink = HttpSink::start_webhook_receiver().await;
    let admin = app.admin().await;
    let (endpoint, secret) = create(&admin, &sink.url, json!(["*"])).await;
    sink.fail_always(true);
    let r = admin
        .post(&format!("/admin/webhooks/{endpoint}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.id();
    let dead = delivery_in(&app, &admin, &endpoint, &id, "dead").await;
    assert_eq!(dead["attempt_count"], 3, "{dead}");
    assert_eq!(sink.received().len(), 3);

    sink.fail_always(false);
    let r = admin
        .post(
            &format!("/admin/webhooks/deliveries/{id}/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let done = delivery_in(&app, &admin, &endpoint, &id, "delivered").await;
    assert_eq!(done["attempt_count"], 4, "{done}");
    assert_eq!(done["attempts"][3]["attempt"], 4);
    let reqs = sink.received();
    assert_eq!(reqs.len(), 4);
    assert_eq!(
        reqs[3].headers.get("webhook-id"),
        reqs[0].headers.get("webhook-id")
    );
    assert_eq!(reqs[3].raw, reqs[0].raw, "the same body is redelivered");
    assert!(verifies(&secret, &reqs[3], Some(300)));

    let missing = admin
        .post("/admin/webhooks/deliveries/whd_NOPE/redeliver", json!({}))
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn private_loopback_and_link_local_targets_are_refused() {
    // The default: private targets are not allowed.
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    for url in [
        "http://10.0.0.1/hooks",
        "http://127.0.0.1:9/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://192.168.1.20/",
        "http://[::1]:8080/",
        "http://localhost:8080/hooks",
        "ftp://example.com/hooks",
        "not a url",
    ] {
        let r = admin
            .post(
                "/admin/webhooks",
                json!({"url": url, "events": ["order.*"]}),
            )
            .await;
        assert_eq!(r.status, 422, "{url}: {}", r.body);
        assert_eq!(r.code(), "invalid_webhook_url", "{url}");
    }
    let listed = admin.get("/admin/webhooks").await;
    assert_eq!(listed.body["data"], json!([]), "nothing was saved");

    let r = admin
        .patch(
            "/admin/webhooks/wh_NOPE",
            json!({"url": "http://10.0.0.1/"}),
        )
        .await;
    assert_eq!(
        r.status, 404,
        "an unknown endpoint is 404 before its body is judged"
    );
}

#[tokio::test]
async fn endpoints_are_listed_updated_disabled_and_deleted() {
    let app = app_with(|_| {}).await;
    let admin = app.admin().await;
    let (a, _) = create(&admin, "http://127.0.0.1:9/a", json!(["order.*"])).await;
    let (b, _) = create(&admin, "http://127.0.0.1:9/b", json!(["payment.captured"])).await;
    let r = admin.get("/admin/webhooks?limit=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"][0]["id"], a.as_str());
    let cursor = r.body["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = admin
        .get(&format!("/admin/webhooks?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(r.body["data"][0]["id"], b.as_str());

    for bad in [
        json!({"events": []}),
        json!({"events": ["nope.*"]}),
        json!({"events": ["order.nope"]}),
        json!({"status": "paused"}),
        json!({"surprise": 1}),
    ] {
        let r = admin
            .patch(&format!("/admin/webhooks/{a}"), bad.clone())
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let r = admin
        .patch(
            &format!("/admin/webhooks/{a}"),
            json!({"events": ["order.confirmed", "payment.*"], "description": null, "status": "disabled"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["events"], json!(["order.confirmed", "payment.*"]));
    assert_eq!(r.body["description"], Value::Null);
    assert_eq!(r.body["status"], "disabled");
    assert_eq!(r.body["disabled_reason"], "admin");
    let r = admin
        .patch(
            &format!("/admin/webhooks/{a}"),
            json!({"status": "enabled"}),
        )
        .await;
    assert_eq!(r.body["status"], "enabled");
    assert_eq!(r.body["disabled_reason"], Value::Null);

    assert_eq!(
        admin.delete(&format!("/admin/webhooks/{a}")).await.status,
        204
    );
    assert_eq!(admin.get(&format!("/admin/webhooks/{a}")).await.status, 404);
    assert_eq!(
        admin.delete(&format!("/admin/webhooks/{a}")).await.status,
        404
    );
    assert_eq!(admin.get("/admin/webhooks/garbage").await.status, 404);
}

#[tokio::test]
async fn rotating_the_secret_keeps_both_keys_verifying_during_the_grace_period() {
    let app = app_with(|s| s.jwt_ttl_secs = 30 * 86_400).await;
    let sink = HttpSink::start_webhook_receiver().await;
    let admin = app.admin().await;
    let (endpoint, old) = create(&admin, &sink.url, json!(["webhook.test"])).await;
    let send = || async {
        let r = admin
            .post(&format!("/admin/webhooks/{endpoint}/test"), json!({}))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        delivery_in(&app, &admin, &endpoint, &r.id(), "delivered").await;
        sink.received().last().cloned().expect("a request")
    };
    let before = send().await;
    assert!(verifies(&old, &before, Some(300)));

    let r = admin
        .post(
            &format!("/admin/webhooks/{endpoint}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.body["secret"].as_str().unwrap_or_default().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(r.body["previous_secret_expires_at"].is_string());

    let during = send().await;
    let sigs = during
        .headers
        .get("webhook-signature")
        .cloned()
        .unwrap_or_default();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    assert!(verifies(&new, &during, Some(300)), "the new key verifies");
    assert!(
        verifies(&old, &during, Some(300)),
        "the old key still verifies"
    );

    // After the 24 h grace period only the new key signs.
    app.clock.advance(Duration::from_secs(25 * 3600));
    let after = send().await;
    assert!(verifies(&new, &after, None));
    assert!(!verifies(&old, &after, None));
}

#[tokio::test]
async fn an_endpoint_failing_for_three_days_is_disabled_and_admins_are_notified() {
    let app = app_with(|s| s.jwt_ttl_secs = 30 * 86_400).await;
    let sink = HttpSink::start_webhook_receiver().await;
    let admin = app.admin().await;
    let (endpoint, _) = create(&admin, &sink.url, json!(["webhook.test"])).await;
    sink.fail_always(true);
    let r = admin
        .post(&format!("/admin/webhooks/{endpoint}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202);
    app.eventually(WAIT, || async {
        let e = admin.get(&format!("/admin/webhooks/{endpoint}")).await;
        e.body["failing_since"].is_string().then_some(())
    })
    .await
    .expect("the failure streak started");
    app.clock.advance(Duration::from_secs(3 * 86_400 + 60));
    let e = app
        .eventually(WAIT, || async {
            let e = admin.get(&format!("/admin/webhooks/{endpoint}")).await;
            (e.body["status"] == "disabled").then_some(e.body)
        })
        .await
        .expect("the endpoint is disabled");
    assert_eq!(e["disabled_reason"], "failing");
    let inbox = app
        .eventually(WAIT, || async {
            let r = admin.get("/me/inbox").await;
            let items = r.body["data"].as_array().cloned().unwrap_or_default();
            items.into_iter().find(|i| i["type"] == "webhook_disabled")
        })
        .await;
    assert!(inbox.is_some(), "the admin is notified");
    // A disabled endpoint gets nothing more.
    let n = sink.received().len();
    let r = admin
        .post(&format!("/admin/webhooks/{endpoint}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202);
    let pending = deliveries(&admin, &endpoint).await;
    assert!(
        pending
            .iter()
            .any(|d| d["id"] == r.id().as_str() && d["status"] == "pending")
    );
    assert_eq!(sink.received().len(), n);
}

#[tokio::test]
async fn customers_get_403_on_every_webhook_route_even_with_a_malformed_body() {
    let app = app_with(|_| {}).await;
    let admin = app.admin().await;
    let (endpoint, _) = create(&admin, "http://127.0.0.1:9/x", json!(["*"])).await;
    let customer = app.customer().await;
    let routes = [
        (Method::POST, "/admin/webhooks".to_owned()),
        (Method::GET, "/admin/webhooks".to_owned()),
        (Method::GET, format!("/admin/webhooks/{endpoint}")),
        (Method::PATCH, format!("/admin/webhooks/{endpoint}")),
        (Method::DELETE, format!("/admin/webhooks/{endpoint}")),
        (
            Method::POST,
            format!("/admin/webhooks/{endpoint}/rotate-secret"),
        ),
        (Method::POST, format!("/admin/webhooks/{endpoint}/test")),
        (
            Method::GET,
            format!("/admin/webhooks/{endpoint}/deliveries"),
        ),
        (
            Method::POST,
            "/admin/webhooks/deliveries/whd_X/redeliver".to_owned(),
        ),
    ];
    for (method, path) in &routes {
        let r = customer
            .send_raw(
                method.clone(),
                path,
                "application/json",
                b"{\"url\": 12, oops".to_vec(),
            )
            .await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        let r = customer
            .send(
                method.clone(),
                path,
                Some(&json!({"url": "http://10.0.0.1/"})),
                &[],
            )
            .await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        let r = app
            .api
            .anonymous()
            .send(method.clone(), path, None, &[])
            .await;
        assert_eq!(r.status, 401, "{method} {path}");
    }
    // Nothing changed.
    let e = admin.get(&format!("/admin/webhooks/{endpoint}")).await;
    assert_eq!(e.status, 200);
    assert_eq!(e.body["url"], "http://127.0.0.1:9/x");
}
