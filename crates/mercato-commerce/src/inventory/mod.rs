//! Inventory: warehouses, stock per (SKU, warehouse), the append-only movement log,
//! reservations.
//!
//! Invariants, at every instant and under any concurrency: `reserved >= 0`,
//! `available = on_hand - reserved >= 0`, units sold never exceed units received, and the
//! movement log of a (SKU, warehouse) sums to its stock. Each change is one conditional UPDATE
//! (`… WHERE on_hand - reserved >= $q`) plus its movement entry in the same transaction, and
//! CHECK constraints back the invariants in the schema. Reservations are all lines or none,
//! from the warehouse that can serve each line (the shipping country first, then the most
//! stock; split across warehouses only when no single one can). A SKU without stock rows is
//! untracked: sold without limit and never reserved (like "don't track quantity" in other
//! shops); tracking starts with the first stock write.
//!
//! Emits `inventory.reserved|released|committed` (per checkout, with lines),
//! `inventory.adjusted` (per stock change) and `inventory.low_stock` when availability crosses
//! below a row's threshold (default 10). Implements the `StockLevels` seam for carts, catalog
//! and search.

pub mod http;
pub mod model;
pub mod service;
mod store;

pub use service::{InventoryError, InventoryService};
pub use store::{Shortfall, StockAfter};
