//! The syncs of every datastore in this process: started at CreateDatastore and
//! at start-up, stopped at DeleteDatastore and at shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use netsync_core::datastore::DatastoreSpec;
use netsync_core::sync::{Snapshot, SyncHandle, SyncLimits};
use netsync_core::target::{GnmiTarget, RequestStream, ResponseStream, Target, TargetError};
use netsync_proto::gnmi;

use crate::error::Error;
use crate::log::CommitLog;
use crate::store::Store;

/// Every running sync, by datastore name.
pub struct Engine {
    log: Arc<CommitLog>,
    limits: SyncLimits,
    syncs: Mutex<HashMap<String, Arc<SyncHandle>>>,
    intent_writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine committing through `log`.
    pub fn new(log: Arc<CommitLog>, limits: SyncLimits) -> Self {
        Self {
            log,
            limits,
            syncs: Mutex::new(HashMap::new()),
            intent_writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The change log.
    pub fn log(&self) -> &Arc<CommitLog> {
        &self.log
    }

    /// Starts syncing `spec`, with running as the store has it.
    pub async fn start(&self, spec: &DatastoreSpec, store: &Store) -> Result<(), Error> {
        let initial = self.log.load(&spec.name).await?;
        let intents = store.list_intents(&spec.name).await?;
        let handle = self.start_with(spec, initial);
        for intent in intents {
            handle.set_intent(intent);
        }
        Ok(())
    }

    /// Serialises intent writes, so the store and the engine agree on them.
    pub async fn intent_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.intent_writes.lock().await
    }

    /// Starts syncing a datastore that has nothing committed yet.
    pub fn start_new(&self, spec: &DatastoreSpec) {
        self.start_with(spec, Snapshot::default());
    }

    fn start_with(&self, spec: &DatastoreSpec, initial: Snapshot) -> Arc<SyncHandle> {
        let target: Arc<dyn Target> = match GnmiTarget::new(&spec.target) {
            Ok(target) => Arc::new(target),
            Err(error) => Arc::new(Unusable(error)),
        };
        let handle = Arc::new(SyncHandle::start(
            spec.clone(),
            target,
            self.log.clone(),
            initial,
            self.limits.clone(),
        ));
        let old = self
            .syncs
            .lock()
            .expect("lock")
            .insert(spec.name.clone(), handle.clone());
        debug_assert!(old.is_none(), "a datastore is synced once");
        handle
    }

    /// The sync of `name`, if it runs.
    pub fn get(&self, name: &str) -> Option<Arc<SyncHandle>> {
        self.syncs.lock().expect("lock").get(name).cloned()
    }

    /// Stops the sync of `name` and waits for it to end.
    pub async fn stop(&self, name: &str) {
        let handle = self.syncs.lock().expect("lock").remove(name);
        if let Some(handle) = handle {
            stop_handle(handle).await;
        }
        self.log.forget(name);
    }

    /// Stops every sync.
    pub async fn stop_all(&self) {
        let handles: Vec<_> = self
            .syncs
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for handle in handles {
            stop_handle(handle).await;
        }
    }
}

/// Stops a sync and waits for its tasks, even while readers still hold the
/// handle.
async fn stop_handle(handle: Arc<SyncHandle>) {
    handle.stop().await;
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
