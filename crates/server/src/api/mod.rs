//! The `netsync.v1.NetSync` gRPC service. Handlers stay short: validate and
//! decode, call the store (later the engine), encode.

use std::pin::Pin;

use futures::Stream;
use netsync_core::datastore;
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_server::NetSync;
use tonic::{Request, Response, Status};

use crate::convert::{self, Secrets};
use crate::error::Error;
use crate::store::{self, Store, StoredDatastore};

/// What the sync-related RPCs answer until the sync engine is part of the build.
const NO_ENGINE: &str = "the sync engine is not part of this build yet: running, watch, resync, intents and deviations are unavailable";

/// A boxed response stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Implements the netsync API over the store.
#[derive(Debug, Clone)]
pub struct NetSyncService {
    store: Store,
}

impl NetSyncService {
    /// A service answering from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Checks that `name` (sent in request field `field`) is a well-formed
    /// datastore name of a datastore that exists.
    async fn require_datastore(&self, field: &str, name: &str) -> Result<StoredDatastore, Error> {
        check_name(field, name)?;
        self.store.get_datastore(name).await
    }
}

/// Checks a datastore name given in request field `field`.
fn check_name(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    datastore::validate_name(name).map_err(|m| Error::invalid(field, m))
}

/// The API view of a stored datastore: secrets blanked, status filled in.
fn datastore_view(ds: &StoredDatastore) -> pb::Datastore {
    let mut out = convert::datastore_to_proto(&ds.spec, Secrets::Redact);
    out.create_time = Some(convert::timestamp_to_proto(ds.create_time));
    out.status = Some(pb::DatastoreStatus {
        state: pb::SyncState::Stopped as i32,
        stats: Some(pb::SyncStats::default()),
        ..Default::default()
    });
    out
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
        let spec = convert::datastore_from_proto(ds, "datastore").map_err(Error::from)?;
        let stored = StoredDatastore {
            spec,
            create_time: store::now(),
        };
        self.store.create_datastore(&stored).await?;
        tracing::info!(datastore = %stored.spec.name, address = %stored.spec.target.address, "datastore created");
        Ok(Response::new(datastore_view(&stored)))
    }

    async fn get_datastore(
        &self,
        request: Request<pb::GetDatastoreRequest>,
    ) -> Result<Response<pb::Datastore>, Status> {
        let name = request.into_inner().name;
        let ds = self.require_datastore("name", &name).await?;
        Ok(Response::new(datastore_view(&ds)))
    }

    async fn list_datastores(
        &self,
        _request: Request<pb::ListDatastoresRequest>,
    ) -> Result<Response<pb::ListDatastoresResponse>, Status> {
        let datastores = self.store.list_datastores().await?;
        Ok(Response::new(pb::ListDatastoresResponse {
            datastores: datastores.iter().map(datastore_view).collect(),
        }))
    }

    async fn delete_datastore(
        &self,
        request: Request<pb::DeleteDatastoreRequest>,
    ) -> Result<Response<pb::DeleteDatastoreResponse>, Status> {
        let name = request.into_inner().name;
        check_name("name", &name)?;
        self.store.delete_datastore(&name).await?;
        tracing::info!(datastore = %name, "datastore deleted");
        Ok(Response::new(pb::DeleteDatastoreResponse {}))
    }

    async fn resync(
        &self,
        request: Request<pb::ResyncRequest>,
    ) -> Result<Response<pb::ResyncResponse>, Status> {
        self.require_datastore("name", &request.into_inner().name)
            .await?;
        Err(Error::Unimplemented(NO_ENGINE).into())
    }

    type GetRunningStream = ResponseStream<pb::GetRunningResponse>;

    async fn get_running(
        &self,
        request: Request<pb::GetRunningRequest>,
    ) -> Result<Response<Self::GetRunningStream>, Status> {
        let req = request.into_inner();
        self.require_datastore("datastore", &req.datastore).await?;
        if !req.path.is_empty() {
            netsync_core::Path::parse(&req.path)
                .map_err(|e| Error::invalid("path", e.to_string()))?;
        }
        Err(Error::Unimplemented(NO_ENGINE).into())
    }

    type WatchSyncStream = ResponseStream<pb::SyncEvent>;

    async fn watch_sync(
        &self,
        request: Request<pb::WatchSyncRequest>,
    ) -> Result<Response<Self::WatchSyncStream>, Status> {
        self.require_datastore("datastore", &request.into_inner().datastore)
            .await?;
        Err(Error::Unimplemented(NO_ENGINE).into())
    }

    async fn set_intent(
        &self,
        request: Request<pb::SetIntentRequest>,
    ) -> Result<Response<pb::Intent>, Status> {
        self.require_datastore("datastore", &request.into_inner().datastore)
            .await?;
        Err(Error::Unimplemented(NO_ENGINE).into())
    }

    async fn get_intent(
        &self,
        request: Request<pb::GetIntentRequest>,
    ) -> Result<Response<pb::Intent>, Status> {
        self.require_datastore("datastore", &request.into_inner().datastore)
            .await?;
        Err(Error::Unimplemented(NO_ENGINE).into())
    }

    async fn list_intents(
        &self,
        request: Request<pb::ListIntentsRequest>,
    ) -> Result<Response<pb::ListIntentsResponse>, Status> {
        self.require_datastore("datastore", &request.into_inner().datastore)
            .await?;
        Err(Error::Unimplemented(NO_ENGINE).into())
    }

    async fn delete_intent(
        &self,
        request: Request<pb::DeleteIntentRequest>,
    ) -> Result<Response<pb::DeleteIntentResponse>, Status> {
        self.require_datastore("datastore", &request.into_inner().datastore)
            .await?;
        Err(Error::Unimplemented(NO_ENGINE).into())
    }

    async fn get_deviations(
        &self,
        request: Request<pb::GetDeviationsRequest>,
    ) -> Result<Response<pb::GetDeviationsResponse>, Status> {
        self.require_datastore("datastore", &request.into_inner().datastore)
            .await?;
        Err(Error::Unimplemented(NO_ENGINE).into())
    }
}
