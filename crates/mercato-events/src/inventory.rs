//! Events of the inventory system (payload types; see the crate docs).

use crate::payload;
use serde::{Deserialize, Serialize};

/// Units of one SKU in one warehouse (a reservation line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub sku: String,
    pub warehouse_id: String,
    pub quantity: i64,
}

/// `inventory.reserved`: a checkout reserved stock (one line per SKU and warehouse).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub checkout_id: String,
    pub lines: Vec<StockLine>,
}
payload!(Reserved, "inventory.reserved", "checkout", checkout_id);

/// `inventory.released`: a checkout's reservations ended without a sale (released or expired);
/// the units are available again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub checkout_id: String,
    pub lines: Vec<StockLine>,
    /// Why, e.g. `checkout expired`, `payment declined`.
    pub reason: String,
}
payload!(Released, "inventory.released", "checkout", checkout_id);

/// `inventory.committed`: a checkout's reservations became sold units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub checkout_id: String,
    pub lines: Vec<StockLine>,
    /// What sold them (the order id).
    pub reference: String,
}
payload!(Committed, "inventory.committed", "checkout", checkout_id);

/// `inventory.adjusted`: on-hand stock of a SKU in a warehouse changed (set, adjustment,
/// restock after a cancellation or a return).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjusted {
    pub sku: String,
    pub warehouse_id: String,
    /// Change of `on_hand`.
    pub delta: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    /// `set`, the adjustment's reason, `cancel`, `return`, …
    pub reason: String,
}
payload!(Adjusted, "inventory.adjusted", "stock", sku);

/// `inventory.low_stock`: available stock of a SKU in a warehouse fell to or below its
/// threshold (emitted once per crossing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStock {
    pub sku: String,
    pub warehouse_id: String,
    pub available: i64,
    pub threshold: i64,
}
payload!(LowStock, "inventory.low_stock", "stock", sku);
