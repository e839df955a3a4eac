//! Restarting a long-lived task that panicked, as the sync's ingest and
//! committer are restarted (`netsync_core::sync`): the panic is a bug, but it
//! must not leave a datastore without the task for the rest of the process's
//! life. The panic is logged and counted, and the task starts again after a
//! pause, so a bug that panics every time cannot spin.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;

/// Runs the future `run` makes until it returns or `stop` turns true; if it
/// panics, logs it (naming `task` and `datastore`), adds one to `restarts`,
/// waits `pause` and runs a new one. What the task keeps across a restart
/// must be safe to find half-updated: locks it shares ignore poisoning.
pub async fn supervised<F, Fut>(
    task: &str,
    datastore: &str,
    pause: Duration,
    restarts: &AtomicU64,
    mut stop: watch::Receiver<bool>,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let ended = tokio::select! {
            ended = AssertUnwindSafe(run()).catch_unwind() => ended,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Err(panic) = ended else { return };
        restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%datastore, task, panic = %panic_message(panic.as_ref()),
            "task panicked; restarting it");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The text a panic was raised with, when it has one.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_counted() {
        let runs = AtomicU32::new(0);
        let restarts = AtomicU64::new(0);
        let (_stop, stopped) = watch::channel(false);
        supervised(
            "test",
            "d",
            Duration::from_secs(1),
            &restarts,
            stopped,
            || async {
                if runs.fetch_add(1, Ordering::Relaxed) < 2 {
                    panic!("a bug");
                }
            },
        )
        .await;
        assert_eq!(
            runs.load(Ordering::Relaxed),
            3,
            "two panics, then a run that returns"
        );
        assert_eq!(restarts.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_a_task_and_the_pause_after_a_panic() {
        let restarts = AtomicU64::new(0);
        let (stop, stopped) = watch::channel(false);
        let supervisor = supervised(
            "test",
            "d",
            Duration::from_secs(3600),
            &restarts,
            stopped,
            || async { panic!("always") },
        );
        tokio::pin!(supervisor);
        // The first run panics; the supervisor then pauses an hour.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut supervisor)
                .await
                .is_err()
        );
        assert_eq!(restarts.load(Ordering::Relaxed), 1);
        stop.send(true).unwrap();
        supervisor.await;

        // A task that never ends is ended by stop too.
        let (stop, stopped) = watch::channel(false);
        let supervisor = supervised(
            "test",
            "d",
            Duration::ZERO,
            &restarts,
            stopped,
            std::future::pending::<()>,
        );
        tokio::pin!(supervisor);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut supervisor)
                .await
                .is_err()
        );
        stop.send(true).unwrap();
        supervisor.await;
    }
}
