//! The write path under load (ADR 0005): group commit keeps every transaction all-or-nothing
//! and every commit durable; the hot-SKU gate sheds a crowd for sold-out stock.

use crate::inventory::stocked;
use mercato_kernel::db::StoreError;
use mercato_testkit::{sample_address, spawn_app};

#[tokio::test]
async fn a_transaction_that_fails_among_64_concurrent_writers_leaves_no_trace_while_the_others_commit()
 {
    let app = spawn_app().await;
    let db = app.state.kernel.db.clone();
    db.execute_write(sqlx::query(
        "CREATE TABLE gc_probe (id TEXT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0))",
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut tasks = Vec::new();
    for w in 0..64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for i in 0..10 {
                let id = format!("w{w:02}-{i:02}");
                let mut tx = db.begin().await?;
                sqlx::query("INSERT INTO gc_probe (id, n) VALUES ($1, 1)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                match (w + i) % 4 {
                    // A constraint refuses the second statement: the transaction is abandoned.
                    0 => {
                        let bad = sqlx::query("INSERT INTO gc_probe (id, n) VALUES ($1, -1)")
                            .bind(format!("{id}-bad"))
                            .execute(&mut *tx)
                            .await;
                        assert!(bad.is_err(), "the CHECK must refuse n < 0");
                        drop(tx);
                    }
                    1 => tx.rollback().await.map_err(StoreError::from)?,
                    _ => {
                        tx.commit().await.map_err(StoreError::from)?;
                        kept.push(id);
                    }
                }
            }
            Ok::<_, StoreError>(kept)
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.extend(
            t.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    expected.sort();
    let mut found: Vec<String> = sqlx::query_scalar("SELECT id FROM gc_probe")
        .fetch_all(db.reader())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    found.sort();
    assert_eq!(found.len(), 64 * 10 / 2);
    assert_eq!(
        found, expected,
        "exactly the committed transactions are there"
    );
}

#[tokio::test]
async fn a_crowd_for_a_sold_out_sku_is_answered_by_the_gate_and_a_restock_reopens_it() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "gate").await;
    assert_eq!(admin.set_stock(&sku, &de, 1).await.status, 200);
    // The crowd fills its carts while one unit is left (the cart's check is soft).
    let mut crowd = Vec::new();
    for _ in 0..30 {
        let c = app.customer().await;
        let cart = c.create_cart().await.id();
        assert_eq!(c.add_to_cart(&cart, &sku, 1).await.status, 200);
        crowd.push((c, cart));
    }
    let mut crowd = crowd.into_iter();
    let (winner, cart) = crowd.next().unwrap_or_else(|| panic!("no crowd"));
    let r = winner.checkout(&cart, sample_address()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (mut from_gate, mut from_db) = (0, 0);
    for (c, cart) in crowd {
        let r = c.checkout(&cart, sample_address()).await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.body["code"], "insufficient_stock");
        assert_eq!(r.body["available"], 0);
        if r.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("sold out"))
        {
            from_gate += 1;
        } else {
            from_db += 1;
        }
    }
    // The database answers until the SKU is hot (8 shortfalls), the gate afterwards.
    assert_eq!(from_db, 8, "the gate closed after 8 shortfalls");
    assert_eq!(from_gate, 21);
    // A restock reopens the SKU at once.
    let r = admin
        .post(
            &format!("/inventory/{sku}/adjustments"),
            serde_json::json!({"warehouse_id": de, "delta": 5, "reason": "restock"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let c = app.customer().await;
    let cart = c.create_cart().await.id();
    assert_eq!(c.add_to_cart(&cart, &sku, 1).await.status, 200);
    let r = c.checkout(&cart, sample_address()).await;
    assert_eq!(r.status, 201, "{}", r.body);
}
