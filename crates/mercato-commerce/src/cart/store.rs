//! SQL for carts and cart lines. Every change is a short transaction whose first statement
//! touches the cart row only while it is `active` — that both refuses changes to merged or
//! converted carts and serialises concurrent changes to one cart.

use super::model::CartStatus;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx};
use mercato_kernel::{Currency, Money, Timestamp};
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct CartStore {
    db: Db,
}

#[derive(Clone, Debug)]
pub struct CartRow {
    pub id: String,
    pub user_id: Option<String>,
    pub status: CartStatus,
    pub currency: Currency,
    pub merged_into: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// The short-link code the cart came through (`mref`), last touch wins.
    pub attribution: Option<String>,
}

#[derive(Clone, Debug)]
pub struct LineRow {
    pub sku: String,
    pub quantity: i64,
    pub price_at_addition: Money,
    /// The flash-sale purchase token the line was added with.
    pub purchase_token: Option<String>,
}

/// Why a change to a cart was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    NotActive,
    /// The line would go above `limit` (it holds `current`).
    OverLimit {
        current: i64,
    },
    NotInCart,
}

const CART_COLUMNS: &str =
    "id, user_id, status, currency, merged_into, created_at, updated_at, expires_at, attribution";

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

fn cart_of(r: &Row) -> StoreResult<CartRow> {
    let status: String = r.try_get("status").map_err(g)?;
    let currency: String = r.try_get("currency").map_err(g)?;
    Ok(CartRow {
        id: r.try_get("id").map_err(g)?,
        user_id: r.try_get("user_id").map_err(g)?,
        status: CartStatus::parse(&status).unwrap_or(CartStatus::Expired),
        currency: Currency::parse(&currency).unwrap_or(Currency::USD),
        merged_into: r.try_get("merged_into").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
        expires_at: r
            .try_get::<Option<i64>, _>("expires_at")
            .map_err(g)?
            .map(Timestamp::from_micros),
        attribution: r.try_get("attribution").map_err(g)?,
    })
}

fn line_of(r: &Row) -> StoreResult<LineRow> {
    let currency: String = r.try_get("currency").map_err(g)?;
    Ok(LineRow {
        sku: r.try_get("sku").map_err(g)?,
        quantity: r.try_get("quantity").map_err(g)?,
        price_at_addition: Money::new(
            r.try_get("price_at_addition").map_err(g)?,
            Currency::parse(&currency).unwrap_or(Currency::USD),
        ),
        purchase_token: r.try_get("purchase_token").map_err(g)?,
    })
}

impl CartStore {
    pub fn new(db: Db) -> CartStore {
        CartStore { db }
    }

    pub async fn insert(
        &self,
        id: &str,
        user_id: Option<&str>,
        currency: Currency,
        now: Timestamp,
        expires_at: Option<Timestamp>,
        attribution: Option<&str>,
    ) -> StoreResult<CartRow> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO carts (id, user_id, status, currency, version, created_at, updated_at, expires_at, attribution) \
             VALUES ($1,$2,'active',$3,1,$4,$4,$5,$6) RETURNING {CART_COLUMNS}"
        ))
        .bind(id)
        .bind(user_id)
        .bind(currency.as_str())
        .bind(now.as_micros())
        .bind(expires_at.map(Timestamp::as_micros))
        .bind(attribution)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        cart_of(&row)
    }

    /// Records the short link an existing cart came through again (last touch wins).
    pub async fn set_attribution(&self, id: &str, code: &str) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE carts SET attribution = $2 WHERE id = $1 AND status = 'active'")
            .bind(id)
            .bind(code)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn active_for_user(&self, user_id: &str) -> StoreResult<Option<CartRow>> {
        let row = sqlx::query(&format!(
            "SELECT {CART_COLUMNS} FROM carts WHERE user_id = $1 AND status = 'active'"
        ))
        .bind(user_id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(cart_of).transpose()
    }

    pub async fn cart(&self, id: &str) -> StoreResult<Option<(CartRow, Vec<LineRow>)>> {
        let row = sqlx::query(&format!("SELECT {CART_COLUMNS} FROM carts WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let lines = sqlx::query(
            "SELECT sku, quantity, price_at_addition, currency, purchase_token FROM cart_items \
             WHERE cart_id = $1 ORDER BY added_at, sku",
        )
        .bind(id)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(line_of)
        .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((cart_of(&row)?, lines)))
    }

    /// Marks the cart changed if it is active (refreshing a guest cart's expiry). `Err` with
    /// the refusal otherwise.
    async fn touch(
        tx: &mut Tx,
        id: &str,
        now: Timestamp,
        guest_expiry: Timestamp,
    ) -> StoreResult<Result<(), Refusal>> {
        let touched = sqlx::query(
            "UPDATE carts SET version = version + 1, updated_at = $1, \
             expires_at = CASE WHEN user_id IS NULL THEN $2 ELSE expires_at END \
             WHERE id = $3 AND status = 'active'",
        )
        .bind(now.as_micros())
        .bind(guest_expiry.as_micros())
        .bind(id)
        .execute(&mut **tx)
        .await?;
        if touched.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        let exists: Option<String> = sqlx::query_scalar("SELECT status FROM carts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(Err(if exists.is_some() {
            Refusal::NotActive
        } else {
            Refusal::NotFound
        }))
    }

    /// Adds `quantity` of `sku` (summing with an existing line) unless the line would exceed
    /// `limit`. One conditional upsert: concurrent adds can never push a line past the limit.
    #[allow(clippy::too_many_arguments)]
    pub async fn add(
        &self,
        cart_id: &str,
        sku: &str,
        quantity: i64,
        price: Money,
        purchase_token: Option<&str>,
        limit: i64,
        now: Timestamp,
        guest_expiry: Timestamp,
    ) -> StoreResult<Result<i64, Refusal>> {
        let mut tx = self.db.begin().await?;
        if let Err(r) = Self::touch(&mut tx, cart_id, now, guest_expiry).await? {
            return Ok(Err(r));
        }
        let q: Option<i64> = sqlx::query_scalar(
            "INSERT INTO cart_items (cart_id, sku, quantity, price_at_addition, currency, added_at, updated_at, purchase_token) \
             SELECT $1, $2, $3, $4, $5, $6, $6, $8 WHERE $3 <= $7 \
             ON CONFLICT (cart_id, sku) DO UPDATE SET quantity = cart_items.quantity + excluded.quantity, \
             updated_at = excluded.updated_at, \
             purchase_token = COALESCE(excluded.purchase_token, cart_items.purchase_token), \
             price_at_addition = CASE WHEN excluded.purchase_token IS NULL THEN cart_items.price_at_addition \
             ELSE excluded.price_at_addition END \
             WHERE cart_items.quantity + excluded.quantity <= $7 \
             RETURNING quantity",
        )
        .bind(cart_id)
        .bind(sku)
        .bind(quantity)
        .bind(price.amount)
        .bind(price.currency.as_str())
        .bind(now.as_micros())
        .bind(limit)
        .bind(purchase_token)
        .fetch_optional(&mut *tx)
        .await?;
        match q {
            Some(q) => {
                tx.commit().await?;
                Ok(Ok(q))
            }
            None => {
                let current: Option<i64> = sqlx::query_scalar(
                    "SELECT quantity FROM cart_items WHERE cart_id = $1 AND sku = $2",
                )
                .bind(cart_id)
                .bind(sku)
                .fetch_optional(&mut *tx)
                .await?;
                tx.rollback().await?;
                Ok(Err(Refusal::OverLimit {
                    current: current.unwrap_or(0),
                }))
            }
        }
    }

    /// Sets a line's quantity; 0 removes the line.
    pub async fn set_quantity(
        &self,
        cart_id: &str,
        sku: &str,
        quantity: i64,
        now: Timestamp,
        guest_expiry: Timestamp,
    ) -> StoreResult<Result<(), Refusal>> {
        let mut tx = self.db.begin().await?;
        if let Err(r) = Self::touch(&mut tx, cart_id, now, guest_expiry).await? {
            return Ok(Err(r));
        }
        let changed = if quantity == 0 {
            sqlx::query("DELETE FROM cart_items WHERE cart_id = $1 AND sku = $2")
                .bind(cart_id)
                .bind(sku)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query(
                "UPDATE cart_items SET quantity = $1, updated_at = $2 WHERE cart_id = $3 AND sku = $4",
            )
            .bind(quantity)
            .bind(now.as_micros())
            .bind(cart_id)
            .bind(sku)
            .execute(&mut *tx)
            .await?
        };
        if changed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Err(Refusal::NotInCart));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Folds the guest cart's lines into the user's cart (quantities from `merged`, computed
    /// by the caller from both carts) and marks the guest cart merged — atomically, and only if
    /// the guest cart is still an active guest cart. Returns whether it merged.
    pub async fn merge(
        &self,
        guest_id: &str,
        user_cart_id: &str,
        lines: &[(LineRow, i64)],
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.db.begin().await?;
        let folded = sqlx::query(
            "UPDATE carts SET status = 'merged', merged_into = $1, updated_at = $2, version = version + 1 \
             WHERE id = $3 AND status = 'active' AND user_id IS NULL",
        )
        .bind(user_cart_id)
        .bind(now.as_micros())
        .bind(guest_id)
        .execute(&mut *tx)
        .await?;
        if folded.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        // The guest cart's short-link attribution is the later touch: it carries over.
        let touched = sqlx::query(
            "UPDATE carts SET updated_at = $1, version = version + 1, \
             attribution = COALESCE((SELECT g.attribution FROM carts g WHERE g.id = $3), attribution) \
             WHERE id = $2 AND status = 'active'",
        )
        .bind(now.as_micros())
        .bind(user_cart_id)
        .bind(guest_id)
        .execute(&mut *tx)
        .await?;
        if touched.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (line, quantity) in lines {
            if *quantity <= 0 {
                continue;
            }
            sqlx::query(
                "INSERT INTO cart_items (cart_id, sku, quantity, price_at_addition, currency, added_at, updated_at) \
                 VALUES ($1,$2,$3,$4,$5,$6,$6) ON CONFLICT (cart_id, sku) DO UPDATE SET \
                 quantity = excluded.quantity, updated_at = excluded.updated_at",
            )
            .bind(user_cart_id)
            .bind(&line.sku)
            .bind(*quantity)
            .bind(line.price_at_addition.amount)
            .bind(line.price_at_addition.currency.as_str())
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Marks active guest carts untouched past their expiry as expired; returns how many.
    pub async fn expire_guests(&self, now: Timestamp, batch: i64) -> StoreResult<u64> {
        let r = self.db.execute_write(sqlx::query(
            "UPDATE carts SET status = 'expired', updated_at = $1 WHERE id IN \
             (SELECT id FROM carts WHERE status = 'active' AND user_id IS NULL AND expires_at < $1 LIMIT $2)",
        )
        .bind(now.as_micros())
        .bind(batch))
        .await?;
        Ok(r.rows_affected())
    }

    /// Marks an active cart converted inside the caller's transaction (checkout).
    pub async fn mark_converted(tx: &mut Tx, cart_id: &str, now: Timestamp) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE carts SET status = 'converted', updated_at = $1, version = version + 1 \
             WHERE id = $2 AND status = 'active'",
        )
        .bind(now.as_micros())
        .bind(cart_id)
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
