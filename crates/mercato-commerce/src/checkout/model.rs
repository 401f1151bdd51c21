//! Checkout and saga states and shapes.

use crate::inventory::model::Reservation;
use crate::promotions::model::DiscountView;
use mercato_kernel::{Money, Timestamp};
use serde::{Deserialize, Serialize};

mercato_kernel::typed_id!(
    /// A checkout.
    CheckoutId, "chk");
mercato_kernel::typed_id!(
    /// One payment attempt's saga.
    SagaId, "sga");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutStatus {
    /// Stock reserved and prices locked until `expires_at`; can be paid.
    Open,
    /// A payment attempt is running.
    Paying,
    /// The gateway's answer is unknown; reconciliation will settle it.
    PendingVerification,
    Completed,
    /// Declined or blocked: stock released; start a new checkout.
    Failed,
    Expired,
    /// Superseded by a newer checkout of the same cart.
    Cancelled,
}

impl CheckoutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutStatus::Open => "open",
            CheckoutStatus::Paying => "paying",
            CheckoutStatus::PendingVerification => "pending_verification",
            CheckoutStatus::Completed => "completed",
            CheckoutStatus::Failed => "failed",
            CheckoutStatus::Expired => "expired",
            CheckoutStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<CheckoutStatus> {
        [
            CheckoutStatus::Open,
            CheckoutStatus::Paying,
            CheckoutStatus::PendingVerification,
            CheckoutStatus::Completed,
            CheckoutStatus::Failed,
            CheckoutStatus::Expired,
            CheckoutStatus::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// A locked line: price, tax and seller fixed at checkout creation.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckoutLine {
    pub sku: String,
    pub variant_id: String,
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price: Money,
    pub line_total: Money,
    pub tax: Money,
    /// This line's part of the promotions' discounts (tax is on `line_total - discount`);
    /// absent on checkouts created before promotions applied.
    #[serde(default)]
    pub discount: Option<Money>,
    pub seller_id: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Checkout {
    pub id: String,
    pub status: CheckoutStatus,
    pub cart_id: String,
    pub items: Vec<CheckoutLine>,
    pub subtotal: Money,
    /// Total off (goods and shipping): `total = subtotal + shipping + tax - discount`.
    pub discount: Money,
    /// What each promotion took off, and from which lines.
    pub discounts: Vec<DiscountView>,
    pub shipping: Money,
    pub tax: Money,
    pub total: Money,
    #[schema(value_type = Object)]
    pub shipping_address: serde_json::Value,
    pub shipping_method: String,
    pub expires_at: Timestamp,
    pub reservations: Vec<Reservation>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub failure_code: Option<String>,
    /// Payment attempts made so far.
    pub attempts: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// A guest checkout's email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A guest checkout's bearer secret: shown once, in the 201 that created it. Send it as
    /// `Authorization: Bearer <guest_token>` to pay this checkout and read or cancel its order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_token: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SagaStep {
    pub step: String,
    /// `started`, `succeeded`, `failed`, `unknown`, `compensated`.
    pub state: String,
    pub at: Timestamp,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Saga {
    pub id: String,
    pub checkout_id: String,
    pub attempt: i64,
    /// `running`, `awaiting_verification`, `completed`, `compensating`, `compensated`, `failed`.
    pub status: String,
    pub step: String,
    pub payment_id: Option<String>,
    pub order_id: Option<String>,
    pub error: Option<String>,
    pub steps: Vec<SagaStep>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
