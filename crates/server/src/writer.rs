//! The one writer: every write of the process goes through one task that
//! owns one database connection (SQLite or PostgreSQL, see [`crate::db`]), so
//! that no two writers ever meet on the database's locks, and work that is
//! ready together shares one transaction and one fsync (group commit).
//!
//! A caller hands the writer a piece of work (a closure over the connection)
//! and gets its result only once the transaction holding it is committed:
//! nothing is acknowledged, and so nothing is published, before it is
//! durable. Each piece runs inside a savepoint of the batch's transaction, so
//! a piece that fails for its own reasons (a name taken, a row missing) is
//! undone alone and the rest of the batch commits.
//!
//! Any database error (a full disk, an I/O error, a lock held by another
//! process past the busy timeout) fails the whole batch: the connection is
//! dropped, never reused, since SQLite may leave a transaction open on it
//! after some errors (then every later `BEGIN` on it would fail, or worse,
//! with sqlx's nested transactions, become a savepoint of a transaction that
//! never commits). A new connection is opened, and what is durable is read
//! back: a commit of the failed batch that reached the disk anyway (its
//! `COMMIT` reported an error after the fact) is acknowledged; the others
//! fail, and their callers retry with the same content. While writes fail,
//! [`Writer::health`] says so, and readiness follows it.
//!
//! On SQLite, transactions start with `BEGIN IMMEDIATE`: the write lock is
//! taken before the first read, so a read-then-write never fails on a lock it
//! could not upgrade (SQLite does not retry that case; it answers SQLITE_BUSY
//! at once).
//!
//! On PostgreSQL the design is the same: one connection, a transaction per
//! batch, a savepoint per piece (which PostgreSQL needs all the more: an
//! error aborts the whole transaction unless rolled back to a savepoint), and
//! on a database error the connection is closed, a new one opened and
//! durability read back. The writer's connection holds a session advisory
//! lock ([`PG_LOCK`]) for its whole life, taken again at every reopen: a
//! second netsyncd on the same database cannot take it and refuses to start,
//! or, if it got it while this one was reconnecting, this one's writes fail
//! instead of writing beside it. A `COMMIT` returns once the commit is
//! durable (`synchronous_commit`, on by default; netsyncd does not change
//! it).
//!
//! With several replicas on one PostgreSQL database (`--replicas`, see
//! [`crate::replicas`]) every replica has a writer, so the exclusive lock
//! gives way to a shared one (a replica and a single netsyncd still exclude
//! each other), and writes that belong to the owner of a datastore (its
//! commits, snapshots, compaction, reconcile job rows) are fenced: each such
//! piece carries the lease epoch its replica held when it was handed over,
//! and checks in its own transaction, before writing, that the lease row still
//! names this replica at that epoch ([`Fence`]). A piece whose lease moved on
//! is refused alone (its savepoint undone, the rest of the batch commits),
//! and a commit of a failed batch is read back as durable only while the
//! lease is still its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgDatabaseError};
use sqlx::sqlite::SqliteConnection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::db::{Conn, Connect, on_conn};
use crate::error::Error;

/// Most pieces of work in one transaction. Bounds how long a batch holds
/// the write lock and how much a failed batch makes retry.
const MAX_BATCH: usize = 512;

/// Pieces of work waiting for the writer. Callers wait (asynchronously) when
/// it is full, which bounds memory when the disk is slower than the load.
const QUEUE: usize = 4096;

/// Backoff between attempts to open a new connection after a failure.
const REOPEN_MIN: Duration = Duration::from_millis(50);
const REOPEN_MAX: Duration = Duration::from_secs(2);

/// The key of the PostgreSQL session advisory lock the writer's connection
/// holds: one netsyncd writes a database at a time. ("netsync" in ASCII.)
pub const PG_LOCK: i64 = 0x006e_6574_7379_6e63;

/// What fences the writes of a replica ([`crate::replicas`]): its id, and
/// the lease epoch of each datastore it owns now. The lease manager fills
/// it (before it starts a sync) and empties it (before it stops one); a
/// write of an owned datastore takes the epoch at hand-over time, so a
/// piece still queued from a sync that lost its lease can never pass under
/// a later epoch of the same replica.
#[derive(Debug)]
pub struct Fence {
    replica: Arc<str>,
    epochs: std::sync::Mutex<HashMap<String, i64>>,
}

impl Fence {
    /// The fence of replica `replica`, owning nothing yet.
    pub fn new(replica: &str) -> Arc<Self> {
        Arc::new(Self {
            replica: replica.into(),
            epochs: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// This replica owns `datastore` at `epoch` from now on.
    pub fn own(&self, datastore: &str, epoch: i64) {
        self.epochs
            .lock()
            .expect("lock")
            .insert(datastore.to_string(), epoch);
    }

    /// This replica no longer owns `datastore`: its writes are refused from
    /// now on, even before the database would refuse them.
    pub fn disown(&self, datastore: &str) {
        self.epochs.lock().expect("lock").remove(datastore);
    }

    /// The epoch at which this replica owns `datastore`, if it does.
    pub fn epoch(&self, datastore: &str) -> Option<i64> {
        self.epochs.lock().expect("lock").get(datastore).copied()
    }

    /// The datastores owned now, with their epochs.
    pub fn owned(&self) -> HashMap<String, i64> {
        self.epochs.lock().expect("lock").clone()
    }
}

/// The check a fenced piece runs before its work: the lease of `datastore`
/// still names `replica` at `epoch`.
#[derive(Debug, Clone)]
struct FenceCheck {
    datastore: String,
    replica: Arc<str>,
    epoch: i64,
}

impl FenceCheck {
    /// Whether the lease still holds, locking its row (`FOR KEY SHARE`)
    /// until the transaction ends. A takeover locks the row `FOR UPDATE`
    /// first, which waits for this batch to commit, and so loads running
    /// with this piece in it; a takeover that committed first makes this
    /// find no row, since PostgreSQL re-reads a row updated meanwhile before
    /// locking it. The weakest lock that does this: renewals (which update
    /// only `expires`) do not conflict with it, so a busy writer never holds
    /// up its own replica's renewals.
    async fn holds(&self, conn: &mut Conn) -> Result<bool, sqlx::Error> {
        let Conn::Postgres(pg) = conn else {
            return Ok(true);
        };
        let row: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM leases WHERE datastore = $1 AND owner = $2 AND epoch = $3 FOR KEY SHARE",
        )
        .bind(&self.datastore)
        .bind(&*self.replica)
        .bind(self.epoch)
        .fetch_optional(&mut *pg)
        .await?;
        Ok(row.is_some())
    }

    fn refusal(&self) -> Error {
        Error::NotOwner(format!(
            "this replica no longer owns datastore {:?} (its lease at epoch {} was taken over or \
             released); nothing was written, retry",
            self.datastore, self.epoch
        ))
    }
}

/// Longest wait to close a failed PostgreSQL connection (which ends its
/// session, and so releases its lock, before the new one asks for it).
const PG_CLOSE: Duration = Duration::from_secs(1);

/// Whether writes succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last transaction committed (or none was tried yet).
    Ok,
    /// The last transaction failed; the text says why, for status and logs
    /// (e.g. `disk full`).
    Failing(String),
}

/// Counters of the writer, for metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (each one fsync of the WAL).
    pub transactions: AtomicU64,
    /// Pieces of work committed.
    pub writes: AtomicU64,
    /// Transactions that failed.
    pub failures: AtomicU64,
}

/// A piece of work of any result type, as the writer task holds it.
trait Job: Send {
    /// Runs the work on `conn`. An error is a database error (the batch
    /// fails); the work's own failure is kept for [`Job::finish`].
    fn run<'c>(&'c mut self, conn: &'c mut Conn) -> BoxFuture<'c, Result<(), sqlx::Error>>;
    /// Whether the work failed for its own reasons (its savepoint is undone).
    fn refused(&self) -> bool;
    /// For a commit of running: its datastore and revision, by which its
    /// durability is read back after a failed batch.
    fn revision(&self) -> Option<(&str, u64)>;
    /// For a fenced piece: the lease it needs.
    fn fence(&self) -> Option<&FenceCheck>;
    /// Tells the caller how it ended.
    fn finish(self: Box<Self>, fate: Fate);
}

/// How a batch ended for one piece of work.
enum Fate {
    /// Its transaction committed.
    Committed,
    /// Its transaction failed, but what it wrote was read back as durable.
    Durable,
    /// Its transaction failed; the text says why.
    Failed(Arc<str>),
}

type Work<T> = Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, Error>> + Send>;

/// A commit's datastore and revision, and the work's result once the commit
/// is read back as durable.
type Durable<T> = Option<(String, u64, fn() -> T)>;

struct Typed<T> {
    work: Option<Work<T>>,
    /// The caller's span: what the work logs names what it was for (the
    /// datastore of a commit), though it runs on the writer's task.
    span: tracing::Span,
    outcome: Option<Result<T, Error>>,
    reply: oneshot::Sender<Result<T, Error>>,
    /// A commit's datastore and revision, and its result once read back as
    /// durable.
    durable: Durable<T>,
    /// For a write of an owned datastore: the lease it needs.
    fence: Option<FenceCheck>,
}

impl<T: Send + 'static> Job for Typed<T> {
    fn run<'c>(&'c mut self, conn: &'c mut Conn) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let Some(work) = self.work.take() else {
                return Ok(());
            };
            if let Some(fence) = &self.fence
                && !fence.holds(conn).await?
            {
                tracing::warn!(datastore = %fence.datastore, epoch = fence.epoch, "a write refused: the lease moved on (fenced)");
                self.outcome = Some(Err(fence.refusal()));
                return Ok(());
            }
            match work(conn).instrument(self.span.clone()).await {
                // A constraint refuses one statement and leaves the
                // transaction as it was: the work's own failure. Anything
                // else may have hurt the transaction: the batch fails.
                Err(Error::Store(e)) if !is_constraint(&e) => Err(e),
                outcome => {
                    self.outcome = Some(outcome);
                    Ok(())
                }
            }
        })
    }

    fn refused(&self) -> bool {
        matches!(self.outcome, Some(Err(_)))
    }

    fn revision(&self) -> Option<(&str, u64)> {
        self.durable.as_ref().map(|(d, r, _)| (d.as_str(), *r))
    }

    fn fence(&self) -> Option<&FenceCheck> {
        self.fence.as_ref()
    }

    fn finish(self: Box<Self>, fate: Fate) {
        let result = match fate {
            Fate::Committed => self
                .outcome
                .unwrap_or_else(|| Err(Error::StorageUnavailable("not run".into()))),
            Fate::Durable => match self.durable {
                Some((_, _, done)) => Ok(done()),
                None => Err(Error::StorageUnavailable("not durable".into())),
            },
            Fate::Failed(why) => Err(Error::StorageUnavailable(why.to_string())),
        };
        let _ = self.reply.send(result);
    }
}

/// Handle to the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    health: watch::Receiver<Health>,
    stats: Arc<WriterStats>,
    /// Ends the task once what is queued is written (see [`Writer::close`]).
    closing: CancellationToken,
    /// Replica mode: the fence of owned datastores' writes.
    fence: Option<Arc<Fence>>,
}

impl std::fmt::Debug for dyn Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// How the writer opens its connection.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// The database (for SQLite, with the pragmas every connection gets).
    pub connect: Connect,
    /// Test-only, SQLite only: see [`PageLimit`].
    pub max_page_count: PageLimit,
    /// PostgreSQL replicas only: the fence of this replica's writes. With
    /// one, the writer's connection takes the writer lock shared.
    pub fence: Option<Arc<Fence>>,
}

/// Test-only: SQLite's `max_page_count` for the writer, which makes the
/// database "full" at an exact size, a deterministic disk full. Shared, so
/// that a test can raise it (free space) while the writer runs; applied at
/// every (re)open and before every transaction. No limit by default.
#[derive(Debug, Clone, Default)]
pub struct PageLimit(Option<Arc<AtomicU64>>);

impl PageLimit {
    /// A limit of `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self(Some(Arc::new(AtomicU64::new(pages))))
    }

    /// Changes the limit (a no-op without one).
    pub fn set(&self, pages: u64) {
        if let Some(limit) = &self.0 {
            limit.store(pages, Ordering::Relaxed);
        }
    }

    fn get(&self) -> Option<u64> {
        self.0.as_ref().map(|l| l.load(Ordering::Relaxed))
    }
}

impl PartialEq for PageLimit {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for PageLimit {}

impl Writer {
    /// Opens the writer's connection (see [`Writer::connect`]).
    pub async fn connect(options: &WriterOptions) -> Result<Conn, ConnectError> {
        connect(options).await
    }

    /// Starts the writer task on `conn`, opened with `options` (which it uses
    /// again to reopen after a failure); it ends at [`Writer::close`] or
    /// when every handle is dropped.
    pub fn start(options: WriterOptions, conn: Conn) -> (Self, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let (health_tx, health) = watch::channel(Health::Ok);
        let stats = Arc::new(WriterStats::default());
        let closing = CancellationToken::new();
        let fence = options.fence.clone();
        let task = tokio::spawn(
            Task {
                options,
                conn: Some(conn),
                queue,
                health: health_tx,
                stats: stats.clone(),
            }
            .run(closing.clone()),
        );
        (
            Self {
                jobs,
                health,
                stats,
                closing,
                fence,
            },
            task,
        )
    }

    /// Runs `work` inside the writer's next transaction; its result comes
    /// back once that transaction is committed. An error of the work itself
    /// (not a database error) undoes only what the work wrote.
    pub async fn write<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
    {
        self.submit(Box::new(work), None, None).await
    }

    /// Like [`Writer::write`], for a write that only the owner of
    /// `datastore` may make (reconcile job rows): fenced in replica mode
    /// (see [`Fence`]); refused at once if this replica does not own it.
    pub async fn write_owned<T, F>(&self, datastore: &str, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
    {
        let fence = self.fence_check(datastore, self.epoch_of(datastore)?);
        self.submit(Box::new(work), None, fence).await
    }

    /// Like [`Writer::write_owned`], under the lease epoch `epoch` taken
    /// earlier ([`Writer::epoch_of`]) rather than the one held now: for the
    /// last writes of a sync being stopped, whose epoch the fence has already
    /// let go of but whose lease row is still its own until freed. Refused by
    /// the database, as any fenced piece, once the lease moved on.
    pub async fn write_owned_at<T, F>(
        &self,
        datastore: &str,
        epoch: Option<i64>,
        work: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, Error>> + Send + 'static,
    {
        let fence = self.fence_check(datastore, epoch);
        self.submit(Box::new(work), None, fence).await
    }

    /// The lease epoch under which this replica writes `datastore`: `None`
    /// outside replica mode; NotOwner if this replica does not own it.
    pub fn epoch_of(&self, datastore: &str) -> Result<Option<i64>, Error> {
        let Some(fence) = &self.fence else {
            return Ok(None);
        };
        match fence.epoch(datastore) {
            Some(epoch) => Ok(Some(epoch)),
            None => Err(Error::NotOwner(format!(
                "this replica does not own datastore {datastore:?}; nothing was written"
            ))),
        }
    }

    /// The fence of this replica, in replica mode.
    pub fn fence(&self) -> Option<&Arc<Fence>> {
        self.fence.as_ref()
    }

    fn fence_check(&self, datastore: &str, epoch: Option<i64>) -> Option<FenceCheck> {
        Some(FenceCheck {
            datastore: datastore.to_string(),
            replica: self.fence.as_ref()?.replica.clone(),
            epoch: epoch?,
        })
    }

    /// Like [`Writer::write`], for the commit of `revision` of `datastore`:
    /// after a failed batch, a commit found durable by reading back the
    /// highest revision stored is acknowledged all the same. `epoch`: the
    /// lease epoch it is written under ([`Writer::epoch_of`]), which fences
    /// it in replica mode.
    pub async fn write_commit<F>(
        &self,
        datastore: &str,
        revision: u64,
        epoch: Option<i64>,
        work: F,
    ) -> Result<(), Error>
    where
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<(), Error>> + Send + 'static,
    {
        let fence = self.fence_check(datastore, epoch);
        self.submit(
            Box::new(work),
            Some((datastore.to_string(), revision, || ())),
            fence,
        )
        .await
    }

    async fn submit<T: Send + 'static>(
        &self,
        work: Work<T>,
        durable: Durable<T>,
        fence: Option<FenceCheck>,
    ) -> Result<T, Error> {
        let (reply, result) = oneshot::channel();
        let job = Box::new(Typed {
            work: Some(work),
            span: tracing::Span::current(),
            outcome: None,
            reply,
            durable,
            fence,
        });
        if self.jobs.send(job).await.is_err() {
            return Err(Error::StorageUnavailable("the writer has stopped".into()));
        }
        result
            .await
            .unwrap_or_else(|_| Err(Error::StorageUnavailable("the writer has stopped".into())))
    }

    /// Whether writes succeed now; changes are announced.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Asks the task to write what is queued, close its connection and end.
    /// Later writes fail with `StorageUnavailable`.
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// The writer task's state.
struct Task {
    options: WriterOptions,
    /// `None` after a failure, until a new connection opens.
    conn: Option<Conn>,
    queue: mpsc::Receiver<Box<dyn Job>>,
    health: watch::Sender<Health>,
    stats: Arc<WriterStats>,
}

impl Task {
    async fn run(mut self, closing: CancellationToken) {
        let mut batch: Vec<Box<dyn Job>> = Vec::new();
        loop {
            let received = tokio::select! {
                received = self.queue.recv_many(&mut batch, MAX_BATCH) => received,
                () = closing.cancelled() => {
                    // What was handed over before the close is still written.
                    self.queue.close();
                    self.queue.recv_many(&mut batch, MAX_BATCH).await
                }
            };
            if received == 0 {
                break;
            }
            let jobs = std::mem::take(&mut batch);
            self.batch(jobs).await;
        }
        if let Some(conn) = self.conn.take() {
            let _ = on_conn!(conn, conn => conn.close().await);
        }
    }

    /// Runs one batch in one transaction and tells each caller how it ended.
    async fn batch(&mut self, mut jobs: Vec<Box<dyn Job>>) {
        let pages = self.options.max_page_count.clone();
        let Some(conn) = self.ready().await else {
            let why = self.failing_reason();
            for job in jobs {
                job.finish(Fate::Failed(why.clone()));
            }
            return;
        };
        match transaction(conn, &mut jobs, &pages).await {
            Ok(wrote) => {
                self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .writes
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                self.health.send_if_modified(|h| {
                    let changed = wrote && *h != Health::Ok;
                    if changed {
                        tracing::info!("the database accepts writes again");
                        *h = Health::Ok;
                    }
                    changed
                });
                for job in jobs {
                    job.finish(Fate::Committed);
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let why: Arc<str> = describe_error(&e).into();
                tracing::error!(error = %e, writes = jobs.len(), "a write transaction failed; reopening the database connection");
                // Never reused: it may still hold the failed transaction.
                // A PostgreSQL session is ended first (bounded), so that it
                // lets go of the writer's lock before the new one asks.
                if let Some(Conn::Postgres(conn)) = self.conn.take() {
                    let _ = tokio::time::timeout(PG_CLOSE, conn.close()).await;
                }
                self.health.send_replace(Health::Failing(why.to_string()));
                let datastores: Vec<String> = jobs
                    .iter()
                    .filter_map(|j| j.revision().map(|(d, _)| d.to_string()))
                    .collect();
                let fences: Vec<FenceCheck> =
                    jobs.iter().filter_map(|j| j.fence().cloned()).collect();
                let (durable, leases) = match self.ready().await {
                    Some(conn) => (
                        highest_revisions(conn, datastores).await.ok(),
                        leases_held(conn, fences).await.ok(),
                    ),
                    None => (None, None),
                };
                for job in jobs {
                    // A fenced commit is its own only while its lease is:
                    // after a takeover, the revisions read back may be the
                    // new owner's.
                    let own = job.fence().is_none_or(|f| {
                        leases
                            .as_ref()
                            .is_some_and(|held| held.contains(&f.datastore))
                    });
                    let fate = match (job.revision(), &durable) {
                        (Some((datastore, revision)), Some(durable))
                            if own && durable.get(datastore).is_some_and(|&r| r >= revision) =>
                        {
                            tracing::warn!(
                                datastore,
                                revision,
                                "a commit reported failed is durable after all"
                            );
                            Fate::Durable
                        }
                        _ => Fate::Failed(why.clone()),
                    };
                    job.finish(fate);
                }
            }
        }
    }

    /// The connection, reopened first if the last one failed (once; a
    /// failure to reopen fails this batch and the next one tries again after
    /// a pause, so that callers are answered instead of queueing up).
    async fn ready(&mut self) -> Option<&mut Conn> {
        if self.conn.is_none() {
            let mut pause = REOPEN_MIN;
            for _ in 0..3 {
                match connect(&self.options).await {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reopen the database");
                        self.health.send_replace(Health::Failing(e.describe()));
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(REOPEN_MAX);
                    }
                }
            }
        }
        self.conn.as_mut()
    }

    fn failing_reason(&self) -> Arc<str> {
        match &*self.health.borrow() {
            Health::Failing(why) => why.as_str().into(),
            Health::Ok => "the database cannot be opened".into(),
        }
    }
}

/// One transaction over `jobs`, each in a savepoint of its own. Returns
/// whether it wrote anything: only such a transaction shows that the
/// database takes writes again (one that only read, or wrote nothing, commits
/// even on a full disk).
async fn transaction(
    conn: &mut Conn,
    jobs: &mut [Box<dyn Job>],
    max_page_count: &PageLimit,
) -> Result<bool, sqlx::Error> {
    match &mut *conn {
        Conn::Sqlite(sqlite) => {
            if let Some(pages) = max_page_count.get() {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "PRAGMA max_page_count = {pages}"
                )))
                .execute(&mut *sqlite)
                .await?;
            }
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut *sqlite)
                .await?;
            let before: i64 = sqlx::query_scalar("SELECT total_changes()")
                .fetch_one(&mut *sqlite)
                .await?;
            pieces(conn, jobs).await?;
            let Conn::Sqlite(sqlite) = conn else {
                unreachable!("the connection stays what it was")
            };
            let after: i64 = sqlx::query_scalar("SELECT total_changes()")
                .fetch_one(&mut *sqlite)
                .await?;
            sqlx::raw_sql("COMMIT").execute(&mut *sqlite).await?;
            Ok(after > before)
        }
        Conn::Postgres(pg) => {
            // One writer: no other transaction writes what this one reads,
            // so the default isolation (read committed) reads what it wrote.
            sqlx::raw_sql("BEGIN").execute(&mut *pg).await?;
            pieces(conn, jobs).await?;
            let Conn::Postgres(pg) = conn else {
                unreachable!("the connection stays what it was")
            };
            // Other replicas follow commits through the log; this wakes them
            // (delivered at COMMIT, and never for a rolled-back one).
            let committed: Vec<&str> = jobs
                .iter()
                .filter(|j| !j.refused())
                .filter_map(|j| j.revision().map(|(datastore, _)| datastore))
                .collect();
            crate::notify::send(pg, crate::notify::Channel::Commits, &committed).await?;
            // A transaction gets a transaction id at its first write.
            let wrote: bool = sqlx::query_scalar("SELECT txid_current_if_assigned() IS NOT NULL")
                .fetch_one(&mut *pg)
                .await?;
            sqlx::raw_sql("COMMIT").execute(&mut *pg).await?;
            Ok(wrote)
        }
    }
}

/// Runs each of `jobs` in a savepoint of the open transaction, undoing the
/// one that refuses.
async fn pieces(conn: &mut Conn, jobs: &mut [Box<dyn Job>]) -> Result<(), sqlx::Error> {
    for job in jobs.iter_mut() {
        on_conn!(&mut *conn, c => sqlx::raw_sql("SAVEPOINT piece").execute(&mut *c).await.map(drop))?;
        job.run(conn).await?;
        if job.refused() {
            on_conn!(&mut *conn, c => sqlx::raw_sql("ROLLBACK TO SAVEPOINT piece").execute(&mut *c).await.map(drop))?;
        }
        on_conn!(&mut *conn, c => sqlx::raw_sql("RELEASE SAVEPOINT piece").execute(&mut *c).await.map(drop))?;
    }
    Ok(())
}

/// The highest stored revision of each of `datastores`.
async fn highest_revisions(
    conn: &mut Conn,
    datastores: Vec<String>,
) -> Result<HashMap<String, u64>, sqlx::Error> {
    let mut highest = HashMap::new();
    for datastore in datastores {
        if highest.contains_key(&datastore) {
            continue;
        }
        let revision: Option<i64> = on_conn!(&mut *conn, conn => {
            sqlx::query_scalar("SELECT MAX(revision) FROM commits WHERE datastore = $1")
                .bind(&datastore)
                .fetch_one(&mut *conn)
                .await?
        });
        highest.insert(
            datastore,
            revision.map_or(0, |r| u64::try_from(r).unwrap_or(0)),
        );
    }
    Ok(highest)
}

/// The datastores among `fences` whose lease still holds.
async fn leases_held(
    conn: &mut Conn,
    fences: Vec<FenceCheck>,
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut held = std::collections::HashSet::new();
    for fence in fences {
        if fence.holds(conn).await? {
            held.insert(fence.datastore);
        }
    }
    Ok(held)
}

/// Whether `error` refuses one statement and leaves the transaction usable
/// (once rolled back to its savepoint): SQLite's SQLITE_CONSTRAINT (any
/// extended code), PostgreSQL's integrity constraint violations (class 23).
fn is_constraint(error: &sqlx::Error) -> bool {
    match pg_code(error) {
        Some(code) => code.starts_with("23"),
        None => primary_code(error) == Some(19),
    }
}

/// Whether `error` is a foreign key violation (SQLITE_CONSTRAINT_FOREIGNKEY,
/// PostgreSQL's 23503): a row refers to a datastore that is gone (deleted
/// meanwhile).
pub fn is_foreign_key(error: &sqlx::Error) -> bool {
    if let Some(code) = pg_code(error) {
        return code == "23503";
    }
    match error {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i64>().ok()) == Some(787),
        _ => false,
    }
}

/// PostgreSQL's SQLSTATE of a database error; `None` for SQLite's errors.
fn pg_code(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.try_downcast_ref::<PgDatabaseError>().map(|e| e.code()),
        _ => None,
    }
}

/// SQLite's primary result code of a database error (the low byte of an
/// extended code).
fn primary_code(error: &sqlx::Error) -> Option<i64> {
    match error {
        sqlx::Error::Database(db) if pg_code(error).is_none() => {
            db.code()?.parse::<i64>().ok().map(|c| c & 0xff)
        }
        _ => None,
    }
}

/// Why the writer's connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The database refused or could not be reached.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Another netsyncd holds the PostgreSQL database's writer lock.
    #[error(
        "the database is in use by another netsyncd (it holds the writer lock, advisory lock \
         {PG_LOCK}); stop that one first, or give this one another --db (several netsyncd \
         share one database only as replicas: --replicas on every one of them)"
    )]
    InUse,
}

impl ConnectError {
    /// A short reason, fit for a datastore's status.
    fn describe(&self) -> String {
        match self {
            Self::Database(e) => describe_error(e),
            Self::InUse => "database in use by another netsyncd".into(),
        }
    }
}

/// Opens the writer's connection; on PostgreSQL, takes the writer lock.
async fn connect(options: &WriterOptions) -> Result<Conn, ConnectError> {
    match &options.connect {
        Connect::Sqlite(connect) => {
            let mut conn = SqliteConnection::connect_with(connect).await?;
            if let Some(pages) = options.max_page_count.get() {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "PRAGMA max_page_count = {pages}"
                )))
                .execute(&mut conn)
                .await?;
            }
            Ok(Conn::Sqlite(conn))
        }
        Connect::Postgres(connect) => {
            let mut conn = PgConnection::connect_with(connect).await?;
            // Replicas share the lock; one netsyncd alone holds it exclusive.
            let take = if options.fence.is_some() {
                "SELECT pg_try_advisory_lock_shared($1)"
            } else {
                "SELECT pg_try_advisory_lock($1)"
            };
            let locked: bool = sqlx::query_scalar(take)
                .bind(PG_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if !locked {
                let _ = conn.close().await;
                return Err(ConnectError::InUse);
            }
            Ok(Conn::Postgres(conn))
        }
    }
}

/// A short reason for a failed write, fit for a datastore's status.
fn describe_error(error: &sqlx::Error) -> String {
    if let Some(code) = pg_code(error) {
        return match code {
            "53100" => "disk full".into(),
            c if c.starts_with("53") => "database out of resources".into(),
            c if c.starts_with("08") || c.starts_with("57P") => "database connection lost".into(),
            "55P03" | "40P01" => "database locked by another process".into(),
            "25006" => "database is read-only".into(),
            "XX001" | "XX002" => "database damaged".into(),
            // PostgreSQL's own words stay in the log: this text reaches
            // clients through a datastore's status.
            _ => "database error (see the log)".into(),
        };
    }
    if let sqlx::Error::Database(_) = error {
        return match primary_code(error) {
            Some(13) => "disk full".into(),
            Some(5) | Some(6) => "database locked by another process".into(),
            Some(10) => "I/O error".into(),
            Some(11) | Some(26) => "database file damaged".into(),
            Some(8) => "database is read-only".into(),
            // SQLite's own words stay in the log: this text reaches clients
            // through a datastore's status.
            _ => "database error (see the log)".into(),
        };
    }
    match error {
        sqlx::Error::Io(_) => "I/O error (see the log)".into(),
        _ => "database error (see the log)".into(),
    }
}
