//! Mercato's commerce core: one module per domain, each with the same shape
//! (`mod.rs` contract, `model.rs` pure rules, `store.rs` SQL, `service.rs` use cases,
//! `http.rs` routes). Modules talk through service APIs or events, never each other's tables.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod identity;
pub mod seams;
pub mod search;

use axum::extract::FromRef;
use mercato_kernel::Kernel;
use utoipa_axum::router::OpenApiRouter;

/// State shared by the commerce routes.
#[derive(Clone)]
pub struct AppState {
    pub kernel: Kernel,
    pub identity: identity::IdentityService,
    pub catalog: catalog::CatalogService,
    pub search: search::SearchService,
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
        let search = search::SearchService::new(kernel.clone(), catalog.clone());
        Ok(AppState {
            kernel,
            identity,
            catalog,
            search,
        })
    }
}

/// Every commerce route (relative to `/api/v1`) with its OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(identity::http::router())
        .merge(catalog::http::router())
        .merge(search::http::router())
}
