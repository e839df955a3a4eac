//! `netsyncd health`: one grpc.health.v1 Check against a running netsyncd,
//! for container health checks in images that have no shell or gRPC client.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::HealthArgs;

/// Asks `args.addr` about `args.service` in plaintext, within the timeout.
/// `Ok(())` when it answers SERVING; otherwise what it answered, or why it
/// could not be asked.
pub async fn check(args: &HealthArgs) -> Result<(), String> {
    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    let ask = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))
            .map_err(|e| format!("bad address {}: {e}", args.addr))?
            .connect_timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        match answer.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(other.as_str_name().to_owned()),
        }
    };
    tokio::time::timeout(timeout, ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {} within {timeout:?}", args.addr)))
}
