//! Flash-sale rules without IO: the admin input and its checks, the public status, the
//! waiting room's admission arithmetic and the purchase-token format.

use hmac::{Hmac, Mac};
use mercato_kernel::error::{ApiError, Validator};
use mercato_kernel::{Currency, Money, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

mercato_kernel::typed_id!(
    /// A flash sale.
    FlashSaleId, "fls");
mercato_kernel::typed_id!(
    /// A waiting-room ticket.
    TicketId, "tkt");
mercato_kernel::typed_id!(
    /// A purchase token's id (the token a customer holds is this id plus a signature).
    TokenId, "pt");

/// Bounds of the admin input.
pub const MAX_UNITS: i64 = 1_000_000;
pub const MAX_ADMIT_PER_MINUTE: i64 = 6_000_000;
pub const MIN_TOKEN_TTL_SECS: i64 = 10;
pub const MAX_TOKEN_TTL_SECS: i64 = 86_400;
/// The longest sale: 30 days.
pub const MAX_SALE_SECS: i64 = 30 * 86_400;

fn default_per_customer_limit() -> i64 {
    1
}
fn default_admit_per_minute() -> i64 {
    1000
}
fn default_token_ttl_secs() -> i64 {
    300
}

/// Money in a request: integer minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    /// Integer minor units, 1..=10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(value_type = String, pattern = "^[A-Za-z]{3}$")]
    pub currency: Currency,
}

/// `POST /admin/flash-sales`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlashSaleInput {
    pub sku: String,
    /// The sale price (in the SKU's currency).
    pub price: PriceInput,
    /// Units set aside from the SKU's stock for the sale.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub units: i64,
    pub starts_at: Timestamp,
    /// After `starts_at`, in the future, at most 30 days after `starts_at`.
    pub ends_at: Timestamp,
    /// Units one purchase token buys (one token per customer).
    #[serde(default = "default_per_customer_limit")]
    #[schema(minimum = 1, maximum = 10)]
    pub per_customer_limit: i64,
    /// Tickets admitted from the waiting room per minute.
    #[serde(default = "default_admit_per_minute")]
    #[schema(minimum = 1, maximum = 6_000_000)]
    pub admit_per_minute: i64,
    /// How long an unused purchase token lives.
    #[serde(default = "default_token_ttl_secs")]
    #[schema(minimum = 10, maximum = 86_400)]
    pub token_ttl_secs: i64,
}

/// A validated sale, before the SKU is checked against the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFlashSale {
    pub sku: String,
    pub price: Money,
    pub units: i64,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub per_customer_limit: i64,
    pub admit_per_minute: i64,
    pub token_ttl_secs: i64,
}

impl FlashSaleInput {
    /// Every single-field and cross-field rule (422 with the fields). `line_max` bounds the
    /// per-customer limit (a token's units go in one cart line).
    pub fn validate(&self, now: Timestamp, line_max: i64) -> Result<NewFlashSale, ApiError> {
        let mut v = Validator::new();
        let sku = crate::catalog::model::Sku::parse(&self.sku);
        v.check(sku.is_some(), "sku", "not a SKU");
        v.check(
            (1..=1_000_000_000_000).contains(&self.price.amount),
            "price.amount",
            "the price is a positive amount in minor units",
        );
        v.check(
            (1..=MAX_UNITS).contains(&self.units),
            "units",
            &format!("units must be 1 to {MAX_UNITS}"),
        );
        v.check(
            (1..=line_max).contains(&self.per_customer_limit),
            "per_customer_limit",
            &format!("per_customer_limit must be 1 to {line_max}"),
        );
        v.check(
            (1..=MAX_ADMIT_PER_MINUTE).contains(&self.admit_per_minute),
            "admit_per_minute",
            &format!("admit_per_minute must be 1 to {MAX_ADMIT_PER_MINUTE}"),
        );
        v.check(
            (MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&self.token_ttl_secs),
            "token_ttl_secs",
            &format!("token_ttl_secs must be {MIN_TOKEN_TTL_SECS} to {MAX_TOKEN_TTL_SECS}"),
        );
        if self.ends_at <= self.starts_at {
            v.add("ends_at", "ends_at must be after starts_at");
        } else if self.ends_at <= now {
            v.add("ends_at", "ends_at must be in the future");
        } else if self.ends_at.as_micros() - self.starts_at.as_micros() > MAX_SALE_SECS * 1_000_000
        {
            v.add("ends_at", "a sale lasts at most 30 days");
        }
        v.finish()?;
        Ok(NewFlashSale {
            sku: sku.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            price: Money::new(self.price.amount, self.price.currency),
            units: self.units,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            per_customer_limit: self.per_customer_limit,
            admit_per_minute: self.admit_per_minute,
            token_ttl_secs: self.token_ttl_secs,
        })
    }
}

/// What the public sees of a sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Live,
    SoldOut,
    Ended,
}

impl SaleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleStatus::Scheduled => "scheduled",
            SaleStatus::Live => "live",
            SaleStatus::SoldOut => "sold_out",
            SaleStatus::Ended => "ended",
        }
    }

    /// From the clock and the counters, so every node answers the same without waiting for
    /// the lifecycle job: `sold_out` while no unit is left unclaimed (units of expired tokens
    /// come back, so a sold-out sale can be live again until every unit is paid for).
    pub fn of(
        now: Timestamp,
        starts_at: Timestamp,
        ends_at: Timestamp,
        ended: bool,
        remaining: i64,
    ) -> SaleStatus {
        if ended || now >= ends_at {
            SaleStatus::Ended
        } else if now < starts_at {
            SaleStatus::Scheduled
        } else if remaining <= 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Live
        }
    }
}

/// A sale as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleRow {
    pub id: String,
    pub sku: String,
    pub price: Money,
    pub units: i64,
    pub claimed: i64,
    pub sold: i64,
    pub tokens_issued: i64,
    pub tokens_redeemed: i64,
    pub tokens_expired: i64,
    pub per_customer_limit: i64,
    pub admit_per_minute: i64,
    pub token_ttl_secs: i64,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// `scheduled`, `live` or `ended` (what the lifecycle job has done).
    pub stage: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl SaleRow {
    pub fn remaining(&self) -> i64 {
        (self.units - self.claimed).max(0)
    }
    pub fn ended(&self) -> bool {
        self.stage == "ended"
    }
    pub fn status(&self, now: Timestamp) -> SaleStatus {
        SaleStatus::of(
            now,
            self.starts_at,
            self.ends_at,
            self.ended(),
            self.remaining(),
        )
    }
    /// Whether the SKU is sold only through this sale at `now`.
    pub fn gates(&self, now: Timestamp) -> bool {
        !self.ended() && now >= self.starts_at && now < self.ends_at
    }
}

/// `GET /flash-sales/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlashSale {
    pub id: String,
    pub sku: String,
    pub price: Money,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub status: SaleStatus,
    /// Units not yet claimed by a purchase token.
    pub remaining: i64,
    pub per_customer_limit: i64,
}

/// The waiting room's counters (admin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomCounts {
    /// Tickets still waiting.
    pub queued: i64,
    /// Tickets admitted so far.
    pub admitted: i64,
}

/// `GET /admin/flash-sales/{id}`: the sale with its counters.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlashSaleAdmin {
    #[serde(flatten)]
    pub sale: FlashSale,
    pub units: i64,
    pub admit_per_minute: i64,
    pub token_ttl_secs: i64,
    pub queued: i64,
    pub admitted: i64,
    pub tokens_issued: i64,
    pub tokens_redeemed: i64,
    pub tokens_expired: i64,
    /// Units in tokens issued and not expired, or held by open checkouts.
    pub tokens_outstanding_units: i64,
    pub sold: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// `POST /flash-sales/{id}/queue`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Joined {
    pub ticket: String,
    /// 1-based; before the start it is provisional (early joiners are shuffled at the start).
    pub position: i64,
    pub estimated_wait_secs: i64,
}

/// A ticket's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Waiting,
    Admitted,
    SoldOut,
    Expired,
}

/// `GET /flash-sales/{id}/queue/{ticket}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketView {
    pub status: TicketStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_wait_secs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purchase_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<Timestamp>,
    /// Units the token buys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_units: Option<i64>,
}

/// Admission: tickets flow out of the room at `admit_per_minute` from the start. `credit` is
/// how many tickets have been admitted so far (fractional). It runs ahead of the queue by at
/// most one second of admissions (at least one ticket), so a newcomer to an idle room is let
/// in at once, but a quiet spell never banks admissions for a later burst.
pub fn admit(credit: f64, elapsed_us: i64, admit_per_minute: i64, queued_total: usize) -> f64 {
    let gained = (elapsed_us.max(0) as f64) * (admit_per_minute as f64) / 60_000_000.0;
    let burst = ((admit_per_minute as f64) / 60.0).max(1.0);
    (credit + gained).min(queued_total as f64 + burst)
}

/// Seconds until the ticket at 0-based `index` is admitted, with `admitted` admitted so far.
pub fn wait_secs(index: usize, admitted: usize, admit_per_minute: i64) -> i64 {
    let ahead = index.saturating_sub(admitted) as i64 + 1;
    (ahead * 60 + admit_per_minute - 1) / admit_per_minute.max(1)
}

/// A purchase token as the customer holds it: `<token id>.<signature>`; the signature (HMAC-
/// SHA256 over the id, sale, customer and expiry) lets any node refuse a forged or altered
/// token without a database read. Single use and expiry are decided by the database.
pub fn sign_token(
    key: &[u8],
    token_id: &str,
    sale_id: &str,
    customer: &str,
    expires_at: Timestamp,
) -> String {
    format!(
        "{token_id}.{}",
        signature(key, token_id, sale_id, customer, expires_at)
    )
}

fn signature(
    key: &[u8],
    token_id: &str,
    sale_id: &str,
    customer: &str,
    expires_at: Timestamp,
) -> String {
    use base64::Engine as _;
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{token_id}|{sale_id}|{customer}|{}", expires_at.as_micros()).as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The token id of a well-formed token (`None` for anything else).
pub fn token_id_of(token: &str) -> Option<&str> {
    let (id, sig) = token.split_once('.')?;
    (mercato_kernel::id::is_valid(TokenId::PREFIX, id) && !sig.is_empty() && sig.len() <= 64)
        .then_some(id)
}

/// Whether `token` carries a valid signature for these facts (constant-time comparison).
pub fn verify_token(
    key: &[u8],
    token: &str,
    sale_id: &str,
    customer: &str,
    expires_at: Timestamp,
) -> bool {
    let Some((id, sig)) = token.split_once('.') else {
        return false;
    };
    let want = signature(key, id, sale_id, customer, expires_at);
    want.len() == sig.len()
        && want
            .bytes()
            .zip(sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    fn input() -> FlashSaleInput {
        FlashSaleInput {
            sku: "TEE-1".into(),
            price: PriceInput {
                amount: 500,
                currency: Currency::USD,
            },
            units: 50,
            starts_at: ts(1_000),
            ends_at: ts(2_000),
            per_customer_limit: 1,
            admit_per_minute: 1000,
            token_ttl_secs: 300,
        }
    }

    fn fields(e: ApiError) -> Vec<String> {
        e.errors.iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_valid_sale_passes_and_the_sku_is_normalised() {
        let s = input().validate(ts(500), 10).expect("valid");
        assert_eq!(s.units, 50);
        assert_eq!(s.price, Money::new(500, Currency::USD));
    }

    #[test]
    fn bad_input_names_every_field() {
        let mut i = input();
        i.units = 0;
        i.price.amount = -1;
        i.per_customer_limit = 11;
        i.admit_per_minute = 0;
        i.token_ttl_secs = 1;
        i.ends_at = ts(900);
        let f = fields(i.validate(ts(500), 10).expect_err("invalid"));
        for want in [
            "units",
            "price.amount",
            "per_customer_limit",
            "admit_per_minute",
            "token_ttl_secs",
            "ends_at",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} missing in {f:?}");
        }
    }

    #[test]
    fn a_sale_that_already_ended_or_lasts_too_long_is_refused() {
        let f = fields(input().validate(ts(3_000), 10).expect_err("past"));
        assert_eq!(f, vec!["ends_at".to_owned()]);
        let mut i = input();
        i.ends_at = ts(1_000 + MAX_SALE_SECS + 1);
        assert!(i.validate(ts(500), 10).is_err());
    }

    #[test]
    fn status_follows_the_clock_and_the_counters() {
        let (s, e) = (ts(10), ts(20));
        assert_eq!(SaleStatus::of(ts(5), s, e, false, 3), SaleStatus::Scheduled);
        assert_eq!(SaleStatus::of(ts(10), s, e, false, 3), SaleStatus::Live);
        assert_eq!(SaleStatus::of(ts(15), s, e, false, 0), SaleStatus::SoldOut);
        assert_eq!(SaleStatus::of(ts(20), s, e, false, 3), SaleStatus::Ended);
        assert_eq!(SaleStatus::of(ts(12), s, e, true, 3), SaleStatus::Ended);
    }

    #[test]
    fn admission_flows_at_the_rate_and_never_banks_credit() {
        // 60 per minute = one per second.
        assert_eq!(admit(0.0, 2_500_000, 60, 100), 2.5);
        // Never more than the queue holds plus one second's burst (at least one ticket).
        assert_eq!(admit(0.0, 60_000_000, 60, 10), 11.0);
        assert_eq!(admit(0.0, 60_000_000, 6000, 10), 110.0);
        // After a quiet spell, the next joiner goes straight in; the one after waits its turn.
        let c = admit(10.0, 600_000_000, 60, 10);
        assert_eq!(c, 11.0);
        assert_eq!(admit(c, 500_000, 60, 12), 11.5);
        assert_eq!(admit(0.0, -5, 60, 10), 0.0);
    }

    #[test]
    fn waits_count_the_tickets_ahead() {
        assert_eq!(wait_secs(0, 0, 60), 1);
        assert_eq!(wait_secs(59, 0, 60), 60);
        assert_eq!(wait_secs(999, 0, 1000), 60);
        assert_eq!(wait_secs(5, 10, 60), 1);
    }

    #[test]
    fn tokens_verify_only_for_their_own_facts() {
        let key = b"k".repeat(32);
        let id = TokenId::new().into_string();
        let t = sign_token(&key, &id, "fls_1", "usr_1", ts(100));
        assert_eq!(token_id_of(&t), Some(id.as_str()));
        assert!(verify_token(&key, &t, "fls_1", "usr_1", ts(100)));
        assert!(!verify_token(&key, &t, "fls_1", "usr_2", ts(100)));
        assert!(!verify_token(&key, &t, "fls_2", "usr_1", ts(100)));
        assert!(!verify_token(&key, &t, "fls_1", "usr_1", ts(101)));
        assert!(!verify_token(b"other-key", &t, "fls_1", "usr_1", ts(100)));
        assert_eq!(token_id_of("garbage"), None);
        assert_eq!(token_id_of("pt_x."), None);
    }
}
