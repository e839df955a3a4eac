//! The device's side: SimControl calls, the device's leaves read over gNMI,
//! and the bare gNMI client, which reads the same Subscribe stream netsyncd
//! reads and discards it: the physical limit netsyncd is measured against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use netsync_core::Path;
use netsync_proto::gnmi;
use netsync_proto::gnmi::g_nmi_client::GNmiClient;
use netsync_proto::gnmi::subscribe_response::Response;
use netsync_proto::netsync::sim::v1 as simpb;
use netsync_proto::netsync::sim::v1::sim_control_client::SimControlClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// An open Subscribe call.
struct Subscription {
    responses: tonic::Streaming<gnmi::SubscribeResponse>,
    /// Keeps the request side open; dropping it ends the call.
    _open: oneshot::Sender<()>,
}

/// A connection to one simulated device.
#[derive(Clone)]
pub struct Device {
    /// SimControl.
    pub control: SimControlClient<Channel>,
    gnmi: GNmiClient<Channel>,
}

/// A gNMI `uint_val`.
pub fn uint(value: u64) -> gnmi::TypedValue {
    gnmi::TypedValue {
        value: Some(gnmi::typed_value::Value::UintVal(value)),
    }
}

/// The subscription netsyncd sends for a datastore with the default sync
/// settings and PROTO encoding (`subscription()` in
/// `crates/core/src/sync/ingest.rs`): STREAM, ON_CHANGE on `/`, no prefix.
pub fn sync_request(mode: gnmi::subscription_list::Mode) -> gnmi::SubscribeRequest {
    gnmi::SubscribeRequest {
        request: Some(gnmi::subscribe_request::Request::Subscribe(
            gnmi::SubscriptionList {
                subscription: vec![gnmi::Subscription {
                    path: Some(Path::root().to_gnmi()),
                    mode: gnmi::SubscriptionMode::OnChange as i32,
                    ..Default::default()
                }],
                mode: mode as i32,
                encoding: gnmi::Encoding::Proto as i32,
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

impl Device {
    /// Connects to the simulator at `addr` and waits until its state is built
    /// (the control service answers only then).
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        // The same transport settings as netsyncd's gNMI client
        // (`GnmiTarget::new`), so that the bare client reads the stream as it does.
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to netsync-sim at {addr}"))?;
        let mut device = Self {
            control: SimControlClient::new(channel.clone()),
            gnmi: GNmiClient::new(channel).max_decoding_message_size(usize::MAX),
        };
        device.counters().await?;
        Ok(device)
    }

    /// The simulator's counters.
    pub async fn counters(&mut self) -> anyhow::Result<simpb::Counters> {
        Ok(self
            .control
            .get_counters(simpb::GetCountersRequest {})
            .await
            .context("SimControl/GetCounters")?
            .into_inner())
    }

    /// Waits until the simulator serves no Subscribe stream, so that a
    /// measurement after the bare client's sees only netsyncd's stream.
    pub async fn wait_no_streams(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + deadline;
        loop {
            let open = self.counters().await?.streams_open;
            if open == 0 {
                return Ok(());
            }
            if Instant::now() >= give_up {
                bail!("the simulator still serves {open} streams after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets one leaf through SimControl (pushed to subscribers like a Set).
    pub async fn set_leaf(&mut self, path: &str, value: gnmi::TypedValue) -> anyhow::Result<()> {
        self.control
            .set_leaves(simpb::SetLeavesRequest {
                updates: vec![simpb::Leaf {
                    path: path.into(),
                    value: Some(value),
                }],
                deletes: Vec::new(),
            })
            .await
            .context("SimControl/SetLeaves")?;
        Ok(())
    }

    /// Starts (or retunes) churn, 10 % of it deletes and re-creates.
    pub async fn start_churn(&mut self, rate: f64, seed: u64) -> anyhow::Result<()> {
        self.control
            .start_churn(simpb::StartChurnRequest {
                rate,
                delete_share: 0.1,
                seed,
            })
            .await
            .context("SimControl/StartChurn")?;
        Ok(())
    }

    /// Stops churn; returns the changes it made.
    pub async fn stop_churn(&mut self) -> anyhow::Result<u64> {
        Ok(self
            .control
            .stop_churn(simpb::StopChurnRequest {})
            .await
            .context("SimControl/StopChurn")?
            .into_inner()
            .changes)
    }

    /// Makes churn pick its leaves now: churn chooses among the leaves that
    /// exist when it first runs, so leaves created after this (the markers) are
    /// never churned and never coalesced away.
    pub async fn fix_churn_population(&mut self) -> anyhow::Result<()> {
        self.control
            .burst(simpb::BurstRequest {
                count: 1,
                delete_share: 0.0,
                seed: 1,
            })
            .await
            .context("SimControl/Burst")?;
        Ok(())
    }

    /// Holds every gNMI Set for `delay` (0: no fault).
    pub async fn hold_sets(&mut self, delay: Duration) -> anyhow::Result<()> {
        if delay.is_zero() {
            self.control
                .clear_faults(simpb::ClearFaultsRequest {})
                .await
                .context("SimControl/ClearFaults")?;
        } else {
            self.control
                .set_faults(simpb::SetFaultsRequest {
                    faults: Some(simpb::Faults {
                        set_delay: Some(prost_types::Duration::try_from(delay)?),
                        ..Default::default()
                    }),
                })
                .await
                .context("SimControl/SetFaults")?;
        }
        Ok(())
    }

    /// Opens a Subscribe stream with `request`. The request side stays open,
    /// as netsyncd's does, until the [`Subscription`] is dropped.
    async fn subscribe(&self, request: gnmi::SubscribeRequest) -> anyhow::Result<Subscription> {
        let (open, closed) = oneshot::channel::<()>();
        // Ends when `open` is dropped. HTTP/2 cancels a stream only once both
        // its sides are let go of: with a request side that never ended, a
        // dropped subscription would go on being served.
        let requests = futures::stream::iter([request]).chain(
            futures::stream::once(closed)
                .filter_map(|_| futures::future::ready(None::<gnmi::SubscribeRequest>)),
        );
        let responses = self
            .gnmi
            .clone()
            .subscribe(requests)
            .await
            .context("gNMI Subscribe")?
            .into_inner();
        Ok(Subscription {
            responses,
            _open: open,
        })
    }

    /// Bare client, initial dump: subscribes as netsyncd does, decodes every
    /// response with prost and discards it, until `sync_response`. Returns the
    /// updates read and the time from the call to `sync_response`.
    pub async fn read_dump(&self) -> anyhow::Result<(u64, Duration)> {
        let start = Instant::now();
        let mut stream = self
            .subscribe(sync_request(gnmi::subscription_list::Mode::Stream))
            .await?;
        let updates = drain_dump(&mut stream).await?;
        Ok((updates, start.elapsed()))
    }

    /// Bare client, changes: subscribes as netsyncd does, reads the dump, then
    /// counts the updates and deletes that arrive during `window`, after
    /// `warmup`. Returns them per second.
    pub async fn read_rate(&self, warmup: Duration, window: Duration) -> anyhow::Result<f64> {
        let mut stream = self
            .subscribe(sync_request(gnmi::subscription_list::Mode::Stream))
            .await?;
        drain_dump(&mut stream).await?;
        let begin = Instant::now() + warmup;
        let end = begin + window;
        let mut counted = 0u64;
        loop {
            let next = tokio::time::timeout_at(end.into(), stream.responses.message()).await;
            let Ok(next) = next else { break };
            let response = next
                .context("bare client stream")?
                .context("the device ended the stream")?;
            if let Some(Response::Update(n)) = response.response
                && Instant::now() >= begin
            {
                counted += (n.update.len() + n.delete.len()) as u64;
            }
        }
        Ok(counted as f64 / window.as_secs_f64())
    }

    /// Every leaf of the device, by canonical path, from a ONCE subscription.
    pub async fn leaves(&self) -> anyhow::Result<HashMap<String, gnmi::TypedValue>> {
        let mut stream = self
            .subscribe(sync_request(gnmi::subscription_list::Mode::Once))
            .await?;
        let mut leaves = HashMap::new();
        while let Some(response) = stream
            .responses
            .message()
            .await
            .context("ONCE subscription")?
        {
            match response.response {
                Some(Response::Update(n)) => {
                    for update in n.update {
                        let path = update.path.context("an update without a path")?;
                        let path = Path::from_gnmi(n.prefix.as_ref(), &path)?.to_string();
                        leaves.insert(path, update.val.context("an update without a value")?);
                    }
                }
                Some(Response::SyncResponse(_)) => return Ok(leaves),
                _ => {}
            }
        }
        bail!("the device ended a ONCE subscription before sync_response")
    }
}

/// Whether `path` is a list entry's key leaf (`/l[k=v]/k`). The simulator's
/// churn never changes one: a device does not change a key on its own.
pub fn is_key_leaf(path: &str) -> bool {
    let Ok(path) = Path::parse(path) else {
        return false;
    };
    match path.elems() {
        [.., entry, leaf] => entry.key(leaf.name()).is_some(),
        _ => false,
    }
}

/// Reads the dump of `stream` up to `sync_response`; returns its updates.
async fn drain_dump(stream: &mut Subscription) -> anyhow::Result<u64> {
    let mut updates = 0u64;
    while let Some(response) = stream
        .responses
        .message()
        .await
        .context("bare client stream")?
    {
        match response.response {
            Some(Response::Update(n)) => updates += n.update.len() as u64,
            Some(Response::SyncResponse(_)) => return Ok(updates),
            _ => {}
        }
    }
    bail!("the device ended the stream before sync_response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_leaves_are_recognised() {
        assert!(is_key_leaf("/interfaces/interface[name=e1]/name"));
        assert!(!is_key_leaf("/interfaces/interface[name=e1]/config/name"));
        assert!(!is_key_leaf("/system/hostname"));
    }
}
