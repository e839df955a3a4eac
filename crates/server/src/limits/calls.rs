//! Limits on every call, applied in front of all services (netsync, health,
//! reflection) as a tower layer:
//!
//! - calls open at once on one connection: one more is answered
//!   RESOURCE_EXHAUSTED at once. A call stays open until its response ends, so
//!   a WatchSync counts for as long as it streams. HTTP/2's own stream limit
//!   is set higher (see [`http2_stream_limit`]): a well-behaved client that
//!   honoured it would queue calls silently instead of being told.
//! - request message size: a message whose gRPC frame header announces more
//!   than the limit is refused with RESOURCE_EXHAUSTED (as gRPC specifies for
//!   oversized messages; tonic's own check says OUT_OF_RANGE) before its bytes
//!   are buffered.
//! - deadline: a call that sets no deadline gets `request_timeout`, a longer
//!   one is cut to it, and handlers see the result in `grpc-timeout`. Running
//!   out of time is DEADLINE_EXCEEDED, not RESOURCE_EXHAUSTED: that is the code
//!   gRPC defines for it, and the one clients retry and report as a timeout.
//!   tonic's `Server::timeout` would answer CANCELLED. Streams are bound only
//!   until their first response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

use crate::tls_serve::PeerInfo;
use tower_layer::Layer;
use tower_service::Service;

use super::ApiLimits;

/// The gRPC deadline header.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS to announce with `limits`:
/// twice ours, so a call over our limit reaches us and is told why, while
/// HTTP/2 still bounds what a client that ignores our answers can open.
pub fn http2_stream_limit(limits: &ApiLimits) -> u32 {
    u32::try_from(limits.max_concurrent_streams.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// Applies the call limits of an [`ApiLimits`] to a service.
#[derive(Debug, Clone)]
pub struct CallLimitsLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max_open: usize,
    timeout: Duration,
    max_message_bytes: usize,
    /// Open calls per connection (by peer address); an entry leaves at zero.
    open: Mutex<HashMap<SocketAddr, usize>>,
}

impl CallLimitsLayer {
    /// The call limits of `limits`.
    pub fn new(limits: &ApiLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                max_open: limits.max_concurrent_streams,
                timeout: limits.request_timeout,
                max_message_bytes: limits.max_message_bytes,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> CallLimits<S> {
        CallLimits {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service under the call limits.
#[derive(Debug, Clone)]
pub struct CallLimits<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<http::Request<Body>> for CallLimits<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone may not be ready; the one polled ready serves this call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);

        let open_call = match peer(&request) {
            Some(peer) => match OpenCall::open(&self.shared, peer) {
                Ok(open_call) => Some(open_call),
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            },
            // Not from a TCP listener (none in netsyncd): nothing to count by.
            None => None,
        };

        let asked = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = asked.map_or(self.shared.timeout, |t| t.min(self.shared.timeout));
        if let Ok(value) = http::HeaderValue::from_str(&encode_grpc_timeout(timeout)) {
            request.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        let limit = self.shared.max_message_bytes;
        let request = request.map(|body| Body::new(MessageSizeLimit::new(body, limit)));
        let server_limit = self.shared.timeout;

        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(Ok(response)) => Ok(match open_call {
                    Some(open_call) => response.map(|body| {
                        Body::new(HoldsOpenCall {
                            body,
                            _open_call: open_call,
                        })
                    }),
                    None => response,
                }),
                Ok(Err(e)) => Err(e),
                Err(_) if asked.is_some_and(|a| a <= server_limit) => {
                    Ok(Status::deadline_exceeded(format!(
                        "the call did not finish within its deadline of {timeout:?}"
                    ))
                    .into_http())
                }
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within the server's limit of {timeout:?} \
                     (request_timeout_seconds)"
                ))
                .into_http()),
            }
        })
    }
}

/// The client end of the connection a request came on.
fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| extensions.get::<PeerInfo>()?.remote_addr)
}

/// One open call on a connection; closed on drop.
#[derive(Debug)]
struct OpenCall {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl OpenCall {
    fn open(shared: &Arc<Shared>, peer: SocketAddr) -> Result<Self, Status> {
        let mut open = shared.open.lock().expect("lock");
        let count = open.entry(peer).or_default();
        if *count >= shared.max_open {
            return Err(Status::resource_exhausted(format!(
                "this connection already has {} calls open, the limit \
                 (max_concurrent_streams); end one before starting another",
                shared.max_open
            )));
        }
        *count += 1;
        Ok(Self {
            shared: shared.clone(),
            peer,
        })
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        let mut open = self.shared.open.lock().expect("lock");
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// A response body that keeps its call counted as open until it ends.
struct HoldsOpenCall {
    body: Body,
    _open_call: OpenCall,
}

impl http_body::Body for HoldsOpenCall {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED when a gRPC message in
/// it is announced larger than the limit. Reads the 5-byte header of each
/// length-prefixed message (flag, then the length in big-endian) as the bytes
/// pass, keeping nothing else.
struct MessageSizeLimit {
    body: Body,
    limit: usize,
    /// Header bytes of the next message seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Payload bytes of the current message still to pass.
    payload_left: usize,
    failed: bool,
}

impl MessageSizeLimit {
    fn new(body: Body, limit: usize) -> Self {
        Self {
            body,
            limit,
            header: [0; 5],
            header_len: 0,
            payload_left: 0,
            failed: false,
        }
    }

    /// Follows the message framing through `data`.
    fn check(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while data.has_remaining() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(data.len());
                self.payload_left -= skip;
                data.advance(skip);
                continue;
            }
            let take = (self.header.len() - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data.advance(take);
            if self.header_len == self.header.len() {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "request message of {len} bytes is larger than the limit of {} bytes \
                         (max_message_bytes)",
                        self.limit
                    )));
                }
                self.payload_left = len;
            }
        }
        Ok(())
    }
}

impl http_body::Body for MessageSizeLimit {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = self.check(data)
        {
            self.failed = true;
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A `grpc-timeout` value (gRPC over HTTP/2: up to 8 digits and a unit).
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value, rounded down to what 8 digits hold.
fn encode_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let millis = timeout.as_millis();
    if millis <= MAX {
        format!("{millis}m")
    } else if u128::from(timeout.as_secs()) <= MAX {
        format!("{}S", timeout.as_secs())
    } else {
        format!("{}H", (timeout.as_secs() / 3600).min(MAX as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7, len as usize));
        out
    }

    #[test]
    fn message_sizes_are_read_across_chunk_boundaries() {
        let mut data = framed(10);
        data.extend(framed(3));
        data.extend(framed(11));
        for chunk in 1..data.len() {
            let mut limit = MessageSizeLimit::new(Body::empty(), 10);
            let result = data
                .chunks(chunk)
                .map(|c| limit.check(c))
                .find(Result::is_err);
            let status = result
                .expect("the third message is over the limit")
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert!(status.message().contains("11 bytes"), "{status:?}");
        }
        let mut limit = MessageSizeLimit::new(Body::empty(), 11);
        assert!(limit.check(&data).is_ok());
    }

    /// A service that never answers, and tells which `grpc-timeout` it got.
    #[derive(Clone)]
    struct Silent(tokio::sync::mpsc::UnboundedSender<Option<String>>);

    impl Service<http::Request<Body>> for Silent {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let seen = request
                .headers()
                .get(GRPC_TIMEOUT)
                .map(|v| v.to_str().unwrap().to_string());
            self.0.send(seen).unwrap();
            Box::pin(std::future::pending())
        }
    }

    fn grpc_status(response: &http::Response<Body>) -> (tonic::Code, String) {
        let status = Status::from_header_map(response.headers()).expect("a gRPC status");
        (status.code(), status.message().to_string())
    }

    #[tokio::test]
    async fn calls_get_the_servers_deadline_or_a_shorter_one_of_their_own() {
        let limits = ApiLimits {
            request_timeout: Duration::from_millis(200),
            ..ApiLimits::default()
        };
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut service = CallLimitsLayer::new(&limits).layer(Silent(seen_tx));

        let response = service
            .call(http::Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(seen.recv().await.unwrap().as_deref(), Some("200m"));
        let (code, message) = grpc_status(&response);
        assert_eq!(code, tonic::Code::DeadlineExceeded);
        assert!(message.contains("request_timeout_seconds"), "{message}");

        let mut request = http::Request::new(Body::empty());
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT, http::HeaderValue::from_static("20m"));
        let response = service.call(request).await.unwrap();
        assert_eq!(seen.recv().await.unwrap().as_deref(), Some("20m"));
        let (code, message) = grpc_status(&response);
        assert_eq!(code, tonic::Code::DeadlineExceeded);
        assert!(message.contains("its deadline"), "{message}");

        // A longer deadline is cut to the server's.
        let mut request = http::Request::new(Body::empty());
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT, http::HeaderValue::from_static("1H"));
        let response = service.call(request).await.unwrap();
        assert_eq!(seen.recv().await.unwrap().as_deref(), Some("200m"));
        assert_eq!(grpc_status(&response).0, tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn open_calls_are_counted_per_connection() {
        let limits = ApiLimits {
            max_concurrent_streams: 1,
            request_timeout: Duration::from_secs(3600),
            ..ApiLimits::default()
        };
        let (seen_tx, _seen) = tokio::sync::mpsc::unbounded_channel();
        let mut service = CallLimitsLayer::new(&limits).layer(Silent(seen_tx));
        let from = |port: u16| {
            let mut request = http::Request::new(Body::empty());
            request.extensions_mut().insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            });
            request
        };
        // The first call of connection 1 stays open: it never answers.
        let open = service.call(from(1));
        let refused = service.call(from(1)).await.unwrap();
        let (code, message) = grpc_status(&refused);
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert!(message.contains("max_concurrent_streams"), "{message}");
        // Connection 2 has its own count.
        let other = service.call(from(2));
        drop((open, other));
        // Both calls ended with their futures: connection 1 has room again.
        let again = service.call(from(1));
        drop(again);
        assert!(service.shared.open.lock().unwrap().is_empty());
    }

    #[test]
    fn grpc_timeouts_round_trip() {
        for text in ["1m", "250m", "99999999m", "5S", "2H"] {
            let parsed = parse_grpc_timeout(text).unwrap();
            assert_eq!(
                parse_grpc_timeout(&encode_grpc_timeout(parsed)),
                Some(parsed)
            );
        }
        assert_eq!(parse_grpc_timeout("100000000m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(encode_grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
