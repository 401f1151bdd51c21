//! Flash-sale use cases: create a sale (setting its units aside from stock), the public view,
//! the waiting room (join, poll, token issue), the purchase gate carts and checkout ask, the
//! hold/release/commit steps checkout calls inside its own transactions, and the lifecycle
//! job (start, token expiry, end). Emits `flash_sale.started|sold_out|ended`.

use super::model::{
    FlashSale, FlashSaleAdmin, FlashSaleId, FlashSaleInput, Joined, SaleRow, SaleStatus,
    TicketStatus, TicketView, sign_token, token_id_of, verify_token,
};
use super::room::{RoomSale, WaitingRoom};
use super::store::{FlashSaleStore, NoToken};
use crate::catalog::CatalogService;
use crate::inventory::InventoryService;
use mercato_events::flash_sales::{FlashSaleEnded, FlashSaleSoldOut, FlashSaleStarted};
use mercato_kernel::db::{StoreError, Tx};
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::jobs::Outcome;
use mercato_kernel::outbox::{self, NewEvent};
use mercato_kernel::ratelimit::{Decision, Quota};
use mercato_kernel::{Kernel, Money, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum FlashSaleError {
    #[error("not found")]
    NotFound,
    #[error("purchase token required for {0}")]
    TokenRequired(String),
    #[error("purchase token invalid: {0}")]
    TokenInvalid(String),
    #[error("purchase token expired")]
    TokenExpired,
    #[error("rate limited")]
    RateLimited(Decision),
    #[error("{0}")]
    Api(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for FlashSaleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => FlashSaleError::NotFound,
            other => FlashSaleError::Unexpected(other.into()),
        }
    }
}

impl From<sqlx::Error> for FlashSaleError {
    fn from(e: sqlx::Error) -> Self {
        FlashSaleError::Unexpected(e.into())
    }
}

impl From<crate::catalog::CatalogError> for FlashSaleError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        FlashSaleError::Unexpected(anyhow::anyhow!("catalog: {e}"))
    }
}

impl From<FlashSaleError> for ApiError {
    fn from(e: FlashSaleError) -> ApiError {
        match e {
            FlashSaleError::NotFound => ApiError::not_found(),
            FlashSaleError::TokenRequired(sku) => ApiError::new(Code::PurchaseTokenRequired)
                .detail(format!(
                    "{sku} is in a live flash sale: join its waiting room for a purchase token"
                ))
                .with("sku", sku),
            FlashSaleError::TokenInvalid(why) => {
                ApiError::new(Code::PurchaseTokenInvalid).detail(why)
            }
            FlashSaleError::TokenExpired => ApiError::new(Code::PurchaseTokenExpired)
                .detail("the purchase token has expired; its units went back to the waiting room"),
            FlashSaleError::RateLimited(d) => d.into_error().detail(
                "the waiting room allows one poll per second; Retry-After says when to ask again",
            ),
            FlashSaleError::Api(e) => e,
            FlashSaleError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// A cart or checkout line bought through a flash sale with a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashLine {
    pub sale_id: String,
    pub sku: String,
    pub token_id: String,
    /// Units the token buys at most.
    pub token_units: i64,
    pub price: Money,
}

/// How often a node re-reads the open sales (config and counters) from the database.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Cache {
    /// Open (not ended) sales by id.
    sales: HashMap<String, Arc<SaleRow>>,
    /// SKU → ids of its open sales.
    by_sku: HashMap<String, Vec<String>>,
    loaded_at: Option<Instant>,
}

/// What a ticket was given, so polls after the issue need no database read.
#[derive(Clone)]
struct Issued {
    token: String,
    expires_at: Timestamp,
    units: i64,
}

#[derive(Clone)]
pub struct FlashSaleService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: FlashSaleStore,
    catalog: CatalogService,
    room: Arc<dyn WaitingRoom>,
    key: Vec<u8>,
    cache: std::sync::RwLock<Cache>,
    refreshing: tokio::sync::Mutex<()>,
    issued: Mutex<HashMap<String, Issued>>,
}

impl FlashSaleService {
    /// `secret` is the server's signing secret; purchase tokens are signed with a key derived
    /// from it (so a token is never a valid access token, and vice versa).
    pub fn new(
        kernel: Kernel,
        catalog: CatalogService,
        room: Arc<dyn WaitingRoom>,
        secret: &[u8],
    ) -> FlashSaleService {
        use hmac::{Hmac, Mac};
        let key = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
            Ok(mut m) => {
                m.update(b"mercato flash-sale purchase tokens");
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => secret.to_vec(),
        };
        FlashSaleService {
            inner: Arc::new(Inner {
                store: FlashSaleStore::new(kernel.db.clone()),
                kernel,
                catalog,
                room,
                key,
                cache: std::sync::RwLock::new(Cache::default()),
                refreshing: tokio::sync::Mutex::new(()),
                issued: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    fn room_sale(s: &SaleRow) -> RoomSale<'_> {
        RoomSale {
            id: &s.id,
            starts_at: s.starts_at,
            admit_per_minute: s.admit_per_minute,
        }
    }

    // --- the cache of open sales -------------------------------------------------------------

    /// Re-reads the open sales and their counters.
    async fn refresh(&self) -> Result<(), FlashSaleError> {
        let rows = self.inner.store.open_sales().await?;
        let mut cache = Cache {
            loaded_at: Some(Instant::now()),
            ..Cache::default()
        };
        for r in rows {
            self.inner.room.set_remaining(&r.id, r.remaining());
            cache
                .by_sku
                .entry(r.sku.clone())
                .or_default()
                .push(r.id.clone());
            cache.sales.insert(r.id.clone(), Arc::new(r));
        }
        if let Ok(mut c) = self.inner.cache.write() {
            *c = cache;
        }
        Ok(())
    }

    /// Makes sure the cache is loaded and not older than [`REFRESH_EVERY`]: the first caller
    /// waits for the load; later ones use what is there while one of them refreshes.
    async fn fresh(&self) -> Result<(), FlashSaleError> {
        let age = self
            .inner
            .cache
            .read()
            .ok()
            .and_then(|c| c.loaded_at.map(|t| t.elapsed()));
        match age {
            None => {
                let _g = self.inner.refreshing.lock().await;
                let loaded = self
                    .inner
                    .cache
                    .read()
                    .ok()
                    .is_some_and(|c| c.loaded_at.is_some());
                if !loaded {
                    self.refresh().await?;
                }
            }
            Some(a) if a >= REFRESH_EVERY => {
                if let Ok(_g) = self.inner.refreshing.try_lock() {
                    self.refresh().await?;
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn cached(&self, id: &str) -> Option<Arc<SaleRow>> {
        self.inner.cache.read().ok()?.sales.get(id).cloned()
    }

    /// The sale that gates `sku` at `now`, if any.
    fn gating(&self, sku: &str, now: Timestamp) -> Option<Arc<SaleRow>> {
        let c = self.inner.cache.read().ok()?;
        c.by_sku
            .get(sku)?
            .iter()
            .filter_map(|id| c.sales.get(id))
            .find(|s| s.gates(now))
            .cloned()
    }

    async fn sale(&self, id: &str) -> Result<Arc<SaleRow>, FlashSaleError> {
        if !mercato_kernel::id::is_valid(FlashSaleId::PREFIX, id) {
            return Err(FlashSaleError::NotFound);
        }
        self.fresh().await?;
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        Ok(Arc::new(
            self.inner
                .store
                .get(id)
                .await?
                .ok_or(FlashSaleError::NotFound)?,
        ))
    }

    fn remaining(&self, s: &SaleRow) -> i64 {
        if s.ended() {
            return 0;
        }
        self.inner
            .room
            .remaining(&s.id)
            .unwrap_or_else(|| s.remaining())
    }

    fn public(&self, s: &SaleRow, now: Timestamp) -> FlashSale {
        let remaining = self.remaining(s);
        FlashSale {
            id: s.id.clone(),
            sku: s.sku.clone(),
            price: s.price,
            starts_at: s.starts_at,
            ends_at: s.ends_at,
            status: SaleStatus::of(now, s.starts_at, s.ends_at, s.ended(), remaining),
            remaining,
            per_customer_limit: s.per_customer_limit,
        }
    }

    async fn admin_view(&self, s: &SaleRow) -> Result<FlashSaleAdmin, FlashSaleError> {
        let now = self.now();
        let (queued, admitted) = self.inner.room.counts(Self::room_sale(s), now);
        let outstanding = self.inner.store.outstanding_units(&s.id).await?;
        Ok(FlashSaleAdmin {
            sale: FlashSale {
                remaining: s.remaining(),
                status: s.status(now),
                ..self.public(s, now)
            },
            units: s.units,
            admit_per_minute: s.admit_per_minute,
            token_ttl_secs: s.token_ttl_secs,
            queued,
            admitted,
            tokens_issued: s.tokens_issued,
            tokens_redeemed: s.tokens_redeemed,
            tokens_expired: s.tokens_expired,
            tokens_outstanding_units: outstanding,
            sold: s.sold,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }

    // --- admin -------------------------------------------------------------------------------

    /// Creates a sale and sets its units aside from the SKU's stock (409 `insufficient_stock`
    /// when they are not available; 409 `conflict` when another sale of the SKU overlaps).
    pub async fn create(
        &self,
        input: FlashSaleInput,
        actor: &str,
    ) -> Result<FlashSaleAdmin, FlashSaleError> {
        let now = self.now();
        let new = input
            .validate(now, self.inner.kernel.settings.cart_max_line_quantity)
            .map_err(FlashSaleError::Api)?;
        let info = self
            .inner
            .catalog
            .skus(std::slice::from_ref(&new.sku))
            .await?
            .remove(&new.sku)
            .ok_or_else(|| {
                FlashSaleError::Api(ApiError::invalid(
                    "sku",
                    format!("no product variant has SKU {}", new.sku),
                ))
            })?;
        if info.price.currency != new.price.currency {
            return Err(FlashSaleError::Api(ApiError::invalid(
                "price.currency",
                format!("{} is priced in {}", new.sku, info.price.currency),
            )));
        }
        let row = SaleRow {
            id: FlashSaleId::new().into_string(),
            sku: new.sku.clone(),
            price: new.price,
            units: new.units,
            claimed: 0,
            sold: 0,
            tokens_issued: 0,
            tokens_redeemed: 0,
            tokens_expired: 0,
            per_customer_limit: new.per_customer_limit,
            admit_per_minute: new.admit_per_minute,
            token_ttl_secs: new.token_ttl_secs,
            starts_at: new.starts_at,
            ends_at: new.ends_at,
            stage: "scheduled".into(),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.inner.store.db().begin().await?;
        if let Some(other) =
            FlashSaleStore::overlaps_tx(&mut tx, &row.sku, row.starts_at, row.ends_at).await?
        {
            tx.rollback().await?;
            return Err(FlashSaleError::Api(
                ApiError::new(Code::Conflict)
                    .detail(format!(
                        "the flash sale {other} of {} overlaps this window",
                        row.sku
                    ))
                    .with("flash_sale_id", other),
            ));
        }
        FlashSaleStore::insert_tx(&mut tx, &row).await?;
        // The set-aside: a reservation owned by the sale, kept an hour past its end as a
        // safety net (the lifecycle job releases it when the sale ends).
        let set_aside = InventoryService::reserve_tx(
            &mut tx,
            &row.id,
            &[(row.sku.clone(), row.units)],
            None,
            row.ends_at.plus_secs(3600),
            actor,
            now,
        )
        .await?;
        if let Err(short) = set_aside {
            tx.rollback().await?;
            return Err(FlashSaleError::Api(
                ApiError::new(Code::InsufficientStock)
                    .detail(format!(
                        "only {} of {} available to set aside",
                        short.available, short.sku
                    ))
                    .with("sku", short.sku)
                    .with("requested", short.requested)
                    .with("available", short.available),
            ));
        }
        tx.commit().await?;
        metrics::counter!("flash_sales_created_total").increment(1);
        self.refresh().await?;
        self.admin_view(&row).await
    }

    pub async fn get_admin(&self, id: &str) -> Result<FlashSaleAdmin, FlashSaleError> {
        if !mercato_kernel::id::is_valid(FlashSaleId::PREFIX, id) {
            return Err(FlashSaleError::NotFound);
        }
        let row = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or(FlashSaleError::NotFound)?;
        self.admin_view(&row).await
    }

    /// Newest first.
    pub async fn list(
        &self,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<FlashSaleAdmin>, FlashSaleError> {
        let rows = self.inner.store.list(after, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.admin_view(r).await?);
        }
        Ok(out)
    }

    // --- public ------------------------------------------------------------------------------

    pub async fn get(&self, id: &str) -> Result<FlashSale, FlashSaleError> {
        let s = self.sale(id).await?;
        Ok(self.public(&s, self.now()))
    }

    /// Joins the waiting room (idempotent per customer).
    pub async fn join(&self, id: &str, customer: &str) -> Result<Joined, FlashSaleError> {
        let s = self.sale(id).await?;
        let now = self.now();
        if s.ended() || now >= s.ends_at {
            return Err(FlashSaleError::Api(
                ApiError::new(Code::Conflict).detail("this flash sale has ended"),
            ));
        }
        let p = self.inner.room.join(Self::room_sale(&s), customer, now);
        metrics::counter!("flash_sale_joins_total").increment(1);
        Ok(Joined {
            ticket: p.ticket,
            position: if p.admitted { 0 } else { p.position },
            estimated_wait_secs: p.estimated_wait_secs,
        })
    }

    /// A ticket's state: waiting (position, wait), admitted (with the purchase token, issued
    /// on the first admitted poll while units remain), sold out (from memory once nothing is
    /// left unclaimed) or expired. One poll per second per customer (429 otherwise).
    pub async fn poll(
        &self,
        id: &str,
        ticket: &str,
        customer: &str,
    ) -> Result<TicketView, FlashSaleError> {
        let d = self
            .inner
            .kernel
            .rate_limiter
            .check(
                &format!("flash-poll:{customer}"),
                Quota::new(1, Duration::from_secs(1)),
                1,
            )
            .await;
        if !d.allowed {
            metrics::counter!("flash_sale_polls_limited_total").increment(1);
            return Err(FlashSaleError::RateLimited(d));
        }
        let s = self.sale(id).await?;
        let now = self.now();
        let place = self
            .inner
            .room
            .place(Self::room_sale(&s), ticket, now)
            .filter(|p| p.customer == customer)
            .ok_or(FlashSaleError::NotFound)?;
        let view = |status| TicketView {
            status,
            position: None,
            estimated_wait_secs: None,
            purchase_token: None,
            token_expires_at: None,
            token_units: None,
        };
        let issued = self
            .inner
            .issued
            .lock()
            .ok()
            .and_then(|m| m.get(ticket).cloned());
        let with_token = |i: &Issued| TicketView {
            purchase_token: Some(i.token.clone()),
            token_expires_at: Some(i.expires_at),
            token_units: Some(i.units),
            ..view(TicketStatus::Admitted)
        };
        if let Some(i) = &issued {
            if now < i.expires_at {
                return Ok(with_token(i));
            }
            // Past its expiry: used (or in a checkout) stays admitted, unused is expired.
            let t = self.inner.store.token_for(&s.id, customer).await?;
            return Ok(match t {
                Some(t) if t.status == "used" || t.status == "held" => with_token(i),
                _ => view(TicketStatus::Expired),
            });
        }
        if s.ended() || now >= s.ends_at {
            return Ok(view(TicketStatus::Expired));
        }
        let remaining = self.remaining(&s);
        if remaining <= 0 {
            metrics::counter!("flash_sale_sold_out_answers_total").increment(1);
            return Ok(view(TicketStatus::SoldOut));
        }
        if !place.admitted {
            return Ok(TicketView {
                position: Some(place.position),
                estimated_wait_secs: Some(place.estimated_wait_secs),
                ..view(TicketStatus::Waiting)
            });
        }
        match self.inner.store.issue(&s.id, customer, ticket, now).await? {
            Ok((t, remaining)) => {
                self.inner.room.set_remaining(&s.id, remaining);
                if t.status == "expired" || (t.status == "issued" && t.expires_at <= now) {
                    return Ok(view(TicketStatus::Expired));
                }
                let i = Issued {
                    token: sign_token(&self.inner.key, &t.id, &s.id, &t.customer_id, t.expires_at),
                    expires_at: t.expires_at,
                    units: t.units,
                };
                if let Ok(mut m) = self.inner.issued.lock() {
                    m.insert(ticket.to_owned(), i.clone());
                }
                metrics::counter!("flash_sale_tokens_issued_total").increment(1);
                Ok(with_token(&i))
            }
            Err(NoToken::SoldOut) => {
                self.inner.room.set_remaining(&s.id, 0);
                Ok(view(TicketStatus::SoldOut))
            }
            Err(NoToken::NotLive) => Ok(view(TicketStatus::Expired)),
        }
    }

    // --- the purchase gate -------------------------------------------------------------------

    /// Whether `sku` may be bought now by `customer` with `token`, and at which price: `None`
    /// when no live sale gates the SKU (and no token was sent); a [`FlashLine`] for a valid
    /// token; 403 `purchase_token_required|invalid|expired` otherwise. `quantity` is the line's
    /// quantity after the change (at most the token's units).
    pub async fn check_line(
        &self,
        sku: &str,
        token: Option<&str>,
        customer: Option<&str>,
        quantity: i64,
    ) -> Result<Option<FlashLine>, FlashSaleError> {
        self.fresh().await?;
        let now = self.now();
        let sale = self.gating(sku, now);
        let (sale, token) = match (sale, token) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                return Err(FlashSaleError::TokenInvalid(format!(
                    "no flash sale of {sku} is live"
                )));
            }
            (Some(_), None) => return Err(FlashSaleError::TokenRequired(sku.to_owned())),
            (Some(s), Some(t)) => (s, t),
        };
        let invalid = || {
            FlashSaleError::TokenInvalid(format!("this purchase token does not buy {sku} for you"))
        };
        let customer = customer.ok_or_else(invalid)?;
        let id = token_id_of(token).ok_or_else(invalid)?;
        let row = self.inner.store.token(id).await?.ok_or_else(invalid)?;
        if row.sale_id != sale.id
            || row.customer_id != customer
            || !verify_token(&self.inner.key, token, &sale.id, customer, row.expires_at)
        {
            return Err(invalid());
        }
        match row.status.as_str() {
            "issued" | "held" if now < row.expires_at || row.status == "held" => {}
            "issued" | "expired" => return Err(FlashSaleError::TokenExpired),
            _ => {
                return Err(FlashSaleError::TokenInvalid(
                    "this purchase token has been used".into(),
                ));
            }
        }
        if quantity > row.units {
            return Err(FlashSaleError::Api(ApiError::invalid(
                "quantity",
                format!("the purchase token buys at most {} of {sku}", row.units),
            )));
        }
        Ok(Some(FlashLine {
            sale_id: sale.id.clone(),
            sku: sku.to_owned(),
            token_id: row.id,
            token_units: row.units,
            price: sale.price,
        }))
    }

    /// The flash price of `sku` for a line that carries a token, while its sale gates it.
    pub async fn price_for(&self, sku: &str) -> Option<Money> {
        if self.fresh().await.is_err() {
            return None;
        }
        self.gating(sku, self.now()).map(|s| s.price)
    }

    /// Whether a live sale gates `sku` now (for a cart warning on a line without a token).
    pub async fn gated(&self, sku: &str) -> bool {
        if self.fresh().await.is_err() {
            return false;
        }
        self.gating(sku, self.now()).is_some()
    }

    // --- checkout's steps (inside its transactions) ------------------------------------------

    /// Puts each line's token on hold for the checkout and hands the sale's set-aside units
    /// to it (the checkout then reserves them like any stock, in the same transaction).
    /// `Ok(Err(_))`: a token is no longer usable; the caller rolls back.
    pub async fn hold_tx(
        tx: &mut Tx,
        checkout_id: &str,
        lines: &[(FlashLine, i64)],
        actor: &str,
        now: Timestamp,
    ) -> Result<Result<(), FlashSaleError>, StoreError> {
        for (l, quantity) in lines {
            if !FlashSaleStore::hold_tx(tx, &l.token_id, checkout_id, *quantity, now).await? {
                return Ok(Err(FlashSaleError::TokenInvalid(
                    "this purchase token has expired, been used or is held by another checkout"
                        .into(),
                )));
            }
            InventoryService::shrink_tx(
                tx,
                &l.sale_id,
                *quantity,
                "flash sale purchase",
                checkout_id,
                actor,
                now,
            )
            .await?;
        }
        Ok(Ok(()))
    }

    /// The checkout failed, expired or was superseded (after its stock was released): each
    /// token it held goes back to its customer while it lives (else it expires and its units
    /// go back to the waiting room), and the units go back to the sale's set-aside while the
    /// sale runs. Idempotent.
    pub async fn release_tx(
        tx: &mut Tx,
        checkout_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        for t in FlashSaleStore::held_by_tx(tx, checkout_id).await? {
            let sale = FlashSaleStore::get_tx(tx, &t.sale_id).await?;
            let running = sale.as_ref().is_some_and(|s| s.gates(now));
            if running && now < t.expires_at {
                FlashSaleStore::unhold_tx(tx, &t.id, now).await?;
            } else {
                FlashSaleStore::expire_tx(tx, &t, "held", now).await?;
            }
            if let Some(s) = sale.filter(|_| running) {
                let quantity = t.quantity.unwrap_or(0);
                if quantity > 0 {
                    let back = InventoryService::reserve_tx(
                        tx,
                        &s.id,
                        &[(s.sku.clone(), quantity)],
                        None,
                        s.ends_at.plus_secs(3600),
                        "flash-sale",
                        now,
                    )
                    .await?;
                    if back.is_err() {
                        tracing::warn!(sale = %s.id, quantity, "units of a failed flash-sale checkout could not be set aside again");
                    }
                }
            }
        }
        Ok(())
    }

    /// The checkout was paid: its tokens are used and the sale counts the units sold
    /// (`flash_sale.sold_out` when the last one is). Idempotent.
    pub async fn commit_tx(
        tx: &mut Tx,
        checkout_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        for t in FlashSaleStore::held_by_tx(tx, checkout_id).await? {
            if let Some((sold, units)) = FlashSaleStore::use_tx(tx, &t, now).await?
                && sold >= units
            {
                let sku = FlashSaleStore::get_tx(tx, &t.sale_id)
                    .await?
                    .map(|s| s.sku)
                    .unwrap_or_default();
                outbox::append(
                    tx,
                    now,
                    NewEvent::of(&FlashSaleSoldOut {
                        sale_id: t.sale_id.clone(),
                        sku,
                        units,
                        sold,
                    }),
                )
                .await?;
            }
        }
        Ok(())
    }

    // --- the lifecycle job -------------------------------------------------------------------

    /// Starts due sales, expires unused tokens, ends due sales (their unsold units go back to
    /// stock). Runs every second on worker nodes.
    pub async fn tick(&self) -> anyhow::Result<Outcome> {
        let now = self.now();
        let mut worked = false;
        for s in self.inner.store.open_sales().await? {
            if s.stage == "scheduled"
                && now >= s.starts_at
                && let Some(mut tx) = self.inner.store.mark_live(&s.id, now).await?
            {
                let (queued, _) = self.inner.room.counts(Self::room_sale(&s), now);
                outbox::append(
                    &mut tx,
                    now,
                    NewEvent::of(&FlashSaleStarted {
                        sale_id: s.id.clone(),
                        sku: s.sku.clone(),
                        price: s.price,
                        units: s.units,
                        starts_at: s.starts_at,
                        ends_at: s.ends_at,
                        queued,
                    }),
                )
                .await?;
                tx.commit().await?;
                worked = true;
            }
            if now >= s.ends_at {
                self.end(&s.id, now).await?;
                worked = true;
            }
        }
        let due = self.inner.store.due_tokens(now, 500).await?;
        if !due.is_empty() {
            let mut tx = self.inner.store.db().begin().await?;
            for t in &due {
                FlashSaleStore::expire_tx(&mut tx, t, "issued", now).await?;
            }
            tx.commit().await?;
            metrics::counter!("flash_sale_tokens_expired_total").increment(due.len() as u64);
            worked = true;
        }
        if worked {
            self.refresh().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(if due.len() >= 500 {
            Outcome::Worked
        } else {
            Outcome::Idle
        })
    }

    async fn end(&self, id: &str, now: Timestamp) -> anyhow::Result<()> {
        let mut tx = self.inner.store.db().begin().await?;
        let Some(s) = FlashSaleStore::mark_ended_tx(&mut tx, id, now).await? else {
            tx.rollback().await?;
            return Ok(());
        };
        for t in FlashSaleStore::issued_of_tx(&mut tx, id).await? {
            FlashSaleStore::expire_tx(&mut tx, &t, "issued", now).await?;
        }
        let released = InventoryService::release_tx(
            &mut tx,
            &*self.inner.kernel.stock_gate,
            id,
            false,
            "flash sale ended",
            "flash-sale",
            now,
        )
        .await?;
        let returned: i64 = released.iter().map(|r| r.quantity).sum();
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&FlashSaleEnded {
                sale_id: s.id.clone(),
                sku: s.sku.clone(),
                units: s.units,
                sold: s.sold,
                returned,
            }),
        )
        .await?;
        tx.commit().await?;
        self.inner.room.close(id);
        if let Ok(mut m) = self.inner.issued.lock() {
            m.retain(|_, i| i.expires_at > now);
        }
        Ok(())
    }
}
