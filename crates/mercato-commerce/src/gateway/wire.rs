//! The gateway's JSON as received, and its conversion into this module's types. Parsing is
//! lenient about members it does not know (the protocol may grow), strict about the ones it
//! needs.

use super::{Charge, ChargeStatus, Dispute, Refund};
use mercato_kernel::{Currency, Money, Timestamp};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct WireCharge {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub captured: bool,
    pub reference: String,
    #[serde(default)]
    pub amount_refunded: i64,
    #[serde(default)]
    pub failure_code: Option<String>,
    #[serde(default)]
    pub disputed: bool,
    pub created: i64,
    #[serde(default)]
    pub refunds: Vec<WireRefund>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireRefund {
    pub id: String,
    pub charge: String,
    pub amount: i64,
    #[serde(default)]
    pub currency: Option<String>,
    pub status: String,
    #[serde(default)]
    pub reference: Option<String>,
    pub created: i64,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireList {
    pub data: Vec<WireCharge>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireDispute {
    pub id: String,
    pub charge: String,
    pub amount: i64,
    pub currency: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created: i64,
    pub data: WireEventData,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireEventData {
    pub object: WireCharge,
    #[serde(default)]
    pub dispute: Option<WireDispute>,
}

/// `{"error": {...}}`
#[derive(Debug, Default, Deserialize)]
pub(super) struct WireErrorBody {
    #[serde(default)]
    pub error: WireError,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub charge: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl WireErrorBody {
    /// Reads an error body; an unreadable one yields empty fields.
    pub fn parse(body: &[u8]) -> WireError {
        serde_json::from_slice::<WireErrorBody>(body)
            .map(|b| b.error)
            .unwrap_or_default()
    }
}

pub(super) fn money(amount: i64, currency: &str) -> Result<Money, String> {
    Currency::parse(currency)
        .map(|c| Money::new(amount, c))
        .ok_or_else(|| format!("invalid currency {currency:?}"))
}

pub(super) fn timestamp(unix_secs: i64) -> Timestamp {
    Timestamp::from_micros(unix_secs.saturating_mul(1_000_000))
}

impl TryFrom<WireCharge> for Charge {
    type Error = String;

    fn try_from(w: WireCharge) -> Result<Charge, String> {
        let status = match w.status.as_str() {
            "succeeded" => ChargeStatus::Succeeded,
            "failed" => ChargeStatus::Failed,
            _ => ChargeStatus::Pending,
        };
        let refunds = w
            .refunds
            .into_iter()
            .map(|r| {
                let currency = r.currency.as_deref().unwrap_or(&w.currency);
                Ok(Refund {
                    amount: money(r.amount, currency)?,
                    id: r.id,
                    charge_id: r.charge,
                    status: r.status,
                    reference: r.reference,
                    created: timestamp(r.created),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Charge {
            amount: money(w.amount, &w.currency)?,
            amount_refunded: money(w.amount_refunded, &w.currency)?,
            id: w.id,
            status,
            captured: w.captured,
            reference: w.reference,
            failure_code: w.failure_code,
            disputed: w.disputed,
            created: timestamp(w.created),
            refunds,
        })
    }
}

impl TryFrom<WireDispute> for Dispute {
    type Error = String;

    fn try_from(w: WireDispute) -> Result<Dispute, String> {
        Ok(Dispute {
            amount: money(w.amount, &w.currency)?,
            id: w.id,
            charge_id: w.charge,
            reason: w.reason,
            status: w.status,
        })
    }
}
