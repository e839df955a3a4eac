//! Prometheus metrics, served as text on `--metrics-listen`: each datastore's
//! figures read from its sync at scrape time (the hot path only bumps the
//! atomic counters it always had), reconcile queue depth read from the store,
//! and RPC counts and latency recorded by [`crate::rpc_layer`].
//! `docs/OBSERVABILITY.md` lists every metric.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use netsync_core::histogram::HistogramSnapshot;
use netsync_core::sync::SyncState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::engine::Engine;
use crate::jobs;
use crate::limits::WatchMemory;
use crate::reconcile::Outcome;
use crate::replicas::Replicas;
use crate::rpc_layer::RpcMetrics;
use crate::store::Store;

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    rpc: RpcMetrics,
    engine: Arc<Engine>,
    store: Store,
    watch_memory: Arc<WatchMemory>,
    /// Replica mode: the leases of this replica.
    replicas: Option<Arc<Replicas>>,
}

impl Metrics {
    /// Metrics of `engine`'s datastores, `store`'s reconcile queue and what
    /// watchers hold in `watch_memory`.
    pub fn new(store: Store, engine: Arc<Engine>, watch_memory: Arc<WatchMemory>) -> Self {
        Self {
            rpc: RpcMetrics::default(),
            engine,
            store,
            watch_memory,
            replicas: None,
        }
    }

    /// These metrics, with the lease figures of `replicas` (replica mode).
    pub fn with_replicas(mut self, replicas: Option<Arc<Replicas>>) -> Self {
        self.replicas = replicas;
        self
    }

    /// Where the RPC layer records.
    pub fn rpc(&self) -> RpcMetrics {
        self.rpc.clone()
    }

    /// The Prometheus text exposition (format 0.0.4) as of now.
    pub async fn render(&self) -> String {
        let mut samples: Vec<DatastoreSample> = self
            .engine
            .datastores()
            .into_iter()
            .map(|(sync, jobs, tracker)| {
                let stats = sync.stats();
                let status = sync.status();
                let snapshot = sync.snapshot();
                DatastoreSample {
                    name: sync.name().to_string(),
                    notifications: stats.notifications.load(Ordering::Relaxed),
                    updates: stats.updates.load(Ordering::Relaxed),
                    deletes: stats.deletes.load(Ordering::Relaxed),
                    commits: stats.commits.load(Ordering::Relaxed),
                    resyncs: stats.resyncs.load(Ordering::Relaxed),
                    reconnects: stats.reconnects.load(Ordering::Relaxed),
                    persist_errors: stats.persist_errors.load(Ordering::Relaxed),
                    commit_duration: stats.commit_duration.snapshot(),
                    pending: status.pending,
                    backpressure: status.backpressure,
                    state: status.state,
                    revision: snapshot.revision,
                    leaves: snapshot.running.len() as u64,
                    jobs: Outcome::ALL.map(|o| jobs.ended(o)),
                    worker_restarts: jobs.restarts(),
                    not_stuck: tracker.not_stuck(),
                    failing_intents: tracker.failing_count(),
                    queued: 0,
                    running_jobs: 0,
                }
            })
            .collect();
        match jobs::queue_depth(self.store.readers()).await {
            Ok(depths) => {
                for (datastore, running, jobs) in depths {
                    if let Some(sample) = samples.iter_mut().find(|s| s.name == datastore) {
                        match running {
                            true => sample.running_jobs = jobs,
                            false => sample.queued = jobs,
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the reconcile queue"),
        }

        // A registry per scrape: the datastore figures are gathered above
        // (the queue depth needs an await, which a collector cannot do).
        let mut root = Registry::default();
        self.rpc.register(&mut root);
        root.register_collector(Box::new(ProcessFigures));
        let registry = root.sub_registry_with_prefix("netsync");
        registry.register_collector(Box::new(BuildInfo));
        registry.register_collector(Box::new(Datastores(samples)));
        let writer = self.store.writer();
        registry.register_collector(Box::new(StoreFigures {
            transactions: writer.stats().transactions.load(Ordering::Relaxed),
            writes: writer.stats().writes.load(Ordering::Relaxed),
            failures: writer.stats().failures.load(Ordering::Relaxed),
            failing: matches!(*writer.health().borrow(), crate::writer::Health::Failing(_)),
        }));
        if let Some(replicas) = &self.replicas {
            registry.register_collector(Box::new(LeaseFigures {
                owned: replicas.owned() as u64,
                takeovers: replicas.takeovers(),
                losses: replicas.losses(),
            }));
        }
        registry.register_collector(Box::new(WatchFigures {
            buffered: self.watch_memory.queued() as u64,
            peak: self.watch_memory.peak() as u64,
            watchers: self.watch_memory.watchers() as u64,
        }));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &root).expect("writing to a String cannot fail");
        text
    }
}

/// What WatchSync holds: `netsync_watch_buffered_bytes` (encoded messages
/// queued for clients, all watchers together), its highest value since start
/// (`netsync_watch_buffered_bytes_peak`), and the open watches
/// (`netsync_watchers`).
#[derive(Debug)]
struct WatchFigures {
    buffered: u64,
    peak: u64,
    watchers: u64,
}

impl Collector for WatchFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "watch_buffered_bytes",
                "Bytes of encoded WatchSync messages queued for clients and not yet taken by HTTP/2, all watchers together (bounded by max_watch_bytes_total).",
                self.buffered,
            ),
            (
                "watch_buffered_bytes_peak",
                "The highest netsync_watch_buffered_bytes since netsyncd started.",
                self.peak,
            ),
            ("watchers", "Open WatchSync streams.", self.watchers),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(&value)?;
        }
        Ok(())
    }
}

/// `netsync_build_info`: the version of this netsyncd, as a label of a
/// gauge that is always 1 (the usual way to join it to other series).
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "build_info",
            "The netsyncd build: its version as a label, value 1.",
            None,
            MetricType::Gauge,
        )?;
        metric
            .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1_u64)
    }
}

/// The process figures Prometheus client libraries export under the same
/// names (`process_resident_memory_bytes`, ...), read from /proc at scrape
/// time. Off Linux, or when /proc cannot be read, they are left out.
#[derive(Debug)]
struct ProcessFigures;

impl Collector for ProcessFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(figures) = process_figures() else {
            return Ok(());
        };
        let mut metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            None,
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, f64>(&figures.cpu_seconds, None)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                figures.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                figures.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                figures.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                figures.open_fds,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(&value)?;
        }
        Ok(())
    }
}

/// This process's figures, from /proc.
struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    open_fds: f64,
}

fn process_figures() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces;
    // the fields after its closing parenthesis start at field 3 (state).
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field n of proc(5) is fields[n - 3] here.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    Some(ProcessSample {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        start_time_seconds: boot_time + field(22)? / ticks,
        open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
    })
}

/// The writer's figures at scrape time.
#[derive(Debug)]
struct StoreFigures {
    transactions: u64,
    writes: u64,
    failures: u64,
    failing: bool,
}

impl Collector for StoreFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = [
            (
                "store_transactions",
                "Write transactions committed, each one fsync of the write-ahead log.",
                self.transactions,
            ),
            (
                "store_writes",
                "Writes committed (commits, intents, jobs, datastores), grouped into transactions.",
                self.writes,
            ),
            (
                "store_write_failures",
                "Write transactions that failed; their writes are retried or refused.",
                self.failures,
            ),
        ];
        for (name, help, value) in counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        encoder
            .encode_descriptor(
                "store_failing",
                "1 while database writes fail (readiness is NOT_SERVING meanwhile).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&u64::from(self.failing))?;
        Ok(())
    }
}

/// A replica's leases (replica mode only): `netsync_replica_datastores`,
/// `netsync_lease_takeovers_total`, `netsync_lease_losses_total`.
#[derive(Debug)]
struct LeaseFigures {
    owned: u64,
    takeovers: u64,
    losses: u64,
}

impl Collector for LeaseFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_descriptor(
                "replica_datastores",
                "Datastores this replica owns (holds the lease of) now.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.owned)?;
        let counters = [
            (
                "lease_takeovers",
                "Leases this replica took (free, expired, or its own from before).",
                self.takeovers,
            ),
            (
                "lease_losses",
                "Leases this replica lost: taken over by another, or not renewed in time.",
                self.losses,
            ),
        ];
        for (name, help, value) in counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

/// One datastore's figures at scrape time.
#[derive(Debug)]
struct DatastoreSample {
    name: String,
    notifications: u64,
    updates: u64,
    deletes: u64,
    commits: u64,
    resyncs: u64,
    reconnects: u64,
    persist_errors: u64,
    commit_duration: HistogramSnapshot,
    pending: u64,
    backpressure: bool,
    state: SyncState,
    revision: u64,
    leaves: u64,
    /// Ended reconcile jobs, in [`Outcome::ALL`] order.
    jobs: [u64; Outcome::ALL.len()],
    /// Panics of the reconcile worker (each restarted it).
    worker_restarts: u64,
    /// Reconcile Sets that did not stick.
    not_stuck: u64,
    /// Intents FAILING now.
    failing_intents: u64,
    queued: u64,
    running_jobs: u64,
}

/// Every datastore's figures, encoded as labelled families. Help texts end
/// with a full stop, as the registry adds one to those of registered metrics.
#[derive(Debug)]
struct Datastores(Vec<DatastoreSample>);

/// Sync states as the `state` label spells them.
const STATES: [(SyncState, &str); 5] = [
    (SyncState::Connecting, "CONNECTING"),
    (SyncState::InitialSync, "INITIAL_SYNC"),
    (SyncState::InSync, "IN_SYNC"),
    (SyncState::Disconnected, "DISCONNECTED"),
    (SyncState::Stopped, "STOPPED"),
];

/// A figure with one value per datastore: name, help, how to read it.
type Figure = (&'static str, &'static str, fn(&DatastoreSample) -> u64);

/// One labelled value of a datastore: `(extra label, value)`.
type Value = (Option<(&'static str, &'static str)>, u64);

impl Datastores {
    /// One family: per sample, its values labelled with `datastore` and their
    /// extra label, if any.
    fn family(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help): (&str, &str),
        kind: MetricType,
        values: impl Fn(&DatastoreSample) -> Vec<Value>,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
        for sample in &self.0 {
            for (extra, value) in values(sample) {
                let mut labels = vec![("datastore", sample.name.as_str())];
                labels.extend(extra);
                let mut family = metric.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => {
                        family.encode_counter::<NoLabelSet, _, u64>(&value, None)?
                    }
                    _ => family.encode_gauge(&value)?,
                }
            }
        }
        Ok(())
    }
}

impl Collector for Datastores {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let counters: [Figure; 9] = [
            ("sync_notifications", "gNMI notifications read.", |s| {
                s.notifications
            }),
            (
                "sync_updates",
                "Leaf updates read (after JSON flattening).",
                |s| s.updates,
            ),
            ("sync_deletes", "Deletes read.", |s| s.deletes),
            ("sync_commits", "Revisions committed.", |s| s.commits),
            (
                "sync_reconnects",
                "Reconnects after the stream ended or failed.",
                |s| s.reconnects,
            ),
            ("sync_resyncs", "Forced resyncs (API or engine).", |s| {
                s.resyncs
            }),
            (
                "persist_errors",
                "Attempts to persist a commit that failed; each is retried until it is durable.",
                |s| s.persist_errors,
            ),
            (
                "reconcile_worker_restarts",
                "Times the reconcile worker panicked (a bug) and was restarted.",
                |s| s.worker_restarts,
            ),
            (
                "reconcile_sets_not_stuck",
                "Reconcile Sets whose leaves had to be set again within the settle time.",
                |s| s.not_stuck,
            ),
        ];
        for (name, help, value) in counters {
            self.family(&mut encoder, (name, help), MetricType::Counter, |s| {
                vec![(None, value(s))]
            })?;
        }
        let gauges: [Figure; 5] = [
            (
                "sync_pending",
                "Changes received and not yet committed.",
                |s| s.pending,
            ),
            (
                "sync_backpressure",
                "1 while ingest is paused at the pending cap.",
                |s| u64::from(s.backpressure),
            ),
            ("sync_revision", "Latest committed revision.", |s| {
                s.revision
            }),
            (
                "running_leaves",
                "Leaves in running at the latest revision.",
                |s| s.leaves,
            ),
            (
                "reconcile_failing_intents",
                "Intents FAILING: auto-revert of their leaves paused until written again or a Resync.",
                |s| s.failing_intents,
            ),
        ];
        for (name, help, value) in gauges {
            self.family(&mut encoder, (name, help), MetricType::Gauge, |s| {
                vec![(None, value(s))]
            })?;
        }
        self.family(
            &mut encoder,
            (
                "sync_state",
                "1 for the state the sync is in, 0 for the others.",
            ),
            MetricType::Gauge,
            |s| {
                STATES
                    .iter()
                    .map(|(state, name)| (Some(("state", *name)), u64::from(s.state == *state)))
                    .collect()
            },
        )?;
        let mut commit_duration = encoder.encode_descriptor(
            "sync_commit_duration_seconds",
            "Time from taking a delta to publishing its revision (apply, persist, publish).",
            None,
            MetricType::Histogram,
        )?;
        for sample in &self.0 {
            let h = &sample.commit_duration;
            commit_duration
                .encode_family(&[("datastore", sample.name.as_str())])?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        }
        self.family(
            &mut encoder,
            (
                "reconcile_queue_depth",
                "Reconcile jobs in the durable queue: queued (waiting) and running.",
            ),
            MetricType::Gauge,
            |s| {
                vec![
                    (Some(("state", "queued")), s.queued),
                    (Some(("state", "running")), s.running_jobs),
                ]
            },
        )?;
        self.family(
            &mut encoder,
            ("reconcile_jobs", "Reconcile jobs ended, by outcome."),
            MetricType::Counter,
            |s| {
                Outcome::ALL
                    .iter()
                    .zip(s.jobs)
                    .map(|(outcome, ended)| (Some(("outcome", outcome.as_str())), ended))
                    .collect()
            },
        )?;
        Ok(())
    }
}

/// Serves `GET /metrics` over plain HTTP/1.1 on `listener` until `stop` turns
/// true; connections still open then (a keep-alive scraper) are closed.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
            // Reaps finished connections so the set does not grow.
            Some(_) = connections.join_next() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: try again shortly.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics: connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            prometheus_text::CONTENT_TYPE,
            metrics.render().await,
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
    }
}

/// Binds `addr` for [`serve`] and logs the bound address (a `:0` port
/// becomes the one the system chose).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(metrics_listen = %listener.local_addr()?, "serving metrics at /metrics");
    Ok(listener)
}
