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
                let corrupt =
                    |d: String| Error::Corrupt(format!("intent {name:?} of {datastore:?}: {d}"));
                let body: &[u8] = row.try_get("body")?;
                let proto = netsync_proto::netsync::v1::Intent::decode(body)
                    .map_err(|e| corrupt(e.to_string()))?;
                convert::intent_from_proto(proto, "stored").map_err(|e| corrupt(e.to_string()))
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
    let bytes: &[u8] = row.try_get("spec")?;
    let corrupt = |detail: String| Error::Corrupt(format!("datastore {name:?}: {detail}"));
    let proto =
        netsync_proto::netsync::v1::Datastore::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    // Read leniently: a stricter validation in a later release must not make
    // an old row unloadable.
    let spec = convert::datastore_from_stored(proto).map_err(|e| corrupt(e.to_string()))?;
    let micros: i64 = row.try_get("create_time_us")?;
    Ok(StoredDatastore {
        spec,
        create_time: from_micros(micros),
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
