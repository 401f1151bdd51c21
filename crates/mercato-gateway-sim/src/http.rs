//! The simulator's HTTP API (see `docs/gateway.md` for the protocol).
//!
//! Order of checks on every `/v1` request: API key (401) → injected failure (500, nothing
//! done) → `Idempotency-Key` present (400) → body valid (400, nothing stored) → idempotency
//! claim (replay / 409 in progress / 400 mismatch) → latency → the work → the answer, held
//! back for the hang of the `tok_timeout*` tokens.
//!
//! The work of an idempotent POST runs in its own task: a client that gives up (times out,
//! disconnects) does not cancel a charge half-way, exactly like a real gateway, and the
//! idempotency record is always completed or released.

use crate::model::{ApiFailure, ConfigPatch, CreateCharge, CreateDispute, CreateRefund, Event};
use crate::state::{Claim, RequestRecord, Store, canonical};
use crate::{Core, now_secs};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn router(core: Arc<Core>) -> Router {
    let api = Router::new()
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/{id}", get(retrieve_charge))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/tokens/{token}", get(retrieve_token))
        .route("/v1/test/disputes", post(create_dispute))
        .route("/v1/test/config", post(set_config).get(get_config))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(core.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .with_state(core)
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        answer(self.status, &self.body, false)
    }
}

fn answer(status: u16, body: &Value, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// API key, request log, failure injection.
async fn authenticate(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let seq = core.lock().log_request(RequestRecord {
        method: req.method().to_string(),
        path: path.clone(),
        idempotency_key: idempotency_key_of(req.headers()),
        status: None,
    });
    let resp = match check_api_key(&core, req.headers()) {
        Err(f) => f.into_response(),
        // Test hooks are never failed on purpose: tests need them to switch failures off.
        Ok(()) if !path.starts_with("/v1/test/") && core.lock().inject_failure() => {
            ApiFailure::new(
                500,
                "api_error",
                "simulated_failure",
                "Injected failure: nothing was done",
            )
            .into_response()
        }
        Ok(()) => next.run(req).await,
    };
    core.lock().answer_request(seq, resp.status().as_u16());
    resp
}

fn check_api_key(core: &Core, headers: &HeaderMap) -> Result<(), ApiFailure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiFailure::new(
            401,
            "invalid_request_error",
            "api_key_missing",
            "You did not provide an API key (Authorization: Bearer <key>)",
        ));
    };
    let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(core.config.api_key.as_str()) {
        return Err(ApiFailure::new(
            401,
            "invalid_request_error",
            "api_key_invalid",
            "Invalid API key provided",
        ));
    }
    Ok(())
}

fn idempotency_key_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn require_idempotency_key(headers: &HeaderMap) -> Result<String, ApiFailure> {
    match idempotency_key_of(headers) {
        Some(k) if !k.is_empty() && k.len() <= 255 => Ok(k),
        Some(_) => Err(ApiFailure::new(
            400,
            "idempotency_error",
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 characters",
        )),
        None => Err(ApiFailure::new(
            400,
            "idempotency_error",
            "idempotency_key_missing",
            "This request requires an Idempotency-Key header",
        )),
    }
}

/// Parses the body twice: as a JSON value (for the idempotency fingerprint) and as `T`.
fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<(Value, T), ApiFailure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiFailure::invalid("invalid_json", format!("Invalid JSON body: {e}")))?;
    let parsed = serde_json::from_value::<T>(value.clone())
        .map_err(|e| ApiFailure::invalid("parameter_invalid", e.to_string()))?;
    Ok((value, parsed))
}

fn param_invalid(param: &str, message: &str) -> ApiFailure {
    ApiFailure::invalid("parameter_invalid", message).with("param", param)
}

fn param_missing(param: &str) -> ApiFailure {
    ApiFailure::invalid(
        "parameter_missing",
        format!("Missing required param: {param}"),
    )
    .with("param", param)
}

fn validate_charge(req: &CreateCharge) -> Result<(), ApiFailure> {
    if req.amount <= 0 {
        return Err(param_invalid(
            "amount",
            "amount must be a positive integer in minor units",
        ));
    }
    let c = req.currency.as_bytes();
    if c.len() != 3 || !c.iter().all(u8::is_ascii_alphabetic) {
        return Err(param_invalid(
            "currency",
            "currency must be a 3-letter ISO 4217 code",
        ));
    }
    if req.source.is_empty() {
        return Err(param_missing("source"));
    }
    if req.source.len() > 255 {
        return Err(param_invalid("source", "source is too long"));
    }
    if req.reference.is_empty() {
        return Err(param_missing("reference"));
    }
    if req.reference.len() > 255 {
        return Err(param_invalid(
            "reference",
            "reference must be at most 255 characters",
        ));
    }
    if req.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(param_invalid("metadata", "metadata must be an object"));
    }
    Ok(())
}

/// The result of an idempotent piece of work, computed under the store lock.
struct Work {
    status: u16,
    body: Value,
    events: Vec<Event>,
    /// Hold the answer back this long (the `tok_timeout*` tokens).
    hang: Option<Duration>,
}

/// Forgets the idempotency claim if the work never completed (a panic), so a retry can run.
struct ReleaseOnDrop {
    core: Arc<Core>,
    key: String,
    armed: bool,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.core.lock().release(&self.key);
        }
    }
}

async fn run_idempotent(
    core: Arc<Core>,
    key: String,
    fingerprint: String,
    work: impl FnOnce(&mut Store, i64) -> Work + Send + 'static,
) -> Response {
    let claim = core.lock().claim(&key, &fingerprint);
    match claim {
        Claim::Mismatch => ApiFailure::new(
            400,
            "idempotency_error",
            "idempotency_key_reused",
            "Keys for idempotent requests can only be used with the same parameters they were first used with",
        )
        .into_response(),
        Claim::InProgress => ApiFailure::new(
            409,
            "idempotency_error",
            "request_in_progress",
            "A request with this Idempotency-Key is still being processed; retry later",
        )
        .into_response(),
        Claim::Replay { status, body } => answer(status, &body, true),
        Claim::Proceed => {
            let task_core = core.clone();
            let task = tokio::spawn(async move {
                let mut guard = ReleaseOnDrop {
                    core: task_core.clone(),
                    key: key.clone(),
                    armed: true,
                };
                let latency = task_core.lock().latency();
                if !latency.is_zero() {
                    let _ = task_core.shutdown.clone().sleep(latency).await;
                }
                let done = {
                    let mut store = task_core.lock();
                    let done = work(&mut store, now_secs());
                    store.complete(&key, done.status, done.body.clone());
                    done
                };
                guard.armed = false;
                for event in &done.events {
                    crate::webhook::dispatch(&task_core, event.clone());
                }
                done
            });
            match task.await {
                Ok(done) => {
                    if let Some(hang) = done.hang {
                        let _ = core.shutdown.clone().sleep(hang).await;
                    }
                    answer(done.status, &done.body, false)
                }
                Err(e) => {
                    tracing::error!(error = %e, "simulator work failed");
                    ApiFailure::new(500, "api_error", "internal", "The simulator failed")
                        .into_response()
                }
            }
        }
    }
}

async fn create_charge(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match require_idempotency_key(&headers) {
        Ok(k) => k,
        Err(f) => return f.into_response(),
    };
    let (value, req) = match parse_body::<CreateCharge>(&body) {
        Ok(v) => v,
        Err(f) => return f.into_response(),
    };
    if let Err(f) = validate_charge(&req) {
        return f.into_response();
    }
    let fingerprint = format!("POST /v1/charges {}", canonical(&value));
    let disputed_later = (req.source == crate::model::FRAUDULENT_TOKEN)
        .then(|| (core.clone(), req.reference.clone()));
    let response = run_idempotent(core, key, fingerprint, move |store, now| {
        let hang = crate::model::TokenBehaviour::of(&req.source)
            .hangs()
            .then(|| store.hang());
        let result = store.create_charge(&req, now);
        let (status, body) = match result.declined {
            None => (200, json!(result.charge)),
            Some(code) => (
                402,
                json!({"error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": code,
                    "charge": result.charge.id,
                    "message": crate::state::decline_message(code),
                }}),
            ),
        };
        Work {
            status,
            body,
            events: vec![result.event],
            hang,
        }
    })
    .await;
    // `tok_fraudulent` approves, and its card's owner disputes the charge soon after (once:
    // a replayed answer does not dispute again).
    if let Some((core, reference)) = disputed_later
        && response.status() == 200
        && !response.headers().contains_key("idempotent-replayed")
    {
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(DISPUTE_AFTER_MS)).await;
            let charge = core
                .lock()
                .charges_by_reference(Some(&reference))
                .into_iter()
                .find(|c| c.captured && !c.disputed);
            if let Some(c) = charge {
                let req = crate::model::CreateDispute {
                    charge: c.id,
                    reason: Some("fraudulent".into()),
                };
                let result = core.lock().create_dispute(&req, now_secs());
                if let Ok((_, event)) = result {
                    crate::webhook::dispatch(&core, event);
                }
            }
        });
    }
    response
}

/// How long after its capture a `tok_fraudulent` charge is disputed, milliseconds.
pub const DISPUTE_AFTER_MS: u64 = 500;

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    customer: Option<String>,
}

/// The card behind a token for a customer (Stripe's token object, reduced to what fraud
/// checks need): `{id, object: "token", card: {fingerprint, country, brand}}`; 404 for a
/// token the simulator does not know.
async fn retrieve_token(
    State(core): State<Arc<Core>>,
    Path(token): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Response {
    core.read_latency().await;
    let customer = q.customer.unwrap_or_default();
    match crate::model::card_of(&token, &customer) {
        Some(card) => answer(
            200,
            &json!({"id": token, "object": "token", "card": card}),
            false,
        ),
        None => ApiFailure::missing(&format!("token: '{token}'"))
            .with("param", "token")
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    reference: Option<String>,
    limit: Option<usize>,
}

async fn list_charges(State(core): State<Arc<Core>>, Query(q): Query<ListQuery>) -> Response {
    core.read_latency().await;
    let limit = q.limit.unwrap_or(100).clamp(1, 100);
    let mut data = core.lock().charges_by_reference(q.reference.as_deref());
    let has_more = data.len() > limit;
    data.truncate(limit);
    answer(
        200,
        &json!({"object": "list", "url": "/v1/charges", "has_more": has_more, "data": data}),
        false,
    )
}

async fn retrieve_charge(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    core.read_latency().await;
    let charge = core.lock().charge(&id).cloned();
    match charge {
        Some(c) => answer(200, &json!(c), false),
        None => ApiFailure::missing(&format!("charge: '{id}'"))
            .with("param", "id")
            .into_response(),
    }
}

async fn create_refund(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match require_idempotency_key(&headers) {
        Ok(k) => k,
        Err(f) => return f.into_response(),
    };
    let (value, req) = match parse_body::<CreateRefund>(&body) {
        Ok(v) => v,
        Err(f) => return f.into_response(),
    };
    if req.charge.is_empty() {
        return param_missing("charge").into_response();
    }
    if req.amount.is_some_and(|a| a <= 0) {
        return param_invalid("amount", "amount must be a positive integer in minor units")
            .into_response();
    }
    let fingerprint = format!("POST /v1/refunds {}", canonical(&value));
    run_idempotent(core, key, fingerprint, move |store, now| {
        match store.create_refund(&req, now) {
            Ok((refund, event)) => Work {
                status: 200,
                body: json!(refund),
                events: vec![event],
                hang: None,
            },
            Err(f) => Work {
                status: f.status,
                body: f.body,
                events: Vec::new(),
                hang: None,
            },
        }
    })
    .await
}

async fn create_dispute(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let req = match parse_body::<CreateDispute>(&body) {
        Ok((_, r)) => r,
        Err(f) => return f.into_response(),
    };
    let result = core.lock().create_dispute(&req, now_secs());
    match result {
        Ok((dispute, event)) => {
            crate::webhook::dispatch(&core, event);
            answer(200, &json!(dispute), false)
        }
        Err(f) => f.into_response(),
    }
}

async fn set_config(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let patch = match parse_body::<ConfigPatch>(&body) {
        Ok((_, p)) => p,
        Err(f) => return f.into_response(),
    };
    if let Err(f) = core.apply(&patch) {
        return f.into_response();
    }
    get_config(State(core)).await
}

async fn get_config(State(core): State<Arc<Core>>) -> Response {
    let knobs = core.lock().knobs.clone();
    answer(200, &json!(knobs), false)
}

async fn unknown_route(req: Request) -> Response {
    ApiFailure::new(
        404,
        "invalid_request_error",
        "unrecognized_request_url",
        format!(
            "Unrecognized request URL ({} {})",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}
