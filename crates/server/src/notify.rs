//! Wake-ups between replicas (PostgreSQL `LISTEN`/`NOTIFY`).
//!
//! A replica that does not sync a datastore still answers about it from the
//! database: its watches read the commit log, and the owner picks up intent
//! writes made elsewhere. A notification only says *which datastore* changed
//! on which [`Channel`]; the database stays the source of truth, and a reader
//! always reads from its own position. So a notification that is lost (the
//! listener's connection dropped, or a partition that nobody has noticed
//! yet) delays a reader by at most [`BACKSTOP`], never loses anything: every
//! waiter looks again at least that often, and at once when the listener
//! reconnects.
//!
//! Notifications are sent inside the transaction that makes the change
//! ([`send`]): PostgreSQL delivers them at commit, never for a rollback, and
//! in commit order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// The longest a waiter waits without looking at the database again.
pub const BACKSTOP: Duration = Duration::from_secs(5);

/// Between attempts to reconnect the listener.
const RECONNECT: Duration = Duration::from_secs(1);

/// What changed. The payload of every notification is a datastore's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A revision was committed to the datastore's log.
    Commits,
    /// An intent of the datastore was written or deleted, or a job queued.
    Intents,
    /// The datastore was created, updated, relabelled or deleted.
    Datastores,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 3] = [Channel::Commits, Channel::Intents, Channel::Datastores];

    /// The PostgreSQL channel name.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Commits => "netsync_commits",
            Channel::Intents => "netsync_intents",
            Channel::Datastores => "netsync_datastores",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// A notification as subscribers of [`Notices::subscribe`] see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `datastore` changed on `channel`.
    Changed {
        /// What changed.
        channel: Channel,
        /// Which datastore.
        datastore: String,
    },
    /// Notifications may have been missed (the listener reconnected, or this
    /// subscriber fell behind): look at everything again.
    Missed,
}

/// The listener of one replica, shared by everyone who waits for changes.
#[derive(Debug)]
pub struct Notices {
    /// Every notice, for subscribers that follow many datastores.
    all: broadcast::Sender<Notice>,
    /// The notices of each channel (and every [`Notice::Missed`]): commits
    /// are many, and most subscribers want only the rarer others.
    channels: HashMap<Channel, broadcast::Sender<Notice>>,
    /// Per channel and datastore, a counter moved at each notification (and
    /// at each [`Notice::Missed`]): one cheap wake-up per waiter, with no
    /// filtering of every other datastore's notices.
    counters: Mutex<HashMap<(Channel, String), watch::Sender<u64>>>,
    /// Moved at each [`Notice::Missed`].
    missed: watch::Sender<u64>,
}

impl Notices {
    /// Notices that nothing sends yet (see [`start`]).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            all: broadcast::channel(4096).0,
            channels: Channel::ALL
                .into_iter()
                .map(|c| (c, broadcast::channel(1024).0))
                .collect(),
            counters: Mutex::new(HashMap::new()),
            missed: watch::channel(0).0,
        })
    }

    /// Every notice from now on. A subscriber that falls behind gets
    /// `RecvError::Lagged`, which means the same as [`Notice::Missed`].
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.all.subscribe()
    }

    /// The notices of `channel` from now on, and every [`Notice::Missed`].
    /// A subscriber that falls behind gets `RecvError::Lagged`, which means
    /// the same as [`Notice::Missed`].
    pub fn subscribe_to(&self, channel: Channel) -> broadcast::Receiver<Notice> {
        self.channels[&channel].subscribe()
    }

    /// A waiter for changes of `datastore` on `channel`; create it before
    /// reading the database, then [`Waiter::wait`] after reading, so that a
    /// change committed in between is not slept through.
    pub fn waiter(&self, channel: Channel, datastore: &str) -> Waiter {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        // Waiters gone since: their counters go too, now and then.
        if counters.len() >= 64 && counters.len().is_power_of_two() {
            counters.retain(|_, counter| counter.receiver_count() > 0);
        }
        let changed = counters
            .entry((channel, datastore.to_string()))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waiter {
            changed,
            missed: self.missed.subscribe(),
        }
    }

    /// Hands a notice to everyone waiting for it.
    pub fn publish(&self, notice: Notice) {
        match &notice {
            Notice::Changed { channel, datastore } => {
                let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(counter) = counters.get(&(*channel, datastore.clone())) {
                    counter.send_modify(|n| *n += 1);
                }
            }
            Notice::Missed => {
                self.missed.send_modify(|n| *n += 1);
                // Waiters gone since: their counters go too.
                self.counters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|_, counter| counter.receiver_count() > 0);
            }
        }
        match &notice {
            Notice::Changed { channel, .. } => _ = self.channels[channel].send(notice.clone()),
            Notice::Missed => {
                for sender in self.channels.values() {
                    let _ = sender.send(Notice::Missed);
                }
            }
        }
        let _ = self.all.send(notice);
    }
}

/// Waits for the next change of one datastore on one channel (see
/// [`Notices::waiter`]).
#[derive(Debug)]
pub struct Waiter {
    changed: watch::Receiver<u64>,
    missed: watch::Receiver<u64>,
}

impl Waiter {
    /// Returns when a change was notified since the waiter was made or last
    /// returned, when notifications may have been missed, or after
    /// [`BACKSTOP`] at the latest: the caller then reads the database.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.changed.changed() => {}
            _ = self.missed.changed() => {}
            _ = tokio::time::sleep(BACKSTOP) => {}
        }
        self.changed.borrow_and_update();
        self.missed.borrow_and_update();
    }
}

/// Sends a notification on `channel` for each of `datastores` (duplicates
/// are sent once), inside the caller's open transaction.
pub async fn send(
    conn: &mut PgConnection,
    channel: Channel,
    datastores: &[&str],
) -> Result<(), sqlx::Error> {
    if datastores.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = datastores.to_vec();
    names.sort_unstable();
    names.dedup();
    sqlx::query("SELECT pg_notify($1, name) FROM unnest($2::text[]) AS name")
        .bind(channel.name())
        .bind(&names)
        .execute(conn)
        .await?;
    Ok(())
}

/// Listens on every [`Channel`] through its own connection from `pool` and
/// publishes what arrives to `notices`, until `stop`. Publishes
/// [`Notice::Missed`] after each (re)connection.
pub async fn run(notices: Arc<Notices>, pool: PgPool, stop: CancellationToken) {
    loop {
        let listener = tokio::select! {
            _ = stop.cancelled() => return,
            listener = listen(&pool) => listener,
        };
        let mut listener = match listener {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' changes; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECONNECT) => continue,
                }
            }
        };
        // Anything committed before LISTEN took effect was not notified.
        notices.publish(Notice::Missed);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => {
                    if let Some(channel) = Channel::from_name(notification.channel()) {
                        notices.publish(Notice::Changed {
                            channel,
                            datastore: notification.payload().to_string(),
                        });
                    }
                }
                // Reconnected (eagerly): what came meanwhile is lost.
                Ok(None) => notices.publish(Notice::Missed),
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that listens for other replicas' changes");
                    break;
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all(Channel::ALL.into_iter().map(Channel::name))
        .await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_for_its_datastore_for_a_missed_notice_and_at_the_backstop() {
        let notices = Notices::new();
        let mut waiter = notices.waiter(Channel::Commits, "a");
        let changed = |datastore: &str, channel| Notice::Changed {
            channel,
            datastore: datastore.into(),
        };

        // Another datastore's commit, or this one's intents, do not wake it.
        notices.publish(changed("b", Channel::Commits));
        notices.publish(changed("a", Channel::Intents));
        let start = tokio::time::Instant::now();
        waiter.wait().await;
        assert_eq!(start.elapsed(), BACKSTOP, "only the backstop woke it");

        notices.publish(changed("a", Channel::Commits));
        let start = tokio::time::Instant::now();
        waiter.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "its own commit wakes it");

        notices.publish(Notice::Missed);
        let start = tokio::time::Instant::now();
        waiter.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "a missed notice wakes it");
    }

    #[test]
    fn a_channel_subscriber_gets_its_channel_and_every_missed_notice() {
        let notices = Notices::new();
        let mut datastores = notices.subscribe_to(Channel::Datastores);
        let changed = |channel| Notice::Changed {
            channel,
            datastore: "a".into(),
        };
        notices.publish(changed(Channel::Commits));
        notices.publish(changed(Channel::Datastores));
        notices.publish(Notice::Missed);
        assert_eq!(datastores.try_recv(), Ok(changed(Channel::Datastores)));
        assert_eq!(datastores.try_recv(), Ok(Notice::Missed));
        assert!(datastores.try_recv().is_err());
    }

    #[test]
    fn counters_of_waiters_gone_are_dropped_at_the_next_missed_notice() {
        let notices = Notices::new();
        drop(notices.waiter(Channel::Commits, "a"));
        let _kept = notices.waiter(Channel::Commits, "b");
        notices.publish(Notice::Missed);
        let counters = notices.counters.lock().unwrap();
        assert_eq!(
            counters.keys().collect::<Vec<_>>(),
            vec![&(Channel::Commits, "b".to_string())]
        );
    }
}
