//! [`HttpGateway`]: the [`PaymentGateway`] adapter for the Stripe-shaped HTTP protocol.
//!
//! Retry policy (the trade-off: a slower failure rather than a double charge or a lost one):
//! - charges and refunds are retried only with their own idempotency key, and only after an
//!   attempt that certainly did nothing (the connection could not be made) or an answer that
//!   says "try again" (5xx, 429, 409 `request_in_progress`); up to `max_attempts` attempts with
//!   the kernel's exponential backoff with jitter;
//! - an attempt that was sent and then timed out or lost its connection ends the call at once
//!   with `Unknown` — retrying it would be safe with the same key, but the caller has to mark
//!   the payment `pending_verification` anyway, and reconciliation will find out;
//! - reads are retried after any transport failure, 5xx or 429.
//!
//! Every attempt is bounded by `timeout`. The circuit breaker counts transport failures,
//! timeouts and 5xx answers; any other answer (a decline included) is a healthy gateway.

use super::wire::{WireCharge, WireErrorBody, WireList, WireRefund, money};
use super::{
    Charge, ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundOutcome,
    RefundRequest,
};
use mercato_kernel::resilience::{BreakerState, CircuitBreaker, backoff};
use reqwest::Url;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How [`HttpGateway`] talks to the gateway.
#[derive(Clone)]
pub struct HttpGatewayConfig {
    /// e.g. `http://127.0.0.1:8090` (the API is under `/v1`).
    pub base_url: String,
    /// Sent as `Authorization: Bearer <api_key>`.
    pub api_key: String,
    /// Bound on each attempt (connect + send + answer).
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Base and cap of the backoff between attempts.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Consecutive failures that open the breaker, and how long it stays open.
    pub breaker_threshold: u32,
    pub breaker_cool_down: Duration,
    /// [`PaymentGateway::name`].
    pub name: String,
}

impl std::fmt::Debug for HttpGatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the API key.
        f.debug_struct("HttpGatewayConfig")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl HttpGatewayConfig {
    /// Defaults: 3 s timeout, 3 attempts with 100 ms..2 s backoff, breaker opens after 5
    /// consecutive failures for 10 s.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> HttpGatewayConfig {
        HttpGatewayConfig {
            base_url: base_url.into(),
            api_key: api_key.into(),
            timeout: Duration::from_secs(3),
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(10),
            name: "http".into(),
        }
    }
}

/// The HTTP adapter. Cheap to share (`Arc<dyn PaymentGateway>`); holds one connection pool.
pub struct HttpGateway {
    http: reqwest::Client,
    base: Url,
    config: HttpGatewayConfig,
    breaker: CircuitBreaker,
}

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGateway")
            .field("base_url", &self.config.base_url)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// One attempt's fate.
enum Attempt {
    Answered {
        status: u16,
        body: Vec<u8>,
    },
    /// The request never reached the gateway: safe to send again.
    NotSent(String),
    /// Sent, no complete answer: the gateway may have executed it.
    Lost(String),
    /// The circuit breaker is open.
    Blocked,
}

/// Where an idempotent POST ended.
enum Posted {
    /// A final answer.
    Answered { status: u16, body: Vec<u8> },
    /// Certainly not executed.
    NotExecuted(String),
    /// Maybe executed.
    Unknown(String),
}

impl HttpGateway {
    pub fn new(config: HttpGatewayConfig) -> Result<HttpGateway, GatewayError> {
        let base = Url::parse(&config.base_url).map_err(|e| GatewayError::Unavailable {
            reason: format!("invalid gateway URL {:?}: {e}", config.base_url),
        })?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(2)))
            .user_agent(concat!("mercato/", env!("CARGO_PKG_VERSION")));
        if matches!(
            base.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        ) {
            // The in-process simulator: an ambient HTTP proxy must not sit in between.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| GatewayError::Unavailable {
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(HttpGateway {
            http,
            base,
            breaker: CircuitBreaker::new(config.breaker_threshold, config.breaker_cool_down),
            config,
        })
    }

    /// The breaker's state (for readiness checks and tests).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    fn url(&self, segments: &[&str]) -> Result<Url, GatewayError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| GatewayError::Unavailable {
                reason: format!("gateway URL {} cannot have a path", self.base),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn attempt(&self, request: reqwest::RequestBuilder) -> Attempt {
        if !self.breaker.allow() {
            return Attempt::Blocked;
        }
        let resp = match request.bearer_auth(&self.config.api_key).send().await {
            Ok(r) => r,
            Err(e) => {
                self.breaker.record_failure();
                // A connect error (refused, unreachable, connect timeout) means no byte of the
                // request reached the gateway; anything else may have.
                return if e.is_connect() {
                    Attempt::NotSent(error_text(&e))
                } else {
                    Attempt::Lost(error_text(&e))
                };
            }
        };
        let status = resp.status().as_u16();
        match resp.bytes().await {
            Ok(body) => {
                if status >= 500 {
                    self.breaker.record_failure();
                } else {
                    self.breaker.record_success();
                }
                Attempt::Answered {
                    status,
                    body: body.to_vec(),
                }
            }
            Err(e) => {
                self.breaker.record_failure();
                Attempt::Lost(error_text(&e))
            }
        }
    }

    /// POSTs `body` with `key`, retrying only what is safe (see the module docs).
    async fn post_idempotent(
        &self,
        operation: &'static str,
        path: &[&str],
        key: &str,
        body: &Value,
    ) -> Posted {
        let url = match self.url(path) {
            Ok(u) => u,
            Err(e) => return Posted::NotExecuted(e.to_string()),
        };
        let max = self.config.max_attempts.max(1);
        // Whether some attempt may have been executed (a 5xx or an in-progress answer).
        let mut maybe_executed = false;
        let mut last = String::new();
        for attempt in 1..=max {
            let request = self
                .http
                .post(url.clone())
                .header("Idempotency-Key", key)
                .json(body);
            match self.attempt(request).await {
                Attempt::Blocked => {
                    last = "circuit breaker open".into();
                    break;
                }
                Attempt::NotSent(e) => last = format!("not sent: {e}"),
                Attempt::Lost(e) => {
                    return Posted::Unknown(format!("no answer after sending: {e}"));
                }
                Attempt::Answered { status, body } => {
                    let err = || WireErrorBody::parse(&body);
                    let retry = status >= 500
                        || status == 429
                        || (status == 409 && err().code.as_deref() == Some("request_in_progress"));
                    if !retry {
                        return Posted::Answered { status, body };
                    }
                    // A 429 is refused before execution; a 5xx may hide a half-done request,
                    // and a 409 means the first request with this key is still running.
                    if status != 429 {
                        maybe_executed = true;
                    }
                    last = format!("{status} {}", err().code.unwrap_or_default());
                }
            }
            if attempt < max {
                metrics::counter!("gateway_retries_total", "operation" => operation).increment(1);
                let delay = backoff(attempt, self.config.retry_base, self.config.retry_max);
                tracing::warn!(operation, attempt, reason = %last, ?delay, "retrying the gateway call with the same idempotency key");
                tokio::time::sleep(delay).await;
            }
        }
        if maybe_executed {
            Posted::Unknown(format!("gave up after retries: {last}"))
        } else {
            Posted::NotExecuted(last)
        }
    }

    /// GETs `url`, retrying transport failures, 5xx and 429; returns the final answer.
    async fn get(&self, operation: &'static str, url: Url) -> Result<(u16, Vec<u8>), GatewayError> {
        let max = self.config.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=max {
            match self.attempt(self.http.get(url.clone())).await {
                Attempt::Blocked => {
                    last = "circuit breaker open".into();
                    break;
                }
                Attempt::NotSent(e) | Attempt::Lost(e) => last = e,
                Attempt::Answered { status, body } if status >= 500 || status == 429 => {
                    last = format!(
                        "{status} {}",
                        WireErrorBody::parse(&body).code.unwrap_or_default()
                    );
                }
                Attempt::Answered { status, body } => return Ok((status, body)),
            }
            if attempt < max {
                metrics::counter!("gateway_retries_total", "operation" => operation).increment(1);
                tokio::time::sleep(backoff(
                    attempt,
                    self.config.retry_base,
                    self.config.retry_max,
                ))
                .await;
            }
        }
        Err(GatewayError::Unavailable { reason: last })
    }

    async fn do_charge(&self, req: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let body = json!({
            "amount": req.amount.amount,
            "currency": req.amount.currency.as_str().to_ascii_lowercase(),
            "source": req.token,
            "reference": req.reference,
        });
        let (status, body) = match self
            .post_idempotent("charge", &["v1", "charges"], &req.idempotency_key, &body)
            .await
        {
            Posted::NotExecuted(reason) => return Err(GatewayError::Unavailable { reason }),
            Posted::Unknown(reason) => return Ok(ChargeOutcome::Unknown { reason }),
            Posted::Answered { status, body } => (status, body),
        };
        match status {
            200..=299 => {
                let charge = serde_json::from_slice::<WireCharge>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(Charge::try_from);
                Ok(match charge {
                    Ok(c) if c.is_captured() => ChargeOutcome::Captured {
                        charge_id: c.id,
                        amount: c.amount,
                    },
                    Ok(c) if c.status == super::ChargeStatus::Failed => ChargeOutcome::Declined {
                        decline_code: c.failure_code.unwrap_or_else(|| "card_declined".into()),
                        charge_id: Some(c.id),
                    },
                    Ok(c) => ChargeOutcome::Unknown {
                        reason: format!("charge {} is {:?}", c.id, c.status),
                    },
                    Err(e) => ChargeOutcome::Unknown {
                        reason: format!("unreadable charge in a {status} answer: {e}"),
                    },
                })
            }
            402 => {
                let e = WireErrorBody::parse(&body);
                Ok(ChargeOutcome::Declined {
                    charge_id: e.charge,
                    decline_code: e
                        .decline_code
                        .or(e.code)
                        .unwrap_or_else(|| "card_declined".into()),
                })
            }
            _ => {
                let e = WireErrorBody::parse(&body);
                if e.kind == "idempotency_error" || status == 409 {
                    // Our key already names another request (or a conflicting one): whatever
                    // that request did is unknown from here.
                    return Ok(ChargeOutcome::Unknown {
                        reason: format!(
                            "{status} {}: {}",
                            e.code.unwrap_or_default(),
                            e.message.unwrap_or_default()
                        ),
                    });
                }
                if (400..500).contains(&status) {
                    return Err(rejected(status, e));
                }
                Ok(ChargeOutcome::Unknown {
                    reason: format!("unexpected status {status}"),
                })
            }
        }
    }

    async fn do_refund(&self, req: &RefundRequest) -> Result<RefundOutcome, GatewayError> {
        let body = json!({
            "charge": req.charge_id,
            "amount": req.amount.amount,
            "reference": req.reference,
        });
        let (status, body) = match self
            .post_idempotent("refund", &["v1", "refunds"], &req.idempotency_key, &body)
            .await
        {
            Posted::NotExecuted(reason) => return Err(GatewayError::Unavailable { reason }),
            Posted::Unknown(reason) => return Ok(RefundOutcome::Unknown { reason }),
            Posted::Answered { status, body } => (status, body),
        };
        match status {
            200..=299 => Ok(match serde_json::from_slice::<WireRefund>(&body) {
                Ok(r) => match money(
                    r.amount,
                    r.currency
                        .as_deref()
                        .unwrap_or(req.amount.currency.as_str()),
                ) {
                    Ok(amount) => RefundOutcome::Refunded {
                        refund_id: r.id,
                        amount,
                    },
                    Err(e) => RefundOutcome::Unknown { reason: e },
                },
                Err(e) => RefundOutcome::Unknown {
                    reason: format!("unreadable refund in a {status} answer: {e}"),
                },
            }),
            401 | 403 => Err(rejected(status, WireErrorBody::parse(&body))),
            400..=499 => {
                let e = WireErrorBody::parse(&body);
                if e.kind == "idempotency_error" || status == 409 {
                    return Ok(RefundOutcome::Unknown {
                        reason: format!(
                            "{status} {}: {}",
                            e.code.unwrap_or_default(),
                            e.message.unwrap_or_default()
                        ),
                    });
                }
                Ok(RefundOutcome::Rejected {
                    code: e.code.unwrap_or_else(|| format!("http_{status}")),
                })
            }
            _ => Ok(RefundOutcome::Unknown {
                reason: format!("unexpected status {status}"),
            }),
        }
    }

    async fn do_retrieve(&self, charge_id: &str) -> Result<Option<Charge>, GatewayError> {
        let url = self.url(&["v1", "charges", charge_id])?;
        let (status, body) = self.get("retrieve", url).await?;
        match status {
            200 => serde_json::from_slice::<WireCharge>(&body)
                .map_err(|e| e.to_string())
                .and_then(Charge::try_from)
                .map(Some)
                .map_err(|reason| GatewayError::Unexpected { reason }),
            404 => Ok(None),
            _ => Err(rejected(status, WireErrorBody::parse(&body))),
        }
    }

    async fn do_card(
        &self,
        token: &str,
        customer: &str,
    ) -> Result<Option<super::CardDetails>, GatewayError> {
        #[derive(serde::Deserialize)]
        struct WireToken {
            card: super::CardDetails,
        }
        let mut url = self.url(&["v1", "tokens", token])?;
        url.query_pairs_mut().append_pair("customer", customer);
        let (status, body) = self.get("card", url).await?;
        match status {
            200 => serde_json::from_slice::<WireToken>(&body)
                .map(|t| Some(t.card))
                .map_err(|e| GatewayError::Unexpected {
                    reason: e.to_string(),
                }),
            404 => Ok(None),
            _ => Err(rejected(status, WireErrorBody::parse(&body))),
        }
    }

    async fn do_find(&self, reference: &str) -> Result<Vec<Charge>, GatewayError> {
        let mut url = self.url(&["v1", "charges"])?;
        url.query_pairs_mut()
            .append_pair("reference", reference)
            .append_pair("limit", "100");
        let (status, body) = self.get("find_by_reference", url).await?;
        if status != 200 {
            return Err(rejected(status, WireErrorBody::parse(&body)));
        }
        let list =
            serde_json::from_slice::<WireList>(&body).map_err(|e| GatewayError::Unexpected {
                reason: e.to_string(),
            })?;
        list.data
            .into_iter()
            .map(Charge::try_from)
            .collect::<Result<Vec<_>, String>>()
            .map_err(|reason| GatewayError::Unexpected { reason })
    }
}

fn rejected(status: u16, e: super::wire::WireError) -> GatewayError {
    GatewayError::Rejected {
        status,
        code: e.code.unwrap_or_else(|| format!("http_{status}")),
        message: e.message.unwrap_or_default(),
    }
}

/// The error with its causes (reqwest's top-level message hides "connection refused").
fn error_text(e: &reqwest::Error) -> String {
    mercato_kernel::telemetry::ErrorChain(e).to_string()
}

/// Records the call's outcome and duration.
fn observe(operation: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!("gateway_calls_total", "operation" => operation, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("gateway_call_duration_seconds", "operation" => operation, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

fn error_outcome(e: &GatewayError) -> &'static str {
    match e {
        GatewayError::Unavailable { .. } => "unavailable",
        GatewayError::Rejected { .. } => "rejected",
        GatewayError::Unexpected { .. } => "unexpected",
    }
}

#[async_trait::async_trait]
impl PaymentGateway for HttpGateway {
    fn name(&self) -> &str {
        &self.config.name
    }

    #[tracing::instrument(name = "gateway.charge", skip_all, fields(reference = %request.reference, amount = request.amount.amount))]
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let started = Instant::now();
        let result = self.do_charge(&request).await;
        let outcome = match &result {
            Ok(ChargeOutcome::Captured { .. }) => "captured",
            Ok(ChargeOutcome::Declined { .. }) => "declined",
            Ok(ChargeOutcome::Unknown { reason }) => {
                tracing::warn!(%reason, "charge outcome unknown");
                "unknown"
            }
            Err(e) => {
                tracing::warn!(error = %e, "charge not executed");
                error_outcome(e)
            }
        };
        observe("charge", outcome, started);
        result
    }

    #[tracing::instrument(name = "gateway.retrieve", skip_all, fields(charge_id = %charge_id))]
    async fn retrieve(&self, charge_id: &str) -> Result<Option<Charge>, GatewayError> {
        let started = Instant::now();
        let result = self.do_retrieve(charge_id).await;
        let outcome = match &result {
            Ok(Some(_)) => "found",
            Ok(None) => "not_found",
            Err(e) => error_outcome(e),
        };
        observe("retrieve", outcome, started);
        result
    }

    #[tracing::instrument(name = "gateway.find_by_reference", skip_all, fields(reference = %reference))]
    async fn find_by_reference(&self, reference: &str) -> Result<Vec<Charge>, GatewayError> {
        let started = Instant::now();
        let result = self.do_find(reference).await;
        let outcome = match &result {
            Ok(v) if v.is_empty() => "not_found",
            Ok(_) => "found",
            Err(e) => error_outcome(e),
        };
        observe("find_by_reference", outcome, started);
        result
    }

    #[tracing::instrument(name = "gateway.card", skip_all)]
    async fn card(
        &self,
        token: &str,
        customer: &str,
    ) -> Result<Option<super::CardDetails>, GatewayError> {
        let started = Instant::now();
        let result = self.do_card(token, customer).await;
        let outcome = match &result {
            Ok(Some(_)) => "found",
            Ok(None) => "not_found",
            Err(e) => error_outcome(e),
        };
        observe("card", outcome, started);
        result
    }

    #[tracing::instrument(name = "gateway.refund", skip_all, fields(charge_id = %request.charge_id, amount = request.amount.amount))]
    async fn refund(&self, request: RefundRequest) -> Result<RefundOutcome, GatewayError> {
        let started = Instant::now();
        let result = self.do_refund(&request).await;
        let outcome = match &result {
            Ok(RefundOutcome::Refunded { .. }) => "refunded",
            Ok(RefundOutcome::Rejected { .. }) => "rejected",
            Ok(RefundOutcome::Unknown { reason }) => {
                tracing::warn!(%reason, "refund outcome unknown");
                "unknown"
            }
            Err(e) => {
                tracing::warn!(error = %e, "refund not executed");
                error_outcome(e)
            }
        };
        observe("refund", outcome, started);
        result
    }
}
