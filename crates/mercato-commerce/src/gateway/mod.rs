//! The payment gateway as Mercato sees it: the [`PaymentGateway`] trait the payments module
//! calls, [`HttpGateway`] (its adapter for the Stripe-shaped HTTP protocol of
//! `docs/gateway.md`, spoken by `mercato gateway-sim` and the in-process simulator), and
//! [`verify_webhook`] for the signed events the gateway sends back.
//!
//! Invariants the callers rely on:
//! - A charge is sent with the caller's idempotency key and only ever retried with that same
//!   key, so the gateway executes it at most once.
//! - Only what is provably safe is retried: a request that never left (connection refused or
//!   failed), and answers that say "not done / try again" (5xx, 429, 409 request in progress).
//!   A request that was sent and then timed out or lost its connection is never retried: its
//!   outcome is [`ChargeOutcome::Unknown`] at once, the payment goes `pending_verification`, and
//!   reconciliation asks [`PaymentGateway::find_by_reference`].
//! - `Err(GatewayError)` from [`PaymentGateway::charge`] or [`PaymentGateway::refund`] means
//!   the gateway certainly did nothing (never reached, circuit open, or the request refused
//!   before execution). Anything that may have moved money is `Ok(…Unknown)`.
//! - A circuit breaker (the kernel's) shared by all operations fails calls fast with
//!   [`GatewayError::Unavailable`] while the gateway keeps failing.
//!
//! Metrics: `gateway_calls_total{operation, outcome}`, `gateway_call_duration_seconds{operation,
//! outcome}` (the whole call, retries included) and `gateway_retries_total{operation}`.

mod client;
mod webhook;
mod wire;

#[cfg(test)]
mod tests;

pub use client::{HttpGateway, HttpGatewayConfig};
pub use webhook::{
    GatewayEvent, GatewayEventType, SIGNATURE_HEADER, WEBHOOK_TOLERANCE, WebhookError,
    verify_webhook,
};

use mercato_kernel::{Money, Timestamp};
use serde::Serialize;

/// A request to capture money from a payment token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    pub amount: Money,
    /// The customer's payment token (`tok_…`).
    pub token: String,
    /// Mercato's payment reference (e.g. `chk_…:pay:1`): how reconciliation finds the charge.
    pub reference: String,
    /// Sent as `Idempotency-Key`; deterministic per payment attempt, reused on every retry.
    pub idempotency_key: String,
}

/// What a charge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The money was captured.
    Captured { charge_id: String, amount: Money },
    /// The card was declined; nothing was captured. `charge_id` is the gateway's record of the
    /// failed charge when it gave one.
    Declined {
        charge_id: Option<String>,
        /// e.g. `card_declined`, `insufficient_funds`, `invalid_token`.
        decline_code: String,
    },
    /// The request may or may not have been executed (timeout, lost connection, repeated 5xx):
    /// never retry it under a new key; ask [`PaymentGateway::find_by_reference`] later.
    Unknown { reason: String },
}

/// A request to give money back from a captured charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    pub charge_id: String,
    pub amount: Money,
    /// Sent as `Idempotency-Key`; deterministic per refund, reused on every retry.
    pub idempotency_key: String,
    /// Mercato's refund reference (stored on the gateway's refund object).
    pub reference: String,
}

/// What a refund did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded {
        refund_id: String,
        amount: Money,
    },
    /// The gateway refused it and refunded nothing: `amount_too_large`,
    /// `charge_not_captured`, `charge_already_refunded`, `resource_missing`, …
    Rejected {
        code: String,
    },
    /// May or may not have been executed; look at the charge's refunds later.
    Unknown {
        reason: String,
    },
}

/// A charge as the gateway records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub id: String,
    pub amount: Money,
    pub status: ChargeStatus,
    pub captured: bool,
    /// Mercato's payment reference it was created with.
    pub reference: String,
    pub amount_refunded: Money,
    /// The decline code of a failed charge.
    pub failure_code: Option<String>,
    pub disputed: bool,
    pub created: Timestamp,
    /// Oldest first.
    pub refunds: Vec<Refund>,
}

impl Charge {
    /// Whether money was taken (whatever was refunded since).
    pub fn is_captured(&self) -> bool {
        self.captured && self.status == ChargeStatus::Succeeded
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    Failed,
    /// Not final yet (any status this client does not know is read as pending).
    Pending,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refund {
    pub id: String,
    pub charge_id: String,
    pub amount: Money,
    pub status: String,
    pub reference: Option<String>,
    pub created: Timestamp,
}

/// A chargeback opened by the card holder's bank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dispute {
    pub id: String,
    pub charge_id: String,
    pub amount: Money,
    pub reason: String,
    pub status: String,
}

/// The card behind a payment token, as the gateway reports it (fraud checks use it before
/// the charge).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CardDetails {
    /// The same card gives the same fingerprint, whichever token or customer uses it.
    pub fingerprint: String,
    /// Issuing country, ISO 3166 alpha-2.
    pub country: String,
    #[serde(default)]
    pub brand: String,
}

/// The gateway could not do what was asked, and certainly did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Not reachable, failing, or the circuit breaker is open.
    #[error("payment gateway unavailable: {reason}")]
    Unavailable { reason: String },
    /// The gateway refused the request before executing it (bad parameters, bad API key, …):
    /// a bug or a misconfiguration on our side.
    #[error("payment gateway refused the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// An answer this client cannot read (only for reads; writes answer `Unknown` instead).
    #[error("unexpected answer from the payment gateway: {reason}")]
    Unexpected { reason: String },
}

/// The payment gateway Mercato charges and refunds through. Implementations must be safe to
/// call concurrently and must honour the invariants in this module's documentation.
#[async_trait::async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// A short name for records and logs (`payments.gateway`).
    fn name(&self) -> &str;

    /// Captures `amount` from `token`, at most once per idempotency key.
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError>;

    /// One charge by the gateway's id; `None` when the gateway does not know it.
    async fn retrieve(&self, charge_id: &str) -> Result<Option<Charge>, GatewayError>;

    /// Every charge created with this reference, newest first (how reconciliation learns the
    /// truth after an `Unknown`). Empty when the gateway never executed the request.
    async fn find_by_reference(&self, reference: &str) -> Result<Vec<Charge>, GatewayError>;

    /// Refunds part or the rest of a captured charge, at most once per idempotency key.
    async fn refund(&self, request: RefundRequest) -> Result<RefundOutcome, GatewayError>;

    /// The card behind `token` when `customer` pays with it (`None` for a token the gateway
    /// does not know). A read: safe to retry, moves no money.
    async fn card(&self, token: &str, customer: &str) -> Result<Option<CardDetails>, GatewayError>;
}
