//! Redis-backed shared state (issue 14, first slice): rate limits shared by several nodes.
//! Skipped with a notice when MERCATO_TEST_REDIS_URL is unset.

use crate::unique_email;
use mercato_testkit::spawn_app_with;

fn redis_url() -> Option<String> {
    let url = std::env::var("MERCATO_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("MERCATO_TEST_REDIS_URL unset: Redis tests skipped");
    }
    url
}

#[tokio::test]
async fn two_nodes_on_one_redis_share_the_failed_login_limit() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("mercato-test-{}:", mercato_kernel::id::random_hex(6));
    let node = |url: String, prefix: String| {
        spawn_app_with(move |s| {
            s.redis_url = Some(url);
            s.redis_key_prefix = prefix;
            s.login_failures_per_15min = 3;
        })
    };
    let a = node(url.clone(), prefix.clone()).await;
    let b = node(url, prefix).await;
    let email = unique_email("shared-limit");
    assert_eq!(a.api.login(&email, "wrong password!!").await.status, 401);
    assert_eq!(b.api.login(&email, "wrong password!!").await.status, 401);
    assert_eq!(a.api.login(&email, "wrong password!!").await.status, 401);
    // The fourth attempt is refused on either node: they count together.
    let r = b.api.login(&email, "wrong password!!").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(a.api.login(&email, "wrong password!!").await.status, 429);
    // Another email is untouched.
    let other = unique_email("shared-limit-other");
    assert_eq!(b.api.login(&other, "wrong password!!").await.status, 401);
}

#[tokio::test]
async fn a_node_whose_redis_does_not_answer_still_limits_on_its_own() {
    let app = spawn_app_with(|s| {
        s.redis_url = Some("redis://127.0.0.1:1/".into());
        s.login_failures_per_15min = 2;
    })
    .await;
    let email = unique_email("fallback-limit");
    assert_eq!(app.api.login(&email, "wrong password!!").await.status, 401);
    assert_eq!(app.api.login(&email, "wrong password!!").await.status, 401);
    assert_eq!(app.api.login(&email, "wrong password!!").await.status, 429);
    assert_eq!(app.api.get("/healthz").await.status, 200);
}
