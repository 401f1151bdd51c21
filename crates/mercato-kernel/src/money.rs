//! Money in integer minor units. Never floats; arithmetic across currencies is an error;
//! percentages are basis points and rounding is half-even, here and nowhere else.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    /// Parses `"usd"`/`"USD"`; anything but three ASCII letters is rejected.
    pub fn parse(s: &str) -> Option<Currency> {
        let b = s.as_bytes();
        if b.len() != 3 || !b.iter().all(|c| c.is_ascii_alphabetic()) {
            return None;
        }
        Some(Currency([
            b[0].to_ascii_uppercase(),
            b[1].to_ascii_uppercase(),
            b[2].to_ascii_uppercase(),
        ]))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("currency must be a 3-letter ISO 4217 code"))
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("ISO 4217 currency code"))
            .examples([serde_json::json!("USD")])
            .into()
    }
}
impl utoipa::ToSchema for Currency {}

/// An amount of money: integer minor units in one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    /// Integer minor units (cents for USD).
    pub amount: i64,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Money {
        Money { amount, currency }
    }

    pub fn zero(currency: Currency) -> Money {
        Money {
            amount: 0,
            currency,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.amount == 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { amount, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { amount, ..self })
    }

    pub fn checked_mul(self, quantity: i64) -> Result<Money, MoneyError> {
        let amount = self
            .amount
            .checked_mul(quantity)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { amount, ..self })
    }

    /// `self × bps / 10 000`, rounded half-even (tax, discounts).
    pub fn percent_bps(self, bps: i64) -> Result<Money, MoneyError> {
        let amount = div_round_half_even(i128::from(self.amount) * i128::from(bps), 10_000)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { amount, ..self })
    }

    fn same_currency(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

/// Integer division rounding to nearest, ties to even ("banker's rounding").
/// `None` when `den` is zero or the result does not fit an i64.
pub fn div_round_half_even(num: i128, den: i128) -> Option<i64> {
    if den == 0 {
        return None;
    }
    let (num, den) = if den < 0 { (-num, -den) } else { (num, den) };
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    let twice = r * 2;
    let rounded = if twice > den || (twice == den && q % 2 != 0) {
        q + 1
    } else {
        q
    };
    i64::try_from(rounded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_even_rounding() {
        assert_eq!(div_round_half_even(25, 10), Some(2));
        assert_eq!(div_round_half_even(35, 10), Some(4));
        assert_eq!(div_round_half_even(26, 10), Some(3));
        assert_eq!(div_round_half_even(24, 10), Some(2));
        assert_eq!(div_round_half_even(-25, 10), Some(-2));
        assert_eq!(div_round_half_even(-35, 10), Some(-4));
        assert_eq!(div_round_half_even(-26, 10), Some(-3));
        assert_eq!(div_round_half_even(1, 0), None);
    }

    #[test]
    fn tax_in_basis_points() {
        let m = Money::new(1999, Currency::USD);
        // 19.99 × 8.25% = 1.649175 → 165
        assert_eq!(m.percent_bps(825).map(|m| m.amount), Ok(165));
        // 0.50 × 1% = 0.005 → ties to even → 0
        assert_eq!(
            Money::new(50, Currency::USD)
                .percent_bps(100)
                .map(|m| m.amount),
            Ok(0)
        );
        assert_eq!(
            Money::new(150, Currency::USD)
                .percent_bps(100)
                .map(|m| m.amount),
            Ok(2)
        );
    }

    #[test]
    fn currencies_do_not_mix() {
        let usd = Money::new(1, Currency::USD);
        let eur = Money::new(1, Currency::parse("eur").expect("eur"));
        assert!(matches!(
            usd.checked_add(eur),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert_eq!(usd.checked_add(usd).map(|m| m.amount), Ok(2));
    }

    #[test]
    fn overflow_is_an_error() {
        let m = Money::new(i64::MAX, Currency::USD);
        assert_eq!(
            m.checked_add(Money::new(1, Currency::USD)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(m.checked_mul(2), Err(MoneyError::Overflow));
    }

    #[test]
    fn currency_parsing() {
        assert_eq!(Currency::parse("usd"), Some(Currency::USD));
        assert_eq!(Currency::parse("US"), None);
        assert_eq!(Currency::parse("U$D"), None);
        assert_eq!(Currency::parse("ÜSD"), None);
    }

    #[test]
    fn money_serializes_as_amount_and_currency() {
        let m = Money::new(1250, Currency::USD);
        let v = serde_json::to_value(m).expect("json");
        assert_eq!(v, serde_json::json!({"amount": 1250, "currency": "USD"}));
    }
}
