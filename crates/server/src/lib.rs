//! netsyncd as a library: [`serve`] is the seam that both `main` and the
//! integration tests use.

pub mod api;
pub mod authz;
pub mod config;
pub mod convert;
pub mod db;
pub mod dry_run;
pub mod engine;
pub mod error;
pub mod handoff;
pub mod health_probe;
pub mod intent_status;
pub mod jobs;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod reconcile;
pub mod replicas;
pub mod rpc_layer;
pub mod selector;
pub mod status_record;
pub mod store;
pub mod stored_time;
mod supervise;
pub mod telemetry;
pub mod tls;
pub mod tls_serve;
mod watch;
pub mod writer;

use std::future::Future;
use std::sync::Arc;

use engine::Engine;
use log::CommitLog;
use store::DatastoreRow;

use netsync_proto::netsync::v1::net_sync_server::NetSyncServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

pub use config::Config;
pub use store::Store;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] store::StoreOpenError),
    /// The stored datastores could not be listed. (One that cannot be loaded
    /// does not stop the server: it is served STOPPED, see [`Engine::start`].)
    #[error("loading stored datastores: {0}")]
    Load(error::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The API's TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(String),
    /// The health listener's address could not be bound.
    #[error("cannot serve health on {addr}: {source}")]
    Health {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Replica mode: this replica does not agree with the live ones.
    #[error("replicas: {0}")]
    Replicas(String),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Service names served, as reflection lists them.
const SERVED: [&str; 4] = [
    "netsync.v1.NetSync",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Sets the API service's health from the writer's: NOT_SERVING while writes
/// fail, SERVING again once they succeed. Ends with the writer, or when
/// aborted at shutdown.
async fn follow_writer(
    mut writer: tokio::sync::watch::Receiver<writer::Health>,
    mut leases: Option<tokio::sync::watch::Receiver<bool>>,
    health: tonic_health::server::HealthReporter,
) {
    // Readiness is SERVING when this starts. The writer reports every
    // failed transaction; readiness is set only when it changes, since
    // tonic-health sends every status set to Health/Watch streams, changed
    // or not. A replica is also NOT_SERVING while its lease manager cannot
    // reach the database.
    let mut announced_failing = false;
    loop {
        let failing = matches!(*writer.borrow_and_update(), writer::Health::Failing(_))
            || leases.as_mut().is_some_and(|l| !*l.borrow_and_update());
        if failing != announced_failing {
            if failing {
                health
                    .set_not_serving::<NetSyncServer<api::NetSyncService>>()
                    .await;
            } else {
                health
                    .set_serving::<NetSyncServer<api::NetSyncService>>()
                    .await;
            }
            announced_failing = failing;
        }
        let changed = match leases.as_mut() {
            Some(leases) => tokio::select! {
                changed = writer.changed() => changed,
                changed = leases.changed() => changed,
            },
            None => writer.changed().await,
        };
        if changed.is_err() {
            // The writer has stopped: no write can succeed any more.
            health
                .set_not_serving::<NetSyncServer<api::NetSyncService>>()
                .await;
            return;
        }
    }
}

/// Logs a warning when the API is reachable beyond this machine and any
/// client that reaches it may call everything: no client certificates, or
/// no `[authorization]` table.
fn warn_if_open(config: &Config, api_addr: Option<std::net::SocketAddr>) {
    let Some(addr) = api_addr else { return };
    if addr.ip().is_loopback() {
        return;
    }
    let client_certificates = config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_pem.is_some());
    if !client_certificates {
        tracing::warn!(listen = %addr, "the API is served beyond loopback without client certificates (--tls-client-ca): any client that reaches it can create datastores and set intents on every device");
    } else if config.authorization.is_none() {
        tracing::warn!(listen = %addr, "the API is served beyond loopback with no [authorization] table: every client the CA signed can create datastores and set intents");
    }
}

/// Binds the health-only listener and logs its address (a `:0` port is
/// chosen by the system).
async fn bind_health(addr: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(health_listen = %listener.local_addr()?, "serving grpc.health.v1 in plaintext");
    Ok(listener)
}

/// Opens the database, then serves the API on `listener` until `shutdown`
/// completes. Health turns SERVING once the database is open and migrated, and
/// NOT_SERVING as soon as shutdown starts; open WatchSync streams are then
/// ended with UNAVAILABLE (naming the revision to resume from), and other
/// in-flight calls get `config.shutdown_grace` to finish before they are cut
/// off.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Bound first, so that a taken port fails start-up before anything runs.
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| ServeError::Metrics {
                    addr: addr.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let health_listener = match &config.health_listen {
        Some(addr) => Some(
            bind_health(addr)
                .await
                .map_err(|source| ServeError::Health {
                    addr: addr.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let fence = config
        .replica
        .as_ref()
        .map(|replica| writer::Fence::new(&replica.id));
    let store = Store::open_as(&config.db, config.max_page_count.clone(), fence.clone()).await?;
    let engine = Arc::new(Engine::new(
        store.clone(),
        CommitLog::new(store.clone(), config.retention),
        config.limits.clone(),
        config.reconcile.clone(),
    ));
    // A replica syncs the datastores whose leases it takes, started by its
    // lease manager; it loads none here.
    let stop_leases = tokio_util::sync::CancellationToken::new();
    let (replicas, lease_manager, handoffs) = match (&config.replica, fence) {
        (Some(replica), Some(fence)) => {
            // Its own connections: renewals never queue behind the writer's
            // batches.
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(replica.lease / 3)
                .connect_lazy_with(
                    db::Connect::postgres(&config.db).map_err(store::StoreOpenError::from)?,
                );
            replicas::check_peers(&pool, replica)
                .await
                .map_err(ServeError::Replicas)?;
            let db::Readers::Postgres(reads) = store.readers() else {
                unreachable!("--replicas is refused on SQLite at start");
            };
            let replicas = replicas::Replicas::new(replica.clone(), fence, pool, reads.clone());
            // The listener holds a connection of its own for good.
            let listen_pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(
                    db::Connect::postgres(&config.db).map_err(store::StoreOpenError::from)?,
                );
            tokio::spawn(notify::run(
                replicas.notices().clone(),
                listen_pool,
                stop_leases.clone(),
            ));
            tracing::info!(replica = %replica.id, lease = ?replica.lease, "serving as a replica: datastores are synced under leases");
            let task = tokio::spawn(replicas::run(
                replicas.clone(),
                store.clone(),
                engine.clone(),
                stop_leases.clone(),
            ));
            // Intent writes and Resyncs made on other replicas reach the
            // datastores synced here.
            let handoffs = tokio::spawn(handoff::run(
                replicas.clone(),
                store.clone(),
                engine.clone(),
                stop_leases.clone(),
            ));
            (Some(replicas), Some(task), Some(handoffs))
        }
        _ => (None, None, None),
    };
    // Every stored datastore's running is loaded and served at once; its sync
    // then resumes with a resync. One whose rows cannot be loaded is served
    // STOPPED with the reason, and every other one as usual.
    let rows = if replicas.is_some() {
        Vec::new()
    } else {
        store
            .list_datastore_rows()
            .await
            .map_err(ServeError::Load)?
    };
    for row in rows {
        match row {
            DatastoreRow::Readable(ds) => engine.start(&ds).await,
            DatastoreRow::Unreadable {
                name,
                reason,
                detail,
                ..
            } => {
                tracing::error!(datastore = %name, %reason, %detail, "the datastore stays stopped until it is deleted");
                engine.hold_stopped(&name, reason);
            }
        }
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<NetSyncServer<api::NetSyncService>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    // Readiness (the API service's status) follows the writer: NOT_SERVING
    // while writes fail, so that traffic goes elsewhere; liveness ("") stays
    // SERVING, since restarting would not bring disk space back.
    let readiness = tokio::spawn(follow_writer(
        store.writer().health(),
        replicas.as_ref().map(|r| r.healthy()),
        health.clone(),
    ));

    let reflection = || {
        SERVED.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(netsync_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // The google.rpc error details our errors carry: without them
                // grpcurl prints a detail as base64 ("is not recognized").
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };

    let watch_memory = limits::WatchMemory::new(&config.api_limits);
    let metrics = Arc::new(
        metrics::Metrics::new(store.clone(), engine.clone(), watch_memory.clone())
            .with_replicas(replicas.clone()),
    );
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
    let metrics_server = metrics_listener
        .map(|listener| tokio::spawn(metrics::serve(listener, metrics.clone(), metrics_stopped)));

    // The health-only listener: plaintext even when the API needs TLS, so
    // that kubelet's gRPC probes (which cannot present a certificate) reach
    // it. It serves grpc.health.v1 and nothing else, and stays up through
    // the shutdown grace period so that probes see NOT_SERVING, not a refusal.
    let stop_health = tokio_util::sync::CancellationToken::new();
    let health_server = match health_listener {
        Some(listener) => {
            let stopped = stop_health.clone().cancelled_owned();
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health_service.clone())
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped),
            ))
        }
        None => None,
    };

    let api_addr = listener.local_addr().ok();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = tokio_util::sync::CancellationToken::new();
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits::calls::http2_stream_limit(&config.api_limits))
        // A client that stops answering PINGs loses its connection, and its
        // watchers their slots and queued bytes.
        .http2_keepalive_interval(config.api_limits.keepalive_interval)
        .http2_keepalive_timeout(Some(config.api_limits.keepalive_timeout))
        // Outermost first: calls refused by the limits are measured too.
        .layer(rpc_layer::RpcLayer::new(metrics.rpc()))
        .layer(authz::AuthzLayer::new(config.authorization.clone()))
        .layer(limits::CallLimitsLayer::new(&config.api_limits))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(api::NetSyncRoutes::new(
            api::NetSyncService::new(
                store.clone(),
                engine.clone(),
                &config.api_limits,
                watch_memory,
                stopping.clone(),
            )
            .with_replicas(replicas.clone()),
            // Our layer answers first, with RESOURCE_EXHAUSTED; tonic's check
            // (OUT_OF_RANGE) is set to match so it never refuses less.
            config.api_limits.max_message_bytes,
        ));
    let stop = async {
        let _ = stop_rx.await;
    };
    // Over TLS, connections are accepted and their handshakes done by
    // tls_serve with the configuration current at that moment, which a
    // reload task swaps when the files change.
    let mut tls_tasks = Vec::new();
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + '_>,
    > = match &config.tls {
        Some(tls) => {
            let live = tls_serve::LiveTls::new(tls).map_err(ServeError::Tls)?;
            let (incoming, accept) = tls_serve::incoming(listener, live.clone());
            tls_tasks.push(accept);
            if let Some(paths) = &tls.reload_from {
                tls_tasks.push(tokio::spawn(tls_serve::reload(
                    paths.clone(),
                    tls.clone(),
                    live,
                    config.tls_reload_interval,
                )));
            }
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
        None => {
            Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop))
        }
    };
    tokio::pin!(server);
    warn_if_open(config, api_addr);
    tracing::info!(db = %config.db, tls = config.tls.is_some(), client_certificates = config.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()), "netsyncd serving");

    let result = tokio::select! {
        result = &mut server => result.map_err(ServeError::from),
        () = shutdown => {
            tracing::info!("shutdown requested: refusing new calls, finishing in-flight ones");
            readiness.abort();
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_not_serving::<NetSyncServer<api::NetSyncService>>().await;
            let _ = stop_tx.send(());
            // Watches never end by themselves: they end now, telling each
            // client where to resume, instead of holding the grace period.
            stopping.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(result) => result.map_err(ServeError::from),
                Err(_) => {
                    tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls cut off after the shutdown grace period");
                    Ok(())
                }
            }
        }
    };
    readiness.abort();
    for task in tls_tasks {
        task.abort();
    }
    stop_health.cancel();
    if let Some(health_server) = health_server
        && let Ok(Err(e)) = health_server.await
    {
        tracing::warn!(error = %e, "the health listener failed");
    }
    // A replica hands its leases back first (its syncs stopped), so that
    // the others take them within a round.
    stop_leases.cancel();
    if let Some(task) = lease_manager {
        let _ = task.await;
    }
    if let Some(task) = handoffs {
        let _ = task.await;
    }
    engine.stop_all().await;
    let _ = stop_metrics.send(true);
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    store.close().await;
    tracing::info!("netsyncd stopped");
    result
}
