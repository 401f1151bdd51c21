//! Black-box API tests: the real application on port 0, a fresh database per test (SQLite, or
//! PostgreSQL when MERCATO_TEST_POSTGRES_URL is set). One binary for link time.

mod carts;
mod catalog;
mod checkout;
mod cli;
mod commerce_notifications;
mod cors;
mod crash;
mod docs;
mod events;
mod flash_sales;
mod fraud;
mod garbage;
mod gateway;
mod group_commit;
mod guest;
mod hardening;
mod health;
mod idempotency;
mod identity;
mod inventory;
mod links;
mod live;
mod notifications;
mod openapi;
mod orders;
mod outbox;
mod promotions;
mod redis;
mod search;
mod webhooks;

pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", mercato_kernel::id::random_hex(6))
}
