//! Promotions' pure rules: the promotion types, their validation, and the discount engine.
//!
//! The engine ([`evaluate`]) takes a basket (lines priced after sale prices, optionally the
//! shipping cost) and the offers that may apply (active automatic promotions and at most one
//! coupon, with their usage counters), and answers which promotions apply, how much each takes
//! off and how that amount is split over the lines. It does no IO and is deterministic: the
//! same input gives the same answer, whatever the order of the offers.
//!
//! Rules, in the order they are applied:
//! - Evaluation order: sale price (already in the line price) → automatic promotions by
//!   priority (higher first, ties by id) → the coupon. Each promotion works on what the earlier
//!   ones left of each line.
//! - Stacking: the stackable promotions that apply form one combination; each non-stackable
//!   (exclusive) promotion that applies is an alternative on its own. The alternative worth the
//!   most to the customer (goods discount + shipping discount) wins; a tie keeps the
//!   combination, then the higher priority, then the lower id.
//! - A discount never exceeds what is left of a line, so no line goes negative; the parts of a
//!   discount over its lines sum exactly to the discount (largest remainder, [`allocate`]).
//! - Rounding: amounts that need rounding (a percentage) are rounded half-even by
//!   [`mercato_kernel::money::div_round_half_even`], the one rounding function; everything else
//!   is exact integer arithmetic in minor units.
//! - `min_subtotal` is compared with the basket subtotal after sale prices, before any
//!   promotion. A promotion applies only to a basket in its currency.
//! - A remaining budget caps the discount (the budget is never exceeded); usage limits and the
//!   per-customer limit make a promotion unavailable once reached.

use mercato_kernel::error::{ApiError, Validator};
use mercato_kernel::money::div_round_half_even;
use mercato_kernel::{Currency, Money, Timestamp};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

mercato_kernel::typed_id!(
    /// A promotion (a coupon is a promotion with a code).
    PromotionId, "prm");
mercato_kernel::typed_id!(
    /// One use of a promotion by a checkout.
    RedemptionId, "red");

/// 100 % in basis points.
pub const FULL_BPS: i64 = 10_000;
/// Largest amount a promotion may name (minor units), as for prices.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// Most SKUs, products or categories one scope may list.
pub const MAX_SCOPE_ITEMS: usize = 200;
/// Largest `buy`/`get` quantity and usage limit.
pub const MAX_QUANTITY: i64 = 1_000;
pub const MAX_LIMIT: i64 = 1_000_000_000;
pub const MAX_PRIORITY: i64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromotionKind {
    /// `value` basis points off the eligible lines.
    PercentOff,
    /// `value` (Money) off the eligible lines, at most their amount.
    AmountOff,
    /// The shipping cost.
    FreeShipping,
    /// For every `buy.quantity + get.quantity` eligible units, the `get.quantity` cheapest get
    /// `get.percent_off_bps` off.
    BuyXGetY,
}

impl PromotionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionKind::PercentOff => "percent_off",
            PromotionKind::AmountOff => "amount_off",
            PromotionKind::FreeShipping => "free_shipping",
            PromotionKind::BuyXGetY => "buy_x_get_y",
        }
    }
    pub fn parse(s: &str) -> Option<PromotionKind> {
        match s {
            "percent_off" => Some(PromotionKind::PercentOff),
            "amount_off" => Some(PromotionKind::AmountOff),
            "free_shipping" => Some(PromotionKind::FreeShipping),
            "buy_x_get_y" => Some(PromotionKind::BuyXGetY),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromotionStatus {
    Active,
    Disabled,
}

impl PromotionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionStatus::Active => "active",
            PromotionStatus::Disabled => "disabled",
        }
    }
    pub fn parse(s: &str) -> Option<PromotionStatus> {
        match s {
            "active" => Some(PromotionStatus::Active),
            "disabled" => Some(PromotionStatus::Disabled),
            _ => None,
        }
    }
}

/// Which lines a promotion (or the `buy` side of buy X get Y) looks at. Empty = every line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scope {
    #[serde(default)]
    pub skus: Vec<String>,
    #[serde(default)]
    pub product_ids: Vec<String>,
    /// A category matches its products and the products of its descendants.
    #[serde(default)]
    pub category_ids: Vec<String>,
}

impl Scope {
    pub fn is_whole_cart(&self) -> bool {
        self.skus.is_empty() && self.product_ids.is_empty() && self.category_ids.is_empty()
    }

    /// Whether `line` is in scope: its SKU, its product, or one of its categories (the
    /// product's category and its ancestors) is listed.
    pub fn matches(&self, line: &Line) -> bool {
        self.is_whole_cart()
            || self.skus.contains(&line.sku)
            || self.product_ids.contains(&line.product_id)
            || line
                .category_ids
                .iter()
                .any(|c| self.category_ids.contains(c))
    }
}

/// The reward of buy X get Y.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GetRule {
    pub quantity: i64,
    /// 10000 = free.
    pub percent_off_bps: i64,
}

/// The discount a promotion gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Benefit {
    PercentOff { bps: i64 },
    AmountOff { amount: i64 },
    FreeShipping,
    BuyXGetY { buy: i64, get: GetRule },
}

impl Benefit {
    pub fn kind(&self) -> PromotionKind {
        match self {
            Benefit::PercentOff { .. } => PromotionKind::PercentOff,
            Benefit::AmountOff { .. } => PromotionKind::AmountOff,
            Benefit::FreeShipping => PromotionKind::FreeShipping,
            Benefit::BuyXGetY { .. } => PromotionKind::BuyXGetY,
        }
    }
}

/// A promotion as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub code: Option<String>,
    pub automatic: bool,
    pub benefit: Benefit,
    /// Lines the discount applies to (for buy X get Y: the units counted and rewarded).
    pub scope: Scope,
    pub currency: Currency,
    pub min_subtotal: Option<i64>,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    pub stackable: bool,
    pub priority: i64,
    pub status: PromotionStatus,
}

/// Where `now` falls in a validity window (`starts_at` inclusive, `ends_at` exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    NotYet,
    Open,
    Over,
}

impl Rule {
    pub fn window(&self, now: Timestamp) -> Window {
        if self.starts_at.is_some_and(|s| now < s) {
            Window::NotYet
        } else if self.ends_at.is_some_and(|e| now >= e) {
            Window::Over
        } else {
            Window::Open
        }
    }
}

/// A promotion with what is left of its limits, for one customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub rule: Rule,
    /// `usage_limit - uses - reserved`, `None` without a limit.
    pub uses_left: Option<i64>,
    /// `per_customer_limit - this customer's uses`, `None` without a limit or without a known
    /// customer (a guest's preview).
    pub customer_uses_left: Option<i64>,
    /// `budget - budget_used - budget_reserved` in minor units, `None` without a budget.
    pub budget_left: Option<i64>,
}

impl Offer {
    pub fn exhausted(&self) -> bool {
        self.uses_left.is_some_and(|n| n <= 0)
            || self.customer_uses_left.is_some_and(|n| n <= 0)
            || self.budget_left.is_some_and(|n| n <= 0)
    }
}

/// A basket line, priced after its sale price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub sku: String,
    pub product_id: String,
    /// The product's category and all its ancestors.
    pub category_ids: Vec<String>,
    pub quantity: i64,
    /// Minor units, in the basket's currency.
    pub unit_price: i64,
}

impl Line {
    pub fn total(&self) -> i64 {
        self.unit_price.saturating_mul(self.quantity)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Basket {
    pub currency: Currency,
    pub lines: Vec<Line>,
    /// The shipping cost when known (checkout); `None` in a cart preview.
    pub shipping: Option<i64>,
    pub now: Timestamp,
}

impl Basket {
    pub fn subtotal(&self) -> i64 {
        self.lines
            .iter()
            .fold(0i64, |acc, l| acc.saturating_add(l.total()))
    }
}

/// One line's part of a discount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinePart {
    /// Index into the basket's lines.
    pub line: usize,
    pub sku: String,
    pub amount: i64,
}

/// A promotion that applies, with its amounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub promotion_id: String,
    pub code: Option<String>,
    pub name: String,
    pub kind: PromotionKind,
    /// Off the goods (the sum of `lines`).
    pub amount: i64,
    /// Off the shipping.
    pub shipping: i64,
    /// Every line the promotion applies to, with its part (possibly 0).
    pub lines: Vec<LinePart>,
}

impl Applied {
    pub fn value(&self) -> i64 {
        self.amount.saturating_add(self.shipping)
    }
}

/// What happened to the coupon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CouponOutcome {
    /// No coupon was given.
    None,
    Applied,
    /// Disabled (unknown codes never reach the engine).
    Invalid,
    /// Outside its validity window.
    Expired,
    /// A usage limit, the customer's limit or the budget is reached.
    Exhausted,
    /// Its conditions do not hold (minimum subtotal, no eligible line, other currency); the
    /// reason is for the customer.
    NotApplicable(String),
    /// It applies, but an exclusive alternative is worth more to the customer (or the coupon is
    /// exclusive and the other promotions together are worth more).
    Superseded,
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// In evaluation order.
    pub applied: Vec<Applied>,
    /// Total off the goods.
    pub discount: i64,
    /// Total off the shipping.
    pub shipping_discount: i64,
    /// A free-shipping promotion applies (in a preview its amount is not known yet).
    pub free_shipping: bool,
    /// Per basket line, the sum of every promotion's part.
    pub line_discounts: Vec<i64>,
    pub coupon: CouponOutcome,
}

/// Splits `total` over the entries in proportion to `weights` (largest remainder first, ties
/// to the lower index), never giving an entry more than its cap; what a cap cuts off goes to
/// the next entries with room, in index order. The parts always sum to
/// `min(total, sum(caps))` (negative inputs count as 0).
pub fn allocate(total: i64, weights: &[i64], caps: &[i64]) -> Vec<i64> {
    let n = weights.len().min(caps.len());
    let caps: Vec<i64> = caps[..n].iter().map(|c| (*c).max(0)).collect();
    let cap_sum: i128 = caps.iter().map(|c| i128::from(*c)).sum();
    let total = i128::from(total.max(0)).min(cap_sum);
    let weights: Vec<i128> = weights[..n]
        .iter()
        .map(|w| i128::from((*w).max(0)))
        .collect();
    let weight_sum: i128 = weights.iter().sum();
    let mut parts: Vec<i128> = vec![0; n];
    if weight_sum > 0 {
        let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(n);
        for i in 0..n {
            let x = total * weights[i];
            parts[i] = x / weight_sum;
            remainders.push((x % weight_sum, i));
        }
        let given: i128 = parts.iter().sum();
        let mut left = total - given;
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in remainders {
            if left <= 0 {
                break;
            }
            parts[i] += 1;
            left -= 1;
        }
    }
    // Clamp to the caps and hand what was cut off (or everything, without weights) to the
    // entries with room.
    let mut overflow = total - parts.iter().sum::<i128>();
    for i in 0..n {
        let cap = i128::from(caps[i]);
        if parts[i] > cap {
            overflow += parts[i] - cap;
            parts[i] = cap;
        }
    }
    for i in 0..n {
        if overflow <= 0 {
            break;
        }
        let room = i128::from(caps[i]) - parts[i];
        let take = room.min(overflow);
        parts[i] += take;
        overflow -= take;
    }
    parts
        .into_iter()
        .map(|p| i64::try_from(p).unwrap_or(0))
        .collect()
}

/// `amount × bps / 10 000`, half-even: the one place the engine rounds.
fn percent_of(amount: i64, bps: i64) -> i64 {
    div_round_half_even(i128::from(amount) * i128::from(bps), i128::from(FULL_BPS))
        .unwrap_or(0)
        .clamp(0, amount.max(0))
}

/// Why an offer's conditions do not hold for the basket, `None` when they do.
fn unmet(rule: &Rule, basket: &Basket) -> Option<String> {
    if rule.currency != basket.currency {
        return Some(format!(
            "this promotion is for {} carts, this cart is in {}",
            rule.currency, basket.currency
        ));
    }
    if let Some(min) = rule.min_subtotal
        && basket.subtotal() < min
    {
        return Some(format!(
            "the subtotal must be at least {min} {} (minor units)",
            rule.currency
        ));
    }
    let eligible: Vec<&Line> = basket
        .lines
        .iter()
        .filter(|l| l.quantity > 0 && rule.scope.matches(l))
        .collect();
    if eligible.is_empty() {
        return Some("no item in the cart is eligible".into());
    }
    if let Benefit::BuyXGetY { buy, get } = &rule.benefit {
        let units: i64 = eligible.iter().map(|l| l.quantity).sum();
        let group = buy.saturating_add(get.quantity);
        if units < group {
            return Some(format!(
                "buy {buy} eligible items to get {} at a discount",
                get.quantity
            ));
        }
    }
    None
}

/// What `offer` takes off, given what is left of each line and of the shipping.
fn apply_one(offer: &Offer, basket: &Basket, left: &[i64], shipping_left: Option<i64>) -> Applied {
    let rule = &offer.rule;
    let eligible: Vec<usize> = (0..basket.lines.len())
        .filter(|i| basket.lines[*i].quantity > 0 && rule.scope.matches(&basket.lines[*i]))
        .collect();
    let caps: Vec<i64> = eligible.iter().map(|i| left[*i].max(0)).collect();
    let eligible_left: i64 = caps.iter().fold(0i64, |a, c| a.saturating_add(*c));
    let budget = offer.budget_left.map(|b| b.max(0));
    let (parts, shipping) = match &rule.benefit {
        Benefit::PercentOff { bps } => {
            let mut total = percent_of(eligible_left, *bps);
            if let Some(b) = budget {
                total = total.min(b);
            }
            (allocate(total, &caps, &caps), 0)
        }
        Benefit::AmountOff { amount } => {
            let mut total = (*amount).min(eligible_left);
            if let Some(b) = budget {
                total = total.min(b);
            }
            (allocate(total, &caps, &caps), 0)
        }
        Benefit::FreeShipping => {
            let mut s = shipping_left.unwrap_or(0).max(0);
            if let Some(b) = budget {
                s = s.min(b);
            }
            (vec![0; eligible.len()], s)
        }
        Benefit::BuyXGetY { buy, get } => {
            // Lines cheapest unit first (what is left per unit, compared without rounding;
            // ties keep the basket order); the rewarded units are taken from the front.
            let per_unit = |pos: usize| -> (i64, i64) {
                let i = eligible[pos];
                (caps[pos], basket.lines[i].quantity.max(1))
            };
            let mut order: Vec<usize> = (0..eligible.len()).collect();
            order.sort_by(|a, b| {
                let (la, qa) = per_unit(*a);
                let (lb, qb) = per_unit(*b);
                (i128::from(la) * i128::from(qb))
                    .cmp(&(i128::from(lb) * i128::from(qa)))
                    .then(a.cmp(b))
            });
            let group = buy.saturating_add(get.quantity).max(1);
            let n_units = eligible.iter().fold(0i64, |a, i| {
                a.saturating_add(basket.lines[*i].quantity.max(0))
            });
            let mut to_reward = (n_units / group).saturating_mul(get.quantity);
            let mut reward_units = vec![0i64; eligible.len()];
            for pos in order {
                if to_reward <= 0 {
                    break;
                }
                let take = basket.lines[eligible[pos]].quantity.max(0).min(to_reward);
                reward_units[pos] = take;
                to_reward -= take;
            }
            // The reward on a line: its rewarded units' share of what is left of it, times
            // the percentage, rounded once per line by the one rounding function.
            let values: Vec<i64> = (0..eligible.len())
                .map(|pos| {
                    let (l, q) = per_unit(pos);
                    div_round_half_even(
                        i128::from(l)
                            * i128::from(reward_units[pos])
                            * i128::from(get.percent_off_bps),
                        i128::from(q) * i128::from(FULL_BPS),
                    )
                    .unwrap_or(0)
                    .clamp(0, l)
                })
                .collect();
            let mut total: i64 = values.iter().fold(0i64, |a, v| a.saturating_add(*v));
            if let Some(b) = budget {
                total = total.min(b);
            }
            (allocate(total, &values, &values), 0)
        }
    };
    let lines: Vec<LinePart> = eligible
        .iter()
        .zip(parts.iter())
        .map(|(i, p)| LinePart {
            line: *i,
            sku: basket.lines[*i].sku.clone(),
            amount: *p,
        })
        .collect();
    Applied {
        promotion_id: rule.id.clone(),
        code: rule.code.clone(),
        name: rule.name.clone(),
        kind: rule.benefit.kind(),
        amount: parts.iter().fold(0i64, |a, p| a.saturating_add(*p)),
        shipping,
        lines,
    }
}

/// Applies `offers` one after the other, each on what the earlier ones left.
fn apply_in_order(basket: &Basket, offers: &[&Offer]) -> (Vec<Applied>, Vec<i64>, Option<i64>) {
    let mut left: Vec<i64> = basket.lines.iter().map(|l| l.total().max(0)).collect();
    let mut shipping_left = basket.shipping.map(|s| s.max(0));
    let mut applied = Vec::with_capacity(offers.len());
    for offer in offers {
        let a = apply_one(offer, basket, &left, shipping_left);
        for part in &a.lines {
            left[part.line] = left[part.line].saturating_sub(part.amount);
        }
        if let Some(s) = shipping_left.as_mut() {
            *s = s.saturating_sub(a.shipping);
        }
        applied.push(a);
    }
    (applied, left, shipping_left)
}

fn by_priority(a: &Offer, b: &Offer) -> Ordering {
    b.rule
        .priority
        .cmp(&a.rule.priority)
        .then_with(|| a.rule.id.cmp(&b.rule.id))
}

/// The discount engine (see the module docs for the rules).
pub fn evaluate(basket: &Basket, automatic: &[Offer], coupon: Option<&Offer>) -> Evaluation {
    // Automatic promotions that apply: active, automatic, in their window, not exhausted,
    // conditions met. Sorted by priority so the input order does not matter.
    let mut autos: Vec<&Offer> = automatic
        .iter()
        .filter(|o| {
            o.rule.automatic
                && o.rule.status == PromotionStatus::Active
                && o.rule.window(basket.now) == Window::Open
                && !o.exhausted()
                && unmet(&o.rule, basket).is_none()
                && coupon.is_none_or(|c| c.rule.id != o.rule.id)
        })
        .collect();
    autos.sort_by(|a, b| by_priority(a, b));
    autos.dedup_by(|a, b| a.rule.id == b.rule.id);
    let mut outcome = CouponOutcome::None;
    let coupon = match coupon {
        None => None,
        Some(c) => {
            if c.rule.status != PromotionStatus::Active {
                outcome = CouponOutcome::Invalid;
                None
            } else if c.rule.window(basket.now) != Window::Open {
                outcome = CouponOutcome::Expired;
                None
            } else if c.exhausted() {
                outcome = CouponOutcome::Exhausted;
                None
            } else if let Some(reason) = unmet(&c.rule, basket) {
                outcome = CouponOutcome::NotApplicable(reason);
                None
            } else {
                Some(c)
            }
        }
    };
    // The alternatives: the stack of stackable promotions (automatic by priority, then the
    // coupon), and each exclusive promotion alone.
    let mut stack: Vec<&Offer> = autos.iter().copied().filter(|o| o.rule.stackable).collect();
    let mut exclusive: Vec<&Offer> = autos
        .iter()
        .copied()
        .filter(|o| !o.rule.stackable)
        .collect();
    if let Some(c) = coupon {
        if c.rule.stackable {
            stack.push(c);
        } else {
            exclusive.push(c);
            exclusive.sort_by(|a, b| by_priority(a, b));
        }
    }
    let worth = |applied: &[Applied]| -> i64 {
        applied
            .iter()
            .fold(0i64, |acc, a| acc.saturating_add(a.value()))
    };
    let mut best = apply_in_order(basket, &stack);
    let mut best_worth = worth(&best.0);
    let mut best_is_stack = !stack.is_empty();
    for e in &exclusive {
        let alt = apply_in_order(basket, &[*e]);
        let w = worth(&alt.0);
        // Strictly better only: ties keep the stack, then the earlier (higher-priority) one.
        if w > best_worth || (!best_is_stack && best.0.is_empty()) {
            best = alt;
            best_worth = w;
            best_is_stack = false;
        }
    }
    let (applied, left, _) = best;
    if let Some(c) = coupon {
        outcome = if applied.iter().any(|a| a.promotion_id == c.rule.id) {
            CouponOutcome::Applied
        } else {
            CouponOutcome::Superseded
        };
    }
    let line_discounts: Vec<i64> = basket
        .lines
        .iter()
        .zip(left.iter())
        .map(|(l, r)| l.total().max(0).saturating_sub(*r))
        .collect();
    Evaluation {
        discount: applied.iter().fold(0i64, |a, x| a.saturating_add(x.amount)),
        shipping_discount: applied
            .iter()
            .fold(0i64, |a, x| a.saturating_add(x.shipping)),
        free_shipping: applied
            .iter()
            .any(|a| a.kind == PromotionKind::FreeShipping),
        applied,
        line_discounts,
        coupon: outcome,
    }
}

// ---------------------------------------------------------------------------------------------
// API types
// ---------------------------------------------------------------------------------------------

/// Money in a request: bounded so that a schema-valid amount is one the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyInput {
    /// Integer minor units, 1..=10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(value_type = String, pattern = "^[A-Za-z]{3}$")]
    pub currency: Currency,
}

/// `value`: basis points for `percent_off`, Money for `amount_off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromotionValue {
    /// Basis points, 1..=10000 (10000 = 100 %).
    Bps(i64),
    Money(MoneyInput),
}

impl utoipa::PartialSchema for PromotionValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(1))
                    .maximum(Some(FULL_BPS))
                    .description(Some("percent_off: basis points (10000 = 100 %)")),
            )
            .item(utoipa::openapi::Ref::from_schema_name("MoneyInput"))
            .description(Some("Basis points for percent_off, Money for amount_off"))
            .into()
    }
}
impl utoipa::ToSchema for PromotionValue {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            "MoneyInput".into(),
            <MoneyInput as utoipa::PartialSchema>::schema(),
        ));
    }
}

/// Which lines a promotion applies to; every list empty or absent = the whole cart.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeInput {
    #[serde(default)]
    #[schema(max_items = 200)]
    pub skus: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub product_ids: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub category_ids: Vec<String>,
}

/// The `buy` side of buy X get Y: how many eligible units, and which (absent lists = any).
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuyInput {
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub skus: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub product_ids: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 200)]
    pub category_ids: Vec<String>,
}

/// The reward of buy X get Y.
#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetInput {
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    /// Off each rewarded unit, 1..=10000 (default 10000: free).
    #[serde(default = "full_bps")]
    #[schema(minimum = 1, maximum = 10000)]
    pub percent_off_bps: i64,
}

fn full_bps() -> i64 {
    FULL_BPS
}

fn active() -> PromotionStatus {
    PromotionStatus::Active
}

/// Create-promotion body (API.md "Promotions and coupons").
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionInput {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// A coupon code, case-insensitive and unique: 1-64 of `A-Z a-z 0-9 _ -`. Required unless
    /// `automatic`; an automatic promotion has none.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub code: Option<String>,
    /// Applies by itself to every cart whose conditions hold (no code).
    #[serde(default)]
    pub automatic: bool,
    pub kind: PromotionKind,
    /// Basis points for `percent_off`, Money for `amount_off`; absent for the other kinds.
    pub value: Option<PromotionValue>,
    /// buy X get Y only.
    pub buy: Option<BuyInput>,
    /// buy X get Y only.
    pub get: Option<GetInput>,
    /// Absent = the whole cart (not for buy X get Y, which is scoped by `buy`).
    pub applies_to: Option<ScopeInput>,
    pub min_subtotal: Option<MoneyInput>,
    /// ISO 4217; defaults to the currency of the Money fields, else the shop's.
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    pub starts_at: Option<Timestamp>,
    /// After `starts_at`.
    pub ends_at: Option<Timestamp>,
    #[schema(minimum = 1, maximum = 1_000_000_000_i64)]
    pub usage_limit: Option<i64>,
    #[schema(minimum = 1, maximum = 1_000_000_000_i64)]
    pub per_customer_limit: Option<i64>,
    /// The most this promotion may take off in total.
    pub budget: Option<MoneyInput>,
    #[serde(default)]
    pub stackable: bool,
    /// Higher first among automatic promotions, -1000..=1000.
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: i64,
    #[serde(default = "active")]
    pub status: PromotionStatus,
}

/// A validated promotion, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPromotion {
    pub name: String,
    pub code: Option<String>,
    pub automatic: bool,
    pub kind: PromotionKind,
    /// Basis points or minor units; 0 for the kinds without a value.
    pub value: i64,
    pub buy: Option<(i64, Scope)>,
    pub get: Option<GetRule>,
    pub applies_to: Scope,
    pub min_subtotal: Option<i64>,
    pub currency: Currency,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    pub usage_limit: Option<i64>,
    pub per_customer_limit: Option<i64>,
    pub budget: Option<i64>,
    pub stackable: bool,
    pub priority: i64,
    pub status: PromotionStatus,
}

/// The references a promotion names, which the service checks exist (field, values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub skus: Vec<(String, String)>,
    pub products: Vec<(String, String)>,
    pub categories: Vec<(String, String)>,
}

/// Whether `s` can be a coupon code.
pub fn valid_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The key under which codes are unique: lower-case.
pub fn code_key(code: &str) -> String {
    code.trim().to_ascii_lowercase()
}

fn scope_of(
    v: &mut Validator,
    field: &str,
    skus: &[String],
    product_ids: &[String],
    category_ids: &[String],
    refs: &mut References,
) -> Scope {
    let mut scope = Scope::default();
    for (name, list) in [
        ("skus", skus),
        ("product_ids", product_ids),
        ("category_ids", category_ids),
    ] {
        if list.len() > MAX_SCOPE_ITEMS {
            v.add(
                format!("{field}.{name}"),
                format!("at most {MAX_SCOPE_ITEMS} entries"),
            );
        }
    }
    for (i, raw) in skus.iter().enumerate().take(MAX_SCOPE_ITEMS) {
        let f = format!("{field}.skus[{i}]");
        match crate::catalog::model::Sku::parse(raw) {
            Some(s) => {
                let s = s.as_str().to_owned();
                if !scope.skus.contains(&s) {
                    refs.skus.push((f, s.clone()));
                    scope.skus.push(s);
                }
            }
            None => {
                v.add(f, "not a SKU");
            }
        }
    }
    for (i, raw) in product_ids.iter().enumerate().take(MAX_SCOPE_ITEMS) {
        let f = format!("{field}.product_ids[{i}]");
        if mercato_kernel::id::is_valid("prd", raw) {
            if !scope.product_ids.contains(raw) {
                refs.products.push((f, raw.clone()));
                scope.product_ids.push(raw.clone());
            }
        } else {
            v.add(f, "not a product id");
        }
    }
    for (i, raw) in category_ids.iter().enumerate().take(MAX_SCOPE_ITEMS) {
        let f = format!("{field}.category_ids[{i}]");
        if mercato_kernel::id::is_valid("cat", raw) {
            if !scope.category_ids.contains(raw) {
                refs.categories.push((f, raw.clone()));
                scope.category_ids.push(raw.clone());
            }
        } else {
            v.add(f, "not a category id");
        }
    }
    scope
}

fn money_ok(v: &mut Validator, field: &str, m: &MoneyInput, currency: Currency) -> i64 {
    if !(1..=MAX_AMOUNT_MINOR).contains(&m.amount) {
        v.add(
            format!("{field}.amount"),
            format!("must be 1 to {MAX_AMOUNT_MINOR} minor units"),
        );
    }
    if m.currency != currency {
        v.add(
            format!("{field}.currency"),
            format!("must be the promotion's currency {currency}"),
        );
    }
    m.amount
}

fn limit_ok(v: &mut Validator, field: &str, n: Option<i64>) {
    if let Some(n) = n
        && !(1..=MAX_LIMIT).contains(&n)
    {
        v.add(field, format!("must be 1 to {MAX_LIMIT}"));
    }
}

impl PromotionInput {
    /// Checks every single-field and cross-field rule (422 with the fields); what needs the
    /// database (the SKUs, products and categories exist, the code is free) is returned as
    /// [`References`] for the service.
    pub fn validate(
        &self,
        default_currency: Currency,
    ) -> Result<(NewPromotion, References), ApiError> {
        let mut v = Validator::new();
        let mut refs = References::default();
        let name = self.name.trim();
        v.check(
            !name.is_empty() && self.name.chars().count() <= 200,
            "name",
            "name is required (at most 200 characters)",
        );
        let code = match (&self.code, self.automatic) {
            (Some(c), false) => {
                v.check(
                    valid_code(c),
                    "code",
                    "a code is 1-64 of A-Z a-z 0-9 _ - (case-insensitive)",
                );
                Some(c.clone())
            }
            (Some(_), true) => {
                v.add("code", "an automatic promotion has no code");
                None
            }
            (None, false) => {
                v.add("code", "a coupon needs a code (or set automatic: true)");
                None
            }
            (None, true) => None,
        };
        // The currency: explicit, else from the Money fields, else the shop's.
        let money_currency = [
            match self.value {
                Some(PromotionValue::Money(m)) => Some(m.currency),
                _ => None,
            },
            self.min_subtotal.map(|m| m.currency),
            self.budget.map(|m| m.currency),
        ]
        .into_iter()
        .flatten()
        .next();
        let currency = match &self.currency {
            Some(c) => match Currency::parse(c) {
                Some(c) => c,
                None => {
                    v.add("currency", "currency must be a 3-letter ISO 4217 code");
                    default_currency
                }
            },
            None => money_currency.unwrap_or(default_currency),
        };
        let value = match (self.kind, self.value) {
            (PromotionKind::PercentOff, Some(PromotionValue::Bps(b))) => {
                if !(1..=FULL_BPS).contains(&b) {
                    v.add(
                        "value",
                        "percent_off is 1 to 10000 basis points (0.01 % to 100 %)",
                    );
                }
                b
            }
            (PromotionKind::PercentOff, _) => {
                v.add("value", "percent_off needs value in basis points (1-10000)");
                0
            }
            (PromotionKind::AmountOff, Some(PromotionValue::Money(m))) => {
                money_ok(&mut v, "value", &m, currency)
            }
            (PromotionKind::AmountOff, Some(PromotionValue::Bps(n))) if n <= 0 => {
                v.add("value", "amount_off needs value as positive Money");
                0
            }
            (PromotionKind::AmountOff, _) => {
                v.add(
                    "value",
                    "amount_off needs value as Money {amount, currency}",
                );
                0
            }
            (PromotionKind::FreeShipping | PromotionKind::BuyXGetY, Some(_)) => {
                v.add("value", format!("{} takes no value", self.kind.as_str()));
                0
            }
            (PromotionKind::FreeShipping | PromotionKind::BuyXGetY, None) => 0,
        };
        let (buy, get) = match (self.kind, &self.buy, &self.get) {
            (PromotionKind::BuyXGetY, Some(b), Some(g)) => {
                if !(1..=MAX_QUANTITY).contains(&b.quantity) {
                    v.add("buy.quantity", format!("must be 1 to {MAX_QUANTITY}"));
                }
                if !(1..=MAX_QUANTITY).contains(&g.quantity) {
                    v.add("get.quantity", format!("must be 1 to {MAX_QUANTITY}"));
                }
                if !(1..=FULL_BPS).contains(&g.percent_off_bps) {
                    v.add("get.percent_off_bps", "must be 1 to 10000 basis points");
                }
                let scope = scope_of(
                    &mut v,
                    "buy",
                    &b.skus,
                    &b.product_ids,
                    &b.category_ids,
                    &mut refs,
                );
                (
                    Some((b.quantity, scope)),
                    Some(GetRule {
                        quantity: g.quantity,
                        percent_off_bps: g.percent_off_bps,
                    }),
                )
            }
            (PromotionKind::BuyXGetY, b, g) => {
                if b.is_none() {
                    v.add("buy", "buy_x_get_y needs buy {quantity, …}");
                }
                if g.is_none() {
                    v.add("get", "buy_x_get_y needs get {quantity, percent_off_bps}");
                }
                (None, None)
            }
            (_, b, g) => {
                if b.is_some() {
                    v.add("buy", "only buy_x_get_y takes buy");
                }
                if g.is_some() {
                    v.add("get", "only buy_x_get_y takes get");
                }
                (None, None)
            }
        };
        let applies_to = match (&self.applies_to, self.kind) {
            (Some(_), PromotionKind::BuyXGetY) => {
                v.add(
                    "applies_to",
                    "buy_x_get_y is scoped by buy (skus, product_ids, category_ids)",
                );
                Scope::default()
            }
            (Some(s), _) => scope_of(
                &mut v,
                "applies_to",
                &s.skus,
                &s.product_ids,
                &s.category_ids,
                &mut refs,
            ),
            (None, _) => Scope::default(),
        };
        let min_subtotal = self
            .min_subtotal
            .as_ref()
            .map(|m| money_ok(&mut v, "min_subtotal", m, currency));
        let budget = self
            .budget
            .as_ref()
            .map(|m| money_ok(&mut v, "budget", m, currency));
        if let (Some(s), Some(e)) = (self.starts_at, self.ends_at) {
            v.check(e > s, "ends_at", "ends_at must be after starts_at");
        }
        limit_ok(&mut v, "usage_limit", self.usage_limit);
        limit_ok(&mut v, "per_customer_limit", self.per_customer_limit);
        v.check(
            (-MAX_PRIORITY..=MAX_PRIORITY).contains(&self.priority),
            "priority",
            "priority is -1000 to 1000",
        );
        v.finish()?;
        Ok((
            NewPromotion {
                name: name.to_owned(),
                code,
                automatic: self.automatic,
                kind: self.kind,
                value,
                buy,
                get,
                applies_to,
                min_subtotal,
                currency,
                starts_at: self.starts_at,
                ends_at: self.ends_at,
                usage_limit: self.usage_limit,
                per_customer_limit: self.per_customer_limit,
                budget,
                stackable: self.stackable,
                priority: self.priority,
                status: self.status,
            },
            refs,
        ))
    }
}

/// Partial update. The kind, the code and the scopes are fixed at creation (create another
/// promotion to change them); `null` clears an optional field.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionPatch {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    pub status: Option<PromotionStatus>,
    pub value: Option<PromotionValue>,
    pub get: Option<GetInput>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<MoneyInput>)]
    pub min_subtotal: Option<Option<MoneyInput>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Timestamp>)]
    pub starts_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Timestamp>)]
    pub ends_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000_000_i64)]
    pub usage_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000_000_i64)]
    pub per_customer_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<MoneyInput>)]
    pub budget: Option<Option<MoneyInput>>,
    pub stackable: Option<bool>,
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i64>,
}

/// `Some(None)` for an explicit `null`, `None` when absent.
fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl PromotionPatch {
    /// The promotion after the patch, validated like a creation (422 with the fields).
    pub fn apply(&self, current: &NewPromotion) -> Result<NewPromotion, ApiError> {
        let money = |amount: Option<i64>| {
            amount.map(|a| MoneyInput {
                amount: a,
                currency: current.currency,
            })
        };
        let input = PromotionInput {
            name: self.name.clone().unwrap_or_else(|| current.name.clone()),
            code: current.code.clone(),
            automatic: current.automatic,
            kind: current.kind,
            value: match (self.value, current.kind) {
                (Some(v), _) => Some(v),
                (None, PromotionKind::PercentOff) => Some(PromotionValue::Bps(current.value)),
                (None, PromotionKind::AmountOff) => {
                    money(Some(current.value)).map(PromotionValue::Money)
                }
                (None, _) => None,
            },
            buy: current.buy.as_ref().map(|(q, s)| BuyInput {
                quantity: *q,
                skus: s.skus.clone(),
                product_ids: s.product_ids.clone(),
                category_ids: s.category_ids.clone(),
            }),
            get: self.get.or(current.get.map(|g| GetInput {
                quantity: g.quantity,
                percent_off_bps: g.percent_off_bps,
            })),
            applies_to: (!current.applies_to.is_whole_cart()).then(|| ScopeInput {
                skus: current.applies_to.skus.clone(),
                product_ids: current.applies_to.product_ids.clone(),
                category_ids: current.applies_to.category_ids.clone(),
            }),
            min_subtotal: match self.min_subtotal {
                Some(m) => m,
                None => money(current.min_subtotal),
            },
            currency: Some(current.currency.as_str().to_owned()),
            starts_at: self.starts_at.unwrap_or(current.starts_at),
            ends_at: self.ends_at.unwrap_or(current.ends_at),
            usage_limit: self.usage_limit.unwrap_or(current.usage_limit),
            per_customer_limit: self
                .per_customer_limit
                .unwrap_or(current.per_customer_limit),
            budget: match self.budget {
                Some(b) => b,
                None => money(current.budget),
            },
            stackable: self.stackable.unwrap_or(current.stackable),
            priority: self.priority.unwrap_or(current.priority),
            status: self.status.unwrap_or(current.status),
        };
        input.validate(current.currency).map(|(p, _)| p)
    }
}

/// The `buy` side as answered.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BuyView {
    pub quantity: i64,
    pub skus: Vec<String>,
    pub product_ids: Vec<String>,
    pub category_ids: Vec<String>,
}

/// A promotion as answered by the admin routes.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Promotion {
    pub id: String,
    pub name: String,
    pub code: Option<String>,
    pub automatic: bool,
    pub kind: PromotionKind,
    /// Basis points (`percent_off`), Money (`amount_off`), `null` otherwise.
    pub value: Option<PromotionValue>,
    pub buy: Option<BuyView>,
    pub get: Option<GetRule>,
    /// `null` = the whole cart.
    pub applies_to: Option<Scope>,
    pub min_subtotal: Option<Money>,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
    pub usage_limit: Option<i64>,
    pub per_customer_limit: Option<i64>,
    pub budget: Option<Money>,
    pub stackable: bool,
    pub priority: i64,
    pub status: PromotionStatus,
    /// Committed uses (paid checkouts).
    pub uses: i64,
    /// Uses held by open checkouts.
    pub reserved: i64,
    /// Discount given by committed uses.
    pub budget_used: Money,
    /// Discount held by open checkouts.
    pub budget_reserved: Money,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A stored promotion: the validated fields plus the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromotionRecord {
    pub id: String,
    pub fields: NewPromotion,
    pub uses: i64,
    pub reserved: i64,
    pub budget_used: i64,
    pub budget_reserved: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl PromotionRecord {
    pub fn view(&self) -> Promotion {
        let f = &self.fields;
        let money = |a: i64| Money::new(a, f.currency);
        Promotion {
            id: self.id.clone(),
            name: f.name.clone(),
            code: f.code.clone(),
            automatic: f.automatic,
            kind: f.kind,
            value: match f.kind {
                PromotionKind::PercentOff => Some(PromotionValue::Bps(f.value)),
                PromotionKind::AmountOff => Some(PromotionValue::Money(MoneyInput {
                    amount: f.value,
                    currency: f.currency,
                })),
                _ => None,
            },
            buy: f.buy.as_ref().map(|(q, s)| BuyView {
                quantity: *q,
                skus: s.skus.clone(),
                product_ids: s.product_ids.clone(),
                category_ids: s.category_ids.clone(),
            }),
            get: f.get,
            applies_to: (!f.applies_to.is_whole_cart()).then(|| f.applies_to.clone()),
            min_subtotal: f.min_subtotal.map(money),
            currency: f.currency,
            starts_at: f.starts_at,
            ends_at: f.ends_at,
            usage_limit: f.usage_limit,
            per_customer_limit: f.per_customer_limit,
            budget: f.budget.map(money),
            stackable: f.stackable,
            priority: f.priority,
            status: f.status,
            uses: self.uses,
            reserved: self.reserved,
            budget_used: money(self.budget_used),
            budget_reserved: money(self.budget_reserved),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// The engine's view.
    pub fn rule(&self) -> Rule {
        let f = &self.fields;
        let benefit = match f.kind {
            PromotionKind::PercentOff => Benefit::PercentOff { bps: f.value },
            PromotionKind::AmountOff => Benefit::AmountOff { amount: f.value },
            PromotionKind::FreeShipping => Benefit::FreeShipping,
            PromotionKind::BuyXGetY => Benefit::BuyXGetY {
                buy: f.buy.as_ref().map(|(q, _)| *q).unwrap_or(1),
                get: f.get.unwrap_or(GetRule {
                    quantity: 1,
                    percent_off_bps: FULL_BPS,
                }),
            },
        };
        let scope = match (&f.kind, &f.buy) {
            (PromotionKind::BuyXGetY, Some((_, s))) => s.clone(),
            _ => f.applies_to.clone(),
        };
        Rule {
            id: self.id.clone(),
            name: f.name.clone(),
            code: f.code.clone(),
            automatic: f.automatic,
            benefit,
            scope,
            currency: f.currency,
            min_subtotal: f.min_subtotal,
            starts_at: f.starts_at,
            ends_at: f.ends_at,
            stackable: f.stackable,
            priority: f.priority,
            status: f.status,
        }
    }

    /// The offer for a customer who has used it `customer_uses` times (committed + reserved;
    /// `None` when not known).
    pub fn offer(&self, customer_uses: Option<i64>) -> Offer {
        let f = &self.fields;
        Offer {
            rule: self.rule(),
            uses_left: f
                .usage_limit
                .map(|l| l.saturating_sub(self.uses).saturating_sub(self.reserved)),
            customer_uses_left: match (f.per_customer_limit, customer_uses) {
                (Some(l), Some(u)) => Some(l.saturating_sub(u)),
                _ => None,
            },
            budget_left: f.budget.map(|b| {
                b.saturating_sub(self.budget_used)
                    .saturating_sub(self.budget_reserved)
            }),
        }
    }
}

/// Status of a redemption: reserved by an open checkout, committed when paid, released when
/// the checkout failed or expired or the order was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedemptionStatus {
    Reserved,
    Committed,
    Released,
}

impl RedemptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RedemptionStatus::Reserved => "reserved",
            RedemptionStatus::Committed => "committed",
            RedemptionStatus::Released => "released",
        }
    }
    pub fn parse(s: &str) -> Option<RedemptionStatus> {
        match s {
            "reserved" => Some(RedemptionStatus::Reserved),
            "committed" => Some(RedemptionStatus::Committed),
            "released" => Some(RedemptionStatus::Released),
            _ => None,
        }
    }
}

/// One use of a promotion.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Redemption {
    pub id: String,
    pub promotion_id: String,
    pub checkout_id: String,
    pub order_id: Option<String>,
    pub customer_id: String,
    pub amount: Money,
    pub status: RedemptionStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One promotion in a cart's (or checkout's, or order's) breakdown; stored as JSON on checkouts
/// and orders.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DiscountView {
    pub promotion_id: String,
    pub code: Option<String>,
    pub name: String,
    pub kind: PromotionKind,
    /// Off the goods.
    pub amount: Money,
    /// Off the shipping (free shipping; 0 in a cart preview, where shipping is not known yet).
    pub shipping: Money,
    /// The SKUs of the lines it applies to.
    pub lines: Vec<String>,
}

/// What a cart preview adds to the cart.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Discounts {
    /// Total off the goods.
    pub discount: Money,
    pub discounts: Vec<DiscountView>,
    /// A free-shipping promotion applies (its amount is known at checkout).
    pub free_shipping: bool,
}

impl Discounts {
    pub fn of(e: &Evaluation, currency: Currency) -> Discounts {
        Discounts {
            discount: Money::new(e.discount, currency),
            discounts: e
                .applied
                .iter()
                .map(|a| DiscountView {
                    promotion_id: a.promotion_id.clone(),
                    code: a.code.clone(),
                    name: a.name.clone(),
                    kind: a.kind,
                    amount: Money::new(a.amount, currency),
                    shipping: Money::new(a.shipping, currency),
                    lines: a.lines.iter().map(|l| l.sku.clone()).collect(),
                })
                .collect(),
            free_shipping: e.free_shipping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: Timestamp = Timestamp::from_micros(1_800_000_000_000_000);

    fn line(sku: &str, product: &str, cats: &[&str], quantity: i64, unit_price: i64) -> Line {
        Line {
            sku: sku.into(),
            product_id: product.into(),
            category_ids: cats.iter().map(|c| (*c).to_owned()).collect(),
            quantity,
            unit_price,
        }
    }

    fn basket(lines: Vec<Line>) -> Basket {
        Basket {
            currency: Currency::USD,
            lines,
            shipping: None,
            now: NOW,
        }
    }

    fn rule(id: &str, benefit: Benefit) -> Rule {
        Rule {
            id: id.into(),
            name: format!("promo {id}"),
            code: None,
            automatic: true,
            benefit,
            scope: Scope::default(),
            currency: Currency::USD,
            min_subtotal: None,
            starts_at: None,
            ends_at: None,
            stackable: true,
            priority: 0,
            status: PromotionStatus::Active,
        }
    }

    fn offer(rule: Rule) -> Offer {
        Offer {
            rule,
            uses_left: None,
            customer_uses_left: None,
            budget_left: None,
        }
    }

    fn coupon(id: &str, benefit: Benefit) -> Offer {
        let mut r = rule(id, benefit);
        r.automatic = false;
        r.code = Some(id.to_uppercase());
        offer(r)
    }

    fn pct(bps: i64) -> Benefit {
        Benefit::PercentOff { bps }
    }

    fn off(amount: i64) -> Benefit {
        Benefit::AmountOff { amount }
    }

    fn parts(a: &Applied) -> Vec<i64> {
        a.lines.iter().map(|l| l.amount).collect()
    }

    #[test]
    fn percent_off_rounds_the_total_half_even_then_splits_it_exactly() {
        let b = basket(vec![
            line("A", "p1", &[], 2, 1000),
            line("B", "p2", &[], 1, 333),
        ]);
        let e = evaluate(&b, &[], Some(&coupon("c", pct(1000))));
        assert_eq!(e.coupon, CouponOutcome::Applied);
        // 10 % of 23.33 = 2.333 → 2.33; split 200 + 33.
        assert_eq!(e.discount, 233);
        assert_eq!(parts(&e.applied[0]), [200, 33]);
        assert_eq!(e.line_discounts, [200, 33]);
    }

    #[test]
    fn half_even_ties_go_to_the_even_cent() {
        for (price, bps, want) in [(50, 100, 0), (150, 100, 2), (250, 100, 2), (350, 100, 4)] {
            let b = basket(vec![line("A", "p", &[], 1, price)]);
            let e = evaluate(&b, &[], Some(&coupon("c", pct(bps))));
            assert_eq!(e.discount, want, "{price} × {bps} bps");
        }
    }

    #[test]
    fn one_hundred_percent_takes_everything_and_no_more() {
        let b = basket(vec![
            line("A", "p", &[], 3, 1999),
            line("B", "q", &[], 1, 1),
        ]);
        let e = evaluate(&b, &[], Some(&coupon("c", pct(FULL_BPS))));
        assert_eq!(e.discount, b.subtotal());
        assert_eq!(e.line_discounts, [5997, 1]);
    }

    #[test]
    fn amount_off_never_exceeds_the_eligible_lines() {
        let b = basket(vec![line("A", "p", &[], 1, 300)]);
        let e = evaluate(&b, &[], Some(&coupon("c", off(500))));
        assert_eq!(e.discount, 300);
        assert_eq!(e.line_discounts, [300]);
        let b = basket(vec![
            line("A", "p", &[], 1, 1000),
            line("B", "q", &[], 2, 1000),
        ]);
        let e = evaluate(&b, &[], Some(&coupon("c", off(100))));
        // Split in proportion: 1/3 and 2/3, the odd cent to the largest remainder.
        assert_eq!(parts(&e.applied[0]), [33, 67]);
    }

    #[test]
    fn scopes_match_sku_product_and_category_with_its_ancestors() {
        let b = basket(vec![
            line(
                "LAPTOP-1",
                "prd_l",
                &["cat_el", "cat_comp", "cat_lap"],
                1,
                100_000,
            ),
            line("MUG-1", "prd_m", &["cat_home", "cat_coffee"], 2, 1_000),
            line("TEE-1", "prd_t", &["cat_fashion"], 1, 2_000),
        ]);
        let scoped = |scope: Scope| {
            let mut c = coupon("c", pct(1000));
            c.rule.scope = scope;
            evaluate(&b, &[], Some(&c))
        };
        let e = scoped(Scope {
            skus: vec!["MUG-1".into()],
            ..Scope::default()
        });
        assert_eq!(e.line_discounts, [0, 200, 0]);
        assert_eq!(e.applied[0].lines.len(), 1);
        let e = scoped(Scope {
            product_ids: vec!["prd_t".into()],
            ..Scope::default()
        });
        assert_eq!(e.line_discounts, [0, 0, 200]);
        // An ancestor category covers its descendants' products.
        let e = scoped(Scope {
            category_ids: vec!["cat_el".into()],
            ..Scope::default()
        });
        assert_eq!(e.line_discounts, [10_000, 0, 0]);
        let e = scoped(Scope {
            category_ids: vec!["cat_nothing".into()],
            ..Scope::default()
        });
        assert!(matches!(e.coupon, CouponOutcome::NotApplicable(_)));
        assert_eq!(e.discount, 0);
    }

    #[test]
    fn min_subtotal_is_checked_against_the_subtotal_after_sale_prices() {
        let b = basket(vec![line("A", "p", &[], 1, 9_999)]);
        let mut c = coupon("c", pct(1000));
        c.rule.min_subtotal = Some(10_000);
        assert!(matches!(
            evaluate(&b, &[], Some(&c)).coupon,
            CouponOutcome::NotApplicable(_)
        ));
        let mut a = offer(rule("a", pct(1000)));
        a.rule.min_subtotal = Some(10_000);
        assert!(
            evaluate(&b, std::slice::from_ref(&a), None)
                .applied
                .is_empty()
        );
        let b = basket(vec![line("A", "p", &[], 1, 10_000)]);
        assert_eq!(evaluate(&b, &[], Some(&c)).coupon, CouponOutcome::Applied);
        assert_eq!(evaluate(&b, &[a], None).discount, 1_000);
    }

    #[test]
    fn the_window_starts_inclusive_and_ends_exclusive() {
        let b = basket(vec![line("A", "p", &[], 1, 1_000)]);
        let mut c = coupon("c", pct(1000));
        c.rule.starts_at = Some(NOW.plus_secs(1));
        assert_eq!(evaluate(&b, &[], Some(&c)).coupon, CouponOutcome::Expired);
        c.rule.starts_at = Some(NOW);
        assert_eq!(evaluate(&b, &[], Some(&c)).coupon, CouponOutcome::Applied);
        c.rule.ends_at = Some(NOW);
        assert_eq!(evaluate(&b, &[], Some(&c)).coupon, CouponOutcome::Expired);
        let mut a = offer(rule("a", pct(1000)));
        a.rule.ends_at = Some(NOW);
        assert!(evaluate(&b, &[a], None).applied.is_empty());
    }

    #[test]
    fn limits_and_budget_make_a_coupon_exhausted() {
        let b = basket(vec![line("A", "p", &[], 1, 1_000)]);
        for f in [
            |o: &mut Offer| o.uses_left = Some(0),
            |o: &mut Offer| o.customer_uses_left = Some(0),
            |o: &mut Offer| o.budget_left = Some(0),
        ] {
            let mut c = coupon("c", pct(1000));
            f(&mut c);
            assert_eq!(evaluate(&b, &[], Some(&c)).coupon, CouponOutcome::Exhausted);
            let mut a = offer(rule("a", pct(1000)));
            f(&mut a);
            assert!(evaluate(&b, &[a], None).applied.is_empty());
        }
        let mut c = coupon("c", pct(1000));
        c.status_disabled();
        assert_eq!(evaluate(&b, &[], Some(&c)).coupon, CouponOutcome::Invalid);
    }

    impl Offer {
        fn status_disabled(&mut self) {
            self.rule.status = PromotionStatus::Disabled;
        }
    }

    #[test]
    fn the_remaining_budget_caps_the_discount() {
        let b = basket(vec![
            line("A", "p", &[], 1, 1_000),
            line("B", "q", &[], 1, 3_000),
        ]);
        let mut c = coupon("c", pct(5000));
        c.budget_left = Some(400);
        let e = evaluate(&b, &[], Some(&c));
        assert_eq!(e.discount, 400);
        assert_eq!(e.line_discounts, [100, 300]);
    }

    #[test]
    fn stackable_promotions_apply_in_priority_order_then_the_coupon() {
        let b = basket(vec![line("A", "p", &[], 1, 10_000)]);
        let mut first = offer(rule("a", pct(1000)));
        first.rule.priority = 10;
        let second = offer(rule("b", off(1_000)));
        let c = coupon("c", pct(5000));
        let e = evaluate(&b, &[second.clone(), first.clone()], Some(&c));
        // 10 % of 100.00 = 10.00, then 10.00 off = 80.00 left, then 50 % of it.
        let amounts: Vec<i64> = e.applied.iter().map(|a| a.amount).collect();
        assert_eq!(amounts, [1_000, 1_000, 4_000]);
        assert_eq!(e.discount, 6_000);
        // The other priority order gives another amount: 10.00 off first, then 10 % of 90.00.
        let mut second = second;
        second.rule.priority = 20;
        let e = evaluate(&b, &[first, second], None);
        let amounts: Vec<i64> = e.applied.iter().map(|a| a.amount).collect();
        assert_eq!(amounts, [1_000, 900]);
    }

    #[test]
    fn an_exclusive_promotion_never_combines_and_the_better_alternative_wins() {
        let b = basket(vec![line("A", "p", &[], 1, 10_000)]);
        let auto = offer(rule("a", pct(1000)));
        let mut c = coupon("c", pct(1500));
        c.rule.stackable = false;
        let e = evaluate(&b, std::slice::from_ref(&auto), Some(&c));
        assert_eq!(e.coupon, CouponOutcome::Applied);
        assert_eq!(e.applied.len(), 1);
        assert_eq!(e.discount, 1_500);
        // A weaker exclusive coupon loses to the automatic one.
        let mut weak = coupon("w", pct(500));
        weak.rule.stackable = false;
        let e = evaluate(&b, std::slice::from_ref(&auto), Some(&weak));
        assert_eq!(e.coupon, CouponOutcome::Superseded);
        assert_eq!(e.discount, 1_000);
        // An exclusive automatic one that is worth more beats a stackable coupon plus the rest.
        let mut big = offer(rule("big", pct(3000)));
        big.rule.stackable = false;
        let e = evaluate(
            &b,
            &[auto.clone(), big.clone()],
            Some(&coupon("s", pct(1000))),
        );
        assert_eq!(e.coupon, CouponOutcome::Superseded);
        assert_eq!(e.discount, 3_000);
        assert_eq!(e.applied[0].promotion_id, "big");
        // A tie keeps the combination.
        let mut tie = offer(rule("tie", pct(1000)));
        tie.rule.stackable = false;
        let e = evaluate(&b, &[auto, tie], None);
        assert_eq!(e.applied[0].promotion_id, "a");
    }

    #[test]
    fn two_exclusive_alternatives_of_equal_worth_go_by_priority_then_id() {
        let b = basket(vec![line("A", "p", &[], 1, 10_000)]);
        let mut x = offer(rule("x", pct(1000)));
        x.rule.stackable = false;
        let mut y = offer(rule("y", off(1_000)));
        y.rule.stackable = false;
        assert_eq!(
            evaluate(&b, &[y.clone(), x.clone()], None).applied[0].promotion_id,
            "x"
        );
        y.rule.priority = 1;
        assert_eq!(evaluate(&b, &[x, y], None).applied[0].promotion_id, "y");
    }

    #[test]
    fn buy_two_get_one_free_discounts_the_cheapest_unit_per_group() {
        let bxgy = |buy, get, bps| Benefit::BuyXGetY {
            buy,
            get: GetRule {
                quantity: get,
                percent_off_bps: bps,
            },
        };
        let b = basket(vec![line("A", "p", &[], 3, 1_000)]);
        let e = evaluate(&b, &[], Some(&coupon("c", bxgy(2, 1, FULL_BPS))));
        assert_eq!(e.discount, 1_000);
        // Mixed prices: the cheapest unit is free.
        let b = basket(vec![
            line("A", "p", &[], 2, 1_000),
            line("B", "q", &[], 1, 400),
        ]);
        let e = evaluate(&b, &[], Some(&coupon("c", bxgy(2, 1, FULL_BPS))));
        assert_eq!(e.line_discounts, [0, 400]);
        // Five units make one group, six make two.
        let b = basket(vec![line("A", "p", &[], 5, 1_000)]);
        assert_eq!(
            evaluate(&b, &[], Some(&coupon("c", bxgy(2, 1, FULL_BPS)))).discount,
            1_000
        );
        let b = basket(vec![line("A", "p", &[], 6, 1_000)]);
        assert_eq!(
            evaluate(&b, &[], Some(&coupon("c", bxgy(2, 1, FULL_BPS)))).discount,
            2_000
        );
        // Half off the second unit, scoped to one SKU.
        let b = basket(vec![
            line("A", "p", &[], 2, 999),
            line("B", "q", &[], 4, 100),
        ]);
        let mut c = coupon("c", bxgy(1, 1, 5000));
        c.rule.scope.skus = vec!["A".into()];
        let e = evaluate(&b, &[], Some(&c));
        assert_eq!(e.line_discounts, [500, 0]); // 4.995 → 5.00 (half-even on 499.5 → 500)
        // Too few units: not applicable.
        let b = basket(vec![line("A", "p", &[], 2, 1_000)]);
        assert!(matches!(
            evaluate(&b, &[], Some(&coupon("c", bxgy(2, 1, FULL_BPS)))).coupon,
            CouponOutcome::NotApplicable(_)
        ));
    }

    #[test]
    fn buy_x_get_y_rewards_what_is_left_after_earlier_promotions() {
        let b = basket(vec![line("A", "p", &[], 3, 1_000)]);
        let auto = offer(rule("a", pct(1000)));
        let c = coupon(
            "c",
            Benefit::BuyXGetY {
                buy: 2,
                get: GetRule {
                    quantity: 1,
                    percent_off_bps: FULL_BPS,
                },
            },
        );
        let e = evaluate(&b, &[auto], Some(&c));
        // 10 % off 30.00 = 3.00; the free unit is worth 9.00 after it.
        assert_eq!(e.discount, 300 + 900);
    }

    #[test]
    fn free_shipping_takes_the_shipping_when_known() {
        let mut b = basket(vec![line("A", "p", &[], 1, 12_000)]);
        let mut fs = offer(rule("fs", Benefit::FreeShipping));
        fs.rule.min_subtotal = Some(10_000);
        let e = evaluate(&b, std::slice::from_ref(&fs), None);
        assert!(e.free_shipping);
        assert_eq!((e.discount, e.shipping_discount), (0, 0));
        b.shipping = Some(999);
        let e = evaluate(&b, std::slice::from_ref(&fs), Some(&coupon("c", pct(1000))));
        assert_eq!((e.discount, e.shipping_discount), (1_200, 999));
        // Two free-shipping promotions cannot give the shipping twice.
        let e = evaluate(&b, &[fs, offer(rule("fs2", Benefit::FreeShipping))], None);
        assert_eq!(e.shipping_discount, 999);
        let b = basket(vec![line("A", "p", &[], 1, 9_000)]);
        let mut only = coupon("fsc", Benefit::FreeShipping);
        only.rule.min_subtotal = Some(10_000);
        assert!(matches!(
            evaluate(&b, &[], Some(&only)).coupon,
            CouponOutcome::NotApplicable(_)
        ));
    }

    #[test]
    fn a_promotion_in_another_currency_does_not_apply() {
        let b = basket(vec![line("A", "p", &[], 1, 1_000)]);
        let mut c = coupon("c", pct(1000));
        c.rule.currency = Currency::parse("EUR").unwrap_or(Currency::USD);
        assert!(matches!(
            evaluate(&b, &[], Some(&c)).coupon,
            CouponOutcome::NotApplicable(_)
        ));
    }

    #[test]
    fn allocation_is_exact_and_respects_caps() {
        assert_eq!(allocate(100, &[1, 1, 1], &[100, 100, 100]), [34, 33, 33]);
        assert_eq!(allocate(10, &[0, 0], &[3, 20]), [3, 7]);
        assert_eq!(allocate(10, &[10, 0], &[4, 20]), [4, 6]);
        assert_eq!(allocate(50, &[1], &[20]), [20]);
        assert_eq!(allocate(-5, &[1], &[20]), [0]);
        assert!(allocate(5, &[], &[]).is_empty());
    }

    #[test]
    fn codes_are_compared_lower_cased() {
        assert_eq!(code_key(" Welcome10 "), "welcome10");
        assert!(valid_code("WELCOME-10_x"));
        assert!(!valid_code(""));
        assert!(!valid_code("with space"));
        assert!(!valid_code(&"x".repeat(65)));
    }

    fn input(kind: PromotionKind) -> PromotionInput {
        PromotionInput {
            name: "Spring".into(),
            code: Some("SPRING".into()),
            automatic: false,
            kind,
            value: None,
            buy: None,
            get: None,
            applies_to: None,
            min_subtotal: None,
            currency: None,
            starts_at: None,
            ends_at: None,
            usage_limit: None,
            per_customer_limit: None,
            budget: None,
            stackable: false,
            priority: 0,
            status: PromotionStatus::Active,
        }
    }

    fn fields_of(r: Result<(NewPromotion, References), ApiError>) -> Vec<String> {
        match r {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|f| f.field).collect(),
        }
    }

    #[test]
    fn bad_input_names_the_field() {
        let usd = Currency::USD;
        let money = |amount| MoneyInput {
            amount,
            currency: usd,
        };
        let mut i = input(PromotionKind::PercentOff);
        i.value = Some(PromotionValue::Bps(10_001));
        assert_eq!(fields_of(i.validate(usd)), ["value"]);
        i.value = Some(PromotionValue::Bps(-1));
        assert_eq!(fields_of(i.validate(usd)), ["value"]);
        i.value = Some(PromotionValue::Bps(1000));
        assert!(i.validate(usd).is_ok());
        let mut a = input(PromotionKind::AmountOff);
        a.value = Some(PromotionValue::Bps(500));
        assert_eq!(fields_of(a.validate(usd)), ["value"]);
        a.value = Some(PromotionValue::Money(money(-5)));
        assert_eq!(fields_of(a.validate(usd)), ["value.amount"]);
        a.value = Some(PromotionValue::Money(money(500)));
        a.min_subtotal = Some(money(0));
        a.budget = Some(MoneyInput {
            amount: 100,
            currency: Currency::parse("EUR").unwrap_or(usd),
        });
        assert_eq!(
            fields_of(a.validate(usd)),
            ["min_subtotal.amount", "budget.currency"]
        );
        let mut b = input(PromotionKind::BuyXGetY);
        assert_eq!(fields_of(b.validate(usd)), ["buy", "get"]);
        b.buy = Some(BuyInput {
            quantity: 0,
            skus: vec!["bad sku".into()],
            product_ids: vec![],
            category_ids: vec!["nope".into()],
        });
        b.get = Some(GetInput {
            quantity: 1,
            percent_off_bps: FULL_BPS,
        });
        assert_eq!(
            fields_of(b.validate(usd)),
            ["buy.quantity", "buy.skus[0]", "buy.category_ids[0]"]
        );
        let mut w = input(PromotionKind::FreeShipping);
        w.starts_at = Some(NOW);
        w.ends_at = Some(NOW);
        w.usage_limit = Some(0);
        w.per_customer_limit = Some(-1);
        w.priority = 5000;
        assert_eq!(
            fields_of(w.validate(usd)),
            ["ends_at", "usage_limit", "per_customer_limit", "priority"]
        );
        let mut auto = input(PromotionKind::FreeShipping);
        auto.automatic = true;
        assert_eq!(fields_of(auto.validate(usd)), ["code"]);
        auto.code = None;
        assert!(auto.validate(usd).is_ok());
        let mut none = input(PromotionKind::FreeShipping);
        none.code = None;
        assert_eq!(fields_of(none.validate(usd)), ["code"]);
    }

    #[test]
    fn references_are_returned_for_the_service_to_check() {
        let mut i = input(PromotionKind::PercentOff);
        i.value = Some(PromotionValue::Bps(1000));
        i.applies_to = Some(ScopeInput {
            skus: vec!["mug-1".into(), "MUG-1".into()],
            product_ids: vec!["prd_X".into()],
            category_ids: vec!["cat_Y".into()],
        });
        let (p, refs) = i.validate(Currency::USD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.applies_to.skus, ["MUG-1"]);
        assert_eq!(
            refs.skus,
            [("applies_to.skus[0]".to_owned(), "MUG-1".to_owned())]
        );
        assert_eq!(refs.products.len(), 1);
        assert_eq!(refs.categories.len(), 1);
    }

    #[test]
    fn a_patch_is_validated_like_a_creation() {
        let mut i = input(PromotionKind::PercentOff);
        i.value = Some(PromotionValue::Bps(1000));
        i.starts_at = Some(NOW);
        let (p, _) = i.validate(Currency::USD).unwrap_or_else(|e| panic!("{e}"));
        let patch = PromotionPatch {
            ends_at: Some(Some(NOW.plus_secs(-1))),
            ..PromotionPatch::default()
        };
        assert!(patch.apply(&p).is_err());
        let patch = PromotionPatch {
            value: Some(PromotionValue::Bps(2000)),
            starts_at: Some(None),
            ..PromotionPatch::default()
        };
        let after = patch.apply(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((after.value, after.starts_at), (2000, None));
        assert_eq!(after.code.as_deref(), Some("SPRING"));
    }

    // --- properties ---

    fn arb_line() -> impl Strategy<Value = Line> {
        (0usize..6, 1i64..=10, 1i64..=200_000, 0usize..4).prop_map(|(sku, quantity, price, cat)| {
            let cats = ["cat_a", "cat_b", "cat_c", "cat_d"];
            line(
                &format!("SKU-{sku}"),
                &format!("prd_{}", sku % 3),
                &cats[..=cat],
                quantity,
                price,
            )
        })
    }

    fn arb_benefit() -> impl Strategy<Value = Benefit> {
        prop_oneof![
            (1i64..=FULL_BPS).prop_map(|bps| Benefit::PercentOff { bps }),
            (1i64..=500_000).prop_map(|amount| Benefit::AmountOff { amount }),
            Just(Benefit::FreeShipping),
            (1i64..=4, 1i64..=3, 1i64..=FULL_BPS).prop_map(|(buy, q, bps)| Benefit::BuyXGetY {
                buy,
                get: GetRule {
                    quantity: q,
                    percent_off_bps: bps
                }
            }),
        ]
    }

    fn arb_scope() -> impl Strategy<Value = Scope> {
        prop_oneof![
            Just(Scope::default()),
            (0usize..6).prop_map(|s| Scope {
                skus: vec![format!("SKU-{s}")],
                ..Scope::default()
            }),
            (0usize..3).prop_map(|p| Scope {
                product_ids: vec![format!("prd_{p}")],
                ..Scope::default()
            }),
            prop::sample::select(vec!["cat_a", "cat_b", "cat_d"]).prop_map(|c| Scope {
                category_ids: vec![c.to_owned()],
                ..Scope::default()
            }),
        ]
    }

    fn arb_offer(id: usize) -> impl Strategy<Value = Offer> {
        (
            arb_benefit(),
            arb_scope(),
            any::<bool>(),
            -3i64..3,
            prop::option::of(0i64..300_000),
            prop::option::of(0i64..2_000_000),
        )
            .prop_map(move |(benefit, scope, stackable, priority, budget, min)| {
                let mut r = rule(&format!("prm_{id}"), benefit);
                r.scope = scope;
                r.stackable = stackable;
                r.priority = priority;
                r.min_subtotal = min;
                Offer {
                    rule: r,
                    uses_left: None,
                    customer_uses_left: None,
                    budget_left: budget,
                }
            })
    }

    fn arb_case() -> impl Strategy<Value = (Basket, Vec<Offer>, Option<Offer>)> {
        (
            prop::collection::vec(arb_line(), 1..6),
            prop::option::of(0i64..3_000),
            prop::collection::vec(0usize..1, 0..4),
            prop::option::of(arb_offer(99)),
        )
            .prop_flat_map(|(lines, shipping, n, c)| {
                let offers: Vec<_> = (0..n.len()).map(arb_offer).collect();
                (Just(lines), Just(shipping), offers, Just(c))
            })
            .prop_map(|(lines, shipping, autos, c)| {
                let mut b = basket(lines);
                b.shipping = shipping;
                let c = c.map(|mut c| {
                    c.rule.automatic = false;
                    c.rule.code = Some("CODE".into());
                    c
                });
                (b, autos, c)
            })
    }

    fn worth(e: &Evaluation) -> i64 {
        e.discount + e.shipping_discount
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn discounts_never_exceed_a_line_and_always_add_up((b, autos, c) in arb_case()) {
            let e = evaluate(&b, &autos, c.as_ref());
            prop_assert_eq!(e.line_discounts.len(), b.lines.len());
            for (l, d) in b.lines.iter().zip(&e.line_discounts) {
                prop_assert!(*d >= 0 && *d <= l.total(), "line {} discount {}", l.total(), d);
            }
            prop_assert_eq!(e.line_discounts.iter().sum::<i64>(), e.discount);
            prop_assert_eq!(e.applied.iter().map(|a| a.amount).sum::<i64>(), e.discount);
            for a in &e.applied {
                prop_assert_eq!(a.lines.iter().map(|l| l.amount).sum::<i64>(), a.amount);
                prop_assert!(a.lines.iter().all(|l| l.amount >= 0));
                prop_assert!(a.shipping >= 0);
            }
            prop_assert!(b.subtotal() - e.discount >= 0);
            prop_assert!(e.shipping_discount <= b.shipping.unwrap_or(0));
        }

        #[test]
        fn a_budget_is_never_exceeded((b, autos, c) in arb_case()) {
            let e = evaluate(&b, &autos, c.as_ref());
            for a in &e.applied {
                let o = autos.iter().chain(c.iter()).find(|o| o.rule.id == a.promotion_id);
                if let Some(limit) = o.and_then(|o| o.budget_left) {
                    prop_assert!(a.value() <= limit);
                }
            }
        }

        #[test]
        fn the_best_alternative_for_the_customer_wins((b, autos, c) in arb_case()) {
            let e = evaluate(&b, &autos, c.as_ref());
            // No exclusive promotion alone would have been worth more than what was chosen.
            for o in autos.iter().chain(c.iter()).filter(|o| !o.rule.stackable) {
                let mut alone = o.clone();
                alone.rule.automatic = true;
                let alt = evaluate(&b, &[alone], None);
                prop_assert!(worth(&alt) <= worth(&e), "{} alone is worth {} > {}", o.rule.id, worth(&alt), worth(&e));
            }
            // An exclusive promotion is never combined.
            if e.applied.len() > 1 {
                for a in &e.applied {
                    let o = autos.iter().chain(c.iter()).find(|o| o.rule.id == a.promotion_id);
                    prop_assert!(o.is_some_and(|o| o.rule.stackable));
                }
            }
        }

        #[test]
        fn the_answer_does_not_depend_on_the_order_of_the_offers((b, autos, c) in arb_case()) {
            let e = evaluate(&b, &autos, c.as_ref());
            let mut reversed = autos.clone();
            reversed.reverse();
            prop_assert_eq!(&e, &evaluate(&b, &reversed, c.as_ref()));
            prop_assert_eq!(&e, &evaluate(&b, &autos, c.as_ref()));
        }

        #[test]
        fn extreme_amounts_neither_panic_nor_break_the_invariants(
            lines in prop::collection::vec((1i64..=1_000_000, 1i64..=i64::MAX / 4), 1..4),
            bps in 1i64..=FULL_BPS,
            amount in 1i64..=i64::MAX,
            budget in prop::option::of(0i64..=i64::MAX),
            buy in 1i64..=1_000,
            get in 1i64..=1_000,
        ) {
            let b = basket(
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, (q, p))| line(&format!("S{i}"), "p", &["c"], *q, *p))
                    .collect(),
            );
            let get = GetRule { quantity: get, percent_off_bps: bps };
            for benefit in [pct(bps), off(amount), Benefit::BuyXGetY { buy, get }] {
                let mut o = offer(rule("x", benefit));
                o.budget_left = budget;
                let e = evaluate(&b, std::slice::from_ref(&o), None);
                for (l, d) in b.lines.iter().zip(&e.line_discounts) {
                    prop_assert!(*d >= 0 && *d <= l.total());
                }
                prop_assert_eq!(e.line_discounts.iter().fold(0i64, |a, d| a.saturating_add(*d)), e.discount);
            }
        }

        #[test]
        fn allocation_sums_exactly_within_caps(
            total in -10i64..1_000_000,
            entries in prop::collection::vec((0i64..100_000, 0i64..100_000), 0..8),
        ) {
            let weights: Vec<i64> = entries.iter().map(|e| e.0).collect();
            let caps: Vec<i64> = entries.iter().map(|e| e.1).collect();
            let parts = allocate(total, &weights, &caps);
            let cap_sum: i64 = caps.iter().sum();
            prop_assert_eq!(parts.iter().sum::<i64>(), total.max(0).min(cap_sum));
            for (p, c) in parts.iter().zip(&caps) {
                prop_assert!(*p >= 0 && p <= c);
            }
        }
    }
}
