//! Group commit for SQLite's single writer (ADR 0005).
//!
//! Every write transaction on SQLite queues for the one writer connection. Committing each of
//! them on its own costs one fsync of the WAL per transaction (`synchronous=FULL`), and the
//! fsync, not the SQL, is what bounds throughput. The committer instead runs the transactions
//! that queue up while a commit is in progress inside ONE outer transaction, each in its own
//! savepoint, and commits them together:
//!
//! ```text
//! BEGIN IMMEDIATE
//!   SAVEPOINT tx   … first caller's statements …   RELEASE tx      (caller 1 asked to commit)
//!   SAVEPOINT tx   … second caller's statements …  ROLLBACK TO tx; RELEASE tx   (rolled back)
//!   SAVEPOINT tx   … third caller's statements …   RELEASE tx      (caller 3 asked to commit)
//! COMMIT   ← one fsync; only now do callers 1 and 3 get `Ok` from `commit()`
//! ```
//!
//! - Isolation: callers run one after another on the connection; a caller sees its batch-mates'
//!   released writes, which become durable together with its own or not at all.
//! - All-or-nothing per caller: a caller that rolls back (or drops its `Tx`, or fails) is rolled
//!   back to its savepoint and leaves no trace; its batch-mates are not affected.
//! - Durability: `commit()` returns only after the batch's `COMMIT` (and its fsync) succeeded.
//!   If that `COMMIT` fails, every caller of the batch gets the error and nothing of the batch
//!   is applied. If SQLite rolls the whole outer transaction back on its own (I/O error, disk
//!   full), the batch fails the same way.
//! - Bounds: a batch takes at most `max_batch` transactions and stops admitting new ones once it
//!   has been open for `max_delay`. There is no lingering: when nobody is queued the batch
//!   commits at once, so a lone transaction pays no extra latency.

use sqlx::any::Any;
use sqlx::pool::PoolConnection;
use sqlx::{AnyPool, Executor};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The connection coming back from a logical transaction, with what to do with its work.
pub(super) struct Handback {
    pub conn: PoolConnection<Any>,
    pub action: Action,
}

pub(super) enum Action {
    /// Keep the work; answer once the batch is durable.
    Commit(oneshot::Sender<Result<(), sqlx::Error>>),
    /// Undo the work (an explicit rollback answers; a dropped transaction does not wait).
    Rollback(Option<oneshot::Sender<Result<(), sqlx::Error>>>),
}

/// A request to begin a logical transaction.
pub(super) struct BeginRequest {
    /// Receives the transaction (the writer connection lent to it). A transaction that is
    /// never received is dropped, which hands the connection back as a rollback.
    pub reply: oneshot::Sender<Result<super::Tx, sqlx::Error>>,
    /// Who began it, while profiling ([`count_begins`]).
    pub at: Option<&'static std::panic::Location<'static>>,
}

/// Limits of one batch.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitConfig {
    /// Most transactions in one durable commit (1 = no grouping).
    pub max_batch: usize,
    /// A batch stops admitting transactions once it has been open this long.
    pub max_delay: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_batch: 64,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// Counters of the write path, readable at any time (`mercato bench --profile`, tests).
#[derive(Debug, Default)]
pub struct DbStats {
    queued: AtomicU64,
    started: AtomicU64,
    transactions: AtomicU64,
    commits: AtomicU64,
    failed_batches: AtomicU64,
    in_transactions_us: AtomicU64,
    in_commit_us: AtomicU64,
}

/// A snapshot of [`DbStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbStatsSnapshot {
    /// Write transactions begun.
    pub transactions: u64,
    /// Durable commits (on SQLite: batches that kept something, each one fsync of the WAL).
    pub commits: u64,
    /// Batches whose COMMIT failed (every member got the error).
    pub failed_batches: u64,
    /// Transactions waiting for the writer right now.
    pub waiting: u64,
    /// SQLite: time the writer was lent to transactions (savepoint to release), microseconds.
    pub in_transactions_us: u64,
    /// SQLite: time spent in BEGIN and COMMIT (the fsync), microseconds.
    pub in_commit_us: u64,
}

impl DbStats {
    pub(super) fn queued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn begun(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn committed(&self, n: u64) {
        self.commits.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("db_commits_total").increment(n);
    }

    pub fn snapshot(&self) -> DbStatsSnapshot {
        let queued = self.queued.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        DbStatsSnapshot {
            transactions: self.transactions.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            waiting: queued.saturating_sub(started),
            in_transactions_us: self.in_transactions_us.load(Ordering::Relaxed),
            in_commit_us: self.in_commit_us.load(Ordering::Relaxed),
        }
    }
}

static COUNT_BEGINS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
type ByCaller = std::collections::HashMap<String, (u64, u64)>;
static BEGINS: std::sync::Mutex<Option<ByCaller>> = std::sync::Mutex::new(None);

/// Starts (or stops) counting write transactions by the source line that began them
/// (`mercato bench checkout --profile`).
pub fn count_begins(on: bool) {
    COUNT_BEGINS.store(on, Ordering::SeqCst);
}

/// Write transactions begun while counting, by caller: (caller, count, microseconds the
/// writer was lent to them on SQLite), most frequent first.
pub fn begins_by_caller() -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = BEGINS
        .lock()
        .map(|m| {
            m.clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, (n, us))| (k, n, us))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Counts a begin by `at` while profiling; returns `at` then (to time its hold on the writer).
pub(super) fn note_begin(
    at: &'static std::panic::Location<'static>,
) -> Option<&'static std::panic::Location<'static>> {
    if !COUNT_BEGINS.load(Ordering::Relaxed) {
        return None;
    }
    note_hold(at, 1, 0);
    Some(at)
}

fn note_hold(at: &'static std::panic::Location<'static>, n: u64, us: u64) {
    if let Ok(mut m) = BEGINS.lock() {
        let e = m
            .get_or_insert_with(Default::default)
            .entry(format!("{}:{}", at.file(), at.line()))
            .or_default();
        e.0 += n;
        e.1 += us;
    }
}

/// Builds an error for every member of a failed batch (sqlx errors are not `Clone`).
fn batch_error(what: &str, e: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!(
        "group commit failed ({what}): {e}"
    )))
}

/// The task that owns SQLite's writer: forms batches and commits them.
///
/// Savepoint bookkeeping rides along with the statements around it, so each transaction costs
/// one round trip to SQLite's worker thread beyond its own statements: `BEGIN IMMEDIATE;
/// SAVEPOINT tx` opens a batch, `RELEASE tx; SAVEPOINT tx` passes from one member to the next,
/// `RELEASE tx; COMMIT` closes it (a member that rolls back is `ROLLBACK TO tx; RELEASE tx; …`).
pub(super) async fn run(
    pool: AnyPool,
    mut queue: mpsc::UnboundedReceiver<BeginRequest>,
    cfg: GroupCommitConfig,
    stats: Arc<DbStats>,
) {
    let max_batch = cfg.max_batch.max(1);
    while let Some(first) = queue.recv().await {
        stats.started.fetch_add(1, Ordering::Relaxed);
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                let _ = first.reply.send(Err(e));
                continue;
            }
        };
        let begun = Instant::now();
        if let Err(e) = conn.execute("BEGIN IMMEDIATE; SAVEPOINT tx").await {
            let _ = conn.execute("ROLLBACK").await;
            let _ = first.reply.send(Err(e));
            continue;
        }
        let mut commit_time = begun.elapsed();
        let opened = Instant::now();
        let mut waiting: Vec<oneshot::Sender<Result<(), sqlx::Error>>> = Vec::new();
        let mut rolled_back: Vec<oneshot::Sender<Result<(), sqlx::Error>>> = Vec::new();
        let mut members = 0usize;
        let mut current = first;
        let mut held = Some(conn);
        let mut broken: Option<sqlx::Error> = None;
        loop {
            let Some(c) = held.take() else {
                broken = Some(lost_connection());
                break;
            };
            members += 1;
            let lent = Instant::now();
            let at = current.at;
            let handback = lend(c, current).await;
            let lent_us = micros(lent.elapsed());
            stats
                .in_transactions_us
                .fetch_add(lent_us, Ordering::Relaxed);
            if let Some(at) = at {
                note_hold(at, 0, lent_us);
            }
            let Some(handback) = handback else {
                broken = Some(lost_connection());
                break;
            };
            let mut c = handback.conn;
            let undo = match handback.action {
                Action::Commit(w) => {
                    waiting.push(w);
                    false
                }
                Action::Rollback(w) => {
                    rolled_back.extend(w);
                    true
                }
            };
            let end_member = if undo {
                "ROLLBACK TO tx; RELEASE tx"
            } else {
                "RELEASE tx"
            };
            let next = if members < max_batch && opened.elapsed() < cfg.max_delay {
                queue.try_recv().ok()
            } else {
                None
            };
            match next {
                Some(req) => {
                    stats.started.fetch_add(1, Ordering::Relaxed);
                    let sql = format!("{end_member}; SAVEPOINT tx");
                    match c.execute(sql.as_str()).await {
                        Ok(_) => {
                            answer_rollbacks(&mut rolled_back);
                            held = Some(c);
                            current = req;
                        }
                        Err(e) => {
                            let _ = req.reply.send(Err(batch_error("SAVEPOINT", &e)));
                            held = Some(c);
                            broken = Some(e);
                            break;
                        }
                    }
                }
                None => {
                    let closing = Instant::now();
                    let sql = if waiting.is_empty() {
                        // Nothing to keep: no fsync needed.
                        format!("{end_member}; ROLLBACK")
                    } else {
                        format!("{end_member}; COMMIT")
                    };
                    let r = c.execute(sql.as_str()).await;
                    if let Err(e) = r {
                        broken = Some(e);
                    }
                    commit_time += closing.elapsed();
                    held = Some(c);
                    break;
                }
            }
        }
        if let (Some(_), Some(c)) = (&broken, held.as_mut()) {
            // A failed COMMIT or savepoint statement leaves the outer transaction open (or SQLite
            // already rolled it back): make sure nothing of the batch survives.
            let _ = c.execute("ROLLBACK").await;
        }
        // Rolled-back members are undone whatever happened to the batch.
        answer_rollbacks(&mut rolled_back);
        stats
            .in_commit_us
            .fetch_add(micros(commit_time), Ordering::Relaxed);
        stats
            .transactions
            .fetch_add(members as u64, Ordering::Relaxed);
        metrics::counter!("db_transactions_total").increment(members as u64);
        metrics::gauge!("db_writer_waiting").set(stats.snapshot().waiting as f64);
        if !waiting.is_empty() {
            stats.committed(1);
            metrics::histogram!("db_group_commit_batch_size").record(waiting.len() as f64);
        }
        match broken {
            None => {
                for w in waiting {
                    let _ = w.send(Ok(()));
                }
            }
            Some(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("db_group_commit_failures_total").increment(1);
                tracing::error!(error = %e, members, "a group commit failed; its transactions were not applied");
                for w in waiting {
                    let _ = w.send(Err(batch_error("batch", &e)));
                }
            }
        }
        drop(held);
    }
}

fn answer_rollbacks(rolled_back: &mut Vec<oneshot::Sender<Result<(), sqlx::Error>>>) {
    for w in rolled_back.drain(..) {
        let _ = w.send(Ok(()));
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn lost_connection() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "the writer connection was not handed back (a transaction was leaked)",
    ))
}

/// Lends the connection (with its savepoint open) to one logical transaction and waits for it
/// to come back. `None` when the transaction was leaked (mem::forget) and the connection lost.
async fn lend(c: PoolConnection<Any>, req: BeginRequest) -> Option<Handback> {
    let (back, back_rx) = oneshot::channel();
    // If the caller stopped waiting, the returned transaction is dropped here, which hands
    // the connection back as a rollback.
    drop(req.reply.send(Ok(super::Tx::grouped(c, back))));
    back_rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::super::{Db, DbOptions, StoreError};
    use super::GroupCommitConfig;
    use std::time::Duration;

    async fn sqlite(dir: &tempfile::TempDir, cfg: GroupCommitConfig) -> Db {
        let db = Db::connect(
            &Db::sqlite_url_in(dir.path()),
            &DbOptions {
                group_commit: cfg,
                ..DbOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        db.execute_write(sqlx::query(
            "CREATE TABLE probe (id TEXT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0))",
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        db
    }

    async fn ids(db: &Db) -> Vec<String> {
        sqlx::query_scalar("SELECT id FROM probe ORDER BY id")
            .fetch_all(db.reader())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn insert(tx: &mut super::super::Tx, id: &str, n: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO probe (id, n) VALUES ($1, $2)")
            .bind(id)
            .bind(n)
            .execute(&mut **tx)
            .await
            .map(|_| ())
    }

    /// Holds the writer with one transaction until `n` others are queued behind it, so that
    /// all of them land in the same batch.
    async fn wait_queued(db: &Db, n: u64) {
        for _ in 0..500 {
            if db.stats().snapshot().waiting >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{n} transactions never queued");
    }

    fn one_big_batch() -> GroupCommitConfig {
        GroupCommitConfig {
            max_batch: 64,
            max_delay: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn a_rolled_back_or_failed_member_leaves_no_trace_while_its_batch_mates_commit() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = sqlite(&dir, one_big_batch()).await;
        let before = db.stats().snapshot();
        let mut first = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
        insert(&mut first, "a-first", 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.begin().await?;
                let id = format!("m{i:02}");
                insert(&mut tx, &id, 1).await?;
                match i % 4 {
                    // Explicit rollback.
                    1 => {
                        tx.rollback().await?;
                        Ok::<_, StoreError>(None)
                    }
                    // A failing statement, then the error returns early (the Tx is dropped).
                    2 => {
                        insert(&mut tx, "a-first", 1).await?;
                        Ok(Some(id))
                    }
                    // Dropped without a word.
                    3 => {
                        drop(tx);
                        Ok(None)
                    }
                    _ => {
                        tx.commit().await?;
                        Ok(Some(id))
                    }
                }
            }));
        }
        wait_queued(&db, 12).await;
        first.commit().await.unwrap_or_else(|e| panic!("{e}"));
        let mut expected = vec!["a-first".to_owned()];
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap_or_else(|e| panic!("{e}"));
            match i % 4 {
                2 => assert!(r.is_err(), "the duplicate insert must fail"),
                0 => expected.push(r.unwrap_or_else(|e| panic!("{e}")).unwrap_or_default()),
                _ => assert!(r.is_ok()),
            }
        }
        assert_eq!(ids(&db).await, expected);
        let after = db.stats().snapshot();
        assert_eq!(after.transactions - before.transactions, 13);
        assert_eq!(
            after.commits - before.commits,
            1,
            "all thirteen shared one durable commit"
        );
    }

    #[tokio::test]
    async fn a_failing_commit_fails_every_member_of_its_batch_and_applies_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = sqlite(&dir, one_big_batch()).await;
        // A deferred foreign key is checked at COMMIT: one member can make the batch's COMMIT
        // fail (which is why the schema must not use deferred constraints; see ADR 0005).
        db.execute_write(sqlx::query(
            "CREATE TABLE child (id TEXT PRIMARY KEY, parent TEXT REFERENCES probe (id) \
             DEFERRABLE INITIALLY DEFERRED)",
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let mut first = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
        insert(&mut first, "first", 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.begin().await?;
                if i == 5 {
                    sqlx::query("INSERT INTO child (id, parent) VALUES ('orphan', 'nobody')")
                        .execute(&mut *tx)
                        .await?;
                } else {
                    insert(&mut tx, &format!("m{i}"), 1).await?;
                }
                tx.commit().await?;
                Ok::<_, StoreError>(())
            }));
        }
        wait_queued(&db, 8).await;
        let r = first.commit().await;
        assert!(r.is_err(), "the batch's COMMIT failed: {r:?}");
        for t in tasks {
            let r = t.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(r.is_err(), "every member sees the failure");
        }
        assert!(ids(&db).await.is_empty(), "nothing of the batch is applied");
        assert_eq!(db.stats().snapshot().failed_batches, 1);
        // The writer carries on with the next batch.
        let mut tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
        insert(&mut tx, "after", 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids(&db).await, vec!["after".to_owned()]);
    }

    #[tokio::test]
    async fn a_lone_transaction_commits_at_once_and_batches_respect_their_size() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = sqlite(
            &dir,
            GroupCommitConfig {
                max_batch: 4,
                max_delay: Duration::from_secs(30),
            },
        )
        .await;
        let before = db.stats().snapshot();
        let mut first = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
        insert(&mut first, "first", 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.begin().await?;
                insert(&mut tx, &format!("m{i:02}"), 1).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(())
            }));
        }
        wait_queued(&db, 10).await;
        first.commit().await.unwrap_or_else(|e| panic!("{e}"));
        for t in tasks {
            t.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(ids(&db).await.len(), 11);
        let after = db.stats().snapshot();
        // 11 transactions in batches of at most 4: exactly 3 commits.
        assert_eq!(after.commits - before.commits, 3);
        // Alone, a transaction does not wait for company.
        let t0 = std::time::Instant::now();
        let mut tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
        insert(&mut tx, "alone", 1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn sixty_four_racing_writers_keep_exactly_what_they_committed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = sqlite(&dir, GroupCommitConfig::default()).await;
        let mut tasks = Vec::new();
        for w in 0..64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut kept = Vec::new();
                for i in 0..20 {
                    let id = format!("w{w:02}-{i:02}");
                    let mut tx = db.begin().await?;
                    insert(&mut tx, &id, 1).await?;
                    tokio::task::yield_now().await;
                    if (w + i) % 3 == 0 {
                        // A CHECK violation inside the transaction: it fails, as a whole.
                        if insert(&mut tx, &format!("{id}-bad"), -1).await.is_ok() {
                            panic!("the CHECK constraint must refuse n < 0");
                        }
                        drop(tx);
                    } else {
                        tx.commit().await?;
                        kept.push(id);
                    }
                }
                Ok::<_, StoreError>(kept)
            }));
        }
        let mut expected = Vec::new();
        for t in tasks {
            expected.extend(
                t.await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        expected.sort();
        assert_eq!(ids(&db).await, expected);
        let s = db.stats().snapshot();
        assert!(
            s.commits < s.transactions,
            "racing writers share commits: {s:?}"
        );
    }
}
