//! The simulator's errors, and the one place that decides their gRPC codes.

use tonic::Status;

/// Why a gNMI or control call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The client sent something invalid; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A path the client asked for has no data.
    #[error("{0}")]
    NotFound(String),
    /// The request uses something the simulator does not implement.
    #[error("{0}")]
    Unimplemented(String),
    /// The device is restarting or a stream was cut on purpose.
    #[error("{0}")]
    Unavailable(String),
    /// Missing or wrong credentials.
    #[error("invalid username or password")]
    Unauthenticated,
    /// A subscriber fell too far behind.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A control wait ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The simulator is shutting down.
    #[error("netsync-sim is shutting down")]
    ShuttingDown,
}

impl From<SimError> for Status {
    fn from(error: SimError) -> Self {
        let message = error.to_string();
        match error {
            SimError::InvalidArgument(_) => Status::invalid_argument(message),
            SimError::NotFound(_) => Status::not_found(message),
            SimError::Unimplemented(_) => Status::unimplemented(message),
            SimError::Unavailable(_) | SimError::ShuttingDown => Status::unavailable(message),
            SimError::Unauthenticated => Status::unauthenticated(message),
            SimError::ResourceExhausted(_) => Status::resource_exhausted(message),
            SimError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
        }
    }
}

/// The error a gNMI call gets while the device is offline (restarting).
pub fn offline() -> SimError {
    SimError::Unavailable("netsync-sim is restarting (offline)".into())
}
