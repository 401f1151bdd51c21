//! Promotion use cases: admin CRUD (with the references checked against the catalog), the
//! redemption list, the cart preview and checkout's evaluation, and the reserve/commit/release
//! steps checkout and orders call inside their own transactions. Emits `promotion.redeemed`
//! (commit) and `promotion.released` (release) in those same transactions.

use super::model::{
    Basket, CouponOutcome, Discounts, Evaluation, Line, Offer, Promotion, PromotionId,
    PromotionInput, PromotionPatch, PromotionRecord, Redemption, References, evaluate,
};
use super::store::{Exhausted, PromotionStore};
use crate::cart::model::Cart;
use crate::catalog::CatalogService;
use mercato_events::promotions::{PromotionRedeemed, PromotionReleased};
use mercato_kernel::db::{StoreError, StoreResult, Tx};
use mercato_kernel::error::{ApiError, Code, Validator};
use mercato_kernel::outbox::{self, NewEvent};
use mercato_kernel::{Currency, Kernel, Timestamp};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error("not found")]
    NotFound,
    #[error("code taken")]
    CodeTaken(String),
    /// A coupon that cannot be used, with the stable code and the reason for the customer.
    #[error("coupon: {1}")]
    Coupon(Code, String),
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for PromotionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => PromotionError::NotFound,
            other => PromotionError::Unexpected(other.into()),
        }
    }
}

impl From<crate::catalog::CatalogError> for PromotionError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        PromotionError::Unexpected(anyhow::anyhow!("catalog: {e}"))
    }
}

impl From<PromotionError> for ApiError {
    fn from(e: PromotionError) -> ApiError {
        match e {
            PromotionError::NotFound => ApiError::not_found(),
            PromotionError::CodeTaken(code) => ApiError::new(Code::CodeTaken)
                .detail(format!(
                    "the code {code} is taken (codes are case-insensitive)"
                ))
                .with("code_value", code),
            PromotionError::Coupon(code, detail) => ApiError::new(code).detail(detail),
            PromotionError::Invalid(e) => e,
            PromotionError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// A line to evaluate: what checkout and the cart preview know about it.
#[derive(Clone, Debug)]
pub struct BasketLine {
    pub sku: String,
    pub product_id: String,
    pub quantity: i64,
    /// Sale-aware, minor units.
    pub unit_price: i64,
}

#[derive(Clone)]
pub struct PromotionService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: PromotionStore,
    catalog: CatalogService,
}

impl PromotionService {
    pub fn new(kernel: Kernel, catalog: CatalogService) -> PromotionService {
        PromotionService {
            inner: Arc::new(Inner {
                store: PromotionStore::new(kernel.db.clone()),
                kernel,
                catalog,
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    fn default_currency(&self) -> Currency {
        Currency::parse(&self.inner.kernel.settings.default_currency).unwrap_or(Currency::USD)
    }

    /// 422 for every SKU, product or category the promotion names that does not exist.
    async fn check_references(&self, refs: &References) -> Result<(), PromotionError> {
        let mut v = Validator::new();
        if !refs.skus.is_empty() {
            let skus: Vec<String> = refs.skus.iter().map(|(_, s)| s.clone()).collect();
            let known = self.inner.catalog.skus(&skus).await?;
            for (field, sku) in &refs.skus {
                if !known.contains_key(sku) {
                    v.add(field.clone(), format!("no product variant has SKU {sku}"));
                }
            }
        }
        if !refs.products.is_empty() {
            let ids: Vec<String> = refs.products.iter().map(|(_, s)| s.clone()).collect();
            let known = self.inner.catalog.category_paths(&ids).await?;
            for (field, id) in &refs.products {
                if !known.contains_key(id) {
                    v.add(field.clone(), format!("no product {id}"));
                }
            }
        }
        if !refs.categories.is_empty() {
            let ids: Vec<String> = refs.categories.iter().map(|(_, s)| s.clone()).collect();
            let known = self.inner.catalog.existing_categories(&ids).await?;
            for (field, id) in &refs.categories {
                if !known.contains(id) {
                    v.add(field.clone(), format!("no category {id}"));
                }
            }
        }
        v.finish().map_err(PromotionError::Invalid)
    }

    pub async fn create(&self, input: PromotionInput) -> Result<Promotion, PromotionError> {
        let (new, refs) = input
            .validate(self.default_currency())
            .map_err(PromotionError::Invalid)?;
        self.check_references(&refs).await?;
        let id = PromotionId::new();
        match self.inner.store.insert(id.as_str(), &new, self.now()).await {
            Ok(()) => {}
            Err(e) if e.is_unique_violation() => {
                return Err(PromotionError::CodeTaken(new.code.unwrap_or_default()));
            }
            Err(e) => return Err(e.into()),
        }
        self.get(id.as_str()).await
    }

    async fn record(&self, id: &str) -> Result<PromotionRecord, PromotionError> {
        if !mercato_kernel::id::is_valid(PromotionId::PREFIX, id) {
            return Err(PromotionError::NotFound);
        }
        self.inner
            .store
            .get(id)
            .await?
            .ok_or(PromotionError::NotFound)
    }

    pub async fn get(&self, id: &str) -> Result<Promotion, PromotionError> {
        Ok(self.record(id).await?.view())
    }

    /// Newest first; `limit + 1` rows for the pager.
    pub async fn list(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Promotion>, PromotionError> {
        Ok(self
            .inner
            .store
            .list(after, limit)
            .await?
            .iter()
            .map(PromotionRecord::view)
            .collect())
    }

    pub async fn update(
        &self,
        id: &str,
        patch: PromotionPatch,
    ) -> Result<Promotion, PromotionError> {
        let current = self.record(id).await?;
        let next = patch
            .apply(&current.fields)
            .map_err(PromotionError::Invalid)?;
        self.inner
            .store
            .update(id, &next, self.now())
            .await?
            .map(|r| r.view())
            .ok_or(PromotionError::NotFound)
    }

    /// A promotion's redemptions, newest first (`limit + 1` rows for the pager).
    pub async fn redemptions(
        &self,
        id: &str,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Redemption>, PromotionError> {
        let p = self.record(id).await?;
        Ok(self
            .inner
            .store
            .redemptions(id, p.fields.currency, after, limit)
            .await?)
    }

    /// The discounts a cart would get now with `coupon_code` (if any) and the automatic
    /// promotions: evaluated on the cart's purchasable lines at their current prices; nothing is
    /// reserved. The per-customer limit is the cart owner's (unknown for a guest cart, whose
    /// buyer checkout identifies). A coupon that cannot be used is an error with its stable
    /// code.
    pub async fn preview(
        &self,
        cart: &Cart,
        coupon_code: Option<&str>,
    ) -> Result<Discounts, PromotionError> {
        let currency = Currency::parse(&cart.currency).unwrap_or(self.default_currency());
        let lines: Vec<BasketLine> = cart
            .items
            .iter()
            .filter(|i| {
                !i.warnings.iter().any(|w| w == "unavailable") && i.unit_price.currency == currency
            })
            .filter_map(|i| {
                Some(BasketLine {
                    sku: i.sku.clone(),
                    product_id: i.product_id.clone()?,
                    quantity: i.quantity,
                    unit_price: i.unit_price.amount,
                })
            })
            .collect();
        let e = self
            .evaluate_lines(
                currency,
                lines,
                None,
                cart.user_id.as_deref(),
                coupon_code,
                &[],
            )
            .await?;
        Ok(Discounts::of(&e, currency))
    }

    /// Evaluates `lines` (at their sale-aware unit prices) with the automatic promotions and
    /// `coupon_code`, for `customer` (whose per-customer limits apply; `None`: unknown) and a
    /// known `shipping` cost (`None` in a preview). Nothing is reserved. A coupon that cannot
    /// be used is an error with its stable code; on success the coupon (if any) is applied.
    pub async fn evaluate_lines(
        &self,
        currency: Currency,
        lines: Vec<BasketLine>,
        shipping: Option<i64>,
        customer: Option<&str>,
        coupon_code: Option<&str>,
        superseding: &[String],
    ) -> Result<Evaluation, PromotionError> {
        let product_ids: Vec<String> = lines.iter().map(|l| l.product_id.clone()).collect();
        let paths = if product_ids.is_empty() {
            Default::default()
        } else {
            self.inner.catalog.category_paths(&product_ids).await?
        };
        let lines: Vec<Line> = lines
            .into_iter()
            .map(|l| Line {
                category_ids: paths.get(&l.product_id).cloned().unwrap_or_default(),
                sku: l.sku,
                product_id: l.product_id,
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect();
        let basket = Basket {
            currency,
            lines,
            shipping,
            now: self.now(),
        };
        let mut automatic = self.inner.store.automatic(currency).await?;
        // Taken as sent: an empty or padded code is not a code (the schema's pattern).
        let coupon = match coupon_code {
            None => None,
            Some(code) => {
                if !super::model::valid_code(code) {
                    // Not echoed: it is not a code at all.
                    return Err(PromotionError::Coupon(
                        Code::CouponInvalid,
                        "there is no such coupon".into(),
                    ));
                }
                match self.inner.store.by_code(code).await? {
                    Some(p) if !p.fields.automatic => Some(p),
                    _ => return Err(coupon_invalid(code)),
                }
            }
        };
        let mut coupon = coupon;
        let customer = customer.map(str::to_owned);
        let mut ids: Vec<String> = automatic.iter().map(|p| p.id.clone()).collect();
        ids.extend(coupon.iter().map(|p| p.id.clone()));
        let mut uses = match &customer {
            Some(c) => self.inner.store.customer_uses(c, &ids).await?,
            None => Default::default(),
        };
        // The open checkouts this one supersedes give their uses back in the same transaction
        // that reserves the new ones: count them as available already, so re-checking out a
        // cart whose older checkout holds a coupon's last use is not refused.
        if !superseding.is_empty() {
            for (promotion_id, holder, amount) in self.inner.store.reserved_by(superseding).await? {
                for p in automatic.iter_mut().chain(coupon.iter_mut()) {
                    if p.id == promotion_id {
                        p.reserved = (p.reserved - 1).max(0);
                        p.budget_reserved = (p.budget_reserved - amount).max(0);
                    }
                }
                if customer.as_deref() == Some(holder.as_str())
                    && let Some(u) = uses.get_mut(&promotion_id)
                {
                    *u = (*u - 1).max(0);
                }
            }
        }
        let offer = |p: &PromotionRecord| -> Offer {
            let mine = customer
                .as_ref()
                .map(|_| uses.get(&p.id).copied().unwrap_or(0));
            p.offer(mine)
        };
        let offers: Vec<Offer> = automatic.iter().map(offer).collect();
        let coupon_offer = coupon.as_ref().map(offer);
        let e = evaluate(&basket, &offers, coupon_offer.as_ref());
        let code = coupon_code.unwrap_or_default();
        match e.coupon {
            CouponOutcome::None | CouponOutcome::Applied => {}
            CouponOutcome::Invalid => return Err(coupon_invalid(code)),
            CouponOutcome::Expired => {
                return Err(PromotionError::Coupon(
                    Code::CouponExpired,
                    format!("the coupon {code} is not valid at this time"),
                ));
            }
            CouponOutcome::Exhausted => {
                return Err(PromotionError::Coupon(
                    Code::CouponExhausted,
                    format!("the coupon {code} has reached its usage limit"),
                ));
            }
            CouponOutcome::NotApplicable(reason) => {
                return Err(PromotionError::Coupon(
                    Code::CouponNotApplicable,
                    format!("the coupon {code} does not apply to this cart: {reason}"),
                ));
            }
            CouponOutcome::Superseded => {
                return Err(PromotionError::Coupon(
                    Code::CouponNotApplicable,
                    format!(
                        "the coupon {code} does not combine with a better offer that already applies"
                    ),
                ));
            }
        }
        Ok(e)
    }

    /// Reserves one use of a promotion for a checkout (see [`PromotionStore::reserve_tx`]); on
    /// `Err(Exhausted)` the caller rolls back.
    pub async fn reserve_tx(
        tx: &mut Tx,
        promotion_id: &str,
        checkout_id: &str,
        customer_id: &str,
        amount: i64,
        now: Timestamp,
    ) -> StoreResult<Result<Redemption, Exhausted>> {
        PromotionStore::reserve_tx(tx, promotion_id, checkout_id, customer_id, amount, now).await
    }

    /// Commits the checkout's reserved uses (paid), with a `promotion.redeemed` event each.
    pub async fn commit_tx(
        tx: &mut Tx,
        checkout_id: &str,
        order_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Redemption>> {
        let out = PromotionStore::commit_tx(tx, checkout_id, order_id, now).await?;
        for r in &out {
            outbox::append(
                tx,
                now,
                NewEvent::of(&PromotionRedeemed {
                    promotion_id: r.promotion_id.clone(),
                    redemption_id: r.id.clone(),
                    checkout_id: r.checkout_id.clone(),
                    order_id: order_id.to_owned(),
                    customer_id: r.customer_id.clone(),
                    amount: r.amount,
                }),
            )
            .await?;
        }
        Ok(out)
    }

    /// Releases the checkout's uses (superseded, failed, expired, or its order cancelled
    /// before shipping), with a `promotion.released` event each. Idempotent.
    pub async fn release_tx(
        tx: &mut Tx,
        checkout_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<Redemption>> {
        let out = PromotionStore::release_tx(tx, checkout_id, now).await?;
        for r in &out {
            outbox::append(
                tx,
                now,
                NewEvent::of(&PromotionReleased {
                    promotion_id: r.promotion_id.clone(),
                    redemption_id: r.id.clone(),
                    checkout_id: r.checkout_id.clone(),
                    customer_id: r.customer_id.clone(),
                    amount: r.amount,
                    // Only a commit sets the order: a use with one was committed.
                    from: if r.order_id.is_some() {
                        "committed"
                    } else {
                        "reserved"
                    }
                    .to_owned(),
                }),
            )
            .await?;
        }
        Ok(out)
    }
}

fn coupon_invalid(code: &str) -> PromotionError {
    PromotionError::Coupon(
        Code::CouponInvalid,
        format!("there is no active coupon {code}"),
    )
}
