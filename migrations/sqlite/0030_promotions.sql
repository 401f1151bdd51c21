-- Promotions and coupons (module promotions in mercato-commerce). Why these shapes:
-- * promotions: one row per rule. `code` keeps the code as the admin wrote it; `code_key` is
--   its lower-cased form with a unique index, so codes are unique case-insensitively on both
--   engines without an expression index or ILIKE. Automatic promotions have no code (NULLs do
--   not collide in a unique index). Scopes (`applies_to`, `buy`) and the reward (`get`) are JSON
--   text, read only by the engine, never queried by SQL.
-- * Usage is counted like stock: `uses`/`budget_used` (committed) and `reserved`/
--   `budget_reserved` (held by open checkouts) change only through conditional UPDATEs
--   (`… WHERE uses + reserved < usage_limit`), so committed + reserved never pass a limit or
--   the budget under any concurrency. No CHECK ties the counters to the limits: an admin may
--   lower a limit below what is already used (it then simply admits no more uses).
-- * promotion_redemptions: one row per (promotion, checkout), reserved → committed | released;
--   the unique pair makes a repeated reservation for the same checkout a no-op.
-- * promotion_customer_uses: per (promotion, customer) counters for per_customer_limit, changed
--   the same conditional way.
-- Money is minor units (BIGINT) in the promotion's `currency`; times are unix microseconds;
-- booleans are BIGINT 0/1 (portable through sqlx's Any driver).

CREATE TABLE promotions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    code TEXT,
    code_key TEXT,
    automatic BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('percent_off', 'amount_off', 'free_shipping', 'buy_x_get_y')),
    value BIGINT NOT NULL CHECK (value >= 0),
    buy TEXT,
    get TEXT,
    applies_to TEXT NOT NULL,
    min_subtotal BIGINT,
    currency TEXT NOT NULL,
    starts_at BIGINT,
    ends_at BIGINT,
    usage_limit BIGINT,
    per_customer_limit BIGINT,
    budget BIGINT,
    stackable BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    uses BIGINT NOT NULL DEFAULT 0 CHECK (uses >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    budget_used BIGINT NOT NULL DEFAULT 0 CHECK (budget_used >= 0),
    budget_reserved BIGINT NOT NULL DEFAULT 0 CHECK (budget_reserved >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX promotions_code_key ON promotions (code_key);
CREATE INDEX promotions_by_created ON promotions (created_at, id);
CREATE INDEX promotions_automatic ON promotions (automatic, status);

CREATE TABLE promotion_redemptions (
    id TEXT PRIMARY KEY,
    promotion_id TEXT NOT NULL REFERENCES promotions (id),
    checkout_id TEXT NOT NULL,
    order_id TEXT,
    customer_id TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    status TEXT NOT NULL CHECK (status IN ('reserved', 'committed', 'released')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (promotion_id, checkout_id)
);
CREATE INDEX promotion_redemptions_by_promotion ON promotion_redemptions (promotion_id, created_at, id);
CREATE INDEX promotion_redemptions_by_checkout ON promotion_redemptions (checkout_id, status);

CREATE TABLE promotion_customer_uses (
    promotion_id TEXT NOT NULL REFERENCES promotions (id),
    customer_id TEXT NOT NULL,
    uses BIGINT NOT NULL DEFAULT 0 CHECK (uses >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (promotion_id, customer_id)
);
