-- Live streams (crate mercato-live). Why these shapes:
-- * live_streams: one row per stream, owned by a seller. `last_seq` is the stream's event
--   counter: every event (comment, deletion, product change, pin, end) takes the next number with
--   one conditional `UPDATE … SET last_seq = last_seq + 1 … RETURNING` in the transaction that
--   writes it. The row lock makes writers of one stream commit in sequence order, so a reader that
--   sees event n has seen every event before it: SSE ids never have holes and a node catching up
--   from the database never skips one.
-- * live_stream_products: the products shown in a stream with the last price/stock facts sent
--   (JSON), so a catalog or inventory event becomes a `product` event only when they changed.
-- * live_events: the per-stream event log behind `Last-Event-ID` replay; the in-memory ring of the
--   last minutes is rebuilt from it after a restart or on another node.
-- * live_comments: comments (durable before the 201); a deletion is soft (moderation history).
-- * live_bans: users banned from posting in a stream.
-- Times are unix microseconds (BIGINT), JSON as TEXT (never queried).

CREATE TABLE live_streams (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    starts_at BIGINT,
    started_at BIGINT,
    ended_at BIGINT,
    pinned_product_id TEXT,
    last_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX live_streams_by_created ON live_streams (created_at, id);
CREATE INDEX live_streams_by_status ON live_streams (status, created_at, id);

CREATE TABLE live_stream_products (
    stream_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    facts TEXT NOT NULL,
    PRIMARY KEY (stream_id, product_id)
);
CREATE INDEX live_stream_products_by_product ON live_stream_products (product_id);

CREATE TABLE live_events (
    stream_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE INDEX live_events_by_time ON live_events (stream_id, at);

CREATE TABLE live_comments (
    id TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT,
    body TEXT NOT NULL,
    at BIGINT NOT NULL,
    deleted_at BIGINT,
    deleted_by TEXT
);
CREATE UNIQUE INDEX live_comments_by_seq ON live_comments (stream_id, seq);
CREATE INDEX live_comments_by_user ON live_comments (stream_id, user_id, at);

CREATE TABLE live_bans (
    stream_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    banned_by TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (stream_id, user_id)
);
