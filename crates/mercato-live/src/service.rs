//! Use cases of live streams: streams and their products, comments with rate limits and
//! moderation, subscriptions, and the consumer turning catalog/inventory events into `product`
//! events. Every feed event is committed first and fanned out after.

use crate::fanout::Fanout;
use crate::hub::{Hub, HubConfig, Subscription};
use crate::model::{self, StreamAction, StreamEvent, StreamStatus};
use crate::store::{CommentRow, LiveStore, ShownProduct, StreamRow};
use mercato_events::catalog::ProductUpdated;
use mercato_events::inventory::{Adjusted, Committed, Released, Reserved};
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::clock::SharedClock;
use mercato_kernel::config::Settings;
use mercato_kernel::db::StoreError;
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::outbox::{Event, EventHandler, EventPayload as _};
use mercato_kernel::ratelimit::{Decision, Quota, RateLimiter};
use mercato_kernel::{Money, Timestamp};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A product's facts as a stream shows them (price and stock of each variant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ProductFacts {
    pub product_id: String,
    pub name: String,
    pub seller_id: String,
    pub variants: Vec<VariantFacts>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VariantFacts {
    pub sku: String,
    pub price: Money,
    pub sale_price: Option<Money>,
    /// Sellable units across warehouses; `null` while untracked.
    pub available: Option<i64>,
}

/// A person as comments show them.
#[derive(Clone, Debug)]
pub struct Person {
    pub name: Option<String>,
}

/// What the live system needs to know from the rest of the shop (catalog and identity), wired
/// by the application; the live system never reads their tables.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Facts of the products among `ids` that exist (drafts excluded).
    async fn products(&self, ids: &[String]) -> anyhow::Result<Vec<ProductFacts>>;
    /// The products the SKUs belong to (unknown SKUs skipped).
    async fn products_of_skus(&self, skus: &[String]) -> anyhow::Result<Vec<String>>;
    /// A user, `None` when unknown.
    async fn person(&self, user_id: &str) -> anyhow::Result<Option<Person>>;
}

/// Settings of the live system.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub hub: HubConfig,
    pub retry: Duration,
    pub keepalive: Duration,
    pub per_second: u32,
    pub per_minute: u32,
}

impl LiveConfig {
    pub fn from_settings(s: &Settings) -> LiveConfig {
        LiveConfig {
            hub: HubConfig {
                replay: Duration::from_secs(s.live_replay_secs.max(1)),
                replay_max: usize::try_from(s.live_replay_max_events.max(1)).unwrap_or(10_000),
                buffer: usize::try_from(s.live_subscriber_buffer.clamp(1, 1 << 20)).unwrap_or(256),
                poll: Duration::from_millis(s.live_poll_ms.max(10)),
                viewers_every: Duration::from_secs(s.live_viewers_every_secs.max(1)),
            },
            retry: Duration::from_millis(s.live_retry_ms),
            keepalive: Duration::from_secs(s.live_keepalive_secs.max(1)),
            per_second: s.live_comments_per_second.max(1),
            per_minute: s.live_comments_per_minute.max(1),
        }
    }
}

pub struct Inner {
    pub store: LiveStore,
    pub hub: Hub,
    pub fanout: Arc<dyn Fanout>,
    pub clock: SharedClock,
    pub limiter: Arc<dyn RateLimiter>,
    pub directory: Arc<dyn Directory>,
    pub streams: Arc<mercato_kernel::streams::StreamLimits>,
    pub shutdown: mercato_kernel::shutdown::Shutdown,
    pub cfg: LiveConfig,
}

/// The live system (cheap to clone).
#[derive(Clone)]
pub struct Live(pub Arc<Inner>);

/// A stream as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StreamView {
    pub id: String,
    pub seller_id: String,
    pub title: String,
    pub status: StreamStatus,
    pub starts_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The stream's products with their price and stock as last announced.
    pub products: Vec<ProductFacts>,
    pub pinned_product_id: Option<String>,
    /// Subscribers of the stream on the node that answers.
    pub viewers: usize,
    /// The id of the stream's newest feed event (0 before the first).
    pub last_event_id: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UserRef {
    pub id: String,
    pub name: Option<String>,
}

/// A comment as the API and the feed show it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CommentView {
    pub id: String,
    pub stream_id: String,
    /// Increasing per stream: the comment's feed event id (`id:` of its SSE frame).
    pub seq: i64,
    pub user: UserRef,
    pub body: String,
    pub at: Timestamp,
}

impl From<&CommentRow> for CommentView {
    fn from(c: &CommentRow) -> CommentView {
        CommentView {
            id: c.id.clone(),
            stream_id: c.stream_id.clone(),
            seq: c.seq,
            user: UserRef {
                id: c.user_id.clone(),
                name: c.user_name.clone(),
            },
            body: c.body.clone(),
            at: Timestamp::from_micros(c.at),
        }
    }
}

/// A new stream, validated by the service.
pub struct NewStream {
    pub title: String,
    pub product_ids: Vec<String>,
    pub starts_at: Option<Timestamp>,
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::from(e)
}

fn unexpected(e: anyhow::Error) -> ApiError {
    ApiError::internal(e)
}

impl Live {
    pub fn new(
        store: LiveStore,
        hub: Hub,
        fanout: Arc<dyn Fanout>,
        kernel: &mercato_kernel::Kernel,
        directory: Arc<dyn Directory>,
        shutdown: mercato_kernel::shutdown::Shutdown,
        cfg: LiveConfig,
    ) -> Live {
        Live(Arc::new(Inner {
            store,
            hub,
            fanout,
            clock: kernel.clock.clone(),
            limiter: kernel.rate_limiter.clone(),
            directory,
            streams: kernel.streams.clone(),
            shutdown,
            cfg,
        }))
    }

    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }

    pub fn config(&self) -> &LiveConfig {
        &self.0.cfg
    }

    fn now(&self) -> Timestamp {
        self.0.clock.now()
    }

    async fn publish(&self, ev: StreamEvent) {
        self.0.fanout.publish(ev).await;
    }

    /// A stream or 404.
    pub async fn stream(&self, id: &str) -> Result<StreamRow, ApiError> {
        // Nothing that is not a stream id can name one (and a NUL byte never reaches SQL).
        if !mercato_kernel::id::is_valid("lst", id) {
            return Err(ApiError::not_found());
        }
        self.0
            .store
            .stream(id)
            .await
            .map_err(store_err)?
            .ok_or_else(ApiError::not_found)
    }

    /// The stream if `who` may run it (its seller, or an admin): 404 unknown, 403 otherwise.
    pub async fn owned(&self, who: &Principal, id: &str) -> Result<StreamRow, ApiError> {
        let s = self.stream(id).await?;
        if who.role == Role::Admin || who.subject == s.seller_id {
            Ok(s)
        } else {
            Err(ApiError::forbidden().detail("only the stream's seller or an admin may do this"))
        }
    }

    pub async fn view(&self, s: &StreamRow) -> Result<StreamView, ApiError> {
        let products = self
            .0
            .store
            .products(&s.id)
            .await
            .map_err(store_err)?
            .iter()
            .filter_map(|p| serde_json::from_str::<ProductFacts>(&p.facts).ok())
            .collect();
        Ok(StreamView {
            id: s.id.clone(),
            seller_id: s.seller_id.clone(),
            title: s.title.clone(),
            status: s.status,
            starts_at: s.starts_at.map(Timestamp::from_micros),
            started_at: s.started_at.map(Timestamp::from_micros),
            ended_at: s.ended_at.map(Timestamp::from_micros),
            created_at: Timestamp::from_micros(s.created_at),
            products,
            pinned_product_id: s.pinned_product_id.clone(),
            viewers: self.0.hub.viewers(&s.id),
            last_event_id: s.last_seq,
        })
    }

    /// Facts of each id in order, or 422 naming the first unknown one (`field[i]`).
    async fn facts_of(
        &self,
        ids: &[String],
        field: &str,
        indexed: bool,
    ) -> Result<Vec<ProductFacts>, ApiError> {
        let found = self.0.directory.products(ids).await.map_err(unexpected)?;
        let by_id: HashMap<&str, &ProductFacts> =
            found.iter().map(|f| (f.product_id.as_str(), f)).collect();
        let mut out = Vec::with_capacity(ids.len());
        let mut err: Option<ApiError> = None;
        for (i, id) in ids.iter().enumerate() {
            match by_id.get(id.as_str()) {
                Some(f) => out.push((*f).clone()),
                None => {
                    let name = if indexed {
                        format!("{field}[{i}]")
                    } else {
                        field.to_owned()
                    };
                    err = Some(match err {
                        None => ApiError::invalid(name, "no such product"),
                        Some(e) => e.field(name, "no such product"),
                    });
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    pub async fn create(&self, who: &Principal, req: NewStream) -> Result<StreamRow, ApiError> {
        let mut err: Option<ApiError> = None;
        let mut fail = |field: String, msg: &str| {
            err = Some(match err.take() {
                None => ApiError::invalid(field, msg),
                Some(e) => e.field(field, msg),
            });
        };
        let title = match model::title(&req.title) {
            Ok(t) => t,
            Err(m) => {
                fail("title".into(), m);
                String::new()
            }
        };
        if req.product_ids.len() > model::MAX_PRODUCTS {
            fail("product_ids".into(), "at most 50 products");
        }
        let mut seen = BTreeSet::new();
        for (i, p) in req.product_ids.iter().enumerate() {
            if !seen.insert(p.as_str()) {
                fail(format!("product_ids[{i}]"), "listed twice");
            }
        }
        let now = self.now();
        if let Some(e) = err {
            return Err(e);
        }
        let facts = self.facts_of(&req.product_ids, "product_ids", true).await?;
        let live = req.starts_at.is_none_or(|t| t <= now);
        let row = StreamRow {
            id: mercato_kernel::id::new_id("lst"),
            seller_id: who.subject.clone(),
            title,
            status: if live {
                StreamStatus::Live
            } else {
                StreamStatus::Scheduled
            },
            starts_at: req.starts_at.map(Timestamp::as_micros),
            started_at: live.then(|| now.as_micros()),
            ended_at: None,
            pinned_product_id: None,
            last_seq: 0,
            created_at: now.as_micros(),
        };
        let products: Vec<(String, String)> = facts
            .iter()
            .map(|f| {
                (
                    f.product_id.clone(),
                    serde_json::to_string(f).unwrap_or_else(|_| "{}".into()),
                )
            })
            .collect();
        self.0
            .store
            .insert_stream(&row, &products, now)
            .await
            .map_err(store_err)?;
        metrics::counter!("live_streams_created_total").increment(1);
        Ok(row)
    }

    pub async fn list(
        &self,
        status: Option<StreamStatus>,
        seller: Option<&str>,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<StreamRow>, ApiError> {
        self.0
            .store
            .list(status, seller, before, limit)
            .await
            .map_err(store_err)
    }

    /// Starts or ends a stream `who` runs.
    pub async fn act(
        &self,
        who: &Principal,
        id: &str,
        action: StreamAction,
    ) -> Result<StreamRow, ApiError> {
        let s = self.owned(who, id).await?;
        let to = s.status.transition(action).map_err(|e| {
            ApiError::new(Code::StreamTransition).detail(format!(
                "a {} stream cannot be {}",
                e.from.as_str(),
                match e.action {
                    StreamAction::Start => "started",
                    StreamAction::End => "ended",
                }
            ))
        })?;
        let product_ids = self
            .0
            .store
            .products(&s.id)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|p| p.product_id)
            .collect();
        let ended = match self
            .0
            .store
            .transition(&s, to, product_ids, self.now())
            .await
        {
            Ok(ev) => ev,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::new(Code::StreamTransition)
                    .detail("the stream's status changed meanwhile; read it again"));
            }
            Err(e) => return Err(store_err(e)),
        };
        if let Some(ev) = ended {
            self.publish(ev).await;
        }
        self.stream(id).await
    }

    /// Checks everything about posting in a stream that does not depend on the body: the
    /// stream exists, `who` is not banned from it, and it is live (so a refused post spends no
    /// quota; the insert checks liveness again).
    pub async fn may_comment(&self, who: &Principal, stream_id: &str) -> Result<(), ApiError> {
        let s = self.stream(stream_id).await?;
        if self
            .0
            .store
            .is_banned(&s.id, &who.subject)
            .await
            .map_err(store_err)?
        {
            return Err(ApiError::new(Code::Banned)
                .detail("a moderator of this stream banned you from posting"));
        }
        if s.status != StreamStatus::Live {
            return Err(
                ApiError::new(Code::StreamNotLive).detail("comments open when the stream is live")
            );
        }
        Ok(())
    }

    /// Posts a comment (after [`Live::may_comment`]): validated, rate limited, durable, then
    /// fanned out.
    pub async fn comment(
        &self,
        who: &Principal,
        stream_id: &str,
        body: &str,
    ) -> Result<CommentView, ApiError> {
        let body = model::comment_body(body).map_err(|m| ApiError::invalid("body", m))?;
        let now = self.now();
        // At most `per_minute` in any 60 s, counted from the durable comments (exact, and the
        // same on every node); checked before the per-second quota is spent.
        let window = Duration::from_secs(60);
        let (n, oldest) = self
            .0
            .store
            .recent_comments(stream_id, &who.subject, now.minus(window).as_micros())
            .await
            .map_err(store_err)?;
        if n >= i64::from(self.0.cfg.per_minute) {
            let free_at = Timestamp::from_micros(oldest.unwrap_or(now.as_micros())).plus(window);
            let wait = free_at.since(now).max(Duration::from_secs(1));
            return Err(Decision {
                allowed: false,
                limit: self.0.cfg.per_minute,
                remaining: 0,
                reset_after: wait,
                retry_after: wait,
            }
            .into_error()
            .detail(format!(
                "at most {} comments per minute in one stream",
                self.0.cfg.per_minute
            )));
        }
        let d = self
            .0
            .limiter
            .check(
                &format!("live:comment:{stream_id}:{}", who.subject),
                Quota::new(self.0.cfg.per_second, Duration::from_secs(1)),
                1,
            )
            .await;
        if !d.allowed {
            return Err(d.into_error().detail(format!(
                "at most {} comment(s) per second in one stream",
                self.0.cfg.per_second
            )));
        }
        let name = self
            .0
            .directory
            .person(&who.subject)
            .await
            .map_err(unexpected)?
            .and_then(|p| p.name);
        let mut row = CommentRow {
            id: mercato_kernel::id::new_id("lcm"),
            stream_id: stream_id.to_owned(),
            seq: 0,
            user_id: who.subject.clone(),
            user_name: name,
            body,
            at: now.as_micros(),
            deleted: false,
        };
        let ev = self
            .0
            .store
            .insert_comment(
                &mut row,
                |c| serde_json::to_string(&CommentView::from(c)).unwrap_or_else(|_| "{}".into()),
                now,
            )
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::new(Code::StreamNotLive).detail("comments open when the stream is live")
            })?;
        metrics::counter!("live_comments_total").increment(1);
        self.publish(ev).await;
        Ok(CommentView::from(&row))
    }

    /// Visible comments after `since`, oldest first (`limit + 1` rows).
    pub async fn comments(
        &self,
        stream_id: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<CommentView>, ApiError> {
        let s = self.stream(stream_id).await?;
        Ok(self
            .0
            .store
            .comments_since(&s.id, since, limit)
            .await
            .map_err(store_err)?
            .iter()
            .map(CommentView::from)
            .collect())
    }

    /// Deletes a comment (its stream's seller or an admin) and pushes `comment_deleted`.
    pub async fn delete_comment(&self, who: &Principal, id: &str) -> Result<(), ApiError> {
        if !mercato_kernel::id::is_valid("lcm", id) {
            return Err(ApiError::not_found());
        }
        let c = self
            .0
            .store
            .comment(id)
            .await
            .map_err(store_err)?
            .ok_or_else(ApiError::not_found)?;
        self.owned(who, &c.stream_id).await?;
        if let Some(ev) = self
            .0
            .store
            .delete_comment(&c, &who.subject, self.now())
            .await
            .map_err(store_err)?
        {
            self.publish(ev).await;
        }
        Ok(())
    }

    /// Bans a user from posting in a stream `who` runs (after [`Live::owned`]).
    pub async fn ban(
        &self,
        who: &Principal,
        stream_id: &str,
        user_id: &str,
    ) -> Result<Timestamp, ApiError> {
        let user_id = user_id.trim();
        if !mercato_kernel::id::is_valid("usr", user_id) {
            return Err(ApiError::invalid("user_id", "must be a user id (usr_…)"));
        }
        if self
            .0
            .directory
            .person(user_id)
            .await
            .map_err(unexpected)?
            .is_none()
        {
            return Err(ApiError::invalid("user_id", "no such user"));
        }
        let at = self
            .0
            .store
            .ban(stream_id, user_id, &who.subject, self.now())
            .await
            .map_err(store_err)?;
        Ok(Timestamp::from_micros(at))
    }

    /// Pins a product in a stream `who` runs (after [`Live::owned`]) and pushes `pinned`.
    pub async fn pin(&self, stream: &StreamRow, product_id: &str) -> Result<StreamRow, ApiError> {
        let facts = self
            .facts_of(&[product_id.to_owned()], "product_id", false)
            .await?;
        let Some(f) = facts.into_iter().next() else {
            return Err(ApiError::invalid("product_id", "no such product"));
        };
        let facts = serde_json::to_string(&f).unwrap_or_else(|_| "{}".into());
        let data = serde_json::json!({"product_id": f.product_id, "product": f}).to_string();
        let ev = self
            .0
            .store
            .pin(&stream.id, product_id, &facts, data, self.now())
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::new(Code::StreamNotLive).detail("an ended stream cannot pin products")
            })?;
        self.publish(ev).await;
        self.stream(&stream.id).await
    }

    /// Subscribes to a stream's feed after `last` (404 for an unknown stream).
    pub async fn subscribe(
        &self,
        stream_id: &str,
        last: Option<i64>,
    ) -> Result<Subscription, ApiError> {
        let s = self.stream(stream_id).await?;
        self.0.hub.subscribe(&s.id, last).await.map_err(unexpected)
    }

    /// Applies one catalog or inventory event: the pinned products whose price or stock
    /// changed get a `product` event in every stream showing them.
    async fn product_event(&self, consumer: &str, event: &Event) -> anyhow::Result<()> {
        let ids: Vec<String> = match event.event_type.as_str() {
            t if t == ProductUpdated::TYPE => vec![event.decode::<ProductUpdated>()?.product_id],
            t => {
                let skus: Vec<String> = if t == Adjusted::TYPE {
                    vec![event.decode::<Adjusted>()?.sku]
                } else if t == Reserved::TYPE {
                    event
                        .decode::<Reserved>()?
                        .lines
                        .into_iter()
                        .map(|l| l.sku)
                        .collect()
                } else if t == Released::TYPE {
                    event
                        .decode::<Released>()?
                        .lines
                        .into_iter()
                        .map(|l| l.sku)
                        .collect()
                } else if t == Committed::TYPE {
                    event
                        .decode::<Committed>()?
                        .lines
                        .into_iter()
                        .map(|l| l.sku)
                        .collect()
                } else {
                    return Ok(());
                };
                self.0.directory.products_of_skus(&skus).await?
            }
        };
        let shown = self.0.store.shown(&ids).await?;
        if shown.is_empty() {
            return Ok(());
        }
        let wanted: Vec<String> = shown
            .iter()
            .map(|s| s.product_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let facts: HashMap<String, ProductFacts> = self
            .0
            .directory
            .products(&wanted)
            .await?
            .into_iter()
            .map(|f| (f.product_id.clone(), f))
            .collect();
        let mut changes = Vec::new();
        for s in shown {
            let Some(new) = facts.get(&s.product_id) else {
                continue;
            };
            let old = serde_json::from_str::<ProductFacts>(&s.facts).ok();
            let changed = what_changed(old.as_ref(), new);
            if changed.is_empty() {
                continue;
            }
            let data = serde_json::json!({
                "product_id": new.product_id, "changed": changed, "product": new,
            })
            .to_string();
            changes.push((
                ShownProduct {
                    facts: serde_json::to_string(new)?,
                    ..s
                },
                data,
            ));
        }
        if changes.is_empty() {
            return Ok(());
        }
        let evs = self
            .0
            .store
            .product_changes(consumer, &event.id, &changes, self.now())
            .await?;
        for ev in evs {
            self.publish(ev).await;
        }
        Ok(())
    }
}

/// `price` and/or `stock` when those facts differ (a rename alone is not news for viewers).
pub fn what_changed(old: Option<&ProductFacts>, new: &ProductFacts) -> Vec<&'static str> {
    let Some(old) = old else {
        return vec!["price", "stock"];
    };
    let price = |f: &ProductFacts| -> Vec<(String, Money, Option<Money>)> {
        f.variants
            .iter()
            .map(|v| (v.sku.clone(), v.price, v.sale_price))
            .collect()
    };
    let stock = |f: &ProductFacts| -> Vec<(String, Option<i64>)> {
        f.variants
            .iter()
            .map(|v| (v.sku.clone(), v.available))
            .collect()
    };
    let mut out = Vec::new();
    if price(old) != price(new) {
        out.push("price");
    }
    if stock(old) != stock(new) {
        out.push("stock");
    }
    out
}

/// The bus consumer `live.products`: price and stock changes of shown products.
pub struct ProductFeed(pub Live);

const FEED: &str = "live.products";

#[async_trait::async_trait]
impl EventHandler for ProductFeed {
    fn name(&self) -> &str {
        FEED
    }

    fn interested_in(&self, event_type: &str) -> bool {
        [
            ProductUpdated::TYPE,
            Adjusted::TYPE,
            Reserved::TYPE,
            Released::TYPE,
            Committed::TYPE,
        ]
        .contains(&event_type)
    }

    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        self.0.product_event(FEED, event).await
    }
}
