//! Inventory's pure rules: where a line is reserved from, adjustment reasons, low-stock
//! crossings, and the shapes the API returns.

use mercato_kernel::Timestamp;
use serde::{Deserialize, Serialize};

mercato_kernel::typed_id!(
    /// A warehouse.
    WarehouseId, "wh");
mercato_kernel::typed_id!(
    /// One reserved (SKU, warehouse, quantity) of a checkout.
    ReservationId, "rsv");

pub const DEFAULT_LOW_STOCK_THRESHOLD: i64 = 10;
/// Largest on-hand count we accept for one (SKU, warehouse).
pub const MAX_ON_HAND: i64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdjustReason {
    Restock,
    Damage,
    Return,
    Correction,
}

impl AdjustReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustReason::Restock => "restock",
            AdjustReason::Damage => "damage",
            AdjustReason::Return => "return",
            AdjustReason::Correction => "correction",
        }
    }
}

/// A warehouse that stocks the SKU, as seen when planning a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub warehouse_id: String,
    pub country: String,
    pub available: i64,
}

/// Where to take `quantity` from: one warehouse that can serve the whole line if any
/// (preferring the shipping country, then the most stock), else split across warehouses in
/// that same order. `None` when all of them together cannot serve it.
pub fn plan_line(
    candidates: &[Candidate],
    ship_country: Option<&str>,
    quantity: i64,
) -> Option<Vec<(String, i64)>> {
    if quantity <= 0 {
        return Some(Vec::new());
    }
    let mut ordered: Vec<&Candidate> = candidates.iter().filter(|c| c.available > 0).collect();
    ordered.sort_by(|a, b| {
        let home = |c: &Candidate| ship_country.is_some_and(|s| s == c.country);
        home(b)
            .cmp(&home(a))
            .then(b.available.cmp(&a.available))
            .then(a.warehouse_id.cmp(&b.warehouse_id))
    });
    if let Some(one) = ordered.iter().find(|c| c.available >= quantity) {
        return Some(vec![(one.warehouse_id.clone(), quantity)]);
    }
    let total: i64 = ordered.iter().map(|c| c.available).sum();
    if total < quantity {
        return None;
    }
    let mut left = quantity;
    let mut plan = Vec::new();
    for c in ordered {
        if left == 0 {
            break;
        }
        let take = c.available.min(left);
        plan.push((c.warehouse_id.clone(), take));
        left -= take;
    }
    Some(plan)
}

/// Whether a change of availability from `before` to `after` crosses below `threshold`.
pub fn crosses_low_stock(before: i64, after: i64, threshold: i64) -> bool {
    before >= threshold && after < threshold
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Warehouse {
    pub id: String,
    pub code: String,
    pub name: String,
    pub country: String,
    pub region: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WarehouseStock {
    pub warehouse_id: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub low_stock_threshold: i64,
}

/// Stock of one SKU across warehouses.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StockLevel {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub warehouses: Vec<WarehouseStock>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Movement {
    pub id: String,
    pub sku: String,
    pub warehouse_id: String,
    /// `set`, `adjust`, `reserve`, `release`, `expire`, `commit`, `restock_return`.
    pub kind: String,
    pub delta_on_hand: i64,
    pub delta_reserved: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    pub reason: Option<String>,
    pub reference: Option<String>,
    pub actor: String,
    pub at: Timestamp,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    pub id: String,
    pub checkout_id: String,
    pub sku: String,
    pub warehouse_id: String,
    pub quantity: i64,
    /// `active`, `committed`, `released`, `expired`.
    pub status: String,
    pub expires_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, country: &str, available: i64) -> Candidate {
        Candidate {
            warehouse_id: id.into(),
            country: country.into(),
            available,
        }
    }

    #[test]
    fn a_home_warehouse_that_can_serve_wins() {
        let cands = [c("wh_a", "DE", 100), c("wh_b", "FR", 5)];
        assert_eq!(
            plan_line(&cands, Some("FR"), 5),
            Some(vec![("wh_b".into(), 5)])
        );
        // The home warehouse cannot serve the whole line: the one that can, wins.
        assert_eq!(
            plan_line(&cands, Some("FR"), 6),
            Some(vec![("wh_a".into(), 6)])
        );
    }

    #[test]
    fn without_a_home_match_the_most_stock_wins() {
        let cands = [c("wh_a", "DE", 10), c("wh_b", "FR", 30)];
        assert_eq!(
            plan_line(&cands, Some("US"), 3),
            Some(vec![("wh_b".into(), 3)])
        );
        assert_eq!(plan_line(&cands, None, 3), Some(vec![("wh_b".into(), 3)]));
    }

    #[test]
    fn lines_split_only_when_no_single_warehouse_can_serve() {
        let cands = [c("wh_a", "DE", 10), c("wh_b", "FR", 30), c("wh_c", "US", 0)];
        assert_eq!(
            plan_line(&cands, Some("DE"), 35),
            Some(vec![("wh_a".into(), 10), ("wh_b".into(), 25)])
        );
        assert_eq!(plan_line(&cands, Some("DE"), 41), None);
        assert_eq!(plan_line(&[], None, 1), None);
    }

    #[test]
    fn plans_never_take_more_than_available_or_less_than_asked() {
        // Exhaustive over small stock levels.
        for a in 0..6 {
            for b in 0..6 {
                for q in 1..12 {
                    let cands = [c("wh_a", "DE", a), c("wh_b", "FR", b)];
                    match plan_line(&cands, Some("FR"), q) {
                        Some(plan) => {
                            assert_eq!(plan.iter().map(|p| p.1).sum::<i64>(), q);
                            for (wh, n) in plan {
                                let avail = if wh == "wh_a" { a } else { b };
                                assert!(n > 0 && n <= avail);
                            }
                        }
                        None => assert!(a + b < q),
                    }
                }
            }
        }
    }

    #[test]
    fn low_stock_is_a_crossing_not_a_level() {
        assert!(crosses_low_stock(10, 9, 10));
        assert!(!crosses_low_stock(9, 8, 10));
        assert!(!crosses_low_stock(20, 10, 10));
    }
}
