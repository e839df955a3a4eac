//! netsync-sim: a gNMI 0.10 device simulator for tests, benchmarks and demos.
//!
//! [`serve`] is the seam that `main` and the integration tests use: it builds
//! the initial state, starts the device actor (see [`device`]) and serves, on
//! one port, gNMI (`gnmi.gNMI`), the run-time control service
//! (`netsync.sim.v1.SimControl`), gRPC health and reflection.

pub mod auth;
pub mod control;
pub mod counters;
pub mod device;
pub mod error;
pub mod faults;
pub mod generate;
pub mod gnmi;
pub mod json;
pub mod tree;
pub mod wire;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use netsync_core::Path;
use netsync_proto::netsync::sim::v1::sim_control_server::SimControlServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Credentials, TlsIdentity};
pub use device::ChurnSpec;
pub use faults::Faults;
pub use json::ListKeys;

use crate::counters::Counters;
use crate::device::{Device, DeviceConfig};
use crate::faults::DisconnectOrder;
use crate::tree::Tree;

/// Where the initial state comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// The deterministic generator: `leaves` leaves from `seed`.
    Generated {
        /// Number of leaves.
        leaves: usize,
        /// Generator seed.
        seed: u64,
    },
    /// A JSON_IETF document.
    File(PathBuf),
}

/// Everything `serve` needs to know.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The initial state.
    pub initial: InitialState,
    /// Keys of lists in a state file that the usual key names do not cover.
    pub list_keys: ListKeys,
    /// Credentials required on gNMI calls, if any.
    pub credentials: Option<Credentials>,
    /// TLS identity; plaintext without one.
    pub tls: Option<TlsIdentity>,
    /// PEM CA bundle for mutual TLS: with TLS, clients must present a
    /// certificate it signed.
    pub tls_client_ca: Option<Vec<u8>>,
    /// Most updates per notification in dumps and change streams.
    pub notification_batch: usize,
    /// How many change batches a subscriber may fall behind before it is cut
    /// with RESOURCE_EXHAUSTED.
    pub queue_batches: usize,
    /// Churn running from the start.
    pub churn: Option<ChurnSpec>,
    /// Faults in force from the start.
    pub faults: Faults,
    /// How long in-flight calls may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// The one encoding a Set's values are taken in, as by a device that
    /// speaks only that one (JSON_IETF: `json_ietf_val`, JSON: `json_val`,
    /// ASCII: `ascii_val`, PROTO: typed scalars); other values are refused
    /// with INVALID_ARGUMENT. `None`: any.
    pub set_encoding: Option<netsync_proto::gnmi::Encoding>,
    /// The origin every response carries in its notification prefix, like a
    /// device that qualifies its answers (`openconfig`); none by default.
    pub response_origin: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            initial: InitialState::Generated {
                leaves: 1000,
                seed: 1,
            },
            list_keys: ListKeys::default(),
            credentials: None,
            tls: None,
            tls_client_ca: None,
            notification_batch: 1000,
            queue_batches: 4096,
            churn: None,
            faults: Faults::default(),
            shutdown_grace: Duration::from_secs(5),
            set_encoding: None,
            response_origin: None,
        }
    }
}

/// State shared by the services and the device actor.
pub struct Shared {
    /// What happened so far.
    pub counters: Arc<Counters>,
    /// Faults in force.
    pub faults: watch::Sender<Faults>,
    /// Disconnect orders for open streams.
    pub orders: watch::Sender<DisconnectOrder>,
    /// False while a simulated restart keeps the device offline.
    pub online: AtomicBool,
    /// Credentials required on gNMI calls.
    pub credentials: Option<Credentials>,
    /// Most updates per notification.
    pub notification_batch: usize,
    /// The one encoding Set values are taken in, if only one.
    pub set_encoding: Option<netsync_proto::gnmi::Encoding>,
    /// The origin responses carry in their prefix, if any.
    pub response_origin: Option<String>,
    /// Fires at shutdown; every stream and the actor end.
    pub cancel: CancellationToken,
    /// Owns the stream tasks.
    pub tasks: TaskTracker,
}

impl Shared {
    /// Orders every open stream to end after `after_messages` more messages
    /// (0: now).
    pub fn disconnect(&self, after_messages: u64) {
        self.orders.send_modify(|order| {
            order.epoch += 1;
            order.after_messages = after_messages;
        });
    }
}

/// Why the simulator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state file could not be read or loaded.
    #[error("state file {path}: {problem}")]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC transport failed (TLS set-up included).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Building the initial state panicked.
    #[error("building the initial state failed: {0}")]
    Build(String),
}

/// Service names served, as reflection lists them.
const SERVED: [&str; 5] = [
    "gnmi.gNMI",
    "netsync.sim.v1.SimControl",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Builds the initial state described by `config`.
pub fn initial_tree(config: &SimConfig) -> Result<Tree, ServeError> {
    match &config.initial {
        InitialState::Generated { leaves, seed } => {
            Ok(Tree::build(generate::device(*leaves, *seed)))
        }
        InitialState::File(path) => {
            let problem = |problem: String| ServeError::State {
                path: path.clone(),
                problem,
            };
            let text = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
            let doc: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| problem(e.to_string()))?;
            let hints = FileHints(&config.list_keys);
            let leaves =
                json::load(&Path::root(), &doc, &hints).map_err(|e| problem(e.to_string()))?;
            Ok(Tree::build(leaves))
        }
    }
}

/// Hints for a state file: only the configured list keys.
struct FileHints<'a>(&'a ListKeys);

impl json::Hints for FileHints<'_> {
    fn value_at(&self, _: &Path) -> Option<netsync_proto::gnmi::TypedValue> {
        None
    }

    fn list_keys(&self, parent: &Path, name: &str) -> Option<Vec<String>> {
        self.0.get(parent, name)
    }
}

/// Builds the initial state, then serves gNMI, SimControl, health and
/// reflection on `listener` until `shutdown` completes. At shutdown every
/// Subscribe stream ends with UNAVAILABLE, churn stops, and in-flight unary
/// calls get `config.shutdown_grace` to finish.
pub async fn serve(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let build_config = config.clone();
    let tree = tokio::task::spawn_blocking(move || initial_tree(&build_config))
        .await
        .map_err(|e| ServeError::Build(e.to_string()))??;
    tracing::info!(leaves = tree.len(), "initial state built");

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::default()),
        faults: watch::Sender::new(config.faults.clone()),
        orders: watch::Sender::new(DisconnectOrder::default()),
        online: AtomicBool::new(true),
        credentials: config.credentials.clone(),
        notification_batch: config.notification_batch,
        set_encoding: config.set_encoding,
        response_origin: config.response_origin.clone().filter(|o| !o.is_empty()),
        cancel: cancel.clone(),
        tasks: tasks.clone(),
    });
    let (device, actor) = Device::spawn(
        tree,
        DeviceConfig {
            batch_changes: config.notification_batch,
            queue_batches: config.queue_batches,
            churn: config.churn,
        },
        Arc::clone(&shared),
        cancel.clone(),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SimControlServer<control::ControlService>>()
        .await;
    health
        .set_service_status("gnmi.gNMI", tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = || {
        SERVED.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(netsync_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };

    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Large windows: a dump of a million leaves should not wait for
        // window updates on loopback.
        .initial_connection_window_size(Some(16 << 20))
        .initial_stream_window_size(Some(8 << 20));
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        let mut tls_config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &config.tls_client_ca {
            tls_config =
                tls_config.client_ca_root(tonic::transport::Certificate::from_pem(ca.clone()));
        }
        builder = builder.tls_config(tls_config)?;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = builder
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(gnmi::GnmiRouter::new(Arc::clone(&shared), device.clone()))
        .add_service(SimControlServer::new(control::ControlService::new(
            Arc::clone(&shared),
            device.clone(),
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tracing::info!(
        tls = config.tls.is_some(),
        client_certificates = config.tls.is_some() && config.tls_client_ca.is_some(),
        "netsync-sim serving"
    );

    let result = tokio::select! {
        result = &mut server => result.map_err(ServeError::from),
        () = shutdown => {
            tracing::info!("shutdown requested");
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            // Streams end first (they would hold the server open forever).
            cancel.cancel();
            let _ = stop_tx.send(());
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(result) => result.map_err(ServeError::from),
                Err(_) => {
                    tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls cut off after the shutdown grace period");
                    Ok(())
                }
            }
        }
    };
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    drop(device);
    let _ = actor.await;
    tracing::info!("netsync-sim stopped");
    result
}
