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
//! - On SQLite, write transactions are grouped: the transactions that queue up while one
//!   commit is being made durable share the next commit, each in its own savepoint
//!   ([`group`], ADR 0005). Callers keep `begin → work → commit`; `commit()` returns once the
//!   batch is durable.

mod error;
mod group;

pub use error::{StoreError, StoreResult};
pub use group::{DbStats, DbStatsSnapshot, GroupCommitConfig, begins_by_caller, count_begins};

use anyhow::Context as _;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor};
use std::path::Path;
use std::time::Duration;

pub type Row = AnyRow;

/// A write transaction: `begin → work (`&mut *tx` as the executor) → commit`.
///
/// On PostgreSQL it is an ordinary transaction. On SQLite it is a savepoint inside the writer's
/// current batch ([`group`]): `commit()` returns once the batch holding it is durable, and
/// `rollback()` (or dropping it) undoes exactly its own work.
pub struct Tx {
    inner: TxInner,
    /// PostgreSQL: counts commits (the group committer counts its own on SQLite).
    stats: Option<std::sync::Arc<DbStats>>,
    /// Rows for append-only tables, written at commit (see [`Tx::append_row`]).
    appended: Vec<AppendedRow>,
}

/// A value of a row appended with [`Tx::append_row`].
#[derive(Clone, Debug)]
pub enum Cell {
    Int(i64),
    Text(String),
    OptText(Option<String>),
}

struct AppendedRow {
    /// `INSERT INTO table (col, …)`: rows with the same prefix share one statement.
    prefix: &'static str,
    cells: Vec<Cell>,
}

/// Most rows in one multi-row INSERT (keeps the bind count far below SQLite's limit).
const APPEND_CHUNK: usize = 200;

enum TxInner {
    Plain(sqlx::Transaction<'static, Any>),
    Grouped {
        conn: Option<sqlx::pool::PoolConnection<Any>>,
        back: Option<tokio::sync::oneshot::Sender<group::Handback>>,
    },
}

impl Tx {
    fn grouped(
        conn: sqlx::pool::PoolConnection<Any>,
        back: tokio::sync::oneshot::Sender<group::Handback>,
    ) -> Tx {
        Tx {
            inner: TxInner::Grouped {
                conn: Some(conn),
                back: Some(back),
            },
            stats: None,
            appended: Vec::new(),
        }
    }

    /// Queues a row for a table the transaction will not read back (outbox, audit log, histories,
    /// order items): it is inserted when
    /// the transaction commits, together with the other rows queued for the same table, in one
    /// multi-row INSERT — one statement instead of one per row. `prefix` is
    /// `INSERT INTO table (col, …)` and `cells` one value per column. Nothing may read the row
    /// inside the transaction that queued it.
    pub fn append_row(&mut self, prefix: &'static str, cells: Vec<Cell>) {
        self.appended.push(AppendedRow { prefix, cells });
    }

    /// Runs `prefix VALUES (…), (…) suffix` for `rows` (one value per column each), up to 200
    /// rows per statement: a batch upsert (`suffix` = `ON CONFLICT … DO UPDATE …`) or an
    /// `UPDATE … FROM (VALUES …)` costs a statement per 200 rows instead of one per row. Rows of
    /// one call must not repeat a conflict key (PostgreSQL refuses to update a row twice in one
    /// statement); callers sort them so concurrent writers lock in the same order.
    pub async fn execute_rows(
        &mut self,
        prefix: &str,
        suffix: &str,
        rows: &[Vec<Cell>],
    ) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(APPEND_CHUNK) {
            let width = chunk.first().map_or(0, Vec::len);
            let mut sql =
                String::with_capacity(prefix.len() + suffix.len() + chunk.len() * width * 5);
            sql.push_str(prefix);
            sql.push_str(" VALUES ");
            let mut n = 0;
            for (k, row) in chunk.iter().enumerate() {
                if k > 0 {
                    sql.push(',');
                }
                sql.push('(');
                for c in 0..row.len() {
                    if c > 0 {
                        sql.push(',');
                    }
                    n += 1;
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
                sql.push(')');
            }
            if !suffix.is_empty() {
                sql.push(' ');
                sql.push_str(suffix);
            }
            let mut q = sqlx::query(&sql);
            for row in chunk {
                for cell in row {
                    q = match cell {
                        Cell::Int(v) => q.bind(*v),
                        Cell::Text(v) => q.bind(v.clone()),
                        Cell::OptText(v) => q.bind(v.clone()),
                    };
                }
            }
            q.execute(&mut **self).await?;
        }
        Ok(())
    }

    /// Writes the queued rows ([`Tx::append_row`]).
    async fn flush_appended(&mut self) -> Result<(), sqlx::Error> {
        let rows = std::mem::take(&mut self.appended);
        let mut run: Vec<Vec<Cell>> = Vec::new();
        let mut prefix: Option<&'static str> = None;
        for row in rows {
            // A run is the consecutive rows of one table and width.
            if prefix != Some(row.prefix) || run.first().is_some_and(|r| r.len() != row.cells.len())
            {
                if let Some(p) = prefix {
                    self.execute_rows(p, "", &run).await?;
                }
                run.clear();
                prefix = Some(row.prefix);
            }
            run.push(row.cells);
        }
        if let Some(p) = prefix {
            self.execute_rows(p, "", &run).await?;
        }
        Ok(())
    }

    /// Makes the transaction's work durable (on SQLite: with the rest of its batch).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if !self.appended.is_empty() {
            // On failure `self` drops here, which rolls the transaction back.
            self.flush_appended().await?;
        }
        match std::mem::replace(
            &mut self.inner,
            TxInner::Grouped {
                conn: None,
                back: None,
            },
        ) {
            TxInner::Plain(tx) => {
                tx.commit().await?;
                if let Some(s) = &self.stats {
                    s.committed(1);
                }
                Ok(())
            }
            TxInner::Grouped { conn, back } => {
                let (done, wait) = tokio::sync::oneshot::channel();
                hand_back(conn, back, group::Action::Commit(done))?;
                wait.await.unwrap_or_else(|_| Err(committer_gone()))
            }
        }
    }

    /// Undoes the transaction's work.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        match std::mem::replace(
            &mut self.inner,
            TxInner::Grouped {
                conn: None,
                back: None,
            },
        ) {
            TxInner::Plain(tx) => tx.rollback().await,
            TxInner::Grouped { conn, back } => {
                let (done, wait) = tokio::sync::oneshot::channel();
                hand_back(conn, back, group::Action::Rollback(Some(done)))?;
                wait.await.unwrap_or_else(|_| Err(committer_gone()))
            }
        }
    }
}

fn committer_gone() -> sqlx::Error {
    sqlx::Error::PoolClosed
}

fn hand_back(
    conn: Option<sqlx::pool::PoolConnection<Any>>,
    back: Option<tokio::sync::oneshot::Sender<group::Handback>>,
    action: group::Action,
) -> Result<(), sqlx::Error> {
    match (conn, back) {
        (Some(conn), Some(back)) => back
            .send(group::Handback { conn, action })
            .map_err(|_| committer_gone()),
        _ => Err(committer_gone()),
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let TxInner::Grouped { conn, back } = &mut self.inner {
            // Neither committed nor rolled back: undo it (like sqlx's own transactions).
            let _ = hand_back(conn.take(), back.take(), group::Action::Rollback(None));
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        match &self.inner {
            TxInner::Plain(tx) => tx,
            TxInner::Grouped { conn, .. } => conn
                .as_ref()
                .expect("BUG: a grouped transaction is used after commit or rollback"),
        }
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        match &mut self.inner {
            TxInner::Plain(tx) => tx,
            TxInner::Grouped { conn, .. } => conn
                .as_mut()
                .expect("BUG: a grouped transaction is used after commit or rollback"),
        }
    }
}

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
    /// SQLite only: how transactions share durable commits.
    pub group_commit: GroupCommitConfig,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            group_commit: GroupCommitConfig::default(),
        }
    }
}

/// Handle to the database: a writer pool and a reader pool (the same pool on PostgreSQL).
#[derive(Clone, Debug)]
pub struct Db {
    write: AnyPool,
    read: AnyPool,
    backend: Backend,
    /// SQLite: the queue of the group committer that owns the writer.
    committer: Option<tokio::sync::mpsc::UnboundedSender<group::BeginRequest>>,
    acquire_timeout: Duration,
    stats: std::sync::Arc<DbStats>,
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
                committer: None,
                acquire_timeout: opts.acquire_timeout,
                stats: Default::default(),
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
        let (queue, requests) = tokio::sync::mpsc::unbounded_channel();
        let stats = std::sync::Arc::new(DbStats::default());
        tokio::spawn(group::run(
            write.clone(),
            requests,
            opts.group_commit,
            stats.clone(),
        ));
        Ok(Db {
            write,
            read,
            backend: Backend::Sqlite,
            committer: Some(queue),
            acquire_timeout: opts.acquire_timeout,
            stats,
        })
    }

    /// `sqlite://<dir>/mercato.db`
    pub fn sqlite_url_in(dir: &Path) -> String {
        format!("sqlite://{}", dir.join("mercato.db").display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Counters of write transactions and durable commits (benchmarks, tests, metrics).
    pub fn stats(&self) -> &DbStats {
        &self.stats
    }

    /// The pool for reads that need no transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: the write lock is taken
    /// up front, so a transaction that reads before it writes cannot hit "database is locked".
    ///
    /// On SQLite the transaction joins the group committer's current (or next) batch.
    #[track_caller]
    pub fn begin(&self) -> impl std::future::Future<Output = StoreResult<Tx>> + Send + '_ {
        let at = group::note_begin(std::panic::Location::caller());
        self.begin_here(at)
    }

    async fn begin_here(
        &self,
        at: Option<&'static std::panic::Location<'static>>,
    ) -> StoreResult<Tx> {
        let Some(queue) = &self.committer else {
            let tx = self.write.begin().await?;
            self.stats.begun();
            return Ok(Tx {
                inner: TxInner::Plain(tx),
                stats: Some(self.stats.clone()),
                appended: Vec::new(),
            });
        };
        let (reply, lease) = tokio::sync::oneshot::channel();
        self.stats.queued();
        queue
            .send(group::BeginRequest { reply, at })
            .map_err(|_| StoreError::Unavailable("the database is closed".into()))?;
        match tokio::time::timeout(self.acquire_timeout, lease).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(_)) => Err(StoreError::Unavailable("the database is closed".into())),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for the writer".into(),
            )),
        }
    }

    /// Runs one write statement as its own transaction (on SQLite: in the current batch).
    #[track_caller]
    pub fn execute_write<'a, 'q: 'a>(
        &'a self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> impl std::future::Future<Output = StoreResult<sqlx::any::AnyQueryResult>> + Send + 'a {
        let at = group::note_begin(std::panic::Location::caller());
        async move {
            let mut tx = self.begin_here(at).await?;
            let r = query.execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(r)
        }
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
            match tokio::time::timeout(Duration::from_secs(2), self.begin()).await {
                Ok(Ok(tx)) => tx.rollback().await?,
                Ok(Err(e)) => return Err(e),
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
