//! Admin view of event delivery: undelivered events, retries, dead letters, and redelivery.
//! `GET /api/v1/admin/outbox`, `POST /api/v1/admin/outbox/{id}/redeliver`.

use crate::Kernel;
use crate::auth::{Admins, Authorized};
use crate::clock::Timestamp;
use crate::error::{ApiError, Code};
use crate::http::ApiQuery;
use crate::pagination::{Page, PageQuery};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Json, response::IntoResponse};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use utoipa_axum::{router::OpenApiRouter, routes};

/// One undelivered event, pending retry or dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxEntry {
    /// `dlv_…` for a delivery (retrying/dead), the event id for an unpublished event.
    pub id: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The consumer that failed (absent for unpublished events).
    pub consumer: Option<String>,
    /// `unpublished`, `retrying` or `dead`.
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
    pub occurred_at: Timestamp,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxPage {
    pub data: Vec<OutboxEntry>,
    pub next_cursor: Option<String>,
    /// Events committed but not yet given a log position.
    pub unpublished_count: i64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// `dead`, `retrying` or `unpublished`; default: dead and retrying.
    #[param(pattern = "^(dead|retrying|unpublished)$")]
    pub status: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Kernel: axum::extract::FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_outbox))
        .routes(routes!(redeliver))
}

fn entry_of(
    row: &crate::db::Row,
    status_override: Option<&str>,
) -> Result<OutboxEntry, sqlx::Error> {
    Ok(OutboxEntry {
        id: row.try_get("entry_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        consumer: row.try_get("consumer")?,
        status: match status_override {
            Some(s) => s.to_owned(),
            None => row.try_get("status")?,
        },
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: row
            .try_get::<Option<i64>, _>("next_attempt_at")?
            .map(Timestamp::from_micros),
        occurred_at: Timestamp::from_micros(row.try_get("occurred_at")?),
    })
}

/// List undelivered events and dead letters (admin).
#[utoipa::path(get, path = "/admin/outbox", tag = "admin", params(OutboxQuery),
    responses((status = 200, body = OutboxPage), (status = 403, body = crate::error::Problem)),
    security(("bearer" = [])))]
async fn list_outbox(
    State(k): State<Kernel>,
    _: Authorized<Admins>,
    ApiQuery(q): ApiQuery<OutboxQuery>,
) -> Result<Json<OutboxPage>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<String>()?;
    let after = page.after.unwrap_or_default();
    let fetch = i64::from(page.limit) + 1;
    let unpublished_count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE log_pos IS NULL")
            .fetch_one(k.db.reader())
            .await?;
    let rows: Vec<OutboxEntry> = match q.status.as_deref() {
        Some("unpublished") => sqlx::query(
            "SELECT o.id AS entry_id, o.id AS event_id, o.event_type, o.aggregate_type, \
             o.aggregate_id, NULL AS consumer, 0 AS attempts, NULL AS last_error, \
             NULL AS next_attempt_at, o.occurred_at FROM outbox o \
             WHERE o.log_pos IS NULL AND o.id > $1 ORDER BY o.id LIMIT $2",
        )
        .bind(&after)
        .bind(fetch)
        .fetch_all(k.db.reader())
        .await?
        .iter()
        .map(|r| entry_of(r, Some("unpublished")))
        .collect::<Result<_, _>>()?,
        status @ (None | Some("dead") | Some("retrying")) => {
            let (a, b) = match status {
                Some(s) => (s, s),
                None => ("dead", "retrying"),
            };
            sqlx::query(
                "SELECT r.id AS entry_id, r.event_id, o.event_type, o.aggregate_type, \
                 o.aggregate_id, r.consumer, r.status, r.attempts, r.last_error, \
                 r.next_attempt_at, o.occurred_at FROM event_retries r \
                 JOIN outbox o ON o.id = r.event_id \
                 WHERE r.status IN ($1, $2) AND r.id > $3 ORDER BY r.id LIMIT $4",
            )
            .bind(a)
            .bind(b)
            .bind(&after)
            .bind(fetch)
            .fetch_all(k.db.reader())
            .await?
            .iter()
            .map(|r| entry_of(r, None))
            .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "status",
                "status must be dead, retrying or unpublished",
            ));
        }
    };
    let page = Page::from_rows(rows, page.limit, |e| e.id.clone());
    Ok(Json(OutboxPage {
        data: page.data,
        next_cursor: page.next_cursor,
        unpublished_count,
    }))
}

/// Redeliver a dead letter (admin): it is retried from a fresh attempt count.
#[utoipa::path(post, path = "/admin/outbox/{id}/redeliver", tag = "admin",
    params(("id" = String, Path, description = "dead letter id (dlv_…)")),
    responses((status = 202, body = OutboxEntry), (status = 404, body = crate::error::Problem),
              (status = 409, body = crate::error::Problem)),
    security(("bearer" = [])))]
async fn redeliver(
    State(k): State<Kernel>,
    principal: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !crate::id::is_valid("dlv", &id) {
        return Err(ApiError::not_found());
    }
    let now = k.clock.now();
    let mut tx = k.db.begin().await?;
    let updated = sqlx::query(
        "UPDATE event_retries SET status = 'retrying', attempts = 0, next_attempt_at = $1, \
         updated_at = $1 WHERE id = $2 AND status = 'dead'",
    )
    .bind(now.as_micros())
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT status FROM event_retries WHERE id = $1")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
        return Err(match exists {
            Some(status) => ApiError::new(Code::NotDeadLetter)
                .detail(format!("this delivery is {status}, not dead")),
            None => ApiError::not_found(),
        });
    }
    crate::outbox::audit(
        &mut tx,
        now,
        &principal.subject,
        "outbox.redeliver",
        "delivery",
        &id,
        serde_json::json!({}),
    )
    .await?;
    let row = sqlx::query(
        "SELECT r.id AS entry_id, r.event_id, o.event_type, o.aggregate_type, o.aggregate_id, \
         r.consumer, r.status, r.attempts, r.last_error, r.next_attempt_at, o.occurred_at \
         FROM event_retries r JOIN outbox o ON o.id = r.event_id WHERE r.id = $1",
    )
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    let entry = entry_of(&row, None)?;
    tx.commit().await?;
    super::WAKE.notify_waiters();
    Ok((StatusCode::ACCEPTED, Json(entry)))
}
