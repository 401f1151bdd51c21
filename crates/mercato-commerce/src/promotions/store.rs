//! SQL for promotions, their redemptions and per-customer counters. Usage counters change only
//! through conditional UPDATEs (like stock: `… WHERE uses + reserved < usage_limit`), never by
//! read-then-write, so the limits hold under any concurrency on both engines. Methods ending in
//! `_tx` run inside the caller's transaction (checkout combines them with its own writes).

use super::model::{
    GetRule, NewPromotion, PromotionKind, PromotionRecord, PromotionStatus, Redemption,
    RedemptionId, RedemptionStatus, Scope,
};
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx, bool_of};
use mercato_kernel::{Currency, Money, Timestamp};
use sqlx::Row as _;
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct PromotionStore {
    db: Db,
}

/// Why a use could not be reserved (the caller rolls back its transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// No such promotion, disabled, or outside its window.
    Unavailable,
    /// `usage_limit` reached (committed + reserved).
    Uses,
    /// The customer's `per_customer_limit` reached.
    CustomerUses,
    /// The amount would take the promotion past its budget.
    Budget,
}

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

fn bad(what: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("promotions: unreadable {what}"))
}

const COLUMNS: &str = "id, name, code, automatic, kind, value, buy, get, applies_to, min_subtotal, \
    currency, starts_at, ends_at, usage_limit, per_customer_limit, budget, stackable, priority, \
    status, uses, reserved, budget_used, budget_reserved, created_at, updated_at";

const REDEMPTION_COLUMNS: &str =
    "id, promotion_id, checkout_id, order_id, customer_id, amount, status, created_at, updated_at";

#[derive(serde::Serialize, serde::Deserialize)]
struct BuyDoc {
    quantity: i64,
    #[serde(flatten)]
    scope: Scope,
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_micros)
}

fn record_of(r: &Row) -> StoreResult<PromotionRecord> {
    let kind: String = r.try_get("kind").map_err(g)?;
    let status: String = r.try_get("status").map_err(g)?;
    let currency: String = r.try_get("currency").map_err(g)?;
    let buy: Option<String> = r.try_get("buy").map_err(g)?;
    let get: Option<String> = r.try_get("get").map_err(g)?;
    let applies_to: String = r.try_get("applies_to").map_err(g)?;
    let buy = match buy {
        Some(b) => {
            let d: BuyDoc = serde_json::from_str(&b).map_err(|_| bad("buy"))?;
            Some((d.quantity, d.scope))
        }
        None => None,
    };
    let get = match get {
        Some(x) => Some(serde_json::from_str::<GetRule>(&x).map_err(|_| bad("get"))?),
        None => None,
    };
    Ok(PromotionRecord {
        id: r.try_get("id").map_err(g)?,
        fields: NewPromotion {
            name: r.try_get("name").map_err(g)?,
            code: r.try_get("code").map_err(g)?,
            automatic: bool_of(r.try_get("automatic").map_err(g)?),
            kind: PromotionKind::parse(&kind).ok_or_else(|| bad("kind"))?,
            value: r.try_get("value").map_err(g)?,
            buy,
            get,
            applies_to: serde_json::from_str(&applies_to).map_err(|_| bad("applies_to"))?,
            min_subtotal: r.try_get("min_subtotal").map_err(g)?,
            currency: Currency::parse(&currency).ok_or_else(|| bad("currency"))?,
            starts_at: ts(r.try_get("starts_at").map_err(g)?),
            ends_at: ts(r.try_get("ends_at").map_err(g)?),
            usage_limit: r.try_get("usage_limit").map_err(g)?,
            per_customer_limit: r.try_get("per_customer_limit").map_err(g)?,
            budget: r.try_get("budget").map_err(g)?,
            stackable: bool_of(r.try_get("stackable").map_err(g)?),
            priority: r.try_get("priority").map_err(g)?,
            status: PromotionStatus::parse(&status).ok_or_else(|| bad("status"))?,
        },
        uses: r.try_get("uses").map_err(g)?,
        reserved: r.try_get("reserved").map_err(g)?,
        budget_used: r.try_get("budget_used").map_err(g)?,
        budget_reserved: r.try_get("budget_reserved").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
    })
}

/// A redemption row with the promotion's currency for its amount.
fn redemption_of(r: &Row, currency: Currency) -> StoreResult<Redemption> {
    let status: String = r.try_get("status").map_err(g)?;
    Ok(Redemption {
        id: r.try_get("id").map_err(g)?,
        promotion_id: r.try_get("promotion_id").map_err(g)?,
        checkout_id: r.try_get("checkout_id").map_err(g)?,
        order_id: r.try_get("order_id").map_err(g)?,
        customer_id: r.try_get("customer_id").map_err(g)?,
        amount: Money::new(r.try_get("amount").map_err(g)?, currency),
        status: RedemptionStatus::parse(&status).ok_or_else(|| bad("redemption status"))?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
    })
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// The JSON documents of a promotion: (buy, get, applies_to).
fn documents(p: &NewPromotion) -> (Option<String>, Option<String>, String) {
    (
        p.buy.as_ref().map(|(quantity, scope)| {
            json(&BuyDoc {
                quantity: *quantity,
                scope: scope.clone(),
            })
        }),
        p.get.as_ref().map(json),
        json(&p.applies_to),
    )
}

impl PromotionStore {
    pub fn new(db: Db) -> PromotionStore {
        PromotionStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts a promotion. `Conflict` when its code is taken (case-insensitively).
    pub async fn insert(&self, id: &str, p: &NewPromotion, now: Timestamp) -> StoreResult<()> {
        let (buy, get, applies_to) = documents(p);
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO promotions (id, name, code, code_key, automatic, kind, value, buy, get, \
             applies_to, min_subtotal, currency, starts_at, ends_at, usage_limit, \
             per_customer_limit, budget, stackable, priority, status, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$21)",
        )
        .bind(id)
        .bind(&p.name)
        .bind(p.code.as_deref())
        .bind(p.code.as_deref().map(super::model::code_key))
        .bind(i64::from(p.automatic))
        .bind(p.kind.as_str())
        .bind(p.value)
        .bind(buy)
        .bind(get)
        .bind(applies_to)
        .bind(p.min_subtotal)
        .bind(p.currency.as_str())
        .bind(p.starts_at.map(Timestamp::as_micros))
        .bind(p.ends_at.map(Timestamp::as_micros))
        .bind(p.usage_limit)
        .bind(p.per_customer_limit)
        .bind(p.budget)
        .bind(i64::from(p.stackable))
        .bind(p.priority)
        .bind(p.status.as_str())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the editable fields (never the counters, which only the `_tx` methods move).
    pub async fn update(
        &self,
        id: &str,
        p: &NewPromotion,
        now: Timestamp,
    ) -> StoreResult<Option<PromotionRecord>> {
        let (_, get, _) = documents(p);
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE promotions SET name = $1, value = $2, get = $3, min_subtotal = $4, \
             starts_at = $5, ends_at = $6, usage_limit = $7, per_customer_limit = $8, budget = $9, \
             stackable = $10, priority = $11, status = $12, updated_at = $13 WHERE id = $14 \
             RETURNING {COLUMNS}"
        ))
        .bind(&p.name)
        .bind(p.value)
        .bind(get)
        .bind(p.min_subtotal)
        .bind(p.starts_at.map(Timestamp::as_micros))
        .bind(p.ends_at.map(Timestamp::as_micros))
        .bind(p.usage_limit)
        .bind(p.per_customer_limit)
        .bind(p.budget)
        .bind(i64::from(p.stackable))
        .bind(p.priority)
        .bind(p.status.as_str())
        .bind(now.as_micros())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let out = row.as_ref().map(record_of).transpose()?;
        tx.commit().await?;
        Ok(out)
    }

    pub async fn get(&self, id: &str) -> StoreResult<Option<PromotionRecord>> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM promotions WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?
            .as_ref()
            .map(record_of)
            .transpose()
    }

    /// The promotion whose code is `code`, compared case-insensitively.
    pub async fn by_code(&self, code: &str) -> StoreResult<Option<PromotionRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM promotions WHERE code_key = $1"
        ))
        .bind(super::model::code_key(code))
        .fetch_optional(self.db.reader())
        .await?
        .as_ref()
        .map(record_of)
        .transpose()
    }

    /// Newest first, after the keyset `(created_at, id)`; `limit + 1` rows for the pager.
    pub async fn list(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<PromotionRecord>> {
        let (at, id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM promotions \
             WHERE created_at < $1 OR (created_at = $1 AND id < $2) OR $3 = 1 \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(at)
        .bind(&id)
        .bind(i64::from(id.is_empty() && at == i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(record_of).collect()
    }

    /// Active automatic promotions in `currency` (the window and limits are the engine's).
    pub async fn automatic(&self, currency: Currency) -> StoreResult<Vec<PromotionRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM promotions WHERE automatic = 1 AND status = 'active' \
             AND currency = $1 ORDER BY priority DESC, id LIMIT 100"
        ))
        .bind(currency.as_str())
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(record_of)
        .collect()
    }

    /// Committed + reserved uses of each promotion by `customer_id`.
    pub async fn customer_uses(
        &self,
        customer_id: &str,
        promotion_ids: &[String],
    ) -> StoreResult<HashMap<String, i64>> {
        let mut out = HashMap::new();
        for chunk in promotion_ids.chunks(100) {
            let ph: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT promotion_id, uses + reserved FROM promotion_customer_uses \
                 WHERE customer_id = $1 AND promotion_id IN ({})",
                ph.join(",")
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql).bind(customer_id);
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(q.fetch_all(self.db.reader()).await?);
        }
        Ok(out)
    }

    /// The uses the checkouts hold (status `reserved`): (promotion id, customer id, amount).
    pub async fn reserved_by(
        &self,
        checkout_ids: &[String],
    ) -> StoreResult<Vec<(String, String, i64)>> {
        let mut out = Vec::new();
        for chunk in checkout_ids.chunks(100) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT promotion_id, customer_id, amount FROM promotion_redemptions \
                 WHERE status = 'reserved' AND checkout_id IN ({})",
                ph.join(",")
            );
            let mut q = sqlx::query_as::<_, (String, String, i64)>(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(q.fetch_all(self.db.reader()).await?);
        }
        Ok(out)
    }

    /// A promotion's redemptions, newest first, after the keyset `(created_at, id)`.
    pub async fn redemptions(
        &self,
        promotion_id: &str,
        currency: Currency,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<Redemption>> {
        let (at, id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {REDEMPTION_COLUMNS} FROM promotion_redemptions WHERE promotion_id = $1 \
             AND (created_at < $2 OR (created_at = $2 AND id < $3) OR $4 = 1) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(promotion_id)
        .bind(at)
        .bind(&id)
        .bind(i64::from(id.is_empty() && at == i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(|r| redemption_of(r, currency)).collect()
    }

    /// Reserves one use of the promotion for `checkout_id` (and `amount` of its budget): one
    /// conditional UPDATE on the promotion and one on the customer's counter, so neither limit
    /// nor the budget can be passed by concurrent checkouts. On `Err(Exhausted)` the caller must
    /// roll back (the promotion's counter may already have moved inside the transaction).
    /// Reserving again for the same checkout returns the existing redemption and counts
    /// nothing.
    pub async fn reserve_tx(
        tx: &mut Tx,
        promotion_id: &str,
        checkout_id: &str,
        customer_id: &str,
        amount: i64,
        now: Timestamp,
    ) -> StoreResult<Result<Redemption, Exhausted>> {
        let amount = amount.max(0);
        let id = RedemptionId::new();
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO promotion_redemptions (id, promotion_id, checkout_id, customer_id, amount, \
             status, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, 'reserved', $6, $6 WHERE EXISTS (SELECT 1 FROM promotions WHERE id = $2) \
             ON CONFLICT (promotion_id, checkout_id) DO NOTHING RETURNING id",
        )
        .bind(id.as_str())
        .bind(promotion_id)
        .bind(checkout_id)
        .bind(customer_id)
        .bind(amount)
        .bind(now.as_micros())
        .fetch_optional(&mut **tx)
        .await?;
        if inserted.is_none() {
            // Already reserved for this checkout (or no such promotion): nothing is counted.
            let row = sqlx::query(&format!(
                "SELECT r.{}, p.currency FROM promotion_redemptions r JOIN promotions p ON p.id = r.promotion_id \
                 WHERE r.promotion_id = $1 AND r.checkout_id = $2",
                REDEMPTION_COLUMNS.replace(", ", ", r.")
            ))
            .bind(promotion_id)
            .bind(checkout_id)
            .fetch_optional(&mut **tx)
            .await?;
            return match row {
                Some(r) => {
                    let c: String = r.try_get("currency").map_err(g)?;
                    let c = Currency::parse(&c).ok_or_else(|| bad("currency"))?;
                    Ok(Ok(redemption_of(&r, c)?))
                }
                None => Ok(Err(Exhausted::Unavailable)),
            };
        }
        let currency: Option<(String, Option<i64>)> = sqlx::query_as(
            "UPDATE promotions SET reserved = reserved + 1, budget_reserved = budget_reserved + $1, \
             updated_at = $2 \
             WHERE id = $3 AND status = 'active' \
             AND (starts_at IS NULL OR starts_at <= $2) AND (ends_at IS NULL OR ends_at > $2) \
             AND (usage_limit IS NULL OR uses + reserved < usage_limit) \
             AND (budget IS NULL OR budget_used + budget_reserved + $1 <= budget) \
             RETURNING currency, per_customer_limit",
        )
        .bind(amount)
        .bind(now.as_micros())
        .bind(promotion_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((currency, per_customer)) = currency else {
            return Ok(Err(Self::why_not(tx, promotion_id, amount, now).await?));
        };
        if let Some(limit) = per_customer {
            sqlx::query(
                "INSERT INTO promotion_customer_uses (promotion_id, customer_id, uses, reserved) \
                 VALUES ($1, $2, 0, 0) ON CONFLICT (promotion_id, customer_id) DO NOTHING",
            )
            .bind(promotion_id)
            .bind(customer_id)
            .execute(&mut **tx)
            .await?;
            let taken = sqlx::query(
                "UPDATE promotion_customer_uses SET reserved = reserved + 1 \
                 WHERE promotion_id = $1 AND customer_id = $2 AND uses + reserved < $3",
            )
            .bind(promotion_id)
            .bind(customer_id)
            .bind(limit)
            .execute(&mut **tx)
            .await?;
            if taken.rows_affected() == 0 {
                return Ok(Err(Exhausted::CustomerUses));
            }
        }
        let currency = Currency::parse(&currency).ok_or_else(|| bad("currency"))?;
        Ok(Ok(Redemption {
            id: id.into_string(),
            promotion_id: promotion_id.to_owned(),
            checkout_id: checkout_id.to_owned(),
            order_id: None,
            customer_id: customer_id.to_owned(),
            amount: Money::new(amount, currency),
            status: RedemptionStatus::Reserved,
            created_at: now,
            updated_at: now,
        }))
    }

    /// Which condition of the reserve UPDATE failed (read inside the same transaction).
    async fn why_not(
        tx: &mut Tx,
        promotion_id: &str,
        amount: i64,
        now: Timestamp,
    ) -> StoreResult<Exhausted> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM promotions WHERE id = $1"))
            .bind(promotion_id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(p) = row.as_ref().map(record_of).transpose()? else {
            return Ok(Exhausted::Unavailable);
        };
        let f = &p.fields;
        let (uses, reserved, used, held) = (p.uses, p.reserved, p.budget_used, p.budget_reserved);
        let (starts, ends, limit, budget) = (
            f.starts_at.map(Timestamp::as_micros),
            f.ends_at.map(Timestamp::as_micros),
            f.usage_limit,
            f.budget,
        );
        let active = f.status == PromotionStatus::Active;
        let now = now.as_micros();
        Ok(
            if !active || starts.is_some_and(|s| now < s) || ends.is_some_and(|e| now >= e) {
                Exhausted::Unavailable
            } else if limit.is_some_and(|l| uses + reserved >= l) {
                Exhausted::Uses
            } else if budget.is_some_and(|b| used + held + amount > b) {
                Exhausted::Budget
            } else {
                Exhausted::Unavailable
            },
        )
    }

    /// Turns the checkout's reserved uses into committed ones (paid). Idempotent: only
    /// `reserved` rows move.
    pub async fn commit_tx(
        tx: &mut Tx,
        checkout_id: &str,
        order_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Redemption>> {
        let rows = sqlx::query(&format!(
            "UPDATE promotion_redemptions SET status = 'committed', order_id = $1, updated_at = $2 \
             WHERE checkout_id = $3 AND status = 'reserved' RETURNING {REDEMPTION_COLUMNS}"
        ))
        .bind(order_id)
        .bind(now.as_micros())
        .bind(checkout_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let promotion_id: String = r.try_get("promotion_id").map_err(g)?;
            let customer_id: String = r.try_get("customer_id").map_err(g)?;
            let amount: i64 = r.try_get("amount").map_err(g)?;
            let currency: String = sqlx::query_scalar(
                "UPDATE promotions SET reserved = reserved - 1, uses = uses + 1, \
                 budget_reserved = budget_reserved - $1, budget_used = budget_used + $1, updated_at = $2 \
                 WHERE id = $3 RETURNING currency",
            )
            .bind(amount)
            .bind(now.as_micros())
            .bind(&promotion_id)
            .fetch_one(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE promotion_customer_uses SET reserved = reserved - 1, uses = uses + 1 \
                 WHERE promotion_id = $1 AND customer_id = $2 AND reserved > 0",
            )
            .bind(&promotion_id)
            .bind(&customer_id)
            .execute(&mut **tx)
            .await?;
            out.push(redemption_of(
                r,
                Currency::parse(&currency).ok_or_else(|| bad("currency"))?,
            )?);
        }
        Ok(out)
    }

    /// Gives the checkout's uses back: reserved ones (the checkout failed or expired) and
    /// committed ones (its order was cancelled before shipping). Idempotent: released rows stay
    /// released.
    pub async fn release_tx(
        tx: &mut Tx,
        checkout_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Redemption>> {
        let mut out = Vec::new();
        for (from, uses_col, budget_col) in [
            ("reserved", "reserved", "budget_reserved"),
            ("committed", "uses", "budget_used"),
        ] {
            let rows = sqlx::query(&format!(
                "UPDATE promotion_redemptions SET status = 'released', updated_at = $1 \
                 WHERE checkout_id = $2 AND status = '{from}' RETURNING {REDEMPTION_COLUMNS}"
            ))
            .bind(now.as_micros())
            .bind(checkout_id)
            .fetch_all(&mut **tx)
            .await?;
            for r in &rows {
                let promotion_id: String = r.try_get("promotion_id").map_err(g)?;
                let customer_id: String = r.try_get("customer_id").map_err(g)?;
                let amount: i64 = r.try_get("amount").map_err(g)?;
                let currency: String = sqlx::query_scalar(&format!(
                    "UPDATE promotions SET {uses_col} = {uses_col} - 1, \
                     {budget_col} = {budget_col} - $1, updated_at = $2 WHERE id = $3 RETURNING currency"
                ))
                .bind(amount)
                .bind(now.as_micros())
                .bind(&promotion_id)
                .fetch_one(&mut **tx)
                .await?;
                sqlx::query(&format!(
                    "UPDATE promotion_customer_uses SET {uses_col} = {uses_col} - 1 \
                     WHERE promotion_id = $1 AND customer_id = $2 AND {uses_col} > 0"
                ))
                .bind(&promotion_id)
                .bind(&customer_id)
                .execute(&mut **tx)
                .await?;
                out.push(redemption_of(
                    r,
                    Currency::parse(&currency).ok_or_else(|| bad("currency"))?,
                )?);
            }
        }
        Ok(out)
    }
}
