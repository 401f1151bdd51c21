//! Catalog: the category tree, products with variants (one SKU each), images, reviews.
//!
//! Invariants: SKUs are unique across the catalog (upper-cased); every product has at least one
//! variant and all its variants share one currency; a sale price is below the price; a seller
//! edits only its own products (admins any); drafts are visible only to their seller and admins;
//! reads go to the database, so a price change is visible on the next read. A product's rating
//! aggregate changes in the same transaction as the review that moves it.
//!
//! Emits `catalog.product_created` and `catalog.product_updated` (`{product_id, seller_id,
//! version, reason}`); consumers re-read the product (search is a projection of this module).
//! Seams: stock levels (`crate::seams::StockLevels`, inventory) and the verified-purchase rule
//! (`crate::seams::PurchaseVerifier`, orders).

pub mod http;
pub mod model;
pub mod service;
mod store;

pub use service::{CatalogError, CatalogService, ProductSnapshot, SkuDirectory, SkuInfo};
