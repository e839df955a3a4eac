//! The signal that asks a netsync process to stop: what `main` of each binary
//! hands to its `serve` as the shutdown future.

use std::future::Future;

/// Completes on SIGINT (ctrl-c) or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled: `serve` polls it only
/// once it is serving, and a SIGTERM during start-up (opening the database,
/// loading every datastore) must stop the process cleanly then instead of
/// killing it with the signal's default action. A signal that cannot be
/// listened for is logged and never completes: the other one still stops the
/// process. Call it inside a Tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            let installed = signal(kind);
            async move {
                match installed {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let term = listen(SignalKind::terminate(), "SIGTERM");
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        async move {
            tokio::select! {
                () = term => {}
                () = interrupt => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    }
}
