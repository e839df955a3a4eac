//! Running on disk: the per-commit change log and the snapshots that bound
//! restart work, in the same database as the registry (SQLite or
//! PostgreSQL).
//!
//! A commit is one transaction: its log row and, when due, a snapshot of the
//! whole running. A snapshot is due once the changes logged since the last one
//! outnumber twice the leaves of running (so restart replays at most about
//! twice a snapshot's worth), which also keeps the first full dump from being
//! written twice. The log keeps at least `retain_commits` commits and at least
//! `retain_age`; older rows are compacted away, but never past the newest
//! snapshot, which restart needs.
//!
//! Running can be read at any revision from the oldest kept snapshot on
//! ([`CommitLog::read_at`]): the nearest snapshot at or below, then the
//! commits after it. So compaction cuts the log only at a snapshot: it
//! removes the commits up to the newest snapshot that is older than what
//! must be kept, and the snapshots below that one; the snapshots in between
//! stay. The log then keeps up to one snapshot interval more than retention
//! asks, and the snapshots kept add about half the size of the changes kept
//! (one is written per twice running's leaves of changes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use std::io::{Read, Write};

use netsync_core::running::{Change, Running};
use netsync_core::sync::{Committed, Persist, Snapshot};

use crate::db::{on_conn, on_readers};
use crate::error::{Error, RevisionReason};
use crate::store::Store;
use crate::stored_time::{from_micros, to_micros};

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

/// One logged commit as stored: its change still compressed, decoded by
/// [`StoredCommit::decode`] when it is needed.
#[derive(Debug)]
pub struct StoredCommit {
    datastore: String,
    /// Its revision.
    pub revision: u64,
    /// When it was made.
    pub time: SystemTime,
    /// Whether it was a replace.
    pub replace: bool,
    body: Vec<u8>,
}

/// A stored body larger than this is decoded on the blocking pool (it is
/// compressed: about a few thousand leaves).
const LARGE_BODY: usize = 64 << 10;

impl StoredCommit {
    /// Its net change; a large one decoded off the async workers.
    pub async fn decode(self) -> Result<Change, Error> {
        let Self {
            datastore,
            revision,
            body,
            ..
        } = self;
        let decoded = if body.len() > LARGE_BODY {
            blocking(move || decode_commit(&body)).await?
        } else {
            decode_commit(&body)
        };
        decoded.map_err(|detail| Error::Damaged {
            datastore,
            what: format!("revision {revision} of the change log is damaged"),
            detail,
        })
    }
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
        // Counted only once the commit is durable: a commit retried through a
        // storage outage must not count again at each attempt (that would
        // turn small commits into full snapshots, needing more of the space
        // that is missing).
        let since = changed
            + self
                .since_snapshot
                .lock()
                .expect("lock")
                .get(datastore)
                .copied()
                .unwrap_or(0);
        let snapshot_due = since > 2 * commit.running.len() as u64 + 1000;
        // Encoding is CPU work in proportion to the change (and, for a
        // snapshot, to all of running): large ones go to the blocking pool so
        // the async workers keep serving.
        let body = if changed > LARGE {
            let change = commit.change.clone();
            blocking(move || encode_commit(&change)).await?
        } else {
            encode_commit(commit.change)
        };
        let snapshot = if !snapshot_due {
            None
        } else if commit.running.len() as u64 > LARGE {
            let running = commit.running.clone();
            Some(blocking(move || encode_snapshot(&running)).await?)
        } else {
            Some(encode_snapshot(commit.running))
        };
        let time_us = to_micros(commit.time);
        let revision = i64::try_from(commit.revision).unwrap_or(i64::MAX);
        let keep_after = revision - i64::try_from(self.retention.commits).unwrap_or(i64::MAX);
        let old = to_micros(
            commit
                .time
                .checked_sub(self.retention.age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let replace = commit.replace;
        let name = datastore.to_string();
        // Replica mode: the lease epoch this commit is written under (it is
        // stored with it, and fences it); refused here if this replica does
        // not own the datastore any more.
        let epoch = self.store.writer().epoch_of(datastore)?;
        self.store
            .writer()
            .write_commit(datastore, commit.revision, epoch, move |conn| {
                Box::pin(async move {
                    // A retry of a commit that is durable already (its answer
                    // was lost) finds its row: the same revision, the same
                    // content, nothing to do. A revision is never rewritten.
                    let inserted = on_conn!(&mut *conn, conn => {
                        sqlx::query(
                            "INSERT INTO commits (datastore, revision, time_us, replace, body, epoch) \
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (datastore, revision) DO NOTHING",
                        )
                        .bind(&name)
                        .bind(revision)
                        .bind(time_us)
                        .bind(replace)
                        .bind(&body)
                        .bind(epoch)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected()
                    });
                    if inserted == 0 {
                        // A retry of a durable commit finds the same body
                        // (encoding is deterministic). Another body means two
                        // histories for one revision number: never accepted.
                        let same: bool = on_conn!(&mut *conn, conn => {
                            sqlx::query_scalar(
                                "SELECT body = $1 FROM commits WHERE datastore = $2 AND revision = $3",
                            )
                            .bind(&body)
                            .bind(&name)
                            .bind(revision)
                            .fetch_one(&mut *conn)
                            .await?
                        });
                        if !same {
                            tracing::error!(datastore = %name, revision, "revision stored already with other content; refused");
                            return Err(Error::Internal(format!(
                                "revision {revision} of {name:?} is stored with other content"
                            )));
                        }
                        tracing::warn!(datastore = %name, revision, "revision already stored: a retry of a durable commit");
                        return Ok(());
                    }
                    let Some(snapshot) = snapshot else {
                        return Ok(());
                    };
                    on_conn!(&mut *conn, conn => {
                        sqlx::query(
                            "INSERT INTO snapshots (datastore, revision, time_us, body) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(&name)
                        .bind(revision)
                        .bind(time_us)
                        .bind(snapshot)
                        .execute(&mut *conn)
                        .await?;
                    });
                    // Only a prefix of the log goes, so what is kept has no
                    // holes even if the wall clock stepped back, and it goes
                    // up to a snapshot, so that every kept revision can be
                    // read (`read_at`): the newest snapshot below the oldest
                    // commit that is young enough, within the retained count
                    // (at most the snapshot just written).
                    let cut: Option<i64> = on_conn!(&mut *conn, conn => {
                        sqlx::query_scalar(
                            "SELECT MAX(revision) FROM snapshots WHERE datastore = $1 AND revision <= $2 \
                             AND revision < COALESCE( \
                                 (SELECT MIN(revision) FROM commits WHERE datastore = $1 AND time_us >= $3), $4)",
                        )
                        .bind(&name)
                        .bind(keep_after)
                        .bind(old)
                        .bind(revision + 1)
                        .fetch_one(&mut *conn)
                        .await?
                    });
                    let Some(cut) = cut else {
                        return Ok(());
                    };
                    on_conn!(conn, conn => {
                        sqlx::query("DELETE FROM snapshots WHERE datastore = $1 AND revision < $2")
                            .bind(&name)
                            .bind(cut)
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("DELETE FROM commits WHERE datastore = $1 AND revision <= $2")
                            .bind(&name)
                            .bind(cut)
                            .execute(&mut *conn)
                            .await?;
                    });
                    Ok(())
                })
            })
            .await?;
        self.since_snapshot
            .lock()
            .expect("lock")
            .insert(datastore.to_string(), if snapshot_due { 0 } else { since });
        Ok(())
    }

    /// Forgets a deleted datastore's counters.
    pub fn forget(&self, datastore: &str) {
        self.since_snapshot.lock().expect("lock").remove(datastore);
    }

    /// Loads running at its last committed revision: the newest snapshot, then
    /// the log after it.
    pub async fn load(&self, datastore: &str) -> Result<Snapshot, Error> {
        let damaged = |what: String, detail: String| Error::Damaged {
            datastore: datastore.to_string(),
            what,
            detail,
        };
        let snapshot: Option<(i64, i64, Vec<u8>)> = on_readers!(self.store.readers(), pool => {
            sqlx::query_as("SELECT revision, time_us, body FROM snapshots WHERE datastore = $1 ORDER BY revision DESC LIMIT 1")
                .bind(datastore)
                .fetch_optional(pool)
                .await?
        });
        let (mut running, mut revision, mut time) = match snapshot {
            Some((revision, time, body)) => {
                let running = decode_snapshot(&body).map_err(|detail| {
                    damaged(
                        format!("the snapshot at revision {revision} is damaged"),
                        detail,
                    )
                })?;
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
                    return Err(damaged(
                        format!(
                            "revisions {} to {} of the change log are missing",
                            revision + 1,
                            commit.revision - 1
                        ),
                        format!(
                            "change log jumps from revision {revision} to {}",
                            commit.revision
                        ),
                    ));
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
        let rows: Vec<(i64, i64, bool, Vec<u8>)> = on_readers!(self.store.readers(), pool => {
            sqlx::query_as(
                "SELECT revision, time_us, replace, body FROM commits WHERE datastore = $1 AND revision >= $2 ORDER BY revision LIMIT $3",
            )
            .bind(datastore)
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(revision, time_us, replace, body)| {
                let change = decode_commit(&body).map_err(|detail| Error::Damaged {
                    datastore: datastore.to_string(),
                    what: format!("revision {revision} of the change log is damaged"),
                    detail,
                })?;
                Ok(LoggedCommit {
                    revision: revision as u64,
                    time: from_micros(time_us),
                    replace,
                    change,
                })
            })
            .collect()
    }

    /// Logged commits from revision `from` on, in order and as stored, for a
    /// replay that decodes each when its turn comes: at most `max_commits`,
    /// and no more than `max_bytes` of stored bodies (at least one commit,
    /// however large). A replay then holds a page of compressed bodies and
    /// one decoded commit, never a run of whole decoded commits.
    pub async fn read_page(
        &self,
        datastore: &str,
        from: u64,
        max_commits: u32,
        max_bytes: usize,
    ) -> Result<Vec<StoredCommit>, Error> {
        self.read_page_of(datastore, None, from, max_commits, max_bytes)
            .await
    }

    /// [`read_page`](Self::read_page), of incarnation `uid` only when
    /// given: nothing once the datastore was deleted or created again, even
    /// if the new one has reached `from` (each statement reads one snapshot,
    /// so the rows it gives are of the incarnation it saw).
    pub async fn read_page_of(
        &self,
        datastore: &str,
        uid: Option<&str>,
        from: u64,
        max_commits: u32,
        max_bytes: usize,
    ) -> Result<Vec<StoredCommit>, Error> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        // SQLite reads a blob's length from its record header, without
        // reading the blob; PostgreSQL from the value's header (without
        // decompressing or fetching a TOASTed value). The cast: PostgreSQL's
        // length is a 32-bit integer.
        let sizes: Vec<(i64, i64)> = on_readers!(self.store.readers(), pool => {
            sqlx::query_as(
                "SELECT revision, CAST(length(body) AS BIGINT) FROM commits WHERE datastore = $1 \
                 AND revision >= $2 AND ($4 IS NULL OR EXISTS (SELECT 1 FROM datastores \
                     WHERE name = $1 AND COALESCE(uid, '') = $4)) \
                 ORDER BY revision LIMIT $3",
            )
            .bind(datastore)
            .bind(from)
            .bind(i64::from(max_commits))
            .bind(uid)
            .fetch_all(pool)
            .await?
        });
        let mut bytes = 0;
        let mut last = None;
        for (revision, len) in sizes {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if last.is_some() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            last = Some(revision);
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        // Compacted meanwhile, this starts later than `from`: the caller,
        // which checks that revisions follow on, sees the gap.
        let rows: Vec<(i64, i64, bool, Vec<u8>)> = on_readers!(self.store.readers(), pool => {
            sqlx::query_as(
                "SELECT revision, time_us, replace, body FROM commits WHERE datastore = $1 \
                 AND revision >= $2 AND revision <= $3 AND ($4 IS NULL OR EXISTS ( \
                     SELECT 1 FROM datastores WHERE name = $1 AND COALESCE(uid, '') = $4)) \
                 ORDER BY revision",
            )
            .bind(datastore)
            .bind(from)
            .bind(last)
            .bind(uid)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(revision, time_us, replace, body)| StoredCommit {
                datastore: datastore.to_string(),
                revision: revision as u64,
                time: from_micros(time_us),
                replace,
                body,
            })
            .collect())
    }

    /// Running of `datastore` as it was right after revision `revision`
    /// (at least 1, at most the newest logged): the nearest snapshot at or
    /// below it, then the commits after it up to `revision`, a page at a
    /// time. Holds one running and one page of stored commits; a large
    /// snapshot or change is decoded and applied on the blocking pool.
    /// OUT_OF_RANGE, naming the oldest readable revision, when compaction
    /// has removed what it needs (also when that happens during the read).
    pub async fn read_at(&self, datastore: &str, revision: u64) -> Result<Running, Error> {
        let snapshot: Option<(i64, Vec<u8>)> = on_readers!(self.store.readers(), pool => {
            sqlx::query_as(
                "SELECT revision, body FROM snapshots WHERE datastore = $1 AND revision <= $2 \
                 ORDER BY revision DESC LIMIT 1",
            )
            .bind(datastore)
            .bind(i64::try_from(revision).unwrap_or(i64::MAX))
            .fetch_optional(pool)
            .await?
        });
        let (mut running, mut at) = match snapshot {
            Some((at, body)) => {
                let decoded = if body.len() > LARGE_BODY {
                    blocking(move || decode_snapshot(&body)).await?
                } else {
                    decode_snapshot(&body)
                };
                let running = decoded.map_err(|detail| Error::Damaged {
                    datastore: datastore.to_string(),
                    what: format!("the snapshot at revision {at} is damaged"),
                    detail,
                })?;
                (running, at as u64)
            }
            None => (Running::new(), 0),
        };
        while at < revision {
            let page = self.read_page(datastore, at + 1, 64, 1 << 20).await?;
            if page.first().is_none_or(|first| first.revision != at + 1) {
                return Err(self.compacted(datastore, revision).await);
            }
            for stored in page {
                if stored.revision > revision {
                    break;
                }
                if stored.revision != at + 1 {
                    return Err(self.compacted(datastore, revision).await);
                }
                at = stored.revision;
                let change = stored.decode().await?;
                let changed = (change.update_count() + change.delete_count()) as u64;
                if changed > LARGE {
                    running = blocking(move || {
                        running.apply_change(&change);
                        running
                    })
                    .await?;
                } else {
                    running.apply_change(&change);
                }
            }
        }
        Ok(running)
    }

    /// The error for a read at `revision`, which the log no longer holds.
    async fn compacted(&self, datastore: &str, revision: u64) -> Error {
        let oldest = match self.oldest_readable(datastore).await {
            Ok(oldest) => oldest,
            Err(e) => return e,
        };
        let shown = oldest.map_or("none".to_string(), |o| o.to_string());
        Error::Revision {
            reason: RevisionReason::NotKept,
            datastore: datastore.to_string(),
            revision,
            bound: oldest,
            message: format!(
                "revision {revision} of {datastore:?} is no longer kept (oldest readable \
                 revision: {shown})"
            ),
        }
    }

    /// The oldest revision [`read_at`](Self::read_at) can read, if any: 1
    /// while the log starts at 1, else the oldest snapshot from which the
    /// log follows on without a gap.
    pub async fn oldest_readable(&self, datastore: &str) -> Result<Option<u64>, Error> {
        let oldest = self.oldest(datastore).await?;
        if oldest == Some(1) {
            return Ok(Some(1));
        }
        // Without a commit, the newest snapshot is the current revision.
        let floor = oldest.map_or(0, |o| o.saturating_sub(1));
        let snapshot: Option<i64> = on_readers!(self.store.readers(), pool => {
            sqlx::query_scalar(
                "SELECT MIN(revision) FROM snapshots WHERE datastore = $1 AND revision >= $2",
            )
            .bind(datastore)
            .bind(i64::try_from(floor).unwrap_or(i64::MAX))
            .fetch_one(pool)
            .await?
        });
        Ok(snapshot.map(|r| r as u64))
    }

    /// The oldest revision still in the log, if any.
    pub async fn oldest(&self, datastore: &str) -> Result<Option<u64>, Error> {
        let oldest: Option<i64> = on_readers!(self.store.readers(), pool => {
            sqlx::query_scalar("SELECT MIN(revision) FROM commits WHERE datastore = $1")
                .bind(datastore)
                .fetch_one(pool)
                .await?
        });
        Ok(oldest.map(|r| r as u64))
    }

    /// The newest revision in the log, if any. It can be ahead of the
    /// published revision for a moment: durable, and published once its
    /// committer hears so (after a retry, up to its backoff later).
    pub async fn newest(&self, datastore: &str) -> Result<Option<u64>, Error> {
        let newest: Option<i64> = on_readers!(self.store.readers(), pool => {
            sqlx::query_scalar("SELECT MAX(revision) FROM commits WHERE datastore = $1")
                .bind(datastore)
                .fetch_one(pool)
                .await?
        });
        Ok(newest.map(|r| r as u64))
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
                tracing::warn!(datastore, error = %e, "cannot persist a commit");
                // The committer shows this in the datastore's status: the
                // reason, not the SQL.
                match e {
                    Error::StorageUnavailable(why) => why,
                    Error::NotOwner(_) => "this replica no longer owns the datastore".into(),
                    Error::NotFound { .. } => "the datastore was deleted".into(),
                    Error::Store(e) if crate::writer::is_foreign_key(&e) => {
                        "the datastore was deleted".into()
                    }
                    _ => "internal error (see the log)".into(),
                }
            })
        })
    }
}

// Log bodies are netsync's own compact form of running and of a change (the
// front-coded chunks running keeps in memory, see netsync-core's `leaves`)
// behind a format byte, compressed as one LZ4 frame with a content checksum
// (xxHash32 of the whole body, checked when the frame is read), so a body
// damaged on disk is reported as such instead of being loaded as a wrong
// value; a body cut short is refused too, whatever its checksum. Bodies
// written before the checksum have none and still read.
// Writing one copies the chunks; reading one checks every entry and keeps
// the chunks as they are, so a million-leaf body never becomes a million
// separate objects.

/// A change or a running of more leaves than this is encoded on the
/// blocking pool.
const LARGE: u64 = 10_000;

/// Runs CPU-heavy `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Corrupt(format!("encoding a log body failed: {e}")))
}

/// A frame encoder whose frames carry a checksum of their content.
fn encoder() -> lz4_flex::frame::FrameEncoder<Vec<u8>> {
    let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
    lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new())
}

/// The body format written; a body of another format is refused as corrupt.
const FORMAT: u8 = 1;

fn encode_commit(change: &Change) -> Vec<u8> {
    let mut out = encoder();
    // Writing into a Vec cannot fail.
    let _ = out.write_all(&[FORMAT]);
    let _ = change.write(&mut out);
    out.finish().unwrap_or_default()
}

fn encode_snapshot(running: &Running) -> Vec<u8> {
    let mut out = encoder();
    let _ = out.write_all(&[FORMAT]);
    let _ = running.write(&mut out);
    out.finish().unwrap_or_default()
}

fn decode_commit(body: &[u8]) -> Result<Change, String> {
    Change::read(payload(&decompress(body)?)?)
}

fn decode_snapshot(body: &[u8]) -> Result<Running, String> {
    Running::read(payload(&decompress(body)?)?)
}

/// The body after its format byte.
fn payload(bytes: &[u8]) -> Result<&[u8], String> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => Ok(rest),
        Some((other, _)) => Err(format!("unknown body format {other}")),
        None => Err("empty body".into()),
    }
}

fn decompress(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    lz4_flex::frame::FrameDecoder::new(body)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    whole_frame(body)?;
    Ok(out)
}

/// Checks that `body` is one LZ4 frame to its end mark (and content
/// checksum), with nothing after it. lz4_flex's decoder takes input that
/// ends where a block header would start as the end of the data: a body cut
/// there (its end mark and checksum lost, or whole blocks) would be read
/// without its checksum ever being checked. Run after the decoder, which has
/// checked the header.
fn whole_frame(body: &[u8]) -> Result<(), String> {
    const CUT: &str = "the body ends inside its LZ4 frame";
    // Frame descriptor flags (LZ4 frame format 1.6.x).
    let flags = *body.get(4).ok_or(CUT)?;
    let (block_checksums, content_size, content_checksum, dict_id) = (
        flags & 0x10 != 0,
        flags & 0x08 != 0,
        flags & 0x04 != 0,
        flags & 0x01 != 0,
    );
    // Magic number, flags, block descriptor, the optional fields, header checksum.
    let mut at = 6 + if content_size { 8 } else { 0 } + if dict_id { 4 } else { 0 } + 1;
    loop {
        let &[a, b, c, d] = body.get(at..at + 4).ok_or(CUT)? else {
            unreachable!("four bytes")
        };
        at += 4;
        // The end mark is all zero; the high bit marks an uncompressed block.
        let header = u32::from_le_bytes([a, b, c, d]);
        if header == 0 {
            break;
        }
        at += (header & 0x7fff_ffff) as usize + if block_checksums { 4 } else { 0 };
    }
    if content_checksum {
        at += 4;
    }
    match at.cmp(&body.len()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(CUT.into()),
        std::cmp::Ordering::Less => Err("bytes after the body's LZ4 frame".into()),
    }
}

#[cfg(test)]
mod tests {
    use netsync_core::running::Key;
    use netsync_proto::gnmi::{TypedValue, typed_value};

    use super::*;

    /// A change as a device would send it: `n` descriptions set (values of
    /// some variety, so that a large one takes several LZ4 blocks) and one
    /// leaf removed.
    fn change(n: usize) -> Change {
        let updates = (0..n).map(|i| {
            let key: Key = format!("/interfaces/interface[name=eth{i}]/description").into();
            let text = format!("uplink {} of rack {i}", i * 7919 % 10007);
            let value = TypedValue {
                value: Some(typed_value::Value::StringVal(text)),
            };
            (key, value)
        });
        Change::new(updates, [Key::from("/system/motd")])
    }

    /// Bytes of the frame header as written (magic number, descriptor,
    /// header checksum; no content size): the first block starts after them.
    const FRAME_HEADER: usize = 7;

    #[test]
    fn a_damaged_body_is_refused_never_read_as_another_value() {
        let written = change(50);
        let body = encode_commit(&written);
        assert_eq!(decode_commit(&body), Ok(written.clone()));
        assert!(body.len() > FRAME_HEADER + 8, "{} bytes", body.len());

        // One byte flipped anywhere, the payload included: an error, never a
        // change read back that differs from what was written.
        let mut refused = 0;
        for at in 0..body.len() {
            let mut damaged = body.clone();
            damaged[at] ^= 0x5a;
            match decode_commit(&damaged) {
                Err(_) => refused += 1,
                Ok(read) => panic!(
                    "byte {at} of {} damaged, read as {}",
                    body.len(),
                    if read == written {
                        "the original change"
                    } else {
                        "another change"
                    }
                ),
            }
        }
        assert_eq!(refused, body.len());

        // Cut short anywhere: an error.
        for len in 0..body.len() {
            assert!(
                decode_commit(&body[..len]).is_err(),
                "a body cut to {len} of {} bytes was read",
                body.len()
            );
        }

        // A body of several blocks cut after any of them: an error too.
        let large = change(5000);
        let body = encode_commit(&large);
        let mut blocks = 0;
        let mut at = FRAME_HEADER;
        loop {
            let size = u32::from_le_bytes(body[at..at + 4].try_into().unwrap()) & 0x7fff_ffff;
            assert!(
                decode_commit(&body[..at]).is_err(),
                "cut after {blocks} blocks"
            );
            if size == 0 {
                break;
            }
            blocks += 1;
            at += 4 + size as usize;
        }
        assert!(blocks > 1, "{blocks} blocks");
        assert_eq!(decode_commit(&body), Ok(large));

        // Snapshots are framed the same way.
        let running = Running::from_leaves(written.updates().map(|(k, v)| (Key::from(k), v)));
        let snapshot = encode_snapshot(&running);
        assert_eq!(decode_snapshot(&snapshot), Ok(running));
        let mut damaged = snapshot.clone();
        damaged[FRAME_HEADER + 10] ^= 0x5a;
        assert!(decode_snapshot(&damaged).is_err());
        assert!(decode_snapshot(&snapshot[..snapshot.len() - 1]).is_err());
    }

    #[test]
    fn a_body_written_before_the_checksum_still_reads() {
        let change = change(50);
        // As bodies were written before: a frame without content checksum.
        let mut out = lz4_flex::frame::FrameEncoder::new(Vec::new());
        out.write_all(&[FORMAT]).unwrap();
        change.write(&mut out).unwrap();
        let old = out.finish().unwrap();
        assert_ne!(old, encode_commit(&change), "the frames differ");
        assert_eq!(decode_commit(&old), Ok(change));
    }
}
