//! SQL for the webhooks' own tables (`webhook_endpoints`, `webhook_deliveries`,
//! `webhook_attempts`). One method per use case; state changes are single conditional
//! statements.

use crate::model::{DeliveryStatus, EndpointStatus};
use mercato_kernel::Timestamp;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, bool_of, int_of};
use mercato_kernel::outbox::NewEvent;
use sqlx::Row as _;

fn get<T>(row: &Row, col: &str) -> StoreResult<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col)
        .map_err(|e| StoreError::Other(anyhow::anyhow!("decoding {col}: {e}")))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_micros)
}

#[derive(Clone, Debug)]
pub struct EndpointRow {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub status: EndpointStatus,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<Timestamp>,
    pub failing_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl EndpointRow {
    /// The secrets that sign a delivery at `now`: the current one, and the previous one while
    /// its grace period lasts.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut s = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && until > now
        {
            s.push(prev.as_str());
        }
        s
    }
}

const ENDPOINT_COLUMNS: &str = "id, url, events, description, status, disabled_reason, secret, \
    previous_secret, previous_secret_expires_at, failing_since, created_at, updated_at";

fn endpoint_of(row: &Row) -> StoreResult<EndpointRow> {
    let events: String = get(row, "events")?;
    let status: String = get(row, "status")?;
    Ok(EndpointRow {
        id: get(row, "id")?,
        url: get(row, "url")?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        description: get(row, "description")?,
        status: EndpointStatus::parse(&status).unwrap_or(EndpointStatus::Disabled),
        disabled_reason: get(row, "disabled_reason")?,
        secret: get(row, "secret")?,
        previous_secret: get(row, "previous_secret")?,
        previous_secret_expires_at: ts(get(row, "previous_secret_expires_at")?),
        failing_since: ts(get(row, "failing_since")?),
        created_at: Timestamp::from_micros(get(row, "created_at")?),
        updated_at: Timestamp::from_micros(get(row, "updated_at")?),
    })
}

#[derive(Clone, Debug)]
pub struct DeliveryRow {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    /// The event envelope as JSON: the request body.
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts made, over every round (a redelivery starts a new round).
    pub attempts: i64,
    /// `attempts` when the current round started: the round's budget counts from here.
    pub round_start: i64,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
    pub last_status_code: Option<i64>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, event_type, payload, status, attempts, \
    round_start, next_attempt_at, last_error, last_status_code, created_at, delivered_at";

fn delivery_of(row: &Row) -> StoreResult<DeliveryRow> {
    let status: String = get(row, "status")?;
    Ok(DeliveryRow {
        id: get(row, "id")?,
        endpoint_id: get(row, "endpoint_id")?,
        event_id: get(row, "event_id")?,
        event_type: get(row, "event_type")?,
        payload: get(row, "payload")?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: get(row, "attempts")?,
        round_start: get(row, "round_start")?,
        next_attempt_at: Timestamp::from_micros(get(row, "next_attempt_at")?),
        last_error: get(row, "last_error")?,
        last_status_code: get(row, "last_status_code")?,
        created_at: Timestamp::from_micros(get(row, "created_at")?),
        delivered_at: ts(get(row, "delivered_at")?),
    })
}

#[derive(Clone, Debug)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: i64,
    pub at: Timestamp,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub success: bool,
    pub error: Option<String>,
}

/// A new delivery to write.
pub struct NewDelivery {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
}

/// The outcome of one attempt, as the worker records it.
pub struct AttemptOutcome {
    pub delivery_id: String,
    pub endpoint_id: String,
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub success: bool,
    /// When to try again; `None` = out of attempts (dead) or delivered.
    pub retry_at: Option<Timestamp>,
}

/// Fields a PATCH may change (`None` = unchanged; `description: Some(None)` clears it).
#[derive(Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub status: Option<EndpointStatus>,
}

#[derive(Clone)]
pub struct WebhookStore {
    db: Db,
}

impl WebhookStore {
    pub fn new(db: Db) -> WebhookStore {
        WebhookStore { db }
    }

    pub async fn insert_endpoint(&self, e: &EndpointRow) -> StoreResult<()> {
        self.db
            .execute_write(
                sqlx::query(
                    "INSERT INTO webhook_endpoints (id, url, events, description, status, secret, \
                     created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$7)",
                )
                .bind(e.id.clone())
                .bind(e.url.clone())
                .bind(serde_json::to_string(&e.events).unwrap_or_else(|_| "[]".into()))
                .bind(e.description.clone())
                .bind(e.status.as_str())
                .bind(e.secret.clone())
                .bind(e.created_at.as_micros()),
            )
            .await?;
        Ok(())
    }

    pub async fn endpoint(&self, id: &str) -> StoreResult<Option<EndpointRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(endpoint_of).transpose()
    }

    /// Endpoints by creation, after the keyset `(created_at, id)`; `limit + 1` rows.
    pub async fn endpoints_page(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<EndpointRow>> {
        let (at, id) = after.unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
             WHERE created_at > $1 OR (created_at = $1 AND id > $2) \
             ORDER BY created_at, id LIMIT $3"
        ))
        .bind(at)
        .bind(id)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(endpoint_of).collect()
    }

    /// Every enabled endpoint (the fan-out reads them for each event; they are few).
    pub async fn enabled_endpoints(&self) -> StoreResult<Vec<EndpointRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE status = 'enabled'"
        ))
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(endpoint_of).collect()
    }

    /// Applies `c` and answers the updated endpoint (`None`: no such endpoint). Re-enabling
    /// clears the failure streak and the reason.
    pub async fn update_endpoint(
        &self,
        id: &str,
        c: &EndpointChanges,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointRow>> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE webhook_endpoints SET \
             url = COALESCE($2, url), \
             events = COALESCE($3, events), \
             description = CASE WHEN $4 = 1 THEN $5 ELSE description END, \
             status = COALESCE($6, status), \
             disabled_reason = CASE WHEN $6 = 'enabled' THEN NULL WHEN $6 = 'disabled' THEN 'admin' ELSE disabled_reason END, \
             failing_since = CASE WHEN $6 = 'enabled' THEN NULL ELSE failing_since END, \
             updated_at = $7 WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(c.url.clone())
        .bind(
            c.events
                .as_ref()
                .map(|e| serde_json::to_string(e).unwrap_or_else(|_| "[]".into())),
        )
        .bind(int_of(c.description.is_some()))
        .bind(c.description.clone().flatten())
        .bind(c.status.map(EndpointStatus::as_str))
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(endpoint_of).transpose()
    }

    /// Deletes the endpoint with its deliveries and their attempts; `false` when none.
    pub async fn delete_endpoint(&self, id: &str) -> StoreResult<bool> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN \
             (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Makes `secret` current; the old one signs until `grace_until`.
    pub async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        grace_until: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointRow>> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2, \
             previous_secret_expires_at = $3, updated_at = $4 WHERE id = $1 \
             RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(secret)
        .bind(grace_until.as_micros())
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(endpoint_of).transpose()
    }

    /// Writes deliveries (one transaction); a delivery of an event an endpoint already has is
    /// skipped (the fan-out may see an event twice). Returns how many were new.
    pub async fn insert_deliveries(
        &self,
        deliveries: &[NewDelivery],
        now: Timestamp,
    ) -> StoreResult<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        let mut n = 0;
        for d in deliveries {
            let r = sqlx::query(
                "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, payload, \
                 status, attempts, next_attempt_at, created_at, updated_at) \
                 VALUES ($1,$2,$3,$4,$5,'pending',0,$6,$6,$6) \
                 ON CONFLICT (endpoint_id, event_id) DO NOTHING",
            )
            .bind(&d.id)
            .bind(&d.endpoint_id)
            .bind(&d.event_id)
            .bind(&d.event_type)
            .bind(&d.payload)
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
            n += r.rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    pub async fn delivery(&self, id: &str) -> StoreResult<Option<DeliveryRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(delivery_of).transpose()
    }

    /// An endpoint's deliveries, newest first, after the keyset `(created_at, id)`;
    /// `limit + 1` rows.
    pub async fn deliveries_page(
        &self,
        endpoint_id: &str,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryRow>> {
        let first = before.is_none();
        let (at, id) = before.unwrap_or((0, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 \
             AND ($5 = 1 OR created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(endpoint_id)
        .bind(at)
        .bind(id)
        .bind(i64::from(limit) + 1)
        .bind(int_of(first))
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(delivery_of).collect()
    }

    /// The attempts of these deliveries, in attempt order.
    pub async fn attempts_of(&self, delivery_ids: &[String]) -> StoreResult<Vec<AttemptRow>> {
        let mut out = Vec::new();
        for chunk in delivery_ids.chunks(100) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT delivery_id, attempt, at, status_code, latency_ms, success, error \
                 FROM webhook_attempts WHERE delivery_id IN ({}) ORDER BY delivery_id, attempt, at",
                marks.join(",")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(self.db.reader()).await? {
                out.push(AttemptRow {
                    delivery_id: get(&row, "delivery_id")?,
                    attempt: get(&row, "attempt")?,
                    at: Timestamp::from_micros(get(&row, "at")?),
                    status_code: get(&row, "status_code")?,
                    latency_ms: get(&row, "latency_ms")?,
                    success: bool_of(get(&row, "success")?),
                    error: get(&row, "error")?,
                });
            }
        }
        Ok(out)
    }

    /// Claims up to `limit` due deliveries of enabled endpoints: pending ones whose time has
    /// come and processing ones whose lease ran out (their worker died). A claimed row's
    /// `next_attempt_at` is its lease end, so one range condition finds both kinds.
    pub async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        owner: &str,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRow>> {
        let claimable = "status IN ('pending', 'processing') AND next_attempt_at <= $3";
        let sql = format!(
            "UPDATE webhook_deliveries SET status = 'processing', attempts = attempts + 1, \
             next_attempt_at = $1, lease_owner = $2, updated_at = $3 \
             WHERE id IN (SELECT d.id FROM webhook_deliveries d \
                          JOIN webhook_endpoints e ON e.id = d.endpoint_id \
                          WHERE e.status = 'enabled' AND d.status IN ('pending', 'processing') \
                          AND d.next_attempt_at <= $3 ORDER BY d.next_attempt_at LIMIT $4) \
             AND {claimable} RETURNING {DELIVERY_COLUMNS}"
        );
        let mut tx = self.db.begin().await?;
        let rows = sqlx::query(&sql)
            .bind(lease_until.as_micros())
            .bind(owner)
            .bind(now.as_micros())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(delivery_of).collect()
    }

    /// Records an attempt and moves the delivery on (delivered, retry later, or dead), in one
    /// transaction, only while the claim is still `owner`'s. Also keeps the endpoint's failure
    /// streak: a success ends it; a failure starts it, and once it is older than
    /// `disable_before` the endpoint is disabled and `disabled_event(endpoint, failing_since)`
    /// is written to the outbox with it. Returns whether this disabled the endpoint.
    pub async fn record_attempt(
        &self,
        o: &AttemptOutcome,
        owner: &str,
        now: Timestamp,
        disable_before: Timestamp,
        disabled_event: impl FnOnce(&EndpointRow) -> NewEvent,
    ) -> StoreResult<bool> {
        let mut tx = self.db.begin().await?;
        let (status, next) = match (o.success, o.retry_at) {
            (true, _) => ("delivered", now),
            (false, Some(at)) => ("pending", at),
            (false, None) => ("dead", now),
        };
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4, lease_owner = NULL, \
             last_error = $5, last_status_code = $6, updated_at = $7, \
             delivered_at = CASE WHEN $3 = 'delivered' THEN $7 ELSE delivered_at END \
             WHERE id = $1 AND status = 'processing' AND lease_owner = $2",
        )
        .bind(&o.delivery_id)
        .bind(owner)
        .bind(status)
        .bind(next.as_micros())
        .bind(o.error.clone())
        .bind(o.status_code)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            // The lease ran out and someone else has it now: their outcome counts.
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (id, delivery_id, attempt, at, status_code, latency_ms, \
             success, error) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(mercato_kernel::id::new_id("wha"))
        .bind(&o.delivery_id)
        .bind(o.attempt)
        .bind(now.as_micros())
        .bind(o.status_code)
        .bind(o.latency_ms)
        .bind(int_of(o.success))
        .bind(o.error.clone())
        .execute(&mut *tx)
        .await?;
        let mut disabled = false;
        if o.success {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 \
                 AND failing_since IS NOT NULL",
            )
            .bind(&o.endpoint_id)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = $2 WHERE id = $1 \
                 AND failing_since IS NULL",
            )
            .bind(&o.endpoint_id)
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(&format!(
                "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = 'failing', \
                 updated_at = $2 WHERE id = $1 AND status = 'enabled' \
                 AND failing_since IS NOT NULL AND failing_since <= $3 RETURNING {ENDPOINT_COLUMNS}"
            ))
            .bind(&o.endpoint_id)
            .bind(now.as_micros())
            .bind(disable_before.as_micros())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                let endpoint = endpoint_of(&row)?;
                mercato_kernel::outbox::append(&mut tx, now, disabled_event(&endpoint)).await?;
                disabled = true;
            }
        }
        tx.commit().await?;
        Ok(disabled)
    }

    /// Puts a dead or delivered delivery back in the queue, due now, with a fresh attempt
    /// budget (its attempt log stays and keeps counting). `None`: no such delivery; `Some(false)`: it is still
    /// pending or in flight.
    pub async fn redeliver(&self, id: &str, now: Timestamp) -> StoreResult<Option<bool>> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', round_start = attempts, \
             next_attempt_at = $2, updated_at = $2 WHERE id = $1 AND status IN ('dead', 'delivered')",
        )
        .bind(id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if r.rows_affected() == 1 {
            return Ok(Some(true));
        }
        Ok(self.delivery(id).await?.map(|_| false))
    }
}
