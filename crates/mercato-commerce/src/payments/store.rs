//! SQL for payments, the append-only ledger, refunds and seen gateway events. A payment row
//! holds the current state; the ledger holds every step that led there and is never updated.
//! `refunded <= captured` is a CHECK constraint and every refund reserves its amount with a
//! conditional UPDATE, so the sum of refunds can never exceed the capture, even when refund
//! requests race.

use super::model::{Entry, LedgerEntry, Payment, PaymentStatus, Refund};
use mercato_events::payments::PaymentRefunded;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx};
use mercato_kernel::outbox::{self, NewEvent};
use mercato_kernel::{Currency, Money, Timestamp};
use serde_json::{Value, json};
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct PaymentStore {
    db: Db,
}

/// A payment row without its ledger.
#[derive(Clone, Debug)]
pub struct PaymentRow {
    pub id: String,
    pub checkout_id: String,
    pub attempt: i64,
    pub customer_id: String,
    pub order_id: Option<String>,
    pub amount: Money,
    pub status: PaymentStatus,
    pub gateway: String,
    pub gateway_ref: Option<String>,
    pub idempotency_key: String,
    pub captured: Money,
    pub refunded: Money,
    pub decline_code: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct RefundRow {
    pub refund: Refund,
    pub idempotency_key: String,
    pub attempts: i64,
    pub gateway_ref: Option<String>,
}

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

const PAYMENT_COLUMNS: &str = "id, checkout_id, attempt, customer_id, order_id, amount, currency, status, gateway, \
    gateway_ref, idempotency_key, captured, refunded, decline_code, created_at, updated_at";
const REFUND_COLUMNS: &str = "id, payment_id, amount, currency, reason, status, idempotency_key, gateway_ref, \
    failure_code, source, source_id, attempts, created_at";

fn payment_of(r: &Row) -> StoreResult<PaymentRow> {
    let currency: String = r.try_get("currency").map_err(g)?;
    let c = Currency::parse(&currency).unwrap_or(Currency::USD);
    let status: String = r.try_get("status").map_err(g)?;
    Ok(PaymentRow {
        id: r.try_get("id").map_err(g)?,
        checkout_id: r.try_get("checkout_id").map_err(g)?,
        attempt: r.try_get("attempt").map_err(g)?,
        customer_id: r.try_get("customer_id").map_err(g)?,
        order_id: r.try_get("order_id").map_err(g)?,
        amount: Money::new(r.try_get("amount").map_err(g)?, c),
        status: PaymentStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad status {status}")))?,
        gateway: r.try_get("gateway").map_err(g)?,
        gateway_ref: r.try_get("gateway_ref").map_err(g)?,
        idempotency_key: r.try_get("idempotency_key").map_err(g)?,
        captured: Money::new(r.try_get("captured").map_err(g)?, c),
        refunded: Money::new(r.try_get("refunded").map_err(g)?, c),
        decline_code: r.try_get("decline_code").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
    })
}

fn refund_of(r: &Row) -> StoreResult<RefundRow> {
    let currency: String = r.try_get("currency").map_err(g)?;
    let c = Currency::parse(&currency).unwrap_or(Currency::USD);
    Ok(RefundRow {
        refund: Refund {
            id: r.try_get("id").map_err(g)?,
            payment_id: r.try_get("payment_id").map_err(g)?,
            status: r.try_get("status").map_err(g)?,
            amount: Money::new(r.try_get("amount").map_err(g)?, c),
            reason: r.try_get("reason").map_err(g)?,
            source: r.try_get("source").map_err(g)?,
            source_id: r.try_get("source_id").map_err(g)?,
            failure_code: r.try_get("failure_code").map_err(g)?,
            created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        },
        idempotency_key: r.try_get("idempotency_key").map_err(g)?,
        attempts: r.try_get("attempts").map_err(g)?,
        gateway_ref: r.try_get("gateway_ref").map_err(g)?,
    })
}

/// A new payment for one checkout attempt.
pub struct NewPayment<'a> {
    pub id: &'a str,
    pub checkout_id: &'a str,
    pub attempt: i64,
    pub customer_id: &'a str,
    pub amount: Money,
    pub gateway: &'a str,
    pub idempotency_key: &'a str,
}

impl PaymentStore {
    pub fn new(db: Db) -> PaymentStore {
        PaymentStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Appends a ledger entry (never updated, never deleted).
    pub async fn ledger_tx(
        tx: &mut Tx,
        payment_id: &str,
        entry: Entry,
        amount: Money,
        gateway_ref: Option<&str>,
        metadata: Value,
        now: Timestamp,
    ) -> StoreResult<()> {
        use mercato_kernel::db::Cell;
        // Written at commit with the transaction's other entries.
        tx.append_row(
            "INSERT INTO payment_ledger (id, payment_id, entry_type, amount, currency, at, gateway_ref, metadata)",
            vec![
                Cell::Text(mercato_kernel::id::new_id("led")),
                Cell::Text(payment_id.to_owned()),
                Cell::Text(entry.as_str().to_owned()),
                Cell::Int(amount.amount),
                Cell::Text(amount.currency.as_str().to_owned()),
                Cell::Int(now.as_micros()),
                Cell::OptText(gateway_ref.map(str::to_owned)),
                Cell::Text(metadata.to_string()),
            ],
        );
        Ok(())
    }

    /// Inserts the payment (`initiated`) and its first ledger entry. The unique
    /// (checkout_id, attempt) and idempotency key make a second payment for the same attempt a
    /// `Conflict`.
    pub async fn insert_tx(tx: &mut Tx, p: &NewPayment<'_>, now: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO payments (id, checkout_id, attempt, customer_id, amount, currency, status, gateway, \
             idempotency_key, captured, refunded, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,'initiated',$7,$8,0,0,$9,$9)",
        )
        .bind(p.id)
        .bind(p.checkout_id)
        .bind(p.attempt)
        .bind(p.customer_id)
        .bind(p.amount.amount)
        .bind(p.amount.currency.as_str())
        .bind(p.gateway)
        .bind(p.idempotency_key)
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?;
        Self::ledger_tx(
            tx,
            p.id,
            Entry::Initiated,
            p.amount,
            None,
            json!({"attempt": p.attempt}),
            now,
        )
        .await
    }

    pub async fn payment(&self, id: &str) -> StoreResult<Option<PaymentRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(payment_of).transpose()
    }

    pub async fn payment_tx(tx: &mut Tx, id: &str) -> StoreResult<Option<PaymentRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(payment_of).transpose()
    }

    pub async fn by_gateway_ref(&self, gateway_ref: &str) -> StoreResult<Option<PaymentRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE gateway_ref = $1"
        ))
        .bind(gateway_ref)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(payment_of).transpose()
    }

    pub async fn by_idempotency_key(&self, key: &str) -> StoreResult<Option<PaymentRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idempotency_key = $1"
        ))
        .bind(key)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(payment_of).transpose()
    }

    /// Payments in `status` last touched before `before` (reconciliation, recovery).
    pub async fn in_status(
        &self,
        status: PaymentStatus,
        before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<PaymentRow>> {
        sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = $1 AND updated_at < $2 ORDER BY updated_at LIMIT $3"
        ))
        .bind(status.as_str())
        .bind(before.as_micros())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(payment_of)
        .collect()
    }

    /// Payment attempts a customer started since `since` (the fraud velocity signal).
    pub async fn attempts_since(&self, customer_id: &str, since: Timestamp) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM payments WHERE customer_id = $1 AND created_at > $2",
        )
        .bind(customer_id)
        .bind(since.as_micros())
        .fetch_one(self.db.reader())
        .await?)
    }

    /// Captured payments that no order references, untouched since `before`.
    pub async fn captured_without_order(
        &self,
        before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<PaymentRow>> {
        sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = 'captured' AND order_id IS NULL \
             AND updated_at < $1 ORDER BY updated_at LIMIT $2"
        ))
        .bind(before.as_micros())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(payment_of)
        .collect()
    }

    pub async fn ledger(&self, payment_id: &str) -> StoreResult<Vec<LedgerEntry>> {
        let rows = sqlx::query(
            "SELECT entry_type, amount, currency, at, gateway_ref, metadata FROM payment_ledger \
             WHERE payment_id = $1 ORDER BY seq",
        )
        .bind(payment_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                let currency: String = r.try_get("currency").map_err(g)?;
                let metadata: String = r.try_get("metadata").map_err(g)?;
                Ok(LedgerEntry {
                    entry_type: r.try_get("entry_type").map_err(g)?,
                    amount: Money::new(
                        r.try_get("amount").map_err(g)?,
                        Currency::parse(&currency).unwrap_or(Currency::USD),
                    ),
                    at: Timestamp::from_micros(r.try_get("at").map_err(g)?),
                    gateway_ref: r.try_get("gateway_ref").map_err(g)?,
                    metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
                })
            })
            .collect()
    }

    /// Moves a payment from one of `from` to `to`, setting the capture / decline facts.
    /// `false` when it was no longer in `from` (another path got there first).
    #[allow(clippy::too_many_arguments)]
    pub async fn set_status_tx(
        tx: &mut Tx,
        id: &str,
        from: &[PaymentStatus],
        to: PaymentStatus,
        captured: Option<i64>,
        gateway_ref: Option<&str>,
        decline_code: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let a = from.first().copied().unwrap_or(to);
        let b = from.get(1).copied().unwrap_or(a);
        let c = from.get(2).copied().unwrap_or(b);
        let r = sqlx::query(
            "UPDATE payments SET status = $1, captured = COALESCE($2, captured), \
             gateway_ref = COALESCE($3, gateway_ref), decline_code = COALESCE($4, decline_code), updated_at = $5 \
             WHERE id = $6 AND status IN ($7, $8, $9)",
        )
        .bind(to.as_str())
        .bind(captured)
        .bind(gateway_ref)
        .bind(decline_code)
        .bind(now.as_micros())
        .bind(id)
        .bind(a.as_str())
        .bind(b.as_str())
        .bind(c.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_order_tx(tx: &mut Tx, id: &str, order_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE payments SET order_id = $1 WHERE id = $2")
            .bind(order_id)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Reserves `amount` of the capture for a refund and records the refund intent (pending)
    /// with `refund_initiated` — or returns the existing refund for this idempotency key.
    /// `Ok(Err(remaining))` when the amount exceeds what is left to refund.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin_refund_tx(
        tx: &mut Tx,
        payment_id: &str,
        amount: Money,
        reason: &str,
        source: &str,
        source_id: Option<&str>,
        idempotency_key: &str,
        now: Timestamp,
    ) -> StoreResult<Result<RefundRow, i64>> {
        let existing = sqlx::query(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE idempotency_key = $1"
        ))
        .bind(idempotency_key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(r) = existing {
            return Ok(Ok(refund_of(&r)?));
        }
        let reserved = sqlx::query(
            "UPDATE payments SET refunded = refunded + $1, updated_at = $2 \
             WHERE id = $3 AND refunded + $1 <= captured AND status IN ('captured', 'partially_refunded')",
        )
        .bind(amount.amount)
        .bind(now.as_micros())
        .bind(payment_id)
        .execute(&mut **tx)
        .await?;
        if reserved.rows_affected() == 0 {
            let left: Option<(i64, i64)> =
                sqlx::query_as("SELECT captured, refunded FROM payments WHERE id = $1")
                    .bind(payment_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            return Ok(Err(left.map(|(c, r)| (c - r).max(0)).unwrap_or(0)));
        }
        let id = super::model::RefundId::new();
        let row = sqlx::query(&format!(
            "INSERT INTO refunds (id, payment_id, amount, currency, reason, status, idempotency_key, source, source_id, \
             attempts, next_attempt_at, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,'pending',$6,$7,$8,0,$9,$9,$9) \
             RETURNING {REFUND_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(payment_id)
        .bind(amount.amount)
        .bind(amount.currency.as_str())
        .bind(reason)
        .bind(idempotency_key)
        .bind(source)
        .bind(source_id)
        .bind(now.as_micros())
        .fetch_one(&mut **tx)
        .await?;
        Self::ledger_tx(
            tx,
            payment_id,
            Entry::RefundInitiated,
            amount,
            None,
            json!({"refund_id": id.as_str(), "reason": reason, "source": source}),
            now,
        )
        .await?;
        Ok(Ok(refund_of(&row)?))
    }

    pub async fn refund(&self, id: &str) -> StoreResult<Option<RefundRow>> {
        let row = sqlx::query(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(refund_of).transpose()
    }

    pub async fn refunds_of(&self, payment_id: &str) -> StoreResult<Vec<RefundRow>> {
        sqlx::query(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY created_at, id"
        ))
        .bind(payment_id)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(refund_of)
        .collect()
    }

    /// Pending refunds due for a (re)try.
    pub async fn due_refunds(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<RefundRow>> {
        sqlx::query(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at LIMIT $2"
        ))
        .bind(now.as_micros())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(refund_of)
        .collect()
    }

    /// Records a refund's success: status, ledger, payment status, `payment.refunded`.
    pub async fn refund_succeeded(
        &self,
        refund: &RefundRow,
        gateway_ref: &str,
        order_id: Option<&str>,
        customer_id: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query(
            "UPDATE refunds SET status = 'succeeded', gateway_ref = $1, updated_at = $2 WHERE id = $3 AND status = 'pending'",
        )
        .bind(gateway_ref)
        .bind(now.as_micros())
        .bind(&refund.refund.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let (captured, refunded_total): (i64, i64) =
            sqlx::query_as("SELECT captured, refunded FROM payments WHERE id = $1")
                .bind(&refund.refund.payment_id)
                .fetch_one(&mut *tx)
                .await?;
        let status = PaymentStatus::after_refund(captured, refunded_total);
        sqlx::query("UPDATE payments SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(now.as_micros())
            .bind(&refund.refund.payment_id)
            .execute(&mut *tx)
            .await?;
        Self::ledger_tx(
            &mut tx,
            &refund.refund.payment_id,
            Entry::Refunded,
            refund.refund.amount,
            Some(gateway_ref),
            json!({"refund_id": refund.refund.id, "source": refund.refund.source}),
            now,
        )
        .await?;
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&PaymentRefunded {
                payment_id: refund.refund.payment_id.clone(),
                refund_id: refund.refund.id.clone(),
                order_id: order_id.map(str::to_owned),
                customer_id: customer_id.to_owned(),
                amount: refund.refund.amount,
                source: refund.refund.source.clone(),
                source_id: refund.refund.source_id.clone(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed refund attempt: retried later (`retry_at`), or given up (`None`),
    /// which gives the reserved amount back to the payment.
    pub async fn refund_attempt_failed(
        &self,
        refund: &RefundRow,
        code: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        match retry_at {
            Some(at) => {
                sqlx::query(
                    "UPDATE refunds SET attempts = attempts + 1, next_attempt_at = $1, failure_code = $2, updated_at = $3 \
                     WHERE id = $4 AND status = 'pending'",
                )
                .bind(at.as_micros())
                .bind(code)
                .bind(now.as_micros())
                .bind(&refund.refund.id)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                let r = sqlx::query(
                    "UPDATE refunds SET status = 'failed', attempts = attempts + 1, failure_code = $1, updated_at = $2 \
                     WHERE id = $3 AND status = 'pending'",
                )
                .bind(code)
                .bind(now.as_micros())
                .bind(&refund.refund.id)
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 1 {
                    sqlx::query("UPDATE payments SET refunded = refunded - $1, updated_at = $2 WHERE id = $3 AND refunded >= $1")
                        .bind(refund.refund.amount.amount)
                        .bind(now.as_micros())
                        .bind(&refund.refund.payment_id)
                        .execute(&mut *tx)
                        .await?;
                    Self::ledger_tx(
                        &mut tx,
                        &refund.refund.payment_id,
                        Entry::RefundFailed,
                        refund.refund.amount,
                        None,
                        json!({"refund_id": refund.refund.id, "code": code}),
                        now,
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a gateway event id; `false` when it was already seen (a replay).
    pub async fn seen_event_tx(
        tx: &mut Tx,
        event_id: &str,
        event_type: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "INSERT INTO gateway_events (event_id, event_type, received_at) VALUES ($1,$2,$3) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(event_type)
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub fn view(p: PaymentRow, ledger: Vec<LedgerEntry>) -> Payment {
        Payment {
            id: p.id,
            checkout_id: p.checkout_id,
            order_id: p.order_id,
            customer_id: p.customer_id,
            status: p.status,
            amount: p.amount,
            captured: p.captured,
            refunded: p.refunded,
            gateway: p.gateway,
            gateway_ref: p.gateway_ref,
            decline_code: p.decline_code,
            ledger,
            created_at: p.created_at,
        }
    }
}
