//! The syncs of every datastore in this process: started at CreateDatastore and
//! at start-up, stopped at DeleteDatastore and at shutdown; and the datastores
//! whose stored rows could not be loaded, held STOPPED.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use futures::future::BoxFuture;
use netsync_core::device::{GnmiTarget, RequestStream, ResponseStream, Target, TargetError};
use netsync_core::intent::Intent;
use netsync_core::sync::{RevertEvent, RevertPhase, Snapshot, SyncHandle, SyncLimits};
use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;

use crate::convert;
use crate::error::Error;
use crate::intent_status::{IntentStatus, Tracker};
use crate::jobs::{self, Trigger};
use crate::log::CommitLog;
use crate::reconcile::{JobStats, ReconcileConfig, Worker};
use crate::status_record::{self, Recorder};
use crate::store::{DatastoreRow, Store, StoredDatastore};

/// One datastore's running parts: its sync and its reconcile worker.
struct Entry {
    sync: Arc<SyncHandle>,
    /// The incarnation synced: the datastore's stored uid.
    uid: String,
    /// Wakes the reconcile worker when a job is queued.
    wake: Arc<Notify>,
    /// Serialises intent writes of this datastore with each other and with
    /// the planning of reconcile jobs (never held across a Set).
    lock: Arc<tokio::sync::Mutex<()>>,
    stop_worker: watch::Sender<bool>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Intent statuses and the reconcile worker's memory.
    tracker: Arc<Tracker>,
    /// Reconcile jobs that ended, and worker restarts, for metrics.
    jobs: Arc<JobStats>,
    /// Stored intents that today's validation refuses, as stored, by name:
    /// shown (FAILING, see [`Tracker::unusable`]), never planned.
    unusable: Mutex<BTreeMap<String, pb::Intent>>,
    /// The datastore's labels, for watches of many datastores.
    labels: Mutex<BTreeMap<String, String>>,
    /// Replica mode: records the intent statuses in the database.
    recorder: Mutex<Option<Recorder>>,
}

impl Entry {
    fn member(&self) -> Member {
        Member {
            sync: self.sync.clone(),
            uid: self.uid.clone(),
            labels: self.labels.lock().expect("lock").clone(),
        }
    }
}

/// A datastore this process syncs, as a watch of many datastores sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its sync.
    pub sync: Arc<SyncHandle>,
    /// The incarnation synced.
    pub uid: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Every running sync, by datastore name.
pub struct Engine {
    store: Store,
    log: Arc<CommitLog>,
    limits: SyncLimits,
    reconcile: ReconcileConfig,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Stored datastores that could not be loaded at start, with the reason
    /// their status shows as last error. A name is in `entries` or here, never
    /// both.
    ///
    /// Such a datastore is held as a name and a reason, not as a
    /// [`SyncHandle`] born stopped: with no handle, nothing can sync it (a
    /// sync from a wrong base would commit a revision on top of lost
    /// history), no reconcile worker runs for it, and no read, watch or
    /// intent write can reach it. Every call that needs the sync fails closed
    /// as it does for a missing datastore, and [`Engine::stopped`] lets it say
    /// why instead. It leaves by [`Engine::stop`] (DeleteDatastore), after
    /// which it can be created again.
    stopped: Mutex<HashMap<String, String>>,
    /// Counts changes of the set of syncs and of their labels: a watch of
    /// many datastores looks at [`Engine::members`] again when it moves.
    members_changed: watch::Sender<u64>,
    /// Held across a restart, so that two updates of one datastore (made
    /// here and noticed from another replica) never run two restarts at
    /// once; see [`Engine::take_update`].
    restarting: tokio::sync::Mutex<()>,
}

/// What [`Engine::take_update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The declaration changed: the sync restarted with it.
    Restarted,
    /// Only the labels changed.
    Relabelled,
    /// Nothing changed.
    Unchanged,
    /// The datastore is not synced here (or another incarnation is).
    NotSynced,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine committing through `log` and queueing jobs in `store`.
    pub fn new(
        store: Store,
        log: Arc<CommitLog>,
        limits: SyncLimits,
        reconcile: ReconcileConfig,
    ) -> Self {
        Self {
            store,
            log,
            limits,
            reconcile,
            entries: Mutex::new(HashMap::new()),
            stopped: Mutex::new(HashMap::new()),
            members_changed: watch::Sender::new(0),
            restarting: tokio::sync::Mutex::new(()),
        }
    }

    /// Every running sync with its uid and labels.
    pub fn members(&self) -> Vec<Member> {
        self.entries
            .lock()
            .expect("lock")
            .values()
            .map(|e| e.member())
            .collect()
    }

    /// The running sync of `name` with its uid and labels.
    pub fn member(&self, name: &str) -> Option<Member> {
        self.entries
            .lock()
            .expect("lock")
            .get(name)
            .map(|e| e.member())
    }

    /// Moves whenever a sync starts or stops or a datastore's labels change
    /// (a restart moves it once, after the new sync started).
    pub fn members_changed(&self) -> watch::Receiver<u64> {
        self.members_changed.subscribe()
    }

    fn announce_members(&self) {
        self.members_changed.send_modify(|n| *n += 1);
    }

    /// Sets the labels of `name` (UpdateDatastore of its labels alone).
    pub fn set_labels(&self, name: &str, labels: &BTreeMap<String, String>) {
        if let Some(entry) = self.entries.lock().expect("lock").get(name) {
            *entry.labels.lock().expect("lock") = labels.clone();
        }
        self.announce_members();
    }

    /// The change log.
    pub fn log(&self) -> &Arc<CommitLog> {
        &self.log
    }

    /// Starts syncing a stored datastore: running and intents as the store has
    /// them, and any reconcile job left from before. If either cannot be
    /// loaded, the datastore is held STOPPED instead ([`Engine::hold_stopped`])
    /// with a last error naming the part, and the details go to the log: one
    /// datastore's damaged rows keep no other from being served.
    ///
    /// Stored intents go through the validation and flattening SetIntent
    /// applies today (an intent written by an older netsync may hold a JSON
    /// object in a leaf, or a path outside `sync.paths`). One that fails it
    /// does not stop the datastore: it stays visible (GetIntent,
    /// ListIntents) as FAILING with the reason as its last error, is never
    /// sent to the device, and is logged; SetIntent replaces it,
    /// DeleteIntent removes it.
    ///
    /// In replica mode, intents start from the statuses an earlier owner
    /// recorded (see [`crate::status_record`]): a FAILING intent stays
    /// FAILING across a failover, as it would on the same process, instead
    /// of being tried again at once.
    pub async fn start(&self, ds: &StoredDatastore) {
        self.start_quietly(ds, true).await;
        self.announce_members();
    }

    /// [`Engine::start`], without announcing the change of members;
    /// `restore`: whether intents start from their recorded statuses
    /// (replica mode) rather than PENDING.
    async fn start_quietly(&self, ds: &StoredDatastore, restore: bool) {
        let spec = &ds.spec;
        // Replica mode: the lease epoch this sync starts under (none if the
        // lease went meanwhile: a later order stops the sync).
        let epoch = self.store.writer().epoch_of(&spec.name).ok().flatten();
        // A replica starts only what it holds the lease of: a sync started
        // after its lease went (a restart racing the lease manager) would
        // run beside the new owner's, out of the lease rounds' sight.
        if self.store.writer().fence().is_some() && epoch.is_none() {
            tracing::warn!(datastore = %spec.name, "not started: this replica no longer holds its lease");
            return;
        }
        let loaded = match self.log.load(&spec.name).await {
            Ok(initial) => match self.load_intents(&spec.name, epoch.is_some()).await {
                Ok(intents) => Ok((initial, intents)),
                Err(error) => Err(("intents", error)),
            },
            Err(error) => Err(("running", error)),
        };
        match loaded {
            Ok((initial, stored)) => {
                let mut intents = Vec::new();
                let mut unusable = Vec::new();
                let mut statuses = HashMap::new();
                for (proto, status) in stored {
                    if let Some(status) = status {
                        statuses.insert(proto.name.clone(), status);
                    }
                    match convert::check_stored_intent(spec, proto.clone()) {
                        Ok(intent) => intents.push(intent),
                        Err(error) => {
                            tracing::error!(datastore = %spec.name, intent = %proto.name, %error, "stored intent refused by today's validation");
                            unusable.push((proto, error));
                        }
                    }
                }
                let recording = epoch.map(|epoch| Recording {
                    epoch,
                    stored: statuses,
                    restore,
                });
                self.start_with(ds, initial, intents, unusable, recording);
            }
            Err((part, error)) => {
                tracing::error!(datastore = %spec.name, %error, "cannot load {part}: the datastore stays stopped until it is deleted");
                self.hold_stopped(&spec.name, load_failure(part, &error));
            }
        }
    }

    /// Holds a stored datastore that cannot be loaded: STOPPED, with `reason`
    /// as its last error, never synced or written to, until it is deleted.
    pub fn hold_stopped(&self, name: &str, reason: String) {
        debug_assert!(
            !self.entries.lock().expect("lock").contains_key(name),
            "a datastore is synced or held stopped, not both"
        );
        self.stopped
            .lock()
            .expect("lock")
            .insert(name.to_string(), reason);
    }

    /// Why `name` is held stopped, if it is (see [`Engine::hold_stopped`]).
    pub fn stopped(&self, name: &str) -> Option<String> {
        self.stopped.lock().expect("lock").get(name).cloned()
    }

    /// Starts syncing a datastore that has nothing stored yet.
    pub fn start_new(&self, ds: &StoredDatastore) {
        let recording = self
            .store
            .writer()
            .epoch_of(&ds.spec.name)
            .ok()
            .flatten()
            .map(|epoch| Recording {
                epoch,
                stored: HashMap::new(),
                restore: false,
            });
        self.start_with(ds, Snapshot::default(), Vec::new(), Vec::new(), recording);
        self.announce_members();
    }

    /// The stored intents of `name`, with their recorded statuses if
    /// `with_statuses` (replica mode): read in the one statement that reads
    /// the intents, so that a failover, which starts syncs one after the
    /// other, pays no extra round trip per datastore for them.
    async fn load_intents(
        &self,
        name: &str,
        with_statuses: bool,
    ) -> Result<Vec<(pb::Intent, Option<IntentStatus>)>, Error> {
        if with_statuses {
            return status_record::intents_with_statuses(&self.store, name, None).await;
        }
        let intents = self.store.list_intents(name).await?;
        Ok(intents.into_iter().map(|proto| (proto, None)).collect())
    }

    fn start_with(
        &self,
        ds: &StoredDatastore,
        initial: Snapshot,
        intents: Vec<Intent>,
        unusable: Vec<(pb::Intent, String)>,
        recording: Option<Recording>,
    ) {
        let (spec, uid) = (&ds.spec, ds.uid.as_str());
        if self.entries.lock().expect("lock").contains_key(&spec.name) {
            // Two syncs of one datastore would both commit its revisions.
            tracing::error!(datastore = %spec.name, "already synced; not started again");
            return;
        }
        let max_message_bytes = self.limits.caps(&spec.sync).max_message_bytes;
        let target: Arc<dyn Target> = match GnmiTarget::new(&spec.target, max_message_bytes) {
            Ok(target) => Arc::new(target),
            Err(error) => Arc::new(Unusable(error)),
        };
        let sync = Arc::new(SyncHandle::start(
            spec.clone(),
            target,
            self.log.clone(),
            initial,
            self.limits.clone(),
        ));
        sync.prepare_events_with(crate::watch::event_preparer(
            spec.name.clone(),
            uid.to_string(),
        ));
        // Every loaded intent starts PENDING (in replica mode, as recorded):
        // the worker marks APPLIED those PENDING that running holds once the
        // sync is IN_SYNC.
        let tracker = Arc::new(Tracker::new(intents.iter().map(|i| i.name.clone())));
        if let Some(recording) = recording.as_ref().filter(|r| r.restore) {
            tracker.restore(&recording.stored);
        }
        for intent in intents {
            sync.set_intent(intent);
        }
        let unusable = unusable
            .into_iter()
            .map(|(proto, error)| {
                tracker.unusable(&proto.name, error);
                (proto.name.clone(), proto)
            })
            .collect();
        let recorder = recording.map(|recording| {
            Recorder::start(
                spec.name.clone(),
                tracker.clone(),
                recording.stored,
                status_record::database_sink(
                    self.store.writer().clone(),
                    spec.name.clone(),
                    Some(recording.epoch),
                ),
            )
        });
        let wake = Arc::new(Notify::new());
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let (stop_worker, stopped) = watch::channel(false);
        let jobs = Arc::new(JobStats::default());
        let worker = Worker {
            sync: sync.clone(),
            store: self.store.clone(),
            config: self.reconcile.clone(),
            wake: wake.clone(),
            lock: lock.clone(),
            tracker: tracker.clone(),
            stats: jobs.clone(),
        };
        let span = tracing::info_span!(parent: None, "reconcile_worker", datastore = %spec.name);
        let entry = Arc::new(Entry {
            sync,
            uid: uid.to_string(),
            wake,
            lock,
            stop_worker,
            worker: Mutex::new(Some(tokio::spawn(worker.run(stopped).instrument(span)))),
            tracker,
            jobs,
            unusable: Mutex::new(unusable),
            labels: Mutex::new(ds.labels.clone()),
            recorder: Mutex::new(recorder),
        });
        let old = self
            .entries
            .lock()
            .expect("lock")
            .insert(spec.name.clone(), entry);
        debug_assert!(old.is_none(), "a datastore is synced once");
    }

    /// How many datastores there are, synced or held stopped.
    pub fn count(&self) -> usize {
        self.entries.lock().expect("lock").len() + self.stopped.lock().expect("lock").len()
    }

    /// The sync of `name`, if it runs.
    pub fn get(&self, name: &str) -> Option<Arc<SyncHandle>> {
        self.entries
            .lock()
            .expect("lock")
            .get(name)
            .map(|e| e.sync.clone())
    }

    /// The sync of `name`, if it runs, with the uid of the incarnation it
    /// syncs: read together, so that the two always belong to each other.
    pub fn get_with_uid(&self, name: &str) -> Option<(Arc<SyncHandle>, String)> {
        self.entries
            .lock()
            .expect("lock")
            .get(name)
            .map(|e| (e.sync.clone(), e.uid.clone()))
    }

    /// Every running datastore's sync, reconcile counters and tracker,
    /// sorted by name.
    pub fn datastores(&self) -> Vec<(Arc<SyncHandle>, Arc<JobStats>, Arc<Tracker>)> {
        let mut all: Vec<_> = self
            .entries
            .lock()
            .expect("lock")
            .values()
            .map(|e| (e.sync.clone(), e.jobs.clone(), e.tracker.clone()))
            .collect();
        all.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        all
    }

    /// Holds off the planning of reconcile jobs of `name`, and other intent
    /// writes, while an intent is written, so the store, the engine and the
    /// device see intent changes one at a time. Jobs hold it only to plan, so
    /// this never waits for a device.
    pub async fn intent_lock(&self, name: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = self
            .entries
            .lock()
            .expect("lock")
            .get(name)
            .map(|e| e.lock.clone())?;
        Some(lock.lock_owned().await)
    }

    /// The reconcile tracker of `name`, if it runs.
    fn tracker(&self, name: &str) -> Option<Arc<Tracker>> {
        self.entries
            .lock()
            .expect("lock")
            .get(name)
            .map(|e| e.tracker.clone())
    }

    /// The entry of `name`, if it runs.
    fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries.lock().expect("lock").get(name).cloned()
    }

    /// Intent `intent` of `name` was written (under [`Engine::intent_lock`]):
    /// it is PENDING, its failures are forgotten (an unusable stored form is
    /// replaced), and a running job plans again. Returns its status.
    pub fn intent_written(&self, name: &str, intent: &str) -> IntentStatus {
        let Some(entry) = self.entry(name) else {
            return IntentStatus::pending();
        };
        entry.unusable.lock().expect("lock").remove(intent);
        entry.tracker.written(intent)
    }

    /// Intent `intent` of `name` was deleted (under
    /// [`Engine::intent_lock`]); a running job plans again.
    pub fn intent_removed(&self, name: &str, intent: &str) {
        if let Some(entry) = self.entry(name) {
            entry.unusable.lock().expect("lock").remove(intent);
            entry.tracker.removed(intent);
        }
    }

    /// Reloads the intents of `name` from the database and applies what
    /// differs from memory (replica mode: written or deleted on another
    /// replica), under [`Engine::intent_lock`] so that this replica's own
    /// writes, which hold it from their store write to their memory update,
    /// are seen whole: reloading after one of them changes nothing. Each
    /// intent written elsewhere is PENDING and makes a running job plan
    /// again, as a write here does; one that today's validation refuses is
    /// held aside as at start. Returns whether anything changed.
    pub async fn reload_intents(&self, name: &str) -> Result<bool, Error> {
        let Some(entry) = self.entry(name) else {
            return Ok(false);
        };
        let _writing = entry.lock.clone().lock_owned().await;
        let stored = self.store.list_intents(name).await?;
        let spec = entry.sync.spec();
        let mut changed = false;
        let mut names = std::collections::BTreeSet::new();
        for proto in stored {
            names.insert(proto.name.clone());
            let held = entry.sync.intent(&proto.name);
            // Equal as stored, or as validated (an intent loaded at start
            // from an older netsync's form): either way nothing changed.
            let same = |intent: &Intent| {
                held.as_ref()
                    .is_some_and(|h| h == intent || convert::intent_to_proto(h) == proto)
            };
            match convert::intent_for_datastore(proto.clone(), "intent", spec) {
                Ok(intent) => {
                    let was_unusable = entry
                        .unusable
                        .lock()
                        .expect("lock")
                        .contains_key(&intent.name);
                    if was_unusable || !same(&intent) {
                        tracing::info!(datastore = %name, intent = %intent.name, "intent written on another replica picked up");
                        entry.unusable.lock().expect("lock").remove(&intent.name);
                        entry.tracker.written(&intent.name);
                        entry.sync.set_intent(intent);
                        changed = true;
                    }
                }
                Err(e) => {
                    let mut unusable = entry.unusable.lock().expect("lock");
                    if unusable.get(&proto.name) != Some(&proto) {
                        let error = format!(
                            "the stored intent cannot be used: {} {}; it is not sent to the \
                             device until SetIntent replaces it (DeleteIntent removes it)",
                            e.field, e.message
                        );
                        tracing::error!(datastore = %name, intent = %proto.name, %error, "stored intent refused by today's validation");
                        entry.sync.remove_intent(&proto.name);
                        entry.tracker.unusable(&proto.name, error);
                        unusable.insert(proto.name.clone(), proto);
                        changed = true;
                    }
                }
            }
        }
        let gone: Vec<String> = entry
            .sync
            .intents()
            .into_iter()
            .map(|i| i.name)
            .chain(entry.unusable.lock().expect("lock").keys().cloned())
            .filter(|n| !names.contains(n))
            .collect();
        for intent in gone {
            tracing::info!(datastore = %name, %intent, "intent deleted on another replica picked up");
            entry.sync.remove_intent(&intent);
            entry.unusable.lock().expect("lock").remove(&intent);
            entry.tracker.removed(&intent);
            changed = true;
        }
        Ok(changed)
    }

    /// Stored intent `intent` of `name` that today's validation refuses, as
    /// stored, with its (FAILING) status; see [`Engine::start`].
    pub fn unusable_intent(&self, name: &str, intent: &str) -> Option<pb::Intent> {
        let entry = self.entry(name)?;
        let proto = entry.unusable.lock().expect("lock").get(intent).cloned()?;
        Some(convert::unusable_intent_view(
            proto,
            &entry.tracker.status(intent),
        ))
    }

    /// Every stored intent of `name` that today's validation refuses, by
    /// name, with its status.
    pub fn unusable_intents(&self, name: &str) -> Vec<pb::Intent> {
        let Some(entry) = self.entry(name) else {
            return Vec::new();
        };
        let names: Vec<String> = entry
            .unusable
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        names
            .iter()
            .filter_map(|intent| self.unusable_intent(name, intent))
            .collect()
    }

    /// The FAILING intents of `name` now.
    pub fn failing_intents(&self, name: &str) -> std::collections::BTreeSet<String> {
        self.tracker(name).map(|t| t.failing()).unwrap_or_default()
    }

    /// The status of intent `intent` of `name`.
    pub fn intent_status(&self, name: &str, intent: &str) -> IntentStatus {
        self.tracker(name)
            .map_or_else(IntentStatus::pending, |t| t.status(intent))
    }

    /// `name` is being resynced: FAILING intents are PENDING again, every
    /// failure is forgotten, and those intents are queued to be applied
    /// (revertive or not), so that auto-revert resumes. If the store cannot
    /// queue that now, revertive ones still resume with the next revert;
    /// the others wait to be written again (logged).
    pub async fn resynced(&self, name: &str) {
        let Some(tracker) = self.tracker(name) else {
            return;
        };
        let _writing = self.intent_lock(name).await;
        let were_failing = tracker.resynced();
        if were_failing.is_empty() {
            return;
        }
        tracing::info!(datastore = %name, intents = ?were_failing, "resync: failing intents are applied again");
        let triggers = were_failing.into_iter().map(Trigger::Apply).collect();
        match jobs::enqueue_all(self.store.writer(), name, triggers).await {
            Ok(created) => self.queued(name, created),
            Err(error) => {
                tracing::warn!(datastore = %name, %error, "resync: cannot queue the failing intents to be applied again")
            }
        }
    }

    /// A reconcile job of `name` was written to the queue (`created`: a new
    /// one, rather than merged into a queued one): announces it and wakes the
    /// worker.
    pub fn queued(&self, name: &str, created: bool) {
        let entry = self.entries.lock().expect("lock").get(name).cloned();
        if let Some(entry) = entry {
            if created {
                entry.sync.publish_revert(RevertEvent {
                    phase: RevertPhase::Queued,
                    attempt: 0,
                    updates: Vec::new(),
                    deletes: Vec::new(),
                    error: String::new(),
                });
            }
            entry.wake.notify_one();
        }
    }

    /// Stops the sync and the worker of `name` and waits for them to end (or
    /// lets go of it, if it is held stopped).
    pub async fn stop(&self, name: &str) {
        // Not in the middle of a restart, which would start the sync again
        // after this stop found nothing to stop.
        let _one = self.restarting.lock().await;
        self.stop_quietly(name).await;
        self.announce_members();
    }

    /// [`Engine::stop`], without announcing the change of members.
    async fn stop_quietly(&self, name: &str) {
        self.stopped.lock().expect("lock").remove(name);
        let entry = self.entries.lock().expect("lock").remove(name);
        if let Some(entry) = entry {
            stop_entry(entry).await;
        }
        self.log.forget(name);
    }

    /// Restarts the sync of `name` with a changed declaration (UpdateDatastore):
    /// stops it and starts it again from what is stored, so revisions continue
    /// from the last commit, intents are kept (PENDING again until confirmed),
    /// and the new connection's first commit is a replace. Open watches of the
    /// old sync end; watching again from a revision continues with no gap.
    /// Watches of many datastores see it as one change, after the new sync
    /// started (never the datastore gone in between).
    pub async fn restart(&self, ds: &StoredDatastore) {
        let _one = self.restarting.lock().await;
        self.restart_now(ds).await;
    }

    async fn restart_now(&self, ds: &StoredDatastore) {
        self.stop_quietly(&ds.spec.name).await;
        self.start_quietly(ds, false).await;
        self.announce_members();
    }

    /// Brings the sync of `ds` (if this incarnation is synced here) to its
    /// stored row, as read after an UpdateDatastore made on another replica:
    /// restarts it if its declaration changed ([`Engine::restart`]), else
    /// takes its labels. One at a time with [`Engine::restart`], and judged
    /// under the same lock, so an update made here and noticed again
    /// restarts the sync once.
    pub async fn take_update(&self, ds: &StoredDatastore) -> Update {
        let _one = self.restarting.lock().await;
        // The row as it is now: `ds` was read before the lock, and an update
        // made meanwhile (and restarted for) must not be undone by it.
        let ds = match self.store.get_datastore_row(&ds.spec.name).await {
            Ok(DatastoreRow::Readable(row)) => row,
            // Deleted, unusable or unreadable now: nothing to take here.
            _ => return Update::Unchanged,
        };
        let ds = &ds;
        let Some(member) = self.member(&ds.spec.name) else {
            return Update::NotSynced;
        };
        if member.uid != ds.uid {
            Update::NotSynced
        } else if *member.sync.spec() != ds.spec {
            self.restart_now(ds).await;
            Update::Restarted
        } else if member.labels != ds.labels {
            self.set_labels(&ds.spec.name, &ds.labels);
            Update::Relabelled
        } else {
            Update::Unchanged
        }
    }

    /// Stops everything.
    pub async fn stop_all(&self) {
        self.stopped.lock().expect("lock").clear();
        let entries: Vec<_> = self
            .entries
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, e)| e)
            .collect();
        for entry in entries {
            stop_entry(entry).await;
        }
        self.announce_members();
    }
}

/// A load failure in words for the datastore's status: which part, and what
/// of it when the data itself is damaged. Store failures say no more: their
/// text (SQL, driver errors) is for the log.
fn load_failure(part: &str, error: &Error) -> String {
    match error {
        Error::Damaged { what, .. } => format!("cannot load {part}: {what}"),
        _ => {
            format!("cannot load {part}: the store cannot read it; the server log has the details")
        }
    }
}

/// Stops a datastore's worker and sync and waits for them, even while
/// readers still hold the sync handle.
async fn stop_entry(entry: Arc<Entry>) {
    let _ = entry.stop_worker.send(true);
    let worker = entry.worker.lock().expect("lock").take();
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    entry.sync.stop().await;
    // Once the worker changes no status any more: the last ones recorded
    // (under the epoch the sync started with, before the lease is freed)
    // are those the next owner starts from. After the sync's stop, which a
    // lease not renewed in time wants at once, whatever the database does.
    let recorder = entry.recorder.lock().expect("lock").take();
    if let Some(recorder) = recorder {
        recorder.stop().await;
    }
}

/// How a sync started in replica mode records its intents' statuses.
struct Recording {
    /// The lease epoch the sync was started under: its recordings are
    /// fenced by it.
    epoch: i64,
    /// What the table holds for the datastore now.
    stored: HashMap<String, IntentStatus>,
    /// Whether the intents start from `stored` (a takeover or a start)
    /// rather than PENDING (a restart by UpdateDatastore, as on a single
    /// netsyncd).
    restore: bool,
}

/// A target that cannot be built (e.g. unsupported settings): every call fails
/// with the reason, which the sync reports as its last error.
struct Unusable(TargetError);

impl Target for Unusable {
    fn subscribe(
        &self,
        _requests: RequestStream,
    ) -> BoxFuture<'_, Result<ResponseStream, TargetError>> {
        Box::pin(async { Err(self.0.clone()) })
    }

    fn get(
        &self,
        _request: gnmi::GetRequest,
    ) -> BoxFuture<'_, Result<gnmi::GetResponse, TargetError>> {
        Box::pin(async { Err(self.0.clone()) })
    }

    fn set(
        &self,
        _request: gnmi::SetRequest,
    ) -> BoxFuture<'_, Result<gnmi::SetResponse, TargetError>> {
        Box::pin(async { Err(self.0.clone()) })
    }

    fn capabilities(&self) -> BoxFuture<'_, Result<gnmi::CapabilityResponse, TargetError>> {
        Box::pin(async { Err(self.0.clone()) })
    }
}
