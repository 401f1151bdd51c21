-- Kernel tables: idempotency keys, the transactional outbox read as a log, consumer offsets,
-- processed-event ids, delivery retries/dead letters, the audit log.
-- Why these shapes: see crates/mercato-kernel (idempotency.rs, outbox/). Times are unix
-- microseconds (BIGINT), booleans INTEGER 0/1, ids TEXT: the same SQL text runs on both engines.

-- Stored responses of unsafe requests, per (principal, key). Kept >= 24 h.
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_flight', 'completed')),
    locked_until BIGINT NOT NULL,
    status_code BIGINT,
    response_headers TEXT,
    response_body TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Events written in the same transaction as the state change. `seq` is the insertion order;
-- `log_pos` is the position in the delivered log, assigned by the relay once the row is
-- committed, so a consumer reading `log_pos > offset` can never skip a late-committing event.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    correlation_id TEXT,
    causation_id TEXT,
    version BIGINT NOT NULL,
    data TEXT NOT NULL,
    log_pos BIGINT UNIQUE
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE log_pos IS NULL;

-- The head of the log (one row). Relays lock it to hand out positions in order.
CREATE TABLE outbox_log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT NOT NULL
);
INSERT INTO outbox_log_head (id, position) VALUES (1, 0);

-- One row per named consumer: its durable offset and which process holds its lease.
CREATE TABLE consumer_offsets (
    consumer TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    owner TEXT,
    lease_until BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Event ids a consumer has applied, written in the same transaction as its effects.
CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Failed deliveries: retried with backoff while 'retrying', parked as dead letters when 'dead'.
CREATE TABLE event_retries (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('retrying', 'dead')),
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (consumer, event_id)
);
CREATE INDEX event_retries_due ON event_retries (consumer, status, next_attempt_at);

-- Append-only audit trail of who did what (never updated or deleted).
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    data TEXT NOT NULL,
    request_id TEXT
);
CREATE INDEX audit_log_entity ON audit_log (entity_type, entity_id, seq);
