//! Observability of a real netsyncd process syncing netsync-sim: a Prometheus
//! scrape over plain HTTP, traces received by an OTLP collector (a tonic
//! TraceService in this test), and JSON log lines that name their datastore.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::LONG_DEADLINE as DEADLINE;
use netsync_testkit::client::wait_revision;
use netsync_testkit::client::watch;
use netsync_testkit::datastore::{DatastoreBuilder, create};
use netsync_testkit::gnmi::string;
use netsync_testkit::sim::{Sim, generated};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use pb::net_sync_client::NetSyncClient;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

use crate::support::{Netsyncd, Options, http_get, sample};

/// The caller's trace context sent with CreateDatastore (W3C `traceparent`).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// The PROTO datastore `r1` of `sim`, committing every 100 ms, not
/// reverting.
fn datastore(sim: &Sim) -> pb::Datastore {
    DatastoreBuilder::new("r1", sim.addr)
        .encoding(pb::Encoding::Proto)
        .commit_interval_ms(100)
        .revert(false, 0)
        .build()
}

/// Waits until running reaches its first revision (the initial dump committed).
async fn first_revision(client: &mut NetSyncClient<Channel>) {
    wait_revision(client, "r1", 1).await;
}

/// Sets an intent on a sim leaf and waits until its apply job is APPLIED.
async fn apply_intent(client: &mut NetSyncClient<Channel>) {
    let mut events = watch(client, "r1", 0).await;
    client
        .set_intent(pb::SetIntentRequest {
            datastore: "r1".into(),
            intent: Some(pb::Intent {
                name: "motd".into(),
                priority: 1,
                updates: vec![pb::Leaf {
                    path: "/system/intent/motd".into(),
                    value: Some(string("hello")),
                    owner: String::new(),
                }],
                ..Default::default()
            }),
            validate_only: false,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.next().await.unwrap().unwrap();
            if let Some(pb::sync_event::Event::Revert(r)) = event.event
                && r.phase == pb::RevertPhase::Applied as i32
            {
                return;
            }
        }
    })
    .await
    .expect("the intent is applied");
}

/// Stops the daemon with SIGTERM off the async workers (it blocks until the
/// process exits, while this runtime must keep serving the collector).
async fn terminate(daemon: Netsyncd) {
    let status = tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

// ---------------------------------------------------------------- metrics

/// Scrapes until `ready` holds for the exposition (or the deadline passes):
/// some figures are updated just after the event the test waited for.
async fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, _, body) = http_get(addr, "/metrics").await;
        if ready(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never scraped {what}:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// netsyncd with metrics on a port of its choosing, a database in `dir`,
/// and datastore r1 syncing `sim` up to its first revision.
async fn syncing_with_metrics(
    dir: &std::path::Path,
    sim: &Sim,
) -> (
    Netsyncd,
    SocketAddr,
    NetSyncClient<tonic::transport::Channel>,
) {
    let daemon = Netsyncd::start_with(
        &dir.join("n.db"),
        Options {
            args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            ..Default::default()
        },
    );
    let metrics: SocketAddr = daemon.wait_for_log("the metrics address", |line| {
        line.get("metrics_listen")?.as_str()?.parse().ok()
    });
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    client
        .create_datastore(create(datastore(sim)))
        .await
        .unwrap();
    first_revision(&mut client).await;
    (daemon, metrics, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_scrape_shows_datastores_jobs_and_rpcs() {
    let sim = Sim::start(generated(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, metrics, mut client) = syncing_with_metrics(dir.path(), &sim).await;
    let missing = client
        .get_datastore(pb::GetDatastoreRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    call_unknown_method(&daemon.url()).await;
    apply_intent(&mut client).await;

    let (status, headers, _) = http_get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    // The watcher of apply_intent was dropped: its stream ends CANCELLED;
    // the apply job is counted just after its APPLIED event.
    let text = scrape_until(metrics, "the job outcome and the cancelled watch", |text| {
        sample(text, r#"netsync_reconcile_jobs_total{datastore="r1",outcome="applied"}"#)
            == Some(1.0)
            && sample(
                text,
                r#"grpc_server_handled_total{grpc_type="server_stream",grpc_service="netsync.v1.NetSync",grpc_method="WatchSync",grpc_code="Canceled"}"#,
            ) == Some(1.0)
    })
    .await;

    let ds = |name: &str| format!(r#"netsync_{name}{{datastore="r1"}}"#);
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    // The initial dump: 50 generated leaves, read and committed.
    assert!(value(&ds("sync_notifications_total")) >= 1.0);
    assert!(value(&ds("sync_updates_total")) >= 50.0);
    value(&ds("sync_deletes_total"));
    let commits = value(&ds("sync_commits_total"));
    assert!(commits >= 2.0, "the dump and the applied intent: {commits}");
    // Gone: it was never incremented (a loss is healed by a resync).
    assert!(!text.contains("netsync_sync_dropped"), "{text}");
    value(&ds("sync_reconnects_total"));
    value(&ds("sync_resyncs_total"));
    value(&ds("sync_pending"));
    assert!(value(&ds("running_leaves")) >= 51.0);
    assert_eq!(value(&ds("sync_revision")), commits);
    assert_eq!(
        value(r#"netsync_sync_state{datastore="r1",state="IN_SYNC"}"#),
        1.0
    );
    assert_eq!(
        value(r#"netsync_sync_state{datastore="r1",state="DISCONNECTED"}"#),
        0.0
    );
    // Every commit is in the duration histogram, and its buckets add up.
    assert!(text.contains("# TYPE netsync_sync_commit_duration_seconds histogram"));
    assert_eq!(value(&ds("sync_commit_duration_seconds_count")), commits);
    assert_eq!(
        value(r#"netsync_sync_commit_duration_seconds_bucket{datastore="r1",le="+Inf"}"#),
        commits
    );
    value(&ds("sync_commit_duration_seconds_sum"));
    assert_eq!(
        value(r#"netsync_reconcile_queue_depth{datastore="r1",state="queued"}"#),
        0.0
    );
    assert_eq!(
        value(r#"netsync_reconcile_jobs_total{datastore="r1",outcome="failed"}"#),
        0.0
    );
    // RPCs by method and code, a trailers-only error included.
    let unary = |method: &str| {
        format!(r#"grpc_type="unary",grpc_service="netsync.v1.NetSync",grpc_method="{method}""#)
    };
    let handled = |method: &str, code: &str| {
        format!(
            r#"grpc_server_handled_total{{{},grpc_code="{code}"}}"#,
            unary(method)
        )
    };
    assert_eq!(value(&handled("CreateDatastore", "OK")), 1.0);
    assert_eq!(value(&handled("GetDatastore", "NotFound")), 1.0);
    assert_eq!(
        value(&format!(
            "grpc_server_started_total{{{}}}",
            unary("GetDatastore")
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "grpc_server_handling_seconds_count{{{}}}",
            unary("SetIntent")
        )),
        1.0
    );
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    // A made-up method adds no label value of its own.
    assert_eq!(
        value(
            r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"}"#
        ),
        1.0
    );
    assert!(!text.contains("NoSuchMethod"), "{text}");
    assert_eq!(
        value(&format!(
            r#"netsync_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_start_time_seconds") > 1.7e9);

    let (status, _, _) = http_get(metrics, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    drop(client);
    terminate(daemon).await;
}

/// The dashboards shipped for Grafana (`deploy/grafana/dashboards`).
fn dashboards() -> Vec<(std::path::PathBuf, serde_json::Value)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            (path, json)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Every PromQL expression of a dashboard, with where it is: each panel's
/// targets (rows' nested panels too) and each query variable.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel {}", panel["title"]), expr.to_owned()));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
        {
            queries.push((format!("variable {}", variable["name"]), query.to_owned()));
        }
    }
    queries
}

/// The metric names a PromQL expression reads: identifiers that look like
/// netsyncd's metrics (`netsync_*`, `grpc_server_*`, `process_*`) and are
/// not called as a function. Label matchers (`{...}`), ranges (`[...]`) and
/// strings are skipped; label names in `by (...)` never have those prefixes.
fn metric_names(expr: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(close) = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' | '\'' | '`' => Some(c),
            _ => None,
        } {
            i += 1;
            while i < chars.len() && chars[i] != close {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let metric_like = ["netsync_", "grpc_server_", "process_"]
                .iter()
                .any(|prefix| word.starts_with(prefix));
            if metric_like && next != Some(&'(') {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names with samples in a Prometheus exposition.
fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_skip_functions_labels_ranges_and_strings() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{grpc_type="unary", x="netsync_fake"}[5m]))) / time() - process_start_time_seconds + netsync_sync_state == 1"#,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "grpc_server_handling_seconds_bucket",
            "netsync_sync_state",
            "process_start_time_seconds"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_an_exported_metric() {
    let sim = Sim::start(generated(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, metrics, mut client) = syncing_with_metrics(dir.path(), &sim).await;
    apply_intent(&mut client).await;
    // A job's outcome is counted just after its APPLIED event.
    let text = scrape_until(metrics, "the applied job", |text| {
        sample(
            text,
            r#"netsync_reconcile_jobs_total{datastore="r1",outcome="applied"}"#,
        ) == Some(1.0)
    })
    .await;
    drop(client);
    terminate(daemon).await;

    let exported = exported_names(&text);
    let boards = dashboards();
    assert!(
        !boards.is_empty(),
        "no dashboard under deploy/grafana/dashboards"
    );
    let mut checked = 0;
    for (path, dashboard) in &boards {
        let queries = dashboard_queries(dashboard);
        assert!(!queries.is_empty(), "{}: no query", path.display());
        for (place, expr) in queries {
            let names = metric_names(&expr);
            assert!(
                !names.is_empty(),
                "{}: {place}: no metric in {expr}",
                path.display()
            );
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{}: {place} queries {name}, which netsyncd does not export; it exports {exported:?}",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} metric names checked");
}

// ----------------------------------------------------------------- traces

/// A received span with its resource's attributes (`service.name`, ...).
type Received = (Vec<KeyValue>, Span);

/// What an in-process collector received: every span, and the headers of
/// every export request (gRPC metadata or HTTP headers).
#[derive(Clone, Default)]
struct Collected {
    spans: Arc<Mutex<Vec<Received>>>,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl Collected {
    fn keep(&self, headers: http::HeaderMap, request: ExportTraceServiceRequest) {
        self.headers.lock().unwrap().push(headers);
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans.resource.unwrap_or_default().attributes;
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans.into_iter().map(|s| (resource.clone(), s)));
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn headers(&self) -> Vec<http::HeaderMap> {
        self.headers.lock().unwrap().clone()
    }
}

/// An OTLP/gRPC trace collector (a tonic TraceService), gzip accepted.
#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (metadata, _, request) = request.into_parts();
        self.keep(metadata.into_headers(), request);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running OTLP/gRPC collector; [`GrpcCollector::stop`] ends it.
struct GrpcCollector {
    addr: SocketAddr,
    collected: Collected,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcCollector {
    /// On 127.0.0.1:0, in plain text or with `tls`.
    async fn start(tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let collected = Collected::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        let task = tokio::spawn(
            server
                .add_service(
                    TraceServiceServer::new(collected.clone())
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            collected,
            stop,
            task,
        }
    }

    async fn stop(self) -> Collected {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        self.collected
    }
}

/// A span attribute's value, as a string or an integer.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v: AnyValue| v.value)
}

fn text(value: &str) -> Option<any_value::Value> {
    Some(any_value::Value::StringValue(value.into()))
}

fn int(value: i64) -> Option<any_value::Value> {
    Some(any_value::Value::IntValue(value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A header's value as text ("" when absent).
fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Stops the daemon with SIGTERM off the async workers; its JSON log lines.
async fn terminate_with_logs(daemon: Netsyncd) -> Vec<serde_json::Value> {
    let (status, logs) = tokio::task::spawn_blocking(move || daemon.terminate_with_logs())
        .await
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_collector() {
    let collector = GrpcCollector::start(None).await;
    let sim = Sim::start(generated(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let daemon = Netsyncd::start_with(
        &dir.path().join("n.db"),
        Options {
            env: vec![
                env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    &format!("http://{}", collector.addr),
                ),
                env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                // Values are URL-encoded, as the specification says.
                env(
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20s3cret,x-tenant=lab",
                ),
                // No service.name here: the default stays netsyncd.
                env(
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=test,host.name=lab1",
                ),
                // The commit's own line ("committed") is at debug.
                env("RUST_LOG", "info,netsync_core=debug"),
            ],
            ..Default::default()
        },
    );
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    let mut request = tonic::Request::new(create(datastore(&sim)));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    client.create_datastore(request).await.unwrap();
    first_revision(&mut client).await;
    apply_intent(&mut client).await;
    drop(client);
    // The batch exporter waits 5 s between exports by default: the spans
    // must arrive through the flush at shutdown, before the process exits.
    let logs = terminate_with_logs(daemon).await;
    let collected = collector.stop().await;

    // Every export compressed, with the configured headers.
    let requests = collected.headers();
    assert!(!requests.is_empty());
    for headers in &requests {
        assert_eq!(header(headers, "grpc-encoding"), "gzip", "{headers:?}");
        assert_eq!(header(headers, "authorization"), "Bearer s3cret");
        assert_eq!(header(headers, "x-tenant"), "lab");
    }

    let spans = collected.spans();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let (resource, rpc) = spans
        .iter()
        .find(|(_, s)| s.name == "netsync.v1.NetSync/CreateDatastore")
        .unwrap_or_else(|| panic!("no CreateDatastore span among {names:?}"));
    assert_eq!(attribute(resource, "service.name"), text("netsyncd"));
    assert_eq!(
        attribute(resource, "service.version"),
        text(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(attribute(resource, "deployment.environment"), text("test"));
    assert_eq!(attribute(resource, "host.name"), text("lab1"));
    assert_eq!(hex(&rpc.trace_id), TRACE_ID, "the caller's trace");
    assert_eq!(
        hex(&rpc.parent_span_id),
        CALLER_SPAN_ID,
        "the caller's span"
    );
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(attribute(&rpc.attributes, "rpc.system"), text("grpc"));
    assert_eq!(
        attribute(&rpc.attributes, "rpc.service"),
        text("netsync.v1.NetSync")
    );
    assert_eq!(
        attribute(&rpc.attributes, "rpc.method"),
        text("CreateDatastore")
    );
    assert_eq!(attribute(&rpc.attributes, "rpc.grpc.status_code"), int(0));

    // Each commit is a trace of its own, with its datastore, revision and counts.
    let (_, commit) = spans
        .iter()
        .find(|(_, s)| s.name == "commit" && attribute(&s.attributes, "revision") == int(1))
        .unwrap_or_else(|| panic!("no commit span of revision 1 among {spans:#?}"));
    assert_eq!(attribute(&commit.attributes, "datastore"), text("r1"));
    assert!(commit.parent_span_id.is_empty(), "a commit is a root span");
    assert_ne!(hex(&commit.trace_id), TRACE_ID);
    let Some(any_value::Value::IntValue(updates)) = attribute(&commit.attributes, "updates") else {
        panic!("the commit span counts its updates");
    };
    assert!(updates >= 20, "the initial dump's leaves: {updates}");
    assert_eq!(attribute(&commit.attributes, "deletes"), int(0));

    // The apply job, with its kind, attempts and outcome; its attempt a child.
    let (_, job) = spans
        .iter()
        .find(|(_, s)| s.name == "reconcile")
        .unwrap_or_else(|| panic!("no reconcile span among {names:?}"));
    assert_eq!(attribute(&job.attributes, "datastore"), text("r1"));
    assert_eq!(attribute(&job.attributes, "kind"), text("apply"));
    assert_eq!(attribute(&job.attributes, "attempts"), int(1));
    assert_eq!(attribute(&job.attributes, "outcome"), text("applied"));
    let (_, attempt) = spans
        .iter()
        .find(|(_, s)| s.name == "reconcile_attempt")
        .unwrap_or_else(|| panic!("no reconcile_attempt span among {names:?}"));
    assert_eq!(attempt.parent_span_id, job.span_id);
    assert_eq!(attribute(&attempt.attributes, "attempt"), int(1));

    // The long-lived per-datastore spans stay out of the traces.
    assert!(!names.contains(&"sync") && !names.contains(&"reconcile_worker"));

    // Log lines lead to the traces the collector received: a commit's
    // line carries the commit's trace and span; the job's lines the job's.
    let ids = |line: &serde_json::Value| {
        (
            line["trace_id"].as_str().map(str::to_owned),
            line["span_id"].as_str().map(str::to_owned),
        )
    };
    let committed = logs
        .iter()
        .find(|l| l["message"] == "committed" && l["revision"] == 1)
        .expect("the line of the commit of revision 1");
    assert_eq!(
        ids(committed),
        (Some(hex(&commit.trace_id)), Some(hex(&commit.span_id))),
        "{committed}"
    );
    let applied = logs
        .iter()
        .find(|l| l["message"] == "reconcile" && l["phase"] == "Applied")
        .expect("the applied job's line");
    let (trace, span) = ids(applied);
    assert_eq!(trace, Some(hex(&job.trace_id)), "{applied}");
    let span = span.expect("a span_id");
    assert!(
        span == hex(&job.span_id) || span == hex(&attempt.span_id),
        "{applied}"
    );
    // A line outside every exported span (start-up) has no trace.
    let listening = logs
        .iter()
        .find(|l| l["message"] == "listening")
        .expect("the listening line");
    assert_eq!(ids(listening), (None, None), "{listening}");
}

/// Makes one traced call (GetDatastore of a datastore that does not exist:
/// no device needed) and stops the daemon; its log lines.
async fn one_traced_call(daemon: Netsyncd) -> Vec<serde_json::Value> {
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    let missing = client
        .get_datastore(pb::GetDatastoreRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    drop(client);
    terminate_with_logs(daemon).await
}

/// The GetDatastore span among `spans`, with its resource.
fn get_datastore_span(spans: &[Received]) -> &Received {
    spans
        .iter()
        .find(|(_, s)| s.name == "netsync.v1.NetSync/GetDatastore")
        .unwrap_or_else(|| panic!("no GetDatastore span among {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_https_trusts_the_given_ca_and_otel_service_name_wins() {
    let ca = netsync_testkit::pki::Ca::new("collector-ca");
    let leaf = ca.server(&["localhost"]);
    let collector = GrpcCollector::start(Some(tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&leaf.cert_pem, &leaf.key_pem),
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let daemon = Netsyncd::start_with(
        &dir.path().join("n.db"),
        Options {
            env: vec![
                // The traces-specific endpoint, used as it is.
                env(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    &format!("https://localhost:{}", collector.addr.port()),
                ),
                env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.to_str().unwrap()),
                env("OTEL_SERVICE_NAME", "from-service-name"),
                env(
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=from-attributes,service.version=9.9",
                ),
            ],
            ..Default::default()
        },
    );
    let logs = one_traced_call(daemon).await;
    let spans = collector.stop().await.spans();
    let (resource, rpc) = get_datastore_span(&spans);
    assert_eq!(
        attribute(resource, "service.name"),
        text("from-service-name")
    );
    // netsyncd's version only when the operator gives none.
    assert_eq!(attribute(resource, "service.version"), text("9.9"));
    assert_eq!(attribute(&rpc.attributes, "rpc.grpc.status_code"), int(5));
    let on = logs
        .iter()
        .find(|l| l["message"] == "exporting traces over OTLP")
        .expect("the start-up line saying traces are on");
    assert_eq!(on["protocol"], "grpc");
}

/// A running OTLP/HTTP collector (hyper, HTTP/1.1): decodes each POST body,
/// gzip or not, as an ExportTraceServiceRequest; paths kept with headers.
struct HttpCollector {
    addr: SocketAddr,
    collected: Collected,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpCollector {
    async fn start() -> Self {
        use http_body_util::BodyExt;
        use prost::Message;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collected = Collected::default();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (keep, seen) = (collected.clone(), paths.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (keep, seen) = (keep.clone(), seen.clone());
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (keep, seen) = (keep.clone(), seen.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let body = if header(&parts.headers, "content-encoding") == "gzip" {
                                let mut plain = Vec::new();
                                std::io::Read::read_to_end(
                                    &mut flate2::read::GzDecoder::new(&body[..]),
                                    &mut plain,
                                )
                                .expect("a gzip body");
                                plain
                            } else {
                                body.to_vec()
                            };
                            let export = ExportTraceServiceRequest::decode(&body[..])
                                .expect("an ExportTraceServiceRequest");
                            seen.lock().unwrap().push(parts.uri.path().to_owned());
                            keep.keep(parts.headers, export);
                            let reply = ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec();
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(reply)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            collected,
            paths,
            task,
        }
    }

    fn stop(self) -> (Collected, Vec<String>) {
        self.task.abort();
        let paths = self.paths.lock().unwrap().clone();
        (self.collected, paths)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_with_gzip_and_service_name_from_resource_attributes() {
    let collector = HttpCollector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let daemon = Netsyncd::start_with(
        &dir.path().join("n.db"),
        Options {
            env: vec![
                // The general endpoint: the exporter appends /v1/traces.
                env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    &format!("http://{}", collector.addr),
                ),
                env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
                env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=lab"),
                env(
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=from-attributes,service.namespace=netsync",
                ),
            ],
            ..Default::default()
        },
    );
    let logs = one_traced_call(daemon).await;
    let (collected, paths) = collector.stop();
    assert!(!paths.is_empty());
    assert!(paths.iter().all(|p| p == "/v1/traces"), "{paths:?}");
    for headers in collected.headers() {
        assert_eq!(header(&headers, "content-encoding"), "gzip", "{headers:?}");
        assert_eq!(header(&headers, "content-type"), "application/x-protobuf");
        assert_eq!(header(&headers, "x-tenant"), "lab");
    }
    let spans = collected.spans();
    let (resource, _) = get_datastore_span(&spans);
    assert_eq!(attribute(resource, "service.name"), text("from-attributes"));
    assert_eq!(attribute(resource, "service.namespace"), text("netsync"));
    let on = logs
        .iter()
        .find(|l| l["message"] == "exporting traces over OTLP")
        .expect("the start-up line saying traces are on");
    assert_eq!(on["protocol"], "http/protobuf");
}

#[test]
fn unsupported_otlp_settings_stop_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (variable, value, words) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            &["OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf"][..],
        ),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "zstd",
            &["OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip"],
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            &["OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"],
        ),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netsyncd"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("n.db"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317")
            .env(variable, value);
        let output = netsync_testkit::process::Process::run_to_exit("netsyncd", command, DEADLINE);
        assert!(!output.status.success(), "{variable}={value} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in words {
            assert!(stderr.contains(word), "{word:?} not in {stderr}");
        }
    }
}

// ------------------------------------------------------------------- logs

/// The datastore a JSON log line is about: its own field, or one of its spans'.
fn datastore_of(line: &serde_json::Value) -> Option<&str> {
    let spans = line.get("spans").and_then(|s| s.as_array());
    line.get("datastore")
        .or_else(|| spans?.iter().rev().find_map(|span| span.get("datastore")))
        .and_then(|v| v.as_str())
}

/// The log lines of `target` whose `field` starts with `prefix`.
fn lines_of<'a>(
    logs: &'a [serde_json::Value],
    target: &str,
    field: &str,
    prefix: &str,
) -> Vec<&'a serde_json::Value> {
    logs.iter()
        .filter(|l| {
            l["target"] == target && l[field].as_str().is_some_and(|s| s.starts_with(prefix))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_sync_names_its_datastore() {
    let sim = Sim::start(generated(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Netsyncd::start_with(
        &dir.path().join("n.db"),
        Options {
            // Dependencies log from inside the sync too: the store's
            // statements, the connection to the device.
            env: vec![(
                "RUST_LOG".into(),
                "info,netsync_core=debug,sqlx::query=debug,hyper_util=debug".into(),
            )],
            ..Default::default()
        },
    );
    let mut client = NetSyncClient::connect(daemon.url()).await.unwrap();
    client
        .create_datastore(create(datastore(&sim)))
        .await
        .unwrap();
    first_revision(&mut client).await;
    apply_intent(&mut client).await;
    drop(client);
    // Lines arrive in order: once this one is read, so is every line before it.
    daemon.wait_for_log("the applied job", |line| {
        (line.get("message")?.as_str()? == "reconcile" && line.get("phase")?.as_str()? == "Applied")
            .then_some(())
    });
    let logs = daemon.logs();
    terminate(daemon).await;

    let core: Vec<_> = logs
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("netsync_core"))
        })
        .collect();
    assert!(core.iter().any(|l| l["message"] == "committed"));
    for line in &core {
        assert_eq!(datastore_of(line), Some("r1"), "{line}");
    }
    // A dependency's lines too: the connection to the device (ingest), the
    // statements writing a commit (committer) and taking a job (worker).
    let connecting = lines_of(
        &logs,
        "hyper_util::client::legacy::connect::http",
        "message",
        &format!("connecting to {}", sim.addr),
    );
    let commit_writes = lines_of(&logs, "sqlx::query", "summary", "INSERT INTO commits");
    let job_takes = lines_of(&logs, "sqlx::query", "summary", "UPDATE reconcile_jobs");
    let mut dependencies = vec![("hyper-util's connect", &connecting)];
    if crate::support::on_postgres() {
        // PostgreSQL connections log no statement (db.rs says why).
        assert!(commit_writes.is_empty() && job_takes.is_empty());
    } else {
        dependencies.push(("sqlx's INSERT INTO commits", &commit_writes));
        dependencies.push(("sqlx's UPDATE reconcile_jobs", &job_takes));
    }
    for (what, lines) in dependencies {
        assert!(!lines.is_empty(), "{what} logs no line at debug any more");
        for line in lines {
            assert_eq!(datastore_of(line), Some("r1"), "{line}");
        }
    }
    for line in commit_writes {
        assert_eq!(line["span"]["name"], "commit", "{line}");
    }
}

/// Calls `/netsync.v1.NetSync/NoSuchMethod` (answered UNIMPLEMENTED).
async fn call_unknown_method(url: &str) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, (), _>(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/netsync.v1.NetSync/NoSuchMethod"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}
