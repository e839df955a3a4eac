//! Reads on every replica (`--replicas`): GetRunning and WatchSync of a
//! datastore that another replica syncs are answered from the database, and
//! a watch of many datastores covers every datastore of the database. Real
//! processes on a database of the shared throwaway cluster, datastores on the
//! simulator with churn.
//!
//! Every watch here is checked as a client would: its revisions follow on
//! with no gap or duplicate, through failovers, lease moves, resumptions on
//! another replica and lost notifications, and what it replays equals
//! GetRunning at the same revision.
//!
//! These run whatever `NETSYNC_TEST_DB` says (replicas exist only on
//! PostgreSQL); they pass without running when PostgreSQL is missing, unless
//! `NETSYNC_REQUIRE_POSTGRES=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use netsync_proto::netsync::v1 as pb;
use netsync_server::replicas::share;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::{self, Client, cut_from, read_running, running_at, wait_revision};
use netsync_testkit::sim::{Sim, generated};
use pb::sync_event::Event;
use sqlx::PgPool;
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};

use crate::replicas::{Replica, create, database, leases, settled};
use crate::watch_many::Fleet;

/// One datastore's commits as a single WatchSync gives them, checked as
/// they come: consecutive revisions, parts of one revision together.
struct Followed {
    events: Streaming<pb::SyncEvent>,
    /// The first revision not received whole.
    next: u64,
    /// Every revision received whole, with its parts joined.
    commits: Vec<(u64, pb::Commit)>,
    /// Parts of `next` received so far.
    partial: Option<pb::Commit>,
    uid: String,
    /// For each revision, from its commit time to its last part's arrival.
    lags: Vec<Duration>,
}

impl Followed {
    /// A watch of `name` on `client` from revision `from` (0: from now on,
    /// its first event saying where it starts).
    async fn start(client: &mut Client, name: &str, from: u64) -> Self {
        let mut events = client::watch(client, name, from).await;
        let next = if from == 0 {
            let first = client::next_event(&mut events).await;
            assert!(
                matches!(first.event, Some(Event::StateChanged(_))),
                "{first:?}"
            );
            first.revision + 1
        } else {
            from
        };
        Self {
            events,
            next,
            commits: Vec::new(),
            partial: None,
            uid: String::new(),
            lags: Vec::new(),
        }
    }

    /// Reads until `revision` was received whole.
    async fn until(&mut self, revision: u64) {
        while self.next <= revision {
            let event = self.event().await.unwrap_or_else(|s| {
                panic!(
                    "the watch ended before {revision} (at {}): {s:?}",
                    self.next
                )
            });
            self.apply(event);
        }
    }

    /// The next event, or the status the stream ended with.
    async fn event(&mut self) -> Result<pb::SyncEvent, Status> {
        tokio::time::timeout(DEADLINE, self.events.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {DEADLINE:?} (at {})", self.next))
            .unwrap_or_else(|| Err(Status::ok("ended without a status")))
    }

    fn apply(&mut self, event: pb::SyncEvent) {
        if self.uid.is_empty() {
            self.uid = event.uid.clone();
        }
        assert_eq!(event.uid, self.uid, "one incarnation");
        let Some(Event::Commit(part)) = event.event else {
            assert!(
                event.revision + 1 >= self.next,
                "an event at {} after revision {}",
                event.revision,
                self.next - 1
            );
            return;
        };
        assert_eq!(
            event.revision, self.next,
            "revision {} when {} was due (a gap or a duplicate)",
            event.revision, self.next
        );
        let whole = self.partial.get_or_insert_with(pb::Commit::default);
        whole.updates.extend(part.updates);
        whole.deletes.extend(part.deletes);
        whole.replace |= part.replace;
        if !part.more {
            let committed = event.time.and_then(|t| SystemTime::try_from(t).ok());
            if let Some(lag) = committed.and_then(|t| SystemTime::now().duration_since(t).ok()) {
                self.lags.push(lag);
            }
            let whole = self.partial.take().expect("one");
            self.commits.push((event.revision, whole));
            self.next += 1;
        }
    }

    /// Median and largest lag, in milliseconds, of the revisions received.
    fn lag(&self) -> (u128, u128) {
        let mut lags = self.lags.clone();
        lags.sort();
        let at = |i: usize| lags.get(i).map_or(0, Duration::as_millis);
        (at(lags.len() / 2), at(lags.len().saturating_sub(1)))
    }

    /// The revisions received, first to last.
    fn revisions(&self) -> Vec<u64> {
        self.commits.iter().map(|(r, _)| *r).collect()
    }
}

/// The replica of `replicas` whose id is `id`.
fn named<'a>(replicas: &'a mut [&mut Replica], id: &str) -> &'a mut Replica {
    replicas
        .iter_mut()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no replica {id}"))
}

/// The lease epoch `revision` of `name` was committed under.
async fn epoch(db: &PgPool, name: &str, revision: u64) -> i64 {
    sqlx::query_scalar("SELECT epoch FROM commits WHERE datastore = $1 AND revision = $2")
        .bind(name)
        .bind(revision as i64)
        .fetch_one(db)
        .await
        .unwrap()
}

/// What a client can tell of a status: code, text, `ErrorInfo` reason and
/// metadata.
#[derive(Debug, PartialEq)]
struct Seen {
    code: Code,
    message: String,
    info: Option<(String, BTreeMap<String, String>)>,
}

fn seen(status: &Status) -> Seen {
    use tonic_types::StatusExt;
    Seen {
        code: status.code(),
        message: status.message().to_string(),
        info: status
            .get_details_error_info()
            .map(|info| (info.reason, info.metadata.into_iter().collect())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_owner_reads_and_watches_as_the_owner_and_its_watches_go_through_a_kill_of_the_owner()
{
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let mut c = Replica::start(&url, "c").await;
    let names = create(&mut a, &sim, 6).await;
    let (owners, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    // A datastore of b's, watched on a from revision 1 and on c from now.
    let name = owners
        .iter()
        .find(|(_, o)| *o == "b")
        .map(|(n, _)| n.clone())
        .expect("b owns one of six");
    // A watch on a replica that does not sync it opens with the owner's
    // state as the owner last published it (within a lease round).
    let started = std::time::Instant::now();
    while client::status(&mut c.client, &name).await.state != pb::SyncState::InSync as i32 {
        assert!(
            started.elapsed() < DEADLINE,
            "c never showed {name} IN_SYNC"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut opening = client::watch(&mut c.client, &name, 0).await;
    match client::next_event(&mut opening).await.event {
        Some(Event::StateChanged(state)) => {
            assert_eq!(state.state, pb::SyncState::InSync as i32, "{state:?}")
        }
        other => panic!("a watch opens with the state: {other:?}"),
    }
    drop(opening);
    sim.start_churn(20.0).await;
    wait_revision(&mut b.client, &name, 3).await;
    let mut on_a = Followed::start(&mut a.client, &name, 1).await;
    let mut on_c = Followed::start(&mut c.client, &name, 0).await;
    let mut on_b = Followed::start(&mut b.client, &name, 0).await;

    // GetRunning at one revision is the same on every replica, and equals
    // what the watch replayed up to it.
    let at = wait_revision(&mut b.client, &name, on_c.next + 3).await;
    let owners_read = running_at(&mut b.client, &name, at).await;
    for replica in [&mut a, &mut c] {
        assert_eq!(
            running_at(&mut replica.client, &name, at).await,
            owners_read,
            "GetRunning at {at} on {}",
            replica.id
        );
        // min_revision: at least that revision, from the database.
        let newest = client::running(&mut replica.client, &name, at).await;
        assert!(newest.revision >= at, "{newest:?}");
    }
    on_a.until(at).await;
    assert_eq!(client::replay(&on_a.commits), owners_read.leaves);
    on_c.until(at).await;
    on_b.until(at).await;
    // Latency, both read as the events come.
    on_b.lags.clear();
    on_c.lags.clear();
    let target = at + 30;
    tokio::join!(on_b.until(target), on_c.until(target));
    assert_eq!(
        on_c.commits,
        on_b.commits[on_b.commits.len() - on_c.commits.len()..]
    );
    eprintln!(
        "commit to event, median and largest (ms): {:?} on the owner, {:?} on another replica \
         ({} revisions)",
        on_b.lag(),
        on_c.lag(),
        on_c.lags.len()
    );

    // kill -9 of the owner: the watches on the others go on through the
    // failover, the new owner's revisions following b's.
    let before = leases(&db).await[&name].1;
    b.server.kill_hard();
    let (after, took) = settled(&db, &mut [&mut a, &mut c], &names).await;
    eprintln!("kill -9 of the owner: the watches of the others go on ({took:?} to settle)");
    let mut new_owner = {
        let mut both = [&mut a, &mut c];
        named(&mut both, &after[&name]).client.clone()
    };
    let current = client::running(&mut new_owner, &name, 0).await.revision;
    let later = wait_revision(&mut new_owner, &name, current + 3).await;
    assert!(
        epoch(&db, &name, later).await > before,
        "revision {later} is of the new owner"
    );
    on_a.until(later).await;
    assert_eq!(on_a.revisions(), (1..=later).collect::<Vec<_>>());
    assert_eq!(
        client::replay(&on_a.commits),
        running_at(&mut new_owner, &name, later).await.leaves
    );

    // A watch ended on one replica resumes on another with from_revision:
    // nothing lost or repeated.
    on_c.until(later).await;
    let resume = on_c.next;
    let first_on_c = on_c.commits.first().expect("some").0;
    drop(on_c);
    let mut resumed = Followed::start(&mut a.client, &name, resume).await;
    let last = wait_revision(&mut new_owner, &name, resume + 3).await;
    resumed.until(last).await;
    on_a.until(last).await;
    let mut joined: Vec<u64> = (first_on_c..resume).collect();
    joined.extend(resumed.revisions());
    assert_eq!(joined, (first_on_c..=last).collect::<Vec<_>>());
    let from_a: Vec<&(u64, pb::Commit)> =
        on_a.commits.iter().filter(|(r, _)| *r >= resume).collect();
    assert_eq!(
        resumed.commits.iter().collect::<Vec<_>>(),
        from_a,
        "the same commits resumed on another replica"
    );
    sim.stop_churn().await;
    for replica in [a, c] {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_watch_goes_on_from_the_log_when_the_datastore_moves_to_a_joining_replica() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let names = create(&mut a, &sim, 12).await;
    let (owners, _) = settled(&db, &mut [&mut a, &mut b], &names).await;
    // One that c takes when it joins, watched on its owner now.
    let three = ["a", "b", "c"].map(String::from);
    let moving = share(&three, "c", &names);
    let name = names
        .iter()
        .find(|n| moving.contains(n.as_str()))
        .expect("c takes one of twelve")
        .clone();
    let owner = owners[&name].clone();
    sim.start_churn(20.0).await;
    let mut owner_client = {
        let mut both = [&mut a, &mut b];
        named(&mut both, &owner).client.clone()
    };
    wait_revision(&mut owner_client, &name, 2).await;
    let mut watched = Followed::start(&mut owner_client, &name, 1).await;

    let before = leases(&db).await[&name].1;
    let mut c = Replica::start(&url, "c").await;
    let (after, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    assert_eq!(after[&name], "c");
    let current = client::running(&mut c.client, &name, 0).await.revision;
    let later = wait_revision(&mut c.client, &name, current + 3).await;
    assert!(epoch(&db, &name, later).await > before);
    // The watch on the old owner did not end: it follows c's commits.
    watched.until(later).await;
    assert_eq!(watched.revisions(), (1..=later).collect::<Vec<_>>());
    assert_eq!(
        client::replay(&watched.commits),
        running_at(&mut c.client, &name, later).await.leaves
    );
    sim.stop_churn().await;

    // Its replica shutting down ends it as any watch: SHUTTING_DOWN, with
    // the revision to resume from.
    let (old, others): (Vec<Replica>, Vec<Replica>) =
        [a, b, c].into_iter().partition(|r| r.id == owner);
    for replica in old {
        assert!(replica.server.terminate().success());
    }
    let status = loop {
        match watched.event().await {
            Ok(event) => watched.apply(event),
            Err(status) => break status,
        }
    };
    assert_eq!(cut_from(&status, &name, "SHUTTING_DOWN"), watched.next);
    for replica in others {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_of_many_on_one_replica_covers_every_replicas_datastores_through_a_kill() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let mut c = Replica::start(&url, "c").await;
    let names = create(&mut a, &sim, 9).await;
    let (owners, _) = settled(&db, &mut [&mut a, &mut b, &mut c], &names).await;
    let owned_by: BTreeSet<&str> = owners.values().map(String::as_str).collect();
    assert_eq!(owned_by.len(), 3, "every replica owns some: {owners:?}");
    sim.start_churn(20.0).await;

    // A Baseline for every datastore of the database, whoever syncs it.
    let mut events = client::watch_many(&mut a.client, "", "").await.unwrap();
    let mut fleet = Fleet::default();
    let mut reader = a.client.clone();
    fleet
        .until(&mut reader, &mut events, "every Baseline", |f| {
            f.progress > 0
        })
        .await;
    for name in &names {
        assert_eq!(
            fleet.changes_of(name),
            vec![("baseline", "matches the selector".to_string())],
            "{name}"
        );
    }
    let start: BTreeMap<String, u64> = names
        .iter()
        .map(|n| (n.clone(), fleet.revision(n)))
        .collect();
    fleet
        .until(&mut reader, &mut events, "commits of every one", |f| {
            names.iter().all(|n| f.revision(n) > start[n])
        })
        .await;

    // A datastore created through another replica: followed from its
    // revision 1.
    crate::watch_many::add(&mut c.client, "created-on-c", &sim, &[]).await;
    fleet
        .until(&mut reader, &mut events, "the new one's commits", |f| {
            f.revision("created-on-c") >= 2
        })
        .await;
    assert_eq!(
        fleet.changes_of("created-on-c"),
        vec![("baseline", "created".to_string())]
    );

    // kill -9 of b: its datastores go on in the stream, with no gap or
    // duplicate (the fleet checks every revision) through the failover.
    let lost: Vec<&String> = owners
        .iter()
        .filter(|(_, o)| *o == "b")
        .map(|(n, _)| n)
        .collect();
    b.server.kill_hard();
    let mut all = names.clone();
    all.push("created-on-c".into());
    let (after, _) = settled(&db, &mut [&mut a, &mut c], &all).await;
    let mut targets = BTreeMap::new();
    for name in &lost {
        let mut owner = {
            let mut both = [&mut a, &mut c];
            named(&mut both, &after[*name]).client.clone()
        };
        let current = client::running(&mut owner, name, 0).await.revision;
        targets.insert(name.to_string(), current + 2);
    }
    fleet
        .until(
            &mut reader,
            &mut events,
            "the lost ones' new commits",
            |f| targets.iter().all(|(n, t)| f.revision(n) >= *t),
        )
        .await;

    // A datastore deleted through a replica that does not sync it: Left.
    let gone = names
        .iter()
        .find(|n| after[*n] == "a")
        .expect("a syncs one")
        .clone();
    crate::watch_many::delete(&mut c.client, &gone).await;
    fleet
        .until(&mut reader, &mut events, "Left of the deleted one", |f| {
            f.changes_of(&gone).len() == 2
        })
        .await;
    assert_eq!(fleet.changes_of(&gone)[1], ("left", "deleted".to_string()));

    // Resumed on another replica with the token of the last Progress:
    // every datastore continues where it was.
    let seen = fleet.progress;
    fleet
        .until(&mut reader, &mut events, "a Progress", |f| {
            f.progress > seen
        })
        .await;
    drop(events);
    let mut held = fleet.clone();
    let mut resumed = client::watch_many(&mut c.client, "", &held.token)
        .await
        .unwrap();
    let left: Vec<String> = all.iter().filter(|n| **n != gone).cloned().collect();
    let targets: BTreeMap<&String, u64> = left.iter().map(|n| (n, held.revision(n) + 2)).collect();
    held.until(&mut reader, &mut resumed, "resumed on c", |f| {
        targets.iter().all(|(n, t)| f.revision(n) >= *t)
    })
    .await;
    for name in names.iter().filter(|n| **n != gone) {
        assert_eq!(held.changes_of(name).len(), 1, "{name}: one Baseline only");
    }
    sim.stop_churn().await;
    held.assert_equal_to_running(&mut reader).await;
    for replica in [a, c] {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_notification_loses_nothing() {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    let mut a = Replica::start(&url, "a").await;
    let mut b = Replica::start(&url, "b").await;
    let names = create(&mut a, &sim, 6).await;
    let (owners, _) = settled(&db, &mut [&mut a, &mut b], &names).await;
    let name = owners
        .iter()
        .find(|(_, o)| *o == "b")
        .map(|(n, _)| n.clone())
        .expect("b owns one of six");
    sim.start_churn(40.0).await;
    let mut watched = Followed::start(&mut a.client, &name, 0).await;
    let mut many = client::watch_many(&mut a.client, "", "").await.unwrap();
    let mut fleet = Fleet::default();
    let mut reader = a.client.clone();
    // Read as the events come, to see how late they are.
    let last = watched.next + 60;
    let reading = tokio::spawn(async move {
        watched.until(last).await;
        watched
    });

    // The listening sessions cut, again and again, during churn.
    while client::running(&mut b.client, &name, 0).await.revision < last {
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN%' AND datname = current_database()",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(cut.iter().any(|c| *c), "no listening session to cut");
        let now = client::running(&mut b.client, &name, 0).await.revision;
        wait_revision(&mut b.client, &name, now + 3).await;
    }
    let watched = reading.await.unwrap();
    eprintln!(
        "listener cut every few commits: commit to event, median and largest (ms): {:?}",
        watched.lag()
    );
    fleet
        .until(&mut reader, &mut many, "the watched one's last", |f| {
            f.revision(&name) >= last
        })
        .await;
    sim.stop_churn().await;
    let first = watched.revisions()[0];
    let history: Vec<(u64, pb::Commit)> = client::history(&mut b.client, &name, last)
        .await
        .into_iter()
        .filter(|(r, _)| *r >= first)
        .collect();
    assert_eq!(watched.commits, history, "the watch saw every revision");
    for replica in [a, b] {
        assert!(replica.server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_owner_gives_the_owners_errors_waits_for_min_revision_and_ends_watches_of_a_deleted_datastore()
 {
    let Some((url, db)) = database().await else {
        return;
    };
    let sim = Sim::start(generated(20)).await;
    // A short log: compaction cuts it once a snapshot is due.
    let retain = ["--retain-commits", "5", "--retain-seconds", "0"];
    let mut a = Replica::start_with(&url, "a", &retain).await;
    let mut b = Replica::start_with(&url, "b", &retain).await;
    let names = create(&mut a, &sim, 4).await;
    let (owners, _) = settled(&db, &mut [&mut a, &mut b], &names).await;
    let name = owners
        .iter()
        .find(|(_, o)| *o == "b")
        .map(|(n, _)| n.clone())
        .expect("b owns one of four");

    // min_revision beyond the newest: a non-owner waits for it, then
    // answers.
    let newest = client::running(&mut b.client, &name, 0).await.revision;
    let mut waiting = a.client.clone();
    let wanted = newest + 3;
    let waited = {
        let name = name.clone();
        tokio::spawn(async move { client::running(&mut waiting, &name, wanted).await })
    };
    sim.start_churn(400.0).await;
    assert!(waited.await.unwrap().revision >= wanted);

    // Churn until compaction removed revision 1.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT min(revision) FROM commits WHERE datastore = $1")
                .bind(&name)
                .fetch_one(&db)
                .await
                .unwrap();
        if oldest.is_some_and(|o| o > 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never compacted");
        let now = client::running(&mut b.client, &name, 0).await.revision;
        wait_revision(&mut b.client, &name, now + 20).await;
    }
    sim.stop_churn().await;
    let quiet = client::converge_by_meaning(&mut b.client, &name, &sim).await;

    // The same errors on both, once the datastore is quiet: a compacted
    // from_revision or revision, one not committed yet, min_revision not
    // reached within the call's deadline.
    let mut errors: Vec<Vec<_>> = Vec::new();
    for replica in [&mut b, &mut a] {
        let mut found = Vec::new();
        let client = &mut replica.client;
        for from in [1, quiet + 5] {
            let status = client::watch_uid(client, &name, from, "")
                .await
                .unwrap_err();
            found.push(seen(&status));
        }
        for revision in [1, quiet + 5] {
            let request = pb::GetRunningRequest {
                datastore: name.clone(),
                revision,
                ..Default::default()
            };
            found.push(seen(&read_running(client, request).await.unwrap_err()));
        }
        let status = client::try_running(client, &name, quiet + 5, Duration::from_secs(2))
            .await
            .unwrap_err();
        found.push(seen(&status));
        errors.push(found);
    }
    let codes: Vec<Code> = errors[0].iter().map(|e| e.code).collect();
    assert_eq!(
        codes,
        [
            Code::OutOfRange,
            Code::OutOfRange,
            Code::OutOfRange,
            Code::OutOfRange,
            Code::DeadlineExceeded
        ]
    );
    assert_eq!(
        errors[1], errors[0],
        "the non-owner's errors are the owner's"
    );

    // with_owner names the same intents on both: the owner's in memory,
    // the other's as stored.
    let running = client::running(&mut b.client, &name, quiet).await;
    let (path, value) = running.leaves.iter().next().expect("leaves");
    client::set_intent(
        &mut b.client,
        &name,
        pb::Intent {
            name: "kept".into(),
            updates: vec![pb::Leaf {
                path: path.clone(),
                value: Some(value.clone()),
                owner: String::new(),
            }],
            ..Default::default()
        },
    )
    .await;
    let owned = client::owners(&mut b.client, &name, "").await;
    assert_eq!(owned[path], "kept");
    assert_eq!(client::owners(&mut a.client, &name, "").await, owned);

    // A deleted datastore ends the watches of both as the owner's ends.
    let mut on_owner = Followed::start(&mut b.client, &name, 0).await;
    let mut elsewhere = Followed::start(&mut a.client, &name, 0).await;
    crate::watch_many::delete(&mut a.client, &name).await;
    let mut ends = Vec::new();
    for watch in [&mut on_owner, &mut elsewhere] {
        let status = loop {
            match watch.event().await {
                Ok(event) => watch.apply(event),
                Err(status) => break status,
            }
        };
        assert_eq!(cut_from(&status, &name, "SYNC_STOPPED"), watch.next);
        ends.push((status.code(), watch.next));
    }
    assert_eq!(ends[0], ends[1]);
    assert_eq!(ends[0].0, Code::Unavailable);
    let gone = read_running(
        &mut a.client,
        pb::GetRunningRequest {
            datastore: name.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    for replica in [a, b] {
        assert!(replica.server.terminate().success());
    }
}
