-- URL shortener (crate mercato-links). Why these shapes:
-- * links: one row per short link. `code` is unique and case-sensitive (binary comparison on
--   both engines). A delete is soft (`deleted_at`) so the code stays taken (browsers may still
--   hold a cached 301 to it) and so other nodes see the change through `updated_at`, which every
--   write bumps: nodes poll `updated_at` to drop stale cache entries within a second. `clicks`
--   is added by the click batcher (never per redirect) and does not bump `updated_at`.
-- * link_tags: one row per (link, tag) for the `tag` filter of the list.
-- * link_clicks: raw clicks (no IP: a daily salted visitor hash), kept for a retention period.
-- * link_rollups: counts per link, bucket (minute|hour|day), bucket start, dimension and value,
--   and bot flag, upserted by the batcher in the transaction that writes the raw clicks, so stats
--   never scan raw clicks and always agree with them.
-- * link_visitors: one row per (link, day, visitor hash, bot) for unique visitors.
-- Times are unix microseconds (BIGINT), booleans INTEGER 0/1, JSON as TEXT (never queried).

CREATE TABLE links (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL,
    url TEXT NOT NULL,
    destination TEXT NOT NULL,
    utm TEXT NOT NULL,
    tags TEXT NOT NULL,
    redirect_status BIGINT NOT NULL,
    expires_at BIGINT,
    max_clicks BIGINT,
    clicks BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX links_by_owner ON links (owner_id, created_at, id);
CREATE INDEX links_by_created ON links (created_at, id);
CREATE INDEX links_by_updated ON links (updated_at);

CREATE TABLE link_tags (
    link_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (link_id, tag)
);
CREATE INDEX link_tags_by_tag ON link_tags (tag, link_id);

CREATE TABLE link_clicks (
    id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    referrer TEXT NOT NULL,
    country TEXT NOT NULL,
    browser TEXT NOT NULL,
    os TEXT NOT NULL,
    device TEXT NOT NULL,
    bot INTEGER NOT NULL,
    visitor TEXT NOT NULL
);
CREATE INDEX link_clicks_by_link ON link_clicks (link_id, at);
CREATE INDEX link_clicks_by_at ON link_clicks (at);

CREATE TABLE link_rollups (
    link_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    at BIGINT NOT NULL,
    dim TEXT NOT NULL,
    value TEXT NOT NULL,
    bot INTEGER NOT NULL,
    clicks BIGINT NOT NULL,
    PRIMARY KEY (link_id, bucket, dim, at, value, bot)
);

CREATE TABLE link_visitors (
    link_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    visitor TEXT NOT NULL,
    bot INTEGER NOT NULL,
    PRIMARY KEY (link_id, day, visitor, bot)
);
