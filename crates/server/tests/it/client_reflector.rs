//! The client library's reflector (netsync-client) against netsyncd and a
//! churning simulator: whatever cuts its watch (a slow consumer cut with
//! RESOURCE_EXHAUSTED, a netsyncd restart, a change log compacted past it),
//! its map ends equal to running read at the same revision. Each test also
//! checks that the cut it is about happened, and was handled the way it
//! should be (resumed without a new list, or listed again). A datastore
//! deleted and created again under the reflector is listed from scratch, its
//! old leaves never mixed with the new incarnation's; one deleted for good
//! ends the reflector with NOT_FOUND.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use netsync_client::{Event, Reflector};
use netsync_proto::netsync::v1 as pb;
use netsync_server::Config;
use netsync_server::log::Retention;
use netsync_sim::{InitialState, SimConfig};
use netsync_testkit::client::{self, Client, converge, wait_revision};
use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::within;
use tonic::Code;

use crate::support::{self, TestServer};

/// What a reflector went through, event by event.
#[derive(Debug, Default)]
struct Tally {
    /// Each list, with the code of the status that made it necessary.
    listed: Vec<Option<Code>>,
    /// Each new incarnation listed: the code of the status that showed it.
    recreated: Vec<Code>,
    /// Each cut that was resumed: the code and the revision resumed from.
    cuts: Vec<(Code, u64)>,
    applied: usize,
}

impl Tally {
    /// The next event of `reflector`, within the deadline, counted.
    async fn next(&mut self, reflector: &mut Reflector) -> Event {
        let event = within(reflector.next())
            .await
            .unwrap_or_else(|e| panic!("the reflector gave up: {e}"));
        match &event {
            Event::Listed { after, .. } => self.listed.push(after.as_ref().map(|s| s.code())),
            Event::Cut {
                status,
                from_revision,
            } => self.cuts.push((status.code(), *from_revision)),
            Event::Recreated { after, .. } => self.recreated.push(after.code()),
            Event::Applied { .. } => self.applied += 1,
            Event::StateChanged { .. } | Event::Revert { .. } => {}
        }
        event
    }
}

/// A churning simulator synced into datastore "r1" of the server at
/// `addr`, committing every 10 ms.
async fn churning(addr: SocketAddr, rate: f64) -> Sim {
    churning_on(addr, generated(100), rate).await
}

/// A simulator started with `config`, churning at `rate`, synced into
/// datastore "r1" of the server at `addr`, committing every 10 ms.
async fn churning_on(addr: SocketAddr, config: SimConfig, rate: f64) -> Sim {
    let sim = Sim::start(config).await;
    let mut client = Client::new(netsync_testkit::channel(addr).await);
    client::create_synced(&mut client, "r1", sim.addr).await;
    sim.start_churn(rate).await;
    sim
}

/// Stops the churn, waits until running equals the simulator, brings the
/// reflector to that revision and asserts its map is running at it.
async fn assert_reflects_running(
    sim: &Sim,
    server: SocketAddr,
    reflector: &mut Reflector,
    tally: &mut Tally,
) {
    sim.stop_churn().await;
    let mut observer = Client::new(netsync_testkit::channel(server).await);
    let settled = converge(&mut observer, "r1", sim).await;
    while reflector.revision() < settled {
        tally.next(reflector).await;
    }
    let running = client::running(&mut observer, "r1", settled).await;
    assert_eq!(
        (reflector.revision(), running.revision),
        (settled, settled),
        "the reflector and running at the revision running settled at"
    );
    let (revision, leaves) = reflector.snapshot();
    if leaves != running.leaves {
        let missing: Vec<_> = running
            .leaves
            .iter()
            .filter(|(path, value)| leaves.get(*path) != Some(value))
            .map(|(path, _)| path)
            .take(5)
            .collect();
        let extra: Vec<_> = leaves
            .keys()
            .filter(|path| !running.leaves.contains_key(*path))
            .take(5)
            .collect();
        panic!(
            "the reflector at {revision} differs from running: missing or different {missing:?}, \
             extra {extra:?} ({} against {} leaves; {tally:?})",
            leaves.len(),
            running.leaves.len()
        );
    }
}

/// A server whose watchers are cut as soon as they fall behind: a ring of 16
/// live events and a 16 KiB budget.
fn impatient(db: &Path) -> Config {
    let mut config = support::config(db);
    config.limits.event_buffer = 16;
    config.api_limits.max_watcher_bytes = 16 << 10;
    config
}

/// A consumer that reads one revision for every four the datastore makes,
/// on a connection with a 1 KiB window, is cut with RESOURCE_EXHAUSTED; the
/// reflector resumes from the revision the status names, without listing
/// again, and ends equal to running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_cut_for_falling_behind_resumes_and_ends_equal_to_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(impatient(&dir.path().join("netsync.db"))).await;
    let sim = churning(server.addr, 400.0).await;
    let slow = netsync_testkit::channel_with_window(server.addr, 1024).await;
    let mut reflector = netsync_client::Client::from_channel(slow).reflector("r1");
    let mut observer = Client::new(netsync_testkit::channel(server.addr).await);
    let mut tally = Tally::default();
    let mut pace = 1;
    // Slow until cut (once: the resumed watch replays the log at its
    // reader's pace, which netsyncd never cuts for being slow), then a few
    // revisions read after the resume.
    within(async {
        while tally.cuts.is_empty() {
            if let Event::Applied { .. } = tally.next(&mut reflector).await {
                pace = wait_revision(&mut observer, "r1", pace + 4).await;
            }
        }
    })
    .await;
    let resumed = reflector.revision();
    while reflector.revision() < resumed + 5 {
        tally.next(&mut reflector).await;
    }
    assert_reflects_running(&sim, server.addr, &mut reflector, &mut tally).await;
    assert!(
        tally
            .cuts
            .iter()
            .all(|(code, _)| *code == Code::ResourceExhausted)
            && tally.listed == [None],
        "cut for being slow, resumed without a new list: {tally:?}"
    );
    drop(observer);
    server.stop().await;
    sim.stop().await;
}

/// netsyncd stopped (its watchers told UNAVAILABLE with the revision to
/// resume from) and started again on the same database and port while the
/// device churns on: the reflector reconnects by itself, resumes from the
/// persisted change log without listing again, and ends equal to running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_netsyncd_restart_is_resumed_from_the_log_and_ends_equal_to_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netsync.db");
    let server = TestServer::start(&db).await;
    let addr = server.addr;
    let sim = churning(addr, 200.0).await;
    let mut reflector = netsync_client::connect(&addr.to_string(), None)
        .await
        .unwrap()
        .reflector("r1");
    let mut tally = Tally::default();
    while reflector.revision() < 10 || tally.applied < 5 {
        tally.next(&mut reflector).await;
    }
    // Stopping waits for the watch to end, which the reflector must read:
    // both at once.
    let stopping = server.begin_stop();
    while tally.cuts.is_empty() {
        tally.next(&mut reflector).await;
    }
    within(stopping).await.unwrap().unwrap();
    let before_restart = reflector.revision();
    let server = TestServer::start_at(support::config(&db), addr).await;
    // Past the revision the new netsyncd starts with (its first commit is
    // a full resync of the device).
    while reflector.revision() < before_restart + 5 {
        tally.next(&mut reflector).await;
    }
    assert_reflects_running(&sim, addr, &mut reflector, &mut tally).await;
    assert!(
        tally.cuts[0] == (Code::Unavailable, before_restart + 1) && tally.listed == [None],
        "cut by the shutdown at the revision after the map's, resumed without a new list: \
         {tally:?}"
    );
    server.stop().await;
    sim.stop().await;
}

/// A reflector that stops reading while the change log (300 commits kept)
/// compacts far past its revision: its watch is cut, the revision it would
/// resume from is gone (OUT_OF_RANGE), so it lists running again, watches
/// on from there, and ends equal to running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_compacted_past_the_reflector_makes_it_list_again_and_end_equal_to_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = impatient(&dir.path().join("netsync.db"));
    config.retention = Retention {
        commits: 300,
        age: Duration::ZERO,
    };
    let server = TestServer::start_with(config).await;
    let sim = churning(server.addr, 400.0).await;
    // A 1 KiB window, so that what netsyncd can send ahead to a reader that
    // stopped (the window, its queue of half the 16 KiB budget) is far less
    // than the 400 revisions it stops for.
    let stalled = netsync_testkit::channel_with_window(server.addr, 1024).await;
    let mut reflector = netsync_client::Client::from_channel(stalled).reflector("r1");
    let mut tally = Tally::default();
    while tally.applied < 3 {
        tally.next(&mut reflector).await;
    }
    // Not reading, until a watch from 400 revisions past the reflector's is
    // refused: compacted away.
    let stalled_at = reflector.revision();
    let mut observer = Client::new(netsync_testkit::channel(server.addr).await);
    let mut at = stalled_at;
    loop {
        at = wait_revision(&mut observer, "r1", at + 10).await;
        if at <= stalled_at + 400 {
            continue;
        }
        let watch = observer
            .watch_sync(pb::WatchSyncRequest {
                datastore: "r1".into(),
                from_revision: stalled_at + 400,
                ..Default::default()
            })
            .await;
        match watch {
            Ok(_) => continue,
            Err(status) if status.code() == Code::OutOfRange => break,
            Err(status) => panic!("watch from {}: {status:?}", stalled_at + 400),
        }
    }
    within(async {
        while tally.listed.len() < 2 {
            tally.next(&mut reflector).await;
        }
    })
    .await;
    assert!(
        reflector.revision() > at,
        "listed again at {}, before the compaction seen at {at}",
        reflector.revision()
    );
    assert_reflects_running(&sim, server.addr, &mut reflector, &mut tally).await;
    assert_eq!(
        tally.listed,
        [None, Some(Code::OutOfRange)],
        "listed once, then again after OUT_OF_RANGE: {tally:?}"
    );
    drop(observer);
    server.stop().await;
    sim.stop().await;
}

/// Datastore "r1" deleted while a reflector watches it, and created again
/// under the same name on another device (other leaves, its revisions from 1
/// again) that commits past the revision the old watch would resume from:
/// the reflector's resumed watch names the old uid, is refused with
/// FAILED_PRECONDITION, and the reflector lists the new incarnation from
/// scratch (Recreated). Its map is then the new incarnation's running at
/// that revision (read back in time), with nothing of the old device, and
/// ends equal to running. Without expected_uid the watch from the old
/// revision + 1 would be served by the new history and splice it onto the
/// old map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datastore_deleted_and_created_again_is_listed_from_scratch_never_mixing_the_two() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let old = churning(server.addr, 200.0).await;
    let mut reflector = netsync_client::connect(&server.addr.to_string(), None)
        .await
        .unwrap()
        .reflector("r1");
    let mut tally = Tally::default();
    while tally.applied < 3 {
        tally.next(&mut reflector).await;
    }
    let old_uid = reflector.uid().to_string();
    let mut observer = Client::new(netsync_testkit::channel(server.addr).await);
    assert_eq!(old_uid, client::uid(&mut observer, "r1").await);
    old.stop_churn().await;
    let old_last = converge(&mut observer, "r1", &old).await;
    let old_leaves = client::running(&mut observer, "r1", old_last).await.leaves;

    // The reflector is not reading: its watch is cut by the deletion while
    // the new incarnation commits far past old_last.
    observer
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
        .await
        .unwrap();
    let other = SimConfig {
        initial: InitialState::Generated {
            leaves: 60,
            seed: 2,
        },
        ..SimConfig::default()
    };
    let new = churning_on(server.addr, other, 200.0).await;
    let new_uid = client::uid(&mut observer, "r1").await;
    assert_ne!(new_uid, old_uid);
    wait_revision(&mut observer, "r1", old_last + 10).await;

    let relisted_at = within(async {
        loop {
            match tally.next(&mut reflector).await {
                Event::Recreated {
                    revision,
                    uid,
                    previous_uid,
                    ..
                } => {
                    assert_eq!((&uid, &previous_uid), (&new_uid, &old_uid));
                    break revision;
                }
                // The old incarnation never went past old_last.
                Event::Applied { revision, .. } => assert!(
                    revision <= old_last,
                    "revision {revision} of the new incarnation applied onto the old map \
                     (old incarnation's last: {old_last}): {tally:?}"
                ),
                _ => {}
            }
        }
    })
    .await;
    let then = client::read_running(
        &mut observer,
        pb::GetRunningRequest {
            datastore: "r1".into(),
            revision: relisted_at,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (relisted_at, reflector.leaves()),
        (then.revision, &then.leaves),
        "listed from scratch: the new incarnation's running at its revision"
    );
    assert!(
        old_leaves
            .iter()
            .any(|(path, value)| then.leaves.get(path) != Some(value)),
        "the old device has leaves the new one has not, so that a mix would show"
    );
    assert_reflects_running(&new, server.addr, &mut reflector, &mut tally).await;
    assert_eq!(reflector.uid(), new_uid);
    assert_eq!(
        (tally.listed.as_slice(), tally.recreated.as_slice()),
        (&[None][..], &[Code::FailedPrecondition][..]),
        "one first list, one list of the new incarnation after its uid was refused: {tally:?}"
    );
    drop(observer);
    server.stop().await;
    old.stop().await;
    new.stop().await;
}

/// A datastore deleted under a reflector and not created again: the watch
/// the deletion cut cannot be resumed, and the reflector ends with
/// NOT_FOUND (what trying again cannot fix) instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_datastore_ends_the_reflector_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("netsync.db")).await;
    let sim = churning(server.addr, 100.0).await;
    let mut reflector = netsync_client::connect(&server.addr.to_string(), None)
        .await
        .unwrap()
        .reflector("r1");
    let mut tally = Tally::default();
    while tally.applied < 2 {
        tally.next(&mut reflector).await;
    }
    let mut observer = Client::new(netsync_testkit::channel(server.addr).await);
    observer
        .delete_datastore(pb::DeleteDatastoreRequest { name: "r1".into() })
        .await
        .unwrap();
    let ended = within(async {
        loop {
            match reflector.next().await {
                Ok(event) => assert!(
                    matches!(
                        event,
                        Event::Applied { .. } | Event::Cut { .. } | Event::StateChanged { .. }
                    ),
                    "after the deletion: {event:?}"
                ),
                Err(error) => break error,
            }
        }
    })
    .await;
    match ended {
        netsync_client::Error::Status(status) => {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert!(status.message().contains("r1"), "{status:?}");
        }
        other => panic!("ended with {other:?}, not NOT_FOUND"),
    }
    drop(observer);
    server.stop().await;
    sim.stop().await;
}
