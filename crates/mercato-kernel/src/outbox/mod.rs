//! The transactional outbox and the event bus.
//!
//! A state change and the event announcing it commit in ONE transaction ([`append`]). Events are
//! then delivered at least once to every registered consumer ([`EventHandler`]) by an
//! [`EventBus`]: in embedded mode the outbox table itself is the log (see [`embedded`]); a
//! NATS JetStream bus can replace it without touching consumers. Consumers make delivery
//! exactly-once in effect by recording the event id with their effects ([`mark_processed`]).
//! A failed delivery is retried with exponential backoff and jitter, then parked as a dead
//! letter (`GET /api/v1/admin/outbox`), from where an admin can redeliver it.

pub mod admin;
pub mod embedded;

use crate::clock::Timestamp;
use crate::db::{StoreResult, Tx};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub use embedded::{BusConfig, EmbeddedBus};

/// An event as consumers see it (the envelope of API.md "Events").
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: Timestamp,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub version: i64,
    pub data: Value,
}

impl Event {
    /// Deserializes `data` into the producer's payload type.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        Ok(serde_json::from_value(self.data.clone())?)
    }

    /// Decodes the payload of an event of type `P::TYPE` (an error for another type or a
    /// payload that does not fit: the producer and this consumer disagree).
    pub fn decode<P: EventPayload>(&self) -> anyhow::Result<P> {
        if self.event_type != P::TYPE {
            anyhow::bail!("event {} is {}, not {}", self.id, self.event_type, P::TYPE);
        }
        serde_json::from_value(self.data.clone())
            .map_err(|e| anyhow::anyhow!("{} payload of event {}: {e}", P::TYPE, self.id))
    }
}

/// The payload of one event type: the one contract its producer writes and its consumers read
/// (payload types live in the `mercato-events` crate, shared by every system).
pub trait EventPayload: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The event type, e.g. `order.confirmed`.
    const TYPE: &'static str;
    /// The aggregate type, e.g. `order`.
    const AGGREGATE: &'static str;
    /// The aggregate type of this event: [`Self::AGGREGATE`] unless the payload says
    /// otherwise (one event type about either of two aggregates, e.g. `fraud.flagged`).
    fn aggregate_type(&self) -> &'static str {
        Self::AGGREGATE
    }
    /// The id of the aggregate the event is about.
    fn aggregate_id(&self) -> &str;
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: i64,
    pub data: Value,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
}

impl NewEvent {
    pub fn new(
        event_type: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        data: impl Serialize,
    ) -> NewEvent {
        NewEvent {
            event_type: event_type.to_owned(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version: 1,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            correlation_id: crate::http::current_request_id(),
            causation_id: None,
        }
    }

    /// The event carrying `payload` (type, aggregate and id from its [`EventPayload`] impl).
    pub fn of<P: EventPayload>(payload: &P) -> NewEvent {
        NewEvent::new(
            P::TYPE,
            payload.aggregate_type(),
            payload.aggregate_id(),
            payload,
        )
    }

    pub fn version(mut self, v: i64) -> NewEvent {
        self.version = v;
        self
    }

    /// Marks this event as caused by `cause` (and inherits its correlation id).
    pub fn caused_by(mut self, cause: &Event) -> NewEvent {
        self.causation_id = Some(cause.id.clone());
        if cause.correlation_id.is_some() {
            self.correlation_id = cause.correlation_id.clone();
        }
        self
    }
}

static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Writes `event` to the outbox inside the caller's transaction; returns its id.
pub async fn append(tx: &mut Tx, now: Timestamp, event: NewEvent) -> StoreResult<String> {
    use crate::db::Cell;
    let id = crate::id::new_id("evt");
    // Written at commit with the transaction's other events, in one statement.
    tx.append_row(
        "INSERT INTO outbox (id, event_type, occurred_at, aggregate_type, aggregate_id, \
         correlation_id, causation_id, version, data)",
        vec![
            Cell::Text(id.clone()),
            Cell::Text(event.event_type.clone()),
            Cell::Int(now.as_micros()),
            Cell::Text(event.aggregate_type),
            Cell::Text(event.aggregate_id),
            Cell::OptText(event.correlation_id),
            Cell::OptText(event.causation_id),
            Cell::Int(event.version),
            Cell::Text(serde_json::to_string(&event.data).unwrap_or_else(|_| "null".into())),
        ],
    );
    metrics::counter!("outbox_events_appended_total", "type" => event.event_type).increment(1);
    // The relay may look before this commits; it then finds the event on its next poll.
    WAKE.notify_waiters();
    Ok(id)
}

/// Records that `consumer` applied `event_id`, in the caller's transaction. Returns `false`
/// when it already had: the caller must then skip its effects (and may commit or roll back).
pub async fn mark_processed(
    tx: &mut Tx,
    consumer: &str,
    event_id: &str,
    now: Timestamp,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1,$2,$3) \
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(now.as_micros())
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A named, durable consumer of events.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Durable name: the offset, retries and dead letters are kept under it.
    fn name(&self) -> &str;
    /// Whether to deliver events of this type (others are skipped, offset still advances).
    fn interested_in(&self, event_type: &str) -> bool;
    /// Applies the event. Must be idempotent by `event.id` (see [`mark_processed`]).
    async fn handle(&self, event: &Event) -> anyhow::Result<()>;
}

/// Delivers outbox events to registered handlers.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Registers a consumer (before or after the bus started).
    fn subscribe(&self, handler: Arc<dyn EventHandler>);
    /// One round of work (publish pending events, deliver a batch to each consumer, run due
    /// retries). Tests call it to drive delivery deterministically.
    async fn pump(&self) -> anyhow::Result<crate::jobs::Outcome>;
    /// Runs the bus until shutdown.
    async fn run(self: Arc<Self>, shutdown: crate::shutdown::Shutdown);
}

/// Appends an entry to the append-only audit log in the caller's transaction.
pub async fn audit(
    tx: &mut Tx,
    now: Timestamp,
    actor: &str,
    action: &str,
    entity_type: &str,
    entity_id: &str,
    data: impl Serialize,
) -> StoreResult<()> {
    use crate::db::Cell;
    tx.append_row(
        "INSERT INTO audit_log (id, at, actor, action, entity_type, entity_id, data, request_id)",
        vec![
            Cell::Text(crate::id::new_id("aud")),
            Cell::Int(now.as_micros()),
            Cell::Text(actor.to_owned()),
            Cell::Text(action.to_owned()),
            Cell::Text(entity_type.to_owned()),
            Cell::Text(entity_id.to_owned()),
            Cell::Text(serde_json::to_string(&data).unwrap_or_else(|_| "null".into())),
            Cell::OptText(crate::http::current_request_id()),
        ],
    );
    Ok(())
}

/// One entry of the audit trail.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub request_id: Option<String>,
}

/// Audit entries in log order after `after_seq`, optionally for one entity type and id;
/// `limit + 1` rows (for keyset pages), each with its position.
pub async fn audit_page(
    db: &crate::db::Db,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    after_seq: i64,
    limit: u32,
) -> StoreResult<Vec<(i64, AuditEntry)>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT seq, id, at, actor, action, entity_type, entity_id, data, request_id FROM audit_log \
         WHERE seq > $1 AND ($2 = '' OR entity_type = $2) AND ($3 = '' OR entity_id = $3) ORDER BY seq LIMIT $4",
    )
    .bind(after_seq)
    .bind(entity_type.unwrap_or_default())
    .bind(entity_id.unwrap_or_default())
    .bind(i64::from(limit) + 1)
    .fetch_all(db.reader())
    .await?;
    let g = |e: sqlx::Error| crate::db::StoreError::Other(e.into());
    rows.iter()
        .map(|r| {
            let data: String = r.try_get("data").map_err(g)?;
            Ok((
                r.try_get::<i64, _>("seq").map_err(g)?,
                AuditEntry {
                    id: r.try_get("id").map_err(g)?,
                    at: Timestamp::from_micros(r.try_get("at").map_err(g)?),
                    actor: r.try_get("actor").map_err(g)?,
                    action: r.try_get("action").map_err(g)?,
                    entity_type: r.try_get("entity_type").map_err(g)?,
                    entity_id: r.try_get("entity_id").map_err(g)?,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                    request_id: r.try_get("request_id").map_err(g)?,
                },
            ))
        })
        .collect()
}

pub(crate) async fn wait_for_events(timeout: std::time::Duration) {
    let _ = tokio::time::timeout(timeout, WAKE.notified()).await;
}
