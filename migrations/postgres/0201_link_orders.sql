-- Shop attribution per link: one row per paid order that came through a link (written by the
-- links system's consumer of `order.confirmed`, once per order: the primary key makes a
-- redelivered event a no-op). `total` is in minor units of `currency`; `at` is when the order
-- was confirmed (unix microseconds), so stats count orders inside their time window.
CREATE TABLE link_orders (
    order_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    total BIGINT NOT NULL,
    currency TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX link_orders_by_link ON link_orders (link_id, at);
