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
