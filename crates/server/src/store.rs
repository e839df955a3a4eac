//! The store: the datastore registry and intents, opened, locked and
//! migrated at start, in a SQLite file (the default) or a PostgreSQL
//! database (see [`crate::db`]). Every write goes through the one
//! [`Writer`]; reads use a pool of read-only connections, which read while
//! the writer writes (SQLite's WAL mode; PostgreSQL's MVCC): a reader waits
//! behind no transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use netsync_core::datastore::DatastoreSpec;
use prost::Message;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::task::JoinHandle;

use crate::convert::{self, Secrets};
use crate::db::{Backend, Conn, Connect, Readers, on_conn, on_readers};
use crate::error::Error;
use crate::jobs::{self, Trigger};
use crate::notify::{self, Channel};
use crate::stored_time::{from_micros, to_micros};
use crate::writer::{ConnectError, Fence, PageLimit, Writer, WriterOptions};

/// How long a connection waits for SQLite's lock before failing. Only the
/// writer takes it, so this is waited only if another program holds it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL is truncated back to this size after a checkpoint, so that one
/// burst of writes does not keep its disk space for good.
const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;

/// Longest wait at shutdown for the writer to finish what it was given.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Read-only connections for API reads, WatchSync replay and metrics.
const READERS: u32 = 4;

/// SQL for a new datastore uid on SQLite: a random UUID (version 4 in form,
/// from SQLite's own random generator, which the OS seeds), evaluated once
/// per row. (On PostgreSQL: `gen_random_uuid()`, see [`PG_NEW_UID`].)
/// Generated in SQL so that CreateDatastore and the uids given at open to rows
/// stored without one come from one place, with no generator of our own. A
/// macro, so that the statements using it stay static strings.
macro_rules! new_uid {
    () => {
        "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || \
         substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || \
         substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
    };
}

/// SQL for a new datastore uid on PostgreSQL: a random (version 4) UUID from
/// its own generator, in the same text form as SQLite's.
macro_rules! pg_new_uid {
    () => {
        "gen_random_uuid()::text"
    };
}

/// The PostgreSQL form of a new uid, named for the docs of [`new_uid!`].
#[allow(dead_code, reason = "named for the documentation")]
const PG_NEW_UID: &str = pg_new_uid!();

/// A datastore as stored: its declaration, when it was created, and which
/// incarnation of its name it is.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDatastore {
    /// What the client declared (secrets included).
    pub spec: DatastoreSpec,
    /// When it was created.
    pub create_time: SystemTime,
    /// Its uid: new at every creation, stable for its life (see `new_uid!`).
    pub uid: String,
    /// Its labels (see [`crate::selector`]).
    pub labels: BTreeMap<String, String>,
}

/// A row of the datastore registry as read back: the datastore, or, when its
/// stored declaration cannot be used at all, what is still known of it. One
/// such row must not keep the others from being served: its datastore is shown
/// as STOPPED, with `reason` as its last error, until it is deleted.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every row is readable: boxing would cost each an allocation to shrink the rare other one"
)]
pub enum DatastoreRow {
    /// The declaration, read leniently ([`convert::datastore_from_stored`]).
    Readable(StoredDatastore),
    /// The declaration does not decode, or cannot be used even leniently.
    Unreadable {
        /// The row's name.
        name: String,
        /// When it was created.
        create_time: SystemTime,
        /// Its uid.
        uid: String,
        /// Why, as the datastore's status shows it (safe to show to clients).
        reason: String,
        /// The decoder's own words, for the log only.
        detail: String,
    },
}

/// Handle to the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    readers: Readers,
    writer: Writer,
    /// The writer task; ends when the last handle is dropped.
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    /// SQLite: held for the life of the process, so that a second netsyncd
    /// on this database is refused (see [`lock`]). PostgreSQL has none: the
    /// writer's connection holds an advisory lock instead
    /// ([`crate::writer::PG_LOCK`]).
    _lock: Option<Arc<File>>,
}

impl Store {
    /// Opens and migrates the database at `url`: a PostgreSQL database
    /// (`postgres://...`), or a SQLite file (`sqlite://PATH` or a plain path,
    /// created if missing, mode 0600). Refuses it if another netsyncd has it
    /// open.
    pub async fn open(url: &str) -> Result<Self, StoreOpenError> {
        Self::open_with(url, PageLimit::default()).await
    }

    /// [`Store::open`] with a test-only page limit on the writer (SQLite
    /// only; ignored on PostgreSQL).
    pub async fn open_with(url: &str, max_page_count: PageLimit) -> Result<Self, StoreOpenError> {
        Self::open_as(url, max_page_count, None).await
    }

    /// [`Store::open_with`], as one replica of several when `fence` is set
    /// (PostgreSQL only): the writer lock is shared, and owned datastores'
    /// writes are fenced (see [`crate::writer::Fence`]).
    pub async fn open_as(
        url: &str,
        max_page_count: PageLimit,
        fence: Option<Arc<Fence>>,
    ) -> Result<Self, StoreOpenError> {
        match Backend::of(url) {
            Backend::Sqlite => Self::open_sqlite(url, max_page_count).await,
            Backend::Postgres => Self::open_postgres(url, fence).await,
        }
    }

    async fn open_sqlite(url: &str, max_page_count: PageLimit) -> Result<Self, StoreOpenError> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let path = options.get_filename().to_path_buf();
        if path.as_os_str().is_empty() || path.to_str() == Some(":memory:") {
            return Err(StoreOpenError::NotAFile(url.to_string()));
        }
        let lock = lock(&path)?;
        create_private(&path)?;
        let options = options.busy_timeout(BUSY_TIMEOUT).foreign_keys(true);
        // The file exists now (created above, 0600): a reopen after a
        // failure must never create an empty database in its place.
        let writer_options = WriterOptions {
            connect: Connect::Sqlite(
                options
                    .clone()
                    .create_if_missing(false)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string()),
            ),
            max_page_count,
            fence: None,
        };
        let mut conn = Writer::connect(&writer_options).await?;
        let Conn::Sqlite(sqlite) = &mut conn else {
            unreachable!("SQLite options open a SQLite connection")
        };
        // `run_direct` on the connection itself: `run` goes through
        // `Acquire`, whose future rustc cannot prove `Send` for every lifetime.
        sqlx::migrate!("../../migrations")
            .run_direct(None, sqlite, false)
            .await
            .map_err(|e| StoreOpenError::Migrate(e.to_string()))?;
        give_uids(&mut conn).await?;
        let (writer, task) = Writer::start(writer_options, conn);
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            readers: Readers::Sqlite(readers),
            writer,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Opens a PostgreSQL database: the writer's connection (which takes the
    /// writer lock, refusing a database another netsyncd writes), the
    /// migrations of `migrations/postgres`, then the readers, whose sessions
    /// are read-only.
    async fn open_postgres(url: &str, fence: Option<Arc<Fence>>) -> Result<Self, StoreOpenError> {
        let options = Connect::postgres(url)?;
        let writer_options = WriterOptions {
            connect: Connect::Postgres(options.clone()),
            max_page_count: PageLimit::default(),
            fence,
        };
        let mut conn = Writer::connect(&writer_options).await?;
        let Conn::Postgres(pg) = &mut conn else {
            unreachable!("PostgreSQL options open a PostgreSQL connection")
        };
        sqlx::migrate!("../../migrations/postgres")
            .run_direct(None, pg, false)
            .await
            .map_err(|e| StoreOpenError::Migrate(e.to_string()))?;
        give_uids(&mut conn).await?;
        let (writer, task) = Writer::start(writer_options, conn);
        let readers = PgPoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.options([("default_transaction_read_only", "on")]))
            .await?;
        Ok(Self {
            readers: Readers::Postgres(readers),
            writer,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
            _lock: None,
        })
    }

    /// The writer every write goes through.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Stores a new datastore, created at `create_time`, with its labels and
    /// a new uid; returns it as stored. `AlreadyExists` if the name is taken.
    pub async fn create_datastore(
        &self,
        spec: DatastoreSpec,
        labels: BTreeMap<String, String>,
        create_time: SystemTime,
    ) -> Result<StoredDatastore, Error> {
        let mut stored = StoredDatastore {
            spec,
            create_time,
            uid: String::new(),
            labels,
        };
        let encoded = stored_form(&stored).encode_to_vec();
        let name = stored.spec.name.clone();
        // Replica mode: created with a free lease, which the replica it
        // belongs to (by rendezvous hashing) takes.
        let free_lease = self.writer.fence().is_some();
        stored.uid = self
            .writer
            .write(move |conn| {
                Box::pin(async move {
                    let insert = match conn.backend() {
                        Backend::Sqlite => concat!(
                            "INSERT INTO datastores (name, spec, create_time_us, uid) VALUES ($1, $2, $3, ",
                            new_uid!(),
                            ") ON CONFLICT (name) DO NOTHING RETURNING uid"
                        ),
                        Backend::Postgres => concat!(
                            "INSERT INTO datastores (name, spec, create_time_us, uid) VALUES ($1, $2, $3, ",
                            pg_new_uid!(),
                            ") ON CONFLICT (name) DO NOTHING RETURNING uid"
                        ),
                    };
                    let uid: Option<String> = on_conn!(conn, conn => {
                        sqlx::query_scalar(insert)
                            .bind(&name)
                            .bind(encoded)
                            .bind(to_micros(create_time))
                            .fetch_optional(&mut *conn)
                            .await?
                    });
                    let uid = uid.ok_or_else(|| Error::AlreadyExists {
                        kind: "datastore",
                        name: name.clone(),
                    })?;
                    if free_lease {
                        on_conn!(&mut *conn, conn => {
                            sqlx::query(
                                "INSERT INTO leases (datastore, owner, epoch, expires) \
                                 VALUES ($1, NULL, 0, CURRENT_TIMESTAMP)",
                            )
                            .bind(&name)
                            .execute(&mut *conn)
                            .await?;
                        });
                    }
                    datastore_changed(conn, &name).await?;
                    Ok(uid)
                })
            })
            .await?;
        Ok(stored)
    }

    /// Reads one registry row, even one whose declaration cannot be used;
    /// `NotFound` if there is none of that name.
    pub async fn get_datastore_row(&self, name: &str) -> Result<DatastoreRow, Error> {
        let row: Option<(Vec<u8>, i64, Option<String>)> = on_readers!(&self.readers, pool => {
            sqlx::query_as("SELECT spec, create_time_us, uid FROM datastores WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        let (spec, create_time_us, uid) = row.ok_or_else(|| Error::NotFound {
            kind: "datastore",
            name: name.to_string(),
        })?;
        Ok(read_row(name, &spec, create_time_us, uid))
    }

    /// The uid of datastore `name`, if there is one of that name (a row
    /// whose declaration cannot be used too).
    pub async fn datastore_uid(&self, name: &str) -> Result<Option<String>, Error> {
        let row: Option<(Option<String>,)> = on_readers!(&self.readers, pool => {
            sqlx::query_as("SELECT uid FROM datastores WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        // As `read_row` reads a row written before uids: "".
        Ok(row.map(|(uid,)| uid.unwrap_or_default()))
    }

    /// Reads every registry row, sorted by name; a row whose declaration
    /// cannot be used is listed too, as [`DatastoreRow::Unreadable`].
    pub async fn list_datastore_rows(&self) -> Result<Vec<DatastoreRow>, Error> {
        // Sorted here, not by the database: PostgreSQL sorts text by the
        // database's collation, SQLite by bytes, and the API lists by name
        // in byte order.
        let mut rows: Vec<(String, Vec<u8>, i64, Option<String>)> = on_readers!(&self.readers, pool => {
            sqlx::query_as("SELECT name, spec, create_time_us, uid FROM datastores")
                .fetch_all(pool)
                .await?
        });
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(rows
            .into_iter()
            .map(|(name, spec, create_time_us, uid)| read_row(&name, &spec, create_time_us, uid))
            .collect())
    }

    /// How many datastores the registry holds.
    pub async fn count_datastores(&self) -> Result<usize, Error> {
        let count: i64 = on_readers!(&self.readers, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM datastores")
                .fetch_one(pool)
                .await?
        });
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Replaces the declaration and labels of an existing datastore, in one
    /// write; `NotFound` if absent (deleted meanwhile). Running, the log and
    /// intents are not touched.
    pub async fn update_datastore(&self, ds: &StoredDatastore) -> Result<(), Error> {
        let spec = stored_form(ds).encode_to_vec();
        let name = ds.spec.name.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let updated = on_conn!(&mut *conn, conn => {
                        sqlx::query("UPDATE datastores SET spec = $1 WHERE name = $2")
                            .bind(spec)
                            .bind(&name)
                            .execute(&mut *conn)
                            .await?
                            .rows_affected()
                    });
                    if updated == 0 {
                        return Err(Error::NotFound {
                            kind: "datastore",
                            name,
                        });
                    }
                    datastore_changed(conn, &name).await?;
                    Ok(())
                })
            })
            .await
    }

    /// Removes a datastore and everything stored for it; `NotFound` if absent.
    pub async fn delete_datastore(&self, name: &str) -> Result<(), Error> {
        let name = name.to_string();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let deleted = on_conn!(&mut *conn, conn => {
                        sqlx::query("DELETE FROM datastores WHERE name = $1")
                            .bind(&name)
                            .execute(&mut *conn)
                            .await?
                            .rows_affected()
                    });
                    if deleted == 0 {
                        return Err(Error::NotFound {
                            kind: "datastore",
                            name,
                        });
                    }
                    datastore_changed(conn, &name).await?;
                    Ok(())
                })
            })
            .await
    }

    /// Creates or replaces `intent` of `datastore` and queues the job that
    /// applies it, in one transaction; returns whether a new job was queued
    /// (rather than merged into a queued one) and the intent as stored.
    /// The leaves the previous version set and this one does not leave the
    /// device in the same job (unless another intent provides them, as on
    /// DeleteIntent): those of the previous version as stored, read in the
    /// transaction and checked against `spec` (a stored intent today's
    /// validation refuses was never sent, so withdraws nothing), and
    /// `dropped_in_memory`, those of the version the caller's sync holds.
    /// `stamp`: the intent's revision is the newest committed in the
    /// database, read in the transaction (a replica that does not sync the
    /// datastore has no running of its own to take it from). Writes nothing
    /// unless the datastore is still the incarnation `uid` (see
    /// [`check_uid`]). In replica mode the owner is told (see
    /// [`hand_off_intents`]).
    pub async fn put_intent(
        &self,
        datastore: &str,
        uid: &str,
        intent: &netsync_core::intent::Intent,
        spec: &DatastoreSpec,
        dropped_in_memory: Vec<netsync_core::running::Key>,
        stamp: bool,
    ) -> Result<(bool, netsync_core::intent::Intent), Error> {
        let (datastore, mut intent) = (datastore.to_string(), intent.clone());
        let (uid, spec) = (uid.to_string(), spec.clone());
        let replicated = self.writer.fence().is_some();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    check_uid(conn, &datastore, &uid).await?;
                    if replicated {
                        hand_off_intents(conn, &datastore).await?;
                    }
                    let previous = stored_intent(conn, &datastore, &intent.name, false).await?;
                    if stamp {
                        let newest: Option<i64> = on_conn!(&mut *conn, conn => {
                            sqlx::query_scalar("SELECT MAX(revision) FROM commits WHERE datastore = $1")
                                .bind(&datastore)
                                .fetch_one(&mut *conn)
                                .await?
                        });
                        intent.revision = newest.map_or(0, |r| r as u64);
                    }
                    let mut dropped: BTreeSet<_> = dropped_in_memory.into_iter().collect();
                    dropped.extend(usable_leaves(previous.as_deref(), &spec));
                    dropped.retain(|k| !intent.updates.contains_key(k));
                    let body = convert::intent_to_proto(&intent).encode_to_vec();
                    on_conn!(&mut *conn, conn => {
                        sqlx::query(
                            "INSERT INTO intents (datastore, name, body) VALUES ($1, $2, $3) \
                             ON CONFLICT (datastore, name) DO UPDATE SET body = excluded.body",
                        )
                        .bind(&datastore)
                        .bind(&intent.name)
                        .bind(body)
                        .execute(&mut *conn)
                        .await?;
                    });
                    // Through the reconcile queue, even when non-revertive.
                    let mut created =
                        jobs::enqueue(conn, &datastore, &Trigger::Apply(intent.name.clone())).await?;
                    if !dropped.is_empty() {
                        let withdraw = Trigger::Withdraw(dropped.into_iter().collect());
                        created |= jobs::enqueue(conn, &datastore, &withdraw).await?;
                    }
                    Ok((created, intent))
                })
            })
            .await
    }

    /// Deletes an intent and queues the job that withdraws its leaves, in one
    /// transaction; returns whether a new job was queued. `in_memory` says
    /// whether the caller's sync holds the intent, `withdrawn` are the leaves
    /// it holds for it: an intent held in only one of the two places is still
    /// deleted (and its leaves, from either, withdrawn), so that the store and
    /// the engine agree again. `NotFound` only when neither holds it. The
    /// stored row's leaves are withdrawn if it passes today's validation
    /// against `spec` (one that does not was never sent to the device by
    /// this netsync: deleting it sends nothing either). Deletes nothing
    /// unless the datastore is still the incarnation `uid` (see
    /// [`check_uid`]). In replica mode the owner is told (see
    /// [`hand_off_intents`]).
    pub async fn delete_intent(
        &self,
        datastore: &str,
        uid: &str,
        name: &str,
        spec: &DatastoreSpec,
        in_memory: bool,
        withdrawn: Vec<netsync_core::running::Key>,
    ) -> Result<bool, Error> {
        let (datastore, name) = (datastore.to_string(), name.to_string());
        let (uid, spec) = (uid.to_string(), spec.clone());
        let replicated = self.writer.fence().is_some();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    check_uid(conn, &datastore, &uid).await?;
                    if replicated {
                        hand_off_intents(conn, &datastore).await?;
                    }
                    let body = stored_intent(conn, &datastore, &name, true).await?;
                    if body.is_none() && !in_memory {
                        return Err(Error::NotFound {
                            kind: "intent",
                            name,
                        });
                    }
                    let mut withdrawn: BTreeSet<_> = withdrawn.into_iter().collect();
                    // The stored leaves too, when the engine lost them.
                    withdrawn.extend(usable_leaves(body.as_deref(), &spec));
                    let trigger = Trigger::Withdraw(withdrawn.into_iter().collect());
                    jobs::enqueue(conn, &datastore, &trigger).await
                })
            })
            .await
    }

    /// Asks the owner of `datastore` (another replica) to resync it: a
    /// counter it compares with the resyncs it did, so the request survives
    /// a lost notification and a change of owner (see [`crate::handoff`]).
    /// Asks nothing unless the datastore is still the incarnation `uid`.
    pub async fn hand_off_resync(&self, datastore: &str, uid: &str) -> Result<(), Error> {
        let (datastore, uid) = (datastore.to_string(), uid.to_string());
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    check_uid(conn, &datastore, &uid).await?;
                    let Conn::Postgres(pg) = conn else {
                        return Ok(());
                    };
                    sqlx::query(
                        "INSERT INTO handoffs (datastore, resyncs) VALUES ($1, 1) \
                         ON CONFLICT (datastore) DO UPDATE SET resyncs = handoffs.resyncs + 1",
                    )
                    .bind(&datastore)
                    .execute(&mut *pg)
                    .await?;
                    notify::send(pg, Channel::Intents, &[&datastore]).await?;
                    Ok(())
                })
            })
            .await
    }

    /// Every intent of `datastore` as stored, sorted by name, each named by
    /// its row. Only bytes that do not decode are an error (`Damaged`):
    /// what an intent means is checked by the engine against its datastore
    /// (see [`crate::engine::Engine::start`]), which keeps one that today's
    /// validation refuses visible instead of failing the datastore.
    pub async fn list_intents(
        &self,
        datastore: &str,
    ) -> Result<Vec<netsync_proto::netsync::v1::Intent>, Error> {
        // Sorted here (byte order), as datastores are: see
        // `list_datastore_rows`.
        let mut rows: Vec<(String, Vec<u8>)> = on_readers!(&self.readers, pool => {
            sqlx::query_as("SELECT name, body FROM intents WHERE datastore = $1")
                .bind(datastore)
                .fetch_all(pool)
                .await?
        });
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter()
            .map(|(name, body)| decode_intent(datastore, name, &body))
            .collect()
    }

    /// The read-only connections, for the other tables' code.
    pub fn readers(&self) -> &Readers {
        &self.readers
    }

    /// Closes the readers, then waits for the writer to finish what it was
    /// given and to close its connection (checkpointing the WAL). Writes
    /// through handles still held elsewhere fail from now on.
    pub async fn close(&self) {
        self.readers.close().await;
        let task = self.task.lock().expect("lock").take();
        if let Some(task) = task {
            self.writer.close();
            // Bounded: storage that hangs (a stuck fsync) must not keep the
            // process from exiting; nothing acknowledged depends on it.
            if tokio::time::timeout(CLOSE_GRACE, task).await.is_err() {
                tracing::warn!(grace = ?CLOSE_GRACE, "the database writer did not finish in time; exiting without it");
            }
        }
    }
}

/// The stored intent row `name` of `datastore` (its `body`), named by its
/// row; `Damaged` if the bytes do not decode.
pub fn decode_intent(
    datastore: &str,
    name: String,
    body: &[u8],
) -> Result<netsync_proto::netsync::v1::Intent, Error> {
    let mut proto =
        netsync_proto::netsync::v1::Intent::decode(body).map_err(|e| Error::Damaged {
            datastore: datastore.to_string(),
            what: format!("intent {name:?} is damaged"),
            detail: e.to_string(),
        })?;
    // The row's name is the one GetIntent and DeleteIntent find.
    proto.name = name;
    Ok(proto)
}

/// Takes an exclusive lock on `PATH.lock` for the life of the process, so
/// that a second netsyncd on the same database refuses to start instead of
/// writing beside the first (two writers would each believe they own the
/// revision numbers). The lock is the kernel's (`flock`): it goes with the
/// process, even after kill -9.
fn lock(db: &Path) -> Result<File, StoreOpenError> {
    let mut path = db.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreOpenError::Lock(path.clone(), e.to_string()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreOpenError::InUse(db.to_path_buf())),
        Err(e) => Err(StoreOpenError::Lock(path, e.to_string())),
    }
}

/// Creates the database file readable and writable by its owner only (it
/// holds device credentials), or narrows an existing file to that. SQLite
/// gives its -wal and -shm files the database file's mode.
fn create_private(db: &Path) -> Result<(), StoreOpenError> {
    let denied = |e: std::io::Error| StoreOpenError::Lock(db.to_path_buf(), e.to_string());
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(db)
        .map_err(denied)?;
    let mode = file.metadata().map_err(denied)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(db = %db.display(), mode = format!("{:o}", mode & 0o777), "the database file was readable by others; narrowing it to 0600");
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(denied)?;
    }
    Ok(())
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// Opening or connecting failed.
    #[error("cannot open the database: {0}")]
    Open(#[from] sqlx::Error),
    /// The writer's connection could not be opened, or another netsyncd
    /// writes the PostgreSQL database.
    #[error("cannot open the database: {0}")]
    Connect(#[from] ConnectError),
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(String),
    /// The URL names no file.
    #[error("the database must be a file (sqlite://PATH or PATH), not {0:?}")]
    NotAFile(String),
    /// Another process holds the database.
    #[error(
        "the database {} is in use by another netsyncd (it holds {}.lock); \
         stop that one first, or give this one another --db",
        .0.display(), .0.display()
    )]
    InUse(PathBuf),
    /// The database or its lock file cannot be created or locked.
    #[error("cannot create or lock {}: {}", .0.display(), .1)]
    Lock(PathBuf, String),
}

/// PostgreSQL: notifies the other replicas, inside the write's transaction,
/// that datastore `name` was created, updated or deleted (their watches of
/// many datastores look at the registry again). Nothing on SQLite, which
/// one process serves.
async fn datastore_changed(conn: &mut Conn, name: &str) -> Result<(), Error> {
    if let Conn::Postgres(pg) = conn {
        crate::notify::send(pg, crate::notify::Channel::Datastores, &[name]).await?;
    }
    Ok(())
}

/// The FAILED_PRECONDITION error for a request meant for incarnation
/// `expected` of `datastore`, which is `current` now. Both uids are named, so
/// a client can tell which history it holds.
pub fn uid_mismatch(datastore: &str, current: &str, expected: &str) -> Error {
    Error::FailedPrecondition(format!(
        "datastore {datastore:?} has uid {current:?}, not {expected:?} (the uid this request is \
         for): it was deleted and created again since, and its revisions started over at 1; \
         read it again (GetDatastore, GetRunning) before watching or writing"
    ))
}

/// Checks, inside an intent write's transaction, that `datastore` is still
/// the incarnation `uid` the write was checked and planned against (the sync
/// whose intents it changes): a datastore deleted and created again in
/// between would otherwise get the old one's intent and job.
async fn check_uid(conn: &mut Conn, datastore: &str, uid: &str) -> Result<(), Error> {
    let stored: Option<Option<String>> = on_conn!(conn, conn => {
        sqlx::query_scalar("SELECT uid FROM datastores WHERE name = $1")
            .bind(datastore)
            .fetch_optional(&mut *conn)
            .await?
    });
    match stored {
        None => Err(Error::NotFound {
            kind: "datastore",
            name: datastore.to_string(),
        }),
        Some(stored) if stored.as_deref() != Some(uid) => Err(uid_mismatch(
            datastore,
            stored.as_deref().unwrap_or_default(),
            uid,
        )),
        Some(_) => Ok(()),
    }
}

/// In replica mode, first thing in an intent write's transaction (after
/// [`check_uid`]): moves the datastore's `handoffs.intents` counter and
/// notifies [`Channel::Intents`] at commit, so that its owner reloads its
/// intents (see [`crate::handoff`]). The counter's row lock, held until the
/// commit, also makes the intent writes of one datastore, from every
/// replica, one at a time: each reads the previous version of its intent
/// only after the one before it committed.
async fn hand_off_intents(conn: &mut Conn, datastore: &str) -> Result<(), Error> {
    let Conn::Postgres(pg) = conn else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO handoffs (datastore, intents) VALUES ($1, 1) \
         ON CONFLICT (datastore) DO UPDATE SET intents = handoffs.intents + 1",
    )
    .bind(datastore)
    .execute(&mut *pg)
    .await?;
    notify::send(pg, Channel::Intents, &[datastore]).await?;
    Ok(())
}

/// The stored body of intent `name` of `datastore`, if any, inside a
/// write's transaction; `delete`: the row is deleted too.
async fn stored_intent(
    conn: &mut Conn,
    datastore: &str,
    name: &str,
    delete: bool,
) -> Result<Option<Vec<u8>>, Error> {
    let query = if delete {
        "DELETE FROM intents WHERE datastore = $1 AND name = $2 RETURNING body"
    } else {
        "SELECT body FROM intents WHERE datastore = $1 AND name = $2"
    };
    Ok(on_conn!(conn, conn => {
        sqlx::query_scalar(query)
            .bind(datastore)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?
    }))
}

/// The leaves a stored intent body sets, if it passes today's validation
/// against `spec`; none otherwise (it was never sent to the device).
fn usable_leaves(body: Option<&[u8]>, spec: &DatastoreSpec) -> Vec<netsync_core::running::Key> {
    body.and_then(|body| netsync_proto::netsync::v1::Intent::decode(body).ok())
        .and_then(|proto| convert::intent_for_datastore(proto, "stored", spec).ok())
        .map(|intent| intent.updates.into_keys().collect())
        .unwrap_or_default()
}

/// Gives every datastore row without a uid (stored before uids existed, or
/// written by hand) a new one, once: from then on it is stored, so it stays
/// the same across restarts. A random uid rather than one derived from the
/// name and creation time, so that every uid has one form and one meaning
/// (an incarnation), whoever wrote the row.
async fn give_uids(conn: &mut Conn) -> Result<(), StoreOpenError> {
    let update = match conn.backend() {
        Backend::Sqlite => concat!(
            "UPDATE datastores SET uid = ",
            new_uid!(),
            " WHERE uid IS NULL OR uid = ''"
        ),
        Backend::Postgres => concat!(
            "UPDATE datastores SET uid = ",
            pg_new_uid!(),
            " WHERE uid IS NULL OR uid = ''"
        ),
    };
    let given = on_conn!(conn, conn => {
        sqlx::query(update).execute(&mut *conn).await?.rows_affected()
    });
    if given > 0 {
        tracing::info!(
            datastores = given,
            "gave a uid to datastores stored without one"
        );
    }
    Ok(())
}

/// Reads a registry row leniently (see [`convert::datastore_from_stored`]);
/// its columns were read already (a row whose columns cannot be read at all
/// failed there).
fn read_row(name: &str, bytes: &[u8], create_time_us: i64, uid: Option<String>) -> DatastoreRow {
    let create_time = from_micros(create_time_us);
    // Never empty: rows without one got one at open, and only this process
    // writes the table while it runs.
    let uid: String = uid.unwrap_or_default();
    let unreadable = |reason: String, detail: String| DatastoreRow::Unreadable {
        name: name.to_string(),
        create_time,
        uid: uid.clone(),
        reason,
        detail,
    };
    let mut proto = match netsync_proto::netsync::v1::Datastore::decode(bytes) {
        Ok(proto) => proto,
        Err(e) => {
            return unreadable(
                "cannot load the stored datastore: its declaration is damaged".into(),
                e.to_string(),
            );
        }
    };
    // The row's key is the name every other table refers to; the copy in the
    // declaration is not read.
    proto.name = name.to_string();
    let labels = std::mem::take(&mut proto.labels).into_iter().collect();
    match convert::datastore_from_stored(proto) {
        Ok(spec) => DatastoreRow::Readable(StoredDatastore {
            spec,
            create_time,
            uid,
            labels,
        }),
        Err(e) => unreadable(
            format!("cannot load the stored datastore: its declaration cannot be used: {e}"),
            e.to_string(),
        ),
    }
}

/// The stored form of a datastore: its declaration with secrets, and its
/// labels (the create time has a column of its own).
fn stored_form(ds: &StoredDatastore) -> netsync_proto::netsync::v1::Datastore {
    let mut proto = convert::datastore_to_proto(&ds.spec, Secrets::Keep);
    proto.labels = ds.labels.clone().into_iter().collect();
    proto
}

/// The current time at the precision the store keeps (microseconds), so that
/// what a create returns equals what later reads return.
pub fn now() -> SystemTime {
    from_micros(to_micros(SystemTime::now()))
}
