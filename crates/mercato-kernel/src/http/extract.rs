use crate::error::{ApiError, Code, FieldError};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes_compat::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

mod bytes_compat {
    pub use axum::body::Bytes;
}

/// JSON body extractor whose failures are problem+json: 415 without a JSON content type,
/// 413 over the body limit, 400 for malformed JSON, 422 (with the field path) for JSON that
/// does not fit the expected shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let ct = ct.to_ascii_lowercase();
                let essence = ct.split(';').next().unwrap_or("").trim().to_owned();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(Code::UnsupportedMediaType)
                .detail("send the body as JSON with Content-Type: application/json"));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Reads the whole body within the configured limit (413 above it).
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(Code::PayloadTooLarge)
            } else {
                ApiError::new(Code::BadRequest).detail("the request body could not be read")
            }
        })
}

/// Parses a JSON body with the same error mapping as [`ApiJson`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body is an object; serde would also fill a struct from an array of its
    // fields in order (`[null, null]`), which no schema here allows.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let message = "the body must be a JSON object".to_owned();
        let mut e = ApiError::new(Code::ValidationFailed).detail(message.clone());
        e.errors.push(FieldError {
            field: String::new(),
            message,
        });
        return Err(e);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            use serde_json::error::Category;
            match inner.classify() {
                Category::Data => {
                    // JSON has one number type: `2.0` is the integer 2 to JSON Schema and to
                    // the OpenAPI document's readers, so it is read as one (on this error path
                    // only, so well-formed requests pay nothing).
                    if inner
                        .to_string()
                        .starts_with("invalid type: floating point")
                        && let Some(fixed) = whole_floats_as_integers(bytes)
                    {
                        return parse_json(&fixed);
                    }
                    let field = if path == "." { String::new() } else { path };
                    let message = strip_position(&inner.to_string());
                    let mut e = ApiError::new(Code::ValidationFailed).detail(if field.is_empty() {
                        message.clone()
                    } else {
                        format!("{field}: {message}")
                    });
                    e.errors.push(FieldError { field, message });
                    Err(e)
                }
                Category::Syntax | Category::Eof | Category::Io => {
                    Err(ApiError::new(Code::MalformedJson).detail(inner.to_string()))
                }
            }
        }
    }
}

/// The body with every whole float within ±2^53 (`2.0`, `-1e3`) written as an integer; `None`
/// when there is none (or the body is not JSON).
fn whole_floats_as_integers(bytes: &[u8]) -> Option<Vec<u8>> {
    fn walk(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                    *v = serde_json::Value::from(f as i64);
                    true
                } else {
                    false
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().fold(false, |c, i| walk(i) | c),
            serde_json::Value::Object(map) => map.values_mut().fold(false, |c, i| walk(i) | c),
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    walk(&mut value).then(|| serde_json::to_vec(&value).ok())?
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Query-string extractor answering 400 `invalid_query` with the reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                let text = e.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                ApiError::new(Code::InvalidQuery).detail(text)
            })
    }
}

/// Parses a path id with the expected prefix; anything else is a 404 (nothing with that id
/// can exist), which also avoids touching the database for garbage.
pub fn parse_id<T>(raw: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, ApiError> {
    parse(raw).ok_or_else(ApiError::not_found)
}

/// A 201 Created with a JSON body.
pub struct Created<T>(pub T);

pub fn created<T: Serialize>(v: T) -> Created<T> {
    Created(v)
}

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        (StatusCode::CREATED, axum::Json(self.0)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for super::ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<super::ClientIp>()
            .copied()
            .unwrap_or(super::ClientIp(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            ))))
    }
}

/// Like [`ApiJson`], but an empty body is `None` (endpoints whose body is optional).
#[derive(Debug, Clone, Default)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|n| n > 0);
        if !has_body {
            return Ok(OptionalJson(None));
        }
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let (parts, body) = req.into_parts();
        let bytes = read_body(Request::from_parts(parts.clone(), body), state).await?;
        // No body, a blank one or JSON `null` all mean "nothing sent".
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
            return Ok(OptionalJson(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        if !has_type {
            return Err(ApiError::new(Code::UnsupportedMediaType)
                .detail("send the body as JSON with Content-Type: application/json"));
        }
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|ApiJson(v)| OptionalJson(Some(v)))
    }
}

/// A JSON body read (415 without a JSON content type, 413 above the limit) but not yet parsed:
/// handlers whose authorization needs the database (ownership) check it first and then call
/// [`DeferredJson::parse`], so a caller who may not act never learns what the body should be.
#[derive(Debug, Clone)]
pub struct DeferredJson<T> {
    bytes: Bytes,
    is_json: bool,
    _t: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> DeferredJson<T> {
    /// Parses the body with [`ApiJson`]'s error mapping (415 without a JSON content type, 400
    /// malformed, 422 with the field).
    pub fn parse(self) -> Result<T, ApiError> {
        if !self.is_json {
            return Err(ApiError::new(Code::UnsupportedMediaType)
                .detail("send the body as JSON with Content-Type: application/json"));
        }
        parse_json(&self.bytes)
    }
}

impl<T, S> FromRequest<S> for DeferredJson<T>
where
    T: Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let ct = ct.to_ascii_lowercase();
                let essence = ct.split(';').next().unwrap_or("").trim().to_owned();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        Ok(DeferredJson {
            bytes: read_body(req, state).await?,
            is_json,
            _t: std::marker::PhantomData,
        })
    }
}
