//! gNMI for tests: paths and values from text, subscription requests, a
//! Subscribe call wrapper that waits on each message with the deadline, and
//! leaves read back as canonical path -> value.

use std::collections::BTreeMap;

use netsync_core::Path;
use netsync_proto::gnmi;
use netsync_proto::gnmi::g_nmi_client::GNmiClient;
use netsync_proto::gnmi::subscribe_response::Response as Resp;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::deadline::within;

/// A gNMI path message from a string path.
pub fn path(text: &str) -> gnmi::Path {
    Path::parse(text).unwrap().to_gnmi()
}

/// A canonical string path from a message.
pub fn text(path: &gnmi::Path) -> String {
    Path::try_from(path).unwrap().to_string()
}

pub use netsync_sim::generate::{string, uint};

/// The text of a `string_val`; panics on any other kind of value.
pub fn string_of(value: &gnmi::TypedValue) -> &str {
    match &value.value {
        Some(gnmi::typed_value::Value::StringVal(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

/// An Update of `path` to `val`.
pub fn update(path_text: &str, val: gnmi::TypedValue) -> gnmi::Update {
    gnmi::Update {
        path: Some(path(path_text)),
        val: Some(val),
        ..Default::default()
    }
}

/// A subscription of `path` in `mode`.
pub fn subscription(path_text: &str, mode: gnmi::SubscriptionMode) -> gnmi::Subscription {
    gnmi::Subscription {
        path: Some(path(path_text)),
        mode: mode as i32,
        ..Default::default()
    }
}

/// A SubscriptionList in `mode` with PROTO encoding.
pub fn list(
    mode: gnmi::subscription_list::Mode,
    subs: Vec<gnmi::Subscription>,
) -> gnmi::SubscriptionList {
    gnmi::SubscriptionList {
        subscription: subs,
        mode: mode as i32,
        encoding: gnmi::Encoding::Proto as i32,
        ..Default::default()
    }
}

/// One message of a stream, as tests look at it.
#[derive(Debug)]
pub enum Msg {
    /// A notification.
    Notification(gnmi::Notification),
    /// sync_response.
    Sync,
    /// The stream ended with OK.
    End,
    /// The stream ended with this error.
    Error(Status),
}

/// An open Subscribe call.
pub struct Sub {
    requests: Option<mpsc::Sender<gnmi::SubscribeRequest>>,
    stream: Streaming<gnmi::SubscribeResponse>,
}

impl Sub {
    /// Opens a Subscribe call with `list`; fails with the call's status.
    pub async fn try_open(
        client: &mut GNmiClient<Channel>,
        list: gnmi::SubscriptionList,
    ) -> Result<Self, Status> {
        Self::try_open_with(client, list, &[]).await
    }

    /// Like [`Sub::try_open`], with metadata.
    pub async fn try_open_with(
        client: &mut GNmiClient<Channel>,
        list: gnmi::SubscriptionList,
        metadata: &[(&'static str, &'static str)],
    ) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(gnmi::SubscribeRequest {
            request: Some(gnmi::subscribe_request::Request::Subscribe(list)),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        for (k, v) in metadata {
            request.metadata_mut().insert(*k, v.parse().unwrap());
        }
        let stream = within(client.subscribe(request)).await?.into_inner();
        Ok(Self {
            requests: Some(tx),
            stream,
        })
    }

    /// Opens a Subscribe call with `list`.
    pub async fn open(client: &mut GNmiClient<Channel>, list: gnmi::SubscriptionList) -> Self {
        Self::try_open(client, list).await.unwrap()
    }

    /// The next message.
    pub async fn next(&mut self) -> Msg {
        match within(self.stream.next()).await {
            None => Msg::End,
            Some(Err(status)) => Msg::Error(status),
            Some(Ok(response)) => match response.response {
                Some(Resp::Update(n)) => Msg::Notification(n),
                Some(Resp::SyncResponse(true)) => Msg::Sync,
                other => panic!("unexpected response {other:?}"),
            },
        }
    }

    /// The next notification; fails on anything else.
    pub async fn notification(&mut self) -> gnmi::Notification {
        match self.next().await {
            Msg::Notification(n) => n,
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    /// Notifications up to and including sync_response.
    pub async fn until_sync(&mut self) -> Vec<gnmi::Notification> {
        let mut out = Vec::new();
        loop {
            match self.next().await {
                Msg::Notification(n) => out.push(n),
                Msg::Sync => return out,
                other => panic!("expected a notification or sync, got {other:?}"),
            }
        }
    }

    /// The status the stream ends with, skipping notifications.
    pub async fn error(&mut self) -> Status {
        loop {
            match self.next().await {
                Msg::Error(status) => return status,
                Msg::End => panic!("stream ended with OK"),
                _ => {}
            }
        }
    }

    /// Sends a Poll.
    pub async fn poll(&mut self) {
        let poll = gnmi::SubscribeRequest {
            request: Some(gnmi::subscribe_request::Request::Poll(gnmi::Poll {})),
            ..Default::default()
        };
        self.requests
            .as_ref()
            .expect("not half-closed")
            .send(poll)
            .await
            .unwrap();
    }

    /// Half-closes the request stream.
    pub fn half_close(&mut self) {
        self.requests = None;
    }
}

/// Applies notifications to `state` (canonical path -> value): updates set
/// (later wins), deletes remove.
pub fn apply(state: &mut BTreeMap<String, gnmi::TypedValue>, notifications: &[gnmi::Notification]) {
    for n in notifications {
        for d in &n.delete {
            let path = Path::from_gnmi(n.prefix.as_ref(), d).unwrap();
            state.remove(&path.to_string());
        }
        for u in &n.update {
            let path = Path::from_gnmi(n.prefix.as_ref(), u.path.as_ref().unwrap()).unwrap();
            state.insert(path.to_string(), u.val.clone().unwrap());
        }
    }
}

/// Number of updates in notifications.
pub fn count_updates(notifications: &[gnmi::Notification]) -> usize {
    notifications.iter().map(|n| n.update.len()).sum()
}

/// Every leaf of the device as canonical path -> value, read with a PROTO
/// Get of `/`.
pub async fn get_all(client: &mut GNmiClient<Channel>) -> BTreeMap<String, gnmi::TypedValue> {
    let response = client
        .get(gnmi::GetRequest {
            path: vec![gnmi::Path::default()],
            encoding: gnmi::Encoding::Proto as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut state = BTreeMap::new();
    apply(&mut state, &response.notification);
    state
}
