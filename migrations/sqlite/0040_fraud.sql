-- Fraud (module fraud in mercato-commerce): rules as data, a blocklist, every decision with
-- its score, reasons and features, the review queue, trained models and the fraud module's
-- own view of accounts. Why these shapes:
-- * fraud_rules: one row per rule name holding its JSON config (enabled, action, thresholds);
--   a rule without a row runs with its built-in defaults, so a fresh install needs no seed.
-- * fraud_blocklist: (kind, value) unique; kind is email | card_fingerprint | ip | device_id.
-- * fraud_decisions: one row per payment attempt scored (append-only apart from the order it
--   became, its label and whether its charge failed). Scores are integers in parts per
--   million (no REAL for anything that matters). Features, reasons and signals are JSON text,
--   never queried by SQL. This table (with fraud_accounts) is what the feature store
--   recomputes from: other modules' facts arrive as events, never by reading their tables.
-- * fraud_reviews: one per held order (order_id unique); its status changes only through a
--   conditional UPDATE from 'open', so approve and reject cannot both win.
-- * fraud_models: trained versions with held-out metrics; exactly the newest `active` serves.
-- * orders.review_hold: set in the checkout transaction that creates an order held for review
--   (so fulfilment can never race the hold), cleared by approval. Owned by orders.
-- Times are unix microseconds.

CREATE TABLE fraud_rules (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE fraud_blocklist (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (kind, value)
);
CREATE INDEX fraud_blocklist_created ON fraud_blocklist (created_at, id);

CREATE TABLE fraud_decisions (
    id TEXT PRIMARY KEY,
    checkout_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    order_id TEXT,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    decision TEXT NOT NULL,
    score_ppm BIGINT NOT NULL,
    reasons TEXT NOT NULL,
    rules TEXT NOT NULL,
    features TEXT NOT NULL,
    signals TEXT NOT NULL,
    label TEXT,
    payment_failed BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX fraud_decisions_checkout ON fraud_decisions (checkout_id, created_at);
CREATE INDEX fraud_decisions_order ON fraud_decisions (order_id);
CREATE INDEX fraud_decisions_created ON fraud_decisions (created_at, id);

CREATE TABLE fraud_reviews (
    id TEXT PRIMARY KEY,
    decision_id TEXT NOT NULL,
    order_id TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT,
    decision_reason TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT
);
CREATE INDEX fraud_reviews_status ON fraud_reviews (status, created_at, id);

CREATE TABLE fraud_models (
    version BIGINT PRIMARY KEY,
    trained_at BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    model TEXT NOT NULL,
    metrics TEXT NOT NULL
);

CREATE TABLE fraud_accounts (
    customer_id TEXT PRIMARY KEY,
    registered_at BIGINT NOT NULL
);

ALTER TABLE orders ADD COLUMN review_hold BIGINT NOT NULL DEFAULT 0;
