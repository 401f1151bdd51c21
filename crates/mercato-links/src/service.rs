//! Use cases of short links: create, read, list, change and delete with ownership; resolve a
//! code for the redirect (cache first); stats from rollups; the workers (click batcher, change
//! poller, raw-click retention).

use crate::cache::{CachedLink, LinkCache};
use crate::clicks::{self, Click, ClickQueue, DAY, HOUR, MINUTE};
use crate::model::{self, SlugError, Utm};
use crate::store::{LinkRow, LinksStore};
use mercato_events::orders::OrderConfirmed;
use mercato_kernel::auth::Principal;
use mercato_kernel::clock::SharedClock;
use mercato_kernel::config::Settings;
use mercato_kernel::db::{Db, StoreError};
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::outbox::{Event, EventHandler, EventPayload as _};
use mercato_kernel::shutdown::Shutdown;
use mercato_kernel::{Currency, Money, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// How far back the change poller looks behind the newest change it has seen (clock skew
/// between nodes and transactions committing out of order).
const LOOK_BACK: i64 = 3_000_000;

/// Settings of the links system.
#[derive(Clone, Debug)]
pub struct LinksConfig {
    pub base_url: Option<String>,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub capacity: u64,
    pub poll: Duration,
    pub queue: usize,
    pub flush: Duration,
    pub retention: Duration,
    pub country_header: Option<String>,
    /// The dedicated short-link host name (`links_host`), if any.
    pub links_host: Option<String>,
    /// Whether a dedicated listener (`links_addr`) serves the redirect.
    pub dedicated_addr: bool,
    /// The main listener's address and the base URL's host.
    pub main_hosts: Vec<String>,
    /// A MaxMind country database to read click countries from.
    pub geoip_db: Option<String>,
}

fn host_of_url(b: &str) -> Option<String> {
    url::Url::parse(b).ok().and_then(|u| {
        u.host_str().map(|h| match u.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        })
    })
}

impl LinksConfig {
    pub fn from_settings(s: &Settings) -> LinksConfig {
        let base_url = s
            .links_base_url
            .clone()
            .map(|b| b.trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty());
        let links_host = s
            .links_host
            .as_deref()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        let dedicated_addr = s
            .links_addr
            .as_deref()
            .is_some_and(|a| !a.trim().is_empty());
        LinksConfig {
            base_url,
            positive_ttl: Duration::from_secs(s.links_cache_ttl_secs.max(1)),
            negative_ttl: Duration::from_secs(s.links_negative_ttl_secs.max(1)),
            capacity: s.links_cache_capacity,
            poll: Duration::from_millis(s.links_poll_ms.max(10)),
            queue: usize::try_from(s.links_click_queue).unwrap_or(100_000),
            flush: Duration::from_millis(s.links_flush_ms.clamp(1, 1000)),
            retention: Duration::from_secs(s.links_click_retention_days.max(1) * 86_400),
            country_header: Some(s.links_country_header.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
            links_host,
            dedicated_addr,
            main_hosts: vec![s.addr.clone()],
            geoip_db: s.links_geoip_db.clone().filter(|p| !p.trim().is_empty()),
        }
    }

    /// Whether short links are served on a host or listener of their own (then the main
    /// listener's root does not answer codes).
    pub fn dedicated(&self) -> bool {
        self.links_host.is_some() || self.dedicated_addr
    }
}

pub struct Inner {
    pub store: LinksStore,
    pub cache: LinkCache,
    pub clock: SharedClock,
    pub cfg: LinksConfig,
    pub queue: ClickQueue,
    pub rx: std::sync::Mutex<Option<mpsc::Receiver<Click>>>,
    /// Secret behind the daily visitor salts (per process).
    pub secret: [u8; 32],
    /// The dedicated listener's bound address (`links_addr`, port 0 resolved).
    pub dedicated_bound: std::sync::OnceLock<String>,
    /// Click countries from a MaxMind database, when configured.
    pub geoip: Option<crate::geo::GeoIp>,
}

/// The links system (cheap to clone).
#[derive(Clone)]
pub struct Links(pub Arc<Inner>);

/// A link as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LinkView {
    pub id: String,
    pub code: String,
    pub short_url: String,
    /// The destination as given.
    pub url: String,
    /// Where the redirect sends visitors (UTM parameters merged).
    pub destination: String,
    pub expires_at: Option<Timestamp>,
    pub max_clicks: Option<i64>,
    pub clicks: i64,
    pub tags: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub utm: Option<Utm>,
    /// `"302"` or `"301"`.
    pub redirect: String,
    pub owner_id: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A new link.
#[derive(Clone, Debug, Default)]
pub struct NewLink {
    pub url: String,
    pub slug: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub max_clicks: Option<i64>,
    pub tags: Vec<String>,
    pub utm: Option<Utm>,
    pub redirect: Option<String>,
}

/// A change to a link; `Some(None)` clears a nullable field.
#[derive(Clone, Debug, Default)]
pub struct LinkPatch {
    pub url: Option<String>,
    pub expires_at: Option<Option<Timestamp>>,
    pub max_clicks: Option<Option<i64>>,
    pub tags: Option<Vec<String>>,
    pub utm: Option<Option<Utm>>,
    pub redirect: Option<String>,
}

/// What the redirect does for a code.
pub enum Resolution {
    Redirect { status: u16, location: String },
    NotFound,
    Gone,
}

/// The request facts a click is made of.
pub struct ClickFacts<'a> {
    pub user_agent: &'a str,
    pub referer: Option<&'a str>,
    pub country: Option<&'a str>,
    pub ip: std::net::IpAddr,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Point {
    pub at: Timestamp,
    pub clicks: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Breakdown {
    pub value: String,
    pub clicks: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub clicks: i64,
    pub unique_visitors: i64,
    pub from: Timestamp,
    pub to: Timestamp,
    pub interval: String,
    pub series: Vec<Point>,
    pub referrers: Vec<Breakdown>,
    pub countries: Vec<Breakdown>,
    pub browsers: Vec<Breakdown>,
    pub os: Vec<Breakdown>,
    pub devices: Vec<Breakdown>,
    /// Paid orders whose cart came through this link (`attribution`), confirmed in the window.
    pub orders: i64,
    /// Their totals, one entry per currency (empty when none).
    pub revenue: Vec<Money>,
}

fn internal(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(),
        StoreError::Unavailable(m) => ApiError::new(Code::Unavailable).detail(m).retry_after(1),
        other => ApiError::internal(anyhow::anyhow!("{other}")),
    }
}

fn invalid_url(msg: &str) -> ApiError {
    ApiError::new(Code::InvalidUrl)
        .detail(msg)
        .field("url", msg)
}

fn redirect_status(r: Option<&str>) -> Result<i64, ApiError> {
    match r {
        None | Some("302") => Ok(302),
        Some("301") => Ok(301),
        Some(_) => Err(ApiError::invalid("redirect", "must be \"302\" or \"301\"")),
    }
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, ApiError> {
    if tags.len() > 20 {
        return Err(ApiError::invalid("tags", "at most 20 tags"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        let t = t.trim();
        if t.is_empty() || t.chars().count() > 64 {
            return Err(ApiError::invalid(
                format!("tags[{i}]"),
                "a tag is 1 to 64 characters",
            ));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

fn check_utm(utm: &Utm) -> Result<(), ApiError> {
    for v in [
        &utm.source,
        &utm.medium,
        &utm.campaign,
        &utm.term,
        &utm.content,
    ]
    .into_iter()
    .flatten()
    {
        if v.chars().count() > 200 {
            return Err(ApiError::invalid(
                "utm",
                "a UTM value is at most 200 characters",
            ));
        }
    }
    Ok(())
}

impl Links {
    pub fn new(db: Db, clock: SharedClock, cfg: LinksConfig) -> anyhow::Result<Links> {
        let geoip = cfg
            .geoip_db
            .as_deref()
            .map(crate::geo::GeoIp::open)
            .transpose()?;
        let store = LinksStore::new(db);
        let cache = LinkCache::new(
            store.clone(),
            cfg.capacity,
            cfg.positive_ttl,
            cfg.negative_ttl,
        );
        let (queue, rx) = clicks::channel(cfg.queue);
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        Ok(Links(Arc::new(Inner {
            store,
            cache,
            clock,
            cfg,
            queue,
            rx: std::sync::Mutex::new(Some(rx)),
            secret,
            dedicated_bound: std::sync::OnceLock::new(),
            geoip,
        })))
    }

    /// Tells the links system where its dedicated listener is bound (short URLs then point
    /// there unless `links_base_url` or `links_host` says otherwise).
    pub fn set_dedicated_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.0.dedicated_bound.set(addr.to_string());
    }

    /// Whether the main listener's root serves short-link codes.
    pub fn served_on_main_root(&self) -> bool {
        !self.0.cfg.dedicated()
    }

    /// The dedicated short-link host name, if configured.
    pub fn links_host(&self) -> Option<&str> {
        self.0.cfg.links_host.as_deref()
    }

    pub fn store(&self) -> &LinksStore {
        &self.0.store
    }

    pub fn cache(&self) -> &LinkCache {
        &self.0.cache
    }

    pub fn queue(&self) -> &ClickQueue {
        &self.0.queue
    }

    /// The base of short URLs: the configured one, else the dedicated host or listener, else
    /// the request's own host.
    pub fn base_url(&self, request_host: Option<&str>) -> String {
        if let Some(b) = &self.0.cfg.base_url {
            return b.clone();
        }
        if let Some(h) = &self.0.cfg.links_host {
            return format!("http://{h}");
        }
        if let Some(a) = self.0.dedicated_bound.get() {
            return format!("http://{a}");
        }
        match request_host {
            Some(h) => format!("http://{h}"),
            None => format!("http://{}", self.0.cfg.addr_host()),
        }
    }

    pub fn view(&self, r: &LinkRow, base: &str) -> LinkView {
        let utm: Option<Utm> = serde_json::from_str(&r.utm).ok().flatten();
        LinkView {
            id: r.id.clone(),
            code: r.code.clone(),
            short_url: format!("{base}/{}", r.code),
            url: r.url.clone(),
            destination: r.destination.clone(),
            expires_at: r.expires_at.map(Timestamp::from_micros),
            max_clicks: r.max_clicks,
            clicks: r.clicks,
            tags: serde_json::from_str(&r.tags).unwrap_or_default(),
            utm,
            redirect: r.redirect_status.to_string(),
            owner_id: r.owner_id.clone(),
            created_at: Timestamp::from_micros(r.created_at),
            updated_at: Timestamp::from_micros(r.updated_at),
        }
    }

    /// The hosts destinations are checked against (loops) and recognised on (the shop).
    fn hosts(&self, request_host: Option<&str>) -> model::Hosts {
        let cfg = &self.0.cfg;
        let mut h = model::Hosts {
            short: Vec::new(),
            shop: cfg.main_hosts.clone(),
            shop_serves_codes: !cfg.dedicated(),
        };
        let base_host = cfg.base_url.as_deref().and_then(host_of_url);
        if cfg.dedicated() {
            h.short.extend(cfg.links_host.clone());
            h.short.extend(self.0.dedicated_bound.get().cloned());
            h.short.extend(base_host);
        } else {
            h.shop.extend(base_host);
        }
        if let Some(r) = request_host
            && !h.short.iter().any(|s| s.eq_ignore_ascii_case(r))
        {
            h.shop.push(r.to_owned());
        }
        h
    }

    /// Creates a link owned by `owner`. A custom slug that is taken is 409 `slug_taken`; a
    /// generated code that collides is drawn again.
    pub async fn create(
        &self,
        owner: &Principal,
        req: NewLink,
        request_host: Option<&str>,
    ) -> Result<LinkRow, ApiError> {
        let dest = model::check_url(req.url.trim(), &self.hosts(request_host))
            .map_err(|e| invalid_url(e.message()))?;
        let status = redirect_status(req.redirect.as_deref())?;
        let tags = check_tags(&req.tags)?;
        if let Some(m) = req.max_clicks
            && m < 1
        {
            return Err(ApiError::invalid("max_clicks", "must be at least 1"));
        }
        let now = self.0.clock.now();
        if let Some(e) = req.expires_at
            && e <= now
        {
            return Err(ApiError::invalid("expires_at", "must be in the future"));
        }
        if let Some(utm) = &req.utm {
            check_utm(utm)?;
        }
        if let Some(slug) = &req.slug {
            model::check_slug(slug).map_err(|e| match e {
                SlugError::Shape => ApiError::invalid("slug", "3 to 64 of A-Z, a-z, 0-9, _ and -"),
                SlugError::Reserved => {
                    ApiError::invalid("slug", "this word is reserved by the server's own routes")
                }
            })?;
        }
        let utm = req.utm.clone().unwrap_or_default();
        let mut row = LinkRow {
            id: mercato_kernel::id::new_id("lnk"),
            code: String::new(),
            owner_id: owner.subject.clone(),
            url: dest.url.to_string(),
            destination: String::new(),
            utm: serde_json::to_string(&req.utm).unwrap_or_else(|_| "null".into()),
            tags: serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into()),
            redirect_status: status,
            expires_at: req.expires_at.map(|t| t.as_micros()),
            max_clicks: req.max_clicks,
            clicks: 0,
            created_at: now.as_micros(),
            updated_at: now.as_micros(),
        };
        for _ in 0..8 {
            row.code = match &req.slug {
                Some(s) => s.clone(),
                None => model::generate_code(),
            };
            row.destination = model::destination(&dest, &utm, &row.code);
            match self.0.store.insert(&row, &tags, now).await {
                Ok(()) => {
                    // A negative entry for this code (asked before it existed) goes now.
                    self.0.cache.invalidate(&row.code).await;
                    return Ok(row);
                }
                Err(StoreError::Conflict(_)) if req.slug.is_some() => {
                    return Err(ApiError::new(Code::SlugTaken)
                        .detail(format!("the slug {} is taken", row.code))
                        .with("slug", row.code.clone()));
                }
                Err(StoreError::Conflict(_)) => {
                    metrics::counter!("links_code_collisions_total").increment(1);
                    continue;
                }
                Err(e) => return Err(internal(e)),
            }
        }
        Err(ApiError::internal(anyhow::anyhow!(
            "no free code after 8 attempts"
        )))
    }

    /// A link its caller may see (owner or admin); anything else is 404.
    pub async fn get(&self, who: &Principal, id: &str) -> Result<LinkRow, ApiError> {
        // Malformed ids (NUL bytes, SQL, 300 characters) are a 404 without a query.
        if !mercato_kernel::id::is_valid("lnk", id) {
            return Err(ApiError::not_found());
        }
        let row = self
            .0
            .store
            .by_id(id)
            .await
            .map_err(internal)?
            .ok_or_else(ApiError::not_found)?;
        if row.owner_id != who.subject && !who.is_admin() {
            return Err(ApiError::not_found());
        }
        Ok(row)
    }

    pub async fn list(
        &self,
        who: &Principal,
        tag: Option<&str>,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<LinkRow>, ApiError> {
        let owner = if who.is_admin() {
            None
        } else {
            Some(who.subject.as_str())
        };
        self.0
            .store
            .list(owner, tag, before, limit)
            .await
            .map_err(internal)
    }

    /// Applies a change; this node's cache forgets the code at once, other nodes within their
    /// poll interval.
    pub async fn update(
        &self,
        mut row: LinkRow,
        patch: LinkPatch,
        request_host: Option<&str>,
    ) -> Result<LinkRow, ApiError> {
        let now = self.0.clock.now();
        let mut utm: Option<Utm> = serde_json::from_str(&row.utm).ok().flatten();
        if let Some(u) = patch.utm {
            if let Some(u) = &u {
                check_utm(u)?;
            }
            utm = u;
        }
        let url = patch.url.clone().unwrap_or_else(|| row.url.clone());
        let dest = model::check_url(url.trim(), &self.hosts(request_host))
            .map_err(|e| invalid_url(e.message()))?;
        if let Some(r) = &patch.redirect {
            row.redirect_status = redirect_status(Some(r))?;
        }
        if let Some(e) = patch.expires_at {
            row.expires_at = e.map(|t| t.as_micros());
        }
        if let Some(m) = patch.max_clicks {
            if let Some(m) = m
                && m < 1
            {
                return Err(ApiError::invalid("max_clicks", "must be at least 1"));
            }
            row.max_clicks = m;
        }
        let tags = match &patch.tags {
            Some(t) => {
                let t = check_tags(t)?;
                row.tags = serde_json::to_string(&t).unwrap_or_else(|_| "[]".into());
                Some(t)
            }
            None => None,
        };
        row.url = dest.url.to_string();
        row.destination = model::destination(&dest, &utm.clone().unwrap_or_default(), &row.code);
        row.utm = serde_json::to_string(&utm).unwrap_or_else(|_| "null".into());
        row.updated_at = now.as_micros();
        self.0
            .store
            .update(&row, tags.as_deref(), now)
            .await
            .map_err(internal)?;
        self.0.cache.invalidate(&row.code).await;
        Ok(row)
    }

    pub async fn delete(&self, row: LinkRow) -> Result<(), ApiError> {
        let now = self.0.clock.now();
        self.0.store.delete(&row, now).await.map_err(internal)?;
        self.0.cache.invalidate(&row.code).await;
        Ok(())
    }

    /// The redirect's decision for `code`, from the cache (the database only on a miss). A GET
    /// counts against `max_clicks` and queues a click; a HEAD does neither.
    pub async fn resolve(&self, code: &str, facts: Option<ClickFacts<'_>>) -> Resolution {
        if !model::could_be_code(code) {
            return Resolution::NotFound;
        }
        let now = self.0.clock.now().as_micros();
        let link: Arc<CachedLink> = match self.0.cache.get(code, now).await {
            Ok(Some(l)) => l,
            Ok(None) => return Resolution::NotFound,
            Err(e) => {
                tracing::warn!(error = %e, "link lookup failed");
                return Resolution::NotFound;
            }
        };
        if link.expires_at.is_some_and(|e| e <= now) {
            return Resolution::Gone;
        }
        if let Some(facts) = facts {
            if let Some(max) = link.max_clicks {
                // Served clicks are counted before the redirect: the (max+1)th is refused.
                let before = link.clicks.fetch_add(1, Ordering::Relaxed);
                if before >= max {
                    link.clicks.fetch_sub(1, Ordering::Relaxed);
                    return Resolution::Gone;
                }
            } else {
                link.clicks.fetch_add(1, Ordering::Relaxed);
            }
            let visit = model::parse_agent(facts.user_agent);
            let day = clicks::bucket_start(now, DAY);
            self.0.queue.push(Click {
                link_id: link.id.clone(),
                at: now,
                referrer: model::referrer_domain(facts.referer),
                // A trusted CDN header first (the edge saw the real client), else the
                // GeoIP database.
                country: {
                    let c = model::country(facts.country);
                    match &self.0.geoip {
                        Some(g) if c == "unknown" => g.country(facts.ip).unwrap_or(c),
                        _ => c,
                    }
                },
                browser: visit.browser,
                os: visit.os,
                device: visit.device,
                bot: visit.bot,
                visitor: clicks::visitor_hash(
                    &self.0.secret,
                    day,
                    &facts.ip.to_string(),
                    facts.user_agent,
                ),
            });
        } else if link
            .max_clicks
            .is_some_and(|m| link.clicks.load(Ordering::Relaxed) >= m)
        {
            return Resolution::Gone;
        }
        Resolution::Redirect {
            status: link.status,
            location: link.destination.clone(),
        }
    }

    pub fn country_header(&self) -> Option<&str> {
        self.0.cfg.country_header.as_deref()
    }

    /// Stats of one link from its rollups.
    pub async fn stats(
        &self,
        row: &LinkRow,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        interval: &str,
        include_bots: bool,
    ) -> Result<Stats, ApiError> {
        let size = match interval {
            "minute" => MINUTE,
            "hour" => HOUR,
            "day" => DAY,
            _ => {
                return Err(ApiError::new(Code::InvalidQuery)
                    .detail("interval must be minute, hour or day"));
            }
        };
        let now = self.0.clock.now().as_micros();
        let to_us = to.map(|t| t.as_micros()).unwrap_or(now + 1);
        let default_span = match interval {
            "minute" => HOUR,
            "hour" => 2 * DAY,
            _ => 30 * DAY,
        };
        let from_us = from.map(|t| t.as_micros()).unwrap_or(to_us - default_span);
        if from_us >= to_us {
            return Err(ApiError::invalid("from", "from must be before to"));
        }
        // Whole buckets: from rounds down, to rounds up.
        let from_b = clicks::bucket_start(from_us, size);
        let to_b = clicks::bucket_start(to_us - 1, size) + size;
        if (to_b - from_b) / size > 10_000 {
            return Err(ApiError::invalid(
                "interval",
                "at most 10,000 intervals; use a larger interval",
            ));
        }
        let store = &self.0.store;
        let series_rows = store
            .rollups(&row.id, interval, "total", from_b, to_b, include_bots)
            .await
            .map_err(internal)?;
        let mut series: BTreeMap<i64, i64> = BTreeMap::new();
        for (at, _, n) in series_rows {
            *series.entry(at).or_default() += n;
        }
        let total = series.values().sum();
        let mut dims: HashMap<&str, Vec<Breakdown>> = HashMap::new();
        for dim in ["referrer", "country", "browser", "os", "device"] {
            let rows = store
                .rollups(&row.id, interval, dim, from_b, to_b, include_bots)
                .await
                .map_err(internal)?;
            let mut by: HashMap<String, i64> = HashMap::new();
            for (_, v, n) in rows {
                *by.entry(v).or_default() += n;
            }
            let mut list: Vec<Breakdown> = by
                .into_iter()
                .map(|(value, clicks)| Breakdown { value, clicks })
                .collect();
            list.sort_by(|a, b| b.clicks.cmp(&a.clicks).then(a.value.cmp(&b.value)));
            dims.insert(dim, list);
        }
        let unique = store
            .unique_visitors(
                &row.id,
                clicks::bucket_start(from_b, DAY),
                to_b,
                include_bots,
            )
            .await
            .map_err(internal)?;
        let attributed = store
            .attributed(&row.id, from_b, to_b)
            .await
            .map_err(internal)?;
        let orders = attributed.iter().map(|(_, n, _)| n).sum();
        let revenue = attributed
            .into_iter()
            .filter_map(|(c, _, total)| Currency::parse(&c).map(|c| Money::new(total, c)))
            .collect();
        let mut take = |d: &str| dims.remove(d).unwrap_or_default();
        Ok(Stats {
            clicks: total,
            unique_visitors: unique,
            from: Timestamp::from_micros(from_b),
            to: Timestamp::from_micros(to_b),
            interval: interval.to_owned(),
            series: series
                .into_iter()
                .map(|(at, clicks)| Point {
                    at: Timestamp::from_micros(at),
                    clicks,
                })
                .collect(),
            referrers: take("referrer"),
            countries: take("country"),
            browsers: take("browser"),
            os: take("os"),
            devices: take("device"),
            orders,
            revenue,
        })
    }

    /// One pass of the change poller: drops cached codes changed (by any node) since the
    /// watermark. Returns the new watermark.
    pub async fn poll_changes(
        &self,
        watermark: i64,
        applied: &mut HashMap<String, i64>,
    ) -> anyhow::Result<i64> {
        let rows = self
            .0
            .store
            .changed_since(watermark - LOOK_BACK)
            .await
            .map_err(|e| anyhow::anyhow!("polling link changes: {e}"))?;
        let mut newest = watermark;
        for (code, at) in rows {
            newest = newest.max(at);
            if applied.get(&code) != Some(&at) {
                self.0.cache.invalidate(&code).await;
                applied.insert(code, at);
            }
        }
        applied.retain(|_, at| *at > newest - 2 * LOOK_BACK);
        Ok(newest)
    }

    /// The background work of this node: the click batcher, the change poller and the
    /// raw-click retention sweep.
    pub fn spawn_workers(&self, shutdown: Shutdown) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        if let Some(rx) = self.0.rx.lock().ok().and_then(|mut g| g.take()) {
            let store = self.0.store.clone();
            let counters = self.0.queue.counters.clone();
            let every = self.0.cfg.flush;
            let mut stop = shutdown.clone();
            let (fwd_tx, fwd_rx) = mpsc::channel::<Click>(clicks::MAX_BATCH);
            // The batcher drains until the forwarder closes its channel at shutdown, so the
            // clicks queued before shutdown are written.
            handles.push(tokio::spawn(clicks::run_batcher(
                store, fwd_rx, counters, every,
            )));
            handles.push(tokio::spawn(async move {
                let mut rx = rx;
                loop {
                    tokio::select! {
                        c = rx.recv() => match c {
                            Some(c) => { if fwd_tx.send(c).await.is_err() { break; } }
                            None => break,
                        },
                        _ = stop.wait() => {
                            while let Ok(c) = rx.try_recv() {
                                if fwd_tx.send(c).await.is_err() { break; }
                            }
                            break;
                        }
                    }
                }
            }));
        }
        let me = self.clone();
        let mut stop = shutdown.clone();
        handles.push(tokio::spawn(async move {
            let mut watermark = me.0.clock.now().as_micros();
            let mut applied = HashMap::new();
            loop {
                match me.poll_changes(watermark, &mut applied).await {
                    Ok(w) => watermark = w,
                    Err(e) => tracing::warn!(error = %e, "link change poll failed"),
                }
                if stop.sleep(me.0.cfg.poll).await {
                    break;
                }
            }
        }));
        let me = self.clone();
        let mut stop = shutdown;
        handles.push(tokio::spawn(async move {
            loop {
                let before = me.0.clock.now().minus(me.0.cfg.retention).as_micros();
                match me.0.store.purge_clicks(before).await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "old raw clicks removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "raw click retention failed"),
                }
                if stop.sleep(Duration::from_secs(3600)).await {
                    break;
                }
            }
        }));
        handles
    }
}

/// The durable consumer name of shop attribution.
pub const ATTRIBUTION_CONSUMER: &str = "links-attribution";

/// Counts paid orders (`order.confirmed`) whose cart came through a short link.
pub struct Attribution(pub Links);

#[async_trait::async_trait]
impl EventHandler for Attribution {
    fn name(&self) -> &str {
        ATTRIBUTION_CONSUMER
    }

    fn interested_in(&self, event_type: &str) -> bool {
        event_type == OrderConfirmed::TYPE
    }

    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let e = event.decode::<OrderConfirmed>()?;
        let Some(code) = e.order.attribution.as_deref() else {
            return Ok(());
        };
        // The primary key on the order makes a redelivery a no-op.
        self.0
            .0
            .store
            .record_order(
                code,
                &e.order.order_id,
                e.order.total.amount,
                e.order.total.currency.as_str(),
                event.occurred_at.as_micros(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("recording an attributed order: {e}"))?;
        Ok(())
    }
}

impl LinksConfig {
    fn addr_host(&self) -> &str {
        self.main_hosts
            .first()
            .map(String::as_str)
            .unwrap_or("localhost")
    }
}
