//! Carts: guest carts (the id is a 128-bit bearer secret) and user carts (one active per user).
//!
//! Invariants: a line holds 1..`cart_max_line_quantity` units (a conditional upsert enforces it
//! even under concurrent adds); only `active` carts change — merged, converted and expired carts
//! answer 409 `cart_not_active`; a user's cart is visible to its owner only (404 to others);
//! prices are snapshotted at addition and re-priced on every read with `price_changed`
//! warnings; the stock check here is soft (no reservation: checkout is the hard gate) and goes
//! through the `StockLevels` seam, so inventory plugs in without touching this module. At login
//! with `cart_id`, an active guest cart is merged into the user's cart (sum, capped at the line
//! maximum and availability) and becomes `merged`. Idle guest carts expire after
//! `guest_cart_ttl_days` (30) through the sweeper. Carts live in the relational store (durable).

pub mod http;
pub mod model;
pub mod service;
mod store;

pub use service::{CartError, CartService};
pub use store::CartStore;
