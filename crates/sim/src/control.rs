//! `netsync.sim.v1.SimControl`: run-time control of the simulator — leaf
//! changes without gNMI, faults, disconnects, restarts, churn and bursts, and
//! counters. Unauthenticated by design: it is a test fixture's back door.

use std::sync::Arc;
use std::time::Duration;

use netsync_core::Path;
use netsync_proto::netsync::sim::v1 as pb;
use netsync_proto::netsync::sim::v1::sim_control_server::SimControl;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::device::{ChurnSpec, Device, RestartSpec, SetOps, SetValue};
use crate::error::SimError;
use crate::faults::Faults;
use crate::tree::Kind;

/// Default wait of AwaitSubscribers.
const DEFAULT_AWAIT: Duration = Duration::from_secs(30);

/// The control service.
#[derive(Clone)]
pub struct ControlService {
    shared: Arc<Shared>,
    device: Device,
}

impl ControlService {
    /// The service over `device`.
    pub fn new(shared: Arc<Shared>, device: Device) -> Self {
        Self { shared, device }
    }

    fn faults_response(&self) -> pb::FaultsResponse {
        pb::FaultsResponse {
            faults: Some(self.shared.faults.borrow().to_proto(Instant::now())),
        }
    }
}

fn invalid(message: String) -> Status {
    SimError::InvalidArgument(message).into()
}

fn parse_path(text: &str, field: &str) -> Result<Path, Status> {
    Path::parse(text).map_err(|e| invalid(format!("{field}: {e}")))
}

/// Validates churn parameters.
fn churn_spec(rate: f64, delete_share: f64, seed: u64) -> Result<ChurnSpec, Status> {
    if !(0.0..=1.0).contains(&delete_share) {
        return Err(invalid(format!(
            "delete_share must be within [0, 1], got {delete_share}"
        )));
    }
    Ok(ChurnSpec {
        rate,
        delete_share,
        seed,
    })
}

#[tonic::async_trait]
impl SimControl for ControlService {
    async fn set_leaves(
        &self,
        request: Request<pb::SetLeavesRequest>,
    ) -> Result<Response<pb::SetLeavesResponse>, Status> {
        let request = request.into_inner();
        let mut ops = SetOps::default();
        for (i, text) in request.deletes.iter().enumerate() {
            ops.deletes
                .push(parse_path(text, &format!("deletes[{i}]"))?);
        }
        for (i, leaf) in request.updates.into_iter().enumerate() {
            let path = parse_path(&leaf.path, &format!("updates[{i}].path"))?;
            let value = leaf
                .value
                .filter(|v| v.value.is_some())
                .ok_or_else(|| invalid(format!("updates[{i}].value: no value given")))?;
            if Kind::of(&value) == Some(Kind::Other) {
                return Err(invalid(format!(
                    "updates[{i}].value: only scalar values (no JSON, any or proto bytes)"
                )));
            }
            ops.updates.push((path, SetValue::Scalar(value)));
        }
        let changed = self.device.set(ops, false).await?;
        Ok(Response::new(pb::SetLeavesResponse { changed }))
    }

    async fn get_counters(
        &self,
        _request: Request<pb::GetCountersRequest>,
    ) -> Result<Response<pb::Counters>, Status> {
        Ok(Response::new(self.shared.counters.to_proto()))
    }

    async fn await_subscribers(
        &self,
        request: Request<pb::AwaitSubscribersRequest>,
    ) -> Result<Response<pb::Counters>, Status> {
        let request = request.into_inner();
        let timeout = match request.timeout {
            None => DEFAULT_AWAIT,
            Some(d) => {
                Duration::try_from(d).map_err(|_| invalid("timeout must not be negative".into()))?
            }
        };
        let counters = &self.shared.counters;
        tokio::time::timeout(timeout, counters.wait_synced(request.min_streams))
            .await
            .map_err(|_| {
                SimError::DeadlineExceeded(format!(
                    "fewer than {} synced STREAM subscriptions after {timeout:?}",
                    request.min_streams
                ))
            })?;
        Ok(Response::new(counters.to_proto()))
    }

    async fn set_faults(
        &self,
        request: Request<pb::SetFaultsRequest>,
    ) -> Result<Response<pb::FaultsResponse>, Status> {
        let faults = request.into_inner().faults.unwrap_or_default();
        let faults = Faults::from_proto(faults, Instant::now())?;
        tracing::info!(?faults, "faults set");
        self.shared.faults.send_replace(faults);
        Ok(Response::new(self.faults_response()))
    }

    async fn clear_faults(
        &self,
        _request: Request<pb::ClearFaultsRequest>,
    ) -> Result<Response<pb::FaultsResponse>, Status> {
        self.shared.faults.send_replace(Faults::default());
        tracing::info!("faults cleared");
        Ok(Response::new(self.faults_response()))
    }

    async fn get_faults(
        &self,
        _request: Request<pb::GetFaultsRequest>,
    ) -> Result<Response<pb::FaultsResponse>, Status> {
        Ok(Response::new(self.faults_response()))
    }

    async fn disconnect(
        &self,
        request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        let after_messages = request.into_inner().after_messages;
        let streams = self
            .shared
            .counters
            .streams_open
            .load(std::sync::atomic::Ordering::Relaxed);
        self.shared.disconnect(after_messages);
        tracing::info!(after_messages, streams, "disconnect ordered");
        Ok(Response::new(pb::DisconnectResponse { streams }))
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::RestartResponse>, Status> {
        let r = request.into_inner();
        // Offline first, so that clients cut by the disconnect cannot come
        // back before the change.
        self.shared
            .online
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.shared.disconnect(0);
        let outcome = self
            .device
            .restart(RestartSpec {
                remove: r.remove,
                change: r.change,
                add: r.add,
                seed: r.seed,
                stay_offline: r.stay_offline,
            })
            .await?;
        Ok(Response::new(pb::RestartResponse {
            leaves: outcome.leaves,
            removed: outcome.removed,
            changed: outcome.changed,
            added: outcome.added,
        }))
    }

    async fn resume(
        &self,
        _request: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        self.device.resume().await?;
        Ok(Response::new(pb::ResumeResponse {}))
    }

    async fn start_churn(
        &self,
        request: Request<pb::StartChurnRequest>,
    ) -> Result<Response<pb::StartChurnResponse>, Status> {
        let r = request.into_inner();
        if !(r.rate.is_finite() && r.rate > 0.0) {
            return Err(invalid(format!("rate must be above 0, got {}", r.rate)));
        }
        let spec = churn_spec(r.rate, r.delete_share, r.seed)?;
        self.device.churn(Some(spec)).await?;
        tracing::info!(?spec, "churn started");
        Ok(Response::new(pb::StartChurnResponse {}))
    }

    async fn stop_churn(
        &self,
        _request: Request<pb::StopChurnRequest>,
    ) -> Result<Response<pb::StopChurnResponse>, Status> {
        let changes = self.device.churn(None).await?;
        tracing::info!(changes, "churn stopped");
        Ok(Response::new(pb::StopChurnResponse { changes }))
    }

    async fn burst(
        &self,
        request: Request<pb::BurstRequest>,
    ) -> Result<Response<pb::BurstResponse>, Status> {
        let r = request.into_inner();
        if r.count == 0 {
            return Err(invalid("count must be above 0".into()));
        }
        let spec = churn_spec(0.0, r.delete_share, r.seed)?;
        let changes = self.device.burst(r.count, spec).await?;
        Ok(Response::new(pb::BurstResponse { changes }))
    }
}
