//! SQL for the links tables: one method per use case, one transaction per method.

use mercato_events::links::{LinkCreated, LinkDeleted, LinkUpdated};
use mercato_kernel::Timestamp;
use mercato_kernel::db::{Cell, Db, Row, StoreError, StoreResult};
use mercato_kernel::outbox::{self, NewEvent};
use sqlx::Row as _;
use std::collections::HashMap;

/// A link as stored.
#[derive(Clone, Debug)]
pub struct LinkRow {
    pub id: String,
    pub code: String,
    pub owner_id: String,
    /// The destination as the owner gave it.
    pub url: String,
    /// The destination with UTM parameters merged (what the redirect sends).
    pub destination: String,
    /// JSON of the UTM parameters.
    pub utm: String,
    /// JSON array of tags.
    pub tags: String,
    pub redirect_status: i64,
    pub expires_at: Option<i64>,
    pub max_clicks: Option<i64>,
    pub clicks: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, code, owner_id, url, destination, utm, tags, redirect_status, expires_at, \
                    max_clicks, clicks, created_at, updated_at";

fn link_of(r: &Row) -> Result<LinkRow, sqlx::Error> {
    Ok(LinkRow {
        id: r.try_get("id")?,
        code: r.try_get("code")?,
        owner_id: r.try_get("owner_id")?,
        url: r.try_get("url")?,
        destination: r.try_get("destination")?,
        utm: r.try_get("utm")?,
        tags: r.try_get("tags")?,
        redirect_status: r.try_get("redirect_status")?,
        expires_at: r.try_get("expires_at")?,
        max_clicks: r.try_get("max_clicks")?,
        clicks: r.try_get("clicks")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// One click ready to be written.
#[derive(Clone, Debug)]
pub struct ClickRow {
    pub id: String,
    pub link_id: String,
    pub at: i64,
    pub referrer: String,
    pub country: String,
    pub browser: String,
    pub os: String,
    pub device: String,
    pub bot: bool,
    pub visitor: String,
}

/// A rollup key: (link, bucket, bucket start, dimension, value, bot).
pub type RollupKey = (String, &'static str, i64, &'static str, String, bool);

#[derive(Clone)]
pub struct LinksStore {
    db: Db,
}

impl LinksStore {
    pub fn new(db: Db) -> LinksStore {
        LinksStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts a link with its tags and `link.created`. A taken code is `Conflict`.
    pub async fn insert(&self, l: &LinkRow, tags: &[String], now: Timestamp) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO links (id, code, owner_id, url, destination, utm, tags, redirect_status, \
             expires_at, max_clicks, clicks, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $11)",
        )
        .bind(&l.id)
        .bind(&l.code)
        .bind(&l.owner_id)
        .bind(&l.url)
        .bind(&l.destination)
        .bind(&l.utm)
        .bind(&l.tags)
        .bind(l.redirect_status)
        .bind(l.expires_at)
        .bind(l.max_clicks)
        .bind(l.created_at)
        .execute(&mut *tx)
        .await?;
        for t in tags {
            sqlx::query(
                "INSERT INTO link_tags (link_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&l.id)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        }
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&LinkCreated {
                link_id: l.id.clone(),
                code: l.code.clone(),
                owner_id: l.owner_id.clone(),
                url: l.url.clone(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A live (not deleted) link by id.
    pub async fn by_id(&self, id: &str) -> StoreResult<Option<LinkRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM links WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        Ok(row.as_ref().map(link_of).transpose()?)
    }

    /// A live link by code (the redirect's cache miss).
    pub async fn by_code(&self, code: &str) -> StoreResult<Option<LinkRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM links WHERE code = $1 AND deleted_at IS NULL"
        ))
        .bind(code)
        .fetch_optional(self.db.reader())
        .await?;
        Ok(row.as_ref().map(link_of).transpose()?)
    }

    /// A page of live links, newest first, optionally of one owner and with one tag; one row
    /// more than `limit` when another page follows.
    pub async fn list(
        &self,
        owner: Option<&str>,
        tag: Option<&str>,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<LinkRow>> {
        let (bt, bid) = before.unwrap_or((i64::MAX, String::new()));
        let has_before = bid.is_empty() as i64;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM links WHERE deleted_at IS NULL \
             AND ($1 = '' OR owner_id = $1) \
             AND ($2 = '' OR id IN (SELECT link_id FROM link_tags WHERE tag = $2)) \
             AND ($5 = 1 OR created_at < $3 OR (created_at = $3 AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(owner.unwrap_or(""))
        .bind(tag.unwrap_or(""))
        .bind(bt)
        .bind(bid)
        .bind(has_before)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        Ok(rows.iter().map(link_of).collect::<Result<_, _>>()?)
    }

    /// Writes a changed link (and its tags when given) with `link.updated`, bumping
    /// `updated_at` so other nodes drop their cached copy.
    pub async fn update(
        &self,
        l: &LinkRow,
        tags: Option<&[String]>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "UPDATE links SET url = $2, destination = $3, utm = $4, tags = $5, \
             redirect_status = $6, expires_at = $7, max_clicks = $8, updated_at = $9 \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(&l.id)
        .bind(&l.url)
        .bind(&l.destination)
        .bind(&l.utm)
        .bind(&l.tags)
        .bind(l.redirect_status)
        .bind(l.expires_at)
        .bind(l.max_clicks)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some(tags) = tags {
            sqlx::query("DELETE FROM link_tags WHERE link_id = $1")
                .bind(&l.id)
                .execute(&mut *tx)
                .await?;
            for t in tags {
                sqlx::query(
                    "INSERT INTO link_tags (link_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(&l.id)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            }
        }
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&LinkUpdated {
                link_id: l.id.clone(),
                code: l.code.clone(),
                owner_id: l.owner_id.clone(),
                url: l.url.clone(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Soft-deletes a link (its code stays taken) with `link.deleted`.
    pub async fn delete(&self, l: &LinkRow, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "UPDATE links SET deleted_at = $2, updated_at = $2 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(&l.id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM link_tags WHERE link_id = $1")
            .bind(&l.id)
            .execute(&mut *tx)
            .await?;
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&LinkDeleted {
                link_id: l.id.clone(),
                code: l.code.clone(),
                owner_id: l.owner_id.clone(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Codes of links written (created, updated, deleted) after `since`, with when.
    pub async fn changed_since(&self, since: i64) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT code, updated_at FROM links WHERE updated_at > $1")
            .bind(since)
            .fetch_all(self.db.reader())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((r.try_get("code")?, r.try_get("updated_at")?));
        }
        Ok(out)
    }

    /// Writes one batch of clicks in one transaction: raw rows, rollups, daily visitors and the
    /// links' click counters. Either all of it is written or none (so stats match raw clicks).
    pub async fn write_batch(
        &self,
        clicks: &[ClickRow],
        rollups: &HashMap<RollupKey, i64>,
        visitors: &[(String, i64, String, bool)],
        per_link: &HashMap<String, i64>,
    ) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        for c in clicks {
            tx.append_row(
                "INSERT INTO link_clicks (id, link_id, at, referrer, country, browser, os, device, bot, visitor)",
                vec![
                    Cell::Text(c.id.clone()),
                    Cell::Text(c.link_id.clone()),
                    Cell::Int(c.at),
                    Cell::Text(c.referrer.clone()),
                    Cell::Text(c.country.clone()),
                    Cell::Text(c.browser.clone()),
                    Cell::Text(c.os.clone()),
                    Cell::Text(c.device.clone()),
                    Cell::Int(i64::from(c.bot)),
                    Cell::Text(c.visitor.clone()),
                ],
            );
        }
        for ((link, bucket, at, dim, value, bot), n) in rollups {
            sqlx::query(
                "INSERT INTO link_rollups (link_id, bucket, at, dim, value, bot, clicks) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (link_id, bucket, dim, at, value, bot) \
                 DO UPDATE SET clicks = link_rollups.clicks + excluded.clicks",
            )
            .bind(link)
            .bind(*bucket)
            .bind(*at)
            .bind(*dim)
            .bind(value)
            .bind(i64::from(*bot))
            .bind(*n)
            .execute(&mut *tx)
            .await?;
        }
        for (link, day, visitor, bot) in visitors {
            sqlx::query(
                "INSERT INTO link_visitors (link_id, day, visitor, bot) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(link)
            .bind(*day)
            .bind(visitor)
            .bind(i64::from(*bot))
            .execute(&mut *tx)
            .await?;
        }
        for (link, n) in per_link {
            sqlx::query("UPDATE links SET clicks = clicks + $2 WHERE id = $1")
                .bind(link)
                .bind(*n)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rollup counts of one link, bucket and dimension in `[from, to)`, grouped by start and
    /// value.
    pub async fn rollups(
        &self,
        link_id: &str,
        bucket: &str,
        dim: &str,
        from: i64,
        to: i64,
        include_bots: bool,
    ) -> StoreResult<Vec<(i64, String, i64)>> {
        let rows = sqlx::query(
            "SELECT at, value, CAST(SUM(clicks) AS BIGINT) AS n FROM link_rollups \
             WHERE link_id = $1 AND bucket = $2 AND dim = $3 AND at >= $4 AND at < $5 \
             AND ($6 = 1 OR bot = 0) GROUP BY at, value ORDER BY at, value",
        )
        .bind(link_id)
        .bind(bucket)
        .bind(dim)
        .bind(from)
        .bind(to)
        .bind(i64::from(include_bots))
        .fetch_all(self.db.reader())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((r.try_get("at")?, r.try_get("value")?, r.try_get("n")?));
        }
        Ok(out)
    }

    /// Unique visitors (daily hashes) of a link over the days in `[from_day, to)`.
    pub async fn unique_visitors(
        &self,
        link_id: &str,
        from_day: i64,
        to: i64,
        include_bots: bool,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM link_visitors WHERE link_id = $1 AND day >= $2 AND day < $3 \
             AND ($4 = 1 OR bot = 0)",
        )
        .bind(link_id)
        .bind(from_day)
        .bind(to)
        .bind(i64::from(include_bots))
        .fetch_one(self.db.reader())
        .await?)
    }

    /// Records a paid order that came through the link with `code` (deleted links too: the
    /// visit happened while it lived). Once per order: a redelivered event changes nothing.
    /// Returns whether a row was written (`false` for an unknown code or a repeat).
    pub async fn record_order(
        &self,
        code: &str,
        order_id: &str,
        total: i64,
        currency: &str,
        at: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "INSERT INTO link_orders (order_id, link_id, total, currency, at) \
             SELECT $1, id, $2, $3, $4 FROM links WHERE code = $5 \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(total)
        .bind(currency)
        .bind(at)
        .bind(code)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Orders and revenue per currency of a link's attributed orders in `[from, to)`.
    pub async fn attributed(
        &self,
        link_id: &str,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT currency, COUNT(*) AS orders, CAST(SUM(total) AS BIGINT) AS revenue FROM link_orders \
             WHERE link_id = $1 AND at >= $2 AND at < $3 GROUP BY currency ORDER BY currency",
        )
        .bind(link_id)
        .bind(from)
        .bind(to)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("currency")?,
                    r.try_get::<i64, _>("orders")?,
                    r.try_get::<i64, _>("revenue")?,
                ))
            })
            .collect()
    }

    /// Raw clicks of a link (tests compare them with the rollups).
    pub async fn raw_click_count(&self, link_id: &str, include_bots: bool) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM link_clicks WHERE link_id = $1 AND ($2 = 1 OR bot = 0)",
        )
        .bind(link_id)
        .bind(i64::from(include_bots))
        .fetch_one(self.db.reader())
        .await?)
    }

    /// Deletes raw clicks older than `before` (rollups stay).
    pub async fn purge_clicks(&self, before: i64) -> StoreResult<u64> {
        let r = self
            .db
            .execute_write(sqlx::query("DELETE FROM link_clicks WHERE at < $1").bind(before))
            .await?;
        Ok(r.rows_affected())
    }
}
