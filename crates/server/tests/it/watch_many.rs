//! WatchSync of many datastores against netsync-sim: a label-selector watch
//! follows datastores created, relabelled, updated and deleted while it runs;
//! a resume token continues every datastore where it was; bad requests name
//! their field; one such watch is one call and one watcher, however many
//! datastores it follows.
//!
//! Every test keeps a client's copy of each followed datastore built from the
//! events alone ([`Fleet`]), checking on every event that its revisions are
//! consecutive, and ends with each copy equal to GetRunning at its revision.

use std::collections::BTreeMap;

use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;
use netsync_testkit::DEADLINE;
use netsync_testkit::client::{self, Client, converge, running_at, wait_revision, watch_many};
use netsync_testkit::datastore::{DatastoreBuilder, create};
use netsync_testkit::sim::{Sim, generated};
use pb::sync_event::Event;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{self, Netsyncd, Options, assert_status};

/// A client's copy of one datastore.
#[derive(Debug, Clone, Default)]
struct Copy {
    uid: String,
    /// The last revision applied whole.
    revision: u64,
    leaves: BTreeMap<String, gnmi::TypedValue>,
    /// Parts of the next revision received so far.
    partial: Option<(u64, pb::Commit)>,
}

/// What a client of a watch of many datastores holds (also used by the
/// tests of replicas).
#[derive(Debug, Clone, Default)]
pub(crate) struct Fleet {
    copies: BTreeMap<String, Copy>,
    /// The token of the last Progress event.
    pub(crate) token: String,
    pub(crate) progress: usize,
    /// Every Baseline and Left: (datastore, "baseline" or "left", revision,
    /// reason).
    changes: Vec<(String, &'static str, u64, String)>,
}

impl Fleet {
    /// Applies one event, checking the guarantees of a single watch per
    /// datastore.
    async fn apply(&mut self, client: &mut Client, event: pb::SyncEvent) {
        let name = event.datastore.clone();
        match event.event.expect("every event says what it is") {
            Event::Baseline(baseline) => {
                let leaves = if event.revision == 0 {
                    BTreeMap::new()
                } else {
                    running_at(client, &name, event.revision).await.leaves
                };
                self.copies.insert(
                    name.clone(),
                    Copy {
                        uid: event.uid,
                        revision: event.revision,
                        leaves,
                        partial: None,
                    },
                );
                self.changes
                    .push((name, "baseline", event.revision, baseline.reason));
            }
            Event::Left(left) => {
                assert!(
                    self.copies.remove(&name).is_some(),
                    "{name} left without being followed"
                );
                self.changes
                    .push((name, "left", event.revision, left.reason));
            }
            Event::Progress(_) => {
                assert!(name.is_empty(), "Progress names no datastore: {name}");
                assert!(!event.resume_token.is_empty(), "Progress carries a token");
                self.token = event.resume_token;
                self.progress += 1;
            }
            Event::Commit(part) => {
                let copy = self
                    .copies
                    .get_mut(&name)
                    .unwrap_or_else(|| panic!("a commit of {name} before its Baseline"));
                assert_eq!(event.uid, copy.uid, "{name}: one incarnation");
                assert_eq!(
                    event.revision,
                    copy.revision + 1,
                    "{name}: revision {} after {}",
                    event.revision,
                    copy.revision
                );
                let (revision, whole) = copy
                    .partial
                    .get_or_insert_with(|| (event.revision, pb::Commit::default()));
                assert_eq!(*revision, event.revision, "{name}: parts of one revision");
                whole.updates.extend(part.updates);
                whole.deletes.extend(part.deletes);
                if !part.more {
                    let (revision, whole) = copy.partial.take().unwrap();
                    for path in whole.deletes {
                        copy.leaves.remove(&path);
                    }
                    for leaf in whole.updates {
                        copy.leaves.insert(leaf.path, leaf.value.unwrap());
                    }
                    copy.revision = revision;
                }
            }
            Event::StateChanged(_) | Event::Revert(_) => {
                if let Some(copy) = self.copies.get(&name) {
                    assert!(
                        event.revision >= copy.revision,
                        "{name}: an event at {} after revision {}",
                        event.revision,
                        copy.revision
                    );
                }
            }
        }
    }

    /// Applies events until `done` holds (within the deadline).
    pub(crate) async fn until(
        &mut self,
        client: &mut Client,
        events: &mut tonic::Streaming<pb::SyncEvent>,
        what: &str,
        done: impl Fn(&Fleet) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(self) {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .unwrap_or_else(|_| panic!("not within the deadline: {what}; {:?}", self.changes))
                .expect("the watch goes on")
                .unwrap_or_else(|s| panic!("the watch failed: {s:?}"));
            self.apply(client, event).await;
        }
    }

    /// The revision of `name`'s copy (0 if not followed).
    pub(crate) fn revision(&self, name: &str) -> u64 {
        self.copies.get(name).map_or(0, |c| c.revision)
    }

    /// The Baselines and Lefts of `name`: (kind, reason).
    pub(crate) fn changes_of(&self, name: &str) -> Vec<(&'static str, String)> {
        self.changes
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, kind, _, reason)| (*kind, reason.clone()))
            .collect()
    }

    /// Every copy equals running at its revision.
    pub(crate) async fn assert_equal_to_running(&self, client: &mut Client) {
        for (name, copy) in &self.copies {
            let running = running_at(client, name, copy.revision).await;
            assert_eq!(copy.leaves, running.leaves, "{name} at {}", copy.revision);
        }
    }
}

pub(crate) async fn add(client: &mut Client, name: &str, sim: &Sim, labels: &[(&str, &str)]) {
    let mut builder = DatastoreBuilder::new(name, sim.addr)
        .encoding(pb::Encoding::Proto)
        .commit_interval_ms(50);
    for (key, value) in labels {
        builder = builder.label(key, value);
    }
    client
        .create_datastore(create(builder.build()))
        .await
        .unwrap();
}

pub(crate) async fn relabel(client: &mut Client, name: &str, labels: &[(&str, &str)]) {
    client
        .update_datastore(pb::UpdateDatastoreRequest {
            datastore: Some(pb::Datastore {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".into()],
            }),
        })
        .await
        .unwrap();
}

pub(crate) async fn readdress(client: &mut Client, name: &str, sim: &Sim) {
    client
        .update_datastore(pb::UpdateDatastoreRequest {
            datastore: Some(pb::Datastore {
                name: name.into(),
                target: Some(pb::Target {
                    address: sim.addr.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target.address".into()],
            }),
        })
        .await
        .unwrap();
}

pub(crate) async fn delete(client: &mut Client, name: &str) {
    client
        .delete_datastore(pb::DeleteDatastoreRequest { name: name.into() })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_watch_follows_datastores_created_relabelled_updated_and_deleted() {
    let a = Sim::start(generated(30)).await;
    let b = Sim::start(generated(30)).await;
    let (_dir, server, mut client) = support::start().await;
    add(&mut client, "r1", &a, &[("env", "lab")]).await;
    add(&mut client, "r2", &a, &[("env", "prod")]).await;
    add(&mut client, "r4", &b, &[("env", "prod")]).await;
    for (name, sim) in [("r1", &a), ("r2", &a), ("r4", &b)] {
        converge(&mut client, name, sim).await;
    }
    a.start_churn(20.0).await;
    b.start_churn(20.0).await;

    let mut reader = server.client().await;
    let mut events = watch_many(&mut reader, "env=lab", "").await.unwrap();
    let mut fleet = Fleet::default();
    fleet
        .until(&mut client, &mut events, "the first Progress", |f| {
            f.progress > 0
        })
        .await;
    assert_eq!(fleet.copies.keys().collect::<Vec<_>>(), ["r1"]);
    assert_eq!(
        fleet.changes_of("r1"),
        [("baseline", "matches the selector".into())]
    );
    let start = fleet.revision("r1");
    fleet
        .until(&mut client, &mut events, "r1 commits", |f| {
            f.revision("r1") >= start + 3
        })
        .await;

    // Created matching: its whole history, from revision 1.
    add(&mut client, "r3", &b, &[("env", "lab")]).await;
    fleet
        .until(&mut client, &mut events, "r3 followed", |f| {
            f.revision("r3") >= 2
        })
        .await;
    assert_eq!(fleet.changes_of("r3"), [("baseline", "created".into())]);
    assert!(
        fleet
            .changes
            .iter()
            .any(|(n, _, revision, _)| n == "r3" && *revision == 0),
        "r3 from revision 1: {:?}",
        fleet.changes
    );

    // There before the watch, relabelled to match: from its revision then.
    relabel(&mut client, "r4", &[("env", "lab")]).await;
    fleet
        .until(&mut client, &mut events, "r4 followed", |f| {
            f.copies.contains_key("r4")
        })
        .await;
    assert_eq!(
        fleet.changes_of("r4"),
        [("baseline", "its labels now match the selector".into())]
    );
    assert!(fleet.revision("r4") > 0);

    // Relabelled away: it leaves.
    relabel(&mut client, "r1", &[("env", "prod")]).await;
    fleet
        .until(&mut client, &mut events, "r1 left", |f| {
            !f.copies.contains_key("r1")
        })
        .await;
    assert_eq!(
        fleet.changes_of("r1")[1..],
        [("left", "its labels no longer match the selector".into())]
    );

    // A new address restarts r3's sync: the watch continues it (consecutive
    // revisions, checked by the fleet), with no Left and no new Baseline.
    readdress(&mut client, "r3", &a).await;
    let restarted = wait_revision(&mut client, "r3", 0).await;
    let on_a = wait_revision(&mut client, "r3", restarted + 3).await;
    fleet
        .until(&mut client, &mut events, "r3 on a", |f| {
            f.revision("r3") >= on_a
        })
        .await;
    assert_eq!(fleet.changes_of("r3"), [("baseline", "created".into())]);

    // Deleted: it leaves.
    delete(&mut client, "r3").await;
    fleet
        .until(&mut client, &mut events, "r3 left", |f| {
            !f.copies.contains_key("r3")
        })
        .await;
    assert_eq!(fleet.changes_of("r3")[1..], [("left", "deleted".into())]);

    a.stop_churn().await;
    b.stop_churn().await;
    let r4 = wait_revision(&mut client, "r4", 0).await;
    fleet
        .until(&mut client, &mut events, "r4 caught up", |f| {
            f.revision("r4") >= r4
        })
        .await;
    assert!(fleet.changes_of("r2").is_empty(), "r2 never matched");
    fleet.assert_equal_to_running(&mut client).await;
    drop(events);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_continues_every_datastore_where_it_was() {
    let a = Sim::start(generated(30)).await;
    let b = Sim::start(generated(30)).await;
    let (_dir, server, mut client) = support::start().await;
    add(&mut client, "r1", &a, &[]).await;
    add(&mut client, "r2", &a, &[]).await;
    a.start_churn(20.0).await;

    let mut reader = server.client().await;
    let mut events = watch_many(&mut reader, "", "").await.unwrap();
    let mut fleet = Fleet::default();
    fleet
        .until(&mut client, &mut events, "both followed", |f| {
            f.progress > 0 && f.revision("r1") >= 3 && f.revision("r2") >= 3
        })
        .await;
    // Up to the next Progress: the copies are exactly what its token holds.
    let seen = fleet.progress;
    fleet
        .until(&mut client, &mut events, "a Progress", |f| {
            f.progress > seen
        })
        .await;
    drop(events);
    let mut held = fleet.clone();
    let r1 = held.revision("r1");

    // Meanwhile: more commits, a datastore created, one deleted.
    wait_revision(&mut client, "r1", r1 + 3).await;
    add(&mut client, "r3", &b, &[]).await;
    delete(&mut client, "r2").await;

    let mut resumed = watch_many(&mut reader, "", &held.token).await.unwrap();
    held.until(&mut client, &mut resumed, "resumed", |f| {
        f.revision("r1") >= r1 + 3 && f.revision("r3") >= 1 && !f.copies.contains_key("r2")
    })
    .await;
    let after: Vec<_> = held.changes[fleet.changes.len()..].to_vec();
    assert!(
        after
            .iter()
            .any(|(n, kind, _, reason)| n == "r2" && *kind == "left" && reason == "deleted"),
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .any(|(n, kind, rev, _)| n == "r3" && *kind == "baseline" && *rev == 0),
        "{after:?}"
    );
    assert!(
        after.iter().all(|(n, ..)| n != "r1"),
        "r1 continues without a new Baseline: {after:?}"
    );
    a.stop_churn().await;
    held.assert_equal_to_running(&mut client).await;

    // A token belongs to its selector.
    let status = watch_many(&mut reader, "env=lab", &held.token)
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, &["resume_token", "env=lab"]);
    drop(resumed);
    server.stop().await;
}

#[tokio::test]
async fn bad_watches_of_many_are_refused_naming_the_field() {
    let (_dir, server, mut client) = support::start().await;
    client
        .create_datastore(DatastoreBuilder::every_field("r1").create())
        .await
        .unwrap();
    let many = |f: fn(&mut pb::WatchSyncRequest)| {
        let mut request = pb::WatchSyncRequest::default();
        f(&mut request);
        request
    };
    for (request, words) in [
        (
            many(|r| {
                r.datastore = "r1".into();
                r.label_selector = "env=lab".into();
            }),
            &["label_selector", "datastore empty"][..],
        ),
        (
            many(|r| {
                r.datastore = "r1".into();
                r.resume_token = "x".into();
            }),
            &["resume_token"],
        ),
        (
            many(|r| r.from_revision = 3),
            &["from_revision", "resume_token"],
        ),
        (many(|r| r.expected_uid = "u".into()), &["expected_uid"]),
        (
            many(|r| r.label_selector = "env in (lab".into()),
            &["label_selector"],
        ),
        (
            many(|r| r.resume_token = "not a token".into()),
            &["resume_token"],
        ),
    ] {
        let status = client.watch_sync(request.clone()).await.unwrap_err();
        assert_status(&status, Code::InvalidArgument, words);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_many_is_one_call_and_one_watcher() {
    let sim = Sim::start(generated(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Netsyncd::start_with(
        &dir.path().join("n.db"),
        Options {
            args: [
                "--max-concurrent-streams",
                "4",
                "--max-watchers-per-datastore",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    );
    let mut client = client::Client::new(netsync_testkit::channel(daemon.addr).await);
    for n in 0..8 {
        add(&mut client, &format!("r{n}"), &sim, &[]).await;
    }
    for n in 0..8 {
        converge(&mut client, &format!("r{n}"), &sim).await;
    }
    // Eight datastores in one call on this connection, which allows four.
    let mut events = watch_many(&mut client, "", "").await.unwrap();
    let mut fleet = Fleet::default();
    fleet
        .until(&mut client, &mut events, "the first Progress", |f| {
            f.progress > 0
        })
        .await;
    assert_eq!(fleet.copies.len(), 8);
    // It took no datastore's watcher slot: r0's one slot is free...
    let mut single = client::watch_uid(&mut client, "r0", 0, "").await.unwrap();
    client::next_event(&mut single).await;
    // ...and now taken.
    let status = client::watch_uid(&mut client, "r0", 0, "")
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["max_watchers_per_datastore"],
    );
    // Watches of many count together against the same limit.
    let status = watch_many(&mut client, "", "").await.unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["watches of many datastores", "max_watchers_per_datastore"],
    );
    fleet.assert_equal_to_running(&mut client).await;
    drop((events, single));
    daemon.terminate();
}

/// The README's grpcurl lines: a watch of many by label selector, then
/// resumed with the token of its last Progress event (JSON names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_watches_many_and_resumes_with_the_token() {
    let Some(grpcurl) = netsync_testkit::tools::grpcurl() else {
        return;
    };
    let sim = Sim::start(generated(10)).await;
    let (_dir, server, mut client) = support::start().await;
    add(&mut client, "r1", &sim, &[("env", "lab")]).await;
    converge(&mut client, "r1", &sim).await;
    let addr = server.addr.to_string();
    // grpcurl streams until -max-time ends the call (exit status non-zero).
    let watch = move |body: String| {
        let output = std::process::Command::new(&grpcurl)
            .args(["-plaintext", "-max-time", "2", "-d", &body, &addr])
            .arg("netsync.v1.NetSync/WatchSync")
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let first = tokio::task::spawn_blocking({
        let watch = watch.clone();
        move || watch(r#"{"labelSelector": "env=lab"}"#.to_string())
    })
    .await
    .unwrap();
    assert!(first.contains("\"baseline\""), "{first}");
    assert!(first.contains("\"datastore\": \"r1\""), "{first}");
    let token = first
        .split("\"resumeToken\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a Progress with a resumeToken: {first}"))
        .to_string();
    let resumed = tokio::task::spawn_blocking(move || {
        watch(format!(
            r#"{{"labelSelector": "env=lab", "resumeToken": "{token}"}}"#
        ))
    })
    .await
    .unwrap();
    assert!(
        !resumed.contains("\"baseline\""),
        "r1 continues where the token was: {resumed}"
    );
    assert!(resumed.contains("\"progress\""), "{resumed}");
    server.stop().await;
}
