//! Wiring of live streams into the application: the catalog and identity as its directory of
//! products and people. The live system never reads their tables.

use mercato_commerce::AppState;
use mercato_commerce::catalog::model::ProductStatus;
use mercato_commerce::identity::IdentityError;
use mercato_live::{Directory, Person, ProductFacts, VariantFacts};

/// Products and people as live streams see them, through the catalog and identity services.
pub struct ShopDirectory {
    state: AppState,
}

impl ShopDirectory {
    pub fn new(state: AppState) -> ShopDirectory {
        ShopDirectory { state }
    }
}

#[async_trait::async_trait]
impl Directory for ShopDirectory {
    async fn products(&self, ids: &[String]) -> anyhow::Result<Vec<ProductFacts>> {
        let snaps = self
            .state
            .catalog
            .snapshots(ids)
            .await
            .map_err(|e| anyhow::anyhow!("reading products for a stream: {e}"))?;
        Ok(snaps
            .into_iter()
            .map(|s| s.product)
            .filter(|p| p.status == ProductStatus::Active)
            .map(|p| ProductFacts {
                product_id: p.id,
                name: p.name,
                seller_id: p.seller_id,
                variants: p
                    .variants
                    .into_iter()
                    .filter(|v| v.active)
                    .map(|v| VariantFacts {
                        sku: v.sku,
                        price: v.price,
                        sale_price: v.sale_price,
                        available: v.available,
                    })
                    .collect(),
            })
            .collect())
    }

    async fn products_of_skus(&self, skus: &[String]) -> anyhow::Result<Vec<String>> {
        let found = self
            .state
            .catalog
            .skus(skus)
            .await
            .map_err(|e| anyhow::anyhow!("reading SKUs for a stream: {e}"))?;
        let mut ids: Vec<String> = found.into_values().map(|s| s.product_id).collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn person(&self, user_id: &str) -> anyhow::Result<Option<Person>> {
        match self.state.identity.user(user_id).await {
            Ok(u) => Ok(Some(Person { name: u.name })),
            Err(IdentityError::NotFound) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("looking up {user_id}: {e}")),
        }
    }
}
