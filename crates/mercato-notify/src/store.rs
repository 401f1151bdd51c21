//! SQL for the notification platform's own tables. One method per use case; methods taking a
//! `&mut Tx` compose into the caller's transaction. Status changes are single conditional
//! statements whose allowed origins come from the model's transition table.

use crate::model::{
    Channel, DeliveryEvent, DeliveryStatus, Preferences, Priority, RATE_WINDOW_MICROS, Reason,
};
use mercato_kernel::Timestamp;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx, bool_of, int_of};
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
pub struct NotificationRow {
    pub id: String,
    pub type_name: String,
    pub priority: Priority,
    pub user_id: Option<String>,
    /// JSON of the explicit recipient, when there is no user.
    pub recipient: Option<String>,
    pub template: String,
    /// JSON.
    pub data: String,
    pub locale: Option<String>,
    pub request_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub batch_id: Option<String>,
    pub producer: String,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

const NOTIFICATION_COLUMNS: &str = "id, type, priority, user_id, recipient, template, data, locale, \
    request_id, status, reason, batch_id, producer, expires_at, created_at";

fn notification_of(row: &Row) -> StoreResult<NotificationRow> {
    let priority: String = get(row, "priority")?;
    Ok(NotificationRow {
        id: get(row, "id")?,
        type_name: get(row, "type")?,
        priority: Priority::parse(&priority).unwrap_or(Priority::Normal),
        user_id: get(row, "user_id")?,
        recipient: get(row, "recipient")?,
        template: get(row, "template")?,
        data: get(row, "data")?,
        locale: get(row, "locale")?,
        request_id: get(row, "request_id")?,
        status: get(row, "status")?,
        reason: get(row, "reason")?,
        batch_id: get(row, "batch_id")?,
        producer: get(row, "producer")?,
        expires_at: ts(get(row, "expires_at")?),
        created_at: Timestamp::from_micros(get(row, "created_at")?),
    })
}

#[derive(Clone, Debug)]
pub struct DeliveryRow {
    pub id: String,
    pub notification_id: String,
    pub channel: Channel,
    pub lane: Priority,
    pub user_id: Option<String>,
    pub status: DeliveryStatus,
    pub reason: Option<Reason>,
    /// JSON array of addresses (one email/phone, or push tokens).
    pub address: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub provider: Option<String>,
    pub provider_index: i64,
    pub provider_attempts: i64,
    pub provider_ref: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    pub locked_until: Option<Timestamp>,
    pub lease_owner: Option<String>,
    pub last_error: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub sent_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub opened_at: Option<Timestamp>,
    pub read_at: Option<Timestamp>,
}

impl DeliveryRow {
    pub fn addresses(&self) -> Vec<String> {
        self.address
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default()
    }
}

const DELIVERY_COLUMNS: &str = "id, notification_id, channel, lane, user_id, status, reason, \
    address, subject, body, provider, provider_index, provider_attempts, provider_ref, attempts, \
    next_attempt_at, locked_until, lease_owner, last_error, expires_at, created_at, updated_at, \
    sent_at, delivered_at, opened_at, read_at";

fn delivery_of(row: &Row) -> StoreResult<DeliveryRow> {
    let channel: String = get(row, "channel")?;
    let lane: String = get(row, "lane")?;
    let status: String = get(row, "status")?;
    let reason: Option<String> = get(row, "reason")?;
    Ok(DeliveryRow {
        id: get(row, "id")?,
        notification_id: get(row, "notification_id")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown channel {channel}")))?,
        lane: Priority::parse(&lane).unwrap_or(Priority::Normal),
        user_id: get(row, "user_id")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown status {status}")))?,
        reason: reason.as_deref().and_then(Reason::parse),
        address: get(row, "address")?,
        subject: get(row, "subject")?,
        body: get(row, "body")?,
        provider: get(row, "provider")?,
        provider_index: get(row, "provider_index")?,
        provider_attempts: get(row, "provider_attempts")?,
        provider_ref: get(row, "provider_ref")?,
        attempts: get(row, "attempts")?,
        next_attempt_at: Timestamp::from_micros(get(row, "next_attempt_at")?),
        locked_until: ts(get(row, "locked_until")?),
        lease_owner: get(row, "lease_owner")?,
        last_error: get(row, "last_error")?,
        expires_at: ts(get(row, "expires_at")?),
        created_at: Timestamp::from_micros(get(row, "created_at")?),
        updated_at: Timestamp::from_micros(get(row, "updated_at")?),
        sent_at: ts(get(row, "sent_at")?),
        delivered_at: ts(get(row, "delivered_at")?),
        opened_at: ts(get(row, "opened_at")?),
        read_at: ts(get(row, "read_at")?),
    })
}

/// What a worker learned about one claimed delivery.
#[derive(Clone, Debug)]
pub enum Completion {
    Sent {
        id: String,
        provider: String,
        provider_ref: Option<String>,
        /// Push tokens the provider reported dead (deactivated in the same transaction).
        unregistered: Vec<String>,
    },
    Retry {
        id: String,
        provider: Option<String>,
        error: String,
        next_attempt_at: Timestamp,
        provider_index: i64,
        provider_attempts: i64,
    },
    /// Put back without spending an attempt (every provider's circuit is open).
    Release {
        id: String,
        error: String,
        next_attempt_at: Timestamp,
    },
    Failed {
        id: String,
        provider: Option<String>,
        error: String,
        reason: Reason,
        /// Tokens to deactivate (an "unregistered" answer).
        unregistered: Vec<String>,
    },
    Dead {
        id: String,
        provider: Option<String>,
        error: String,
    },
    Expired {
        id: String,
    },
}

/// An inbox item.
#[derive(Clone, Debug)]
pub struct InboxRow {
    pub id: String,
    pub user_id: String,
    pub seq: i64,
    pub delivery_id: String,
    pub notification_id: String,
    pub type_name: String,
    pub title: Option<String>,
    pub body: String,
    pub data: String,
    pub read_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

const INBOX_COLUMNS: &str =
    "id, user_id, seq, delivery_id, notification_id, type, title, body, data, read_at, created_at";

fn inbox_of(row: &Row) -> StoreResult<InboxRow> {
    Ok(InboxRow {
        id: get(row, "id")?,
        user_id: get(row, "user_id")?,
        seq: get(row, "seq")?,
        delivery_id: get(row, "delivery_id")?,
        notification_id: get(row, "notification_id")?,
        type_name: get(row, "type")?,
        title: get(row, "title")?,
        body: get(row, "body")?,
        data: get(row, "data")?,
        read_at: ts(get(row, "read_at")?),
        created_at: Timestamp::from_micros(get(row, "created_at")?),
    })
}

#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub id: String,
    pub user_id: String,
    pub platform: String,
    pub token: String,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deactivated_reason: Option<String>,
}

fn device_of(row: &Row) -> StoreResult<DeviceRow> {
    Ok(DeviceRow {
        id: get(row, "id")?,
        user_id: get(row, "user_id")?,
        platform: get(row, "platform")?,
        token: get(row, "token")?,
        active: bool_of(get(row, "active")?),
        created_at: Timestamp::from_micros(get(row, "created_at")?),
        updated_at: Timestamp::from_micros(get(row, "updated_at")?),
        deactivated_reason: get(row, "deactivated_reason")?,
    })
}

#[derive(Clone, Debug)]
pub struct TemplateRow {
    pub name: String,
    pub channel: Channel,
    pub locale: String,
    pub subject: Option<String>,
    pub body: String,
    pub version: i64,
    pub updated_by: String,
    pub updated_at: Timestamp,
}

fn template_of(row: &Row) -> StoreResult<TemplateRow> {
    let channel: String = get(row, "channel")?;
    Ok(TemplateRow {
        name: get(row, "name")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown channel {channel}")))?,
        locale: get(row, "locale")?,
        subject: get(row, "subject")?,
        body: get(row, "body")?,
        version: get(row, "version")?,
        updated_by: get(row, "updated_by")?,
        updated_at: Timestamp::from_micros(get(row, "updated_at")?),
    })
}

/// Raw numbers for the stats endpoint.
#[derive(Clone, Debug, Default)]
pub struct StatsRows {
    /// (channel, status, count) of deliveries created in the range.
    pub by_status: Vec<(String, String, i64)>,
    /// (channel, provider, accept→sent micros) of deliveries sent in the range (newest first, capped).
    pub latencies: Vec<(String, i64)>,
    /// (lane, status, count) of queued deliveries now.
    pub queues: Vec<(String, String, i64)>,
}

/// Orders this module's write transactions on SQLite, whose single writer connection serves
/// everyone first come, first served: urgent transactions (critical and high accepts, express
/// outcomes) queue on `main` directly, while bulk work (bulk chunks, lane claims and outcomes)
/// first takes `low`, so at most one bulk transaction is ever queued ahead of an urgent one.
/// PostgreSQL has no single writer: the gate is off there.
#[derive(Default)]
pub struct WriteGate {
    enabled: bool,
    main: tokio::sync::Mutex<()>,
    low: tokio::sync::Mutex<()>,
}

/// Held for the length of a write transaction.
pub enum GateGuard<'a> {
    Open,
    Urgent(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>),
    Bulk(
        #[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>,
        #[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>,
    ),
}

impl WriteGate {
    pub fn new(enabled: bool) -> WriteGate {
        WriteGate {
            enabled,
            ..WriteGate::default()
        }
    }

    pub async fn enter(&self, urgent: bool) -> GateGuard<'_> {
        if !self.enabled {
            return GateGuard::Open;
        }
        if urgent {
            return GateGuard::Urgent(self.main.lock().await);
        }
        let low = self.low.lock().await;
        let main = self.main.lock().await;
        GateGuard::Bulk(low, main)
    }
}

#[derive(Clone)]
pub struct NotifyStore {
    db: Db,
    gate: std::sync::Arc<WriteGate>,
}

impl NotifyStore {
    pub fn new(db: Db) -> NotifyStore {
        let gate = WriteGate::new(db.backend() == mercato_kernel::db::Backend::Sqlite);
        NotifyStore {
            db,
            gate: std::sync::Arc::new(gate),
        }
    }

    /// Waits for this module's turn at the writer (see [`WriteGate`]).
    pub async fn gate(&self, urgent: bool) -> GateGuard<'_> {
        self.gate.enter(urgent).await
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    // --- accept ---------------------------------------------------------------------------

    /// Takes `key` for `notification_id` until `expires_at`. Returns the id holding a live key
    /// instead, when there is one (the caller then answers with that notification).
    pub async fn take_dedup_key(
        &self,
        tx: &mut Tx,
        key: &str,
        notification_id: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO notify_dedup (dedup_key, notification_id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (dedup_key) DO UPDATE SET notification_id = $2, expires_at = $3 \
             WHERE notify_dedup.expires_at <= $4 RETURNING notification_id",
        )
        .bind(key)
        .bind(notification_id)
        .bind(expires_at.as_micros())
        .bind(now.as_micros())
        .fetch_optional(&mut **tx)
        .await?;
        if taken.is_some() {
            return Ok(None);
        }
        let existing: Option<String> =
            sqlx::query_scalar("SELECT notification_id FROM notify_dedup WHERE dedup_key = $1")
                .bind(key)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(existing)
    }

    /// Points an existing dedup key at another notification.
    pub async fn point_dedup_key(
        &self,
        tx: &mut Tx,
        key: &str,
        notification_id: &str,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE notify_dedup SET notification_id = $2 WHERE dedup_key = $1")
            .bind(key)
            .bind(notification_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Reserves one message in the first hourly window at or after `from` that still has room
    /// under `limit`; returns that window's start.
    pub async fn reserve_rate_slot(
        &self,
        tx: &mut Tx,
        rate_key: &str,
        channel: Channel,
        limit: u32,
        from: Timestamp,
    ) -> StoreResult<Timestamp> {
        let mut window = crate::model::rate_window_start(from).as_micros();
        // A week of windows is far beyond any real backlog; past it, take the last one anyway
        // rather than drop the message.
        for _ in 0..(24 * 7) {
            let got: Option<i64> = sqlx::query_scalar(
                "INSERT INTO notify_rate_slots (rate_key, channel, window_start, used) \
                 VALUES ($1, $2, $3, 1) ON CONFLICT (rate_key, channel, window_start) \
                 DO UPDATE SET used = notify_rate_slots.used + 1 \
                 WHERE notify_rate_slots.used < $4 RETURNING used",
            )
            .bind(rate_key)
            .bind(channel.as_str())
            .bind(window)
            .bind(i64::from(limit.max(1)))
            .fetch_optional(&mut **tx)
            .await?;
            if got.is_some() {
                return Ok(Timestamp::from_micros(window));
            }
            window += RATE_WINDOW_MICROS;
        }
        Ok(Timestamp::from_micros(window))
    }

    pub async fn insert_notification(&self, tx: &mut Tx, n: &NotificationRow) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO notifications ({NOTIFICATION_COLUMNS}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
        ))
        .bind(&n.id)
        .bind(&n.type_name)
        .bind(n.priority.as_str())
        .bind(&n.user_id)
        .bind(&n.recipient)
        .bind(&n.template)
        .bind(&n.data)
        .bind(&n.locale)
        .bind(&n.request_id)
        .bind(&n.status)
        .bind(&n.reason)
        .bind(&n.batch_id)
        .bind(&n.producer)
        .bind(n.expires_at.map(Timestamp::as_micros))
        .bind(n.created_at.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn insert_delivery(&self, tx: &mut Tx, d: &DeliveryRow) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO notify_deliveries ({DELIVERY_COLUMNS}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26)"
        ))
        .bind(&d.id)
        .bind(&d.notification_id)
        .bind(d.channel.as_str())
        .bind(d.lane.as_str())
        .bind(&d.user_id)
        .bind(d.status.as_str())
        .bind(d.reason.map(Reason::as_str))
        .bind(&d.address)
        .bind(&d.subject)
        .bind(&d.body)
        .bind(&d.provider)
        .bind(d.provider_index)
        .bind(d.provider_attempts)
        .bind(&d.provider_ref)
        .bind(d.attempts)
        .bind(d.next_attempt_at.as_micros())
        .bind(d.locked_until.map(Timestamp::as_micros))
        .bind(&d.lease_owner)
        .bind(&d.last_error)
        .bind(d.expires_at.map(Timestamp::as_micros))
        .bind(d.created_at.as_micros())
        .bind(d.updated_at.as_micros())
        .bind(d.sent_at.map(Timestamp::as_micros))
        .bind(d.delivered_at.map(Timestamp::as_micros))
        .bind(d.opened_at.map(Timestamp::as_micros))
        .bind(d.read_at.map(Timestamp::as_micros))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Appends an inbox item; the per-user head row hands out `seq` under its row lock, so a
    /// user's items commit in `seq` order.
    pub async fn append_inbox(&self, tx: &mut Tx, item: &InboxRow) -> StoreResult<i64> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO notify_inbox_heads (user_id, last_seq) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET last_seq = notify_inbox_heads.last_seq + 1 \
             RETURNING last_seq",
        )
        .bind(&item.user_id)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO notify_inbox ({INBOX_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
        ))
        .bind(&item.id)
        .bind(&item.user_id)
        .bind(seq)
        .bind(&item.delivery_id)
        .bind(&item.notification_id)
        .bind(&item.type_name)
        .bind(&item.title)
        .bind(&item.body)
        .bind(&item.data)
        .bind(item.read_at.map(Timestamp::as_micros))
        .bind(item.created_at.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(seq)
    }

    // --- reads ----------------------------------------------------------------------------

    pub async fn notification(&self, id: &str) -> StoreResult<Option<NotificationRow>> {
        let row = sqlx::query(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(notification_of).transpose()
    }

    /// Like [`Self::notification`] but through the writer (reads its own just-committed row on
    /// SQLite without a reader lagging behind).
    pub async fn notification_in(
        &self,
        tx: &mut Tx,
        id: &str,
    ) -> StoreResult<Option<NotificationRow>> {
        let row = sqlx::query(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(notification_of).transpose()
    }

    pub async fn deliveries_in(
        &self,
        tx: &mut Tx,
        notification_id: &str,
    ) -> StoreResult<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE notification_id = $1 ORDER BY id"
        ))
        .bind(notification_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(delivery_of).collect()
    }

    pub async fn deliveries(&self, notification_id: &str) -> StoreResult<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE notification_id = $1 ORDER BY id"
        ))
        .bind(notification_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(delivery_of).collect()
    }

    pub async fn delivery(&self, id: &str) -> StoreResult<Option<DeliveryRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(delivery_of).transpose()
    }

    // --- the queue ------------------------------------------------------------------------

    /// Claims up to `limit` due deliveries of `lane`: pending/deferred ones whose time has
    /// come, and processing ones whose lease ran out (their worker died). A claimed row's
    /// `next_attempt_at` is its lease end, so one range condition finds both kinds.
    pub async fn claim_due(
        &self,
        lane: Priority,
        now: Timestamp,
        lease_until: Timestamp,
        owner: &str,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRow>> {
        let claimable = "status IN ('pending', 'deferred', 'processing') AND next_attempt_at <= $3";
        let sql = format!(
            "UPDATE notify_deliveries SET status = 'processing', attempts = attempts + 1, \
             provider_attempts = provider_attempts + 1, locked_until = $1, next_attempt_at = $1, \
             lease_owner = $2, updated_at = $3 \
             WHERE id IN (SELECT id FROM notify_deliveries WHERE lane = $4 AND {claimable} \
                          ORDER BY next_attempt_at LIMIT $5) \
             AND {claimable} RETURNING {DELIVERY_COLUMNS}"
        );
        let _turn = self.gate(lane.is_express()).await;
        let mut tx = self.db.begin().await?;
        let rows = sqlx::query(&sql)
            .bind(lease_until.as_micros())
            .bind(owner)
            .bind(now.as_micros())
            .bind(lane.as_str())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(delivery_of).collect()
    }

    /// Records the outcomes of a batch of claimed deliveries in one short transaction. Each
    /// update only applies while the row is still ours and processing (a reclaimed row's old
    /// worker changes nothing).
    pub async fn complete(
        &self,
        owner: &str,
        now: Timestamp,
        outcomes: &[Completion],
        urgent: bool,
    ) -> StoreResult<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let _turn = self.gate(urgent).await;
        let mut tx = self.db.begin().await?;
        let mine = "id = $1 AND status = 'processing' AND lease_owner = $2";
        for c in outcomes {
            match c {
                Completion::Sent {
                    id,
                    provider,
                    provider_ref,
                    unregistered,
                } => {
                    sqlx::query(&format!(
                        "UPDATE notify_deliveries SET status = 'sent', provider = $3, provider_ref = $4, \
                         sent_at = $5, updated_at = $5, locked_until = NULL, lease_owner = NULL, \
                         reason = NULL WHERE {mine}"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(provider)
                    .bind(provider_ref)
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                    self.deactivate_tokens(&mut tx, unregistered, now).await?;
                }
                Completion::Retry {
                    id,
                    provider,
                    error,
                    next_attempt_at,
                    provider_index,
                    provider_attempts,
                } => {
                    sqlx::query(&format!(
                        "UPDATE notify_deliveries SET status = 'pending', provider = COALESCE($3, provider), \
                         last_error = $4, next_attempt_at = $5, provider_index = $6, \
                         provider_attempts = $7, updated_at = $8, locked_until = NULL, \
                         lease_owner = NULL WHERE {mine}"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(provider)
                    .bind(error)
                    .bind(next_attempt_at.as_micros())
                    .bind(provider_index)
                    .bind(provider_attempts)
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                }
                Completion::Release {
                    id,
                    error,
                    next_attempt_at,
                } => {
                    sqlx::query(&format!(
                        "UPDATE notify_deliveries SET status = 'pending', last_error = $3, \
                         next_attempt_at = $4, attempts = attempts - 1, \
                         provider_attempts = provider_attempts - 1, updated_at = $5, \
                         locked_until = NULL, lease_owner = NULL WHERE {mine}"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(error)
                    .bind(next_attempt_at.as_micros())
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                }
                Completion::Failed {
                    id,
                    provider,
                    error,
                    reason,
                    unregistered,
                } => {
                    sqlx::query(&format!(
                        "UPDATE notify_deliveries SET status = 'failed', provider = COALESCE($3, provider), \
                         last_error = $4, reason = $5, updated_at = $6, locked_until = NULL, \
                         lease_owner = NULL WHERE {mine}"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(provider)
                    .bind(error)
                    .bind(reason.as_str())
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                    self.deactivate_tokens(&mut tx, unregistered, now).await?;
                }
                Completion::Dead {
                    id,
                    provider,
                    error,
                } => {
                    sqlx::query(&format!(
                        "UPDATE notify_deliveries SET status = 'dead', provider = COALESCE($3, provider), \
                         last_error = $4, reason = 'retries_exhausted', updated_at = $5, \
                         locked_until = NULL, lease_owner = NULL WHERE {mine}"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(provider)
                    .bind(error)
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                }
                Completion::Expired { id } => {
                    sqlx::query(&format!(
                        "UPDATE notify_deliveries SET status = 'expired', reason = 'expired', \
                         updated_at = $3, locked_until = NULL, lease_owner = NULL WHERE {mine}"
                    ))
                    .bind(id)
                    .bind(owner)
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn deactivate_tokens(
        &self,
        tx: &mut Tx,
        tokens: &[String],
        now: Timestamp,
    ) -> StoreResult<()> {
        for t in tokens {
            sqlx::query(
                "UPDATE notify_devices SET active = 0, deactivated_reason = 'unregistered', \
                 updated_at = $2 WHERE token = $1 AND active = 1",
            )
            .bind(t)
            .bind(now.as_micros())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Applies a provider callback to a delivery (conditional on the transition table).
    /// Returns whether the delivery changed.
    pub async fn apply_provider_event(
        &self,
        tx: &mut Tx,
        delivery_id: &str,
        provider: &str,
        event: DeliveryEvent,
        at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let sources = DeliveryStatus::sql_sources(event);
        let (status, set) = match event {
            DeliveryEvent::Delivered => ("delivered", "delivered_at = $3"),
            DeliveryEvent::Opened => (
                "opened",
                "opened_at = $3, delivered_at = COALESCE(delivered_at, $3)",
            ),
            DeliveryEvent::Bounce => ("failed", "reason = 'bounced', last_error = 'bounced'"),
            _ => return Ok(false),
        };
        if sources.is_empty() {
            return Ok(false);
        }
        let r = sqlx::query(&format!(
            "UPDATE notify_deliveries SET status = '{status}', {set}, updated_at = $4 \
             WHERE id = $1 AND provider = $2 AND status IN ({sources})"
        ))
        .bind(delivery_id)
        .bind(provider)
        .bind(at.as_micros())
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A provider said `token` is no longer registered.
    pub async fn unregister_token(
        &self,
        tx: &mut Tx,
        token: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE notify_devices SET active = 0, deactivated_reason = 'unregistered', \
             updated_at = $2 WHERE token = $1 AND active = 1",
        )
        .bind(token)
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    // --- admin ----------------------------------------------------------------------------

    pub async fn dead_letters(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryRow>> {
        let (at, id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE status = 'dead' \
             AND (updated_at < $1 OR (updated_at = $1 AND id < $2)) \
             ORDER BY updated_at DESC, id DESC LIMIT $3"
        ))
        .bind(at)
        .bind(if after_is_none(&id) {
            "\u{10FFFF}".to_owned()
        } else {
            id
        })
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(delivery_of).collect()
    }

    /// Dead → pending, attempts reset. `None` when the delivery does not exist; `Some(false)`
    /// when it is not dead.
    pub async fn redrive(
        &self,
        id: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Option<bool>> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(&format!(
            "UPDATE notify_deliveries SET status = 'pending', attempts = 0, provider_index = 0, \
             provider_attempts = 0, next_attempt_at = $2, reason = NULL, updated_at = $2, \
             locked_until = NULL, lease_owner = NULL \
             WHERE id = $1 AND status IN ({})",
            DeliveryStatus::sql_sources(DeliveryEvent::Redrive)
        ))
        .bind(id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT id FROM notify_deliveries WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(exists.map(|_| false));
        }
        mercato_kernel::outbox::audit(
            &mut tx,
            now,
            actor,
            "notification.redrive",
            "notification_delivery",
            id,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(true))
    }

    pub async fn stats(&self, from: Timestamp, to: Timestamp) -> StoreResult<StatsRows> {
        let mut out = StatsRows::default();
        let rows = sqlx::query(
            "SELECT channel, status, COUNT(*) AS n FROM notify_deliveries \
             WHERE created_at >= $1 AND created_at < $2 GROUP BY channel, status",
        )
        .bind(from.as_micros())
        .bind(to.as_micros())
        .fetch_all(self.db.reader())
        .await?;
        for r in &rows {
            out.by_status
                .push((get(r, "channel")?, get(r, "status")?, get(r, "n")?));
        }
        let rows = sqlx::query(
            "SELECT channel, sent_at - created_at AS latency FROM notify_deliveries \
             WHERE sent_at IS NOT NULL AND sent_at >= $1 AND sent_at < $2 \
             ORDER BY sent_at DESC LIMIT 50000",
        )
        .bind(from.as_micros())
        .bind(to.as_micros())
        .fetch_all(self.db.reader())
        .await?;
        for r in &rows {
            out.latencies.push((get(r, "channel")?, get(r, "latency")?));
        }
        out.queues = self.queue_depths().await?;
        Ok(out)
    }

    /// (lane, status, count) of deliveries waiting or in flight.
    pub async fn queue_depths(&self) -> StoreResult<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT lane, status, COUNT(*) AS n FROM notify_deliveries \
             WHERE status IN ('pending', 'processing', 'deferred') GROUP BY lane, status",
        )
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| Ok((get(r, "lane")?, get(r, "status")?, get(r, "n")?)))
            .collect()
    }

    /// Deletes expired dedup keys and rate windows older than a day (a bounded batch each).
    pub async fn purge(&self, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.db.begin().await?;
        let a = sqlx::query(
            "DELETE FROM notify_dedup WHERE dedup_key IN \
             (SELECT dedup_key FROM notify_dedup WHERE expires_at < $1 LIMIT 5000)",
        )
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let b = sqlx::query("DELETE FROM notify_rate_slots WHERE window_start < $1")
            .bind(now.as_micros() - 24 * RATE_WINDOW_MICROS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(a + b)
    }

    // --- preferences ----------------------------------------------------------------------

    pub async fn preferences(&self, user_id: &str) -> StoreResult<Option<Preferences>> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT document FROM notify_preferences WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.db.reader())
                .await?;
        Ok(doc.and_then(|d| serde_json::from_str(&d).ok()))
    }

    pub async fn put_preferences(
        &self,
        user_id: &str,
        prefs: &Preferences,
        now: Timestamp,
    ) -> StoreResult<()> {
        let doc = serde_json::to_string(prefs).map_err(|e| StoreError::Other(e.into()))?;
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO notify_preferences (user_id, document, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET document = $2, updated_at = $3",
        )
        .bind(user_id)
        .bind(doc)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- devices --------------------------------------------------------------------------

    /// Registers `token` for `user_id` (a token moves to the user who registers it last, and
    /// is reactivated).
    pub async fn upsert_device(
        &self,
        id: &str,
        user_id: &str,
        platform: &str,
        token: &str,
        now: Timestamp,
    ) -> StoreResult<DeviceRow> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(
            "INSERT INTO notify_devices (id, user_id, platform, token, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $5) ON CONFLICT (token) DO UPDATE SET \
             user_id = $2, platform = $3, active = 1, updated_at = $5, deactivated_reason = NULL \
             RETURNING id, user_id, platform, token, active, created_at, updated_at, deactivated_reason",
        )
        .bind(id)
        .bind(user_id)
        .bind(platform)
        .bind(token)
        .bind(now.as_micros())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        device_of(&row)
    }

    pub async fn delete_device(&self, user_id: &str, id: &str) -> StoreResult<bool> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query("DELETE FROM notify_devices WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn devices(&self, user_id: &str) -> StoreResult<Vec<DeviceRow>> {
        let rows = sqlx::query(
            "SELECT id, user_id, platform, token, active, created_at, updated_at, deactivated_reason \
             FROM notify_devices WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(device_of).collect()
    }

    pub async fn active_tokens(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let tokens: Vec<String> = sqlx::query_scalar(
            "SELECT token FROM notify_devices WHERE user_id = $1 AND active = $2 ORDER BY created_at",
        )
        .bind(user_id)
        .bind(int_of(true))
        .fetch_all(self.db.reader())
        .await?;
        Ok(tokens)
    }

    // --- templates ------------------------------------------------------------------------

    pub async fn templates(&self, name: &str) -> StoreResult<Vec<TemplateRow>> {
        let rows = sqlx::query(
            "SELECT name, channel, locale, subject, body, version, updated_by, updated_at \
             FROM notify_templates WHERE name = $1 ORDER BY channel, locale",
        )
        .bind(name)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(template_of).collect()
    }

    /// Saves a template variant. `expected_version`: `Some(0)` = must not exist yet,
    /// `Some(v)` = must be at version v, `None` = any. Returns the saved row, or `None` when
    /// the version did not match.
    pub async fn save_template(
        &self,
        t: &TemplateRow,
        expected_version: Option<i64>,
    ) -> StoreResult<Option<TemplateRow>> {
        let mut tx = self.db.begin().await?;
        let current: Option<i64> = sqlx::query_scalar(&self.db.locking(
            "SELECT version FROM notify_templates WHERE name = $1 AND channel = $2 AND locale = $3",
        ))
        .bind(&t.name)
        .bind(t.channel.as_str())
        .bind(&t.locale)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(expected) = expected_version
            && current.unwrap_or(0) != expected
        {
            tx.rollback().await?;
            return Ok(None);
        }
        let version = current.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO notify_templates (name, channel, locale, subject, body, version, updated_by, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (name, channel, locale) DO UPDATE SET \
             subject = $4, body = $5, version = $6, updated_by = $7, updated_at = $8",
        )
        .bind(&t.name)
        .bind(t.channel.as_str())
        .bind(&t.locale)
        .bind(&t.subject)
        .bind(&t.body)
        .bind(version)
        .bind(&t.updated_by)
        .bind(t.updated_at.as_micros())
        .execute(&mut *tx)
        .await?;
        mercato_kernel::outbox::audit(
            &mut tx,
            t.updated_at,
            &t.updated_by,
            "notification_template.save",
            "notification_template",
            &format!("{}/{}/{}", t.name, t.channel.as_str(), t.locale),
            serde_json::json!({"version": version}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(TemplateRow {
            version,
            ..t.clone()
        }))
    }

    // --- inbox ----------------------------------------------------------------------------

    /// Newest first, keyset on `seq`.
    pub async fn inbox(
        &self,
        user_id: &str,
        unread_only: bool,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<InboxRow>> {
        let unread = if unread_only {
            " AND read_at IS NULL"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT {INBOX_COLUMNS} FROM notify_inbox WHERE user_id = $1 AND seq < $2{unread} \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(user_id)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(inbox_of).collect()
    }

    /// Items after `seq`, oldest first (SSE catch-up and live reads).
    pub async fn inbox_since(
        &self,
        user_id: &str,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<InboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {INBOX_COLUMNS} FROM notify_inbox WHERE user_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        ))
        .bind(user_id)
        .bind(seq)
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(inbox_of).collect()
    }

    pub async fn inbox_head(&self, user_id: &str) -> StoreResult<i64> {
        let head: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM notify_inbox_heads WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.db.reader())
                .await?;
        Ok(head.unwrap_or(0))
    }

    /// Marks one item read (and its delivery `read`). `None` when it is not the user's.
    pub async fn mark_read(
        &self,
        user_id: &str,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<InboxRow>> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE notify_inbox SET read_at = COALESCE(read_at, $3) WHERE id = $1 AND user_id = $2 \
             RETURNING {INBOX_COLUMNS}"
        ))
        .bind(id)
        .bind(user_id)
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let item = inbox_of(&row)?;
        self.mark_delivery_read(&mut tx, &item.delivery_id, now)
            .await?;
        tx.commit().await?;
        Ok(Some(item))
    }

    async fn mark_delivery_read(
        &self,
        tx: &mut Tx,
        delivery_id: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "UPDATE notify_deliveries SET status = 'read', read_at = $2, updated_at = $2 \
             WHERE id = $1 AND status IN ({})",
            DeliveryStatus::sql_sources(DeliveryEvent::Read)
        ))
        .bind(delivery_id)
        .bind(now.as_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Marks every unread item read; returns how many.
    pub async fn read_all(&self, user_id: &str, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.db.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE notify_inbox SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL \
             RETURNING delivery_id",
        )
        .bind(user_id)
        .bind(now.as_micros())
        .fetch_all(&mut *tx)
        .await?;
        for d in &ids {
            self.mark_delivery_read(&mut tx, d, now).await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    pub async fn unread_count(&self, user_id: &str) -> StoreResult<i64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM notify_inbox WHERE user_id = $1 AND read_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(self.db.reader())
        .await?;
        Ok(n)
    }
}

fn after_is_none(id: &str) -> bool {
    id.is_empty()
}
