//! Mercato's URL shortener: short links with a cached redirect path and click analytics.
//!
//! Owns the tables `links`, `link_tags`, `link_clicks`, `link_rollups`, `link_visitors`,
//! `link_orders`.
//!
//! Invariants:
//! - the redirect never touches the database on a cache hit and never waits on analytics: a
//!   click goes to a bounded queue (a full queue drops and counts it, never the redirect);
//! - a missing code costs one database read per cache lifetime however many ask (single-flight
//!   fill, negative entries for unknown codes);
//! - a change or delete drops this node's cache entry before the API answers, and every other
//!   node's within its poll interval (each node polls `links.updated_at`);
//! - raw clicks and their rollups are written in the same transaction, so stats (answered from
//!   rollups) always equal the raw clicks they summarise;
//! - no client address is stored: visitors are a daily salted hash.
//!
//! Emits `link.created`, `link.updated`, `link.deleted`. Consumes `order.confirmed` (shop
//! attribution: a paid order whose cart carries a link's code counts in that link's stats).
#![forbid(unsafe_code)]

pub mod cache;
pub mod clicks;
pub mod geo;
pub mod http;
pub mod model;
pub mod service;
pub mod store;

pub use http::{redirect_router, router};
pub use service::{Links, LinksConfig};

use mercato_kernel::clock::SharedClock;
use mercato_kernel::config::Settings;
use mercato_kernel::db::Db;

/// The bus consumer that counts attributed orders per link.
pub fn consumer(links: &Links) -> std::sync::Arc<dyn mercato_kernel::outbox::EventHandler> {
    std::sync::Arc::new(service::Attribution(links.clone()))
}

/// Builds the links system from settings.
pub fn build(db: Db, clock: SharedClock, settings: &Settings) -> anyhow::Result<Links> {
    Links::new(db, clock, LinksConfig::from_settings(settings))
}
