//! A typed HTTP client for the API: one method per endpoint, plus raw helpers.

use reqwest::Method;
use serde_json::{Value, json};

/// What a call answered: status, headers, and the body as JSON (`Value::Null` when empty,
/// `Value::String` when not JSON).
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem+json `code`, if any.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_default().to_owned()
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: None,
        }
    }

    /// The same client acting with `token`.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same client without credentials.
    pub fn anonymous(&self) -> Client {
        Client {
            token: None,
            ..self.clone()
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else if path.starts_with("/api/")
            || !path.starts_with('/')
            || path.starts_with("/healthz")
            || path.starts_with("/readyz")
            || path.starts_with("/metrics")
        {
            format!("{}{}", self.base, path)
        } else {
            format!("{}/api/v1{}", self.base, path)
        }
    }

    /// Sends a request. `path` is relative to `/api/v1` unless it starts with `/api/`,
    /// `/healthz`, `/readyz` or `/metrics`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        match self.try_send(method, path, body, headers).await {
            Ok(r) => r,
            Err(e) => panic!("request failed: {e}"),
        }
    }

    /// Like [`Client::send`], but a transport failure (server gone, connection reset) is an
    /// `Err` instead of a panic: for tests that kill the server mid-request.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<TestResponse, String> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.try_finish(req).await
    }

    /// Sends raw bytes with a content type (garbage tests).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> TestResponse {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.finish(req).await
    }

    /// POSTs exact JSON bytes with an Idempotency-Key (when the fingerprint matters).
    pub async fn send_raw_idem(&self, path: &str, body: Vec<u8>, key: &str) -> TestResponse {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.finish(req).await
    }

    async fn finish(&self, req: reqwest::RequestBuilder) -> TestResponse {
        match self.try_finish(req).await {
            Ok(r) => r,
            Err(e) => panic!("request failed: {e}"),
        }
    }

    async fn try_finish(&self, req: reqwest::RequestBuilder) -> Result<TestResponse, String> {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(TestResponse {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        self.send(Method::POST, path, Some(&body), &[]).await
    }

    pub async fn post_idem(&self, path: &str, body: Value, key: &str) -> TestResponse {
        self.send(Method::POST, path, Some(&body), &[("idempotency-key", key)])
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> TestResponse {
        self.send(Method::PATCH, path, Some(&body), &[]).await
    }

    pub async fn put(&self, path: &str, body: Value) -> TestResponse {
        self.send(Method::PUT, path, Some(&body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> TestResponse {
        self.send(Method::DELETE, path, None, &[]).await
    }

    // --- identity ---

    pub async fn register(&self, email: &str, password: &str) -> TestResponse {
        self.post(
            "/auth/register",
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> TestResponse {
        self.post("/auth/login", json!({"email": email, "password": password}))
            .await
    }

    pub async fn me(&self) -> TestResponse {
        self.get("/me").await
    }

    pub async fn add_address(&self, address: Value) -> TestResponse {
        self.post("/me/addresses", address).await
    }

    pub async fn addresses(&self) -> TestResponse {
        self.get("/me/addresses").await
    }

    pub async fn set_user_status(&self, user_id: &str, status: &str) -> TestResponse {
        self.patch(
            &format!("/admin/users/{user_id}"),
            json!({"status": status}),
        )
        .await
    }

    pub async fn create_api_key(&self, name: &str) -> TestResponse {
        self.post("/admin/api-keys", json!({"name": name, "role": "service"}))
            .await
    }

    // --- admin: outbox ---

    pub async fn outbox(&self, query: &str) -> TestResponse {
        self.get(&format!("/admin/outbox{query}")).await
    }

    pub async fn redeliver(&self, id: &str) -> TestResponse {
        self.post(&format!("/admin/outbox/{id}/redeliver"), json!({}))
            .await
    }
}

/// A valid address body.
pub fn sample_address() -> Value {
    json!({
        "name": "Ada Lovelace",
        "line1": "12 Analytical Row",
        "city": "London",
        "postal_code": "N1 7AA",
        "country": "GB",
        "phone": "+44 20 7946 0000"
    })
}

/// A valid product body with one variant per `(sku, price)` in USD cents.
pub fn sample_product(
    category_id: &str,
    name: &str,
    brand: &str,
    variants: &[(&str, i64)],
) -> Value {
    json!({
        "name": name,
        "description": format!("{name} by {brand}"),
        "brand": brand,
        "category_id": category_id,
        "attributes": {"color": "black"},
        "images": ["https://img.example.com/p.jpg"],
        "status": "active",
        "variants": variants.iter().map(|(sku, price)| json!({
            "sku": sku,
            "name": format!("{name} {sku}"),
            "price": {"amount": price, "currency": "USD"},
            "attributes": {}
        })).collect::<Vec<_>>()
    })
}

impl Client {
    pub async fn create_category(
        &self,
        name: &str,
        slug: &str,
        parent: Option<&str>,
    ) -> TestResponse {
        self.post(
            "/categories",
            json!({"name": name, "slug": slug, "parent_id": parent}),
        )
        .await
    }

    pub async fn create_product(&self, body: Value) -> TestResponse {
        self.post("/products", body).await
    }

    pub async fn product(&self, id: &str) -> TestResponse {
        self.get(&format!("/products/{id}")).await
    }
}

impl Client {
    pub async fn create_cart(&self) -> TestResponse {
        self.send(reqwest::Method::POST, "/carts", None, &[]).await
    }

    pub async fn cart(&self, id: &str) -> TestResponse {
        self.get(&format!("/carts/{id}")).await
    }

    pub async fn add_to_cart(&self, cart_id: &str, sku: &str, quantity: i64) -> TestResponse {
        self.post(
            &format!("/carts/{cart_id}/items"),
            json!({"sku": sku, "quantity": quantity}),
        )
        .await
    }

    pub async fn set_cart_quantity(&self, cart_id: &str, sku: &str, quantity: i64) -> TestResponse {
        self.patch(
            &format!("/carts/{cart_id}/items/{sku}"),
            json!({"quantity": quantity}),
        )
        .await
    }

    pub async fn login_with_cart(
        &self,
        email: &str,
        password: &str,
        cart_id: &str,
    ) -> TestResponse {
        self.post(
            "/auth/login",
            json!({"email": email, "password": password, "cart_id": cart_id}),
        )
        .await
    }
}

impl Client {
    pub async fn create_warehouse(&self, code: &str, country: &str) -> TestResponse {
        self.post(
            "/warehouses",
            json!({"code": code, "name": format!("Warehouse {code}"), "country": country}),
        )
        .await
    }

    pub async fn set_stock(&self, sku: &str, warehouse_id: &str, on_hand: i64) -> TestResponse {
        self.put(
            &format!("/inventory/{sku}/warehouses/{warehouse_id}"),
            json!({"on_hand": on_hand}),
        )
        .await
    }

    pub async fn stock(&self, sku: &str) -> TestResponse {
        self.get(&format!("/inventory/{sku}")).await
    }
}

impl Client {
    /// POSTs and, while the answer is 409 `idempotency_key_in_use`, waits `Retry-After` (capped
    /// short for tests) and tries again — what a well-behaved client does.
    pub async fn post_idem_patiently(&self, path: &str, body: Value, key: &str) -> TestResponse {
        for _ in 0..200 {
            let r = self.post_idem(path, body.clone(), key).await;
            if r.status == 409 && r.code() == "idempotency_key_in_use" {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            return r;
        }
        self.post_idem(path, body, key).await
    }

    pub async fn checkout(&self, cart_id: &str, address: Value) -> TestResponse {
        self.post(
            "/checkouts",
            json!({"cart_id": cart_id, "shipping_address": address}),
        )
        .await
    }

    pub async fn pay(&self, checkout_id: &str, token: &str, key: &str) -> TestResponse {
        self.post_idem(
            &format!("/checkouts/{checkout_id}/pay"),
            json!({"payment_method": "card", "payment_token": token}),
            key,
        )
        .await
    }

    pub async fn order(&self, id: &str) -> TestResponse {
        self.get(&format!("/orders/{id}")).await
    }
}
