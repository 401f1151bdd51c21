-- The transactional heart: checkouts and their persisted sagas (checkout module), payments
-- with an append-only ledger, refunds and seen gateway events (payments module), orders with
-- items, status history and returns (orders module).
-- Why these constraints: UNIQUE (checkout_id, attempt) and UNIQUE idempotency_key on payments
-- make a second charge for the same attempt impossible; CHECK (refunded <= captured) makes
-- refunding more than was captured impossible; UNIQUE checkout_id on orders means one order
-- per checkout however often a saga step is retried. Ledger and history are never updated.

CREATE TABLE checkouts (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    cart_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'paying', 'pending_verification', 'completed', 'failed', 'expired', 'cancelled')),
    currency TEXT NOT NULL,
    lines TEXT NOT NULL,
    subtotal BIGINT NOT NULL,
    discount BIGINT NOT NULL,
    shipping BIGINT NOT NULL,
    tax BIGINT NOT NULL,
    total BIGINT NOT NULL,
    shipping_address TEXT NOT NULL,
    shipping_method TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    order_id TEXT,
    payment_id TEXT,
    failure_code TEXT,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX checkouts_open_expiry ON checkouts (expires_at) WHERE status = 'open';
CREATE INDEX checkouts_cart ON checkouts (cart_id, status);
CREATE INDEX checkouts_customer ON checkouts (customer_id, created_at);

CREATE TABLE sagas (
    id TEXT PRIMARY KEY,
    checkout_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'awaiting_verification', 'completed', 'compensating', 'compensated', 'failed')),
    step TEXT NOT NULL,
    payment_id TEXT,
    order_id TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (checkout_id, attempt)
);
CREATE INDEX sagas_status ON sagas (status, updated_at);

CREATE TABLE saga_steps (
    seq BIGSERIAL PRIMARY KEY,
    saga_id TEXT NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    at BIGINT NOT NULL,
    detail TEXT
);
CREATE INDEX saga_steps_saga ON saga_steps (saga_id, seq);

CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    checkout_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    order_id TEXT,
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    gateway TEXT NOT NULL,
    gateway_ref TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    captured BIGINT NOT NULL,
    refunded BIGINT NOT NULL,
    decline_code TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (refunded >= 0 AND refunded <= captured),
    UNIQUE (checkout_id, attempt)
);
CREATE INDEX payments_status ON payments (status, updated_at);
CREATE INDEX payments_gateway_ref ON payments (gateway_ref);
CREATE INDEX payments_customer ON payments (customer_id, created_at);

CREATE TABLE payment_ledger (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL,
    entry_type TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    at BIGINT NOT NULL,
    gateway_ref TEXT,
    metadata TEXT NOT NULL
);
CREATE INDEX payment_ledger_payment ON payment_ledger (payment_id, seq);

CREATE TABLE refunds (
    id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    idempotency_key TEXT NOT NULL UNIQUE,
    gateway_ref TEXT,
    failure_code TEXT,
    source TEXT NOT NULL,
    source_id TEXT,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status = 'pending';

CREATE TABLE gateway_events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    order_number TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    checkout_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    currency TEXT NOT NULL,
    subtotal BIGINT NOT NULL,
    discount BIGINT NOT NULL,
    shipping BIGINT NOT NULL,
    tax BIGINT NOT NULL,
    total BIGINT NOT NULL,
    shipping_address TEXT NOT NULL,
    shipping_method TEXT NOT NULL,
    payment_id TEXT,
    flagged_for_review BIGINT NOT NULL,
    carrier TEXT,
    tracking_number TEXT,
    shipped_at BIGINT,
    delivered_at BIGINT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX orders_customer ON orders (customer_id, created_at, id);
CREATE INDEX orders_created ON orders (created_at, id);
CREATE INDEX orders_status ON orders (status, created_at);

CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders (id),
    sku TEXT NOT NULL,
    variant_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    name TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_price BIGINT NOT NULL,
    line_total BIGINT NOT NULL,
    tax BIGINT NOT NULL,
    seller_id TEXT NOT NULL,
    returned_quantity BIGINT NOT NULL CHECK (returned_quantity >= 0),
    PRIMARY KEY (order_id, sku),
    CHECK (returned_quantity <= quantity)
);
CREATE INDEX order_items_seller ON order_items (seller_id, order_id);
CREATE INDEX order_items_product ON order_items (product_id);

CREATE TABLE order_history (
    seq BIGSERIAL PRIMARY KEY,
    order_id TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX order_history_order ON order_history (order_id, seq);

CREATE TABLE returns (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('requested', 'approved', 'rejected')),
    items TEXT NOT NULL,
    reason TEXT NOT NULL,
    refund_amount BIGINT,
    currency TEXT NOT NULL,
    decision_reason TEXT,
    decided_by TEXT,
    refund_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX returns_order ON returns (order_id);
