use crate::unique_email;
use mercato_kernel::auth::Role;
use mercato_testkit::{sample_address, spawn_app, spawn_app_with};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn register_login_and_me() {
    let app = spawn_app().await;
    let email = unique_email("ada");
    let r = app
        .api
        .post("/auth/register", json!({"email": email.to_uppercase(), "password": "correct horse battery", "name": "Ada"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["user"]["email"], email,
        "emails are normalised to lower case"
    );
    assert_eq!(r.body["user"]["role"], "customer");
    assert_eq!(r.body["token_type"], "Bearer");
    assert!(r.body["expires_in"].as_i64().unwrap_or(0) > 0);

    let r = app.api.login(&email, "correct horse battery").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let me = app
        .api
        .with_token(r.body["access_token"].as_str().unwrap_or_default())
        .me()
        .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], email);
    assert_eq!(me.body["name"], "Ada");
    assert_eq!(me.body["status"], "active");
}

#[tokio::test]
async fn registering_an_email_twice_is_409_whatever_its_case() {
    let app = spawn_app().await;
    let email = unique_email("dup");
    assert_eq!(
        app.api
            .register(&email, "correct horse battery")
            .await
            .status,
        201
    );
    let r = app
        .api
        .register(&email.to_uppercase(), "another password")
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "email_taken");
}

#[tokio::test]
async fn weak_passwords_and_malformed_emails_are_422_with_fields() {
    let app = spawn_app().await;
    let r = app.api.register(&unique_email("weak"), "short").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "password");

    let r = app
        .api
        .register("not-an-email", "correct horse battery")
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "email");

    let r = app
        .api
        .post("/auth/register", json!({"email": "a@b.co"}))
        .await;
    assert_eq!(r.status, 422, "a missing field is a validation error");
}

#[tokio::test]
async fn malformed_json_is_400_and_a_wrong_content_type_415() {
    let app = spawn_app().await;
    let r = app
        .api
        .send_raw(
            reqwest::Method::POST,
            "/auth/register",
            "application/json",
            b"{\"email\":".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "malformed_json");
    let r = app
        .api
        .send_raw(
            reqwest::Method::POST,
            "/auth/register",
            "text/plain",
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(r.status, 415);
}

#[tokio::test]
async fn wrong_credentials_are_401_whether_or_not_the_email_exists() {
    let app = spawn_app().await;
    let email = unique_email("cred");
    app.api.register(&email, "correct horse battery").await;
    let wrong = app.api.login(&email, "wrong password!!").await;
    let unknown = app
        .api
        .login(&unique_email("ghost"), "wrong password!!")
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.code(), "invalid_credentials");
    assert_eq!(wrong.body["title"], unknown.body["title"]);
    assert_eq!(wrong.body.get("detail"), unknown.body.get("detail"));
}

#[tokio::test]
async fn repeated_failed_logins_are_rate_limited() {
    let app = spawn_app_with(|s| s.login_failures_per_15min = 3).await;
    let email = unique_email("brute");
    app.api.register(&email, "correct horse battery").await;
    for _ in 0..3 {
        assert_eq!(app.api.login(&email, "wrong password!!").await.status, 401);
    }
    let r = app.api.login(&email, "correct horse battery").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_401() {
    let app = spawn_app().await;
    let r = app.api.me().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    let r = app.api.with_token("garbage").me().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "invalid_token");

    let customer = app.customer().await;
    let token = customer.token.clone().unwrap_or_default();
    // Forged: payload swapped for an admin claim, signature kept.
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine as _;
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sub":"usr_01ABCDEFGHJKMNPQRSTVWXYZ01","role":"admin","iat":0,"exp":99999999999,"jti":"x"}"#);
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let r = app.api.with_token(&forged).get("/admin/users").await;
    assert_eq!(r.status, 401);

    // Signed with another secret.
    let other = mercato_commerce::identity::token::TokenSigner::new(
        b"another-secret-another-secret-00",
        3600,
    );
    let me = customer.me().await;
    let id = me.body["id"].as_str().unwrap_or_default();
    let foreign = other.issue(id, Role::Admin, app.state.kernel.clock.now());
    assert_eq!(app.api.with_token(&foreign).me().await.status, 401);

    assert_eq!(customer.me().await.status, 200);
    app.clock.advance(Duration::from_secs(3601));
    let r = customer.me().await;
    assert_eq!(r.status, 401, "expired token");
    assert_eq!(r.code(), "invalid_token");
}

#[tokio::test]
async fn customers_cannot_use_admin_routes() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    for path in ["/admin/users", "/admin/api-keys", "/admin/outbox"] {
        let r = customer.get(path).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.code(), "forbidden");
    }
    let seller = app.user_with_role(Role::Seller).await;
    assert_eq!(seller.get("/admin/users").await.status, 403);
}

#[tokio::test]
async fn suspended_users_get_403_everywhere_until_reactivated() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let email = unique_email("sus");
    let r = app.api.register(&email, "correct horse battery").await;
    let user_id = r.body["user"]["id"].as_str().unwrap_or_default().to_owned();
    let customer = app
        .api
        .with_token(r.body["access_token"].as_str().unwrap_or_default());

    let r = admin.set_user_status(&user_id, "suspended").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "suspended");

    let r = customer.me().await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "account_suspended");
    assert_eq!(customer.addresses().await.status, 403);
    let r = app.api.login(&email, "correct horse battery").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "account_suspended");

    assert_eq!(admin.set_user_status(&user_id, "active").await.status, 200);
    assert_eq!(customer.me().await.status, 200);

    // The change is audited.
    let audited: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE entity_id = $1")
        .bind(&user_id)
        .fetch_one(app.state.kernel.db.reader())
        .await
        .unwrap_or_default();
    assert_eq!(audited, 2);

    // Bad input changes nothing.
    let r = admin
        .patch(
            &format!("/admin/users/{user_id}"),
            json!({"status": "banned"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        admin
            .patch("/admin/users/usr_nope", json!({"status": "active"}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn addresses_can_be_added_listed_defaulted_and_deleted() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let a = customer.add_address(sample_address()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.body["is_default"], true,
        "the first address is the default"
    );
    assert_eq!(a.body["country"], "GB");
    let mut second = sample_address();
    second["is_default"] = json!(true);
    second["country"] = json!("fr");
    let b = customer.add_address(second).await;
    assert_eq!(b.status, 201);
    assert_eq!(b.body["country"], "FR");

    let list = customer.addresses().await;
    let data = list.body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 2);
    let defaults: Vec<_> = data.iter().filter(|a| a["is_default"] == true).collect();
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0]["id"], b.body["id"]);

    // Another customer cannot delete it.
    let other = app.customer().await;
    assert_eq!(
        other
            .delete(&format!("/me/addresses/{}", b.id()))
            .await
            .status,
        404
    );

    assert_eq!(
        customer
            .delete(&format!("/me/addresses/{}", b.id()))
            .await
            .status,
        204
    );
    let list = customer.addresses().await;
    assert_eq!(
        list.body["data"][0]["is_default"], true,
        "the remaining one became default"
    );
    assert_eq!(
        customer
            .delete(&format!("/me/addresses/{}", b.id()))
            .await
            .status,
        404
    );

    let mut bad = sample_address();
    bad["country"] = json!("Narnia");
    let r = customer.add_address(bad).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "country");
}

#[tokio::test]
async fn api_keys_are_shown_once_authenticate_as_service_and_can_be_revoked() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let r = admin.create_api_key("warehouse sync").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = r.body["key"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("mercato_sk_"));
    assert_eq!(r.body["role"], "service");
    let key_id = r.id();

    let list = admin.get("/admin/api-keys").await;
    assert_eq!(list.status, 200);
    assert!(
        !list.body.to_string().contains(&secret),
        "the secret is never listed"
    );

    let service = app.api.with_token(&secret);
    let r = service.get("/admin/users").await;
    assert_eq!(r.status, 403, "service keys are not admins");
    let r = service.me().await;
    assert_eq!(r.status, 403);

    let r = admin.delete(&format!("/admin/api-keys/{key_id}")).await;
    assert_eq!(r.status, 200);
    assert!(r.body["revoked_at"].is_string());
    assert_eq!(service.get("/admin/users").await.status, 401);

    let r = admin
        .post("/admin/api-keys", json!({"name": "x", "role": "admin"}))
        .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn registration_emits_user_registered_in_the_outbox() {
    let app = spawn_app().await;
    let r = app
        .api
        .register(&unique_email("evt"), "correct horse battery")
        .await;
    let id = r.body["user"]["id"].as_str().unwrap_or_default().to_owned();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE event_type = 'user.registered' AND aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or_default();
    assert_eq!(n, 1);
}
