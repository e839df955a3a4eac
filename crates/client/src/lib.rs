//! A typed Rust client of the netsync API: [`connect`] (plaintext or TLS, with
//! a client certificate for mutual TLS) gives a [`Client`], whose
//! [`Client::running`] reads a datastore's running at one revision and whose
//! [`Client::reflector`] keeps a local copy of it up to date ([`Reflector`]);
//! [`Client::fleet_reflector`] does so for every datastore matching a label
//! selector, through one watch ([`FleetReflector`]).
//!
//! The generated tonic client stays reachable ([`Client::raw`]) for every RPC
//! this crate does not wrap.

mod connect;
mod fleet;
mod reflector;

use std::collections::BTreeMap;

pub use connect::{Tls, connect};
pub use fleet::{FleetEvent, FleetReflector};
pub use netsync_proto::gnmi;
pub use netsync_proto::netsync::v1 as pb;
pub use reflector::{Event, Reflector};
use tonic::transport::Channel;

/// The generated tonic client of `netsync.v1.NetSync`.
pub type RawClient = pb::net_sync_client::NetSyncClient<Channel>;

/// Leaves of running: canonical gNMI path to value.
pub type Leaves = BTreeMap<String, gnmi::TypedValue>;

/// What can go wrong talking to netsyncd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a valid URI.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The TLS settings are incomplete (a certificate without its key).
    #[error("TLS settings: {0}")]
    Tls(String),
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// netsyncd answered with an error status.
    #[error(transparent)]
    Status(#[from] tonic::Status),
}

impl Error {
    /// Whether trying again later may succeed: netsyncd unreachable or
    /// restarting, or a watch cut for being slow. A bad request, an unknown
    /// datastore or a refused credential are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status(status) => is_retryable(status.code()),
            Self::InvalidAddress { .. } | Self::Tls(_) => false,
        }
    }
}

/// The codes after which the same call may succeed later. UNKNOWN and
/// CANCELLED are what tonic reports when a connection breaks mid-stream (a
/// netsyncd killed or restarted), which is why they count.
pub(crate) fn is_retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

/// Running of a datastore as one GetRunning call read it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Running {
    /// The revision every leaf was read at.
    pub revision: u64,
    /// The leaves.
    pub leaves: Leaves,
}

/// A netsync API client; cheap to clone (clones share one connection).
#[derive(Debug, Clone)]
pub struct Client {
    raw: RawClient,
}

impl Client {
    /// A client over an existing channel (for channels built by hand, with
    /// settings [`connect`] does not offer).
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            raw: RawClient::new(channel),
        }
    }

    /// The generated client, for the RPCs this crate does not wrap.
    pub fn raw(&self) -> RawClient {
        self.raw.clone()
    }

    /// Running of `datastore` (the subtree at `path`; empty for all) at the
    /// revision current when the read starts, or at `min_revision` once
    /// reached if it is later (waiting within the call's deadline).
    pub async fn running(
        &self,
        datastore: &str,
        path: &str,
        min_revision: u64,
    ) -> Result<Running, Error> {
        let mut stream = self
            .raw
            .clone()
            .get_running(pb::GetRunningRequest {
                datastore: datastore.into(),
                path: path.into(),
                min_revision,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut running = Running::default();
        while let Some(batch) = stream.message().await? {
            // Every message of one call is at the same revision.
            running.revision = batch.revision;
            for leaf in batch.leaves {
                running
                    .leaves
                    .insert(leaf.path, leaf.value.unwrap_or_default());
            }
        }
        Ok(running)
    }

    /// A reflector of `datastore`: see [`Reflector`]. Nothing is read until
    /// its first [`Reflector::next`].
    pub fn reflector(&self, datastore: &str) -> Reflector {
        Reflector::new(self.raw.clone(), datastore)
    }

    /// A reflector of every datastore whose labels match `selector` (all,
    /// if empty): see [`FleetReflector`]. Nothing is read until its first
    /// [`FleetReflector::next`].
    pub fn fleet_reflector(&self, selector: &str) -> FleetReflector {
        FleetReflector::new(self.raw.clone(), selector)
    }
}
