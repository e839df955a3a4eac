//! The read-ahead task: reads the device's Subscribe responses on a task of
//! its own, in place on the fast path or else decoded and flattened, checks
//! them against the datastore's message and leaf caps, and turns each into a
//! `Step` for the ingest. Owns the bound between the two (`READ_AHEAD`).
//!
//! Everything a notification costs but the copy into a delta happens here
//! (canonical paths, JSON parsing and flattening, value encoding), so the
//! ingest holds the `Pending` lock only for that copy.
//!
//! It waits only on the device's stream and on room in its bounded channel to
//! the ingest (that is how flow control reaches the device). It never touches
//! `Pending`, and never waits on the committer, the store or watchers.

use futures::StreamExt;
use netsync_proto::gnmi;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::caps::{self, Caps};
use crate::device::{Received, TargetError};
use crate::notification::{self, Decoder, Prepared, PreparedNotification};

/// Messages decoded ahead of the ingest, at most.
const READ_AHEAD: usize = 16;

/// Responses after [`read_ahead`], each as what it asks of the ingest.
pub(super) type Incomings =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Step, TargetError>> + Send>>;

/// How one datastore's responses are read: its list keys and caps.
#[derive(Clone)]
pub(super) struct Reader {
    pub(super) decoder: Decoder,
    pub(super) caps: Caps,
}

impl Reader {
    /// Reads a response on the fast path, or decodes it.
    fn incoming(&self, received: Received) -> Result<Step, TargetError> {
        let max = self.caps.max_message_bytes;
        let response = match received {
            Received::Encoded(bytes) => {
                // A transport with a decoding limit refused this already;
                // this holds for any other target.
                if bytes.len() > max {
                    return Ok(Step::Fail(caps::message_over(bytes.len(), max)));
                }
                match notification::prepare(&bytes) {
                    Some(Prepared::Notification(n)) => return Ok(self.checked(n)),
                    Some(Prepared::SyncResponse) => return Ok(Step::Sync),
                    None => gnmi::SubscribeResponse::decode(bytes).map_err(|e| {
                        TargetError::new(
                            tonic::Code::Internal,
                            format!("undecodable SubscribeResponse: {e}"),
                        )
                    })?,
                }
            }
            Received::Decoded(response) => {
                let len = response.encoded_len();
                if len > max {
                    return Ok(Step::Fail(caps::message_over(len, max)));
                }
                response
            }
        };
        Ok(match response.response {
            Some(gnmi::subscribe_response::Response::Update(n)) => self.prepare(&n),
            Some(gnmi::subscribe_response::Response::SyncResponse(_)) => Step::Sync,
            other => device_error(other).map_or(Step::Skip, Step::Fail),
        })
    }

    /// Prepares a decoded notification (flattening its JSON) and checks it.
    pub(super) fn prepare(&self, n: &gnmi::Notification) -> Step {
        match self.decoder.prepare(n) {
            Ok(prepared) => self.checked(prepared),
            Err(e) => Step::Unusable(e.to_string()),
        }
    }

    /// `n`, unless a value in it is over `max_leaf_bytes`.
    fn checked(&self, n: PreparedNotification) -> Step {
        let max = self.caps.max_leaf_bytes;
        match n.value_over(max) {
            Some((key, len)) => Step::Fail(caps::leaf_over(key, len, max)),
            None => Step::Apply(n),
        }
    }
}

/// Reads `responses` on a task of its own, so that reading the device's
/// messages (the largest single cost of a sync) runs on one core while the
/// ingest applies earlier ones on another. At most [`READ_AHEAD`] messages
/// wait in between, so flow control still pushes back on the device when the
/// ingest stops reading. The task ends with the returned stream, or at the
/// end of the device's stream, or after a response that ends the connection.
pub(super) fn read_ahead(
    mut responses: crate::device::ResponseStream,
    reader: Reader,
) -> Incomings {
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let task = tokio::spawn(
        async move {
            while let Some(item) = responses.next().await {
                let item = item.and_then(|r| reader.incoming(r));
                let last = matches!(item, Err(_) | Ok(Step::Fail(_) | Step::Unusable(_)));
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        }
        .in_current_span(),
    );
    let task = AbortOnDrop(task);
    Box::pin(futures::stream::poll_fn(move |cx| {
        // Owning the reader here ties its life to the stream's.
        let _owned = &task;
        rx.poll_recv(cx)
    }))
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a response asks of the ingest.
pub(super) enum Step {
    /// Apply a notification (read and checked).
    Apply(PreparedNotification),
    Sync,
    /// Nothing (an empty response, or one holding only extensions).
    Skip,
    /// End the connection with this error: the device reported one in the
    /// stream, or went over a cap.
    Fail(String),
    /// A notification that cannot be applied (a bad path, bad JSON).
    Unusable(String),
}

/// The text of a (deprecated, but still sent by some devices) in-stream error.
#[allow(
    deprecated,
    reason = "devices may still send the deprecated error message"
)]
fn device_error(response: Option<gnmi::subscribe_response::Response>) -> Option<String> {
    match response {
        Some(gnmi::subscribe_response::Response::Error(e)) => {
            Some(format!("device error {}: {}", e.code, e.message))
        }
        _ => None,
    }
}
