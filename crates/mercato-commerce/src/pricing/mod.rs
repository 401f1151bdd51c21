//! Pricing for checkout: subtotal from locked prices, shipping (flat rate per method and
//! country, from config), tax (basis points per country or country-region, from config,
//! computed per line, rounded half-even), totals in one currency. Checkout does not apply
//! coupons yet: any `coupon_code` answers 422 `coupon_invalid` (the promotions module has the
//! engine and the cart preview; docs/promotions.md "Not done yet").
//!
//! Rates are configuration, parsed once at start-up:
//! `shipping_rates = "standard:*=999,standard:US=499,express:*=2499"` (minor units of the
//! shop currency; `*` = any country) and `tax_rates = "US-CA=725,US=0,FR=2000,*=0"` (basis
//! points; the most specific match wins: country-region, then country, then `*`).
//! Tax applies to goods, not to shipping (a simplification noted in docs/api.md).

use mercato_kernel::money::MoneyError;
use mercato_kernel::{Currency, Money};
use serde::Serialize;
use std::collections::HashMap;

/// Shipping and tax tables.
#[derive(Clone, Debug, Default)]
pub struct PriceBook {
    /// (method, country or "*") → amount in minor units.
    shipping: HashMap<(String, String), i64>,
    /// "CC-REGION", "CC" or "*" → basis points.
    tax: HashMap<String, i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PricingError {
    #[error("invalid rate table: {0}")]
    BadTable(String),
    #[error("no shipping method {method} to {country}")]
    NoShipping { method: String, country: String },
    #[error("money: {0}")]
    Money(#[from] MoneyError),
}

fn entries(spec: &str) -> impl Iterator<Item = &str> {
    spec.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl PriceBook {
    pub fn parse(shipping: &str, tax: &str) -> Result<PriceBook, PricingError> {
        let mut book = PriceBook::default();
        for e in entries(shipping) {
            let (key, amount) = e
                .split_once('=')
                .ok_or_else(|| PricingError::BadTable(format!("shipping entry {e:?}")))?;
            let (method, country) = key.split_once(':').ok_or_else(|| {
                PricingError::BadTable(format!("shipping entry {e:?} needs method:country"))
            })?;
            let amount: i64 = amount
                .trim()
                .parse()
                .ok()
                .filter(|a: &i64| *a >= 0)
                .ok_or_else(|| PricingError::BadTable(format!("shipping amount in {e:?}")))?;
            book.shipping.insert(
                (
                    method.trim().to_ascii_lowercase(),
                    country.trim().to_ascii_uppercase(),
                ),
                amount,
            );
        }
        for e in entries(tax) {
            let (key, bps) = e
                .split_once('=')
                .ok_or_else(|| PricingError::BadTable(format!("tax entry {e:?}")))?;
            let bps: i64 = bps
                .trim()
                .parse()
                .ok()
                .filter(|b: &i64| (0..=10_000).contains(b))
                .ok_or_else(|| {
                    PricingError::BadTable(format!("tax basis points in {e:?} (0..10000)"))
                })?;
            book.tax.insert(key.trim().to_ascii_uppercase(), bps);
        }
        Ok(book)
    }

    /// Methods that can ship to `country`.
    pub fn methods_for(&self, country: &str) -> Vec<String> {
        let c = country.to_ascii_uppercase();
        let mut m: Vec<String> = self
            .shipping
            .keys()
            .filter(|(_, k)| *k == c || k == "*")
            .map(|(m, _)| m.clone())
            .collect();
        m.sort();
        m.dedup();
        m
    }

    pub fn shipping(
        &self,
        method: &str,
        country: &str,
        currency: Currency,
    ) -> Result<Money, PricingError> {
        let method = method.to_ascii_lowercase();
        let country = country.to_ascii_uppercase();
        self.shipping
            .get(&(method.clone(), country.clone()))
            .or_else(|| self.shipping.get(&(method.clone(), "*".to_owned())))
            .map(|a| Money::new(*a, currency))
            .ok_or(PricingError::NoShipping { method, country })
    }

    /// Basis points for a destination: country-region, then country, then `*`, else 0.
    pub fn tax_bps(&self, country: &str, region: Option<&str>) -> i64 {
        let c = country.to_ascii_uppercase();
        region
            .and_then(|r| self.tax.get(&format!("{c}-{}", r.to_ascii_uppercase())))
            .or_else(|| self.tax.get(&c))
            .or_else(|| self.tax.get("*"))
            .copied()
            .unwrap_or(0)
    }
}

/// One priced line.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PricedLine {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: Money,
    pub line_total: Money,
    pub tax: Money,
    /// What promotions take off this line (tax is on `line_total - discount`).
    pub discount: Money,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Quote {
    pub lines: Vec<PricedLine>,
    pub subtotal: Money,
    pub discount: Money,
    pub shipping: Money,
    pub tax: Money,
    pub total: Money,
}

/// Prices `lines` (sku, quantity, locked unit price) for a destination and method.
pub fn quote(
    book: &PriceBook,
    currency: Currency,
    lines: &[(String, i64, Money)],
    country: &str,
    region: Option<&str>,
    method: &str,
) -> Result<Quote, PricingError> {
    let shipping = book.shipping(method, country, currency)?;
    quote_discounted(
        book,
        currency,
        lines,
        &vec![0; lines.len()],
        Money::zero(currency),
        shipping,
        country,
        region,
    )
}

/// Prices `lines` with each line's discount (`line_discounts[i]`, minor units, already
/// capped at the line by the promotions engine) and a discount off `shipping`. Tax is
/// computed on what the customer pays for each line (its total less its discount), never on
/// the discount. `discount` is the goods discount plus the shipping discount, so
/// `total = subtotal + shipping + tax - discount`.
#[allow(clippy::too_many_arguments)]
pub fn quote_discounted(
    book: &PriceBook,
    currency: Currency,
    lines: &[(String, i64, Money)],
    line_discounts: &[i64],
    shipping_discount: Money,
    shipping: Money,
    country: &str,
    region: Option<&str>,
) -> Result<Quote, PricingError> {
    let bps = book.tax_bps(country, region);
    let mut subtotal = Money::zero(currency);
    let mut tax = Money::zero(currency);
    let mut discount = Money::zero(currency);
    let mut priced = Vec::with_capacity(lines.len());
    for (i, (sku, quantity, unit)) in lines.iter().enumerate() {
        let line_total = unit.checked_mul(*quantity)?;
        let off = Money::new(
            line_discounts
                .get(i)
                .copied()
                .unwrap_or(0)
                .clamp(0, line_total.amount.max(0)),
            currency,
        );
        let line_tax = line_total.checked_sub(off)?.percent_bps(bps)?;
        subtotal = subtotal.checked_add(line_total)?;
        tax = tax.checked_add(line_tax)?;
        discount = discount.checked_add(off)?;
        priced.push(PricedLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_price: *unit,
            line_total,
            tax: line_tax,
            discount: off,
        });
    }
    let shipping_off = Money::new(
        shipping_discount.amount.clamp(0, shipping.amount.max(0)),
        currency,
    );
    let discount = discount.checked_add(shipping_off)?;
    let total = subtotal
        .checked_add(shipping)?
        .checked_add(tax)?
        .checked_sub(discount)?;
    Ok(Quote {
        lines: priced,
        subtotal,
        discount,
        shipping,
        tax,
        total,
    })
}

pub const DEFAULT_SHIPPING_RATES: &str =
    "standard:*=999,standard:US=499,express:*=2499,express:US=1499";
pub const DEFAULT_TAX_RATES: &str =
    "US-CA=725,US-NY=400,US-TX=625,US=0,CA=500,GB=2000,FR=2000,DE=1900,ES=2100,IT=2200,NL=2100,*=0";

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(a: i64) -> Money {
        Money::new(a, Currency::USD)
    }

    fn book() -> PriceBook {
        PriceBook::parse(DEFAULT_SHIPPING_RATES, DEFAULT_TAX_RATES).expect("defaults parse")
    }

    #[test]
    fn the_most_specific_tax_rate_wins() {
        let b = book();
        assert_eq!(b.tax_bps("us", Some("ca")), 725);
        assert_eq!(b.tax_bps("US", Some("WA")), 0);
        assert_eq!(b.tax_bps("FR", None), 2000);
        assert_eq!(b.tax_bps("JP", None), 0);
    }

    #[test]
    fn shipping_falls_back_to_any_country() {
        let b = book();
        assert_eq!(b.shipping("standard", "US", Currency::USD), Ok(usd(499)));
        assert_eq!(b.shipping("STANDARD", "fr", Currency::USD), Ok(usd(999)));
        assert!(b.shipping("drone", "US", Currency::USD).is_err());
        assert_eq!(
            b.methods_for("FR"),
            vec!["express".to_string(), "standard".to_string()]
        );
    }

    #[test]
    fn tax_is_per_line_and_half_even() {
        // 3 × 19.99 at 7.25% = 59.97 × 0.0725 = 4.347825 → 435; second line 0.50 × 1 → 0.03625 → 4
        let q = quote(
            &book(),
            Currency::USD,
            &[("A".into(), 3, usd(1999)), ("B".into(), 1, usd(50))],
            "US",
            Some("CA"),
            "standard",
        )
        .expect("quote");
        assert_eq!(q.subtotal, usd(6047));
        assert_eq!(q.lines[0].tax, usd(435));
        assert_eq!(q.lines[1].tax, usd(4));
        assert_eq!(q.tax, usd(439));
        assert_eq!(q.shipping, usd(499));
        assert_eq!(q.total, usd(6047 + 499 + 439));
    }

    #[test]
    fn malformed_tables_are_rejected() {
        assert!(PriceBook::parse("standard=5", "").is_err());
        assert!(PriceBook::parse("standard:US=-5", "").is_err());
        assert!(PriceBook::parse("", "US=20000").is_err());
        assert!(PriceBook::parse("", "US").is_err());
    }

    #[test]
    fn totals_never_mix_currencies() {
        let eur = Money::new(100, Currency::parse("EUR").expect("eur"));
        assert!(
            quote(
                &book(),
                Currency::USD,
                &[("A".into(), 1, eur)],
                "US",
                None,
                "standard"
            )
            .is_err()
        );
    }
}
