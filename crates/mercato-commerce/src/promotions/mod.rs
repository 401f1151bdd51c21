//! Promotions and coupons: admin-managed discount rules; a coupon is a promotion with a code.
//!
//! Invariants: the discount engine (`model::evaluate`) is pure, deterministic and never lets a
//! discount exceed a line or a budget; the parts of each discount over its lines add up exactly.

pub mod model;
