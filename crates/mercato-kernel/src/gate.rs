//! The hot-SKU gate (DESIGN.md §4): sheds a flash crowd for sold-out stock before it reaches
//! the database.
//!
//! The database stays the arbiter: a reservation is always the conditional UPDATE. The gate
//! only remembers that reservations of a SKU keep failing for lack of stock and, once they do
//! often enough in a short window (the SKU is *hot*), answers "sold out" from memory for a
//! short while. Anything that makes stock available again (a release, a restock, an
//! adjustment) reopens the SKU at once on this node; the closing also expires on its own, which
//! bounds how long a node can miss another node's release. A false "sold out" is therefore
//! short-lived, and a false "available" costs only the database round trip it always cost.
//! A Redis implementation (shared by nodes) comes with the scale-out work behind the same trait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shared knowledge of sold-out hot SKUs.
pub trait StockGate: Send + Sync + 'static {
    /// Whether reservations of `sku` should be refused without asking the database.
    fn sold_out(&self, sku: &str) -> bool;
    /// A reservation of `sku` failed for lack of stock (as the database said).
    fn shortfall(&self, sku: &str);
    /// Stock of `sku` may be available again.
    fn reopen(&self, sku: &str);
}

/// Gate policy.
#[derive(Clone, Copy, Debug)]
pub struct GateConfig {
    /// Shortfalls within `window` that make a SKU hot (and closed).
    pub threshold: u32,
    pub window: Duration,
    /// How long a closing lasts unless reopened earlier.
    pub close_for: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            threshold: 8,
            window: Duration::from_secs(1),
            close_for: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    misses: u32,
    since: Instant,
    closed_until: Option<Instant>,
}

/// The in-process gate (one node).
pub struct MemoryStockGate {
    cfg: GateConfig,
    skus: Mutex<HashMap<String, Entry>>,
}

/// Entries kept at most; beyond it the stale ones are dropped.
const MAX_ENTRIES: usize = 10_000;

impl MemoryStockGate {
    pub fn new(cfg: GateConfig) -> MemoryStockGate {
        MemoryStockGate {
            cfg,
            skus: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for MemoryStockGate {
    fn default() -> Self {
        MemoryStockGate::new(GateConfig::default())
    }
}

impl StockGate for MemoryStockGate {
    fn sold_out(&self, sku: &str) -> bool {
        let now = Instant::now();
        let closed = self
            .skus
            .lock()
            .map(|m| {
                m.get(sku)
                    .and_then(|e| e.closed_until)
                    .is_some_and(|until| until > now)
            })
            .unwrap_or(false);
        if closed {
            metrics::counter!("inventory_gate_rejections_total").increment(1);
        }
        closed
    }

    fn shortfall(&self, sku: &str) {
        let now = Instant::now();
        let Ok(mut m) = self.skus.lock() else { return };
        if m.len() >= MAX_ENTRIES && !m.contains_key(sku) {
            let window = self.cfg.window;
            m.retain(|_, e| {
                now.duration_since(e.since) < window || e.closed_until.is_some_and(|u| u > now)
            });
            if m.len() >= MAX_ENTRIES {
                return;
            }
        }
        let e = m.entry(sku.to_owned()).or_insert(Entry {
            misses: 0,
            since: now,
            closed_until: None,
        });
        if now.duration_since(e.since) >= self.cfg.window {
            e.misses = 0;
            e.since = now;
        }
        e.misses = e.misses.saturating_add(1);
        if e.misses >= self.cfg.threshold {
            if e.closed_until.is_none_or(|u| u <= now) {
                metrics::counter!("inventory_gate_closings_total").increment(1);
            }
            e.closed_until = Some(now + self.cfg.close_for);
        }
    }

    fn reopen(&self, sku: &str) {
        if let Ok(mut m) = self.skus.lock() {
            m.remove(sku);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sku_closes_only_when_hot_and_reopens_on_release_or_by_itself() {
        let g = MemoryStockGate::new(GateConfig {
            threshold: 3,
            window: Duration::from_secs(10),
            close_for: Duration::from_millis(50),
        });
        g.shortfall("A");
        g.shortfall("A");
        assert!(!g.sold_out("A"), "two misses are not a crowd");
        g.shortfall("A");
        assert!(g.sold_out("A"));
        assert!(!g.sold_out("B"));
        g.reopen("A");
        assert!(!g.sold_out("A"), "a release reopens at once");
        for _ in 0..3 {
            g.shortfall("A");
        }
        assert!(g.sold_out("A"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!g.sold_out("A"), "a closing expires on its own");
    }
}
