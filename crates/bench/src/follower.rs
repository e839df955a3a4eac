//! A reflector of the client library (netsync-client) following a churning
//! datastore in a task of its own, as a controller's cache would: when each
//! marker reached its map (the commit latency as such a controller sees it:
//! device send to the map holding the marker), how often its watch was cut
//! or listed again, and its map at the end, to compare with running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netsync_client::{Event, Leaves, Reflector};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::markers::MARKER_PREFIX;

/// What the reflector went through so far.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// When the map first held each marker.
    pub arrivals: HashMap<u64, Instant>,
    /// The map's revision.
    pub revision: u64,
    /// Revisions applied.
    pub applied: u64,
    /// Lists of running (the first one included).
    pub lists: u64,
    /// Watches cut and resumed without a new list.
    pub cuts: u64,
    /// The error that ended it, if one did.
    pub ended: Option<String>,
}

/// The reflector's task; see the module documentation.
pub struct Follower {
    seen: Arc<Mutex<Seen>>,
    /// The revision to stop at (`u64::MAX`: follow on).
    stop_at: watch::Sender<u64>,
    task: JoinHandle<Reflector>,
}

impl Follower {
    /// Starts following with `reflector` (it lists running first).
    pub fn start(mut reflector: Reflector) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop_at, mut target) = watch::channel(u64::MAX);
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                loop {
                    if reflector.revision() >= *target.borrow_and_update() {
                        return reflector;
                    }
                    let event = tokio::select! {
                        // Reflector::next is cancel-safe between events.
                        _ = target.changed() => continue,
                        event = reflector.next() => event,
                    };
                    let at = Instant::now();
                    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    seen.revision = reflector.revision();
                    match event {
                        Ok(Event::Applied { updated_paths, .. }) => {
                            seen.applied += 1;
                            for id in updated_paths.iter().filter_map(|p| marker(p)) {
                                seen.arrivals.entry(id).or_insert(at);
                            }
                        }
                        Ok(Event::Listed { .. } | Event::Recreated { .. }) => {
                            seen.lists += 1;
                            note_listed(&mut seen, reflector.leaves(), at);
                        }
                        Ok(Event::Cut { .. }) => seen.cuts += 1,
                        Ok(Event::StateChanged { .. } | Event::Revert { .. }) => {}
                        Err(error) => {
                            seen.ended = Some(error.to_string());
                            return reflector;
                        }
                    }
                }
            }
        });
        Self {
            seen,
            stop_at,
            task,
        }
    }

    /// A copy of what it has seen so far.
    pub fn seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the first list is done, within `deadline`.
    pub async fn wait_listed(&self, deadline: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + deadline;
        loop {
            let seen = self.seen();
            if let Some(why) = seen.ended {
                bail!("the reflector gave up: {why}");
            }
            if seen.lists > 0 {
                return Ok(());
            }
            if Instant::now() >= give_up {
                bail!("the reflector did not list running within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Follows on until the map is at `revision` at least, within `deadline`;
    /// returns the map's revision and leaves, and what it saw.
    pub async fn stop_at(
        self,
        revision: u64,
        deadline: Duration,
    ) -> anyhow::Result<(u64, Leaves, Seen)> {
        // Fails only if the task has ended, which awaiting it shows.
        let _ = self.stop_at.send(revision);
        let reflector = tokio::time::timeout(deadline, self.task)
            .await
            .with_context(|| format!("the reflector did not reach revision {revision}"))?
            .context("the reflector's task panicked")?;
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(why) = &seen.ended {
            bail!("the reflector gave up: {why}");
        }
        let (revision, leaves) = reflector.snapshot();
        Ok((revision, leaves, seen))
    }
}

/// The number of the marker at `path`, if it is one.
fn marker(path: &str) -> Option<u64> {
    path.strip_prefix(MARKER_PREFIX)?.parse().ok()
}

/// Markers that came in a list (after a watch could not be resumed) arrived
/// with it.
fn note_listed(seen: &mut Seen, leaves: &Leaves, at: Instant) {
    let markers = leaves
        .range(MARKER_PREFIX.to_string()..)
        .take_while(|(path, _)| path.starts_with(MARKER_PREFIX))
        .filter_map(|(path, _)| marker(path));
    for id in markers {
        seen.arrivals.entry(id).or_insert(at);
    }
}
