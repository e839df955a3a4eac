//! The read-ahead task: reads the device's Subscribe responses on a task of
//! its own, in place on the fast path or else decoded, and turns each into a
//! `Step` for the ingest. Owns the bound between the two (`READ_AHEAD`) and
//! the forms a notification to apply takes (`Note`, `Owned`).
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

use crate::device::Received;
use crate::notification::{self, Prepared, PreparedNotification};

/// Messages decoded ahead of the ingest, at most.
const READ_AHEAD: usize = 16;

/// Responses after [`read_ahead`], each as what it asks of the ingest.
pub(super) type Incomings =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Step, crate::device::TargetError>> + Send>>;

/// Reads a response on the fast path, or decodes it.
fn incoming(received: Received) -> Result<Step, crate::device::TargetError> {
    match received {
        Received::Encoded(bytes) => match notification::prepare(&bytes) {
            Some(Prepared::Notification(n)) => Ok(Step::Apply(Owned::Fast(n))),
            Some(Prepared::SyncResponse) => Ok(Step::Sync),
            None => gnmi::SubscribeResponse::decode(bytes)
                .map(Step::of)
                .map_err(|e| {
                    crate::device::TargetError::new(
                        tonic::Code::Internal,
                        format!("undecodable SubscribeResponse: {e}"),
                    )
                }),
        },
        Received::Decoded(response) => Ok(Step::of(response)),
    }
}

/// Reads `responses` on a task of its own, so that reading the device's
/// messages (the largest single cost of a sync) runs on one core while the
/// ingest applies earlier ones on another. At most [`READ_AHEAD`] messages
/// wait in between, so flow control still pushes back on the device when the
/// ingest stops reading. The task ends with the returned stream, or at the
/// end of the device's stream.
pub(super) fn read_ahead(mut responses: crate::device::ResponseStream) -> Incomings {
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(
        async move {
            while let Some(item) = responses.next().await {
                let item = item.and_then(incoming);
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
        .in_current_span(),
    );
    let reader = AbortOnDrop(reader);
    Box::pin(futures::stream::poll_fn(move |cx| {
        // Owning the reader here ties its life to the stream's.
        let _owned = &reader;
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

/// A notification to apply, borrowed.
#[derive(Clone, Copy)]
pub(super) enum Note<'a> {
    Fast(&'a PreparedNotification),
    Decoded(&'a gnmi::Notification),
}

/// A notification to apply, owned.
pub(super) enum Owned {
    Fast(PreparedNotification),
    Decoded(gnmi::Notification),
}

impl Note<'_> {
    pub(super) fn has_deletes(self) -> bool {
        match self {
            Note::Fast(n) => n.has_deletes(),
            Note::Decoded(n) => !n.delete.is_empty(),
        }
    }
}

impl Owned {
    pub(super) fn as_note(&self) -> Note<'_> {
        match self {
            Owned::Fast(n) => Note::Fast(n),
            Owned::Decoded(n) => Note::Decoded(n),
        }
    }
}

/// What a response asks of the ingest.
pub(super) enum Step {
    Apply(Owned),
    Sync,
    /// Nothing (an empty response, or one holding only extensions).
    Skip,
    /// The device reported an error in the stream.
    Fail(String),
}

impl Step {
    /// What a decoded response asks.
    fn of(response: gnmi::SubscribeResponse) -> Self {
        match response.response {
            Some(gnmi::subscribe_response::Response::Update(n)) => Step::Apply(Owned::Decoded(n)),
            Some(gnmi::subscribe_response::Response::SyncResponse(_)) => Step::Sync,
            other => device_error(other).map_or(Step::Skip, Step::Fail),
        }
    }
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
