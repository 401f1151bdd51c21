-- Merchant webhooks (crate mercato-webhooks). Why these shapes:
-- * webhook_endpoints: one row per merchant endpoint. `secret` is kept in clear because every
--   delivery is signed with it (HMAC needs the key); `previous_secret` signs too until
--   `previous_secret_expires_at` (rotation grace). `failing_since` is the first failure after the
--   last success: an endpoint failing long enough is disabled.
-- * webhook_deliveries: one row per (endpoint, event) — the UNIQUE pair makes the fan-out
--   consumer idempotent — and also the job queue: the worker claims due rows with a lease
--   (status 'processing', next_attempt_at = lease end) in a short UPDATE ... RETURNING, calls the
--   endpoint outside any transaction, then records the outcome. The payload (the event envelope)
--   is stored so that retries and redeliveries send the same bytes' content.
-- * round_start: `attempts` when the current round began (a redelivery starts a new round with a
--   fresh budget while the attempt numbers keep counting).
-- * webhook_attempts: append-only log of every attempt (status code, latency, error).
-- Times are unix microseconds (BIGINT), booleans INTEGER 0/1, JSON as TEXT (never queried).

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT,
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    disabled_reason TEXT,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_expires_at BIGINT,
    failing_since BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_created ON webhook_endpoints (created_at, id);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'delivered', 'dead')),
    attempts BIGINT NOT NULL DEFAULT 0,
    round_start BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    last_error TEXT,
    last_status_code BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    delivered_at BIGINT,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at, id);

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status_code BIGINT,
    latency_ms BIGINT NOT NULL,
    success INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempt);
