//! The device end of a sync: the [`Target`] trait (subscribe, get, set,
//! capabilities), its gNMI implementation over tonic, and errors that know
//! whether a retry can help.

use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use netsync_proto::gnmi;
use netsync_proto::gnmi::g_nmi_client::GNmiClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::datastore::TargetSpec;

pub mod fake;
mod tls;

/// Responses of a Subscribe call.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<Received, TargetError>> + Send>>;

/// One response of a Subscribe call.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The message's protobuf bytes as they came off the wire, not yet
    /// decoded: the engine reads the common case in place (see
    /// [`crate::notification::prepare`]).
    Encoded(bytes::Bytes),
    /// An already decoded message.
    Decoded(gnmi::SubscribeResponse),
}

/// Requests of a Subscribe call: the subscription, then (POLL) Poll messages.
/// The call's request side stays open until the sender is dropped.
pub type RequestStream = tokio::sync::mpsc::Receiver<gnmi::SubscribeRequest>;

/// A device that speaks gNMI, or something standing in for one.
pub trait Target: Send + Sync + 'static {
    /// Opens a Subscribe stream fed by `requests`.
    fn subscribe(
        &self,
        requests: RequestStream,
    ) -> BoxFuture<'_, Result<ResponseStream, TargetError>>;
    /// One gNMI Get.
    fn get(
        &self,
        request: gnmi::GetRequest,
    ) -> BoxFuture<'_, Result<gnmi::GetResponse, TargetError>>;
    /// One gNMI Set (atomic on the device).
    fn set(
        &self,
        request: gnmi::SetRequest,
    ) -> BoxFuture<'_, Result<gnmi::SetResponse, TargetError>>;
    /// gNMI Capabilities.
    fn capabilities(&self) -> BoxFuture<'_, Result<gnmi::CapabilityResponse, TargetError>>;
}

/// A failed call to the device, with the gRPC code it ended with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct TargetError {
    /// The gRPC code.
    pub code: tonic::Code,
    /// What the device (or the transport) said.
    pub message: String,
    /// The device sent a message over the connection's decoding limit
    /// (the datastore's `max_message_bytes`); `message` says so with both
    /// sizes.
    pub over_cap: bool,
}

impl TargetError {
    /// An error with `code`.
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            over_cap: false,
        }
    }

    /// Whether trying again later may succeed (the device or the path to it is
    /// temporarily unable), as opposed to a request the device will always refuse.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
                | tonic::Code::Aborted
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        )
    }
}

/// A message over `max_message_bytes`.
pub fn message_over(found: usize, max: usize) -> String {
    format!(
        "device sent a {} message; max_message_bytes is {}",
        crate::human::human_bytes(found as u64),
        crate::human::human_bytes(max as u64)
    )
}

impl From<tonic::Status> for TargetError {
    fn from(status: tonic::Status) -> Self {
        // A TLS failure is told in terms of the datastore's settings. Other
        // transport failures get their root cause: tonic's own message for
        // them is often only "transport error".
        if let Some(explained) = tls::explain(&status) {
            return Self::new(status.code(), explained);
        }
        if let Some((found, limit)) = over_decoding_limit(&status) {
            return Self {
                over_cap: true,
                ..Self::new(status.code(), message_over(found, limit))
            };
        }
        let mut root: &(dyn std::error::Error + 'static) = &status;
        while let Some(next) = root.source() {
            root = next;
        }
        let cause = root.to_string();
        if std::ptr::addr_eq(root, &status) || status.message().contains(&cause) {
            Self::new(status.code(), status.message())
        } else {
            Self::new(status.code(), format!("{}: {cause}", status.message()))
        }
    }
}

/// The sizes in tonic's refusal of a message over the decoding limit
/// ("decoded message length too large: found N bytes, the limit is: L
/// bytes"), if `status` is one. Only that refusal is OUT_OF_RANGE with both
/// numbers in this order.
fn over_decoding_limit(status: &tonic::Status) -> Option<(usize, usize)> {
    if status.code() != tonic::Code::OutOfRange {
        return None;
    }
    let message = status.message();
    let number_after = |marker: &str| -> Option<usize> {
        let rest = &message[message.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Some((number_after("found ")?, number_after("limit is: ")?))
}

/// Subscribe's codec: requests encoded by prost, responses left as their
/// bytes for the engine to read.
#[derive(Debug, Clone, Copy, Default)]
struct SubscribeCodec;

impl tonic::codec::Codec for SubscribeCodec {
    type Encode = gnmi::SubscribeRequest;
    type Decode = bytes::Bytes;
    type Encoder = RequestEncoder;
    type Decoder = ResponseBytes;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseBytes
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RequestEncoder;

impl tonic::codec::Encoder for RequestEncoder {
    type Item = gnmi::SubscribeRequest;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        prost::Message::encode(&item, dst)
            .map_err(|e| tonic::Status::internal(format!("encoding a SubscribeRequest: {e}")))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ResponseBytes;

impl tonic::codec::Decoder for ResponseBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf as _;
        // Splits the receive buffer: no copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// How long connecting to a device may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A real device over gNMI: one lazily connected HTTP/2 channel, credentials
/// sent as `username`/`password` metadata on every call, and nowhere else.
#[derive(Clone)]
pub struct GnmiTarget {
    client: GNmiClient<Channel>,
    /// The same channel, for Subscribe with [`SubscribeCodec`].
    raw: tonic::client::Grpc<Channel>,
    credentials: Option<(
        MetadataValue<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
}

impl std::fmt::Debug for GnmiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GnmiTarget").finish_non_exhaustive()
    }
}

impl GnmiTarget {
    /// A target for `spec`, accepting messages from the device up to
    /// `max_message_bytes` (Subscribe responses and Get answers; a larger
    /// one fails the call with [`TargetError::over_cap`]). Connects on first
    /// use; never fails for an unreachable device (the calls do).
    pub fn new(spec: &TargetSpec, max_message_bytes: usize) -> Result<Self, TargetError> {
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", spec.address))
            .map_err(|e| {
                TargetError::new(
                    tonic::Code::InvalidArgument,
                    format!("address {}: {e}", spec.address),
                )
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        if let Some(tls) = &spec.tls {
            endpoint = tls::configure(endpoint, tls, &spec.address)?;
        }
        let channel = endpoint.connect_lazy();
        let raw = tonic::client::Grpc::new(channel.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(usize::MAX);
        let client = GNmiClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(usize::MAX);
        let credentials = match &spec.credentials {
            Some(c) if !c.username.is_empty() => {
                let bad = |what: &str| {
                    TargetError::new(
                        tonic::Code::InvalidArgument,
                        format!("{what} holds characters that cannot travel as gRPC metadata"),
                    )
                };
                let mut password: MetadataValue<tonic::metadata::Ascii> =
                    c.password.expose().parse().map_err(|_| bad("password"))?;
                // Never indexed by HPACK (no compression side channel, no
                // proxy table keeps it), and `Debug` prints "Sensitive".
                password.set_sensitive(true);
                Some((c.username.parse().map_err(|_| bad("username"))?, password))
            }
            _ => None,
        };
        Ok(Self {
            client,
            raw,
            credentials,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some((user, password)) = &self.credentials {
            request.metadata_mut().insert("username", user.clone());
            request.metadata_mut().insert("password", password.clone());
        }
        request
    }
}

impl Target for GnmiTarget {
    fn subscribe(
        &self,
        requests: RequestStream,
    ) -> BoxFuture<'_, Result<ResponseStream, TargetError>> {
        let mut request = self.request(tokio_stream::wrappers::ReceiverStream::new(requests));
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new("gnmi.gNMI", "Subscribe"));
        let mut raw = self.raw.clone();
        Box::pin(async move {
            raw.ready().await.map_err(|e| {
                TargetError::from(tonic::Status::unknown(format!(
                    "Service was not ready: {e}"
                )))
            })?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static("/gnmi.gNMI/Subscribe");
            let responses = raw
                .streaming(request, path, SubscribeCodec)
                .await?
                .into_inner();
            let stream: ResponseStream =
                Box::pin(responses.map(|r| r.map(Received::Encoded).map_err(TargetError::from)));
            Ok(stream)
        })
    }

    fn get(
        &self,
        request: gnmi::GetRequest,
    ) -> BoxFuture<'_, Result<gnmi::GetResponse, TargetError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            Ok(client.get(self.request(request)).await?.into_inner())
        })
    }

    fn set(
        &self,
        request: gnmi::SetRequest,
    ) -> BoxFuture<'_, Result<gnmi::SetResponse, TargetError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            Ok(client.set(self.request(request)).await?.into_inner())
        })
    }

    fn capabilities(&self) -> BoxFuture<'_, Result<gnmi::CapabilityResponse, TargetError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            Ok(client
                .capabilities(self.request(gnmi::CapabilityRequest::default()))
                .await?
                .into_inner())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{Credentials, Encoding, Secret};

    #[tokio::test]
    async fn credentials_travel_as_metadata_and_print_nowhere() {
        let target = GnmiTarget::new(
            &TargetSpec {
                address: "127.0.0.1:57400".into(),
                tls: None,
                credentials: Some(Credentials {
                    username: "admin".into(),
                    password: Secret::new("hunter2"),
                }),
                encoding: Encoding::Proto,
                target_name: String::new(),
                allow_insecure_credentials: true,
            },
            1 << 20,
        )
        .unwrap();
        let request = target.request(());
        let metadata = request.metadata();
        assert_eq!(metadata.get("username").unwrap(), "admin");
        let password = metadata.get("password").unwrap();
        assert_eq!(password, "hunter2");
        assert!(password.is_sensitive());
        assert!(!format!("{request:?}").contains("hunter2"));
        assert!(!format!("{target:?}").contains("hunter2"));
    }

    #[test]
    fn a_message_over_the_decoding_limit_is_told_as_a_cap() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 73400320 bytes, the limit is: 67108864 bytes",
        );
        let error = TargetError::from(status);
        assert!(error.over_cap);
        assert_eq!(
            error.message,
            "device sent a 70 MiB message; max_message_bytes is 64 MiB"
        );
        let other = TargetError::from(tonic::Status::out_of_range("found 3 bytes"));
        assert!(!other.over_cap);
    }
}
