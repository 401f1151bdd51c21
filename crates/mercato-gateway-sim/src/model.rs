//! The simulator's objects as they go over the wire (Stripe-shaped), the test tokens, and the
//! error bodies. Amounts are integer minor units; currencies are lower case on the wire.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a test token makes the simulator do with a charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenBehaviour {
    /// Captured at once (`tok_visa`, `tok_mastercard`).
    Approve,
    /// Declined with this decline code (`tok_chargeDeclined`, `tok_insufficientFunds`, unknown
    /// `tok_…` tokens → `invalid_token`).
    Decline(&'static str),
    /// Captured and stored, but the answer is held back for the configured hang (`tok_timeout`).
    CaptureThenHang,
    /// Nothing captured (a failed charge is stored), the answer is held back (`tok_timeoutDeclined`).
    DeclineThenHang,
}

/// The card behind a test token, as `GET /v1/tokens/{token}` answers it: its fingerprint
/// (the same card gives the same fingerprint) and issuing country.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    pub fingerprint: String,
    /// ISO 3166 alpha-2.
    pub country: String,
    pub brand: String,
}

/// The token that approves and is disputed (`charge.dispute.created`) shortly after capture.
pub const FRAUDULENT_TOKEN: &str = "tok_fraudulent";

/// The card behind a known test token for a customer. Generic tokens (`tok_visa`, …) act as
/// each customer's own US card: the fingerprint is derived from customer and token, so many
/// customers paying with `tok_visa` are many cards. `tok_visa_gb` is a GB-issued card of its
/// own per customer; `tok_shared_card` is one card (one fingerprint) for everyone. Unknown
/// tokens have no card.
pub fn card_of(token: &str, customer: &str) -> Option<Card> {
    let known = [
        "tok_visa",
        "tok_mastercard",
        "tok_visa_gb",
        "tok_shared_card",
        "tok_fraudulent",
        "tok_chargeDeclined",
        "tok_insufficientFunds",
        "tok_timeout",
        "tok_timeoutDeclined",
    ];
    if !known.contains(&token) {
        return None;
    }
    let fingerprint = if token == "tok_shared_card" {
        "fp_shared0000000000000".to_owned()
    } else {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{customer}\u{0}{token}").as_bytes());
        let hex: String = d.iter().take(10).map(|b| format!("{b:02x}")).collect();
        format!("fp_{hex}")
    };
    Some(Card {
        fingerprint,
        country: if token == "tok_visa_gb" { "GB" } else { "US" }.to_owned(),
        brand: if token == "tok_mastercard" {
            "mastercard"
        } else {
            "visa"
        }
        .to_owned(),
    })
}

/// The decline code answered for a `tok_…` token the simulator does not know.
pub const INVALID_TOKEN: &str = "invalid_token";

impl TokenBehaviour {
    /// The behaviour of a `tok_…` source. Unknown tokens decline with `invalid_token`.
    pub fn of(token: &str) -> TokenBehaviour {
        match token {
            "tok_visa" | "tok_mastercard" | "tok_visa_gb" | "tok_shared_card"
            | "tok_fraudulent" => TokenBehaviour::Approve,
            "tok_chargeDeclined" => TokenBehaviour::Decline("card_declined"),
            "tok_insufficientFunds" => TokenBehaviour::Decline("insufficient_funds"),
            "tok_timeout" => TokenBehaviour::CaptureThenHang,
            "tok_timeoutDeclined" => TokenBehaviour::DeclineThenHang,
            _ => TokenBehaviour::Decline(INVALID_TOKEN),
        }
    }

    pub fn hangs(self) -> bool {
        matches!(
            self,
            TokenBehaviour::CaptureThenHang | TokenBehaviour::DeclineThenHang
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChargeStatus {
    Succeeded,
    Failed,
}

/// A charge, exactly as `GET /v1/charges/{id}` answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    /// Always `"charge"`.
    pub object: String,
    pub amount: i64,
    /// Lower case ISO 4217.
    pub currency: String,
    pub status: ChargeStatus,
    pub captured: bool,
    pub paid: bool,
    /// Mercato's payment reference (e.g. `chk_…:pay:1`).
    pub reference: String,
    pub source: String,
    pub description: Option<String>,
    pub metadata: Value,
    pub amount_refunded: i64,
    /// True once the whole amount is refunded.
    pub refunded: bool,
    /// The decline code of a failed charge (`card_declined`, `insufficient_funds`, …).
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    /// True once a dispute was opened on it.
    pub disputed: bool,
    /// Unix seconds.
    pub created: i64,
    /// Oldest first.
    pub refunds: Vec<Refund>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    /// Always `"refund"`.
    pub object: String,
    pub charge: String,
    pub amount: i64,
    pub currency: String,
    /// Always `"succeeded"`: the simulator refunds synchronously.
    pub status: String,
    pub reason: Option<String>,
    pub reference: Option<String>,
    pub created: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dispute {
    pub id: String,
    /// Always `"dispute"`.
    pub object: String,
    pub charge: String,
    pub amount: i64,
    pub currency: String,
    pub reason: String,
    pub status: String,
    pub created: i64,
}

/// The event types the simulator emits.
pub mod event_type {
    pub const CHARGE_SUCCEEDED: &str = "charge.succeeded";
    pub const CHARGE_FAILED: &str = "charge.failed";
    pub const CHARGE_REFUNDED: &str = "charge.refunded";
    pub const DISPUTE_CREATED: &str = "charge.dispute.created";
}

/// A webhook event: `data.object` is always the charge as it is after the event; dispute
/// events also carry `data.dispute`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// Always `"event"`.
    pub object: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created: i64,
    pub data: EventData,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub object: Charge,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute: Option<Dispute>,
}

/// `POST /v1/charges` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCharge {
    pub amount: i64,
    pub currency: String,
    pub source: String,
    pub reference: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// `POST /v1/refunds` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    pub charge: String,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
}

/// `POST /v1/test/disputes` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDispute {
    pub charge: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/test/config` body: every knob optional; the answer is the knobs now in effect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang_ms: Option<u64>,
    /// Answer the next N API requests with 500 (deterministic failure injection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_next: Option<u32>,
}

/// An error answer: `(status, {"error": {...}})`.
#[derive(Clone, Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub body: Value,
}

impl ApiFailure {
    pub fn new(status: u16, kind: &str, code: &str, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            body: json!({"error": {"type": kind, "code": code, "message": message.into()}}),
        }
    }

    /// Adds a member to the `error` object.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiFailure {
        if let Some(err) = self.body.get_mut("error").and_then(Value::as_object_mut) {
            err.insert(key.to_owned(), value.into());
        }
        self
    }

    pub fn invalid(code: &str, message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(400, "invalid_request_error", code, message)
    }

    pub fn missing(what: &str) -> ApiFailure {
        ApiFailure::new(
            404,
            "invalid_request_error",
            "resource_missing",
            format!("No such {what}"),
        )
    }
}
