//! Catalog use cases. Ownership rule: a seller edits only its own products; admins edit any.
//! Drafts are visible only to their seller and admins.

use super::model::{
    Category, CategoryId, Product, ProductId, ProductInput, ProductPatch, ProductStatus, Rating,
    Review, ReviewId, ReviewInput, Sku, Variant, VariantId, check_prices, effective_price,
    valid_slug,
};
use super::store::{
    CatalogStore, NewProduct, NewVariant, ProductChanges, ProductRow, SkuRow, VariantRow,
};
use crate::seams::{PurchaseVerifier, StockLevels};
use mercato_kernel::Kernel;
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::db::StoreError;
use mercato_kernel::error::{ApiError, Code, Validator};
use mercato_kernel::{Money, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("not found")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("sku taken: {0}")]
    SkuTaken(String),
    #[error("slug taken")]
    SlugTaken,
    #[error("already reviewed")]
    ReviewExists,
    #[error("purchase required")]
    NotPurchased,
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for CatalogError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => CatalogError::NotFound,
            other => CatalogError::Unexpected(other.into()),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::NotFound => ApiError::not_found(),
            CatalogError::Forbidden(d) => ApiError::forbidden().detail(d),
            CatalogError::SkuTaken(sku) => ApiError::new(Code::SkuTaken)
                .detail(format!("SKU {sku} already exists"))
                .with("sku", sku),
            CatalogError::SlugTaken => ApiError::new(Code::SlugTaken),
            CatalogError::ReviewExists => ApiError::new(Code::ReviewExists),
            CatalogError::NotPurchased => ApiError::new(Code::NotPurchased),
            CatalogError::Invalid(e) => e,
            CatalogError::Unexpected(e) => ApiError::from(e),
        }
    }
}

/// What carts and checkout need to know about a SKU.
#[derive(Clone, Debug)]
pub struct SkuInfo {
    pub sku: String,
    pub variant_id: String,
    pub product_id: String,
    /// "Product — Variant"
    pub name: String,
    pub price: Money,
    pub sale_price: Option<Money>,
    /// What a customer pays now.
    pub unit_price: Money,
    /// Active variant of an active product.
    pub purchasable: bool,
    pub seller_id: String,
}

impl From<SkuRow> for SkuInfo {
    fn from(r: SkuRow) -> SkuInfo {
        let v = r.variant;
        SkuInfo {
            sku: v.sku.as_str().to_owned(),
            variant_id: v.id,
            product_id: v.product_id,
            name: format!("{} — {}", r.product_name, v.name),
            price: v.price,
            sale_price: v.sale_price,
            unit_price: effective_price(v.price, v.sale_price),
            purchasable: v.active && r.product_status == ProductStatus::Active,
            seller_id: r.seller_id,
        }
    }
}

/// A product with the facts search indexes (category ancestry included).
#[derive(Clone, Debug)]
pub struct ProductSnapshot {
    pub product: Product,
    /// Category ids from the root down to the product's category.
    pub category_path: Vec<String>,
}

#[derive(Clone)]
pub struct CatalogService {
    inner: Arc<Inner>,
}

struct Inner {
    kernel: Kernel,
    store: CatalogStore,
    stock: Arc<dyn StockLevels>,
    purchases: Arc<dyn PurchaseVerifier>,
}

fn variant_view(v: VariantRow, available: Option<i64>) -> Variant {
    Variant {
        id: v.id,
        sku: v.sku.as_str().to_owned(),
        name: v.name,
        price: v.price,
        sale_price: v.sale_price,
        attributes: v.attributes,
        available,
        active: v.active,
    }
}

fn product_view(p: ProductRow, variants: Vec<VariantRow>, stock: &HashMap<String, i64>) -> Product {
    Product {
        rating: Rating::of(p.rating_sum, p.rating_count),
        variants: variants
            .into_iter()
            .map(|v| {
                let a = stock.get(v.sku.as_str()).copied();
                variant_view(v, a)
            })
            .collect(),
        id: p.id,
        name: p.name,
        description: p.description,
        brand: p.brand,
        category: p.category,
        attributes: p.attributes,
        images: p.images,
        status: p.status,
        seller_id: p.seller_id,
        version: p.version,
        created_at: p.created_at,
        updated_at: p.updated_at,
    }
}

fn path_ids(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl CatalogService {
    pub fn new(
        kernel: Kernel,
        stock: Arc<dyn StockLevels>,
        purchases: Arc<dyn PurchaseVerifier>,
    ) -> CatalogService {
        CatalogService {
            inner: Arc::new(Inner {
                store: CatalogStore::new(kernel.db.clone()),
                kernel,
                stock,
                purchases,
            }),
        }
    }

    fn stock(&self) -> Arc<dyn StockLevels> {
        self.inner.stock.clone()
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    pub async fn create_category(
        &self,
        name: &str,
        slug: &str,
        parent_id: Option<&str>,
    ) -> Result<Category, CatalogError> {
        let mut v = Validator::new();
        let name = name.trim();
        v.check(
            !name.is_empty() && name.chars().count() <= 100,
            "name",
            "name is required (≤ 100 chars)",
        );
        v.check(
            valid_slug(slug),
            "slug",
            "slug must be 1-100 of a-z 0-9 - (not at the ends)",
        );
        if let Some(p) = parent_id {
            v.check(
                mercato_kernel::id::is_valid("cat", p),
                "parent_id",
                "parent_id must be a category id",
            );
        }
        v.finish().map_err(CatalogError::Invalid)?;
        let id = CategoryId::new();
        match self
            .inner
            .store
            .insert_category(id.as_str(), name, slug, parent_id, self.now())
            .await
        {
            Ok(c) => Ok(c),
            Err(StoreError::NotFound) => Err(CatalogError::Invalid(ApiError::invalid(
                "parent_id",
                "no such parent category",
            ))),
            Err(e) if e.is_unique_violation() => Err(CatalogError::SlugTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// The whole tree, roots first, children by name.
    pub async fn category_tree(&self) -> Result<Vec<Category>, CatalogError> {
        let rows = self.inner.store.categories().await?;
        let mut children: HashMap<Option<String>, Vec<Category>> = HashMap::new();
        for (c, _) in rows {
            children.entry(c.parent_id.clone()).or_default().push(c);
        }
        fn build(
            parent: Option<String>,
            children: &mut HashMap<Option<String>, Vec<Category>>,
            depth: usize,
        ) -> Vec<Category> {
            let mut nodes = children.remove(&parent).unwrap_or_default();
            if depth < 32 {
                for n in &mut nodes {
                    n.children = build(Some(n.id.clone()), children, depth + 1);
                }
            }
            nodes
        }
        Ok(build(None, &mut children, 0))
    }

    /// Category ids of `id` and all its descendants (for filters).
    pub async fn category_with_descendants(&self, id: &str) -> Result<Vec<String>, CatalogError> {
        let rows = self.inner.store.categories().await?;
        let marker = format!("/{id}/");
        Ok(rows
            .into_iter()
            .filter(|(_, path)| path.contains(&marker))
            .map(|(c, _)| c.id)
            .collect())
    }

    fn owner_for_create(
        &self,
        actor: &Principal,
        requested: Option<&str>,
    ) -> Result<String, CatalogError> {
        match actor.role {
            Role::Seller => match requested {
                Some(s) if s != actor.subject => Err(CatalogError::Forbidden(
                    "sellers create products for themselves only".into(),
                )),
                _ => Ok(actor.subject.clone()),
            },
            Role::Admin => match requested {
                Some(s) if mercato_kernel::id::is_valid("usr", s) => Ok(s.to_owned()),
                Some(_) => Err(CatalogError::Invalid(ApiError::invalid(
                    "seller_id",
                    "seller_id must be a user id",
                ))),
                None => Ok(actor.subject.clone()),
            },
            _ => Err(CatalogError::Forbidden(
                "only sellers and admins manage products".into(),
            )),
        }
    }

    fn check_can_edit(&self, actor: &Principal, seller_id: &str) -> Result<(), CatalogError> {
        match actor.role {
            Role::Admin => Ok(()),
            Role::Seller if actor.subject == seller_id => Ok(()),
            Role::Seller => Err(CatalogError::Forbidden(
                "sellers edit only their own products".into(),
            )),
            _ => Err(CatalogError::Forbidden(
                "only sellers and admins manage products".into(),
            )),
        }
    }

    pub async fn create_product(
        &self,
        actor: &Principal,
        input: ProductInput,
    ) -> Result<Product, CatalogError> {
        let seller_id = self.owner_for_create(actor, input.seller_id.as_deref())?;
        let skus = input.validate().map_err(CatalogError::Invalid)?;
        if !mercato_kernel::id::is_valid("cat", &input.category_id)
            || !self.inner.store.category_exists(&input.category_id).await?
        {
            return Err(CatalogError::Invalid(ApiError::invalid(
                "category_id",
                "no such category",
            )));
        }
        if let Some(taken) = self
            .inner
            .store
            .existing_skus(&skus)
            .await?
            .into_iter()
            .next()
        {
            return Err(CatalogError::SkuTaken(taken));
        }
        let id = ProductId::new();
        let new = NewProduct {
            id: id.as_str().to_owned(),
            seller_id,
            category_id: input.category_id,
            name: input.name.trim().to_owned(),
            description: input.description,
            brand: input.brand.trim().to_owned(),
            attributes: input.attributes,
            images: input.images,
            status: input.status,
            variants: input
                .variants
                .into_iter()
                .zip(skus)
                .map(|(v, sku)| NewVariant {
                    id: VariantId::new().into_string(),
                    sku,
                    name: v.name.trim().to_owned(),
                    price: v.price,
                    sale_price: v.sale_price,
                    attributes: v.attributes,
                })
                .collect(),
        };
        match self.inner.store.insert_product(&new, self.now()).await {
            Ok(()) => {}
            // Lost a race for a SKU between the check and the insert.
            Err(e) if e.is_unique_violation() => {
                let taken = self
                    .inner
                    .store
                    .existing_skus(
                        &new.variants
                            .iter()
                            .map(|v| v.sku.clone())
                            .collect::<Vec<_>>(),
                    )
                    .await?;
                return Err(CatalogError::SkuTaken(
                    taken.into_iter().next().unwrap_or_default(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("catalog_products_created_total").increment(1);
        self.product(id.as_str(), Some(actor)).await
    }

    /// Bulk insert (demo data, benchmarks): validated like `create_product`, one transaction.
    pub async fn seed_products(
        &self,
        seller_id: &str,
        inputs: Vec<ProductInput>,
    ) -> Result<usize, CatalogError> {
        let mut batch = Vec::with_capacity(inputs.len());
        for input in inputs {
            let skus = input.validate().map_err(CatalogError::Invalid)?;
            batch.push(NewProduct {
                id: ProductId::new().into_string(),
                seller_id: input
                    .seller_id
                    .clone()
                    .unwrap_or_else(|| seller_id.to_owned()),
                category_id: input.category_id,
                name: input.name,
                description: input.description,
                brand: input.brand,
                attributes: input.attributes,
                images: input.images,
                status: input.status,
                variants: input
                    .variants
                    .into_iter()
                    .zip(skus)
                    .map(|(v, sku)| NewVariant {
                        id: VariantId::new().into_string(),
                        sku,
                        name: v.name,
                        price: v.price,
                        sale_price: v.sale_price,
                        attributes: v.attributes,
                    })
                    .collect(),
            });
        }
        let n = batch.len();
        self.inner.store.insert_products(&batch, self.now()).await?;
        Ok(n)
    }

    /// A product as `viewer` may see it: drafts only for their seller and admins.
    pub async fn product(
        &self,
        id: &str,
        viewer: Option<&Principal>,
    ) -> Result<Product, CatalogError> {
        let (p, variants) = self
            .inner
            .store
            .product(id)
            .await?
            .ok_or(CatalogError::NotFound)?;
        if p.status == ProductStatus::Draft {
            let allowed = viewer.is_some_and(|v| v.role == Role::Admin || v.subject == p.seller_id);
            if !allowed {
                return Err(CatalogError::NotFound);
            }
        }
        let skus: Vec<String> = variants.iter().map(|v| v.sku.as_str().to_owned()).collect();
        let stock = self.stock().available(&skus).await?;
        Ok(product_view(p, variants, &stock))
    }

    /// Whether `actor` may edit product `id` (404 unknown, 403 someone else's) — checked
    /// before the request body is read.
    pub async fn authorize_edit(&self, actor: &Principal, id: &str) -> Result<(), CatalogError> {
        let (current, _) = self
            .inner
            .store
            .product(id)
            .await?
            .ok_or(CatalogError::NotFound)?;
        self.check_can_edit(actor, &current.seller_id)
    }

    pub async fn update_product(
        &self,
        actor: &Principal,
        id: &str,
        patch: ProductPatch,
    ) -> Result<Product, CatalogError> {
        patch.validate().map_err(CatalogError::Invalid)?;
        let (current, _) = self
            .inner
            .store
            .product(id)
            .await?
            .ok_or(CatalogError::NotFound)?;
        self.check_can_edit(actor, &current.seller_id)?;
        if let Some(c) = &patch.category_id
            && (!mercato_kernel::id::is_valid("cat", c)
                || !self.inner.store.category_exists(c).await?)
        {
            return Err(CatalogError::Invalid(ApiError::invalid(
                "category_id",
                "no such category",
            )));
        }
        let new_skus: Vec<Sku> = patch
            .variants
            .iter()
            .flatten()
            .filter_map(|v| Sku::parse(&v.sku))
            .collect();
        let res = self
            .inner
            .store
            .update_product(id, self.now(), |cur, variants| {
                let mut v = Validator::new();
                let by_sku: HashMap<&str, &VariantRow> =
                    variants.iter().map(|x| (x.sku.as_str(), x)).collect();
                let currency = variants.first().map(|x| x.price.currency);
                let mut updated = Vec::new();
                let mut added = Vec::new();
                for (i, (vp, sku)) in patch.variants.iter().flatten().zip(&new_skus).enumerate() {
                    let f = format!("variants[{i}]");
                    match by_sku.get(sku.as_str()) {
                        Some(existing) => {
                            let mut row = (*existing).clone();
                            if let Some(n) = &vp.name {
                                row.name = n.trim().to_owned();
                            }
                            if let Some(p) = vp.price {
                                row.price = p;
                            }
                            if let Some(s) = vp.sale_price {
                                row.sale_price = s;
                            }
                            if let Some(a) = &vp.attributes {
                                row.attributes = a.clone();
                            }
                            if let Some(a) = vp.active {
                                row.active = a;
                            }
                            check_prices(&mut v, &f, &row.price, row.sale_price.as_ref());
                            v.check(
                                Some(row.price.currency) == currency,
                                &format!("{f}.price"),
                                "all variants share one currency",
                            );
                            updated.push(row);
                        }
                        None => {
                            let (Some(name), Some(price)) = (&vp.name, vp.price) else {
                                v.add(f, "a new variant needs a name and a price");
                                continue;
                            };
                            let sale = vp.sale_price.flatten();
                            check_prices(&mut v, &f, &price, sale.as_ref());
                            v.check(
                                Some(price.currency) == currency,
                                &format!("{f}.price"),
                                "all variants share one currency",
                            );
                            added.push(NewVariant {
                                id: VariantId::new().into_string(),
                                sku: sku.clone(),
                                name: name.trim().to_owned(),
                                price,
                                sale_price: sale,
                                attributes: vp.attributes.clone().unwrap_or_default(),
                            });
                        }
                    }
                }
                if variants.len() + added.len() > super::model::MAX_VARIANTS {
                    v.add("variants", "at most 100 variants");
                }
                v.finish()
                    .map_err(|e| StoreError::Other(anyhow::Error::new(InvalidPatch(e))))?;
                Ok(ProductChanges {
                    name: patch
                        .name
                        .as_deref()
                        .map(str::trim)
                        .map(str::to_owned)
                        .unwrap_or_else(|| cur.name.clone()),
                    description: patch
                        .description
                        .clone()
                        .unwrap_or_else(|| cur.description.clone()),
                    brand: patch
                        .brand
                        .as_deref()
                        .map(str::trim)
                        .map(str::to_owned)
                        .unwrap_or_else(|| cur.brand.clone()),
                    category_id: patch
                        .category_id
                        .clone()
                        .unwrap_or_else(|| cur.category.id.clone()),
                    attributes: patch
                        .attributes
                        .clone()
                        .unwrap_or_else(|| cur.attributes.clone()),
                    images: patch.images.clone().unwrap_or_else(|| cur.images.clone()),
                    status: patch.status.unwrap_or(cur.status),
                    updated_variants: updated,
                    new_variants: added,
                })
            })
            .await;
        match res {
            Ok(()) => {}
            Err(StoreError::Other(e)) if e.is::<InvalidPatch>() => {
                let inner = e
                    .downcast::<InvalidPatch>()
                    .map_err(CatalogError::Unexpected)?;
                return Err(CatalogError::Invalid(inner.0));
            }
            Err(e) if e.is_unique_violation() => {
                let taken = self.inner.store.existing_skus(&new_skus).await?;
                return Err(CatalogError::SkuTaken(
                    taken.into_iter().next().unwrap_or_default(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.product(id, Some(actor)).await
    }

    /// SKU facts for carts and checkout; unknown SKUs are absent from the map.
    pub async fn skus(&self, skus: &[String]) -> Result<HashMap<String, SkuInfo>, CatalogError> {
        SkuDirectory::new(self.inner.kernel.db.clone())
            .skus(skus)
            .await
    }

    /// Products with their category ancestry, for the search index (drafts included: the
    /// index decides what to show).
    pub async fn snapshots(&self, ids: &[String]) -> Result<Vec<ProductSnapshot>, CatalogError> {
        let rows = self.inner.store.products(ids).await?;
        let skus: Vec<String> = rows
            .iter()
            .flat_map(|(_, vs)| vs.iter().map(|v| v.sku.as_str().to_owned()))
            .collect();
        let stock = self.stock().available(&skus).await?;
        Ok(rows
            .into_iter()
            .map(|(p, vs)| {
                let category_path = path_ids(&p.category_path);
                ProductSnapshot {
                    product: product_view(p, vs, &stock),
                    category_path,
                }
            })
            .collect())
    }

    /// The category ancestry (root first, the product's own category last) of each product
    /// among `ids`, drafts included; unknown ids are absent (promotion scopes).
    pub async fn category_paths(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<String>>, CatalogError> {
        let rows = self.inner.store.products(ids).await?;
        Ok(rows
            .into_iter()
            .map(|(p, _)| {
                let path = path_ids(&p.category_path);
                (p.id, path)
            })
            .collect())
    }

    /// The ids among `ids` that name a category.
    pub async fn existing_categories(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, CatalogError> {
        let all = self.inner.store.categories().await?;
        Ok(all
            .into_iter()
            .map(|(c, _)| c.id)
            .filter(|id| ids.contains(id))
            .collect())
    }

    /// Product ids in id order after `after` (full reindex).
    pub async fn product_ids_after(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, CatalogError> {
        Ok(self.inner.store.product_ids_after(after, limit).await?)
    }

    pub async fn add_review(
        &self,
        actor: &Principal,
        product_id: &str,
        input: ReviewInput,
    ) -> Result<Review, CatalogError> {
        if actor.role != Role::Customer {
            return Err(CatalogError::Forbidden(
                "only customers review products".into(),
            ));
        }
        input.validate().map_err(CatalogError::Invalid)?;
        // Reviews are for products customers can see.
        self.product(product_id, None).await?;
        let verifier = self.inner.purchases.clone();
        let verified = match verifier.has_received(&actor.subject, product_id).await? {
            Some(true) => true,
            Some(false) => return Err(CatalogError::NotPurchased),
            None => false,
        };
        let review = Review {
            id: ReviewId::new().into_string(),
            product_id: product_id.to_owned(),
            customer_id: actor.subject.clone(),
            rating: input.rating,
            title: input.title.trim().to_owned(),
            body: input.body,
            verified_purchase: verified,
            created_at: self.now(),
        };
        match self.inner.store.insert_review(&review, self.now()).await {
            Ok(()) => Ok(review),
            Err(e) if e.is_unique_violation() => Err(CatalogError::ReviewExists),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn reviews(
        &self,
        product_id: &str,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Review>, CatalogError> {
        self.product(product_id, None).await?;
        Ok(self.inner.store.reviews(product_id, after, limit).await?)
    }
}

/// A validation failure raised inside the update transaction (rolls it back).
#[derive(Debug, thiserror::Error)]
#[error("invalid patch")]
struct InvalidPatch(ApiError);

/// SKU facts (product, seller, price) read from the catalog without the rest of the catalog
/// service: what inventory needs to check who may manage a SKU's stock. Built before the
/// catalog service (which depends on inventory's stock levels), so the module graph has no
/// cycle (see docs/architecture.md).
#[derive(Clone, Debug)]
pub struct SkuDirectory {
    store: CatalogStore,
}

impl SkuDirectory {
    pub fn new(db: mercato_kernel::db::Db) -> SkuDirectory {
        SkuDirectory {
            store: CatalogStore::new(db),
        }
    }

    /// The known SKUs among `skus`, by canonical SKU.
    pub async fn skus(&self, skus: &[String]) -> Result<HashMap<String, SkuInfo>, CatalogError> {
        Ok(self
            .store
            .skus(skus)
            .await?
            .into_iter()
            .map(|r| {
                let info = SkuInfo::from(r);
                (info.sku.clone(), info)
            })
            .collect())
    }
}
