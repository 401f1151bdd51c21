//! Search: full-text search, product listing with facets, and autocomplete, over a tantivy
//! index kept in this process under `<data_dir>/search`.
//!
//! The index is a projection of the catalog (the CDC pattern): the durable bus consumer
//! `search-index.<replica id>` re-reads a product from the catalog on every
//! `catalog.product_created|product_updated` event and on `inventory.adjusted|reserved|
//! released|committed|low_stock` events that name a `product_id` or `sku` (others are
//! skipped), and replaces its document. It can be rebuilt from the database at any time
//! (`mercato search reindex`), and is rebuilt at start-up when missing, written with another
//! `SCHEMA_VERSION` or from another database, or left with uncommitted work by a crash.
//!
//! Invariants: only `active` products with at least one active variant are indexed, so
//! drafts never appear in results, facets, suggestions or spelling corrections; staged
//! changes are committed (and searchable) within `search_commit_ms` (1 s) of their event;
//! every facet counts the products that pass all filters but its own; pages are keyset
//! pages on (sort key, id hash), so walking the cursors of an unchanged index yields every
//! match exactly once. See `docs/search.md`.

pub mod http;
pub mod index;
pub mod model;
pub mod service;

pub use service::{SearchError, SearchService};
