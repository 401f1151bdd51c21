//! Mercato's commerce core: one module per domain, each with the same shape
//! (`mod.rs` contract, `model.rs` pure rules, `store.rs` SQL, `service.rs` use cases,
//! `http.rs` routes). Modules talk through service APIs or events, never each other's tables.
#![forbid(unsafe_code)]

pub mod cart;
pub mod catalog;
pub mod checkout;
pub mod flash_sales;
pub mod fraud;
pub mod gateway;
pub mod identity;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod pricing;
pub mod promotions;
pub mod seams;
pub mod search;

use axum::extract::FromRef;
use mercato_kernel::Kernel;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

/// State shared by the commerce routes.
#[derive(Clone)]
pub struct AppState {
    pub kernel: Kernel,
    pub identity: identity::IdentityService,
    pub catalog: catalog::CatalogService,
    pub carts: cart::CartService,
    pub inventory: inventory::InventoryService,
    pub payments: payments::PaymentService,
    pub orders: orders::OrderService,
    pub checkout: checkout::CheckoutService,
    pub search: search::SearchService,
    pub promotions: promotions::PromotionService,
    pub flash_sales: flash_sales::FlashSaleService,
    pub fraud: fraud::FraudService,
}

impl FromRef<AppState> for Kernel {
    fn from_ref(s: &AppState) -> Kernel {
        s.kernel.clone()
    }
}

impl AppState {
    /// Builds every commerce service on top of the kernel, in dependency order: each service
    /// receives what it uses at construction, so a missing dependency does not compile. The
    /// graph has no cycle; the two edges that would close one are events or the caller's job
    /// (docs/architecture.md): orders learn of refunds from `payment.refunded`, and the
    /// gateway webhook route hands the payment it settled to checkout.
    pub fn build(
        kernel: Kernel,
        jwt_secret: &[u8],
        gateway: Arc<dyn gateway::PaymentGateway>,
        webhook_secret: String,
    ) -> anyhow::Result<AppState> {
        let payments = payments::PaymentService::new(kernel.clone(), gateway, webhook_secret);
        let orders = orders::OrderService::new(kernel.clone(), payments.clone());
        let inventory = inventory::InventoryService::new(
            kernel.clone(),
            catalog::SkuDirectory::new(kernel.db.clone()),
        );
        let catalog = catalog::CatalogService::new(
            kernel.clone(),
            Arc::new(inventory.clone()),
            Arc::new(orders.clone()),
        );
        let flash_sales = flash_sales::FlashSaleService::new(
            kernel.clone(),
            catalog.clone(),
            Arc::new(flash_sales::room::MemoryWaitingRoom::default()),
            jwt_secret,
        );
        let carts = cart::CartService::new(
            kernel.clone(),
            catalog.clone(),
            Arc::new(inventory.clone()),
            flash_sales.clone(),
        );
        let identity =
            identity::IdentityService::new(kernel.clone(), jwt_secret, Arc::new(carts.clone()))?;
        let promotions = promotions::PromotionService::new(kernel.clone(), catalog.clone());
        let fraud = fraud::FraudService::new(kernel.clone(), orders.clone());
        let checkout = checkout::CheckoutService::new(
            kernel.clone(),
            checkout::service::Parts {
                promotions: promotions.clone(),
                flash: flash_sales.clone(),
                carts: carts.clone(),
                catalog: catalog.clone(),
                identity: identity.clone(),
                payments: payments.clone(),
                orders: orders.clone(),
                fraud: fraud.clone(),
            },
        )?;
        let search = search::SearchService::new(kernel.clone(), catalog.clone());
        kernel
            .bus
            .subscribe(Arc::new(orders::OrderFlagger(orders.clone())));
        kernel
            .bus
            .subscribe(Arc::new(orders::OrderRefunds(orders.clone())));
        kernel
            .bus
            .subscribe(Arc::new(orders::GuestOrderClaims(orders.clone())));
        kernel
            .bus
            .subscribe(Arc::new(fraud::FraudOutcomes(fraud.clone())));
        Ok(AppState {
            kernel,
            identity,
            catalog,
            carts,
            inventory,
            payments,
            orders,
            checkout,
            search,
            promotions,
            flash_sales,
            fraud,
        })
    }
}

/// Every commerce route (relative to `/api/v1`) with its OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(identity::http::router())
        .merge(catalog::http::router())
        .merge(cart::http::router())
        .merge(inventory::http::router())
        .merge(payments::http::router())
        .merge(orders::http::router())
        .merge(checkout::http::router())
        .merge(search::http::router())
        .merge(promotions::http::router())
        .merge(flash_sales::http::router())
        .merge(fraud::http::router())
}
