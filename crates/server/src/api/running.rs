//! GetRunning: one consistent revision per call, a subtree filter, batches of
//! at most about 1 MiB, `min_revision` waits within the caller's deadline,
//! and with `with_owner` the intent that decides each leaf (a blame); at a
//! past `revision`, rebuilt from the change log; values in a `value_format`.
//!
//! In replica mode a datastore synced by another replica is read from the
//! database ([`get_running_stored`]): at the newest logged revision (or the
//! one asked for), rebuilt from the log as a past revision is, owners from
//! the stored intents, `min_revision` waited for through the notifications
//! of its commits; the same messages and errors as on the owner.

use std::time::Duration;

use netsync_core::Path;
use netsync_core::intent::Owners;
use netsync_core::running::{Running, Subtree};
use netsync_core::sync::SyncHandle;
use netsync_proto::netsync::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ResponseStream;
use crate::convert::{self, ValueFormat};
use crate::error::{Error, RevisionReason};
use crate::log::CommitLog;
use crate::notify::{Channel, Notices};
use crate::store::{Store, StoredDatastore};

/// Target encoded size of one response message.
const BATCH_BYTES: usize = 1 << 20;

/// Longest `min_revision` wait when the caller set no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// What a GetRunning call asks, beyond the datastore.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// The subtree, as the request gave it.
    pub path: String,
    /// Wait until running reaches this revision.
    pub min_revision: u64,
    /// Read at this past revision (0: the current one).
    pub revision: u64,
    /// Name each leaf's owner.
    pub with_owner: bool,
    /// How values are written.
    pub format: ValueFormat,
}

/// Streams running (or the subtree at `path`) of `sync` at one revision, once
/// that revision is at least `min_revision`; with `with_owner`, each leaf
/// names the intent that decides it. With `revision`, running as it was at
/// that revision (after the wait for `min_revision`, so that a client can
/// wait for a revision it means to read): rebuilt from `log` unless it is the
/// current one; OUT_OF_RANGE when it is compacted away or not committed yet.
pub async fn get_running(
    sync: &SyncHandle,
    log: &CommitLog,
    read: Read,
    timeout: Option<Duration>,
) -> Result<ResponseStream<pb::GetRunningResponse>, Error> {
    let Read {
        path,
        min_revision,
        revision: at,
        with_owner,
        format,
    } = read;
    let path = Path::parse(&path).map_err(|e| Error::invalid("path", e.to_string()))?;
    let mut snapshots = sync.watch_snapshot();
    // Answer a little before the caller gives up, so it gets our explanation.
    let wait = timeout.map_or(DEFAULT_WAIT, |t| t.mul_f64(0.9));
    let waited = tokio::time::timeout(wait, async {
        snapshots
            .wait_for(|s| s.revision >= min_revision)
            .await
            .map(|s| s.clone())
    })
    .await;
    let snapshot = match waited {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(_)) => {
            return Err(Error::NotFound {
                kind: "datastore",
                name: sync.name().to_string(),
            });
        }
        Err(_) => {
            let now = sync.snapshot().revision;
            return Err(Error::DeadlineExceeded(format!(
                "running of {:?} is at revision {now}; min_revision {min_revision} was not reached in time",
                sync.name()
            )));
        }
    };
    let (revision, running) = if at == 0 || at == snapshot.revision {
        (snapshot.revision, snapshot.running)
    } else if at > snapshot.revision {
        return Err(not_yet(sync.name(), at, snapshot.revision));
    } else {
        drop(snapshot);
        (at, log.read_at(sync.name(), at).await?)
    };
    // The intents as they are now, right after the snapshot was taken: the
    // owners are those of the read's moment. Only their claims are indexed
    // (no deviation is computed), and nothing at all without `with_owner`.
    let owners = with_owner.then(|| Owners::new(&sync.intents()));
    Ok(stream(revision, running, owners, path, format))
}

/// Replica mode: [`get_running`] of `ds`, which another replica syncs, from
/// the database: running at the newest logged revision (or `revision`)
/// rebuilt from the log, `min_revision` waited for through `notices`, the
/// owners from the stored intents.
pub async fn get_running_stored(
    ds: &StoredDatastore,
    log: &CommitLog,
    store: &Store,
    notices: &Notices,
    read: Read,
    timeout: Option<Duration>,
) -> Result<ResponseStream<pb::GetRunningResponse>, Error> {
    let Read {
        path,
        min_revision,
        revision: at,
        with_owner,
        format,
    } = read;
    let path = Path::parse(&path).map_err(|e| Error::invalid("path", e.to_string()))?;
    let name = ds.spec.name.as_str();
    let wait = timeout.map_or(DEFAULT_WAIT, |t| t.mul_f64(0.9));
    let deadline = tokio::time::Instant::now() + wait;
    let newest = loop {
        // Made before reading: a commit in between wakes the wait at once.
        let mut committed = notices.waiter(Channel::Commits, name);
        let newest = log.newest(name).await?.unwrap_or(0);
        if newest >= min_revision {
            break newest;
        }
        // Deleted meanwhile: as the owner answers when its sync stops.
        if store.datastore_uid(name).await?.as_deref() != Some(ds.uid.as_str()) {
            return Err(Error::NotFound {
                kind: "datastore",
                name: name.to_string(),
            });
        }
        if tokio::time::timeout_at(deadline, committed.wait())
            .await
            .is_err()
        {
            return Err(Error::DeadlineExceeded(format!(
                "running of {name:?} is at revision {newest}; min_revision {min_revision} was not \
                 reached in time"
            )));
        }
    };
    if at > newest {
        return Err(not_yet(name, at, newest));
    }
    let revision = if at == 0 { newest } else { at };
    let running = read_stored(log, name, revision).await?;
    // The intents as stored now, right after the read; those today's
    // validation refuses decide nothing, as on the owner.
    let owners = if with_owner {
        let intents: Vec<_> = store
            .list_intents(name)
            .await?
            .into_iter()
            .filter_map(|proto| convert::intent_for_datastore(proto, "intent", &ds.spec).ok())
            .collect();
        Some(Owners::new(&intents))
    } else {
        None
    };
    Ok(stream(revision, running, owners, path, format))
}

/// Running of `name` at `revision` (0: empty), read from the log. Compaction
/// may remove the snapshot a read started from while it reads (a short log,
/// a busy owner): when the revision is still readable after all (the error
/// names an oldest readable revision at or below it), the read is tried
/// again, a few times, before its error is given. On the owner the current
/// revision never fails so (it is in memory); here it must not either.
async fn read_stored(log: &CommitLog, name: &str, revision: u64) -> Result<Running, Error> {
    if revision == 0 {
        return Ok(Running::new());
    }
    let mut attempts = 3;
    loop {
        match log.read_at(name, revision).await {
            Err(Error::Revision {
                reason: RevisionReason::NotKept,
                bound: Some(oldest),
                ..
            }) if oldest <= revision && attempts > 1 => attempts -= 1,
            read => return read,
        }
    }
}

/// The error for a read at `at`, after `latest`, the newest revision.
fn not_yet(name: &str, at: u64, latest: u64) -> Error {
    Error::Revision {
        reason: RevisionReason::NotYet,
        datastore: name.to_string(),
        revision: at,
        bound: Some(latest),
        message: format!(
            "revision {at} of {name:?} does not exist yet (latest: {latest}); set min_revision as \
             well to wait for it"
        ),
    }
}

/// Streams `running` at `revision` (the subtree at `path`) in batches, each
/// leaf with its owner under `owners`.
fn stream(
    revision: u64,
    running: Running,
    owners: Option<Owners>,
    path: Path,
    format: ValueFormat,
) -> ResponseStream<pb::GetRunningResponse> {
    let (tx, rx) = mpsc::channel(2);
    // Batches are built as the client reads them; the task ends with the call.
    tokio::spawn(async move {
        let subtree = (!path.is_root() || path.origin().is_some()).then(|| Subtree::new(&path));
        let leaves: Box<dyn Iterator<Item = _> + Send> = match &subtree {
            Some(subtree) => Box::new(running.subtree(subtree)),
            None => Box::new(running.iter()),
        };
        let mut batch = pb::GetRunningResponse {
            revision,
            leaves: Vec::new(),
        };
        let mut size = 0;
        let mut sent = false;
        for (key, value) in leaves {
            let owner = owners
                .as_ref()
                .and_then(|o| o.owner(&key))
                .map(str::to_string)
                .unwrap_or_default();
            let leaf = pb::Leaf {
                path: key,
                value: Some(format.value(value)),
                owner,
            };
            size += leaf.encoded_len() + 4;
            batch.leaves.push(leaf);
            if size >= BATCH_BYTES {
                let full = std::mem::replace(
                    &mut batch,
                    pb::GetRunningResponse {
                        revision,
                        leaves: Vec::new(),
                    },
                );
                size = 0;
                sent = true;
                if tx.send(Ok(full)).await.is_err() {
                    return;
                }
            }
        }
        if !batch.leaves.is_empty() || !sent {
            let _ = tx.send(Ok(batch)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
