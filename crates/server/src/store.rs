//! The SQLite store: the datastore registry, opened and migrated at start.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netsync_core::datastore::DatastoreSpec;
use prost::Message;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::convert::{self, Secrets};
use crate::error::Error;

/// How long a writer waits for SQLite's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A datastore as stored: its declaration and when it was created.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDatastore {
    /// What the client declared (secrets included).
    pub spec: DatastoreSpec,
    /// When it was created.
    pub create_time: SystemTime,
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
        /// Why, as the datastore's status shows it (safe to show to clients).
        reason: String,
        /// The decoder's own words, for the log only.
        detail: String,
    },
}

/// Handle to the SQLite database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) and migrates the database at `url`, which is
    /// either `sqlite://PATH`, `sqlite::memory:`, or a plain file path.
    pub async fn open(url: &str) -> Result<Self, StoreOpenError> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../../migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Stores a new datastore; `AlreadyExists` if the name is taken.
    pub async fn create_datastore(&self, ds: &StoredDatastore) -> Result<(), Error> {
        let spec = convert::datastore_to_proto(&ds.spec, Secrets::Keep).encode_to_vec();
        let done = sqlx::query(
            "INSERT INTO datastores (name, spec, create_time_us) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&ds.spec.name)
        .bind(spec)
        .bind(to_micros(ds.create_time))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::AlreadyExists {
                kind: "datastore",
                name: ds.spec.name.clone(),
            });
        }
        Ok(())
    }

    /// Reads one datastore; `NotFound` if there is none of that name.
    pub async fn get_datastore(&self, name: &str) -> Result<StoredDatastore, Error> {
        let row = sqlx::query("SELECT spec, create_time_us FROM datastores WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "datastore",
                name: name.to_string(),
            })?;
        decode_row(name, &row)
    }

    /// Reads every datastore, sorted by name.
    pub async fn list_datastores(&self) -> Result<Vec<StoredDatastore>, Error> {
        let rows = sqlx::query("SELECT name, spec, create_time_us FROM datastores ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| decode_row(row.get::<&str, _>("name"), row))
            .collect()
    }

    /// Reads one registry row, even one whose declaration cannot be used;
    /// `NotFound` if there is none of that name.
    pub async fn get_datastore_row(&self, name: &str) -> Result<DatastoreRow, Error> {
        let row = sqlx::query("SELECT spec, create_time_us FROM datastores WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "datastore",
                name: name.to_string(),
            })?;
        read_row(name, &row)
    }

    /// Reads every registry row, sorted by name; a row whose declaration
    /// cannot be used is listed too, as [`DatastoreRow::Unreadable`].
    pub async fn list_datastore_rows(&self) -> Result<Vec<DatastoreRow>, Error> {
        let rows = sqlx::query("SELECT name, spec, create_time_us FROM datastores ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| read_row(row.try_get("name")?, row))
            .collect()
    }

    /// Removes a datastore and everything stored for it; `NotFound` if absent.
    pub async fn delete_datastore(&self, name: &str) -> Result<(), Error> {
        let done = sqlx::query("DELETE FROM datastores WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound {
                kind: "datastore",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Creates or replaces an intent of `datastore`.
    pub async fn put_intent(
        &self,
        datastore: &str,
        intent: &netsync_core::intent::Intent,
    ) -> Result<(), Error> {
        let body = convert::intent_to_proto(intent).encode_to_vec();
        sqlx::query(
            "INSERT INTO intents (datastore, name, body) VALUES (?, ?, ?) \
             ON CONFLICT (datastore, name) DO UPDATE SET body = excluded.body",
        )
        .bind(datastore)
        .bind(&intent.name)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes an intent; `NotFound` if it does not exist.
    pub async fn delete_intent(&self, datastore: &str, name: &str) -> Result<(), Error> {
        let done = sqlx::query("DELETE FROM intents WHERE datastore = ? AND name = ?")
            .bind(datastore)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound {
                kind: "intent",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Every intent of `datastore`.
    pub async fn list_intents(
        &self,
        datastore: &str,
    ) -> Result<Vec<netsync_core::intent::Intent>, Error> {
        let rows = sqlx::query("SELECT name, body FROM intents WHERE datastore = ? ORDER BY name")
            .bind(datastore)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let name: &str = row.try_get("name")?;
                let damaged = |what: String, detail: String| Error::Damaged {
                    datastore: datastore.to_string(),
                    what,
                    detail,
                };
                let body: &[u8] = row.try_get("body")?;
                let proto = netsync_proto::netsync::v1::Intent::decode(body)
                    .map_err(|e| damaged(format!("intent {name:?} is damaged"), e.to_string()))?;
                convert::intent_from_proto(proto, "stored").map_err(|e| {
                    damaged(
                        format!("intent {name:?} cannot be used: {e}"),
                        e.to_string(),
                    )
                })
            })
            .collect()
    }

    /// The connection pool, for the other tables' code.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Waits for open connections to finish and closes the database cleanly
    /// (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// Opening or connecting failed.
    #[error("cannot open the database: {0}")]
    Open(#[from] sqlx::Error),
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn decode_row(name: &str, row: &sqlx::sqlite::SqliteRow) -> Result<StoredDatastore, Error> {
    match read_row(name, row)? {
        DatastoreRow::Readable(ds) => Ok(ds),
        DatastoreRow::Unreadable { reason, .. } => {
            Err(Error::Corrupt(format!("datastore {name:?}: {reason}")))
        }
    }
}

/// Reads a registry row leniently (see [`convert::datastore_from_stored`]):
/// only a row whose columns cannot be read at all is an error.
fn read_row(name: &str, row: &sqlx::sqlite::SqliteRow) -> Result<DatastoreRow, Error> {
    let bytes: &[u8] = row.try_get("spec")?;
    let create_time = from_micros(row.try_get("create_time_us")?);
    let unreadable = |reason: String, detail: String| DatastoreRow::Unreadable {
        name: name.to_string(),
        create_time,
        reason,
        detail,
    };
    let mut proto = match netsync_proto::netsync::v1::Datastore::decode(bytes) {
        Ok(proto) => proto,
        Err(e) => {
            return Ok(unreadable(
                "cannot load the stored datastore: its declaration is damaged".into(),
                e.to_string(),
            ));
        }
    };
    // The row's key is the name every other table refers to; the copy in the
    // declaration is not read.
    proto.name = name.to_string();
    Ok(match convert::datastore_from_stored(proto) {
        Ok(spec) => DatastoreRow::Readable(StoredDatastore { spec, create_time }),
        Err(e) => unreadable(
            format!("cannot load the stored datastore: its declaration cannot be used: {e}"),
            e.to_string(),
        ),
    })
}

/// The current time at the precision the store keeps (microseconds), so that
/// what a create returns equals what later reads return.
pub fn now() -> SystemTime {
    from_micros(to_micros(SystemTime::now()))
}

/// Microseconds since the epoch, as stored.
pub fn to_micros(t: SystemTime) -> i64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// A stored microsecond time.
pub fn from_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}
