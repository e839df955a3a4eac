//! WatchSync replays racing live commits: watchers starting at revisions in
//! the past while a churning simulator keeps committing, each seeing every
//! revision from its `from_revision` once, in order, and ending equal to
//! running at the same revision; and the change log compacted while slow
//! watchers replay, which must cut them (OUT_OF_RANGE or RESOURCE_EXHAUSTED
//! naming the revision to resume from), never leave a silent gap.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;
use netsync_server::log::Retention;
use netsync_testkit::client::{self, Client, wait_revision};
use netsync_testkit::sim::{Sim, generated};
use netsync_testkit::within;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{self, TestServer};

/// One revision's commit as a watcher received it, its parts joined.
#[derive(Debug, Clone, PartialEq)]
struct Commit {
    revision: u64,
    replace: bool,
    updates: BTreeMap<String, gnmi::TypedValue>,
    deletes: BTreeSet<String>,
}

/// A WatchSync stream read commit by commit. On the way it checks what holds
/// within one stream: the parts of a revision come together and name no leaf
/// twice, and no other event carries a revision below one already received.
struct Commits {
    events: tonic::Streaming<pb::SyncEvent>,
    /// The revision of the stream's first event (the current state, at the
    /// revision before the first live one).
    first: Option<u64>,
    last: u64,
}

impl Commits {
    async fn open(
        client: &mut Client,
        name: &str,
        from_revision: u64,
    ) -> Result<Self, tonic::Status> {
        let events = within(client.watch_sync(pb::WatchSyncRequest {
            datastore: name.into(),
            from_revision,
            ..Default::default()
        }))
        .await?
        .into_inner();
        Ok(Self {
            events,
            first: None,
            last: 0,
        })
    }

    /// The next whole commit, or the status that ended the stream.
    async fn next(&mut self) -> Result<Commit, tonic::Status> {
        let mut whole: Option<Commit> = None;
        loop {
            let event = within(self.events.next())
                .await
                .expect("a WatchSync stream ends with a status, not silently")?;
            self.first.get_or_insert(event.revision);
            let Some(pb::sync_event::Event::Commit(part)) = event.event else {
                assert!(whole.is_none(), "an event between the parts of a revision");
                assert!(
                    event.revision >= self.last,
                    "{:?} at revision {} after revision {} was received",
                    event.event,
                    event.revision,
                    self.last
                );
                continue;
            };
            let commit = whole.get_or_insert_with(|| Commit {
                revision: event.revision,
                replace: part.replace,
                updates: BTreeMap::new(),
                deletes: BTreeSet::new(),
            });
            assert_eq!(
                (event.revision, part.replace),
                (commit.revision, commit.replace),
                "a part of another revision before the last part of {}",
                commit.revision
            );
            for leaf in part.updates {
                assert!(
                    !commit.deletes.contains(&leaf.path)
                        && commit
                            .updates
                            .insert(leaf.path.clone(), leaf.value.unwrap_or_default())
                            .is_none(),
                    "{} twice in revision {}",
                    leaf.path,
                    commit.revision
                );
            }
            for path in part.deletes {
                assert!(
                    !commit.updates.contains_key(&path) && commit.deletes.insert(path.clone()),
                    "{path} twice in revision {}",
                    commit.revision
                );
            }
            if !part.more {
                self.last = event.revision;
                return Ok(whole.take().expect("held above"));
            }
        }
    }
}

/// Applies `commit` to a map of leaves, as a watcher keeps its own copy.
fn apply(leaves: &mut BTreeMap<String, gnmi::TypedValue>, commit: &Commit) {
    for path in &commit.deletes {
        leaves.remove(path);
    }
    leaves.extend(commit.updates.clone());
}

/// Running after `revision`, rebuilt from `commits`, which start at 1.
fn state_at(commits: &[Commit], revision: u64) -> BTreeMap<String, gnmi::TypedValue> {
    let mut leaves = BTreeMap::new();
    for commit in commits.iter().take_while(|c| c.revision <= revision) {
        apply(&mut leaves, commit);
    }
    leaves
}

/// Watchers starting at revisions in the past (1, 2, a third and half of the
/// way, the one before the current, the current, the next) and from now on,
/// all while commits land. Each sees consecutive revisions from its start
/// with no gap and no duplicate, each revision the same for all, and its own
/// copy, built from the replay base, equals running read at the same revision
/// at several points along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_replaying_from_the_past_while_commits_land_see_every_revision_once() {
    let sim = Sim::start(generated(200)).await;
    let (_dir, server, mut client) = support::start().await;
    client::create_synced(&mut client, "r1", sim.addr).await;
    sim.start_churn(300.0).await;
    let early = wait_revision(&mut client, "r1", 40).await;

    // Each watcher reads until it has the commit of the revision `stop_at`
    // names, set once running has been read along the way.
    let (set_stop, stop_at) = watch::channel(None::<u64>);
    let froms = [1, 2, early / 3, early / 2, early - 1, early, early + 1, 0];
    let watchers: Vec<JoinHandle<(u64, u64, Vec<Commit>)>> = froms
        .into_iter()
        .map(|from| {
            let mut client = client.clone();
            let stop_at = stop_at.clone();
            tokio::spawn(async move {
                let mut commits = Commits::open(&mut client, "r1", from)
                    .await
                    .unwrap_or_else(|s| panic!("watch from {from}: {s:?}"));
                let mut seen: Vec<Commit> = Vec::new();
                loop {
                    let commit = commits
                        .next()
                        .await
                        .unwrap_or_else(|s| panic!("the watcher from {from} was cut: {s:?}"));
                    // From now on: the first live revision follows the
                    // state announced first.
                    let expected = match seen.last() {
                        Some(last) => last.revision + 1,
                        None if from == 0 => commits.first.expect("an event came") + 1,
                        None => from,
                    };
                    assert_eq!(
                        commit.revision,
                        expected,
                        "the watcher from {from} after {} commits",
                        seen.len()
                    );
                    seen.push(commit);
                    if stop_at.borrow().is_some_and(|stop| expected >= stop) {
                        return (from, seen[0].revision, seen);
                    }
                }
            })
        })
        .collect();

    // Running read three times while the watchers replay and commits land.
    let mut reads = Vec::new();
    let mut at = early;
    for _ in 0..3 {
        let read = client::running(&mut client, "r1", at + 10).await;
        at = read.revision;
        reads.push(read);
    }
    set_stop.send_replace(Some(at));
    let mut watched = Vec::new();
    for watcher in watchers {
        watched.push(within(watcher).await.unwrap());
    }
    sim.stop_churn().await;

    let reference = &watched[0].2;
    assert_eq!(reference[0].revision, 1);
    assert!(reference[0].replace, "revision 1 is the first dump");
    for (from, first, commits) in &watched {
        // The same content at every revision, whoever reads it.
        for commit in commits {
            assert_eq!(
                Some(commit),
                reference.get(commit.revision as usize - 1),
                "revision {} as the watcher from {from} got it",
                commit.revision
            );
        }
        // Its own copy, from the replay base, equals running where read.
        for read in reads.iter().filter(|r| r.revision + 1 >= *first) {
            let mut leaves = state_at(reference, first - 1);
            for commit in commits.iter().take_while(|c| c.revision <= read.revision) {
                apply(&mut leaves, commit);
            }
            assert!(
                leaves == read.leaves,
                "the watcher from {from} at revision {}: {} leaves, running {}",
                read.revision,
                leaves.len(),
                read.leaves.len()
            );
        }
    }
    client::assert_no_recovery(&mut client, "r1").await;
    drop(client);
    server.stop().await;
    sim.stop().await;
}

/// How a slow watcher ended.
#[derive(Debug)]
struct Slow {
    from: u64,
    /// Every commit it received, across its resumptions.
    commits: Vec<Commit>,
    /// RESOURCE_EXHAUSTED cuts it resumed from.
    resumed: usize,
    /// The status that ended it: OUT_OF_RANGE once the log had compacted
    /// past it.
    end: tonic::Status,
    /// Whether that came in the middle of a stream (a replay overtaken by
    /// compaction) rather than when resuming.
    mid_stream: bool,
}

/// A watcher that reads one commit for every three the datastore makes, on
/// a connection whose tiny HTTP/2 window makes the server wait for it, so
/// that it falls further behind with every commit until the change log
/// compacts past it. Cut with RESOURCE_EXHAUSTED it resumes where the message
/// says; it ends at the OUT_OF_RANGE that says its next revision is gone.
async fn slow_watcher(server: SocketAddr, from: u64) -> Slow {
    let mut slow = Client::new(netsync_testkit::channel_with_window(server, 1024).await);
    let mut observer = Client::new(netsync_testkit::channel(server).await);
    let mut pace = wait_revision(&mut observer, "r1", from).await;
    let mut commits: Vec<Commit> = Vec::new();
    let mut resumed = 0;
    let mut next = from;
    loop {
        let mut stream = match Commits::open(&mut slow, "r1", next).await {
            Ok(stream) => stream,
            Err(status) => {
                support::assert_status(&status, Code::OutOfRange, &[&format!("revision {next} ")]);
                return Slow {
                    from,
                    commits,
                    resumed,
                    end: status,
                    mid_stream: false,
                };
            }
        };
        loop {
            match stream.next().await {
                Ok(commit) => {
                    assert_eq!(commit.revision, next, "the slow watcher from {from}: a gap");
                    next += 1;
                    commits.push(commit);
                    pace = wait_revision(&mut observer, "r1", pace + 4).await;
                }
                Err(status) if status.code() == Code::ResourceExhausted => {
                    support::assert_status(
                        &status,
                        Code::ResourceExhausted,
                        &[&format!("from_revision={next}")],
                    );
                    // Lapped by the small ring, or over the small budget.
                    let reason = if status.message().contains("max_watcher_bytes") {
                        "WATCHER_OVER_BUDGET"
                    } else {
                        "WATCHER_LAGGED"
                    };
                    assert_eq!(client::cut_from(&status, "r1", reason), next);
                    resumed += 1;
                    break;
                }
                Err(status) => {
                    support::assert_status(
                        &status,
                        Code::OutOfRange,
                        &[&format!("revision {next} ")],
                    );
                    let info = status
                        .get_details_error_info()
                        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
                    assert_eq!(info.reason, "REVISION_NOT_KEPT", "{status:?}");
                    assert_eq!(info.metadata["revision"], next.to_string(), "{status:?}");
                    return Slow {
                        from,
                        commits,
                        resumed,
                        end: status,
                        mid_stream: true,
                    };
                }
            }
        }
    }
}

/// A watcher that reads its first commit and then nothing until the log has
/// compacted `margin` revisions past its start: far past anything the server
/// may hold for it (its queue of half of `max_watcher_bytes`, the page of at
/// most 64 commits its replay has read, one chunk of at most 32 KiB that
/// tonic encodes ahead, a 1 KiB HTTP/2 window), so that its replay, which
/// goes at its client's pace, is still waiting to send when the log compacts
/// under it. Then it reads on: what the server held, then OUT_OF_RANGE naming
/// the first revision compacted away, long before the revision that was
/// current when it started reading again. (Reaching that one would mean the
/// server had held the whole replay for a client that read nothing; the
/// budget must be small against `margin` for this to hold, see the test.)
async fn stalled_watcher(server: SocketAddr, from: u64, margin: u64) -> Slow {
    let mut stalled = Client::new(netsync_testkit::channel_with_window(server, 1024).await);
    let mut observer = Client::new(netsync_testkit::channel(server).await);
    let mut stream = Commits::open(&mut stalled, "r1", from).await.unwrap();
    let mut commits = vec![stream.next().await.unwrap()];
    assert_eq!(commits[0].revision, from);
    let mut at = from;
    loop {
        at = wait_revision(&mut observer, "r1", at + 10).await;
        if at <= from + margin {
            continue;
        }
        match Commits::open(&mut observer, "r1", from + margin).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::OutOfRange => break,
            Err(status) => panic!("watch from {}: {status:?}", from + margin),
        }
    }
    let mut next = from + 1;
    loop {
        match stream.next().await {
            Ok(commit) => {
                assert_eq!(
                    commit.revision, next,
                    "the stalled watcher from {from}: a gap"
                );
                assert!(
                    commit.revision < at,
                    "the stalled watcher from {from} read on to revision {}, current when it \
                     started reading again: its whole replay was held for it, never overtaken",
                    commit.revision
                );
                next += 1;
                commits.push(commit);
            }
            Err(status) => {
                // A replay goes at its client's pace and is never cut for
                // being slow: only compaction ends it.
                support::assert_status(&status, Code::OutOfRange, &[&format!("revision {next} ")]);
                return Slow {
                    from,
                    commits,
                    resumed: 0,
                    end: status,
                    mid_stream: true,
                };
            }
        }
    }
}

/// A change log that keeps only 300 commits, compacting while slow watchers
/// replay it: each is cut (RESOURCE_EXHAUSTED naming where to resume, or
/// OUT_OF_RANGE once its next revision is gone), and up to the cut it got
/// every revision from its start, each as a watcher that keeps up got it. The
/// stalled one is overtaken by compaction in the middle of its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_a_slow_replay_cuts_the_watcher_and_never_leaves_a_gap() {
    let sim = Sim::start(generated(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(&dir.path().join("netsync.db"));
    config.retention = Retention {
        commits: 300,
        age: Duration::ZERO,
    };
    // A small ring, so that falling behind live commits cuts a watcher too.
    config.limits.event_buffer = 16;
    // A small budget: a replay goes at its client's pace, queueing ahead at
    // most half of this. With the default (4 MiB queued, thousands of these
    // small commits) the stalled watcher's whole replay is queued before the
    // log compacts under it, and it is never overtaken (nor cut: it reads
    // on live once it reads again).
    config.api_limits.max_watcher_bytes = 16 << 10;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client::create_synced(&mut client, "r1", sim.addr).await;
    sim.start_churn(400.0).await;

    // A watcher that keeps up, from now on: the reference.
    let mut reference = Commits::open(&mut client, "r1", 0).await.unwrap();
    let (record, mut recorded) = watch::channel(Vec::<Commit>::new());
    let reference = tokio::spawn(async move {
        loop {
            match reference.next().await {
                Ok(commit) => record.send_modify(|all| {
                    if let Some(previous) = all.last() {
                        assert_eq!(
                            commit.revision,
                            previous.revision + 1,
                            "the reference: a gap"
                        );
                    }
                    all.push(commit);
                }),
                Err(status) => panic!("the reference watcher was cut: {status:?}"),
            }
        }
    });
    // Commits until the log has compacted revision 1 away (compaction comes
    // with the snapshots, about every 100 leaf changes here).
    let mut early = 1;
    let gone = loop {
        early = wait_revision(&mut client, "r1", early + 10).await;
        if let Err(status) = Commits::open(&mut client, "r1", 1).await {
            break status;
        }
    };
    support::assert_status(&gone, Code::OutOfRange, &["revision 1 ", "oldest kept: "]);
    let oldest: u64 = gone
        .message()
        .split("oldest kept: ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .expect("the oldest kept revision is named");

    // Slow watchers from within the log, the first ones far enough back to
    // be replaying when compaction overtakes them.
    let mut slow: Vec<JoinHandle<Slow>> = [oldest + 50, early - 100, early - 5]
        .into_iter()
        .map(|from| tokio::spawn(slow_watcher(server.addr, from)))
        .collect();
    slow.push(tokio::spawn(stalled_watcher(server.addr, oldest + 10, 400)));
    // All at once, so that the first to fail fails the test.
    let ended = within(futures::future::try_join_all(slow)).await.unwrap();
    // The reference up to the last revision any slow watcher got.
    let last = ended
        .iter()
        .filter_map(|s| s.commits.last())
        .map(|c| c.revision)
        .max()
        .unwrap_or(early);
    let kept = within(recorded.wait_for(|all| all.last().is_some_and(|c| c.revision >= last)))
        .await
        .expect("the reference watcher goes on")
        .clone();
    reference.abort();
    sim.stop_churn().await;
    let first_kept = kept[0].revision;
    for slow in &ended {
        for commit in slow.commits.iter().filter(|c| c.revision >= first_kept) {
            assert_eq!(
                Some(commit),
                kept.get((commit.revision - first_kept) as usize),
                "revision {} as the slow watcher from {} got it",
                commit.revision,
                slow.from
            );
        }
    }
    let summary: Vec<_> = ended
        .iter()
        .map(|s| {
            (
                s.from,
                s.commits.len(),
                s.resumed,
                s.mid_stream,
                s.end.message().to_string(),
            )
        })
        .collect();
    // Every slow watcher started within the log and got revisions before
    // it was cut; compaction overtook at least one in the middle of a stream
    // (a replay reading the log), not only when resuming.
    assert!(
        ended.iter().all(|s| !s.commits.is_empty())
            && ended
                .iter()
                .any(|s| s.mid_stream && s.end.code() == Code::OutOfRange),
        "(from, commits, resumed, mid-stream, end): {summary:?}"
    );
    drop(client);
    server.stop().await;
    sim.stop().await;
}
