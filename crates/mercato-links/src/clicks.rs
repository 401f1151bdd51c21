//! The click pipeline: the redirect hands a click to a bounded queue and never waits; a batcher
//! drains it into transactions of at most 500 clicks, at least once per flush interval, each
//! writing the raw clicks together with their rollups (minute/hour/day × dimension) and daily
//! visitors. A full queue drops the click and counts it (`links_clicks_dropped_total`).

use crate::store::{ClickRow, LinksStore, RollupKey};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Most clicks written in one transaction.
pub const MAX_BATCH: usize = 500;

pub const MINUTE: i64 = 60_000_000;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// A click as the redirect saw it (already parsed; no address).
#[derive(Clone, Debug)]
pub struct Click {
    pub link_id: String,
    pub at: i64,
    pub referrer: String,
    pub country: String,
    pub browser: String,
    pub os: String,
    pub device: String,
    pub bot: bool,
    pub visitor: String,
}

/// The redirect's end of the queue.
#[derive(Clone)]
pub struct ClickQueue {
    tx: mpsc::Sender<Click>,
    pub counters: Arc<ClickCounters>,
}

#[derive(Default, Debug)]
pub struct ClickCounters {
    pub queued: AtomicU64,
    pub dropped: AtomicU64,
    pub written: AtomicU64,
}

impl ClickQueue {
    /// Enqueues without waiting; a full queue drops the click (counted).
    pub fn push(&self, c: Click) {
        match self.tx.try_send(c) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("links_clicks_dropped_total").increment(1);
            }
        }
    }
}

/// A daily visitor hash: SHA-256 of a per-day salt (derived from the node's secret and the
/// day), the client address and the user agent. The address itself is never stored, and the
/// hash of one day cannot be linked to the next.
pub fn visitor_hash(secret: &[u8], day: i64, ip: &str, ua: &str) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(day.to_be_bytes());
    h.update(ip.as_bytes());
    h.update([0]);
    h.update(ua.as_bytes());
    mercato_kernel::id::hex(&h.finalize()[..16])
}

pub fn bucket_start(at: i64, size: i64) -> i64 {
    at - at.rem_euclid(size)
}

/// The bounded queue and its batcher's receiving end.
pub fn channel(capacity: usize) -> (ClickQueue, mpsc::Receiver<Click>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        ClickQueue {
            tx,
            counters: Arc::new(ClickCounters::default()),
        },
        rx,
    )
}

/// Writes one batch (≤ [`MAX_BATCH`]) with its rollups in one transaction.
pub async fn write_batch(store: &LinksStore, batch: &[Click]) -> anyhow::Result<()> {
    let mut rollups: HashMap<RollupKey, i64> = HashMap::new();
    let mut visitors: HashSet<(String, i64, String, bool)> = HashSet::new();
    let mut per_link: HashMap<String, i64> = HashMap::new();
    let mut rows = Vec::with_capacity(batch.len());
    for c in batch {
        for (bucket, size) in [("minute", MINUTE), ("hour", HOUR), ("day", DAY)] {
            let at = bucket_start(c.at, size);
            for (dim, value) in [
                ("total", ""),
                ("referrer", c.referrer.as_str()),
                ("country", c.country.as_str()),
                ("browser", c.browser.as_str()),
                ("os", c.os.as_str()),
                ("device", c.device.as_str()),
            ] {
                *rollups
                    .entry((c.link_id.clone(), bucket, at, dim, value.to_owned(), c.bot))
                    .or_default() += 1;
            }
        }
        visitors.insert((
            c.link_id.clone(),
            bucket_start(c.at, DAY),
            c.visitor.clone(),
            c.bot,
        ));
        *per_link.entry(c.link_id.clone()).or_default() += 1;
        rows.push(ClickRow {
            id: mercato_kernel::id::new_id("clk"),
            link_id: c.link_id.clone(),
            at: c.at,
            referrer: c.referrer.clone(),
            country: c.country.clone(),
            browser: c.browser.clone(),
            os: c.os.clone(),
            device: c.device.clone(),
            bot: c.bot,
            visitor: c.visitor.clone(),
        });
    }
    let visitors: Vec<_> = visitors.into_iter().collect();
    store
        .write_batch(&rows, &rollups, &visitors, &per_link)
        .await
        .map_err(|e| anyhow::anyhow!("writing {} clicks: {e}", rows.len()))
}

/// Drains the queue until it closes: a batch is written when it holds [`MAX_BATCH`] clicks or
/// when `every` has passed since its first click. A failed write is retried (with backoff) and
/// never dropped while the process lives.
pub async fn run_batcher(
    store: LinksStore,
    mut rx: mpsc::Receiver<Click>,
    counters: Arc<ClickCounters>,
    every: Duration,
) {
    let mut batch: Vec<Click> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for the first click of the next batch.
        match rx.recv().await {
            Some(c) => batch.push(c),
            None => break,
        }
        let deadline = tokio::time::Instant::now() + every;
        let mut closed = false;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => batch.push(c),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        flush(&store, &mut batch, &counters).await;
        if closed {
            break;
        }
    }
    flush(&store, &mut batch, &counters).await;
}

async fn flush(store: &LinksStore, batch: &mut Vec<Click>, counters: &ClickCounters) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    for attempt in 0..20 {
        match write_batch(store, batch).await {
            Ok(()) => {
                counters
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                metrics::counter!("links_clicks_recorded_total").increment(batch.len() as u64);
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "click batch not written; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(
        clicks = batch.len(),
        "click batch dropped after 20 attempts"
    );
    counters
        .dropped
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    metrics::counter!("links_clicks_dropped_total").increment(batch.len() as u64);
    batch.clear();
}
