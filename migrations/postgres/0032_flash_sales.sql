-- Flash sales (module flash_sales in mercato-commerce). Why these shapes:
-- * flash_sales: one row per sale. `units` are set aside from the SKU's stock when the sale is
--   created (an inventory reservation whose owner is the sale id, expiring at `ends_at`) and
--   handed to checkouts a token at a time. `claimed` counts the units held by purchase tokens
--   that are issued, held by an open checkout or used; it changes only through conditional
--   UPDATEs (`… WHERE claimed + $k <= units`), so tokens outstanding + units sold never pass
--   `units` under any concurrency. `sold` counts units of paid checkouts.
-- * flash_sale_tokens: one per (sale, customer) — a customer gets at most one token per sale.
--   issued → held (by an open checkout) → used (paid); issued → expired (TTL); held → issued
--   or expired again when its checkout fails or expires.
-- The waiting room itself (tickets, positions, admission) lives behind the WaitingRoom trait
-- (in process memory in embedded mode), not in these tables.
-- Money is minor units (BIGINT); times are unix microseconds.

CREATE TABLE flash_sales (
    id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    price BIGINT NOT NULL CHECK (price > 0),
    currency TEXT NOT NULL,
    units BIGINT NOT NULL CHECK (units > 0),
    claimed BIGINT NOT NULL CHECK (claimed >= 0),
    sold BIGINT NOT NULL CHECK (sold >= 0),
    tokens_issued BIGINT NOT NULL,
    tokens_redeemed BIGINT NOT NULL,
    tokens_expired BIGINT NOT NULL,
    per_customer_limit BIGINT NOT NULL CHECK (per_customer_limit > 0),
    admit_per_minute BIGINT NOT NULL CHECK (admit_per_minute > 0),
    token_ttl_secs BIGINT NOT NULL CHECK (token_ttl_secs > 0),
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('scheduled', 'live', 'ended')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (claimed <= units),
    CHECK (sold <= units),
    CHECK (starts_at < ends_at)
);
CREATE INDEX flash_sales_sku ON flash_sales (sku, ends_at);
CREATE INDEX flash_sales_status ON flash_sales (status, ends_at);
CREATE INDEX flash_sales_created ON flash_sales (created_at, id);

CREATE TABLE flash_sale_tokens (
    id TEXT PRIMARY KEY,
    sale_id TEXT NOT NULL REFERENCES flash_sales (id),
    customer_id TEXT NOT NULL,
    ticket TEXT NOT NULL,
    units BIGINT NOT NULL CHECK (units > 0),
    status TEXT NOT NULL CHECK (status IN ('issued', 'held', 'used', 'expired')),
    checkout_id TEXT,
    quantity BIGINT,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (sale_id, customer_id)
);
CREATE INDEX flash_sale_tokens_due ON flash_sale_tokens (expires_at) WHERE status = 'issued';
CREATE INDEX flash_sale_tokens_checkout ON flash_sale_tokens (checkout_id) WHERE checkout_id IS NOT NULL;

-- A cart line bought with a purchase token remembers it (checkout redeems it).
ALTER TABLE cart_items ADD COLUMN purchase_token TEXT;
