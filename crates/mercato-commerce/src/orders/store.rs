//! SQL for orders, their items, status history and returns. Status changes are conditional
//! on the status read (`… WHERE id = $1 AND status = $from`), so two concurrent changes cannot
//! both apply; each writes its history entry and its event in the same transaction.

use super::model::{HistoryEntry, OrderEvent, OrderItem, OrderStatus, ReturnLine, ReturnRequest};
use crate::promotions::model::DiscountView;
use mercato_events::orders::{GuestBuyer, OrderConfirmed, OrderCreated, OrderLine, OrderSummary};
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx, bool_of, int_of};
use mercato_kernel::outbox::{self, NewEvent};
use mercato_kernel::{Currency, Money, Timestamp};
use serde_json::{Value, json};
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct OrderStore {
    db: Db,
}

#[derive(Clone, Debug)]
pub struct OrderRow {
    pub id: String,
    pub order_number: String,
    pub customer_id: String,
    pub checkout_id: String,
    pub status: OrderStatus,
    pub currency: Currency,
    pub subtotal: Money,
    pub discount: Money,
    /// The checkout's breakdown of what each promotion took off.
    pub discounts: Vec<DiscountView>,
    pub shipping: Money,
    pub tax: Money,
    pub total: Money,
    pub shipping_address: Value,
    pub shipping_method: String,
    pub payment_id: Option<String>,
    pub flagged_for_review: bool,
    /// Held for a fraud review: fulfilment waits until the review is approved.
    pub review_hold: bool,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    pub shipped_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// A guest order's buyer.
    pub guest: Option<GuestBuyer>,
    /// The short-link code the order's cart came through.
    pub attribution: Option<String>,
}

/// An order to insert (built by checkout from its locked lines).
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub id: String,
    pub order_number: String,
    pub customer_id: String,
    pub checkout_id: String,
    pub currency: Currency,
    pub subtotal: i64,
    pub discount: i64,
    pub discounts: Vec<DiscountView>,
    pub shipping: i64,
    pub tax: i64,
    pub total: i64,
    pub shipping_address: Value,
    pub shipping_method: String,
    pub payment_id: Option<String>,
    pub items: Vec<OrderItem>,
    pub guest: Option<GuestBuyer>,
    pub attribution: Option<String>,
}

impl OrderRow {
    /// Whether `p` bought this order: its customer, or the guest holding its token (also after
    /// the order attached to the account that verified the guest's email).
    pub fn bought_by(&self, p: &mercato_kernel::auth::Principal) -> bool {
        self.customer_id == p.subject
            || (p.is_guest()
                && self
                    .guest
                    .as_ref()
                    .is_some_and(|g| mercato_kernel::auth::guest_subject(&g.token) == p.subject))
    }
}

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

const ORDER_COLUMNS: &str = "id, order_number, customer_id, checkout_id, status, currency, subtotal, discount, \
    shipping, tax, total, shipping_address, shipping_method, payment_id, flagged_for_review, carrier, \
    tracking_number, shipped_at, delivered_at, version, created_at, updated_at, guest_email, guest_token, attribution, discounts, \
    review_hold";

fn order_of(r: &Row) -> StoreResult<OrderRow> {
    let currency: String = r.try_get("currency").map_err(g)?;
    let currency = Currency::parse(&currency).unwrap_or(Currency::USD);
    let m =
        |col: &str| -> StoreResult<Money> { Ok(Money::new(r.try_get(col).map_err(g)?, currency)) };
    let status: String = r.try_get("status").map_err(g)?;
    let ts = |col: &str| -> StoreResult<Option<Timestamp>> {
        Ok(r.try_get::<Option<i64>, _>(col)
            .map_err(g)?
            .map(Timestamp::from_micros))
    };
    Ok(OrderRow {
        id: r.try_get("id").map_err(g)?,
        order_number: r.try_get("order_number").map_err(g)?,
        customer_id: r.try_get("customer_id").map_err(g)?,
        checkout_id: r.try_get("checkout_id").map_err(g)?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad status {status}")))?,
        currency,
        subtotal: m("subtotal")?,
        discount: m("discount")?,
        discounts: serde_json::from_str(&r.try_get::<String, _>("discounts").map_err(g)?)
            .map_err(|e| StoreError::Other(e.into()))?,
        shipping: m("shipping")?,
        tax: m("tax")?,
        total: m("total")?,
        shipping_address: serde_json::from_str(
            &r.try_get::<String, _>("shipping_address").map_err(g)?,
        )
        .unwrap_or(Value::Null),
        shipping_method: r.try_get("shipping_method").map_err(g)?,
        payment_id: r.try_get("payment_id").map_err(g)?,
        flagged_for_review: bool_of(r.try_get("flagged_for_review").map_err(g)?),
        review_hold: bool_of(r.try_get("review_hold").map_err(g)?),
        carrier: r.try_get("carrier").map_err(g)?,
        tracking_number: r.try_get("tracking_number").map_err(g)?,
        shipped_at: ts("shipped_at")?,
        delivered_at: ts("delivered_at")?,
        version: r.try_get("version").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
        guest: match (
            r.try_get::<Option<String>, _>("guest_email").map_err(g)?,
            r.try_get::<Option<String>, _>("guest_token").map_err(g)?,
        ) {
            (Some(email), Some(token)) => Some(GuestBuyer { email, token }),
            _ => None,
        },
        attribution: r.try_get("attribution").map_err(g)?,
    })
}

fn item_of(r: &Row, currency: Currency) -> StoreResult<OrderItem> {
    let m =
        |col: &str| -> StoreResult<Money> { Ok(Money::new(r.try_get(col).map_err(g)?, currency)) };
    Ok(OrderItem {
        sku: r.try_get("sku").map_err(g)?,
        variant_id: r.try_get("variant_id").map_err(g)?,
        product_id: r.try_get("product_id").map_err(g)?,
        name: r.try_get("name").map_err(g)?,
        quantity: r.try_get("quantity").map_err(g)?,
        unit_price: m("unit_price")?,
        line_total: m("line_total")?,
        tax: m("tax")?,
        discount: m("discount")?,
        seller_id: r.try_get("seller_id").map_err(g)?,
        returned_quantity: r.try_get("returned_quantity").map_err(g)?,
    })
}

fn return_of(r: &Row) -> StoreResult<ReturnRequest> {
    let currency: String = r.try_get("currency").map_err(g)?;
    let currency = Currency::parse(&currency).unwrap_or(Currency::USD);
    let items: String = r.try_get("items").map_err(g)?;
    Ok(ReturnRequest {
        id: r.try_get("id").map_err(g)?,
        order_id: r.try_get("order_id").map_err(g)?,
        status: r.try_get("status").map_err(g)?,
        items: serde_json::from_str::<Vec<ReturnLine>>(&items).unwrap_or_default(),
        reason: r.try_get("reason").map_err(g)?,
        refund_amount: r
            .try_get::<Option<i64>, _>("refund_amount")
            .map_err(g)?
            .map(|a| Money::new(a, currency)),
        decision_reason: r.try_get("decision_reason").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
    })
}

/// The event announcing that an order reached `to`.
/// What a status change adds to its `order.<status>` event besides the order's summary.
#[derive(Clone, Debug, Default)]
pub enum Details {
    #[default]
    None,
    /// `order.shipped` (the carrier and tracking number also on the order).
    Shipment {
        carrier: String,
        tracking_number: String,
    },
    /// `order.returned`: the approved return.
    Return { return_id: String },
    /// `order.refunded`: the money given back and the refund that gave it.
    Refund {
        amount: Money,
        refund_id: Option<String>,
        source: Option<String>,
    },
}

/// The `order.<status>` event of a change to `to` (a change whose event needs details it was
/// not given is a bug of the caller: the transaction fails).
fn status_event(
    to: OrderStatus,
    order: OrderSummary,
    reason: Option<&str>,
    details: Details,
) -> StoreResult<NewEvent> {
    use mercato_events::orders as ev;
    let reason = reason.map(str::to_owned);
    let missing = |what: &str| {
        StoreError::Other(anyhow::anyhow!(
            "order.{} of {} needs {what}",
            to.as_str(),
            order.order_id
        ))
    };
    Ok(match (to, details) {
        (OrderStatus::Pending, _) => NewEvent::of(&ev::OrderCreated { order, reason }),
        (OrderStatus::Confirmed, _) => NewEvent::of(&ev::OrderConfirmed { order, reason }),
        (OrderStatus::Failed, _) => NewEvent::of(&ev::OrderFailed { order, reason }),
        (OrderStatus::Cancelled, _) => NewEvent::of(&ev::OrderCancelled { order, reason }),
        (OrderStatus::Processing, _) => NewEvent::of(&ev::OrderFulfilmentStarted { order, reason }),
        (
            OrderStatus::Shipped,
            Details::Shipment {
                carrier,
                tracking_number,
            },
        ) => NewEvent::of(&ev::OrderShipped {
            order,
            reason,
            carrier,
            tracking_number,
        }),
        (OrderStatus::Shipped, _) => return Err(missing("the shipment")),
        (OrderStatus::Delivered, _) => NewEvent::of(&ev::OrderDelivered { order, reason }),
        (OrderStatus::Returned, Details::Return { return_id }) => {
            NewEvent::of(&ev::OrderReturned {
                order,
                reason,
                return_id,
            })
        }
        (OrderStatus::Returned, _) => return Err(missing("the return")),
        (
            OrderStatus::Refunded,
            Details::Refund {
                amount,
                refund_id,
                source,
            },
        ) => NewEvent::of(&ev::OrderRefunded {
            order,
            reason,
            amount,
            refund_id,
            source,
        }),
        (OrderStatus::Refunded, _) => return Err(missing("the refund")),
    })
}

const RETURN_COLUMNS: &str = "id, order_id, status, items, reason, refund_amount, currency, decision_reason, created_at, updated_at";

impl OrderStore {
    pub fn new(db: Db) -> OrderStore {
        OrderStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    async fn history_tx(
        tx: &mut Tx,
        order_id: &str,
        from: Option<OrderStatus>,
        to: OrderStatus,
        actor: &str,
        reason: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        // Every status an order reaches passes here (counted when written; a rolled-back
        // transaction may over-count by one, which a monitoring counter tolerates).
        metrics::counter!("orders_by_status_total", "status" => to.as_str()).increment(1);
        use mercato_kernel::db::Cell;
        tx.append_row(
            "INSERT INTO order_history (order_id, from_status, to_status, at, actor, reason)",
            vec![
                Cell::Text(order_id.to_owned()),
                Cell::OptText(from.map(|f| f.as_str().to_owned())),
                Cell::Text(to.as_str().to_owned()),
                Cell::Int(now.as_micros()),
                Cell::Text(actor.to_owned()),
                Cell::OptText(reason.map(str::to_owned)),
            ],
        );
        outbox::audit(
            tx,
            now,
            actor,
            &format!("order.{}", to.as_str()),
            "order",
            order_id,
            json!({"from": from.map(|f| f.as_str()), "to": to.as_str(), "reason": reason}),
        )
        .await?;
        Ok(())
    }

    /// The payload every order event carries.
    /// The order as its `order.*` events carry it.
    pub fn summary(o: &OrderRow, items: &[OrderItem]) -> OrderSummary {
        OrderSummary {
            order_id: o.id.clone(),
            order_number: o.order_number.clone(),
            customer_id: o.customer_id.clone(),
            checkout_id: o.checkout_id.clone(),
            status: o.status.as_str().to_owned(),
            total: o.total,
            items: items
                .iter()
                .map(|i| OrderLine {
                    sku: i.sku.clone(),
                    name: i.name.clone(),
                    quantity: i.quantity,
                    product_id: i.product_id.clone(),
                    seller_id: i.seller_id.clone(),
                    unit_price: i.unit_price,
                })
                .collect(),
            guest: o.guest.clone(),
            attribution: o.attribution.clone(),
        }
    }

    /// Inserts an order in `status` (pending, or confirmed straight away) with its items and
    /// history; emits `order.created` (and `order.confirmed`). One order per checkout: a
    /// second insert for the same checkout is a `Conflict`.
    pub async fn insert_tx(
        tx: &mut Tx,
        o: &NewOrder,
        status: OrderStatus,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<OrderRow> {
        let row = sqlx::query(&format!(
            "INSERT INTO orders (id, order_number, customer_id, checkout_id, status, currency, subtotal, discount, \
             shipping, tax, total, shipping_address, shipping_method, payment_id, flagged_for_review, version, \
             created_at, updated_at, guest_email, guest_token, attribution, discounts) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,0,1,$15,$15,$16,$17,$18,$19) \
             RETURNING {ORDER_COLUMNS}"
        ))
        .bind(&o.id)
        .bind(&o.order_number)
        .bind(&o.customer_id)
        .bind(&o.checkout_id)
        .bind(status.as_str())
        .bind(o.currency.as_str())
        .bind(o.subtotal)
        .bind(o.discount)
        .bind(o.shipping)
        .bind(o.tax)
        .bind(o.total)
        .bind(o.shipping_address.to_string())
        .bind(&o.shipping_method)
        .bind(&o.payment_id)
        .bind(now.as_micros())
        .bind(o.guest.as_ref().map(|g| g.email.as_str()))
        .bind(o.guest.as_ref().map(|g| g.token.as_str()))
        .bind(o.attribution.as_deref())
        .bind(serde_json::to_string(&o.discounts).map_err(|e| StoreError::Other(e.into()))?)
        .fetch_one(&mut **tx)
        .await?;
        use mercato_kernel::db::Cell;
        for i in &o.items {
            // Written at commit, with the order's other items, in one statement.
            tx.append_row(
                "INSERT INTO order_items (order_id, sku, variant_id, product_id, name, quantity, unit_price, \
                 line_total, tax, seller_id, returned_quantity, discount)",
                vec![
                    Cell::Text(o.id.clone()),
                    Cell::Text(i.sku.clone()),
                    Cell::Text(i.variant_id.clone()),
                    Cell::Text(i.product_id.clone()),
                    Cell::Text(i.name.clone()),
                    Cell::Int(i.quantity),
                    Cell::Int(i.unit_price.amount),
                    Cell::Int(i.line_total.amount),
                    Cell::Int(i.tax.amount),
                    Cell::Text(i.seller_id.clone()),
                    Cell::Int(0),
                    Cell::Int(i.discount.amount),
                ],
            );
        }
        let order = order_of(&row)?;
        Self::history_tx(
            tx,
            &o.id,
            None,
            OrderStatus::Pending,
            actor,
            Some("checkout"),
            now,
        )
        .await?;
        outbox::append(
            tx,
            now,
            NewEvent::of(&OrderCreated {
                order: Self::summary(&order, &o.items),
                reason: None,
            }),
        )
        .await?;
        if status == OrderStatus::Confirmed {
            Self::history_tx(
                tx,
                &o.id,
                Some(OrderStatus::Pending),
                OrderStatus::Confirmed,
                actor,
                Some("payment captured"),
                now,
            )
            .await?;
            outbox::append(
                tx,
                now,
                NewEvent::of(&OrderConfirmed {
                    order: Self::summary(&order, &o.items),
                    reason: None,
                }),
            )
            .await?;
        }
        Ok(order)
    }

    /// Guest orders bought with `email` become `user_id`'s (idempotent: an attached order is
    /// no longer a guest's). Returns how many attached.
    pub async fn attach_guest_orders(
        &self,
        email: &str,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.db.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET customer_id = $1, updated_at = $2 \
             WHERE guest_email = $3 AND customer_id LIKE 'gst\\_%' ESCAPE '\\'",
        )
        .bind(user_id)
        .bind(now.as_micros())
        .bind(email)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    pub async fn order(&self, id: &str) -> StoreResult<Option<OrderRow>> {
        let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?;
        row.as_ref().map(order_of).transpose()
    }

    pub async fn order_by_checkout(&self, checkout_id: &str) -> StoreResult<Option<OrderRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE checkout_id = $1"
        ))
        .bind(checkout_id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(order_of).transpose()
    }

    /// `(id, order_number, status)` of the checkout's order, inside the caller's transaction.
    pub async fn by_checkout_tx(
        tx: &mut Tx,
        checkout_id: &str,
    ) -> StoreResult<Option<(String, String, OrderStatus)>> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT id, order_number, status FROM orders WHERE checkout_id = $1")
                .bind(checkout_id)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(row.and_then(|(id, n, s)| OrderStatus::parse(&s).map(|st| (id, n, st))))
    }

    /// `(order id, currency, created_at, seller, sku, quantity, line total)` of the lines of
    /// orders created in [from, to) that were confirmed (not pending or failed).
    #[allow(clippy::type_complexity)]
    pub async fn sales_lines(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<(String, String, i64, String, String, i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT o.id, o.currency, o.created_at, i.seller_id, i.sku, i.quantity, i.line_total \
             FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.created_at >= $1 AND o.created_at < $2 AND o.status NOT IN ('pending', 'failed')",
        )
        .bind(from.as_micros())
        .bind(to.as_micros())
        .fetch_all(self.db.reader())
        .await?)
    }

    pub async fn order_tx(tx: &mut Tx, id: &str) -> StoreResult<Option<OrderRow>> {
        let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(order_of).transpose()
    }

    pub async fn items(&self, order_id: &str, currency: Currency) -> StoreResult<Vec<OrderItem>> {
        sqlx::query(
            "SELECT sku, variant_id, product_id, name, quantity, unit_price, line_total, tax, seller_id, \
             returned_quantity, discount FROM order_items WHERE order_id = $1 ORDER BY sku",
        )
        .bind(order_id)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(|r| item_of(r, currency))
        .collect()
    }

    pub async fn items_tx(
        tx: &mut Tx,
        order_id: &str,
        currency: Currency,
    ) -> StoreResult<Vec<OrderItem>> {
        sqlx::query(
            "SELECT sku, variant_id, product_id, name, quantity, unit_price, line_total, tax, seller_id, \
             returned_quantity, discount FROM order_items WHERE order_id = $1 ORDER BY sku",
        )
        .bind(order_id)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| item_of(r, currency))
        .collect()
    }

    pub async fn history(&self, order_id: &str) -> StoreResult<Vec<HistoryEntry>> {
        let rows = sqlx::query(
            "SELECT from_status, to_status, at, actor, reason FROM order_history WHERE order_id = $1 ORDER BY seq",
        )
        .bind(order_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get("from_status").map_err(g)?;
                let to: String = r.try_get("to_status").map_err(g)?;
                Ok(HistoryEntry {
                    from: from.as_deref().and_then(OrderStatus::parse),
                    to: OrderStatus::parse(&to).unwrap_or(OrderStatus::Pending),
                    at: Timestamp::from_micros(r.try_get("at").map_err(g)?),
                    actor: r.try_get("actor").map_err(g)?,
                    reason: r.try_get("reason").map_err(g)?,
                })
            })
            .collect()
    }

    /// Applies `event` if the order is still in `from`; `Ok(None)` when it no longer is (a
    /// concurrent change won). Writes history, audit and the status event.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition_tx(
        tx: &mut Tx,
        order_id: &str,
        from: OrderStatus,
        event: OrderEvent,
        actor: &str,
        reason: Option<&str>,
        details: Details,
        now: Timestamp,
    ) -> StoreResult<Option<OrderRow>> {
        let to = from
            .transition(event)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("{e}")))?;
        let delivered = if to == OrderStatus::Delivered {
            Some(now.as_micros())
        } else {
            None
        };
        let row = sqlx::query(&format!(
            "UPDATE orders SET status = $1, version = version + 1, updated_at = $2, \
             delivered_at = COALESCE($3, delivered_at) WHERE id = $4 AND status = $5 RETURNING {ORDER_COLUMNS}"
        ))
        .bind(to.as_str())
        .bind(now.as_micros())
        .bind(delivered)
        .bind(order_id)
        .bind(from.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let order = order_of(&row)?;
        Self::history_tx(tx, order_id, Some(from), to, actor, reason, now).await?;
        let items = Self::items_tx(tx, order_id, order.currency).await?;
        let event = status_event(to, Self::summary(&order, &items), reason, details)?;
        outbox::append(tx, now, event.version(order.version)).await?;
        Ok(Some(order))
    }

    pub async fn set_payment_tx(tx: &mut Tx, order_id: &str, payment_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE orders SET payment_id = $1 WHERE id = $2")
            .bind(payment_id)
            .bind(order_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn set_shipment_tx(
        tx: &mut Tx,
        order_id: &str,
        carrier: &str,
        tracking: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE orders SET carrier = $1, tracking_number = $2, shipped_at = $3 WHERE id = $4",
        )
        .bind(carrier)
        .bind(tracking)
        .bind(now.as_micros())
        .bind(order_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Holds an order for a fraud review (`true`, in the checkout transaction that creates it)
    /// or releases it (`false`, the review approved). Also marks it flagged for review.
    pub async fn set_review_hold_tx(
        tx: &mut Tx,
        order_id: &str,
        hold: bool,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "UPDATE orders SET review_hold = $1, flagged_for_review = $2, version = version + 1, \
             updated_at = $3 WHERE id = $4 AND review_hold <> $1",
        )
        .bind(int_of(hold))
        .bind(int_of(true))
        .bind(now.as_micros())
        .bind(order_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n > 0 {
            outbox::audit(
                tx,
                now,
                actor,
                if hold {
                    "order.review_hold"
                } else {
                    "order.review_released"
                },
                "order",
                order_id,
                serde_json::json!({ "review_hold": hold }),
            )
            .await?;
        }
        Ok(n > 0)
    }

    /// Flags an order for a human look (chargebacks, fraud signals).
    pub async fn flag_tx(
        tx: &mut Tx,
        order_id: &str,
        actor: &str,
        why: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE orders SET flagged_for_review = $1, version = version + 1, updated_at = $2 WHERE id = $3")
            .bind(int_of(true))
            .bind(now.as_micros())
            .bind(order_id)
            .execute(&mut **tx)
            .await?;
        outbox::audit(
            tx,
            now,
            actor,
            "order.flagged",
            "order",
            order_id,
            json!({"why": why}),
        )
        .await?;
        Ok(())
    }

    /// Orders newest first with optional filters; keyset on (created_at, id).
    pub async fn list(
        &self,
        f: &ListFilter,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<OrderRow>> {
        let (ts, id) = after.unwrap_or((i64::MAX, "\u{10FFFF}".to_owned()));
        let mut sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders o WHERE (o.created_at < $1 OR (o.created_at = $1 AND o.id < $2))"
        );
        let mut binds: Vec<String> = Vec::new();
        if let Some(c) = &f.customer_id {
            binds.push(c.clone());
            sql.push_str(&format!(" AND o.customer_id = ${}", binds.len() + 3));
        }
        if let Some(s) = f.status {
            binds.push(s.as_str().to_owned());
            sql.push_str(&format!(" AND o.status = ${}", binds.len() + 3));
        }
        if let Some(s) = &f.seller_id {
            binds.push(s.clone());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id AND i.seller_id = ${})",
                binds.len() + 3
            ));
        }
        sql.push_str(" ORDER BY o.created_at DESC, o.id DESC LIMIT $3");
        let mut q = sqlx::query(&sql)
            .bind(ts)
            .bind(id)
            .bind(i64::from(limit) + 1);
        for b in &binds {
            q = q.bind(b);
        }
        q.fetch_all(self.db.reader())
            .await?
            .iter()
            .map(order_of)
            .collect()
    }

    pub async fn insert_return_tx(
        tx: &mut Tx,
        r: &ReturnRequest,
        customer_id: &str,
        currency: Currency,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO returns (id, order_id, customer_id, status, items, reason, currency, created_at, updated_at) \
             VALUES ($1,$2,$3,'requested',$4,$5,$6,$7,$7)",
        )
        .bind(&r.id)
        .bind(&r.order_id)
        .bind(customer_id)
        .bind(serde_json::to_string(&r.items).unwrap_or_else(|_| "[]".into()))
        .bind(&r.reason)
        .bind(currency.as_str())
        .bind(r.created_at.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn return_request(&self, id: &str) -> StoreResult<Option<ReturnRequest>> {
        let row = sqlx::query(&format!(
            "SELECT {RETURN_COLUMNS} FROM returns WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(return_of).transpose()
    }

    pub async fn returns_of(&self, order_id: &str) -> StoreResult<Vec<ReturnRequest>> {
        sqlx::query(&format!(
            "SELECT {RETURN_COLUMNS} FROM returns WHERE order_id = $1 ORDER BY created_at"
        ))
        .bind(order_id)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(return_of)
        .collect()
    }

    /// Decides a requested return (conditional on it still being requested).
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_return_tx(
        tx: &mut Tx,
        id: &str,
        approved: bool,
        refund_amount: Option<i64>,
        refund_id: Option<&str>,
        reason: Option<&str>,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE returns SET status = $1, refund_amount = $2, refund_id = $3, decision_reason = $4, \
             decided_by = $5, updated_at = $6 WHERE id = $7 AND status = 'requested'",
        )
        .bind(if approved { "approved" } else { "rejected" })
        .bind(refund_amount)
        .bind(refund_id)
        .bind(reason)
        .bind(actor)
        .bind(now.as_micros())
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Adds returned units to a line; refuses (false) to go above the quantity bought.
    pub async fn add_returned_tx(
        tx: &mut Tx,
        order_id: &str,
        sku: &str,
        quantity: i64,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE order_items SET returned_quantity = returned_quantity + $1 \
             WHERE order_id = $2 AND sku = $3 AND returned_quantity + $1 <= quantity",
        )
        .bind(quantity)
        .bind(order_id)
        .bind(sku)
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Whether `customer_id` has a delivered (or later) order containing `product_id`.
    pub async fn has_received(&self, customer_id: &str, product_id: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.customer_id = $1 AND i.product_id = $2 AND o.status IN ('delivered', 'returned', 'refunded')",
        )
        .bind(customer_id)
        .bind(product_id)
        .fetch_one(self.db.reader())
        .await?;
        Ok(n > 0)
    }
}

/// Filters for listing orders.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub seller_id: Option<String>,
    pub status: Option<OrderStatus>,
}
