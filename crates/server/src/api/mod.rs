//! The `netsync.v1.NetSync` gRPC service. Handlers stay short: validate and
//! decode, call the engine or the store, encode.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use netsync_core::datastore;
use netsync_core::sync::SyncHandle;
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_server::NetSync;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::convert::{self, Secrets};
use crate::engine::{Engine, Update};
use crate::error::Error;
use crate::intent_status::IntentStatus;
use crate::limits::{ApiLimits, WatchMemory, WatcherSlots};
use crate::reconcile;
use crate::replicas::Replicas;
use crate::selector::Selector;
use crate::status_record;
use crate::store::{self, DatastoreRow, Store, StoredDatastore};

mod intents;
mod page;
mod running;
mod watch;
mod watch_many;

pub use watch::NetSyncRoutes;

/// A boxed response stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Implements the netsync API over the store and the engine.
#[derive(Debug, Clone)]
pub struct NetSyncService {
    store: Store,
    engine: Arc<Engine>,
    max_datastores: usize,
    /// Held from the datastore count check to the datastore's start, so
    /// concurrent creates cannot pass `max_datastores` together. A tokio
    /// mutex: the store write in between awaits.
    creating: Arc<tokio::sync::Mutex<()>>,
    watchers: Arc<WatcherSlots>,
    /// What watchers hold, bounded in bytes.
    watch_memory: Arc<WatchMemory>,
    /// Cancelled when shutdown starts: open watches end at once instead of
    /// holding shutdown for its whole grace period.
    stopping: CancellationToken,
    /// Replica mode: who syncs what (calls about a datastore synced by
    /// another replica are refused, naming it).
    replicas: Option<Arc<Replicas>>,
}

/// Where a datastore a call names is synced (see
/// [`NetSyncService::placement`]).
#[allow(
    dead_code,
    reason = "the calls answered on any replica use it as they come"
)]
enum Placement {
    /// Here: its running sync and the uid of the incarnation it syncs.
    Here(Arc<SyncHandle>, String),
    /// Replica mode: by another replica (or by none, between two owners);
    /// the datastore as the database has it.
    Elsewhere(Box<StoredDatastore>),
}

/// Runs `work` to its end even if the client goes away: a handler's future is
/// dropped at its next await when the call is cancelled, and a write that
/// changes both the store and the engine's memory must not stop between the
/// two (they would disagree until a restart).
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("a write task failed: {e}"))))
}

impl NetSyncService {
    /// A service answering from `store` and `engine`, within `limits`, its
    /// watchers' messages queued within `watch_memory`; `stopping` is
    /// cancelled when shutdown starts.
    pub fn new(
        store: Store,
        engine: Arc<Engine>,
        limits: &ApiLimits,
        watch_memory: Arc<WatchMemory>,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            store,
            engine,
            max_datastores: limits.max_datastores,
            creating: Arc::new(tokio::sync::Mutex::new(())),
            watchers: WatcherSlots::new(limits.max_watchers_per_datastore),
            watch_memory,
            stopping,
            replicas: None,
        }
    }

    /// This service as one replica of several (see [`crate::replicas`]).
    pub fn with_replicas(mut self, replicas: Option<Arc<Replicas>>) -> Self {
        self.replicas = replicas;
        self
    }

    /// Checks that `name` (sent in request field `field`) is a well-formed
    /// datastore name of a datastore that exists, even one whose stored
    /// declaration cannot be used.
    async fn require_datastore(&self, field: &str, name: &str) -> Result<DatastoreRow, Error> {
        check_name(field, name)?;
        self.store.get_datastore_row(name).await
    }

    /// The running sync of datastore `name` (given in request field `field`);
    /// FAILED_PRECONDITION if it is held stopped because it could not be
    /// loaded; in replica mode, UNAVAILABLE naming the replica that syncs it.
    async fn require_sync(&self, field: &str, name: &str) -> Result<Arc<SyncHandle>, Error> {
        check_name(field, name)?;
        if let Some(sync) = self.engine.get(name) {
            return Ok(sync);
        }
        match self.engine.stopped(name) {
            Some(reason) => Err(stopped(name, &reason)),
            None => match &self.replicas {
                Some(replicas) => Err(replicas.not_here(name).await),
                None => Err(Error::NotFound {
                    kind: "datastore",
                    name: name.to_string(),
                }),
            },
        }
    }

    /// [`require_sync`](Self::require_sync), with the uid of the incarnation
    /// it syncs; FAILED_PRECONDITION naming both uids if `expected_uid` is
    /// set and is not that one.
    async fn require_incarnation(
        &self,
        field: &str,
        name: &str,
        expected_uid: &str,
    ) -> Result<(Arc<SyncHandle>, String), Error> {
        self.require_sync(field, name).await?;
        // Read again with its uid, the two from one entry: a datastore
        // deleted and created again in between is seen whole, old or new.
        let (sync, uid) = self
            .engine
            .get_with_uid(name)
            .ok_or_else(|| Error::NotFound {
                kind: "datastore",
                name: name.to_string(),
            })?;
        if !expected_uid.is_empty() && expected_uid != uid {
            return Err(store::uid_mismatch(name, &uid, expected_uid));
        }
        Ok((sync, uid))
    }

    /// Where datastore `name` (given in request field `field`) is synced:
    /// here, as [`require_incarnation`](Self::require_incarnation) finds it,
    /// or, in replica mode, by another replica, with what the database has
    /// of it (calls about it are then answered from the database). The same
    /// errors otherwise: NOT_FOUND, FAILED_PRECONDITION for a stopped one or
    /// another uid than `expected_uid`.
    #[allow(
        dead_code,
        reason = "the calls answered on any replica use it as they come"
    )]
    async fn placement(
        &self,
        field: &str,
        name: &str,
        expected_uid: &str,
    ) -> Result<Placement, Error> {
        check_name(field, name)?;
        if self.replicas.is_none() || self.engine.get(name).is_some() {
            let (sync, uid) = self.require_incarnation(field, name, expected_uid).await?;
            return Ok(Placement::Here(sync, uid));
        }
        if let Some(reason) = self.engine.stopped(name) {
            return Err(stopped(name, &reason));
        }
        match self.store.get_datastore_row(name).await? {
            DatastoreRow::Readable(ds) => {
                if !expected_uid.is_empty() && expected_uid != ds.uid {
                    return Err(store::uid_mismatch(name, &ds.uid, expected_uid));
                }
                Ok(Placement::Elsewhere(Box::new(ds)))
            }
            DatastoreRow::Unreadable { reason, .. } => Err(stopped(name, &reason)),
        }
    }

    /// SetIntent of a datastore another replica syncs (`ds`, as stored):
    /// validated as its owner validates, against the stored declaration;
    /// written with the job that applies it, the owner told (see
    /// [`crate::handoff`]). The reply is the owner's: PENDING, at the
    /// newest revision committed. `validate_only` plans from the database.
    async fn set_intent_elsewhere(
        &self,
        req: pb::SetIntentRequest,
        ds: StoredDatastore,
    ) -> Result<pb::Intent, Error> {
        let intent = req
            .intent
            .ok_or_else(|| Error::invalid("intent", "is required"))?;
        let mut intent = convert::intent_for_datastore(intent, "intent", &ds.spec)?;
        if req.validate_only {
            let name = &req.datastore;
            let log = self.engine.log();
            let revision = log.newest(name).await?.unwrap_or(0);
            let running = if revision == 0 {
                netsync_core::running::Running::new()
            } else {
                log.read_at(name, revision).await?
            };
            let snapshot = netsync_core::sync::Snapshot {
                revision,
                time: None,
                running,
            };
            // The stored intents as the owner holds them: those today's
            // validation refuses are held aside there too.
            let intents = self
                .store
                .list_intents(name)
                .await?
                .into_iter()
                .filter_map(|i| convert::intent_for_datastore(i, "intent", &ds.spec).ok())
                .collect();
            let plan = reconcile::dry_run_stored(&ds.spec, &snapshot, intents, intent.clone())
                .map_err(|e| {
                    tracing::error!(datastore = %name, intent = %intent.name, error = %e, "cannot plan an intent");
                    Error::Internal(format!("cannot plan the intent: {e}"))
                })?;
            intent.revision = plan.revision;
            let mut reply = convert::intent_with_status(&intent, &IntentStatus::pending());
            reply.plan = Some(convert::plan_to_proto(&plan));
            return Ok(reply);
        }
        let store = self.store.clone();
        to_completion(async move {
            let (_, intent) = store
                .put_intent(&req.datastore, &ds.uid, &intent, &ds.spec, Vec::new(), true)
                .await?;
            tracing::info!(datastore = %req.datastore, intent = %intent.name, "intent set; its owner applies it");
            Ok(convert::intent_with_status(&intent, &IntentStatus::pending()))
        })
        .await
    }

    /// DeleteIntent of a datastore another replica syncs (`ds`, as stored):
    /// deleted with the job that withdraws its leaves, the owner told.
    async fn delete_intent_elsewhere(
        &self,
        req: pb::DeleteIntentRequest,
        ds: StoredDatastore,
    ) -> Result<(), Error> {
        if req.name.is_empty() {
            return Err(Error::invalid("name", "is required"));
        }
        let store = self.store.clone();
        to_completion(async move {
            store
                .delete_intent(&req.datastore, &ds.uid, &req.name, &ds.spec, false, Vec::new())
                .await?;
            tracing::info!(datastore = %req.datastore, intent = %req.name, "intent deleted; its owner withdraws it");
            Ok(())
        })
        .await
    }

    /// WatchSync, its messages encoded (see [`NetSyncRoutes`]).
    async fn watch_sync_encoded(
        &self,
        request: Request<pb::WatchSyncRequest>,
    ) -> Result<Response<watch::EncodedStream>, Status> {
        let req = request.into_inner();
        let format = convert::ValueFormat::from_proto("value_format", req.value_format)?;
        let many = req.datastore.is_empty();
        if many || !req.label_selector.is_empty() || !req.resume_token.is_empty() {
            let only_many = |field: &str, why: &str| Error::invalid(field, why);
            if !many {
                let field = if req.label_selector.is_empty() {
                    "resume_token"
                } else {
                    "label_selector"
                };
                return Err(only_many(
                    field,
                    "is for a watch of many datastores: leave datastore empty",
                )
                .into());
            }
            if req.from_revision != 0 {
                return Err(only_many(
                    "from_revision",
                    "needs datastore; a watch of many datastores resumes with resume_token",
                )
                .into());
            }
            if !req.expected_uid.is_empty() {
                return Err(only_many(
                    "expected_uid",
                    "needs datastore; a watch of many datastores checks the uids its resume_token holds",
                )
                .into());
            }
            let slot = self.watchers.take_many()?;
            let stream = watch_many::watch_many(watch_many::Many {
                engine: self.engine.clone(),
                log: self.engine.log().clone(),
                selector: req.label_selector,
                resume_token: req.resume_token,
                format,
                memory: self.watch_memory.clone(),
                stopping: self.stopping.clone(),
                follow: self.follow(),
            })
            .await?;
            return Ok(Response::new(Box::pin(slot.hold(stream))));
        }
        let placement = self
            .placement("datastore", &req.datastore, &req.expected_uid)
            .await?;
        let slot = self.watchers.take(&req.datastore)?;
        let log = self.engine.log().clone();
        let stream = match (placement, self.follow()) {
            (Placement::Here(sync, uid), follow) => {
                watch::watch(
                    sync,
                    uid,
                    log,
                    req.from_revision,
                    0,
                    format,
                    &self.watch_memory,
                    self.stopping.clone(),
                    follow,
                )
                .await?
            }
            (Placement::Elsewhere(ds), Some(follow)) => {
                watch::watch_log(
                    ds.spec.name,
                    ds.uid,
                    log,
                    req.from_revision,
                    0,
                    format,
                    &self.watch_memory,
                    self.stopping.clone(),
                    follow,
                )
                .await?
            }
            (Placement::Elsewhere(_), None) => {
                unreachable!("a datastore is placed elsewhere only in replica mode")
            }
        };
        // The slot is given back when the client's stream is dropped, not when
        // the watch task notices: that may wait for the next event.
        Ok(Response::new(Box::pin(slot.hold(stream))))
    }

    /// Replica mode: what a watch needs to follow a datastore from the log.
    fn follow(&self) -> Option<watch::Follow> {
        self.replicas.as_ref().map(|replicas| watch::Follow {
            notices: replicas.notices().clone(),
            store: self.store.clone(),
            replicas: replicas.clone(),
        })
    }

    /// The API view of a registry row: [`datastore_view`](Self::datastore_view),
    /// or for a row whose declaration cannot be used, its name, creation time
    /// and a STOPPED status saying why.
    fn row_view(&self, row: &DatastoreRow) -> pb::Datastore {
        match row {
            DatastoreRow::Readable(ds) => self.datastore_view(ds),
            DatastoreRow::Unreadable {
                name,
                create_time,
                uid,
                reason,
                ..
            } => pb::Datastore {
                name: name.clone(),
                create_time: Some(convert::timestamp_to_proto(*create_time)),
                uid: uid.clone(),
                status: Some(pb::DatastoreStatus {
                    state: pb::SyncState::Stopped as i32,
                    last_error: self.engine.stopped(name).unwrap_or_else(|| reason.clone()),
                    stats: Some(pb::SyncStats::default()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    /// The API view of a stored datastore: secrets blanked, live status filled in.
    fn datastore_view(&self, ds: &StoredDatastore) -> pb::Datastore {
        let mut out = convert::datastore_to_proto(&ds.spec, Secrets::Redact);
        out.labels = ds.labels.clone().into_iter().collect();
        out.create_time = Some(convert::timestamp_to_proto(ds.create_time));
        out.uid = ds.uid.clone();
        let name = &ds.spec.name;
        out.status = Some(match self.engine.get(name) {
            Some(sync) => convert::status_to_proto(&sync),
            None => self
                .engine
                .stopped(name)
                .map(|reason| pb::DatastoreStatus {
                    state: pb::SyncState::Stopped as i32,
                    last_error: reason,
                    stats: Some(pb::SyncStats::default()),
                    ..Default::default()
                })
                .or_else(|| self.replicas.as_ref()?.status(name))
                .unwrap_or_else(|| pb::DatastoreStatus {
                    state: pb::SyncState::Stopped as i32,
                    stats: Some(pb::SyncStats::default()),
                    ..Default::default()
                }),
        });
        out
    }
}

/// Checks a datastore name given in request field `field`.
/// FAILED_PRECONDITION for a call about datastore `name`, held stopped
/// for `reason`.
fn stopped(name: &str, reason: &str) -> Error {
    Error::FailedPrecondition(format!(
        "datastore {name:?} is stopped: {reason}; DeleteDatastore removes it and what is stored \
         of it, so that it can be created again"
    ))
}

fn check_name(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    datastore::validate_name(name).map_err(|m| Error::invalid(field, m))
}

/// A registry row's name.
fn row_name(row: &DatastoreRow) -> &str {
    match row {
        DatastoreRow::Readable(ds) => &ds.spec.name,
        DatastoreRow::Unreadable { name, .. } => name,
    }
}

/// A registry row's labels; none for a row whose declaration cannot be read.
fn row_labels(row: &DatastoreRow) -> &std::collections::BTreeMap<String, String> {
    static NONE: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    match row {
        DatastoreRow::Readable(ds) => &ds.labels,
        DatastoreRow::Unreadable { .. } => &NONE,
    }
}

/// The call's deadline: the client's, or the server's default or cap (the
/// call limits layer writes the one in force into `grpc-timeout`).
fn request_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let text = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    crate::limits::calls::parse_grpc_timeout(text)
}

#[tonic::async_trait]
impl NetSync for NetSyncService {
    async fn create_datastore(
        &self,
        request: Request<pb::CreateDatastoreRequest>,
    ) -> Result<Response<pb::Datastore>, Status> {
        let ds = request
            .into_inner()
            .datastore
            .ok_or_else(|| Error::invalid("datastore", "is required"))?;
        let labels = convert::labels_from_proto(&ds.labels, "datastore").map_err(Error::from)?;
        let spec = convert::datastore_from_proto(ds, "datastore").map_err(Error::from)?;
        let (store, engine, creating) = (
            self.store.clone(),
            self.engine.clone(),
            self.creating.clone(),
        );
        let max_datastores = self.max_datastores;
        let replicas = self.replicas.clone();
        let stored = to_completion(async move {
            let _creating = creating.lock().await;
            // Replicas: the database's datastores (every replica may come to
            // sync all of them after failovers). Two replicas creating at
            // the same moment may each pass with one place left.
            let count = match &replicas {
                Some(_) => store.count_datastores().await?,
                None => engine.count(),
            };
            if count >= max_datastores {
                return Err(Error::ResourceExhausted(format!(
                    "datastore limit of {max_datastores} reached (max_datastores); delete one before creating another"
                )));
            }
            let stored = store.create_datastore(spec, labels, store::now()).await?;
            match &replicas {
                // Stored with a free lease: the replica it belongs to takes it.
                Some(replicas) => replicas.created(&stored.spec.name),
                None => engine.start_new(&stored),
            }
            tracing::info!(datastore = %stored.spec.name, address = %stored.spec.target.address, "datastore created");
            Ok(stored)
        })
        .await?;
        Ok(Response::new(self.datastore_view(&stored)))
    }

    async fn get_datastore(
        &self,
        request: Request<pb::GetDatastoreRequest>,
    ) -> Result<Response<pb::Datastore>, Status> {
        let name = request.into_inner().name;
        let row = self.require_datastore("name", &name).await?;
        if let Some(replicas) = &self.replicas {
            replicas.refresh(Some(&name)).await;
        }
        Ok(Response::new(self.row_view(&row)))
    }

    async fn list_datastores(
        &self,
        request: Request<pb::ListDatastoresRequest>,
    ) -> Result<Response<pb::ListDatastoresResponse>, Status> {
        let req = request.into_inner();
        let size = page::size(req.page_size)?;
        let selector = Selector::parse(&req.filter).map_err(|m| Error::invalid("filter", m))?;
        let full = match pb::DatastoreView::try_from(req.view) {
            Ok(pb::DatastoreView::Full) => true,
            Ok(pb::DatastoreView::Unspecified | pb::DatastoreView::Basic) => false,
            Err(_) => return Err(Error::invalid("view", "unknown value").into()),
        };
        // A token is valid only with the filter of the first page.
        let scope = format!("datastores\n{}", req.filter);
        let after = page::after(&scope, &req.page_token)?;
        let rows = self.store.list_datastore_rows().await?;
        if let Some(replicas) = &self.replicas {
            replicas.refresh(None).await;
        }
        let matching: Vec<DatastoreRow> = rows
            .into_iter()
            .filter(|row| selector.matches(row_labels(row)))
            .collect();
        let (rows, next_page_token) =
            page::page(matching, row_name, &scope, after.as_deref(), size);
        Ok(Response::new(pb::ListDatastoresResponse {
            datastores: rows
                .iter()
                .map(|row| {
                    let mut ds = self.row_view(row);
                    if !full {
                        convert::basic_view(&mut ds);
                    }
                    ds
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn update_datastore(
        &self,
        request: Request<pb::UpdateDatastoreRequest>,
    ) -> Result<Response<pb::Datastore>, Status> {
        let req = request.into_inner();
        let update = req
            .datastore
            .ok_or_else(|| Error::invalid("datastore", "is required"))?;
        check_name("datastore.name", &update.name)?;
        // Replicas: a datastore synced elsewhere is updated in the database
        // only; its owner restarts the sync (or takes the new labels) when
        // the database notifies the change, see `replicas::refresh`.
        let replicated = self.replicas.is_some();
        let here = self.replicas.is_none()
            || self.engine.get(&update.name).is_some()
            || self.engine.stopped(&update.name).is_some();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let (store, engine, changing) = (
            self.store.clone(),
            self.engine.clone(),
            self.creating.clone(),
        );
        let stored = to_completion(async move {
            // One at a time with creates and deletes: a delete racing this
            // update either comes first (NOT_FOUND here) or after (it removes
            // the updated datastore); the sync is never restarted for a
            // datastore already gone.
            let _changing = changing.lock().await;
            let name = update.name.clone();
            let old = match store.get_datastore_row(&name).await? {
                DatastoreRow::Readable(old) => old,
                DatastoreRow::Unreadable { .. } => {
                    return Err(Error::FailedPrecondition(format!(
                        "datastore {name:?} is stopped: its stored declaration cannot be used; \
                         DeleteDatastore removes it, so that it can be created again"
                    )));
                }
            };
            let mut current = convert::datastore_to_proto(&old.spec, Secrets::Keep);
            current.labels = old.labels.clone().into_iter().collect();
            let merged = convert::apply_update_mask(current, update, &paths)?;
            let labels = convert::labels_from_proto(&merged.labels, "datastore")?;
            let spec = convert::datastore_from_proto(merged, "datastore")?;
            let new = StoredDatastore {
                spec,
                labels,
                ..old.clone()
            };
            if new == old {
                return Ok(new);
            }
            // Stored first, in one write: if that fails nothing changed.
            store.update_datastore(&new).await?;
            if !here {
                tracing::info!(datastore = %name, "datastore updated; the replica that syncs it takes the update");
                return Ok(new);
            }
            // Through the engine's one-at-a-time check: on a replica, the
            // database's notification of this very update may have been
            // taken first (then nothing is left to do here).
            let update = engine.take_update(&new).await;
            let restarted = match update {
                Update::Restarted => true,
                // A replica never starts a sync here: only its lease manager
                // does, under a lease (it may have gone meanwhile).
                Update::NotSynced if new.spec != old.spec && !replicated => {
                    engine.restart(&new).await;
                    true
                }
                _ => false,
            };
            if restarted {
                tracing::info!(datastore = %name, address = %new.spec.target.address, "datastore updated; its sync restarted");
            } else if new.labels != old.labels {
                tracing::info!(datastore = %name, "datastore labels updated");
            }
            Ok(new)
        })
        .await?;
        Ok(Response::new(self.datastore_view(&stored)))
    }

    async fn delete_datastore(
        &self,
        request: Request<pb::DeleteDatastoreRequest>,
    ) -> Result<Response<pb::DeleteDatastoreResponse>, Status> {
        let name = request.into_inner().name;
        let (store, engine, creating) = (
            self.store.clone(),
            self.engine.clone(),
            self.creating.clone(),
        );
        check_name("name", &name)?;
        to_completion(async move {
            // Creates and deletes one at a time: two deletes racing (a client
            // retrying) must not both stop, and one then restart, a sync.
            let _changing = creating.lock().await;
            let stored = store.get_datastore_row(&name).await?;
            // In replica mode the datastore may be synced elsewhere: its
            // owner stops it when its lease row goes with the datastore.
            let synced_here = engine.get(&name).is_some() || engine.stopped(&name).is_some();
            engine.stop(&name).await;
            if let Err(e) = store.delete_datastore(&name).await {
                if !matches!(e, Error::StorageUnavailable(_)) || !synced_here {
                    return Err(e);
                }
                // Still stored, so it is served again: memory and database
                // agree.
                match &stored {
                    DatastoreRow::Readable(stored) => engine.start(stored).await,
                    DatastoreRow::Unreadable { reason, .. } => {
                        engine.hold_stopped(&name, reason.clone())
                    }
                }
                return Err(e);
            }
            tracing::info!(datastore = %name, "datastore deleted");
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::DeleteDatastoreResponse {}))
    }

    async fn resync(
        &self,
        request: Request<pb::ResyncRequest>,
    ) -> Result<Response<pb::ResyncResponse>, Status> {
        let name = request.into_inner().name;
        let sync = match self.placement("name", &name, "").await? {
            Placement::Here(sync, _) => sync,
            Placement::Elsewhere(ds) => {
                // Handed to the owner through the database: done by it
                // within a notification, or a backstop if that is lost.
                let store = self.store.clone();
                to_completion(async move { store.hand_off_resync(&name, &ds.uid).await }).await?;
                return Ok(Response::new(pb::ResyncResponse {}));
            }
        };
        sync.resync();
        // Intents FAILING are tried again: a Resync is one of the two ways
        // (with writing the intent) to resume their auto-revert.
        let engine = self.engine.clone();
        to_completion(async move {
            engine.resynced(&name).await;
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::ResyncResponse {}))
    }

    type GetRunningStream = ResponseStream<pb::GetRunningResponse>;

    async fn get_running(
        &self,
        request: Request<pb::GetRunningRequest>,
    ) -> Result<Response<Self::GetRunningStream>, Status> {
        let timeout = request_timeout(&request);
        let req = request.into_inner();
        let placement = self
            .placement("datastore", &req.datastore, &req.expected_uid)
            .await?;
        let read = running::Read {
            format: convert::ValueFormat::from_proto("value_format", req.value_format)?,
            path: req.path,
            min_revision: req.min_revision,
            revision: req.revision,
            with_owner: req.with_owner,
        };
        let log = self.engine.log();
        let stream = match (placement, &self.replicas) {
            (Placement::Here(sync, _), _) => {
                running::get_running(&sync, log, read, timeout).await?
            }
            // Another replica syncs it: read from the database.
            (Placement::Elsewhere(ds), Some(replicas)) => {
                running::get_running_stored(
                    &ds,
                    log,
                    &self.store,
                    replicas.notices(),
                    read,
                    timeout,
                )
                .await?
            }
            (Placement::Elsewhere(_), None) => {
                unreachable!("a datastore is placed elsewhere only in replica mode")
            }
        };
        Ok(Response::new(stream))
    }

    type WatchSyncStream = ResponseStream<pb::SyncEvent>;

    async fn watch_sync(
        &self,
        request: Request<pb::WatchSyncRequest>,
    ) -> Result<Response<Self::WatchSyncStream>, Status> {
        // Served through `NetSyncRoutes`, which sends the encoded messages
        // as they are; this decodes them for a server built without it.
        let encoded = self.watch_sync_encoded(request).await?.into_inner();
        let decoded = futures::StreamExt::map(encoded, |message| {
            message.and_then(|bytes| {
                prost::Message::decode(bytes)
                    .map_err(|e| Status::internal(format!("decoding a SyncEvent: {e}")))
            })
        });
        Ok(Response::new(Box::pin(decoded)))
    }

    async fn set_intent(
        &self,
        request: Request<pb::SetIntentRequest>,
    ) -> Result<Response<pb::Intent>, Status> {
        let req = request.into_inner();
        let (sync, uid) = match self
            .placement("datastore", &req.datastore, &req.expected_uid)
            .await?
        {
            Placement::Here(sync, uid) => (sync, uid),
            Placement::Elsewhere(ds) => {
                return Ok(Response::new(self.set_intent_elsewhere(req, *ds).await?));
            }
        };
        let intent = req
            .intent
            .ok_or_else(|| Error::invalid("intent", "is required"))?;
        let mut intent =
            convert::intent_for_datastore(intent, "intent", sync.spec()).map_err(Error::from)?;
        if req.validate_only {
            // Checked exactly as a write is (above); planned, not written:
            // nothing here touches the store, the engine's intents, the
            // statuses, the generation or the device.
            let failing = self.engine.failing_intents(&req.datastore);
            let plan = reconcile::dry_run(&sync, failing, intent.clone()).map_err(|e| {
                tracing::error!(datastore = %req.datastore, intent = %intent.name, error = %e, "cannot plan an intent");
                Error::Internal(format!("cannot plan the intent: {e}"))
            })?;
            intent.revision = plan.revision;
            let mut reply = convert::intent_with_status(&intent, &IntentStatus::pending());
            reply.plan = Some(convert::plan_to_proto(&plan));
            return Ok(Response::new(reply));
        }
        let (store, engine) = (self.store.clone(), self.engine.clone());
        let reply = to_completion(async move {
            // Held for the store write and the memory update only: reconcile
            // jobs take it just to plan, so this never waits for the device.
            let _writing = engine.intent_lock(&req.datastore).await;
            intent.revision = sync.snapshot().revision;
            // The intent and the job that applies it (through the reconcile
            // queue, even when non-revertive) are written in one transaction.
            // Leaves the previous version set and this one does not leave the
            // device too, unless another intent provides them, as on
            // DeleteIntent: those of the version held here and of the one
            // stored (in replica mode, possibly written on another replica
            // and not picked up yet).
            let dropped: Vec<_> = sync
                .intent(&intent.name)
                .map(|old| old.updates.into_keys().collect())
                .unwrap_or_default();
            let (queued, _) = store
                .put_intent(&req.datastore, &uid, &intent, sync.spec(), dropped, false)
                .await?;
            tracing::info!(datastore = %req.datastore, intent = %intent.name, "intent set");
            let status = engine.intent_written(&req.datastore, &intent.name);
            let reply = convert::intent_with_status(&intent, &status);
            sync.set_intent(intent);
            engine.queued(&req.datastore, queued);
            Ok(reply)
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn get_intent(
        &self,
        request: Request<pb::GetIntentRequest>,
    ) -> Result<Response<pb::Intent>, Status> {
        let req = request.into_inner();
        let not_found = || Error::NotFound {
            kind: "intent",
            name: req.name.clone(),
        };
        let sync = match self.placement("datastore", &req.datastore, "").await? {
            Placement::Here(sync, _) => sync,
            // Synced by another replica: as stored, with the status its
            // owner recorded.
            Placement::Elsewhere(ds) => {
                let stored =
                    status_record::stored_intents(&self.store, &ds.spec, Some(&req.name)).await?;
                return Ok(Response::new(
                    stored.into_iter().next().ok_or_else(not_found)?,
                ));
            }
        };
        if let Some(intent) = sync.intent(&req.name) {
            let status = self.engine.intent_status(&req.datastore, &req.name);
            return Ok(Response::new(convert::intent_with_status(&intent, &status)));
        }
        // A stored intent today's validation refuses is shown as stored.
        let unusable = self.engine.unusable_intent(&req.datastore, &req.name);
        Ok(Response::new(unusable.ok_or_else(not_found)?))
    }

    async fn list_intents(
        &self,
        request: Request<pb::ListIntentsRequest>,
    ) -> Result<Response<pb::ListIntentsResponse>, Status> {
        let req = request.into_inner();
        let name = req.datastore;
        let placement = self.placement("datastore", &name, "").await?;
        let page = intents::PageRequest::intents(&name, req.page_size, &req.page_token)?;
        let intents = match placement {
            Placement::Here(sync, _) => {
                let mut intents: Vec<pb::Intent> = sync
                    .intents()
                    .iter()
                    .map(|i| {
                        convert::intent_with_status(i, &self.engine.intent_status(&name, &i.name))
                    })
                    .collect();
                // With the stored intents today's validation refuses.
                intents.extend(self.engine.unusable_intents(&name));
                intents
            }
            Placement::Elsewhere(ds) => {
                status_record::stored_intents(&self.store, &ds.spec, None).await?
            }
        };
        Ok(Response::new(intents::intents_page(intents, &page)))
    }

    async fn delete_intent(
        &self,
        request: Request<pb::DeleteIntentRequest>,
    ) -> Result<Response<pb::DeleteIntentResponse>, Status> {
        let req = request.into_inner();
        let (sync, uid) = match self
            .placement("datastore", &req.datastore, &req.expected_uid)
            .await?
        {
            Placement::Here(sync, uid) => (sync, uid),
            Placement::Elsewhere(ds) => {
                self.delete_intent_elsewhere(req, *ds).await?;
                return Ok(Response::new(pb::DeleteIntentResponse {}));
            }
        };
        if req.name.is_empty() {
            return Err(Error::invalid("name", "is required").into());
        }
        let (store, engine) = (self.store.clone(), self.engine.clone());
        to_completion(async move {
            let _writing = engine.intent_lock(&req.datastore).await;
            // Its leaves leave the device too, unless another intent provides
            // them: the deletion and that job are written in one transaction.
            // An intent only in memory or only in the store is deleted from
            // both; NOT_FOUND only when neither has it (AIP-135: a repeated
            // delete answers NOT_FOUND).
            let in_memory = sync.intent(&req.name);
            let withdrawn: Vec<_> = in_memory
                .as_ref()
                .map(|i| i.updates.keys().cloned().collect())
                .unwrap_or_default();
            // A stored intent today's checks refuse was never sent to the
            // device by this netsync: deleting it sends nothing either
            // (checked against the datastore's spec in the transaction).
            let queued = store
                .delete_intent(
                    &req.datastore,
                    &uid,
                    &req.name,
                    sync.spec(),
                    in_memory.is_some(),
                    withdrawn,
                )
                .await?;
            sync.remove_intent(&req.name);
            engine.intent_removed(&req.datastore, &req.name);
            engine.queued(&req.datastore, queued);
            tracing::info!(datastore = %req.datastore, intent = %req.name, "intent deleted");
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::DeleteIntentResponse {}))
    }

    async fn get_deviations(
        &self,
        request: Request<pb::GetDeviationsRequest>,
    ) -> Result<Response<pb::GetDeviationsResponse>, Status> {
        let req = request.into_inner();
        let format = convert::ValueFormat::from_proto("value_format", req.value_format)?;
        let placement = self.placement("datastore", &req.datastore, "").await?;
        let page =
            intents::PageRequest::deviations(&req.datastore, req.page_size, &req.page_token)?;
        let (revision, deviations) = match placement {
            Placement::Here(sync, _) => sync.deviations(),
            // Synced by another replica: from running at its newest stored
            // revision and the stored intents.
            Placement::Elsewhere(ds) => {
                intents::stored_deviations(&self.store, self.engine.log(), &ds).await?
            }
        };
        Ok(Response::new(intents::deviations_page(
            revision,
            &deviations,
            format,
            &page,
        )))
    }
}
