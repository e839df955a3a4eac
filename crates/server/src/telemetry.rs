//! Logging and tracing set-up: log lines to stderr, filtered by `RUST_LOG`
//! (default `info`); spans exported over OTLP (gRPC or HTTP/protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, off otherwise, configured by the standard `OTEL_*` variables.
//! `docs/OBSERVABILITY.md` says what is exported and which variables apply.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::ValueEnum;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Spans exported as traces: one per RPC, commit, reconcile job and attempt.
/// The long-lived spans of a datastore (`sync`, `reconcile_worker`) only give
/// log lines their datastore: exported, each would be a single trace as long
/// as the process, holding every commit.
const TRACED_SPANS: [&str; 4] = ["rpc", "commit", "reconcile", "reconcile_attempt"];

/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names the service.
const DEFAULT_SERVICE_NAME: &str = "netsyncd";

/// A setting that stops start-up: it names the variable and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable has a value netsyncd does not support.
    #[error("{variable}={value:?}: {reason}")]
    Unsupported {
        /// The variable, as set.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is supported instead.
        reason: String,
    },
    /// A file a variable names cannot be read or holds no usable PEM.
    #[error("{variable}={path:?}: {reason}")]
    File {
        /// The variable, as set.
        variable: &'static str,
        /// The file it names.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The OTLP exporter refused its settings.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already installed.
    #[error("{0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    /// Present when traces are exported.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter. Call once, at exit.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The batch processor's thread blocks on each export; the exporter's
        // connection runs on this runtime: block on another thread.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the last spans"),
            Err(e) => tracing::warn!(error = %e, "could not flush the last spans"),
        }
    }
}

/// Installs the global subscriber. Call once, at start-up, inside the Tokio
/// runtime (the OTLP exporter's connection runs on it). A bad `OTEL_*`
/// setting is an error: netsyncd should not start without the traces its
/// operator asked for.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let otlp = OtlpSettings::from_env()?;
    let provider = otlp.as_ref().map(tracer_provider).transpose()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Where a JSON line finds the trace of its span: the installed
    // subscriber, known only once installed, hence set after `try_init`.
    let dispatch = Arc::new(OnceLock::new());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // RUST_LOG filters log lines only: quieter logs do not thin the traces.
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json if provider.is_some() => logs
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                dispatch: dispatch.clone(),
            })
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    }
    .with_filter(filter);
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("netsyncd"))
            .with_filter(filter_fn(traced))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    let _ = dispatch.set(tracing::dispatcher::get_default(|d| d.downgrade()));
    if let Some(otlp) = &otlp {
        tracing::info!(
            endpoint = %otlp.endpoint,
            protocol = otlp.protocol_name(),
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

// ------------------------------------------------------------ OTLP settings

/// The OTLP settings netsyncd reads itself. The exporter crate reads the
/// endpoint, headers, timeout and compression from the same variables; what
/// it would not do as the specification says is done here: choose the
/// protocol from `OTEL_EXPORTER_OTLP_PROTOCOL`, refuse a value it would
/// silently ignore, and trust `OTEL_EXPORTER_OTLP_CERTIFICATE` (its default
/// TLS set-up trusts no root at all).
#[derive(Debug)]
struct OtlpSettings {
    /// The endpoint variable's value (traces-specific first).
    endpoint: String,
    protocol: Transport,
    /// TLS towards the collector: `None` for plain text.
    tls: Option<CollectorTls>,
    /// Per-export timeout, for the HTTP client (the gRPC channel gets it
    /// from the exporter crate).
    timeout: Duration,
}

/// The OTLP protocols netsyncd exports over (`http/json` is not built in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `grpc`, the default.
    Grpc,
    /// `http/protobuf`: POST to `/v1/traces`.
    HttpProtobuf,
}

/// Certificates for a TLS collector, PEM, read at start-up.
#[derive(Debug, Default)]
struct CollectorTls {
    /// CA bundle to trust; `None`: the public webpki roots.
    ca_pem: Option<String>,
    /// Client certificate and key, for a collector that asks for one.
    identity: Option<(String, String)>,
}

/// The value of the traces-specific variable, else of the general one; an
/// empty value counts as unset, as in the specification.
fn setting(traces: &'static str, general: &'static str) -> Option<(&'static str, String)> {
    [traces, general].into_iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    })
}

impl OtlpSettings {
    /// `None` when no endpoint is set (tracing off).
    fn from_env() -> Result<Option<Self>, TelemetryError> {
        let Some((_, endpoint)) = setting(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ) else {
            return Ok(None);
        };
        // gRPC stays the default, as before this variable was read and as
        // the collector ports of docker-compose.yml expect.
        let protocol = match setting(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None => Transport::Grpc,
            Some((_, v)) if v == "grpc" => Transport::Grpc,
            Some((_, v)) if v == "http/protobuf" => Transport::HttpProtobuf,
            Some((variable, value)) => {
                return Err(TelemetryError::Unsupported {
                    variable,
                    value,
                    reason: "netsyncd exports over \"grpc\" (the default) or \"http/protobuf\""
                        .into(),
                });
            }
        };
        // The exporter crate skips an unknown compression with a warning
        // only its internal log shows: traces would go uncompressed unseen.
        if let Some((variable, value)) = setting(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) && value != "gzip"
            && value != "none"
        {
            return Err(TelemetryError::Unsupported {
                variable,
                value,
                reason: "netsyncd compresses with \"gzip\" or not at all (\"none\")".into(),
            });
        }
        let timeout = setting(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        )
        .and_then(|(_, v)| v.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
        let tls = if secure(&endpoint, protocol) {
            Some(CollectorTls::from_env()?)
        } else {
            None
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            tls,
            timeout,
        }))
    }

    fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Whether the endpoint asks for TLS: `https://`; for gRPC an endpoint
/// without a scheme too, unless `OTEL_EXPORTER_OTLP_INSECURE` is true (the
/// exporter crate reads that variable the same way).
fn secure(endpoint: &str, protocol: Transport) -> bool {
    match endpoint.split_once("://") {
        Some((scheme, _)) => scheme.eq_ignore_ascii_case("https"),
        None => {
            protocol == Transport::Grpc
                && !setting(
                    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
                    "OTEL_EXPORTER_OTLP_INSECURE",
                )
                .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"))
        }
    }
}

impl CollectorTls {
    fn from_env() -> Result<Self, TelemetryError> {
        let read = |traces, general| -> Result<Option<String>, TelemetryError> {
            let Some((variable, path)) = setting(traces, general) else {
                return Ok(None);
            };
            let pem = std::fs::read_to_string(&path).map_err(|e| TelemetryError::File {
                variable,
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if !pem.contains("-----BEGIN ") {
                return Err(TelemetryError::File {
                    variable,
                    path,
                    reason: "no PEM block in the file".into(),
                });
            }
            Ok(Some(pem))
        };
        let ca_pem = read(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )?;
        let cert = read(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        )?;
        let key = read(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        )?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(TelemetryError::Unsupported {
                    variable: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    value: String::new(),
                    reason: "a client certificate needs its key (OTEL_EXPORTER_OTLP_CLIENT_KEY) \
                             and a key its certificate"
                        .into(),
                });
            }
        };
        Ok(Self { ca_pem, identity })
    }

    /// For the gRPC exporter (tonic's rustls set-up).
    fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let config = match &self.ca_pem {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }

    /// For the HTTP exporter (a rustls client configuration of our own).
    fn rustls(&self) -> Result<rustls::ClientConfig, TelemetryError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |variable: &'static str, e: &dyn fmt::Display| TelemetryError::File {
            variable,
            path: std::env::var(variable).unwrap_or_default(),
            reason: e.to_string(),
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(ca) => {
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    let cert = cert.map_err(|e| bad("OTEL_EXPORTER_OTLP_CERTIFICATE", &e))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad("OTEL_EXPORTER_OTLP_CERTIFICATE", &e))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &e))?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| bad("OTEL_EXPORTER_OTLP_CLIENT_KEY", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("OTEL_EXPORTER_OTLP_CLIENT_KEY", &e))
            }
        }
    }
}

/// Spans batched and sent over OTLP. The exporter crate reads the endpoint,
/// `..._HEADERS`, `..._TIMEOUT` and `..._COMPRESSION` itself; the SDK reads
/// `OTEL_BSP_*` and `OTEL_TRACES_SAMPLER`.
fn tracer_provider(otlp: &OtlpSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = match otlp.protocol {
        Transport::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            match &otlp.tls {
                Some(tls) => builder.with_tls_config(tls.tonic()).build()?,
                None => builder.build()?,
            }
        }
        Transport::HttpProtobuf => {
            // One connector for http and https; its TLS configuration is
            // only used for an https endpoint.
            let tls = otlp
                .tls
                .as_ref()
                .map_or_else(|| CollectorTls::default().rustls(), CollectorTls::rustls)?;
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .build();
            let client = OnRuntime {
                client: Arc::new(opentelemetry_http::hyper::HyperClient::new(
                    connector,
                    otlp.timeout,
                    None,
                )),
                runtime: tokio::runtime::Handle::current(),
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_http_client(client)
                .build()?
        }
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// The resource of every span: the SDK's attributes (telemetry.sdk.*),
/// `OTEL_RESOURCE_ATTRIBUTES`, and `service.name` chosen as the
/// specification says: `OTEL_SERVICE_NAME`, else `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, else netsyncd's own default. (The SDK's
/// builder lets `OTEL_RESOURCE_ATTRIBUTES` win over `OTEL_SERVICE_NAME`.)
fn resource() -> Resource {
    let from_attributes = EnvResourceDetector::new().detect();
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            from_attributes
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string())
        })
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let mut builder = Resource::builder().with_service_name(service_name);
    if from_attributes
        .get(&opentelemetry::Key::new("service.version"))
        .is_none()
    {
        builder = builder.with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    }
    builder.build()
}

/// An HTTP client whose requests run on the Tokio runtime. The SDK's batch
/// processor exports from a thread of its own, blocking on the export; hyper
/// needs the runtime's reactor and timers, which that thread does not have.
#[derive(Debug)]
struct OnRuntime<C> {
    client: Arc<C>,
    runtime: tokio::runtime::Handle,
}

impl<C: HttpClient + 'static> HttpClient for OnRuntime<C> {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let sent = self
            .runtime
            .spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { sent.await? })
    }
}

/// The OpenTelemetry layer's filter: our traced spans, and our events at
/// INFO and above (they become events of the span they happen in).
fn traced(metadata: &Metadata<'_>) -> bool {
    let ours = metadata.target().starts_with("netsync_");
    if metadata.is_span() {
        ours && TRACED_SPANS.contains(&metadata.name())
    } else {
        ours && *metadata.level() <= Level::INFO
    }
}

// ------------------------------------------------------- trace ids in logs

/// The JSON line format with `trace_id` and `span_id` of the innermost
/// exported span around the event, so that a log line leads to its trace
/// (and back). Lines outside any exported span are unchanged.
struct WithTraceIds<F> {
    inner: F,
    /// The installed subscriber; weak, as it owns this formatter.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = self.trace_of(event) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter ends each object with `}` and a newline.
        let object = line.trim_end();
        match object.strip_suffix('}') {
            Some(open) => writeln!(
                writer,
                r#"{open},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#
            ),
            None => writer.write_str(&line),
        }
    }
}

impl<F> WithTraceIds<F> {
    /// The trace and span of the innermost exported span around `event`.
    fn trace_of(&self, event: &Event<'_>) -> Option<(TraceId, SpanId)> {
        // Not `dispatcher::get_default`: while an event is dispatched it
        // yields no subscriber, so as not to recurse.
        let dispatch = self.dispatch.get()?.upgrade()?;
        let registry = dispatch.downcast_ref::<Registry>()?;
        let leaf = if event.is_root() {
            return None;
        } else if let Some(parent) = event.parent() {
            parent.clone()
        } else {
            dispatch.current_span().id()?.clone()
        };
        // From the registry, not from the formatter's context: the log
        // filter may hide a span that is exported.
        let span = registry.span(&leaf)?;
        span.scope().find_map(|span| {
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let span = context.span();
            let span_context = span.span_context();
            span_context
                .is_valid()
                .then(|| (span_context.trace_id(), span_context.span_id()))
        })
    }
}
