//! SQL for warehouses, stock, movements and reservations. Every change to a stock row is one
//! conditional UPDATE that cannot break `0 <= reserved <= on_hand`, followed by its movement
//! entry, in the same transaction. Methods ending in `_tx` run inside a caller's transaction
//! (checkout and orders combine them with their own writes).

use super::model::{
    Candidate, Movement, Reservation, ReservationId, Warehouse, crosses_low_stock, plan_line,
};
use mercato_events::inventory::{Adjusted, Committed, LowStock, Released, Reserved, StockLine};
use mercato_kernel::Timestamp;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx};
use mercato_kernel::outbox::{self, NewEvent};
use sqlx::Row as _;
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct InventoryStore {
    db: Db,
}

/// A stock row after a change.
#[derive(Clone, Copy, Debug)]
pub struct StockAfter {
    pub on_hand: i64,
    pub reserved: i64,
    pub threshold: i64,
}

/// Why a reservation could not be made (the caller rolls back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub sku: String,
    pub requested: i64,
    pub available: i64,
}

/// Why a stock change was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StockRefusal {
    /// The change would leave on_hand below what is reserved (or below zero).
    BelowReserved {
        on_hand: i64,
        reserved: i64,
    },
    UnknownWarehouse,
    /// The change would take on_hand past the cap that setting stock enforces.
    AboveCap {
        on_hand: i64,
    },
}

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

fn warehouse_of(r: &Row) -> StoreResult<Warehouse> {
    Ok(Warehouse {
        id: r.try_get("id").map_err(g)?,
        code: r.try_get("code").map_err(g)?,
        name: r.try_get("name").map_err(g)?,
        country: r.try_get("country").map_err(g)?,
        region: r.try_get("region").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
    })
}

fn reservation_of(r: &Row) -> StoreResult<Reservation> {
    Ok(Reservation {
        id: r.try_get("id").map_err(g)?,
        checkout_id: r.try_get("checkout_id").map_err(g)?,
        sku: r.try_get("sku").map_err(g)?,
        warehouse_id: r.try_get("warehouse_id").map_err(g)?,
        quantity: r.try_get("quantity").map_err(g)?,
        status: r.try_get("status").map_err(g)?,
        expires_at: Timestamp::from_micros(r.try_get("expires_at").map_err(g)?),
    })
}

/// One movement entry.
pub struct MovementEntry<'a> {
    pub sku: &'a str,
    pub warehouse_id: &'a str,
    pub kind: &'a str,
    pub delta_on_hand: i64,
    pub delta_reserved: i64,
    pub after: StockAfter,
    pub reason: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub actor: &'a str,
}

/// How a checkout's reservations end (see `end_reservations_tx`).
struct Ending<'a> {
    status: &'a str,
    movement: &'a str,
    /// Sold: the units also leave `on_hand`, and the event is `inventory.committed` (else
    /// `inventory.released`, with `reason`).
    sells: bool,
    reason: Option<&'a str>,
    reference: &'a str,
}

/// The lines of an `inventory.*` event about `reservations`.
fn stock_lines(reservations: &[Reservation]) -> Vec<StockLine> {
    reservations
        .iter()
        .map(|r| StockLine {
            sku: r.sku.clone(),
            warehouse_id: r.warehouse_id.clone(),
            quantity: r.quantity,
        })
        .collect()
}

const RESERVATION_COLUMNS: &str =
    "id, checkout_id, sku, warehouse_id, quantity, status, expires_at";

impl InventoryStore {
    pub fn new(db: Db) -> InventoryStore {
        InventoryStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn insert_warehouse(&self, w: &Warehouse) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO warehouses (id, code, name, country, region, created_at) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(&w.id)
        .bind(&w.code)
        .bind(&w.name)
        .bind(&w.country)
        .bind(&w.region)
        .bind(w.created_at.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn warehouses(&self) -> StoreResult<Vec<Warehouse>> {
        sqlx::query(
            "SELECT id, code, name, country, region, created_at FROM warehouses ORDER BY code",
        )
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(warehouse_of)
        .collect()
    }

    /// `(warehouse_id, on_hand, reserved, threshold)` for every warehouse holding the SKU.
    pub async fn stock_of(&self, sku: &str) -> StoreResult<Vec<(String, i64, i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT warehouse_id, on_hand, reserved, low_stock_threshold FROM stock WHERE sku = $1 ORDER BY warehouse_id",
        )
        .bind(sku)
        .fetch_all(self.db.reader())
        .await?)
    }

    /// Available units per tracked SKU (SKUs without stock rows are absent).
    pub async fn available(&self, skus: &[String]) -> StoreResult<HashMap<String, i64>> {
        let mut out = HashMap::new();
        for chunk in skus.chunks(100) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT sku, CAST(SUM(on_hand - reserved) AS BIGINT) FROM stock WHERE sku IN ({}) GROUP BY sku",
                ph.join(",")
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
            for s in chunk {
                q = q.bind(s);
            }
            out.extend(q.fetch_all(self.db.reader()).await?);
        }
        Ok(out)
    }

    /// Appends a movement (written at commit with the transaction's other movements).
    pub async fn movement_tx(tx: &mut Tx, m: MovementEntry<'_>, now: Timestamp) -> StoreResult<()> {
        use mercato_kernel::db::Cell;
        let opt = |v: Option<&str>| Cell::OptText(v.map(str::to_owned));
        tx.append_row(
            "INSERT INTO stock_movements (id, sku, warehouse_id, kind, delta_on_hand, delta_reserved, \
             on_hand_after, reserved_after, reason, reference, actor, at)",
            vec![
                Cell::Text(mercato_kernel::id::new_id("mov")),
                Cell::Text(m.sku.to_owned()),
                Cell::Text(m.warehouse_id.to_owned()),
                Cell::Text(m.kind.to_owned()),
                Cell::Int(m.delta_on_hand),
                Cell::Int(m.delta_reserved),
                Cell::Int(m.after.on_hand),
                Cell::Int(m.after.reserved),
                opt(m.reason),
                opt(m.reference),
                Cell::Text(m.actor.to_owned()),
                Cell::Int(now.as_micros()),
            ],
        );
        Ok(())
    }

    async fn low_stock_tx(
        tx: &mut Tx,
        sku: &str,
        warehouse_id: &str,
        before_available: i64,
        after: StockAfter,
        now: Timestamp,
    ) -> StoreResult<()> {
        let available = after.on_hand - after.reserved;
        if crosses_low_stock(before_available, available, after.threshold) {
            outbox::append(
                tx,
                now,
                NewEvent::of(&LowStock {
                    sku: sku.to_owned(),
                    warehouse_id: warehouse_id.to_owned(),
                    available,
                    threshold: after.threshold,
                }),
            )
            .await?;
        }
        Ok(())
    }

    async fn adjusted_event(
        tx: &mut Tx,
        sku: &str,
        warehouse_id: &str,
        delta: i64,
        after: StockAfter,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        outbox::append(
            tx,
            now,
            NewEvent::of(&Adjusted {
                sku: sku.to_owned(),
                warehouse_id: warehouse_id.to_owned(),
                delta,
                on_hand: after.on_hand,
                reserved: after.reserved,
                available: after.on_hand - after.reserved,
                reason: reason.to_owned(),
            }),
        )
        .await?;
        Ok(())
    }

    async fn warehouse_exists(tx: &mut Tx, id: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM warehouses WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
        Ok(n > 0)
    }

    /// Sets the absolute on-hand count (idempotent). Refused below what is reserved.
    pub async fn set_on_hand(
        &self,
        sku: &str,
        warehouse_id: &str,
        on_hand: i64,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Result<StockAfter, StockRefusal>> {
        let mut tx = self.db.begin().await?;
        if !Self::warehouse_exists(&mut tx, warehouse_id).await? {
            return Ok(Err(StockRefusal::UnknownWarehouse));
        }
        let current: Option<(i64, i64, i64)> = sqlx::query_as(&self.db.locking(
            "SELECT on_hand, reserved, low_stock_threshold FROM stock WHERE sku = $1 AND warehouse_id = $2",
        ))
        .bind(sku)
        .bind(warehouse_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (before, after) = match current {
            Some((old, reserved, threshold)) => {
                if on_hand < reserved {
                    return Ok(Err(StockRefusal::BelowReserved {
                        on_hand: old,
                        reserved,
                    }));
                }
                sqlx::query("UPDATE stock SET on_hand = $1, updated_at = $2 WHERE sku = $3 AND warehouse_id = $4")
                    .bind(on_hand)
                    .bind(now.as_micros())
                    .bind(sku)
                    .bind(warehouse_id)
                    .execute(&mut *tx)
                    .await?;
                (
                    (old, old - reserved),
                    StockAfter {
                        on_hand,
                        reserved,
                        threshold,
                    },
                )
            }
            None => {
                sqlx::query(
                    "INSERT INTO stock (sku, warehouse_id, on_hand, reserved, low_stock_threshold, updated_at) \
                     VALUES ($1,$2,$3,0,$4,$5)",
                )
                .bind(sku)
                .bind(warehouse_id)
                .bind(on_hand)
                .bind(super::model::DEFAULT_LOW_STOCK_THRESHOLD)
                .bind(now.as_micros())
                .execute(&mut *tx)
                .await?;
                (
                    (0, i64::MAX),
                    StockAfter {
                        on_hand,
                        reserved: 0,
                        threshold: super::model::DEFAULT_LOW_STOCK_THRESHOLD,
                    },
                )
            }
        };
        let delta = on_hand - before.0;
        if delta != 0 || current.is_none() {
            Self::movement_tx(
                &mut tx,
                MovementEntry {
                    sku,
                    warehouse_id,
                    kind: "set",
                    delta_on_hand: delta,
                    delta_reserved: 0,
                    after,
                    reason: Some("correction"),
                    reference: None,
                    actor,
                },
                now,
            )
            .await?;
            Self::adjusted_event(&mut tx, sku, warehouse_id, delta, after, "set", now).await?;
            Self::low_stock_tx(&mut tx, sku, warehouse_id, before.1, after, now).await?;
        }
        tx.commit().await?;
        Ok(Ok(after))
    }

    /// Changes on-hand by `delta` (a restock, damage, return or correction).
    #[allow(clippy::too_many_arguments)]
    pub async fn adjust(
        &self,
        sku: &str,
        warehouse_id: &str,
        delta: i64,
        reason: &str,
        reference: Option<&str>,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Result<StockAfter, StockRefusal>> {
        let mut tx = self.db.begin().await?;
        if !Self::warehouse_exists(&mut tx, warehouse_id).await? {
            return Ok(Err(StockRefusal::UnknownWarehouse));
        }
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "UPDATE stock SET on_hand = on_hand + $1, updated_at = $2 \
             WHERE sku = $3 AND warehouse_id = $4 AND on_hand + $1 >= reserved \
             AND on_hand + $1 <= $5 \
             RETURNING on_hand, reserved, low_stock_threshold",
        )
        .bind(delta)
        .bind(now.as_micros())
        .bind(sku)
        .bind(warehouse_id)
        .bind(super::model::MAX_ON_HAND)
        .fetch_optional(&mut *tx)
        .await?;
        let after = match row {
            Some((on_hand, reserved, threshold)) => StockAfter {
                on_hand,
                reserved,
                threshold,
            },
            None => {
                let existing: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT on_hand, reserved FROM stock WHERE sku = $1 AND warehouse_id = $2",
                )
                .bind(sku)
                .bind(warehouse_id)
                .fetch_optional(&mut *tx)
                .await?;
                match existing {
                    Some((on_hand, _))
                        if on_hand.saturating_add(delta) > super::model::MAX_ON_HAND =>
                    {
                        return Ok(Err(StockRefusal::AboveCap { on_hand }));
                    }
                    Some((on_hand, reserved)) => {
                        return Ok(Err(StockRefusal::BelowReserved { on_hand, reserved }));
                    }
                    None if delta < 0 => {
                        return Ok(Err(StockRefusal::BelowReserved {
                            on_hand: 0,
                            reserved: 0,
                        }));
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO stock (sku, warehouse_id, on_hand, reserved, low_stock_threshold, updated_at) \
                             VALUES ($1,$2,$3,0,$4,$5)",
                        )
                        .bind(sku)
                        .bind(warehouse_id)
                        .bind(delta)
                        .bind(super::model::DEFAULT_LOW_STOCK_THRESHOLD)
                        .bind(now.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        StockAfter {
                            on_hand: delta,
                            reserved: 0,
                            threshold: super::model::DEFAULT_LOW_STOCK_THRESHOLD,
                        }
                    }
                }
            }
        };
        Self::movement_tx(
            &mut tx,
            MovementEntry {
                sku,
                warehouse_id,
                kind: "adjust",
                delta_on_hand: delta,
                delta_reserved: 0,
                after,
                reason: Some(reason),
                reference,
                actor,
            },
            now,
        )
        .await?;
        Self::adjusted_event(&mut tx, sku, warehouse_id, delta, after, reason, now).await?;
        let before = after.on_hand - delta - after.reserved;
        Self::low_stock_tx(&mut tx, sku, warehouse_id, before, after, now).await?;
        tx.commit().await?;
        Ok(Ok(after))
    }

    async fn candidates_tx(tx: &mut Tx, sku: &str) -> StoreResult<Vec<Candidate>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT s.warehouse_id, w.country, s.on_hand - s.reserved FROM stock s \
             JOIN warehouses w ON w.id = s.warehouse_id WHERE s.sku = $1",
        )
        .bind(sku)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(warehouse_id, country, available)| Candidate {
                warehouse_id,
                country,
                available,
            })
            .collect())
    }

    /// Reserves every line for `checkout_id` or none: on `Err(Shortfall)` the caller must roll
    /// back. Untracked SKUs (no stock rows) need no reservation.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve_tx(
        tx: &mut Tx,
        checkout_id: &str,
        lines: &[(String, i64)],
        ship_country: Option<&str>,
        expires_at: Timestamp,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Result<Vec<Reservation>, Shortfall>> {
        let mut made = Vec::new();
        for (sku, quantity) in lines {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let cands = Self::candidates_tx(tx, sku).await?;
                if cands.is_empty() {
                    break; // untracked
                }
                let total: i64 = cands.iter().map(|c| c.available.max(0)).sum();
                let Some(plan) = plan_line(&cands, ship_country, *quantity) else {
                    return Ok(Err(Shortfall {
                        sku: sku.clone(),
                        requested: *quantity,
                        available: total,
                    }));
                };
                let mut raced = false;
                let mut taken = Vec::new();
                for (warehouse_id, n) in &plan {
                    let row: Option<(i64, i64, i64)> = sqlx::query_as(
                        "UPDATE stock SET reserved = reserved + $1, updated_at = $2 \
                         WHERE sku = $3 AND warehouse_id = $4 AND on_hand - reserved >= $1 \
                         RETURNING on_hand, reserved, low_stock_threshold",
                    )
                    .bind(*n)
                    .bind(now.as_micros())
                    .bind(sku)
                    .bind(warehouse_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                    match row {
                        Some((on_hand, reserved, threshold)) => taken.push((
                            warehouse_id.clone(),
                            *n,
                            StockAfter {
                                on_hand,
                                reserved,
                                threshold,
                            },
                        )),
                        None => {
                            raced = true;
                            break;
                        }
                    }
                }
                if raced {
                    // Another transaction took the stock between our read and write (possible on
                    // PostgreSQL): undo this line's partial takes and plan again.
                    for (warehouse_id, n, _) in &taken {
                        sqlx::query(
                            "UPDATE stock SET reserved = reserved - $1 WHERE sku = $2 AND warehouse_id = $3 AND reserved >= $1",
                        )
                        .bind(*n)
                        .bind(sku)
                        .bind(warehouse_id)
                        .execute(&mut **tx)
                        .await?;
                    }
                    if attempts < 5 {
                        continue;
                    }
                    let cands = Self::candidates_tx(tx, sku).await?;
                    return Ok(Err(Shortfall {
                        sku: sku.clone(),
                        requested: *quantity,
                        available: cands.iter().map(|c| c.available.max(0)).sum(),
                    }));
                }
                for (warehouse_id, n, after) in taken {
                    let id = ReservationId::new();
                    sqlx::query(
                        "INSERT INTO reservations (id, checkout_id, sku, warehouse_id, quantity, status, expires_at, \
                         created_at, updated_at) VALUES ($1,$2,$3,$4,$5,'active',$6,$7,$7)",
                    )
                    .bind(id.as_str())
                    .bind(checkout_id)
                    .bind(sku)
                    .bind(&warehouse_id)
                    .bind(n)
                    .bind(expires_at.as_micros())
                    .bind(now.as_micros())
                    .execute(&mut **tx)
                    .await?;
                    Self::movement_tx(
                        tx,
                        MovementEntry {
                            sku,
                            warehouse_id: &warehouse_id,
                            kind: "reserve",
                            delta_on_hand: 0,
                            delta_reserved: n,
                            after,
                            reason: None,
                            reference: Some(checkout_id),
                            actor,
                        },
                        now,
                    )
                    .await?;
                    Self::low_stock_tx(
                        tx,
                        sku,
                        &warehouse_id,
                        after.on_hand - after.reserved + n,
                        after,
                        now,
                    )
                    .await?;
                    made.push(Reservation {
                        id: id.into_string(),
                        checkout_id: checkout_id.to_owned(),
                        sku: sku.clone(),
                        warehouse_id,
                        quantity: n,
                        status: "active".into(),
                        expires_at,
                    });
                }
                break;
            }
        }
        if !made.is_empty() {
            outbox::append(
                tx,
                now,
                NewEvent::of(&Reserved {
                    checkout_id: checkout_id.to_owned(),
                    lines: stock_lines(&made),
                }),
            )
            .await?;
        }
        metrics::counter!("inventory_reservations_total").increment(made.len() as u64);
        Ok(Ok(made))
    }

    /// Ends the checkout's active reservations (`released` or `expired`) and gives the units
    /// back. Idempotent: already-ended reservations are untouched.
    pub async fn release_tx(
        tx: &mut Tx,
        checkout_id: &str,
        expired: bool,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Reservation>> {
        Self::end_reservations_tx(
            tx,
            checkout_id,
            Ending {
                status: if expired { "expired" } else { "released" },
                movement: if expired { "expire" } else { "release" },
                sells: false,
                reason: Some(reason),
                reference: checkout_id,
            },
            actor,
            now,
        )
        .await
    }

    /// Turns the checkout's active reservations into sold units: on_hand and reserved both
    /// drop. Idempotent.
    pub async fn commit_tx(
        tx: &mut Tx,
        checkout_id: &str,
        reference: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Reservation>> {
        Self::end_reservations_tx(
            tx,
            checkout_id,
            Ending {
                status: "committed",
                movement: "commit",
                sells: true,
                reason: None,
                reference,
            },
            actor,
            now,
        )
        .await
    }

    /// The one way reservations end: each active reservation of the checkout takes `status`,
    /// its units leave `reserved` (and `on_hand` too when sold), with a movement entry each and
    /// one event for the checkout.
    async fn end_reservations_tx(
        tx: &mut Tx,
        checkout_id: &str,
        e: Ending<'_>,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Reservation>> {
        let rows = sqlx::query(&format!(
            "UPDATE reservations SET status = $1, updated_at = $2 WHERE checkout_id = $3 AND status = 'active' \
             RETURNING {RESERVATION_COLUMNS}"
        ))
        .bind(e.status)
        .bind(now.as_micros())
        .bind(checkout_id)
        .fetch_all(&mut **tx)
        .await?;
        let ended = rows
            .iter()
            .map(reservation_of)
            .collect::<StoreResult<Vec<_>>>()?;
        for r in &ended {
            let delta_on_hand = if e.sells { -r.quantity } else { 0 };
            let (on_hand, reserved, threshold): (i64, i64, i64) = sqlx::query_as(
                "UPDATE stock SET on_hand = on_hand + $1, reserved = reserved - $2, updated_at = $3 \
                 WHERE sku = $4 AND warehouse_id = $5 AND reserved >= $2 AND on_hand + $1 >= 0 \
                 RETURNING on_hand, reserved, low_stock_threshold",
            )
            .bind(delta_on_hand)
            .bind(r.quantity)
            .bind(now.as_micros())
            .bind(&r.sku)
            .bind(&r.warehouse_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("reserved stock missing for {}", r.id)))?;
            Self::movement_tx(
                tx,
                MovementEntry {
                    sku: &r.sku,
                    warehouse_id: &r.warehouse_id,
                    kind: e.movement,
                    delta_on_hand,
                    delta_reserved: -r.quantity,
                    after: StockAfter {
                        on_hand,
                        reserved,
                        threshold,
                    },
                    reason: e.reason,
                    reference: Some(e.reference),
                    actor,
                },
                now,
            )
            .await?;
        }
        if !ended.is_empty() {
            let checkout_id = checkout_id.to_owned();
            let lines = stock_lines(&ended);
            let event = if e.sells {
                NewEvent::of(&Committed {
                    checkout_id,
                    lines,
                    reference: e.reference.to_owned(),
                })
            } else {
                NewEvent::of(&Released {
                    checkout_id,
                    lines,
                    reason: e.reason.unwrap_or_default().to_owned(),
                })
            };
            outbox::append(tx, now, event).await?;
        }
        Ok(ended)
    }

    /// Gives back up to `quantity` units of the owner's active reservations (a flash sale
    /// hands set-aside units to a checkout this way): each row shrinks with a conditional
    /// UPDATE, so two concurrent takers never give back the same unit. Returns what was given
    /// back, which is less than asked only when the owner holds less.
    #[allow(clippy::too_many_arguments)]
    pub async fn shrink_tx(
        tx: &mut Tx,
        owner: &str,
        quantity: i64,
        reason: &str,
        reference: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<i64> {
        let mut left = quantity.max(0);
        for _ in 0..3 {
            if left == 0 {
                break;
            }
            let rows = sqlx::query(&format!(
                "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE checkout_id = $1 AND status = 'active' \
                 ORDER BY quantity DESC, id"
            ))
            .bind(owner)
            .fetch_all(&mut **tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in rows.iter().map(reservation_of) {
                let r = r?;
                if left == 0 {
                    break;
                }
                let take = r.quantity.min(left);
                let shrunk = if take == r.quantity {
                    sqlx::query(
                        "UPDATE reservations SET status = 'released', updated_at = $1 \
                         WHERE id = $2 AND status = 'active' AND quantity = $3",
                    )
                } else {
                    sqlx::query(
                        "UPDATE reservations SET quantity = quantity - $3, updated_at = $1 \
                         WHERE id = $2 AND status = 'active' AND quantity > $3",
                    )
                }
                .bind(now.as_micros())
                .bind(&r.id)
                .bind(take)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if shrunk == 0 {
                    continue; // changed under us: the next round reads again
                }
                let (on_hand, reserved, threshold): (i64, i64, i64) = sqlx::query_as(
                    "UPDATE stock SET reserved = reserved - $1, updated_at = $2 \
                     WHERE sku = $3 AND warehouse_id = $4 AND reserved >= $1 \
                     RETURNING on_hand, reserved, low_stock_threshold",
                )
                .bind(take)
                .bind(now.as_micros())
                .bind(&r.sku)
                .bind(&r.warehouse_id)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| {
                    StoreError::Other(anyhow::anyhow!("reserved stock missing for {}", r.id))
                })?;
                Self::movement_tx(
                    tx,
                    MovementEntry {
                        sku: &r.sku,
                        warehouse_id: &r.warehouse_id,
                        kind: "release",
                        delta_on_hand: 0,
                        delta_reserved: -take,
                        after: StockAfter {
                            on_hand,
                            reserved,
                            threshold,
                        },
                        reason: Some(reason),
                        reference: Some(reference),
                        actor,
                    },
                    now,
                )
                .await?;
                left -= take;
            }
        }
        Ok(quantity.max(0) - left)
    }

    /// Puts sold units back on hand (cancellation after commit, approved returns), to the
    /// warehouses the checkout's committed reservations took them from. `quantities` per SKU.
    pub async fn restock_tx(
        tx: &mut Tx,
        checkout_id: &str,
        quantities: &HashMap<String, i64>,
        reason: &str,
        reference: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let rows = sqlx::query(&format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE checkout_id = $1 AND status = 'committed' ORDER BY id"
        ))
        .bind(checkout_id)
        .fetch_all(&mut **tx)
        .await?;
        let committed = rows
            .iter()
            .map(reservation_of)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut left: HashMap<String, i64> = quantities.clone();
        for r in &committed {
            let Some(want) = left.get_mut(&r.sku) else {
                continue;
            };
            let n = (*want).min(r.quantity);
            if n <= 0 {
                continue;
            }
            *want -= n;
            let (on_hand, reserved, threshold): (i64, i64, i64) = sqlx::query_as(
                "UPDATE stock SET on_hand = on_hand + $1, updated_at = $2 WHERE sku = $3 AND warehouse_id = $4 \
                 RETURNING on_hand, reserved, low_stock_threshold",
            )
            .bind(n)
            .bind(now.as_micros())
            .bind(&r.sku)
            .bind(&r.warehouse_id)
            .fetch_one(&mut **tx)
            .await?;
            let after = StockAfter {
                on_hand,
                reserved,
                threshold,
            };
            Self::movement_tx(
                tx,
                MovementEntry {
                    sku: &r.sku,
                    warehouse_id: &r.warehouse_id,
                    kind: "restock",
                    delta_on_hand: n,
                    delta_reserved: 0,
                    after,
                    reason: Some(reason),
                    reference: Some(reference),
                    actor,
                },
                now,
            )
            .await?;
            Self::adjusted_event(tx, &r.sku, &r.warehouse_id, n, after, reason, now).await?;
        }
        Ok(())
    }

    /// Moves the checkout's active reservations' expiry (payment in progress keeps stock held).
    pub async fn extend_tx(
        tx: &mut Tx,
        checkout_id: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE reservations SET expires_at = $1, updated_at = $2 WHERE checkout_id = $3 AND status = 'active'",
        )
        .bind(until.as_micros())
        .bind(now.as_micros())
        .bind(checkout_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Checkouts with active reservations past their expiry (the safety-net sweeper).
    pub async fn due_checkouts(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT checkout_id FROM reservations WHERE status = 'active' AND expires_at < $1 LIMIT $2",
        )
        .bind(now.as_micros())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?)
    }

    /// Checkouts holding active reservations.
    pub async fn checkouts_with_active(&self, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT checkout_id FROM reservations WHERE status = 'active' LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?)
    }

    pub async fn reservations(&self, checkout_id: &str) -> StoreResult<Vec<Reservation>> {
        sqlx::query(&format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE checkout_id = $1 ORDER BY id"
        ))
        .bind(checkout_id)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(reservation_of)
        .collect()
    }

    /// Movements of a SKU in log order after `after_seq`.
    pub async fn movements(
        &self,
        sku: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, Movement)>> {
        let rows = sqlx::query(
            "SELECT seq, id, sku, warehouse_id, kind, delta_on_hand, delta_reserved, on_hand_after, \
             reserved_after, reason, reference, actor, at FROM stock_movements \
             WHERE sku = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(sku)
        .bind(after_seq)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("seq").map_err(g)?,
                    Movement {
                        id: r.try_get("id").map_err(g)?,
                        sku: r.try_get("sku").map_err(g)?,
                        warehouse_id: r.try_get("warehouse_id").map_err(g)?,
                        kind: r.try_get("kind").map_err(g)?,
                        delta_on_hand: r.try_get("delta_on_hand").map_err(g)?,
                        delta_reserved: r.try_get("delta_reserved").map_err(g)?,
                        on_hand_after: r.try_get("on_hand_after").map_err(g)?,
                        reserved_after: r.try_get("reserved_after").map_err(g)?,
                        reason: r.try_get("reason").map_err(g)?,
                        reference: r.try_get("reference").map_err(g)?,
                        actor: r.try_get("actor").map_err(g)?,
                        at: Timestamp::from_micros(r.try_get("at").map_err(g)?),
                    },
                ))
            })
            .collect()
    }
}
