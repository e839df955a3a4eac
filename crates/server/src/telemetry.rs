//! Logging and tracing set-up: log lines to stderr, filtered by `RUST_LOG`
//! (default `info`); spans exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, off otherwise. `docs/OBSERVABILITY.md` says what is exported.

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
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
        // Shutting down blocks until the last batch is sent, through a gRPC
        // connection that runs on this runtime: block on another thread.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the last spans"),
            Err(e) => tracing::warn!(error = %e, "could not flush the last spans"),
        }
    }
}

/// Installs the global subscriber. Call once, at start-up, inside the Tokio
/// runtime (the OTLP exporter's connection runs on it).
pub fn init(format: LogFormat) -> Result<Telemetry, Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // RUST_LOG filters log lines only: quieter logs do not thin the traces.
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    }
    .with_filter(filter);
    let provider = otlp_configured().then(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("netsyncd"))
            .with_filter(filter_fn(traced))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    if provider.is_some() {
        tracing::info!("exporting traces over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

/// Whether an OTLP endpoint is given, as the OpenTelemetry SDKs read it.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Spans batched and sent over OTLP/gRPC; the endpoint, headers, timeout,
/// batch size and sampler come from the standard `OTEL_*` variables.
fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("netsyncd");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
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
