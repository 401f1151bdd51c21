//! The kernel: building blocks every Mercato system stands on.
//!
//! Nothing here knows about commerce. Modules depend on the kernel, never the reverse; each
//! concern that differs between embedded and scaled-out mode (event bus, rate limits, cache) is a
//! small trait here with an embedded implementation chosen at start-up.
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod gate;
pub mod http;
pub mod id;
pub mod idempotency;
pub mod jobs;
mod kernel_state;
pub mod money;
pub mod outbox;
pub mod pagination;
pub mod ratelimit;
pub mod resilience;
pub mod shutdown;
pub mod streams;
pub mod telemetry;

pub use clock::{Clock, SharedClock, Timestamp};
pub use error::{ApiError, Code};
pub use kernel_state::{Failpoints, Kernel};
pub use money::{Currency, Money};
