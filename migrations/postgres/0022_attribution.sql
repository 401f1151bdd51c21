-- Shop attribution of short links (issue 11): a cart created with `{attribution: "<code>"}`
-- (the `mref` a short link's redirect adds to storefront URLs) carries the code to its checkout
-- and its order, whose events carry it to the links system (link_orders, migration 0201).
-- Last touch wins: a later attributed visit replaces a cart's code.
ALTER TABLE carts ADD COLUMN attribution TEXT;
ALTER TABLE checkouts ADD COLUMN attribution TEXT;
ALTER TABLE orders ADD COLUMN attribution TEXT;
