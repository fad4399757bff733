//! How a run ends: a stop asked for (SIGINT/SIGTERM), every source read to its end, or
//! an input that failed, in one handle per worker (`Lifecycle`).
//!
//! Graceful stop on SIGINT/SIGTERM: the sources stop reading and finish, in-flight
//! look-ups and actions complete, the last offsets are committed, the summary is printed
//! and the job exits 0. A second signal (`SAME_STOP` or more after the first), or the
//! work in flight outlasting the grace period, exits at once (with 130 or 1): what was
//! not checkpointed is read again by the next run.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::model::Time;

/// Stop signals this close to the first are the same stop (a second one exits at once).
const SAME_STOP: Duration = Duration::from_millis(200);

/// Set once a stop was asked for, with the processing time it was asked at; read by the
/// sources. Every worker of a process sees the same time, so they agree on the epoch of
/// the final checkpoint.
#[derive(Clone, Debug, Default)]
pub struct StopFlag {
    at: Arc<AtomicU64>,
    /// A worker has started: before, a process of a cluster waits for the others to
    /// connect, with nothing read and nothing to finish.
    started: Arc<AtomicBool>,
}

impl StopFlag {
    pub fn is_set(&self) -> bool {
        self.stopped_at().is_some()
    }

    /// When the stop was asked for, if it was.
    pub fn stopped_at(&self) -> Option<Time> {
        match self.at.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn set(&self) {
        self.set_at(crate::clock::now_ms());
    }

    /// Sets the flag as a stop asked for at `at` (another process's stop, so that
    /// every process takes the same final epoch); a stop already set is kept.
    pub fn set_at(&self, at: Time) {
        let _ = self
            .at
            .compare_exchange(0, at.max(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// A worker starts: from now on a stop finishes the work in flight.
    pub fn workers_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Whether a worker has started (in a cluster: every process has connected).
    pub fn has_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
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
            let mut first: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                // `timeout` sends its signal to the job and then to its process group:
                // one stop, twice within microseconds.
                if first.is_some_and(|t| t.elapsed() < SAME_STOP) {
                    tracing::debug!("stop signal repeated at once: taken as the same stop");
                    continue;
                }
                if first.is_some() {
                    tracing::warn!("second stop signal: exiting now");
                    exit_now(130);
                }
                first = Some(std::time::Instant::now());
                // Waiting for a cluster's other processes to connect, a stop waited for
                // the shutdown timeout and then said work in flight had outlasted it.
                if !flag.started.load(Ordering::Acquire) {
                    tracing::warn!(
                        "stop signal before the workers started (still waiting for the cluster's other processes to connect?): exiting, nothing was read"
                    );
                    exit_now(0);
                }
                tracing::info!("stop signal: reading no more, finishing the work in flight");
                flag.set();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    // No summary comes after this: the totals so far (as the workers
                    // last published them, at most a second old) say what was done.
                    let done = crate::metrics::global().progress();
                    tracing::error!(
                        grace_ms = grace.as_millis() as u64,
                        events_read = done.events_read,
                        passed = done.passed,
                        actions_ok = done.actions_ok,
                        actions_failed = done.actions_failed,
                        "the work in flight outlasted engine.shutdown-timeout-ms: exiting \
                         without a final checkpoint (the next run goes on from the last one, \
                         or from the input's start where there is none, and sends the \
                         actions after that point again; a slow service's backlog drains \
                         at its pace: raise engine.shutdown-timeout-ms to wait for it)"
                    );
                    exit_now(1);
                });
            }
        });
        Ok(())
    }
}

/// One worker's view of how its run ends, shared by its source, the beacon that tells
/// the other workers, the user-state operator (through `Ending`) and the run loop.
///
/// The states, in order: running; read to its end here (`read_all_here`), while the
/// other workers' sources may still read; ending (stopped, or every source at its end:
/// the clock goes to the final epoch and the final checkpoint is taken); over, once the
/// probe is done. `failed` is orthogonal: the input could not be read to its end.
#[derive(Clone)]
pub struct Lifecycle {
    stop: StopFlag,
    here: Rc<Cell<bool>>,
    everywhere: Rc<Cell<usize>>,
    /// The latest time a source said it read all: the same on every worker once all
    /// have said so, so that all agree on the final epoch.
    last_done: Rc<Cell<Time>>,
    ending: Ending,
    failed: Rc<Cell<bool>>,
}

impl Lifecycle {
    /// A worker's handle; `stop` is the process's, set by the signal handler.
    pub fn new(stop: StopFlag) -> Lifecycle {
        Lifecycle {
            stop,
            here: Rc::default(),
            everywhere: Rc::default(),
            last_done: Rc::default(),
            ending: Ending::default(),
            failed: Rc::default(),
        }
    }

    /// When a stop was asked for, if it was.
    pub fn stop_requested(&self) -> Option<Time> {
        self.stop.stopped_at()
    }

    /// This worker's source has read its input to its end (or stopped).
    pub fn set_read_all_here(&self) {
        self.here.set(true);
    }

    pub fn read_all_here(&self) -> bool {
        self.here.get()
    }

    /// Another worker's source (or this one's) said it read all, at `at`.
    pub fn source_done_somewhere(&self, at: Time) {
        self.everywhere.set(self.everywhere.get() + 1);
        self.last_done.set(self.last_done.get().max(at));
    }

    /// Once every one of `peers` sources has read all: the time the last one did, the
    /// same on every worker (of every process).
    pub fn read_all_everywhere(&self, peers: usize) -> Option<Time> {
        (self.everywhere.get() >= peers).then(|| self.last_done.get())
    }

    /// The source's clock goes to its final epoch.
    pub fn begin_ending(&self) {
        self.ending.on.set(true);
    }

    /// The final epoch, with checkpoints on (it need not be on the interval's grid).
    pub fn end_at(&self, epoch: Time) {
        self.ending.at.set(Some(epoch));
    }

    /// What the user-state operator reads to know the next checkpoint is the final one.
    pub fn ending(&self) -> Ending {
        self.ending.clone()
    }

    /// The input could not be read to its end (logged where it happened).
    pub fn fail(&self) {
        self.failed.set(true);
    }

    pub fn failed(&self) -> bool {
        self.failed.get()
    }
}

/// Set on a worker once its source is ending (its clock at its final epoch). The final
/// checkpoint then waits for the look-ups running, so that a graceful restart repeats
/// nothing; other checkpoints save those users' events instead of waiting.
#[derive(Clone, Default)]
pub struct Ending {
    on: Rc<Cell<bool>>,
    at: Rc<Cell<Option<Time>>>,
}

impl Ending {
    pub fn get(&self) -> bool {
        self.on.get()
    }

    /// The epoch the run ends at, once the source knows it.
    pub fn final_epoch(&self) -> Option<Time> {
        self.at.get()
    }
}

/// Ends the process at once with `code`, from any thread, while other threads run.
/// `std::process::exit` runs the C and C++ exit handlers: RocksDB's static objects were
/// destroyed under a worker still opening or using its database, and the process died
/// of SIGSEGV instead of exiting with the code the documentation promises. Nothing of
/// ours needs an exit handler: stderr is unbuffered and stdout is flushed here.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().lock().flush();
    let _ = std::io::stderr().lock().flush();
    // SAFETY: `_exit` takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifecycle_goes_from_reading_to_ending() {
        let stop = StopFlag::default();
        let life = Lifecycle::new(stop.clone());
        let ending = life.ending();
        assert_eq!(life.stop_requested(), None);
        life.set_read_all_here();
        life.source_done_somewhere(7);
        assert!(life.read_all_here() && life.read_all_everywhere(1) == Some(7));
        assert_eq!(life.read_all_everywhere(2), None);
        life.source_done_somewhere(5);
        assert_eq!(
            life.read_all_everywhere(2),
            Some(7),
            "the latest, whatever the order"
        );
        assert!(!ending.get());
        life.begin_ending();
        assert!(ending.get());
        stop.set();
        assert!(life.stop_requested().is_some());
        assert!(!life.failed());
        life.fail();
        assert!(life.clone().failed());
    }
}
