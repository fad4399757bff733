//! Runs futures on the process's tokio runtime on behalf of a timely operator, and hands
//! their results back to it: the worker never blocks on I/O, and the operator is woken
//! (through a `SyncActivator`) as soon as a result is ready.
//!
//! One activation wakes the operator for every result that arrives before it drains:
//! a result that finds one on its way sends none. An activation is a path allocated and
//! sent through a channel to the worker, and an unpark, which wakes a parked worker
//! with a system call; one per webhook call was a share of each call's CPU, on both
//! sides, and woke the worker once per call where one wake-up serves a batch.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use timely::scheduling::SyncActivator;
use tokio::runtime::Handle;

/// How often `drain_paced` wants to be called while results keep coming.
pub const PACE: std::time::Duration = std::time::Duration::from_millis(1);

pub struct AsyncBridge<R> {
    runtime: Handle,
    activator: SyncActivator,
    sender: mpsc::Sender<R>,
    receiver: mpsc::Receiver<R>,
    in_flight: usize,
    /// Set by the result that activates the operator, cleared when the operator drains:
    /// while set, an activation is on its way and the results after it need none.
    woken: Arc<AtomicBool>,
}

impl<R: Send + 'static> AsyncBridge<R> {
    pub fn new(runtime: Handle, activator: SyncActivator) -> Self {
        let (sender, receiver) = mpsc::channel();
        AsyncBridge {
            runtime,
            activator,
            sender,
            receiver,
            in_flight: 0,
            woken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts `work`; its result comes back through `drain`.
    pub fn spawn(&mut self, work: impl Future<Output = R> + Send + 'static) {
        let sender = self.sender.clone();
        let activator = self.activator.clone();
        let woken = self.woken.clone();
        self.in_flight += 1;
        // Boxed: the runtime moves a task's future, and later its output, whole, three
        // times a task; a webhook call's future (hyper's request and answer in it) is
        // kilobytes, a box a pointer.
        let work = Box::pin(work);
        self.runtime.spawn(async move {
            let result = work.await;
            // The operator is gone only when the dataflow was dropped; nothing to tell.
            // The result is in the channel before the flag is read: if the flag was set,
            // the drain that clears it comes after, and takes this result.
            if sender.send(result).is_ok() && !woken.swap(true, Ordering::SeqCst) {
                let _ = activator.activate();
            }
        });
    }

    /// Results that have arrived since the last call. The operator must take them all
    /// in each activation (until this gives none): one that arrived before this call,
    /// and that it leaves, wakes it no more.
    pub fn drain(&mut self) -> impl Iterator<Item = R> + '_ {
        // Cleared before reading: a result sent after this activates the operator again.
        // A swap, not a store: reading the flag a result set orders that result's send
        // before the reads below.
        self.woken.swap(false, Ordering::SeqCst);
        std::iter::from_fn(move || {
            let r = self.receiver.try_recv().ok()?;
            self.in_flight -= 1;
            Some(r)
        })
    }

    /// Results that have arrived, taken without turning the wake-ups back on (`drain`
    /// does): for an operator that, while results keep coming, takes them every
    /// `PACE` (`hold_wakeups`). True if any came.
    pub fn take_ready(&mut self, mut each: impl FnMut(R)) -> bool {
        let mut taken = false;
        while let Ok(r) = self.receiver.try_recv() {
            self.in_flight -= 1;
            taken = true;
            each(r);
        }
        taken
    }

    /// No result activates the operator until the next `drain`: the caller looks again
    /// (`take_ready` or `drain`) after `PACE`. Results that arrive a few every tens of
    /// microseconds (webhook calls to a fast receiver) each woke the worker, which then
    /// polled its channels and parked again for the next: ~6% of a webhook run's CPU
    /// was that waiting; one look every `PACE` takes them all.
    pub fn hold_wakeups(&self) {
        self.woken.store(true, Ordering::SeqCst);
    }

    /// Futures started and not yet drained.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    use timely::dataflow::operators::generic::operator::source;

    use super::*;

    /// Runs `CALLS` futures finishing at staggered times through a bridge whose operator
    /// takes results with `drain` (or, `paced`, with `take_ready`, holding the wake-ups
    /// and looking again after `PACE` while results keep coming, as the actions operator
    /// does); the worker parks between activations. Fails on its deadline when a result
    /// was left without a wake-up, or when it took more activations than results.
    fn take_every_result(paced: bool) {
        const CALLS: u64 = 3_000;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            timely::execute_directly(move |worker| {
                let taken = Rc::new(Cell::new(0u64));
                let wakes = Rc::new(Cell::new(0u64));
                let (t, w) = (taken.clone(), wakes.clone());
                worker.dataflow::<u64, _, _>(|scope| {
                    let s = scope;
                    source::<_, timely::container::CapacityContainerBuilder<Vec<u64>>, _, _>(
                        scope,
                        "Bridge",
                        move |cap, info| {
                            let activator = s.worker().sync_activator_for(info.address.to_vec());
                            let pace = s.activator_for(info.address.clone());
                            let mut bridge = AsyncBridge::new(handle, activator);
                            for i in 0..CALLS {
                                bridge.spawn(async move {
                                    tokio::time::sleep(Duration::from_micros(i % 13 * 50)).await;
                                    i
                                });
                            }
                            let mut cap = Some(cap);
                            move |_output| {
                                w.set(w.get() + 1);
                                let came = paced && bridge.take_ready(|_| t.set(t.get() + 1));
                                if came && bridge.in_flight() > 0 {
                                    bridge.hold_wakeups();
                                    pace.activate_after(PACE);
                                } else {
                                    t.set(t.get() + bridge.drain().count() as u64);
                                }
                                if bridge.in_flight() == 0 {
                                    drop(cap.take());
                                }
                            }
                        },
                    );
                });
                while taken.get() < CALLS {
                    worker.step_or_park(None);
                }
                let _ = done.send(wakes.get());
            });
        });
        let wakes = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("every result taken (a lost wake-up leaves the worker parked)");
        assert!(
            wakes <= CALLS + 1,
            "{wakes} activations for {CALLS} results"
        );
    }

    /// Results that arrive while an activation is on its way, or while the operator
    /// drains, are all taken: none waits without a wake-up.
    #[test]
    fn every_result_is_taken_however_results_and_activations_interleave() {
        take_every_result(false);
    }

    /// The same taken every `PACE` while they keep coming: none is left behind when the
    /// results stop (the wake-ups are on again) or when the last one is taken.
    #[test]
    fn paced_results_are_all_taken_however_they_interleave() {
        take_every_result(true);
    }

    /// `take_ready` takes what came and leaves the wake-ups as they are; `hold_wakeups`
    /// turns them off and `drain` on again. Results are put in the channel by hand,
    /// where a finished future puts them, so that no timing decides.
    #[test]
    fn held_wake_ups_stay_off_until_a_drain() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        timely::execute_directly(move |worker| {
            // Never stepped: the activations it sends are not looked at.
            let activator = worker.sync_activator_for(vec![0]);
            let mut bridge = AsyncBridge::new(runtime.handle().clone(), activator);
            bridge.in_flight = 2;
            let mut taken = Vec::new();
            assert!(!bridge.take_ready(|r| taken.push(r)), "none came");
            bridge.sender.send(1u64).unwrap();
            assert!(bridge.take_ready(|r| taken.push(r)));
            assert!(!bridge.woken.load(Ordering::SeqCst), "left as it was");
            bridge.hold_wakeups();
            assert!(bridge.woken.load(Ordering::SeqCst), "wake-ups off");
            bridge.sender.send(2).unwrap();
            assert!(bridge.woken.load(Ordering::SeqCst), "still off");
            taken.extend(bridge.drain());
            assert!(!bridge.woken.load(Ordering::SeqCst), "on again");
            assert_eq!(taken, [1, 2]);
            assert_eq!(bridge.in_flight(), 0);
        });
    }
}
