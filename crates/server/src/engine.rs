//! The syncs of every datastore in this process: started at CreateDatastore and
//! at start-up, stopped at DeleteDatastore and at shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use futures::future::BoxFuture;
use netsync_core::datastore::DatastoreSpec;
use netsync_core::device::{GnmiTarget, RequestStream, ResponseStream, Target, TargetError};
use netsync_core::intent::Intent;
use netsync_core::sync::{RevertEvent, RevertPhase, Snapshot, SyncHandle, SyncLimits};
use netsync_proto::gnmi;

use crate::error::Error;
use crate::log::CommitLog;
use crate::reconcile::{JobStats, ReconcileConfig, Worker};
use crate::store::Store;

/// One datastore's running parts: its sync and its reconcile worker.
struct Entry {
    sync: Arc<SyncHandle>,
    /// Wakes the reconcile worker when a job is queued.
    wake: Arc<Notify>,
    /// Serialises reconcile jobs with intent writes of this datastore.
    lock: Arc<tokio::sync::Mutex<()>>,
    stop_worker: watch::Sender<bool>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Reconcile jobs that ended, for metrics.
    jobs: Arc<JobStats>,
}

/// Every running sync, by datastore name.
pub struct Engine {
    store: Store,
    log: Arc<CommitLog>,
    limits: SyncLimits,
    reconcile: ReconcileConfig,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
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
        }
    }

    /// The change log.
    pub fn log(&self) -> &Arc<CommitLog> {
        &self.log
    }

    /// Starts syncing a stored datastore: running and intents as the store has
    /// them, and any reconcile job left from before.
    pub async fn start(&self, spec: &DatastoreSpec) -> Result<(), Error> {
        let initial = self.log.load(&spec.name).await?;
        let intents = self.store.list_intents(&spec.name).await?;
        self.start_with(spec, initial, intents);
        Ok(())
    }

    /// Starts syncing a datastore that has nothing stored yet.
    pub fn start_new(&self, spec: &DatastoreSpec) {
        self.start_with(spec, Snapshot::default(), Vec::new());
    }

    fn start_with(&self, spec: &DatastoreSpec, initial: Snapshot, intents: Vec<Intent>) {
        let target: Arc<dyn Target> = match GnmiTarget::new(&spec.target) {
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
        sync.prepare_events_with(crate::watch::event_preparer(spec.name.clone()));
        for intent in intents {
            sync.set_intent(intent);
        }
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
            stats: jobs.clone(),
        };
        let span = tracing::info_span!(parent: None, "reconcile_worker", datastore = %spec.name);
        let entry = Arc::new(Entry {
            sync,
            wake,
            lock,
            stop_worker,
            worker: Mutex::new(Some(tokio::spawn(worker.run(stopped).instrument(span)))),
            jobs,
        });
        let old = self
            .entries
            .lock()
            .expect("lock")
            .insert(spec.name.clone(), entry);
        debug_assert!(old.is_none(), "a datastore is synced once");
    }

    /// How many datastores are synced.
    pub fn count(&self) -> usize {
        self.entries.lock().expect("lock").len()
    }

    /// The sync of `name`, if it runs.
    pub fn get(&self, name: &str) -> Option<Arc<SyncHandle>> {
        self.entries
            .lock()
            .expect("lock")
            .get(name)
            .map(|e| e.sync.clone())
    }

    /// Every running datastore's sync and reconcile counters, sorted by name.
    pub fn datastores(&self) -> Vec<(Arc<SyncHandle>, Arc<JobStats>)> {
        let mut all: Vec<_> = self
            .entries
            .lock()
            .expect("lock")
            .values()
            .map(|e| (e.sync.clone(), e.jobs.clone()))
            .collect();
        all.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        all
    }

    /// Holds off reconcile jobs of `name` while an intent is written, so the
    /// store, the engine and the device see intent changes one at a time.
    pub async fn intent_lock(&self, name: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = self
            .entries
            .lock()
            .expect("lock")
            .get(name)
            .map(|e| e.lock.clone())?;
        Some(lock.lock_owned().await)
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

    /// Stops the sync and the worker of `name` and waits for them to end.
    pub async fn stop(&self, name: &str) {
        let entry = self.entries.lock().expect("lock").remove(name);
        if let Some(entry) = entry {
            stop_entry(entry).await;
        }
        self.log.forget(name);
    }

    /// Stops everything.
    pub async fn stop_all(&self) {
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
