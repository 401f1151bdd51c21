//! Black-box API tests: the real application on port 0, a fresh database per test (SQLite, or
//! PostgreSQL when MERCATO_TEST_POSTGRES_URL is set). One binary for link time.

mod catalog;
mod cli;
mod docs;
mod garbage;
mod health;
mod idempotency;
mod identity;
mod outbox;
mod search;

pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", mercato_kernel::id::random_hex(6))
}
