//! Limits that protect netsyncd from bad or greedy clients: the size of a
//! request message, the calls open at once on one connection, how long a call
//! may take to be answered, the number of datastores and the watchers of each,
//! the memory watchers hold ([`watch_memory`]) and how soon a connection
//! whose client stopped answering is closed (HTTP/2 keepalive).
//! Each limit reached is answered with RESOURCE_EXHAUSTED and a message naming
//! the setting, except the deadline, which is DEADLINE_EXCEEDED (see [`calls`]).

use std::time::Duration;

use clap::Args;
use serde::Deserialize;

pub mod calls;
pub mod watch_memory;
pub mod watchers;

pub use calls::CallLimitsLayer;
pub use watch_memory::WatchMemory;
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
    /// WatchSync calls open at once on one datastore; watches of many
    /// datastores count together against the same number.
    pub max_watchers_per_datastore: usize,
    /// Encoded bytes one watcher may be owed: queued for its client and not
    /// yet taken by HTTP/2, plus newer revisions waiting behind the one it is
    /// sending. Past it the watcher is ended with RESOURCE_EXHAUSTED and the
    /// revision to resume from.
    pub max_watcher_bytes: usize,
    /// Encoded bytes queued for all watchers together; a watcher that would
    /// take the total past it ends the watcher that has waited longest for
    /// its client (see [`watch_memory`]).
    pub max_watch_bytes_total: usize,
    /// How long a connection may stay silent before netsyncd sends an HTTP/2
    /// PING; `None`: never.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection (and every
    /// call on it, freeing their watcher slots) is closed.
    pub keepalive_timeout: Duration,
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
            // Eight parts of 1 MiB: a client on a slow link can fall a few
            // large commits behind before it must resume from the log.
            max_watcher_bytes: 8 << 20,
            // 32 watchers each a full budget behind, or many more that keep up.
            max_watch_bytes_total: 256 << 20,
            // A dead client's watcher slot is free within about 50 s; a ping
            // every 30 s of silence costs nothing worth counting.
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
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
    /// WatchSync calls open at once per datastore; watches of many
    /// datastores (label selector) count together as one more datastore
    /// [default: 100].
    #[arg(long, env = "NETSYNC_MAX_WATCHERS_PER_DATASTORE", value_name = "N")]
    pub max_watchers_per_datastore: Option<usize>,
    /// Encoded bytes one watcher may be owed before it is ended with
    /// RESOURCE_EXHAUSTED and from_revision [default: 8388608].
    #[arg(long, env = "NETSYNC_MAX_WATCHER_BYTES", value_name = "BYTES")]
    pub max_watcher_bytes: Option<usize>,
    /// Encoded bytes queued for all watchers together; past it the watcher
    /// waiting longest for its client is ended [default: 268435456].
    #[arg(long, env = "NETSYNC_MAX_WATCH_BYTES_TOTAL", value_name = "BYTES")]
    pub max_watch_bytes_total: Option<usize>,
    /// Seconds of silence on a client connection before an HTTP/2 PING; 0:
    /// no pings [default: 30].
    #[arg(
        long,
        env = "NETSYNC_KEEPALIVE_INTERVAL_SECONDS",
        value_name = "SECONDS"
    )]
    pub keepalive_interval_seconds: Option<u64>,
    /// Seconds a PING may go unanswered before the connection is closed
    /// [default: 20].
    #[arg(
        long,
        env = "NETSYNC_KEEPALIVE_TIMEOUT_SECONDS",
        value_name = "SECONDS"
    )]
    pub keepalive_timeout_seconds: Option<u64>,
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
    max_watcher_bytes: Option<usize>,
    max_watch_bytes_total: Option<usize>,
    keepalive_interval_seconds: Option<u64>,
    keepalive_timeout_seconds: Option<u64>,
}

/// A limit set out of range; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting} must be {rule}")]
pub struct InvalidLimit {
    /// The setting, as the configuration file names it.
    pub setting: &'static str,
    /// What it must be.
    pub rule: &'static str,
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
                Some(v) if v == T::from(0) => Err(InvalidLimit {
                    setting,
                    rule: "above zero",
                }),
                other => Ok(other),
            }
        }
        let max_watcher_bytes = positive(
            "max_watcher_bytes",
            args.max_watcher_bytes.or(file.max_watcher_bytes),
        )?
        .unwrap_or(defaults.max_watcher_bytes);
        let max_watch_bytes_total = positive(
            "max_watch_bytes_total",
            args.max_watch_bytes_total.or(file.max_watch_bytes_total),
        )?
        .unwrap_or(defaults.max_watch_bytes_total);
        if max_watch_bytes_total < max_watcher_bytes {
            // Otherwise one watcher within its own budget could be cut for
            // the total alone, which would make its budget a lie.
            return Err(InvalidLimit {
                setting: "max_watch_bytes_total",
                rule: "at least max_watcher_bytes",
            });
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
            max_watcher_bytes,
            max_watch_bytes_total,
            keepalive_interval: match args
                .keepalive_interval_seconds
                .or(file.keepalive_interval_seconds)
            {
                None => defaults.keepalive_interval,
                Some(0) => None,
                Some(seconds) => Some(Duration::from_secs(seconds)),
            },
            keepalive_timeout: positive(
                "keepalive_timeout_seconds",
                args.keepalive_timeout_seconds
                    .or(file.keepalive_timeout_seconds),
            )?
            .map_or(defaults.keepalive_timeout, Duration::from_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_budgets_and_keepalive_resolve_and_are_checked() {
        let defaults = ApiLimits::resolve(&LimitArgs::default(), None).unwrap();
        assert_eq!(defaults.max_watcher_bytes, 8 << 20);
        assert_eq!(defaults.max_watch_bytes_total, 256 << 20);
        assert_eq!(defaults.keepalive_interval, Some(Duration::from_secs(30)));
        assert_eq!(defaults.keepalive_timeout, Duration::from_secs(20));

        let file: LimitsFile = toml::from_str(
            "max_watcher_bytes = 1024\nmax_watch_bytes_total = 4096\nkeepalive_interval_seconds = 0",
        )
        .unwrap();
        let args = LimitArgs {
            keepalive_timeout_seconds: Some(3),
            ..LimitArgs::default()
        };
        let limits = ApiLimits::resolve(&args, Some(&file)).unwrap();
        assert_eq!(
            (limits.max_watcher_bytes, limits.max_watch_bytes_total),
            (1024, 4096)
        );
        assert_eq!(limits.keepalive_interval, None, "0 turns pings off");
        assert_eq!(limits.keepalive_timeout, Duration::from_secs(3));

        let smaller_total = LimitArgs {
            max_watcher_bytes: Some(2048),
            max_watch_bytes_total: Some(1024),
            ..LimitArgs::default()
        };
        let err = ApiLimits::resolve(&smaller_total, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "max_watch_bytes_total must be at least max_watcher_bytes"
        );
        let zero = LimitArgs {
            max_watcher_bytes: Some(0),
            ..LimitArgs::default()
        };
        let err = ApiLimits::resolve(&zero, None).unwrap_err().to_string();
        assert_eq!(err, "max_watcher_bytes must be above zero");
    }
}
