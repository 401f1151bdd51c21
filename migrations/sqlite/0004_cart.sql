-- Carts: guest carts (the id is a 128-bit bearer secret) and user carts (at most one active
-- per user, enforced by a partial unique index). Lines snapshot the price at addition so the
-- cart can warn when the current price differs. Carts are durable here; a cache may front them
-- later but is never the only copy.

CREATE TABLE carts (
    id TEXT PRIMARY KEY,
    user_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'merged', 'converted', 'expired')),
    currency TEXT NOT NULL,
    merged_into TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE UNIQUE INDEX carts_one_active_per_user ON carts (user_id) WHERE status = 'active' AND user_id IS NOT NULL;
CREATE INDEX carts_guest_expiry ON carts (expires_at) WHERE status = 'active' AND user_id IS NULL;

CREATE TABLE cart_items (
    cart_id TEXT NOT NULL REFERENCES carts (id),
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    price_at_addition BIGINT NOT NULL,
    currency TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (cart_id, sku)
);
