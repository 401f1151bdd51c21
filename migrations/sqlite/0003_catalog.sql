-- Catalog: the category tree, products with variants (one row per SKU), and reviews.
-- Prices are integer minor units with their currency; attributes and images are JSON text
-- (never queried by SQL: search filters on them through its own index). `path` holds the
-- category's ancestry ("/cat_a/cat_b/") so descendants are one indexed prefix away.
-- Rating aggregates live on the product and change in the same statement as a review insert.

CREATE TABLE categories (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    parent_id TEXT REFERENCES categories (id),
    path TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX categories_parent ON categories (parent_id);

CREATE TABLE products (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL,
    category_id TEXT NOT NULL REFERENCES categories (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    brand TEXT NOT NULL,
    attributes TEXT NOT NULL,
    images TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'draft')),
    rating_sum BIGINT NOT NULL DEFAULT 0,
    rating_count BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX products_seller ON products (seller_id, created_at);
CREATE INDEX products_category ON products (category_id);
CREATE INDEX products_created ON products (created_at, id);

CREATE TABLE variants (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id),
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    price BIGINT NOT NULL CHECK (price > 0),
    sale_price BIGINT CHECK (sale_price IS NULL OR sale_price > 0),
    currency TEXT NOT NULL,
    attributes TEXT NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    position BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX variants_product ON variants (product_id, position);

CREATE TABLE reviews (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products (id),
    customer_id TEXT NOT NULL,
    rating BIGINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    verified_purchase BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (product_id, customer_id)
);
CREATE INDEX reviews_product ON reviews (product_id, created_at, id);
