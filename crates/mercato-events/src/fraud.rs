//! Events of the fraud system (payload types; see the crate docs).

use mercato_kernel::outbox::EventPayload;
use serde::{Deserialize, Serialize};

/// `fraud.flagged`: the fraud check blocked a payment (`decision: block`, about the checkout;
/// no order exists) or let it through for review (`decision: review`, about the order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FraudFlagged {
    /// The order under review (absent when the payment was blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    pub checkout_id: String,
    pub customer_id: String,
    /// `block` or `review`.
    pub decision: String,
    pub reason: String,
}

impl EventPayload for FraudFlagged {
    const TYPE: &'static str = "fraud.flagged";
    const AGGREGATE: &'static str = "checkout";
    fn aggregate_type(&self) -> &'static str {
        if self.order_id.is_some() {
            "order"
        } else {
            Self::AGGREGATE
        }
    }
    fn aggregate_id(&self) -> &str {
        self.order_id.as_deref().unwrap_or(&self.checkout_id)
    }
}

/// `fraud.blocked`: the fraud check refused a payment before the charge (nothing charged,
/// the checkout's stock released).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FraudBlocked {
    pub checkout_id: String,
    pub customer_id: String,
    /// The decision's id (`GET /admin/fraud/stats` counts it).
    pub decision_id: String,
    /// The model's risk score in [0, 1].
    pub score: f64,
    /// Why: the rules that fired, and the score when it decided.
    pub reasons: Vec<String>,
}
crate::payload!(FraudBlocked, "fraud.blocked", "checkout", checkout_id);

/// `fraud.review_approved`: an admin approved an order held for review; it may be fulfilled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FraudReviewApproved {
    pub review_id: String,
    pub order_id: String,
    pub customer_id: String,
    /// Who approved it.
    pub actor: String,
}
crate::payload!(
    FraudReviewApproved,
    "fraud.review_approved",
    "order",
    order_id
);

/// `fraud.review_rejected`: an admin rejected an order held for review as fraud; it is
/// cancelled and refunded in full (its `order.cancelled` and `payment.refunded` follow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FraudReviewRejected {
    pub review_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub actor: String,
    pub reason: String,
}
crate::payload!(
    FraudReviewRejected,
    "fraud.review_rejected",
    "order",
    order_id
);
