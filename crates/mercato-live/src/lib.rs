//! Mercato's live streams: live-shopping comments and commerce events over server-sent events.
//!
//! Owns the tables `live_streams`, `live_stream_products`, `live_events`, `live_comments`,
//! `live_bans`.
//!
//! Invariants:
//! - every event of a stream's feed (comment, comment_deleted, product, pinned, ended) is
//!   committed to `live_events` with the stream's next sequence number before anyone sees it;
//!   sequence numbers have no holes and commit in order (one row lock per stream);
//! - a comment is durable before its 201;
//! - a subscriber resuming with `Last-Event-ID` within the replay window receives exactly the
//!   events after it, then the live feed, with no gap and no duplicate at the seam; an older id
//!   gets one `gap` event first (see [`hub`]);
//! - a slow subscriber is disconnected, never waited for;
//! - nodes share nothing but the database (and, later, a broker behind [`fanout::Fanout`]):
//!   each node's topics read the events other nodes wrote.
//!
//! Emits `live.stream_started`, `live.stream_ended`. Consumes `catalog.product_updated`,
//! `inventory.adjusted|reserved|released|committed` (consumer `live.products`): a price or
//! stock change of a product shown in a stream becomes a `product` event on its feed.
#![forbid(unsafe_code)]

pub mod fanout;
pub mod http;
pub mod hub;
pub mod model;
pub mod service;
pub mod store;

pub use http::router;
pub use service::{Directory, Live, LiveConfig, Person, ProductFacts, VariantFacts};

use std::sync::Arc;

/// The bus consumer that turns price and stock changes into `product` events.
pub fn consumer(live: &Live) -> Arc<dyn mercato_kernel::outbox::EventHandler> {
    Arc::new(service::ProductFeed(live.clone()))
}

/// Builds the live system (in-process fan-out) from the kernel's handles.
pub fn build(
    kernel: &mercato_kernel::Kernel,
    directory: Arc<dyn Directory>,
    shutdown: mercato_kernel::shutdown::Shutdown,
) -> Live {
    let cfg = LiveConfig::from_settings(&kernel.settings);
    let store = store::LiveStore::new(kernel.db.clone());
    let hub = hub::Hub::new(
        cfg.hub.clone(),
        store.clone(),
        kernel.clock.clone(),
        shutdown.clone(),
    );
    let fanout = Arc::new(fanout::LocalFanout::new(hub.clone()));
    Live::new(store, hub, fanout, kernel, directory, shutdown, cfg)
}
