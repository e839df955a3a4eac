//! What both engine tests build the same way: a datastore spec, device
//! responses, gNMI paths from text.

use std::time::Duration;

use netsync_core::Path;
use netsync_core::datastore::{
    DatastoreSpec, Encoding, RevertSpec, SyncMode, SyncSpec, TargetSpec,
};
use netsync_proto::gnmi;

/// A spec of datastore `name` syncing all of a PROTO device (which the fake
/// target stands in for) in `mode`, every `interval` and committing every
/// `commit_interval`; no revert.
pub fn spec(
    name: &str,
    mode: SyncMode,
    interval: Duration,
    commit_interval: Duration,
) -> DatastoreSpec {
    DatastoreSpec {
        name: name.into(),
        target: TargetSpec {
            address: "127.0.0.1:1".into(),
            tls: None,
            credentials: None,
            encoding: Encoding::Proto,
            target_name: String::new(),
            allow_insecure_credentials: false,
        },
        sync: SyncSpec {
            mode,
            paths: vec![Path::root()],
            interval,
            commit_interval,
            list_keys: vec![],
            initial_sync_timeout: None,
            caps: Default::default(),
        },
        revert: RevertSpec {
            enabled: false,
            debounce: Duration::ZERO,
        },
    }
}

/// A gNMI path from text.
pub fn gpath(p: &str) -> gnmi::Path {
    Path::parse(p).unwrap().to_gnmi()
}

/// A notification as a Subscribe response.
pub fn update_response(n: gnmi::Notification) -> gnmi::SubscribeResponse {
    gnmi::SubscribeResponse {
        response: Some(gnmi::subscribe_response::Response::Update(n)),
        ..Default::default()
    }
}

/// `sync_response`.
pub fn sync_response() -> gnmi::SubscribeResponse {
    gnmi::SubscribeResponse {
        response: Some(gnmi::subscribe_response::Response::SyncResponse(true)),
        ..Default::default()
    }
}
