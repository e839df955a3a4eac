//! netsync API client helpers: running read at one revision, waiting for a
//! revision or a condition on running (event-driven: each wait is a
//! GetRunning with `min_revision`, never a sleep), convergence to a device,
//! and the checks a user makes on a datastore's status and on the details of
//! an error.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_client::NetSyncClient;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::deadline::DEADLINE;

/// A netsync API client.
pub type Client = NetSyncClient<Channel>;

/// Running as read by one GetRunning call.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    /// The revision every message of the call was at.
    pub revision: u64,
    /// Its leaves, canonical path -> value.
    pub leaves: BTreeMap<String, gnmi::TypedValue>,
}

impl Running {
    /// The leaves as path -> text; panics on a value that is not a string.
    pub fn strings(&self) -> BTreeMap<String, String> {
        self.leaves
            .iter()
            .map(|(path, value)| (path.clone(), crate::gnmi::string_of(value).to_string()))
            .collect()
    }
}

/// Running of `name` at `min_revision` or later, waiting up to `timeout` for
/// it; checks that every message of the call is of one revision.
pub async fn try_running(
    client: &mut Client,
    name: &str,
    min_revision: u64,
    timeout: Duration,
) -> Result<Running, tonic::Status> {
    let mut request = tonic::Request::new(pb::GetRunningRequest {
        datastore: name.into(),
        path: String::new(),
        min_revision,
        with_owner: false,
        ..Default::default()
    });
    request.set_timeout(timeout);
    collect(client, request).await
}

/// The leaves of one GetRunning call, checking that every message of it is
/// of one revision.
async fn collect(
    client: &mut Client,
    request: tonic::Request<pb::GetRunningRequest>,
) -> Result<Running, tonic::Status> {
    let mut stream = client.get_running(request).await?.into_inner();
    let mut leaves = BTreeMap::new();
    let mut revision = None;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        assert!(
            revision.is_none_or(|r| r == batch.revision),
            "one GetRunning call gave revisions {revision:?} and {}",
            batch.revision
        );
        revision = Some(batch.revision);
        for leaf in batch.leaves {
            leaves.insert(leaf.path, leaf.value.unwrap_or_default());
        }
    }
    Ok(Running {
        revision: revision.unwrap_or(0),
        leaves,
    })
}

/// Running as one GetRunning call with `request` answers it (within
/// [`DEADLINE`]); checks that every message of the call is of one revision.
pub async fn read_running(
    client: &mut Client,
    request: pb::GetRunningRequest,
) -> Result<Running, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(DEADLINE);
    collect(client, request).await
}

/// Running of `name` at `min_revision` or later (waiting up to [`DEADLINE`]).
pub async fn running(client: &mut Client, name: &str, min_revision: u64) -> Running {
    try_running(client, name, min_revision, DEADLINE)
        .await
        .unwrap_or_else(|s| panic!("running of {name} at {min_revision} or later: {s:?}"))
}

/// Creates datastore `name` of the device at `address` (PROTO, committing
/// every 10 ms: quick to follow a churning device) and waits for its first
/// revision.
pub async fn create_synced(client: &mut Client, name: &str, address: impl ToString) {
    client
        .create_datastore(
            crate::datastore::DatastoreBuilder::new(name, address)
                .encoding(pb::Encoding::Proto)
                .commit_interval_ms(10)
                .create(),
        )
        .await
        .unwrap_or_else(|s| panic!("CreateDatastore {name}: {s:?}"));
    wait_revision(client, name, 1).await;
}

/// Waits until `name` has committed `revision` (or a later one); returns the
/// revision reached. Reads no leaves.
pub async fn wait_revision(client: &mut Client, name: &str, revision: u64) -> u64 {
    let mut request = tonic::Request::new(pb::GetRunningRequest {
        datastore: name.into(),
        // A path no device has: the answer carries the revision and no leaves.
        path: "/netsync-testkit-none".into(),
        min_revision: revision,
        with_owner: false,
        ..Default::default()
    });
    request.set_timeout(DEADLINE);
    let mut stream = client
        .get_running(request)
        .await
        .unwrap_or_else(|s| panic!("{name} did not reach revision {revision}: {s:?}"))
        .into_inner();
    let mut reached = revision;
    while let Some(batch) = stream.next().await {
        reached = batch.unwrap().revision;
    }
    reached
}

/// Waits until `check` holds for running of `name`, reading again at each
/// new revision; returns the revision it held at. `what` names the wait in
/// the failure.
pub async fn until_running(
    client: &mut Client,
    name: &str,
    what: &str,
    mut check: impl FnMut(&BTreeMap<String, gnmi::TypedValue>) -> bool,
) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    let mut next = 0;
    loop {
        // A short wait per read, so that a deadline is checked between reads.
        if let Ok(running) = try_running(client, name, next, Duration::from_secs(2)).await {
            if check(&running.leaves) {
                return running.revision;
            }
            next = running.revision + 1;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

/// Like [`until_running`], for at most `within`: the revision `check` held
/// at, or the last running read when it never did (for the caller to say
/// what is wrong with it).
pub async fn until_running_within(
    client: &mut Client,
    name: &str,
    within: Duration,
    mut check: impl FnMut(&BTreeMap<String, gnmi::TypedValue>) -> bool,
) -> Result<u64, Option<Running>> {
    let deadline = Instant::now() + within;
    let mut next = 0;
    let mut last = None;
    while Instant::now() < deadline {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(2));
        if let Ok(running) = try_running(client, name, next, wait).await {
            if check(&running.leaves) {
                return Ok(running.revision);
            }
            next = running.revision + 1;
            last = Some(running);
        }
    }
    Err(last)
}

/// A device whose leaves a test can read, to compare running with.
pub trait DeviceLeaves {
    /// Every leaf of the device now, canonical path -> value.
    fn device_leaves(&self) -> impl Future<Output = BTreeMap<String, gnmi::TypedValue>> + Send;
}

impl DeviceLeaves for crate::sim::Sim {
    async fn device_leaves(&self) -> BTreeMap<String, gnmi::TypedValue> {
        self.leaves().await
    }
}

impl DeviceLeaves for crate::device::Device {
    async fn device_leaves(&self) -> BTreeMap<String, gnmi::TypedValue> {
        self.leaves()
            .into_iter()
            .map(|(path, value)| (path, crate::gnmi::string(&value)))
            .collect()
    }
}

/// Waits until running of `name` equals `device` as read after it (a
/// churning device may move on meanwhile: it is read again at each new
/// revision); returns the revision. On a timeout, says where they differ.
pub async fn converge(client: &mut Client, name: &str, device: &impl DeviceLeaves) -> u64 {
    converge_with(client, name, device, |a, b| a == b).await
}

/// As [`converge`], with values compared by meaning
/// ([`netsync_core::value::same_meaning`]): for a datastore whose device
/// streams another encoding than the one [`DeviceLeaves`] reads it in (a
/// JSON_IETF datastore's running holds `json_ietf_val`, a PROTO Get of the
/// simulator typed values).
pub async fn converge_by_meaning(
    client: &mut Client,
    name: &str,
    device: &impl DeviceLeaves,
) -> u64 {
    converge_with(client, name, device, same_leaves).await
}

/// Where `running` and `device` differ, one line per leaf (compared by
/// meaning, so that only real differences show).
fn differences(
    running: &BTreeMap<String, gnmi::TypedValue>,
    device: &BTreeMap<String, gnmi::TypedValue>,
) -> Vec<String> {
    let paths: std::collections::BTreeSet<&String> = running.keys().chain(device.keys()).collect();
    paths
        .into_iter()
        .filter_map(|path| {
            let (r, d) = (running.get(path), device.get(path));
            let same = match (r, d) {
                (Some(r), Some(d)) => netsync_core::value::same_meaning(r, d),
                (None, None) => true,
                _ => false,
            };
            (!same).then(|| format!("{path}: {r:?}, {d:?}"))
        })
        .collect()
}

/// Whether `a` and `b` have the same leaves with values of the same meaning.
pub fn same_leaves(
    a: &BTreeMap<String, gnmi::TypedValue>,
    b: &BTreeMap<String, gnmi::TypedValue>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && netsync_core::value::same_meaning(va, vb))
}

async fn converge_with(
    client: &mut Client,
    name: &str,
    device: &impl DeviceLeaves,
    same: impl Fn(&BTreeMap<String, gnmi::TypedValue>, &BTreeMap<String, gnmi::TypedValue>) -> bool,
) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    let mut next = 0;
    let mut last: Option<Running> = None;
    loop {
        // Each new revision (or every 2 s without one) is compared with the
        // device as it is after it: running never runs ahead of the device,
        // so equal then means running had caught up. The device is read
        // again each time, since it may move on (a churn, a Set landing).
        if let Ok(running) = try_running(client, name, next, Duration::from_secs(2)).await {
            next = running.revision + 1;
            last = Some(running);
        }
        let now = device.device_leaves().await;
        if let Some(running) = &last
            && same(&running.leaves, &now)
        {
            return running.revision;
        }
        if Instant::now() >= deadline {
            let running = last.map(|r| r.leaves).unwrap_or_default();
            panic!(
                "running of {name} never equalled the device within {DEADLINE:?}; where they \
                 differ (running, device):\n{}",
                differences(&running, &now).join("\n")
            );
        }
    }
}

/// A WatchSync of `name` from `from_revision` (0: from now on).
pub async fn watch(
    client: &mut Client,
    name: &str,
    from_revision: u64,
) -> tonic::Streaming<pb::SyncEvent> {
    client
        .watch_sync(pb::WatchSyncRequest {
            datastore: name.into(),
            from_revision,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("WatchSync {name} from {from_revision}: {s:?}"))
        .into_inner()
}

/// A WatchSync of `name` from `from_revision` that names the incarnation it
/// expects (`expected_uid`; empty: no check); the call's error, if refused.
pub async fn watch_uid(
    client: &mut Client,
    name: &str,
    from_revision: u64,
    expected_uid: &str,
) -> Result<tonic::Streaming<pb::SyncEvent>, tonic::Status> {
    client
        .watch_sync(pb::WatchSyncRequest {
            datastore: name.into(),
            from_revision,
            expected_uid: expected_uid.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A WatchSync of many datastores: those matching `label_selector` (all
/// when empty), resumed with `resume_token` (empty: from now on); the
/// call's error, if refused.
pub async fn watch_many(
    client: &mut Client,
    label_selector: &str,
    resume_token: &str,
) -> Result<tonic::Streaming<pb::SyncEvent>, tonic::Status> {
    client
        .watch_sync(pb::WatchSyncRequest {
            label_selector: label_selector.into(),
            resume_token: resume_token.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every commit of `name` from revision 1 through `last`, by revision, with
/// the parts of a revision joined (WatchSync from 1).
pub async fn history(client: &mut Client, name: &str, last: u64) -> Vec<(u64, pb::Commit)> {
    let mut events = watch(client, name, 1).await;
    let mut commits: Vec<(u64, pb::Commit)> = Vec::new();
    if last == 0 {
        return commits;
    }
    loop {
        let event = next_event(&mut events).await;
        let Some(pb::sync_event::Event::Commit(c)) = event.event else {
            continue;
        };
        match commits.last_mut() {
            Some((rev, joined)) if *rev == event.revision => {
                joined.updates.extend(c.updates);
                joined.deletes.extend(c.deletes);
                joined.more = c.more;
            }
            _ => commits.push((event.revision, c)),
        }
        if event.revision >= last && !commits.last().expect("one").1.more {
            return commits;
        }
    }
}

/// The leaves that replaying `commits` in order gives.
pub fn replay(commits: &[(u64, pb::Commit)]) -> BTreeMap<String, gnmi::TypedValue> {
    let mut leaves = BTreeMap::new();
    for (_, c) in commits {
        for d in &c.deletes {
            leaves.remove(d);
        }
        for l in &c.updates {
            leaves.insert(l.path.clone(), l.value.clone().unwrap_or_default());
        }
    }
    leaves
}

/// Running of `name` as it was at `revision` (GetRunning with `revision`).
pub async fn running_at(client: &mut Client, name: &str, revision: u64) -> Running {
    read_running(
        client,
        pb::GetRunningRequest {
            datastore: name.into(),
            revision,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|s| panic!("running of {name} at revision {revision}: {s:?}"))
}

/// The uid of datastore `name` (GetDatastore): which incarnation it is.
pub async fn uid(client: &mut Client, name: &str) -> String {
    client
        .get_datastore(pb::GetDatastoreRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("GetDatastore {name}: {s:?}"))
        .into_inner()
        .uid
}

/// The next event of a WatchSync stream (waiting up to [`DEADLINE`]);
/// panics if the stream ends or fails.
pub async fn next_event(events: &mut tonic::Streaming<pb::SyncEvent>) -> pb::SyncEvent {
    tokio::time::timeout(DEADLINE, events.next())
        .await
        .unwrap_or_else(|_| panic!("no WatchSync event within {DEADLINE:?}"))
        .expect("the WatchSync stream goes on")
        .unwrap_or_else(|s| panic!("WatchSync failed: {s:?}"))
}

/// Sets `intent` on datastore `name`; the intent as the server answered it.
pub async fn set_intent(client: &mut Client, name: &str, intent: pb::Intent) -> pb::Intent {
    let intent_name = intent.name.clone();
    client
        .set_intent(pb::SetIntentRequest {
            datastore: name.into(),
            intent: Some(intent),
            validate_only: false,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("SetIntent {intent_name} on {name}: {s:?}"))
        .into_inner()
}

/// The dry run of setting `intent` on datastore `name` (SetIntent with
/// `validate_only`): the intent as it would be stored, with its plan.
pub async fn plan_intent(
    client: &mut Client,
    name: &str,
    intent: pb::Intent,
) -> Result<pb::Intent, tonic::Status> {
    client
        .set_intent(pb::SetIntentRequest {
            datastore: name.into(),
            intent: Some(intent),
            validate_only: true,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The leaves of datastore `name` under `path` with the intent that decides
/// each (GetRunning with `with_owner`): path -> owner, empty where no intent
/// covers the leaf.
pub async fn owners(client: &mut Client, name: &str, path: &str) -> BTreeMap<String, String> {
    let mut stream = client
        .get_running(pb::GetRunningRequest {
            datastore: name.into(),
            path: path.into(),
            min_revision: 0,
            with_owner: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("GetRunning {name} {path} with owners: {s:?}"))
        .into_inner();
    let mut owners = BTreeMap::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap_or_else(|s| panic!("GetRunning {name} {path}: {s:?}"));
        owners.extend(batch.leaves.into_iter().map(|l| (l.path, l.owner)));
    }
    owners
}

/// The intent `intent` of datastore `name`.
pub async fn get_intent(client: &mut Client, name: &str, intent: &str) -> pb::Intent {
    client
        .get_intent(pb::GetIntentRequest {
            datastore: name.into(),
            name: intent.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetIntent {intent} of {name}: {s:?}"))
        .into_inner()
}

/// Deletes the intent `intent` of datastore `name`.
pub async fn delete_intent(
    client: &mut Client,
    name: &str,
    intent: &str,
) -> Result<(), tonic::Status> {
    client
        .delete_intent(pb::DeleteIntentRequest {
            datastore: name.into(),
            name: intent.into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Every datastore whose labels match `filter` (a label selector; empty:
/// all), in `view`, reading every page.
pub async fn list_datastores(
    client: &mut Client,
    filter: &str,
    view: pb::DatastoreView,
) -> Result<Vec<pb::Datastore>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_datastores(pb::ListDatastoresRequest {
                page_size: 1000,
                page_token,
                filter: filter.into(),
                view: view as i32,
            })
            .await?
            .into_inner();
        all.extend(page.datastores);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// The deviations of `name` from its intents now, every page of them.
pub async fn deviations(client: &mut Client, name: &str) -> Vec<pb::Deviation> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .get_deviations(pb::GetDeviationsRequest {
                datastore: name.into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("GetDeviations {name}: {s:?}"))
            .into_inner();
        all.extend(page.deviations);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// The status of `name`.
pub async fn status(client: &mut Client, name: &str) -> pb::DatastoreStatus {
    client
        .get_datastore(pb::GetDatastoreRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("GetDatastore {name}: {s:?}"))
        .into_inner()
        .status
        .expect("a datastore has a status")
}

/// Asserts that `name` synced quietly: no reconnect and no resync (see
/// [`assert_no_recovery`]: a loss healed by a resync shows there), and no
/// error. Returns the status.
pub async fn assert_quiet(client: &mut Client, name: &str) -> pb::DatastoreStatus {
    let status = assert_no_recovery(client, name).await;
    assert_eq!(status.last_error, "", "{name}: {status:?}");
    status
}

/// Asserts that `name` never had to recover: no reconnect and no resync, so
/// that a loss the engine healed by resyncing (which a final comparison with
/// the device cannot see) fails a test in which no fault was injected.
/// Returns the status.
pub async fn assert_no_recovery(client: &mut Client, name: &str) -> pb::DatastoreStatus {
    let status = status(client, name).await;
    let stats = status.stats.unwrap_or_default();
    assert_eq!(
        (stats.reconnects, stats.resyncs),
        (0, 0),
        "{name} recovered (reconnects, resyncs) with no fault injected: {status:?}"
    );
    status
}

/// Where a cut WatchSync of `datastore` resumes, read as a client reads it:
/// the `ErrorInfo` (domain `netsync.dev`) whose `reason` is `reason` and whose
/// `from_revision` metadata must equal the text's `from_revision=N`.
pub fn cut_from(status: &tonic::Status, datastore: &str, reason: &str) -> u64 {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        (reason, "netsync.dev"),
        "{status:?}"
    );
    assert_eq!(info.metadata["datastore"], datastore, "{status:?}");
    let from: u64 = info.metadata["from_revision"]
        .parse()
        .unwrap_or_else(|_| panic!("from_revision is no number in {status:?}"));
    let in_text = status
        .message()
        .split("from_revision=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(
        Some(from),
        in_text,
        "the details and the text agree: {status:?}"
    );
    from
}
