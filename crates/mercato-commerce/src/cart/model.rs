//! Cart rules: statuses, quantities, merge arithmetic, and the priced view with warnings.

use mercato_kernel::{Money, Timestamp};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CartStatus {
    /// Can be changed.
    Active,
    /// A guest cart folded into a user's cart at login.
    Merged,
    /// Turned into an order.
    Converted,
    /// A guest cart left untouched past its lifetime.
    Expired,
}

impl CartStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CartStatus::Active => "active",
            CartStatus::Merged => "merged",
            CartStatus::Converted => "converted",
            CartStatus::Expired => "expired",
        }
    }
    pub fn parse(s: &str) -> Option<CartStatus> {
        match s {
            "active" => Some(CartStatus::Active),
            "merged" => Some(CartStatus::Merged),
            "converted" => Some(CartStatus::Converted),
            "expired" => Some(CartStatus::Expired),
            _ => None,
        }
    }
}

/// The quantity a merged line ends with: the sum, capped at the line maximum and at what is
/// available (when stock is tracked). Zero means "drop the line".
pub fn merged_quantity(existing: i64, incoming: i64, line_max: i64, available: Option<i64>) -> i64 {
    let sum = existing.saturating_add(incoming);
    let cap = match available {
        Some(a) => line_max.min(a.max(0)),
        None => line_max,
    };
    // Never take away what the user already had in their own cart.
    sum.min(cap.max(existing)).max(0)
}

/// A cart line as returned to clients, priced now.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CartItem {
    pub sku: String,
    pub variant_id: Option<String>,
    pub product_id: Option<String>,
    pub name: String,
    pub quantity: i64,
    /// What the customer pays now per unit.
    pub unit_price: Money,
    /// The unit price when the line was added.
    pub price_at_addition: Money,
    pub line_total: Money,
    /// Sellable quantity, `null` when stock is not tracked.
    pub available: Option<i64>,
    /// `price_changed`, `insufficient_stock`, `unavailable`.
    pub warnings: Vec<String>,
}

/// A cart-level warning naming the line it is about.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CartWarning {
    pub code: String,
    pub sku: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Cart {
    pub id: String,
    pub status: CartStatus,
    /// Owner, `null` for a guest cart.
    pub user_id: Option<String>,
    pub currency: String,
    pub items: Vec<CartItem>,
    /// Sum of the purchasable lines at current prices.
    pub subtotal: Money,
    /// Units across all lines.
    pub item_count: i64,
    pub warnings: Vec<CartWarning>,
    /// When a guest cart expires if left untouched; `null` for user carts.
    pub expires_at: Option<Timestamp>,
    /// For a merged guest cart: the cart it was merged into.
    pub merged_into: Option<String>,
    /// The short-link code the cart came through (its paid order counts in the link's stats).
    pub attribution: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_sums_then_caps_at_line_max_and_stock() {
        assert_eq!(merged_quantity(2, 3, 10, None), 5);
        assert_eq!(merged_quantity(8, 5, 10, None), 10);
        assert_eq!(merged_quantity(2, 3, 10, Some(4)), 4);
        assert_eq!(merged_quantity(0, 3, 10, Some(0)), 0);
        // The user's own line is never reduced by a merge.
        assert_eq!(merged_quantity(6, 3, 10, Some(4)), 6);
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            CartStatus::Active,
            CartStatus::Merged,
            CartStatus::Converted,
            CartStatus::Expired,
        ] {
            assert_eq!(CartStatus::parse(s.as_str()), Some(s));
        }
    }
}
