//! Running on disk: the per-commit change log and the snapshots that bound
//! restart work, in the same SQLite database as the registry.
//!
//! A commit is one transaction: its log row and, when due, a snapshot of the
//! whole running. A snapshot is due once the changes logged since the last one
//! outnumber twice the leaves of running (so restart replays at most about
//! twice a snapshot's worth), which also keeps the first full dump from being
//! written twice. The log keeps at least `retain_commits` commits and at least
//! `retain_age`; older rows are compacted away, but never past the newest
//! snapshot, which restart needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use netsync_core::running::{Change, ChangeBuilder, Running, RunningBuilder};
use netsync_core::sync::{Committed, Persist, Snapshot};
use netsync_proto::netsync::v1 as pb;
use sqlx::Row;

use crate::error::Error;
use crate::store::{Store, from_micros, to_micros};

/// How long and how much of the change log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At least this many newest commits.
    pub commits: u64,
    /// At least the commits of this long ago.
    pub age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            commits: 10_000,
            age: Duration::from_secs(3600),
        }
    }
}

/// One logged commit, as WatchSync replays it.
#[derive(Debug, Clone)]
pub struct LoggedCommit {
    /// Its revision.
    pub revision: u64,
    /// When it was made.
    pub time: SystemTime,
    /// Whether it was a replace.
    pub replace: bool,
    /// Its net change.
    pub change: Change,
}

/// Writes commits of every datastore to the store. One per process.
#[derive(Debug)]
pub struct CommitLog {
    store: Store,
    retention: Retention,
    /// Leaf changes logged since each datastore's last snapshot.
    since_snapshot: Mutex<HashMap<String, u64>>,
}

impl CommitLog {
    /// A log writing to `store`.
    pub fn new(store: Store, retention: Retention) -> Arc<Self> {
        Arc::new(Self {
            store,
            retention,
            since_snapshot: Mutex::new(HashMap::new()),
        })
    }

    async fn write(&self, datastore: &str, commit: Committed<'_>) -> Result<(), Error> {
        let changed = (commit.change.update_count() + commit.change.delete_count()) as u64;
        let since = {
            let mut map = self.since_snapshot.lock().expect("lock");
            let entry = map.entry(datastore.to_string()).or_insert(0);
            *entry += changed;
            *entry
        };
        let snapshot_due = since > 2 * commit.running.len() as u64 + 1000;
        let body = encode_commit(commit.replace, commit.change);
        let snapshot = snapshot_due.then(|| encode_snapshot(commit.revision, commit.running));
        let time_us = to_micros(commit.time);
        let revision = i64::try_from(commit.revision).unwrap_or(i64::MAX);

        let mut tx = self.store.pool().begin().await?;
        sqlx::query("INSERT INTO commits (datastore, revision, time_us, replace, body) VALUES (?, ?, ?, ?, ?)")
            .bind(datastore)
            .bind(revision)
            .bind(time_us)
            .bind(commit.replace)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        if let Some(snapshot) = snapshot {
            sqlx::query(
                "INSERT INTO snapshots (datastore, revision, time_us, body) VALUES (?, ?, ?, ?)",
            )
            .bind(datastore)
            .bind(revision)
            .bind(time_us)
            .bind(snapshot)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM snapshots WHERE datastore = ? AND revision < ?")
                .bind(datastore)
                .bind(revision)
                .execute(&mut *tx)
                .await?;
            let keep_after = revision - i64::try_from(self.retention.commits).unwrap_or(i64::MAX);
            let old = to_micros(
                commit
                    .time
                    .checked_sub(self.retention.age)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            );
            // Only a prefix of the log goes, so what is kept has no holes even
            // if the wall clock stepped back: everything below the oldest
            // commit that is young enough, below the retained count, and at or
            // below the snapshot just written.
            sqlx::query(
                "DELETE FROM commits WHERE datastore = ? AND revision <= ? AND revision <= ? \
                 AND revision < COALESCE( \
                     (SELECT MIN(revision) FROM commits WHERE datastore = ? AND time_us >= ?), ?)",
            )
            .bind(datastore)
            .bind(keep_after)
            .bind(revision)
            .bind(datastore)
            .bind(old)
            .bind(revision + 1)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if snapshot_due {
            self.since_snapshot
                .lock()
                .expect("lock")
                .insert(datastore.to_string(), 0);
        }
        Ok(())
    }

    /// Forgets a deleted datastore's counters.
    pub fn forget(&self, datastore: &str) {
        self.since_snapshot.lock().expect("lock").remove(datastore);
    }

    /// Loads running at its last committed revision: the newest snapshot, then
    /// the log after it.
    pub async fn load(&self, datastore: &str) -> Result<Snapshot, Error> {
        let corrupt = |what: String| Error::Corrupt(format!("datastore {datastore:?}: {what}"));
        let snapshot = sqlx::query("SELECT revision, time_us, body FROM snapshots WHERE datastore = ? ORDER BY revision DESC LIMIT 1")
            .bind(datastore)
            .fetch_optional(self.store.pool())
            .await?;
        let (mut running, mut revision, mut time) = match snapshot {
            Some(row) => {
                let body: Vec<u8> = row.try_get("body")?;
                let running = decode_snapshot(&body).map_err(corrupt)?;
                let revision: i64 = row.try_get("revision")?;
                let time: i64 = row.try_get("time_us")?;
                (running, revision as u64, Some(from_micros(time)))
            }
            None => (Running::new(), 0, None),
        };
        let mut replayed = 0u64;
        let mut after = revision;
        loop {
            let batch = self.read(datastore, after + 1, 256).await?;
            let Some(last) = batch.last() else { break };
            after = last.revision;
            for commit in batch {
                if commit.revision != revision + 1 {
                    return Err(corrupt(format!(
                        "change log jumps from revision {revision} to {}",
                        commit.revision
                    )));
                }
                running.apply_change(&commit.change);
                replayed += (commit.change.update_count() + commit.change.delete_count()) as u64;
                revision = commit.revision;
                time = Some(commit.time);
            }
        }
        self.since_snapshot
            .lock()
            .expect("lock")
            .insert(datastore.to_string(), replayed);
        Ok(Snapshot {
            revision,
            time,
            running,
        })
    }

    /// Up to `limit` logged commits from revision `from` on, in order.
    pub async fn read(
        &self,
        datastore: &str,
        from: u64,
        limit: u32,
    ) -> Result<Vec<LoggedCommit>, Error> {
        let rows = sqlx::query(
            "SELECT revision, time_us, replace, body FROM commits WHERE datastore = ? AND revision >= ? ORDER BY revision LIMIT ?",
        )
        .bind(datastore)
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let revision: i64 = row.try_get("revision")?;
                let corrupt = |what: String| {
                    Error::Corrupt(format!(
                        "datastore {datastore:?} revision {revision}: {what}"
                    ))
                };
                let body: Vec<u8> = row.try_get("body")?;
                let change = decode_commit(&body).map_err(corrupt)?;
                Ok(LoggedCommit {
                    revision: revision as u64,
                    time: from_micros(row.try_get("time_us")?),
                    replace: row.try_get("replace")?,
                    change,
                })
            })
            .collect()
    }

    /// The oldest revision still in the log, if any.
    pub async fn oldest(&self, datastore: &str) -> Result<Option<u64>, Error> {
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(revision) FROM commits WHERE datastore = ?")
                .bind(datastore)
                .fetch_one(self.store.pool())
                .await?;
        Ok(oldest.map(|r| r as u64))
    }
}

impl Persist for CommitLog {
    fn persist<'a>(
        &'a self,
        datastore: &'a str,
        commit: Committed<'a>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.write(datastore, commit).await.map_err(|e| {
                tracing::error!(datastore, error = %e, "cannot persist a commit");
                e.to_string()
            })
        })
    }
}

/// A commit's net change as the API's `Commit` message.
pub fn change_to_proto(replace: bool, change: &Change) -> pb::Commit {
    pb::Commit {
        replace,
        updates: change
            .updates()
            .map(|(path, value)| pb::Leaf {
                path,
                value: Some(value),
            })
            .collect(),
        deletes: change.deletes().collect(),
    }
}

// Log bodies are the API's messages (`Commit` for a commit, `GetRunningResponse`
// for a snapshot) in protobuf encoding, compressed as one LZ4 frame. They are
// written and read field by field straight from and into running's compact
// form: values are stored encoded, so they are copied as bytes, and a
// million-leaf body never exists as a million message structs.

/// Protobuf field numbers of the messages the log stores.
mod field {
    pub const COMMIT_REPLACE: u32 = 1;
    pub const COMMIT_UPDATES: u32 = 2;
    pub const COMMIT_DELETES: u32 = 3;
    pub const SNAPSHOT_REVISION: u32 = 1;
    pub const SNAPSHOT_LEAVES: u32 = 2;
    pub const LEAF_PATH: u32 = 1;
    pub const LEAF_VALUE: u32 = 2;
}

const VARINT: u32 = 0;
const LEN: u32 = 2;

fn encode_commit(replace: bool, change: &Change) -> Vec<u8> {
    let mut out = FrameWriter::new();
    if replace {
        out.varint_field(field::COMMIT_REPLACE, 1);
    }
    change.for_each_update_encoded(|path, value| out.leaf(field::COMMIT_UPDATES, path, value));
    change.for_each_delete(|path| out.bytes_field(field::COMMIT_DELETES, path.as_bytes()));
    out.finish()
}

fn encode_snapshot(revision: u64, running: &Running) -> Vec<u8> {
    let mut out = FrameWriter::new();
    out.varint_field(field::SNAPSHOT_REVISION, revision);
    running.for_each_encoded(|path, value| out.leaf(field::SNAPSHOT_LEAVES, path, value));
    out.finish()
}

fn decode_commit(body: &[u8]) -> Result<Change, String> {
    let bytes = decompress(body)?;
    let mut change = ChangeBuilder::new();
    let mut reader = Reader::new(&bytes);
    while let Some((number, value)) = reader.field()? {
        match (number, value) {
            (field::COMMIT_UPDATES, Field::Bytes(leaf)) => {
                let (path, value) = read_leaf(leaf)?;
                change.update(path, value).map_err(|e| e.to_string())?;
            }
            (field::COMMIT_DELETES, Field::Bytes(path)) => {
                let path = std::str::from_utf8(path).map_err(|e| e.to_string())?;
                change.delete(path).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
    }
    Ok(change.finish())
}

fn decode_snapshot(body: &[u8]) -> Result<Running, String> {
    let bytes = decompress(body)?;
    let mut running = RunningBuilder::new();
    let mut reader = Reader::new(&bytes);
    while let Some((number, value)) = reader.field()? {
        if let (field::SNAPSHOT_LEAVES, Field::Bytes(leaf)) = (number, value) {
            let (path, value) = read_leaf(leaf)?;
            running.push(path, value).map_err(|e| e.to_string())?;
        }
    }
    Ok(running.finish())
}

/// A `Leaf` message: its path and its value, still encoded.
fn read_leaf(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    let (mut path, mut value) = ("", &[][..]);
    let mut reader = Reader::new(bytes);
    while let Some((number, field)) = reader.field()? {
        match (number, field) {
            (field::LEAF_PATH, Field::Bytes(p)) => {
                path = std::str::from_utf8(p).map_err(|e| e.to_string())?;
            }
            (field::LEAF_VALUE, Field::Bytes(v)) => value = v,
            _ => {}
        }
    }
    Ok((path, value))
}

/// Writes protobuf fields into an LZ4 frame.
struct FrameWriter {
    encoder: lz4_flex::frame::FrameEncoder<Vec<u8>>,
    scratch: Vec<u8>,
}

impl FrameWriter {
    fn new() -> Self {
        Self {
            encoder: lz4_flex::frame::FrameEncoder::new(Vec::new()),
            scratch: Vec::with_capacity(512),
        }
    }

    fn varint_field(&mut self, number: u32, value: u64) {
        self.scratch.clear();
        prost::encoding::encode_key(number, prost::encoding::WireType::Varint, &mut self.scratch);
        prost::encoding::encode_varint(value, &mut self.scratch);
        self.write_scratch();
    }

    fn bytes_field(&mut self, number: u32, bytes: &[u8]) {
        self.scratch.clear();
        prost::encoding::encode_key(
            number,
            prost::encoding::WireType::LengthDelimited,
            &mut self.scratch,
        );
        prost::encoding::encode_varint(bytes.len() as u64, &mut self.scratch);
        self.scratch.extend_from_slice(bytes);
        self.write_scratch();
    }

    /// A `Leaf` message as field `number`.
    fn leaf(&mut self, number: u32, path: &str, value: &[u8]) {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let body = 1
            + encoded_len_varint(path.len() as u64)
            + path.len()
            + 1
            + encoded_len_varint(value.len() as u64)
            + value.len();
        self.scratch.clear();
        encode_key(number, WireType::LengthDelimited, &mut self.scratch);
        encode_varint(body as u64, &mut self.scratch);
        encode_key(
            field::LEAF_PATH,
            WireType::LengthDelimited,
            &mut self.scratch,
        );
        encode_varint(path.len() as u64, &mut self.scratch);
        self.scratch.extend_from_slice(path.as_bytes());
        encode_key(
            field::LEAF_VALUE,
            WireType::LengthDelimited,
            &mut self.scratch,
        );
        encode_varint(value.len() as u64, &mut self.scratch);
        self.scratch.extend_from_slice(value);
        self.write_scratch();
    }

    fn write_scratch(&mut self) {
        // Writing into a Vec cannot fail.
        let _ = std::io::Write::write_all(&mut self.encoder, &self.scratch);
    }

    fn finish(self) -> Vec<u8> {
        self.encoder.finish().unwrap_or_default()
    }
}

/// One protobuf field's value.
enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
}

/// Reads protobuf fields from a buffer.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn varint(&mut self) -> Result<u64, String> {
        prost::encoding::decode_varint(&mut self.bytes).map_err(|e| e.to_string())
    }

    /// The next field, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u32, Field<'a>)>, String> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|e| e.to_string())?;
        match (key & 7) as u32 {
            VARINT => {
                self.varint()?;
                Ok(Some((number, Field::Varint)))
            }
            LEN => {
                let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                if len > self.bytes.len() {
                    return Err("truncated field".into());
                }
                let (value, rest) = self.bytes.split_at(len);
                self.bytes = rest;
                Ok(Some((number, Field::Bytes(value))))
            }
            other => Err(format!("unexpected wire type {other}")),
        }
    }
}

fn decompress(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut lz4_flex::frame::FrameDecoder::new(body), &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}
