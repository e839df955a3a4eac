//! A small scriptable gNMI device for the server's tests, served over real
//! gRPC on loopback: Subscribe STREAM sends the current leaves (string
//! values), `sync_response`, then every change made through [`Device::set`] /
//! [`Device::delete`]. Smaller and more predictable than netsync-sim where a
//! test needs exactly these leaves and nothing else. It can also misbehave
//! on purpose: hold its `sync_response` back ([`Device::hold_sync_response`]).

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
    /// Dump without `sync_response`, then send nothing.
    hold_sync: bool,
    /// Subscribe calls received.
    subscribes: u64,
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
            ..State::default()
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

    /// From the next Subscribe on, sends the dump but never its
    /// `sync_response` (nor anything after it), keeping the stream open: a
    /// device whose initial sync never ends.
    pub fn hold_sync_response(&self, hold: bool) {
        self.state.lock().unwrap().hold_sync = hold;
    }

    /// Subscribe calls received so far.
    pub fn subscribes(&self) -> u64 {
        self.state.lock().unwrap().subscribes
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
        let (dump, live, hold) = {
            let mut state = self.state.lock().unwrap();
            state.subscribes += 1;
            let pairs: Vec<(&str, &str)> = state
                .leaves
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            (
                notification(&pairs, &[]),
                self.changes.subscribe(),
                state.hold_sync,
            )
        };
        let dump = gnmi::SubscribeResponse {
            response: Some(gnmi::subscribe_response::Response::Update(dump)),
            ..Default::default()
        };
        if hold {
            let stream: Responses = Box::pin(futures::StreamExt::chain(
                futures::stream::iter([Ok(dump)]),
                futures::stream::pending(),
            ));
            return Ok(Response::new(stream));
        }
        let head = futures::stream::iter([
            Ok(dump),
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
