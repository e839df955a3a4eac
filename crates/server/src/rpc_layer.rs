//! The tower layer around every RPC: one span per call, a child of the
//! caller's W3C trace context (`traceparent` metadata), and the call counted
//! and timed by method and gRPC code.
//!
//! Metrics carry the names of the methods served only: a path that is not
//! one (an unknown method, or any call refused before routing) is counted as
//! service and method `unknown`, so no client can add label values.
//!
//! A call ends when its response body ends (for a stream, when the stream
//! does), when the body is dropped unfinished (counted as CANCELLED), or at
//! once for a trailers-only response (an error before any message).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use netsync_core::histogram::BUCKETS;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a call's start and duration, as go-grpc-prometheus names them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
}

/// Labels of a finished call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

impl From<ServedMethod> for MethodLabels {
    fn from(method: ServedMethod) -> Self {
        Self {
            grpc_type: method.kind,
            grpc_service: method.service,
            grpc_method: method.method,
        }
    }
}

/// RPC counts and latency under the names dashboards built for
/// go-grpc-prometheus use (`grpc_server_started_total`,
/// `grpc_server_handled_total`, `grpc_server_handling_seconds`). Label values
/// are only ever the methods served (see the module's doc). Cheap to
/// clone: clones record into the same families.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }
}

impl RpcMetrics {
    /// Adds the families to `registry` (without a prefix: these are the
    /// names dashboards look for).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_server_started",
            "RPCs started on the server, by type, service and method (\"unknown\" for a path that names no served method)",
            self.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs finished on the server, by type, service, method and gRPC code",
            self.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's request to its last response message and status",
            self.handling.clone(),
        );
    }

    /// Records a call that started.
    pub fn started(&self, method: ServedMethod) {
        self.started.get_or_create(&method.into()).inc();
    }

    /// Records one finished call.
    pub fn handled(&self, method: ServedMethod, code: tonic::Code, took: Duration) {
        self.handled
            .get_or_create(&HandledLabels {
                grpc_type: method.kind,
                grpc_service: method.service,
                grpc_method: method.method,
                grpc_code: code_label(code),
            })
            .inc();
        self.handling
            .get_or_create(&method.into())
            .observe(took.as_secs_f64());
    }
}

/// What the metrics say of one served method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedMethod {
    /// Full service name, `netsync.v1.NetSync`.
    pub service: &'static str,
    /// Method name, `GetRunning`.
    pub method: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`, as
    /// go-grpc-prometheus' `grpc_type` label says.
    pub kind: &'static str,
}

impl ServedMethod {
    /// What is counted for a path that names no served method.
    pub const UNKNOWN: Self = Self {
        service: "unknown",
        method: "unknown",
        kind: "unknown",
    };
}

/// Every method netsyncd serves, by request path, read once from the
/// descriptor sets it serves reflection from.
fn served_methods() -> &'static std::collections::HashMap<String, ServedMethod> {
    static METHODS: std::sync::LazyLock<std::collections::HashMap<String, ServedMethod>> =
        std::sync::LazyLock::new(|| {
            use prost::Message as _;
            let sets = [
                netsync_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ];
            let mut methods = std::collections::HashMap::new();
            for set in sets {
                let set = prost_types::FileDescriptorSet::decode(set)
                    .expect("the compiled-in descriptor sets decode");
                for file in set.file {
                    for service in &file.service {
                        let full = match file.package() {
                            "" => service.name().to_owned(),
                            package => format!("{package}.{}", service.name()),
                        };
                        let full: &'static str = Box::leak(full.into_boxed_str());
                        for method in &service.method {
                            let name: &'static str =
                                Box::leak(method.name().to_owned().into_boxed_str());
                            let kind = match (method.client_streaming(), method.server_streaming())
                            {
                                (false, false) => "unary",
                                (true, false) => "client_stream",
                                (false, true) => "server_stream",
                                (true, true) => "bidi_stream",
                            };
                            methods.insert(
                                format!("/{full}/{name}"),
                                ServedMethod {
                                    service: full,
                                    method: name,
                                    kind,
                                },
                            );
                        }
                    }
                }
            }
            methods
        });
    &METHODS
}

/// The served method `path` names, or [`ServedMethod::UNKNOWN`].
pub fn method_of(path: &str) -> ServedMethod {
    served_methods()
        .get(path)
        .copied()
        .unwrap_or(ServedMethod::UNKNOWN)
}

/// Wraps a gRPC server's services with a span and metrics per call.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: RpcMetrics,
}

impl RpcLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: RpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("", path));
        // Not a child of whatever span the connection task is in: the parent,
        // if any, is the caller's.
        let span = tracing::info_span!(
            parent: None,
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let caller = TraceContextPropagator::new().extract(&Metadata(request.headers()));
        // Fails only when no OpenTelemetry layer is installed (traces off).
        let _ = span.set_parent(caller);
        let served = method_of(path);
        self.metrics.started(served);
        let call = Call {
            method: served,
            started: Instant::now(),
            metrics: self.metrics.clone(),
            span,
        };
        let inner = {
            let _entered = call.span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            call: Some(call),
        }
    }
}

/// One call in progress.
struct Call {
    method: ServedMethod,
    started: Instant,
    metrics: RpcMetrics,
    /// Kept until the call ends, so that the span covers a whole stream.
    span: Span,
}

impl Call {
    fn finish(self, code: Code) {
        self.span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .handled(self.method, code, self.started.elapsed());
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.call.as_ref().map(|call| call.span.enter());
            ready!(this.inner.poll(cx))
        };
        let Some(call) = this.call.take() else {
            panic!("ResponseFuture polled after completion");
        };
        Poll::Ready(match result {
            Ok(response) => match grpc_status(response.headers()) {
                // Trailers-only: the status is in the headers and the call is over.
                Some(code) => {
                    call.finish(code);
                    Ok(response.map(|inner| ObservedBody { inner, call: None }))
                }
                None => Ok(response.map(|inner| ObservedBody {
                    inner,
                    call: Some(call),
                })),
            },
            Err(error) => {
                call.finish(Code::Unknown);
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's span and records its metrics at
    /// its trailers, its end, or its drop.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its trailers: the client went away, or the server
            // cut the stream off at shutdown.
            if let Some(call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = {
            // A stream's messages are produced while the body is polled.
            let _entered = this.call.as_ref().map(|call| call.span.enter());
            ready!(this.inner.poll_frame(cx))
        };
        let ended = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(grpc_status),
            Some(Err(_)) => Some(Some(Code::Unknown)),
            None => Some(None),
        };
        if let Some(code) = ended
            && let Some(call) = this.call.take()
        {
            // A gRPC response always ends with a status; one without is broken.
            call.finish(code.unwrap_or(Code::Unknown));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads W3C trace context from request metadata.
struct Metadata<'a>(&'a HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The `grpc-status` of a header or trailer block, if it has one.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Codes that mean the server failed, as OpenTelemetry's gRPC conventions
/// list them; the others are the caller's business.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A code's name as go-grpc-prometheus' `grpc_code` label spells it
/// (`NotFound`), so that existing dashboards match.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_come_from_the_descriptors_with_their_type() {
        let kind = |path: &str| method_of(path).kind;
        assert_eq!(kind("/netsync.v1.NetSync/CreateDatastore"), "unary");
        assert_eq!(kind("/netsync.v1.NetSync/WatchSync"), "server_stream");
        assert_eq!(kind("/netsync.v1.NetSync/GetRunning"), "server_stream");
        assert_eq!(kind("/grpc.health.v1.Health/Check"), "unary");
        assert_eq!(kind("/grpc.health.v1.Health/Watch"), "server_stream");
        assert_eq!(
            kind("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "bidi_stream"
        );
        let watch = method_of("/netsync.v1.NetSync/WatchSync");
        assert_eq!(
            (watch.service, watch.method),
            ("netsync.v1.NetSync", "WatchSync")
        );
        for unknown in [
            "/netsync.v1.NetSync/Nope",
            "/x/y",
            "",
            "/netsync.v1.NetSync",
        ] {
            assert_eq!(method_of(unknown), ServedMethod::UNKNOWN, "{unknown}");
        }
    }
}
