//! Pure fraud rules, features and the risk model: no IO. The service feeds them counters and
//! cached features; everything here is deterministic and unit tested below.

use mercato_kernel::Timestamp;
use mercato_kernel::error::{ApiError, Validator};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

mercato_kernel::typed_id!(
    /// One stored fraud decision (one per payment attempt scored).
    DecisionId, "frd");
mercato_kernel::typed_id!(
    /// An order held for a fraud review.
    ReviewId, "frv");
mercato_kernel::typed_id!(
    /// A blocklist entry.
    BlockEntryId, "fbl");

/// What a rule does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the payment (403 `fraud_blocked`, nothing charged).
    Block,
    /// Charge, confirm the order and hold it for review.
    Flag,
}

/// The rules, in the order they are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleName {
    /// An email, card fingerprint, IP or device id on the admin blocklist.
    Blocklist,
    /// The same card fingerprint too often in a sliding window.
    Velocity,
    /// The same customer trying to pay too often in a sliding window (`fraud_max_attempts_per_hour`).
    PaymentAttempts,
    /// The order total above limits (`fraud_review_amount`, `fraud_block_amount`).
    OrderAmount,
    /// A large order from a young account.
    HighValueNewAccount,
    /// The card was issued in another country than the one the order ships to.
    CardCountryMismatch,
    /// Two orders from client countries too far apart too quickly.
    GeoVelocity,
}

impl RuleName {
    pub const ALL: [RuleName; 7] = [
        RuleName::Blocklist,
        RuleName::Velocity,
        RuleName::PaymentAttempts,
        RuleName::OrderAmount,
        RuleName::HighValueNewAccount,
        RuleName::CardCountryMismatch,
        RuleName::GeoVelocity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleName::Blocklist => "blocklist",
            RuleName::Velocity => "velocity",
            RuleName::PaymentAttempts => "payment_attempts",
            RuleName::OrderAmount => "order_amount",
            RuleName::HighValueNewAccount => "high_value_new_account",
            RuleName::CardCountryMismatch => "card_country_mismatch",
            RuleName::GeoVelocity => "geo_velocity",
        }
    }

    pub fn parse(s: &str) -> Option<RuleName> {
        RuleName::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn description(self) -> &'static str {
        match self {
            RuleName::Blocklist => "email, card fingerprint, IP or device id on the blocklist",
            RuleName::Velocity => {
                "same card fingerprint more than flag_above (flag) or block_above (action) times in window_secs"
            }
            RuleName::PaymentAttempts => {
                "same customer paying more than block_above times in window_secs"
            }
            RuleName::OrderAmount => {
                "order total (minor units) above flag_above (flag) or block_above (action)"
            }
            RuleName::HighValueNewAccount => {
                "order above min_amount (minor units) from an account younger than max_account_age_days"
            }
            RuleName::CardCountryMismatch => {
                "card issuing country differs from the shipping country"
            }
            RuleName::GeoVelocity => {
                "client country of this and the previous order (within window_secs) too far apart for max_speed_kmh"
            }
        }
    }

    /// The threshold keys this rule takes, with their allowed ranges.
    fn threshold_ranges(self) -> &'static [(&'static str, i64, i64)] {
        match self {
            RuleName::Velocity => &[
                ("window_secs", 1, 86_400),
                ("flag_above", 0, 1_000_000),
                ("block_above", 0, 1_000_000),
            ],
            RuleName::PaymentAttempts => {
                &[("window_secs", 1, 86_400), ("block_above", 0, i64::MAX)]
            }
            RuleName::OrderAmount => &[("flag_above", 0, i64::MAX), ("block_above", 0, i64::MAX)],
            RuleName::HighValueNewAccount => &[
                ("min_amount", 0, i64::MAX),
                ("max_account_age_days", 0, 36_500),
            ],
            RuleName::GeoVelocity => &[
                ("window_secs", 1, 30 * 86_400),
                ("max_speed_kmh", 1, 100_000),
            ],
            RuleName::Blocklist | RuleName::CardCountryMismatch => &[],
        }
    }
}

/// The settings that seed rule defaults.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub review_amount: i64,
    pub block_amount: i64,
    pub max_attempts_per_hour: i64,
}

/// One rule's configuration: data, editable by admins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rule {
    pub name: RuleName,
    pub enabled: bool,
    /// What the rule does when it fires (two-level rules flag at `flag_above` whatever this is).
    pub action: Action,
    /// Integer thresholds; the keys depend on the rule (see `description`).
    #[schema(value_type = Object)]
    pub thresholds: BTreeMap<String, i64>,
    #[serde(default)]
    pub description: String,
}

impl Rule {
    /// The built-in configuration of `name` (what runs until an admin changes it).
    pub fn default_for(name: RuleName, d: Defaults) -> Rule {
        let t = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let (action, thresholds) = match name {
            RuleName::Blocklist => (Action::Block, t(&[])),
            RuleName::Velocity => (
                Action::Block,
                t(&[("window_secs", 600), ("flag_above", 3), ("block_above", 5)]),
            ),
            RuleName::PaymentAttempts => (
                Action::Block,
                t(&[
                    ("window_secs", 3600),
                    ("block_above", d.max_attempts_per_hour),
                ]),
            ),
            RuleName::OrderAmount => (
                Action::Block,
                t(&[
                    ("flag_above", d.review_amount),
                    ("block_above", d.block_amount),
                ]),
            ),
            RuleName::HighValueNewAccount => (
                Action::Flag,
                t(&[("min_amount", 100_000), ("max_account_age_days", 7)]),
            ),
            RuleName::CardCountryMismatch => (Action::Flag, t(&[])),
            RuleName::GeoVelocity => (
                Action::Flag,
                t(&[("window_secs", 86_400), ("max_speed_kmh", 900)]),
            ),
        };
        Rule {
            name,
            enabled: true,
            action,
            thresholds,
            description: name.description().to_owned(),
        }
    }

    fn get(&self, key: &str) -> i64 {
        self.thresholds.get(key).copied().unwrap_or(0)
    }
}

/// `PUT /admin/fraud/rules/{name}`: every member optional; missing ones keep their value.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulePatch {
    pub enabled: Option<bool>,
    pub action: Option<Action>,
    /// Threshold keys of this rule only; each replaces the current value.
    #[schema(value_type = Option<Object>)]
    pub thresholds: Option<BTreeMap<String, i64>>,
}

impl RulePatch {
    /// The rule after the patch, or a 422 naming the offending field (changing nothing).
    pub fn apply(self, current: &Rule) -> Result<Rule, ApiError> {
        let mut next = current.clone();
        if let Some(e) = self.enabled {
            next.enabled = e;
        }
        if let Some(a) = self.action {
            next.action = a;
        }
        let ranges = current.name.threshold_ranges();
        let mut v = Validator::new();
        if let Some(t) = self.thresholds {
            for (key, value) in t {
                let field = format!("thresholds.{key}");
                match ranges.iter().find(|(k, _, _)| *k == key) {
                    None => {
                        v.check(false, &field, "unknown threshold for this rule");
                    }
                    Some((_, lo, hi)) => {
                        let message = format!("must be between {lo} and {hi}");
                        v.check((*lo..=*hi).contains(&value), &field, &message);
                        next.thresholds.insert(key, value);
                    }
                }
            }
        }
        if next.thresholds.contains_key("flag_above") && next.thresholds.contains_key("block_above")
        {
            v.check(
                next.get("flag_above") <= next.get("block_above"),
                "thresholds.flag_above",
                "flag_above must not exceed block_above",
            );
        }
        v.finish()?;
        Ok(next)
    }
}

/// What a blocklist entry matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Email,
    CardFingerprint,
    Ip,
    DeviceId,
}

impl BlockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Email => "email",
            BlockKind::CardFingerprint => "card_fingerprint",
            BlockKind::Ip => "ip",
            BlockKind::DeviceId => "device_id",
        }
    }
    pub fn parse(s: &str) -> Option<BlockKind> {
        [
            BlockKind::Email,
            BlockKind::CardFingerprint,
            BlockKind::Ip,
            BlockKind::DeviceId,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The value as stored and compared: emails lower case, IPs in canonical form.
    pub fn normalise(self, raw: &str) -> Option<String> {
        let raw = raw.trim();
        if raw.is_empty() || raw.chars().count() > 254 {
            return None;
        }
        match self {
            BlockKind::Email => {
                crate::identity::model::Email::parse(raw).map(|e| e.as_str().to_owned())
            }
            BlockKind::Ip => raw
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| ip.to_string()),
            BlockKind::CardFingerprint | BlockKind::DeviceId => raw
                .chars()
                .all(|c| c.is_ascii_graphic())
                .then(|| raw.to_owned()),
        }
    }
}

/// A blocklist entry.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BlockEntry {
    pub id: String,
    pub kind: BlockKind,
    pub value: String,
    pub reason: Option<String>,
    pub created_at: Timestamp,
}

/// Facts about one payment about to be charged, gathered by the service without touching the
/// database (counters and caches in memory, the card from the gateway).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Signals {
    pub customer_id: String,
    pub email: Option<String>,
    /// The order total, minor units.
    pub amount: i64,
    pub shipping_country: String,
    /// A hash-free key of the shipping address (for "distinct addresses").
    pub address_key: String,
    pub card_fingerprint: Option<String>,
    pub card_country: Option<String>,
    pub ip: String,
    pub ip_country: Option<String>,
    pub device_id: Option<String>,
    pub account_age_days: f64,
}

/// Counters the service read for this payment (after counting it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Payments with this card fingerprint in the velocity window, this one included.
    pub card_uses: u64,
    /// This customer's payment attempts in the payment_attempts window, this one included.
    pub customer_attempts: u64,
    /// The client country and time of the customer's previous order, when known.
    pub previous_geo: Option<(&'static str, Timestamp)>,
}

/// A rule that fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hit {
    pub rule: RuleName,
    pub action: Action,
    pub reason: String,
}

/// Evaluates the enabled rules in order. `blocked` holds the blocklist kinds the payment
/// matched. Pure.
pub fn evaluate(
    rules: &[Rule],
    s: &Signals,
    counts: &Counts,
    blocked: &[BlockKind],
    now: Timestamp,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut hit = |rule: &Rule, action: Action, reason: String| {
        hits.push(Hit {
            rule: rule.name,
            action,
            reason: format!("{}: {reason}", rule.name.as_str()),
        })
    };
    for r in rules.iter().filter(|r| r.enabled) {
        match r.name {
            RuleName::Blocklist => {
                if !blocked.is_empty() {
                    let kinds: Vec<&str> = blocked.iter().map(|k| k.as_str()).collect();
                    hit(
                        r,
                        r.action,
                        format!("{} on the blocklist", kinds.join(", ")),
                    );
                }
            }
            RuleName::Velocity => {
                let n = counts.card_uses as i64;
                if s.card_fingerprint.is_some() {
                    if n > r.get("block_above") {
                        hit(
                            r,
                            r.action,
                            format!(
                                "card used {n} times in {} s (more than {})",
                                r.get("window_secs"),
                                r.get("block_above")
                            ),
                        );
                    } else if n > r.get("flag_above") {
                        hit(
                            r,
                            Action::Flag,
                            format!(
                                "card used {n} times in {} s (more than {})",
                                r.get("window_secs"),
                                r.get("flag_above")
                            ),
                        );
                    }
                }
            }
            RuleName::PaymentAttempts => {
                let n = counts.customer_attempts as i64;
                if n > r.get("block_above") {
                    hit(
                        r,
                        r.action,
                        format!(
                            "{n} payment attempts in {} s (more than {})",
                            r.get("window_secs"),
                            r.get("block_above")
                        ),
                    );
                }
            }
            RuleName::OrderAmount => {
                if s.amount > r.get("block_above") {
                    hit(
                        r,
                        r.action,
                        format!("order total {} above {}", s.amount, r.get("block_above")),
                    );
                } else if s.amount > r.get("flag_above") {
                    hit(
                        r,
                        Action::Flag,
                        format!("order total {} above {}", s.amount, r.get("flag_above")),
                    );
                }
            }
            RuleName::HighValueNewAccount => {
                let max_age = r.get("max_account_age_days") as f64;
                if s.amount > r.get("min_amount") && s.account_age_days < max_age {
                    hit(
                        r,
                        r.action,
                        format!(
                            "order total {} above {} from an account {:.1} days old",
                            s.amount,
                            r.get("min_amount"),
                            s.account_age_days
                        ),
                    );
                }
            }
            RuleName::CardCountryMismatch => {
                if let Some(cc) = &s.card_country
                    && !cc.eq_ignore_ascii_case(&s.shipping_country)
                {
                    hit(
                        r,
                        r.action,
                        format!("card issued in {cc}, shipping to {}", s.shipping_country),
                    );
                }
            }
            RuleName::GeoVelocity => {
                if let (Some(now_c), Some((prev_c, at))) = (&s.ip_country, counts.previous_geo)
                    && !now_c.eq_ignore_ascii_case(prev_c)
                {
                    let secs = now.since(at).as_secs_f64();
                    if secs <= r.get("window_secs") as f64
                        && let Some(km) = distance_km(prev_c, now_c)
                    {
                        // At least a minute apart, so two orders in the same second are not an
                        // infinite speed.
                        let hours = (secs / 3600.0).max(1.0 / 60.0);
                        let speed = km / hours;
                        if speed > r.get("max_speed_kmh") as f64 {
                            hit(
                                r,
                                r.action,
                                format!(
                                    "{prev_c} then {now_c} ({km:.0} km) within {:.0} min",
                                    secs / 60.0
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    hits
}

/// The decision of one payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Review,
    Block,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Review => "review",
            Verdict::Block => "block",
        }
    }
    pub fn parse(s: &str) -> Option<Verdict> {
        [Verdict::Allow, Verdict::Review, Verdict::Block]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Rules first, then the score: a blocking rule or a score ≥ `block_at` blocks; a flag or a
/// score ≥ `review_at` reviews; else allow. Returns the verdict and its reasons.
pub fn decide(hits: &[Hit], score: f64, block_at: f64, review_at: f64) -> (Verdict, Vec<String>) {
    let mut reasons: Vec<String> = hits.iter().map(|h| h.reason.clone()).collect();
    let verdict = if hits.iter().any(|h| h.action == Action::Block) {
        Verdict::Block
    } else if score >= block_at {
        reasons.push(format!("risk score {score:.2} at or above {block_at:.2}"));
        Verdict::Block
    } else if !hits.is_empty() {
        Verdict::Review
    } else if score >= review_at {
        reasons.push(format!("risk score {score:.2} at or above {review_at:.2}"));
        Verdict::Review
    } else {
        Verdict::Allow
    };
    (verdict, reasons)
}

// ---------------------------------------------------------------------------------------
// Features

/// The model's inputs, in order (API.md "Fraud" lists the customer features; the last two are
/// the payment's own card signals).
pub const FEATURES: [&str; 10] = [
    "order_count_30d",
    "avg_order_value_30d",
    "distinct_devices_30d",
    "distinct_addresses_30d",
    "chargeback_rate_90d",
    "account_age_days",
    "failed_payments_24h",
    "amount_ratio",
    "card_country_mismatch",
    "card_uses_10m",
];

/// Per-customer features as the feature store caches them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerFeatures {
    pub order_count_30d: f64,
    /// Minor units.
    pub avg_order_value_30d: f64,
    pub distinct_devices_30d: f64,
    pub distinct_addresses_30d: f64,
    pub chargeback_rate_90d: f64,
    pub failed_payments_24h: f64,
    /// When the account was registered (unknown: treated as brand new).
    pub registered_at: Option<Timestamp>,
}

/// One past decision, as the feature store reads it from the fraud module's own tables.
#[derive(Clone, Debug)]
pub struct History {
    pub customer_id: String,
    pub amount: i64,
    pub ordered: bool,
    pub payment_failed: bool,
    pub chargeback: bool,
    pub device_id: Option<String>,
    pub address_key: String,
    pub at: Timestamp,
}

/// Recomputes every customer's features from history (pure).
pub fn compute_features(
    history: &[History],
    registered: &HashMap<String, Timestamp>,
    now: Timestamp,
) -> HashMap<String, CustomerFeatures> {
    #[derive(Default)]
    struct Acc {
        orders30: u64,
        value30: i64,
        devices: HashSet<String>,
        addresses: HashSet<String>,
        orders90: u64,
        chargebacks90: u64,
        failed24: u64,
    }
    let day = 86_400.0;
    let mut acc: HashMap<&str, Acc> = HashMap::new();
    for h in history {
        let age = now.since(h.at).as_secs_f64();
        if age > 90.0 * day {
            continue;
        }
        let a = acc.entry(h.customer_id.as_str()).or_default();
        if h.ordered {
            a.orders90 += 1;
            if h.chargeback {
                a.chargebacks90 += 1;
            }
            if age <= 30.0 * day {
                a.orders30 += 1;
                a.value30 = a.value30.saturating_add(h.amount);
                a.addresses.insert(h.address_key.clone());
                if let Some(d) = &h.device_id {
                    a.devices.insert(d.clone());
                }
            }
        }
        if h.payment_failed && age <= day {
            a.failed24 += 1;
        }
    }
    let mut out: HashMap<String, CustomerFeatures> = registered
        .iter()
        .map(|(c, at)| {
            (
                c.clone(),
                CustomerFeatures {
                    registered_at: Some(*at),
                    ..CustomerFeatures::default()
                },
            )
        })
        .collect();
    for (c, a) in acc {
        let f = out.entry(c.to_owned()).or_default();
        f.order_count_30d = a.orders30 as f64;
        f.avg_order_value_30d = if a.orders30 > 0 {
            a.value30 as f64 / a.orders30 as f64
        } else {
            0.0
        };
        f.distinct_devices_30d = a.devices.len() as f64;
        f.distinct_addresses_30d = a.addresses.len() as f64;
        f.chargeback_rate_90d = if a.orders90 > 0 {
            a.chargebacks90 as f64 / a.orders90 as f64
        } else {
            0.0
        };
        f.failed_payments_24h = a.failed24 as f64;
    }
    out
}

/// The feature vector of one payment (in [`FEATURES`] order).
pub fn feature_vector(
    f: &CustomerFeatures,
    s: &Signals,
    card_uses: u64,
    account_age_days: f64,
) -> Vec<f64> {
    let ratio = if f.avg_order_value_30d > 0.0 {
        s.amount as f64 / f.avg_order_value_30d
    } else {
        1.0
    };
    let mismatch = match &s.card_country {
        Some(c) if !c.eq_ignore_ascii_case(&s.shipping_country) => 1.0,
        _ => 0.0,
    };
    vec![
        f.order_count_30d,
        f.avg_order_value_30d / 100.0,
        f.distinct_devices_30d,
        f.distinct_addresses_30d,
        f.chargeback_rate_90d,
        account_age_days,
        f.failed_payments_24h,
        ratio,
        mismatch,
        card_uses as f64,
    ]
}

// ---------------------------------------------------------------------------------------
// The model: logistic regression over standardised features.

/// A trained (or the built-in) logistic regression: `score = σ(b + Σ wᵢ·(xᵢ − μᵢ)/σᵢ)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub version: i64,
    pub bias: f64,
    pub weights: Vec<f64>,
    pub means: Vec<f64>,
    pub scales: Vec<f64>,
}

/// One feature's part in a score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contribution {
    pub name: String,
    pub value: f64,
    /// Its term in the log-odds (positive = towards fraud).
    pub contribution: f64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Model {
    /// Version 0, serving until a model is trained: a cautious prior that only chargebacks,
    /// failed payments and a foreign card move much (new customers score about 0.03).
    pub fn builtin() -> Model {
        let n = FEATURES.len();
        let mut weights = vec![0.0; n];
        weights[4] = 5.0; // chargeback_rate_90d
        weights[6] = 0.25; // failed_payments_24h
        weights[8] = 0.5; // card_country_mismatch
        weights[9] = 0.1; // card_uses_10m
        Model {
            version: 0,
            bias: -3.5,
            weights,
            means: vec![0.0; n],
            scales: vec![1.0; n],
        }
    }

    fn z(&self, x: &[f64]) -> f64 {
        self.bias + self.terms(x).iter().sum::<f64>()
    }

    fn terms(&self, x: &[f64]) -> Vec<f64> {
        self.weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let v = x.get(i).copied().unwrap_or(0.0);
                let m = self.means.get(i).copied().unwrap_or(0.0);
                let s = self.scales.get(i).copied().unwrap_or(1.0);
                let t = w * (v - m) / if s > 0.0 { s } else { 1.0 };
                if t.is_finite() { t } else { 0.0 }
            })
            .collect()
    }

    /// The risk score in [0, 1].
    pub fn score(&self, x: &[f64]) -> f64 {
        let s = sigmoid(self.z(x));
        if s.is_finite() {
            s.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The `k` features that moved the score most, largest first.
    pub fn explain(&self, x: &[f64], k: usize) -> Vec<Contribution> {
        let mut c: Vec<Contribution> = self
            .terms(x)
            .into_iter()
            .enumerate()
            .map(|(i, t)| Contribution {
                name: FEATURES.get(i).copied().unwrap_or("?").to_owned(),
                value: x.get(i).copied().unwrap_or(0.0),
                contribution: t,
            })
            .collect();
        c.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        c.truncate(k);
        c
    }
}

/// A labelled example: features at decision time, `fraud` true for chargebacks and rejected
/// reviews.
#[derive(Clone, Debug)]
pub struct Sample {
    pub id: String,
    pub x: Vec<f64>,
    pub fraud: bool,
}

/// Held-out quality of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metrics {
    pub auc: f64,
    pub precision: f64,
    pub recall: f64,
    pub false_positive_rate: f64,
    /// Examples in the held-out set.
    pub held_out: u64,
}

/// Why training produced no model.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("not enough labelled examples: {have} (need at least {need})")]
    TooFew { have: usize, need: usize },
    #[error("the labelled examples need both fraud and legitimate outcomes")]
    OneClass,
    #[error("training diverged")]
    Diverged,
}

/// Fewest labelled examples to train from.
pub const MIN_SAMPLES: usize = 10;

fn stable_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Splits samples into (fit, held out): a fifth of each class (at least one when the class
/// has two or more), chosen by a stable hash of the id, so the same history splits the same
/// way on every run and a small history still holds out both classes.
pub fn split(samples: &[Sample]) -> (Vec<&Sample>, Vec<&Sample>) {
    let mut fit = Vec::new();
    let mut test = Vec::new();
    for class in [true, false] {
        let mut of: Vec<&Sample> = samples.iter().filter(|s| s.fraud == class).collect();
        of.sort_by_key(|s| (stable_hash(&s.id), s.id.clone()));
        let k = if of.len() >= 2 {
            of.len().div_ceil(5)
        } else {
            0
        };
        test.extend(of.iter().take(k).copied());
        fit.extend(of.iter().skip(k).copied());
    }
    (fit, test)
}

/// Trains a logistic regression by batch gradient descent with L2 regularisation on
/// standardised features (classes weighted so rare fraud counts as much as the rest), on the
/// samples not held out. Returns the model and its held-out metrics at `threshold`.
pub fn train(
    samples: &[Sample],
    version: i64,
    threshold: f64,
) -> Result<(Model, Metrics), TrainError> {
    if samples.len() < MIN_SAMPLES {
        return Err(TrainError::TooFew {
            have: samples.len(),
            need: MIN_SAMPLES,
        });
    }
    let (fit, test) = split(samples);
    let classes = |v: &[&Sample]| (v.iter().any(|s| s.fraud), v.iter().any(|s| !s.fraud));
    if classes(&fit) != (true, true) {
        return Err(TrainError::OneClass);
    }
    let n = FEATURES.len();
    let mut means = vec![0.0; n];
    let mut scales = vec![0.0; n];
    for s in &fit {
        for (i, m) in means.iter_mut().enumerate() {
            *m += s.x.get(i).copied().unwrap_or(0.0);
        }
    }
    let count = fit.len() as f64;
    means.iter_mut().for_each(|m| *m /= count);
    for s in &fit {
        for (i, v) in scales.iter_mut().enumerate() {
            let d = s.x.get(i).copied().unwrap_or(0.0) - means[i];
            *v += d * d;
        }
    }
    scales
        .iter_mut()
        .for_each(|v| *v = if *v > 0.0 { (*v / count).sqrt() } else { 1.0 });
    let xs: Vec<Vec<f64>> = fit
        .iter()
        .map(|s| {
            (0..n)
                .map(|i| (s.x.get(i).copied().unwrap_or(0.0) - means[i]) / scales[i])
                .collect()
        })
        .collect();
    let positives = fit.iter().filter(|s| s.fraud).count() as f64;
    let (wp, wn) = (
        count / (2.0 * positives),
        count / (2.0 * (count - positives)),
    );
    let mut w = vec![0.0; n];
    let mut b = 0.0;
    let (rate, l2) = (0.5, 1e-3);
    for _ in 0..500 {
        let mut gw = vec![0.0; n];
        let mut gb = 0.0;
        for (x, s) in xs.iter().zip(&fit) {
            let z = b + w.iter().zip(x).map(|(wi, xi)| wi * xi).sum::<f64>();
            let y = if s.fraud { 1.0 } else { 0.0 };
            let e = (sigmoid(z) - y) * if s.fraud { wp } else { wn };
            gb += e;
            for (g, xi) in gw.iter_mut().zip(x) {
                *g += e * xi;
            }
        }
        b -= rate * gb / count;
        for (wi, g) in w.iter_mut().zip(&gw) {
            *wi -= rate * (g / count + l2 * *wi);
        }
    }
    if !b.is_finite() || w.iter().any(|x| !x.is_finite()) {
        return Err(TrainError::Diverged);
    }
    let model = Model {
        version,
        bias: b,
        weights: w,
        means,
        scales,
    };
    let eval: Vec<&Sample> = if test.is_empty() { fit } else { test };
    let metrics = evaluate_model(&model, &eval, threshold);
    Ok((model, metrics))
}

/// AUC (the probability that a fraud example scores above a legitimate one, ties half),
/// precision, recall and false-positive rate at `threshold`.
pub fn evaluate_model(model: &Model, samples: &[&Sample], threshold: f64) -> Metrics {
    let scored: Vec<(f64, bool)> = samples
        .iter()
        .map(|s| (model.score(&s.x), s.fraud))
        .collect();
    let pos: Vec<f64> = scored.iter().filter(|s| s.1).map(|s| s.0).collect();
    let neg: Vec<f64> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
    let auc = if pos.is_empty() || neg.is_empty() {
        0.5
    } else {
        let mut wins = 0.0;
        for p in &pos {
            for q in &neg {
                wins += if p > q {
                    1.0
                } else if p == q {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / (pos.len() * neg.len()) as f64
    };
    let tp = pos.iter().filter(|s| **s >= threshold).count() as f64;
    let fp = neg.iter().filter(|s| **s >= threshold).count() as f64;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Metrics {
        auc,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, pos.len() as f64),
        false_positive_rate: ratio(fp, neg.len() as f64),
        held_out: samples.len() as u64,
    }
}

// ---------------------------------------------------------------------------------------
// Geography: approximate country centroids (degrees) for geo velocity.

const CENTROIDS: &[(&str, f64, f64)] = &[
    ("US", 39.8, -98.6),
    ("CA", 56.1, -106.3),
    ("MX", 23.6, -102.6),
    ("BR", -14.2, -51.9),
    ("AR", -38.4, -63.6),
    ("GB", 54.0, -2.0),
    ("IE", 53.4, -8.2),
    ("FR", 46.2, 2.2),
    ("DE", 51.2, 10.5),
    ("NL", 52.1, 5.3),
    ("BE", 50.5, 4.5),
    ("ES", 40.5, -3.7),
    ("PT", 39.4, -8.2),
    ("IT", 41.9, 12.6),
    ("CH", 46.8, 8.2),
    ("AT", 47.5, 14.6),
    ("SE", 60.1, 18.6),
    ("NO", 60.5, 8.5),
    ("DK", 56.3, 9.5),
    ("FI", 61.9, 25.7),
    ("PL", 51.9, 19.1),
    ("UA", 48.4, 31.2),
    ("RU", 61.5, 105.3),
    ("TR", 39.0, 35.2),
    ("IL", 31.0, 34.9),
    ("AE", 23.4, 53.8),
    ("SA", 23.9, 45.1),
    ("EG", 26.8, 30.8),
    ("NG", 9.1, 8.7),
    ("KE", -0.02, 37.9),
    ("ZA", -30.6, 22.9),
    ("IN", 20.6, 79.0),
    ("PK", 30.4, 69.3),
    ("CN", 35.9, 104.2),
    ("HK", 22.3, 114.2),
    ("JP", 36.2, 138.3),
    ("KR", 35.9, 127.8),
    ("SG", 1.35, 103.8),
    ("ID", -0.8, 113.9),
    ("TH", 15.9, 100.99),
    ("VN", 14.1, 108.3),
    ("PH", 12.9, 121.8),
    ("AU", -25.3, 133.8),
    ("NZ", -40.9, 174.9),
];

/// The static spelling of a known country code (so counters hold no allocation per entry).
pub fn known_country(code: &str) -> Option<&'static str> {
    CENTROIDS
        .iter()
        .find(|(c, _, _)| c.eq_ignore_ascii_case(code))
        .map(|(c, _, _)| *c)
}

/// Great-circle distance between two countries' centroids, km (`None` for an unknown code).
pub fn distance_km(a: &str, b: &str) -> Option<f64> {
    let find = |c: &str| CENTROIDS.iter().find(|(k, _, _)| k.eq_ignore_ascii_case(c));
    let (_, la1, lo1) = find(a)?;
    let (_, la2, lo2) = find(b)?;
    let (p1, p2) = (la1.to_radians(), la2.to_radians());
    let dp = (la2 - la1).to_radians();
    let dl = (lo2 - lo1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    Some(2.0 * 6371.0 * h.sqrt().asin())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Defaults = Defaults {
        review_amount: 1_000_000,
        block_amount: 5_000_000,
        max_attempts_per_hour: 10,
    };

    fn rules() -> Vec<Rule> {
        RuleName::ALL
            .iter()
            .map(|n| Rule::default_for(*n, D))
            .collect()
    }

    fn signals() -> Signals {
        Signals {
            customer_id: "usr_1".into(),
            amount: 5_000,
            shipping_country: "US".into(),
            card_fingerprint: Some("fp_1".into()),
            card_country: Some("US".into()),
            ip: "127.0.0.1".into(),
            account_age_days: 30.0,
            ..Signals::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_micros(1_700_000_000_000_000)
    }

    #[test]
    fn velocity_flags_above_three_and_blocks_above_five() {
        let r = rules();
        let at = |n| {
            evaluate(
                &r,
                &signals(),
                &Counts {
                    card_uses: n,
                    ..Counts::default()
                },
                &[],
                now(),
            )
        };
        assert!(at(3).is_empty());
        assert_eq!(at(4)[0].action, Action::Flag);
        assert_eq!(at(5)[0].action, Action::Flag);
        assert_eq!(at(6)[0].action, Action::Block);
    }

    #[test]
    fn high_value_new_account_fires_only_above_the_amount_and_below_the_age() {
        let r = rules();
        let mut s = signals();
        s.amount = 100_001;
        s.account_age_days = 6.9;
        let h = evaluate(&r, &s, &Counts::default(), &[], now());
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].rule, RuleName::HighValueNewAccount);
        s.amount = 100_000;
        assert!(evaluate(&r, &s, &Counts::default(), &[], now()).is_empty());
        s.amount = 100_001;
        s.account_age_days = 7.0;
        assert!(evaluate(&r, &s, &Counts::default(), &[], now()).is_empty());
    }

    #[test]
    fn card_country_mismatch_and_blocklist() {
        let r = rules();
        let mut s = signals();
        s.card_country = Some("GB".into());
        let h = evaluate(&r, &s, &Counts::default(), &[], now());
        assert_eq!(h[0].rule, RuleName::CardCountryMismatch);
        assert_eq!(h[0].action, Action::Flag);
        let h = evaluate(
            &r,
            &signals(),
            &Counts::default(),
            &[BlockKind::Email],
            now(),
        );
        assert_eq!(h[0].action, Action::Block);
    }

    #[test]
    fn geo_velocity_needs_both_countries_and_a_short_time() {
        let r = rules();
        let mut s = signals();
        s.ip_country = Some("JP".into());
        let prev = |secs: i64| Counts {
            previous_geo: Some((
                "US",
                now().minus(std::time::Duration::from_secs(secs as u64)),
            )),
            ..Counts::default()
        };
        assert_eq!(
            evaluate(&r, &s, &prev(600), &[], now())[0].rule,
            RuleName::GeoVelocity
        );
        // Two days later is outside the window.
        assert!(evaluate(&r, &s, &prev(2 * 86_400), &[], now()).is_empty());
        s.ip_country = Some("US".into());
        assert!(evaluate(&r, &s, &prev(600), &[], now()).is_empty());
        s.ip_country = None;
        assert!(evaluate(&r, &s, &prev(600), &[], now()).is_empty());
    }

    #[test]
    fn disabled_rules_never_fire_and_actions_are_data() {
        let mut r = rules();
        for rule in r.iter_mut() {
            if rule.name == RuleName::CardCountryMismatch {
                rule.action = Action::Block;
            }
            if rule.name == RuleName::Blocklist {
                rule.enabled = false;
            }
        }
        let mut s = signals();
        s.card_country = Some("GB".into());
        let h = evaluate(&r, &s, &Counts::default(), &[BlockKind::Ip], now());
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].action, Action::Block);
    }

    #[test]
    fn decisions_rules_then_score() {
        let flag = Hit {
            rule: RuleName::Velocity,
            action: Action::Flag,
            reason: "x".into(),
        };
        let block = Hit {
            action: Action::Block,
            ..flag.clone()
        };
        assert_eq!(decide(&[], 0.1, 0.9, 0.5).0, Verdict::Allow);
        assert_eq!(decide(&[], 0.5, 0.9, 0.5).0, Verdict::Review);
        assert_eq!(decide(&[], 0.9, 0.9, 0.5).0, Verdict::Block);
        assert_eq!(
            decide(std::slice::from_ref(&flag), 0.1, 0.9, 0.5).0,
            Verdict::Review
        );
        assert_eq!(decide(&[flag], 0.95, 0.9, 0.5).0, Verdict::Block);
        assert_eq!(decide(&[block], 0.0, 0.9, 0.5).0, Verdict::Block);
    }

    #[test]
    fn patches_are_validated_with_the_field() {
        let v = Rule::default_for(RuleName::Velocity, D);
        let bad = RulePatch {
            enabled: None,
            action: None,
            thresholds: Some([("window_secs".to_owned(), 0)].into_iter().collect()),
        };
        assert!(bad.apply(&v).is_err());
        let unknown = RulePatch {
            enabled: None,
            action: None,
            thresholds: Some([("nope".to_owned(), 1)].into_iter().collect()),
        };
        assert!(unknown.apply(&v).is_err());
        let inverted = RulePatch {
            enabled: None,
            action: None,
            thresholds: Some([("flag_above".to_owned(), 9)].into_iter().collect()),
        };
        assert!(inverted.apply(&v).is_err());
        let ok = RulePatch {
            enabled: Some(false),
            action: Some(Action::Flag),
            thresholds: Some([("block_above".to_owned(), 8)].into_iter().collect()),
        };
        let r = ok.apply(&v).unwrap_or_else(|_| v.clone());
        assert!(!r.enabled);
        assert_eq!(r.thresholds["block_above"], 8);
    }

    #[test]
    fn the_builtin_model_scores_new_customers_low() {
        let m = Model::builtin();
        let x = feature_vector(&CustomerFeatures::default(), &signals(), 1, 0.0);
        let s = m.score(&x);
        assert!(s < 0.1, "{s}");
        assert_eq!(m.explain(&x, 3).len(), 3);
    }

    #[test]
    fn features_count_orders_devices_and_chargebacks_in_their_windows() {
        let day = std::time::Duration::from_secs(86_400);
        let h = |amount, days: u32, device: &str, chargeback| History {
            customer_id: "usr_1".into(),
            amount,
            ordered: true,
            payment_failed: false,
            chargeback,
            device_id: Some(device.into()),
            address_key: "a".into(),
            at: now().minus(day * days),
        };
        let history = vec![
            h(1000, 1, "d1", false),
            h(3000, 10, "d2", true),
            h(5000, 60, "d3", false),
        ];
        let f = compute_features(&history, &HashMap::new(), now());
        let f = &f["usr_1"];
        assert_eq!(f.order_count_30d, 2.0);
        assert_eq!(f.avg_order_value_30d, 2000.0);
        assert_eq!(f.distinct_devices_30d, 2.0);
        assert!((f.chargeback_rate_90d - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn training_separates_a_clear_pattern_and_refuses_too_little() {
        let mut samples = Vec::new();
        for i in 0..200 {
            let fraud = i % 4 == 0;
            let mut x = vec![0.0; FEATURES.len()];
            x[5] = if fraud { 0.5 } else { 200.0 + f64::from(i) };
            x[8] = if fraud { 1.0 } else { 0.0 };
            samples.push(Sample {
                id: format!("frd_{i}"),
                x,
                fraud,
            });
        }
        let (model, metrics) = train(&samples, 1, 0.5).unwrap_or_else(|e| panic!("{e}"));
        assert!(metrics.auc > 0.95, "{metrics:?}");
        assert!(metrics.recall > 0.9, "{metrics:?}");
        assert_eq!(model.version, 1);
        assert!(matches!(
            train(&samples[..5], 2, 0.5),
            Err(TrainError::TooFew { .. })
        ));
        let legit: Vec<Sample> = samples.into_iter().filter(|s| !s.fraud).collect();
        assert_eq!(train(&legit, 2, 0.5), Err(TrainError::OneClass));
    }

    #[test]
    fn distances_between_countries() {
        let d = distance_km("GB", "FR").unwrap_or_default();
        assert!((300.0..1200.0).contains(&d), "{d}");
        assert!(distance_km("US", "XX").is_none());
    }
}
