-- Checkout applies promotions (issue 9): the breakdown of what each promotion took off is kept
-- with the checkout that locked it and copied to the order, so both show the same
-- `discounts:[{promotion_id, code, name, amount, lines}]` the customer agreed to even after a
-- promotion is edited or disabled. JSON text (read only by the application, never queried by
-- SQL), '[]' for rows written before promotions applied.
-- order_items.discount is each line's part of the discounts (minor units, allocated by the
-- engine so the parts add up exactly): a returned line refunds what was paid for it,
-- line_total - discount, not its list price. 0 for older rows, which had no discounts.
ALTER TABLE checkouts ADD COLUMN discounts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE orders ADD COLUMN discounts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE order_items ADD COLUMN discount BIGINT NOT NULL DEFAULT 0;
