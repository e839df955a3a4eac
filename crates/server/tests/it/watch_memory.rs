//! WatchSync memory bounded in bytes: a client that does not read is cut
//! once it owes more than `max_watcher_bytes` (an `ErrorInfo` saying why and
//! where to resume) and resumes without a gap;
//! watchers together stay within `max_watch_bytes_total`
//! (`netsync_watch_buffered_bytes_peak`, scraped); a replay goes at its
//! client's pace within the budget; events after a replay never go back in
//! revision; a client that stops answering HTTP/2 PINGs loses its connection
//! and its watcher slot.
//!
//! Each test runs netsyncd as a process (flags as an operator gives them,
//! metrics scraped) against the test kit's device, with commits of about
//! 256 KiB: 4 leaves of 64 KiB.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netsync_proto::netsync::v1 as pb;
use netsync_testkit::client::{converge, cut_from, status, watch, watch_many};
use netsync_testkit::datastore::{DatastoreBuilder, create};
use netsync_testkit::device::Device;
use netsync_testkit::{DEADLINE, LONG_DEADLINE};
use pb::net_sync_client::NetSyncClient;
use prost::Message as _;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::support::{Netsyncd, Options, assert_status, http_get, sample};

const MIB: usize = 1 << 20;

/// netsyncd with `flags`, serving metrics; its metrics address.
fn start(dir: &tempfile::TempDir, flags: &[&str]) -> (Netsyncd, SocketAddr) {
    let mut args = vec!["--metrics-listen".to_string(), "127.0.0.1:0".to_string()];
    args.extend(flags.iter().map(|f| f.to_string()));
    let daemon = Netsyncd::start_with(
        &dir.path().join("n.db"),
        Options {
            args,
            ..Default::default()
        },
    );
    let metrics = daemon.wait_for_log("the metrics address", |line| {
        line.get("metrics_listen")?.as_str()?.parse().ok()
    });
    (daemon, metrics)
}

/// A client on a connection of its own (its own HTTP/2 windows).
async fn client(daemon: &Netsyncd) -> NetSyncClient<Channel> {
    NetSyncClient::new(netsync_testkit::channel(daemon.addr).await)
}

/// Creates datastore `r1` of `device`, committing every 20 ms; its first
/// revision.
async fn create_r1(client: &mut NetSyncClient<Channel>, device: &Device) -> u64 {
    let datastore = DatastoreBuilder::new("r1", device.addr)
        .encoding(pb::Encoding::Proto)
        .commit_interval_ms(20)
        .build();
    client.create_datastore(create(datastore)).await.unwrap();
    converge(client, "r1", device).await
}

/// Rewrites the device's 4 large leaves (64 KiB each) for `round` and waits
/// for running to hold them: about 256 KiB of commits. The latest revision.
async fn big_change(client: &mut NetSyncClient<Channel>, device: &Device, round: usize) -> u64 {
    let filler = "x".repeat(64 << 10);
    for leaf in 0..4 {
        device.set(
            &format!("/big/leaf[i={leaf}]/v"),
            &format!("{round}:{filler}"),
        );
    }
    converge(client, "r1", device).await
}

/// `rounds` large changes; the latest revision.
async fn history(client: &mut NetSyncClient<Channel>, device: &Device, rounds: usize) -> u64 {
    let mut last = 0;
    for round in 0..rounds {
        last = big_change(client, device, round).await;
    }
    last
}

/// Reads `events` until the stream fails: what came before, and the status.
async fn until_error(
    events: &mut tonic::Streaming<pb::SyncEvent>,
) -> (Vec<pb::SyncEvent>, tonic::Status) {
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("the watch goes on or fails within the deadline")
        {
            Some(Ok(event)) => received.push(event),
            Some(Err(status)) => return (received, status),
            None => panic!("the stream ended without a status"),
        }
    }
}

/// The revisions of the commits received whole (their last part), in order.
fn whole_commits(events: &[pb::SyncEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match &event.event {
            Some(pb::sync_event::Event::Commit(commit)) if !commit.more => Some(event.revision),
            _ => None,
        })
        .collect()
}

/// N in a status's `from_revision=N`.
fn from_revision(status: &tonic::Status) -> u64 {
    status
        .message()
        .split("from_revision=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no from_revision=N in {status:?}"))
}

/// Reads `events` until revision `last` has come whole, asserting that the
/// commits are exactly `from..=last`, in order, each whole once.
async fn expect_revisions(events: &mut tonic::Streaming<pb::SyncEvent>, from: u64, last: u64) {
    let mut next = from;
    while next <= last {
        let event = netsync_testkit::client::next_event(events).await;
        if let Some(pb::sync_event::Event::Commit(commit)) = &event.event {
            assert_eq!(event.revision, next, "no gap, no duplicate");
            if !commit.more {
                next += 1;
            }
        }
    }
}

/// The value of `series` in a scrape of `metrics`.
async fn scrape(metrics: SocketAddr, series: &str) -> f64 {
    let (_, _, body) = http_get(metrics, "/metrics").await;
    sample(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

/// Scrapes until `ready` holds for the value of `series`.
async fn scrape_until(metrics: SocketAddr, series: &str, ready: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = scrape(metrics, series).await;
        if ready(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cut_by_bytes_and_resumes_without_gap() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    // The ring keeps its default 4,096 events: only bytes can cut here.
    let (daemon, _) = start(&dir, &["--max-watcher-bytes", "1048576"]);
    let mut writer = client(&daemon).await;
    let first = create_r1(&mut writer, &device).await;

    // Reads nothing while about 10 MiB of commits go by: the HTTP/2 windows
    // take about 2 MiB, its queue half its budget, and then it owes more.
    let mut slow_client = client(&daemon).await;
    let mut slow = watch(&mut slow_client, "r1", 0).await;
    let last = history(&mut writer, &device, 40).await;

    let (received, status) = until_error(&mut slow).await;
    assert_status(
        &status,
        tonic::Code::ResourceExhausted,
        &["max_watcher_bytes", "\"r1\""],
    );
    let whole = whole_commits(&received);
    // A client resumes from the details, not the text.
    let resume = cut_from(&status, "r1", "WATCHER_OVER_BUDGET");
    assert_eq!(
        resume,
        whole.last().map_or(first + 1, |r| r + 1),
        "N is the first revision not received whole"
    );
    assert!(resume <= last, "cut before the end: {resume} of {last}");
    let expected: Vec<u64> = (first + 1..resume).collect();
    assert_eq!(whole, expected, "what came before the cut has no gap");

    let mut resumed = watch(&mut writer, "r1", resume).await;
    expect_revisions(&mut resumed, resume, last).await;
    drop((slow, resumed));
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watch_of_many_datastores_is_not_cut_and_catches_up_from_the_log() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _) = start(&dir, &["--max-watcher-bytes", "1048576"]);
    let mut writer = client(&daemon).await;
    create_r1(&mut writer, &device).await;

    // Neither reads while about 10 MiB of commits go by: the single watch
    // is cut (the witness that the budget was passed), the watch of many
    // is not: the watch of r1 inside it starts again from the log where
    // its client is.
    let mut witness_client = client(&daemon).await;
    let mut witness = watch(&mut witness_client, "r1", 0).await;
    let mut slow_client = client(&daemon).await;
    let mut slow = watch_many(&mut slow_client, "", "").await.unwrap();
    let baseline = loop {
        let event = netsync_testkit::client::next_event(&mut slow).await;
        if let Some(pb::sync_event::Event::Baseline(_)) = event.event {
            break event.revision;
        }
    };
    let last = history(&mut writer, &device, 40).await;
    let (_, status) = until_error(&mut witness).await;
    assert_status(
        &status,
        tonic::Code::ResourceExhausted,
        &["max_watcher_bytes"],
    );

    expect_revisions(&mut slow, baseline + 1, last).await;
    drop((witness, slow));
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_watchers_stay_within_the_total_budget() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    // Each watcher may queue 1 MiB (half its budget); five would queue 5 MiB.
    let (daemon, metrics) = start(
        &dir,
        &[
            "--max-watcher-bytes",
            "2097152",
            "--max-watch-bytes-total",
            "2097152",
        ],
    );
    let mut writer = client(&daemon).await;
    let first = create_r1(&mut writer, &device).await;
    let mut watchers = Vec::new();
    for open in 1..=5 {
        let mut own = client(&daemon).await;
        watchers.push(watch(&mut own, "r1", 0).await);
        scrape_until(metrics, "netsync_watchers", |n| n == f64::from(open)).await;
    }
    history(&mut writer, &device, 40).await;

    let mut by_total = 0;
    for events in &mut watchers {
        let (received, status) = until_error(events).await;
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        if status.message().contains("max_watch_bytes_total") {
            cut_from(&status, "r1", "WATCH_MEMORY_FULL");
            by_total += 1;
        } else {
            cut_from(&status, "r1", "WATCHER_OVER_BUDGET");
        }
        let whole = whole_commits(&received);
        assert_eq!(
            from_revision(&status),
            whole.last().map_or(first + 1, |r| r + 1),
            "{status:?}"
        );
    }
    assert!(by_total > 0, "no watcher was ended for the total");
    let peak = scrape(metrics, "netsync_watch_buffered_bytes_peak").await;
    assert!(
        peak >= MIB as f64 && peak <= (2 * MIB) as f64,
        "peak of {peak} bytes queued, the total is 2 MiB"
    );
    drop(watchers);
    scrape_until(metrics, "netsync_watchers", |n| n == 0.0).await;
    assert_eq!(scrape(metrics, "netsync_watch_buffered_bytes").await, 0.0);
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_large_history_goes_at_its_readers_pace_within_the_budget() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, metrics) = start(&dir, &["--max-watcher-bytes", "1048576"]);
    let mut writer = client(&daemon).await;
    let first = create_r1(&mut writer, &device).await;
    let last = history(&mut writer, &device, 40).await;

    // About 10 MiB to replay to a client that reads nothing for now: the
    // replay fills the windows and its queue, and waits.
    let mut reader_client = client(&daemon).await;
    let mut replay = watch(&mut reader_client, "r1", first).await;
    scrape_until(metrics, "netsync_watch_buffered_bytes", |b| {
        b >= (256 << 10) as f64
    })
    .await;

    // Never cut for being slow: the log keeps what it has not read.
    expect_revisions(&mut replay, first, last).await;
    let peak = scrape(metrics, "netsync_watch_buffered_bytes_peak").await;
    assert!(
        peak <= MIB as f64,
        "the replay queued {peak} bytes, over its 1 MiB budget"
    );
    drop(replay);
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_after_a_replay_never_go_back_in_revision() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, metrics) = start(&dir, &["--max-watcher-bytes", "1048576"]);
    let mut writer = client(&daemon).await;
    let first = create_r1(&mut writer, &device).await;
    let last = history(&mut writer, &device, 40).await;

    // A replay held back by its client, while a resync sends state events
    // at revision `last` and commits `last + 1`: the replay reads that commit
    // from the log before the state events come from the ring.
    let mut reader_client = client(&daemon).await;
    let mut events = watch(&mut reader_client, "r1", first).await;
    scrape_until(metrics, "netsync_watch_buffered_bytes", |b| b > 0.0).await;
    writer
        .resync(pb::ResyncRequest { name: "r1".into() })
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let resynced = loop {
        let now = status(&mut writer, "r1").await;
        if now.state == pb::SyncState::InSync as i32 && now.revision > last {
            break now.revision;
        }
        assert!(Instant::now() < deadline, "the resync never ended: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Everything up to the resync's IN_SYNC event.
    let mut sent = 0;
    let mut live_states = Vec::new();
    loop {
        let event = netsync_testkit::client::next_event(&mut events).await;
        assert!(
            event.revision >= sent,
            "revision {} after {sent}: {event:?}",
            event.revision
        );
        sent = event.revision;
        if let Some(pb::sync_event::Event::StateChanged(state)) = &event.event
            && state.reason != "current state"
        {
            live_states.push(state.state);
            if state.state == pb::SyncState::InSync as i32 {
                break;
            }
        }
    }
    assert!(
        live_states.contains(&(pb::SyncState::Connecting as i32)),
        "the resync's states: {live_states:?}"
    );
    assert_eq!(sent, resynced);
    drop(events);
    daemon.terminate();
}

/// A WatchSync call over a bare HTTP/2 connection whose driver is polled
/// only until the response starts: after that nothing reads the socket or
/// answers PINGs, as with a client frozen or cut off without a FIN. Returns
/// what keeps the connection open.
async fn frozen_watch(addr: SocketAddr, datastore: &str) -> Frozen {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut connection = Box::pin(connection);
    let request = http::Request::post(format!("http://{addr}/netsync.v1.NetSync/WatchSync"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let message = pb::WatchSyncRequest {
        datastore: datastore.into(),
        from_revision: 0,
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let started = async {
        let mut send = send.ready().await.unwrap();
        let (response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(frame.into(), true).unwrap();
        let response = response.await.unwrap();
        (send, response)
    };
    let (send, response) = tokio::select! {
        started = started => started,
        ended = &mut connection => panic!("the connection ended: {ended:?}"),
    };
    assert_eq!(response.status(), http::StatusCode::OK);
    assert!(
        response.headers().get("grpc-status").is_none(),
        "refused: {:?}",
        response.headers()
    );
    // Held, never polled again.
    (connection, send, response)
}

/// A frozen client's connection, request handle and response.
type Frozen = (
    std::pin::Pin<Box<h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>>>,
    h2::client::SendRequest<bytes::Bytes>,
    http::Response<h2::RecvStream>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_frees_its_watcher_slot() {
    let device = Device::start(&[("/a", "0")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _) = start(
        &dir,
        &[
            "--max-watchers-per-datastore",
            "1",
            "--keepalive-interval-seconds",
            "1",
            "--keepalive-timeout-seconds",
            "1",
        ],
    );
    let mut client = client(&daemon).await;
    create_r1(&mut client, &device).await;

    let frozen = frozen_watch(daemon.addr, "r1").await;
    let refused = client
        .watch_sync(pb::WatchSyncRequest {
            datastore: "r1".into(),
            from_revision: 0,
            ..Default::default()
        })
        .await
        .expect_err("the one watcher slot is taken");
    assert_status(
        &refused,
        tonic::Code::ResourceExhausted,
        &["max_watchers_per_datastore"],
    );

    // Within the keepalive interval and timeout (2 s here) the frozen
    // connection is closed and its slot is free again.
    let deadline = Instant::now() + LONG_DEADLINE;
    let mut admitted = loop {
        match client
            .watch_sync(pb::WatchSyncRequest {
                datastore: "r1".into(),
                from_revision: 0,
                ..Default::default()
            })
            .await
        {
            Ok(events) => break events.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "the frozen client's slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let first = netsync_testkit::client::next_event(&mut admitted).await;
    assert!(
        matches!(first.event, Some(pb::sync_event::Event::StateChanged(_))),
        "{first:?}"
    );
    drop((frozen, admitted));
    daemon.terminate();
}
