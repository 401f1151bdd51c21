-- Inventory: warehouses, stock per (SKU, warehouse), the append-only movement log, and
-- reservations. The CHECK constraints are the last line of defence of the invariants
-- (reserved >= 0, on_hand >= reserved): every change is also a conditional UPDATE that refuses
-- to break them, so an oversell is impossible even if a code path forgot to check.
-- A SKU with no stock row is untracked (sold without limit, never reserved).

CREATE TABLE warehouses (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    country TEXT NOT NULL,
    region TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE stock (
    sku TEXT NOT NULL,
    warehouse_id TEXT NOT NULL REFERENCES warehouses (id),
    on_hand BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved BIGINT NOT NULL CHECK (reserved >= 0),
    low_stock_threshold BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (reserved <= on_hand),
    PRIMARY KEY (sku, warehouse_id)
);

-- Every change to on_hand or reserved, with what caused it. Never updated or deleted.
CREATE TABLE stock_movements (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    sku TEXT NOT NULL,
    warehouse_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    delta_on_hand BIGINT NOT NULL,
    delta_reserved BIGINT NOT NULL,
    on_hand_after BIGINT NOT NULL,
    reserved_after BIGINT NOT NULL,
    reason TEXT,
    reference TEXT,
    actor TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX stock_movements_sku ON stock_movements (sku, seq);

CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    checkout_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    warehouse_id TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'committed', 'released', 'expired')),
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX reservations_checkout ON reservations (checkout_id);
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'active';
