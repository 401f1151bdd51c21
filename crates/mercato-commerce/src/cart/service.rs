//! Cart use cases: create/reuse, read with current prices and warnings, add/update/remove
//! lines with a soft stock check, merge a guest cart at login, expire idle guest carts.

use super::model::{Cart, CartItem, CartStatus, CartWarning, merged_quantity};
use super::store::{CartRow, CartStore, LineRow, Refusal};
use crate::catalog::{CatalogService, SkuInfo};
use crate::flash_sales::{FlashSaleError, FlashSaleService};
use crate::seams::StockLevels;
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::jobs::Outcome;
use mercato_kernel::{Currency, Kernel, Money, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;

mercato_kernel::typed_id!(
    /// A cart; for guest carts the id is the bearer secret.
    CartId, "cart");

#[derive(Debug, thiserror::Error)]
pub enum CartError {
    #[error("not found")]
    NotFound,
    #[error("sku not found")]
    UnknownSku(String),
    #[error("cart not active")]
    NotActive(CartStatus),
    #[error("product unavailable")]
    Unavailable(String),
    #[error("insufficient stock")]
    InsufficientStock {
        sku: String,
        requested: i64,
        available: i64,
    },
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<mercato_kernel::db::StoreError> for CartError {
    fn from(e: mercato_kernel::db::StoreError) -> Self {
        CartError::Unexpected(e.into())
    }
}

impl From<crate::catalog::CatalogError> for CartError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        CartError::Unexpected(anyhow::anyhow!("catalog: {e}"))
    }
}

impl From<FlashSaleError> for CartError {
    fn from(e: FlashSaleError) -> Self {
        CartError::Invalid(ApiError::from(e))
    }
}

impl From<CartError> for ApiError {
    fn from(e: CartError) -> ApiError {
        match e {
            CartError::NotFound => ApiError::not_found(),
            CartError::UnknownSku(sku) => ApiError::not_found()
                .detail(format!("no product variant has SKU {sku}"))
                .with("sku", sku),
            CartError::NotActive(status) => ApiError::new(Code::CartNotActive)
                .detail(format!("this cart is {}", status.as_str()))
                .with("cart_status", status.as_str()),
            CartError::Unavailable(sku) => ApiError::new(Code::ProductUnavailable)
                .detail(format!("{sku} is not for sale"))
                .with("sku", sku),
            CartError::InsufficientStock {
                sku,
                requested,
                available,
            } => ApiError::new(Code::InsufficientStock)
                .detail(format!("only {available} of {sku} available"))
                .with("sku", sku)
                .with("requested", requested)
                .with("available", available),
            CartError::Invalid(e) => e,
            CartError::Unexpected(e) => ApiError::from(e),
        }
    }
}

#[derive(Clone)]
pub struct CartService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: CartStore,
    catalog: CatalogService,
    stock: Arc<dyn StockLevels>,
    flash: FlashSaleService,
}

impl CartService {
    pub fn new(
        kernel: Kernel,
        catalog: CatalogService,
        stock: Arc<dyn StockLevels>,
        flash: FlashSaleService,
    ) -> CartService {
        CartService {
            inner: Arc::new(Inner {
                store: CartStore::new(kernel.db.clone()),
                kernel,
                catalog,
                stock,
                flash,
            }),
        }
    }

    fn stock(&self) -> Arc<dyn StockLevels> {
        self.inner.stock.clone()
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    fn line_max(&self) -> i64 {
        self.inner.kernel.settings.cart_max_line_quantity
    }

    fn guest_expiry(&self, now: Timestamp) -> Timestamp {
        now.plus_secs(
            self.inner
                .kernel
                .settings
                .guest_cart_ttl_days
                .saturating_mul(86_400),
        )
    }

    /// A guest gets a new cart; a signed-in user gets their active cart, created on first use.
    /// Returns the cart and whether it was created.
    pub async fn create(
        &self,
        who: Option<&Principal>,
        currency: Option<&str>,
        attribution: Option<&str>,
    ) -> Result<(Cart, bool), CartError> {
        let attribution = attribution.map(str::trim);
        if let Some(code) = attribution
            && !((3..=64).contains(&code.len())
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(CartError::Invalid(ApiError::invalid(
                "attribution",
                "a short-link code: 3 to 64 of A-Z, a-z, 0-9, _ and -",
            )));
        }
        let currency = match currency {
            Some(c) => Currency::parse(c).ok_or_else(|| {
                CartError::Invalid(ApiError::invalid(
                    "currency",
                    "currency must be a 3-letter ISO 4217 code",
                ))
            })?,
            None => Currency::parse(&self.inner.kernel.settings.default_currency)
                .unwrap_or(Currency::USD),
        };
        let now = self.now();
        let user = who.and_then(|p| p.user_id().map(str::to_owned));
        if let Some(user_id) = &user {
            if let Some(existing) = self.inner.store.active_for_user(user_id).await? {
                if let Some(code) = attribution {
                    self.inner.store.set_attribution(&existing.id, code).await?;
                }
                return Ok((self.view(existing.id.as_str(), who).await?, false));
            }
            let id = CartId::new();
            match self
                .inner
                .store
                .insert(id.as_str(), Some(user_id), currency, now, None, attribution)
                .await
            {
                Ok(row) => Ok((self.render(row, Vec::new()).await?, true)),
                // Two first requests raced: the partial unique index kept one active cart.
                Err(e) if e.is_unique_violation() => {
                    let row = self
                        .inner
                        .store
                        .active_for_user(user_id)
                        .await?
                        .ok_or(CartError::NotFound)?;
                    Ok((self.view(&row.id, who).await?, false))
                }
                Err(e) => Err(e.into()),
            }
        } else {
            // A guest cart id is a bearer secret: 128 random bits.
            let id = mercato_kernel::id::new_secret_id("cart");
            let row = self
                .inner
                .store
                .insert(
                    &id,
                    None,
                    currency,
                    now,
                    Some(self.guest_expiry(now)),
                    attribution,
                )
                .await?;
            Ok((self.render(row, Vec::new()).await?, true))
        }
    }

    /// Loads a cart the caller may see: a guest cart by its secret id; a user's cart only by
    /// its owner (others get 404, never 403, so existence does not leak).
    async fn load(
        &self,
        id: &str,
        who: Option<&Principal>,
    ) -> Result<(CartRow, Vec<LineRow>), CartError> {
        if !mercato_kernel::id::is_valid("cart", id) {
            return Err(CartError::NotFound);
        }
        let (row, lines) = self
            .inner
            .store
            .cart(id)
            .await?
            .ok_or(CartError::NotFound)?;
        if let Some(owner) = &row.user_id {
            let allowed = who.is_some_and(|p| &p.subject == owner || p.role == Role::Admin);
            if !allowed {
                return Err(CartError::NotFound);
            }
        }
        Ok((row, lines))
    }

    pub async fn view(&self, id: &str, who: Option<&Principal>) -> Result<Cart, CartError> {
        let (row, lines) = self.load(id, who).await?;
        self.render(row, lines).await
    }

    async fn render(&self, row: CartRow, lines: Vec<LineRow>) -> Result<Cart, CartError> {
        let skus: Vec<String> = lines.iter().map(|l| l.sku.clone()).collect();
        let infos = if skus.is_empty() {
            HashMap::new()
        } else {
            self.inner.catalog.skus(&skus).await?
        };
        let stock = if skus.is_empty() {
            HashMap::new()
        } else {
            self.stock().available(&skus).await?
        };
        let mut subtotal = Money::zero(row.currency);
        let mut item_count = 0i64;
        let mut warnings = Vec::new();
        let mut items = Vec::with_capacity(lines.len());
        for l in lines {
            let info = infos.get(&l.sku);
            let available = stock.get(&l.sku).copied();
            // A line bought with a flash-sale token is priced by its sale while it runs (its
            // units are set aside, so the shop's availability does not apply to it).
            let flash_price = match &l.purchase_token {
                Some(_) => self.inner.flash.price_for(&l.sku).await,
                None => None,
            };
            let unit_price = flash_price
                .or_else(|| info.map(|i| i.unit_price))
                .unwrap_or(l.price_at_addition);
            let mut w = Vec::new();
            let purchasable = info.is_some_and(|i| i.purchasable);
            if !purchasable {
                w.push("unavailable".to_owned());
            }
            if unit_price != l.price_at_addition {
                w.push("price_changed".to_owned());
            }
            if flash_price.is_none() && available.is_some_and(|a| a < l.quantity) {
                w.push("insufficient_stock".to_owned());
            }
            if l.purchase_token.is_none() && self.inner.flash.gated(&l.sku).await {
                w.push("purchase_token_required".to_owned());
            }
            let line_total = unit_price
                .checked_mul(l.quantity)
                .map_err(|e| CartError::Unexpected(anyhow::anyhow!("{e}")))?;
            if purchasable && line_total.currency == subtotal.currency {
                subtotal = subtotal
                    .checked_add(line_total)
                    .map_err(|e| CartError::Unexpected(anyhow::anyhow!("{e}")))?;
            }
            item_count += l.quantity;
            for code in &w {
                warnings.push(CartWarning {
                    code: code.clone(),
                    sku: l.sku.clone(),
                });
            }
            items.push(CartItem {
                name: info
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| l.sku.clone()),
                variant_id: info.map(|i| i.variant_id.clone()),
                product_id: info.map(|i| i.product_id.clone()),
                sku: l.sku,
                quantity: l.quantity,
                unit_price,
                price_at_addition: l.price_at_addition,
                line_total,
                available,
                warnings: w,
            });
        }
        Ok(Cart {
            id: row.id,
            status: row.status,
            user_id: row.user_id,
            currency: row.currency.as_str().to_owned(),
            items,
            subtotal,
            item_count,
            warnings,
            expires_at: row.expires_at,
            merged_into: row.merged_into,
            attribution: row.attribution,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    fn check_quantity(&self, quantity: i64, allow_zero: bool) -> Result<(), CartError> {
        let min = if allow_zero { 0 } else { 1 };
        if quantity < min || quantity > self.line_max() {
            return Err(CartError::Invalid(ApiError::invalid(
                "quantity",
                format!("quantity must be {min} to {}", self.line_max()),
            )));
        }
        Ok(())
    }

    async fn sku_info(&self, sku: &str) -> Result<SkuInfo, CartError> {
        let parsed = crate::catalog::model::Sku::parse(sku)
            .ok_or_else(|| CartError::UnknownSku(sku.to_owned()))?;
        let key = parsed.as_str().to_owned();
        let mut infos = self.inner.catalog.skus(std::slice::from_ref(&key)).await?;
        infos.remove(&key).ok_or(CartError::UnknownSku(key))
    }

    fn refusal(&self, r: Refusal, status: Option<CartStatus>) -> CartError {
        match r {
            Refusal::NotFound => CartError::NotFound,
            Refusal::NotActive => CartError::NotActive(status.unwrap_or(CartStatus::Merged)),
            Refusal::NotInCart => CartError::NotFound,
            Refusal::OverLimit { .. } => {
                CartError::Invalid(ApiError::invalid("quantity", "over the line limit"))
            }
        }
    }

    /// Adds `quantity` of `sku` to the cart (summing with an existing line). While a flash
    /// sale of the SKU is live, only with the customer's `purchase_token`, at the sale price.
    pub async fn add_item(
        &self,
        id: &str,
        who: Option<&Principal>,
        sku: &str,
        quantity: i64,
        purchase_token: Option<&str>,
    ) -> Result<Cart, CartError> {
        self.check_quantity(quantity, false)?;
        let (row, lines) = self.load(id, who).await?;
        if row.status != CartStatus::Active {
            return Err(CartError::NotActive(row.status));
        }
        let info = self.sku_info(sku).await?;
        if !info.purchasable {
            return Err(CartError::Unavailable(info.sku));
        }
        if info.unit_price.currency != row.currency {
            return Err(CartError::Invalid(
                ApiError::new(Code::CurrencyMismatch)
                    .detail(format!(
                        "{} is priced in {}, the cart in {}",
                        info.sku, info.unit_price.currency, row.currency
                    ))
                    .with("sku", info.sku.clone()),
            ));
        }
        let current = lines
            .iter()
            .find(|l| l.sku == info.sku)
            .map(|l| l.quantity)
            .unwrap_or(0);
        let flash = self
            .inner
            .flash
            .check_line(
                &info.sku,
                purchase_token,
                who.and_then(|p| p.user_id()),
                current + quantity,
            )
            .await?;
        let available = match flash {
            // The sale's units are set aside for its token holders.
            Some(_) => None,
            None => self
                .stock()
                .available(std::slice::from_ref(&info.sku))
                .await?
                .get(&info.sku)
                .copied(),
        };
        // Soft check: no reservation is made; checkout is the hard gate.
        if let Some(a) = available
            && current + quantity > a
        {
            return Err(CartError::InsufficientStock {
                sku: info.sku,
                requested: current + quantity,
                available: a,
            });
        }
        let now = self.now();
        let limit = self.line_max();
        match self
            .inner
            .store
            .add(
                id,
                &info.sku,
                quantity,
                flash.as_ref().map(|f| f.price).unwrap_or(info.unit_price),
                flash.as_ref().and(purchase_token),
                limit,
                now,
                self.guest_expiry(now),
            )
            .await?
        {
            Ok(_) => {}
            Err(Refusal::OverLimit { current }) => {
                return Err(CartError::Invalid(ApiError::invalid(
                    "quantity",
                    format!(
                        "a line holds at most {limit}; this cart already has {current} of {}",
                        info.sku
                    ),
                )));
            }
            Err(r) => return Err(self.refusal(r, Some(row.status))),
        }
        metrics::counter!("cart_items_added_total").increment(1);
        self.view(id, who).await
    }

    /// Sets a line's quantity (0 removes it).
    pub async fn set_quantity(
        &self,
        id: &str,
        who: Option<&Principal>,
        sku: &str,
        quantity: i64,
    ) -> Result<Cart, CartError> {
        self.check_quantity(quantity, true)?;
        let (row, lines) = self.load(id, who).await?;
        if row.status != CartStatus::Active {
            return Err(CartError::NotActive(row.status));
        }
        let key = crate::catalog::model::Sku::parse(sku)
            .map(|s| s.as_str().to_owned())
            .ok_or_else(|| CartError::UnknownSku(sku.to_owned()))?;
        let Some(line) = lines.iter().find(|l| l.sku == key) else {
            return Err(CartError::UnknownSku(key));
        };
        if quantity > 0 && line.purchase_token.is_some() && self.inner.flash.gated(&key).await {
            // A token line stays within what its token buys; its units are set aside.
            self.inner
                .flash
                .check_line(
                    &key,
                    line.purchase_token.as_deref(),
                    who.and_then(|p| p.user_id()),
                    quantity,
                )
                .await?;
        } else if quantity > 0 {
            let available = self
                .stock()
                .available(std::slice::from_ref(&key))
                .await?
                .get(&key)
                .copied();
            if let Some(a) = available
                && quantity > a
            {
                return Err(CartError::InsufficientStock {
                    sku: key,
                    requested: quantity,
                    available: a,
                });
            }
        }
        let now = self.now();
        match self
            .inner
            .store
            .set_quantity(id, &key, quantity, now, self.guest_expiry(now))
            .await?
        {
            Ok(()) => self.view(id, who).await,
            Err(Refusal::NotInCart) => Err(CartError::UnknownSku(key)),
            Err(r) => Err(self.refusal(r, Some(row.status))),
        }
    }

    /// Merges an active guest cart into the user's active cart (created when missing): same
    /// SKU → quantities summed, capped at the line maximum and at availability; the guest cart
    /// becomes `merged`. Anything else (unknown id, a user's cart, already merged) is left
    /// alone: a stale cart id in a client must not make login fail.
    pub async fn merge_guest_cart(
        &self,
        user_id: &str,
        guest_id: &str,
    ) -> Result<Option<String>, CartError> {
        if !mercato_kernel::id::is_valid("cart", guest_id) {
            return Ok(None);
        }
        let Some((guest, guest_lines)) = self.inner.store.cart(guest_id).await? else {
            return Ok(None);
        };
        if guest.user_id.is_some() || guest.status != CartStatus::Active {
            return Ok(None);
        }
        let principal = Principal {
            subject: user_id.to_owned(),
            role: Role::Customer,
        };
        let (user_cart, _) = self
            .create(Some(&principal), Some(guest.currency.as_str()), None)
            .await?;
        let (_, user_lines) = self
            .inner
            .store
            .cart(&user_cart.id)
            .await?
            .ok_or(CartError::NotFound)?;
        let skus: Vec<String> = guest_lines.iter().map(|l| l.sku.clone()).collect();
        let stock = self.stock().available(&skus).await?;
        let existing: HashMap<&str, i64> = user_lines
            .iter()
            .map(|l| (l.sku.as_str(), l.quantity))
            .collect();
        let merged: Vec<(LineRow, i64)> = guest_lines
            .into_iter()
            .filter(|l| l.price_at_addition.currency.as_str() == user_cart.currency)
            .map(|l| {
                let have = existing.get(l.sku.as_str()).copied().unwrap_or(0);
                let q = merged_quantity(
                    have,
                    l.quantity,
                    self.line_max(),
                    stock.get(&l.sku).copied(),
                );
                (l, q)
            })
            .collect();
        let done = self
            .inner
            .store
            .merge(guest_id, &user_cart.id, &merged, self.now())
            .await?;
        Ok(done.then_some(user_cart.id))
    }

    /// One sweep of idle guest carts (the sweeper worker calls this).
    pub async fn expire_guest_carts(&self) -> anyhow::Result<Outcome> {
        let n = self.inner.store.expire_guests(self.now(), 500).await?;
        if n > 0 {
            metrics::counter!("carts_expired_total").increment(n);
        }
        Ok(if n >= 500 {
            Outcome::Worked
        } else {
            Outcome::Idle
        })
    }

    /// Lines of a cart for checkout (owner only).
    pub async fn lines_for_checkout(
        &self,
        id: &str,
        who: Option<&Principal>,
    ) -> Result<CheckoutCart, CartError> {
        let (row, lines) = self.load(id, who).await?;
        Ok(CheckoutCart {
            status: row.status,
            currency: row.currency,
            tokens: lines
                .iter()
                .filter_map(|l| Some((l.sku.clone(), l.purchase_token.clone()?)))
                .collect(),
            lines: lines.into_iter().map(|l| (l.sku, l.quantity)).collect(),
            attribution: row.attribution,
        })
    }
}

/// What checkout takes of a cart.
pub struct CheckoutCart {
    pub status: CartStatus,
    pub currency: Currency,
    /// (sku, quantity) per line.
    pub lines: Vec<(String, i64)>,
    /// sku → the flash-sale purchase token its line was added with.
    pub tokens: HashMap<String, String>,
    /// The short-link code the cart came through.
    pub attribution: Option<String>,
}

#[async_trait::async_trait]
impl crate::identity::LoginHook for CartService {
    async fn on_login(&self, user_id: &str, guest_cart_id: Option<&str>) -> Result<(), ApiError> {
        if let Some(id) = guest_cart_id {
            self.merge_guest_cart(user_id, id).await?;
        }
        Ok(())
    }
}
