//! Fan-out of committed stream events to the hubs of every node.
//!
//! The service writes an event, commits, then hands it to the [`Fanout`]. The in-process
//! implementation delivers it to this node's hub at once. Other nodes see it within
//! `live_poll_ms` through their topics' database catch-up (the event log is the source of
//! truth; fan-out only makes delivery faster), so a comment posted on node A reaches node B's
//! subscribers even without a broker. A broker implementation (NATS core subjects or Redis
//! pub/sub, `hash(stream_id) % N` channels, subscribe on a node's first viewer) is this same
//! trait; duplicates it may cause are dropped by the hub (events enter a topic strictly in
//! sequence).

use crate::hub::Hub;
use crate::model::StreamEvent;

#[async_trait::async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Hands a committed event to every node's hub, this node's included.
    async fn publish(&self, ev: StreamEvent);
    /// A short name for logs and `/readyz`.
    fn name(&self) -> &'static str;
}

/// One node: events go straight to the local hub.
pub struct LocalFanout {
    hub: Hub,
}

impl LocalFanout {
    pub fn new(hub: Hub) -> LocalFanout {
        LocalFanout { hub }
    }
}

#[async_trait::async_trait]
impl Fanout for LocalFanout {
    async fn publish(&self, ev: StreamEvent) {
        metrics::counter!("live_events_published_total", "kind" => ev.kind.as_str()).increment(1);
        self.hub.ingest(ev);
    }

    fn name(&self) -> &'static str {
        "in-process"
    }
}

/// Which channel of `n` a stream's events travel on (`hash(stream_id) % n`, FNV-1a: stable
/// across processes and builds, unlike `std`'s randomly seeded hasher).
pub fn channel_of(stream_id: &str, n: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(n.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::channel_of;

    #[test]
    fn channels_are_stable_and_in_range() {
        assert_eq!(channel_of("lst_abc", 16), channel_of("lst_abc", 16));
        for i in 0..100 {
            assert!(channel_of(&format!("lst_{i}"), 8) < 8);
        }
        assert_eq!(channel_of("lst_abc", 0), 0);
    }
}
