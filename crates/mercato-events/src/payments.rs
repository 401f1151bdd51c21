//! Events of the payments system (payload types; see the crate docs).

use crate::payload;
use mercato_kernel::Money;
use serde::{Deserialize, Serialize};

/// `payment.captured`: the gateway captured the payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub payment_id: String,
    pub checkout_id: String,
    /// The order it paid for (absent when captured after its checkout failed: reconciliation
    /// refunds it).
    #[serde(default)]
    pub order_id: Option<String>,
    pub customer_id: String,
    pub amount: Money,
    pub charge_id: String,
}
payload!(PaymentCaptured, "payment.captured", "payment", payment_id);

/// `payment.declined`: the gateway declined the payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub payment_id: String,
    pub checkout_id: String,
    pub customer_id: String,
    pub amount: Money,
    pub decline_code: String,
}
payload!(PaymentDeclined, "payment.declined", "payment", payment_id);

/// `payment.pending_verification`: the outcome is unknown (gateway timeout); reconciliation
/// asks the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentPendingVerification {
    pub payment_id: String,
    pub checkout_id: String,
    pub customer_id: String,
    pub amount: Money,
}
payload!(
    PaymentPendingVerification,
    "payment.pending_verification",
    "payment",
    payment_id
);

/// `payment.refunded`: a refund succeeded at the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: String,
    pub refund_id: String,
    #[serde(default)]
    pub order_id: Option<String>,
    pub customer_id: String,
    pub amount: Money,
    /// What asked for it: `admin`, `cancel`, `return`, `compensation`.
    pub source: String,
    /// The id of what asked for it (the return, the order…).
    #[serde(default)]
    pub source_id: Option<String>,
}
payload!(PaymentRefunded, "payment.refunded", "payment", payment_id);

/// `payment.chargeback`: the card holder disputed the payment (the order is flagged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentChargeback {
    pub payment_id: String,
    #[serde(default)]
    pub order_id: Option<String>,
    pub customer_id: String,
    pub amount: Money,
}
payload!(
    PaymentChargeback,
    "payment.chargeback",
    "payment",
    payment_id
);
