//! Graceful stop on SIGINT/SIGTERM: the sources stop reading and finish, in-flight
//! look-ups and actions complete, the last offsets are committed, the summary is printed
//! and the job exits 0. A second signal, or the work in flight outlasting the grace
//! period, exits at once (with 130 or 1): what was not checkpointed is read again by
//! the next run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
        let now = crate::clock::now_ms().max(1);
        let _ = self
            .0
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Sets the flag on the first SIGINT or SIGTERM (handled on `runtime`); exits the
    /// process with 130 on the second, and with 1 if the run has not ended `grace`
    /// after the first.
    pub fn on_signals(
        &self,
        runtime: &tokio::runtime::Handle,
        grace: Duration,
    ) -> std::io::Result<()> {
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
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    tracing::error!(
                        grace_ms = grace.as_millis() as u64,
                        "the work in flight outlasted engine.shutdown-timeout-ms: exiting \
                         without a final checkpoint (the next run goes on from the last one)"
                    );
                    std::process::exit(1);
                });
            }
        });
        Ok(())
    }
}
