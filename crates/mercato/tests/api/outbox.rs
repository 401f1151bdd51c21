use mercato_kernel::outbox::{Event, EventBus, EventHandler, mark_processed};
use mercato_testkit::{TestApp, spawn_app};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// A consumer that fails `fail_first` times per event, then applies its effect idempotently:
/// the effect is "count + 1", recorded with the processed event id in one transaction.
struct Flaky {
    name: String,
    /// Only events for users whose email starts with this are counted (others are acked).
    tag: String,
    app_db: mercato_kernel::db::Db,
    clock: mercato_kernel::SharedClock,
    fail_first: u32,
    always_fail: AtomicBool,
    calls: AtomicU32,
    effects: AtomicU32,
}

#[async_trait::async_trait]
impl EventHandler for Flaky {
    fn name(&self) -> &str {
        &self.name
    }
    fn interested_in(&self, event_type: &str) -> bool {
        event_type == "user.registered"
    }
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        if !event.data["email"]
            .as_str()
            .is_some_and(|e| e.starts_with(&self.tag))
        {
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.always_fail.load(Ordering::SeqCst) || n <= self.fail_first {
            anyhow::bail!("provider unavailable (call {n})");
        }
        let mut tx = self.app_db.begin().await?;
        if mark_processed(&mut tx, &self.name, &event.id, self.clock.now()).await? {
            self.effects.fetch_add(1, Ordering::SeqCst);
        }
        tx.commit().await?;
        Ok(())
    }
}

fn flaky(app: &TestApp, name: &str, tag: &str, fail_first: u32, always: bool) -> Arc<Flaky> {
    let h = Arc::new(Flaky {
        name: name.into(),
        tag: tag.into(),
        app_db: app.state.kernel.db.clone(),
        clock: app.state.kernel.clock.clone(),
        fail_first,
        always_fail: AtomicBool::new(always),
        calls: AtomicU32::new(0),
        effects: AtomicU32::new(0),
    });
    app.bus.subscribe(h.clone());
    h
}

#[tokio::test]
async fn a_handler_failing_twice_then_succeeding_applies_its_effect_once() {
    let app = spawn_app().await;
    let h = flaky(&app, "test-flaky", "customer-", 2, false);
    app.customer().await;
    let done = app
        .eventually(Duration::from_secs(30), || async {
            (h.effects.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
    assert!(
        done.is_some(),
        "the event was not delivered: {} calls",
        h.calls.load(Ordering::SeqCst)
    );
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    // Nothing left in retries or dead letters, and pumping more changes nothing.
    let admin = app.admin().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = admin.outbox("").await;
    assert_eq!(r.status, 200);
    assert!(
        !r.body["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| e["consumer"] == "test-flaky")),
        "{}",
        r.body
    );
    assert_eq!(h.effects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_handler_that_always_fails_is_dead_lettered_then_redelivered_by_an_admin() {
    let app = spawn_app().await;
    let h = flaky(&app, "test-broken", "admin-", 0, true);
    let admin = app.admin().await; // one user.registered event with an admin- email
    let dead = app
        .eventually(Duration::from_secs(30), || async {
            let r = admin.outbox("?status=dead").await;
            r.body["data"]
                .as_array()
                .and_then(|d| d.iter().find(|e| e["consumer"] == "test-broken").cloned())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "never dead-lettered after {} calls",
                h.calls.load(Ordering::SeqCst)
            )
        });
    assert_eq!(dead["status"], "dead");
    assert_eq!(dead["type"], "user.registered");
    assert_eq!(dead["attempts"], 3);
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("provider unavailable"))
    );
    assert_eq!(h.effects.load(Ordering::SeqCst), 0);

    // Redelivery while still failing is allowed only for dead letters.
    let id = dead["id"].as_str().unwrap_or_default().to_owned();
    let customer = app.customer().await;
    assert_eq!(customer.redeliver(&id).await.status, 403);
    assert_eq!(admin.redeliver("dlv_unknown").await.status, 404);

    h.always_fail.store(false, Ordering::SeqCst);
    let r = admin.redeliver(&id).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "retrying");
    assert_eq!(admin.redeliver(&id).await.code(), "not_dead_letter");

    let delivered = app
        .eventually(Duration::from_secs(30), || async {
            (h.effects.load(Ordering::SeqCst) >= 1).then_some(())
        })
        .await;
    assert!(delivered.is_some());
    let r = admin.outbox("?status=dead").await;
    assert!(!r.body.to_string().contains(&id), "no longer a dead letter");
    assert_eq!(h.effects.load(Ordering::SeqCst), 1);
    // The handler's effect is visible before its transaction (which records the event as
    // processed) commits: wait for the commit rather than race it.
    let event_id = dead["event_id"].as_str().unwrap_or_default().to_owned();
    let processed = app
        .eventually(Duration::from_secs(10), || {
            let event_id = event_id.clone();
            let db = app.state.kernel.db.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM processed_events WHERE consumer = 'test-broken' AND event_id = $1",
                )
                .bind(event_id)
                .fetch_one(db.reader())
                .await
                .unwrap_or_default();
                (n == 1).then_some(n)
            }
        })
        .await;
    assert_eq!(processed, Some(1));
    assert_eq!(
        admin.redeliver(&id).await.status,
        404,
        "delivered entries are gone"
    );
}

#[tokio::test]
async fn events_reach_consumers_in_log_order_and_the_offset_is_durable() {
    let app = spawn_app().await;
    for _ in 0..5 {
        app.customer().await;
    }
    let h = flaky(&app, "test-late-joiner", "customer-", 0, false);
    // A consumer registered later still reads the log from the start.
    let all = app
        .eventually(Duration::from_secs(30), || async {
            (h.effects.load(Ordering::SeqCst) == 5).then_some(())
        })
        .await;
    assert!(
        all.is_some(),
        "effects: {}",
        h.effects.load(Ordering::SeqCst)
    );
    // The offset advances after the batch's effects: wait for it.
    let position: i64 = app
        .eventually(Duration::from_secs(30), || async {
            let p: i64 = sqlx::query_scalar(
                "SELECT position FROM consumer_offsets WHERE consumer = 'test-late-joiner'",
            )
            .fetch_one(app.state.kernel.db.reader())
            .await
            .unwrap_or_default();
            (p >= 5).then_some(p)
        })
        .await
        .unwrap_or_default();
    let head: i64 = sqlx::query_scalar("SELECT position FROM outbox_log_head WHERE id = 1")
        .fetch_one(app.state.kernel.db.reader())
        .await
        .unwrap_or_default();
    assert!(position >= 5 && position <= head);
    // Pumping by hand is safe alongside the background worker.
    app.bus.pump().await.unwrap_or_else(|e| panic!("pump: {e}"));
    assert_eq!(h.effects.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn the_outbox_admin_list_validates_its_query() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    assert_eq!(admin.outbox("?status=weird").await.status, 422);
    assert_eq!(admin.outbox("?cursor=!!!").await.status, 400);
    assert_eq!(admin.outbox("?limit=0").await.status, 422);
    let r = admin.outbox("?status=unpublished").await;
    assert_eq!(r.status, 200);
    assert!(r.body["unpublished_count"].is_i64());
}

#[tokio::test]
async fn a_restarted_process_delivers_at_once_because_leases_are_handed_back_at_shutdown() {
    let app = spawn_app().await;
    let h = flaky(&app, "test-restart", "customer-", 0, false);
    app.customer().await;
    let first = app
        .eventually(Duration::from_secs(30), || async {
            (h.effects.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
    assert!(first.is_some());
    let app = app.restart(|_| {}).await;
    let lease: i64 = sqlx::query_scalar(
        "SELECT lease_until FROM consumer_offsets WHERE consumer = 'test-restart'",
    )
    .fetch_one(app.state.kernel.db.reader())
    .await
    .unwrap_or(-1);
    assert_eq!(lease, 0, "the stopped process gave its lease back");
    let h2 = flaky(&app, "test-restart", "customer-", 0, false);
    app.customer().await;
    // Well inside the 30 s lease a crashed process would leave behind.
    let second = app
        .eventually(Duration::from_secs(10), || async {
            (h2.effects.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
    assert!(
        second.is_some(),
        "the new process delivered without waiting for a lease"
    );
}
