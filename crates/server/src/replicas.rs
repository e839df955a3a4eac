//! Several netsyncd replicas on one PostgreSQL database (`--replicas`): each
//! datastore is synced by exactly one replica at a time, the owner of its
//! lease row, and moves when replicas join, leave or die.
//!
//! One task per replica, the lease manager, runs a round every third of the
//! lease (and at once when a datastore is created here):
//!
//! 1. heartbeat: its `replicas` row's `seen` is set to the database's now;
//!    live replicas are those seen within the lease;
//! 2. each datastore's desired owner is the live replica with the highest
//!    rendezvous hash of (replica id, datastore name), so every replica
//!    computes the same owner from the same live set, and a replica joining
//!    or leaving moves only its own share;
//! 3. of the leases it holds, it renews those still desired for it, releases
//!    those desired for another (stops the sync first, then frees the lease)
//!    and drops at once those whose row names another owner or epoch (lost)
//!    or is gone (the datastore was deleted);
//! 4. it takes (epoch + 1, owner = itself, expires = now + lease) the leases
//!    desired for it that are free, expired or its own, and starts their
//!    syncs from what is stored (running loaded, resumed at the next
//!    revision with a resync).
//!
//! Every expiry is decided by the database's clock (`now()` in the
//! statements); the replica's own clock only measures, as elapsed time since
//! a renewal started, how long its lease surely lasts: a lease that could
//! not be renewed within the lease length (database unreachable, process
//! paused) stops its sync at once. Correctness does not rest on that stop:
//! every write of an owner is fenced by its epoch in the database
//! ([`crate::writer::Fence`]), so a replica that wakes up late writes
//! nothing; the stop only ends a sync that can no longer commit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netsync_proto::netsync::v1 as pb;
use prost::Message;
use sqlx::postgres::PgPool;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ReplicaConfig;
use crate::convert;
use crate::engine::{Engine, Update};
use crate::error::Error;
use crate::notify::{Channel, Notice, Notices};
use crate::store::{DatastoreRow, Store};
use crate::writer::Fence;

/// How long a round waits after a datastore was created elsewhere, for the
/// rest of a burst of creates.
const BURST: Duration = Duration::from_millis(100);

/// This replica's view of the leases, shared with the API and metrics.
#[derive(Debug)]
pub struct Replicas {
    config: ReplicaConfig,
    fence: Arc<Fence>,
    /// The owner of each datastore's valid lease as last read (`None`: free
    /// or expired), for the API's answer to calls about datastores synced
    /// elsewhere.
    owners: Mutex<HashMap<String, Option<String>>>,
    /// The status each datastore's owner last published (owner, encoded
    /// `DatastoreStatus`), as last read: what this replica shows of the
    /// datastores it does not sync.
    statuses: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Runs a round now (a datastore was created here).
    wake: Notify,
    takeovers: AtomicU64,
    losses: AtomicU64,
    /// Whether the last round reached the database.
    healthy: watch::Sender<bool>,
    /// The lease manager's connections, also used to name an owner.
    pool: PgPool,
    /// What other replicas change (see [`crate::notify`]).
    notices: Arc<Notices>,
    /// The API's reads of leases and statuses (GetDatastore, ListDatastores,
    /// watches): the store's readers, never the lease manager's own
    /// connections, so that a burst of calls cannot hold up renewals.
    reads: PgPool,
}

impl Replicas {
    /// The replica `config`, whose writes `fence` fences, its lease manager
    /// on `pool` (its own connections), the API's reads on `reads`.
    pub fn new(config: ReplicaConfig, fence: Arc<Fence>, pool: PgPool, reads: PgPool) -> Arc<Self> {
        Arc::new(Self {
            config,
            fence,
            owners: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            takeovers: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            healthy: watch::Sender::new(true),
            pool,
            notices: Notices::new(),
            reads,
        })
    }

    /// What other replicas change: commits, intents, datastores.
    pub fn notices(&self) -> &Arc<Notices> {
        &self.notices
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Datastores this replica owns now.
    pub fn owned(&self) -> usize {
        self.fence.owned().len()
    }

    /// Leases this replica took since it started.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }

    /// Leases this replica lost (taken over, or not renewed in time) since
    /// it started; releases to a replica that joined are not counted.
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }

    /// Whether the lease manager reaches the database; changes are announced.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Runs a round of the lease manager soon (a datastore was created).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Noted as free at once: a datastore created here.
    pub fn created(&self, name: &str) {
        self.owners
            .lock()
            .expect("lock")
            .insert(name.to_string(), None);
        self.poke();
    }

    /// The answer to a call about datastore `name`, which this replica does
    /// not sync: UNAVAILABLE naming its owner as the database has it now,
    /// or NOT_FOUND if it has no lease of that name (no such datastore).
    pub async fn not_here(&self, name: &str) -> Error {
        let lease: Result<Option<(Option<String>,)>, sqlx::Error> = sqlx::query_as(
            "SELECT CASE WHEN expires > now() THEN owner END FROM leases WHERE datastore = $1",
        )
        .bind(name)
        .fetch_optional(&self.reads)
        .await;
        let owner = match lease {
            Ok(lease) => lease.map(|(owner,)| owner),
            // The last round's view, when the database cannot say.
            Err(_) => self.owners.lock().expect("lock").get(name).cloned(),
        };
        match owner {
            Some(Some(owner)) if owner == self.config.id => Error::NotOwner(format!(
                "datastore {name:?} is being started on this replica ({owner:?}): retry"
            )),
            Some(Some(owner)) => Error::NotOwner(format!(
                "datastore {name:?} is synced by replica {owner:?}, not by this one \
                 ({:?}): ask that replica, or retry",
                self.config.id
            )),
            Some(None) => Error::NotOwner(format!(
                "datastore {name:?} is being taken over by another replica (no replica holds its \
                 lease at the moment): retry"
            )),
            None => Error::NotFound {
                kind: "datastore",
                name: name.to_string(),
            },
        }
    }

    /// Reads the leases and published statuses again (of `name` only, or
    /// of every datastore), for [`Replicas::status`] to be current
    /// (GetDatastore, ListDatastores); keeps the last view of what the
    /// database cannot say.
    pub async fn refresh(&self, name: Option<&str>) {
        let leases: Result<Vec<(String, Option<String>)>, sqlx::Error> = sqlx::query_as(
            "SELECT datastore, CASE WHEN expires > now() THEN owner END FROM leases \
             WHERE $1::text IS NULL OR datastore = $1",
        )
        .bind(name)
        .fetch_all(&self.reads)
        .await;
        let statuses: Result<Vec<(String, String, Vec<u8>)>, sqlx::Error> = sqlx::query_as(
            "SELECT datastore, owner, status FROM sync_status WHERE $1::text IS NULL OR datastore = $1",
        )
        .bind(name)
        .fetch_all(&self.reads)
        .await;
        if let Ok(leases) = leases {
            let mut owners = self.owners.lock().expect("lock");
            if name.is_none() {
                owners.clear();
            }
            owners.extend(leases);
        }
        if let Ok(rows) = statuses {
            let mut statuses = self.statuses.lock().expect("lock");
            match name {
                None => statuses.clear(),
                Some(name) => _ = statuses.remove(name),
            }
            statuses.extend(rows.into_iter().map(|(d, o, s)| (d, (o, s))));
        }
    }

    /// The status of datastore `name`, which this replica does not sync:
    /// as its owner last published it (at most a lease round old),
    /// CONNECTING while a replica is starting it, STOPPED while no replica
    /// holds its lease; `None` if no lease of that name is known.
    pub fn status(&self, name: &str) -> Option<pb::DatastoreStatus> {
        let owner = self.owners.lock().expect("lock").get(name)?.clone();
        let waiting = |state: pb::SyncState, why: String| pb::DatastoreStatus {
            state: state as i32,
            last_error: why,
            stats: Some(pb::SyncStats::default()),
            ..Default::default()
        };
        let Some(owner) = owner else {
            return Some(waiting(
                pb::SyncState::Stopped,
                "waiting for a replica to take its lease".into(),
            ));
        };
        let published = self
            .statuses
            .lock()
            .expect("lock")
            .get(name)
            .filter(|(by, _)| *by == owner)
            .and_then(|(_, status)| pb::DatastoreStatus::decode(status.as_slice()).ok());
        Some(published.unwrap_or_else(|| {
            waiting(
                pb::SyncState::Connecting,
                format!("being started by replica {owner:?}"),
            )
        }))
    }
}

/// Checks, before a replica serves, that the live replicas use its lease
/// length: every replica decides expiry with its own setting, so a shorter
/// one would take over leases another still renews in time for itself. An
/// error names the flag, the other replica and both values.
pub async fn check_peers(pool: &PgPool, config: &ReplicaConfig) -> Result<(), String> {
    let peers: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, lease_ms FROM replicas \
         WHERE id <> $1 AND lease_ms IS NOT NULL AND lease_ms <> $2 \
           AND seen > now() - make_interval(secs => lease_ms / 1000.0)",
    )
    .bind(&config.id)
    .bind(lease_ms(config))
    .fetch_all(pool)
    .await
    .map_err(|e| format!("cannot read the other replicas: {e}"))?;
    match peers.first() {
        None => Ok(()),
        Some((id, theirs)) => Err(format!(
            "--lease-seconds {} differs from replica {id:?}'s {} s: every replica of a database \
             must use the same lease length",
            config.lease.as_secs_f64(),
            *theirs as f64 / 1000.0
        )),
    }
}

/// The lease length as the `replicas` table records it.
fn lease_ms(config: &ReplicaConfig) -> i64 {
    i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX)
}

/// The lease manager's own state.
struct Manager {
    replicas: Arc<Replicas>,
    pool: PgPool,
    engine: Arc<Engine>,
    /// To the syncs task.
    orders: mpsc::UnboundedSender<Order>,
    /// When the last successful renewal (or the take) of each owned lease
    /// started, by this process's monotonic clock: the lease surely lasts
    /// until then plus the lease length.
    renewed: HashMap<String, Instant>,
    /// The status last published of each owned datastore (encoded).
    published: HashMap<String, Vec<u8>>,
}

/// Runs the lease manager of `replicas` until `stop`, then stops its syncs
/// and frees its leases, so that the other replicas take them at once.
pub async fn run(
    replicas: Arc<Replicas>,
    store: Store,
    engine: Arc<Engine>,
    stop: CancellationToken,
) {
    let period = replicas.config.lease / 3;
    let (orders, received) = mpsc::unbounded_channel();
    let syncs = tokio::spawn(syncs(
        replicas.clone(),
        replicas.pool.clone(),
        store,
        engine.clone(),
        received,
    ));
    let mut manager = Manager {
        pool: replicas.pool.clone(),
        replicas,
        engine,
        orders,
        renewed: HashMap::new(),
        published: HashMap::new(),
    };
    let mut ticks = tokio::time::interval(period);
    // After a pause (SIGSTOP), one round, not a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A datastore created through another replica is taken by its owner at
    // once, not at the owner's next tick.
    let mut notices = manager.replicas.notices.subscribe_to(Channel::Datastores);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = manager.replicas.wake.notified() => {}
            notice = notices.recv() => {
                // Creates come in bursts: one round for the burst. A notice
                // about a datastore synced here may be an update made
                // elsewhere; after a lost one, every datastore synced here
                // is read again.
                tokio::time::sleep(BURST).await;
                let mut changed = BTreeSet::new();
                let mut all = false;
                let mut next = Some(notice);
                while let Some(notice) = next.take() {
                    match notice {
                        Ok(Notice::Changed { datastore, .. }) => _ = changed.insert(datastore),
                        Ok(Notice::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => all = true,
                        Err(broadcast::error::RecvError::Closed) => {}
                    }
                    next = match notices.try_recv() {
                        Ok(notice) => Some(Ok(notice)),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Some(Err(broadcast::error::RecvError::Lagged(n)))
                        }
                        Err(_) => None,
                    };
                }
                let owned = manager.replicas.fence.owned();
                for name in owned.into_keys().filter(|name| all || changed.contains(name)) {
                    manager.order(Order::Refresh(name));
                }
            }
            () = stop.cancelled() => break,
        }
        manager.fence_expired();
        // Up to half the lease: a slow database (or a busy machine) still
        // renews in time; a round that takes longer counts as failed.
        let limit = manager.replicas.config.lease / 2;
        let failed = match tokio::time::timeout(limit, manager.round()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("it took longer than {limit:?}")),
        };
        if let Some(why) = &failed {
            tracing::warn!(error = %why, "lease round failed; leases not renewed stop their syncs when they expire");
        }
        manager.replicas.healthy.send_if_modified(|healthy| {
            std::mem::replace(healthy, failed.is_none()) == failed.is_some()
        });
    }
    manager.shut_down(syncs).await;
}

impl Manager {
    fn me(&self) -> &str {
        &self.replicas.config.id
    }

    fn lease_secs(&self) -> f64 {
        self.replicas.config.lease.as_secs_f64()
    }

    /// Stops at once the syncs whose lease may have expired unrenewed.
    fn fence_expired(&mut self) {
        let lease = self.replicas.config.lease;
        let now = Instant::now();
        let expired: Vec<String> = self
            .renewed
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= lease)
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            tracing::warn!(datastore = %name, "lease not renewed in time: its sync stops");
            self.replicas.fence.disown(&name);
            self.renewed.remove(&name);
            self.replicas.losses.fetch_add(1, Ordering::Relaxed);
            self.order(Order::Stop(name));
        }
    }

    /// One round's database work and decisions (see the module doc).
    async fn round(&mut self) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let me = self.me().to_string();
        let lease = self.lease_secs();
        sqlx::query(
            "INSERT INTO replicas (id, seen, lease_ms) VALUES ($1, now(), $2) \
             ON CONFLICT (id) DO UPDATE SET seen = now(), lease_ms = $2",
        )
        .bind(&me)
        .bind(lease_ms(&self.replicas.config))
        .execute(&self.pool)
        .await?;
        // Datastores created before replica mode have no lease row yet.
        sqlx::query(
            "INSERT INTO leases (datastore, owner, epoch, expires) \
             SELECT name, NULL, 0, now() FROM datastores ON CONFLICT (datastore) DO NOTHING",
        )
        .execute(&self.pool)
        .await?;
        let live: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM replicas WHERE seen > now() - make_interval(secs => $1)",
        )
        .bind(lease)
        .fetch_all(&self.pool)
        .await?;
        let leases: Vec<(String, Option<String>, i64, bool)> = sqlx::query_as(
            "SELECT datastore, owner, epoch, owner IS NOT NULL AND expires > now() FROM leases",
        )
        .fetch_all(&self.pool)
        .await?;
        *self.replicas.owners.lock().expect("lock") = leases
            .iter()
            .map(|(name, owner, _, valid)| (name.clone(), owner.clone().filter(|_| *valid)))
            .collect();
        let rows: HashMap<&str, (Option<&str>, i64, bool)> = leases
            .iter()
            .map(|(name, owner, epoch, valid)| (name.as_str(), (owner.as_deref(), *epoch, *valid)))
            .collect();

        let owned = self.replicas.fence.owned();
        let mut renew: Vec<(String, i64)> = Vec::new();
        for (name, epoch) in &owned {
            match rows.get(name.as_str()) {
                None => {
                    tracing::info!(datastore = %name, "the datastore was deleted: its sync stops");
                    self.drop_lease(name);
                    self.order(Order::Stop(name.clone()));
                }
                Some((owner, at, _)) if *owner != Some(me.as_str()) || at != epoch => {
                    tracing::warn!(datastore = %name, epoch, owner = ?owner, now_epoch = at, "lease lost: its sync stops");
                    self.drop_lease(name);
                    self.replicas.losses.fetch_add(1, Ordering::Relaxed);
                    self.order(Order::Stop(name.clone()));
                }
                Some(_) if desired(&live, name) != Some(me.as_str()) => {
                    tracing::info!(datastore = %name, to = ?desired(&live, name), "lease released to the replica it belongs to");
                    self.drop_lease(name);
                    // Freed only once its sync stopped: the next owner never
                    // overlaps it (it would be fenced anyway, but would
                    // waste its commits).
                    self.order(Order::Stop(name.clone()));
                    self.order(Order::Free(name.clone(), *epoch));
                }
                Some(_) => renew.push((name.clone(), *epoch)),
            }
        }
        if !renew.is_empty() {
            let (names, epochs): (Vec<String>, Vec<i64>) = renew.into_iter().unzip();
            // An UPDATE of `expires` alone locks FOR NO KEY UPDATE, which
            // the writer's fence (FOR KEY SHARE) does not hold up.
            let renewed: Vec<String> = sqlx::query_scalar(
                "UPDATE leases l SET expires = now() + make_interval(secs => $1) \
                 FROM unnest($2::text[], $3::bigint[]) AS m(datastore, epoch) \
                 WHERE l.datastore = m.datastore AND l.epoch = m.epoch AND l.owner = $4 \
                 RETURNING l.datastore",
            )
            .bind(lease)
            .bind(&names)
            .bind(&epochs)
            .bind(&me)
            .fetch_all(&self.pool)
            .await?;
            for name in renewed {
                self.renewed.insert(name, started);
            }
        }
        // Not a reason to fail the round (the leases are renewed): the
        // next round publishes again.
        if let Err(e) = self.publish().await {
            tracing::warn!(error = %e, "cannot publish the statuses of this replica's datastores");
        }
        for (name, (owner, epoch, valid)) in &rows {
            if owned.contains_key(*name) || desired(&live, name) != Some(me.as_str()) {
                continue;
            }
            let free = owner.is_none() || !valid || *owner == Some(me.as_str());
            if !free || self.engine.get(name).is_some() {
                continue;
            }
            // Compare-and-set on the epoch read: of two replicas racing for
            // it (their live sets differ for a moment), one wins. The row is
            // locked FOR UPDATE first, which waits for any writer batch that
            // passed the old owner's fence (FOR KEY SHARE) to commit.
            let taken: Option<i64> = sqlx::query_scalar(
                "UPDATE leases SET owner = $1, epoch = epoch + 1, \
                 expires = now() + make_interval(secs => $2) \
                 WHERE datastore IN ( \
                     SELECT datastore FROM leases WHERE datastore = $3 AND epoch = $4 \
                       AND (owner IS NULL OR owner = $1 OR expires <= now()) FOR UPDATE) \
                 RETURNING epoch",
            )
            .bind(&me)
            .bind(lease)
            .bind(*name)
            .bind(*epoch)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(epoch) = taken {
                tracing::info!(datastore = %name, epoch, from = ?owner, "lease taken");
                self.replicas.fence.own(name, epoch);
                self.renewed.insert(name.to_string(), started);
                self.replicas.takeovers.fetch_add(1, Ordering::Relaxed);
                self.replicas
                    .owners
                    .lock()
                    .expect("lock")
                    .insert(name.to_string(), Some(me.clone()));
                self.order(Order::Start(name.to_string()));
            }
        }
        Ok(())
    }

    /// Publishes the status of each datastore synced here that changed
    /// since the last round, for the other replicas to show: one statement,
    /// and only for leases this replica still holds.
    async fn publish(&mut self) -> Result<(), sqlx::Error> {
        let owned = self.replicas.fence.owned();
        self.published.retain(|name, _| owned.contains_key(name));
        let mut names = Vec::new();
        let mut statuses = Vec::new();
        for name in owned.keys() {
            let Some(sync) = self.engine.get(name) else {
                continue;
            };
            let status = convert::status_to_proto(&sync).encode_to_vec();
            if self.published.get(name) != Some(&status) {
                names.push(name.clone());
                statuses.push(status);
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO sync_status (datastore, owner, status) \
             SELECT m.datastore, $1, m.status FROM unnest($2::text[], $3::bytea[]) AS m(datastore, status) \
             JOIN leases l ON l.datastore = m.datastore AND l.owner = $1 \
             ON CONFLICT (datastore) DO UPDATE SET owner = excluded.owner, status = excluded.status",
        )
        .bind(self.me())
        .bind(&names)
        .bind(&statuses)
        .execute(&self.pool)
        .await?;
        self.published.extend(names.into_iter().zip(statuses));
        Ok(())
    }

    /// Stops writing `name` at once (its syncs stop after the round).
    fn drop_lease(&mut self, name: &str) {
        self.replicas.fence.disown(name);
        self.renewed.remove(name);
    }

    /// Hands `order` to the syncs task at once: a round cut short by its
    /// time limit never leaves a lease taken without its sync, or a sync
    /// running without its lease.
    fn order(&self, order: Order) {
        let _ = self.orders.send(order);
    }

    /// At shutdown: stops every sync, frees every lease and leaves the live
    /// set, so that the other replicas take over within a round instead of
    /// a lease.
    async fn shut_down(mut self, syncs: tokio::task::JoinHandle<()>) {
        let owned: Vec<(String, i64)> = self.replicas.fence.owned().into_iter().collect();
        for (name, epoch) in &owned {
            self.drop_lease(name);
            let _ = self.orders.send(Order::Stop(name.clone()));
            let _ = self.orders.send(Order::Free(name.clone(), *epoch));
        }
        drop(self.orders);
        let _ = syncs.await;
        let limit = self.replicas.config.lease / 3;
        let _ = tokio::time::timeout(
            limit,
            sqlx::query("DELETE FROM replicas WHERE id = $1")
                .bind(&self.replicas.config.id)
                .execute(&self.pool),
        )
        .await;
        tracing::info!(released = owned.len(), "leases released at shutdown");
    }
}

/// What the syncs task does, in the order given.
enum Order {
    /// Stop the sync of a datastore.
    Stop(String),
    /// Free a lease held at an epoch (its sync stopped before).
    Free(String, i64),
    /// Start the sync of a datastore whose lease was taken.
    Start(String),
    /// Read a datastore synced here again: updated through another replica
    /// (its sync restarts with the new declaration, or takes the new labels).
    Refresh(String),
}

/// Starts and stops syncs as the lease manager orders, on a task of its own:
/// starting a hundred syncs (each loads running) must not hold up the
/// renewal of the leases already held.
async fn syncs(
    replicas: Arc<Replicas>,
    pool: PgPool,
    store: Store,
    engine: Arc<Engine>,
    mut orders: mpsc::UnboundedReceiver<Order>,
) {
    while let Some(order) = orders.recv().await {
        match order {
            Order::Stop(name) => engine.stop(&name).await,
            Order::Free(name, epoch) => free(&pool, &replicas.config.id, &name, epoch).await,
            Order::Refresh(name) => refresh(&store, &engine, &name).await,
            Order::Start(name) => {
                // Lost or released meanwhile (a later order stops it).
                let Some(epoch) = replicas.fence.epoch(&name) else {
                    continue;
                };
                match store.get_datastore_row(&name).await {
                    Ok(DatastoreRow::Readable(ds)) => engine.start(&ds).await,
                    Ok(DatastoreRow::Unreadable { reason, detail, .. }) => {
                        tracing::error!(datastore = %name, %reason, %detail, "the datastore stays stopped until it is deleted");
                        engine.hold_stopped(&name, reason);
                    }
                    Err(e) => {
                        // Deleted meanwhile, or unreadable now: the lease
                        // goes back, and a later round takes it again if the
                        // datastore is still there.
                        tracing::warn!(datastore = %name, error = %e, "cannot load a datastore whose lease was taken");
                        replicas.fence.disown(&name);
                        free(&pool, &replicas.config.id, &name, epoch).await;
                    }
                }
            }
        }
    }
}

/// Brings the sync of `name` (if it runs here) up to its stored row: an
/// UpdateDatastore made on another replica restarts it with the new
/// declaration or gives it the new labels, as on this one.
async fn refresh(store: &Store, engine: &Engine, name: &str) {
    if engine.member(name).is_none() {
        return;
    }
    match store.get_datastore_row(name).await {
        Ok(DatastoreRow::Readable(ds)) => match engine.take_update(&ds).await {
            Update::Restarted => {
                tracing::info!(datastore = %name, address = %ds.spec.target.address, "datastore updated through another replica; its sync restarted");
            }
            Update::Relabelled => {
                tracing::info!(datastore = %name, "datastore labels updated through another replica");
            }
            Update::Unchanged | Update::NotSynced => {}
        },
        // Unusable now: the next start (a restart of this replica, another
        // owner) holds it stopped; deleted: the lease rounds stop it.
        Ok(DatastoreRow::Unreadable { .. }) => {}
        Err(e) => {
            tracing::warn!(datastore = %name, error = %e, "cannot read a datastore updated elsewhere; read again at the next notice");
        }
    }
}

/// Frees the lease of `name` held by `me` at `epoch` for the next owner.
async fn free(pool: &PgPool, me: &str, name: &str, epoch: i64) {
    let freed = sqlx::query(
        "UPDATE leases SET owner = NULL, expires = now() \
         WHERE datastore = $1 AND owner = $2 AND epoch = $3",
    )
    .bind(name)
    .bind(me)
    .bind(epoch)
    .execute(pool)
    .await;
    if let Err(e) = freed {
        tracing::warn!(datastore = %name, error = %e, "cannot free a lease; it expires by itself");
    }
}

/// The live replica `name` belongs to: the highest rendezvous hash.
fn desired<'a>(live: &'a [String], name: &str) -> Option<&'a str> {
    live.iter()
        .max_by_key(|replica| (rendezvous(replica, name), replica.as_str()))
        .map(String::as_str)
}

/// A stable 64-bit hash of (replica, datastore): FNV-1a over both (a zero
/// byte between, which neither contains), then the SplitMix64 finaliser,
/// since FNV-1a alone spreads names that differ only at the end poorly.
/// Stable across builds and platforms: every replica computes the same.
fn rendezvous(replica: &str, datastore: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in replica
        .bytes()
        .chain(std::iter::once(0))
        .chain(datastore.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// Names of the datastores desired for `replica` among `names`, for tests
/// and tools that predict where a datastore goes.
pub fn share<'a>(live: &[String], replica: &str, names: &'a [String]) -> HashSet<&'a str> {
    names
        .iter()
        .filter(|name| desired(live, name) == Some(replica))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ds-{i:04}")).collect()
    }

    #[test]
    fn rendezvous_spreads_datastores_evenly_and_a_joiner_takes_only_its_share() {
        let names = names(3000);
        let three = ids(3);
        let shares: Vec<usize> = three
            .iter()
            .map(|r| share(&three, r, &names).len())
            .collect();
        assert_eq!(shares.iter().sum::<usize>(), 3000);
        for s in &shares {
            assert!((800..1200).contains(s), "{shares:?}");
        }
        // A fourth replica takes about a quarter, and every datastore that
        // moves moves to it: none moves between the three.
        let four = ids(4);
        let mut moved = 0;
        for name in &names {
            let before = desired(&three, name).unwrap();
            let after = desired(&four, name).unwrap();
            if before != after {
                assert_eq!(after, "replica-3", "{name} moved between old replicas");
                moved += 1;
            }
        }
        assert!((600..900).contains(&moved), "{moved} moved");
        // The hash is fixed: a change would move datastores between replicas
        // of different builds.
        assert_eq!(rendezvous("a", "b"), rendezvous("a", "b"));
        assert_ne!(rendezvous("a", "b"), rendezvous("b", "a"));
        assert_eq!(desired(&[], "x"), None);
    }
}
