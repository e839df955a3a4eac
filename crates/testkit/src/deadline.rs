//! The one set of deadlines every test waits with. Tests wait for events, not
//! for time: these bound a wait that should end much sooner, generously
//! enough for a debug build on a busy two-core machine, so that a deadline
//! only ever fires on a real failure.

use std::future::Future;
use std::time::Duration;

/// Longest wait for any one event (a revision, a state, a log line, a reply).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Longest wait for something slow by nature: a process to build up a large
/// device, jobs through retries and backoff, a whole demo to run.
pub const LONG_DEADLINE: Duration = Duration::from_secs(180);

/// Awaits `future`, failing the test after [`DEADLINE`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("no event within {DEADLINE:?}"))
}
