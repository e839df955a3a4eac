//! The owner's side of intent writes and Resyncs made on other replicas
//! (replica mode): a replica that does not sync a datastore writes its
//! intents to the database, with the job that applies them, and moves the
//! datastore's counters in `handoffs` (see [`crate::store::Store::put_intent`],
//! [`crate::store::Store::hand_off_resync`]); this task, one per replica,
//! brings the datastores this replica syncs up to date with them.
//!
//! It reloads a datastore's intents ([`Engine::reload_intents`]) and wakes its
//! reconcile worker, so that the job the writer queued runs at once:
//! - on a notification on [`Channel::Intents`] about a datastore synced here
//!   (sent in the writer's transaction, so delivered at its commit);
//! - for every datastore synced here after notifications may have been
//!   missed (the listener reconnected, or this task fell behind);
//! - every [`BACKSTOP`], for the datastores whose `handoffs.intents` counter
//!   is not the one last seen here (one small query for all of them): a
//!   notification lost without anyone noticing (a partition) delays a write
//!   by that much at most.
//!
//! A Resync asked elsewhere is a count (`resyncs`) the owner compares with
//! the ones it did (`resyncs_done`, written under its lease's fence), so it
//! is done once even if its notification is lost or the datastore changes
//! owner meanwhile (a new owner does it on top of the resync every start
//! does: harmless).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::db::{Conn, Readers};
use crate::engine::Engine;
use crate::error::Error;
use crate::notify::{BACKSTOP, Channel, Notice};
use crate::replicas::Replicas;
use crate::store::Store;

/// A datastore's `handoffs` row: intent writes, resyncs asked, resyncs done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    intents: i64,
    resyncs: i64,
    resyncs_done: i64,
}

/// Runs until `stop`: picks up what other replicas hand to the datastores
/// `engine` syncs.
pub async fn run(
    replicas: Arc<Replicas>,
    store: Store,
    engine: Arc<Engine>,
    stop: CancellationToken,
) {
    let Readers::Postgres(pool) = store.readers().clone() else {
        return;
    };
    let mut pickup = Pickup {
        store,
        pool,
        engine,
        seen: HashMap::new(),
    };
    let mut notices = replicas.notices().subscribe_to(Channel::Intents);
    let mut backstop = tokio::time::interval(BACKSTOP);
    backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            _ = backstop.tick() => {
                pickup.look(false, "backstop").await;
                continue;
            }
            notice = notices.recv() => notice,
        };
        // What came meanwhile is taken together: a burst of writes to one
        // datastore costs one reload.
        let mut changed = BTreeSet::new();
        let mut missed = false;
        let mut next = first;
        loop {
            match next {
                Ok(Notice::Changed {
                    channel: Channel::Intents,
                    datastore,
                }) => {
                    changed.insert(datastore);
                }
                Ok(Notice::Changed { .. }) => {}
                Ok(Notice::Missed) | Err(RecvError::Lagged(_)) => missed = true,
                Err(RecvError::Closed) => return,
            }
            next = match notices.try_recv() {
                Ok(notice) => Ok(notice),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                Err(TryRecvError::Empty) => break,
            };
        }
        if missed {
            pickup.look(true, "missed").await;
            continue;
        }
        for datastore in changed {
            if pickup.engine.get(&datastore).is_some() {
                pickup.one(&datastore, None, "notified").await;
            }
        }
    }
}

/// The task's state.
struct Pickup {
    store: Store,
    pool: PgPool,
    engine: Arc<Engine>,
    /// The `intents` counter of each datastore synced here as it was read
    /// before its intents were last loaded here.
    seen: HashMap<String, i64>,
}

impl Pickup {
    /// Looks at every datastore synced here: those whose counters say there
    /// is something to pick up (every one if `all`) are brought up to date;
    /// `why` names the occasion in the log.
    async fn look(&mut self, all: bool, why: &'static str) {
        let synced: Vec<String> = self
            .engine
            .members()
            .into_iter()
            .map(|m| m.sync.name().to_string())
            .collect();
        // Forgotten when no longer synced here: a datastore synced here
        // again is looked at afresh.
        let here: HashSet<&String> = synced.iter().collect();
        self.seen.retain(|name, _| here.contains(name));
        let counters = match self.counters(&synced).await {
            Ok(counters) => counters,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read what other replicas handed over; looking again shortly");
                return;
            }
        };
        for name in synced {
            let now = counters.get(&name).copied().unwrap_or_default();
            // First seen here (just started, its intents loaded from the
            // database): reloaded if any intent write ever moved its
            // counter, since one may have committed after that load. None
            // did: nothing to pick up, which spares a takeover of many
            // datastores as many reloads.
            let seen = *self.seen.entry(name.clone()).or_insert(0);
            let behind = seen != now.intents;
            if all || behind || now.resyncs > now.resyncs_done {
                self.one(&name, Some(now), why).await;
            }
        }
    }

    /// The `handoffs` counters of `names` (absent: all zero).
    async fn counters(&self, names: &[String]) -> Result<HashMap<String, Counters>, sqlx::Error> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT datastore, intents, resyncs, resyncs_done FROM handoffs \
             WHERE datastore = ANY($1)",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, intents, resyncs, resyncs_done)| {
                let counters = Counters {
                    intents,
                    resyncs,
                    resyncs_done,
                };
                (name, counters)
            })
            .collect())
    }

    /// Brings datastore `name` up to date: its intents reloaded, its worker
    /// woken, a Resync asked elsewhere done. `read`: its counters, read
    /// just now; `why`: the occasion, for the log.
    async fn one(&mut self, name: &str, read: Option<Counters>, why: &'static str) {
        // Read before the intents: a write in between moves the counter
        // past the one kept, so the next look loads again (changing
        // nothing, or what came after).
        let counters = match read {
            Some(counters) => counters,
            None => match self.counters(&[name.to_string()]).await {
                Ok(counters) => counters.get(name).copied().unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(datastore = %name, error = %e, "cannot read what other replicas handed over; looking again shortly");
                    return;
                }
            },
        };
        match self.engine.reload_intents(name).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(datastore = %name, by = why, "intent changes made on other replicas picked up");
                }
                self.seen.insert(name.to_string(), counters.intents);
                // Woken even if nothing changed here: the job row may be
                // one a claim passed over while it was being written.
                self.engine.queued(name, changed);
            }
            Err(e) => {
                tracing::warn!(datastore = %name, error = %e, "cannot reload intents written on other replicas; looking again shortly");
                self.seen.remove(name);
            }
        }
        if counters.resyncs > counters.resyncs_done {
            tracing::info!(datastore = %name, by = why, "resync asked on another replica");
            self.resync(name, counters.resyncs).await;
        }
    }

    /// Does the Resyncs of `name` asked elsewhere, up to count `asked`.
    async fn resync(&self, name: &str, asked: i64) {
        let Some(sync) = self.engine.get(name) else {
            return;
        };
        sync.resync();
        self.engine.resynced(name).await;
        let datastore = name.to_string();
        let done = self
            .store
            .writer()
            .write_owned(name, move |conn| {
                Box::pin(async move {
                    let Conn::Postgres(pg) = conn else {
                        return Ok::<_, Error>(());
                    };
                    sqlx::query(
                        "UPDATE handoffs SET resyncs_done = GREATEST(resyncs_done, $2) \
                         WHERE datastore = $1",
                    )
                    .bind(&datastore)
                    .bind(asked)
                    .execute(&mut *pg)
                    .await?;
                    Ok(())
                })
            })
            .await;
        if let Err(e) = done {
            // Done again at the next look: one resync more, harmless.
            tracing::warn!(datastore = %name, error = %e, "cannot record a resync asked elsewhere as done");
        }
    }
}
