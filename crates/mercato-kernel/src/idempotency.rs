//! Idempotency keys for unsafe requests (API.md "Idempotency").
//!
//! A middleware claims `(principal, key)` in its own short transaction before the handler runs,
//! with a fingerprint of method + path + body and a lease. Then:
//! - same key, same fingerprint, completed → the stored status and body are replayed with
//!   `idempotent-replayed: true`, and nothing runs again;
//! - same key, different fingerprint → 422 `idempotency_key_reused`;
//! - same key while the first request is in flight (in any process sharing the database)
//!   → 409 `idempotency_key_in_use` with `Retry-After`;
//! - a claim whose lease ran out (its process died) can be taken over. The lease is short
//!   (`idempotency_lease_ms`, 5 s) and renewed while the request runs, so after a crash the
//!   key is free again within seconds;
//! - answers that mean "not decided yet, ask again" ([`crate::error::Code::is_transient`])
//!   release the key like 429/503 do.
//!
//! Handlers that can, store their response inside their own business transaction through
//! [`Idempotency::store_in`], so the effect and the stored response commit together; for the
//! others the middleware stores the response right after the handler returns. Responses that
//! mean "nothing happened, try again" (429, 503) release the key instead of being stored.
//! Keys expire after `idempotency_ttl_hours` (24 h) and are deleted by [`cleanup`].

use crate::auth::principal_of;
use crate::clock::{SharedClock, Timestamp};
use crate::db::{Db, StoreResult, Tx};
use crate::error::{ApiError, Code};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::Row as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Shared configuration of the idempotency middleware.
#[derive(Clone)]
pub struct IdempotencyStore {
    pub db: Db,
    pub clock: SharedClock,
    pub ttl: Duration,
    /// How long a claim is protected while its request runs.
    pub lease: Duration,
    pub body_limit: usize,
}

/// Marks a response that must not be stored for replay (it carries a secret shown once, such
/// as a new API key or an access token); the key is released instead.
#[derive(Clone, Copy, Debug)]
pub struct DoNotStore;

/// Marks an answer that is not the request's final outcome yet ("still being settled", 202
/// pending): nothing is stored, and the claim is left for the next retry with the same key to
/// take over at once — that retry is then [`IdempotencyClaim::resumed`].
#[derive(Clone, Copy, Debug)]
pub struct Unsettled;

/// The claim of the request being served, for handlers that store the response themselves.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    scope: String,
    key: String,
    fingerprint: String,
    /// Status stored in the handler's transaction (0 = not stored by the handler).
    stored_status: Arc<AtomicU16>,
    /// This request took over a claim left in flight by an earlier one (its process died, or
    /// it answered [`Unsettled`]): a retry of the same attempt, not a new request.
    pub resumed: bool,
}

/// Extractor: the claim when the request carried an `Idempotency-Key`.
#[derive(Clone, Debug)]
pub struct Idempotency(pub Option<IdempotencyClaim>);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Idempotency(
            parts.extensions.get::<IdempotencyClaim>().cloned(),
        ))
    }
}

impl Idempotency {
    /// 400 `idempotency_key_required` unless the request carried a key.
    pub fn require(&self) -> Result<&IdempotencyClaim, ApiError> {
        self.0.as_ref().ok_or_else(|| {
            ApiError::new(Code::IdempotencyKeyRequired)
                .detail("send an Idempotency-Key header (1-255 visible ASCII characters)")
        })
    }

    /// The key itself (e.g. to derive downstream idempotency keys).
    pub fn key(&self) -> Option<&str> {
        self.0.as_ref().map(|c| c.key.as_str())
    }

    /// Stores the response inside the caller's business transaction, so effect and replayable
    /// response commit together. The caller must then answer exactly `status` + `body`.
    pub async fn store_in(&self, tx: &mut Tx, status: StatusCode, body: &[u8]) -> StoreResult<()> {
        let Some(claim) = &self.0 else {
            return Ok(());
        };
        let content_type = if status.is_client_error() || status.is_server_error() {
            "application/problem+json"
        } else {
            "application/json"
        };
        let headers = serde_json::json!({"content-type": content_type}).to_string();
        sqlx::query(
            "UPDATE idempotency_keys SET state = 'completed', status_code = $1, \
             response_headers = $2, response_body = $3 \
             WHERE scope = $4 AND idem_key = $5 AND fingerprint = $6",
        )
        .bind(i64::from(status.as_u16()))
        .bind(headers)
        .bind(String::from_utf8_lossy(body).into_owned())
        .bind(&claim.scope)
        .bind(&claim.key)
        .bind(&claim.fingerprint)
        .execute(&mut **tx)
        .await?;
        claim.stored_status.store(status.as_u16(), Ordering::SeqCst);
        Ok(())
    }
}

/// Writes the replayable response of a request inside the business transaction that produces
/// it. Services take one (`Option<&ReplayWriter>`) when their HTTP answer is the JSON of the
/// value they create; the handler then answers the returned bytes.
#[derive(Clone, Copy, Debug)]
pub struct ReplayWriter<'a> {
    pub idem: &'a Idempotency,
    pub status: StatusCode,
}

impl ReplayWriter<'_> {
    /// Serializes `value` once, stores it in `tx`, and returns the bytes to answer with.
    pub async fn write<T: serde::Serialize + Sync>(
        &self,
        tx: &mut Tx,
        value: &T,
    ) -> StoreResult<Vec<u8>> {
        let body = json_bytes(value);
        self.idem.store_in(tx, self.status, &body).await?;
        Ok(body)
    }
}

/// JSON response helper for handlers using [`Idempotency::store_in`]: serializes once.
pub fn json_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Builds the response for bytes produced by [`json_bytes`].
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    let content_type = if status.is_client_error() || status.is_server_error() {
        "application/problem+json"
    } else {
        "application/json"
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn valid_key(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (1..=255).contains(&s.len()).then_some(())?;
    s.bytes()
        .all(|b| b.is_ascii_graphic())
        .then(|| s.to_owned())
}

enum Claim {
    Claimed {
        resumed: bool,
    },
    Replay {
        status: u16,
        headers: String,
        body: String,
    },
    InUse {
        retry_after: u64,
    },
    Reused,
}

impl IdempotencyStore {
    async fn claim(&self, scope: &str, key: &str, fingerprint: &str) -> StoreResult<Claim> {
        let now = self.clock.now();
        let locked_until = now.plus(self.lease).as_micros();
        let expires_at = now.plus(self.ttl).as_micros();
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, state, locked_until, \
             created_at, expires_at) VALUES ($1,$2,$3,'in_flight',$4,$5,$6) \
             ON CONFLICT (scope, idem_key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(locked_until)
        .bind(now.as_micros())
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            tx.commit().await?;
            return Ok(Claim::Claimed { resumed: false });
        }
        let row = sqlx::query(&self.db.locking(
            "SELECT fingerprint, state, locked_until, expires_at, status_code, \
             response_headers, response_body FROM idempotency_keys \
             WHERE scope = $1 AND idem_key = $2",
        ))
        .bind(scope)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        let stored_fp: String = row.try_get("fingerprint").map_err(anyhow::Error::from)?;
        let state: String = row.try_get("state").map_err(anyhow::Error::from)?;
        let lease_end: i64 = row.try_get("locked_until").map_err(anyhow::Error::from)?;
        let expiry: i64 = row.try_get("expires_at").map_err(anyhow::Error::from)?;
        let outcome = if expiry <= now.as_micros() {
            // Expired but not yet swept: the key is free again.
            sqlx::query(
                "UPDATE idempotency_keys SET fingerprint = $1, state = 'in_flight', \
                 locked_until = $2, created_at = $3, expires_at = $4, status_code = NULL, \
                 response_headers = NULL, response_body = NULL \
                 WHERE scope = $5 AND idem_key = $6",
            )
            .bind(fingerprint)
            .bind(locked_until)
            .bind(now.as_micros())
            .bind(expires_at)
            .bind(scope)
            .bind(key)
            .execute(&mut *tx)
            .await?;
            Claim::Claimed { resumed: false }
        } else if stored_fp != fingerprint {
            Claim::Reused
        } else if state == "completed" {
            Claim::Replay {
                status: row
                    .try_get::<Option<i64>, _>("status_code")
                    .map_err(anyhow::Error::from)?
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(500),
                headers: row
                    .try_get::<Option<String>, _>("response_headers")
                    .map_err(anyhow::Error::from)?
                    .unwrap_or_default(),
                body: row
                    .try_get::<Option<String>, _>("response_body")
                    .map_err(anyhow::Error::from)?
                    .unwrap_or_default(),
            }
        } else if lease_end > now.as_micros() {
            Claim::InUse {
                retry_after: Timestamp::from_micros(lease_end)
                    .since(now)
                    .as_secs()
                    .clamp(1, 5),
            }
        } else {
            // The first request's process died mid-flight: take the claim over.
            sqlx::query(
                "UPDATE idempotency_keys SET locked_until = $1 \
                 WHERE scope = $2 AND idem_key = $3 AND state = 'in_flight'",
            )
            .bind(locked_until)
            .bind(scope)
            .bind(key)
            .execute(&mut *tx)
            .await?;
            Claim::Claimed { resumed: true }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn complete(
        &self,
        claim: &IdempotencyClaim,
        status: StatusCode,
        headers: &HeaderMap,
        body: &str,
    ) -> StoreResult<()> {
        let mut kept = serde_json::Map::new();
        for name in [header::CONTENT_TYPE, header::LOCATION] {
            if let Some(v) = headers.get(&name).and_then(|v| v.to_str().ok()) {
                kept.insert(name.as_str().to_owned(), v.into());
            }
        }
        self.db
            .execute_write(
                sqlx::query(
                    "UPDATE idempotency_keys SET state = 'completed', status_code = $1, \
             response_headers = $2, response_body = $3 \
             WHERE scope = $4 AND idem_key = $5 AND fingerprint = $6 AND state = 'in_flight'",
                )
                .bind(i64::from(status.as_u16()))
                .bind(serde_json::Value::Object(kept).to_string())
                .bind(body)
                .bind(&claim.scope)
                .bind(&claim.key)
                .bind(&claim.fingerprint),
            )
            .await?;
        Ok(())
    }

    async fn renew(&self, claim: &IdempotencyClaim) -> StoreResult<()> {
        let until = self.clock.now().plus(self.lease).as_micros();
        self.db
            .execute_write(
                sqlx::query(
                    "UPDATE idempotency_keys SET locked_until = $1 WHERE scope = $2 \
                     AND idem_key = $3 AND fingerprint = $4 AND state = 'in_flight'",
                )
                .bind(until)
                .bind(&claim.scope)
                .bind(&claim.key)
                .bind(&claim.fingerprint),
            )
            .await?;
        Ok(())
    }

    /// Leaves the claim in flight with its lease over, for the next retry to take over.
    async fn abandon(&self, claim: &IdempotencyClaim) -> StoreResult<()> {
        self.db
            .execute_write(
                sqlx::query(
                    "UPDATE idempotency_keys SET locked_until = 0 WHERE scope = $1 \
                     AND idem_key = $2 AND fingerprint = $3 AND state = 'in_flight'",
                )
                .bind(&claim.scope)
                .bind(&claim.key)
                .bind(&claim.fingerprint),
            )
            .await?;
        Ok(())
    }

    async fn release(&self, claim: &IdempotencyClaim) -> StoreResult<()> {
        self.db
            .execute_write(
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 \
             AND fingerprint = $3 AND state = 'in_flight'",
                )
                .bind(&claim.scope)
                .bind(&claim.key)
                .bind(&claim.fingerprint),
            )
            .await?;
        Ok(())
    }
}

/// Extends a claim's lease every third of it until dropped (also when the request future is
/// dropped: a client that hangs up, or the timeout layer).
struct Renewer(tokio::task::JoinHandle<()>);

impl Renewer {
    fn start(store: Arc<IdempotencyStore>, claim: IdempotencyClaim) -> Renewer {
        Renewer(tokio::spawn(async move {
            let every = (store.lease / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = store.renew(&claim).await {
                    tracing::warn!(error = %e, "could not renew an idempotency lease");
                }
            }
        }))
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn replay(status: u16, headers: &str, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(headers) {
        for (k, v) in map {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::from_bytes(k.as_bytes()),
                v.as_str().map(HeaderValue::from_str),
            ) {
                resp.headers_mut().insert(name, value);
            }
        }
    }
    resp.headers_mut()
        .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    resp
}

/// The middleware (see the module docs).
pub async fn middleware(store: Arc<IdempotencyStore>, req: Request, next: Next) -> Response {
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(&IDEMPOTENCY_KEY) else {
        return next.run(req).await;
    };
    let Some(key) = valid_key(raw) else {
        return ApiError::new(Code::InvalidIdempotencyKey)
            .detail("Idempotency-Key must be 1-255 visible ASCII characters")
            .into_response();
    };
    let scope = principal_of(req.extensions())
        .map(|p| p.subject.clone())
        .unwrap_or_else(|| "anonymous".to_owned());
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, store.body_limit).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(Code::PayloadTooLarge).into_response(),
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    hasher.update(b"\n");
    hasher.update(&bytes);
    let fingerprint = crate::id::hex(&hasher.finalize());

    let resumed = match store.claim(&scope, &key, &fingerprint).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Claim::Reused) => {
            return ApiError::new(Code::IdempotencyKeyReused)
                .detail("this Idempotency-Key was already used with a different request")
                .into_response();
        }
        Ok(Claim::InUse { retry_after }) => {
            return ApiError::new(Code::IdempotencyKeyInUse)
                .retry_after(retry_after)
                .into_response();
        }
        Ok(Claim::Replay {
            status,
            headers,
            body,
        }) => {
            metrics::counter!("idempotent_replays_total").increment(1);
            return replay(status, &headers, body);
        }
        Ok(Claim::Claimed { resumed }) => resumed,
    };

    let claim = IdempotencyClaim {
        scope,
        key,
        fingerprint,
        stored_status: Arc::new(AtomicU16::new(0)),
        resumed,
    };
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(claim.clone());
    // The lease is short and renewed while the handler runs, so a claim whose process died
    // (kill -9) is free again within one lease, while a slow live request keeps it.
    let _renewer = Renewer::start(store.clone(), claim.clone());
    let resp = next.run(req).await;
    drop(_renewer);
    let status = resp.status();

    if claim.stored_status.load(Ordering::SeqCst) == status.as_u16() {
        return resp; // stored in the handler's own transaction
    }
    if resp.extensions().get::<Unsettled>().is_some() {
        if let Err(e) = store.abandon(&claim).await {
            tracing::warn!(error = %e, "could not hand an idempotency key to its retry");
        }
        return resp;
    }
    // 401: the caller is not who the key's scope says (often "anonymous"), and nothing ran.
    let release = resp.extensions().get::<DoNotStore>().is_some()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::SERVICE_UNAVAILABLE;
    if release {
        if let Err(e) = store.release(&claim).await {
            tracing::warn!(error = %e, "could not release idempotency key");
        }
        return resp;
    }
    let (rparts, rbody) = resp.into_parts();
    let Ok(rbytes) = axum::body::to_bytes(rbody, 8 * 1024 * 1024).await else {
        let _ = store.release(&claim).await;
        return ApiError::new(Code::Internal).into_response();
    };
    match std::str::from_utf8(&rbytes) {
        Ok(text) => {
            if let Err(e) = store.complete(&claim, status, &rparts.headers, text).await {
                tracing::warn!(error = %e, "could not store idempotent response");
            }
        }
        Err(_) => {
            let _ = store.release(&claim).await;
        }
    }
    Response::from_parts(rparts, Body::from(rbytes))
}

/// Deletes expired keys; returns how many.
pub async fn cleanup(db: &Db, now: Timestamp) -> StoreResult<u64> {
    let r = db
        .execute_write(
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < $1").bind(now.as_micros()),
        )
        .await?;
    Ok(r.rows_affected())
}
