//! The checkout saga (orchestrated, persisted).
//!
//! `create` re-validates the cart, prices it, applies the promotions (sale price → automatic →
//! coupon; tax on the discounted lines), and in one transaction reserves the stock (all lines
//! or none) and one use of each applied promotion. Promotion uses follow the stock: committed
//! with it when the order is created, released with it on supersession, fraud block, decline,
//! expiry and reconciliation (docs/promotions.md). `pay` runs the saga for one attempt: intent (payment `initiated`, saga
//! `running`, steps logged) is committed before the gateway is called; the outcome is then
//! settled in ONE local transaction — capture recorded, order created confirmed, stock
//! committed, cart converted, events written, idempotent response stored — so there is no
//! window in which money is captured and the order is missing. A decline releases the stock;
//! an unknown outcome leaves a `pending` order holding its stock until reconciliation learns
//! the truth. A crash between intent and outcome leaves a `running` saga that the recovery
//! worker settles by asking the gateway (by the payment's reference); a capture found for a
//! checkout that can no longer become an order is refunded (compensation). Every settlement is
//! conditional on the checkout's status, so the request, the recovery worker, reconciliation
//! and webhooks can race and exactly one wins.

use super::model::{Checkout, CheckoutId, CheckoutLine, CheckoutStatus, Saga, SagaId};
use super::store::{CheckoutRow, CheckoutStore, Guest, SagaRow};
use crate::cart::{CartService, CartStore, model::CartStatus};
use crate::catalog::CatalogService;
use crate::flash_sales::{FlashLine, FlashSaleService};
use crate::fraud::{ClientSignals, FraudService, Verdict};
use crate::gateway::{ChargeOutcome, GatewayError};
use crate::identity::IdentityService;
use crate::identity::model::AddressInput;
use crate::inventory::{InventoryService, Shortfall};
use crate::orders::OrderService;
use crate::orders::model::{OrderEvent, OrderItem, OrderStatus};
use crate::orders::store::NewOrder;
use crate::payments::store::PaymentRow;
use crate::payments::{PaymentService, Resolution};
use crate::pricing::{PriceBook, quote_discounted};
use crate::promotions::Exhausted;
use crate::promotions::PromotionService;
use crate::promotions::model::Discounts;
use crate::promotions::service::BasketLine;
use axum::http::StatusCode;
use mercato_events::checkout::{CheckoutExpired, CheckoutStarted};
use mercato_kernel::auth::{Principal, guest_subject};
use mercato_kernel::db::StoreError;
use mercato_kernel::error::{ApiError, Code, Validator};
use mercato_kernel::idempotency::{Idempotency, ReplayWriter};
use mercato_kernel::jobs::Outcome;
use mercato_kernel::outbox::{self, NewEvent};
use mercato_kernel::{Kernel, Money, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long stock stays held while a payment attempt is unsettled.
const PAYMENT_HOLD_SECS: i64 = 86_400;

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCheckout {
    pub cart_id: String,
    /// Guests (no token) only, and required for them: where the confirmation goes.
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// One of the customer's saved addresses…
    pub shipping_address_id: Option<String>,
    /// …or an address given inline.
    pub shipping_address: Option<AddressInput>,
    /// `standard` (default) or another configured method.
    pub shipping_method: Option<String>,
    pub coupon_code: Option<String>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    /// `card`.
    pub payment_method: String,
    /// A gateway token, e.g. `tok_visa`.
    pub payment_token: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentBrief {
    pub id: String,
    pub status: String,
    pub amount: Money,
}

/// The answer of a successful or pending payment.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PayResult {
    pub order_id: String,
    pub order_number: String,
    /// `confirmed`, or `pending_verification` when the gateway's answer is not known yet.
    pub status: String,
    pub payment: PaymentBrief,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Api(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for CheckoutError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => CheckoutError::NotFound,
            other => CheckoutError::Unexpected(other.into()),
        }
    }
}

impl From<sqlx::Error> for CheckoutError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<CheckoutError> for ApiError {
    fn from(e: CheckoutError) -> ApiError {
        match e {
            CheckoutError::NotFound => ApiError::not_found(),
            CheckoutError::Api(e) => e,
            CheckoutError::Unexpected(e) => ApiError::from(e),
        }
    }
}

fn api(e: impl Into<ApiError>) -> CheckoutError {
    CheckoutError::Api(e.into())
}

/// A finished pay request: status + body bytes (also stored for idempotent replay).
pub struct PayResponse {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct CheckoutService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: CheckoutStore,
    carts: CartService,
    catalog: CatalogService,
    identity: IdentityService,
    payments: PaymentService,
    orders: OrderService,
    promotions: PromotionService,
    flash: FlashSaleService,
    fraud: FraudService,
    prices: PriceBook,
}

/// The dependencies a checkout orchestrates.
pub struct Parts {
    pub promotions: PromotionService,
    pub flash: FlashSaleService,
    pub carts: CartService,
    pub catalog: CatalogService,
    pub identity: IdentityService,
    pub payments: PaymentService,
    pub orders: OrderService,
    pub fraud: FraudService,
}

impl CheckoutService {
    pub fn new(kernel: Kernel, parts: Parts) -> anyhow::Result<CheckoutService> {
        let prices = PriceBook::parse(&kernel.settings.shipping_rates, &kernel.settings.tax_rates)
            .map_err(|e| anyhow::anyhow!("shipping_rates / tax_rates: {e}"))?;
        Ok(CheckoutService {
            inner: Arc::new(Inner {
                store: CheckoutStore::new(kernel.db.clone()),
                fraud: parts.fraud,
                kernel,
                promotions: parts.promotions,
                flash: parts.flash,
                carts: parts.carts,
                catalog: parts.catalog,
                identity: parts.identity,
                payments: parts.payments,
                orders: parts.orders,
                prices,
            }),
        })
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    fn db(&self) -> &mercato_kernel::db::Db {
        self.inner.store.db()
    }

    async fn render(&self, c: CheckoutRow) -> Result<Checkout, CheckoutError> {
        let reservations = InventoryService::reservations_of(&self.inner.kernel.db, &c.id).await?;
        Ok(Checkout {
            email: c.guest.as_ref().map(|g| g.email.clone()),
            guest_token: None,
            id: c.id,
            status: c.status,
            cart_id: c.cart_id,
            items: c.lines,
            subtotal: c.subtotal,
            discount: c.discount,
            discounts: c.discounts,
            shipping: c.shipping,
            tax: c.tax,
            total: c.total,
            shipping_address: c.shipping_address,
            shipping_method: c.shipping_method,
            expires_at: c.expires_at,
            reservations,
            order_id: c.order_id,
            payment_id: c.payment_id,
            failure_code: c.failure_code,
            attempts: c.attempts,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
    }

    async fn load(&self, id: &str, who: &Principal) -> Result<CheckoutRow, CheckoutError> {
        if !mercato_kernel::id::is_valid("chk", id) {
            return Err(CheckoutError::NotFound);
        }
        let c = self
            .inner
            .store
            .checkout(id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        if c.customer_id != who.subject {
            return Err(CheckoutError::NotFound);
        }
        Ok(c)
    }

    pub async fn get(&self, id: &str, who: &Principal) -> Result<Checkout, CheckoutError> {
        let c = self.load(id, who).await?;
        self.render(c).await
    }

    /// Validates the cart, prices it with its promotions, reserves its stock (all or nothing)
    /// and one use of each applied promotion, and locks prices and discounts until
    /// `expires_at`. A newer checkout of the same cart supersedes (and releases) older
    /// open ones.
    ///
    /// Without a principal it is a guest checkout (API.md "Guest checkout"): `email` is
    /// required, the cart must be a guest cart, and the checkout gets a new guest token whose
    /// subject stands in for the customer id — everything after that is this same path.
    pub async fn create(
        &self,
        who: Option<&Principal>,
        req: CreateCheckout,
        ip: std::net::IpAddr,
    ) -> Result<Checkout, CheckoutError> {
        let (user_id, guest) = match who {
            Some(p) => {
                let id = p.user_id().ok_or_else(|| {
                    api(ApiError::forbidden().detail("checkouts are for customers and guests"))
                })?;
                if req.email.is_some() {
                    return Err(api(ApiError::invalid(
                        "email",
                        "a signed-in checkout uses the account's email",
                    )));
                }
                (id.to_owned(), None)
            }
            None => {
                let guest = self.admit_guest(&req, ip).await?;
                (guest_subject(&guest.token), Some(guest))
            }
        };
        let buyer = match &guest {
            Some(g) => Principal::guest(&g.token),
            None => who.cloned().ok_or_else(|| {
                CheckoutError::Unexpected(anyhow::anyhow!("a checkout without a buyer"))
            })?,
        };
        let who = &buyer;
        let address = match (&req.shipping_address_id, req.shipping_address.clone()) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(api(ApiError::invalid(
                    "shipping_address",
                    "send either shipping_address_id or shipping_address",
                )));
            }
            (Some(id), None) => {
                if !mercato_kernel::id::is_valid("adr", id) {
                    return Err(api(ApiError::invalid(
                        "shipping_address_id",
                        "no such address",
                    )));
                }
                let a = self
                    .inner
                    .identity
                    .address(&user_id, id)
                    .await
                    .map_err(|e| match e {
                        crate::identity::IdentityError::NotFound => {
                            api(ApiError::invalid("shipping_address_id", "no such address"))
                        }
                        other => api(other),
                    })?;
                AddressInput {
                    name: a.name,
                    line1: a.line1,
                    line2: a.line2,
                    city: a.city,
                    region: a.region,
                    postal_code: a.postal_code,
                    country: a.country,
                    phone: a.phone,
                    is_default: false,
                }
            }
            (None, Some(a)) => a.validate("shipping_address").map_err(api)?,
        };
        let method = req
            .shipping_method
            .as_deref()
            .unwrap_or("standard")
            .trim()
            .to_ascii_lowercase();
        let crate::cart::service::CheckoutCart {
            status,
            currency,
            lines,
            tokens,
            attribution,
        } = self
            .inner
            .carts
            .lines_for_checkout(&req.cart_id, guest.is_none().then_some(who))
            .await
            .map_err(api)?;
        if status != CartStatus::Active {
            return Err(api(ApiError::new(Code::CartNotActive)
                .detail(format!("the cart is {}", status.as_str()))));
        }
        if lines.is_empty() {
            return Err(api(ApiError::new(Code::CartEmpty)));
        }
        // While a flash sale of a SKU is live, its line needs the customer's purchase token and
        // is priced by the sale (a token left on a line after its sale ended is ignored).
        let mut flash: HashMap<String, FlashLine> = HashMap::new();
        for (sku, q) in &lines {
            let gated = self.inner.flash.gated(sku).await;
            let token = tokens.get(sku).filter(|_| gated).map(String::as_str);
            if let Some(f) = self
                .inner
                .flash
                .check_line(sku, token, guest.is_none().then_some(user_id.as_str()), *q)
                .await
                .map_err(api)?
            {
                flash.insert(sku.clone(), f);
            }
        }
        // A flash crowd for sold-out stock is answered here, from memory (the hot-SKU gate);
        // otherwise the reservation below decides. Flash lines draw on their sale's set-aside.
        let gate = &self.inner.kernel.stock_gate;
        if let Some((sku, requested)) = lines
            .iter()
            .find(|(s, _)| !flash.contains_key(s) && gate.sold_out(s))
        {
            metrics::counter!("checkout_insufficient_stock_total").increment(1);
            return Err(api(ApiError::new(Code::InsufficientStock)
                .detail(format!("{sku} is sold out"))
                .with("sku", sku.clone())
                .with("requested", *requested)
                .with("available", 0)));
        }
        let skus: Vec<String> = lines.iter().map(|(s, _)| s.clone()).collect();
        let infos = self.inner.catalog.skus(&skus).await.map_err(api)?;
        let mut priced = Vec::with_capacity(lines.len());
        for (sku, q) in &lines {
            let info = infos.get(sku).filter(|i| i.purchasable).ok_or_else(|| {
                api(ApiError::new(Code::ProductUnavailable)
                    .detail(format!("{sku} is not for sale"))
                    .with("sku", sku.clone()))
            })?;
            if info.unit_price.currency != currency {
                return Err(api(
                    ApiError::new(Code::CurrencyMismatch).with("sku", sku.clone())
                ));
            }
            let unit = flash.get(sku).map(|f| f.price).unwrap_or(info.unit_price);
            priced.push((sku.clone(), *q, unit));
        }
        let pricing_error = |e: crate::pricing::PricingError| match e {
            crate::pricing::PricingError::NoShipping { .. } => api(ApiError::invalid(
                "shipping_method",
                format!(
                    "cannot ship {method} to {}; available: {}",
                    address.country,
                    self.inner.prices.methods_for(&address.country).join(", ")
                ),
            )),
            other => CheckoutError::Unexpected(anyhow::anyhow!("{other}")),
        };
        let shipping = self
            .inner
            .prices
            .shipping(&method, &address.country, currency)
            .map_err(pricing_error)?;
        // Sale price → automatic promotions → coupon, with the real shipping cost (free
        // shipping competes at its value). The per-customer limit of a guest is its email's.
        let promo_customer = match &guest {
            Some(g) => format!("guest:{}", g.email.to_ascii_lowercase()),
            None => user_id.clone(),
        };
        let basket: Vec<BasketLine> = priced
            .iter()
            .map(|(sku, quantity, unit)| BasketLine {
                sku: sku.clone(),
                product_id: infos
                    .get(sku)
                    .map(|i| i.product_id.clone())
                    .unwrap_or_default(),
                quantity: *quantity,
                unit_price: unit.amount,
            })
            .collect();
        let evaluation = self
            .inner
            .promotions
            .evaluate_lines(
                currency,
                basket,
                Some(shipping.amount),
                Some(promo_customer.as_str()),
                req.coupon_code.as_deref(),
                &self.inner.store.open_for_cart(&req.cart_id).await?,
            )
            .await
            .map_err(api)?;
        let q = quote_discounted(
            &self.inner.prices,
            currency,
            &priced,
            &evaluation.line_discounts,
            Money::new(evaluation.shipping_discount, currency),
            shipping,
            &address.country,
            address.region.as_deref(),
        )
        .map_err(pricing_error)?;
        let now = self.now();
        let ttl = self.inner.kernel.settings.checkout_ttl_secs;
        let id = CheckoutId::new().into_string();
        let row = CheckoutRow {
            id: id.clone(),
            customer_id: user_id.clone(),
            cart_id: req.cart_id.clone(),
            status: CheckoutStatus::Open,
            currency,
            lines: q
                .lines
                .iter()
                .filter_map(|l| {
                    let info = infos.get(&l.sku)?;
                    Some(CheckoutLine {
                        sku: l.sku.clone(),
                        variant_id: info.variant_id.clone(),
                        product_id: info.product_id.clone(),
                        name: info.name.clone(),
                        quantity: l.quantity,
                        unit_price: l.unit_price,
                        line_total: l.line_total,
                        tax: l.tax,
                        discount: Some(l.discount),
                        seller_id: info.seller_id.clone(),
                    })
                })
                .collect(),
            subtotal: q.subtotal,
            discount: q.discount,
            discounts: Discounts::of(&evaluation, currency).discounts,
            shipping: q.shipping,
            tax: q.tax,
            total: q.total,
            shipping_address: serde_json::to_value(&address).unwrap_or_default(),
            shipping_method: method,
            attempts: 0,
            order_id: None,
            payment_id: None,
            failure_code: None,
            expires_at: now.plus_secs(ttl),
            created_at: now,
            updated_at: now,
            guest: guest.clone(),
            attribution,
        };
        let mut tx = self.db().begin().await?;
        for old in CheckoutStore::open_for_cart_tx(&mut tx, &req.cart_id).await? {
            if CheckoutStore::set_status_tx(
                &mut tx,
                &old,
                &[CheckoutStatus::Open],
                CheckoutStatus::Cancelled,
                None,
                None,
                Some("superseded"),
                now,
            )
            .await?
            {
                InventoryService::release_tx(
                    &mut tx,
                    &*self.inner.kernel.stock_gate,
                    &old,
                    false,
                    "superseded by a new checkout",
                    &user_id,
                    now,
                )
                .await?;
                PromotionService::release_tx(&mut tx, &old, now).await?;
                FlashSaleService::release_tx(&mut tx, &old, now).await?;
            }
        }
        CheckoutStore::insert_tx(&mut tx, &row).await?;
        let held: Vec<(FlashLine, i64)> = lines
            .iter()
            .filter_map(|(sku, q)| Some((flash.get(sku)?.clone(), *q)))
            .collect();
        if !held.is_empty()
            && let Err(e) = FlashSaleService::hold_tx(&mut tx, &id, &held, &user_id, now).await?
        {
            tx.rollback().await?;
            return Err(api(e));
        }
        match InventoryService::reserve_tx(
            &mut tx,
            &id,
            &lines,
            Some(&address.country),
            row.expires_at,
            &user_id,
            now,
        )
        .await?
        {
            Ok(_) => {}
            Err(Shortfall {
                sku,
                requested,
                available,
            }) => {
                tx.rollback().await?;
                if available <= 0 {
                    self.inner.kernel.stock_gate.shortfall(&sku);
                }
                metrics::counter!("checkout_insufficient_stock_total").increment(1);
                return Err(api(ApiError::new(Code::InsufficientStock)
                    .detail(format!("only {available} of {sku} available"))
                    .with("sku", sku)
                    .with("requested", requested)
                    .with("available", available)));
            }
        }
        // One use (and its amount of the budget) per applied promotion, counted like the
        // stock above: a conditional UPDATE that fails when a concurrent checkout took the last
        // use. The coupon then answers coupon_exhausted; an automatic promotion that ran out
        // between evaluation and here answers 409 so the client retries and is priced without
        // it (the customer never pays a price they were not shown).
        for a in &evaluation.applied {
            let reserved = PromotionService::reserve_tx(
                &mut tx,
                &a.promotion_id,
                &id,
                &promo_customer,
                a.value(),
                now,
            )
            .await?;
            if let Err(why) = reserved {
                tx.rollback().await?;
                return Err(api(match (&a.code, why) {
                    (Some(code), Exhausted::Unavailable) => ApiError::new(Code::CouponInvalid)
                        .detail(format!("the coupon {code} is no longer active")),
                    (Some(code), _) => ApiError::new(Code::CouponExhausted)
                        .detail(format!("the coupon {code} has reached its usage limit")),
                    (None, _) => ApiError::new(Code::Conflict).detail(format!(
                        "the promotion {} ran out while this checkout was being created; retry",
                        a.name
                    )),
                }));
            }
        }
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&CheckoutStarted {
                checkout_id: id.clone(),
                customer_id: user_id.clone(),
                cart_id: row.cart_id.clone(),
                total: row.total,
                expires_at: row.expires_at,
            }),
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("checkouts_started_total").increment(1);
        let mut checkout = self.get(&id, who).await?;
        // Shown once: only the creating response carries the guest token.
        checkout.guest_token = guest.map(|g| g.token);
        Ok(checkout)
    }

    /// A guest's checkout request: a plausible email, the per-IP and per-email hourly limits,
    /// and a new guest token.
    async fn admit_guest(
        &self,
        req: &CreateCheckout,
        ip: std::net::IpAddr,
    ) -> Result<Guest, CheckoutError> {
        let email = req
            .email
            .as_deref()
            .and_then(crate::identity::model::Email::parse)
            .ok_or_else(|| {
                api(ApiError::invalid(
                    "email",
                    "a guest checkout needs a valid email (or sign in)",
                ))
            })?;
        let settings = &self.inner.kernel.settings;
        let hour = std::time::Duration::from_secs(3600);
        let limiter = &self.inner.kernel.rate_limiter;
        for (key, per_hour) in [
            (
                format!("guest-checkout-ip:{ip}"),
                settings.guest_checkouts_per_hour_per_ip,
            ),
            (
                format!("guest-checkout-email:{}", email.as_str()),
                settings.guest_checkouts_per_hour_per_email,
            ),
        ] {
            let d = limiter
                .check(
                    &key,
                    mercato_kernel::ratelimit::Quota::new(per_hour, hour),
                    1,
                )
                .await;
            if !d.allowed {
                return Err(api(d
                    .into_error()
                    .detail("too many guest checkouts; wait or sign in")));
            }
        }
        Ok(Guest {
            email: email.as_str().to_owned(),
            token: mercato_kernel::auth::new_guest_token(),
        })
    }

    fn order_for(&self, c: &CheckoutRow, payment_id: &str, now: Timestamp) -> NewOrder {
        NewOrder {
            id: crate::orders::model::OrderId::new().into_string(),
            order_number: crate::orders::service::order_number(now),
            customer_id: c.customer_id.clone(),
            checkout_id: c.id.clone(),
            currency: c.currency,
            subtotal: c.subtotal.amount,
            discount: c.discount.amount,
            discounts: c.discounts.clone(),
            shipping: c.shipping.amount,
            tax: c.tax.amount,
            total: c.total.amount,
            shipping_address: c.shipping_address.clone(),
            shipping_method: c.shipping_method.clone(),
            payment_id: Some(payment_id.to_owned()),
            attribution: c.attribution.clone(),
            guest: c
                .guest
                .as_ref()
                .map(|g| mercato_events::orders::GuestBuyer {
                    email: g.email.clone(),
                    token: g.token.clone(),
                }),
            items: c
                .lines
                .iter()
                .map(|l| OrderItem {
                    sku: l.sku.clone(),
                    variant_id: l.variant_id.clone(),
                    product_id: l.product_id.clone(),
                    name: l.name.clone(),
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                    line_total: l.line_total,
                    tax: l.tax,
                    discount: l.discount.unwrap_or(Money::zero(c.currency)),
                    seller_id: l.seller_id.clone(),
                    returned_quantity: 0,
                })
                .collect(),
        }
    }

    fn result_body(
        order_id: &str,
        order_number: &str,
        status: &str,
        p: &PaymentRow,
        pay_status: &str,
    ) -> Vec<u8> {
        mercato_kernel::idempotency::json_bytes(&PayResult {
            order_id: order_id.to_owned(),
            order_number: order_number.to_owned(),
            status: status.to_owned(),
            payment: PaymentBrief {
                id: p.id.clone(),
                status: pay_status.to_owned(),
                amount: p.amount,
            },
        })
    }

    /// The answer for a checkout another path (a webhook, reconciliation, recovery) already
    /// settled while this request waited for the gateway.
    async fn settled_outcome(
        &self,
        checkout_id: &str,
        payment: &PaymentRow,
    ) -> Result<PayResponse, CheckoutError> {
        let c = self
            .inner
            .store
            .checkout(checkout_id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        let p = self
            .inner
            .payments
            .payment_row(&payment.id)
            .await
            .map_err(api)?;
        match c.status {
            CheckoutStatus::Completed | CheckoutStatus::PendingVerification => {
                let o = self
                    .inner
                    .orders
                    .by_checkout(checkout_id)
                    .await
                    .map_err(api)?
                    .ok_or(CheckoutError::NotFound)?;
                let (status, label) = if c.status == CheckoutStatus::Completed {
                    (StatusCode::CREATED, "confirmed")
                } else {
                    (StatusCode::ACCEPTED, "pending_verification")
                };
                Ok(PayResponse {
                    status,
                    body: Self::result_body(&o.id, &o.order_number, label, &p, p.status.as_str()),
                })
            }
            CheckoutStatus::Failed => {
                let code = c.failure_code.unwrap_or_else(|| "card_declined".into());
                let err = ApiError::new(Code::PaymentDeclined)
                    .detail(
                        "the card was declined; nothing was charged and the items were released",
                    )
                    .with("decline_code", code)
                    .with("payment_id", p.id.clone());
                Ok(PayResponse {
                    status: StatusCode::PAYMENT_REQUIRED,
                    body: err.to_body(),
                })
            }
            other => Err(api(
                ApiError::new(Code::CheckoutNotOpen).with("checkout_status", other.as_str())
            )),
        }
    }

    /// The answer to a pay retried after its attempt already started: settle the attempt now
    /// if it is still open (asking the gateway, as recovery does), then answer what the
    /// attempt came to — 201 with its order, 202 pending verification, 402/403 as refused. While
    /// the gateway cannot say yet: 409 `payment_in_progress` (never stored for replay).
    async fn converge(
        &self,
        c: &CheckoutRow,
        idem: &Idempotency,
    ) -> Result<PayResponse, CheckoutError> {
        let Some(payment_id) = c.payment_id.clone() else {
            return Err(api(
                ApiError::new(Code::CheckoutNotOpen).with("checkout_status", c.status.as_str())
            ));
        };
        if matches!(
            c.status,
            CheckoutStatus::Paying | CheckoutStatus::PendingVerification
        ) {
            self.settle_payment(&payment_id).await?;
        }
        let current = self
            .inner
            .store
            .checkout(&c.id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        if current.status == CheckoutStatus::Paying {
            return Err(api(ApiError::new(Code::PaymentInProgress)
                .detail("the gateway has not settled this payment yet; retry with the same Idempotency-Key")
                .retry_after(2)));
        }
        if current.status == CheckoutStatus::Failed
            && current.failure_code.as_deref() == Some("fraud_blocked")
        {
            let body = ApiError::new(Code::FraudBlocked).to_body();
            return Ok(PayResponse {
                status: StatusCode::FORBIDDEN,
                body,
            });
        }
        let payment = self
            .inner
            .payments
            .payment_row(&payment_id)
            .await
            .map_err(api)?;
        // The idempotency layer stores the final answer (201/402) for replay; 202 is not
        // final and is never stored (see the pay handler).
        let _ = idem;
        self.settled_outcome(&c.id, &payment).await
    }

    /// Runs the saga for one payment attempt (`Idempotency-Key` required).
    pub async fn pay(
        &self,
        id: &str,
        who: &Principal,
        req: PayRequest,
        idem: &Idempotency,
        client: &ClientSignals,
    ) -> Result<PayResponse, CheckoutError> {
        idem.require().map_err(api)?;
        let mut v = Validator::new();
        v.check(
            req.payment_method == "card",
            "payment_method",
            "payment_method must be card",
        );
        let token = req.payment_token.trim().to_owned();
        v.check(
            token.starts_with("tok_")
                && token.len() <= 100
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "payment_token",
            "payment_token must be a gateway token (tok_…)",
        );
        v.finish().map_err(api)?;
        let c = self.load(id, who).await?;
        let now = self.now();
        if c.status == CheckoutStatus::Open && c.expires_at <= now {
            self.expire(&c.id).await?;
            return Err(api(ApiError::new(Code::CheckoutExpired)));
        }
        match c.status {
            CheckoutStatus::Open => {}
            CheckoutStatus::Expired => return Err(api(ApiError::new(Code::CheckoutExpired))),
            // A retry (after a crash, a timeout, a lost answer) of an attempt already made:
            // converge to that attempt's real outcome instead of refusing.
            // In flight (any key: the attempt is settled now, never run twice), or settled
            // while this key's earlier request died or was told to retry (the same key only:
            // a new key on a finished checkout is 409 `checkout_not_open`).
            CheckoutStatus::Paying | CheckoutStatus::PendingVerification
                if c.payment_id.is_some() =>
            {
                return self.converge(&c, idem).await;
            }
            CheckoutStatus::Completed | CheckoutStatus::Failed
                if c.payment_id.is_some() && idem.0.as_ref().is_some_and(|k| k.resumed) =>
            {
                return self.converge(&c, idem).await;
            }
            other => {
                return Err(api(ApiError::new(Code::CheckoutNotOpen)
                    .detail(format!("the checkout is {}", other.as_str()))
                    .with("checkout_status", other.as_str())));
            }
        }
        // The card behind the token (fingerprint, issuing country) for the fraud rules: a
        // read that moves no money; unreachable means nothing can be charged either.
        let card = match self.inner.payments.card(&token, &c.customer_id).await {
            Ok(card) => card,
            Err(GatewayError::Unavailable { .. }) => {
                return Err(api(ApiError::new(Code::PaymentUnavailable).retry_after(5)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "card lookup failed; scoring without the card");
                None
            }
        };
        let country = c
            .shipping_address
            .get("country")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        // The buyer's email and account age are the payment's own facts (like the checkout
        // row), read once here; everything the score needs beyond them comes from memory.
        let (email, registered_at) = match &c.guest {
            Some(g) => (Some(g.email.clone()), None),
            None => match self.inner.identity.user(&c.customer_id).await {
                Ok(u) => (Some(u.email), Some(u.created_at)),
                Err(_) => (None, None),
            },
        };
        let assessment = self.inner.fraud.assess(&crate::fraud::Payment {
            checkout_id: &c.id,
            customer_id: &c.customer_id,
            email: email.as_deref(),
            registered_at,
            amount: c.total,
            shipping_country: &country,
            shipping_address: &c.shipping_address,
            card: card.as_ref(),
            client,
        });

        // 1. Intent: payment initiated, saga running, steps logged — committed before any I/O.
        let mut tx = self.db().begin().await?;
        let Some(attempt) = CheckoutStore::begin_attempt_tx(&mut tx, &c.id, now).await? else {
            tx.rollback().await?;
            let current = self
                .inner
                .store
                .checkout(&c.id)
                .await?
                .ok_or(CheckoutError::NotFound)?;
            return Err(api(if current.status == CheckoutStatus::Open {
                ApiError::new(Code::CheckoutExpired)
            } else {
                ApiError::new(Code::CheckoutNotOpen)
                    .with("checkout_status", current.status.as_str())
            }));
        };
        let saga = SagaRow {
            id: SagaId::new().into_string(),
            checkout_id: c.id.clone(),
            attempt,
            status: "running".into(),
            step: "fraud_check".into(),
            payment_id: None,
            order_id: None,
            error: None,
            created_at: now,
            updated_at: now,
        };
        CheckoutStore::insert_saga_tx(&mut tx, &saga).await?;
        FraudService::record_tx(&mut tx, &assessment, now).await?;
        if assessment.verdict == Verdict::Block {
            let why = &assessment.reason;
            CheckoutStore::steps_tx(
                &mut tx,
                &saga.id,
                &[
                    ("reserve", "succeeded", Some("at checkout creation")),
                    ("fraud_check", "failed", Some(why)),
                ],
                now,
            )
            .await?;
            InventoryService::release_tx(
                &mut tx,
                &*self.inner.kernel.stock_gate,
                &c.id,
                false,
                "fraud blocked",
                "system",
                now,
            )
            .await?;
            PromotionService::release_tx(&mut tx, &c.id, now).await?;
            FlashSaleService::release_tx(&mut tx, &c.id, now).await?;
            CheckoutStore::step_tx(&mut tx, &saga.id, "release_stock", "compensated", None, now)
                .await?;
            CheckoutStore::set_status_tx(
                &mut tx,
                &c.id,
                &[CheckoutStatus::Paying],
                CheckoutStatus::Failed,
                None,
                None,
                Some("fraud_blocked"),
                now,
            )
            .await?;
            CheckoutStore::set_saga_tx(&mut tx, &saga.id, "compensated", None, Some(why), now)
                .await?;
            let err = ApiError::new(Code::FraudBlocked);
            let body = err.to_body();
            idem.store_in(&mut tx, StatusCode::FORBIDDEN, &body).await?;
            tx.commit().await?;
            return Ok(PayResponse {
                status: StatusCode::FORBIDDEN,
                body,
            });
        }
        let review = (assessment.verdict == Verdict::Review).then(|| assessment.reason.clone());
        let payment = self
            .inner
            .payments
            .begin_tx(&mut tx, &c.id, attempt, &c.customer_id, c.total, now)
            .await?;
        CheckoutStore::set_status_tx(
            &mut tx,
            &c.id,
            &[CheckoutStatus::Paying],
            CheckoutStatus::Paying,
            None,
            Some(&payment.id),
            None,
            now,
        )
        .await?;
        InventoryService::extend_tx(&mut tx, &c.id, now.plus_secs(PAYMENT_HOLD_SECS), now).await?;
        CheckoutStore::steps_tx(
            &mut tx,
            &saga.id,
            &[
                ("reserve", "succeeded", Some("at checkout creation")),
                ("fraud_check", "succeeded", review.as_deref()),
                ("charge", "started", Some(&payment.idempotency_key)),
            ],
            now,
        )
        .await?;
        CheckoutStore::set_saga_payment_tx(
            &mut tx,
            &saga.id,
            "running",
            Some(&payment.id),
            None,
            None,
            now,
        )
        .await?;
        tx.commit().await?;

        // 2. The only network call, outside any transaction.
        let outcome = self.inner.payments.charge(&payment, &token).await;
        if self.inner.kernel.failpoints.is_on("checkout.after_charge") {
            return Err(CheckoutError::Unexpected(anyhow::anyhow!(
                "failpoint checkout.after_charge"
            )));
        }

        // 3. Settle in one transaction.
        let c = self
            .inner
            .store
            .checkout(&c.id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        match outcome {
            Ok(ChargeOutcome::Captured { charge_id, amount }) => {
                let writer = ReplayWriter {
                    idem,
                    status: StatusCode::CREATED,
                };
                self.settle_captured(
                    &saga.id,
                    &c,
                    &payment,
                    &charge_id,
                    amount.amount,
                    Some(writer),
                )
                .await
            }
            Ok(ChargeOutcome::Declined {
                charge_id,
                decline_code,
            }) => {
                self.settle_declined(
                    &saga.id,
                    &c,
                    &payment,
                    &decline_code,
                    charge_id.as_deref(),
                    Some(idem),
                )
                .await
            }
            Ok(ChargeOutcome::Unknown { reason }) => {
                self.settle_unknown(&saga.id, &c, &payment, &reason, None)
                    .await
            }
            Err(GatewayError::Unavailable { .. }) => {
                // Nothing was sent: the customer may simply try again.
                let now = self.now();
                let mut tx = self.db().begin().await?;
                crate::payments::PaymentService::record_not_sent_tx(&mut tx, &payment, now).await?;
                CheckoutStore::set_status_tx(
                    &mut tx,
                    &c.id,
                    &[CheckoutStatus::Paying],
                    CheckoutStatus::Open,
                    None,
                    None,
                    None,
                    now,
                )
                .await?;
                InventoryService::extend_tx(&mut tx, &c.id, c.expires_at, now).await?;
                CheckoutStore::step_tx(
                    &mut tx,
                    &saga.id,
                    "charge",
                    "failed",
                    Some("gateway unavailable, nothing sent"),
                    now,
                )
                .await?;
                CheckoutStore::set_saga_tx(
                    &mut tx,
                    &saga.id,
                    "failed",
                    None,
                    Some("gateway unavailable"),
                    now,
                )
                .await?;
                tx.commit().await?;
                Err(api(ApiError::new(Code::PaymentUnavailable).retry_after(5)))
            }
            Err(other) => {
                let reason = other.to_string();
                self.settle_unknown(&saga.id, &c, &payment, &reason, None)
                    .await
            }
        }
    }

    /// Capture known: record it, create/confirm the order, commit stock, convert the cart —
    /// one transaction. When the checkout can no longer become an order (it expired or failed
    /// meanwhile), the capture is refunded instead (compensation). The attempt's fraud
    /// decision is linked to the order in the same transaction, and a `review` holds it —
    /// whichever path (this request, a webhook, reconciliation, recovery) settles it.
    async fn settle_captured(
        &self,
        saga_id: &str,
        c: &CheckoutRow,
        payment: &PaymentRow,
        charge_id: &str,
        amount: i64,
        writer: Option<ReplayWriter<'_>>,
    ) -> Result<PayResponse, CheckoutError> {
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let current = CheckoutStore::lock_tx(self.db(), &mut tx, &c.id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        let payment_now = crate::payments::store::PaymentStore::payment_tx(&mut tx, &payment.id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        if !matches!(
            current.status,
            CheckoutStatus::Paying | CheckoutStatus::PendingVerification
        ) || current.payment_id.as_deref() != Some(payment.id.as_str())
        {
            // Already settled by another path, or no longer able to become an order.
            if current.status == CheckoutStatus::Completed
                && current.payment_id.as_deref() == Some(payment.id.as_str())
            {
                tx.rollback().await?;
                let o = self
                    .inner
                    .orders
                    .by_checkout(&c.id)
                    .await
                    .map_err(api)?
                    .ok_or(CheckoutError::NotFound)?;
                let body = Self::result_body(
                    &o.id,
                    &o.order_number,
                    "confirmed",
                    &payment_now,
                    payment_now.status.as_str(),
                );
                return Ok(PayResponse {
                    status: StatusCode::CREATED,
                    body,
                });
            }
            PaymentService::record_capture_tx(&mut tx, &payment_now, charge_id, amount, None, now)
                .await?;
            let refund = PaymentService::begin_refund_tx(
                &mut tx,
                &payment.id,
                Money::new(amount, payment.amount.currency),
                "capture without an order (checkout no longer payable)",
                "compensation",
                Some(&c.id),
                &format!("{}:compensation", payment.id),
                now,
            )
            .await
            .map_err(api)?;
            CheckoutStore::step_tx(
                &mut tx,
                saga_id,
                "refund",
                "started",
                Some("compensation"),
                now,
            )
            .await?;
            CheckoutStore::set_saga_tx(
                &mut tx,
                saga_id,
                "compensating",
                None,
                Some("captured after the checkout ended"),
                now,
            )
            .await?;
            tx.commit().await?;
            self.finish_compensation(saga_id, &refund.refund.id).await?;
            return Err(api(ApiError::new(Code::CheckoutNotOpen).detail(
                "the checkout ended before the payment settled; the charge is refunded",
            )));
        }
        let existing = OrderService::by_checkout_tx(&mut tx, &c.id).await?;
        let (order_id, order_number) = match existing {
            Some((oid, number, OrderStatus::Pending)) => {
                OrderService::transition_tx(
                    &mut tx,
                    &oid,
                    OrderStatus::Pending,
                    OrderEvent::Confirm,
                    "system",
                    Some("payment captured"),
                    now,
                )
                .await?;
                (oid, number)
            }
            Some((oid, number, _)) => (oid, number),
            None => {
                let o = self.order_for(&current, &payment.id, now);
                let row = OrderService::insert_tx(
                    &mut tx,
                    &o,
                    OrderStatus::Confirmed,
                    &current.customer_id,
                    now,
                )
                .await?;
                (row.id, row.order_number)
            }
        };
        PaymentService::record_capture_tx(
            &mut tx,
            &payment_now,
            charge_id,
            amount,
            Some(&order_id),
            now,
        )
        .await?;
        // Also when the capture was recorded earlier (reconciliation of a capture without an
        // order): the payment must point at its order.
        crate::payments::store::PaymentStore::set_order_tx(&mut tx, &payment.id, &order_id).await?;
        InventoryService::commit_tx(&mut tx, &c.id, &order_id, "system", now).await?;
        PromotionService::commit_tx(&mut tx, &c.id, &order_id, now).await?;
        FlashSaleService::commit_tx(&mut tx, &c.id, now).await?;
        CartStore::mark_converted(&mut tx, &c.cart_id, now).await?;
        CheckoutStore::set_status_tx(
            &mut tx,
            &c.id,
            &[CheckoutStatus::Paying, CheckoutStatus::PendingVerification],
            CheckoutStatus::Completed,
            Some(&order_id),
            Some(&payment.id),
            None,
            now,
        )
        .await?;
        FraudService::attach_order_tx(&mut tx, &c.id, &order_id, now).await?;
        CheckoutStore::steps_tx(
            &mut tx,
            saga_id,
            &[
                ("charge", "succeeded", Some(charge_id)),
                ("create_order", "succeeded", Some(&order_id)),
                ("commit_stock", "succeeded", None),
                ("convert_cart", "succeeded", None),
                ("emit_events", "succeeded", None),
            ],
            now,
        )
        .await?;
        CheckoutStore::set_saga_tx(&mut tx, saga_id, "completed", Some(&order_id), None, now)
            .await?;
        let body = Self::result_body(
            &order_id,
            &order_number,
            "confirmed",
            &payment_now,
            "captured",
        );
        if let Some(w) = writer {
            w.idem.store_in(&mut tx, w.status, &body).await?;
        }
        tx.commit().await?;
        metrics::counter!("checkouts_completed_total").increment(1);
        Ok(PayResponse {
            status: StatusCode::CREATED,
            body,
        })
    }

    async fn finish_compensation(
        &self,
        saga_id: &str,
        refund_id: &str,
    ) -> Result<(), CheckoutError> {
        let r = self
            .inner
            .payments
            .process_refund(refund_id)
            .await
            .map_err(api)?;
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let state = if r.refund.status == "succeeded" {
            "succeeded"
        } else {
            "pending"
        };
        CheckoutStore::step_tx(&mut tx, saga_id, "refund", state, Some(refund_id), now).await?;
        let status = if state == "succeeded" {
            "compensated"
        } else {
            "compensating"
        };
        CheckoutStore::set_saga_tx(&mut tx, saga_id, status, None, None, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Declined (or confirmed not captured): release the stock, fail the checkout (and a
    /// pending order).
    async fn settle_declined(
        &self,
        saga_id: &str,
        c: &CheckoutRow,
        payment: &PaymentRow,
        code: &str,
        charge_id: Option<&str>,
        idem: Option<&Idempotency>,
    ) -> Result<PayResponse, CheckoutError> {
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let current = CheckoutStore::lock_tx(self.db(), &mut tx, &c.id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        if !matches!(
            current.status,
            CheckoutStatus::Paying | CheckoutStatus::PendingVerification
        ) || current.payment_id.as_deref() != Some(payment.id.as_str())
        {
            tx.rollback().await?;
            return self.settled_outcome(&c.id, payment).await;
        }
        let payment_now = crate::payments::store::PaymentStore::payment_tx(&mut tx, &payment.id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        PaymentService::record_decline_tx(&mut tx, &payment_now, code, charge_id, now).await?;
        CheckoutStore::step_tx(&mut tx, saga_id, "charge", "failed", Some(code), now).await?;
        InventoryService::release_tx(
            &mut tx,
            &*self.inner.kernel.stock_gate,
            &c.id,
            false,
            "payment declined",
            "system",
            now,
        )
        .await?;
        PromotionService::release_tx(&mut tx, &c.id, now).await?;
        FlashSaleService::release_tx(&mut tx, &c.id, now).await?;
        CheckoutStore::step_tx(&mut tx, saga_id, "release_stock", "compensated", None, now).await?;
        if let Some((oid, _, OrderStatus::Pending)) =
            OrderService::by_checkout_tx(&mut tx, &c.id).await?
        {
            OrderService::transition_tx(
                &mut tx,
                &oid,
                OrderStatus::Pending,
                OrderEvent::Fail,
                "system",
                Some(code),
                now,
            )
            .await?;
            CheckoutStore::step_tx(
                &mut tx,
                saga_id,
                "cancel_order",
                "compensated",
                Some(&oid),
                now,
            )
            .await?;
        }
        CheckoutStore::set_status_tx(
            &mut tx,
            &c.id,
            &[CheckoutStatus::Paying, CheckoutStatus::PendingVerification],
            CheckoutStatus::Failed,
            None,
            None,
            Some(code),
            now,
        )
        .await?;
        CheckoutStore::set_saga_tx(&mut tx, saga_id, "compensated", None, Some(code), now).await?;
        let err = ApiError::new(Code::PaymentDeclined)
            .detail("the card was declined; nothing was charged and the items were released")
            .with("decline_code", code)
            .with("payment_id", payment.id.clone());
        let body = err.to_body();
        if let Some(idem) = idem {
            idem.store_in(&mut tx, StatusCode::PAYMENT_REQUIRED, &body)
                .await?;
        }
        tx.commit().await?;
        metrics::counter!("checkouts_failed_total", "reason" => "declined").increment(1);
        Ok(PayResponse {
            status: StatusCode::PAYMENT_REQUIRED,
            body,
        })
    }

    /// Outcome unknown: a pending order holds the stock; reconciliation settles it.
    async fn settle_unknown(
        &self,
        saga_id: &str,
        c: &CheckoutRow,
        payment: &PaymentRow,
        reason: &str,
        idem: Option<&Idempotency>,
    ) -> Result<PayResponse, CheckoutError> {
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let current = CheckoutStore::lock_tx(self.db(), &mut tx, &c.id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        if current.status != CheckoutStatus::Paying
            || current.payment_id.as_deref() != Some(payment.id.as_str())
        {
            // A webhook or reconciliation settled it while we waited for the gateway.
            tx.rollback().await?;
            return self.settled_outcome(&c.id, payment).await;
        }
        let o = self.order_for(c, &payment.id, now);
        let row =
            OrderService::insert_tx(&mut tx, &o, OrderStatus::Pending, &c.customer_id, now).await?;
        PaymentService::record_pending_tx(&mut tx, payment, reason, Some(&row.id), now).await?;
        CheckoutStore::step_tx(&mut tx, saga_id, "charge", "unknown", Some(reason), now).await?;
        CheckoutStore::set_status_tx(
            &mut tx,
            &c.id,
            &[CheckoutStatus::Paying],
            CheckoutStatus::PendingVerification,
            Some(&row.id),
            None,
            None,
            now,
        )
        .await?;
        CheckoutStore::set_saga_tx(
            &mut tx,
            saga_id,
            "awaiting_verification",
            Some(&row.id),
            None,
            now,
        )
        .await?;
        let body = Self::result_body(
            &row.id,
            &row.order_number,
            "pending_verification",
            payment,
            "pending_verification",
        );
        if let Some(idem) = idem {
            idem.store_in(&mut tx, StatusCode::ACCEPTED, &body).await?;
        }
        tx.commit().await?;
        metrics::counter!("checkouts_pending_verification_total").increment(1);
        Ok(PayResponse {
            status: StatusCode::ACCEPTED,
            body,
        })
    }

    /// Settles the saga of `payment_id` by asking the gateway (recovery, reconciliation,
    /// webhooks, admin retry). Returns whether it was settled.
    pub async fn settle_payment(&self, payment_id: &str) -> Result<bool, CheckoutError> {
        let payment = self
            .inner
            .payments
            .payment_row(payment_id)
            .await
            .map_err(api)?;
        let Some(saga) = self.inner.store.saga_for_payment(payment_id).await? else {
            return Ok(false);
        };
        let c = self
            .inner
            .store
            .checkout(&saga.checkout_id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        use crate::payments::model::PaymentStatus as P;
        match payment.status {
            P::Initiated | P::PendingVerification => {}
            P::Captured if c.status != CheckoutStatus::Completed => {
                let charge = payment.gateway_ref.clone().unwrap_or_default();
                self.settle_captured(
                    &saga.id,
                    &c,
                    &payment,
                    &charge,
                    payment.captured.amount,
                    None,
                )
                .await
                .ok();
                return Ok(true);
            }
            _ => return Ok(false),
        }
        let resolution = match self.inner.payments.resolve(&payment).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(payment = payment_id, error = %e, "gateway lookup failed; will retry");
                return Ok(false);
            }
        };
        match resolution {
            Resolution::Captured { charge_id, amount } => {
                match self
                    .settle_captured(&saga.id, &c, &payment, &charge_id, amount, None)
                    .await
                {
                    Ok(_) | Err(CheckoutError::Api(_)) => Ok(true),
                    Err(e) => Err(e),
                }
            }
            Resolution::Declined { code } => {
                self.settle_declined(&saga.id, &c, &payment, &code, None, None)
                    .await?;
                Ok(true)
            }
            Resolution::Absent => {
                // The gateway never received it: nothing was charged.
                let grace = Duration::from_millis(
                    self.inner
                        .kernel
                        .settings
                        .gateway_timeout_ms
                        .saturating_mul(2),
                );
                if self.now().since(payment.updated_at) < grace {
                    return Ok(false);
                }
                self.settle_declined(&saga.id, &c, &payment, "not_received", None, None)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Expires one open checkout past its `expires_at`: releases its stock.
    async fn expire(&self, id: &str) -> Result<bool, CheckoutError> {
        let now = self.now();
        let mut tx = self.db().begin().await?;
        let c = CheckoutStore::lock_tx(self.db(), &mut tx, id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        if c.status != CheckoutStatus::Open || c.expires_at > now {
            tx.rollback().await?;
            return Ok(false);
        }
        if !CheckoutStore::set_status_tx(
            &mut tx,
            id,
            &[CheckoutStatus::Open],
            CheckoutStatus::Expired,
            None,
            None,
            Some("expired"),
            now,
        )
        .await?
        {
            tx.rollback().await?;
            return Ok(false);
        }
        InventoryService::release_tx(
            &mut tx,
            &*self.inner.kernel.stock_gate,
            id,
            true,
            "checkout expired",
            "system",
            now,
        )
        .await?;
        PromotionService::release_tx(&mut tx, id, now).await?;
        FlashSaleService::release_tx(&mut tx, id, now).await?;
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&CheckoutExpired {
                checkout_id: id.to_owned(),
                customer_id: c.customer_id.clone(),
            }),
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("checkouts_expired_total").increment(1);
        Ok(true)
    }

    /// Sweeper: expire open checkouts past their time (one batch).
    pub async fn expire_due(&self) -> anyhow::Result<Outcome> {
        let ids = self.inner.store.expired_open(self.now(), 100).await?;
        for id in &ids {
            self.expire(id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(if ids.len() >= 100 {
            Outcome::Worked
        } else {
            Outcome::Idle
        })
    }

    /// Recovery worker: sagas left `running` (a crash between steps) are settled by asking
    /// the gateway.
    pub async fn recover_stuck(&self) -> anyhow::Result<Outcome> {
        let after = Duration::from_secs(self.inner.kernel.settings.saga_stuck_after_secs);
        let stuck = self
            .inner
            .store
            .stuck("running", self.now().minus(after), 50)
            .await?;
        for s in &stuck {
            match &s.payment_id {
                Some(pid) => {
                    if let Err(e) = self.settle_payment(pid).await {
                        tracing::warn!(saga = %s.id, error = %e, "recovery failed; will retry");
                    }
                }
                None => {
                    // Crashed before the payment intent: nothing was charged; reopen.
                    let now = self.now();
                    let mut tx = self.db().begin().await?;
                    CheckoutStore::set_status_tx(
                        &mut tx,
                        &s.checkout_id,
                        &[CheckoutStatus::Paying],
                        CheckoutStatus::Open,
                        None,
                        None,
                        None,
                        now,
                    )
                    .await?;
                    CheckoutStore::set_saga_tx(
                        &mut tx,
                        &s.id,
                        "failed",
                        None,
                        Some("interrupted before charging"),
                        now,
                    )
                    .await?;
                    tx.commit().await?;
                }
            }
        }
        Ok(if stuck.len() >= 50 {
            Outcome::Worked
        } else {
            Outcome::Idle
        })
    }

    /// Reconciliation: settles payments whose outcome is unknown, and releases reservations
    /// whose checkout is no longer live.
    pub async fn reconcile(&self) -> anyhow::Result<Outcome> {
        let pending = self
            .inner
            .payments
            .pending(Duration::ZERO, 100)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for p in &pending {
            if let Err(e) = self.settle_payment(&p.id).await {
                tracing::warn!(payment = %p.id, error = %e, "reconciliation failed; will retry");
            }
        }
        // Captured payments without an order (a capture recorded, its settlement lost).
        let orphans = self
            .inner
            .payments
            .captured_without_order(
                Duration::from_secs(self.inner.kernel.settings.saga_stuck_after_secs),
                100,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for p in &orphans {
            if let Err(e) = self.settle_payment(&p.id).await {
                tracing::warn!(payment = %p.id, error = %e, "settling a capture without an order failed; will retry");
            }
        }
        // Reservations without a live checkout.
        let held = InventoryService::checkouts_with_active_reservations(&self.inner.kernel.db, 500)
            .await?;
        if !held.is_empty() {
            let statuses = self.inner.store.statuses(&held).await?;
            let now = self.now();
            for (id, status) in statuses {
                let live = matches!(status.as_str(), "open" | "paying" | "pending_verification");
                if !live {
                    let mut tx = self.db().begin().await?;
                    let n = InventoryService::release_tx(
                        &mut tx,
                        &*self.inner.kernel.stock_gate,
                        &id,
                        false,
                        "no live checkout",
                        "reconciliation",
                        now,
                    )
                    .await?;
                    // Release gives committed uses back too (a cancelled order's): a completed
                    // checkout's uses belong to its order and are left alone.
                    if status != "completed" {
                        PromotionService::release_tx(&mut tx, &id, now).await?;
                        FlashSaleService::release_tx(&mut tx, &id, now).await?;
                    }
                    tx.commit().await?;
                    if !n.is_empty() {
                        tracing::warn!(checkout = %id, "released reservations of a dead checkout");
                    }
                }
            }
        }
        Ok(Outcome::Idle)
    }

    pub async fn saga(&self, id: &str) -> Result<Saga, CheckoutError> {
        let s = self
            .inner
            .store
            .saga(id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        let steps = self.inner.store.steps(id).await?;
        Ok(Saga {
            id: s.id,
            checkout_id: s.checkout_id,
            attempt: s.attempt,
            status: s.status,
            step: s.step,
            payment_id: s.payment_id,
            order_id: s.order_id,
            error: s.error,
            steps,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }

    pub async fn sagas(
        &self,
        status: Option<&str>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<Saga>, CheckoutError> {
        let rows = self.inner.store.list_sagas(status, after, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.saga(&r.id).await?);
        }
        Ok(out)
    }

    /// Admin retry: settle the saga now, whatever its age.
    pub async fn retry_saga(&self, id: &str) -> Result<Saga, CheckoutError> {
        let s = self
            .inner
            .store
            .saga(id)
            .await?
            .ok_or(CheckoutError::NotFound)?;
        if let Some(pid) = &s.payment_id {
            self.settle_payment(pid).await?;
        }
        self.saga(id).await
    }
}
