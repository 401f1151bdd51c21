//! Fraud use cases: scoring a payment (memory only), storing its decision in the checkout's
//! transaction, holding and reviewing orders, rules and blocklist administration, the
//! feature store and the model.

use super::model::{
    self, Action, BlockEntry, BlockEntryId, BlockKind, Contribution, Counts, CustomerFeatures,
    DecisionId, Defaults, Metrics, Model, ReviewId, Rule, RuleName, RulePatch, Sample, Signals,
    Verdict,
};
use super::store::{DecisionRow, FeatureDoc, FraudStore, ModelRow, ReviewRow};
use crate::orders::OrderService;
use crate::orders::model::OrderRisk;
use mercato_events::fraud::{FraudBlocked, FraudFlagged, FraudReviewApproved, FraudReviewRejected};
use mercato_events::identity::UserRegistered;
use mercato_events::orders::OrderDelivered;
use mercato_events::payments::{PaymentChargeback, PaymentDeclined};
use mercato_kernel::auth::Principal;
use mercato_kernel::db::{StoreError, Tx};
use mercato_kernel::error::{ApiError, Code};
use mercato_kernel::jobs::Outcome;
use mercato_kernel::outbox::{self, Event, EventHandler, EventPayload, NewEvent};
use mercato_kernel::{Kernel, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// A sliding-window event counter (velocity rules). In process now; a shared store (Redis)
/// implements the same trait when nodes scale out.
pub trait WindowCounter: Send + Sync + 'static {
    /// Counts one event for `key` at `now` and answers how many of its events fall within the
    /// last `window`, this one included.
    fn hit(&self, key: &str, now: Timestamp, window: Duration) -> u64;
    /// Forgets keys with no event within `horizon` (memory hygiene).
    fn sweep(&self, now: Timestamp, horizon: Duration);
}

/// The in-process [`WindowCounter`]: a log of event times per key (at most 10,000 kept per
/// key), pruned on every hit.
/// Held-out samples needed (with at least two of each class) before a retrained model is
/// compared with the serving one; below it the new model serves on its own metrics.
const MIN_HELD_OUT_TO_COMPARE: usize = 20;

#[derive(Default)]
pub struct MemoryWindowCounter {
    keys: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl WindowCounter for MemoryWindowCounter {
    fn hit(&self, key: &str, now: Timestamp, window: Duration) -> u64 {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let log = keys.entry(key.to_owned()).or_default();
        let from = now.minus(window).as_micros();
        while log.front().is_some_and(|t| *t <= from) {
            log.pop_front();
        }
        if log.len() >= 10_000 {
            log.pop_front();
        }
        log.push_back(now.as_micros());
        log.len() as u64
    }

    fn sweep(&self, now: Timestamp, horizon: Duration) {
        let from = now.minus(horizon).as_micros();
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, log| log.back().is_some_and(|t| *t > from));
    }
}

/// What the pay request knows about its client (from headers).
#[derive(Clone, Debug, Default)]
pub struct ClientSignals {
    pub ip: String,
    /// From the trusted country header (`fraud_country_header`), when present.
    pub country: Option<String>,
    /// `X-Device-Id` from the storefront.
    pub device_id: Option<String>,
}

/// A payment about to be charged, as checkout describes it.
#[derive(Clone, Debug)]
pub struct Payment<'a> {
    pub checkout_id: &'a str,
    pub customer_id: &'a str,
    pub email: Option<&'a str>,
    /// When the buyer's account was created (`None` for guests: treated as brand new).
    pub registered_at: Option<Timestamp>,
    pub amount: mercato_kernel::Money,
    pub shipping_country: &'a str,
    pub shipping_address: &'a serde_json::Value,
    pub card: Option<&'a crate::gateway::CardDetails>,
    pub client: &'a ClientSignals,
}

/// A scored payment: its decision, not yet stored (checkout stores it with its intent).
#[derive(Clone, Debug)]
pub struct Assessment {
    pub verdict: Verdict,
    pub reason: String,
    row: DecisionRow,
}

impl Assessment {
    pub fn score(&self) -> f64 {
        self.row.score
    }
}

/// A review as the queue shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Review {
    pub id: String,
    pub order_id: String,
    pub customer_id: String,
    /// `open`, `approved` or `rejected`.
    pub status: String,
    pub score: f64,
    pub reasons: Vec<String>,
    pub top_features: Vec<Contribution>,
    pub amount: mercato_kernel::Money,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub created_at: Timestamp,
    pub decided_at: Option<Timestamp>,
}

/// The serving model as `GET /admin/fraud/model` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    /// 0 = the built-in prior (nothing trained yet).
    pub version: i64,
    pub trained_at: Option<Timestamp>,
    pub samples: i64,
    /// On the held-out fifth of the labelled history (absent for the built-in prior).
    pub metrics: Option<Metrics>,
    pub features: Vec<String>,
    /// Features with their weights (per standard deviation).
    #[schema(value_type = Object)]
    pub weights: BTreeMap<String, f64>,
}

/// Counts per rule in `GET /admin/fraud/stats`.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct RuleStats {
    pub rule: String,
    pub flags: i64,
    pub blocks: i64,
    pub labelled_fraud: i64,
    pub labelled_legit: i64,
    /// Of this rule's flags and blocks later labelled, the share labelled legitimate (`null`
    /// until one is labelled).
    pub false_positive_rate: Option<f64>,
}

/// Named `FraudStats` in the OpenAPI document (links has a `Stats` schema too).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FraudStats)]
pub struct Stats {
    /// Decisions of the last 90 days by verdict.
    #[schema(value_type = Object)]
    pub decisions: BTreeMap<String, i64>,
    pub rules: Vec<RuleStats>,
    /// Reviews by status.
    #[schema(value_type = Object)]
    pub reviews: BTreeMap<String, i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FraudError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Api(ApiError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for FraudError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => FraudError::NotFound,
            other => FraudError::Unexpected(other.into()),
        }
    }
}

impl From<sqlx::Error> for FraudError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<FraudError> for ApiError {
    fn from(e: FraudError) -> ApiError {
        match e {
            FraudError::NotFound => ApiError::not_found(),
            FraudError::Api(e) => e,
            FraudError::Unexpected(e) => ApiError::from(e),
        }
    }
}

#[derive(Clone)]
pub struct FraudService {
    inner: Arc<Inner>,
}

struct Serving {
    model: Model,
    row: Option<ModelRow>,
}

struct Inner {
    kernel: Kernel,
    store: FraudStore,
    orders: OrderService,
    defaults: Defaults,
    /// Rules whose built-in configuration starts disabled (`fraud_rules_off`).
    rules_off: Vec<RuleName>,
    block_at: f64,
    review_at: f64,
    rules: RwLock<Arc<Vec<Rule>>>,
    blocklist: RwLock<Arc<HashSet<(BlockKind, String)>>>,
    features: RwLock<Arc<HashMap<String, CustomerFeatures>>>,
    serving: RwLock<Arc<Serving>>,
    counter: Arc<dyn WindowCounter>,
    geo: Mutex<HashMap<String, (&'static str, Timestamp)>>,
    /// Database reads made to fill the caches the scoring path reads (tests assert that
    /// scoring itself never adds to it).
    cache_loads: AtomicU64,
    /// Serialises training runs (one at a time, on demand or daily).
    training: tokio::sync::Mutex<()>,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|e| e.into_inner()) = v;
}

fn api(e: impl Into<ApiError>) -> FraudError {
    FraudError::Api(e.into())
}

/// A key of the shipping address that ignores case and spacing (for "distinct addresses").
fn address_key(a: &serde_json::Value) -> String {
    let part = |k: &str| {
        a.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    [part("line1"), part("postal_code"), part("country")].join("|")
}

impl FraudService {
    pub fn new(kernel: Kernel, orders: OrderService) -> FraudService {
        let s = &kernel.settings;
        let defaults = Defaults {
            review_amount: s.fraud_review_amount,
            block_amount: s.fraud_block_amount,
            max_attempts_per_hour: s.fraud_max_attempts_per_hour,
        };
        let permille = |v: i64| (v.clamp(0, 1000) as f64) / 1000.0;
        let off: Vec<RuleName> = s
            .fraud_rules_off
            .split(',')
            .filter_map(|n| RuleName::parse(n.trim()))
            .collect();
        let defaults_off = off.clone();
        FraudService {
            inner: Arc::new(Inner {
                store: FraudStore::new(kernel.db.clone()),
                orders,
                defaults,
                block_at: permille(s.fraud_block_score_permille),
                review_at: permille(s.fraud_review_score_permille),
                rules: RwLock::new(Arc::new(
                    RuleName::ALL
                        .iter()
                        .map(|n| Rule::default_for(*n, defaults))
                        .map(|mut r| {
                            r.enabled &= !defaults_off.contains(&r.name);
                            r
                        })
                        .collect(),
                )),
                rules_off: off,
                blocklist: RwLock::new(Arc::new(HashSet::new())),
                features: RwLock::new(Arc::new(HashMap::new())),
                serving: RwLock::new(Arc::new(Serving {
                    model: Model::builtin(),
                    row: None,
                })),
                counter: Arc::new(MemoryWindowCounter::default()),
                geo: Mutex::new(HashMap::new()),
                cache_loads: AtomicU64::new(0),
                training: tokio::sync::Mutex::new(()),
                kernel,
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.kernel.clock.now()
    }

    /// A rule's built-in configuration (disabled when listed in `fraud_rules_off`).
    fn builtin(&self, name: RuleName) -> Rule {
        let mut r = Rule::default_for(name, self.inner.defaults);
        r.enabled &= !self.inner.rules_off.contains(&name);
        r
    }

    /// Database reads made so far to fill the scoring caches.
    pub fn cache_loads(&self) -> u64 {
        self.inner.cache_loads.load(Ordering::Relaxed)
    }

    // --- scoring (memory only) ---------------------------------------------------------

    /// Scores a payment about to be charged: rules over in-memory counters, blocklist and
    /// cached features, then the model. Never touches the database. Counts the payment in
    /// the velocity windows and remembers its client country for geo velocity.
    pub fn assess(&self, p: &Payment<'_>) -> Assessment {
        let started = std::time::Instant::now();
        let now = self.now();
        let rules = read(&self.inner.rules);
        let features = read(&self.inner.features);
        let f = features.get(p.customer_id).cloned().unwrap_or_default();
        let account_age_days = p
            .registered_at
            .or(f.registered_at)
            .map(|at| now.since(at).as_secs_f64() / 86_400.0)
            .unwrap_or(0.0);
        let signals = Signals {
            customer_id: p.customer_id.to_owned(),
            email: p.email.map(str::to_owned),
            amount: p.amount.amount,
            shipping_country: p.shipping_country.to_owned(),
            address_key: address_key(p.shipping_address),
            card_fingerprint: p.card.map(|c| c.fingerprint.clone()),
            card_country: p.card.map(|c| c.country.clone()),
            ip: p.client.ip.clone(),
            ip_country: p.client.country.clone(),
            device_id: p.client.device_id.clone(),
            account_age_days,
        };
        let window = |name: RuleName, default: i64| {
            let secs = rules
                .iter()
                .find(|r| r.name == name)
                .and_then(|r| r.thresholds.get("window_secs").copied())
                .unwrap_or(default);
            Duration::from_secs(secs.max(1) as u64)
        };
        let counter = &self.inner.counter;
        let card_uses = match &signals.card_fingerprint {
            Some(fp) => counter.hit(&format!("card:{fp}"), now, window(RuleName::Velocity, 600)),
            None => 0,
        };
        let customer_attempts = counter.hit(
            &format!("customer:{}", p.customer_id),
            now,
            window(RuleName::PaymentAttempts, 3600),
        );
        let previous_geo = {
            let mut geo = self.inner.geo.lock().unwrap_or_else(|e| e.into_inner());
            let prev = geo.get(p.customer_id).copied();
            if let Some(c) = signals.ip_country.as_deref().and_then(model::known_country) {
                if geo.len() >= 1_000_000 {
                    geo.clear();
                }
                geo.insert(p.customer_id.to_owned(), (c, now));
            }
            prev
        };
        let blocked: Vec<BlockKind> = {
            let list = read(&self.inner.blocklist);
            let mut out = Vec::new();
            let mut check = |kind: BlockKind, v: Option<&str>| {
                if let Some(v) = v.and_then(|v| kind.normalise(v))
                    && list.contains(&(kind, v))
                {
                    out.push(kind);
                }
            };
            check(BlockKind::Email, signals.email.as_deref());
            check(
                BlockKind::CardFingerprint,
                signals.card_fingerprint.as_deref(),
            );
            check(BlockKind::Ip, Some(signals.ip.as_str()));
            check(BlockKind::DeviceId, signals.device_id.as_deref());
            out
        };
        let counts = Counts {
            card_uses,
            customer_attempts,
            previous_geo,
        };
        let hits = model::evaluate(&rules, &signals, &counts, &blocked, now);
        let serving = read(&self.inner.serving);
        let x = model::feature_vector(&f, &signals, card_uses, account_age_days);
        let score = serving.model.score(&x);
        let top = serving.model.explain(&x, 3);
        let (verdict, reasons) =
            model::decide(&hits, score, self.inner.block_at, self.inner.review_at);
        metrics::histogram!("fraud_decision_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("fraud_decisions_total", "decision" => verdict.as_str()).increment(1);
        Assessment {
            verdict,
            reason: if reasons.is_empty() {
                "no rule fired".to_owned()
            } else {
                reasons.join("; ")
            },
            row: DecisionRow {
                id: DecisionId::new().into_string(),
                checkout_id: p.checkout_id.to_owned(),
                customer_id: p.customer_id.to_owned(),
                order_id: None,
                amount: p.amount.amount,
                currency: p.amount.currency.as_str().to_owned(),
                decision: verdict,
                score,
                reasons,
                rules: hits,
                features: FeatureDoc {
                    vector: x,
                    top,
                    model_version: serving.model.version,
                },
                signals,
                label: None,
                created_at: now,
            },
        }
    }

    /// Stores a decision in the caller's (the checkout's intent) transaction; a block also
    /// writes `fraud.blocked`.
    pub async fn record_tx(tx: &mut Tx, a: &Assessment, now: Timestamp) -> Result<(), StoreError> {
        FraudStore::insert_decision_tx(tx, &a.row).await?;
        if a.verdict == Verdict::Block {
            outbox::append(
                tx,
                now,
                NewEvent::of(&FraudBlocked {
                    checkout_id: a.row.checkout_id.clone(),
                    customer_id: a.row.customer_id.clone(),
                    decision_id: a.row.id.clone(),
                    score: a.row.score,
                    reasons: a.row.reasons.clone(),
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// Links the checkout's decision to the order it became, in the checkout's settling
    /// transaction; a `review` decision holds the order (it cannot be fulfilled until
    /// approved), opens its review and writes `fraud.flagged`. Returns whether it is held.
    pub async fn attach_order_tx(
        tx: &mut Tx,
        checkout_id: &str,
        order_id: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let Some(d) = FraudStore::latest_decision_tx(tx, checkout_id).await? else {
            return Ok(false);
        };
        FraudStore::set_decision_order_tx(tx, &d.id, order_id).await?;
        if d.decision != Verdict::Review {
            return Ok(false);
        }
        let review_id = ReviewId::new().into_string();
        if FraudStore::insert_review_tx(tx, &review_id, &d, order_id, now).await? {
            OrderService::set_review_hold_tx(tx, order_id, true, "fraud", now).await?;
            outbox::append(
                tx,
                now,
                NewEvent::of(&FraudFlagged {
                    order_id: Some(order_id.to_owned()),
                    checkout_id: checkout_id.to_owned(),
                    customer_id: d.customer_id.clone(),
                    decision: "review".to_owned(),
                    reason: d.reasons.join("; "),
                }),
            )
            .await?;
        }
        Ok(true)
    }

    /// The decision behind an order, for admins.
    pub async fn risk_of_order(&self, order_id: &str) -> Result<Option<OrderRisk>, FraudError> {
        Ok(self
            .inner
            .store
            .decision_by_order(order_id)
            .await?
            .map(|d| OrderRisk {
                score: d.score,
                decision: d.decision.as_str().to_owned(),
                reasons: d.reasons,
            }))
    }

    // --- caches --------------------------------------------------------------------------

    /// Reloads rules, blocklist and the serving model, and recomputes the feature store (the
    /// background job; also run once at start-up).
    pub async fn refresh(&self) -> anyhow::Result<Outcome> {
        self.reload_rules().await?;
        self.reload_blocklist().await?;
        self.reload_model().await?;
        self.refresh_features().await?;
        let now = self.now();
        self.inner.counter.sweep(now, Duration::from_secs(86_400));
        Ok(Outcome::Idle)
    }

    async fn reload_rules(&self) -> Result<(), FraudError> {
        self.inner.cache_loads.fetch_add(1, Ordering::Relaxed);
        let stored = self.inner.store.rules().await?;
        let rules: Vec<Rule> = RuleName::ALL
            .iter()
            .map(|n| {
                stored
                    .iter()
                    .find(|r| r.name == *n)
                    .cloned()
                    .map(|mut r| {
                        r.description = Rule::default_for(*n, self.inner.defaults).description;
                        r
                    })
                    .unwrap_or_else(|| self.builtin(*n))
            })
            .collect();
        write(&self.inner.rules, Arc::new(rules));
        Ok(())
    }

    async fn reload_blocklist(&self) -> Result<(), FraudError> {
        self.inner.cache_loads.fetch_add(1, Ordering::Relaxed);
        let set = self
            .inner
            .store
            .blocklist_all()
            .await?
            .into_iter()
            .map(|e| (e.kind, e.value))
            .collect();
        write(&self.inner.blocklist, Arc::new(set));
        Ok(())
    }

    async fn reload_model(&self) -> Result<(), FraudError> {
        self.inner.cache_loads.fetch_add(1, Ordering::Relaxed);
        if let Some(row) = self.inner.store.latest_model().await? {
            let current = read(&self.inner.serving);
            if current.model.version != row.version {
                write(
                    &self.inner.serving,
                    Arc::new(Serving {
                        model: row.model.clone(),
                        row: Some(row),
                    }),
                );
            }
        }
        Ok(())
    }

    /// Recomputes every customer's features from the fraud module's own history (its
    /// decisions, labelled by chargeback and delivery events, and accounts from
    /// `user.registered`) and swaps the cache.
    pub async fn refresh_features(&self) -> Result<usize, FraudError> {
        self.inner.cache_loads.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        let history = self
            .inner
            .store
            .history(now.minus(Duration::from_secs(90 * 86_400)), 500_000)
            .await?;
        let accounts = self.inner.store.accounts().await?;
        let features = model::compute_features(&history, &accounts, now);
        let n = features.len();
        write(&self.inner.features, Arc::new(features));
        Ok(n)
    }

    /// The cached features of a customer (defaults when unknown).
    pub fn features_of(&self, customer_id: &str) -> CustomerFeatures {
        read(&self.inner.features)
            .get(customer_id)
            .cloned()
            .unwrap_or_default()
    }

    // --- rules and blocklist ---------------------------------------------------------------

    pub fn rules(&self) -> Vec<Rule> {
        read(&self.inner.rules).as_ref().clone()
    }

    /// Changes one rule (422 with the field for a bad configuration, changing nothing).
    pub async fn update_rule(&self, name: &str, patch: RulePatch) -> Result<Rule, FraudError> {
        let name = RuleName::parse(name).ok_or(FraudError::NotFound)?;
        let current = self
            .rules()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| self.builtin(name));
        let next = patch.apply(&current).map_err(api)?;
        self.inner.store.put_rule(&next, self.now()).await?;
        self.reload_rules().await?;
        Ok(next)
    }

    pub async fn blocklist(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<BlockEntry>, FraudError> {
        Ok(self.inner.store.blocklist_page(after, limit).await?)
    }

    pub async fn add_block(
        &self,
        actor: &Principal,
        kind: &str,
        value: &str,
        reason: Option<String>,
    ) -> Result<BlockEntry, FraudError> {
        let mut v = mercato_kernel::error::Validator::new();
        let kind = BlockKind::parse(kind);
        v.check(
            kind.is_some(),
            "kind",
            "kind must be email, card_fingerprint, ip or device_id",
        );
        let value = kind.and_then(|k| k.normalise(value));
        if kind.is_some() {
            v.check(value.is_some(), "value", "not a valid value for this kind");
        }
        v.check(
            reason.as_ref().is_none_or(|r| r.chars().count() <= 500),
            "reason",
            "at most 500 characters",
        );
        v.finish().map_err(api)?;
        let (Some(kind), Some(value)) = (kind, value) else {
            return Err(api(ApiError::invalid("value", "not a valid value")));
        };
        let e = BlockEntry {
            id: BlockEntryId::new().into_string(),
            kind,
            value,
            reason,
            created_at: self.now(),
        };
        match self.inner.store.add_block(&e, &actor.subject).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(api(
                    ApiError::new(Code::Conflict).detail("this value is already on the blocklist")
                ));
            }
            Err(other) => return Err(other.into()),
        }
        self.reload_blocklist().await?;
        Ok(e)
    }

    pub async fn remove_block(
        &self,
        actor: &Principal,
        id: &str,
    ) -> Result<BlockEntry, FraudError> {
        let e = self
            .inner
            .store
            .remove_block(id, &actor.subject, self.now())
            .await?
            .ok_or(FraudError::NotFound)?;
        self.reload_blocklist().await?;
        Ok(e)
    }

    // --- reviews ---------------------------------------------------------------------------

    fn review_view(r: ReviewRow) -> Review {
        let currency = mercato_kernel::Currency::parse(&r.decision.currency)
            .unwrap_or(mercato_kernel::Currency::USD);
        Review {
            id: r.id,
            order_id: r.order_id,
            customer_id: r.customer_id,
            status: r.status,
            score: r.decision.score,
            reasons: r.decision.reasons,
            top_features: r.decision.features.top,
            amount: mercato_kernel::Money::new(r.decision.amount, currency),
            decided_by: r.decided_by,
            decision_reason: r.decision_reason,
            created_at: r.created_at,
            decided_at: r.decided_at,
        }
    }

    pub async fn reviews(
        &self,
        status: Option<&str>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Review>, FraudError> {
        Ok(self
            .inner
            .store
            .reviews(status, after, limit)
            .await?
            .into_iter()
            .map(Self::review_view)
            .collect())
    }

    pub async fn review(&self, id: &str) -> Result<Review, FraudError> {
        self.inner
            .store
            .review(id)
            .await?
            .map(Self::review_view)
            .ok_or(FraudError::NotFound)
    }

    /// Approves a review: the order's hold is released (it may now be fulfilled) and the
    /// decision is labelled legitimate. Only an open review can be approved; approving an
    /// approved one again answers it unchanged; a rejected one is 409 `review_decided`.
    pub async fn approve(&self, actor: &Principal, id: &str) -> Result<Review, FraudError> {
        let r = self
            .inner
            .store
            .review(id)
            .await?
            .ok_or(FraudError::NotFound)?;
        let now = self.now();
        let mut tx = self.inner.store.db().begin().await?;
        let won = FraudStore::decide_review_tx(&mut tx, id, "approved", &actor.subject, None, now)
            .await?;
        if !won {
            tx.rollback().await?;
            return self.already_decided(id, "approved").await;
        }
        OrderService::set_review_hold_tx(&mut tx, &r.order_id, false, &actor.subject, now).await?;
        FraudStore::label_order_tx(&mut tx, &r.order_id, "legit").await?;
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&FraudReviewApproved {
                review_id: id.to_owned(),
                order_id: r.order_id.clone(),
                customer_id: r.customer_id.clone(),
                actor: actor.subject.clone(),
            }),
        )
        .await?;
        tx.commit().await?;
        self.review(id).await
    }

    /// Rejects a review as fraud: the order is cancelled and refunded in full (exactly once:
    /// the review moves from `open` once, and the order's cancellation is itself conditional
    /// with a refund keyed by the order) and the decision is labelled fraud. Rejecting a
    /// rejected review again finishes a cancellation a crash interrupted.
    pub async fn reject(
        &self,
        actor: &Principal,
        id: &str,
        reason: &str,
    ) -> Result<Review, FraudError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(api(ApiError::invalid(
                "reason",
                "reason is required (≤ 500 chars)",
            )));
        }
        let r = self
            .inner
            .store
            .review(id)
            .await?
            .ok_or(FraudError::NotFound)?;
        let now = self.now();
        let mut tx = self.inner.store.db().begin().await?;
        let won = FraudStore::decide_review_tx(
            &mut tx,
            id,
            "rejected",
            &actor.subject,
            Some(reason),
            now,
        )
        .await?;
        if won {
            FraudStore::label_order_tx(&mut tx, &r.order_id, "fraud").await?;
            outbox::append(
                &mut tx,
                now,
                NewEvent::of(&FraudReviewRejected {
                    review_id: id.to_owned(),
                    order_id: r.order_id.clone(),
                    customer_id: r.customer_id.clone(),
                    actor: actor.subject.clone(),
                    reason: reason.to_owned(),
                }),
            )
            .await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
            let current = self
                .inner
                .store
                .review(id)
                .await?
                .ok_or(FraudError::NotFound)?;
            if current.status != "rejected" {
                return self.already_decided(id, "rejected").await;
            }
        }
        // The order's own cancel: conditional on its status, refund keyed by the order, so a
        // repeat (or a race with another canceller) never refunds twice.
        let system = Principal {
            subject: actor.subject.clone(),
            role: mercato_kernel::auth::Role::Admin,
        };
        match self
            .inner
            .orders
            .cancel(
                &system,
                &r.order_id,
                &format!("fraud review rejected: {reason}"),
            )
            .await
        {
            Ok(_) => {}
            // Already cancelled (or past cancelling): nothing more to give back here.
            Err(crate::orders::OrderError::Transition(_)) => {}
            Err(e) => return Err(api(e)),
        }
        self.review(id).await
    }

    async fn already_decided(&self, id: &str, wanted: &str) -> Result<Review, FraudError> {
        let current = self.review(id).await?;
        if current.status == wanted {
            return Ok(current);
        }
        Err(api(ApiError::new(Code::ReviewDecided)
            .detail(format!("the review is already {}", current.status))
            .with("status", current.status.clone())))
    }

    // --- stats -----------------------------------------------------------------------------

    pub async fn stats(&self) -> Result<Stats, FraudError> {
        let since = self.now().minus(Duration::from_secs(90 * 86_400));
        let outcomes = self.inner.store.outcomes(since).await?;
        let mut decisions: BTreeMap<String, i64> = ["allow", "review", "block"]
            .iter()
            .map(|d| ((*d).to_owned(), 0))
            .collect();
        let mut rules: BTreeMap<&'static str, RuleStats> = RuleName::ALL
            .iter()
            .map(|n| {
                (
                    n.as_str(),
                    RuleStats {
                        rule: n.as_str().to_owned(),
                        ..RuleStats::default()
                    },
                )
            })
            .collect();
        for (verdict, hits, label) in &outcomes {
            *decisions.entry(verdict.as_str().to_owned()).or_default() += 1;
            for h in hits {
                let Some(s) = rules.get_mut(h.rule.as_str()) else {
                    continue;
                };
                match h.action {
                    Action::Flag => s.flags += 1,
                    Action::Block => s.blocks += 1,
                }
                match label.as_deref() {
                    Some("fraud") => s.labelled_fraud += 1,
                    Some("legit") => s.labelled_legit += 1,
                    _ => {}
                }
            }
        }
        let rules = rules
            .into_values()
            .map(|mut s| {
                let labelled = s.labelled_fraud + s.labelled_legit;
                s.false_positive_rate =
                    (labelled > 0).then(|| s.labelled_legit as f64 / labelled as f64);
                s
            })
            .collect();
        let mut reviews: BTreeMap<String, i64> = ["open", "approved", "rejected"]
            .iter()
            .map(|d| ((*d).to_owned(), 0))
            .collect();
        for (k, v) in self.inner.store.review_counts().await? {
            reviews.insert(k, v);
        }
        Ok(Stats {
            decisions,
            rules,
            reviews,
        })
    }

    // --- model -----------------------------------------------------------------------------

    pub fn model_view(&self) -> ModelView {
        let serving = read(&self.inner.serving);
        let m = &serving.model;
        ModelView {
            version: m.version,
            trained_at: serving.row.as_ref().map(|r| r.trained_at),
            samples: serving.row.as_ref().map(|r| r.samples).unwrap_or(0),
            metrics: serving.row.as_ref().map(|r| r.metrics),
            features: model::FEATURES.iter().map(|f| (*f).to_owned()).collect(),
            weights: model::FEATURES
                .iter()
                .zip(&m.weights)
                .map(|(f, w)| ((*f).to_owned(), *w))
                .collect(),
        }
    }

    /// Trains a new model from the labelled decisions. The new model serves only if training
    /// succeeds and it is not worse (held-out AUC) than the one serving; otherwise 422
    /// `model_training_failed` and the previous model keeps serving.
    pub async fn train(&self) -> Result<ModelView, FraudError> {
        let _one = self.inner.training.lock().await;
        let labelled = self.inner.store.labelled(200_000).await?;
        let samples: Vec<Sample> = labelled
            .into_iter()
            .map(|(id, x, fraud)| Sample { id, x, fraud })
            .collect();
        let current = read(&self.inner.serving);
        let version = current.row.as_ref().map(|r| r.version).unwrap_or(0) + 1;
        let failed = |why: String| {
            metrics::counter!("fraud_model_trainings_total", "outcome" => "failed").increment(1);
            api(ApiError::new(Code::ModelTrainingFailed).detail(why))
        };
        if self.inner.kernel.failpoints.is_on("fraud.train") {
            return Err(failed("training failed (failpoint fraud.train)".into()));
        }
        let (model, metrics) = model::train(&samples, version, self.inner.review_at)
            .map_err(|e| failed(e.to_string()))?;
        // Champion/challenger on the same held-out set, once that set is large enough for
        // an AUC to mean something: with a handful of held-out samples (some of which the
        // serving model was trained on) one new label flips the comparison at random.
        if current.row.is_some() {
            let (_, held) = model::split(&samples);
            let frauds = held.iter().filter(|s| s.fraud).count();
            let comparable =
                held.len() >= MIN_HELD_OUT_TO_COMPARE && frauds >= 2 && held.len() - frauds >= 2;
            let old = model::evaluate_model(&current.model, &held, self.inner.review_at);
            if comparable && metrics.auc + 1e-9 < old.auc {
                return Err(failed(format!(
                    "the new model's held-out AUC {:.3} is below the serving model's {:.3}",
                    metrics.auc, old.auc
                )));
            }
        }
        let row = ModelRow {
            version,
            trained_at: self.now(),
            samples: samples.len() as i64,
            model: model.clone(),
            metrics,
        };
        self.inner.store.insert_model(&row).await?;
        write(
            &self.inner.serving,
            Arc::new(Serving {
                model,
                row: Some(row),
            }),
        );
        metrics::counter!("fraud_model_trainings_total", "outcome" => "trained").increment(1);
        Ok(self.model_view())
    }

    /// The daily training job: a failure is logged and the previous model keeps serving.
    pub async fn train_due(&self) -> anyhow::Result<Outcome> {
        if let Err(e) = self.train().await {
            let detail = match &e {
                FraudError::Api(a) => format!("{a:?}"),
                other => other.to_string(),
            };
            tracing::info!(error = %detail, "fraud model not retrained; the previous one keeps serving");
        }
        Ok(Outcome::Idle)
    }

    // --- outcomes from other modules' events -------------------------------------------------

    async fn apply_event(&self, event: &Event) -> anyhow::Result<()> {
        let now = self.now();
        let mut tx = self.inner.store.db().begin().await?;
        if !outbox::mark_processed(&mut tx, OUTCOMES, &event.id, now).await? {
            tx.rollback().await?;
            return Ok(());
        }
        match event.event_type.as_str() {
            t if t == UserRegistered::TYPE => {
                let u: UserRegistered = event.decode()?;
                FraudStore::add_account_tx(&mut tx, &u.user_id, event.occurred_at).await?;
            }
            t if t == PaymentDeclined::TYPE => {
                let d: PaymentDeclined = event.decode()?;
                FraudStore::mark_payment_failed_tx(&mut tx, &d.checkout_id).await?;
            }
            t if t == PaymentChargeback::TYPE => {
                let c: PaymentChargeback = event.decode()?;
                if let Some(order_id) = c.order_id {
                    FraudStore::label_order_tx(&mut tx, &order_id, "fraud").await?;
                }
            }
            t if t == OrderDelivered::TYPE => {
                let d: OrderDelivered = event.decode()?;
                FraudStore::label_order_tx(&mut tx, &d.order.order_id, "legit").await?;
            }
            _ => {}
        }
        tx.commit().await?;
        Ok(())
    }
}

const OUTCOMES: &str = "fraud.outcomes";

/// Learns outcomes from other modules' events: accounts (`user.registered`), failed payments
/// (`payment.declined`), labels (`payment.chargeback` = fraud, `order.delivered` = legitimate
/// unless disputed later).
pub struct FraudOutcomes(pub FraudService);

#[async_trait::async_trait]
impl EventHandler for FraudOutcomes {
    fn name(&self) -> &str {
        OUTCOMES
    }
    fn interested_in(&self, event_type: &str) -> bool {
        [
            UserRegistered::TYPE,
            PaymentDeclined::TYPE,
            PaymentChargeback::TYPE,
            OrderDelivered::TYPE,
        ]
        .contains(&event_type)
    }
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        self.0.apply_event(event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counter_slides() {
        let c = MemoryWindowCounter::default();
        let t0 = Timestamp::from_micros(1_700_000_000_000_000);
        let w = Duration::from_secs(600);
        assert_eq!(c.hit("k", t0, w), 1);
        assert_eq!(c.hit("k", t0.plus_secs(300), w), 2);
        // The first hit falls out of the window.
        assert_eq!(c.hit("k", t0.plus_secs(601), w), 2);
        assert_eq!(c.hit("other", t0, w), 1);
        c.sweep(t0.plus_secs(100_000), Duration::from_secs(86_400));
        assert_eq!(c.hit("k", t0.plus_secs(100_000), w), 1);
    }
}
