//! Mercato's commerce core: one module per domain, each with the same shape
//! (`mod.rs` contract, `model.rs` pure rules, `store.rs` SQL, `service.rs` use cases,
//! `http.rs` routes). Modules talk through service APIs or events, never each other's tables.
#![forbid(unsafe_code)]

pub mod cart;
pub mod catalog;
pub mod gateway;
pub mod identity;
pub mod inventory;
pub mod seams;

use axum::extract::FromRef;
use mercato_kernel::Kernel;
use utoipa_axum::router::OpenApiRouter;

/// State shared by the commerce routes.
#[derive(Clone)]
pub struct AppState {
    pub kernel: Kernel,
    pub identity: identity::IdentityService,
    pub catalog: catalog::CatalogService,
    pub carts: cart::CartService,
    pub inventory: inventory::InventoryService,
}

impl FromRef<AppState> for Kernel {
    fn from_ref(s: &AppState) -> Kernel {
        s.kernel.clone()
    }
}

impl AppState {
    /// Builds every commerce service on top of the kernel.
    pub fn build(kernel: Kernel, jwt_secret: &[u8]) -> anyhow::Result<AppState> {
        let identity = identity::IdentityService::new(kernel.clone(), jwt_secret)?;
        let catalog = catalog::CatalogService::new(
            kernel.clone(),
            std::sync::Arc::new(seams::UntrackedStock),
            std::sync::Arc::new(seams::NoOrdersYet),
        );
        let carts = cart::CartService::new(
            kernel.clone(),
            catalog.clone(),
            std::sync::Arc::new(seams::UntrackedStock),
        );
        identity.set_login_hook(std::sync::Arc::new(carts.clone()));
        // Inventory plugs into the stock seams of catalog and carts.
        let inventory = inventory::InventoryService::new(kernel.clone(), catalog.clone());
        catalog.set_stock_levels(std::sync::Arc::new(inventory.clone()));
        carts.set_stock_levels(std::sync::Arc::new(inventory.clone()));
        Ok(AppState {
            kernel,
            identity,
            catalog,
            carts,
            inventory,
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
}
