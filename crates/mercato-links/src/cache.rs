//! The redirect cache: code → link (or "unknown"), in process, with a TTL per entry, one
//! database read per missing code however many requests ask at once (moka's `try_get_with`
//! coalesces them), and invalidation by code.

use crate::store::{LinkRow, LinksStore};
use moka::Expiry;
use moka::future::Cache;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the redirect needs of a link.
#[derive(Debug)]
pub struct CachedLink {
    pub id: String,
    pub destination: String,
    pub status: u16,
    pub expires_at: Option<i64>,
    pub max_clicks: Option<i64>,
    /// Clicks known when loaded plus the redirects this node served since.
    pub clicks: AtomicI64,
}

/// A cache entry: a link, or the knowledge that the code is unknown.
#[derive(Clone, Debug)]
pub struct Entry {
    pub link: Option<Arc<CachedLink>>,
    ttl: Duration,
}

struct PerEntry;

impl Expiry<String, Entry> for PerEntry {
    fn expire_after_create(&self, _: &String, v: &Entry, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

#[derive(Clone)]
pub struct LinkCache {
    cache: Cache<String, Entry>,
    store: LinksStore,
    positive_ttl: Duration,
    negative_ttl: Duration,
    /// Database reads made to fill the cache (a flood of unknown codes must not move it).
    db_reads: Arc<AtomicU64>,
}

impl LinkCache {
    pub fn new(
        store: LinksStore,
        capacity: u64,
        positive_ttl: Duration,
        negative_ttl: Duration,
    ) -> LinkCache {
        LinkCache {
            cache: Cache::builder()
                .max_capacity(capacity.max(1))
                .expire_after(PerEntry)
                .build(),
            store,
            positive_ttl,
            negative_ttl,
            db_reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The link behind `code`, from the cache or (once per code, however many ask) the database.
    /// `now_micros` bounds a link's TTL by its expiry.
    pub async fn get(
        &self,
        code: &str,
        now_micros: i64,
    ) -> anyhow::Result<Option<Arc<CachedLink>>> {
        let store = self.store.clone();
        let reads = self.db_reads.clone();
        let (pos, neg) = (self.positive_ttl, self.negative_ttl);
        let owned = code.to_owned();
        let entry = self
            .cache
            .try_get_with(owned.clone(), async move {
                reads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("links_cache_db_reads_total").increment(1);
                let row = store.by_code(&owned).await?;
                Ok::<Entry, anyhow::Error>(entry_of(row, now_micros, pos, neg))
            })
            .await
            .map_err(|e| anyhow::anyhow!("loading link {code}: {e}"))?;
        Ok(entry.link)
    }

    /// Drops a code's entry (a change was made here or seen from another node).
    pub async fn invalidate(&self, code: &str) {
        self.cache.invalidate(code).await;
    }

    pub fn db_reads(&self) -> u64 {
        self.db_reads.load(Ordering::Relaxed)
    }
}

fn entry_of(row: Option<LinkRow>, now: i64, pos: Duration, neg: Duration) -> Entry {
    match row {
        None => Entry {
            link: None,
            ttl: neg,
        },
        Some(r) => {
            // Never cached past its expiry (the redirect also checks it on every hit).
            let ttl = match r.expires_at {
                Some(exp) if exp > now => pos.min(Duration::from_micros((exp - now) as u64)),
                Some(_) => Duration::from_secs(1).min(pos),
                None => pos,
            };
            Entry {
                link: Some(Arc::new(CachedLink {
                    id: r.id,
                    destination: r.destination,
                    status: if r.redirect_status == 301 { 301 } else { 302 },
                    expires_at: r.expires_at,
                    max_clicks: r.max_clicks,
                    clicks: AtomicI64::new(r.clicks),
                })),
                ttl: ttl.max(Duration::from_millis(1)),
            }
        }
    }
}
