//! Backpressure from the slow stages back to the source.
//!
//! A timely operator cannot refuse input, so a stage that waits on the outside world
//! (a webhook receiver, the Profile API) stashes what it cannot start yet. Each such
//! stage publishes how much it holds in a `Backlog`; the source of the same worker reads
//! nothing while any backlog is over its mark. Events are exchanged by user, so every
//! worker sees about the same load and a worker's own backlogs stand for the cluster's.
//!
//! A mark follows how many calls the service takes at once now (its `concurrency`
//! limit), not the most it ever may: what waits is then a few round trips' worth, and
//! a stop drains it in about that long. Marks of the slots' ceiling (`max-in-flight`,
//! 256 per worker) let 16k events per worker wait for a Profile API that served a
//! hundred look-ups a second: minutes to drain, past the shutdown time-out.
//!
//! Between workers and processes, what a source emits waits in timely's channels until
//! its decoding worker takes it, and the decoded event again until its user's worker
//! does, and nothing bounded those: a worker that falls behind (descheduled, or with
//! more users' events than the reading one) let the reader run on, and at `-w 2` on two
//! cores the 2M-event run's peak RSS varied from 430 to 915 MB with what piled up. So
//! the source also waits while the events' arrival at their users' workers trails the
//! sources (`Trail`).

use std::cell::Cell;
use std::rc::Rc;

use timely::dataflow::ProbeHandle;

use crate::concurrency::Limiter;
use crate::model::Time;

/// How much a stage holds, and the most it should.
#[derive(Clone)]
pub struct Backlog {
    held: Rc<Cell<usize>>,
    /// What came into the stage per message the source read, lately.
    per_message: Rc<Cell<PerMessage>>,
    /// The mark when it follows no service, and the most it follows one to.
    limit: usize,
    follows: Vec<PerCall>,
}

/// A part of a backlog's mark that follows a service's limit of calls at once.
#[derive(Clone)]
pub struct PerCall {
    /// The service's limit (the process's, shared by its workers).
    pub calls: Limiter,
    /// The calls this worker registered with it: its part of the limit.
    pub registered: usize,
    /// Calls one unit of the stage's work makes (a look-up is three requests).
    pub calls_per_unit: usize,
    /// What may wait per unit of work the worker's part of the limit has room for.
    pub per_unit: usize,
}

impl PerCall {
    fn mark(&self) -> usize {
        let units = self
            .calls
            .share(self.registered)
            .div_ceil(self.calls_per_unit);
        self.per_unit * units.max(1)
    }
}

impl Backlog {
    /// A backlog marked at `limit`.
    pub fn new(limit: usize) -> Self {
        Backlog {
            held: Rc::new(Cell::new(0)),
            per_message: Rc::default(),
            limit,
            follows: Vec::new(),
        }
    }

    /// The same backlog, marked at the sum of what `follows` allow now (at most its
    /// limit).
    pub fn following(self, follows: Vec<PerCall>) -> Self {
        Backlog { follows, ..self }
    }

    pub fn set(&self, held: usize) {
        self.held.set(held);
    }

    /// Sets what the stage holds, and how much came into it so far.
    pub fn set_with_came(&self, held: usize, came: u64) {
        self.held.set(held);
        let mut p = self.per_message.get();
        p.came = came;
        self.per_message.set(p);
    }

    /// The messages the source may read before the stage reaches its mark, at what came
    /// into it per message read lately (one before anything came: every message might).
    fn messages(&self, read: u64) -> usize {
        let room = self.room();
        if room == 0 {
            return 0;
        }
        let mut p = self.per_message.get();
        let rate = p.rate(read);
        self.per_message.set(p);
        (room as f64 / rate) as usize
    }

    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// The most the stage should hold now.
    pub fn mark(&self) -> usize {
        if self.follows.is_empty() {
            return self.limit;
        }
        let follows: usize = self.follows.iter().map(PerCall::mark).sum();
        follows.min(self.limit)
    }

    /// How much more the stage may take before it reaches its mark.
    pub fn room(&self) -> usize {
        self.mark().saturating_sub(self.held())
    }
}

/// What came into a stage per message read, over the last few thousand messages.
#[derive(Clone, Copy, Default)]
struct PerMessage {
    /// All that came so far (the stage's count).
    came: u64,
    /// The totals at the last look.
    seen_came: u64,
    seen_read: u64,
    /// In the window (halved as it fills: older ones weigh less).
    window_came: f64,
    window_read: f64,
}

/// Messages in the window before it is halved.
const WINDOW: f64 = 4096.0;

impl PerMessage {
    fn rate(&mut self, read: u64) -> f64 {
        self.window_came += self.came.saturating_sub(self.seen_came) as f64;
        self.window_read += read.saturating_sub(self.seen_read) as f64;
        (self.seen_came, self.seen_read) = (self.came, read);
        while self.window_read > WINDOW {
            self.window_came /= 2.0;
            self.window_read /= 2.0;
        }
        ((self.window_came + 1.0) / (self.window_read + 1.0)).min(1.0)
    }
}

/// How far the events' arrival at their users' workers may trail what the sources have
/// emitted, in their time (ms of processing time): both are frontiers of the whole
/// cluster, so the distance is what is still on its way somewhere (to be decoded, for
/// its dead letters to be written, or to its user's worker), whatever the processes'
/// clocks say (a process whose clock is behind holds both back alike).
#[derive(Clone)]
pub struct Trail {
    sourced: ProbeHandle<Time>,
    arrived: ProbeHandle<Time>,
    max_ms: Time,
}

impl Trail {
    /// A trail of at most `max_ms`; attach its probes with `probe_with` to the sources'
    /// output (`sourced`) and to the events as they reach their users' workers
    /// (`arrived`).
    pub fn new(max_ms: Time) -> Self {
        Trail {
            sourced: ProbeHandle::new(),
            arrived: ProbeHandle::new(),
            max_ms,
        }
    }

    pub fn sourced(&self) -> &ProbeHandle<Time> {
        &self.sourced
    }

    pub fn arrived(&self) -> &ProbeHandle<Time> {
        &self.arrived
    }

    /// True while something emitted more than `max_ms` before the sources' frontier has
    /// not arrived yet.
    pub fn is_over(&self) -> bool {
        match self.sourced.with_frontier(|f| f.first().copied()) {
            Some(sourced) => self.arrived.less_than(&sourced.saturating_sub(self.max_ms)),
            None => false,
        }
    }
}

/// What the source consults: the backlogs of the stages after it, and how far the
/// arrivals trail.
#[derive(Clone, Default)]
pub struct Gate {
    backlogs: Vec<Backlog>,
    trail: Option<Trail>,
}

impl Gate {
    pub fn new(backlogs: Vec<Backlog>) -> Self {
        Gate {
            backlogs,
            trail: None,
        }
    }

    /// The same gate, also closed while `trail` is over.
    pub fn with_trail(self, trail: Trail) -> Self {
        Gate {
            trail: Some(trail),
            ..self
        }
    }

    /// How many messages the source may read now, `read` read so far: the least room of
    /// the stages after it, in messages at what came into each per message lately
    /// (events exchanged by user come to each worker's stages alike), none while the
    /// arrivals trail too far.
    ///
    /// ```
    /// use event_trigger::operators::backpressure::{Backlog, Gate};
    /// let b = Backlog::new(2);
    /// let gate = Gate::new(vec![b.clone()]);
    /// b.set(1);
    /// assert_eq!(gate.room(0), 1, "nothing came yet: every message might");
    /// b.set(2);
    /// assert_eq!(gate.room(0), 0);
    /// ```
    pub fn room(&self, read: u64) -> usize {
        if self.trail.as_ref().is_some_and(Trail::is_over) {
            return 0;
        }
        self.backlogs
            .iter()
            .map(|b| b.messages(read))
            .min()
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::InputHandleVec;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::{Capability, Probe};

    use super::*;
    use crate::concurrency::Concurrency;

    /// A worker's part of a limit of 12 requests at once that two workers share.
    fn following(limit: usize, calls_per_unit: usize, per_unit: usize) -> Backlog {
        let calls = Limiter::new("t", Concurrency::Fixed(12));
        calls.register(30);
        calls.register(30);
        Backlog::new(limit).following(vec![PerCall {
            calls,
            registered: 30,
            calls_per_unit,
            per_unit,
        }])
    }

    /// A mark that follows a service is so much per unit of work the worker's part of
    /// its limit has room for (6 requests: 2 look-ups of 3), at most the backlog's limit,
    /// at least one unit's worth.
    #[test]
    fn a_mark_follows_the_workers_part_of_the_services_limit() {
        let lookups = following(10_000, 3, 64);
        assert_eq!(lookups.mark(), 128);
        lookups.set(100);
        assert_eq!(lookups.room(), 28);
        lookups.set(128);
        assert_eq!(lookups.room(), 0);
        let gate = Gate::new(vec![lookups.clone()]);
        assert_eq!(gate.room(0), 0);
        lookups.set(127);
        assert_eq!(gate.room(0), 1);
        assert_eq!(following(100, 3, 64).mark(), 100, "at most the limit");
        assert_eq!(following(10_000, 12, 64).mark(), 64, "at least one unit");
        assert_eq!(Backlog::new(7).mark(), 7, "following nothing: its limit");
    }

    /// The gate closes while an event emitted more than the trail's length before the
    /// sources' frontier is held short of arriving, and opens once it is through or
    /// within the length.
    #[test]
    fn the_gate_closes_while_the_arrivals_trail_too_far() {
        timely::execute_directly(|worker| {
            let trail = Trail::new(20);
            let gate = Gate::new(vec![Backlog::new(1)]).with_trail(trail.clone());
            // The time the stand-in decoder holds what it took at (none: let it go).
            let hold: Rc<Cell<Option<Time>>> = Rc::new(Cell::new(Some(0)));
            let h = hold.clone();
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, stream) = scope.new_input::<u8>();
                stream
                    .probe_with(trail.sourced())
                    .unary::<CapacityContainerBuilder<Vec<u8>>, _, _, _>(
                        Pipeline,
                        "Slow",
                        |_, info| {
                            let activator = scope.activator_for(info.address);
                            let mut held: Option<Capability<Time>> = None;
                            move |input, _output| {
                                input.for_each(|cap, _| held = Some(cap.delayed(&0, 0)));
                                held = h.get().and_then(|t| Some(held.as_ref()?.delayed(&t)));
                                activator.activate();
                            }
                        },
                    )
                    .probe_with(trail.arrived());
                input
            });
            let mut step_to = |t: Time, input: &mut InputHandleVec<Time, u8>| {
                input.advance_to(t);
                for _ in 0..10 {
                    worker.step();
                }
            };
            input.send(1);
            step_to(10, &mut input);
            assert!(gate.room(0) > 0, "held at 0, sourced to 10");
            step_to(21, &mut input);
            assert_eq!(gate.room(0), 0, "held at 0, sourced to 21");
            assert!(trail.is_over());
            hold.set(Some(15));
            step_to(35, &mut input);
            assert!(gate.room(0) > 0, "held at 15: within 20 of 35");
            step_to(36, &mut input);
            assert_eq!(gate.room(0), 0, "held at 15, sourced to 36");
            hold.set(None);
            step_to(100, &mut input);
            assert!(gate.room(0) > 0);
            assert!(!trail.is_over());
        });
    }
}
