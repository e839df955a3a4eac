//! The fleet reflector: local copies of the running of every datastore whose
//! labels match a selector, kept up to date through one watch of many
//! datastores (WatchSync with `label_selector`).
//!
//! netsyncd opens such a watch with a `Baseline` per datastore: the events
//! that follow continue after that revision, so the reflector reads running
//! at it (GetRunning `revision`, or nothing at revision 0) and applies what
//! follows. `Left` drops a copy. Each `Progress` event's resume token is
//! kept: a watch cut or broken (netsyncd restarting, the connection lost) is
//! resumed with it, and every datastore continues exactly where the token
//! was. Without a token (before the first Progress), or with one netsyncd
//! refuses, it starts over: copies are replaced by new Baselines.
//!
//! Each copy only ever holds whole revisions (the parts of a large commit
//! wait for the last one), and revisions are applied in order: a gap (which
//! netsyncd never sends) makes the reflector start over rather than hold a
//! wrong copy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tonic::{Code, Status, Streaming};

use crate::{Error, Leaves, RawClient, pb};

/// What [`FleetReflector::next`] did.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    /// A datastore's copy was read whole: it entered the watch, or netsyncd
    /// rebased it (its next revision was no longer kept).
    Listed {
        /// The datastore.
        datastore: String,
        /// The revision its copy is at.
        revision: u64,
        /// netsyncd's reason ("matches the selector", "created", ...).
        reason: String,
    },
    /// One revision of a datastore was applied to its copy.
    Applied {
        /// The datastore.
        datastore: String,
        /// The revision its copy is now at.
        revision: u64,
        /// A full resync of the device.
        replace: bool,
        /// Leaves set.
        updated: usize,
        /// Leaves removed.
        deleted: usize,
    },
    /// A datastore left the watch (deleted, or relabelled away); its copy is
    /// gone.
    Left {
        /// The datastore.
        datastore: String,
        /// netsyncd's reason.
        reason: String,
    },
    /// A datastore's sync changed state (no copy changes).
    StateChanged {
        /// The datastore.
        datastore: String,
        /// The revision it was observed at.
        revision: u64,
        /// The new state and why.
        state: pb::StateChanged,
    },
    /// The watch ended with `status`; the next call resumes it (with the
    /// last resume token, or from scratch when there is none).
    Cut {
        /// What ended it.
        status: Status,
        /// Whether it resumes with a token (false: every copy is read again).
        resumes: bool,
    },
}

/// One datastore's copy.
#[derive(Debug, Clone, Default)]
struct Copy {
    uid: String,
    revision: u64,
    leaves: Leaves,
    /// Parts of the next revision received so far.
    partial: Option<(u64, pb::Commit)>,
}

/// Local copies of every datastore matching a label selector; see the module
/// documentation. Driven by its caller, like [`crate::Reflector`].
pub struct FleetReflector {
    raw: RawClient,
    selector: String,
    copies: BTreeMap<String, Copy>,
    /// Datastores whose Baseline could not be read because they were
    /// deleted (or created again) right after it: their events are ignored
    /// until the `Left` that follows.
    gone: BTreeSet<String>,
    /// The last Progress event's token; empty: none yet.
    token: String,
    stream: Option<Streaming<pb::SyncEvent>>,
    /// Calls that failed in a row, for the backoff before the next attempt.
    failures: u32,
    max_backoff: Duration,
}

impl std::fmt::Debug for FleetReflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetReflector")
            .field("selector", &self.selector)
            .field("datastores", &self.copies.len())
            .field("watching", &self.stream.is_some())
            .finish()
    }
}

impl FleetReflector {
    pub(crate) fn new(raw: RawClient, selector: &str) -> Self {
        Self {
            raw,
            selector: selector.into(),
            copies: BTreeMap::new(),
            gone: BTreeSet::new(),
            token: String::new(),
            stream: None,
            failures: 0,
            max_backoff: Duration::from_secs(2),
        }
    }

    /// The datastores followed, by name, with the revision of each copy.
    pub fn datastores(&self) -> BTreeMap<String, u64> {
        self.copies
            .iter()
            .map(|(name, copy)| (name.clone(), copy.revision))
            .collect()
    }

    /// The copy of `datastore`'s running and its revision, if followed.
    pub fn running(&self, datastore: &str) -> Option<(u64, &Leaves)> {
        self.copies
            .get(datastore)
            .map(|copy| (copy.revision, &copy.leaves))
    }

    /// The token the next watch resumes with (empty: none yet).
    pub fn resume_token(&self) -> &str {
        &self.token
    }

    /// Waits for the next change and applies it. Errors that another attempt
    /// may overcome (netsyncd unreachable or restarting, a watch cut) are
    /// retried with a backoff, reported as [`FleetEvent::Cut`]; others (a bad
    /// selector, a refused certificate) are returned.
    pub async fn next(&mut self) -> Result<FleetEvent, Error> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                continue;
            };
            let status = match stream.message().await {
                Ok(Some(event)) => match self.apply(event).await {
                    Ok(Some(done)) => {
                        self.failures = 0;
                        return Ok(done);
                    }
                    Ok(None) => continue,
                    Err(status) => status,
                },
                Ok(None) => Status::unavailable("the watch ended without a status"),
                Err(status) => status,
            };
            self.stream = None;
            if !crate::is_retryable(status.code()) {
                return Err(status.into());
            }
            self.backoff().await;
            return Ok(FleetEvent::Cut {
                status,
                resumes: !self.token.is_empty(),
            });
        }
    }

    /// Opens the watch: with the token if there is one, else from scratch.
    async fn open(&mut self) -> Result<(), Error> {
        let request = pb::WatchSyncRequest {
            label_selector: self.selector.clone(),
            resume_token: self.token.clone(),
            ..Default::default()
        };
        match self.raw.watch_sync(request).await {
            Ok(response) => {
                if self.token.is_empty() {
                    // A watch from scratch sends a Baseline for every
                    // datastore it follows: copies it does not are gone.
                    self.copies.clear();
                    self.gone.clear();
                }
                self.stream = Some(response.into_inner());
                Ok(())
            }
            Err(status) if !self.token.is_empty() && names_the_token(&status) => {
                // A token this netsyncd does not take (another version):
                // start over.
                self.token.clear();
                Ok(())
            }
            Err(status) if crate::is_retryable(status.code()) => {
                self.backoff().await;
                Ok(())
            }
            Err(status) => Err(status.into()),
        }
    }

    async fn backoff(&mut self) {
        let backoff = Duration::from_millis(50)
            .saturating_mul(1 << self.failures.min(10))
            .min(self.max_backoff);
        self.failures += 1;
        tokio::time::sleep(backoff).await;
    }

    /// Applies one event; `None` when there is nothing to report yet (a
    /// part of a revision, a Progress, a revision a copy already holds).
    /// An error ends the watch.
    async fn apply(&mut self, event: pb::SyncEvent) -> Result<Option<FleetEvent>, Status> {
        let name = event.datastore.clone();
        let revision = event.revision;
        let Some(kind) = event.event else {
            return Ok(None);
        };
        match kind {
            pb::sync_event::Event::Progress(_) => {
                self.token = event.resume_token;
                Ok(None)
            }
            pb::sync_event::Event::Baseline(baseline) => {
                self.copies.remove(&name);
                self.gone.remove(&name);
                let copy = match self.list(&name, &event.uid, revision).await {
                    Ok(copy) => copy,
                    Err(status)
                        if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) =>
                    {
                        self.gone.insert(name);
                        return Ok(None);
                    }
                    Err(status) => return Err(status),
                };
                let revision = copy.revision;
                self.copies.insert(name.clone(), copy);
                Ok(Some(FleetEvent::Listed {
                    datastore: name,
                    revision,
                    reason: baseline.reason,
                }))
            }
            pb::sync_event::Event::Left(left) => {
                self.copies.remove(&name);
                self.gone.remove(&name);
                Ok(Some(FleetEvent::Left {
                    datastore: name,
                    reason: left.reason,
                }))
            }
            pb::sync_event::Event::StateChanged(state) => Ok(Some(FleetEvent::StateChanged {
                datastore: name,
                revision,
                state,
            })),
            pb::sync_event::Event::Revert(_) => Ok(None),
            pb::sync_event::Event::Commit(_) if self.gone.contains(&name) => Ok(None),
            pb::sync_event::Event::Commit(part) => {
                let Some(copy) = self.copies.get_mut(&name) else {
                    return Err(
                        self.start_over(format!("a commit of {name:?} before its Baseline"))
                    );
                };
                if event.uid != copy.uid {
                    return Err(self.start_over(format!(
                        "a commit of {name:?} of another incarnation than its Baseline"
                    )));
                }
                if revision <= copy.revision {
                    // Held already (a copy read past the Baseline).
                    return Ok(None);
                }
                let (at, whole) = copy
                    .partial
                    .get_or_insert_with(|| (revision, pb::Commit::default()));
                if *at != revision || revision != copy.revision + 1 {
                    let held = copy.revision;
                    return Err(self.start_over(format!(
                        "the watch sent revision {revision} of {name:?} after {held}"
                    )));
                }
                whole.replace |= part.replace;
                whole.updates.extend(part.updates);
                whole.deletes.extend(part.deletes);
                if part.more {
                    return Ok(None);
                }
                let (_, whole) = copy.partial.take().unwrap_or_default();
                let (updated, deleted) = (whole.updates.len(), whole.deletes.len());
                for path in &whole.deletes {
                    copy.leaves.remove(path);
                }
                for leaf in whole.updates {
                    copy.leaves
                        .insert(leaf.path, leaf.value.unwrap_or_default());
                }
                copy.revision = revision;
                Ok(Some(FleetEvent::Applied {
                    datastore: name,
                    revision,
                    replace: whole.replace,
                    updated,
                    deleted,
                }))
            }
        }
    }

    /// Drops the token so that the next watch starts over; the status that
    /// says why.
    fn start_over(&mut self, why: String) -> Status {
        self.token.clear();
        Status::aborted(format!("{why}; reading every datastore again"))
    }

    /// Running of `name` (incarnation `uid`) at `revision`: empty at 0. If
    /// that revision is no longer kept (compacted since the Baseline), the
    /// current running instead: the commits up to it are skipped.
    async fn list(&mut self, name: &str, uid: &str, revision: u64) -> Result<Copy, Status> {
        let mut copy = Copy {
            uid: uid.into(),
            revision,
            ..Copy::default()
        };
        if revision == 0 {
            return Ok(copy);
        }
        let mut request = pb::GetRunningRequest {
            datastore: name.into(),
            revision,
            expected_uid: uid.into(),
            ..Default::default()
        };
        let mut stream = match self.raw.get_running(request.clone()).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::OutOfRange => {
                request.revision = 0;
                request.min_revision = revision;
                self.raw.get_running(request).await?.into_inner()
            }
            Err(status) => return Err(status),
        };
        while let Some(batch) = stream.message().await? {
            copy.revision = batch.revision;
            for leaf in batch.leaves {
                copy.leaves
                    .insert(leaf.path, leaf.value.unwrap_or_default());
            }
        }
        Ok(copy)
    }
}

/// Whether `status` refuses the resume token (its BadRequest names the
/// field; the message does too, for a netsyncd without details).
fn names_the_token(status: &Status) -> bool {
    use tonic_types::StatusExt as _;
    if status.code() != Code::InvalidArgument {
        return false;
    }
    match status.get_details_bad_request() {
        Some(bad) => bad
            .field_violations
            .iter()
            .any(|violation| violation.field == "resume_token"),
        None => status.message().starts_with("resume_token"),
    }
}
