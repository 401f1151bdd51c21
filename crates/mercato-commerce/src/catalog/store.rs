//! SQL for the catalog's own tables (categories, products, variants, reviews).

use super::model::{Category, CategoryRef, ProductStatus, Review, Sku};
use mercato_events::catalog::{ProductCreated, ProductUpdated};
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx, bool_of, int_of};
use mercato_kernel::outbox::{self, NewEvent};
use mercato_kernel::{Currency, Money, Timestamp};
use serde_json::{Map, Value};
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct CatalogStore {
    db: Db,
}

/// A product row with its category (variants are read separately).
#[derive(Clone, Debug)]
pub struct ProductRow {
    pub id: String,
    pub seller_id: String,
    pub category: CategoryRef,
    pub category_path: String,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub attributes: Map<String, Value>,
    pub images: Vec<String>,
    pub status: ProductStatus,
    pub rating_sum: i64,
    pub rating_count: i64,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct VariantRow {
    pub id: String,
    pub product_id: String,
    pub sku: Sku,
    pub name: String,
    pub price: Money,
    pub sale_price: Option<Money>,
    pub attributes: Map<String, Value>,
    pub active: bool,
    pub position: i64,
}

/// A variant with the product facts other modules need (carts, checkout).
#[derive(Clone, Debug)]
pub struct SkuRow {
    pub variant: VariantRow,
    pub product_name: String,
    pub product_status: ProductStatus,
    pub seller_id: String,
}

/// Everything needed to insert one product.
pub struct NewProduct {
    pub id: String,
    pub seller_id: String,
    pub category_id: String,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub attributes: Map<String, Value>,
    pub images: Vec<String>,
    pub status: ProductStatus,
    pub variants: Vec<NewVariant>,
}

pub struct NewVariant {
    pub id: String,
    pub sku: Sku,
    pub name: String,
    pub price: Money,
    pub sale_price: Option<Money>,
    pub attributes: Map<String, Value>,
}

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

fn json_map(s: &str) -> Map<String, Value> {
    serde_json::from_str(s).unwrap_or_default()
}

fn money(amount: i64, currency: &str) -> Money {
    Money::new(amount, Currency::parse(currency).unwrap_or(Currency::USD))
}

const PRODUCT_COLUMNS: &str = "p.id, p.seller_id, p.category_id, c.name AS category_name, \
    c.slug AS category_slug, c.path AS category_path, p.name, p.description, p.brand, \
    p.attributes, p.images, p.status, p.rating_sum, p.rating_count, p.version, p.created_at, \
    p.updated_at";
const VARIANT_COLUMNS: &str = "v.id, v.product_id, v.sku, v.name, v.price, v.sale_price, \
    v.currency, v.attributes, v.active, v.position";

fn product_of(r: &Row) -> StoreResult<ProductRow> {
    let status: String = r.try_get("status").map_err(g)?;
    let images: String = r.try_get("images").map_err(g)?;
    Ok(ProductRow {
        id: r.try_get("id").map_err(g)?,
        seller_id: r.try_get("seller_id").map_err(g)?,
        category: CategoryRef {
            id: r.try_get("category_id").map_err(g)?,
            name: r.try_get("category_name").map_err(g)?,
            slug: r.try_get("category_slug").map_err(g)?,
        },
        category_path: r.try_get("category_path").map_err(g)?,
        name: r.try_get("name").map_err(g)?,
        description: r.try_get("description").map_err(g)?,
        brand: r.try_get("brand").map_err(g)?,
        attributes: json_map(&r.try_get::<String, _>("attributes").map_err(g)?),
        images: serde_json::from_str(&images).unwrap_or_default(),
        status: ProductStatus::parse(&status).unwrap_or(ProductStatus::Draft),
        rating_sum: r.try_get("rating_sum").map_err(g)?,
        rating_count: r.try_get("rating_count").map_err(g)?,
        version: r.try_get("version").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        updated_at: Timestamp::from_micros(r.try_get("updated_at").map_err(g)?),
    })
}

fn variant_of(r: &Row) -> StoreResult<VariantRow> {
    let currency: String = r.try_get("currency").map_err(g)?;
    Ok(VariantRow {
        id: r.try_get("id").map_err(g)?,
        product_id: r.try_get("product_id").map_err(g)?,
        sku: Sku::from_db(r.try_get("sku").map_err(g)?),
        name: r.try_get("name").map_err(g)?,
        price: money(r.try_get("price").map_err(g)?, &currency),
        sale_price: r
            .try_get::<Option<i64>, _>("sale_price")
            .map_err(g)?
            .map(|a| money(a, &currency)),
        attributes: json_map(&r.try_get::<String, _>("attributes").map_err(g)?),
        active: bool_of(r.try_get("active").map_err(g)?),
        position: r.try_get("position").map_err(g)?,
    })
}

fn review_of(r: &Row) -> StoreResult<Review> {
    Ok(Review {
        id: r.try_get("id").map_err(g)?,
        product_id: r.try_get("product_id").map_err(g)?,
        customer_id: r.try_get("customer_id").map_err(g)?,
        rating: r.try_get("rating").map_err(g)?,
        title: r.try_get("title").map_err(g)?,
        body: r.try_get("body").map_err(g)?,
        verified_purchase: bool_of(r.try_get("verified_purchase").map_err(g)?),
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
    })
}

/// `catalog.product_created` (consumers re-read the product: a CDC projection).
fn product_created(id: &str, seller_id: &str) -> NewEvent {
    NewEvent::of(&ProductCreated {
        product_id: id.to_owned(),
        seller_id: seller_id.to_owned(),
        version: 1,
        reason: "created".to_owned(),
    })
    .version(1)
}

/// `catalog.product_updated` (consumers re-read the product: a CDC projection).
fn product_updated(id: &str, seller_id: &str, version: i64, reason: &str) -> NewEvent {
    NewEvent::of(&ProductUpdated {
        product_id: id.to_owned(),
        seller_id: seller_id.to_owned(),
        version,
        reason: reason.to_owned(),
    })
    .version(version)
}

impl CatalogStore {
    pub fn new(db: Db) -> CatalogStore {
        CatalogStore { db }
    }

    /// Inserts a category under `parent_id` (whose path it extends). `NotFound` for an unknown
    /// parent, `Conflict` for a taken slug.
    pub async fn insert_category(
        &self,
        id: &str,
        name: &str,
        slug: &str,
        parent_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<Category> {
        let mut tx = self.db.begin().await?;
        let parent_path = match parent_id {
            Some(p) => Some(
                sqlx::query_scalar::<_, String>("SELECT path FROM categories WHERE id = $1")
                    .bind(p)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?,
            ),
            None => None,
        };
        let path = format!("{}{id}/", parent_path.as_deref().unwrap_or("/"));
        sqlx::query(
            "INSERT INTO categories (id, name, slug, parent_id, path, created_at) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(id)
        .bind(name)
        .bind(slug)
        .bind(parent_id)
        .bind(&path)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Category {
            id: id.into(),
            name: name.into(),
            slug: slug.into(),
            parent_id: parent_id.map(Into::into),
            children: Vec::new(),
        })
    }

    /// All categories as `(category, path)`, ordered by name.
    pub async fn categories(&self) -> StoreResult<Vec<(Category, String)>> {
        let rows =
            sqlx::query("SELECT id, name, slug, parent_id, path FROM categories ORDER BY name, id")
                .fetch_all(self.db.reader())
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    Category {
                        id: r.try_get("id").map_err(g)?,
                        name: r.try_get("name").map_err(g)?,
                        slug: r.try_get("slug").map_err(g)?,
                        parent_id: r.try_get("parent_id").map_err(g)?,
                        children: Vec::new(),
                    },
                    r.try_get("path").map_err(g)?,
                ))
            })
            .collect()
    }

    pub async fn category_exists(&self, id: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM categories WHERE id = $1")
            .bind(id)
            .fetch_one(self.db.reader())
            .await?;
        Ok(n > 0)
    }

    /// SKUs among `skus` that already exist.
    pub async fn existing_skus(&self, skus: &[Sku]) -> StoreResult<Vec<String>> {
        let mut taken = Vec::new();
        for chunk in skus.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT sku FROM variants WHERE sku IN ({})",
                placeholders.join(",")
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql);
            for s in chunk {
                q = q.bind(s.as_str());
            }
            taken.extend(q.fetch_all(self.db.reader()).await?);
        }
        Ok(taken)
    }

    async fn insert_product_tx(tx: &mut Tx, p: &NewProduct, now: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO products (id, seller_id, category_id, name, description, brand, attributes, \
             images, status, version, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,1,$10,$10)",
        )
        .bind(&p.id)
        .bind(&p.seller_id)
        .bind(&p.category_id)
        .bind(&p.name)
        .bind(&p.description)
        .bind(&p.brand)
        .bind(Value::Object(p.attributes.clone()).to_string())
        .bind(serde_json::to_string(&p.images).unwrap_or_else(|_| "[]".into()))
        .bind(p.status.as_str())
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?;
        for (i, v) in p.variants.iter().enumerate() {
            Self::insert_variant_tx(tx, &p.id, v, i as i64, now).await?;
        }
        Ok(())
    }

    async fn insert_variant_tx(
        tx: &mut Tx,
        product_id: &str,
        v: &NewVariant,
        position: i64,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO variants (id, product_id, sku, name, price, sale_price, currency, attributes, \
             active, position, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,1,$9,$10,$10)",
        )
        .bind(&v.id)
        .bind(product_id)
        .bind(v.sku.as_str())
        .bind(&v.name)
        .bind(v.price.amount)
        .bind(v.sale_price.map(|s| s.amount))
        .bind(v.price.currency.as_str())
        .bind(Value::Object(v.attributes.clone()).to_string())
        .bind(position)
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Inserts a product with its variants and `catalog.product_created`, atomically.
    /// `Conflict` when a SKU is taken.
    pub async fn insert_product(&self, p: &NewProduct, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        Self::insert_product_tx(&mut tx, p, now).await?;
        outbox::append(&mut tx, now, product_created(&p.id, &p.seller_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts many products in one transaction (seeding, demo data, benchmarks).
    pub async fn insert_products(
        &self,
        products: &[NewProduct],
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        for p in products {
            Self::insert_product_tx(&mut tx, p, now).await?;
            outbox::append(&mut tx, now, product_created(&p.id, &p.seller_id)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn product(&self, id: &str) -> StoreResult<Option<(ProductRow, Vec<VariantRow>)>> {
        let row = sqlx::query(&format!(
            "SELECT {PRODUCT_COLUMNS} FROM products p JOIN categories c ON c.id = p.category_id WHERE p.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let product = product_of(&row)?;
        let variants = sqlx::query(&format!(
            "SELECT {VARIANT_COLUMNS} FROM variants v WHERE v.product_id = $1 ORDER BY v.position, v.id"
        ))
        .bind(id)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(variant_of)
        .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((product, variants)))
    }

    /// Many products by id with their variants (search indexing).
    pub async fn products(
        &self,
        ids: &[String],
    ) -> StoreResult<Vec<(ProductRow, Vec<VariantRow>)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {PRODUCT_COLUMNS} FROM products p JOIN categories c ON c.id = p.category_id \
                 WHERE p.id IN ({})",
                ph.join(",")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            let products = q
                .fetch_all(self.db.reader())
                .await?
                .iter()
                .map(product_of)
                .collect::<StoreResult<Vec<_>>>()?;
            let vsql = format!(
                "SELECT {VARIANT_COLUMNS} FROM variants v WHERE v.product_id IN ({}) ORDER BY v.position, v.id",
                ph.join(",")
            );
            let mut vq = sqlx::query(&vsql);
            for id in chunk {
                vq = vq.bind(id);
            }
            let variants = vq
                .fetch_all(self.db.reader())
                .await?
                .iter()
                .map(variant_of)
                .collect::<StoreResult<Vec<_>>>()?;
            let mut by_product: std::collections::HashMap<String, Vec<VariantRow>> =
                std::collections::HashMap::new();
            for v in variants {
                by_product.entry(v.product_id.clone()).or_default().push(v);
            }
            for p in products {
                let vs = by_product.remove(&p.id).unwrap_or_default();
                out.push((p, vs));
            }
        }
        Ok(out)
    }

    /// Product ids in id order after `after` (reindexing walks the whole catalog with this).
    pub async fn product_ids_after(&self, after: &str, limit: i64) -> StoreResult<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM products WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(self.db.reader())
                .await?,
        )
    }

    /// Applies a partial update under the row lock; `apply` gets the current row and variants
    /// and returns the changes to write. Emits `catalog.product_updated`.
    pub async fn update_product<F>(&self, id: &str, now: Timestamp, apply: F) -> StoreResult<()>
    where
        F: FnOnce(&ProductRow, &[VariantRow]) -> Result<ProductChanges, StoreError>,
    {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&self.db.locking(&format!(
            "SELECT {PRODUCT_COLUMNS} FROM products p JOIN categories c ON c.id = p.category_id WHERE p.id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let current = product_of(&row)?;
        let variants = sqlx::query(&format!(
            "SELECT {VARIANT_COLUMNS} FROM variants v WHERE v.product_id = $1 ORDER BY v.position, v.id"
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(variant_of)
        .collect::<StoreResult<Vec<_>>>()?;
        let ch = apply(&current, &variants)?;
        let version = current.version + 1;
        sqlx::query(
            "UPDATE products SET name = $1, description = $2, brand = $3, category_id = $4, \
             attributes = $5, images = $6, status = $7, version = $8, updated_at = $9 WHERE id = $10",
        )
        .bind(&ch.name)
        .bind(&ch.description)
        .bind(&ch.brand)
        .bind(&ch.category_id)
        .bind(Value::Object(ch.attributes.clone()).to_string())
        .bind(serde_json::to_string(&ch.images).unwrap_or_else(|_| "[]".into()))
        .bind(ch.status.as_str())
        .bind(version)
        .bind(now.as_micros())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        for v in &ch.updated_variants {
            sqlx::query(
                "UPDATE variants SET name = $1, price = $2, sale_price = $3, attributes = $4, \
                 active = $5, updated_at = $6 WHERE id = $7",
            )
            .bind(&v.name)
            .bind(v.price.amount)
            .bind(v.sale_price.map(|s| s.amount))
            .bind(Value::Object(v.attributes.clone()).to_string())
            .bind(int_of(v.active))
            .bind(now.as_micros())
            .bind(&v.id)
            .execute(&mut *tx)
            .await?;
        }
        let mut position = variants.iter().map(|v| v.position).max().unwrap_or(0);
        for v in &ch.new_variants {
            position += 1;
            Self::insert_variant_tx(&mut tx, id, v, position, now).await?;
        }
        outbox::append(
            &mut tx,
            now,
            product_updated(id, &current.seller_id, version, "updated"),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Variants by SKU with their product's name, status and seller.
    pub async fn skus(&self, skus: &[String]) -> StoreResult<Vec<SkuRow>> {
        let mut out = Vec::with_capacity(skus.len());
        for chunk in skus.chunks(100) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {VARIANT_COLUMNS}, p.name AS product_name, p.status AS product_status, \
                 p.seller_id FROM variants v JOIN products p ON p.id = v.product_id WHERE v.sku IN ({})",
                ph.join(",")
            );
            let mut q = sqlx::query(&sql);
            for s in chunk {
                q = q.bind(s);
            }
            for r in q.fetch_all(self.db.reader()).await? {
                let status: String = r.try_get("product_status").map_err(g)?;
                out.push(SkuRow {
                    variant: variant_of(&r)?,
                    product_name: r.try_get("product_name").map_err(g)?,
                    product_status: ProductStatus::parse(&status).unwrap_or(ProductStatus::Draft),
                    seller_id: r.try_get("seller_id").map_err(g)?,
                });
            }
        }
        Ok(out)
    }

    /// Inserts a review and updates the product's rating aggregate in the same transaction.
    /// `Conflict` when this customer already reviewed the product.
    pub async fn insert_review(&self, r: &Review, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO reviews (id, product_id, customer_id, rating, title, body, verified_purchase, created_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(&r.id)
        .bind(&r.product_id)
        .bind(&r.customer_id)
        .bind(r.rating)
        .bind(&r.title)
        .bind(&r.body)
        .bind(int_of(r.verified_purchase))
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        let (seller, version): (String, i64) = sqlx::query_as(
            "UPDATE products SET rating_sum = rating_sum + $1, rating_count = rating_count + 1, \
             version = version + 1, updated_at = $2 WHERE id = $3 RETURNING seller_id, version",
        )
        .bind(r.rating)
        .bind(now.as_micros())
        .bind(&r.product_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        outbox::append(
            &mut tx,
            now,
            product_updated(&r.product_id, &seller, version, "review"),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reviews of a product, newest first, keyset on (created_at, id).
    pub async fn reviews(
        &self,
        product_id: &str,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<Review>> {
        let (ts, id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(
            "SELECT id, product_id, customer_id, rating, title, body, verified_purchase, created_at \
             FROM reviews WHERE product_id = $1 AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .bind(product_id)
        .bind(ts)
        .bind(if id.is_empty() { "\u{10FFFF}".to_owned() } else { id })
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(review_of).collect()
    }
}

/// The full new state of a product after a partial update (see `update_product`).
pub struct ProductChanges {
    pub name: String,
    pub description: String,
    pub brand: String,
    pub category_id: String,
    pub attributes: Map<String, Value>,
    pub images: Vec<String>,
    pub status: ProductStatus,
    pub updated_variants: Vec<VariantRow>,
    pub new_variants: Vec<NewVariant>,
}
