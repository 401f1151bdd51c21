//! The OpenAPI document tells the truth (issue 16): the invariants schemathesis checks in CI
//! (.ci/after.d/20-schemathesis.sh), asserted on the served document itself so they cannot
//! regress on a machine without schemathesis.

use mercato_testkit::spawn_app;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

async fn document() -> Value {
    let app = spawn_app().await;
    let r = app.api.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    r.body
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or(&Value::Null),
        None => v,
    }
}

/// (method, path template, operation) of every operation.
fn operations(doc: &Value) -> Vec<(&'static str, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push((method, path.clone(), op));
            }
        }
    }
    assert!(ops.len() > 50, "the document lists the operations");
    ops
}

fn params<'a>(doc: &'a Value, op: &'a Value) -> Vec<&'a Value> {
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| resolve(doc, p))
        .collect()
}

fn param<'a>(doc: &'a Value, op: &'a Value, name: &str, place: &str) -> Option<&'a Value> {
    params(doc, op)
        .into_iter()
        .find(|p| p["name"] == name && p["in"] == place)
}

fn secured(doc: &Value, op: &Value) -> bool {
    let security = if op.get("security").is_some() {
        &op["security"]
    } else {
        &doc["security"]
    };
    security.as_array().is_some_and(|s| !s.is_empty())
}

#[tokio::test]
async fn every_error_response_is_problem_json() {
    let doc = document().await;
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    for (method, path, op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().into_iter().flatten() {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let response = resolve(&doc, response);
            let content = response["content"].as_object();
            let types: Vec<&String> = content.into_iter().flatten().map(|(k, _)| k).collect();
            assert_eq!(
                types,
                ["application/problem+json"],
                "{method} {path} {status} is documented as {types:?}"
            );
            let schema = &response["content"]["application/problem+json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/Problem",
                "{method} {path} {status}: {schema}"
            );
        }
    }
}

#[tokio::test]
async fn operations_document_the_errors_they_can_give() {
    let doc = document().await;
    let mut secured_count = 0;
    for (method, path, op) in operations(&doc) {
        let responses = &op["responses"];
        let has = |s: &str| responses.get(s).is_some();
        assert!(has("429"), "{method} {path} does not document 429");
        assert!(has("503"), "{method} {path} does not document 503");
        // An invalid token is refused on every route.
        assert!(has("401"), "{method} {path} does not document 401");
        if secured(&doc, op) {
            secured_count += 1;
            assert!(has("403"), "secured {method} {path} does not document 403");
        }
        let ps = params(&doc, op);
        let has_query = ps.iter().any(|p| p["in"] == "query");
        let body = &op["requestBody"];
        if body.is_object() || has_query {
            assert!(has("400"), "{method} {path} takes input but has no 400");
            assert!(has("422"), "{method} {path} takes input but has no 422");
        }
        if body["content"].get("application/json").is_some() {
            assert!(has("415"), "{method} {path} takes JSON but has no 415");
        }
        if path.contains('{') {
            assert!(has("404"), "{method} {path} has a path id but no 404");
        }
    }
    assert!(secured_count > 30, "most operations are secured");
}

#[tokio::test]
async fn parameters_match_the_paths_and_carry_their_bounds() {
    let doc = document().await;
    for (method, path, op) in operations(&doc) {
        let ps = params(&doc, op);
        // Every path parameter is in the template, every template variable is declared.
        let declared: Vec<&str> = ps
            .iter()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        for name in &declared {
            assert!(
                path.contains(&format!("{{{name}}}")),
                "{method} {path} declares path parameter `{name}` that is not in the path"
            );
        }
        for var in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
            assert!(
                declared.contains(&var),
                "{method} {path} does not declare `{var}`"
            );
        }
        for p in &ps {
            if p["in"] == "path" {
                assert_eq!(p["required"], true, "{method} {path}: {p}");
            }
        }
        // `limit` is an optional query integer with bounds.
        if let Some(p) = ps.iter().find(|p| p["name"] == "limit") {
            assert_eq!(p["in"], "query", "{method} {path}: {p}");
            assert_ne!(p["required"], true, "{method} {path}: {p}");
            let schema = &p["schema"];
            assert_eq!(schema["type"], "integer", "{method} {path}: {p}");
            assert_eq!(schema["minimum"], 1, "{method} {path}: {p}");
            let max = schema["maximum"].as_i64().unwrap_or(i64::MAX);
            assert!(max <= 100, "{method} {path}: {p}");
        }
        if let Some(p) = ps.iter().find(|p| p["name"] == "cursor") {
            assert_eq!(p["in"], "query", "{method} {path}: {p}");
            assert_ne!(p["required"], true, "{method} {path}: {p}");
        }
        // `sort` lists its values; a text query cannot be empty.
        if let Some(p) = ps.iter().find(|p| p["name"] == "sort") {
            let schema = resolve(&doc, &p["schema"]);
            let one_of = schema["oneOf"].as_array().into_iter().flatten();
            let enumerated = schema["enum"].is_array()
                || one_of
                    .map(|s| resolve(&doc, s))
                    .any(|s| s["enum"].is_array());
            assert!(enumerated, "{method} {path}: sort has no enum: {p}");
        }
        if let Some(p) = ps.iter().find(|p| p["name"] == "q") {
            assert_eq!(p["required"], true, "{method} {path}: {p}");
            assert_eq!(p["schema"]["minLength"], 1, "{method} {path}: {p}");
        }
    }
    let users = &doc["paths"]["/api/v1/admin/users"]["get"];
    assert!(param(&doc, users, "limit", "query").is_some());
    assert!(param(&doc, users, "cursor", "query").is_some());
}

#[tokio::test]
async fn idempotent_operations_declare_the_idempotency_key() {
    let doc = document().await;
    let mut required = Vec::new();
    for (method, path, op) in operations(&doc) {
        if method != "get" {
            // Any unsafe request may carry a key: its errors are documented everywhere.
            for status in ["400", "409", "422"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} {status}"
                );
            }
        }
        let Some(key) = param(&doc, op, "Idempotency-Key", "header") else {
            continue;
        };
        assert_ne!(method, "get", "{path}: a safe request needs no key");
        assert_eq!(key["schema"]["maxLength"], 255, "{method} {path}: {key}");
        assert_eq!(key["schema"]["minLength"], 1, "{method} {path}: {key}");
        if key["required"] == true {
            required.push(format!("{method} {path}"));
        }
    }
    required.sort();
    // API.md marks exactly these REQUIRED (and the handlers refuse a request without one).
    assert_eq!(
        required,
        [
            "post /api/v1/checkouts/{id}/pay",
            "post /api/v1/payments/{id}/refunds"
        ]
    );
}

#[tokio::test]
async fn public_stock_is_documented_as_served() {
    let app = spawn_app().await;
    let doc = app.api.get("/openapi.json").await.body;
    let op = &doc["paths"]["/api/v1/inventory/{sku}"]["get"];
    let schema = resolve(
        &doc,
        &op["responses"]["200"]["content"]["application/json"]["schema"],
    );
    let variants: Vec<&Value> = schema["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| resolve(&doc, v))
        .collect();
    assert_eq!(variants.len(), 2, "{schema}");
    let public = variants
        .iter()
        .find(|v| v["properties"].get("on_hand").is_none())
        .unwrap_or_else(|| panic!("no public variant: {schema}"));
    let mut required: Vec<&str> = public["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["available", "sku"]);
    assert_eq!(public["additionalProperties"], false, "{public}");
    let full = variants
        .iter()
        .find(|v| v["properties"].get("on_hand").is_some())
        .unwrap_or_else(|| panic!("no full variant: {schema}"));
    assert!(full["properties"].get("warehouses").is_some(), "{full}");
}

/// Where the server and its schema measured differently, schemathesis found a body the one
/// accepted and the other refused; each is pinned here.
#[tokio::test]
async fn the_server_measures_what_the_schema_states() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    // JSON `null` is "no body" for the optional cart body (the schema says nullable).
    let r = customer.post("/carts", Value::Null).await;
    assert!(r.status == 201 || r.status == 200, "{r:?}");
    // An empty status filter is not a status.
    let r = customer.get("/orders?status=").await;
    assert_eq!(r.status, 422, "{r:?}");
    // Lengths bound what was sent, before trimming (the schema's maxLength).
    let mut address = serde_json::json!({
        "name": "Ada", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
        "country": "US", "phone": " ".repeat(33),
    });
    let r = customer.post("/me/addresses", address.clone()).await;
    assert_eq!(r.status, 422, "{r:?}");
    address["phone"] = Value::from("");
    let r = customer.post("/me/addresses", address).await;
    assert_eq!(r.status, 201, "{r:?}");
    // Passwords are 10 to 1024 characters, however many bytes those take.
    let r = app
        .api
        .post(
            "/auth/register",
            serde_json::json!({"email": "wide@example.com", "password": "é".repeat(1024)}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = app
        .api
        .post(
            "/auth/register",
            serde_json::json!({"email": "wider@example.com", "password": "é".repeat(1025)}),
        )
        .await;
    assert_eq!(r.status, 422, "{r:?}");
}
