//! The order state machine (one table, here and nowhere else) and the order's shapes.

use crate::promotions::model::DiscountView;
use mercato_kernel::{Money, Timestamp};
use serde::{Deserialize, Serialize};

mercato_kernel::typed_id!(
    /// An order.
    OrderId, "ord");
mercato_kernel::typed_id!(
    /// A return request.
    ReturnId, "ret");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Created, payment outcome not known yet (e.g. `pending_verification`).
    Pending,
    Confirmed,
    Failed,
    Cancelled,
    Processing,
    Shipped,
    Delivered,
    Returned,
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::Failed,
        OrderStatus::Cancelled,
        OrderStatus::Processing,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Returned,
        OrderStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Processing => "processing",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Returned => "returned",
            OrderStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// What can happen to an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderEvent {
    Confirm,
    Fail,
    Cancel,
    StartFulfilment,
    Ship,
    Deliver,
    Return,
    Refund,
}

impl OrderEvent {
    pub const ALL: [OrderEvent; 8] = [
        OrderEvent::Confirm,
        OrderEvent::Fail,
        OrderEvent::Cancel,
        OrderEvent::StartFulfilment,
        OrderEvent::Ship,
        OrderEvent::Deliver,
        OrderEvent::Return,
        OrderEvent::Refund,
    ];

    /// The status this event leads to when allowed.
    pub fn target(self) -> OrderStatus {
        match self {
            OrderEvent::Confirm => OrderStatus::Confirmed,
            OrderEvent::Fail => OrderStatus::Failed,
            OrderEvent::Cancel => OrderStatus::Cancelled,
            OrderEvent::StartFulfilment => OrderStatus::Processing,
            OrderEvent::Ship => OrderStatus::Shipped,
            OrderEvent::Deliver => OrderStatus::Delivered,
            OrderEvent::Return => OrderStatus::Returned,
            OrderEvent::Refund => OrderStatus::Refunded,
        }
    }
}

/// A refused transition: answered 409 `invalid_transition` with `from` and `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot go from {from:?} to {to:?}")]
pub struct InvalidTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

/// THE table of allowed transitions (API.md "Orders").
const TRANSITIONS: &[(OrderStatus, OrderEvent)] = &[
    (OrderStatus::Pending, OrderEvent::Confirm),
    (OrderStatus::Pending, OrderEvent::Fail),
    (OrderStatus::Pending, OrderEvent::Cancel),
    (OrderStatus::Confirmed, OrderEvent::StartFulfilment),
    (OrderStatus::Confirmed, OrderEvent::Cancel),
    (OrderStatus::Processing, OrderEvent::Ship),
    (OrderStatus::Processing, OrderEvent::Cancel),
    (OrderStatus::Shipped, OrderEvent::Deliver),
    (OrderStatus::Delivered, OrderEvent::Return),
    (OrderStatus::Returned, OrderEvent::Refund),
];

impl OrderStatus {
    /// The only way an order changes status.
    pub fn transition(self, event: OrderEvent) -> Result<OrderStatus, InvalidTransition> {
        if TRANSITIONS.contains(&(self, event)) {
            Ok(event.target())
        } else {
            Err(InvalidTransition {
                from: self,
                to: event.target(),
            })
        }
    }

    pub fn is_terminal(self) -> bool {
        OrderEvent::ALL.iter().all(|e| self.transition(*e).is_err())
    }
}

/// Days after delivery during which a return can be requested.
pub const RETURN_WINDOW_DAYS: i64 = 30;

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderItem {
    pub sku: String,
    pub variant_id: String,
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price: Money,
    pub line_total: Money,
    pub tax: Money,
    /// This line's part of the promotions' discounts: the customer paid
    /// `line_total - discount` (plus `tax`) for it, and a return refunds in proportion.
    pub discount: Money,
    pub seller_id: String,
    /// Units returned so far.
    pub returned_quantity: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    pub at: Timestamp,
    /// `usr_…`, `key_…` or `system`.
    pub actor: String,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentSummary {
    pub id: Option<String>,
    /// `initiated`, `captured`, `pending_verification`, `declined`, `refunded`, `partially_refunded`…
    pub status: String,
    pub captured: Money,
    pub refunded: Money,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Shipment {
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: Timestamp,
}

/// The fraud decision behind an order, as admins see it on the order.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OrderRisk {
    /// The model's risk score in [0, 1].
    pub score: f64,
    /// `allow` or `review`.
    pub decision: String,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Order {
    pub id: String,
    pub order_number: String,
    pub status: OrderStatus,
    pub customer_id: String,
    pub checkout_id: String,
    pub items: Vec<OrderItem>,
    pub subtotal: Money,
    /// Total off (goods and shipping): `total = subtotal + shipping + tax - discount`.
    pub discount: Money,
    /// What each promotion took off, as locked by the checkout.
    pub discounts: Vec<DiscountView>,
    pub shipping: Money,
    pub tax: Money,
    pub total: Money,
    #[schema(value_type = Object)]
    pub shipping_address: serde_json::Value,
    pub shipping_method: String,
    pub payment: PaymentSummary,
    pub shipment: Option<Shipment>,
    /// Set when a chargeback or fraud signal needs a human look.
    pub flagged_for_review: bool,
    /// Held for a fraud review: it cannot be fulfilled or shipped until the review is approved.
    pub under_review: bool,
    /// The fraud decision of its payment (admins only; absent for everyone else).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<OrderRisk>,
    /// The short-link code the order's cart came through (`null` when none).
    pub attribution: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    /// Optimistic-concurrency version, +1 on every change.
    pub version: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnLine {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReturnRequest {
    pub id: String,
    pub order_id: String,
    /// `requested`, `approved`, `rejected`.
    pub status: String,
    pub items: Vec<ReturnLine>,
    pub reason: String,
    pub refund_amount: Option<Money>,
    pub decision_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderEvent as E;
    use OrderStatus as S;

    /// Every (status, event) pair, exhaustively, against the contract's list.
    #[test]
    fn the_transition_table_is_exactly_the_contract() {
        let allowed = [
            (S::Pending, E::Confirm, S::Confirmed),
            (S::Pending, E::Fail, S::Failed),
            (S::Pending, E::Cancel, S::Cancelled),
            (S::Confirmed, E::StartFulfilment, S::Processing),
            (S::Confirmed, E::Cancel, S::Cancelled),
            (S::Processing, E::Ship, S::Shipped),
            (S::Processing, E::Cancel, S::Cancelled),
            (S::Shipped, E::Deliver, S::Delivered),
            (S::Delivered, E::Return, S::Returned),
            (S::Returned, E::Refund, S::Refunded),
        ];
        let mut checked = 0;
        for from in S::ALL {
            for ev in E::ALL {
                let expected = allowed
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == ev)
                    .map(|(_, _, t)| *t);
                match (from.transition(ev), expected) {
                    (Ok(to), Some(t)) => assert_eq!(to, t),
                    (Err(err), None) => {
                        assert_eq!(err.from, from);
                        assert_eq!(err.to, ev.target());
                    }
                    (got, want) => panic!("{from:?} + {ev:?}: got {got:?}, want {want:?}"),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 9 * 8);
    }

    #[test]
    fn terminal_states() {
        for s in [S::Failed, S::Cancelled, S::Refunded] {
            assert!(s.is_terminal(), "{s:?}");
        }
        for s in [
            S::Pending,
            S::Confirmed,
            S::Processing,
            S::Shipped,
            S::Delivered,
            S::Returned,
        ] {
            assert!(!s.is_terminal(), "{s:?}");
        }
    }

    #[test]
    fn statuses_round_trip_as_snake_case() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
    }
}
