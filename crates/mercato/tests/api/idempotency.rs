use crate::unique_email;
use mercato_testkit::{sample_address, spawn_app};
use serde_json::json;

async fn address_count(app: &mercato_testkit::TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM addresses")
        .fetch_one(app.state.kernel.db.reader())
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn the_same_key_and_body_replays_the_first_answer_without_a_second_effect() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let first = customer
        .post_idem("/me/addresses", sample_address(), "key-1")
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = customer
        .post_idem("/me/addresses", sample_address(), "key-1")
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(address_count(&app).await, 1);

    // Keys are per principal: another customer may use the same key.
    let other = app.customer().await;
    let r = other
        .post_idem("/me/addresses", sample_address(), "key-1")
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("idempotent-replayed"), None);
    assert_eq!(address_count(&app).await, 2);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_422() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    assert_eq!(
        customer
            .post_idem("/me/addresses", sample_address(), "k")
            .await
            .status,
        201
    );
    let mut changed = sample_address();
    changed["city"] = json!("Paris");
    let r = customer.post_idem("/me/addresses", changed, "k").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "idempotency_key_reused");
    assert_eq!(address_count(&app).await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_produce_one_effect() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = customer.clone();
        tasks.push(tokio::spawn(async move {
            c.post_idem("/me/addresses", sample_address(), "race-key")
                .await
        }));
    }
    let mut created = Vec::new();
    let mut in_use = 0;
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| panic!("task: {e}"));
        match r.status {
            201 => created.push(r.body),
            409 => {
                assert_eq!(r.code(), "idempotency_key_in_use");
                assert!(r.header("retry-after").is_some());
                in_use += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|b| *b == created[0]),
        "every 201 is the same answer"
    );
    assert_eq!(created.len() + in_use, 12);
    assert_eq!(address_count(&app).await, 1, "exactly one effect");
    // After the race, the key replays.
    let r = customer
        .post_idem("/me/addresses", sample_address(), "race-key")
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn responses_stored_after_the_handler_also_replay() {
    // Registration stores its response through the middleware (not in its transaction).
    let app = spawn_app().await;
    let body = json!({"email": unique_email("idem"), "password": "correct horse battery"});
    let first = app
        .api
        .post_idem("/auth/register", body.clone(), "reg-1")
        .await;
    assert_eq!(first.status, 201);
    let again = app.api.post_idem("/auth/register", body, "reg-1").await;
    assert_eq!(
        again.status, 201,
        "replayed, not email_taken: {}",
        again.body
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["user"]["id"], first.body["user"]["id"]);
}

#[tokio::test]
async fn invalid_keys_are_rejected_and_change_nothing() {
    let app = spawn_app().await;
    let customer = app.customer().await;
    let long = "k".repeat(256);
    let r = customer
        .post_idem("/me/addresses", sample_address(), &long)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "invalid_idempotency_key");
    assert_eq!(address_count(&app).await, 0);
}

#[tokio::test]
async fn expired_keys_are_cleaned_up() {
    let app = mercato_testkit::spawn_app_with(|s| s.jwt_ttl_secs = 3 * 86_400).await;
    let customer = app.customer().await;
    customer
        .post_idem("/me/addresses", sample_address(), "old")
        .await;
    app.clock.advance(std::time::Duration::from_secs(25 * 3600));
    let removed =
        mercato_kernel::idempotency::cleanup(&app.state.kernel.db, app.state.kernel.clock.now())
            .await
            .unwrap_or_default();
    assert!(removed >= 1);
    // The key is free again: a new request with it runs anew.
    let r = customer
        .post_idem("/me/addresses", sample_address(), "old")
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("idempotent-replayed"), None);
}

#[tokio::test]
async fn a_key_claimed_by_another_process_is_in_use_until_its_lease_ends() {
    // Another process sharing the database holds the claim: the row is all it leaves behind.
    let app = spawn_app().await;
    let customer = app.customer().await;
    let me = customer.me().await;
    let user_id = me.body["id"].as_str().unwrap_or_default().to_owned();
    let now = app.state.kernel.clock.now();
    let body = serde_json::to_vec(&sample_address()).unwrap_or_default();
    // The fingerprint the middleware computes: sha256(method \n path \n body).
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"POST\n/api/v1/me/addresses\n");
    h.update(&body);
    let fingerprint = mercato_kernel::id::hex(&h.finalize());
    app.state.kernel.db.execute_write(sqlx::query(
        "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, state, locked_until, created_at, expires_at) \
         VALUES ($1, 'elsewhere', $2, 'in_flight', $3, $4, $5)",
    )
    .bind(&user_id)
    .bind(&fingerprint)
    .bind(now.plus_secs(30).as_micros())
    .bind(now.as_micros())
    .bind(now.plus_secs(86_400).as_micros()))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let r = customer
        .send_raw_idem("/me/addresses", body.clone(), "elsewhere")
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.code(), "idempotency_key_in_use");
    assert_eq!(address_count(&app).await, 0);

    // That process died: once its lease is over, the request is taken over and runs once.
    app.clock.advance(std::time::Duration::from_secs(31));
    let r = customer
        .send_raw_idem("/me/addresses", body, "elsewhere")
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(address_count(&app).await, 1);
}
