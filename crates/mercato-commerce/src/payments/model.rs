//! Payment statuses, ledger entry types, and the shapes the API returns.

use mercato_kernel::{Money, Timestamp};
use serde::Serialize;

mercato_kernel::typed_id!(
    /// A payment (one per checkout attempt).
    PaymentId, "pay");
mercato_kernel::typed_id!(
    /// A refund.
    RefundId, "ref");

/// The payment's current state (the ledger holds how it got there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Initiated,
    Captured,
    Declined,
    PendingVerification,
    /// The gateway confirmed nothing was captured after an unknown outcome.
    Failed,
    PartiallyRefunded,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Initiated => "initiated",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Declined => "declined",
            PaymentStatus::PendingVerification => "pending_verification",
            PaymentStatus::Failed => "failed",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<PaymentStatus> {
        [
            PaymentStatus::Initiated,
            PaymentStatus::Captured,
            PaymentStatus::Declined,
            PaymentStatus::PendingVerification,
            PaymentStatus::Failed,
            PaymentStatus::PartiallyRefunded,
            PaymentStatus::Refunded,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// The status after refunds: captured money fully or partly given back.
    pub fn after_refund(captured: i64, refunded: i64) -> PaymentStatus {
        if refunded <= 0 {
            PaymentStatus::Captured
        } else if refunded >= captured {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::PartiallyRefunded
        }
    }
}

/// Ledger entry types (API.md "Payments").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Initiated,
    Authorized,
    Captured,
    Declined,
    PendingVerification,
    RefundInitiated,
    Refunded,
    RefundFailed,
    Chargeback,
}

impl Entry {
    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Initiated => "initiated",
            Entry::Authorized => "authorized",
            Entry::Captured => "captured",
            Entry::Declined => "declined",
            Entry::PendingVerification => "pending_verification",
            Entry::RefundInitiated => "refund_initiated",
            Entry::Refunded => "refunded",
            Entry::RefundFailed => "refund_failed",
            Entry::Chargeback => "chargeback",
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    #[serde(rename = "type")]
    pub entry_type: String,
    pub amount: Money,
    pub at: Timestamp,
    pub gateway_ref: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Payment {
    pub id: String,
    pub checkout_id: String,
    pub order_id: Option<String>,
    pub customer_id: String,
    pub status: PaymentStatus,
    pub amount: Money,
    pub captured: Money,
    pub refunded: Money,
    pub gateway: String,
    pub gateway_ref: Option<String>,
    pub decline_code: Option<String>,
    pub ledger: Vec<LedgerEntry>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Refund {
    pub id: String,
    pub payment_id: String,
    /// `pending`, `succeeded`, `failed`.
    pub status: String,
    pub amount: Money,
    pub reason: String,
    /// What asked for it: `admin`, `cancel`, `return`, `compensation`.
    pub source: String,
    pub source_id: Option<String>,
    pub failure_code: Option<String>,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_status_follows_amounts() {
        assert_eq!(PaymentStatus::after_refund(100, 0), PaymentStatus::Captured);
        assert_eq!(
            PaymentStatus::after_refund(100, 40),
            PaymentStatus::PartiallyRefunded
        );
        assert_eq!(
            PaymentStatus::after_refund(100, 100),
            PaymentStatus::Refunded
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            "initiated",
            "captured",
            "declined",
            "pending_verification",
            "failed",
            "partially_refunded",
            "refunded",
        ] {
            assert_eq!(PaymentStatus::parse(s).map(|p| p.as_str()), Some(s));
        }
    }
}
