//! Fraud: rules as data, a risk score from a small trained model, and a review queue, run
//! inline by the checkout saga before every charge (API.md "Fraud", docs/fraud.md).
//!
//! Decision = rules first (each `block` or `flag`), then the model's score in [0, 1]: a
//! blocking rule or a score ≥ `fraud_block_score_permille` blocks (403 `fraud_blocked`,
//! nothing charged, the checkout's stock and promotion uses released); a flag or a score ≥
//! `fraud_review_score_permille` reviews (charged, order confirmed and held); else allow.
//!
//! Invariants:
//! - Scoring ([`FraudService::assess`]) never touches the database: rules, blocklist,
//!   per-customer features and the model are in-memory caches refreshed by a background job
//!   (`fraud_features_refresh_secs`, at most an hour) and on every admin change; velocity is
//!   an in-process sliding-window counter behind [`service::WindowCounter`].
//! - Every decision is stored with its score, reasons and features in the checkout's intent
//!   transaction ([`FraudService::record_tx`]); a `review` order is held
//!   (`orders.review_hold`) in the same transaction that creates it
//!   ([`FraudService::attach_order_tx`]), so it can never be fulfilled before the hold exists.
//! - A review leaves `open` once (conditional UPDATE): approve and reject cannot both win;
//!   reject cancels through the orders module, whose cancellation refunds exactly once.
//! - Features come from this module's own tables, fed by its decisions and by other modules'
//!   events (`user.registered`, `payment.declined`, `payment.chargeback`, `order.delivered`),
//!   never by reading their tables.
//!
//! Emits `fraud.blocked` (with the blocked attempt's intent), `fraud.flagged` (a held order),
//! `fraud.review_approved` and `fraud.review_rejected`.

pub mod http;
pub mod model;
pub mod service;
mod store;

pub use model::Verdict;
pub use service::{
    Assessment, ClientSignals, FraudError, FraudOutcomes, FraudService, Payment, WindowCounter,
};
