//! SQL for the live tables: one method per use case, one transaction per method.
//!
//! Every event of a stream takes its number from `live_streams.last_seq` in the transaction that
//! writes it (see the migration): writers of one stream commit in sequence order.

use crate::model::{EventKind, StreamEvent, StreamStatus};
use mercato_events::live::{StreamEnded, StreamStarted};
use mercato_kernel::Timestamp;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, Tx};
use mercato_kernel::outbox::{self, NewEvent};
use sqlx::Row as _;
use std::sync::Arc;

/// A stream as stored.
#[derive(Clone, Debug)]
pub struct StreamRow {
    pub id: String,
    pub seller_id: String,
    pub title: String,
    pub status: StreamStatus,
    pub starts_at: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub pinned_product_id: Option<String>,
    pub last_seq: i64,
    pub created_at: i64,
}

const STREAM_COLS: &str = "id, seller_id, title, status, starts_at, started_at, ended_at, \
                           pinned_product_id, last_seq, created_at";

fn stream_of(r: &Row) -> Result<StreamRow, StoreError> {
    let g = |e: sqlx::Error| StoreError::Other(e.into());
    let status: String = r.try_get("status").map_err(g)?;
    Ok(StreamRow {
        id: r.try_get("id").map_err(g)?,
        seller_id: r.try_get("seller_id").map_err(g)?,
        title: r.try_get("title").map_err(g)?,
        status: StreamStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown stream status {status}")))?,
        starts_at: r.try_get("starts_at").map_err(g)?,
        started_at: r.try_get("started_at").map_err(g)?,
        ended_at: r.try_get("ended_at").map_err(g)?,
        pinned_product_id: r.try_get("pinned_product_id").map_err(g)?,
        last_seq: r.try_get("last_seq").map_err(g)?,
        created_at: r.try_get("created_at").map_err(g)?,
    })
}

/// A comment as stored.
#[derive(Clone, Debug)]
pub struct CommentRow {
    pub id: String,
    pub stream_id: String,
    pub seq: i64,
    pub user_id: String,
    pub user_name: Option<String>,
    pub body: String,
    pub at: i64,
    pub deleted: bool,
}

const COMMENT_COLS: &str = "id, stream_id, seq, user_id, user_name, body, at, deleted_at";

fn comment_of(r: &Row) -> Result<CommentRow, sqlx::Error> {
    Ok(CommentRow {
        id: r.try_get("id")?,
        stream_id: r.try_get("stream_id")?,
        seq: r.try_get("seq")?,
        user_id: r.try_get("user_id")?,
        user_name: r.try_get("user_name")?,
        body: r.try_get("body")?,
        at: r.try_get("at")?,
        deleted: r.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
    })
}

fn event_of(r: &Row) -> Result<StreamEvent, StoreError> {
    let g = |e: sqlx::Error| StoreError::Other(e.into());
    let kind: String = r.try_get("kind").map_err(g)?;
    let data: String = r.try_get("data").map_err(g)?;
    Ok(StreamEvent {
        stream_id: r.try_get("stream_id").map_err(g)?,
        seq: r.try_get("seq").map_err(g)?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown live event kind {kind}")))?,
        at: r.try_get("at").map_err(g)?,
        data: Arc::from(data),
    })
}

/// Which statuses a stream must be in to take an event.
#[derive(Clone, Copy, Debug)]
pub enum Accepting {
    /// Only while live (comments).
    Live,
    /// Scheduled or live (product changes, pins, moderation).
    Open,
}

/// A product shown in a stream with the facts last sent about it (JSON).
#[derive(Clone, Debug)]
pub struct ShownProduct {
    pub stream_id: String,
    pub product_id: String,
    pub facts: String,
}

#[derive(Clone)]
pub struct LiveStore {
    db: Db,
}

/// Takes the next event number of `stream_id` if it accepts events (`None`: unknown or not
/// accepting). The row stays locked until the transaction ends.
async fn next_seq(
    tx: &mut Tx,
    stream_id: &str,
    now: Timestamp,
    accepting: Accepting,
) -> StoreResult<Option<i64>> {
    let (a, b) = match accepting {
        Accepting::Live => ("live", "live"),
        Accepting::Open => ("live", "scheduled"),
    };
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE live_streams SET last_seq = last_seq + 1, updated_at = $2 \
         WHERE id = $1 AND status IN ($3, $4) RETURNING last_seq",
    )
    .bind(stream_id)
    .bind(now.as_micros())
    .bind(a)
    .bind(b)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(seq)
}

async fn insert_event(tx: &mut Tx, ev: &StreamEvent) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO live_events (stream_id, seq, kind, data, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&ev.stream_id)
    .bind(ev.seq)
    .bind(ev.kind.as_str())
    .bind(&*ev.data)
    .bind(ev.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Takes the next number and writes the event whose data `data(seq)` builds.
async fn append(
    tx: &mut Tx,
    stream_id: &str,
    kind: EventKind,
    now: Timestamp,
    accepting: Accepting,
    data: impl FnOnce(i64) -> String,
) -> StoreResult<Option<StreamEvent>> {
    let Some(seq) = next_seq(tx, stream_id, now, accepting).await? else {
        return Ok(None);
    };
    let ev = StreamEvent {
        stream_id: stream_id.to_owned(),
        seq,
        kind,
        at: now.as_micros(),
        data: Arc::from(data(seq)),
    };
    insert_event(tx, &ev).await?;
    Ok(Some(ev))
}

impl LiveStore {
    pub fn new(db: Db) -> LiveStore {
        LiveStore { db }
    }

    /// Inserts a stream with its products (and `live.stream_started` when it starts live).
    pub async fn insert_stream(
        &self,
        s: &StreamRow,
        products: &[(String, String)],
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO live_streams (id, seller_id, title, status, starts_at, started_at, \
             ended_at, pinned_product_id, last_seq, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, 0, $7, $7)",
        )
        .bind(&s.id)
        .bind(&s.seller_id)
        .bind(&s.title)
        .bind(s.status.as_str())
        .bind(s.starts_at)
        .bind(s.started_at)
        .bind(s.created_at)
        .execute(&mut *tx)
        .await?;
        for (i, (pid, facts)) in products.iter().enumerate() {
            sqlx::query(
                "INSERT INTO live_stream_products (stream_id, product_id, position, facts) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id, product_id) DO NOTHING",
            )
            .bind(&s.id)
            .bind(pid)
            .bind(i as i64)
            .bind(facts)
            .execute(&mut *tx)
            .await?;
        }
        if s.status == StreamStatus::Live {
            outbox::append(
                &mut tx,
                now,
                NewEvent::of(&StreamStarted {
                    stream_id: s.id.clone(),
                    seller_id: s.seller_id.clone(),
                    title: s.title.clone(),
                    product_ids: products.iter().map(|(p, _)| p.clone()).collect(),
                }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn stream(&self, id: &str) -> StoreResult<Option<StreamRow>> {
        let row = sqlx::query(&format!(
            "SELECT {STREAM_COLS} FROM live_streams WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(stream_of).transpose()
    }

    /// A page of streams, newest first, optionally of one status and one seller; one row more
    /// than `limit` when another page follows.
    pub async fn list(
        &self,
        status: Option<StreamStatus>,
        seller: Option<&str>,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<StreamRow>> {
        let (bt, bid) = before.unwrap_or((i64::MAX, String::new()));
        let first_page = i64::from(bid.is_empty());
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLS} FROM live_streams \
             WHERE ($1 = '' OR status = $1) AND ($2 = '' OR seller_id = $2) \
             AND ($5 = 1 OR created_at < $3 OR (created_at = $3 AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(status.map(StreamStatus::as_str).unwrap_or(""))
        .bind(seller.unwrap_or(""))
        .bind(bt)
        .bind(bid)
        .bind(first_page)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(stream_of).collect()
    }

    /// The products of a stream in their order, with their last facts.
    pub async fn products(&self, stream_id: &str) -> StoreResult<Vec<ShownProduct>> {
        let rows = sqlx::query(
            "SELECT stream_id, product_id, facts FROM live_stream_products WHERE stream_id = $1 \
             ORDER BY position, product_id",
        )
        .bind(stream_id)
        .fetch_all(self.db.reader())
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(ShownProduct {
                    stream_id: r.try_get("stream_id")?,
                    product_id: r.try_get("product_id")?,
                    facts: r.try_get("facts")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Changes a stream's status from `from` to `to` (`Conflict` when it is no longer `from`).
    /// Starting announces `live.stream_started`; ending writes the feed's `ended` event and
    /// `live.stream_ended`.
    pub async fn transition(
        &self,
        s: &StreamRow,
        to: StreamStatus,
        product_ids: Vec<String>,
        now: Timestamp,
    ) -> StoreResult<Option<StreamEvent>> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "UPDATE live_streams SET status = $2, \
             started_at = CASE WHEN $2 = 'live' THEN $4 ELSE started_at END, \
             ended_at = CASE WHEN $2 = 'ended' THEN $4 ELSE ended_at END, updated_at = $4 \
             WHERE id = $1 AND status = $3",
        )
        .bind(&s.id)
        .bind(to.as_str())
        .bind(s.status.as_str())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(StoreError::Conflict("the stream's status changed".into()));
        }
        let mut ended = None;
        match to {
            StreamStatus::Live => {
                outbox::append(
                    &mut tx,
                    now,
                    NewEvent::of(&StreamStarted {
                        stream_id: s.id.clone(),
                        seller_id: s.seller_id.clone(),
                        title: s.title.clone(),
                        product_ids,
                    }),
                )
                .await?;
            }
            StreamStatus::Ended => {
                let comments: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM live_comments WHERE stream_id = $1")
                        .bind(&s.id)
                        .fetch_one(&mut *tx)
                        .await?;
                // The status is already `ended`: take the number without the status guard.
                let seq: i64 = sqlx::query_scalar(
                    "UPDATE live_streams SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
                )
                .bind(&s.id)
                .fetch_one(&mut *tx)
                .await?;
                let ev = StreamEvent {
                    stream_id: s.id.clone(),
                    seq,
                    kind: EventKind::Ended,
                    at: now.as_micros(),
                    data: Arc::from(
                        serde_json::json!({"stream_id": s.id, "at": now, "comments": comments})
                            .to_string(),
                    ),
                };
                insert_event(&mut tx, &ev).await?;
                outbox::append(
                    &mut tx,
                    now,
                    NewEvent::of(&StreamEnded {
                        stream_id: s.id.clone(),
                        seller_id: s.seller_id.clone(),
                        comments,
                    }),
                )
                .await?;
                ended = Some(ev);
            }
            StreamStatus::Scheduled => {}
        }
        tx.commit().await?;
        Ok(ended)
    }

    pub async fn is_banned(&self, stream_id: &str, user_id: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM live_bans WHERE stream_id = $1 AND user_id = $2",
        )
        .bind(stream_id)
        .bind(user_id)
        .fetch_one(self.db.reader())
        .await?;
        Ok(n > 0)
    }

    /// Bans `user_id` from posting in the stream (a repeated ban keeps the first).
    pub async fn ban(
        &self,
        stream_id: &str,
        user_id: &str,
        by: &str,
        now: Timestamp,
    ) -> StoreResult<i64> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO live_bans (stream_id, user_id, banned_by, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stream_id, user_id) DO NOTHING",
        )
        .bind(stream_id)
        .bind(user_id)
        .bind(by)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        let at: i64 =
            sqlx::query_scalar("SELECT at FROM live_bans WHERE stream_id = $1 AND user_id = $2")
                .bind(stream_id)
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
        outbox::audit(
            &mut tx,
            now,
            by,
            "live.ban",
            "live_stream",
            stream_id,
            serde_json::json!({"user_id": user_id}),
        )
        .await?;
        tx.commit().await?;
        Ok(at)
    }

    /// Comments of `user_id` in the stream since `since` (µs): how many, and the oldest time.
    pub async fn recent_comments(
        &self,
        stream_id: &str,
        user_id: &str,
        since: i64,
    ) -> StoreResult<(i64, Option<i64>)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM live_comments \
             WHERE stream_id = $1 AND user_id = $2 AND at > $3",
        )
        .bind(stream_id)
        .bind(user_id)
        .bind(since)
        .fetch_one(self.db.reader())
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }

    /// Writes a comment and its feed event (durable when this returns). `None`: the stream is
    /// unknown or not live.
    pub async fn insert_comment(
        &self,
        c: &mut CommentRow,
        data: impl FnOnce(&CommentRow) -> String,
        now: Timestamp,
    ) -> StoreResult<Option<StreamEvent>> {
        let mut tx = self.db.begin().await?;
        let Some(seq) = next_seq(&mut tx, &c.stream_id, now, Accepting::Live).await? else {
            return Ok(None);
        };
        c.seq = seq;
        sqlx::query(
            "INSERT INTO live_comments (id, stream_id, seq, user_id, user_name, body, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.id)
        .bind(&c.stream_id)
        .bind(c.seq)
        .bind(&c.user_id)
        .bind(&c.user_name)
        .bind(&c.body)
        .bind(c.at)
        .execute(&mut *tx)
        .await?;
        let ev = StreamEvent {
            stream_id: c.stream_id.clone(),
            seq,
            kind: EventKind::Comment,
            at: c.at,
            data: Arc::from(data(c)),
        };
        insert_event(&mut tx, &ev).await?;
        tx.commit().await?;
        Ok(Some(ev))
    }

    pub async fn comment(&self, id: &str) -> StoreResult<Option<CommentRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COMMENT_COLS} FROM live_comments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        Ok(row.as_ref().map(comment_of).transpose()?)
    }

    /// Marks a comment deleted and writes `comment_deleted` to its stream's feed. `None` when it
    /// was already deleted (nothing is written again).
    pub async fn delete_comment(
        &self,
        c: &CommentRow,
        by: &str,
        now: Timestamp,
    ) -> StoreResult<Option<StreamEvent>> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "UPDATE live_comments SET deleted_at = $2, deleted_by = $3 \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(&c.id)
        .bind(now.as_micros())
        .bind(by)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        let data =
            serde_json::json!({"comment_id": c.id, "comment_seq": c.seq, "stream_id": c.stream_id})
                .to_string();
        // An ended stream's log is closed: the comment disappears from catch-up only.
        let ev = append(
            &mut tx,
            &c.stream_id,
            EventKind::CommentDeleted,
            now,
            Accepting::Open,
            |_| data,
        )
        .await?;
        outbox::audit(
            &mut tx,
            now,
            by,
            "live.comment_deleted",
            "live_comment",
            &c.id,
            serde_json::json!({"stream_id": c.stream_id, "user_id": c.user_id}),
        )
        .await?;
        tx.commit().await?;
        Ok(ev)
    }

    /// Visible comments after `since` (a sequence number), oldest first; `limit + 1` rows.
    pub async fn comments_since(
        &self,
        stream_id: &str,
        since: i64,
        limit: u32,
    ) -> StoreResult<Vec<CommentRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COMMENT_COLS} FROM live_comments \
             WHERE stream_id = $1 AND seq > $2 AND deleted_at IS NULL ORDER BY seq LIMIT $3"
        ))
        .bind(stream_id)
        .bind(since)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        Ok(rows.iter().map(comment_of).collect::<Result<_, _>>()?)
    }

    /// Pins a product (adding it to the stream's products) and writes `pinned`.
    pub async fn pin(
        &self,
        stream_id: &str,
        product_id: &str,
        facts: &str,
        data: String,
        now: Timestamp,
    ) -> StoreResult<Option<StreamEvent>> {
        let mut tx = self.db.begin().await?;
        let Some(ev) = append(
            &mut tx,
            stream_id,
            EventKind::Pinned,
            now,
            Accepting::Open,
            |_| data,
        )
        .await?
        else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO live_stream_products (stream_id, product_id, position, facts) \
             VALUES ($1, $2, (SELECT COUNT(*) FROM live_stream_products WHERE stream_id = $1), $3) \
             ON CONFLICT (stream_id, product_id) DO UPDATE SET facts = $3",
        )
        .bind(stream_id)
        .bind(product_id)
        .bind(facts)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE live_streams SET pinned_product_id = $2 WHERE id = $1")
            .bind(stream_id)
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(ev))
    }

    /// Products among `product_ids` shown in a stream that has not ended.
    pub async fn shown(&self, product_ids: &[String]) -> StoreResult<Vec<ShownProduct>> {
        if product_ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (2..product_ids.len() + 2)
            .map(|i| format!("${i}"))
            .collect();
        let sql = format!(
            "SELECT p.stream_id, p.product_id, p.facts FROM live_stream_products p \
             JOIN live_streams s ON s.id = p.stream_id \
             WHERE s.status <> $1 AND p.product_id IN ({}) ORDER BY p.stream_id, p.product_id",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind("ended");
        for p in product_ids {
            q = q.bind(p);
        }
        let rows = q.fetch_all(self.db.reader()).await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(ShownProduct {
                    stream_id: r.try_get("stream_id")?,
                    product_id: r.try_get("product_id")?,
                    facts: r.try_get("facts")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Applies a bus event's product changes exactly once (by `event_id` for `consumer`): new
    /// facts stored and one `product` event per stream. Empty when already applied.
    pub async fn product_changes(
        &self,
        consumer: &str,
        event_id: &str,
        changes: &[(ShownProduct, String)],
        now: Timestamp,
    ) -> StoreResult<Vec<StreamEvent>> {
        let mut tx = self.db.begin().await?;
        if !outbox::mark_processed(&mut tx, consumer, event_id, now).await? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (shown, data) in changes {
            let r = sqlx::query(
                "UPDATE live_stream_products SET facts = $3 WHERE stream_id = $1 AND product_id = $2",
            )
            .bind(&shown.stream_id)
            .bind(&shown.product_id)
            .bind(&shown.facts)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 0 {
                continue;
            }
            let d = data.clone();
            if let Some(ev) = append(
                &mut tx,
                &shown.stream_id,
                EventKind::Product,
                now,
                Accepting::Open,
                |_| d,
            )
            .await?
            {
                out.push(ev);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Events of a stream after `seq`, in order (at most `limit`).
    pub async fn events_after(
        &self,
        stream_id: &str,
        seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<StreamEvent>> {
        let rows = sqlx::query(
            "SELECT stream_id, seq, kind, data, at FROM live_events \
             WHERE stream_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(stream_id)
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(event_of).collect()
    }

    /// The stream's newest events written at or after `since` (µs), oldest first, at most `max`
    /// of them, and the stream's last sequence number (read first: every event up to it is
    /// committed) and status.
    pub async fn recent_events(
        &self,
        stream_id: &str,
        since: i64,
        max: u32,
    ) -> StoreResult<Option<(i64, StreamStatus, Vec<StreamEvent>)>> {
        let Some(row) = sqlx::query("SELECT last_seq, status FROM live_streams WHERE id = $1")
            .bind(stream_id)
            .fetch_optional(self.db.reader())
            .await?
        else {
            return Ok(None);
        };
        let head: i64 = row.try_get("last_seq")?;
        let status: String = row.try_get("status")?;
        let status = StreamStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown stream status {status}")))?;
        let rows = sqlx::query(
            "SELECT stream_id, seq, kind, data, at FROM live_events \
             WHERE stream_id = $1 AND at >= $2 AND seq <= $3 ORDER BY seq DESC LIMIT $4",
        )
        .bind(stream_id)
        .bind(since)
        .bind(head)
        .bind(i64::from(max))
        .fetch_all(self.db.reader())
        .await?;
        let mut evs = rows.iter().map(event_of).collect::<StoreResult<Vec<_>>>()?;
        evs.reverse();
        Ok(Some((head, status, evs)))
    }
}
