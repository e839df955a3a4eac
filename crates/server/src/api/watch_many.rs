//! WatchSync of many datastores: every datastore whose labels match a
//! selector, in one stream, including datastores created or relabelled while
//! it runs.
//!
//! It is made of the single-datastore watches of [`super::watch`], one per
//! datastore followed, with their byte budgets and replay from the log, and
//! one task that merges their messages into the client's stream a message at
//! a time (a channel of one: nothing is taken from a datastore's queue before
//! the client's stream has room). That task alone knows what was handed to
//! the stream, so it keeps each datastore's position exactly: the first
//! revision not sent whole and how many parts of it were. With that:
//! - a datastore's watch cut for being slow (its budget, the ring, the total
//!   of all watchers) is started again at its position: its revisions come
//!   from the log at the client's pace. The stream is not ended for it;
//! - a datastore whose sync restarted (UpdateDatastore) continues where it
//!   was; one deleted, or whose labels stop matching, is announced `Left`;
//! - a datastore whose next revision is no longer kept gets a new `Baseline`
//!   at its current revision;
//! - a `Progress` event carries a resume token that encodes every followed
//!   datastore's position (and the selector). It is sent when the stream goes
//!   quiet after events (at most about once a second) and at least every
//!   [`BUSY_PROGRESS`] while events flow: the token grows with the number of
//!   datastores (tens of bytes each), so it is not put on every event. The
//!   token is never put in a status either (it may pass the size of the
//!   headers a client accepts); a stream that ends with an error sends a
//!   `Progress` event first.
//!
//! Membership comes from [`Engine::members`], looked at again whenever
//! [`Engine::members_changed`] moves (a sync started or stopped, labels set).
//! In replica mode it comes from the database instead, every datastore
//! whichever replica syncs it, looked at again at each notification of the
//! `Datastores` channel (a datastore created, updated or deleted through any
//! replica), after a reconnect of the listener, and every
//! [`crate::notify::BACKSTOP`]. A datastore synced here is followed by its
//! sync's watch, any other one from the log (see [`super::watch`]); neither
//! ends when the datastore's lease moves (the first goes on from the log),
//! so the positions stay exact through failovers and rebalancing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use netsync_core::sync::SyncHandle;
use netsync_proto::netsync::v1 as pb;
use prost::Message as _;
use tokio::sync::{broadcast, mpsc, watch as tokio_watch};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::watch::{EncodedStream, Follow, watch, watch_log};
use crate::convert::{self, ValueFormat};
use crate::engine::Engine;
use crate::error::Error;
use crate::limits::WatchMemory;
use crate::log::CommitLog;
use crate::notify::{self, Channel, Notice};
use crate::selector::Selector;
use crate::store::DatastoreRow;

/// A quiet stream sends Progress at most this often.
const QUIET_PROGRESS: Duration = Duration::from_secs(1);

/// A busy stream sends Progress at least this often.
pub const BUSY_PROGRESS: Duration = Duration::from_secs(10);

/// What a watch of many datastores needs from the service.
pub struct Many {
    /// The datastores.
    pub engine: Arc<Engine>,
    /// Their change log.
    pub log: Arc<CommitLog>,
    /// The selector as the client wrote it (`label_selector`).
    pub selector: String,
    /// The resume token, if the client sent one.
    pub resume_token: String,
    /// How values are written.
    pub format: ValueFormat,
    /// The watchers' byte budgets.
    pub memory: Arc<WatchMemory>,
    /// Cancelled when netsyncd shuts down.
    pub stopping: CancellationToken,
    /// Replica mode: every datastore of the database is a member, followed
    /// from the log when another replica syncs it.
    pub follow: Option<Follow>,
}

/// A datastore the watch can follow.
#[derive(Debug, Clone)]
struct Member {
    /// Its sync, when this process runs it (always, outside replica mode).
    sync: Option<Arc<SyncHandle>>,
    /// The incarnation.
    uid: String,
    /// Its labels.
    labels: BTreeMap<String, String>,
}

impl Member {
    fn of_engine(member: crate::engine::Member) -> Self {
        Self {
            sync: Some(member.sync),
            uid: member.uid,
            labels: member.labels,
        }
    }

    /// Its sync, not kept alive (none when followed from the log).
    fn weak_sync(&self) -> Weak<SyncHandle> {
        self.sync.as_ref().map_or_else(Weak::new, Arc::downgrade)
    }
}

/// Starts a watch of many datastores: validates the selector and the token
/// (INVALID_ARGUMENT naming `label_selector` or `resume_token`), then streams.
pub async fn watch_many(many: Many) -> Result<EncodedStream, Error> {
    let selector =
        Selector::parse(&many.selector).map_err(|m| Error::invalid("label_selector", m))?;
    let resumed = if many.resume_token.is_empty() {
        None
    } else {
        let token = Token::decode(&many.resume_token)?;
        if token.selector != many.selector {
            return Err(Error::invalid(
                "resume_token",
                format!(
                    "was issued for the label_selector {:?}, not {:?}",
                    token.selector, many.selector
                ),
            ));
        }
        Some(token)
    };
    let (out, receiver) = mpsc::channel(1);
    let watches = many.stopping.child_token();
    let mut merger = Merger {
        members_changed: many.engine.members_changed(),
        notices: many.follow.as_ref().map(|f| f.notices.subscribe()),
        follow: many.follow,
        look_by: Instant::now() + notify::BACKSTOP,
        engine: many.engine,
        log: many.log,
        selector,
        selector_text: many.selector,
        format: many.format,
        memory: many.memory,
        stopping: many.stopping,
        watches,
        out,
        streams: StreamMap::new(),
        followed: BTreeMap::new(),
        seen: HashMap::new(),
        pending: VecDeque::new(),
        dirty: false,
        last_progress: None,
    };
    merger.begin(resumed).await?;
    // The first Progress follows the Baselines of the datastores matching
    // now: a client knows it has them all, and holds a token from the start.
    merger.dirty = true;
    tokio::spawn(async move {
        // Every datastore's watch ends with this task: the client left, or
        // the stream ended.
        let _watches = merger.watches.clone().drop_guard();
        merger.run().await;
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

/// Where a followed datastore's events stand in the client's stream.
#[derive(Debug)]
struct Followed {
    uid: String,
    /// The sync its watch follows (not kept alive by it): a restarted
    /// datastore has another.
    sync: Weak<SyncHandle>,
    /// The first revision not sent whole.
    next: u64,
    /// Parts of `next` sent.
    parts: u64,
    /// Its watch ended with its sync; it continues when the datastore's new
    /// sync is a member (or leaves when it is gone).
    detached: bool,
}

/// The task that merges the datastores' watches into the client's stream.
struct Merger {
    engine: Arc<Engine>,
    log: Arc<CommitLog>,
    selector: Selector,
    selector_text: String,
    format: ValueFormat,
    memory: Arc<WatchMemory>,
    /// netsyncd's shutdown.
    stopping: CancellationToken,
    /// Ends the datastores' watches (a child of `stopping`).
    watches: CancellationToken,
    members_changed: tokio_watch::Receiver<u64>,
    /// Replica mode: every notification, to look at the members again when
    /// a datastore changed.
    notices: Option<broadcast::Receiver<Notice>>,
    /// Replica mode: how datastores are followed from the log.
    follow: Option<Follow>,
    /// Replica mode: the members are looked at again by then at the latest.
    look_by: Instant,
    out: mpsc::Sender<Result<Bytes, Status>>,
    streams: StreamMap<String, EncodedStream>,
    followed: BTreeMap<String, Followed>,
    /// The uid of every member when the watch started, matching or not,
    /// and of every datastore followed since: one not in it was created
    /// after the watch started, and is followed from its first revision
    /// (whatever the order in which its creation and a relabelling are
    /// seen).
    seen: HashMap<String, String>,
    /// Baseline and Left events to send before anything else.
    pending: VecDeque<Bytes>,
    /// Events were sent since the last Progress.
    dirty: bool,
    last_progress: Option<Instant>,
}

/// The stream cannot go on: the status to end it with (`None`: the client
/// left).
struct Stop(Option<Status>);

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Self(Some(error.into()))
    }
}

impl Merger {
    /// Follows every matching member: from the token's positions, else from
    /// now on, each announced with a Baseline.
    async fn begin(&mut self, resumed: Option<Token>) -> Result<(), Error> {
        let members = members(&self.engine, self.follow.as_ref()).await?;
        let resumed_any = resumed.is_some();
        let mut positions: HashMap<String, Position> = resumed
            .map(|t| {
                t.positions
                    .into_iter()
                    .map(|p| (p.datastore.clone(), p))
                    .collect()
            })
            .unwrap_or_default();
        let resuming = resumed_any;
        for (name, member) in &members {
            if !self.selector.matches(&member.labels) {
                continue;
            }
            match positions.remove(name) {
                Some(p) if p.uid == member.uid => {
                    self.follow(name, member, p.next, p.parts).await?;
                }
                Some(_) => {
                    self.left(
                        name,
                        &member.uid,
                        "deleted (a datastore of that name was created since)",
                    );
                    self.join_from_start(name, member, "created").await?;
                }
                None if resuming => {
                    self.join_from_start(name, member, "not in the resume token")
                        .await?;
                }
                None => {
                    self.join_now(name, member, "matches the selector").await?;
                }
            }
        }
        for (name, p) in positions {
            let reason = match members.get(&name) {
                Some(m) if m.uid == p.uid => "its labels no longer match the selector",
                _ => "deleted",
            };
            self.left(&name, &p.uid, reason);
        }
        self.seen = members
            .iter()
            .map(|(name, m)| (name.clone(), m.uid.clone()))
            .collect();
        Ok(())
    }

    async fn run(mut self) {
        let out = self.out.clone();
        loop {
            // Room for one message first: nothing is taken from a
            // datastore's queue that the client's stream cannot take.
            let permit = tokio::select! {
                permit = out.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = self.stopping.cancelled() => return self.end(shutting_down()).await,
            };
            match self.next_message().await {
                Ok(message) => permit.send(Ok(message)),
                Err(Stop(None)) => return,
                Err(Stop(Some(status))) => {
                    drop(permit);
                    return self.end(status).await;
                }
            }
        }
    }

    /// Ends the stream with `status`, after a Progress event that accounts
    /// for everything sent.
    async fn end(&mut self, status: Status) {
        if self.dirty {
            let progress = self.progress();
            if self.out.send(Ok(progress)).await.is_err() {
                return;
            }
        }
        let _ = self.out.send(Err(status)).await;
    }

    /// The next message for the client.
    async fn next_message(&mut self) -> Result<Bytes, Stop> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                self.dirty = true;
                return Ok(message);
            }
            let now = Instant::now();
            if self.dirty
                && self
                    .last_progress
                    .is_none_or(|at| now >= at + BUSY_PROGRESS)
            {
                return Ok(self.progress());
            }
            let quiet_at = self.last_progress.map_or(now, |at| at + QUIET_PROGRESS);
            tokio::select! {
                biased;
                () = self.stopping.cancelled() => return Err(Stop(Some(shutting_down()))),
                () = self.out.closed() => return Err(Stop(None)),
                // Replica mode: starts and stops of syncs here change no
                // member (its watch goes on from the log), so only the
                // database is looked at.
                changed = self.members_changed.changed(), if self.follow.is_none() => {
                    if changed.is_err() {
                        return Err(Stop(Some(shutting_down())));
                    }
                    self.look_again().await?;
                }
                () = datastores_changed(&mut self.notices, self.look_by) => self.look_again().await?,
                Some((name, message)) = futures::StreamExt::next(&mut self.streams) => {
                    match message {
                        Ok(bytes) => {
                            self.sent(&name, &bytes);
                            self.dirty = true;
                            return Ok(bytes);
                        }
                        Err(status) => self.watch_ended(&name, status).await?,
                    }
                }
                () = tokio::time::sleep_until(quiet_at), if self.dirty => return Ok(self.progress()),
            }
        }
    }

    /// Notes a message of `name` handed to the client.
    fn sent(&mut self, name: &str, bytes: &Bytes) {
        let Some(followed) = self.followed.get_mut(name) else {
            return;
        };
        let Ok(head) = EventHead::decode(bytes.clone()) else {
            return;
        };
        if let Some(commit) = head.commit {
            if commit.more {
                followed.next = head.revision;
                followed.parts += 1;
            } else {
                followed.next = head.revision + 1;
                followed.parts = 0;
            }
        }
    }

    /// A datastore's watch ended with `status`.
    async fn watch_ended(&mut self, name: &str, status: Status) -> Result<(), Stop> {
        let Some(followed) = self.followed.get(name) else {
            return Ok(());
        };
        let (uid, next, parts) = (followed.uid.clone(), followed.next, followed.parts);
        if self.follow.is_some() && status.code() == Code::Unavailable {
            if self.stopping.is_cancelled() {
                return Err(Stop(Some(shutting_down())));
            }
            // Replica mode: its watch follows the log through lease moves,
            // so it ended for its deletion (the next look says Left), or
            // could not read the log for a moment (it goes on).
            match member(&self.engine, self.follow.as_ref(), name).await? {
                Some(member) if member.uid == uid => {
                    self.follow(name, &member, next, parts).await?;
                }
                _ => self.detach(name),
            }
            return Ok(());
        }
        match status.code() {
            // Cut for being slow: the log has what it had not sent.
            Code::ResourceExhausted => {
                match member(&self.engine, self.follow.as_ref(), name).await? {
                    Some(member) if member.uid == uid => {
                        self.follow(name, &member, next, parts).await?;
                    }
                    _ => self.detach(name),
                }
            }
            Code::Unavailable => {
                if self.stopping.is_cancelled() {
                    return Err(Stop(Some(shutting_down())));
                }
                // Its sync stopped: restarted (a new sync is, or will be,
                // a member) or deleted (the next look says Left).
                let old = followed.sync.clone();
                match member(&self.engine, self.follow.as_ref(), name).await? {
                    Some(member)
                        if member.uid == uid && !Weak::ptr_eq(&old, &member.weak_sync()) =>
                    {
                        self.follow(name, &member, next, parts).await?;
                    }
                    _ => self.detach(name),
                }
            }
            Code::OutOfRange => match member(&self.engine, self.follow.as_ref(), name).await? {
                Some(member) if member.uid == uid => {
                    let reason = format!("revisions from {next} are no longer kept");
                    self.join_now(name, &member, &reason).await?;
                }
                _ => self.detach(name),
            },
            _ => return Err(Stop(Some(status))),
        }
        Ok(())
    }

    fn detach(&mut self, name: &str) {
        self.streams.remove(name);
        if let Some(followed) = self.followed.get_mut(name) {
            followed.detached = true;
        }
    }

    /// The members changed: follows the datastores that came to match,
    /// lets go of those that left, continues those whose sync restarted.
    async fn look_again(&mut self) -> Result<(), Stop> {
        self.look_by = Instant::now() + notify::BACKSTOP;
        let members = members(&self.engine, self.follow.as_ref()).await?;
        let gone: Vec<(String, String)> = self
            .followed
            .iter()
            .filter(|(name, f)| {
                members
                    .get(*name)
                    .is_none_or(|m| m.uid != f.uid || !self.selector.matches(&m.labels))
            })
            .map(|(name, f)| (name.clone(), f.uid.clone()))
            .collect();
        for (name, uid) in gone {
            let reason = match members.get(&name) {
                Some(m) if m.uid == uid => "its labels no longer match the selector",
                _ => "deleted",
            };
            self.left(&name, &uid, reason);
        }
        for (name, member) in &members {
            if !self.selector.matches(&member.labels) {
                continue;
            }
            match self.followed.get(name) {
                Some(f) if f.detached && !Weak::ptr_eq(&f.sync, &member.weak_sync()) => {
                    let (next, parts) = (f.next, f.parts);
                    self.follow(name, member, next, parts).await?;
                }
                Some(_) => {}
                None if self.seen.get(name) == Some(&member.uid) => {
                    self.join_now(name, member, "its labels now match the selector")
                        .await?;
                }
                None => self.join_from_start(name, member, "created").await?,
            }
        }
        Ok(())
    }

    /// Announces that `name` left the watch and stops following it.
    fn left(&mut self, name: &str, uid: &str, reason: &str) {
        self.streams.remove(name);
        let revision = self
            .followed
            .remove(name)
            .map_or(0, |f| f.next.saturating_sub(1));
        self.pending.push_back(crate::watch::encode(&pb::SyncEvent {
            datastore: name.to_string(),
            revision,
            time: Some(convert::timestamp_to_proto(SystemTime::now())),
            uid: uid.to_string(),
            event: Some(pb::sync_event::Event::Left(pb::Left {
                reason: reason.to_string(),
            })),
            ..Default::default()
        }));
    }

    /// Follows `member` from its revision 1 when the log still has it (a
    /// new datastore: its whole history), else from now on.
    async fn join_from_start(
        &mut self,
        name: &str,
        member: &Member,
        reason: &str,
    ) -> Result<(), Error> {
        let oldest = self.log.oldest(name).await?;
        if oldest.is_none_or(|oldest| oldest == 1) {
            self.baseline(name, member, 0, reason);
            self.follow(name, member, 1, 0).await
        } else {
            self.join_now(name, member, reason).await
        }
    }

    /// Follows `member` from its current revision on, announced with a
    /// Baseline at it.
    async fn join_now(&mut self, name: &str, member: &Member, reason: &str) -> Result<(), Error> {
        let current = current(&self.log, name, member).await?;
        self.baseline(name, member, current, reason);
        self.follow(name, member, current + 1, 0).await
    }

    fn baseline(&mut self, name: &str, member: &Member, revision: u64, reason: &str) {
        self.pending.push_back(crate::watch::encode(&pb::SyncEvent {
            datastore: name.to_string(),
            revision,
            time: Some(convert::timestamp_to_proto(SystemTime::now())),
            uid: member.uid.clone(),
            event: Some(pb::sync_event::Event::Baseline(pb::Baseline {
                reason: reason.to_string(),
            })),
            ..Default::default()
        }));
    }

    /// Starts the watch of `member` at revision `next`, its first `parts`
    /// parts already sent. A revision no longer kept gets a Baseline at the
    /// current one instead.
    async fn follow(
        &mut self,
        name: &str,
        member: &Member,
        next: u64,
        parts: u64,
    ) -> Result<(), Error> {
        let (stream, next, parts) = match self.watch(name, member, next, parts).await {
            Ok(stream) => (stream, next, parts),
            Err(Error::Revision { .. }) => {
                let current = current(&self.log, name, member).await?;
                self.baseline(
                    name,
                    member,
                    current,
                    &format!("revisions from {next} are no longer kept"),
                );
                (
                    self.watch(name, member, current + 1, 0).await?,
                    current + 1,
                    0,
                )
            }
            Err(e) => return Err(e),
        };
        self.streams.insert(name.to_string(), stream);
        self.seen.insert(name.to_string(), member.uid.clone());
        self.followed.insert(
            name.to_string(),
            Followed {
                uid: member.uid.clone(),
                sync: member.weak_sync(),
                next,
                parts,
                detached: false,
            },
        );
        Ok(())
    }

    /// The single watch of `member` from `next`, its first `parts` parts
    /// skipped: its sync's, or in replica mode the log's when it runs
    /// elsewhere. (Not an `async fn` of `&self`: the merger would have to be
    /// `Sync` for its task to hold that across the wait.)
    fn watch(
        &self,
        name: &str,
        member: &Member,
        next: u64,
        parts: u64,
    ) -> impl Future<Output = Result<EncodedStream, Error>> + Send + use<> {
        let (sync, uid, name) = (member.sync.clone(), member.uid.clone(), name.to_string());
        let (log, format, follow) = (self.log.clone(), self.format, self.follow.clone());
        let (memory, watches) = (self.memory.clone(), self.watches.clone());
        let skip = usize::try_from(parts).unwrap_or(usize::MAX);
        async move {
            match (sync, follow) {
                (Some(sync), follow) => {
                    watch(sync, uid, log, next, skip, format, &memory, watches, follow).await
                }
                (None, Some(follow)) => {
                    watch_log(name, uid, log, next, skip, format, &memory, watches, follow).await
                }
                (None, None) => unreachable!("outside replica mode every member has its sync"),
            }
        }
    }

    /// A Progress event with the token of every followed datastore's
    /// position.
    fn progress(&mut self) -> Bytes {
        self.dirty = false;
        self.last_progress = Some(Instant::now());
        let token = Token {
            version: TOKEN_VERSION,
            selector: self.selector_text.clone(),
            positions: self
                .followed
                .iter()
                .map(|(name, f)| Position {
                    datastore: name.clone(),
                    uid: f.uid.clone(),
                    next: f.next,
                    parts: f.parts,
                })
                .collect(),
        };
        crate::watch::encode(&pb::SyncEvent {
            time: Some(convert::timestamp_to_proto(SystemTime::now())),
            resume_token: token.encode_text(),
            event: Some(pb::sync_event::Event::Progress(pb::Progress {})),
            ..Default::default()
        })
    }
}

/// Replica mode: returns when a datastore may have been created, changed or
/// deleted (notified, notifications missed, or the backstop); never outside
/// replica mode.
async fn datastores_changed(notices: &mut Option<broadcast::Receiver<Notice>>, backstop: Instant) {
    let Some(notices) = notices else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(backstop) => return,
            notice = notices.recv() => match notice {
                Ok(Notice::Changed { channel: Channel::Datastores, .. })
                | Ok(Notice::Missed)
                | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Ok(Notice::Changed { .. }) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            },
        }
    }
}

/// Every member, by name: the engine's syncs, or in replica mode every
/// datastore in the database (but those held stopped, whose declaration
/// cannot be used), with its sync when it runs here.
async fn members(
    engine: &Engine,
    follow: Option<&Follow>,
) -> Result<BTreeMap<String, Member>, Error> {
    let Some(follow) = follow else {
        return Ok(engine
            .members()
            .into_iter()
            .map(|m| (m.sync.name().to_string(), Member::of_engine(m)))
            .collect());
    };
    Ok(follow
        .store
        .list_datastore_rows()
        .await?
        .into_iter()
        .filter_map(|row| match row {
            DatastoreRow::Readable(ds) => {
                let member = stored_member(engine, ds.spec.name.clone(), ds.uid, ds.labels);
                Some(member)
            }
            DatastoreRow::Unreadable { .. } => None,
        })
        .collect())
}

/// The member `name`, if there is one.
async fn member(
    engine: &Engine,
    follow: Option<&Follow>,
    name: &str,
) -> Result<Option<Member>, Error> {
    let Some(follow) = follow else {
        return Ok(engine.member(name).map(Member::of_engine));
    };
    match follow.store.get_datastore_row(name).await {
        Ok(DatastoreRow::Readable(ds)) => Ok(Some(
            stored_member(engine, ds.spec.name, ds.uid, ds.labels).1,
        )),
        Ok(DatastoreRow::Unreadable { .. }) | Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A datastore of the database as a member: with its sync if this
/// replica runs that incarnation.
fn stored_member(
    engine: &Engine,
    name: String,
    uid: String,
    labels: BTreeMap<String, String>,
) -> (String, Member) {
    let sync = engine
        .get_with_uid(&name)
        .filter(|(_, synced)| *synced == uid)
        .map(|(sync, _)| sync);
    (name, Member { sync, uid, labels })
}

/// The current revision of `member`: its sync's, or the newest logged.
async fn current(log: &CommitLog, name: &str, member: &Member) -> Result<u64, Error> {
    match &member.sync {
        Some(sync) => Ok(sync.snapshot().revision),
        None => Ok(log.newest(name).await?.unwrap_or(0)),
    }
}

fn shutting_down() -> Status {
    Status::unavailable(
        "netsyncd is shutting down; resume with the resume_token of the last Progress event",
    )
}

/// What of a `SyncEvent` the merger reads to keep positions: decoded without
/// the leaves (skipped, not copied).
#[derive(Clone, PartialEq, prost::Message)]
struct EventHead {
    #[prost(uint64, tag = "2")]
    revision: u64,
    #[prost(message, optional, tag = "11")]
    commit: Option<CommitHead>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CommitHead {
    #[prost(bool, tag = "4")]
    more: bool,
}

/// The layout of resume tokens this build writes and reads.
const TOKEN_VERSION: u32 = 1;

/// A resume token: base64url of this message. Opaque to clients.
#[derive(Clone, PartialEq, prost::Message)]
struct Token {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(string, tag = "2")]
    selector: String,
    #[prost(message, repeated, tag = "3")]
    positions: Vec<Position>,
}

/// One datastore's position in a token.
#[derive(Clone, PartialEq, prost::Message)]
struct Position {
    #[prost(string, tag = "1")]
    datastore: String,
    #[prost(string, tag = "2")]
    uid: String,
    /// The first revision not sent whole.
    #[prost(uint64, tag = "3")]
    next: u64,
    /// Parts of it sent.
    #[prost(uint64, tag = "4")]
    parts: u64,
}

impl Token {
    fn encode_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.encode_to_vec())
    }

    /// A token as a client sent it back; INVALID_ARGUMENT naming
    /// `resume_token` if it is not one this build wrote.
    fn decode(text: &str) -> Result<Self, Error> {
        let invalid = || {
            Error::invalid(
                "resume_token",
                "is not a resume token of this server (take it from a Progress event)",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let token = Self::decode_bytes(&bytes).map_err(|_| invalid())?;
        if token.version != TOKEN_VERSION
            || token
                .positions
                .iter()
                .any(|p| p.next == 0 || p.datastore.is_empty())
        {
            return Err(invalid());
        }
        Ok(token)
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        <Self as prost::Message>::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_written() {
        let token = Token {
            version: TOKEN_VERSION,
            selector: "env=lab".into(),
            positions: vec![Position {
                datastore: "r1".into(),
                uid: "u".into(),
                next: 7,
                parts: 2,
            }],
        };
        assert_eq!(Token::decode(&token.encode_text()).unwrap(), token);
    }

    #[test]
    fn foreign_tokens_are_refused_naming_the_field() {
        let zero = Token {
            version: TOKEN_VERSION,
            selector: String::new(),
            positions: vec![Position {
                datastore: "r1".into(),
                uid: "u".into(),
                next: 0,
                parts: 0,
            }],
        };
        let other_version = Token {
            version: 2,
            ..zero.clone()
        };
        for text in [
            "not base64!".to_string(),
            URL_SAFE_NO_PAD.encode([0xff, 0xff, 0xff]),
            zero.encode_text(),
            other_version.encode_text(),
        ] {
            let error = Token::decode(&text).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument { field, .. } if field == "resume_token"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn the_head_of_an_event_is_read_without_its_leaves() {
        let part = pb::SyncEvent {
            datastore: "r1".into(),
            revision: 9,
            event: Some(pb::sync_event::Event::Commit(pb::Commit {
                more: true,
                updates: vec![pb::Leaf {
                    path: "/a".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let head = EventHead::decode(crate::watch::encode(&part)).unwrap();
        assert_eq!(head.revision, 9);
        assert!(head.commit.unwrap().more);
    }
}
