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
    /// Sheds reservations of sold-out hot SKUs (see [`crate::gate`]).
    pub stock_gate: Arc<dyn crate::gate::StockGate>,
    /// Caps on open SSE streams per user and per IP (see [`crate::streams`]).
    pub streams: Arc<crate::streams::StreamLimits>,
    pub failpoints: Failpoints,
}

/// Named fault-injection points that tests switch on to simulate a crash between steps
/// (e.g. `checkout.after_charge`). Always off in production: nothing but code enables them.
#[derive(Clone, Default, Debug)]
pub struct Failpoints(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Failpoints {
    pub fn enable(&self, name: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(name.to_owned());
        }
    }
    pub fn disable(&self, name: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(name);
        }
    }
    pub fn is_on(&self, name: &str) -> bool {
        self.0.lock().map(|s| s.contains(name)).unwrap_or(false)
    }
}
