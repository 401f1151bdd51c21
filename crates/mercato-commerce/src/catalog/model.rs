//! Catalog's pure types and validation: SKUs, slugs, product and variant input, prices.

use mercato_kernel::error::{ApiError, Validator};
use mercato_kernel::{Money, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mercato_kernel::typed_id!(
    /// A product.
    ProductId, "prd");
mercato_kernel::typed_id!(
    /// A purchasable variant (one SKU).
    VariantId, "var");
mercato_kernel::typed_id!(
    /// A category.
    CategoryId, "cat");
mercato_kernel::typed_id!(
    /// A review.
    ReviewId, "rev");

/// Largest price we accept, in minor units (10 billion major units).
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
pub const MAX_VARIANTS: usize = 100;
pub const MAX_IMAGES: usize = 20;

/// A stock-keeping unit: 1–64 of `A-Z 0-9 . _ -`, stored upper-case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Option<Sku> {
        let s = raw.trim().to_ascii_uppercase();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        ok.then_some(Sku(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn from_db(s: String) -> Sku {
        Sku(s)
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URL slug: 1–100 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProductStatus {
    Active,
    Draft,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProductStatus::Active => "active",
            ProductStatus::Draft => "draft",
        }
    }
    pub fn parse(s: &str) -> Option<ProductStatus> {
        match s {
            "active" => Some(ProductStatus::Active),
            "draft" => Some(ProductStatus::Draft),
            _ => None,
        }
    }
}

/// A variant as sent by clients when creating a product.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantInput {
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub sale_price: Option<Money>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
}

/// Create-product body.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub brand: String,
    pub category_id: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default = "default_status")]
    pub status: ProductStatus,
    pub variants: Vec<VariantInput>,
    /// Admins may create a product on behalf of a seller (`usr_…`); sellers always own theirs.
    pub seller_id: Option<String>,
}

fn default_status() -> ProductStatus {
    ProductStatus::Active
}

/// A variant in a partial update: matched by SKU; a new SKU adds a variant.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantPatch {
    pub sku: String,
    pub name: Option<String>,
    pub price: Option<Money>,
    /// `null` removes the sale price; absent leaves it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<Money>)]
    pub sale_price: Option<Option<Money>>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    /// `false` stops selling the variant (it stays for order history).
    pub active: Option<bool>,
}

/// Partial update body: absent fields are left as they are.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub brand: Option<String>,
    pub category_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    pub images: Option<Vec<String>>,
    pub status: Option<ProductStatus>,
    pub variants: Option<Vec<VariantPatch>>,
}

/// Distinguishes an absent field from an explicit `null`.
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn text_ok(s: &str, max: usize) -> bool {
    let t = s.trim();
    !t.is_empty() && t.chars().count() <= max && !t.chars().any(|c| c.is_control() && c != '\n')
}

fn url_ok(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() <= 2048
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn attributes_ok(v: &mut Validator, field: &str, attrs: &Map<String, Value>) {
    v.check(attrs.len() <= 50, field, "at most 50 attributes");
    for (k, val) in attrs {
        let ok_key = !k.is_empty() && k.len() <= 64;
        let ok_val = match val {
            Value::String(s) => s.chars().count() <= 200,
            Value::Number(_) | Value::Bool(_) => true,
            Value::Array(a) => a.len() <= 20 && a.iter().all(|x| x.is_string() || x.is_number()),
            _ => false,
        };
        if !(ok_key && ok_val) {
            v.add(
                format!("{field}.{k}"),
                "attribute values are strings (≤ 200 chars), numbers, booleans or short lists",
            );
        }
    }
}

/// Validates a price pair: positive, bounded, same currency, sale below price.
pub fn check_prices(v: &mut Validator, field: &str, price: &Money, sale: Option<&Money>) {
    v.check(
        price.amount > 0 && price.amount <= MAX_PRICE_MINOR,
        &format!("{field}.price"),
        "price must be a positive amount in minor units",
    );
    if let Some(s) = sale {
        v.check(
            s.amount > 0 && s.amount < price.amount,
            &format!("{field}.sale_price"),
            "sale_price must be positive and below price",
        );
        v.check(
            s.currency == price.currency,
            &format!("{field}.sale_price"),
            "sale_price must be in the price's currency",
        );
    }
}

impl ProductInput {
    /// Validates every field at once (all errors in one 422). Returns the parsed SKUs.
    pub fn validate(&self) -> Result<Vec<Sku>, ApiError> {
        let mut v = Validator::new();
        v.check(
            text_ok(&self.name, 300),
            "name",
            "name is required (≤ 300 chars)",
        );
        v.check(
            self.description.chars().count() <= 20_000,
            "description",
            "description is too long",
        );
        v.check(
            text_ok(&self.brand, 100),
            "brand",
            "brand is required (≤ 100 chars)",
        );
        v.check(
            self.images.len() <= MAX_IMAGES,
            "images",
            "at most 20 images",
        );
        for (i, u) in self.images.iter().enumerate() {
            v.check(
                url_ok(u),
                &format!("images[{i}]"),
                "images must be http(s) URLs",
            );
        }
        attributes_ok(&mut v, "attributes", &self.attributes);
        v.check(
            !self.variants.is_empty(),
            "variants",
            "at least one variant is required",
        );
        v.check(
            self.variants.len() <= MAX_VARIANTS,
            "variants",
            "at most 100 variants",
        );
        let mut skus = Vec::new();
        let currency = self.variants.first().map(|x| x.price.currency);
        for (i, var) in self.variants.iter().enumerate() {
            let f = format!("variants[{i}]");
            match Sku::parse(&var.sku) {
                Some(s) if skus.contains(&s) => {
                    v.add(format!("{f}.sku"), "SKUs must be unique within the product");
                }
                Some(s) => skus.push(s),
                None => {
                    v.add(format!("{f}.sku"), "sku must be 1-64 of A-Z 0-9 . _ -");
                }
            }
            v.check(
                text_ok(&var.name, 200),
                &format!("{f}.name"),
                "name is required (≤ 200 chars)",
            );
            check_prices(&mut v, &f, &var.price, var.sale_price.as_ref());
            v.check(
                Some(var.price.currency) == currency,
                &format!("{f}.price"),
                "all variants of a product share one currency",
            );
            attributes_ok(&mut v, &format!("{f}.attributes"), &var.attributes);
        }
        v.finish()?;
        Ok(skus)
    }
}

impl ProductPatch {
    pub fn validate(&self) -> Result<(), ApiError> {
        let mut v = Validator::new();
        if let Some(n) = &self.name {
            v.check(text_ok(n, 300), "name", "name must be 1-300 chars");
        }
        if let Some(d) = &self.description {
            v.check(
                d.chars().count() <= 20_000,
                "description",
                "description is too long",
            );
        }
        if let Some(b) = &self.brand {
            v.check(text_ok(b, 100), "brand", "brand must be 1-100 chars");
        }
        if let Some(imgs) = &self.images {
            v.check(imgs.len() <= MAX_IMAGES, "images", "at most 20 images");
            for (i, u) in imgs.iter().enumerate() {
                v.check(
                    url_ok(u),
                    &format!("images[{i}]"),
                    "images must be http(s) URLs",
                );
            }
        }
        if let Some(a) = &self.attributes {
            attributes_ok(&mut v, "attributes", a);
        }
        if let Some(vars) = &self.variants {
            v.check(
                vars.len() <= MAX_VARIANTS,
                "variants",
                "at most 100 variants",
            );
            for (i, var) in vars.iter().enumerate() {
                let f = format!("variants[{i}]");
                v.check(
                    Sku::parse(&var.sku).is_some(),
                    &format!("{f}.sku"),
                    "sku must be 1-64 of A-Z 0-9 . _ -",
                );
                if let Some(n) = &var.name {
                    v.check(
                        text_ok(n, 200),
                        &format!("{f}.name"),
                        "name must be 1-200 chars",
                    );
                }
                if let Some(p) = &var.price {
                    v.check(
                        p.amount > 0 && p.amount <= MAX_PRICE_MINOR,
                        &format!("{f}.price"),
                        "price must be a positive amount in minor units",
                    );
                }
                if let Some(a) = &var.attributes {
                    attributes_ok(&mut v, &format!("{f}.attributes"), a);
                }
            }
        }
        v.finish()
    }
}

/// The price a customer pays now: the sale price when there is one.
pub fn effective_price(price: Money, sale: Option<Money>) -> Money {
    sale.unwrap_or(price)
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CategoryRef {
    pub id: String,
    pub name: String,
    pub slug: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Rating {
    /// Mean rating, 0 when there are no reviews; two decimals.
    pub average: f64,
    pub count: i64,
}

impl Rating {
    pub fn of(sum: i64, count: i64) -> Rating {
        let average = if count > 0 {
            ((sum as f64 / count as f64) * 100.0).round() / 100.0
        } else {
            0.0
        };
        Rating { average, count }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Variant {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub sale_price: Option<Money>,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    /// Sellable quantity across warehouses; `null` while unknown (no stock tracked).
    pub available: Option<i64>,
    pub active: bool,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub category: CategoryRef,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    pub images: Vec<String>,
    pub status: ProductStatus,
    pub rating: Rating,
    pub variants: Vec<Variant>,
    pub seller_id: String,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Category {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub parent_id: Option<String>,
    #[schema(no_recursion)]
    pub children: Vec<Category>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Review {
    pub id: String,
    pub product_id: String,
    pub customer_id: String,
    pub rating: i64,
    pub title: String,
    pub body: String,
    pub verified_purchase: bool,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    #[schema(minimum = 1, maximum = 5)]
    pub rating: i64,
    /// 1-200 characters, no control characters but newlines.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x09\x0b-\x1f\x7f-\x9f]*$"
    )]
    pub title: String,
    #[serde(default)]
    #[schema(max_length = 5000)]
    pub body: String,
}

impl ReviewInput {
    pub fn validate(&self) -> Result<(), ApiError> {
        let mut v = Validator::new();
        v.check(
            (1..=5).contains(&self.rating),
            "rating",
            "rating must be 1 to 5",
        );
        v.check(
            text_ok(&self.title, 200),
            "title",
            "title is required (≤ 200 chars)",
        );
        v.check(
            self.body.chars().count() <= 5000,
            "body",
            "body is at most 5000 chars",
        );
        v.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercato_kernel::Currency;

    fn usd(a: i64) -> Money {
        Money::new(a, Currency::USD)
    }

    fn input() -> ProductInput {
        ProductInput {
            name: "Laptop".into(),
            description: String::new(),
            brand: "Acme".into(),
            category_id: "cat_x".into(),
            attributes: Map::new(),
            images: vec!["https://img.example/1.jpg".into()],
            status: ProductStatus::Active,
            variants: vec![VariantInput {
                sku: "lap-1".into(),
                name: "13 inch".into(),
                price: usd(100_000),
                sale_price: Some(usd(90_000)),
                attributes: Map::new(),
            }],
            seller_id: None,
        }
    }

    #[test]
    fn skus_are_normalised_and_checked() {
        assert_eq!(
            Sku::parse(" ab-1.x_2 ").map(|s| s.0),
            Some("AB-1.X_2".into())
        );
        assert!(Sku::parse("").is_none());
        assert!(Sku::parse("a b").is_none());
        assert!(Sku::parse(&"a".repeat(65)).is_none());
        assert!(Sku::parse("ü").is_none());
    }

    #[test]
    fn a_valid_product_passes_and_returns_its_skus() {
        assert_eq!(input().validate().ok(), Some(vec![Sku("LAP-1".into())]));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut p = input();
        p.name = " ".into();
        p.images = vec!["javascript:alert(1)".into()];
        p.variants[0].sale_price = Some(usd(200_000));
        p.variants.push(p.variants[0].clone());
        let e = p.validate().expect_err("invalid");
        let fields: Vec<_> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert!(fields.contains(&"name"));
        assert!(fields.contains(&"images[0]"));
        assert!(fields.contains(&"variants[0].sale_price"));
        assert!(
            fields.contains(&"variants[1].sku"),
            "duplicate sku: {fields:?}"
        );
    }

    #[test]
    fn no_variants_or_mixed_currencies_are_rejected() {
        let mut p = input();
        p.variants.clear();
        assert!(p.validate().is_err());
        let mut p = input();
        let mut v2 = p.variants[0].clone();
        v2.sku = "other".into();
        v2.price = Money::new(100, Currency::parse("EUR").expect("eur"));
        v2.sale_price = None;
        p.variants.push(v2);
        assert!(p.validate().is_err());
    }

    #[test]
    fn ratings_average_to_two_decimals() {
        let r = Rating::of(14, 3);
        assert_eq!(r.average, 4.67);
        assert_eq!(Rating::of(0, 0).average, 0.0);
    }

    #[test]
    fn slugs() {
        assert!(valid_slug("laptops-13"));
        assert!(!valid_slug("Laptops"));
        assert!(!valid_slug("-x"));
        assert!(!valid_slug(""));
    }
}
