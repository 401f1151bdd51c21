//! Checkout: the orchestrated, persisted saga from cart to order (see `service.rs` for the
//! whole protocol).
//!
//! Invariants: a checkout holds its stock from creation until it completes, fails or expires
//! (released by the sweeper within `sweep_every_secs`); each payment attempt is one saga with
//! a persisted step log; no network I/O inside a transaction; capture, order, stock commit
//! and cart conversion commit together, so money is never captured without an order; every
//! settlement is conditional on the checkout's status, so concurrent settlers cannot both win.
//!
//! Emits `checkout.started|expired`; drives the payments, orders, inventory and fraud events
//! of each step (the fraud decision is stored with the attempt's intent, `fraud.blocked` with
//! it, and a held order's `fraud.flagged` with the order: `fraud::FraudService`).

pub mod http;
pub mod model;
pub mod service;
mod store;

pub use service::{CheckoutError, CheckoutService};
