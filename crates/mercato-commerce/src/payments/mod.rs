//! Payments: one payment per checkout attempt, an append-only ledger, refunds, gateway
//! webhooks.
//!
//! Invariants: a checkout attempt has at most one payment (UNIQUE (checkout_id, attempt)) and
//! is charged under one deterministic gateway idempotency key (`chk_…:pay:N`), so retries can
//! never charge twice; a gateway timeout is never retried under a new key — the payment goes
//! `pending_verification` and reconciliation asks the gateway by reference; refunds reserve
//! their amount with a conditional UPDATE and `refunded <= captured` is a CHECK constraint, so
//! the total refunded never exceeds the capture; the ledger is append-only (types: initiated,
//! authorized, captured, declined, pending_verification, refund_initiated, refunded,
//! refund_failed, chargeback); webhooks are HMAC-verified and deduplicated by event id.
//!
//! Emits `payment.captured|declined|pending_verification|refunded|chargeback`.

pub mod http;
pub mod model;
pub mod service;
pub mod store;

pub use service::{PaymentError, PaymentService, Resolution};
