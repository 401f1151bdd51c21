//! The kernel's shared handles, carried in every system's app state (`FromRef`).

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::db::Db;
use crate::outbox::EventBus;
use crate::ratelimit::RateLimiter;
use std::sync::Arc;

#[derive(Clone)]
pub struct Kernel {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub clock: SharedClock,
    pub bus: Arc<dyn EventBus>,
    pub rate_limiter: Arc<dyn RateLimiter>,
}
