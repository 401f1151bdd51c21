//! Search's pure types and rules: query parameters and their validation, sorts and cursors,
//! price and rating buckets, the list item shape, and the spelling helpers. No IO here.

use mercato_kernel::error::{ApiError, Code, Validator};
use mercato_kernel::pagination::{DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor};
use mercato_kernel::{Money, Timestamp};
use serde::{Deserialize, Serialize};

/// Longest accepted `q`, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// At most this many words of a query are used (the rest are ignored).
pub const MAX_QUERY_WORDS: usize = 10;
/// Most values one multi-valued filter (`brand`, `category`) may carry.
pub const MAX_FILTER_VALUES: usize = 20;
/// Most suggestions `GET /search/suggest` returns.
pub const MAX_SUGGESTIONS: usize = 10;
/// Words shorter than this are matched exactly (one typo in a 3-letter word matches too much).
pub const MIN_FUZZY_WORD_CHARS: usize = 4;
/// Brands listed in the brand facet (selected brands are always listed too).
pub const BRAND_FACET_SIZE: usize = 20;

/// Price buckets of the `price_ranges` facet, in minor units: `[min, max)`, the last open.
/// Chosen for a general store in a currency with 100 minor units (USD, EUR): 0–25, 25–50,
/// 50–100, 100–250, 250–500, 500–1,000, 1,000–1,500, 1,500 and more.
pub const PRICE_BUCKETS: &[(i64, Option<i64>)] = &[
    (0, Some(2_500)),
    (2_500, Some(5_000)),
    (5_000, Some(10_000)),
    (10_000, Some(25_000)),
    (25_000, Some(50_000)),
    (50_000, Some(100_000)),
    (100_000, Some(150_000)),
    (150_000, None),
];

/// Thresholds of the `rating` facet ("4 stars & up" …), in whole stars.
pub const RATING_THRESHOLDS: &[u64] = &[4, 3, 2, 1];

/// Index of the price bucket holding `price` (minor units).
pub fn price_bucket(price: i64) -> usize {
    PRICE_BUCKETS
        .iter()
        .position(|(min, max)| price >= *min && max.is_none_or(|m| price < m))
        .unwrap_or(0)
}

/// Result order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
    Rating,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "relevance" => Sort::Relevance,
            "price_asc" => Sort::PriceAsc,
            "price_desc" => Sort::PriceDesc,
            "newest" => Sort::Newest,
            "rating" => Sort::Rating,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Relevance => "relevance",
            Sort::PriceAsc => "price_asc",
            Sort::PriceDesc => "price_desc",
            Sort::Newest => "newest",
            Sort::Rating => "rating",
        }
    }
}

/// The facts of one indexed product that ordering and filters look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SortFacts {
    /// Lowest current price, minor units.
    pub price: i64,
    /// Creation time, unix microseconds.
    pub created: i64,
    /// Average rating in hundredths of a star (0..=500).
    pub rating: u64,
    pub reviews: u64,
}

/// A totally ordered position in a result list: ascending `(primary, tiebreak)` is the order
/// in which results are shown, whatever the sort (descending sorts negate the primary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SortKey {
    pub primary: i64,
    /// A stable per-product number (hash of its id) so equal primaries still have an order.
    pub tiebreak: u64,
}

impl SortKey {
    /// The key of a product under `sort`; `score` is its relevance (non-negative).
    pub fn of(sort: Sort, facts: SortFacts, score: f32, tiebreak: u64) -> SortKey {
        let primary = match sort {
            // Non-negative f32s order like their bit patterns.
            Sort::Relevance => -i64::from(score.max(0.0).to_bits()),
            Sort::PriceAsc => facts.price,
            Sort::PriceDesc => -facts.price,
            Sort::Newest => -facts.created,
            Sort::Rating => {
                let reviews = i64::try_from(facts.reviews.min(999_999)).unwrap_or(999_999);
                let rating = i64::try_from(facts.rating.min(500)).unwrap_or(500);
                -(rating * 1_000_000 + reviews)
            }
        };
        SortKey { primary, tiebreak }
    }
}

/// A stable 64-bit hash of a product id (FNV-1a): the tiebreak of [`SortKey`].
pub fn tiebreak_of(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a cursor carries: the sort it belongs to and the key of the last item returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CursorBody(Sort, i64, u64);

pub fn encode_search_cursor(sort: Sort, key: SortKey) -> String {
    encode_cursor(&CursorBody(sort, key.primary, key.tiebreak))
}

/// Decodes a cursor; one made for another sort is as malformed as garbage (400).
pub fn decode_search_cursor(sort: Sort, raw: &str) -> Result<SortKey, ApiError> {
    let CursorBody(s, primary, tiebreak) = decode_cursor(raw)?;
    if s != sort {
        return Err(ApiError::new(Code::InvalidCursor)
            .detail("the cursor belongs to a different sort order"));
    }
    Ok(SortKey { primary, tiebreak })
}

/// Raw query parameters of `GET /search` and `GET /products`, as sent (repeated `brand` and
/// `category` parameters are collected).
#[derive(Clone, Debug, Default)]
pub struct RawParams {
    pub q: Option<String>,
    pub category: Vec<String>,
    pub brand: Vec<String>,
    pub min_price: Option<String>,
    pub max_price: Option<String>,
    pub in_stock: Option<String>,
    pub rating: Option<String>,
    pub sort: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl RawParams {
    /// Collects `key=value` pairs; unknown keys are ignored (cache busters, tracking tags).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<RawParams, ApiError> {
        let mut p = RawParams::default();
        for (k, v) in pairs {
            let single = |slot: &mut Option<String>, v: String| -> Result<(), ApiError> {
                if slot.is_some() {
                    return Err(ApiError::new(Code::InvalidQuery)
                        .detail(format!("`{k}` may be given only once")));
                }
                *slot = Some(v);
                Ok(())
            };
            match k.as_str() {
                "q" => single(&mut p.q, v)?,
                "min_price" => single(&mut p.min_price, v)?,
                "max_price" => single(&mut p.max_price, v)?,
                "in_stock" => single(&mut p.in_stock, v)?,
                "rating" => single(&mut p.rating, v)?,
                "sort" => single(&mut p.sort, v)?,
                "limit" => single(&mut p.limit, v)?,
                "cursor" => single(&mut p.cursor, v)?,
                // `brand=A&brand=B` or `brand=A,B` (brands with commas need the repeated form…
                // …which is why commas only split the category list, whose ids never have one).
                "brand" => p.brand.push(v),
                "category" => p
                    .category
                    .extend(v.split(',').map(str::to_owned).filter(|s| !s.is_empty())),
                _ => {}
            }
        }
        Ok(p)
    }
}

/// A validated listing or search request.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchRequest {
    /// The text query (`None` for listings).
    pub q: Option<String>,
    pub filters: Filters,
    pub sort: Sort,
    pub limit: usize,
    pub after: Option<SortKey>,
}

/// Filters; each facet ignores its own filter and honours the others (disjunctive faceting).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Category ids as requested (descendants are added by the service).
    pub categories: Vec<String>,
    /// Brands, compared case-insensitively; any of them matches.
    pub brands: Vec<String>,
    /// Inclusive bounds on the lowest current price, minor units.
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: bool,
    /// Minimum average rating, in hundredths of a star.
    pub min_rating: Option<u64>,
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn parse_price(v: &mut Validator, field: &str, raw: Option<&str>) -> Option<i64> {
    let raw = raw?;
    match raw.trim().parse::<i64>() {
        Ok(n) if (0..=crate::catalog::model::MAX_PRICE_MINOR).contains(&n) => Some(n),
        _ => {
            v.add(
                field,
                "must be a non-negative integer amount in minor units (e.g. 1999 for 19.99)",
            );
            None
        }
    }
}

impl SearchRequest {
    /// Validates every parameter at once (all problems in one 422; a bad cursor is a 400).
    /// `text` says whether this is `/search` (a query is required) or a listing (no query).
    pub fn parse(raw: RawParams, text: bool) -> Result<SearchRequest, ApiError> {
        let mut v = Validator::new();
        let q = match (text, raw.q) {
            (true, Some(q)) => {
                let q = q.trim().to_owned();
                v.check(!q.is_empty(), "q", "q is required");
                v.check(
                    q.chars().count() <= MAX_QUERY_CHARS,
                    "q",
                    "q is at most 200 characters",
                );
                v.check(
                    !q.chars().any(char::is_control),
                    "q",
                    "q must not contain control characters",
                );
                Some(q)
            }
            (true, None) => {
                v.add("q", "q is required");
                None
            }
            (false, Some(_)) => {
                v.add("q", "listings take no text query; use GET /search");
                None
            }
            (false, None) => None,
        };
        v.check(
            raw.category.len() <= MAX_FILTER_VALUES,
            "category",
            "at most 20 categories",
        );
        for c in &raw.category {
            v.check(
                mercato_kernel::id::is_valid("cat", c.trim()),
                "category",
                "category must be category ids (cat_…)",
            );
        }
        v.check(
            raw.brand.len() <= MAX_FILTER_VALUES,
            "brand",
            "at most 20 brands",
        );
        for b in &raw.brand {
            let t = b.trim();
            v.check(
                !t.is_empty() && t.chars().count() <= 100 && !t.chars().any(char::is_control),
                "brand",
                "brand must be 1-100 characters",
            );
        }
        let min_price = parse_price(&mut v, "min_price", raw.min_price.as_deref());
        let max_price = parse_price(&mut v, "max_price", raw.max_price.as_deref());
        if let (Some(lo), Some(hi)) = (min_price, max_price) {
            v.check(
                lo <= hi,
                "max_price",
                "max_price must be at least min_price",
            );
        }
        let in_stock = match raw.in_stock.as_deref() {
            None => false,
            Some(s) => parse_bool(s).unwrap_or_else(|| {
                v.add("in_stock", "in_stock must be true or false");
                false
            }),
        };
        let min_rating = match raw.rating.as_deref() {
            None => None,
            Some(s) => match s.trim().parse::<f64>() {
                Ok(r) if (0.0..=5.0).contains(&r) => Some((r * 100.0).round() as u64),
                _ => {
                    v.add("rating", "rating is a minimum average rating from 0 to 5");
                    None
                }
            },
        };
        let default_sort = if text { Sort::Relevance } else { Sort::Newest };
        let sort = match raw.sort.as_deref() {
            None | Some("") => default_sort,
            Some(s) => match Sort::parse(s.trim()) {
                Some(Sort::Relevance) if !text => {
                    v.add(
                        "sort",
                        "listings sort by price_asc, price_desc, newest or rating",
                    );
                    default_sort
                }
                Some(s) => s,
                None => {
                    v.add(
                        "sort",
                        "sort must be relevance, price_asc, price_desc, newest or rating",
                    );
                    default_sort
                }
            },
        };
        let limit = match raw.limit.as_deref() {
            None => DEFAULT_LIMIT as usize,
            Some(s) => match s.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n as usize,
                _ => {
                    v.add("limit", "limit must be an integer from 1 to 100");
                    DEFAULT_LIMIT as usize
                }
            },
        };
        v.finish()?;
        let after = match raw.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(decode_search_cursor(sort, c)?),
        };
        let mut brands: Vec<String> = raw.brand.iter().map(|b| b.trim().to_owned()).collect();
        brands.dedup();
        let mut categories: Vec<String> =
            raw.category.iter().map(|c| c.trim().to_owned()).collect();
        categories.dedup();
        Ok(SearchRequest {
            q,
            filters: Filters {
                categories,
                brands,
                min_price,
                max_price,
                in_stock,
                min_rating,
            },
            sort,
            limit,
            after,
        })
    }
}

/// The suggest request: `q` (the beginning of what the user types) and `limit` (1..=10).
pub fn parse_suggest(q: Option<&str>, limit: Option<&str>) -> Result<(String, usize), ApiError> {
    let mut v = Validator::new();
    let q = q.map(str::trim).unwrap_or_default().to_owned();
    v.check(!q.is_empty(), "q", "q is required");
    v.check(q.chars().count() <= 100, "q", "q is at most 100 characters");
    v.check(
        !q.chars().any(char::is_control),
        "q",
        "q must not contain control characters",
    );
    let limit = match limit {
        None => MAX_SUGGESTIONS,
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_SUGGESTIONS).contains(&n) => n,
            _ => {
                v.add("limit", "limit must be an integer from 1 to 10");
                MAX_SUGGESTIONS
            }
        },
    };
    v.finish()?;
    Ok((q, limit))
}

/// A product in a list or search result: enough to render a result tile without another call.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ListItem {
    pub id: String,
    pub name: String,
    pub brand: String,
    pub category: ItemCategory,
    /// The lowest price a customer pays now among the product's purchasable variants (the
    /// sale price where there is one).
    pub price: Money,
    /// The regular price of that same variant when it is on sale, else `null`.
    pub regular_price: Option<Money>,
    /// The highest current price among purchasable variants ("from `price` to `max_price`").
    pub max_price: Money,
    /// The first image, if any.
    pub image: Option<String>,
    pub rating: ItemRating,
    /// Whether at least one purchasable variant can be bought now (untracked stock counts as
    /// in stock).
    pub in_stock: bool,
    pub variant_count: usize,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ItemCategory {
    pub id: String,
    pub name: String,
    pub slug: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ItemRating {
    pub average: f64,
    pub count: i64,
}

/// `{value, count}` of the brand facet.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BrandCount {
    pub value: String,
    pub count: u64,
}

/// A category of the category facet: products in it or any of its descendants.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CategoryCount {
    /// The category id (what `category=` takes).
    pub value: String,
    pub name: String,
    pub slug: String,
    pub parent_id: Option<String>,
    pub count: u64,
}

/// A price bucket: `[min, max)` in minor units; `max` is `null` for the last, open bucket.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PriceRangeCount {
    pub min: i64,
    pub max: Option<i64>,
    pub count: u64,
}

/// "`min` stars & up": products whose average rating is at least `min`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RatingCount {
    pub min: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Facets {
    pub brands: Vec<BrandCount>,
    pub categories: Vec<CategoryCount>,
    pub price_ranges: Vec<PriceRangeCount>,
    pub rating: Vec<RatingCount>,
}

/// `GET /products` and `GET /search` answer this.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub data: Vec<ListItem>,
    pub next_cursor: Option<String>,
    /// How many products match the query and every filter.
    pub total: u64,
    pub facets: Facets,
    /// The query with likely typos corrected, when some word looks misspelt (search only).
    pub did_you_mean: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Suggestions {
    pub suggestions: Vec<String>,
}

/// Every string one edit away from `word` (deletion, adjacent transposition, substitution,
/// insertion) over `a-z0-9` and the word's own characters: the spelling candidates.
pub fn edits1(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let mut alphabet: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    for c in &chars {
        if !alphabet.contains(c) {
            alphabet.push(*c);
        }
    }
    let n = chars.len();
    let mut out = Vec::with_capacity(n * (2 * alphabet.len() + 2) + alphabet.len());
    let s = |v: &[char]| v.iter().collect::<String>();
    for i in 0..n {
        let mut d = chars.clone();
        d.remove(i);
        out.push(s(&d));
        if i + 1 < n {
            let mut t = chars.clone();
            t.swap(i, i + 1);
            out.push(s(&t));
        }
        for &c in &alphabet {
            if c != chars[i] {
                let mut r = chars.clone();
                r[i] = c;
                out.push(s(&r));
            }
        }
    }
    for i in 0..=n {
        for &c in &alphabet {
            let mut ins = chars.clone();
            ins.insert(i, c);
            out.push(s(&ins));
        }
    }
    out.sort();
    out.dedup();
    out.retain(|c| c != word && !c.is_empty());
    out
}

/// Words that never decide whether a product matches (a query of only these still matches).
pub fn is_stopword(w: &str) -> bool {
    matches!(
        w,
        "a" | "an"
            | "and"
            | "or"
            | "the"
            | "for"
            | "of"
            | "with"
            | "in"
            | "on"
            | "to"
            | "by"
            | "at"
            | "from"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawParams {
        RawParams::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .expect("pairs")
    }

    #[test]
    fn price_buckets_cover_every_price_once() {
        assert_eq!(price_bucket(0), 0);
        assert_eq!(price_bucket(2_499), 0);
        assert_eq!(price_bucket(2_500), 1);
        assert_eq!(price_bucket(149_999), 6);
        assert_eq!(price_bucket(150_000), 7);
        assert_eq!(price_bucket(i64::MAX), 7);
        for w in PRICE_BUCKETS.windows(2) {
            assert_eq!(w[0].1, Some(w[1].0), "buckets are contiguous");
        }
    }

    #[test]
    fn sort_keys_order_like_the_sort() {
        let f = |price, created, rating, reviews| SortFacts {
            price,
            created,
            rating,
            reviews,
        };
        let cheap = f(100, 1, 450, 3);
        let dear = f(900, 2, 300, 10);
        assert!(
            SortKey::of(Sort::PriceAsc, cheap, 0.0, 1) < SortKey::of(Sort::PriceAsc, dear, 0.0, 1)
        );
        assert!(
            SortKey::of(Sort::PriceDesc, dear, 0.0, 1)
                < SortKey::of(Sort::PriceDesc, cheap, 0.0, 1)
        );
        assert!(SortKey::of(Sort::Newest, dear, 0.0, 1) < SortKey::of(Sort::Newest, cheap, 0.0, 1));
        assert!(SortKey::of(Sort::Rating, cheap, 0.0, 1) < SortKey::of(Sort::Rating, dear, 0.0, 1));
        assert!(
            SortKey::of(Sort::Relevance, cheap, 2.5, 1)
                < SortKey::of(Sort::Relevance, cheap, 0.5, 1)
        );
        // Equal primaries fall back to the tiebreak.
        assert!(
            SortKey::of(Sort::PriceAsc, cheap, 0.0, 1) < SortKey::of(Sort::PriceAsc, cheap, 0.0, 2)
        );
    }

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_sort() {
        let k = SortKey {
            primary: -42,
            tiebreak: u64::MAX,
        };
        let c = encode_search_cursor(Sort::Newest, k);
        assert_eq!(decode_search_cursor(Sort::Newest, &c).ok(), Some(k));
        assert!(decode_search_cursor(Sort::PriceAsc, &c).is_err());
        assert!(decode_search_cursor(Sort::Newest, "garbage!").is_err());
        assert!(decode_search_cursor(Sort::Newest, "WzEsMl0").is_err());
    }

    #[test]
    fn a_full_request_parses() {
        let r = SearchRequest::parse(
            raw(&[
                ("q", " laptop "),
                ("brand", "Acme"),
                ("brand", "Zenith"),
                ("min_price", "1000"),
                ("max_price", "5000"),
                ("in_stock", "true"),
                ("rating", "3.5"),
                ("sort", "price_desc"),
                ("limit", "5"),
                ("utm_source", "x"),
            ]),
            true,
        )
        .expect("valid");
        assert_eq!(r.q.as_deref(), Some("laptop"));
        assert_eq!(r.filters.brands, vec!["Acme", "Zenith"]);
        assert_eq!(r.filters.min_price, Some(1000));
        assert_eq!(r.filters.max_price, Some(5000));
        assert!(r.filters.in_stock);
        assert_eq!(r.filters.min_rating, Some(350));
        assert_eq!(r.sort, Sort::PriceDesc);
        assert_eq!(r.limit, 5);
    }

    #[test]
    fn defaults_differ_between_search_and_listing() {
        let s = SearchRequest::parse(raw(&[("q", "x")]), true).expect("search");
        assert_eq!((s.sort, s.limit), (Sort::Relevance, 20));
        let l = SearchRequest::parse(raw(&[]), false).expect("listing");
        assert_eq!(l.sort, Sort::Newest);
        assert!(SearchRequest::parse(raw(&[("sort", "relevance")]), false).is_err());
        assert!(SearchRequest::parse(raw(&[]), true).is_err(), "q required");
    }

    #[test]
    fn every_bad_parameter_is_reported_at_once() {
        let e = SearchRequest::parse(
            raw(&[
                ("q", "  "),
                ("category", "nope"),
                ("min_price", "-1"),
                ("max_price", "abc"),
                ("in_stock", "maybe"),
                ("rating", "6"),
                ("sort", "cheapest"),
                ("limit", "0"),
            ]),
            true,
        )
        .expect_err("invalid");
        assert_eq!(e.code, Code::ValidationFailed);
        let fields: Vec<&str> = e.errors.iter().map(|f| f.field.as_str()).collect();
        for f in [
            "q",
            "category",
            "min_price",
            "max_price",
            "in_stock",
            "rating",
            "sort",
            "limit",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        let e = SearchRequest::parse(raw(&[("min_price", "500"), ("max_price", "100")]), false)
            .expect_err("inverted range");
        assert_eq!(e.errors[0].field, "max_price");
        let e = SearchRequest::parse(raw(&[("cursor", "%%%")]), false).expect_err("cursor");
        assert_eq!(e.code, Code::InvalidCursor);
        assert!(
            RawParams::from_pairs(vec![("q".into(), "a".into()), ("q".into(), "b".into())])
                .is_err()
        );
    }

    #[test]
    fn suggest_parameters_are_validated() {
        assert_eq!(
            parse_suggest(Some(" lap "), None).ok(),
            Some(("lap".to_owned(), 10))
        );
        assert!(parse_suggest(None, None).is_err());
        assert!(parse_suggest(Some("x"), Some("11")).is_err());
        assert!(parse_suggest(Some(&"x".repeat(101)), None).is_err());
    }

    #[test]
    fn edits1_contains_the_classic_typos() {
        let e = edits1("lpatop");
        assert!(e.contains(&"laptop".to_owned()), "transposition");
        assert!(edits1("laptp").contains(&"laptop".to_owned()), "insertion");
        assert!(edits1("laptoop").contains(&"laptop".to_owned()), "deletion");
        assert!(
            edits1("laptip").contains(&"laptop".to_owned()),
            "substitution"
        );
        assert!(!e.contains(&"lpatop".to_owned()));
    }

    #[test]
    fn tiebreaks_are_stable() {
        assert_eq!(tiebreak_of("prd_a"), tiebreak_of("prd_a"));
        assert_ne!(tiebreak_of("prd_a"), tiebreak_of("prd_b"));
    }
}
