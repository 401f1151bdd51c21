//! The one error-code registry and the problem+json (RFC 9457) response every handler returns.
//!
//! Every error a client can see has a stable snake_case `code` listed in [`Code`], with its
//! HTTP status and title. 5xx responses never carry internals: the cause chain is logged inside
//! the request span and the body carries only the request id.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

macro_rules! error_codes {
    ($($variant:ident => ($status:literal, $code:literal, $title:literal);)*) => {
        /// Every stable error code the API can answer with.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code { $($variant,)* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }
            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::from_u16($status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),)*
                }
            }
            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title,)* }
            }
        }
    };
}

error_codes! {
    // --- generic (kernel) ---
    BadRequest => (400, "bad_request", "The request could not be understood");
    MalformedJson => (400, "malformed_json", "The request body is not valid JSON");
    InvalidQuery => (400, "invalid_query", "The query string is invalid");
    InvalidCursor => (400, "invalid_cursor", "The pagination cursor is invalid");
    InvalidIdempotencyKey => (400, "invalid_idempotency_key", "The Idempotency-Key header is invalid");
    IdempotencyKeyRequired => (400, "idempotency_key_required", "This request requires an Idempotency-Key header");
    Unauthorized => (401, "unauthorized", "Authentication is required");
    InvalidToken => (401, "invalid_token", "The access token is invalid or expired");
    InvalidCredentials => (401, "invalid_credentials", "The email or password is wrong");
    Forbidden => (403, "forbidden", "You are not allowed to do this");
    AccountSuspended => (403, "account_suspended", "This account is suspended");
    NotFound => (404, "not_found", "The resource does not exist");
    RouteNotFound => (404, "route_not_found", "No such route");
    MethodNotAllowed => (405, "method_not_allowed", "This method is not allowed on this route");
    Conflict => (409, "conflict", "The request conflicts with the current state");
    IdempotencyKeyInUse => (409, "idempotency_key_in_use", "A request with this Idempotency-Key is still in flight");
    PayloadTooLarge => (413, "payload_too_large", "The request body is too large");
    UnsupportedMediaType => (415, "unsupported_media_type", "The request body must be application/json");
    ValidationFailed => (422, "validation_failed", "The request is invalid");
    IdempotencyKeyReused => (422, "idempotency_key_reused", "This Idempotency-Key was used with a different request");
    RateLimited => (429, "rate_limited", "Too many requests");
    TooManyStreams => (429, "too_many_streams", "Too many open streams");
    Internal => (500, "internal_error", "Something went wrong on our side");
    Unavailable => (503, "service_unavailable", "The service is temporarily unavailable");
    Overloaded => (503, "overloaded", "The server is overloaded; retry later");
    Timeout => (503, "request_timeout", "The request took too long; retry later");
    // --- identity ---
    EmailTaken => (409, "email_taken", "An account with this email already exists");
    InvalidTransitionStatus => (409, "status_unchanged", "The account already has this status");
    // --- outbox / admin ---
    NotDeadLetter => (409, "not_dead_letter", "Only dead-lettered deliveries can be redelivered");
    // --- catalog ---
    SkuTaken => (409, "sku_taken", "A variant with this SKU already exists");
    SlugTaken => (409, "slug_taken", "This slug is already taken");
    ReviewExists => (409, "review_exists", "You have already reviewed this product");
    NotPurchased => (403, "purchase_required", "Only customers who received the product can review it");
    // --- carts ---
    CartNotActive => (409, "cart_not_active", "This cart can no longer be changed");
    ProductUnavailable => (409, "product_unavailable", "This product is not for sale");
    InsufficientStock => (409, "insufficient_stock", "Not enough stock");
    CurrencyMismatch => (422, "currency_mismatch", "The item's currency differs from the cart's");
    // --- inventory ---
    BelowReserved => (409, "below_reserved", "On-hand stock cannot go below what is reserved");
    WarehouseCodeTaken => (409, "warehouse_code_taken", "A warehouse with this code already exists");
    // --- checkout, payments, orders ---
    CartEmpty => (409, "cart_empty", "The cart is empty");
    CouponInvalid => (422, "coupon_invalid", "The coupon code is not valid");
    CouponExpired => (422, "coupon_expired", "The coupon is not valid at this time");
    CouponExhausted => (422, "coupon_exhausted", "The coupon has reached its usage limit");
    CouponNotApplicable => (422, "coupon_not_applicable", "The coupon does not apply to this cart");
    CheckoutExpired => (409, "checkout_expired", "The checkout has expired");
    CheckoutNotOpen => (409, "checkout_not_open", "The checkout is not open for payment");
    PaymentInProgress => (409, "payment_in_progress", "A payment attempt for this checkout is still being settled; retry shortly");
    PaymentDeclined => (402, "payment_declined", "The payment was declined");
    PaymentUnavailable => (503, "payment_unavailable", "The payment provider is unavailable; nothing was charged");
    FraudBlocked => (403, "fraud_blocked", "The order was blocked by fraud checks; nothing was charged");
    RefundExceedsCapture => (422, "refund_exceeds_capture", "The refund would exceed what was captured");
    InvalidTransition => (409, "invalid_transition", "The order cannot change to that status");
    InvalidSignature => (400, "invalid_signature", "The webhook signature is missing or invalid");
    ReturnNotAllowed => (409, "return_not_allowed", "This order cannot be returned");
    // --- fraud ---
    OrderUnderReview => (409, "order_under_review", "The order is held for a fraud review; it cannot be fulfilled until approved");
    ReviewDecided => (409, "review_decided", "The fraud review has already been decided the other way");
    ModelTrainingFailed => (422, "model_training_failed", "The fraud model could not be trained; the previous model keeps serving");
    // --- promotions ---
    CodeTaken => (409, "code_taken", "A promotion with this code already exists");
    // --- flash sales ---
    PurchaseTokenRequired => (403, "purchase_token_required", "This SKU is in a live flash sale: it is sold only with a purchase token from the waiting room");
    PurchaseTokenInvalid => (403, "purchase_token_invalid", "The purchase token is not valid for this purchase");
    PurchaseTokenExpired => (403, "purchase_token_expired", "The purchase token has expired");
    // --- notifications ---
    UnknownNotificationType => (422, "unknown_notification_type", "The notification type is not registered");
    TemplateInvalid => (422, "template_invalid", "The template does not compile or render");
    TemplateVersionConflict => (409, "template_version_conflict", "The template changed since the version you edited");
    // --- links ---
    InvalidUrl => (422, "invalid_url", "The URL cannot be shortened");
    LinkGone => (410, "link_gone", "This link has expired");
    InvalidWebhook => (400, "invalid_webhook", "The webhook is from an unknown provider or its signature is invalid");
    // --- merchant webhooks ---
    InvalidWebhookUrl => (422, "invalid_webhook_url", "The webhook URL must be http(s) and resolve to public addresses");
    // --- live streams ---
    Banned => (403, "banned", "You are banned from posting in this stream");
    StreamNotLive => (409, "stream_not_live", "The stream is not live");
    StreamTransition => (409, "stream_transition", "The stream cannot change to that status");
}

/// One failed field of a 422.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `items[0].quantity`.
    pub field: String,
    pub message: String,
}

/// The problem+json document (for the OpenAPI description).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: Option<String>,
    pub code: String,
    pub request_id: Option<String>,
    pub errors: Option<Vec<FieldError>>,
}

/// An error answered to the client as problem+json.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub detail: Option<String>,
    pub extra: Map<String, Value>,
    pub errors: Vec<FieldError>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The internal cause (logged, never sent).
    pub source: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(code: Code) -> ApiError {
        ApiError {
            code,
            detail: None,
            extra: Map::new(),
            errors: Vec::new(),
            headers: Vec::new(),
            source: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> ApiError {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extra member to the problem document (e.g. `sku`, `available`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn header(mut self, name: HeaderName, value: impl ToString) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn retry_after(self, secs: u64) -> ApiError {
        self.header(header::RETRY_AFTER, secs.max(1))
    }

    pub fn field(mut self, field: impl Into<String>, message: impl Into<String>) -> ApiError {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
        self
    }

    pub fn not_found() -> ApiError {
        ApiError::new(Code::NotFound)
    }

    pub fn forbidden() -> ApiError {
        ApiError::new(Code::Forbidden)
    }

    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::new(Code::Conflict).detail(detail)
    }

    /// A single-field 422.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(Code::ValidationFailed)
            .detail(message.clone())
            .field(field, message)
    }

    /// A 500 whose cause is logged and hidden.
    pub fn internal(source: impl Into<anyhow::Error>) -> ApiError {
        let mut e = ApiError::new(Code::Internal);
        e.source = Some(source.into());
        e
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The problem+json body as bytes (for responses stored for idempotent replay inside a
    /// business transaction). The live response is built from the same bytes.
    pub fn to_body(&self) -> Vec<u8> {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            Value::String(format!(
                "https://mercato.dev/problems/{}",
                self.code.as_str()
            )),
        );
        body.insert("title".into(), Value::String(self.code.title().into()));
        body.insert("status".into(), Value::from(self.status().as_u16()));
        if let Some(d) = &self.detail
            && !self.status().is_server_error()
        {
            body.insert("detail".into(), Value::String(d.clone()));
        }
        body.insert("code".into(), Value::String(self.code.as_str().into()));
        if let Some(id) = crate::http::current_request_id() {
            body.insert("request_id".into(), Value::String(id));
        }
        if !self.errors.is_empty() {
            body.insert(
                "errors".into(),
                serde_json::to_value(&self.errors).unwrap_or(Value::Null),
            );
        }
        for (k, v) in &self.extra {
            body.entry(k.clone()).or_insert(v.clone());
        }
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code.as_str())?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if let Some(s) = &self.source {
            write!(f, " ({s:#})")?;
        }
        Ok(())
    }
}

/// An error meaning "a bounded queue is full": answered 503 `overloaded` with `Retry-After`
/// wherever it surfaces through `anyhow`.
#[derive(Debug, thiserror::Error)]
#[error("{0} is overloaded")]
pub struct Overloaded(pub &'static str);

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if e.downcast_ref::<Overloaded>().is_some() {
            let mut err = ApiError::new(Code::Overloaded).retry_after(1);
            err.source = Some(e);
            return err;
        }
        // A store error that means "try again later" surfaces as 503, not 500.
        if let Some(store) = e.downcast_ref::<crate::db::StoreError>()
            && matches!(store, crate::db::StoreError::Unavailable(_))
        {
            let mut err = ApiError::new(Code::Unavailable).retry_after(1);
            err.source = Some(e);
            return err;
        }
        ApiError::internal(e)
    }
}

impl From<crate::db::StoreError> for ApiError {
    fn from(e: crate::db::StoreError) -> Self {
        use crate::db::StoreError;
        match e {
            StoreError::NotFound => ApiError::not_found(),
            // The store's message names tables and constraints: logged, never sent.
            StoreError::Conflict(_) => {
                let mut err = ApiError::conflict("the request conflicts with the current state");
                err.source = Some(e.into());
                err
            }
            StoreError::Unavailable(_) => {
                let mut err = ApiError::new(Code::Unavailable).retry_after(1);
                err.source = Some(e.into());
                err
            }
            StoreError::Other(_) => ApiError::internal(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        crate::db::StoreError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let request_id = crate::http::current_request_id();
        if status.is_server_error() {
            match &self.source {
                Some(source) => tracing::error!(
                    code = self.code.as_str(),
                    error = %crate::telemetry::ErrorChain(source.as_ref()),
                    "request failed"
                ),
                None => {
                    tracing::warn!(code = self.code.as_str(), detail = ?self.detail, "request failed")
                }
            }
        }
        let mut body = Map::new();
        body.insert(
            "type".into(),
            Value::String(format!(
                "https://mercato.dev/problems/{}",
                self.code.as_str()
            )),
        );
        body.insert("title".into(), Value::String(self.code.title().into()));
        body.insert("status".into(), Value::from(status.as_u16()));
        // 5xx details are never sent: they may hold internals.
        let detail = if status.is_server_error() && self.code == Code::Internal {
            None
        } else {
            self.detail
        };
        if let Some(d) = detail {
            body.insert("detail".into(), Value::String(d));
        }
        body.insert("code".into(), Value::String(self.code.as_str().into()));
        if let Some(id) = request_id {
            body.insert("request_id".into(), Value::String(id));
        }
        if !self.errors.is_empty() {
            body.insert(
                "errors".into(),
                serde_json::to_value(&self.errors).unwrap_or(Value::Null),
            );
        }
        for (k, v) in self.extra {
            body.entry(k).or_insert(v);
        }
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let mut resp = (status, bytes).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        if self.code.is_transient() {
            // "Not decided yet, ask again": never stored for replay under an Idempotency-Key.
            resp.extensions_mut().insert(crate::idempotency::Unsettled);
        }
        resp
    }
}

impl Code {
    /// Answers that say nothing happened yet and a retry will learn the outcome; the
    /// idempotency layer stores nothing and leaves the key to the retry.
    pub fn is_transient(self) -> bool {
        matches!(self, Code::PaymentInProgress)
    }
}

/// Collects several field errors into one 422.
#[derive(Default, Debug)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Validator {
        Validator::default()
    }

    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> &mut Self {
        if !ok {
            self.errors.push(FieldError {
                field: field.into(),
                message: message.into(),
            });
        }
        self
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) -> &mut Self {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let detail = self
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut err = ApiError::new(Code::ValidationFailed).detail(detail);
        err.errors = self.errors;
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {}", c.as_str());
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{} is not snake_case",
                c.as_str()
            );
            assert!(c.status().is_client_error() || c.status().is_server_error());
        }
    }
}
