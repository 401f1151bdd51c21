//! HTTP building blocks shared by every module: request ids, the middleware stack, JSON and
//! query extractors that answer problem+json, and the 404/405 fallbacks.

pub mod cors;
mod extract;
mod middleware;
pub mod openapi;

pub use extract::{
    ApiJson, ApiQuery, Created, DeferredJson, OptionalJson, created, parse_id, parse_json,
};
pub use middleware::{
    ClientIp, MiddlewareConfig, apply_middleware, apply_thin_middleware, current_request_id,
    method_not_allowed, route_not_found,
};
