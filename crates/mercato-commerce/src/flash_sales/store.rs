//! SQL for flash sales and their purchase tokens. The sale's `claimed` counter changes only
//! through conditional UPDATEs (`… WHERE claimed + $k <= units`), never by read-then-write, and
//! a token changes state only from the state it is expected in, so the invariants hold under
//! any concurrency on both engines. Methods ending in `_tx` run inside the caller's transaction.

use super::model::{SaleRow, TokenId};
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx};
use mercato_kernel::{Currency, Money, Timestamp};
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct FlashSaleStore {
    db: Db,
}

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

const COLUMNS: &str = "id, sku, price, currency, units, claimed, sold, tokens_issued, \
    tokens_redeemed, tokens_expired, per_customer_limit, admit_per_minute, token_ttl_secs, \
    starts_at, ends_at, status, created_at, updated_at";

const TOKEN_COLUMNS: &str =
    "id, sale_id, customer_id, ticket, units, status, checkout_id, quantity, expires_at";

fn sale_of(r: &Row) -> StoreResult<SaleRow> {
    let currency: String = r.try_get("currency").map_err(g)?;
    let currency = Currency::parse(&currency)
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("flash sale: unreadable currency")))?;
    let t = |c: &str| -> StoreResult<Timestamp> {
        Ok(Timestamp::from_micros(r.try_get::<i64, _>(c).map_err(g)?))
    };
    Ok(SaleRow {
        id: r.try_get("id").map_err(g)?,
        sku: r.try_get("sku").map_err(g)?,
        price: Money::new(r.try_get("price").map_err(g)?, currency),
        units: r.try_get("units").map_err(g)?,
        claimed: r.try_get("claimed").map_err(g)?,
        sold: r.try_get("sold").map_err(g)?,
        tokens_issued: r.try_get("tokens_issued").map_err(g)?,
        tokens_redeemed: r.try_get("tokens_redeemed").map_err(g)?,
        tokens_expired: r.try_get("tokens_expired").map_err(g)?,
        per_customer_limit: r.try_get("per_customer_limit").map_err(g)?,
        admit_per_minute: r.try_get("admit_per_minute").map_err(g)?,
        token_ttl_secs: r.try_get("token_ttl_secs").map_err(g)?,
        starts_at: t("starts_at")?,
        ends_at: t("ends_at")?,
        stage: r.try_get("status").map_err(g)?,
        created_at: t("created_at")?,
        updated_at: t("updated_at")?,
    })
}

/// A purchase token as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub ticket: String,
    /// Units the token buys at most.
    pub units: i64,
    /// `issued`, `held`, `used` or `expired`.
    pub status: String,
    pub checkout_id: Option<String>,
    /// Units held or bought.
    pub quantity: Option<i64>,
    pub expires_at: Timestamp,
}

fn token_of(r: &Row) -> StoreResult<TokenRow> {
    Ok(TokenRow {
        id: r.try_get("id").map_err(g)?,
        sale_id: r.try_get("sale_id").map_err(g)?,
        customer_id: r.try_get("customer_id").map_err(g)?,
        ticket: r.try_get("ticket").map_err(g)?,
        units: r.try_get("units").map_err(g)?,
        status: r.try_get("status").map_err(g)?,
        checkout_id: r.try_get("checkout_id").map_err(g)?,
        quantity: r.try_get("quantity").map_err(g)?,
        expires_at: Timestamp::from_micros(r.try_get::<i64, _>("expires_at").map_err(g)?),
    })
}

/// Why a token could not be issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoToken {
    /// Every unit is claimed.
    SoldOut,
    /// The sale is not running.
    NotLive,
}

impl FlashSaleStore {
    pub fn new(db: Db) -> FlashSaleStore {
        FlashSaleStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn insert_tx(tx: &mut Tx, s: &SaleRow) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO flash_sales ({COLUMNS}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)"
        ))
        .bind(&s.id)
        .bind(&s.sku)
        .bind(s.price.amount)
        .bind(s.price.currency.as_str())
        .bind(s.units)
        .bind(s.claimed)
        .bind(s.sold)
        .bind(s.tokens_issued)
        .bind(s.tokens_redeemed)
        .bind(s.tokens_expired)
        .bind(s.per_customer_limit)
        .bind(s.admit_per_minute)
        .bind(s.token_ttl_secs)
        .bind(s.starts_at.as_micros())
        .bind(s.ends_at.as_micros())
        .bind(&s.stage)
        .bind(s.created_at.as_micros())
        .bind(s.updated_at.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> StoreResult<Option<SaleRow>> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM flash_sales WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?
            .as_ref()
            .map(sale_of)
            .transpose()
    }

    pub async fn get_tx(tx: &mut Tx, id: &str) -> StoreResult<Option<SaleRow>> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM flash_sales WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .as_ref()
            .map(sale_of)
            .transpose()
    }

    /// Newest first, after the (created_at, id) cursor.
    pub async fn list(
        &self,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> StoreResult<Vec<SaleRow>> {
        let (at, id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM flash_sales WHERE created_at < $1 OR (created_at = $1 AND id < $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(at)
        .bind(if id.is_empty() { "\u{10FFFF}".to_owned() } else { id })
        .bind(limit + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(sale_of).collect()
    }

    /// Sales the lifecycle job has not ended.
    pub async fn open_sales(&self) -> StoreResult<Vec<SaleRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM flash_sales WHERE status <> 'ended' ORDER BY starts_at"
        ))
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(sale_of).collect()
    }

    /// Whether another sale of `sku` not yet ended overlaps the window.
    pub async fn overlaps_tx(
        tx: &mut Tx,
        sku: &str,
        starts_at: Timestamp,
        ends_at: Timestamp,
    ) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM flash_sales WHERE sku = $1 AND status <> 'ended' \
             AND starts_at < $3 AND ends_at > $2 LIMIT 1",
        )
        .bind(sku)
        .bind(starts_at.as_micros())
        .bind(ends_at.as_micros())
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// Moves `scheduled` to `live`; true when this call did it.
    pub async fn mark_live(&self, id: &str, now: Timestamp) -> StoreResult<Option<Tx>> {
        let mut tx = self.db.begin().await?;
        let n = sqlx::query(
            "UPDATE flash_sales SET status = 'live', updated_at = $1 WHERE id = $2 AND status = 'scheduled'",
        )
        .bind(now.as_micros())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            Ok(Some(tx))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }

    /// Ends the sale in the caller's transaction; returns the row as it was when it ended.
    pub async fn mark_ended_tx(
        tx: &mut Tx,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<SaleRow>> {
        let n = sqlx::query(
            "UPDATE flash_sales SET status = 'ended', updated_at = $1 WHERE id = $2 AND status <> 'ended'",
        )
        .bind(now.as_micros())
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        Self::get_tx(tx, id).await
    }

    /// The customer's token for the sale, whatever its state.
    pub async fn token_for(&self, sale_id: &str, customer: &str) -> StoreResult<Option<TokenRow>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM flash_sale_tokens WHERE sale_id = $1 AND customer_id = $2"
        ))
        .bind(sale_id)
        .bind(customer)
        .fetch_optional(self.db.reader())
        .await?
        .as_ref()
        .map(token_of)
        .transpose()
    }

    pub async fn token(&self, id: &str) -> StoreResult<Option<TokenRow>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM flash_sale_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?
        .as_ref()
        .map(token_of)
        .transpose()
    }

    /// Claims up to `per_customer_limit` units for the customer and records the token, in one
    /// transaction: the conditional UPDATE refuses to claim past `units`; the unique (sale,
    /// customer) pair makes a second issue for the same customer return the first token.
    pub async fn issue(
        &self,
        sale_id: &str,
        customer: &str,
        ticket: &str,
        now: Timestamp,
    ) -> StoreResult<Result<(TokenRow, i64), NoToken>> {
        if let Some(t) = self.token_for(sale_id, customer).await? {
            let remaining = self.get(sale_id).await?.map(|s| s.remaining()).unwrap_or(0);
            return Ok(Ok((t, remaining)));
        }
        for _ in 0..3 {
            let Some(sale) = self.get(sale_id).await? else {
                return Ok(Err(NoToken::NotLive));
            };
            if !sale.gates(now) {
                return Ok(Err(NoToken::NotLive));
            }
            let k = sale.per_customer_limit.min(sale.remaining());
            if k <= 0 {
                return Ok(Err(NoToken::SoldOut));
            }
            let mut tx = self.db.begin().await?;
            let claimed: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE flash_sales SET claimed = claimed + $1, tokens_issued = tokens_issued + 1, \
                 updated_at = $2 WHERE id = $3 AND status <> 'ended' AND claimed + $1 <= units \
                 RETURNING claimed, units",
            )
            .bind(k)
            .bind(now.as_micros())
            .bind(sale_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((claimed, units)) = claimed else {
                // Another token took the units we counted on: look again.
                tx.rollback().await?;
                continue;
            };
            let id = TokenId::new().into_string();
            let expires_at = now.plus_secs(sale.token_ttl_secs);
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO flash_sale_tokens (id, sale_id, customer_id, ticket, units, status, \
                 expires_at, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,'issued',$6,$7,$7) \
                 ON CONFLICT (sale_id, customer_id) DO NOTHING RETURNING id",
            )
            .bind(&id)
            .bind(sale_id)
            .bind(customer)
            .bind(ticket)
            .bind(k)
            .bind(expires_at.as_micros())
            .bind(now.as_micros())
            .fetch_optional(&mut *tx)
            .await?;
            if inserted.is_none() {
                // A concurrent issue for the same customer won: keep its token, not ours.
                tx.rollback().await?;
                return match self.token_for(sale_id, customer).await? {
                    Some(t) => Ok(Ok((t, sale.remaining()))),
                    None => Err(StoreError::Other(anyhow::anyhow!(
                        "flash sale: a token conflicted but is not there"
                    ))),
                };
            }
            tx.commit().await?;
            return Ok(Ok((
                TokenRow {
                    id,
                    sale_id: sale_id.to_owned(),
                    customer_id: customer.to_owned(),
                    ticket: ticket.to_owned(),
                    units: k,
                    status: "issued".into(),
                    checkout_id: None,
                    quantity: None,
                    expires_at,
                },
                units - claimed,
            )));
        }
        Ok(Err(NoToken::SoldOut))
    }

    /// Puts an issued, unexpired token on hold for a checkout; false when it is not (any
    /// more) issued or has expired. The row lock makes two checkouts race for it fairly.
    pub async fn hold_tx(
        tx: &mut Tx,
        token_id: &str,
        checkout_id: &str,
        quantity: i64,
        now: Timestamp,
    ) -> StoreResult<bool> {
        Ok(sqlx::query(
            "UPDATE flash_sale_tokens SET status = 'held', checkout_id = $1, quantity = $2, updated_at = $3 \
             WHERE id = $4 AND status = 'issued' AND expires_at > $3 AND units >= $2",
        )
        .bind(checkout_id)
        .bind(quantity)
        .bind(now.as_micros())
        .bind(token_id)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1)
    }

    /// Tokens held by the checkout.
    pub async fn held_by_tx(tx: &mut Tx, checkout_id: &str) -> StoreResult<Vec<TokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM flash_sale_tokens WHERE checkout_id = $1 AND status = 'held'"
        ))
        .bind(checkout_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(token_of).collect()
    }

    /// A held token back to `issued` (its checkout failed while the token still lives).
    pub async fn unhold_tx(tx: &mut Tx, token_id: &str, now: Timestamp) -> StoreResult<bool> {
        Ok(sqlx::query(
            "UPDATE flash_sale_tokens SET status = 'issued', checkout_id = NULL, quantity = NULL, \
             updated_at = $1 WHERE id = $2 AND status = 'held'",
        )
        .bind(now.as_micros())
        .bind(token_id)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1)
    }

    /// Expires a token from `from` (`issued` or `held`) and gives its units back to the sale.
    pub async fn expire_tx(
        tx: &mut Tx,
        token: &TokenRow,
        from: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "UPDATE flash_sale_tokens SET status = 'expired', updated_at = $1 WHERE id = $2 AND status = $3",
        )
        .bind(now.as_micros())
        .bind(&token.id)
        .bind(from)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE flash_sales SET claimed = claimed - $1, tokens_expired = tokens_expired + 1, \
             updated_at = $2 WHERE id = $3 AND claimed >= $1",
        )
        .bind(token.units)
        .bind(now.as_micros())
        .bind(&token.sale_id)
        .execute(&mut **tx)
        .await?;
        Ok(true)
    }

    /// A held token becomes used: its sale counts `quantity` sold and gets the units the
    /// token did not buy back. Returns (sold, units) after, or None if it was not held.
    pub async fn use_tx(
        tx: &mut Tx,
        token: &TokenRow,
        now: Timestamp,
    ) -> StoreResult<Option<(i64, i64)>> {
        let n = sqlx::query(
            "UPDATE flash_sale_tokens SET status = 'used', updated_at = $1 WHERE id = $2 AND status = 'held'",
        )
        .bind(now.as_micros())
        .bind(&token.id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let bought = token.quantity.unwrap_or(token.units).clamp(0, token.units);
        Ok(sqlx::query_as(
            "UPDATE flash_sales SET sold = sold + $1, claimed = claimed - $2, \
             tokens_redeemed = tokens_redeemed + 1, updated_at = $3 WHERE id = $4 \
             RETURNING sold, units",
        )
        .bind(bought)
        .bind(token.units - bought)
        .bind(now.as_micros())
        .bind(&token.sale_id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// Issued tokens past their expiry.
    pub async fn due_tokens(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<TokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM flash_sale_tokens WHERE status = 'issued' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2"
        ))
        .bind(now.as_micros())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(token_of).collect()
    }

    /// The sale's issued tokens (to expire them when it ends).
    pub async fn issued_of_tx(tx: &mut Tx, sale_id: &str) -> StoreResult<Vec<TokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM flash_sale_tokens WHERE sale_id = $1 AND status = 'issued'"
        ))
        .bind(sale_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(token_of).collect()
    }

    /// Units in tokens issued or held (what the sale still owes its token holders).
    pub async fn outstanding_units(&self, sale_id: &str) -> StoreResult<i64> {
        Ok(sqlx::query_scalar::<_, Option<i64>>(
            "SELECT CAST(SUM(units) AS BIGINT) FROM flash_sale_tokens WHERE sale_id = $1 \
             AND status IN ('issued', 'held')",
        )
        .bind(sale_id)
        .fetch_one(self.db.reader())
        .await?
        .unwrap_or(0))
    }
}
