//! Seams between modules that land at different times. Each is a small trait with a default
//! that is correct until the real implementation plugs in at start-up, without touching the
//! modules that call it.

use std::collections::HashMap;

/// Sellable stock per SKU, for soft checks (carts) and display (catalog, search).
/// A SKU missing from the answer is *untracked*: availability unknown, treated as unlimited.
#[async_trait::async_trait]
pub trait StockLevels: Send + Sync + 'static {
    async fn available(&self, skus: &[String]) -> anyhow::Result<HashMap<String, i64>>;
}

/// The default until inventory is wired: nothing is tracked.
pub struct UntrackedStock;

#[async_trait::async_trait]
impl StockLevels for UntrackedStock {
    async fn available(&self, _skus: &[String]) -> anyhow::Result<HashMap<String, i64>> {
        Ok(HashMap::new())
    }
}

/// Whether a customer received a product (the verified-purchase rule for reviews).
#[async_trait::async_trait]
pub trait PurchaseVerifier: Send + Sync + 'static {
    /// `Some(true/false)` once orders can answer; `None` while nothing can tell.
    async fn has_received(
        &self,
        customer_id: &str,
        product_id: &str,
    ) -> anyhow::Result<Option<bool>>;
}

/// The default until orders are wired: cannot tell, so reviews are accepted but marked
/// `verified_purchase: false`.
pub struct NoOrdersYet;

#[async_trait::async_trait]
impl PurchaseVerifier for NoOrdersYet {
    async fn has_received(
        &self,
        _customer_id: &str,
        _product_id: &str,
    ) -> anyhow::Result<Option<bool>> {
        Ok(None)
    }
}
