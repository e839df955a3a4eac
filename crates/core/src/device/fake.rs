//! A scripted stand-in for a device, for engine tests: every Subscribe call
//! hands the test a [`Connection`] through which it sends exactly the responses
//! it wants, when it wants, and sees the requests the engine sent.

use futures::StreamExt;
use futures::future::BoxFuture;
use netsync_proto::gnmi;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{Received, RequestStream, ResponseStream, Target, TargetError};

/// One Subscribe call as the device sees it.
#[derive(Debug)]
pub struct Connection {
    /// Requests the engine sent (the subscription first, then Polls).
    pub requests: mpsc::UnboundedReceiver<gnmi::SubscribeRequest>,
    /// Send responses (or an error, which ends the stream) to the engine;
    /// dropping it ends the stream cleanly.
    pub responses: mpsc::UnboundedSender<Result<gnmi::SubscribeResponse, TargetError>>,
}

/// The device side of a [`FakeTarget`].
#[derive(Debug)]
pub struct FakeDevice {
    connections: mpsc::UnboundedReceiver<Connection>,
}

impl FakeDevice {
    /// Waits for the engine's next Subscribe call.
    pub async fn accept(&mut self) -> Connection {
        self.connections.recv().await.expect("the target is alive")
    }
}

/// A [`Target`] whose Subscribe calls are answered by a test through [`FakeDevice`].
#[derive(Debug, Clone)]
pub struct FakeTarget {
    connections: mpsc::UnboundedSender<Connection>,
}

impl FakeTarget {
    /// A target and the device end that scripts it.
    pub fn new() -> (Self, FakeDevice) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { connections: tx }, FakeDevice { connections: rx })
    }
}

impl Target for FakeTarget {
    fn subscribe(
        &self,
        requests: RequestStream,
    ) -> BoxFuture<'_, Result<ResponseStream, TargetError>> {
        Box::pin(async move {
            let (req_tx, req_rx) = mpsc::unbounded_channel();
            let (resp_tx, resp_rx) = mpsc::unbounded_channel();
            // Forward the engine's requests until it drops the response stream.
            let engine_gone = resp_tx.clone();
            tokio::spawn(async move {
                let forward =
                    tokio_stream::wrappers::ReceiverStream::new(requests).for_each(move |r| {
                        let _ = req_tx.send(r);
                        async {}
                    });
                tokio::select! {
                    () = forward => {}
                    () = engine_gone.closed() => {}
                }
            });
            self.connections
                .send(Connection {
                    requests: req_rx,
                    responses: resp_tx,
                })
                .map_err(|_| TargetError::new(tonic::Code::Unavailable, "fake device gone"))?;
            // Sent as bytes, as a real device's arrive, so that the engine
            // reads them the way it reads a device's.
            let stream: ResponseStream = Box::pin(UnboundedReceiverStream::new(resp_rx).map(
                |r: Result<gnmi::SubscribeResponse, TargetError>| {
                    r.map(|m| Received::Encoded(prost::Message::encode_to_vec(&m).into()))
                },
            ));
            Ok(stream)
        })
    }

    fn get(
        &self,
        _request: gnmi::GetRequest,
    ) -> BoxFuture<'_, Result<gnmi::GetResponse, TargetError>> {
        Box::pin(async { Err(TargetError::new(tonic::Code::Unimplemented, "fake: no Get")) })
    }

    fn set(
        &self,
        _request: gnmi::SetRequest,
    ) -> BoxFuture<'_, Result<gnmi::SetResponse, TargetError>> {
        Box::pin(async { Err(TargetError::new(tonic::Code::Unimplemented, "fake: no Set")) })
    }

    fn capabilities(&self) -> BoxFuture<'_, Result<gnmi::CapabilityResponse, TargetError>> {
        Box::pin(async { Ok(gnmi::CapabilityResponse::default()) })
    }
}
