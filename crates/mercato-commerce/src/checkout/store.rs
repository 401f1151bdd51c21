//! SQL for checkouts, sagas and saga step logs. Status changes are conditional on the status
//! read, so the request path, the recovery worker, reconciliation and webhooks can race to
//! settle a checkout and exactly one of them wins.

use super::model::{CheckoutLine, CheckoutStatus, SagaStep};
use crate::promotions::model::DiscountView;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx};
use mercato_kernel::{Currency, Money, Timestamp};
use serde_json::Value;
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct CheckoutStore {
    db: Db,
}

#[derive(Clone, Debug)]
pub struct CheckoutRow {
    pub id: String,
    pub customer_id: String,
    pub cart_id: String,
    pub status: CheckoutStatus,
    pub currency: Currency,
    pub lines: Vec<CheckoutLine>,
    pub subtotal: Money,
    pub discount: Money,
    /// What each promotion took off, locked with the prices.
    pub discounts: Vec<DiscountView>,
    pub shipping: Money,
    pub tax: Money,
    pub total: Money,
    pub shipping_address: Value,
    pub shipping_method: String,
    pub attempts: i64,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub failure_code: Option<String>,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// A guest checkout's buyer (their email and guest token); `None` for signed-in ones.
    pub guest: Option<Guest>,
    /// The short-link code the cart came through (carried to the order).
    pub attribution: Option<String>,
}

/// The buyer of a guest checkout.
#[derive(Clone, Debug)]
pub struct Guest {
    pub email: String,
    pub token: String,
}

#[derive(Clone, Debug)]
pub struct SagaRow {
    pub id: String,
    pub checkout_id: String,
    pub attempt: i64,
    pub status: String,
    pub step: String,
    pub payment_id: Option<String>,
    pub order_id: Option<String>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

const CHECKOUT_COLUMNS: &str = "id, customer_id, cart_id, status, currency, lines, subtotal, discount, shipping, tax, \
    total, shipping_address, shipping_method, attempts, order_id, payment_id, failure_code, expires_at, created_at, updated_at, guest_email, guest_token, attribution, discounts";
const SAGA_COLUMNS: &str =
    "id, checkout_id, attempt, status, step, payment_id, order_id, error, created_at, updated_at";

fn checkout_of(r: &Row) -> StoreResult<CheckoutRow> {
    let currency: String = r.try_get("currency").map_err(g)?;
    let c = Currency::parse(&currency).unwrap_or(Currency::USD);
    let m = |col: &str| -> StoreResult<Money> { Ok(Money::new(r.try_get(col).map_err(g)?, c)) };
    let status: String = r.try_get("status").map_err(g)?;
    let lines: String = r.try_get("lines").map_err(g)?;
    let address: String = r.try_get("shipping_address").map_err(g)?;
    Ok(CheckoutRow {
        id: r.try_get("id").map_err(g)?,
        customer_id: r.try_get("customer_id").map_err(g)?,
        cart_id: r.try_get("cart_id").map_err(g)?,
        status: CheckoutStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad status {status}")))?,
        currency: c,
        lines: serde_json::from_str(&lines).map_err(|e| StoreError::Other(e.into()))?,
        subtotal: m("subtotal")?,
        discount: m("discount")?,
        discounts: {
            let d: String = r.try_get("discounts").map_err(g)?;
            serde_json::from_str(&d).map_err(|e| StoreError::Other(e.into()))?
        },
        shipping: m("shipping")?,
        tax: m("tax")?,
        total: m("total")?,
        shipping_address: serde_json::from_str(&address).unwrap_or(Value::Null),
        shipping_method: r.try_get("shipping_method").map_err(g)?,
        attempts: r.try_get("attempts").map_err(g)?,
        order_id: r.try_get("order_id").map_err(g)?,
        payment_id: r.try_get("payment_id").map_err(g)?,
        failure_code: r.try_get("failure_code").map_err(g)?,
        expires_at: Timestamp::from_micros(r.try_get("expires_at").map_err(g)?),
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
        guest: match (
            r.try_get::<Option<String>, _>("guest_email").map_err(g)?,
            r.try_get::<Option<String>, _>("guest_token").map_err(g)?,
        ) {
            (Some(email), Some(token)) => Some(Guest { email, token }),
            _ => None,
        },
        attribution: r.try_get("attribution").map_err(g)?,
    })
}

fn saga_of(r: &Row) -> StoreResult<SagaRow> {
    Ok(SagaRow {
        id: r.try_get("id").map_err(g)?,
        checkout_id: r.try_get("checkout_id").map_err(g)?,
        attempt: r.try_get("attempt").map_err(g)?,
        status: r.try_get("status").map_err(g)?,
        step: r.try_get("step").map_err(g)?,
        payment_id: r.try_get("payment_id").map_err(g)?,
        order_id: r.try_get("order_id").map_err(g)?,
        error: r.try_get("error").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
    })
}

impl CheckoutStore {
    pub fn new(db: Db) -> CheckoutStore {
        CheckoutStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn insert_tx(tx: &mut Tx, c: &CheckoutRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO checkouts (id, customer_id, cart_id, status, currency, lines, subtotal, discount, shipping, \
             tax, total, shipping_address, shipping_method, attempts, expires_at, created_at, updated_at, \
             guest_email, guest_token, attribution, discounts) \
             VALUES ($1,$2,$3,'open',$4,$5,$6,$7,$8,$9,$10,$11,$12,0,$13,$14,$14,$15,$16,$17,$18)",
        )
        .bind(&c.id)
        .bind(&c.customer_id)
        .bind(&c.cart_id)
        .bind(c.currency.as_str())
        .bind(serde_json::to_string(&c.lines).map_err(|e| StoreError::Other(e.into()))?)
        .bind(c.subtotal.amount)
        .bind(c.discount.amount)
        .bind(c.shipping.amount)
        .bind(c.tax.amount)
        .bind(c.total.amount)
        .bind(c.shipping_address.to_string())
        .bind(&c.shipping_method)
        .bind(c.expires_at.as_micros())
        .bind(c.created_at.as_micros())
        .bind(c.guest.as_ref().map(|g| g.email.as_str()))
        .bind(c.guest.as_ref().map(|g| g.token.as_str()))
        .bind(c.attribution.as_deref())
        .bind(serde_json::to_string(&c.discounts).map_err(|e| StoreError::Other(e.into()))?)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn checkout(&self, id: &str) -> StoreResult<Option<CheckoutRow>> {
        let row = sqlx::query(&format!(
            "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(checkout_of).transpose()
    }

    /// Reads the checkout and holds its row lock until the transaction ends (settling is a
    /// read-modify-write: on PostgreSQL this is `FOR UPDATE`; SQLite's BEGIN IMMEDIATE already
    /// serialises writers), so two settlers cannot both see it unsettled.
    pub async fn lock_tx(db: &Db, tx: &mut Tx, id: &str) -> StoreResult<Option<CheckoutRow>> {
        let row = sqlx::query(&db.locking(&format!(
            "SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(checkout_of).transpose()
    }

    /// Starts a payment attempt: open → paying, only while unexpired. Returns the attempt number.
    pub async fn begin_attempt_tx(
        tx: &mut Tx,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "UPDATE checkouts SET status = 'paying', attempts = attempts + 1, updated_at = $1 \
             WHERE id = $2 AND status = 'open' AND expires_at > $1 RETURNING attempts",
        )
        .bind(now.as_micros())
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// Moves a checkout from one of `from` to `to`; `false` when another path got there first.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_status_tx(
        tx: &mut Tx,
        id: &str,
        from: &[CheckoutStatus],
        to: CheckoutStatus,
        order_id: Option<&str>,
        payment_id: Option<&str>,
        failure_code: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let a = from.first().copied().unwrap_or(to);
        let b = from.get(1).copied().unwrap_or(a);
        let r = sqlx::query(
            "UPDATE checkouts SET status = $1, order_id = COALESCE($2, order_id), payment_id = COALESCE($3, payment_id), \
             failure_code = COALESCE($4, failure_code), updated_at = $5 WHERE id = $6 AND status IN ($7, $8)",
        )
        .bind(to.as_str())
        .bind(order_id)
        .bind(payment_id)
        .bind(failure_code)
        .bind(now.as_micros())
        .bind(id)
        .bind(a.as_str())
        .bind(b.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn open_for_cart_tx(tx: &mut Tx, cart_id: &str) -> StoreResult<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM checkouts WHERE cart_id = $1 AND status = 'open'")
                .bind(cart_id)
                .fetch_all(&mut **tx)
                .await?,
        )
    }

    /// Open checkouts of the cart (a new checkout of it supersedes them).
    pub async fn open_for_cart(&self, cart_id: &str) -> StoreResult<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM checkouts WHERE cart_id = $1 AND status = 'open'")
                .bind(cart_id)
                .fetch_all(self.db.reader())
                .await?,
        )
    }

    pub async fn expired_open(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM checkouts WHERE status = 'open' AND expires_at <= $1 ORDER BY expires_at LIMIT $2")
            .bind(now.as_micros())
            .bind(limit)
            .fetch_all(self.db.reader())
            .await?)
    }

    pub async fn statuses(&self, ids: &[String]) -> StoreResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(100) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, status FROM checkouts WHERE id IN ({})",
                ph.join(",")
            );
            let mut q = sqlx::query_as::<_, (String, String)>(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(q.fetch_all(self.db.reader()).await?);
        }
        Ok(out)
    }

    pub async fn insert_saga_tx(tx: &mut Tx, s: &SagaRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sagas (id, checkout_id, attempt, status, step, payment_id, order_id, error, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$9)",
        )
        .bind(&s.id)
        .bind(&s.checkout_id)
        .bind(s.attempt)
        .bind(&s.status)
        .bind(&s.step)
        .bind(&s.payment_id)
        .bind(&s.order_id)
        .bind(&s.error)
        .bind(s.created_at.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records a step's state in the saga's log and the saga's current step.
    pub async fn step_tx(
        tx: &mut Tx,
        saga_id: &str,
        step: &str,
        state: &str,
        detail: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO saga_steps (saga_id, step, state, at, detail) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(saga_id)
        .bind(step)
        .bind(state)
        .bind(now.as_micros())
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Logs several steps in one statement (in the order given).
    pub async fn steps_tx(
        tx: &mut Tx,
        saga_id: &str,
        steps: &[(&str, &str, Option<&str>)],
        now: Timestamp,
    ) -> StoreResult<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut sql =
            String::from("INSERT INTO saga_steps (saga_id, step, state, at, detail) VALUES ");
        for i in 0..steps.len() {
            let b = i * 3 + 3;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("($1,${b},${},$2,${})", b + 1, b + 2));
        }
        let mut q = sqlx::query(&sql).bind(saga_id).bind(now.as_micros());
        for (step, state, detail) in steps {
            q = q.bind(*step).bind(*state).bind(*detail);
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// Sets the saga's status (and order, error), and its current step to the last one logged
    /// — one statement, run once at the end of each transaction that logs steps.
    pub async fn set_saga_tx(
        tx: &mut Tx,
        saga_id: &str,
        status: &str,
        order_id: Option<&str>,
        error: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        Self::set_saga_payment_tx(tx, saga_id, status, None, order_id, error, now).await
    }

    /// [`CheckoutStore::set_saga_tx`], also recording the attempt's payment.
    pub async fn set_saga_payment_tx(
        tx: &mut Tx,
        saga_id: &str,
        status: &str,
        payment_id: Option<&str>,
        order_id: Option<&str>,
        error: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE sagas SET status = $1, order_id = COALESCE($2, order_id), error = COALESCE($3, error), \
             updated_at = $4, payment_id = COALESCE($6, payment_id), \
             step = COALESCE((SELECT s.step FROM saga_steps s WHERE s.saga_id = $5 \
             ORDER BY s.seq DESC LIMIT 1), step) WHERE id = $5",
        )
        .bind(status)
        .bind(order_id)
        .bind(error)
        .bind(now.as_micros())
        .bind(saga_id)
        .bind(payment_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn saga(&self, id: &str) -> StoreResult<Option<SagaRow>> {
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?;
        row.as_ref().map(saga_of).transpose()
    }

    pub async fn saga_for_payment(&self, payment_id: &str) -> StoreResult<Option<SagaRow>> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE payment_id = $1"
        ))
        .bind(payment_id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(saga_of).transpose()
    }

    /// Sagas in `status` untouched since `before`.
    pub async fn stuck(
        &self,
        status: &str,
        before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<SagaRow>> {
        sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE status = $1 AND updated_at < $2 ORDER BY updated_at LIMIT $3"
        ))
        .bind(status)
        .bind(before.as_micros())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(saga_of)
        .collect()
    }

    /// Sagas newest first (optionally one status), keyset on id.
    pub async fn list_sagas(
        &self,
        status: Option<&str>,
        after: Option<String>,
        limit: u32,
    ) -> StoreResult<Vec<SagaRow>> {
        sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE ($1 = '' OR status = $1) AND id < $2 ORDER BY id DESC LIMIT $3"
        ))
        .bind(status.unwrap_or(""))
        .bind(after.unwrap_or_else(|| "\u{10FFFF}".into()))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(saga_of)
        .collect()
    }

    pub async fn steps(&self, saga_id: &str) -> StoreResult<Vec<SagaStep>> {
        let rows = sqlx::query(
            "SELECT step, state, at, detail FROM saga_steps WHERE saga_id = $1 ORDER BY seq",
        )
        .bind(saga_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SagaStep {
                    step: r.try_get("step").map_err(g)?,
                    state: r.try_get("state").map_err(g)?,
                    at: Timestamp::from_micros(r.try_get("at").map_err(g)?),
                    detail: r.try_get("detail").map_err(g)?,
                })
            })
            .collect()
    }
}
