//! netsync-sim in this process, on an ephemeral loopback port, with the
//! helpers the engine tests need: the device's leaves read over gNMI, and the
//! control client.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use netsync_core::Path;
use netsync_proto::gnmi;
use netsync_proto::gnmi::g_nmi_client::GNmiClient;
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::sim::v1::sim_control_client::SimControlClient;
use netsync_sim::{InitialState, ServeError, SimConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A simulated device, stopped by [`Sim::stop`].
pub struct Sim {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

/// A generated device of `leaves` leaves.
pub fn generated(leaves: usize) -> SimConfig {
    SimConfig {
        initial: InitialState::Generated { leaves, seed: 7 },
        ..SimConfig::default()
    }
}

impl Sim {
    /// Starts the simulator with `config`.
    pub async fn start(config: SimConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            netsync_sim::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self { addr, stop, task }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The control client.
    pub async fn control(&self) -> SimControlClient<Channel> {
        SimControlClient::new(self.channel().await)
    }

    /// Every leaf of the device, read with a PROTO gNMI Get of `/`.
    pub async fn leaves(&self) -> BTreeMap<String, gnmi::TypedValue> {
        let mut client =
            GNmiClient::new(self.channel().await).max_decoding_message_size(usize::MAX);
        let response = client
            .get(gnmi::GetRequest {
                path: vec![gnmi::Path::default()],
                encoding: gnmi::Encoding::Proto as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut leaves = BTreeMap::new();
        for n in response.notification {
            for u in n.update {
                let path = Path::from_gnmi(n.prefix.as_ref(), u.path.as_ref().unwrap()).unwrap();
                leaves.insert(path.to_string(), u.val.unwrap());
            }
        }
        leaves
    }

    /// Sets leaves through the control service (no gNMI), as a change made on
    /// the device itself.
    pub async fn set_leaves(&self, updates: Vec<(String, gnmi::TypedValue)>, deletes: Vec<String>) {
        self.control()
            .await
            .set_leaves(simpb::SetLeavesRequest {
                updates: updates
                    .into_iter()
                    .map(|(path, value)| simpb::Leaf {
                        path,
                        value: Some(value),
                    })
                    .collect(),
                deletes,
            })
            .await
            .unwrap();
    }

    /// Stops the simulator.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A string value.
pub fn string(s: &str) -> gnmi::TypedValue {
    gnmi::TypedValue {
        value: Some(gnmi::typed_value::Value::StringVal(s.into())),
    }
}
