//! netsyncd's side: the netsync API calls the scenarios make, and the
//! waits they need (a revision reached, a state reached).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;
use netsync_proto::netsync::v1::net_sync_client::NetSyncClient;
use tonic::transport::Channel;

/// A path under which the device has nothing: GetRunning of it answers as soon
/// as the revision asked for exists, with no leaves to send.
const NOTHING: &str = "/netsync-bench/nothing";

/// How often a status is polled while waiting for a state.
const POLL: Duration = Duration::from_millis(20);

/// A client of one netsyncd.
#[derive(Clone)]
pub struct Netsync {
    /// The generated client, without a limit on the size of a message.
    pub client: NetSyncClient<Channel>,
    /// The client library's client, on the same connection (reflectors).
    pub library: netsync_client::Client,
}

/// A datastore on the device at `device`: PROTO encoding, ON_CHANGE on `/`
/// (the defaults), committing every `commit_interval`.
pub fn datastore(name: &str, device: SocketAddr, commit_interval: Duration) -> pb::Datastore {
    pb::Datastore {
        name: name.into(),
        target: Some(pb::Target {
            address: device.to_string(),
            encoding: pb::Encoding::Proto as i32,
            ..Default::default()
        }),
        sync: Some(pb::SyncConfig {
            mode: pb::SyncMode::OnChange as i32,
            commit_interval: Some(duration(commit_interval)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl Netsync {
    /// Connects to `url`, trying again until `deadline` passes (a process
    /// that has just logged its address may still be starting).
    pub async fn connect(url: &str, deadline: Duration) -> anyhow::Result<Self> {
        let give_up = Instant::now() + deadline;
        loop {
            // netsync-client's connect: tonic's endpoint defaults, which
            // include TCP_NODELAY.
            match netsync_client::connect(url, None).await {
                Ok(library) => {
                    return Ok(Self {
                        client: library.raw().max_decoding_message_size(usize::MAX),
                        library,
                    });
                }
                Err(e) if !e.is_retryable() || Instant::now() >= give_up => {
                    return Err(e).with_context(|| format!("cannot connect to netsyncd at {url}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// CreateDatastore.
    pub async fn create(&mut self, datastore: pb::Datastore) -> anyhow::Result<()> {
        let name = datastore.name.clone();
        self.client
            .create_datastore(pb::CreateDatastoreRequest {
                datastore: Some(datastore),
            })
            .await
            .with_context(|| format!("CreateDatastore {name}"))?;
        Ok(())
    }

    /// The status of datastore `name`.
    pub async fn status(&mut self, name: &str) -> anyhow::Result<pb::DatastoreStatus> {
        self.client
            .get_datastore(pb::GetDatastoreRequest { name: name.into() })
            .await
            .with_context(|| format!("GetDatastore {name}"))?
            .into_inner()
            .status
            .context("GetDatastore answered without a status")
    }

    /// Waits until running of `name` is at revision `revision` or later
    /// (GetRunning with `min_revision`: the server answers when the revision
    /// is published, which is after it is durable).
    pub async fn wait_revision(
        &mut self,
        name: &str,
        revision: u64,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let mut request = tonic::Request::new(pb::GetRunningRequest {
            datastore: name.into(),
            path: NOTHING.into(),
            min_revision: revision,
            with_owner: false,
            ..Default::default()
        });
        request.set_timeout(deadline);
        let mut stream = self
            .client
            .get_running(request)
            .await
            .with_context(|| format!("waiting for revision {revision} of {name}"))?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok(())
    }

    /// Polls the status of `name` until `done` holds, for at most `deadline`.
    pub async fn wait_status(
        &mut self,
        name: &str,
        deadline: Duration,
        what: &str,
        done: impl Fn(&pb::DatastoreStatus) -> bool,
    ) -> anyhow::Result<pb::DatastoreStatus> {
        let give_up = Instant::now() + deadline;
        loop {
            let status = self.status(name).await?;
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() >= give_up {
                bail!(
                    "{name} did not reach {what} within {deadline:?}: state {:?}, revision {}, \
                     last error {:?}",
                    pb::SyncState::try_from(status.state).unwrap_or_default(),
                    status.revision,
                    status.last_error
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `name` is IN_SYNC.
    pub async fn wait_in_sync(
        &mut self,
        name: &str,
        deadline: Duration,
    ) -> anyhow::Result<pb::DatastoreStatus> {
        self.wait_status(name, deadline, "IN_SYNC", in_sync).await
    }

    /// Opens GetRunning of `path` (the latest revision).
    pub async fn running(
        &mut self,
        name: &str,
        path: &str,
    ) -> anyhow::Result<tonic::Streaming<pb::GetRunningResponse>> {
        Ok(self
            .client
            .get_running(pb::GetRunningRequest {
                datastore: name.into(),
                path: path.into(),
                min_revision: 0,
                with_owner: false,
                ..Default::default()
            })
            .await
            .with_context(|| format!("GetRunning {name} {path}"))?
            .into_inner())
    }

    /// The leaves of running under `path`, by path.
    pub async fn leaves(
        &mut self,
        name: &str,
        path: &str,
    ) -> anyhow::Result<HashMap<String, gnmi::TypedValue>> {
        let mut stream = self.running(name, path).await?;
        let mut leaves = HashMap::new();
        while let Some(message) = stream.message().await? {
            for leaf in message.leaves {
                leaves.insert(leaf.path, leaf.value.unwrap_or_default());
            }
        }
        Ok(leaves)
    }
}

/// Whether a status says IN_SYNC.
pub fn in_sync(status: &pb::DatastoreStatus) -> bool {
    status.state == pb::SyncState::InSync as i32
}

/// Updates plus deletes read from the device, by a status.
pub fn received(status: &pb::DatastoreStatus) -> u64 {
    status
        .stats
        .as_ref()
        .map_or(0, |s| s.updates_received + s.deletes_received)
}
