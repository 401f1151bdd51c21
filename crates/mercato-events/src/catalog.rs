//! Events of the catalog system (payload types; see the crate docs).
//!
//! Both are change notices (the CDC pattern): consumers re-read the product, so the payload
//! names it and its version, not its contents.

use crate::payload;
use serde::{Deserialize, Serialize};

/// `catalog.product_created`: a product (with its variants) was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub product_id: String,
    pub seller_id: String,
    /// The product's version after the change (also the envelope's `version`).
    pub version: i64,
    /// `created`.
    pub reason: String,
}
payload!(
    ProductCreated,
    "catalog.product_created",
    "product",
    product_id
);

/// `catalog.product_updated`: a product's fields, variants or rating changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductUpdated {
    pub product_id: String,
    pub seller_id: String,
    /// The product's version after the change (also the envelope's `version`).
    pub version: i64,
    /// What changed: `updated`, `review`, …
    pub reason: String,
}
payload!(
    ProductUpdated,
    "catalog.product_updated",
    "product",
    product_id
);
