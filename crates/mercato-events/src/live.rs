//! Events of the live-streams system (payload types; see the crate docs).
//!
//! Only a stream's lifecycle goes through the outbox; comments and the other in-stream events
//! travel on the stream's own event log and SSE feed (`live_events`), not the shop's bus.

use crate::payload;
use serde::{Deserialize, Serialize};

/// `live.stream_started`: a stream went live (created without a future `starts_at`, or started).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStarted {
    pub stream_id: String,
    pub seller_id: String,
    pub title: String,
    pub product_ids: Vec<String>,
}
payload!(
    StreamStarted,
    "live.stream_started",
    "live_stream",
    stream_id
);

/// `live.stream_ended`: a stream ended (its feed sends `ended` and closes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnded {
    pub stream_id: String,
    pub seller_id: String,
    /// Comments posted while it ran (deleted ones included).
    pub comments: i64,
}
payload!(StreamEnded, "live.stream_ended", "live_stream", stream_id);
