//! The simulator's memory: charges, refunds, disputes, idempotency records, emitted events and
//! a log of requests and webhook attempts for tests to inspect.
//!
//! Everything sits behind one `std::sync::Mutex` that is never held across an `.await`: each
//! operation is a short critical section, so a charge and its idempotency record are written
//! together, atomically.

use crate::model::{
    Charge, ChargeStatus, CreateCharge, CreateDispute, CreateRefund, Dispute, Event, EventData,
    Refund, TokenBehaviour, event_type,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// How many request records and webhook attempts are kept (oldest dropped first), so a long
/// benchmark does not grow memory without bound. Charges and idempotency records are kept for
/// the life of the process, as a real gateway keeps them.
const LOG_CAPACITY: usize = 10_000;

/// The injection knobs in effect.
#[derive(Clone, Debug, Serialize)]
pub struct Knobs {
    pub latency_ms: u64,
    pub failure_rate: f64,
    pub hang_ms: u64,
    pub fail_next: u32,
}

/// Where webhooks go, and the secret they are signed with.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// One API request as the simulator saw it (tests check that retries reuse their key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The status answered (`None` when the client left before the answer).
    pub status: Option<u16>,
}

/// One attempt to deliver a webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookAttempt {
    pub event_id: String,
    pub event_type: String,
    /// 1-based.
    pub attempt: u32,
    /// The receiver's status, or `None` on a connection error.
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl WebhookAttempt {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What an idempotency key is doing.
enum Record {
    InProgress,
    Done { status: u16, body: Value },
}

struct IdempotencyEntry {
    fingerprint: String,
    record: Record,
}

/// The verdict on a request carrying an `Idempotency-Key`.
pub enum Claim {
    /// First use: go ahead (the key is now in progress).
    Proceed,
    /// Seen and finished: answer this again.
    Replay { status: u16, body: Value },
    /// Seen and still running.
    InProgress,
    /// Seen with different parameters (or on another endpoint).
    Mismatch,
}

pub struct Store {
    pub knobs: Knobs,
    pub webhook: Option<WebhookTarget>,
    charges: Vec<Charge>,
    by_id: HashMap<String, usize>,
    /// Positions in `charges` per reference, oldest first (reconciliation looks up by it).
    by_reference: HashMap<String, Vec<usize>>,
    disputes: Vec<Dispute>,
    idempotency: HashMap<String, IdempotencyEntry>,
    events: Vec<Event>,
    requests: VecDeque<(u64, RequestRecord)>,
    next_request_seq: u64,
    webhook_attempts: VecDeque<WebhookAttempt>,
}

/// The outcome of creating a charge.
pub struct ChargeResult {
    pub charge: Charge,
    pub event: Event,
    /// `Some(decline_code)` when declined.
    pub declined: Option<&'static str>,
}

impl Store {
    pub fn new(knobs: Knobs, webhook: Option<WebhookTarget>) -> Store {
        Store {
            knobs,
            webhook,
            charges: Vec::new(),
            by_id: HashMap::new(),
            by_reference: HashMap::new(),
            disputes: Vec::new(),
            idempotency: HashMap::new(),
            events: Vec::new(),
            requests: VecDeque::new(),
            next_request_seq: 0,
            webhook_attempts: VecDeque::new(),
        }
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.knobs.latency_ms)
    }

    pub fn hang(&self) -> Duration {
        Duration::from_millis(self.knobs.hang_ms)
    }

    /// Whether to answer this request with an injected 500 (consumes one `fail_next`).
    pub fn inject_failure(&mut self) -> bool {
        if self.knobs.fail_next > 0 {
            self.knobs.fail_next -= 1;
            return true;
        }
        let rate = self.knobs.failure_rate;
        rate > 0.0 && rand::Rng::gen_bool(&mut rand::thread_rng(), rate.clamp(0.0, 1.0))
    }

    // --- idempotency ---

    pub fn claim(&mut self, key: &str, fingerprint: &str) -> Claim {
        match self.idempotency.get(key) {
            None => {
                self.idempotency.insert(
                    key.to_owned(),
                    IdempotencyEntry {
                        fingerprint: fingerprint.to_owned(),
                        record: Record::InProgress,
                    },
                );
                Claim::Proceed
            }
            Some(e) if e.fingerprint != fingerprint => Claim::Mismatch,
            Some(IdempotencyEntry {
                record: Record::InProgress,
                ..
            }) => Claim::InProgress,
            Some(IdempotencyEntry {
                record: Record::Done { status, body },
                ..
            }) => Claim::Replay {
                status: *status,
                body: body.clone(),
            },
        }
    }

    pub fn complete(&mut self, key: &str, status: u16, body: Value) {
        if let Some(e) = self.idempotency.get_mut(key) {
            e.record = Record::Done { status, body };
        }
    }

    /// Forgets a key whose work never finished (so a retry can run it).
    pub fn release(&mut self, key: &str) {
        if let Some(IdempotencyEntry {
            record: Record::InProgress,
            ..
        }) = self.idempotency.get(key)
        {
            self.idempotency.remove(key);
        }
    }

    // --- charges ---

    pub fn create_charge(&mut self, req: &CreateCharge, now: i64) -> ChargeResult {
        let behaviour = TokenBehaviour::of(&req.source);
        let declined = match behaviour {
            TokenBehaviour::Approve | TokenBehaviour::CaptureThenHang => None,
            TokenBehaviour::Decline(code) => Some(code),
            TokenBehaviour::DeclineThenHang => Some("card_declined"),
        };
        let charge = Charge {
            id: mercato_kernel::id::new_id("ch"),
            object: "charge".into(),
            amount: req.amount,
            currency: req.currency.to_ascii_lowercase(),
            status: if declined.is_some() {
                ChargeStatus::Failed
            } else {
                ChargeStatus::Succeeded
            },
            captured: declined.is_none(),
            paid: declined.is_none(),
            reference: req.reference.clone(),
            source: req.source.clone(),
            description: req.description.clone(),
            metadata: req
                .metadata
                .clone()
                .unwrap_or_else(|| Value::Object(Default::default())),
            amount_refunded: 0,
            refunded: false,
            failure_code: declined.map(str::to_owned),
            failure_message: declined.map(decline_message).map(str::to_owned),
            disputed: false,
            created: now,
            refunds: Vec::new(),
        };
        self.by_id.insert(charge.id.clone(), self.charges.len());
        self.by_reference
            .entry(charge.reference.clone())
            .or_default()
            .push(self.charges.len());
        self.charges.push(charge.clone());
        let kind = if declined.is_some() {
            event_type::CHARGE_FAILED
        } else {
            event_type::CHARGE_SUCCEEDED
        };
        let event = self.record_event(kind, charge.clone(), None, now);
        ChargeResult {
            charge,
            event,
            declined,
        }
    }

    pub fn charge(&self, id: &str) -> Option<&Charge> {
        self.by_id.get(id).and_then(|i| self.charges.get(*i))
    }

    /// Charges with this reference, newest first; every charge when `reference` is `None`.
    pub fn charges_by_reference(&self, reference: Option<&str>) -> Vec<Charge> {
        match reference {
            None => self.charges.iter().rev().cloned().collect(),
            Some(r) => self
                .by_reference
                .get(r)
                .map(|positions| {
                    positions
                        .iter()
                        .rev()
                        .filter_map(|i| self.charges.get(*i))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    // --- refunds ---

    /// Refunds part or the rest of a captured charge. Never more than what is left.
    pub fn create_refund(
        &mut self,
        req: &CreateRefund,
        now: i64,
    ) -> Result<(Refund, Event), crate::model::ApiFailure> {
        use crate::model::ApiFailure;
        let Some(idx) = self.by_id.get(&req.charge).copied() else {
            return Err(ApiFailure::missing("charge").with("param", "charge"));
        };
        let Some(charge) = self.charges.get_mut(idx) else {
            return Err(ApiFailure::missing("charge").with("param", "charge"));
        };
        if !charge.captured {
            return Err(ApiFailure::invalid(
                "charge_not_captured",
                "This charge was not captured, so it cannot be refunded",
            ));
        }
        let left = charge.amount - charge.amount_refunded;
        let amount = req.amount.unwrap_or(left);
        if left == 0 {
            return Err(ApiFailure::invalid(
                "charge_already_refunded",
                "This charge has already been refunded in full",
            ));
        }
        if amount > left {
            return Err(ApiFailure::invalid(
                "amount_too_large",
                format!("Refund amount {amount} is greater than the unrefunded amount {left}"),
            )
            .with("param", "amount"));
        }
        let refund = Refund {
            id: mercato_kernel::id::new_id("re"),
            object: "refund".into(),
            charge: charge.id.clone(),
            amount,
            currency: charge.currency.clone(),
            status: "succeeded".into(),
            reason: req.reason.clone(),
            reference: req.reference.clone(),
            created: now,
        };
        charge.amount_refunded += amount;
        charge.refunded = charge.amount_refunded == charge.amount;
        charge.refunds.push(refund.clone());
        let snapshot = charge.clone();
        let event = self.record_event(event_type::CHARGE_REFUNDED, snapshot, None, now);
        Ok((refund, event))
    }

    // --- disputes ---

    pub fn create_dispute(
        &mut self,
        req: &CreateDispute,
        now: i64,
    ) -> Result<(Dispute, Event), crate::model::ApiFailure> {
        use crate::model::ApiFailure;
        let Some(charge) = self
            .by_id
            .get(&req.charge)
            .copied()
            .and_then(|i| self.charges.get_mut(i))
        else {
            return Err(ApiFailure::missing("charge").with("param", "charge"));
        };
        if !charge.captured {
            return Err(ApiFailure::invalid(
                "charge_not_captured",
                "Only a captured charge can be disputed",
            ));
        }
        charge.disputed = true;
        let dispute = Dispute {
            id: mercato_kernel::id::new_id("dp"),
            object: "dispute".into(),
            charge: charge.id.clone(),
            amount: charge.amount - charge.amount_refunded,
            currency: charge.currency.clone(),
            reason: req.reason.clone().unwrap_or_else(|| "fraudulent".into()),
            status: "needs_response".into(),
            created: now,
        };
        let snapshot = charge.clone();
        self.disputes.push(dispute.clone());
        let event = self.record_event(
            event_type::DISPUTE_CREATED,
            snapshot,
            Some(dispute.clone()),
            now,
        );
        Ok((dispute, event))
    }

    // --- events and logs ---

    fn record_event(
        &mut self,
        kind: &str,
        charge: Charge,
        dispute: Option<Dispute>,
        now: i64,
    ) -> Event {
        let event = Event {
            id: mercato_kernel::id::new_id("evt"),
            object: "event".into(),
            event_type: kind.into(),
            created: now,
            data: EventData {
                object: charge,
                dispute,
            },
        };
        self.events.push(event.clone());
        event
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn charges(&self) -> &[Charge] {
        &self.charges
    }

    pub fn disputes(&self) -> &[Dispute] {
        &self.disputes
    }

    /// Logs a request as it arrives; returns a handle for [`Store::answer_request`].
    pub fn log_request(&mut self, record: RequestRecord) -> u64 {
        if self.requests.len() >= LOG_CAPACITY {
            self.requests.pop_front();
        }
        let seq = self.next_request_seq;
        self.next_request_seq += 1;
        self.requests.push_back((seq, record));
        seq
    }

    /// Records the status a logged request was answered with.
    pub fn answer_request(&mut self, seq: u64, status: u16) {
        if let Some((_, r)) = self.requests.iter_mut().rev().find(|(s, _)| *s == seq) {
            r.status = Some(status);
        }
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests.iter().map(|(_, r)| r.clone()).collect()
    }

    pub fn log_webhook_attempt(&mut self, attempt: WebhookAttempt) {
        if self.webhook_attempts.len() >= LOG_CAPACITY {
            self.webhook_attempts.pop_front();
        }
        self.webhook_attempts.push_back(attempt);
    }

    pub fn webhook_attempts(&self) -> Vec<WebhookAttempt> {
        self.webhook_attempts.iter().cloned().collect()
    }
}

pub fn decline_message(code: &str) -> &'static str {
    match code {
        "insufficient_funds" => "Your card has insufficient funds.",
        crate::model::INVALID_TOKEN => "The payment token is not valid.",
        _ => "Your card was declined.",
    }
}

/// A canonical form of a JSON body (object keys sorted at every level), so that the same
/// parameters in another key order count as the same request.
pub fn canonical(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(inner) = m.get(*k) {
                        walk(inner, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    walk(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    walk(v, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_ignores_key_order() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"c": 3, "d": 2}]}, "b": 1});
        assert_eq!(canonical(&a), canonical(&b));
        assert_ne!(canonical(&a), canonical(&json!({"b": 2})));
    }

    #[test]
    fn test_tokens_map_to_behaviours() {
        assert_eq!(TokenBehaviour::of("tok_visa"), TokenBehaviour::Approve);
        assert_eq!(
            TokenBehaviour::of("tok_mastercard"),
            TokenBehaviour::Approve
        );
        assert_eq!(
            TokenBehaviour::of("tok_chargeDeclined"),
            TokenBehaviour::Decline("card_declined")
        );
        assert_eq!(
            TokenBehaviour::of("tok_insufficientFunds"),
            TokenBehaviour::Decline("insufficient_funds")
        );
        assert_eq!(
            TokenBehaviour::of("tok_timeout"),
            TokenBehaviour::CaptureThenHang
        );
        assert_eq!(
            TokenBehaviour::of("tok_timeoutDeclined"),
            TokenBehaviour::DeclineThenHang
        );
        assert_eq!(
            TokenBehaviour::of("tok_nope"),
            TokenBehaviour::Decline("invalid_token")
        );
    }

    #[test]
    fn idempotency_claims_follow_the_record() {
        let mut s = Store::new(
            Knobs {
                latency_ms: 0,
                failure_rate: 0.0,
                hang_ms: 0,
                fail_next: 0,
            },
            None,
        );
        assert!(matches!(s.claim("k", "f1"), Claim::Proceed));
        assert!(matches!(s.claim("k", "f1"), Claim::InProgress));
        assert!(matches!(s.claim("k", "f2"), Claim::Mismatch));
        s.complete("k", 200, json!({"ok": true}));
        assert!(matches!(
            s.claim("k", "f1"),
            Claim::Replay { status: 200, .. }
        ));
        assert!(matches!(s.claim("k", "f2"), Claim::Mismatch));
        // Releasing a finished key does nothing; releasing an unfinished one forgets it.
        s.release("k");
        assert!(matches!(s.claim("k", "f1"), Claim::Replay { .. }));
        assert!(matches!(s.claim("j", "f1"), Claim::Proceed));
        s.release("j");
        assert!(matches!(s.claim("j", "f1"), Claim::Proceed));
    }
}
