//! Payment use cases: one payment per checkout attempt charged with a deterministic gateway
//! idempotency key, the ledger, refunds (two-phase: reserve + record intent, then call the
//! gateway with the same key until it answers), gateway webhooks, and views.
//!
//! No network I/O happens inside a transaction: intents are committed first, the gateway is
//! called, then the outcome is recorded.

use super::model::{Entry, Payment, PaymentId, PaymentStatus, Refund};
use super::store::{NewPayment, PaymentRow, PaymentStore, RefundRow};
use crate::gateway::{
    ChargeOutcome, ChargeRequest, GatewayError, GatewayEvent, PaymentGateway, RefundOutcome,
    RefundRequest,
};
use mercato_events::payments::{
    PaymentCaptured, PaymentChargeback, PaymentDeclined, PaymentPendingVerification,
};
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::db::{StoreError, StoreResult, Tx};
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::jobs::Outcome;
use mercato_kernel::outbox::{self, NewEvent};
use mercato_kernel::{Kernel, Money, Timestamp};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Attempts before a refund the gateway keeps failing to answer is given up (then visible as
/// `refund_failed` in the ledger and retryable by an admin).
const REFUND_MAX_ATTEMPTS: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("not found")]
    NotFound,
    #[error("refund exceeds capture")]
    ExceedsCapture { remaining: i64 },
    #[error("{0}")]
    Invalid(ApiError),
    #[error("invalid signature")]
    BadSignature,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for PaymentError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => PaymentError::NotFound,
            other => PaymentError::Unexpected(other.into()),
        }
    }
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> ApiError {
        match e {
            PaymentError::NotFound => ApiError::not_found(),
            PaymentError::ExceedsCapture { remaining } => ApiError::new(Code::RefundExceedsCapture)
                .detail(format!("at most {remaining} can still be refunded"))
                .with("refundable", remaining),
            PaymentError::Invalid(e) => e,
            PaymentError::BadSignature => ApiError::new(Code::InvalidSignature),
            PaymentError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// What the gateway knows about a payment whose outcome we did not learn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Captured {
        charge_id: String,
        amount: i64,
    },
    Declined {
        code: String,
    },
    /// The gateway has no charge for this reference.
    Absent,
}

#[derive(Clone)]
pub struct PaymentService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: PaymentStore,
    gateway: Arc<dyn PaymentGateway>,
    webhook_secret: String,
    /// Cards behind (customer, token): they never change, so each is asked once per process.
    cards: std::sync::Mutex<HashMap<(String, String), Option<crate::gateway::CardDetails>>>,
}

impl PaymentService {
    pub fn new(
        kernel: Kernel,
        gateway: Arc<dyn PaymentGateway>,
        webhook_secret: String,
    ) -> PaymentService {
        PaymentService {
            inner: Arc::new(Inner {
                store: PaymentStore::new(kernel.db.clone()),
                kernel,
                gateway,
                webhook_secret,
                cards: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    pub fn gateway_name(&self) -> String {
        self.inner.gateway.name().to_owned()
    }

    /// The gateway idempotency key of a checkout attempt: the same attempt can never be
    /// charged under another key.
    pub fn idempotency_key(checkout_id: &str, attempt: i64) -> String {
        format!("{checkout_id}:pay:{attempt}")
    }

    /// Records the intent to charge (status `initiated`) in the caller's transaction.
    pub async fn begin_tx(
        &self,
        tx: &mut Tx,
        checkout_id: &str,
        attempt: i64,
        customer_id: &str,
        amount: Money,
        now: Timestamp,
    ) -> StoreResult<PaymentRow> {
        let id = PaymentId::new();
        let key = Self::idempotency_key(checkout_id, attempt);
        let gateway = self.gateway_name();
        PaymentStore::insert_tx(
            tx,
            &NewPayment {
                id: id.as_str(),
                checkout_id,
                attempt,
                customer_id,
                amount,
                gateway: &gateway,
                idempotency_key: &key,
            },
            now,
        )
        .await?;
        PaymentStore::payment_tx(tx, id.as_str())
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The card behind `token` for `customer` (fingerprint and issuing country), as the
    /// gateway reports it; cached in memory, so a returning card costs no call. `Ok(None)` for
    /// a token the gateway does not know.
    pub async fn card(
        &self,
        token: &str,
        customer: &str,
    ) -> Result<Option<crate::gateway::CardDetails>, GatewayError> {
        let key = (customer.to_owned(), token.to_owned());
        if let Some(hit) = self
            .inner
            .cards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let card = self.inner.gateway.card(token, customer).await?;
        let mut cache = self.inner.cards.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a full cache starts over rather than growing without limit.
        if cache.len() >= 100_000 {
            cache.clear();
        }
        cache.insert(key, card.clone());
        Ok(card)
    }

    /// Calls the gateway (outside any transaction). `Err(Unavailable)` means nothing was sent.
    pub async fn charge(&self, p: &PaymentRow, token: &str) -> Result<ChargeOutcome, GatewayError> {
        let started = std::time::Instant::now();
        let r = self
            .inner
            .gateway
            .charge(ChargeRequest {
                amount: p.amount,
                token: token.to_owned(),
                reference: p.idempotency_key.clone(),
                idempotency_key: p.idempotency_key.clone(),
            })
            .await;
        let outcome = match &r {
            Ok(ChargeOutcome::Captured { .. }) => "captured",
            Ok(ChargeOutcome::Declined { .. }) => "declined",
            Ok(ChargeOutcome::Unknown { .. }) => "unknown",
            Err(_) => "unavailable",
        };
        metrics::counter!("payments_charges_total", "outcome" => outcome).increment(1);
        metrics::histogram!("payments_charge_seconds").record(started.elapsed().as_secs_f64());
        r
    }

    /// Records a capture (from `initiated` or `pending_verification`); `order_id` goes into the
    /// event (the caller links the payment to its order). `false` if it was
    /// already recorded.
    pub async fn record_capture_tx(
        tx: &mut Tx,
        p: &PaymentRow,
        charge_id: &str,
        amount: i64,
        order_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let moved = PaymentStore::set_status_tx(
            tx,
            &p.id,
            &[
                PaymentStatus::Initiated,
                PaymentStatus::PendingVerification,
                PaymentStatus::Failed,
            ],
            PaymentStatus::Captured,
            Some(amount),
            Some(charge_id),
            None,
            now,
        )
        .await?;
        if !moved {
            return Ok(false);
        }
        let m = Money::new(amount, p.amount.currency);
        PaymentStore::ledger_tx(
            tx,
            &p.id,
            Entry::Authorized,
            m,
            Some(charge_id),
            json!({}),
            now,
        )
        .await?;
        PaymentStore::ledger_tx(
            tx,
            &p.id,
            Entry::Captured,
            m,
            Some(charge_id),
            json!({}),
            now,
        )
        .await?;
        outbox::append(
            tx,
            now,
            NewEvent::of(&PaymentCaptured {
                payment_id: p.id.clone(),
                checkout_id: p.checkout_id.clone(),
                order_id: order_id.map(str::to_owned),
                customer_id: p.customer_id.clone(),
                amount: m,
                charge_id: charge_id.to_owned(),
            }),
        )
        .await?;
        Ok(true)
    }

    /// Records a decline (or a confirmed non-capture after an unknown outcome).
    pub async fn record_decline_tx(
        tx: &mut Tx,
        p: &PaymentRow,
        code: &str,
        charge_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let to = if p.status == PaymentStatus::PendingVerification {
            PaymentStatus::Failed
        } else {
            PaymentStatus::Declined
        };
        let moved = PaymentStore::set_status_tx(
            tx,
            &p.id,
            &[PaymentStatus::Initiated, PaymentStatus::PendingVerification],
            to,
            None,
            charge_id,
            Some(code),
            now,
        )
        .await?;
        if !moved {
            return Ok(false);
        }
        PaymentStore::ledger_tx(
            tx,
            &p.id,
            Entry::Declined,
            p.amount,
            charge_id,
            json!({"decline_code": code}),
            now,
        )
        .await?;
        outbox::append(
            tx,
            now,
            NewEvent::of(&PaymentDeclined {
                payment_id: p.id.clone(),
                checkout_id: p.checkout_id.clone(),
                customer_id: p.customer_id.clone(),
                amount: p.amount,
                decline_code: code.to_owned(),
            }),
        )
        .await?;
        Ok(true)
    }

    /// Records that the outcome is unknown (gateway timeout): reconciliation will ask.
    pub async fn record_pending_tx(
        tx: &mut Tx,
        p: &PaymentRow,
        reason: &str,
        order_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let moved = PaymentStore::set_status_tx(
            tx,
            &p.id,
            &[PaymentStatus::Initiated],
            PaymentStatus::PendingVerification,
            None,
            None,
            None,
            now,
        )
        .await?;
        if !moved {
            return Ok(false);
        }
        if let Some(o) = order_id {
            PaymentStore::set_order_tx(tx, &p.id, o).await?;
        }
        PaymentStore::ledger_tx(
            tx,
            &p.id,
            Entry::PendingVerification,
            p.amount,
            None,
            json!({"reason": reason}),
            now,
        )
        .await?;
        outbox::append(
            tx,
            now,
            NewEvent::of(&PaymentPendingVerification {
                payment_id: p.id.clone(),
                checkout_id: p.checkout_id.clone(),
                customer_id: p.customer_id.clone(),
                amount: p.amount,
            }),
        )
        .await?;
        Ok(true)
    }

    /// Marks an initiated payment as never sent (the gateway was unreachable).
    pub async fn record_not_sent_tx(
        tx: &mut Tx,
        p: &PaymentRow,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let moved = PaymentStore::set_status_tx(
            tx,
            &p.id,
            &[PaymentStatus::Initiated],
            PaymentStatus::Failed,
            None,
            None,
            Some("gateway_unavailable"),
            now,
        )
        .await?;
        if moved {
            PaymentStore::ledger_tx(
                tx,
                &p.id,
                Entry::Declined,
                p.amount,
                None,
                json!({"decline_code": "gateway_unavailable"}),
                now,
            )
            .await?;
        }
        Ok(moved)
    }

    /// Asks the gateway what happened to a payment (reconciliation, recovery).
    pub async fn resolve(&self, p: &PaymentRow) -> Result<Resolution, GatewayError> {
        let charges = self
            .inner
            .gateway
            .find_by_reference(&p.idempotency_key)
            .await?;
        if let Some(c) = charges.iter().find(|c| c.is_captured()) {
            return Ok(Resolution::Captured {
                charge_id: c.id.clone(),
                amount: c.amount.amount,
            });
        }
        if charges
            .iter()
            .all(|c| c.status == crate::gateway::ChargeStatus::Pending)
            && !charges.is_empty()
        {
            // Not final at the gateway yet: ask again later.
            return Err(GatewayError::Unexpected {
                reason: "the charge is still pending at the gateway".into(),
            });
        }
        if let Some(c) = charges.first() {
            return Ok(Resolution::Declined {
                code: c
                    .failure_code
                    .clone()
                    .unwrap_or_else(|| "card_declined".into()),
            });
        }
        Ok(Resolution::Absent)
    }

    pub async fn payment_row(&self, id: &str) -> Result<PaymentRow, PaymentError> {
        self.inner
            .store
            .payment(id)
            .await?
            .ok_or(PaymentError::NotFound)
    }

    pub async fn payment_by_key(&self, key: &str) -> Result<Option<PaymentRow>, PaymentError> {
        Ok(self.inner.store.by_idempotency_key(key).await?)
    }

    /// Payments waiting for the gateway's truth, oldest first.
    pub async fn pending(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, PaymentError> {
        Ok(self
            .inner
            .store
            .in_status(
                PaymentStatus::PendingVerification,
                self.now().minus(older_than),
                limit,
            )
            .await?)
    }

    /// Payments stuck in `initiated` (a crash between intent and outcome).
    pub async fn stuck_initiated(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, PaymentError> {
        Ok(self
            .inner
            .store
            .in_status(
                PaymentStatus::Initiated,
                self.now().minus(older_than),
                limit,
            )
            .await?)
    }

    /// Payment attempts the customer started in the last hour (fraud velocity signal).
    pub async fn attempts_last_hour(&self, customer_id: &str) -> Result<i64, PaymentError> {
        Ok(self
            .inner
            .store
            .attempts_since(customer_id, self.now().plus_secs(-3600))
            .await?)
    }

    /// Captured payments no order references (reconciliation: never a capture without an
    /// order — such a payment is either turned into its order or refunded).
    pub async fn captured_without_order(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, PaymentError> {
        Ok(self
            .inner
            .store
            .captured_without_order(self.now().minus(older_than), limit)
            .await?)
    }

    /// The payment as `viewer` may see it (its customer or an admin; 404 otherwise).
    pub async fn view(&self, id: &str, viewer: &Principal) -> Result<Payment, PaymentError> {
        let p = self
            .inner
            .store
            .payment(id)
            .await?
            .ok_or(PaymentError::NotFound)?;
        if viewer.role != Role::Admin && viewer.subject != p.customer_id {
            return Err(PaymentError::NotFound);
        }
        let ledger = self.inner.store.ledger(id).await?;
        Ok(PaymentStore::view(p, ledger))
    }

    /// Reserves a refund and records its intent in the caller's transaction (idempotent by
    /// `key`). Call [`PaymentService::process_refund`] after committing.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin_refund_tx(
        tx: &mut Tx,
        payment_id: &str,
        amount: Money,
        reason: &str,
        source: &str,
        source_id: Option<&str>,
        key: &str,
        now: Timestamp,
    ) -> Result<RefundRow, PaymentError> {
        if amount.amount <= 0 {
            return Err(PaymentError::Invalid(ApiError::invalid(
                "amount",
                "amount must be positive",
            )));
        }
        PaymentStore::begin_refund_tx(tx, payment_id, amount, reason, source, source_id, key, now)
            .await?
            .map_err(|remaining| PaymentError::ExceedsCapture { remaining })
    }

    /// Sends a pending refund to the gateway (same idempotency key every time, so at most one
    /// refund happens there) and records the outcome.
    pub async fn process_refund(&self, refund_id: &str) -> Result<RefundRow, PaymentError> {
        let r = self
            .inner
            .store
            .refund(refund_id)
            .await?
            .ok_or(PaymentError::NotFound)?;
        if r.refund.status != "pending" {
            return Ok(r);
        }
        let p = self.payment_row(&r.refund.payment_id).await?;
        let Some(charge_id) = p.gateway_ref.clone() else {
            self.inner
                .store
                .refund_attempt_failed(&r, "no_charge", None, self.now())
                .await?;
            return self.refund_row(refund_id).await;
        };
        let now = self.now();
        let outcome = self
            .inner
            .gateway
            .refund(RefundRequest {
                charge_id,
                amount: r.refund.amount,
                idempotency_key: r.idempotency_key.clone(),
                reference: r.refund.id.clone(),
            })
            .await;
        match outcome {
            Ok(RefundOutcome::Refunded {
                refund_id: gref, ..
            }) => {
                let recorded = self
                    .inner
                    .store
                    .refund_succeeded(&r, &gref, p.order_id.as_deref(), &p.customer_id, self.now())
                    .await?;
                metrics::counter!("payments_refunds_total", "outcome" => "succeeded").increment(1);
                // Orders learn of it from `payment.refunded` (written with the success): a
                // return moves to refunded, a cancellation announces the money.
                let _ = recorded;
            }
            Ok(RefundOutcome::Rejected { code }) => {
                metrics::counter!("payments_refunds_total", "outcome" => "rejected").increment(1);
                self.inner
                    .store
                    .refund_attempt_failed(&r, &code, None, now)
                    .await?;
            }
            Ok(RefundOutcome::Unknown { .. }) | Err(_) => {
                metrics::counter!("payments_refunds_total", "outcome" => "retry").increment(1);
                let attempts = r.attempts + 1;
                let retry = (attempts < REFUND_MAX_ATTEMPTS).then(|| {
                    now.plus(mercato_kernel::resilience::backoff(
                        u32::try_from(attempts).unwrap_or(1),
                        Duration::from_secs(2),
                        Duration::from_secs(600),
                    ))
                });
                self.inner
                    .store
                    .refund_attempt_failed(&r, "gateway_unavailable", retry, now)
                    .await?;
            }
        }
        self.refund_row(refund_id).await
    }

    pub async fn refund_row(&self, id: &str) -> Result<RefundRow, PaymentError> {
        self.inner
            .store
            .refund(id)
            .await?
            .ok_or(PaymentError::NotFound)
    }

    pub async fn refunds_of(&self, payment_id: &str) -> Result<Vec<Refund>, PaymentError> {
        Ok(self
            .inner
            .store
            .refunds_of(payment_id)
            .await?
            .into_iter()
            .map(|r| r.refund)
            .collect())
    }

    /// One round of the refund retry worker.
    pub async fn retry_refunds(&self) -> anyhow::Result<Outcome> {
        let due = self.inner.store.due_refunds(self.now(), 50).await?;
        for r in &due {
            if let Err(e) = self.process_refund(&r.refund.id).await {
                tracing::warn!(refund = %r.refund.id, error = %e, "refund retry failed");
            }
        }
        Ok(if due.len() >= 50 {
            Outcome::Worked
        } else {
            Outcome::Idle
        })
    }

    /// An admin refund: idempotent by the request's Idempotency-Key (required), never above
    /// what was captured.
    pub async fn admin_refund(
        &self,
        actor: &Principal,
        payment_id: &str,
        amount: Money,
        reason: &str,
        request_key: &str,
    ) -> Result<Refund, PaymentError> {
        let p = self.payment_row(payment_id).await?;
        if amount.currency != p.amount.currency {
            return Err(PaymentError::Invalid(
                ApiError::new(Code::CurrencyMismatch).detail("refund in the payment's currency"),
            ));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(PaymentError::Invalid(ApiError::invalid(
                "reason",
                "reason is required (≤ 500 chars)",
            )));
        }
        let now = self.now();
        let key = format!(
            "{payment_id}:admin:{}",
            mercato_kernel::id::hex(&sha2::Sha256::digest(request_key.as_bytes())[..12])
        );
        let mut tx = self
            .inner
            .store
            .db()
            .begin()
            .await
            .map_err(PaymentError::from)?;
        let r = Self::begin_refund_tx(
            &mut tx,
            payment_id,
            amount,
            reason,
            "admin",
            Some(&actor.subject),
            &key,
            now,
        )
        .await?;
        outbox::audit(
            &mut tx,
            now,
            &actor.subject,
            "payment.refund",
            "payment",
            payment_id,
            json!({"amount": amount, "reason": reason}),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(self.process_refund(&r.refund.id).await?.refund)
    }

    /// Handles a signed gateway webhook: verifies it (400 on a bad signature, nothing
    /// changes), ignores replays by event id, records chargebacks. Returns the id of a payment
    /// we were unsure about whose outcome the gateway now reports: the caller settles it
    /// (checkout's saga), so payments never calls back into checkout.
    pub async fn handle_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Option<String>, PaymentError> {
        let now = self.now();
        // Signatures carry the gateway's wall-clock time, so they are checked against the
        // wall clock, not the (possibly test-driven) service clock.
        let wall = mercato_kernel::clock::Clock::now(&mercato_kernel::clock::SystemClock);
        let event: GatewayEvent = crate::gateway::verify_webhook(
            &self.inner.webhook_secret,
            signature,
            body,
            wall,
            crate::gateway::WEBHOOK_TOLERANCE,
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "gateway webhook refused");
            PaymentError::BadSignature
        })?;
        // Decide from a read first: most webhooks are news of a charge this process already
        // settled (the pay request got the answer first) and need no write at all — not even
        // the replay record, since ignoring them twice changes nothing.
        let payment = match self.inner.store.by_gateway_ref(&event.charge.id).await? {
            Some(p) => Some(p),
            None => {
                self.inner
                    .store
                    .by_idempotency_key(&event.charge.reference)
                    .await?
            }
        };
        use crate::gateway::GatewayEventType as T;
        let Some(p) = payment.filter(|p| match &event.event_type {
            T::DisputeCreated => true,
            // News of a payment we are unsure about. One still `initiated` is usually a request
            // in flight that will settle itself; only a stale one (its request died) is settled
            // from here — reconciliation covers the rest.
            T::ChargeSucceeded | T::ChargeFailed => {
                p.status == PaymentStatus::PendingVerification
                    || (p.status == PaymentStatus::Initiated
                        && now.since(p.updated_at)
                            > Duration::from_millis(
                                self.inner
                                    .kernel
                                    .settings
                                    .gateway_timeout_ms
                                    .saturating_mul(2),
                            ))
            }
            _ => false,
        }) else {
            metrics::counter!("payments_webhooks_total", "outcome" => "no_effect").increment(1);
            return Ok(None);
        };
        let mut tx = self
            .inner
            .store
            .db()
            .begin()
            .await
            .map_err(PaymentError::from)?;
        if !PaymentStore::seen_event_tx(&mut tx, &event.id, event.event_type.as_str(), now).await? {
            tx.rollback().await.map_err(StoreError::from)?;
            metrics::counter!("payments_webhooks_total", "outcome" => "replay").increment(1);
            return Ok(None);
        }
        let mut notify = None;
        if event.event_type == T::DisputeCreated {
            let amount = event
                .dispute
                .as_ref()
                .map(|d| d.amount)
                .unwrap_or(event.charge.amount);
            PaymentStore::ledger_tx(
                &mut tx,
                &p.id,
                Entry::Chargeback,
                amount,
                Some(&event.charge.id),
                json!({"event_id": event.id}),
                now,
            )
            .await?;
            outbox::append(
                &mut tx,
                now,
                NewEvent::of(&PaymentChargeback {
                    payment_id: p.id.clone(),
                    order_id: p.order_id.clone(),
                    customer_id: p.customer_id.clone(),
                    amount,
                }),
            )
            .await?;
        } else {
            notify = Some(p.id.clone());
        }
        tx.commit().await.map_err(StoreError::from)?;
        metrics::counter!("payments_webhooks_total", "outcome" => "applied").increment(1);
        Ok(notify)
    }
}

use sha2::Digest as _;
