//! The relational store: one SQL text for SQLite and PostgreSQL through sqlx's `Any` driver.
//!
//! See `docs/decisions/0001-persistence.md`. In short:
//! - SQLite runs in WAL mode with `synchronous=FULL` (committed means durable), foreign keys on,
//!   a busy timeout, ONE writer connection (every write transaction starts with
//!   `BEGIN IMMEDIATE`, so a read-then-write can never fail with "database is locked") and a
//!   pool of read-only connections.
//! - PostgreSQL uses one pool for both; read-modify-write transactions lock their rows with
//!   [`Db::for_update`], the only place where the SQL text differs between the engines.
//! - State changes are single conditional statements wherever possible.

mod error;

pub use error::{StoreError, StoreResult};

use anyhow::Context as _;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor};
use std::path::Path;
use std::time::Duration;

pub type Tx = sqlx::Transaction<'static, Any>;
pub type Row = AnyRow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Pool sizes and timeouts.
#[derive(Clone, Debug)]
pub struct DbOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Handle to the database: a writer pool and a reader pool (the same pool on PostgreSQL).
#[derive(Clone, Debug)]
pub struct Db {
    write: AnyPool,
    read: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

impl Db {
    /// Connects to `url` (`sqlite://path` or `postgres://…`).
    pub async fn connect(url: &str, opts: &DbOptions) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(opts.acquire_timeout)
                .connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            return Ok(Db {
                write: pool.clone(),
                read: pool,
                backend: Backend::Postgres,
            });
        }
        if !url.starts_with("sqlite:") {
            anyhow::bail!("unsupported database URL (expected sqlite:// or postgres://)");
        }
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        };
        // The single writer: every write transaction queues for this one connection, so writers
        // never fight over SQLite's lock inside one process; busy_timeout covers other processes
        // (e.g. `mercato admin create-user` while `serve` runs).
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                         PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .context("opening the SQLite database")?;
        let read = AnyPoolOptions::new()
            .max_connections(opts.max_connections.clamp(2, 8))
            .acquire_timeout(opts.acquire_timeout)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000; PRAGMA query_only=ON;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .context("opening the SQLite read pool")?;
        Ok(Db {
            write,
            read,
            backend: Backend::Sqlite,
        })
    }

    /// `sqlite://<dir>/mercato.db`
    pub fn sqlite_url_in(dir: &Path) -> String {
        format!("sqlite://{}", dir.join("mercato.db").display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for writes (on SQLite: the single writer connection).
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// The pool for reads that need no transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: the write lock is taken
    /// up front, so a transaction that reads before it writes cannot hit "database is locked".
    pub async fn begin(&self) -> StoreResult<Tx> {
        let tx = match self.backend {
            Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.write.begin().await?,
        };
        Ok(tx)
    }

    /// Appended to a `SELECT` that reads rows the transaction will then write:
    /// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, where `BEGIN IMMEDIATE` already holds
    /// the database's write lock.
    pub fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// `sql` with the row lock of [`Db::for_update`] appended.
    pub fn locking(&self, sql: &str) -> String {
        format!("{sql}{}", self.for_update())
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.write)
            .await
            .context("applying migrations")?;
        Ok(())
    }

    /// Versions known to each backend's migration folder (checked equal by a test).
    pub fn migration_versions(backend: Backend) -> Vec<(i64, String)> {
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }

    /// A cheap round trip (readiness).
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        if self.backend == Backend::Sqlite {
            // The writer can be wedged while readers answer; check it without waiting long.
            let acquire = tokio::time::timeout(Duration::from_secs(2), self.write.acquire()).await;
            match acquire {
                Ok(Ok(_conn)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(StoreError::Unavailable("writer busy".into())),
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Decodes a boolean stored as INTEGER 0/1 (portable through `Any`).
pub fn bool_of(v: i64) -> bool {
    v != 0
}

/// Encodes a boolean as INTEGER 0/1.
pub fn int_of(b: bool) -> i64 {
    i64::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_carry_the_same_migration_versions() {
        let s = Db::migration_versions(Backend::Sqlite);
        let p = Db::migration_versions(Backend::Postgres);
        assert!(!s.is_empty());
        assert_eq!(
            s, p,
            "migrations/sqlite and migrations/postgres must list the same versions"
        );
    }
}
