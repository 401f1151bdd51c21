//! Search use cases and the index's life cycle: open (or create, or rebuild) at start-up, feed
//! from catalog and inventory events, commit on a timer, answer queries, close on shutdown.

use super::index::{Engine, Plan, Rebuild, top_brands};
use super::model::{
    BrandCount, CategoryCount, Facets, PRICE_BUCKETS, PriceRangeCount, RATING_THRESHOLDS,
    RatingCount, SearchRequest, SearchResults, encode_search_cursor,
};
use crate::catalog::CatalogService;
use crate::catalog::model::Category;
use anyhow::Context as _;
use mercato_kernel::Kernel;
use mercato_kernel::error::ApiError;
use mercato_kernel::outbox::{EmbeddedBus, Event, EventHandler, EventPayload as _};
use mercato_kernel::shutdown::Shutdown;
use sha2::Digest as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tantivy::query::{AllQuery, Query};

/// Events older than the last rebuild's start by more than this are already in the index
/// (a transaction never stays open this long), so replaying them is skipped.
const REPLAY_SLACK: Duration = Duration::from_secs(60);
/// Products read from the database per step of a rebuild.
const REBUILD_PAGE: i64 = 500;
/// How long the category names used by the category facet are cached.
const CATEGORY_CACHE: Duration = Duration::from_secs(10);

/// Event types the index follows.
pub const CATALOG_EVENTS: &[&str] = &["catalog.product_created", "catalog.product_updated"];
pub const INVENTORY_EVENTS: &[&str] = &[
    "inventory.adjusted",
    "inventory.reserved",
    "inventory.released",
    "inventory.committed",
    "inventory.low_stock",
];

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the search index is not open in this process")]
    Unavailable,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> ApiError {
        match e {
            SearchError::Unavailable => ApiError::new(mercato_kernel::error::Code::Unavailable)
                .detail("search is not available on this node")
                .retry_after(5),
            SearchError::Unexpected(e) => ApiError::from(e),
        }
    }
}

type CategoryMap = Arc<HashMap<String, CategoryInfo>>;

#[derive(Clone)]
struct CategoryInfo {
    name: String,
    slug: String,
    parent_id: Option<String>,
}

#[derive(Clone)]
pub struct SearchService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    catalog: CatalogService,
    dir: PathBuf,
    replica_file: PathBuf,
    engine: RwLock<Option<Arc<Engine>>>,
    pending: std::sync::Mutex<Option<Rebuild>>,
    /// Serializes "read the products, stage their documents" so a later read is never
    /// overwritten by an earlier one (events and rebuild pages interleave).
    write: tokio::sync::Mutex<()>,
    consumer: OnceLock<String>,
    categories: RwLock<Option<(Instant, CategoryMap)>>,
}

/// A hash of the database URL without credentials: an index built from another database is
/// rebuilt rather than trusted.
fn source_of(url: &str) -> String {
    let cleaned = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_owned(),
    };
    let digest = sha2::Sha256::digest(cleaned.as_bytes());
    mercato_kernel::id::hex(&digest[..8])
}

impl SearchService {
    /// No IO: the index is opened by [`SearchService::open`] in processes that serve the API.
    pub fn new(kernel: Kernel, catalog: CatalogService) -> SearchService {
        let data_dir = kernel.settings.data_dir.clone();
        SearchService {
            inner: Arc::new(Inner {
                kernel,
                catalog,
                dir: data_dir.join("search"),
                replica_file: data_dir.join("search-replica.id"),
                engine: RwLock::new(None),
                pending: std::sync::Mutex::new(None),
                write: tokio::sync::Mutex::new(()),
                consumer: OnceLock::new(),
                categories: RwLock::new(None),
            }),
        }
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.inner.engine.read().ok().and_then(|e| e.clone())
    }

    /// Opens (or creates) the index under `<data_dir>/search` and takes its writer lock.
    /// A missing index, one of another schema version or database, or one left with
    /// uncommitted work is rebuilt from the database by [`SearchService::spawn`].
    pub fn open(&self) -> anyhow::Result<()> {
        if self.engine().is_some() {
            return Ok(());
        }
        let source = source_of(&self.inner.kernel.settings.effective_database_url());
        let (engine, rebuild) = Engine::open(&self.inner.dir, &source)?;
        tracing::info!(dir = %self.inner.dir.display(), docs = engine.num_docs(), rebuild = ?rebuild, "search index opened");
        if let Ok(mut p) = self.inner.pending.lock() {
            *p = (rebuild != Rebuild::No).then_some(rebuild);
        }
        let mut slot = self
            .inner
            .engine
            .write()
            .map_err(|_| anyhow::anyhow!("search engine lock poisoned"))?;
        *slot = Some(Arc::new(engine));
        Ok(())
    }

    /// The durable consumer name of this node's index: `search-index.<replica id>`, where the
    /// replica id lives in `<data_dir>/search-replica.id`. Each node keeps its own index, so
    /// each needs every event (a shared name would split them between nodes); the name
    /// survives restarts (the offset resumes) and wiping the index directory (the rebuild
    /// covers everything up to its start, so the old offset stays correct).
    pub fn consumer_name(&self) -> anyhow::Result<String> {
        if let Some(n) = self.inner.consumer.get() {
            return Ok(n.clone());
        }
        let path = &self.inner.replica_file;
        let id = match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let id = mercato_kernel::id::random_hex(8);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, &id).with_context(|| format!("writing {}", path.display()))?;
                id
            }
        };
        let name = format!("search-index.{id}");
        Ok(self.inner.consumer.get_or_init(|| name).clone())
    }

    /// The event handler that keeps the index in step with the catalog (and inventory).
    pub fn indexer(&self) -> anyhow::Result<Arc<dyn EventHandler>> {
        Ok(Arc::new(Indexer {
            name: self.consumer_name()?,
            search: self.clone(),
        }))
    }

    /// Runs the pending rebuild (if any) and commits staged changes every
    /// `search_commit_ms` until shutdown, then commits a last time and releases the index.
    pub fn spawn(&self, mut shutdown: Shutdown) -> Option<tokio::task::JoinHandle<()>> {
        let engine = self.engine()?;
        let pending = self.inner.pending.lock().ok().and_then(|mut p| p.take());
        let svc = self.clone();
        let every = Duration::from_millis(self.inner.kernel.settings.search_commit_ms.max(10));
        Some(tokio::spawn(async move {
            let rebuild = pending.map(|kind| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    if let Err(e) = svc.rebuild_as(kind == Rebuild::Stale).await {
                        tracing::error!(error = format!("{e:#}"), "search index rebuild failed");
                    }
                })
            });
            while !shutdown.sleep(every).await {
                let e = engine.clone();
                match tokio::task::spawn_blocking(move || e.commit()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = format!("{e:#}"), "search index commit failed")
                    }
                    Err(e) => tracing::error!(error = %e, "search index commit task failed"),
                }
            }
            if let Some(r) = rebuild {
                r.abort();
            }
            let e = engine.clone();
            match tokio::task::spawn_blocking(move || e.close()).await {
                Ok(Ok(())) => tracing::info!("search index closed"),
                Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "closing the search index"),
                Err(e) => tracing::error!(error = %e, "closing the search index"),
            }
        }))
    }

    /// For processes that serve the API without running the bus workers (`--role api`):
    /// delivers this node's search events itself (another process relays the outbox).
    pub fn spawn_feed(
        &self,
        bus: Arc<EmbeddedBus>,
        mut shutdown: Shutdown,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let handler = self.indexer()?;
        let poll = Duration::from_millis(self.inner.kernel.settings.outbox_poll_ms.max(1));
        Ok(tokio::spawn(async move {
            while !shutdown.is_triggered() {
                let read = match bus.consume_once(handler.as_ref()).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "search feed failed; retrying");
                        0
                    }
                };
                if let Err(e) = bus.retry_once(handler.as_ref()).await {
                    tracing::warn!(error = format!("{e:#}"), "search feed retries failed");
                }
                if read == 0 && shutdown.sleep(poll).await {
                    break;
                }
            }
        }))
    }

    /// Commits staged changes now (tests, CLI). Returns whether anything was committed.
    pub async fn commit(&self) -> anyhow::Result<bool> {
        let engine = self.engine().ok_or(SearchError::Unavailable)?;
        tokio::task::spawn_blocking(move || engine.commit()).await?
    }

    /// Rebuilds the whole index from the database while the old one keeps answering; the
    /// result becomes visible at once when done. Returns how many products were read.
    pub async fn rebuild(&self) -> anyhow::Result<usize> {
        self.rebuild_as(true).await
    }

    async fn rebuild_as(&self, live: bool) -> anyhow::Result<usize> {
        let engine = self.engine().ok_or(SearchError::Unavailable)?;
        let started = Instant::now();
        {
            let _w = self.inner.write.lock().await;
            let at = self.inner.kernel.clock.now().as_micros();
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.begin_rebuild(live, at)).await??;
        }
        let mut after = String::new();
        let mut n = 0;
        loop {
            let ids = self
                .inner
                .catalog
                .product_ids_after(&after, REBUILD_PAGE)
                .await
                .map_err(|e| anyhow::anyhow!("listing products: {e}"))?;
            let Some(last) = ids.last() else { break };
            after = last.clone();
            n += ids.len();
            self.reindex(ids).await?;
        }
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.finish_rebuild()).await??;
        tracing::info!(
            products = n,
            secs = started.elapsed().as_secs_f64(),
            "search index rebuilt"
        );
        Ok(n)
    }

    /// `mercato search reindex`: opens the index (the server must not hold it), rebuilds it
    /// from the database and closes it. Returns the products read and the documents indexed.
    pub async fn reindex_offline(&self) -> anyhow::Result<(usize, u64)> {
        self.open()?;
        if let Ok(mut p) = self.inner.pending.lock() {
            p.take();
        }
        let n = self.rebuild_as(false).await?;
        let engine = self.engine().ok_or(SearchError::Unavailable)?;
        let docs = engine.num_docs();
        tokio::task::spawn_blocking(move || engine.close()).await??;
        if let Ok(mut slot) = self.inner.engine.write() {
            *slot = None;
        }
        Ok((n, docs))
    }

    /// Re-reads `ids` from the catalog and replaces their documents.
    pub async fn reindex(&self, ids: Vec<String>) -> anyhow::Result<()> {
        let engine = self.engine().ok_or(SearchError::Unavailable)?;
        let _w = self.inner.write.lock().await;
        let snapshots = self
            .inner
            .catalog
            .snapshots(&ids)
            .await
            .map_err(|e| anyhow::anyhow!("reading products: {e}"))?;
        tokio::task::spawn_blocking(move || engine.stage(&ids, &snapshots)).await??;
        Ok(())
    }

    /// Category names for the facet, cached; a category the cache does not know yet (created
    /// since) forces a reload.
    async fn category_info(&self, needed: &[&String]) -> Result<CategoryMap, SearchError> {
        if let Ok(c) = self.inner.categories.read()
            && let Some((at, map)) = c.as_ref()
            && at.elapsed() < CATEGORY_CACHE
            && needed.iter().all(|id| map.contains_key(*id))
        {
            return Ok(map.clone());
        }
        let tree = self
            .inner
            .catalog
            .category_tree()
            .await
            .map_err(|e| anyhow::anyhow!("reading categories: {e}"))?;
        let mut map = HashMap::new();
        fn walk(nodes: &[Category], map: &mut HashMap<String, CategoryInfo>) {
            for n in nodes {
                map.insert(
                    n.id.clone(),
                    CategoryInfo {
                        name: n.name.clone(),
                        slug: n.slug.clone(),
                        parent_id: n.parent_id.clone(),
                    },
                );
                walk(&n.children, map);
            }
        }
        walk(&tree, &mut map);
        let map = Arc::new(map);
        if let Ok(mut c) = self.inner.categories.write() {
            *c = Some((Instant::now(), map.clone()));
        }
        Ok(map)
    }

    /// `GET /search` (with `q`) and `GET /products` (without).
    pub async fn search(&self, req: SearchRequest) -> Result<SearchResults, SearchError> {
        let engine = self.engine().ok_or(SearchError::Unavailable)?;
        let plan = Plan {
            filters: req.filters.clone(),
            sort: req.sort,
            limit: req.limit,
            after: req.after,
        };
        let q = req.q.clone();
        let (found, did_you_mean) = tokio::task::spawn_blocking(move || {
            let query: Box<dyn Query> = match q.as_deref() {
                Some(q) => engine.text_query(q),
                None => Box::new(AllQuery),
            };
            let found = engine.search(query.as_ref(), &plan)?;
            let dym = q.as_deref().and_then(|q| engine.did_you_mean(q));
            anyhow::Ok((found, dym))
        })
        .await
        .map_err(anyhow::Error::new)??;
        let cats = self
            .category_info(&found.categories.keys().collect::<Vec<_>>())
            .await?;
        let mut categories: Vec<CategoryCount> = found
            .categories
            .iter()
            .filter_map(|(id, n)| {
                cats.get(id).map(|c| CategoryCount {
                    value: id.clone(),
                    name: c.name.clone(),
                    slug: c.slug.clone(),
                    parent_id: c.parent_id.clone(),
                    count: *n,
                })
            })
            .collect();
        categories.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        let facets = Facets {
            brands: top_brands(&found.brands, &req.filters.brands)
                .into_iter()
                .map(|(value, count)| BrandCount { value, count })
                .collect(),
            categories,
            price_ranges: PRICE_BUCKETS
                .iter()
                .zip(&found.price_ranges)
                .map(|((min, max), n)| PriceRangeCount {
                    min: *min,
                    max: *max,
                    count: *n,
                })
                .collect(),
            rating: RATING_THRESHOLDS
                .iter()
                .zip(&found.rating)
                .map(|(t, n)| RatingCount { min: *t, count: *n })
                .collect(),
        };
        let next_cursor = if found.more {
            found
                .items
                .last()
                .map(|(k, _)| encode_search_cursor(req.sort, *k))
        } else {
            None
        };
        Ok(SearchResults {
            data: found.items.into_iter().map(|(_, i)| i).collect(),
            next_cursor,
            total: found.total,
            facets,
            did_you_mean,
        })
    }

    /// `GET /search/suggest`.
    pub async fn suggest(&self, q: String, limit: usize) -> Result<Vec<String>, SearchError> {
        let engine = self.engine().ok_or(SearchError::Unavailable)?;
        Ok(
            tokio::task::spawn_blocking(move || engine.suggest(&q, limit))
                .await
                .map_err(anyhow::Error::new)??,
        )
    }
}

/// The durable consumer feeding the index (the CDC pattern: events say *what* changed; the
/// product is re-read from the catalog, so delivery order and duplicates do not matter).
struct Indexer {
    name: String,
    search: SearchService,
}

/// What an event asks the index to re-read: products by id (with the catalog version the
/// event announces) or by SKU. The payload is decoded with its producer's type.
#[derive(Debug, Default, PartialEq)]
struct References {
    products: Vec<String>,
    skus: Vec<String>,
    version: Option<i64>,
}

fn references(event: &Event) -> anyhow::Result<References> {
    use mercato_events::catalog::{ProductCreated, ProductUpdated};
    use mercato_events::inventory::{Adjusted, Committed, LowStock, Released, Reserved};
    let product = |id: String, version: i64| References {
        products: vec![id],
        version: Some(version),
        ..References::default()
    };
    let skus = |skus: Vec<String>| References {
        skus,
        ..References::default()
    };
    let lines = |lines: Vec<mercato_events::inventory::StockLine>| {
        skus(lines.into_iter().map(|l| l.sku).collect())
    };
    let mut r = match event.event_type.as_str() {
        ProductCreated::TYPE => {
            let p: ProductCreated = event.decode()?;
            product(p.product_id, p.version)
        }
        ProductUpdated::TYPE => {
            let p: ProductUpdated = event.decode()?;
            product(p.product_id, p.version)
        }
        Reserved::TYPE => lines(event.decode::<Reserved>()?.lines),
        Released::TYPE => lines(event.decode::<Released>()?.lines),
        Committed::TYPE => lines(event.decode::<Committed>()?.lines),
        Adjusted::TYPE => skus(vec![event.decode::<Adjusted>()?.sku]),
        LowStock::TYPE => skus(vec![event.decode::<LowStock>()?.sku]),
        _ => References::default(),
    };
    r.products
        .retain(|p| mercato_kernel::id::is_valid("prd", p));
    Ok(r)
}

#[async_trait::async_trait]
impl EventHandler for Indexer {
    fn name(&self) -> &str {
        &self.name
    }

    fn interested_in(&self, event_type: &str) -> bool {
        CATALOG_EVENTS.contains(&event_type) || INVENTORY_EVENTS.contains(&event_type)
    }

    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let engine = self
            .search
            .engine()
            .ok_or_else(|| anyhow::anyhow!("the search index is not open"))?;
        let slack = i64::try_from(REPLAY_SLACK.as_micros()).unwrap_or(i64::MAX);
        if event.occurred_at.as_micros() < engine.rebuilt_at().saturating_sub(slack) {
            return Ok(());
        }
        let References {
            mut products,
            skus,
            version,
        } = references(event)?;
        if !skus.is_empty() {
            let found = self
                .search
                .inner
                .catalog
                .skus(&skus)
                .await
                .map_err(|e| anyhow::anyhow!("resolving skus: {e}"))?;
            products.extend(found.into_values().map(|s| s.product_id));
        }
        products.sort();
        products.dedup();
        // A catalog event about a version the index already has needs no re-read (replays
        // after a rebuild, bulk loads racing the rebuild that already covered them).
        if let Some(v) = version {
            let mut stale = Vec::with_capacity(products.len());
            for p in products {
                let e = engine.clone();
                let id = p.clone();
                let known = tokio::task::spawn_blocking(move || e.known_version(&id)).await??;
                if known.is_none_or(|k| k < v) {
                    stale.push(p);
                }
            }
            products = stale;
        }
        if products.is_empty() {
            return Ok(());
        }
        self.search.reindex(products).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(t: &str, data: serde_json::Value) -> Event {
        Event {
            id: "evt_1".into(),
            event_type: t.into(),
            occurred_at: mercato_kernel::Timestamp::from_micros(0),
            aggregate_type: "stock".into(),
            aggregate_id: "A-1".into(),
            correlation_id: None,
            causation_id: None,
            version: 1,
            data,
        }
    }

    #[test]
    fn references_come_from_the_typed_payloads() {
        let id = mercato_kernel::id::new_id("prd");
        let r = references(&event(
            "catalog.product_updated",
            json!({"product_id": id, "seller_id": "usr_1", "version": 4, "reason": "review"}),
        ))
        .expect("decodes");
        assert_eq!((r.products, r.version), (vec![id], Some(4)));
        let r = references(&event(
            "inventory.reserved",
            json!({"checkout_id": "chk_1", "lines": [{"sku": "B", "warehouse_id": "wh_1", "quantity": 1},
                                                     {"sku": "C", "warehouse_id": "wh_1", "quantity": 2}]}),
        ))
        .expect("decodes");
        assert_eq!(r.skus, vec!["B", "C"]);
        let r = references(&event(
            "catalog.product_created",
            json!({"product_id": "not-an-id", "seller_id": "usr_1", "version": 1, "reason": "created"}),
        ))
        .expect("decodes");
        assert!(r.products.is_empty());
        assert!(references(&event("inventory.adjusted", json!({"sku": "A-1"}))).is_err());
        assert_eq!(
            references(&event("order.created", json!("nonsense"))).expect("ignored"),
            References::default()
        );
    }

    #[test]
    fn credentials_do_not_change_the_source() {
        assert_eq!(
            source_of("postgres://u:secret@db:5432/shop"),
            source_of("postgres://u:other@db:5432/shop")
        );
        assert_ne!(
            source_of("postgres://db/shop"),
            source_of("postgres://db/other")
        );
    }
}
