//! netsync-sim for tests: in this process on an ephemeral loopback port
//! ([`Sim`]), or as its own process from its binary ([`sim_command`] with
//! [`crate::process::Process::start_listening`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use netsync_proto::gnmi;
use netsync_proto::gnmi::g_nmi_client::GNmiClient;
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::sim::v1::sim_control_client::SimControlClient;
use netsync_sim::{InitialState, ServeError, SimConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::deadline::within;

/// The seed of every generated test device, so that all tests see the same
/// device for a given size.
pub const SEED: u64 = 1;

/// A config with a generated device of `leaves` leaves.
pub fn generated(leaves: usize) -> SimConfig {
    SimConfig {
        initial: InitialState::Generated { leaves, seed: SEED },
        ..SimConfig::default()
    }
}

/// Faults under which every gNMI Set fails with `code`.
pub fn failing_sets(code: tonic::Code) -> simpb::Faults {
    simpb::Faults {
        set_failure: Some(simpb::SetFailure {
            code: code as i32,
            message: String::new(),
            count: 0,
        }),
        ..Default::default()
    }
}

/// Faults under which the next `count` gNMI Sets fail with `code` (then the
/// fault switches itself off).
pub fn failing_next_sets(code: tonic::Code, count: u64) -> simpb::Faults {
    simpb::Faults {
        set_failure: Some(simpb::SetFailure {
            code: code as i32,
            message: String::new(),
            count,
        }),
        ..Default::default()
    }
}

/// Faults under which every gNMI Set is held `ms` milliseconds.
pub fn held_sets(ms: u64) -> simpb::Faults {
    simpb::Faults {
        set_delay: Some(crate::datastore::millis(ms)),
        ..Default::default()
    }
}

/// netsync-sim serving in this process; stopped by [`Sim::stop`], or when
/// dropped (its task is aborted with the test's runtime).
pub struct Sim {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Sim {
    /// Starts the simulator with `config` on 127.0.0.1:0.
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

    /// A plaintext channel to the simulator.
    pub async fn channel(&self) -> Channel {
        crate::channel(self.addr).await
    }

    /// A gNMI client, with no limit on the size of what it reads.
    pub async fn gnmi(&self) -> GNmiClient<Channel> {
        GNmiClient::new(self.channel().await).max_decoding_message_size(usize::MAX)
    }

    /// A control client.
    pub async fn control(&self) -> SimControlClient<Channel> {
        SimControlClient::new(self.channel().await)
    }

    /// The counters now.
    pub async fn counters(&self) -> simpb::Counters {
        self.control()
            .await
            .get_counters(simpb::GetCountersRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Starts random churn: `rate` leaf changes a second, a fifth of them
    /// deletes, from a fixed seed.
    pub async fn start_churn(&self, rate: f64) {
        self.control()
            .await
            .start_churn(simpb::StartChurnRequest {
                rate,
                delete_share: 0.2,
                seed: 7,
            })
            .await
            .unwrap();
    }

    /// Stops the churn [`Sim::start_churn`] started.
    pub async fn stop_churn(&self) {
        self.control()
            .await
            .stop_churn(simpb::StopChurnRequest {})
            .await
            .unwrap();
    }

    /// Every leaf of the device as canonical path -> value, read with a
    /// PROTO gNMI Get of `/`.
    pub async fn leaves(&self) -> BTreeMap<String, gnmi::TypedValue> {
        crate::gnmi::get_all(&mut self.gnmi().await).await
    }

    /// Sets and deletes leaves through the control service (no gNMI), as a
    /// change made on the device itself.
    pub async fn set_leaves(&self, updates: Vec<(String, gnmi::TypedValue)>, deletes: Vec<String>) {
        self.try_set_leaves(updates, deletes).await.unwrap();
    }

    /// As [`Sim::set_leaves`], with the simulator's refusal (a value of
    /// another kind than the leaf holds, ...) as an error.
    pub async fn try_set_leaves(
        &self,
        updates: Vec<(String, gnmi::TypedValue)>,
        deletes: Vec<String>,
    ) -> Result<(), tonic::Status> {
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
            .map(|_| ())
    }

    /// Sets the simulator's faults (replacing the ones set before).
    pub async fn set_faults(&self, faults: simpb::Faults) {
        self.control()
            .await
            .set_faults(simpb::SetFaultsRequest {
                faults: Some(faults),
            })
            .await
            .unwrap();
    }

    /// Clears every fault.
    pub async fn clear_faults(&self) {
        self.control()
            .await
            .clear_faults(simpb::ClearFaultsRequest {})
            .await
            .unwrap();
    }

    /// Ends every open Subscribe stream after `after_messages` more messages
    /// (0: now) with UNAVAILABLE, as a device that drops its streams; its
    /// clients connect again. Returns how many streams were open.
    pub async fn disconnect(&self, after_messages: u64) -> u64 {
        self.control()
            .await
            .disconnect(simpb::DisconnectRequest { after_messages })
            .await
            .unwrap()
            .into_inner()
            .streams
    }

    /// gNMI Sets the device has received so far (accepted or not).
    pub async fn sets_received(&self) -> u64 {
        self.counters().await.sets_received
    }

    /// Signals shutdown and waits for a clean exit.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        within(self.task).await.unwrap().unwrap();
    }
}

/// The command that starts the netsync-sim binary `binary` on
/// 127.0.0.1:0 with JSON logs, a generated device of `leaves` leaves, and
/// `dir` as its working directory; more flags can be added to it.
pub fn sim_command(binary: &Path, dir: &Path, leaves: usize) -> Command {
    let mut command = Command::new(binary);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--leaves",
        ])
        .arg(leaves.to_string())
        .current_dir(dir);
    command
}
