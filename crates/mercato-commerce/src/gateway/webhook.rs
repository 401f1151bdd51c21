//! Verifying the events the gateway POSTs back (`Mercato-Signature: t=<unix secs>,v1=<hex>`,
//! where v1 = HMAC-SHA256(secret, "<t>.<raw body>")).
//!
//! Verify the RAW body exactly as received, before any JSON parsing. Several `v1=` values may
//! be present (secret rotation): one match suffices. The timestamp must be within the
//! tolerance of `now` in both directions, which bounds replays of captured requests; replays
//! inside the window are the receiver's to drop by event id.

use super::wire::{WireEvent, timestamp};
use super::{Charge, Dispute};
use hmac::{Hmac, Mac};
use mercato_kernel::Timestamp;
use sha2::Sha256;
use std::time::Duration;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "mercato-signature";

/// The default tolerance between the signature's timestamp and now.
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A verified gateway event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayEvent {
    /// `evt_…`: unique per event, repeated on redelivery (dedup on it).
    pub id: String,
    pub event_type: GatewayEventType,
    pub created: Timestamp,
    /// The charge as it is after the event.
    pub charge: Charge,
    /// Present on `charge.dispute.created`.
    pub dispute: Option<Dispute>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayEventType {
    ChargeSucceeded,
    ChargeFailed,
    ChargeRefunded,
    DisputeCreated,
    /// A type this version does not handle (acknowledge and ignore it).
    Other(String),
}

impl GatewayEventType {
    pub fn parse(s: &str) -> GatewayEventType {
        match s {
            "charge.succeeded" => GatewayEventType::ChargeSucceeded,
            "charge.failed" => GatewayEventType::ChargeFailed,
            "charge.refunded" => GatewayEventType::ChargeRefunded,
            "charge.dispute.created" => GatewayEventType::DisputeCreated,
            other => GatewayEventType::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            GatewayEventType::ChargeSucceeded => "charge.succeeded",
            GatewayEventType::ChargeFailed => "charge.failed",
            GatewayEventType::ChargeRefunded => "charge.refunded",
            GatewayEventType::DisputeCreated => "charge.dispute.created",
            GatewayEventType::Other(s) => s,
        }
    }
}

/// Why a webhook was refused (answer 400 and change nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the Mercato-Signature header is missing")]
    MissingSignature,
    #[error("the Mercato-Signature header is malformed")]
    MalformedSignature,
    #[error("no signature in Mercato-Signature matches the body")]
    SignatureMismatch,
    #[error("the signature timestamp {timestamp} is older than the tolerance (now {now})")]
    Stale { timestamp: i64, now: i64 },
    #[error("the signature timestamp {timestamp} is in the future (now {now})")]
    FromTheFuture { timestamp: i64, now: i64 },
    #[error("the signed body is not a gateway event: {0}")]
    MalformedPayload(String),
}

/// Checks `signature_header` (the `Mercato-Signature` value, `None` when absent) against the
/// raw body and `secret`, then parses the event. `now` should be the wall clock (the gateway
/// signs with its own).
pub fn verify_webhook(
    secret: &str,
    signature_header: Option<&str>,
    raw_body: &[u8],
    now: Timestamp,
    tolerance: Duration,
) -> Result<GatewayEvent, WebhookError> {
    let header = signature_header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(WebhookError::MissingSignature)?;
    let mut t_text: Option<&str> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return Err(WebhookError::MalformedSignature);
        };
        match k {
            "t" if t_text.is_none() => t_text = Some(v),
            "t" => return Err(WebhookError::MalformedSignature),
            "v1" => {
                if let Some(sig) = decode_hex(v) {
                    candidates.push(sig);
                }
            }
            // Other schemes (v0, future versions) are ignored, as Stripe's are.
            _ => {}
        }
    }
    let t_text = t_text.ok_or(WebhookError::MalformedSignature)?;
    let t: i64 = t_text
        .parse()
        .map_err(|_| WebhookError::MalformedSignature)?;
    if candidates.is_empty() {
        return Err(WebhookError::MalformedSignature);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| WebhookError::SignatureMismatch)?;
    mac.update(t_text.as_bytes());
    mac.update(b".");
    mac.update(raw_body);
    // `verify_slice` compares in constant time.
    if !candidates
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
    {
        return Err(WebhookError::SignatureMismatch);
    }
    let now_secs = now.as_unix_secs();
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now_secs.saturating_sub(t) > tolerance {
        return Err(WebhookError::Stale {
            timestamp: t,
            now: now_secs,
        });
    }
    if t.saturating_sub(now_secs) > tolerance {
        return Err(WebhookError::FromTheFuture {
            timestamp: t,
            now: now_secs,
        });
    }
    let wire: WireEvent = serde_json::from_slice(raw_body)
        .map_err(|e| WebhookError::MalformedPayload(e.to_string()))?;
    Ok(GatewayEvent {
        id: wire.id,
        event_type: GatewayEventType::parse(&wire.event_type),
        created: timestamp(wire.created),
        charge: Charge::try_from(wire.data.object).map_err(WebhookError::MalformedPayload)?,
        dispute: wire
            .data
            .dispute
            .map(Dispute::try_from)
            .transpose()
            .map_err(WebhookError::MalformedPayload)?,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}
