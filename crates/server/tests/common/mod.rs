//! Shared helpers for the integration tests: an in-process netsyncd on an
//! ephemeral loopback port, and request builders.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod device;
pub mod grpcurl;
pub mod pki;
pub mod process;
pub mod sim;

use std::net::SocketAddr;
use std::path::Path;

use netsync_proto::netsync::v1 as pb;
use netsync_server::{Config, ServeError};
use pb::net_sync_client::NetSyncClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// netsyncd running in this process, stopped by [`TestServer::stop`].
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Starts netsyncd on 127.0.0.1:0 with the SQLite file `db`.
    pub async fn start(db: &Path) -> Self {
        Self::start_with(config(db)).await
    }

    /// Starts netsyncd on 127.0.0.1:0 with `config` (its `listen` is ignored).
    pub async fn start_with(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            netsync_server::serve(&config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self { addr, stop, task }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A netsync API client.
    pub async fn client(&self) -> NetSyncClient<Channel> {
        NetSyncClient::new(self.channel().await)
    }

    /// Signals shutdown and waits for a clean exit.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }

    /// Signals shutdown without waiting; returns the server task.
    pub fn begin_stop(self) -> JoinHandle<Result<(), ServeError>> {
        self.stop.send(()).unwrap();
        self.task
    }
}

/// The default configuration, with the SQLite file `db`.
pub fn config(db: &Path) -> Config {
    Config::with_db(format!("sqlite://{}", db.display()))
}

/// A valid datastore named `name` with credentials and a client key.
pub fn datastore(name: &str) -> pb::Datastore {
    pb::Datastore {
        name: name.into(),
        target: Some(pb::Target {
            address: "127.0.0.1:57400".into(),
            tls: Some(pb::TlsConfig {
                ca_pem: "CA".into(),
                cert_pem: "CERT".into(),
                key_pem: "TOP-SECRET-KEY".into(),
                insecure_skip_verify: false,
                server_name: "r1.lab".into(),
            }),
            credentials: Some(pb::Credentials {
                username: "admin".into(),
                password: "TOP-SECRET-PASSWORD".into(),
            }),
            encoding: pb::Encoding::Proto as i32,
            target_name: "r1".into(),
        }),
        sync: Some(pb::SyncConfig {
            mode: pb::SyncMode::OnChange as i32,
            paths: vec!["/interfaces".into(), "/system/aaa".into()],
            interval: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            commit_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            list_keys: vec!["/interfaces/interface[name]".into()],
        }),
        revert: Some(pb::RevertConfig {
            enabled: true,
            debounce: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
        }),
        status: None,
        create_time: None,
    }
}

/// A create request for `ds`.
pub fn create(ds: pb::Datastore) -> pb::CreateDatastoreRequest {
    pb::CreateDatastoreRequest {
        datastore: Some(ds),
    }
}

/// A protobuf duration of `ms` milliseconds.
pub fn millis(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}
