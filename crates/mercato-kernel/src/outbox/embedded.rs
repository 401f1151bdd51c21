//! The embedded bus: the outbox table read as a log.
//!
//! - The **relay** gives committed events their position in the log (`log_pos`), in one short
//!   transaction that first locks the log head. Positions are handed out only to rows already
//!   committed, so a consumer reading `log_pos > offset` never skips an event whose transaction
//!   committed late (the classic gap problem of reading an autoincrement column directly).
//! - Each **consumer** holds a lease on its offset row (so among several processes sharing the
//!   database exactly one delivers to it), reads a batch after its offset, calls the handler,
//!   and advances the offset. A failed event does not block the ones behind it: it moves to
//!   `event_retries` with a backoff and is retried out of band until it succeeds or is dead.

use super::{Event, EventBus, EventHandler};
use crate::clock::SharedClock;
use crate::db::{Db, Row};
use crate::jobs::Outcome;
use crate::shutdown::Shutdown;
use anyhow::Context as _;
use sqlx::Row as _;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Delivery policy.
#[derive(Clone, Debug)]
pub struct BusConfig {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub poll_interval: Duration,
    pub batch_size: i64,
    pub handler_timeout: Duration,
    pub lease: Duration,
    /// How long a consumer's advanced offset may stay in memory before it is written. Offsets
    /// are written behind: after a crash a consumer re-reads at most this much of the log,
    /// which consumers tolerate because they are idempotent by event id, and a purchase no
    /// longer costs one durable write per consumer.
    pub offset_flush: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_millis(100),
            batch_size: 200,
            handler_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(30),
            offset_flush: Duration::from_millis(250),
        }
    }
}

pub struct EmbeddedBus {
    db: Db,
    clock: SharedClock,
    cfg: BusConfig,
    node: String,
    handlers: RwLock<Vec<Arc<dyn EventHandler>>>,
    /// Leases this process holds: consumer → (offset, lease end). While a lease is held no
    /// other process writes that consumer's row, so the offset can be kept here and the lease
    /// renewed only past half its life — not on every pump (each renewal is a durable write).
    leases: std::sync::Mutex<std::collections::HashMap<String, (i64, crate::Timestamp)>>,
    /// Consumers whose offset row is known to exist.
    ensured: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When due retries were last looked for.
    last_retry_check: std::sync::Mutex<Option<std::time::Instant>>,
    /// Offsets as last written: consumer → (position, when).
    saved: std::sync::Mutex<std::collections::HashMap<String, (i64, std::time::Instant)>>,
}

const EVENT_COLUMNS: &str = "o.id, o.event_type, o.occurred_at, o.aggregate_type, \
    o.aggregate_id, o.correlation_id, o.causation_id, o.version, o.data";

fn event_of(row: &Row) -> anyhow::Result<Event> {
    let data: String = row.try_get("data")?;
    Ok(Event {
        id: row.try_get("id")?,
        event_type: row.try_get("event_type")?,
        occurred_at: crate::Timestamp::from_micros(row.try_get("occurred_at")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        version: row.try_get("version")?,
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
    })
}

impl EmbeddedBus {
    pub fn new(db: Db, clock: SharedClock, cfg: BusConfig) -> EmbeddedBus {
        EmbeddedBus {
            db,
            clock,
            cfg,
            node: crate::id::new_id("node"),
            handlers: RwLock::new(Vec::new()),
            leases: std::sync::Mutex::new(std::collections::HashMap::new()),
            ensured: std::sync::Mutex::new(std::collections::HashSet::new()),
            last_retry_check: std::sync::Mutex::new(None),
            saved: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn handlers(&self) -> Vec<Arc<dyn EventHandler>> {
        self.handlers.read().map(|h| h.clone()).unwrap_or_default()
    }

    /// Assigns log positions to committed, unpublished events. Returns how many.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        // Most pumps find nothing to publish: ask a reader first, so they cost no write
        // transaction on the (single, on SQLite) writer.
        let pending: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM outbox WHERE log_pos IS NULL LIMIT 1")
                .fetch_optional(self.db.reader())
                .await?;
        if pending.is_none() {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        // Locking the head row serializes relays across processes (PostgreSQL); on SQLite
        // BEGIN IMMEDIATE already did. Reading the unpublished rows after taking the lock means
        // we see everything the previous relay published.
        let head: i64 = sqlx::query_scalar(
            "UPDATE outbox_log_head SET position = position WHERE id = 1 RETURNING position",
        )
        .fetch_one(&mut *tx)
        .await
        .context("locking the log head")?;
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM outbox WHERE log_pos IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.cfg.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if seqs.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        // One statement for the whole batch: position = head + 1 + (seq - first seq). Positions
        // may leave gaps (seqs of rolled-back inserts); consumers only need them increasing.
        let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
        sqlx::query(
            "UPDATE outbox SET log_pos = $1 + 1 + seq - $2 \
             WHERE log_pos IS NULL AND seq >= $2 AND seq <= $3",
        )
        .bind(head)
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE outbox_log_head SET position = $1 WHERE id = 1")
            .bind(head + 1 + last - first)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(seqs.len())
    }

    /// Takes (or renews) this process's lease on `consumer`; returns its offset when held.
    async fn lease(&self, consumer: &str) -> anyhow::Result<Option<i64>> {
        let now = self.clock.now();
        let half = self.cfg.lease / 2;
        if let Some((pos, until)) = self
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(consumer).copied())
            && until.since(now) > half
        {
            return Ok(Some(pos));
        }
        let until = now.plus(self.cfg.lease);
        let known = self
            .ensured
            .lock()
            .map(|e| e.contains(consumer))
            .unwrap_or(false);
        if !known {
            self.db.execute_write(sqlx::query(
                "INSERT INTO consumer_offsets (consumer, position, owner, lease_until, updated_at) \
                 VALUES ($1, 0, NULL, 0, $2) ON CONFLICT (consumer) DO NOTHING",
            )
            .bind(consumer)
            .bind(now.as_micros()))
            .await?;
            if let Ok(mut e) = self.ensured.lock() {
                e.insert(consumer.to_owned());
            }
        }
        // A renewal also writes the offset still held in memory (see `offset_flush`); a lease
        // taken over from another process starts from the offset it wrote.
        let held = self
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(consumer).map(|(p, _)| *p))
            .unwrap_or(-1);
        let mut tx = self.db.begin().await?;
        let pos: Option<i64> = sqlx::query_scalar(
            "UPDATE consumer_offsets SET \
             position = CASE WHEN owner = $1 AND position < $5 THEN $5 ELSE position END, \
             owner = $1, lease_until = $2 \
             WHERE consumer = $3 AND (owner = $1 OR owner IS NULL OR lease_until < $4) \
             RETURNING position",
        )
        .bind(&self.node)
        .bind(until.as_micros())
        .bind(consumer)
        .bind(now.as_micros())
        .bind(held)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        if let (Some(p), Ok(mut saved)) = (pos, self.saved.lock()) {
            saved.insert(consumer.to_owned(), (p, std::time::Instant::now()));
        }
        if let Ok(mut l) = self.leases.lock() {
            match pos {
                Some(p) => {
                    l.insert(consumer.to_owned(), (p, until));
                }
                None => {
                    l.remove(consumer);
                }
            }
        }
        Ok(pos)
    }

    fn remember_position(&self, consumer: &str, position: i64, still_held: bool) {
        if let Ok(mut l) = self.leases.lock() {
            if still_held {
                if let Some(entry) = l.get_mut(consumer) {
                    entry.0 = position;
                }
            } else {
                l.remove(consumer);
            }
        }
    }

    async fn call(&self, handler: &dyn EventHandler, event: &Event) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let result =
            match tokio::time::timeout(self.cfg.handler_timeout, handler.handle(event)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("handler timed out")),
            };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("bus_deliveries_total", "consumer" => handler.name().to_owned(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("bus_handler_seconds", "consumer" => handler.name().to_owned())
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Writes `consumer`'s in-memory offset when it moved and was last written more than
    /// `offset_flush` ago (or at once with `force`).
    async fn save_offset(&self, consumer: &str, force: bool) -> anyhow::Result<()> {
        let Some(position) = self
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(consumer).map(|(p, _)| *p))
        else {
            return Ok(());
        };
        let due = match self
            .saved
            .lock()
            .ok()
            .and_then(|s| s.get(consumer).copied())
        {
            Some((p, _)) if p >= position => false,
            Some((_, at)) => force || at.elapsed() >= self.cfg.offset_flush,
            None => true,
        };
        if !due {
            return Ok(());
        }
        let moved = self
            .db
            .execute_write(
                sqlx::query(
                    "UPDATE consumer_offsets SET position = $1, updated_at = $2 \
                     WHERE consumer = $3 AND owner = $4",
                )
                .bind(position)
                .bind(self.clock.now().as_micros())
                .bind(consumer)
                .bind(&self.node),
            )
            .await?;
        let held = moved.rows_affected() == 1;
        self.remember_position(consumer, position, held);
        if let Ok(mut saved) = self.saved.lock() {
            if held {
                saved.insert(consumer.to_owned(), (position, std::time::Instant::now()));
            } else {
                saved.remove(consumer);
            }
        }
        Ok(())
    }

    /// Writes every offset still held only in memory (at shutdown, and in tests).
    pub async fn flush_offsets(&self) -> anyhow::Result<()> {
        for h in self.handlers() {
            self.save_offset(h.name(), true).await?;
        }
        Ok(())
    }

    /// Gives up this process's consumer leases (at shutdown), writing their offsets first.
    pub async fn release_leases(&self) -> anyhow::Result<u64> {
        self.flush_offsets().await?;
        if let Ok(mut l) = self.leases.lock() {
            l.clear();
        }
        if let Ok(mut s) = self.saved.lock() {
            s.clear();
        }
        let r = self
            .db
            .execute_write(
                sqlx::query(
                    "UPDATE consumer_offsets SET owner = NULL, lease_until = 0 WHERE owner = $1",
                )
                .bind(&self.node),
            )
            .await?;
        Ok(r.rows_affected())
    }

    /// Delivers one batch after the consumer's offset. Returns how many events were read.
    pub async fn consume_once(&self, handler: &dyn EventHandler) -> anyhow::Result<usize> {
        let name = handler.name();
        let Some(offset) = self.lease(name).await? else {
            return Ok(0);
        };
        let rows = sqlx::query(&format!(
            "SELECT o.log_pos, {EVENT_COLUMNS} FROM outbox o WHERE o.log_pos > $1 \
             ORDER BY o.log_pos LIMIT $2"
        ))
        .bind(offset)
        .bind(self.cfg.batch_size)
        .fetch_all(self.db.reader())
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut last = offset;
        for row in &rows {
            let pos: i64 = row.try_get("log_pos")?;
            let event = event_of(row)?;
            if handler.interested_in(&event.event_type)
                && let Err(e) = self.call(handler, &event).await
            {
                self.schedule_retry(name, &event, 1, &e).await?;
            }
            last = pos;
        }
        lag_gauge(name, &self.db, last).await;
        self.remember_position(name, last, true);
        self.save_offset(name, false).await?;
        Ok(rows.len())
    }

    async fn schedule_retry(
        &self,
        consumer: &str,
        event: &Event,
        attempts: u32,
        error: &anyhow::Error,
    ) -> anyhow::Result<()> {
        let now = self.clock.now();
        let dead = attempts >= self.cfg.max_attempts;
        let next = now.plus(crate::resilience::backoff(
            attempts,
            self.cfg.backoff_base,
            self.cfg.backoff_max,
        ));
        let message: String = format!("{error:#}").chars().take(2000).collect();
        let status = if dead { "dead" } else { "retrying" };
        self.db.execute_write(sqlx::query(
            "INSERT INTO event_retries (id, consumer, event_id, status, attempts, next_attempt_at, \
             last_error, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$8) \
             ON CONFLICT (consumer, event_id) DO UPDATE SET status = $4, attempts = $5, \
             next_attempt_at = $6, last_error = $7, updated_at = $8",
        )
        .bind(crate::id::new_id("dlv"))
        .bind(consumer)
        .bind(&event.id)
        .bind(status)
        .bind(i64::from(attempts))
        .bind(next.as_micros())
        .bind(&message)
        .bind(now.as_micros()))
        .await?;
        if dead {
            metrics::counter!("bus_dead_letters_total", "consumer" => consumer.to_owned())
                .increment(1);
            tracing::error!(consumer, event_id = %event.id, event_type = %event.event_type, attempts, error = %message, "event dead-lettered");
        } else {
            tracing::warn!(consumer, event_id = %event.id, event_type = %event.event_type, attempts, error = %message, "event delivery failed; will retry");
        }
        Ok(())
    }

    /// Runs the consumer's due retries. Returns how many were attempted.
    pub async fn retry_once(&self, handler: &dyn EventHandler) -> anyhow::Result<usize> {
        let name = handler.name();
        if self.lease(name).await?.is_none() {
            return Ok(0);
        }
        let now = self.clock.now();
        let rows = sqlx::query(&format!(
            "SELECT r.attempts, {EVENT_COLUMNS} FROM event_retries r \
             JOIN outbox o ON o.id = r.event_id \
             WHERE r.consumer = $1 AND r.status = 'retrying' AND r.next_attempt_at <= $2 \
             ORDER BY r.next_attempt_at LIMIT 50"
        ))
        .bind(name)
        .bind(now.as_micros())
        .fetch_all(self.db.reader())
        .await?;
        for row in &rows {
            let attempts: i64 = row.try_get("attempts")?;
            let event = event_of(row)?;
            match self.call(handler, &event).await {
                Ok(()) => {
                    self.db
                        .execute_write(
                            sqlx::query(
                                "DELETE FROM event_retries WHERE consumer = $1 AND event_id = $2",
                            )
                            .bind(name)
                            .bind(&event.id),
                        )
                        .await?;
                    tracing::info!(consumer = name, event_id = %event.id, attempts = attempts + 1, "event delivered after retry");
                }
                Err(e) => {
                    let attempts = u32::try_from(attempts + 1).unwrap_or(u32::MAX);
                    self.schedule_retry(name, &event, attempts, &e).await?;
                }
            }
        }
        Ok(rows.len())
    }
}

async fn lag_gauge(consumer: &str, db: &Db, position: i64) {
    if let Ok(head) =
        sqlx::query_scalar::<_, i64>("SELECT position FROM outbox_log_head WHERE id = 1")
            .fetch_one(db.reader())
            .await
    {
        metrics::gauge!("outbox_consumer_lag", "consumer" => consumer.to_owned())
            .set((head - position).max(0) as f64);
    }
}

#[async_trait::async_trait]
impl EventBus for EmbeddedBus {
    fn subscribe(&self, handler: Arc<dyn EventHandler>) {
        if let Ok(mut h) = self.handlers.write() {
            h.retain(|x| x.name() != handler.name());
            h.push(handler);
        }
    }

    async fn pump(&self) -> anyhow::Result<Outcome> {
        let mut worked = self.relay_once().await? > 0;
        // One read of the log head spares a read per consumer already caught up.
        let head: i64 = sqlx::query_scalar("SELECT position FROM outbox_log_head WHERE id = 1")
            .fetch_one(self.db.reader())
            .await?;
        // Due retries are rare: look for them at most once a second (or when told to).
        let check_retries = {
            let now = std::time::Instant::now();
            match self.last_retry_check.lock() {
                Ok(mut last)
                    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) =>
                {
                    *last = Some(now);
                    true
                }
                _ => false,
            }
        };
        for h in self.handlers() {
            let caught_up = self
                .leases
                .lock()
                .ok()
                .and_then(|l| l.get(h.name()).map(|(pos, _)| *pos >= head))
                .unwrap_or(false);
            if !caught_up {
                worked |= self.consume_once(h.as_ref()).await? > 0;
            }
            if check_retries {
                worked |= self.retry_once(h.as_ref()).await? > 0;
            }
            self.save_offset(h.name(), false).await?;
        }
        Ok(if worked {
            Outcome::Worked
        } else {
            Outcome::Idle
        })
    }

    async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let poll = self.cfg.poll_interval;
        let bus = self.clone();
        crate::jobs::run_worker("event-bus", Duration::ZERO, shutdown.clone(), move || {
            let bus = bus.clone();
            async move {
                let outcome = bus.pump().await?;
                if outcome == Outcome::Idle {
                    super::wait_for_events(poll).await;
                }
                Ok(Outcome::Worked)
            }
        })
        .await;
        // Hand the consumers back at once, so a restarted (or another) process does not wait
        // for this one's leases to run out before delivering again.
        if let Err(e) = self.release_leases().await {
            tracing::warn!(error = %format!("{e:#}"), "could not release consumer leases");
        }
    }
}
