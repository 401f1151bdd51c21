//! Orders: human-readable numbers, items with their sellers, totals, shipping address, payment
//! summary, full status history (actor, reason) and an optimistic version; the state machine
//! of `model.rs` (one table, exhaustively tested) is the only way an order changes status.
//! Cancellation releases or restocks stock and refunds the capture exactly once; returns
//! restock the returned lines and refund them; every change is also in the audit log.
//!
//! Emits `order.created|confirmed|failed|cancelled|fulfilment_started|shipped|delivered|
//! return_requested|returned|refunded`. Consumes `payment.chargeback` and `fraud.flagged`
//! (flags the order for review). Implements the verified-purchase seam for reviews.

pub mod http;
pub mod model;
pub mod service;
pub mod store;

pub use service::{GuestOrderClaims, OrderError, OrderFlagger, OrderRefunds, OrderService};
