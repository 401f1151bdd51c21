-- Notification platform (crate mercato-notify). Why these shapes:
-- * notifications: one row per accepted request, the durable record of what a producer asked for.
-- * notify_deliveries: one row per (notification, channel); it is also the job queue. Workers claim
--   due rows with a lease (status 'processing', locked_until) in a short UPDATE ... RETURNING, call
--   the provider outside any transaction, then record the outcome; a crashed worker's lease runs
--   out and the row is claimed again. The delivery id is the stable message id sent to providers.
-- * notify_dedup: request_id and user+type dedup keys with an expiry (taken over once expired).
-- * notify_rate_slots: per user/channel/hour counters; a message over the limit reserves a slot in
--   a later hour and is deferred to it (never dropped).
-- * notify_inbox + notify_inbox_heads: the in-app inbox; the per-user head row hands out sequence
--   numbers under a row lock, so per-user seq order is commit order (SSE Last-Event-ID catch-up
--   can never skip an item).
-- * notify_preferences, notify_devices, notify_templates: owned by this module only.
-- Times are unix microseconds (BIGINT), booleans INTEGER 0/1, JSON as TEXT (never queried).

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    priority TEXT NOT NULL,
    user_id TEXT,
    recipient TEXT,
    template TEXT NOT NULL,
    data TEXT NOT NULL,
    locale TEXT,
    request_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('accepted', 'suppressed')),
    reason TEXT,
    batch_id TEXT,
    producer TEXT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, created_at);
CREATE INDEX notifications_batch ON notifications (batch_id);

CREATE TABLE notify_deliveries (
    id TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL REFERENCES notifications (id),
    channel TEXT NOT NULL,
    lane TEXT NOT NULL,
    user_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'deferred', 'sent',
        'delivered', 'opened', 'read', 'failed', 'suppressed', 'expired', 'dead')),
    reason TEXT,
    address TEXT,
    subject TEXT,
    body TEXT,
    provider TEXT,
    provider_index BIGINT NOT NULL DEFAULT 0,
    provider_attempts BIGINT NOT NULL DEFAULT 0,
    provider_ref TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_until BIGINT,
    lease_owner TEXT,
    last_error TEXT,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sent_at BIGINT,
    delivered_at BIGINT,
    opened_at BIGINT,
    read_at BIGINT
);
CREATE INDEX notify_deliveries_notification ON notify_deliveries (notification_id);
CREATE INDEX notify_deliveries_due ON notify_deliveries (lane, status, next_attempt_at);
CREATE INDEX notify_deliveries_status ON notify_deliveries (status, updated_at, id);
CREATE INDEX notify_deliveries_sent ON notify_deliveries (channel, sent_at);

CREATE TABLE notify_dedup (
    dedup_key TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX notify_dedup_expiry ON notify_dedup (expires_at);

CREATE TABLE notify_rate_slots (
    rate_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (rate_key, channel, window_start)
);
CREATE INDEX notify_rate_slots_window ON notify_rate_slots (window_start);

CREATE TABLE notify_inbox_heads (
    user_id TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE notify_inbox (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    delivery_id TEXT NOT NULL UNIQUE,
    notification_id TEXT NOT NULL,
    type TEXT NOT NULL,
    title TEXT,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    read_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, seq)
);
CREATE INDEX notify_inbox_unread ON notify_inbox (user_id, read_at, seq);

CREATE TABLE notify_preferences (
    user_id TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE notify_devices (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    platform TEXT NOT NULL CHECK (platform IN ('ios', 'android', 'web')),
    token TEXT NOT NULL UNIQUE,
    active BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deactivated_reason TEXT
);
CREATE INDEX notify_devices_user ON notify_devices (user_id, active);

CREATE TABLE notify_templates (
    name TEXT NOT NULL,
    channel TEXT NOT NULL,
    locale TEXT NOT NULL,
    subject TEXT,
    body TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (name, channel, locale)
);

-- The commerce-event consumer starts at the current head of the event log: installing the
-- notification platform on a live database must not replay history (years of welcome emails).
INSERT INTO consumer_offsets (consumer, position, owner, lease_until, updated_at)
SELECT 'notify-commerce', position, NULL, 0, 0 FROM outbox_log_head WHERE id = 1
ON CONFLICT (consumer) DO NOTHING;
