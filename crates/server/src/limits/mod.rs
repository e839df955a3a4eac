//! Limits that protect netsyncd from bad or greedy clients: the size of a
//! request message, the calls open at once on one connection, how long a call
//! may take to be answered, the number of datastores and the watchers of each.
//! Each limit reached is answered with RESOURCE_EXHAUSTED and a message naming
//! the setting, except the deadline, which is DEADLINE_EXCEEDED (see [`calls`]).

use std::time::Duration;

use clap::Args;
use serde::Deserialize;

pub mod calls;
pub mod watchers;

pub use calls::CallLimitsLayer;
pub use watchers::{WatcherSlot, WatcherSlots};

/// The API limits in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest request message accepted, in bytes (after the 5-byte gRPC
    /// frame header).
    pub max_message_bytes: usize,
    /// Calls (HTTP/2 streams) open at once on one client connection.
    pub max_concurrent_streams: usize,
    /// Longest time a call may take to be answered: the default deadline of
    /// calls that set none, and the cap of longer client deadlines. A stream
    /// (WatchSync, GetRunning) is bound only until its first response.
    pub request_timeout: Duration,
    /// Datastores this process keeps at most.
    pub max_datastores: usize,
    /// WatchSync calls open at once on one datastore.
    pub max_watchers_per_datastore: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            // gRPC's usual default, and tonic's.
            max_message_bytes: 4 << 20,
            // The smallest limit HTTP/2 recommends (RFC 9113, 6.5.2).
            max_concurrent_streams: 100,
            request_timeout: Duration::from_secs(60),
            max_datastores: 1000,
            max_watchers_per_datastore: 100,
        }
    }
}

/// Flags of the API limits.
#[derive(Debug, Default, Args)]
pub struct LimitArgs {
    /// Largest request message accepted, in bytes [default: 4194304].
    #[arg(long, env = "NETSYNC_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Calls open at once on one client connection [default: 100].
    #[arg(long, env = "NETSYNC_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<usize>,
    /// Deadline of calls that set none, and cap of longer ones, in seconds;
    /// streams are bound only until their first response [default: 60].
    #[arg(long, env = "NETSYNC_REQUEST_TIMEOUT_SECONDS", value_name = "SECONDS")]
    pub request_timeout_seconds: Option<u64>,
    /// Datastores kept at most [default: 1000].
    #[arg(long, env = "NETSYNC_MAX_DATASTORES", value_name = "N")]
    pub max_datastores: Option<usize>,
    /// WatchSync calls open at once per datastore [default: 100].
    #[arg(long, env = "NETSYNC_MAX_WATCHERS_PER_DATASTORE", value_name = "N")]
    pub max_watchers_per_datastore: Option<usize>,
}

/// The `[limits]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    max_message_bytes: Option<usize>,
    max_concurrent_streams: Option<usize>,
    request_timeout_seconds: Option<u64>,
    max_datastores: Option<usize>,
    max_watchers_per_datastore: Option<usize>,
}

/// A limit set out of range; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting} must be above zero")]
pub struct InvalidLimit {
    /// The setting, as the configuration file names it.
    pub setting: &'static str,
}

impl ApiLimits {
    /// Flags and environment (in `args`) over the file's `[limits]`, over defaults.
    pub fn resolve(args: &LimitArgs, file: Option<&LimitsFile>) -> Result<Self, InvalidLimit> {
        let empty = LimitsFile::default();
        let file = file.unwrap_or(&empty);
        let defaults = Self::default();
        fn positive<T: PartialEq + From<u8>>(
            setting: &'static str,
            value: Option<T>,
        ) -> Result<Option<T>, InvalidLimit> {
            match value {
                Some(v) if v == T::from(0) => Err(InvalidLimit { setting }),
                other => Ok(other),
            }
        }
        Ok(Self {
            max_message_bytes: positive(
                "max_message_bytes",
                args.max_message_bytes.or(file.max_message_bytes),
            )?
            .unwrap_or(defaults.max_message_bytes),
            max_concurrent_streams: positive(
                "max_concurrent_streams",
                args.max_concurrent_streams.or(file.max_concurrent_streams),
            )?
            .unwrap_or(defaults.max_concurrent_streams),
            request_timeout: positive(
                "request_timeout_seconds",
                args.request_timeout_seconds
                    .or(file.request_timeout_seconds),
            )?
            .map_or(defaults.request_timeout, Duration::from_secs),
            max_datastores: positive(
                "max_datastores",
                args.max_datastores.or(file.max_datastores),
            )?
            .unwrap_or(defaults.max_datastores),
            max_watchers_per_datastore: positive(
                "max_watchers_per_datastore",
                args.max_watchers_per_datastore
                    .or(file.max_watchers_per_datastore),
            )?
            .unwrap_or(defaults.max_watchers_per_datastore),
        })
    }
}
