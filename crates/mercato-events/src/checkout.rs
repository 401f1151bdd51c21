//! Events of the checkout system (payload types; see the crate docs).

use crate::payload;
use mercato_kernel::{Money, Timestamp};
use serde::{Deserialize, Serialize};

/// `checkout.started`: a checkout locked its cart's prices and reserved the stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutStarted {
    pub checkout_id: String,
    pub customer_id: String,
    pub cart_id: String,
    pub total: Money,
    pub expires_at: Timestamp,
}
payload!(CheckoutStarted, "checkout.started", "checkout", checkout_id);

/// `checkout.expired`: an open checkout passed its time; its reservations were released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutExpired {
    pub checkout_id: String,
    pub customer_id: String,
}
payload!(CheckoutExpired, "checkout.expired", "checkout", checkout_id);
