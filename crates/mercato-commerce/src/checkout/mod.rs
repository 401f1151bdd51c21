//! Checkout: the orchestrated, persisted saga from cart to order (see `service.rs` for the
//! whole protocol).
//!
//! Invariants: a checkout holds its stock from creation until it completes, fails or expires
//! (released by the sweeper within `sweep_every_secs`); each payment attempt is one saga with
//! a persisted step log; no network I/O inside a transaction; capture, order, stock commit
//! and cart conversion commit together, so money is never captured without an order; every
//! settlement is conditional on the checkout's status, so concurrent settlers cannot both win.
//!
//! Emits `checkout.started|expired` and `fraud.flagged`; drives the payments, orders and
//! inventory events of each step.

pub mod http;
pub mod model;
pub mod service;
mod store;

pub use service::{CheckoutError, CheckoutService};
