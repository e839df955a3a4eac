//! The gNMI service: Capabilities, Get and Set here, Subscribe in
//! [`subscribe`]. Subscribe is routed past the generated server because its
//! responses are assembled from pre-encoded bytes (see [`crate::wire`]).

pub mod subscribe;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use netsync_core::{Path, PathElem};
use netsync_proto::gnmi;
use netsync_proto::gnmi::g_nmi_server::{GNmi, GNmiServer};
use netsync_proto::gnmi::typed_value::Value;
use serde_json::Value as Json;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::counters::add;
use crate::device::{Device, SetOps, SetValue, now_ns};
use crate::error::{SimError, offline};
use crate::faults::take_set_failure;
use crate::tree::{Pattern, Tree};
use crate::{auth, json};

/// The gNMI version reported by Capabilities.
pub const GNMI_VERSION: &str = "0.10.0";

/// Encodings the simulator serves, as Capabilities reports them.
pub const ENCODINGS: [gnmi::Encoding; 4] = [
    gnmi::Encoding::JsonIetf,
    gnmi::Encoding::Json,
    gnmi::Encoding::Proto,
    gnmi::Encoding::Ascii,
];

/// Capabilities, Get and Set.
#[derive(Clone)]
pub struct GnmiService {
    shared: Arc<Shared>,
    device: Device,
}

impl GnmiService {
    /// The service over `device`.
    pub fn new(shared: Arc<Shared>, device: Device) -> Self {
        Self { shared, device }
    }

    /// Authenticates a call and refuses it while the device is offline;
    /// returns the caller's username.
    fn admit<T>(&self, request: &Request<T>) -> Result<Option<String>, SimError> {
        let user = auth::authenticate(self.shared.credentials.as_ref(), request.metadata())?;
        if !self.shared.online.load(Relaxed) {
            return Err(offline());
        }
        Ok(user)
    }
}

/// Reads the encoding of a request; BYTES and unknown values are refused.
pub fn encoding(value: i32, field: &str) -> Result<gnmi::Encoding, SimError> {
    match gnmi::Encoding::try_from(value) {
        Ok(e) if ENCODINGS.contains(&e) => Ok(e),
        Ok(e) => Err(SimError::Unimplemented(format!(
            "{field}: encoding {} is not supported (use JSON_IETF, JSON, PROTO or ASCII)",
            e.as_str_name()
        ))),
        Err(_) => Err(SimError::InvalidArgument(format!(
            "{field}: unknown encoding {value}"
        ))),
    }
}

/// Joins a request prefix and path, naming the field in errors, and reads it
/// as this device serves it (see [`as_served`]).
pub fn join(prefix: Option<&gnmi::Path>, path: &gnmi::Path, field: &str) -> Result<Path, SimError> {
    Path::from_gnmi(prefix, path)
        .map(as_served)
        .map_err(|e| SimError::InvalidArgument(format!("{field}: {e}")))
}

/// The origin this device serves its (origin-less) tree under.
pub const DEFAULT_ORIGIN: &str = "openconfig";

/// A request path as this device reads it, like a device that serves one
/// schema: the origin `openconfig` is its default origin, the same as none;
/// and a YANG module prefix on an element name
/// (`openconfig-interfaces:interfaces`) is dropped. Responses carry the tree's
/// paths as they are (without either), so a client that asked with them sees
/// the difference, as it would with many devices.
pub fn as_served(path: Path) -> Path {
    let plain = |name: &str| match name.split_once(':') {
        Some((module, local)) if !module.is_empty() && !local.is_empty() => local.to_owned(),
        _ => name.to_owned(),
    };
    let origin = path
        .origin()
        .filter(|o| *o != DEFAULT_ORIGIN)
        .map(str::to_owned);
    let served: Path = path
        .elems()
        .iter()
        .map(|e| {
            e.keys().iter().fold(
                PathElem::new(plain(e.name())).expect("a local name is not empty"),
                |elem, (k, v)| elem.with_key(k, v).expect("key names are not empty"),
            )
        })
        .collect();
    served
        .with_origin(origin.unwrap_or_default())
        .expect("the origin comes from a valid path")
}

/// The prefix of a response: the target, if the client named one, and the
/// origin the device is configured to answer with (every path in a response
/// is otherwise complete).
pub fn echo_prefix(prefix: Option<&gnmi::Path>, origin: Option<&str>) -> Option<gnmi::Path> {
    let target = prefix.map(|p| p.target.clone()).unwrap_or_default();
    let origin = origin.unwrap_or_default().to_owned();
    (!target.is_empty() || !origin.is_empty()).then_some(gnmi::Path {
        target,
        origin,
        ..Default::default()
    })
}

/// A scalar value re-encoded for a JSON or ASCII request.
pub fn encode_value(value: &gnmi::TypedValue, encoding: gnmi::Encoding) -> gnmi::TypedValue {
    let value = match encoding {
        gnmi::Encoding::Proto | gnmi::Encoding::Bytes => return value.clone(),
        gnmi::Encoding::JsonIetf => {
            Value::JsonIetfVal(json::render_value(value, true).to_string().into_bytes())
        }
        gnmi::Encoding::Json => {
            Value::JsonVal(json::render_value(value, false).to_string().into_bytes())
        }
        gnmi::Encoding::Ascii => Value::AsciiVal(match json::render_value(value, false) {
            Json::String(s) => s,
            other => other.to_string(),
        }),
    };
    gnmi::TypedValue { value: Some(value) }
}

/// Whether a leaf belongs to the Get data type, by OpenConfig conventions:
/// state leaves sit below a `state` container, config leaves do not;
/// operational ones are state leaves below `counters`.
fn in_data_type(path: &Path, data_type: gnmi::get_request::DataType) -> bool {
    use gnmi::get_request::DataType;
    let mut names = path.elems().iter().map(|e| e.name());
    let state_at = names.position(|n| n == "state");
    match data_type {
        DataType::All => true,
        DataType::Config => state_at.is_none(),
        DataType::State => state_at.is_some(),
        DataType::Operational => {
            state_at.is_some() && path.elems().iter().any(|e| e.name() == "counters")
        }
    }
}

/// The updates a Get returns for one requested path.
fn get_updates(
    tree: &Tree,
    path: &Path,
    encoding: gnmi::Encoding,
    data_type: gnmi::get_request::DataType,
) -> Result<Vec<gnmi::Update>, SimError> {
    let pattern = Pattern::new(path.clone());
    let leaves = tree
        .scan(&pattern)
        .filter(|(p, _)| in_data_type(p, data_type));
    let updates: Vec<gnmi::Update> = match encoding {
        gnmi::Encoding::Json | gnmi::Encoding::JsonIetf => {
            let ietf = encoding == gnmi::Encoding::JsonIetf;
            // One document per node the path names: one for a plain path,
            // one per match for a wildcard path.
            let mut groups: BTreeMap<Path, Vec<(&Path, gnmi::TypedValue)>> = BTreeMap::new();
            for (leaf_path, leaf) in leaves {
                let node = if pattern.has_wildcards() {
                    let depth = pattern.matched_len(leaf_path).unwrap_or(leaf_path.len());
                    let node: Path = leaf_path.elems()[..depth].iter().cloned().collect();
                    node.with_origin(leaf_path.origin().unwrap_or_default())
                        .expect("origin of a valid path")
                } else {
                    path.clone()
                };
                groups
                    .entry(node)
                    .or_default()
                    .push((leaf_path, leaf.value()));
            }
            groups
                .into_iter()
                .map(|(node, leaves)| {
                    let leaves = leaves.iter().map(|(path, value)| (*path, value));
                    let doc = json::render_subtree(&node, leaves, ietf).to_string();
                    let val = if ietf {
                        Value::JsonIetfVal(doc.into_bytes())
                    } else {
                        Value::JsonVal(doc.into_bytes())
                    };
                    gnmi::Update {
                        path: Some(node.to_gnmi()),
                        val: Some(gnmi::TypedValue { value: Some(val) }),
                        ..Default::default()
                    }
                })
                .collect()
        }
        _ => leaves
            .map(|(leaf_path, leaf)| gnmi::Update {
                path: Some(leaf_path.to_gnmi()),
                val: Some(encode_value(&leaf.value(), encoding)),
                ..Default::default()
            })
            .collect(),
    };
    if updates.is_empty() && !pattern.has_wildcards() && !tree.has_subtree(path) {
        return Err(SimError::NotFound(format!("no data at `{path}`")));
    }
    Ok(updates)
}

/// Converts one Set update or replace.
fn set_value(update: &gnmi::Update, field: &str) -> Result<SetValue, SimError> {
    #[allow(
        deprecated,
        reason = "the old untyped `value` field is refused explicitly"
    )]
    if update.value.is_some() && update.val.is_none() {
        return Err(SimError::InvalidArgument(format!(
            "{field}.value: the deprecated `value` field is not supported, use `val`"
        )));
    }
    let val = update
        .val
        .as_ref()
        .and_then(|v| v.value.as_ref())
        .ok_or_else(|| SimError::InvalidArgument(format!("{field}.val: no value given")))?;
    match val {
        Value::JsonVal(bytes) | Value::JsonIetfVal(bytes) => serde_json::from_slice(bytes)
            .map(SetValue::Json)
            .map_err(|e| SimError::InvalidArgument(format!("{field}.val: invalid JSON: {e}"))),
        Value::AnyVal(_) | Value::ProtoBytes(_) => Err(SimError::Unimplemented(format!(
            "{field}.val: any_val and proto_bytes are not supported"
        ))),
        _ => Ok(SetValue::Scalar(gnmi::TypedValue {
            value: Some(val.clone()),
        })),
    }
}

/// Refuses a Set whose values are not in `encoding`, as a device that speaks
/// only that encoding does.
fn check_set_encoding(
    request: &gnmi::SetRequest,
    encoding: gnmi::Encoding,
) -> Result<(), SimError> {
    for (name, list) in [("replace", &request.replace), ("update", &request.update)] {
        for (i, update) in list.iter().enumerate() {
            let value = update.val.as_ref().and_then(|v| v.value.as_ref());
            let taken = match (encoding, value) {
                (_, None) => true,
                (gnmi::Encoding::JsonIetf, Some(v)) => matches!(v, Value::JsonIetfVal(_)),
                (gnmi::Encoding::Json, Some(v)) => matches!(v, Value::JsonVal(_)),
                (gnmi::Encoding::Ascii, Some(v)) => matches!(v, Value::AsciiVal(_)),
                (gnmi::Encoding::Proto | gnmi::Encoding::Bytes, Some(v)) => {
                    !matches!(v, Value::JsonIetfVal(_) | Value::JsonVal(_))
                }
            };
            if !taken {
                return Err(SimError::InvalidArgument(format!(
                    "{name}[{i}].val: this device takes {} values in a Set",
                    encoding.as_str_name()
                )));
            }
        }
    }
    Ok(())
}

/// Converts a SetRequest into operations and the results to report.
fn set_ops(request: &gnmi::SetRequest) -> Result<(SetOps, Vec<gnmi::UpdateResult>), SimError> {
    use gnmi::update_result::Operation;
    if !request.union_replace.is_empty() {
        return Err(SimError::Unimplemented(
            "union_replace is not supported by netsync-sim".into(),
        ));
    }
    let prefix = request.prefix.as_ref();
    let mut ops = SetOps::default();
    let mut results = Vec::new();
    let result = |path: &gnmi::Path, op: Operation| gnmi::UpdateResult {
        path: Some(path.clone()),
        op: op as i32,
        ..Default::default()
    };
    for (i, path) in request.delete.iter().enumerate() {
        ops.deletes
            .push(join(prefix, path, &format!("delete[{i}]"))?);
        results.push(result(path, Operation::Delete));
    }
    for (name, list, op) in [
        ("replace", &request.replace, Operation::Replace),
        ("update", &request.update, Operation::Update),
    ] {
        for (i, update) in list.iter().enumerate() {
            let field = format!("{name}[{i}]");
            let gnmi_path = update.path.clone().unwrap_or_default();
            let path = join(prefix, &gnmi_path, &format!("{field}.path"))?;
            let value = set_value(update, &field)?;
            match op {
                Operation::Replace => ops.replaces.push((path, value)),
                _ => ops.updates.push((path, value)),
            }
            results.push(result(&gnmi_path, op));
        }
    }
    Ok((ops, results))
}

#[tonic::async_trait]
impl GNmi for GnmiService {
    async fn capabilities(
        &self,
        request: Request<gnmi::CapabilityRequest>,
    ) -> Result<Response<gnmi::CapabilityResponse>, Status> {
        self.admit(&request)?;
        let model = |name: &str, version: &str| gnmi::ModelData {
            name: name.into(),
            organization: "OpenConfig working group".into(),
            version: version.into(),
        };
        Ok(Response::new(gnmi::CapabilityResponse {
            supported_models: vec![
                model("openconfig-interfaces", "3.7.1"),
                model("openconfig-system", "2.1.0"),
                model("openconfig-network-instance", "4.4.1"),
                model("openconfig-platform", "0.26.0"),
            ],
            supported_encodings: ENCODINGS.iter().map(|e| *e as i32).collect(),
            g_nmi_version: GNMI_VERSION.into(),
            extension: Vec::new(),
        }))
    }

    async fn get(
        &self,
        request: Request<gnmi::GetRequest>,
    ) -> Result<Response<gnmi::GetResponse>, Status> {
        self.admit(&request)?;
        add(&self.shared.counters.gets_received, 1);
        let request = request.into_inner();
        let encoding = encoding(request.encoding, "encoding")?;
        let data_type = gnmi::get_request::DataType::try_from(request.r#type).map_err(|_| {
            SimError::InvalidArgument(format!("type: unknown data type {}", request.r#type))
        })?;
        let prefix = request.prefix.as_ref();
        let root = gnmi::Path::default();
        let requested: Vec<&gnmi::Path> = if request.path.is_empty() {
            vec![&root]
        } else {
            request.path.iter().collect()
        };
        let paths = requested
            .iter()
            .enumerate()
            .map(|(i, p)| join(prefix, p, &format!("path[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let tree = self.device.snapshot().await?;
        let timestamp = now_ns();
        let mut notifications = Vec::with_capacity(paths.len());
        for path in &paths {
            notifications.push(gnmi::Notification {
                timestamp,
                prefix: echo_prefix(prefix, self.shared.response_origin.as_deref()),
                update: get_updates(&tree, path, encoding, data_type)?,
                ..Default::default()
            });
        }
        Ok(Response::new(gnmi::GetResponse {
            notification: notifications,
            ..Default::default()
        }))
    }

    async fn set(
        &self,
        request: Request<gnmi::SetRequest>,
    ) -> Result<Response<gnmi::SetResponse>, Status> {
        let user = self.admit(&request)?;
        let counters = &self.shared.counters;
        add(&counters.sets_received, 1);
        let result = async {
            let delay = self.shared.faults.borrow().set_delay_for(user.as_deref());
            if let Some(delay) = delay {
                tracing::debug!(?delay, "set_delay fault: holding the Set");
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = take_set_failure(&self.shared.faults) {
                return Err(status);
            }
            let request = request.into_inner();
            if let Some(encoding) = self.shared.set_encoding {
                check_set_encoding(&request, encoding)?;
            }
            let (ops, results) = set_ops(&request)?;
            let changed = self.device.set(ops, true).await?;
            tracing::debug!(changed, "Set applied");
            Ok(gnmi::SetResponse {
                prefix: request.prefix,
                response: results,
                timestamp: now_ns(),
                ..Default::default()
            })
        }
        .await;
        if result.is_err() {
            add(&counters.sets_failed, 1);
        }
        result.map(Response::new)
    }

    type SubscribeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<gnmi::SubscribeResponse, Status>> + Send>,
    >;

    async fn subscribe(
        &self,
        _request: Request<tonic::Streaming<gnmi::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Never reached: `GnmiRouter` serves Subscribe with its own codec.
        Err(Status::internal("Subscribe is routed to the raw handler"))
    }
}

/// The gNMI service as the server sees it: Subscribe goes to
/// [`subscribe::Subscriber`] with the pass-through codec, everything else to
/// the generated server.
#[derive(Clone)]
pub struct GnmiRouter {
    generated: GNmiServer<GnmiService>,
    subscriber: subscribe::Subscriber,
}

impl GnmiRouter {
    /// The router over `shared` and `device`.
    pub fn new(shared: Arc<Shared>, device: Device) -> Self {
        Self {
            generated: GNmiServer::new(GnmiService::new(Arc::clone(&shared), device.clone()))
                .max_decoding_message_size(usize::MAX),
            subscriber: subscribe::Subscriber::new(shared, device),
        }
    }
}

impl NamedService for GnmiRouter {
    const NAME: &'static str = "gnmi.gNMI";
}

impl Service<http::Request<tonic::body::Body>> for GnmiRouter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == "/gnmi.gNMI/Subscribe" {
            let subscriber = self.subscriber.clone();
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(crate::wire::SubscribeCodec)
                    .apply_max_message_size_config(Some(usize::MAX), None);
                Ok(grpc.streaming(subscriber, request).await)
            })
        } else {
            self.generated.call(request)
        }
    }
}
