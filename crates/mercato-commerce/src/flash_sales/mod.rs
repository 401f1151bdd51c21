//! Flash sales: `units` of one SKU at `price` from `starts_at` to `ends_at`, sold through a
//! virtual waiting room and single-use purchase tokens (docs/promotions.md "Flash sales").
//!
//! Invariants: the units are set aside from the SKU's stock when the sale is created (an
//! inventory reservation owned by the sale) and what is not sold goes back when it ends; the
//! units held by live tokens plus the units sold never exceed `units` (a conditional UPDATE
//! on `claimed`), so nothing is oversold whatever the concurrency; while the sale runs the SKU
//! is sold only with a valid token, at the sale price, up to `per_customer_limit` units, one
//! token per customer; a token is signed (forgeries are refused without a database read),
//! single-use (issued → held by one checkout → used when paid; back to issued if that
//! checkout fails while the token lives) and expires after `token_ttl_secs`, its units going
//! back to the room. Everyone who joined before the start is shuffled at the start; later
//! arrivals queue in order; tickets are admitted at `admit_per_minute`. Once no unit is left
//! unclaimed, waiting tickets are answered `sold_out` from memory.
//!
//! The waiting room and the "units left" counter live behind [`room::WaitingRoom`] (in process
//! memory now; Redis with the scale-out work); the database is the arbiter of tokens and stock.
//! Checkout calls `hold_tx` when it creates a checkout, `commit_tx` when the order is created
//! from the captured payment and `release_tx` wherever it releases the checkout's stock.

pub mod http;
pub mod model;
pub mod room;
pub mod service;
mod store;

pub use service::{FlashLine, FlashSaleError, FlashSaleService};
