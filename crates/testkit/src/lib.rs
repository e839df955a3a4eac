//! What every netsync test needs, once: the simulator in-process
//! ([`sim::Sim`]) and any of our binaries as a guarded child process
//! ([`process::Process`]), finders for the outside tools the tests drive
//! netsync with ([`tools`]), certificates ([`pki`]), one set of deadlines
//! ([`deadline`]), a throwaway PostgreSQL cluster ([`postgres`]), a small
//! scriptable gNMI device ([`device::Device`]), gNMI request and stream
//! helpers ([`gnmi`]), datastore builders ([`datastore`]) and netsync API
//! client helpers ([`client`]).
//!
//! A dev-only crate: tests and the benchmark harness depend on it; netsyncd
//! and netsync-sim never do. It knows netsync-sim (to run it in-process) but
//! not netsync-server, whose tests start netsyncd through their own thin
//! wrapper, so that the crate graph of everything shipped stays a tree.

pub mod client;
pub mod datastore;
pub mod deadline;
pub mod device;
pub mod gnmi;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod sim;
pub mod tools;

pub use deadline::{DEADLINE, LONG_DEADLINE, within};

/// A tonic channel to `http://addr`, connected now.
pub async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid URI")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// A tonic channel to `http://addr` whose HTTP/2 flow-control windows (per
/// stream and per connection) are `window` bytes: a client that reads slowly
/// on it holds the server back after about `window` bytes, instead of after
/// the default 64 KiB and more.
pub async fn channel_with_window(
    addr: std::net::SocketAddr,
    window: u32,
) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid URI")
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}
