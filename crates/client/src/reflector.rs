//! The reflector: a local copy of one datastore's running, kept up to date
//! the way a Kubernetes informer keeps its cache. It lists running
//! (GetRunning), then watches from the next revision (WatchSync with
//! `from_revision` = revision + 1) and applies each commit to its map. A
//! watch cut by netsyncd (RESOURCE_EXHAUSTED for a slow reader, UNAVAILABLE
//! when netsyncd stops) or broken with the connection is resumed from the
//! revision the status names; a watch whose next revision the change log no
//! longer keeps (OUT_OF_RANGE) starts over with a new list.
//!
//! Every call after the first names the incarnation of the datastore the map
//! belongs to (`expected_uid`, the uid GetDatastore read before the first
//! list): a datastore deleted and created again under the same name has
//! another uid and revisions that start over at 1, and without the check a
//! resumed watch would splice the new history onto the old map. netsyncd
//! refuses such a call with FAILED_PRECONDITION; the reflector then reads the
//! new uid, lists the new incarnation from scratch and says so
//! ([`Event::Recreated`]). A datastore deleted and not (yet) created again
//! ends the reflector: [`Reflector::next`] returns NOT_FOUND (after the
//! [`Event::Cut`] of the watch the deletion ended), and a caller that
//! expects the datastore back makes a new reflector later.
//!
//! The map only ever holds whole revisions: the parts of a large commit
//! (`Commit.more`) are held back until its last part has come.

use std::time::Duration;

use tonic::{Code, Status, Streaming};

use crate::{Error, Leaves, RawClient, pb};

/// What [`Reflector::next`] did.
#[derive(Debug, Clone)]
pub enum Event {
    /// Running was read whole: the map was replaced. `after` is the status
    /// that made a new list necessary (OUT_OF_RANGE: the watch could not go
    /// on without a gap); `None` for the first list.
    Listed {
        /// The revision read.
        revision: u64,
        /// Why the map was read again.
        after: Option<Status>,
    },
    /// One revision was applied to the map.
    Applied {
        /// The revision the map is now at.
        revision: u64,
        /// A full resync of the device (its pruned leaves are among the deletes).
        replace: bool,
        /// Leaves set.
        updated: usize,
        /// Leaves removed.
        deleted: usize,
        /// The paths set, in the order the commit sent them (their values
        /// are in the map).
        updated_paths: Vec<String>,
        /// The paths removed.
        deleted_paths: Vec<String>,
    },
    /// The datastore was deleted and created again under the same name (a
    /// new incarnation: another uid, revisions from 1 again): the map was
    /// replaced by the new incarnation's running, read whole at `revision`.
    /// Nothing of the old map is kept.
    Recreated {
        /// The revision of the new incarnation read.
        revision: u64,
        /// The new incarnation's uid.
        uid: String,
        /// The uid of the incarnation the map held before.
        previous_uid: String,
        /// The FAILED_PRECONDITION that showed the uid had changed.
        after: Status,
    },
    /// The watch ended with `status` and is resumed from `from_revision` by
    /// the next call, without a new list.
    Cut {
        /// What ended it.
        status: Status,
        /// The revision the next watch starts at.
        from_revision: u64,
    },
    /// The sync of the datastore changed state (the map does not change).
    StateChanged {
        /// The revision it was observed at.
        revision: u64,
        /// The new state and why.
        state: pb::StateChanged,
    },
    /// A revert job's progress (the map does not change; the commit that a
    /// revert causes comes as an [`Event::Applied`]).
    Revert {
        /// The revision it was observed at.
        revision: u64,
        /// The job's progress.
        revert: pb::Revert,
    },
}

/// A revision whose parts are still coming.
struct Partial {
    revision: u64,
    replace: bool,
    updates: Vec<pb::Leaf>,
    deletes: Vec<String>,
}

/// A local copy of one datastore's running; see the module documentation.
/// Driven by its caller: nothing happens between calls of [`Reflector::next`]
/// (a caller that stops calling may be cut by netsyncd, and is then resumed).
pub struct Reflector {
    raw: RawClient,
    datastore: String,
    /// The incarnation the map belongs to (empty before the first list).
    uid: String,
    /// netsyncd refused a call for `uid` (FAILED_PRECONDITION): the next
    /// list reads the uid again, and lists the new incarnation if it changed.
    uid_refused: bool,
    leaves: Leaves,
    revision: u64,
    /// Why the next call must list: `Some(None)` for the first list.
    relist: Option<Option<Status>>,
    stream: Option<Streaming<pb::SyncEvent>>,
    /// Where the next watch starts.
    from_revision: u64,
    partial: Option<Partial>,
    /// Calls that failed in a row, for the backoff before the next attempt.
    failures: u32,
    max_backoff: Duration,
}

impl std::fmt::Debug for Reflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("datastore", &self.datastore)
            .field("revision", &self.revision)
            .field("leaves", &self.leaves.len())
            .field("watching", &self.stream.is_some())
            .finish()
    }
}

impl Reflector {
    pub(crate) fn new(raw: RawClient, datastore: &str) -> Self {
        Self {
            raw,
            datastore: datastore.into(),
            uid: String::new(),
            uid_refused: false,
            leaves: Leaves::new(),
            revision: 0,
            relist: Some(None),
            stream: None,
            from_revision: 0,
            partial: None,
            failures: 0,
            max_backoff: Duration::from_secs(2),
        }
    }

    /// The longest wait between two attempts while netsyncd cannot be
    /// reached (the wait doubles from 50 ms up to this; 2 s by default).
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// The datastore reflected.
    pub fn datastore(&self) -> &str {
        &self.datastore
    }

    /// The uid of the datastore incarnation the map belongs to (empty before
    /// the first list).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The revision the map is at (0 before the first list).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The map: running of the datastore at [`Reflector::revision`].
    pub fn leaves(&self) -> &Leaves {
        &self.leaves
    }

    /// The map and its revision, copied.
    pub fn snapshot(&self) -> (u64, Leaves) {
        (self.revision, self.leaves.clone())
    }

    /// Brings the map one step further and says what changed: waits for the
    /// next revision (or the first list), resuming or relisting on the way
    /// as needed, with a backoff while netsyncd cannot be reached. Errors
    /// only on what trying again cannot fix: an unknown or deleted datastore
    /// (NOT_FOUND), a stopped one (FAILED_PRECONDITION for its own uid), a
    /// refused credential, a bad request. Cancel-safe between events: dropping the
    /// future loses nothing the map holds (a revision half-received is
    /// received again whole).
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(after) = self.relist.clone() {
                match self.list(after.as_ref()).await {
                    Ok(previous_uid) => {
                        self.relist = None;
                        return Ok(match previous_uid {
                            Some((previous_uid, after)) => Event::Recreated {
                                revision: self.revision,
                                uid: self.uid.clone(),
                                previous_uid,
                                after,
                            },
                            None => Event::Listed {
                                revision: self.revision,
                                after,
                            },
                        });
                    }
                    Err(status) => self.retry_or_fail(status).await?,
                }
                continue;
            }
            let Some(stream) = self.stream.as_mut() else {
                match self.watch().await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(status) if status.code() == Code::OutOfRange => {
                        self.relist = Some(Some(status));
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        self.uid_refused = true;
                        self.relist = Some(Some(status));
                    }
                    Err(status) => self.retry_or_fail(status).await?,
                }
                continue;
            };
            let message = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => Err(Status::unavailable("the watch ended without a status"))?,
                Err(status) => {
                    if let Some(event) = self.cut(status)? {
                        return Ok(event);
                    }
                    continue;
                }
            };
            self.failures = 0;
            if let Some(event) = self.apply(message) {
                return Ok(event);
            }
        }
    }

    /// Reads running whole and starts the next watch after it. Reads the
    /// datastore's uid first when the map has none yet, or when netsyncd
    /// refused the one it has (`after` is that refusal); returns the uid
    /// the map held before, with the refusal that showed it, when the list
    /// is of another incarnation.
    async fn list(&mut self, after: Option<&Status>) -> Result<Option<(String, Status)>, Status> {
        self.stream = None;
        self.partial = None;
        let mut refusal = after
            .filter(|s| s.code() == Code::FailedPrecondition)
            .cloned();
        let mut uid = self.uid.clone();
        if uid.is_empty() || self.uid_refused {
            uid = self.read_uid().await?;
            if self.uid_refused && uid == self.uid {
                // Refused for another reason than a new incarnation (a
                // stopped datastore): nothing a new list can fix.
                self.uid_refused = false;
                return Err(after.cloned().unwrap_or_else(|| {
                    Status::failed_precondition(format!(
                        "{:?} refused a call for its own uid",
                        self.datastore
                    ))
                }));
            }
        }
        let (revision, leaves) = loop {
            match self.read_running(&uid).await {
                Ok(read) => break read,
                // Deleted and created again between the two reads: list the
                // newest incarnation; the same uid means another refusal.
                Err(status) if status.code() == Code::FailedPrecondition => {
                    let current = self.read_uid().await?;
                    if current == uid {
                        return Err(status);
                    }
                    uid = current;
                    refusal = Some(status);
                }
                Err(status) => return Err(status),
            }
        };
        let previous = std::mem::replace(&mut self.uid, uid);
        self.uid_refused = false;
        self.leaves = leaves;
        self.revision = revision;
        self.from_revision = revision + 1;
        self.failures = 0;
        if previous.is_empty() || previous == self.uid {
            return Ok(None);
        }
        let refusal = refusal.unwrap_or_else(|| {
            Status::failed_precondition(format!("{:?} has another uid", self.datastore))
        });
        Ok(Some((previous, refusal)))
    }

    /// The uid of the datastore's current incarnation.
    async fn read_uid(&mut self) -> Result<String, Status> {
        Ok(self
            .raw
            .get_datastore(pb::GetDatastoreRequest {
                name: self.datastore.clone(),
            })
            .await?
            .into_inner()
            .uid)
    }

    /// Running of incarnation `uid` of the datastore, whole.
    async fn read_running(&mut self, uid: &str) -> Result<(u64, Leaves), Status> {
        let mut stream = self
            .raw
            .get_running(pb::GetRunningRequest {
                datastore: self.datastore.clone(),
                expected_uid: uid.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut leaves = Leaves::new();
        let mut revision = 0;
        while let Some(batch) = stream.message().await? {
            revision = batch.revision;
            for leaf in batch.leaves {
                leaves.insert(leaf.path, leaf.value.unwrap_or_default());
            }
        }
        Ok((revision, leaves))
    }

    async fn watch(&mut self) -> Result<Streaming<pb::SyncEvent>, Status> {
        self.partial = None;
        Ok(self
            .raw
            .watch_sync(pb::WatchSyncRequest {
                datastore: self.datastore.clone(),
                from_revision: self.from_revision,
                expected_uid: self.uid.clone(),
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    /// The watch ended with `status`: resume it, relist, or give up.
    fn cut(&mut self, status: Status) -> Result<Option<Event>, Error> {
        self.stream = None;
        self.partial = None;
        if status.code() == Code::OutOfRange {
            self.relist = Some(Some(status));
            return Ok(None);
        }
        if status.code() == Code::FailedPrecondition {
            self.uid_refused = true;
            self.relist = Some(Some(status));
            return Ok(None);
        }
        if !crate::is_retryable(status.code()) {
            return Err(status.into());
        }
        // Where netsyncd says to resume: the first revision it did not send
        // whole. Without one (a broken connection), the revision after the
        // map's. One past the map's would leave a gap: list again instead.
        let next = self.revision + 1;
        match resume_revision(&status).unwrap_or(next) {
            from if from <= next => {
                self.from_revision = from;
                Ok(Some(Event::Cut {
                    status,
                    from_revision: from,
                }))
            }
            _ => {
                self.relist = Some(Some(status));
                Ok(None)
            }
        }
    }

    /// Waits before the next attempt after a retryable `status`; returns the
    /// error for any other.
    async fn retry_or_fail(&mut self, status: Status) -> Result<(), Error> {
        if !crate::is_retryable(status.code()) {
            return Err(status.into());
        }
        let backoff = Duration::from_millis(50)
            .saturating_mul(1 << self.failures.min(10))
            .min(self.max_backoff);
        self.failures += 1;
        tokio::time::sleep(backoff).await;
        Ok(())
    }

    /// Applies one event; `None` for a part of a revision still coming or a
    /// revision the map already holds (a resume from an earlier revision
    /// than the map's next).
    fn apply(&mut self, event: pb::SyncEvent) -> Option<Event> {
        let revision = event.revision;
        if !event.uid.is_empty() && event.uid != self.uid {
            // netsyncd checks expected_uid when the watch opens, so this is
            // not expected; an event of another incarnation must not reach
            // the map all the same.
            self.stream = None;
            self.partial = None;
            self.uid_refused = true;
            self.relist = Some(Some(Status::failed_precondition(format!(
                "the watch of {:?} sent an event of uid {:?}, not {:?}",
                self.datastore, event.uid, self.uid
            ))));
            return None;
        }
        match event.event? {
            pb::sync_event::Event::Commit(part) => {
                if revision <= self.revision {
                    return None;
                }
                let partial = self.partial.get_or_insert_with(|| Partial {
                    revision,
                    replace: part.replace,
                    updates: Vec::new(),
                    deletes: Vec::new(),
                });
                if partial.revision != revision || revision != self.revision + 1 {
                    // Parts of two revisions mixed, or a revision skipped:
                    // not what netsyncd sends, and the map cannot be
                    // trusted past it. Start over from a list.
                    self.stream = None;
                    self.partial = None;
                    self.relist = Some(Some(Status::data_loss(format!(
                        "the watch of {:?} sent revision {revision} after {}",
                        self.datastore, self.revision
                    ))));
                    return None;
                }
                partial.updates.extend(part.updates);
                partial.deletes.extend(part.deletes);
                if part.more {
                    return None;
                }
                let whole = self.partial.take()?;
                let (updated, deleted) = (whole.updates.len(), whole.deletes.len());
                for path in &whole.deletes {
                    self.leaves.remove(path);
                }
                let mut updated_paths = Vec::with_capacity(updated);
                for leaf in whole.updates {
                    updated_paths.push(leaf.path.clone());
                    self.leaves
                        .insert(leaf.path, leaf.value.unwrap_or_default());
                }
                self.revision = revision;
                self.from_revision = revision + 1;
                Some(Event::Applied {
                    revision,
                    replace: whole.replace,
                    updated,
                    deleted,
                    updated_paths,
                    deleted_paths: whole.deletes,
                })
            }
            pb::sync_event::Event::StateChanged(state) => {
                Some(Event::StateChanged { revision, state })
            }
            pb::sync_event::Event::Revert(revert) => Some(Event::Revert { revision, revert }),
            // Events of a watch of many datastores; this one watches one.
            pb::sync_event::Event::Baseline(_)
            | pb::sync_event::Event::Left(_)
            | pb::sync_event::Event::Progress(_) => None,
        }
    }
}

/// The revision a cut watch resumes from: the `from_revision` of the
/// status's ErrorInfo, else (a netsyncd from before error details) the one
/// its message names ("... resume with from_revision=N").
fn resume_revision(status: &Status) -> Option<u64> {
    use tonic_types::StatusExt as _;
    if let Some(from) = status
        .get_details_error_info()
        .and_then(|info| info.metadata.get("from_revision").cloned())
    {
        return from.parse().ok();
    }
    let (_, after) = status.message().split_once("from_revision=")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_revision_is_read_from_the_error_info_else_the_message() {
        let text = |m: &str| resume_revision(&Status::unavailable(m));
        assert_eq!(
            text("netsyncd is shutting down; resume with from_revision=42"),
            Some(42)
        );
        assert_eq!(text("from_revision=7"), Some(7));
        assert_eq!(text("from_revision=, no number"), None);
        assert_eq!(text("transport error"), None);

        use tonic_types::{ErrorDetails, StatusExt as _};
        let detailed = Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "the text names another: from_revision=1",
            ErrorDetails::with_error_info(
                "WATCHER_LAGGED",
                "netsync.dev",
                [("from_revision".to_string(), "9".to_string())],
            ),
        );
        assert_eq!(resume_revision(&detailed), Some(9));
    }
}
