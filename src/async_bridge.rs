//! Runs futures on the process's tokio runtime on behalf of a timely operator, and hands
//! their results back to it: the worker never blocks on I/O, and the operator is woken
//! (through a `SyncActivator`) as soon as a result is ready.

use std::future::Future;
use std::sync::mpsc;

use timely::scheduling::SyncActivator;
use tokio::runtime::Handle;

pub struct AsyncBridge<R> {
    runtime: Handle,
    activator: SyncActivator,
    sender: mpsc::Sender<R>,
    receiver: mpsc::Receiver<R>,
    in_flight: usize,
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
        }
    }

    /// Starts `work`; its result comes back through `drain`.
    pub fn spawn(&mut self, work: impl Future<Output = R> + Send + 'static) {
        let sender = self.sender.clone();
        let activator = self.activator.clone();
        self.in_flight += 1;
        self.runtime.spawn(async move {
            let result = work.await;
            // The operator is gone only when the dataflow was dropped; nothing to tell.
            if sender.send(result).is_ok() {
                let _ = activator.activate();
            }
        });
    }

    /// Results that have arrived since the last call.
    pub fn drain(&mut self) -> impl Iterator<Item = R> + '_ {
        std::iter::from_fn(move || {
            let r = self.receiver.try_recv().ok()?;
            self.in_flight -= 1;
            Some(r)
        })
    }

    /// Futures started and not yet drained.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
