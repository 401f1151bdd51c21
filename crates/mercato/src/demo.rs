//! Demo data for `serve --demo`: accounts with known credentials and a catalog (a nested
//! category tree and products with brands, attributes and variants) from a deterministic
//! generator, so search and facets show something meaningful. The same generator seeds the
//! benchmarks' 100k products. Loading is idempotent: existing rows are kept.

use mercato_commerce::AppState;
use mercato_commerce::catalog::model::{ProductInput, ProductStatus, VariantInput};
use mercato_commerce::catalog::{CatalogError, CatalogService};
use mercato_commerce::identity::IdentityError;
use mercato_kernel::auth::Role;
use mercato_kernel::{Currency, Money};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

pub const ADMIN_EMAIL: &str = "admin@demo.mercato";
pub const SELLER_EMAIL: &str = "seller@demo.mercato";
pub const CUSTOMER_EMAIL: &str = "customer@demo.mercato";
pub const DEMO_PASSWORD: &str = "demo-password-123";
/// SKUs of demo products start with this (and bench products with `BENCH`).
pub const DEMO_SKU_PREFIX: &str = "DEMO";
/// Products in the demo catalog.
pub const DEMO_PRODUCTS: usize = 60;

/// Loads the demo data; returns the lines to print.
pub async fn load(state: &AppState) -> anyhow::Result<Vec<String>> {
    let mut seller_id = None;
    for (email, role, name) in [
        (ADMIN_EMAIL, Role::Admin, "Demo Admin"),
        (SELLER_EMAIL, Role::Seller, "Demo Seller"),
        (CUSTOMER_EMAIL, Role::Customer, "Demo Customer"),
    ] {
        match state
            .identity
            .create_user(email, DEMO_PASSWORD, Some(name), role)
            .await
        {
            Ok(u) if role == Role::Seller => seller_id = Some(u.id),
            Ok(_) | Err(IdentityError::EmailTaken) => {}
            Err(e) => return Err(anyhow::anyhow!("creating demo user {email}: {e}")),
        }
    }
    let categories = ensure_categories(&state.catalog).await?;
    let first_sku = sku(DEMO_SKU_PREFIX, 0, 0);
    let loaded = !state
        .catalog
        .skus(std::slice::from_ref(&first_sku))
        .await
        .map_err(|e| anyhow::anyhow!("checking demo products: {e}"))?
        .is_empty();
    let mut lines = vec![
        format!("  admin:    {ADMIN_EMAIL} / {DEMO_PASSWORD}"),
        format!("  seller:   {SELLER_EMAIL} / {DEMO_PASSWORD}"),
        format!("  customer: {CUSTOMER_EMAIL} / {DEMO_PASSWORD}"),
    ];
    if !loaded {
        let admin_id = state
            .identity
            .login(
                ADMIN_EMAIL,
                DEMO_PASSWORD,
                std::net::IpAddr::from([127, 0, 0, 1]),
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("finding the demo admin: {e}"))?
            .user
            .id;
        let seller = match seller_id {
            Some(s) => s,
            None => {
                state
                    .identity
                    .login(
                        SELLER_EMAIL,
                        DEMO_PASSWORD,
                        std::net::IpAddr::from([127, 0, 0, 1]),
                        None,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("finding the demo seller: {e}"))?
                    .user
                    .id
            }
        };
        let products = generate_products(&categories, DEMO_SKU_PREFIX, 0, DEMO_PRODUCTS);
        state
            .catalog
            .seed_products(&seller, products)
            .await
            .map_err(|e| anyhow::anyhow!("loading demo products: {e}"))?;
        lines.push(format!(
            "  catalog:  {DEMO_PRODUCTS} products in {} categories (try /api/v1/search?q=lpatop)",
            CATEGORIES.len()
        ));
        let units = stock_demo(state, &admin_id).await?;
        lines.push(format!(
            "  stock:    {units} units in 2 warehouses (Austin, US and Berlin, DE)"
        ));
    }
    if promotions_demo(state).await? {
        lines.push(
            "  promos:   coupon WELCOME10 (10 % off, once per customer), free shipping over 100.00"
                .to_owned(),
        );
    }
    Ok(lines)
}

/// The demo coupon `WELCOME10` and the automatic free shipping above 100.00, created with the
/// coupon (so loading again creates neither twice). Both stack. Returns whether they were made.
async fn promotions_demo(state: &AppState) -> anyhow::Result<bool> {
    use mercato_commerce::promotions::PromotionError;
    use mercato_commerce::promotions::model::PromotionInput;
    let coupon: PromotionInput = serde_json::from_value(json!({
        "name": "Welcome: 10 % off your first order",
        "code": "WELCOME10",
        "kind": "percent_off",
        "value": 1000,
        "per_customer_limit": 1,
        "stackable": true,
        "status": "active"
    }))?;
    match state.promotions.create(coupon).await {
        Ok(_) => {}
        Err(PromotionError::CodeTaken(_)) => return Ok(false),
        Err(e) => return Err(anyhow::anyhow!("creating the demo coupon: {e}")),
    }
    let shipping: PromotionInput = serde_json::from_value(json!({
        "name": "Free shipping over 100.00",
        "automatic": true,
        "kind": "free_shipping",
        "min_subtotal": {"amount": 10000, "currency": "USD"},
        "stackable": true,
        "status": "active"
    }))?;
    state
        .promotions
        .create(shipping)
        .await
        .map_err(|e| anyhow::anyhow!("creating the demo free shipping: {e}"))?;
    Ok(true)
}

/// The category tree: (name, slug, parent slug). Parents come before their children.
pub const CATEGORIES: &[(&str, &str, Option<&str>)] = &[
    ("Electronics", "electronics", None),
    ("Computers", "computers", Some("electronics")),
    ("Laptops", "laptops", Some("computers")),
    ("Phones", "phones", Some("electronics")),
    ("Audio", "audio", Some("electronics")),
    ("Headphones", "headphones", Some("audio")),
    ("Cameras", "cameras", Some("electronics")),
    ("Home & Kitchen", "home-kitchen", None),
    ("Coffee", "coffee", Some("home-kitchen")),
    ("Cookware", "cookware", Some("home-kitchen")),
    ("Sports & Outdoors", "sports-outdoors", None),
    ("Running", "running", Some("sports-outdoors")),
    ("Bags & Backpacks", "bags", Some("sports-outdoors")),
    ("Fashion", "fashion", None),
    ("Jackets", "jackets", Some("fashion")),
    ("T-Shirts", "t-shirts", Some("fashion")),
];

/// Creates the tree (or finds it); returns slug → category id.
pub async fn ensure_categories(
    catalog: &CatalogService,
) -> anyhow::Result<HashMap<String, String>> {
    let mut ids: HashMap<String, String> = HashMap::new();
    let existing = flatten(
        &catalog
            .category_tree()
            .await
            .map_err(|e| anyhow::anyhow!("reading categories: {e}"))?,
    );
    for (name, slug, parent) in CATEGORIES {
        if let Some(id) = existing.get(*slug) {
            ids.insert((*slug).to_owned(), id.clone());
            continue;
        }
        let parent_id = parent.and_then(|p| ids.get(p).cloned());
        match catalog
            .create_category(name, slug, parent_id.as_deref())
            .await
        {
            Ok(c) => {
                ids.insert((*slug).to_owned(), c.id);
            }
            Err(CatalogError::SlugTaken) => {
                // Created concurrently: read it back.
                let again = flatten(
                    &catalog
                        .category_tree()
                        .await
                        .map_err(|e| anyhow::anyhow!("reading categories: {e}"))?,
                );
                if let Some(id) = again.get(*slug) {
                    ids.insert((*slug).to_owned(), id.clone());
                }
            }
            Err(e) => return Err(anyhow::anyhow!("creating category {slug}: {e}")),
        }
    }
    Ok(ids)
}

fn flatten(tree: &[mercato_commerce::catalog::model::Category]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for c in tree {
        out.insert(c.slug.clone(), c.id.clone());
        out.extend(flatten(&c.children));
    }
    out
}

/// How a product line's variants differ.
enum Axis {
    /// Label and price added to the base price (minor units).
    Tier(&'static [(&'static str, i64)]),
    Color(&'static [&'static str]),
    Size(&'static [&'static str]),
}

/// A product line of one leaf category.
struct Line {
    category: &'static str,
    brands: &'static [&'static str],
    series: &'static [&'static str],
    nouns: &'static [&'static str],
    /// Base price range, minor units.
    price: (i64, i64),
    axis: Axis,
    features: &'static [&'static str],
    attrs: &'static [(&'static str, &'static [&'static str])],
}

const COLORS: &[&str] = &[
    "Black",
    "Silver",
    "Navy Blue",
    "Forest Green",
    "Red",
    "White",
];

const LINES: &[Line] = &[
    Line {
        category: "laptops",
        brands: &["Lenovo", "Dell", "HP", "Asus", "Acer", "Apple"],
        series: &[
            "Aurora", "Zenith", "Vector", "Nimbus", "Carbon", "Swift", "Vertex",
        ],
        nouns: &["Laptop", "Ultrabook", "Gaming Laptop"],
        price: (49_900, 219_900),
        axis: Axis::Tier(&[
            ("8GB RAM / 256GB SSD", 0),
            ("16GB RAM / 512GB SSD", 20_000),
            ("32GB RAM / 1TB SSD", 55_000),
        ]),
        features: &[
            "an all-day battery",
            "a backlit keyboard",
            "a bright anti-glare display",
            "Wi-Fi 6E and Thunderbolt ports",
            "a fingerprint reader",
        ],
        attrs: &[
            ("screen", &["13.3 inch", "14 inch", "15.6 inch", "16 inch"]),
            (
                "processor",
                &["Intel Core i5", "Intel Core i7", "AMD Ryzen 7", "Apple M3"],
            ),
        ],
    },
    Line {
        category: "phones",
        brands: &[
            "Apple", "Samsung", "Google", "OnePlus", "Xiaomi", "Motorola",
        ],
        series: &["Nova", "Edge", "Pulse", "Orbit", "Prime"],
        nouns: &["Smartphone", "5G Phone"],
        price: (29_900, 119_900),
        axis: Axis::Tier(&[("128GB", 0), ("256GB", 10_000), ("512GB", 25_000)]),
        features: &[
            "a triple camera with night mode",
            "fast wireless charging",
            "a 120Hz OLED screen",
            "water resistance",
        ],
        attrs: &[
            ("screen", &["6.1 inch", "6.4 inch", "6.7 inch"]),
            ("color", &["Black", "Blue", "Titanium", "Green"]),
        ],
    },
    Line {
        category: "headphones",
        brands: &["Sony", "Bose", "Sennheiser", "JBL", "Audio-Technica"],
        series: &["Quiet", "Studio", "Echo", "Flow", "Arc"],
        nouns: &[
            "Wireless Headphones",
            "Noise Cancelling Headphones",
            "Earbuds",
        ],
        price: (4_900, 39_900),
        axis: Axis::Color(COLORS),
        features: &[
            "active noise cancelling",
            "30 hours of battery",
            "multipoint Bluetooth",
            "a foldable design",
        ],
        attrs: &[("connectivity", &["Bluetooth 5.3", "Bluetooth 5.0", "USB-C"])],
    },
    Line {
        category: "cameras",
        brands: &["Canon", "Nikon", "Sony", "Fujifilm", "Panasonic"],
        series: &["Alpha", "Vista", "Focus", "Lumen"],
        nouns: &["Mirrorless Camera", "Compact Camera", "Action Camera"],
        price: (19_900, 229_900),
        axis: Axis::Tier(&[("Body only", 0), ("With 18-55mm lens", 30_000)]),
        features: &[
            "4K video",
            "in-body stabilisation",
            "a weather-sealed body",
            "fast autofocus",
        ],
        attrs: &[("sensor", &["APS-C", "Full frame", "1 inch"])],
    },
    Line {
        category: "coffee",
        brands: &["Breville", "DeLonghi", "Nespresso", "Krups", "Smeg"],
        series: &["Barista", "Crema", "Morning", "Roast"],
        nouns: &["Espresso Machine", "Coffee Grinder", "Drip Coffee Maker"],
        price: (3_900, 89_900),
        axis: Axis::Color(COLORS),
        features: &[
            "a steam wand for milk",
            "a conical burr grinder",
            "a programmable timer",
            "a 1.8 litre water tank",
        ],
        attrs: &[(
            "material",
            &["Stainless steel", "Brushed aluminium", "Plastic"],
        )],
    },
    Line {
        category: "cookware",
        brands: &["Lodge", "Tefal", "Le Creuset", "All-Clad", "Staub"],
        series: &["Classic", "Chef", "Heritage", "Pro"],
        nouns: &[
            "Cast Iron Skillet",
            "Nonstick Frying Pan",
            "Dutch Oven",
            "Saucepan",
        ],
        price: (1_900, 34_900),
        axis: Axis::Size(&["20 cm", "24 cm", "28 cm"]),
        features: &[
            "an induction-ready base",
            "oven safety up to 260 °C",
            "a dishwasher-safe finish",
        ],
        attrs: &[("material", &["Cast iron", "Aluminium", "Stainless steel"])],
    },
    Line {
        category: "running",
        brands: &["Nike", "Adidas", "Asics", "Brooks", "Hoka", "New Balance"],
        series: &["Glide", "Tempo", "Trail", "Cloud", "Rush"],
        nouns: &["Running Shoes", "Trail Running Shoes"],
        price: (5_900, 19_900),
        axis: Axis::Size(&["US 8", "US 9", "US 10", "US 11"]),
        features: &[
            "responsive foam cushioning",
            "a breathable mesh upper",
            "a grippy rubber outsole",
        ],
        attrs: &[("gender", &["Men", "Women", "Unisex"])],
    },
    Line {
        category: "bags",
        brands: &[
            "Osprey",
            "Deuter",
            "The North Face",
            "Patagonia",
            "Samsonite",
        ],
        series: &["Summit", "Metro", "Voyager", "Ridge"],
        nouns: &["Hiking Backpack", "Laptop Bag", "Daypack", "Duffel Bag"],
        price: (2_900, 24_900),
        axis: Axis::Color(COLORS),
        features: &[
            "a padded 15 inch laptop sleeve",
            "a rain cover",
            "ventilated back panel",
            "water-resistant fabric",
        ],
        attrs: &[("capacity", &["18 L", "24 L", "32 L", "45 L"])],
    },
    Line {
        category: "jackets",
        brands: &[
            "Patagonia",
            "Columbia",
            "Arc'teryx",
            "Uniqlo",
            "The North Face",
        ],
        series: &["Storm", "Alpine", "Urban", "Glacier"],
        nouns: &["Rain Jacket", "Down Jacket", "Fleece Jacket"],
        price: (4_900, 49_900),
        axis: Axis::Size(&["S", "M", "L", "XL"]),
        features: &[
            "a waterproof breathable shell",
            "recycled insulation",
            "a packable hood",
        ],
        attrs: &[("color", &["Black", "Olive", "Navy", "Red"])],
    },
    Line {
        category: "t-shirts",
        brands: &["Uniqlo", "Levi's", "Hanes", "Patagonia", "Champion"],
        series: &["Essential", "Heavyweight", "Organic", "Graphic"],
        nouns: &["Cotton T-Shirt", "Crew Neck Tee"],
        price: (900, 4_900),
        axis: Axis::Size(&["S", "M", "L", "XL"]),
        features: &["organic cotton", "a relaxed fit", "a pre-shrunk fabric"],
        attrs: &[("color", &["White", "Black", "Grey", "Navy"])],
    },
];

/// splitmix64: a deterministic stream of pseudo-random numbers from a product number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn pick<T>(items: &[T], n: u64, salt: u64) -> &T {
    let len = items.len().max(1) as u64;
    &items[(mix(n.wrapping_mul(31).wrapping_add(salt)) % len) as usize]
}

/// Two warehouses and stock for every demo SKU (a few left out of stock on purpose).
async fn stock_demo(state: &AppState, admin_id: &str) -> anyhow::Result<i64> {
    let admin = mercato_kernel::auth::Principal {
        subject: admin_id.to_owned(),
        role: Role::Admin,
    };
    let mut warehouses = Vec::new();
    for (code, name, country, region) in [
        ("AUS-1", "Austin", "US", Some("TX")),
        ("BER-1", "Berlin", "DE", None),
    ] {
        let w = state
            .inventory
            .create_warehouse(code, name, country, region)
            .await
            .map_err(|e| anyhow::anyhow!("creating demo warehouse {code}: {e}"))?;
        warehouses.push(w.id);
    }
    let products = state
        .catalog
        .product_ids_after("", DEMO_PRODUCTS as i64 * 2)
        .await
        .map_err(|e| anyhow::anyhow!("listing demo products: {e}"))?;
    let snapshots = state
        .catalog
        .snapshots(&products)
        .await
        .map_err(|e| anyhow::anyhow!("reading demo products: {e}"))?;
    let mut total = 0;
    for (n, snap) in snapshots.iter().enumerate() {
        for (v, variant) in snap.product.variants.iter().enumerate() {
            if !variant.sku.starts_with(DEMO_SKU_PREFIX) {
                continue;
            }
            for (w, wh) in warehouses.iter().enumerate() {
                // Deterministic, varied stock; every 13th variant sold out in Berlin.
                let units = if (n + v) % 13 == 0 && w == 1 {
                    0
                } else {
                    ((n * 7 + v * 11 + w * 5) % 40 + 5) as i64
                };
                state
                    .inventory
                    .set_on_hand(&admin, &variant.sku, wh, units)
                    .await
                    .map_err(|e| anyhow::anyhow!("stocking {}: {e}", variant.sku))?;
                total += units;
            }
        }
    }
    Ok(total)
}

/// The SKU of variant `v` of product number `n`.
pub fn sku(prefix: &str, n: usize, v: usize) -> String {
    format!("{prefix}-{n:06}-{v}")
}

/// Products `start..start + count` of the generated catalog (the same numbers always give
/// the same products), spread over the leaf categories round robin. `categories` maps slugs
/// to ids (from [`ensure_categories`]); lines whose category is missing are skipped.
pub fn generate_products(
    categories: &HashMap<String, String>,
    sku_prefix: &str,
    start: usize,
    count: usize,
) -> Vec<ProductInput> {
    let lines: Vec<(&Line, &String)> = LINES
        .iter()
        .filter_map(|l| categories.get(l.category).map(|id| (l, id)))
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    (start..start + count)
        .map(|n| {
            let (line, category_id) = lines[n % lines.len()];
            product(line, category_id, sku_prefix, n)
        })
        .collect()
}

fn product(line: &Line, category_id: &str, prefix: &str, n: usize) -> ProductInput {
    let k = n as u64;
    let brand = *pick(line.brands, k, 1);
    let series = *pick(line.series, k, 2);
    let noun = *pick(line.nouns, k, 3);
    let model = 2 + mix(k ^ 0xabc) % 19;
    let name = format!("{series} {model} {noun}");
    let (lo, hi) = line.price;
    // Prices end in 99 like shelf prices do.
    let base = (lo + (mix(k ^ 0x51) % (hi - lo).max(1) as u64) as i64) / 100 * 100 + 99;
    let f1 = *pick(line.features, k, 4);
    let f2 = *pick(line.features, k, 5);
    let description = if f1 == f2 {
        format!("The {brand} {name} comes with {f1}.")
    } else {
        format!("The {brand} {name} comes with {f1} and {f2}.")
    };
    let mut attributes = Map::new();
    for (i, (key, values)) in line.attrs.iter().enumerate() {
        attributes.insert(
            (*key).to_owned(),
            Value::String((*pick(values, k, 10 + i as u64)).to_owned()),
        );
    }
    let on_sale = mix(k ^ 0x5a1e) % 5 < 1;
    let usd = |a: i64| Money::new(a, Currency::USD);
    let variant = |v: usize, label: &str, price: i64, attrs: Value| VariantInput {
        sku: sku(prefix, n, v),
        name: label.to_owned(),
        price: usd(price),
        sale_price: on_sale.then(|| usd(price - price / 10)),
        attributes: match attrs {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    };
    let variants: Vec<VariantInput> = match &line.axis {
        Axis::Tier(tiers) => tiers
            .iter()
            .enumerate()
            .map(|(v, (label, add))| variant(v, label, base + add, json!({"option": label})))
            .collect(),
        Axis::Color(colors) => {
            let first = (mix(k ^ 0xc0) % colors.len() as u64) as usize;
            let howmany = 2 + (mix(k ^ 0xc1) % 2) as usize;
            (0..howmany)
                .map(|v| {
                    let c = colors[(first + v) % colors.len()];
                    variant(v, c, base, json!({"color": c}))
                })
                .collect()
        }
        Axis::Size(sizes) => sizes
            .iter()
            .enumerate()
            .map(|(v, s)| variant(v, s, base, json!({"size": s})))
            .collect(),
    };
    ProductInput {
        name,
        description,
        brand: brand.to_owned(),
        category_id: category_id.to_owned(),
        attributes,
        images: vec![
            format!("https://images.mercato.example/{}/{n}-1.jpg", line.category),
            format!("https://images.mercato.example/{}/{n}-2.jpg", line.category),
        ],
        status: ProductStatus::Active,
        variants,
        seller_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cats() -> HashMap<String, String> {
        CATEGORIES
            .iter()
            .enumerate()
            .map(|(i, (_, slug, _))| ((*slug).to_owned(), format!("cat_{i}")))
            .collect()
    }

    #[test]
    fn the_generator_is_deterministic_and_valid() {
        let a = generate_products(&cats(), "DEMO", 0, DEMO_PRODUCTS);
        let b = generate_products(&cats(), "DEMO", 0, DEMO_PRODUCTS);
        assert_eq!(a.len(), DEMO_PRODUCTS);
        let names = |v: &[ProductInput]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        for p in &a {
            assert!(p.validate().is_ok(), "{} is invalid", p.name);
            assert!(p.variants.len() >= 2, "{} has one variant", p.name);
        }
        let categories: std::collections::HashSet<_> = a.iter().map(|p| &p.category_id).collect();
        assert!(categories.len() >= 5);
        let brands: std::collections::HashSet<_> = a.iter().map(|p| &p.brand).collect();
        assert!(brands.len() >= 20, "{} brands", brands.len());
        // Ranges continue where they stop: SKUs never collide.
        let next = generate_products(&cats(), "DEMO", DEMO_PRODUCTS, 10);
        assert_ne!(next[0].variants[0].sku, a[0].variants[0].sku);
    }
}
