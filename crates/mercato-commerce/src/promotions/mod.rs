//! Promotions and coupons: admin-managed discount rules; a coupon is a promotion with a code.
//!
//! Invariants: codes are unique case-insensitively (a lower-cased key with a unique index);
//! the discount engine (`model::evaluate`) is pure, deterministic and never lets a discount
//! exceed a line or a budget; uses are counted like stock — a checkout RESERVES one use (and
//! its amount of the budget) with one conditional UPDATE, COMMITS it when paid and RELEASES it
//! when it fails, expires or its order is cancelled, so committed + reserved never exceed
//! `usage_limit`, `per_customer_limit` or `budget` under any concurrency. A cart preview
//! evaluates without reserving anything.
//!
//! Checkout evaluates with `PromotionService::evaluate_lines` and calls `reserve_tx` when it
//! creates a checkout, `commit_tx` when the order is created from the captured payment and
//! `release_tx` wherever it releases the checkout's stock; orders call `release_tx` when an
//! order is cancelled. Emits `promotion.redeemed` (commit) and `promotion.released` (release)
//! in those transactions (docs/promotions.md).

pub mod http;
pub mod model;
pub mod service;
mod store;

pub use service::{PromotionError, PromotionService};
pub use store::{Exhausted, PromotionStore};
