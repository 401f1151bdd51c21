//! Nothing user-controlled can panic the server or make it answer 5xx: every route in the
//! OpenAPI document gets garbage paths, bodies, headers and tokens.

use mercato_testkit::spawn_app;
use reqwest::Method;
use serde_json::{Value, json};

fn garbage_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    vec![
        ("application/json", b"".to_vec()),
        ("application/json", b"{".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"\"string\"".to_vec()),
        (
            "application/json",
            b"12345678901234567890123456789".to_vec(),
        ),
        (
            "application/json",
            br#"{"email": {"$ne": null}, "quantity": -1, "amount": 1e309}"#.to_vec(),
        ),
        (
            "application/json",
            br#"{"status": "\u0000", "name": "\ud800", "id": "'; DROP TABLE users;--"}"#.to_vec(),
        ),
        ("application/json", deep.into_bytes()),
        ("application/json", vec![0xff, 0xfe, 0x00, 0x80]),
        ("text/plain", b"hello".to_vec()),
        ("application/x-www-form-urlencoded", b"a=1&b=2".to_vec()),
    ]
}

fn fill_path(template: &str, value: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str(value);
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn assert_sane(method: &Method, path: &str, r: &mercato_testkit::TestResponse) {
    assert!(
        r.status < 500,
        "{method} {path} answered {}: {}",
        r.status,
        r.body
    );
    if r.status >= 400 {
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{method} {path} {} is not problem+json: {}",
            r.status,
            r.body
        );
    }
}

#[tokio::test]
async fn garbage_to_every_route_never_panics_or_answers_5xx() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let customer = app.customer().await;
    let doc = app.api.get("/openapi.json").await.body;
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    assert!(paths.len() >= 8, "the OpenAPI document lists the routes");
    let ids = [
        "x",
        "usr_%27%20OR%201%3D1--",
        "%00",
        "prd_01ABCDEFGHJKMNPQRSTVWXYZ01",
        &"a".repeat(300),
    ];
    let clients = [
        app.api.clone(),
        admin.clone(),
        customer.clone(),
        app.api.with_token("Bearer x.y.z"),
    ];
    for (template, ops) in &paths {
        let ops = ops.as_object().cloned().unwrap_or_default();
        for method in ops.keys() {
            let method = match method.as_str() {
                "get" => Method::GET,
                "post" => Method::POST,
                "put" => Method::PUT,
                "patch" => Method::PATCH,
                "delete" => Method::DELETE,
                _ => continue,
            };
            for id in ids {
                let path = fill_path(template, id);
                for client in &clients {
                    let path = format!("{path}?limit=abc&cursor=%%%&status=%00");
                    let r = client.send(method.clone(), &path, None, &[]).await;
                    assert_sane(&method, &path, &r);
                }
                if method != Method::GET {
                    for (ct, body) in garbage_bodies() {
                        let r = admin
                            .send_raw(method.clone(), &path, ct, body.clone())
                            .await;
                        assert_sane(&method, &path, &r);
                        let r = customer.send_raw(method.clone(), &path, ct, body).await;
                        assert_sane(&method, &path, &r);
                    }
                    let wrong_types: Value = json!({
                        "email": 1, "password": [], "name": {}, "status": 7, "role": "root",
                        "items": "many", "quantity": "ten", "cart_id": 3, "country": null
                    });
                    let r = admin
                        .send(
                            method.clone(),
                            &path,
                            Some(&wrong_types),
                            &[("idempotency-key", "has spaces")],
                        )
                        .await;
                    assert_sane(&method, &path, &r);
                }
            }
        }
    }
    // Still healthy afterwards.
    assert_eq!(app.api.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app().await;
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = app
        .api
        .send_raw(Method::POST, "/auth/register", "application/json", big)
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "payload_too_large");
}
