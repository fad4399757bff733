//! Graceful stop on SIGINT/SIGTERM: the sources stop reading and finish, in-flight
//! look-ups and actions complete, the last offsets are committed, the summary is printed
//! and the job exits 0. A second signal exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a stop was asked for; read by the sources.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Sets the flag on the first SIGINT or SIGTERM (handled on `runtime`); exits the
    /// process with 130 on the second.
    pub fn on_signals(&self, runtime: &tokio::runtime::Handle) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = {
            let _guard = runtime.enter();
            signal(SignalKind::terminate())?
        };
        let flag = self.clone();
        runtime.spawn(async move {
            for n in 0.. {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                if n > 0 {
                    tracing::warn!("second stop signal: exiting now");
                    std::process::exit(130);
                }
                tracing::info!("stop signal: reading no more, finishing the work in flight");
                flag.set();
            }
        });
        Ok(())
    }
}
