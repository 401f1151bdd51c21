//! Order use cases. Status changes go through the state machine in `model.rs` and are applied
//! conditionally on the status read; side effects on stock and money happen in the same
//! transaction as the change (stock) or as an intent committed with it and executed right
//! after (refunds, through payments — retried by the refund worker with the same key).

use super::model::{
    HistoryEntry, InvalidTransition, Order, OrderEvent, OrderItem, OrderStatus, PaymentSummary,
    RETURN_WINDOW_DAYS, ReturnId, ReturnLine, ReturnRequest, Shipment,
};
use super::store::{Details, ListFilter, NewOrder, OrderRow, OrderStore};
use crate::inventory::InventoryService;
use crate::payments::PaymentService;
use crate::seams::PurchaseVerifier;
use mercato_events::fraud::FraudFlagged;
use mercato_events::identity::EmailVerified;
use mercato_events::orders::{OrderRefunded, ReturnRequested, ReturnedLine};
use mercato_events::payments::{PaymentChargeback, PaymentRefunded};
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::db::{StoreError, Tx};
use mercato_kernel::error::{ApiError, Code, Validator};
use mercato_kernel::money::div_round_half_even;
use mercato_kernel::outbox::{self, Event, EventHandler, EventPayload as _, NewEvent};
use mercato_kernel::{Kernel, Money, Timestamp};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("not found")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0}")]
    Transition(InvalidTransition),
    #[error("return not allowed: {0}")]
    ReturnNotAllowed(String),
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for OrderError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => OrderError::NotFound,
            other => OrderError::Unexpected(other.into()),
        }
    }
}

impl From<crate::payments::PaymentError> for OrderError {
    fn from(e: crate::payments::PaymentError) -> Self {
        OrderError::Invalid(e.into())
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> ApiError {
        match e {
            OrderError::NotFound => ApiError::not_found(),
            OrderError::Forbidden(d) => ApiError::forbidden().detail(d),
            OrderError::Transition(t) => ApiError::new(Code::InvalidTransition)
                .detail(format!(
                    "an order cannot go from {} to {}",
                    t.from.as_str(),
                    t.to.as_str()
                ))
                .with("from", t.from.as_str())
                .with("to", t.to.as_str()),
            OrderError::ReturnNotAllowed(d) => ApiError::new(Code::ReturnNotAllowed).detail(d),
            OrderError::Invalid(e) => e,
            OrderError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// A new order number: "M" + yymmdd + "-" + 6 random Crockford characters (~1e9 per day).
pub fn order_number(now: Timestamp) -> String {
    let date = now.to_jiff().strftime("%y%m%d").to_string();
    let suffix = mercato_kernel::id::new_secret_id("x");
    let tail: String = suffix.chars().rev().take(6).collect();
    format!("M{date}-{tail}")
}

#[derive(Clone)]
pub struct OrderService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: OrderStore,
    payments: PaymentService,
}

/// Query of `GET /orders`.
#[derive(Clone, Debug, Default)]
pub struct OrderQuery {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SalesRow {
    /// The day (YYYY-MM-DD), seller id or SKU.
    pub key: String,
    pub orders: i64,
    pub units: i64,
    pub revenue: Money,
    pub refunds: Money,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SalesReport {
    pub from: Timestamp,
    pub to: Timestamp,
    pub group_by: String,
    pub rows: Vec<SalesRow>,
    pub totals: SalesRow,
}

impl OrderService {
    pub fn new(kernel: Kernel, payments: PaymentService) -> OrderService {
        OrderService {
            inner: Arc::new(Inner {
                store: OrderStore::new(kernel.db.clone()),
                kernel,
                payments,
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    fn db(&self) -> &mercato_kernel::db::Db {
        self.inner.store.db()
    }

    /// Inserts an order in the caller's (checkout) transaction.
    pub async fn insert_tx(
        tx: &mut Tx,
        o: &NewOrder,
        status: OrderStatus,
        actor: &str,
        now: Timestamp,
    ) -> Result<OrderRow, StoreError> {
        OrderStore::insert_tx(tx, o, status, actor, now).await
    }

    /// Applies `event` in the caller's transaction if the order is still `from`.
    pub async fn transition_tx(
        tx: &mut Tx,
        order_id: &str,
        from: OrderStatus,
        event: OrderEvent,
        actor: &str,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<OrderRow>, StoreError> {
        OrderStore::transition_tx(tx, order_id, from, event, actor, reason, Details::None, now)
            .await
    }

    /// `(id, order_number, status)` of the checkout's order, inside the caller's transaction.
    pub async fn by_checkout_tx(
        tx: &mut Tx,
        checkout_id: &str,
    ) -> Result<Option<(String, String, OrderStatus)>, StoreError> {
        OrderStore::by_checkout_tx(tx, checkout_id).await
    }

    /// Holds (`true`) or releases (`false`) an order for a fraud review, in the caller's
    /// transaction. Whether it changed.
    pub async fn set_review_hold_tx(
        tx: &mut Tx,
        order_id: &str,
        hold: bool,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        OrderStore::set_review_hold_tx(tx, order_id, hold, actor, now).await
    }

    pub async fn set_payment_tx(
        tx: &mut Tx,
        order_id: &str,
        payment_id: &str,
    ) -> Result<(), StoreError> {
        OrderStore::set_payment_tx(tx, order_id, payment_id).await
    }

    pub async fn row(&self, id: &str) -> Result<OrderRow, OrderError> {
        self.inner
            .store
            .order(id)
            .await?
            .ok_or(OrderError::NotFound)
    }

    pub async fn by_checkout(&self, checkout_id: &str) -> Result<Option<OrderRow>, OrderError> {
        Ok(self.inner.store.order_by_checkout(checkout_id).await?)
    }

    async fn summary(&self, o: &OrderRow) -> PaymentSummary {
        let zero = Money::zero(o.currency);
        match &o.payment_id {
            Some(pid) => match self.inner.payments.payment_row(pid).await {
                Ok(p) => PaymentSummary {
                    id: Some(p.id),
                    status: p.status.as_str().to_owned(),
                    captured: p.captured,
                    refunded: p.refunded,
                },
                Err(_) => PaymentSummary {
                    id: Some(pid.clone()),
                    status: "unknown".into(),
                    captured: zero,
                    refunded: zero,
                },
            },
            None => PaymentSummary {
                id: None,
                status: "none".into(),
                captured: zero,
                refunded: zero,
            },
        }
    }

    async fn render(
        &self,
        o: OrderRow,
        items: Vec<OrderItem>,
        history: Vec<HistoryEntry>,
    ) -> Order {
        let payment = self.summary(&o).await;
        Order {
            shipment: match (&o.carrier, &o.tracking_number, o.shipped_at) {
                (Some(c), Some(t), Some(at)) => Some(Shipment {
                    carrier: c.clone(),
                    tracking_number: t.clone(),
                    shipped_at: at,
                }),
                _ => None,
            },
            id: o.id,
            order_number: o.order_number,
            status: o.status,
            customer_id: o.customer_id,
            checkout_id: o.checkout_id,
            items,
            subtotal: o.subtotal,
            discount: o.discount,
            discounts: o.discounts,
            shipping: o.shipping,
            tax: o.tax,
            total: o.total,
            shipping_address: o.shipping_address,
            shipping_method: o.shipping_method,
            payment,
            flagged_for_review: o.flagged_for_review,
            under_review: o.review_hold,
            risk: None,
            attribution: o.attribution,
            history,
            created_at: o.created_at,
            updated_at: o.updated_at,
            delivered_at: o.delivered_at,
            version: o.version,
        }
    }

    /// Whether `viewer` may see the order, and which items (sellers see only theirs).
    fn visible_items(
        &self,
        o: &OrderRow,
        items: Vec<OrderItem>,
        viewer: &Principal,
    ) -> Option<Vec<OrderItem>> {
        match viewer.role {
            Role::Admin => Some(items),
            Role::Seller if o.customer_id != viewer.subject => {
                let mine: Vec<OrderItem> = items
                    .into_iter()
                    .filter(|i| i.seller_id == viewer.subject)
                    .collect();
                (!mine.is_empty()).then_some(mine)
            }
            _ if o.bought_by(viewer) => Some(items),
            _ => None,
        }
    }

    /// The order as `viewer` may see it (404 when not theirs).
    pub async fn view(&self, id: &str, viewer: &Principal) -> Result<Order, OrderError> {
        let o = self.row(id).await?;
        let items = self.inner.store.items(&o.id, o.currency).await?;
        let items = self
            .visible_items(&o, items, viewer)
            .ok_or(OrderError::NotFound)?;
        let history = self.inner.store.history(&o.id).await?;
        Ok(self.render(o, items, history).await)
    }

    /// Orders visible to `viewer`, newest first: customers their own; sellers those holding
    /// their items; admins all (filters `status`, `customer_id`).
    pub async fn list(
        &self,
        viewer: &Principal,
        q: &OrderQuery,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Order>, OrderError> {
        let mut f = ListFilter {
            status: q.status,
            ..ListFilter::default()
        };
        match viewer.role {
            Role::Admin => f.customer_id = q.customer_id.clone(),
            Role::Seller => f.seller_id = Some(viewer.subject.clone()),
            _ => f.customer_id = Some(viewer.subject.clone()),
        }
        let rows = self.inner.store.list(&f, after, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for o in rows {
            let items = self.inner.store.items(&o.id, o.currency).await?;
            let Some(items) = self.visible_items(&o, items, viewer) else {
                continue;
            };
            let history = self.inner.store.history(&o.id).await?;
            out.push(self.render(o, items, history).await);
        }
        Ok(out)
    }

    fn can_fulfil(&self, viewer: &Principal, items: &[OrderItem]) -> Result<(), OrderError> {
        match viewer.role {
            Role::Admin => Ok(()),
            Role::Seller if items.iter().any(|i| i.seller_id == viewer.subject) => Ok(()),
            Role::Seller => Err(OrderError::NotFound),
            _ => Err(OrderError::Forbidden(
                "only admins and the order's sellers fulfil orders".into(),
            )),
        }
    }

    async fn transition(
        &self,
        actor: &Principal,
        id: &str,
        event: OrderEvent,
        reason: Option<&str>,
        shipment: Option<(&str, &str)>,
    ) -> Result<Order, OrderError> {
        let o = self.row(id).await?;
        let items = self.inner.store.items(&o.id, o.currency).await?;
        if self.visible_items(&o, items.clone(), actor).is_none() {
            return Err(OrderError::NotFound);
        }
        self.can_fulfil(actor, &items)?;
        o.status.transition(event).map_err(OrderError::Transition)?;
        if o.review_hold {
            return Err(OrderError::Invalid(
                ApiError::new(mercato_kernel::error::Code::OrderUnderReview)
                    .detail("the order is held for a fraud review; approve the review first"),
            ));
        }
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let details = match shipment {
            Some((carrier, tracking)) => {
                OrderStore::set_shipment_tx(&mut tx, id, carrier, tracking, now).await?;
                Details::Shipment {
                    carrier: carrier.to_owned(),
                    tracking_number: tracking.to_owned(),
                }
            }
            None => Details::None,
        };
        let moved = OrderStore::transition_tx(
            &mut tx,
            id,
            o.status,
            event,
            &actor.subject,
            reason,
            details,
            now,
        )
        .await?;
        if moved.is_none() {
            tx.rollback().await.map_err(StoreError::from)?;
            let current = self.row(id).await?;
            return Err(OrderError::Transition(InvalidTransition {
                from: current.status,
                to: event.target(),
            }));
        }
        tx.commit().await.map_err(StoreError::from)?;
        self.view(id, actor).await
    }

    pub async fn fulfil(&self, actor: &Principal, id: &str) -> Result<Order, OrderError> {
        self.transition(
            actor,
            id,
            OrderEvent::StartFulfilment,
            Some("fulfilment started"),
            None,
        )
        .await
    }

    pub async fn ship(
        &self,
        actor: &Principal,
        id: &str,
        carrier: &str,
        tracking: &str,
    ) -> Result<Order, OrderError> {
        let mut v = Validator::new();
        v.check(
            !carrier.trim().is_empty() && carrier.chars().count() <= 100,
            "carrier",
            "carrier is required (≤ 100 chars)",
        );
        v.check(
            !tracking.trim().is_empty() && tracking.chars().count() <= 100,
            "tracking_number",
            "tracking_number is required (≤ 100 chars)",
        );
        v.finish().map_err(OrderError::Invalid)?;
        self.transition(
            actor,
            id,
            OrderEvent::Ship,
            Some("shipped"),
            Some((carrier.trim(), tracking.trim())),
        )
        .await
    }

    pub async fn deliver(&self, actor: &Principal, id: &str) -> Result<Order, OrderError> {
        self.transition(actor, id, OrderEvent::Deliver, Some("delivered"), None)
            .await
    }

    /// Cancels an order: customers their own while confirmed or processing, admins any order
    /// the state machine allows. Stock is released (pending) or put back (confirmed,
    /// processing) and the capture is refunded in full — exactly once: the status change is
    /// conditional and the refund is keyed by the order.
    pub async fn cancel(
        &self,
        actor: &Principal,
        id: &str,
        reason: &str,
    ) -> Result<Order, OrderError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(OrderError::Invalid(ApiError::invalid(
                "reason",
                "reason is required (≤ 500 chars)",
            )));
        }
        let o = self.row(id).await?;
        match actor.role {
            Role::Admin => {}
            _ if o.bought_by(actor) => {
                if !matches!(o.status, OrderStatus::Confirmed | OrderStatus::Processing) {
                    o.status
                        .transition(OrderEvent::Cancel)
                        .map_err(OrderError::Transition)?;
                    return Err(OrderError::Forbidden(
                        "customers can cancel confirmed or processing orders".into(),
                    ));
                }
            }
            _ => return Err(OrderError::NotFound),
        }
        o.status
            .transition(OrderEvent::Cancel)
            .map_err(OrderError::Transition)?;
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let moved = OrderStore::transition_tx(
            &mut tx,
            id,
            o.status,
            OrderEvent::Cancel,
            &actor.subject,
            Some(reason),
            Details::None,
            now,
        )
        .await?;
        if moved.is_none() {
            tx.rollback().await.map_err(StoreError::from)?;
            let current = self.row(id).await?;
            return Err(OrderError::Transition(InvalidTransition {
                from: current.status,
                to: OrderStatus::Cancelled,
            }));
        }
        let mut refund = None;
        // Cancelled before shipping (the status machine allows nothing later): the order's
        // promotion uses go back, like its stock.
        crate::promotions::PromotionService::release_tx(&mut tx, &o.checkout_id, now).await?;
        match o.status {
            OrderStatus::Pending => {
                InventoryService::release_tx(
                    &mut tx,
                    &*self.inner.kernel.stock_gate,
                    &o.checkout_id,
                    false,
                    "order cancelled",
                    &actor.subject,
                    now,
                )
                .await?;
            }
            _ => {
                let items = OrderStore::items_tx(&mut tx, id, o.currency).await?;
                let quantities: HashMap<String, i64> = items
                    .iter()
                    .map(|i| (i.sku.clone(), i.quantity - i.returned_quantity))
                    .collect();
                InventoryService::restock_tx(
                    &mut tx,
                    &*self.inner.kernel.stock_gate,
                    &o.checkout_id,
                    &quantities,
                    "cancel",
                    id,
                    &actor.subject,
                    now,
                )
                .await?;
                if let Some(pid) = &o.payment_id {
                    let p = crate::payments::store::PaymentStore::payment_tx(&mut tx, pid).await?;
                    if let Some(p) = p {
                        let left = p.captured.amount - p.refunded.amount;
                        if left > 0 {
                            let r = PaymentService::begin_refund_tx(
                                &mut tx,
                                pid,
                                Money::new(left, p.amount.currency),
                                reason,
                                "cancel",
                                Some(id),
                                &format!("{id}:cancel"),
                                now,
                            )
                            .await?;
                            refund = Some(r.refund.id);
                        }
                    }
                }
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
        if let Some(r) = refund
            && let Err(e) = self.inner.payments.process_refund(&r).await
        {
            tracing::warn!(refund = %r, error = %e, "refund will be retried");
        }
        self.view(id, actor).await
    }

    /// A customer asks to return delivered items (within the return window).
    pub async fn request_return(
        &self,
        actor: &Principal,
        order_id: &str,
        lines: Vec<ReturnLine>,
        reason: &str,
    ) -> Result<ReturnRequest, OrderError> {
        let o = self.row(order_id).await?;
        if o.customer_id != actor.subject {
            return Err(OrderError::NotFound);
        }
        if o.status != OrderStatus::Delivered {
            return Err(OrderError::ReturnNotAllowed(format!(
                "the order is {}, not delivered",
                o.status.as_str()
            )));
        }
        let now = self.now();
        if let Some(d) = o.delivered_at
            && now.since(d).as_secs()
                > u64::try_from(RETURN_WINDOW_DAYS * 86_400).unwrap_or(u64::MAX)
        {
            return Err(OrderError::ReturnNotAllowed(format!(
                "the {RETURN_WINDOW_DAYS}-day return window has closed"
            )));
        }
        if self
            .inner
            .store
            .returns_of(order_id)
            .await?
            .iter()
            .any(|r| r.status != "rejected")
        {
            return Err(OrderError::ReturnNotAllowed(
                "a return is already open for this order".into(),
            ));
        }
        let items = self.inner.store.items(order_id, o.currency).await?;
        let mut v = Validator::new();
        let reason = reason.trim();
        v.check(
            !reason.is_empty() && reason.chars().count() <= 500,
            "reason",
            "reason is required (≤ 500 chars)",
        );
        v.check(
            !lines.is_empty() && lines.len() <= 100,
            "items",
            "name 1 to 100 lines to return",
        );
        let mut merged: BTreeMap<String, i64> = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            let sku = crate::catalog::model::Sku::parse(&l.sku).map(|s| s.as_str().to_owned());
            match sku
                .as_ref()
                .and_then(|s| items.iter().find(|it| &it.sku == s))
            {
                Some(it) => {
                    let total = merged.get(&it.sku).copied().unwrap_or(0) + l.quantity;
                    v.check(
                        l.quantity > 0 && total <= it.quantity - it.returned_quantity,
                        &format!("items[{i}].quantity"),
                        "quantity must be positive and at most what was bought and not yet returned",
                    );
                    merged.insert(it.sku.clone(), total);
                }
                None => {
                    v.add(format!("items[{i}].sku"), "this SKU is not in the order");
                }
            }
        }
        v.finish().map_err(OrderError::Invalid)?;
        let r = ReturnRequest {
            id: ReturnId::new().into_string(),
            order_id: order_id.to_owned(),
            status: "requested".into(),
            items: merged
                .into_iter()
                .map(|(sku, quantity)| ReturnLine { sku, quantity })
                .collect(),
            reason: reason.to_owned(),
            refund_amount: None,
            decision_reason: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db().begin().await?;
        OrderStore::insert_return_tx(&mut tx, &r, &o.customer_id, o.currency).await?;
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&ReturnRequested {
                order_id: order_id.to_owned(),
                order_number: o.order_number.clone(),
                customer_id: o.customer_id.clone(),
                return_id: r.id.clone(),
                items: r
                    .items
                    .iter()
                    .map(|l| ReturnedLine {
                        sku: l.sku.clone(),
                        quantity: l.quantity,
                    })
                    .collect(),
                reason: r.reason.clone(),
            }),
        )
        .await?;
        outbox::audit(
            &mut tx,
            now,
            &actor.subject,
            "return.requested",
            "order",
            order_id,
            json!({"return_id": r.id}),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(r)
    }

    /// The refund owed for returned units: what was paid for them — their share of the line's
    /// discounted price (`line_total - discount`) plus their share of the line's tax (shipping
    /// is not refunded), each share half-even. Returning every unit refunds the line exactly.
    pub fn refund_for(
        items: &[OrderItem],
        lines: &[ReturnLine],
        currency: mercato_kernel::Currency,
    ) -> Money {
        let mut total = 0i64;
        for l in lines {
            if let Some(it) = items.iter().find(|i| i.sku == l.sku) {
                let paid = it.line_total.amount.saturating_sub(it.discount.amount);
                let goods = div_round_half_even(
                    i128::from(paid) * i128::from(l.quantity),
                    i128::from(it.quantity.max(1)),
                )
                .unwrap_or(0);
                let tax = div_round_half_even(
                    i128::from(it.tax.amount) * i128::from(l.quantity),
                    i128::from(it.quantity.max(1)),
                )
                .unwrap_or(0);
                total = total.saturating_add(goods).saturating_add(tax);
            }
        }
        Money::new(total, currency)
    }

    /// Approves a return (admin): returned units go back on hand, the order becomes
    /// `returned`, and the refund for those lines is issued; once the money is back the order
    /// becomes `refunded`.
    pub async fn approve_return(
        &self,
        actor: &Principal,
        return_id: &str,
    ) -> Result<ReturnRequest, OrderError> {
        let r = self
            .inner
            .store
            .return_request(return_id)
            .await?
            .ok_or(OrderError::NotFound)?;
        if r.status != "requested" {
            return Err(OrderError::ReturnNotAllowed(format!(
                "the return is already {}",
                r.status
            )));
        }
        let o = self.row(&r.order_id).await?;
        o.status
            .transition(OrderEvent::Return)
            .map_err(OrderError::Transition)?;
        let items = self.inner.store.items(&o.id, o.currency).await?;
        let amount = Self::refund_for(&items, &r.items, o.currency);
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let mut refund_id = None;
        if let Some(pid) = &o.payment_id
            && amount.amount > 0
        {
            let refund = PaymentService::begin_refund_tx(
                &mut tx,
                pid,
                amount,
                &format!("return {return_id}"),
                "return",
                Some(&o.id),
                &format!("{return_id}:refund"),
                now,
            )
            .await?;
            refund_id = Some(refund.refund.id);
        }
        if !OrderStore::decide_return_tx(
            &mut tx,
            return_id,
            true,
            Some(amount.amount),
            refund_id.as_deref(),
            None,
            &actor.subject,
            now,
        )
        .await?
        {
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(OrderError::ReturnNotAllowed(
                "the return was decided meanwhile".into(),
            ));
        }
        let mut quantities = HashMap::new();
        for l in &r.items {
            if !OrderStore::add_returned_tx(&mut tx, &o.id, &l.sku, l.quantity).await? {
                tx.rollback().await.map_err(StoreError::from)?;
                return Err(OrderError::ReturnNotAllowed(format!(
                    "more {} returned than bought",
                    l.sku
                )));
            }
            quantities.insert(l.sku.clone(), l.quantity);
        }
        InventoryService::restock_tx(
            &mut tx,
            &*self.inner.kernel.stock_gate,
            &o.checkout_id,
            &quantities,
            "return",
            return_id,
            &actor.subject,
            now,
        )
        .await?;
        let moved = OrderStore::transition_tx(
            &mut tx,
            &o.id,
            o.status,
            OrderEvent::Return,
            &actor.subject,
            Some("return approved"),
            Details::Return {
                return_id: return_id.to_owned(),
            },
            now,
        )
        .await?;
        if moved.is_none() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(OrderError::Transition(InvalidTransition {
                from: self.row(&o.id).await?.status,
                to: OrderStatus::Returned,
            }));
        }
        tx.commit().await.map_err(StoreError::from)?;
        match refund_id {
            Some(rid) => {
                if let Err(e) = self.inner.payments.process_refund(&rid).await {
                    tracing::warn!(refund = %rid, error = %e, "return refund will be retried");
                }
            }
            None => {
                // Nothing to pay back (e.g. a zero-value line): the order is settled at once.
                let nothing = Details::Refund {
                    amount: Money::zero(o.currency),
                    refund_id: None,
                    source: None,
                };
                self.mark_refunded(&o.id, "system", nothing).await?;
            }
        }
        self.inner
            .store
            .return_request(return_id)
            .await?
            .ok_or(OrderError::NotFound)
    }

    pub async fn reject_return(
        &self,
        actor: &Principal,
        return_id: &str,
        reason: &str,
    ) -> Result<ReturnRequest, OrderError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(OrderError::Invalid(ApiError::invalid(
                "reason",
                "reason is required (≤ 500 chars)",
            )));
        }
        let r = self
            .inner
            .store
            .return_request(return_id)
            .await?
            .ok_or(OrderError::NotFound)?;
        let now = self.now();
        let mut tx = self.db().begin().await?;
        if !OrderStore::decide_return_tx(
            &mut tx,
            return_id,
            false,
            None,
            None,
            Some(reason),
            &actor.subject,
            now,
        )
        .await?
        {
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(OrderError::ReturnNotAllowed(format!(
                "the return is already {}",
                r.status
            )));
        }
        outbox::audit(
            &mut tx,
            now,
            &actor.subject,
            "return.rejected",
            "order",
            &r.order_id,
            json!({"return_id": return_id, "reason": reason}),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        self.inner
            .store
            .return_request(return_id)
            .await?
            .ok_or(OrderError::NotFound)
    }

    pub async fn return_request(&self, id: &str) -> Result<ReturnRequest, OrderError> {
        self.inner
            .store
            .return_request(id)
            .await?
            .ok_or(OrderError::NotFound)
    }

    async fn mark_refunded(
        &self,
        order_id: &str,
        actor: &str,
        details: Details,
    ) -> Result<(), OrderError> {
        let now = self.now();
        let mut tx = self.db().begin().await?;
        OrderStore::transition_tx(
            &mut tx,
            order_id,
            OrderStatus::Returned,
            OrderEvent::Refund,
            actor,
            Some("refund issued"),
            details,
            now,
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Revenue, orders, units and refunds between `from` and `to`, by day, seller or SKU.
    /// Revenue counts lines of orders that were confirmed (not pending or failed).
    pub async fn sales_report(
        &self,
        from: Timestamp,
        to: Timestamp,
        group_by: &str,
    ) -> Result<SalesReport, OrderError> {
        if !matches!(group_by, "day" | "seller" | "sku") {
            return Err(OrderError::Invalid(ApiError::invalid(
                "group_by",
                "group_by must be day, seller or sku",
            )));
        }
        let rows = self.inner.store.sales_lines(from, to).await?;
        let currency = rows
            .first()
            .and_then(|r| mercato_kernel::Currency::parse(&r.1))
            .unwrap_or(mercato_kernel::Currency::USD);
        let mut groups: BTreeMap<String, (std::collections::BTreeSet<String>, i64, i64)> =
            BTreeMap::new();
        let mut order_totals: HashMap<String, i64> = HashMap::new();
        let mut line_keys: Vec<(String, String, i64)> = Vec::new();
        for (order_id, _, created, seller, sku, qty, total) in &rows {
            let key = match group_by {
                "day" => Timestamp::from_micros(*created)
                    .to_jiff()
                    .strftime("%Y-%m-%d")
                    .to_string(),
                "seller" => seller.clone(),
                _ => sku.clone(),
            };
            let g = groups.entry(key.clone()).or_default();
            g.0.insert(order_id.clone());
            g.1 += qty;
            g.2 += total;
            *order_totals.entry(order_id.clone()).or_default() += total;
            line_keys.push((order_id.clone(), key, *total));
        }
        // Refunds of these orders, attributed to groups in proportion to line totals.
        let mut refunds_by_key: HashMap<String, i64> = HashMap::new();
        for order_id in order_totals.keys() {
            let Some(o) = self.inner.store.order(order_id).await? else {
                continue;
            };
            let Some(pid) = o.payment_id else { continue };
            let refunded: i64 = self
                .inner
                .payments
                .refunds_of(&pid)
                .await?
                .iter()
                .filter(|r| r.status == "succeeded")
                .map(|r| r.amount.amount)
                .sum();
            if refunded == 0 {
                continue;
            }
            let base = order_totals.get(order_id).copied().unwrap_or(1).max(1);
            for (oid, key, line) in line_keys.iter().filter(|(oid, _, _)| oid == order_id) {
                let _ = oid;
                let share =
                    div_round_half_even(i128::from(refunded) * i128::from(*line), i128::from(base))
                        .unwrap_or(0);
                *refunds_by_key.entry(key.clone()).or_default() += share;
            }
        }
        let mut all_orders = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        let (mut units, mut revenue, mut refunds) = (0, 0, 0);
        for (key, (orders, u, rev)) in groups {
            let rf = refunds_by_key.get(&key).copied().unwrap_or(0);
            units += u;
            revenue += rev;
            refunds += rf;
            all_orders.extend(orders.iter().cloned());
            out.push(SalesRow {
                key,
                orders: orders.len() as i64,
                units: u,
                revenue: Money::new(rev, currency),
                refunds: Money::new(rf, currency),
            });
        }
        Ok(SalesReport {
            from,
            to,
            group_by: group_by.to_owned(),
            rows: out,
            totals: SalesRow {
                key: "total".into(),
                orders: all_orders.len() as i64,
                units,
                revenue: Money::new(revenue, currency),
                refunds: Money::new(refunds, currency),
            },
        })
    }

    async fn flag(&self, order_id: &str, why: &str, event: &Event) -> anyhow::Result<()> {
        let now = self.now();
        let mut tx = self.db().begin().await?;
        if !outbox::mark_processed(&mut tx, "orders.flags", &event.id, now).await? {
            return Ok(());
        }
        OrderStore::flag_tx(&mut tx, order_id, "system", why, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl PurchaseVerifier for OrderService {
    async fn has_received(
        &self,
        customer_id: &str,
        product_id: &str,
    ) -> anyhow::Result<Option<bool>> {
        Ok(Some(
            self.inner
                .store
                .has_received(customer_id, product_id)
                .await?,
        ))
    }
}

/// Records refunds on orders, from `payment.refunded` (payments never call orders back): a
/// return's refund moves the order returned → refunded; a cancellation's or an admin's refund
/// is announced as `order.refunded`. Delivered at least once; a redelivery of a return's
/// refund finds the order already refunded and changes nothing.
pub struct OrderRefunds(pub OrderService);

#[async_trait::async_trait]
impl EventHandler for OrderRefunds {
    fn name(&self) -> &str {
        "orders.refunds"
    }
    fn interested_in(&self, event_type: &str) -> bool {
        event_type == "payment.refunded"
    }
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let refund = event.decode::<PaymentRefunded>()?;
        let Some(order_id) = refund.order_id.as_deref() else {
            return Ok(());
        };
        let svc = &self.0;
        let o = match svc.row(order_id).await {
            Ok(o) => o,
            Err(OrderError::NotFound) => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
        if refund.source == "return" {
            if o.status == OrderStatus::Returned {
                let details = Details::Refund {
                    amount: refund.amount,
                    refund_id: Some(refund.refund_id.clone()),
                    source: Some(refund.source.clone()),
                };
                svc.mark_refunded(order_id, "system", details)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            return Ok(());
        }
        // Cancellations and admin refunds do not move the status: announce the money.
        let items = svc.inner.store.items(order_id, o.currency).await?;
        let now = svc.now();
        let mut tx = svc.db().begin().await?;
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&OrderRefunded {
                order: OrderStore::summary(&o, &items),
                reason: None,
                amount: refund.amount,
                refund_id: Some(refund.refund_id.clone()),
                source: Some(refund.source.clone()),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Attaches guest orders to the account that verified their email (`user.email_verified`).
pub struct GuestOrderClaims(pub OrderService);

#[async_trait::async_trait]
impl EventHandler for GuestOrderClaims {
    fn name(&self) -> &str {
        "orders.guest_claims"
    }
    fn interested_in(&self, event_type: &str) -> bool {
        event_type == EmailVerified::TYPE
    }
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let v: EmailVerified = event.decode()?;
        let n = self
            .0
            .inner
            .store
            .attach_guest_orders(&v.email, &v.user_id, self.0.now())
            .await?;
        if n > 0 {
            metrics::counter!("guest_orders_attached_total").increment(n);
        }
        Ok(())
    }
}

/// Flags orders for review on chargebacks and fraud signals.
pub struct OrderFlagger(pub OrderService);

#[async_trait::async_trait]
impl EventHandler for OrderFlagger {
    fn name(&self) -> &str {
        "orders.flags"
    }
    fn interested_in(&self, event_type: &str) -> bool {
        event_type == PaymentChargeback::TYPE || event_type == FraudFlagged::TYPE
    }
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        // A blocked payment's fraud.flagged and a chargeback of a payment without an order
        // have no order to flag.
        let (order_id, why) = if event.event_type == PaymentChargeback::TYPE {
            (event.decode::<PaymentChargeback>()?.order_id, "chargeback")
        } else {
            (event.decode::<FraudFlagged>()?.order_id, "fraud review")
        };
        match order_id {
            Some(order_id) => self.0.flag(&order_id, why, event).await,
            None => Ok(()),
        }
    }
}
