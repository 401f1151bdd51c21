//! SQL for the fraud module's own tables (migration 0040): rules, blocklist, decisions,
//! reviews, models and accounts. Methods ending in `_tx` run in the caller's transaction (the
//! checkout saga writes its decision with its intent, and holds the order with the order).
//! A review's status changes only through a conditional UPDATE from `open`.

use super::model::{
    BlockEntry, BlockKind, Contribution, History, Hit, Metrics, Model, Rule, Signals, Verdict,
};
use mercato_kernel::Timestamp;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use std::collections::HashMap;

fn g(e: sqlx::Error) -> StoreError {
    StoreError::Other(e.into())
}

fn bad(what: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("fraud: unreadable {what}"))
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Scores are stored as integer parts per million.
pub fn ppm(score: f64) -> i64 {
    (score.clamp(0.0, 1.0) * 1_000_000.0).round() as i64
}

fn unppm(v: i64) -> f64 {
    v as f64 / 1_000_000.0
}

/// The feature values of a decision and the ones that moved its score most.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FeatureDoc {
    pub vector: Vec<f64>,
    pub top: Vec<Contribution>,
    pub model_version: i64,
}

/// One stored decision.
#[derive(Clone, Debug)]
pub struct DecisionRow {
    pub id: String,
    pub checkout_id: String,
    pub customer_id: String,
    pub order_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub decision: Verdict,
    pub score: f64,
    pub reasons: Vec<String>,
    pub rules: Vec<Hit>,
    pub features: FeatureDoc,
    pub signals: Signals,
    pub label: Option<String>,
    pub created_at: Timestamp,
}

const DECISION_COLUMNS: &str = "id, checkout_id, customer_id, order_id, amount, currency, decision, \
    score_ppm, reasons, rules, features, signals, label, created_at";

fn decision_of(r: &Row) -> StoreResult<DecisionRow> {
    let decision: String = r.try_get("decision").map_err(g)?;
    let doc = |col: &str| -> StoreResult<String> { r.try_get::<String, _>(col).map_err(g) };
    Ok(DecisionRow {
        id: r.try_get("id").map_err(g)?,
        checkout_id: r.try_get("checkout_id").map_err(g)?,
        customer_id: r.try_get("customer_id").map_err(g)?,
        order_id: r.try_get("order_id").map_err(g)?,
        amount: r.try_get("amount").map_err(g)?,
        currency: r.try_get("currency").map_err(g)?,
        decision: Verdict::parse(&decision).ok_or_else(|| bad("decision"))?,
        score: unppm(r.try_get("score_ppm").map_err(g)?),
        reasons: serde_json::from_str(&doc("reasons")?).map_err(|_| bad("reasons"))?,
        rules: serde_json::from_str(&doc("rules")?).map_err(|_| bad("rules"))?,
        features: serde_json::from_str(&doc("features")?).map_err(|_| bad("features"))?,
        signals: serde_json::from_str(&doc("signals")?).map_err(|_| bad("signals"))?,
        label: r.try_get("label").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
    })
}

/// A review with its decision.
#[derive(Clone, Debug)]
pub struct ReviewRow {
    pub id: String,
    pub order_id: String,
    pub customer_id: String,
    pub status: String,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub created_at: Timestamp,
    pub decided_at: Option<Timestamp>,
    pub decision: DecisionRow,
}

fn review_of(r: &Row) -> StoreResult<ReviewRow> {
    Ok(ReviewRow {
        id: r.try_get("rid").map_err(g)?,
        order_id: r.try_get("rorder").map_err(g)?,
        customer_id: r.try_get("rcustomer").map_err(g)?,
        status: r.try_get("rstatus").map_err(g)?,
        decided_by: r.try_get("decided_by").map_err(g)?,
        decision_reason: r.try_get("decision_reason").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("rcreated").map_err(g)?),
        decided_at: r
            .try_get::<Option<i64>, _>("decided_at")
            .map_err(g)?
            .map(Timestamp::from_micros),
        decision: decision_of(r)?,
    })
}

const REVIEW_SELECT: &str = "SELECT r.id AS rid, r.order_id AS rorder, r.customer_id AS rcustomer, \
    r.status AS rstatus, r.decided_by, r.decision_reason, r.created_at AS rcreated, r.decided_at, \
    d.id, d.checkout_id, d.customer_id, d.order_id, d.amount, d.currency, d.decision, d.score_ppm, \
    d.reasons, d.rules, d.features, d.signals, d.label, d.created_at \
    FROM fraud_reviews r JOIN fraud_decisions d ON d.id = r.decision_id";

fn block_entry_of(r: &Row) -> StoreResult<BlockEntry> {
    let kind: String = r.try_get("kind").map_err(g)?;
    Ok(BlockEntry {
        id: r.try_get("id").map_err(g)?,
        kind: BlockKind::parse(&kind).ok_or_else(|| bad("blocklist kind"))?,
        value: r.try_get("value").map_err(g)?,
        reason: r.try_get("reason").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
    })
}

/// A stored model version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelRow {
    pub version: i64,
    pub trained_at: Timestamp,
    pub samples: i64,
    pub model: Model,
    pub metrics: Metrics,
}

#[derive(Clone)]
pub struct FraudStore {
    db: Db,
}

impl FraudStore {
    pub fn new(db: Db) -> FraudStore {
        FraudStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    // --- rules -------------------------------------------------------------------------

    /// The stored rule configurations (rules without a row run with their defaults).
    pub async fn rules(&self) -> StoreResult<Vec<Rule>> {
        let rows = sqlx::query("SELECT config FROM fraud_rules")
            .fetch_all(self.db.reader())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let c: String = r.try_get("config").map_err(g)?;
            // A row a newer version wrote in a shape this one cannot read is skipped (the
            // rule runs with its defaults) rather than stopping every payment.
            if let Ok(rule) = serde_json::from_str::<Rule>(&c) {
                out.push(rule);
            }
        }
        Ok(out)
    }

    pub async fn put_rule(&self, rule: &Rule, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO fraud_rules (name, config, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET config = $2, updated_at = $3",
        )
        .bind(rule.name.as_str())
        .bind(json(rule))
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        mercato_kernel::outbox::audit(
            &mut tx,
            now,
            "admin",
            "fraud.rule_updated",
            "fraud_rule",
            rule.name.as_str(),
            rule,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- blocklist ---------------------------------------------------------------------

    pub async fn blocklist_all(&self) -> StoreResult<Vec<BlockEntry>> {
        sqlx::query("SELECT id, kind, value, reason, created_at FROM fraud_blocklist")
            .fetch_all(self.db.reader())
            .await?
            .iter()
            .map(block_entry_of)
            .collect()
    }

    /// Newest first after the keyset `(created_at, id)`.
    pub async fn blocklist_page(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<BlockEntry>> {
        let (at, id) = after.unwrap_or((i64::MAX, String::new()));
        sqlx::query(
            "SELECT id, kind, value, reason, created_at FROM fraud_blocklist \
             WHERE created_at < $1 OR (created_at = $1 AND id < $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(at)
        .bind(&id)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(block_entry_of)
        .collect()
    }

    /// `Conflict` when the value is already listed.
    pub async fn add_block(&self, e: &BlockEntry, actor: &str) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO fraud_blocklist (id, kind, value, reason, created_at) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&e.id)
        .bind(e.kind.as_str())
        .bind(&e.value)
        .bind(e.reason.as_deref())
        .bind(e.created_at.as_micros())
        .execute(&mut *tx)
        .await?;
        mercato_kernel::outbox::audit(
            &mut tx,
            e.created_at,
            actor,
            "fraud.blocklist_added",
            "fraud_blocklist",
            &e.id,
            serde_json::json!({"kind": e.kind.as_str(), "value": e.value}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_block(
        &self,
        id: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Option<BlockEntry>> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(
            "DELETE FROM fraud_blocklist WHERE id = $1 RETURNING id, kind, value, reason, created_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let out = row.as_ref().map(block_entry_of).transpose()?;
        if out.is_some() {
            mercato_kernel::outbox::audit(
                &mut tx,
                now,
                actor,
                "fraud.blocklist_removed",
                "fraud_blocklist",
                id,
                serde_json::json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    // --- decisions ---------------------------------------------------------------------

    pub async fn insert_decision_tx(tx: &mut Tx, d: &DecisionRow) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO fraud_decisions ({DECISION_COLUMNS}) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
        ))
        .bind(&d.id)
        .bind(&d.checkout_id)
        .bind(&d.customer_id)
        .bind(d.order_id.as_deref())
        .bind(d.amount)
        .bind(&d.currency)
        .bind(d.decision.as_str())
        .bind(ppm(d.score))
        .bind(json(&d.reasons))
        .bind(json(&d.rules))
        .bind(json(&d.features))
        .bind(json(&d.signals))
        .bind(d.label.as_deref())
        .bind(d.created_at.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The newest decision of a checkout (its current payment attempt's).
    pub async fn latest_decision_tx(
        tx: &mut Tx,
        checkout_id: &str,
    ) -> StoreResult<Option<DecisionRow>> {
        sqlx::query(&format!(
            "SELECT {DECISION_COLUMNS} FROM fraud_decisions WHERE checkout_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(checkout_id)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(decision_of)
        .transpose()
    }

    pub async fn set_decision_order_tx(tx: &mut Tx, id: &str, order_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE fraud_decisions SET order_id = $1 WHERE id = $2")
            .bind(order_id)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn decision_by_order(&self, order_id: &str) -> StoreResult<Option<DecisionRow>> {
        sqlx::query(&format!(
            "SELECT {DECISION_COLUMNS} FROM fraud_decisions WHERE order_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(order_id)
        .fetch_optional(self.db.reader())
        .await?
        .as_ref()
        .map(decision_of)
        .transpose()
    }

    /// Labels the decision of an order: `fraud` always wins (a chargeback after an approval
    /// is still fraud); `legit` only labels what is not labelled yet.
    pub async fn label_order_tx(tx: &mut Tx, order_id: &str, label: &str) -> StoreResult<u64> {
        let sql = if label == "fraud" {
            "UPDATE fraud_decisions SET label = $1 WHERE order_id = $2"
        } else {
            "UPDATE fraud_decisions SET label = $1 WHERE order_id = $2 AND label IS NULL"
        };
        Ok(sqlx::query(sql)
            .bind(label)
            .bind(order_id)
            .execute(&mut **tx)
            .await?
            .rows_affected())
    }

    pub async fn mark_payment_failed_tx(tx: &mut Tx, checkout_id: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE fraud_decisions SET payment_failed = 1 WHERE checkout_id = $1 AND order_id IS NULL \
             AND decision <> 'block'",
        )
        .bind(checkout_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn add_account_tx(tx: &mut Tx, customer_id: &str, at: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO fraud_accounts (customer_id, registered_at) VALUES ($1, $2) \
             ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(customer_id)
        .bind(at.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Decisions since `since`, for the feature store.
    pub async fn history(&self, since: Timestamp, limit: i64) -> StoreResult<Vec<History>> {
        let rows = sqlx::query(
            "SELECT customer_id, amount, order_id, payment_failed, label, signals, created_at \
             FROM fraud_decisions WHERE created_at >= $1 AND decision <> 'block' \
             ORDER BY created_at DESC LIMIT $2",
        )
        .bind(since.as_micros())
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let signals: Signals =
                serde_json::from_str(&r.try_get::<String, _>("signals").map_err(g)?)
                    .unwrap_or_default();
            let label: Option<String> = r.try_get("label").map_err(g)?;
            out.push(History {
                customer_id: r.try_get("customer_id").map_err(g)?,
                amount: r.try_get("amount").map_err(g)?,
                ordered: r
                    .try_get::<Option<String>, _>("order_id")
                    .map_err(g)?
                    .is_some(),
                payment_failed: r.try_get::<i64, _>("payment_failed").map_err(g)? != 0,
                chargeback: label.as_deref() == Some("fraud"),
                device_id: signals.device_id,
                address_key: signals.address_key,
                at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
            });
        }
        Ok(out)
    }

    pub async fn accounts(&self) -> StoreResult<HashMap<String, Timestamp>> {
        let rows = sqlx::query("SELECT customer_id, registered_at FROM fraud_accounts")
            .fetch_all(self.db.reader())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("customer_id").map_err(g)?,
                    Timestamp::from_micros(r.try_get("registered_at").map_err(g)?),
                ))
            })
            .collect()
    }

    /// Labelled decisions: (id, features, label).
    pub async fn labelled(&self, limit: i64) -> StoreResult<Vec<(String, Vec<f64>, bool)>> {
        let rows = sqlx::query(
            "SELECT id, features, label FROM fraud_decisions WHERE label IS NOT NULL \
             ORDER BY created_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let f: FeatureDoc =
                serde_json::from_str(&r.try_get::<String, _>("features").map_err(g)?)
                    .unwrap_or_default();
            let label: String = r.try_get("label").map_err(g)?;
            out.push((r.try_get("id").map_err(g)?, f.vector, label == "fraud"));
        }
        Ok(out)
    }

    /// (decision, rules that fired, label) of decisions since `since`, for the stats.
    pub async fn outcomes(
        &self,
        since: Timestamp,
    ) -> StoreResult<Vec<(Verdict, Vec<Hit>, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT decision, rules, label FROM fraud_decisions WHERE created_at >= $1 \
             ORDER BY created_at DESC LIMIT 200000",
        )
        .bind(since.as_micros())
        .fetch_all(self.db.reader())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let d: String = r.try_get("decision").map_err(g)?;
            let rules: Vec<Hit> =
                serde_json::from_str(&r.try_get::<String, _>("rules").map_err(g)?)
                    .unwrap_or_default();
            out.push((
                Verdict::parse(&d).ok_or_else(|| bad("decision"))?,
                rules,
                r.try_get("label").map_err(g)?,
            ));
        }
        Ok(out)
    }

    // --- reviews -----------------------------------------------------------------------

    /// Opens the review of a held order (once per order).
    pub async fn insert_review_tx(
        tx: &mut Tx,
        id: &str,
        d: &DecisionRow,
        order_id: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "INSERT INTO fraud_reviews (id, decision_id, order_id, customer_id, status, created_at) \
             VALUES ($1, $2, $3, $4, 'open', $5) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(id)
        .bind(&d.id)
        .bind(order_id)
        .bind(&d.customer_id)
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn review(&self, id: &str) -> StoreResult<Option<ReviewRow>> {
        sqlx::query(&format!("{REVIEW_SELECT} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?
            .as_ref()
            .map(review_of)
            .transpose()
    }

    /// Oldest first (a queue), after the keyset `(created_at, id)`.
    pub async fn reviews(
        &self,
        status: Option<&str>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<ReviewRow>> {
        let (at, id) = after.unwrap_or((i64::MIN, String::new()));
        sqlx::query(&format!(
            "{REVIEW_SELECT} WHERE ($1 = '' OR r.status = $1) \
             AND (r.created_at > $2 OR (r.created_at = $2 AND r.id > $3)) \
             ORDER BY r.created_at, r.id LIMIT $4"
        ))
        .bind(status.unwrap_or(""))
        .bind(at)
        .bind(&id)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(review_of)
        .collect()
    }

    /// Moves an open review to `status`; false when it was not open any more (someone else
    /// decided it first).
    pub async fn decide_review_tx(
        tx: &mut Tx,
        id: &str,
        status: &str,
        actor: &str,
        reason: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "UPDATE fraud_reviews SET status = $1, decided_by = $2, decision_reason = $3, decided_at = $4 \
             WHERE id = $5 AND status = 'open'",
        )
        .bind(status)
        .bind(actor)
        .bind(reason)
        .bind(now.as_micros())
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn review_counts(&self) -> StoreResult<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM fraud_reviews GROUP BY status")
            .fetch_all(self.db.reader())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("status").map_err(g)?,
                    r.try_get::<i64, _>("n").map_err(g)?,
                ))
            })
            .collect()
    }

    // --- models ------------------------------------------------------------------------

    pub async fn insert_model(&self, m: &ModelRow) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO fraud_models (version, trained_at, samples, model, metrics) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(m.version)
        .bind(m.trained_at.as_micros())
        .bind(m.samples)
        .bind(json(&m.model))
        .bind(json(&m.metrics))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn latest_model(&self) -> StoreResult<Option<ModelRow>> {
        let Some(r) = sqlx::query(
            "SELECT version, trained_at, samples, model, metrics FROM fraud_models \
             ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(self.db.reader())
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(ModelRow {
            version: r.try_get("version").map_err(g)?,
            trained_at: Timestamp::from_micros(r.try_get("trained_at").map_err(g)?),
            samples: r.try_get("samples").map_err(g)?,
            model: serde_json::from_str(&r.try_get::<String, _>("model").map_err(g)?)
                .map_err(|_| bad("model"))?,
            metrics: serde_json::from_str(&r.try_get::<String, _>("metrics").map_err(g)?)
                .map_err(|_| bad("metrics"))?,
        }))
    }
}
