//! A small scriptable gNMI device for the server's tests, served over real
//! gRPC on loopback: Subscribe STREAM sends the current leaves (string
//! values), `sync_response`, then every change made through [`Device::set`] /
//! [`Device::delete`]. Smaller and more predictable than netsync-sim where a
//! test needs exactly these leaves and nothing else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use netsync_core::Path;
use netsync_proto::gnmi::g_nmi_server::{GNmi, GNmiServer};
use netsync_proto::gnmi::{self, typed_value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct State {
    leaves: BTreeMap<String, String>,
}

/// The device; cloning shares it.
#[derive(Clone)]
pub struct Device {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<gnmi::Notification>,
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: Arc<oneshot::Sender<()>>,
}

impl Device {
    /// Starts the device on 127.0.0.1:0 holding `leaves`.
    pub async fn start(leaves: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            leaves: leaves
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }));
        let (changes, _) = broadcast::channel(100_000);
        let (stop, stopped) = oneshot::channel::<()>();
        let service = Service {
            state: state.clone(),
            changes: changes.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GNmiServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            state,
            changes,
            addr,
            _stop: Arc::new(stop),
        }
    }

    /// Sets a leaf and notifies subscribers.
    pub fn set(&self, path: &str, value: &str) {
        let mut state = self.state.lock().unwrap();
        state.leaves.insert(path.to_string(), value.to_string());
        let _ = self.changes.send(notification(&[(path, value)], &[]));
    }

    /// Deletes a leaf and notifies subscribers.
    pub fn delete(&self, path: &str) {
        let mut state = self.state.lock().unwrap();
        state.leaves.remove(path);
        let _ = self.changes.send(notification(&[], &[path]));
    }

    /// The leaves it holds now.
    pub fn leaves(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().leaves.clone()
    }
}

fn notification(updates: &[(&str, &str)], deletes: &[&str]) -> gnmi::Notification {
    gnmi::Notification {
        update: updates
            .iter()
            .map(|(p, v)| gnmi::Update {
                path: Some(Path::parse(p).unwrap().to_gnmi()),
                val: Some(gnmi::TypedValue {
                    value: Some(typed_value::Value::StringVal(v.to_string())),
                }),
                ..Default::default()
            })
            .collect(),
        delete: deletes
            .iter()
            .map(|p| Path::parse(p).unwrap().to_gnmi())
            .collect(),
        ..Default::default()
    }
}

struct Service {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<gnmi::Notification>,
}

type Responses = Pin<Box<dyn Stream<Item = Result<gnmi::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GNmi for Service {
    async fn capabilities(
        &self,
        _request: Request<gnmi::CapabilityRequest>,
    ) -> Result<Response<gnmi::CapabilityResponse>, Status> {
        Ok(Response::new(gnmi::CapabilityResponse::default()))
    }

    async fn get(
        &self,
        _request: Request<gnmi::GetRequest>,
    ) -> Result<Response<gnmi::GetResponse>, Status> {
        Err(Status::unimplemented("test device: no Get"))
    }

    async fn set(
        &self,
        _request: Request<gnmi::SetRequest>,
    ) -> Result<Response<gnmi::SetResponse>, Status> {
        Err(Status::unimplemented("test device: no Set"))
    }

    type SubscribeStream = Responses;

    async fn subscribe(
        &self,
        _request: Request<Streaming<gnmi::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Snapshot and subscription under one lock: no change falls between.
        let (dump, live) = {
            let state = self.state.lock().unwrap();
            let pairs: Vec<(&str, &str)> = state
                .leaves
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            (notification(&pairs, &[]), self.changes.subscribe())
        };
        let head = futures::stream::iter([
            Ok(gnmi::SubscribeResponse {
                response: Some(gnmi::subscribe_response::Response::Update(dump)),
                ..Default::default()
            }),
            Ok(gnmi::SubscribeResponse {
                response: Some(gnmi::subscribe_response::Response::SyncResponse(true)),
                ..Default::default()
            }),
        ]);
        let tail = futures::stream::unfold(live, |mut live| async move {
            let n = live.recv().await.ok()?;
            let response = gnmi::SubscribeResponse {
                response: Some(gnmi::subscribe_response::Response::Update(n)),
                ..Default::default()
            };
            Some((Ok(response), live))
        });
        let stream: Responses = Box::pin(futures::StreamExt::chain(head, tail));
        Ok(Response::new(stream))
    }
}
