//! Events of the orders system (payload types; see the crate docs).
//!
//! Every `order.<status>` event carries the order's summary ([`OrderSummary`], flattened into
//! the payload's top level) plus what that change adds; `order.return_requested` is about a
//! return, not a status.

use crate::payload;
use mercato_kernel::Money;
use serde::{Deserialize, Serialize};

/// One line of an order as events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    pub product_id: String,
    pub seller_id: String,
    pub unit_price: Money,
}

/// The order as every `order.<status>` event carries it (fields at the payload's top level).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub order_id: String,
    pub order_number: String,
    pub customer_id: String,
    pub checkout_id: String,
    /// The order's status after the change.
    pub status: String,
    pub total: Money,
    pub items: Vec<OrderLine>,
    /// Bought without an account: where the customer's notifications go, and the guest token
    /// their links carry (the customer id is then the token's `gst_…` subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestBuyer>,
    /// The short-link code the order's cart came through (shop attribution of links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
}

/// The buyer of a guest order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestBuyer {
    pub email: String,
    pub token: String,
}

macro_rules! status_event {
    ($(#[$doc:meta])* $ty:ident, $event:literal { $($(#[$fdoc:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $ty {
            #[serde(flatten)]
            pub order: OrderSummary,
            /// Why the status changed, when the change has a reason.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reason: Option<String>,
            $($(#[$fdoc])* pub $field: $fty,)*
        }
        payload!($ty, $event, "order", order.order_id);
    };
}

status_event!(
    /// `order.created`: checkout created the order (`pending`, or straight to `confirmed`,
    /// which then also emits `order.confirmed`).
    OrderCreated, "order.created" {}
);
status_event!(
    /// `order.confirmed`: the order's payment was captured.
    OrderConfirmed, "order.confirmed" {}
);
status_event!(
    /// `order.failed`: the order's payment failed for good.
    OrderFailed, "order.failed" {}
);
status_event!(
    /// `order.cancelled`: the customer or an admin cancelled the order (`reason` is theirs).
    OrderCancelled, "order.cancelled" {}
);
status_event!(
    /// `order.fulfilment_started`: a seller or an admin started fulfilment (`processing`).
    OrderFulfilmentStarted, "order.fulfilment_started" {}
);
status_event!(
    /// `order.shipped`: the order left with a carrier.
    OrderShipped, "order.shipped" {
        carrier: String,
        tracking_number: String,
    }
);
status_event!(
    /// `order.delivered`: the order reached the customer.
    OrderDelivered, "order.delivered" {}
);
status_event!(
    /// `order.returned`: a return of the order was approved and its units restocked.
    OrderReturned, "order.returned" {
        return_id: String,
    }
);
status_event!(
    /// `order.refunded`: money went back to the customer — a returned order's refund (status
    /// `refunded`), or a cancellation's or an admin's refund (status unchanged).
    OrderRefunded, "order.refunded" {
        amount: Money,
        /// The refund (absent when nothing was to pay back).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_id: Option<String>,
        /// What asked for it: `admin`, `cancel`, `return`, `compensation`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    }
);

/// One line of a return request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnedLine {
    pub sku: String,
    pub quantity: i64,
}

/// `order.return_requested`: the customer asked to return lines of a delivered order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnRequested {
    pub order_id: String,
    pub order_number: String,
    pub customer_id: String,
    pub return_id: String,
    pub items: Vec<ReturnedLine>,
    pub reason: String,
}
payload!(ReturnRequested, "order.return_requested", "order", order_id);
