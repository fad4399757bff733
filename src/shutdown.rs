//! Graceful stop on SIGINT/SIGTERM: the sources stop reading and finish, in-flight
//! look-ups and actions complete, the last offsets are committed, the summary is printed
//! and the job exits 0. A second signal exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::Time;

/// Set once a stop was asked for, with the processing time it was asked at; read by the
/// sources. Every worker of a process sees the same time, so they agree on the epoch of
/// the final checkpoint.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicU64>);

impl StopFlag {
    pub fn is_set(&self) -> bool {
        self.stopped_at().is_some()
    }

    /// When the stop was asked for, if it was.
    pub fn stopped_at(&self) -> Option<Time> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn set(&self) {
        let now = crate::operators::now_ms().max(1);
        let _ = self
            .0
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
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
