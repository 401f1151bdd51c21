//! Events of the flash_sales system (payload types; see the crate docs).

use crate::payload;
use mercato_kernel::{Money, Timestamp};
use serde::{Deserialize, Serialize};

/// `flash_sale.started`: the sale's window opened; the waiting room admits from now on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashSaleStarted {
    pub sale_id: String,
    pub sku: String,
    pub price: Money,
    pub units: i64,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// Tickets in the waiting room when it started (shuffled).
    pub queued: i64,
}
payload!(
    FlashSaleStarted,
    "flash_sale.started",
    "flash_sale",
    sale_id
);

/// `flash_sale.sold_out`: every unit of the sale is paid for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashSaleSoldOut {
    pub sale_id: String,
    pub sku: String,
    pub units: i64,
    pub sold: i64,
}
payload!(
    FlashSaleSoldOut,
    "flash_sale.sold_out",
    "flash_sale",
    sale_id
);

/// `flash_sale.ended`: the window closed; the units not sold went back to the SKU's stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashSaleEnded {
    pub sale_id: String,
    pub sku: String,
    pub units: i64,
    pub sold: i64,
    /// Units returned to the stock when the sale ended.
    pub returned: i64,
}
payload!(FlashSaleEnded, "flash_sale.ended", "flash_sale", sale_id);
