//! Events of the promotions system (payload types; see the crate docs).

use crate::payload;
use mercato_kernel::Money;
use serde::{Deserialize, Serialize};

/// `promotion.redeemed`: a checkout using the promotion was paid; its reserved use (and
/// `amount` of the budget) is now committed to the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionRedeemed {
    pub promotion_id: String,
    pub redemption_id: String,
    pub checkout_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub amount: Money,
}
payload!(
    PromotionRedeemed,
    "promotion.redeemed",
    "promotion",
    promotion_id
);

/// `promotion.released`: a use went back to the promotion — its checkout was superseded,
/// failed or expired (`from`: `reserved`), or its order was cancelled before shipping
/// (`from`: `committed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionReleased {
    pub promotion_id: String,
    pub redemption_id: String,
    pub checkout_id: String,
    pub customer_id: String,
    pub amount: Money,
    pub from: String,
}
payload!(
    PromotionReleased,
    "promotion.released",
    "promotion",
    promotion_id
);
